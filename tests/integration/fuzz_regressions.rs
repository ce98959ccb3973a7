//! Every input the fuzzer keeps, replayed on every `cargo test`: the seeds it starts from
//! (`fuzz/seeds/TARGET/`), the committed minimized corpus (`fuzz/corpus/TARGET/`, written by
//! `scripts/fuzz.sh --minimize`) and the crashes it found (`tests/fixtures/fuzz/TARGET/`, each
//! fixed, named after what it found). The checks are the fuzz targets' own (`fuzz/harness.rs`).

use std::path::Path;

#[allow(dead_code)] // not every harness function has saved cases on every platform
#[path = "../../fuzz/harness.rs"]
mod harness;

/// The fuzz targets, as `scripts/fuzz.sh` names them.
const TARGETS: [&str; 10] = [
    "netlink_dump",
    "procfs_table",
    "bytecode",
    "fix_codec",
    "config_toml",
    "otel_headers",
    "destroy_message",
    "fix_log_line",
    "web_config_yaml",
    "http_request",
];

/// Runs `check` on every file under `fuzz/seeds/target`, `fuzz/corpus/target` and
/// `tests/fixtures/fuzz/target`; returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in [
        root.join("fuzz/seeds").join(target),
        root.join("fuzz/corpus").join(target),
        root.join("tests/fixtures/fuzz").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(|| check(&bytes));
            assert!(result.is_ok(), "{} fails again", path.display());
            n += 1;
        }
    }
    n
}

/// Every target has its minimized corpus committed (so that `replay` does not skip a misnamed
/// or missing directory in silence).
#[test]
fn every_target_has_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for target in TARGETS {
        let n = std::fs::read_dir(root.join(target)).map_or(0, |d| d.count());
        assert!(n > 0, "no committed corpus in fuzz/corpus/{target}");
    }
}

#[test]
fn netlink_dump_cases_pass() {
    assert!(replay("netlink_dump", harness::netlink_dump) >= 3);
}

#[test]
fn procfs_table_cases_pass() {
    assert!(replay("procfs_table", harness::procfs_table) >= 2);
}

#[test]
fn bytecode_cases_pass() {
    assert!(replay("bytecode", harness::bytecode) >= 3);
}

#[test]
fn fix_codec_cases_pass() {
    assert!(replay("fix_codec", harness::fix_codec) >= 3);
}

#[test]
fn config_toml_cases_pass() {
    assert!(replay("config_toml", harness::config_toml) >= 2);
}

#[test]
fn otel_headers_cases_pass() {
    assert!(replay("otel_headers", harness::otel_headers) >= 2);
}

#[test]
fn destroy_message_cases_pass() {
    assert!(replay("destroy_message", harness::destroy_message) >= 3);
}

#[test]
fn fix_log_line_cases_pass() {
    assert!(replay("fix_log_line", harness::fix_log_line) >= 4);
}

#[test]
fn web_config_yaml_cases_pass() {
    assert!(replay("web_config_yaml", harness::web_config_yaml) >= 3);
}

#[test]
fn http_request_cases_pass() {
    assert!(replay("http_request", harness::http_request) >= 6);
}
