//! The FIX tag=value codec: framing, checking and writing messages (FIX.4.0 to FIX.4.4 and
//! FIXT.1.1, whose framing is the same).
//!
//! A message is `8=BeginString|9=BodyLength|35=MsgType|...|10=CheckSum|`, `|` standing for the
//! separator: SOH (0x01) on the wire, often `|` in engines' logs. BodyLength counts the bytes from
//! the one after BodyLength's separator up to and including the separator before `10=`; CheckSum
//! is the sum of every byte before `10=`, modulo 256, as three digits. Both are checked: a log
//! that replaced SOH by `|` is checked as if the SOHs were there.
//!
//! [`Decoder`] takes a byte stream in pieces of any size (TCP segments, file reads) and yields
//! messages. Bytes that do not start a message are skipped up to the next `8=FIX` and counted; a
//! message whose framing or checksum is wrong is counted as malformed and skipped, and decoding
//! resumes at the next `8=FIX` after its start. Nothing in the input can make it panic or grow
//! without bound: a BodyLength above [`MAX_BODY_LEN`] is malformed.
//!
//! Length-prefixed data fields (RawData, XmlData, SecureData, Signature, the Encoded* texts) may
//! hold the separator: their length field's value is used to read them.

use std::fmt;

/// The FIX field separator on the wire.
pub const SOH: u8 = 0x01;

/// The largest BodyLength accepted; a larger one is treated as malformed, so that a corrupt
/// length cannot make the decoder buffer without bound.
pub const MAX_BODY_LEN: usize = 1 << 20;

/// Tags the codec and the tracker read.
pub mod tag {
    /// BeginString: the protocol version (`FIX.4.4`, `FIXT.1.1`), the first field.
    pub const BEGIN_STRING: u32 = 8;
    /// BodyLength: bytes from after this field up to the CheckSum field, the second field.
    pub const BODY_LENGTH: u32 = 9;
    /// CheckSum: the byte sum modulo 256 as three digits, the last field.
    pub const CHECK_SUM: u32 = 10;
    /// ClOrdID: the client's order ID.
    pub const CL_ORD_ID: u32 = 11;
    /// BeginSeqNo: the first sequence number a ResendRequest asks for.
    pub const BEGIN_SEQ_NO: u32 = 7;
    /// EndSeqNo: the last sequence number a ResendRequest asks for (0: no limit).
    pub const END_SEQ_NO: u32 = 16;
    /// MsgSeqNum: the message's sequence number.
    pub const MSG_SEQ_NUM: u32 = 34;
    /// MsgType: the message's type, the third field.
    pub const MSG_TYPE: u32 = 35;
    /// NewSeqNo: the next sequence number a SequenceReset sets.
    pub const NEW_SEQ_NO: u32 = 36;
    /// PossDupFlag: `Y` on a message sent again (a resend).
    pub const POSS_DUP_FLAG: u32 = 43;
    /// RefSeqNum: the MsgSeqNum a Reject refers to.
    pub const REF_SEQ_NUM: u32 = 45;
    /// SenderCompID: the sender's CompID.
    pub const SENDER_COMP_ID: u32 = 49;
    /// SendingTime: when the message was sent (UTC).
    pub const SENDING_TIME: u32 = 52;
    /// TargetCompID: the receiver's CompID.
    pub const TARGET_COMP_ID: u32 = 56;
    /// Text: free text (a Logout's or a Reject's reason).
    pub const TEXT: u32 = 58;
    /// HeartBtInt: the heartbeat interval a Logon sets, in seconds.
    pub const HEART_BT_INT: u32 = 108;
    /// TestReqID: the identifier a TestRequest asks the Heartbeat to echo.
    pub const TEST_REQ_ID: u32 = 112;
    /// GapFillFlag: `Y` on a SequenceReset that fills a gap in a resend.
    pub const GAP_FILL_FLAG: u32 = 123;
    /// ResetSeqNumFlag: `Y` on a Logon that resets both sequence numbers to 1.
    pub const RESET_SEQ_NUM_FLAG: u32 = 141;
    /// DefaultApplVerID: the application version of a FIXT.1.1 session (Logon).
    pub const DEFAULT_APPL_VER_ID: u32 = 1137;
    /// OrigClOrdID: the ClOrdID of the order a cancel or replace refers to.
    pub const ORIG_CL_ORD_ID: u32 = 41;
    /// OrdStatus: the order's status in an ExecutionReport.
    pub const ORD_STATUS: u32 = 39;
    /// ExecType: what an ExecutionReport reports.
    pub const EXEC_TYPE: u32 = 150;
    /// BusinessRejectRefID: the ID (here the ClOrdID) a BusinessMessageReject refers to.
    pub const BUSINESS_REJECT_REF_ID: u32 = 379;
    /// RefTagID: the tag a Reject (35=3) is about.
    pub const REF_TAG_ID: u32 = 371;
    /// BusinessRejectReason: why a BusinessMessageReject (35=j) refused (8-10: throttled).
    pub const BUSINESS_REJECT_REASON: u32 = 380;
    /// PossResend: the message may have been sent before under another MsgSeqNum.
    pub const POSS_RESEND: u32 = 97;
    /// CxlRejReason: why an OrderCancelReject (35=9) refused.
    pub const CXL_REJ_REASON: u32 = 102;
    /// OrdRejReason: why an ExecutionReport (ExecType 8) rejected an order.
    pub const ORD_REJ_REASON: u32 = 103;
}

/// Data fields whose value may contain the separator, each after the field giving its length
/// (length tag, data tag), from the FIX 4.4 / 5.0 data dictionaries.
const LENGTH_PREFIXED: &[(u32, u32)] = &[
    (90, 91),   // SecureDataLen, SecureData
    (93, 89),   // SignatureLength, Signature
    (95, 96),   // RawDataLength, RawData
    (212, 213), // XmlDataLen, XmlData
    (348, 349), // EncodedIssuerLen, EncodedIssuer
    (350, 351), // EncodedSecurityDescLen, EncodedSecurityDesc
    (352, 353), // EncodedListExecInstLen, EncodedListExecInst
    (354, 355), // EncodedTextLen, EncodedText
    (356, 357), // EncodedSubjectLen, EncodedSubject
    (358, 359), // EncodedHeadlineLen, EncodedHeadline
    (360, 361), // EncodedAllocTextLen, EncodedAllocText
    (362, 363), // EncodedUnderlyingIssuerLen, EncodedUnderlyingIssuer
    (364, 365), // EncodedUnderlyingSecurityDescLen, EncodedUnderlyingSecurityDesc
    (445, 446), // EncodedListStatusTextLen, EncodedListStatusText
    (618, 619), // EncodedLegIssuerLen, EncodedLegIssuer
    (621, 622), // EncodedLegSecurityDescLen, EncodedLegSecurityDesc
];

fn data_tag_for(length_tag: u32) -> Option<u32> {
    LENGTH_PREFIXED
        .iter()
        .find(|(l, _)| *l == length_tag)
        .map(|(_, d)| *d)
}

/// One decoded message: its bytes and where each field's value lies in them.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    raw: Vec<u8>,
    /// (tag, start, end) of each field's value in `raw`, in message order.
    fields: Vec<(u32, u32, u32)>,
    /// Where the first field of each of [`HOT_TAGS`] is in `fields` (plus one; 0: absent),
    /// found while parsing: the tags the tracker asks every message for, mostly absent, are
    /// answered without a scan.
    hot: [u16; HOT_TAGS.len()],
}

/// The tags looked up on every message ([`Message::get`] answers them from an index).
const HOT_TAGS: [u32; 10] = [
    tag::MSG_SEQ_NUM,
    tag::POSS_DUP_FLAG,
    tag::POSS_RESEND,
    tag::GAP_FILL_FLAG,
    tag::NEW_SEQ_NO,
    tag::RESET_SEQ_NUM_FLAG,
    tag::CL_ORD_ID,
    tag::EXEC_TYPE,
    tag::TEXT,
    tag::TEST_REQ_ID,
];

/// The slot of `tag` in [`HOT_TAGS`].
fn hot_slot(tag: u32) -> Option<usize> {
    match tag {
        tag::MSG_SEQ_NUM => Some(0),
        tag::POSS_DUP_FLAG => Some(1),
        tag::POSS_RESEND => Some(2),
        tag::GAP_FILL_FLAG => Some(3),
        tag::NEW_SEQ_NO => Some(4),
        tag::RESET_SEQ_NUM_FLAG => Some(5),
        tag::CL_ORD_ID => Some(6),
        tag::EXEC_TYPE => Some(7),
        tag::TEXT => Some(8),
        tag::TEST_REQ_ID => Some(9),
        _ => None,
    }
}

impl Message {
    /// The first value of `tag`, if present.
    pub fn get(&self, tag: u32) -> Option<&[u8]> {
        let at = |i: usize| {
            let (_, s, e) = self.fields[i];
            &self.raw[s as usize..e as usize]
        };
        match hot_slot(tag).map(|h| self.hot[h]) {
            Some(0) => None,
            Some(u16::MAX) | None => (self.fields.iter().position(|(t, _, _)| *t == tag)).map(at),
            Some(n) => Some(at(usize::from(n) - 1)),
        }
    }

    /// The first value of `tag` as text (lossy: FIX values are ASCII in practice).
    pub fn get_str(&self, tag: u32) -> Option<std::borrow::Cow<'_, str>> {
        self.get(tag).map(String::from_utf8_lossy)
    }

    /// The first value of `tag` as an unsigned integer, if it is one.
    pub fn get_u64(&self, tag: u32) -> Option<u64> {
        parse_u64(self.get(tag)?)
    }

    /// A boolean field (`Y`/`N`); absent or anything else is `false`.
    pub fn get_flag(&self, tag: u32) -> bool {
        self.get(tag) == Some(b"Y")
    }

    /// The BeginString (tag 8); empty if absent.
    pub fn begin_string(&self) -> &[u8] {
        self.get(tag::BEGIN_STRING).unwrap_or_default()
    }

    /// The MsgType (tag 35); empty if absent.
    pub fn msg_type(&self) -> &[u8] {
        self.get(tag::MSG_TYPE).unwrap_or_default()
    }

    /// Every field, in order, as (tag, value).
    pub fn fields(&self) -> impl Iterator<Item = (u32, &[u8])> + '_ {
        self.fields
            .iter()
            .map(|&(t, s, e)| (t, &self.raw[s as usize..e as usize]))
    }

    /// The message as it was read (with the separator it was read with).
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_list();
        for (t, v) in self.fields() {
            l.entry(&format_args!("{t}={}", String::from_utf8_lossy(v)));
        }
        l.finish()
    }
}

pub(crate) fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Why a message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The second field is not `9=<digits>`, or BodyLength is above [`MAX_BODY_LEN`].
    BadBodyLength,
    /// After BodyLength bytes, there is no `10=NNN` trailer.
    BadTrailer,
    /// The trailer's checksum does not match the bytes.
    BadCheckSum,
    /// A field is not `<digits>=<value>`, or MsgType is not the third field.
    BadField,
}

impl Malformed {
    /// The reason's short name as reported: `body_length`, `trailer`, `checksum` or `field`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Malformed::BadBodyLength => "body_length",
            Malformed::BadTrailer => "trailer",
            Malformed::BadCheckSum => "checksum",
            Malformed::BadField => "field",
        }
    }
}

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A well-formed message.
    Message(Message),
    /// A message rejected, and why; decoding goes on after it.
    Malformed(Malformed),
}

/// Counts kept by a [`Decoder`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Well-formed messages yielded.
    pub messages: u64,
    /// Malformed messages skipped.
    pub malformed: u64,
    /// Bytes dropped while looking for the start of a message (`8=FIX`), including the bytes of
    /// malformed messages.
    pub bytes_skipped: u64,
}

/// A streaming decoder: feed it bytes in pieces, take messages out.
#[derive(Debug)]
pub struct Decoder {
    sep: u8,
    buf: Vec<u8>,
    /// Start of the unread part of `buf` (compacted lazily).
    pos: usize,
    /// What it has decoded and skipped so far.
    pub stats: DecoderStats,
}

const START: &[u8] = b"8=FIX";

impl Decoder {
    /// A decoder for messages separated by `sep` (SOH on the wire).
    pub fn new(sep: u8) -> Decoder {
        Decoder {
            sep,
            buf: Vec::new(),
            pos: 0,
            stats: DecoderStats::default(),
        }
    }

    /// Append bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet a whole message.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The stream lost bytes (a TCP gap): drop what is buffered, counted as skipped, and resume
    /// at the next `8=FIX`.
    pub fn reset(&mut self) {
        self.stats.bytes_skipped += self.buffered() as u64;
        self.buf.clear();
        self.pos = 0;
    }

    /// The next message or malformed message, or `None` when more bytes are needed.
    pub fn next_message(&mut self) -> Option<Decoded> {
        loop {
            let rest = &self.buf[self.pos..];
            // Find the start of a message; keep a tail that may be the start of `8=FIX`.
            match find(rest, START) {
                Some(0) => {}
                Some(i) => {
                    self.skip(i);
                    continue;
                }
                None => {
                    let keep = partial_suffix(rest, START);
                    self.skip(rest.len() - keep);
                    return None;
                }
            }
            match frame(rest, self.sep) {
                Frame::NeedMore => return None,
                Frame::Bad(why) => {
                    // Resynchronise at the next `8=FIX` after this one.
                    let next = find(&rest[1..], START).map_or(rest.len(), |i| i + 1);
                    let keep = if next == rest.len() {
                        partial_suffix(&rest[1..], START)
                    } else {
                        0
                    };
                    self.skip(next - keep);
                    self.stats.malformed += 1;
                    return Some(Decoded::Malformed(why));
                }
                Frame::Whole(len) => {
                    let bytes = &rest[..len];
                    let result = parse_fields(bytes, self.sep);
                    self.pos += len;
                    return Some(match result {
                        Ok(m) => {
                            self.stats.messages += 1;
                            Decoded::Message(m)
                        }
                        Err(why) => {
                            self.stats.malformed += 1;
                            self.stats.bytes_skipped += len as u64;
                            Decoded::Malformed(why)
                        }
                    });
                }
            }
        }
    }

    fn skip(&mut self, n: usize) {
        self.pos += n;
        self.stats.bytes_skipped += n as u64;
    }
}

impl Iterator for Decoder {
    type Item = Decoded;
    fn next(&mut self) -> Option<Decoded> {
        self.next_message()
    }
}

enum Frame {
    NeedMore,
    Bad(Malformed),
    /// A whole message of this many bytes, BodyLength, trailer and checksum checked.
    Whole(usize),
}

/// Frame one message at the start of `b` (which starts with `8=FIX`).
fn frame(b: &[u8], sep: u8) -> Frame {
    // 8=BeginString<sep>
    let Some(e8) = memchr(sep, b) else {
        // A BeginString longer than any real one is not a message.
        return if b.len() > 32 {
            Frame::Bad(Malformed::BadBodyLength)
        } else {
            Frame::NeedMore
        };
    };
    // 9=digits<sep>
    let rest = &b[e8 + 1..];
    let need = b"9=";
    if rest.len() < 2 {
        return if need.starts_with(rest) {
            Frame::NeedMore
        } else {
            Frame::Bad(Malformed::BadBodyLength)
        };
    }
    if &rest[..2] != need {
        return Frame::Bad(Malformed::BadBodyLength);
    }
    let digits = &rest[2..];
    let mut n = 0usize;
    let mut i = 0;
    loop {
        match digits.get(i) {
            None => return Frame::NeedMore,
            Some(&c) if c == sep && i > 0 => break,
            Some(c) if c.is_ascii_digit() && i < 8 => {
                n = n * 10 + usize::from(c - b'0');
                i += 1;
            }
            Some(_) => return Frame::Bad(Malformed::BadBodyLength),
        }
    }
    if n > MAX_BODY_LEN {
        return Frame::Bad(Malformed::BadBodyLength);
    }
    let body_start = e8 + 1 + 2 + i + 1;
    let trailer = body_start + n;
    let total = trailer + 7; // 10=NNN<sep>
    if b.len() < total {
        // Check what is there of the trailer early, so that a wrong BodyLength is found
        // without waiting for bytes that may never come.
        if b.len() > trailer {
            let have = &b[trailer..];
            let want = [b'1', b'0', b'='];
            if !want.starts_with(&have[..have.len().min(3)]) {
                return Frame::Bad(Malformed::BadTrailer);
            }
        }
        return Frame::NeedMore;
    }
    if n == 0 || b[trailer - 1] != sep {
        return Frame::Bad(Malformed::BadTrailer);
    }
    let t = &b[trailer..total];
    if &t[..3] != b"10=" || !t[3..6].iter().all(u8::is_ascii_digit) || t[6] != sep {
        return Frame::Bad(Malformed::BadTrailer);
    }
    let want = u32::from(t[3] - b'0') * 100 + u32::from(t[4] - b'0') * 10 + u32::from(t[5] - b'0');
    if checksum(&b[..trailer], sep) != want {
        return Frame::Bad(Malformed::BadCheckSum);
    }
    Frame::Whole(total)
}

/// The FIX checksum of `bytes`, counting `sep` as SOH.
pub fn checksum(bytes: &[u8], sep: u8) -> u32 {
    let sum: u32 = bytes.iter().map(|&c| u32::from(c)).sum();
    let seps = if sep == SOH {
        0
    } else {
        bytes.iter().filter(|&&c| c == sep).count() as u32
    };
    // Each separator contributed `sep` instead of 1.
    (sum.wrapping_sub(seps.wrapping_mul(u32::from(sep) - 1))) % 256
}

/// Split a framed message into fields.
fn parse_fields(b: &[u8], sep: u8) -> Result<Message, Malformed> {
    let mut fields = Vec::with_capacity(32);
    let mut hot = [0u16; HOT_TAGS.len()];
    let mut i = 0;
    let mut data_len: Option<(u32, usize)> = None;
    while i < b.len() {
        let eq = memchr(b'=', &b[i..]).ok_or(Malformed::BadField)? + i;
        let tag_bytes = &b[i..eq];
        let tag = match parse_u64(tag_bytes) {
            Some(t) if t > 0 && t <= u64::from(u32::MAX) && tag_bytes[0] != b'0' => t as u32,
            _ => return Err(Malformed::BadField),
        };
        let vstart = eq + 1;
        let vend = match data_len.take() {
            Some((dtag, len)) if dtag == tag => {
                let end = vstart.checked_add(len).ok_or(Malformed::BadField)?;
                if end >= b.len() || b[end] != sep {
                    return Err(Malformed::BadField);
                }
                end
            }
            _ => memchr(sep, &b[vstart..]).ok_or(Malformed::BadField)? + vstart,
        };
        if let Some(dtag) = data_tag_for(tag) {
            let len = parse_u64(&b[vstart..vend]).ok_or(Malformed::BadField)?;
            data_len = Some((dtag, len.min(MAX_BODY_LEN as u64) as usize));
        }
        if let Some(h) = hot_slot(tag) {
            // Beyond u16::MAX - 1 fields (a 1 MiB body of tiny fields) the index says "scan".
            if hot[h] == 0 {
                let n = u16::try_from(fields.len() + 1).unwrap_or(u16::MAX);
                hot[h] = n;
            }
        }
        fields.push((tag, vstart as u32, vend as u32));
        i = vend + 1;
    }
    // 8, 9, 35 first, 10 last (8, 9 and 10 were checked by the framing).
    if fields.len() < 4 || fields[2].0 != tag::MSG_TYPE || fields[2].1 == fields[2].2 {
        return Err(Malformed::BadField);
    }
    Ok(Message {
        raw: b.to_vec(),
        fields,
        hot,
    })
}

/// Parse exactly one message from `bytes` (a log line's message part, a test's bytes).
pub fn parse(bytes: &[u8], sep: u8) -> Result<Message, Malformed> {
    match frame(bytes, sep) {
        Frame::Whole(n) if n == bytes.len() => parse_fields(bytes, sep),
        Frame::Whole(_) | Frame::NeedMore => Err(Malformed::BadTrailer),
        Frame::Bad(why) => Err(why),
    }
}

/// Write a message: `8=begin_string`, `9=` computed, the fields in order (the first should be
/// 35=MsgType), `10=` computed. Values must not contain `sep` except in length-prefixed data
/// fields.
pub fn write(begin_string: &str, fields: &[(u32, &[u8])], sep: u8) -> Vec<u8> {
    let mut body = Vec::with_capacity(fields.iter().map(|(_, v)| v.len() + 8).sum());
    for (t, v) in fields {
        body.extend_from_slice(t.to_string().as_bytes());
        body.push(b'=');
        body.extend_from_slice(v);
        body.push(sep);
    }
    let mut out = Vec::with_capacity(body.len() + 32);
    out.extend_from_slice(b"8=");
    out.extend_from_slice(begin_string.as_bytes());
    out.push(sep);
    out.extend_from_slice(b"9=");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.push(sep);
    out.extend_from_slice(&body);
    let sum = checksum(&out, sep);
    out.extend_from_slice(format!("10={sum:03}").as_bytes());
    out.push(sep);
    out
}

fn memchr(c: u8, b: &[u8]) -> Option<usize> {
    b.iter().position(|&x| x == c)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if hay.len() < needle.len() {
        return None;
    }
    let mut from = 0;
    while let Some(i) = memchr(needle[0], &hay[from..]) {
        let at = from + i;
        if hay.len() - at < needle.len() {
            return None;
        }
        if &hay[at..at + needle.len()] == needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The length of the longest suffix of `hay` that is a proper prefix of `needle`.
fn partial_suffix(hay: &[u8], needle: &[u8]) -> usize {
    (1..needle.len().min(hay.len() + 1))
        .rev()
        .find(|&k| hay[hay.len() - k..] == needle[..k])
        .unwrap_or(0)
}

/// The standard MsgTypes (FIX 4.0 to 5.0 SP2) and their names.
const MSG_TYPES: &[(&[u8], &str)] = &[
    (b"0", "Heartbeat"),
    (b"1", "TestRequest"),
    (b"2", "ResendRequest"),
    (b"3", "Reject"),
    (b"4", "SequenceReset"),
    (b"5", "Logout"),
    (b"6", "IOI"),
    (b"7", "Advertisement"),
    (b"8", "ExecutionReport"),
    (b"9", "OrderCancelReject"),
    (b"A", "Logon"),
    (b"B", "News"),
    (b"C", "Email"),
    (b"D", "NewOrderSingle"),
    (b"E", "NewOrderList"),
    (b"F", "OrderCancelRequest"),
    (b"G", "OrderCancelReplaceRequest"),
    (b"H", "OrderStatusRequest"),
    (b"J", "AllocationInstruction"),
    (b"K", "ListCancelRequest"),
    (b"L", "ListExecute"),
    (b"M", "ListStatusRequest"),
    (b"N", "ListStatus"),
    (b"P", "AllocationInstructionAck"),
    (b"Q", "DontKnowTrade"),
    (b"R", "QuoteRequest"),
    (b"S", "Quote"),
    (b"T", "SettlementInstructions"),
    (b"V", "MarketDataRequest"),
    (b"W", "MarketDataSnapshotFullRefresh"),
    (b"X", "MarketDataIncrementalRefresh"),
    (b"Y", "MarketDataRequestReject"),
    (b"Z", "QuoteCancel"),
    (b"a", "QuoteStatusRequest"),
    (b"b", "MassQuoteAcknowledgement"),
    (b"c", "SecurityDefinitionRequest"),
    (b"d", "SecurityDefinition"),
    (b"e", "SecurityStatusRequest"),
    (b"f", "SecurityStatus"),
    (b"g", "TradingSessionStatusRequest"),
    (b"h", "TradingSessionStatus"),
    (b"i", "MassQuote"),
    (b"j", "BusinessMessageReject"),
    (b"k", "BidRequest"),
    (b"l", "BidResponse"),
    (b"m", "ListStrikePrice"),
    (b"n", "XMLnonFIX"),
    (b"o", "RegistrationInstructions"),
    (b"p", "RegistrationInstructionsResponse"),
    (b"q", "OrderMassCancelRequest"),
    (b"r", "OrderMassCancelReport"),
    (b"s", "NewOrderCross"),
    (b"t", "CrossOrderCancelReplaceRequest"),
    (b"u", "CrossOrderCancelRequest"),
    (b"v", "SecurityTypeRequest"),
    (b"w", "SecurityTypes"),
    (b"x", "SecurityListRequest"),
    (b"y", "SecurityList"),
    (b"z", "DerivativeSecurityListRequest"),
    (b"AA", "DerivativeSecurityList"),
    (b"AB", "NewOrderMultileg"),
    (b"AC", "MultilegOrderCancelReplace"),
    (b"AD", "TradeCaptureReportRequest"),
    (b"AE", "TradeCaptureReport"),
    (b"AF", "OrderMassStatusRequest"),
    (b"AG", "QuoteRequestReject"),
    (b"AH", "RFQRequest"),
    (b"AI", "QuoteStatusReport"),
    (b"AJ", "QuoteResponse"),
    (b"AK", "Confirmation"),
    (b"AL", "PositionMaintenanceRequest"),
    (b"AM", "PositionMaintenanceReport"),
    (b"AN", "RequestForPositions"),
    (b"AO", "RequestForPositionsAck"),
    (b"AP", "PositionReport"),
    (b"AQ", "TradeCaptureReportRequestAck"),
    (b"AR", "TradeCaptureReportAck"),
    (b"AS", "AllocationReport"),
    (b"AT", "AllocationReportAck"),
    (b"AU", "ConfirmationAck"),
    (b"AV", "SettlementInstructionRequest"),
    (b"AW", "AssignmentReport"),
    (b"AX", "CollateralRequest"),
    (b"AY", "CollateralAssignment"),
    (b"AZ", "CollateralResponse"),
    (b"BA", "CollateralReport"),
    (b"BB", "CollateralInquiry"),
    (b"BC", "NetworkCounterpartySystemStatusRequest"),
    (b"BD", "NetworkCounterpartySystemStatusResponse"),
    (b"BE", "UserRequest"),
    (b"BF", "UserResponse"),
    (b"BG", "CollateralInquiryAck"),
    (b"BH", "ConfirmationRequest"),
    (b"BI", "TradingSessionListRequest"),
    (b"BJ", "TradingSessionList"),
    (b"BK", "SecurityListUpdateReport"),
    (b"BL", "AdjustedPositionReport"),
    (b"BM", "AllocationInstructionAlert"),
    (b"BN", "ExecutionAcknowledgement"),
    (b"BO", "ContraryIntentionReport"),
    (b"BP", "SecurityDefinitionUpdateReport"),
];

/// The standard name of a MsgType (FIX 4.0 to 5.0 SP2), or `None` for a custom one.
pub fn msg_type_name(t: &[u8]) -> Option<&'static str> {
    MSG_TYPES.iter().find(|(k, _)| *k == t).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soh(s: &str) -> Vec<u8> {
        s.replace('|', "\x01").into_bytes()
    }

    /// A message from the FIX 4.4 specification's examples style, checksum computed by hand.
    fn logon() -> Vec<u8> {
        write(
            "FIX.4.4",
            &[
                (35, b"A"),
                (49, b"GW"),
                (56, b"VENUE"),
                (34, b"1"),
                (52, b"20260101-12:00:00.000"),
                (98, b"0"),
                (108, b"30"),
            ],
            SOH,
        )
    }

    #[test]
    fn get_answers_indexed_and_other_tags_alike_first_of_each() {
        let m = parse(
            &write(
                "FIX.4.4",
                &[
                    (35, b"8"),
                    (34, b"7"),
                    (58, b"a"),
                    (58, b"b"),
                    (55, b"X"),
                    (34, b"9"),
                ],
                SOH,
            ),
            SOH,
        )
        .unwrap();
        for t in [34, 58, 55, 43, 97, 999] {
            let scanned = m.fields().find(|(tag, _)| *tag == t).map(|(_, v)| v);
            assert_eq!(m.get(t), scanned, "tag {t}");
        }
        assert_eq!(m.get(58), Some(&b"a"[..]));
        assert_eq!(m.get_u64(34), Some(7));
        assert_eq!(m.get(43), None);
    }

    #[test]
    fn known_message_checks_against_hand_computed_fields() {
        // BodyLength and CheckSum computed independently of `write`.
        let body = "35=0|49=A|56=B|34=2|52=20260101-00:00:00|";
        let head = format!("8=FIX.4.2|9={}|", body.len());
        let pre = soh(&format!("{head}{body}"));
        let sum: u32 = pre.iter().map(|&c| u32::from(c)).sum::<u32>() % 256;
        let mut m = pre.clone();
        m.extend_from_slice(format!("10={sum:03}\x01").as_bytes());
        let msg = parse(&m, SOH).unwrap();
        assert_eq!(msg.msg_type(), b"0");
        assert_eq!(msg.get_u64(tag::MSG_SEQ_NUM), Some(2));
        assert_eq!(msg.get(tag::SENDER_COMP_ID), Some(&b"A"[..]));
        assert_eq!(
            write(
                "FIX.4.2",
                &[
                    (35, b"0"),
                    (49, b"A"),
                    (56, b"B"),
                    (34, b"2"),
                    (52, b"20260101-00:00:00")
                ],
                SOH
            ),
            m
        );
    }

    #[test]
    fn pipe_separated_log_line_checks_as_if_soh() {
        let wire = logon();
        let piped: Vec<u8> = wire
            .iter()
            .map(|&c| if c == SOH { b'|' } else { c })
            .collect();
        let m = parse(&piped, b'|').unwrap();
        assert_eq!(m.get(tag::HEART_BT_INT), Some(&b"30"[..]));
        assert_eq!(write("FIX.4.4", &[(35, b"A")], b'|').last(), Some(&b'|'));
    }

    #[test]
    fn stream_in_one_byte_pieces_with_garbage_between() {
        let mut stream = b"garbage 8=FI".to_vec();
        stream.extend(logon());
        stream.extend(b"\x00\x01junk");
        stream.extend(logon());
        let mut d = Decoder::new(SOH);
        let mut got = Vec::new();
        for b in &stream {
            d.feed(std::slice::from_ref(b));
            got.extend(d.by_ref());
        }
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|g| matches!(g, Decoded::Message(_))));
        assert_eq!(d.stats.messages, 2);
        assert_eq!(d.stats.malformed, 0);
        assert_eq!(d.stats.bytes_skipped, (b"garbage 8=FI".len() + 6) as u64);
    }

    #[test]
    fn bad_checksum_bad_length_and_bad_trailer_are_counted_and_skipped() {
        let good = logon();
        let mut bad_sum = good.clone();
        let n = bad_sum.len();
        bad_sum[n - 2] = if bad_sum[n - 2] == b'9' { b'0' } else { b'9' };
        let text = String::from_utf8(good.clone()).unwrap();
        let bad_len = text.replacen("9=", "9=1", 1).into_bytes();
        let bad_trailer = text.replacen("\x0110=", "\x0111=", 1).into_bytes();
        let mut d = Decoder::new(SOH);
        for m in [&bad_sum, &good, &bad_len, &good, &bad_trailer, &good] {
            d.feed(m);
        }
        let got: Vec<_> = d.by_ref().collect();
        let kinds: Vec<_> = got
            .iter()
            .map(|g| match g {
                Decoded::Message(_) => "ok",
                Decoded::Malformed(m) => m.as_str(),
            })
            .collect();
        assert_eq!(kinds, ["checksum", "ok", "trailer", "ok", "trailer", "ok"]);
        assert_eq!(d.stats.messages, 3);
        assert_eq!(d.stats.malformed, 3);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn huge_body_length_is_malformed_not_buffered() {
        let mut d = Decoder::new(SOH);
        d.feed(b"8=FIX.4.4\x019=99999999\x0135=A\x01");
        assert_eq!(
            d.next_message(),
            Some(Decoded::Malformed(Malformed::BadBodyLength))
        );
        assert_eq!(d.next_message(), None);
    }

    #[test]
    fn raw_data_may_hold_the_separator() {
        let m = write(
            "FIXT.1.1",
            &[(35, b"A"), (95, b"5"), (96, b"a\x01b\x01c"), (1137, b"9")],
            SOH,
        );
        let p = parse(&m, SOH).unwrap();
        assert_eq!(p.get(96), Some(&b"a\x01b\x01c"[..]));
        assert_eq!(p.get(tag::DEFAULT_APPL_VER_ID), Some(&b"9"[..]));
    }

    #[test]
    fn reset_after_a_gap_resumes_at_the_next_message() {
        let good = logon();
        let mut d = Decoder::new(SOH);
        d.feed(&good[..20]);
        assert_eq!(d.next_message(), None);
        d.reset();
        d.feed(&good[40..]);
        d.feed(&good);
        assert!(matches!(d.next_message(), Some(Decoded::Message(_))));
        assert_eq!(d.next_message(), None);
        assert_eq!(d.stats.bytes_skipped, 20 + (good.len() - 40) as u64);
    }

    #[test]
    fn names() {
        assert_eq!(msg_type_name(b"D"), Some("NewOrderSingle"));
        assert_eq!(msg_type_name(b"j"), Some("BusinessMessageReject"));
        assert_eq!(msg_type_name(b"U1"), None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = Vec<u8>> {
            // Any bytes but the separators and nothing empty.
            proptest::collection::vec(
                any::<u8>().prop_filter("sep", |c| *c != SOH && *c != b'|'),
                1..20,
            )
        }

        fn fields() -> impl Strategy<Value = Vec<(u32, Vec<u8>)>> {
            let tag = (11u32..100_000).prop_filter("no framing or data tags", |t| {
                *t != 10
                    && data_tag_for(*t).is_none()
                    && !LENGTH_PREFIXED.iter().any(|(_, d)| d == t)
            });
            proptest::collection::vec((tag, value()), 0..20)
        }

        proptest! {
            #[test]
            fn any_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
                let mut d = Decoder::new(SOH);
                for c in &chunks {
                    d.feed(c);
                    for _ in d.by_ref() {}
                }
                let total: usize = chunks.iter().map(Vec::len).sum();
                prop_assert!(d.buffered() <= total);
                let _ = parse(&chunks.concat(), b'|');
            }

            #[test]
            fn fix_like_bytes_never_panic(parts in proptest::collection::vec(prop_oneof![
                Just(b"8=FIX.4.4\x01".to_vec()), Just(b"9=".to_vec()), Just(b"10=".to_vec()),
                Just(b"\x01".to_vec()), Just(b"95=3\x0196=".to_vec()), Just(b"35=".to_vec()),
                proptest::collection::vec(b'0'..=b'9', 1..4), proptest::collection::vec(any::<u8>(), 1..4),
            ], 0..40)) {
                let bytes = parts.concat();
                let mut d = Decoder::new(SOH);
                d.feed(&bytes);
                for _ in d.by_ref() {}
                let _ = parse(&bytes, SOH);
            }

            #[test]
            fn written_then_parsed_reads_back(
                begin in prop_oneof![Just("FIX.4.0"), Just("FIX.4.2"), Just("FIX.4.4"), Just("FIXT.1.1")],
                mt in prop_oneof![Just(b"0".to_vec()), Just(b"D".to_vec()), Just(b"AE".to_vec()), Just(b"U7".to_vec())],
                fs in fields(),
                sep in prop_oneof![Just(SOH), Just(b'|')],
                split in 0usize..400,
            ) {
                let mut all: Vec<(u32, &[u8])> = vec![(35, &mt[..])];
                all.extend(fs.iter().map(|(t, v)| (*t, &v[..])));
                let bytes = write(begin, &all, sep);
                let m = parse(&bytes, sep).unwrap();
                let got: Vec<(u32, Vec<u8>)> = m.fields().map(|(t, v)| (t, v.to_vec())).collect();
                prop_assert_eq!(got.len(), all.len() + 3);
                prop_assert_eq!(&got[0], &(8, begin.as_bytes().to_vec()));
                for (g, w) in got[2..got.len() - 1].iter().zip(&all) {
                    prop_assert_eq!(g.0, w.0);
                    prop_assert_eq!(&g.1[..], w.1);
                }
                // The same through the streaming decoder, split anywhere.
                let mut d = Decoder::new(sep);
                let at = split.min(bytes.len());
                d.feed(&bytes[..at]);
                let first = d.next_message();
                d.feed(&bytes[at..]);
                let got = first.or_else(|| d.next_message());
                prop_assert_eq!(got, Some(Decoded::Message(m)));
            }
        }
    }
}
