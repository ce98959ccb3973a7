//! Sessions behind a local TLS tunnel, with a real stunnel (Debian's `stunnel4`, root for
//! `CAP_NET_RAW`): the simulator's gateway speaks plaintext FIX to a stunnel client on loopback
//! (`targets[].tls_tunnel`), which holds a verified TLS session to a venue-side stunnel server
//! (the target), which forwards to the simulator's venue. The real binary captures the
//! plaintext leg and must attribute its FIX session to the target, join it to the outer TLS
//! session the TCP layer watches (the tunnel process owns both sockets), report the
//! simulator's exact counts, and judge the outer session's end from the FIX account.
//!
//! ```text
//! gateway --plaintext--> 127.0.0.63:P3 stunnel client --TLS--> 127.0.0.62:P2 stunnel server
//!                        (tls_tunnel)                          (the target)  --> venue 127.0.0.61
//! ```

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fix_monitor::fix::sim::{scripted_session, Peer};
use serde_json::Value;

use crate::harness::*;

const VENUE_IP: &str = "127.0.0.61";
const TLS_IP: &str = "127.0.0.62";
const TUNNEL_IP: &str = "127.0.0.63";

/// A running `stunnel4`, killed (by its own handle) when dropped.
struct Stunnel {
    child: Child,
    log: std::path::PathBuf,
}

impl Stunnel {
    /// Starts `stunnel4` in the foreground with `service` (one `[service]` section) and waits
    /// until it says its configuration is loaded (it listens from then on).
    fn start(dir: &Path, name: &str, service: &str) -> Stunnel {
        let conf = dir.join(format!("{name}.conf"));
        let log = dir.join(format!("{name}.log"));
        let text = format!("foreground = yes\npid =\ndebug = notice\n[{name}]\n{service}");
        std::fs::write(&conf, text).unwrap();
        let mut cmd = Command::new("stunnel4");
        cmd.arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("running stunnel4 (scripts/fetch-tools.sh installs it)");
        let s = Stunnel { child, log };
        wait_until(
            &format!("stunnel {name} configured"),
            Duration::from_secs(10),
            || s.log().contains("Configuration successful"),
        );
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for `venue.test` and its key, written as PEM under `dir`.
fn certificate(dir: &Path) -> (String, String) {
    use rcgen::{CertificateParams, KeyPair};
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["venue.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.join("venue.pem"), dir.join("venue.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    (s(&c), s(&k))
}

/// A port free on `ip` now.
fn free_on(ip: &str) -> u16 {
    let l = TcpListener::bind(format!("{ip}:0")).unwrap();
    l.local_addr().unwrap().port()
}

fn by_type(v: &Value) -> BTreeMap<String, u64> {
    (v.as_object().into_iter().flatten())
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

fn session<'a>(s: &'a Value, label: &str) -> &'a Value {
    (s["sessions"].as_array().into_iter().flatten())
        .find(|x| x["session"] == label)
        .unwrap_or(&Value::Null)
}

/// `ip:port` of a JSON `TcpLink` side.
fn addr(v: &Value) -> SocketAddr {
    v.as_str().unwrap().parse().unwrap()
}

/// The pieces of the tests below running: both stunnels, the venue behind them and the
/// sidecar.
struct Setup {
    venue: fix_monitor::fix::sim::Venue,
    /// The stunnel client: the tunnel the gateway talks plaintext to.
    client: Stunnel,
    _server: Stunnel,
    tunnel: SocketAddr,
    /// The venue-side stunnel server's TLS address: the target.
    tls: SocketAddr,
    sc: Sidecar,
    _cfg: tempfile::NamedTempFile,
    _dir: tempfile::TempDir,
}

/// How the sidecar is run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// As root, the tunnel named by its address.
    Named,
    /// As root, `tls_tunnel = "auto"`.
    Auto,
    /// As `nobody` with `CAP_NET_RAW` alone (capture, but no reading root's `/proc/PID/fd`),
    /// the tunnel named.
    Unprivileged,
}

fn setup(mode: Mode) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let (venue, refusing) = fix_venues(
        [VENUE_IP.parse().unwrap(); 2],
        Duration::from_millis(5),
        3,
        (5, 2),
    );
    refusing.stop();
    let (tls_port, tunnel_port) = (free_on(TLS_IP), free_on(TUNNEL_IP));
    let tls: SocketAddr = format!("{TLS_IP}:{tls_port}").parse().unwrap();
    let tunnel: SocketAddr = format!("{TUNNEL_IP}:{tunnel_port}").parse().unwrap();
    let server = Stunnel::start(
        dir.path(),
        "venue-side",
        &format!(
            "accept = {tls}\nconnect = {}\ncert = {cert}\nkey = {key}\n",
            venue.addr
        ),
    );
    let client = Stunnel::start(
        dir.path(),
        "gateway-side",
        &format!(
            "client = yes\naccept = {tunnel}\nconnect = {tls}\nverifyPeer = yes\n\
             CAfile = {cert}\ncheckHost = venue.test\n"
        ),
    );
    let key = match mode {
        Mode::Auto => "auto".to_owned(),
        Mode::Named | Mode::Unprivileged => tunnel.to_string(),
    };
    let cfg = config_file(&format!(
        "[[targets]]\nname = \"venue-tls\"\naddress = \"{TLS_IP}\"\nport = {tls_port}\n\
         tls_tunnel = \"{key}\"\n\n[fix]\ncapture = true\n"
    ));
    let args = [
        "--config",
        cfg.path().to_str().unwrap(),
        "--interval",
        "200ms",
    ];
    let sc = match mode {
        Mode::Named | Mode::Auto => Sidecar::start(&args),
        Mode::Unprivileged => {
            use std::os::unix::fs::PermissionsExt;
            let readable = std::fs::Permissions::from_mode(0o644);
            std::fs::set_permissions(cfg.path(), readable).unwrap();
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
                .args([
                    "--inh-caps=+net_raw",
                    "--ambient-caps=+net_raw",
                    "--",
                    bin(),
                ]);
            for (k, v) in command().get_envs() {
                match v {
                    Some(v) => cmd.env(k, v),
                    None => cmd.env_remove(k),
                };
            }
            Sidecar::start_with(cmd, &args)
        }
    };
    assert!(sc.json("/sessions")["capture_error"].is_null());
    Setup {
        venue,
        client,
        _server: server,
        tunnel,
        tls,
        sc,
        _cfg: cfg,
        _dir: dir,
    }
}

#[test]
fn a_session_behind_stunnel_is_its_targets_and_joined_to_the_outer_tls_session() {
    let s = setup(Mode::Named);
    let first = scripted_through_the_tunnel(&s);
    let second = held_open_through_the_tunnel(&s);
    assert_ne!(first, second);
    // Both outer sessions ended with our Logout: the plaintext leg's account judged them.
    let mut closed = Value::Null;
    s.sc.wait_for(
        "both outer sessions judged",
        Duration::from_secs(30),
        |sc| {
            closed = sc.json("/connections")["closed"].clone();
            let judged = (closed.as_array().into_iter().flatten())
                .filter(|x| x["end_cause"].is_string())
                .count();
            judged == 2
        },
    );
    let causes: BTreeMap<u16, String> = (closed.as_array().into_iter().flatten())
        .map(|x| {
            let port = x["local_port"].as_u64().unwrap() as u16;
            (port, x["end_cause"].as_str().unwrap().to_owned())
        })
        .collect();
    let want = BTreeMap::from([
        (first.port(), "logout_by_us".to_owned()),
        (second.port(), "logout_by_us".to_owned()),
    ]);
    assert_eq!(causes, want, "{closed}");
    let m = s.sc.metrics();
    let ends = [("target", "venue-tls"), ("cause", "logout_by_us")];
    assert_eq!(m.get("fix_session_ends_total", &ends), Some(2.0));
    let Setup { venue, sc, .. } = s;
    assert_eq!(venue.stop().connections, 2);
    let (status, log) = sc.terminate();
    assert!(status.success(), "exit {status:?}\n{log}");
}

/// A scripted session through the tunnel: every count on /sessions and /metrics is the
/// simulator's, the session is the target's and its `tcp` is the outer TLS session, joined by
/// the tunnel process (the stunnel client). Returns the outer session's local address.
fn scripted_through_the_tunnel(s: &Setup) -> SocketAddr {
    let truth = scripted_session(s.tunnel, 9, None, None).unwrap();
    let total: u64 = truth.sent.values().sum::<u64>() + truth.received.values().sum::<u64>();
    let mut last = Value::Null;
    let what = "the tunnelled session's counts";
    s.sc.wait_for(what, Duration::from_secs(15), |sc| {
        last = sc.json("/sessions");
        let a = session(&last, "GW->VENUE");
        by_type(&a["out"]["by_type"]) == truth.sent
            && by_type(&a["in"]["by_type"]) == truth.received
            && a["tunnel"]["join"] == "joined"
            && sc
                .metrics()
                .sum("fix_messages_total", &[("target", "venue-tls")])
                == total as f64
    });
    let a = session(&last, "GW->VENUE");
    assert_eq!(a["target"], "venue-tls", "{last}");
    assert_eq!(a["timed_by"], "wire");
    assert_eq!(
        (a["logons"].as_u64(), a["logouts_us"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(a["orders_answered"], truth.round_trips.len() as u64);
    let t = &a["tunnel"];
    assert_eq!(addr(&t["address"]), s.tunnel, "{a}");
    assert_eq!(addr(&t["plaintext"]["local"]), truth.local.unwrap(), "{a}");
    assert_eq!(addr(&t["plaintext"]["remote"]), s.tunnel);
    // The session lasts about 100 ms: a FIX layer that falls that far behind (a loaded
    // machine) finds the tunnel's sockets closed and joins by timing alone, saying so; the
    // process it names, if any, is still the tunnel's.
    match t["basis"].as_str() {
        Some("process") => assert_eq!(t["process"]["pid"], s.client.child.id(), "{t}"),
        Some("timing") => assert!(
            t["process"].is_null() || t["process"]["pid"] == s.client.child.id(),
            "{t}"
        ),
        _ => panic!("one session per tunnel: {t}"),
    }
    assert_eq!(t["outer"], a["tcp"], "{a}");
    assert_eq!(
        addr(&a["tcp"]["remote"]),
        s.tls,
        "the outer session's venue: {a}"
    );
    let st = &last["stats"]["wire"];
    assert_eq!(st["messages"], total, "{st}");
    assert_eq!(
        (st["malformed"].as_u64(), st["unmatched"].as_u64()),
        (Some(0), Some(0))
    );
    let m = s.sc.metrics();
    let l = [("target", "venue-tls"), ("session", "GW->VENUE")];
    assert_eq!(m.sum("fix_session_logons_total", &l), 1.0);
    let n = truth.round_trips.len() as f64;
    assert_eq!(m.sum("fix_order_ack_latency_seconds_count", &l), n);
    addr(&a["tcp"]["local"])
}

/// A second session held open: the TCP layer's outer session names it on /connections, and
/// /sessions names that outer session; then our Logout ends it. Returns the outer session's
/// local address.
fn held_open_through_the_tunnel(s: &Setup) -> SocketAddr {
    let mut gw = Peer::connect(s.tunnel, "FIX.4.4", "GW", "VENUE").unwrap();
    let wait = Duration::from_secs(10);
    gw.send("A", &[(98, "0"), (108, "30")]).unwrap();
    gw.expect("A", wait).unwrap();
    gw.send("0", &[]).unwrap();
    let plaintext = gw.stream().local_addr().unwrap();
    let mut outer = None;
    s.sc.wait_for("/connections naming the FIX session", wait, |sc| {
        let c = sc.json("/connections");
        outer = (c["connections"].as_array().into_iter().flatten())
            .find(|x| x["fix"]["session"] == "GW->VENUE")
            .cloned();
        let a = session(&sc.json("/sessions"), "GW->VENUE").clone();
        outer.is_some()
            && a["logged_on"] == true
            && addr(&a["tunnel"]["plaintext"]["local"]) == plaintext
    });
    let outer = outer.unwrap();
    assert_eq!(outer["target"], "venue-tls", "{outer}");
    assert_eq!(addr(&outer["fix"]["tunnel"]), s.tunnel, "{outer}");
    assert_eq!(outer["remote_addr"].as_str().unwrap(), s.tls.to_string());
    let local: SocketAddr = outer["local_addr"].as_str().unwrap().parse().unwrap();
    let a = session(&s.sc.json("/sessions"), "GW->VENUE").clone();
    assert_eq!(addr(&a["tcp"]["local"]), local, "{a}");
    assert_eq!(a["tunnel"]["basis"], "process", "{a}");
    assert_eq!(a["tunnel"]["process"]["pid"], s.client.child.id(), "{a}");
    gw.send("5", &[(58, "bye")]).unwrap();
    gw.expect("5", wait).unwrap();
    gw.close();
    local
}

/// Two FIX sessions through one tunnel at once (say order entry and drop copy): each is joined
/// to its own outer session. The ground truth is the traffic: the session that sends ten times
/// more must be on the outer session the kernel counts more bytes acknowledged on.
#[test]
fn two_sessions_through_one_tunnel_are_each_joined_to_their_own_outer_session() {
    let s = setup(Mode::Named);
    let wait = Duration::from_secs(10);
    let mut peers = Vec::new();
    for (sender, heartbeats) in [("GW-A", 40), ("GW-B", 4)] {
        let mut p = Peer::connect(s.tunnel, "FIX.4.4", sender, "VENUE").unwrap();
        p.send("A", &[(98, "0"), (108, "30")]).unwrap();
        p.expect("A", wait).unwrap();
        peers.push((format!("{sender}->VENUE"), p, heartbeats));
    }
    for (_, p, heartbeats) in &mut peers {
        for _ in 0..*heartbeats {
            p.send("0", &[]).unwrap();
        }
    }
    let mut last = Value::Null;
    s.sc.wait_for("both sessions' counts, joined", wait, |sc| {
        last = sc.json("/sessions");
        peers.iter().all(|(label, p, _)| {
            let a = session(&last, label);
            by_type(&a["out"]["by_type"]) == p.sent && a["tunnel"]["join"] == "joined"
        })
    });
    let mut outers = BTreeMap::new();
    for (label, p, _) in &peers {
        let a = session(&last, label);
        let t = &a["tunnel"];
        assert_eq!(a["target"], "venue-tls", "{a}");
        assert_eq!(
            addr(&t["plaintext"]["local"]),
            p.stream().local_addr().unwrap()
        );
        assert_eq!(t["process"]["pid"], s.client.child.id(), "{t}");
        // Joined one after the other: each the only one of the process not joined yet.
        assert_eq!(t["basis"], "process", "{t}");
        assert_eq!(t["outer"], a["tcp"], "{a}");
        assert_eq!(addr(&a["tcp"]["remote"]), s.tls, "{a}");
        outers.insert(
            label.clone(),
            a["tcp"]["local"].as_str().unwrap().to_owned(),
        );
    }
    assert_ne!(outers["GW-A->VENUE"], outers["GW-B->VENUE"], "{last}");
    // On /connections each outer session names its own FIX session, and the one that carried
    // GW-A's ten-fold traffic has the more bytes acknowledged.
    let mut acked = BTreeMap::new();
    s.sc.wait_for("/connections naming both, with their bytes", wait, |sc| {
        let c = sc.json("/connections");
        acked.clear();
        for x in c["connections"].as_array().into_iter().flatten() {
            if let (Some(f), Some(b)) = (
                x["fix"]["session"].as_str(),
                x["health"]["bytes_acked"].as_u64(),
            ) {
                let local = x["local_addr"].as_str().unwrap_or_default().to_owned();
                acked.insert(f.to_owned(), (local, b));
            }
        }
        acked.len() == 2
    });
    for (label, local) in &outers {
        assert_eq!(&acked[label].0, local, "{acked:?}");
    }
    let (a, b) = (acked["GW-A->VENUE"].1, acked["GW-B->VENUE"].1);
    assert!(
        a > b + 1000,
        "GW-A's outer session acked {a} bytes, GW-B's {b}"
    );
    for (_, mut p, _) in peers {
        p.send("5", &[]).unwrap();
        p.expect("5", wait).unwrap();
        p.close();
    }
    let Setup { venue, sc, .. } = s;
    assert_eq!(venue.stop().connections, 2);
    let (status, log) = sc.terminate();
    assert!(status.success(), "exit {status:?}\n{log}");
}

/// `tls_tunnel = "auto"`: the first session through the tunnel shows it (its TLS session is
/// owned by a stunnel with one loopback listener), and its plaintext leg is read from then on:
/// what that session says after the discovery is counted exactly, and a second session from
/// its first byte, every count the simulator's.
#[test]
fn an_auto_tunnel_is_found_from_the_stunnel_owning_the_targets_session() {
    let s = setup(Mode::Auto);
    let wait = Duration::from_secs(10);
    let mut gw = Peer::connect(s.tunnel, "FIX.4.4", "GW", "VENUE").unwrap();
    gw.send("A", &[(98, "0"), (108, "30")]).unwrap();
    gw.expect("A", wait).unwrap();
    s.sc.wait_for("the tunnel found", wait, |sc| {
        sc.log().contains("TLS tunnel found")
    });
    let log = s.sc.log();
    assert!(log.contains(&format!("address={}", s.tunnel)), "{log}");
    assert!(
        log.contains(&format!("pid={}", s.client.child.id())),
        "{log}"
    );
    for i in 0..5 {
        gw.send("1", &[(112, &format!("probe{i}"))]).unwrap();
        gw.expect("0", wait).unwrap();
    }
    let mut last = Value::Null;
    s.sc.wait_for("the probes after the discovery", wait, |sc| {
        last = sc.json("/sessions");
        let a = session(&last, "GW->VENUE");
        // Shown only if the wait fails (the test harness keeps a passing test's output).
        eprintln!("{a}");
        a["out"]["by_type"]["TestRequest"] == 5
            && a["in"]["by_type"]["Heartbeat"] == 5
            && a["tunnel"]["join"] == "joined"
    });
    let a = session(&last, "GW->VENUE");
    assert_eq!(a["target"], "venue-tls", "{a}");
    assert_eq!(a["tunnel"]["basis"], "process", "{a}");
    assert_eq!(a["tunnel"]["process"]["pid"], s.client.child.id(), "{a}");
    assert_eq!(addr(&a["tunnel"]["address"]), s.tunnel, "{a}");
    assert_eq!(addr(&a["tcp"]["remote"]), s.tls, "{a}");
    gw.send("5", &[]).unwrap();
    gw.expect("5", wait).unwrap();
    gw.close();
    s.sc.wait_for("the first session's Logouts", wait, |sc| {
        last = sc.json("/sessions");
        let a = session(&last, "GW->VENUE");
        a["out"]["by_type"]["Logout"] == 1 && a["in"]["by_type"]["Logout"] == 1
    });
    let before = session(&last, "GW->VENUE").clone();

    let truth = scripted_session(s.tunnel, 5, None, None).unwrap();
    let plus = |dir: &str, truth: &BTreeMap<String, u64>| {
        let mut want = by_type(&before[dir]["by_type"]);
        for (t, n) in truth {
            *want.entry(t.clone()).or_default() += n;
        }
        want
    };
    let (out, inb) = (plus("out", &truth.sent), plus("in", &truth.received));
    s.sc.wait_for("the second session, every message", wait, |sc| {
        last = sc.json("/sessions");
        let a = session(&last, "GW->VENUE");
        by_type(&a["out"]["by_type"]) == out && by_type(&a["in"]["by_type"]) == inb
    });
    let a = session(&last, "GW->VENUE");
    assert_eq!(
        addr(&a["tunnel"]["plaintext"]["local"]),
        truth.local.unwrap(),
        "{a}"
    );
    let Setup { venue, sc, .. } = s;
    assert_eq!(venue.stop().connections, 2);
    let (status, log) = sc.terminate();
    assert!(status.success(), "exit {status:?}\n{log}");
}

/// Without the privilege to read the tunnel's `/proc/PID/fd` (the sidecar as `nobody` with
/// `CAP_NET_RAW` alone, stunnel as root): no owner is known, the join is by timing alone and
/// says so, and the outer session's end is still judged from the FIX account.
#[test]
fn without_the_tunnels_fds_the_join_is_by_timing_and_says_so() {
    let s = setup(Mode::Unprivileged);
    let wait = Duration::from_secs(10);
    let mut gw = Peer::connect(s.tunnel, "FIX.4.4", "GW", "VENUE").unwrap();
    gw.send("A", &[(98, "0"), (108, "30")]).unwrap();
    gw.expect("A", wait).unwrap();
    let mut last = Value::Null;
    s.sc.wait_for("the session joined", wait, |sc| {
        last = sc.json("/sessions");
        let a = session(&last, "GW->VENUE");
        a["logged_on"] == true && a["tunnel"]["join"] == "joined"
    });
    let a = session(&last, "GW->VENUE");
    assert_eq!(a["target"], "venue-tls", "{a}");
    assert_eq!(a["tunnel"]["basis"], "timing", "{a}");
    assert!(a["tunnel"]["process"].is_null(), "{a}");
    assert_eq!(addr(&a["tcp"]["remote"]), s.tls, "{a}");
    let outer = addr(&a["tcp"]["local"]);
    let logon = BTreeMap::from([("Logon".to_owned(), 1)]);
    assert_eq!(by_type(&a["out"]["by_type"]), logon, "{a}");
    assert_eq!(by_type(&a["in"]["by_type"]), logon, "{a}");
    gw.send("5", &[(58, "bye")]).unwrap();
    gw.expect("5", wait).unwrap();
    gw.close();
    // Judged from the FIX account (it may have opened and closed between two polls: the
    // counter and the log say it either way).
    let ends = [("target", "venue-tls"), ("cause", "logout_by_us")];
    s.sc.wait_for("the outer session judged", Duration::from_secs(30), |sc| {
        sc.metrics().get("fix_session_ends_total", &ends) == Some(1.0)
    });
    let line = format!("session ended target_name=venue-tls local={outer}");
    let log = s.sc.log();
    let ended = log.lines().find(|l| l.contains(&line));
    assert!(
        ended.is_some_and(|l| l.contains("cause=\"logout_by_us\"")),
        "{log}"
    );
    let Setup { venue, sc, .. } = s;
    venue.stop();
    let (status, log) = sc.terminate();
    assert!(status.success(), "exit {status:?}\n{log}");
}
