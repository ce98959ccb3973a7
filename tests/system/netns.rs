//! Network namespaces that a test creates for itself, and the links between them.
//!
//! Everything here is torn down by `Drop`, also when the test panics: a [`NetNs`] kills the
//! processes still inside it (they can only be the test's own: the namespace is new) and
//! deletes itself; veths and bridges live inside the namespaces and go with them. Names carry
//! the test process's pid and a counter, so parallel runs, and parallel tests in one run, never
//! share a namespace; namespaces left by a run that was killed (`SIGKILL` skips `Drop`) are
//! deleted by the next run once their pid is gone.
//!
//! Code runs inside a namespace in two ways:
//! - [`NetNs::run`]: a closure on a thread that has `setns(2)` into the namespace. Sockets it
//!   creates belong to that namespace for their whole life, even after the thread ends, so a
//!   test can open client connections "from" a gateway namespace and hold them as ordinary
//!   `TcpStream`s, and talk HTTP to a process listening inside the namespace.
//! - [`NetNs::command`]: `ip netns exec NAME PROGRAM`, for processes (fix-monitor, Prometheus).
//!   `ip netns exec` execs the program in place, so the child's pid is the program's pid.
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and `ip` from iproute2; without them the test
//! fails, it is never skipped.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Every namespace a test creates is named `PREFIX<pid>-<n>-<role>`.
pub const PREFIX: &str = "fixmon-t";

static COUNTER: AtomicUsize = AtomicUsize::new(0);
static STALE: Once = Once::new();

/// Runs `ip ARGS`, panicking with its output if it fails.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running `ip` (iproute2 is required): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), with its loopback up.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates `fixmon-t<pid>-<n>-<role>`. `role` says what it is for (`ds`, `gw1`), which helps
    /// when reading `ip netns list` during a run.
    pub fn create(role: &str) -> NetNs {
        STALE.call_once(delete_stale);
        let name = format!(
            "{PREFIX}{}-{}-{role}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip netns exec NAME PROGRAM`: add arguments, environment and stdio as usual.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a thread inside the namespace and returns what it returns (a panic in `f` is
    /// passed on). Sockets `f` creates stay in the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.name, f)
    }

    /// Pids of the processes in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        destroy(&self.name);
    }
}

/// Runs `f` on a new thread that has joined the network namespace `name` (`/run/netns/NAME`).
/// Only that thread moves: the rest of the test process stays where it was.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on an fd we own; it changes this thread's namespace only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {name}: {} (root is required)",
                std::io::Error::last_os_error()
            );
            f()
        });
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn pids_in(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills what is still running in the namespace (bounded wait), then deletes it. Never panics:
/// it runs from `Drop`, possibly while a test is already panicking.
fn destroy(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = pids_in(name);
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2). The namespace was created by this test, so every process in it
            // was started by this test.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ok = Command::new("ip")
        .args(["netns", "del", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("warning: could not delete network namespace {name}");
    }
}

/// Deletes namespaces named by this module whose creating process is gone (a run that was
/// killed before its `Drop`s ran).
fn delete_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if owner_is_gone(name, PREFIX) {
            eprintln!("deleting stale test namespace {name}");
            destroy(name);
        }
    }
}

/// An IPv4 LAN inside test namespaces: a bridge in a hub namespace, and one veth per attached
/// namespace. Addresses are `PREFIX.N/24`; use a private range (the namespaces are the test's
/// own, nothing outside them can see it).
pub struct Lan<'a> {
    hub: &'a NetNs,
    prefix: [u8; 3],
    ports: usize,
}

impl<'a> Lan<'a> {
    /// Creates bridge `br0` in `hub` with address `PREFIX.hub_host`.
    pub fn new(hub: &'a NetNs, prefix: [u8; 3], hub_host: u8) -> Lan<'a> {
        let addr = format!("{}/24", Self::addr_of(prefix, hub_host));
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.ip(&["addr", "add", &addr, "dev", "br0"]);
        hub.ip(&["link", "set", "br0", "up"]);
        Lan {
            hub,
            prefix,
            ports: 0,
        }
    }

    fn addr_of(p: [u8; 3], host: u8) -> Ipv4Addr {
        Ipv4Addr::new(p[0], p[1], p[2], host)
    }

    /// The address of host `n` on this LAN.
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Self::addr_of(self.prefix, host)
    }

    /// Connects `ns` to the bridge with a veth pair (`eth0` in `ns`), addresses it
    /// `PREFIX.host/24`, and returns that address. The pair is created directly in the two
    /// namespaces, so no interface name ever appears in the root namespace.
    pub fn attach(&mut self, ns: &NetNs, host: u8) -> Ipv4Addr {
        let port = format!("p{}", self.ports);
        self.ports += 1;
        self.hub.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        self.hub.ip(&["link", "set", &port, "master", "br0"]);
        self.hub.ip(&["link", "set", &port, "up"]);
        let addr = self.addr(host);
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        addr
    }
}

/// For a name `PREFIX<pid>-...` left by a test run: is that run's process gone (so what it
/// left behind is stale)? Names of another shape are never stale.
pub fn owner_is_gone(name: &str, prefix: &str) -> bool {
    let Some(pid) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.split('-').next())
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return false;
    };
    // SAFETY: kill(pid, 0) only checks that the process exists.
    let failed = unsafe { libc::kill(pid, 0) } != 0;
    failed && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}
