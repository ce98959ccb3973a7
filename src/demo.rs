//! `fix-monitor demo`: the whole thing on loopback, with nothing to set up.
//!
//! Four simulated venues listen on 127.0.0.2-5 (or on 127.0.0.1 where only that exists); a
//! simulated gateway keeps a few FIX sessions to each, bound to local ports from 5000-5999 as
//! the original monitor's default range. A session connects, stays a while (seconds), logs out
//! and reconnects after a pause; now and then a venue drops every session at once, several
//! times in a row (a reconnect storm). The real sidecar watches it all (`app::start` with its
//! HTTP endpoint, on 127.0.0.1:9464 or the next free port), shown in the same live view as
//! `watch`.
//!
//! The simulator keeps its own count of what it did, so the demo ends by checking fix-monitor
//! against it: every session lives at least two poll intervals, so none can slip between two
//! polls, and the counts must agree exactly.
//!
//! The simulator is one plain thread that owns every socket, so stopping it closes them all.
//!
//! The sessions speak real FIX ([`crate::fix::pair`]): Logon with HeartBtInt 1 s, heartbeats,
//! TestRequests, orders acknowledged after a venue's delay, now and then a
//! BusinessMessageReject, a sequence gap answered by a ResendRequest, Logouts with a reason
//! (the gateway's at the end of a session, the venue's in a storm), and a fourth venue that
//! refuses every Logon. fix-monitor reads it off the wire when it may open a packet socket
//! (`CAP_NET_RAW`), else from the gateway's message logs in a temp dir (`[[fix.logs]]`). One
//! venue goes silent for a while (no heartbeats, no answers): its target has `heartbeat` set,
//! so its sessions turn stale and recover. The FIX counts are checked against the simulator's at
//! the end as well.
//!
//! Issue 21's analytics have venues to show them on: venue-c's clock is 250 ms ahead of ours
//! (`fix_clock_skew_seconds{direction="in"}`; the summary prints the offset and the latest
//! samples), venue-a rejects every third NewOrderSingle of a session for its limit and fills
//! every second of the others (`fix_order_rejects_total`, `fix_execution_reports_total`, fill latency), and has
//! a `message_limit` that the gateway's outbound peaks approach (its utilization is shown, not
//! checked: the simulator cannot know the kernel's timestamps, so its own 1 s peak may differ
//! by a message at a window's edge); venue-b's sequence gaps are answered by gap fills, except
//! once, on its first session: right after the Logon it leaves [`REPLAYED_GAP`] numbers out and
//! replays each when asked (News with PossDupFlag and OrigSendingTime), a resend storm
//! (`fix_session_sequence_events_total{kind="resend_storm"}`, checked against the storms the
//! simulated gateway saw).
//!
//! Each way a session ends has its cause (`crate::ends`), and the simulator counts its ends by
//! the cause fix-monitor is to give them: the gateway's Logout `logout_by_us`, a venue's in a
//! storm `logout_by_them`, a refusal `logon_refused`, and three scenarios. venue-b has a daily
//! schedule (UTC) that opened ten minutes before the start and ends [`DAY_LENGTH`] after it
//! (halfway through with `--duration`), with a `schedule_grace` of [`SCHEDULE_GRACE`]: at its
//! end the venue logs every session out ("End of day") and takes no more, so
//! `fix_target_expected_up` drops to 0 and every end from the grace on is `scheduled_logout`.
//! (fix-monitor times an end by the poll that saw it, so none of venue-b's sessions ends near
//! the start of the grace, where it could be judged on either side.) venue-a's first session
//! gets a gateway that leaves the venue's TestRequest unanswered, and [`RESET_AFTER`] later the
//! venue resets it (SO_LINGER 0): `heartbeat_timeout`. venue-d has a `logon_lockout` that its
//! refused logons approach within about 20 s. Sessions open at the end are logged out by the
//! gateway (`logout_by_us`, or `scheduled_logout` past venue-b's grace). The demo reads
//! `fix_session_ends_total` off its own endpoint and compares it with these counts: exactly for
//! every target when it reads the wire; from engine logs only for a target with one FIX session
//! (venue-d), since the others' closes cannot be told apart, whose ends must still all be
//! counted and whose `scheduled_logout` (which needs no FIX evidence) must be exact. A mismatch
//! fails the demo.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::app::{self, RunError, Sidecar, StartOptions};
use crate::config::{self, ConfigErrors, Settings};
use crate::console::{self, view, Console, ConsoleError, Header, Mode, ReportTo};
use crate::ends::Cause;
use crate::fix::monitor::{FixReader, FixState};
use crate::fix::pair::{Gap, Link, LinkTruth, VenueScript};
use crate::fix::sim::MessageLog;
use crate::session::hms;
use crate::state::StateReader;
use crate::tracker::Timestamp;

/// The venues: name, address, preferred port, sessions the gateway keeps to it.
const VENUES: &[(&str, Ipv4Addr, u16, usize)] = &[
    ("venue-a", Ipv4Addr::new(127, 0, 0, 2), 9876, 6),
    ("venue-b", Ipv4Addr::new(127, 0, 0, 3), 9877, 4),
    ("venue-c", Ipv4Addr::new(127, 0, 0, 4), 9878, 3),
    ("venue-d", Ipv4Addr::new(127, 0, 0, 5), 9879, 1),
];

/// The FIX sessions' HeartBtInt; the targets that heartbeat get `heartbeat` = this.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The venue that goes silent, when, and for how long (then again every 40-60 s).
pub const SILENT_VENUE: usize = 2;
pub const FIRST_SILENCE: Duration = Duration::from_secs(3);
pub const SILENCE: Duration = Duration::from_secs(5);

/// The venue on a schedule whose window ends during the demo (its day ends: it logs every
/// session out with "End of day" and stays closed), and the demo's `schedule_grace`.
pub const SCHEDULED_VENUE: usize = 1;
pub const SCHEDULE_GRACE: Duration = Duration::from_secs(5);
/// Its window ends this long after the demo starts (rounded up to a whole second); with
/// `--duration`, halfway through instead, so that every run shows the end of the day (at most
/// [`LONGEST_DAY`] in: a daily window is shorter than a day).
pub const DAY_LENGTH: Duration = Duration::from_secs(45);
pub const LONGEST_DAY: Duration = Duration::from_secs(12 * 3600);

/// The venue whose first session has a gateway that stops answering TestRequests: each time
/// that session's life is up, the venue sends one, and [`RESET_AFTER`] later it resets the
/// connection (an end judged `heartbeat_timeout`).
pub const DEAF_VENUE: usize = 0;
pub const RESET_AFTER: Duration = Duration::from_secs(2);

/// The refusing venue's `logon_lockout`: it locks a session out at this many logons within
/// [`LOCKOUT_WITHIN`], so FixLogonLockoutRisk warns from the attempt before (the demo's
/// refused logons come every 3-7 s, so that attempt comes within about 20 s).
pub const LOCKOUT_ATTEMPTS: u32 = 4;
pub const LOCKOUT_WITHIN: Duration = Duration::from_secs(60);

/// The venue whose clock is off ours, and by how much (nanoseconds, positive: ahead), in the
/// SendingTime it writes: `fix_clock_skew_seconds{direction="in"}` shows it.
pub const SKEWED_VENUE: usize = 2;
pub const CLOCK_OFFSET_NS: i64 = 250_000_000;

/// The venue whose orders have outcomes: every n-th NewOrderSingle rejected (OrdRejReason 3,
/// order exceeds limit), every m-th of the others filled; and whose `message_limit` the
/// gateway's outbound peaks approach.
pub const OUTCOMES_VENUE: usize = 0;
pub const ORDER_REJECT_EVERY: u64 = 3;
pub const FILL_EVERY: u64 = 2;
pub const MESSAGE_LIMIT: &str = "{ count = 5, per = \"1s\" }";

/// The venue whose first session replays a gap of [`REPLAYED_GAP`] numbers (left out right
/// after its Logon) when the gateway asks: a resend storm (100 replayed or more), once a run.
pub const REPLAY_VENUE: usize = 1;
pub const REPLAYED_GAP: u64 = 120;

/// How each venue speaks FIX (by the index in [`VENUES`]).
fn script(venue: usize) -> VenueScript {
    let ms = Duration::from_millis;
    let name = VENUES[venue].0;
    let mut s = VenueScript {
        comp_id: comp_id(venue),
        ack_delay: (ms(1), ms(5)),
        refuse_logons: None,
        business_reject_every: None,
        gaps: Vec::new(),
        clock_offset_ns: 0,
        order_reject_every: None,
        fill_every: None,
    };
    match venue {
        // Fast, rejects an order now and then (a BusinessMessageReject, at random, and every
        // third NewOrderSingle of a session for its limit), and fills every second of the others.
        0 => {
            s.business_reject_every = Some(9);
            s.order_reject_every = Some(ORDER_REJECT_EVERY);
            s.fill_every = Some(FILL_EVERY);
        }
        // Slower, and leaves sequence gaps.
        1 => {
            s.ack_delay = (ms(10), ms(40));
            s.gaps.push(Gap {
                first: 3,
                every: 60,
                size: 3,
                replay: false,
            });
        }
        // Slow (and the one that goes silent), and its clock is 250 ms ahead.
        2 => {
            s.ack_delay = (ms(40), ms(150));
            s.clock_offset_ns = CLOCK_OFFSET_NS;
        }
        // Refuses every Logon.
        _ => s.refuse_logons = Some(format!("{name}: logon refused, unknown CompID")),
    }
    s
}

/// The venue's CompID (`VENUEA`...).
fn comp_id(venue: usize) -> String {
    format!("VENUE{}", (b'A' + venue as u8) as char)
}

/// The gateway's CompID on its `k`-th session (from 1) to `venue` (`GWA1`...): each session its
/// own, as FIX sessions are.
fn gw_comp_id(venue: usize, k: usize) -> String {
    format!("GW{}{k}", (b'A' + venue as u8) as char)
}

/// Whether a venue's target gets `heartbeat` (the refusing venue holds no logged-on session, so
/// silence on it means nothing).
fn heartbeats(venue: usize) -> bool {
    script(venue).refuse_logons.is_none()
}

/// The scheduled venue's trading day: a daily window (UTC) that opened ten minutes before the
/// demo started and ends during it.
#[derive(Debug, Clone, Copy)]
pub struct Day {
    start: SystemTime,
    /// The window's end, on the wall clock (a whole second, as `HH:MM:SS` says it) and on the
    /// simulator's clock.
    end_wall: SystemTime,
    end: Instant,
}

impl Day {
    /// A day that ends `length` after `now` (wall clock and monotonic, read together), rounded
    /// up to a whole second.
    fn ending_after(length: Duration, now_wall: SystemTime, now: Instant) -> Day {
        let since_epoch = now_wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let end_secs = (since_epoch + length).as_secs() + 1;
        let end_wall = SystemTime::UNIX_EPOCH + Duration::from_secs(end_secs);
        let ahead = end_wall.duration_since(now_wall).unwrap_or_default();
        Day {
            start: now_wall - Duration::from_secs(600),
            end_wall,
            end: now + ahead,
        }
    }

    /// When the window's last `schedule_grace` begins: an end from then on is planned.
    fn grace_from(&self) -> Instant {
        self.end.checked_sub(SCHEDULE_GRACE).unwrap_or(self.end)
    }

    /// The schedule, as an operator would write it.
    fn toml(&self) -> String {
        format!(
            "[[schedules]]\nname = \"demo-day\"\ntimezone = \"UTC\"\nstart = \"{}\"\nend = \"{}\"\n\n",
            utc_hms(self.start),
            utc_hms(self.end_wall)
        )
    }
}

/// `HH:MM:SS` in UTC.
fn utc_hms(t: SystemTime) -> String {
    let s = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Where fix-monitor reads the demo's FIX from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FixSource {
    /// Capture when this process may open a packet socket, else the log.
    #[default]
    Auto,
    Capture,
    Log,
}

/// The gateway's local ports for FIX sessions (the original monitor's default range).
pub const LOCAL_PORTS: (u16, u16) = (5000, 5999);

/// Where the endpoint goes unless told otherwise; if taken, the next ports are tried.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);
const LISTEN_TRIES: u16 = 20;

/// How often the simulator acts.
const TICK: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// End by itself after this long; `None`: at Ctrl+C.
    pub duration: Option<Duration>,
    /// The sidecar's poll interval.
    pub interval: Duration,
    /// Where to serve the endpoint; `None`: [`DEFAULT_LISTEN`] or the next free port.
    pub listen: Option<SocketAddr>,
    /// Write the `watch` report here at the end.
    pub report: Option<PathBuf>,
    pub fix_source: FixSource,
    pub mode: Mode,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot set up the simulated venues: {0}")]
    Venues(io::Error),
    #[error("cannot create the simulated gateway's log directory: {0}")]
    LogDir(io::Error),
    #[error("the demo's own configuration is invalid (a bug):\n{0}")]
    Config(ConfigErrors),
    #[error(transparent)]
    Start(#[from] RunError),
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error("fix-monitor's end causes differ from the simulator's (the summary shows both)")]
    EndsDiffer,
}

/// What the simulated gateway did with one venue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VenueCounts {
    pub name: String,
    /// The FIX sessions the gateway keeps to it.
    pub sessions: usize,
    pub opened: u64,
    pub closed: u64,
    /// Its FIX sessions, summed.
    pub fix: LinkTruth,
    /// Its sessions' ends by the cause fix-monitor is to give each.
    pub ends: BTreeMap<Cause, u64>,
    /// Logons on a FIX session whose last TCP session the venue reset: an engine log shows no
    /// disconnect, so a reader of it sees a Logon while logged on (a reset within the session).
    pub logons_after_reset: u64,
    /// When the venue was silent (from, to).
    pub silences: Vec<(Instant, Instant)>,
}

/// One venue's FIX sessions, summed: what the simulator did or what fix-monitor saw, printed in
/// one line so that the two compare at a glance (and the demo's test parses them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FixTally {
    pub logons: u64,
    pub logouts_us: u64,
    pub logouts_them: u64,
    pub sent: BTreeMap<String, u64>,
    pub received: BTreeMap<String, u64>,
    pub gaps_in: u64,
    pub gap_messages_in: u64,
    pub resend_requests_out: u64,
    pub test_requests_out: u64,
    pub business_rejects_in: u64,
    pub orders_answered: u64,
    pub orders_rejected: u64,
    /// ExecutionReports that rejected an order (ExecType 8), and that filled one.
    pub order_rejects_in: u64,
    pub fills_in: u64,
    /// SequenceReset-GapFills and PossDup messages received (sequence events).
    pub gap_fills_in: u64,
    pub poss_dups_in: u64,
    /// Resend storms: ResendRequests answered with 100 replayed messages or more.
    pub resend_storms_in: u64,
    pub last_logout_text: Option<String>,
}

impl VenueCounts {
    /// Its FIX sessions, summed, as fix-monitor can count them: all, except, from the engine
    /// logs of a target with several FIX sessions, a logon after a reset (no TCP close tells
    /// the log reader that the session before it ended).
    fn tally(&self, knows: Knows) -> FixTally {
        let mut t = FixTally::of_truth(&self.fix);
        if knows == Knows::Logs && !knows.exact(self) {
            t.logons -= self.logons_after_reset;
        }
        t
    }
}

impl FixTally {
    fn of_truth(t: &LinkTruth) -> FixTally {
        FixTally {
            logons: t.logons,
            logouts_us: t.logouts_us,
            logouts_them: t.logouts_them,
            sent: t.sent.clone(),
            received: t.received.clone(),
            gaps_in: t.gaps_in,
            gap_messages_in: t.gap_messages_in,
            resend_requests_out: t.resend_requests_out,
            test_requests_out: t.test_requests_out,
            business_rejects_in: t.business_rejects_in,
            orders_answered: t.orders_answered,
            orders_rejected: t.orders_rejected,
            order_rejects_in: t.order_rejects_in,
            fills_in: t.fills_in,
            gap_fills_in: t.gap_fills_in,
            poss_dups_in: t.poss_dups_in,
            resend_storms_in: t.resend_storms_in,
            last_logout_text: None,
        }
    }

    /// fix-monitor's sessions of `target`, summed.
    fn of_state(state: &FixState, target: &str) -> FixTally {
        let mut t = FixTally::default();
        for s in state
            .sessions
            .iter()
            .filter(|s| s.target.as_deref() == Some(target))
        {
            t.logons += s.logons;
            t.logouts_us += s.logouts_us;
            t.logouts_them += s.logouts_them;
            for (k, v) in &s.outbound.by_type {
                *t.sent.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &s.inbound.by_type {
                *t.received.entry(k.clone()).or_default() += v;
            }
            t.gaps_in += s.inbound.sequence_gaps;
            t.gap_messages_in += s.inbound.sequence_gap_messages;
            t.resend_requests_out += s.outbound.resend_requests;
            t.test_requests_out += s.outbound.test_requests;
            t.business_rejects_in += s.inbound.business_rejects;
            t.orders_answered += s.orders_answered;
            t.orders_rejected += s.orders_rejected;
            t.order_rejects_in += s.outcomes.order_rejects.values().sum::<u64>();
            t.fills_in += s.outcomes.exec_reports.get("fill").copied().unwrap_or(0);
            let inbound = s.sequence.events.get("in");
            let kind = |k| inbound.and_then(|e| e.get(k)).copied().unwrap_or(0);
            t.gap_fills_in += kind("gap_fill");
            t.poss_dups_in += kind("poss_dup");
            t.resend_storms_in += kind("resend_storm");
        }
        t
    }

    /// `name k=v ...` (the counts that FIX desks look at; messages as totals).
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name} logons={} logouts_us={} logouts_them={} sent={} received={} gaps={} \
             gap_messages={} resend_requests={} test_requests={} rejects={} answered={} \
             rejected={} order_rejects={} fills={} gap_fills={} poss_dups={} resend_storms={}",
            self.logons,
            self.logouts_us,
            self.logouts_them,
            self.sent.values().sum::<u64>(),
            self.received.values().sum::<u64>(),
            self.gaps_in,
            self.gap_messages_in,
            self.resend_requests_out,
            self.test_requests_out,
            self.business_rejects_in,
            self.orders_answered,
            self.orders_rejected,
            self.order_rejects_in,
            self.fills_in,
            self.gap_fills_in,
            self.poss_dups_in,
            self.resend_storms_in,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Signal,
    Duration,
}

/// Runs the demo until `shutdown` resolves or the duration is up, then closes every session,
/// lets the sidecar see them close, stops it, and prints what both counted.
pub async fn run(
    options: DemoOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let venues = bind_venues().map_err(DemoError::Venues)?;
    // Without capture, the gateway writes its message logs here and fix-monitor follows them.
    let log_dir = if capture_wanted(options.fix_source) {
        None
    } else {
        Some(LogDir::create()?)
    };
    let length = options
        .duration
        .map_or(DAY_LENGTH, |d| (d / 2).min(LONGEST_DAY));
    let day = Day::ending_after(length, SystemTime::now(), Instant::now());
    let settings = settings(
        &venues,
        options.interval,
        log_dir.as_ref().map(|d| &d.0),
        &day,
    )?;
    let sidecar = start_sidecar(settings, options.listen).await?;
    let fix = sidecar.fix();
    let fix_source = fix_source_line(log_dir.as_ref(), fix.get().capture_error.as_deref());
    let knows = Knows::of(log_dir.is_some(), fix.get().capture_error.is_some());
    let state = sidecar.state().clone();
    let url = format!(
        "http://{}",
        sidecar.local_addr().expect("the demo serves HTTP")
    );
    // The gateway starts once the sidecar has looked: every session is then a real open.
    first_poll(&state, &fix, Instant::now() + Duration::from_secs(5)).await;

    let header = header(&venues, &url, &fix_source, options.duration, &day);
    let (notes_tx, notes_rx) = mpsc::unbounded_channel();
    let mut console = Console::new(&sidecar, header, options.mode, Some(notes_rx));
    let began = Instant::now();
    let plan = Plan {
        interval: options.interval,
        day,
        stop_at: options.duration.map(|d| began + d),
    };
    let sim = Simulator::start(
        venues,
        plan,
        notes_tx,
        log_dir.as_ref().map(|d| d.0.clone()),
    );
    let mut shutdown = Box::pin(shutdown);
    let ended_by = show_until_the_end(&mut console, &mut shutdown, options.duration).await;
    let ran = began.elapsed();

    let ending = end_sessions(&mut console, &sidecar, sim, options.interval, knows).await;
    if ending.all_seen_closed {
        console.note("fix-monitor has seen every session close");
        if ended_by == End::Duration {
            // A scraper gets one last look at the final counts before the endpoint goes.
            linger(&mut console, &mut shutdown, options.interval).await;
        }
    } else {
        console.note("fix-monitor still shows sessions open; stopping anyway");
    }
    console.close();
    sidecar.stop().await;

    let now = Timestamp::now();
    let frame = view::Frame::capture(&state.get(), now);
    let schedules = state.get().schedules_view(now);
    let ends = check_ends(&ending.counts, ending.ends.as_ref(), knows);
    let report = match &options.report {
        Some(p) => console::write_report(&state, &ReportTo::Path(p.clone())),
        None => Ok(None),
    };
    let summary = Summary {
        ended_by,
        ran,
        began,
        url: &url,
        fix_source: &fix_source,
        ending: &ending,
        knows,
        ends: &ends,
        schedules: &schedules,
        day: &day,
    };
    let report_path = report.as_ref().ok().and_then(|p| p.as_deref());
    let out = summary.lines(&frame, &fix.get(), report_path);
    drop(log_dir);
    // A reader that went away (`demo | head`) misses the summary; the demo still ends well.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", out.join("\n")).and_then(|()| stdout.flush());
    report?;
    if !ends.agree {
        return Err(DemoError::EndsDiffer);
    }
    Ok(())
}

/// Whether fix-monitor is to read the demo's FIX off the wire (else from the gateway's logs).
fn capture_wanted(source: FixSource) -> bool {
    match source {
        FixSource::Auto => capture_permitted(),
        FixSource::Capture => true,
        FixSource::Log => false,
    }
}

/// Where fix-monitor reads the demo's FIX from, as the view and the summary say it.
fn fix_source_line(log_dir: Option<&LogDir>, capture_error: Option<&str>) -> String {
    match (log_dir, capture_error) {
        (Some(d), _) => format!(
            "FIX: read from the gateway's message logs in {} ([[fix.logs]]; no privileges \
             needed; with CAP_NET_RAW or as root the demo reads the wire instead)",
            d.0.display()
        ),
        (None, None) => "FIX: read off the wire (a packet socket on loopback; CAP_NET_RAW)".into(),
        (None, Some(e)) => format!("FIX: capture was asked for and failed: {e}"),
    }
}

/// Resolves once the sidecar has polled and its FIX layer has read its sources once, or at
/// `deadline`. The FIX layer's first round comes about 50 ms after the first poll, and the log
/// follower's first read starts at the end of the files there: a session logged on before it
/// lost its Logon line (one logon, one message) in a log-mode run.
async fn first_poll(state: &StateReader, fix: &FixReader, deadline: Instant) {
    let mut changes = state.clone();
    while state.get().health.polls == 0 {
        match tokio::time::timeout_at(deadline.into(), changes.changed()).await {
            Ok(true) => {}
            _ => break,
        }
    }
    fix.first_round(deadline).await;
}

/// The live view's header: the endpoint, the simulated gateway, where FIX is read from, and
/// what the venues do.
fn header(
    venues: &[Venue],
    url: &str,
    fix_source: &str,
    duration: Option<Duration>,
    day: &Day,
) -> Header {
    let sessions: usize = venues.iter().map(|v| v.sessions).sum();
    let venue_list: Vec<String> = venues
        .iter()
        .map(|v| format!("{} {}", v.name, v.addr))
        .collect();
    Header {
        title: "demo".into(),
        notes: vec![
            format!("metrics: {url}/metrics   (also {url}/health, {url}/connections, {url}/)"),
            format!(
                "simulated gateway: {sessions} FIX sessions from 127.0.0.1:{}-{} to {}",
                LOCAL_PORTS.0,
                LOCAL_PORTS.1,
                venue_list.join(", ")
            ),
            fix_source.to_owned(),
            format!(
                "{} refuses every logon (logon_lockout {LOCKOUT_ATTEMPTS} in {}: the warning \
                 from logon {}); {} goes silent for {} now and then (stale, then recovers)",
                VENUES[VENUES.len() - 1].0,
                humantime::format_duration(LOCKOUT_WITHIN),
                LOCKOUT_ATTEMPTS - 1,
                VENUES[SILENT_VENUE].0,
                humantime::format_duration(SILENCE)
            ),
            format!(
                "{} rejects one NewOrderSingle in {ORDER_REJECT_EVERY} per session, fills one \
                 in {FILL_EVERY} of the rest (message_limit {MESSAGE_LIMIT}); {}'s clock is \
                 {:+} ms off ours",
                VENUES[OUTCOMES_VENUE].0,
                VENUES[SKEWED_VENUE].0,
                CLOCK_OFFSET_NS / 1_000_000
            ),
            format!(
                "{}'s day ends at {} UTC (schedule_grace {}): \"End of day\", then closed; \
                 {} resets {} when its TestRequest goes unanswered",
                VENUES[SCHEDULED_VENUE].0,
                utc_hms(day.end_wall),
                humantime::format_duration(SCHEDULE_GRACE),
                VENUES[DEAF_VENUE].0,
                gw_comp_id(DEAF_VENUE, 1)
            ),
        ],
        footer: match duration {
            Some(d) => format!("Ctrl+C ends the demo (it ends by itself after {})", hms(d)),
            None => "Ctrl+C ends the demo".into(),
        },
    }
}

/// Shows the sidecar until `shutdown` resolves, the reader goes away or `duration` is up.
async fn show_until_the_end(
    console: &mut Console,
    shutdown: &mut Pin<Box<impl Future<Output = ()>>>,
    duration: Option<Duration>,
) -> End {
    // A reader that went away (`demo | head`) ends the demo as Ctrl+C does.
    let closed = console.output_closed();
    console
        .run_until(async {
            tokio::select! {
                _ = shutdown => End::Signal,
                () = closed.notified() => End::Signal,
                _ = sleep_for(duration) => End::Duration,
            }
        })
        .await
}

/// What the simulator did, and whether fix-monitor saw all of it, once every session ended.
struct Ending {
    counts: Vec<VenueCounts>,
    /// fix-monitor shows no session open any more.
    all_seen_closed: bool,
    /// fix-monitor's FIX counts equal the simulator's.
    fix_agree: bool,
    /// fix-monitor's `fix_session_ends_total` once it had judged every end (or at a
    /// deadline); `None`: its endpoint could not be read.
    ends: Option<SeenEnds>,
}

/// Has the gateway log out of every session, then waits (within limits) for fix-monitor to see
/// the closes and to read the last FIX messages.
async fn end_sessions(
    console: &mut Console,
    sidecar: &Sidecar,
    sim: Simulator,
    interval: Duration,
    knows: Knows,
) -> Ending {
    let fix = &sidecar.fix();
    console.note("ending: the gateway logs out of every session");
    let counts = console
        .run_until(tokio::task::spawn_blocking(move || sim.stop()))
        .await
        .expect("the simulator thread panicked");
    // Let the sidecar see the last closes (two polls, and slack for a slow one).
    let deadline = Instant::now() + interval * 3 + Duration::from_secs(2);
    let all_seen_closed = console.run_until(all_closed(sidecar, deadline)).await;
    // And the FIX layer has read the last messages (the log is read every 250 ms; on a busy
    // host the reader can lag by seconds, and this returns as soon as the counts agree).
    let fix_deadline = Instant::now() + Duration::from_secs(10);
    let fix_agree = console
        .run_until(fix_agrees(fix, &counts, knows, fix_deadline))
        .await;
    // And it has judged every end: each waits for the FIX layer's account of it at most
    // `ends::SETTLE`.
    let ends_deadline = Instant::now() + crate::ends::SETTLE + Duration::from_secs(5);
    let addr = sidecar.local_addr().expect("the demo serves HTTP");
    let ends = console
        .run_until(ends_settled(addr, &counts, ends_deadline))
        .await;
    Ending {
        counts,
        all_seen_closed,
        fix_agree,
        ends,
    }
}

/// fix-monitor's `fix_session_ends_total` above 0: by target, by cause.
type SeenEnds = BTreeMap<String, BTreeMap<String, u64>>;

/// The `fix_session_ends_total` series of a Prometheus text page. (The demo's target and cause
/// names hold no quote, so a label's value ends at the next one.)
fn parse_ends(page: &str) -> SeenEnds {
    let mut out = SeenEnds::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix("fix_session_ends_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let value = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        let (mut target, mut cause) = (None, None);
        let mut rest = labels;
        while let Some((key, tail)) = rest.split_once("=\"") {
            let end = tail.find('"').unwrap_or(tail.len());
            match key.trim_start_matches(',').trim() {
                "target" => target = Some(&tail[..end]),
                "cause" => cause = Some(&tail[..end]),
                _ => {}
            }
            rest = tail.get(end + 1..).unwrap_or_default();
        }
        if let (Some(t), Some(c), Some(v)) = (target, cause, value) {
            if v > 0.0 {
                *out.entry(t.to_owned())
                    .or_default()
                    .entry(c.to_owned())
                    .or_default() += v as u64;
            }
        }
    }
    out
}

/// fix-monitor's own `/metrics`, read as a scraper would.
async fn scrape_ends(addr: SocketAddr) -> io::Result<SeenEnds> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: fix-monitor\r\n\r\n")
            .await?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await?;
        Ok::<_, io::Error>(bytes)
    };
    let bytes = tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let text = String::from_utf8_lossy(&bytes);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(parse_ends(body))
        }
        _ => Err(io::Error::other("no metrics page")),
    }
}

/// fix-monitor's ends once it has judged as many as the simulator closed for every venue, or
/// the last read at `deadline`.
async fn ends_settled(
    addr: SocketAddr,
    counts: &[VenueCounts],
    deadline: Instant,
) -> Option<SeenEnds> {
    let mut last = None;
    loop {
        if let Ok(seen) = scrape_ends(addr).await {
            let judged = |c: &VenueCounts| seen.get(&c.name).map_or(0, |e| e.values().sum());
            if counts.iter().all(|c| judged(c) >= c.closed) {
                return Some(seen);
            }
            last = Some(seen);
        }
        if Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What fix-monitor can know of why the demo's sessions ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Knows {
    /// It reads the wire: every TCP session's FIX account, so every cause.
    Wire,
    /// It reads the engine logs: a FIX account only for a target with one FIX session; the
    /// others' ends are judged on TCP evidence (the schedule's included).
    Logs,
    /// No FIX layer: TCP evidence alone.
    Tcp,
}

impl Knows {
    /// From where the demo reads FIX: the engine logs, else the wire unless capture failed.
    fn of(logs: bool, capture_failed: bool) -> Knows {
        match (logs, capture_failed) {
            (true, _) => Knows::Logs,
            (false, false) => Knows::Wire,
            (false, true) => Knows::Tcp,
        }
    }

    /// Whether every cause of `c`'s ends can be known.
    fn exact(self, c: &VenueCounts) -> bool {
        match self {
            Knows::Wire => true,
            Knows::Logs => c.sessions == 1,
            Knows::Tcp => false,
        }
    }
}

/// The ends' causes, the simulator's against fix-monitor's, and whether they agree.
struct EndsCheck {
    lines: Vec<String>,
    agree: bool,
}

/// Compares the ends exactly where fix-monitor can know their causes, and elsewhere their
/// number and the schedule's (`scheduled_logout` needs no FIX evidence).
fn check_ends(counts: &[VenueCounts], seen: Option<&SeenEnds>, knows: Knows) -> EndsCheck {
    let empty = BTreeMap::new();
    let line = |name: &str, ends: &BTreeMap<String, u64>| {
        let parts: Vec<String> = ends.iter().map(|(c, n)| format!("{c}={n}")).collect();
        format!(
            "{name} {}",
            if parts.is_empty() {
                "none".into()
            } else {
                parts.join(" ")
            }
        )
    };
    let mut lines = Vec::new();
    let mut differ = Vec::new();
    for c in counts {
        let truth: BTreeMap<String, u64> = (c.ends.iter())
            .map(|(k, n)| (k.as_str().to_owned(), *n))
            .collect();
        let got = seen.and_then(|s| s.get(&c.name)).unwrap_or(&empty);
        lines.push(format!("simulated ends: {}", line(&c.name, &truth)));
        lines.push(format!("fix-monitor ends: {}", line(&c.name, got)));
        let scheduled = |e: &BTreeMap<String, u64>| e.get("scheduled_logout").copied();
        let ok = if knows.exact(c) {
            *got == truth
        } else {
            got.values().sum::<u64>() == c.closed && scheduled(got) == scheduled(&truth)
        };
        if !ok || seen.is_none() {
            differ.push(c.name.as_str());
        }
    }
    let exact: Vec<&str> = counts
        .iter()
        .filter(|c| knows.exact(c))
        .map(|c| c.name.as_str())
        .collect();
    lines.push(if !differ.is_empty() {
        format!(
            "fix-monitor's end causes differ from the simulator's: {}",
            differ.join(", ")
        )
    } else if exact.len() == counts.len() {
        "fix-monitor's end causes equal the simulator's".into()
    } else {
        let exactly = if exact.is_empty() {
            "none".into()
        } else {
            exact.join(", ")
        };
        format!(
            "fix-monitor's end causes agree with the simulator's as far as it can know them: \
             exactly for {exactly}; for the others every end counted and scheduled_logout exact"
        )
    });
    EndsCheck {
        lines,
        agree: differ.is_empty(),
    }
}

/// Keeps the endpoint up a little longer (unless `shutdown` resolves first).
async fn linger(
    console: &mut Console,
    shutdown: &mut Pin<Box<impl Future<Output = ()>>>,
    interval: Duration,
) {
    let linger = (interval * 2).max(Duration::from_secs(1));
    console.note(&format!(
        "the endpoint stays up {} more",
        humantime::format_duration(linger)
    ));
    console
        .run_until(async {
            tokio::select! {
                _ = shutdown => {}
                _ = tokio::time::sleep(linger) => {}
            }
        })
        .await;
}

/// What the demo prints at its end: how it ended, and what the simulator and fix-monitor
/// counted, side by side.
struct Summary<'a> {
    ended_by: End,
    ran: Duration,
    /// When the simulated gateway started (silences are told relative to it).
    began: Instant,
    url: &'a str,
    fix_source: &'a str,
    ending: &'a Ending,
    knows: Knows,
    ends: &'a EndsCheck,
    /// The scheduled targets' windows at the end.
    schedules: &'a [crate::state::ScheduleView],
    day: &'a Day,
}

impl Summary<'_> {
    /// The summary's lines, from fix-monitor's last `frame` and FIX state; `report`: where the
    /// report was written.
    fn lines(&self, frame: &view::Frame, fix: &FixState, report: Option<&Path>) -> Vec<String> {
        let counts = &self.ending.counts;
        let mut out = Vec::new();
        out.push(format!(
            "demo ended {} after {}",
            match self.ended_by {
                End::Signal => "on request",
                End::Duration => "as planned",
            },
            hms(self.ran)
        ));
        if let Some(path) = report {
            out.push(format!("report written to {}", path.display()));
        }
        out.push(format!(
            "fix-monitor served its metrics at {}/metrics",
            self.url
        ));
        out.extend(view::totals_lines(frame));
        out.push(format!(
            "simulated gateway sessions: {}",
            counts
                .iter()
                .map(|c| format!("{} opened={} closed={}", c.name, c.opened, c.closed))
                .collect::<Vec<_>>()
                .join("; ")
        ));
        let agree = counts.iter().zip(&frame.targets).all(|(c, t)| {
            c.name == t.name && c.opened == t.stats.opened && c.closed == t.stats.closed
        });
        out.push(if agree {
            "fix-monitor counted every session the gateway opened and closed".into()
        } else {
            "fix-monitor's counts differ from the simulator's (was the machine too busy to poll on time?)"
                .into()
        });
        out.push(self.fix_source.to_owned());
        for c in counts {
            out.extend(self.venue_fix_lines(c, fix));
        }
        out.push(if self.ending.fix_agree {
            "fix-monitor's FIX counts equal the simulator's".into()
        } else {
            "fix-monitor's FIX counts differ from the simulator's".into()
        });
        out.extend(self.scenario_lines(fix));
        out.extend(clock_skew_lines(fix));
        out.push(throttle_line(fix));
        out.extend(self.ends.lines.iter().cloned());
        out
    }

    /// The scheduled venue's day and the refusing venue's logon attempts, as fix-monitor shows
    /// them at the end.
    fn scenario_lines(&self, fix: &FixState) -> Vec<String> {
        let mut out: Vec<String> = (self.schedules.iter())
            .map(|s| {
                format!(
                    "{}: its window ends at {} UTC; fix_target_expected_up {} at the end",
                    s.target,
                    utc_hms(self.day.end_wall),
                    u8::from(s.expected_up)
                )
            })
            .collect();
        let refusing = VENUES[VENUES.len() - 1].0;
        let sessions = (fix.sessions.iter()).filter(|s| s.target.as_deref() == Some(refusing));
        let (refused, attempts) = sessions.fold((0, 0), |(r, a), s| {
            (r + s.logons_refused, a.max(s.logon_attempts_in_window))
        });
        out.push(format!(
            "{refusing}: {refused} logons refused, {attempts} within {} at the end \
             (logon_lockout {LOCKOUT_ATTEMPTS}: the warning from {})",
            humantime::format_duration(LOCKOUT_WITHIN),
            LOCKOUT_ATTEMPTS - 1
        ));
        out
    }

    /// One venue's FIX, as the simulator did it and as fix-monitor saw it.
    fn venue_fix_lines(&self, c: &VenueCounts, fix: &FixState) -> Vec<String> {
        let mut out = vec![
            format!("simulated FIX: {}", c.tally(self.knows).line(&c.name)),
            format!(
                "fix-monitor FIX: {}",
                FixTally::of_state(fix, &c.name).line(&c.name)
            ),
        ];
        if c.fix.orders_answered > 0 {
            out.push(format!(
                "simulated FIX latency: {} answered={} venue_delay_sum={:.6} round_trip_sum={:.6}",
                c.name,
                c.fix.orders_answered,
                c.fix.delay_sum.as_secs_f64(),
                c.fix.round_trip_sum.as_secs_f64()
            ));
        }
        let unseen = c.fix.logons - c.tally(self.knows).logons;
        if unseen > 0 {
            out.push(format!(
                "{}: {unseen} logons after a reset are not counted above: the engine log shows \
                 no disconnect, so their Logon reads as a reset within the session",
                c.name
            ));
        }
        if let Some(text) = &c.fix.last_logout_text {
            out.push(format!("{}: last Logout text: {text}", c.name));
        }
        for (from, to) in &c.silences {
            out.push(format!(
                "simulated silence: {} from +{:.3}s to +{:.3}s",
                c.name,
                from.saturating_duration_since(self.began).as_secs_f64(),
                to.saturating_duration_since(self.began).as_secs_f64()
            ));
        }
        out
    }
}

/// The skewed venue's clock offset as the simulator set it, and the latest skew fix-monitor
/// sampled on each of its sessions (inbound: what `fix_clock_skew_seconds` recorded, `-` when
/// not recorded for want of an RTT; the latest outbound sample of any venue).
fn clock_skew_lines(fix: &FixState) -> Vec<String> {
    let venue = VENUES[SKEWED_VENUE].0;
    let mut out = vec![format!(
        "simulated clock offset: {venue} {:+.6}",
        CLOCK_OFFSET_NS as f64 / 1e9
    )];
    let sessions = (fix.sessions.iter()).filter(|s| s.target.as_deref() == Some(venue));
    let (mut samples, mut latest) = (0, Vec::new());
    for s in sessions {
        samples += s.clock_skew.samples.get("in").copied().unwrap_or(0);
        if let Some(k) = &s.clock_skew.inbound {
            latest.push(k.seconds.map_or("-".into(), |v| format!("{v:+.6}")));
        }
    }
    out.push(format!(
        "fix-monitor clock skew: {venue} in samples={samples} latest per session: {}",
        latest.join(" ")
    ));
    out
}

/// The highest throttle utilization of the outcomes venue's sessions at the end (their
/// outbound peak over the last minute in its `message_limit` window, over its count).
fn throttle_line(fix: &FixState) -> String {
    let venue = VENUES[OUTCOMES_VENUE].0;
    let peak = (fix.sessions.iter())
        .filter(|s| s.target.as_deref() == Some(venue))
        .filter_map(|s| s.bursts.throttle_utilization)
        .fold(None, |m: Option<f64>, u| Some(m.map_or(u, |m| m.max(u))));
    match peak {
        Some(u) => format!(
            "fix-monitor throttle: {venue} utilization={u:.2} of message_limit {MESSAGE_LIMIT} \
             (its highest session, last minute)"
        ),
        None => format!("fix-monitor throttle: {venue} no session seen"),
    }
}

/// The demo's log directory, removed when dropped.
struct LogDir(PathBuf);

impl LogDir {
    fn create() -> Result<LogDir, DemoError> {
        let d = std::env::temp_dir().join(format!("fix-monitor-demo-{}", std::process::id()));
        std::fs::create_dir_all(&d).map_err(DemoError::LogDir)?;
        Ok(LogDir(d))
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(target_os = "linux")]
fn capture_permitted() -> bool {
    crate::fix::capture::permitted()
}

#[cfg(not(target_os = "linux"))]
fn capture_permitted() -> bool {
    false
}

/// Resolves true once fix-monitor's FIX counts equal the simulator's for every venue, false at
/// `deadline`.
async fn fix_agrees(
    fix: &FixReader,
    counts: &[VenueCounts],
    knows: Knows,
    deadline: Instant,
) -> bool {
    loop {
        let state = fix.get();
        if counts
            .iter()
            .all(|c| FixTally::of_state(&state, &c.name) == c.tally(knows))
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        // The FIX layer publishes every round; there is no change notification to wait on.
        tokio::time::sleep(crate::fix::monitor::ROUND / 2).await;
    }
}

async fn sleep_for(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Resolves once the sidecar shows no active connection (true), or at `deadline` (false).
async fn all_closed(sidecar: &Sidecar, deadline: Instant) -> bool {
    let mut state = sidecar.state().clone();
    loop {
        if state.get().active_count() == 0 {
            return true;
        }
        match tokio::time::timeout_at(deadline.into(), state.changed()).await {
            Ok(true) => {}
            _ => return false,
        }
    }
}

/// A simulated venue: a FIX acceptor that takes every connection and holds it.
struct Venue {
    name: &'static str,
    listener: TcpListener,
    addr: SocketAddr,
    sessions: usize,
}

/// Binds each venue to its address and preferred port, else any port, else 127.0.0.1 (not
/// every system routes all of 127/8 to loopback).
fn bind_venues() -> io::Result<Vec<Venue>> {
    VENUES
        .iter()
        .map(|&(name, ip, port, sessions)| {
            let listener = TcpListener::bind((ip, port))
                .or_else(|_| TcpListener::bind((ip, 0)))
                .or_else(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?;
            listener.set_nonblocking(true)?;
            Ok(Venue {
                name,
                addr: listener.local_addr()?,
                listener,
                sessions,
            })
        })
        .collect()
}

/// The sidecar's configuration: one target per venue, as an operator would write it; FIX from
/// the wire, or from the gateway's logs in `log_dir`.
fn settings(
    venues: &[Venue],
    interval: Duration,
    log_dir: Option<&PathBuf>,
    day: &Day,
) -> Result<Settings, DemoError> {
    let mut toml = format!(
        "schedule_grace = \"{}\"\n\n{}",
        humantime::format_duration(SCHEDULE_GRACE),
        day.toml()
    );
    let mut ours = Vec::new();
    for (i, v) in venues.iter().enumerate() {
        toml.push_str(&format!(
            "[[targets]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\nlocal_ports = [{}, {}]\n\
             comp_ids = [\"{}\"]\n",
            v.name,
            v.addr.ip(),
            v.addr.port(),
            LOCAL_PORTS.0,
            LOCAL_PORTS.1,
            comp_id(i),
        ));
        if heartbeats(i) {
            toml.push_str(&format!(
                "heartbeat = \"{}\"\n",
                humantime::format_duration(HEARTBEAT)
            ));
        } else {
            toml.push_str(&format!(
                "logon_lockout = {{ attempts = {LOCKOUT_ATTEMPTS}, within = \"{}\" }}\n",
                humantime::format_duration(LOCKOUT_WITHIN)
            ));
        }
        if i == SCHEDULED_VENUE {
            toml.push_str("schedule = \"demo-day\"\n");
        }
        if i == OUTCOMES_VENUE {
            toml.push_str(&format!("message_limit = {MESSAGE_LIMIT}\n"));
        }
        toml.push('\n');
        ours.extend((1..=v.sessions).map(|k| format!("\"{}\"", gw_comp_id(i, k))));
    }
    toml.push_str(&format!(
        "[poll]\ninterval = \"{}\"\n\n[fix]\nour_comp_ids = [{}]\n",
        humantime::format_duration(interval),
        ours.join(", ")
    ));
    match log_dir {
        Some(d) => toml.push_str(&format!(
            "[[fix.logs]]\npath = \"{}\"\n",
            d.join("*.messages.log").display()
        )),
        None => toml.push_str("capture = true\n"),
    }
    config::parse_toml_str(&toml, "(demo)")
        .map(|l| l.settings)
        .map_err(DemoError::Config)
}

/// Starts the sidecar on `listen`, or on the default port or the next free one.
async fn start_sidecar(
    mut settings: Settings,
    listen: Option<SocketAddr>,
) -> Result<Sidecar, DemoError> {
    let candidates: Vec<SocketAddr> = match listen {
        Some(a) => vec![a],
        None => (0..LISTEN_TRIES)
            .map(|i| SocketAddr::new(DEFAULT_LISTEN.ip(), DEFAULT_LISTEN.port() + i))
            .chain([SocketAddr::new(DEFAULT_LISTEN.ip(), 0)])
            .collect(),
    };
    let last = candidates.len() - 1;
    for (i, addr) in candidates.into_iter().enumerate() {
        settings.prometheus.listen = addr;
        match app::start(
            &settings,
            StartOptions {
                serve_http: true,
                ..Default::default()
            },
        )
        .await
        {
            Ok(s) => return Ok(s),
            Err(RunError::Listen(e)) if e.kind() == io::ErrorKind::AddrInUse && i < last => {}
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the last candidate returns")
}

/// The simulated gateway, on its own thread. Stopping it closes every socket it holds.
struct Simulator {
    stop: std_mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Vec<VenueCounts>>,
}

impl Simulator {
    fn start(
        venues: Vec<Venue>,
        plan: Plan,
        notes: mpsc::UnboundedSender<String>,
        log_dir: Option<PathBuf>,
    ) -> Self {
        let (stop, stopped) = std_mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fix-monitor-demo".into())
            .spawn(move || {
                let mut sim = Sim::new(venues, &plan, notes, Instant::now());
                sim.log_dir = log_dir;
                let mut ending = false;
                loop {
                    let now = Instant::now();
                    if ending {
                        if sim.log_out(now) {
                            return sim.close_all();
                        }
                    } else {
                        sim.tick(now);
                    }
                    // Wake for the next acknowledgement due, or a tick.
                    let wait = sim.next_due().map_or(TICK, |d| {
                        d.saturating_duration_since(Instant::now()).min(TICK)
                    });
                    match stopped.recv_timeout(wait) {
                        Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                        _ => ending = true,
                    }
                }
            })
            .expect("spawning the demo thread");
        Simulator { stop, thread }
    }

    /// Logs every session out and closes the venues, then returns what was done. A session
    /// younger than its minimum life is kept until then (at most two poll intervals and a
    /// second), so that fix-monitor has seen it open; one of the scheduled venue's whose end
    /// would fall at the edge of its window's last `schedule_grace` a few seconds more.
    fn stop(self) -> Vec<VenueCounts> {
        drop(self.stop);
        self.thread.join().expect("the simulator thread panicked")
    }
}

/// What the simulator is to do beyond its venues: the sidecar's poll interval, the scheduled
/// venue's day, and when the demo is to stop (if it knows).
#[derive(Debug, Clone, Copy)]
struct Plan {
    interval: Duration,
    day: Day,
    stop_at: Option<Instant>,
}

struct VenueState {
    venue: Venue,
    script: VenueScript,
    opened: u64,
    closed: u64,
    /// Its FIX sessions' truth, added as each ends.
    fix: LinkTruth,
    /// Its sessions' ends, by the cause fix-monitor is to give each.
    ends: BTreeMap<Cause, u64>,
    /// See [`VenueCounts::logons_after_reset`].
    logons_after_reset: u64,
    silences: Vec<(Instant, Instant)>,
}

struct Session {
    /// The FIX session over the connection, both ends.
    link: Link,
    local: SocketAddr,
    since: Instant,
    until: Instant,
    /// The venue resets it then (its TestRequest left unanswered).
    reset_at: Option<Instant>,
}

enum Slot {
    /// Waiting to (re)connect at this time.
    Waiting(Instant),
    Live(Box<Session>),
    /// The scheduled venue's day is over: no more sessions to it.
    Closed,
}

/// How a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// The gateway logs out (and closes first).
    Gateway,
    /// The venue logs out in a storm.
    Storm,
    /// The venue logs out at the end of its day.
    EndOfDay,
    /// The venue resets the connection.
    Reset,
}

/// What a slot does on a tick.
enum Turn {
    Wait,
    /// Its venue's day is over: no more sessions.
    Close,
    Connect,
    /// Its venue logs out at the end of the day.
    EndOfDay,
    /// Its venue resets it (the TestRequest went unanswered).
    Reset,
    /// Its venue sends the TestRequest that the gateway will leave unanswered.
    Ask,
    /// Its life is up: the gateway logs out.
    LogOut,
}

/// A venue dropping every session, several rounds in a row.
struct Storm {
    venue: usize,
    rounds_left: u32,
    next_round: Instant,
}

struct Sim {
    venues: Vec<VenueState>,
    /// One per FIX session the gateway keeps: (venue, state).
    slots: Vec<(usize, Slot)>,
    rng: fastrand::Rng,
    /// No session is shorter: two poll intervals and a second, so that each is seen open by
    /// some poll even when one runs late.
    min_life: Duration,
    next_storm: Instant,
    storm: Option<Storm>,
    notes: mpsc::UnboundedSender<String>,
    /// The gateway's CompID per slot.
    comp_ids: Vec<String>,
    /// Where the gateway writes its message logs (when fix-monitor reads the logs).
    log_dir: Option<PathBuf>,
    /// The silent venue goes silent next at this time.
    next_silence: Instant,
    /// The silent venue is silent since this time.
    silent_since: Option<Instant>,
    /// The scheduled venue's day, and the span around the start of its last
    /// `schedule_grace` in which none of its sessions ends: fix-monitor times an end by the
    /// poll that saw it (up to a poll interval and a late poll after it), so an end there could
    /// be judged on either side.
    day: Day,
    hold: (Instant, Instant),
    /// The slot whose gateway stops answering the venue's TestRequests ([`DEAF_VENUE`]'s first).
    deaf_slot: usize,
    /// Per slot: its FIX session's last TCP session was reset, and no logon followed yet.
    after_reset: Vec<bool>,
    /// When the demo stops, if known: no reset so late that its session could not reconnect
    /// and log out at the end (read from engine logs, a reset session would stay logged on).
    stop_at: Option<Instant>,
    /// [`REPLAY_VENUE`]'s replayed gap is still to come (on its next session).
    replay_due: bool,
}

impl Sim {
    fn new(
        venues: Vec<Venue>,
        plan: &Plan,
        notes: mpsc::UnboundedSender<String>,
        now: Instant,
    ) -> Sim {
        let mut rng = fastrand::Rng::new();
        let min_life = plan.interval * 2 + Duration::from_secs(1);
        let mut slots = Vec::new();
        let mut comp_ids = Vec::new();
        for (i, v) in venues.iter().enumerate() {
            for k in 0..v.sessions {
                // The sessions log on over the first two seconds, not all at once.
                slots.push((i, Slot::Waiting(now + ms(&mut rng, 0, 2000))));
                comp_ids.push(gw_comp_id(i, k + 1));
            }
        }
        let margin = min_life + plan.interval + Duration::from_secs(2);
        let grace_from = plan.day.grace_from();
        Sim {
            venues: venues
                .into_iter()
                .enumerate()
                .map(|(i, venue)| VenueState {
                    venue,
                    script: script(i),
                    opened: 0,
                    closed: 0,
                    fix: LinkTruth::default(),
                    ends: BTreeMap::new(),
                    logons_after_reset: 0,
                    silences: Vec::new(),
                })
                .collect(),
            deaf_slot: slots
                .iter()
                .position(|(v, _)| *v == DEAF_VENUE)
                .unwrap_or(0),
            after_reset: vec![false; slots.len()],
            slots,
            rng,
            min_life,
            // The first storm comes early, so that a short demo shows one.
            next_storm: now + (min_life * 2 + Duration::from_secs(2)).max(Duration::from_secs(5)),
            storm: None,
            notes,
            comp_ids,
            log_dir: None,
            next_silence: now + FIRST_SILENCE,
            silent_since: None,
            day: plan.day,
            hold: (
                grace_from.checked_sub(margin).unwrap_or(grace_from),
                grace_from + Duration::from_millis(500),
            ),
            stop_at: plan.stop_at,
            replay_due: true,
        }
    }

    fn silent(&self, venue: usize) -> bool {
        venue == SILENT_VENUE && self.silent_since.is_some()
    }

    /// Whether a session of `venue` may end at `now`: not while the venue is silent, nor in
    /// the scheduled venue's hold.
    fn may_end(&self, venue: usize, now: Instant) -> bool {
        let held = venue == SCHEDULED_VENUE && (self.hold.0..self.hold.1).contains(&now);
        !self.silent(venue) && !held
    }

    /// Whether an end of `venue`'s at `at` is planned by its schedule.
    fn planned(&self, venue: usize, at: Instant) -> bool {
        venue == SCHEDULED_VENUE && at >= self.day.grace_from()
    }

    /// Whether `venue`'s day is over at `now`.
    fn day_over(&self, venue: usize, now: Instant) -> bool {
        venue == SCHEDULED_VENUE && now >= self.day.end
    }

    /// The earliest acknowledgement due on any session.
    fn next_due(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|(_, s)| match s {
                Slot::Live(s) => s.link.next_due(),
                Slot::Waiting(_) | Slot::Closed => None,
            })
            .min()
    }

    /// The silent venue: goes quiet at its time, answers again after [`SILENCE`].
    fn silence(&mut self, now: Instant) {
        let name = self.venues[SILENT_VENUE].venue.name;
        match self.silent_since {
            Some(since) if now >= since + SILENCE => {
                self.silent_since = None;
                self.venues[SILENT_VENUE].silences.push((since, now));
                self.next_silence = now + ms(&mut self.rng, 40_000, 60_000);
                let _ = self.notes.send(format!(
                    "{name} answers again after {}: its sessions recover",
                    humantime::format_duration(SILENCE)
                ));
            }
            None if now >= self.next_silence => {
                self.silent_since = Some(now);
                let _ = self.notes.send(format!(
                    "{name} goes silent for {} (no heartbeats, no answers): its sessions turn \
                     stale after {} (stale_after, twice the heartbeat)",
                    humantime::format_duration(SILENCE),
                    humantime::format_duration(HEARTBEAT * 2)
                ));
            }
            _ => {}
        }
    }

    fn tick(&mut self, now: Instant) {
        self.silence(now);
        if self.day_over(SCHEDULED_VENUE, now) && self.day_open() {
            let _ = self.notes.send(format!(
                "{}: its schedule's window ends ({} UTC): it logs every session out with \
                 \"End of day\" and stays closed",
                self.venues[SCHEDULED_VENUE].venue.name,
                utc_hms(self.day.end_wall)
            ));
        }
        for i in 0..self.slots.len() {
            let venue = self.slots[i].0;
            let silent = self.silent(venue);
            let broken = match &mut self.slots[i].1 {
                Slot::Live(s) => s.link.step(now, silent).err(),
                Slot::Waiting(_) | Slot::Closed => None,
            };
            if let Some(e) = broken {
                tracing::debug!(error = %e, "demo: a FIX session broke");
                self.end(i, How::Gateway, now);
                self.slots[i].1 = Slot::Waiting(now + Duration::from_secs(1));
                continue;
            }
            self.tick_slot(i, venue, now);
        }
        self.storms(now);
    }

    /// Whether the scheduled venue's day has not been closed yet (its slots not all
    /// [`Slot::Closed`]).
    fn day_open(&self) -> bool {
        (self.slots.iter()).any(|(v, s)| *v == SCHEDULED_VENUE && !matches!(s, Slot::Closed))
    }

    /// One slot's turn: connect when it is time (not to a venue whose day is over), end its
    /// session when its life or its venue's day is up.
    fn tick_slot(&mut self, i: usize, venue: usize, now: Instant) {
        let day_over = self.day_over(venue, now);
        // No reset so late that the gateway's reconnect and its Logon might not be seen before
        // the end (a loaded machine reads the engine logs late): a margin of 8 s.
        let late = (self.stop_at).is_some_and(|t| now + RESET_AFTER + Duration::from_secs(8) >= t);
        let turn = match &self.slots[i].1 {
            Slot::Waiting(_) if day_over => Turn::Close,
            Slot::Waiting(at) if *at <= now => Turn::Connect,
            Slot::Live(s) if day_over && now - s.since >= self.min_life => Turn::EndOfDay,
            Slot::Live(s) if s.reset_at.is_some_and(|t| t <= now) => Turn::Reset,
            Slot::Live(s) if s.until <= now && s.reset_at.is_none() && self.may_end(venue, now) => {
                if i == self.deaf_slot && !late {
                    Turn::Ask
                } else {
                    Turn::LogOut
                }
            }
            _ => Turn::Wait,
        };
        match turn {
            Turn::Wait => {}
            Turn::Close => self.slots[i].1 = Slot::Closed,
            Turn::Connect => {
                self.slots[i].1 = match self.connect(i, venue, now) {
                    Ok(s) => {
                        self.venues[venue].opened += 1;
                        Slot::Live(Box::new(s))
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "demo: connect failed, retrying");
                        Slot::Waiting(now + Duration::from_secs(1))
                    }
                };
            }
            Turn::EndOfDay => {
                self.end(i, How::EndOfDay, now);
                self.slots[i].1 = Slot::Closed;
            }
            Turn::Reset => {
                self.end(i, How::Reset, now);
                self.slots[i].1 = Slot::Waiting(now + ms(&mut self.rng, 500, 1000));
            }
            Turn::Ask => {
                // The venue asks; the gateway will not answer.
                if let Slot::Live(s) = &mut self.slots[i].1 {
                    match s.link.venue_test_request_unanswered() {
                        Ok(()) => s.reset_at = Some(now + RESET_AFTER),
                        Err(e) => tracing::debug!(error = %e, "demo: a TestRequest failed"),
                    }
                }
            }
            Turn::LogOut => {
                // The gateway logs out: it closes first.
                self.end(i, How::Gateway, now);
                let pause = if self.venues[venue].script.refuse_logons.is_some() {
                    ms(&mut self.rng, 2000, 4000)
                } else {
                    ms(&mut self.rng, 500, 3000)
                };
                self.slots[i].1 = Slot::Waiting(now + pause);
            }
        }
    }

    fn storms(&mut self, now: Instant) {
        if self.storm.is_none() && now >= self.next_storm {
            // A venue with sessions logged on (not the refusing one), not while silent, not
            // after its day.
            let mut venue = self.rng.usize(..=SILENT_VENUE);
            if self.silent(venue) || self.day_over(venue, now) {
                venue = 0;
            }
            let _ = self.notes.send(format!(
                "{} drops every session, three times in a row: a reconnect storm",
                self.venues[venue].venue.name
            ));
            self.storm = Some(Storm {
                venue,
                rounds_left: 3,
                next_round: now,
            });
        }
        let Some(storm) = &mut self.storm else {
            return;
        };
        if now < storm.next_round {
            return;
        }
        let venue = storm.venue;
        storm.rounds_left -= 1;
        storm.next_round = now + self.min_life + Duration::from_millis(1500);
        let over = storm.rounds_left == 0;
        for i in 0..self.slots.len() {
            // Not the deaf session: its venue resets it instead.
            let drop_it = self.slots[i].0 == venue
                && i != self.deaf_slot
                && self.may_end(venue, now)
                && !self.day_over(venue, now)
                && matches!(&self.slots[i].1, Slot::Live(s) if now - s.since >= self.min_life);
            if drop_it {
                // The venue drops the session: it closes first; the gateway retries quickly.
                self.end(i, How::Storm, now);
                let pause = ms(&mut self.rng, 200, 800);
                self.slots[i].1 = Slot::Waiting(now + pause);
            }
        }
        if over {
            self.storm = None;
            self.next_storm = now + ms(&mut self.rng, 25_000, 45_000);
            let _ = self.notes.send(format!(
                "{}: the storm is over",
                self.venues[venue].venue.name
            ));
        }
    }

    /// Connects slot `slot`'s session to `venue` from a free local port in [`LOCAL_PORTS`],
    /// takes the venue's end from its listener and sends the Logon.
    fn connect(&mut self, slot: usize, venue: usize, now: Instant) -> io::Result<Session> {
        use socket2::{Domain, Socket, Type};
        let in_use: HashSet<u16> = self
            .slots
            .iter()
            .filter_map(|(_, s)| match s {
                Slot::Live(s) => Some(s.local.port()),
                Slot::Waiting(_) | Slot::Closed => None,
            })
            .collect();
        let remote = self.venues[venue].venue.addr;
        let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no free local port");
        for _ in 0..20 {
            let port = self.rng.u16(LOCAL_PORTS.0..=LOCAL_PORTS.1);
            if in_use.contains(&port) {
                continue;
            }
            let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            // A port whose last session is in TIME_WAIT may be bound again.
            socket.set_reuse_address(true)?;
            let attempt = socket
                .bind(&local.into())
                .and_then(|_| socket.connect_timeout(&remote.into(), Duration::from_secs(1)));
            match attempt {
                Ok(()) => {
                    let stream: TcpStream = socket.into();
                    let accepted = self.accept(venue, local)?;
                    let refusing = self.venues[venue].script.refuse_logons.is_some();
                    let life = if refusing {
                        self.min_life
                    } else if slot == self.deaf_slot {
                        // Short, so that a short demo shows its reset.
                        ms(&mut self.rng, 3000, 6000).max(self.min_life)
                    } else {
                        ms(&mut self.rng, 3000, 20_000).max(self.min_life)
                    };
                    let script = self.session_script(slot, venue);
                    let gw = &self.comp_ids[slot];
                    let log = match &self.log_dir {
                        Some(d) => Some(MessageLog::create(
                            &d.join(format!("{gw}-{}.messages.log", script.comp_id)),
                            false,
                        )?),
                        None => None,
                    };
                    let pace = (Duration::from_millis(300), Duration::from_millis(1500));
                    let link = Link::open(stream, accepted, gw, script, HEARTBEAT, pace, log)?;
                    return Ok(Session {
                        link,
                        local,
                        since: now,
                        until: now + life,
                        reset_at: None,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The script of `venue`'s session in `slot`: the venue's, and on [`REPLAY_VENUE`]'s first
    /// session a gap of [`REPLAYED_GAP`] numbers right after its Logon, replayed when asked.
    fn session_script(&mut self, slot: usize, venue: usize) -> VenueScript {
        let mut script = self.venues[venue].script.clone();
        if venue == REPLAY_VENUE && self.replay_due {
            self.replay_due = false;
            script.gaps.push(Gap {
                first: 1,
                every: u64::MAX,
                size: REPLAYED_GAP,
                replay: true,
            });
            let _ = self.notes.send(format!(
                "{}: {} misses {REPLAYED_GAP} sequence numbers after its Logon; the venue \
                 replays them (PossDupFlag=Y): a resend storm",
                self.venues[venue].venue.name, self.comp_ids[slot]
            ));
        }
        script
    }

    /// The venue's end of the connection from `local` (it is in the listener's queue once
    /// connect returns on loopback; others found there are not ours and are dropped).
    fn accept(&mut self, venue: usize, local: SocketAddr) -> io::Result<TcpStream> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match self.venues[venue].venue.listener.accept() {
                Ok((s, peer)) if peer == local => {
                    s.set_nonblocking(false)?;
                    return Ok(s);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Ends the live session in slot `i` at `now` (or later, when the work took time), as
    /// `how` says, and counts it with the cause fix-monitor is to give it.
    fn end(&mut self, i: usize, how: How, now: Instant) {
        let venue = self.slots[i].0;
        let slot = std::mem::replace(&mut self.slots[i].1, Slot::Waiting(now));
        let Slot::Live(s) = slot else {
            return;
        };
        let name = self.venues[venue].venue.name;
        let (truth, r) = match how {
            How::Gateway => s.link.log_out(None, "end of session"),
            How::Storm => {
                let reason = format!("{name}: maintenance, reconnect later");
                s.link.log_out(Some(&reason), "")
            }
            How::EndOfDay => s.link.log_out(Some("End of day"), ""),
            How::Reset => {
                let _ = self.notes.send(format!(
                    "{name} resets {} after {} without an answer to its TestRequest",
                    self.comp_ids[i],
                    humantime::format_duration(RESET_AFTER)
                ));
                s.link.venue_resets()
            }
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "demo: a FIX session's end failed");
        }
        let at = now.max(Instant::now());
        let cause = cause_of(&truth, self.planned(venue, at));
        let v = &mut self.venues[venue];
        if self.after_reset[i] {
            v.logons_after_reset += truth.logons;
        }
        self.after_reset[i] = how == How::Reset || (self.after_reset[i] && truth.logons == 0);
        v.fix.add(&truth);
        *v.ends.entry(cause).or_default() += 1;
        v.closed += 1;
    }

    /// Ending: opens nothing more, and logs out every session old enough (and not in the
    /// scheduled venue's hold). True once none is left.
    fn log_out(&mut self, now: Instant) -> bool {
        if let Some(since) = self.silent_since.take() {
            self.venues[SILENT_VENUE].silences.push((since, now));
        }
        let mut left = false;
        for i in 0..self.slots.len() {
            let venue = self.slots[i].0;
            let may_end = self.may_end(venue, now);
            match &self.slots[i].1 {
                Slot::Live(s) if now - s.since >= self.min_life && may_end => {
                    self.end(i, How::Gateway, now)
                }
                Slot::Live(_) => left = true,
                Slot::Waiting(_) | Slot::Closed => {}
            }
        }
        !left
    }

    /// Closes every session and listener; returns what was done.
    fn close_all(mut self) -> Vec<VenueCounts> {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            self.end(i, How::Gateway, now);
        }
        self.venues
            .into_iter()
            .map(|v| VenueCounts {
                name: v.venue.name.to_owned(),
                sessions: v.venue.sessions,
                opened: v.opened,
                closed: v.closed,
                fix: v.fix,
                ends: v.ends,
                logons_after_reset: v.logons_after_reset,
                silences: v.silences,
            })
            .collect()
    }
}

/// The cause fix-monitor is to give a session that ended as `t` says (one session's truth),
/// `planned` or not by its schedule: the judge's rules (`crate::ends::judge`), in its order,
/// on what the simulator knows it did.
fn cause_of(t: &LinkTruth, planned: bool) -> Cause {
    if t.refused_logons > 0 && t.logons == 0 {
        Cause::LogonRefused
    } else if planned {
        Cause::ScheduledLogout
    } else if t.test_requests_unanswered > 0 {
        Cause::HeartbeatTimeout
    } else if t.logouts_them > 0 {
        Cause::LogoutByThem
    } else if t.logouts_us > 0 {
        Cause::LogoutByUs
    } else if t.resets_by_venue > 0 {
        Cause::ResetByThem
    } else {
        Cause::ClosedWithoutLogout
    }
}

fn ms(rng: &mut fastrand::Rng, from: u64, to: u64) -> Duration {
    Duration::from_millis(rng.u64(from..=to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_configuration_is_valid() {
        let venues = bind_venues().unwrap();
        let day = Day::ending_after(DAY_LENGTH, SystemTime::now(), Instant::now());
        let s = settings(&venues, Duration::from_millis(250), None, &day).unwrap();
        assert_eq!(s.targets.len(), VENUES.len());
        assert!(s.fix.capture && s.fix.logs.is_empty());
        assert_eq!(s.fix.our_comp_ids.len(), 14);
        assert_eq!(s.fix.target_comp_ids[1], vec!["VENUEB".to_string()]);
        let dir = PathBuf::from("/tmp/x");
        let l = settings(&venues, Duration::from_millis(250), Some(&dir), &day).unwrap();
        assert!(!l.fix.capture);
        assert_eq!(l.fix.log_paths(), vec!["/tmp/x/*.messages.log".to_string()]);
        assert_eq!(s.poll.interval, Duration::from_millis(250));
        assert_eq!(s.targets.get(SILENT_VENUE).stale_after, Some(HEARTBEAT * 2));
        assert_eq!(s.targets.get(VENUES.len() - 1).stale_after, None);
        for (t, v) in s.targets.iter().zip(&venues) {
            assert!(t.matches(&"127.0.0.1:5000".parse().unwrap(), &v.addr));
            assert!(!t.matches(&"127.0.0.1:6000".parse().unwrap(), &v.addr));
        }
        // The scheduled venue's window: up now, down from its end (a whole second) on.
        assert_eq!(s.schedule_grace, SCHEDULE_GRACE);
        let sched = s.target_schedules[SCHEDULED_VENUE].as_ref().unwrap();
        assert!(s.target_schedules.iter().filter(|s| s.is_some()).count() == 1);
        assert!(sched.expected_up(SystemTime::now()));
        assert!(sched.expected_up(day.end_wall - Duration::from_secs(1)));
        assert!(!sched.expected_up(day.end_wall));
        assert!(!sched.expected_up(day.end_wall + Duration::from_secs(3600)));
        assert!(sched.planned_end(day.end_wall - SCHEDULE_GRACE, SCHEDULE_GRACE));
        assert!(!sched.planned_end(day.end_wall - SCHEDULE_GRACE * 2, SCHEDULE_GRACE));
        let lockout = s.fix.target_logon_lockout[VENUES.len() - 1].unwrap();
        assert_eq!(
            (lockout.attempts as u32, lockout.within),
            (LOCKOUT_ATTEMPTS, LOCKOUT_WITHIN)
        );
        assert!(s.fix.target_logon_lockout[0].is_none());
    }

    /// A day ends on a whole second, `length` or up to a second more after now, and its
    /// times read as UTC wall-clock times.
    #[test]
    fn a_day_and_its_times() {
        let now_wall = SystemTime::UNIX_EPOCH + Duration::from_millis(86_400_000 * 3 + 3_599_250);
        let now = Instant::now();
        let d = Day::ending_after(Duration::from_secs(45), now_wall, now);
        assert_eq!(utc_hms(now_wall), "00:59:59");
        assert_eq!(utc_hms(d.end_wall), "01:00:45");
        assert_eq!(d.end - now, Duration::from_millis(45_750));
        assert_eq!(utc_hms(d.start), "00:49:59");
        assert_eq!(d.grace_from(), d.end - SCHEDULE_GRACE);
        assert!(d
            .toml()
            .contains("start = \"00:49:59\"\nend = \"01:00:45\""));
    }

    /// The judge's rules on the simulator's truth, in the judge's order.
    #[test]
    fn the_simulators_causes() {
        let t = |f: fn(&mut LinkTruth)| {
            let mut t = LinkTruth::default();
            f(&mut t);
            t
        };
        let refused = t(|t| t.refused_logons = 1);
        assert_eq!(cause_of(&refused, true), Cause::LogonRefused);
        let us = t(|t| {
            t.logons = 1;
            t.logouts_us = 1
        });
        assert_eq!(cause_of(&us, false), Cause::LogoutByUs);
        assert_eq!(cause_of(&us, true), Cause::ScheduledLogout);
        let them = t(|t| {
            t.logons = 1;
            t.logouts_them = 1
        });
        assert_eq!(cause_of(&them, false), Cause::LogoutByThem);
        let deaf = t(|t| {
            t.logons = 1;
            t.logouts_us = 1;
            t.test_requests_unanswered = 1
        });
        assert_eq!(cause_of(&deaf, false), Cause::HeartbeatTimeout);
        let reset = t(|t| {
            t.logons = 1;
            t.resets_by_venue = 1;
            t.test_requests_unanswered = 1
        });
        assert_eq!(cause_of(&reset, false), Cause::HeartbeatTimeout);
        assert_eq!(
            cause_of(&t(|t| t.logons = 1), false),
            Cause::ClosedWithoutLogout
        );
    }

    #[test]
    fn ends_read_off_a_metrics_page_and_compared() {
        let page = "# HELP fix_session_ends_total Sessions that ended\n\
            # TYPE fix_session_ends_total counter\n\
            fix_session_ends_total{cause=\"logout_by_us\",target=\"venue-a\",otel_scope_name=\"x\"} 3\n\
            fix_session_ends_total{target=\"venue-a\",cause=\"heartbeat_timeout\"} 1\n\
            fix_session_ends_total{cause=\"unknown\",target=\"venue-a\"} 0\n\
            fix_session_ends_total{cause=\"unknown\",target=\"venue-b\"} 2 1700000000000\n\
            fix_session_ends_totally{cause=\"unknown\",target=\"venue-b\"} 9\n";
        let seen = parse_ends(page);
        let m = |kv: &[(&str, u64)]| -> BTreeMap<String, u64> {
            kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        assert_eq!(
            seen["venue-a"],
            m(&[("logout_by_us", 3), ("heartbeat_timeout", 1)])
        );
        assert_eq!(seen["venue-b"], m(&[("unknown", 2)]));

        let venue = |name: &str, sessions, ends: &[(Cause, u64)]| VenueCounts {
            name: name.into(),
            sessions,
            closed: ends.iter().map(|e| e.1).sum(),
            ends: ends.iter().copied().collect(),
            ..Default::default()
        };
        let a = venue(
            "venue-a",
            6,
            &[(Cause::LogoutByUs, 3), (Cause::HeartbeatTimeout, 1)],
        );
        let b = venue("venue-b", 4, &[(Cause::LogoutByThem, 2)]);
        let counts = [a, b];
        // The wire: exact for every target; venue-b's causes differ.
        let wire = check_ends(&counts, Some(&seen), Knows::Wire);
        assert!(!wire.agree);
        assert_eq!(
            wire.lines.last().unwrap(),
            "fix-monitor's end causes differ from the simulator's: venue-b"
        );
        assert!(wire
            .lines
            .contains(&"simulated ends: venue-a heartbeat_timeout=1 logout_by_us=3".to_string()));
        // The logs: several sessions each, so only counted; they agree.
        let logs = check_ends(&counts, Some(&seen), Knows::Logs);
        assert!(logs.agree, "{:?}", logs.lines);
        assert!(logs.lines.last().unwrap().contains("exactly for none"));
        // An end not judged, or no page at all.
        let short = [venue("venue-b", 4, &[(Cause::LogoutByThem, 3)])];
        assert!(!check_ends(&short, Some(&seen), Knows::Logs).agree);
        assert!(!check_ends(&counts, None, Knows::Logs).agree);
    }

    /// The simulator alone, at a fast pace: sessions open, close, and storms happen; the counts
    /// match the sockets it made, and closing leaves nothing open.
    #[test]
    fn the_simulator_opens_and_closes_sessions_and_counts_them() {
        let venues = bind_venues().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let t0 = Instant::now();
        let plan = Plan {
            interval: Duration::from_millis(10),
            day: Day::ending_after(Duration::from_secs(20), SystemTime::now(), t0),
            stop_at: None,
        };
        let mut sim = Sim::new(venues, &plan, tx, t0);
        // Simulated time: 60 s in 50 ms steps (sockets are real, lifetimes are not waited).
        let mut now = t0;
        while now < t0 + Duration::from_secs(60) {
            sim.tick(now);
            now += TICK;
        }
        let live = sim
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Live(_)))
            .count() as u64;
        let counts = sim.close_all();
        let opened: u64 = counts.iter().map(|c| c.opened).sum();
        let closed: u64 = counts.iter().map(|c| c.closed).sum();
        assert!(opened > 13 * 2, "{counts:?}");
        assert_eq!(opened, closed, "close_all closes the {live} live ones too");
        // Every end has its cause; each scenario's shows.
        for c in &counts {
            assert_eq!(c.ends.values().sum::<u64>(), c.closed, "{c:?}");
        }
        let ends = |v: usize, cause| counts[v].ends.get(&cause).copied().unwrap_or(0);
        assert!(
            ends(SCHEDULED_VENUE, Cause::ScheduledLogout) > 0,
            "{counts:?}"
        );
        assert!(ends(DEAF_VENUE, Cause::HeartbeatTimeout) > 0, "{counts:?}");
        assert_eq!(
            ends(VENUES.len() - 1, Cause::LogonRefused),
            counts[VENUES.len() - 1].closed
        );
        // Each reset is a heartbeat timeout; a TestRequest still awaiting its reset when
        // everything closes is one too (this run has no stop time to keep clear of).
        let (resets, timeouts) = (
            counts[DEAF_VENUE].fix.resets_by_venue,
            ends(DEAF_VENUE, Cause::HeartbeatTimeout),
        );
        assert!(resets == timeouts || resets + 1 == timeouts, "{counts:?}");
        let mut notes = Vec::new();
        while let Ok(n) = rx.try_recv() {
            notes.push(n);
        }
        assert!(
            notes.iter().any(|n| n.contains("reconnect storm")),
            "{notes:?}"
        );
        // One resend storm, on the replay venue's first session: every number it left out
        // replayed once (a News with PossDupFlag), no other News.
        let replay = &counts[REPLAY_VENUE].fix;
        assert_eq!(replay.resend_storms_in, 1, "{replay:?}");
        assert_eq!(replay.received.get("News"), Some(&REPLAYED_GAP));
        assert_eq!(replay.poss_dups_in, REPLAYED_GAP + replay.gap_fills_in);
        for (v, c) in counts
            .iter()
            .enumerate()
            .filter(|(v, _)| *v != REPLAY_VENUE)
        {
            assert_eq!(
                (c.fix.resend_storms_in, c.fix.received.get("News")),
                (0, None),
                "{v}"
            );
        }
        assert_eq!(
            notes
                .iter()
                .filter(|n| n.contains("a resend storm"))
                .count(),
            1,
            "{notes:?}"
        );
    }
}
