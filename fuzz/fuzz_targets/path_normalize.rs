//! Fuzz target: the lexical path normaliser argument conditions match against
//! (`mcpwatch_policy::normalize_path`): a rule about `/etc` must see `/tmp/../etc/passwd`
//! as `/etc/passwd`, whatever spelling the fuzzer finds.
//!
//! Properties: total (any UTF-8, no panic); idempotent; never a `..` segment after a
//! non-`..` segment; absolute stays absolute and relative stays relative; an already
//! normal path is returned unchanged (borrowed). Strings holding NUL are left alone by
//! design, so the structural checks skip them; URLs (`scheme://...`) keep everything but
//! their path, so only their path part is checked structurally.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use mcpwatch_policy::normalize_path;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let once = normalize_path(s);
    let twice = normalize_path(&once);
    assert_eq!(twice, once, "not idempotent on {s:?}");
    assert!(matches!(twice, Cow::Borrowed(_)), "a normal path {once:?} was rewritten");
    if s.contains('\0') || s.contains("://") {
        return;
    }
    let segments: Vec<&str> = once.split('/').filter(|x| !x.is_empty()).collect();
    if let Some(i) = segments.iter().position(|&x| x != "..") {
        assert!(!segments[i..].contains(&".."), "{s:?} -> {once:?} keeps a `..` after a name");
    }
    assert_eq!(once.starts_with('/'), s.starts_with('/'), "{s:?} -> {once:?} changed absoluteness");
    if s.starts_with('/') {
        assert!(!segments.contains(&".."), "{s:?} -> {once:?}: `..` above the root");
    }
});
