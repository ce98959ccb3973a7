//! Issue 22: reloading the configuration without a restart, with the real binary on loopback.
//! SIGHUP (and `POST /-/reload` where turned on) re-reads the file: targets added, removed and
//! kept; counts of kept targets go on, sessions keep their start; a bad file or a change only a
//! restart applies is refused whole and the running configuration stays; the web config's users
//! change for new connections.

use std::net::TcpStream;
use std::time::Duration;

use crate::harness::*;

const OK: &str = "fix_monitor_config_last_reload_successful";
const AT: &str = "fix_monitor_config_last_reload_success_timestamp_seconds";

fn target(name: &str, venue: &Downstream) -> String {
    format!(
        "[[targets]]\nname = \"{name}\"\naddress = \"{}\"\nport = {}\n",
        venue.addr.ip(),
        venue.addr.port()
    )
}

fn hangup(sc: &Sidecar) {
    // SAFETY: kill(2) on the child's pid, which this test owns.
    assert_eq!(unsafe { libc::kill(sc.pid() as i32, libc::SIGHUP) }, 0);
}

/// Sends SIGHUP and waits for the `n`th outcome in the log (applied or refused).
fn reload_by_signal(sc: &Sidecar, n: usize) {
    hangup(sc);
    sc.wait_for("the reload's outcome", Duration::from_secs(20), |sc| {
        let log = sc.log();
        log.matches("configuration reloaded").count()
            + log.matches("configuration reload refused").count()
            >= n
    });
}

/// The `start_time` of each active session of `target`, by local port.
fn starts(sc: &Sidecar, target: &str) -> Vec<(u64, String, bool)> {
    let conns = sc.json("/connections");
    let mut v: Vec<_> = (conns["connections"].as_array().unwrap().iter())
        .filter(|c| c["target"] == target)
        .map(|c| {
            (
                c["local_port"].as_u64().unwrap(),
                c["start_time"].as_str().unwrap().to_owned(),
                c["preexisting"].as_bool().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn wait_counts(sc: &Sidecar, target: &str, (active, opened, closed): (f64, f64, f64)) {
    sc.wait_for(
        &format!("{target}: active {active}, opened {opened}, closed {closed}"),
        Duration::from_secs(20),
        |sc| {
            let m = sc.metrics();
            let l = [("target", target)];
            m.get("fix_connections_active", &l) == Some(active)
                && m.get("fix_connections_total", &l) == Some(opened)
                && m.sum("fix_connections_closed_total", &l) == closed
        },
    );
}

/// The auto source: eBPF as root, netlink otherwise.
#[test]
fn a_reload_changes_targets_without_losing_a_count() {
    reload_keeps_counts("auto", 2);
}

/// Netlink: the kernel's close events (as root) are subscribed to again for the new targets.
#[test]
fn a_reload_changes_targets_without_losing_a_count_netlink() {
    reload_keeps_counts("netlink", 12);
}

/// The scenario, with `source`, its venues on 127.0.`net`.0/24.
fn reload_keeps_counts(source: &str, net: u8) {
    let (a, b, c) = (
        Downstream::listen(&format!("127.0.{net}.2:0")),
        Downstream::listen(&format!("127.0.{net}.3:0")),
        Downstream::listen(&format!("127.0.{net}.4:0")),
    );
    let first = format!("{}{}", target("a", &a), target("b", &b));
    let cfg = config_file(&first);
    let path = cfg.path().to_str().unwrap().to_owned();
    let args = ["--config", &path, "--interval", "100ms", "--source", source];
    let sc = Sidecar::start(&args);
    sc.wait_polls(1);
    assert_eq!(sc.metrics().get(OK, &[]), Some(1.0));
    let started_at = sc.metrics().get(AT, &[]).expect("the success timestamp");

    let mut held_a: Vec<TcpStream> = (0..3)
        .map(|_| connect_from("127.0.0.1:0", a.addr))
        .collect();
    let held_b: Vec<TcpStream> = (0..2)
        .map(|_| connect_from("127.0.0.1:0", b.addr))
        .collect();
    let _held_c = connect_from("127.0.0.1:0", c.addr);
    wait_counts(&sc, "a", (3.0, 3.0, 0.0));
    drop(held_a.remove(0));
    wait_counts(&sc, "a", (2.0, 3.0, 1.0));
    wait_counts(&sc, "b", (2.0, 2.0, 0.0));
    let a_before = starts(&sc, "a");
    assert_eq!(a_before.len(), 2);
    std::thread::sleep(Duration::from_millis(1100));

    // b removed, c added in front of a; a unchanged.
    // A first schedule too: its cause's series start at 0.
    let planned = [("target", "a"), ("cause", "scheduled_logout")];
    assert_eq!(sc.metrics().get("fix_session_ends_total", &planned), None);
    let schedule =
        "schedule = \"day\"\n[[schedules]]\nname = \"day\"\nstart = \"00:00\"\nend = \"23:59\"\n";
    let second = format!("{}{}{schedule}", target("c", &c), target("a", &a));
    std::fs::write(&path, second).unwrap();
    reload_by_signal(&sc, 1);
    let log = sc.log();
    assert!(
        log.contains("targets added: c; removed: b; changed: none; sessions no longer watched: 2"),
        "{log}"
    );
    wait_counts(&sc, "c", (1.0, 1.0, 0.0));
    // eBPF mode (`auto` as root) writes the new targets into its programs' maps instead of
    // loading them again; the other sources are opened anew.
    let in_place = log.contains("the source took the new targets in place");
    assert_eq!(in_place, sc.json("/health")["source"] == "ebpf", "{log}");
    // b's sessions end after it was removed: not a session of anyone (in eBPF mode the programs
    // still see them, with the storage they were given).
    drop(held_b);
    let m = sc.metrics();
    assert_eq!(m.get(OK, &[]), Some(1.0));
    assert!(
        m.get(AT, &[]).unwrap() > started_at,
        "the success time moved"
    );
    assert_eq!(
        m.get("fix_connections_active", &[("target", "a")]),
        Some(2.0)
    );
    assert_eq!(
        m.get("fix_connections_total", &[("target", "a")]),
        Some(3.0)
    );
    assert_eq!(
        m.get("fix_connections_active", &[("target", "b")]),
        None,
        "b is not watched"
    );
    assert_eq!(m.get("fix_connections_peak", &[("target", "a")]), Some(3.0));
    assert!(m.get("fix_session_ends_total", &planned).is_some());
    // /health's totals go on too, and list the new targets in their order.
    let health = sc.json("/health");
    let totals: Vec<_> = (health["targets"].as_array().unwrap().iter())
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["opened"].as_u64(),
                t["closed"].as_u64(),
            )
        })
        .collect();
    let want = [
        ("c".to_owned(), Some(1), Some(0)),
        ("a".to_owned(), Some(3), Some(1)),
    ];
    assert_eq!(totals, want, "{health:#}");
    // a's sessions kept their start; c's was open before the reload: its start is unknown.
    assert_eq!(starts(&sc, "a"), a_before);
    assert!(
        starts(&sc, "c").iter().all(|s| s.2),
        "{:?}",
        starts(&sc, "c")
    );

    // Counting goes on from where it was: one more opened, one of the first closed, whose
    // lifetime runs from before the reload.
    held_a.push(connect_from("127.0.0.1:0", a.addr));
    wait_counts(&sc, "a", (3.0, 4.0, 1.0));
    drop(held_a.remove(0));
    wait_counts(&sc, "a", (2.0, 4.0, 2.0));
    let m = sc.metrics();
    let lifetimes = m.get("fix_connection_duration_seconds_count", &[("target", "a")]);
    assert_eq!(lifetimes, Some(2.0));
    let sum = m
        .get("fix_connection_duration_seconds_sum", &[("target", "a")])
        .unwrap();
    assert!(
        sum >= 1.1,
        "the kept session's lifetime spans the reload: {sum}"
    );

    // A bad file is refused whole, naming the key; the running configuration stays.
    let bad = format!(
        "{}[[targets]]\nname = \"d\"\naddress = \"a venue\"\n",
        target("a", &a)
    );
    std::fs::write(&path, bad).unwrap();
    reload_by_signal(&sc, 2);
    assert!(
        sc.log().contains("targets[1].address = \"a venue\""),
        "{}",
        sc.log()
    );
    sc.wait_for("the refusal in /metrics", Duration::from_secs(20), |sc| {
        sc.metrics().get(OK, &[]) == Some(0.0)
    });
    assert_eq!(
        sc.metrics()
            .get("fix_connections_active", &[("target", "c")]),
        Some(1.0)
    );
    // So is a change only a restart applies.
    let json = format!("{}[log]\nformat = \"json\"\n", target("a", &a));
    std::fs::write(&path, json).unwrap();
    reload_by_signal(&sc, 3);
    assert!(
        sc.log()
            .contains("only a restart applies a change of log.format"),
        "{}",
        sc.log()
    );
    held_a.push(connect_from("127.0.0.1:0", a.addr));
    wait_counts(&sc, "a", (3.0, 5.0, 2.0));
    wait_counts(&sc, "c", (1.0, 1.0, 0.0));
    assert_eq!(sc.metrics().get(OK, &[]), Some(0.0));

    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    let after = &log[log.find("targets added: c").unwrap()..];
    assert!(!after.contains("target_name=b"), "{after}");
}

fn web_config(dir: &std::path::Path, user: &str) -> std::path::PathBuf {
    let path = dir.join("web.yml");
    // Cost 4, so that the test is quick.
    let hash = bcrypt::hash_with_salt("pw", 4, *b"fix-monitor-salt")
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    std::fs::write(&path, format!("basic_auth_users:\n  {user}: '{hash}'\n")).unwrap();
    path
}

#[test]
fn post_reload_is_off_by_default_and_behind_the_endpoints_auth() {
    let venue = Downstream::listen("127.0.123.5:0");
    let dir = tempfile::tempdir().unwrap();
    let web = web_config(dir.path(), "alice");
    let cfg_path = dir.path().join("config.toml");
    let config = |extra: &str| {
        format!(
            "{}{extra}[prometheus]\nreload_endpoint = true\nweb_config = {:?}\n",
            target("venue", &venue),
            web
        )
    };
    std::fs::write(&cfg_path, config("")).unwrap();
    let c = reqwest::blocking::Client::new();

    // Off by default.
    let off = Sidecar::start(&["--ip", "127.0.123.6"]);
    let url = format!("http://{}/-/reload", off.addr);
    let status = c.post(&url).send().unwrap().status();
    assert_eq!(status, 404, "no reload route unless asked for");
    drop(off);

    let sc = Sidecar::start(&["--config", cfg_path.to_str().unwrap()]);
    let url = format!("http://{}/-/reload", sc.addr);
    assert_eq!(
        c.post(&url).send().unwrap().status(),
        401,
        "behind the auth"
    );
    let as_alice = |req: reqwest::blocking::RequestBuilder| req.basic_auth("alice", Some("pw"));
    assert_eq!(as_alice(c.get(&url)).send().unwrap().status(), 405);

    // A second target and a new user: both apply, the new user for new connections.
    let other = Downstream::listen("127.0.123.7:0");
    std::fs::write(&cfg_path, config(&target("other", &other))).unwrap();
    web_config(dir.path(), "bob");
    let r = as_alice(c.post(&url)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("targets added: other"));
    let health = format!("http://{}/health", sc.addr);
    let fresh = || {
        reqwest::blocking::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let status = fresh()
        .get(&health)
        .basic_auth("alice", Some("pw"))
        .send()
        .unwrap()
        .status();
    assert_eq!(status, 401, "alice is gone from the web config");
    let bob = fresh().get(&health).basic_auth("bob", Some("pw"));
    assert_eq!(bob.send().unwrap().status(), 200);
    let _s = connect_from("127.0.0.1:0", other.addr);
    sc.wait_for("other's session", Duration::from_secs(20), |sc| {
        let m = Metrics::parse(&sc_metrics_as(sc, "bob"));
        m.get("fix_connections_active", &[("target", "other")]) == Some(1.0)
    });

    // A refused reload answers 500 with why.
    std::fs::write(&cfg_path, "[[targets]]\naddress = \"not an address\"\n").unwrap();
    let r = fresh()
        .post(&url)
        .basic_auth("bob", Some("pw"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 500);
    let body = r.text().unwrap();
    assert!(body.contains("targets[0].address"), "{body}");
    sc.wait_for("the refusal in /metrics", Duration::from_secs(20), |sc| {
        Metrics::parse(&sc_metrics_as(sc, "bob")).get(OK, &[]) == Some(0.0)
    });
}

/// `/metrics` with basic auth as `user` (password `pw`).
fn sc_metrics_as(sc: &Sidecar, user: &str) -> String {
    let url = format!("http://{}/metrics", sc.addr);
    let c = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    c.get(url)
        .basic_auth(user, Some("pw"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// The FIX layer across a reload: a log path added; the session's counts go on from where they
/// were (the layer's tracker is kept), and the new file is followed.
#[test]
fn a_reload_keeps_the_fix_layers_counts_and_follows_a_new_log() {
    use fix_monitor::fix::sim::{scripted_session, Venue, VenueBehaviour};
    let venue = || {
        let behaviour = VenueBehaviour {
            ack_delay: Duration::from_millis(5),
            ..VenueBehaviour::default()
        };
        Venue::start("127.0.0.1:0".parse().unwrap(), behaviour).unwrap()
    };
    let (first_venue, second_venue) = (venue(), venue());
    let dir = tempfile::tempdir().unwrap();
    let (first_log, second_log) = (dir.path().join("a.log"), dir.path().join("b.log"));
    std::fs::write(&first_log, b"").unwrap();
    std::fs::write(&second_log, b"").unwrap();
    let config = |logs: &[&std::path::Path]| {
        let mut text = String::new();
        for (name, v) in [("first", &first_venue), ("second", &second_venue)] {
            text += &format!(
                "[[targets]]\nname = \"{name}\"\naddress = \"127.0.0.1\"\nport = {}\n\
                 comp_ids = [\"VENUE\"]\n",
                v.addr.port()
            );
        }
        text += "[poll]\ninterval = \"200ms\"\n[fix]\nour_comp_ids = [\"GW\"]\n";
        for l in logs {
            text += &format!("[[fix.logs]]\npath = {:?}\n", l.display().to_string());
        }
        text
    };
    let cfg = config_file(&config(&[&first_log]));
    let path = cfg.path().to_str().unwrap().to_owned();
    let sc = Sidecar::start(&["--config", &path]);
    let messages = |sc: &Sidecar| sc.json("/sessions")["stats"]["logs"]["messages"].as_u64();
    sc.wait_for("the log followed", Duration::from_secs(10), |s| {
        s.json("/sessions")["log_files"][0] == first_log.display().to_string().as_str()
    });
    let one =
        scripted_session(first_venue.addr, 4, None, Some((first_log.clone(), false))).unwrap();
    let logged = |t: &fix_monitor::fix::sim::Truth| -> u64 {
        t.sent.values().sum::<u64>() + t.received.values().sum::<u64>()
    };
    sc.wait_for(
        "the first session's messages",
        Duration::from_secs(10),
        |s| messages(s) == Some(logged(&one)),
    );

    std::fs::write(&path, config(&[&first_log, &second_log])).unwrap();
    reload_by_signal(&sc, 1);
    assert!(sc.log().contains("configuration reloaded"), "{}", sc.log());
    sc.wait_for("both logs followed", Duration::from_secs(10), |s| {
        s.json("/sessions")["log_files"].as_array().map(Vec::len) == Some(2)
    });
    let two = scripted_session(
        second_venue.addr,
        6,
        None,
        Some((second_log.clone(), false)),
    )
    .unwrap();
    sc.wait_for("both sessions' messages", Duration::from_secs(10), |s| {
        messages(s) == Some(logged(&one) + logged(&two))
    });
    let j = sc.json("/sessions");
    let s = &j["sessions"][0];
    assert_eq!(s["session"], "GW->VENUE", "{j:#}");
    assert_eq!(s["logons"], 2, "one before the reload, one after: {j:#}");
    let orders = one.sent["NewOrderSingle"] + two.sent["NewOrderSingle"];
    assert_eq!(s["out"]["by_type"]["NewOrderSingle"], orders);
    let labels = [
        ("session", "GW->VENUE"),
        ("direction", "out"),
        ("msg_type", "NewOrderSingle"),
    ];
    sc.wait_for("the FIX metrics", Duration::from_secs(10), |s| {
        s.metrics().sum("fix_messages_total", &labels) == orders as f64
    });
    drop((first_venue.stop(), second_venue.stop()));
}

/// A renewed certificate: its files replaced under the same paths, then SIGHUP; a new
/// connection gets the new certificate (a client trusting only its CA could not connect before).
#[test]
fn a_reload_serves_a_renewed_certificate() {
    use crate::otlp_receiver::Pki;
    let (old, renewed) = (Pki::new(), Pki::new());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let install = |pki: &Pki| {
        std::fs::copy(&pki.server_cert, &cert).unwrap();
        std::fs::copy(&pki.server_key, &key).unwrap();
    };
    install(&old);
    let web = dir.path().join("web.yml");
    let tls = format!("tls_server_config:\n  cert_file: {cert:?}\n  key_file: {key:?}\n");
    std::fs::write(&web, tls).unwrap();
    let sc = Sidecar::start(&[
        "--ip",
        "127.0.123.9",
        "--web.config.file",
        web.to_str().unwrap(),
    ]);
    let trusting = |pki: &Pki| {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let url = format!("https://localhost:{}/health", sc.addr.port());
    assert_eq!(trusting(&old).get(&url).send().unwrap().status(), 200);
    assert!(
        trusting(&renewed).get(&url).send().is_err(),
        "not the renewed one yet"
    );
    install(&renewed);
    reload_by_signal(&sc, 1);
    assert!(sc.log().contains("configuration reloaded"), "{}", sc.log());
    assert_eq!(trusting(&renewed).get(&url).send().unwrap().status(), 200);
    assert!(
        trusting(&old).get(&url).send().is_err(),
        "the old one is gone"
    );
}

/// `log.level` applies at a reload: at `warn`, the info line of each open is no longer written.
#[test]
fn a_reload_sets_the_log_level() {
    let venue = Downstream::listen("127.0.123.10:0");
    let cfg = config_file(&target("venue", &venue));
    let path = cfg.path().to_str().unwrap().to_owned();
    let sc = Sidecar::start(&["--config", &path, "--interval", "100ms"]);
    let _first = connect_from("127.0.0.1:0", venue.addr);
    wait_counts(&sc, "venue", (1.0, 1.0, 0.0));
    sc.wait_for("the first open's line", Duration::from_secs(10), |s| {
        s.log().matches("connection opened").count() == 1
    });
    std::fs::write(
        &path,
        format!("{}[log]\nlevel = \"warn\"\n", target("venue", &venue)),
    )
    .unwrap();
    reload_by_signal(&sc, 1);
    let _second = connect_from("127.0.0.1:0", venue.addr);
    wait_counts(&sc, "venue", (2.0, 2.0, 0.0));
    sc.wait_polls(3);
    assert_eq!(
        sc.log().matches("connection opened").count(),
        1,
        "{}",
        sc.log()
    );
}
