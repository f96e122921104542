// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * The exec guard: while a pod is contained, any program started in it is
 * killed before it runs.
 *
 * sched/sched_process_exec fires once execve has replaced the process's
 * image and before it returns to user space; bpf_send_signal(SIGKILL)
 * then kills the process at that return, so the new program never runs
 * an instruction. The agent attaches this program once for the whole node
 * and writes each contained pod into stk_contained under its pod cgroup
 * id; a process finds its pod by walking its cgroup's ancestors, so every
 * container of the pod, started before or after, is covered. A process
 * whose ancestors are not contained costs one map lookup per level.
 *
 * stk_guard_lsm is the same decision one step earlier, where the kernel
 * allows BPF-LSM: bprm_check_security refuses the exec with EPERM before
 * the new image is mapped, and the process that tried is killed as the
 * tracepoint would have. The agent attaches one of the two, the LSM
 * program when the kernel takes it (see guard.rs).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "stockade.h"

#define SIGKILL 9
#define EPERM 1

/* The contained pods, keyed by pod cgroup id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STK_MAX_CONTAINED);
	__type(key, __u64);
	__type(value, struct stk_containment);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stk_contained SEC(".maps");

/* The execs the guard killed, for the agent to log as evidence. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, STK_GUARD_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stk_exec_events SEC(".maps");

/* The containment of the pod the calling task belongs to, if any. */
static __always_inline struct stk_containment *task_containment(__u64 *pod_id)
{
	for (int level = 1; level < STK_MAX_CGROUP_LEVEL; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			return NULL;
		struct stk_containment *c = bpf_map_lookup_elem(&stk_contained, &id);
		if (c) {
			*pod_id = id;
			return c;
		}
	}
	return NULL;
}

static __always_inline void report(__u64 pod_id)
{
	struct stk_exec_event *ev;

	ev = bpf_ringbuf_reserve(&stk_exec_events, sizeof(*ev), 0);
	if (!ev)
		return;
	ev->ktime_ns = bpf_ktime_get_ns();
	ev->pod_cgroup_id = pod_id;
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->pid = bpf_get_current_pid_tgid() >> 32;
	ev->_pad = 0;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	bpf_ringbuf_submit(ev, 0);
}

SEC("tracepoint/sched/sched_process_exec")
int stk_guard_exec(void *ctx)
{
	__u64 pod_id = 0;
	struct stk_containment *c = task_containment(&pod_id);

	if (!c)
		return 0;
	bpf_send_signal(SIGKILL);
	__sync_fetch_and_add(&c->execs_killed, 1);
	report(pod_id);
	return 0;
}

SEC("lsm/bprm_check_security")
int stk_guard_lsm(unsigned long long *ctx)
{
	__u64 pod_id = 0;

	struct stk_containment *c = task_containment(&pod_id);

	if (!c)
		return 0;
	bpf_send_signal(SIGKILL);
	__sync_fetch_and_add(&c->execs_killed, 1);
	report(pod_id);
	return -EPERM;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
