/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Types shared by the kernel programs and the agent.
 *
 * The Rust mirror lives in agent-ebpf/src/abi.rs; a test compiles this
 * header with the host C compiler and fails when a size or an offset
 * differs. Only fixed-width types, explicit padding, no bitfields.
 *
 * Every address is stored in 16 bytes: IPv6 as is, IPv4 as the v4-mapped
 * IPv6 address ::ffff:a.b.c.d, so one rule matches both families and a
 * v4-mapped destination on an IPv6 socket is judged as the IPv4 one.
 */
#ifndef STOCKADE_H
#define STOCKADE_H

#include <linux/types.h>

/* Most allow-list entries one isolation may hold. */
#define STK_MAX_ALLOW 16

/* Deepest cgroup level the programs search for a pod's policy. */
#define STK_MAX_CGROUP_LEVEL 16

/* Entries of the flow table used by node-probe mode. */
#define STK_MAX_NODE_FLOWS 8192

/* Entries of the node address set. */
#define STK_MAX_NODE_ADDRS 256

/* Events waiting in the ring buffer, in bytes (a power of two pages). */
#define STK_EVENTS_BYTES (256 * 1024)

/* Pods the exec guard can hold contained at once. */
#define STK_MAX_CONTAINED 4096

/* Exec attempts waiting in the guard's ring buffer, in bytes. */
#define STK_GUARD_EVENTS_BYTES (64 * 1024)

/* Values of stk_rule.proto; IANA protocol numbers except ANY. */
#define STK_PROTO_ANY 0
#define STK_PROTO_ICMP 1
#define STK_PROTO_TCP 6
#define STK_PROTO_UDP 17
#define STK_PROTO_ICMPV6 58

/* Bits of stk_policy.flags. */
#define STK_F_ISOLATED (1U << 0)
/* Node addresses may open TCP sessions towards the pod (kubelet probes). */
#define STK_F_ALLOW_NODE_PROBES (1U << 1)

/* Kinds of stk_event. */
#define STK_EV_CONNECT_REFUSED 1
#define STK_EV_SENDMSG_REFUSED 2

/* One allow-list entry: a remote prefix, a protocol, a remote port range. */
struct stk_rule {
	__u8 addr[16];     /* network address, 16-byte form */
	__u8 prefix_len;   /* 0..128, over the 16-byte form */
	__u8 proto;        /* STK_PROTO_*; ANY matches every protocol */
	__u16 port_lo;     /* host order; 0 with port_hi 0 = every port */
	__u16 port_hi;     /* host order, inclusive */
	__u16 _pad;
};

/* The policy of one isolated pod: value of stk_policies, keyed by the
 * cgroup id of the pod's own cgroup. */
struct stk_policy {
	__u32 flags;       /* STK_F_* */
	__u32 n_rules;     /* used entries of rules[] */
	struct stk_rule rules[STK_MAX_ALLOW];
};

/* What the programs counted for one pod: value of stk_counters. */
struct stk_counters {
	__u64 ingress_dropped;
	__u64 egress_dropped;
	__u64 connects_refused;
	__u64 sends_refused;
};

/* A TCP session opened by a node address towards an isolated pod, seen
 * by its SYN: key of stk_node_flows. */
struct stk_flow_key {
	__u64 pod_cgroup_id;
	__u8 node_addr[16];
	__u16 node_port;   /* host order */
	__u16 pod_port;    /* host order */
	__u32 _pad;
};

/* Evidence of a refused attempt, sent through stk_events. */
struct stk_event {
	__u64 ktime_ns;
	__u64 pod_cgroup_id;
	__u64 cgroup_id;   /* the socket's own cgroup (a container's) */
	__u32 kind;        /* STK_EV_* */
	__u32 pid;         /* thread group id of the caller */
	__u8 addr[16];     /* attempted destination, 16-byte form */
	__u16 port;        /* host order */
	__u8 proto;
	__u8 _pad[5];
	char comm[16];
};

/* One contained pod: value of stk_contained (guard.bpf.c), keyed by the
 * cgroup id of the pod's own cgroup. */
struct stk_containment {
	__u64 since_ns;      /* CLOCK_MONOTONIC when the agent contained it */
	__u64 execs_killed;  /* programs the guard killed at exec since then */
};

/* A program the guard killed at exec, sent through stk_exec_events. */
struct stk_exec_event {
	__u64 ktime_ns;
	__u64 pod_cgroup_id;
	__u64 cgroup_id;     /* the process's own cgroup (a container's) */
	__u32 pid;           /* thread group id of the killed process */
	__u32 _pad;
	char comm[16];       /* the name of the program it tried to run */
};

#endif /* STOCKADE_H */
