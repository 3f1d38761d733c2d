//! One HTTP request/response exchange, seen through MCP eyes.
//!
//! - A POST carrying JSON is read (bounded, under a deadline), parsed as JSON-RPC, and
//!   if it is MCP every message gets an audit record *before* the request is forwarded.
//!   Non-MCP JSON is forwarded untouched and unrecorded.
//! - The response streams back to the client untouched and undelayed while a [`Tap`]
//!   watches it: JSON bodies are parsed at their end, `text/event-stream` bodies event
//!   by event, and each response completes the record of the request it answers.
//! - A GET that opens an SSE stream is watched the same way: server-to-client requests
//!   and notifications, responses of legacy HTTP+SSE sessions, and the legacy `endpoint`
//!   event that tells us where the client will POST.
//! - Everything else is forwarded as is.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};
use mcpwatch_api::{AuditRecord, CallStatus, Endpoint, MessageKind, AUDIT_SCHEMA_VERSION};
use mcpwatch_mcp::jsonrpc::{self, Message, Parsed};
use mcpwatch_mcp::sse::SseParser;

use super::body::{self, Body, Collected, End, Observer, Tap};
use super::conn::ConnCtx;
use super::http::{local_response, SharedUpstream};
use crate::failure::{self, Failure, OnFailure};
use crate::inventory::{ServerInfoUpdate, Sighting};
use crate::session::{LegacyRoute, Pending};
use crate::state::{now_ms, Counters, Shared};

pub const H_SESSION: &str = "mcp-session-id";
pub const H_VERSION: &str = "mcp-protocol-version";
pub const H_METHOD: &str = "mcp-method";

const C2S: &str = "client->server";
const S2C: &str = "server->client";

pub async fn handle(shared: Arc<Shared>, ctx: Arc<ConnCtx>, up: SharedUpstream, mut req: Request<Incoming>) -> Response<Body> {
    let upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let scope = Scope::new(&shared, &ctx, &parts);

    // Content-Length together with Transfer-Encoding is how requests are smuggled past
    // a proxy (RFC 9112 §6.1 lets a proxy reject it; we always do, and close).
    let request_line = format!("{} {} {:?}", parts.method, parts.uri, parts.version);
    let framing = ctx.head_log.as_ref().and_then(|l| l.framing_of(request_line.as_bytes())).unwrap_or_default();
    if framing.is_ambiguous() || (parts.headers.contains_key(http::header::CONTENT_LENGTH) && parts.headers.contains_key(http::header::TRANSFER_ENCODING)) {
        let msg = "mcpwatch: request has both Content-Length and Transfer-Encoding (possible request smuggling); refused";
        tracing::warn!(peer = %ctx.peer, "{msg}");
        scope.record_invalid(&shared, 0, msg, CallStatus::TransportError { reason: "ambiguous HTTP framing (CL+TE)".into() });
        let mut resp = local_response(StatusCode::BAD_REQUEST, "text/plain", format!("{msg}\n"));
        resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        return resp;
    }

    if parts.method == Method::POST && (is_json(&parts.headers) || has_mcp_headers(&parts.headers)) {
        let limits = &shared.config.limits;
        return match body::collect(body, limits.max_body_bytes, limits.body_timeout).await {
            Collected::Complete(bytes) => post(shared, scope, up, parts, bytes).await,
            Collected::TooLarge(rest) => {
                if scope.looks_mcp(&shared, &parts.headers) {
                    let msg = format!(
                        "mcpwatch: request body exceeds the inspection limit of {} bytes (limits.max_body_bytes)",
                        limits.max_body_bytes
                    );
                    scope.record_invalid(&shared, 0, &msg, CallStatus::TransportError { reason: "413 request too large".into() });
                    rpc_error_response(StatusCode::PAYLOAD_TOO_LARGE, None, jsonrpc::INVALID_REQUEST, &msg)
                } else {
                    forward(&up, Request::from_parts(parts, rest)).await.map_or_else(gateway_error, |r| r.map(body::incoming))
                }
            }
            Collected::Truncated { partial, error } => {
                let msg = format!("mcpwatch: request body ended early: {error}");
                if scope.looks_mcp(&shared, &parts.headers) || partial.first().is_some_and(|b| *b == b'{' || *b == b'[') {
                    scope.record_invalid(&shared, partial.len() as u64, &msg, CallStatus::TransportError { reason: "client body truncated".into() });
                }
                local_response(StatusCode::BAD_REQUEST, "text/plain", msg)
            }
            Collected::TimedOut { partial } => {
                let msg = format!("mcpwatch: request body not received within {:?}", limits.body_timeout);
                if scope.looks_mcp(&shared, &parts.headers) {
                    scope.record_invalid(&shared, partial.len() as u64, &msg, CallStatus::TransportError { reason: "client body timeout".into() });
                }
                local_response(StatusCode::REQUEST_TIMEOUT, "text/plain", msg)
            }
        };
    }

    let is_delete_session = parts.method == Method::DELETE && parts.headers.contains_key(H_SESSION);
    let wants_sse = parts.method == Method::GET && accepts_sse(&parts.headers);
    let req = Request::from_parts(parts, body::incoming(body));
    let resp = match forward(&up, req).await {
        Ok(r) => r,
        Err(e) => return gateway_error(e),
    };
    if is_delete_session {
        scope.record_session_delete(&shared, resp.status());
    }
    if let Some(client_upgrade) = upgrade {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return splice_upgrade(client_upgrade, resp);
        }
    }
    if wants_sse && is_sse(resp.headers()) && resp.status().is_success() {
        let obs = StreamObserver::new(shared.clone(), scope.clone(), Vec::new(), resp.headers(), resp.status(), Mode::Sse(SseParser::new(shared.config.limits.max_sse_event_bytes)));
        return resp.map(|b| Tap::new(body::incoming(b), obs).boxed());
    }
    resp.map(body::incoming)
}

trait BoxedTap {
    fn boxed(self) -> Body;
}

impl<O: Observer + Unpin> BoxedTap for Tap<O> {
    fn boxed(self) -> Body {
        http_body_util::BodyExt::boxed_unsync(self)
    }
}

/// Where an exchange belongs: server endpoint, session, transport, conversation keys.
#[derive(Debug, Clone)]
pub struct Scope {
    ctx: Arc<ConnCtx>,
    host: Option<String>,
    http_method: String,
    path: String,
    path_and_query: String,
    endpoint: String,
    transport: &'static str,
    session_id: Option<String>,
    protocol_version: Option<String>,
    /// Correlation key for messages answered on another connection.
    conversation: String,
    legacy: bool,
}

impl Scope {
    fn new(shared: &Shared, ctx: &Arc<ConnCtx>, parts: &Parts) -> Scope {
        let host_header = parts.headers.get(HOST).and_then(|v| v.to_str().ok()).map(str::to_string);
        let dst = ctx.origin.dst;
        let path = parts.uri.path().to_string();
        let path_and_query = parts.uri.path_and_query().map_or_else(|| path.clone(), |p| p.as_str().to_string());
        let host_only = host_header.as_deref().map(strip_port).unwrap_or_else(|| dst.ip().to_string());
        let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let dst_s = dst.to_string();
        let host_key = host_header.clone().unwrap_or_default();
        if let Some(route) = shared.sessions.legacy_route(&dst_s, &host_key, &path_and_query) {
            return Scope {
                ctx: ctx.clone(),
                host: host_header,
                http_method: parts.method.to_string(),
                path,
                path_and_query,
                endpoint: route.endpoint.clone(),
                transport: "sse",
                session_id: route.session_id.clone(),
                protocol_version: header(H_VERSION),
                conversation: route.conversation,
                legacy: true,
            };
        }
        let endpoint = Endpoint { scheme: ctx.scheme.to_string(), host: host_only, port: dst.port(), path: path.clone() }.key();
        let session_id = header(H_SESSION);
        let protocol_version = header(H_VERSION)
            .or_else(|| session_id.as_deref().and_then(|s| shared.sessions.version(&endpoint, s)));
        let conversation = format!("{endpoint}#{}", session_id.as_deref().unwrap_or("-"));
        Scope {
            ctx: ctx.clone(),
            host: host_header,
            http_method: parts.method.to_string(),
            path,
            path_and_query,
            endpoint,
            transport: "streamable-http",
            session_id,
            protocol_version,
            conversation,
            legacy: false,
        }
    }

    /// Does a request to this scope look like MCP before its body is understood?
    fn looks_mcp(&self, shared: &Shared, headers: &HeaderMap) -> bool {
        self.legacy || has_mcp_headers(headers) || shared.inventory.contains(&self.endpoint)
    }

    fn record(&self, shared: &Shared, kind: MessageKind, direction: &str, msg: Option<&Message>, bytes: u64) -> AuditRecord {
        AuditRecord {
            schema: AUDIT_SCHEMA_VERSION,
            id: shared.store.new_record_id(),
            ts_ms: now_ms(),
            duration_us: None,
            process: self.ctx.origin.process.as_deref().cloned(),
            dst: self.ctx.origin.dst.to_string(),
            host: self.host.clone(),
            scheme: self.ctx.scheme.to_string(),
            http_method: self.http_method.clone(),
            path: self.path_and_query.clone(),
            server: self.endpoint.clone(),
            transport: self.transport.to_string(),
            session_id: self.session_id.clone(),
            protocol_version: self.protocol_version.clone(),
            kind,
            direction: direction.to_string(),
            method: msg.and_then(|m| m.method()).map(str::to_string),
            jsonrpc_id: msg.and_then(|m| m.id()).map(|i| i.to_string()),
            name: msg.and_then(|m| m.target_name()).map(str::to_string),
            args_hash: msg.and_then(|m| m.args_hash()),
            result_hash: None,
            status: CallStatus::Pending,
            request_bytes: bytes,
            response_bytes: 0,
            notes: Vec::new(),
            tls: self.ctx.tls.as_deref().cloned(),
        }
    }

    /// A body that claimed to be MCP but could not be used: record it, closed.
    fn record_invalid(&self, shared: &Shared, bytes: u64, why: &str, status: CallStatus) {
        let mut rec = self.record(shared, MessageKind::Invalid, C2S, None, bytes);
        rec.notes.push(why.to_string());
        rec.status = status;
        rec.duration_us = Some(0);
        let _ = shared.begin_record(&rec);
    }

    fn record_session_delete(&self, shared: &Shared, status: StatusCode) {
        let mut rec = self.record(shared, MessageKind::Notification, C2S, None, 0);
        rec.notes.push("session terminated by the client (HTTP DELETE)".into());
        rec.status = if status.is_success() { CallStatus::Ok } else { http_failure(status) };
        rec.duration_us = Some(0);
        let _ = shared.begin_record(&rec);
        if let Some(s) = &self.session_id {
            shared.sessions.end_session(&self.endpoint, s);
        }
    }

    fn sighting<'a>(&'a self, method: Option<&'a str>, name: Option<&'a str>) -> Sighting<'a> {
        Sighting {
            endpoint: &self.endpoint,
            dst: "",
            transport: self.transport,
            process: self.ctx.origin.process.as_deref(),
            method,
            name,
            now_ms: now_ms(),
        }
    }
}

/// A client POST with a complete JSON body.
async fn post(shared: Arc<Shared>, scope: Scope, up: SharedUpstream, parts: Parts, bytes: Bytes) -> Response<Body> {
    let parsed = jsonrpc::parse_body(&bytes);
    let messages: Vec<Result<Message, String>> = match &parsed {
        Parsed::Single(m) => vec![Ok(m.clone())],
        Parsed::Batch(items) => items.iter().map(|r| r.clone().map_err(|e| e.to_string())).collect(),
        Parsed::Invalid(e) => vec![Err(e.to_string())],
    };
    let any_mcp_method = messages.iter().any(|m| m.as_ref().is_ok_and(|m| m.method().is_some_and(is_mcp_method)));
    if !(any_mcp_method || scope.looks_mcp(&shared, &parts.headers)) {
        // JSON, but not MCP: not ours to record.
        let req = Request::from_parts(parts, body::full(bytes));
        return forward(&up, req).await.map_or_else(gateway_error, |r| r.map(body::incoming));
    }

    // Envelope, batch and routing-header rules: what fails them is answered here per
    // the spec and never reaches the server (no parsed-vs-forwarded disagreement).
    let signals = mcpwatch_mcp::HeaderSignals::from_lookup(|n| parts.headers.get(n).and_then(|v| v.to_str().ok()));
    let known = scope.protocol_version.as_deref().map(mcpwatch_mcp::Era::for_version);
    if let Err(rej) = mcpwatch_mcp::session::check_request(&signals, &parsed, known.as_ref()) {
        Counters::inc(&shared.counters.mcp_messages);
        let (kind, msg) = match &parsed {
            Parsed::Single(m) if m.id().is_some() => (MessageKind::Request, Some(m)),
            Parsed::Single(m) => (MessageKind::Notification, Some(m)),
            _ => (MessageKind::Invalid, None),
        };
        let mut rec = scope.record(&shared, kind, C2S, msg, bytes.len() as u64);
        rec.notes.push(format!("rejected by mcpwatch, not forwarded: {}", rej.message));
        rec.status = CallStatus::JsonrpcError { code: rej.code, message: rej.message.clone() };
        rec.duration_us = Some(0);
        let _ = shared.begin_record(&rec);
        let status = StatusCode::from_u16(rej.http_status).unwrap_or(StatusCode::BAD_REQUEST);
        return local_response(status, "application/json", serde_json::to_vec(&rej.error_response()).unwrap_or_default());
    }

    let batch = matches!(parsed, Parsed::Batch(_));
    let n = messages.len().max(1);
    let per_message_bytes = bytes.len() as u64 / n as u64;
    let mut local: Vec<(String, Pending)> = Vec::new();
    let mut audit_failed = false;
    let now = Instant::now();
    for m in &messages {
        Counters::inc(&shared.counters.mcp_messages);
        match m {
            Ok(msg @ (Message::Request { .. } | Message::Notification { .. })) => {
                let kind = if msg.id().is_some() { MessageKind::Request } else { MessageKind::Notification };
                let mut rec = scope.record(&shared, kind, C2S, Some(msg), per_message_bytes);
                if batch {
                    rec.notes.push(format!("batch of {n}"));
                }
                if msg.method() == Some("initialize") {
                    if let Some(v) = msg.params().and_then(|p| p.get("protocolVersion")).and_then(|v| v.as_str()) {
                        rec.notes.push(format!("client requested protocol {v}"));
                    }
                }
                let name = rec.name.clone();
                shared.inventory.saw_message(&Sighting { dst: &rec.dst, ..scope.sighting(msg.method(), name.as_deref()) });
                audit_failed |= shared.begin_record(&rec).is_err();
                let key = msg.id().map_or_else(|| format!("notification:{}", rec.id), |i| i.to_string());
                let first_page = msg.method() == Some("tools/list") && msg.params().and_then(|p| p.get("cursor")).is_none();
                local.push((key, Pending { record: rec, started: now, first_page }));
            }
            Ok(msg) => {
                // The client answers a request the server sent on an SSE stream.
                if let Some(id) = msg.id() {
                    if let Some(p) = shared.sessions.take(&scope.conversation, &id.to_string()) {
                        complete_with(&shared, p, msg, bytes.len() as u64);
                    }
                }
            }
            Err(why) => {
                let mut rec = scope.record(&shared, MessageKind::Invalid, C2S, None, per_message_bytes);
                rec.notes.push(why.clone());
                audit_failed |= shared.begin_record(&rec).is_err();
                local.push((format!("invalid:{}", rec.id), Pending { record: rec, started: now, first_page: false }));
            }
        }
    }

    if audit_failed && failure::decide(shared.config.failure_mode, Failure::AuditWrite) == OnFailure::Refuse {
        let msg = "mcpwatch: the audit store is unavailable and failure_mode is closed; the call was not forwarded";
        for (_, p) in local {
            finish(&shared, p, CallStatus::TransportError { reason: "not forwarded: audit write failed (fail-closed)".into() }, None, 0);
        }
        let id = single_id(&parsed);
        return rpc_error_response(StatusCode::SERVICE_UNAVAILABLE, id, jsonrpc::INTERNAL_ERROR, msg);
    }

    let req = Request::from_parts(parts, body::full(bytes));
    let resp = match forward(&up, req).await {
        Ok(r) => r,
        Err(e) => {
            for (_, p) in local {
                finish(&shared, p, CallStatus::TransportError { reason: e.to_string() }, None, 0);
            }
            return gateway_error(e);
        }
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let limits = &shared.config.limits;
    if is_sse(&headers) {
        let obs = StreamObserver::new(shared.clone(), scope, local, &headers, status, Mode::Sse(SseParser::new(limits.max_sse_event_bytes)));
        return resp.map(|b| Tap::new(body::incoming(b), obs).boxed());
    }
    if is_json(&headers) {
        let obs = StreamObserver::new(shared.clone(), scope, local, &headers, status, Mode::Json { buf: Vec::new(), limit: limits.max_body_bytes, overflow: false });
        return resp.map(|b| Tap::new(body::incoming(b), obs).boxed());
    }
    // No JSON-RPC in the response (202 Accepted for notifications, or an HTTP error).
    let mut obs = StreamObserver::new(shared.clone(), scope, local, &headers, status, Mode::Ignore);
    obs.finish_headers_only();
    resp.map(body::incoming)
}

enum Mode {
    Json { buf: Vec<u8>, limit: usize, overflow: bool },
    Sse(SseParser),
    Ignore,
}

/// Watches a response body (or a GET SSE stream) and closes audit records.
struct StreamObserver {
    shared: Arc<Shared>,
    scope: Scope,
    /// Messages of the POST this body answers, by id text.
    local: Vec<(String, Pending)>,
    status: StatusCode,
    response_session: Option<String>,
    mode: Mode,
    bytes: u64,
}

impl StreamObserver {
    fn new(shared: Arc<Shared>, scope: Scope, local: Vec<(String, Pending)>, headers: &HeaderMap, status: StatusCode, mode: Mode) -> Self {
        let response_session = headers.get(H_SESSION).and_then(|v| v.to_str().ok()).map(str::to_string);
        StreamObserver { shared, scope, local, status, response_session, mode, bytes: 0 }
    }

    /// The response carries no JSON-RPC: close what can be closed now.
    fn finish_headers_only(&mut self) {
        let accepted = self.status.is_success();
        for (key, p) in std::mem::take(&mut self.local) {
            let status = match p.record.kind {
                MessageKind::Notification if accepted => CallStatus::Sent,
                MessageKind::Request if accepted && self.scope.legacy => {
                    // Legacy HTTP+SSE: the answer comes on the GET stream.
                    let evicted = self.shared.sessions.park(&self.scope.conversation, &key, p);
                    for e in evicted {
                        finish(&self.shared, e, CallStatus::TransportError { reason: "evicted: too many pending calls".into() }, None, 0);
                    }
                    continue;
                }
                MessageKind::Invalid if accepted => CallStatus::Sent,
                _ if accepted => CallStatus::TransportError { reason: format!("HTTP {} without a JSON-RPC response", self.status) },
                _ => http_failure(self.status),
            };
            finish(&self.shared, p, status, None, 0);
        }
    }

    /// One JSON-RPC message from the server (in a JSON body or an SSE event).
    fn on_server_message(&mut self, msg: Message, size: u64) {
        Counters::inc(&self.shared.counters.mcp_messages);
        match &msg {
            Message::Response { .. } | Message::Error { .. } => {
                let key = msg.id().map(|i| i.to_string());
                let local_hit = match &key {
                    Some(k) => self.local.iter().position(|(lk, _)| lk == k),
                    // An error with a null id answers the message we could not parse.
                    None => self.local.iter().position(|(lk, _)| lk.starts_with("invalid:")),
                };
                let pending = match local_hit {
                    Some(i) => Some(self.local.remove(i).1),
                    None => key.and_then(|k| self.shared.sessions.take(&self.scope.conversation, &k)),
                };
                if let Some(p) = pending {
                    self.learn(&p, &msg);
                    complete_with(&self.shared, p, &msg, size);
                }
            }
            Message::Request { .. } | Message::Notification { .. } => {
                let kind = if msg.id().is_some() { MessageKind::Request } else { MessageKind::Notification };
                let mut rec = self.scope.record(&self.shared, kind, S2C, Some(&msg), size);
                if let Some(s) = &self.response_session {
                    rec.session_id.get_or_insert_with(|| s.clone());
                }
                match msg.id() {
                    Some(id) => {
                        let _ = self.shared.begin_record(&rec);
                        let conv = self.conversation();
                        let p = Pending { record: rec, started: Instant::now(), first_page: false };
                        for e in self.shared.sessions.park(&conv, &id.to_string(), p) {
                            finish(&self.shared, e, CallStatus::TransportError { reason: "evicted: too many pending calls".into() }, None, 0);
                        }
                    }
                    None => {
                        rec.status = CallStatus::Sent;
                        rec.duration_us = Some(0);
                        let _ = self.shared.begin_record(&rec);
                    }
                }
            }
        }
    }

    /// Conversation key for server-initiated requests (answered in a later POST).
    fn conversation(&self) -> String {
        if self.scope.legacy || self.scope.session_id.is_some() {
            return self.scope.conversation.clone();
        }
        match &self.response_session {
            Some(s) => format!("{}#{s}", self.scope.endpoint),
            None => self.scope.conversation.clone(),
        }
    }

    /// Inventory facts from responses to initialize, server/discover and tools/list.
    fn learn(&self, p: &Pending, msg: &Message) {
        let Message::Response { result, .. } = msg else { return };
        let endpoint = &self.scope.endpoint;
        match p.record.method.as_deref() {
            Some("initialize") | Some("server/discover") => {
                let Some(info) = mcpwatch_mcp::server_info::server_info(result) else { return };
                if let (Some(v), Some(s)) = (&info.protocol_version, self.response_session.as_ref().or(self.scope.session_id.as_ref())) {
                    self.shared.sessions.set_version(endpoint, s, v);
                }
                self.shared.inventory.set_server_info(endpoint, ServerInfoUpdate {
                    name: info.name,
                    version: info.version,
                    protocol_version: info.protocol_version,
                    capabilities: info.capabilities,
                });
            }
            Some("tools/list") => {
                let Some(page) = mcpwatch_mcp::server_info::tools_list(result) else { return };
                let pairs: Vec<(String, String)> = page.tools.into_iter().map(|t| (t.name, t.hash)).collect();
                self.shared.inventory.set_tools(endpoint, &pairs, p.first_page, now_ms());
            }
            _ => {}
        }
        if let Some(v) = &self.scope.protocol_version {
            self.shared.inventory.set_protocol_version(endpoint, v);
        }
    }

    fn on_sse_event(&mut self, event: mcpwatch_mcp::sse::SseEvent) {
        if event.oversized || event.invalid_utf8 {
            // The event passes to the client as sent; what it answered cannot be known.
            let why = if event.oversized {
                format!("SSE event larger than limits.max_sse_event_bytes ({} bytes); not inspected", event.raw_len)
            } else {
                "SSE event data is not valid UTF-8; not inspected".to_string()
            };
            tracing::warn!(endpoint = %self.scope.endpoint, "{why}");
            for (_, p) in &mut self.local {
                p.record.notes.push(why.clone());
            }
            return;
        }
        match event.event.as_deref() {
            Some("endpoint") => self.on_legacy_endpoint(&event.data),
            Some("message") | None => {
                if event.data.trim().is_empty() {
                    return; // priming event
                }
                self.on_json(event.data.as_bytes());
            }
            Some(_) => {}
        }
    }

    fn on_json(&mut self, data: &[u8]) {
        let size = data.len() as u64;
        match jsonrpc::parse_body(data) {
            Parsed::Single(m) => self.on_server_message(m, size),
            Parsed::Batch(items) => {
                for m in items.into_iter().flatten() {
                    self.on_server_message(m, size);
                }
            }
            Parsed::Invalid(e) => {
                for (_, p) in &mut self.local {
                    p.record.notes.push(format!("unparseable response data: {e}"));
                }
            }
        }
    }

    /// Legacy HTTP+SSE: the server says where the client must POST.
    fn on_legacy_endpoint(&mut self, data: &str) {
        let target = match mcpwatch_mcp::legacy::parse_endpoint(data.trim(), &self.scope.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(error = %e, endpoint = %self.scope.endpoint, "unusable legacy endpoint event");
                return;
            }
        };
        let path_and_query = target.path_and_query();
        let dst = self.scope.ctx.origin.dst.to_string();
        let host = self.scope.host.clone().unwrap_or_default();
        let conversation = format!("legacy:{}#{}", self.scope.endpoint, path_and_query);
        let route = LegacyRoute { endpoint: self.scope.endpoint.clone(), conversation: conversation.clone(), session_id: target.session_id.clone() };
        self.shared.sessions.add_legacy_route(&dst, &host, &path_and_query, route);
        self.scope.legacy = true;
        self.scope.transport = "sse";
        self.scope.conversation = conversation;
        self.scope.session_id = target.session_id;
        self.shared.inventory.saw_message(&Sighting { dst: &dst, ..self.scope.sighting(None, None) });
    }
}

impl Observer for StreamObserver {
    fn data(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        match &mut self.mode {
            Mode::Json { buf, limit, overflow } => {
                if !*overflow {
                    if buf.len() + chunk.len() > *limit {
                        *overflow = true;
                        buf.clear();
                    } else {
                        buf.extend_from_slice(chunk);
                    }
                }
            }
            Mode::Sse(parser) => {
                let events = parser.push(chunk);
                for ev in events {
                    self.on_sse_event(ev);
                }
            }
            Mode::Ignore => {}
        }
    }

    fn end(&mut self, how: End) {
        match std::mem::replace(&mut self.mode, Mode::Ignore) {
            Mode::Json { buf, overflow, .. } => {
                if overflow {
                    for (_, p) in &mut self.local {
                        p.record.notes.push("response larger than the inspection limit; not parsed".into());
                    }
                } else if how == End::Complete {
                    self.on_json(&buf);
                }
            }
            Mode::Sse(mut parser) => {
                if let Some(ev) = parser.finish() {
                    self.on_sse_event(ev);
                }
            }
            Mode::Ignore => {}
        }
        let reason = match &how {
            End::Complete => None,
            End::Error(e) => Some(format!("response stream failed: {e}")),
            End::Dropped => Some("client went away before the response ended".to_string()),
        };
        let bytes = self.bytes;
        for (_, p) in std::mem::take(&mut self.local) {
            let status = match (p.record.kind, &reason) {
                (MessageKind::Notification, None) if self.status.is_success() => CallStatus::Sent,
                (MessageKind::Invalid, None) if self.status.is_success() => CallStatus::Sent,
                (_, Some(r)) => CallStatus::TransportError { reason: r.clone() },
                (_, None) if !self.status.is_success() => http_failure(self.status),
                (_, None) => CallStatus::TransportError { reason: "response ended without an answer to this request".into() },
            };
            finish(&self.shared, p, status, None, bytes);
        }
        // A legacy GET stream ending strands the calls still waiting on it.
        if self.scope.legacy && self.scope.http_method == "GET" {
            for p in self.shared.sessions.drain(&self.scope.conversation) {
                finish(&self.shared, p, CallStatus::TransportError { reason: "SSE stream closed before the response".into() }, None, 0);
            }
        }
    }
}

/// Close a record with the server's answer.
fn complete_with(shared: &Shared, p: Pending, msg: &Message, size: u64) {
    let (status, hash) = match msg {
        Message::Response { .. } => (CallStatus::Ok, msg.result_hash()),
        Message::Error { code, message, .. } => (CallStatus::JsonrpcError { code: *code, message: message.clone() }, None),
        _ => (CallStatus::Ok, None),
    };
    finish(shared, p, status, hash, size);
}

fn finish(shared: &Shared, mut p: Pending, status: CallStatus, result_hash: Option<String>, bytes: u64) {
    p.record.status = status;
    p.record.duration_us = Some(p.started.elapsed().as_micros() as u64);
    if result_hash.is_some() {
        p.record.result_hash = result_hash;
    }
    p.record.response_bytes = bytes;
    shared.complete_record(&p.record);
}

fn http_failure(status: StatusCode) -> CallStatus {
    CallStatus::TransportError { reason: format!("HTTP {status}") }
}

async fn forward(up: &SharedUpstream, req: Request<Body>) -> Result<Response<Incoming>, super::http::ForwardError> {
    up.lock().await.send(req).await
}

fn gateway_error(e: super::http::ForwardError) -> Response<Body> {
    tracing::info!(error = %e, "upstream request failed");
    local_response(StatusCode::BAD_GATEWAY, "text/plain", format!("mcpwatch: {e}\n"))
}

fn rpc_error_response(status: StatusCode, id: Option<jsonrpc::Id>, code: i64, message: &str) -> Response<Body> {
    let v = jsonrpc::error_response(id.as_ref(), code, message, None);
    local_response(status, "application/json", serde_json::to_vec(&v).unwrap_or_default())
}

fn single_id(p: &Parsed) -> Option<jsonrpc::Id> {
    match p {
        Parsed::Single(m) => m.id().cloned(),
        _ => None,
    }
}

fn splice_upgrade(client: hyper::upgrade::OnUpgrade, mut resp: Response<Incoming>) -> Response<Body> {
    let server = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        match tokio::try_join!(client, server) {
            Ok((c, s)) => {
                let mut c = hyper_util::rt::TokioIo::new(c);
                let mut s = hyper_util::rt::TokioIo::new(s);
                let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    resp.map(|_| body::empty())
}

fn header_has(h: &HeaderMap, name: http::header::HeaderName, needle: &str) -> bool {
    h.get_all(name).iter().any(|v| v.to_str().is_ok_and(|s| s.to_ascii_lowercase().contains(needle)))
}

fn is_json(h: &HeaderMap) -> bool {
    header_has(h, CONTENT_TYPE, "json")
}

fn is_sse(h: &HeaderMap) -> bool {
    header_has(h, CONTENT_TYPE, "text/event-stream")
}

fn accepts_sse(h: &HeaderMap) -> bool {
    header_has(h, http::header::ACCEPT, "text/event-stream")
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(http::header::UPGRADE) && header_has(h, http::header::CONNECTION, "upgrade")
}

fn has_mcp_headers(h: &HeaderMap) -> bool {
    h.contains_key(H_SESSION) || h.contains_key(H_VERSION) || h.contains_key(H_METHOD)
}

/// Methods of the MCP protocol (any revision).
pub fn is_mcp_method(m: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "tools/", "resources/", "prompts/", "notifications/", "completion/", "logging/",
        "sampling/", "roots/", "elicitation/", "tasks/", "server/",
    ];
    m == "initialize" || m == "ping" || PREFIXES.iter().any(|p| m.starts_with(p))
}

/// `host:port` / `[v6]:port` / `host` → host.
fn strip_port(h: &str) -> String {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
        _ => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("127.0.0.2:8765"), "127.0.0.2");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn mcp_methods() {
        assert!(is_mcp_method("tools/call"));
        assert!(is_mcp_method("initialize"));
        assert!(is_mcp_method("server/discover"));
        assert!(!is_mcp_method("eth_call"));
    }
}
