//! Noticing clients that do not trust the mcpwatch CA, and backing off for them.
//!
//! A client that was never told to trust the local CA (or pins certificates) aborts our
//! handshake. That must be visible ("TLS not inspectable: client does not trust the mcpwatch
//! CA" in the inventory and `mcpwatch status`) and, if configured, the proxy passes that
//! process/host pair through for a back-off period so the agent keeps working.
//! [`classify_client_abort`] recognises the abort; [`DistrustTracker`] remembers it, bounded in
//! size and time.

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

/// One remembered pair, for `mcpwatch status` and the inventory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DistrustEntry {
    pub exe: String,
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
    count: u64,
    last: Instant,
    until: Instant,
}

/// Bounded memory of clients that rejected our CA. Share it behind an `Arc`; all methods take
/// `now` so the proxy and tests control the clock.
#[derive(Debug)]
pub struct DistrustTracker {
    options: DistrustOptions,
    map: Mutex<HashMap<(String, String), Record>>,
}

/// Longest exe path / host kept (longer ones are truncated, so hostile names cannot bloat it).
const MAX_KEY_PART: usize = 512;

fn key(exe: &str, host: &str) -> (String, String) {
    let cut = |s: &str| -> String {
        if s.len() <= MAX_KEY_PART {
            return s.to_string();
        }
        let mut end = MAX_KEY_PART;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    };
    (cut(exe), cut(&host.to_ascii_lowercase()))
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Record>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `exe` rejected our certificate for `host`; starts (or extends) its back-off.
    pub fn record(&self, exe: &str, host: &str, now: Instant) {
        let k = key(exe, host);
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
            count: 0,
            last: now,
            until,
        });
        rec.count += 1;
        rec.last = now;
        rec.until = until;
    }

    /// Should the proxy pass `host` through for `exe` right now?
    pub fn is_backed_off(&self, exe: &str, host: &str, now: Instant) -> bool {
        self.lock()
            .get(&key(exe, host))
            .is_some_and(|r| now < r.until)
    }

    /// Forgets a pair (e.g. after the operator installed the CA for that client).
    pub fn clear(&self, exe: &str, host: &str) {
        self.lock().remove(&key(exe, host));
    }

    /// Everything remembered (entries long past their back-off are dropped first), most recent
    /// first.
    pub fn entries(&self, now: Instant) -> Vec<DistrustEntry> {
        let forget = self.options.forget_after;
        let mut map = self.lock();
        map.retain(|_, r| r.until + forget > now);
        let mut out: Vec<DistrustEntry> = map
            .iter()
            .map(|((exe, host), r)| DistrustEntry {
                exe: exe.clone(),
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

    #[test]
    fn tracker_backs_off_and_is_bounded() {
        let t0 = Instant::now();
        let backoff = Duration::from_secs(600);
        let tracker = DistrustTracker::new(DistrustOptions {
            capacity: 3,
            backoff,
            forget_after: Duration::from_secs(3600),
        });
        assert!(!tracker.is_backed_off("/usr/bin/node", "mcp.example", t0));
        tracker.record("/usr/bin/node", "MCP.example", t0);
        assert!(tracker.is_backed_off("/usr/bin/node", "mcp.example", t0 + Duration::from_secs(1)));
        assert!(!tracker.is_backed_off("/usr/bin/python3", "mcp.example", t0));
        assert!(!tracker.is_backed_off("/usr/bin/node", "other.example", t0));
        assert!(tracker.is_backed_off(
            "/usr/bin/node",
            "mcp.example",
            t0 + backoff - Duration::from_secs(1)
        ));
        assert!(!tracker.is_backed_off("/usr/bin/node", "mcp.example", t0 + backoff));

        // A second rejection extends the back-off and counts.
        tracker.record("/usr/bin/node", "mcp.example", t0 + backoff);
        assert!(tracker.is_backed_off(
            "/usr/bin/node",
            "mcp.example",
            t0 + backoff + Duration::from_secs(1)
        ));
        let entries = tracker.entries(t0 + backoff);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].count, 2);
        assert_eq!(entries[0].backoff_remaining, backoff);

        // Bound: the least recently seen pair goes first.
        let t1 = t0 + backoff + Duration::from_secs(10);
        tracker.record("a", "h", t1);
        tracker.record("b", "h", t1 + Duration::from_secs(1));
        tracker.record("c", "h", t1 + Duration::from_secs(2));
        let now = t1 + Duration::from_secs(3);
        let entries = tracker.entries(now);
        assert_eq!(entries.len(), 3);
        assert!(!entries.iter().any(|e| e.exe == "/usr/bin/node"));
        assert_eq!(entries[0].exe, "c");

        // Hostile sizes are truncated, not stored whole.
        tracker.record(&"x".repeat(100_000), &"y".repeat(100_000), now);
        assert!(
            tracker
                .entries(now)
                .iter()
                .all(|e| e.exe.len() <= MAX_KEY_PART && e.host.len() <= MAX_KEY_PART)
        );
        assert!(tracker.is_backed_off(&"x".repeat(100_000), &"y".repeat(100_000), now));

        // Old entries are forgotten.
        assert!(
            tracker
                .entries(now + backoff + Duration::from_secs(3601))
                .is_empty()
        );
        tracker.record("d", "h", now);
        tracker.clear("d", "h");
        assert!(!tracker.is_backed_off("d", "h", now));
    }
}
