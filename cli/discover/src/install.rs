//! Rewriting client configurations so stdio servers launch through `mcpwatch wrap --`,
//! and back (`mcpwatch wrap --install` / `--uninstall`).
//!
//! Why text spans: a user's file carries comments, key order, formatting and keys
//! mcpwatch does not own; re-serialising a parsed value would lose them. So the file is
//! parsed once into a tree that remembers where every value sits, and only the text of
//! the `command` value and the start of the `args` array are edited. Install and
//! uninstall insert and remove the same exact bytes, so install + uninstall gives the
//! original file back byte for byte, and installing twice changes nothing the second
//! time (a wrapped entry is recognised).
//!
//! Shapes handled (JSON, JSONC, JSON5 files): `"command": "x", "args": [...]` (args
//! optional), `"cmd"` for `"command"`, and opencode's `"command": ["x", ...]`. TOML and
//! YAML files are reported as not editable and left alone. A file the lenient parser
//! cannot read is refused with its line:column and never touched.

use std::path::Path;

use serde_json::Value;

use crate::clients::{ClientDef, ProjectRecords};
use crate::parse::{self, Syntax};

/// What to do with each stdio entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Install,
    Uninstall,
}

/// Why a file was not edited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("cannot parse (line {line}:{column}): {message}; not touched")]
    Parse { line: usize, column: usize, message: String },
    #[error("{0} files are not edited by `mcpwatch wrap --install` yet; wrap their stdio servers by hand")]
    Unsupported(&'static str),
}

/// The result of planning one file: the new text (equal to the old when nothing changes)
/// and the names of the entries changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEdit {
    pub text: String,
    pub changed: Vec<String>,
}

/// Is this launch already `mcpwatch wrap -- ...`? (`command` and its `args`.)
pub fn is_wrapped(command: &str, args: &[String]) -> bool {
    is_mcpwatch(command) && args.first().is_some_and(|a| a == "wrap") && args.iter().any(|a| a == "--")
}

fn is_mcpwatch(command: &str) -> bool {
    command == "mcpwatch" || command.ends_with("/mcpwatch")
}

/// Plan the edit of one file's text. `wrapper` is the absolute path of `mcpwatch`.
pub fn edit(file_name: &str, text: &str, client: &ClientDef, wrapper: &str, dir: Direction) -> Result<FileEdit, EditError> {
    match Syntax::of(file_name) {
        Syntax::Toml => return Err(EditError::Unsupported("TOML")),
        Syntax::Yaml => return Err(EditError::Unsupported("YAML")),
        Syntax::Json => {}
    }
    // The scanner's own parser must accept the file: what it cannot read is not edited.
    if let Err(e) = parse::parse(text, Syntax::Json) {
        return Err(EditError::Parse { line: e.line.unwrap_or(0), column: e.column.unwrap_or(0), message: e.message });
    }
    let root = Tree::new(text).parse_document()?;
    let mut entries: Vec<(&str, &Node)> = Vec::new();
    for path in client.server_keys {
        if let Some(map) = root.at(path) {
            entries.extend(map.entries());
        }
    }
    if client.project_records == ProjectRecords::ClaudeProjects
        && let Some(Kind::Obj(projects)) = root.get("projects").map(|n| &n.kind)
    {
        for (_, project) in projects {
            if let Some(map) = project.get("mcpServers") {
                entries.extend(map.entries());
            }
        }
    }
    let mut splices: Vec<(usize, usize, String)> = Vec::new();
    let mut changed = Vec::new();
    for (name, entry) in entries {
        let before = splices.len();
        match dir {
            Direction::Install => install_entry(text, entry, wrapper, &mut splices),
            Direction::Uninstall => uninstall_entry(text, entry, &mut splices),
        }
        if splices.len() > before {
            changed.push(name.to_string());
        }
    }
    splices.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut out = text.to_string();
    let mut floor = usize::MAX;
    for (start, end, with) in splices {
        if end > floor {
            continue; // overlapping edits cannot happen for well-formed entries; never corrupt
        }
        out.replace_range(start..end, &with);
        floor = start;
    }
    Ok(FileEdit { text: out, changed })
}

fn json_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// The `command` (or `cmd`) node of an entry.
fn command_of(entry: &Node) -> Option<&Node> {
    entry.get("command").or_else(|| entry.get("cmd"))
}

fn install_entry(text: &str, entry: &Node, wrapper: &str, out: &mut Vec<(usize, usize, String)>) {
    let Some(cmd) = command_of(entry) else { return };
    match &cmd.kind {
        Kind::Str(command) => {
            let args = entry.get("args");
            let arg_values: Vec<String> = match args.map(|a| &a.kind) {
                Some(Kind::Arr(items)) => items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
                None => Vec::new(),
                Some(_) => return, // an args value that is not a list: not ours to guess
            };
            if is_wrapped(command, &arg_values) {
                return;
            }
            let cmd_text = &text[cmd.start..cmd.end];
            out.push((cmd.start, cmd.end, json_str(wrapper)));
            match args {
                Some(a @ Node { kind: Kind::Arr(items), .. }) => {
                    let sep = if items.is_empty() { "" } else { ", " };
                    out.push((a.start + 1, a.start + 1, format!("\"wrap\", \"--\", {cmd_text}{sep}")));
                }
                // Compact, unlike the insertion into an existing list, so uninstall can tell
                // an `args` it added from one the user wrote.
                _ => out.push((cmd.end, cmd.end, format!(", \"args\": [\"wrap\",\"--\",{cmd_text}]"))),
            }
        }
        Kind::Arr(items) => {
            let words: Vec<String> = items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect();
            if words.is_empty() || words.len() != items.len() || words.first().is_some_and(|c| is_wrapped(c, &words[1..])) {
                return;
            }
            out.push((cmd.start + 1, cmd.start + 1, format!("{}, \"wrap\", \"--\", ", json_str(wrapper))));
        }
        _ => {}
    }
}

fn uninstall_entry(text: &str, entry: &Node, out: &mut Vec<(usize, usize, String)>) {
    let Some(cmd) = command_of(entry) else { return };
    match &cmd.kind {
        Kind::Str(command) => {
            let Some(args @ Node { kind: Kind::Arr(items), .. }) = entry.get("args") else { return };
            let words: Vec<String> = items.iter().map(|i| i.as_str().unwrap_or_default().to_string()).collect();
            if !is_wrapped(command, &words) {
                return;
            }
            let Some(dash) = words.iter().position(|w| w == "--") else { return };
            let Some(orig) = items.get(dash + 1) else { return };
            let orig_text = &text[orig.start..orig.end];
            out.push((cmd.start, cmd.end, orig_text.to_string()));
            // The exact bytes install added, when they are still there.
            let added_key = format!(", \"args\": [\"wrap\",\"--\",{orig_text}]");
            if dash == 1 && items.len() == 3 && text[cmd.end..].starts_with(&added_key) {
                out.push((cmd.end, cmd.end + added_key.len(), String::new()));
                return;
            }
            let sep = if items.len() > dash + 2 { ", " } else { "" };
            let prefix = format!("\"wrap\", \"--\", {orig_text}{sep}");
            if dash == 1 && text[args.start + 1..].starts_with(&prefix) {
                out.push((args.start + 1, args.start + 1 + prefix.len(), String::new()));
            } else {
                // Edited by hand since: drop the elements up to the original command.
                let end = items.get(dash + 2).map_or(orig.end, |n| n.start);
                out.push((args.start + 1, end, String::new()));
            }
        }
        Kind::Arr(items) => {
            let words: Vec<String> = items.iter().map(|i| i.as_str().unwrap_or_default().to_string()).collect();
            if words.is_empty() || !is_wrapped(&words[0], &words[1..]) {
                return;
            }
            let Some(dash) = words.iter().position(|w| w == "--") else { return };
            let Some(orig) = items.get(dash + 1) else { return };
            let wrapper_text = &text[items[0].start..items[0].end];
            let prefix = format!("{wrapper_text}, \"wrap\", \"--\", ");
            if dash == 2 && text[cmd.start + 1..].starts_with(&prefix) {
                out.push((cmd.start + 1, cmd.start + 1 + prefix.len(), String::new()));
            } else {
                out.push((cmd.start + 1, orig.start, String::new()));
            }
        }
        _ => {}
    }
}

/// A value and where its text is (`start..end`, byte offsets).
#[derive(Debug)]
struct Node {
    start: usize,
    end: usize,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Obj(Vec<(String, Node)>),
    Arr(Vec<Node>),
    Str(String),
    Other,
}

impl Node {
    fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Obj(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn at(&self, path: &[&str]) -> Option<&Node> {
        path.iter().try_fold(self, |n, k| n.get(k))
    }

    fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Server entries of a server map (or list): name and object.
    fn entries(&self) -> Vec<(&str, &Node)> {
        match &self.kind {
            Kind::Obj(members) => members.iter().filter(|(_, v)| matches!(v.kind, Kind::Obj(_))).map(|(k, v)| (k.as_str(), v)).collect(),
            Kind::Arr(items) => items
                .iter()
                .filter(|v| matches!(v.kind, Kind::Obj(_)))
                .map(|v| (v.get("name").and_then(Node::as_str).unwrap_or("(unnamed)"), v))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Deepest nesting accepted (the lenient parser checked it already).
const MAX_DEPTH: usize = 128;

/// A span-keeping reader of JSON5-ish text (comments, trailing commas, single quotes,
/// unquoted keys).
struct Tree<'a> {
    b: &'a [u8],
    text: &'a str,
    i: usize,
}

impl<'a> Tree<'a> {
    fn new(text: &'a str) -> Tree<'a> {
        let i = if text.starts_with('\u{feff}') { 3 } else { 0 };
        Tree { b: text.as_bytes(), text, i }
    }

    fn fail(&self, message: &str) -> EditError {
        let before = &self.text[..self.i.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        EditError::Parse { line, column, message: message.to_string() }
    }

    fn parse_document(mut self) -> Result<Node, EditError> {
        self.skip_ws();
        let n = self.value(0)?;
        self.skip_ws();
        if self.i < self.b.len() {
            return Err(self.fail("text after the document"));
        }
        Ok(n)
    }

    fn skip_ws(&mut self) {
        while self.i < self.b.len() {
            match self.b[self.i] {
                b' ' | b'\t' | b'\n' | b'\r' => self.i += 1,
                b'/' if self.b.get(self.i + 1) == Some(&b'/') => {
                    while self.i < self.b.len() && self.b[self.i] != b'\n' {
                        self.i += 1;
                    }
                }
                b'/' if self.b.get(self.i + 1) == Some(&b'*') => {
                    self.i += 2;
                    while self.i < self.b.len() && !(self.b[self.i] == b'*' && self.b.get(self.i + 1) == Some(&b'/')) {
                        self.i += 1;
                    }
                    self.i = (self.i + 2).min(self.b.len());
                }
                _ if self.text[self.i..].starts_with('\u{a0}') || self.text[self.i..].starts_with('\u{feff}') => {
                    self.i += self.text[self.i..].chars().next().map_or(1, char::len_utf8);
                }
                _ => break,
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, EditError> {
        if depth > MAX_DEPTH {
            return Err(self.fail("nested too deep"));
        }
        let start = self.i;
        let kind = match self.b.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                loop {
                    self.skip_ws();
                    match self.b.get(self.i) {
                        Some(b'}') => {
                            self.i += 1;
                            break;
                        }
                        None => return Err(self.fail("unterminated object")),
                        _ => {}
                    }
                    let key = match self.b[self.i] {
                        b'"' | b'\'' => self.string()?,
                        _ => self.ident()?,
                    };
                    self.skip_ws();
                    if self.b.get(self.i) != Some(&b':') {
                        return Err(self.fail("expected `:`"));
                    }
                    self.i += 1;
                    self.skip_ws();
                    let v = self.value(depth + 1)?;
                    members.push((key, v));
                    self.skip_ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {}
                        _ => return Err(self.fail("expected `,` or `}`")),
                    }
                }
                Kind::Obj(members)
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    match self.b.get(self.i) {
                        Some(b']') => {
                            self.i += 1;
                            break;
                        }
                        None => return Err(self.fail("unterminated array")),
                        _ => {}
                    }
                    items.push(self.value(depth + 1)?);
                    self.skip_ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {}
                        _ => return Err(self.fail("expected `,` or `]`")),
                    }
                }
                Kind::Arr(items)
            }
            Some(b'"' | b'\'') => Kind::Str(self.string()?),
            Some(_) => {
                while self.i < self.b.len() && !matches!(self.b[self.i], b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r' | b'/') {
                    self.i += 1;
                }
                if self.i == start {
                    return Err(self.fail("expected a value"));
                }
                Kind::Other
            }
            None => return Err(self.fail("expected a value")),
        };
        Ok(Node { start, end: self.i, kind })
    }

    fn ident(&mut self) -> Result<String, EditError> {
        let start = self.i;
        while self.i < self.b.len() && (self.b[self.i].is_ascii_alphanumeric() || matches!(self.b[self.i], b'_' | b'$' | b'-') || self.b[self.i] >= 0x80) {
            self.i += 1;
        }
        if self.i == start {
            return Err(self.fail("expected a key"));
        }
        Ok(self.text[start..self.i].to_string())
    }

    /// A quoted string (the opening quote at `i`), decoded.
    fn string(&mut self) -> Result<String, EditError> {
        let quote = self.b[self.i];
        self.i += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.text[self.i..].chars().next() else { return Err(self.fail("unterminated string")) };
            self.i += c.len_utf8();
            match c {
                c if c as u32 == quote as u32 => return Ok(out),
                '\\' => {
                    let Some(e) = self.text[self.i..].chars().next() else { return Err(self.fail("unterminated string")) };
                    self.i += e.len_utf8();
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        '0' => out.push('\0'),
                        'u' => {
                            let hex = self.text.get(self.i..self.i + 4).ok_or_else(|| self.fail("bad \\u escape"))?;
                            let v = u32::from_str_radix(hex, 16).map_err(|_| self.fail("bad \\u escape"))?;
                            self.i += 4;
                            out.push(char::from_u32(v).unwrap_or('\u{fffd}'));
                        }
                        '\n' => {}
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
    }
}

/// Where a file's backup goes: next to it, `<name>.mcpwatch-backup`.
pub fn backup_path(file: &Path) -> std::path::PathBuf {
    let mut name = file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".mcpwatch-backup");
    file.with_file_name(name)
}

/// A unified diff of `old` → `new` (one hunk spanning every change, 3 lines of context).
pub fn unified_diff(path: &str, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let a: Vec<&str> = old.split_inclusive('\n').collect();
    let b: Vec<&str> = new.split_inclusive('\n').collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..].iter().rev().zip(b[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let ctx = 3;
    let start = prefix.saturating_sub(ctx);
    let a_end = (a.len() - suffix + ctx).min(a.len());
    let b_end = (b.len() - suffix + ctx).min(b.len());
    let mut out = format!("--- {path}\n+++ {path}\n@@ -{},{} +{},{} @@\n", start + 1, a_end - start, start + 1, b_end - start);
    let line = |out: &mut String, mark: char, l: &str| {
        out.push(mark);
        out.push_str(l);
        if !l.ends_with('\n') {
            out.push_str("\n\\ No newline at end of file\n");
        }
    };
    for l in &a[start..prefix] {
        line(&mut out, ' ', l);
    }
    for l in &a[prefix..a.len() - suffix] {
        line(&mut out, '-', l);
    }
    for l in &b[prefix..b.len() - suffix] {
        line(&mut out, '+', l);
    }
    for l in &a[a.len() - suffix..a_end] {
        line(&mut out, ' ', l);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::client;

    const W: &str = "/usr/bin/mcpwatch";

    fn install(text: &str, id: &str) -> String {
        edit("mcp.json", text, client(id).unwrap(), W, Direction::Install).unwrap().text
    }

    fn uninstall(text: &str, id: &str) -> String {
        edit("mcp.json", text, client(id).unwrap(), W, Direction::Uninstall).unwrap().text
    }

    #[test]
    fn installs_uninstalls_and_keeps_everything_else() {
        let src = "{\n  // my servers\n  \"mcpServers\": {\n    \"fs\": { \"command\": \"npx\", /* pinned? */ \"args\": [ \"-y\", \"pkg@1\" ], \"env\": {\"A\": \"b\"} },\n    \"bare\": {\"command\": 'uvx'},\n    \"none\": {\"command\": \"srv\", \"args\": []},\n    \"web\": {\"url\": \"https://x\"},\n  },\n}\n";
        let once = install(src, "cursor");
        assert!(once.contains(r#""command": "/usr/bin/mcpwatch", /* pinned? */ "args": ["wrap", "--", "npx",  "-y", "pkg@1" ]"#), "{once}");
        assert!(once.contains(r#"{"command": "/usr/bin/mcpwatch", "args": ["wrap","--",'uvx']}"#), "{once}");
        assert!(once.contains(r#"{"command": "/usr/bin/mcpwatch", "args": ["wrap", "--", "srv"]}"#), "{once}");
        assert!(once.contains("// my servers") && once.contains(r#""env": {"A": "b"}"#) && once.contains(r#"{"url": "https://x"}"#));
        assert_eq!(install(&once, "cursor"), once, "idempotent");
        assert_eq!(uninstall(&once, "cursor"), src, "byte-identical round trip");
        assert_eq!(uninstall(src, "cursor"), src, "nothing to undo");
        let parsed = crate::parse::parse(&once, Syntax::Json).unwrap();
        assert_eq!(parsed["mcpServers"]["fs"]["args"][2], "npx");
    }

    #[test]
    fn command_lists_and_claude_projects() {
        let oc = r#"{"mcp": {"l": {"type": "local", "command": ["bun", "x", "pkg@2"]}}}"#;
        let once = install(oc, "opencode");
        assert!(once.contains(r#"["/usr/bin/mcpwatch", "wrap", "--", "bun", "x", "pkg@2"]"#), "{once}");
        assert_eq!(install(&once, "opencode"), once);
        assert_eq!(uninstall(&once, "opencode"), oc);
        let cc = r#"{"projects": {"/p": {"mcpServers": {"s": {"command": "node", "args": ["s.js"]}}}}}"#;
        let once = install(cc, "claude-code");
        assert!(once.contains(r#""args": ["wrap", "--", "node", "s.js"]"#), "{once}");
        assert_eq!(uninstall(&once, "claude-code"), cc);
    }

    #[test]
    fn hand_edited_wraps_are_still_undone() {
        let w = r#"{"mcpServers": {"s": {"command": "mcpwatch", "args": ["wrap","--","node","s.js"]}}}"#;
        let out = uninstall(w, "cursor");
        let v = crate::parse::parse(&out, Syntax::Json).unwrap();
        assert_eq!(v["mcpServers"]["s"]["command"], "node");
        assert_eq!(v["mcpServers"]["s"]["args"], serde_json::json!(["s.js"]));
    }

    #[test]
    fn refuses_what_it_cannot_parse_and_other_syntaxes() {
        let bad = "{\n  \"mcpServers\": {\n    \"s\": {\"command\": \"x\" \"args\": []}\n  }\n}\n";
        match edit("mcp.json", bad, client("cursor").unwrap(), W, Direction::Install) {
            Err(EditError::Parse { line, .. }) => assert_eq!(line, 3),
            other => panic!("{other:?}"),
        }
        assert!(matches!(edit("config.toml", "", client("codex").unwrap(), W, Direction::Install), Err(EditError::Unsupported("TOML"))));
        assert!(is_wrapped("/opt/mcpwatch", &["wrap".into(), "--".into(), "x".into()]));
        assert!(!is_wrapped("npx", &["wrap".into(), "--".into()]));
    }

    #[test]
    fn diff_shows_the_change() {
        let d = unified_diff("f", "a\nb\nc\n", "a\nB\nc\n");
        assert_eq!(d, "--- f\n+++ f\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n");
        assert_eq!(unified_diff("f", "x", "x"), "");
    }
}
