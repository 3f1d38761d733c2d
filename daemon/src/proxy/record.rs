//! Beginning an audit record: the one place a record gets its id, time, schema version and
//! the identity of the host that wrote it.
//!
//! Why a module of its own: records are begun for messages ([`super::exchange`]), for
//! connections answered before any message (refused non-HTTP toward governed servers, TLS
//! clients that fail or distrust the CA) and for TLS upstream failures; every one of them
//! must carry the same stamp (`hostname`, `host_id`: a record read from the store, a file or
//! a SIEM says which host it is about without its envelope). Building a record starts here.

use mcpwatch_api::{AuditRecord, CallStatus, Endpoint, MessageKind, AUDIT_SCHEMA_VERSION};

use super::conn::ConnCtx;
use crate::state::{now_ms, Shared};

/// A new record stamped with its id, time, schema version and the host's name and id; the
/// caller fills in the rest (`..begin(shared)`).
pub fn begin(shared: &Shared) -> AuditRecord {
    AuditRecord {
        schema: AUDIT_SCHEMA_VERSION,
        id: shared.store.new_record_id(),
        ts_ms: now_ms(),
        hostname: Some(shared.host.hostname.clone()),
        host_id: Some(shared.host.host_id.clone()),
        ..Default::default()
    }
}

/// A record for a connection mcpwatch answered itself before any message (refusals,
/// unreadable TLS clients); the caller sets the status through [`write_closed`].
pub fn connection(shared: &Shared, ctx: &ConnCtx, scheme: &str, transport: &str, host: &str, note: &str) -> AuditRecord {
    let server = Endpoint { scheme: scheme.into(), host: host.to_string(), port: ctx.origin.dst.port(), path: String::new() }.key();
    AuditRecord {
        duration_us: Some(0),
        process: ctx.origin.process.as_deref().cloned(),
        dst: ctx.origin.dst.to_string(),
        host: Some(host.to_string()),
        scheme: scheme.into(),
        server,
        transport: transport.into(),
        kind: MessageKind::Invalid,
        direction: "client->server".into(),
        status: CallStatus::TransportError { reason: note.to_string() },
        ..begin(shared)
    }
}

/// Write a record that is finished as it is begun (refusals, alerts): `status`, no duration.
pub fn write_closed(shared: &Shared, mut rec: AuditRecord, status: CallStatus) {
    rec.status = status;
    rec.duration_us = Some(0);
    let _ = shared.begin_record(&rec);
}
