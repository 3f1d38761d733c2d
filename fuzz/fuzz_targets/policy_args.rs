//! Fuzz target: policy argument conditions (`mcpwatch_policy`), evaluated on arbitrary
//! tool arguments against a policy written the way docs/policy.md recommends for a
//! filesystem root.
//!
//! Input: JSON arguments when the bytes parse as JSON, else the bytes (lossy UTF-8) as
//! `{"path": ...}`. Properties:
//! - no argument value (any shape, depth, number, escape) panics the evaluator;
//! - traversal: a `read_file` whose `path` string lexically resolves outside
//!   `/srv/project` is blocked (rules: `not_matches = '^/srv/project/'` and a `..`
//!   segment rule). Checked against an independent reference lexical normaliser, so it
//!   holds for conditions on normalised paths (the default) and on `form = "raw"` alike;
//! - `pointer = ""` means "any argument value at any depth" (JSON in a string
//!   included, decoded): a slash-free string value containing the watched word blocks,
//!   and arguments where no value contains it are forwarded.
//!
//! The normaliser itself (`mcpwatch_policy::normalize_path`) has its own target,
//! `path_normalize`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mcpwatch_policy::{Call, Effect, Policy, Subject, Target};
use serde_json::{Value, json};

const POLICY: &str = r#"
version = 1
mode = "enforce"
shadow = "allow"
default = "allow"

[[rule]]
id = "inside-root"
action = "deny"
tools = ["read_file"]
[[rule.when]]
pointer = "/path"
not_matches = '^/srv/project/'

[[rule]]
id = "no-dotdot"
action = "deny"
tools = ["read_file"]
[[rule.when]]
pointer = "/path"
matches = '(^|/)\.\.(/|$)'

[[rule]]
id = "no-secret-anywhere"
action = "deny"
tools = ["fetch"]
[[rule.when]]
pointer = ""
matches = 'SECRET'
"#;

const ROOT: &str = "/srv/project";
const WORD: &str = "SECRET";

fn policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| mcpwatch_policy::parse(POLICY, "fuzz.toml").unwrap_or_else(|e| panic!("{}", e.render())))
}

fn decide(tool: &str, args: &Value) -> Effect {
    let target = Target { endpoint: "http://127.0.0.1:8080/mcp", host: "127.0.0.1", port: 8080, path: "/mcp" };
    let call = Call { method: "tools/call", name: Some(tool), arguments: Some(args) };
    policy().evaluate(&Subject::default(), &target, &call).effective
}

fuzz_target!(|data: &[u8]| {
    let args = match serde_json::from_slice::<Value>(data) {
        Ok(v) => v,
        Err(_) => json!({ "path": String::from_utf8_lossy(data) }),
    };
    // Any method and name: no panic.
    if let Some(s) = args.as_str() {
        let target = Target { endpoint: s, host: s, port: 0, path: s };
        let call = Call { method: s, name: Some(s), arguments: Some(&args) };
        let _ = policy().evaluate(&Subject::default(), &target, &call);
    }

    let read = decide("read_file", &args);
    if let Some(path) = args.get("path").and_then(Value::as_str)
        && !inside(&normalise(path))
    {
        assert_eq!(read, Effect::Block, "read_file {path:?} resolves to {:?}, outside {ROOT}", normalise(path));
    }

    let fetch = decide("fetch", &args);
    let mut leaves = Vec::new();
    leaf_texts(&args, &mut leaves);
    if leaves.iter().all(|t| !t.contains(WORD)) {
        assert_eq!(fetch, Effect::Forward, "no value of {args} contains {WORD}, yet {fetch:?}");
    }
    if leaves.iter().any(|t| t.contains(WORD) && !t.contains('/')) {
        assert_eq!(fetch, Effect::Block, "a value of {args} contains {WORD}, yet {fetch:?}");
    }
});

/// Every value inside `v` as the documented condition sees it: strings as they are,
/// other scalars as JSON text; arrays and objects contribute their values; a string that
/// is a JSON array or object also contributes the values inside it, three strings deep.
fn leaf_texts(v: &Value, out: &mut Vec<String>) {
    leaf_texts_within(v, out, 3);
}

fn leaf_texts_within(v: &Value, out: &mut Vec<String>, decode: usize) {
    match v {
        Value::String(s) => {
            out.push(s.clone());
            let t = s.trim();
            if decode > 0
                && (t.starts_with('[') || t.starts_with('{'))
                && let Ok(inner @ (Value::Array(_) | Value::Object(_))) = serde_json::from_str::<Value>(t)
            {
                leaf_texts_within(&inner, out, decode - 1);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| leaf_texts_within(x, out, decode)),
        Value::Object(o) => o.values().for_each(|x| leaf_texts_within(x, out, decode)),
        other => out.push(other.to_string()),
    }
}

/// Reference lexical normalisation, as the kernel resolves a path without symlinks:
/// empty and `.` segments dropped, `..` pops (and stops at `/`). Relative paths keep a
/// leading `..`.
fn normalise(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => match out.last() {
                Some(&last) if last != ".." => {
                    out.pop();
                }
                _ if absolute => {}
                _ => out.push(".."),
            },
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if absolute { format!("/{joined}") } else { joined }
}

fn inside(normal: &str) -> bool {
    normal == ROOT || normal.strip_prefix(ROOT).is_some_and(|rest| rest.starts_with('/'))
}
