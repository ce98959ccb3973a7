//! Property tests of the configuration loader (see `properties` for the approach): any TOML
//! text and any environment values give a configuration or errors, never a panic; a loaded
//! configuration's `explain()` output (what `fix-monitor config` prints) loads back to the same
//! settings; `OTEL_EXPORTER_OTLP_HEADERS` percent-encoded as the specification says parses back
//! to the same headers.

use std::collections::BTreeMap;

use fix_monitor::config::{self, ConfigArgs};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn cases(n: u32) -> Config {
    Config {
        cases: n,
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

/// A path no file is at: the default config file is then absent, as it may be.
fn no_default_file() -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "fix-monitor-no-such-config-{}.toml",
        std::process::id()
    ))
}

/// Strings a user could type, and strings no user would: valid-looking values of every key,
/// numbers out of range, odd Unicode, control characters.
fn value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("10.0.0.5".to_string()),
        Just("10.0.0.0/24".to_string()),
        Just("fd00::5".to_string()),
        Just("::ffff:10.0.0.5/120".to_string()),
        Just("1s".to_string()),
        Just("500ms".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("65536".to_string()),
        Just("18446744073709551616".to_string()),
        Just("1e400".to_string()),
        Just("99999999999999999999h".to_string()),
        Just("http://127.0.0.1:4318".to_string()),
        Just("https://[::1]:4317/x?y#z".to_string()),
        Just("grpc".to_string()),
        Just("http/protobuf".to_string()),
        Just("info,fix_monitor=debug".to_string()),
        Just("[5000, 6000]".to_string()),
        Just("[{address=\"10.0.0.5\", port=9876}]".to_string()),
        Just("{\"x-tenant\"=\"a\"}".to_string()),
        Just("a=b%20c,d=%ZZ".to_string()),
        "\\PC{0,24}",
        any::<String>(),
    ]
}

/// `s` as a TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32 & 0xffff)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML value: scalars, arrays and inline tables, as TOML text.
fn toml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        value_text().prop_map(|s| toml_str(&s)),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| if f.is_finite() {
            format!("{f:?}")
        } else {
            "nan".into()
        }),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((key_name(), inner), 0..4).prop_map(|kv| {
                let items: Vec<String> =
                    kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{{}}}", items.join(", "))
            }),
        ]
    })
}

/// Keys of the configuration, and keys it does not have.
fn key_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "name",
            "address",
            "port",
            "local_ports",
            "interval",
            "source",
            "enabled",
            "listen",
            "format",
            "level",
            "endpoint",
            "protocol",
            "timeout",
            "temporality",
            "headers",
            "ca_file",
            "cert_file",
            "key_file",
            "dir",
        ])
        .prop_map(String::from),
        "[a-z_]{1,12}",
        "\"[^\"\\\\]{0,8}\"",
    ]
}

/// A configuration file: known sections and `[[targets]]` tables with keys known and unknown.
fn toml_document() -> impl Strategy<Value = String> {
    let section = prop::sample::select(vec![
        "[[targets]]",
        "[poll]",
        "[prometheus]",
        "[log]",
        "[otlp]",
        "[otlp.tls]",
        "[otlp.headers]",
        "[state]",
        "[nonsense]",
        "",
    ]);
    prop::collection::vec(
        (
            section,
            prop::collection::vec((key_name(), toml_value()), 0..5),
        ),
        0..6,
    )
    .prop_map(|sections| {
        let mut text = String::new();
        for (header, keys) in sections {
            text.push_str(header);
            text.push('\n');
            for (k, v) in keys {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        text
    })
}

/// If `text` loads, what `explain` prints loads back to the same settings.
fn check_loads_or_errs(text: &str) -> Result<(), TestCaseError> {
    match config::parse_toml_str(text, "generated.toml") {
        Ok(loaded) => {
            let printed = loaded.explain();
            let again = config::parse_toml_str(&printed, "explained.toml").map_err(|e| {
                TestCaseError::fail(format!("explain() does not load back: {e}\n{printed}"))
            })?;
            prop_assert_eq!(&again.settings, &loaded.settings, "{}", printed);
        }
        Err(errors) => {
            let said = errors.to_string();
            prop_assert!(!said.trim().is_empty(), "an empty error");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn any_text_is_a_config_or_errors(text in any::<String>()) {
        check_loads_or_errs(&text)?;
    }

    #[test]
    fn any_toml_is_a_config_or_errors(text in toml_document()) {
        check_loads_or_errs(&text)?;
    }

    /// Documents that load, varied: one target with generated values for its keys.
    #[test]
    fn valid_looking_targets_load_or_are_refused_with_reasons(
        address in value_text(),
        port in prop_oneof![Just(None), any::<i64>().prop_map(Some), (1i64..=65535).prop_map(Some)],
        interval in value_text(),
    ) {
        let mut text = format!("[[targets]]\naddress = {}\n", toml_str(&address));
        if let Some(p) = port {
            text.push_str(&format!("port = {p}\n"));
        }
        text.push_str(&format!("[poll]\ninterval = {}\n", toml_str(&interval)));
        check_loads_or_errs(&text)?;
    }
}

/// The variables the loader reads, and some it does not.
fn env_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "FIX_MONITOR_TARGETS",
            "FIX_MONITOR_POLL__INTERVAL",
            "FIX_MONITOR_POLL__SOURCE",
            "FIX_MONITOR_PROMETHEUS__LISTEN",
            "FIX_MONITOR_PROMETHEUS__ENABLED",
            "FIX_MONITOR_LOG__LEVEL",
            "FIX_MONITOR_LOG__FORMAT",
            "FIX_MONITOR_OTLP__ENDPOINT",
            "FIX_MONITOR_OTLP__HEADERS",
            "FIX_MONITOR_OTLP__INTERVAL",
            "FIX_MONITOR_OTLP__TLS__CA_FILE",
            "FIX_MONITOR_STATE__DIR",
            "DOWNSTREAM_IP",
            "DOWNSTREAM_PORT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "OTEL_METRIC_EXPORT_INTERVAL",
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ])
        .prop_map(String::from),
        "FIX_MONITOR_[A-Z_]{1,16}",
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn any_environment_is_a_config_or_errors(
        env in prop::collection::btree_map(env_name(), value_text(), 0..6),
        with_target in any::<bool>(),
    ) {
        let mut env = env;
        if with_target {
            env.entry("DOWNSTREAM_IP".into()).or_insert_with(|| "10.0.0.5".into());
        }
        match config::load_from(&ConfigArgs::default(), env.clone(), no_default_file()) {
            Ok(loaded) => {
                let printed = loaded.explain();
                let again = config::parse_toml_str(&printed, "explained.toml").map_err(|e| {
                    TestCaseError::fail(format!("explain() does not load back: {e}\n{printed}"))
                })?;
                prop_assert_eq!(&again.settings, &loaded.settings, "{:?}\n{}", env, printed);
            }
            Err(errors) => prop_assert!(!errors.to_string().trim().is_empty()),
        }
    }

    /// Headers percent-encoded as the OpenTelemetry specification says (every byte of a value
    /// that is not unreserved), names in any case: the same headers, names lower-cased.
    #[test]
    fn otel_headers_parse_back_to_what_was_encoded(
        headers in prop::collection::btree_map("[A-Za-z][A-Za-z0-9-]{0,15}", "[ -~]{1,24}", 1..5),
        signal_specific in any::<bool>(),
    ) {
        // Names differing only in case are one header: keep the first.
        let mut want: BTreeMap<String, String> = BTreeMap::new();
        let mut items = Vec::new();
        for (name, value) in &headers {
            if want.contains_key(&name.to_ascii_lowercase()) {
                continue;
            }
            want.insert(name.to_ascii_lowercase(), value.clone());
            let encoded: String = value
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            items.push(format!("{name}={encoded}"));
        }
        let var = if signal_specific {
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS"
        } else {
            "OTEL_EXPORTER_OTLP_HEADERS"
        };
        let env = [
            ("DOWNSTREAM_IP".to_string(), "10.0.0.5".to_string()),
            (var.to_string(), items.join(", ")),
        ];
        let loaded = config::load_from(&ConfigArgs::default(), env, no_default_file())
            .map_err(|e| TestCaseError::fail(format!("{}: {e}", items.join(","))))?;
        prop_assert_eq!(&loaded.settings.otlp.headers, &want);
    }
}
