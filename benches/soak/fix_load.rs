//! The soak's FIX part: a simulated venue (`venue-f`) and a gateway that, over and over, logs
//! on, sends orders and waits for each ack, stays logged on for a little over a poll, logs out
//! and closes; after every [`REFUSE_EVERY`]-th session it also tries a second venue on the same
//! address (CompID `VENUE2`), which refuses every logon with a Logout. The ground truth
//! (sessions, messages each way, refusals) is counted here. At the end the sidecar's `/sessions`
//! and `/metrics` must say the same, and the wire capture's connection table must hold exactly
//! the sessions still open, every other connection of every target ended once.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use fix_monitor::fix::sim::{LogonAnswer, Peer, Venue, VenueBehaviour};

/// Orders per session.
const ORDERS: u64 = 5;
/// How long a session stays logged on after its orders: over a poll, so that the TCP layer
/// lists it (the soak's log check counts one open and one close line per session).
const HOLD: Duration = Duration::from_millis(1200);

/// A refused logon after every this many sessions.
const REFUSE_EVERY: u64 = 5;

/// The refusing venue's Text in its Logout.
pub const REFUSAL: &str = "Invalid password";

/// What the gateway did, for the checks.
#[derive(Debug, Default, Clone, Copy)]
pub struct FixTruth {
    pub sessions: u64,
    pub sent: u64,
    pub received: u64,
    /// Logons the second venue refused, each on a connection of its own.
    pub refused: u64,
    /// Sessions or refused logons that failed part way (none expected).
    pub failed: u64,
}

/// The venues and the gateway's thread.
pub struct FixLoad {
    pub venue: Venue,
    pub refusing: Venue,
    pub thread: thread::JoinHandle<FixTruth>,
}

/// Starts the venues on `ip` and the gateway, which runs until `stop`.
pub fn start(ip: Ipv4Addr, stop: Arc<AtomicBool>) -> FixLoad {
    let venue = Venue::start(SocketAddr::from((ip, 0)), VenueBehaviour::default())
        .expect("starting the FIX venue");
    let refusing = VenueBehaviour {
        comp_id: "VENUE2".into(),
        refuse_logons: Some(REFUSAL.into()),
        ..VenueBehaviour::default()
    };
    let refusing =
        Venue::start(SocketAddr::from((ip, 0)), refusing).expect("starting the refusing FIX venue");
    let (addr, refusing_addr) = (venue.addr, refusing.addr);
    let thread = thread::spawn(move || {
        let mut truth = FixTruth::default();
        while !stop.load(SeqCst) {
            match one_session(addr) {
                Ok((sent, received)) => {
                    truth.sessions += 1;
                    truth.sent += sent;
                    truth.received += received;
                }
                Err(_) => truth.failed += 1,
            }
            if truth.sessions % REFUSE_EVERY == 0 && !stop.load(SeqCst) {
                match refused_logon(refusing_addr) {
                    Ok(()) => truth.refused += 1,
                    Err(_) => truth.failed += 1,
                }
            }
        }
        truth
    });
    FixLoad {
        venue,
        refusing,
        thread,
    }
}

/// A Logon the venue refuses with a Logout; the gateway closes.
fn refused_logon(addr: SocketAddr) -> std::io::Result<()> {
    let mut gw = Peer::connect(addr, "FIX.4.4", "GW", "VENUE2")?;
    match gw.log_on(Duration::from_secs(10))? {
        LogonAnswer::Refused(text) if text == REFUSAL => {
            gw.close();
            Ok(())
        }
        other => Err(std::io::Error::other(format!("logon answered {other:?}"))),
    }
}

/// Logon (sequence numbers reset), orders each acked, a pause, Logout both ways, close.
fn one_session(addr: SocketAddr) -> std::io::Result<(u64, u64)> {
    let t = Duration::from_secs(10);
    let mut gw = Peer::connect(addr, "FIX.4.4", "GW", "VENUE")?;
    gw.send("A", &[(98, "0"), (108, "30"), (141, "Y")])?;
    gw.expect("A", t)?;
    for i in 1..=ORDERS {
        let id = format!("soak{i}");
        gw.send(
            "D",
            &[(11, &id), (55, "XYZ"), (54, "1"), (38, "100"), (40, "1")],
        )?;
        gw.expect("8", t)?;
    }
    thread::sleep(HOLD);
    gw.send("5", &[(58, "soak")])?;
    gw.expect("5", t)?;
    let count = |c: &fix_monitor::fix::sim::Counts| c.values().sum::<u64>();
    let (sent, received) = (count(&gw.sent), count(&gw.received));
    gw.close();
    Ok((sent, received))
}

/// The FIX layer's view, from `/sessions`.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct FixSeen {
    pub logons: u64,
    /// Logons refused on the second venue's session (`GW->VENUE2`).
    pub refused: u64,
    pub sent: u64,
    pub received: u64,
    pub sessions: u64,
    pub followed: u64,
    pub ended: u64,
    pub not_followed: u64,
    pub capture_drops: u64,
}

impl FixSeen {
    pub fn parse(s: &serde_json::Value) -> FixSeen {
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let all = s["sessions"].as_array().cloned().unwrap_or_default();
        let gw = all.iter().find(|x| x["session"] == "GW->VENUE");
        let refused = all.iter().find(|x| x["session"] == "GW->VENUE2");
        let ended = &s["stats"]["wire"]["ended"];
        FixSeen {
            logons: gw.map_or(0, |x| n(&x["logons"])),
            refused: refused.map_or(0, |x| n(&x["logons_refused"])),
            sent: gw.map_or(0, |x| n(&x["out"]["messages"])),
            received: gw.map_or(0, |x| n(&x["in"]["messages"])),
            sessions: all.len() as u64,
            followed: n(&s["stats"]["connections_followed"]),
            ended: ["fin", "reset", "tcp_closed", "idle"]
                .iter()
                .map(|k| n(&ended[*k]))
                .sum(),
            not_followed: n(&s["stats"]["wire"]["not_followed"]),
            capture_drops: n(&s["stats"]["capture_drops"]),
        }
    }
}
