//! What a bad configuration looks like to the user: every problem at once, each naming the key,
//! the value, where the value came from and what would have been accepted.

use std::fmt;
use std::path::PathBuf;

/// Where a setting's value came from, lowest layer first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The configuration file at this path.
    File(PathBuf),
    /// This environment variable (`FIX_MONITOR_POLL__INTERVAL`, `DOWNSTREAM_IP`, ...).
    Env(String),
    /// This command-line flag (`--interval`, or a short description when several flags built
    /// the value, as `--min-port`/`--max-port` do for a port range).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// The kind of a configuration problem, for callers (and tests) that need more than the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A key (file, `FIX_MONITOR_*` variable) that the schema does not have.
    UnknownKey,
    /// A value of the wrong type or outside what is allowed.
    InvalidValue,
    /// A required key is absent (a target without `address`).
    MissingValue,
    /// No target is configured anywhere.
    NoTargets,
    /// Two targets share a name, so their metrics could not be told apart.
    DuplicateName,
    /// Settings that contradict each other, or one that needs another (`--min-port` without
    /// `--ip`).
    Conflict,
    /// A flag of the original tools that fix-monitor does not accept.
    RejectedFlag,
    /// The configuration file cannot be read or is not valid TOML.
    File,
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub kind: ErrorKind,
    /// The configuration key (`targets[1].local_ports`), or when no key applies, the flag,
    /// variable or file the problem is about.
    pub key: String,
    /// The offending value as written (TOML-like), when there is one.
    pub value: Option<String>,
    /// Where the offending value came from.
    pub origin: Option<Origin>,
    /// What is wrong, and what would be accepted.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(kind: ErrorKind, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            kind,
            key: key.into(),
            value: None,
            origin: None,
            message: message.into(),
        }
    }

    pub(crate) fn value(mut self, value: impl Into<String>) -> Self {
        self.value = Some(value.into());
        self
    }

    pub(crate) fn origin(mut self, origin: impl Into<Option<Origin>>) -> Self {
        self.origin = origin.into();
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)?;
        if let Some(value) = &self.value {
            // `--port 9100` reads as typed; `poll.interval = "0s"` as in the file.
            let flag = self.key.starts_with("--");
            write!(f, "{}{value}", if flag { " " } else { " = " })?;
        }
        match &self.origin {
            // The key already is the variable or flag (DOWNSTREAM_PORT, --min-port).
            Some(Origin::Env(name) | Origin::Flag(name)) if *name == self.key => {}
            Some(origin) => write!(f, " (from {origin})")?,
            None => {}
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one attempt to load the configuration (never empty). Displayed as one
/// problem per line, so that an operator can fix them all in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    pub(crate) fn new(errors: Vec<ConfigError>) -> Self {
        debug_assert!(!errors.is_empty());
        ConfigErrors(errors)
    }
}

/// The problems, as a slice: `iter()`, `len()`, indexing.
impl std::ops::Deref for ConfigErrors {
    type Target = [ConfigError];

    fn deref(&self) -> &[ConfigError] {
        &self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Some messages (TOML syntax errors) span lines; indent them under their bullet.
        let bullet = |e: &ConfigError| e.to_string().lines().collect::<Vec<_>>().join("\n    ");
        let bullets = self.0.iter().map(|e| format!("  - {}", bullet(e)));
        f.write_str(&bullets.collect::<Vec<_>>().join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}
