use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::fix::tracker::{
    FixEnd, LinkEvidence, LogoutSeen, OpenTestRequest, Refusal, SessionKey, TcpEndSeen,
};

fn t(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
}

fn tcp_end() -> TcpEnd {
    let at = Timestamp::now();
    TcpEnd {
        target: 0,
        local: "10.0.0.1:40000".parse().unwrap(),
        remote: "10.0.0.2:9878".parse().unwrap(),
        id: 7,
        at: Timestamp {
            mono: at.mono,
            wall: t(100),
        },
        closed_by: None,
        kernel: None,
        process: None,
        duration: Some(Duration::from_secs(5)),
        info: None,
        silence: None,
    }
}

fn logged_on() -> LinkEvidence {
    LinkEvidence {
        logged_on: true,
        last_seen: [Some(t(99)), Some(t(99))],
        ..LinkEvidence::default()
    }
}

fn account(evidence: Option<LinkEvidence>, seen: TcpEndSeen) -> LinkEnd {
    LinkEnd {
        link: tcp_end().link(),
        at: t(100),
        seen,
        fix: evidence.map(|evidence| FixEnd {
            session: SessionKey {
                begin_string: "FIX.4.4".into(),
                ours: "GW".into(),
                theirs: "VENUE".into(),
            },
            evidence,
            heartbeat_interval: Some(30),
        }),
    }
}

fn cause_of(tcp: &TcpEnd, fix: Option<&LinkEnd>, planned: Option<bool>, exited: bool) -> Verdict {
    judge(&Evidence {
        tcp,
        fix,
        planned,
        process_exited: exited,
    })
}

fn logout(by: Initiator, text: &str) -> Option<LogoutSeen> {
    Some(LogoutSeen {
        by,
        text: Some(text.into()),
        at: t(98),
    })
}

const FIN_IN: TcpEndSeen = TcpEndSeen {
    first_fin: Some(Direction::In),
    reset_from: None,
};

#[test]
fn each_rule_picks_its_cause() {
    let tcp = tcp_end();
    let refused = LinkEvidence {
        refused: Some(Refusal {
            at: t(99),
            text: Some("Invalid password".into()),
        }),
        logout: logout(Initiator::Them, "Invalid password"),
        ..LinkEvidence::default()
    };
    let v = cause_of(&tcp, Some(&account(Some(refused), FIN_IN)), None, false);
    assert_eq!(v.cause, Cause::LogonRefused);
    assert_eq!(
        v.evidence,
        "our Logon answered by a Logout \"Invalid password\"; FIN from them first"
    );

    let bye = LinkEvidence {
        logout: logout(Initiator::Them, "End of day"),
        ..logged_on()
    };
    let fix = account(Some(bye.clone()), FIN_IN);
    assert_eq!(
        cause_of(&tcp, Some(&fix), Some(true), false).cause,
        Cause::ScheduledLogout
    );
    // The same end inside the window, or without a schedule: the Logout says who.
    for planned in [Some(false), None] {
        let v = cause_of(&tcp, Some(&fix), planned, false);
        assert_eq!(v.cause, Cause::LogoutByThem);
        assert_eq!(
            v.evidence,
            "Logout from them first \"End of day\"; FIN from them first"
        );
    }
    let ours = LinkEvidence {
        logout: logout(Initiator::Us, "bye"),
        ..logged_on()
    };
    let fix = account(Some(ours), TcpEndSeen::default());
    assert_eq!(
        cause_of(&tcp, Some(&fix), None, false).cause,
        Cause::LogoutByUs
    );

    let seq = LinkEvidence {
        sequence_complaint: Some("MsgSeqNum too low, expecting 12".into()),
        logout: logout(Initiator::Them, "MsgSeqNum too low, expecting 12"),
        ..logged_on()
    };
    let fix = account(Some(seq), FIN_IN);
    assert_eq!(
        cause_of(&tcp, Some(&fix), None, false).cause,
        Cause::SequenceError
    );

    let hb = LinkEvidence {
        test_request_open: Some(OpenTestRequest {
            by: Initiator::Them,
            at: t(90),
            id: Some("TR1".into()),
        }),
        ..logged_on()
    };
    let reset = TcpEndSeen {
        first_fin: None,
        reset_from: Some(Direction::In),
    };
    let v = cause_of(&tcp, Some(&account(Some(hb), reset)), None, false);
    assert_eq!(v.cause, Cause::HeartbeatTimeout);
    assert_eq!(
        v.evidence,
        "TestRequest TR1 from them unanswered for 10.0 s; RST from them"
    );

    // FIX traffic and a RST from them, nothing else: reset_by_them.
    let fix = account(Some(logged_on()), reset);
    assert_eq!(
        cause_of(&tcp, Some(&fix), None, false).cause,
        Cause::ResetByThem
    );
    // FIX traffic and a FIN: closed_without_logout.
    let fix = account(Some(logged_on()), FIN_IN);
    let v = cause_of(&tcp, Some(&fix), None, false);
    assert_eq!(v.cause, Cause::ClosedWithoutLogout);
    assert_eq!(
        v.evidence,
        "FIX traffic seen, no Logout; FIN from them first"
    );
}

#[test]
fn silence_over_two_heartbeat_intervals_is_a_heartbeat_timeout() {
    let tcp = tcp_end();
    let quiet = |last: u64| LinkEvidence {
        last_seen: [Some(t(last)), Some(t(99))],
        ..logged_on()
    };
    // HeartBtInt 30: 60 s of silence at the end is two intervals; 59 s is not.
    let v = cause_of(&tcp, Some(&account(Some(quiet(40)), FIN_IN)), None, false);
    assert_eq!(v.cause, Cause::HeartbeatTimeout);
    assert_eq!(
        v.evidence,
        "nothing from them for 60.0 s (HeartBtInt 30 s); FIN from them first"
    );
    let v = cause_of(&tcp, Some(&account(Some(quiet(41)), FIN_IN)), None, false);
    assert_eq!(v.cause, Cause::ClosedWithoutLogout);
    // The earlier of the two layers' end times counts: a wire end declared late (the TCP
    // layer's list) does not make a silence.
    let mut late = account(Some(quiet(41)), TcpEndSeen::default());
    late.at = t(130);
    let v = cause_of(&tcp, Some(&late), None, false);
    assert_eq!(v.cause, Cause::ClosedWithoutLogout);
}

#[test]
fn a_session_stale_at_its_last_poll_ended_by_a_heartbeat_timeout() {
    let mut tcp = tcp_end();
    tcp.closed_by = Some(ClosedBy::Remote);
    tcp.silence = Some((Duration::from_millis(61_500), true));
    let v = cause_of(&tcp, None, None, false);
    assert_eq!(v.cause, Cause::HeartbeatTimeout);
    assert_eq!(
        v.evidence,
        "stale at the last poll: no data received for 61.5 s; FIN from them first"
    );
    // Not stale (or not judged): no heartbeat timeout from TCP alone.
    tcp.silence = Some((Duration::from_millis(61_500), false));
    assert_eq!(cause_of(&tcp, None, None, false).cause, Cause::Unknown);
    // A Logout says why first.
    tcp.silence = Some((Duration::from_secs(90), true));
    let bye = LinkEvidence {
        logout: logout(Initiator::Them, "End of day"),
        ..logged_on()
    };
    let fix = account(Some(bye), FIN_IN);
    assert_eq!(
        cause_of(&tcp, Some(&fix), None, false).cause,
        Cause::LogoutByThem
    );
}

#[test]
fn tcp_evidence_alone_picks_process_timeout_and_reset_causes() {
    let mut tcp = tcp_end();
    tcp.process = Some(Process {
        pid: 4242,
        comm: "gateway".into(),
    });
    tcp.closed_by = Some(ClosedBy::Local);
    let v = cause_of(&tcp, None, None, true);
    assert_eq!(v.cause, Cause::ProcessExited);
    assert_eq!(
        v.evidence,
        "process 4242 (gateway) had exited; FIN from us first"
    );
    // They hung up first: the process's exit is not why.
    tcp.closed_by = Some(ClosedBy::Remote);
    assert_eq!(cause_of(&tcp, None, None, true).cause, Cause::Unknown);

    let mut tcp = tcp_end();
    tcp.closed_by = Some(ClosedBy::Reset);
    tcp.kernel = Some(KernelCause {
        socket_error: Some(110),
        ..KernelCause::default()
    });
    let v = cause_of(&tcp, None, None, false);
    assert_eq!(v.cause, Cause::NetworkTimeout);
    assert_eq!(
        v.evidence,
        "socket error: Connection timed out (os error 110)"
    );

    tcp.kernel = Some(KernelCause {
        reset_received: true,
        socket_error: Some(104),
        ..KernelCause::default()
    });
    assert_eq!(cause_of(&tcp, None, None, false).cause, Cause::ResetByThem);
    tcp.kernel = Some(KernelCause {
        reset_sent: Some("TCP_ABORT_ON_CLOSE".into()),
        ..KernelCause::default()
    });
    assert_eq!(cause_of(&tcp, None, None, false).cause, Cause::ResetByUs);
    // A reset whose side nobody saw, a FIN without the FIX layer: unknown, saying what is known.
    tcp.kernel = None;
    let v = cause_of(&tcp, None, None, false);
    assert_eq!(v.cause, Cause::Unknown);
    assert_eq!(
        v.evidence,
        "reset (side not known); no FIX layer account of it"
    );
    tcp.closed_by = Some(ClosedBy::Remote);
    let v = cause_of(&tcp, Some(&account(None, FIN_IN)), None, false);
    assert_eq!(v.cause, Cause::Unknown);
    assert_eq!(v.evidence, "FIN from them first; no FIX message seen on it");
}

#[test]
fn the_cause_names_are_the_documented_ones() {
    assert_eq!(
        Cause::names(),
        [
            "logon_refused",
            "scheduled_logout",
            "sequence_error",
            "heartbeat_timeout",
            "logout_by_us",
            "logout_by_them",
            "process_exited",
            "network_timeout",
            "reset_by_them",
            "reset_by_us",
            "closed_without_logout",
            "unknown"
        ]
    );
    assert_eq!(Cause::HeartbeatTimeout.as_str(), "heartbeat_timeout");
}

struct Ctx;

impl Context for Ctx {
    fn planned(&self, target: usize, _: SystemTime) -> Option<bool> {
        (target == 1).then_some(true)
    }
    fn exited(&self, _: &Process) -> bool {
        false
    }
}

#[test]
fn an_end_waits_for_the_fix_account_at_most_settle() {
    let t0 = Instant::now();
    let mut ends = Ends::new(true);
    ends.tcp(tcp_end(), t0);
    // No account yet: it waits.
    assert!(ends
        .settle(t0 + Duration::from_secs(1), false, &Ctx)
        .is_empty());
    assert_eq!(ends.waiting(), 1);
    // The account arrives: judged at once, with it.
    let bye = LinkEvidence {
        logout: logout(Initiator::Us, "bye"),
        ..logged_on()
    };
    ends.fix(account(Some(bye), TcpEndSeen::default()), t0);
    let judged = ends.settle(t0 + Duration::from_secs(1), false, &Ctx);
    assert_eq!(judged.len(), 1);
    assert_eq!(judged[0].verdict.cause, Cause::LogoutByUs);
    assert_eq!(ends.waiting(), 0);

    // No account ever: judged on the TCP evidence after SETTLE.
    let mut other = tcp_end();
    other.target = 1;
    ends.tcp(other, t0);
    assert!(ends.settle(t0 + SETTLE / 2, false, &Ctx).is_empty());
    let judged = ends.settle(t0 + SETTLE, false, &Ctx);
    assert_eq!(judged[0].verdict.cause, Cause::ScheduledLogout);

    // An account that arrived first waits for its end (an account no end claims is dropped
    // after KEEP); with the FIX layer off nothing waits.
    ends.fix(account(Some(logged_on()), FIN_IN), t0);
    ends.tcp(tcp_end(), t0 + Duration::from_secs(2));
    let judged = ends.settle(t0 + Duration::from_secs(2), false, &Ctx);
    assert_eq!(judged[0].verdict.cause, Cause::ClosedWithoutLogout);
    ends.fix(account(Some(logged_on()), FIN_IN), t0);
    ends.settle(t0 + KEEP, false, &Ctx);
    ends.tcp(tcp_end(), t0 + KEEP);
    let judged = ends.settle(t0 + KEEP + SETTLE, false, &Ctx);
    assert_eq!(judged[0].verdict.cause, Cause::Unknown);

    let mut off = Ends::new(false);
    off.tcp(tcp_end(), t0);
    assert_eq!(off.settle(t0, false, &Ctx).len(), 1);
    // At shutdown every end is judged.
    ends.tcp(tcp_end(), t0);
    assert_eq!(ends.settle(t0, true, &Ctx).len(), 1);
}

#[test]
fn a_process_has_exited_when_proc_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let write = |pid: u32, stat: &str| {
        std::fs::create_dir_all(dir.path().join(pid.to_string())).unwrap();
        std::fs::write(dir.path().join(pid.to_string()).join("stat"), stat).unwrap();
    };
    write(10, "10 (gate way) S 1 2 3");
    write(11, "11 (gateway) Z 1 2 3");
    write(12, "12 (other thread) S 1 2 3");
    let p = |pid: u32, comm: &str| Process {
        pid,
        comm: comm.into(),
    };
    assert!(!exited_in_proc(dir.path(), &p(10, "gate way")));
    assert!(exited_in_proc(dir.path(), &p(11, "gateway")), "a zombie");
    // The command a source saw may be a thread's: not compared.
    assert!(!exited_in_proc(dir.path(), &p(12, "gateway")));
    assert!(exited_in_proc(dir.path(), &p(13, "gateway")), "gone");
    // This very process lives.
    let me = Process {
        pid: std::process::id(),
        comm: std::fs::read_to_string("/proc/self/comm")
            .unwrap()
            .trim_end()
            .into(),
    };
    assert!(!Unscheduled.exited(&me));
}
