//! The vocabulary of a decision, as an audit record carries it.
//!
//! Why here: the policy decides, the proxy and the gate act on the decision, the
//! sinks, metrics and the CLI read it back from records. All of them must compare
//! decisions as values, never as strings (`effective == "hold"` compiles with a typo),
//! and all must agree on the words the audit schema uses. `mcpwatch-policy` re-exports
//! [`Mode`] and [`Effect`]; the policy's richer `Action` (a rate limit carries its
//! spec) maps onto [`ActionKind`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// Rollout mode: how much a non-allow decision is allowed to change traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Log only: the call is forwarded and no alert is raised.
    Audit,
    /// Log and alert, never block or hold.
    Warn,
    /// Block denied and rate-limited calls, hold calls that need approval.
    #[default]
    Enforce,
}

impl Mode {
    /// `audit` < `warn` < `enforce`.
    pub fn rank(self) -> u8 {
        match self {
            Mode::Audit => 0,
            Mode::Warn => 1,
            Mode::Enforce => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Audit => "audit",
            Mode::Warn => "warn",
            Mode::Enforce => "enforce",
        }
    }
}

/// What is done with a message once the mode is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Send it on to the server.
    #[default]
    Forward,
    /// Answer with a JSON-RPC error; nothing reaches the server.
    Block,
    /// Hold it until a human approves or denies it (or the approval times out).
    Hold,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Forward => "forward",
            Effect::Block => "block",
            Effect::Hold => "hold",
        }
    }
}

/// The kind of verdict that decided (`mcpwatch audit --decision` filters on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    #[default]
    Allow,
    Deny,
    RequireApproval,
    RateLimit,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Allow => "allow",
            ActionKind::Deny => "deny",
            ActionKind::RequireApproval => "require_approval",
            ActionKind::RateLimit => "rate_limit",
        }
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(Mode, Effect, ActionKind);

/// The words `mcpwatch audit --decision` accepts: an action kind or an effect.
pub const DECISION_WORDS: [&str; 7] = ["allow", "deny", "require_approval", "rate_limit", "forward", "block", "hold"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_serde() {
        for (v, w) in [(Effect::Forward, "forward"), (Effect::Block, "block"), (Effect::Hold, "hold")] {
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{w}\""));
            assert_eq!(serde_json::from_str::<Effect>(&format!("\"{w}\"")).unwrap(), v);
        }
        for a in [ActionKind::Allow, ActionKind::Deny, ActionKind::RequireApproval, ActionKind::RateLimit] {
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{}\"", a.as_str()));
            assert!(DECISION_WORDS.contains(&a.as_str()));
        }
        assert_eq!(serde_json::to_string(&Mode::Warn).unwrap(), "\"warn\"");
    }
}
