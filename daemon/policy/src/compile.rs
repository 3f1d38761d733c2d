//! From policy text to a compiled [`Policy`]: shape checks by serde, meaning checks here.
//!
//! Nothing is dropped or guessed: a rule that could never match as written (an empty
//! list, a reference to an agent or server that does not exist, a pattern matching no
//! defined name) is an error, because a silently dead rule is a hole in the policy that
//! nobody sees.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use globset::{GlobBuilder, GlobSetBuilder};
use regex::RegexBuilder;
use toml::Spanned;

use crate::error::{PolicyError, closest};
use crate::matcher::{
    AgentMatcher, Condition, Pattern, PatternKind, Patterns, ServerMatcher, is_glob, norm_host,
    norm_path,
};
use crate::model::{
    InspectSettings, Approver,
    AgentDef, DefaultAction, GatewayDef, Policy, RateDef, RuleAction, RuleDef, ServerDef, ServerStatus,
    ShadowAction,
};
use crate::flow::{FlowDef, Label, LabelDef, Labels};
use crate::launch::LaunchKind;
use crate::raw::{RawAgent, RawCondition, RawFlow, RawGateway, RawLabel, RawPolicy, RawRule, RawServer, SList};

/// Policies are hand-written; anything this large is a mistake (or an attack on the loader).
pub const MAX_POLICY_BYTES: usize = 4 << 20;
/// Default for `approval_timeout_secs`.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(50);
const MAX_APPROVAL_TIMEOUT_SECS: i64 = 86_400;
const MAX_RATE_COUNT: u32 = 1_000_000;
const MAX_NAME_LEN: usize = 128;
/// Compiled size bound per argument regex.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Parse and compile a policy. `file` is only used in error messages; reading the file
/// is the caller's job.
pub fn parse(src: &str, file: &str) -> std::result::Result<Policy, PolicyError> {
    if src.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::at(
            src,
            file,
            None,
            format!(
                "policy is {} bytes; the limit is {MAX_POLICY_BYTES} bytes",
                src.len()
            ),
        ));
    }
    let raw: RawPolicy = toml::from_str(src).map_err(|e| PolicyError::from_toml(src, file, &e))?;
    Compiler { src, file }.policy(raw)
}

struct Compiler<'a> {
    src: &'a str,
    file: &'a str,
}

type Result<T> = std::result::Result<T, PolicyError>;

impl Compiler<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        PolicyError::at(self.src, self.file, Some(span), message)
    }

    fn line(&self, pos: usize) -> usize {
        let pos = pos.min(self.src.len());
        self.src.as_bytes()[..pos]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn policy(&self, raw: RawPolicy) -> Result<Policy> {
        if *raw.version.get_ref() != 1 {
            return Err(self.err(
                raw.version.span(),
                format!(
                    "unsupported policy version {}; this mcpwatch understands `version = 1`",
                    raw.version.get_ref()
                ),
            ));
        }
        let approval_timeout = match &raw.approval_timeout_secs {
            None => DEFAULT_APPROVAL_TIMEOUT,
            Some(s) => {
                let v = *s.get_ref();
                if !(1..=MAX_APPROVAL_TIMEOUT_SECS).contains(&v) {
                    return Err(self.err(
                        s.span(),
                        format!(
                            "`approval_timeout_secs` must be between 1 and {MAX_APPROVAL_TIMEOUT_SECS}, not {v}"
                        ),
                    ));
                }
                Duration::from_secs(v.unsigned_abs())
            }
        };

        let mut servers = Vec::with_capacity(raw.server.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for s in raw.server {
            let name_span = s.name.span();
            let def = self.server(s)?;
            if let Some(first) = seen.insert(def.name.clone(), def.line) {
                return Err(self.err(
                    name_span,
                    format!(
                        "duplicate server name `{}` (first defined at line {first})",
                        def.name
                    ),
                ));
            }
            servers.push(def);
        }
        let server_names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();

        let mut gateways = Vec::with_capacity(raw.gateway.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for g in &raw.gateway {
            let def = self.gateway(g)?;
            if let Some(first) = seen.insert(def.name.clone(), def.line) {
                return Err(self.err(
                    g.name.span(),
                    format!("duplicate gateway name `{}` (first defined at line {first})", def.name),
                ));
            }
            gateways.push(def);
        }

        let mut agents = Vec::with_capacity(raw.agent.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for a in raw.agent {
            let name_span = a.name.span();
            let def = self.agent(a, &server_names)?;
            if let Some(first) = seen.insert(def.name.clone(), def.line) {
                return Err(self.err(
                    name_span,
                    format!(
                        "duplicate agent name `{}` (first defined at line {first})",
                        def.name
                    ),
                ));
            }
            agents.push(def);
        }
        let agent_names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();

        let mut rules = Vec::with_capacity(raw.rule.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for r in raw.rule {
            let id_span = r.id.span();
            let def = self.rule(r, &server_names, &agent_names)?;
            if let Some(first) = seen.insert(def.id.clone(), def.line) {
                return Err(self.err(
                    id_span,
                    format!(
                        "duplicate rule id `{}` (first defined at line {first})",
                        def.id
                    ),
                ));
            }
            rules.push(def);
        }

        let mut labels = Vec::with_capacity(raw.label.len());
        for l in &raw.label {
            labels.push(self.label(l, &server_names)?);
        }
        let mut flows = Vec::with_capacity(raw.flow.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for f in &raw.flow {
            let def = self.flow(f)?;
            if let Some(first) = seen.insert(def.id.clone(), def.line).or_else(|| rules.iter().find(|r| r.id == def.id).map(|r| r.line)) {
                return Err(self.err(f.id.span(), format!("duplicate id `{}` (first defined at line {first}); flow and rule ids share one namespace", def.id)));
            }
            flows.push(def);
        }

        let inspect = match raw.inspect {
            None => InspectSettings::default(),
            Some(r) => {
                let at = self.src.find("[inspect").unwrap_or(0);
                let span = at..at + 1;
                let d = InspectSettings::default();
                let detectors = r.detectors.unwrap_or_default();
                if let Err(e) = mcpwatch_inspect::Inspector::new(&detectors) {
                    return Err(self.err(span, format!("[inspect.detectors]: {e}")));
                }
                InspectSettings {
                    detectors,
                    poisoning: r.poisoning.unwrap_or(d.poisoning),
                    poisoning_min_severity: r.poisoning_min_severity.unwrap_or(d.poisoning_min_severity),
                    pinning: r.pinning.unwrap_or(d.pinning),
                    result_injection: r.result_injection.unwrap_or(d.result_injection),
                }
            }
        };

        let mut approvers = Vec::new();
        if let Some(a) = raw.approvals.as_ref().and_then(|a| a.approvers.as_ref()) {
            if a.get_ref().is_empty() {
                return Err(self.err(a.span(), "`approvers` is empty: name at least one approver, or remove the key"));
            }
            for s in a.get_ref() {
                approvers.push(Approver::parse(s.get_ref()).map_err(|e| self.err(s.span(), format!("[approvals] approvers: {e}")))?);
            }
        }

        Ok(Policy {
            file: self.file.to_string(),
            approvers,
            inspect,
            mode: raw.mode,
            shadow: raw.shadow.unwrap_or(ShadowAction::Alert),
            default: raw.default.unwrap_or(DefaultAction::Allow),
            approval_timeout,
            contact: raw.contact.filter(|c| !c.trim().is_empty()),
            servers,
            agents,
            rules,
            labels,
            flows,
            gateways,
        })
    }

    fn label(&self, r: &RawLabel, servers: &[&str]) -> Result<LabelDef> {
        if let Some(s) = &r.servers {
            self.references(s, servers, "server", "[[label]]")?;
        }
        let mut set = Labels::NONE;
        for l in r.labels.get_ref() {
            set = set.with(*l.get_ref());
        }
        Ok(LabelDef {
            servers: r.servers.as_ref().map(|s| self.patterns(s, PatternKind::Name, "servers")).transpose()?,
            tools: self.patterns(&r.tools, PatternKind::Name, "tools")?,
            labels: set,
        })
    }

    fn flow(&self, r: &RawFlow) -> Result<FlowDef> {
        let id = self.name(&r.id, "flow id")?;
        let seq: Vec<Label> = r.sequence.get_ref().iter().map(|l| *l.get_ref()).collect();
        if !(2..=6).contains(&seq.len()) {
            return Err(self.err(r.sequence.span(), "a flow `sequence` has 2 to 6 labels, e.g. [\"untrusted_content\", \"destructive\"]"));
        }
        if seq[0] != Label::UntrustedContent {
            return Err(self.err(
                r.sequence.get_ref()[0].span(),
                "a flow `sequence` starts with \"untrusted_content\": flow rules match within a session that untrusted content has tainted",
            ));
        }
        let action = *r.action.get_ref();
        if !matches!(action, RuleAction::Deny | RuleAction::RequireApproval) {
            return Err(self.err(r.action.span(), format!("a flow's `action` is \"deny\" or \"require_approval\", not \"{}\"", action.as_str())));
        }
        Ok(FlowDef { id, sequence: seq, action, mode: r.mode, message: r.message.clone(), markers: r.markers, line: self.line(r.id.span().start) })
    }

    fn name(&self, s: &Spanned<String>, what: &str) -> Result<String> {
        let v = s.get_ref();
        let ok = !v.is_empty()
            && v.len() <= MAX_NAME_LEN
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(self.err(
                s.span(),
                format!(
                    "invalid {what} {v:?}: use 1 to {MAX_NAME_LEN} characters from A-Z, a-z, 0-9, `_`, `-`, `.`"
                ),
            ));
        }
        Ok(v.clone())
    }

    fn pattern(&self, s: &Spanned<String>, kind: PatternKind, what: &str) -> Result<Pattern> {
        let v = s.get_ref();
        if v.is_empty() {
            return Err(self.err(s.span(), format!("`{what}` is empty")));
        }
        if !is_glob(v) {
            let lit = if kind == PatternKind::Host {
                norm_host(v).to_ascii_lowercase()
            } else {
                v.clone()
            };
            return Ok(Pattern::Literal(lit));
        }
        let glob = GlobBuilder::new(v)
            .case_insensitive(kind.case_insensitive())
            .literal_separator(kind.literal_separator())
            .build()
            .map_err(|e| {
                self.err(
                    s.span(),
                    format!("invalid glob in `{what}`: {}", glob_msg(&e)),
                )
            })?;
        Ok(Pattern::Glob(glob.compile_matcher()))
    }

    fn patterns(&self, list: &SList, kind: PatternKind, what: &str) -> Result<Patterns> {
        if list.get_ref().is_empty() {
            return Err(self.err(
                list.span(),
                format!(
                    "`{what}` is an empty list, which matches nothing; remove the key to match everything, or list at least one pattern"
                ),
            ));
        }
        let mut sources = Vec::new();
        let mut literals = Vec::new();
        let mut set = GlobSetBuilder::new();
        let mut any_glob = false;
        for item in list.get_ref() {
            sources.push(item.get_ref().clone());
            match self.pattern(item, kind, what)? {
                Pattern::Literal(l) => literals.push(l),
                Pattern::Glob(m) => {
                    set.add(m.glob().clone());
                    any_glob = true;
                }
            }
        }
        let globs = if any_glob {
            Some(set.build().map_err(|e| {
                self.err(
                    list.span(),
                    format!("invalid glob in `{what}`: {}", glob_msg(&e)),
                )
            })?)
        } else {
            None
        };
        Ok(Patterns::new(sources, literals, globs, kind))
    }

    /// Every name pattern in `list` must refer to something defined: a literal must be a
    /// defined name, a glob must match at least one.
    fn references(&self, list: &SList, defined: &[&str], kind: &str, owner: &str) -> Result<()> {
        for item in list.get_ref() {
            let v = item.get_ref();
            let found = if is_glob(v) {
                match self.pattern(item, PatternKind::Name, kind)? {
                    Pattern::Glob(m) => defined.iter().any(|d| m.is_match(d)),
                    Pattern::Literal(l) => defined.contains(&l.as_str()),
                }
            } else {
                defined.contains(&v.as_str())
            };
            if found {
                continue;
            }
            let mut msg = if is_glob(v) {
                format!("pattern {v:?} in {owner} matches no defined {kind}")
            } else {
                format!("unknown {kind} `{v}` in {owner}")
            };
            if defined.is_empty() {
                msg.push_str(&format!("; no [[{kind}]] is defined"));
            } else {
                msg.push_str(&format!("; defined {kind}s: {}", defined.join(", ")));
                if let Some(best) = closest(v, defined.iter().copied()) {
                    msg.push_str(&format!(" (did you mean `{best}`?)"));
                }
            }
            return Err(self.err(item.span(), msg));
        }
        Ok(())
    }

    fn server(&self, r: RawServer) -> Result<ServerDef> {
        let name = self.name(&r.name, "server name")?;
        let line = self.line(r.name.span().start);
        let matcher = match self.launch_matcher(&name, &r)? {
            Some(m) => m,
            None => self.endpoint_matcher(&format!("server `{name}`"), r.name.span(), &r.url, &r.host, &r.port, &r.path, true)?,
        };
        self.server_rest(r, name, line, matcher)
    }

    /// `package = "npm:NAME"` or `command = "/path/glob"`: a stdio server, named by what
    /// it launches ([`crate::launch::identify`]). Neither may be combined with an endpoint.
    fn launch_matcher(&self, name: &str, r: &RawServer) -> Result<Option<ServerMatcher>> {
        let (key, value) = match (&r.package, &r.command) {
            (None, None) => return Ok(None),
            (Some(_), Some(c)) => {
                return Err(self.err(c.span(), format!("server `{name}` sets both `package` and `command`; use one of them")));
            }
            (Some(p), None) => ("package", p),
            (None, Some(c)) => ("command", c),
        };
        let endpoint_spans = [
            r.url.as_ref().map(|u| u.span()),
            r.host.as_ref().map(|h| h.span()),
            r.port.as_ref().map(|p| p.span()),
            r.path.as_ref().map(|p| p.span()),
        ];
        if let Some(span) = endpoint_spans.into_iter().flatten().next() {
            return Err(self.err(
                span,
                format!("server `{name}` names a stdio launch with `{key}`; `url`, `host`, `port` and `path` name network endpoints and cannot be combined with it"),
            ));
        }
        if key == "command" {
            return Ok(Some(ServerMatcher::Command { path: self.pattern(value, PatternKind::Path, "command")? }));
        }
        let v = value.get_ref();
        let Some((kind, pkg)) = v.split_once(':').and_then(|(k, n)| Some((LaunchKind::from_label(k)?, n))) else {
            return Err(self.err(
                value.span(),
                format!("invalid `package` {v:?}: expected `npm:NAME`, `pypi:NAME`, `pymodule:NAME` or `oci:IMAGE` (globs allowed in NAME)"),
            ));
        };
        if !kind.is_package() {
            return Err(self.err(value.span(), format!("invalid `package` {v:?}: scripts and programs are named with `command = \"PATH\"`")));
        }
        let spanned = Spanned::new(value.span(), pkg.to_string());
        Ok(Some(ServerMatcher::Package { kind, name: self.pattern(&spanned, PatternKind::Name, "package")? }))
    }

    /// `url = ...` or `host` [+ `port`, `path`]: the endpoint of a `[[server]]` or `[[gateway]]`.
    fn endpoint_matcher(
        &self,
        owner: &str,
        name_span: Range<usize>,
        url: &Option<Spanned<String>>,
        host: &Option<Spanned<String>>,
        port: &Option<Spanned<u16>>,
        path: &Option<Spanned<String>>,
        launch_hint: bool,
    ) -> Result<ServerMatcher> {
        Ok(match (url, host) {
            (Some(_), Some(h)) => {
                return Err(self.err(
                    h.span(),
                    format!("{owner} sets both `url` and `host`; use one of them"),
                ));
            }
            (Some(u), None) => {
                if let Some(p) = port {
                    return Err(self.err(
                        p.span(),
                        "`port` cannot be combined with `url` (the URL fixes the port); use `host`, `port` and `path` instead",
                    ));
                }
                if let Some(p) = path {
                    return Err(self.err(
                        p.span(),
                        "`path` cannot be combined with `url` (the URL fixes the path); use `host`, `port` and `path` instead",
                    ));
                }
                self.url(u)?
            }
            (None, Some(h)) => {
                if let Some(p) = port
                    && *p.get_ref() == 0
                {
                    return Err(self.err(p.span(), "`port` must be between 1 and 65535"));
                }
                ServerMatcher::Parts {
                    host: self.pattern(h, PatternKind::Host, "host")?,
                    port: port.as_ref().map(|p| *p.get_ref()),
                    path: match path {
                        Some(p) => {
                            if !p.get_ref().starts_with('/') {
                                return Err(self.err(p.span(), "`path` must start with `/`"));
                            }
                            // Trailing slashes are insignificant on both sides.
                            let trimmed =
                                Spanned::new(p.span(), norm_path(p.get_ref()).to_string());
                            Some(self.pattern(&trimmed, PatternKind::Path, "path")?)
                        }
                        None => None,
                    },
                }
            }
            (None, None) => {
                let stdio = if launch_hint { ", or `package`/`command` for a stdio server" } else { "" };
                return Err(self.err(
                    name_span,
                    format!(
                        "{owner} needs `url` (exact endpoint) or `host` (with optional `port` and `path`) to say which endpoint it is{stdio}"
                    ),
                ));
            }
        })
    }

    fn gateway(&self, g: &RawGateway) -> Result<GatewayDef> {
        let name = self.name(&g.name, "gateway name")?;
        let owner = format!("gateway `{name}`");
        let matcher = self.endpoint_matcher(&owner, g.name.span(), &g.url, &g.host, &g.port, &g.path, false)?;
        if g.covers.get_ref().is_empty() {
            return Err(self.err(
                g.covers.span(),
                format!("{owner}: `covers` is empty; list the remote hosts (globs) that must be reached through this gateway"),
            ));
        }
        Ok(GatewayDef {
            name,
            description: g.description.clone(),
            matcher,
            covers: self.patterns(&g.covers, PatternKind::Host, "covers")?,
            line: self.line(g.name.span().start),
        })
    }

    fn server_rest(&self, r: RawServer, name: String, line: usize, matcher: ServerMatcher) -> Result<ServerDef> {
        let status = r
            .status
            .as_ref()
            .map_or(ServerStatus::Active, |s| *s.get_ref());
        let deprecated_since = match &r.deprecated_since {
            None => None,
            Some(d) => {
                if status != ServerStatus::Deprecated {
                    return Err(self.err(
                        d.span(),
                        "`deprecated_since` needs `status = \"deprecated\"`",
                    ));
                }
                Some(self.date(d)?)
            }
        };
        let tools = match &r.tools {
            None => None,
            Some(list) => {
                if list.get_ref().is_empty() {
                    return Err(self.err(
                        list.span(),
                        "`tools` is an empty list, which would deny every tool; remove the key if the server's tools are not pinned",
                    ));
                }
                let mut out = Vec::new();
                for t in list.get_ref() {
                    if t.get_ref().is_empty() {
                        return Err(self.err(t.span(), "empty tool name"));
                    }
                    out.push(t.get_ref().clone());
                }
                Some(out)
            }
        };
        Ok(ServerDef {
            name,
            description: r.description,
            owner: r.owner,
            status,
            deprecated_since,
            tools,
            mode: r.mode,
            matcher,
            line,
        })
    }

    fn url(&self, u: &Spanned<String>) -> Result<ServerMatcher> {
        let bad = |why: &str| {
            self.err(
                u.span(),
                format!(
                    "invalid `url` {:?}: {why} (expected e.g. \"https://mcp.example.com/mcp\")",
                    u.get_ref()
                ),
            )
        };
        let s = u.get_ref().trim();
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no `scheme://`"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("user information (`user@`) is not supported"));
        }
        let (host, port) = if let Some(after_bracket) = authority.strip_prefix('[') {
            let (h, after) = after_bracket
                .split_once(']')
                .ok_or_else(|| bad("unclosed `[` in an IPv6 host"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after `]`"))?),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if is_glob(host) {
            return Err(bad(
                "`url` is matched exactly; use `host = \"...\"` for patterns",
            ));
        }
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(bad("the port must be a number between 1 and 65535")),
            },
        };
        Ok(ServerMatcher::Url {
            scheme,
            host: norm_host(host).to_ascii_lowercase(),
            port,
            path: norm_path(path).to_string(),
        })
    }

    fn date(&self, d: &Spanned<toml::Value>) -> Result<String> {
        let bad = || self.err(d.span(), "expected a date like 2025-06-30");
        match d.get_ref() {
            toml::Value::Datetime(dt) => match (&dt.date, &dt.time, &dt.offset) {
                (Some(date), None, None) => Ok(format!(
                    "{:04}-{:02}-{:02}",
                    date.year, date.month, date.day
                )),
                _ => Err(bad()),
            },
            toml::Value::String(s) => {
                let b = s.as_bytes();
                let digits = |r: Range<usize>| b[r].iter().all(u8::is_ascii_digit);
                let shape = b.len() == 10
                    && b[4] == b'-'
                    && b[7] == b'-'
                    && digits(0..4)
                    && digits(5..7)
                    && digits(8..10);
                let month: u32 = s.get(5..7).and_then(|m| m.parse().ok()).unwrap_or(0);
                let day: u32 = s.get(8..10).and_then(|m| m.parse().ok()).unwrap_or(0);
                if shape && (1..=12).contains(&month) && (1..=31).contains(&day) {
                    Ok(s.clone())
                } else {
                    Err(bad())
                }
            }
            _ => Err(bad()),
        }
    }

    fn agent(&self, r: RawAgent, servers: &[&str]) -> Result<AgentDef> {
        let name = self.name(&r.name, "agent name")?;
        let line = self.line(r.name.span().start);
        let opt = |p: &Option<Spanned<String>>, kind, what| -> Result<Option<Pattern>> {
            p.as_ref().map(|p| self.pattern(p, kind, what)).transpose()
        };
        let matcher = AgentMatcher {
            exe: opt(&r.exe, PatternKind::Path, "exe")?,
            comm: opt(&r.comm, PatternKind::Name, "comm")?,
            uid: r.uid,
            user: r.user,
            gid: r.gid,
            group: r.group,
            unit: opt(&r.unit, PatternKind::Name, "unit")?,
            cgroup: opt(&r.cgroup, PatternKind::Path, "cgroup")?,
        };
        if matcher.is_empty() {
            return Err(self.err(
                r.name.span(),
                format!(
                    "agent `{name}` has no identity matcher (exe, comm, uid, user, gid, group, unit or cgroup), so it would match every process"
                ),
            ));
        }
        let owner = format!("agent `{name}`");
        let list = |l: &Option<SList>, what: &str, refs: bool| -> Result<Option<Patterns>> {
            match l {
                None => Ok(None),
                Some(l) => {
                    if refs {
                        self.references(l, servers, "server", &owner)?;
                    }
                    Ok(Some(self.patterns(l, PatternKind::Name, what)?))
                }
            }
        };
        Ok(AgentDef {
            servers: list(&r.servers, "servers", true)?,
            deny_servers: list(&r.deny_servers, "deny_servers", true)?,
            tools: list(&r.tools, "tools", false)?,
            deny_tools: list(&r.deny_tools, "deny_tools", false)?,
            name,
            description: r.description,
            matcher,
            line,
        })
    }

    fn rule(&self, r: RawRule, servers: &[&str], agents: &[&str]) -> Result<RuleDef> {
        let id = self.name(&r.id, "rule id")?;
        let line = self.line(r.id.span().start);
        let action = *r.action.get_ref();
        let owner = format!("rule `{id}`");

        if let Some(m) = &r.mode
            && action == RuleAction::Allow
        {
            return Err(self.err(
                m.span(),
                format!(
                    "{owner}: `mode` has no effect on an allow rule (allow never blocks); remove it"
                ),
            ));
        }
        let rate = match (&r.rate, action) {
            (Some(rate), RuleAction::RateLimit) => {
                let count = *rate.get_ref().count.get_ref();
                if !(1..=MAX_RATE_COUNT).contains(&count) {
                    return Err(self.err(
                        rate.get_ref().count.span(),
                        format!("`count` must be between 1 and {MAX_RATE_COUNT}"),
                    ));
                }
                Some(RateDef {
                    count,
                    per: rate.get_ref().per,
                    scope: rate.get_ref().scope,
                })
            }
            (None, RuleAction::RateLimit) => {
                return Err(self.err(
                    r.action.span(),
                    format!(
                        "{owner}: action \"rate_limit\" needs `rate = {{ count = N, per = \"minute\", scope = \"agent\" }}`"
                    ),
                ));
            }
            (Some(rate), other) => {
                return Err(self.err(
                    rate.span(),
                    format!(
                        "{owner}: `rate` only applies to action \"rate_limit\", not \"{}\"",
                        other.as_str()
                    ),
                ));
            }
            (None, _) => None,
        };

        let methods = match &r.methods {
            Some(l) => self.patterns(l, PatternKind::Name, "methods")?,
            None => Patterns::new(
                vec!["tools/call".into()],
                vec!["tools/call".into()],
                None,
                PatternKind::Name,
            ),
        };
        let servers_p = match &r.servers {
            Some(l) => {
                self.references(l, servers, "server", &owner)?;
                Some(self.patterns(l, PatternKind::Name, "servers")?)
            }
            None => None,
        };
        let agents_p = match &r.agents {
            Some(l) => {
                self.references(l, agents, "agent", &owner)?;
                Some(self.patterns(l, PatternKind::Name, "agents")?)
            }
            None => None,
        };
        let tools_p = r
            .tools
            .as_ref()
            .map(|l| self.patterns(l, PatternKind::Name, "tools"))
            .transpose()?;
        let conditions = r
            .when
            .iter()
            .map(|c| self.condition(c.get_ref(), &owner))
            .collect::<Result<Vec<_>>>()?;

        let spec = |p: &Option<Patterns>| p.as_ref().map_or(0, Patterns::specificity);
        let specificity = spec(&servers_p)
            + spec(&tools_p)
            + spec(&agents_p)
            + u32::try_from(conditions.len()).unwrap_or(u32::MAX).min(8);
        Ok(RuleDef {
            id,
            action,
            mode: r.mode.map(|m| *m.get_ref()),
            message: r.message.filter(|m| !m.trim().is_empty()),
            methods,
            servers: servers_p,
            tools: tools_p,
            agents: agents_p,
            conditions,
            rate,
            specificity,
            line,
        })
    }

    fn condition(&self, c: &RawCondition, owner: &str) -> Result<Condition> {
        let ptr = c.pointer.get_ref();
        if let Err(why) = check_pointer(ptr) {
            return Err(self.err(
                c.pointer.span(),
                format!("{owner}: invalid JSON pointer {ptr:?}: {why}"),
            ));
        }
        let (re, negate) = match (&c.matches, &c.not_matches) {
            (Some(m), None) => (m, false),
            (None, Some(m)) => (m, true),
            (Some(_), Some(n)) => {
                return Err(self.err(
                    n.span(),
                    format!("{owner}: a condition takes `matches` or `not_matches`, not both"),
                ));
            }
            (None, None) => {
                return Err(self.err(
                    c.pointer.span(),
                    format!("{owner}: this condition needs `matches = \"regex\"` or `not_matches = \"regex\"`"),
                ));
            }
        };
        let regex = RegexBuilder::new(re.get_ref())
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| {
                self.err(
                    re.span(),
                    format!("{owner}: invalid regex: {}", regex_msg(&e)),
                )
            })?;
        Ok(Condition {
            pointer: ptr.clone(),
            regex,
            negate,
            form: c.form.unwrap_or_default(),
        })
    }
}

fn check_pointer(p: &str) -> std::result::Result<(), &'static str> {
    if p.is_empty() {
        return Ok(());
    }
    if !p.starts_with('/') {
        return Err(
            "a JSON pointer starts with `/` (e.g. \"/path\"), or is \"\" for the whole arguments",
        );
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err("`~` must be followed by 0 (for `~`) or 1 (for `/`)");
        }
    }
    Ok(())
}

fn glob_msg(e: &globset::Error) -> String {
    e.to_string()
}

/// regex errors are multi-line with their own caret; keep the one line that says what is
/// wrong, plus the pattern.
fn regex_msg(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(s) => {
            let why = s
                .lines()
                .find_map(|l| l.trim().strip_prefix("error:"))
                .map(str::trim)
                .unwrap_or(s.as_str());
            why.to_string()
        }
        regex::Error::CompiledTooBig(limit) => {
            format!("the compiled regex exceeds {limit} bytes; simplify it")
        }
        other => other.to_string(),
    }
}
