//! The embedded audit and inventory store: the only crate that touches sled.
//!
//! Why it exists: every MCP message the daemon sees becomes an [`AuditRecord`] that must
//! survive restarts, be queryable by time/server/tool for `mcpwatch audit`, and never
//! grow without bound. Keeping sled behind this small API means the rest of the daemon
//! deals in `mcpwatch_api` types only, and the on-disk layout (keys, value versions,
//! retention) is decided in one place.
//!
//! Layout, under `<state dir>/audit.sled`:
//! - `records`: chunks of records (see `chunk`): key = the first record id in the chunk
//!   (26 digits, time-prefixed, see [`Store::new_record_id`]), value = up to 4 KiB of
//!   (id, chain seq, JSON of the record (schema first, see `codec`)), in id order.
//! - `servers`: key = endpoint key, value = `{"schema":N,"server":ServerEntry}`.
//! - `chain`: one entry per record write, a hash chain (see `chain`), in chunks keyed by
//!   their first seq: tamper evidence checked by [`Store::verify`] (`mcpwatch audit verify`).
//! - `meta`: `schema_version` = layout version of the store as decimal text;
//!   `chain_head`, `chain_base` = the chain's tip and retention checkpoint.
//!
//! In front of sled sits an append-only journal (`<state dir>/audit.journal/`, see
//! `journal`): a write is appended there with one write(2) first (crash-safe against a
//! SIGKILL at once, against power loss once [`Store::sync`] ran), then kept in memory (the
//! tail, bounded) until the background checkpoint seals it into sled chunks, flushes sled
//! and deletes the journal segments it covers; [`Store::open`] replays whatever a crash
//! left behind. Readers seal the tail first, so they see every committed write.
//!
//! `<state dir>/audit.lock` is held (flock) for as long as the store is open and names
//! the owning pid, so a second daemon gets a clear error instead of sled's.

mod chain;
mod chunk;
mod codec;
mod cursor;
mod id;
mod journal;
mod paced;
mod record_json;

use std::collections::BTreeMap;
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
/// 2: records and chain entries in chunks (layout 1 values are still read, as one-item chunks).
/// 3: chunks may be LZ4-compressed (`chunk::MAGIC_LZ4`); layout 2 chunks are still read, so
/// a layout-2 store is moved up in place, and a layout-2 build refuses a layout-3 store
/// rather than misreading its compressed chunks as layout-1 values.
pub const STORE_LAYOUT_VERSION: u32 = 3;

/// Name of the sled directory inside the state dir.
pub const DB_DIR_NAME: &str = "audit.sled";
/// Name of the lock file inside the state dir.
pub const LOCK_FILE_NAME: &str = "audit.lock";

/// How far before `since_ms` a query starts reading keys: an id is taken around the
/// time `ts_ms` is stamped, not at the same instant, so the key's time prefix may lag
/// the record's `ts_ms` slightly. Records in the slack are still filtered by `ts_ms`.
const SINCE_SEEK_SLACK_MS: u64 = 60_000;
/// Records younger than this that retention by count or size removes are counted
/// ([`Store::pruned_young`]) and warned of: a budget that short is a flood meant to push
/// a call's record out (or a budget too small for the host), and the operator must know.
pub const YOUNG_PRUNE_MS: u64 = 24 * 3600 * 1000;
/// Upper bound on how many records one pruning pass removes below `max_records`.
const MAX_PRUNE_SLACK: u64 = 4_096;
/// sled's page cache; its default (1 GiB) is far too much for a host daemon.
const CACHE_CAPACITY_BYTES: u64 = 8 * 1024 * 1024;
/// Most bytes of a thread's record-encoding buffer ([`Store::with_record_value`]) kept
/// between writes: a larger record's buffer is freed once written.
const KEEP_ENCODING: usize = 64 << 10;
/// Most bytes of record values the tail holds before a writer seals it itself (the
/// checkpoint seals it every `flush_every_ms` otherwise).
const TAIL_MAX_BYTES: usize = 1 << 20;
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
    /// Most chained ids [`Store::verify`] holds at once (~50 bytes each): a store with
    /// more records is checked in passes (see `chain::verify`).
    pub verify_ids_per_pass: usize,
}

/// Default [`StoreOptions::verify_ids_per_pass`]: ~13 MiB of table a pass, four passes
/// over the default 1M records.
pub const VERIFY_IDS_PER_PASS: usize = 1 << 18;

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            max_records: 1_000_000,
            max_bytes: None,
            max_age_ms: None,
            flush_every_ms: Some(500),
            verify_ids_per_pass: VERIFY_IDS_PER_PASS,
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

/// The chain's tip, the journal it is appended to and the writes not yet sealed into
/// sled: one mutex, so journal lines are in chain order with no gaps. Held only for a
/// write's own bookkeeping: sealing writes sled outside it (see [`Core::seal_frozen`]).
struct Head {
    point: chain::Point,
    journal: journal::Journal,
    /// Writes since the last freeze.
    tail: Tail,
    /// The tail a sealer (holding `Core::sealed`, not this mutex) is writing into sled
    /// right now: lookups read it until sled holds it.
    frozen: Option<Arc<Tail>>,
    /// [`Sealed::max_id`] as of the last finished seal: a write at or below it may
    /// replace a record in sled, one above it cannot (unless it is in `frozen`).
    sealed_max: Vec<u8>,
    /// The checkpoint thread was asked to seal since the last freeze.
    woken: bool,
}

impl Head {
    /// The unsealed value of record `id`: the tail's, else the one being sealed.
    fn unsealed(&self, id: &[u8]) -> Option<&Vec<u8>> {
        self.tail.records.get(id).or_else(|| self.frozen.as_ref()?.records.get(id)).map(|(_, v)| v)
    }
}

/// Writes in the journal that sled does not hold yet: a seal writes them into chunks
/// (so sled sees one key per ~4 KiB, not one per record and per chain entry). Bounded:
/// past half of [`TAIL_MAX_BYTES`] the checkpoint thread is woken to seal it, past all
/// of it the writer seals it itself.
#[derive(Default)]
struct Tail {
    /// Record id -> (chain seq of its latest write, value).
    records: BTreeMap<Vec<u8>, (u64, Vec<u8>)>,
    /// Chain entries in seq order.
    chain: Vec<chunk::Item>,
    /// Bytes of the values in `records`.
    bytes: usize,
}

impl Tail {
    fn put(&mut self, id: &[u8], seq: u64, value: &[u8]) {
        self.bytes += value.len();
        // A copy of exactly the value's size. Moving the writer's encoding buffer (2 KiB,
        // sized for the largest usual record) in instead keeps one such buffer per record
        // alive until the next seal rather than reusing it for the next write; tried, it
        // saved instructions but the timed bench showed 1.08-1.10x CPU per call at one
        // client in two runs (heap growth and trimming are kernel time callgrind misses).
        if let Some((_, old)) = self.records.insert(id.to_vec(), (seq, value.to_vec())) {
            self.bytes -= old.len();
        }
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.chain.is_empty()
    }

    /// Puts an older tail (a seal of it failed) back under this one: its writes come
    /// first, and a record written again since keeps its newer value.
    fn put_back(&mut self, older: &Tail) {
        for (id, (seq, v)) in &older.records {
            if !self.records.contains_key(id) {
                self.bytes += v.len();
                self.records.insert(id.clone(), (*seq, v.clone()));
            }
        }
        let newer = std::mem::take(&mut self.chain);
        self.chain = older.chain.iter().cloned().chain(newer).collect();
    }
}

/// How far sled holds the journal; owned by whoever seals (one at a time: the mutex
/// `Core::sealed`), so a seal never races another over the chunks it rewrites.
struct Sealed {
    /// Highest record id sealed into sled.
    max_id: Vec<u8>,
    /// Highest chain seq sealed into sled (replayed entries at or below it are there).
    chain_seq: u64,
}

/// Owns the checkpoint thread and the lock: dropping the last `Store` stops the thread,
/// checkpoints once more (so a clean close leaves an empty journal), closes sled and only
/// then releases the lock.
struct Inner {
    core: Arc<Core>,
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
        self.core.stopping.store(true, Ordering::Release);
        if let Some(w) = &self.core.wake {
            // Full means a wake is already queued: the thread sees `stopping` either way.
            let _ = w.try_send(());
        }
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
    /// Held by whoever writes into the `records` and `chain` trees (a seal, a pruning
    /// pass), before `head` when both are taken.
    sealed: Mutex<Sealed>,
    /// Wakes the checkpoint thread to seal (`None` without one).
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    /// Set when the last `Store` drops: the checkpoint thread ends.
    stopping: std::sync::atomic::AtomicBool,
    ids: id::IdGen,
    /// Number of keys in `records`, kept here because sled's `len` is a full scan.
    count: AtomicU64,
    /// Bytes of the keys and values in `records` (what `max_bytes` bounds).
    bytes: AtomicU64,
    /// Records retention by count or size removed while younger than [`YOUNG_PRUNE_MS`].
    pruned_young: AtomicU64,
    prune_lock: Mutex<()>,
    /// One journal sync at a time, so a sync that finds nothing dirty knows an earlier
    /// one has finished covering every line.
    sync_lock: Mutex<()>,
    syncs: journal::SyncCounter,
    /// Bytes of journal lines whose write(2) failed, as of the last attempt.
    backlog: Arc<std::sync::atomic::AtomicUsize>,
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
                // No flusher thread of sled's own: the checkpoint flushes sled every
                // `flush_every_ms` before it deletes journal segments (and a store without
                // a checkpoint thread flushes on `flush` and on close), so sled's periodic
                // flush only duplicated it and woke a thread ~4 times a second when idle.
                .flush_every_ms(None)
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
        let sealed_max = last_record_id(&records)?.unwrap_or_default();
        let head = match meta.get(chain::META_HEAD)?.and_then(|v| chain::Point::decode(&v)) {
            Some(h) => h,
            // A store from before the chain existed (or a new one): the chain starts at
            // the base, and records older than it are covered by `pruned_upto`.
            None => {
                let base = chain::Base { point: chain::Point::default(), pruned_upto: sealed_max.clone() };
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
        let sealed = Sealed { max_id: sealed_max.clone(), chain_seq: last_chain_seq(&chain)? };
        let mut tail = Tail::default();
        for l in &lines {
            // Entries retention has moved past: their record is gone or written again since.
            if l.seq <= base.point.seq {
                continue;
            }
            let vh = chain::value_hash(&l.value);
            tail.put(&l.id, l.seq, &l.value);
            tail.chain.push(chain::Entry { link: l.link, value_hash: vh, id: l.id.to_vec() }.into_item(l.seq));
            if l.seq > head.seq {
                head = chain::Point { seq: l.seq, link: l.link };
            }
        }
        let floor = tail
            .records
            .keys()
            .next_back()
            .filter(|k| k.as_slice() > sealed_max.as_slice())
            .unwrap_or(&sealed_max)
            .clone();
        let floor = id::parse_id(&floor).unwrap_or(0);
        // Numbered after the replayed segments, which are deleted once sled holds them.
        let journal = journal::Journal::open(dir, old_segments.last().copied().unwrap_or(0))?;
        let backlog = journal.backlog();

        let every = opts.flush_every_ms.map(|ms| std::time::Duration::from_millis(ms.max(10)));
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let core = Arc::new(Core {
            db,
            records,
            servers,
            chain,
            meta,
            head: Mutex::new(Head { point: head, journal, tail, frozen: None, sealed_max, woken: false }),
            sealed: Mutex::new(sealed),
            wake: every.map(|_| wake),
            stopping: std::sync::atomic::AtomicBool::new(false),
            ids: id::IdGen::new(floor),
            count: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            pruned_young: AtomicU64::new(0),
            prune_lock: Mutex::new(()),
            sync_lock: Mutex::new(()),
            syncs: journal::SyncCounter::default(),
            backlog,
            checkpoint_lock: Mutex::new(()),
            opts,
        });
        core.seal_now()?;
        if !lines.is_empty() {
            tracing::info!(entries = lines.len(), "replayed the audit journal");
        }
        core.db.flush()?;
        journal::delete_segments(&dir.join(JOURNAL_DIR_NAME), old_segments)?;
        let (mut count, mut bytes) = (0u64, 0u64);
        for c in paced::Paced::all(&core.records) {
            let (k, v) = c?;
            match chunk::decode(&k, &v, chunk::legacy_record) {
                Ok(items) => {
                    for it in items {
                        count += 1;
                        bytes += (it.id.len() + it.value.len()) as u64;
                    }
                }
                // Counted as one record, as pruning removes it.
                Err(_) => {
                    count += 1;
                    bytes += (k.len() + v.len()) as u64;
                }
            }
        }
        core.count.store(count, Ordering::Relaxed);
        core.bytes.store(bytes, Ordering::Relaxed);

        let bg = core.clone();
        let checkpointer = match every {
            None => None,
            Some(every) => Some(
                std::thread::Builder::new()
                    .name("audit-checkpoint".into())
                    .spawn(move || {
                        use std::sync::mpsc::RecvTimeoutError;
                        let mut next = std::time::Instant::now() + every;
                        loop {
                            let wait = next.saturating_duration_since(std::time::Instant::now());
                            let woke = match woken.recv_timeout(wait) {
                                Ok(()) => true,
                                Err(RecvTimeoutError::Timeout) => false,
                                Err(RecvTimeoutError::Disconnected) => break,
                            };
                            if bg.stopping.load(Ordering::Acquire) {
                                break;
                            }
                            if woke {
                                // A writer found the tail filling up: seal it, off the writers' path.
                                if let Err(e) = bg.seal_now() {
                                    tracing::error!(error = %e, "audit seal failed; retrying");
                                }
                                continue;
                            }
                            if let Err(e) = bg.prune_at(id::now_ms()) {
                                tracing::error!(error = %e, "audit retention failed; retrying");
                            }
                            if let Err(e) = bg.checkpoint() {
                                tracing::error!(error = %e, "audit checkpoint failed; retrying");
                            }
                            next = std::time::Instant::now() + every;
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
            inner: Arc::new(Inner { core, checkpointer, _lock: lock }),
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
        match self.with_record_value(rec, |value| self.write_chained(rec.id.as_bytes(), value, true, false))? {
            Written::Added => self.key_added(),
            Written::Replaced => Ok(()),
            Written::Exists => Err(StoreError::DuplicateId { id: rec.id.clone() }),
        }
    }

    /// Replaces the record with `rec.id` (e.g. when its response arrives). A record that
    /// was pruned meanwhile is stored again rather than lost.
    pub fn update_record(&self, rec: &AuditRecord) -> Result<(), StoreError> {
        self.update(rec, false)
    }

    /// [`Store::update_record`] for a record whose call is over (its answer arrived, or
    /// it failed): the journal line waits in user space for the next write(2) (the next
    /// record begun, or [`Store::sync`]), so under load one write carries a completion
    /// and the next call's record. A SIGKILL loses at most the completions since the
    /// last write, never a call's own record. Only for stores whose owner calls
    /// [`Store::sync`] periodically (the group commit): nothing else writes it out
    /// while the store is idle.
    pub fn finish_record(&self, rec: &AuditRecord) -> Result<(), StoreError> {
        self.update(rec, true)
    }

    fn update(&self, rec: &AuditRecord, defer: bool) -> Result<(), StoreError> {
        match self.with_record_value(rec, |value| self.write_chained(rec.id.as_bytes(), value, false, defer))? {
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
    /// kernel when this returns; with `defer`, with the next write, see
    /// [`Store::finish_record`]), then to the tail, which the next seal writes into sled
    /// (see `journal`, `chain`, `chunk`).
    fn write_chained(&self, key: &[u8], value: &[u8], must_be_new: bool, defer: bool) -> Result<Written, StoreError> {
        let vh = chain::value_hash(value);
        let mut head = self.inner.head.lock().unwrap_or_else(|p| p.into_inner());
        let old = match head.unsealed(key) {
            Some(v) => Some(v.len()),
            None if key <= head.sealed_max.as_slice() => self.inner.find_sealed(key)?.map(|it| it.value.len()),
            None => None,
        };
        if must_be_new && old.is_some() {
            return Ok(Written::Exists);
        }
        let seq = head.point.seq + 1;
        let link = chain::link(&head.point.link, seq, key, &vh);
        let line = journal::Line { seq, id: key.into(), link, value: value.into() };
        if defer { head.journal.append_deferred(&line)? } else { head.journal.append(&line)? }
        head.point = chain::Point { seq, link };
        // From here the write is committed (the journal has it); a sled failure while
        // sealing is still reported, and replay at the next start completes the write.
        head.tail.put(key, seq, value);
        head.tail.chain.push(chain::Entry { link, value_hash: vh, id: key.to_vec() }.into_item(seq));
        self.inner.bytes.fetch_add((key.len() + value.len()) as u64, Ordering::Relaxed);
        if let Some(o) = old {
            self.inner.bytes.fetch_sub((key.len() + o) as u64, Ordering::Relaxed);
        }
        let held = head.tail.bytes;
        if held > TAIL_MAX_BYTES / 2 && !head.woken && let Some(w) = &self.inner.wake {
            head.woken = true;
            let _ = w.try_send(());
        }
        drop(head);
        if held > TAIL_MAX_BYTES {
            // The checkpoint thread has not kept up (or there is none): this writer seals,
            // still without holding up the others' writes.
            self.inner.seal_over(TAIL_MAX_BYTES)?;
        }
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
        // Read without the head mutex: every proxied call asks before it forwards.
        match self.inner.backlog.load(Ordering::Acquire) {
            0 => None,
            n => Some(format!("audit journal cannot be written ({n} bytes of records wait for disk space or a working disk)")),
        }
    }

    /// How many journal fsyncs [`Store::sync`] has done (each covers a group of writes).
    pub fn journal_syncs(&self) -> u64 {
        self.inner.syncs.get()
    }

    /// Checks every record against the hash chain (`mcpwatch audit verify`).
    ///
    /// Writers are not held up for the pass (over 1M records it takes seconds): it runs
    /// up to the chain's head as of its start, with every earlier write sealed. A record
    /// written during the pass then looks unchained (sealed since) or changed (completed
    /// since); each such record is judged again at the end, with writers held off for
    /// that short step only, against the entries written since, whose links are checked
    /// to follow on from the pass's head to the stored one. Retention waits for the pass.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let inner = &self.inner;
        let _no_prune = inner.prune_lock.lock().unwrap_or_else(|p| p.into_inner());
        let snap = {
            let mut sealed = inner.sealed.lock().unwrap_or_else(|p| p.into_inner());
            let mut head = inner.head.lock().unwrap_or_else(|p| p.into_inner());
            inner.seal_held(&mut sealed, &mut head)?;
            head.point
        };
        let expected = usize::try_from(self.record_count()).unwrap_or(0);
        let mut report = chain::verify(&inner.records, &inner.chain, &inner.meta, expected, inner.opts.verify_ids_per_pass, Some(snap))?;
        let mut sealed = inner.sealed.lock().unwrap_or_else(|p| p.into_inner());
        let mut head = inner.head.lock().unwrap_or_else(|p| p.into_inner());
        inner.seal_held(&mut sealed, &mut head)?;
        let since = chain::verify_since(&inner.chain, &inner.meta, snap)?;
        let mut cache = None;
        let mut kept = Vec::with_capacity(report.problems.len());
        for p in std::mem::take(&mut report.problems) {
            let written_since = match &p {
                Problem::Unchained { id } | Problem::Changed { id } => match since.latest.get(id.as_bytes()) {
                    Some(h) => inner.current_hash(&mut cache, id.as_bytes())?.as_ref() == Some(h),
                    None => false,
                },
                _ => false,
            };
            if !written_since {
                kept.push(p);
            }
        }
        kept.extend(since.problems);
        report.problems = kept;
        report.chain_entries += since.entries;
        report.head = chain::hex(&since.head.link);
        report.head_seq = since.head.seq;
        Ok(report)
    }

    /// The record with this id, `None` if absent. A stored value this build cannot read
    /// (corrupt, or from a newer schema) is an error here, unlike in [`Store::query`].
    pub fn get_record(&self, id: &str) -> Result<Option<AuditRecord>, StoreError> {
        let found = {
            let head = self.inner.head.lock().unwrap_or_else(|p| p.into_inner());
            match head.unsealed(id.as_bytes()) {
                Some(v) => Some(v.clone()),
                None => self.inner.find_sealed(id.as_bytes())?.map(|it| it.value),
            }
        };
        match found {
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
        let iter = self.inner.sealed_from(start.as_bytes())?;
        let mut skipped = Skipped::default();
        let mut out = Vec::new();
        match filter.limit {
            Some(0) => {}
            Some(limit) => {
                'chunks: for c in iter.rev() {
                    let (k, v) = c?;
                    for it in skipped.items(&k, &v).into_iter().rev().filter(|it| it.id.as_slice() >= start.as_bytes()) {
                        if let Some(rec) = skipped.decode(&it.id, &it.value)
                            && filter.matches(&rec)
                        {
                            out.push(rec);
                            if out.len() >= limit {
                                break 'chunks;
                            }
                        }
                    }
                }
                out.reverse();
            }
            None => {
                Self::scan(iter, start.as_bytes(), filter, usize::MAX, &mut skipped, &mut |page| {
                    out.extend(page);
                    true
                })?;
            }
        }
        skipped.report("query");
        Ok(out)
    }

    /// [`Store::query`] handed out in pages of at most `page` records, oldest first, so an
    /// answer of any size is never held whole: one page is in memory at a time, with a
    /// limit too (the newest `limit` are found by walking back and counting, then read
    /// forward; `mcpwatch audit --limit 500000` once held all of them). `each` returns
    /// `false` to stop early.
    pub fn query_pages(&self, filter: &AuditFilter, page: usize, mut each: impl FnMut(Vec<AuditRecord>) -> bool) -> Result<(), StoreError> {
        let page = page.max(1);
        let start = id::key_floor_for_ms(filter.since_ms.map_or(0, |s| s.saturating_sub(SINCE_SEEK_SLACK_MS))).into_bytes();
        let mut skipped = Skipped::default();
        let from = match filter.limit {
            // The newest `limit` matches, without holding them: walk back to the oldest of
            // them (counting, keeping only its id), then hand them out from there as an
            // unlimited query does. A record written in between comes after them.
            Some(limit) => self.nth_newest_match(filter, &start, limit, &mut skipped)?.map(|oldest| (oldest, limit)),
            None => Some((start, usize::MAX)),
        };
        if let Some((from, left)) = from {
            self.pages_from(filter, &from, left, page, &mut skipped, &mut each)?;
        }
        skipped.report("query");
        Ok(())
    }

    /// At most `left` matches from `start` on, in pages of at most `page`, oldest first;
    /// stops when `each` says so.
    fn pages_from(
        &self,
        filter: &AuditFilter,
        start: &[u8],
        mut left: usize,
        page: usize,
        skipped: &mut Skipped,
        each: &mut dyn FnMut(Vec<AuditRecord>) -> bool,
    ) -> Result<(), StoreError> {
        let iter = self.inner.sealed_from(start)?;
        Self::scan(iter, start, filter, page, skipped, &mut |mut records| {
            records.truncate(left);
            left -= records.len();
            each(records) && left > 0
        })
    }

    /// The id of the `limit`-th newest record at or after `start` that matches `filter` (of
    /// the oldest match when there are fewer); `None` when none match or `limit` is 0.
    fn nth_newest_match(&self, filter: &AuditFilter, start: &[u8], limit: usize, skipped: &mut Skipped) -> Result<Option<Vec<u8>>, StoreError> {
        if limit == 0 {
            return Ok(None);
        }
        let mut found = 0usize;
        let mut oldest = None;
        for c in self.inner.sealed_from(start)?.rev() {
            let (k, v) = c?;
            for it in skipped.items(&k, &v).into_iter().rev().filter(|it| it.id.as_slice() >= start) {
                if skipped.decode(&it.id, &it.value).is_some_and(|rec| filter.matches(&rec)) {
                    found += 1;
                    oldest = Some(it.id);
                    if found >= limit {
                        return Ok(oldest);
                    }
                }
            }
        }
        Ok(oldest)
    }

    /// The matches from `start` on, in pages of at most `page`; stops when `each` says so.
    fn scan(
        iter: paced::Paced<'_>,
        start: &[u8],
        filter: &AuditFilter,
        page: usize,
        skipped: &mut Skipped,
        each: &mut dyn FnMut(Vec<AuditRecord>) -> bool,
    ) -> Result<(), StoreError> {
        let mut out = Vec::new();
        for c in iter {
            let (k, v) = c?;
            for it in skipped.items(&k, &v) {
                if it.id.as_slice() < start {
                    continue;
                }
                if let Some(rec) = skipped.decode(&it.id, &it.value)
                    && filter.matches(&rec)
                {
                    out.push(rec);
                    if out.len() >= page && !each(std::mem::take(&mut out)) {
                        return Ok(());
                    }
                }
            }
        }
        if !out.is_empty() {
            each(out);
        }
        Ok(())
    }

    /// Number of stored records (maintained incrementally, not a scan).
    pub fn record_count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Records that retention by count or size (`max_records`, `max_bytes`) removed while
    /// younger than [`YOUNG_PRUNE_MS`], since the store was opened.
    pub fn pruned_young(&self) -> u64 {
        self.inner.pruned_young.load(Ordering::Relaxed)
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

    /// The stored inventory entry of `endpoint`, if any (an unreadable one is `None`).
    pub fn server(&self, endpoint: &str) -> Result<Option<ServerEntry>, StoreError> {
        Ok(self.inner.servers.get(endpoint.as_bytes())?.and_then(|v| codec::decode_server(&v).ok()))
    }

    /// Every stored inventory entry, one at a time, ordered by endpoint (unreadable ones
    /// skipped): for a reader that keeps only some of them, as the store may hold more
    /// than memory should.
    pub fn each_server(&self, mut each: impl FnMut(ServerEntry)) -> Result<(), StoreError> {
        let mut skipped = Skipped::default();
        for item in self.inner.servers.iter() {
            let (k, v) = item?;
            match codec::decode_server(&v) {
                Ok(s) => each(s),
                Err(e) => skipped.note(&k, e),
            }
        }
        skipped.report("servers");
        Ok(())
    }

    /// Forces everything written so far to disk: sled flushed, journal emptied.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.checkpoint()
    }

    /// Runs `write` on the stored encoding of `rec` (its key is `rec.id`), after checking
    /// the id and the schema.
    ///
    /// The encoding goes into a buffer this thread keeps, not a fresh 2 KiB one per write
    /// (two per proxied call): the journal and the tail copy the bytes anyway. At most
    /// [`KEEP_ENCODING`] bytes of it stay allocated. Measured with the batch sizing in
    /// `proxy::exchange`: ~1k instructions per call fewer in malloc and free.
    fn with_record_value<T>(&self, rec: &AuditRecord, write: impl FnOnce(&[u8]) -> Result<T, StoreError>) -> Result<T, StoreError> {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        if id::parse_id(rec.id.as_bytes()).is_none() {
            return Err(StoreError::InvalidId { id: rec.id.clone() });
        }
        let upgraded;
        let rec = match rec.schema {
            AUDIT_SCHEMA_VERSION => rec,
            0 => {
                upgraded = AuditRecord { schema: AUDIT_SCHEMA_VERSION, ..rec.clone() };
                &upgraded
            }
            found => {
                return Err(StoreError::UnsupportedSchema {
                    id: rec.id.clone(),
                    found,
                    supported: AUDIT_SCHEMA_VERSION,
                });
            }
        };
        BUF.with(|b| match b.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                codec::encode_record_into(&mut buf, rec);
                let out = write(&buf);
                if buf.capacity() > KEEP_ENCODING {
                    *buf = Vec::new();
                }
                out
            }
            // Re-entered (a write does not encode another record; if one ever did, it
            // gets a buffer of its own).
            Err(_) => write(&codec::encode_record(rec)),
        })
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
        // Writers wait for a pruning pass (one batch every so many inserts), so none of
        // them finds a record in sled that this pass then removes; the bulk of the tail is
        // sealed before they are stopped.
        let mut sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
        self.seal_frozen(&mut sealed)?;
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        self.seal_held(&mut sealed, &mut head)?;
        let (mut removed, mut freed) = (0u64, 0u64);
        let mut last: Option<Vec<u8>> = None;
        // Records removed for the budget (not for their age) that were young.
        let young_floor = id::key_floor_for_ms(now_ms.saturating_sub(YOUNG_PRUNE_MS));
        let mut young = 0u64;
        for c in paced::Paced::all(&self.records) {
            let (k, v) = c?;
            let Ok(items) = chunk::decode(&k, &v, chunk::legacy_record) else {
                // A chunk that does not decode goes whole, counted as one record.
                self.records.remove(&k)?;
                let n = (k.len() + v.len()) as u64;
                self.count.fetch_sub(1, Ordering::Relaxed);
                self.bytes.fetch_sub(n, Ordering::Relaxed);
                (removed, freed) = (removed + 1, freed + n);
                last = Some(k.to_vec());
                continue;
            };
            let mut keep = 0;
            for it in &items {
                let too_old = age_floor.as_ref().is_some_and(|f| it.id.as_slice() < f.as_bytes());
                if removed >= excess && freed >= excess_bytes && !too_old {
                    break;
                }
                let n = (it.id.len() + it.value.len()) as u64;
                self.count.fetch_sub(1, Ordering::Relaxed);
                self.bytes.fetch_sub(n, Ordering::Relaxed);
                (removed, freed) = (removed + 1, freed + n);
                if !too_old && it.id.as_slice() >= young_floor.as_bytes() {
                    young += 1;
                }
                last = Some(it.id.clone());
                keep += 1;
            }
            if keep == items.len() {
                self.records.remove(&k)?;
                continue;
            }
            if keep > 0 {
                // The key stays: still at or below every id left in the chunk.
                self.records.insert(&k, chunk::encode(&items[keep..]))?;
            }
            break;
        }
        if let Some(last) = last {
            self.prune_chain(&last)?;
        }
        drop(head);
        drop(sealed);
        if removed > 0 {
            tracing::debug!(removed, freed, max_records = max, "pruned oldest audit records");
        }
        if young > 0 {
            self.pruned_young.fetch_add(young, Ordering::Relaxed);
            tracing::warn!(
                young,
                max_records = max,
                "audit retention removed {young} records less than 24 h old to stay within its record/size budget: a flood of calls may be pushing records out; raise [limits] max_audit_records or [audit] max_bytes, and keep a sink"
            );
        }
        Ok(removed)
    }

    /// Moves the chain's base past entries retention made moot: from the front, while
    /// the entry's record is gone or has been written again since. Records up to
    /// `pruned_upto` (the highest id just removed) may be absent from now on. Called
    /// with `sealed` and the head mutex held and the tail sealed.
    fn prune_chain(&self, pruned_upto: &[u8]) -> Result<(), StoreError> {
        let meta = &self.meta;
        let mut base = meta.get(chain::META_BASE)?.and_then(|v| chain::Base::decode(&v)).unwrap_or_default();
        if pruned_upto > base.pruned_upto.as_slice() {
            base.pruned_upto = pruned_upto.to_vec();
        }
        let mut gone = Vec::new();
        let mut rest = None;
        let mut cache = None;
        'chunks: for c in paced::Paced::all(&self.chain) {
            let (k, v) = c?;
            let Ok(items) = chunk::decode(&k, &v, chain::legacy_entry) else { break };
            for (i, it) in items.iter().enumerate() {
                let Some(e) = chain::Entry::from_item(it) else { break 'chunks };
                let moot = match self.current_hash(&mut cache, &e.id)? {
                    None => e.id.as_slice() <= base.pruned_upto.as_slice(),
                    Some(cur) => cur != e.value_hash,
                };
                if !moot {
                    if i > 0 {
                        rest = Some((k.to_vec(), chunk::encode(&items[i..])));
                    }
                    break 'chunks;
                }
                base.point = chain::Point { seq: it.seq, link: e.link };
            }
            gone.push(k);
        }
        // Base first: a crash in between leaves entries below the base, which verify
        // skips; the other order would leave a base behind entries it skips.
        meta.insert(chain::META_BASE, base.encode())?;
        for k in gone {
            self.chain.remove(k)?;
        }
        if let Some((k, v)) = rest {
            self.chain.insert(k, v)?;
        }
        Ok(())
    }

    /// The value hash of the sealed record `id`, reading through `cache` (the chunk read
    /// last: chain entries come in nearly id order, so most lookups hit it).
    fn current_hash(&self, cache: &mut Option<CachedChunk>, id: &[u8]) -> Result<Option<chain::Hash>, StoreError> {
        let hit = cache.as_ref().is_some_and(|c| c.key.as_slice() <= id && c.next.as_deref().is_none_or(|n| id < n));
        if !hit {
            *cache = None;
            let Some((k, v)) = self.records.range(..=id).next_back().transpose()? else {
                return Ok(None);
            };
            let next = self
                .records
                .range((std::ops::Bound::Excluded(k.to_vec()), std::ops::Bound::Unbounded))
                .next()
                .transpose()?
                .map(|(n, _)| n.to_vec());
            let items = chunk::decode(&k, &v, chunk::legacy_record).unwrap_or_default();
            *cache = Some(CachedChunk { key: k.to_vec(), next, items });
        }
        Ok(cache.as_ref().and_then(|c| {
            let i = c.items.binary_search_by(|it| it.id.as_slice().cmp(id)).ok()?;
            Some(chain::value_hash(&c.items[i].value))
        }))
    }

    /// The sealed record `id` (not the tail's).
    fn find_sealed(&self, id: &[u8]) -> Result<Option<chunk::Item>, StoreError> {
        let Some((k, v)) = self.records.range(..=id).next_back().transpose()? else {
            return Ok(None);
        };
        let Ok(items) = chunk::decode(&k, &v, chunk::legacy_record) else {
            return Ok(None);
        };
        Ok(items.into_iter().find(|it| it.id == id))
    }

    /// Seals the tail, then iterates the record chunks from the one that may hold `from`
    /// (items below `from` are the caller's to skip).
    fn sealed_from(&self, from: &[u8]) -> Result<paced::Paced<'_>, StoreError> {
        self.seal_now()?;
        let start = match self.records.range(..=from).next_back().transpose()? {
            Some((k, _)) => k.to_vec(),
            None => from.to_vec(),
        };
        Ok(paced::Paced::new(&self.records, self.records.range(start..)))
    }

    /// Seals every write committed before this call (readers call it first).
    fn seal_now(&self) -> Result<(), StoreError> {
        let mut sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
        self.seal_frozen(&mut sealed)
    }

    /// Seals the tail if it still holds more than `bytes` once this caller's turn to
    /// seal comes (the seal before may have taken it).
    fn seal_over(&self, bytes: usize) -> Result<(), StoreError> {
        let mut sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
        if self.head.lock().unwrap_or_else(|p| p.into_inner()).tail.bytes <= bytes {
            return Ok(());
        }
        self.seal_frozen(&mut sealed)
    }

    /// Seals the tail without holding up writers: under the head mutex the tail is only
    /// swapped for an empty one (lookups go on reading it as `frozen`), sled is written
    /// without the mutex, and `frozen` goes once sled holds it. A failed seal puts the
    /// tail back, under the writes since, to be retried whole.
    fn seal_frozen(&self, sealed: &mut Sealed) -> Result<(), StoreError> {
        self.seal_frozen_after(sealed, |_| Ok(()))
    }

    /// [`Core::seal_frozen`], running `first` in the same hold of the head mutex as the
    /// freeze (so the frozen tail is exactly what was written before `first`).
    fn seal_frozen_after<T>(&self, sealed: &mut Sealed, first: impl FnOnce(&mut Head) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let (out, frozen, point) = {
            let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
            let out = first(&mut head)?;
            if head.tail.is_empty() {
                return Ok(out);
            }
            let frozen = Arc::new(std::mem::take(&mut head.tail));
            head.frozen = Some(frozen.clone());
            head.woken = false;
            (out, frozen, head.point)
        };
        let written = self.write_tail(sealed, &frozen, point);
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        head.frozen = None;
        match written {
            Ok(()) => head.sealed_max.clone_from(&sealed.max_id),
            Err(_) => head.tail.put_back(&frozen),
        }
        written.map(|()| out)
    }

    /// Seals the tail while the caller holds the head mutex (verify, pruning: nothing
    /// may be written meanwhile). Called with `sealed` held, so nothing is frozen.
    fn seal_held(&self, sealed: &mut Sealed, head: &mut Head) -> Result<(), StoreError> {
        debug_assert!(head.frozen.is_none(), "a seal runs while `sealed` is held, and ends before it is released");
        if head.tail.is_empty() {
            return Ok(());
        }
        self.write_tail(sealed, &head.tail, head.point)?;
        head.tail = Tail::default();
        head.woken = false;
        head.sealed_max.clone_from(&sealed.max_id);
        Ok(())
    }

    /// Writes `tail` into sled: records above every sealed id are appended to the last
    /// chunk while it has room, then to new chunks; a record at or below (a completion
    /// that came after its record was sealed, or a replayed line) replaces or joins the
    /// chunk that covers it. Chain entries are appended likewise, and `point` (the chain
    /// tip as of `tail`'s last entry) becomes the stored head. Every step is idempotent,
    /// so a failed write is retried whole.
    fn write_tail(&self, sealed: &mut Sealed, tail: &Tail, point: chain::Point) -> Result<(), StoreError> {
        let last_chunk = |tree: &sled::Tree, legacy: fn(&[u8], &[u8]) -> Option<chunk::Item>| -> Result<Option<Open>, StoreError> {
            Ok(match tree.last()? {
                Some((k, v)) => chunk::decode(&k, &v, legacy).ok().map(|items| Open { key: k.to_vec(), len: chunk::raw_len(&items), items }),
                None => None,
            })
        };
        if !tail.records.is_empty() {
            if let Some(m) = last_chunk(&self.records, chunk::legacy_record)?.and_then(|o| o.items.last().map(|it| it.id.clone()))
                && m > sealed.max_id
            {
                sealed.max_id = m;
            }
            let split = tail.records.range(..=sealed.max_id.clone()).count();
            for (id, (seq, value)) in tail.records.iter().take(split) {
                self.merge_record(chunk::Item { id: id.clone(), seq: *seq, value: value.clone() })?;
            }
            let fresh = tail.records.iter().skip(split).map(|(id, (seq, value))| chunk::Item { id: id.clone(), seq: *seq, value: value.clone() });
            let open = last_chunk(&self.records, chunk::legacy_record)?;
            if let Some(m) = append_items(&self.records, open, fresh, chunk::RECORD_CHUNK_RAW_BYTES, |it| it.id.clone())? {
                sealed.max_id = m.id;
            }
        }
        let pending = tail.chain.iter().filter(|it| it.seq > sealed.chain_seq).cloned();
        let open = last_chunk(&self.chain, chain::legacy_entry)?;
        if let Some(m) = append_items(&self.chain, open, pending, chunk::CHUNK_BYTES, |it| it.seq.to_be_bytes().to_vec())? {
            sealed.chain_seq = m.seq;
        }
        self.meta.insert(chain::META_HEAD, point.encode())?;
        Ok(())
    }

    /// Puts `item` into the chunk that covers its id (replacing the record of that id),
    /// or into a chunk of its own below the first one.
    fn merge_record(&self, item: chunk::Item) -> Result<(), StoreError> {
        let (key, mut items) = match self.records.range(..=item.id.as_slice()).next_back().transpose()? {
            Some((k, v)) => match chunk::decode(&k, &v, chunk::legacy_record) {
                Ok(items) => (k.to_vec(), items),
                // A chunk that does not decode is left as it is; the record gets its own.
                Err(_) => (item.id.clone(), Vec::new()),
            },
            None => (item.id.clone(), Vec::new()),
        };
        match items.binary_search_by(|it| it.id.cmp(&item.id)) {
            Ok(i) => items[i] = item,
            Err(i) => items.insert(i, item),
        }
        self.records.insert(key, chunk::encode(&items))?;
        Ok(())
    }
}

/// The last chunk of a tree, decoded, which new items may be appended to.
struct Open {
    key: Vec<u8>,
    items: Vec<chunk::Item>,
    /// The items' encoding before compression ([`chunk::raw_len`]).
    len: usize,
}

/// A record chunk kept across lookups (`Core::current_hash`).
struct CachedChunk {
    key: Vec<u8>,
    next: Option<Vec<u8>>,
    items: Vec<chunk::Item>,
}

/// Appends `items` (in key order, all above `open`'s) to `open` while it has room (chunks
/// close at `limit` bytes before compression), then to new chunks keyed by `key_of` their
/// first item. Returns the last item written.
fn append_items(
    tree: &sled::Tree,
    open: Option<Open>,
    items: impl Iterator<Item = chunk::Item>,
    limit: usize,
    key_of: impl Fn(&chunk::Item) -> Vec<u8>,
) -> Result<Option<chunk::Item>, StoreError> {
    let mut cur = open.filter(|o| chunk::has_room(o.items.len(), o.len, limit));
    let mut dirty = false;
    for it in items {
        match &mut cur {
            Some(o) if chunk::has_room(o.items.len(), o.len, limit) => {
                o.len += it.encoded_len();
                o.items.push(it);
            }
            _ => {
                if let Some(o) = cur.take()
                    && dirty
                {
                    tree.insert(o.key, chunk::encode(&o.items))?;
                }
                cur = Some(Open { key: key_of(&it), len: chunk::MAGIC.len() + it.encoded_len(), items: vec![it] });
            }
        }
        dirty = true;
    }
    // The last item written is the open chunk's last (items arrive in key order).
    match cur {
        Some(o) if dirty => {
            tree.insert(o.key, chunk::encode(&o.items))?;
            Ok(o.items.into_iter().next_back())
        }
        _ => Ok(None),
    }
}

impl Core {
    /// Starts a new journal segment and seals the tail (frozen in the same hold of the
    /// head mutex as the rotation: sled then holds every line of the old segments),
    /// flushes sled and deletes the old segments.
    fn checkpoint(&self) -> Result<(), StoreError> {
        let _one = self.checkpoint_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
        let (done, dir) = self.seal_frozen_after(&mut sealed, |head| Ok((head.journal.rotate()?, head.journal.dir().to_path_buf())))?;
        drop(sealed);
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
    /// The items of a record chunk; a chunk that does not decode counts as one corrupt value.
    fn items(&mut self, key: &[u8], value: &[u8]) -> Vec<chunk::Item> {
        match chunk::decode(key, value, chunk::legacy_record) {
            Ok(items) => items,
            Err(chunk::BadChunk) => {
                self.note(key, DecodeError::Corrupt("chunk framing is broken".into()));
                Vec::new()
            }
        }
    }

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

/// The highest record id in sled (the last chunk's last item).
fn last_record_id(records: &sled::Tree) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(match records.last()? {
        Some((k, v)) => match chunk::decode(&k, &v, chunk::legacy_record) {
            Ok(items) => items.last().map(|it| it.id.clone()).or(Some(k.to_vec())),
            Err(_) => Some(k.to_vec()),
        },
        None => None,
    })
}

/// The highest chain seq in sled.
fn last_chain_seq(chain: &sled::Tree) -> Result<u64, StoreError> {
    Ok(match chain.last()? {
        Some((k, v)) => match chunk::decode(&k, &v, chain::legacy_entry) {
            Ok(items) => items.last().map_or(chain::key_seq(&k), |it| it.seq),
            Err(_) => chain::key_seq(&k),
        },
        None => 0,
    })
}

/// Writes the layout version into a new store, refuses one written by a newer build, and
/// moves an older one up (layout 1 values are read as they are; new writes are chunks).
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
            if found < STORE_LAYOUT_VERSION {
                meta.insert(META_SCHEMA_VERSION, STORE_LAYOUT_VERSION.to_string().as_bytes())?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
