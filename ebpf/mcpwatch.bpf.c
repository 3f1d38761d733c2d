// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * mcpwatch.bpf.c: transparent redirection of in-scope TCP connections to the
 * mcpwatch daemon, and the bookkeeping that lets the daemon find out where
 * each connection was really going and who opened it.
 *
 *   connect4/connect6      record the original destination and the caller's
 *                          identity under the socket cookie, then rewrite the
 *                          destination to the daemon's loopback listener.
 *   sock_ops               when the redirected connection is established, copy
 *                          the record under the client's (local ip, local port),
 *                          which is the peer address the daemon sees on accept;
 *                          mark it closed (and drop the cookie entry) on close.
 *   getpeername4/6         report the original destination, so the redirect is
 *                          invisible to the client.
 *   connect4/6, sendmsg4/6 on UDP sockets: refuse datagrams toward in-scope ports
 *                          (DNS excepted). QUIC (HTTP/3) cannot be redirected or
 *                          inspected; refused, every HTTP/3 client falls back to
 *                          TCP, which is. Counted in `udp_refused`.
 *   sched_process_exec     remember the comm of every exec'd process, so a
 *                          short-lived client can still be named after it exits;
 *                          agent scope: a comm in `agent_comms` makes the process
 *                          an agent at once, any other exec is `pending` until
 *                          user space has matched it against the policy.
 *   sched_process_fork     a child of an agent is an agent (of a pending process:
 *                          pending); any other child is neither (pid reuse).
 *   task_rename            a thread renamed to an agent comm (prctl, process.title)
 *                          makes its process an agent.
 *   sched_process_exit     forget the process when its last thread exits.
 *
 * Agents (and pending processes) have EVERY TCP destination redirected, not only
 * the ports in `ports`; see docs/scope.md.
 *
 * Compiled by daemon/intercept/build.rs with
 *   clang-19 -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu -c
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "mcpwatch.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6
#define DNS_PORT 53
#define LOOPBACK4 0x7f000001 /* 127.0.0.1, host order */

/* A 4-byte context load clang may not merge with its neighbour: the verifier
 * rejects 8-byte loads of bpf_sock_ops fields such as local_ip6[]. */
#define CTX_U32(field) (*(volatile __u32 *)&(field))

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mcpw_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MCPW_PORT_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MCPW_MAX_CONNS);
	__type(key, __u64);
	__type(value, struct mcpw_origin);
} by_cookie SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MCPW_MAX_CONNS);
	__type(key, struct mcpw_peer_key);
	__type(value, struct mcpw_origin);
} by_peer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MCPW_MAX_EXECS);
	__type(key, __u32);
	__type(value, struct mcpw_exec);
} execs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MCPW_MAX_AGENTS);
	__type(key, __u32);
	__type(value, struct mcpw_agent);
} agents SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MCPW_MAX_PENDING);
	__type(key, __u32);
	__type(value, struct mcpw_agent);
} pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MCPW_MAX_AGENT_COMMS);
	__type(key, struct mcpw_comm);
	__type(value, __u32);
} agent_comms SEC(".maps");

/* The host's DNS resolvers (IPv6, or IPv4-mapped ::ffff:a.b.c.d), from resolv.conf:
 * the only destinations UDP port 53 stays open toward (QUIC to any other host's port 53
 * would carry MCP past the proxy). Kept current by the daemon. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MCPW_MAX_DNS_SERVERS);
	__type(key, struct mcpw_addr);
	__type(value, __u8);
} dns_servers SEC(".maps");

/* UDP connects and sends refused (QUIC toward in-scope ports), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} udp_refused SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, MCPW_EVENTS_BYTES);
} events SEC(".maps");

/* Minimal CO-RE views of kernel structs: only the fields read below. The
 * loader relocates the offsets against the running kernel's BTF. */
typedef struct {
	int counter;
} atomic_t;

struct signal_struct {
	atomic_t live;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	__u64 start_boottime;
	struct signal_struct *signal;
} __attribute__((preserve_access_index));

static __always_inline struct mcpw_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config, &zero);
}

static __always_inline int port_in_scope(const struct mcpw_config *cfg, __u16 port)
{
	if (cfg->all_ports)
		return 1;
	__u32 word = port >> 6;
	__u64 *bits = bpf_map_lookup_elem(&ports, &word);
	if (!bits)
		return 0;
	return (*bits >> (port & 63)) & 1;
}

/* Whether the calling process is an agent or not yet classified: then every
 * destination port is in scope. */
static __always_inline int agent_in_scope(const struct mcpw_config *cfg)
{
	if (!cfg->agents)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	return bpf_map_lookup_elem(&agents, &tgid) != 0 || bpf_map_lookup_elem(&pending, &tgid) != 0;
}

static __always_inline int dst_in_scope(const struct mcpw_config *cfg, __u16 port)
{
	return port_in_scope(cfg, port) || agent_in_scope(cfg);
}

/* Common checks of connect4/connect6 before anything is recorded: a TCP
 * stream socket, not the daemon's own (by mark or by process). */
static __always_inline int is_candidate(struct bpf_sock_addr *ctx, const struct mcpw_config *cfg)
{
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 0;
	if (cfg->listen_port == 0)
		return 0; /* not configured yet */
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 0;
	if (cfg->mark != 0 && sk->mark == cfg->mark)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (cfg->daemon_tgid != 0 && tgid == cfg->daemon_tgid)
		return 0;
	return 1;
}

/* An address as the maps key it, into zeroed `out[16]`: IPv4 (network order) as
 * ::ffff:a.b.c.d, IPv6 from its four words as read from the context. */
static __always_inline void put_ip4(__u8 *out, __u32 ip)
{
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(&out[12], &ip, 4);
}

static __always_inline void put_ip6(__u8 *out, __u32 w0, __u32 w1, __u32 w2, __u32 w3)
{
	__builtin_memcpy(&out[0], &w0, 4);
	__builtin_memcpy(&out[4], &w1, 4);
	__builtin_memcpy(&out[8], &w2, 4);
	__builtin_memcpy(&out[12], &w3, 4);
}

/* Is the destination one of the host's resolvers? `v6` is a constant at each call
 * site, so a program only reads the address fields its attach point allows. */
static __always_inline int to_dns_server(struct bpf_sock_addr *ctx, int v6)
{
	struct mcpw_addr a;
	__builtin_memset(&a, 0, sizeof(a));
	if (v6)
		put_ip6(a.ip, CTX_U32(ctx->user_ip6[0]), CTX_U32(ctx->user_ip6[1]), CTX_U32(ctx->user_ip6[2]), CTX_U32(ctx->user_ip6[3]));
	else
		put_ip4(a.ip, ctx->user_ip4);
	return bpf_map_lookup_elem(&dns_servers, &a) != 0;
}

/* A UDP connect or send toward an in-scope port by anyone but the daemon: QUIC
 * (HTTP/3) would carry MCP past the proxy, and cannot be redirected to it. Refused (the
 * caller gets EPERM), an HTTP/3 client falls back to TCP. DNS is excepted only toward
 * the host's resolvers (`dns_servers`). */
static __always_inline int udp_refused_here(struct bpf_sock_addr *ctx, const struct mcpw_config *cfg, __u16 port, int v6)
{
	if (!cfg->refuse_udp || cfg->listen_port == 0)
		return 0;
	if (ctx->type != SOCK_DGRAM || port == 0)
		return 0;
	if (port == DNS_PORT && to_dns_server(ctx, v6))
		return 0;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 0;
	if (cfg->mark != 0 && sk->mark == cfg->mark)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (cfg->daemon_tgid != 0 && tgid == cfg->daemon_tgid)
		return 0;
	if (!dst_in_scope(cfg, port))
		return 0;
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&udp_refused, &zero);
	if (n)
		*n += 1;
	return 1;
}

static __always_inline void fill_identity(struct bpf_sock_addr *ctx, struct mcpw_origin *o)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	o->pid = (__u32)pid_tgid;
	o->tgid = pid_tgid >> 32;
	o->uid = (__u32)uid_gid;
	o->gid = uid_gid >> 32;
	bpf_get_current_comm(o->comm, sizeof(o->comm));
	o->cgroup_id = bpf_get_current_cgroup_id();
	o->cookie = bpf_get_socket_cookie(ctx);
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	o->start_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	struct mcpw_exec *e = bpf_map_lookup_elem(&execs, &o->tgid);
	o->exec_ns = e ? e->ktime_ns : 0;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	struct mcpw_config *cfg = get_config();
	if (!cfg)
		return 1;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	if (udp_refused_here(ctx, cfg, port, 0))
		return 0;
	if (!is_candidate(ctx, cfg))
		return 1;

	__u32 ip = ctx->user_ip4; /* network order */
	if (!dst_in_scope(cfg, port))
		return 1;
	if (ip == bpf_htonl(LOOPBACK4) && port == cfg->listen_port)
		return 1; /* already going to the daemon */

	struct mcpw_origin o;
	__builtin_memset(&o, 0, sizeof(o));
	put_ip4(o.dst_ip, ip);
	o.dst_port = port;
	o.family = AF_INET;
	fill_identity(ctx, &o);

	/* Cannot remember it (the map could not take an entry): refuse the connect
	 * (EPERM; the client may retry) rather than let an in-scope connection go
	 * direct, ungoverned. A security boundary fails closed. */
	if (bpf_map_update_elem(&by_cookie, &o.cookie, &o, BPF_ANY) != 0)
		return 0;

	ctx->user_ip4 = bpf_htonl(LOOPBACK4);
	ctx->user_port = bpf_htons((__u16)cfg->listen_port);
	return 1;
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	struct mcpw_config *cfg = get_config();
	if (!cfg)
		return 1;
	if (udp_refused_here(ctx, cfg, bpf_ntohs((__u16)ctx->user_port), 1))
		return 0;
	if (!is_candidate(ctx, cfg))
		return 1;

	__u32 ip0 = CTX_U32(ctx->user_ip6[0]);
	__u32 ip1 = CTX_U32(ctx->user_ip6[1]);
	__u32 ip2 = CTX_U32(ctx->user_ip6[2]);
	__u32 ip3 = CTX_U32(ctx->user_ip6[3]);
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	if (!dst_in_scope(cfg, port))
		return 1;

	int mapped = ip0 == 0 && ip1 == 0 && ip2 == bpf_htonl(0x0000ffff);
	int loop6 = ip0 == 0 && ip1 == 0 && ip2 == 0 && ip3 == bpf_htonl(1);
	if (port == cfg->listen_port && (loop6 || (mapped && ip3 == bpf_htonl(LOOPBACK4))))
		return 1; /* already going to the daemon */

	struct mcpw_origin o;
	__builtin_memset(&o, 0, sizeof(o));
	put_ip6(o.dst_ip, ip0, ip1, ip2, ip3);
	o.dst_port = port;
	o.family = AF_INET6;
	fill_identity(ctx, &o);

	if (bpf_map_update_elem(&by_cookie, &o.cookie, &o, BPF_ANY) != 0)
		return 0; /* as in connect4: refused, never direct */

	if (mapped) {
		/* ::ffff:127.0.0.1 keeps the socket on its IPv4 path */
		ctx->user_ip6[3] = bpf_htonl(LOOPBACK4);
	} else {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = bpf_htons((__u16)cfg->listen_port);
	return 1;
}

/* Unconnected UDP sockets name their destination per datagram: 0 refuses it. One
 * program per attach point (sendmsg4, sendmsg6), the same verdict. */
static __always_inline int udp_send_verdict(struct bpf_sock_addr *ctx, int v6)
{
	struct mcpw_config *cfg = get_config();
	return !(cfg && udp_refused_here(ctx, cfg, bpf_ntohs((__u16)ctx->user_port), v6));
}

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	return udp_send_verdict(ctx, 0);
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
	return udp_send_verdict(ctx, 1);
}

static __always_inline void peer_key_of(struct bpf_sock_ops *skops, struct mcpw_peer_key *key)
{
	__builtin_memset(key, 0, sizeof(*key));
	if (skops->family == AF_INET)
		put_ip4(key->ip, skops->local_ip4);
	else
		put_ip6(key->ip, CTX_U32(skops->local_ip6[0]), CTX_U32(skops->local_ip6[1]), CTX_U32(skops->local_ip6[2]), CTX_U32(skops->local_ip6[3]));
	key->port = (__u16)skops->local_port; /* host order */
}

SEC("sockops")
int sock_ops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	if (skops->family != AF_INET && skops->family != AF_INET6)
		return 1;

	if (op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
		/* Watch redirected sockets from the SYN on, so that one which
		 * never gets established still has its cookie entry dropped. */
		__u64 cookie = bpf_get_socket_cookie(skops);
		if (bpf_map_lookup_elem(&by_cookie, &cookie))
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	}

	if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
		__u64 cookie = bpf_get_socket_cookie(skops);
		struct mcpw_origin *o = bpf_map_lookup_elem(&by_cookie, &cookie);
		if (!o)
			return 1;
		struct mcpw_origin copy;
		__builtin_memcpy(&copy, o, sizeof(copy));
		copy.closed_ns = 0;
		struct mcpw_peer_key key;
		peer_key_of(skops, &key);
		bpf_map_update_elem(&by_peer, &key, &copy, BPF_ANY);
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	}

	if (op == BPF_SOCK_OPS_STATE_CB && skops->args[1] == BPF_TCP_CLOSE) {
		__u64 cookie = bpf_get_socket_cookie(skops);
		bpf_map_delete_elem(&by_cookie, &cookie);
		/* The peer entry is only marked: a client that writes and closes
		 * before the daemon accepted must still be resolvable. The
		 * daemon drops closed entries after a grace period; LRU bounds
		 * the rest. Marked by the cookie it was made from, even when the
		 * cookie entry was already evicted: an unmarked entry would stay
		 * resolvable for a later socket on the same address and port. */
		struct mcpw_peer_key key;
		peer_key_of(skops, &key);
		struct mcpw_origin *p = bpf_map_lookup_elem(&by_peer, &key);
		if (p && p->cookie == cookie)
			p->closed_ns = bpf_ktime_get_ns();
		return 1;
	}
	return 1;
}

SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct mcpw_origin *o = bpf_map_lookup_elem(&by_cookie, &cookie);
	if (!o || o->family != AF_INET)
		return 1;
	__u32 ip;
	__builtin_memcpy(&ip, &o->dst_ip[12], 4);
	ctx->user_ip4 = ip;
	ctx->user_port = bpf_htons(o->dst_port);
	return 1;
}

SEC("cgroup/getpeername6")
int getpeername6(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct mcpw_origin *o = bpf_map_lookup_elem(&by_cookie, &cookie);
	if (!o || o->family != AF_INET6)
		return 1;
	__u32 ip0, ip1, ip2, ip3;
	__builtin_memcpy(&ip0, &o->dst_ip[0], 4);
	__builtin_memcpy(&ip1, &o->dst_ip[4], 4);
	__builtin_memcpy(&ip2, &o->dst_ip[8], 4);
	__builtin_memcpy(&ip3, &o->dst_ip[12], 4);
	ctx->user_ip6[0] = ip0;
	ctx->user_ip6[1] = ip1;
	ctx->user_ip6[2] = ip2;
	ctx->user_ip6[3] = ip3;
	ctx->user_port = bpf_htons(o->dst_port);
	return 1;
}

/* Whether the current task is in the watched cgroup or below it: only there
 * do the connect hooks run, so only there is a pending mark worth making. */
static __always_inline int in_watched_cgroup(const struct mcpw_config *cfg)
{
	if (cfg->watch_cgid == 0)
		return 1;
	return bpf_get_current_ancestor_cgroup_id((int)cfg->watch_level) == cfg->watch_cgid;
}

/* Ask user space to classify a process. If the ring is full the process stays
 * pending (redirected) until user space's periodic sweep classifies it. */
static __always_inline void emit_event(__u32 tgid, __u32 ppid, __u64 ktime_ns)
{
	struct mcpw_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev)
		return;
	ev->tgid = tgid;
	ev->ppid = ppid;
	ev->ktime_ns = ktime_ns;
	bpf_ringbuf_submit(ev, 0);
}

SEC("raw_tracepoint/sched_process_exec")
int process_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct mcpw_exec e;
	__builtin_memset(&e, 0, sizeof(e));
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(e.comm, sizeof(e.comm));
	e.ktime_ns = bpf_ktime_get_ns();
	e.uid = (__u32)bpf_get_current_uid_gid();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	e.ppid = (__u32)BPF_CORE_READ(task, real_parent, tgid);
	bpf_map_update_elem(&execs, &tgid, &e, BPF_ANY);

	struct mcpw_config *cfg = get_config();
	if (!cfg || !cfg->agents)
		return 0;
	if (bpf_map_lookup_elem(&agents, &tgid))
		return 0; /* an agent stays one whatever it runs next */
	struct mcpw_agent a = { .flags = MCPW_AGENT_COMM, .ppid = e.ppid, .since_ns = e.ktime_ns };
	if (bpf_map_lookup_elem(&agent_comms, e.comm)) {
		bpf_map_update_elem(&agents, &tgid, &a, BPF_ANY);
		bpf_map_delete_elem(&pending, &tgid);
		return 0;
	}
	if (cfg->classify && in_watched_cgroup(cfg)) {
		a.flags = 0;
		bpf_map_update_elem(&pending, &tgid, &a, BPF_ANY);
		emit_event(tgid, e.ppid, e.ktime_ns);
	}
	return 0;
}

SEC("raw_tracepoint/sched_process_fork")
int process_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *parent = (struct task_struct *)ctx->args[0];
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__u32 ptgid = (__u32)BPF_CORE_READ(parent, tgid);
	__u32 ctgid = (__u32)BPF_CORE_READ(child, tgid);
	if (ptgid == ctgid)
		return 0; /* a new thread: same process */
	struct mcpw_config *cfg = get_config();
	if (!cfg || !cfg->agents)
		return 0;
	struct mcpw_agent a = { .flags = MCPW_AGENT_INHERITED, .ppid = ptgid, .since_ns = bpf_ktime_get_ns() };
	if (bpf_map_lookup_elem(&agents, &ptgid)) {
		bpf_map_update_elem(&agents, &ctgid, &a, BPF_ANY);
		bpf_map_delete_elem(&pending, &ctgid);
		return 0;
	}
	/* A reused pid must not keep the status of the process that had it. */
	bpf_map_delete_elem(&agents, &ctgid);
	if (bpf_map_lookup_elem(&pending, &ptgid)) {
		a.flags = 0;
		bpf_map_update_elem(&pending, &ctgid, &a, BPF_ANY);
		emit_event(ctgid, ptgid, a.since_ns);
	} else {
		bpf_map_delete_elem(&pending, &ctgid);
	}
	return 0;
}

SEC("raw_tracepoint/task_rename")
int task_rename(struct bpf_raw_tracepoint_args *ctx)
{
	struct mcpw_config *cfg = get_config();
	if (!cfg || !cfg->agents)
		return 0;
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct mcpw_comm name;
	__builtin_memset(&name, 0, sizeof(name));
	if (bpf_probe_read_kernel_str(name.comm, sizeof(name.comm), (const void *)ctx->args[1]) <= 0)
		return 0;
	if (!bpf_map_lookup_elem(&agent_comms, &name))
		return 0;
	__u32 tgid = (__u32)BPF_CORE_READ(task, tgid);
	if (bpf_map_lookup_elem(&agents, &tgid))
		return 0;
	struct mcpw_agent a = { .flags = MCPW_AGENT_COMM, .ppid = (__u32)BPF_CORE_READ(task, real_parent, tgid), .since_ns = bpf_ktime_get_ns() };
	bpf_map_update_elem(&agents, &tgid, &a, BPF_ANY);
	bpf_map_delete_elem(&pending, &tgid);
	return 0;
}

SEC("raw_tracepoint/sched_process_exit")
int process_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	/* signal->live was decremented before this tracepoint: 0 means the last
	 * thread of the process is exiting. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	__u32 tgid = (__u32)BPF_CORE_READ(task, tgid);
	bpf_map_delete_elem(&agents, &tgid);
	bpf_map_delete_elem(&pending, &tgid);
	return 0;
}
