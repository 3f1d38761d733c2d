//! mcpwatch policy: who may call which tool on which server, in which rollout mode.
//!
//! Why a separate, pure crate: the policy decides whether a live request is forwarded,
//! held or refused, so it must be fast (microseconds per call), deterministic and
//! testable without a daemon. Nothing here reads files, clocks or sockets: the caller
//! hands in the policy text, the process identity, the server and the message, and gets
//! back a [`Decision`] naming the rules that made it. The file format and the precedence
//! rules are documented for operators in `docs/policy.md`.
//!
//! - [`parse`] compiles a TOML policy into a [`Policy`], or returns a [`PolicyError`]
//!   with file, line and column.
//! - [`Policy::evaluate`] judges one client->server message; [`Policy::tool_visible`]
//!   filters `tools/list` results per caller.
//! - [`RateLimiter`] is the mutable rate-limit state, owned by the caller and kept
//!   across reloads; [`RateLimiter::apply`] folds it into a decision.
//! - [`normalize_path`] is the lexical path normaliser argument conditions match
//!   against (pure and total; fuzzed).
//! - [`approval_key`] binds a human approval to one exact call.
//! - [`FlowTable`] follows untrusted content through a session and matches `[[flow]]`
//!   rules; [`Policy::tool_labels`] says what a tool is.
//! - [`launch::identify`] names what a stdio server launch runs (package, image or script,
//!   looking through launchers); `[[server]] package/command` entries match it through
//!   [`Target::stdio`], and [`Policy::bypassed_gateway`] says when a remote call goes
//!   around a `[[gateway]]`.

mod approval;
mod compile;
mod error;
mod eval;
mod flow;
pub mod launch;
mod matcher;
mod model;
mod path;
mod rate;
mod raw;

pub use approval::{approval_key, canonical_hash, canonical_json};
pub use compile::{DEFAULT_APPROVAL_TIMEOUT, MAX_POLICY_BYTES, parse};
pub use error::PolicyError;
pub use eval::{Call, STDIO_SCHEME, Subject, Target, stdio_endpoint};
pub use flow::{
    FlowCheck, FlowDef, FlowLimits, FlowTable, FlowVerdict, Injection, Label, LabelSource, Labels, ResultSeen, TaintReason, TaintRef,
    TaintState, ToolLabels, ToolRef, builtin_names, call_labels, markers,
};
pub use model::{
    Action, AgentDef, Approver, GatewayDef, ConditionForm, Decision, DefaultAction, Effect, InspectSettings, MinSeverity, Mode, Per,
    PinAction, PoisonAction, Policy, RateScope, RateSpec, RuleAction, RuleDef, ServerDef,
    ServerStatus, ShadowAction,
};
pub use matcher::{canonical_host, norm_path as canonical_request_path, percent_decode};
pub use path::normalize_path;
pub use rate::{DEFAULT_MAX_KEYS, RateLimiter, RateResult};
