// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * Network isolation of a pod, enforced at the pod's cgroup.
 *
 * The agent attaches these programs to the cgroup of each isolated pod and
 * writes the pod's policy into stk_policies under the pod cgroup's id. A
 * socket of any container below the pod finds that policy by walking its
 * cgroup's ancestors, so containers started after the isolation are
 * covered too. A socket whose ancestors hold no policy passes untouched.
 *
 * cgroup_skb sees every packet, so established sessions stop at their next
 * packet. cgroup/connect* and cgroup/sendmsg* refuse new attempts with
 * EPERM at once and report them as evidence.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "stockade.h"

#define SKB_PASS 1
#define SKB_DROP 0
#define SOCK_ALLOW 1
#define SOCK_REFUSE 0

/* The loopback device has this index in every network namespace. */
#define LOOPBACK_IFINDEX 1

#define IP_FRAG_OFFSET_MASK 0x1fff
#define TCP_FLAGS_OFFSET 13
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* The policy of each isolated pod, keyed by its pod cgroup id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct stk_policy);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stk_policies SEC(".maps");

/* Per-pod counters, keyed like stk_policies; created by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct stk_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stk_counters SEC(".maps");

/* The node's own addresses in 16-byte form; the value is unused. */
struct stk_addr {
	__u8 b[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STK_MAX_NODE_ADDRS);
	__type(key, struct stk_addr);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stk_node_addrs SEC(".maps");

/* TCP sessions that a node address opened towards an isolated pod. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, STK_MAX_NODE_FLOWS);
	__type(key, struct stk_flow_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stk_node_flows SEC(".maps");

/* Refused connect and sendmsg attempts, for the agent to record. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, STK_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stk_events SEC(".maps");

/* What the programs need to know of one packet or one attempt. */
struct flow {
	struct stk_addr remote;
	__u16 remote_port; /* host order; 0 when the packet carries none */
	__u16 local_port;  /* host order */
	__u8 proto;
	__u8 tcp_flags;
};

static __always_inline void map_v4(struct stk_addr *a, __be32 ip4)
{
	__builtin_memset(a->b, 0, 10);
	a->b[10] = 0xff;
	a->b[11] = 0xff;
	__builtin_memcpy(&a->b[12], &ip4, 4);
}

static __always_inline int is_v4_mapped(const struct stk_addr *a)
{
	for (int i = 0; i < 10; i++)
		if (a->b[i])
			return 0;
	return a->b[10] == 0xff && a->b[11] == 0xff;
}

/* 127.0.0.0/8, ::1, and ::ffff:127.0.0.0/104. */
static __always_inline int is_loopback(const struct stk_addr *a)
{
	if (is_v4_mapped(a))
		return a->b[12] == 127;
	for (int i = 0; i < 15; i++)
		if (a->b[i])
			return 0;
	return a->b[15] == 1;
}

static __always_inline int prefix_match(const __u8 *addr, const __u8 *net, __u32 len)
{
	for (__u32 i = 0; i < 16; i++) {
		if (len == 0)
			return 1;
		__u32 bits = len >= 8 ? 8 : len;
		__u8 mask = (__u8)(0xff << (8 - bits));
		if ((addr[i] ^ net[i]) & mask)
			return 0;
		len -= bits;
	}
	return 1;
}

static __always_inline int proto_match(__u8 rule, __u8 proto)
{
	if (rule == STK_PROTO_ANY || rule == proto)
		return 1;
	return rule == STK_PROTO_ICMP && proto == STK_PROTO_ICMPV6;
}

static __always_inline int port_match(const struct stk_rule *r, __u16 port)
{
	if (r->port_lo == 0 && r->port_hi == 0)
		return 1;
	return port >= r->port_lo && port <= r->port_hi;
}

static __always_inline int allowed_by_rules(const struct stk_policy *pol, const struct flow *f)
{
	for (__u32 i = 0; i < STK_MAX_ALLOW; i++) {
		if (i >= pol->n_rules)
			return 0;
		const struct stk_rule *r = &pol->rules[i];
		if (!proto_match(r->proto, f->proto) || !port_match(r, f->remote_port))
			continue;
		if (prefix_match(f->remote.b, r->addr, r->prefix_len))
			return 1;
	}
	return 0;
}

/* A rule of any protocol and port names this address. */
static __always_inline int address_in_rules(const struct stk_policy *pol, const struct stk_addr *a)
{
	for (__u32 i = 0; i < STK_MAX_ALLOW; i++) {
		if (i >= pol->n_rules)
			return 0;
		if (prefix_match(a->b, pol->rules[i].addr, pol->rules[i].prefix_len))
			return 1;
	}
	return 0;
}

static __always_inline int is_node_addr(const struct stk_addr *a)
{
	return bpf_map_lookup_elem(&stk_node_addrs, a) != NULL;
}

/* The policy of the pod whose cgroup is an ancestor of the packet's socket. */
static __always_inline struct stk_policy *skb_policy(struct __sk_buff *skb, __u64 *pod_id)
{
	for (int level = 1; level < STK_MAX_CGROUP_LEVEL; level++) {
		__u64 id = bpf_skb_ancestor_cgroup_id(skb, level);
		if (!id)
			return NULL;
		struct stk_policy *pol = bpf_map_lookup_elem(&stk_policies, &id);
		if (pol) {
			*pod_id = id;
			return pol;
		}
	}
	return NULL;
}

/* The policy of the pod the calling task belongs to. */
static __always_inline struct stk_policy *task_policy(__u64 *pod_id)
{
	for (int level = 1; level < STK_MAX_CGROUP_LEVEL; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			return NULL;
		struct stk_policy *pol = bpf_map_lookup_elem(&stk_policies, &id);
		if (pol) {
			*pod_id = id;
			return pol;
		}
	}
	return NULL;
}

static __always_inline void count(__u64 pod_id, int which)
{
	struct stk_counters *c = bpf_map_lookup_elem(&stk_counters, &pod_id);
	if (!c)
		return;
	switch (which) {
	case 0: __sync_fetch_and_add(&c->ingress_dropped, 1); break;
	case 1: __sync_fetch_and_add(&c->egress_dropped, 1); break;
	case 2: __sync_fetch_and_add(&c->connects_refused, 1); break;
	default: __sync_fetch_and_add(&c->sends_refused, 1); break;
	}
}

/* Reads the ports (and TCP flags) at offset l4 of the packet. */
static __always_inline void parse_l4(struct __sk_buff *skb, __u32 l4, __u16 *src, __u16 *dst,
				     __u8 proto, __u8 *tcp_flags)
{
	__be16 ports[2];

	if (proto != STK_PROTO_TCP && proto != STK_PROTO_UDP)
		return;
	if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
		return;
	*src = bpf_ntohs(ports[0]);
	*dst = bpf_ntohs(ports[1]);
	if (proto == STK_PROTO_TCP)
		bpf_skb_load_bytes(skb, l4 + TCP_FLAGS_OFFSET, tcp_flags, 1);
}

/*
 * Fills f from the packet; egress says which address is the remote one.
 * Returns -1 when the packet is neither IPv4 nor IPv6. IPv6 extension
 * headers and non-first fragments leave the ports at 0, so only rules
 * that allow every port can match them.
 */
static __always_inline int parse(struct __sk_buff *skb, int egress, struct flow *f)
{
	__u16 src = 0, dst = 0;
	__u8 version;

	if (bpf_skb_load_bytes(skb, 0, &version, 1) < 0)
		return -1;
	version >>= 4;

	if (version == 4) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) < 0)
			return -1;
		map_v4(&f->remote, egress ? ip.daddr : ip.saddr);
		f->proto = ip.protocol;
		if (!(bpf_ntohs(ip.frag_off) & IP_FRAG_OFFSET_MASK))
			parse_l4(skb, ip.ihl * 4, &src, &dst, f->proto, &f->tcp_flags);
	} else if (version == 6) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) < 0)
			return -1;
		__builtin_memcpy(f->remote.b, egress ? &ip6.daddr : &ip6.saddr, 16);
		f->proto = ip6.nexthdr;
		parse_l4(skb, sizeof(ip6), &src, &dst, f->proto, &f->tcp_flags);
	} else {
		return -1;
	}

	f->remote_port = egress ? dst : src;
	f->local_port = egress ? src : dst;
	return 0;
}

static __always_inline void flow_key(struct stk_flow_key *k, __u64 pod_id, const struct flow *f)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->pod_cgroup_id = pod_id;
	__builtin_memcpy(k->node_addr, f->remote.b, 16);
	k->node_port = f->remote_port;
	k->pod_port = f->local_port;
}

/*
 * Node-probe mode: a TCP session that a node address opens towards the pod
 * (its SYN seen on ingress) may continue both ways; nothing else to or
 * from the node passes, so the pod cannot reach the node's services.
 */
static __always_inline int node_probe_allowed(const struct stk_policy *pol, __u64 pod_id,
					      const struct flow *f, int egress)
{
	struct stk_flow_key key;
	__u64 now;
	int syn_only = (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;

	if (!(pol->flags & STK_F_ALLOW_NODE_PROBES) || f->proto != STK_PROTO_TCP)
		return 0;
	if (!is_node_addr(&f->remote))
		return 0;

	flow_key(&key, pod_id, f);
	if (!egress && syn_only) {
		now = bpf_ktime_get_ns();
		bpf_map_update_elem(&stk_node_flows, &key, &now, BPF_ANY);
		return 1;
	}
	if (syn_only)
		return 0;
	return bpf_map_lookup_elem(&stk_node_flows, &key) != NULL;
}

static __always_inline int skb_verdict(struct __sk_buff *skb, int egress)
{
	struct flow f = {};
	__u64 pod_id = 0;
	struct stk_policy *pol = skb_policy(skb, &pod_id);

	if (!pol || !(pol->flags & STK_F_ISOLATED))
		return SKB_PASS;
	if (skb->ifindex == LOOPBACK_IFINDEX)
		return SKB_PASS;

	if (parse(skb, egress, &f) == 0) {
		if (is_loopback(&f.remote) || allowed_by_rules(pol, &f))
			return SKB_PASS;
		if (node_probe_allowed(pol, pod_id, &f, egress))
			return SKB_PASS;
	}

	count(pod_id, egress ? 1 : 0);
	return SKB_DROP;
}

SEC("cgroup_skb/ingress")
int stk_ingress(struct __sk_buff *skb)
{
	return skb_verdict(skb, 0);
}

SEC("cgroup_skb/egress")
int stk_egress(struct __sk_buff *skb)
{
	return skb_verdict(skb, 1);
}

static __always_inline void report(__u64 pod_id, __u32 kind, const struct flow *f)
{
	struct stk_event *ev = bpf_ringbuf_reserve(&stk_events, sizeof(*ev), 0);
	if (!ev)
		return;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ktime_ns = bpf_ktime_get_ns();
	ev->pod_cgroup_id = pod_id;
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->kind = kind;
	ev->pid = bpf_get_current_pid_tgid() >> 32;
	__builtin_memcpy(ev->addr, f->remote.b, 16);
	ev->port = f->remote_port;
	ev->proto = f->proto;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	bpf_ringbuf_submit(ev, 0);
}

/* Judges a connect or sendmsg towards f->remote by the caller's pod policy. */
static __always_inline int sock_verdict(struct flow *f, __u32 kind)
{
	__u64 pod_id = 0;
	struct stk_policy *pol = task_policy(&pod_id);

	if (!pol || !(pol->flags & STK_F_ISOLATED))
		return SOCK_ALLOW;
	if (is_loopback(&f->remote) || allowed_by_rules(pol, f))
		return SOCK_ALLOW;
	/*
	 * connect() on a UDP socket sends nothing (ping uses one to pick its
	 * source address); the packets that follow are judged one by one. So
	 * it is refused only when no rule names the address at all.
	 */
	if (kind == STK_EV_CONNECT_REFUSED && f->proto == STK_PROTO_UDP &&
	    address_in_rules(pol, &f->remote))
		return SOCK_ALLOW;

	count(pod_id, kind == STK_EV_CONNECT_REFUSED ? 2 : 3);
	report(pod_id, kind, f);
	return SOCK_REFUSE;
}

static __always_inline int sock_verdict4(struct bpf_sock_addr *ctx, __u32 kind)
{
	struct flow f = {};

	map_v4(&f.remote, ctx->user_ip4);
	f.remote_port = bpf_ntohs((__u16)ctx->user_port);
	f.proto = (__u8)ctx->protocol;
	return sock_verdict(&f, kind);
}

static __always_inline int sock_verdict6(struct bpf_sock_addr *ctx, __u32 kind)
{
	struct flow f = {};
	__u32 words[4];

	words[0] = ctx->user_ip6[0];
	words[1] = ctx->user_ip6[1];
	words[2] = ctx->user_ip6[2];
	words[3] = ctx->user_ip6[3];
	__builtin_memcpy(f.remote.b, words, 16);
	f.remote_port = bpf_ntohs((__u16)ctx->user_port);
	f.proto = (__u8)ctx->protocol;
	return sock_verdict(&f, kind);
}

SEC("cgroup/connect4")
int stk_connect4(struct bpf_sock_addr *ctx)
{
	return sock_verdict4(ctx, STK_EV_CONNECT_REFUSED);
}

SEC("cgroup/connect6")
int stk_connect6(struct bpf_sock_addr *ctx)
{
	return sock_verdict6(ctx, STK_EV_CONNECT_REFUSED);
}

SEC("cgroup/sendmsg4")
int stk_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_verdict4(ctx, STK_EV_SENDMSG_REFUSED);
}

SEC("cgroup/sendmsg6")
int stk_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_verdict6(ctx, STK_EV_SENDMSG_REFUSED);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
