//! Canonical JSON text and SHA-256 hashes of it.
//!
//! Why this exists: audit records carry `args_hash`/`result_hash`, the inventory
//! pins each tool definition by hash, and loop detection compares calls by hash.
//! Those hashes must not change when a peer reorders keys or pretty-prints, so
//! they are taken over a canonical form:
//!
//! * object keys sorted recursively by their UTF-8 bytes (= Unicode code point
//!   order; RFC 8785 sorts by UTF-16 units, which differs only for keys mixing
//!   astral characters with U+E000..U+FFFF);
//! * no insignificant whitespace;
//! * strings escaped minimally: `"` `\` and control characters (`\n`, `\r`,
//!   `\t`, `\b`, `\f`, else `\u00XX`); everything else as raw UTF-8;
//! * integers as plain decimal; a float with no fractional part and magnitude
//!   below 2^53 as an integer (`1.0` -> `1`, `-0.0` -> `0`); other floats in
//!   serde_json's shortest round-trip form (`1.5`, `1e+300`, `2.5e-8`).

use serde_json::{Number, Value};
use sha2::{Digest, Sha256};

/// The canonical JSON text of `v`.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

/// Append the canonical JSON text of `v` to `out`.
pub fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(val, out);
            }
            out.push('}');
        }
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256_hex(canonical_json(v))`.
pub fn canonical_hash(v: &Value) -> String {
    sha256_hex(canonical_json(v).as_bytes())
}

fn write_number(n: &Number, out: &mut String) {
    use std::fmt::Write;
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(f) = n.as_f64() {
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
        if f.is_finite() && f.fract() == 0.0 && f.abs() < EXACT {
            // In range and integral: the cast is exact.
            let _ = write!(out, "{}", f as i64);
        } else {
            let _ = write!(out, "{n}");
        }
    } else {
        let _ = write!(out, "{n}");
    }
}

fn write_string(s: &str, out: &mut String) {
    use std::fmt::Write;
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc: Option<&str> = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{08}' => Some("\\b"),
            '\u{0c}' => Some("\\f"),
            c if (c as u32) < 0x20 => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_recursively_without_whitespace() {
        let v = json!({"b": 1, "a": {"z": [3, {"y": 1, "x": 2}], "c": null}, "A": true});
        assert_eq!(canonical_json(&v), r#"{"A":true,"a":{"c":null,"z":[3,{"x":2,"y":1}]},"b":1}"#);
    }

    #[test]
    fn key_order_and_formatting_do_not_change_hash() {
        let a: Value = serde_json::from_str(r#"{"name":"t","inputSchema":{"type":"object","properties":{"p":{"type":"string"}}}}"#).unwrap();
        let b: Value = serde_json::from_str(
            "{ \"inputSchema\" : { \"properties\" : { \"p\" : { \"type\" : \"string\" } },\n \"type\":\"object\" }, \"name\" : \"t\" }",
        )
        .unwrap();
        assert_eq!(canonical_hash(&a), canonical_hash(&b));
        let c = json!({"name": "t2"});
        assert_ne!(canonical_hash(&a), canonical_hash(&c));
    }

    #[test]
    fn numbers_are_deterministic() {
        assert_eq!(canonical_json(&json!([1, -1, 0, 1.0, -0.0, 1.5, 1e300, 18446744073709551615u64])),
            "[1,-1,0,1,0,1.5,1e+300,18446744073709551615]");
        // At and beyond 2^53 floats keep their float form; small ones too.
        let big = json!([9007199254740992.0f64, 1e16f64, 2.5e-8f64, -3.0f64, 9007199254740991.0f64]);
        assert_eq!(canonical_json(&big), "[9007199254740992.0,1e+16,2.5e-8,-3,9007199254740991]");
        // Integer-valued float and integer hash the same.
        assert_eq!(canonical_hash(&json!({"n": 2.0})), canonical_hash(&json!({"n": 2})));
    }

    #[test]
    fn strings_escaped_minimally() {
        let v = json!({"k\"": "a\\b\n\t\u{1}é😀/"});
        assert_eq!(canonical_json(&v), "{\"k\\\"\":\"a\\\\b\\n\\t\\u0001é😀/\"}");
        // Canonical output is itself valid JSON that parses back to the same value.
        let back: Value = serde_json::from_str(&canonical_json(&v)).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(canonical_hash(&json!({})), sha256_hex(b"{}"));
    }
}
