//! The console: fix-monitor for a person at a terminal, as the original monitor was.
//!
//! - [`watch`]: the sidecar core (`app::start`, no HTTP endpoint) with a live view of it, and a
//!   JSON report and the totals when Ctrl+C or SIGTERM ends it. The view only reads the published
//!   state and the sidecar's event feed: there is no second poll loop.
//! - [`Console`]: that view, on its own, for anything that runs a sidecar (`demo` uses it).
//! - [`snapshot`]: one poll, printed; no runtime, no OpenTelemetry, no history.
//! - [`view`]: the pure part: frames, event lines, summaries and totals as text.
//! - [`screen`]: a view redrawn in place on a terminal, or plain lines elsewhere.
//! - [`report`]: the JSON report.

pub mod fix_panel;
pub mod report;
pub mod screen;
pub mod snapshot;
pub mod view;

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, Notify};

use crate::app::{self, RunError, Sidecar, StartOptions};
use crate::config::Settings;
use crate::health::HealthEvent;
use crate::session::{hms, Session};
use crate::state::{State, StateReader};
use crate::tracker::{Event, Timestamp};

pub use screen::Mode;
pub use view::Header;

/// Lines of the event log the live view keeps (it shows the newest that fit).
const LOG_KEPT: usize = 500;

/// The live view redraws at least this often, so that ages and the clock move.
const MAX_REDRAW: Duration = Duration::from_secs(1);

/// Where the report goes when watching ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportTo {
    /// `fix_connections_YYYYmmdd_HHMMSS.json` in the current directory, as the original.
    Default,
    Path(PathBuf),
    /// No report.
    Nowhere,
}

#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub report: ReportTo,
    pub mode: Mode,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(transparent)]
    Start(#[from] RunError),
    #[error("cannot write to the terminal: {0}")]
    Output(#[from] io::Error),
    #[error("cannot write the report to {path}: {source}")]
    Report {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Watches until `shutdown` resolves: starts the sidecar core without its endpoint, shows it,
/// then stops it, writes the report and prints the totals.
pub async fn watch(
    settings: &Settings,
    options: WatchOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConsoleError> {
    let sidecar = app::start(
        settings,
        StartOptions {
            serve_http: false,
            ..Default::default()
        },
    )
    .await?;
    let state = sidecar.state().clone();
    let header = Header {
        title: "watch".into(),
        notes: Vec::new(),
        footer: match options.report {
            ReportTo::Nowhere => "Ctrl+C stops watching".into(),
            _ => "Ctrl+C stops watching and writes the report".into(),
        },
    };
    let mut console = Console::new(&sidecar, header, options.mode, None);
    // A reader that went away (`watch | head`) ends watching as Ctrl+C does, as it ends `ss`.
    let closed = console.output_closed();
    console
        .run_until(async {
            tokio::select! {
                () = shutdown => {}
                () = closed.notified() => {}
            }
        })
        .await;
    console.close();
    sidecar.stop().await;

    let mut out = io::stdout().lock();
    let frame = view::Frame::capture(&state.get(), Timestamp::now());
    writeln!(
        out,
        "stopped watching after {} ({} polls)",
        hms(frame.up),
        frame.polls
    )?;
    let written = write_report(&state, &options.report);
    if let Ok(Some(path)) = &written {
        writeln!(out, "report written to {}", path.display())?;
    }
    for l in view::totals_lines(&frame) {
        writeln!(out, "{l}")?;
    }
    out.flush()?;
    written.map(|_| ())
}

/// Writes the report for the latest published state where `to` says; returns where it went.
pub fn write_report(state: &StateReader, to: &ReportTo) -> Result<Option<PathBuf>, ConsoleError> {
    let now = Timestamp::now();
    let path = match to {
        ReportTo::Nowhere => return Ok(None),
        ReportTo::Default => report::default_path(now.wall),
        ReportTo::Path(p) => p.clone(),
    };
    let report = report::Report::new(&state.get(), now);
    report.write(&path).map_err(|source| ConsoleError::Report {
        path: path.clone(),
        source,
    })?;
    Ok(Some(absolute(&path)))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The live view of a running sidecar: redrawn in place on a terminal, else a line per event
/// and a summary line every poll interval.
pub struct Console {
    state: StateReader,
    events: broadcast::Receiver<crate::tracker::SharedEvent>,
    events_open: bool,
    /// Sessions turning stale and recovering: a line each, like the log's.
    health: broadcast::Receiver<crate::health::SharedHealthEvent>,
    health_open: bool,
    notes: Option<mpsc::UnboundedReceiver<String>>,
    header: Header,
    out: Output,
    /// The event log, newest last (interactive only; lines mode prints as it goes).
    log: VecDeque<String>,
    /// The connections already open at the first poll have been announced (their `Opened`
    /// events are not logged one by one: there may be hundreds, and they did not just open).
    announced: bool,
    interval: Duration,
    /// The FIX layer's state, for the FIX sessions panel.
    fix: crate::fix::monitor::FixReader,
    /// Told once stdout's reader has gone away (lines mode): see [`Console::output_closed`].
    closed: Arc<Notify>,
    /// Closes whose line went out before their end was judged (the FIX layer's account is
    /// waited for): each gets an `ended` line with its cause once the state has it.
    awaiting_cause: Vec<CloseKey>,
    /// The published state can still change (the loop runs).
    state_open: bool,
}

/// A closed session as both its close event and the published closed list name it.
type CloseKey = (SocketAddr, SocketAddr, SystemTime);

fn event_close_key(e: &Event) -> Option<CloseKey> {
    match e {
        Event::Closed { conn, at, .. } => Some((conn.key.local, conn.key.remote, at.wall)),
        _ => None,
    }
}

fn session_close_key(s: &Session) -> Option<CloseKey> {
    let ended = s.life?.ended?;
    Some((s.local, s.remote, ended.at.wall))
}

/// The closed session `k` names, in the published list (the newest of that name).
fn closed_session(m: &State, k: CloseKey) -> Option<&Session> {
    m.closed
        .iter()
        .rev()
        .find(|s| session_close_key(s) == Some(k))
}

enum Output {
    Screen(screen::Screen),
    Lines(io::Stdout),
}

impl Console {
    /// Starts showing `sidecar`. `notes` are extra lines for the event log (the demo's storms).
    /// Falls back to plain lines if the terminal cannot be taken over.
    pub fn new(
        sidecar: &Sidecar,
        header: Header,
        mode: Mode,
        notes: Option<mpsc::UnboundedReceiver<String>>,
    ) -> Console {
        let out = match mode {
            Mode::Interactive => match screen::Screen::enter() {
                Ok(s) => Output::Screen(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot draw on the terminal; printing lines");
                    Output::Lines(io::stdout())
                }
            },
            Mode::Lines => Output::Lines(io::stdout()),
        };
        let state = sidecar.state().clone();
        let interval = state.get().meta.interval;
        let mut console = Console {
            state,
            events: sidecar.subscribe(),
            events_open: true,
            health: sidecar.subscribe_health(),
            health_open: true,
            notes,
            header,
            out,
            log: VecDeque::new(),
            announced: false,
            interval,
            fix: sidecar.fix(),
            closed: Arc::new(Notify::new()),
            awaiting_cause: Vec::new(),
            state_open: true,
        };
        if let Output::Lines(_) = console.out {
            let mut lines = vec![view::stamped(
                std::time::SystemTime::now(),
                &view::start_line(&console.frame(), &console.header),
            )];
            lines.extend(console.header.notes.iter().cloned());
            console.print(&lines);
        }
        console
    }

    /// Resolves (through `notified()`) once a write found stdout's reader gone, in lines mode. The
    /// view itself goes on; whoever runs it decides whether that ends it.
    pub fn output_closed(&self) -> Arc<Notify> {
        Arc::clone(&self.closed)
    }

    /// Adds a line to the event log, stamped with the time now.
    pub fn note(&mut self, text: &str) {
        let line = view::stamped(std::time::SystemTime::now(), text);
        self.push(vec![line]);
    }

    /// Shows the sidecar until `until` resolves, and returns what it resolved to.
    pub async fn run_until<T>(&mut self, until: impl Future<Output = T>) -> T {
        tokio::pin!(until);
        let redraw = match self.out {
            Output::Screen(_) => self.interval.min(MAX_REDRAW),
            Output::Lines(_) => self.interval,
        };
        let mut tick = tokio::time::interval(redraw);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Lines mode: the first summary one interval in, not at once.
        if let Output::Lines(_) = self.out {
            tick.reset();
        }
        self.announce_if_polled();
        self.redraw();
        loop {
            tokio::select! {
                biased;
                v = &mut until => {
                    self.redraw();
                    return v;
                }
                r = self.events.recv(), if self.events_open => {
                    let mut batch = vec![r];
                    while let Ok(e) = self.events.try_recv() {
                        batch.push(Ok(e));
                    }
                    self.take_events(batch);
                    self.redraw();
                }
                // After the events (biased): a close's line is out before its `ended` line.
                open = self.state.changed(), if self.state_open && !self.awaiting_cause.is_empty() => {
                    self.state_open = open;
                    if self.take_causes() {
                        self.redraw();
                    }
                }
                r = self.health.recv(), if self.health_open => {
                    self.take_health(r);
                    self.redraw();
                }
                Some(n) = recv_note(&mut self.notes) => {
                    self.note(&n);
                    self.redraw();
                }
                _ = tick.tick() => {
                    self.announce_if_polled();
                    match self.out {
                        Output::Screen(_) => self.redraw(),
                        Output::Lines(_) => {
                            let line = view::summary_line(&self.frame());
                            self.print(&[line]);
                        }
                    }
                }
            }
        }
    }

    /// Gives the terminal back.
    pub fn close(self) {
        drop(self.out);
    }

    fn take_events(
        &mut self,
        batch: Vec<Result<crate::tracker::SharedEvent, broadcast::error::RecvError>>,
    ) {
        self.announce_if_polled();
        let mut lines = Vec::new();
        let m = self.state.get();
        for r in batch {
            match r.as_deref() {
                Ok(Event::Opened(c)) if c.preexisting => {}
                Ok(e) => {
                    let key = event_close_key(e);
                    let end = key.and_then(|k| closed_session(&m, k)?.end.as_ref());
                    if let (Some(k), None) = (key, end) {
                        self.awaiting_cause.push(k);
                    }
                    lines.push(view::event_line(e, &m.meta.targets, end));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => lines.push(view::stamped(
                    std::time::SystemTime::now(),
                    &format!("({n} events not shown: the console fell behind)"),
                )),
                Err(broadcast::error::RecvError::Closed) => self.events_open = false,
            }
        }
        drop(m);
        self.push(lines);
    }

    /// An `ended` line for each awaited close whose end the state now has; whether any.
    fn take_causes(&mut self) -> bool {
        let m = self.state.get();
        let now = Timestamp::now();
        let mut lines = Vec::new();
        self.awaiting_cause
            .retain(|k| match closed_session(&m, *k).map(|s| (s, &s.end)) {
                Some((s, Some(v))) => {
                    lines.push(view::ended_line(&view::ConnRow::of(s, now), v));
                    false
                }
                Some((_, None)) => true,
                // Out of the closed list (a storm of closes): counted in the report, not shown.
                None => false,
            });
        drop(m);
        let any = !lines.is_empty();
        self.push(lines);
        any
    }

    fn take_health(
        &mut self,
        r: Result<crate::health::SharedHealthEvent, broadcast::error::RecvError>,
    ) {
        let now = std::time::SystemTime::now();
        let line = match r.as_deref() {
            Ok(e) => health_line(e, &self.state.get().meta.targets),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                format!("({n} stale/recovered lines not shown: the console fell behind)")
            }
            Err(broadcast::error::RecvError::Closed) => {
                self.health_open = false;
                return;
            }
        };
        self.push(vec![view::stamped(now, &line)]);
    }

    /// Once the first poll has succeeded, says how many connections were already open.
    fn announce_if_polled(&mut self) {
        if self.announced {
            return;
        }
        let polled = self.state.get().health.last_success.is_some();
        if polled {
            self.announced = true;
            let list = matches!(self.out, Output::Lines(_));
            let lines = view::preexisting_lines(&self.frame(), list);
            self.push(lines);
        }
    }

    fn frame(&self) -> view::Frame {
        let mut f = view::Frame::capture(&self.state.get(), Timestamp::now());
        f.fix = Some(self.fix.get());
        f
    }

    fn push(&mut self, lines: Vec<String>) {
        match self.out {
            Output::Screen(_) => {
                for l in lines {
                    if self.log.len() == LOG_KEPT {
                        self.log.pop_front();
                    }
                    self.log.push_back(l);
                }
            }
            Output::Lines(_) => self.print(&lines),
        }
    }

    fn print(&mut self, lines: &[String]) {
        if let Output::Lines(out) = &mut self.out {
            let mut out = out.lock();
            let written = lines
                .iter()
                .try_for_each(|l| writeln!(out, "{l}"))
                .and_then(|()| out.flush());
            // A closed pipe stops nothing here; `watch` ends on it (see `output_closed`).
            if matches!(&written, Err(e) if e.kind() == io::ErrorKind::BrokenPipe) {
                self.closed.notify_one();
            }
        }
    }

    fn redraw(&mut self) {
        if let Output::Screen(_) = self.out {
            let frame = self.frame();
            if let Output::Screen(s) = &mut self.out {
                let (w, h) = s.size();
                let lines = view::render(&frame, &self.header, &self.log, w, h);
                if let Err(e) = s.draw(&lines) {
                    tracing::debug!(error = %e, "drawing failed");
                }
            }
        }
    }
}

/// The console's line for a session turning stale or recovering (unstamped), like the log's:
/// `stale venue-a 10.0.0.1:5001 -> 10.0.0.5:9876: nothing received for 2.413s`,
/// `recovered venue-a 10.0.0.1:5001 -> 10.0.0.5:9876 after 5.102s of silence`.
pub fn health_line(e: &HealthEvent, targets: &crate::target::Targets) -> String {
    match e {
        HealthEvent::Stale {
            target,
            local,
            remote,
            silence,
        } => format!(
            "stale {} {local} -> {remote}: nothing received for {:.3}s",
            targets.get(*target).name,
            silence.as_secs_f64()
        ),
        HealthEvent::Recovered {
            target,
            local,
            remote,
            silence,
        } => format!(
            "recovered {} {local} -> {remote} after {:.3}s of silence",
            targets.get(*target).name,
            silence.as_secs_f64()
        ),
    }
}

async fn recv_note(notes: &mut Option<mpsc::UnboundedReceiver<String>>) -> Option<String> {
    match notes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
