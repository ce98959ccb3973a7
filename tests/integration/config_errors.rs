//! Bad configuration: a clear error naming key, value, source and what is allowed, exit 64,
//! and nothing started.

use std::process::Output;

use crate::harness::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = command();
    c.arg("run").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running fix-monitor")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_file_values_are_all_reported_with_key_value_file_and_what_is_allowed() {
    let f = config_file(
        r#"
[[targets]]
address = "10.0.0.300"
local_ports = [6000, 5000]

[poll]
interval = "0s"
colour = "blue"
"#,
    );
    let path = f.path().to_str().unwrap();
    let o = run(&["--config", path, "--listen", "127.0.0.1:0"], &[]);
    assert_usage_error(
        &o,
        &[
            "targets[0].address",
            "10.0.0.300",
            "targets[0].local_ports",
            "6000",
            "poll.interval",
            "poll.colour",
            path,
        ],
    );
}

#[test]
fn bad_environment_value_names_the_variable() {
    let o = run(
        &["--ip", "127.0.0.1"],
        &[("FIX_MONITOR_POLL__INTERVAL", "soon")],
    );
    assert_usage_error(&o, &["FIX_MONITOR_POLL__INTERVAL", "soon", "poll.interval"]);
}

#[test]
fn unknown_environment_variable_in_our_prefix_is_an_error() {
    let o = run(
        &["--ip", "127.0.0.1"],
        &[("FIX_MONITOR_POLL__INTERVALL", "1s")],
    );
    assert_usage_error(&o, &["FIX_MONITOR_POLL__INTERVALL"]);
}

#[test]
fn bad_flag_value_names_the_flag() {
    let o = run(&["--ip", "not-an-ip", "--interval", "0"], &[]);
    assert_usage_error(&o, &["--ip", "not-an-ip", "--interval"]);
}

#[test]
fn downstream_ip_from_the_original_tool_is_validated_too() {
    let o = run(
        &[],
        &[("DOWNSTREAM_IP", "10.0.0.5"), ("DOWNSTREAM_PORT", "99999")],
    );
    assert_usage_error(&o, &["DOWNSTREAM_PORT", "99999"]);
}

#[test]
fn no_targets_says_how_to_give_one() {
    let f = config_file("[poll]\ninterval = \"1s\"\n");
    let o = run(&["--config", f.path().to_str().unwrap()], &[]);
    assert_usage_error(&o, &["targets", "--ip", "DOWNSTREAM_IP"]);
}

#[test]
fn missing_explicit_config_file_is_an_error() {
    let o = run(
        &[
            "--config",
            "/nonexistent/fix-monitor.toml",
            "--ip",
            "127.0.0.1",
        ],
        &[],
    );
    assert_usage_error(&o, &["/nonexistent/fix-monitor.toml"]);
}

#[test]
fn the_originals_ambiguous_port_flag_names_its_replacements() {
    let o = run(&["--ip", "127.0.0.1", "--port", "9100"], &[]);
    let err = stderr(&o);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("--target-port") && err.contains("--listen"),
        "{err}"
    );
}

#[test]
fn config_command_shows_each_value_and_where_it_came_from() {
    let f = config_file("[[targets]]\naddress = \"10.0.0.5\"\nport = 9876\n");
    let path = f.path().to_str().unwrap();
    let o = command()
        .args(["config", "--config", path, "--interval", "250ms"])
        .env("FIX_MONITOR_PROMETHEUS__LISTEN", "127.0.0.1:9999")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    for needle in [
        "10.0.0.5",
        path,
        "250ms",
        "--interval",
        "127.0.0.1:9999",
        "FIX_MONITOR_PROMETHEUS__LISTEN",
    ] {
        assert!(
            out.contains(needle),
            "config output lacks {needle:?}:\n{out}"
        );
    }
}

#[test]
fn a_command_line_clap_rejects_exits_64_but_help_and_version_exit_0() {
    let o = command().args(["run", "--no-such-flag"]).output().unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("--no-such-flag"), "{}", stderr(&o));
    let o = command().args(["run", "--interval"]).output().unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    for flag in ["--help", "--version"] {
        let o = command().arg(flag).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{flag}: {}", stderr(&o));
        assert!(!o.stdout.is_empty(), "{flag}");
    }
}

#[test]
fn bad_logon_lockout_names_key_value_file_and_what_is_allowed() {
    let f = config_file(
        r#"
[[targets]]
address = "10.0.0.1"
logon_lockout = { attempts = 100, within = "60s" }
"#,
    );
    let path = f.path().to_str().unwrap();
    let o = run(&["--config", path, "--listen", "127.0.0.1:0"], &[]);
    assert_usage_error(
        &o,
        &[
            "targets[0].logon_lockout",
            "attempts = 100",
            "from 2 to 64",
            path,
        ],
    );
}

/// `targets[].tls_tunnel` that is not a loopback IP:PORT: named with its value, its file and
/// what is allowed, exit 64 (the binary, not only the parser).
#[test]
fn bad_tls_tunnel_names_key_value_file_and_what_is_allowed() {
    let f = config_file(
        r#"
[fix]
capture = true
[[targets]]
address = "10.0.0.1"
tls_tunnel = "venue.example:7001"
[[targets]]
address = "10.0.0.2"
tls_tunnel = "10.0.0.9:7001"
"#,
    );
    let path = f.path().to_str().unwrap();
    let o = run(&["--config", path, "--listen", "127.0.0.1:0"], &[]);
    assert_usage_error(
        &o,
        &[
            "targets[0].tls_tunnel",
            "venue.example:7001",
            "not IP:PORT",
            "targets[1].tls_tunnel",
            "10.0.0.9 is not a loopback address",
            "such as \"127.0.0.1:7001\"",
            path,
        ],
    );
}

#[test]
fn bad_schedules_are_all_reported_with_key_value_source_and_what_is_allowed() {
    let f = config_file(
        r#"
[[targets]]
address = "10.0.0.1"
schedule = "nyc"

[[schedules]]
name = "ldn"
timezone = "Europe/Londn"
start = "7am"
end = "17:30"
days = ["Mon", "Funday"]

[[schedules]]
name = "ldn"
start = "Sun 17:00"
end = "Sun 17:00"
"#,
    );
    let path = f.path().to_str().unwrap();
    let o = run(&["--config", path, "--listen", "127.0.0.1:0"], &[]);
    assert_usage_error(
        &o,
        &[
            "schedules[0].timezone = \"Europe/Londn\"",
            "IANA time zone",
            "schedules[0].start = \"7am\"",
            "HH:MM",
            "schedules[0].days[1] = \"Funday\"",
            "Mon, Tue",
            "schedules[1].name = \"ldn\"",
            "already used by schedules[0]",
            "targets[0].schedule = \"nyc\"",
            "the schedules are: ldn",
            path,
        ],
    );
    // An end equal to its start, from the environment: the variable is the source.
    let o = run(
        &["--ip", "10.0.0.1"],
        &[(
            "FIX_MONITOR_SCHEDULES",
            r#"[{name = "fx", start = "Sun 17:00", end = "Sun 17:00"}]"#,
        )],
    );
    assert_usage_error(
        &o,
        &[
            "schedules[0].end",
            "FIX_MONITOR_SCHEDULES",
            "different from its start",
        ],
    );
}

#[test]
fn config_command_shows_each_targets_schedule() {
    let f = config_file(
        r#"
[[targets]]
name = "venue-a"
address = "10.0.0.1"
schedule = "ldn"
[[targets]]
name = "venue-b"
address = "10.0.0.2"
[[schedules]]
name = "ldn"
timezone = "Europe/London"
start = "07:00"
end = "17:30"
"#,
    );
    let path = f.path().to_str().unwrap();
    let o = command()
        .args(["config", "--config", path])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    for needle in [
        "schedule = \"ldn\"",
        "# schedule: always expected up",
        "[[schedules]]",
        "timezone = \"Europe/London\"",
        "schedule_grace = \"5m\"",
    ] {
        assert!(
            out.contains(needle),
            "config output lacks {needle:?}:\n{out}"
        );
    }
}
