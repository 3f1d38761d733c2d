//! Policy load errors that point at the offending line and column.
//!
//! An SRE fixes a policy from the error message alone (`mcpwatch policy check`, a
//! rejected reload), so every error names the file, the position of the offending key or
//! value, and what was expected instead.

use std::ops::Range;

/// A policy file that cannot be loaded. Always the policy author's side: the file is
/// wrong, nothing else failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct PolicyError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
    /// The text of the line the error points at (for [`PolicyError::render`]).
    pub source_line: String,
    /// Width, in characters, of the offending text on that line (at least 1).
    pub width: usize,
}

impl PolicyError {
    /// An error at byte range `span` of `src` (`None`: the start of the file).
    pub(crate) fn at(
        src: &str,
        file: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        let span = span.unwrap_or(0..0);
        let start = floor_char_boundary(src, span.start.min(src.len()));
        let end = floor_char_boundary(src, span.end.clamp(start, src.len()));
        let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
        let line = src[..start].matches('\n').count() + 1;
        let column = src[line_start..start].chars().count() + 1;
        let width = src[start..end.min(line_end)].chars().count().max(1);
        PolicyError {
            file: file.to_string(),
            line,
            column,
            message: message.into(),
            source_line: src[line_start..line_end].trim_end_matches('\r').to_string(),
            width,
        }
    }

    /// From a TOML syntax or shape error (unknown key, wrong type, missing key).
    pub(crate) fn from_toml(src: &str, file: &str, e: &toml::de::Error) -> Self {
        let span = e.span();
        let mut message = e.message().trim_end().to_string();
        if let Some(better) = explain_unknown_field(&message) {
            message = better;
        }
        if let Some(r) = &span
            && let Some(table) = enclosing_table(src, r.start)
        {
            message = format!("{message} (in {table})");
        }
        PolicyError::at(src, file, span, message)
    }

    /// The error with the offending line and a caret under the offending text, like:
    ///
    /// ```text
    /// policy.toml:12:1: unknown key `acton` ...
    ///    |
    /// 12 | acton = "deny"
    ///    | ^^^^^
    /// ```
    pub fn render(&self) -> String {
        let num = self.line.to_string();
        let pad = " ".repeat(num.len());
        let indent: String = self
            .source_line
            .chars()
            .take(self.column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        format!(
            "{self}\n{pad} |\n{num} | {}\n{pad} | {indent}{}",
            self.source_line,
            "^".repeat(self.width)
        )
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The `[table]` or `[[array]]` header in force at byte `pos`, for context.
fn enclosing_table(src: &str, pos: usize) -> Option<String> {
    let pos = floor_char_boundary(src, pos.min(src.len()));
    let line_start = src[..pos].rfind('\n').map_or(0, |i| i + 1);
    src[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| {
            let end = l.rfind(']').map_or(l.len(), |i| i + 1);
            l[..end].to_string()
        })
}

/// serde says "unknown field `acton`, expected one of `id`, `action`"; we say which key,
/// list the expected ones and suggest the closest.
fn explain_unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = format!("unknown key `{key}`");
    if expected.is_empty() {
        out.push_str("; this table takes no keys");
        return Some(out);
    }
    out.push_str("; expected one of: ");
    out.push_str(&expected.join(", "));
    if let Some(best) = closest(key, expected.iter().copied()) {
        out.push_str(&format!(" (did you mean `{best}`?)"));
    }
    Some(out)
}

/// The candidate within a small edit distance of `word`, if any.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_is_line_and_character_column() {
        let src = "a = 1\nbé = \"x\"\n";
        let pos = src.find('=').unwrap();
        let second = src[pos + 1..].find('=').unwrap() + pos + 1;
        let e = PolicyError::at(src, "p.toml", Some(second..second + 1), "boom");
        assert_eq!((e.line, e.column), (2, 4));
        assert_eq!(e.source_line, "bé = \"x\"");
        assert_eq!(e.to_string(), "p.toml:2:4: boom");
        assert!(
            e.render().ends_with("2 | bé = \"x\"\n  |    ^"),
            "{}",
            e.render()
        );
    }

    #[test]
    fn spans_past_the_end_are_clamped() {
        let e = PolicyError::at("x", "f", Some(10..20), "m");
        assert_eq!((e.line, e.column, e.width), (1, 2, 1));
    }

    #[test]
    fn unknown_field_names_key_lists_expected_and_suggests() {
        let m =
            explain_unknown_field("unknown field `acton`, expected one of `id`, `action`, `mode`")
                .unwrap();
        assert_eq!(
            m,
            "unknown key `acton`; expected one of: id, action, mode (did you mean `action`?)"
        );
        assert_eq!(closest("zzzzzz", ["id", "mode"].into_iter()), None);
    }
}
