//! An audit record's life: begun, committed before its message is forwarded, completed
//! by the answer, or closed as it is begun.
//!
//! Why a module of its own: records are begun for messages ([`crate::proxy::exchange`], the
//! gate), for connections answered before any message (refused non-HTTP toward governed
//! servers, TLS clients that fail or distrust the CA) and for TLS upstream failures; every
//! one of them must carry the same stamp (`hostname`, `host_id`: a record read from the
//! store, a file or a SIEM says which host it is about without its envelope). And every
//! path that sends a message upstream (a POST, a held call approved later, a stdio line
//! through the gate) passes the one [`commit`], so "written before forwarded" holds by
//! construction rather than by each path remembering it.
//!
//! At the crate's top level, not in `proxy`: the proxy and the stdio gate (`crate::gate`)
//! both build and commit records here, so neither transport imports the other.

use std::cell::Cell;

use mcpwatch_api::{AuditRecord, CallStatus, Endpoint, MessageKind, AUDIT_SCHEMA_VERSION};
use mcpwatch_mcp::jsonrpc::Message;

use crate::failure::{self, Failure, OnFailure};
use crate::resolve::Origin;
use crate::session::Pending;
use crate::clock::now_ms;
use crate::state::Shared;

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

/// A new record for one JSON-RPC message (`None`: a body that is not one): what the
/// message says (method, id, target name, keyed hash of its arguments), its kind,
/// direction and size, status pending. The transport fills in where it came from
/// (`..message(...)`): the proxy's `Scope::record`, the gate's `Session::record`.
pub fn message(shared: &Shared, kind: MessageKind, direction: &str, msg: Option<&Message>, bytes: u64) -> AuditRecord {
    AuditRecord {
        kind,
        direction: direction.to_string(),
        method: msg.and_then(|m| m.method()).map(str::to_string),
        jsonrpc_id: msg.and_then(|m| m.id()).map(|i| i.to_string()),
        name: msg.and_then(|m| m.target_name()).map(str::to_string),
        args_hash: msg.and_then(|m| m.args_hash(shared.governance.hash_key())),
        status: CallStatus::Pending,
        request_bytes: bytes,
        ..begin(shared)
    }
}

/// A record for a connection mcpwatch answered itself before any message (refusals,
/// unreadable TLS clients); the caller sets the status through [`write_closed`].
pub fn connection(shared: &Shared, origin: &Origin, scheme: &str, transport: &str, host: &str, note: &str) -> AuditRecord {
    let server = Endpoint { scheme: scheme.into(), host: host.to_string(), port: origin.dst.port(), path: String::new() }.key();
    AuditRecord {
        duration_us: Some(0),
        process: origin.process.clone(),
        dst: origin.dst.to_string(),
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

/// What a client is told when its call was not forwarded because it could not be audited.
pub const UNAUDITED_REFUSAL: &str = "mcpwatch: the audit store is unavailable (failure_mode is closed, or the server is enforced); the call was not forwarded";

/// The record of a message that may not go was not written, and `failure_mode` is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unaudited;

/// The commit stage: records begun for what is about to be forwarded reach the disk
/// (group commit, `[audit] sync`) before it is. `wrote`: records were begun since the
/// last commit; `failed`: beginning one failed. `Err` when the store failed and an
/// unaudited call may not go: `failure_mode` is closed, or the destination is enforced
/// (`enforced`, asked only then). A failing store is something a user can cause (fill
/// the file system the state dir is on), so toward an enforced server it never lets a
/// call through unrecorded, as an answer too large to inspect is cut off there whatever
/// the failure mode. The caller then answers the client itself and forwards nothing.
pub async fn commit(shared: &Shared, wrote: bool, mut failed: bool, enforced: impl FnOnce() -> bool) -> Result<(), Unaudited> {
    if wrote
        && let Err(e) = shared.durable().await
    {
        tracing::error!(error = %e, "audit records not durable");
        failed = true;
    }
    if failed && (failure::decide(shared.config.failure_mode, Failure::AuditWrite) == OnFailure::Refuse || enforced()) {
        return Err(Unaudited);
    }
    Ok(())
}

/// Text a peer chose (a path, an id, an encoding name), clipped to 200 characters for a
/// record's alert or a log line.
pub fn clip(s: &str) -> String {
    let mut c: String = s.chars().take(200).collect();
    if s.chars().count() > 200 {
        c.push('…');
    }
    c
}

pub fn complete_with(shared: &Shared, p: Pending, msg: &Message, size: u64) {
    let (status, hash) = answer_of(shared, msg);
    finish(shared, p, status, hash, size);
}

/// What an answer says for its call's record: the status and the keyed hash of the
/// result (never the result itself).
pub fn answer_of(shared: &Shared, msg: &Message) -> (CallStatus, Option<String>) {
    match msg {
        Message::Response { .. } => (CallStatus::Ok, msg.result_hash(shared.governance.hash_key())),
        Message::Error { code, message, .. } => (CallStatus::JsonrpcError { code: *code, message: message.clone() }, None),
        _ => (CallStatus::Ok, None),
    }
}

/// A call is over (answered, failed, closed): its record gets the outcome. On a proxy
/// connection thread the store write waits in `Shared::deferred` ([`crate::state::Deferred`])
/// until a proxy thread sleeps while waiting for a server
/// ([`crate::state::Shared::run_deferred_on_park`]), the group commit, or until
/// [`DEFER_AT_MOST`] wait, so it is not between the server's answer and the client, nor
/// between the client's next request and the server; elsewhere it is written at once. Either way
/// it may then ride with the next journal write (`Shared::finish_record`): a completion
/// was never a write that anything waits for before forwarding.
pub fn finish(shared: &Shared, mut p: Pending, status: CallStatus, result_hash: Option<String>, bytes: u64) {
    p.record.status = status;
    p.record.duration_us = Some(p.started.elapsed().as_micros() as u64);
    if result_hash.is_some() {
        p.record.result_hash = result_hash;
    }
    p.record.response_bytes = bytes;
    if DEFERS.with(Cell::get) {
        if shared.defer(p.record) >= DEFER_AT_MOST {
            shared.run_deferred();
        }
        return;
    }
    shared.finish_record(&p.record);
}

/// At most this many completions wait to be written; the one that reaches it writes them
/// all.
pub const DEFER_AT_MOST: usize = 64;

thread_local! {
    /// This thread's runtime calls [`crate::state::Shared::run_deferred_on_park`] before
    /// it sleeps.
    static DEFERS: Cell<bool> = const { Cell::new(false) };
}

/// Mark the calling thread as one whose runtime writes waiting completions before it
/// sleeps (the proxy's connection threads, `proxy::workers`): [`finish`] may leave them
/// for then.
pub fn defer_on_this_thread() {
    DEFERS.with(|d| d.set(true));
}
