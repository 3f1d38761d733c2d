//! The answer to `mcpwatch audit verify`: what the audit store's hash chain says about
//! the records (see the audit crate's `chain` module for how the chain is kept).

use serde::{Deserialize, Serialize};

/// What `verify` found wrong, one per record or chain position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditProblem {
    /// The record's stored bytes are not the ones its latest chain entry names (edited,
    /// or values moved between records).
    Changed { id: String },
    /// A record the chain never saw written.
    Unchained { id: String },
    /// A record the chain saw written is gone, although retention never reached it.
    Removed { id: String },
    /// The chain itself is broken at `seq`: an entry missing, reordered or altered, or
    /// the head does not match the last entry.
    ChainBroken { seq: u64, reason: String },
}

impl AuditProblem {
    /// The record id or chain position, for "the first record that was changed".
    pub fn position(&self) -> String {
        match self {
            AuditProblem::Changed { id } | AuditProblem::Unchained { id } | AuditProblem::Removed { id } => id.clone(),
            AuditProblem::ChainBroken { seq, .. } => format!("chain entry {seq}"),
        }
    }
}

impl std::fmt::Display for AuditProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditProblem::Changed { id } => write!(f, "record {id} was changed (its bytes differ from what was written)"),
            AuditProblem::Unchained { id } => write!(f, "record {id} was never written by mcpwatchd (no chain entry)"),
            AuditProblem::Removed { id } => write!(f, "record {id} was removed (retention never reached it)"),
            AuditProblem::ChainBroken { seq, reason } => write!(f, "the chain is broken at entry {seq}: {reason}"),
        }
    }
}

/// The outcome of `mcpwatch audit verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerify {
    pub records: u64,
    pub chain_entries: u64,
    /// Hex of the head link: record it elsewhere to pin today's state.
    pub head: String,
    pub head_seq: u64,
    /// Problems in store order (records by id, then chain positions); empty when intact.
    pub problems: Vec<AuditProblem>,
}

impl AuditVerify {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

