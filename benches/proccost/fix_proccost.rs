//! `fix-proccost`: what one walk of `/proc/*/fd` costs (`poll.process_lookup`), as the host's
//! open sockets grow (Linux).
//!
//! For each N in `--sockets` it holds N unrelated loopback sockets itself (N/2 connections, both
//! ends), then times `--rounds` walks that look for an inode no process holds: the walk that
//! reads every fd link on the host, the most a lookup can cost (a found owner ends the walk
//! earlier). Prints one JSON line per N: links and processes read, and the median and minimum
//! wall and CPU time of a walk (the calling thread's CPU clock, which includes the kernel's work
//! for the readlinks). Other processes' open files count too: the baseline is the host's own
//! (see `links` at N = 0).
//!
//! Side by side, what an operator would run instead: `ss -tnp`, which finds each socket's
//! process the same way (it reads every `/proc/PID/fd` link once per run). For each N it times
//! `--rounds` runs of `ss -Htnp` and of `ss -Htn` with a filter that matches no socket, so
//! that the difference is `ss`'s walk alone (CPU from `getrusage(RUSAGE_CHILDREN)`). `--no-ss`
//! leaves it out.
//!
//! ```text
//! fix-proccost --sockets 0,1000,10000 --rounds 5
//! ```

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::HashSet;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context};
    use fix_monitor::source::proc_owner::ProcOwners;

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

    fn children_cpu() -> Duration {
        // SAFETY: an all-zero rusage is valid for getrusage to fill.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to an rusage.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
        assert_eq!(rc, 0, "getrusage(RUSAGE_CHILDREN)");
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }

    /// Median CPU seconds of `rounds` runs of `ss ARGS` (each waited for).
    fn ss_cpu(args: &[&str], rounds: usize) -> anyhow::Result<f64> {
        let mut cpu = Vec::new();
        for _ in 0..rounds {
            let c0 = children_cpu();
            let out = std::process::Command::new("ss")
                .args(args)
                .output()
                .context("running ss (iproute2)")?;
            if !out.status.success() {
                bail!("ss {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            cpu.push((children_cpu() - c0).as_secs_f64());
        }
        Ok(median(&mut cpu))
    }

    fn median(v: &mut [f64]) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    fn min(v: &[f64]) -> f64 {
        v.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// Lifts the soft open-file limit to the hard one (10k sockets need more than 1024).
    fn raise_nofile() {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid pointers to an rlimit for get/setrlimit.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
                rl.rlim_cur = rl.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            }
        }
    }

    pub fn main() -> anyhow::Result<()> {
        let (mut counts, mut rounds, mut with_ss) = (vec![0usize, 1000, 10000], 5usize, true);
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--sockets" => {
                    counts = value()?
                        .split(',')
                        .map(|n| n.trim().parse())
                        .collect::<Result<_, _>>()?
                }
                "--rounds" => rounds = value()?.parse()?,
                "--no-ss" => with_ss = false,
                other => bail!("unknown argument {other}"),
            }
        }
        if rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        // The project's limit for one process is 20,000 open files.
        if counts.iter().any(|n| *n > 18_000) {
            bail!("at most 18000 sockets (a process may hold at most 20,000 open files)");
        }
        raise_nofile();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let at = listener.local_addr()?;
        let mut held: Vec<TcpStream> = Vec::new();
        // No process holds inode 1 as a socket (it is the root of some file system at most):
        // the walk reads every link and finds nothing.
        let absent: HashSet<u64> = [1].into();
        let mut owners = ProcOwners::new();
        for n in counts {
            while held.len() < n {
                held.push(TcpStream::connect(at)?);
                held.push(listener.accept()?.0);
            }
            held.truncate(n);
            let (mut wall, mut cpu) = (Vec::new(), Vec::new());
            owners.find(&absent); // untimed: settle the dentry caches
            for _ in 0..rounds {
                let (w0, c0) = (Instant::now(), thread_cpu());
                let found = owners.find(&absent);
                let (c1, w1) = (thread_cpu(), Instant::now());
                if !found.is_empty() {
                    bail!("inode 1 was found as a socket: {found:?}");
                }
                wall.push((w1 - w0).as_secs_f64());
                cpu.push((c1 - c0).as_secs_f64());
            }
            // A filter no socket matches: the output is empty either way.
            let none = "dst 127.0.0.254:1";
            let (ss_p, ss_plain) = if with_ss {
                (
                    Some(ss_cpu(&["-Htnp", none], rounds)?),
                    Some(ss_cpu(&["-Htn", none], rounds)?),
                )
            } else {
                (None, None)
            };
            println!(
                "{}",
                serde_json::json!({
                    "ss_p_cpu_median_s": ss_p,
                    "ss_cpu_median_s": ss_plain,
                    "sockets": n,
                    "rounds": rounds,
                    "links": owners.last.links,
                    "processes": owners.last.processes,
                    "unreadable": owners.last.unreadable,
                    "wall_median_s": median(&mut wall),
                    "wall_min_s": min(&wall),
                    "cpu_median_s": median(&mut cpu),
                    "cpu_min_s": min(&cpu),
                })
            );
        }
        Ok(())
    }
}

fn main() {
    #[cfg(target_os = "linux")]
    if let Err(e) = imp::main() {
        eprintln!("fix-proccost: {e:#}");
        std::process::exit(1);
    }
    #[cfg(not(target_os = "linux"))]
    {
        eprintln!("fix-proccost: Linux only");
        std::process::exit(1);
    }
}
