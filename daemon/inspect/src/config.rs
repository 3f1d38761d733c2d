//! The inspection part of the policy: which detectors run, what happens when they fire, and the
//! operator's own patterns. Plain serde data with `deny_unknown_fields` so the policy file can embed
//! it as a table and typos are rejected; [`crate::Inspector::new`] validates the ids and compiles.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Kind;

/// What the proxy does with a finding. Ordered: `Audit < Redact < Block`, so the strongest action
/// among several findings is their `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Detect and audit (detector id, count, salted hash); forward the message unchanged.
    Audit,
    /// Replace the span with `<TYPE>` and forward.
    Redact,
    /// Refuse the whole message. [`crate::Inspector::redact_json`] still redacts these spans so
    /// that whatever is logged or echoed is clean.
    Block,
}

/// Detector selection and actions.
///
/// Ids and prefixes accepted in `enabled`, `disabled` and `actions`: `*`, `pii`, `secret`,
/// `custom`, a full id from [`crate::BUILTIN_DETECTORS`] (`pii.email`, `secret.jwt`, ...) or
/// `custom.<name>` of a pattern in `custom`. Unknown ones are a config error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InspectConfig {
    /// Detectors that run. Default: `["pii", "secret", "custom"]` (everything).
    pub enabled: Vec<String>,
    /// Detectors switched off even when `enabled` selects them.
    pub disabled: Vec<String>,
    /// Findings below this confidence are dropped. Default 0.5.
    pub min_confidence: f32,
    /// Action for detectors not named in `actions`. Default `redact`.
    pub default_action: Action,
    /// Per-detector (or per-prefix) action; the most specific key wins.
    pub actions: BTreeMap<String, Action>,
    /// Operator-supplied patterns, e.g. `{ name = "acct", pattern = "ACCT-\\d{6,10}" }`.
    pub custom: Vec<CustomPattern>,
    /// Decode base64-looking tokens (16..=4096 chars) one level and run the secret detectors on
    /// the decoded text; a hit redacts the encoded token (Kubernetes `Secret.data`). Default true.
    pub decode_base64: bool,
    /// Salt prepended to values before hashing them for the redaction report. The daemon
    /// hashes with its per-host secret key (HMAC-SHA256) regardless; this only matters for
    /// offline use (`mcpwatch inspect`), where a plain sha256 of a 9-digit SSN can be
    /// brute-forced.
    pub hash_salt: Option<String>,
}

impl Default for InspectConfig {
    fn default() -> Self {
        InspectConfig {
            enabled: vec!["pii".into(), "secret".into(), "custom".into()],
            disabled: Vec::new(),
            min_confidence: 0.5,
            default_action: Action::Redact,
            actions: BTreeMap::new(),
            custom: Vec::new(),
            decode_base64: true,
            hash_salt: None,
        }
    }
}

/// One operator pattern. Detector id is `custom.<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    /// `[a-z0-9_]{1,40}`.
    pub name: String,
    /// Rust `regex` syntax, at most 1024 bytes, must not match the empty string.
    pub pattern: String,
    /// Default `pii`.
    #[serde(default = "default_kind")]
    pub kind: Kind,
    /// Default `<NAME>` (the name upper-cased).
    #[serde(default)]
    pub replacement: Option<String>,
    /// Default 0.9.
    #[serde(default = "default_custom_confidence")]
    pub confidence: f32,
}

fn default_kind() -> Kind {
    Kind::Pii
}

fn default_custom_confidence() -> f32 {
    0.9
}

impl InspectConfig {
    /// Resolve the action for a detector id: exact key, then `custom.`/`pii.`/`secret.` prefix
    /// keys (`pii`, `secret`, `custom`), then `*`, then `default_action`.
    pub fn action_for(&self, id: &str) -> Action {
        if let Some(a) = self.actions.get(id) {
            return *a;
        }
        if let Some((prefix, _)) = id.split_once('.')
            && let Some(a) = self.actions.get(prefix) {
                return *a;
            }
        self.actions.get("*").copied().unwrap_or(self.default_action)
    }
}

/// Does a selector (`*`, `pii`, `pii.email`, ...) select detector `id`?
pub(crate) fn selects(selector: &str, id: &str) -> bool {
    selector == "*"
        || selector == id
        || id.strip_prefix(selector).is_some_and(|rest| rest.starts_with('.'))
}
