//! A session's TCP health, from the kernel's `struct tcp_info` (what `ss -ti` shows).
//!
//! The netlink source asks for it in the dump it already makes (`INET_DIAG_INFO`); the kernel
//! fills it only for the sockets that pass the filter (`inet_sk_diag_fill` runs after the
//! filter, calling `tcp_get_info`). The destroy message of a closing socket carries a last one
//! (`inet_diag_handler_get_info`), parsed the same way.
//!
//! # Older kernels: by length
//! `struct tcp_info` (`include/uapi/linux/tcp.h`) only ever grows at its end, and the kernel
//! sends its own `sizeof`: a field is known when the attribute reaches past its end, and is
//! `None` otherwise, never a zero. The oldest layout read whole is Linux 2.6's, up to
//! `tcpi_total_retrans` (104 bytes); anything shorter is no `tcp_info` at all. Fields from a
//! kernel newer than this list are ignored.
//!
//! ```text
//! offset  field                     unit    since
//!  24     tcpi_unacked              segs    2.6
//!  32     tcpi_lost                 segs    2.6
//!  44     tcpi_last_data_sent       ms      2.6
//!  52     tcpi_last_data_recv       ms      2.6
//!  56     tcpi_last_ack_recv        ms      2.6
//!  68     tcpi_rtt                  us      2.6   (smoothed; 0 before the first sample)
//!  72     tcpi_rttvar               us      2.6
//! 100     tcpi_total_retrans        segs    2.6   (104 bytes)
//! 120     tcpi_bytes_acked          bytes   4.1   (136)
//! 128     tcpi_bytes_received       bytes   4.1
//! 144     tcpi_notsent_bytes        bytes   4.6   (160)
//! 148     tcpi_min_rtt              us      4.6   (~0 before the first sample)
//! 160     tcpi_delivery_rate        bytes/s 4.9   (168)
//! 176     tcpi_rwnd_limited         us      4.10  (192)
//! 184     tcpi_sndbuf_limited       us      4.10
//! 200     tcpi_bytes_sent           bytes   4.19  (224; retransmissions included)
//! 208     tcpi_bytes_retrans        bytes   4.19
//! 216     tcpi_dsack_dups           segs    4.19
//! ```
//! The send and receive queues come with every socket in `inet_diag_msg` (`idiag_wqueue`:
//! `write_seq - snd_una`, what `ss` shows as Send-Q; `idiag_rqueue`: `rcv_nxt - copied_seq`).

pub use fix_monitor_core::TcpHealth;

/// The shortest `tcp_info` read: Linux 2.6's, up to `tcpi_total_retrans`.
pub const MIN_LEN: usize = 104;

const LOST: usize = 32;
const LAST_DATA_SENT: usize = 44;
const LAST_DATA_RECV: usize = 52;
const LAST_ACK_RECV: usize = 56;
const RTT: usize = 68;
const RTTVAR: usize = 72;
const TOTAL_RETRANS: usize = 100;
const BYTES_ACKED: usize = 120;
const BYTES_RECEIVED: usize = 128;
const NOTSENT_BYTES: usize = 144;
const MIN_RTT: usize = 148;
const DELIVERY_RATE: usize = 160;
const RWND_LIMITED: usize = 176;
const SNDBUF_LIMITED: usize = 184;
const BYTES_SENT: usize = 200;
const BYTES_RETRANS: usize = 208;
const DSACK_DUPS: usize = 216;

/// Reads the `INET_DIAG_INFO` attribute's payload `info` (a `struct tcp_info` of the
/// sending kernel's length, in host byte order) with the queues of the same
/// `inet_diag_msg`. `None` when `info` is shorter than the oldest layout: no health rather
/// than a guess.
pub fn parse(info: &[u8], recv_queue: u32, send_queue: u32) -> Option<TcpHealth> {
    if info.len() < MIN_LEN {
        return None;
    }
    let u32_at = |at: usize| -> Option<u32> {
        info.get(at..at + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
    };
    let u64_at = |at: usize| -> Option<u64> {
        info.get(at..at + 8)
            .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
    };
    // Present in every layout read (checked above).
    let base = |at: usize| u32_at(at).unwrap_or_default();
    Some(TcpHealth {
        rtt_us: base(RTT),
        rtt_var_us: base(RTTVAR),
        // `tcp_min_rtt` is ~0U until the first sample.
        min_rtt_us: u32_at(MIN_RTT).filter(|&v| v != u32::MAX),
        retransmits: base(TOTAL_RETRANS),
        lost: base(LOST),
        send_queue,
        not_sent: u32_at(NOTSENT_BYTES),
        recv_queue,
        bytes_acked: u64_at(BYTES_ACKED),
        bytes_received: u64_at(BYTES_RECEIVED),
        bytes_sent: u64_at(BYTES_SENT),
        bytes_retrans: u64_at(BYTES_RETRANS),
        dsack_dups: u32_at(DSACK_DUPS),
        last_data_recv_ms: base(LAST_DATA_RECV),
        last_data_sent_ms: base(LAST_DATA_SENT),
        last_ack_recv_ms: base(LAST_ACK_RECV),
        delivery_rate: u64_at(DELIVERY_RATE),
        rwnd_limited_us: u64_at(RWND_LIMITED),
        sndbuf_limited_us: u64_at(SNDBUF_LIMITED),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A `tcp_info` of `len` bytes whose every u32 slot holds its own offset, and every u64
    /// slot at the offsets read holds offset << 32 | offset (so a field read at the wrong
    /// place or width shows).
    fn numbered(len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        for at in (0..len - len % 4).step_by(4) {
            b[at..at + 4].copy_from_slice(&(at as u32).to_ne_bytes());
        }
        for at in [
            BYTES_ACKED,
            BYTES_RECEIVED,
            DELIVERY_RATE,
            RWND_LIMITED,
            SNDBUF_LIMITED,
            BYTES_SENT,
            BYTES_RETRANS,
        ] {
            if at + 8 <= len {
                let v = (at as u64) << 32 | at as u64;
                b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
            }
        }
        b
    }

    fn wide(at: usize) -> u64 {
        (at as u64) << 32 | at as u64
    }

    #[test]
    fn every_field_is_read_at_its_offset() {
        // Linux 6.18's length; the tail it has beyond what is read is ignored.
        let h = parse(&numbered(280), 7, 9).unwrap();
        assert_eq!(
            h,
            TcpHealth {
                rtt_us: 68,
                rtt_var_us: 72,
                min_rtt_us: Some(148),
                retransmits: 100,
                lost: 32,
                send_queue: 9,
                not_sent: Some(144),
                recv_queue: 7,
                bytes_acked: Some(wide(120)),
                bytes_received: Some(wide(128)),
                bytes_sent: Some(wide(200)),
                bytes_retrans: Some(wide(208)),
                dsack_dups: Some(216),
                last_data_recv_ms: 52,
                last_data_sent_ms: 44,
                last_ack_recv_ms: 56,
                delivery_rate: Some(wide(160)),
                rwnd_limited_us: Some(wide(176)),
                sndbuf_limited_us: Some(wide(184)),
            }
        );
    }

    #[test]
    fn older_kernels_lack_the_newer_fields_and_say_so() {
        // Each historical length, with the fields it must have and lack.
        let known = |len: usize| {
            let h = parse(&numbered(len), 0, 0).unwrap();
            [
                h.bytes_acked.is_some() && h.bytes_received.is_some(),
                h.not_sent.is_some() && h.min_rtt_us.is_some(),
                h.delivery_rate.is_some(),
                h.rwnd_limited_us.is_some() && h.sndbuf_limited_us.is_some(),
                h.bytes_sent.is_some() && h.bytes_retrans.is_some() && h.dsack_dups.is_some(),
            ]
        };
        assert_eq!(known(104), [false; 5], "2.6");
        assert_eq!(known(120), [false; 5], "3.15: pacing rates only");
        assert_eq!(known(136), [true, false, false, false, false], "4.1");
        assert_eq!(known(160), [true, true, false, false, false], "4.6");
        assert_eq!(known(168), [true, true, true, false, false], "4.9");
        assert_eq!(known(192), [true, true, true, true, false], "4.10");
        assert_eq!(known(200), [true, true, true, true, false], "4.18");
        assert_eq!(known(224), [true; 5], "4.19");
        // The 2.6 fields are there at every length.
        let h = parse(&numbered(104), 1, 2).unwrap();
        assert_eq!(
            (h.rtt_us, h.retransmits, h.last_data_recv_ms),
            (68, 100, 52)
        );
        // A length that ends inside a field leaves that field out.
        let h = parse(&numbered(BYTES_SENT + 7), 0, 0).unwrap();
        assert_eq!(h.bytes_sent, None);
        assert!(h.sndbuf_limited_us.is_some());
    }

    #[test]
    fn too_short_is_no_health_and_hostile_bytes_never_panic() {
        assert_eq!(parse(&[], 0, 0), None);
        assert_eq!(parse(&numbered(MIN_LEN - 4), 0, 0), None);
        for len in 0..400 {
            let b = vec![0xff; len];
            let _ = parse(&b, u32::MAX, u32::MAX);
        }
    }

    #[test]
    fn no_sample_yet_is_no_rtt() {
        let mut b = numbered(248);
        b[RTT..RTT + 4].copy_from_slice(&0u32.to_ne_bytes());
        b[MIN_RTT..MIN_RTT + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        let h = parse(&b, 0, 0).unwrap();
        assert_eq!(h.rtt(), None);
        assert_eq!(h.min_rtt_us, None);
        b[RTT..RTT + 4].copy_from_slice(&250u32.to_ne_bytes());
        let h = parse(&b, 0, 0).unwrap();
        assert_eq!(h.rtt(), Some(Duration::from_micros(250)));
    }

    #[test]
    fn unacked_is_the_send_queue_less_its_unsent_part() {
        let mut b = numbered(248);
        b[NOTSENT_BYTES..NOTSENT_BYTES + 4].copy_from_slice(&1000u32.to_ne_bytes());
        let h = parse(&b, 0, 1500).unwrap();
        assert_eq!(h.unacked_bytes(), Some(500));
        // The two are read at slightly different moments of a busy socket: never below zero.
        let h = parse(&b, 0, 900).unwrap();
        assert_eq!(h.unacked_bytes(), Some(0));
        let h = parse(&numbered(136), 0, 1500).unwrap();
        assert_eq!(h.unacked_bytes(), None, "unknown before 4.6");
    }
}

/// On the live kernel, through the netlink source: what the tests did to the sockets is what
/// their `tcp_info` says. Each test uses its own 127.0.44.x addresses and ports from the kernel.
#[cfg(all(test, target_os = "linux"))]
mod live {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::TcpHealth;
    use crate::netlink::NetlinkSource;
    use crate::{SocketEntry, Source};
    use fix_monitor_core::target::{Target, Targets};

    /// A listener on 127.0.44.`to` and a target matching every socket of 127.0.44.`from` and
    /// of the listener (both ends of its connections).
    fn setup(from: u8, to: u8) -> (TcpListener, NetlinkSource) {
        let l = TcpListener::bind(format!("127.0.44.{to}:0")).unwrap();
        let target = |ip: u8| {
            let net = format!("127.0.44.{ip}/32").parse().unwrap();
            Target {
                name: Target::default_name(&net, None),
                net,
                port: None,
                local_ports: None,
                heartbeat: None,
                stale_after: None,
            }
        };
        let source = NetlinkSource::open(&Targets::new(vec![target(from), target(to)])).unwrap();
        (l, source)
    }

    fn connect(from: u8, l: &TcpListener) -> (TcpStream, TcpStream) {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let from: SocketAddr = format!("127.0.44.{from}:0").parse().unwrap();
        s.bind(&from.into()).unwrap();
        s.connect(&l.local_addr().unwrap().into()).unwrap();
        (s.into(), l.accept().unwrap().0)
    }

    fn health_of(entries: &[SocketEntry], s: &TcpStream) -> TcpHealth {
        let (local, remote) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
        entries
            .iter()
            .find(|e| e.local == local && e.remote == remote)
            .unwrap_or_else(|| panic!("{local} -> {remote} not polled"))
            .health
            .expect("netlink gives tcp_info")
    }

    /// Polls until `done` holds for the health of `a` and `b` (5 s at most), and returns them.
    fn poll_until(
        source: &mut NetlinkSource,
        a: &TcpStream,
        b: &TcpStream,
        done: impl Fn(&TcpHealth, &TcpHealth) -> bool,
    ) -> (TcpHealth, TcpHealth) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        loop {
            source.poll(&mut out).unwrap();
            let (ha, hb) = (health_of(&out, a), health_of(&out, b));
            if done(&ha, &hb) {
                return (ha, hb);
            }
            assert!(Instant::now() < deadline, "never settled: {ha:?} {hb:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn health_counts_the_bytes_exchanged() {
        let (l, mut source) = setup(1, 2);
        let (mut client, mut server) = connect(1, &l);
        client.write_all(&[7; 1000]).unwrap();
        server.read_exact(&mut [0; 1000]).unwrap();
        server.write_all(&[8; 300]).unwrap();
        client.read_exact(&mut [0; 300]).unwrap();
        // Acknowledgements arrive a moment after the data; the connecting side's SYN counts
        // one byte acked, the accepting side's SYN-ACK none.
        let (c, s) = poll_until(&mut source, &client, &server, |c, s| {
            c.bytes_acked == Some(1001) && s.bytes_acked == Some(300)
        });
        assert_eq!(
            (
                c.bytes_sent,
                c.bytes_received,
                s.bytes_sent,
                s.bytes_received
            ),
            (Some(1000), Some(300), Some(300), Some(1000))
        );
        for h in [c, s] {
            assert_eq!((h.retransmits, h.lost), (0, 0), "{h:?}");
            assert_eq!((h.send_queue, h.not_sent, h.recv_queue), (0, Some(0), 0));
            assert!(h.rtt().is_some(), "an RTT sample from the handshake: {h:?}");
            // The smoothed RTT averages samples that are each at least the minimum.
            assert!(h.min_rtt_us.unwrap() <= h.rtt_us + 1, "{h:?}");
            // Linux 6.18 gives every field fix-monitor reads.
            assert!(
                h.delivery_rate.is_some() && h.rwnd_limited_us.is_some(),
                "{h:?}"
            );
            assert!(h.sndbuf_limited_us.is_some());
        }

        // Without INET_DIAG_INFO in the request, no health at all.
        source.set_tcp_info(false);
        let mut out = Vec::new();
        source.poll(&mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|e| e.health.is_none()));
        source.set_tcp_info(true);
        source.poll(&mut out).unwrap();
        assert!(out.iter().all(|e| e.health.is_some()));
    }

    #[test]
    fn a_peer_that_stops_reading_shows_in_the_send_queue() {
        let (l, mut source) = setup(3, 4);
        let (mut client, mut server) = connect(3, &l);
        // Write until the kernel takes no more: the server never reads.
        client.set_nonblocking(true).unwrap();
        let mut written = 0u64;
        let chunk = [1u8; 64 * 1024];
        loop {
            match client.write(&chunk) {
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        // Every byte written is either in the server's receive queue or still in the client's
        // send queue (a byte in flight is in both until its ACK arrives: wait for that).
        let (c, s) = poll_until(&mut source, &client, &server, |c, s| {
            u64::from(c.send_queue) + u64::from(s.recv_queue) == written
        });
        assert!(c.send_queue > 0, "{c:?}");
        assert!(c.not_sent.unwrap() <= c.send_queue);
        assert!(s.recv_queue > 0, "{s:?}");
        assert_eq!(
            s.bytes_received,
            Some(u64::from(s.recv_queue)),
            "nothing read"
        );
        assert_eq!(
            c.bytes_acked,
            Some(written - u64::from(c.send_queue) + 1),
            "acked: all but the send queue, and the SYN"
        );
        assert_eq!(c.unacked_bytes(), Some(c.send_queue - c.not_sent.unwrap()));

        // The peer reads again: the queue drains.
        let mut got = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        while got < written {
            got += server.read(&mut buf).unwrap() as u64;
        }
        let (c, s) = poll_until(&mut source, &client, &server, |c, s| {
            c.send_queue == 0 && s.recv_queue == 0
        });
        assert_eq!(c.bytes_acked, Some(written + 1));
        assert_eq!(s.bytes_received, Some(written));
    }

    #[test]
    fn silence_is_the_time_since_data_last_arrived() {
        let (l, mut source) = setup(5, 6);
        let (talk_client, mut talk_server) = connect(5, &l);
        let (quiet_client, mut quiet_server) = connect(5, &l);
        let quiet_since = Instant::now();
        // The talking peer sends a byte every 200 ms, and says when it last did.
        let last_sent = Arc::new(Mutex::new(Instant::now()));
        let stop = Arc::new(AtomicBool::new(false));
        let talker = {
            let (last_sent, stop) = (last_sent.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    talk_server.write_all(b"0").unwrap();
                    *last_sent.lock().unwrap() = Instant::now();
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        // The kernel counts in jiffies (4 ms at HZ=250) and truncates to whole ms.
        let slack = Duration::from_millis(10);
        let mut out = Vec::new();
        let mut quiet = Duration::ZERO;
        while quiet < Duration::from_millis(2500) {
            let before = Instant::now();
            let talked = *last_sent.lock().unwrap();
            source.poll(&mut out).unwrap();
            let after = Instant::now();
            quiet = health_of(&out, &quiet_client).receive_silence();
            // The truth lies between the poll's start and end.
            assert!(quiet + slack >= before - quiet_since, "{quiet:?}");
            assert!(quiet <= after - quiet_since + slack, "{quiet:?}");
            let talk = health_of(&out, &talk_client).receive_silence();
            assert!(talk <= after - talked + slack, "{talk:?}");
            assert!(talk < Duration::from_millis(200) + slack, "{talk:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        talker.join().unwrap();
        // Data arrives: the silence ends.
        quiet_server.write_all(b"1").unwrap();
        let sent = Instant::now();
        let deadline = sent + Duration::from_secs(5);
        loop {
            source.poll(&mut out).unwrap();
            let quiet = health_of(&out, &quiet_client).receive_silence();
            if quiet <= Instant::now() - sent + slack {
                break;
            }
            assert!(Instant::now() < deadline, "still silent: {quiet:?}");
        }
    }
}
