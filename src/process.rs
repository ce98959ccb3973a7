//! The sidecar's own footprint, for the operators who must trust it to cost nothing: resident
//! memory and CPU time, read from `/proc/self/stat` by the procfs crate when a collection asks
//! (a scrape or an export), never on the poll path. Named after the OpenTelemetry semantic
//! conventions (`process.memory.usage`, `process.cpu.time`); on Prometheus they read
//! `process_memory_usage_bytes` and `process_cpu_time_seconds_total{cpu_mode}`.

use opentelemetry::metrics::Meter;

/// Instrument names (OpenTelemetry's; the Prometheus exporter writes `_` for `.` and adds the
/// unit and `_total`).
pub mod names {
    pub const MEMORY: &str = "process.memory.usage";
    pub const CPU_TIME: &str = "process.cpu.time";
    /// Every name above (the docs' metric tables are checked against these lists).
    pub const ALL: &[&str] = &[MEMORY, CPU_TIME];
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
    }
}
