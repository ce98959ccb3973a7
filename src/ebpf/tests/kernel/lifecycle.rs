//! Sessions from before the load, state changes, resets with their reason, and targets that
//! change without a reload.

use std::io::Write;
use std::time::Duration;

use fix_monitor_ebpf::model::tcp_state;
use fix_monitor_ebpf::Closer;

use super::support::*;

#[test]
fn sessions_opened_before_and_after_load_are_watched_with_health() {
    let venue = Venue::start();
    let before = venue.open(3);
    let mut m = load();
    m.set_targets(&[target(venue.port)]).unwrap();
    assert!(
        m.health().unwrap().is_empty(),
        "nothing watched before the scan"
    );

    let mut adopted = m.scan_existing().unwrap();
    adopted.sort();
    let mut expected: Vec<u64> = before.iter().map(|(ours, _)| cookie(ours)).collect();
    expected.sort();
    assert_eq!(
        adopted, expected,
        "the scan adopts exactly the target's established sessions"
    );

    let after = venue.open(2);
    let opened = events_until(&mut m, "two ESTABLISHED events", |e| {
        e.iter()
            .filter(|c| c.new_state == tcp_state::ESTABLISHED)
            .count()
            == 2
    });
    for (ours, _) in &after {
        let e = opened
            .iter()
            .find(|e| e.sock_cookie == cookie(ours))
            .expect("an event for the new session");
        assert_eq!(e.pid, Some(std::process::id()), "the connecting process");
        assert_eq!(e.local, ours.local_addr().unwrap());
        assert_eq!(e.remote, ours.peer_addr().unwrap());
        assert!(!e.adopted);
    }

    let pass = m.health().unwrap();
    assert_eq!(pass.len(), 5);
    for (ours, _) in before.iter().chain(&after) {
        let h = pass
            .iter()
            .find(|h| h.sock_cookie == cookie(ours))
            .expect("health for each session");
        assert_eq!(h.remote.port(), venue.port);
        assert_eq!(h.state, tcp_state::ESTABLISHED);
        assert!(h.srtt_us > 0, "an RTT sample from the handshake: {h:?}");
    }
    assert_eq!(pass.iter().filter(|h| h.adopted).count(), 3);
}

#[test]
fn a_reset_we_send_reaches_the_close_event_with_its_reason() {
    let venue = Venue::start();
    let mut m = load();
    m.set_targets(&[target(venue.port)]).unwrap();
    let mut sessions = venue.open(1);
    let (ours, theirs) = sessions.pop().unwrap();
    let id = cookie(&ours);
    // unread data in our receive queue: close() discards it and sends a RST
    // (__tcp_close(): SK_RST_REASON_TCP_ABORT_ON_CLOSE)
    (&theirs).write_all(b"unread").unwrap();
    wait_for("the data to arrive", Duration::from_secs(5), || {
        m.health()
            .unwrap()
            .iter()
            .find(|h| h.sock_cookie == id && h.rcv_queue == 6)
            .map(|_| ())
    });
    drop(ours);
    let events = events_until(&mut m, "the close", |e| {
        e.iter().any(|c| c.new_state == tcp_state::CLOSE)
    });
    let close = events
        .iter()
        .find(|c| c.new_state == tcp_state::CLOSE)
        .unwrap();
    assert_eq!(close.sock_cookie, id);
    assert_eq!(close.closer, Closer::LocalReset, "{close:?}");
    const SK_RST_REASON_TCP_ABORT_ON_CLOSE: u32 = 11;
    assert_eq!(
        close.reset_sent_reason,
        Some(SK_RST_REASON_TCP_ABORT_ON_CLOSE),
        "{close:?}"
    );
    assert_eq!(close.counters.bytes_received, 6, "final counters at close");
    drop(theirs);
}

#[test]
fn a_reset_we_receive_reaches_the_close_event() {
    let venue = Venue::start();
    let mut m = load();
    m.set_targets(&[target(venue.port)]).unwrap();
    let (ours, theirs) = venue.open(1).pop().unwrap();
    let id = cookie(&ours);
    linger_zero(&theirs);
    drop(theirs);
    let events = events_until(&mut m, "the close", |e| {
        e.iter().any(|c| c.new_state == tcp_state::CLOSE)
    });
    let close = events
        .iter()
        .find(|c| c.new_state == tcp_state::CLOSE)
        .unwrap();
    assert_eq!(close.sock_cookie, id);
    assert_eq!(close.old_state, tcp_state::ESTABLISHED);
    assert!(close.reset_received, "{close:?}");
    assert_eq!(close.closer, Closer::RemoteReset);
    assert_eq!(close.sk_err, libc::ECONNRESET);
    assert_eq!(close.reset_sent_reason, None);
    drop(ours);
}

#[test]
fn who_hung_up_first_is_told_by_the_fin() {
    let venue = Venue::start();
    let mut m = load();
    m.set_targets(&[target(venue.port)]).unwrap();
    let mut sessions = venue.open(2);
    let (ours_b, theirs_b) = sessions.pop().unwrap();
    let (ours_a, theirs_a) = sessions.pop().unwrap();
    let (a, b) = (cookie(&ours_a), cookie(&ours_b));
    drop(ours_a); // we hang up first on a
    drop(theirs_b); // the venue hangs up first on b
    let events = events_until(&mut m, "a's close and b's CLOSE_WAIT", |e| {
        e.iter()
            .any(|c| c.sock_cookie == a && c.new_state == tcp_state::CLOSE)
            && e.iter()
                .any(|c| c.sock_cookie == b && c.new_state == tcp_state::CLOSE_WAIT)
    });
    let a_close = events
        .iter()
        .find(|c| c.sock_cookie == a && c.new_state == tcp_state::CLOSE)
        .unwrap();
    assert_eq!(a_close.closer, Closer::Local);
    let b_wait = events
        .iter()
        .find(|c| c.sock_cookie == b && c.new_state == tcp_state::CLOSE_WAIT)
        .unwrap();
    assert_eq!(b_wait.closer, Closer::Remote);
    drop((ours_b, theirs_a));
}

#[test]
fn targets_change_without_reloading() {
    let (v1, v2) = (Venue::start(), Venue::start());
    let mut m = load();
    m.set_targets(&[target(v1.port)]).unwrap();
    let first = v1.open(1);
    let watched = |m: &mut fix_monitor_ebpf::Monitor| {
        let mut ports: Vec<u16> = m
            .health()
            .unwrap()
            .iter()
            .map(|h| h.remote.port())
            .collect();
        ports.sort();
        ports
    };
    assert_eq!(watched(&mut m), vec![v1.port]);

    m.set_targets(&[target(v2.port)]).unwrap();
    let _second_v1 = v1.open(1);
    let _on_v2 = v2.open(1);
    let mut expected = vec![v1.port, v2.port];
    expected.sort();
    assert_eq!(
        watched(&mut m),
        expected,
        "v1's old session stays watched, its new one is not, v2's is"
    );

    // both at once, as a block with two port rules
    m.set_targets(&[target(v1.port), target(v2.port)]).unwrap();
    let _third = v1.open(1);
    assert_eq!(watched(&mut m).iter().filter(|p| **p == v1.port).count(), 2);
    m.set_targets(&[]).unwrap();
    let _none = v2.open(1);
    assert_eq!(
        watched(&mut m).len(),
        3,
        "an empty target list watches nothing new"
    );
    drop(first);
}

#[test]
fn a_retransmission_timeout_reaches_the_close_event_with_its_retransmits() {
    let venue = Venue::start();
    let mut m = load();
    m.set_targets(&[target(venue.port)]).unwrap();
    let (mut ours, _theirs) = venue.open(1).pop().unwrap();
    let id = cookie(&ours);
    set_user_timeout(&ours, Duration::from_millis(1500));
    let _drop = InputDrop::new(venue.port);
    ours.write_all(b"8=FIX.4.4|35=0|").unwrap();
    let events = events_until(&mut m, "the close", |e| {
        e.iter().any(|c| c.new_state == tcp_state::CLOSE)
    });
    let close = events
        .iter()
        .find(|c| c.new_state == tcp_state::CLOSE)
        .unwrap();
    assert_eq!(close.sock_cookie, id);
    assert_eq!(close.sk_err, libc::ETIMEDOUT, "{close:?}");
    assert_eq!(close.closer, Closer::Error);
    assert!(
        !close.reset_received && close.reset_sent_reason.is_none(),
        "{close:?}"
    );
    assert!(close.counters.total_retrans > 0, "{close:?}");
    // Counted as they happened, those that went out (err == 0). The kernel raises
    // total_retrans before the transmit, so one whose transmit then fails is there and not
    // here (under the other tests' load the two differed by one, with no recursion miss), and
    // the kernel skips a program re-entered on the same CPU: so at most total_retrans (equal
    // when run alone).
    let misses = m.recursion_misses();
    assert!(close.counters.retrans_events > 0, "{close:?}");
    assert!(
        close.counters.retrans_events <= close.counters.total_retrans,
        "retransmissions counted {} (kernel {}, recursion misses {misses})",
        close.counters.retrans_events,
        close.counters.total_retrans
    );
}

/// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before the kernel gives up.
fn set_user_timeout(stream: &std::net::TcpStream, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let ms = timeout.as_millis() as libc::c_uint;
    // SAFETY: a live socket fd and a valid c_uint of the size given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
fn ipv6_sessions_are_watched_by_an_ipv6_block() {
    let venue = Venue::start_on("::1");
    let v4_venue = Venue::start();
    let mut m = load();
    let block = fix_monitor_ebpf::TargetSpec {
        addr: "::".parse().unwrap(),
        prefix_len: 64,
        port: None,
        local_ports: None,
    };
    m.set_targets(&[block]).unwrap();
    let sessions = venue.open(2);
    let _not_v4 = v4_venue.open(1);
    let pass = m.health().unwrap();
    // both ends of each session are in ::/64 (::1 to ::1), and no IPv4 one is
    assert_eq!(pass.len(), 4, "{pass:#?}");
    for (ours, theirs) in &sessions {
        for end in [ours, theirs] {
            let h = pass
                .iter()
                .find(|h| h.sock_cookie == cookie(end))
                .expect("watched");
            assert_eq!(h.local, end.local_addr().unwrap());
            assert_eq!(h.remote, end.peer_addr().unwrap());
        }
    }
}

#[test]
fn an_ipv4_mapped_peer_of_a_dual_stack_socket_meets_the_ipv4_target() {
    let venue = Venue::start();
    let mut m = load();
    m.set_targets(&[target(venue.port)]).unwrap();
    let mapped: std::net::SocketAddr = format!("[::ffff:127.0.0.1]:{}", venue.port)
        .parse()
        .unwrap();
    let ours = std::net::TcpStream::connect(mapped).expect("connect over IPv6 to a mapped address");
    let pass = m.health().unwrap();
    let h = pass
        .iter()
        .find(|h| h.sock_cookie == cookie(&ours))
        .expect("watched");
    assert_eq!(h.remote, mapped, "the socket's own (IPv6) view of its peer");
}

/// The event ring holds 1,820 records and the sidecar reads it once a poll. 3,000 sessions
/// opened and then closed with nobody reading make about 9,000 records: the drain thread, woken
/// by the programs when the ring is half full, must have read them all, in order.
#[test]
fn a_burst_larger_than_the_event_ring_is_read_by_the_drain_thread_and_nothing_is_lost() {
    const SESSIONS: usize = 3_000;
    let venue = Venue::start();
    let mut m = load();
    m.set_targets(&[target(venue.port)]).unwrap();
    let sessions = venue.open(SESSIONS);
    let opened = m.counters().unwrap();
    assert!(
        opened.emitted >= SESSIONS as u64,
        "one record per open at least: {opened:?}"
    );
    assert_eq!(opened.lost, 0, "no open lost: {opened:?}");
    let expected: std::collections::HashSet<u64> =
        sessions.iter().map(|(ours, _)| cookie(ours)).collect();
    drop(sessions);
    // Every close happened (each session's CLOSE record written) before the ring is read.
    wait_for("every session to close", Duration::from_secs(20), || {
        let c = m.counters().unwrap();
        (c.emitted >= opened.emitted + SESSIONS as u64 && m.live_entries() == 0).then_some(())
    });
    let closed = m.counters().unwrap();
    assert!(
        closed.emitted > 1_820,
        "more records than the ring holds: {closed:?}"
    );
    assert_eq!(closed.lost, 0, "no record lost: {closed:?}");

    let all = events_until(&mut m, "every open and close", |e| {
        e.iter().filter(|c| c.new_state == tcp_state::CLOSE).count() >= SESSIONS
    });
    let of = |state: u8| -> Vec<u64> {
        let mut cookies: Vec<u64> = (all.iter())
            .filter(|c| c.new_state == state)
            .map(|c| c.sock_cookie)
            .collect();
        cookies.sort_unstable();
        cookies
    };
    let (established, closes) = (of(tcp_state::ESTABLISHED), of(tcp_state::CLOSE));
    let mut want: Vec<u64> = expected.into_iter().collect();
    want.sort_unstable();
    assert_eq!(established, want, "each open once");
    assert_eq!(closes, want, "each close once");
    // In order: no session's close before its open.
    let mut open = std::collections::HashSet::new();
    for c in &all {
        match c.new_state {
            tcp_state::ESTABLISHED => assert!(open.insert(c.sock_cookie), "opened twice"),
            tcp_state::CLOSE => assert!(open.remove(&c.sock_cookie), "closed before its open"),
            _ => {}
        }
    }
    assert!(open.is_empty());
    assert_eq!(m.counters().unwrap().lost, 0);
}

/// The same burst with the drain thread stopped: the ring holds what fits (1,820 records) and
/// the rest is lost, and counted.
#[test]
fn without_the_drain_thread_a_burst_larger_than_the_ring_is_lost_and_counted() {
    const SESSIONS: usize = 3_000;
    let venue = Venue::start();
    let mut m = load();
    m.set_targets(&[target(venue.port)]).unwrap();
    m.set_event_drain(false).unwrap();
    let _sessions = venue.open(SESSIONS);
    let c = m.counters().unwrap();
    assert_eq!(
        c.emitted + c.lost,
        SESSIONS as u64,
        "one record per open: {c:?}"
    );
    assert_eq!(c.emitted, 1_820, "what the ring holds: {c:?}");
    // Read, the ring takes records again, and the thread can be started again.
    m.set_event_drain(true).unwrap();
    let read = events_until(&mut m, "the records the ring held", |e| e.len() >= 1_820);
    assert_eq!(read.len(), 1_820);
}
