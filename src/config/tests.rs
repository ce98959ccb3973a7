//! Config tests: every kind of problem, the precedence of the layers, and provenance. All go
//! through `load_from` or `parse_toml_str`, with an explicit environment and a temporary
//! default file, so they never see the real environment or /etc.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory, Parser};

use super::*;
use crate::target::PortRange;

#[derive(Debug, Parser)]
#[command(name = "fix-monitor")]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

fn args(flags: &[&str]) -> ConfigArgs {
    let argv = std::iter::once("fix-monitor").chain(flags.iter().copied());
    Cli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{e}"))
        .config
}

/// A temporary directory whose `config.toml` is the default config path.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(toml: Option<&str>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        if let Some(toml) = toml {
            std::fs::write(dir.path().join("config.toml"), toml).unwrap();
        }
        Fixture { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn load(&self, flags: &[&str], env: &[(&str, &str)]) -> Result<Loaded, ConfigErrors> {
        load_from(&args(flags), env.iter().copied(), self.path())
    }
}

fn ok(result: Result<Loaded, ConfigErrors>) -> Loaded {
    result.unwrap_or_else(|e| panic!("unexpected configuration errors:\n{e}"))
}

fn errors(result: Result<Loaded, ConfigErrors>) -> ConfigErrors {
    match result {
        Ok(loaded) => panic!("expected errors, got {:#?}", loaded.settings),
        Err(e) => e,
    }
}

fn find<'a>(errors: &'a ConfigErrors, key: &str) -> &'a ConfigError {
    errors
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no error for {key} in:\n{errors}"))
}

fn file(path: &Path) -> Option<Origin> {
    Some(Origin::File(path.to_path_buf()))
}

fn env(var: &str) -> Option<Origin> {
    Some(Origin::Env(var.to_owned()))
}

fn flag(flag: &str) -> Option<Origin> {
    Some(Origin::Flag(flag.to_owned()))
}

const ONE_TARGET: &str = "[[targets]]\naddress = \"10.0.0.5\"\n";

// ---- The happy path and the schema ----

#[test]
fn a_minimal_file_gets_the_defaults() {
    let loaded = ok(parse_toml_str(ONE_TARGET, "/etc/x.toml"));
    let s = &loaded.settings;
    assert_eq!(s.targets.len(), 1);
    let t = s.targets.get(0);
    assert_eq!(t.name, "10.0.0.5");
    assert_eq!(t.net, "10.0.0.5/32".parse().unwrap());
    assert_eq!((t.port, t.local_ports), (None, None));
    assert_eq!(s.poll.interval, defaults::INTERVAL);
    assert_eq!(s.poll.source, SourceKind::Auto);
    assert!(s.prometheus.enabled);
    assert_eq!(s.prometheus.listen, "127.0.0.1:9464".parse().unwrap());
    assert_eq!(s.log.format, LogFormat::Text);
    assert_eq!(s.log.level, "info");
    assert_eq!(loaded.config_file, ConfigFile::Read("/etc/x.toml".into()));
    assert_eq!(loaded.origin("poll.interval"), Some(&Origin::Default));
    assert_eq!(
        loaded.origin("targets[0].address"),
        file(Path::new("/etc/x.toml")).as_ref()
    );
}

#[test]
fn the_whole_schema_parses() {
    let toml = r#"
        [[targets]]
        name = "venue-a"
        address = "10.0.0.5"
        port = 9876
        local_ports = [5000, 6000]

        [[targets]]
        address = "10.1.0.0/16"

        [[targets]]
        address = "fd00::5"
        port = 443

        [poll]
        interval = "250ms"
        source = "procfs"

        [prometheus]
        enabled = false
        listen = "0.0.0.0:9100"

        [log]
        format = "json"
        level = "warn,fix_monitor=debug"

        [otlp]
        enabled = true
        endpoint = "https://collector.example:4318/otlp/"
        protocol = "http/protobuf"
        interval = "30s"
        timeout = 3
        temporality = "delta"
        headers = { "X-Tenant" = "desk-1" }
    "#;
    let s = ok(parse_toml_str(toml, "c.toml")).settings;
    let names: Vec<&str> = s.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["venue-a", "10.1.0.0/16", "[fd00::5]:443"]);
    let a = s.targets.get(0);
    assert_eq!(a.port, Some(9876));
    assert_eq!(
        a.local_ports,
        Some(PortRange {
            start: 5000,
            end: 6000
        })
    );
    assert_eq!(s.targets.get(1).net, "10.1.0.0/16".parse().unwrap());
    assert_eq!(s.poll.interval, Duration::from_millis(250));
    assert_eq!(s.poll.source, SourceKind::Procfs);
    assert!(!s.prometheus.enabled);
    assert_eq!(s.prometheus.listen, "0.0.0.0:9100".parse().unwrap());
    assert_eq!(s.log.format, LogFormat::Json);
    assert_eq!(s.log.level, "warn,fix_monitor=debug");
    let o = &s.otlp;
    assert!(o.enabled);
    assert_eq!(o.endpoint, "https://collector.example:4318/otlp/");
    assert_eq!(o.url, "https://collector.example:4318/otlp/v1/metrics");
    assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(o.interval, Duration::from_secs(30));
    assert_eq!(o.timeout, Duration::from_secs(3));
    assert_eq!(o.temporality, OtlpTemporality::Delta);
    assert_eq!(
        o.headers,
        BTreeMap::from([("x-tenant".to_owned(), "desk-1".to_owned())])
    );
    assert_eq!(o.tls, TlsFiles::default());
}

#[test]
fn an_integer_interval_is_seconds_everywhere() {
    let file = "[[targets]]\naddress = \"10.0.0.5\"\n[poll]\ninterval = 5\n";
    assert_eq!(
        ok(parse_toml_str(file, "c.toml")).settings.poll.interval,
        Duration::from_secs(5)
    );
    let quoted = "[[targets]]\naddress = \"10.0.0.5\"\n[poll]\ninterval = \"7\"\n";
    assert_eq!(
        ok(parse_toml_str(quoted, "c.toml")).settings.poll.interval,
        Duration::from_secs(7)
    );
    let f = Fixture::new(Some(ONE_TARGET));
    let from_env = ok(f.load(&[], &[("FIX_MONITOR_POLL__INTERVAL", "3")]));
    assert_eq!(from_env.settings.poll.interval, Duration::from_secs(3));
    let from_flag = ok(f.load(&["--interval", "10"], &[]));
    assert_eq!(from_flag.settings.poll.interval, Duration::from_secs(10));
    let humantime = ok(f.load(&["--interval", "1m 30s"], &[]));
    assert_eq!(humantime.settings.poll.interval, Duration::from_secs(90));
}

// ---- The config file ----

#[test]
fn a_missing_default_file_is_fine() {
    let f = Fixture::new(None);
    let loaded = ok(f.load(&["--ip", "10.0.0.5"], &[]));
    assert_eq!(loaded.config_file, ConfigFile::Absent(f.path()));
    assert!(loaded.explain().contains("(absent, skipped)"));
}

#[test]
fn a_missing_named_file_is_an_error() {
    let f = Fixture::new(Some(ONE_TARGET));
    let missing = f.dir.path().join("nope.toml");
    let missing_str = missing.to_str().unwrap();

    let e = errors(f.load(&["--config", missing_str], &[]));
    let error = find(&e, missing_str);
    assert_eq!(error.kind, ErrorKind::File);
    assert_eq!(error.origin, flag("--config"));
    // A file that is not there cannot be blamed for the missing targets.
    assert_eq!(e.len(), 1, "{e}");

    let e = errors(f.load(&[], &[("FIX_MONITOR_CONFIG", missing_str)]));
    assert_eq!(find(&e, missing_str).origin, env("FIX_MONITOR_CONFIG"));
}

#[test]
fn config_flag_beats_config_env_beats_default_path() {
    let f = Fixture::new(Some(ONE_TARGET));
    let other = f.dir.path().join("other.toml");
    std::fs::write(&other, "[[targets]]\naddress = \"10.9.9.9\"\n").unwrap();
    let third = f.dir.path().join("third.toml");
    std::fs::write(&third, "[[targets]]\naddress = \"10.7.7.7\"\n").unwrap();

    let name = |l: Loaded| l.settings.targets.get(0).name.clone();
    assert_eq!(name(ok(f.load(&[], &[]))), "10.0.0.5");
    let env_cfg = [("FIX_MONITOR_CONFIG", other.to_str().unwrap())];
    assert_eq!(name(ok(f.load(&[], &env_cfg))), "10.9.9.9");
    let flags = ["--config", third.to_str().unwrap()];
    assert_eq!(name(ok(f.load(&flags, &env_cfg))), "10.7.7.7");
}

#[test]
fn a_toml_syntax_error_names_the_file_and_other_problems_still_show() {
    let f = Fixture::new(Some("[[targets]\naddress = \"10.0.0.5\"\n"));
    let e = errors(f.load(&["--interval", "0"], &[]));
    let path = f.path().display().to_string();
    let error = find(&e, &path);
    assert_eq!(error.kind, ErrorKind::File);
    assert!(error.message.contains("not valid TOML"), "{error}");
    assert!(error.message.contains("line 1"), "{error}");
    find(&e, "poll.interval");
    // The file may have held the targets: no misleading "no targets".
    assert!(e.iter().all(|e| e.kind != ErrorKind::NoTargets), "{e}");
}

// ---- Every kind of problem ----

#[test]
fn unknown_keys_are_each_reported_with_their_file() {
    let toml = r#"
        colour = "blue"
        [[targets]]
        address = "10.0.0.5"
        prot = 9876
        [[targets]]
        address = "10.0.0.6"
        [poll]
        intervall = "5s"
        [otel]
        endpoint = "http://collector:4317"
        [otlp.tls]
        ca = "ca.pem"
    "#;
    let e = errors(parse_toml_str(toml, "/etc/fix-monitor/config.toml"));
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "colour",
            "otel",
            "otlp.tls.ca",
            "poll.intervall",
            "targets[0].prot",
        ],
        "{e}"
    );
    assert!(e.iter().all(|e| e.kind == ErrorKind::UnknownKey));
    let prot = find(&e, "targets[0].prot");
    assert_eq!(prot.value.as_deref(), Some("9876"));
    assert_eq!(prot.origin, file(Path::new("/etc/fix-monitor/config.toml")));
    assert!(
        prot.message.contains("name, address, port, local_ports"),
        "{prot}"
    );
    let intervall = find(&e, "poll.intervall");
    assert!(intervall
        .message
        .contains("[poll] accepts: interval, source"));
}

#[test]
fn an_unknown_fix_monitor_variable_is_an_error_naming_it() {
    let f = Fixture::new(Some(ONE_TARGET));
    let e = errors(f.load(
        &[],
        &[
            ("FIX_MONITOR_BOGUS", "1"),
            ("FIX_MONITOR_POLL_INTERVAL", "5s"),
            ("FIX_MONITOR_LOG__COLOR", "yes"),
            ("FIX_MONITOR_POLL____X", "1"),
        ],
    ));
    assert_eq!(e.len(), 4, "{e}");
    assert_eq!(find(&e, "bogus").origin, env("FIX_MONITOR_BOGUS"));
    assert_eq!(find(&e, "log.color").origin, env("FIX_MONITOR_LOG__COLOR"));
    let slip = find(&e, "poll_interval");
    assert_eq!(slip.origin, env("FIX_MONITOR_POLL_INTERVAL"));
    assert!(
        slip.message
            .contains("did you mean FIX_MONITOR_POLL__INTERVAL"),
        "{slip}"
    );
    let malformed = find(&e, "FIX_MONITOR_POLL____X");
    assert_eq!(malformed.kind, ErrorKind::UnknownKey);
    // Other environment variables are none of our business.
    ok(f.load(&[], &[("PATH", "/bin"), ("FIX_MONITORING", "x")]));
}

#[test]
fn bad_addresses_are_reported_with_their_source() {
    let toml = r#"
        [[targets]]
        address = "10.0.0.300"
        [[targets]]
        address = "10.0.0.5/24"
        [[targets]]
        address = 42
        [[targets]]
        address = "::ffff:10.0.0.5"
        [[targets]]
        port = 1
    "#;
    let e = errors(parse_toml_str(toml, "c.toml"));
    assert_eq!(e.len(), 5, "{e}");
    let bad = find(&e, "targets[0].address");
    assert_eq!(bad.kind, ErrorKind::InvalidValue);
    assert_eq!(bad.value.as_deref(), Some("\"10.0.0.300\""));
    assert_eq!(bad.origin, file(Path::new("c.toml")));
    assert!(bad.message.contains("CIDR block"), "{bad}");
    let host_bits = find(&e, "targets[1].address");
    assert!(host_bits.message.contains("\"10.0.0.0/24\""), "{host_bits}");
    find(&e, "targets[2].address");
    let mapped = find(&e, "targets[3].address");
    assert!(mapped.message.contains("\"10.0.0.5\""), "{mapped}");
    assert_eq!(find(&e, "targets[4].address").kind, ErrorKind::MissingValue);

    let f = Fixture::new(None);
    let e = errors(f.load(&["--ip", "venue-a"], &[]));
    assert_eq!(find(&e, "targets[0].address").origin, flag("--ip"));
    let e = errors(f.load(&[], &[("DOWNSTREAM_IP", "10.0.0")]));
    assert_eq!(find(&e, "targets[0].address").origin, env("DOWNSTREAM_IP"));
}

#[test]
fn bad_ports_and_ranges_are_reported() {
    let toml = r#"
        [[targets]]
        address = "10.0.0.1"
        port = 0
        [[targets]]
        address = "10.0.0.2"
        port = 70000
        [[targets]]
        address = "10.0.0.3"
        local_ports = [6000, 5000]
        [[targets]]
        address = "10.0.0.4"
        local_ports = [5000]
        [[targets]]
        address = "10.0.0.5"
        local_ports = [0, 80000]
        [[targets]]
        address = "10.0.0.6"
        port = "http"
    "#;
    let e = errors(parse_toml_str(toml, "c.toml"));
    assert_eq!(e.len(), 6, "{e}");
    let zero = find(&e, "targets[0].port");
    assert!(zero.message.contains("0 is not a port"), "{zero}");
    assert!(zero.message.contains("1 to 65535"), "{zero}");
    let high = find(&e, "targets[1].port");
    assert_eq!(high.value.as_deref(), Some("70000"));
    let inverted = find(&e, "targets[2].local_ports");
    assert_eq!(inverted.value.as_deref(), Some("[6000, 5000]"));
    assert!(inverted.message.contains("inverted"), "{inverted}");
    assert!(inverted.message.contains("start <= end"), "{inverted}");
    assert!(find(&e, "targets[3].local_ports")
        .message
        .contains("1 elements"));
    find(&e, "targets[4].local_ports");
    find(&e, "targets[5].port");

    let f = Fixture::new(None);
    let e = errors(f.load(
        &[
            "--ip",
            "10.0.0.5",
            "--target-port",
            "65536",
            "--min-port",
            "6000",
            "--max-port",
            "5000",
        ],
        &[],
    ));
    assert_eq!(e.len(), 2, "{e}");
    assert_eq!(find(&e, "targets[0].port").origin, flag("--target-port"));
    assert_eq!(
        find(&e, "targets[0].local_ports").origin,
        flag("--min-port and --max-port")
    );
    let e = errors(f.load(
        &[],
        &[("DOWNSTREAM_IP", "10.0.0.5"), ("DOWNSTREAM_PORT", "0")],
    ));
    assert_eq!(find(&e, "targets[0].port").origin, env("DOWNSTREAM_PORT"));
}

#[test]
fn bad_intervals_are_reported() {
    let f = Fixture::new(Some(ONE_TARGET));
    for (value, expect) in [
        ("0", "above zero"),
        ("0s", "above zero"),
        ("-5", "expected a duration"),
        ("soon", "expected a duration"),
        ("5 parsecs", "unknown time unit"),
        ("2days", "too long"),
        ("1.5", "expected a duration"),
    ] {
        let e = errors(f.load(&["--interval", value], &[]));
        let error = find(&e, "poll.interval");
        assert_eq!(error.origin, flag("--interval"), "{value}");
        assert!(error.message.contains(expect), "{value}: {error}");
    }
    let e = errors(f.load(&[], &[("FIX_MONITOR_POLL__INTERVAL", "0")]));
    assert_eq!(
        find(&e, "poll.interval").origin,
        env("FIX_MONITOR_POLL__INTERVAL")
    );
}

#[test]
fn bad_listen_addresses_and_enum_values_are_reported() {
    let toml = r#"
        [[targets]]
        address = "10.0.0.5"
        [poll]
        source = "kprobe"
        [prometheus]
        enabled = "yes"
        listen = "localhost:9464"
        [log]
        format = "xml"
        level = "info,fix_monitor=loud"
    "#;
    let e = errors(parse_toml_str(toml, "c.toml"));
    assert_eq!(e.len(), 5, "{e}");
    let source = find(&e, "poll.source");
    assert!(source
        .message
        .contains("auto, ebpf, netlink, procfs, netstat"));
    assert_eq!(source.value.as_deref(), Some("\"kprobe\""));
    assert!(find(&e, "prometheus.enabled")
        .message
        .contains("true or false"));
    assert!(find(&e, "prometheus.listen").message.contains("IP:PORT"));
    assert!(find(&e, "log.format").message.contains("text, json"));
    assert!(find(&e, "log.level").message.contains("tracing filter"));

    let f = Fixture::new(Some(ONE_TARGET));
    let e = errors(f.load(
        &[
            "--listen",
            "9464",
            "--source",
            "magic",
            "--log-format",
            "yaml",
        ],
        &[],
    ));
    assert_eq!(find(&e, "prometheus.listen").origin, flag("--listen"));
    assert_eq!(find(&e, "poll.source").origin, flag("--source"));
    assert_eq!(find(&e, "log.format").origin, flag("--log-format"));
    // Port 0 lets the OS pick, which tests of the binary rely on.
    ok(f.load(&["--listen", "127.0.0.1:0"], &[]));
}

#[test]
fn no_targets_says_how_to_give_one() {
    let f = Fixture::new(None);
    let e = errors(f.load(&[], &[]));
    assert_eq!(e.len(), 1, "{e}");
    let error = find(&e, "targets");
    assert_eq!(error.kind, ErrorKind::NoTargets);
    for how in [
        "--ip",
        "DOWNSTREAM_IP",
        "[[targets]]",
        "FIX_MONITOR_TARGETS",
    ] {
        assert!(error.message.contains(how), "{how}: {error}");
    }
    assert!(error.message.contains(&f.path().display().to_string()));

    let e = errors(parse_toml_str("targets = []", "c.toml"));
    assert_eq!(find(&e, "targets").kind, ErrorKind::NoTargets);
    let e = errors(parse_toml_str("targets = \"10.0.0.5\"", "c.toml"));
    assert_eq!(find(&e, "targets").kind, ErrorKind::InvalidValue);
}

#[test]
fn duplicate_target_names_are_reported() {
    let toml = r#"
        [[targets]]
        name = "venue"
        address = "10.0.0.5"
        [[targets]]
        name = "venue"
        address = "10.0.0.6"
        [[targets]]
        address = "10.0.0.7"
        port = 1
        [[targets]]
        address = "10.0.0.7"
        port = 1
        local_ports = [1, 2]
    "#;
    let e = errors(parse_toml_str(toml, "c.toml"));
    assert_eq!(e.len(), 2, "{e}");
    let explicit = find(&e, "targets[1].name");
    assert_eq!(explicit.kind, ErrorKind::DuplicateName);
    assert!(explicit.message.contains("targets[0]"), "{explicit}");
    assert_eq!(explicit.origin, file(Path::new("c.toml")));
    let derived = find(&e, "targets[3].name");
    assert_eq!(derived.value.as_deref(), Some("\"10.0.0.7:1\""));
    assert!(derived.message.contains("default name"), "{derived}");
}

#[test]
fn the_originals_port_and_log_file_flags_are_rejected_with_their_replacements() {
    let f = Fixture::new(Some(ONE_TARGET));
    let e = errors(f.load(&["--port", "9100", "--log-file", "/var/log/x.log"], &[]));
    assert_eq!(e.len(), 2, "{e}");
    let port = find(&e, "--port");
    assert_eq!(port.kind, ErrorKind::RejectedFlag);
    assert_eq!(port.value.as_deref(), Some("9100"));
    assert!(port.message.contains("--target-port"), "{port}");
    assert!(port.message.contains("--listen 127.0.0.1:PORT"), "{port}");
    assert!(find(&e, "--log-file").message.contains("stderr"));
    // Even without a value, so the user still gets the pointer.
    let e = errors(f.load(&["--port"], &[]));
    assert_eq!(find(&e, "--port").value, None);
}

#[test]
fn target_narrowing_flags_need_ip() {
    let f = Fixture::new(Some(ONE_TARGET));
    let e = errors(f.load(
        &[
            "--target-port",
            "9876",
            "--min-port",
            "5000",
            "--max-port",
            "6000",
        ],
        &[],
    ));
    assert_eq!(e.len(), 3, "{e}");
    for flag in ["--target-port", "--min-port", "--max-port"] {
        let error = find(&e, flag);
        assert_eq!(error.kind, ErrorKind::Conflict);
        assert!(
            error
                .message
                .contains("narrows the target that --ip defines"),
            "{error}"
        );
    }
}

#[test]
fn one_port_bound_takes_the_originals_default_for_the_other() {
    let f = Fixture::new(None);
    let range = |flags: &[&str]| ok(f.load(flags, &[])).settings.targets.get(0).local_ports;
    assert_eq!(
        range(&["--ip", "10.0.0.5", "--min-port", "5500"]),
        Some(PortRange {
            start: 5500,
            end: 6000
        })
    );
    assert_eq!(
        range(&["--ip", "10.0.0.5", "--max-port", "5500"]),
        Some(PortRange {
            start: 5000,
            end: 5500
        })
    );
    assert_eq!(range(&["--ip", "10.0.0.5"]), None);
    let loaded = ok(f.load(&["--ip", "10.0.0.5", "--min-port", "5500"], &[]));
    assert_eq!(
        loaded.origin("targets[0].local_ports"),
        flag("--min-port, with --max-port defaulting to 6000").as_ref()
    );
}

#[test]
fn downstream_port_needs_downstream_ip_and_downstream_ip_excludes_fix_monitor_targets() {
    let f = Fixture::new(Some(ONE_TARGET));
    let e = errors(f.load(&[], &[("DOWNSTREAM_PORT", "9876")]));
    assert_eq!(find(&e, "DOWNSTREAM_PORT").kind, ErrorKind::Conflict);
    let e = errors(f.load(
        &[],
        &[
            ("DOWNSTREAM_IP", "10.0.0.9"),
            ("FIX_MONITOR_TARGETS", "[{address=\"10.0.0.8\"}]"),
        ],
    ));
    let conflict = find(&e, "DOWNSTREAM_IP");
    assert_eq!(conflict.kind, ErrorKind::Conflict);
    assert!(conflict.message.contains("FIX_MONITOR_TARGETS"));
    // --ip settles it: the flag replaces both.
    ok(f.load(&["--ip", "10.0.0.7"], &[("DOWNSTREAM_IP", "10.0.0.9")]));
}

#[test]
fn every_problem_is_reported_at_once() {
    let toml = r#"
        [[targets]]
        address = "nowhere"
        local_ports = [6000, 5000]
        typo = 1
        [poll]
        interval = "0s"
    "#;
    let f = Fixture::new(Some(toml));
    let e = errors(f.load(
        &["--listen", "nope", "--port", "1"],
        &[
            ("FIX_MONITOR_LOG__FORMAT", "xml"),
            ("FIX_MONITOR_NOPE", "1"),
        ],
    ));
    let mut keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "--port",
            "log.format",
            "nope",
            "poll.interval",
            "prometheus.listen",
            "targets[0].address",
            "targets[0].local_ports",
            "targets[0].typo",
        ],
        "{e}"
    );
    // One problem per line, each with key, value, origin and what is allowed.
    let text = e.to_string();
    assert_eq!(text.lines().count(), 8, "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("targets[0].local_ports"))
        .unwrap();
    assert_eq!(
        line,
        format!(
            "  - targets[0].local_ports = [6000, 5000] (from file {}): is inverted: start 6000 \
             is above end 5000; expected [start, end], two port numbers with 1 <= start <= end \
             <= 65535",
            f.path().display()
        )
    );
    let line = text.lines().find(|l| l.contains("log.format")).unwrap();
    assert_eq!(
        line,
        "  - log.format = \"xml\" (from env FIX_MONITOR_LOG__FORMAT): expected one of: text, json"
    );
}

#[test]
fn multi_line_messages_are_indented_under_their_bullet() {
    let e = errors(parse_toml_str("[[targets]\n", "c.toml"));
    let text = e.to_string();
    let mut lines = text.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("  - c.toml: not valid TOML"));
    assert!(lines.all(|l| l.starts_with("    ")), "{text}");
}

// ---- Precedence ----

#[test]
fn flags_beat_env_beat_file_beat_defaults() {
    let toml = r#"
        [[targets]]
        address = "10.0.0.5"
        [poll]
        interval = "2s"
        source = "procfs"
        [prometheus]
        listen = "127.0.0.1:9001"
        [log]
        level = "debug"
    "#;
    let f = Fixture::new(Some(toml));
    let path = f.path();
    let env_vars = [
        ("FIX_MONITOR_POLL__INTERVAL", "3s"),
        ("FIX_MONITOR_PROMETHEUS__LISTEN", "127.0.0.1:9002"),
        ("FIX_MONITOR_LOG__FORMAT", "json"),
    ];
    let loaded = ok(f.load(&["--interval", "4s"], &env_vars));
    let s = &loaded.settings;
    // flag over env over file
    assert_eq!(s.poll.interval, Duration::from_secs(4));
    assert_eq!(loaded.origin("poll.interval"), flag("--interval").as_ref());
    // env over file
    assert_eq!(s.prometheus.listen, "127.0.0.1:9002".parse().unwrap());
    assert_eq!(
        loaded.origin("prometheus.listen"),
        env("FIX_MONITOR_PROMETHEUS__LISTEN").as_ref()
    );
    // env over default
    assert_eq!(s.log.format, LogFormat::Json);
    // file over default
    assert_eq!(s.poll.source, SourceKind::Procfs);
    assert_eq!(loaded.origin("poll.source"), file(&path).as_ref());
    assert_eq!(s.log.level, "debug");
    // default
    assert!(s.prometheus.enabled);
    assert_eq!(loaded.origin("prometheus.enabled"), Some(&Origin::Default));
}

#[test]
fn targets_come_from_the_highest_layer_that_has_any() {
    let toml = r#"
        [[targets]]
        name = "a"
        address = "10.0.0.1"
        [[targets]]
        name = "b"
        address = "10.0.0.2"
    "#;
    let f = Fixture::new(Some(toml));
    let names =
        |l: &Loaded| -> Vec<String> { l.settings.targets.iter().map(|t| t.name.clone()).collect() };

    assert_eq!(names(&ok(f.load(&[], &[]))), ["a", "b"]);

    let fm = (
        "FIX_MONITOR_TARGETS",
        "[{name=\"c\", address=\"10.0.0.3\", port=1}]",
    );
    let loaded = ok(f.load(&[], &[fm]));
    assert_eq!(names(&loaded), ["c"]);
    assert_eq!(loaded.settings.targets.get(0).port, Some(1));
    assert_eq!(
        loaded.origin("targets[0].port"),
        env("FIX_MONITOR_TARGETS").as_ref()
    );

    let legacy = [("DOWNSTREAM_IP", "10.0.0.4"), ("DOWNSTREAM_PORT", "9876")];
    let loaded = ok(f.load(&[], &legacy));
    assert_eq!(names(&loaded), ["10.0.0.4:9876"]);
    assert_eq!(
        loaded.origin("targets[0].address"),
        env("DOWNSTREAM_IP").as_ref()
    );
    assert_eq!(
        loaded.origin("targets[0].port"),
        env("DOWNSTREAM_PORT").as_ref()
    );

    // --ip replaces everything, and DOWNSTREAM_PORT does not leak into its target.
    let loaded = ok(f.load(&["--target-ip", "10.0.0.5"], &legacy));
    assert_eq!(names(&loaded), ["10.0.0.5"]);
    assert_eq!(loaded.settings.targets.get(0).port, None);
    assert_eq!(loaded.origin("targets[0].address"), flag("--ip").as_ref());
    assert_eq!(loaded.origin("targets[0].port"), Some(&Origin::Default));
}

#[test]
fn env_tables_merge_key_by_key_with_the_file() {
    let f = Fixture::new(Some(
        "[[targets]]\naddress = \"10.0.0.5\"\n[prometheus]\nenabled = false\n[otlp]\nenabled = true\n",
    ));
    let loaded = ok(f.load(
        &[],
        &[("FIX_MONITOR_PROMETHEUS", "{listen=\"0.0.0.0:9464\"}")],
    ));
    assert!(!loaded.settings.prometheus.enabled);
    assert_eq!(
        loaded.settings.prometheus.listen,
        "0.0.0.0:9464".parse().unwrap()
    );
}

#[test]
fn a_variables_key_path_splits_at_double_underscores_only() {
    let f = Fixture::new(Some(ONE_TARGET));
    let var = ("FIX_MONITOR_OTLP__HEADERS__X.TENANT", "desk-1");
    let loaded = ok(f.load(&[], &[var]));
    let headers = &loaded.settings.otlp.headers;
    assert_eq!(headers.get("x.tenant").map(String::as_str), Some("desk-1"));
    assert_eq!(loaded.origin("otlp.headers.x.tenant"), env(var.0).as_ref());
}

#[test]
fn env_strings_are_taken_whole_and_empty_variables_are_unset() {
    let f = Fixture::new(Some(ONE_TARGET));
    let loaded = ok(f.load(
        &[],
        &[
            ("FIX_MONITOR_LOG__LEVEL", "info,fix_monitor=debug"),
            ("FIX_MONITOR_POLL__INTERVAL", ""),
            ("DOWNSTREAM_IP", ""),
            ("FIX_MONITOR_PROMETHEUS__ENABLED", "false"),
            ("FIX_MONITOR_OTLP__ENDPOINT", "http://127.0.0.1:4317"),
        ],
    ));
    assert_eq!(loaded.settings.log.level, "info,fix_monitor=debug");
    assert_eq!(loaded.settings.poll.interval, defaults::INTERVAL);
    assert_eq!(loaded.settings.targets.get(0).name, "10.0.0.5");
    assert!(!loaded.settings.prometheus.enabled);
}

// ---- Provenance ----

#[test]
fn explain_says_where_each_value_came_from() {
    let toml = "[[targets]]\nname = \"venue-a\"\naddress = \"10.0.0.5\"\nport = 9876\n";
    let f = Fixture::new(Some(toml));
    let loaded = ok(f.load(
        &["--log-level", "debug"],
        &[("FIX_MONITOR_POLL__INTERVAL", "5s")],
    ));
    let text = loaded.explain();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line in:\n{text}"))
    };
    let from_file = format!("# from file {}", f.path().display());
    assert!(line("name = \"venue-a\"").ends_with(&from_file), "{text}");
    assert!(line("port = 9876").ends_with(&from_file), "{text}");
    assert!(line("# local_ports: any").ends_with("# default"), "{text}");
    assert!(
        line("interval = \"5s\"").ends_with("# from env FIX_MONITOR_POLL__INTERVAL"),
        "{text}"
    );
    assert!(
        line("level = \"debug\"").ends_with("# from flag --log-level"),
        "{text}"
    );
    assert!(line("source = \"auto\"").ends_with("# default"), "{text}");
    assert!(line("listen = \"127.0.0.1:9464\"").ends_with("# default"));
    assert!(text.contains(&format!("# Config file: {}", f.path().display())));

    let loaded = ok(f.load(&["--ip", "10.0.0.0/24", "--max-port", "5999"], &[]));
    let text = loaded.explain();
    assert!(text.contains("address = \"10.0.0.0/24\""), "{text}");
    let name = text.lines().find(|l| l.starts_with("name =")).unwrap();
    assert!(
        name.ends_with("# default (from address and port)"),
        "{text}"
    );
    let range = text.lines().find(|l| l.starts_with("local_ports")).unwrap();
    assert!(
        range.ends_with("# from flag --max-port, with --min-port defaulting to 5000"),
        "{text}"
    );
}

#[test]
fn explain_output_is_a_config_file_with_the_same_settings() {
    let toml = r#"
        [[targets]]
        name = "venue \"a\""
        address = "10.0.0.5"
        port = 9876
        local_ports = [5000, 6000]
        [[targets]]
        address = "fd00::/64"
        [poll]
        interval = "1m 30s 500ms"
        source = "netstat"
        [prometheus]
        enabled = false
        listen = "[::]:9464"
        [log]
        format = "json"
        level = "warn,fix_monitor=debug"
        [otlp]
        endpoint = "http://collector:4318"
        protocol = "http/protobuf"
        interval = "1m"
        timeout = "2s 500ms"
        temporality = "lowmemory"
        [otlp.headers]
        "x-tenant" = "desk \"1\""
    "#;
    let loaded = ok(parse_toml_str(toml, "c.toml"));
    let again = ok(parse_toml_str(&loaded.explain(), "explained.toml"));
    assert_eq!(again.settings, loaded.settings);

    let defaults_only = ok(Fixture::new(None).load(&["--ip", "::1", "--target-port", "1"], &[]));
    let again = ok(parse_toml_str(&defaults_only.explain(), "explained.toml"));
    assert_eq!(again.settings, defaults_only.settings);
}

// ---- The flags themselves ----

#[test]
fn the_flags_are_well_formed_and_documented() {
    Cli::command().debug_assert();
    let help = Cli::command().render_long_help().to_string();
    for text in [
        "--config <PATH>",
        "--ip <ADDR>",
        "target-ip",
        "--target-port <PORT>",
        "--min-port <PORT>",
        "--max-port <PORT>",
        "--interval <DURATION>",
        "--listen <ADDR:PORT>",
        "--source <SOURCE>",
        "--log-format <FORMAT>",
        "--log-level <FILTER>",
        "--otlp-endpoint <URL>",
        "--otlp-protocol <PROTOCOL>",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "FIX_MONITOR_CONFIG",
        "FIX_MONITOR_POLL__INTERVAL",
        "FIX_MONITOR_PROMETHEUS__LISTEN",
        "FIX_MONITOR_POLL__SOURCE",
        "FIX_MONITOR_LOG__FORMAT",
        "FIX_MONITOR_LOG__LEVEL",
        "DOWNSTREAM_IP",
    ] {
        assert!(help.contains(text), "{text} missing from:\n{help}");
    }
    // The rejected flags are parsed (to be explained) but not advertised.
    assert!(!help.contains("--log-file"), "{help}");
    assert!(!help.contains("--port <"), "{help}");
}

// ---- [otlp] ----

#[test]
fn otlp_is_off_by_default_and_an_endpoint_turns_it_on() {
    let f = Fixture::new(Some(ONE_TARGET));
    let loaded = ok(f.load(&[], &[]));
    let o = &loaded.settings.otlp;
    assert!(!o.enabled);
    assert_eq!(o.endpoint, "http://localhost:4317");
    assert_eq!(o.url, o.endpoint);
    assert_eq!(o.protocol, OtlpProtocol::Grpc);
    assert_eq!(o.interval, defaults::OTLP_INTERVAL);
    assert_eq!(o.timeout, defaults::OTLP_TIMEOUT);
    assert_eq!(o.temporality, OtlpTemporality::Cumulative);
    assert!(o.headers.is_empty());
    for key in [
        "otlp.enabled",
        "otlp.endpoint",
        "otlp.headers",
        "otlp.tls.ca_file",
    ] {
        assert_eq!(loaded.origin(key), Some(&Origin::Default), "{key}");
    }

    // The HTTP default follows the protocol.
    let http = ok(f.load(&["--otlp-protocol", "HTTP/Protobuf"], &[]));
    assert_eq!(http.settings.otlp.url, "http://localhost:4318/v1/metrics");
    assert!(!http.settings.otlp.enabled);

    let flag_on = ok(f.load(&["--otlp-endpoint", "http://10.1.1.1:4317"], &[]));
    assert!(flag_on.settings.otlp.enabled);
    assert_eq!(
        flag_on.origin("otlp.enabled"),
        flag("--otlp-endpoint").as_ref()
    );

    // In the file, an endpoint alone means "push there"; `enabled = false` beside it does not.
    let file_on = "[[targets]]\naddress = \"10.0.0.5\"\n[otlp]\nendpoint = \"http://c:4317\"\n";
    assert!(ok(parse_toml_str(file_on, "c.toml")).settings.otlp.enabled);
    let file_off = format!("{file_on}enabled = false\n");
    assert!(
        !ok(parse_toml_str(&file_off, "c.toml"))
            .settings
            .otlp
            .enabled
    );

    // The standard variable is below the file: the file's `enabled = false` wins...
    let g = Fixture::new(Some(&file_off));
    let otel = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4317")];
    let loaded = ok(g.load(&[], &otel));
    assert!(!loaded.settings.otlp.enabled);
    assert_eq!(loaded.settings.otlp.endpoint, "http://c:4317");
    // ...and without a file saying otherwise, the variable turns push on.
    let loaded = ok(f.load(&[], &otel));
    assert!(loaded.settings.otlp.enabled);
    assert_eq!(
        loaded.origin("otlp.enabled"),
        env("OTEL_EXPORTER_OTLP_ENDPOINT").as_ref()
    );

    // Our own variable likewise, unless the environment also says whether to push.
    let ours = ("FIX_MONITOR_OTLP__ENDPOINT", "http://c:4317");
    assert!(ok(f.load(&[], &[ours])).settings.otlp.enabled);
    let off = ("FIX_MONITOR_OTLP__ENABLED", "false");
    assert!(!ok(f.load(&[], &[ours, off])).settings.otlp.enabled);
    // An endpoint in the FIX_MONITOR_OTLP table counts as one, as in the file's [otlp] table.
    let table = ("FIX_MONITOR_OTLP", "{endpoint=\"http://t:4317\"}");
    let loaded = ok(f.load(&[], &[table]));
    assert!(loaded.settings.otlp.enabled);
    assert_eq!(
        loaded.origin("otlp.enabled"),
        env("FIX_MONITOR_OTLP").as_ref()
    );
    let table_off = (
        "FIX_MONITOR_OTLP",
        "{endpoint=\"http://t:4317\", enabled=false}",
    );
    assert!(!ok(f.load(&[], &[table_off])).settings.otlp.enabled);
    // The flag beats everything.
    let loaded = ok(g.load(&["--otlp-endpoint", "http://f:4317"], &[ours, off]));
    assert!(loaded.settings.otlp.enabled);
    assert_eq!(loaded.settings.otlp.endpoint, "http://f:4317");
}

#[test]
fn the_standard_otel_variables_are_a_layer_below_the_file() {
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=env,x-region=ny%204"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "30000"),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"),
        // Not ours: ignored here (the SDK reads the first itself).
        ("OTEL_SERVICE_NAME", "x"),
        ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
    ];
    let f = Fixture::new(Some(ONE_TARGET));
    let loaded = ok(f.load(&[], &otel));
    let o = &loaded.settings.otlp;
    assert!(o.enabled);
    assert_eq!(o.url, "http://otel:4318/v1/metrics");
    // The SDK reads OTEL_SERVICE_NAME itself: shown, not configured; INSECURE not at all.
    let text = loaded.explain();
    assert!(text.contains("# OTEL_SERVICE_NAME=\"x\""), "{text}");
    assert!(!text.contains("INSECURE"), "{text}");
    assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(o.timeout, Duration::from_millis(2500));
    assert_eq!(o.interval, Duration::from_secs(30));
    assert_eq!(o.temporality, OtlpTemporality::Delta);
    assert_eq!(o.headers["x-region"], "ny 4");
    assert_eq!(
        loaded.origin("otlp.interval"),
        env("OTEL_METRIC_EXPORT_INTERVAL").as_ref()
    );
    assert_eq!(
        loaded.origin("otlp.headers.x-region"),
        env("OTEL_EXPORTER_OTLP_HEADERS").as_ref()
    );

    // The file beats them key by key (header tables merge, names case-insensitively)...
    let toml = format!(
        "{ONE_TARGET}[otlp]\ntimeout = \"1s\"\nprotocol = \"grpc\"\n\
         endpoint = \"http://file:4317\"\n[otlp.headers]\nX-Tenant = \"file\"\n"
    );
    let g = Fixture::new(Some(&toml));
    let loaded = ok(g.load(&[], &otel));
    let o = &loaded.settings.otlp;
    assert_eq!(o.timeout, Duration::from_secs(1));
    assert_eq!(loaded.origin("otlp.timeout"), file(&g.path()).as_ref());
    assert_eq!(o.url, "http://file:4317");
    assert_eq!(o.headers["x-tenant"], "file");
    assert_eq!(o.headers["x-region"], "ny 4");
    assert_eq!(o.interval, Duration::from_secs(30));
    assert_eq!(
        loaded.origin("otlp.headers.x-tenant"),
        file(&g.path()).as_ref()
    );
    // ...and our variables and flags beat the file.
    let mut env_vars = otel.to_vec();
    env_vars.push(("FIX_MONITOR_OTLP__TIMEOUT", "4s"));
    env_vars.push(("FIX_MONITOR_OTLP__HEADERS", "{\"x-tenant\"=\"ours\"}"));
    let loaded = ok(g.load(&["--otlp-protocol", "http/protobuf"], &env_vars));
    let o = &loaded.settings.otlp;
    assert_eq!(o.timeout, Duration::from_secs(4));
    assert_eq!(o.headers["x-tenant"], "ours");
    assert_eq!(o.url, "http://file:4317/v1/metrics");
    assert_eq!(
        loaded.origin("otlp.protocol"),
        flag("--otlp-protocol").as_ref()
    );
    assert_eq!(
        loaded.origin("otlp.headers.x-tenant"),
        env("FIX_MONITOR_OTLP__HEADERS").as_ref()
    );
}

#[test]
fn signal_specific_variables_beat_generic_ones_and_the_metrics_endpoint_is_used_as_is() {
    let f = Fixture::new(Some(ONE_TARGET));
    let loaded = ok(f.load(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://vm:8428/opentelemetry/api/v1/push",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "3000"),
        ],
    ));
    let o = &loaded.settings.otlp;
    assert_eq!(o.url, "http://vm:8428/opentelemetry/api/v1/push");
    assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(o.timeout, Duration::from_secs(3));
    assert_eq!(
        loaded.origin("otlp.endpoint"),
        env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").as_ref()
    );
    assert!(
        loaded.explain().contains("used as is"),
        "{}",
        loaded.explain()
    );
    // A base URL that already ends in /v1/metrics is not extended twice.
    let ends = ok(f.load(
        &["--otlp-protocol", "http/protobuf"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/v1/metrics/")],
    ));
    assert_eq!(ends.settings.otlp.url, "http://c:4318/v1/metrics/");
}

#[test]
fn bad_otlp_values_are_reported_with_key_value_source_and_what_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("client.pem");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let missing = dir.path().join("ca.pem");
    let toml = format!(
        r#"{ONE_TARGET}
        [otlp]
        enabled = true
        endpoint = "https://collector:4317"
        interval = "0s"
        temporality = "sometimes"
        headers = {{ "bad header" = "x", "x-ok" = "line\nbreak", "trace-bin" = "x" }}
        [otlp.tls]
        ca_file = "{}"
        cert_file = "{}"
        "#,
        missing.display(),
        cert.display()
    );
    let f = Fixture::new(Some(&toml));
    let e = errors(f.load(&["--otlp-protocol", "http/json"], &[]));
    let path = f.path();
    let interval = find(&e, "otlp.interval");
    assert_eq!(interval.value.as_deref(), Some("\"0s\""));
    assert_eq!(interval.origin, file(&path));
    assert!(interval.message.contains("above zero"), "{interval}");
    let protocol = find(&e, "otlp.protocol");
    assert_eq!(protocol.origin, flag("--otlp-protocol"));
    assert!(
        protocol.message.contains("grpc, http/protobuf"),
        "{protocol}"
    );
    assert!(find(&e, "otlp.temporality")
        .message
        .contains("cumulative, delta, lowmemory"));
    assert!(find(&e, "otlp.headers.bad header")
        .message
        .contains("not a valid header name"));
    assert!(find(&e, "otlp.headers.x-ok")
        .message
        .contains("no line breaks"));
    assert!(find(&e, "otlp.headers.trace-bin").message.contains("-bin"));
    // That the CA file cannot be read is the start-up step's to find (`startup` tests).
    assert!(e.iter().all(|e| e.key != "otlp.tls.ca_file"), "{e}");
    let unpaired = find(&e, "otlp.tls.cert_file");
    assert_eq!(unpaired.kind, ErrorKind::Conflict);
    assert!(unpaired.message.contains("otlp.tls.key_file"), "{unpaired}");

    // Bad URLs, each with the reason.
    let cases = [
        ("collector:4317", "has the scheme collector://"),
        ("localhost", "is not a URL"),
        ("ftp://c:21", "has the scheme ftp://"),
        ("http://", "is not a URL"),
        ("http://user:pw@c:4317", "credentials"),
        ("http://c:4317/v1/metrics", "which gRPC does not use"),
        ("http://c:4317?x=1", "query"),
    ];
    let f = Fixture::new(Some(ONE_TARGET));
    for (url, why) in cases {
        let e = errors(f.load(&["--otlp-endpoint", url], &[]));
        let error = find(&e, "otlp.endpoint");
        assert_eq!(error.origin, flag("--otlp-endpoint"), "{url}");
        assert!(error.message.contains(why), "{url}: {error}");
        assert_eq!(e.len(), 1, "{e}");
    }

    // TLS files with a plain-http endpoint would be silently unused.
    let e = errors(f.load(
        &["--otlp-endpoint", "http://c:4317"],
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", cert.to_str().unwrap())],
    ));
    let error = find(&e, "otlp.endpoint");
    assert_eq!(error.kind, ErrorKind::Conflict);
    assert!(error.message.contains("otlp.tls.ca_file"), "{error}");
    // With https they are taken.
    let loaded = ok(f.load(
        &["--otlp-endpoint", "https://c:4317"],
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", cert.to_str().unwrap())],
    ));
    assert_eq!(loaded.settings.otlp.tls.ca_file.as_deref(), Some(&*cert));
    assert_eq!(
        loaded.origin("otlp.tls.ca_file"),
        env("OTEL_EXPORTER_OTLP_CERTIFICATE").as_ref()
    );

    // A malformed standard variable names itself; millisecond values are read as such.
    let e = errors(f.load(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
        ],
    ));
    let headers = find(&e, "otlp.headers");
    assert_eq!(headers.origin, env("OTEL_EXPORTER_OTLP_HEADERS"));
    assert!(headers.message.contains("key=value"), "{headers}");
    let interval = find(&e, "otlp.interval");
    assert_eq!(interval.value.as_deref(), Some("\"0ms\""));
    assert_eq!(interval.origin, env("OTEL_METRIC_EXPORT_INTERVAL"));
}

#[test]
fn a_disabled_exporters_tls_files_are_not_looked_for() {
    let f = Fixture::new(Some(ONE_TARGET));
    let loaded = ok(f.load(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
            ("FIX_MONITOR_OTLP__ENABLED", "false"),
        ],
    ));
    assert!(!loaded.settings.otlp.enabled);
    assert!(crate::startup::prepare(&loaded).is_ok());
}

#[test]
fn nothing_would_be_exported_when_both_exporters_are_off() {
    let f = Fixture::new(Some(&format!(
        "{ONE_TARGET}[prometheus]\nenabled = false\n"
    )));
    let e = errors(f.load(&[], &[]));
    let error = find(&e, "prometheus.enabled");
    assert_eq!(error.kind, ErrorKind::Conflict);
    assert_eq!(error.origin, file(&f.path()));
    assert!(
        error.message.contains("nothing would be exported"),
        "{error}"
    );
    assert!(error.message.contains("otlp.enabled = false"), "{error}");
    assert_eq!(e.len(), 1, "{e}");
    // Push alone is fine.
    let loaded = ok(f.load(&["--otlp-endpoint", "http://c:4317"], &[]));
    assert!(!loaded.settings.prometheus.enabled && loaded.settings.otlp.enabled);
}

#[test]
fn explain_shows_otlp_with_origins_and_keeps_credentials_out() {
    let f = Fixture::new(Some(&format!(
        "{ONE_TARGET}[otlp]\nendpoint = \"http://c:4318\"\nprotocol = \"http/protobuf\"\n\
         headers = {{ authorization = \"Bearer s3cret\", \"x-tenant\" = \"desk-1\" }}\n"
    )));
    let loaded = ok(f.load(&[], &[("OTEL_METRIC_EXPORT_INTERVAL", "15000")]));
    let text = loaded.explain();
    assert!(!text.contains("s3cret"), "{text}");
    let otlp = &text[text.find("[otlp]").unwrap()..];
    let line = |prefix: &str| {
        otlp.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line in:\n{text}"))
    };
    let from_file = format!("# from file {}", f.path().display());
    assert!(line("enabled = true").ends_with(&from_file), "{text}");
    assert!(line("endpoint = \"http://c:4318\"").ends_with(&from_file));
    assert!(
        text.contains("# (exports go to http://c:4318/v1/metrics)"),
        "{text}"
    );
    assert!(
        line("interval = \"15s\"").ends_with("# from env OTEL_METRIC_EXPORT_INTERVAL"),
        "{text}"
    );
    assert!(line("\"x-tenant\" = \"desk-1\"").ends_with(&from_file));
    assert!(line("# \"authorization\": set, value not shown").ends_with(&from_file));
    assert!(line("# ca_file: the system's trust roots").ends_with("# default"));

    // The output loads back to the same settings, credentials aside.
    let mut want = loaded.settings.clone();
    want.otlp.headers.remove("authorization");
    let again = ok(parse_toml_str(&text, "explained.toml"));
    assert_eq!(again.settings, want);
}

#[test]
fn the_sdks_own_logs_are_off_unless_asked_for() {
    let log = |level: &str| LogSettings {
        format: LogFormat::Text,
        level: level.to_owned(),
    };
    assert_eq!(log("info").filter_directive(), "info,opentelemetry=off");
    assert_eq!(
        log("warn,opentelemetry_sdk=debug").filter_directive(),
        "warn,opentelemetry_sdk=debug"
    );
    for level in ["info", "debug,fix_monitor=trace"] {
        tracing_subscriber::EnvFilter::builder()
            .parse(log(level).filter_directive())
            .unwrap();
    }
}

#[test]
fn exit_usage_is_ex_usage() {
    assert_eq!(EXIT_USAGE, 64);
}

#[test]
fn heartbeat_and_stale_after_per_target() {
    let toml = r#"
        [[targets]]
        address = "10.0.0.1"
        heartbeat = "30s"
        [[targets]]
        address = "10.0.0.2"
        heartbeat = 30
        stale_after = "45s"
        [[targets]]
        address = "10.0.0.3"
        stale_after = "5s"
        [[targets]]
        address = "10.0.0.4"
    "#;
    let loaded = ok(parse_toml_str(toml, "c.toml"));
    let t: Vec<_> = loaded
        .settings
        .targets
        .iter()
        .map(|t| (t.heartbeat, t.stale_after))
        .collect();
    let s = |n| Some(Duration::from_secs(n));
    assert_eq!(
        t,
        [(s(30), s(60)), (s(30), s(45)), (None, s(5)), (None, None)],
        "stale_after defaults to twice the heartbeat; neither: not judged"
    );
    let shown = loaded.explain();
    assert!(shown.contains("heartbeat = \"30s\""), "{shown}");
    assert!(shown.contains("stale_after = \"1m\""), "{shown}");
    assert!(shown.contains("twice the heartbeat"), "{shown}");
    assert!(
        shown.contains("# stale_after: no staleness judged"),
        "{shown}"
    );
    let again = ok(parse_toml_str(&shown, "explained.toml"));
    assert_eq!(again.settings.targets, loaded.settings.targets);

    let bad = r#"
        [[targets]]
        address = "10.0.0.1"
        heartbeat = "0s"
        [[targets]]
        address = "10.0.0.2"
        stale_after = "soon"
    "#;
    let e = errors(parse_toml_str(bad, "c.toml"));
    assert_eq!(e.len(), 2, "{e}");
    assert!(find(&e, "targets[0].heartbeat")
        .message
        .contains("above zero"));
    let soon = find(&e, "targets[1].stale_after");
    assert_eq!(soon.value.as_deref(), Some("\"soon\""));
}

#[test]
fn process_lookup_is_off_by_default_and_set_from_file_or_variable_with_its_origin() {
    let f = Fixture::new(Some(ONE_TARGET));
    let default = ok(f.load(&[], &[]));
    assert!(!default.settings.poll.process_lookup);
    assert!(default
        .explain()
        .lines()
        .any(|l| l.starts_with("process_lookup = false") && l.ends_with("# default")));
    let file = "[[targets]]\naddress = \"10.0.0.5\"\n[poll]\nprocess_lookup = true\n";
    assert!(
        ok(parse_toml_str(file, "c.toml"))
            .settings
            .poll
            .process_lookup
    );
    let from_env = ok(f.load(&[], &[("FIX_MONITOR_POLL__PROCESS_LOOKUP", "true")]));
    assert!(from_env.settings.poll.process_lookup);
    assert!(from_env
        .explain()
        .lines()
        .any(|l| l.starts_with("process_lookup = true")
            && l.ends_with("# from env FIX_MONITOR_POLL__PROCESS_LOOKUP")));
    let e = errors(f.load(&[], &[("FIX_MONITOR_POLL__PROCESS_LOOKUP", "yes")]));
    let error = find(&e, "poll.process_lookup");
    assert_eq!(error.origin, env("FIX_MONITOR_POLL__PROCESS_LOOKUP"));
    assert!(error.message.contains("expected true or false"), "{error}");
}

#[test]
fn logon_lockout_per_target() {
    let toml = r#"
        [[targets]]
        name = "cme"
        address = "10.0.0.1"
        logon_lockout = { attempts = 5, within = "60s" }
        [[targets]]
        address = "10.0.0.2"
    "#;
    let loaded = ok(parse_toml_str(toml, "c.toml"));
    let minute = Duration::from_secs(60);
    assert_eq!(
        loaded.settings.fix.target_logon_lockout,
        [
            Some(crate::config::LogonLockout {
                attempts: 5,
                within: minute
            }),
            None
        ]
    );
    let shown = loaded.explain();
    assert!(shown.contains("[targets.logon_lockout]"), "{shown}");
    assert!(shown.contains("attempts = 5"), "{shown}");
    assert!(shown.contains("within = \"1m\""), "{shown}");
    assert!(
        shown.contains("# logon_lockout: no lockout threshold"),
        "{shown}"
    );
    // What `config` prints loads back to the same lockouts.
    let again = ok(parse_toml_str(&shown, "explained.toml"));
    assert_eq!(again.settings.fix, loaded.settings.fix);

    let bad = r#"
        [[targets]]
        address = "10.0.0.1"
        logon_lockout = { attempts = 1, within = "60s" }
        [[targets]]
        address = "10.0.0.2"
        logon_lockout = { attempts = 5, within = "0s" }
        [[targets]]
        address = "10.0.0.3"
        logon_lockout = { attempts = 5 }
        [[targets]]
        address = "10.0.0.4"
        logon_lockout = 5
    "#;
    let e = errors(parse_toml_str(bad, "c.toml"));
    assert_eq!(e.len(), 4, "{e}");
    let one = find(&e, "targets[0].logon_lockout");
    assert_eq!(one.origin, file(Path::new("c.toml")));
    assert_eq!(
        one.value.as_deref(),
        Some("{attempts = 1, within = \"60s\"}")
    );
    assert!(
        one.message.contains("attempts = 1 is not from 2 to 64"),
        "{one}"
    );
    assert!(
        one.message.contains("within = \"60s\""),
        "says what is allowed: {one}"
    );
    let zero = find(&e, "targets[1].logon_lockout");
    assert!(
        zero.message.contains("within = \"0s\" is not a duration"),
        "{zero}"
    );
    let half = find(&e, "targets[2].logon_lockout");
    assert!(half.message.contains("needs both"), "{half}");
    let number = find(&e, "targets[3].logon_lockout");
    assert!(number.message.starts_with("expected a table"), "{number}");
}

/// `targets[].message_limit`: a count per measured window, shown by `config` and loaded back;
/// a count out of range, a window not measured, a missing key: each an error with its key.
#[test]
fn message_limit_per_target() {
    let toml = r#"
        [[targets]]
        name = "lse"
        address = "10.0.0.1"
        message_limit = { count = 50, per = "1s" }
        [[targets]]
        address = "10.0.0.2"
    "#;
    let loaded = ok(parse_toml_str(toml, "c.toml"));
    let limit = crate::config::MessageLimit {
        count: 50,
        window: 3,
    };
    assert_eq!(
        loaded.settings.fix.target_message_limit,
        [Some(limit), None]
    );
    let shown = loaded.explain();
    assert!(shown.contains("[targets.message_limit]"), "{shown}");
    assert!(shown.contains("per = \"1s\""), "{shown}");
    assert!(shown.contains("# message_limit: no throttle"), "{shown}");
    let again = ok(parse_toml_str(&shown, "explained.toml"));
    assert_eq!(again.settings.fix, loaded.settings.fix);

    let bad = r#"
        [[targets]]
        address = "10.0.0.1"
        message_limit = { count = 0, per = "1s" }
        [[targets]]
        address = "10.0.0.2"
        message_limit = { count = 50, per = "2s" }
        [[targets]]
        address = "10.0.0.3"
        message_limit = { count = 50 }
    "#;
    let e = errors(parse_toml_str(bad, "c.toml"));
    assert_eq!(e.len(), 3, "{e}");
    let zero = find(&e, "targets[0].message_limit");
    assert_eq!(zero.origin, file(Path::new("c.toml")));
    assert!(zero.message.contains("count = 0 is out of range"), "{zero}");
    assert!(
        zero.message.contains("\"100ms\""),
        "says what is allowed: {zero}"
    );
    let window = find(&e, "targets[1].message_limit");
    assert!(
        window
            .message
            .contains("per = \"2s\" is not a measured window"),
        "{window}"
    );
    let half = find(&e, "targets[2].message_limit");
    assert!(half.message.contains("needs both"), "{half}");
}

/// `targets[].tls_tunnel`: a loopback IP:PORT, shown by `config` and loaded back; a value that
/// is no address, not loopback or port 0, a tunnel inside a target, one named twice, or one
/// without capture: each an error with its key, value and origin.
#[test]
fn tls_tunnel_per_target() {
    let toml = r#"
        [fix]
        capture = true
        [[targets]]
        name = "lse"
        address = "10.0.0.1"
        port = 9000
        tls_tunnel = "127.0.0.1:7001"
        [[targets]]
        address = "10.0.0.3"
        tls_tunnel = "auto"
        [[targets]]
        address = "10.0.0.2"
    "#;
    let loaded = ok(parse_toml_str(toml, "c.toml"));
    let tunnel = crate::config::TlsTunnel::At("127.0.0.1:7001".parse().unwrap());
    let auto = crate::config::TlsTunnel::Auto;
    assert_eq!(
        loaded.settings.fix.target_tls_tunnel,
        [Some(tunnel), Some(auto), None]
    );
    let shown = loaded.explain();
    assert!(shown.contains("tls_tunnel = \"127.0.0.1:7001\""), "{shown}");
    assert!(shown.contains("tls_tunnel = \"auto\""), "{shown}");
    assert!(shown.contains("# tls_tunnel: no tunnel"), "{shown}");
    let again = ok(parse_toml_str(&shown, "explained.toml"));
    assert_eq!(again.settings.fix, loaded.settings.fix);

    let bad = r#"
        [fix]
        capture = true
        [[targets]]
        address = "10.0.0.1"
        tls_tunnel = "127.0.0.1"
        [[targets]]
        address = "10.0.0.2"
        tls_tunnel = "10.9.9.9:7001"
        [[targets]]
        address = "10.0.0.3"
        tls_tunnel = "127.0.0.1:0"
        [[targets]]
        address = "127.0.0.0/8"
        [[targets]]
        address = "10.0.0.5"
        tls_tunnel = "127.0.0.1:7001"
        [[targets]]
        address = "10.0.0.6"
        tls_tunnel = 7001
    "#;
    let e = errors(parse_toml_str(bad, "c.toml"));
    assert_eq!(e.len(), 5, "{e}");
    let no_port = find(&e, "targets[0].tls_tunnel");
    assert_eq!(no_port.origin, file(Path::new("c.toml")));
    assert_eq!(no_port.value.as_deref(), Some("\"127.0.0.1\""));
    assert!(no_port.message.starts_with("not IP:PORT"), "{no_port}");
    assert!(
        no_port.message.contains("127.0.0.1:7001"),
        "says what is allowed: {no_port}"
    );
    let remote = find(&e, "targets[1].tls_tunnel");
    assert!(
        remote
            .message
            .contains("10.9.9.9 is not a loopback address"),
        "{remote}"
    );
    let zero = find(&e, "targets[2].tls_tunnel");
    assert!(zero.message.contains("port 0"), "{zero}");
    let inside = find(&e, "targets[4].tls_tunnel");
    assert_eq!(inside.kind, ErrorKind::Conflict);
    assert!(
        inside.message.contains("inside target `127.0.0.0/8`"),
        "{inside}"
    );
    let number = find(&e, "targets[5].tls_tunnel");
    assert!(
        number.message.starts_with("expected the local TLS tunnel"),
        "{number}"
    );

    let twice = r#"
        [fix]
        capture = true
        [[targets]]
        address = "10.0.0.1"
        tls_tunnel = "127.0.0.1:7001"
        [[targets]]
        address = "10.0.0.2"
        tls_tunnel = "127.0.0.1:7001"
    "#;
    let e = errors(parse_toml_str(twice, "c.toml"));
    assert_eq!(e.len(), 1, "{e}");
    let second = find(&e, "targets[1].tls_tunnel");
    assert!(
        second.message.contains("targets[0] names the same tunnel"),
        "{second}"
    );

    let no_capture = "[[targets]]\naddress = \"10.0.0.1\"\ntls_tunnel = \"127.0.0.1:7001\"\n";
    let e = errors(parse_toml_str(no_capture, "c.toml"));
    assert_eq!(e.len(), 1, "{e}");
    let lone = find(&e, "targets[0].tls_tunnel");
    assert!(
        lone.message.contains("needs [fix] capture = true"),
        "{lone}"
    );
}

/// `[otlp] logs`: on by default, off from the file or `FIX_MONITOR_OTLP__LOGS`, and a bad value
/// is reported with its key like any boolean.
#[test]
fn otlp_logs_is_on_by_default_and_turned_off_by_file_or_variable() {
    let base = "[[targets]]\naddress = \"10.0.0.5\"\n[otlp]\nendpoint = \"http://c:4317\"\n";
    assert!(ok(parse_toml_str(base, "c.toml")).settings.otlp.logs);
    let off = format!("{base}logs = false\n");
    assert!(!ok(parse_toml_str(&off, "c.toml")).settings.otlp.logs);
    let f = Fixture::new(Some(base));
    let loaded = ok(f.load(&[], &[("FIX_MONITOR_OTLP__LOGS", "false")]));
    assert!(!loaded.settings.otlp.logs);
    assert_eq!(
        loaded.origin("otlp.logs"),
        env("FIX_MONITOR_OTLP__LOGS").as_ref()
    );
    let bad = format!("{base}logs = \"sometimes\"\n");
    let e = errors(parse_toml_str(&bad, "c.toml"));
    assert_eq!(
        find(&e, "otlp.logs").value.as_deref(),
        Some("\"sometimes\"")
    );
}

#[test]
fn schedules_per_target_and_the_grace() {
    let toml = r#"
        schedule_grace = "2m"
        [[targets]]
        name = "venue-a"
        address = "10.0.0.1"
        schedule = "ldn-daily"
        [[targets]]
        address = "10.0.0.2"
        [[schedules]]
        name = "ldn-daily"
        timezone = "Europe/London"
        start = "07:00"
        end = "17:30:00"
        days = ["Mon", "Tue", "Wed", "Thu", "Fri"]
        holidays = ["2026-12-25"]
        [[schedules]]
        name = "fx"
        start = "Sun 17:00"
        end = "Fri 17:00"
    "#;
    let loaded = ok(parse_toml_str(toml, "c.toml"));
    let s = &loaded.settings;
    assert_eq!(s.schedule_grace, Duration::from_secs(120));
    let names: Vec<Option<&str>> = (s.target_schedules.iter())
        .map(|t| t.as_deref().map(crate::schedule::Schedule::name))
        .collect();
    assert_eq!(names, [Some("ldn-daily"), None]);
    assert_eq!(
        s.target_schedules[0].as_ref().unwrap().timezone(),
        "Europe/London"
    );
    let shown = loaded.explain();
    assert!(shown.contains("schedule = \"ldn-daily\""), "{shown}");
    assert!(shown.contains("# schedule: always expected up"), "{shown}");
    assert!(shown.contains("[[schedules]]"), "{shown}");
    assert!(shown.contains("# timezone: UTC"), "{shown}");
    assert!(shown.contains("schedule_grace = \"2m\""), "{shown}");
    // What `config` prints loads back to the same schedules.
    let again = ok(parse_toml_str(&shown, "explained.toml"));
    assert_eq!(again.settings.target_schedules, s.target_schedules);
    assert_eq!(again.settings.schedules, s.schedules);
    // The default grace, and zero allowed.
    let plain = "[[targets]]\naddress = \"10.0.0.1\"\n";
    let five = Duration::from_secs(300);
    assert_eq!(
        ok(parse_toml_str(plain, "c.toml")).settings.schedule_grace,
        five
    );
    let zero = format!("schedule_grace = 0\n{plain}");
    assert!(ok(parse_toml_str(&zero, "c.toml"))
        .settings
        .schedule_grace
        .is_zero());
}

#[test]
fn schedule_errors_all_at_once_with_key_value_and_origin() {
    let bad = r#"
        schedule_grace = "soon"
        [[targets]]
        address = "10.0.0.1"
        schedule = "nyc"
        [[targets]]
        address = "10.0.0.2"
        schedule = "broken"
        [[schedules]]
        name = "broken"
        timezone = "Europe/Londn"
        start = "07:00"
        end = "07:00"
        days = ["Mon", "Funday"]
        [[schedules]]
        name = "broken"
        start = "07:00"
        end = "08:00"
        [[schedules]]
        name = "typed"
        start = 7
        end = "08:00"
    "#;
    let e = errors(parse_toml_str(bad, "c.toml"));
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    for key in [
        "schedule_grace",
        "schedules[0].timezone",
        "schedules[0].end",
        "schedules[0].days[1]",
        "schedules[1].name",
        "schedules[2].start",
        "targets[0].schedule",
    ] {
        let error = find(&e, key);
        assert_eq!(error.origin, file(Path::new("c.toml")), "{error}");
    }
    assert_eq!(e.len(), 7, "{keys:?}\n{e}");
    let tz = find(&e, "schedules[0].timezone");
    assert_eq!(tz.value.as_deref(), Some("\"Europe/Londn\""));
    assert!(tz.message.contains("IANA"), "{tz}");
    assert_eq!(find(&e, "schedules[1].name").kind, ErrorKind::DuplicateName);
    let unknown = find(&e, "targets[0].schedule");
    assert!(unknown.message.contains("broken, typed"), "{unknown}");
    // From the environment, the variable is the origin.
    let f = Fixture::new(None);
    let env_schedules = r#"[{name = "x", timezone = "Nowhere", start = "07:00", end = "08:00"}]"#;
    let e = errors(f.load(
        &[],
        &[
            ("FIX_MONITOR_SCHEDULES", env_schedules),
            ("DOWNSTREAM_IP", "10.0.0.1"),
        ],
    ));
    let tz = find(&e, "schedules[0].timezone");
    assert_eq!(tz.origin, env("FIX_MONITOR_SCHEDULES"));
}
