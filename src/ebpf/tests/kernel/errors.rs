//! The loader's errors name what is missing, and the namespace filter holds.

use std::time::Duration;

use fix_monitor_ebpf::{Error, Monitor, Options};

use super::support::*;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Drops capabilities from the calling thread's effective set (capabilities are per thread,
/// so the rest of the test process keeps them).
fn drop_effective(caps: &[u32]) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a v3 header and room for its two data structs.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    for cap in caps {
        data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
    }
    // SAFETY: capset with the same header and the two data structs read above.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

#[test]
fn without_cap_bpf_the_error_names_the_capability() {
    let err = std::thread::spawn(|| {
        drop_effective(&[CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF]);
        Monitor::load(&Options::default()).err()
    })
    .join()
    .unwrap()
    .expect("loading without CAP_BPF must fail");
    assert!(matches!(err, Error::Permission { .. }), "{err:?}");
    assert!(err.to_string().contains("CAP_BPF"), "{err}");
}

#[test]
fn sockets_of_other_namespaces_are_not_watched() {
    let venue = Venue::start();
    // a cookie no namespace has: the sessions here are of "another" namespace
    let mut elsewhere = Monitor::load(&Options {
        netns_cookie: Some(u64::MAX),
    })
    .unwrap();
    let mut everywhere = Monitor::load(&Options {
        netns_cookie: Some(0),
    })
    .unwrap();
    elsewhere.set_targets(&[target(venue.port)]).unwrap();
    everywhere.set_targets(&[target(venue.port)]).unwrap();
    let _sessions = venue.open(2);
    wait_for(
        "both sessions watched by the any-namespace monitor",
        Duration::from_secs(5),
        || (everywhere.health().unwrap().len() == 2).then_some(()),
    );
    assert!(elsewhere.health().unwrap().is_empty());
    // counted at each change that could start a watch: connect() and ESTABLISHED
    assert_eq!(elsewhere.counters().unwrap().other_netns, 4);
}

/// The kernel's reset-reason names come from its BTF: this 6.18 kernel has the enum, with the
/// reasons the close events carry (a close with unread data: TCP_ABORT_ON_CLOSE).
#[test]
fn reset_reasons_are_named_from_the_kernels_btf() {
    let names = fix_monitor_ebpf::reset_reason_names();
    assert!(names.len() > 10, "{names:?}");
    assert!(names.iter().any(|(_, n)| n == "NOT_SPECIFIED"), "{names:?}");
    assert!(
        names.iter().any(|(_, n)| n == "TCP_ABORT_ON_CLOSE"),
        "{names:?}"
    );
    let mut values: Vec<u32> = names.iter().map(|(v, _)| *v).collect();
    values.dedup();
    assert_eq!(values.len(), names.len(), "one name per value: {names:?}");
}
