//! Session schedules: when a target's FIX sessions are planned to be up, the way FIX engines
//! configure it (QuickFIX's StartTime/EndTime/StartDay/EndDay/TimeZone). Pure: instants in,
//! answers out; the caller passes the time (the loop's `Timestamp::wall`), nothing here reads a
//! clock.
//!
//! A `[[schedules]]` table ([`ScheduleConfig`], as written) becomes a [`Schedule`] through
//! [`Schedule::from_config`], whose problems name the key, the value and what is allowed; the
//! configuration reports them with their origin ([`build`], [`for_targets`]).
//!
//! # Windows
//! - Daily: `start = "07:00"`, `end = "17:30"` (`HH:MM[:SS]`, local time). The window opens at
//!   `start` on each of `days` (default every day) and closes at the next `end`: with
//!   `start > end` (`"22:00"` to `"06:00"`) it runs past midnight, and `days` names the day it
//!   opens.
//! - Weekly: `start = "Sun 17:00"`, `end = "Fri 17:00"`: open from the start's day and time to
//!   the end's next occurrence after it (at most a week later). `days` does not apply.
//! - `start` equal to `end` (a window of zero or of every hour) is an error.
//!
//! # Holidays
//! Local dates (`"2026-12-25"`). A daily window does not open on a holiday (one that opened the
//! evening before still runs to its end). A weekly window is closed for the whole local day of a
//! holiday (00:00 to 24:00), since not opening it would drop a whole week.
//!
//! # Daylight saving time
//! Times are wall-clock times in `timezone`, so a window's length in real time follows the
//! clocks: an overnight window across a change lasts an hour less or more. A local time that
//! does not exist (the clocks jump over it) is read with the offset in force before the jump,
//! which lands as far after the jump as the time was into the gap (London's 01:30 on the
//! spring day is 02:30 BST); a local time that exists twice (the clocks go back) is its
//! earlier occurrence. These are the "compatible" rules of RFC 5545 and java.time, so a window
//! never vanishes and never doubles.
//!
//! Time zones come from `chrono-tz` (the IANA database compiled in): chrono is the project's
//! one date-time crate and chrono-tz is its time-zone companion, so there is no second
//! date-time type to convert; the compiled-in database also behaves the same on every host,
//! where `/usr/share/zoneinfo` may be absent in a container.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{
    DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta, Timelike,
};
use chrono::{LocalResult, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::config::ErrorKind;

/// `schedule_grace` by default: an end in the last five minutes of a window is planned (venues
/// log out a little before the hour, gateways a little after their own timer).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5 * 60);

/// How far ahead a window is looked for (two years of days). A schedule whose window does not
/// open within it (every day a holiday) reports the horizon's end as its next change.
const HORIZON_DAYS: u64 = 2 * 366;

/// How far back a window that covers an instant may have opened: a week, and a day of margin
/// for the time zone.
const LOOKBACK_DAYS: u64 = 8;

/// One `[[schedules]]` table as written (plain strings: [`Schedule::from_config`] checks them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Unique; what `targets[].schedule` names.
    pub name: Option<String>,
    /// An IANA time zone name; default UTC.
    pub timezone: Option<String>,
    /// `HH:MM[:SS]` (daily) or `Ddd HH:MM[:SS]` (weekly).
    pub start: Option<String>,
    pub end: Option<String>,
    /// Daily windows only: the days the window opens; default every day.
    pub days: Option<Vec<String>>,
    /// `YYYY-MM-DD`, local dates.
    pub holidays: Vec<String>,
}

/// A configuration problem of a schedule, or of a target's `schedule` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ErrorKind,
    /// The full key: `schedules[0].timezone`, `targets[2].schedule`.
    pub key: String,
    /// The value as written (TOML-like); `None` when the key is missing.
    pub value: Option<String>,
    pub message: String,
}

/// When one target's sessions are planned to be up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    name: String,
    tz: Tz,
    window: Window,
    holidays: BTreeSet<NaiveDate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// Opens at `start` on each day `days[weekday from Monday]`, closes at the next `end`.
    Daily {
        start: NaiveTime,
        end: NaiveTime,
        days: [bool; 7],
    },
    /// Opens on the start's day and time, closes at the end's next occurrence.
    Weekly {
        start: (Weekday, NaiveTime),
        end: (Weekday, NaiveTime),
    },
}

/// A stretch of time in the window: `[open, close)`.
type Span = (DateTime<Utc>, DateTime<Utc>);

impl Schedule {
    /// 1 inside the window.
    pub fn expected_up(&self, at: SystemTime) -> bool {
        self.current(at).is_some()
    }

    /// An end at `at` is planned: outside the window, or in its last `grace`.
    pub fn planned_end(&self, at: SystemTime, grace: Duration) -> bool {
        match self.current(at) {
            None => true,
            Some(close) => close.duration_since(at).unwrap_or_default() <= grace,
        }
    }

    /// When the current window ends or the next opens (for /health, the console, tests).
    pub fn next_change(&self, at: SystemTime) -> SystemTime {
        let t = DateTime::<Utc>::from(at);
        let mut spans = self.spans_from(t).skip_while(|s| s.1 <= t);
        match spans.next() {
            None => at + Duration::from_secs(HORIZON_DAYS * 86_400),
            Some((open, _)) if open > t => open.into(),
            Some((_, close)) => merged_close(close, spans).into(),
        }
    }

    /// The name `targets[].schedule` gives.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The IANA name of its time zone.
    pub fn timezone(&self) -> &'static str {
        self.tz.name()
    }

    /// The end of the window `at` is in (adjacent spans merged), if it is in one.
    fn current(&self, at: SystemTime) -> Option<SystemTime> {
        let t = DateTime::<Utc>::from(at);
        let mut spans = self.spans_from(t).skip_while(|s| s.1 <= t);
        match spans.next() {
            Some((open, close)) if open <= t => Some(merged_close(close, spans).into()),
            _ => None,
        }
    }

    /// The window's spans, in order, from those that may cover `t` on.
    fn spans_from(&self, t: DateTime<Utc>) -> impl Iterator<Item = Span> + '_ {
        let first = t.with_timezone(&self.tz).date_naive() - chrono::Days::new(LOOKBACK_DAYS);
        (0..LOOKBACK_DAYS + HORIZON_DAYS).flat_map(move |i| {
            let mut spans = Vec::new();
            if let Some(day) = first.checked_add_days(chrono::Days::new(i)) {
                self.opening_on(day, &mut spans);
            }
            spans
        })
    }

    /// The spans of the window that opens on the local date `day`, if one does.
    fn opening_on(&self, day: NaiveDate, out: &mut Vec<Span>) {
        match self.window {
            Window::Daily { start, end, days } => {
                let weekday = day.weekday().num_days_from_monday() as usize;
                if !days[weekday] || self.holidays.contains(&day) {
                    return;
                }
                let close_day = if end > start {
                    Some(day)
                } else {
                    day.succ_opt()
                };
                if let Some(close_day) = close_day {
                    let open = self.instant(day.and_time(start));
                    out.push((open, self.instant(close_day.and_time(end))));
                }
            }
            Window::Weekly {
                start: (start_day, start),
                end: (end_day, end),
            } => {
                if day.weekday() != start_day {
                    return;
                }
                let mut n = end_day.days_since(start_day);
                if n == 0 && end <= start {
                    n = 7;
                }
                let Some(close_day) = day.checked_add_days(chrono::Days::new(n.into())) else {
                    return;
                };
                let span = (
                    self.instant(day.and_time(start)),
                    self.instant(close_day.and_time(end)),
                );
                self.without_holidays(span, (day, close_day), out);
            }
        }
    }

    /// `span` less the holidays among `days` (first and last local date, inclusive).
    fn without_holidays(&self, span: Span, days: (NaiveDate, NaiveDate), out: &mut Vec<Span>) {
        let mut pieces = vec![span];
        for &h in self.holidays.range(days.0..=days.1) {
            let Some(next) = h.succ_opt() else { continue };
            let (from, to) = (
                self.instant(h.and_time(NaiveTime::MIN)),
                self.instant(next.and_time(NaiveTime::MIN)),
            );
            let mut kept = Vec::with_capacity(pieces.len() + 1);
            for (a, b) in pieces {
                if to <= a || from >= b {
                    kept.push((a, b));
                    continue;
                }
                if a < from {
                    kept.push((a, from));
                }
                if to < b {
                    kept.push((to, b));
                }
            }
            pieces = kept;
        }
        out.extend(pieces);
    }

    /// A local wall-clock time as an instant (see the module docs, "Daylight saving time").
    fn instant(&self, local: NaiveDateTime) -> DateTime<Utc> {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
            LocalResult::None => {
                // In a gap: the offset in force before it (gaps are an hour or two; Samoa
                // skipped a whole day in 2011, hence the two days of search).
                let before = (1..=48).find_map(|h| {
                    let earlier = local - TimeDelta::hours(h);
                    self.tz.from_local_datetime(&earlier).earliest()
                });
                let offset = before.map_or(0, |t| t.offset().fix().local_minus_utc());
                Utc.from_utc_datetime(&(local - TimeDelta::seconds(offset.into())))
            }
        }
    }
}

/// `close`, extended over the spans that start at or before it (a weekly window cut by a
/// holiday resumes at midnight; back-to-back windows are one).
fn merged_close(mut close: DateTime<Utc>, spans: impl Iterator<Item = Span>) -> DateTime<Utc> {
    for (open, next_close) in spans {
        if open > close {
            break;
        }
        close = close.max(next_close);
    }
    close
}

// ---- From the configuration. ----

const ALLOWED_TIME: &str = "expected a local time HH:MM or HH:MM:SS (00:00 to 23:59:59), such \
     as \"07:00\" or \"17:30:00\", or for a weekly window a day and a time, such as \
     \"Sun 17:00\"";
const ALLOWED_DAY: &str = "expected a day of the week: Mon, Tue, Wed, Thu, Fri, Sat or Sun (or \
     the full name)";
const ALLOWED_TZ: &str = "expected an IANA time zone name, such as \"Europe/London\", \
     \"America/New_York\", \"Asia/Tokyo\" or \"UTC\"";
const ALLOWED_DATE: &str = "expected a date YYYY-MM-DD, such as \"2026-12-25\"";

/// A window's start or end: a time, with a day for a weekly window.
type Point = (Option<Weekday>, NaiveTime);

impl Schedule {
    /// Checks one `[[schedules]]` table (`index`: its place in the list, for the keys).
    pub fn from_config(c: &ScheduleConfig, index: usize) -> Result<Schedule, Vec<Problem>> {
        let key = |field: &str| format!("schedules[{index}].{field}");
        let mut problems = Vec::new();
        let mut bad = |kind, field: &str, value: Option<String>, message: String| {
            problems.push(Problem {
                kind,
                key: key(field),
                value,
                message,
            })
        };
        let name = c.name.as_deref().map(str::trim).filter(|n| !n.is_empty());
        if name.is_none() {
            let message = "every schedule needs a name (what targets[].schedule gives)";
            bad(
                ErrorKind::MissingValue,
                "name",
                c.name.as_deref().map(quote),
                message.into(),
            );
        }
        let tz = match c.timezone.as_deref() {
            None => Some(Tz::UTC),
            Some(text) => parse_tz(text)
                .map_err(|m| bad(ErrorKind::InvalidValue, "timezone", Some(quote(text)), m))
                .ok(),
        };
        let mut point = |field: &str, text: &Option<String>| match text.as_deref() {
            None => {
                let message = format!("every schedule needs a {field}; {ALLOWED_TIME}");
                bad(ErrorKind::MissingValue, field, None, message);
                None
            }
            Some(t) => parse_point(t)
                .map_err(|m| bad(ErrorKind::InvalidValue, field, Some(quote(t)), m))
                .ok(),
        };
        let (start, end) = (point("start", &c.start), point("end", &c.end));
        let days = c.days.as_ref().map(|d| parse_days(d, &key("days")));
        let holidays = parse_holidays(&c.holidays, &key("holidays"));
        let window = match (start, end) {
            (Some(start), Some(end)) => window(start, end, c, &mut problems, index),
            _ => None,
        };
        for p in [days.clone().and_then(Result::err), holidays.clone().err()] {
            problems.extend(p.into_iter().flatten());
        }
        let window = match (window, days) {
            (Some(Window::Daily { start, end, .. }), Some(Ok(days))) => {
                Some(Window::Daily { start, end, days })
            }
            (w, _) => w,
        };
        match (name, tz, window, holidays) {
            (Some(name), Some(tz), Some(window), Ok(holidays)) if problems.is_empty() => {
                Ok(Schedule {
                    name: name.to_owned(),
                    tz,
                    window,
                    holidays,
                })
            }
            _ => Err(problems),
        }
    }
}

/// The window of a start and an end that both parsed, or its problem.
fn window(
    start: Point,
    end: Point,
    c: &ScheduleConfig,
    problems: &mut Vec<Problem>,
    index: usize,
) -> Option<Window> {
    let key = |field: &str| format!("schedules[{index}].{field}");
    let end_text = quote(c.end.as_deref().unwrap_or_default());
    let mut conflict = |field: &str, value: String, message: String| {
        problems.push(Problem {
            kind: ErrorKind::Conflict,
            key: key(field),
            value: Some(value),
            message,
        });
        None
    };
    if start == end {
        let message = "equals start: a window needs an end different from its start (for a \
                       session that is always up, give the target no schedule)";
        return conflict("end", end_text, message.into());
    }
    match (start, end) {
        ((None, start), (None, end)) => Some(Window::Daily {
            start,
            end,
            days: [true; 7],
        }),
        ((Some(sd), st), (Some(ed), et)) => match &c.days {
            Some(days) => {
                let message = "applies to a daily window only; this one is weekly (its start \
                               and end name days): leave days out";
                conflict("days", format!("{days:?}"), message.into())
            }
            None => Some(Window::Weekly {
                start: (sd, st),
                end: (ed, et),
            }),
        },
        _ => {
            let message = "is a daily time but start is weekly, or the other way round: give \
                           both a day (\"Sun 17:00\", \"Fri 17:00\", a weekly window) or neither \
                           (\"07:00\", \"17:30\", a daily window)";
            conflict("end", end_text, message.into())
        }
    }
}

fn quote(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serializes")
}

fn parse_tz(text: &str) -> Result<Tz, String> {
    if let Ok(tz) = Tz::from_str(text.trim()) {
        return Ok(tz);
    }
    let like = chrono_tz::TZ_VARIANTS
        .iter()
        .find(|tz| tz.name().eq_ignore_ascii_case(text.trim()));
    Err(match like {
        Some(tz) => format!(
            "unknown time zone (names are case-sensitive: did you mean \"{}\"?); {ALLOWED_TZ}",
            tz.name()
        ),
        None => format!("unknown time zone; {ALLOWED_TZ}"),
    })
}

fn parse_day(text: &str) -> Result<Weekday, String> {
    Weekday::from_str(text.trim()).map_err(|_| ALLOWED_DAY.to_owned())
}

fn parse_point(text: &str) -> Result<Point, String> {
    let text = text.trim();
    let (day, time) = match text.split_once(char::is_whitespace) {
        Some((day, time)) => {
            let day = parse_day(day).map_err(|e| format!("does not start with a day: {e}"))?;
            (Some(day), time.trim())
        }
        None => (None, text),
    };
    let time = NaiveTime::parse_from_str(time, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(time, "%H:%M"))
        .ok()
        // A leap second (":60") is kept in the nanoseconds; no schedule means it.
        .filter(|t| t.nanosecond() == 0)
        .ok_or_else(|| ALLOWED_TIME.to_owned())?;
    Ok((day, time))
}

fn parse_days(days: &[String], key: &str) -> Result<[bool; 7], Vec<Problem>> {
    let mut set = [false; 7];
    let mut problems = Vec::new();
    for (i, d) in days.iter().enumerate() {
        match parse_day(d) {
            Ok(day) => set[day.num_days_from_monday() as usize] = true,
            Err(message) => problems.push(Problem {
                kind: ErrorKind::InvalidValue,
                key: format!("{key}[{i}]"),
                value: Some(quote(d)),
                message,
            }),
        }
    }
    if days.is_empty() {
        problems.push(Problem {
            kind: ErrorKind::InvalidValue,
            key: key.to_owned(),
            value: Some("[]".into()),
            message: format!(
                "names no day, so the window would never open; leave days out for every day, \
                 or {ALLOWED_DAY}"
            ),
        });
    }
    problems.is_empty().then_some(set).ok_or(problems)
}

fn parse_holidays(dates: &[String], key: &str) -> Result<BTreeSet<NaiveDate>, Vec<Problem>> {
    let mut set = BTreeSet::new();
    let mut problems = Vec::new();
    for (i, d) in dates.iter().enumerate() {
        match NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d") {
            Ok(date) => {
                set.insert(date);
            }
            Err(_) => problems.push(Problem {
                kind: ErrorKind::InvalidValue,
                key: format!("{key}[{i}]"),
                value: Some(quote(d)),
                message: ALLOWED_DATE.to_owned(),
            }),
        }
    }
    problems.is_empty().then_some(set).ok_or(problems)
}

/// The schedules by name: each checked, names unique. A schedule whose table already failed to
/// deserialize (`failed(index)`) keeps its name (so that targets naming it are not told it is
/// unknown) but has no schedule and no further problems.
pub fn build(
    configs: &[ScheduleConfig],
    failed: impl Fn(usize) -> bool,
) -> (BTreeMap<String, Option<Arc<Schedule>>>, Vec<Problem>) {
    let mut by_name: BTreeMap<String, Option<Arc<Schedule>>> = BTreeMap::new();
    let mut first: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let name = c.name.as_deref().map(str::trim).unwrap_or_default();
        if let Some(&j) = first.get(name).filter(|_| !name.is_empty()) {
            problems.push(Problem {
                kind: ErrorKind::DuplicateName,
                key: format!("schedules[{i}].name"),
                value: Some(quote(name)),
                message: format!(
                    "this name is already used by schedules[{j}]; schedule names must be unique"
                ),
            });
            continue;
        }
        first.insert(name.to_owned(), i);
        let schedule = match failed(i) {
            true => None,
            false => Schedule::from_config(c, i)
                .map_err(|p| problems.extend(p))
                .ok(),
        };
        if !name.is_empty() {
            by_name.insert(name.to_owned(), schedule.map(Arc::new));
        }
    }
    (by_name, problems)
}

/// Each target's schedule: `names` holds, by target id, the target's index in the
/// configuration and the `schedule` it gives.
pub fn for_targets(
    names: &[(usize, Option<String>)],
    schedules: &BTreeMap<String, Option<Arc<Schedule>>>,
) -> (Vec<Option<Arc<Schedule>>>, Vec<Problem>) {
    let mut problems = Vec::new();
    let resolved = names
        .iter()
        .map(|(i, name)| {
            let name = name.as_deref()?;
            match schedules.get(name.trim()) {
                Some(s) => s.clone(),
                None => {
                    let known: Vec<&str> = schedules.keys().map(String::as_str).collect();
                    let known = match known.is_empty() {
                        true => "no [[schedules]] are configured".to_owned(),
                        false => format!("the schedules are: {}", known.join(", ")),
                    };
                    problems.push(Problem {
                        kind: ErrorKind::InvalidValue,
                        key: format!("targets[{i}].schedule"),
                        value: Some(quote(name)),
                        message: format!(
                            "no schedule has this name; {known} (leave schedule out for a \
                             target that is always expected up)"
                        ),
                    });
                    None
                }
            }
        })
        .collect();
    (resolved, problems)
}

#[cfg(test)]
mod tests;
