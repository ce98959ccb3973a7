/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The records fix_monitor.bpf.c shares with user space: the ring-buffer event, the health
 * record the storage iterator writes, the adoption record of the TCP iterator, and the
 * target maps' key and values. src/types.rs mirrors them (#[repr(C)]); its tests check each
 * size and offset against the BTF of the committed object, so a change here that is not made
 * there fails `cargo test`.
 *
 * Every field has an explicit size and the structs have no implicit padding.
 */
#ifndef FIX_MONITOR_H
#define FIX_MONITOR_H

/* At most this many port rules share one address block (one LPM entry). */
#define MAX_RULES_PER_NET 64
/* Size of the rules array; user space writes a new set into the half not in use. */
#define MAX_RULES 8192

enum event_kind {
	EV_STATE = 1,      /* a state change of a watched socket */
	EV_RESET_SENT = 2, /* we sent a RST on a watched socket after its close event */
};

/* Who ended the session, as far as the kernel shows it. */
enum closer {
	CLOSER_UNKNOWN = 0,
	CLOSER_LOCAL = 1,        /* we sent the first FIN (ESTABLISHED -> FIN_WAIT1) */
	CLOSER_REMOTE = 2,       /* the peer sent the first FIN (ESTABLISHED -> CLOSE_WAIT) */
	CLOSER_LOCAL_RESET = 3,  /* we sent a RST (tcp:tcp_send_reset) */
	CLOSER_REMOTE_RESET = 4, /* we received a RST (tcp:tcp_receive_reset) */
	CLOSER_ERROR = 5,        /* closed with a socket error and no RST (e.g. ETIMEDOUT) */
};

#define RST_RECEIVED 1
#define RST_SENT 2

struct event {
	__u64 ts_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 sock_cookie;
	__u64 netns_cookie;
	/* final counters (close) or counters so far */
	__u64 bytes_acked;
	__u64 bytes_received;
	__u64 bytes_sent;
	__u32 pid; /* the process that called connect(), 0 when unknown (accepted, adopted) */
	__u32 target;
	__u32 total_retrans;
	__u32 retrans_events; /* tcp:tcp_retransmit_skb hits counted in the storage */
	__u32 rst_reason;     /* enum sk_rst_reason of the RST we sent */
	__s32 sk_err;         /* sk->sk_err at the change (ECONNRESET, ETIMEDOUT...) */
	__u32 srtt_us;
	__u16 sport; /* host order */
	__u16 dport; /* host order */
	__u8 kind;
	__u8 oldstate;
	__u8 newstate;
	__u8 family;
	__u8 closer;
	__u8 rst; /* RST_RECEIVED | RST_SENT */
	__u8 adopted;
	__u8 _pad;
	char comm[16];
	__u8 saddr[16]; /* an IPv4 socket's addresses in IPv4-mapped form */
	__u8 daddr[16];
};

/* The socket-local storage of a watched socket. */
struct session {
	__u64 sock_cookie;
	__u64 established_ns;
	__u32 pid;
	__u32 target;
	__u32 retrans_events;
	__u32 rst_reason;
	__u8 closer;
	__u8 rst;
	__u8 closed;
	__u8 adopted; /* found by the TCP iterator, not seen connecting */
	__u32 slot;   /* its live-table slot + 1; 0: none */
	char comm[16];
};

/*
 * One storage entry's health, straight from tcp_sock: the fields tcp_get_info() reads, raw.
 * The times are the kernel's jiffies (tcp_jiffies32 stamps and chrono totals): user space
 * turns them into "ms since" and "µs busy" with the pass's clock (`struct pass_clock`), as
 * tcp_get_info() does, so an idle session's record does not change from one pass to the next.
 * The storage-map iterator writes one for every entry (a session not yet established or
 * already closed included), so the count of records is the count of storage entries: a
 * seq_file iterator may run the program twice for one object when its output overflows a
 * read, so the program itself cannot count. The live-table pass writes only the sessions
 * whose compared part (`bytes_acked` up to `target`) changed since the record it last wrote.
 */
struct health {
	__u64 sock_cookie;
	__u64 established_ns;
	/* The compared part starts here. */
	__u64 bytes_acked;
	__u64 bytes_received;
	__u64 bytes_sent;
	__u64 bytes_retrans; /* of bytes_sent, the bytes sent again */
	__u64 delivery_rate; /* bytes/s, tcp_compute_delivery_rate(): 0 before a sample */
	__u32 srtt_us;       /* srtt_us >> 3 */
	__u32 rttvar_us;     /* mdev_us >> 2 */
	__u32 min_rtt_us;    /* tcp_min_rtt(): ~0U before the first sample */
	__u32 total_retrans;
	__u32 retrans_events;
	__u32 lost;       /* lost_out */
	__u32 dsack_dups; /* segments the peer reported twice (D-SACK) */
	__u32 unacked;    /* packets_out */
	__u32 send_queue_bytes; /* write_seq - snd_una (ss: Send-Q) */
	__u32 notsent_bytes;    /* write_seq - snd_nxt */
	__u32 rcv_queue;        /* rcv_nxt - copied_seq */
	__u32 lrcvtime;         /* jiffies: icsk_ack.lrcvtime, the last data received */
	__u32 lsndtime;         /* jiffies: the last data sent */
	__u32 rcv_tstamp;       /* jiffies: the last ACK received */
	__u32 chrono_start;     /* jiffies: when the running chrono_type began */
	__u32 chrono_stat[3];   /* jiffies: busy, rwnd-limited, sndbuf-limited (ended spans) */
	__u32 snd_cwnd;
	__u32 snd_wnd;
	__u8 state;
	__u8 chrono_type; /* the running one (1 busy, 2 rwnd, 3 sndbuf), 0 none */
	__u8 _pad[2];
	/* The compared part ends here. */
	__u32 target;
	__u32 pid;
	__u16 sport;
	__u16 dport;
	__u8 family;
	__u8 adopted;
	__u8 closed; /* storage of a closing socket, not yet freed: not a session */
	__u8 _pad2;
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 _pad3;
};

/* The compared part of `struct health` (`bytes_acked` up to `target`), in 32-bit words. */
#define HEALTH_VALS_WORDS                                                                  \
	((__builtin_offsetof(struct health, target) -                                      \
	  __builtin_offsetof(struct health, bytes_acked)) / 4)

/* The clock of the last health pass, for user space to turn the records' jiffies into times. */
struct pass_clock {
	__u32 jiffies; /* tcp_jiffies32 at the pass */
	__u32 hz;      /* CONFIG_HZ as libbpf read it at load; 0 when it found no kernel config */
};

/*
 * What the health pass reads of a socket before its record, to tell cheaply whether anything
 * in the record can have changed since the pass last read it: every change to the record's
 * fields comes with a packet received or sent or a TCP timer (each refreshes `tcp_mstamp`, the
 * kernel's microsecond clock of the socket's last packet, before it changes anything), with
 * the application reading (`copied_seq`) or writing (`write_seq`, and the send-buffer
 * chrono), with a state change, or with a retransmission this program counted. A session is
 * skipped only if all of these are as they were and its `tcp_mstamp` was already older than
 * SETTLE_US when the pass last read its record: a packet being processed while the pass read
 * the fields (the socket is not locked) cannot leave a half-updated record standing.
 */
struct seen {
	__u64 mstamp;
	__u32 copied_seq;
	__u32 write_seq;
	__u32 chrono_start;
	__u32 retrans_events;
	__u8 state;
	__u8 chrono_type;
	__u8 _pad[6];
};

/*
 * A watched, established socket in the live table (an array of slots; the session's storage
 * keeps its slot), for kernels that refuse the storage-map iterator: the health pass walks the
 * slots in use instead, and writes a session only when its record's compared part differs
 * from `last` (or when asked to write all). `sk` is only read through bpf_rdonly_cast()
 * (fault-safe loads), and a record is written only when the socket at that address still has
 * the slot's cookie; the slot is freed (cookie 0) at the change to CLOSE, which comes before
 * the socket is freed.
 */
struct live {
	__u64 cookie; /* 0: a free slot */
	__u64 sk;
	__u64 established_ns;
	__u32 pid;
	__u32 target;
	__u32 retrans_events;
	__u8 adopted;
	__u8 reported; /* `last` holds the record the pass last wrote */
	__u8 settled;  /* `seen` was read before `last`, with no packet in flight (see below) */
	__u8 _pad;
	__u32 last[HEALTH_VALS_WORDS];
	__u32 _pad2;
	struct seen seen;
};

/*
 * The LPM key: the family (4 or 6) then the address (IPv4 in its first 4 bytes), the prefix
 * counting the family byte. An IPv4-mapped IPv6 peer (::ffff:a.b.c.d) is looked up as IPv4,
 * so it meets the IPv4 targets and never an IPv6 block, as the sidecar classifies it.
 */
struct target_key {
	__u32 prefixlen;
	__u8 family;
	__u8 addr[16];
	__u8 _pad[3];
};

/* Where the port rules of one address block are in the rules array. */
struct net_rules {
	__u32 first;
	__u32 count;
};

/* One target's ports: remote port (0 = any) and local port range (0..65535 = any). */
struct port_rule {
	__u16 rport;
	__u16 lport_lo;
	__u16 lport_hi;
	__u16 _pad;
	__u32 target;
};

struct settings {
	__u64 netns_cookie; /* 0: every network namespace */
};

enum counter {
	CNT_SEEN = 0,        /* TCP state changes seen */
	CNT_MATCHED = 1,     /* sockets that began to be watched */
	CNT_OTHER_NETNS = 2, /* matching sockets of other namespaces, dropped */
	CNT_EMITTED = 3,     /* ring-buffer records written */
	CNT_LOST = 4,        /* records the full ring had no room for */
	CNT_NO_STORAGE = 5,  /* storage could not be created (memory) */
	CNT_LIVE_FULL = 6,   /* the live table was full: a session without health there */
	CNT_LIVE_CHANGES = 7, /* entries put in or taken out of the live table */
	CNT_HEALTH_READS = 8, /* sessions whose tcp_sock the live-table pass read in full */
	CNT_MAX = 9,
};

#endif
