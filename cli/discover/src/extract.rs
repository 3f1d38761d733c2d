//! Server entries out of a parsed client file, whatever the client's field names.
//!
//! Why one reader for every client: the clients agree on the idea (a map of name -> launch) and
//! differ in spelling (`command`/`cmd`, `env`/`envs`/`environment`, `url`/`serverUrl`/`httpUrl`/
//! `uri`, `command` as a string, an argv array or a `{path, args, env}` object). Reading the union
//! keeps the client table pure data. Values of env and headers stay in memory only for the secret
//! checks in `risk`; they never reach the [`crate::Server`] output.

use serde_json::{Map, Value};

use crate::clients::ClientDef;
use crate::model::Transport;

/// One entry as written, before risk checks and redaction.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawEntry {
    pub name: String,
    pub transport: Option<Transport>,
    pub command: Option<String>,
    pub args: Vec<String>,
    pub url: Option<String>,
    /// (name, value as written); `None` when the file names the variable only.
    pub env: Vec<(String, Option<String>)>,
    pub headers: Vec<(String, Option<String>)>,
    pub enabled: bool,
}

/// Most entries a single file may yield (a hostile file cannot make the scan allocate without end).
pub(crate) const MAX_ENTRIES_PER_FILE: usize = 10_000;

/// Every server entry under the client's server keys in `root`.
pub(crate) fn entries(client: &ClientDef, root: &Value) -> Vec<RawEntry> {
    let mut out = Vec::new();
    for path in client.server_keys {
        let mut v = root;
        let mut found = true;
        for k in *path {
            match v.get(*k) {
                Some(x) => v = x,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if found {
            collection(client, v, &mut out);
        }
    }
    out
}

/// A map of name -> entry, or a list of entries carrying `name` (Continue).
pub(crate) fn collection(client: &ClientDef, v: &Value, out: &mut Vec<RawEntry>) {
    match v {
        Value::Object(map) => {
            for (name, e) in map {
                if out.len() >= MAX_ENTRIES_PER_FILE {
                    return;
                }
                if let Value::Object(e) = e
                    && let Some(entry) = entry(client, name, e)
                {
                    out.push(entry);
                }
            }
        }
        Value::Array(items) => {
            for (i, e) in items.iter().enumerate() {
                if out.len() >= MAX_ENTRIES_PER_FILE {
                    return;
                }
                if let Value::Object(e) = e {
                    let name = e
                        .get("name")
                        .and_then(Value::as_str)
                        .map_or_else(|| format!("#{i}"), str::to_string);
                    if let Some(entry) = entry(client, &name, e) {
                        out.push(entry);
                    }
                }
            }
        }
        _ => {}
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(text).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// `{NAME: value}` maps, or lists of names.
fn named(v: Option<&Value>, out: &mut Vec<(String, Option<String>)>) {
    match v {
        Some(Value::Object(m)) => {
            for (k, v) in m {
                out.push((k.clone(), text(v)));
            }
        }
        Some(Value::Array(a)) => {
            for x in a {
                if let Some(s) = x.as_str() {
                    out.push((s.to_string(), None));
                }
            }
        }
        _ => {}
    }
}

fn transport_of(t: &str) -> Option<Transport> {
    match t.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
        "stdio" | "local" => Some(Transport::Stdio),
        "http" | "streamablehttp" | "remote" => Some(Transport::Http),
        "sse" => Some(Transport::Sse),
        _ => None,
    }
}

fn entry(client: &ClientDef, name: &str, e: &Map<String, Value>) -> Option<RawEntry> {
    let mut r = RawEntry {
        name: name.to_string(),
        enabled: true,
        ..RawEntry::default()
    };
    // Types that are not external MCP servers (goose's built-in extensions).
    let declared = e.get("type").and_then(Value::as_str);
    if let Some(t) = declared
        && matches!(t, "builtin" | "platform" | "frontend" | "inline_python")
    {
        return None;
    }
    r.transport = declared.and_then(transport_of);

    match e.get("command").or_else(|| e.get("cmd")) {
        Some(Value::String(c)) => r.command = Some(c.clone()),
        // opencode: the whole argv as one array.
        Some(Value::Array(argv)) => {
            let mut it = argv.iter().filter_map(text);
            r.command = it.next();
            r.args.extend(it);
        }
        // Zed (older): `command: {path, args, env}`.
        Some(Value::Object(c)) => {
            r.command = c.get("path").and_then(text);
            r.args.extend(strings(c.get("args")));
            named(c.get("env"), &mut r.env);
        }
        _ => {}
    }
    r.args.extend(strings(e.get("args")));

    let mut url_key = None;
    for key in ["url", "serverUrl", "httpUrl", "uri"] {
        if let Some(u) = e.get(key).and_then(Value::as_str) {
            r.url = Some(u.to_string());
            url_key = Some(key);
            break;
        }
    }

    for key in ["env", "envs", "environment", "env_vars", "env_keys"] {
        named(e.get(key), &mut r.env);
    }
    for key in ["headers", "http_headers", "requestInit"] {
        if key == "requestInit" {
            named(e.get(key).and_then(|ri| ri.get("headers")), &mut r.headers);
        } else {
            named(e.get(key), &mut r.headers);
        }
    }
    // Codex: header name -> name of the env variable holding the value (names only).
    if let Some(Value::Object(m)) = e.get("env_http_headers") {
        for k in m.keys() {
            r.headers.push((k.clone(), None));
        }
    }
    if e.get("bearer_token_env_var")
        .and_then(Value::as_str)
        .is_some()
    {
        r.headers.push(("Authorization".into(), None));
    }

    if e.get("disabled").and_then(Value::as_bool) == Some(true)
        || e.get("enabled").and_then(Value::as_bool) == Some(false)
    {
        r.enabled = false;
    }

    if r.command.is_none() && r.url.is_none() {
        return None;
    }
    if r.transport.is_none() || (r.transport == Some(Transport::Stdio) && r.command.is_none()) {
        r.transport = Some(if r.command.is_some() && r.url.is_none() {
            Transport::Stdio
        } else if url_key == Some("httpUrl") {
            Transport::Http
        } else if r.command.is_some() {
            Transport::Stdio
        } else {
            client.bare_url
        });
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::client;

    fn one(client_id: &str, v: Value) -> Vec<RawEntry> {
        entries(client(client_id).expect("client"), &v)
    }

    #[test]
    fn shapes_of_each_family() {
        let e = one(
            "opencode",
            serde_json::json!({"mcp": {"fs": {"type": "local", "command": ["npx", "-y", "x"], "environment": {"A": "1"}}}}),
        );
        assert_eq!(e[0].command.as_deref(), Some("npx"));
        assert_eq!(e[0].args, ["-y", "x"]);
        assert_eq!(e[0].env[0].0, "A");
        assert_eq!(e[0].transport, Some(Transport::Stdio));

        let e = one(
            "gemini-cli",
            serde_json::json!({"mcpServers": {"a": {"url": "https://x/sse"}, "b": {"httpUrl": "https://x/mcp"}}}),
        );
        assert_eq!(e[0].transport, Some(Transport::Sse));
        assert_eq!(e[1].transport, Some(Transport::Http));

        let e = one(
            "goose",
            serde_json::json!({"extensions": {"dev": {"type": "builtin"}, "r": {"type": "streamable_http", "uri": "https://h/mcp"}}}),
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].url.as_deref(), Some("https://h/mcp"));

        let e = one(
            "zed",
            serde_json::json!({"context_servers": {"z": {"command": {"path": "node", "args": ["s.js"], "env": {"K": "v"}}}}}),
        );
        assert_eq!(
            (e[0].command.as_deref(), e[0].args.len(), e[0].env.len()),
            (Some("node"), 1, 1)
        );

        let e = one(
            "continue",
            serde_json::json!({"mcpServers": [{"name": "c", "command": "uvx", "args": ["p"]}]}),
        );
        assert_eq!(e[0].name, "c");
    }
}
