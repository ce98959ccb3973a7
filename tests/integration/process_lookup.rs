//! `poll.process_lookup` through the real binary: a session this test process holds is named
//! with this process's pid and command in `/connections`, in the log, and (closed) nowhere
//! wrong; `/health` says how far the lookup sees. Netlink and procfs, as a normal user or root.

use std::time::Duration;

use crate::harness::*;

/// This process's command, as `/proc/PID/comm` has it (what the sidecar reads).
fn my_comm() -> String {
    std::fs::read_to_string(format!("/proc/{}/comm", std::process::id()))
        .unwrap()
        .trim_end()
        .to_string()
}

#[test]
fn process_lookup_names_this_test_as_the_owner_of_its_sessions() {
    let me = std::process::id();
    for (i, source) in ["netlink", "procfs"].iter().enumerate() {
        let addr = format!("127.0.4.{}", 10 + i);
        let d = Downstream::listen(&format!("{addr}:0"));
        let cfg = config_file(&format!(
            "[[targets]]\nname = \"venue\"\naddress = \"{addr}\"\nport = {}\n\
             [poll]\ninterval = \"100ms\"\nsource = \"{source}\"\nprocess_lookup = true\n",
            d.addr.port()
        ));
        // One session before the sidecar starts (found by its first poll), one after.
        let before = connect_from("127.0.0.1:0", d.addr);
        let sc = Sidecar::start(&["--config", cfg.path().to_str().unwrap()]);
        sc.wait_polls(1);
        let after = connect_from("127.0.0.1:0", d.addr);
        sc.wait_for("2 active", Duration::from_secs(10), |s| {
            s.metrics().get("fix_connections_active", &[]) == Some(2.0)
        });
        let conns = sc.json("/connections");
        let rows = conns["connections"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{source}: {conns}");
        let mut ports: Vec<u64> = rows
            .iter()
            .map(|r| r["local_port"].as_u64().unwrap())
            .collect();
        ports.sort();
        let mut made = [&before, &after].map(|s| u64::from(s.local_addr().unwrap().port()));
        made.sort();
        assert_eq!(ports, made, "{source}: {conns}");
        for row in rows {
            assert_eq!(row["pid"], me, "{source}: {conns}");
            assert_eq!(row["comm"], my_comm(), "{source}: {conns}");
        }
        let health = sc.json("/health");
        let lookup = &health["process_lookup"];
        assert_eq!(lookup["available"], true, "{source}: {health}");
        // Two walks: the first poll's (the session made before the start), the later one's; a
        // poll without new sessions walks nothing.
        sc.wait_polls(3);
        assert_eq!(
            sc.json("/health")["process_lookup"]["scans"],
            2,
            "{source}: {health}"
        );

        drop(after);
        sc.wait_for("1 closed", Duration::from_secs(10), |s| {
            s.metrics().sum("fix_connections_closed_total", &[]) == 1.0
        });
        let (st, log) = sc.terminate();
        assert!(st.success(), "{source}: {log}");
        let named = format!("pid={me} comm={}", my_comm());
        let opened = log
            .lines()
            .filter(|l| l.contains("connection opened") && l.contains(&named))
            .count();
        let closed = log
            .lines()
            .filter(|l| l.contains("connection closed") && l.contains(&named))
            .count();
        assert_eq!((opened, closed), (2, 1), "{source}: {log}");
        assert!(log.contains("process lookup on"), "{source}: {log}");
        drop(before);
    }
}

/// Off by default: no pid or command, no walk, nothing in `/health`.
#[test]
fn process_lookup_is_off_by_default() {
    let d = Downstream::listen("127.0.4.20:0");
    // Netlink: in eBPF mode the tracepoint names the connecting process without any lookup.
    let sc = Sidecar::start(&[
        "--ip",
        "127.0.4.20",
        "--source",
        "netlink",
        "--interval",
        "100ms",
    ]);
    let _c = connect_from("127.0.0.1:0", d.addr);
    sc.wait_for("1 active", Duration::from_secs(10), |s| {
        s.metrics().get("fix_connections_active", &[]) == Some(1.0)
    });
    let conns = sc.json("/connections");
    assert!(conns["connections"][0].get("pid").is_none(), "{conns}");
    assert!(conns["connections"][0].get("comm").is_none(), "{conns}");
    assert!(sc.json("/health").get("process_lookup").is_none());
}
