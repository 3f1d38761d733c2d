//! Lenient parsing of client files into one JSON value: JSON with comments and trailing commas
//! (read as JSON5), TOML and YAML, chosen by the file name.
//!
//! Why lenient: VS Code and Zed write JSON with comments and trailing commas, and users edit these
//! files by hand; a strict JSON parser would miss their servers. Why messages are rebuilt: parser
//! messages can quote the text around the error (toml's snippet, serde's "invalid type: string
//! ..."), and the text of a config file may be a token. The message kept here names the problem
//! and the position only.

use serde_json::Value;

/// The file's syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Syntax {
    /// JSON, JSONC, JSON5.
    Json,
    Toml,
    Yaml,
}

impl Syntax {
    pub(crate) fn of(file_name: &str) -> Syntax {
        let lower = file_name.to_ascii_lowercase();
        if lower.ends_with(".toml") {
            Syntax::Toml
        } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            Syntax::Yaml
        } else {
            Syntax::Json
        }
    }
}

/// A parse failure: 1-based position when the parser knew it, and a message without file text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// Parse `text` (already read, at most the size limit) as `syntax`.
pub(crate) fn parse(text: &str, syntax: Syntax) -> Result<Value, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match syntax {
        Syntax::Json => {
            // The JSON5 parser recurses per nesting level: a hostile `[[[[...` must not overflow
            // the stack. Real client files nest a handful of levels.
            if let Some(pos) = too_deep(text, MAX_NESTING) {
                let (line, column) = line_col(text, pos);
                return Err(ParseError {
                    line,
                    column,
                    message: format!("JSON5: nested deeper than {MAX_NESTING} levels"),
                });
            }
            json5_value(text)
        }
        Syntax::Toml => toml::from_str::<Value>(text).map_err(|e| {
            let (line, column) = e.span().map_or((None, None), |s| line_col(text, s.start));
            ParseError {
                line,
                column,
                message: format!("TOML: {}", scrub(e.message())),
            }
        }),
        Syntax::Yaml => {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            serde_yaml_ng::from_str::<Value>(text).map_err(|e| {
                let (line, column) = e
                    .location()
                    .map_or((None, None), |l| (Some(l.line()), Some(l.column())));
                let full = e.to_string();
                // Drop serde_yaml's own " at line L column C" suffixes; the position is kept apart.
                let msg = full.split(" at line ").next().unwrap_or(&full);
                ParseError {
                    line,
                    column,
                    message: format!("YAML: {}", scrub(msg)),
                }
            })
        }
    }
}

/// Deepest nesting of objects and arrays a JSON file may have.
const MAX_NESTING: usize = 128;

fn json5_value(text: &str) -> Result<Value, ParseError> {
    json5::from_str::<Value>(text).map_err(|e| {
        let (line, column) = e
            .position()
            .map_or((None, None), |p| (Some(p.line + 1), Some(p.column + 1)));
        // The error code's text never quotes the input; a custom (serde) message might.
        let message = match e.code() {
            Some(code) => format!("JSON5 syntax: {code}"),
            None => "JSON5: unexpected value".to_string(),
        };
        ParseError {
            line,
            column,
            message,
        }
    })
}

/// Byte offset where `[`/`{` nesting first exceeds `limit`, skipping strings and comments.
fn too_deep(text: &str, limit: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// 1-based line and column (in chars) of byte offset `pos`.
pub(crate) fn line_col(text: &str, pos: usize) -> (Option<usize>, Option<usize>) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let head = &text[..pos];
    let line = head.matches('\n').count() + 1;
    let col = head.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (Some(line), Some(col))
}

/// Keep a parser message free of file text: quoted parts become `"…"`, controls go, and the
/// message is cut at 160 characters.
pub(crate) fn scrub(msg: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    for c in msg.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '"' || c == '`' => {
                out.push(c);
                quote = Some(c);
            }
            None if c.is_control() => out.push(' '),
            None => out.push(c),
        }
        if out.chars().count() >= 160 {
            out.push('…');
            break;
        }
    }
    if quote.is_some() {
        out.push('…');
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonc_with_comments_and_trailing_commas_parses() {
        let v = parse(
            "// c\n{ /* x */ \"servers\": { \"a\": { \"command\": \"x\", }, }, }\n",
            Syntax::Json,
        )
        .expect("parse");
        assert_eq!(v["servers"]["a"]["command"], "x");
    }

    #[test]
    fn errors_have_positions_and_no_file_text() {
        let secret = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
        let json = format!("{{\n  \"env\": {{ \"T\": \"{secret}\" \n}}");
        let e = parse(&json, Syntax::Json).expect_err("unterminated");
        assert!(e.line.is_some() && e.column.is_some(), "{e:?}");
        assert!(!e.message.contains(secret), "{e:?}");

        let toml = format!("[mcp_servers.a]\ncommand = \"x\"\nenv = {{ T = \"{secret}\" \n");
        let e = parse(&toml, Syntax::Toml).expect_err("bad toml");
        assert!(e.line.is_some(), "{e:?}");
        assert!(!e.message.contains(secret), "{e:?}");

        let yaml = format!("mcpServers:\n  - name: a\n    env: {{ T: \"{secret}\"\n  bad: [\n");
        let e = parse(&yaml, Syntax::Yaml).expect_err("bad yaml");
        assert!(e.line.is_some(), "{e:?}");
        assert!(!e.message.contains(secret), "{e:?}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = "[".repeat(200_000);
        let e = parse(&deep, Syntax::Json).expect_err("too deep");
        assert_eq!(
            (e.line, e.column),
            (Some(1), Some(MAX_NESTING + 1)),
            "{e:?}"
        );
        assert!(parse(&format!("a = {deep}"), Syntax::Toml).is_err());
        assert!(parse(&deep, Syntax::Yaml).is_err());
        // Brackets inside strings and comments do not count.
        let ok = format!("{{ \"a\": \"{deep}\" /* {deep} */ }}");
        assert!(parse(&ok, Syntax::Json).is_ok());
    }

    #[test]
    fn scrub_hides_quoted_text() {
        assert_eq!(
            scrub("invalid type: string \"tok\", expected"),
            "invalid type: string \"…\", expected"
        );
    }

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncé d", 7), (Some(2), Some(4)));
    }
}
