//! The loop with kernel close events: a batch's rules with the scripted source, and the
//! overflow on the real kernel (real netlink source, real destroy subscription with the
//! smallest receive buffer, real exact lookups, the system clock).

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use opentelemetry::metrics::MeterProvider;

use super::*;
use crate::source::events::Mode;
use crate::source::{confirm, destroy, netlink::NetlinkSource, SourceKind};
use crate::state::{Meta, Publisher};
use crate::target::{Target, Targets};

fn counter(registry: &prometheus::Registry, name: &str) -> f64 {
    let text = crate::export::prometheus::encode(registry, 0).unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

#[test]
fn live_an_overflow_is_counted_and_the_totals_stay_exact() {
    let l = TcpListener::bind("127.0.93.30:0").unwrap();
    let at = l.local_addr().unwrap();
    let targets = Targets::new(vec![Target::test("127.0.93.30/32", Some(at.port()), None)]);
    let (exporter, registry) = crate::export::prometheus::reader("h").unwrap();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(exporter)
        .build();
    let meter = provider.meter(crate::instruments::names::METER);
    let instruments = Instruments::new(
        &meter,
        &targets,
        SourceKind::Netlink,
        NetlinkSource::CAPABILITIES,
    );
    let initial = State::initial(Meta {
        source_reason: None,
        host: "h".into(),
        source: SourceKind::Netlink,
        capabilities: NetlinkSource::CAPABILITIES,
        interval: Duration::from_secs(1),
        started: Timestamp::now(),
        targets: targets.clone(),
        events: Mode::KernelEvents,
        schedules: Vec::new(),
    });
    let (publisher, state) = Publisher::new(initial.clone());
    let (events, _) = tokio::sync::broadcast::channel(16);
    let source = NetlinkSource::open(&targets).unwrap();
    let lookups = confirm::Lookup::new(confirm::Confirmer::open().unwrap(), false);
    let poller = Poller::new(
        Box::new(source),
        instruments,
        Box::new(publisher),
        initial,
        events,
    )
    .with_confirm(Box::new(lookups));
    // The smallest buffer the kernel allows: a few notifications.
    let sub = destroy::DestroySubscriber::with_buffer(&targets, 0).unwrap();
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let looping = std::thread::spawn(move || run(poller, &SystemClock, Duration::from_secs(1), rx));

    let n = 300;
    let conns: Vec<(TcpStream, TcpStream)> = (0..n)
        .map(|_| {
            let c = TcpStream::connect(at).unwrap();
            (c, l.accept().unwrap().0)
        })
        .collect();
    let wait = |what: &str, f: &dyn Fn(&State) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !f(&state.get()) {
            assert!(Instant::now() < deadline, "{what}: {:?}", state.get().stats);
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("every session seen by a poll", &|s| s.stats[0].active == n);
    // A burst of closes: far more notifications than the buffer holds. The reader starts
    // only after it, so the overflow does not depend on how fast this machine reads (a fast
    // reader on a quiet machine kept up with 300 closes and nothing was lost).
    drop(conns);
    std::thread::sleep(Duration::from_millis(300));
    let reader = {
        let tx = tx.clone();
        let stopped = stop.clone();
        destroy::spawn_reader(
            sub,
            move || stopped.load(Ordering::Relaxed),
            move |b| tx.send(Input::Events(b)).is_ok(),
        )
    };
    wait("every session closed", &|s| s.stats[0].closed >= n);
    // Nothing more comes later (no double count): two more polls.
    let polls = state.get().health.polls;
    wait("two more polls", &|s| s.health.polls >= polls + 2);
    let s = state.get().stats[0];
    assert_eq!((s.opened, s.closed, s.active, s.short_lived), (n, n, 0, 0));
    let lost = counter(&registry, "fix_monitor_events_lost_total");
    assert!(lost > 0.0, "the buffer overflowed");
    assert!(lost < n as f64, "some notifications got through: {lost}");

    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    tx.send(Input::Stop).unwrap();
    looping.join().unwrap();
}

#[test]
fn a_batch_with_losses_is_followed_by_a_poll_at_once() {
    let t0 = Timestamp::now();
    let a = super::tests::sock_for_events(5000, 1);
    let mut r = super::tests::rig_for_events(t0, vec![Ok(vec![a]), Ok(vec![]), Ok(vec![])]);
    r.poller.tick(&r.clock);
    assert_eq!(r.polled_at.lock().unwrap().len(), 1);
    let batch = EventBatch {
        events: vec![],
        lost: 3,
        error: None,
    };
    r.clock.advance(Duration::from_millis(300));
    assert_eq!(
        r.poller.handle(Input::Events(batch), &r.clock),
        Flow::Continue
    );
    assert_eq!(r.polled_at.lock().unwrap().len(), 2, "the reconcile poll");
    let s = r.state.get();
    assert_eq!((s.stats[0].opened, s.stats[0].closed), (1, 1));
    // An event for it later is not a second close.
    let late = crate::tracker::SocketEvent {
        at: t0.after(Duration::from_secs(2)),
        kind: crate::tracker::SocketEventKind::Closed,
        id: a.id,
        local: a.local,
        remote: a.remote,
        partial: false,
        established: Some(true),
        info: None,
        closed_by: None,
        process: None,
        cause: None,
    };
    let batch = EventBatch {
        events: vec![late],
        ..EventBatch::default()
    };
    r.poller.handle(Input::Events(batch), &r.clock);
    let s = r.state.get();
    assert_eq!(
        (s.stats[0].opened, s.stats[0].closed, s.stats[0].short_lived),
        (1, 1, 0)
    );
}
