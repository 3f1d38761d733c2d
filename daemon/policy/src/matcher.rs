//! Precompiled matchers: glob lists, server endpoints, process identities, argument
//! conditions.
//!
//! Everything that can be compiled is compiled once at load time, so evaluation is a
//! handful of string compares and automaton runs with no parsing and (almost) no
//! allocation.

use globset::{GlobMatcher, GlobSet};
use mcpwatch_api::ProcessInfo;
use mcpwatch_mcp::message::{embedded_json, EMBEDDED_JSON_DEPTH};
use regex::Regex;
use serde_json::Value;

use crate::eval::Target;
use crate::launch::LaunchKind;

/// How a glob list treats its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatternKind {
    /// Tool, server, agent, method, comm, unit names: `*` matches any character.
    Name,
    /// Filesystem-like paths (exe, cgroup, URL path): `*` stops at `/`, `**` crosses it.
    Path,
    /// Host names: like `Name`, but case-insensitive.
    Host,
}

impl PatternKind {
    pub(crate) fn case_insensitive(self) -> bool {
        self == PatternKind::Host
    }

    pub(crate) fn literal_separator(self) -> bool {
        self == PatternKind::Path
    }
}

/// Whether a pattern needs glob machinery or is a plain string.
pub(crate) fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

/// A list of patterns (literals and globs); matches if any element matches.
#[derive(Debug, Clone)]
pub(crate) struct Patterns {
    sources: Vec<String>,
    literals: Vec<String>,
    globs: Option<GlobSet>,
    case_insensitive: bool,
}

impl Patterns {
    pub(crate) fn new(
        sources: Vec<String>,
        literals: Vec<String>,
        globs: Option<GlobSet>,
        kind: PatternKind,
    ) -> Self {
        Patterns {
            sources,
            literals,
            globs,
            case_insensitive: kind.case_insensitive(),
        }
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        let lit = if self.case_insensitive {
            self.literals.iter().any(|l| l.eq_ignore_ascii_case(s))
        } else {
            self.literals.iter().any(|l| l == s)
        };
        lit || self.globs.as_ref().is_some_and(|g| g.is_match(s))
    }

    pub(crate) fn all_literal(&self) -> bool {
        self.globs.is_none()
    }

    pub(crate) fn sources(&self) -> &[String] {
        &self.sources
    }

    /// 2 when every element is a literal, 1 otherwise: literal lists are narrower.
    pub(crate) fn specificity(&self) -> u32 {
        if self.all_literal() { 2 } else { 1 }
    }
}

/// A single glob or literal (for one-value matchers such as `host` or `exe`).
#[derive(Debug, Clone)]
pub(crate) enum Pattern {
    Literal(String),
    Glob(GlobMatcher),
}

impl Pattern {
    fn matches(&self, s: &str, case_insensitive: bool) -> bool {
        match self {
            Pattern::Literal(l) if case_insensitive => l.eq_ignore_ascii_case(s),
            Pattern::Literal(l) => l == s,
            Pattern::Glob(g) => g.is_match(s),
        }
    }

    fn specificity(&self) -> u32 {
        match self {
            Pattern::Literal(_) => 2,
            Pattern::Glob(_) => 1,
        }
    }
}

/// How a `[[server]]` entry recognises its endpoint.
#[derive(Debug, Clone)]
pub(crate) enum ServerMatcher {
    /// `url = "https://host[:port]/path"`: scheme, host, port and path all equal.
    Url {
        scheme: String,
        host: String,
        port: u16,
        path: String,
    },
    /// `host = "glob"` with optional `port` and `path` glob.
    Parts {
        host: Pattern,
        port: Option<u16>,
        path: Option<Pattern>,
    },
    /// `package = "npm:NAME"`: a stdio server launched from a registry package or image.
    Package { kind: LaunchKind, name: Pattern },
    /// `command = "/path"`: a stdio server launched as a script or program.
    Command { path: Pattern },
}

/// `[::1]` -> `::1`, `example.com.` -> `example.com`.
pub(crate) fn norm_host(h: &str) -> &str {
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    h.strip_suffix('.').unwrap_or(h)
}

/// A request path as a server may route it, for registry matching: query and fragment
/// dropped, percent escapes decoded (uvicorn hands Starlette the decoded path, so
/// `/%6Dcp` reaches `/mcp`), `;params` dropped from each segment (servlet containers),
/// empty and `.` segments dropped and `..` applied, ASCII lower-cased (Express routes
/// case-insensitively), no trailing `/`; `` -> `/`.
///
/// The same function normalises the registry's paths, so a variant of a registered path
/// cannot make its server look unregistered (and its rules not apply). A variant a server
/// would not route is only matched more strictly than it needs to be.
pub fn norm_path(p: &str) -> std::borrow::Cow<'_, str> {
    let p = p.split(['?', '#']).next().unwrap_or("");
    let plain = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'~' | b'/' | b'.' | b'*');
    let trimmed = p.trim_end_matches('/');
    if p.bytes().all(|b| plain(&b))
        && !trimmed.contains("//")
        && !trimmed.split('/').any(|seg| seg == "." || seg == "..")
    {
        return std::borrow::Cow::Borrowed(if trimmed.is_empty() { "/" } else { trimmed });
    }
    let decoded = percent_decode(p, false).to_ascii_lowercase();
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    std::borrow::Cow::Owned(format!("/{}", segments.join("/")))
}

/// Percent-decode `s` (and `+` to a space when `plus`, as query strings are decoded);
/// an invalid escape stays as written, invalid UTF-8 becomes U+FFFD.
pub fn percent_decode(s: &str, plus: bool) -> std::borrow::Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || (plus && b == b'+')) {
        return std::borrow::Cow::Borrowed(s);
    }
    let raw = s.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (raw[i], raw.get(i + 1).copied().and_then(hex), raw.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) if plus => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// A target host as the proxy may hand it over (an HTTP Host header keeps its port):
/// `[::1]:8080` -> `::1`, `example.com:443` -> `example.com`, `example.com.` -> `example.com`.
/// An unbracketed IPv6 address (two or more `:`) is kept whole.
pub(crate) fn norm_target_host(h: &str) -> &str {
    let h = if let Some(rest) = h.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(inside, _)| inside)
    } else if h.matches(':').count() == 1 {
        h.split_once(':').map_or(h, |(name, _)| name)
    } else {
        h
    };
    h.strip_suffix('.').unwrap_or(h)
}

/// A host as an identity key: [`norm_target_host`] (no port, brackets or trailing dot),
/// ASCII lower-cased. The registry compares hosts this way; the daemon keys endpoints and
/// legacy routes with it.
pub fn canonical_host(h: &str) -> String {
    norm_target_host(h).to_ascii_lowercase()
}

impl ServerMatcher {
    /// Whether the entry names `t`'s host as written (`true`), rather than only as the
    /// `localhost` alias of a loopback address: a literal entry for the address wins.
    pub(crate) fn names_host(&self, t: &Target<'_>) -> bool {
        t.stdio_launch().is_some() || self.host_match(norm_target_host(t.host)) == Some(true)
    }

    /// How the entry's host names `host`: `Some(true)` as written, `Some(false)` only as
    /// the `localhost` alias of a loopback address (the daemon names plain-HTTP loopback
    /// endpoints by their address, any local alias reaching the same socket, and an entry
    /// written with `localhost` still matches them), `None` not at all.
    fn host_match(&self, host: &str) -> Option<bool> {
        let names = |want: &str| match self {
            ServerMatcher::Url { host: h, .. } => want.eq_ignore_ascii_case(h),
            ServerMatcher::Parts { host: h, .. } => h.matches(want, true),
            ServerMatcher::Package { .. } | ServerMatcher::Command { .. } => false,
        };
        if names(host) {
            Some(true)
        } else if host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback()) && names("localhost") {
            Some(false)
        } else {
            None
        }
    }

    pub(crate) fn matches(&self, t: &Target<'_>) -> bool {
        if let Some((kind, name)) = t.stdio_launch() {
            return match self {
                ServerMatcher::Package { kind: k, name: n } => *k == kind && n.matches(name, false),
                ServerMatcher::Command { path } => !kind.is_package() && path.matches(name, false),
                _ => false,
            };
        }
        let host_fits = self.host_match(norm_target_host(t.host)).is_some();
        match self {
            ServerMatcher::Package { .. } | ServerMatcher::Command { .. } => false,
            ServerMatcher::Url { scheme, port, path, .. } => {
                let t_scheme = t.endpoint.split_once("://").map(|(s, _)| s).unwrap_or("");
                t.port == *port
                    && t_scheme.eq_ignore_ascii_case(scheme)
                    && host_fits
                    && norm_path(t.path) == path.as_str()
            }
            ServerMatcher::Parts { port, path, .. } => {
                host_fits
                    && port.is_none_or(|p| p == t.port)
                    && path
                        .as_ref()
                        .is_none_or(|p| p.matches(&norm_path(t.path), false))
            }
        }
    }

    /// Does the entry name a server at `host:port`, whatever its path and scheme? (What a
    /// `CONNECT host:port` tunnel may lead to.)
    pub(crate) fn serves_at(&self, host: &str, port: u16) -> bool {
        let host_fits = self.host_match(norm_target_host(host)).is_some();
        match self {
            ServerMatcher::Package { .. } | ServerMatcher::Command { .. } => false,
            ServerMatcher::Url { port: p, .. } => host_fits && *p == port,
            ServerMatcher::Parts { port: p, .. } => host_fits && p.is_none_or(|p| p == port),
        }
    }

    /// A full URL beats host+port+path, which beats a bare host; literals beat globs.
    pub(crate) fn specificity(&self) -> u32 {
        match self {
            ServerMatcher::Url { .. } => 100,
            ServerMatcher::Package { name, .. } => name.specificity() * 10,
            ServerMatcher::Command { path } => path.specificity() * 10,
            ServerMatcher::Parts { host, port, path } => {
                host.specificity() * 10
                    + if port.is_some() { 5 } else { 0 }
                    + path.as_ref().map_or(0, |p| p.specificity() * 2)
            }
        }
    }
}

/// Identity matchers of an `[[agent]]`; every one that is set must match.
#[derive(Debug, Clone, Default)]
pub(crate) struct AgentMatcher {
    pub exe: Option<Pattern>,
    pub comm: Option<Pattern>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub gid: Option<u32>,
    pub group: Option<String>,
    pub unit: Option<Pattern>,
    pub cgroup: Option<Pattern>,
}

impl AgentMatcher {
    /// Set only from what a process picks for itself (its executable path and command
    /// name), none of what the kernel attributes to it (uid, gid, unit, cgroup).
    pub(crate) fn chosen_by_the_process(&self) -> bool {
        (self.exe.is_some() || self.comm.is_some()) && !self.attributed_by_the_kernel()
    }

    /// Any matcher on what the kernel attributes to a process (uid, gid, unit, cgroup).
    fn attributed_by_the_kernel(&self) -> bool {
        self.uid.is_some() || self.user.is_some() || self.gid.is_some() || self.group.is_some() || self.unit.is_some() || self.cgroup.is_some()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.exe.is_none() && self.comm.is_none() && !self.attributed_by_the_kernel()
    }

    /// `exe` and `comm` match the connecting process or the process the call is
    /// attributed to (`ProcessInfo::agent`, e.g. the editor behind an `npx mcp-remote`).
    pub(crate) fn matches(&self, p: &ProcessInfo) -> bool {
        if let Some(pat) = &self.exe {
            let own = p.exe.as_deref().is_some_and(|e| pat.matches(e, false));
            let attributed = p
                .agent
                .as_ref()
                .and_then(|a| a.exe.as_deref())
                .is_some_and(|e| pat.matches(e, false));
            if !own && !attributed {
                return false;
            }
        }
        if let Some(pat) = &self.comm {
            let own = pat.matches(&p.comm, false);
            let attributed = p
                .agent
                .as_ref()
                .is_some_and(|a| pat.matches(&a.comm, false));
            if !own && !attributed {
                return false;
            }
        }
        if self.uid.is_some_and(|u| u != p.uid) || self.gid.is_some_and(|g| g != p.gid) {
            return false;
        }
        if let Some(u) = &self.user
            && p.user.as_deref() != Some(u.as_str())
        {
            return false;
        }
        if let Some(g) = &self.group
            && p.group.as_deref() != Some(g.as_str())
        {
            return false;
        }
        if let Some(pat) = &self.unit
            && !p.unit.as_deref().is_some_and(|u| pat.matches(u, false))
        {
            return false;
        }
        if let Some(pat) = &self.cgroup
            && !p
                .cgroup_path
                .as_deref()
                .is_some_and(|c| pat.matches(c, false))
        {
            return false;
        }
        true
    }

    /// Sum over the matchers that are set: literal or numeric 2, glob 1.
    pub(crate) fn specificity(&self) -> u32 {
        let pat = |p: &Option<Pattern>| p.as_ref().map_or(0, Pattern::specificity);
        let exact = |set: bool| if set { 2 } else { 0 };
        pat(&self.exe)
            + pat(&self.comm)
            + pat(&self.unit)
            + pat(&self.cgroup)
            + exact(self.uid.is_some())
            + exact(self.user.is_some())
            + exact(self.gid.is_some())
            + exact(self.group.is_some())
    }
}

/// `[[rule.when]]`: a JSON pointer into the arguments and a regex.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    pub pointer: String,
    pub regex: Regex,
    /// `not_matches`: the condition holds when the regex does NOT match.
    pub negate: bool,
    /// Strings as sent, or lexically normalised paths (the default).
    pub form: crate::model::ConditionForm,
}

impl Condition {
    /// Whether the condition holds for a rule of this kind. A value is judged by its
    /// leaves (every string, number, boolean and null inside it, see [`leaf_with`]), and
    /// an array's elements are judged as the server would use them: each one.
    ///
    /// - For a restrictive rule (`deny`, `require_approval`, `rate_limit`) one leaf is
    ///   enough: `matches` holds when some leaf matches, `not_matches` when some leaf
    ///   does not. So `not_matches = '^/srv/project/'` denies `["/srv/project/a",
    ///   "/etc/passwd"]`; before, the one path inside the root made the whole list pass.
    /// - For `allow` every leaf must agree: `matches` holds when all leaves match,
    ///   `not_matches` when none does. So an allow rule for `^/srv/project/` does not
    ///   admit that list either.
    ///
    /// A missing value, or one with no leaves (`[]`, `{}`), never matches, so
    /// `not_matches` holds for it and `matches` does not.
    pub(crate) fn holds(&self, args: Option<&Value>, restrictive: bool) -> bool {
        let values = args.map(|a| lookup(a, &self.pointer)).unwrap_or_default();
        if values.is_empty() {
            return self.negate;
        }
        let (re, form) = (&self.regex, self.form);
        let one = |v: &Value| match (restrictive, self.negate) {
            // Some leaf matches / some leaf does not (or there is none).
            (true, false) => leaf_with(re, v, form, true) == Found::Yes,
            (true, true) => leaf_with(re, v, form, false) != Found::No,
            // Every leaf matches (and there is one) / no leaf matches.
            (false, false) => leaf_with(re, v, form, false) != Found::Yes && leaf_with(re, v, form, true) == Found::Yes,
            (false, true) => leaf_with(re, v, form, true) != Found::Yes,
        };
        // Several values under keys a case-blind server reads as the pointer's (it takes
        // one of them): a restrictive rule holds when it holds for one, `allow` only when
        // it holds for all.
        if restrictive { values.into_iter().any(one) } else { values.into_iter().all(one) }
    }
}

/// The values at `pointer` in `args`, where each key is also found as case-blind servers
/// find it: Go's `encoding/json` (mcp-go, typed tool handlers) fills a field `path` from
/// `"PATH"`, and from `"path"` and `"PATH"` both present it takes the last. So a
/// condition on `/path` sees every value such a server could read for it.
fn lookup<'v>(args: &'v Value, pointer: &str) -> Vec<&'v Value> {
    let Some(rest) = pointer.strip_prefix('/') else {
        return if pointer.is_empty() { vec![args] } else { Vec::new() };
    };
    let mut at = vec![args];
    for token in rest.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        let mut next = Vec::new();
        for v in at {
            match v {
                Value::Object(m) => next.extend(m.iter().filter(|(k, _)| **k == token || mcpwatch_mcp::jsonrpc::same_folded(k, &token)).map(|(_, v)| v)),
                Value::Array(a) => next.extend(token.parse::<usize>().ok().and_then(|i| a.get(i))),
                _ => {}
            }
        }
        at = next;
    }
    at
}

/// What [`leaf_with`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// The value has no leaves at all.
    NoLeaves,
    /// It has leaves, none with the wanted outcome.
    No,
    Yes,
}

/// Whether some leaf of `v` has the regex outcome `want` (matches, or does not). Strings
/// are matched in `form` (normalised by [`crate::normalize_path`] unless `raw`);
/// numbers, booleans and null by their JSON text; arrays and objects by the values
/// inside them (keys are not searched). A string that is itself a JSON array or object
/// is a leaf and is also judged as that value: the Python SDK `json.loads` such a
/// string for any parameter not typed `str` (`pre_parse_json`), so
/// `"[\"\\u002fetc\\u002fshadow\"]"` is the list `["/etc/shadow"]` to the tool
/// ([`EMBEDDED_JSON_DEPTH`] strings within strings deep). Iterative and linear in the size of
/// a value that is already in memory.
fn leaf_with(re: &Regex, v: &Value, form: crate::model::ConditionForm, want: bool) -> Found {
    leaf_within(re, v, form, want, EMBEDDED_JSON_DEPTH)
}

fn leaf_within(re: &Regex, v: &Value, form: crate::model::ConditionForm, want: bool, decode: usize) -> Found {
    let mut found = Found::NoLeaves;
    let mut inner: Vec<Value> = Vec::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        let hit = match v {
            Value::String(s) => {
                if decode > 0
                    && let Some(d) = embedded_json(s)
                {
                    inner.push(d);
                }
                match form {
                    crate::model::ConditionForm::Raw => re.is_match(s),
                    crate::model::ConditionForm::Normalized => re.is_match(&crate::path::normalize_path(s)),
                }
            }
            Value::Number(n) => re.is_match(&n.to_string()),
            Value::Bool(b) => re.is_match(if *b { "true" } else { "false" }),
            Value::Null => re.is_match("null"),
            Value::Array(a) => {
                stack.extend(a.iter());
                continue;
            }
            Value::Object(o) => {
                stack.extend(o.values());
                continue;
            }
        };
        if hit == want {
            return Found::Yes;
        }
        found = Found::No;
    }
    for d in &inner {
        if leaf_within(re, d, form, want, decode - 1) == Found::Yes {
            return Found::Yes;
        }
    }
    found
}
