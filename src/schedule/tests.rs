//! Schedules at fixed instants (no clock): daily, overnight and weekly windows, the days of 23
//! and 25 hours in London and New York, local times that do not exist or exist twice,
//! holidays, the grace, and the configuration's problems.

use super::*;

/// An RFC 3339 instant.
fn at(text: &str) -> SystemTime {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .into()
}

/// The instant as RFC 3339 UTC, for readable failures.
fn show(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339()
}

fn schedule(
    tz: &str,
    start: &str,
    end: &str,
    days: Option<&[&str]>,
    holidays: &[&str],
) -> Schedule {
    let c = ScheduleConfig {
        name: Some("s".into()),
        timezone: Some(tz.into()),
        start: Some(start.into()),
        end: Some(end.into()),
        days: days.map(|d| d.iter().map(|d| d.to_string()).collect()),
        holidays: holidays.iter().map(|d| d.to_string()).collect(),
    };
    Schedule::from_config(&c, 0).unwrap_or_else(|p| panic!("{p:?}"))
}

const WEEKDAYS: &[&str] = &["Mon", "Tue", "Wed", "Thu", "Fri"];

/// Up or down at each instant, and the next change from it.
fn check(s: &Schedule, cases: &[(&str, bool, &str)]) {
    for &(when, up, next) in cases {
        assert_eq!(s.expected_up(at(when)), up, "expected_up at {when}");
        assert_eq!(
            show(s.next_change(at(when))),
            show(at(next)),
            "next_change at {when}"
        );
    }
}

#[test]
fn daily_window_on_weekdays_in_london_summer() {
    let s = schedule("Europe/London", "07:00", "17:30:00", Some(WEEKDAYS), &[]);
    check(
        &s,
        &[
            // Wednesday 10 June 2026, BST (UTC+1).
            ("2026-06-10T05:59:59Z", false, "2026-06-10T06:00:00Z"),
            ("2026-06-10T06:00:00Z", true, "2026-06-10T16:30:00Z"),
            ("2026-06-10T12:00:00+01:00", true, "2026-06-10T16:30:00Z"),
            ("2026-06-10T16:29:59Z", true, "2026-06-10T16:30:00Z"),
            // The end is outside: [start, end).
            ("2026-06-10T16:30:00Z", false, "2026-06-11T06:00:00Z"),
            // Friday evening and the weekend: next is Monday 07:00.
            ("2026-06-12T20:00:00Z", false, "2026-06-15T06:00:00Z"),
            ("2026-06-13T12:00:00Z", false, "2026-06-15T06:00:00Z"),
        ],
    );
}

#[test]
fn daily_window_in_london_winter_is_utc() {
    let s = schedule("Europe/London", "07:00", "17:30", Some(WEEKDAYS), &[]);
    check(
        &s,
        &[
            ("2026-01-14T06:59:00Z", false, "2026-01-14T07:00:00Z"),
            ("2026-01-14T07:00:00Z", true, "2026-01-14T17:30:00Z"),
        ],
    );
}

#[test]
fn overnight_window_opens_on_the_named_days() {
    // 22:00 to 06:00, opening Sunday to Thursday night (UTC): Friday and Saturday nights off.
    let days = ["Sun", "Mon", "Tue", "Wed", "Thu"];
    let s = schedule("UTC", "22:00", "06:00", Some(&days), &[]);
    check(
        &s,
        &[
            // Monday 03:00: the window Sunday opened.
            ("2026-06-08T03:00:00Z", true, "2026-06-08T06:00:00Z"),
            ("2026-06-08T06:00:00Z", false, "2026-06-08T22:00:00Z"),
            // Thursday night runs into Friday morning.
            ("2026-06-11T23:00:00Z", true, "2026-06-12T06:00:00Z"),
            // Friday night: no window; the next is Sunday's.
            ("2026-06-12T23:00:00Z", false, "2026-06-14T22:00:00Z"),
            ("2026-06-13T03:00:00Z", false, "2026-06-14T22:00:00Z"),
        ],
    );
}

#[test]
fn weekly_window_across_the_weekend_in_new_york() {
    // FX: Sunday 17:00 to Friday 17:00 New York (EDT, UTC-4, in June).
    let s = schedule("America/New_York", "Sun 17:00", "Fri 17:00", None, &[]);
    check(
        &s,
        &[
            ("2026-06-13T12:00:00-04:00", false, "2026-06-14T21:00:00Z"),
            ("2026-06-14T16:59:59-04:00", false, "2026-06-14T21:00:00Z"),
            ("2026-06-14T17:00:00-04:00", true, "2026-06-19T21:00:00Z"),
            ("2026-06-17T03:00:00-04:00", true, "2026-06-19T21:00:00Z"),
            ("2026-06-19T16:59:59-04:00", true, "2026-06-19T21:00:00Z"),
            ("2026-06-19T17:00:00-04:00", false, "2026-06-21T21:00:00Z"),
        ],
    );
}

#[test]
fn weekly_window_within_one_day_and_one_of_almost_a_week() {
    let s = schedule("UTC", "Mon 08:00", "Mon 17:00", None, &[]);
    // Monday 8 June 2026.
    check(
        &s,
        &[
            ("2026-06-08T12:00:00Z", true, "2026-06-08T17:00:00Z"),
            ("2026-06-09T12:00:00Z", false, "2026-06-15T08:00:00Z"),
        ],
    );
    let s = schedule("UTC", "Mon 08:00", "Mon 07:00", None, &[]);
    check(
        &s,
        &[
            ("2026-06-12T12:00:00Z", true, "2026-06-15T07:00:00Z"),
            ("2026-06-15T07:30:00Z", false, "2026-06-15T08:00:00Z"),
        ],
    );
}

#[test]
fn overnight_window_across_london_clock_changes_lasts_7_and_9_hours() {
    let s = schedule("Europe/London", "22:00", "06:00", None, &[]);
    // Spring: Sunday 29 March 2026 is 23 hours long (01:00 GMT -> 02:00 BST).
    check(
        &s,
        &[
            ("2026-03-28T22:00:00Z", true, "2026-03-29T05:00:00Z"),
            ("2026-03-29T05:00:00Z", false, "2026-03-29T21:00:00Z"),
        ],
    );
    // Autumn: Sunday 25 October 2026 is 25 hours long (02:00 BST -> 01:00 GMT).
    check(
        &s,
        &[
            ("2026-10-24T21:00:00Z", true, "2026-10-25T06:00:00Z"),
            ("2026-10-24T20:59:59Z", false, "2026-10-24T21:00:00Z"),
        ],
    );
}

#[test]
fn overnight_window_across_new_york_clock_changes() {
    let s = schedule("America/New_York", "20:00", "04:00", None, &[]);
    // Spring: Sunday 8 March 2026, 02:00 EST -> 03:00 EDT: 20:00 EST (01:00Z) to 04:00 EDT
    // (08:00Z), 7 hours.
    check(
        &s,
        &[("2026-03-08T01:00:00Z", true, "2026-03-08T08:00:00Z")],
    );
    // Autumn: Sunday 1 November 2026, 02:00 EDT -> 01:00 EST: 20:00 EDT (00:00Z) to 04:00 EST
    // (09:00Z), 9 hours.
    check(
        &s,
        &[("2026-11-01T00:00:00Z", true, "2026-11-01T09:00:00Z")],
    );
    // A day window on the 23-hour and the 25-hour day keeps its wall-clock times.
    let s = schedule("America/New_York", "09:30", "16:00", None, &[]);
    check(
        &s,
        &[
            ("2026-03-08T12:00:00Z", false, "2026-03-08T13:30:00Z"),
            ("2026-11-01T12:00:00Z", false, "2026-11-01T14:30:00Z"),
        ],
    );
}

#[test]
fn a_local_time_in_the_spring_gap_is_read_after_the_jump() {
    // 01:30 does not exist in London on 29 March 2026: read with GMT, it is 01:30Z (02:30 BST).
    let s = schedule("Europe/London", "01:30", "03:00", None, &[]);
    check(
        &s,
        &[
            ("2026-03-29T00:00:00Z", false, "2026-03-29T01:30:00Z"),
            ("2026-03-29T01:30:00Z", true, "2026-03-29T02:00:00Z"),
        ],
    );
    // As an end: the window 00:30 to 01:30 ends at 01:30Z, an hour of real time.
    let s = schedule("Europe/London", "00:30", "01:30", None, &[]);
    check(
        &s,
        &[("2026-03-29T00:30:00Z", true, "2026-03-29T01:30:00Z")],
    );
}

#[test]
fn a_local_time_that_exists_twice_is_its_first_occurrence() {
    // 01:30 happens twice in London on 25 October 2026: 00:30Z (BST) and 01:30Z (GMT).
    let s = schedule("Europe/London", "01:30", "05:00", None, &[]);
    check(
        &s,
        &[("2026-10-25T00:00:00Z", false, "2026-10-25T00:30:00Z")],
    );
    let s = schedule("Europe/London", "00:00", "01:30", None, &[]);
    check(
        &s,
        &[("2026-10-25T00:00:00Z", true, "2026-10-25T00:30:00Z")],
    );
}

#[test]
fn a_daily_window_does_not_open_on_a_holiday() {
    let s = schedule(
        "Europe/London",
        "07:00",
        "17:30",
        Some(WEEKDAYS),
        &["2026-12-25", "2026-12-28"],
    );
    check(
        &s,
        &[
            // Christmas (Friday) and the Monday after: next is Tuesday 29th.
            ("2026-12-24T18:00:00Z", false, "2026-12-29T07:00:00Z"),
            ("2026-12-25T12:00:00Z", false, "2026-12-29T07:00:00Z"),
            ("2026-12-24T12:00:00Z", true, "2026-12-24T17:30:00Z"),
        ],
    );
    // An overnight window that opened the evening before runs to its end.
    let s = schedule("UTC", "22:00", "06:00", None, &["2026-12-25"]);
    check(
        &s,
        &[
            ("2026-12-25T03:00:00Z", true, "2026-12-25T06:00:00Z"),
            ("2026-12-25T23:00:00Z", false, "2026-12-26T22:00:00Z"),
        ],
    );
}

#[test]
fn a_weekly_window_is_closed_for_the_whole_day_of_a_holiday() {
    let s = schedule(
        "America/New_York",
        "Sun 17:00",
        "Fri 17:00",
        None,
        &["2026-12-23", "2026-12-25"],
    );
    check(
        &s,
        &[
            // Tuesday 22nd (EST, UTC-5): up until Wednesday 00:00.
            ("2026-12-22T12:00:00-05:00", true, "2026-12-23T05:00:00Z"),
            ("2026-12-23T12:00:00-05:00", false, "2026-12-24T05:00:00Z"),
            // Thursday: up again, until Christmas Day begins.
            ("2026-12-24T12:00:00-05:00", true, "2026-12-25T05:00:00Z"),
            ("2026-12-25T12:00:00-05:00", false, "2026-12-27T22:00:00Z"),
        ],
    );
    // A holiday on a Sunday: the week opens Monday 00:00.
    let s = schedule("UTC", "Sun 17:00", "Fri 17:00", None, &["2026-12-27"]);
    check(
        &s,
        &[("2026-12-26T12:00:00Z", false, "2026-12-28T00:00:00Z")],
    );
}

#[test]
fn planned_end_is_outside_or_in_the_last_grace() {
    let s = schedule("UTC", "07:00", "17:30", None, &[]);
    let grace = Duration::from_secs(300);
    assert!(!s.planned_end(at("2026-06-10T12:00:00Z"), grace));
    assert!(!s.planned_end(at("2026-06-10T17:24:59Z"), grace));
    assert!(s.planned_end(at("2026-06-10T17:25:00Z"), grace));
    assert!(s.planned_end(at("2026-06-10T17:29:59Z"), grace));
    assert!(s.planned_end(at("2026-06-10T17:30:00Z"), grace));
    assert!(s.planned_end(at("2026-06-10T23:00:00Z"), grace));
    assert!(s.planned_end(at("2026-06-11T06:59:00Z"), Duration::ZERO));
    assert!(!s.planned_end(at("2026-06-11T07:00:00Z"), Duration::ZERO));
}

#[test]
fn back_to_back_windows_are_one() {
    // Every day 00:00 to 23:59:59 leaves one second a day; a weekly window cut by a holiday
    // resumes at midnight: neither reports a change that is not one.
    let s = schedule("UTC", "00:00", "23:59:59", None, &[]);
    check(
        &s,
        &[
            ("2026-06-10T23:59:59Z", false, "2026-06-11T00:00:00Z"),
            ("2026-06-10T12:00:00Z", true, "2026-06-10T23:59:59Z"),
        ],
    );
}

#[test]
fn a_schedule_that_never_opens_reports_the_horizon() {
    let s = schedule("UTC", "07:00", "17:00", Some(&["Mon"]), &[]);
    let mut s = s;
    // Every Monday for the next three years a holiday.
    let mut day = NaiveDate::from_ymd_opt(2026, 6, 8).unwrap();
    for _ in 0..160 {
        s.holidays.insert(day);
        day = day + chrono::Days::new(7);
    }
    let now = at("2026-06-10T12:00:00Z");
    assert!(!s.expected_up(now));
    let horizon = Duration::from_secs(HORIZON_DAYS * 86_400);
    assert_eq!(s.next_change(now), now + horizon);
}

// ---- The configuration's problems. ----

fn config(tz: Option<&str>, start: Option<&str>, end: Option<&str>) -> ScheduleConfig {
    ScheduleConfig {
        name: Some("ldn".into()),
        timezone: tz.map(Into::into),
        start: start.map(Into::into),
        end: end.map(Into::into),
        ..ScheduleConfig::default()
    }
}

fn problems(c: &ScheduleConfig) -> Vec<Problem> {
    Schedule::from_config(c, 3).expect_err("a problem")
}

fn one(c: &ScheduleConfig) -> Problem {
    let p = problems(c);
    assert_eq!(p.len(), 1, "{p:#?}");
    p.into_iter().next().unwrap()
}

#[test]
fn timezone_defaults_to_utc_and_an_unknown_one_is_named() {
    let s = Schedule::from_config(&config(None, Some("07:00"), Some("08:00")), 0).unwrap();
    assert_eq!(s.timezone(), "UTC");
    assert_eq!(s.name(), "ldn");
    let p = one(&config(Some("Europe/Londn"), Some("07:00"), Some("08:00")));
    assert_eq!(p.key, "schedules[3].timezone");
    assert_eq!(p.value.as_deref(), Some("\"Europe/Londn\""));
    assert!(p.message.contains("IANA"), "{}", p.message);
    let p = one(&config(Some("europe/london"), Some("07:00"), Some("08:00")));
    assert!(p.message.contains("\"Europe/London\"?"), "{}", p.message);
}

#[test]
fn bad_times_days_and_dates_each_name_their_key() {
    let p = one(&config(None, Some("7am"), Some("08:00")));
    assert_eq!(
        (p.key.as_str(), p.kind),
        ("schedules[3].start", ErrorKind::InvalidValue)
    );
    assert!(p.message.contains("HH:MM"), "{}", p.message);
    let p = one(&config(None, Some("07:00"), Some("24:00")));
    assert_eq!(p.key, "schedules[3].end");
    let p = one(&config(None, Some("Sonday 17:00"), Some("Fri 17:00")));
    assert!(p.message.contains("Mon, Tue"), "{}", p.message);
    let c = ScheduleConfig {
        days: Some(vec!["Mon".into(), "Funday".into()]),
        holidays: vec!["2026-12-25".into(), "25/12/2026".into()],
        ..config(None, Some("07:00"), Some("08:00"))
    };
    let keys: Vec<String> = problems(&c).into_iter().map(|p| p.key).collect();
    assert_eq!(keys, ["schedules[3].days[1]", "schedules[3].holidays[1]"]);
    let c = ScheduleConfig {
        days: Some(vec![]),
        ..config(None, Some("07:00"), Some("08:00"))
    };
    assert!(one(&c).message.contains("never open"));
}

#[test]
fn end_equal_to_start_and_mixed_kinds_conflict() {
    let p = one(&config(None, Some("07:00"), Some("07:00:00")));
    assert_eq!(
        (p.key.as_str(), p.kind),
        ("schedules[3].end", ErrorKind::Conflict)
    );
    assert!(
        p.message.contains("different from its start"),
        "{}",
        p.message
    );
    let p = one(&config(None, Some("Sun 17:00"), Some("sunday 17:00")));
    assert_eq!(p.kind, ErrorKind::Conflict);
    let p = one(&config(None, Some("Sun 17:00"), Some("17:00")));
    assert!(p.message.contains("weekly"), "{}", p.message);
    let c = ScheduleConfig {
        days: Some(vec!["Mon".into()]),
        ..config(None, Some("Sun 17:00"), Some("Fri 17:00"))
    };
    assert_eq!(one(&c).key, "schedules[3].days");
}

#[test]
fn every_problem_of_a_table_at_once() {
    let c = ScheduleConfig {
        name: None,
        timezone: Some("Mars/Olympus".into()),
        start: None,
        end: Some("25:00".into()),
        ..ScheduleConfig::default()
    };
    let mut keys: Vec<(String, ErrorKind)> =
        problems(&c).into_iter().map(|p| (p.key, p.kind)).collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        keys,
        [
            ("schedules[3].end".to_owned(), ErrorKind::InvalidValue),
            ("schedules[3].name".to_owned(), ErrorKind::MissingValue),
            ("schedules[3].start".to_owned(), ErrorKind::MissingValue),
            ("schedules[3].timezone".to_owned(), ErrorKind::InvalidValue),
        ]
    );
}

#[test]
fn duplicate_names_and_unknown_schedules_of_targets() {
    let a = config(None, Some("07:00"), Some("08:00"));
    let (by_name, problems) = build(&[a.clone(), a.clone()], |_| false);
    assert_eq!(by_name.len(), 1);
    assert_eq!(problems.len(), 1);
    assert_eq!(
        (problems[0].key.as_str(), problems[0].kind),
        ("schedules[1].name", ErrorKind::DuplicateName)
    );
    // A table that failed to deserialize keeps its name: no second error for its targets.
    let (by_name, problems) = build(&[a], |_| true);
    assert!(problems.is_empty());
    let names = [
        (0, Some("ldn".to_owned())),
        (2, None),
        (5, Some("nyc".to_owned())),
    ];
    let (resolved, problems) = for_targets(&names, &by_name);
    assert_eq!(resolved, [None, None, None]);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "targets[5].schedule");
    assert!(
        problems[0].message.contains("the schedules are: ldn"),
        "{}",
        problems[0].message
    );
}
