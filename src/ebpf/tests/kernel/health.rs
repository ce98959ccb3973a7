//! Every health field against `ss -tin` for the same sockets: an idle session, a slow reader
//! (our receive queue grows), a slow venue (it stops reading: a zero window, unsent bytes,
//! time limited by the receiver's window), and a lossy one (nftables drops what we send:
//! unacknowledged segments, retransmissions).
//!
//! Tolerance: the pass and `ss` cannot read at the same instant, so `ss` runs between two
//! passes and each value must lie between the two (fields that only grow with time, like the
//! window-limited time, do grow between them); the times since the last data sent or received
//! may also start again from 0 when a retransmission or a window probe goes out in between. The slack is
//! one jiffy (4 ms at HZ=250) plus `ss`'s rounding to whole milliseconds (and to 1 µs for the
//! RTT, printed in ms with three decimals).

use std::io::{Read, Write};
use std::time::Duration;

use fix_monitor_ebpf::Health;

use super::support::*;

fn between(what: &str, ss: f64, a: f64, b: f64, slack: f64) {
    let (lo, hi) = (a.min(b) - slack, a.max(b) + slack);
    assert!(
        lo <= ss && ss <= hi,
        "{what}: ss says {ss}, the eBPF passes {a} and {b} (slack {slack})"
    );
}

/// A time since the last data: it grows by the time between the passes, unless data moved
/// after the first pass (a retransmission, a window probe), which starts it again from 0, so
/// that `ss` can then say no more than the time since the first pass.
fn age(what: &str, ss: f64, a: f64, b: f64, elapsed_ms: f64, slack: f64) {
    let grew = a - slack <= ss && ss <= a + elapsed_ms + slack;
    let restarted = ss <= elapsed_ms + slack;
    assert!(
        grew || restarted,
        "{what}: ss says {ss}, the eBPF passes {a} and {b}, {elapsed_ms} ms apart (slack {slack})"
    );
}

/// Every field `ss -tin` shows against the two passes around it: a table of (name, what ss
/// says, the field in each pass, slack), then the two "time since" fields, which may restart.
fn compare(h1: &Health, h2: &Health, ss: &SsInfo, elapsed_ms: f64) {
    let jiffy_ms = 4.0 + 1.0;
    let (rtt, rttvar) = ss.fields["rtt"].split_once('/').expect("rtt:a/b");
    let total_retrans = ss
        .fields
        .get("retrans")
        .map(|v| v.split('/').nth(1).unwrap().parse().unwrap())
        .unwrap_or(0.0);
    type Field = fn(&Health) -> f64;
    let rows: [(&str, f64, Field, f64); 14] = [
        (
            "rtt (ms)",
            rtt.parse().unwrap(),
            |h| h.srtt_us as f64 / 1000.0,
            0.001,
        ),
        (
            "rttvar (ms)",
            rttvar.parse().unwrap(),
            |h| h.rttvar_us as f64 / 1000.0,
            0.001,
        ),
        (
            "total retrans",
            total_retrans,
            |h| h.total_retrans as f64,
            0.0,
        ),
        (
            "bytes_sent",
            ss.num("bytes_sent"),
            |h| h.bytes_sent as f64,
            0.0,
        ),
        (
            "bytes_acked",
            ss.num("bytes_acked"),
            |h| h.bytes_acked as f64,
            0.0,
        ),
        (
            "bytes_received",
            ss.num("bytes_received"),
            |h| h.bytes_received as f64,
            0.0,
        ),
        ("unacked", ss.num("unacked"), |h| h.unacked as f64, 0.0),
        (
            "notsent",
            ss.num("notsent"),
            |h| h.notsent_bytes as f64,
            0.0,
        ),
        ("Recv-Q", ss.recv_q as f64, |h| h.rcv_queue as f64, 0.0),
        (
            "busy (ms)",
            ss.num("busy"),
            |h| h.busy_us as f64 / 1000.0,
            jiffy_ms,
        ),
        (
            "rwnd_limited (ms)",
            ss.num("rwnd_limited"),
            |h| h.rwnd_limited_us as f64 / 1000.0,
            jiffy_ms,
        ),
        (
            "sndbuf_limited (ms)",
            ss.num("sndbuf_limited"),
            |h| h.sndbuf_limited_us as f64 / 1000.0,
            jiffy_ms,
        ),
        ("cwnd", ss.num("cwnd"), |h| h.snd_cwnd as f64, 0.0),
        ("snd_wnd", ss.num("snd_wnd"), |h| h.snd_wnd as f64, 0.0),
    ];
    for (what, said, field, slack) in rows {
        between(what, said, field(h1), field(h2), slack);
    }
    let ages: [(&str, &str, Field); 2] = [
        ("lastrcv (ms)", "lastrcv", |h| h.last_data_recv_ms as f64),
        ("lastsnd (ms)", "lastsnd", |h| h.last_data_sent_ms as f64),
    ];
    for (what, key, field) in ages {
        age(
            what,
            ss.num(key),
            field(h1),
            field(h2),
            elapsed_ms,
            jiffy_ms,
        );
    }
}

#[test]
fn every_health_field_matches_ss_for_idle_slow_reader_zero_window_and_lossy_sessions() {
    let (venue, lossy_venue) = (Venue::start(), Venue::start());
    let mut m = load();
    m.set_targets(&[target(venue.port), target(lossy_venue.port)])
        .unwrap();
    let mut sessions = venue.open(3);
    // lossy: everything we send the lossy venue is dropped on its way in (nftables), so our
    // segments wait unacknowledged and are retransmitted with a growing timeout
    sessions.extend(lossy_venue.open(1));
    let _drop = InputDrop::new(lossy_venue.port);
    write_some(&mut sessions[3].0, 4 * 1024 * 1024);

    // idle: a small exchange both ways, read on both sides
    let (ours, theirs) = &mut sessions[0];
    ours.write_all(b"8=FIX.4.4|35=A|").unwrap();
    theirs.read_exact(&mut [0u8; 15]).unwrap();
    theirs.write_all(b"8=FIX.4.4|35=A|108=30|").unwrap();
    ours.read_exact(&mut [0u8; 22]).unwrap();
    // slow reader: the venue sends 200 KB we never read
    write_some(&mut sessions[1].1, 200 * 1024);
    // slow venue: we send until its window closes and our buffer holds unsent bytes
    write_some(&mut sessions[2].0, 64 * 1024 * 1024);

    let locals: Vec<_> = sessions
        .iter()
        .map(|(ours, _)| ours.local_addr().unwrap())
        .collect();
    // settled: the slow venue's window has closed (a probe is pending, nothing in flight)
    wait_for("the zero window", Duration::from_secs(10), || {
        let pass = m.health().unwrap();
        pass.iter()
            .find(|h| h.local == locals[2] && h.snd_wnd == 0 && h.unacked == 0)
            .map(|_| ())
    });
    wait_for(
        "two retransmissions on the lossy session",
        Duration::from_secs(10),
        || {
            let pass = m.health().unwrap();
            pass.iter()
                .find(|h| h.local == locals[3] && h.total_retrans >= 2)
                .map(|_| ())
        },
    );
    std::thread::sleep(Duration::from_millis(300));

    let started = std::time::Instant::now();
    let h1 = m.health().unwrap();
    let mut ss_lines = ss(venue.port);
    ss_lines.extend(ss(lossy_venue.port));
    let ss = ss_lines;
    let h2 = m.health().unwrap();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    for (i, local) in locals.iter().enumerate() {
        let find = |pass: &[Health]| {
            pass.iter()
                .find(|h| h.local == *local)
                .cloned()
                .expect("watched")
        };
        let (a, b) = (find(&h1), find(&h2));
        let info = ss
            .get(local)
            .unwrap_or_else(|| panic!("ss has no line for {local}"));
        eprintln!("session {i}: {a:?}\nss: {info:?}");
        compare(&a, &b, info, elapsed_ms);
    }
    let slow_reader = h1.iter().find(|h| h.local == locals[1]).unwrap();
    assert!(
        slow_reader.rcv_queue > 100_000,
        "the slow reader's queue: {slow_reader:?}"
    );
    let slow_venue = h1.iter().find(|h| h.local == locals[2]).unwrap();
    assert!(
        slow_venue.notsent_bytes > 0 && slow_venue.rwnd_limited_us > 0,
        "the slow venue: {slow_venue:?}"
    );
    let lossy = h1.iter().find(|h| h.local == locals[3]).unwrap();
    assert!(
        lossy.unacked > 0 && lossy.total_retrans >= 2,
        "the lossy session: {lossy:?}"
    );
    assert_eq!(h1.len(), 4, "only the targets' sessions are watched");
}
