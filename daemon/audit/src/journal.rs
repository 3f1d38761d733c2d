//! The append-only journal in front of sled: where a record write becomes crash-safe.
//!
//! Why it exists: a sled transaction over three trees plus a sled flush per group was the
//! audit path's bottleneck, and sled keeps writes in user-space buffers until it flushes,
//! so a SIGKILL between write and flush lost them. Every chained write is instead first
//! appended as one line to a segment file with a single write(2) (so it is in the kernel
//! before the call returns: a SIGKILL of the daemon loses nothing written), fsynced in
//! groups by [`Journal::sync`] (power loss loses at most what was not yet synced), and
//! then applied to sled without a transaction. A checkpoint (rotate the segment, flush
//! sled, delete the old segments) keeps the journal short; [`replay`] re-applies what a
//! crash left in the journal when the store opens again.
//!
//! Measured and not kept: segments written through a shared memory map (the room
//! reserved with fallocate, each line copied into the page cache, no write(2)). Alone,
//! the copy cost 0.7 µs per 1.4 KiB line against write(2)'s 2.3 µs. In the daemon at 8
//! keep-alive clients the page faults it traded for (a fresh page's `filemap_fault` and
//! `ext4_page_mkwrite`, then a write fault again on every page each group fsync cleans)
//! cost what the write(2) had (~5 % of the daemon's samples either way), and CPU per
//! call and throughput did not move over four alternating pairs. The head mutex was
//! still contended, now over the faults; and without reserved room a full disk is
//! SIGBUS, not an error.
//!
//! Segment files live in `<state dir>/audit.journal/`, named `<n>.log` (n = 20 digits).
//! One line per chain entry:
//!
//! ```text
//! <seq, 20 digits> <record id> <link, 64 hex> <record value (compact JSON)>\n
//! ```
//!
//! The value is compact JSON, so it contains no raw newline. A last line without its
//! newline is torn (the process died inside the write): it is cut off at replay; every
//! complete line before it is kept.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::StoreError;
use crate::chain::{self, Hash};

/// Name of the journal directory inside the state dir.
pub const JOURNAL_DIR_NAME: &str = "audit.journal";

/// One journal line: borrowed from the writer's record when appended (no copy of the
/// record per write), owned when decoded by [`replay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    pub seq: u64,
    pub id: Cow<'a, [u8]>,
    pub link: Hash,
    pub value: Cow<'a, [u8]>,
}

impl Line<'_> {
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut v);
        v
    }

    /// The length of [`Line::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        20 + 1 + self.id.len() + 1 + 64 + 1 + self.value.len() + 1
    }

    /// Appends the encoded line to `v`.
    pub fn encode_into(&self, v: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        v.reserve(self.encoded_len());
        // The sequence number, zero-padded to 20 digits (u64::MAX has 20).
        let mut digits = [b'0'; 20];
        let mut n = self.seq;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        v.extend_from_slice(&digits);
        v.push(b' ');
        v.extend_from_slice(&self.id);
        v.push(b' ');
        for b in self.link {
            v.push(HEX[usize::from(b >> 4)]);
            v.push(HEX[usize::from(b & 0xf)]);
        }
        v.push(b' ');
        v.extend_from_slice(&self.value);
        v.push(b'\n');
    }

    /// `line` without its trailing newline.
    fn decode(line: &[u8]) -> Option<Line<'static>> {
        let mut parts = line.splitn(4, |b| *b == b' ');
        let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let id: Cow<'static, [u8]> = Cow::Owned(parts.next()?.to_vec());
        let hex = parts.next()?;
        if hex.len() != 64 || id.is_empty() {
            return None;
        }
        let mut link = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            link[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        let value = Cow::Owned(parts.next()?.to_vec());
        Some(Line { seq, id, link, value })
    }
}

/// The writing end: the current segment plus the segments written but not yet fsynced.
/// Lives inside the store's head mutex, so lines are appended in chain order.
pub(crate) struct Journal {
    dir: PathBuf,
    seg: u64,
    file: Arc<File>,
    len: u64,
    /// The current segment has lines not yet fsynced.
    dirty: bool,
    /// Rotated-out segments with lines not yet fsynced.
    unsynced: Vec<Arc<File>>,
    /// Lines not yet written, in order, written before any later line: completions
    /// appended with [`Journal::append_deferred`], and lines whose write(2) failed (disk
    /// full, I/O error). After a failure (`backlog`) [`Journal::write_pending`] fails until
    /// a write succeeds, so the store's sync (and every writer waiting for durability)
    /// fails: the same contract as sled's buffered writes and failing flush had. Bounded
    /// by [`MAX_PENDING_BYTES`].
    pending: Vec<u8>,
    /// Bytes kept after a failed write(2), 0 while writes succeed ([`Journal::backlog`]):
    /// non-zero exactly when the last write of `pending` failed. Readable without the
    /// store's head mutex (every proxied call asks, before it forwards).
    backlog: Arc<AtomicUsize>,
}

/// Most bytes of deferred lines kept before they are written anyway.
pub(crate) const MAX_DEFERRED_BYTES: usize = 64 << 10;

/// Most bytes of lines kept while the journal cannot be written; past it, writes fail.
pub(crate) const MAX_PENDING_BYTES: usize = 4 << 20;

/// How many fsyncs the journal did (group commit: one covers many writers). For tests
/// and the bench.
#[derive(Debug, Default)]
pub(crate) struct SyncCounter(AtomicU64);

impl SyncCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { path, action, source }
}

fn seg_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.log"))
}

/// The segment numbers present in `dir`, ascending.
fn segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir, "list journal"))? {
        let entry = entry.map_err(io(dir, "list journal"))?;
        let name = entry.file_name();
        let Some(n) = name.to_str().and_then(|s| s.strip_suffix(".log")).and_then(|s| s.parse().ok()) else {
            continue;
        };
        out.push(n);
    }
    out.sort_unstable();
    Ok(out)
}

fn open_segment(dir: &Path, n: u64) -> Result<File, StoreError> {
    let path = seg_path(dir, n);
    OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path, "open journal segment"))
}

/// Every complete line left in the journal, oldest first; a torn tail is cut off (the
/// file is truncated to its last complete line). Returns the lines and the segment
/// numbers they came from.
pub(crate) fn replay(state_dir: &Path) -> Result<(Vec<Line<'static>>, Vec<u64>), StoreError> {
    let dir = state_dir.join(JOURNAL_DIR_NAME);
    std::fs::create_dir_all(&dir).map_err(io(&dir, "create journal directory"))?;
    let segs = segments(&dir)?;
    let mut lines = Vec::new();
    for &n in &segs {
        let path = seg_path(&dir, n);
        let mut bytes = Vec::new();
        File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io(&path, "read journal segment"))?;
        let mut good = 0usize;
        let mut prev: Option<(u64, Hash)> = None;
        for raw in bytes.split_inclusive(|b| *b == b'\n') {
            let Some(body) = raw.strip_suffix(b"\n") else { break };
            let Some(line) = Line::decode(body) else { break };
            // Lines within a segment follow each other: a line that does not is damage,
            // and nothing after it is trusted.
            if let Some((seq, link)) = prev
                && (line.seq != seq + 1
                    || chain::link(&link, line.seq, &line.id, &chain::value_hash(&line.value)) != line.link)
            {
                break;
            }
            prev = Some((line.seq, line.link));
            good += raw.len();
            lines.push(line);
        }
        if good < bytes.len() {
            tracing::warn!(segment = %path.display(), kept = good, dropped = bytes.len() - good, "cutting a torn journal tail");
            let f = OpenOptions::new().write(true).open(&path).map_err(io(&path, "open journal segment"))?;
            f.set_len(good as u64).map_err(io(&path, "truncate torn journal tail"))?;
            f.sync_all().map_err(io(&path, "sync journal segment"))?;
        }
    }
    Ok((lines, segs))
}

impl Journal {
    /// A new segment numbered after every existing one and after `after` (the last one
    /// replayed and deleted), so numbers never repeat.
    pub fn open(state_dir: &Path, after: u64) -> Result<Journal, StoreError> {
        let dir = state_dir.join(JOURNAL_DIR_NAME);
        std::fs::create_dir_all(&dir).map_err(io(&dir, "create journal directory"))?;
        let seg = segments(&dir)?.last().copied().unwrap_or(0).max(after) + 1;
        let file = Arc::new(open_segment(&dir, seg)?);
        Ok(Journal { dir, seg, file, len: 0, dirty: false, unsynced: Vec::new(), pending: Vec::new(), backlog: Arc::default() })
    }

    /// Appends one line with one write(2) (in the kernel when this returns). If the write
    /// fails the line is kept (see `pending`) and the failure surfaces at the next
    /// sync; only when too much is kept already does the append itself fail.
    pub fn append(&mut self, line: &Line<'_>) -> Result<(), StoreError> {
        if self.failed() && self.pending.len() + line.encoded_len() > MAX_PENDING_BYTES {
            let path = seg_path(&self.dir, self.seg);
            let source = std::io::Error::other(format!("{} bytes of earlier records still unwritten", self.pending.len()));
            // One more try: the disk may have room again.
            self.write_pending().map_err(|_| io(&path, "append to journal")(source))?;
        }
        line.encode_into(&mut self.pending);
        self.dirty = true;
        if let Err(e) = self.write_pending() {
            tracing::warn!(error = %e, kept = self.pending.len(), "audit journal write failed; kept for the next try, durability waits fail until then");
        }
        Ok(())
    }

    /// Appends one line that need not be in the kernel yet: it waits in user space and
    /// goes out with the next write(2) (the next [`Journal::append`], a sync, a
    /// rotation), so one write carries both. For lines whose loss on a crash loses no
    /// forwarded call's record (a call's completion: the call's own line was written
    /// before it was forwarded). Written at once after a failure or past
    /// [`MAX_DEFERRED_BYTES`].
    pub fn append_deferred(&mut self, line: &Line<'_>) -> Result<(), StoreError> {
        if self.failed() || self.pending.len() + line.encoded_len() > MAX_DEFERRED_BYTES {
            return self.append(line);
        }
        line.encode_into(&mut self.pending);
        self.dirty = true;
        Ok(())
    }

    /// Writes the kept lines with one write(2). On error the segment is cut back to where
    /// it was, so a failed write never leaves half a line in front of the next one.
    pub fn write_pending(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = (&*self.file).write_all(&self.pending) {
            let _ = self.file.set_len(self.len);
            self.backlog.store(self.pending.len(), Ordering::Release);
            return Err(io(&seg_path(&self.dir, self.seg), "append to journal")(e));
        }
        self.len += self.pending.len() as u64;
        self.pending.clear();
        if self.failed() {
            self.backlog.store(0, Ordering::Release);
        }
        Ok(())
    }

    /// The last write(2) of `pending` failed.
    fn failed(&self) -> bool {
        self.backlog.load(Ordering::Relaxed) != 0
    }

    /// Starts a new segment if the current one has lines; returns the number of the last
    /// segment that may be deleted once sled holds everything written so far.
    pub fn rotate(&mut self) -> Result<Option<u64>, StoreError> {
        // Deferred lines belong in the segment they were appended to. If the write
        // fails they stay kept and go to the next one (replay takes lines sled already
        // holds again, as it does after a crash).
        let _ = self.write_pending();
        if self.len == 0 {
            return Ok(None);
        }
        let next = Arc::new(open_segment(&self.dir, self.seg + 1)?);
        let old = std::mem::replace(&mut self.file, next);
        if self.dirty {
            self.unsynced.push(old);
        }
        let done = self.seg;
        self.seg += 1;
        self.len = 0;
        self.dirty = false;
        Ok(Some(done))
    }

    /// The files a sync must cover; they count as synced from here on (the caller puts
    /// them back with [`Journal::unsync`] if the fsync fails).
    pub fn take_dirty(&mut self) -> Vec<Arc<File>> {
        let mut out = std::mem::take(&mut self.unsynced);
        if self.dirty {
            out.push(self.file.clone());
            self.dirty = false;
        }
        out
    }

    pub fn unsync(&mut self, files: Vec<Arc<File>>) {
        for f in files {
            if Arc::ptr_eq(&f, &self.file) {
                self.dirty = true;
            } else {
                self.unsynced.push(f);
            }
        }
    }

    /// A handle on the bytes of lines kept because their write(2) failed, as of the
    /// last write attempt (0 while writes succeed; deferred lines do not count).
    pub fn backlog(&self) -> Arc<AtomicUsize> {
        self.backlog.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Deferred lines are not left behind by a store dropped without a checkpoint.
        let _ = self.write_pending();
    }
}

/// Deletes every segment numbered up to `upto` (their lines are in sled, flushed).
pub(crate) fn delete_upto(dir: &Path, upto: u64) -> Result<(), StoreError> {
    delete_segments(dir, segments(dir)?.into_iter().filter(|n| *n <= upto))
}

pub(crate) fn delete_segments(dir: &Path, segs: impl IntoIterator<Item = u64>) -> Result<(), StoreError> {
    for n in segs {
        let path = seg_path(dir, n);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, "delete fed journal segment")(e)),
        }
    }
    Ok(())
}

/// fdatasyncs `files`, counting one sync for the group.
pub(crate) fn sync_files(files: &[Arc<File>], counter: &SyncCounter) -> std::io::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    counter.0.fetch_add(1, Ordering::Relaxed);
    for f in files {
        f.sync_data()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Line;

    #[test]
    fn a_line_is_the_zero_padded_seq_the_id_the_hex_link_and_the_value() {
        let mut link = [0u8; 32];
        link[0] = 0xab;
        link[31] = 0x07;
        let line = Line { seq: 42, id: b"0001".to_vec().into(), link, value: b"{\"a\":1}".to_vec().into() };
        let text = line.encode();
        let expected = format!("{:020} 0001 ab{}07 {{\"a\":1}}\n", 42, "00".repeat(30));
        assert_eq!(String::from_utf8(text.clone()).expect("utf8"), expected);
        let back = Line::decode(&text[..text.len() - 1]).expect("decodes");
        assert_eq!((back.seq, &back.id[..], back.link, &back.value[..]), (42, &b"0001"[..], link, &b"{\"a\":1}"[..]));
        let max = Line { seq: u64::MAX, ..back }.encode();
        assert!(max.starts_with(format!("{} ", u64::MAX).as_bytes()));
    }
}
