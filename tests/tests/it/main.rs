//! The one integration-test binary: real daemon, real SDK peers, real eBPF.
//!
//! Scenario files by topic; helpers live in the `mcpwatch_tests` library (`tests/src`).
//! eBPF scenarios attach only to a child cgroup they create and skip (printing why)
//! only where the kernel or privileges cannot support them.

mod bypass_conn;
mod bypass_exchange;
mod bypass_govern;
mod ca_rotate;
mod cli;
mod conformance;
mod durability;
mod flows;
mod inspect;
mod intercept;
mod lifecycle;
mod package;
mod policy;
mod pool;
mod protocol;
mod record;
mod report;
mod scope;
mod service;
mod siem;
mod stdio;
mod tls;
mod wrap;
