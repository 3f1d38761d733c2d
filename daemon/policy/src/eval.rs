//! Judging one message: (process identity, server, MCP call) -> [`Decision`].
//!
//! Pure and allocation-light so it can run on every request in the proxy's hot path.
//! The algorithm (documented for operators in docs/policy.md):
//!
//! 1. Every applicable constraint yields a *verdict* (action + mode): a shadow server
//!    under `shadow = "block"`, the agent's server and tool lists, the server's
//!    registered tool list, each matching `[[rule]]`, and, for a `tools/call` nothing
//!    spoke about, the policy `default`.
//! 2. Each verdict has an effect in its mode: an enforced deny blocks, an enforced
//!    `require_approval` holds, an enforced `rate_limit` may block once the counters
//!    are consulted; everything in `warn`/`audit` mode forwards.
//! 3. The strongest effect wins, so a rule in `audit` or `warn` mode can never weaken
//!    what an enforced rule does. Among verdicts with the same effect the action decides
//!    (deny > require_approval > rate_limit > allow), then the stricter mode, then the
//!    more specific match, then file order.

use std::cmp::Reverse;

use mcpwatch_api::ProcessInfo;
use serde_json::Value;

use crate::model::{GatewayDef, 
    Action, AgentDef, Decision, DefaultAction, Effect, Mode, Policy, RateSpec, RuleAction, RuleDef,
    ServerDef, ShadowAction,
};

/// Who is calling.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    /// `None` when the connection could not be attributed to a process.
    pub process: Option<&'a ProcessInfo>,
}

/// Which server is being called.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// `Endpoint::key()`, e.g. `http://127.0.0.2:8765/mcp`; its scheme is used by `url` matchers.
    pub endpoint: &'a str,
    /// Host name (HTTP Host or TLS SNI) or IP; brackets and a trailing dot are ignored.
    pub host: &'a str,
    pub port: u16,
    /// The server's endpoint path (query ignored). For legacy HTTP+SSE servers: the
    /// path of the SSE stream, not the per-session POST path.
    pub path: &'a str,
}

/// The endpoint prefix of a stdio server: `stdio://npm:@scope/name`.
pub const STDIO_SCHEME: &str = "stdio://";

impl<'a> Target<'a> {
    /// A stdio server as a policy target: `endpoint` must be [`stdio_endpoint`] of its
    /// launch; host, port and path are empty, so no network matcher can match it.
    pub fn stdio(endpoint: &'a str) -> Target<'a> {
        Target { endpoint, host: "", port: 0, path: "" }
    }

    /// The launch kind and name of a stdio target, `None` for network targets.
    pub fn stdio_launch(&self) -> Option<(crate::launch::LaunchKind, &'a str)> {
        let rest = self.endpoint.strip_prefix(STDIO_SCHEME)?;
        let (kind, name) = rest.split_once(':')?;
        Some((crate::launch::LaunchKind::from_label(kind)?, name))
    }
}

/// The endpoint key of a stdio server (`stdio://npm:@scope/name`): what the audit
/// record's `server` endpoint and [`Target::stdio`] carry for it.
pub fn stdio_endpoint(l: &crate::launch::Launch) -> String {
    format!("{STDIO_SCHEME}{}", l.key())
}

/// What is being asked.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// JSON-RPC method, e.g. `tools/call`, `resources/read`, `initialize`.
    pub method: &'a str,
    /// Tool name (`tools/call`), resource URI (`resources/read`), prompt name (`prompts/get`).
    pub name: Option<&'a str>,
    /// `params.arguments` for `tools/call` and `prompts/get`; `params` for other methods.
    pub arguments: Option<&'a Value>,
}

const TOOLS_CALL: &str = "tools/call";
/// Attacker-controlled names are cut to this many characters in reasons and counter keys.
const MAX_SHOWN: usize = 200;

#[derive(Debug, Clone, Copy)]
enum Source<'p> {
    Rule(&'p RuleDef),
    AgentServers(&'p AgentDef),
    AgentDenyServers(&'p AgentDef),
    AgentTools(&'p AgentDef),
    AgentDenyTools(&'p AgentDef),
    ServerTools(&'p ServerDef),
    Shadow,
    Default,
}

/// Implicit (structural) verdicts are cited before rules when everything else ties.
const SPEC_SHADOW: u32 = 1000;
const SPEC_AGENT_SERVERS: u32 = 900;
const SPEC_SERVER_TOOLS: u32 = 800;
const SPEC_AGENT_TOOLS: u32 = 700;

#[derive(Debug, Clone, Copy)]
struct Verdict<'p> {
    source: Source<'p>,
    action: RuleAction,
    mode: Mode,
    specificity: u32,
    order: usize,
}

/// Effect rank before rate counters are consulted: block 3, hold 2, maybe-block 1, forward 0.
pub(crate) fn effect_rank(action: RuleAction, mode: Mode) -> u8 {
    match (action, mode) {
        (RuleAction::Deny, Mode::Enforce) => 3,
        (RuleAction::RequireApproval, Mode::Enforce) => 2,
        (RuleAction::RateLimit, Mode::Enforce) => 1,
        _ => 0,
    }
}

impl Verdict<'_> {
    fn effect_rank(&self) -> u8 {
        effect_rank(self.action, self.mode)
    }

    fn key(&self) -> (u8, u8, u8, u32, Reverse<usize>) {
        (
            self.effect_rank(),
            self.action.rank(),
            self.mode.rank(),
            self.specificity,
            Reverse(self.order),
        )
    }

    fn alerts(&self) -> bool {
        self.mode != Mode::Audit
            && matches!(self.action, RuleAction::Deny | RuleAction::RequireApproval)
    }

    fn id(&self) -> String {
        match self.source {
            Source::Rule(r) => r.id.clone(),
            Source::AgentServers(a)
            | Source::AgentDenyServers(a)
            | Source::AgentTools(a)
            | Source::AgentDenyTools(a) => format!("agent:{}", a.name),
            Source::ServerTools(s) => format!("server:{}", s.name),
            Source::Shadow => "policy:shadow".into(),
            Source::Default => "policy:default".into(),
        }
    }
}

struct Judged<'p> {
    verdicts: Vec<Verdict<'p>>,
    server: Option<&'p ServerDef>,
    agent: Option<&'p AgentDef>,
}

impl Policy {
    /// The registry entry for this endpoint (the most specific match; file order breaks
    /// ties), or `None` for a shadow server.
    /// A registry entry naming a server at `host:port`, whatever its path or scheme (the
    /// destination of a `CONNECT` tunnel, which says no more).
    pub fn server_at(&self, host: &str, port: u16) -> Option<&ServerDef> {
        self.servers.iter().find(|s| s.matcher.serves_at(host, port))
    }

    pub fn server_for(&self, t: &Target<'_>) -> Option<&ServerDef> {
        self.servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.matcher.matches(t))
            .max_by_key(|(i, s)| (s.matcher.names_host(t), s.matcher.specificity(), Reverse(*i)))
            .map(|(_, s)| s)
    }

    /// The gateway the target *is* (its endpoint matches a `[[gateway]]`), if any.
    pub fn gateway_for(&self, t: &Target<'_>) -> Option<&GatewayDef> {
        self.gateways.iter().find(|g| g.matcher.matches(t))
    }

    /// The gateway a direct call to `t` goes around: `t`'s host is covered by a
    /// `[[gateway]]` and `t` is not that gateway. Stdio targets are never bypasses.
    pub fn bypassed_gateway(&self, t: &Target<'_>) -> Option<&GatewayDef> {
        if t.stdio_launch().is_some() || self.gateway_for(t).is_some() {
            return None;
        }
        let host = crate::matcher::norm_target_host(t.host);
        self.gateways.iter().find(|g| g.covers.matches(host))
    }

    /// Every `[[gateway]]`, in file order.
    pub fn gateways(&self) -> &[GatewayDef] {
        &self.gateways
    }

    /// The agent the process is identified as (the most specific match; file order
    /// breaks ties), or `None`.
    pub fn agent_for(&self, s: &Subject<'_>) -> Option<&AgentDef> {
        let p = s.process?;
        self.agents
            .iter()
            .enumerate()
            .filter(|(_, a)| a.matcher.matches(p))
            .max_by_key(|(i, a)| (a.matcher.specificity(), Reverse(*i)))
            .map(|(_, a)| a)
    }

    /// Judge one client->server message.
    pub fn evaluate(&self, s: &Subject<'_>, t: &Target<'_>, c: &Call<'_>) -> Decision {
        let judged = self.judge(s, t, c.method, c.name, c.arguments, false);
        self.decide(s, t, c, judged)
    }

    /// Whether `tool` stays in this caller's `tools/list` result: false only when every
    /// call to it would be blocked whatever the arguments (deny rules with argument
    /// conditions do not hide a tool; nothing in audit or warn mode hides one).
    pub fn tool_visible(&self, s: &Subject<'_>, t: &Target<'_>, tool: &str) -> bool {
        let judged = self.judge(s, t, TOOLS_CALL, Some(tool), None, true);
        judged.verdicts.iter().map(Verdict::effect_rank).max() != Some(3)
    }

    /// Collect every verdict that applies. With `visibility`, conditional rules are
    /// judged for the most permissive arguments: conditional allows apply, conditional
    /// denies/approvals/limits do not.
    fn judge<'p>(
        &'p self,
        s: &Subject<'_>,
        t: &Target<'_>,
        method: &str,
        name: Option<&str>,
        args: Option<&Value>,
        visibility: bool,
    ) -> Judged<'p> {
        let server = self.server_for(t);
        let agent = self.agent_for(s);
        let base_mode = server.and_then(|s| s.mode).unwrap_or(self.mode);
        let server_name = server.map(|s| s.name.as_str());
        let mut verdicts = Vec::new();
        let implicit = |source, action, mode, specificity| Verdict {
            source,
            action,
            mode,
            specificity,
            order: usize::MAX,
        };

        if server.is_none() && self.shadow == ShadowAction::Block {
            verdicts.push(implicit(
                Source::Shadow,
                RuleAction::Deny,
                self.mode,
                SPEC_SHADOW,
            ));
        }
        if let Some(a) = agent {
            if let Some(deny) = &a.deny_servers
                && server_name.is_some_and(|n| deny.matches(n))
            {
                verdicts.push(implicit(
                    Source::AgentDenyServers(a),
                    RuleAction::Deny,
                    base_mode,
                    SPEC_AGENT_SERVERS,
                ));
            }
            if let Some(allow) = &a.servers
                && !server_name.is_some_and(|n| allow.matches(n))
            {
                verdicts.push(implicit(
                    Source::AgentServers(a),
                    RuleAction::Deny,
                    base_mode,
                    SPEC_AGENT_SERVERS,
                ));
            }
        }
        if method == TOOLS_CALL {
            let tool = name.unwrap_or("");
            if let Some(a) = agent {
                if a.deny_tools.as_ref().is_some_and(|d| d.matches(tool)) {
                    verdicts.push(implicit(
                        Source::AgentDenyTools(a),
                        RuleAction::Deny,
                        base_mode,
                        SPEC_AGENT_TOOLS,
                    ));
                }
                if let Some(allow) = &a.tools {
                    let action = if allow.matches(tool) {
                        RuleAction::Allow
                    } else {
                        RuleAction::Deny
                    };
                    verdicts.push(implicit(
                        Source::AgentTools(a),
                        action,
                        base_mode,
                        SPEC_AGENT_TOOLS,
                    ));
                }
            }
            if let Some(sd) = server
                && let Some(list) = &sd.tools
                && !list.iter().any(|t| t == tool)
            {
                verdicts.push(implicit(
                    Source::ServerTools(sd),
                    RuleAction::Deny,
                    base_mode,
                    SPEC_SERVER_TOOLS,
                ));
            }
        }
        for (order, r) in self.rules.iter().enumerate() {
            if !r.methods.matches(method) {
                continue;
            }
            if let Some(p) = &r.servers
                && !server_name.is_some_and(|n| p.matches(n))
            {
                continue;
            }
            if let Some(p) = &r.agents
                && !agent.is_some_and(|a| p.matches(&a.name))
            {
                continue;
            }
            if let Some(p) = &r.tools
                && !name.is_some_and(|n| p.matches(n))
            {
                continue;
            }
            if !r.conditions.is_empty() {
                let applies = if visibility {
                    r.action == RuleAction::Allow
                } else {
                    r.conditions.iter().all(|c| c.holds(args, r.action != RuleAction::Allow))
                };
                if !applies {
                    continue;
                }
            }
            verdicts.push(Verdict {
                source: Source::Rule(r),
                action: r.action,
                mode: r.mode.unwrap_or(base_mode),
                specificity: r.specificity,
                order,
            });
        }
        if verdicts.is_empty() && method == TOOLS_CALL {
            let action = match self.default {
                DefaultAction::Allow => RuleAction::Allow,
                DefaultAction::Deny => RuleAction::Deny,
            };
            verdicts.push(implicit(Source::Default, action, base_mode, 0));
        }
        Judged {
            verdicts,
            server,
            agent,
        }
    }

    fn decide(&self, s: &Subject<'_>, t: &Target<'_>, c: &Call<'_>, j: Judged<'_>) -> Decision {
        let Judged {
            mut verdicts,
            server,
            agent,
        } = j;
        let shadow = server.is_none();
        let shadow_alert = shadow && self.shadow == ShadowAction::Alert;
        verdicts.sort_by_key(|v| Reverse(v.key()));
        let ctx = Ctx {
            policy: self,
            subject: s,
            target: t,
            call: c,
            server,
            agent,
        };

        let Some(decisive) = verdicts.first().copied() else {
            // Not a tools/call and nothing speaks about it (initialize, ping, tools/list...).
            let mut reason = format!("{} is not restricted by any rule", q(c.method));
            if shadow {
                reason.push_str(&ctx.shadow_note());
            }
            return Decision {
                action: Action::Allow,
                effective: Effect::Forward,
                mode: server.and_then(|s| s.mode).unwrap_or(self.mode),
                matched_rules: Vec::new(),
                reason,
                shadow,
                alert: shadow_alert,
                server: server.map(|s| s.name.clone()),
                agent: agent.map(|a| a.name.clone()),
                rate_limits: Vec::new(),
            };
        };

        let effective = match decisive.effect_rank() {
            3 => Effect::Block,
            2 => Effect::Hold,
            _ => Effect::Forward,
        };
        let rate_limits: Vec<RateSpec> = if effective == Effect::Forward {
            verdicts
                .iter()
                .filter_map(|v| match v.source {
                    Source::Rule(r) => r.rate.map(|rate| RateSpec {
                        rule: r.id.clone(),
                        count: rate.count,
                        per: rate.per,
                        scope: rate.scope,
                        key: ctx.rate_key(rate.scope),
                        mode: v.mode,
                    }),
                    _ => None,
                })
                .collect()
        } else {
            Vec::new()
        };
        let action = match decisive.action {
            RuleAction::Allow => Action::Allow,
            RuleAction::Deny => Action::Deny,
            RuleAction::RequireApproval => Action::RequireApproval,
            RuleAction::RateLimit => match rate_limits.first() {
                // Decisive verdicts sort first, so the first spec is the decisive rule's.
                Some(spec) => Action::RateLimit(spec.clone()),
                None => Action::Allow,
            },
        };
        let mut matched_rules: Vec<String> = Vec::with_capacity(verdicts.len());
        for v in &verdicts {
            let id = v.id();
            if !matched_rules.contains(&id) {
                matched_rules.push(id);
            }
        }
        let reason = ctx.reason(&decisive, effective);
        Decision {
            action,
            effective,
            mode: decisive.mode,
            matched_rules,
            reason,
            shadow,
            alert: shadow_alert || verdicts.iter().any(Verdict::alerts),
            server: server.map(|s| s.name.clone()),
            agent: agent.map(|a| a.name.clone()),
            rate_limits,
        }
    }
}

/// Everything the reason text and counter keys need.
struct Ctx<'a, 'p> {
    policy: &'p Policy,
    subject: &'a Subject<'a>,
    target: &'a Target<'a>,
    call: &'a Call<'a>,
    server: Option<&'p ServerDef>,
    agent: Option<&'p AgentDef>,
}

/// Quote and cut an attacker-controlled string for human text (control characters escaped).
pub(crate) fn q(s: &str) -> String {
    let s = cut(s);
    // What `{:?}` writes, without the formatting machinery for the usual name or
    // endpoint: printable ASCII other than a quote or a backslash is written as it is.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return out;
    }
    format!("{s:?}")
}

/// `scheme://host:port/path` with the host as registry matching reads it and the path as
/// servers route it ([`crate::matcher::norm_path`]).
fn canonical_endpoint(t: &Target<'_>) -> String {
    let scheme = t.endpoint.split_once("://").map_or("", |(s, _)| s).to_ascii_lowercase();
    if t.stdio_launch().is_some() {
        return t.endpoint.to_string();
    }
    let host = crate::matcher::canonical_host(t.host);
    format!("{scheme}://{host}:{}{}", t.port, crate::matcher::norm_path(t.path))
}

fn cut(s: &str) -> &str {
    mcpwatch_mcp::jsonrpc::first_chars(s, MAX_SHOWN)
}

impl Ctx<'_, '_> {
    fn what(&self) -> String {
        match (self.call.method, self.call.name) {
            (TOOLS_CALL, Some(n)) => format!("tool {}", q(n)),
            (m, Some(n)) => format!("{} {}", m, q(n)),
            (m, None) => q(m),
        }
    }

    fn server_label(&self) -> String {
        match self.server {
            Some(s) => format!("server {}", q(&s.name)),
            None => format!("unregistered server {}", q(self.target.endpoint)),
        }
    }

    fn agent_label(&self) -> String {
        match (self.agent, self.subject.process) {
            (Some(a), _) => format!("agent {}", q(&a.name)),
            (None, Some(p)) => format!("unidentified process {}", q(&p.label())),
            (None, None) => "an unidentified client".into(),
        }
    }

    fn shadow_note(&self) -> String {
        format!(
            " (note: {} is not in the server registry: shadow server)",
            q(self.target.endpoint)
        )
    }

    fn how_to_ask(&self) -> String {
        match &self.policy.contact {
            Some(c) => format!(" To request access, contact {c}."),
            None => format!(
                " To request access, ask the owner of the mcpwatch policy ({}).",
                self.policy.file
            ),
        }
    }

    fn rate_key(&self, scope: crate::model::RateScope) -> String {
        use crate::model::RateScope;
        match scope {
            // An unidentified process counts with every other unidentified process of
            // its user: its executable path or name is its own to choose (a copy of the
            // interpreter elsewhere would be a fresh counter).
            RateScope::Agent => match (self.agent, self.subject.process) {
                (Some(a), _) => format!("agent:{}", a.name),
                (None, Some(p)) => format!("unidentified:uid:{}", p.uid),
                (None, None) => "unknown".into(),
            },
            // A shadow server by its endpoint as servers route it: a spelling of the
            // path or host is not a fresh counter.
            RateScope::Tool => format!("tool:{}", self.server_and_tool()),
            RateScope::Uid => match self.subject.process {
                Some(p) => format!("uid:{}", p.uid),
                None => "uid:unknown".into(),
            },
            RateScope::Aggregate => "all".into(),
            // The same caller making the same call again: arguments compared canonically
            // (key order and whitespace do not make a new call).
            RateScope::Call => {
                let caller = self.rate_key(RateScope::Agent);
                let args = self.call.arguments.map_or_else(|| "-".to_string(), |a| crate::approval::canonical_hash(a)[..32].to_string());
                format!("call:{caller}/{}/{args}", self.server_and_tool())
            }
        }
    }

    /// `server/tool` of a rate key: the registry name, or a shadow server's endpoint as
    /// servers route it (a spelling of the path or host is not a fresh counter).
    fn server_and_tool(&self) -> String {
        let tool = cut(self.call.name.unwrap_or(self.call.method));
        match self.server {
            Some(s) => format!("{}/{tool}", s.name),
            None => format!("{}/{tool}", cut(&canonical_endpoint(self.target))),
        }
    }

    fn reason(&self, v: &Verdict<'_>, effective: Effect) -> String {
        let tool = q(self.call.name.unwrap_or(""));
        let mut out = match v.source {
            Source::Rule(r) => {
                let msg = r.message.as_deref();
                let about = format!(
                    "{} on {} by {}",
                    self.what(),
                    self.server_label(),
                    self.agent_label()
                );
                match r.action {
                    RuleAction::Deny => match msg {
                        Some(m) => format!("denied by policy rule \"{}\": {m}", r.id),
                        None => format!("denied by policy rule \"{}\": {about}", r.id),
                    },
                    RuleAction::RequireApproval => {
                        let mut s = format!(
                            "policy rule \"{}\" requires human approval for {about}",
                            r.id
                        );
                        if let Some(m) = msg {
                            s.push_str(&format!(" ({m})"));
                        }
                        if effective == Effect::Hold {
                            s.push_str(&format!(
                                "; the call is held until an operator runs `mcpwatch approve` or `mcpwatch deny`, and is denied after {} s",
                                self.policy.approval_timeout.as_secs()
                            ));
                        }
                        s
                    }
                    RuleAction::RateLimit => {
                        let mut s = format!("policy rule \"{}\" rate-limits {about}", r.id);
                        if let Some(rate) = r.rate {
                            s.push_str(&format!(
                                " to {} per {} per {}",
                                rate.count,
                                rate.per.as_str(),
                                rate.scope.as_str()
                            ));
                        }
                        if let Some(m) = msg {
                            s.push_str(&format!(" ({m})"));
                        }
                        s
                    }
                    RuleAction::Allow => match msg {
                        Some(m) => format!("allowed by policy rule \"{}\": {m}", r.id),
                        None => format!("allowed by policy rule \"{}\"", r.id),
                    },
                }
            }
            Source::AgentDenyServers(a) => {
                format!(
                    "agent {} may not use {} (deny_servers)",
                    q(&a.name),
                    self.server_label()
                )
            }
            Source::AgentServers(a) => format!(
                "agent {} may only use servers [{}]; {} is not one of them",
                q(&a.name),
                a.allowed_servers().unwrap_or_default().join(", "),
                self.server_label()
            ),
            Source::AgentDenyTools(a) => {
                format!("agent {} may not call tool {tool} (deny_tools)", q(&a.name))
            }
            Source::AgentTools(a) if v.action == RuleAction::Allow => {
                format!("tool {tool} is allowed for agent {}", q(&a.name))
            }
            Source::AgentTools(a) => format!(
                "agent {} may only call tools [{}]; tool {tool} is not one of them",
                q(&a.name),
                a.allowed_tools().unwrap_or_default().join(", ")
            ),
            Source::ServerTools(s) => format!(
                "tool {tool} is not one of the tools registered for server {}",
                q(&s.name)
            ),
            Source::Shadow => format!(
                "{} is not in the server registry (shadow server) and the policy blocks shadow servers",
                q(self.target.endpoint)
            ),
            Source::Default if v.action == RuleAction::Deny => format!(
                "no policy rule allows {} on {} by {}, and the policy default is deny",
                self.what(),
                self.server_label(),
                self.agent_label()
            ),
            Source::Default => "no policy rule matched; the policy default is allow".into(),
        };
        if v.action != RuleAction::Allow {
            match v.mode {
                Mode::Audit => out.push_str(" [audit mode: logged only]"),
                Mode::Warn => out.push_str(" [warn mode: not blocked]"),
                Mode::Enforce => {}
            }
        }
        if effective == Effect::Block {
            if !out.ends_with('.') {
                out.push('.');
            }
            out.push_str(&self.how_to_ask());
        }
        if self.server.is_none() && !matches!(v.source, Source::Shadow) {
            out.push_str(&self.shadow_note());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_writes_what_debug_writes() {
        let mut samples: Vec<String> = (0u8..=0x7f).map(|b| format!("a{}b", b as char)).collect();
        samples.extend(
            ["", "echo", "http://127.0.0.1:8080/mcp", "say \"hi\"", "a\\b", "tab\there", "é", "\u{200b}x", "\u{7f}", "line\nbreak", "'single'"]
                .map(String::from),
        );
        samples.push("x".repeat(MAX_SHOWN + 10));
        for s in &samples {
            assert_eq!(q(s), format!("{:?}", cut(s)), "for {s:?}");
        }
    }
}
