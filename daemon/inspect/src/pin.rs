//! Rug-pull pinning: a stable hash per tool definition, a readable diff when it changes, and the
//! [`PinSet`] state machine (trust on first use, then New / Changed / Removed events).
//!
//! The hash covers exactly the fields the model reads or that drive approval: `name`, `title`,
//! `description`, `inputSchema`, `outputSchema`, `annotations`. Everything else on the tool
//! object (`_meta`, `icons`, `execution`, vendor extensions) is volatile or display-only and
//! ignored, as is `_meta` inside `annotations`. Inside the covered fields nothing is dropped:
//! a schema property called `_meta` is a real parameter.
//!
//! Canonical JSON (in the spirit of RFC 8785): parsed values, object keys sorted by their
//! NFC-normalised UTF-8 bytes, strings NFC-normalised and re-escaped by serde_json, no
//! whitespace, integral floats written as integers (`1.0` == `1`). So key order, whitespace,
//! `\u0074`-style escapes and NFC/NFD differences never look like a change. The bytes hashed are
//! `mcpwatch.tool.v1\n` followed by the canonical JSON; the hash is lower-case hex sha256.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

use crate::text::{ceil_boundary, floor_boundary, push_pointer, safe_excerpt};

/// Fields of a tool definition covered by the hash.
pub const PINNED_FIELDS: [&str; 6] = ["name", "title", "description", "inputSchema", "outputSchema", "annotations"];
const DOMAIN: &[u8] = b"mcpwatch.tool.v1\n";
const MAX_DEPTH: usize = 128;
/// Changes listed by [`diff`] before it summarises the rest.
pub const MAX_CHANGES: usize = 50;
/// Characters of a before/after value shown in a [`Change`].
pub const MAX_CHANGE_CHARS: usize = 160;
/// Tools a [`PinSet`] tracks (pinned + pending each); more are reported as unpinnable `New`.
pub const MAX_TOOLS: usize = 4096;
/// Canonical definitions larger than this are pinned by hash only (no diff).
pub const MAX_STORED_DEF: usize = 64 * 1024;

/// The covered part of a tool definition, canonicalised (NFC strings, normalised numbers; key
/// order is applied when serialising).
pub fn projection(def: &Value) -> Value {
    let Some(obj) = def.as_object() else { return canonical_value(def, 0) };
    let mut out = Map::new();
    for f in PINNED_FIELDS {
        if let Some(v) = obj.get(f) {
            let mut v = canonical_value(v, 0);
            if f == "annotations"
                && let Some(a) = v.as_object_mut() {
                    a.remove("_meta");
                }
            out.insert(f.to_string(), v);
        }
    }
    Value::Object(out)
}

fn canonical_number(n: &Number) -> Value {
    if n.is_i64() || n.is_u64() {
        return Value::Number(n.clone());
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 => Value::Number(Number::from(f as i64)),
        _ => Value::Number(n.clone()),
    }
}

fn canonical_value(v: &Value, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::String("<depth limit>".into());
    }
    match v {
        Value::String(s) => Value::String(s.nfc().collect()),
        Value::Number(n) => canonical_number(n),
        Value::Array(a) => Value::Array(a.iter().map(|x| canonical_value(x, depth + 1)).collect()),
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                out.insert(k.nfc().collect(), canonical_value(x, depth + 1));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Serialise with sorted keys and no whitespace. Input should already be canonical values.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out, 0);
    out
}

fn write_canonical(v: &Value, out: &mut String, depth: usize) {
    if depth > MAX_DEPTH {
        out.push_str("null");
        return;
    }
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(x, out, depth + 1);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out, depth + 1);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn hash_projection(p: &Value) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(canonical_json(p).as_bytes());
    hex::encode(h.finalize())
}

/// Lower-case hex sha256 of the tool definition's canonical covered fields.
pub fn tool_hash(def: &Value) -> String {
    hash_projection(&projection(def))
}

/// One difference between two definitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// RFC 6901 pointer into the tool definition; "" for the summary entry.
    pub pointer: String,
    /// Bounded, terminal-safe rendering; `None` when the member was added.
    pub before: Option<String>,
    /// `None` when the member was removed.
    pub after: Option<String>,
}

/// Differences between the covered fields of two tool definitions, at most [`MAX_CHANGES`]
/// entries plus one summary entry (`pointer: ""`) counting the rest.
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    diff_projected(&projection(old), &projection(new))
}

fn diff_projected(a: &Value, b: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    let mut extra = 0usize;
    diff_rec(a, b, "", 0, &mut out, &mut extra);
    if extra > 0 {
        out.push(Change { pointer: String::new(), before: None, after: Some(format!("… {extra} more changes")) });
    }
    out
}

fn diff_rec(a: &Value, b: &Value, ptr: &str, depth: usize, out: &mut Vec<Change>, extra: &mut usize) {
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) if depth < MAX_DEPTH => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = push_pointer(ptr, k);
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => diff_rec(u, v, &p, depth + 1, out, extra),
                    (Some(u), None) => emit(out, extra, Change { pointer: p, before: Some(render(u)), after: None }),
                    (None, Some(v)) => emit(out, extra, Change { pointer: p, before: None, after: Some(render(v)) }),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if depth < MAX_DEPTH => {
            for i in 0..x.len().max(y.len()) {
                let p = format!("{ptr}/{i}");
                match (x.get(i), y.get(i)) {
                    (Some(u), Some(v)) => diff_rec(u, v, &p, depth + 1, out, extra),
                    (Some(u), None) => emit(out, extra, Change { pointer: p, before: Some(render(u)), after: None }),
                    (None, Some(v)) => emit(out, extra, Change { pointer: p, before: None, after: Some(render(v)) }),
                    (None, None) => {}
                }
            }
        }
        (Value::String(x), Value::String(y)) => {
            let (bx, by) = string_window(x, y);
            emit(out, extra, Change { pointer: ptr.to_string(), before: Some(bx), after: Some(by) });
        }
        _ => emit(out, extra, Change { pointer: ptr.to_string(), before: Some(render(a)), after: Some(render(b)) }),
    }
}

fn emit(out: &mut Vec<Change>, extra: &mut usize, c: Change) {
    if out.len() < MAX_CHANGES {
        out.push(c);
    } else {
        *extra += 1;
    }
}

fn render(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => canonical_json(other),
    };
    safe_excerpt(&s, MAX_CHANGE_CHARS)
}

/// For two long strings show the region around the first difference.
fn string_window(x: &str, y: &str) -> (String, String) {
    if x.chars().count() <= MAX_CHANGE_CHARS && y.chars().count() <= MAX_CHANGE_CHARS {
        return (safe_excerpt(x, MAX_CHANGE_CHARS), safe_excerpt(y, MAX_CHANGE_CHARS));
    }
    let prefix = x.bytes().zip(y.bytes()).take_while(|(a, b)| a == b).count();
    let cut = |s: &str| {
        let from = floor_boundary(s, prefix.saturating_sub(30));
        let to = ceil_boundary(s, from + MAX_CHANGE_CHARS * 4);
        let mut e = String::new();
        if from > 0 {
            e.push('…');
        }
        e.push_str(&safe_excerpt(&s[from..to], MAX_CHANGE_CHARS));
        e
    };
    (cut(x), cut(y))
}

/// Fields of an `initialize` result compared by [`server_changes`].
const SERVER_FIELDS: [&str; 4] = ["serverInfo", "instructions", "protocolVersion", "capabilities"];

/// Differences between two `InitializeResult`s of the same server (serverInfo name/version,
/// instructions, protocol version, capabilities): an info-level signal that the package behind
/// the server changed even when every tool hash is unchanged (postmark-mcp 1.0.15 -> 1.0.16).
pub fn server_changes(old: &Value, new: &Value) -> Vec<Change> {
    let pick = |v: &Value| {
        let mut m = Map::new();
        for f in SERVER_FIELDS {
            if let Some(x) = v.get(f) {
                m.insert(f.to_string(), canonical_value(x, 0));
            }
        }
        Value::Object(m)
    };
    diff_projected(&pick(old), &pick(new))
}

/// A pinned (or pending) definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pin {
    pub hash: String,
    /// Canonical covered fields, for diffs. `None` for registry pins (hash only) and for very
    /// large definitions.
    pub definition: Option<Value>,
}

impl Pin {
    fn of(def: &Value) -> Pin {
        let p = projection(def);
        let hash = hash_projection(&p);
        let keep = canonical_json(&p).len() <= MAX_STORED_DEF;
        Pin { hash, definition: keep.then_some(p) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PinEventKind {
    /// Tool not pinned before. `pinned: true` when trust-on-first-use pinned it (first
    /// `tools/list` of the server); otherwise it is pending until [`PinSet::accept`]: hide it and
    /// deny calls.
    New { pinned: bool, hash: String },
    /// Served definition differs from the pin; pending until accepted. Reported on every check
    /// while it differs.
    Changed { old_hash: String, new_hash: String, diff: Vec<Change> },
    /// A pinned tool is no longer listed (reported once; the pin is kept).
    Removed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinEvent {
    pub tool: String,
    #[serde(flatten)]
    pub kind: PinEventKind,
}

/// Pinned tool hashes of one server (keyed by tool name). Pure state: the daemon persists it
/// (serde) keyed by server identity, because rug pulls happen across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinSet {
    pins: BTreeMap<String, Pin>,
    pending: BTreeMap<String, Pin>,
    absent: BTreeSet<String>,
    /// Pin everything on the first check (trust on first use).
    tofu: bool,
    /// A check has happened (the first list was seen).
    initialized: bool,
}

impl Default for PinSet {
    fn default() -> Self {
        PinSet::new()
    }
}

impl PinSet {
    /// Empty set with trust on first use: the first `check` pins every tool it sees.
    pub fn new() -> PinSet {
        PinSet { pins: BTreeMap::new(), pending: BTreeMap::new(), absent: BTreeSet::new(), tofu: true, initialized: false }
    }

    /// Pins from the policy registry (tool name -> hash). No trust on first use: tools not in
    /// the registry are pending until accepted.
    pub fn from_registry<I, S, H>(pins: I) -> PinSet
    where
        I: IntoIterator<Item = (S, H)>,
        S: Into<String>,
        H: Into<String>,
    {
        let mut set = PinSet::new();
        set.tofu = false;
        set.initialized = true;
        for (name, hash) in pins.into_iter().take(MAX_TOOLS) {
            set.pins.insert(name.into(), Pin { hash: hash.into().to_ascii_lowercase(), definition: None });
        }
        set
    }

    /// Compare a `tools/list` result's `tools` array with the pins.
    pub fn check(&mut self, tools: &[Value]) -> Vec<PinEvent> {
        let mut events = Vec::new();
        let first = self.tofu && !self.initialized;
        self.initialized = true;
        let mut listed: BTreeSet<String> = BTreeSet::new();
        for def in tools {
            let Some(name) = def.get("name").and_then(Value::as_str) else { continue };
            let name: String = name.chars().take(256).collect();
            let new = Pin::of(def);
            listed.insert(name.clone());
            match self.pins.get(&name) {
                Some(pin) if pin.hash == new.hash => {
                    self.pending.remove(&name);
                    self.absent.remove(&name);
                }
                Some(pin) => {
                    let diff = match (&pin.definition, &new.definition) {
                        (Some(a), Some(b)) => diff_projected(a, b),
                        _ => Vec::new(),
                    };
                    events.push(PinEvent {
                        tool: name.clone(),
                        kind: PinEventKind::Changed { old_hash: pin.hash.clone(), new_hash: new.hash.clone(), diff },
                    });
                    self.absent.remove(&name);
                    self.set_pending(name, new);
                }
                None => {
                    let pin_now = first && self.pins.len() < MAX_TOOLS;
                    events.push(PinEvent { tool: name.clone(), kind: PinEventKind::New { pinned: pin_now, hash: new.hash.clone() } });
                    if pin_now {
                        self.pins.insert(name, new);
                    } else {
                        self.set_pending(name, new);
                    }
                }
            }
        }
        for name in self.pins.keys() {
            if !listed.contains(name) && !self.absent.contains(name) {
                events.push(PinEvent { tool: name.clone(), kind: PinEventKind::Removed });
            }
        }
        let gone: Vec<String> = self.pins.keys().filter(|n| !listed.contains(*n)).cloned().collect();
        self.absent.extend(gone);
        self.pending.retain(|n, _| listed.contains(n));
        events
    }

    fn set_pending(&mut self, name: String, pin: Pin) {
        if self.pending.len() < MAX_TOOLS || self.pending.contains_key(&name) {
            self.pending.insert(name, pin);
        }
    }

    /// Pin the pending (new or changed) definition of `tool`. Returns whether there was one.
    pub fn accept(&mut self, tool: &str) -> bool {
        match self.pending.remove(tool) {
            Some(pin) if self.pins.len() < MAX_TOOLS || self.pins.contains_key(tool) => {
                self.pins.insert(tool.to_string(), pin);
                true
            }
            Some(pin) => {
                self.pending.insert(tool.to_string(), pin);
                false
            }
            None => false,
        }
    }

    /// Accept every pending definition; returns how many.
    pub fn accept_all(&mut self) -> usize {
        let names: Vec<String> = self.pending.keys().cloned().collect();
        names.iter().filter(|n| self.accept(n)).count()
    }

    /// The served definition of `tool` is the pinned one (not new, not changed). Calls to tools
    /// that are not trusted should be denied.
    pub fn trusted(&self, tool: &str) -> bool {
        self.pins.contains_key(tool) && !self.pending.contains_key(tool)
    }

    pub fn pinned_hash(&self, tool: &str) -> Option<&str> {
        self.pins.get(tool).map(|p| p.hash.as_str())
    }

    /// Names waiting for `accept` (new after first sight, or changed).
    pub fn pending(&self) -> impl Iterator<Item = &str> {
        self.pending.keys().map(String::as_str)
    }

    /// (name, pinned hash) of every pin.
    pub fn pins(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pins.iter().map(|(n, p)| (n.as_str(), p.hash.as_str()))
    }
}

#[cfg(test)]
mod tests;
