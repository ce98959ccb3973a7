//! `fix-monitor demo`: the whole thing on loopback, with nothing to set up.
//!
//! Three simulated venues listen on 127.0.0.2-4 (or on 127.0.0.1 where only that exists); a
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

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::app::{self, RunError, Sidecar, StartOptions};
use crate::config::{self, ConfigErrors, Settings};
use crate::console::{self, view, Console, ConsoleError, Header, Mode, ReportTo};
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

/// How each venue speaks FIX (by the index in [`VENUES`]).
fn script(venue: usize) -> VenueScript {
    let ms = Duration::from_millis;
    let name = VENUES[venue].0;
    let mut s = VenueScript {
        comp_id: comp_id(venue),
        ack_delay: (ms(1), ms(5)),
        refuse_logons: None,
        business_reject_every: None,
        gap: None,
    };
    match venue {
        // Fast, and rejects an order now and then.
        0 => s.business_reject_every = Some(9),
        // Slower, and leaves sequence gaps.
        1 => {
            s.ack_delay = (ms(10), ms(40));
            s.gap = Some(Gap {
                first: 3,
                every: 60,
                size: 3,
            });
        }
        // Slow (and the one that goes silent).
        2 => s.ack_delay = (ms(40), ms(150)),
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
}

/// What the simulated gateway did with one venue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VenueCounts {
    pub name: String,
    pub opened: u64,
    pub closed: u64,
    /// Its FIX sessions, summed.
    pub fix: LinkTruth,
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
    pub last_logout_text: Option<String>,
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
        }
        t
    }

    /// `name k=v ...` (the counts that FIX desks look at; messages as totals).
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name} logons={} logouts_us={} logouts_them={} sent={} received={} gaps={} \
             gap_messages={} resend_requests={} test_requests={} rejects={} answered={} \
             rejected={}",
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
    let settings = settings(&venues, options.interval, log_dir.as_ref().map(|d| &d.0))?;
    let sidecar = start_sidecar(settings, options.listen).await?;
    let fix = sidecar.fix();
    let fix_source = fix_source_line(log_dir.as_ref(), fix.get().capture_error.as_deref());
    let state = sidecar.state().clone();
    let url = format!(
        "http://{}",
        sidecar.local_addr().expect("the demo serves HTTP")
    );
    // The gateway starts once the sidecar has looked: every session is then a real open.
    first_poll(&state, Instant::now() + Duration::from_secs(5)).await;

    let header = header(&venues, &url, &fix_source, options.duration);
    let (notes_tx, notes_rx) = mpsc::unbounded_channel();
    let mut console = Console::new(&sidecar, header, options.mode, Some(notes_rx));
    let sim = Simulator::start(
        venues,
        options.interval,
        notes_tx,
        log_dir.as_ref().map(|d| d.0.clone()),
    );
    let began = Instant::now();
    let mut shutdown = Box::pin(shutdown);
    let ended_by = show_until_the_end(&mut console, &mut shutdown, options.duration).await;
    let ran = began.elapsed();

    let ending = end_sessions(&mut console, &sidecar, &fix, sim, options.interval).await;
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

    let frame = view::Frame::capture(&state.get(), Timestamp::now());
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
    };
    let report_path = report.as_ref().ok().and_then(|p| p.as_deref());
    let out = summary.lines(&frame, &fix.get(), report_path);
    drop(log_dir);
    // A reader that went away (`demo | head`) misses the summary; the demo still ends well.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", out.join("\n")).and_then(|()| stdout.flush());
    report?;
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

/// Resolves once the sidecar has polled, or at `deadline`.
async fn first_poll(state: &StateReader, deadline: Instant) {
    let mut changes = state.clone();
    while state.get().health.polls == 0 {
        match tokio::time::timeout_at(deadline.into(), changes.changed()).await {
            Ok(true) => {}
            _ => break,
        }
    }
}

/// The live view's header: the endpoint, the simulated gateway, where FIX is read from, and
/// what the venues do.
fn header(venues: &[Venue], url: &str, fix_source: &str, duration: Option<Duration>) -> Header {
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
                "{} refuses every logon; {} goes silent for {} now and then (stale, then recovers)",
                VENUES[VENUES.len() - 1].0,
                VENUES[SILENT_VENUE].0,
                humantime::format_duration(SILENCE)
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
}

/// Has the gateway log out of every session, then waits (within limits) for fix-monitor to see
/// the closes and to read the last FIX messages.
async fn end_sessions(
    console: &mut Console,
    sidecar: &Sidecar,
    fix: &FixReader,
    sim: Simulator,
    interval: Duration,
) -> Ending {
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
        .run_until(fix_agrees(fix, &counts, fix_deadline))
        .await;
    Ending {
        counts,
        all_seen_closed,
        fix_agree,
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
        out
    }

    /// One venue's FIX, as the simulator did it and as fix-monitor saw it.
    fn venue_fix_lines(&self, c: &VenueCounts, fix: &FixState) -> Vec<String> {
        let mut out = vec![
            format!(
                "simulated FIX: {}",
                FixTally::of_truth(&c.fix).line(&c.name)
            ),
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
async fn fix_agrees(fix: &FixReader, counts: &[VenueCounts], deadline: Instant) -> bool {
    loop {
        let state = fix.get();
        if counts
            .iter()
            .all(|c| FixTally::of_state(&state, &c.name) == FixTally::of_truth(&c.fix))
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
) -> Result<Settings, DemoError> {
    let mut toml = String::new();
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
        interval: Duration,
        notes: mpsc::UnboundedSender<String>,
        log_dir: Option<PathBuf>,
    ) -> Self {
        let (stop, stopped) = std_mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fix-monitor-demo".into())
            .spawn(move || {
                let mut sim = Sim::new(venues, interval, notes, Instant::now());
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
    /// second), so that fix-monitor has seen it open.
    fn stop(self) -> Vec<VenueCounts> {
        drop(self.stop);
        self.thread.join().expect("the simulator thread panicked")
    }
}

struct VenueState {
    venue: Venue,
    script: VenueScript,
    opened: u64,
    closed: u64,
    /// Its FIX sessions' truth, added as each ends.
    fix: LinkTruth,
    silences: Vec<(Instant, Instant)>,
}

struct Session {
    /// The FIX session over the connection, both ends.
    link: Link,
    local: SocketAddr,
    since: Instant,
    until: Instant,
}

enum Slot {
    /// Waiting to (re)connect at this time.
    Waiting(Instant),
    Live(Box<Session>),
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
    next_silence: Instant,
    /// The silent venue is silent since this time.
    silent_since: Option<Instant>,
}

impl Sim {
    fn new(
        venues: Vec<Venue>,
        interval: Duration,
        notes: mpsc::UnboundedSender<String>,
        now: Instant,
    ) -> Sim {
        let mut rng = fastrand::Rng::new();
        let min_life = interval * 2 + Duration::from_secs(1);
        let mut slots = Vec::new();
        let mut comp_ids = Vec::new();
        for (i, v) in venues.iter().enumerate() {
            for k in 0..v.sessions {
                // The sessions log on over the first two seconds, not all at once.
                slots.push((i, Slot::Waiting(now + ms(&mut rng, 0, 2000))));
                comp_ids.push(gw_comp_id(i, k + 1));
            }
        }
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
                    silences: Vec::new(),
                })
                .collect(),
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
        }
    }

    fn silent(&self, venue: usize) -> bool {
        venue == SILENT_VENUE && self.silent_since.is_some()
    }

    /// The earliest acknowledgement due on any session.
    fn next_due(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|(_, s)| match s {
                Slot::Live(s) => s.link.next_due(),
                Slot::Waiting(_) => None,
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
        for i in 0..self.slots.len() {
            let venue = self.slots[i].0;
            let silent = self.silent(venue);
            let broken = match &mut self.slots[i].1 {
                Slot::Live(s) => s.link.step(now, silent).err(),
                Slot::Waiting(_) => None,
            };
            if let Some(e) = broken {
                tracing::debug!(error = %e, "demo: a FIX session broke");
                self.end(i, false);
                self.slots[i].1 = Slot::Waiting(now + Duration::from_secs(1));
                continue;
            }
            match &self.slots[i].1 {
                Slot::Waiting(at) if *at <= now => {
                    let next = match self.connect(i, venue, now) {
                        Ok(s) => {
                            self.venues[venue].opened += 1;
                            Slot::Live(Box::new(s))
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "demo: connect failed, retrying");
                            Slot::Waiting(now + Duration::from_secs(1))
                        }
                    };
                    self.slots[i].1 = next;
                }
                Slot::Live(s) if s.until <= now && !silent => {
                    // The gateway logs out: it closes first.
                    self.end(i, false);
                    let pause = if self.venues[venue].script.refuse_logons.is_some() {
                        ms(&mut self.rng, 2000, 4000)
                    } else {
                        ms(&mut self.rng, 500, 3000)
                    };
                    self.slots[i].1 = Slot::Waiting(now + pause);
                }
                _ => {}
            }
        }
        self.storms(now);
    }

    fn storms(&mut self, now: Instant) {
        if self.storm.is_none() && now >= self.next_storm {
            // A venue with sessions logged on (not the refusing one), not while silent.
            let mut venue = self.rng.usize(..=SILENT_VENUE);
            if self.silent(venue) {
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
            let drop_it = self.slots[i].0 == venue
                && !self.silent(venue)
                && matches!(&self.slots[i].1, Slot::Live(s) if now - s.since >= self.min_life);
            if drop_it {
                // The venue drops the session: it closes first; the gateway retries quickly.
                self.end(i, true);
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
                Slot::Waiting(_) => None,
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
                    } else {
                        ms(&mut self.rng, 3000, 20_000).max(self.min_life)
                    };
                    let gw = &self.comp_ids[slot];
                    let script = self.venues[venue].script.clone();
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
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
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

    /// Ends the live session in slot `i` with a Logout; `venue_first`: the venue logs out (a
    /// reason given) and closes its side first.
    fn end(&mut self, i: usize, venue_first: bool) {
        let venue = self.slots[i].0;
        let slot = std::mem::replace(&mut self.slots[i].1, Slot::Waiting(Instant::now()));
        if let Slot::Live(s) = slot {
            let v = &mut self.venues[venue];
            let reason = format!("{}: maintenance, reconnect later", v.venue.name);
            let (truth, r) = s
                .link
                .log_out(venue_first.then_some(reason.as_str()), "end of session");
            if let Err(e) = r {
                tracing::debug!(error = %e, "demo: a FIX logout failed");
            }
            v.fix.add(&truth);
            v.closed += 1;
        }
    }

    /// Ending: opens nothing more, and logs out every session old enough. True once none is
    /// left.
    fn log_out(&mut self, now: Instant) -> bool {
        if let Some(since) = self.silent_since.take() {
            self.venues[SILENT_VENUE].silences.push((since, now));
        }
        let mut left = false;
        for i in 0..self.slots.len() {
            match &self.slots[i].1 {
                Slot::Live(s) if now - s.since >= self.min_life => self.end(i, false),
                Slot::Live(_) => left = true,
                Slot::Waiting(_) => {}
            }
        }
        !left
    }

    /// Closes every session and listener; returns what was done.
    fn close_all(mut self) -> Vec<VenueCounts> {
        for i in 0..self.slots.len() {
            self.end(i, false);
        }
        self.venues
            .into_iter()
            .map(|v| VenueCounts {
                name: v.venue.name.to_owned(),
                opened: v.opened,
                closed: v.closed,
                fix: v.fix,
                silences: v.silences,
            })
            .collect()
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
        let s = settings(&venues, Duration::from_millis(250), None).unwrap();
        assert_eq!(s.targets.len(), VENUES.len());
        assert!(s.fix.capture && s.fix.logs.is_empty());
        assert_eq!(s.fix.our_comp_ids.len(), 14);
        assert_eq!(s.fix.target_comp_ids[1], vec!["VENUEB".to_string()]);
        let dir = PathBuf::from("/tmp/x");
        let l = settings(&venues, Duration::from_millis(250), Some(&dir)).unwrap();
        assert!(!l.fix.capture);
        assert_eq!(l.fix.log_paths(), vec!["/tmp/x/*.messages.log".to_string()]);
        assert_eq!(s.poll.interval, Duration::from_millis(250));
        assert_eq!(s.targets.get(SILENT_VENUE).stale_after, Some(HEARTBEAT * 2));
        assert_eq!(s.targets.get(VENUES.len() - 1).stale_after, None);
        for (t, v) in s.targets.iter().zip(&venues) {
            assert!(t.matches(&"127.0.0.1:5000".parse().unwrap(), &v.addr));
            assert!(!t.matches(&"127.0.0.1:6000".parse().unwrap(), &v.addr));
        }
    }

    /// The simulator alone, at a fast pace: sessions open, close, and storms happen; the counts
    /// match the sockets it made, and closing leaves nothing open.
    #[test]
    fn the_simulator_opens_and_closes_sessions_and_counts_them() {
        let venues = bind_venues().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let t0 = Instant::now();
        let mut sim = Sim::new(venues, Duration::from_millis(10), tx, t0);
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
        let mut notes = Vec::new();
        while let Ok(n) = rx.try_recv() {
            notes.push(n);
        }
        assert!(
            notes.iter().any(|n| n.contains("reconnect storm")),
            "{notes:?}"
        );
    }
}
