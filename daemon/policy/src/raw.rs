//! The policy file exactly as written: serde structs with spans, before validation.
//!
//! Every table rejects unknown keys, so a typo is an error with a position instead of a
//! silently ignored setting. Values that are validated later (names, globs, regexes)
//! keep their span so the error can point at them.

use serde::Deserialize;
use toml::Spanned;

use crate::model::{DefaultAction, Mode, Per, RateScope, RuleAction, ServerStatus, ShadowAction};

pub(crate) type SList = Spanned<Vec<Spanned<String>>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub version: Spanned<i64>,
    pub mode: Mode,
    pub shadow: Option<ShadowAction>,
    pub default: Option<DefaultAction>,
    pub approval_timeout_secs: Option<Spanned<i64>>,
    pub contact: Option<String>,
    #[serde(default)]
    pub server: Vec<RawServer>,
    #[serde(default)]
    pub agent: Vec<RawAgent>,
    #[serde(default)]
    pub rule: Vec<RawRule>,
    /// `[[label]]`: what tools are, for flow rules.
    #[serde(default)]
    pub label: Vec<RawLabel>,
    /// `[[flow]]`: sequences within a tainted session.
    #[serde(default)]
    pub flow: Vec<RawFlow>,
    pub approvals: Option<RawApprovals>,
    /// `[[gateway]]`: the company MCP gateway(s) and the remote hosts they front.
    #[serde(default)]
    pub gateway: Vec<RawGateway>,
    // Not `Spanned`: toml cannot span a table created implicitly by `[inspect.detectors]`.
    pub inspect: Option<RawInspect>,
}

/// `[[gateway]]`: an MCP gateway (`url`, or `host` [+ `port`, `path`]) and the remote
/// hosts it fronts (`covers`): reaching a covered host directly is a bypass.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub url: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<u16>>,
    pub path: Option<Spanned<String>>,
    pub covers: SList,
}

/// `[approvals]`: who may answer held calls.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApprovals {
    pub approvers: Option<SList>,
}

/// `[inspect]`: content inspection (detectors, tool poisoning, tool pinning).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInspect {
    /// `[inspect.detectors]`: which detectors run and what each does.
    pub detectors: Option<mcpwatch_inspect::InspectConfig>,
    pub poisoning: Option<crate::model::PoisonAction>,
    pub poisoning_min_severity: Option<crate::model::MinSeverity>,
    pub pinning: Option<crate::model::PinAction>,
    /// Scan tool results for instructions aimed at the agent (alert only).
    pub result_injection: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub url: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<u16>>,
    pub path: Option<Spanned<String>>,
    /// A stdio server by package: `npm:NAME`, `pypi:NAME`, `pymodule:NAME`, `oci:IMAGE`.
    pub package: Option<Spanned<String>>,
    /// A stdio server by script or program path (glob).
    pub command: Option<Spanned<String>>,
    pub owner: Option<String>,
    pub status: Option<Spanned<ServerStatus>>,
    /// A TOML date (`2025-06-30`) or the same as a string.
    pub deprecated_since: Option<Spanned<toml::Value>>,
    pub tools: Option<SList>,
    pub mode: Option<Mode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub exe: Option<Spanned<String>>,
    pub comm: Option<Spanned<String>>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub gid: Option<u32>,
    pub group: Option<String>,
    pub unit: Option<Spanned<String>>,
    pub cgroup: Option<Spanned<String>>,
    pub servers: Option<SList>,
    pub tools: Option<SList>,
    pub deny_servers: Option<SList>,
    pub deny_tools: Option<SList>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub id: Spanned<String>,
    pub action: Spanned<RuleAction>,
    pub methods: Option<SList>,
    pub servers: Option<SList>,
    pub tools: Option<SList>,
    pub agents: Option<SList>,
    #[serde(default)]
    pub when: Vec<Spanned<RawCondition>>,
    pub rate: Option<Spanned<RawRate>>,
    pub mode: Option<Spanned<Mode>>,
    pub message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCondition {
    pub pointer: Spanned<String>,
    pub matches: Option<Spanned<String>>,
    pub not_matches: Option<Spanned<String>>,
    /// `normalized` (default) or `raw`.
    pub form: Option<crate::model::ConditionForm>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRate {
    pub count: Spanned<u32>,
    pub per: Per,
    #[serde(default = "default_scope")]
    pub scope: RateScope,
}

fn default_scope() -> RateScope {
    RateScope::Agent
}

/// `[[label]]`: the policy's word on what a tool is (beats built-in knowledge and heuristics).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLabel {
    pub servers: Option<SList>,
    pub tools: SList,
    /// May be empty: "this tool is none of them".
    pub labels: Spanned<Vec<Spanned<crate::flow::Label>>>,
}

/// `[[flow]]`: a sequence of labels within a tainted session.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFlow {
    pub id: Spanned<String>,
    pub sequence: Spanned<Vec<Spanned<crate::flow::Label>>>,
    pub action: Spanned<RuleAction>,
    pub mode: Option<Mode>,
    pub message: Option<String>,
    /// Only when the call repeats a marker of the untrusted content.
    #[serde(default)]
    pub markers: bool,
}
