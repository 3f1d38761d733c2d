/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * mcpwatch.h: the map keys and values shared between the eBPF programs
 * (mcpwatch.bpf.c) and their loader (daemon/intercept/src/maps.rs).
 *
 * Why one header: the Rust side mirrors these structs byte for byte with
 * #[repr(C)] types and compile-time size checks; keeping every layout in one
 * place makes a mismatch a one-file review. All padding is explicit so that
 * no uninitialised byte ever reaches a map (the verifier rejects that, and the
 * Rust side must be able to treat the values as plain old data).
 */
#ifndef MCPWATCH_H
#define MCPWATCH_H

#include <linux/types.h>

/* Bounds of the LRU maps: churn evicts the oldest entries, never leaks. */
#define MCPW_MAX_CONNS 65536
#define MCPW_MAX_EXECS 65536
/* Live agent processes tracked at once (plain hash: entries leave only when
 * the process exits, never by eviction, so churn elsewhere cannot push an
 * agent out of scope). */
#define MCPW_MAX_AGENTS 65536
/* Processes exec'd but not yet classified by user space (LRU: a flood of
 * execs evicts pending entries, never agents). */
#define MCPW_MAX_PENDING 16384
/* Exact command names matched in the kernel (built-in list + exact policy comms). */
#define MCPW_MAX_AGENT_COMMS 1024
/* Resolver addresses UDP port 53 stays open toward. */
#define MCPW_MAX_DNS_SERVERS 64
/* Exec events for user space, bytes (power of two, multiple of the page size). */
#define MCPW_EVENTS_BYTES (256 * 1024)

/* `agents` value flags: why a process is an agent. */
#define MCPW_AGENT_COMM 1      /* its comm matched `agent_comms` (exec or rename) */
#define MCPW_AGENT_POLICY 2    /* user space matched a policy [[agent]] pattern */
#define MCPW_AGENT_INHERITED 4 /* forked from an agent, or a descendant of one */

/* 65536 ports, one bit each, in 64-bit words. */
#define MCPW_PORT_WORDS 1024

/* `config` array map, single entry at index 0, filled by the loader before
 * any program is attached. */
struct mcpw_config {
	__u32 listen_port; /* daemon listens on 127.0.0.1:listen_port and [::1]:listen_port (host order) */
	__u32 mark;        /* SO_MARK carried by the daemon's own sockets; 0 = unused */
	__u32 daemon_tgid; /* the daemon's process id; 0 = unused */
	__u32 all_ports;   /* non-zero: every TCP port is in scope, `ports` is ignored */
	__u32 agents;      /* non-zero: every TCP port is in scope for agents (`agents`, `pending`) */
	__u32 classify;    /* non-zero: unmatched execs become `pending` and are sent to user space */
	__u32 watch_level; /* depth of the watched cgroup below the cgroup2 root (root: 0) */
	__u32 refuse_udp;  /* non-zero: UDP to in-scope ports (not 53) is refused (QUIC, HTTP/3) */
	__u64 watch_cgid;  /* id of the watched cgroup: only execs inside it become pending */
};

/* `agents` value (key: tgid) and `pending` value (key: tgid). */
struct mcpw_agent {
	__u32 flags;    /* MCPW_AGENT_*; 0 in `pending` */
	__u32 ppid;     /* parent's tgid when the entry was made; 0 if unknown */
	__u64 since_ns; /* bpf_ktime_get_ns() when the entry was made */
};

/* `agent_comms` key: a command name, NUL-padded to 16 bytes. */
struct mcpw_comm {
	char comm[16];
};

/* `dns_servers` key: an IPv6 address, IPv4 as ::ffff:a.b.c.d (network order). */
struct mcpw_addr {
	__u8 ip[16];
};

/* `events` record: a process user space has to classify. */
struct mcpw_event {
	__u32 tgid;
	__u32 ppid;
	__u64 ktime_ns;
};

/* What connect4/connect6 learned about a redirected connection. */
struct mcpw_origin {
	/* Original destination, always in IPv6 form: an IPv4 destination is
	 * stored as ::ffff:a.b.c.d. Network byte order. */
	__u8 dst_ip[16];
	__u16 dst_port;    /* host order */
	__u16 family;      /* AF_INET or AF_INET6: the family of the client's socket */
	__u32 pid;         /* thread that called connect() */
	__u32 tgid;
	__u32 uid;
	__u32 gid;
	char comm[16];
	__u32 _pad0;
	__u64 cgroup_id;
	__u64 cookie;      /* socket cookie, to tell the owner of a peer-keyed entry */
	__u64 closed_ns;   /* bpf_ktime_get_ns() when the client socket closed; 0 = open */
	/* The process's start (its thread group leader's start_boottime, ns) and the
	 * time of its last exec seen since attach (`execs`, 0 = none): with tgid they
	 * name one process image, so a pid reused or a process that exec'd since is
	 * never taken for the one described before. */
	__u64 start_ns;
	__u64 exec_ns;
};

/* `by_peer` key: the client's local address as the daemon sees it as the peer
 * of the accepted connection. IPv4 is stored as ::ffff:a.b.c.d, IPv6 as is
 * (a v4-mapped IPv6 socket therefore gives the same key as an IPv4 one). */
struct mcpw_peer_key {
	__u8 ip[16];    /* network byte order */
	__u16 port;     /* host order */
	__u16 _pad0;
};

/* `execs` value: the last exec of a process (key: tgid). */
struct mcpw_exec {
	char comm[16];
	__u64 ktime_ns; /* bpf_ktime_get_ns() at exec */
	__u32 ppid;     /* parent's tgid at exec time; 0 if unknown */
	__u32 uid;
};

#endif /* MCPWATCH_H */
