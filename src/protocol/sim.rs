//! A small FIX engine that drives real sessions over TCP, for the tests and the demo: a
//! scripted initiator ([`Peer`], the gateway's side) and an acceptor thread ([`Venue`]) whose
//! behaviour is set up front (how long it takes to acknowledge an order, whether it refuses
//! logons, which orders it rejects). Both keep what they sent and received, which is the tests'
//! ground truth. Optionally each side writes a QuickFIX-style message log (one line per message,
//! its timestamp first), the engine log that the log source follows.
//!
//! Not a conforming FIX engine: no persistence, no resend of stored messages (a
//! ResendRequest is answered with a SequenceReset-GapFill), no validation beyond the codec's.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::codec::{msg_type_name, tag, write, Decoded, Decoder, Message, SOH};

/// Messages by MsgType name (or raw value).
pub type Counts = BTreeMap<String, u64>;

fn name(mt: &str) -> String {
    msg_type_name(mt.as_bytes())
        .map(str::to_string)
        .unwrap_or_else(|| mt.to_string())
}

/// A `YYYYMMDD-HH:MM:SS.sss` UTC timestamp (SendingTime, log lines).
pub fn utc_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let dt = chrono::DateTime::<chrono::Utc>::from_timestamp(d.as_secs() as i64, d.subsec_nanos())
        .unwrap_or_default();
    dt.format("%Y%m%d-%H:%M:%S%.9f").to_string()
}

/// `t` moved by `ns` nanoseconds (back when negative).
pub fn offset_by(t: SystemTime, ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        t + d
    } else {
        t - d
    }
}

/// A message log in QuickFIX's format (`TIMESTAMP : MESSAGE`), with SOH or `|` separators.
pub struct MessageLog {
    file: std::fs::File,
    pipe: bool,
}

impl MessageLog {
    /// Append to the file at `path` (created if missing); `pipe` writes `|` for SOH.
    pub fn create(path: &PathBuf, pipe: bool) -> io::Result<MessageLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(MessageLog { file, pipe })
    }

    fn line(&mut self, at: SystemTime, bytes: &[u8]) -> io::Result<()> {
        let mut l = format!("{} : ", utc_timestamp(at)).into_bytes();
        if self.pipe {
            l.extend(bytes.iter().map(|&c| if c == SOH { b'|' } else { c }));
        } else {
            l.extend_from_slice(bytes);
        }
        l.push(b'\n');
        self.file.write_all(&l)
    }
}

/// How the other side answered a Logon ([`Peer::log_on`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogonAnswer {
    /// With a Logon: the session is logged on.
    Accepted,
    /// With a Logout, whose Text (tag 58, empty without one) is kept: the logon was refused.
    Refused(String),
}

/// One side of a FIX session over a TCP stream.
pub struct Peer {
    stream: TcpStream,
    decoder: Decoder,
    begin: String,
    /// Our SenderCompID (tag 49).
    pub sender: String,
    /// Our TargetCompID (tag 56): the other side's CompID.
    pub target: String,
    /// The next MsgSeqNum to send.
    pub next_out: u64,
    /// Messages sent, by MsgType name.
    pub sent: Counts,
    /// Messages received, by MsgType name.
    pub received: Counts,
    log: Option<MessageLog>,
    /// How far its clock is off ours, nanoseconds (positive: ahead): added to the SendingTime
    /// it writes (not to its log's timestamps, which are the gateway's clock in the tests).
    clock_offset_ns: i64,
}

impl Peer {
    /// A peer over `stream` (Nagle off) sending `begin` as BeginString, `sender` and `target`
    /// as its CompIDs; the first MsgSeqNum it sends is 1.
    pub fn new(stream: TcpStream, begin: &str, sender: &str, target: &str) -> Peer {
        let _ = stream.set_nodelay(true);
        Peer {
            stream,
            decoder: Decoder::new(SOH),
            begin: begin.to_string(),
            sender: sender.to_string(),
            target: target.to_string(),
            next_out: 1,
            sent: Counts::new(),
            received: Counts::new(),
            log: None,
            clock_offset_ns: 0,
        }
    }

    /// Connect to `addr` as `sender`.
    pub fn connect(addr: SocketAddr, begin: &str, sender: &str, target: &str) -> io::Result<Peer> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        Ok(Peer::new(s, begin, sender, target))
    }

    /// Write every message sent and received to `log`.
    pub fn with_log(mut self, log: MessageLog) -> Peer {
        self.log = Some(log);
        self
    }

    /// Stamp SendingTime with a clock `ns` nanoseconds ahead of ours (behind when negative).
    pub fn with_clock_offset(mut self, ns: i64) -> Peer {
        self.clock_offset_ns = ns;
        self
    }

    /// The local address of its TCP stream.
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// Send a message with the standard header; `fields` follow it.
    pub fn send(&mut self, mt: &str, fields: &[(u32, &str)]) -> io::Result<()> {
        let seq = self.next_out.to_string();
        self.next_out += 1;
        self.send_with_seq(mt, &seq, fields)
    }

    /// Send a message with a given MsgSeqNum (a PossDup resend, a SequenceReset), without
    /// moving the next number.
    pub fn send_with_seq(&mut self, mt: &str, seq: &str, fields: &[(u32, &str)]) -> io::Result<()> {
        let now = SystemTime::now();
        let ts = utc_timestamp(offset_by(now, self.clock_offset_ns));
        let mut f: Vec<(u32, &[u8])> = vec![
            (tag::MSG_TYPE, mt.as_bytes()),
            (tag::SENDER_COMP_ID, self.sender.as_bytes()),
            (tag::TARGET_COMP_ID, self.target.as_bytes()),
            (tag::MSG_SEQ_NUM, seq.as_bytes()),
            (tag::SENDING_TIME, &ts.as_bytes()[..21]),
        ];
        f.extend(fields.iter().map(|(t, v)| (*t, v.as_bytes())));
        let bytes = write(&self.begin, &f, SOH);
        self.stream.write_all(&bytes)?;
        if let Some(l) = &mut self.log {
            l.line(now, &bytes)?;
        }
        *self.sent.entry(name(mt)).or_default() += 1;
        Ok(())
    }

    /// Send raw bytes (malformed messages).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Leave `n` sequence numbers out (a gap the other side will see).
    pub fn skip(&mut self, n: u64) {
        self.next_out += n;
    }

    /// The next message received, waiting until `deadline`; `None` at the deadline, an error
    /// when the stream ends.
    pub fn recv(&mut self, deadline: Instant) -> io::Result<Option<Message>> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            while let Some(d) = self.decoder.next_message() {
                if let Decoded::Message(m) = d {
                    if let Some(l) = &mut self.log {
                        l.line(SystemTime::now(), m.as_bytes())?;
                    }
                    let mt = String::from_utf8_lossy(m.msg_type()).into_owned();
                    *self.received.entry(name(&mt)).or_default() += 1;
                    return Ok(Some(m));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.decoder.feed(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                // A signal (a test harness's child exiting, say): read again, until the deadline.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The messages the socket holds now, without waiting (the demo's one-thread simulator).
    /// The stream ending is an error once everything before it was returned.
    pub fn try_recv(&mut self) -> io::Result<Vec<Message>> {
        let mut buf = [0u8; 16 * 1024];
        let mut eof = false;
        self.stream.set_nonblocking(true)?;
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.decoder.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = self.stream.set_nonblocking(false);
                    return Err(e);
                }
            }
        }
        self.stream.set_nonblocking(false)?;
        let mut out = Vec::new();
        while let Some(d) = self.decoder.next_message() {
            if let Decoded::Message(m) = d {
                if let Some(l) = &mut self.log {
                    l.line(SystemTime::now(), m.as_bytes())?;
                }
                let mt = String::from_utf8_lossy(m.msg_type()).into_owned();
                *self.received.entry(name(&mt)).or_default() += 1;
                out.push(m);
            }
        }
        if eof && out.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(out)
    }

    /// Receive until a message of type `mt` (other messages are counted and dropped).
    pub fn expect(&mut self, mt: &str, timeout: Duration) -> io::Result<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv(deadline)? {
                Some(m) if m.msg_type() == mt.as_bytes() => return Ok(m),
                Some(_) => continue,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no {mt} within {timeout:?}"),
                    ))
                }
            }
        }
    }

    /// Log on as an initiator: a Logon (EncryptMethod 0, HeartBtInt 30), then wait up to
    /// `timeout` for the answer: a Logon (accepted) or a Logout (refused, as a venue refuses a
    /// bad logon before it closes). Other messages are counted and dropped.
    pub fn log_on(&mut self, timeout: Duration) -> io::Result<LogonAnswer> {
        self.send("A", &[(98, "0"), (108, "30")])?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv(deadline)? {
                Some(m) if m.msg_type() == b"A" => return Ok(LogonAnswer::Accepted),
                Some(m) if m.msg_type() == b"5" => {
                    let text = m.get_str(tag::TEXT).unwrap_or_default().into_owned();
                    return Ok(LogonAnswer::Refused(text));
                }
                Some(_) => {}
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer to the Logon within {timeout:?}"),
                    ))
                }
            }
        }
    }

    /// Log out first: a Logout with `text` (tag 58), then wait up to `timeout` for the other
    /// side's Logout. The connection stays open ([`close`](Self::close) it).
    pub fn log_out(&mut self, text: &str, timeout: Duration) -> io::Result<()> {
        self.send("5", &[(58, text)])?;
        self.expect("5", timeout).map(drop)
    }

    /// The TCP stream (its addresses, its socket options).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Close the TCP connection.
    pub fn close(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Reset the TCP connection: close it with SO_LINGER 0, so that the kernel sends an RST
    /// instead of a FIN.
    pub fn reset(self) -> io::Result<()> {
        socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO))
    }
}

/// An IPv4 TCP packet from `src` to `dst` (ACK set, checksums left zero: the wire source does
/// not check them, as the kernel already did), for tests of what reads packets.
pub fn ipv4_tcp(src: SocketAddr, dst: SocketAddr, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("v4 only")
    };
    let total = 20 + 20 + payload.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend(s.octets());
    p.extend(d.octets());
    p.extend(src.port().to_be_bytes());
    p.extend(dst.port().to_be_bytes());
    p.extend(seq.to_be_bytes());
    p.extend([0, 0, 0, 0, 0x50, flags | 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend(payload);
    p
}

/// How a simulated venue behaves.
#[derive(Debug, Clone)]
pub struct VenueBehaviour {
    /// The venue's CompID.
    pub comp_id: String,
    /// The BeginString it sends (`FIX.4.4` by default).
    pub begin_string: String,
    /// How long an order waits before its ExecutionReport.
    pub ack_delay: Duration,
    /// Refuse every Logon with a Logout carrying this text.
    pub refuse_logons: Option<String>,
    /// Answer every n-th order with a BusinessMessageReject instead of an ExecutionReport.
    pub business_reject_every: Option<u64>,
    /// Leave this many sequence numbers out after this many messages sent (a gap).
    pub gap_after: Option<(u64, u64)>,
    /// Fill every n-th order (an ExecutionReport with ExecType F, OrdStatus 2, after its ack).
    pub fill_every: Option<u64>,
    /// Reject every n-th order (ExecType 8, OrdRejReason 3: order exceeds limit) instead of
    /// acknowledging it.
    pub order_reject_every: Option<u64>,
    /// Its clock's offset from ours, nanoseconds (positive: ahead), in the SendingTime it
    /// writes: the ground truth of the clock-skew measurement.
    pub clock_offset_ns: i64,
}

impl Default for VenueBehaviour {
    fn default() -> Self {
        VenueBehaviour {
            comp_id: "VENUE".into(),
            begin_string: "FIX.4.4".into(),
            ack_delay: Duration::ZERO,
            refuse_logons: None,
            business_reject_every: None,
            gap_after: None,
            fill_every: None,
            order_reject_every: None,
            clock_offset_ns: 0,
        }
    }
}

/// What a venue did, over all its connections.
#[derive(Debug, Clone, Default)]
pub struct VenueRecord {
    /// Messages it sent, by MsgType name.
    pub sent: Counts,
    /// Messages it received, by MsgType name.
    pub received: Counts,
    /// TCP connections it accepted.
    pub connections: u64,
    /// Sequence numbers it left out.
    pub gap_messages: u64,
}

/// A venue accepting sessions on a loopback port, one thread per connection.
pub struct Venue {
    /// The loopback address it listens on.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<VenueRecord>>,
    thread: Option<JoinHandle<()>>,
}

impl Venue {
    /// Listen on `bind` (port 0 for any) and serve.
    pub fn start(bind: SocketAddr, behaviour: VenueBehaviour) -> io::Result<Venue> {
        let listener = TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(VenueRecord::default()));
        let (s, r) = (stop.clone(), record.clone());
        let thread = std::thread::spawn(move || accept_loop(listener, behaviour, s, r));
        Ok(Venue {
            addr,
            stop,
            record,
            thread: Some(thread),
        })
    }

    /// What the venue did so far.
    pub fn record(&self) -> VenueRecord {
        self.record.lock().expect("venue record").clone()
    }

    /// Stop accepting and wait for the connections to end.
    pub fn stop(mut self) -> VenueRecord {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.record()
    }
}

impl Drop for Venue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: TcpListener,
    b: VenueBehaviour,
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<VenueRecord>>,
) {
    let mut conns = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => {
                let _ = s.set_nonblocking(false);
                record.lock().expect("venue record").connections += 1;
                let (b, st, r) = (b.clone(), stop.clone(), record.clone());
                conns.push(std::thread::spawn(move || {
                    let _ = serve(s, &b, &st, &r);
                }));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

/// One connection at a simulated venue: the peer, the venue's behaviour and what it owes.
struct VenueSession<'a> {
    p: Peer,
    b: &'a VenueBehaviour,
    orders: u64,
    sent_total: u64,
    gapped: bool,
    /// Orders waiting for their ack: (due, ClOrdID, MsgType).
    due: Vec<(Instant, String, String)>,
}

/// Whether a session goes on after a message.
enum Next {
    Continue,
    End,
}

impl VenueSession<'_> {
    /// When to look again: the next ack due, at most 20 ms away.
    fn wake_at(&self) -> Instant {
        let tick = Instant::now() + Duration::from_millis(20);
        self.due.iter().map(|d| d.0).min().unwrap_or(tick).min(tick)
    }

    /// Send the acks that are due; a broken stream is reported by the next read.
    fn send_due_acks(&mut self) {
        let now = Instant::now();
        let (ready, later): (Vec<_>, Vec<_>) = self.due.drain(..).partition(|d| d.0 <= now);
        self.due = later;
        for (_, id, mt) in ready {
            let exec = format!("E{id}");
            let r = match mt.as_str() {
                "F" => self
                    .p
                    .send("9", &[(11, &id), (39, "8"), (434, "1"), (102, "1")]),
                "reject" => self.p.send(
                    "8",
                    &[(11, &id), (17, &exec), (150, "8"), (39, "8"), (103, "3")],
                ),
                _ => self
                    .p
                    .send("8", &[(11, &id), (17, &exec), (150, "0"), (39, "0")]),
            };
            if r.is_err() {
                break;
            }
            self.sent_total += 1;
            if mt == "fill" {
                let fill = format!("F{id}");
                let fields = [(11, id.as_str()), (17, &fill), (150, "F"), (39, "2")];
                if self.p.send("8", &fields).is_err() {
                    break;
                }
                self.sent_total += 1;
            }
        }
    }

    /// Leave sequence numbers out once, after the configured number of messages.
    fn maybe_gap(&mut self, record: &Mutex<VenueRecord>) {
        if let (Some((after, n)), false) = (self.b.gap_after, self.gapped) {
            if self.sent_total >= after {
                self.p.skip(n);
                self.gapped = true;
                record.lock().expect("venue record").gap_messages += n;
            }
        }
    }

    /// Answer one message as the venue would.
    fn answer(&mut self, m: &Message) -> io::Result<Next> {
        if self.p.target.is_empty() {
            let sender = m.get_str(tag::SENDER_COMP_ID).unwrap_or_default();
            self.p.target = sender.into_owned();
        }
        let field = |t: u32| m.get_str(t).unwrap_or_default().into_owned();
        let mt = String::from_utf8_lossy(m.msg_type()).into_owned();
        match mt.as_str() {
            "A" => {
                if let Some(text) = &self.b.refuse_logons {
                    let _ = self.p.send("5", &[(58, text)]);
                    return Ok(Next::End);
                }
                self.sent_total += 1;
                let hb = field(tag::HEART_BT_INT);
                self.p.send("A", &[(98, "0"), (108, &hb)])?;
            }
            "1" => {
                self.sent_total += 1;
                self.p.send("0", &[(112, &field(tag::TEST_REQ_ID))])?;
            }
            "2" => {
                let new = self.p.next_out.to_string();
                self.sent_total += 1;
                let fields = [(43, "Y"), (123, "Y"), (36, new.as_str())];
                self.p
                    .send_with_seq("4", &field(tag::BEGIN_SEQ_NO), &fields)?;
            }
            "5" => {
                let _ = self.p.send("5", &[]);
                return Ok(Next::End);
            }
            "D" | "F" | "G" => {
                self.orders += 1;
                let id = field(tag::CL_ORD_ID);
                if self
                    .b
                    .business_reject_every
                    .is_some_and(|n| self.orders % n == 0)
                {
                    self.sent_total += 1;
                    let seq = field(tag::MSG_SEQ_NUM);
                    let fields = [
                        (45, seq.as_str()),
                        (372, &mt),
                        (380, "4"),
                        (58, "simulated reject"),
                    ];
                    self.p.send("j", &fields)?;
                } else {
                    let every =
                        |n: Option<u64>| n.is_some_and(|n| mt == "D" && self.orders % n == 0);
                    let outcome = if every(self.b.order_reject_every) {
                        "reject".to_string()
                    } else if every(self.b.fill_every) {
                        "fill".to_string()
                    } else {
                        mt
                    };
                    self.due
                        .push((Instant::now() + self.b.ack_delay, id, outcome));
                }
            }
            _ => {}
        }
        Ok(Next::Continue)
    }
}

fn serve(
    s: TcpStream,
    b: &VenueBehaviour,
    stop: &AtomicBool,
    record: &Mutex<VenueRecord>,
) -> io::Result<()> {
    let mut v = VenueSession {
        p: Peer::new(s, &b.begin_string, &b.comp_id, "").with_clock_offset(b.clock_offset_ns),
        b,
        orders: 0,
        sent_total: 0,
        gapped: false,
        due: Vec::new(),
    };
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        let m = match v.p.recv(v.wake_at()) {
            Ok(m) => m,
            Err(e) => break Err(e),
        };
        v.send_due_acks();
        v.maybe_gap(record);
        let Some(m) = m else { continue };
        match v.answer(&m) {
            Ok(Next::Continue) => {}
            Ok(Next::End) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let mut rec = record.lock().expect("venue record");
    for (k, n) in &v.p.sent {
        *rec.sent.entry(k.clone()).or_default() += n;
    }
    for (k, n) in &v.p.received {
        *rec.received.entry(k.clone()).or_default() += n;
    }
    drop(rec);
    v.p.close();
    result
}

/// What a scripted gateway session did: the ground truth the tests compare with.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    /// The gateway's local address, once connected.
    pub local: Option<SocketAddr>,
    /// Messages the gateway sent, by MsgType name.
    pub sent: Counts,
    /// Messages the gateway received, by MsgType name.
    pub received: Counts,
    /// Each order's request kind and the round trip the gateway measured around it (an upper
    /// bound for any timestamp taken between the send and the receive).
    pub round_trips: Vec<(&'static str, Duration)>,
    /// The Text (tag 58) of the Logout the gateway sent to end the session.
    pub logout_text: String,
    /// Logons refused by the second venue.
    pub refused_logons: u64,
    /// The Text (tag 58) of the Logout that refused the last logon.
    pub refusal_text: String,
}

/// The scripted session: Logon (HeartBtInt 30), a TestRequest, `orders` orders (every fifth a
/// cancel, every seventh a replace), a ResendRequest for the venue's gap if one was seen,
/// then a Logout with a reason. With `refusing`, also `refusals` Logons against a venue
/// (CompID `VENUE2`) that refuses them. Messages sent and received are logged to `log` when given.
pub fn scripted_session(
    venue: SocketAddr,
    orders: u64,
    refusing: Option<(SocketAddr, u64)>,
    log: Option<(PathBuf, bool)>,
) -> io::Result<Truth> {
    let t = Duration::from_secs(10);
    let mut gw = Peer::connect(venue, "FIX.4.4", "GW", "VENUE")?;
    if let Some((path, pipe)) = &log {
        gw = gw.with_log(MessageLog::create(path, *pipe)?);
    }
    let mut truth = Truth {
        local: Some(gw.local_addr()?),
        ..Truth::default()
    };
    gw.send("A", &[(98, "0"), (108, "30")])?;
    gw.expect("A", t)?;
    gw.send("0", &[])?;
    gw.send("1", &[(112, "probe")])?;
    gw.expect("0", t)?;
    let mut expected_seq = 3u64; // Logon 1, Heartbeat 2
    let mut gap_seen = false;
    for i in 1..=orders {
        let (mt, kind) = if i % 7 == 0 {
            ("G", "replace")
        } else if i % 5 == 0 {
            ("F", "cancel")
        } else {
            ("D", "new")
        };
        let id = format!("ord{i}");
        let start = Instant::now();
        gw.send(
            mt,
            &[(11, &id), (41, "ord1"), (55, "XYZ"), (54, "1"), (38, "100")],
        )?;
        // The answer: an ExecutionReport, an OrderCancelReject or a BusinessMessageReject.
        let deadline = Instant::now() + t;
        loop {
            let m = gw
                .recv(deadline)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no answer to an order"))?;
            let seq = m.get_u64(tag::MSG_SEQ_NUM).unwrap_or(0);
            if seq > expected_seq && m.msg_type() != b"4" {
                gap_seen = true;
            }
            expected_seq = expected_seq.max(seq + 1);
            match m.msg_type() {
                b"8" | b"9" if m.get(11) == Some(id.as_bytes()) => {
                    truth.round_trips.push((kind, start.elapsed()));
                    break;
                }
                b"j" => break,
                _ => {}
            }
        }
        if gap_seen {
            gap_seen = false;
            gw.send("2", &[(7, "1"), (16, "0")])?;
            gw.expect("4", t)?;
        }
    }
    truth.logout_text = "end of day".into();
    gw.log_out(&truth.logout_text, t)?;
    truth.sent = gw.sent.clone();
    truth.received = gw.received.clone();
    gw.close();
    if let Some((addr, n)) = refusing {
        for _ in 0..n {
            let mut p = Peer::connect(addr, "FIX.4.4", "GW", "VENUE2")?;
            if let Some((path, pipe)) = &log {
                p = p.with_log(MessageLog::create(path, *pipe)?);
            }
            let LogonAnswer::Refused(text) = p.log_on(t)? else {
                return Err(io::Error::other("the refusing venue accepted a Logon"));
            };
            truth.refusal_text = text;
            truth.refused_logons += 1;
            for (k, v) in &p.sent {
                *truth.sent.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &p.received {
                *truth.received.entry(k.clone()).or_default() += v;
            }
            p.close();
        }
    }
    Ok(truth)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A venue 250 ms ahead stamps SendingTime 250 ms ahead (to the millisecond, truncated),
    /// one 250 ms behind as far behind: bounded by the clock read before the send and after
    /// the answer.
    #[test]
    fn a_venue_clock_offset_shows_in_its_sending_time() {
        for offset_ms in [250i64, -250] {
            let v = Venue::start(
                "127.0.0.1:0".parse().unwrap(),
                VenueBehaviour {
                    clock_offset_ns: offset_ms * 1_000_000,
                    ..VenueBehaviour::default()
                },
            )
            .unwrap();
            let mut gw = Peer::connect(v.addr, "FIX.4.4", "GW", "VENUE").unwrap();
            let before = crate::skew::nanos_of(SystemTime::now()) as i64;
            gw.send("A", &[(98, "0"), (108, "30")]).unwrap();
            let logon = gw.expect("A", Duration::from_secs(5)).unwrap();
            let after = crate::skew::nanos_of(SystemTime::now()) as i64;
            let st = crate::skew::parse_utc_timestamp(logon.get(52).unwrap()).unwrap();
            let shift = offset_ms * 1_000_000;
            assert!(
                st >= before + shift - 1_000_000 && st <= after + shift,
                "{offset_ms}"
            );
            gw.send("5", &[]).unwrap();
            gw.expect("5", Duration::from_secs(5)).unwrap();
            v.stop();
        }
    }

    /// A Logon is answered by a Logon, or refused by a Logout whose Text is kept; a Logout
    /// is answered.
    #[test]
    fn a_logon_accepted_and_one_refused() {
        let t = Duration::from_secs(5);
        let open = Venue::start("127.0.0.1:0".parse().unwrap(), VenueBehaviour::default()).unwrap();
        let refusing = VenueBehaviour {
            refuse_logons: Some("Invalid password".into()),
            ..VenueBehaviour::default()
        };
        let refusing = Venue::start("127.0.0.1:0".parse().unwrap(), refusing).unwrap();
        let mut gw = Peer::connect(open.addr, "FIX.4.4", "GW", "VENUE").unwrap();
        assert_eq!(gw.log_on(t).unwrap(), LogonAnswer::Accepted);
        gw.log_out("end of day", t).unwrap();
        gw.close();
        let mut gw = Peer::connect(refusing.addr, "FIX.4.4", "GW", "VENUE").unwrap();
        let refused = LogonAnswer::Refused("Invalid password".into());
        assert_eq!(gw.log_on(t).unwrap(), refused);
        gw.close();
        let (open, refusing) = (open.stop(), refusing.stop());
        assert_eq!(open.sent.get("Logout"), Some(&1));
        assert_eq!(refusing.sent.get("Logon"), None);
        assert_eq!(refusing.sent.get("Logout"), Some(&1));
    }

    #[test]
    fn a_session_against_the_venue() {
        let v = Venue::start(
            "127.0.0.1:0".parse().unwrap(),
            VenueBehaviour {
                ack_delay: Duration::from_millis(20),
                business_reject_every: Some(3),
                ..VenueBehaviour::default()
            },
        )
        .unwrap();
        let mut gw = Peer::connect(v.addr, "FIX.4.4", "GW", "VENUE").unwrap();
        let t = Duration::from_secs(5);
        gw.send("A", &[(98, "0"), (108, "30")]).unwrap();
        gw.expect("A", t).unwrap();
        gw.send("1", &[(112, "hello")]).unwrap();
        assert_eq!(gw.expect("0", t).unwrap().get(112), Some(&b"hello"[..]));
        let sent = Instant::now();
        gw.send(
            "D",
            &[(11, "o1"), (55, "X"), (54, "1"), (38, "100"), (40, "1")],
        )
        .unwrap();
        let er = gw.expect("8", t).unwrap();
        assert!(sent.elapsed() >= Duration::from_millis(20));
        assert_eq!(er.get(11), Some(&b"o1"[..]));
        gw.send("F", &[(11, "c1"), (41, "o1")]).unwrap();
        gw.expect("9", t).unwrap();
        gw.send("D", &[(11, "o2")]).unwrap();
        gw.expect("j", t).unwrap();
        gw.send("5", &[]).unwrap();
        gw.expect("5", t).unwrap();
        let rec = v.stop();
        assert_eq!(rec.received.get("NewOrderSingle"), Some(&2));
        assert_eq!(rec.sent.get("BusinessMessageReject"), Some(&1));
        assert_eq!(gw.sent.get("Logon"), Some(&1));
        assert_eq!(gw.received, rec.sent);
    }
}
