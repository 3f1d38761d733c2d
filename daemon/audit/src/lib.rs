//! The embedded audit and inventory store: the only crate that touches sled.
//!
//! Why it exists: every MCP message the daemon sees becomes an [`AuditRecord`] that must
//! survive restarts, be queryable by time/server/tool for `mcpwatch audit`, and never
//! grow without bound. Keeping sled behind this small API means the rest of the daemon
//! deals in `mcpwatch_api` types only, and the on-disk layout (keys, value versions,
//! retention) is decided in one place.
//!
//! Layout, under `<state dir>/audit.sled`:
//! - `records`: key = record id (26 digits, time-prefixed, see [`Store::new_record_id`]),
//!   value = JSON of the record (schema first, see `codec`).
//! - `servers`: key = endpoint key, value = `{"schema":N,"server":ServerEntry}`.
//! - `chain`: one entry per record write, a hash chain (see `chain`): tamper evidence
//!   checked by [`Store::verify`] (`mcpwatch audit verify`).
//! - `meta`: `schema_version` = layout version of the store as decimal text;
//!   `chain_head`, `chain_base` = the chain's tip and retention checkpoint.
//!
//! In front of sled sits an append-only journal (`<state dir>/audit.journal/`, see
//! `journal`): a write is appended there with one write(2) first (crash-safe against a
//! SIGKILL at once, against power loss once [`Store::sync`] ran), then applied to sled
//! without a transaction; a background checkpoint flushes sled and deletes the journal
//! segments it covers, and [`Store::open`] replays whatever a crash left behind.
//!
//! `<state dir>/audit.lock` is held (flock) for as long as the store is open and names
//! the owning pid, so a second daemon gets a clear error instead of sled's.

mod chain;
mod codec;
mod cursor;
mod id;
mod journal;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mcpwatch_api::{AUDIT_SCHEMA_VERSION, AuditFilter, AuditRecord, ServerEntry};

pub use mcpwatch_api::{AuditProblem as Problem, AuditVerify as VerifyReport};
pub use codec::{DecodeError, SERVER_SCHEMA_VERSION};
pub use id::ID_LEN;
pub use journal::JOURNAL_DIR_NAME;

/// Version of the store layout (trees, key formats) recorded in `meta/schema_version`.
pub const STORE_LAYOUT_VERSION: u32 = 1;

/// Name of the sled directory inside the state dir.
pub const DB_DIR_NAME: &str = "audit.sled";
/// Name of the lock file inside the state dir.
pub const LOCK_FILE_NAME: &str = "audit.lock";

/// How far before `since_ms` a query starts reading keys: an id is taken around the
/// time `ts_ms` is stamped, not at the same instant, so the key's time prefix may lag
/// the record's `ts_ms` slightly. Records in the slack are still filtered by `ts_ms`.
const SINCE_SEEK_SLACK_MS: u64 = 60_000;
/// Upper bound on how many records one pruning pass removes below `max_records`.
const MAX_PRUNE_SLACK: u64 = 4_096;
/// sled's page cache; its default (1 GiB) is far too much for a host daemon.
const CACHE_CAPACITY_BYTES: u64 = 8 * 1024 * 1024;
/// How often (50 ms apart) opening waits for sled's lock held by this process's previous,
/// still closing store.
const SLED_LOCK_RETRIES: u32 = 60;

const META_SCHEMA_VERSION: &str = "schema_version";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Retention bound: once exceeded, the oldest records are pruned.
    pub max_records: u64,
    /// Retention by size: once the stored records (ids + values, the bytes sled keeps
    /// for them before its own overhead) exceed this, the oldest are pruned.
    pub max_bytes: Option<u64>,
    /// Retention by age: records whose id is older than this are pruned by the
    /// background checkpoint (needs `flush_every_ms`) and by [`Store::enforce_retention_at`].
    pub max_age_ms: Option<u64>,
    /// How often sled flushes its log and the journal is checkpointed (sled flushed, fed
    /// segments deleted) in the background; `None`: only on [`Store::flush`] and on close.
    pub flush_every_ms: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            max_records: 1_000_000,
            max_bytes: None,
            max_age_ms: None,
            flush_every_ms: Some(500),
        }
    }
}

/// Every way the store can fail. All of these are internal (daemon-side) failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "audit store {dir} is locked: another mcpwatchd{} owns this state directory",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked { dir: PathBuf, holder: Option<u32> },
    #[error("audit store {path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error(
        "audit store {dir} has layout version {found}; this build understands up to {supported}"
    )]
    NewerLayout {
        dir: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("audit store meta value {key} is unreadable: {value:?}")]
    BadMeta { key: &'static str, value: String },
    #[error("audit store (sled) failed: {0}")]
    Db(#[from] sled::Error),
    #[error("record id {id:?} is not a store id ({ID_LEN} digits from Store::new_record_id)")]
    InvalidId { id: String },
    #[error("record {id} already exists")]
    DuplicateId { id: String },
    #[error("record {id} has schema {found}; this build writes schema {supported}")]
    UnsupportedSchema {
        id: String,
        found: u32,
        supported: u32,
    },
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("stored record {id} is unreadable: {reason}")]
    Unreadable { id: String, reason: DecodeError },
}

/// Handle to the open store. Cheap to clone; all clones share one sled database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// The chain's tip and the journal it is appended to: one mutex, so journal lines are
/// in chain order with no gaps.
struct Head {
    point: chain::Point,
    journal: journal::Journal,
}

/// Owns the checkpoint thread and the lock: dropping the last `Store` stops the thread,
/// checkpoints once more (so a clean close leaves an empty journal), closes sled and only
/// then releases the lock.
struct Inner {
    core: Arc<Core>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
    _lock: File,
}

impl std::ops::Deref for Inner {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
        if let Err(e) = self.core.checkpoint() {
            tracing::error!(error = %e, "final audit checkpoint failed; the journal is replayed at next start");
        }
    }
}

struct Core {
    db: sled::Db,
    records: sled::Tree,
    servers: sled::Tree,
    chain: sled::Tree,
    meta: sled::Tree,
    /// The chain's tip; held while a record and its chain entry are written, so entries
    /// are appended in one order with no gaps.
    head: Mutex<Head>,
    ids: id::IdGen,
    /// Number of keys in `records`, kept here because sled's `len` is a full scan.
    count: AtomicU64,
    /// Bytes of the keys and values in `records` (what `max_bytes` bounds).
    bytes: AtomicU64,
    prune_lock: Mutex<()>,
    /// One journal sync at a time, so a sync that finds nothing dirty knows an earlier
    /// one has finished covering every line.
    sync_lock: Mutex<()>,
    syncs: journal::SyncCounter,
    checkpoint_lock: Mutex<()>,
    opts: StoreOptions,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("records", &self.record_count())
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) `dir/audit.sled`. Fails with [`StoreError::Locked`]
    /// when another process (or another `Store` in this one) holds the state dir.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            action: "create state directory",
            source,
        })?;
        let lock = acquire_lock(dir)?;

        let db_path = dir.join(DB_DIR_NAME);
        let open_db = || {
            sled::Config::new()
                .path(&db_path)
                .cache_capacity(CACHE_CAPACITY_BYTES)
                .flush_every_ms(opts.flush_every_ms)
                .open()
        };
        let sled_locked = |e: &sled::Error| matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"));
        // We hold our own lock, so sled's lock can only be held by a store of this process
        // that is still shutting down (sled's flusher and our checkpoint thread release the
        // database a moment after the last handle drops): wait for it, bounded.
        let mut attempt = 0;
        let db = loop {
            match open_db() {
                Err(e) if sled_locked(&e) && attempt < SLED_LOCK_RETRIES => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                // A process that bypassed our lock (an older build) gets the clear message.
                Err(e) if sled_locked(&e) => return Err(StoreError::Locked { dir: dir.to_path_buf(), holder: None }),
                Err(e) => return Err(StoreError::Db(e)),
                Ok(db) => break db,
            }
        };

        let meta = db.open_tree("meta")?;
        check_layout(&meta, dir)?;
        let records = db.open_tree("records")?;
        let servers = db.open_tree("servers")?;
        let chain = db.open_tree(chain::CHAIN_TREE)?;
        let head = match meta.get(chain::META_HEAD)?.and_then(|v| chain::Point::decode(&v)) {
            Some(h) => h,
            // A store from before the chain existed (or a new one): the chain starts at
            // the base, and records older than it are covered by `pruned_upto`.
            None => {
                let base = chain::Base { point: chain::Point::default(), pruned_upto: records.last()?.map(|(k, _)| k.to_vec()).unwrap_or_default() };
                if meta.get(chain::META_BASE)?.is_none() {
                    meta.insert(chain::META_BASE, base.encode())?;
                }
                base.point
            }
        };

        // What a crash left in the journal goes into sled before anything reads it.
        let (lines, old_segments) = journal::replay(dir)?;
        let base = meta.get(chain::META_BASE)?.and_then(|v| chain::Base::decode(&v)).unwrap_or_default();
        let mut head = head;
        for l in &lines {
            // Entries retention has moved past: their record is gone or written again since.
            if l.seq <= base.point.seq {
                continue;
            }
            let vh = chain::value_hash(&l.value);
            records.insert(l.id.as_slice(), l.value.as_slice())?;
            let entry = chain::Entry { link: l.link, value_hash: vh, id: l.id.clone() };
            chain.insert(l.seq.to_be_bytes(), entry.encode())?;
            if l.seq > head.seq {
                head = chain::Point { seq: l.seq, link: l.link };
            }
        }
        if !lines.is_empty() {
            meta.insert(chain::META_HEAD, head.encode())?;
            tracing::info!(entries = lines.len(), "replayed the audit journal");
        }
        db.flush()?;
        let after = old_segments.last().copied().unwrap_or(0);
        journal::delete_segments(&dir.join(JOURNAL_DIR_NAME), old_segments)?;
        let journal = journal::Journal::open(dir, after)?;

        let floor = match records.last()? {
            Some((k, _)) => id::parse_id(&k).unwrap_or(0),
            None => 0,
        };
        let (mut count, mut bytes) = (0u64, 0u64);
        for item in records.iter() {
            let (k, v) = item?;
            count += 1;
            bytes += (k.len() + v.len()) as u64;
        }

        let every = opts.flush_every_ms.map(|ms| std::time::Duration::from_millis(ms.max(10)));
        let core = Arc::new(Core {
            db,
            records,
            servers,
            chain,
            meta,
            head: Mutex::new(Head { point: head, journal }),
            ids: id::IdGen::new(floor),
            count: AtomicU64::new(count),
            bytes: AtomicU64::new(bytes),
            prune_lock: Mutex::new(()),
            sync_lock: Mutex::new(()),
            syncs: journal::SyncCounter::default(),
            checkpoint_lock: Mutex::new(()),
            opts,
        });
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let bg = core.clone();
        let checkpointer = match every {
            None => None,
            Some(every) => Some(
                std::thread::Builder::new()
                    .name("audit-checkpoint".into())
                    .spawn(move || {
                        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                            if let Err(e) = bg.prune_at(id::now_ms()) {
                                tracing::error!(error = %e, "audit retention failed; retrying");
                            }
                            if let Err(e) = bg.checkpoint() {
                                tracing::error!(error = %e, "audit checkpoint failed; retrying");
                            }
                        }
                    })
                    .map_err(|source| StoreError::Io {
                        path: dir.to_path_buf(),
                        action: "start checkpoint thread",
                        source,
                    })?,
            ),
        };
        let store = Store {
            inner: Arc::new(Inner { core, stop: Some(stop), checkpointer, _lock: lock }),
        };
        // A lowered bound takes effect at once, not one batch per insert.
        while store.inner.over_bound() {
            if store.inner.prune_at(id::now_ms())? == 0 {
                break;
            }
        }
        store.inner.prune_at(id::now_ms())?;
        Ok(store)
    }

    /// A fresh record id: 26 digits (20-digit ms timestamp + 6-digit sequence), strictly
    /// increasing within this store and across restarts.
    pub fn new_record_id(&self) -> String {
        self.inner.ids.next()
    }

    /// Stores a new record under `rec.id`, which must come from [`Store::new_record_id`].
    /// A record with `schema` 0 is stored as the current [`AUDIT_SCHEMA_VERSION`].
    pub fn insert_record(&self, rec: &AuditRecord) -> Result<(), StoreError> {
        let (key, value) = self.record_kv(rec)?;
        match self.write_chained(&key, &value, true)? {
            Written::Added => self.key_added(),
            Written::Replaced => Ok(()),
            Written::Exists => Err(StoreError::DuplicateId { id: rec.id.clone() }),
        }
    }

    /// Replaces the record with `rec.id` (e.g. when its response arrives). A record that
    /// was pruned meanwhile is stored again rather than lost.
    pub fn update_record(&self, rec: &AuditRecord) -> Result<(), StoreError> {
        let (key, value) = self.record_kv(rec)?;
        match self.write_chained(&key, &value, false)? {
            Written::Added => self.key_added(),
            Written::Replaced | Written::Exists => {
                if self.inner.over_bound() {
                    self.inner.prune_at(id::now_ms())?;
                }
                Ok(())
            }
        }
    }

    /// Appends a record write and its chain entry to the journal (one write(2): in the
    /// kernel when this returns), then applies both to sled (see `journal`, `chain`).
    fn write_chained(&self, key: &[u8], value: &[u8], must_be_new: bool) -> Result<Written, StoreError> {
        let vh = chain::value_hash(value);
        let mut head = self.inner.head.lock().unwrap_or_else(|p| p.into_inner());
        if must_be_new && self.inner.records.contains_key(key)? {
            return Ok(Written::Exists);
        }
        let seq = head.point.seq + 1;
        let link = chain::link(&head.point.link, seq, key, &vh);
        head.journal.append(&journal::Line { seq, id: key.to_vec(), link, value: value.to_vec() })?;
        let tip = chain::Point { seq, link };
        head.point = tip;
        // From here the write is committed (the journal has it); a sled failure below is
        // still reported, and replay at the next start completes the write.
        let entry = chain::Entry { link, value_hash: vh, id: key.to_vec() }.encode();
        let old = self.inner.records.insert(key, value)?;
        self.inner.bytes.fetch_add((key.len() + value.len()) as u64, Ordering::Relaxed);
        if let Some(o) = &old {
            self.inner.bytes.fetch_sub((key.len() + o.len()) as u64, Ordering::Relaxed);
        }
        self.inner.chain.insert(seq.to_be_bytes(), entry)?;
        self.inner.meta.insert(chain::META_HEAD, tip.encode())?;
        Ok(if old.is_some() { Written::Replaced } else { Written::Added })
    }

    /// Makes every write so far survive power loss: one fdatasync of the journal covers
    /// every writer before it (group commit). Cheap when nothing was written since.
    pub fn sync(&self) -> Result<(), StoreError> {
        let _one = self.inner.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        let files = {
            let mut head = self.inner.head.lock().unwrap_or_else(|p| p.into_inner());
            head.journal.write_pending()?;
            head.journal.take_dirty()
        };
        if let Err(source) = journal::sync_files(&files, &self.inner.syncs) {
            self.inner.head.lock().unwrap_or_else(|p| p.into_inner()).journal.unsync(files);
            return Err(StoreError::Io { path: PathBuf::from(JOURNAL_DIR_NAME), action: "sync journal", source });
        }
        Ok(())
    }

    /// `Some(reason)` while journal lines wait for a write(2) that failed (disk full, I/O
    /// error): those writes are not in the kernel yet, so their calls must not be
    /// treated as audited.
    pub fn write_backlog(&self) -> Option<String> {
        let head = self.inner.head.lock().unwrap_or_else(|p| p.into_inner());
        match head.journal.pending_bytes() {
            0 => None,
            n => Some(format!("audit journal cannot be written ({n} bytes of records wait for disk space or a working disk)")),
        }
    }

    /// How many journal fsyncs [`Store::sync`] has done (each covers a group of writes).
    pub fn journal_syncs(&self) -> u64 {
        self.inner.syncs.get()
    }

    /// Checks every record against the hash chain (`mcpwatch audit verify`).
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        // A consistent view: no write lands between reading the chain and the records.
        let _head = self.inner.head.lock().unwrap_or_else(|p| p.into_inner());
        Ok(chain::verify(&self.inner.records, &self.inner.chain, &self.inner.meta)?)
    }

    /// The record with this id, `None` if absent. A stored value this build cannot read
    /// (corrupt, or from a newer schema) is an error here, unlike in [`Store::query`].
    pub fn get_record(&self, id: &str) -> Result<Option<AuditRecord>, StoreError> {
        match self.inner.records.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => {
                codec::decode_record(&v)
                    .map(Some)
                    .map_err(|reason| StoreError::Unreadable {
                        id: id.to_string(),
                        reason,
                    })
            }
        }
    }

    /// Records matching `filter`, oldest first. With `limit`, the newest `limit` matches
    /// (still returned oldest first). Starts reading at `since_ms` rather than scanning
    /// the whole store. Unreadable values are skipped with one warning per query.
    pub fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let start = id::key_floor_for_ms(
            filter
                .since_ms
                .map_or(0, |s| s.saturating_sub(SINCE_SEEK_SLACK_MS)),
        );
        let iter = self.inner.records.range(start.as_bytes()..);
        let mut skipped = Skipped::default();
        let mut out = Vec::new();
        match filter.limit {
            Some(0) => {}
            Some(limit) => {
                for item in iter.rev() {
                    let (k, v) = item?;
                    if let Some(rec) = skipped.decode(&k, &v)
                        && filter.matches(&rec)
                    {
                        out.push(rec);
                        if out.len() >= limit {
                            break;
                        }
                    }
                }
                out.reverse();
            }
            None => {
                for item in iter {
                    let (k, v) = item?;
                    if let Some(rec) = skipped.decode(&k, &v)
                        && filter.matches(&rec)
                    {
                        out.push(rec);
                    }
                }
            }
        }
        skipped.report("query");
        Ok(out)
    }

    /// Number of stored records (maintained incrementally, not a scan).
    pub fn record_count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Inserts or replaces the inventory entry keyed by `s.endpoint`.
    pub fn put_server(&self, s: &ServerEntry) -> Result<(), StoreError> {
        let value = codec::encode_server(s).map_err(|source| StoreError::Encode {
            what: "server entry",
            source,
        })?;
        self.inner.servers.insert(s.endpoint.as_bytes(), value)?;
        Ok(())
    }

    /// Every stored inventory entry, ordered by endpoint. Unreadable ones are skipped.
    pub fn servers(&self) -> Result<Vec<ServerEntry>, StoreError> {
        let mut out = Vec::new();
        let mut skipped = Skipped::default();
        for item in self.inner.servers.iter() {
            let (k, v) = item?;
            match codec::decode_server(&v) {
                Ok(s) => out.push(s),
                Err(e) => skipped.note(&k, e),
            }
        }
        skipped.report("servers");
        Ok(out)
    }

    /// Forces everything written so far to disk: sled flushed, journal emptied.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.checkpoint()
    }

    fn record_kv(&self, rec: &AuditRecord) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        if id::parse_id(rec.id.as_bytes()).is_none() {
            return Err(StoreError::InvalidId { id: rec.id.clone() });
        }
        let value = match rec.schema {
            AUDIT_SCHEMA_VERSION => codec::encode_record(rec),
            0 => codec::encode_record(&AuditRecord {
                schema: AUDIT_SCHEMA_VERSION,
                ..rec.clone()
            }),
            found => {
                return Err(StoreError::UnsupportedSchema {
                    id: rec.id.clone(),
                    found,
                    supported: AUDIT_SCHEMA_VERSION,
                });
            }
        }
        .map_err(|source| StoreError::Encode {
            what: "audit record",
            source,
        })?;
        Ok((rec.id.as_bytes().to_vec(), value))
    }

    /// Bookkeeping after a key was added to `records`; prunes once past a bound.
    fn key_added(&self) -> Result<(), StoreError> {
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        if self.inner.over_bound() {
            self.inner.prune_at(id::now_ms())?;
        }
        Ok(())
    }

    /// Bytes of the stored records' ids and values (what `max_bytes` bounds).
    pub fn stored_bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// Applies every retention bound now, as if the clock read `now_ms` (the background
    /// checkpoint calls this with the real clock). Returns how many records went.
    pub fn enforce_retention_at(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.inner.prune_at(now_ms)
    }
}

impl Core {
    fn over_bound(&self) -> bool {
        self.count.load(Ordering::Relaxed) > self.opts.max_records
            || self.opts.max_bytes.is_some_and(|m| self.bytes.load(Ordering::Relaxed) > m)
    }

    /// Removes the oldest records: those older than `max_age_ms` at `now_ms`, and enough
    /// to get under `max_records - slack` and `max_bytes - slack`, where the slack (1/64
    /// of the bound, at most [`MAX_PRUNE_SLACK`] records) makes pruning one batch every
    /// so many inserts: amortised O(1) per insert. Returns how many were removed, and
    /// moves the chain checkpoint past them. Concurrent callers do not wait: one pruning
    /// pass at a time is enough.
    fn prune_at(&self, now_ms: u64) -> Result<u64, StoreError> {
        let Ok(_guard) = self.prune_lock.try_lock() else {
            return Ok(0);
        };
        let max = self.opts.max_records;
        let count = self.count.load(Ordering::Relaxed);
        let excess = if count > max { count - (max - (max / 64).min(MAX_PRUNE_SLACK)) } else { 0 };
        let bytes = self.bytes.load(Ordering::Relaxed);
        let excess_bytes = match self.opts.max_bytes {
            Some(m) if bytes > m => bytes - (m - m / 64),
            _ => 0,
        };
        let age_floor = self.opts.max_age_ms.map(|a| id::key_floor_for_ms(now_ms.saturating_sub(a)));
        let (mut removed, mut freed) = (0u64, 0u64);
        let mut last = None;
        for key in self.records.iter().keys() {
            let key = key?;
            let too_old = age_floor.as_ref().is_some_and(|f| key.as_ref() < f.as_bytes());
            if removed >= excess && freed >= excess_bytes && !too_old {
                break;
            }
            if let Some(v) = self.records.remove(&key)? {
                self.count.fetch_sub(1, Ordering::Relaxed);
                let n = (key.len() + v.len()) as u64;
                self.bytes.fetch_sub(n, Ordering::Relaxed);
                freed += n;
                removed += 1;
            }
            last = Some(key);
        }
        if let Some(last) = last {
            self.prune_chain(&last)?;
        }
        if removed > 0 {
            tracing::debug!(removed, freed, max_records = max, "pruned oldest audit records");
        }
        Ok(removed)
    }

    /// Moves the chain's base past entries retention made moot: from the front, while
    /// the entry's record is gone or has been written again since. Records up to
    /// `pruned_upto` (the highest id just removed) may be absent from now on.
    fn prune_chain(&self, pruned_upto: &[u8]) -> Result<(), StoreError> {
        let _head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let meta = &self.meta;
        let mut base = meta.get(chain::META_BASE)?.and_then(|v| chain::Base::decode(&v)).unwrap_or_default();
        if pruned_upto > base.pruned_upto.as_slice() {
            base.pruned_upto = pruned_upto.to_vec();
        }
        let mut moved = Vec::new();
        for item in self.chain.iter() {
            let (k, v) = item?;
            let Some(e) = chain::Entry::decode(&v) else { break };
            let current = self.records.get(&e.id)?;
            let moot = match current {
                None => e.id.as_slice() <= base.pruned_upto.as_slice(),
                Some(cur) => chain::value_hash(&cur) != e.value_hash,
            };
            if !moot {
                break;
            }
            let seq = k.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            base.point = chain::Point { seq, link: e.link };
            moved.push(k);
        }
        // Base first: a crash in between leaves entries below the base, which verify
        // reads as a break; the other order would leave a base behind entries it skips.
        meta.insert(chain::META_BASE, base.encode())?;
        for k in moved {
            self.chain.remove(k)?;
        }
        Ok(())
    }
}

impl Core {
    /// Starts a new journal segment, flushes sled (which then holds every line of the old
    /// segments: they were applied under the head mutex before the rotation) and deletes
    /// the old segments.
    fn checkpoint(&self) -> Result<(), StoreError> {
        let _one = self.checkpoint_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (done, dir) = {
            let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
            (head.journal.rotate()?, head.journal.dir().to_path_buf())
        };
        self.db.flush()?;
        if let Some(done) = done {
            journal::delete_upto(&dir, done)?;
        }
        Ok(())
    }
}

/// What a chained write did.
enum Written {
    Added,
    Replaced,
    /// `must_be_new` and the key was taken: nothing written.
    Exists,
}

/// Unreadable values met during one read pass; reported once, not once per value.
#[derive(Default)]
struct Skipped {
    corrupt: u64,
    newer: u64,
    first: Option<(String, DecodeError)>,
}

impl Skipped {
    fn decode(&mut self, key: &[u8], value: &[u8]) -> Option<AuditRecord> {
        match codec::decode_record(value) {
            Ok(rec) => Some(rec),
            Err(e) => {
                self.note(key, e);
                None
            }
        }
    }

    fn note(&mut self, key: &[u8], e: DecodeError) {
        match e {
            DecodeError::NewerSchema { .. } => self.newer += 1,
            DecodeError::Corrupt(_) => self.corrupt += 1,
        }
        if self.first.is_none() {
            self.first = Some((String::from_utf8_lossy(key).into_owned(), e));
        }
    }

    fn report(self, during: &str) {
        if let Some((key, error)) = self.first {
            tracing::warn!(
                during,
                corrupt = self.corrupt,
                newer_schema = self.newer,
                first_key = %key,
                first_error = %error,
                "skipped unreadable audit store values"
            );
        }
    }
}

/// Takes `dir/audit.lock` (flock, released by the kernel when the process dies) and
/// writes our pid into it so the next opener can say who holds it.
fn acquire_lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE_NAME);
    let io_err = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io {
            path,
            action,
            source,
        }
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("open lock file", &path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            // Best effort: the holder may be mid-write; a bad pid is just not shown.
            let _ = (&file).take(32).read_to_string(&mut text);
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
                holder: text.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err("lock", &path)(e)),
    }
    file.set_len(0)
        .map_err(io_err("truncate lock file", &path))?;
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("seek lock file", &path))?;
    writeln!(file, "{}", std::process::id()).map_err(io_err("write lock file", &path))?;
    Ok(file)
}

/// Writes the layout version into a new store, refuses one written by a newer build.
fn check_layout(meta: &sled::Tree, dir: &Path) -> Result<(), StoreError> {
    match meta.get(META_SCHEMA_VERSION)? {
        None => {
            meta.insert(
                META_SCHEMA_VERSION,
                STORE_LAYOUT_VERSION.to_string().as_bytes(),
            )?;
            Ok(())
        }
        Some(v) => {
            let text = String::from_utf8_lossy(&v);
            let found: u32 = text.trim().parse().map_err(|_| StoreError::BadMeta {
                key: META_SCHEMA_VERSION,
                value: text.chars().take(64).collect(),
            })?;
            if found > STORE_LAYOUT_VERSION {
                return Err(StoreError::NewerLayout {
                    dir: dir.to_path_buf(),
                    found,
                    supported: STORE_LAYOUT_VERSION,
                });
            }
            // Older layouts would be migrated here; version 1 is the first.
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
