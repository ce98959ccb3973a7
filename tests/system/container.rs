//! The container image (Containerfile, staged by `scripts/image.sh`) built with podman from
//! this build's binary, pulling nothing, and run on the host network as its non-root user:
//! `/metrics` counts real connections right; the image has no shell and runs as 65532.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::harness::{bin, connect_from, free_port, http_get, Downstream, Metrics};

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman is required (scripts/fetch-tools.sh installs it)")
}

fn ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes the test's container and image however the test ends.
struct Cleanup {
    container: String,
    image: String,
    dir: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "2", &self.container]);
        let _ = podman(&["rmi", "-f", &self.image]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `podman run` as this host allows it: runc, since crun refuses hosts whose cgroups are in
/// hybrid mode (v1 controllers with an empty v2 hierarchy, as here); resource limits stated,
/// since podman's defaults for root exceed what an unprivileged CI sandbox may set.
const RUN: [&str; 7] = [
    "run",
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=4096:4096",
];

#[test]
fn the_image_runs_unprivileged_on_the_host_network_and_counts_right() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pid = std::process::id();
    let cleanup = Cleanup {
        container: format!("fix-monitor-test-{pid}"),
        image: format!("localhost/fix-monitor-test:{pid}"),
        dir: std::env::temp_dir().join(format!("fix-monitor-image-{pid}")),
    };
    let stage = Command::new("bash")
        .arg(root.join("scripts/image.sh"))
        .arg("--stage-only")
        .arg(&cleanup.dir)
        .arg(bin())
        .status()
        .unwrap();
    assert!(stage.success(), "staging the image's root file system");
    ok(&[
        "build",
        "--pull=never",
        "-q",
        "-f",
        root.join("Containerfile").to_str().unwrap(),
        "-t",
        &cleanup.image,
        cleanup.dir.to_str().unwrap(),
    ]);
    assert_eq!(
        ok(&[
            "image",
            "inspect",
            "--format",
            "{{.Config.User}}",
            &cleanup.image
        ]),
        "65532:65532"
    );
    // No shell to run.
    let mut args = RUN.to_vec();
    args.extend(["--entrypoint", "/bin/sh", &cleanup.image, "-c", "true"]);
    let shell = podman(&args);
    assert!(!shell.status.success(), "the image has a shell");
    assert!(
        String::from_utf8_lossy(&shell.stderr).contains("no such file"),
        "{shell:?}"
    );

    // Real connections on the host's loopback, to an address of this test's own.
    let ip = format!("127.0.{}.{}", 60 + pid % 100, 2 + pid / 100 % 250);
    let downstream = Downstream::listen(&format!("{ip}:0"));
    let mut held: Vec<_> = (0..3)
        .map(|_| connect_from("127.0.0.1:0", downstream.addr))
        .collect();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (port, listen_at) = (downstream.addr.port().to_string(), listen.to_string());
    let mut args = RUN.to_vec();
    args.extend([
        "-d",
        "--network",
        "host",
        "--cap-drop",
        "all",
        "--security-opt",
        "no-new-privileges",
        "--read-only",
        "--name",
        &cleanup.container,
        &cleanup.image,
        "run",
        "--ip",
        &ip,
        "--target-port",
        &port,
        "--listen",
        &listen_at,
        "--interval",
        "200ms",
    ]);
    ok(&args);
    let target = downstream.addr.to_string();
    let wait = |want: (f64, f64, f64)| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = None;
        while Instant::now() < deadline {
            if let Ok((200, body)) = std::panic::catch_unwind(|| http_get(listen, "/metrics")) {
                let m = Metrics::parse(&body);
                let l = [("target", target.as_str())];
                let got = (
                    m.count("fix_connections_total", &l),
                    m.sum("fix_connections_closed_total", &l),
                    m.count("fix_connections_active", &l),
                );
                if got == want {
                    return m;
                }
                last = Some(got);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let logs = podman(&["logs", &cleanup.container]);
        panic!(
            "/metrics never showed (opened, closed, active) = {want:?}; last {last:?}; log:\n{}",
            String::from_utf8_lossy(&logs.stderr)
        );
    };
    wait((3.0, 0.0, 3.0));
    // One more, and one of the first three gone.
    held.push(connect_from("127.0.0.1:0", downstream.addr));
    held.remove(0);
    wait((4.0, 1.0, 3.0));
    // The new one gone: the only lifetime the sidecar knows (the others predate it).
    held.pop();
    let m = wait((4.0, 2.0, 2.0));
    assert_eq!(
        m.count(
            "fix_connection_duration_seconds_count",
            &[("target", &target)]
        ),
        1.0
    );
    let (code, health) = http_get(listen, "/health");
    assert_eq!(code, 200, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(
        health["source"], "netlink",
        "unprivileged netlink: {health}"
    );
    ok(&["stop", "-t", "10", &cleanup.container]);
}
