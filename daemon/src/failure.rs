//! Fail-open or fail-closed: the one place that decides.
//!
//! Every internal failure on the data path that could let a call through unaudited (the
//! audit store refuses a write or cannot make it durable, an MCP body cannot be
//! inspected, the daemon is down) ends here, so the setting an operator sees in
//! `mcpwatch status` is the behaviour they get. (A connection whose original destination
//! cannot be resolved is closed in either mode: there is nowhere to forward it.)
//!
//! - `open`: the call goes through unobserved (or is relayed as opaque bytes); the
//!   failure is counted and logged. When the daemon dies, its non-pinned eBPF links
//!   detach and clients connect directly.
//! - `closed`: the call is refused with a clear error; nothing flows unaudited. The
//!   eBPF links are pinned ([`links_outlive_daemon`]): when the daemon dies or stops,
//!   in-scope connections from the watched cgroup are still redirected to its dead
//!   loopback port and refused, until a restarted daemon takes over or an operator
//!   runs `mcpwatchd --release-pins`.

use mcpwatch_api::FailureMode;

/// What the data path should do after an internal failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Carry on without the failed step.
    Proceed,
    /// Refuse the call / connection.
    Refuse,
}

/// Which internal step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The audit record could not be written before forwarding.
    AuditWrite,
    /// An MCP body could not be inspected (e.g. internal error while parsing).
    Inspection,
}

/// Whether interception must outlive the daemon (pinned eBPF links): while mcpwatchd
/// is down, in-scope connections are refused (closed) or go direct (open).
pub fn links_outlive_daemon(mode: FailureMode) -> bool {
    mode == FailureMode::Closed
}

pub fn decide(mode: FailureMode, _what: Failure) -> OnFailure {
    match mode {
        FailureMode::Open => OnFailure::Proceed,
        FailureMode::Closed => OnFailure::Refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_map_to_actions() {
        assert_eq!(decide(FailureMode::Open, Failure::AuditWrite), OnFailure::Proceed);
        assert_eq!(decide(FailureMode::Closed, Failure::AuditWrite), OnFailure::Refuse);
        assert_eq!(decide(FailureMode::Closed, Failure::Inspection), OnFailure::Refuse);
        assert!(links_outlive_daemon(FailureMode::Closed));
        assert!(!links_outlive_daemon(FailureMode::Open));
    }
}
