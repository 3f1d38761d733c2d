//! Binding a human approval to one exact call.
//!
//! An approval must not carry over to a call with different arguments (TOCTOU: approve
//! 25 EUR, get 25 000 EUR), to another tool, server or agent. The key is the sha256 of a
//! canonical JSON encoding of all four, so key order and whitespace in the client's
//! message do not matter but every value does.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Version tag inside the hashed text: changing the encoding changes every key.
const APPROVAL_KEY_TAG: &str = "mcpwatch-approval/1";

/// Canonical JSON: object keys sorted (by code point), no whitespace, strings and
/// numbers as serde_json writes them. Equal JSON values give equal text.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, out),
        // Scalars: serde_json's own text is already canonical for a given value.
        other => out.push_str(&other.to_string()),
    }
}

fn write_string(s: &str, out: &mut String) {
    // Serializing a &str cannot fail; the fallback keeps this panic-free regardless.
    match serde_json::to_string(s) {
        Ok(t) => out.push_str(&t),
        Err(_) => out.push_str("\"\""),
    }
}

/// sha256 (hex) of the canonical JSON of `v`.
pub fn canonical_hash(v: &Value) -> String {
    hex::encode(Sha256::digest(canonical_json(v).as_bytes()))
}

/// The key an approval is stored under: sha256 (hex) over the canonical JSON of
/// `[tag, agent, server, tool, arguments]`. `agent` is the agent name (or another
/// stable caller label), `server` the registry name or endpoint; absent arguments hash
/// as `null`.
pub fn approval_key(agent: &str, server: &str, tool: &str, args: Option<&Value>) -> String {
    let mut text = String::from("[");
    for part in [APPROVAL_KEY_TAG, agent, server, tool] {
        write_string(part, &mut text);
        text.push(',');
    }
    match args {
        Some(a) => write_canonical(a, &mut text),
        None => text.push_str("null"),
    }
    text.push(']');
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_recursively_and_drops_whitespace() {
        let a: Value =
            serde_json::from_str(r#"{ "b": 1, "a": {"y": [2, {"d": 0, "c": "x"}], "x": null} }"#)
                .unwrap();
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":null,"y":[2,{"c":"x","d":0}]},"b":1}"#
        );
        let b: Value =
            serde_json::from_str(r#"{"a":{"x":null,"y":[2,{"c":"x","d":0}]},"b":1}"#).unwrap();
        assert_eq!(canonical_hash(&a), canonical_hash(&b));
    }

    #[test]
    fn approval_key_binds_every_part() {
        let args = json!({"to_iban": "DE89370400440532013000", "amount_eur": 25});
        let reordered: Value =
            serde_json::from_str(r#"{"amount_eur":25,"to_iban":"DE89370400440532013000"}"#)
                .unwrap();
        let k = approval_key("finance-bot", "bank", "transfer_funds", Some(&args));
        assert_eq!(k.len(), 64);
        assert_eq!(
            k,
            approval_key("finance-bot", "bank", "transfer_funds", Some(&reordered))
        );
        let swapped = json!({"to_iban": "GB82WEST12345698765432", "amount_eur": 25000});
        let others = [
            approval_key("finance-bot", "bank", "transfer_funds", Some(&swapped)),
            approval_key("other-bot", "bank", "transfer_funds", Some(&args)),
            approval_key("finance-bot", "bank2", "transfer_funds", Some(&args)),
            approval_key("finance-bot", "bank", "transfer_funds2", Some(&args)),
            approval_key("finance-bot", "bank", "transfer_funds", None),
            // Parts cannot bleed into each other.
            approval_key("finance-bot\",\"bank", "", "transfer_funds", Some(&args)),
        ];
        for o in others {
            assert_ne!(k, o);
        }
    }
}
