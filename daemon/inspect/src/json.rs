//! Scanning and redacting whole JSON-RPC messages.
//!
//! Every string value and every object key is scanned; a string's parent key gives context
//! (`"password": "..."`). Only strings change: numbers, booleans and structure are never touched,
//! so `structuredContent` keeps validating against its `outputSchema`. Text that itself holds JSON
//! (tool results often carry a JSON document in `content[].text`) is redacted in place, which
//! keeps both the outer and the inner document valid; if an in-place edit would break the inner
//! document (a custom pattern spanning a quote), the inner document is parsed, redacted
//! structurally and re-serialised instead.
//!
//! What a lenient server reads is more than the text, though: the Python MCP SDK `json.loads` a
//! string argument whenever the parameter is not typed `str` (`pre_parse_json`), so
//! `"[\"\\u0041KIA…\"]"` reaches the tool as the list `["AKIA…"]`, its escapes resolved, and a
//! scan of the text never sees the key. [`Embedded::Decoded`] (the daemon's choice for what goes
//! to a server) also reads such a string as the value it decodes to, and when a finding there is
//! redacted, the string becomes the redacted value re-serialised, so the server decodes what
//! was redacted.
//!
//! The report never contains a raw value: detector ids, counts, pointers and salted sha256 hashes.

use std::collections::BTreeMap;

use mcpwatch_mcp::message::{embedded_json, may_embed_json, EMBEDDED_JSON_DEPTH};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::Action;
use crate::scan::Inspector;
use crate::text::{enter, enter_index, escape_pointer_token};
use crate::Finding;

/// Deeper JSON than this is not descended into (serde_json's parser stops at 128 anyway).
const MAX_DEPTH: usize = 256;

/// How a walk reads a string that itself holds a JSON array or object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedded {
    /// As text only: what a reader of the text sees (a result goes to an agent, which reads
    /// text). JSON in it is still scanned and redacted in place, as text.
    AsText,
    /// As text and also as the value it decodes to ([`EMBEDDED_JSON_DEPTH`] strings within strings
    /// deep): what a server that decodes such strings (the Python SDK's `pre_parse_json`)
    /// hands its tool. For what goes to a server: arguments, client answers.
    Decoded,
}

impl Embedded {
    fn budget(self) -> usize {
        match self {
            Embedded::AsText => 0,
            Embedded::Decoded => EMBEDDED_JSON_DEPTH,
        }
    }
}
/// Bound on the per-value entries of a [`RedactReport`]; counts stay exact.
pub const MAX_REPORTED_VALUES: usize = 256;

/// A finding located in a JSON document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonFinding {
    /// RFC 6901 pointer to the string value, or, when `in_key`, to the member whose key it is.
    pub pointer: String,
    /// The span is inside an object key rather than a value.
    pub in_key: bool,
    /// Offsets are into that string (value or key).
    pub finding: Finding,
}

/// One value seen by [`Inspector::redact_json`], identified by hash only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedactedValue {
    pub detector: String,
    pub pointer: String,
    /// Lower-case hex HMAC-SHA256 of `hash_salt || value` under the host key when the
    /// inspector has one ([`Inspector::with_hash_key`], always in the daemon), else
    /// sha256 of `hash_salt || value` (offline `mcpwatch inspect`).
    pub sha256: String,
    /// False when the detector's action is `audit` and the value was left in place.
    pub redacted: bool,
}

/// What [`Inspector::redact_json`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RedactReport {
    /// Spans replaced, per detector id.
    pub counts: BTreeMap<String, u64>,
    /// Spans found but left in place (action `audit`), per detector id.
    pub detected_only: BTreeMap<String, u64>,
    /// Per-value hashes, at most [`MAX_REPORTED_VALUES`].
    pub values: Vec<RedactedValue>,
    /// Values not listed in `values` because of the bound.
    pub values_omitted: u64,
    /// Strongest action among all findings; `None` when nothing was found.
    pub action: Option<Action>,
}

impl RedactReport {
    /// Nothing was found.
    pub fn is_empty(&self) -> bool {
        self.action.is_none()
    }

    /// Total spans replaced.
    pub fn redacted_total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Add `other`'s counts and values (two parts of one message inspected apart).
    pub fn merge(&mut self, other: RedactReport) {
        for (k, v) in other.counts {
            *self.counts.entry(k).or_default() += v;
        }
        for (k, v) in other.detected_only {
            *self.detected_only.entry(k).or_default() += v;
        }
        for v in other.values {
            self.add_value(v);
        }
        self.values_omitted += other.values_omitted;
        self.action = self.action.max(other.action);
    }

    fn add_value(&mut self, v: RedactedValue) {
        if self.values.len() < MAX_REPORTED_VALUES {
            self.values.push(v);
        } else {
            self.values_omitted += 1;
        }
    }
}

impl Inspector {
    /// Findings in every string value and object key of `v`.
    pub fn scan_json(&self, v: &Value) -> Vec<JsonFinding> {
        let mut out = Vec::new();
        let mut ptr = String::new();
        self.walk_scan(v, &mut ptr, None, 0, &mut out);
        out
    }

    fn walk_scan(&self, v: &Value, ptr: &mut String, key: Option<&str>, depth: usize, out: &mut Vec<JsonFinding>) {
        if depth > MAX_DEPTH {
            return;
        }
        match v {
            Value::String(s) => {
                for c in self.scan_with_key(s, key) {
                    out.push(JsonFinding { pointer: ptr.clone(), in_key: false, finding: self.finding(c) });
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = ptr.len();
                    ptr.push('/');
                    ptr.push_str(&i.to_string());
                    self.walk_scan(item, ptr, None, depth + 1, out);
                    ptr.truncate(len);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    let len = ptr.len();
                    ptr.push('/');
                    escape_pointer_token(k, ptr);
                    for c in self.scan_with_key(k, None) {
                        out.push(JsonFinding { pointer: ptr.clone(), in_key: true, finding: self.finding(c) });
                    }
                    self.walk_scan(item, ptr, Some(k), depth + 1, out);
                    ptr.truncate(len);
                }
            }
            _ => {}
        }
    }

    /// Replace every span whose detector action is `redact` or `block` with its `<TYPE>` token,
    /// in place. Audit-only findings are counted and hashed but left unchanged.
    pub fn redact_json(&self, v: &mut Value) -> RedactReport {
        self.redact_json_with(v, Embedded::AsText)
    }

    /// [`Inspector::redact_json`], reading strings that hold JSON as `embedded` says. With
    /// [`Embedded::Decoded`], a finding inside a decoded value is reported with the string's
    /// pointer continued into that value (`/paths/0` for the first element of the list the
    /// string `paths` holds), and a redaction there rewrites the string as the redacted value
    /// re-serialised (compact, members in key order).
    pub fn redact_json_with(&self, v: &mut Value, embedded: Embedded) -> RedactReport {
        let mut report = RedactReport::default();
        self.walk_redact(v, &mut String::new(), None, 0, embedded.budget(), &mut report);
        report
    }

    fn hash_value(&self, raw: &str) -> String {
        if let Some(key) = &self.hash_key {
            // The host key (daemon); `hash_salt`, if also set, is bound in too.
            let salt = self.hash_salt.as_deref().unwrap_or_default();
            return hex::encode(key.mac(&[salt.as_bytes(), raw.as_bytes()]));
        }
        let mut h = Sha256::new();
        if let Some(salt) = &self.hash_salt {
            h.update(salt.as_bytes());
        }
        h.update(raw.as_bytes());
        hex::encode(h.finalize())
    }

    /// Redact one string; returns the new text when anything was replaced. `seen`, when
    /// given, gets (detector id, hash) of every finding: the decoded pass over the same
    /// string must not count again what this pass counted.
    fn redact_string(&self, s: &str, key: Option<&str>, ptr: &str, report: &mut RedactReport, mut seen: Option<&mut Vec<(String, String)>>) -> Option<String> {
        let cands = self.scan_with_key(s, key);
        if cands.is_empty() {
            return None;
        }
        let mut local = RedactReport::default();
        let mut out = String::with_capacity(s.len());
        let mut last = 0;
        let mut replaced = false;
        for c in &cands {
            let id = self.det_id(c.det).to_string();
            let action = self.det_action(c.det);
            local.action = local.action.max(Some(action));
            let raw = s.get(c.start..c.end).unwrap_or("");
            let redact = action >= Action::Redact;
            let sha256 = self.hash_value(raw);
            if let Some(seen) = seen.as_deref_mut() {
                seen.push((id.clone(), sha256.clone()));
            }
            local.add_value(RedactedValue { detector: id.clone(), pointer: ptr.to_string(), sha256, redacted: redact });
            if redact {
                *local.counts.entry(id).or_default() += 1;
                out.push_str(s.get(last..c.start).unwrap_or(""));
                out.push_str(self.det_replacement(c.det));
                last = c.end;
                replaced = true;
            } else {
                *local.detected_only.entry(id).or_default() += 1;
            }
        }
        if !replaced {
            report.merge(local);
            return None;
        }
        out.push_str(s.get(last..).unwrap_or(""));
        if breaks_embedded_json(s, &out) {
            // Only an operator pattern spanning quotes or escapes can get here: never leak,
            // replace the whole value with the tokens instead.
            let mut tokens: Vec<&str> = Vec::new();
            for c in cands.iter().filter(|c| self.det_action(c.det) >= Action::Redact) {
                let t = self.det_replacement(c.det);
                if !tokens.contains(&t) {
                    tokens.push(t);
                }
            }
            out = tokens.join(" ");
        }
        report.merge(local);
        Some(out)
    }

    /// `decode`: how many more strings within strings to read as their decoded value.
    fn walk_redact(&self, v: &mut Value, ptr: &mut String, key: Option<&str>, depth: usize, decode: usize, report: &mut RedactReport) {
        if depth > MAX_DEPTH {
            return;
        }
        match v {
            Value::String(s) => {
                // One byte look at the trimmed start: ordinary strings cost nothing more.
                if decode > 0 && may_embed_json(s) {
                    self.redact_embedded(s, key, ptr, depth, decode, report);
                } else if let Some(new) = self.redact_string(s, key, ptr, report, None) {
                    *s = new;
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let back = enter_index(ptr, i);
                    self.walk_redact(item, ptr, None, depth + 1, decode, report);
                    ptr.truncate(back);
                }
            }
            Value::Object(map) => {
                // Keys first: only rebuild the map when a key itself must change.
                let mut new_keys: Vec<Option<String>> = Vec::with_capacity(map.len());
                let mut any = false;
                for k in map.keys() {
                    let back = enter(ptr, k);
                    let nk = self.redact_string(k, None, ptr, report, None);
                    ptr.truncate(back);
                    any |= nk.is_some();
                    new_keys.push(nk);
                }
                if any {
                    let old = std::mem::take(map);
                    // Unchanged keys keep their names; a redacted key that collides gets `#n`.
                    let reserved: std::collections::BTreeSet<String> = old
                        .keys()
                        .zip(&new_keys)
                        .filter(|(_, nk)| nk.is_none())
                        .map(|(k, _)| k.clone())
                        .collect();
                    let mut rebuilt = Map::new();
                    for ((k, mut item), nk) in old.into_iter().zip(new_keys) {
                        let back = enter(ptr, &k);
                        self.walk_redact(&mut item, ptr, Some(&k), depth + 1, decode, report);
                        ptr.truncate(back);
                        let name = match nk {
                            None => k,
                            Some(base) => {
                                let mut name = base.clone();
                                let mut n = 2;
                                while reserved.contains(&name) || rebuilt.contains_key(&name) {
                                    name = format!("{base}#{n}");
                                    n += 1;
                                }
                                name
                            }
                        };
                        rebuilt.insert(name, item);
                    }
                    *map = rebuilt;
                } else {
                    for (k, item) in map.iter_mut() {
                        let back = enter(ptr, k);
                        self.walk_redact(item, ptr, Some(k), depth + 1, decode, report);
                        ptr.truncate(back);
                    }
                }
            }
            _ => {}
        }
    }
}

impl Inspector {
    /// A string that may hold a JSON array or object: scanned as text first (in-place
    /// redaction, as for any string), then, if it decodes, as the decoded value. Findings
    /// only the decoded value shows (escaped spellings, keys giving context) are counted and,
    /// when redacted, the string is replaced by the redacted value re-serialised.
    fn redact_embedded(&self, s: &mut String, key: Option<&str>, ptr: &mut String, depth: usize, decode: usize, report: &mut RedactReport) {
        let mut seen: Vec<(String, String)> = Vec::new();
        if let Some(new) = self.redact_string(s, key, ptr, report, Some(&mut seen)) {
            *s = new;
        }
        let Some(mut doc) = embedded_json(s) else { return };
        let mut inner = RedactReport::default();
        let back = ptr.len();
        self.walk_redact(&mut doc, ptr, None, depth + 1, decode - 1, &mut inner);
        ptr.truncate(back);
        // What the text pass already found and left in place (audit) is in the decoded
        // value too: counted once. A span the text pass redacted is no longer there, so a
        // redacted finding here is always new.
        inner.values.retain(|v| {
            if v.redacted {
                return true;
            }
            let Some(i) = seen.iter().position(|(d, h)| *d == v.detector && *h == v.sha256) else { return true };
            seen.swap_remove(i);
            if let Some(n) = inner.detected_only.get_mut(&v.detector) {
                *n -= 1;
                if *n == 0 {
                    inner.detected_only.remove(&v.detector);
                }
            }
            false
        });
        if inner.redacted_total() > 0 {
            // Serialising a `Value` cannot fail (string keys only); were it to, nothing of
            // the original is forwarded.
            *s = serde_json::to_string(&doc).unwrap_or_default();
        }
        report.merge(inner);
    }
}

/// `original` is a JSON object/array document and `edited` no longer parses.
fn breaks_embedded_json(original: &str, edited: &str) -> bool {
    let first = original.trim_start().as_bytes().first().copied();
    if !matches!(first, Some(b'{' | b'[')) {
        return false;
    }
    serde_json::from_str::<serde::de::IgnoredAny>(original).is_ok()
        && serde_json::from_str::<serde::de::IgnoredAny>(edited).is_err()
}
