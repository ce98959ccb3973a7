//! The start-up step: the I/O that the configuration names but, being data, does not do
//! itself. It reads the endpoint's web configuration file (and the certificates and keys in
//! it), checks that the state directory could be written, and that the OTLP TLS files can be
//! read, so that none of them fails the first scrape, save or export instead.
//!
//! Its problems read like the configuration's (key, value, origin, what is allowed, one line
//! each) and come in the same list: the binary loads with
//! `config::load_checked(args, startup::prepare)`, and exits with EX_USAGE on any of them.
//!
//! It also withholds the exporter libraries' own variables from them
//! ([`withhold_library_env`]), so that only what the configuration says takes effect.

use std::path::Path;
use std::sync::Arc;

use crate::config::{ConfigError, ConfigErrors, ErrorKind, Loaded, Origin};
use crate::config::{ALLOWED_PEM, ALLOWED_STATE_DIR};
use crate::export::web_config::{self, WebConfig};

/// What the start-up step read, for [`crate::app::run`].
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// The endpoint's web configuration (`prometheus.web_config`); without one, plain HTTP
    /// and no auth.
    pub web: Arc<WebConfig>,
}

/// Reads and checks what `loaded` names on the file system; every problem at once.
pub fn prepare(loaded: &Loaded) -> Result<Resources, ConfigErrors> {
    let settings = &loaded.settings;
    let mut errors = Vec::new();
    let mut problem = |kind, key: &str, path: &Path, message: String| {
        let value = serde_json::to_string(&path.display().to_string()).expect("a string");
        let origin = loaded.origin(key).cloned().unwrap_or(Origin::Default);
        errors.push(
            ConfigError::new(kind, key, message)
                .value(value)
                .origin(origin),
        );
    };

    let mut resources = Resources::default();
    if let Some(path) = &settings.prometheus.web_config {
        // Each problem names the key inside the file in its message.
        match web_config::load(path) {
            Ok(web) => resources.web = Arc::new(web),
            Err(problems) => problems.into_iter().for_each(|p| {
                problem(
                    ErrorKind::InvalidValue,
                    "prometheus.web_config",
                    path,
                    p.to_string(),
                )
            }),
        }
    }
    if let Some(dir) = &settings.state.dir {
        // A state directory must be writable now (or creatable: it is created at start), not
        // fail the first save. Checking creates nothing.
        if let Err(e) = crate::persist::StateDir::check_could_write(dir) {
            let message = format!("cannot be written: {e}; {ALLOWED_STATE_DIR}");
            problem(ErrorKind::InvalidValue, "state.dir", dir, message);
        }
    }
    // Only when push is on: a disabled exporter's inherited `OTEL_*` files must not stop the
    // sidecar.
    let tls = &settings.otlp.tls;
    let files = [
        ("otlp.tls.ca_file", &tls.ca_file),
        ("otlp.tls.cert_file", &tls.cert_file),
        ("otlp.tls.key_file", &tls.key_file),
    ];
    for (key, path) in files.into_iter().filter(|_| settings.otlp.enabled) {
        let Some(path) = path else { continue };
        if let Err(message) = readable_file(path) {
            problem(ErrorKind::InvalidValue, key, path, message);
        }
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(ConfigErrors::new(errors))
    }
}

/// The prefixes of the variables that opentelemetry-otlp and the SDK's `PeriodicReader` read by
/// themselves when an exporter is built (0.33: endpoint, protocol, headers, timeout,
/// compression, insecure, per signal and generic; the export interval). fix-monitor reads the
/// ones it supports in [`crate::config::load_checked`] and passes every value to the exporter
/// explicitly.
pub const LIBRARY_ENV_PREFIXES: &[&str] = &["OTEL_EXPORTER_OTLP_", "OTEL_METRIC_EXPORT_"];

/// Removes the [`LIBRARY_ENV_PREFIXES`] variables from the process environment, so that the
/// exporter cannot act on one behind the configuration's back (it would, for instance, merge
/// `OTEL_EXPORTER_OTLP_HEADERS` into every request): what `fix-monitor config` shows is all
/// that takes effect. Returns the variables removed (a reload reads them again, as the start
/// did: `config::load_checked_with`). Call after [`crate::config::load_checked`] and before any
/// thread is started (the binary does it first thing); the environment is process-global.
pub fn withhold_library_env() -> Vec<(String, String)> {
    let vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(name, value)| {
            let value = value.to_string_lossy().into_owned();
            Some((name.into_string().ok()?, value))
        })
        .filter(|(name, _)| LIBRARY_ENV_PREFIXES.iter().any(|p| name.starts_with(p)))
        .collect();
    for (name, _) in &vars {
        std::env::remove_var(name);
    }
    vars
}

/// A TLS file named in the configuration must be there now, not fail the first export an
/// interval later.
fn readable_file(path: &Path) -> Result<(), String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot be read: {e}; {ALLOWED_PEM}"))?;
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("is not a regular file; {ALLOWED_PEM}")),
        Err(e) => Err(format!("cannot be read: {e}; {ALLOWED_PEM}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_toml_str;

    fn prepare_toml(toml: &str) -> Result<Resources, ConfigErrors> {
        let loaded = parse_toml_str(toml, "/etc/x.toml").expect("a valid configuration");
        prepare(&loaded)
    }

    #[test]
    fn nothing_named_nothing_read() {
        let r = prepare_toml("[[targets]]\naddress = \"10.0.0.5\"\n").unwrap();
        assert!(r.web.tls.is_none() && r.web.users.is_empty());
    }

    #[test]
    fn its_problems_come_in_one_list_with_the_configurations() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let args = crate::config::ConfigArgs {
            ip: Some("10.0.0.5".into()),
            interval: Some("0".into()),
            state_dir: Some(file.join("state").display().to_string()),
            ..Default::default()
        };
        let env: [(&str, &str); 0] = [];
        let path = dir.path().join("absent.toml");
        let e = crate::config::load_from_checked(&args, env, path, prepare).unwrap_err();
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["poll.interval", "state.dir"], "{e}");
        assert_eq!(e[1].origin, Some(Origin::Flag("--state-dir".into())));
    }

    #[test]
    fn every_file_problem_is_reported_at_once_with_key_value_and_origin() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let web = dir.path().join("web.yml");
        std::fs::write(&web, "basic_auth_users:\n  alice: hunter2\n").unwrap();
        let missing = dir.path().join("ca.pem");
        let toml = format!(
            "[[targets]]\naddress = \"10.0.0.5\"\n[state]\ndir = {:?}\n[prometheus]\n\
             web_config = {:?}\n[otlp]\nendpoint = \"https://c:4317\"\n[otlp.tls]\n\
             ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
            file.join("state"),
            web,
            missing,
            dir.path(),
            file,
        );
        let e = prepare_toml(&toml).unwrap_err();
        let find = |key: &str| {
            e.iter()
                .find(|e| e.key == key)
                .unwrap_or_else(|| panic!("no error for {key} in:\n{e}"))
        };
        let from_file = Some(Origin::File("/etc/x.toml".into()));
        let state = find("state.dir");
        assert_eq!(state.origin, from_file);
        assert!(state.message.contains("cannot be written"), "{state}");
        let web = find("prometheus.web_config");
        assert!(web.message.contains("is not a bcrypt hash"), "{web}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let ca = find("otlp.tls.ca_file");
        assert_eq!((ca.kind, &ca.origin), (ErrorKind::InvalidValue, &from_file));
        assert!(ca.message.contains("cannot be read") && ca.message.contains("PEM"));
        assert!(find("otlp.tls.cert_file")
            .message
            .contains("not a regular file"));
        assert_eq!(e.len(), 4, "{e}");
    }
}
