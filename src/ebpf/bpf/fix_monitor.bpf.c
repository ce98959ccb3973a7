// SPDX-License-Identifier: GPL-2.0
/*
 * fix-monitor's kernel programs (CO-RE, libbpf conventions). Built by ../build-bpf.sh into
 * fix_monitor.bpf.o, which is committed; the loader is ../src/lib.rs.
 *
 * Which socket is watched: a TCP socket of the configured network namespace whose remote
 * address falls in a target block (LPM trie `targets`) and whose ports match one of that
 * block's rules (array `rules`). A watched socket gets socket-local storage (`sessions`) when
 * it connects or becomes ESTABLISHED; sockets that were already ESTABLISHED at start get it
 * from the TCP iterator `adopt`. Only sockets with storage cost anything afterwards: the
 * health iterator `dump_health` walks the storage map, not the host's sockets. Where the kernel
 * refuses map-element iterators, `live_pass` (run with BPF_PROG_TEST_RUN) walks `live`, a
 * table of slots of the watched, established sockets that the state tracepoint and `adopt`
 * keep.
 *
 * The kernel frees the storage with the socket (bpf_sk_storage_free() in __sk_destruct()).
 *
 * GPL: bpf_skc_to_tcp_sock(), bpf_sk_storage_get() from tracing and the iterators' seq
 * helpers are GPL-only.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "fix_monitor.h"

/* One load or store of a field another CPU may be writing or reading (no tearing, no reordering
 * by the compiler). */
#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

/* include/net/tcp_states.h */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_FIN_WAIT1 4
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8

#define BPF_SK_STORAGE_GET_F_CREATE 1

/*
 * A read-only view of kernel memory as a BTF type (kernel 6.2): loads through it are probe
 * loads the JIT makes fault-safe, far cheaper than one bpf_probe_read_kernel() per field.
 */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

/* Read from /proc/config.gz or /boot/config-* by libbpf at load; 0 when neither exists. */
extern unsigned int CONFIG_HZ __kconfig __weak;

/*
 * Unused globals that put the records written through the ring buffer and the iterators into
 * the object's BTF, where the crate's tests compare them with their Rust mirrors.
 */
struct event *btf_event __attribute__((unused));
struct health *btf_health __attribute__((unused));


struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct target_key);
	__type(value, struct net_rules);
} targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_RULES);
	__type(key, __u32);
	__type(value, struct port_rule);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct session);
} sessions SEC(".maps");

/*
 * State changes, 144 bytes each with the ring's header: 256 KiB hold 1,820. The sidecar reads
 * the ring at every poll, and a drain thread of its own reads it as soon as it is half full
 * (emit() wakes that thread then, and only then), so a burst of closes larger than the ring
 * is not lost. Its pages are mapped into the sidecar twice (they count in its RSS), so it is
 * no larger.
 */
#define EVENTS_RING_SIZE (256 * 1024)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RING_SIZE);
} events SEC(".maps");

/*
 * The live table: a slot per watched, established session. A slot is taken from the stack of
 * freed ones, else it is the next never used (`live_top` counts those), so the slots in use
 * stay below the most sessions watched at once, and the pass walks only that far: its cost
 * follows the watched sessions, not the table's size.
 */
#define LIVE_SLOTS 16384

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LIVE_SLOTS);
	__type(key, __u32);
	__type(value, struct live);
} live SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK);
	__uint(max_entries, LIVE_SLOTS);
	__uint(value_size, sizeof(__u32));
} free_slots SEC(".maps");

/* Slots ever taken (can pass LIVE_SLOTS by a few when CPUs race for the last; read it
 * clamped). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} live_top SEC(".maps");

/*
 * The health pass's output when it walks the live table: 200 bytes a session with the ring's
 * header, so 256 KiB hold 1,310 sessions; a pass that writes more (the first, one in 60, or
 * when most sessions changed) runs again from where the ring filled, after user space has
 * read it (see live_pass). Its pages are mapped into the sidecar twice (they count in its
 * RSS), so it is no larger.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} health_out SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pass_clock);
} clock SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);

	if (c)
		*c += 1;
}

/* The addresses and ports of a socket, IPv4 in IPv4-mapped form. */
struct ident {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 family;
};

static __always_inline void v4_mapped(__u8 *out, __be32 addr)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &addr, 4);
}

static __always_inline void read_ident(const struct sock *sk, struct ident *id)
{
	const struct sock_common *c = &sk->__sk_common;
	__u32 *saddr = (__u32 *)id->saddr, *daddr = (__u32 *)id->daddr;
	int i;

	/* Direct loads: `sk` is a BTF pointer (trusted, or a read-only cast). */
	id->family = c->skc_family;
	id->sport = c->skc_num;
	id->dport = bpf_ntohs(c->skc_dport);
	if (id->family == AF_INET) {
		v4_mapped(id->saddr, c->skc_rcv_saddr);
		v4_mapped(id->daddr, c->skc_daddr);
	} else {
		for (i = 0; i < 4; i++) {
			saddr[i] = c->skc_v6_rcv_saddr.in6_u.u6_addr32[i];
			daddr[i] = c->skc_v6_daddr.in6_u.u6_addr32[i];
		}
	}
}

/* The target the socket's peer and ports match (first rule in configuration order). */
static __always_inline bool match_target(const struct ident *id, __u32 *target)
{
	const __u32 *words = (const __u32 *)id->daddr;
	struct target_key key = {};
	struct net_rules *nr;
	__u32 i;

	if (id->family != AF_INET && id->family != AF_INET6)
		return false;
	if (words[0] == 0 && words[1] == 0 && words[2] == bpf_htonl(0xffff)) {
		key.prefixlen = 8 + 32;
		key.family = 4;
		__builtin_memcpy(key.addr, id->daddr + 12, 4);
	} else {
		key.prefixlen = 8 + 128;
		key.family = 6;
		__builtin_memcpy(key.addr, id->daddr, 16);
	}
	nr = bpf_map_lookup_elem(&targets, &key);
	if (!nr)
		return false;
	for (i = 0; i < MAX_RULES_PER_NET; i++) {
		__u32 idx = nr->first + i;
		struct port_rule *r;

		if (i >= nr->count)
			break;
		r = bpf_map_lookup_elem(&rules, &idx);
		if (!r)
			break;
		if (r->rport && r->rport != id->dport)
			continue;
		if (id->sport < r->lport_lo || id->sport > r->lport_hi)
			continue;
		*target = r->target;
		return true;
	}
	return false;
}

static __always_inline __u64 netns_of(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, net_cookie);
}

static __always_inline bool netns_wanted(__u64 netns)
{
	__u32 zero = 0;
	struct settings *cfg = bpf_map_lookup_elem(&settings, &zero);

	return cfg && (cfg->netns_cookie == 0 || cfg->netns_cookie == netns);
}

static __always_inline void fill_counters(struct event *e, struct sock *sk)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

	if (!tp)
		return;
	e->bytes_acked = tp->bytes_acked;
	e->bytes_received = tp->bytes_received;
	e->bytes_sent = tp->bytes_sent;
	e->total_retrans = tp->total_retrans;
	e->srtt_us = tp->srtt_us >> 3;
}

static __always_inline void emit(struct sock *sk, struct session *s, __u8 kind, int oldstate,
				 int newstate)
{
	struct ident id = {};
	struct event *e;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(CNT_LOST);
		return;
	}
	read_ident(sk, &id);
	e->ts_ns = bpf_ktime_get_ns();
	e->sock_cookie = s->sock_cookie;
	e->netns_cookie = netns_of(sk);
	e->bytes_acked = 0;
	e->bytes_received = 0;
	e->bytes_sent = 0;
	e->total_retrans = 0;
	e->srtt_us = 0;
	fill_counters(e, sk);
	e->pid = s->pid;
	e->target = s->target;
	e->retrans_events = s->retrans_events;
	e->rst_reason = s->rst_reason;
	e->sk_err = BPF_CORE_READ(sk, sk_err);
	e->sport = id.sport;
	e->dport = id.dport;
	e->kind = kind;
	e->oldstate = oldstate;
	e->newstate = newstate;
	e->family = id.family;
	e->closer = s->closer;
	e->rst = s->rst;
	e->adopted = s->adopted;
	e->_pad = 0;
	__builtin_memcpy(e->comm, s->comm, sizeof(e->comm));
	__builtin_memcpy(e->saddr, id.saddr, 16);
	__builtin_memcpy(e->daddr, id.daddr, 16);
	/*
	 * No wakeup for a record (the sidecar reads the ring at every poll anyway), except once
	 * the ring is half full: that wakes the sidecar's drain thread before the ring fills.
	 */
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > EVENTS_RING_SIZE / 2)
		bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	else
		bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	count(CNT_EMITTED);
}

/*
 * Storage for a socket that matches a target in a wanted namespace, or NULL. `create` is
 * false on the changes that never start a watch.
 */
static __always_inline struct session *session_for(struct sock *sk, bool create)
{
	struct session *s = bpf_sk_storage_get(&sessions, sk, 0, 0);
	struct ident id = {};
	__u32 target;

	if (s || !create)
		return s;
	read_ident(sk, &id);
	if (!match_target(&id, &target))
		return NULL;
	if (!netns_wanted(netns_of(sk))) {
		count(CNT_OTHER_NETNS);
		return NULL;
	}
	s = bpf_sk_storage_get(&sessions, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		count(CNT_NO_STORAGE);
		return NULL;
	}
	count(CNT_MATCHED);
	s->sock_cookie = bpf_get_socket_cookie(sk);
	s->target = target;
	return s;
}

/* Enters a watched, established socket in the live table. */
static __always_inline void live_put(struct sock *sk, struct session *s)
{
	__u32 zero = 0, idx, *top;
	struct live *l;

	if (s->slot) {
		idx = s->slot - 1;
	} else if (bpf_map_pop_elem(&free_slots, &idx)) {
		top = bpf_map_lookup_elem(&live_top, &zero);
		/* Full: no more never-taken slots (so the count cannot run on and wrap). */
		if (!top || READ_ONCE(*top) >= LIVE_SLOTS) {
			count(CNT_LIVE_FULL);
			return;
		}
		idx = __sync_fetch_and_add(top, 1);
	}
	l = bpf_map_lookup_elem(&live, &idx);
	if (!l) {
		/* Past the last slot (another CPU took the last one meanwhile): full. */
		count(CNT_LIVE_FULL);
		return;
	}
	/* Invalid while it is written; the pass also checks the cookie against the socket. */
	WRITE_ONCE(l->cookie, 0);
	l->sk = (__u64)sk;
	l->established_ns = s->established_ns;
	l->pid = s->pid;
	l->target = s->target;
	l->retrans_events = s->retrans_events;
	l->adopted = s->adopted;
	l->reported = 0;
	l->settled = 0;
	WRITE_ONCE(l->cookie, s->sock_cookie);
	s->slot = idx + 1;
	count(CNT_LIVE_CHANGES);
}

/* Frees the session's live-table slot (its change to CLOSE). */
static __always_inline void live_drop(struct session *s)
{
	__u32 idx;
	struct live *l;

	if (!s->slot)
		return;
	idx = s->slot - 1;
	s->slot = 0;
	l = bpf_map_lookup_elem(&live, &idx);
	if (l)
		WRITE_ONCE(l->cookie, 0);
	/* The stack holds every slot; a failed push would only leave this one unused. */
	bpf_map_push_elem(&free_slots, &idx, 0);
	count(CNT_LIVE_CHANGES);
}

/* The session's live-table entry, if it has one. */
static __always_inline struct live *live_of(struct session *s)
{
	__u32 idx = s->slot - 1;
	struct live *l;

	if (!s->slot)
		return NULL;
	l = bpf_map_lookup_elem(&live, &idx);
	return l && l->cookie == s->sock_cookie ? l : NULL;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_state, struct sock *sk, int oldstate, int newstate)
{
	struct session *s;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	count(CNT_SEEN);
	s = session_for(sk, newstate == TCP_SYN_SENT || newstate == TCP_ESTABLISHED);
	if (!s)
		return 0;

	switch (newstate) {
	case TCP_SYN_SENT:
		/* connect() runs in the calling process; later changes run in softirq. */
		s->pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(s->comm, sizeof(s->comm));
		return 0;
	case TCP_ESTABLISHED:
		s->established_ns = bpf_ktime_get_ns();
		live_put(sk, s);
		break;
	case TCP_FIN_WAIT1:
		if (oldstate == TCP_ESTABLISHED && !s->closer)
			s->closer = CLOSER_LOCAL;
		break;
	case TCP_CLOSE_WAIT:
		if (!s->closer)
			s->closer = CLOSER_REMOTE;
		break;
	case TCP_CLOSE:
		s->closed = 1;
		live_drop(s);
		if (!s->closer && BPF_CORE_READ(sk, sk_err))
			s->closer = CLOSER_ERROR;
		break;
	default:
		return 0;
	}
	emit(sk, s, EV_STATE, oldstate, newstate);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(on_receive_reset, struct sock *sk)
{
	struct session *s = session_for(sk, false);

	if (!s)
		return 0;
	s->rst |= RST_RECEIVED;
	if (!s->closer)
		s->closer = CLOSER_REMOTE_RESET;
	return 0;
}

/*
 * The kernel sends a RST after it moved the socket to CLOSE (tcp_disconnect(), __tcp_close()
 * with unread data), so the close event is often out already: then a second record carries
 * the reason, and user space joins the two by socket cookie.
 */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(on_send_reset, struct sock *sk, struct sk_buff *skb, enum sk_rst_reason reason)
{
	struct session *s;

	if (!sk)
		return 0;
	s = session_for(sk, false);
	if (!s)
		return 0;
	s->rst |= RST_SENT;
	s->rst_reason = reason;
	if (!s->closer || s->closer == CLOSER_ERROR)
		s->closer = CLOSER_LOCAL_RESET;
	if (s->closed)
		emit(sk, s, EV_RESET_SENT, TCP_CLOSE, TCP_CLOSE);
	return 0;
}

static __always_inline void count_retransmit(struct sock *sk)
{
	struct session *s = session_for(sk, false);
	struct live *l;

	if (!s)
		return;
	__sync_fetch_and_add(&s->retrans_events, 1);
	l = live_of(s);
	if (l)
		__sync_fetch_and_add(&l->retrans_events, 1);
}

/*
 * Kernels whose tracepoint carries the result (6.12+): only a retransmission that went out
 * counts (not -EBUSY while the first copy is still in the host's queue, which total_retrans
 * skips too; a transmit that fails after total_retrans was raised is in total_retrans only).
 * The loader picks this program or the next by the tracepoint's prototype in the kernel's BTF.
 */
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(on_retransmit, struct sock *sk, struct sk_buff *skb, int err)
{
	if (!err)
		count_retransmit(sk);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(on_retransmit_any, struct sock *sk)
{
	count_retransmit(sk);
	return 0;
}

/* Stamps the clock the records' jiffies are read against. */
static __always_inline void stamp_clock(void)
{
	__u32 zero = 0;
	struct pass_clock *c = bpf_map_lookup_elem(&clock, &zero);

	if (c) {
		c->jiffies = (__u32)bpf_jiffies64();
		c->hz = CONFIG_HZ;
	}
}

/*
 * tcp_compute_delivery_rate(): the latest rate sample, bytes/s, 0 before the first. The rate
 * fields are Linux 4.9; a kernel without them (CO-RE says so at load) reports 0.
 */
static __always_inline __u64 delivery_rate(struct tcp_sock *tp)
{
	__u32 delivered, interval_us;

	if (!bpf_core_field_exists(tp->rate_delivered) ||
	    !bpf_core_field_exists(tp->rate_interval_us))
		return 0;
	delivered = tp->rate_delivered;
	interval_us = tp->rate_interval_us;
	if (!delivered || !interval_us)
		return 0;
	return (__u64)delivered * tp->mss_cache * 1000000 / interval_us;
}

/*
 * A socket's health, the fields tcp_get_info() (net/ipv4/tcp.c) computes from, read from
 * tcp_sock with direct CO-RE loads: `tp` is the iterator's trusted pointer or a read-only cast
 * of an address from the live table. Times stay jiffies (see `struct health`).
 */
static __always_inline void fill_health(struct health *h, struct tcp_sock *tp)
{
	struct sock *sk = (struct sock *)tp;
	__u32 write_seq, snd_nxt, rcv_nxt, copied_seq;
	struct ident id = {};

	read_ident(sk, &id);
	h->bytes_acked = tp->bytes_acked;
	h->bytes_received = tp->bytes_received;
	h->bytes_sent = tp->bytes_sent;
	/* tcp_get_info_chrono_stats()'s inputs */
	h->chrono_type = BPF_CORE_READ_BITFIELD_PROBED(tp, chrono_type);
	h->chrono_start = tp->chrono_start;
	h->chrono_stat[0] = tp->chrono_stat[0];
	h->chrono_stat[1] = tp->chrono_stat[1];
	h->chrono_stat[2] = tp->chrono_stat[2];
	/* Linux 4.19; 0 on a kernel without them */
	if (bpf_core_field_exists(tp->bytes_retrans))
		h->bytes_retrans = tp->bytes_retrans;
	if (bpf_core_field_exists(tp->dsack_dups))
		h->dsack_dups = tp->dsack_dups;
	h->delivery_rate = delivery_rate(tp);
	h->srtt_us = tp->srtt_us >> 3;
	h->rttvar_us = tp->mdev_us >> 2;
	/* tcp_min_rtt(): minmax_get(&tp->rtt_min), ~0U until the first sample */
	h->min_rtt_us = tp->rtt_min.s[0].v;
	h->total_retrans = tp->total_retrans;
	h->lost = tp->lost_out;
	h->unacked = tp->packets_out;
	write_seq = tp->write_seq;
	snd_nxt = tp->snd_nxt;
	/* tcp_diag_get_info()'s idiag_wqueue, ss's Send-Q (sent or not, not yet acknowledged) */
	h->send_queue_bytes = write_seq - tp->snd_una;
	h->notsent_bytes = (__s32)(write_seq - snd_nxt) > 0 ? write_seq - snd_nxt : 0;
	rcv_nxt = tp->rcv_nxt;
	copied_seq = tp->copied_seq;
	h->rcv_queue = (__s32)(rcv_nxt - copied_seq) > 0 ? rcv_nxt - copied_seq : 0;
	h->lrcvtime = tp->inet_conn.icsk_ack.lrcvtime;
	h->lsndtime = tp->lsndtime;
	h->rcv_tstamp = tp->rcv_tstamp;
	h->snd_cwnd = tp->snd_cwnd;
	h->snd_wnd = tp->snd_wnd;
	h->sport = id.sport;
	h->dport = id.dport;
	h->family = id.family;
	h->state = sk->__sk_common.skc_state;
	__builtin_memcpy(h->saddr, id.saddr, 16);
	__builtin_memcpy(h->daddr, id.daddr, 16);
}

/*
 * The health pass, at O(watched sessions): walks the storage map only, so its cost does not
 * depend on the host's other sockets. One record per storage entry, closing ones included
 * (flagged), so user space can count the entries: the program cannot, since seq_file runs it
 * again for an object whose output overflowed a read.
 */
SEC("iter/bpf_sk_storage_map")
int dump_health(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	struct session *s = ctx->value;
	struct health h = {};
	struct tcp_sock *tp;

	if (!ctx->sk || !s)
		return 0;
	tp = bpf_skc_to_tcp_sock(ctx->sk);
	if (!tp)
		return 0;
	stamp_clock();
	fill_health(&h, tp);
	h.sock_cookie = s->sock_cookie;
	h.established_ns = s->established_ns;
	h.retrans_events = s->retrans_events;
	h.target = s->target;
	h.pid = s->pid;
	h.adopted = s->adopted;
	h.closed = s->closed || !s->established_ns;
	bpf_seq_write(ctx->meta->seq, &h, sizeof(h));
	return 0;
}

struct pass {
	__u32 next;    /* the next slot to walk (a run starts where the last one stopped) */
	__u32 all;     /* write every session, changed or not */
	__u32 full;    /* the ring filled: the walk stopped there */
	__u32 _pad;
	__u64 now_us;  /* CLOCK_MONOTONIC, tcp_mstamp's clock (tcp_clock_ns()) */
};

/*
 * How long after a socket's last packet its record is taken as settled (see `struct seen`):
 * far longer than the kernel takes to process one packet under the socket's lock.
 */
#define SETTLE_US 10000

/* `struct seen` of a socket, read before its record. */
static __always_inline void read_seen(struct seen *s, struct tcp_sock *tp, struct live *l)
{
	s->mstamp = tp->tcp_mstamp;
	s->copied_seq = tp->copied_seq;
	s->write_seq = tp->write_seq;
	s->chrono_start = tp->chrono_start;
	s->chrono_type = BPF_CORE_READ_BITFIELD_PROBED(tp, chrono_type);
	s->state = tp->inet_conn.icsk_inet.sk.__sk_common.skc_state;
	s->retrans_events = READ_ONCE(l->retrans_events);
}

static __always_inline bool same_seen(const struct seen *a, const struct seen *b)
{
	return a->mstamp == b->mstamp && a->copied_seq == b->copied_seq &&
	       a->write_seq == b->write_seq && a->chrono_start == b->chrono_start &&
	       a->retrans_events == b->retrans_events && a->state == b->state &&
	       a->chrono_type == b->chrono_type;
}

/* After the pass read the record that `s` was read before: whether the next may skip it. */
static __always_inline void keep_seen(struct live *l, const struct seen *s, const struct pass *p)
{
	l->seen = *s;
	l->settled = p->now_us > s->mstamp && p->now_us - s->mstamp >= SETTLE_US;
}

/* The compared part of a record (`bytes_acked` up to `target`) as 32-bit words. */
static __always_inline __u32 *health_vals(struct health *h)
{
	return (__u32 *)&h->bytes_acked;
}

static long live_health(__u64 i, struct pass *p)
{
	struct health h = {};
	struct seen seen = {};
	struct health *out;
	struct tcp_sock *tp;
	__u32 idx = p->next;
	__u32 *vals, k;
	struct live *l;
	__u64 cookie;
	bool same;

	l = bpf_map_lookup_elem(&live, &idx);
	if (!l)
		return 1;
	cookie = READ_ONCE(l->cookie);
	if (!cookie) {
		p->next++;
		return 0;
	}
	tp = bpf_rdonly_cast((void *)l->sk, bpf_core_type_id_kernel(struct tcp_sock));
	/* The socket at that address must still be this session (else it is gone or reused). */
	if (tp->inet_conn.icsk_inet.sk.__sk_common.skc_cookie.counter != cookie) {
		p->next++;
		return 0;
	}
	/* Nothing that changes a record moved since the last pass read this one: it stands. */
	read_seen(&seen, tp, l);
	if (l->reported && l->settled && !p->all && same_seen(&seen, &l->seen)) {
		p->next++;
		return 0;
	}
	/* `seen` before the fields, so that a change racing the reads shows in the next pass. */
	barrier();
	count(CNT_HEALTH_READS);
	fill_health(&h, tp);
	h.retrans_events = seen.retrans_events;
	vals = health_vals(&h);
	same = l->reported && !p->all;
	for (k = 0; k < HEALTH_VALS_WORDS; k++)
		same = same && vals[k] == l->last[k];
	if (same) {
		keep_seen(l, &seen, p);
		p->next++;
		return 0;
	}
	h.established_ns = l->established_ns;
	h.target = l->target;
	h.pid = l->pid;
	h.adopted = l->adopted;
	/*
	 * Written only if the slot still holds this session: if it closed and another session
	 * took its slot while the fields above were read, the cookie changed (a freed slot's
	 * cookie is 0 before anything else in it changes).
	 */
	barrier();
	if (READ_ONCE(l->cookie) != cookie) {
		p->next++;
		return 0;
	}
	out = bpf_ringbuf_reserve(&health_out, sizeof(*out), 0);
	if (!out) {
		/* This slot is the next run's first. */
		p->full = 1;
		return 1;
	}
	h.sock_cookie = cookie;
	__builtin_memcpy(out, &h, sizeof(h));
	bpf_ringbuf_submit(out, BPF_RB_NO_WAKEUP);
	__builtin_memcpy(l->last, vals, sizeof(l->last));
	l->reported = 1;
	keep_seen(l, &seen, p);
	p->next++;
	return 0;
}

/*
 * The same pass for kernels that refuse map-element iterators (seen: EPERM at load on a
 * 6.18 sandbox kernel): run on demand with BPF_PROG_TEST_RUN, it walks the live table's slots
 * up to the last one ever taken and writes to `health_out` the health of each session whose
 * record changed since it last wrote one (of every session when the run's second argument is
 * 1), stamping `clock`. The run's first argument (the test run's context) is the slot to start
 * at. Returns the slot it stopped at, with the top bit set when it stopped because the ring was
 * full: user space reads the ring and runs it again from there.
 */
SEC("raw_tp")
int live_pass(__u64 *ctx)
{
	struct pass p = {
		.next = (__u32)ctx[0],
		.all = (__u32)ctx[1],
		.now_us = bpf_ktime_get_ns() / 1000,
	};
	__u32 zero = 0, *top, end;

	top = bpf_map_lookup_elem(&live_top, &zero);
	end = top ? *top : 0;
	if (end > LIVE_SLOTS)
		end = LIVE_SLOTS;
	stamp_clock();
	if (p.next < end)
		bpf_loop(end - p.next, live_health, &p, 0);
	return p.next | (p.full ? 0x80000000u : 0);
}

/*
 * Sockets of the namespace that have storage (8 bytes each: the cookie), closing ones
 * included: how the tests see that closing frees the storage where the storage-map iterator
 * is refused. Walks every TCP socket: a diagnostic, not a poll.
 */
SEC("iter/tcp")
int storage_census(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;
	struct session *s;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	s = bpf_sk_storage_get(&sessions, tp, 0, 0);
	if (s)
		bpf_seq_write(ctx->meta->seq, &s->sock_cookie, sizeof(s->sock_cookie));
	return 0;
}

/*
 * The sessions that existed before the programs were loaded: every ESTABLISHED TCP socket of
 * the iterating process's namespace that matches a target gets storage, and its cookie is
 * written out (8 bytes per adopted socket).
 */
SEC("iter/tcp")
int adopt(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct session *s;
	struct tcp_sock *tp;
	struct sock *sk;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	sk = (struct sock *)tp;
	if (sk->__sk_common.skc_state != TCP_ESTABLISHED)
		return 0;
	s = session_for(sk, true);
	if (!s)
		return 0;
	if (!s->established_ns) {
		/* When it was established is unknown: the time it was found stands in. */
		s->established_ns = bpf_ktime_get_ns();
		s->adopted = 1;
		live_put(sk, s);
	}
	bpf_seq_write(ctx->meta->seq, &s->sock_cookie, sizeof(s->sock_cookie));
	return 0;
}
