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
use mcpwatch_api::{CallStatus, MessageKind};
use mcpwatch_mcp::integrity::{self, BodyShape};
use mcpwatch_mcp::jsonrpc::{self, Message, Parsed};

use super::body::{self, Body, Collected};
use super::ctx::ConnCtx;
use super::auth::HostFit;
use super::body::local_response;
use super::forward::{ForwardError, SharedUpstream};
use crate::bodies::Lease;
use crate::record::{self, clip};
use super::responses::{self, Delivery};
use super::scope::{
    accepts_sse, has_body, header_has, http_failure, is_json, is_sse, strip_port, Evidence, Scope, C2S, H_SESSION,
};
use crate::govern::{self, Fate, Judge};
use crate::governance::Loaded;
use crate::inventory::Sighting;
use crate::session::{Asker, Flight, IdFate, Pending, PendingKey, Unparked};
use crate::state::{Counters, Shared};


pub async fn handle(shared: Arc<Shared>, ctx: Arc<ConnCtx>, up: SharedUpstream, mut req: Request<Incoming>) -> Response<Body> {
    super::scope::host_from_absolute_form(&mut req);
    let upgrade = super::upgrade::prepare(&mut req);
    let tunnel = (req.method() == Method::CONNECT).then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    // First, before any early answer: the head log pairs framings with requests by order.
    let framing = ctx.head_log.as_ref().and_then(|l| l.framing_of()).unwrap_or_default();
    let claimed = super::scope::unproven_host(&shared, &ctx, &parts).await;
    let scope = Scope::new(&shared, &ctx, &parts, claimed);

    // Content-Length together with Transfer-Encoding is how requests are smuggled past
    // a proxy (RFC 9112 §6.1 lets a proxy reject it; we always do, and close).
    // TLS-004: a request whose Host names another server than the TLS SNI is
    // misdirected (domain fronting); answer 421 rather than route by one of them.
    if let (Some(sni), Some(host)) = (ctx.tls.as_ref().and_then(|t| t.sni.as_deref()), parts.headers.get(HOST).and_then(|v| v.to_str().ok()))
        && !strip_port(host).eq_ignore_ascii_case(sni.trim_end_matches('.'))
    {
        let msg = format!("mcpwatch: Host `{}` does not match the TLS server name `{sni}`", strip_port(host));
        tracing::warn!(peer = %ctx.peer, "{msg}");
        let mut rec = scope.record(&shared, MessageKind::Invalid, C2S, None, 0);
        rec.alerts.push(format!("Host/SNI mismatch (possible domain fronting): {msg}"));
        write_closed(&shared, rec, CallStatus::TransportError { reason: "421 misdirected request".into() });
        return local_response(StatusCode::MISDIRECTED_REQUEST, "text/plain", format!("{msg}\n"));
    }
    if framing.is_ambiguous() || (parts.headers.contains_key(http::header::CONTENT_LENGTH) && parts.headers.contains_key(http::header::TRANSFER_ENCODING)) {
        let msg = "mcpwatch: request has both Content-Length and Transfer-Encoding (possible request smuggling); refused";
        tracing::warn!(peer = %ctx.peer, "{msg}");
        scope.record_invalid(&shared, 0, msg, CallStatus::TransportError { reason: "ambiguous HTTP framing (CL+TE)".into() });
        let mut resp = local_response(StatusCode::BAD_REQUEST, "text/plain", format!("{msg}\n"));
        resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        return resp;
    }

    // Two Host headers: mcpwatch names the server by the first, a front end may route
    // by the last (RFC 9112 §3.2: a server must answer 400).
    if parts.headers.get_all(HOST).iter().nth(1).is_some() {
        let msg = "mcpwatch: request has more than one Host header; refused";
        tracing::warn!(peer = %ctx.peer, "{msg}");
        scope.record_invalid(&shared, 0, msg, CallStatus::TransportError { reason: "400 duplicate Host".into() });
        return local_response(StatusCode::BAD_REQUEST, "text/plain", format!("{msg}\n"));
    }

    // A session id belongs to the process that opened the session.
    if let Some(resp) = check_session_owner(&shared, &scope) {
        return resp;
    }

    if let Some(client) = tunnel {
        return super::tunnel::open(shared, ctx, scope, up, parts, client).await;
    }
    if upgrade.is_some()
        && let Some(refused) = super::upgrade::gate(&shared, &scope, &parts, ctx.origin.dst).await
    {
        return refused;
    }
    // A body is what the framing carries, not what the headers announce: an HTTP/2
    // request streams DATA frames with no Content-Length (nor Transfer-Encoding), and
    // hyper knows it has a body from the HEADERS frame lacking END_STREAM.
    if has_body(&parts.headers) || !http_body::Body::is_end_stream(&body) {
        return with_body(shared, scope, up, parts, body).await;
    }

    // Requests without a body toward an MCP server (or opening an SSE stream): their
    // Host and Origin must fit the real destination.
    let wants_sse = parts.method == Method::GET && accepts_sse(&parts.headers);
    if (wants_sse || scope.evidence(&shared, &parts.headers).is_some())
        && let Some(refused) = guard_host(&shared, &scope, &parts)
    {
        return refused;
    }
    let oauth_metadata = parts.method == Method::GET && super::auth::is_oauth_metadata_path(parts.uri.path());
    let is_delete_session = parts.method == Method::DELETE && parts.headers.contains_key(H_SESSION);
    let mut parts = parts;
    if wants_sse || oauth_metadata {
        // Their answers are read: asked for uncompressed.
        super::scope::ask_identity(&mut parts.headers);
    }
    let req = Request::from_parts(parts, body::incoming(body));
    let resp = match forward(&up, req).await {
        Ok(r) => r,
        Err(e) => return gateway_error(e),
    };
    if is_delete_session {
        scope.record_session_delete(&shared, resp.status());
    }
    if oauth_metadata && resp.status().is_success() {
        return check_oauth_metadata(&shared, &scope, resp).await;
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let mode = super::upgrade::mode(&shared, &scope, scope.ctx.origin.dst).await;
        return super::upgrade::splice(upgrade, resp, super::websocket::Watch::new(shared.clone(), scope, mode));
    }
    // Watched when the server streams events, whatever the client said it accepts: the
    // legacy SSE transport streams to a GET without `Accept: text/event-stream` too.
    if is_sse(resp.headers()) && resp.status().is_success() {
        return responses::observe_stream(shared, scope, resp);
    }
    resp.map(body::incoming)
}

/// A request with a body. A body that is MCP is governed (or refused) whatever its
/// Content-Type and HTTP method; one that cannot be inspected is not streamed to an MCP
/// server uninspected. See docs/protocols.md, "What mcpwatch takes for MCP".
async fn with_body(shared: Arc<Shared>, scope: Scope, up: SharedUpstream, parts: Parts, body: Incoming) -> Response<Body> {
    let limits = &shared.config.limits;
    let content_type = parts.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let json_post = parts.method == Method::POST && is_json(&parts.headers);
    let evidence = scope.evidence(&shared, &parts.headers);
    let exact = evidence.is_some_and(Evidence::is_exact);
    // A compressed body cannot be inspected, and servers inflate it before parsing
    // (Express' `express.json()` does by default): MCP must arrive as plain JSON.
    // Every Content-Encoding header counts (a server may join them), `identity` alone does not.
    if let Some(encoding) = super::scope::content_coding(&parts.headers).filter(|_| json_post || exact) {
        let why = format!("request body with Content-Encoding `{}` toward an MCP server (not inspectable)", clip(&encoding));
        if scope.enforce_uninspectable(&shared) {
            return scope.refuse(&shared, StatusCode::UNSUPPORTED_MEDIA_TYPE, why.clone(), &format!("mcpwatch: {why}; MCP requires an unencoded application/json body"));
        }
        scope.alert_forwarded(&shared, format!("{why}; forwarded uninspected (not enforce mode)"));
        return forward_incoming(&up, Request::from_parts(parts, body::incoming(body))).await;
    }
    // JSON in another character set than UTF-8: servers decode it first (Express takes
    // `charset=utf-7`), so what mcpwatch would judge is not what they run.
    if let Some(charset) = super::scope::foreign_charset(&parts.headers).filter(|_| is_json(&parts.headers) || exact) {
        let why = format!("request body in charset `{}` toward an MCP server (judged as UTF-8, decoded otherwise by the server)", clip(&charset));
        if scope.enforce_uninspectable(&shared) {
            return scope.refuse(&shared, StatusCode::UNSUPPORTED_MEDIA_TYPE, why.clone(), &format!("mcpwatch: {why}; MCP requires UTF-8 JSON"));
        }
        scope.alert_forwarded(&shared, format!("{why}; forwarded uninspected (not enforce mode)"));
        return forward_incoming(&up, Request::from_parts(parts, body::incoming(body))).await;
    }
    // JSON, or toward an MCP endpoint: read it all. Otherwise stop at the first byte
    // that cannot begin JSON (uploads and forms stream on undelayed).
    let stop_early = !(json_post || exact);
    // Held until this request's answer head is back: the body's bytes live that long.
    let mut lease = shared.bodies.lease(scope.ctx.origin.process.as_deref());
    match body::collect_with(body, limits.max_body_bytes, limits.body_timeout, stop_early, Some(&mut lease)).await {
        Collected::Complete(bytes) => complete_body(shared, scope, up, parts, (bytes, lease), &content_type, evidence).await,
        Collected::OverBudget { read, json_like } => {
            // Fails closed whatever the mode: the alternative is a daemon that memory
            // pressure kills (`bodies`). A flood, not a judgement of this call.
            let msg = format!(
                "mcpwatch: too many request bodies held for inspection (limits.max_buffered_body_bytes = {} bytes, daemon-wide; one user may hold half); retry later",
                limits.max_buffered_body_bytes
            );
            tracing::warn!(peer = %scope.ctx.peer, read, "{msg}");
            if exact || json_post || json_like {
                scope.record_invalid(&shared, read as u64, &msg, CallStatus::TransportError { reason: "503 body budget spent".into() });
            }
            let mut resp = local_response(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{msg}\n"));
            resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            resp
        }
        Collected::NotJson(rest) => {
            if evidence.is_some()
                && let Some(refused) = guard_host(&shared, &scope, &parts)
            {
                return refused;
            }
            forward_incoming(&up, Request::from_parts(parts, rest)).await
        }
        Collected::TooLarge { rest, json_like } => {
            let msg = format!("mcpwatch: request body exceeds the inspection limit of {} bytes (limits.max_body_bytes)", limits.max_body_bytes);
            if exact {
                scope.record_invalid(&shared, 0, &msg, CallStatus::TransportError { reason: "413 request too large".into() });
                return rpc_error_response(StatusCode::PAYLOAD_TOO_LARGE, None, jsonrpc::INVALID_REQUEST, &msg);
            }
            if json_like || json_post {
                // It may be an MCP message padded past the limit toward a server
                // mcpwatch has not seen: not inspectable, so not forwarded in enforce.
                let alert = format!("request body larger than limits.max_body_bytes ({} bytes) that may be JSON, toward a server not known as MCP", limits.max_body_bytes);
                if scope.enforce_uninspectable(&shared) {
                    return scope.refuse(&shared, StatusCode::PAYLOAD_TOO_LARGE, alert, &msg);
                }
                scope.alert_forwarded(&shared, format!("{alert}; forwarded uninspected (not enforce mode)"));
            }
            if evidence.is_some()
                && let Some(refused) = guard_host(&shared, &scope, &parts)
            {
                return refused;
            }
            forward_incoming(&up, Request::from_parts(parts, rest)).await
        }
        Collected::Truncated { partial, error } => {
            let msg = format!("mcpwatch: request body ended early: {error}");
            if exact || partial.first().is_some_and(|b| *b == b'{' || *b == b'[') {
                scope.record_invalid(&shared, partial.len() as u64, &msg, CallStatus::TransportError { reason: "client body truncated".into() });
            }
            local_response(StatusCode::BAD_REQUEST, "text/plain", msg)
        }
        Collected::TimedOut { partial } => {
            let msg = format!("mcpwatch: request body not received within {:?}", limits.body_timeout);
            if exact {
                scope.record_invalid(&shared, partial.len() as u64, &msg, CallStatus::TransportError { reason: "client body timeout".into() });
            }
            local_response(StatusCode::REQUEST_TIMEOUT, "text/plain", msg)
        }
    }
}

/// A complete request body, read within the limit.
async fn complete_body(
    shared: Arc<Shared>,
    scope: Scope,
    up: SharedUpstream,
    parts: Parts,
    (bytes, lease): (Bytes, Lease),
    content_type: &str,
    evidence: Option<Evidence>,
) -> Response<Body> {
    if parts.method == Method::POST && is_json(&parts.headers) {
        return post(shared, scope, up, parts, (bytes, lease), None).await;
    }
    let shape = integrity::body_shape(&bytes);
    let disguised = shape.is_mcp() || (shape == BodyShape::JsonRpc && evidence.is_some());
    if disguised {
        // A browser page can POST text/plain cross-origin without a preflight: an MCP
        // message in such a body is a CSRF attempt against a local server (any mode).
        if parts.method == Method::POST && super::auth::is_cors_simple(content_type) {
            let origin = parts.headers.get(http::header::ORIGIN).and_then(|v| v.to_str().ok()).unwrap_or("(none)");
            let msg = format!("mcpwatch: MCP message with Content-Type `{content_type}` from origin {origin} refused (cross-site request forgery); MCP requires application/json");
            tracing::warn!(peer = %scope.ctx.peer, "{msg}");
            let mut rec = scope.record(&shared, MessageKind::Invalid, C2S, None, bytes.len() as u64);
            rec.alerts.push(format!("CSRF attempt: MCP message sent as {content_type} from origin {origin}"));
            write_closed(&shared, rec, CallStatus::TransportError { reason: "415 unsupported media type (CSRF)".into() });
            return local_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, "text/plain", format!("{msg}\n"));
        }
        let (status, why) = if parts.method == Method::POST {
            let ct = if content_type.is_empty() { "(none)" } else { content_type };
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("MCP message sent with Content-Type {ct}, not application/json"))
        } else {
            (StatusCode::METHOD_NOT_ALLOWED, format!("MCP message sent with HTTP {}, not POST", parts.method))
        };
        if scope.enforce(&shared) {
            return scope.refuse(&shared, status, why.clone(), &format!("mcpwatch: {why}; not forwarded"));
        }
        return post(shared, scope, up, parts, (bytes, lease), Some(why)).await;
    }
    if parts.method == Method::POST && evidence.is_some_and(Evidence::is_seen_endpoint) {
        let ct = if content_type.is_empty() { "(none)" } else { content_type };
        let why = format!("body that is not a JSON-RPC message (Content-Type {ct}) toward a known MCP endpoint");
        if scope.enforce(&shared) {
            return scope.refuse(&shared, StatusCode::UNSUPPORTED_MEDIA_TYPE, why.clone(), &format!("mcpwatch: {why}; not forwarded"));
        }
        scope.alert_forwarded(&shared, format!("{why}; forwarded uninspected (not enforce mode)"));
    }
    if evidence.is_some()
        && let Some(refused) = guard_host(&shared, &scope, &parts)
    {
        return refused;
    }
    forward_incoming(&up, Request::from_parts(parts, body::full(bytes))).await
}

async fn forward_incoming(up: &SharedUpstream, req: Request<Body>) -> Response<Body> {
    forward(up, req).await.map_or_else(gateway_error, |r| r.map(body::incoming))
}

/// Refuse (enforce) or alert on a request whose Host/Origin does not fit its real
/// destination. Returns the refusal, or `None` to go on.
fn guard_host(shared: &Shared, scope: &Scope, parts: &Parts) -> Option<Response<Body>> {
    let header = |n: http::header::HeaderName| parts.headers.get(n).and_then(|v| v.to_str().ok());
    let fit = super::auth::host_fit(scope.ctx.origin.dst.ip(), header(HOST), header(http::header::ORIGIN), super::auth::local_names());
    if fit == HostFit::Fits {
        return None;
    }
    tracing::warn!(peer = %scope.ctx.peer, dst = %scope.ctx.origin.dst, "{fit}");
    let alert = format!("{fit}: {} {}", parts.method, clip(&scope.path_and_query));
    if scope.enforce(shared) {
        return Some(scope.refuse(shared, StatusCode::FORBIDDEN, alert, &format!("mcpwatch: {fit}; refused")));
    }
    scope.alert_forwarded(shared, format!("{alert}; forwarded (not enforce mode)"));
    None
}

/// A request presenting a session id that another process opened: refused in enforce
/// mode (403), alerted otherwise. Sessions mcpwatch did not see opened are not judged.
/// Ids are compared as servers look them up ([`crate::session::session_key`]), and a
/// message URL naming two different legacy sessions is refused the same way: the daemon
/// and the server could each take another one.
fn check_session_owner(shared: &Shared, scope: &Scope) -> Option<Response<Body>> {
    let params = crate::session::session_params(&scope.path_and_query);
    if params.len() > 1 {
        let alert = format!("the message URL names {} different legacy sessions (session confusion)", params.len());
        tracing::warn!(peer = %scope.ctx.peer, "{alert}");
        if scope.enforce(shared) {
            return Some(scope.refuse(shared, StatusCode::BAD_REQUEST, alert, "mcpwatch: more than one session id in the request; refused"));
        }
        scope.alert_forwarded(shared, format!("{alert}; forwarded (not enforce mode)"));
    }
    let me = scope.ctx.owner()?;
    let dst = scope.ctx.dst_key();
    // Mcp-Session-Id, the legacy route's session, and every `sessionId` of the URL (one
    // sent with another Host finds no route, but its owner is still known).
    for session in scope.session_id.iter().chain(params.iter()) {
        let Some(owner) = shared.sessions.session_owner(dst, session) else { continue };
        if owner.same_process(me) {
            continue;
        }
        let alert = format!("session {} was opened by {} but presented by {} (session hijack)", clip(session), owner.label(), me.label());
        tracing::warn!(peer = %scope.ctx.peer, "{alert}");
        if scope.enforce(shared) {
            return Some(scope.refuse(shared, StatusCode::FORBIDDEN, alert, "mcpwatch: this MCP session belongs to another process; refused"));
        }
        scope.alert_forwarded(shared, format!("{alert}; forwarded (not enforce mode)"));
        return None;
    }
    None
}

/// Validate OAuth metadata before the client sees it; unsafe metadata becomes a 502.
async fn check_oauth_metadata(shared: &Shared, scope: &Scope, resp: Response<Incoming>) -> Response<Body> {
    if let Some(coding) = super::scope::content_coding(resp.headers()) {
        let mut rec = scope.record(shared, MessageKind::Invalid, "server->client", None, 0);
        rec.alerts.push(format!("OAuth metadata sent with Content-Encoding `{coding}` (not asked for, cannot be checked) dropped"));
        write_closed(shared, rec, CallStatus::TransportError { reason: "502 OAuth metadata not inspectable".into() });
        return local_response(StatusCode::BAD_GATEWAY, "text/plain", "mcpwatch: the server's OAuth metadata is compressed and cannot be checked; not delivered\n");
    }
    let (parts, b) = resp.into_parts();
    let limits = &shared.config.limits;
    let bytes = match body::collect(b, limits.max_body_bytes, limits.body_timeout).await {
        Collected::Complete(bytes) => bytes,
        Collected::TooLarge { rest, .. } | Collected::NotJson(rest) => return Response::from_parts(parts, rest),
        // (No lease here: a server's answer is not taken from the request-body budget.)
        Collected::Truncated { .. } | Collected::TimedOut { .. } | Collected::OverBudget { .. } => {
            return local_response(StatusCode::BAD_GATEWAY, "text/plain", "mcpwatch: OAuth metadata response incomplete\n");
        }
    };
    let problems = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(doc) => super::auth::metadata_problems(&doc),
        Err(_) => Vec::new(), // not JSON: nothing a client would follow
    };
    if problems.is_empty() {
        return Response::from_parts(parts, body::full(bytes));
    }
    let summary = problems.join("; ");
    tracing::warn!(endpoint = %scope.endpoint, path = %scope.path, "unsafe OAuth metadata dropped: {summary}");
    let mut rec = scope.record(shared, MessageKind::Invalid, "server->client", None, bytes.len() as u64);
    rec.alerts.push(format!("unsafe OAuth metadata from the server dropped: {summary}"));
    write_closed(shared, rec, CallStatus::TransportError { reason: "502 unsafe OAuth metadata".into() });
    // The client learns which fields, not their (hostile) values; those are in the audit.
    let fields: Vec<&str> = problems.iter().filter_map(|p| p.split(':').next()).collect();
    local_response(
        StatusCode::BAD_GATEWAY,
        "text/plain",
        format!("mcpwatch: the server's OAuth metadata is unsafe and was not delivered (fields: {}; details in `mcpwatch audit`)\n", fields.join(", ")),
    )
}

/// A client POST with a complete JSON body, through the stages of an exchange:
/// parse → admit → govern → commit → forward → observe. Each stage is a function with
/// typed inputs and outputs; every path to the server, held calls included, passes
/// [`record::commit`] first.
///
/// `disguised`: the body is MCP but arrived without `application/json` or by another
/// method than POST (audit and warn modes govern it; the reason becomes an alert).
/// `lease`: the body's share of the daemon-wide budget (`bodies`), held as long as the
/// body or its parsed form is: to the end here, or by a held call's own task.
async fn post(shared: Arc<Shared>, scope: Scope, up: SharedUpstream, mut parts: Parts, (bytes, lease): (Bytes, Lease), disguised: Option<String>) -> Response<Body> {
    // Parse.
    let parsed = jsonrpc::parse_body(&bytes);
    if !is_mcp_body(&shared, &scope, &parts, &parsed, &bytes, disguised.is_some()) {
        // JSON, but not MCP: not ours to record.
        if scope.evidence(&shared, &parts.headers).is_some()
            && let Some(refused) = guard_host(&shared, &scope, &parts)
        {
            return refused;
        }
        let req = Request::from_parts(parts, body::full(bytes));
        return forward(&up, req).await.map_or_else(gateway_error, |r| r.map(body::incoming));
    }
    // Its answer is read: asked for uncompressed (see `scope::ask_identity`).
    super::scope::ask_identity(&mut parts.headers);
    // Admit.
    if let Err(refused) = admit(&shared, &scope, &parts, &parsed, bytes.len() as u64) {
        return refused;
    }
    // A client that connects, sends its call and exits (or execs another program) before
    // it is read from `/proc` would be judged as nobody (no agent's rules) or as what it
    // became: toward an enforced server its calls are refused; elsewhere they go on,
    // alerted.
    if let Some(why) = scope.ctx.origin.unverified {
        if scope.enforce(&shared) {
            return scope.refuse(&shared, StatusCode::FORBIDDEN, format!("identity unverified: {why}"), &format!("mcpwatch: {why}; the call was not forwarded"));
        }
        scope.alert_forwarded(&shared, format!("identity unverified: {why}; forwarded (not enforce mode)"));
    }
    // Govern.
    let gov = shared.governance.current();
    register(&shared, &gov, &scope);
    let batch = matches!(parsed, Parsed::Batch(_));
    // The parsed messages move on to the govern stage (no copy of their params).
    let mut messages: Vec<Result<Message, String>> = match parsed {
        Parsed::Single(m) => vec![Ok(m)],
        Parsed::Batch(items) => items.into_iter().map(|r| r.map_err(|e| e.to_string())).collect(),
        Parsed::Invalid(e) => vec![Err(e.to_string())],
    };
    let input = BatchInput { parts: &parts, bytes: &bytes, batch, disguised: disguised.as_deref() };
    let mut gb = match govern_batch(&shared, &scope, &gov, &input, &mut messages).await {
        Governing::Done(gb) => gb,
        Governing::Streamed(held) => {
            let StreamedHold { msg, pending, flight, audit_failed, modified } = *held;
            // Redacted arguments are re-serialised from the message; otherwise the
            // client's exact bytes go upstream.
            let body = if modified { Bytes::from(serde_json::to_vec(&msg.to_value()).unwrap_or_default()) } else { bytes.clone() };
            return streamed_hold(shared.clone(), scope.clone(), up.clone(), gov.clone(), parts, msg, (body, lease), (pending, flight), audit_failed);
        }
    };
    // Commit: what is about to be forwarded is on disk first (or failure_mode allows otherwise).
    if record::commit(&shared, !gb.pending.is_empty(), gb.audit_failed, || scope.enforce(&shared)).await.is_err() {
        for (_, p) in gb.pending {
            finish(&shared, p, CallStatus::TransportError { reason: "not forwarded: audit write failed (fail-closed)".into() }, None, 0);
        }
        return rpc_error_response(StatusCode::SERVICE_UNAVAILABLE, single_id(&messages, batch), jsonrpc::INTERNAL_ERROR, record::UNAUDITED_REFUSAL);
    }
    // A batch waits for its held calls inline, and the commit waits for the disk: what
    // was judged then by the policy in force may be denied by one reloaded meanwhile (or
    // between judging and holding a call). Checked after the last wait: refused, to be
    // sent again.
    if !gb.pending.is_empty() && !shared.governance.is_current(&gov) {
        for (_, p) in gb.pending {
            finish(&shared, p, CallStatus::TransportError { reason: format!("not forwarded: {RELOADED_WHILE_HELD}") }, None, 0);
        }
        return rpc_error_response(StatusCode::SERVICE_UNAVAILABLE, single_id(&messages, batch), jsonrpc::INTERNAL_ERROR, RELOADED_WHILE_HELD);
    }
    // Nothing left to send: answer the client ourselves.
    if gb.forwarded.is_empty() && !gb.refusals.is_empty() {
        let body = if input.batch { serde_json::Value::Array(gb.refusals) } else { gb.refusals.pop().unwrap_or_default() };
        return refusal_response(&parts.headers, scope.legacy, &body, gb.retry_after, input.batch);
    }
    let out_bytes = if gb.modified {
        // Only now are the forwarded messages turned back into JSON (redacted, or with
        // the refused ones left out); an unchanged body goes as the client's bytes.
        let mut values = gb.forwarded.iter().filter_map(|&i| messages.get(i)?.as_ref().ok().map(Message::to_value));
        let v = if input.batch { serde_json::Value::Array(values.collect()) } else { values.next().unwrap_or_default() };
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    } else {
        bytes
    };
    // The parsed form (a JSON body parsed grows several times its size) is not needed
    // while the server works: only the bytes that go up.
    drop(messages);
    // Forward, then observe the response.
    let resp = forward_and_observe(shared, scope, gov, up, parts, out_bytes, gb.pending, gb.refusals).await;
    drop(lease);
    resp
}

/// Whether a POSTed JSON body is MCP (and so governed), not merely JSON.
fn is_mcp_body(shared: &Shared, scope: &Scope, parts: &Parts, parsed: &Parsed, bytes: &[u8], disguised: bool) -> bool {
    let mcp = |m: &Message| m.method().is_some_and(is_mcp_method);
    let any_mcp_method = match parsed {
        Parsed::Single(m) => mcp(m),
        Parsed::Batch(items) => items.iter().any(|r| r.as_ref().is_ok_and(mcp)),
        Parsed::Invalid(_) => false,
    };
    let evidence = scope.evidence(shared, &parts.headers);
    any_mcp_method
        || disguised
        || evidence.is_some_and(Evidence::is_exact)
        // Invalid for mcpwatch but MCP to a lenient server (no `jsonrpc` member, UTF-16…):
        // refused by the envelope check rather than forwarded as "not MCP".
        || (matches!(parsed, Parsed::Invalid(_)) && integrity::body_shape(bytes) == BodyShape::McpShaped)
        || (evidence.is_some() && !matches!(parsed, Parsed::Invalid(_)))
}

/// The admit stage: envelope, batch and routing-header rules (what fails them is
/// answered here per the spec and never reaches the server: no parsed-vs-forwarded
/// disagreement), token audience, and where the request came from (Host/Origin).
fn admit(shared: &Shared, scope: &Scope, parts: &Parts, parsed: &Parsed, size: u64) -> Result<(), Response<Body>> {
    let signals = mcpwatch_mcp::HeaderSignals::from_lookup(|n| parts.headers.get(n).and_then(|v| v.to_str().ok()));
    let known = scope.protocol_version.as_deref().map(mcpwatch_mcp::Era::for_version);
    if let Err(rej) = mcpwatch_mcp::session::check_request(&signals, parsed, known.as_ref()) {
        Counters::inc(&shared.counters.mcp_messages);
        let (kind, msg) = match parsed {
            Parsed::Single(m) if m.id().is_some() => (MessageKind::Request, Some(m)),
            Parsed::Single(m) => (MessageKind::Notification, Some(m)),
            _ => (MessageKind::Invalid, None),
        };
        let mut rec = scope.record(shared, kind, C2S, msg, size);
        rec.notes.push(format!("rejected by mcpwatch, not forwarded: {}", rej.message));
        write_closed(shared, rec, CallStatus::JsonrpcError { code: rej.code, message: rej.message.clone() });
        let status = StatusCode::from_u16(rej.http_status).unwrap_or(StatusCode::BAD_REQUEST);
        return Err(local_response(status, "application/json", serde_json::to_vec(&rej.error_response()).unwrap_or_default()));
    }

    // A token minted for another service must not be replayed to this one.
    if let Some(why) = parts.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|a| super::auth::audience_mismatch(a, &scope.target().host)) {
        Counters::inc(&shared.counters.mcp_messages);
        let mut rec = scope.record(shared, MessageKind::Request, C2S, match parsed { Parsed::Single(m) => Some(m), _ => None }, size);
        rec.alerts.push(format!("token passthrough refused: {why}"));
        write_closed(shared, rec, CallStatus::TransportError { reason: "401 token audience mismatch".into() });
        let mut resp = local_response(StatusCode::UNAUTHORIZED, "text/plain", format!("mcpwatch: {why}; not forwarded\n"));
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer error=\"invalid_token\", error_description=\"token audience does not match this server\""),
        );
        return Err(resp);
    }

    // Refusals above answer anyway; this one is about where the request came from.
    match guard_host(shared, scope, parts) {
        Some(refused) => Err(refused),
        None => Ok(()),
    }
}

/// The server's registry entry and status into the inventory.
fn register(shared: &Shared, gov: &Loaded, scope: &Scope) {
    let target = scope.target();
    shared.inventory.set_registration(&scope.endpoint, gov.policy.server_for(&target.as_policy()));
}

/// What the govern stage reads of one POST.
struct BatchInput<'a> {
    parts: &'a Parts,
    bytes: &'a Bytes,
    batch: bool,
    disguised: Option<&'a str>,
}

/// One POST's messages after the govern stage.
#[derive(Default)]
struct GovernedBatch {
    /// Records of what goes upstream (and of unparseable messages), keyed for their answers.
    pending: Vec<(PendingKey, Pending)>,
    /// Which of the POST's messages go upstream (their indices), for re-serialising the
    /// body when it changed.
    forwarded: Vec<usize>,
    /// mcpwatch's own answers to refused requests.
    refusals: Vec<serde_json::Value>,
    /// The longest rate-limit wait among the refusals.
    retry_after: Option<u64>,
    /// The body changed (redaction or refusals): re-serialise `forwarded`.
    modified: bool,
    /// A record could not be written.
    audit_failed: bool,
}

/// A single held call whose client asked for progress: answered on an SSE stream.
struct StreamedHold {
    msg: Message,
    pending: Pending,
    /// Its id's in-flight mark, taken before the hold.
    flight: Option<Arc<Flight>>,
    audit_failed: bool,
    modified: bool,
}

enum Governing {
    Done(GovernedBatch),
    Streamed(Box<StreamedHold>),
}

/// The govern stage for every message of a POST: record each, judge requests
/// ([`govern::request`]), wait for a human on held calls ([`govern::hold`]).
///
/// Redaction rewrites `messages` in place; `GovernedBatch::forwarded` names the ones
/// that go upstream.
async fn govern_batch(shared: &Arc<Shared>, scope: &Scope, gov: &Arc<Loaded>, input: &BatchInput<'_>, messages: &mut [Result<Message, String>]) -> Governing {
    let target = scope.target();
    let flow_session = scope.flow_session();
    let site = scope.site(target, flow_session);
    let n = messages.len().max(1);
    let per_message_bytes = input.bytes.len() as u64 / n as u64;
    // Sized to the batch (nearly always one message): a `Vec` grown by its first push
    // takes room for four, and four pending records are ~3.5 KiB; one is under 1 KiB.
    let mut gb = GovernedBatch { pending: Vec::with_capacity(n), forwarded: Vec::with_capacity(n), ..GovernedBatch::default() };
    let now = Instant::now();
    // The request ids of this batch so far (empty for a single message).
    let mut batch_ids: Vec<jsonrpc::IdKey> = Vec::new();
    for (index, m) in messages.iter_mut().enumerate() {
        Counters::inc(&shared.counters.mcp_messages);
        match m {
            Ok(msg @ (Message::Request { .. } | Message::Notification { .. })) => {
                let kind = if msg.id().is_some() { MessageKind::Request } else { MessageKind::Notification };
                let mut rec = scope.record(shared, kind, C2S, Some(msg), per_message_bytes);
                if input.batch {
                    rec.notes.push(format!("batch of {n}"));
                }
                if let Some(why) = input.disguised {
                    rec.alerts.push(why.to_string());
                }
                if msg.method() == Some("initialize")
                    && let Some(v) = msg.params().and_then(|p| p.get("protocolVersion")).and_then(|v| v.as_str())
                {
                    rec.notes.push(format!("client requested protocol {v}"));
                }
                let name = rec.name.clone();
                shared.inventory.saw_message(&Sighting { dst: &rec.dst, ..scope.sighting(msg.method(), name.as_deref()) });
                // Answers are matched to calls by id. A second request under an id still
                // pending would take the first one's answer, and the first one's result
                // would be judged as the second's (a `tools/list` is not scanned: a
                // secret passes; a harmless tool's label: taint laundered). Refused, the
                // first keeps its id: over legacy SSE while it is parked; in a Streamable
                // HTTP session once it was forwarded at all (MCP forbids reusing a
                // request id within a session; the TypeScript SDK re-points a reused id
                // to the newer stream); twice in one batch, always.
                let tracked = scope.legacy || scope.session_id.is_some();
                let id_key = if kind == MessageKind::Request { msg.id().map(|id| id.key()) } else { None };
                // The id is claimed (checked and marked in flight in one step: two requests
                // racing with one id never both pass) and in use from here on, while a human
                // decides on a held call too: a request reusing it meanwhile is refused (it
                // would be forwarded first, and the held call's answer later taken for it).
                let mut flight = None;
                let reused = match &id_key {
                    None => false,
                    Some(id) => {
                        let in_batch = input.batch && batch_ids.contains(id);
                        if input.batch {
                            batch_ids.push(id.clone());
                        }
                        if in_batch {
                            true
                        } else if tracked {
                            flight = shared.sessions.claim(&scope.id_space(), id, scope.legacy);
                            flight.is_none()
                        } else {
                            false
                        }
                    }
                };
                let (fate, held) = if reused {
                    let message = "mcpwatch: this request id was already used in this session (or this batch), and answers are matched to calls by id; refused".to_string();
                    rec.alerts.push("request id reused in the session or batch (an earlier call's answer could be taken for this one's)".into());
                    (Fate::Refuse { code: jsonrpc::INVALID_REQUEST, message, data: serde_json::json!({ "mcpwatch": "id in use" }), retry_after_ms: None }, false)
                } else if kind == MessageKind::Request {
                    let g = govern::request(Judge::of(shared, gov), &site, msg, &mut rec);
                    gb.modified |= g.modified;
                    (g.fate, g.held)
                } else {
                    match govern::notification(Judge::of(shared, gov), &site, &mut rec, msg) {
                        govern::Noted::Blocked(message) => (Fate::Refuse { code: govern::CODE_CONTENT_BLOCKED, message, data: serde_json::json!({ "mcpwatch": "content blocked" }), retry_after_ms: None }, false),
                        noted => {
                            gb.modified |= noted == govern::Noted::Redacted;
                            (Fate::Forward, false)
                        }
                    }
                };
                gb.audit_failed |= shared.begin_record(&rec).is_err();
                // A client that asked for progress on a single call gets an SSE stream at
                // once: progress notifications while a human decides, then the answer.
                if held && !input.batch && accepts_sse(&input.parts.headers) && progress_token(msg).is_some() {
                    let pending = Pending { record: rec, started: now, first_page: false };
                    let msg = std::mem::replace(msg, Message::Notification { method: String::new(), params: None });
                    return Governing::Streamed(Box::new(StreamedHold { msg, pending, flight, audit_failed: gb.audit_failed, modified: gb.modified }));
                }
                // A held call waits here for a human; the record is already written.
                let fate = match fate {
                    Fate::Forward if held => {
                        let fate = govern::hold(Judge::of(shared, gov), &site, msg, &mut rec).await;
                        if matches!(fate, Fate::Forward) {
                            shared.complete_record(&rec);
                        }
                        fate
                    }
                    fate => fate,
                };
                match fate {
                    Fate::Forward => {
                        let first_page = msg.method() == Some("tools/list") && msg.params().and_then(|p| p.get("cursor")).is_none();
                        let key = match msg.id() {
                            Some(id) => {
                                let id = id.key();
                                shared.sessions.note_id(&scope.id_space(), &id, IdFate::Forwarded);
                                PendingKey::Id(id, flight.take())
                            }
                            None => PendingKey::Notification(rec.id.clone()),
                        };
                        gb.forwarded.push(index);
                        gb.pending.push((key, Pending { record: rec, started: now, first_page }));
                    }
                    Fate::Refuse { code, message, data, retry_after_ms } => {
                        gb.modified = true;
                        gb.retry_after = gb.retry_after.max(retry_after_ms);
                        rec.status = CallStatus::JsonrpcError { code, message: message.clone() };
                        rec.duration_us = Some(now.elapsed().as_micros() as u64);
                        rec.notes.push("answered by mcpwatch; not forwarded".into());
                        shared.complete_record(&rec);
                        if let Some(id) = msg.id() {
                            shared.sessions.note_id(&scope.id_space(), &id.key(), IdFate::Refused);
                        }
                        gb.refusals.push(jsonrpc::error_response(msg.id(), code, &message, Some(data)));
                    }
                }
            }
            Ok(msg) => {
                // The client answers a request the server sent on an SSE stream. The
                // answer goes to the server: inspected as arguments are (redacted or
                // blocked in enforce mode: the body is then re-serialised), and its
                // record's hash is of what leaves.
                match msg.id().and_then(|id| shared.sessions.take(&scope.conversation, Asker::Server, &id.key())) {
                    Some(mut p) => {
                        gb.modified |= govern::answer(Judge::of(shared, gov), &site, &mut p.record, msg);
                        complete_with(shared, p, msg, input.bytes.len() as u64);
                    }
                    None => {
                        // An answer to nothing the server asked on a stream mcpwatch
                        // watched: recorded like any message that leaves (it carries
                        // data to the server), with its keyed hash and an alert.
                        let mut rec = scope.record(shared, MessageKind::Invalid, C2S, None, per_message_bytes);
                        gb.modified |= govern::unasked_answer(Judge::of(shared, gov), &site, &mut rec, msg);
                        gb.audit_failed |= shared.begin_record(&rec).is_err();
                        gb.pending.push((PendingKey::Invalid(rec.id.clone()), Pending { record: rec, started: now, first_page: false }));
                    }
                }
                gb.forwarded.push(index);
            }
            Err(why) => {
                let mut rec = scope.record(shared, MessageKind::Invalid, C2S, None, per_message_bytes);
                rec.notes.push(why.clone());
                gb.audit_failed |= shared.begin_record(&rec).is_err();
                gb.pending.push((PendingKey::Invalid(rec.id.clone()), Pending { record: rec, started: now, first_page: false }));
            }
        }
    }
    Governing::Done(gb)
}

/// What a client is told when its calls were judged under a policy reloaded before they
/// could be forwarded.
const RELOADED_WHILE_HELD: &str = "mcpwatch: the policy was reloaded while this request was being judged or waited for approval; send it again to be judged by the new policy";

/// The forward stage (and the hand-over to observe): send the committed body upstream
/// and observe what comes back. Legacy HTTP+SSE answers on the GET stream, possibly
/// before this POST's 202 is back: requests are parked before forwarding so the answer
/// always finds them.
#[allow(clippy::too_many_arguments)]
async fn forward_and_observe(
    shared: Arc<Shared>,
    scope: Scope,
    gov: Arc<Loaded>,
    up: SharedUpstream,
    mut parts: Parts,
    out_bytes: Bytes,
    mut pending: Vec<(PendingKey, Pending)>,
    refusals: Vec<serde_json::Value>,
) -> Response<Body> {
    let mut parked: Vec<jsonrpc::IdKey> = Vec::new();
    let mut unparkable = Vec::new();
    if scope.legacy {
        let (requests, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(k, _)| matches!(k, PendingKey::Id(..)));
        pending = rest;
        for (key, p) in requests {
            if let PendingKey::Id(id, _) = key {
                match shared.sessions.park_client(&scope.conversation, &id, p) {
                    Ok(replaced) => {
                        for e in replaced {
                            finish(&shared, e, CallStatus::TransportError { reason: "replaced by a call with the same id".into() }, None, 0);
                        }
                        parked.push(id);
                    }
                    Err((p, why)) => unparkable.push((*p, why)),
                }
            }
        }
    }
    let unpark = |why: CallStatus| {
        for k in &parked {
            if let Some(p) = shared.sessions.take(&scope.conversation, Asker::Client, k) {
                finish(&shared, p, why.clone(), None, 0);
            }
        }
    };
    // A call could not be parked (the table is full, or the stream it would be answered
    // on has ended): nothing of this POST is forwarded.
    if let Some(&(_, cause)) = unparkable.first() {
        let (reason, answer) = match cause {
            Unparked::Full => (
                "not forwarded: too many pending calls (limits.max_pending_calls, or this user's half of it)",
                "mcpwatch: too many calls are waiting for their answers (limits.max_pending_calls; one user may hold half); try again later\n",
            ),
            Unparked::StreamGone => (
                "not forwarded: the SSE stream its answer would come on has ended",
                "mcpwatch: the SSE stream of this session has ended; its answer could not be delivered, so the message was not forwarded\n",
            ),
        };
        let why = CallStatus::TransportError { reason: reason.into() };
        unpark(why.clone());
        for p in unparkable.into_iter().map(|(p, _)| p).chain(pending.into_iter().map(|(_, p)| p)) {
            finish(&shared, p, why.clone(), None, 0);
        }
        Counters::inc(&shared.counters.refused_protocol);
        return local_response(StatusCode::SERVICE_UNAVAILABLE, "text/plain", answer);
    }
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let req = Request::from_parts(parts, body::full(out_bytes));
    let resp = match forward(&up, req).await {
        Ok(r) => r,
        Err(e) => {
            unpark(CallStatus::TransportError { reason: e.to_string() });
            for (_, p) in pending {
                finish(&shared, p, CallStatus::TransportError { reason: e.to_string() }, None, 0);
            }
            return gateway_error(e);
        }
    };
    if !resp.status().is_success() {
        unpark(http_failure(resp.status()));
    }
    let hold = shared.config.limits.max_body_bytes;
    match responses::observe(shared, scope, gov, pending, refusals, resp) {
        (resp, Delivery::Whole) => {
            let (parts, b) = resp.into_parts();
            Response::from_parts(parts, body::settle(b, hold).await)
        }
        (resp, Delivery::Streamed) => resp,
    }
}

/// `params._meta.progressToken` of a request, if the client asked for progress.
fn progress_token(msg: &Message) -> Option<serde_json::Value> {
    msg.params()?.get("_meta")?.get("progressToken").filter(|t| t.is_string() || t.is_number()).cloned()
}

/// A held call answered over SSE: `notifications/progress` every few seconds while it
/// waits for a human, then the server's answer (if approved) or mcpwatch's refusal.
#[allow(clippy::too_many_arguments)]
fn streamed_hold(
    shared: Arc<Shared>,
    scope: Scope,
    up: SharedUpstream,
    gov: Arc<Loaded>,
    parts: Parts,
    msg: Message,
    (body, lease): (Bytes, Lease),
    (mut pending, flight): (Pending, Option<Arc<Flight>>),
    audit_failed: bool,
) -> Response<Body> {
    use futures_util::StreamExt as _;
    let token = progress_token(&msg).unwrap_or_default();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let event = |v: serde_json::Value| Bytes::from(format!("event: message\ndata: {v}\n\n"));
    tokio::spawn(async move {
        // The held body's share of the budget lives as long as this task holds it.
        let _lease = lease;
        let fate = {
            let target = scope.target();
            let flow_session = scope.flow_session();
            let site = scope.site(target, flow_session);
            let held = govern::hold(Judge::of(&shared, &gov), &site, &msg, &mut pending.record);
            tokio::pin!(held);
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    fate = &mut held => break fate,
                    _ = tick.tick() => {
                        n += 1;
                        let note = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {
                            "progressToken": token, "progress": n,
                            "message": "mcpwatch: waiting for a human to approve this call (mcpwatch pending)"
                        }});
                        if tx.send(event(note)).await.is_err() {
                            // The client went away; the hold still ends by verdict or timeout.
                        }
                    }
                }
            }
        };
        // Approved under a policy that was reloaded since it was judged: judged again by
        // no one, so not forwarded (the reload withdraws calls already held; this one may
        // have been judged just before it and held just after).
        let fate = match fate {
            Fate::Forward if !shared.governance.is_current(&gov) => Fate::Refuse {
                code: jsonrpc::INTERNAL_ERROR,
                message: RELOADED_WHILE_HELD.into(),
                data: serde_json::json!({ "mcpwatch": "policy reloaded" }),
                retry_after_ms: None,
            },
            fate => fate,
        };
        match fate {
            Fate::Refuse { code, message, data, .. } => {
                pending.record.status = CallStatus::JsonrpcError { code, message: message.clone() };
                pending.record.duration_us = Some(pending.started.elapsed().as_micros() as u64);
                pending.record.notes.push("answered by mcpwatch; not forwarded".into());
                shared.complete_record(&pending.record);
                if let Some(id) = msg.id() {
                    shared.sessions.note_id(&scope.id_space(), &id.key(), IdFate::Refused);
                }
                let _ = tx.send(event(jsonrpc::error_response(msg.id(), code, &message, Some(data)))).await;
            }
            Fate::Forward => {
                // Audited before forwarded, here too: the approved call leaves only once
                // its record (with the approval) is on disk, or failure_mode says an
                // unaudited call may go.
                shared.complete_record(&pending.record);
                if record::commit(&shared, true, audit_failed, || scope.enforce(&shared)).await.is_err() {
                    finish(&shared, pending, CallStatus::TransportError { reason: "not forwarded: audit write failed (fail-closed)".into() }, None, 0);
                    let _ = tx.send(event(jsonrpc::error_response(msg.id(), jsonrpc::INTERNAL_ERROR, record::UNAUDITED_REFUSAL, None))).await;
                    return;
                }
                // A reload during the commit's wait: as before it.
                if !shared.governance.is_current(&gov) {
                    finish(&shared, pending, CallStatus::TransportError { reason: format!("not forwarded: {RELOADED_WHILE_HELD}") }, None, 0);
                    let _ = tx.send(event(jsonrpc::error_response(msg.id(), jsonrpc::INTERNAL_ERROR, RELOADED_WHILE_HELD, None))).await;
                    return;
                }
                if let Some(id) = msg.id() {
                    shared.sessions.note_id(&scope.id_space(), &id.key(), IdFate::Forwarded);
                }
                let mut parts = parts;
                parts.headers.remove(http::header::CONTENT_LENGTH);
                let key = msg.id().map_or_else(|| PendingKey::Notification(pending.record.id.clone()), |i| PendingKey::Id(i.key(), flight));
                match forward(&up, Request::from_parts(parts, body::full(body))).await {
                    Err(e) => {
                        finish(&shared, pending, CallStatus::TransportError { reason: e.to_string() }, None, 0);
                        let _ = tx.send(event(jsonrpc::error_response(msg.id(), jsonrpc::INTERNAL_ERROR, &format!("mcpwatch: {e}"), None))).await;
                    }
                    Ok(resp) => {
                        let json = is_json(resp.headers());
                        let (observed, _) = responses::observe(shared.clone(), scope, gov, vec![(key, pending)], Vec::new(), resp);
                        let mut b = observed.into_body();
                        let mut buf = Vec::new();
                        loop {
                            // A client that went away ends the upstream response too.
                            let frame = tokio::select! {
                                f = http_body_util::BodyExt::frame(&mut b) => f,
                                () = tx.closed() => break,
                            };
                            let Some(Ok(frame)) = frame else { break };
                            let Ok(data) = frame.into_data() else { continue };
                            if json {
                                buf.extend_from_slice(&data);
                            } else if tx.send(data).await.is_err() {
                                break;
                            }
                        }
                        if json && !buf.is_empty() {
                            let _ = tx.send(Bytes::from([b"event: message\ndata: ".as_slice(), &buf, b"\n\n"].concat())).await;
                        }
                    }
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, body::BoxError>(http_body::Frame::data(b)), rx)) });
    let body = http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(stream.boxed()));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(CONTENT_TYPE, http::HeaderValue::from_static("text/event-stream"));
    resp.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-cache"));
    resp
}

/// The JSON-RPC error(s) mcpwatch answers in place of the server.
fn refusal_response(req_headers: &HeaderMap, legacy: bool, body: &serde_json::Value, retry_after_ms: Option<u64>, batch: bool) -> Response<Body> {
    let text = serde_json::to_string(body).unwrap_or_default();
    let wants_json = header_has(req_headers, http::header::ACCEPT, "json") || !accepts_sse(req_headers);
    let status = match (retry_after_ms, batch) {
        (Some(_), false) => StatusCode::TOO_MANY_REQUESTS,
        // Legacy HTTP+SSE delivers answers on the GET stream; the POST itself fails.
        _ if legacy => StatusCode::FORBIDDEN,
        _ => StatusCode::OK,
    };
    let mut resp = if wants_json || legacy {
        local_response(status, "application/json", text)
    } else {
        local_response(status, "text/event-stream", format!("event: message\ndata: {text}\n\n"))
    };
    if let (Some(ms), StatusCode::TOO_MANY_REQUESTS) = (retry_after_ms, status)
        && let Ok(v) = http::HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string())
    {
        resp.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    resp
}

/// Write the record of something mcpwatch answered itself: complete at once.
pub(super) use crate::record::{complete_with, finish, write_closed};


async fn forward(up: &SharedUpstream, req: Request<Body>) -> Result<Response<Incoming>, ForwardError> {
    up.lock().await.send(req).await
}

fn gateway_error(e: ForwardError) -> Response<Body> {
    tracing::info!(error = %e, "upstream request failed");
    local_response(StatusCode::BAD_GATEWAY, "text/plain", format!("mcpwatch: {e}\n"))
}

fn rpc_error_response(status: StatusCode, id: Option<jsonrpc::Id>, code: i64, message: &str) -> Response<Body> {
    let v = jsonrpc::error_response(id.as_ref(), code, message, None);
    local_response(status, "application/json", serde_json::to_vec(&v).unwrap_or_default())
}

/// The id of a body's one request (none for a batch or an unparseable body).
fn single_id(messages: &[Result<Message, String>], batch: bool) -> Option<jsonrpc::Id> {
    match messages {
        [Ok(m)] if !batch => m.id().cloned(),
        _ => None,
    }
}

pub use mcpwatch_mcp::integrity::is_mcp_method;



#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_methods() {
        assert!(is_mcp_method("tools/call"));
        assert!(is_mcp_method("initialize"));
        assert!(is_mcp_method("server/discover"));
        assert!(!is_mcp_method("eth_call"));
    }
}
