//! What a scan reports: servers found in client configurations, their risk flags and registry
//! status, and the files that could not be read.
//!
//! Kept apart from the readers so the CLI can render these types in every output format without
//! knowing how they were found. Nothing here holds a secret value: env variables and headers are
//! kept by name, and arguments and URLs are stored already redacted (see `redact`).

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// How the client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Stdio,
    /// Streamable HTTP.
    Http,
    /// Legacy HTTP+SSE.
    Sse,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Stdio => "stdio",
            Transport::Http => "http",
            Transport::Sse => "sse",
        }
    }
}

/// Which configuration layer a server comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// A user's own client configuration.
    User,
    /// A project's file, or a project entry in a user's file (Claude Code's local scope).
    Project,
    /// A system-wide file an administrator manages.
    Managed,
    /// A file installed by a client plugin or extension.
    Plugin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Project => "project",
            Scope::Managed => "managed",
            Scope::Plugin => "plugin",
        }
    }
}

/// A risk found in one server's launch or file. One SARIF rule per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RiskFlag {
    /// `npx -y pkg` / `uvx pkg` / `pipx run pkg` without a pinned version: whatever the registry
    /// serves today runs with the user's rights.
    UnpinnedFetch,
    /// A credential written in plain text in `env`, `headers`, arguments or the URL.
    PlaintextSecret,
    /// The file holding a plaintext secret is readable by every local user.
    WorldReadableSecret,
    /// `http://` to a host that is not loopback: traffic and tokens in clear text.
    CleartextUrl,
    /// The command is a shell (`sh -c ...`): anything can run, nothing can be reviewed.
    ShellCommand,
    /// A stdio entry that bridges to a remote server (`mcp-remote URL`).
    RemoteBridge,
    /// A package version with a known vulnerability (mcp-remote < 0.1.16: CVE-2025-6514).
    VulnerableVersion,
    /// A container with host access: `--privileged`, host namespaces, sensitive bind mounts.
    ContainerHostAccess,
    /// The server is told to listen on every interface (`--host 0.0.0.0`).
    PublicListener,
}

impl RiskFlag {
    pub const ALL: [RiskFlag; 9] = [
        RiskFlag::UnpinnedFetch,
        RiskFlag::PlaintextSecret,
        RiskFlag::WorldReadableSecret,
        RiskFlag::CleartextUrl,
        RiskFlag::ShellCommand,
        RiskFlag::RemoteBridge,
        RiskFlag::VulnerableVersion,
        RiskFlag::ContainerHostAccess,
        RiskFlag::PublicListener,
    ];

    /// Kebab-case id (SARIF rule id, table cell).
    pub fn id(self) -> &'static str {
        match self {
            RiskFlag::UnpinnedFetch => "unpinned-fetch",
            RiskFlag::PlaintextSecret => "plaintext-secret",
            RiskFlag::WorldReadableSecret => "world-readable-secret",
            RiskFlag::CleartextUrl => "cleartext-url",
            RiskFlag::ShellCommand => "shell-command",
            RiskFlag::RemoteBridge => "remote-bridge",
            RiskFlag::VulnerableVersion => "vulnerable-version",
            RiskFlag::ContainerHostAccess => "container-host-access",
            RiskFlag::PublicListener => "public-listener",
        }
    }

    /// One sentence for SARIF rule descriptions and docs.
    pub fn description(self) -> &'static str {
        match self {
            RiskFlag::UnpinnedFetch => {
                "Fetch-and-run launcher (npx -y, uvx, pipx run, bunx, dlx) without a pinned version: the registry decides what runs."
            }
            RiskFlag::PlaintextSecret => {
                "A credential is written in plain text in the server's env, headers, arguments or URL."
            }
            RiskFlag::WorldReadableSecret => {
                "The configuration file holds a plaintext secret and is readable by every local user."
            }
            RiskFlag::CleartextUrl => {
                "The server is reached over http:// on a non-loopback host: requests and tokens travel in clear text."
            }
            RiskFlag::ShellCommand => {
                "The launch command is a shell with -c: arbitrary commands run, and the launch cannot be reviewed as a package."
            }
            RiskFlag::RemoteBridge => {
                "A stdio entry bridges to a remote server (mcp-remote): remote traffic hidden behind a local launch."
            }
            RiskFlag::VulnerableVersion => {
                "A package version with a known vulnerability (mcp-remote < 0.1.16, CVE-2025-6514: OS command injection from a malicious server)."
            }
            RiskFlag::ContainerHostAccess => {
                "A container launch with host access: --privileged, host namespaces, added capabilities or bind mounts of sensitive host paths."
            }
            RiskFlag::PublicListener => {
                "The server is told to listen on every interface (0.0.0.0 or ::): other hosts can reach it."
            }
        }
    }
}

impl fmt::Display for RiskFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// One risk on one server, with a short, secret-free explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Risk {
    pub flag: RiskFlag,
    pub detail: String,
}

/// The server's standing in the policy registry (`--policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Registry {
    /// No policy was given.
    Unchecked,
    /// Matches the `[[server]]` entry `name`.
    Registered { name: String },
    /// No `[[server]]` entry matches.
    Shadow { reason: String },
    /// A remote server reached directly although the policy's `[[gateway]]` `gateway`
    /// fronts its host.
    Bypass { gateway: String, reason: String },
}

impl Registry {
    pub fn label(&self) -> &str {
        match self {
            Registry::Unchecked => "-",
            Registry::Registered { name } => name,
            Registry::Shadow { .. } => "SHADOW",
            Registry::Bypass { .. } => "BYPASS",
        }
    }

    pub fn is_shadow(&self) -> bool {
        matches!(self, Registry::Shadow { .. })
    }

    pub fn is_bypass(&self) -> bool {
        matches!(self, Registry::Bypass { .. })
    }

    /// Shadow or bypass: the server is outside the governed path.
    pub fn is_ungoverned(&self) -> bool {
        self.is_shadow() || self.is_bypass()
    }
}

/// One MCP server entry found in one client file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Server {
    /// Client id from the table (`claude-code`, `vscode`, ...).
    pub client: &'static str,
    pub scope: Scope,
    /// The file the entry is in.
    #[serde(serialize_with = "lossy")]
    pub file: PathBuf,
    /// 1-based line of the entry's name in the file, when found.
    pub line: Option<usize>,
    /// The project directory, for project-scope entries.
    #[serde(serialize_with = "lossy_opt")]
    pub project: Option<PathBuf>,
    /// Owner of the file (user name, or uid when unknown).
    pub owner: String,
    pub name: String,
    pub transport: Transport,
    /// Launch command (stdio), as written.
    pub command: Option<String>,
    /// Arguments with secrets redacted.
    pub args: Vec<String>,
    /// URL (http/sse, or the remote URL of a bridge) with user-info and query values redacted.
    pub url: Option<String>,
    /// Names of environment variables set for the server (values never kept).
    pub env: Vec<String>,
    /// Names of HTTP headers sent to the server (values never kept).
    pub headers: Vec<String>,
    /// `false` when the client marks the entry disabled.
    pub enabled: bool,
    /// sha256 (hex) of the canonical launch: `["stdio", command, args...]` or `[transport, url]`,
    /// over the values as written (so a changed launch shows; the hash reveals no value).
    pub launch_hash: String,
    pub risks: Vec<Risk>,
    pub registry: Registry,
    /// Pids of processes running this stdio launch now (argv match under `<root>/proc`).
    pub pids: Vec<u32>,
    /// Stdio entries only: whether the client launches the server through `mcpwatch wrap --`
    /// (so the daemon's policy is enforced on it); `false` is configured but not wrapped.
    /// Reported (JSON, SARIF note `unwrapped-stdio`), not counted as a risk.
    pub wrapped: Option<bool>,
}

impl Server {
    /// Shadow or risky: counts towards exit status 1.
    pub fn needs_attention(&self) -> bool {
        !self.risks.is_empty() || self.registry.is_ungoverned()
    }
}

/// A file that exists but could not be read or parsed. The scan goes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileError {
    #[serde(serialize_with = "lossy")]
    pub file: PathBuf,
    pub client: &'static str,
    /// 1-based, when the parser gave a position.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The parser's message without any text of the file.
    pub message: String,
}

/// Everything one scan found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub servers: Vec<Server>,
    pub errors: Vec<FileError>,
    /// Configuration files read (parsed or not).
    pub files_scanned: usize,
    /// Homes looked at.
    pub homes_scanned: usize,
    /// Project directories looked at.
    pub projects_scanned: usize,
}

impl Report {
    pub fn shadow_count(&self) -> usize {
        self.servers
            .iter()
            .filter(|s| s.registry.is_shadow())
            .count()
    }

    /// Stdio servers launched without `mcpwatch wrap`.
    pub fn unwrapped_count(&self) -> usize {
        self.servers.iter().filter(|s| s.wrapped == Some(false)).count()
    }

    pub fn bypass_count(&self) -> usize {
        self.servers.iter().filter(|s| s.registry.is_bypass()).count()
    }

    pub fn risky_count(&self) -> usize {
        self.servers.iter().filter(|s| !s.risks.is_empty()).count()
    }

    /// Something is shadow, risky or unreadable.
    pub fn needs_attention(&self) -> bool {
        !self.errors.is_empty() || self.servers.iter().any(Server::needs_attention)
    }
}

/// Paths are written lossily: a non-UTF-8 directory name (anyone can create one) must not make
/// the JSON output fail.
fn lossy<S: serde::Serializer>(p: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

fn lossy_opt<S: serde::Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_some(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}
