//! Lexical path normalisation for argument conditions.
//!
//! Why this exists: a rule written against `..` must not block `docs/../README.md` (it
//! never leaves the directory), and a rule written against `/etc` must not miss
//! `/tmp/../etc/passwd` (it is `/etc/passwd`). Conditions therefore match the
//! normalised form of every string by default (`form = "raw"` opts out). The
//! normalisation is purely lexical: the policy crate does no I/O, so symlinks are NOT
//! resolved (a symlink inside a root that points outside it passes; see TR-008).
//!
//! [`normalize_path`] is total (any input, no panic), idempotent, and changes only
//! what it must:
//! - `.` segments are dropped and runs of `/` collapse to one;
//! - `x/..` cancels; `..` at the start of a relative path is KEPT (`docs/../../x` →
//!   `../x`), so an escape above a relative root stays visible; `..` above `/` is
//!   dropped (`/../etc` → `/etc`, as the kernel resolves it);
//! - a trailing `/` is kept; a relative path that cancels out entirely is `.`; the
//!   empty string stays empty;
//! - `scheme://authority/path?query#fragment` (e.g. `file:///home/a/../b`): only the
//!   path part is normalised, scheme, authority, query and fragment are kept as written;
//! - a string containing NUL is left as it is (nothing after a NUL is a path);
//! - `\` is not a separator, percent-escapes are not decoded (write rules for them).

use std::borrow::Cow;

/// The lexically normalised form of `s` (see the module docs). Borrowed when `s` is
/// already normal.
pub fn normalize_path(s: &str) -> Cow<'_, str> {
    // NUL ends a path for the kernel: what follows is not a path, and a rule against
    // NUL must still see it (`a\0/../../etc` would otherwise lose the NUL).
    if s.is_empty() || s.contains('\0') {
        return Cow::Borrowed(s);
    }
    let (prefix, rest) = split_url(s);
    let (path, suffix) = match prefix.is_empty() {
        // In a URL the path ends at the query or fragment.
        false => rest.split_at(rest.find(['?', '#']).unwrap_or(rest.len())),
        true => (rest, ""),
    };
    if path.is_empty() {
        return Cow::Borrowed(s);
    }
    let clean = clean(path);
    if clean == path {
        return Cow::Borrowed(s);
    }
    Cow::Owned(format!("{prefix}{clean}{suffix}"))
}

/// `("scheme://authority", "/path?q#f")` for URLs, `("", s)` otherwise.
fn split_url(s: &str) -> (&str, &str) {
    let Some(colon) = s.find("://") else { return ("", s) };
    let scheme = &s[..colon];
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return ("", s);
    }
    let after = colon + 3;
    let end = s[after..].find(['/', '?', '#']).map_or(s.len(), |i| after + i);
    s.split_at(end)
}

fn clean(p: &str) -> String {
    let absolute = p.starts_with('/');
    let trailing = p.len() > 1 && p.ends_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => match out.last() {
                Some(&last) if last != ".." => {
                    out.pop();
                }
                // Above `/` there is nothing: `/..` is `/`.
                _ if absolute => {}
                // Above a relative root: keep it, the escape must stay visible.
                _ => out.push(".."),
            },
            s => out.push(s),
        }
    }
    let mut r = String::with_capacity(p.len());
    if absolute {
        r.push('/');
    }
    r.push_str(&out.join("/"));
    if r.is_empty() {
        r.push('.');
    }
    if trailing && !r.ends_with('/') {
        r.push('/');
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_dots_and_slashes() {
        for (i, want) in [
            ("/tmp/../etc/passwd", "/etc/passwd"),
            ("docs/../README.md", "README.md"),
            ("docs/../../x", "../x"),
            ("../x", "../x"),
            ("../../etc/passwd", "../../etc/passwd"),
            ("/home/alice/project/../../../etc/passwd", "/etc/passwd"),
            ("/../etc", "/etc"),
            ("//etc///passwd", "/etc/passwd"),
            ("./a/./b", "a/b"),
            ("a/..", "."),
            ("a/../", "./"),
            (".", "."),
            ("/", "/"),
            ("//", "/"),
            ("/etc/", "/etc/"),
            ("", ""),
            ("plain text", "plain text"),
            ("C:\\Users\\..\\x", "C:\\Users\\..\\x"),
            ("file:///home/a/../b", "file:///home/b"),
            ("https://h.example/a/./b/../c?x=../y#/../z", "https://h.example/a/c?x=../y#/../z"),
            ("https://h.example", "https://h.example"),
            ("http://169.254.169.254/latest", "http://169.254.169.254/latest"),
            ("1http://x/../y", "1http:/y"),
            ("/p/notes.txt\0/../../etc/shadow", "/p/notes.txt\0/../../etc/shadow"),
        ] {
            assert_eq!(normalize_path(i), want, "{i:?}");
        }
    }

    #[test]
    fn borrowed_when_already_normal_and_idempotent() {
        assert!(matches!(normalize_path("/etc/passwd"), Cow::Borrowed(_)));
        assert!(matches!(normalize_path("https://x.example/a?b"), Cow::Borrowed(_)));
        for s in ["a/../", "/..//./x/", "../a/../..", "x:/..", "s://a/..", "./", "a//b/../../..", "/a/b/../../../c/."] {
            let once = normalize_path(s).into_owned();
            assert_eq!(normalize_path(&once), once.as_str(), "{s:?}");
            assert!(!once.contains("/./") && !once.contains("//") || once.contains("://"), "{s:?} -> {once:?}");
        }
    }

    #[test]
    fn idempotent_and_clean_on_every_short_string() {
        // Every string of up to 6 characters over an alphabet that exercises each rule.
        const ALPHABET: [char; 7] = ['/', '.', 'a', ':', '?', '#', '\0'];
        let mut s = String::new();
        fn walk(s: &mut String, depth: usize) {
            let once = normalize_path(s).into_owned();
            assert_eq!(normalize_path(&once), once.as_str(), "not idempotent for {s:?}");
            if !s.contains(['\0', ':']) {
                // Plain paths: no `.` segment, no empty segment, `..` only leading.
                let body = once.trim_start_matches('/').trim_end_matches('/');
                let segs: Vec<&str> = body.split('/').collect();
                assert!(once == "/" || once == "./" || once.is_empty() || !segs.iter().any(|x| x.is_empty()), "{s:?} -> {once:?}");
                assert!(once == "." || once == "./" || !segs.contains(&"."), "{s:?} -> {once:?}");
                let first_other = segs.iter().position(|x| *x != "..").unwrap_or(segs.len());
                assert!(!segs[first_other..].contains(&".."), "{s:?} -> {once:?}");
                assert!(!(once.starts_with('/') && segs.first() == Some(&"..")), "{s:?} -> {once:?}");
            }
            if depth == 0 {
                return;
            }
            for c in ALPHABET {
                s.push(c);
                walk(s, depth - 1);
                s.pop();
            }
        }
        walk(&mut s, 6);
    }
}
