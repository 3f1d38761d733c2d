//! JSON-lines file sink with size-based rotation, for Vector, Fluent Bit or Filebeat to
//! tail.
//!
//! Why: many sites already run a log shipper; a local file is the simplest contract.
//! One event JSON per line, fsynced per batch (the batch is acknowledged once it is on
//! disk). When the file reaches `max_bytes` it is renamed to `<path>.1` (older ones
//! shift up to `<path>.<keep>`, the oldest is deleted) and a new file is started; the
//! shippers above follow renames. At start the sink reads the id of the last line
//! written, so a batch repeated after a crash is not written twice.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::event::Prepared;
use super::SinkError;

/// `[sinks.file]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Absolute path of the live file, e.g. `/var/log/mcpwatch/audit.jsonl`.
    pub path: PathBuf,
    /// Rotate once the file reaches this size (default 100 MiB, at least 4096).
    pub max_bytes: Option<u64>,
    /// Rotated files kept (default 5, at most 100).
    pub keep: Option<u32>,
}

impl FileConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.is_absolute() || self.path.file_name().is_none() {
            return Err(format!("sinks.file.path: {} must be an absolute file path", self.path.display()));
        }
        if self.max_bytes.is_some_and(|m| m < 4096) {
            return Err("sinks.file.max_bytes must be at least 4096".into());
        }
        if self.keep.is_some_and(|k| k > 100) {
            return Err("sinks.file.keep must be at most 100".into());
        }
        Ok(())
    }
}

pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    /// Id of the last record in the file (or a rotated one): lower ids are not rewritten.
    last_id: Option<String>,
}

impl FileSink {
    pub fn open(cfg: FileConfig) -> Result<FileSink, String> {
        let path = cfg.path;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("sinks.file: cannot create {}: {e}", dir.display()))?;
        }
        let last_id = last_id_in(&path).or_else(|| last_id_in(&rotated(&path, 1)));
        Ok(FileSink { path, max_bytes: cfg.max_bytes.unwrap_or(100 << 20), keep: cfg.keep.unwrap_or(5), last_id })
    }

    pub async fn send(&mut self, batch: &[Prepared<'_>]) -> Result<(), SinkError> {
        let mut lines = Vec::new();
        let mut last = None;
        for p in batch {
            if self.last_id.as_deref().is_some_and(|l| p.record.id.as_str() <= l) {
                continue;
            }
            lines.extend_from_slice(p.json.as_bytes());
            lines.push(b'\n');
            last = Some(p.record.id.clone());
        }
        let Some(last) = last else { return Ok(()) };
        let (path, max_bytes, keep) = (self.path.clone(), self.max_bytes, self.keep);
        let target = path.display().to_string();
        tokio::task::spawn_blocking(move || append_and_rotate(&path, &lines, max_bytes, keep))
            .await
            .map_err(|e| SinkError::Io { target: target.clone(), source: std::io::Error::other(e) })?
            .map_err(|source| SinkError::Io { target, source })?;
        self.last_id = Some(last);
        Ok(())
    }
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn append_and_rotate(path: &Path, lines: &[u8], max_bytes: u64, keep: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).create(true).mode(0o640).open(path)?;
    f.write_all(lines)?;
    f.sync_data()?;
    if f.metadata()?.len() >= max_bytes {
        drop(f);
        if keep == 0 {
            std::fs::remove_file(path)?;
        } else {
            let _ = std::fs::remove_file(rotated(path, keep));
            for n in (1..keep).rev() {
                let from = rotated(path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated(path, n + 1))?;
                }
            }
            std::fs::rename(path, rotated(path, 1))?;
        }
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

/// The `id` of the last complete line of `path` (reads at most the last 1 MiB).
fn last_id_in(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(1 << 20);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    tail.split(|b| *b == b'\n').rev().filter(|l| !l.is_empty()).find_map(|line| {
        let v: serde_json::Value = serde_json::from_slice(line).ok()?;
        v.get("id")?.as_str().map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostIdentity;
    use mcpwatch_api::AuditRecord;

    fn recs(n: usize, from: u64) -> Vec<AuditRecord> {
        (0..n).map(|i| AuditRecord { id: format!("{:020}{:06}", 1_700_000_000_000u64 + from + i as u64, 0), ..Default::default() }).collect()
    }

    #[tokio::test]
    async fn rotates_and_never_rewrites_a_record_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let id = HostIdentity { hostname: "h".into(), host_id: "0".repeat(32) };
        let cfg = FileConfig { path: path.clone(), max_bytes: Some(4096), keep: Some(2) };
        let mut sink = FileSink::open(cfg.clone()).unwrap();
        let batch = recs(10, 0);
        let prepared: Vec<_> = batch.iter().map(|r| Prepared::new(r, &id)).collect();
        sink.send(&prepared).await.unwrap();
        // A restart that lost the cursor resends the batch plus new records.
        let mut sink = FileSink::open(cfg.clone()).unwrap();
        let batch = recs(15, 0);
        let prepared: Vec<_> = batch.iter().map(|r| Prepared::new(r, &id)).collect();
        sink.send(&prepared).await.unwrap();
        let mut ids = Vec::new();
        for p in [rotated(&path, 2), rotated(&path, 1), path.clone()] {
            for line in std::fs::read_to_string(&p).unwrap_or_default().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                ids.push(v["id"].as_str().unwrap().to_string());
            }
        }
        let want: Vec<String> = batch.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids, want, "every record exactly once, in order, across rotation");
        assert!(rotated(&path, 1).exists(), "15 events of ~700 bytes rotate at 4096");
    }
}
