//! How records and inventory entries are laid out as sled values.
//!
//! Why a module of its own: the on-disk bytes outlive any one build. A record value is
//! the JSON of [`AuditRecord`], whose first field is `schema`; a reader peeks at that
//! version before decoding so a record written by a newer build is skipped (not
//! misread), and a value that is not valid JSON is reported as corrupt rather than
//! failing a whole query. Server entries are wrapped in `{"schema":N,"server":{..}}`
//! for the same reason.

use mcpwatch_api::{AUDIT_SCHEMA_VERSION, AuditRecord, ServerEntry};
use serde::{Deserialize, Serialize};

/// Version of the inventory value layout.
pub const SERVER_SCHEMA_VERSION: u32 = 1;

/// Why a stored value could not be turned back into a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("written with schema {found}, this build reads up to {supported}")]
    NewerSchema { found: u32, supported: u32 },
    #[error("not a valid value: {0}")]
    Corrupt(String),
}

/// serde_json's bytes, written by [`crate::record_json`] (which cannot fail).
pub(crate) fn encode_record(rec: &AuditRecord) -> Vec<u8> {
    // A proxied call's record is 1-2 KiB: sized once instead of growing from 128 bytes
    // through four reallocations.
    let mut out = Vec::with_capacity(2048);
    encode_record_into(&mut out, rec);
    out
}

/// [`encode_record`] appended to `out` (a buffer the caller reuses).
pub(crate) fn encode_record_into(out: &mut Vec<u8>, rec: &AuditRecord) {
    crate::record_json::write(out, rec);
}

pub(crate) fn decode_record(bytes: &[u8]) -> Result<AuditRecord, DecodeError> {
    let schema = peek_schema(bytes)?;
    if schema > AUDIT_SCHEMA_VERSION {
        return Err(DecodeError::NewerSchema {
            found: schema,
            supported: AUDIT_SCHEMA_VERSION,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Corrupt(e.to_string()))
}

#[derive(Serialize)]
struct ServerRowRef<'a> {
    schema: u32,
    server: &'a ServerEntry,
}

#[derive(Deserialize)]
struct ServerRow {
    server: ServerEntry,
}

pub(crate) fn encode_server(s: &ServerEntry) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&ServerRowRef {
        schema: SERVER_SCHEMA_VERSION,
        server: s,
    })
}

pub(crate) fn decode_server(bytes: &[u8]) -> Result<ServerEntry, DecodeError> {
    let schema = peek_schema(bytes)?;
    if schema > SERVER_SCHEMA_VERSION {
        return Err(DecodeError::NewerSchema {
            found: schema,
            supported: SERVER_SCHEMA_VERSION,
        });
    }
    serde_json::from_slice::<ServerRow>(bytes)
        .map(|row| row.server)
        .map_err(|e| DecodeError::Corrupt(e.to_string()))
}

/// The `schema` of a JSON object value. Fast path: our writers put `schema` first, so
/// `{"schema":N,` is read without parsing the rest; anything else gets a full parse.
fn peek_schema(bytes: &[u8]) -> Result<u32, DecodeError> {
    const PREFIX: &[u8] = b"{\"schema\":";
    if let Some(rest) = bytes.strip_prefix(PREFIX) {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 && digits <= 9 && matches!(rest.get(digits), Some(b',') | Some(b'}')) {
            // At most 9 ASCII digits: always a valid u32.
            let n = rest[..digits]
                .iter()
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
            return Ok(n);
        }
    }
    #[derive(Deserialize)]
    struct Probe {
        schema: u32,
    }
    serde_json::from_slice::<Probe>(bytes)
        .map(|p| p.schema)
        .map_err(|e| DecodeError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrips_and_schema_is_the_first_field() {
        let rec = AuditRecord {
            schema: AUDIT_SCHEMA_VERSION,
            id: "x".into(),
            ..Default::default()
        };
        let bytes = encode_record(&rec);
        assert!(
            bytes.starts_with(b"{\"schema\":1,"),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(decode_record(&bytes), Ok(rec));
    }

    #[test]
    fn newer_schema_is_refused_by_version_not_by_parse() {
        // Fields a future build might add or change do not matter: the version decides.
        let v = br#"{"schema":99,"id":"x","something_new":{"a":1}}"#;
        assert_eq!(
            decode_record(v),
            Err(DecodeError::NewerSchema {
                found: 99,
                supported: AUDIT_SCHEMA_VERSION
            })
        );
        // Same when `schema` is not the first key.
        let v = br#"{"id":"x","schema":7}"#;
        assert!(matches!(
            decode_record(v),
            Err(DecodeError::NewerSchema { found: 7, .. })
        ));
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        for v in [
            &b""[..],
            b"\xff\xfe",
            b"{\"schema\":",
            b"{\"schema\":1,\"id\":",
            b"[]",
            b"{\"schema\":99999999999}",
        ] {
            assert!(
                matches!(decode_record(v), Err(DecodeError::Corrupt(_))),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn server_roundtrips_in_its_envelope() {
        let s = ServerEntry {
            endpoint: "http://127.0.0.1:1/mcp".into(),
            call_count: 3,
            ..Default::default()
        };
        let bytes = encode_server(&s).expect("encode");
        assert!(bytes.starts_with(b"{\"schema\":1,\"server\":"));
        assert_eq!(decode_server(&bytes), Ok(s));
        assert!(matches!(
            decode_server(br#"{"schema":2,"server":{}}"#),
            Err(DecodeError::NewerSchema { found: 2, .. })
        ));
    }
}
