//! `fix-monitor generate`: the man page and shell completions come from the clap definitions,
//! so they name what the binary's own `--help` names. The lists checked here are read from the
//! real binary's help, not written down again.

use std::io::Write;
use std::process::Stdio;

use crate::harness::*;

fn stdout_of(args: &[&str]) -> String {
    let o = command().args(args).output().expect("running fix-monitor");
    assert!(
        o.status.success(),
        "{args:?}: {:?}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("UTF-8 output")
}

/// The commands `fix-monitor --help` lists (without `help`).
fn commands() -> Vec<String> {
    let help = stdout_of(&["--help"]);
    let listed = help
        .split("Commands:")
        .nth(1)
        .expect("a Commands: section")
        .split("\n\n")
        .next()
        .unwrap();
    let names: Vec<String> = listed
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("    "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 6, "too few commands in --help: {names:?}");
    names
}

/// Every long flag `fix-monitor run --help` shows: the first `--name` of each option line
/// (clap indents option lines by at most 6 spaces, their help by more).
fn run_flags() -> Vec<String> {
    let mut flags: Vec<String> = stdout_of(&["run", "--help"])
        .lines()
        .filter(|l| {
            let indent = l.len() - l.trim_start().len();
            (1..=6).contains(&indent) && l.trim_start().starts_with('-')
        })
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("--")))
        .map(|w| w.trim_end_matches(',').to_owned())
        .collect();
    flags.sort();
    flags.dedup();
    assert!(
        flags.iter().any(|f| f == "--web.config.file") && flags.len() >= 14,
        "{flags:?}"
    );
    flags
}

/// The man page with roff's escaped hyphens made plain.
fn man() -> String {
    stdout_of(&["generate", "man"]).replace("\\-", "-")
}

/// The text of one `.SH` section of the page.
fn section<'a>(page: &'a str, heading: &str) -> &'a str {
    let start = page
        .find(&format!(".SH {heading}\n"))
        .unwrap_or_else(|| panic!("no section {heading} in the man page"));
    let body = &page[start + 1..];
    &body[..body.find("\n.SH ").unwrap_or(body.len())]
}

#[test]
fn man_page_names_every_command_and_every_flag_of_run() {
    let page = man();
    assert!(
        page.starts_with(".ie") || page.contains(".TH fix-monitor 1"),
        "{page:.200}"
    );
    for cmd in commands() {
        let s = section(&page, &format!("\"FIX-MONITOR {}\"", cmd.to_uppercase()));
        assert!(
            s.contains(&format!("fix-monitor {cmd}")),
            "the section of {cmd} has no synopsis:\n{s}"
        );
    }
    let run = section(&page, "\"FIX-MONITOR RUN\"");
    for flag in run_flags() {
        assert!(
            run.contains(&format!("\\fB{flag}\\fR")),
            "the man page's run section lacks {flag}"
        );
    }
}

#[test]
fn bash_completions_parse_and_complete_run_flags() {
    let script = stdout_of(&["generate", "completions", "bash"]);
    for flag in run_flags() {
        assert!(script.contains(&flag), "bash completions lack {flag}");
    }
    for cmd in commands() {
        assert!(script.contains(&cmd), "bash completions lack {cmd}");
    }
    let mut bash = std::process::Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash");
    bash.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let o = bash.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn every_shell_gets_completions_and_an_unknown_one_is_a_usage_error() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout_of(&["generate", "completions", shell]);
        assert!(
            script.contains("fix-monitor") && script.contains("--target-port"),
            "{shell}: {script:.300}"
        );
    }
    let o = command()
        .args(["generate", "completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64), "{o:?}");
}
