//! `mcpwatch audit --follow` that survives a daemon restart.
//!
//! Why a module of its own: a follower is often left running in a terminal or piped to
//! a SIEM shipper; a `systemctl restart mcpwatchd` (or a watchdog restart) must not end
//! it or make it print records twice. When the stream closes, the follower reconnects
//! with backoff (up to `--reconnect`), asks for the records since shortly before the
//! newest one it printed, and drops every record it already printed in the same state
//! (a record printed pending and then seen completed is printed again: that is news).

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use mcpwatch_api::{AuditFilter, AuditRecord, Request, Response};

use crate::client::{Conn, daemon_error};

/// How many printed records are remembered for de-duplication.
const MAX_SEEN: usize = 100_000;
/// After a reconnect, records from this long before the newest one printed are asked
/// for again (calls that were pending then may have completed since).
const RESUME_SLACK_MS: u64 = 5 * 60 * 1000;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Records already printed, by content: bounded, oldest forgotten first.
#[derive(Default)]
pub struct Seen {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    newest_ts_ms: Option<u64>,
}

impl Seen {
    fn key(r: &AuditRecord) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_vec(r).unwrap_or_default().hash(&mut h);
        h.finish()
    }

    /// True when `r` (in this exact state) was not printed before; remembers it.
    pub fn first_time(&mut self, r: &AuditRecord) -> bool {
        let k = Seen::key(r);
        if !self.set.insert(k) {
            return false;
        }
        self.order.push_back(k);
        if self.order.len() > MAX_SEEN
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.newest_ts_ms = Some(self.newest_ts_ms.map_or(r.ts_ms, |t| t.max(r.ts_ms)));
        true
    }
}

/// Follow until interrupted. `print` gets each batch of new records. With `reconnect`
/// zero, a closed stream ends the follow (exit 0) as before.
pub fn follow(
    socket: &Path,
    filter: AuditFilter,
    reconnect: Duration,
    mut print: impl FnMut(&[AuditRecord]) -> Result<()>,
) -> Result<()> {
    let mut seen = Seen::default();
    let mut conn = Conn::connect(socket, true)?;
    conn.send(&Request::AuditFollow { filter: filter.clone() })?;
    loop {
        let ended = stream(&mut conn, &mut seen, &mut print)?;
        if reconnect.is_zero() {
            let _ = writeln!(io::stderr(), "mcpwatch: mcpwatchd closed the stream");
            return Ok(());
        }
        let _ = writeln!(
            io::stderr(),
            "mcpwatch: {ended}; reconnecting (for up to {})",
            humantime::format_duration(reconnect)
        );
        let resume_from = seen.newest_ts_ms.unwrap_or_else(crate::now_ms).saturating_sub(RESUME_SLACK_MS);
        let resume = AuditFilter {
            since_ms: Some(filter.since_ms.map_or(resume_from, |s| s.max(resume_from))),
            limit: None,
            ..filter.clone()
        };
        conn = reconnect_with_backoff(socket, &resume, reconnect)?;
        let _ = writeln!(io::stderr(), "mcpwatch: reconnected to mcpwatchd");
    }
}

/// Print new records until the stream ends; returns why it ended. A daemon error or a
/// failed write to stdout is returned as an error.
fn stream(conn: &mut Conn, seen: &mut Seen, print: &mut impl FnMut(&[AuditRecord]) -> Result<()>) -> Result<String> {
    loop {
        let batch = match conn.next() {
            Ok(Some(Response::Audit { records } | Response::AuditPart { records })) => records,
            Ok(Some(Response::Record { record })) => vec![record],
            Ok(Some(Response::Error { message })) => return Err(daemon_error(&message)),
            Ok(Some(other)) => return Err(crate::unexpected("audit --follow", &other)),
            Ok(None) => return Ok("mcpwatchd closed the stream".into()),
            Err(e) => return Ok(format!("{e:#}")),
        };
        let was_empty = batch.is_empty();
        let fresh: Vec<AuditRecord> = batch.into_iter().filter(|r| seen.first_time(r)).collect();
        // An empty backlog still prints (the table header); a batch of repeats does not.
        if was_empty || !fresh.is_empty() {
            print(&fresh)?;
        }
    }
}

fn reconnect_with_backoff(socket: &Path, filter: &AuditFilter, within: Duration) -> Result<Conn> {
    let deadline = Instant::now() + within;
    let mut wait = BACKOFF_START;
    loop {
        let attempt = Conn::connect(socket, true).and_then(|mut c| {
            c.send(&Request::AuditFollow { filter: filter.clone() })?;
            Ok(c)
        });
        match attempt {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() + wait > deadline => {
                return Err(e.context(format!("mcpwatchd did not come back within {}", humantime::format_duration(within))));
            }
            Err(_) => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_record_in_the_same_state_is_printed_once() {
        let mut s = Seen::default();
        let a = AuditRecord { id: "1".into(), ts_ms: 10, ..Default::default() };
        let mut a_done = a.clone();
        a_done.duration_us = Some(5);
        assert!(s.first_time(&a));
        assert!(!s.first_time(&a.clone()));
        assert!(s.first_time(&a_done), "a state change is news");
        assert_eq!(s.newest_ts_ms, Some(10));
    }
}
