//! The metric tables of README.md and dashboards/README.md against the code: every metric the
//! code defines is in both, and neither names one the code lacks (node_exporter diffs its
//! `/metrics` against a golden file for the same reason: a list kept by hand drifts).
//!
//! The code's names: `instruments::names::ALL`, `process::names::ALL` and
//! `fix::metrics::names::ALL`. Every `"fix_..."` string in `src/` must be one of
//! them, so a name defined anywhere else (or left out of an `ALL`) fails here too.
//!
//! A metric table is a Markdown table whose first header cell is `metric`; the metrics of a row
//! are the backticked names in its first cell. The docs may give the OpenTelemetry name
//! (`fix_connections`, `process.memory.usage` written `process_memory_usage`) or the Prometheus
//! one, which adds the unit (`_seconds` for `s`, `_bytes` for `By`) and `_total` to counters.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The metric names the code defines, as the docs spell them before any suffix: `.` as `_`.
fn code_names() -> BTreeSet<String> {
    fix_monitor::instruments::names::ALL
        .iter()
        .chain(fix_monitor::process::names::ALL)
        .chain(fix_monitor::fix::metrics::names::ALL)
        .chain(fix_monitor::reload::names::ALL)
        .map(|n| n.replace('.', "_"))
        .collect()
}

/// The code name a documented name stands for, if any: itself, or without the Prometheus
/// suffixes (`_total`, then `_seconds` or `_bytes`).
fn code_name_of<'a>(doc: &str, code: &'a BTreeSet<String>) -> Option<&'a String> {
    let base = doc.strip_suffix("_total").unwrap_or(doc);
    [
        doc,
        base,
        base.strip_suffix("_seconds").unwrap_or(base),
        base.strip_suffix("_bytes").unwrap_or(base),
    ]
    .into_iter()
    .find_map(|n| code.get(n))
}

/// The metric names in the metric tables of a Markdown text, with the line each is on.
fn table_names(markdown: &str) -> Vec<(String, usize)> {
    let mut names = Vec::new();
    let mut in_metric_table = false;
    let mut previous_was_table = false;
    for (i, line) in markdown.lines().enumerate() {
        let is_table = line.trim_start().starts_with('|');
        if is_table && !previous_was_table {
            // A header row: this table is a metric table if its first cell says so.
            let first = line
                .trim()
                .trim_start_matches('|')
                .split('|')
                .next()
                .unwrap();
            in_metric_table = first.trim().eq_ignore_ascii_case("metric");
        } else if is_table && in_metric_table {
            let first = line
                .trim()
                .trim_start_matches('|')
                .split('|')
                .next()
                .unwrap();
            for token in first.split('`').skip(1).step_by(2) {
                let name: String = token
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name.starts_with("fix_") || name.starts_with("process_") {
                    names.push((name, i + 1));
                }
            }
        }
        previous_was_table = is_table;
    }
    names
}

/// What differs between a document's metric tables and the code, as readable lines.
fn differences(doc: &str, markdown: &str, code: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut documented = BTreeMap::new();
    for (name, line) in table_names(markdown) {
        match code_name_of(&name, code) {
            Some(c) => {
                documented.insert(c.clone(), line);
            }
            None => problems.push(format!(
                "{doc}:{line}: `{name}` is in a metric table, but the code defines no such metric"
            )),
        }
    }
    for c in code {
        if !documented.contains_key(c) {
            problems.push(format!(
                "{doc}: the code defines `{c}` (Prometheus: with its unit and `_total`), \
                 which no metric table of {doc} names"
            ));
        }
    }
    problems
}

#[test]
fn readme_and_dashboards_readme_tables_name_exactly_the_codes_metrics() {
    let code = code_names();
    let mut problems = Vec::new();
    for doc in ["README.md", "dashboards/README.md"] {
        problems.extend(differences(doc, &read(&root().join(doc)), &code));
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_metric_name_string_in_src_is_one_the_tables_are_checked_against() {
    let code = code_names();
    let mut files = vec![root().join("src")];
    let mut stray = Vec::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        for piece in read(&path).split('"').skip(1).step_by(2) {
            let is_name = piece.starts_with("fix_")
                && !piece.ends_with('_')
                && piece.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            if is_name && code_name_of(piece, &code).is_none() {
                stray.push(format!("{}: \"{piece}\"", path.display()));
            }
        }
    }
    assert!(
        stray.is_empty(),
        "metric names outside the lists the docs are checked against (add them to a \
         `names::ALL`):\n{}",
        stray.join("\n")
    );
}

#[test]
fn the_check_finds_a_missing_row_and_a_name_the_code_lacks() {
    let code = code_names();
    let table = "| metric | type |\n|---|---|\n| `fix_connections_total` | counter |\n\
                 | `fix_connections_gone_total` | counter |\n";
    let found = differences("t.md", table, &code);
    assert!(
        found
            .iter()
            .any(|p| p.contains("`fix_connections_gone_total`")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.contains("`fix_connections_active`")),
        "{found:?}"
    );
    assert!(
        !found.iter().any(|p| p.contains("`fix_connections`")),
        "{found:?}"
    );
    // Other tables (their first header cell is not `metric`) are not metric tables.
    let other = "| field | meaning |\n|---|---|\n| `fix_nothing` | x |\n";
    assert!(table_names(other).is_empty());
}
