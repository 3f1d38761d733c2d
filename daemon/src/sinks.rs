//! Audit to the SIEM: ship stored audit records to syslog, Loki, a Splunk-HEC-shaped
//! HTTP collector, or a rotating JSON-lines file.
//!
//! Why it exists: security teams want mcpwatch's records in the SIEM they already run,
//! without a custom pipeline. Each sink is off unless configured and is fed FROM THE
//! STORE, never from the request path: a slow or dead SIEM cannot slow or block a call.
//! Each sink keeps a cursor (the id of the last record its receiver acknowledged) in
//! `<state dir>/sinks/<name>.cursor` (0600), written only after a batch is acknowledged,
//! so a sink that is down catches up from the store when it returns, and a restart
//! resumes after the last acknowledged record.
//!
//! Guarantee (precisely): at-least-once per record still in the store. A record can be
//! sent twice only if the daemon dies between a receiver's acknowledgement and the
//! cursor write (one batch at most), or a receiver acknowledged without keeping it;
//! receivers dedupe on the record `id` (Loki drops identical timestamp+line pairs by
//! itself; the file sink skips ids already in its file). A record is lost only if
//! retention (`limits.max_audit_records`) prunes it before it was shipped: the backlog
//! alert fires well before that on a sane configuration.
//!
//! A record is shipped once it is final (it has a response, or it failed), or once it
//! is `settle_ms` old (held or streaming calls), and never before it is `min_age_ms`
//! old: ids are taken slightly before records are inserted, and the wait keeps a later
//! insert with a smaller id from falling behind the cursor.

mod event;
mod file;
mod hec;
mod http;
mod loki;
mod syslog;
mod tls_client;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpwatch_api::{AuditRecord, CallStatus};
use mcpwatch_audit::Store;
use serde::Deserialize;

use crate::clock::now_ms;
use crate::host::HostIdentity;

pub use event::EVENT_SCHEMA_VERSION;

/// `[sinks]`: shared settings plus one optional table per sink kind.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct SinksFile {
    /// Records per batch (default 500, 1..=10000).
    pub batch_size: Option<usize>,
    /// How often an idle sink looks for new records (default 1000).
    pub poll_interval_ms: Option<u64>,
    /// A record is never shipped before it is this old (default 3000).
    pub min_age_ms: Option<u64>,
    /// A record without a response is shipped anyway after this long (default 60000: longer
    /// than the default approval timeout, so held calls ship with their outcome).
    pub settle_ms: Option<u64>,
    /// Unshipped records above which the sink warns and raises its backlog metric
    /// (default 100000).
    pub max_backlog: Option<u64>,
    /// Longest wait between retries of a failing receiver (default 30000).
    pub max_retry_ms: Option<u64>,
    /// A receiver that does not answer a batch within this long has failed (default 10000).
    pub timeout_ms: Option<u64>,
    pub syslog: Option<syslog::SyslogConfig>,
    pub loki: Option<loki::LokiConfig>,
    pub hec: Option<hec::HecConfig>,
    pub file: Option<file::FileConfig>,
}

/// Validated `[sinks]`.
#[derive(Debug, Clone)]
pub struct SinksConfig {
    pub batch_size: usize,
    pub poll_interval: Duration,
    pub min_age_ms: u64,
    pub settle_ms: u64,
    pub max_backlog: u64,
    pub max_retry: Duration,
    pub timeout: Duration,
    pub syslog: Option<syslog::SyslogConfig>,
    pub loki: Option<loki::LokiConfig>,
    pub hec: Option<hec::HecConfig>,
    pub file: Option<file::FileConfig>,
}

impl Default for SinksConfig {
    fn default() -> Self {
        SinksFile::default().into_config().unwrap_or_else(|e| panic!("default [sinks] is invalid: {e}"))
    }
}

impl SinksFile {
    pub fn into_config(self) -> Result<SinksConfig, String> {
        let c = SinksConfig {
            batch_size: self.batch_size.unwrap_or(500),
            poll_interval: Duration::from_millis(self.poll_interval_ms.unwrap_or(1000)),
            min_age_ms: self.min_age_ms.unwrap_or(3000),
            settle_ms: self.settle_ms.unwrap_or(60_000),
            max_backlog: self.max_backlog.unwrap_or(100_000),
            max_retry: Duration::from_millis(self.max_retry_ms.unwrap_or(30_000)),
            timeout: Duration::from_millis(self.timeout_ms.unwrap_or(10_000)),
            syslog: self.syslog,
            loki: self.loki,
            hec: self.hec,
            file: self.file,
        };
        if !(1..=10_000).contains(&c.batch_size) {
            return Err(format!("sinks.batch_size must be between 1 and 10000, got {}", c.batch_size));
        }
        if c.poll_interval.is_zero() || c.max_retry.is_zero() || c.timeout.is_zero() {
            return Err("sinks.poll_interval_ms, max_retry_ms and timeout_ms must be positive".into());
        }
        if c.settle_ms < c.min_age_ms {
            return Err("sinks.settle_ms must not be smaller than sinks.min_age_ms".into());
        }
        if c.max_backlog == 0 {
            return Err("sinks.max_backlog must be positive".into());
        }
        if let Some(s) = &c.syslog {
            s.validate()?;
        }
        if let Some(s) = &c.loki {
            s.validate()?;
        }
        if let Some(s) = &c.hec {
            s.validate()?;
        }
        if let Some(s) = &c.file {
            s.validate()?;
        }
        Ok(c)
    }
}

/// Why a batch was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: std::io::Error },
    #[error("{target}: {source}")]
    Io { target: String, source: std::io::Error },
    #[error("{target} answered HTTP {status}: {body}")]
    Rejected { target: String, status: u16, body: String },
    #[error("{target}: HTTP: {message}")]
    Http { target: String, message: String },
    #[error("{target} did not answer within {timeout:?}")]
    Timeout { target: String, timeout: Duration },
}

/// One configured sink.
enum Sink {
    Syslog(syslog::Syslog),
    Loki(loki::Loki),
    Hec(hec::Hec),
    File(file::FileSink),
}

impl Sink {
    async fn send(&mut self, batch: &[event::Prepared<'_>]) -> Result<(), SinkError> {
        match self {
            Sink::Syslog(s) => s.send(batch).await,
            Sink::Loki(s) => s.send(batch).await,
            Sink::Hec(s) => s.send(batch).await,
            Sink::File(s) => s.send(batch).await,
        }
    }
}

/// What a sink has done, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub name: &'static str,
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    /// Unshipped records (counted up to `max_backlog + 1`).
    pub backlog: AtomicU64,
    pub backlog_exceeded: AtomicBool,
    pub last_error: Mutex<Option<String>>,
}

/// Every running sink's stats (empty when no sink is configured).
pub type SinkRegistry = Vec<Arc<SinkStats>>;

/// Where sink `name` keeps its cursor.
pub fn cursor_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("sinks").join(format!("{name}.cursor"))
}

/// Start one task per configured sink; returns their stats and tasks. Failing to set a
/// sink up (unreadable token file, unwritable file path) is logged and that sink stays
/// off; the proxy is unaffected.
pub fn start(
    cfg: &SinksConfig,
    state_dir: &Path,
    store: &Store,
    identity: &Arc<HostIdentity>,
) -> (SinkRegistry, Vec<tokio::task::JoinHandle<()>>) {
    let mut made: Vec<(&'static str, Result<Sink, String>)> = Vec::new();
    if let Some(c) = &cfg.syslog {
        made.push(("syslog", syslog::Syslog::new(c.clone(), cfg.timeout).map(Sink::Syslog)));
    }
    if let Some(c) = &cfg.loki {
        made.push(("loki", loki::Loki::new(c.clone(), cfg.timeout, identity).map(Sink::Loki)));
    }
    if let Some(c) = &cfg.hec {
        made.push(("hec", hec::Hec::new(c.clone(), cfg.timeout).map(Sink::Hec)));
    }
    if let Some(c) = &cfg.file {
        made.push(("file", file::FileSink::open(c.clone()).map(Sink::File)));
    }
    let mut registry = Vec::new();
    let mut tasks = Vec::new();
    for (name, sink) in made {
        match sink {
            Ok(sink) => {
                let stats = Arc::new(SinkStats { name, ..Default::default() });
                registry.push(stats.clone());
                let driver = Driver {
                    store: store.clone(),
                    cfg: cfg.clone(),
                    identity: identity.clone(),
                    cursor_file: cursor_path(state_dir, name),
                    stats,
                };
                tasks.push(tokio::spawn(driver.run(sink)));
                tracing::info!(sink = name, "audit sink started");
            }
            Err(e) => tracing::error!(sink = name, error = %e, "audit sink not started"),
        }
    }
    (registry, tasks)
}

struct Driver {
    store: Store,
    cfg: SinksConfig,
    identity: Arc<HostIdentity>,
    cursor_file: PathBuf,
    stats: Arc<SinkStats>,
}

impl Driver {
    async fn run(self, mut sink: Sink) {
        let name = self.stats.name;
        let mut cursor = match read_cursor(&self.cursor_file) {
            Ok(c) => c,
            Err(e) => {
                // Starting over would resend everything; refusing to run loses nothing.
                tracing::error!(sink = name, path = %self.cursor_file.display(), error = %e, "unreadable sink cursor; sink stopped (fix or remove the file)");
                *self.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                return;
            }
        };
        let mut backoff = Duration::ZERO;
        let mut failing = false;
        let mut counted_at: Option<tokio::time::Instant> = None;
        loop {
            // Counting costs up to `max_backlog` key reads: at most once a second.
            if counted_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                self.update_backlog(cursor.as_deref()).await;
                counted_at = Some(tokio::time::Instant::now());
            }
            let page = self.ready_page(cursor.as_deref()).await;
            if page.is_empty() {
                tokio::time::sleep(self.cfg.poll_interval).await;
                continue;
            }
            let prepared: Vec<_> = page.iter().map(|r| event::Prepared::new(r, &self.identity)).collect();
            match sink.send(&prepared).await {
                Ok(()) => {
                    let last = page.last().map(|r| r.id.clone());
                    if let Some(id) = &last
                        && let Err(e) = write_cursor(&self.cursor_file, id).await
                    {
                        // The batch was delivered; it is sent again after a restart.
                        tracing::error!(sink = name, error = %e, "cannot persist sink cursor");
                    }
                    cursor = last;
                    self.stats.sent.fetch_add(page.len() as u64, Ordering::Relaxed);
                    if failing {
                        tracing::info!(sink = name, "audit sink recovered");
                    }
                    failing = false;
                    backoff = Duration::ZERO;
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(sink = name, error = %e, "audit sink failed; records stay in the store and are retried");
                    } else {
                        tracing::debug!(sink = name, error = %e, "audit sink still failing");
                    }
                    *self.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    failing = true;
                    backoff = (backoff * 2).clamp(Duration::from_millis(200), self.cfg.max_retry);
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// The records after `cursor` that may be shipped now: a prefix of the store, so the
    /// cursor never skips a record that is not ready yet.
    async fn ready_page(&self, cursor: Option<&str>) -> Vec<AuditRecord> {
        let store = self.store.clone();
        let after = cursor.map(str::to_string);
        let limit = self.cfg.batch_size;
        let page = match tokio::task::spawn_blocking(move || store.records_after(after.as_deref(), limit)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::error!(sink = self.stats.name, error = %e, "cannot read the audit store");
                return Vec::new();
            }
            Err(e) => {
                tracing::error!(sink = self.stats.name, error = %e, "store read task failed");
                return Vec::new();
            }
        };
        let now = now_ms();
        let ready = page.iter().take_while(|r| is_ready(r, now, self.cfg.min_age_ms, self.cfg.settle_ms)).count();
        let mut page = page;
        page.truncate(ready);
        page
    }

    async fn update_backlog(&self, cursor: Option<&str>) {
        let store = self.store.clone();
        let after = cursor.map(str::to_string);
        let cap = self.cfg.max_backlog.saturating_add(1);
        let Ok(Ok(n)) = tokio::task::spawn_blocking(move || store.count_after(after.as_deref(), cap)).await else {
            return;
        };
        self.stats.backlog.store(n, Ordering::Relaxed);
        let exceeded = n > self.cfg.max_backlog;
        let was = self.stats.backlog_exceeded.swap(exceeded, Ordering::Relaxed);
        if exceeded && !was {
            tracing::warn!(
                sink = self.stats.name,
                max_backlog = self.cfg.max_backlog,
                "audit sink backlog exceeded: the receiver is down or too slow; records are kept in the store \
                 (until limits.max_audit_records prunes them) and shipped when it catches up"
            );
        } else if was && !exceeded {
            tracing::info!(sink = self.stats.name, "audit sink backlog back under its bound");
        }
    }
}

/// Final, or old enough that waiting longer for its response is pointless.
fn is_ready(r: &AuditRecord, now: u64, min_age_ms: u64, settle_ms: u64) -> bool {
    // The id's time prefix is when the id was taken; `ts_ms` is stamped with it.
    let age = now.saturating_sub(id_ms(&r.id).unwrap_or(r.ts_ms));
    if age < min_age_ms {
        return false;
    }
    r.status != CallStatus::Pending || age >= settle_ms
}

/// The millisecond prefix of a store id.
fn id_ms(id: &str) -> Option<u64> {
    id.get(..20)?.parse().ok()
}

/// The cursor in `path`: `None` when the file does not exist yet.
fn read_cursor(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let id = s.trim();
            if id.len() == mcpwatch_audit::ID_LEN && id.bytes().all(|b| b.is_ascii_digit()) {
                Ok(Some(id.to_string()))
            } else {
                Err(format!("{} does not hold a record id", path.display()))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Atomically replace the cursor (temp file 0600, fsync, rename, fsync the directory).
async fn write_cursor(path: &Path, id: &str) -> std::io::Result<()> {
    let path = path.to_path_buf();
    let id = id.to_string();
    tokio::task::spawn_blocking(move || write_cursor_sync(&path, &id)).await.map_err(std::io::Error::other)?
}

fn write_cursor_sync(path: &Path, id: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = path.parent().ok_or_else(|| std::io::Error::other("cursor path has no directory"))?;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let tmp = path.with_extension("cursor.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(id.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_waits_for_min_age_then_for_a_response_or_settle() {
        let id = "00000000000000010000000003".to_string();
        let pending = AuditRecord { id: id.clone(), ts_ms: 10_000, ..Default::default() };
        let done = AuditRecord { status: CallStatus::Ok, ..pending.clone() };
        assert!(!is_ready(&done, 11_000, 3000, 30_000), "too young");
        assert!(is_ready(&done, 13_000, 3000, 30_000));
        assert!(!is_ready(&pending, 13_000, 3000, 30_000), "no response yet");
        assert!(is_ready(&pending, 40_000, 3000, 30_000), "settled by age");
    }

    #[test]
    fn cursor_round_trips_with_0600_and_rejects_garbage() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = cursor_path(dir.path(), "hec");
        assert_eq!(read_cursor(&p).unwrap(), None);
        write_cursor_sync(&p, "00000000000000010000000003").unwrap();
        assert_eq!(read_cursor(&p).unwrap().as_deref(), Some("00000000000000010000000003"));
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&p, "not an id").unwrap();
        assert!(read_cursor(&p).is_err());
    }

    #[test]
    fn config_defaults_and_bounds() {
        let c = SinksConfig::default();
        assert!(c.syslog.is_none() && c.loki.is_none() && c.hec.is_none() && c.file.is_none(), "every sink is off by default");
        let bad = SinksFile { batch_size: Some(0), ..Default::default() }.into_config();
        assert!(bad.unwrap_err().contains("batch_size"));
        let bad = SinksFile { min_age_ms: Some(10), settle_ms: Some(5), ..Default::default() }.into_config();
        assert!(bad.unwrap_err().contains("settle_ms"));
    }
}
