//! What one target, one local port and the sidecar itself add to `/metrics`: the sizing numbers
//! of dashboards/README.md ("Series per session, target and histogram"), held to the real
//! binary (netlink source, session health on). A metric added per target or per port changes
//! these counts, and the docs' numbers with them.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use crate::harness::*;

/// dashboards/README.md: "a target costs about **52** series" (netlink, with session health
/// and a `heartbeat`, once a lifetime is recorded and while a session is active).
const PER_TARGET: usize = 53;
/// "**One local port** ... adds up to **6**".
const PER_ACTIVE_PORT: usize = 6;
/// "`fix_connection_retransmits_by_port_total` stays for every port that has had a session".
const PER_FORMER_PORT: usize = 1;
/// "**One sidecar** adds its own series ... 29 to 40 in all": 29 without eBPF, `[fix]`, OTLP
/// or a state dir.
const PER_SIDECAR: usize = 29;

/// The sample lines of a Prometheus text body, counted by their `target` and `port` labels
/// ("" where a line has none).
fn census(body: &str) -> BTreeMap<(String, String), usize> {
    let label = |line: &str, key: &str| {
        line.split(&format!("{key}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_owned()
    };
    let mut counts = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        *counts
            .entry((label(line, "target"), label(line, "port")))
            .or_default() += 1;
    }
    counts
}

#[test]
fn one_target_one_port_and_the_sidecar_add_the_documented_series() {
    let venue = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = venue.local_addr().unwrap();
    let ports = PortRange::reserve(2);
    let cfg = config_file(&format!(
        r#"
[[targets]]
name = "venue-s"
address = "127.0.0.1"
port = {}
local_ports = [{}, {}]
heartbeat = "30s"

[poll]
source = "netlink"
interval = "200ms"
"#,
        at.port(),
        ports.first,
        ports.last
    ));
    let sc = Sidecar::start(&["--config", cfg.path().to_str().unwrap()]);
    // Sessions open before the first poll have no known start, hence no lifetime.
    sc.wait_polls(1);
    // One session that closes (a lifetime in the histogram; its port keeps a retransmit
    // series), one that stays (every health series).
    let gone = connect_from(&ports.local(0), at);
    let (gone_peer, _) = venue.accept().unwrap();
    let mut stays = connect_from(&ports.local(1), at);
    let (mut stays_peer, _) = venue.accept().unwrap();
    // Data both ways: RTT samples and a time since data was received.
    stays.write_all(b"8=FIX.4.4").unwrap();
    stays_peer.write_all(b"8=FIX.4.4").unwrap();
    sc.wait_for("both sessions", Duration::from_secs(20), |s| {
        s.metrics().count("fix_connections_total", &[]) == 2.0
    });
    drop(gone);
    drop(gone_peer);
    sc.wait_for(
        "a lifetime and an RTT sample",
        Duration::from_secs(20),
        |s| {
            let m = s.metrics();
            m.count("fix_connection_duration_seconds_count", &[]) == 1.0
                && m.count("fix_connection_rtt_seconds_count", &[]) > 0.0
                && m.get("fix_connection_receive_silence_seconds", &[])
                    .is_some()
        },
    );
    sc.wait_polls(2);
    let (code, body) = sc.get("/metrics");
    assert_eq!(code, 200);
    let counts = census(&body);
    let n = |target: &str, port: String| counts.get(&(target.into(), port)).copied();
    let shown = format!("{counts:?}\n{body}");
    assert_eq!(n("venue-s", String::new()), Some(PER_TARGET), "{shown}");
    assert_eq!(
        n("venue-s", ports.port(1).to_string()),
        Some(PER_ACTIVE_PORT),
        "{shown}"
    );
    assert_eq!(
        n("venue-s", ports.port(0).to_string()),
        Some(PER_FORMER_PORT),
        "{shown}"
    );
    assert_eq!(n("", String::new()), Some(PER_SIDECAR), "{shown}");
    assert_eq!(counts.len(), 4, "{shown}");
    drop((stays, stays_peer));
}
