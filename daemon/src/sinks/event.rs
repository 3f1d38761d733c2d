//! The shipped event: an audit record plus where it came from, as one JSON object.
//!
//! Why a module of its own: every sink sends the same versioned event (documented in
//! docs/audit-schema.md), so the SIEM side parses one shape whatever the transport.
//! The record's own fields are flattened in unchanged; `event_schema`, `hostname` and
//! `host_id` are added.

use mcpwatch_api::AuditRecord;
use serde::Serialize;

use crate::host::HostIdentity;

/// Version of the shipped event envelope (the record inside carries its own `schema`).
pub const EVENT_SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
struct Envelope<'a> {
    event_schema: u32,
    /// Left out when the record carries its own stamp (one key each in the event).
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_id: Option<&'a str>,
    #[serde(flatten)]
    record: &'a AuditRecord,
}

/// One record ready to send: the record and its JSON event text.
pub struct Prepared<'a> {
    pub record: &'a AuditRecord,
    pub json: String,
    pub hostname: &'a str,
}

impl<'a> Prepared<'a> {
    pub fn new(record: &'a AuditRecord, identity: &'a HostIdentity) -> Prepared<'a> {
        // Records carry `hostname`/`host_id` since they are begun with them (older ones do
        // not): the envelope adds the sink's identity only where the record has none.
        let env = Envelope {
            event_schema: EVENT_SCHEMA_VERSION,
            hostname: record.hostname.is_none().then_some(identity.hostname.as_str()),
            host_id: record.host_id.is_none().then_some(identity.host_id.as_str()),
            record,
        };
        // Plain data (strings, numbers, vectors): serialising cannot fail.
        let json = serde_json::to_string(&env).unwrap_or_else(|e| format!("{{\"event_schema\":{EVENT_SCHEMA_VERSION},\"id\":{:?},\"error\":{:?}}}", record.id, e.to_string()));
        Prepared { record, json, hostname: &identity.hostname }
    }

    /// Nanoseconds for receivers that order by time: the id's millisecond prefix and its
    /// sequence within that millisecond, so ids map to distinct, increasing stamps.
    pub fn unique_ns(&self) -> u128 {
        let id = &self.record.id;
        let ms: u128 = id.get(..20).and_then(|s| s.parse().ok()).unwrap_or(self.record.ts_ms as u128);
        let seq: u128 = id.get(20..).and_then(|s| s.parse().ok()).unwrap_or(0);
        ms * 1_000_000 + seq
    }
}

/// RFC 3339 UTC with milliseconds (`2026-12-04T15:06:57.123Z`) for `ms` since the epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn event_flattens_the_record_and_adds_the_host() {
        let id = HostIdentity { hostname: "h1".into(), host_id: "ab".repeat(16) };
        let rec = AuditRecord { id: "00000001700000000123000007".into(), schema: 1, ..Default::default() };
        let p = Prepared::new(&rec, &id);
        let v: serde_json::Value = serde_json::from_str(&p.json).unwrap();
        assert_eq!(v["event_schema"], 1);
        assert_eq!(v["hostname"], "h1");
        assert_eq!(v["id"], "00000001700000000123000007");
        assert_eq!(v["schema"], 1);
        assert_eq!(p.unique_ns(), 1_700_000_000_123_000_007);
    }

    #[test]
    fn a_stamped_record_keeps_one_hostname_and_host_id_key() {
        let id = HostIdentity { hostname: "sink-side".into(), host_id: "ab".repeat(16) };
        let rec = AuditRecord { hostname: Some("h1".into()), host_id: Some("cd".repeat(16)), ..Default::default() };
        let p = Prepared::new(&rec, &id);
        assert_eq!(p.json.matches("\"hostname\"").count(), 1, "{}", p.json);
        assert_eq!(p.json.matches("\"host_id\"").count(), 1, "{}", p.json);
        let v: serde_json::Value = serde_json::from_str(&p.json).unwrap();
        assert_eq!(v["hostname"], "h1");
        assert_eq!(v["host_id"], "cd".repeat(16));
    }
}
