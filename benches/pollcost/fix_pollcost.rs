//! `fix-pollcost`: what asking for `tcp_info` adds to one netlink poll (Linux; scripts/bench.sh).
//!
//! Opens the netlink source as the sidecar does for one target, then polls it `--rounds` times
//! in each of two ways, alternately: with `INET_DIAG_INFO` in the request (what the sidecar
//! does) and without (what it did before session health). Each timed poll follows an idle
//! `--gap`, as the sidecar's polls do (a poll after a pause finds the socket table out of the
//! CPU caches and costs more than a back-to-back one). Prints one JSON line: per mode the median
//! and minimum wall and CPU time of a poll (the calling thread's CPU clock, which includes the
//! kernel's work for the dump) and the sockets found.
//!
//! ```text
//! fix-pollcost --target 127.0.0.2:7001 --min-port 20000 --max-port 29999 --rounds 20 --gap-ms 250
//! ```

#[cfg(target_os = "linux")]
mod imp {
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context};
    use fix_monitor::source::netlink::NetlinkSource;
    use fix_monitor::source::Source;
    use fix_monitor::target::{PortRange, Target, Targets};

    struct Args {
        target: std::net::SocketAddr,
        ports: PortRange,
        rounds: usize,
        gap: Duration,
    }

    fn args() -> anyhow::Result<Args> {
        let mut target = None;
        let (mut start, mut end) = (1, 65535);
        let (mut rounds, mut gap) = (20, 250);
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--target" => target = Some(value()?.parse()?),
                "--min-port" => start = value()?.parse()?,
                "--max-port" => end = value()?.parse()?,
                "--rounds" => rounds = value()?.parse()?,
                "--gap-ms" => gap = value()?.parse()?,
                other => bail!("unknown argument {other}"),
            }
        }
        Ok(Args {
            target: target.context("--target IP:PORT is required")?,
            ports: PortRange { start, end },
            rounds,
            gap: Duration::from_millis(gap),
        })
    }

    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for the call to fill.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    #[derive(Default)]
    struct Samples {
        wall: Vec<f64>,
        cpu: Vec<f64>,
        found: usize,
    }

    fn median(v: &mut [f64]) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    fn min(v: &[f64]) -> f64 {
        v.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn main() -> anyhow::Result<()> {
        let a = args()?;
        let net = ipnet::IpNet::from(a.target.ip());
        let targets = Targets::new(vec![Target {
            name: "bench".into(),
            net,
            port: Some(a.target.port()),
            local_ports: Some(a.ports),
            heartbeat: None,
            stale_after: None,
        }]);
        let mut source = NetlinkSource::open(&targets)?;
        let mut out = Vec::new();
        let mut modes = [(false, Samples::default()), (true, Samples::default())];
        // One untimed poll each, to settle buffers.
        for (info, _) in &modes {
            source.set_tcp_info(*info);
            source.poll(&mut out)?;
        }
        for _ in 0..a.rounds {
            for (info, s) in modes.iter_mut() {
                source.set_tcp_info(*info);
                std::thread::sleep(a.gap);
                let (w0, c0) = (Instant::now(), thread_cpu());
                source.poll(&mut out)?;
                let (c1, w1) = (thread_cpu(), Instant::now());
                s.wall.push((w1 - w0).as_secs_f64());
                s.cpu.push((c1 - c0).as_secs_f64());
                s.found = out.len();
                if *info && out.iter().any(|e| e.health.is_none()) {
                    bail!("a socket without tcp_info");
                }
            }
        }
        let mut json = serde_json::Map::new();
        json.insert("rounds".into(), a.rounds.into());
        json.insert("gap_s".into(), a.gap.as_secs_f64().into());
        json.insert("mode".into(), source.mode().as_str().into());
        for (info, s) in modes.iter_mut() {
            let key = if *info { "with_tcp_info" } else { "without" };
            json.insert(
                key.into(),
                serde_json::json!({
                    "wall_median_s": median(&mut s.wall),
                    "wall_min_s": min(&s.wall),
                    "cpu_median_s": median(&mut s.cpu),
                    "cpu_min_s": min(&s.cpu),
                    "found": s.found,
                }),
            );
        }
        println!("{}", serde_json::Value::Object(json));
        Ok(())
    }
}

fn main() {
    #[cfg(target_os = "linux")]
    if let Err(e) = imp::main() {
        eprintln!("fix-pollcost: {e:#}");
        std::process::exit(1);
    }
    #[cfg(not(target_os = "linux"))]
    {
        eprintln!("fix-pollcost: Linux only");
        std::process::exit(1);
    }
}
