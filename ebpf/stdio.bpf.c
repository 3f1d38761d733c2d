/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * stdio.bpf.c: capture what watched stdio MCP servers read and write
 * (pipes or AF_UNIX socketpairs; any fd, see stdio_enter), for daemon/src/stdio.rs.
 *
 * Why a separate object: these programs hang on the global raw tracepoints
 * sys_enter/sys_exit, unlike the cgroup programs of mcpwatch.bpf.c, and are
 * loaded only when stdio capture is on. The cost for every process outside
 * the watched set is one hash lookup per syscall. x86_64 only: the syscall
 * numbers and pt_regs layout below are the x86_64 ABI.
 *
 * Writes are copied at sys_enter (the bytes are in the buffer before the
 * call). Reads are copied at sys_exit (the bytes exist only after return):
 * sys_enter saves the buffer pointer keyed by pid/tid. At most
 * MCPW_STDIO_CHUNK bytes of one syscall are copied; the rest is flagged
 * truncated. A full ring buffer increments the `stdio_lost` counter, which
 * user space reports: never silent.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define MCPW_STDIO_CHUNK 16384 /* power of two; per-CPU values stay under 32 KiB */
#define MCPW_STDIO_WATCHED 4096
#define MCPW_STDIO_RING (4 * 1024 * 1024)

/* `stdio_watch` values: capture this process; its children are captured. */
#define MCPW_STDIO_CAPTURE 1
/* An MCP client: not captured itself, its children are. */
#define MCPW_STDIO_CLIENT 2

#define NR_READ 0
#define NR_WRITE 1
#define NR_WRITEV 20

/* x86_64 struct pt_regs, the fields in their kernel order. */
struct mcpw_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax;
};

/* Minimal CO-RE views (relocated against the kernel's BTF at load). */
typedef struct {
	int counter;
} atomic_t;

struct signal_struct {
	atomic_t live;
} __attribute__((preserve_access_index));

struct task_struct {
	int tgid;
	struct signal_struct *signal;
} __attribute__((preserve_access_index));

struct mcpw_iovec {
	__u64 base;
	__u64 len;
};

struct mcpw_stdio_hdr {
	__u32 tgid;
	__u32 fd;
	__u32 dir;   /* 0: the server read, 1: the server wrote */
	__u32 len;   /* bytes copied after this header */
	__u64 total; /* bytes the syscall moved */
};

struct mcpw_stdio_buf {
	struct mcpw_stdio_hdr h;
	__u8 data[MCPW_STDIO_CHUNK];
};

struct mcpw_stdio_read {
	__u64 buf;
	__u32 fd;
	__u32 pad;
};

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MCPW_STDIO_WATCHED);
	__type(key, __u32);
	__type(value, __u32);
} stdio_watch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MCPW_STDIO_WATCHED);
	__type(key, __u64);
	__type(value, struct mcpw_stdio_read);
} stdio_reads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mcpw_stdio_buf);
} stdio_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} stdio_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, MCPW_STDIO_RING);
} stdio_events SEC(".maps");

static __always_inline void emit(__u32 tgid, __u32 fd, __u32 dir, __u64 ptr, __u64 total)
{
	__u32 zero = 0;
	struct mcpw_stdio_buf *b = bpf_map_lookup_elem(&stdio_scratch, &zero);
	if (!b)
		return;
	__u64 n = total;
	if (n > MCPW_STDIO_CHUNK)
		n = MCPW_STDIO_CHUNK;
	n &= (MCPW_STDIO_CHUNK * 2 - 1);
	if (n > MCPW_STDIO_CHUNK)
		return;
	b->h.tgid = tgid;
	b->h.fd = fd;
	b->h.dir = dir;
	b->h.total = total;
	if (bpf_probe_read_user(b->data, n, (const void *)ptr) != 0)
		n = 0;
	b->h.len = (__u32)n;
	if (bpf_ringbuf_output(&stdio_events, b, sizeof(b->h) + n, 0) != 0) {
		__u64 *lost = bpf_map_lookup_elem(&stdio_lost, &zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
	}
}

SEC("raw_tracepoint/sys_enter")
int stdio_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	__u32 *w = bpf_map_lookup_elem(&stdio_watch, &tgid);
	if (!w || !(*w & MCPW_STDIO_CAPTURE))
		return 0;
	long nr = (long)ctx->args[1];
	if (nr != NR_READ && nr != NR_WRITE && nr != NR_WRITEV)
		return 0;
	struct mcpw_regs regs;
	if (bpf_probe_read_kernel(&regs, sizeof(regs), (const void *)ctx->args[0]) != 0)
		return 0;
	/* Every fd, not only 0 and 1: the Python SDK moves its wire off the
	 * standard fds (dup above 2, then 0/1 diverted) so that a stray print()
	 * cannot corrupt it. User space keeps only what parses as JSON-RPC. */
	__u32 fd = (__u32)regs.di;
	if (nr == NR_READ) {
		struct mcpw_stdio_read r = { .buf = regs.si, .fd = fd, .pad = 0 };
		bpf_map_update_elem(&stdio_reads, &id, &r, BPF_ANY);
	} else if (nr == NR_WRITE) {
		emit(tgid, fd, 1, regs.si, regs.dx);
	} else {
		/* writev: the first two iovecs (Node's libuv writes one or two). */
		__u64 cnt = regs.dx;
		for (int i = 0; i < 2; i++) {
			if ((__u64)i >= cnt)
				break;
			struct mcpw_iovec v;
			if (bpf_probe_read_user(&v, sizeof(v), (const void *)(regs.si + i * sizeof(v))) != 0)
				break;
			emit(tgid, fd, 1, v.base, v.len);
		}
	}
	return 0;
}

SEC("raw_tracepoint/sys_exit")
int stdio_exit(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct mcpw_stdio_read *r = bpf_map_lookup_elem(&stdio_reads, &id);
	if (!r)
		return 0;
	struct mcpw_stdio_read saved = *r;
	bpf_map_delete_elem(&stdio_reads, &id);
	long ret = (long)ctx->args[1];
	if (ret <= 0)
		return 0;
	emit(id >> 32, saved.fd, 0, saved.buf, (__u64)ret);
	return 0;
}

/* A child of a client or of a captured process is captured from its first
 * instruction: a server answers `initialize` within milliseconds of its
 * launch, before user space could look at it. Runs in the parent. */
SEC("raw_tracepoint/sched_process_fork")
int stdio_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *parent = (struct task_struct *)ctx->args[0];
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__u32 ptgid = (__u32)BPF_CORE_READ(parent, tgid);
	__u32 ctgid = (__u32)BPF_CORE_READ(child, tgid);
	if (ptgid == ctgid)
		return 0; /* a thread */
	if (bpf_map_lookup_elem(&stdio_watch, &ptgid)) {
		__u32 v = MCPW_STDIO_CAPTURE;
		bpf_map_update_elem(&stdio_watch, &ctgid, &v, BPF_ANY);
	} else {
		/* A reused pid must not keep the status of the process that had it. */
		bpf_map_delete_elem(&stdio_watch, &ctgid);
	}
	return 0;
}

SEC("raw_tracepoint/sched_process_exit")
int stdio_exit_process(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0; /* not the last thread */
	__u32 tgid = (__u32)BPF_CORE_READ(task, tgid);
	bpf_map_delete_elem(&stdio_watch, &tgid);
	return 0;
}
