//! One FIX session driven from both ends by one thread without blocking: the demo's simulated
//! gateway (the initiator, whose side fix-monitor watches) and a venue (the acceptor), over a
//! real TCP connection. The caller steps it with the time; it logs on, heartbeats, sends
//! TestRequests when the venue is quiet, sends orders one at a time that the venue acknowledges
//! after a delay (or rejects), asks for a resend when the venue leaves a sequence gap, and logs
//! out with a reason. Everything the gateway did is kept in [`LinkTruth`], the ground truth the
//! demo compares fix-monitor with.
//!
//! Why everything the venue sends reaches the gateway's counts before a close: the venue sends
//! nothing after its Logout, and the gateway reads up to that Logout before it closes.

use std::collections::HashMap;
use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};

use crate::codec::{tag, Message};
use crate::forensics::RESEND_STORM;
use crate::sim::{offset_by, utc_timestamp, Counts, MessageLog, Peer};

/// How a simulated venue behaves.
#[derive(Debug, Clone)]
pub struct VenueScript {
    /// The venue's CompID.
    pub comp_id: String,
    /// Each acknowledgement waits a delay drawn from this range.
    pub ack_delay: (Duration, Duration),
    /// Refuse every Logon with a Logout carrying this text.
    pub refuse_logons: Option<String>,
    /// Answer one order in n (at random) with a BusinessMessageReject (naming the ClOrdID in
    /// tag 379).
    pub business_reject_every: Option<u64>,
    /// Sequence numbers it leaves out ([`Gap`]): each pattern its own, at most one gap before
    /// any one message (so that each gap is asked for and answered on its own).
    pub gaps: Vec<Gap>,
    /// Its clock's offset from ours, nanoseconds (positive: ahead), in the SendingTime it
    /// writes.
    pub clock_offset_ns: i64,
    /// Reject every n-th NewOrderSingle it receives (an ExecutionReport with ExecType 8 and
    /// OrdRejReason 3, order exceeds limit) instead of acknowledging it.
    pub order_reject_every: Option<u64>,
    /// Fill every n-th NewOrderSingle it receives (not rejected): after its ack, an
    /// ExecutionReport with ExecType F and OrdStatus 2.
    pub fill_every: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
/// Sequence numbers a simulated venue leaves out ([`VenueScript::gaps`]): `size` of them after
/// its `first`-th message, then every `every` messages.
///
/// The gateway asks for them with a ResendRequest (from the first missing, EndSeqNo 0). A gap
/// not `replay`ed is answered with one SequenceReset-GapFill (PossDupFlag=Y) up to the venue's
/// next number; a `replay`ed one by resending each number left out, as a venue replays its
/// application messages: a News (35=B) with PossDupFlag=Y and OrigSendingTime (tag 122, when
/// the number was left out), nothing after them (the gateway has the venue's later messages).
/// News, so that the replay adds no order outcome. [`RESEND_STORM`] numbers or more replayed
/// for one request make a resend storm.
pub struct Gap {
    /// Messages the venue sends before the first gap.
    pub first: u64,
    /// Messages between one gap and the next (`u64::MAX`: once).
    pub every: u64,
    /// Sequence numbers left out each time.
    pub size: u64,
    /// Answer the ResendRequest by replaying them, not with a gap fill.
    pub replay: bool,
}

/// Numbers a venue left out, for its answer to the ResendRequest.
#[derive(Debug, Clone, Copy)]
struct LeftOut {
    from: u64,
    size: u64,
    replay: bool,
    /// When (the replays' OrigSendingTime).
    at: SystemTime,
}

/// What the gateway did on one or more sessions: the ground truth.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkTruth {
    /// Messages the gateway sent and received, by MsgType name.
    pub sent: Counts,
    /// Messages the gateway received, by MsgType name.
    pub received: Counts,
    /// Logons completed.
    pub logons: u64,
    /// Logouts the gateway started.
    pub logouts_us: u64,
    /// Logouts the venue started.
    pub logouts_them: u64,
    /// Logons the venue refused (answered with a Logout).
    pub refused_logons: u64,
    /// Sequence gaps the gateway saw coming in, and the messages missing in them.
    pub gaps_in: u64,
    /// Messages missing in [`gaps_in`](Self::gaps_in).
    pub gap_messages_in: u64,
    /// ResendRequests the gateway sent.
    pub resend_requests_out: u64,
    /// TestRequests the gateway sent.
    pub test_requests_out: u64,
    /// BusinessMessageRejects the gateway received.
    pub business_rejects_in: u64,
    /// Orders answered with an ExecutionReport.
    pub orders_answered: u64,
    /// Orders answered with a BusinessMessageReject.
    pub orders_rejected: u64,
    /// Over the answered orders: the round trips the gateway measured (an upper bound for what
    /// any observer in between can time) and the delays the venue waited (a lower bound).
    pub round_trip_sum: Duration,
    /// See [`round_trip_sum`](Self::round_trip_sum).
    pub delay_sum: Duration,
    /// The Text (tag 58) of the last Logout either way (a refusal's included).
    pub last_logout_text: Option<String>,
    /// TestRequests of the venue's that the gateway left unanswered (the scripted fault,
    /// [`Link::venue_test_request_unanswered`]), counted when the session ends.
    pub test_requests_unanswered: u64,
    /// Sessions the venue reset (closed with an RST, [`Link::venue_resets`]).
    pub resets_by_venue: u64,
    /// ExecutionReports received that reject an order (ExecType 8; all OrdRejReason 3).
    pub order_rejects_in: u64,
    /// ExecutionReports received that fill an order (ExecType F, OrdStatus 2), each the first
    /// and only fill of a NewOrderSingle.
    pub fills_in: u64,
    /// SequenceReset-GapFills received (the venue's answers to ResendRequests: one asked just
    /// before the venue's Logout goes unanswered), and messages received with PossDupFlag.
    pub gap_fills_in: u64,
    /// See [`gap_fills_in`](Self::gap_fills_in).
    pub poss_dups_in: u64,
    /// ResendRequests of the gateway's answered with [`RESEND_STORM`] or more replayed
    /// messages (PossDups and GapFills received after it, before its next one): resend storms,
    /// counted when the replay reaches that many.
    pub resend_storms_in: u64,
}

impl LinkTruth {
    /// Add `o`'s counts to these (several sessions' truths summed).
    pub fn add(&mut self, o: &LinkTruth) {
        for (k, v) in &o.sent {
            *self.sent.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.received {
            *self.received.entry(k.clone()).or_default() += v;
        }
        self.logons += o.logons;
        self.logouts_us += o.logouts_us;
        self.logouts_them += o.logouts_them;
        self.refused_logons += o.refused_logons;
        self.gaps_in += o.gaps_in;
        self.gap_messages_in += o.gap_messages_in;
        self.resend_requests_out += o.resend_requests_out;
        self.test_requests_out += o.test_requests_out;
        self.business_rejects_in += o.business_rejects_in;
        self.orders_answered += o.orders_answered;
        self.orders_rejected += o.orders_rejected;
        self.round_trip_sum += o.round_trip_sum;
        self.delay_sum += o.delay_sum;
        self.test_requests_unanswered += o.test_requests_unanswered;
        self.resets_by_venue += o.resets_by_venue;
        self.order_rejects_in += o.order_rejects_in;
        self.fills_in += o.fills_in;
        self.gap_fills_in += o.gap_fills_in;
        self.poss_dups_in += o.poss_dups_in;
        self.resend_storms_in += o.resend_storms_in;
        if o.last_logout_text.is_some() {
            self.last_logout_text.clone_from(&o.last_logout_text);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GwState {
    LogonSent,
    LoggedOn,
    Refused,
}

/// An acknowledgement the venue owes: (due, ClOrdID, MsgType of the order).
type Due = (Instant, String, String);

/// One FIX session, both ends.
pub struct Link {
    gw: Peer,
    venue: Peer,
    script: VenueScript,
    heartbeat: Duration,
    /// Time between two orders: drawn from this range after each answer.
    order_pace: (Duration, Duration),
    state: GwState,
    venue_logged_on: bool,
    last_gw_sent: Instant,
    last_gw_recv: Instant,
    last_venue_sent: Instant,
    test_req_out: Option<Instant>,
    test_req_id: u64,
    /// The venue's TestRequest waiting for the gateway's Heartbeat (its TestReqID).
    venue_test_req: Option<String>,
    /// The scripted fault: the gateway has stopped answering the venue's TestRequests.
    deaf: bool,
    /// The next inbound MsgSeqNum the gateway expects.
    expect_in: u64,
    next_order: Instant,
    orders_sent: u64,
    /// The order in flight: (ClOrdID, sent at).
    in_flight: Option<(String, Instant)>,
    due: Vec<Due>,
    /// The venue's delay per ClOrdID, until the gateway reads the answer.
    delays: HashMap<String, Duration>,
    venue_orders: u64,
    /// NewOrderSingles the venue received (the n of `order_reject_every` and `fill_every`).
    venue_new_orders: u64,
    venue_sent: u64,
    /// Per gap pattern ([`VenueScript::gaps`]), the message count at which it leaves numbers
    /// out next.
    next_gap_at: Vec<u64>,
    left_out: Vec<LeftOut>,
    /// Messages replayed to the gateway since its last ResendRequest (none before one).
    replayed_in: Option<u64>,
    truth: LinkTruth,
    rng: fastrand::Rng,
}

fn draw(rng: &mut fastrand::Rng, (lo, hi): (Duration, Duration)) -> Duration {
    let (lo, hi) = (
        lo.as_micros() as u64,
        hi.as_micros().max(lo.as_micros()) as u64,
    );
    Duration::from_micros(rng.u64(lo..=hi))
}

impl Link {
    /// The gateway's end `gw` (CompID `gw_comp_id`) and the venue's accepted end; the gateway
    /// sends its Logon (HeartBtInt `heartbeat`, ResetSeqNumFlag) at once.
    pub fn open(
        gw: TcpStream,
        venue: TcpStream,
        gw_comp_id: &str,
        script: VenueScript,
        heartbeat: Duration,
        order_pace: (Duration, Duration),
        log: Option<MessageLog>,
    ) -> io::Result<Link> {
        let now = Instant::now();
        let mut gw = Peer::new(gw, "FIX.4.4", gw_comp_id, &script.comp_id);
        if let Some(l) = log {
            gw = gw.with_log(l);
        }
        let venue = Peer::new(venue, "FIX.4.4", &script.comp_id, gw_comp_id)
            .with_clock_offset(script.clock_offset_ns);
        let mut rng = fastrand::Rng::new();
        let next_order = now + draw(&mut rng, order_pace);
        let mut link = Link {
            gw,
            venue,
            next_gap_at: script.gaps.iter().map(|g| g.first).collect(),
            left_out: Vec::new(),
            replayed_in: None,
            script,
            heartbeat,
            order_pace,
            state: GwState::LogonSent,
            venue_logged_on: false,
            last_gw_sent: now,
            last_gw_recv: now,
            last_venue_sent: now,
            test_req_out: None,
            test_req_id: 0,
            venue_test_req: None,
            deaf: false,
            expect_in: 1,
            next_order,
            orders_sent: 0,
            in_flight: None,
            due: Vec::new(),
            delays: HashMap::new(),
            venue_orders: 0,
            venue_new_orders: 0,
            venue_sent: 0,
            truth: LinkTruth::default(),
            rng,
        };
        let hb = heartbeat.as_secs().max(1).to_string();
        link.gw_send("A", &[(98, "0"), (108, &hb), (141, "Y")])?;
        Ok(link)
    }

    /// Whether the session is logged on (the Logon was answered, no Logout yet).
    pub fn logged_on(&self) -> bool {
        self.state == GwState::LoggedOn
    }

    /// Whether the venue refused the gateway's Logon.
    pub fn refused(&self) -> bool {
        self.state == GwState::Refused
    }

    /// The scripted fault: the venue sends a TestRequest, and the gateway, which has stopped
    /// answering TestRequests on this session, leaves it unanswered (it goes on sending its
    /// heartbeats and orders, none echoing the TestReqID).
    pub fn venue_test_request_unanswered(&mut self) -> io::Result<()> {
        self.deaf = true;
        let id = format!("VTEST{}", self.venue_sent + 1);
        self.venue_send("1", &[(112, &id)])?;
        self.venue_test_req = Some(id);
        Ok(())
    }

    /// Whether a TestRequest of the venue's waits for its answer.
    pub fn test_request_unanswered(&self) -> bool {
        self.venue_test_req.is_some()
    }

    /// The venue resets the connection (closes it with SO_LINGER 0: an RST, no Logout) after
    /// the gateway read everything it sent, so that the truth counts all that was on the
    /// wire; returns the truth, as [`log_out`](Self::log_out) does.
    pub fn venue_resets(mut self) -> (LinkTruth, io::Result<()>) {
        let read = self
            .gw
            .try_recv()
            .and_then(|ms| ms.iter().try_for_each(|m| self.gw_handle(m)));
        self.truth.sent = self.gw.sent.clone();
        self.truth.received = self.gw.received.clone();
        self.truth.resets_by_venue += 1;
        self.count_unanswered();
        let truth = self.truth;
        let reset = self.venue.reset();
        self.gw.close();
        (truth, read.and(reset))
    }

    fn count_unanswered(&mut self) {
        if self.venue_test_req.is_some() {
            self.truth.test_requests_unanswered += 1;
        }
    }

    /// The earliest time an acknowledgement is due (the caller wakes up then).
    pub fn next_due(&self) -> Option<Instant> {
        self.due.iter().map(|d| d.0).min()
    }

    /// One step at `now`. A `silent` venue neither reads nor sends (a hung engine); it catches
    /// up when it is no longer silent.
    pub fn step(&mut self, now: Instant, silent: bool) -> io::Result<()> {
        if !silent {
            self.venue_step(now, false)?;
        }
        for m in self.gw.try_recv()? {
            self.gw_handle(&m)?;
        }
        if self.state != GwState::LoggedOn {
            return Ok(());
        }
        let now = now.max(self.last_gw_recv);
        if now.saturating_duration_since(self.last_gw_recv) >= self.heartbeat * 3 / 2
            && self
                .test_req_out
                .is_none_or(|t| now.saturating_duration_since(t) >= self.heartbeat)
        {
            self.test_request(now)?;
        }
        if now.saturating_duration_since(self.last_gw_sent) >= self.heartbeat {
            self.gw_send("0", &[])?;
        }
        if self.in_flight.is_none() && now >= self.next_order {
            self.send_order()?;
            // The venue reads it at once, so its delay runs from now (not from the next step).
            if !silent {
                self.venue_step(Instant::now(), false)?;
            }
        }
        Ok(())
    }

    /// Logs out (the venue first, with `venue_reason`, or the gateway with `gw_reason`) and
    /// closes both ends (the one that logged out first closes first); returns the truth (also
    /// when the exchange failed, with what was done up to then).
    pub fn log_out(
        mut self,
        venue_reason: Option<&str>,
        gw_reason: &str,
    ) -> (LinkTruth, io::Result<()>) {
        let r = self.log_out_inner(venue_reason, gw_reason);
        self.truth.sent = self.gw.sent.clone();
        self.truth.received = self.gw.received.clone();
        self.count_unanswered();
        let truth = self.truth;
        if venue_reason.is_some() {
            self.venue.close();
            self.gw.close();
        } else {
            self.gw.close();
            self.venue.close();
        }
        (truth, r)
    }

    fn log_out_inner(&mut self, venue_reason: Option<&str>, gw_reason: &str) -> io::Result<()> {
        // The venue answers what it owes first (a hung venue told to log out wakes up).
        self.venue_step(Instant::now(), true)?;
        for m in self.gw.try_recv()? {
            self.gw_handle(&m)?;
        }
        if self.state != GwState::LoggedOn {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        match venue_reason {
            Some(text) => {
                self.venue_send("5", &[(58, text)])?;
                self.gw_until_logout(deadline)?;
                self.gw_send("5", &[])?;
                self.truth.logouts_them += 1;
                self.truth.last_logout_text = Some(text.to_string());
            }
            None => {
                self.gw_send("5", &[(58, gw_reason)])?;
                loop {
                    let m = self.venue.recv(deadline)?.ok_or_else(timed_out)?;
                    if m.msg_type() == b"5" {
                        break;
                    }
                    self.venue_handle(&m, Instant::now())?;
                }
                self.venue_send("5", &[])?;
                self.gw_until_logout(deadline)?;
                self.truth.logouts_us += 1;
                self.truth.last_logout_text = Some(gw_reason.to_string());
            }
        }
        self.state = GwState::LogonSent;
        Ok(())
    }

    fn gw_until_logout(&mut self, deadline: Instant) -> io::Result<()> {
        loop {
            let m = self.gw.recv(deadline)?.ok_or_else(timed_out)?;
            self.last_gw_recv = Instant::now();
            if m.msg_type() == b"5" {
                return Ok(());
            }
            self.gw_handle(&m)?;
        }
    }

    fn venue_step(&mut self, now: Instant, flush: bool) -> io::Result<()> {
        for m in self.venue.try_recv()? {
            self.venue_handle(&m, now)?;
        }
        let mut ready = Vec::new();
        self.due.retain(|d| {
            let go = flush || d.0 <= now;
            if go {
                ready.push(d.clone());
            }
            !go
        });
        ready.sort();
        for (due, id, mt) in ready {
            // Flushed early (a logout): the venue waited less than its drawn delay, and the
            // truth's lower bound on the round trip must say so.
            if let Some(d) = self.delays.get_mut(&id) {
                *d = d.saturating_sub(due.saturating_duration_since(Instant::now()));
            }
            match mt.as_str() {
                "F" => self.venue_send(
                    "9",
                    &[(11, &id), (41, "x"), (37, "NONE"), (39, "8"), (434, "1")],
                )?,
                "reject" => self.venue_send(
                    "8",
                    &[
                        (11, &id),
                        (37, "NONE"),
                        (17, &format!("E{id}")),
                        (150, "8"),
                        (39, "8"),
                        (103, "3"),
                    ],
                )?,
                "fill" => {
                    self.venue_ack(&id)?;
                    self.venue_send(
                        "8",
                        &[
                            (11, &id),
                            (37, &id),
                            (17, &format!("F{id}")),
                            (150, "F"),
                            (39, "2"),
                        ],
                    )?;
                }
                "G" => self.venue_send(
                    "8",
                    &[
                        (11, &id),
                        (37, &id),
                        (17, &format!("E{id}")),
                        (150, "5"),
                        (39, "5"),
                    ],
                )?,
                _ => self.venue_ack(&id)?,
            }
        }
        if self.venue_logged_on
            && now.saturating_duration_since(self.last_venue_sent) >= self.heartbeat
        {
            self.venue_send("0", &[])?;
        }
        Ok(())
    }

    /// The venue acknowledges order `id` (ExecType 0, OrdStatus 0).
    fn venue_ack(&mut self, id: &str) -> io::Result<()> {
        let exec = format!("E{id}");
        let fields = [(11, id), (37, id), (17, &exec), (150, "0"), (39, "0")];
        self.venue_send("8", &fields)
    }

    /// What the venue does with an order of type `mt` (not business-rejected): `reject` or
    /// `fill` for the n-th NewOrderSingle its script names, else its type (acknowledged).
    fn venue_outcome(&mut self, mt: String) -> String {
        if mt != "D" {
            return mt;
        }
        self.venue_new_orders += 1;
        let every = |n: Option<u64>| n.is_some_and(|n| self.venue_new_orders % n.max(1) == 0);
        if every(self.script.order_reject_every) {
            "reject".into()
        } else if every(self.script.fill_every) {
            "fill".into()
        } else {
            mt
        }
    }

    fn venue_handle(&mut self, m: &Message, now: Instant) -> io::Result<()> {
        match m.msg_type() {
            b"A" => match self.script.refuse_logons.clone() {
                Some(text) => {
                    self.venue_logged_on = false;
                    self.venue_send("5", &[(58, &text)])?;
                }
                None => {
                    self.venue_logged_on = true;
                    let hb = m
                        .get_str(tag::HEART_BT_INT)
                        .unwrap_or_default()
                        .into_owned();
                    self.venue_send("A", &[(98, "0"), (108, &hb), (141, "Y")])?;
                }
            },
            b"1" => {
                let id = m.get_str(tag::TEST_REQ_ID).unwrap_or_default().into_owned();
                self.venue_send("0", &[(112, &id)])?;
            }
            b"2" => self.venue_resend(m.get_u64(tag::BEGIN_SEQ_NO).unwrap_or(0))?,
            mt @ (b"D" | b"F" | b"G") => {
                self.venue_orders += 1;
                let id = m.get_str(tag::CL_ORD_ID).unwrap_or_default().into_owned();
                let mt = String::from_utf8_lossy(mt).into_owned();
                let reject = self.script.business_reject_every;
                if reject.is_some_and(|n| self.rng.u64(..n.max(1)) == 0) {
                    let seq = m.get_str(tag::MSG_SEQ_NUM).unwrap_or_default().into_owned();
                    self.venue_send(
                        "j",
                        &[
                            (45, &seq),
                            (372, &mt),
                            (379, &id),
                            (380, "0"),
                            (58, "instrument halted"),
                        ],
                    )?;
                } else {
                    let delay = draw(&mut self.rng, self.script.ack_delay);
                    self.delays.insert(id.clone(), delay);
                    let outcome = self.venue_outcome(mt);
                    self.due.push((now + delay, id, outcome));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The venue answers a ResendRequest from `from`: the numbers it left out there replayed
    /// when that gap is replayed ([`Gap::replay`]), else one SequenceReset-GapFill up to its
    /// next number.
    fn venue_resend(&mut self, from: u64) -> io::Result<()> {
        self.left_out.retain(|g| g.from + g.size > from);
        let replay = (self.left_out.iter()).find(|g| g.replay && g.from <= from);
        let Some(&g) = replay else {
            let new = self.venue.next_out.to_string();
            self.venue_sent += 1;
            self.last_venue_sent = Instant::now();
            let fields: [(u32, &str); 3] = [(43, "Y"), (123, "Y"), (36, &new)];
            return self.venue.send_with_seq("4", &from.to_string(), &fields);
        };
        let orig = utc_timestamp(offset_by(g.at, self.script.clock_offset_ns));
        for seq in from..g.from + g.size {
            let headline = format!("Market notice {seq}");
            let fields: [(u32, &str); 5] = [
                (43, "Y"),
                (122, &orig[..21]),
                (148, &headline),
                (33, "1"),
                (58, "replayed on request"),
            ];
            self.venue_sent += 1;
            self.last_venue_sent = Instant::now();
            self.venue.send_with_seq("B", &seq.to_string(), &fields)?;
        }
        Ok(())
    }

    /// The gateway counts a message received: a gap fill, a PossDup, and the replay since its
    /// last ResendRequest.
    fn gw_count_replay(&mut self, m: &Message) {
        let gap_fill = m.msg_type() == b"4" && m.get_flag(tag::GAP_FILL_FLAG);
        let poss_dup = m.get_flag(tag::POSS_DUP_FLAG);
        self.truth.gap_fills_in += u64::from(gap_fill);
        self.truth.poss_dups_in += u64::from(poss_dup);
        if let (true, Some(n)) = (gap_fill || poss_dup, self.replayed_in.as_mut()) {
            *n += 1;
            if *n == RESEND_STORM {
                self.truth.resend_storms_in += 1;
            }
        }
    }

    fn gw_handle(&mut self, m: &Message) -> io::Result<()> {
        let now = Instant::now();
        self.last_gw_recv = now;
        let mt = m.msg_type();
        let seq = m.get_u64(tag::MSG_SEQ_NUM).unwrap_or(0);
        self.gw_count_replay(m);
        if mt == b"4" {
            if let Some(new) = m.get_u64(tag::NEW_SEQ_NO) {
                self.expect_in = self.expect_in.max(new);
            }
        } else if mt == b"A" && m.get_flag(tag::RESET_SEQ_NUM_FLAG) {
            self.expect_in = seq + 1;
        } else if seq > self.expect_in && !m.get_flag(tag::POSS_DUP_FLAG) {
            self.truth.gaps_in += 1;
            self.truth.gap_messages_in += seq - self.expect_in;
            let from = self.expect_in.to_string();
            self.expect_in = seq + 1;
            self.truth.resend_requests_out += 1;
            self.replayed_in = Some(0);
            self.gw_send("2", &[(7, &from), (16, "0")])?;
        } else if seq == self.expect_in {
            self.expect_in += 1;
        }
        match mt {
            b"A" if self.state == GwState::LogonSent => {
                self.state = GwState::LoggedOn;
                self.truth.logons += 1;
                // Many engines confirm a new session with a TestRequest.
                self.test_request(now)?;
            }
            b"5" if self.state == GwState::LogonSent => {
                self.state = GwState::Refused;
                self.truth.refused_logons += 1;
                self.truth.last_logout_text = m.get_str(tag::TEXT).map(|t| t.into_owned());
            }
            b"0" if m.get(tag::TEST_REQ_ID).is_some() => self.test_req_out = None,
            b"1" if !self.deaf => {
                let id = m.get_str(tag::TEST_REQ_ID).unwrap_or_default().into_owned();
                self.gw_send("0", &[(112, &id)])?;
                if self.venue_test_req.as_deref() == Some(id.as_str()) {
                    self.venue_test_req = None;
                }
            }
            b"8" | b"9" => {
                match (mt, m.get(tag::EXEC_TYPE)) {
                    (b"8", Some(b"8")) => self.truth.order_rejects_in += 1,
                    (b"8", Some(b"F")) => self.truth.fills_in += 1,
                    _ => {}
                }
                let id = m.get_str(tag::CL_ORD_ID).unwrap_or_default();
                if self.in_flight.as_ref().is_some_and(|(i, _)| *i == id) {
                    let (id, sent) = self.in_flight.take().expect("checked");
                    self.truth.orders_answered += 1;
                    self.truth.round_trip_sum += sent.elapsed();
                    self.truth.delay_sum += self.delays.remove(&id).unwrap_or_default();
                    self.next_order = now + draw(&mut self.rng, self.order_pace);
                }
            }
            b"j" => {
                self.truth.business_rejects_in += 1;
                let id = m.get_str(tag::BUSINESS_REJECT_REF_ID).unwrap_or_default();
                if self.in_flight.as_ref().is_some_and(|(i, _)| *i == id) {
                    self.in_flight = None;
                    self.truth.orders_rejected += 1;
                    self.next_order = now + draw(&mut self.rng, self.order_pace);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn test_request(&mut self, now: Instant) -> io::Result<()> {
        self.test_req_id += 1;
        let id = format!("TEST{}", self.test_req_id);
        self.gw_send("1", &[(112, &id)])?;
        self.truth.test_requests_out += 1;
        self.test_req_out = Some(now);
        Ok(())
    }

    fn send_order(&mut self) -> io::Result<()> {
        self.orders_sent += 1;
        let n = self.orders_sent;
        let id = format!("{}-{}-{n}", self.gw.sender, self.rng.u32(..));
        let mt = if n % 7 == 0 {
            "G"
        } else if n % 5 == 0 {
            "F"
        } else {
            "D"
        };
        let qty = (100 * self.rng.u32(1..=20)).to_string();
        // Before the send: any observer's timestamp of it is later.
        let sent = Instant::now();
        self.gw_send(
            mt,
            &[
                (11, &id),
                (41, "prev"),
                (55, "XYZ"),
                (54, "1"),
                (38, &qty),
                (40, "2"),
                (44, "101.25"),
            ],
        )?;
        self.in_flight = Some((id, sent));
        Ok(())
    }

    fn gw_send(&mut self, mt: &str, fields: &[(u32, &str)]) -> io::Result<()> {
        self.last_gw_sent = Instant::now();
        self.gw.send(mt, fields)
    }

    fn venue_send(&mut self, mt: &str, fields: &[(u32, &str)]) -> io::Result<()> {
        if self.venue_logged_on && mt != "5" {
            self.venue_leave_out();
        }
        self.venue_sent += 1;
        self.last_venue_sent = Instant::now();
        self.venue.send(mt, fields)
    }

    /// The first gap pattern due leaves its numbers out before the venue's next message.
    fn venue_leave_out(&mut self) {
        let sent = self.venue_sent;
        let Some(i) = self.next_gap_at.iter().position(|at| sent >= *at) else {
            return;
        };
        let g = self.script.gaps[i];
        self.left_out.push(LeftOut {
            from: self.venue.next_out,
            size: g.size,
            replay: g.replay,
            at: SystemTime::now(),
        });
        self.venue.skip(g.size);
        self.next_gap_at[i] = sent.saturating_add(g.every);
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no Logout within 2 s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    fn script() -> VenueScript {
        VenueScript {
            comp_id: "VEN".into(),
            ack_delay: (Duration::from_millis(1), Duration::from_millis(3)),
            refuse_logons: None,
            business_reject_every: Some(4),
            gaps: vec![Gap {
                first: 5,
                every: 10,
                size: 2,
                replay: false,
            }],
            clock_offset_ns: 0,
            order_reject_every: Some(3),
            fill_every: Some(2),
        }
    }

    /// The link alone, stepped fast: it logs on, orders are answered or rejected, gaps are
    /// asked to be resent, and what the gateway counted equals what the venue did.
    #[test]
    fn a_link_logs_on_trades_gaps_and_logs_out() {
        let (g, v) = pair();
        let ms = Duration::from_millis;
        let mut l = Link::open(g, v, "GW1", script(), ms(100), (ms(1), ms(2)), None).unwrap();
        let end = Instant::now() + ms(1500);
        while Instant::now() < end {
            l.step(Instant::now(), false).unwrap();
            std::thread::sleep(ms(1));
        }
        assert!(l.logged_on());
        // The venue reads every order sent and answers what it owes: its counts are final.
        l.venue_step(Instant::now(), true).unwrap();
        let (venue_orders, new_orders) = (l.venue_orders, l.venue_new_orders);
        let (t, r) = l.log_out(None, "end of day");
        r.unwrap();
        // Of the venue's NewOrderSingles every third was rejected, every second of the rest
        // filled; the gateway received each answer.
        assert_eq!(t.order_rejects_in, new_orders / 3, "{t:?}");
        assert_eq!(t.fills_in, new_orders / 2 - new_orders / 6, "{t:?}");
        assert!(t.order_rejects_in > 0 && t.fills_in > 0, "{t:?}");
        assert_eq!(t.logons, 1);
        assert_eq!(t.logouts_us, 1);
        assert_eq!(t.last_logout_text.as_deref(), Some("end of day"));
        assert!(t.orders_answered > 10, "{t:?}");
        assert!(t.orders_rejected > 0, "{t:?}");
        assert_eq!(t.orders_answered + t.orders_rejected, venue_orders);
        assert_eq!(t.business_rejects_in, t.orders_rejected);
        assert!(t.gaps_in > 0 && t.gap_messages_in == 2 * t.gaps_in, "{t:?}");
        assert_eq!(t.resend_requests_out, t.gaps_in);
        assert_eq!(t.received.get("SequenceReset"), Some(&t.gaps_in));
        assert_eq!((t.gap_fills_in, t.poss_dups_in), (t.gaps_in, t.gaps_in));
        assert!(t.delay_sum >= ms(t.orders_answered) && t.round_trip_sum >= t.delay_sum);
    }

    /// Gaps answered by replay: one of [`RESEND_STORM`] numbers (a storm), one of one fewer
    /// (not one), and the script's gap fills between them. Every number replayed arrives once,
    /// as a News with PossDupFlag and an OrigSendingTime no later than its SendingTime (read in
    /// the gateway's message log).
    #[test]
    fn replayed_gaps_and_one_resend_storm() {
        let ms = Duration::from_millis;
        let (g, v) = pair();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.log");
        let log = MessageLog::create(&path, true).unwrap();
        let mut s = script();
        let once = |first, size| Gap {
            first,
            every: u64::MAX,
            size,
            replay: true,
        };
        s.gaps
            .extend([once(1, RESEND_STORM), once(3, RESEND_STORM - 1)]);
        let mut l = Link::open(g, v, "GW5", s, ms(100), (ms(1), ms(2)), Some(log)).unwrap();
        let end = Instant::now() + ms(800);
        while Instant::now() < end {
            l.step(Instant::now(), false).unwrap();
            std::thread::sleep(ms(1));
        }
        let (t, r) = l.log_out(None, "end of day");
        r.unwrap();
        let replayed = 2 * RESEND_STORM - 1;
        assert_eq!(t.received.get("News"), Some(&replayed), "{t:?}");
        assert_eq!(t.resend_storms_in, 1, "{t:?}");
        // The script's own gaps, each answered by one gap fill (a PossDup too).
        let fills = t.gap_fills_in;
        assert!(fills > 0, "{t:?}");
        assert_eq!(t.received.get("SequenceReset"), Some(&fills));
        assert_eq!(t.gaps_in, 2 + fills, "{t:?}");
        assert_eq!(t.resend_requests_out, t.gaps_in);
        assert_eq!(t.gap_messages_in, replayed + 2 * fills, "{t:?}");
        assert_eq!(t.poss_dups_in, replayed + fills, "{t:?}");

        let text = std::fs::read_to_string(&path).unwrap();
        let field = |line: &str, t: &str| {
            let f = line
                .split('|')
                .find_map(|f| f.strip_prefix(&format!("{t}=")));
            f.unwrap_or_else(|| panic!("no {t} in {line}")).to_owned()
        };
        let news: Vec<&str> = text.lines().filter(|l| l.contains("|35=B|")).collect();
        let mut seqs = std::collections::BTreeSet::new();
        for n in &news {
            assert_eq!(field(n, "43"), "Y", "{n}");
            assert!(field(n, "122") <= field(n, "52"), "{n}");
            seqs.insert(field(n, "34").parse::<u64>().unwrap());
        }
        assert_eq!((news.len() as u64, seqs.len() as u64), (replayed, replayed));
        // The first gap: right after the venue's Logon (MsgSeqNum 1).
        assert_eq!(seqs.first(), Some(&2));
        assert_eq!(seqs.range(2..2 + RESEND_STORM).count() as u64, RESEND_STORM);
    }

    #[test]
    fn a_refusing_venue_and_a_silent_one() {
        let ms = Duration::from_millis;
        let (g, v) = pair();
        let mut s = script();
        s.refuse_logons = Some("unknown CompID".into());
        let mut l = Link::open(g, v, "GW2", s, ms(100), (ms(1), ms(2)), None).unwrap();
        for _ in 0..20 {
            l.step(Instant::now(), false).unwrap();
            std::thread::sleep(ms(2));
        }
        let (t, r) = l.log_out(None, "bye");
        r.unwrap();
        assert_eq!((t.logons, t.refused_logons, t.logouts_us), (0, 1, 0));
        assert_eq!(t.last_logout_text.as_deref(), Some("unknown CompID"));

        // Silent: the gateway's TestRequests go unanswered until the venue wakes up.
        let (g, v) = pair();
        let mut l = Link::open(g, v, "GW3", script(), ms(100), (ms(1), ms(2)), None).unwrap();
        let step_for = |l: &mut Link, d: Duration, silent: bool| {
            let end = Instant::now() + d;
            while Instant::now() < end {
                l.step(Instant::now(), silent).unwrap();
                std::thread::sleep(ms(1));
            }
        };
        step_for(&mut l, ms(200), false);
        let before = l.truth.test_requests_out;
        step_for(&mut l, ms(500), true);
        assert!(l.truth.test_requests_out >= before + 2, "{:?}", l.truth);
        step_for(&mut l, ms(200), false);
        assert!(l.test_req_out.is_none());
        let (t, r) = l.log_out(Some("maintenance"), "");
        r.unwrap();
        assert_eq!(t.logouts_them, 1);
        assert_eq!(t.last_logout_text.as_deref(), Some("maintenance"));
    }

    /// The scripted fault: the venue's TestRequest is left unanswered (the gateway goes on
    /// heartbeating), then the venue resets the connection; the gateway read the TestRequest,
    /// and its end of the connection sees the reset.
    #[test]
    fn an_unanswered_test_request_then_a_reset() {
        let ms = Duration::from_millis;
        let (g, v) = pair();
        let watch = g.try_clone().unwrap();
        let mut l = Link::open(g, v, "GW4", script(), ms(100), (ms(1), ms(2)), None).unwrap();
        let step_for = |l: &mut Link, d: Duration| {
            let end = Instant::now() + d;
            while Instant::now() < end {
                l.step(Instant::now(), false).unwrap();
                std::thread::sleep(ms(1));
            }
        };
        step_for(&mut l, ms(100));
        assert!(!l.test_request_unanswered() && !l.refused());
        l.venue_test_request_unanswered().unwrap();
        step_for(&mut l, ms(300));
        assert!(l.test_request_unanswered());
        let (t, r) = l.venue_resets();
        r.unwrap();
        assert_eq!((t.test_requests_unanswered, t.resets_by_venue), (1, 1));
        assert_eq!(t.received.get("TestRequest"), Some(&1));
        assert_eq!((t.logouts_us, t.logouts_them), (0, 0));
        // The gateway's socket (closed by the link, read through a clone of it) was reset.
        let mut buf = [0u8; 64];
        let got = std::io::Read::read(&mut &watch, &mut buf);
        assert!(
            matches!(&got, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{got:?}"
        );
    }
}
