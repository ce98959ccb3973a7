//! The sidecar's own footprint, for the operators who must trust it to cost nothing: resident
//! memory, CPU time and open files, read from `/proc/self` by the procfs crate when a collection
//! asks (a scrape or an export), never on the poll path. Memory and CPU are named after the
//! OpenTelemetry semantic conventions (`process.memory.usage`, `process.cpu.time`), open files
//! as Prometheus's client libraries name them (`process.open_fds`, `process.max_fds`: see
//! [`names::OPEN_FDS`]); on Prometheus they read `process_memory_usage_bytes`,
//! `process_cpu_time_seconds_total{cpu_mode}`, `process_open_fds` and `process_max_fds`.

use opentelemetry::metrics::Meter;

/// Instrument names (OpenTelemetry's; the Prometheus exporter writes `_` for `.` and adds the
/// unit and `_total`).
pub mod names {
    pub const MEMORY: &str = "process.memory.usage";
    pub const CPU_TIME: &str = "process.cpu.time";
    /// Open files and their limit, under the names Prometheus's client libraries give them
    /// (`process_open_fds`, `process_max_fds`): the semantic convention's
    /// `process.open_file_descriptor.count` would read `..._count` on Prometheus, a suffix
    /// reserved for histograms and summaries, and has no limit beside it.
    pub const OPEN_FDS: &str = "process.open_fds";
    /// The soft `RLIMIT_NOFILE`.
    pub const MAX_FDS: &str = "process.max_fds";
    /// Every name above (the docs' metric tables are checked against these lists).
    pub const ALL: &[&str] = &[MEMORY, CPU_TIME, OPEN_FDS, MAX_FDS];
}

/// Registers the process instruments on `meter`. Linux only; elsewhere a no-op.
pub fn register(meter: &Meter) {
    #[cfg(target_os = "linux")]
    linux::register(meter);
    #[cfg(not(target_os = "linux"))]
    let _ = meter;
}

#[cfg(target_os = "linux")]
mod linux {
    use opentelemetry::metrics::Meter;
    use opentelemetry::KeyValue;

    use super::names;

    pub fn register(meter: &Meter) {
        let page = procfs::page_size();
        let ticks = procfs::ticks_per_second() as f64;
        meter
            .u64_observable_gauge(names::MEMORY)
            .with_unit("By")
            .with_description("Resident memory of the fix-monitor process")
            .with_callback(move |obs| {
                if let Ok(stat) = procfs::process::Process::myself().and_then(|p| p.stat()) {
                    obs.observe(stat.rss * page, &[]);
                }
            })
            .build();
        meter
            .f64_observable_counter(names::CPU_TIME)
            .with_unit("s")
            .with_description("CPU time used by the fix-monitor process")
            .with_callback(move |obs| {
                if let Ok(stat) = procfs::process::Process::myself().and_then(|p| p.stat()) {
                    obs.observe(
                        stat.utime as f64 / ticks,
                        &[KeyValue::new("cpu.mode", "user")],
                    );
                    obs.observe(
                        stat.stime as f64 / ticks,
                        &[KeyValue::new("cpu.mode", "system")],
                    );
                }
            })
            .build();
        meter
            .u64_observable_gauge(names::OPEN_FDS)
            .with_description("File descriptors the fix-monitor process holds open")
            .with_callback(move |obs| {
                if let Ok(n) = procfs::process::Process::myself().and_then(|p| p.fd_count()) {
                    obs.observe(n as u64, &[]);
                }
            })
            .build();
        meter
            .u64_observable_gauge(names::MAX_FDS)
            .with_description(
                "The most file descriptors the fix-monitor process may hold (its soft RLIMIT_NOFILE)",
            )
            .with_callback(move |obs| {
                if let Some(n) = open_files_limit() {
                    obs.observe(n, &[]);
                }
            })
            .build();
    }

    /// The soft `RLIMIT_NOFILE`; `None` when unlimited.
    fn open_files_limit() -> Option<u64> {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) };
        (r == 0 && l.rlim_cur != libc::RLIM_INFINITY).then_some(l.rlim_cur)
    }
}
