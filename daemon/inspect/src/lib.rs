//! Content inspection for MCP messages: PII and secret detectors with redaction, tool-poisoning
//! signals, and rug-pull pinning of tool definitions.
//!
//! Why a separate crate: the proxy sees every JSON-RPC message in both directions and must decide,
//! per message and fast, whether it carries personal data or credentials (redact / block / audit),
//! whether a server's tool definitions hide instructions for the agent, and whether a tool changed
//! since it was first trusted. All of that is pure computation over `serde_json::Value`s, so it
//! lives here with no I/O, no clocks and no panics on input; the daemon decides what to do with the
//! answers (policy, audit, stripping tools) and the CLI reuses it for `mcpwatch inspect`.
//!
//! Map of the crate:
//! - [`Inspector`] (in `scan`/`json`): compiled PII/secret detectors; [`Inspector::scan_str`],
//!   [`Inspector::scan_json`], [`Inspector::redact_json`] (and [`Inspector::redact_json_with`]:
//!   [`Embedded::Decoded`] also reads strings holding JSON as a lenient server decodes them).
//!   Configured by [`InspectConfig`].
//! - [`poison`]: scored hidden-instruction signals for tool definitions, `initialize`
//!   instructions, tool results and elicitation requests.
//! - [`pin`]: canonical-JSON tool hashes, human-readable diffs and the [`pin::PinSet`] that turns a
//!   `tools/list` into New / Changed / Removed events.
//! - [`scan_throughput_fixture`]: a deterministic ~1 MB mixed tool result for `cargo xtask bench`.

mod argv;
mod config;
mod detectors;
mod fixture;
mod json;
pub mod pin;
pub mod poison;
mod scan;
mod text;
mod validate;

pub use config::{Action, CustomPattern, InspectConfig};
pub use detectors::{BUILTIN_DETECTORS, DetectorInfo};
pub use fixture::scan_throughput_fixture;
pub use json::{Embedded, JsonFinding, RedactReport, RedactedValue};
pub use scan::Inspector;

use serde::{Deserialize, Serialize};

/// What a finding is about: personal data or a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Pii,
    Secret,
}

/// One detector hit inside a string. `start..end` are byte offsets into the scanned string and
/// always fall on char boundaries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Detector id, e.g. `pii.email`, `secret.aws_access_key`, `custom.acct`.
    pub detector: String,
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
    /// 0.0..=1.0; findings under the configured `min_confidence` are never returned.
    pub confidence: f32,
}

/// Errors from building an [`Inspector`]. Every variant but `Internal` is a mistake in the
/// configuration (the policy file); `Internal` means a built-in pattern is broken (a bug here).
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("inspect config: unknown detector id or prefix `{0}` (known: pii, secret, custom, pii.email, ...)")]
    UnknownDetector(String),
    #[error("inspect config: custom pattern name `{0}` must be 1-40 chars of [a-z0-9_]")]
    InvalidPatternName(String),
    #[error("inspect config: custom pattern `{0}` is defined twice")]
    DuplicatePattern(String),
    #[error("inspect config: custom pattern `{name}` does not compile: {source}")]
    PatternSyntax {
        name: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("inspect config: custom pattern `{0}` is longer than 1024 bytes")]
    PatternTooLong(String),
    #[error("inspect config: custom pattern `{0}` matches the empty string")]
    PatternMatchesEmpty(String),
    #[error("inspect config: replacement `{0}` must be 1-64 printable chars without quotes or backslashes")]
    InvalidReplacement(String),
    #[error("inspect config: {field} = {value} is outside 0.0..=1.0")]
    OutOfRange { field: &'static str, value: f32 },
    #[error("internal: built-in pattern failed to compile: {0}")]
    Internal(String),
}
