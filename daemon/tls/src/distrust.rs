//! Noticing clients that do not trust the mcpwatch CA, and backing off for them.
//!
//! A client that was never told to trust the local CA (or pins certificates) aborts our
//! handshake. That must be visible ("TLS not inspectable: client does not trust the mcpwatch
//! CA" in the inventory and `mcpwatch status`) and, if configured, the proxy passes that
//! process/destination pair through for a back-off period so the agent keeps working.
//! [`classify_client_abort`] recognises the abort; [`DistrustTracker`] remembers it, bounded in
//! size and time.
//!
//! The key is ONE process (pid + its start time, so a recycled pid is a new process) and one
//! destination, never an executable: a process that rejects the CA (deliberately or not)
//! must not switch interception off for every other process of the same binary.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustls::AlertDescription;

use crate::hello::HandshakeError;

/// Why we believe the client rejected our certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DistrustReason {
    /// It sent unknown_ca, bad_certificate, certificate_unknown or access_denied.
    Alert(#[serde(serialize_with = "alert_name")] AlertDescription),
    /// It hung up right after our ServerHello/Certificate flight, without an alert.
    ClosedAfterServerFlight,
}

fn alert_name<S: serde::Serializer>(alert: &AlertDescription, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{alert:?}"))
}

impl std::fmt::Display for DistrustReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DistrustReason::Alert(a) => {
                write!(f, "client does not trust the mcpwatch CA (alert {a:?})")
            }
            DistrustReason::ClosedAfterServerFlight => {
                f.write_str("client does not trust the mcpwatch CA (closed after our certificate)")
            }
        }
    }
}

/// Does this client-side handshake failure mean "the client rejected our certificate"?
pub fn classify_client_abort(err: &HandshakeError) -> Option<DistrustReason> {
    match err {
        HandshakeError::AlertReceived(
            alert @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied),
        ) => Some(DistrustReason::Alert(*alert)),
        HandshakeError::Closed { server_bytes } if *server_bytes > 0 => {
            Some(DistrustReason::ClosedAfterServerFlight)
        }
        _ => None,
    }
}

/// Options for [`DistrustTracker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistrustOptions {
    /// Most (exe, host) pairs remembered; the least recently seen is forgotten first.
    pub capacity: usize,
    /// How long a pair stays backed off after its last rejection.
    pub backoff: Duration,
    /// Entries whose back-off ended this long ago are dropped (they stop showing in status).
    pub forget_after: Duration,
}

impl Default for DistrustOptions {
    fn default() -> Self {
        DistrustOptions {
            capacity: 4096,
            backoff: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// One client process: pid plus start time (clock ticks since boot, `/proc/<pid>/stat` field
/// 22), which tells a recycled pid from the process that earned the back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientProcess {
    pub pid: u32,
    pub start_ticks: u64,
}

/// One remembered process/destination pair, for `mcpwatch status` and the inventory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DistrustEntry {
    /// The executable (or comm) of the process, for people; not part of the key.
    pub exe: String,
    pub pid: u32,
    pub host: String,
    /// How many rejections were recorded.
    pub count: u64,
    /// Time since the most recent rejection.
    pub since_last: Duration,
    /// Back-off left (zero when over).
    pub backoff_remaining: Duration,
}

#[derive(Debug)]
struct Record {
    exe: String,
    count: u64,
    last: Instant,
    until: Instant,
}

/// Bounded memory of clients that rejected our CA. Share it behind an `Arc`; all methods take
/// `now` so the proxy and tests control the clock.
#[derive(Debug)]
pub struct DistrustTracker {
    options: DistrustOptions,
    map: Mutex<HashMap<Key, Record>>,
}

type Key = (ClientProcess, String);

/// Longest exe path / host kept (longer ones are truncated, so hostile names cannot bloat it).
const MAX_KEY_PART: usize = 512;

fn cut(s: &str) -> String {
    if s.len() <= MAX_KEY_PART {
        return s.to_string();
    }
    let mut end = MAX_KEY_PART;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn key(client: ClientProcess, host: &str) -> Key {
    (client, cut(&host.to_ascii_lowercase()))
}

impl DistrustTracker {
    pub fn new(options: DistrustOptions) -> DistrustTracker {
        DistrustTracker {
            options: DistrustOptions {
                capacity: options.capacity.max(1),
                ..options
            },
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Record>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that process `client` (running `exe`) rejected our certificate for `host`;
    /// starts (or extends) its back-off.
    pub fn record(&self, client: ClientProcess, exe: &str, host: &str, now: Instant) {
        let k = key(client, host);
        let until = now + self.options.backoff;
        let forget = self.options.forget_after;
        let mut map = self.lock();
        if !map.contains_key(&k) && map.len() >= self.options.capacity {
            map.retain(|_, r| r.until + forget > now);
            while map.len() >= self.options.capacity {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, r)| r.last)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(old) => {
                        map.remove(&old);
                    }
                    None => break,
                }
            }
        }
        let rec = map.entry(k).or_insert(Record {
            exe: cut(exe),
            count: 0,
            last: now,
            until,
        });
        rec.count += 1;
        rec.last = now;
        rec.until = until;
    }

    /// Is `client` backed off for `host` right now?
    pub fn is_backed_off(&self, client: ClientProcess, host: &str, now: Instant) -> bool {
        self.lock()
            .get(&key(client, host))
            .is_some_and(|r| now < r.until)
    }

    /// Nothing remembered (the proxy then skips looking up the client's start time).
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Forgets a pair (e.g. after the operator installed the CA for that client).
    pub fn clear(&self, client: ClientProcess, host: &str) {
        self.lock().remove(&key(client, host));
    }

    /// Everything remembered (entries long past their back-off are dropped first), most recent
    /// first.
    pub fn entries(&self, now: Instant) -> Vec<DistrustEntry> {
        let forget = self.options.forget_after;
        let mut map = self.lock();
        map.retain(|_, r| r.until + forget > now);
        let mut out: Vec<DistrustEntry> = map
            .iter()
            .map(|((client, host), r)| DistrustEntry {
                exe: r.exe.clone(),
                pid: client.pid,
                host: host.clone(),
                count: r.count,
                since_last: now.saturating_duration_since(r.last),
                backoff_remaining: r.until.saturating_duration_since(now),
            })
            .collect();
        out.sort_by(|a, b| {
            a.since_last
                .cmp(&b.since_last)
                .then_with(|| a.exe.cmp(&b.exe))
                .then_with(|| a.pid.cmp(&b.pid))
                .then_with(|| a.host.cmp(&b.host))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        for alert in [
            AlertDescription::UnknownCA,
            AlertDescription::BadCertificate,
            AlertDescription::CertificateUnknown,
            AlertDescription::AccessDenied,
        ] {
            assert_eq!(
                classify_client_abort(&HandshakeError::AlertReceived(alert)),
                Some(DistrustReason::Alert(alert))
            );
        }
        for alert in [
            AlertDescription::HandshakeFailure,
            AlertDescription::ProtocolVersion,
            AlertDescription::DecodeError,
        ] {
            assert_eq!(
                classify_client_abort(&HandshakeError::AlertReceived(alert)),
                None,
                "{alert:?}"
            );
        }
        assert_eq!(
            classify_client_abort(&HandshakeError::Closed { server_bytes: 900 }),
            Some(DistrustReason::ClosedAfterServerFlight)
        );
        assert_eq!(
            classify_client_abort(&HandshakeError::Closed { server_bytes: 0 }),
            None
        );
        assert_eq!(
            classify_client_abort(&HandshakeError::Timeout(Duration::from_secs(1))),
            None
        );
    }

    fn client(pid: u32) -> ClientProcess {
        ClientProcess { pid, start_ticks: 1000 + u64::from(pid) }
    }

    #[test]
    fn tracker_backs_off_per_process_and_is_bounded() {
        let t0 = Instant::now();
        let backoff = Duration::from_secs(600);
        let tracker = DistrustTracker::new(DistrustOptions {
            capacity: 3,
            backoff,
            forget_after: Duration::from_secs(3600),
        });
        let node = client(10);
        assert!(tracker.is_empty());
        assert!(!tracker.is_backed_off(node, "mcp.example", t0));
        tracker.record(node, "/usr/bin/node", "MCP.example", t0);
        assert!(tracker.is_backed_off(node, "mcp.example", t0 + Duration::from_secs(1)));
        // Another process of the SAME executable is not backed off, nor is a recycled pid.
        assert!(!tracker.is_backed_off(client(11), "mcp.example", t0));
        let recycled = ClientProcess { pid: 10, start_ticks: 999_999 };
        assert!(!tracker.is_backed_off(recycled, "mcp.example", t0));
        assert!(!tracker.is_backed_off(node, "other.example", t0));
        assert!(tracker.is_backed_off(node, "mcp.example", t0 + backoff - Duration::from_secs(1)));
        assert!(!tracker.is_backed_off(node, "mcp.example", t0 + backoff));

        // A second rejection extends the back-off and counts.
        tracker.record(node, "/usr/bin/node", "mcp.example", t0 + backoff);
        assert!(tracker.is_backed_off(node, "mcp.example", t0 + backoff + Duration::from_secs(1)));
        let entries = tracker.entries(t0 + backoff);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].count, 2);
        assert_eq!((entries[0].exe.as_str(), entries[0].pid), ("/usr/bin/node", 10));
        assert_eq!(entries[0].backoff_remaining, backoff);

        // Bound: the least recently seen pair goes first.
        let t1 = t0 + backoff + Duration::from_secs(10);
        tracker.record(client(1), "a", "h", t1);
        tracker.record(client(2), "b", "h", t1 + Duration::from_secs(1));
        tracker.record(client(3), "c", "h", t1 + Duration::from_secs(2));
        let now = t1 + Duration::from_secs(3);
        let entries = tracker.entries(now);
        assert_eq!(entries.len(), 3);
        assert!(!entries.iter().any(|e| e.exe == "/usr/bin/node"));
        assert_eq!(entries[0].exe, "c");

        // Hostile sizes are truncated, not stored whole.
        tracker.record(client(4), &"x".repeat(100_000), &"y".repeat(100_000), now);
        assert!(
            tracker
                .entries(now)
                .iter()
                .all(|e| e.exe.len() <= MAX_KEY_PART && e.host.len() <= MAX_KEY_PART)
        );
        assert!(tracker.is_backed_off(client(4), &"y".repeat(100_000), now));

        // Old entries are forgotten.
        assert!(
            tracker
                .entries(now + backoff + Duration::from_secs(3601))
                .is_empty()
        );
        tracker.record(client(5), "d", "h", now);
        tracker.clear(client(5), "h");
        assert!(!tracker.is_backed_off(client(5), "h", now));
    }
}
