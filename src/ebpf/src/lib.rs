//! fix-monitor's eBPF programs and their loader (issue 19).
//!
//! # Layout
//! - `bpf/fix_monitor.bpf.c`: the kernel programs in restricted C with CO-RE (libbpf
//!   conventions): a BTF tracepoint on `sock:inet_sock_set_state` that gives a watched socket
//!   socket-local storage and writes its state changes to a ring buffer; `tcp:tcp_receive_reset`,
//!   `tcp:tcp_send_reset` (with the kernel's reset reason) and `tcp:tcp_retransmit_skb` that
//!   update that storage; the health pass (below); and a TCP iterator (`iter/tcp`) that adopts
//!   sessions that existed before the load. `bpf/fix_monitor.h` holds the shared records.
//! - `bpf/fix_monitor.bpf.o`: the compiled object, committed so `cargo build` needs no clang;
//!   `build-bpf.sh` rebuilds it and `build-bpf.sh --check` fails when it differs from its source.
//! - `types`: the shared records mirrored in Rust (checked against the object's BTF);
//!   [`targets`]: a target list as LPM-trie entries and port rules (pure); [`model`]: state
//!   changes and health as Rust values (pure); this file: [`Monitor`], which loads, attaches
//!   and reads; [`error`]: what can go wrong, naming the missing capability or kernel feature.
//!
//! # The health pass
//! Where the kernel takes it, an iterator over the socket-local storage map
//! (`iter/bpf_sk_storage_map`) writes each watched session's health from `tcp_sock`. Some
//! kernels refuse map-element iterators at load (EPERM, seen on the 6.18 sandbox kernel these
//! tests run on, for `bpf_map_elem`, `sockmap` and `bpf_sk_storage_map` alike, while `tcp`,
//! `task` and `bpf_map` iterators load); then the pass runs `live_pass` with
//! BPF_PROG_TEST_RUN, which walks a table of watched, established sockets kept by the state
//! tracepoint (an array of slots, walked up to the last slot ever taken; a freed slot is taken
//! again first) and reads each `tcp_sock` through `bpf_rdonly_cast` (fault-safe loads), checking
//! the socket cookie so that a freed or reused socket is never reported. It writes only the
//! sessions whose record changed since it last wrote them (times travel as the kernel's jiffies
//! stamps, so an idle session's record does not change); the others' kept records stand, their
//! times brought up to the pass's clock, and one pass in 60 writes every session. A settled
//! session that nothing touched is not even read: the pass first compares a few fields that
//! move with every packet, timer, read or write of the socket (`tcp_mstamp`, `copied_seq`,
//! `write_seq`, the chrono, the state; `struct seen` in `bpf/fix_monitor.h`) with what it saw
//! last, and skips the other thirty-odd loads, which cost most of the pass in cache misses. Its output
//! ring (256 KiB, 1,310 records) is read after each run; a run that fills it stops there and
//! the next starts from that slot, so any number of sessions fits a small ring.
//! [`HealthWalk`] says which one a [`Monitor`] uses, and why.
//!
//! # Why libbpf-rs and not aya
//! Both are maintained and build on stable Rust. The programs are C with CO-RE, so the loader
//! must be the reference implementation of libbpf's object conventions: CO-RE relocations of
//! every kind (including bitfields and kernel type ids), `__kconfig` externs (`CONFIG_HZ`,
//! needed to turn the kernel's jiffies into milliseconds as `tcp_get_info()` does), kfunc
//! externs (`bpf_rdonly_cast`), `tp_btf` programs, and iterators attached to a map. libbpf-rs
//! is libbpf itself (vendored by `libbpf-sys` and built with the C compiler `cc` finds, with
//! libelf and zlib; the `static` feature links those statically): `Program::attach_iter(map_fd)`
//! attaches `iter/bpf_sk_storage_map` to the storage map, `libbpf_rs::Iter` reads an iterator,
//! `Program::test_run` runs the fallback pass, `RingBufferBuilder` reads the ring buffers, and
//! `MapCore::update` writes the LPM trie. aya's `Iter` program (0.13) attaches without a map,
//! so the storage-map iterator would need our own `bpf_link_create`, and its support for
//! libbpf's kconfig and kfunc externs in C objects is narrower. Nothing here parses BTF, tracefs
//! or ring-buffer memory by hand, and nothing mounts a file system: `tp_btf` programs attach by
//! BTF id, without tracefs.
//!
//! # Cost
//! A state change costs one storage lookup for every TCP socket on the host, and the LPM
//! lookup only when a socket connects or becomes ESTABLISHED without storage. The health pass
//! costs per watched session (on the fallback, per slot of the live table up to the most
//! sessions watched at once: freed slots are taken again first), whatever else the host holds;
//! `examples/health_cost.rs` measures it.

mod drain;
pub mod error;
pub mod model;
pub mod targets;
mod types;

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libbpf_rs::{
    Link, MapCore, MapFlags, MapHandle, Object, ObjectBuilder, RingBuffer, RingBufferBuilder,
};

pub use error::{Error, Feature, FEATURES};
pub use model::{Closer, Counters, Health, StateChange};
pub use targets::{TargetError, TargetSpec};

use model::{CloseJoiner, Record};
use types::{PassClock, Pod, RawEvent, RawHealth, Settings, TargetKey, MAX_RULES};

/// The compiled programs (see `build-bpf.sh`).
pub const OBJECT: &[u8] = include_bytes!("../bpf/fix_monitor.bpf.o");

/// How long a close event waits for a RST the kernel sends right after it (same system call).
const CLOSE_HOLD_NS: u64 = 5_000_000;

/// `CNT_LIVE_CHANGES` of `enum counter` (`fix_monitor.h`).
const CNT_LIVE_CHANGES: u32 = 7;

/// The bit `live_pass` sets in its return value when it stopped because its ring was full.
const RUN_STOPPED: u32 = 0x8000_0000;

/// Most runs of `live_pass` in one pass: each run starts where the last stopped, so the live
/// table's 16,384 slots take at most 13 (the 256 KiB ring holds 1,310 records); a margin.
const MAX_PASS_RUNS: u32 = 32;

/// The live table's slots (`LIVE_SLOTS` in the programs).
const LIVE_SLOTS: u32 = 16_384;

/// Every this many live-table passes, one writes every session rather than the changed ones,
/// so that the kept records are rebuilt from the kernel's whole table (see [`Monitor::health`]).
const WRITE_ALL_EVERY: u32 = 60;

/// What to load with.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The network namespace whose sockets are watched, by cookie; `None`: the caller's own.
    /// `Some(0)` watches every namespace.
    pub netns_cookie: Option<u64>,
}

/// The kernel programs' own counters, summed over CPUs (`enum counter` in the header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// TCP state changes seen by `on_state` (`CNT_SEEN`): every TCP socket of the host, in
    /// every network namespace, watched or not.
    pub seen: u64,
    /// Sockets that began to be watched (`CNT_MATCHED`): storage created for a socket that
    /// matched a target in a wanted namespace, whether at connect, at ESTABLISHED or by the
    /// initial scan.
    pub matched: u64,
    /// Sockets that matched a target but belong to a network namespace not watched, so were
    /// dropped (`CNT_OTHER_NETNS`); counted at each change that could start a watch, so one
    /// socket may count more than once.
    pub other_netns: u64,
    /// Records written to the event ring buffer (`CNT_EMITTED`): state changes and
    /// reset-after-close records.
    pub emitted: u64,
    /// Event records dropped because the 256 KiB ring buffer was full (`CNT_LOST`): state
    /// changes [`Monitor::poll_events`] will never return.
    pub lost: u64,
    /// Sockets that matched but could not get storage (`CNT_NO_STORAGE`,
    /// `bpf_sk_storage_get()` failed, normally for lack of memory): not watched; like
    /// `other_netns`, one socket may count more than once.
    pub no_storage: u64,
    /// Sessions the live table (16,384 slots) had no room for: no health on the fallback.
    pub live_full: u64,
    /// Entries put in or taken out of the live table (`CNT_LIVE_CHANGES`): a fallback pass
    /// that needed more than one run is whole only if none changed meanwhile.
    pub live_changes: u64,
    /// Sessions whose `tcp_sock` the live-table pass read in full (`CNT_HEALTH_READS`): the
    /// others were left unread because nothing that changes their record had moved (no packet, no
    /// read or write by the application, no state change or retransmission since the pass
    /// last read them, and their last packet was already 10 ms old then).
    pub health_reads: u64,
}

/// How the health pass walks the watched sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthWalk {
    /// The iterator over the socket-local storage map: cost per watched session only.
    StorageMap,
    /// The kernel refused map-element iterators (`why`: libbpf's line), so the pass runs
    /// `live_pass` (BPF_PROG_TEST_RUN), which walks the live table of watched, established
    /// sockets and reads each `tcp_sock` with probe reads: also per watched session only.
    LiveTable {
        /// libbpf's log line for the refused `dump_health` program (the first line that
        /// names it), trimmed.
        why: String,
    },
}

/// The maps user space reads or writes, as owned handles.
struct Maps {
    targets: MapHandle,
    rules: MapHandle,
    settings: MapHandle,
    counters: MapHandle,
    live: MapHandle,
    live_top: MapHandle,
    clock: MapHandle,
}

/// The loaded and attached programs.
///
/// Field order is drop order: the drain thread, then the ring buffers and links, go before
/// the object.
pub struct Monitor {
    /// Reads the event ring when the programs say it is half full (see `drain`); `None` once
    /// [`Monitor::set_event_drain`] stopped it.
    drainer: Option<drain::Drainer>,
    /// The event ring, read by the drain thread and by [`Monitor::poll_events`].
    ring: Arc<Mutex<RingBuffer<'static>>>,
    queue: Arc<Mutex<Vec<Record>>>,
    joiner: CloseJoiner,
    /// The storage-map iterator, where the kernel takes it.
    health_link: Option<Link>,
    /// `live_pass`'s output ring and what its reader collected.
    health_ring: RingBuffer<'static>,
    health_records: Arc<Mutex<Vec<RawHealth>>>,
    /// Each session's last record, by socket cookie: the live-table pass writes only the
    /// sessions whose record changed. In cookie order, so that a caller that holds its
    /// sessions in that order reads them all in one walk ([`Monitor::sessions_health`]).
    kept: std::collections::BTreeMap<u64, RawHealth>,
    /// The last pass's clock.
    clock: PassClock,
    /// Live-table passes since one wrote every session; `u32::MAX` asks the next to.
    since_all: u32,
    /// See [`Monitor::last_pass_whole`], [`Monitor::last_pass_runs`] and
    /// [`Monitor::last_pass_written`].
    pass_whole: bool,
    pass_runs: u32,
    pass_written: usize,
    adopt_link: Link,
    census_link: Link,
    _tracing_links: Vec<Link>,
    maps: Maps,
    health_walk: HealthWalk,
    /// Which half of the rules array the current targets use.
    rules_half: u32,
    installed: Vec<TargetKey>,
    buf: Vec<u8>,
    _object: Object,
}

/// libbpf's log of the load in progress, to name the verifier's complaint in the error.
static LOAD_LOG: Mutex<String> = Mutex::new(String::new());
/// libbpf's print callback is process-wide: one load at a time, so each reads its own log.
static LOAD_LOCK: Mutex<()> = Mutex::new(());

fn capture_log(_level: libbpf_rs::PrintLevel, msg: String) {
    if let Ok(mut log) = LOAD_LOG.lock() {
        if log.len() < 64 * 1024 {
            log.push_str(&msg);
        }
    }
}

fn take_log() -> String {
    LOAD_LOG
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default()
}

fn find_map(obj: &Object, name: &'static str) -> Result<MapHandle, Error> {
    let map = obj
        .maps()
        .find(|m| {
            m.name()
                .to_str()
                .is_some_and(|n| n == name || (name.starts_with('.') && n.ends_with(name)))
        })
        .ok_or(Error::ObjectMismatch { kind: "map", name })?;
    MapHandle::try_from(&map).map_err(|e| Error::Io {
        action: "duplicating a map descriptor",
        source: error::io_of(e),
    })
}

/// Checks the kernel's features and loads the object: with the storage-map iterator for the
/// health pass where the kernel takes it, else with the live-table walk (and why).
fn open_object() -> Result<(Object, HealthWalk), Error> {
    let btf = libbpf_rs::btf::Btf::from_vmlinux().map_err(|e| Error::NoKernelBtf(e.to_string()))?;
    if let Some(missing) = error::missing_feature(|name| {
        btf.type_by_name::<libbpf_rs::btf::BtfType<'_>>(name)
            .is_some()
    }) {
        return Err(missing);
    }
    let retransmit_err = retransmit_has_err(&btf);
    drop(btf);
    match load_object(HealthWalk::StorageMap, retransmit_err) {
        Ok(object) => Ok((object, HealthWalk::StorageMap)),
        Err((_, log)) if log.contains("prog 'dump_health': failed to load") => {
            let first = log
                .lines()
                .find(|l| l.contains("dump_health"))
                .unwrap_or_default()
                .trim()
                .to_string();
            let walk = HealthWalk::LiveTable { why: first };
            let object = load_object(walk.clone(), retransmit_err).map_err(|(e, _)| e)?;
            Ok((object, walk))
        }
        Err((e, _)) => Err(e),
    }
}

/// The kernel's `CONFIG_HZ`, as libbpf filled `.kconfig` (0 when it could not).
fn kernel_hz(object: &Object) -> u32 {
    let Ok(kconfig) = find_map(object, ".kconfig") else {
        return 0;
    };
    kconfig
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .and_then(|v| {
            v.get(..4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        })
        .unwrap_or(0)
}

/// A ring buffer of the object's map `name`, each record handed to `read`; `actions` name the
/// two steps (adding, opening) in an error.
fn ring_buffer(
    object: &Object,
    name: &'static str,
    actions: [&'static str; 2],
    mut read: impl FnMut(&[u8]) + 'static,
) -> Result<RingBuffer<'static>, Error> {
    let map = find_map(object, name)?;
    let mut builder = RingBufferBuilder::new();
    builder
        .add(&map, move |data: &[u8]| {
            read(data);
            0
        })
        .map_err(|e| Error::Io {
            action: actions[0],
            source: error::io_of(e),
        })?;
    builder.build().map_err(|e| Error::Io {
        action: actions[1],
        source: error::io_of(e),
    })
}

/// The attached programs: the tracing ones kept alive, the iterators run on demand.
struct Links {
    tracing: Vec<Link>,
    health: Option<Link>,
    adopt: Link,
    census: Link,
}

impl Links {
    /// Attaches every program the object loaded, each named in the error when the kernel
    /// refuses it.
    fn attach(object: &Object) -> Result<Links, Error> {
        let sessions = find_map(object, "sessions")?;
        let mut tracing = Vec::new();
        let (mut health, mut adopt, mut census) = (None, None, None);
        for prog in object.progs_mut() {
            if !prog.autoload() {
                continue;
            }
            let name = prog.name().to_str().unwrap_or_default();
            let (label, link) = match name {
                "on_state" => ("on_state (tp_btf/inet_sock_set_state)", prog.attach()),
                "on_receive_reset" => {
                    ("on_receive_reset (tp_btf/tcp_receive_reset)", prog.attach())
                }
                "on_send_reset" => ("on_send_reset (tp_btf/tcp_send_reset)", prog.attach()),
                "on_retransmit" | "on_retransmit_any" => {
                    ("on_retransmit (tp_btf/tcp_retransmit_skb)", prog.attach())
                }
                "dump_health" => (
                    "dump_health (iter/bpf_sk_storage_map)",
                    prog.attach_iter(sessions.as_fd()),
                ),
                "storage_census" => ("storage_census (iter/tcp)", prog.attach()),
                "adopt" => ("adopt (iter/tcp)", prog.attach()),
                _ => continue,
            };
            let link = link.map_err(|e| {
                error::refused_or(label, e, |source| Error::Attach {
                    program: static_label(label),
                    source,
                })
            })?;
            match name {
                "dump_health" => health = Some(link),
                "adopt" => adopt = Some(link),
                "storage_census" => census = Some(link),
                _ => tracing.push(link),
            }
        }
        let missing = |name| Error::ObjectMismatch {
            kind: "program",
            name,
        };
        Ok(Links {
            tracing,
            health,
            adopt: adopt.ok_or(missing("adopt"))?,
            census: census.ok_or(missing("storage_census"))?,
        })
    }
}

/// The cookie of the caller's network namespace (`SO_NETNS_COOKIE`, Linux 5.14).
fn own_netns_cookie() -> Result<u64, Error> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|source| Error::Io {
        action: "opening a socket to read the netns cookie",
        source,
    })?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the fd is a live socket owned by `sock`, and `cookie`/`len` are valid for writes
    // of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        let source = std::io::Error::last_os_error();
        return Err(Error::Io {
            action: "reading SO_NETNS_COOKIE (Linux 5.14)",
            source,
        });
    }
    Ok(cookie)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Monitor {
    /// Checks the kernel's features, loads and attaches the programs. No targets are set:
    /// nothing is watched until [`Monitor::set_targets`].
    pub fn load(options: &Options) -> Result<Self, Error> {
        let (object, health_walk) = open_object()?;
        if kernel_hz(&object) == 0 {
            return Err(Error::UnknownHz);
        }
        let maps = Maps {
            targets: find_map(&object, "targets")?,
            rules: find_map(&object, "rules")?,
            settings: find_map(&object, "settings")?,
            counters: find_map(&object, "counters")?,
            live: find_map(&object, "live")?,
            live_top: find_map(&object, "live_top")?,
            clock: find_map(&object, "clock")?,
        };
        let netns_cookie = match options.netns_cookie {
            Some(cookie) => cookie,
            None => own_netns_cookie()?,
        };
        let settings = Settings { netns_cookie };
        maps.settings
            .update(&0u32.to_ne_bytes(), settings.bytes(), MapFlags::ANY)
            .map_err(|e| Error::Io {
                action: "writing the settings map",
                source: error::io_of(e),
            })?;
        let links = Links::attach(&object)?;
        let queue: Arc<Mutex<Vec<Record>>> = Arc::default();
        let sink = Arc::clone(&queue);
        let actions = ["adding the ring buffer", "opening the ring buffer"];
        let ring = ring_buffer(&object, "events", actions, move |data| {
            if let Some(record) = RawEvent::read(data).as_ref().and_then(Record::from_raw) {
                if let Ok(mut q) = sink.lock() {
                    q.push(record);
                }
            }
        })?;
        let ring = Arc::new(Mutex::new(ring));
        let drainer = drain::Drainer::start(Arc::clone(&ring))?;
        let health_records: Arc<Mutex<Vec<RawHealth>>> = Arc::default();
        let sink = Arc::clone(&health_records);
        let actions = [
            "adding the health ring buffer",
            "opening the health ring buffer",
        ];
        let health_ring = ring_buffer(&object, "health_out", actions, move |data| {
            if let (Some(raw), Ok(mut records)) = (RawHealth::read(data), sink.lock()) {
                records.push(raw);
            }
        })?;
        Ok(Self {
            drainer: Some(drainer),
            ring,
            queue,
            joiner: CloseJoiner::default(),
            health_link: links.health,
            health_ring,
            health_records,
            kept: Default::default(),
            clock: PassClock::default(),
            since_all: u32::MAX,
            pass_whole: true,
            pass_runs: 0,
            pass_written: 0,
            adopt_link: links.adopt,
            census_link: links.census,
            _tracing_links: links.tracing,
            maps,
            health_walk,
            rules_half: 1,
            installed: Vec::new(),
            buf: Vec::with_capacity(64 * 1024),
            _object: object,
        })
    }

    /// Replaces the target list without reloading: the new rules go into the half of the rules
    /// array not in use, then the trie entries are pointed at them, then entries no longer
    /// wanted are removed. A lookup meanwhile sees an old or a new block, each whole. Sockets
    /// already watched stay watched.
    pub fn set_targets(&mut self, targets: &[TargetSpec]) -> Result<(), Error> {
        let compiled = targets::compile(targets)?;
        let half = 1 - self.rules_half;
        let base = half * (MAX_RULES as u32 / 2);
        let io = |action| {
            move |e| Error::Io {
                action,
                source: error::io_of(e),
            }
        };
        let layout = compiled.layout(base);
        let mut index = base;
        for (_, rules) in &compiled.blocks {
            for rule in rules {
                self.maps
                    .rules
                    .update(&index.to_ne_bytes(), rule.bytes(), MapFlags::ANY)
                    .map_err(io("writing a port rule"))?;
                index += 1;
            }
        }
        for (key, value) in &layout {
            self.maps
                .targets
                .update(key.bytes(), value.bytes(), MapFlags::ANY)
                .map_err(io("writing a target block"))?;
        }
        let wanted: Vec<TargetKey> = layout.iter().map(|(k, _)| *k).collect();
        for stale in self.installed.iter().filter(|k| !wanted.contains(k)) {
            self.maps
                .targets
                .delete(stale.bytes())
                .map_err(io("removing a target block"))?;
        }
        self.installed = wanted;
        self.rules_half = half;
        Ok(())
    }

    /// Finds the sessions that were ESTABLISHED before the load (or before their target was
    /// set) with the TCP iterator, gives them storage, and returns their socket cookies. Only
    /// sockets of the calling thread's network namespace are walked.
    pub fn scan_existing(&mut self) -> Result<Vec<u64>, Error> {
        read_iter(&self.adopt_link, &mut self.buf)?;
        Ok(self
            .buf
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }

    /// How [`Monitor::health`] walks the sessions on this kernel.
    pub fn health_walk(&self) -> &HealthWalk {
        &self.health_walk
    }

    /// Every watched, established session's health, in one pass over the watched sessions
    /// (see [`HealthWalk`]), as of that pass.
    ///
    /// The storage-map iterator writes every session. The live-table pass writes only the
    /// sessions whose record (everything but the identity; times are kept as the kernel's
    /// jiffies stamps) changed since it last wrote them, and the others' records are the ones
    /// kept from earlier passes, their times brought up to this pass's clock: the same values
    /// a written record would give. Every [`WRITE_ALL_EVERY`] passes, and after a pass that
    /// failed, one writes every session and the kept records are replaced.
    pub fn health(&mut self) -> Result<Vec<Health>, Error> {
        self.pass()?;
        let clock = self.clock;
        Ok(self
            .kept
            .values()
            .filter(|raw| raw.closed == 0)
            .map(|raw| Health::from_raw(raw, clock))
            .collect())
    }

    /// A pass that writes every session afresh, so that the sessions returned are exactly the
    /// ones the kernel holds now (kept records of sessions whose close has not been read yet
    /// are dropped): what replacing a set of sessions needs. Otherwise as [`Monitor::health`].
    pub fn whole_health(&mut self) -> Result<Vec<Health>, Error> {
        self.since_all = u32::MAX;
        self.health()
    }

    /// Runs a health pass as [`Monitor::health`] does, and keeps its records for
    /// [`Monitor::sessions_health`].
    pub fn pass(&mut self) -> Result<(), Error> {
        match &self.health_link {
            Some(link) => {
                (self.pass_whole, self.pass_runs) = (true, 1);
                let records = self.storage_records(link)?;
                self.pass_written = records.len();
                self.kept.clear();
                self.kept
                    .extend(records.into_iter().map(|r| (r.sock_cookie, r)));
            }
            None => {
                let before = self.since_all;
                let all = before >= WRITE_ALL_EVERY;
                // Until this pass's records are all kept, the next pass writes every session.
                self.since_all = u32::MAX;
                let records = self.live_records(all)?;
                self.pass_written = records.len();
                if all {
                    self.kept.clear();
                }
                self.kept
                    .extend(records.into_iter().map(|r| (r.sock_cookie, r)));
                self.since_all = if all { 1 } else { before + 1 };
            }
        }
        self.clock = self.pass_clock()?;
        Ok(())
    }

    /// Every session's health as of the last pass ([`Monitor::pass`] or [`Monitor::health`]),
    /// with its socket cookie, in cookie order; a session the pass did not find established is
    /// not there.
    pub fn sessions_health(&self) -> impl Iterator<Item = (u64, Health)> + '_ {
        let clock = self.clock;
        (self.kept.iter())
            .filter(|(_, raw)| raw.closed == 0)
            .map(move |(&cookie, raw)| (cookie, Health::from_raw(raw, clock)))
    }

    /// The clock the last pass stamped (its jiffies and the kernel's HZ).
    fn pass_clock(&self) -> Result<PassClock, Error> {
        let value = self
            .maps
            .clock
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::Io {
                action: "reading the health pass's clock",
                source: error::io_of(e),
            })?;
        Ok(value
            .as_deref()
            .and_then(PassClock::read)
            .unwrap_or_default())
    }

    /// How many records the last [`Monitor::health`] pass wrote: every session with the
    /// storage-map iterator, only the changed ones (or every one, when it was a pass that
    /// writes all) with the live table.
    pub fn last_pass_written(&self) -> usize {
        self.pass_written
    }

    /// How many sockets hold this monitor's storage, closing ones not yet freed included. With
    /// the storage-map iterator this costs a health pass; otherwise it walks every TCP socket
    /// of the namespace (a diagnostic, not for every poll).
    pub fn storage_entries(&mut self) -> Result<u64, Error> {
        match &self.health_link {
            Some(link) => Ok(self.storage_records(link)?.len() as u64),
            None => {
                read_iter(&self.census_link, &mut self.buf)?;
                Ok((self.buf.len() / 8) as u64)
            }
        }
    }

    /// Slots of the live table in use (watched, established sessions; the fallback pass walks
    /// them). One system call per slot ever taken: a diagnostic, not for every poll.
    pub fn live_entries(&self) -> u64 {
        // A slot's first field is its session's cookie, 0 when the slot is free.
        let cookie = |i| {
            (map_value(&self.maps.live, i))
                .and_then(|v| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)))
        };
        let used = (0..self.live_slots_walked()).filter(|&i| cookie(i).unwrap_or(0) != 0);
        used.count() as u64
    }

    /// How many slots of the live table the fallback pass walks: every slot ever taken (freed
    /// slots are taken again first), so the most sessions watched at once.
    pub fn live_slots_walked(&self) -> u32 {
        let top = (map_value(&self.maps.live_top, 0))
            .and_then(|v| Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?)));
        top.unwrap_or(0).min(LIVE_SLOTS)
    }

    /// One record per storage entry, from the storage-map iterator.
    fn storage_records(&self, link: &Link) -> Result<Vec<RawHealth>, Error> {
        let mut buf = Vec::with_capacity(64 * 1024);
        read_iter(link, &mut buf)?;
        Ok(buf
            .chunks_exact(std::mem::size_of::<RawHealth>())
            .filter_map(RawHealth::read)
            .collect())
    }

    /// One record per live session whose record changed (per live session when `all`):
    /// `live_pass` run until it has walked the slots in use, its ring read after each run (a
    /// run stops at the slot where the ring filled, and the next starts there).
    /// A session is written once; where the table changed between runs, one that took a slot
    /// already walked was passed over, and [`Monitor::last_pass_whole`] says so.
    fn live_records(&mut self, all: bool) -> Result<Vec<RawHealth>, Error> {
        let prog = self
            ._object
            .progs_mut()
            .find(|p| p.name() == "live_pass")
            .ok_or(Error::ObjectMismatch {
                kind: "program",
                name: "live_pass",
            })?;
        let changes = counter(&self.maps.counters, CNT_LIVE_CHANGES)?;
        let (mut from, mut runs) = (0u32, 0u32);
        loop {
            let mut ctx = [0u8; 16];
            ctx[..8].copy_from_slice(&u64::from(from).to_ne_bytes());
            ctx[8..].copy_from_slice(&u64::from(all).to_ne_bytes());
            let input = libbpf_rs::ProgramInput {
                context_in: Some(&mut ctx),
                ..Default::default()
            };
            let out = prog.test_run(input).map_err(|e| Error::Io {
                action: "running live_pass (BPF_PROG_TEST_RUN)",
                source: error::io_of(e),
            })?;
            self.health_ring.consume().map_err(|e| Error::Io {
                action: "reading the health ring buffer",
                source: error::io_of(e),
            })?;
            runs += 1;
            let (stopped_at, full) = (
                out.return_value & !RUN_STOPPED,
                out.return_value & RUN_STOPPED != 0,
            );
            if !full {
                break;
            }
            // A run that could not write one record would never end.
            if stopped_at <= from || runs > MAX_PASS_RUNS {
                return Err(Error::HealthRingFull(stopped_at));
            }
            from = stopped_at;
        }
        let records = std::mem::take(
            &mut *self
                .health_records
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        self.pass_runs = runs;
        self.pass_whole = runs == 1 || counter(&self.maps.counters, CNT_LIVE_CHANGES)? == changes;
        Ok(records)
    }

    /// Whether the last [`Monitor::health`] pass saw every watched session: always with the
    /// storage-map iterator, and with the live table when its walk took one run or the table
    /// did not change between its runs. A pass that is not whole may have passed over a
    /// session (it has no health then, never a wrong one): the source does not reconcile from
    /// it.
    pub fn last_pass_whole(&self) -> bool {
        self.pass_whole
    }

    /// How many runs the last [`Monitor::health`] pass took: 1 with the storage-map iterator;
    /// with the live table, one per 1,310 records written or so (its ring's room).
    pub fn last_pass_runs(&self) -> u32 {
        self.pass_runs
    }

    /// State changes of watched sessions; when none is waiting, pauses `timeout` and reads
    /// again. A close is released a few milliseconds after it happened, so that a RST the
    /// kernel sends right after it is part of it.
    pub fn poll_events(&mut self, timeout: Duration) -> Result<Vec<StateChange>, Error> {
        self.read_ring()?;
        // Records come without a wakeup (see `drain`): waiting is a pause and a second read.
        if !timeout.is_zero() && self.queue_is_empty() {
            std::thread::sleep(timeout);
            self.read_ring()?;
        }
        let records = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        for record in records {
            self.joiner.push(record);
        }
        let released = self.joiner.release(monotonic_ns(), CLOSE_HOLD_NS);
        // A closed session's kept health goes (its live entry went at the close).
        for c in &released {
            if c.new_state == model::tcp_state::CLOSE {
                self.kept.remove(&c.sock_cookie);
            }
        }
        Ok(released)
    }

    /// Starts or stops the thread that reads the event ring between polls when it is half full
    /// (on from the load). Without it, a burst of state changes larger than the ring (1,820
    /// records) between two reads is lost, counted in [`KernelCounters::lost`]: for tests of
    /// what follows a loss.
    pub fn set_event_drain(&mut self, on: bool) -> Result<(), Error> {
        match (on, self.drainer.is_some()) {
            (true, false) => self.drainer = Some(drain::Drainer::start(Arc::clone(&self.ring))?),
            (false, true) => self.drainer = None,
            _ => {}
        }
        Ok(())
    }

    /// Reads what the event ring holds into the queue (under the lock the drain thread takes).
    fn read_ring(&self) -> Result<(), Error> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.consume().map(drop).map_err(|e| Error::Io {
            action: "reading the ring buffer",
            source: error::io_of(e),
        })
    }

    fn queue_is_empty(&self) -> bool {
        (self.queue.lock().unwrap_or_else(|p| p.into_inner())).is_empty()
    }

    /// The programs' counters, summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, Error> {
        let mut sums = [0u64; 9];
        for (i, sum) in sums.iter_mut().enumerate() {
            *sum = counter(&self.maps.counters, i as u32)?;
        }
        let [seen, matched, other_netns, emitted, lost, no_storage, live_full, live_changes, health_reads] =
            sums;
        Ok(KernelCounters {
            seen,
            matched,
            other_netns,
            emitted,
            lost,
            no_storage,
            live_full,
            live_changes,
            health_reads,
        })
    }

    /// Runs the kernel left out because the same program was already running on that CPU
    /// (`bpf_prog_info.recursion_misses`, summed over the tracing programs): a state change, a
    /// reset or a retransmission may then be missing from the events or the counts. A system
    /// call per program: not one to make every poll.
    pub fn recursion_misses(&self) -> u64 {
        (self._object.progs())
            .filter(|p| p.autoload())
            .map(|p| recursion_misses(p.as_fd()))
            .sum()
    }
}

/// Entry `i` of an array map, if it can be read.
fn map_value(map: &MapHandle, i: u32) -> Option<Vec<u8>> {
    map.lookup(&i.to_ne_bytes(), MapFlags::ANY).ok().flatten()
}

/// Counter `i` of the programs' per-CPU `counters` map, summed over CPUs.
fn counter(map: &MapHandle, i: u32) -> Result<u64, Error> {
    let per_cpu = map
        .lookup_percpu(&i.to_ne_bytes(), MapFlags::ANY)
        .map_err(|e| Error::Io {
            action: "reading the counters",
            source: error::io_of(e),
        })?
        .unwrap_or_default();
    Ok(per_cpu
        .iter()
        .filter_map(|v| v.get(..8))
        .map(|b| u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .sum())
}

/// The running kernel's names of its reset reasons (`enum sk_rst_reason`, read from its BTF,
/// since the values differ between releases), without the `SK_RST_REASON_` prefix, by value.
/// Empty where the kernel has no such enum or no BTF.
pub fn reset_reason_names() -> Vec<(u32, String)> {
    let Ok(btf) = libbpf_rs::btf::Btf::from_vmlinux() else {
        return Vec::new();
    };
    let Some(reasons) = btf.type_by_name::<libbpf_rs::btf::types::Enum<'_>>("sk_rst_reason") else {
        return Vec::new();
    };
    reasons
        .iter()
        .filter_map(|m| {
            let name = m.name?.to_str()?;
            let short = name.strip_prefix("SK_RST_REASON_").unwrap_or(name);
            Some((u32::try_from(m.value).ok()?, short.to_string()))
        })
        .collect()
}

/// Does the kernel's `tcp:tcp_retransmit_skb` carry the result (`int err`, 6.12+)? Read from
/// the prototype of `btf_trace_tcp_retransmit_skb` (context, sk, skb, err).
fn retransmit_has_err(btf: &libbpf_rs::btf::Btf<'_>) -> bool {
    btf.type_by_name::<libbpf_rs::btf::BtfType<'_>>("btf_trace_tcp_retransmit_skb")
        .and_then(|typedef| typedef.skip_mods_and_typedefs().next_type())
        .and_then(|proto| libbpf_rs::btf::types::FuncProto::try_from(proto).ok())
        .is_some_and(|proto| proto.len() >= 4)
}

/// Opens and loads the object with the health iterator `walk` asks for and the retransmit
/// program the kernel's tracepoint fits; on failure, the error and libbpf's log.
fn load_object(walk: HealthWalk, retransmit_err: bool) -> Result<Object, (Error, String)> {
    let mut open = ObjectBuilder::default().open_memory(OBJECT).map_err(|e| {
        (
            Error::Load(format!("opening the object: {e:#}")),
            String::new(),
        )
    })?;
    for mut prog in open.progs_mut() {
        if prog.name() == "dump_health" {
            prog.set_autoload(walk == HealthWalk::StorageMap);
        } else if prog.name() == "on_retransmit" {
            prog.set_autoload(retransmit_err);
        } else if prog.name() == "on_retransmit_any" {
            prog.set_autoload(!retransmit_err);
        }
    }
    let _one_at_a_time = LOAD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    take_log();
    let previous = libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Warn, capture_log)));
    let loaded = open.load();
    libbpf_rs::set_print(previous);
    loaded.map_err(|e| {
        let log = take_log();
        let err = error::refused_or("loading the programs", e, |err| {
            Error::Load(format!("{err}\n{log}"))
        });
        (err, log)
    })
}

fn static_label(label: &str) -> &'static str {
    [
        "on_state (tp_btf/inet_sock_set_state)",
        "on_receive_reset (tp_btf/tcp_receive_reset)",
        "on_send_reset (tp_btf/tcp_send_reset)",
        "on_retransmit (tp_btf/tcp_retransmit_skb)",
        "dump_health (iter/bpf_sk_storage_map)",
        "storage_census (iter/tcp)",
        "adopt (iter/tcp)",
    ]
    .into_iter()
    .find(|l| *l == label)
    .unwrap_or("a program")
}

/// A program's `recursion_misses` (Linux 5.12), 0 when the kernel does not say.
fn recursion_misses(prog: std::os::fd::BorrowedFd<'_>) -> u64 {
    let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&info) as u32;
    // SAFETY: a live program fd, and `info`/`len` describe a writable bpf_prog_info of that
    // size (the kernel writes at most `len` bytes and no pointers are set in it).
    let rc = unsafe {
        libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len)
    };
    if rc == 0 {
        info.recursion_misses
    } else {
        0
    }
}

/// Runs an iterator once: a new iterator fd from the link, read to its end into `buf`.
fn read_iter(link: &Link, buf: &mut Vec<u8>) -> Result<(), Error> {
    buf.clear();
    let mut iter = libbpf_rs::Iter::new(link).map_err(|e| Error::Io {
        action: "creating an iterator",
        source: error::io_of(e),
    })?;
    iter.read_to_end(buf).map_err(|source| Error::Io {
        action: "reading an iterator",
        source,
    })?;
    Ok(())
}
