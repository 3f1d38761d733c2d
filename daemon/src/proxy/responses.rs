//! Server-to-client traffic of an MCP exchange: correlate, learn, govern, pass on.
//!
//! A response body (JSON or `text/event-stream`) or a GET SSE stream goes through a
//! [`StreamObserver`], a [`Transformer`] that sees each JSON-RPC message as soon as it is
//! complete. It closes the audit record of the request a response answers, teaches the
//! inventory (serverInfo, tools, pins), and applies the policy: `tools/list` filtered to
//! what this agent may call (minus poisoned or changed tools), results redacted or
//! blocked by the detectors, instructions aimed at the agent alerted on. A message that
//! needs no change leaves as the exact bytes the server sent; SSE events are never
//! held longer than it takes them to arrive whole.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use hyper::Response;
use hyper::body::Incoming;
use mcpwatch_api::{CallStatus, MessageKind};
use mcpwatch_mcp::integrity::{self, IdState, Verdict};
use mcpwatch_mcp::jsonrpc::{self, Message};
use mcpwatch_mcp::sse::{SseEvent, SseParser};
use mcpwatch_policy::Mode;
use serde_json::Value;

use super::body::{self, Body, End, Transform, Transformer};
use crate::record::{answer_of, finish, write_closed};
use super::scope::{contains_ignore_ascii_case, content_coding, http_failure, is_json, is_sse, Scope, H_SESSION, S2C};
use crate::govern::{self, Judge};
use crate::governance::Loaded;
use crate::inventory::{ServerInfoUpdate, Sighting};
use crate::session::{Asker, IdFate, LegacyRoute, LegacyRouteKey, Pending, PendingKey};
use crate::state::{Counters, Shared};

/// Why an answer was not held for inspection when the body budget could not hold it.
const BUDGET_SPENT: &str = crate::bodies::budget_spent!("response");
/// The same for a server-sent event still arriving.
const BUDGET_SPENT_SSE: &str = crate::bodies::budget_spent!("server event");

/// How an observed answer goes on to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// As it arrives (an SSE stream, a body mcpwatch does not read).
    Streamed,
    /// Held until its end anyway (a JSON body, or text answering calls, is inspected
    /// whole before any of it is delivered): it can go out framed by its exact length
    /// ([`super::body::settle`]).
    Whole,
}

/// Wrap an upstream response to a client POST.
pub fn observe(
    shared: Arc<Shared>,
    scope: Scope,
    gov: Arc<Loaded>,
    local: Vec<(PendingKey, Pending)>,
    injected: Vec<Value>,
    resp: Response<Incoming>,
) -> (Response<Body>, Delivery) {
    let status = resp.status();
    let headers = resp.headers();
    let limits = &shared.config.limits;
    if let Some(types) = two_readings(headers) {
        let what = format!("with a Content-Type clients read two ways ({types}: the Python SDK reads JSON, the TypeScript SDK an event stream)");
        return (uninspectable(shared, scope, gov, local, resp, &what), Delivery::Streamed);
    }
    let (sse, json) = (is_sse(headers), is_json(headers));
    // Not JSON-RPC, but text the client reads as the call's failure (the TypeScript SDK
    // puts an error body into the error it raises, and so into the agent's view): a debug
    // page or a stack trace carrying a key is inspected like a result.
    let text = !sse && !json && !local.is_empty() && may_carry_text(status, headers);
    if (sse || json || text) && let Some(coding) = content_coding(headers) {
        return (uninspectable(shared, scope, gov, local, resp, &format!("with Content-Encoding `{coding}`")), Delivery::Streamed);
    }
    let mode = if sse {
        Mode2::Sse { parser: SseParser::new(limits.max_sse_event_bytes), raw: Vec::new() }
    } else if json {
        Mode2::Json { buf: Vec::new(), limit: limits.max_body_bytes, overflow: false }
    } else if text {
        Mode2::Text { buf: Vec::new(), limit: limits.max_body_bytes, overflow: false }
    } else {
        // No JSON-RPC in the response (202 Accepted for notifications, or an HTTP error).
        let mut obs = StreamObserver::new(shared.clone(), scope, gov, local, headers, status, Mode2::Ignore);
        obs.finish_headers_only();
        return (resp.map(body::incoming), Delivery::Streamed);
    };
    let delivery = if sse { Delivery::Streamed } else { Delivery::Whole };
    let obs = StreamObserver { injected, ..StreamObserver::new(shared, scope, gov, local, headers, status, mode) };
    (transformed(resp, obs), delivery)
}

/// Parse an answer as MCP clients read it: a leading UTF-8 byte-order mark is skipped
/// (fetch's `json()` does) and invalid UTF-8 becomes U+FFFD (fetch and httpx decode so).
/// Left unchanged, the original bytes go to the client, which reads what was inspected.
fn parse_as_clients_do(data: &[u8]) -> Result<Value, serde_json::Error> {
    let data = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
    match std::str::from_utf8(data) {
        // Read as `str`: serde_json does not validate every string again.
        Ok(text) => serde_json::from_str(text),
        // The error, when even the decoded text is not JSON, is the one the bytes give.
        Err(_) => serde_json::from_str(&String::from_utf8_lossy(data)).or_else(|_| serde_json::from_slice(data)),
    }
}

/// Wrap a GET SSE stream (server-initiated messages, legacy responses).
pub fn observe_stream(shared: Arc<Shared>, scope: Scope, resp: Response<Incoming>) -> Response<Body> {
    let gov = shared.governance.current();
    if let Some(coding) = content_coding(resp.headers()) {
        return uninspectable(shared, scope, gov, Vec::new(), resp, &format!("with Content-Encoding `{coding}`"));
    }
    let mode = Mode2::Sse { parser: SseParser::new(shared.config.limits.max_sse_event_bytes), raw: Vec::new() };
    let obs = StreamObserver::new(shared, scope, gov, Vec::new(), resp.headers(), resp.status(), mode);
    transformed(resp, obs)
}

/// The `Content-Type` of an answer, when clients would read it two ways: several
/// `Content-Type` headers (httpx joins them, so the Python SDK, which looks at how the
/// value starts, reads JSON where fetch's joined value includes `text/event-stream`, which
/// the TypeScript SDK checks first), or one value naming both JSON and an event stream
/// (`application/json; x="text/event-stream"`). mcpwatch would inspect it one way and a
/// client read it the other: a JSON answer taken for an event stream with no events went
/// out unread. `Some(the values)` then.
fn two_readings(headers: &HeaderMap) -> Option<String> {
    let all = headers.get_all(http::header::CONTENT_TYPE);
    let mut values = all.iter();
    let first = values.next()?.as_bytes();
    let mixed = match values.next() {
        None => contains_ignore_ascii_case(first, b"json") && contains_ignore_ascii_case(first, b"event-stream"),
        Some(_) => all.iter().any(|v| !v.as_bytes().eq_ignore_ascii_case(first)),
    };
    mixed.then(|| all.iter().map(|v| format!("`{}`", String::from_utf8_lossy(v.as_bytes()).chars().take(100).collect::<String>())).collect::<Vec<_>>().join(", "))
}

/// An answer mcpwatch cannot read as its client will: in a content coding mcpwatch did not
/// ask for (it asks for `identity`), or with a `Content-Type` clients read two ways
/// ([`two_readings`]). Nothing in it can be redacted, pinned or checked. In enforce mode
/// it is not delivered (502); otherwise it goes on, its calls' records and the inventory
/// carrying the alert. `what` completes "server answered ...".
fn uninspectable(shared: Arc<Shared>, scope: Scope, gov: Arc<Loaded>, local: Vec<(PendingKey, Pending)>, resp: Response<Incoming>, what: &str) -> Response<Body> {
    let enforce = gov.inspect_mode(&scope.target().as_policy()) == Mode::Enforce;
    let alert = format!(
        "server answered {what} (not inspectable): {}",
        if enforce { "not delivered (enforce mode)" } else { "delivered uninspected" }
    );
    tracing::warn!(endpoint = %scope.endpoint, "{alert}");
    shared.inventory.add_alert(&scope.endpoint, alert.clone());
    if local.is_empty() {
        let mut rec = scope.record(&shared, MessageKind::Invalid, S2C, None, 0);
        rec.alerts.push(alert.clone());
        let status = if enforce { CallStatus::TransportError { reason: "502 uninspectable answer not delivered".into() } } else { CallStatus::Sent };
        write_closed(&shared, rec, status);
    }
    for (key, mut p) in local {
        if let PendingKey::Id(_, Some(flight)) = key {
            shared.sessions.orphan(flight);
        }
        p.record.alerts.push(alert.clone());
        let status = if enforce {
            CallStatus::TransportError { reason: format!("answer {what} not delivered (not inspectable)") }
        } else {
            CallStatus::Sent
        };
        finish(&shared, p, status, None, 0);
    }
    if enforce {
        return body::local_response(
            StatusCode::BAD_GATEWAY,
            "text/plain",
            format!("mcpwatch: the server answered {what}, which mcpwatch cannot inspect; not delivered\n"),
        );
    }
    resp.map(body::incoming)
}

/// A body the client would read as text: not `202`/`204`/`304`, not declared empty, and
/// a textual (or no) `Content-Type` (any type naming JSON took the JSON path before).
fn may_carry_text(status: StatusCode, headers: &HeaderMap) -> bool {
    if matches!(status, StatusCode::ACCEPTED | StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
        return false;
    }
    if headers.get(http::header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() == b"0") {
        return false;
    }
    let ct = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or_default().trim();
    essence.is_empty() || essence.starts_with("text/") || essence.ends_with("/xml") || essence.ends_with("+xml")
}

fn transformed(resp: Response<Incoming>, obs: StreamObserver) -> Response<Body> {
    let (mut parts, b) = resp.into_parts();
    // The body may change length; hyper frames it anew.
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let body = http_body_util::BodyExt::boxed_unsync(Transform::new(body::incoming(b), obs));
    Response::from_parts(parts, body)
}

/// What happens to one server message.
enum Outcome {
    Keep,
    /// `value` was rewritten.
    Changed,
    /// Not delivered (response integrity).
    Drop,
}

/// What happens to one JSON document (a body or an SSE event's data).
enum JsonOut {
    Keep,
    Replace(Vec<u8>),
    Drop,
}

enum Mode2 {
    Json { buf: Vec<u8>, limit: usize, overflow: bool },
    /// A text body answering calls (an HTTP error page): held whole, inspected, closes
    /// the calls as an HTTP failure.
    Text { buf: Vec<u8>, limit: usize, overflow: bool },
    Sse { parser: SseParser, raw: Vec<u8> },
    Ignore,
}

struct StreamObserver {
    shared: Arc<Shared>,
    scope: Scope,
    gov: Arc<Loaded>,
    /// Messages of the POST this body answers, by id text.
    local: Vec<(PendingKey, Pending)>,
    /// Local answers to append (batch elements mcpwatch refused).
    injected: Vec<Value>,
    status: StatusCode,
    response_session: Option<String>,
    mode: Mode2,
    bytes: u64,
    /// Content inspection runs in enforce mode for this server (the server's rollout
    /// mode, not the deciding rule's); fixed for the stream.
    enforce: bool,
    /// Set when a limit forced the stream to end early.
    abort: bool,
    /// The legacy message route this stream announced: remembered while the stream is
    /// open, forgotten when it ends.
    legacy_route: Option<LegacyRouteKey>,
    /// A JSON or text answer held for inspection takes from the daemon-wide body budget
    /// (`bodies`), charged to the client's uid: a watched user's own slow server cannot
    /// make the daemon hold `max_body_bytes` per connection without bound.
    lease: crate::bodies::Lease,
}

impl StreamObserver {
    fn new(shared: Arc<Shared>, scope: Scope, gov: Arc<Loaded>, local: Vec<(PendingKey, Pending)>, headers: &HeaderMap, status: StatusCode, mode: Mode2) -> Self {
        let response_session = headers.get(H_SESSION).and_then(|v| v.to_str().ok()).map(str::to_string);
        // The scope computes the policy target and the toxic-flow session once and keeps
        // them (`Scope::target`, `Scope::flow_session`): every answer of the stream reads
        // those, no copy per stream or per answer.
        let enforce = gov.inspect_mode(&scope.target().as_policy()) == Mode::Enforce;
        let lease = shared.bodies.lease(scope.ctx.origin.process.as_deref());
        StreamObserver { shared, scope, gov, local, injected: Vec::new(), status, response_session, mode, bytes: 0, enforce, abort: false, legacy_route: None, lease }
    }

    /// A text body answering this POST's calls: the detectors run over it as over a
    /// result. Enforce mode redacts it (or, when a detector blocks, replaces it); every
    /// call it answers carries the findings. The calls are closed by `close_remaining`.
    fn on_text(&mut self, buf: Vec<u8>) -> Vec<u8> {
        let mut v = Value::String(String::from_utf8_lossy(&buf).into_owned());
        let report = self.gov.inspect(&mut v, self.enforce);
        if report.counts.is_empty() && report.detected_only.is_empty() {
            return buf;
        }
        let blocked = self.enforce && report.action == Some(mcpwatch_inspect::Action::Block);
        let redacted = self.enforce && report.redacted_total() > 0;
        let note = if blocked {
            Some("HTTP error body not delivered: it contains data the policy blocks".to_string())
        } else if redacted {
            Some(format!("HTTP error body redacted before the client saw it ({} spans)", report.redacted_total()))
        } else {
            None
        };
        for (_, p) in &mut self.local {
            govern::add_findings(&mut p.record, &report, "response");
            p.record.notes.extend(note.clone());
        }
        match v {
            _ if blocked => format!("mcpwatch: the server's {} answer contains data the policy blocks; it was not delivered\n", self.status).into_bytes(),
            Value::String(text) if redacted => text.into_bytes(),
            _ => buf,
        }
    }

    /// The response carries no JSON-RPC: close what can be closed now.
    fn finish_headers_only(&mut self) {
        let accepted = self.status.is_success();
        // Legacy requests are not here: `post` parks them before forwarding, since their
        // answers come on the GET stream.
        for (_, p) in std::mem::take(&mut self.local) {
            let status = match p.record.kind {
                MessageKind::Notification if accepted => CallStatus::Sent,
                MessageKind::Invalid if accepted => CallStatus::Sent,
                _ if accepted => CallStatus::TransportError { reason: format!("HTTP {} without a JSON-RPC response", self.status) },
                _ => http_failure(self.status),
            };
            finish(&self.shared, p, status, None, 0);
        }
    }

    /// One JSON-RPC message from the server: pass, change (`value` rewritten) or drop.
    /// `keep_value`: the caller re-serialises `value`
    /// whatever the outcome (a batch with a changed member); otherwise `value` is
    /// whole again only when the outcome is [`Outcome::Changed`], since an unchanged
    /// single message goes to the client as the bytes it came in.
    fn on_server_message(&mut self, value: &mut Value, size: u64, keep_value: bool) -> Outcome {
        Counters::inc(&self.shared.counters.mcp_messages);
        let verdict = integrity::judge_server_message(value, |id| self.id_state(id));
        let mut msg = match verdict {
            Verdict::Deliver(msg) => msg,
            Verdict::Drop(why) => {
                let enforce = self.enforce;
                let alert = format!("server message {}: {why}", if enforce { "dropped" } else { "delivered although" });
                tracing::warn!(endpoint = %self.scope.endpoint, "{alert}");
                self.shared.inventory.add_alert(&self.scope.endpoint, alert.clone());
                let mut rec = self.scope.record(&self.shared, MessageKind::Invalid, S2C, None, size);
                rec.jsonrpc_id = value.get("id").filter(|v| !v.is_null()).map(|v| v.to_string());
                rec.alerts.push(alert);
                let status = if enforce { CallStatus::TransportError { reason: "dropped by mcpwatch (response integrity)".into() } } else { CallStatus::Sent };
                write_closed(&self.shared, rec, status);
                return if enforce { Outcome::Drop } else { Outcome::Keep };
            }
        };
        let outcome = self.on_delivered(&mut msg, size);
        // The payload moved out of `value` into `msg` (no copy): put back where used.
        if keep_value || matches!(outcome, Outcome::Changed) {
            jsonrpc::put_back(value, msg);
        }
        outcome
    }

    /// A server message that passed the integrity check: an answer completes its call's
    /// record (after the govern stage had its say); a request or notification of the
    /// server's own is recorded.
    fn on_delivered(&mut self, msg: &mut Message, size: u64) -> Outcome {
        match &*msg {
            Message::Response { .. } | Message::Error { .. } => {
                let key = msg.id().map(|i| i.key());
                let local_hit = match &key {
                    Some(k) => self.local.iter().position(|(lk, _)| matches!(lk, PendingKey::Id(id, _) if id == k)),
                    // An error with a null id answers the message we could not parse.
                    None => self.local.iter().position(|(lk, _)| matches!(lk, PendingKey::Invalid(_))),
                };
                let pending = match local_hit {
                    Some(i) => Some(self.local.remove(i).1),
                    None => key.and_then(|k| self.shared.sessions.take(&self.scope.conversation, Asker::Client, &k)),
                };
                let Some(mut p) = pending else { return self.unmatched_answer(msg, size) };
                // Learned from, and recorded (status, result hash), as the server sent it.
                self.learn(&p, msg);
                let (status, hash) = answer_of(&self.shared, msg);
                let changed = self.govern_result(&mut p, msg);
                finish(&self.shared, p, status, hash, size);
                if changed { Outcome::Changed } else { Outcome::Keep }
            }
            Message::Request { .. } | Message::Notification { .. } => {
                let kind = if msg.id().is_some() { MessageKind::Request } else { MessageKind::Notification };
                let mut rec = self.scope.record(&self.shared, kind, S2C, Some(&*msg), size);
                if let Some(s) = &self.response_session {
                    rec.session_id.get_or_insert_with(|| s.clone());
                }
                if msg.method() == Some("elicitation/create") {
                    let r = mcpwatch_inspect::poison::scan_elicitation(msg.params().unwrap_or(&Value::Null));
                    if r.severity >= mcpwatch_inspect::poison::Severity::Medium {
                        rec.alerts.push(format!("elicitation asks the user for sensitive data (score {})", r.score));
                    }
                }
                match msg.id() {
                    Some(id) => {
                        let _ = self.shared.begin_record(&rec);
                        let conv = self.conversation();
                        let p = Pending { record: rec, started: Instant::now(), first_page: false };
                        for e in self.shared.sessions.park(&conv, Asker::Server, &id.key(), p) {
                            finish(&self.shared, e, CallStatus::TransportError { reason: "evicted: too many pending calls".into() }, None, 0);
                        }
                    }
                    None => {
                        write_closed(&self.shared, rec, CallStatus::Sent);
                    }
                }
                Outcome::Keep
            }
        }
    }

    /// What this conversation knows of a response id.
    fn id_state(&self, id: &jsonrpc::Id) -> IdState {
        let key = id.key();
        if self.local.iter().any(|(k, _)| matches!(k, PendingKey::Id(id, _) if *id == key)) || self.shared.sessions.is_parked(&self.scope.conversation, Asker::Client, &key) {
            return IdState::Pending;
        }
        match self.shared.sessions.id_fate(&self.scope.id_space(), &key) {
            Some(IdFate::Forwarded) => IdState::Sent,
            Some(IdFate::Refused) => IdState::Refused,
            None => IdState::Unknown,
        }
    }

    /// An answer that passed the integrity check but that no waiting call of this stream or
    /// conversation takes: a replay on a resumed stream (`Last-Event-ID`: the server sends
    /// an answer again after its call was completed) or an answer the server routed to
    /// another stream. It reaches the client all the same, so it is judged as an answer to
    /// the call its shape says (a `tools` array: `tools/list`, filtered and pinned;
    /// anything else as a `tools/call` result: detectors, redaction, blocking) and
    /// recorded with an alert. Before, it passed with no inspection and no record.
    fn unmatched_answer(&mut self, msg: &mut Message, size: u64) -> Outcome {
        let listing = matches!(&*msg, Message::Response { result, .. } if result.get("tools").is_some_and(Value::is_array));
        let method = if listing { "tools/list" } else { "tools/call" };
        let mut rec = self.scope.record(&self.shared, MessageKind::Invalid, S2C, None, size);
        rec.method = Some(method.to_string());
        rec.jsonrpc_id = msg.id().map(|i| i.to_string());
        rec.alerts.push(format!("answer to no waiting call (a replay on a resumed stream, or an id answered elsewhere): judged as a {method} answer"));
        let mut p = Pending { record: rec, started: Instant::now(), first_page: false };
        let changed = self.govern_result(&mut p, msg);
        let (status, hash) = answer_of(&self.shared, msg);
        p.record.result_hash = hash;
        write_closed(&self.shared, p.record, status);
        if changed { Outcome::Changed } else { Outcome::Keep }
    }

    /// Policy and inspection on an answer (`govern::result`). Returns true if `msg` changed.
    fn govern_result(&mut self, p: &mut Pending, msg: &mut Message) -> bool {
        let site = self.scope.site(self.scope.target(), self.scope.flow_session());
        govern::result(Judge::of(&self.shared, &self.gov), &site, &mut p.record, p.first_page, msg)
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

    /// Inventory facts from responses to initialize and server/discover.
    fn learn(&self, p: &Pending, msg: &Message) {
        let Message::Response { result, .. } = msg else { return };
        let endpoint = &self.scope.endpoint;
        if p.record.method.as_deref() == Some("initialize")
            && let (Some(s), Some(owner)) = (&self.response_session, self.scope.ctx.owner())
        {
            self.shared.sessions.bind_session(self.scope.ctx.dst_key(), s, owner.clone());
        }
        if let Some("initialize") | Some("server/discover") = p.record.method.as_deref() {
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
        if let Some(v) = &self.scope.protocol_version {
            self.shared.inventory.set_protocol_version(endpoint, v);
        }
    }

    /// Process a JSON document (a body or an event's data).
    fn on_json(&mut self, data: &[u8]) -> JsonOut {
        let size = data.len() as u64;
        let mut value: Value = match parse_as_clients_do(data) {
            Ok(v) => v,
            Err(_) if data.iter().all(u8::is_ascii_whitespace) => return JsonOut::Keep,
            Err(e) => return self.unreadable(&e.to_string()),
        };
        match &mut value {
            Value::Array(items) => {
                let mut changed = false;
                let mut kept = Vec::with_capacity(items.len());
                for mut item in std::mem::take(items) {
                    match self.on_server_message(&mut item, size, true) {
                        Outcome::Keep => kept.push(item),
                        Outcome::Changed => {
                            changed = true;
                            kept.push(item);
                        }
                        Outcome::Drop => changed = true,
                    }
                }
                if kept.is_empty() && changed {
                    return JsonOut::Drop;
                }
                *items = kept;
                if changed { JsonOut::Replace(serde_json::to_vec(&value).unwrap_or_default()) } else { JsonOut::Keep }
            }
            v => match self.on_server_message(v, size, false) {
                Outcome::Keep => JsonOut::Keep,
                Outcome::Changed => JsonOut::Replace(serde_json::to_vec(&value).unwrap_or_default()),
                Outcome::Drop => JsonOut::Drop,
            },
        }
    }

    fn on_sse_event(&mut self, event: &SseEvent) -> JsonOut {
        if event.oversized {
            // The event passes to the client as sent; what it answered cannot be known.
            let why = format!("SSE event larger than limits.max_sse_event_bytes ({} bytes); not inspected", event.raw_len);
            tracing::warn!(endpoint = %self.scope.endpoint, "{why}");
            for (_, p) in &mut self.local {
                p.record.notes.push(why.clone());
            }
            return JsonOut::Keep;
        }
        if event.invalid_utf8 {
            // Clients decode it as the parser did (U+FFFD for each bad sequence) and parse
            // what that gives: so is it inspected. Unchanged, the original bytes go on.
            for (_, p) in &mut self.local {
                p.record.notes.push("SSE event data is not valid UTF-8; inspected as clients decode it (U+FFFD)".into());
            }
        }
        match event.event.as_deref() {
            Some("endpoint") => self.on_legacy_endpoint(&event.data),
            Some("message") | None if !event.data.trim().is_empty() => self.on_json(event.data.as_bytes()),
            _ => JsonOut::Keep, // priming events, other event types
        }
    }

    /// Legacy HTTP+SSE: the server says where the client must POST. The route is
    /// remembered for as long as this stream is open; when no route can be remembered,
    /// the event is withheld and the stream ended, so the client never learns a message
    /// URL whose POSTs mcpwatch could not attribute to this server.
    fn on_legacy_endpoint(&mut self, data: &str) -> JsonOut {
        let target = match mcpwatch_mcp::legacy::parse_endpoint(data.trim(), &self.scope.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(error = %e, endpoint = %self.scope.endpoint, "unusable legacy endpoint event");
                return JsonOut::Keep;
            }
        };
        let path_and_query = target.path_and_query();
        let dst = self.scope.ctx.dst_key().to_owned();
        let host = self.scope.host.clone().unwrap_or_default();
        let conversation = format!("legacy:{}#{}", self.scope.endpoint, path_and_query);
        let route = LegacyRoute { endpoint: self.scope.endpoint.clone(), conversation: conversation.clone(), session_id: target.session_id.clone() };
        match self.shared.sessions.add_legacy_route(&dst, &host, &path_and_query, route) {
            // A second announcement on the same stream: the earlier route is no longer its.
            Ok(key) => match self.legacy_route.replace(key.clone()) {
                Some(old) if old != key => self.shared.sessions.remove_legacy_route(&old),
                _ => {}
            },
            Err(full) => {
                let why = format!("legacy HTTP+SSE stream refused: {full}");
                tracing::warn!(endpoint = %self.scope.endpoint, "{why}");
                let mut rec = self.scope.record(&self.shared, MessageKind::Invalid, S2C, None, 0);
                rec.alerts.push(why.clone());
                rec.notes.push("the endpoint event was withheld and the stream ended".into());
                write_closed(&self.shared, rec, CallStatus::TransportError { reason: why.clone() });
                self.shared.inventory.add_alert(&self.scope.endpoint, why);
                self.abort = true;
                return JsonOut::Drop;
            }
        }
        // The process that opened the stream owns the legacy session.
        if let (Some(sid), Some(owner)) = (&target.session_id, self.scope.ctx.owner()) {
            self.shared.sessions.bind_session(&dst, sid, owner.clone());
        }
        self.scope.adopt_legacy(conversation, target.session_id);
        self.shared.inventory.saw_message(&Sighting { dst: &dst, ..self.scope.sighting(None, None) });
        JsonOut::Keep
    }

    /// An answer (a JSON body, an event's data) that clients may read but mcpwatch
    /// cannot (a lone surrogate escape, say): nothing in it can be redacted, pinned or
    /// checked, so in enforce mode it is not delivered, as a message failing the
    /// integrity check is not. Error statuses pass: their bodies are not messages.
    fn unreadable(&mut self, why: &str) -> JsonOut {
        let drop = self.enforce && self.status.is_success();
        let alert = format!("server answer that is not valid JSON ({why}): {}", if drop { "not delivered (enforce mode)" } else { "delivered uninspected" });
        tracing::warn!(endpoint = %self.scope.endpoint, "{alert}");
        if self.status.is_success() {
            self.shared.inventory.add_alert(&self.scope.endpoint, alert.clone());
            if self.local.is_empty() {
                let mut rec = self.scope.record(&self.shared, MessageKind::Invalid, S2C, None, 0);
                rec.alerts.push(alert.clone());
                let status = if drop { CallStatus::TransportError { reason: "dropped by mcpwatch (not valid JSON)".into() } } else { CallStatus::Sent };
                write_closed(&self.shared, rec, status);
            }
        }
        for (_, p) in &mut self.local {
            p.record.alerts.push(alert.clone());
        }
        if drop { JsonOut::Drop } else { JsonOut::Keep }
    }

    /// Events complete in `raw` so far: pass unchanged ones as their original bytes.
    fn emit_events(&mut self, events: Vec<SseEvent>, raw: Vec<u8>) -> Bytes {
        let mut rewritten: Vec<JsonOut> = Vec::with_capacity(events.len());
        for ev in &events {
            rewritten.push(self.on_sse_event(ev));
        }
        if rewritten.iter().all(|r| matches!(r, JsonOut::Keep)) {
            return Bytes::from(raw);
        }
        let mut out = Vec::new();
        for (ev, new) in events.iter().zip(rewritten) {
            let data = match new {
                JsonOut::Replace(d) => String::from_utf8_lossy(&d).into_owned(),
                JsonOut::Keep => ev.data.clone(),
                JsonOut::Drop => continue,
            };
            serialize_event(ev, &data, &mut out);
        }
        Bytes::from(out)
    }

    /// A limit was hit: answer every request still waiting with a JSON-RPC error, close
    /// their records, alert, and end the stream (SSE) or replace the body (JSON).
    fn abort_with(&mut self, why: &str, sse: bool) -> Bytes {
        tracing::warn!(endpoint = %self.scope.endpoint, "{why}; stream aborted");
        self.abort = true;
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (key, mut p) in std::mem::take(&mut self.local) {
            p.record.alerts.push(format!("{why}; stream aborted"));
            if p.record.kind == MessageKind::Request {
                let id = p.record.jsonrpc_id.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok()).unwrap_or(Value::Null);
                errors.push(serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": jsonrpc::INTERNAL_ERROR, "message": format!("mcpwatch: {why}; the response was not delivered")}}));
            }
            let _ = key;
            finish(&self.shared, p, CallStatus::TransportError { reason: why.to_string() }, None, self.bytes);
        }
        if sse {
            for e in &errors {
                serialize_event(&SseEvent { event: Some("message".into()), ..Default::default() }, &e.to_string(), &mut out);
            }
        } else {
            let v = if errors.len() == 1 { errors.pop().unwrap_or_default() } else { Value::Array(errors) };
            out = serde_json::to_vec(&v).unwrap_or_default();
        }
        Bytes::from(out)
    }

    /// JSON-RPC errors for the requests of this body still unanswered (their answer was
    /// dropped): one object, an array, or nothing.
    fn unanswered_errors(&self) -> Vec<u8> {
        let mut errors: Vec<Value> = self
            .local
            .iter()
            .filter(|(_, p)| p.record.kind == MessageKind::Request)
            .map(|(_, p)| {
                let id = p.record.jsonrpc_id.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok()).unwrap_or(Value::Null);
                serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": jsonrpc::INTERNAL_ERROR, "message": "mcpwatch: the server's response failed the integrity check and was not delivered"}})
            })
            .collect();
        match errors.len() {
            0 => Vec::new(),
            1 => serde_json::to_vec(&errors.pop().unwrap_or_default()).unwrap_or_default(),
            _ => serde_json::to_vec(&Value::Array(errors)).unwrap_or_default(),
        }
    }

    fn close_remaining(&mut self, how: &End) {
        let reason = match how {
            End::Complete => None,
            End::Error(e) => Some(format!("response stream failed: {e}")),
            End::Dropped => Some("client went away before the response ended".to_string()),
        };
        let bytes = self.bytes;
        for (key, p) in std::mem::take(&mut self.local) {
            // Unanswered here; the server may still answer elsewhere: its id stays in use.
            if let PendingKey::Id(_, Some(flight)) = key {
                self.shared.sessions.orphan(flight);
            }
            let status = match (p.record.kind, &reason) {
                (MessageKind::Notification, None) if self.status.is_success() => CallStatus::Sent,
                (MessageKind::Invalid, None) if self.status.is_success() => CallStatus::Sent,
                (_, Some(r)) => CallStatus::TransportError { reason: r.clone() },
                (_, None) if !self.status.is_success() => http_failure(self.status),
                (_, None) => CallStatus::TransportError { reason: "response ended without an answer to this request".into() },
            };
            finish(&self.shared, p, status, None, bytes);
        }
        if let Some(route) = self.legacy_route.take() {
            self.shared.sessions.remove_legacy_route(&route);
        }
        // A legacy GET stream ending strands the calls still waiting on it.
        if self.scope.legacy && self.scope.http_method == "GET" {
            for p in self.shared.sessions.drain(&self.scope.conversation) {
                finish(&self.shared, p, CallStatus::TransportError { reason: "SSE stream closed before the response".into() }, None, 0);
            }
        }
    }
}

impl Transformer for StreamObserver {
    fn aborted(&self) -> bool {
        self.abort
    }

    fn chunk(&mut self, data: &[u8]) -> Bytes {
        self.bytes += data.len() as u64;
        match &mut self.mode {
            Mode2::Json { buf, limit, overflow } | Mode2::Text { buf, limit, overflow } => {
                if *overflow {
                    return Bytes::copy_from_slice(data);
                }
                let over_limit = buf.len() + data.len() > *limit;
                if over_limit || !self.lease.grow(data.len()) {
                    let why = if over_limit {
                        format!("response larger than limits.max_body_bytes ({limit} bytes)")
                    } else {
                        BUDGET_SPENT.to_string()
                    };
                    // The size is the client's to choose (an `echo` of a padded argument
                    // carries a secret past the detectors): toward an enforced server an
                    // answer that cannot be inspected is not delivered, as a request that
                    // cannot be is not forwarded; elsewhere the failure mode decides.
                    if self.enforce || crate::failure::decide(self.shared.config.failure_mode, crate::failure::Failure::Inspection) == crate::failure::OnFailure::Refuse {
                        return self.abort_with(&why, false);
                    }
                    *overflow = true;
                    let mut out = std::mem::take(buf);
                    out.extend_from_slice(data);
                    for (_, p) in &mut self.local {
                        p.record.notes.push(format!("{why}; passed uninspected (failure_mode open)"));
                    }
                    return Bytes::from(out);
                }
                buf.extend_from_slice(data);
                Bytes::new()
            }
            Mode2::Sse { parser, raw } => {
                raw.extend_from_slice(data);
                let events = parser.push(data);
                // Never hold or pass on more than one event's worth: a server that streams
                // an endless event is cut off instead of growing memory or reaching the
                // client uninspected.
                let limit = self.shared.config.limits.max_sse_event_bytes;
                if events.iter().any(|e| e.oversized) || (events.is_empty() && raw.len() > limit) {
                    return self.abort_with(&format!("server event larger than limits.max_sse_event_bytes ({limit} bytes)"), true);
                }
                let done: Vec<u8> = if events.is_empty() {
                    Vec::new()
                } else {
                    let end = last_event_end(raw).unwrap_or(raw.len());
                    let done = raw.drain(..end).collect();
                    // A long event's allocation is not kept for the stream's life.
                    if raw.capacity() > 64 << 10 && raw.len() < raw.capacity() / 4 {
                        raw.shrink_to(raw.len().max(8 << 10));
                    }
                    done
                };
                // What waits for the rest of its event (its bytes as they came, and the
                // parser's copy of its data: what their buffers hold allocated) is held
                // from the body budget, charged to the client's uid: one event at a time
                // per stream, but a uid's streams together may not hold more than its
                // share. Past it the stream is cut off, as an oversized event's: never
                // delivered uninspected.
                let waiting = raw.capacity() + parser.allocated();
                if !self.lease.hold(waiting) {
                    return self.abort_with(BUDGET_SPENT_SSE, true);
                }
                if events.is_empty() {
                    return Bytes::new();
                }
                self.emit_events(events, done)
            }
            Mode2::Ignore => Bytes::copy_from_slice(data),
        }
    }

    fn finish(&mut self, how: End) -> Bytes {
        if self.abort {
            // What was held back (the oversized event) is dropped, not delivered.
            self.mode = Mode2::Ignore;
            self.close_remaining(&how);
            return Bytes::new();
        }
        let out = match std::mem::replace(&mut self.mode, Mode2::Ignore) {
            Mode2::Json { buf, overflow, .. } => {
                if how != End::Complete && self.enforce {
                    // Cut short by the server: never read as a whole, so not delivered
                    // toward an enforced server (a tolerant reader would take the bytes).
                    Bytes::new()
                } else if overflow || how != End::Complete {
                    Bytes::from(buf)
                } else {
                    let mut out = match self.on_json(&buf) {
                        JsonOut::Keep => buf,
                        JsonOut::Replace(b) => b,
                        // Every message was dropped: the requests still open get errors.
                        JsonOut::Drop => self.unanswered_errors(),
                    };
                    if !self.injected.is_empty() {
                        // Batch: append mcpwatch's own answers to the server's array.
                        let mut v: Value = serde_json::from_slice(&out).unwrap_or(Value::Array(Vec::new()));
                        if !v.is_array() {
                            v = Value::Array(vec![v]);
                        }
                        if let Value::Array(items) = &mut v {
                            items.append(&mut self.injected);
                        }
                        out = serde_json::to_vec(&v).unwrap_or_default();
                    }
                    Bytes::from(out)
                }
            }
            Mode2::Sse { mut parser, raw } => {
                let mut out = Vec::new();
                match parser.finish() {
                    Some(ev) => {
                        let b = self.emit_events(vec![ev], raw);
                        out.extend_from_slice(&b);
                    }
                    None => out.extend_from_slice(&raw),
                }
                for v in std::mem::take(&mut self.injected) {
                    serialize_event(&SseEvent::default(), &v.to_string(), &mut out);
                }
                Bytes::from(out)
            }
            Mode2::Text { buf, overflow, .. } => {
                if how != End::Complete && self.enforce {
                    Bytes::new()
                } else if overflow || how != End::Complete {
                    Bytes::from(buf)
                } else {
                    Bytes::from(self.on_text(buf))
                }
            }
            Mode2::Ignore => Bytes::new(),
        };
        self.close_remaining(&how);
        out
    }
}

/// Position just after the last blank line (event terminator) in `raw`, any line endings.
fn last_event_end(raw: &[u8]) -> Option<usize> {
    let mut last = None;
    let mut line_start = 0;
    let mut i = 0;
    while i < raw.len() {
        let eol = match raw[i] {
            b'\n' => Some(i + 1),
            b'\r' if raw.get(i + 1) == Some(&b'\n') => Some(i + 2),
            // A final CR ends its line now, as the parser takes it (and skips an LF that
            // follows in the next chunk): counted otherwise, the bytes of an event already
            // dispatched (and maybe redacted) stayed here to go out verbatim later.
            b'\r' => Some(i + 1),
            _ => None,
        };
        match eol {
            Some(next) => {
                if i == line_start {
                    last = Some(next);
                }
                line_start = next;
                i = next;
            }
            None => i += 1,
        }
    }
    last
}

fn serialize_event(ev: &SseEvent, data: &str, out: &mut Vec<u8>) {
    if let Some(t) = &ev.event {
        out.extend_from_slice(format!("event: {t}\n").as_bytes());
    }
    if let Some(id) = &ev.id {
        out.extend_from_slice(format!("id: {id}\n").as_bytes());
    }
    if let Some(r) = ev.retry {
        out.extend_from_slice(format!("retry: {r}\n").as_bytes());
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_event_ends_with_any_line_endings() {
        assert_eq!(last_event_end(b"data: a\n\n"), Some(9));
        assert_eq!(last_event_end(b"data: a\r\n\r\ndata: b"), Some(11));
        assert_eq!(last_event_end(b"data: a\n\ndata: b\n\n"), Some(18));
        assert_eq!(last_event_end(b"data: a\n"), None);
        assert_eq!(last_event_end(b"data: a\r\r"), Some(9), "a final CR ends the line, as the parser takes it");
        assert_eq!(last_event_end(b"data: {}\n\ndata: secret\n\r"), Some(24), "an event ended by a final CR is drained with it");
        assert_eq!(last_event_end(b"data: a\r\r\r"), Some(10));
    }
}
