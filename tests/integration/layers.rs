//! The workspace's layering (issue 18): each crate may depend only on the crates below it,
//! `fix-monitor-ebpf`, `fix-monitor-core` <- `fix-monitor-kernel`, `fix-monitor-protocol` <-
//! `fix-monitor` <- `fix-monitor-test-support` (the eBPF programs' crate and core on no crate
//! of the project, kernel on those two, protocol on core alone: checked apart),
//! so data flows one way and a wrong-way import does not compile. The one exception: the
//! sidecar's tests use the test-support crate (a dev-dependency), which drives the sidecar. A dependency that points up, or a new member nobody
//! placed in the order, fails here, read from `cargo metadata` (the manifests, no build).

use std::process::Command;

/// Bottom first: a crate may use only those before it.
const LAYERS: [&str; 6] = [
    "fix-monitor-ebpf",
    "fix-monitor-core",
    "fix-monitor-kernel",
    "fix-monitor-protocol",
    "fix-monitor",
    "fix-monitor-test-support",
];

/// The test kit, which any crate's tests may use.
const TEST_KIT: &str = "fix-monitor-test-support";

#[test]
fn every_crate_depends_only_on_the_layers_below_it() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: Vec<&serde_json::Value> = meta["packages"].as_array().unwrap().iter().collect();
    let mut seen = Vec::new();
    for p in members {
        let name = p["name"].as_str().unwrap();
        let Some(level) = LAYERS.iter().position(|l| *l == name) else {
            panic!("workspace member {name} has no place in the layers: add it to LAYERS");
        };
        seen.push(name);
        // Every kind of dependency counts: a test or build script that reaches up is a
        // wrong-way import too.
        for d in p["dependencies"].as_array().unwrap() {
            let dep = d["name"].as_str().unwrap();
            if dep == TEST_KIT && d["kind"].as_str() == Some("dev") {
                continue;
            }
            if let Some(at) = LAYERS.iter().position(|l| *l == dep) {
                assert!(
                    at < level,
                    "{name} depends on {dep} ({} dependency), which is not below it: data flows \
                     {}",
                    d["kind"].as_str().unwrap_or("normal"),
                    LAYERS.join(" <- ")
                );
            }
        }
    }
    seen.sort();
    let mut want = LAYERS.to_vec();
    want.sort();
    assert_eq!(seen, want, "every layer is a workspace member");
}
