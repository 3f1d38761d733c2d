//! State shared by every connection task and the control socket.
//!
//! One [`Shared`] per daemon: the validated config, the audit store, the inventory,
//! counters for `mcpwatch status`, and the broadcast channel `mcpwatch audit --follow`
//! listens on. Recording an audit record goes through [`Shared::begin_record`] /
//! [`Shared::complete_record`] so that storing, counting and broadcasting stay together.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mcpwatch_api::{AuditRecord, Counts};
use mcpwatch_audit::Store;
use tokio::sync::broadcast;

use crate::admission::Refusal;
use crate::config::Config;
use crate::inventory::Inventory;
use crate::session::Sessions;

/// Whether interception is attached, shown by `mcpwatch status`.
#[derive(Debug, Clone, Default)]
pub struct AttachState {
    pub attached: bool,
    pub cgroup: Option<String>,
    pub error: Option<String>,
    /// Where the links are pinned (fail-closed mode): they stay attached while the
    /// daemon is down.
    pub pinned: Option<String>,
}

#[derive(Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub connections_unresolved: AtomicU64,
    pub http_requests: AtomicU64,
    pub mcp_messages: AtomicU64,
    pub passthrough: AtomicU64,
    pub audit_records: AtomicU64,
    pub audit_write_errors: AtomicU64,
    /// Accepted and closed at once: `limits.max_connections` reached.
    pub refused_global: AtomicU64,
    /// Closed: the process's `limits.max_connections_per_process` reached.
    pub refused_process: AtomicU64,
    /// Closed: the uid's `limits.max_connections_per_uid` reached.
    pub refused_uid: AtomicU64,
    /// Closed: no decisive first bytes within `limits.peek_timeout`.
    pub closed_silent: AtomicU64,
    /// Relays closed after `limits.idle_timeout` without traffic.
    pub closed_idle: AtomicU64,
    /// Idle upstream connections kept for their process's next connection (`proxy::pool`).
    pub upstream_kept: AtomicU64,
    /// Client connections served over a kept upstream connection instead of a new one.
    pub upstream_reused: AtomicU64,
    /// Not HTTP toward a governed destination in enforce mode: refused (and audited).
    pub refused_protocol: AtomicU64,
    /// TLS clients that reject the CA toward an enforce-mode destination: refused.
    pub tls_distrust_refused: AtomicU64,
    /// HTTP/2 client connections (prior knowledge or ALPN h2), governed like HTTP/1.1.
    pub http2_connections: AtomicU64,
    /// UDP connects and sends refused by the eBPF hooks (`[scope] udp`), copied from the
    /// kernel's counter by `resolve::count_udp_refused`.
    pub udp_refused: AtomicU64,
    /// `tools/call`s seen on stdio from the kernel only (not wrapped): observed, not governed.
    pub stdio_observed_calls: AtomicU64,
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counter of connections a budget refused.
    pub fn refused(&self, r: Refusal) -> &AtomicU64 {
        match r {
            Refusal::Global => &self.refused_global,
            Refusal::Process => &self.refused_process,
            Refusal::Uid => &self.refused_uid,
        }
    }
}

pub struct Shared {
    pub config: Config,
    pub store: Store,
    pub inventory: Inventory,
    pub sessions: Sessions,
    pub counters: Counters,
    pub started: Instant,
    pub attach: Mutex<AttachState>,
    /// TLS interception (local CA, leaves, upstream trust, scope, distrust); `None` when
    /// `[tls] enabled = false`: TLS is then relayed untouched.
    pub tls: Option<crate::interception::TlsRuntime>,
    /// The CA directory's rotation state (retired CAs, bundle); `Some` exactly when `tls` is.
    pub ca_store: Option<mcpwatch_tls::CaStore>,
    /// The policy and inspector in force (reloadable), rate-limit state.
    pub governance: crate::governance::Governance,
    /// Calls held for approval.
    pub approvals: crate::approvals::Approvals,
    /// Per-process and per-uid connection budgets (fair share of `limits.max_connections`).
    pub admission: Arc<crate::admission::Admission>,
    /// Request bodies held for inspection, daemon-wide (`limits.max_buffered_body_bytes`).
    pub bodies: Arc<crate::bodies::BodyBudget>,
    /// Liveness of the accept loop and the audit flusher, read by the systemd watchdog.
    pub heartbeats: crate::notify::Heartbeats,
    /// The host's name and stable id, stamped on every audit record and sent by the sinks.
    pub host: Arc<crate::host::HostIdentity>,
    /// Which plain-HTTP Host names resolve to their destinations (cached DNS proofs).
    pub host_proofs: crate::hostproof::HostProofs,
    /// Pids of `mcpwatch wrap` processes connected to the gate now (pid → connections),
    /// as SO_PEERCRED names them: the stdio observer skips their servers, which the gate
    /// already audits. Bounded by the gate's session budget.
    pub gate_wrappers: std::sync::Mutex<std::collections::HashMap<u32, u32>>,
    /// Records as they are written, for `audit --follow` and metrics; sent only while
    /// someone listens, and shared (`Arc`), not copied per listener.
    records_tx: broadcast::Sender<Arc<AuditRecord>>,
    /// Which security events were logged already (a record is written twice: begun, then
    /// completed). Logged inline as records are written, not by a task woken per record.
    event_log: std::sync::Mutex<crate::logging::EventLog>,
    next_conn: AtomicU64,
    /// Group commit: writers bump `flush_wanted` and wait until `flushed` reaches it.
    flush_wanted: AtomicU64,
    flush_wake: tokio::sync::Notify,
    flushed: tokio::sync::watch::Sender<(u64, Option<String>)>,
    /// `[audit] sync = "group"`: something was written (or a completion queued) since the
    /// group commit last started, and the flusher was told ([`Shared::arm_commit`]). An
    /// idle daemon then runs no commit at all instead of one every `group_commit_ms`.
    commit_armed: AtomicBool,
    /// Group commits run (each is one journal fsync at most), for tests.
    commits: AtomicU64,
    /// Completions left by connection threads until they go idle (`record::finish`).
    deferred: Deferred,
}

impl Shared {
    pub fn new(config: Config, store: Store) -> Arc<Shared> {
        Shared::with_tls(config, store, None)
    }

    /// [`Shared::new`] with TLS interception (built by `interception::TlsRuntime::build`).
    pub fn with_tls(config: Config, store: Store, tls: Option<crate::interception::TlsRuntime>) -> Arc<Shared> {
        // The embedded policy is compiled by a unit test; it cannot fail here.
        let governance = crate::governance::Governance::start(crate::governance::Source::Embedded)
            .unwrap_or_else(|e| panic!("embedded default policy does not compile: {e}"));
        Shared::build(config, store, tls, governance)
    }

    /// Everything explicit: TLS runtime and the loaded policy.
    pub fn build(
        config: Config,
        store: Store,
        tls: Option<crate::interception::TlsRuntime>,
        governance: crate::governance::Governance,
    ) -> Arc<Shared> {
        let host = Arc::new(crate::host::HostIdentity::load(&config.state_dir));
        let inventory = Inventory::load(store.clone());
        let (records_tx, _) = broadcast::channel(1024);
        let sessions = Sessions::new(config.limits.max_pending_calls, config.limits.max_legacy_streams);
        let l = &config.limits;
        let admission = crate::admission::Admission::new(l.max_connections, l.max_connections_per_process, l.max_connections_per_uid);
        let bodies = crate::bodies::BodyBudget::new(l.max_buffered_body_bytes);
        let ca_store = crate::interception::store_for(&config, &host.hostname, tls.is_some());
        Arc::new(Shared {
            config,
            store,
            inventory,
            sessions,
            counters: Counters::default(),
            started: Instant::now(),
            attach: Mutex::new(AttachState::default()),
            tls,
            ca_store,
            governance,
            approvals: crate::approvals::Approvals::new(1024),
            admission,
            bodies,
            heartbeats: crate::notify::Heartbeats::default(),
            host,
            host_proofs: crate::hostproof::HostProofs::new(),
            gate_wrappers: Default::default(),
            records_tx,
            event_log: Default::default(),
            next_conn: AtomicU64::new(1),
            flush_wanted: AtomicU64::new(0),
            flush_wake: tokio::sync::Notify::new(),
            flushed: tokio::sync::watch::channel((0, None)).0,
            commit_armed: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            deferred: Default::default(),
        })
    }

    /// The flusher behind [`Shared::durable`]: one journal `fdatasync` on a blocking
    /// thread ([`Store::sync`]) covers every writer that asked before it started (group
    /// commit), and the runtime's worker threads never block on the disk. The record is
    /// already in the kernel (journal write(2) in [`Shared::begin_record`]) before this.
    ///
    /// `[audit] sync = "group"`: nobody waits; the journal is fsynced `group_commit_ms`
    /// after the first write since the last commit (every write in that window shares the
    /// fsync), so a record is durable within `group_commit_ms` plus one fsync, as with a
    /// fixed tick, but an idle daemon runs no commit and wakes no thread for it (it used
    /// to wake every 10 ms: ~270 thread wake-ups a second with nothing to do, measured).
    /// `"off"`: never.
    pub async fn flush_forever(self: Arc<Self>) {
        use crate::config::SyncMode;
        let mode = self.config.audit_sync_mode;
        let window = self.config.audit_group_commit.min(crate::notify::HEARTBEAT_EVERY);
        loop {
            self.heartbeats.flusher();
            // Wake at least every heartbeat so the watchdog sees an idle flusher alive.
            let asked = tokio::time::timeout(crate::notify::HEARTBEAT_EVERY, self.flush_wake.notified()).await.is_ok();
            let due = match mode {
                SyncMode::PerCall => asked,
                // A notification is a write that found no commit armed; the flag is
                // checked too, so a wake-up lost to a heartbeat timeout costs at most
                // one heartbeat, never a record.
                SyncMode::Group => asked || self.commit_armed.load(Ordering::SeqCst),
                SyncMode::Off => false,
            };
            if !due {
                continue;
            }
            let group = mode == SyncMode::Group;
            if group {
                // The window: writes from here on share this commit's fsync.
                tokio::time::sleep(window).await;
            }
            self.commits.fetch_add(1, Ordering::Relaxed);
            let target = self.flush_wanted.load(Ordering::Acquire);
            let shared = self.clone();
            let res = match tokio::task::spawn_blocking(move || {
                if group {
                    // The completions no proxy thread wrote while it waited for a server
                    // (`run_deferred_on_park`) go out with this commit.
                    shared.run_deferred();
                    // Disarmed before the sync: a write that still found it armed did so
                    // before this swap, which synchronizes with that write's own swap, so
                    // the sync covers it; a write after it arms the next commit.
                    shared.commit_armed.swap(false, Ordering::SeqCst);
                }
                shared.store.sync()
            })
            .await
            {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("flush task failed: {e}")),
            };
            if let Some(e) = &res {
                Counters::inc(&self.counters.audit_write_errors);
                tracing::error!(error = %e, "audit flush failed");
                if group {
                    // What it did not sync is still to sync: the next window retries it
                    // without waiting for a new write (as the fixed tick did), and a disk
                    // that recovers clears the error `durable` reports within a window.
                    self.arm_commit();
                }
            }
            self.flushed.send_replace((target, res));
        }
    }

    /// `[audit] sync = "group"`: a record was written, or a completion queued for the
    /// commit to write: make sure a commit follows within `group_commit_ms`. One atomic
    /// swap per write; the flusher is woken only by the write that opens a window.
    fn arm_commit(&self) {
        if self.config.audit_sync_mode == crate::config::SyncMode::Group && !self.commit_armed.swap(true, Ordering::SeqCst) {
            self.flush_wake.notify_one();
        }
    }

    /// How many commits [`Shared::flush_forever`] has run.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Queue a call's completion for the next park or commit ([`Deferred`]); returns how
    /// many wait now.
    pub(crate) fn defer(&self, rec: AuditRecord) -> usize {
        let n = self.deferred.push(rec);
        self.arm_commit();
        n
    }

    /// Wait until every record inserted so far is durable as `[audit] sync` asks:
    /// `per_call` waits for an fsync covering it (needs [`Shared::flush_forever`]
    /// running); `group` and `off` return at once, since the record is already in the
    /// kernel, unless the journal cannot be written (disk full) or the last group fsync
    /// failed: then the error, so fail-closed mode does not forward the call.
    pub async fn durable(&self) -> Result<(), String> {
        if !self.config.audit_sync {
            if let Some(e) = self.store.write_backlog() {
                return Err(e);
            }
            return match &self.flushed.borrow().1 {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            };
        }
        let mut rx = self.flushed.subscribe();
        let target = self.flush_wanted.fetch_add(1, Ordering::AcqRel) + 1;
        self.flush_wake.notify_one();
        loop {
            let (done, err) = rx.borrow_and_update().clone();
            if done >= target {
                return match err {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
            }
            if rx.changed().await.is_err() {
                return Err("audit flusher stopped".into());
            }
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AuditRecord>> {
        self.records_tx.subscribe()
    }

    /// Store a new record (before the message is forwarded; the forwarder then awaits
    /// [`Shared::durable`]). An error means the record is not stored; the caller asks
    /// `failure::decide` what to do.
    pub fn begin_record(&self, rec: &AuditRecord) -> Result<(), mcpwatch_audit::StoreError> {
        let res = self.store.insert_record(rec);
        self.arm_commit();
        match &res {
            Ok(()) => Counters::inc(&self.counters.audit_records),
            Err(e) => {
                Counters::inc(&self.counters.audit_write_errors);
                tracing::error!(error = %e, id = %rec.id, "audit write failed");
            }
        }
        self.announce(rec);
        res
    }

    /// Log the record's security events (once each) and hand it to listeners, if any.
    fn announce(&self, rec: &AuditRecord) {
        crate::logging::note_record(&self.event_log, rec);
        if self.records_tx.receiver_count() > 0 {
            let _ = self.records_tx.send(Arc::new(rec.clone()));
        }
    }

    /// Reload the policy; on success the calls held for approval under the old one are
    /// denied (an approval given after the reload would otherwise forward a call the new
    /// policy may deny), and the summary says how many.
    pub fn reload_policy(&self) -> Result<String, String> {
        let summary = self.governance.reload()?;
        let withdrawn = self.approvals.withdraw_all("the policy was reloaded while this call waited; send it again to be judged by the new policy");
        if withdrawn > 0 {
            tracing::warn!(withdrawn, "policy reloaded: calls held for approval under the old policy were denied");
            return Ok(format!("{summary}; {withdrawn} call(s) held for approval were denied (send them again)"));
        }
        Ok(summary)
    }

    /// Update a record once its response (or failure) is known.
    pub fn complete_record(&self, rec: &AuditRecord) {
        self.store_update(rec, false);
    }

    /// Write the completions that wait for their connection thread to go idle
    /// ([`Deferred`]): run by those threads before they sleep, by readers
    /// of the store before they read, and at shutdown.
    pub fn run_deferred(&self) {
        thread_local! {
            /// The batch being written, kept between batches with its capacity: the
            /// queue gets it back empty, so steady-state queueing allocates nothing.
            static BATCH: std::cell::RefCell<Vec<AuditRecord>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BATCH.with(|b| {
            // Not re-entered (writing a record does not run this); if it were, the inner
            // call leaves the queue to the outer one.
            let Ok(mut batch) = b.try_borrow_mut() else { return };
            self.deferred.swap(&mut batch);
            for rec in batch.drain(..) {
                self.finish_record(&rec);
            }
        });
    }

    /// A proxy thread is about to sleep: with `[audit] sync = "group"`, write the waiting
    /// completions only if it sleeps waiting for a server's answer
    /// ([`idle_waits_for_upstream`]); otherwise the group commit
    /// ([`Shared::flush_forever`]) writes them within `group_commit_ms`. So at one call at
    /// a time, the previous call's completion is written while its successor is with the
    /// server, not while the client's next request waits. Other modes have no periodic
    /// commit: they write on every sleep.
    pub fn run_deferred_on_park(&self) {
        if self.config.audit_sync_mode != crate::config::SyncMode::Group || idle_waits_for_upstream() {
            self.run_deferred();
        }
    }

    /// [`Shared::complete_record`] for a call that is over (answered, failed, closed):
    /// with `[audit] sync = "group"` its journal line goes out with the next write(2) or
    /// the group commit, within `group_commit_ms` (`Store::finish_record`); with
    /// `per_call` or `off` (no periodic commit) at once. Not for a change that must be
    /// written before something is forwarded (an approval): that is `complete_record`.
    pub fn finish_record(&self, rec: &AuditRecord) {
        self.store_update(rec, self.config.audit_sync_mode == crate::config::SyncMode::Group);
    }

    fn store_update(&self, rec: &AuditRecord, defer: bool) {
        let res = if defer { self.store.finish_record(rec) } else { self.store.update_record(rec) };
        self.arm_commit();
        if let Err(e) = res {
            Counters::inc(&self.counters.audit_write_errors);
            tracing::error!(error = %e, id = %rec.id, "audit update failed");
        }
        self.announce(rec);
    }

    pub fn counts(&self) -> Counts {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            connections: g(&c.connections),
            connections_unresolved: g(&c.connections_unresolved),
            http_requests: g(&c.http_requests),
            mcp_messages: g(&c.mcp_messages),
            passthrough: g(&c.passthrough),
            audit_records: self.store.record_count(),
            audit_pruned_young: self.store.pruned_young(),
            audit_write_errors: g(&c.audit_write_errors),
            servers: self.inventory.len() as u64,
            refused_global: g(&c.refused_global),
            refused_process: g(&c.refused_process),
            refused_uid: g(&c.refused_uid),
            closed_silent: g(&c.closed_silent),
            closed_idle: g(&c.closed_idle),
            upstream_kept: g(&c.upstream_kept),
            upstream_reused: g(&c.upstream_reused),
            refused_protocol: g(&c.refused_protocol),
            tls_distrust_refused: g(&c.tls_distrust_refused),
            http2_connections: g(&c.http2_connections),
            udp_refused: g(&c.udp_refused),
        }
    }
}

thread_local! {
    /// Requests this thread has sent upstream whose answer has not begun to arrive.
    static AWAITING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Held from sending a request upstream until its answer's head arrives (or the send
/// fails): while any is held, this thread going to sleep means it waits for a server,
/// which is when the completions waiting in [`Deferred`] are written (see
/// [`idle_waits_for_upstream`]), instead of after an answer, where the client's next
/// request would wait behind them.
#[must_use = "the request counts as awaited only while this is held"]
pub struct AwaitingUpstream(());

/// Count a request as awaited on this thread until the returned guard drops.
pub fn awaiting_upstream() -> AwaitingUpstream {
    AWAITING.with(|a| a.set(a.get() + 1));
    AwaitingUpstream(())
}

impl Drop for AwaitingUpstream {
    fn drop(&mut self) {
        // A guard dropped on another thread (a future moved by a multi-threaded runtime)
        // leaves its own thread counting one too many: that thread then writes on every
        // sleep, as before this existed; never fewer.
        AWAITING.with(|a| a.set(a.get().saturating_sub(1)));
    }
}

/// Whether this thread, about to sleep, waits for an upstream answer: the idle time in
/// which its waiting completions are written.
pub fn idle_waits_for_upstream() -> bool {
    AWAITING.with(std::cell::Cell::get) > 0
}

/// Completions of calls that are over, waiting for their connection thread to go idle
/// (`record::finish`). Here, not in `record`, because `Shared` holds it and `record`
/// imports `state`.
///
/// Measured (`perf`, `cargo xtask bench`, one keep-alive client): writing the completion
/// (encode, chain link, journal buffer) was ~7 µs between the server's answer and the
/// client's. Readers of the store (`mcpwatch audit`, verify, follow) and the proxy's
/// shutdown write what waits first, so nothing reads a store that lacks a completion the
/// client already has.
#[derive(Default)]
pub struct Deferred {
    queue: Mutex<Vec<AuditRecord>>,
    len: AtomicUsize,
}

impl Deferred {
    /// Queue a completion; returns how many wait now.
    pub(crate) fn push(&self, rec: AuditRecord) -> usize {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.push(rec);
        self.len.store(q.len(), Ordering::Release);
        q.len()
    }

    /// Exchanges the queue with `batch` (empty): `batch` then holds everything waiting,
    /// oldest first (nothing happens, without locking, when nothing waits).
    pub fn swap(&self, batch: &mut Vec<AuditRecord>) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        self.len.store(0, Ordering::Release);
        std::mem::swap(&mut *q, batch);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use mcpwatch_api::{AuditFilter, AuditRecord, CallStatus};

    use super::*;
    use crate::config::{Config, SyncMode};

    fn shared_with(dir: &std::path::Path, mode: SyncMode) -> Arc<Shared> {
        let store = mcpwatch_audit::Store::open(&dir.join("state"), Default::default()).expect("store");
        let config = Config { audit_sync_mode: mode, audit_group_commit: Duration::from_millis(10), ..Config::default() };
        Shared::new(config, store)
    }

    /// A call's record written pending, and its completion left waiting in `Deferred` as a
    /// proxy thread's `record::finish` leaves it.
    fn begun_and_deferred(shared: &Shared) -> String {
        let rec = AuditRecord { status: CallStatus::Pending, ..crate::record::begin(shared) };
        shared.begin_record(&rec).expect("begin");
        shared.defer(AuditRecord { status: CallStatus::Ok, duration_us: Some(5), ..rec.clone() });
        rec.id
    }

    /// What the store holds for `id` (the store alone: `Deferred` is not read).
    fn stored_status(shared: &Shared, id: &str) -> CallStatus {
        let recs = shared.store.query(&AuditFilter { limit: Some(100), ..Default::default() }).expect("query");
        recs.into_iter().find(|r| r.id == id).map(|r| r.status).expect("the record is stored")
    }

    #[test]
    fn a_park_writes_waiting_completions_while_a_server_is_awaited_and_not_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_with(dir.path(), SyncMode::Group);
        let id = begun_and_deferred(&shared);
        assert!(!idle_waits_for_upstream());
        shared.run_deferred_on_park();
        assert_eq!(stored_status(&shared, &id), CallStatus::Pending, "with nothing awaited, the park leaves it to the group commit");
        let awaiting = awaiting_upstream();
        assert!(idle_waits_for_upstream());
        shared.run_deferred_on_park();
        drop(awaiting);
        assert!(!idle_waits_for_upstream(), "the guard uncounts itself");
        assert_eq!(stored_status(&shared, &id), CallStatus::Ok, "a park while a server is awaited writes it");
    }

    #[test]
    fn without_a_group_commit_every_park_writes_waiting_completions() {
        for mode in [SyncMode::PerCall, SyncMode::Off] {
            let dir = tempfile::tempdir().unwrap();
            let shared = shared_with(dir.path(), mode);
            let id = begun_and_deferred(&shared);
            shared.run_deferred_on_park();
            assert_eq!(stored_status(&shared, &id), CallStatus::Ok, "{mode:?}: no periodic commit would write it");
        }
    }

    /// The group commit follows writes and nothing else: an idle daemon runs none (it
    /// used to run one every `group_commit_ms`, waking two threads each time), a write
    /// gets its fsync within the window, and once that is done the flusher is quiet again.
    #[tokio::test]
    async fn the_group_commit_runs_after_writes_and_not_while_idle() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_with(dir.path(), SyncMode::Group);
        let flusher = tokio::spawn(shared.clone().flush_forever());
        // Ten windows with nothing written.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(shared.commits(), 0, "no write, no commit");
        assert_eq!(shared.store.journal_syncs(), 0);
        let id = begun_and_deferred(&shared);
        let deadline = Instant::now() + Duration::from_secs(10);
        while stored_status(&shared, &id) != CallStatus::Ok || shared.store.journal_syncs() == 0 {
            assert!(Instant::now() < deadline, "the write was never committed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (commits, syncs) = (shared.commits(), shared.store.journal_syncs());
        assert!(commits >= 1);
        // Another ten windows, idle again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!((shared.commits(), shared.store.journal_syncs()), (commits, syncs), "idle again: no commit");
        // The next write opens the next window.
        let rec = AuditRecord { status: CallStatus::Pending, ..crate::record::begin(&shared) };
        shared.begin_record(&rec).expect("begin");
        let deadline = Instant::now() + Duration::from_secs(10);
        while shared.store.journal_syncs() == syncs {
            assert!(Instant::now() < deadline, "the second write was never committed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        flusher.abort();
    }

    /// A commit that fails (the disk is full) is retried window after window without a new
    /// write: once there is room again, what waited is written and synced and `durable`
    /// stops failing, though nothing was written since. Needs root to mount a small
    /// tmpfs; skips with the reason otherwise.
    #[tokio::test]
    async fn a_failed_group_commit_is_retried_without_a_new_write() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP a_failed_group_commit_is_retried_without_a_new_write: needs root to mount a tmpfs");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"]).arg(dir.path()).status().expect("mount");
        assert!(ok.success(), "mount tmpfs");
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
        let _mounted = Unmount(dir.path().to_path_buf());
        let shared = shared_with(dir.path(), SyncMode::Group);
        let flusher = tokio::spawn(shared.clone().flush_forever());
        // Fill the file system, then write: the journal line waits in user space.
        let filler_path = dir.path().join("filler");
        let mut filler = std::fs::File::create(&filler_path).expect("filler");
        while std::io::Write::write_all(&mut filler, &[0u8; 4096]).is_ok() {}
        drop(filler);
        let rec = AuditRecord { status: CallStatus::Pending, ..crate::record::begin(&shared) };
        shared.begin_record(&rec).expect("kept for the next try");
        assert!(shared.durable().await.is_err(), "the line is not in the kernel");
        // A commit runs and fails.
        let failed = || shared.counters.audit_write_errors.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while failed() == 0 {
            assert!(Instant::now() < deadline, "no commit failed on a full disk");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let commits = shared.commits();
        // Room again; nothing is written from here on.
        std::fs::remove_file(&filler_path).expect("rm filler");
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = shared.durable().await {
            assert!(Instant::now() < deadline, "the failed commit was never retried: {e}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(shared.commits() > commits, "a later commit did it");
        assert!(shared.store.journal_syncs() >= 1);
        assert_eq!(stored_status(&shared, &rec.id), CallStatus::Pending, "the record that waited is stored");
        flusher.abort();
    }

    #[tokio::test]
    async fn the_group_commit_writes_the_completions_no_park_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_with(dir.path(), SyncMode::Group);
        let id = begun_and_deferred(&shared);
        let flusher = tokio::spawn(shared.clone().flush_forever());
        let deadline = Instant::now() + Duration::from_secs(10);
        while stored_status(&shared, &id) != CallStatus::Ok {
            assert!(Instant::now() < deadline, "the completion was never written by the group commit");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        flusher.abort();
    }
}
