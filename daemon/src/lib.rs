//! mcpwatchd: watches and governs every MCP connection on a Linux host.
//!
//! See ARCHITECTURE.md at the repository root for the bird's-eye view. In short:
//! [`intercept`](mcpwatch_intercept) redirects connections with eBPF; [`proxy`] accepts
//! them, relays non-MCP bytes untouched and parses MCP over HTTP; [`state`] records every
//! message in the audit store and the [`inventory`]; [`control`] answers the CLI.

pub mod admission;
pub mod bodies;
pub mod approvals;
pub mod ca;
pub mod clock;
pub mod config;
pub mod control;
pub mod failure;
pub mod gate;
pub mod govern;
pub mod governance;
pub mod interception;
pub mod host;
pub mod hostproof;
pub mod inventory;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod preflight;
pub mod proxy;
pub mod record;
pub mod resolve;
pub mod scope;
pub mod session;
pub mod sinks;
pub mod startup;
pub mod state;
pub mod tally;
pub mod stdio;

use std::future::Future;
use std::sync::Arc;

use mcpwatch_api::Status;

pub use proxy::run as run_proxy;
pub use state::Shared;

/// Build the `mcpwatch status` view.
pub fn status(shared: &Shared, listen: &[std::net::SocketAddr]) -> Status {
    let attach = shared.attach.lock().map(|a| a.clone()).unwrap_or_default();
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_secs: shared.started.elapsed().as_secs(),
        failure_mode: shared.config.failure_mode,
        audit_sync: shared.config.audit_sync,
        audit_durability: Some(match shared.config.audit_sync_mode {
            config::SyncMode::PerCall => "on disk before forwarding (sync = per_call)".to_string(),
            config::SyncMode::Group => format!(
                "in the kernel before forwarding, on disk within {} ms (sync = group)",
                shared.config.audit_group_commit.as_millis()
            ),
            config::SyncMode::Off => "in the kernel before forwarding, on disk at the next checkpoint (sync = off)".to_string(),
        }),
        attached: attach.attached,
        cgroup: attach.cgroup,
        attach_error: attach.error,
        pinned_at: attach.pinned,
        ports: shared.config.ports.clone(),
        listen: listen.iter().map(|a| a.to_string()).collect(),
        control_socket: shared.config.control_socket.display().to_string(),
        state_dir: shared.config.state_dir.display().to_string(),
        counts: shared.counts(),
        policy: Some(shared.governance.current().origin.clone()),
        policy_error: shared.governance.last_error(),
        held_calls: shared.approvals.list().len() as u64,
        warnings: warnings(shared),
        coverage: Some(mcpwatch_api::Coverage::from_counts(
            shared.inventory.list().iter().map(|s| s.call_count).sum(),
            shared.counters.stdio_observed_calls.load(std::sync::atomic::Ordering::Relaxed),
        )),
        ca: ca::status(shared),
    }
}

/// Operator warnings for `mcpwatch status`: clients that distrust the CA, the CA's expiry
/// and rotation, connection limits that refused connections recently, refused non-HTTP
/// traffic.
pub fn warnings(shared: &Shared) -> Vec<String> {
    use std::sync::atomic::Ordering;
    let mut out = shared.tls.as_ref().map(|t| t.warnings()).unwrap_or_default();
    out.extend(ca::warnings(shared));
    let c = &shared.counters;
    out.extend(shared.admission.warnings(|r| c.refused(r).load(Ordering::Relaxed)));
    let refused = c.refused_protocol.load(Ordering::Relaxed);
    if refused > 0 {
        out.push(format!("{refused} connection(s) that were not HTTP or TLS toward governed MCP destinations refused (enforce mode); see `mcpwatch audit`"));
    }
    let bodies = shared.bodies.refused();
    if bodies > 0 {
        out.push(format!(
            "{bodies} request body(ies), WebSocket message(s) or answer(s) refused: the budget for bodies held for inspection (limits.max_buffered_body_bytes = {} bytes, one uid may hold half) was spent; a flood of slow or large bodies, or a budget too small for this host",
            shared.bodies.limit()
        ));
    }
    out
}

/// Serve the proxy and the control socket until `shutdown` resolves.
pub async fn run(
    shared: Arc<Shared>,
    listeners: Vec<tokio::net::TcpListener>,
    control: tokio::net::UnixListener,
    resolver: Arc<dyn resolve::Resolve>,
    shutdown: impl Future<Output = ()>,
) {
    let listen: Vec<_> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    let status_shared = shared.clone();
    let status_fn: Arc<dyn Fn() -> Status + Send + Sync> = Arc::new(move || status(&status_shared, &listen));
    let control_task = tokio::spawn(control::serve(control, shared.clone(), status_fn));
    let extras = start_sinks_and_metrics(&shared).await;

    proxy::run(shared, listeners, resolver, shutdown).await;
    control_task.abort();
    for t in extras {
        t.abort();
    }

}

/// Start the configured audit sinks and the metrics endpoint (both off by default). A
/// metrics address that cannot be bound is logged, not fatal: monitoring failing must
/// not take the governing proxy down. Returns the tasks to stop at shutdown.
async fn start_sinks_and_metrics(shared: &Arc<Shared>) -> Vec<tokio::task::JoinHandle<()>> {
    let (registry, mut tasks) = sinks::start(&shared.config.sinks, &shared.config.state_dir, &shared.store, &shared.host);
    // Retired CAs leave the bundle when their overlap ends.
    tasks.push(tokio::spawn(ca::withdraw_when_due(shared.clone())));
    // Resident size follows live data, not malloc's retained free lists.
    tasks.push(tokio::spawn(memory::trim_periodically()));
    // Denies, redactions and shadow servers reach the log (journal) as they happen.
    if let Some(listen) = shared.config.metrics.listen.clone() {
        let m = Arc::new(metrics::Metrics::new(shared.config.metrics.max_series));
        tasks.push(tokio::spawn(metrics::follow(m.clone(), shared.subscribe())));
        match metrics::serve(listen.clone(), shared.clone(), m, Arc::new(registry)).await {
            Ok(t) => {
                tracing::info!(listen = ?listen, "metrics endpoint listening");
                tasks.push(t);
            }
            Err(e) => tracing::error!(listen = ?listen, error = %e, "metrics endpoint not started"),
        }
    }
    tasks
}
