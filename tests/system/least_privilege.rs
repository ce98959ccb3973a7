//! Least privilege, proved: the sidecar run as a throwaway non-root user with no capabilities
//! at all (setpriv: new uid and gid, no supplementary groups, empty inheritable, ambient and
//! bounding sets, no_new_privs). Netlink and procfs both answer it, its counts are right, and
//! a feature that needs a capability (an endpoint on a port below 1024) fails at start naming
//! the capability.

use std::process::Command;
use std::time::Duration;

use crate::harness::{bin, connect_from, Downstream, Sidecar};

/// A system user of a unique name, deleted when dropped.
struct User {
    name: String,
    uid: u32,
}

impl User {
    fn create() -> User {
        // Unique per test too: the tests of this module run in parallel threads.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("fixlp{}x{n}", std::process::id());
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ])
            .status()
            .expect("useradd (passwd) is required");
        assert!(status.success(), "useradd {name}");
        let out = Command::new("id").args(["-u", &name]).output().unwrap();
        let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert_ne!(uid, 0);
        User { name, uid }
    }

    /// `fix-monitor` as this user, with no capabilities, and a clean environment.
    fn command(&self) -> Command {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            &self.name,
            "--regid",
            &self.name,
            "--clear-groups",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
            bin(),
        ]);
        for (k, _) in std::env::vars() {
            if k.starts_with("FIX_MONITOR_")
                || k.starts_with("DOWNSTREAM_")
                || k.starts_with("OTEL_")
            {
                c.env_remove(k);
            }
        }
        c.env("NO_COLOR", "1");
        c
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// The credentials line `key` of /proc/PID/status.
fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

#[test]
fn unprivileged_sidecar_counts_right_with_netlink_and_procfs() {
    let user = User::create();
    let pid = std::process::id();
    let ip = format!("127.0.{}.{}", 160 + pid % 90, 2 + pid / 90 % 250);
    let downstream = Downstream::listen(&format!("{ip}:0"));
    let port = downstream.addr.port().to_string();
    for source in ["netlink", "procfs"] {
        let mut held: Vec<_> = (0..2)
            .map(|_| connect_from("127.0.0.1:0", downstream.addr))
            .collect();
        let sidecar = Sidecar::start_with(
            user.command(),
            &[
                "--ip",
                &ip,
                "--target-port",
                &port,
                "--source",
                source,
                "--interval",
                "200ms",
            ],
        );
        // Who it runs as: the user, with nothing in any capability set.
        let me = sidecar.pid();
        let uid = user.uid.to_string();
        assert!(
            status_field(me, "Uid:")
                .split_whitespace()
                .all(|u| u == uid),
            "{}",
            status_field(me, "Uid:")
        );
        for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(status_field(me, set), "0000000000000000", "{set}");
        }
        assert_eq!(status_field(me, "NoNewPrivs:"), "1");

        let target = downstream.addr.to_string();
        let counts = |s: &Sidecar| {
            let m = s.metrics();
            let l = [("target", target.as_str())];
            (
                m.count("fix_connections_total", &l),
                m.sum("fix_connections_closed_total", &l),
                m.count("fix_connections_active", &l),
            )
        };
        sidecar.wait_for("the two connections", Duration::from_secs(20), |s| {
            counts(s) == (2.0, 0.0, 2.0)
        });
        held.push(connect_from("127.0.0.1:0", downstream.addr));
        held.remove(0);
        sidecar.wait_for("one opened, one closed", Duration::from_secs(20), |s| {
            counts(s) == (3.0, 1.0, 2.0)
        });
        let health = sidecar.json("/health");
        assert_eq!(health["source"], source, "{health}");
        let (status, log) = sidecar.terminate();
        assert!(status.success(), "{status}: {log}");
    }
}

/// `auto` without CAP_BPF and CAP_PERFMON: the eBPF program cannot load, so it takes netlink
/// (with its session health), says why naming the capabilities, and starts normally.
#[test]
fn auto_without_capabilities_takes_netlink_and_names_what_ebpf_lacks() {
    let user = User::create();
    let downstream = Downstream::listen("127.0.0.1:0");
    let port = downstream.addr.port().to_string();
    let _held = connect_from("127.0.0.1:0", downstream.addr);
    let sidecar = Sidecar::start_with(
        user.command(),
        &[
            "--ip",
            "127.0.0.1",
            "--target-port",
            &port,
            "--source",
            "auto",
            "--interval",
            "200ms",
        ],
    );
    assert_eq!(status_field(sidecar.pid(), "CapEff:"), "0000000000000000");
    let health = sidecar.json("/health");
    assert_eq!(health["source"], "netlink", "{health}");
    assert!(
        health["source_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("auto: ebpf not used: ")
                && r.contains("lacks CAP_BPF and CAP_PERFMON")),
        "{health}"
    );
    assert_eq!(health["session_health"]["available"], true, "{health}");
    let (status, log) = sidecar.terminate();
    assert!(status.success(), "{status}: {log}");
    let not_used = log
        .lines()
        .find(|l| l.contains("eBPF source not used"))
        .unwrap_or_else(|| panic!("no line on eBPF: {log}"));
    assert!(
        not_used.contains("CAP_BPF and CAP_PERFMON") && !not_used.contains("ERROR"),
        "{not_used}"
    );
    let selected = log
        .lines()
        .find(|l| l.contains("connection source selected"))
        .unwrap_or_else(|| panic!("no selection line: {log}"));
    assert!(
        selected.contains("netlink") && selected.contains("lacks CAP_BPF and CAP_PERFMON"),
        "{selected}"
    );
}

#[test]
fn a_port_below_1024_names_the_capability_it_needs() {
    let unprivileged_start: u16 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    assert!(
        unprivileged_start > 1,
        "this host lets anyone bind low ports: nothing to test"
    );
    let user = User::create();
    // Any port below the limit: the kernel checks the capability before whether the port is
    // in use.
    let port = (unprivileged_start - 1).min(999);
    let out = user
        .command()
        .args(["run", "--ip", "127.0.0.2", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("CAP_NET_BIND_SERVICE"), "{err}");
}

/// `poll.process_lookup` without privilege: a session of a process running as the sidecar's own
/// user is named; the sessions this (root) test holds are not, and the sidecar says so once in
/// its log and in `/health`, naming the capabilities, rather than knowing less in silence.
#[test]
fn process_lookup_without_privilege_names_its_own_users_processes_and_says_what_it_cannot() {
    let user = User::create();
    let pid = std::process::id();
    let ip = format!("127.0.{}.{}", 160 + pid % 90, 2 + (pid / 90 + 7) % 250);
    let downstream = Downstream::listen(&format!("{ip}:0"));
    let port = downstream.addr.port().to_string();
    for source in ["netlink", "procfs"] {
        // Held by this test process (root): not readable by the sidecar's user.
        let _root_held = connect_from("127.0.0.1:0", downstream.addr);
        let mut sidecar_cmd = user.command();
        sidecar_cmd.env("FIX_MONITOR_POLL__PROCESS_LOOKUP", "true");
        let sidecar = Sidecar::start_with(
            sidecar_cmd,
            &[
                "--ip",
                &ip,
                "--target-port",
                &port,
                "--source",
                source,
                "--interval",
                "200ms",
            ],
        );
        sidecar.wait_for("the root session", Duration::from_secs(20), |s| {
            s.metrics().get("fix_connections_active", &[]) == Some(1.0)
        });
        // A client running as the sidecar's user: `sleep` holding a connection (fd 3).
        let mut client = Command::new("setpriv")
            .args([
                "--reuid",
                &user.name,
                "--regid",
                &user.name,
                "--clear-groups",
                "--",
                "bash",
                "-c",
            ])
            .arg(format!("exec 3<>/dev/tcp/{ip}/{port} && exec sleep 60"))
            .spawn()
            .expect("setpriv and bash");
        sidecar.wait_for("the user's session", Duration::from_secs(20), |s| {
            s.metrics().get("fix_connections_active", &[]) == Some(2.0)
        });
        let conns = sidecar.json("/connections");
        let rows = conns["connections"].as_array().unwrap();
        let named: Vec<_> = rows
            .iter()
            .filter(|r| r.get("pid").is_some())
            .map(|r| {
                (
                    r["pid"].as_u64().unwrap(),
                    r["comm"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            named,
            [(u64::from(client.id()), "sleep".to_string())],
            "{source}: {conns}"
        );
        let health = sidecar.json("/health");
        let lookup = &health["process_lookup"];
        assert_eq!(lookup["available"], true, "{source}: {health}");
        assert!(
            lookup["unreadable_processes"].as_u64().unwrap() > 0,
            "{source}: {health}"
        );
        let reason = lookup["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("CAP_SYS_PTRACE")
                && reason.contains("CAP_DAC_READ_SEARCH")
                && !reason.contains("  "),
            "{source}: {health}"
        );
        let _ = client.kill();
        let _ = client.wait();
        let (status, log) = sidecar.terminate();
        assert!(status.success(), "{source}: {log}");
        // Two walks (the first poll's session, the user's), one warning.
        assert_eq!(
            log.matches("cannot read other processes' /proc/PID/fd")
                .count(),
            1,
            "{source}: {log}"
        );
    }
}
