//! `mcpwatchd`: load config, open the store, listen, attach the eBPF programs, serve.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use mcpwatch_api::FailureMode;
use mcpwatchd::config::{Config, FileConfig};
use mcpwatchd::resolve::{BpfResolver, Resolve, StaticResolver};
use mcpwatchd::state::Shared;

const DEFAULT_CONFIG: &str = "/etc/mcpwatch/mcpwatchd.toml";
const DEFAULT_POLICY: &str = "/etc/mcpwatch/policy.toml";

#[derive(Parser, Debug)]
#[command(name = "mcpwatchd", version, about = "Watches and governs MCP connections on this host")]
struct Args {
    /// Config file (TOML). Default: /etc/mcpwatch/mcpwatchd.toml if it exists.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Cgroup v2 directory whose processes are intercepted. Default: the whole host
    /// (the root of the cgroup2 mount).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Loopback port redirected connections arrive on.
    #[arg(long)]
    listen_port: Option<u16>,
    /// Destination ports in scope: "all" or e.g. "80,443,8000-8999".
    #[arg(long)]
    ports: Option<String>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// What happens when mcpwatchd cannot do its job: open (traffic flows) or closed.
    #[arg(long, value_parser = parse_failure_mode)]
    failure_mode: Option<FailureMode>,
    /// No eBPF: send every accepted connection to this address (reverse-proxy mode for
    /// tests and benchmarks).
    #[arg(long)]
    static_upstream: Option<std::net::SocketAddr>,
    /// Policy file. Default: /etc/mcpwatch/policy.toml if it exists, else the embedded
    /// default policy. An invalid policy stops the daemon from starting.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Validate the config and policy, print a summary, and exit (nothing is attached).
    #[arg(long)]
    check: bool,
    /// Base directory (on a bpf filesystem) where fail-closed mode pins its eBPF links,
    /// one subdirectory per watched cgroup. Default: /sys/fs/bpf/mcpwatch.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Detach the pinned links of the configured cgroup and exit. Fail-closed mode
    /// leaves them attached while mcpwatchd is down, so MCP connections from the cgroup
    /// are refused; after this they connect directly (unobserved).
    #[arg(long)]
    release_pins: bool,
}

fn parse_failure_mode(s: &str) -> Result<FailureMode, String> {
    match s {
        "open" => Ok(FailureMode::Open),
        "closed" => Ok(FailureMode::Closed),
        _ => Err(format!("expected `open` or `closed`, got `{s}`")),
    }
}

fn load_config(args: &Args) -> Result<Config> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => FileConfig::load(std::path::Path::new(DEFAULT_CONFIG))?,
        None => FileConfig::default(),
    };
    let mut c = file.into_config()?;
    if let Some(v) = &args.cgroup {
        c.cgroup = Some(v.clone());
    }
    if let Some(v) = args.listen_port {
        c.listen_port = v;
    }
    if let Some(v) = &args.ports {
        c.ports = v.clone();
    }
    if let Some(v) = &args.state_dir {
        c.state_dir = v.clone();
    }
    if let Some(v) = &args.control_socket {
        c.control_socket = v.clone();
    }
    if let Some(v) = args.failure_mode {
        c.failure_mode = v;
    }
    if let Some(v) = &args.pin_dir {
        c.pin_dir = v.clone();
    }
    c.validate()?;
    Ok(c)
}

fn main() {
    // Before any thread exists: malloc's arena cap (see `memory`).
    mcpwatchd::memory::limit_arenas();
    // journald's native fields under systemd, text otherwise.
    mcpwatchd::logging::init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcpwatchd: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = rt.block_on(real_main()) {
        eprintln!("mcpwatchd: {e:#}");
        std::process::exit(2);
    }
}

async fn real_main() -> Result<()> {
    let args = Args::parse();
    let config = load_config(&args)?;
    if args.release_pins {
        return release_pins(&config);
    }
    let source = mcpwatchd::governance::Governance::source_for(args.policy.as_deref(), std::path::Path::new(DEFAULT_POLICY));
    if args.check {
        // Nothing is created: a throwaway hash key is enough to compile the policy.
        let governance = mcpwatchd::governance::Governance::start(source).map_err(|e| anyhow::anyhow!("invalid policy:\n{e}"))?;
        let g = governance.current();
        println!("config ok; policy {} ok (mode {}, {} servers, {} agents, {} rules)", g.origin, g.policy.mode(), g.policy.servers().len(), g.policy.agents().len(), g.policy.rules().len());
        return Ok(());
    }
    // Checks an operator can act on, each one line, before anything is created.
    let notifier = mcpwatchd::notify::Notifier::from_env();
    let cgroup = match args.static_upstream {
        Some(_) => None,
        None => {
            let cgroup = watched_cgroup(&config).map_err(|_| mcpwatchd::preflight::no_cgroup2())?;
            mcpwatchd::preflight::cgroup(&cgroup)?;
            mcpwatchd::preflight::bpf_permission()?;
            if mcpwatchd::failure::links_outlive_daemon(config.failure_mode) {
                mcpwatchd::preflight::bpffs(&config.pin_dir)?;
            }
            Some(cgroup)
        }
    };
    // Everything the daemon creates from here on is private (0600 files, 0700 dirs),
    // whatever umask it was started with; what an earlier run left is tightened too.
    let listeners = mcpwatchd::preflight::listeners(&config.listen_addrs()).await?;
    mcpwatchd::startup::restrict_umask();
    mcpwatchd::preflight::state_dir(&config.state_dir)?;
    let key = mcpwatchd::startup::load_or_create_key(&config.state_dir).context("hash key")?;
    let governance = mcpwatchd::governance::Governance::start_keyed(source, key).map_err(|e| anyhow::anyhow!("invalid policy:\n{e}"))?;
    {
        let g = governance.current();
        tracing::info!(policy = %g.origin, mode = %g.policy.mode(), rules = g.policy.rules().len(), servers = g.policy.servers().len(), "policy loaded");
    }
    let store = mcpwatch_audit::Store::open(
        &config.state_dir,
        mcpwatch_audit::StoreOptions {
            max_records: config.limits.max_audit_records,
            max_bytes: config.audit_max_bytes,
            max_age_ms: config.audit_max_age_ms,
            ..Default::default()
        },
    )?;
    let tls = if config.tls.enabled {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_string());
        mcpwatchd::ca::prepare(&config.tls, &config.state_dir, &hostname)
            .context("local CA ([tls] in the config; `enabled = false` turns it off)")?;
        let rt = mcpwatchd::interception::TlsRuntime::build(&config.tls, &config.state_dir, &hostname)
            .context("TLS interception ([tls] in the config; `enabled = false` turns it off)")?;
        tracing::info!(
            ca = %rt.issuer.ca().cert_path().display(),
            fingerprint = %rt.issuer.ca().fingerprint_sha256(),
            upstream_anchors = rt.upstream.anchor_count(),
            "TLS interception ready"
        );
        Some(rt)
    } else {
        tracing::info!("TLS interception disabled: TLS is relayed untouched");
        None
    };
    // The store and the CA were just opened or created: re-check every mode.
    mcpwatchd::startup::tighten(&config.state_dir).context("state dir permissions")?;
    let shared = Shared::build(config.clone(), store, tls, governance);
    {
        // SIGHUP re-reads the policy; a broken file leaves the current one in force.
        // systemd hears RELOADING=1 before and READY=1 after, either way.
        let shared = shared.clone();
        let notifier = notifier.clone();
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    notifier.reloading();
                    let status = match shared.reload_policy() {
                        Ok(summary) => summary,
                        Err(e) => format!("policy reload rejected, previous policy in force: {}", e.lines().next().unwrap_or_default()),
                    };
                    notifier.ready(&status);
                }
            });
        }
    }

    let resolver: Arc<dyn Resolve> = match args.static_upstream {
        Some(dst) => {
            tracing::info!(%dst, "static upstream mode: eBPF interception not attached");
            if let Ok(mut a) = shared.attach.lock() {
                a.error = Some(format!("not attached: static upstream mode ({dst})"));
            }
            Arc::new(StaticResolver { dst })
        }
        None => {
            let cgroup = cgroup.clone().unwrap_or_default();
            let pin_dir = pin_dir_for_mode(&config, &cgroup)?;
            let ports = config.ports.parse::<mcpwatch_intercept::PortScope>().map_err(|e| anyhow::anyhow!("ports: {e}"))?;
            // The resolvers UDP port 53 stays open toward: configured, else resolv.conf's
            // (then followed as it changes).
            let resolv_conf = config.scope.dns_servers.is_none().then(mcpwatchd::resolve::host_dns_servers);
            let icfg = mcpwatch_intercept::InterceptConfig {
                cgroup: cgroup.clone(),
                listen_port: config.listen_port,
                ports,
                mark: config.mark,
                daemon_tgid: std::process::id(),
                pin_dir,
                agents: mcpwatch_intercept::AgentScope {
                    enabled: config.scope.agents,
                    comms: config.scope.comms(),
                    classify: !shared.governance.current().policy.agents().is_empty(),
                },
                refuse_udp: config.scope.udp == mcpwatchd::config::UdpScope::Refuse,
                dns_servers: resolv_conf.clone().or_else(|| config.scope.dns_servers.clone()).unwrap_or_default(),
            };
            let interceptor = mcpwatch_intercept::Interceptor::attach(&icfg)
                .with_context(|| format!("cannot attach interception to {}", cgroup.display()))?;
            if let Ok(mut a) = shared.attach.lock() {
                a.attached = true;
                a.cgroup = Some(cgroup.display().to_string());
                a.pinned = interceptor.pin_dir().map(|d| d.display().to_string());
            }
            tracing::info!(cgroup = %cgroup.display(), ports = %config.ports, "interception attached");
            let bpf = Arc::new(BpfResolver::new(interceptor).with_sanitizer(mcpwatchd::resolve::cmdline_filter(shared.clone())));
            tokio::spawn(bpf.clone().sweep_forever());
            tokio::spawn(mcpwatchd::resolve::count_udp_refused(bpf.clone(), shared.clone(), resolv_conf));
            if config.scope.agents {
                tokio::spawn(mcpwatchd::scope::run(bpf.clone(), shared.clone(), config.scope.comms()));
                if config.scope.stdio {
                    mcpwatchd::stdio::task::spawn(shared.clone(), bpf.clone());
                }
            }
            bpf
        }
    };

    let control = mcpwatchd::control::bind(&config.control_socket, &config.control_group).await?;
    // The gate for `mcpwatch wrap` (stdio servers), beside the control socket.
    let gate_path = mcpwatch_api::gate::gate_socket_for(&config.control_socket);
    let gate = mcpwatchd::gate::bind(&gate_path, config.failure_mode).await?;
    let gate_task = tokio::spawn(mcpwatchd::gate::serve(gate, shared.clone()));
    tracing::info!(
        listen = ?listeners.iter().filter_map(|l| l.local_addr().ok()).collect::<Vec<_>>(),
        control = %config.control_socket.display(),
        failure_mode = %config.failure_mode,
        "mcpwatchd ready"
    );
    let attach = shared.attach.lock().map(|a| a.clone()).unwrap_or_default();
    let listen = listeners.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.to_string()).collect::<Vec<_>>().join(" ");
    notifier.ready(&format!(
        "serving on {listen}; {}; policy {}",
        match &attach.cgroup {
            Some(c) => format!("intercepting {c}"),
            None => "not intercepting (static upstream)".to_string(),
        },
        shared.governance.current().origin
    ));
    let watchdog = match (notifier.enabled(), mcpwatchd::notify::watchdog_interval()) {
        (true, Some(interval)) => Some({
            let shared = shared.clone();
            tokio::spawn(mcpwatchd::notify::watchdog(notifier.clone(), move |w| shared.heartbeats.alive_within(w), interval))
        }),
        _ => None,
    };
    let stopping = notifier.clone();
    let shutdown = async move {
        shutdown_signal().await;
        stopping.stopping();
    };
    mcpwatchd::run(shared, listeners, control, resolver, shutdown).await;
    gate_task.abort();
    // The failure-mode file stays: wrappers read it while the daemon is down.
    let _ = std::fs::remove_file(&gate_path);
    if let Some(w) = watchdog {
        w.abort();
    }
    let _ = std::fs::remove_file(&config.control_socket);
    match (&attach.pinned, &attach.cgroup) {
        (Some(dir), Some(cgroup)) if std::path::Path::new(dir).exists() => tracing::warn!(
            pin_dir = %dir,
            "mcpwatchd stopped; failure mode closed: the eBPF links stay pinned, so MCP connections from {cgroup} \
             are REFUSED until mcpwatchd runs again. To let them through unobserved: \
             mcpwatchd --release-pins --cgroup {cgroup} --pin-dir {}",
            config.pin_dir.display()
        ),
        _ => tracing::info!("mcpwatchd stopped; interception detached"),
    }
    Ok(())
}

/// The cgroup the daemon watches: the configured one, else the cgroup2 root.
fn watched_cgroup(config: &Config) -> Result<PathBuf> {
    Ok(match &config.cgroup {
        Some(c) => c.clone(),
        None => mcpwatch_intercept::cgroup::cgroup2_mount()?,
    })
}

/// Fail-closed: where to pin the links. Fail-open: nowhere, and pins an earlier
/// fail-closed run left for this cgroup are released first (they would otherwise
/// keep redirecting ahead of the new links).
fn pin_dir_for_mode(config: &Config, cgroup: &std::path::Path) -> Result<Option<PathBuf>> {
    let dir = mcpwatch_intercept::pin_dir_for(&config.pin_dir, cgroup);
    if mcpwatchd::failure::links_outlive_daemon(config.failure_mode) {
        return Ok(Some(dir.with_context(|| format!("cannot pin interception for {}", cgroup.display()))?));
    }
    // A cgroup the pin dir cannot be derived for is reported by attach itself.
    if let Ok(dir) = dir {
        let n = mcpwatch_intercept::release_pins(&dir).with_context(|| {
            format!("failure mode is open but links pinned by a fail-closed run at {} cannot be released", dir.display())
        })?;
        if n > 0 {
            tracing::warn!(pin_dir = %dir.display(), released = n, "released the links a fail-closed run left pinned (failure mode is now open)");
        }
    }
    Ok(None)
}

/// `--release-pins`: detach what a fail-closed daemon left pinned for its cgroup.
fn release_pins(config: &Config) -> Result<()> {
    let cgroup = watched_cgroup(config)?;
    let dir = mcpwatch_intercept::pin_dir_for(&config.pin_dir, &cgroup)?;
    let n = mcpwatch_intercept::release_pins(&dir)
        .with_context(|| format!("cannot release the pinned links at {}", dir.display()))?;
    if n == 0 {
        println!("nothing pinned at {} (cgroup {})", dir.display(), cgroup.display());
    } else {
        println!(
            "released {n} pinned links at {}: MCP connections from cgroup {} are no longer refused while mcpwatchd is down \
             (a running mcpwatchd keeps intercepting until it exits)",
            dir.display(),
            cgroup.display()
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
