//! A steady-state netlink poll allocates nothing. A test binary of its own, because it counts
//! allocations through the global allocator.
#![cfg(target_os = "linux")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{TcpListener, TcpStream};

use fix_monitor::source::netlink::{DumpMode, NetlinkSource};
use fix_monitor::source::Source;
use fix_monitor::target::{Target, Targets};

thread_local! {
    /// Allocations made by this thread; per thread, so that tests running alongside do not
    /// count.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

struct Counting;

// SAFETY: every call goes to the system allocator unchanged; the count only touches a
// thread-local `Cell` with a const initializer and no destructor, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller upholds `alloc`'s contract, which is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as for `dealloc`; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Polls `source` to a steady state and counts what one more poll allocates.
fn steady_state_allocations(mut source: NetlinkSource, want: usize) -> usize {
    let mut out = Vec::new();
    source.poll(&mut out).unwrap();
    source.poll(&mut out).unwrap();
    assert_eq!(out.len(), want);

    let before = allocations();
    source.poll(&mut out).unwrap();
    let made = allocations() - before;
    assert_eq!(out.len(), want);
    assert!(
        out.iter().all(|e| e.health.is_some()),
        "measured with tcp_info asked for"
    );
    made
}

#[test]
fn a_steady_state_poll_allocates_nothing() {
    let before = allocations();
    std::hint::black_box(Box::new(1u64));
    assert!(allocations() > before, "the counter does not count");

    let listener = TcpListener::bind("127.0.42.50:0").unwrap();
    let at = listener.local_addr().unwrap();
    let _conns: Vec<_> = (0..50)
        .map(|_| {
            (
                TcpStream::connect(at).unwrap(),
                listener.accept().unwrap().0,
            )
        })
        .collect();
    let net = "127.0.42.50/32".parse().unwrap();
    let targets = Targets::new(vec![Target {
        name: "alloc".into(),
        net,
        port: Some(at.port()),
        local_ports: None,
        heartbeat: None,
        stale_after: None,
    }]);
    // The mode `open` picks (one walk, on any kernel that serves it), and the fallback.
    let source = NetlinkSource::open(&targets).unwrap();
    assert_eq!(source.mode(), DumpMode::OneWalk);
    assert_eq!(
        steady_state_allocations(source, 50),
        0,
        "a one-walk poll allocated"
    );
    let source = NetlinkSource::open_in(&targets, DumpMode::PerFamily).unwrap();
    assert_eq!(
        steady_state_allocations(source, 50),
        0,
        "a per-family poll allocated"
    );
}
