//! `mcpwatch list`: one inventory of the MCP servers on this host, merged from every source.
//!
//! Why a merge: the daemon only knows servers whose traffic it saw (network), and the client
//! configuration files only say what *can* run (config, from the same scan as `mcpwatch scan`).
//! Neither alone answers "what MCP is on this host, is it governed, and is it used?". This module
//! joins them per server (a configured remote URL matches a network endpoint by
//! `host:port/path`; stdio launches are grouped by launch hash) into an [`Inventory`] that is
//! serde both ways, so `mcpwatch report --merge` can read what `list --format json` wrote on
//! other hosts. `list --json` keeps printing the daemon's raw array, as before.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use mcpwatch_api::{Request, Response, ServerEntry, ToolEntry};
use serde::{Deserialize, Serialize};

use crate::client::Conn;
use crate::table::{Column, Table, sanitize};
use crate::{emit, now_ms, unexpected, view};

/// `kind` of a `list --format json` document (what `report --merge` recognises).
pub const INVENTORY_KIND: &str = "mcpwatch-inventory";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
    Md,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The daemon's raw inventory as a JSON array (network only, no scan; kept for scripts).
    #[arg(long, conflicts_with_all = ["format", "no_scan", "policy", "home", "root"])]
    pub json: bool,
    /// Output format of the merged inventory.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Do not scan client configurations: network servers only.
    #[arg(long)]
    pub no_scan: bool,
    /// Policy file whose [[server]] registry classifies configured servers (registered/shadow).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub scope: ScanScope,
}

/// Where the local scan looks (as `mcpwatch scan --home/--root`; default: every home and the
/// system-wide managed files).
#[derive(Debug, Args, Default)]
pub struct ScanScope {
    /// Scan only this home directory (repeatable).
    #[arg(long, value_name = "DIR")]
    pub home: Vec<PathBuf>,
    /// Filesystem root to scan below.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// Where a server stands, most alarming first (the sort order of every view).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Standing {
    /// Seen on the network, not in the policy's registry.
    Shadow,
    /// A remote server reached (or configured to be reached) directly although a policy
    /// `[[gateway]]` fronts its host.
    Bypass,
    /// A configured stdio server running now (its traffic never crosses the network).
    Running,
    /// In a client configuration, never seen on the network.
    ConfiguredOnly,
    /// Seen on the network and registered in the policy.
    Registered,
}

impl Standing {
    pub const ALL: [Standing; 5] = [
        Standing::Shadow,
        Standing::Bypass,
        Standing::Running,
        Standing::ConfiguredOnly,
        Standing::Registered,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Standing::Shadow => "shadow",
            Standing::Bypass => "bypass",
            Standing::Running => "running",
            Standing::ConfiguredOnly => "configured-only",
            Standing::Registered => "registered",
        }
    }
}

/// The policy registry's view of a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RegistryState {
    Registered {
        name: String,
    },
    Shadow,
    /// Reached around the named `[[gateway]]`.
    Bypass {
        gateway: String,
    },
    /// No policy to check against (configured servers without `--policy`).
    Unchecked,
}

/// Where a configured server is written down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRef {
    pub client: String,
    pub scope: String,
    pub owner: String,
    pub file: String,
    #[serde(default)]
    pub line: Option<usize>,
    /// The entry's name in that file.
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// A risk flag from the scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskNote {
    pub flag: String,
    pub detail: String,
}

/// One server of the merged inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvServer {
    /// The network endpoint, the configured URL, or `stdio:<launch>`.
    pub id: String,
    /// serverInfo name/version when seen, else the configured entry name.
    pub name: String,
    pub status: Standing,
    pub registry: RegistryState,
    /// Seen by mcpwatchd (network).
    pub seen: bool,
    /// Found in a client configuration.
    pub configured: bool,
    pub transport: String,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    /// The daemon's tool entries (calls, pin state, diff).
    pub tools: Vec<ToolEntry>,
    #[serde(default)]
    pub calls: u64,
    #[serde(default)]
    pub messages: u64,
    /// Client programs (network: executable basename; config: client id).
    #[serde(default)]
    pub clients: Vec<String>,
    /// Users (network: process owner; config: file owner).
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub configs: Vec<ConfigRef>,
    #[serde(default)]
    pub risks: Vec<RiskNote>,
    #[serde(default)]
    pub pids: Vec<u32>,
    /// Daemon alerts (poisoned tools, changed pins), newest last.
    #[serde(default)]
    pub alerts: Vec<String>,
    #[serde(default)]
    pub last_seen_ms: Option<u64>,
}

impl InvServer {
    pub fn changed_tools(&self) -> impl Iterator<Item = &ToolEntry> {
        self.tools.iter().filter(|t| t.changed)
    }
}

/// The merged inventory of one host (`list --format json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub kind: String,
    pub version: u32,
    pub host: String,
    pub generated_ms: u64,
    /// The daemon answered (network source present).
    pub network: bool,
    /// Client configurations were scanned (config source present).
    pub scanned: bool,
    /// What the sources could not say (daemon down, bypass unknown, unreadable files).
    #[serde(default)]
    pub notes: Vec<String>,
    pub servers: Vec<InvServer>,
}

impl Inventory {
    pub fn count(&self, s: Standing) -> usize {
        self.servers.iter().filter(|x| x.status == s).count()
    }
}

/// A scan entry as `scan --json` writes it (only the fields the inventory uses).
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigEntry {
    pub client: String,
    pub scope: String,
    pub file: String,
    #[serde(default)]
    pub line: Option<usize>,
    pub owner: String,
    pub name: String,
    pub transport: String,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub launch_hash: String,
    #[serde(default)]
    pub risks: Vec<RiskNote>,
    pub registry: ScanRegistry,
    #[serde(default)]
    pub pids: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ScanRegistry {
    pub status: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
}

impl ConfigEntry {
    fn registry(&self) -> RegistryState {
        match (self.registry.status.as_str(), &self.registry.name) {
            ("registered", Some(n)) => RegistryState::Registered { name: n.clone() },
            ("shadow", _) => RegistryState::Shadow,
            ("bypass", _) => RegistryState::Bypass {
                gateway: self.registry.gateway.clone().unwrap_or_default(),
            },
            _ => RegistryState::Unchecked,
        }
    }

    /// `stdio://kind:name` of what the entry launches, if it can be told.
    fn launch_identity(&self) -> Option<String> {
        let cmd = self.command.as_deref()?;
        let mut argv = if self.args.is_empty() && cmd.trim().contains(' ') {
            mcpwatch_policy::launch::shell_words(cmd)
        } else {
            vec![cmd.to_string()]
        };
        argv.extend(self.args.iter().cloned());
        mcpwatch_policy::launch::identify(&argv).map(|l| mcpwatch_policy::stdio_endpoint(&l))
    }

    fn launch(&self) -> String {
        match &self.command {
            Some(c) => std::iter::once(c.as_str())
                .chain(self.args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" "),
            None => self.url.clone().unwrap_or_default(),
        }
    }
}

/// The host's name (`/proc/sys/kernel/hostname`), for reports that name their host.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

fn from_network(e: &ServerEntry) -> InvServer {
    let name = match (&e.server_name, &e.server_version) {
        (Some(n), Some(v)) => format!("{n}/{v}"),
        (Some(n), None) => n.clone(),
        _ => "-".into(),
    };
    let mut clients = Vec::new();
    let mut users = Vec::new();
    for c in &e.clients {
        push_unique(
            &mut clients,
            c.exe
                .as_deref()
                .map(view::basename)
                .unwrap_or(c.comm.as_str())
                .to_string(),
        );
        push_unique(
            &mut users,
            c.user.clone().unwrap_or_else(|| format!("uid {}", c.uid)),
        );
    }
    let registry = match &e.registered {
        Some(n) => RegistryState::Registered { name: n.clone() },
        None => RegistryState::Shadow,
    };
    InvServer {
        id: e.endpoint.clone(),
        name,
        status: if e.registered.is_some() {
            Standing::Registered
        } else {
            Standing::Shadow
        },
        registry,
        seen: true,
        configured: false,
        transport: e.transport.clone(),
        protocol: e.protocol_version.clone(),
        tools: e.tools.clone(),
        calls: e.call_count,
        messages: e.message_count,
        clients,
        users,
        configs: Vec::new(),
        risks: Vec::new(),
        pids: Vec::new(),
        alerts: e.alerts.clone(),
        last_seen_ms: Some(e.last_seen_ms),
    }
}

/// Merge the daemon's inventory (`None`: it did not answer) and the scan's entries (`None`: not
/// scanned) into one inventory, most alarming servers first.
pub fn merge(
    host: &str,
    now: u64,
    network: Option<&[ServerEntry]>,
    configs: Option<&[ConfigEntry]>,
) -> Inventory {
    let mut servers: Vec<InvServer> = network
        .unwrap_or_default()
        .iter()
        .map(from_network)
        .collect();
    // Match keys of the network servers; configured-only groups get their own keys appended.
    // Stdio servers the daemon saw (through `mcpwatch wrap` or the kernel) are keyed by
    // their launch identity, `stdio://npm:@scope/name`: the same key a configured entry's
    // command line gives (`mcpwatch_policy::launch`), so both sources meet on one row.
    let mut keys: Vec<Option<String>> = servers
        .iter()
        .map(|s| {
            if s.id.starts_with(mcpwatch_policy::STDIO_SCHEME) {
                Some(s.id.clone())
            } else {
                mcpwatch_discover::match_key(&s.id)
            }
        })
        .collect();
    for c in configs.unwrap_or_default() {
        let url_key = c.url.as_deref().and_then(mcpwatch_discover::match_key);
        let launch_key = if c.url.is_none() { c.launch_identity() } else { None };
        let key = match (&url_key, &launch_key) {
            (Some(k), _) => format!("url:{k}"),
            (None, Some(k)) => k.clone(),
            (None, None) => format!("stdio:{}", c.launch_hash),
        };
        let at = url_key
            .as_ref()
            .and_then(|k| keys.iter().position(|x| x.as_deref() == Some(k.as_str())))
            .or_else(|| keys.iter().position(|x| x.as_deref() == Some(key.as_str())));
        let idx = match at {
            Some(i) => i,
            None => {
                let registry = c.registry();
                let status = if matches!(registry, RegistryState::Bypass { .. }) {
                    Standing::Bypass
                } else {
                    Standing::ConfiguredOnly
                };
                servers.push(InvServer {
                    id: c
                        .url
                        .clone()
                        .unwrap_or_else(|| format!("stdio:{}", c.launch())),
                    name: c.name.clone(),
                    status,
                    registry,
                    seen: false,
                    configured: true,
                    transport: c.transport.clone(),
                    protocol: None,
                    tools: Vec::new(),
                    calls: 0,
                    messages: 0,
                    clients: Vec::new(),
                    users: Vec::new(),
                    configs: Vec::new(),
                    risks: Vec::new(),
                    pids: Vec::new(),
                    alerts: Vec::new(),
                    last_seen_ms: None,
                });
                keys.push(Some(key));
                servers.len() - 1
            }
        };
        let s = &mut servers[idx];
        s.configured = true;
        push_unique(&mut s.clients, c.client.clone());
        push_unique(&mut s.users, c.owner.clone());
        for r in &c.risks {
            if !s.risks.contains(r) {
                s.risks.push(r.clone());
            }
        }
        for p in &c.pids {
            if !s.pids.contains(p) {
                s.pids.push(*p);
            }
        }
        if let RegistryState::Bypass { gateway } = c.registry() {
            s.status = Standing::Bypass;
            s.registry = RegistryState::Bypass { gateway };
        } else if !s.seen && !s.pids.is_empty() {
            s.status = Standing::Running;
        }
        s.configs.push(ConfigRef {
            client: c.client.clone(),
            scope: c.scope.clone(),
            owner: c.owner.clone(),
            file: c.file.clone(),
            line: c.line,
            name: c.name.clone(),
            enabled: c.enabled,
        });
    }
    servers.sort_by(|a, b| {
        a.status
            .cmp(&b.status)
            .then(b.calls.cmp(&a.calls))
            .then(a.id.cmp(&b.id))
    });
    let mut notes = Vec::new();
    if network.is_none() {
        notes.push(NO_NETWORK_NOTE.into());
    }
    if configs.is_none() {
        notes.push(NO_SCAN_NOTE.into());
    }
    Inventory {
        kind: INVENTORY_KIND.into(),
        version: 1,
        host: host.into(),
        generated_ms: now,
        network: network.is_some(),
        scanned: configs.is_some(),
        notes,
        servers,
    }
}

/// The network source is missing (daemon down, or an input without it).
pub const NO_NETWORK_NOTE: &str = "no network inventory (mcpwatchd did not answer or was not asked): servers only \
     seen on the network, their tools and calls are missing";
/// The config source is missing.
pub const NO_SCAN_NOTE: &str = "client configurations were not scanned";

/// Why there is no `bypass` status.
pub const BYPASS_NOTE: &str = "bypass is not reported: no --policy with a [[gateway]] says which remote \
     hosts must be reached through a gateway";

/// Mark network servers that a policy `[[gateway]]` fronts but that were reached directly.
pub fn apply_gateways(inv: &mut Inventory, policy: Option<&mcpwatch_policy::Policy>) {
    let Some(policy) = policy.filter(|p| !p.gateways().is_empty()) else {
        inv.notes.push(BYPASS_NOTE.into());
        return;
    };
    for s in inv.servers.iter_mut().filter(|s| s.seen) {
        if let Some(gateway) = mcpwatch_discover::bypassed_gateway(policy, &s.id) {
            s.status = Standing::Bypass;
            s.registry = RegistryState::Bypass { gateway };
        }
    }
    inv.servers.sort_by(|a, b| a.status.cmp(&b.status).then(b.calls.cmp(&a.calls)).then(a.id.cmp(&b.id)));
}

/// Local scan of the default scope (every home, managed files), as `mcpwatch scan` does, turned
/// into the entries `merge` takes, plus one note per unreadable file.
pub fn local_scan(
    policy: Option<&mcpwatch_policy::Policy>,
    scope: &ScanScope,
) -> Result<(Vec<ConfigEntry>, Vec<String>)> {
    for d in scope.home.iter().chain(&scope.root) {
        if !d.is_dir() {
            anyhow::bail!("{} is not a directory", d.display());
        }
    }
    let opts = mcpwatch_discover::Options {
        root: scope.root.clone().unwrap_or_else(|| PathBuf::from("/")),
        homes: (!scope.home.is_empty()).then(|| scope.home.clone()),
        system: scope.home.is_empty() || scope.root.is_some(),
        paths: Vec::new(),
        max_depth: 6,
        env: mcpwatch_discover::Environment::from_process(),
    };
    let report = mcpwatch_discover::scan(&opts, policy);
    let entries: Vec<ConfigEntry> = serde_json::from_value(serde_json::to_value(&report.servers)?)
        .context("scan entries do not convert to inventory entries")?;
    let notes = report
        .errors
        .iter()
        .map(|e| {
            format!(
                "unreadable client configuration {} ({})",
                e.file.display(),
                e.message
            )
        })
        .collect();
    Ok((entries, notes))
}

/// Ask the daemon for its inventory; `Ok(None)` (with a line on stderr) when it is not there.
pub fn fetch_network(socket: &Path) -> Result<Option<Vec<ServerEntry>>> {
    // Only an unreachable daemon is "not there"; a daemon that answers wrongly is an error.
    let mut conn = match Conn::connect(socket, false) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "mcpwatch: {e:#}; showing configured servers only"
            );
            return Ok(None);
        }
    };
    conn.send(&Request::List)?;
    match conn.next()? {
        Some(Response::List { servers }) => Ok(Some(servers)),
        Some(Response::Error { message }) => Err(crate::client::daemon_error(&message)),
        Some(other) => Err(unexpected("list", &other)),
        None => anyhow::bail!(
            "mcpwatchd at {} closed the connection without answering",
            socket.display()
        ),
    }
}

/// Build this host's merged inventory from the live sources.
pub fn build(
    socket: &Path,
    no_scan: bool,
    policy: Option<&Path>,
    scope: &ScanScope,
) -> Result<Inventory> {
    let policy = crate::scan::load_policy(policy)?;
    let network = fetch_network(socket)?;
    let (configs, scan_notes) = if no_scan {
        (None, Vec::new())
    } else {
        let (c, n) = local_scan(policy.as_ref(), scope)?;
        (Some(c), n)
    };
    if network.is_none() && no_scan {
        anyhow::bail!("mcpwatchd did not answer and --no-scan leaves nothing to list");
    }
    let mut inv = merge(
        &hostname(),
        now_ms(),
        network.as_deref(),
        configs.as_deref(),
    );
    inv.notes.extend(scan_notes);
    apply_gateways(&mut inv, policy.as_ref());
    Ok(inv)
}

pub fn run(socket: &Path, args: &ListArgs, out: &mut dyn Write) -> Result<()> {
    if args.json {
        let servers = match Conn::call(socket, &Request::List)? {
            Response::List { servers } => servers,
            other => return Err(unexpected("list", &other)),
        };
        let mut text = serde_json::to_string_pretty(&servers)?;
        text.push('\n');
        return emit(out, &text);
    }
    let inv = build(socket, args.no_scan, args.policy.as_deref(), &args.scope)?;
    if args.format == Format::Table {
        // The daemon's absence was reported when it was asked; the rest goes to stderr here.
        for n in inv
            .notes
            .iter()
            .skip(usize::from(!inv.network))
            .filter(|n| *n != BYPASS_NOTE && inv.scanned)
        {
            let _ = writeln!(std::io::stderr(), "mcpwatch: note: {}", sanitize(n));
        }
    }
    let text = match args.format {
        Format::Table => table(&inv, now_ms()),
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&inv)?),
        Format::Csv => csv(&inv),
        Format::Md => markdown(&inv),
    };
    emit(out, &text)
}

/// STATUS cell: the registry name for registered servers; SHADOW shouts.
pub fn status_label(s: &InvServer) -> String {
    match (&s.status, &s.registry) {
        (Standing::Registered, RegistryState::Registered { name }) => {
            format!("registered ({name})")
        }
        (Standing::Shadow, _) => "SHADOW".into(),
        (_, RegistryState::Bypass { gateway }) => format!("BYPASS (around gateway {gateway})"),
        (st, RegistryState::Shadow) => format!("{} (not in registry)", st.id()),
        (st, _) => st.id().into(),
    }
}

/// Tools, flagged ones first so truncation never hides them.
pub fn tools_label(s: &InvServer) -> String {
    if !s.seen {
        return "-".into();
    }
    let mut tools: Vec<&ToolEntry> = s.tools.iter().collect();
    tools.sort_by_key(|t| {
        if t.hidden.is_some() {
            0
        } else if t.changed {
            1
        } else if t.poisoning.is_some() {
            2
        } else {
            3
        }
    });
    let names: Vec<String> = tools
        .iter()
        .map(|t| {
            let flag = if t.hidden.is_some() {
                " [hidden]"
            } else if t.changed {
                " [changed]"
            } else if t.poisoning.is_some() {
                " [suspicious]"
            } else {
                ""
            };
            // Toxic-flow labels, without their sources (those are in --json).
            let labels = if t.labels.is_empty() {
                String::new()
            } else {
                let short: Vec<&str> = t.labels.iter().map(|l| l.split(' ').next().unwrap_or(l)).collect();
                format!(" {{{}}}", short.join(","))
            };
            format!("{}{flag}{labels}", t.name)
        })
        .collect();
    if names.is_empty() {
        "0".into()
    } else {
        format!("{}: {}", names.len(), names.join(", "))
    }
}

fn clients_label(s: &InvServer) -> String {
    if s.clients.is_empty() {
        return "-".into();
    }
    format!("{} ({})", s.clients.join(", "), s.users.join(", "))
}

pub fn risks_label(s: &InvServer) -> String {
    let mut ids: Vec<&str> = s.risks.iter().map(|r| r.flag.as_str()).collect();
    ids.dedup();
    if ids.is_empty() {
        "-".into()
    } else {
        ids.join(",")
    }
}

fn table(inv: &Inventory, now: u64) -> String {
    if inv.servers.is_empty() {
        return format!("{}\n", view::EMPTY_INVENTORY);
    }
    let rows: Vec<Vec<String>> = inv
        .servers
        .iter()
        .map(|s| {
            [
                s.id.clone(),
                status_label(s),
                s.transport.clone(),
                s.name.clone(),
                s.protocol.clone().unwrap_or_else(|| "-".into()),
                tools_label(s),
                if s.seen {
                    s.calls.to_string()
                } else {
                    "-".into()
                },
                clients_label(s),
                risks_label(s),
                s.last_seen_ms
                    .map(|t| view::relative(now, t))
                    .unwrap_or_else(|| "never".into()),
            ]
            .iter()
            .map(|c| sanitize(c))
            .collect()
        })
        .collect();
    Table::new(vec![
        Column::left("SERVER", 0, 48),
        Column::left("STATUS", 0, 28),
        Column::left("TRANSPORT", 0, 15),
        Column::left("NAME/VERSION", 0, 28),
        Column::left("PROTOCOL", 0, 10),
        Column::left("TOOLS", 0, 40),
        Column::right("CALLS", 0, 8),
        Column::left("CLIENTS", 0, 36),
        Column::left("RISKS", 0, 32),
        Column::left("LAST SEEN", 0, 10),
    ])
    .render(&rows)
}

fn csv(inv: &Inventory) -> String {
    let mut out = String::from(
        "host,server,status,registry,transport,name,calls,tools,clients,users,risks,configs,last_seen_ms\n",
    );
    for s in &inv.servers {
        let registry = match &s.registry {
            RegistryState::Registered { name } => format!("registered:{name}"),
            RegistryState::Shadow => "shadow".into(),
            RegistryState::Bypass { gateway } => format!("bypass:{gateway}"),
            RegistryState::Unchecked => String::new(),
        };
        let cells = [
            inv.host.clone(),
            s.id.clone(),
            s.status.id().into(),
            registry,
            s.transport.clone(),
            s.name.clone(),
            s.calls.to_string(),
            s.tools
                .iter()
                .map(|t| format!("{}={}", t.name, t.calls))
                .collect::<Vec<_>>()
                .join(";"),
            s.clients.join(";"),
            s.users.join(";"),
            s.risks
                .iter()
                .map(|r| r.flag.as_str())
                .collect::<Vec<_>>()
                .join(";"),
            s.configs
                .iter()
                .map(|c| c.file.clone())
                .collect::<Vec<_>>()
                .join(";"),
            s.last_seen_ms.map(|t| t.to_string()).unwrap_or_default(),
        ];
        let row: Vec<String> = cells.iter().map(|c| crate::scan::csv_cell(c)).collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

fn markdown(inv: &Inventory) -> String {
    let md = crate::scan::md;
    let mut out = format!("# MCP servers on {}\n\n", md(&inv.host));
    let counts: Vec<String> = Standing::ALL
        .iter()
        .map(|s| format!("{} {}", inv.count(*s), s.id()))
        .collect();
    let _ = writeln!(
        out,
        "{} servers: {}\n",
        inv.servers.len(),
        counts.join(", ")
    );
    out.push_str("| server | status | transport | name | calls | tools | clients | risks |\n|---|---|---|---|---|---|---|---|\n");
    for s in &inv.servers {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            md(&s.id),
            md(&status_label(s)),
            md(&s.transport),
            md(&s.name),
            s.calls,
            md(&tools_label(s)),
            md(&clients_label(s)),
            md(&risks_label(s)),
        );
    }
    if !inv.notes.is_empty() {
        out.push_str("\n## Notes\n\n");
        for n in &inv.notes {
            let _ = writeln!(out, "- {}", md(n));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpwatch_api::ClientUse;

    fn net(endpoint: &str, registered: Option<&str>, calls: u64) -> ServerEntry {
        ServerEntry {
            endpoint: endpoint.into(),
            transport: "streamable-http".into(),
            server_name: Some("srv".into()),
            call_count: calls,
            registered: registered.map(str::to_string),
            tools: vec![ToolEntry {
                name: "t".into(),
                calls,
                ..Default::default()
            }],
            clients: vec![ClientUse {
                exe: Some("/usr/bin/node".into()),
                comm: "node".into(),
                uid: 1000,
                user: Some("alice".into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn conf(name: &str, url: Option<&str>, command: Option<&str>, pids: Vec<u32>) -> ConfigEntry {
        ConfigEntry {
            client: "claude-code".into(),
            scope: "user".into(),
            file: "/home/bob/.claude.json".into(),
            line: Some(3),
            owner: "bob".into(),
            name: name.into(),
            transport: if url.is_some() && command.is_none() {
                "http".into()
            } else {
                "stdio".into()
            },
            command: command.map(str::to_string),
            args: vec!["-y".into(), "pkg".into()],
            url: url.map(str::to_string),
            enabled: true,
            launch_hash: format!("hash-{name}"),
            risks: vec![RiskNote {
                flag: "unpinned-fetch".into(),
                detail: "npx -y".into(),
            }],
            registry: ScanRegistry {
                status: "unchecked".into(),
                name: None,
                gateway: None,
            },
            pids,
        }
    }

    #[test]
    fn configured_url_joins_the_network_server_and_the_rest_stay_configured_only() {
        let network = [
            net("http://127.0.0.2:18001/mcp", Some("demo"), 5),
            net("https://x.example:443/mcp", None, 2),
        ];
        let configs = [
            conf("demo", Some("http://127.0.0.2:18001/mcp/"), None, vec![]),
            conf("fs", None, Some("npx"), vec![]),
            conf("fs-again", None, Some("npx"), vec![]),
            conf("git", None, Some("uvx"), vec![42]),
            conf("far", Some("https://far.example/mcp"), None, vec![]),
        ];
        let mut configs = configs.to_vec();
        configs[2].launch_hash = "hash-fs".into();
        let inv = merge("h1", 7, Some(&network), Some(&configs));
        let by_id = |id: &str| {
            inv.servers
                .iter()
                .find(|s| s.id == id)
                .unwrap_or_else(|| panic!("{id} missing: {inv:#?}"))
        };
        let demo = by_id("http://127.0.0.2:18001/mcp");
        assert_eq!(
            (demo.status, demo.seen, demo.configured),
            (Standing::Registered, true, true)
        );
        assert_eq!(demo.clients, ["node", "claude-code"]);
        assert_eq!(demo.users, ["alice", "bob"]);
        assert_eq!(demo.risks.len(), 1);
        assert_eq!(by_id("https://x.example:443/mcp").status, Standing::Shadow);
        let fs = by_id("stdio:npx -y pkg");
        assert_eq!(fs.status, Standing::ConfiguredOnly);
        assert_eq!(fs.configs.len(), 2, "one launch, two entries: one server");
        assert_eq!(
            by_id("https://far.example/mcp").status,
            Standing::ConfiguredOnly
        );
        let git = inv.servers.iter().find(|s| s.name == "git").expect("git");
        assert_eq!(
            (git.status, git.pids.clone()),
            (Standing::Running, vec![42])
        );
        let order: Vec<Standing> = inv.servers.iter().map(|s| s.status).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "most alarming first");
        assert_eq!(inv.servers.len(), 5);
    }

    #[test]
    fn without_the_daemon_the_inventory_says_so() {
        let inv = merge("h", 1, None, Some(&[conf("fs", None, Some("npx"), vec![])]));
        assert!(!inv.network && inv.scanned);
        assert_eq!(inv.notes[0], NO_NETWORK_NOTE);
        let back: Inventory =
            serde_json::from_str(&serde_json::to_string(&inv).expect("ser")).expect("de");
        assert_eq!(back, inv);
    }

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn empty_inventory_prints_a_message_not_a_header() {
        let inv = merge("h", NOW, Some(&[]), None);
        assert_eq!(table(&inv, NOW), format!("{}\n", view::EMPTY_INVENTORY));
    }

    #[test]
    fn table_row_contents() {
        let mut s = net("http://127.0.0.2:8765/mcp", None, 7);
        s.server_version = Some("1.2.0".into());
        s.protocol_version = Some("2025-11-25".into());
        s.message_count = 9;
        s.last_seen_ms = NOW - 3_000;
        s.tools.push(ToolEntry {
            name: "search".into(),
            ..Default::default()
        });
        s.clients.push(ClientUse {
            comm: "python3".into(),
            uid: 1001,
            ..Default::default()
        });
        let inv = merge("h", NOW, Some(&[s]), None);
        let text = table(&inv, NOW);
        let row: Vec<&str> = text
            .lines()
            .nth(1)
            .expect("row")
            .split("  ")
            .filter(|c| !c.trim().is_empty())
            .map(str::trim)
            .collect();
        assert_eq!(
            row,
            [
                "http://127.0.0.2:8765/mcp",
                "SHADOW",
                "streamable-http",
                "srv/1.2.0",
                "2025-11-25",
                "2: t, search",
                "7",
                "node, python3 (alice, uid 1001)",
                "-",
                "3s ago"
            ]
        );
    }

    #[test]
    fn long_tool_lists_are_truncated_flagged_tools_first() {
        let mut s = net("http://127.0.0.2:8765/mcp", Some("r"), 0);
        s.tools = (0..30)
            .map(|i| ToolEntry {
                name: format!("tool_number_{i}"),
                ..Default::default()
            })
            .collect();
        s.tools[29].changed = true;
        let text = table(&merge("h", NOW, Some(&[s]), None), NOW);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[1].contains("30: tool_number_29 [changed], tool_numb…"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn hostile_names_are_escaped_in_the_table() {
        let mut s = net("http://x:1/", None, 0);
        s.server_name = Some("x\x1b]0;pwned\x07".into());
        let text = table(&merge("h", NOW, Some(&[s]), None), NOW);
        assert!(text.contains("x\\u{1b}]0;pwned\\u{7}"), "{text}");
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn gateways_turn_direct_calls_and_configs_into_bypass() {
        let policy = mcpwatch_policy::parse(
            "version = 1\nmode = \"audit\"\n[[gateway]]\nname = \"corp\"\nurl = \"https://gw.corp.example/mcp\"\ncovers = [\"*.githubcopilot.com\"]\n",
            "p.toml",
        )
        .expect("policy");
        let network = [
            net("https://api.githubcopilot.com:443/mcp", Some("copilot"), 5),
            net("https://gw.corp.example:443/mcp", Some("gw"), 9),
        ];
        let mut bypassing = conf("direct", Some("https://api.githubcopilot.com/other"), None, vec![]);
        bypassing.registry = ScanRegistry { status: "bypass".into(), name: None, gateway: Some("corp".into()) };
        let mut inv = merge("h", NOW, Some(&network), Some(&[bypassing]));
        apply_gateways(&mut inv, Some(&policy));
        let by_id = |id: &str| inv.servers.iter().find(|s| s.id == id).unwrap_or_else(|| panic!("{id}"));
        assert_eq!(by_id("https://api.githubcopilot.com:443/mcp").status, Standing::Bypass);
        assert_eq!(
            by_id("https://api.githubcopilot.com:443/mcp").registry,
            RegistryState::Bypass { gateway: "corp".into() }
        );
        assert_eq!(by_id("https://gw.corp.example:443/mcp").status, Standing::Registered);
        assert_eq!(by_id("https://api.githubcopilot.com/other").status, Standing::Bypass);
        assert_eq!(inv.servers[0].status, Standing::Bypass, "most alarming first");
        assert!(!inv.notes.iter().any(|n| n == BYPASS_NOTE));
        // Without gateways, the note says why there is no bypass status.
        let mut plain = merge("h", NOW, Some(&network), None);
        apply_gateways(&mut plain, None);
        assert!(plain.notes.iter().any(|n| n == BYPASS_NOTE));
        assert!(plain.servers.iter().all(|s| s.status != Standing::Bypass));
    }

    #[test]
    fn a_configured_stdio_server_joins_the_daemons_stdio_row() {
        let network = [net("stdio://npm:@modelcontextprotocol/server-everything", None, 4)];
        let mut everything = conf("everything", None, Some("npx"), vec![]);
        everything.args = vec!["-y".into(), "@modelcontextprotocol/server-everything@2026.1.1".into()];
        let other = conf("other", None, Some("uvx"), vec![]);
        let inv = merge("h", NOW, Some(&network), Some(&[everything, other]));
        let row = inv.servers.iter().find(|s| s.id == "stdio://npm:@modelcontextprotocol/server-everything").expect("row");
        assert!(row.seen && row.configured, "{row:?}");
        assert_eq!(row.calls, 4);
        assert_eq!(row.configs.len(), 1);
        assert_eq!(inv.servers.len(), 2, "the other configured server keeps its own row");
    }
}
