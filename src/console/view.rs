//! What a person reads, as plain text: a frame of the monitor's state laid out to fit a
//! terminal, the one-line forms of events, the periodic summary and the final totals.
//!
//! Pure: a [`Frame`] is taken from a published [`State`] (no I/O, no clock reading
//! but the timestamp passed in), and every function here turns data into strings. `screen`
//! decides where the strings go.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::ends::Verdict;
use crate::session::{hms, Session};
use crate::state::{EndCounts, State};
use crate::target::{Target, Targets};
use crate::tracker::{Event, TargetStats, Timestamp};

/// How many closed connections the live view lists at most (the original listed 5).
pub const CLOSED_SHOWN: usize = 5;

/// What the view says about itself, beyond the monitor's state.
#[derive(Debug, Clone, Default)]
pub struct Header {
    /// `watch` or `demo`.
    pub title: String,
    /// Lines under the title (the demo's endpoint URL).
    pub notes: Vec<String>,
    /// The last line: how to stop.
    pub footer: String,
}

/// One target's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRow {
    pub name: String,
    /// `ADDRESS:PORT`, or the address alone when any port matches.
    pub address: String,
    /// `START-END`, or `any`.
    pub local_ports: String,
    pub stats: TargetStats,
    /// Its ends judged so far, by cause.
    pub ends: EndCounts,
}

impl TargetRow {
    fn new(t: &Target, stats: TargetStats, ends: EndCounts) -> TargetRow {
        TargetRow {
            name: t.name.clone(),
            address: Target::default_name(&t.net, t.port),
            local_ports: t
                .local_ports
                .map_or_else(|| "any".to_owned(), |r| r.to_string()),
            stats,
            ends,
        }
    }
}

/// One active or closed session's line: the table's presentation of a [`Session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRow {
    pub target: String,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Active: its age now. Closed: how long it lasted.
    pub duration: Duration,
    /// Active: when it was first seen. Closed: when it was seen gone.
    pub at: SystemTime,
    /// Open before watching began: `duration` is a lower bound.
    pub preexisting: bool,
    /// The session's TCP health and staleness (netlink only).
    pub health: Option<(crate::source::TcpHealth, Option<bool>)>,
    /// The process that owns the session, where the source knows it (eBPF mode, or
    /// `poll.process_lookup`).
    pub process: Option<crate::source::Process>,
    /// Closed sessions: who hung up, where the source saw it (eBPF mode).
    pub closed_by: Option<crate::source::ClosedBy>,
    /// Closed sessions: why it ended, once judged (a moment after the close with the FIX
    /// layer on, which is waited for).
    pub end: Option<Verdict>,
}

/// The process columns' titles, and one session's cells; `-` where not known.
pub const PROCESS_TITLES: [&str; 2] = ["PID", "COMMAND"];

pub fn process_cells(p: Option<&crate::source::Process>) -> [String; 2] {
    match p {
        Some(p) => [p.pid.to_string(), p.comm.to_string()],
        None => ["-".into(), "-".into()],
    }
}

/// Who hung up, as the closed table shows it: `-` where the source could not tell (polling),
/// never a guess.
pub fn closed_by_cell(by: Option<crate::source::ClosedBy>) -> String {
    match by {
        Some(crate::source::ClosedBy::Unknown) | None => "-".into(),
        Some(by) => by.as_str().into(),
    }
}

/// Why a closed session ended, as the closed table shows it: the cause's name, `-` until it is
/// judged (`unknown` once judged without evidence).
pub fn cause_cell(end: Option<&Verdict>) -> String {
    end.map_or_else(|| "-".into(), |v| v.cause.as_str().into())
}

/// What an event line adds once the end is judged: `, cause logout_by_them (Logout from them
/// first "End of day"; FIN from them first)`.
pub fn cause_suffix(v: &Verdict) -> String {
    if v.evidence.is_empty() {
        format!(", cause {}", v.cause.as_str())
    } else {
        format!(", cause {} ({})", v.cause.as_str(), v.evidence)
    }
}

/// The line for an end judged after its close line was written:
/// `ended venue-a 10.0.0.1:5001 -> 10.0.0.5:9876, cause heartbeat_timeout (...)`.
pub fn ended_line(c: &ConnRow, v: &Verdict) -> String {
    stamped(
        c.at,
        &format!(
            "ended {} {} -> {}{}",
            c.target,
            c.local,
            c.remote,
            cause_suffix(v)
        ),
    )
}

/// The health columns' titles, and one session's cells: smoothed RTT, time since data was
/// received (`STALE` after it when the session is stale), retransmitted segments, send queue
/// bytes; `-` where not measured.
pub const HEALTH_TITLES: [&str; 4] = ["RTT", "SILENCE", "RETRANS", "SEND-Q"];

pub fn health_cells(h: Option<&(crate::source::TcpHealth, Option<bool>)>) -> [String; 4] {
    let Some((h, stale)) = h else {
        return ["-".into(), "-".into(), "-".into(), "-".into()];
    };
    let rtt = match h.rtt() {
        Some(d) if d < Duration::from_millis(1) => format!("{}us", d.as_micros()),
        Some(d) => format!("{:.1}ms", d.as_secs_f64() * 1e3),
        None => "-".into(),
    };
    let silence = format!(
        "{:.1}s{}",
        h.receive_silence().as_secs_f64(),
        if *stale == Some(true) { " STALE" } else { "" }
    );
    [
        rtt,
        silence,
        h.retransmits.to_string(),
        h.send_queue.to_string(),
    ]
}

impl ConnRow {
    /// A tracked session as of `now` (a session without a known life shows age zero).
    pub fn of(s: &Session, now: Timestamp) -> ConnRow {
        let (at, preexisting) = match s.life {
            Some(l) => (l.ended.map_or(l.since.wall, |e| e.at.wall), l.preexisting),
            None => (now.wall, false),
        };
        ConnRow {
            target: s.target.to_string(),
            local: s.local,
            remote: s.remote,
            duration: s.duration(now).unwrap_or_default(),
            at,
            preexisting,
            health: s.health,
            process: s.process.clone(),
            closed_by: s.closed_by,
            end: s.end.clone(),
        }
    }
}

/// The monitor's state at one moment, as the view shows it.
#[derive(Debug, Clone)]
pub struct Frame {
    pub now: SystemTime,
    pub host: String,
    pub source: &'static str,
    pub interval: Duration,
    /// Since the sidecar started.
    pub up: Duration,
    pub polls: u64,
    /// Set while polls fail: how many in a row, and the last error.
    pub failing: Option<(u64, String)>,
    pub targets: Vec<TargetRow>,
    /// Highest number active at once over all targets.
    pub peak: u64,
    /// By target (configuration order), then local address.
    pub active: Vec<ConnRow>,
    /// The most recently closed, newest first.
    pub closed: Vec<ConnRow>,
    /// The FIX layer's state, for its panel (set by the console; `None`: no panel).
    pub fix: Option<std::sync::Arc<crate::fix::monitor::FixState>>,
}

impl Frame {
    pub fn capture(m: &State, now: Timestamp) -> Frame {
        let targets = &m.meta.targets;
        let active = m.active.iter().map(|s| ConnRow::of(s, now)).collect();
        let closed = m.closed.iter().rev().map(|s| ConnRow::of(s, now)).collect();
        Frame {
            now: now.wall,
            host: m.meta.host.clone(),
            source: m.meta.source.as_str(),
            interval: m.meta.interval,
            up: now.mono.saturating_duration_since(m.meta.started.mono),
            polls: m.health.polls,
            failing: (m.health.consecutive_failures > 0).then(|| {
                (
                    m.health.consecutive_failures,
                    m.health.last_error.clone().unwrap_or_default(),
                )
            }),
            targets: targets
                .iter()
                .zip(&m.stats)
                .zip(&m.ends)
                .map(|((t, s), e)| TargetRow::new(t, *s, e.clone()))
                .collect(),
            peak: m.peak,
            active,
            closed,
            fix: None,
        }
    }

    /// Counts over all targets.
    pub fn totals(&self) -> TargetStats {
        let mut t = TargetStats {
            peak: self.peak,
            ..TargetStats::default()
        };
        for r in &self.targets {
            t.active += r.stats.active;
            t.opened += r.stats.opened;
            t.closed += r.stats.closed;
        }
        t
    }
}

/// A wall-clock time as people read it on this host: local `HH:MM:SS`.
pub fn clock(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Local>::from(t)
        .format("%H:%M:%S")
        .to_string()
}

/// Local `YYYY-mm-dd HH:MM:SS`.
pub fn date_time(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Local>::from(t)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// A line of the event log: `[HH:MM:SS] text`.
pub fn stamped(at: SystemTime, text: &str) -> String {
    format!("[{}] {text}", clock(at))
}

/// The log line for an event: `[12:00:01] opened venue-a 10.0.0.1:5001 -> 10.0.0.5:9876`,
/// `[12:00:09] closed venue-a 10.0.0.1:5001 -> 10.0.0.5:9876 after 00:00:08`, and after that
/// [`cause_suffix`] when `end`, the close's verdict, is already known.
pub fn event_line(e: &Event, targets: &Targets, end: Option<&Verdict>) -> String {
    match e {
        Event::Opened(c) => stamped(
            c.since.wall,
            &format!(
                "opened {} {} -> {}",
                targets.get(c.target).name,
                c.key.local,
                c.key.remote
            ),
        ),
        Event::ShortLived { conn, at, .. } => stamped(
            at.wall,
            &format!(
                "opened and closed between two polls {} {} -> {}",
                targets.get(conn.target).name,
                conn.key.local,
                conn.key.remote
            ),
        ),
        Event::Closed {
            conn, at, duration, ..
        } => stamped(
            at.wall,
            &format!(
                "closed {} {} -> {} after {}{}{}",
                targets.get(conn.target).name,
                conn.key.local,
                conn.key.remote,
                if conn.preexisting { "at least " } else { "" },
                hms(*duration),
                end.map(cause_suffix).unwrap_or_default()
            ),
        ),
    }
}

/// The lines announcing the connections that were open before watching began (the first
/// poll's): one line, and with `list`, one more per connection.
pub fn preexisting_lines(frame: &Frame, list: bool) -> Vec<String> {
    let already: Vec<&ConnRow> = frame.active.iter().filter(|c| c.preexisting).collect();
    let mut out = vec![stamped(
        frame.now,
        &match already.len() {
            0 => "no matching connection was open when watching began".to_owned(),
            1 => "1 connection was already open when watching began".to_owned(),
            n => format!("{n} connections were already open when watching began"),
        },
    )];
    if list {
        out.extend(already.iter().map(|c| {
            stamped(
                frame.now,
                &format!("already open {} {} -> {}", c.target, c.local, c.remote),
            )
        }));
    }
    out
}

/// The first line of the non-interactive output: what is watched, how, and how to stop.
pub fn start_line(frame: &Frame, header: &Header) -> String {
    let targets: Vec<String> = frame
        .targets
        .iter()
        .map(|t| format!("{} ({})", t.name, t.address))
        .collect();
    format!(
        "fix-monitor {}: host {}, source {}, every {}, targets {}; {}",
        header.title,
        frame.host,
        frame.source,
        humantime::format_duration(frame.interval),
        targets.join(", "),
        header.footer
    )
}

/// The periodic line of the non-interactive output:
/// `[12:00:05] summary venue-a active=3 opened=5 closed=2 peak=4; venue-b active=0 ...`.
pub fn summary_line(frame: &Frame) -> String {
    let mut s = String::from("summary ");
    for (i, t) in frame.targets.iter().enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        s.push_str(&format!(
            "{} active={} opened={} closed={} peak={}",
            t.name, t.stats.active, t.stats.opened, t.stats.closed, t.stats.peak
        ));
    }
    if let Some((n, e)) = &frame.failing {
        s.push_str(&format!("; POLLS FAILING ({n} in a row): {e}"));
    }
    stamped(frame.now, &s)
}

/// The counts per target at the end, and the totals the original printed (总连接数, 峰值连接).
pub fn totals_lines(frame: &Frame) -> Vec<String> {
    let mut rows = vec![cells([
        "TARGET", "ADDRESS", "OPENED", "CLOSED", "ACTIVE", "PEAK",
    ])];
    for t in &frame.targets {
        rows.push(vec![
            t.name.clone(),
            t.address.clone(),
            t.stats.opened.to_string(),
            t.stats.closed.to_string(),
            t.stats.active.to_string(),
            t.stats.peak.to_string(),
        ]);
    }
    let mut out = table(&rows, &[false, false, true, true, true, true]);
    let total = frame.totals();
    out.push(format!("total connections: {}", total.opened));
    out.push(format!("peak connections: {}", total.peak));
    out.extend(ends_lines(frame));
    out
}

/// The ends judged per target, by cause, most first: `venue-a  5  logout_by_them 3, unknown 2`.
pub fn ends_lines(frame: &Frame) -> Vec<String> {
    let mut rows = vec![cells(["TARGET", "ENDED", "BY CAUSE"])];
    for t in &frame.targets {
        let causes: Vec<String> = t
            .ends
            .by_count()
            .iter()
            .map(|(c, n)| format!("{} {n}", c.as_str()))
            .collect();
        rows.push(vec![
            t.name.clone(),
            t.ends.total().to_string(),
            if causes.is_empty() {
                "-".to_owned()
            } else {
                causes.join(", ")
            },
        ]);
    }
    let mut out = vec![String::new(), "SESSION ENDS BY CAUSE".to_owned()];
    out.extend(table(&rows, &[false, true, false]));
    out
}

/// Lays the frame and the event log out in `width` x `height` characters. Sections shrink to
/// fit, the event log keeping at least a few lines; the newest log lines are the ones shown.
pub fn render(
    frame: &Frame,
    header: &Header,
    log: &VecDeque<String>,
    width: usize,
    height: usize,
) -> Vec<String> {
    let mut out = title_lines(frame, header);
    out.extend(targets_table(frame));
    out.push(String::new());
    out.extend(super::fix_panel::lines(
        frame.fix.as_deref(),
        (height / 4).max(3),
    ));
    let rows = Rows::fit(frame, log.len(), height.saturating_sub(out.len()));
    out.extend(active_section(frame, rows.active));
    out.push(String::new());
    out.extend(closed_section(frame, rows.closed));
    out.push(String::new());
    out.push("EVENTS".to_owned());
    let skip = log.len().saturating_sub(rows.events);
    out.extend(log.iter().skip(skip).cloned());
    fit_screen(out, &header.footer, width, height)
}

/// The title line, the header's notes, and a warning while polls fail.
fn title_lines(frame: &Frame, header: &Header) -> Vec<String> {
    let mut out = vec![format!(
        "fix-monitor {} | host {} | source {} | every {} | {} | up {}",
        header.title,
        frame.host,
        frame.source,
        humantime::format_duration(frame.interval),
        date_time(frame.now),
        hms(frame.up)
    )];
    out.extend(header.notes.iter().cloned());
    if let Some((n, e)) = &frame.failing {
        out.push(format!(
            "POLLS FAILING: {n} in a row (counts are frozen): {e}"
        ));
    }
    out.push(String::new());
    out
}

/// One line per target with its counts.
fn targets_table(frame: &Frame) -> Vec<String> {
    let mut rows = vec![cells([
        "TARGET",
        "ADDRESS",
        "LOCAL PORTS",
        "ACTIVE",
        "OPENED",
        "CLOSED",
        "PEAK",
    ])];
    for t in &frame.targets {
        rows.push(vec![
            t.name.clone(),
            t.address.clone(),
            t.local_ports.clone(),
            t.stats.active.to_string(),
            t.stats.opened.to_string(),
            t.stats.closed.to_string(),
            t.stats.peak.to_string(),
        ]);
    }
    table(&rows, &[false, false, false, true, true, true, true])
}

/// How many rows each of the shrinking sections gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rows {
    active: usize,
    closed: usize,
    events: usize,
}

impl Rows {
    /// Shares `left` lines (what the screen has after the fixed sections above) between the
    /// active and closed tables and the event log of `log_len` lines.
    fn fit(frame: &Frame, log_len: usize, left: usize) -> Rows {
        // The space left, after fixed lines: two section headers with column titles and a
        // blank line each (active, closed), the events title, and the footer.
        let avail = left.saturating_sub(3 + 3 + 1 + 1);
        let events_min = log_len.min((avail / 3).max(3)).min(avail);
        let closed = frame
            .closed
            .len()
            .min(CLOSED_SHOWN)
            .min(avail.saturating_sub(events_min) / 3);
        let active = frame
            .active
            .len()
            .max(1)
            .min(avail.saturating_sub(events_min + closed));
        Rows {
            active,
            closed,
            events: avail.saturating_sub(active + closed),
        }
    }
}

/// The active connections in at most `rows` lines (one of them says how many more there are
/// when not all fit), under their title and column titles.
fn active_section(frame: &Frame, rows: usize) -> Vec<String> {
    let any_preexisting = frame.active.iter().any(|c| c.preexisting);
    let mut out = vec![format!(
        "ACTIVE CONNECTIONS ({}){}",
        frame.active.len(),
        if any_preexisting {
            "   * open before watching began: age is at least this"
        } else {
            ""
        }
    )];
    let mut table_rows = vec![cells([
        "TARGET",
        "LOCAL",
        "REMOTE",
        "AGE",
        "SINCE",
        HEALTH_TITLES[0],
        HEALTH_TITLES[1],
        HEALTH_TITLES[2],
        HEALTH_TITLES[3],
        PROCESS_TITLES[0],
        PROCESS_TITLES[1],
    ])];
    let shown = if frame.active.len() > rows {
        rows.saturating_sub(1)
    } else {
        rows
    };
    for c in frame.active.iter().take(shown) {
        let mut row = conn_cells(c);
        row.extend(health_cells(c.health.as_ref()));
        row.extend(process_cells(c.process.as_ref()));
        table_rows.push(row);
    }
    out.extend(table(
        &table_rows,
        &[
            false, false, false, true, false, true, true, true, true, true, false,
        ],
    ));
    if frame.active.is_empty() && rows > 0 {
        out.push("(none)".to_owned());
    } else if frame.active.len() > shown && rows > 0 {
        out.push(format!("... and {} more", frame.active.len() - shown));
    }
    out
}

/// The most recently closed connections, at most `rows`, under their title and column titles.
fn closed_section(frame: &Frame, rows: usize) -> Vec<String> {
    let total_closed: u64 = frame.targets.iter().map(|t| t.stats.closed).sum();
    let mut out = vec![format!(
        "RECENTLY CLOSED (last {} of {total_closed})",
        rows.min(frame.closed.len())
    )];
    let mut table_rows = vec![cells([
        "TARGET",
        "LOCAL",
        "REMOTE",
        "LASTED",
        "CLOSED AT",
        "BY",
        "CAUSE",
        PROCESS_TITLES[0],
        PROCESS_TITLES[1],
    ])];
    for c in frame.closed.iter().take(rows) {
        let mut row = conn_cells(c);
        row.push(closed_by_cell(c.closed_by));
        row.push(cause_cell(c.end.as_ref()));
        row.extend(process_cells(c.process.as_ref()));
        table_rows.push(row);
    }
    out.extend(table(
        &table_rows,
        &[false, false, false, true, false, false, false, true, false],
    ));
    out
}

/// Cuts or pads `out` to `height` lines of at most `width` characters, the footer on the last.
fn fit_screen(mut out: Vec<String>, footer: &str, width: usize, height: usize) -> Vec<String> {
    let body = height.saturating_sub(1);
    out.truncate(body);
    while out.len() < body {
        out.push(String::new());
    }
    out.push(footer.to_owned());
    out.truncate(height);
    for l in &mut out {
        truncate(l, width);
    }
    out
}

/// One connection's table cells: target, local, remote, age or lifetime (`*`: a lower bound,
/// open before the monitor started), and the time it opened or closed.
fn conn_cells(c: &ConnRow) -> Vec<String> {
    vec![
        c.target.clone(),
        c.local.to_string(),
        c.remote.to_string(),
        format!(
            "{}{}",
            hms(c.duration),
            if c.preexisting { "*" } else { "" }
        ),
        clock(c.at),
    ]
}

fn cells<const N: usize>(titles: [&str; N]) -> Vec<String> {
    titles.iter().map(|s| (*s).to_owned()).collect()
}

/// Aligns `rows` in columns two spaces apart, numbers (`right`) to the right. The last column
/// is not padded.
pub fn table(rows: &[Vec<String>], right: &[bool]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i].saturating_sub(c.chars().count());
                let last = i + 1 == r.len();
                if right.get(i).copied().unwrap_or(false) {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    if !last {
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            line
        })
        .collect()
}

/// Cuts `s` to at most `width` characters.
fn truncate(s: &mut String, width: usize) {
    if let Some((i, _)) = s.char_indices().nth(width) {
        s.truncate(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceKind;

    #[test]
    fn health_cells_show_rtt_silence_retransmits_and_send_queue_and_mark_stale() {
        let h = crate::source::TcpHealth {
            rtt_us: 52,
            last_data_recv_ms: 2500,
            retransmits: 3,
            send_queue: 4096,
            ..Default::default()
        };
        assert_eq!(
            health_cells(Some(&(h, Some(true)))),
            ["52us", "2.5s STALE", "3", "4096"]
        );
        let slow = crate::source::TcpHealth {
            rtt_us: 12_345,
            ..h
        };
        assert_eq!(
            health_cells(Some(&(slow, Some(false))))[..2],
            ["12.3ms", "2.5s"]
        );
        assert_eq!(health_cells(Some(&(h, None)))[1], "2.5s", "not judged");
        assert_eq!(health_cells(None), ["-", "-", "-", "-"], "not measured");
    }

    fn frame(active: usize, closed: usize) -> Frame {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let row = |i: usize, preexisting| ConnRow {
            target: "venue-a".into(),
            local: SocketAddr::from(([10, 0, 0, 1], 5000 + i as u16)),
            remote: "10.0.0.5:9876".parse().unwrap(),
            duration: Duration::from_secs(3725),
            at: now,
            preexisting,
            health: None,
            process: None,
            closed_by: None,
            end: None,
        };
        Frame {
            now,
            host: "gw-01".into(),
            source: SourceKind::Netlink.as_str(),
            interval: Duration::from_secs(1),
            up: Duration::from_secs(61),
            polls: 61,
            failing: None,
            targets: vec![TargetRow {
                name: "venue-a".into(),
                address: "10.0.0.5:9876".into(),
                local_ports: "5000-6000".into(),
                stats: TargetStats {
                    active: active as u64,
                    opened: (active + closed) as u64,
                    closed: closed as u64,
                    short_lived: 0,
                    peak: 7,
                },
                ends: EndCounts::default(),
            }],
            peak: 7,
            active: (0..active).map(|i| row(i, i == 0)).collect(),
            closed: (0..closed).map(|i| row(100 + i, false)).collect(),
            fix: None,
        }
    }

    fn header() -> Header {
        Header {
            title: "watch".into(),
            notes: vec![],
            footer: "Ctrl+C to stop".into(),
        }
    }

    fn log(n: usize) -> VecDeque<String> {
        (0..n).map(|i| format!("[00:00:00] line {i}")).collect()
    }

    #[test]
    fn a_roomy_screen_shows_everything() {
        let lines = render(&frame(2, 3), &header(), &log(4), 120, 40);
        assert_eq!(lines.len(), 40);
        let text = lines.join("\n");
        assert!(lines[0].starts_with("fix-monitor watch | host gw-01 | source netlink | every 1s"));
        assert!(
            text.contains("venue-a  10.0.0.5:9876  5000-6000         2       5       3     7"),
            "{text}"
        );
        assert!(
            text.contains("10.0.0.1:5000  10.0.0.5:9876  01:02:05*"),
            "{text}"
        );
        assert!(
            text.contains("10.0.0.1:5001  10.0.0.5:9876   01:02:05  "),
            "{text}"
        );
        assert!(text.contains("RECENTLY CLOSED (last 3 of 3)"), "{text}");
        for i in 0..4 {
            assert!(text.contains(&format!("line {i}")), "{text}");
        }
        assert_eq!(lines[39], "Ctrl+C to stop");
    }

    fn verdict(cause: crate::ends::Cause, evidence: &str) -> Verdict {
        Verdict {
            cause,
            evidence: evidence.into(),
        }
    }

    #[test]
    fn process_who_hung_up_and_cause_show_where_known_and_a_dash_elsewhere() {
        use crate::ends::Cause;
        use crate::source::{ClosedBy, Process};
        let mut f = frame(2, 4);
        let gw = Process {
            pid: 4242,
            comm: "fix-gateway".into(),
        };
        f.active[1].process = Some(gw.clone());
        f.closed[0].closed_by = Some(ClosedBy::Remote);
        f.closed[0].process = Some(gw);
        f.closed[0].end = Some(verdict(Cause::LogoutByThem, "Logout from them first"));
        f.closed[1].closed_by = Some(ClosedBy::Unknown);
        f.closed[3].end = Some(verdict(Cause::Unknown, "FIN, side not known"));
        let lines = render(&f, &header(), &log(1), 200, 40);
        let line = |port: &str| {
            lines
                .iter()
                .find(|l| l.contains(&format!("10.0.0.1:{port} ")))
                .unwrap_or_else(|| panic!("no {port} in:\n{}", lines.join("\n")))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        let active_title = lines.iter().find(|l| l.contains("AGE")).unwrap();
        assert!(active_title.ends_with("PID  COMMAND"), "{active_title}");
        assert_eq!(line("5001")[9..], ["4242", "fix-gateway"]);
        assert_eq!(line("5000")[9..], ["-", "-"], "not known: a dash");
        let closed_title = lines.iter().find(|l| l.contains("CLOSED AT")).unwrap();
        assert!(
            closed_title
                .split_whitespace()
                .collect::<Vec<_>>()
                .ends_with(&["AT", "BY", "CAUSE", "PID", "COMMAND"]),
            "{closed_title}"
        );
        assert_eq!(
            line("5100")[5..],
            ["remote", "logout_by_them", "4242", "fix-gateway"]
        );
        // Polling's `unknown` is shown as not known, like an absent value; so is a cause not
        // judged yet.
        assert_eq!(line("5101")[5..], ["-", "-", "-", "-"]);
        assert_eq!(line("5102")[5..], ["-", "-", "-", "-"]);
        // Judged without evidence: said, not hidden behind the dash of "not judged yet".
        assert_eq!(line("5103")[5..], ["-", "unknown", "-", "-"]);
    }

    #[test]
    fn a_small_screen_keeps_the_newest_events_and_says_what_it_left_out() {
        let lines = render(&frame(30, 10), &header(), &log(50), 60, 30);
        assert_eq!(lines.len(), 30);
        assert!(lines.iter().all(|l| l.chars().count() <= 60));
        let text = lines.join("\n");
        assert!(text.contains("line 49"), "newest event shown:\n{text}");
        assert!(!text.contains("line 0\n"), "oldest event dropped:\n{text}");
        assert!(text.contains("... and "), "{text}");
        let events = lines.iter().filter(|l| l.contains("] line ")).count();
        assert!(events >= 3, "{text}");
    }

    #[test]
    fn event_lines_read_like_the_original_monitors() {
        use crate::source::{SocketEntry, TcpState};
        use crate::target::Target;
        use crate::tracker::Tracker;
        let net = "10.0.0.5/32".parse().unwrap();
        let targets = Targets::new(vec![Target {
            name: "venue-a".into(),
            net,
            port: Some(9876),
            local_ports: None,
            heartbeat: None,
            stale_after: None,
        }]);
        let mut t = Tracker::new(targets.clone());
        let t0 = Timestamp::now();
        let s = SocketEntry {
            local: "10.0.0.1:5001".parse().unwrap(),
            remote: "10.0.0.5:9876".parse().unwrap(),
            state: TcpState::Established,
            id: 1,
            health: None,
        };
        let mut ev = Vec::new();
        t.apply(t0, &[], &mut ev);
        t.apply(t0.after(Duration::from_secs(1)), &[s], &mut ev);
        t.apply(t0.after(Duration::from_secs(13)), &[], &mut ev);
        let lines: Vec<String> = ev.iter().map(|e| event_line(e, &targets, None)).collect();
        assert!(lines[0].ends_with("] opened venue-a 10.0.0.1:5001 -> 10.0.0.5:9876"));
        assert!(
            lines[1].ends_with("] closed venue-a 10.0.0.1:5001 -> 10.0.0.5:9876 after 00:00:12")
        );
        assert_eq!(lines[0].as_bytes()[0], b'[');
        assert_eq!(&lines[0][3..4], ":");

        // A close judged by the time its line is written says why; one judged later gets a
        // line of its own.
        let v = verdict(
            crate::ends::Cause::LogoutByThem,
            "Logout from them first \"End of day\"; FIN from them first",
        );
        let with_cause = event_line(&ev[1], &targets, Some(&v));
        assert!(
            with_cause.ends_with(
                "] closed venue-a 10.0.0.1:5001 -> 10.0.0.5:9876 after 00:00:12, cause \
                 logout_by_them (Logout from them first \"End of day\"; FIN from them first)"
            ),
            "{with_cause}"
        );
        assert_eq!(
            event_line(&ev[0], &targets, Some(&v)),
            lines[0],
            "an open has no cause"
        );
        let row = frame(0, 1).closed.remove(0);
        let ended = ended_line(&row, &verdict(crate::ends::Cause::HeartbeatTimeout, ""));
        assert!(
            ended.ends_with(
                "] ended venue-a 10.0.0.1:5100 -> 10.0.0.5:9876, cause heartbeat_timeout"
            ),
            "{ended}"
        );
    }

    #[test]
    fn summary_and_totals() {
        let f = frame(2, 3);
        let s = summary_line(&f);
        assert!(
            s.ends_with("] summary venue-a active=2 opened=5 closed=3 peak=7"),
            "{s}"
        );
        let t = totals_lines(&f);
        assert_eq!(t[0], "TARGET   ADDRESS        OPENED  CLOSED  ACTIVE  PEAK");
        assert_eq!(t[1], "venue-a  10.0.0.5:9876       5       3       2     7");
        assert_eq!(t[2], "total connections: 5");
        assert_eq!(t[3], "peak connections: 7");
        assert_eq!(
            t[4..],
            [
                "",
                "SESSION ENDS BY CAUSE",
                "TARGET   ENDED  BY CAUSE",
                "venue-a      0  -",
            ]
        );
    }

    #[test]
    fn ends_by_cause_most_first() {
        use crate::ends::Cause;
        let mut f = frame(0, 0);
        let ends = &mut f.targets[0].ends;
        for c in [
            Cause::Unknown,
            Cause::LogoutByThem,
            Cause::HeartbeatTimeout,
            Cause::LogoutByThem,
            Cause::Unknown,
            Cause::LogoutByThem,
        ] {
            ends.add(c);
        }
        assert_eq!(
            ends_lines(&f)[2..],
            [
                "TARGET   ENDED  BY CAUSE",
                "venue-a      6  logout_by_them 3, unknown 2, heartbeat_timeout 1",
            ]
        );
    }
}
