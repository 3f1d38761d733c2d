//! The vocabulary of a policy: modes, actions, decisions and the compiled definitions.
//!
//! Kept apart from parsing and evaluation so the daemon, the CLI and the audit code can
//! name these types (and serialize them into audit records) without caring how a policy
//! file is read or judged.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::matcher::{AgentMatcher, Patterns, ServerMatcher};

pub use mcpwatch_api::{Effect, Mode};

/// What happens to MCP traffic to a server that is not in the `[[server]]` registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowAction {
    /// Mark the traffic as shadow in the audit log, nothing else.
    Allow,
    /// Mark it and raise an alert (in every mode); rules still apply.
    Alert,
    /// Deny every message to the server (subject to the global mode).
    Block,
}

/// What a `tools/call` that no rule and no agent tool list speaks about gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    Allow,
    Deny,
}

/// The `action` of a `[[rule]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    Allow,
    Deny,
    RequireApproval,
    RateLimit,
}

impl RuleAction {
    /// Precedence: deny > require_approval > rate_limit > allow.
    pub(crate) fn rank(self) -> u8 {
        match self {
            RuleAction::Allow => 0,
            RuleAction::RateLimit => 1,
            RuleAction::RequireApproval => 2,
            RuleAction::Deny => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Allow => "allow",
            RuleAction::Deny => "deny",
            RuleAction::RequireApproval => "require_approval",
            RuleAction::RateLimit => "rate_limit",
        }
    }
}

/// Rate-limit window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// Meant for tests and demos; production limits are per minute or hour.
    Second,
    Minute,
    Hour,
}

impl Per {
    pub fn window_ms(self) -> u64 {
        match self {
            Per::Second => 1_000,
            Per::Minute => 60_000,
            Per::Hour => 3_600_000,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Per::Second => "second",
            Per::Minute => "minute",
            Per::Hour => "hour",
        }
    }
}

/// Who shares one rate-limit counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateScope {
    /// One counter per agent (an unidentified process counts under its executable).
    Agent,
    /// One counter per (server, tool), shared by every caller.
    Tool,
    /// One counter per Unix uid.
    Uid,
    /// One counter for every call the rule matches, across all servers and callers.
    Aggregate,
    /// One counter per identical call: caller (as [`RateScope::Agent`] counts it), server,
    /// tool and the hash of the canonical arguments. A loop repeating the same call trips
    /// it; calls with other arguments count apart (threat case RE-007).
    Call,
}

impl RateScope {
    pub fn as_str(self) -> &'static str {
        match self {
            RateScope::Agent => "agent",
            RateScope::Tool => "tool",
            RateScope::Uid => "uid",
            RateScope::Aggregate => "aggregate",
            RateScope::Call => "call",
        }
    }
}

/// One rate limit that applies to one call: which rule, how much, and which counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateSpec {
    /// Id of the `rate_limit` rule; with `key` it names the counter in [`crate::RateLimiter`].
    pub rule: String,
    pub count: u32,
    pub per: Per,
    pub scope: RateScope,
    /// The counter within the rule, e.g. `agent:reader`, `uid:1000`, `tool:files/read_file`, `all`.
    pub key: String,
    /// The rule's effective mode: only `enforce` limits block.
    pub mode: Mode,
}

/// The policy's verdict on a message, before the rollout mode is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
    RequireApproval,
    RateLimit(RateSpec),
}

impl Action {
    /// `allow`, `deny`, `require_approval` or `rate_limit` (what `mcpwatch audit --decision` filters on).
    pub fn label(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::RequireApproval => "require_approval",
            Action::RateLimit(_) => "rate_limit",
        }
    }

    /// The kind an audit record carries.
    pub fn kind(&self) -> mcpwatch_api::ActionKind {
        use mcpwatch_api::ActionKind;
        match self {
            Action::Allow => ActionKind::Allow,
            Action::Deny => ActionKind::Deny,
            Action::RequireApproval => ActionKind::RequireApproval,
            Action::RateLimit(_) => ActionKind::RateLimit,
        }
    }
}

/// The outcome of [`crate::Policy::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The decisive verdict (see docs/policy.md for how it is chosen).
    pub action: Action,
    /// What to do. For a `RateLimit` action this is `Forward` until
    /// [`crate::RateLimiter::apply`] has consulted the counters.
    pub effective: Effect,
    /// The mode the decisive verdict was judged in.
    pub mode: Mode,
    /// Every rule that matched, decisive first. Implicit verdicts have ids that cannot
    /// clash with rule ids: `agent:NAME` (an agent's server/tool lists), `server:NAME`
    /// (a server's registered tool list), `policy:shadow`, `policy:default`.
    pub matched_rules: Vec<String>,
    /// Human text: which rule decided and how to ask for access (safe to show the client).
    pub reason: String,
    /// The server is not in the registry.
    pub shadow: bool,
    /// An operator should be alerted (warn-mode violation, enforced block or hold,
    /// shadow server with `shadow = "alert"`, a rate limit exceeded in warn mode).
    pub alert: bool,
    /// Registry name of the server, if registered.
    pub server: Option<String>,
    /// Name of the agent the process was identified as, if any.
    pub agent: Option<String>,
    /// Every rate limit that applies to this call (decisive one included), for
    /// [`crate::RateLimiter::apply`]. Empty when the call is blocked or held anyway.
    pub rate_limits: Vec<RateSpec>,
}

/// Lifecycle of a registered server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ServerStatus {
    #[default]
    Active,
    Deprecated,
}

/// A compiled `[[server]]` entry.
#[derive(Debug, Clone)]
pub struct ServerDef {
    pub name: String,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub status: ServerStatus,
    /// `YYYY-MM-DD`, only for deprecated servers.
    pub deprecated_since: Option<String>,
    /// The tools the server is expected to offer (exact names). When set, calls to any
    /// other tool are denied and other tools are hidden from `tools/list`.
    pub tools: Option<Vec<String>>,
    /// Mode for rules without their own mode and for implicit verdicts on this server.
    pub mode: Option<Mode>,
    pub(crate) matcher: ServerMatcher,
    /// Line of the entry in the policy file (for messages).
    pub line: usize,
}

impl ServerDef {
    /// The host name the entry names its server by (a `url`'s host, or a literal `host`
    /// that is a name, not an address or a glob), with its port when the entry says one:
    /// what a resolver can map to the addresses the server is reached at.
    pub fn host_name(&self) -> Option<(&str, Option<u16>)> {
        let (host, port) = match &self.matcher {
            ServerMatcher::Url { host, port, .. } => (host.as_str(), Some(*port)),
            ServerMatcher::Parts { host: crate::matcher::Pattern::Literal(host), port, .. } => (host.as_str(), *port),
            _ => return None,
        };
        (host.parse::<std::net::IpAddr>().is_err() && !host.is_empty()).then_some((host, port))
    }
}

/// A compiled `[[gateway]]` entry: the company's MCP gateway and the hosts it fronts.
#[derive(Debug, Clone)]
pub struct GatewayDef {
    pub name: String,
    pub description: Option<String>,
    pub(crate) matcher: ServerMatcher,
    pub(crate) covers: Patterns,
    pub line: usize,
}

impl GatewayDef {
    /// The `covers` host patterns as written.
    pub fn covers(&self) -> &[String] {
        self.covers.sources()
    }
}

/// A compiled `[[agent]]` entry.
#[derive(Debug, Clone)]
pub struct AgentDef {
    pub name: String,
    pub description: Option<String>,
    pub(crate) matcher: AgentMatcher,
    /// Allowed servers (registry-name globs); `None` = any server, including shadow ones.
    pub(crate) servers: Option<Patterns>,
    pub(crate) deny_servers: Option<Patterns>,
    /// Allowed tools (globs); `None` = any tool.
    pub(crate) tools: Option<Patterns>,
    pub(crate) deny_tools: Option<Patterns>,
    pub line: usize,
}

impl AgentDef {
    /// The allowed-server patterns as written, if the agent is restricted.
    pub fn allowed_servers(&self) -> Option<&[String]> {
        self.servers.as_ref().map(|p| p.sources())
    }

    /// The allowed-tool patterns as written, if the agent is restricted.
    pub fn allowed_tools(&self) -> Option<&[String]> {
        self.tools.as_ref().map(|p| p.sources())
    }
}

/// A compiled `[[rule]]`.
#[derive(Debug, Clone)]
pub struct RuleDef {
    pub id: String,
    pub action: RuleAction,
    /// The rule's own mode, if it sets one.
    pub mode: Option<Mode>,
    pub message: Option<String>,
    pub(crate) methods: Patterns,
    pub(crate) servers: Option<Patterns>,
    pub(crate) tools: Option<Patterns>,
    pub(crate) agents: Option<Patterns>,
    pub(crate) conditions: Vec<crate::matcher::Condition>,
    pub(crate) rate: Option<RateDef>,
    /// Higher = narrower match; breaks ties between rules with the same action.
    pub(crate) specificity: u32,
    pub line: usize,
}

impl RuleDef {
    /// `(count, per, scope)` of a `rate_limit` rule.
    pub fn rate(&self) -> Option<(u32, Per, RateScope)> {
        self.rate.map(|r| (r.count, r.per, r.scope))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateDef {
    pub count: u32,
    pub per: Per,
    pub scope: RateScope,
}

/// What to do with a tool whose definition carries hidden-instruction signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoisonAction {
    /// Record and alert; the tool stays visible.
    Alert,
    /// Remove the tool from `tools/list` and deny calls to it (in enforce mode).
    Strip,
}

/// Lowest poisoning severity that triggers [`PoisonAction`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum MinSeverity {
    Low,
    Medium,
    High,
}

/// What to do when a pinned tool definition changes (a rug pull).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinAction {
    /// Record the change with a diff and alert.
    Alert,
    /// Hide the changed tool (and deny calls to it) until the change is accepted.
    Hide,
    /// Deny every call to the server until the change is accepted.
    Block,
}

/// Which form of a string argument a `[[rule.when]]` condition matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionForm {
    /// Lexically normalised (`.`/`..` resolved, `//` collapsed; see
    /// [`crate::normalize_path`]). The default.
    #[default]
    Normalized,
    /// Exactly as the client sent it.
    Raw,
}

/// Who may answer a held call (`[approvals] approvers`): `uid:N`, `user:NAME`,
/// `group:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approver {
    Uid(u32),
    User(String),
    Group(String),
}

impl Approver {
    /// Parse `uid:1000`, `user:alice`, `group:secops`.
    pub fn parse(s: &str) -> Result<Approver, String> {
        let name_ok = |n: &str| {
            !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
        };
        match s.split_once(':') {
            Some(("uid", n)) => n.parse::<u32>().map(Approver::Uid).map_err(|_| format!("`{s}`: uid must be a number, e.g. \"uid:1000\"")),
            Some(("user", n)) if name_ok(n) => Ok(Approver::User(n.to_string())),
            Some(("group", n)) if name_ok(n) => Ok(Approver::Group(n.to_string())),
            Some(("user" | "group", _)) => Err(format!("`{s}`: invalid user or group name")),
            _ => Err(format!("`{s}`: an approver is \"uid:N\", \"user:NAME\" or \"group:NAME\"")),
        }
    }

    /// Does this entry name the identity? `groups` are the names of the primary and
    /// supplementary groups.
    pub fn names(&self, uid: u32, user: Option<&str>, groups: &[String]) -> bool {
        match self {
            Approver::Uid(u) => *u == uid,
            Approver::User(n) => user == Some(n.as_str()),
            Approver::Group(g) => groups.iter().any(|x| x == g),
        }
    }
}

impl std::fmt::Display for Approver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Approver::Uid(u) => write!(f, "uid:{u}"),
            Approver::User(n) => write!(f, "user:{n}"),
            Approver::Group(g) => write!(f, "group:{g}"),
        }
    }
}

/// The `[inspect]` settings of a policy.
#[derive(Debug, Clone)]
pub struct InspectSettings {
    pub detectors: mcpwatch_inspect::InspectConfig,
    pub poisoning: PoisonAction,
    pub poisoning_min_severity: MinSeverity,
    pub pinning: PinAction,
    pub result_injection: bool,
}

impl Default for InspectSettings {
    fn default() -> Self {
        InspectSettings {
            detectors: mcpwatch_inspect::InspectConfig::default(),
            poisoning: PoisonAction::Strip,
            poisoning_min_severity: MinSeverity::Medium,
            pinning: PinAction::Alert,
            result_injection: true,
        }
    }
}

/// A compiled policy. Cheap to share behind an `Arc`; evaluation takes `&self`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) file: String,
    pub(crate) mode: Mode,
    pub(crate) shadow: ShadowAction,
    pub(crate) default: DefaultAction,
    pub(crate) approval_timeout: Duration,
    /// `[approvals] approvers`; empty: anyone the control socket admits, except the
    /// caller itself and processes inside the watched cgroup.
    pub(crate) approvers: Vec<Approver>,
    pub(crate) contact: Option<String>,
    pub(crate) servers: Vec<ServerDef>,
    pub(crate) agents: Vec<AgentDef>,
    pub(crate) rules: Vec<RuleDef>,
    pub(crate) labels: Vec<crate::flow::LabelDef>,
    pub(crate) flows: Vec<crate::flow::FlowDef>,
    pub(crate) gateways: Vec<GatewayDef>,
    pub(crate) inspect: InspectSettings,
}

impl Policy {
    /// The `[inspect]` settings (defaults when the table is absent).
    pub fn inspect(&self) -> &InspectSettings {
        &self.inspect
    }

    /// The file name given to [`crate::parse`].
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Global mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn shadow(&self) -> ShadowAction {
        self.shadow
    }

    pub fn default_action(&self) -> DefaultAction {
        self.default
    }

    /// How long a `require_approval` call is held before it is denied (default 50 s).
    pub fn approval_timeout(&self) -> Duration {
        self.approval_timeout
    }

    /// `[approvals] approvers`: who may approve held calls (empty: not restricted by the
    /// policy; the daemon still refuses self-approval).
    pub fn approvers(&self) -> &[Approver] {
        &self.approvers
    }

    /// Who to ask for access (`contact = "..."`), if set.
    pub fn contact(&self) -> Option<&str> {
        self.contact.as_deref()
    }

    pub fn servers(&self) -> &[ServerDef] {
        &self.servers
    }

    pub fn agents(&self) -> &[AgentDef] {
        &self.agents
    }

    /// What is valid but does not hold against the processes it is about, one line each
    /// (`policy check` prints them, the daemon logs them at every load): an agent known
    /// only by `exe` and `comm`, which whoever starts a process chooses (a script named
    /// after the agent has its `comm`; a copied binary has another `exe`). Such an
    /// agent's permissions can be claimed and its restrictions shed by renaming.
    pub fn warnings(&self) -> Vec<String> {
        self.agents
            .iter()
            .filter(|a| a.matcher.chosen_by_the_process())
            .map(|a| {
                format!(
                    "line {}: agent `{}` is identified only by exe/comm, which the process itself chooses: another program can take its permissions, and this one can shed its restrictions by running under another name; add uid, user, gid, group, unit or cgroup",
                    a.line, a.name
                )
            })
            .collect()
    }

    pub fn rules(&self) -> &[RuleDef] {
        &self.rules
    }

    pub fn rule(&self, id: &str) -> Option<&RuleDef> {
        self.rules.iter().find(|r| r.id == id)
    }
}
