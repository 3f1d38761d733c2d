//! Small text helpers shared by the detectors, the poisoning scanner and the pin diff: neighbour
//! characters around a byte span, JSON-pointer escaping, and bounded, terminal-safe excerpts (an
//! excerpt of attacker text must not carry ANSI escapes or invisible characters into logs).

/// The char just before byte offset `i` (which must be a char boundary).
pub(crate) fn prev_char(s: &str, i: usize) -> Option<char> {
    s.get(..i).and_then(|p| p.chars().next_back())
}

/// The char starting at byte offset `i`.
pub(crate) fn next_char(s: &str, i: usize) -> Option<char> {
    s.get(i..).and_then(|p| p.chars().next())
}

/// The char after the one at `i` (two ahead), for `.5`-style lookahead.
pub(crate) fn next_next_char(s: &str, i: usize) -> Option<char> {
    s.get(i..).and_then(|p| p.chars().nth(1))
}

pub(crate) fn is_word(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// RFC 6901 escaping of one reference token.
pub(crate) fn escape_pointer_token(tok: &str, out: &mut String) {
    // Most keys need no escape: copied whole rather than char by char.
    if !tok.bytes().any(|b| b == b'~' || b == b'/') {
        out.push_str(tok);
        return;
    }
    for c in tok.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            _ => out.push(c),
        }
    }
}

/// Appends `/tok` (escaped) to the path buffer `ptr` and returns the length to truncate
/// back to afterwards: a walk reuses one buffer instead of allocating a path per node.
pub(crate) fn enter(ptr: &mut String, tok: &str) -> usize {
    let back = ptr.len();
    ptr.push('/');
    escape_pointer_token(tok, ptr);
    back
}

/// [`enter`] for an array index.
pub(crate) fn enter_index(ptr: &mut String, i: usize) -> usize {
    use std::fmt::Write as _;
    let back = ptr.len();
    let _ = write!(ptr, "/{i}");
    back
}

pub(crate) fn push_pointer(base: &str, tok: &str) -> String {
    let mut p = String::with_capacity(base.len() + tok.len() + 1);
    p.push_str(base);
    p.push('/');
    escape_pointer_token(tok, &mut p);
    p
}

/// Is `c` a character that renders as nothing (or reorders text) and can hide instructions?
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}'
        | '\u{3164}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FE00}'..='\u{FE0D}'
        | '\u{E0000}'..='\u{E007F}'
        | '\u{E0100}'..='\u{E01EF}')
}

/// C0 controls except tab/newline/carriage return, DEL, and C1 controls.
pub(crate) fn is_control(c: char) -> bool {
    (c.is_control() && !matches!(c, '\t' | '\n' | '\r')) || ('\u{80}'..='\u{9F}').contains(&c)
}

/// Render at most `max_chars` characters of `s`, escaping controls and invisible characters as
/// `\u{..}` so the excerpt is safe to print, with `…` when cut.
pub(crate) fn safe_excerpt(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n >= max_chars {
            out.push('…');
            return out;
        }
        if c == '\n' || c == '\r' || c == '\t' {
            out.push(' ');
        } else if is_control(c) || is_invisible(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Byte index of the char boundary at or before `i`.
pub(crate) fn floor_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Byte index of the char boundary at or after `i`.
pub(crate) fn ceil_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// The word (ASCII letters, lower-cased) ending right before byte `i`, skipping up to a few
/// separator characters (`version: 1.2.3.4`, `ver=1.2.3.4`, `Version 1.2.3.4`).
pub(crate) fn preceding_word(s: &str, i: usize) -> String {
    let head = s.get(..i).unwrap_or("");
    let mut it = head.char_indices().rev().peekable();
    let mut skipped = 0;
    while let Some(&(_, c)) = it.peek() {
        if matches!(c, ' ' | ':' | '=' | '"' | '\'' | '(' | '[' | '\t') && skipped < 4 {
            skipped += 1;
            it.next();
        } else {
            break;
        }
    }
    let mut word: Vec<char> = Vec::new();
    for (_, c) in it {
        if c.is_ascii_alphabetic() && word.len() < 24 {
            word.push(c.to_ascii_lowercase());
        } else {
            break;
        }
    }
    word.iter().rev().collect()
}

/// Does the `back` bytes before `start` contain one of `words` (lower-case ASCII) as a word?
/// A word must start at a non-letter; words of up to 3 letters (`ssn`, `tel`, `cc`) must also
/// end at a non-letter, so `success` does not contain `cc`. Longer words may be prefixes
/// (`card` matches `cards`).
pub(crate) fn context_has(s: &str, start: usize, back: usize, words: &[&str]) -> bool {
    let from = floor_boundary(s, start.saturating_sub(back));
    let window = s.get(from..start).unwrap_or("").to_ascii_lowercase();
    let w = window.as_bytes();
    words.iter().any(|word| {
        window.match_indices(word).any(|(i, _)| {
            let before_ok = i == 0 || !w[i - 1].is_ascii_alphabetic();
            let j = i + word.len();
            let after_ok = word.len() > 3 || j >= w.len() || !w[j].is_ascii_alphabetic();
            before_ok && after_ok
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_escaping() {
        assert_eq!(push_pointer("/a", "b/c~d"), "/a/b~1c~0d");
    }

    #[test]
    fn excerpt_is_safe_and_bounded() {
        let e = safe_excerpt("ab\u{1b}[8mhidden\u{200b}x", 100);
        assert!(!e.contains('\u{1b}'));
        assert!(e.contains("\\u{1b}"));
        assert!(e.contains("\\u{200b}"));
        assert_eq!(safe_excerpt("abcdef", 3), "abc…");
    }

    #[test]
    fn neighbours() {
        let s = "é1.2";
        assert_eq!(prev_char(s, 2), Some('é'));
        assert_eq!(next_char(s, 2), Some('1'));
        assert_eq!(next_next_char(s, 2), Some('.'));
        assert_eq!(floor_boundary(s, 1), 0);
        assert_eq!(ceil_boundary(s, 1), 2);
        assert_eq!(preceding_word("firmware version: 1.2", 18), "version");
        assert_eq!(preceding_word("src=1.2", 4), "src");
        let ctx = |s: &str, w: &[&str]| context_has(s, s.len(), 40, w);
        assert!(ctx("SSN: ", &["ssn"]));
        assert!(ctx("credit cards ", &["card"]));
        assert!(!ctx("success ", &["cc"]));
        assert!(!ctx("message ", &["ssa"]));
        assert!(!ctx("hotel ", &["tel"]));
        assert!(ctx("tel:", &["tel"]));
    }
}
