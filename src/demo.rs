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

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::app::{self, RunError, Sidecar, StartOptions};
use crate::config::{self, ConfigErrors, Settings};
use crate::console::{self, view, Console, ConsoleError, Header, Mode, ReportTo};
use crate::session::hms;
use crate::tracker::Timestamp;

/// The venues: name, address, preferred port, sessions the gateway keeps to it.
const VENUES: &[(&str, Ipv4Addr, u16, usize)] = &[
    ("venue-a", Ipv4Addr::new(127, 0, 0, 2), 9876, 6),
    ("venue-b", Ipv4Addr::new(127, 0, 0, 3), 9877, 4),
    ("venue-c", Ipv4Addr::new(127, 0, 0, 4), 9878, 3),
];

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
    pub mode: Mode,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot set up the simulated venues: {0}")]
    Venues(io::Error),
    #[error("the demo's own configuration is invalid (a bug):\n{0}")]
    Config(ConfigErrors),
    #[error(transparent)]
    Start(#[from] RunError),
    #[error(transparent)]
    Console(#[from] ConsoleError),
}

/// What the simulated gateway did with one venue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VenueCounts {
    pub name: String,
    pub opened: u64,
    pub closed: u64,
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
    let settings = settings(&venues, options.interval)?;
    let sidecar = start_sidecar(settings, options.listen).await?;
    let state = sidecar.state().clone();
    let url = format!(
        "http://{}",
        sidecar.local_addr().expect("the demo serves HTTP")
    );
    // The gateway starts once the sidecar has looked: every session is then a real open.
    let first_poll = Instant::now() + Duration::from_secs(5);
    {
        let mut changes = state.clone();
        while state.get().health.polls == 0 {
            match tokio::time::timeout_at(first_poll.into(), changes.changed()).await {
                Ok(true) => {}
                _ => break,
            }
        }
    }

    let sessions: usize = venues.iter().map(|v| v.sessions).sum();
    let venue_list: Vec<String> = venues
        .iter()
        .map(|v| format!("{} {}", v.name, v.addr))
        .collect();
    let header = Header {
        title: "demo".into(),
        notes: vec![
            format!("metrics: {url}/metrics   (also {url}/health, {url}/connections, {url}/)"),
            format!(
                "simulated gateway: {sessions} FIX sessions from 127.0.0.1:{}-{} to {}",
                LOCAL_PORTS.0,
                LOCAL_PORTS.1,
                venue_list.join(", ")
            ),
        ],
        footer: match options.duration {
            Some(d) => format!("Ctrl+C ends the demo (it ends by itself after {})", hms(d)),
            None => "Ctrl+C ends the demo".into(),
        },
    };
    let (notes_tx, notes_rx) = mpsc::unbounded_channel();
    let mut console = Console::new(&sidecar, header, options.mode, Some(notes_rx));
    let sim = Simulator::start(venues, options.interval, notes_tx);
    let began = Instant::now();

    let mut shutdown = Box::pin(shutdown);
    let ended_by = console
        .run_until(async {
            tokio::select! {
                _ = &mut shutdown => End::Signal,
                _ = sleep_for(options.duration) => End::Duration,
            }
        })
        .await;
    let ran = began.elapsed();

    console.note("ending: the gateway logs out of every session");
    let counts = console
        .run_until(tokio::task::spawn_blocking(move || sim.stop()))
        .await
        .expect("the simulator thread panicked");
    // Let the sidecar see the last closes (two polls, and slack for a slow one).
    let deadline = Instant::now() + options.interval * 3 + Duration::from_secs(2);
    let seen = console.run_until(all_closed(&sidecar, deadline)).await;
    if seen {
        console.note("fix-monitor has seen every session close");
        if ended_by == End::Duration {
            // A scraper gets one last look at the final counts before the endpoint goes.
            let linger = (options.interval * 2).max(Duration::from_secs(1));
            console.note(&format!(
                "the endpoint stays up {} more",
                humantime::format_duration(linger)
            ));
            console
                .run_until(async {
                    tokio::select! {
                        _ = &mut shutdown => {}
                        _ = tokio::time::sleep(linger) => {}
                    }
                })
                .await;
        }
    } else {
        console.note("fix-monitor still shows sessions open; stopping anyway");
    }
    console.close();
    sidecar.stop().await;

    let frame = view::Frame::capture(&state.get(), Timestamp::now());
    let mut out = Vec::new();
    out.push(format!(
        "demo ended {} after {}",
        match ended_by {
            End::Signal => "on request",
            End::Duration => "as planned",
        },
        hms(ran)
    ));
    let report = match &options.report {
        Some(p) => console::write_report(&state, &ReportTo::Path(p.clone())),
        None => Ok(None),
    };
    if let Ok(Some(path)) = &report {
        out.push(format!("report written to {}", path.display()));
    }
    out.push(format!("fix-monitor served its metrics at {url}/metrics"));
    out.extend(view::totals_lines(&frame));
    out.push(format!(
        "simulated gateway sessions: {}",
        counts
            .iter()
            .map(|c| format!("{} opened={} closed={}", c.name, c.opened, c.closed))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    let agree = counts
        .iter()
        .zip(&frame.targets)
        .all(|(c, t)| c.name == t.name && c.opened == t.stats.opened && c.closed == t.stats.closed);
    out.push(if agree {
        "fix-monitor counted every session the gateway opened and closed".into()
    } else {
        "fix-monitor's counts differ from the simulator's (was the machine too busy to poll on time?)"
            .into()
    });
    println!("{}", out.join("\n"));
    report?;
    Ok(())
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

/// The sidecar's configuration: one target per venue, as an operator would write it.
fn settings(venues: &[Venue], interval: Duration) -> Result<Settings, DemoError> {
    let mut toml = String::new();
    for v in venues {
        toml.push_str(&format!(
            "[[targets]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\nlocal_ports = [{}, {}]\n\n",
            v.name,
            v.addr.ip(),
            v.addr.port(),
            LOCAL_PORTS.0,
            LOCAL_PORTS.1
        ));
    }
    toml.push_str(&format!(
        "[poll]\ninterval = \"{}\"\n",
        humantime::format_duration(interval)
    ));
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
        match app::start(&settings, StartOptions { serve_http: true }).await {
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
    fn start(venues: Vec<Venue>, interval: Duration, notes: mpsc::UnboundedSender<String>) -> Self {
        let (stop, stopped) = std_mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fix-monitor-demo".into())
            .spawn(move || {
                let mut sim = Sim::new(venues, interval, notes, Instant::now());
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
                    match stopped.recv_timeout(TICK) {
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
    /// Accepted connections, by the gateway's address (the peer).
    held: HashMap<SocketAddr, TcpStream>,
    opened: u64,
    closed: u64,
}

struct Session {
    stream: TcpStream,
    local: SocketAddr,
    since: Instant,
    until: Instant,
}

enum Slot {
    /// Waiting to (re)connect at this time.
    Waiting(Instant),
    Live(Session),
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
        for (i, v) in venues.iter().enumerate() {
            for _ in 0..v.sessions {
                // The sessions log on over the first two seconds, not all at once.
                slots.push((i, Slot::Waiting(now + ms(&mut rng, 0, 2000))));
            }
        }
        Sim {
            venues: venues
                .into_iter()
                .map(|venue| VenueState {
                    venue,
                    held: HashMap::new(),
                    opened: 0,
                    closed: 0,
                })
                .collect(),
            slots,
            rng,
            min_life,
            // The first storm comes early, so that a short demo shows one.
            next_storm: now + (min_life * 2 + Duration::from_secs(2)).max(Duration::from_secs(5)),
            storm: None,
            notes,
        }
    }

    fn tick(&mut self, now: Instant) {
        for v in &mut self.venues {
            while let Ok((stream, peer)) = v.venue.listener.accept() {
                v.held.insert(peer, stream);
            }
        }
        for i in 0..self.slots.len() {
            let venue = self.slots[i].0;
            match &self.slots[i].1 {
                Slot::Waiting(at) if *at <= now => {
                    let next = match self.connect(venue, now) {
                        Ok(s) => {
                            self.venues[venue].opened += 1;
                            Slot::Live(s)
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "demo: connect failed, retrying");
                            Slot::Waiting(now + Duration::from_secs(1))
                        }
                    };
                    self.slots[i].1 = next;
                }
                Slot::Live(s) if s.until <= now => {
                    // The gateway logs out: it closes first.
                    self.end(i, false);
                    let pause = ms(&mut self.rng, 500, 3000);
                    self.slots[i].1 = Slot::Waiting(now + pause);
                }
                _ => {}
            }
        }
        self.storms(now);
    }

    fn storms(&mut self, now: Instant) {
        if self.storm.is_none() && now >= self.next_storm {
            let venue = self.rng.usize(..self.venues.len());
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

    /// Connects a session to `venue` from a free local port in [`LOCAL_PORTS`].
    fn connect(&mut self, venue: usize, now: Instant) -> io::Result<Session> {
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
                    let life = ms(&mut self.rng, 3000, 20_000).max(self.min_life);
                    return Ok(Session {
                        stream: socket.into(),
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

    /// Ends the live session in slot `i`; `venue_first`: the venue closes its side first.
    fn end(&mut self, i: usize, venue_first: bool) {
        let venue = self.slots[i].0;
        let slot = std::mem::replace(&mut self.slots[i].1, Slot::Waiting(Instant::now()));
        if let Slot::Live(s) = slot {
            let v = &mut self.venues[venue];
            let server = v.held.remove(&s.local);
            if venue_first {
                drop(server);
                drop(s.stream);
            } else {
                drop(s.stream);
                drop(server);
            }
            v.closed += 1;
        }
    }

    /// Ending: opens nothing more, and logs out every session old enough. True once none is
    /// left.
    fn log_out(&mut self, now: Instant) -> bool {
        for v in &mut self.venues {
            while let Ok((stream, peer)) = v.venue.listener.accept() {
                v.held.insert(peer, stream);
            }
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
        let s = settings(&venues, Duration::from_millis(250)).unwrap();
        assert_eq!(s.targets.len(), VENUES.len());
        assert_eq!(s.poll.interval, Duration::from_millis(250));
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
