//! Daemon configuration: file → raw (serde, unknown keys rejected) → validated [`Config`].
//!
//! Why a module of its own: everything the daemon does is decided by these values, and a
//! typo must never silently change behaviour. A config is fully validated (with line and
//! column for file errors) before anything is attached or any socket is opened.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mcpwatch_api::FailureMode;
use serde::Deserialize;

/// Default loopback port the daemon listens on for redirected connections.
pub const DEFAULT_LISTEN_PORT: u16 = 15099;
/// Default set of destination ports in scope for redirection.
pub const DEFAULT_PORTS: &str = "80,443,3000-3999,8000-8999";
/// Mark set (SO_MARK) on the daemon's own upstream sockets; the eBPF hooks skip them.
pub const DEFAULT_MARK: u32 = 0x6d63_7077; // "mcpw"

/// The file format. Every table rejects unknown keys.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen_port: Option<u16>,
    /// `"all"` or a list like `"80,443,8000-8999"`.
    pub ports: Option<String>,
    /// Cgroup v2 directory to attach to. Default: the root of the cgroup2 mount.
    pub cgroup: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    /// `open` (default) or `closed`.
    pub failure_mode: Option<FailureMode>,
    /// Base directory on a bpf filesystem where fail-closed mode pins its eBPF links
    /// (one subdirectory per watched cgroup). Default `/sys/fs/bpf/mcpwatch`.
    pub pin_dir: Option<PathBuf>,
    pub mark: Option<u32>,
    /// Group allowed on the control socket besides root.
    pub control_group: Option<String>,
    /// Older spelling of `[audit] sync`: `true` is `"per_call"`, `false` is `"group"`.
    /// Setting both is an error.
    pub audit_sync: Option<bool>,
    #[serde(default)]
    pub limits: LimitsFile,
    /// TLS interception (`[tls]`): local CA, scope, upstream trust.
    #[serde(default)]
    pub tls: TlsFile,
    /// Audit to the SIEM (`[sinks]`): every sink is off unless its table is present.
    #[serde(default)]
    pub sinks: crate::sinks::SinksFile,
    /// Prometheus metrics endpoint (`[metrics]`): off unless `listen` is set.
    #[serde(default)]
    pub metrics: MetricsFile,
    /// What audit records keep (`[audit]`).
    #[serde(default)]
    pub audit: AuditFile,
    /// Which processes have every port redirected (`[scope]`, see docs/scope.md).
    #[serde(default)]
    pub scope: ScopeFile,
    /// How proxied HTTP/1.1 is written (`[http]`).
    #[serde(default)]
    pub http: HttpFile,
}

/// The `[http]` table as written:
///
/// ```toml
/// [http]
/// header_case = "auto" # header names: "auto", "keep" (as their sender wrote them), "lower"
/// ```
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    pub header_case: Option<HeaderCase>,
}

/// How proxied HTTP/1.1 header *names* are passed on (values are always passed as they came).
///
/// Field names are case-insensitive (RFC 9110 §5.1) and HTTP/2 carries them lower-cased, so
/// lower case is the same request to every conforming peer; but non-MCP traffic through
/// mcpwatch is passed byte for byte, and a peer may (against the RFC) match names by case.
/// Keeping the case costs hyper a second header map per message: ~11 k instructions per
/// proxied call, ~5 % of mcpwatchd's own work (docs/protocols.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderCase {
    /// Lower case toward destinations where mcpwatch has seen MCP (every MCP SDK reads
    /// names case-insensitively), kept everywhere else (a first connection to a new server
    /// included): non-MCP traffic stays byte for byte.
    #[default]
    Auto,
    /// Always as their sender wrote them, both ways.
    Keep,
    /// Always lower case, both ways.
    Lower,
}

/// How proxied HTTP/1.1 is written (`[http]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpConfig {
    pub header_case: HeaderCase,
}

/// The `[scope]` table as written:
///
/// ```toml
/// [scope]
/// agents = true              # agents and their descendants: every TCP port is redirected
/// builtin_agents = true      # the built-in list of MCP client names (claude, cursor, code, ...)
/// agent_comms = ["my-agent"] # more exact command names (at most 15 bytes) that make an agent
/// stdio = false              # observe stdio MCP servers launched by agents (docs/discovery.md)
/// udp = "refuse"             # UDP (QUIC, HTTP/3) toward in-scope ports: refused, or "allow"
/// dns_servers = ["127.0.0.53"] # where UDP port 53 stays open; default: resolv.conf's
/// ```
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScopeFile {
    pub agents: Option<bool>,
    pub builtin_agents: Option<bool>,
    #[serde(default)]
    pub agent_comms: Vec<String>,
    pub stdio: Option<bool>,
    pub udp: Option<UdpScope>,
    pub dns_servers: Option<Vec<std::net::IpAddr>>,
}

/// What happens to UDP from a watched process toward an in-scope port (`[scope] udp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UdpScope {
    /// Refused (EPERM), DNS (port 53 toward the host's resolvers) excepted: QUIC, and so HTTP/3, cannot be
    /// redirected to mcpwatchd, and a refused HTTP/3 client falls back to TCP, which is.
    Refuse,
    /// Sent: HTTP/3 toward in-scope ports passes unobserved.
    Allow,
}

/// Validated `[scope]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeConfig {
    /// Agents (policy `[[agent]]`, the command names below, their descendants) have every
    /// TCP destination redirected, not only the ports in `ports`.
    pub agents: bool,
    /// Include `mcpwatch_intercept::BUILTIN_AGENT_COMMS`.
    pub builtin_agents: bool,
    /// Extra exact command names.
    pub agent_comms: Vec<String>,
    /// Observe the stdio of processes launched by agents (`crate::stdio`): global
    /// sys_enter/sys_exit tracepoints, so opt-in.
    pub stdio: bool,
    pub udp: UdpScope,
    /// The resolvers UDP port 53 stays open toward; `None`: the `nameserver` lines of
    /// /etc/resolv.conf, followed as it changes.
    pub dns_servers: Option<Vec<std::net::IpAddr>>,
}

impl Default for ScopeConfig {
    fn default() -> Self {
        ScopeConfig { agents: true, builtin_agents: true, agent_comms: Vec::new(), stdio: false, udp: UdpScope::Refuse, dns_servers: None }
    }
}

impl ScopeConfig {
    /// Every command name matched in the kernel (built-in ones first, no duplicates).
    pub fn comms(&self) -> Vec<String> {
        let builtin: &[&str] = if self.builtin_agents { mcpwatch_intercept::BUILTIN_AGENT_COMMS } else { &[] };
        let mut out: Vec<String> = Vec::new();
        for c in builtin.iter().copied().chain(self.agent_comms.iter().map(String::as_str)) {
            if !out.iter().any(|o| o == c) {
                out.push(c.to_string());
            }
        }
        out
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for c in &self.agent_comms {
            if c.is_empty() || c.len() > mcpwatch_intercept::MAX_COMM_LEN || c.contains('\0') {
                return Err(ConfigError::Invalid(format!(
                    "scope.agent_comms: {c:?} must be 1 to {} bytes (the kernel truncates command names)",
                    mcpwatch_intercept::MAX_COMM_LEN
                )));
            }
        }
        if self.comms().len() > mcpwatch_intercept::MAX_AGENT_COMMS {
            return Err(ConfigError::Invalid(format!(
                "scope.agent_comms: at most {} names in all",
                mcpwatch_intercept::MAX_AGENT_COMMS
            )));
        }
        if self.dns_servers.as_ref().is_some_and(|d| d.len() > mcpwatch_intercept::MAX_DNS_SERVERS) {
            return Err(ConfigError::Invalid(format!("scope.dns_servers: at most {} addresses", mcpwatch_intercept::MAX_DNS_SERVERS)));
        }
        Ok(())
    }
}

/// `[audit]`: what the records keep about the calling process, how they reach the disk
/// and how long they stay (docs/audit-store.md).
///
/// ```toml
/// [audit]
/// cmdline = "redacted"   # or "off" (no command line at all) or "full" (verbatim: secrets in argv land on disk)
/// sync = "group"         # or "per_call" or "off"
/// group_commit_ms = 10
/// retain_days = 90       # default: no age bound
/// max_bytes = 1073741824 # default: no size bound ([limits] max_audit_records still applies)
/// ```
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    pub cmdline: Option<CmdlineMode>,
    pub sync: Option<SyncMode>,
    pub group_commit_ms: Option<u64>,
    pub retain_days: Option<u64>,
    pub max_bytes: Option<u64>,
}

/// When an audit record must be on disk (fsync) relative to forwarding its call. In
/// every mode the record is in the kernel (journal write(2)) before the call leaves, so
/// killing mcpwatchd loses nothing; the mode decides what power loss can lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Each call waits for an fsync covering its record (one fsync serves every call
    /// waiting at that moment). Power loss loses nothing forwarded.
    PerCall,
    /// The journal is fsynced `group_commit_ms` after the first write since the last
    /// fsync (none while nothing is written); calls do not wait. Power loss loses at
    /// most that window.
    #[default]
    Group,
    /// No journal fsync; sled's checkpoint (every 500 ms) is the only one.
    Off,
}

/// Default `[audit] group_commit_ms`.
pub const DEFAULT_GROUP_COMMIT_MS: u64 = 10;

/// How a process's command line is recorded (audit records, held calls, inventory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmdlineMode {
    /// Every argument passes through the content detectors (`--token=<SECRET>`).
    #[default]
    Redacted,
    /// Not recorded.
    Off,
    /// Verbatim. A secret on an agent's command line is then stored in every record.
    Full,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_body_bytes: Option<usize>,
    /// Request bodies held for inspection by all connections together (default 256 MiB);
    /// a body past it is refused with 503 (`bodies`).
    pub max_buffered_body_bytes: Option<usize>,
    pub max_sse_event_bytes: Option<usize>,
    pub peek_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub header_timeout_ms: Option<u64>,
    pub body_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    /// Live connections one process (tgid) may hold (default 512).
    pub max_connections_per_process: Option<usize>,
    /// Live connections all processes of one uid may hold together (default 2048).
    pub max_connections_per_uid: Option<usize>,
    /// A relayed (opaque or passed-through TLS) connection on which nothing moved this long
    /// is closed (default 600000; 0: never).
    pub idle_timeout_ms: Option<u64>,
    /// An idle upstream HTTP/1.1 connection is kept this long for the same process's next
    /// connection to the same destination (default 2000; 0: never kept).
    pub upstream_keepalive_ms: Option<u64>,
    pub max_pending_calls: Option<usize>,
    /// Legacy HTTP+SSE streams open at once whose message routes are remembered (default
    /// 4096); a stream beyond this is ended before it announces its message URL.
    pub max_legacy_streams: Option<usize>,
    pub max_audit_records: Option<u64>,
    /// Threads serving proxied connections (default 0: one per CPU).
    pub proxy_threads: Option<usize>,
}

/// Validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_port: u16,
    pub ports: String,
    pub cgroup: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    pub control_group: String,
    pub failure_mode: FailureMode,
    /// Base of the pin directories (fail-closed mode); see [`FileConfig::pin_dir`].
    pub pin_dir: PathBuf,
    pub mark: u32,
    /// Calls wait for their record's fsync (`[audit] sync = "per_call"`).
    pub audit_sync: bool,
    /// `[audit] sync`.
    pub audit_sync_mode: SyncMode,
    /// `[audit] group_commit_ms`.
    pub audit_group_commit: Duration,
    /// `[audit] retain_days`, in ms.
    pub audit_max_age_ms: Option<u64>,
    /// `[audit] max_bytes`.
    pub audit_max_bytes: Option<u64>,
    pub limits: Limits,
    pub tls: TlsConfig,
    pub sinks: crate::sinks::SinksConfig,
    pub metrics: MetricsConfig,
    /// `[audit] cmdline`.
    pub audit_cmdline: CmdlineMode,
    pub scope: ScopeConfig,
    pub http: HttpConfig,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest MCP request body (and JSON response body) inspected; larger MCP
    /// requests are refused with 413, larger non-MCP bodies pass uninspected.
    pub max_body_bytes: usize,
    /// Request bodies held for inspection by all connections together (`bodies`).
    pub max_buffered_body_bytes: usize,
    pub max_sse_event_bytes: usize,
    /// How long a new connection may stay undecided (the client sends nothing, or only an
    /// ambiguous prefix, and the server says nothing) before it is CLOSED. Never a reason
    /// to relay: a slow client is not an opaque protocol.
    pub peek_timeout: Duration,
    pub connect_timeout: Duration,
    pub header_timeout: Duration,
    /// A request body must arrive within this time (slow clients are cut off).
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_process: usize,
    pub max_connections_per_uid: usize,
    /// Zero: relayed connections never time out.
    pub idle_timeout: Duration,
    /// How long an idle upstream HTTP/1.1 connection is kept for its process's next
    /// connection to the same destination (`proxy::pool`). Zero: never kept.
    pub upstream_keepalive: Duration,
    pub max_pending_calls: usize,
    /// Open legacy HTTP+SSE streams with a remembered route (`session::Sessions`).
    pub max_legacy_streams: usize,
    pub max_audit_records: u64,
    /// Threads serving proxied connections, each with a runtime of its own
    /// (`proxy::workers`).
    pub proxy_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 << 20,
            max_buffered_body_bytes: 256 << 20,
            max_sse_event_bytes: 8 << 20,
            peek_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_process: 512,
            max_connections_per_uid: 2048,
            idle_timeout: Duration::from_secs(600),
            // Below the idle timeouts servers commonly use (Node.js and uvicorn: 5 s), so a
            // kept connection is rarely closed by the server just as a request goes out.
            upstream_keepalive: Duration::from_secs(2),
            max_pending_calls: 65536,
            max_legacy_streams: 4096,
            max_audit_records: 1_000_000,
            proxy_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen_port: DEFAULT_LISTEN_PORT,
            ports: DEFAULT_PORTS.to_string(),
            cgroup: None,
            state_dir: PathBuf::from(mcpwatch_api::DEFAULT_STATE_DIR),
            control_socket: PathBuf::from(mcpwatch_api::DEFAULT_CONTROL_SOCKET),
            control_group: "mcpwatch".to_string(),
            failure_mode: FailureMode::Open,
            pin_dir: PathBuf::from(mcpwatch_intercept::pins::DEFAULT_PIN_BASE),
            mark: DEFAULT_MARK,
            audit_sync: false,
            audit_sync_mode: SyncMode::default(),
            audit_group_commit: Duration::from_millis(DEFAULT_GROUP_COMMIT_MS),
            audit_max_age_ms: None,
            audit_max_bytes: None,
            limits: Limits::default(),
            tls: TlsConfig::default(),
            sinks: crate::sinks::SinksConfig::default(),
            metrics: MetricsConfig::default(),
            audit_cmdline: CmdlineMode::default(),
            scope: ScopeConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

/// The `[tls]` table as written. Scope rules (see `mcpwatch_tls::decide`): a host in `never`
/// passes through, else a host in `always` is intercepted, else `default` (`no_sni` when the
/// client sent no server name and the destination IP matches no pattern).
///
/// ```toml
/// [tls]
/// default = "pass_through"              # or "intercept"
/// always = ["mcp.example.com", "*.mcp.internal"]
/// never = ["*.bank.example", "deb.debian.org"]
/// extra_anchors = ["/etc/mcpwatch/internal-ca.pem"]
/// ```
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Terminate TLS at all (default true). `false`: every TLS connection is relayed untouched
    /// and no CA is created.
    pub enabled: Option<bool>,
    /// Host patterns always intercepted.
    #[serde(default)]
    pub always: Vec<String>,
    /// Host patterns never intercepted (wins over `always`).
    #[serde(default)]
    pub never: Vec<String>,
    /// `pass_through` (default) or `intercept` for hosts in neither list.
    pub default: Option<mcpwatch_tls::TlsAction>,
    /// Action when the client sent no SNI (default: same as `default`).
    pub no_sni: Option<mcpwatch_tls::TlsAction>,
    /// Only intercept connections of these processes (exe path or comm); empty: every process.
    #[serde(default)]
    pub processes: Vec<String>,
    /// PEM files with extra trust anchors for upstream servers (private CAs).
    #[serde(default)]
    pub extra_anchors: Vec<PathBuf>,
    /// Trust the system store for upstream servers (default true).
    pub system_roots: Option<bool>,
    /// Hosts whose upstream certificate is NOT verified; every record says so. Avoid.
    #[serde(default)]
    pub insecure_hosts: Vec<String>,
    /// Lifetime of minted leaf certificates, hours (default 24, 1..=720).
    pub leaf_validity_hours: Option<u64>,
    /// Most leaf configs cached (default 1024).
    pub leaf_cache_size: Option<usize>,
    /// Bound on reading the ClientHello and finishing each handshake (default 10000).
    pub handshake_timeout_ms: Option<u64>,
    /// How long after a full verification of an upstream certificate later connections to
    /// that host may resume its TLS session instead of verifying again (default 300; 0:
    /// verify every upstream connection in full). Never past the certificate's expiry,
    /// never for insecure hosts; a new full handshake retires older sessions.
    pub upstream_resumption_secs: Option<u64>,
    /// After a client rejected the mcpwatch CA for a host, pass that process/host through for
    /// this long so the agent keeps working (default 900; 0: never pass through, keep failing).
    /// The back-off is per process (pid + start time) and host, never per executable.
    pub distrust_backoff_secs: Option<u64>,
    /// Toward destinations governed in enforce mode (a registered server with mode enforce, or
    /// a global enforce policy): `refuse` (default) never passes a distrusting client through;
    /// `pass_through` lets the back-off apply there too (uninspected traffic, operator opt-in).
    pub distrust: Option<DistrustAction>,
    /// After `mcpwatch ca rotate` (or a re-issue for a changed scope), how many days the previous
    /// CA stays trusted in the bundle before the daemon withdraws it (default 14; 0: only
    /// `mcpwatch ca withdraw` withdraws it).
    pub rotation_overlap_days: Option<u64>,
    /// Give the CA critical X.509 name constraints limited to the intercepted hosts (default
    /// true). Changing the intercepted hosts then re-issues the CA at the next start.
    pub name_constraints: Option<bool>,
}

/// What a distrusting client gets toward an enforce-mode destination (`tls.distrust`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistrustAction {
    #[default]
    Refuse,
    PassThrough,
}

/// Validated TLS settings.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub enabled: bool,
    pub scope: mcpwatch_tls::TlsScopeConfig,
    pub processes: Vec<String>,
    pub extra_anchors: Vec<PathBuf>,
    pub system_roots: bool,
    pub insecure_hosts: Vec<String>,
    pub leaf_validity: Duration,
    pub leaf_cache_size: usize,
    pub handshake_timeout: Duration,
    /// Zero: no upstream session resumption.
    pub upstream_resumption: Duration,
    /// Zero: distrusting clients are recorded but never passed through.
    pub distrust_backoff: Duration,
    pub distrust: DistrustAction,
    /// How long a retired CA stays trusted; `None`: until `mcpwatch ca withdraw`.
    pub rotation_overlap: Option<Duration>,
    pub name_constraints: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: true,
            scope: mcpwatch_tls::TlsScopeConfig::default(),
            processes: Vec::new(),
            extra_anchors: Vec::new(),
            system_roots: true,
            insecure_hosts: Vec::new(),
            leaf_validity: Duration::from_secs(24 * 3600),
            leaf_cache_size: 1024,
            handshake_timeout: Duration::from_secs(10),
            upstream_resumption: Duration::from_secs(300),
            distrust_backoff: Duration::from_secs(15 * 60),
            distrust: DistrustAction::Refuse,
            rotation_overlap: Some(Duration::from_secs(14 * 24 * 3600)),
            name_constraints: true,
        }
    }
}

impl TlsFile {
    fn into_config(self) -> TlsConfig {
        let d = TlsConfig::default();
        TlsConfig {
            enabled: self.enabled.unwrap_or(d.enabled),
            scope: mcpwatch_tls::TlsScopeConfig {
                always: self.always,
                never: self.never,
                default: self.default.unwrap_or(d.scope.default),
                no_sni: self.no_sni,
            },
            processes: self.processes,
            extra_anchors: self.extra_anchors,
            system_roots: self.system_roots.unwrap_or(d.system_roots),
            insecure_hosts: self.insecure_hosts,
            leaf_validity: self.leaf_validity_hours.map_or(d.leaf_validity, |h| Duration::from_secs(h.saturating_mul(3600))),
            leaf_cache_size: self.leaf_cache_size.unwrap_or(d.leaf_cache_size),
            handshake_timeout: self.handshake_timeout_ms.map_or(d.handshake_timeout, Duration::from_millis),
            upstream_resumption: self.upstream_resumption_secs.map_or(d.upstream_resumption, Duration::from_secs),
            distrust_backoff: self.distrust_backoff_secs.map_or(d.distrust_backoff, Duration::from_secs),
            distrust: self.distrust.unwrap_or(d.distrust),
            rotation_overlap: match self.rotation_overlap_days {
                None => d.rotation_overlap,
                Some(0) => None,
                Some(days) => Some(Duration::from_secs(days.saturating_mul(24 * 3600))),
            },
            name_constraints: self.name_constraints.unwrap_or(d.name_constraints),
        }
    }
}

impl TlsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        mcpwatch_tls::TlsScope::from_config(&self.scope).map_err(|e| ConfigError::Invalid(format!("tls: {e}")))?;
        for h in &self.insecure_hosts {
            if mcpwatch_tls::validate_server_name(h).is_err() {
                return bad(format!("tls.insecure_hosts: {h:?} is not a host name or IP address"));
            }
        }
        if self.processes.iter().any(|p| p.trim().is_empty()) {
            return bad("tls.processes: empty entry".into());
        }
        if self.extra_anchors.iter().any(|p| p.as_os_str().is_empty()) {
            return bad("tls.extra_anchors: empty path".into());
        }
        let hours = self.leaf_validity.as_secs() / 3600;
        if !(1..=720).contains(&hours) {
            return bad(format!("tls.leaf_validity_hours must be between 1 and 720, got {hours}"));
        }
        if self.leaf_cache_size == 0 {
            return bad("tls.leaf_cache_size must be positive".into());
        }
        if self.upstream_resumption > Duration::from_secs(86_400) {
            return bad(format!("tls.upstream_resumption_secs must be at most 86400 (a day), got {}", self.upstream_resumption.as_secs()));
        }
        if self.handshake_timeout.is_zero() || self.handshake_timeout > Duration::from_secs(300) {
            return bad("tls.handshake_timeout_ms must be between 1 and 300000".into());
        }
        if self.rotation_overlap.is_some_and(|d| d > Duration::from_secs(365 * 24 * 3600)) {
            return bad("tls.rotation_overlap_days must be between 0 and 365".into());
        }
        Ok(())
    }

    /// The NameConstraints the CA should carry for this scope, or why it carries none.
    pub fn ca_constraints(&self) -> Result<mcpwatch_tls::NameConstraints, String> {
        if !self.name_constraints {
            return Err("[tls] name_constraints = false".into());
        }
        let scope = mcpwatch_tls::TlsScope::from_config(&self.scope).map_err(|e| e.to_string())?;
        mcpwatch_tls::scope_constraints(&scope).map_err(str::to_string)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// 1-based line and column of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

impl FileConfig {
    pub fn parse(src: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(src).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(src, s.start));
            ConfigError::Parse { path: path.to_path_buf(), line, column, message: e.message().to_string() }
        })
    }

    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let src = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        FileConfig::parse(&src, path)
    }

    /// Apply the file's values over the defaults.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let d = Limits::default();
        if let Some(p) = self.listen_port {
            c.listen_port = p;
        }
        if let Some(p) = self.ports {
            c.ports = p;
        }
        c.cgroup = self.cgroup;
        if let Some(p) = self.state_dir {
            c.state_dir = p;
        }
        if let Some(p) = self.control_socket {
            c.control_socket = p;
        }
        if let Some(g) = self.control_group {
            c.control_group = g;
        }
        if let Some(m) = self.failure_mode {
            c.failure_mode = m;
        }
        if let Some(p) = self.pin_dir {
            c.pin_dir = p;
        }
        if let Some(m) = self.mark {
            c.mark = m;
        }
        c.audit_sync_mode = match (self.audit_sync, self.audit.sync) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "both audit_sync and [audit] sync are set; keep only [audit] sync (\"per_call\", \"group\" or \"off\")".into(),
                ));
            }
            (Some(true), None) => SyncMode::PerCall,
            (Some(false), None) => SyncMode::Group,
            (None, m) => m.unwrap_or_default(),
        };
        c.audit_sync = c.audit_sync_mode == SyncMode::PerCall;
        match self.audit.group_commit_ms {
            Some(0) | Some(60_001..) => {
                return Err(ConfigError::Invalid("[audit] group_commit_ms must be between 1 and 60000".into()));
            }
            Some(ms) => c.audit_group_commit = Duration::from_millis(ms),
            None => {}
        }
        match self.audit.retain_days {
            Some(0) => return Err(ConfigError::Invalid("[audit] retain_days must be at least 1 (leave it out for no age bound)".into())),
            Some(d) => c.audit_max_age_ms = Some(d.saturating_mul(86_400_000)),
            None => {}
        }
        match self.audit.max_bytes {
            Some(b) if b < 1 << 20 => {
                return Err(ConfigError::Invalid("[audit] max_bytes must be at least 1048576 (1 MiB)".into()));
            }
            b => c.audit_max_bytes = b,
        }
        let l = self.limits;
        let ms = Duration::from_millis;
        c.limits = Limits {
            max_body_bytes: l.max_body_bytes.unwrap_or(d.max_body_bytes),
            max_buffered_body_bytes: l.max_buffered_body_bytes.unwrap_or(d.max_buffered_body_bytes),
            max_sse_event_bytes: l.max_sse_event_bytes.unwrap_or(d.max_sse_event_bytes),
            peek_timeout: l.peek_timeout_ms.map_or(d.peek_timeout, ms),
            connect_timeout: l.connect_timeout_ms.map_or(d.connect_timeout, ms),
            header_timeout: l.header_timeout_ms.map_or(d.header_timeout, ms),
            body_timeout: l.body_timeout_ms.map_or(d.body_timeout, ms),
            max_connections: l.max_connections.unwrap_or(d.max_connections),
            max_connections_per_process: l.max_connections_per_process.unwrap_or(d.max_connections_per_process),
            max_connections_per_uid: l.max_connections_per_uid.unwrap_or(d.max_connections_per_uid),
            idle_timeout: l.idle_timeout_ms.map_or(d.idle_timeout, ms),
            upstream_keepalive: l.upstream_keepalive_ms.map_or(d.upstream_keepalive, ms),
            max_pending_calls: l.max_pending_calls.unwrap_or(d.max_pending_calls),
            max_legacy_streams: l.max_legacy_streams.unwrap_or(d.max_legacy_streams),
            max_audit_records: l.max_audit_records.unwrap_or(d.max_audit_records),
            proxy_threads: match l.proxy_threads {
                None | Some(0) => d.proxy_threads,
                Some(n) => n,
            },
        };
        c.tls = self.tls.into_config();
        c.sinks = self.sinks.into_config().map_err(ConfigError::Invalid)?;
        c.metrics = self.metrics.into_config().map_err(ConfigError::Invalid)?;
        c.audit_cmdline = self.audit.cmdline.unwrap_or_default();
        let ds = ScopeConfig::default();
        c.scope = ScopeConfig {
            agents: self.scope.agents.unwrap_or(ds.agents),
            builtin_agents: self.scope.builtin_agents.unwrap_or(ds.builtin_agents),
            agent_comms: self.scope.agent_comms,
            stdio: self.scope.stdio.unwrap_or(ds.stdio),
            udp: self.scope.udp.unwrap_or(ds.udp),
            dns_servers: self.scope.dns_servers,
        };
        c.http = HttpConfig { header_case: self.http.header_case.unwrap_or_default() };
        c.validate()?;
        Ok(c)
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.listen_port == 0 {
            return bad("listen_port must not be 0");
        }
        if self.limits.max_body_bytes < 1024 {
            return bad("limits.max_body_bytes must be at least 1024");
        }
        if self.limits.max_buffered_body_bytes < self.limits.max_body_bytes.saturating_mul(2) {
            return bad("limits.max_buffered_body_bytes must be at least twice limits.max_body_bytes (one uid may hold half of it, and one body must fit in that)");
        }
        if self.limits.max_connections == 0 || self.limits.max_pending_calls == 0 || self.limits.max_legacy_streams == 0 {
            return bad("limits.max_connections, limits.max_pending_calls and limits.max_legacy_streams must be positive");
        }
        if self.limits.max_connections_per_process == 0 || self.limits.max_connections_per_uid == 0 {
            return bad("limits.max_connections_per_process and limits.max_connections_per_uid must be positive");
        }
        if self.limits.proxy_threads == 0 || self.limits.proxy_threads > 1024 {
            return bad("limits.proxy_threads must be between 1 and 1024 (0 in the file: one per CPU)");
        }
        if self.limits.peek_timeout.is_zero() {
            return bad("limits.peek_timeout_ms must be positive");
        }
        if !self.pin_dir.is_absolute() {
            return bad("pin_dir must be an absolute path (a directory on a bpf filesystem)");
        }
        self.ports.parse::<mcpwatch_intercept::PortScope>()
            .map_err(|e| ConfigError::Invalid(format!("ports: {e}")))?;
        self.tls.validate()?;
        self.scope.validate()?;
        Ok(())
    }

    /// Loopback addresses the daemon listens on.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        vec![
            SocketAddr::from(([127, 0, 0, 1], self.listen_port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.listen_port)),
        ]
    }
}

/// `[metrics]`.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// `127.0.0.1:9464`, `[::1]:9464` or `unix:/run/mcpwatch/metrics.sock`.
    pub listen: Option<String>,
    /// Allow a non-loopback TCP address (the metrics name servers and tools).
    pub allow_remote: Option<bool>,
    /// Most distinct (server, method, tool) label sets (default 500).
    pub max_series: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Validated `[metrics]`.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: Option<MetricsListen>,
    pub max_series: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: None, max_series: 500 }
    }
}

impl MetricsFile {
    pub fn into_config(self) -> Result<MetricsConfig, String> {
        let max_series = self.max_series.unwrap_or(500);
        if !(1..=100_000).contains(&max_series) {
            return Err("metrics.max_series must be between 1 and 100000".into());
        }
        let listen = match self.listen.as_deref() {
            None => None,
            Some(s) => Some(match s.strip_prefix("unix:") {
                Some(p) if p.starts_with('/') => MetricsListen::Unix(PathBuf::from(p)),
                Some(_) => return Err(format!("metrics.listen: {s:?}: a Unix socket path must be absolute")),
                None => {
                    let addr: SocketAddr = s.parse().map_err(|_| format!("metrics.listen: {s:?} is not ip:port or unix:/path"))?;
                    if !addr.ip().is_loopback() && !self.allow_remote.unwrap_or(false) {
                        return Err(format!("metrics.listen: {addr} is not loopback; set metrics.allow_remote = true to expose it"));
                    }
                    MetricsListen::Tcp(addr)
                }
            }),
        };
        Ok(MetricsConfig { listen, max_series })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_defaults_on_with_the_builtin_list_and_validates_names() {
        let c = FileConfig::parse("", Path::new("x")).unwrap().into_config().unwrap();
        assert!(c.scope.agents && c.scope.builtin_agents);
        assert!(c.scope.comms().iter().any(|n| n == "claude"));
        let src = "[scope]\nagents = false\nbuiltin_agents = false\nagent_comms = [\"my-agent\", \"my-agent\"]\n";
        let c = FileConfig::parse(src, Path::new("x")).unwrap().into_config().unwrap();
        assert!(!c.scope.agents);
        assert_eq!(c.scope.comms(), vec!["my-agent".to_string()]);
        let long = "[scope]\nagent_comms = [\"a-name-longer-than-15\"]\n";
        let err = FileConfig::parse(long, Path::new("x")).unwrap().into_config().unwrap_err();
        assert!(err.to_string().contains("scope.agent_comms"), "{err}");
        assert!(FileConfig::parse("[scope]\nagent = true\n", Path::new("x")).is_err());
        assert_eq!(FileConfig::parse("", Path::new("x")).unwrap().into_config().unwrap().scope.udp, UdpScope::Refuse);
        let allow = FileConfig::parse("[scope]\nudp = \"allow\"\n", Path::new("x")).unwrap().into_config().unwrap();
        assert_eq!(allow.scope.udp, UdpScope::Allow);
        let err = FileConfig::parse("[scope]\nudp = \"block\"\n", Path::new("x")).unwrap_err().to_string();
        assert!(err.contains("refuse") && err.contains("allow"), "{err}");
        let dns = FileConfig::parse("[scope]\ndns_servers = [\"127.0.0.53\", \"::1\"]\n", Path::new("x")).unwrap().into_config().unwrap();
        assert_eq!(dns.scope.dns_servers, Some(vec!["127.0.0.53".parse().unwrap(), "::1".parse().unwrap()]));
        assert_eq!(FileConfig::parse("", Path::new("x")).unwrap().into_config().unwrap().scope.dns_servers, None);
        let err = FileConfig::parse("[scope]\ndns_servers = [\"resolver.local\"]\n", Path::new("x")).unwrap_err().to_string();
        assert!(err.contains("x:2:16") && err.contains("IP address"), "{err}");
    }

    #[test]
    fn typo_is_rejected_with_line_and_column() {
        let src = "listen_port = 15099\nfailure_mod = \"closed\"\n";
        let err = FileConfig::parse(src, Path::new("/etc/mcpwatch/mcpwatchd.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/mcpwatch/mcpwatchd.toml:2:1:"), "{msg}");
        assert!(msg.contains("failure_mod"), "{msg}");
    }

    #[test]
    fn nested_typo_is_rejected() {
        let src = "[limits]\nmax_body_byte = 10\n";
        let err = FileConfig::parse(src, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.starts_with("c.toml:2:1:"), "{err}");
    }

    #[test]
    fn values_override_defaults_and_validate() {
        let src = "failure_mode = \"closed\"\nports = \"all\"\n[limits]\nmax_body_bytes = 2048\n";
        let c = FileConfig::parse(src, Path::new("c.toml")).unwrap().into_config().unwrap();
        assert_eq!(c.failure_mode, FailureMode::Closed);
        assert_eq!(c.ports, "all");
        assert_eq!(c.limits.max_body_bytes, 2048);
        assert_eq!(c.listen_port, DEFAULT_LISTEN_PORT);
        assert_eq!(c.pin_dir, PathBuf::from("/sys/fs/bpf/mcpwatch"));
        let c = FileConfig::parse("pin_dir = \"/sys/fs/bpf/agents\"\n", Path::new("c.toml")).unwrap().into_config().unwrap();
        assert_eq!(c.pin_dir, PathBuf::from("/sys/fs/bpf/agents"));
        let err = FileConfig::parse("pin_dir = \"pins\"\n", Path::new("c.toml")).unwrap().into_config().unwrap_err();
        assert!(err.to_string().contains("pin_dir"), "{err}");
    }

    #[test]
    fn header_case_is_auto_by_default_and_can_be_fixed() {
        let parse = |t: &str| FileConfig::parse(t, Path::new("c.toml")).and_then(FileConfig::into_config);
        assert_eq!(parse("").unwrap().http.header_case, HeaderCase::Auto);
        assert_eq!(parse("[http]\nheader_case = \"keep\"\n").unwrap().http.header_case, HeaderCase::Keep);
        assert_eq!(parse("[http]\nheader_case = \"lower\"\n").unwrap().http.header_case, HeaderCase::Lower);
        for bad in ["[http]\nheader_case = \"upper\"\n", "[http]\nheader_case = true\n", "[http]\npreserve_header_case = true\n"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("c.toml:2:"), "{bad}: {err}");
        }
    }

    #[test]
    fn proxy_threads_default_to_the_cpus_and_are_bounded() {
        let parse = |t: &str| FileConfig::parse(t, Path::new("c.toml")).unwrap().into_config();
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(parse("").unwrap().limits.proxy_threads, cpus);
        assert_eq!(parse("[limits]\nproxy_threads = 0\n").unwrap().limits.proxy_threads, cpus);
        assert_eq!(parse("[limits]\nproxy_threads = 3\n").unwrap().limits.proxy_threads, 3);
        let err = parse("[limits]\nproxy_threads = 5000\n").unwrap_err().to_string();
        assert!(err.contains("proxy_threads"), "{err}");
    }

    #[test]
    fn bad_port_scope_is_rejected() {
        let src = "ports = \"80,90000\"\n";
        let err = FileConfig::parse(src, Path::new("c.toml")).unwrap().into_config().unwrap_err();
        assert!(err.to_string().contains("ports"), "{err}");
    }

    #[test]
    fn audit_sync_and_retention_keys() {
        let parse = |t: &str| FileConfig::parse(t, Path::new("c.toml")).unwrap().into_config();
        let d = parse("").unwrap();
        assert_eq!((d.audit_sync_mode, d.audit_sync, d.audit_group_commit), (SyncMode::Group, false, Duration::from_millis(10)));
        assert_eq!((d.audit_max_age_ms, d.audit_max_bytes), (None, None));
        let c = parse("[audit]\nsync = \"per_call\"\nretain_days = 2\nmax_bytes = 2097152\ngroup_commit_ms = 5\n").unwrap();
        assert_eq!((c.audit_sync_mode, c.audit_sync), (SyncMode::PerCall, true));
        assert_eq!((c.audit_max_age_ms, c.audit_max_bytes, c.audit_group_commit), (Some(2 * 86_400_000), Some(2 << 20), Duration::from_millis(5)));
        // The old key still works, and means what it meant.
        assert_eq!(parse("audit_sync = true\n").unwrap().audit_sync_mode, SyncMode::PerCall);
        assert_eq!(parse("audit_sync = false\n").unwrap().audit_sync_mode, SyncMode::Group);
        assert_eq!(parse("[audit]\nsync = \"off\"\n").unwrap().audit_sync_mode, SyncMode::Off);
        for bad in ["audit_sync = true\n[audit]\nsync = \"group\"\n", "[audit]\ngroup_commit_ms = 0\n", "[audit]\nretain_days = 0\n", "[audit]\nmax_bytes = 10\n"] {
            assert!(matches!(parse(bad), Err(ConfigError::Invalid(_))), "{bad}");
        }
        assert!(FileConfig::parse("[audit]\nsync = \"always\"\n", Path::new("c.toml")).is_err());
    }

    #[test]
    fn audit_cmdline_defaults_to_redacted() {
        assert_eq!(FileConfig::default().into_config().unwrap().audit_cmdline, CmdlineMode::Redacted);
        for (v, want) in [("off", CmdlineMode::Off), ("full", CmdlineMode::Full), ("redacted", CmdlineMode::Redacted)] {
            let c = FileConfig::parse(&format!("[audit]\ncmdline = \"{v}\"\n"), Path::new("c.toml")).unwrap().into_config().unwrap();
            assert_eq!(c.audit_cmdline, want);
        }
        let e = FileConfig::parse("[audit]\ncmdline = \"verbatim\"\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().starts_with("c.toml:2:"), "{e}");
        let e = FileConfig::parse("[audit]\ncmd_line = \"off\"\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("cmd_line"), "{e}");
    }

    #[test]
    fn tls_table_parses_and_validates() {
        let c = FileConfig::default().into_config().unwrap();
        assert!(c.tls.enabled);
        assert_eq!(c.tls.scope.default, mcpwatch_tls::TlsAction::PassThrough, "safe default: nothing intercepted unless listed");
        let src = "[tls]\ndefault = \"intercept\"\nnever = [\"*.bank.example\"]\nalways = [\"mcp.example.com\"]\n\
                   extra_anchors = [\"/etc/x.pem\"]\ninsecure_hosts = [\"10.0.0.7\"]\nleaf_validity_hours = 2\ndistrust_backoff_secs = 0\n";
        let c = FileConfig::parse(src, Path::new("c.toml")).unwrap().into_config().unwrap();
        assert_eq!(c.tls.scope.default, mcpwatch_tls::TlsAction::Intercept);
        assert_eq!(c.tls.scope.never, ["*.bank.example"]);
        assert_eq!(c.tls.extra_anchors, [PathBuf::from("/etc/x.pem")]);
        assert_eq!(c.tls.leaf_validity, Duration::from_secs(7200));
        assert!(c.tls.distrust_backoff.is_zero());
        assert!(c.tls.ca_constraints().unwrap_err().contains("no name constraint is possible"));
        let d = FileConfig::default().into_config().unwrap();
        assert_eq!(d.tls.rotation_overlap, Some(Duration::from_secs(14 * 86_400)));
        assert!(d.tls.ca_constraints().is_ok(), "pass-through default: constrained");
        let c = FileConfig::parse("[tls]\nrotation_overlap_days = 0\nname_constraints = false\nalways = [\"a.example\"]\n", Path::new("c.toml")).unwrap().into_config().unwrap();
        assert_eq!(c.tls.rotation_overlap, None, "0: only `ca withdraw`");
        assert_eq!(c.tls.ca_constraints().unwrap_err(), "[tls] name_constraints = false");
        let e = FileConfig::parse("[tls]\nrotation_overlap_days = 400\n", Path::new("c.toml")).unwrap().into_config().unwrap_err();
        assert!(e.to_string().contains("rotation_overlap_days"), "{e}");
    }

    #[test]
    fn tls_mistakes_are_rejected() {
        let err = FileConfig::parse("[tls]\nalway = []\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.starts_with("c.toml:2:1:") && err.contains("alway"), "{err}");
        let err = FileConfig::parse("[tls]\ndefault = \"maybe\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.starts_with("c.toml:2:"), "{err}");
        for (src, needle) in [
            ("[tls]\nnever = [\"ex*mple.com\"]\n", "ex*mple.com"),
            ("[tls]\ninsecure_hosts = [\"bad host\"]\n", "insecure_hosts"),
            ("[tls]\nleaf_validity_hours = 0\n", "leaf_validity_hours"),
            ("[tls]\nleaf_validity_hours = 721\n", "leaf_validity_hours"),
            ("[tls]\nhandshake_timeout_ms = 0\n", "handshake_timeout_ms"),
            ("[tls]\nupstream_resumption_secs = 86401\n", "upstream_resumption_secs"),
        ] {
            let err = FileConfig::parse(src, Path::new("c.toml")).unwrap().into_config().unwrap_err().to_string();
            assert!(err.contains(needle), "{src}: {err}");
        }
    }

    #[test]
    fn sinks_and_metrics_tables_parse_and_reject_typos() {
        let src = "[sinks]\nbatch_size = 50\n[sinks.syslog]\naddress = \"127.0.0.1:6514\"\nfacility = \"local3\"\n\
                   [sinks.loki]\nurl = \"http://127.0.0.1:3100\"\nlabels = { env = \"prod\" }\n\
                   [sinks.file]\npath = \"/var/log/mcpwatch/audit.jsonl\"\n[metrics]\nlisten = \"127.0.0.1:9464\"\n";
        let c = FileConfig::parse(src, Path::new("c.toml")).unwrap().into_config().unwrap();
        assert_eq!(c.sinks.batch_size, 50);
        assert!(c.sinks.syslog.is_some() && c.sinks.loki.is_some() && c.sinks.file.is_some() && c.sinks.hec.is_none());
        assert!(c.metrics.listen.is_some());
        let off = FileConfig::default().into_config().unwrap();
        assert!(off.metrics.listen.is_none(), "metrics are off by default");
        let err = FileConfig::parse("[sinks.syslog]\naddres = \"x:1\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.starts_with("c.toml:2:1:") && err.contains("addres"), "{err}");
        let err = FileConfig::parse("[metrics]\nlisen = \"x\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        FileConfig::parse("[sinks.hec]\nurl = \"https://splunk:8088\"\ntoken_file = \"/t\"\n", Path::new("c.toml")).unwrap().into_config().expect("https collectors are supported");
        let err = FileConfig::parse("[sinks.hec]\nurl = \"ftp://splunk:8088\"\ntoken_file = \"/t\"\n", Path::new("c.toml")).unwrap().into_config().unwrap_err().to_string();
        assert!(err.contains("http:// or https://"), "{err}");
        let err = FileConfig::parse("[sinks.loki]\nurl = \"http://loki:3100\"\nca_file = \"/ca.pem\"\n", Path::new("c.toml")).unwrap().into_config().unwrap_err().to_string();
        assert!(err.contains("needs an https:// url"), "{err}");
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn listen_must_be_loopback_unless_allowed() {
        let ok = MetricsFile { listen: Some("127.0.0.1:9464".into()), ..Default::default() }.into_config().unwrap();
        assert_eq!(ok.listen, Some(MetricsListen::Tcp("127.0.0.1:9464".parse().unwrap())));
        let err = MetricsFile { listen: Some("0.0.0.0:9464".into()), ..Default::default() }.into_config().unwrap_err();
        assert!(err.contains("allow_remote"), "{err}");
        assert!(MetricsFile { listen: Some("0.0.0.0:9464".into()), allow_remote: Some(true), ..Default::default() }.into_config().is_ok());
        let unix = MetricsFile { listen: Some("unix:/run/m.sock".into()), ..Default::default() }.into_config().unwrap();
        assert_eq!(unix.listen, Some(MetricsListen::Unix("/run/m.sock".into())));
        assert!(MetricsFile { listen: Some("unix:rel.sock".into()), ..Default::default() }.into_config().is_err());
    }
}
