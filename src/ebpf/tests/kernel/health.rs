//! Every health field against `ss -tin` for the same sockets: an idle session, a slow reader
//! (our receive queue grows), a slow venue (it stops reading: a zero window, unsent bytes,
//! time limited by the receiver's window), a lossy one (nftables drops what we send:
//! unacknowledged segments counted lost, retransmissions and their bytes), and one whose ACKs
//! were late (nftables drops the venue's ACKs until we have retransmitted: the venue receives
//! the data twice and says so with a D-SACK).
//!
//! Tolerance: the pass and `ss` cannot read at the same instant, so `ss` runs between two
//! passes and each value must lie between the two, with no slack for counters and queues
//! (lost, bytes retransmitted, D-SACK duplicates, Send-Q and Recv-Q must equal `ss` exactly
//! when they did not move between the passes, as on the idle, slow-reader and zero-window
//! sessions); fields that only grow with time, like the window-limited time, do grow between
//! them; the times since the last data sent or received or the last ACK may also start again
//! from 0 when a retransmission, a window probe or its ACK goes by in between. The slack is one
//! jiffy (4 ms at HZ=250) plus `ss`'s rounding to whole milliseconds (and to 1 µs for the RTTs,
//! printed in ms with three decimals); none for the delivery rate, which `ss` prints in whole
//! bits per second (8 times ours).

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
    let total_retrans = ss
        .fields
        .get("retrans")
        .map(|v| v.split('/').nth(1).unwrap().parse().unwrap())
        .unwrap_or(0.0);
    for (what, said, field, slack) in rtt_and_counters(ss, total_retrans)
        .into_iter()
        .chain(queues_and_windows(ss, jiffy_ms))
    {
        between(what, said, field(h1), field(h2), slack);
    }
    let ages: [(&str, &str, Field); 3] = [
        ("lastrcv (ms)", "lastrcv", |h| h.last_data_recv_ms as f64),
        ("lastsnd (ms)", "lastsnd", |h| h.last_data_sent_ms as f64),
        ("lastack (ms)", "lastack", |h| h.last_ack_recv_ms as f64),
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
fn every_health_field_matches_ss_for_idle_slow_reader_zero_window_lossy_and_late_ack_sessions() {
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
    // late ACKs: the venue's ACKs are dropped until we have retransmitted; the venue then gets
    // the data twice and the ACK that finally arrives carries a D-SACK
    sessions.extend(venue.open(1));
    let late = sessions[4].0.local_addr().unwrap();
    let ack_drop = InputDrop::segments(venue.port, late.port());
    sessions[4].0.write_all(b"8=FIX.4.4|35=0|").unwrap();
    sessions[4].1.read_exact(&mut [0u8; 15]).unwrap();
    until_pass(&mut m, "a retransmission of the late-ACK session", |h| {
        h.local == late && h.total_retrans >= 1
    });
    drop(ack_drop);
    until_pass(&mut m, "the late-ACK session's D-SACK", |h| {
        h.local == late && h.dsack_dups >= 1 && h.unacked == 0
    });

    let locals: Vec<_> = sessions
        .iter()
        .map(|(ours, _)| ours.local_addr().unwrap())
        .collect();
    // settled: the slow venue's window has closed (a probe is pending, nothing in flight)
    until_pass(&mut m, "the zero window", |h| {
        h.local == locals[2] && h.snd_wnd == 0 && h.unacked == 0
    });
    until_pass(&mut m, "two retransmissions on the lossy session", |h| {
        h.local == locals[3] && h.total_retrans >= 2
    });
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
    each_session_shows_its_condition(&h1, &locals);
    assert_eq!(h1.len(), 5, "only the targets' sessions are watched");
}

/// Each session's condition shows in its own fields, beyond agreeing with `ss`: every field is
/// seen non-zero somewhere.
fn each_session_shows_its_condition(h1: &[Health], locals: &[std::net::SocketAddr]) {
    for h in h1 {
        let min_rtt = h.min_rtt_us.unwrap();
        assert!(min_rtt > 0 && min_rtt <= h.srtt_us + 1, "min RTT: {h:?}");
    }
    let idle = h1.iter().find(|h| h.local == locals[0]).unwrap();
    assert!(
        idle.send_queue_bytes == 0 && idle.delivery_rate > 0 && idle.last_ack_recv_ms > 0,
        "the idle session: {idle:?}"
    );
    let slow_reader = h1.iter().find(|h| h.local == locals[1]).unwrap();
    assert!(
        slow_reader.rcv_queue > 100_000,
        "the slow reader's queue: {slow_reader:?}"
    );
    let slow_venue = h1.iter().find(|h| h.local == locals[2]).unwrap();
    assert!(
        slow_venue.notsent_bytes > 0
            && slow_venue.send_queue_bytes >= slow_venue.notsent_bytes
            && slow_venue.rwnd_limited_us > 0,
        "the slow venue: {slow_venue:?}"
    );
    let lossy = h1.iter().find(|h| h.local == locals[3]).unwrap();
    assert!(
        lossy.unacked > 0
            && lossy.total_retrans >= 2
            && lossy.lost > 0
            && lossy.bytes_retrans > 0
            && lossy.send_queue_bytes > 0,
        "the lossy session: {lossy:?}"
    );
    let late_acks = h1.iter().find(|h| h.local == locals[4]).unwrap();
    assert!(
        late_acks.dsack_dups >= 1 && late_acks.bytes_retrans > 0 && late_acks.send_queue_bytes == 0,
        "the late-ACK session: {late_acks:?}"
    );
}

/// Sessions the live-table pass has read in full so far (the rest it skipped unread).
fn reads(m: &mut fix_monitor_ebpf::Monitor) -> u64 {
    m.counters().unwrap().health_reads
}

/// Where the pass skips settled sessions (`skips`: the live-table pass), that it read exactly
/// `n` sessions in full since the count was `before`.
fn read_since(m: &mut fix_monitor_ebpf::Monitor, before: u64, skips: bool, n: u64, why: &str) {
    if skips {
        assert_eq!(reads(m) - before, n, "{why}");
    }
}

/// Of the next 60 passes over `n` sessions, one writes all of them and the others none (every
/// one writes all where `every_pass_writes_all`: the storage-map iterator).
fn one_pass_in_60_writes_all(
    m: &mut fix_monitor_ebpf::Monitor,
    n: usize,
    every_pass_writes_all: bool,
) {
    let written: Vec<usize> = (0..60)
        .map(|_| {
            m.health().unwrap();
            m.last_pass_written()
        })
        .collect();
    if every_pass_writes_all {
        assert!(written.iter().all(|&w| w == n), "{written:?}");
    } else {
        assert_eq!(
            written.iter().filter(|&&w| w == n).count(),
            1,
            "one pass in 60 writes all: {written:?}"
        );
        assert_eq!(written.iter().sum::<usize>(), n, "{written:?}");
    }
}

/// Runs health passes until one has a session for which `done` holds (10 s at most).
fn until_pass(m: &mut fix_monitor_ebpf::Monitor, what: &str, done: impl Fn(&Health) -> bool) {
    wait_for(what, Duration::from_secs(10), || {
        m.health().unwrap().iter().find(|h| done(h)).map(|_| ())
    });
}

/// A field of `Health` as a number, and a row of the comparison: its name, what `ss` says, the
/// field, and the slack allowed.
type Field = fn(&Health) -> f64;
type Row = (&'static str, f64, Field, f64);

/// RTTs, retransmissions and byte counters: exact, or to `ss`'s printed precision.
fn rtt_and_counters(ss: &SsInfo, total_retrans: f64) -> [Row; 12] {
    let (rtt, rttvar) = ss.fields["rtt"].split_once('/').expect("rtt:a/b");
    let rows: [Row; 12] = [
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
            "minrtt (ms)",
            ss.num("minrtt"),
            |h| h.min_rtt_us.expect("a min RTT sample") as f64 / 1000.0,
            0.001,
        ),
        (
            "total retrans",
            total_retrans,
            |h| h.total_retrans as f64,
            0.0,
        ),
        ("lost", ss.num("lost"), |h| h.lost as f64, 0.0),
        (
            "bytes_retrans",
            ss.num("bytes_retrans"),
            |h| h.bytes_retrans as f64,
            0.0,
        ),
        (
            "dsack_dups",
            ss.num("dsack_dups"),
            |h| h.dsack_dups as f64,
            0.0,
        ),
        (
            "delivery_rate (bytes/s)",
            ss.num("delivery_rate") / 8.0,
            |h| h.delivery_rate as f64,
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
    ];
    rows
}

/// Queues, time limited, and windows (the times in ms, to within a jiffy).
fn queues_and_windows(ss: &SsInfo, jiffy_ms: f64) -> [Row; 8] {
    let rows: [Row; 8] = [
        (
            "notsent",
            ss.num("notsent"),
            |h| h.notsent_bytes as f64,
            0.0,
        ),
        ("Recv-Q", ss.recv_q as f64, |h| h.rcv_queue as f64, 0.0),
        (
            "Send-Q",
            ss.send_q as f64,
            |h| h.send_queue_bytes as f64,
            0.0,
        ),
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
    rows
}

/// The live-table pass writes only the sessions whose record changed; the others' health is
/// the kept record with its times brought up to the pass's clock, and it still agrees with
/// `ss`. Every `WRITE_ALL_EVERY` (60) passes one writes every session. (With the storage-map
/// iterator every pass writes every session.)
#[test]
fn a_pass_writes_only_the_changed_sessions_and_the_others_still_agree_with_ss() {
    const N: usize = 20;
    const TOUCHED: usize = 5;
    let venue = Venue::start();
    let mut m = load();
    m.set_targets(&[target(venue.port)]).unwrap();
    let mut sessions = venue.open(N);
    events_until(&mut m, "the ESTABLISHED events", |e| e.len() >= N);
    let every_pass_writes_all = *m.health_walk() == fix_monitor_ebpf::HealthWalk::StorageMap;
    let expect_written = |n: usize| if every_pass_writes_all { N } else { n };
    // The handshakes' last ACKs settle; then a pass finds nothing changed.
    wait_for(
        "a pass that writes nothing new",
        Duration::from_secs(5),
        || {
            (m.health().unwrap().len() == N && m.last_pass_written() == expect_written(0))
                .then_some(())
        },
    );
    let before = m.health().unwrap();
    assert_eq!(m.last_pass_written(), expect_written(0));
    // Settled, idle sessions are not even read: nothing that changes a record moved.
    let reads_before = reads(&mut m);
    m.health().unwrap();
    read_since(
        &mut m,
        reads_before,
        !every_pass_writes_all,
        0,
        "idle ones unread",
    );

    // Five sessions exchange a message each way; the other fifteen stay idle.
    for (ours, theirs) in sessions.iter_mut().take(TOUCHED) {
        ours.write_all(b"8=FIX.4.4|35=0|").unwrap();
        theirs.read_exact(&mut [0u8; 15]).unwrap();
        theirs.write_all(b"8=FIX.4.4|35=0|").unwrap();
        ours.read_exact(&mut [0u8; 15]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let reads_before = reads(&mut m);
    let h1 = m.health().unwrap();
    assert_eq!(
        m.last_pass_written(),
        expect_written(TOUCHED),
        "only the sessions that exchanged data are written"
    );
    let skips = !every_pass_writes_all;
    read_since(
        &mut m,
        reads_before,
        skips,
        TOUCHED as u64,
        "only the 5 are read",
    );
    let ss = ss(venue.port);
    let reads_before = reads(&mut m);
    let h2 = m.health().unwrap();
    assert_eq!(m.last_pass_written(), expect_written(0), "then none again");
    read_since(&mut m, reads_before, skips, 0, "nor read");
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    for (i, (ours, _)) in sessions.iter().enumerate() {
        let local = ours.local_addr().unwrap();
        let find = |pass: &[Health]| pass.iter().find(|h| h.local == local).cloned().unwrap();
        let (was, a, b) = (find(&before), find(&h1), find(&h2));
        compare(&a, &b, &ss[&local], elapsed_ms);
        if i < TOUCHED {
            assert_eq!(
                (a.bytes_acked, a.bytes_received),
                (was.bytes_acked + 15, was.bytes_received + 15),
                "session {i} exchanged 15 bytes each way"
            );
        } else {
            // Idle: the same record, only its times moved on with the clock.
            let moved = a.last_data_recv_ms - was.last_data_recv_ms;
            assert!(moved >= 300, "session {i}: silence grew by {moved} ms");
            let same = Health {
                last_data_recv_ms: was.last_data_recv_ms,
                last_data_sent_ms: was.last_data_sent_ms,
                last_ack_recv_ms: was.last_ack_recv_ms,
                ..a.clone()
            };
            assert_eq!(same, was, "session {i}: nothing but the times changed");
        }
    }

    // One of the next 60 passes writes every session (the kept records are rebuilt).
    one_pass_in_60_writes_all(&mut m, N, every_pass_writes_all);
}

/// A pass skips a settled session whose `tcp_sock` nothing has touched; what the application
/// alone does (read its receive queue, queue bytes into a closed window) sends no packet of
/// its own, and still reaches the next pass.
#[test]
fn what_the_application_alone_does_reaches_the_next_pass() {
    let venue = Venue::start();
    let mut m = load();
    m.set_targets(&[target(venue.port)]).unwrap();
    let mut sessions = venue.open(2);
    events_until(&mut m, "the ESTABLISHED events", |e| e.len() >= 2);
    // The storage-map iterator reads every session on every pass: nothing is skipped there,
    // and only what the application did is checked.
    let skips = *m.health_walk() != fix_monitor_ebpf::HealthWalk::StorageMap;
    let reader = sessions[0].0.local_addr().unwrap();
    // The venue sends 100 bytes that we leave unread: the receive queue holds them.
    sessions[0].1.write_all(&[b'x'; 100]).unwrap();
    until_pass(&mut m, "the unread bytes", |h| {
        h.local == reader && h.rcv_queue == 100
    });
    // Settled (its last packet over 10 ms old): the next passes read nothing.
    std::thread::sleep(Duration::from_millis(50));
    m.health().unwrap();
    let before = reads(&mut m);
    m.health().unwrap();
    if skips {
        assert_eq!(reads(&mut m) - before, 0, "settled sessions are skipped");
    }

    // The application reads the queue: no packet needs to move for that.
    sessions[0].0.read_exact(&mut [0u8; 100]).unwrap();
    let before = reads(&mut m);
    let pass = m.health().unwrap();
    if skips {
        assert!(reads(&mut m) - before >= 1, "the reader's session is read");
    }
    let h = pass.iter().find(|h| h.local == reader).unwrap();
    assert_eq!(
        h.rcv_queue, 0,
        "the queue read by the application is empty: {h:?}"
    );
    assert_eq!(h.bytes_received, 100, "{h:?}");
}

/// A kept record outlives its session until the close is read (`poll_events`): `health` still
/// returns it until then, `whole_health` (what a reconcile uses) returns only the sessions the
/// kernel holds, and reading the close drops the kept record.
#[test]
fn a_closed_sessions_kept_record_goes_with_its_close_and_a_whole_pass_never_has_it() {
    use fix_monitor_ebpf::model::tcp_state::CLOSE;
    let venue = Venue::start();
    let mut m = load();
    m.set_targets(&[target(venue.port)]).unwrap();
    let mut sessions = venue.open(3);
    events_until(&mut m, "the ESTABLISHED events", |e| e.len() >= 3);
    let cookies = |pass: Vec<Health>| -> Vec<u64> { pass.iter().map(|h| h.sock_cookie).collect() };
    assert_eq!(m.health().unwrap().len(), 3);

    // Closed in the kernel (its live entry gone), its close not read yet.
    let first = cookie(&sessions[0].0);
    drop(sessions.remove(0));
    wait_for(
        "the first close in the kernel",
        Duration::from_secs(5),
        || (m.live_entries() == 2).then_some(()),
    );
    assert!(
        cookies(m.health().unwrap()).contains(&first),
        "kept until its close is read"
    );
    let whole = cookies(m.whole_health().unwrap());
    assert_eq!(whole.len(), 2, "{whole:?}");
    assert!(!whole.contains(&first));
    assert!(
        !cookies(m.health().unwrap()).contains(&first),
        "the whole pass rebuilt what is kept"
    );

    // Reading a close drops its kept record.
    let second = cookie(&sessions[0].0);
    drop(sessions.remove(0));
    events_until(&mut m, "the close events", |e| {
        e.iter()
            .any(|c| c.sock_cookie == second && c.new_state == CLOSE)
    });
    let after = cookies(m.health().unwrap());
    assert_eq!(after, vec![cookie(&sessions[0].0)]);
}
