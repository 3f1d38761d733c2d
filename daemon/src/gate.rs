//! The gate: policy, inspection, approval and audit for stdio servers run under
//! `mcpwatch wrap`.
//!
//! Why it exists: the kernel can observe a stdio pipe but not rewrite it, so enforcing on
//! a stdio server takes a process in the pipe (the wrapper). The wrapper decides nothing:
//! it asks this module about every line, and the answer comes from the same
//! `Governance`, `Inventory`, approval queue and audit store as network traffic.
//!
//! Security: the gate listens on its own socket (mode 0666, since wrapped servers run as
//! any user) that speaks only [`mcpwatch_api::gate`]; a control request is a protocol
//! error. The caller is identified by `SO_PEERCRED` (pid and uid from the kernel), and
//! the session is attributed to the wrapper's parent process (the client that launched
//! it), never to anything a message claims. Lines are bounded
//! ([`mcpwatch_api::gate::MAX_GATE_LINE`]), connections per uid and in total are
//! bounded, and each connection has at most two requests in flight (one per direction).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mcpwatch_api::gate::{GateOp, GateRequest, GateResponse, GateVerdict, MAX_GATE_LINE};
use mcpwatch_api::{AuditRecord, CallStatus, FailureMode, MessageKind, ProcessInfo};
use mcpwatch_mcp::jsonrpc::{self, Message, Parsed};
use mcpwatch_policy::Target;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::governance::Loaded;
use crate::inventory::{ServerInfoUpdate, Sighting};
use crate::govern::{self, Fate, Governed, Judge, Site};
use crate::record;
use crate::clock::now_ms;
use crate::state::{Counters, Shared};

/// Wrapped servers one uid may run at once (one gate connection each).
pub const MAX_SESSIONS_PER_UID: usize = 64;
/// Gate connections in total.
pub const MAX_SESSIONS: usize = 1024;
/// Calls of one session waiting for their answer.
const MAX_PENDING: usize = 1024;
/// Longest command line (and server key) kept.
const MAX_KEY_CHARS: usize = 240;

const C2S: &str = "client->server";
const S2C: &str = "server->client";

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("gate socket {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Bind the gate socket (0666) and publish the failure mode next to it (0644, left in
/// place at exit so a wrapper knows what to do while the daemon is down). The socket's
/// directory is made traversable by everyone (o+x, not o+r): wrapped servers run as any
/// user, while the control socket beside it keeps its own 0660 mode.
pub async fn bind(path: &Path, mode: FailureMode) -> Result<UnixListener, GateError> {
    let p = path.display().to_string();
    let io = |source| GateError::Io { path: p.clone(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
        let perms = std::fs::metadata(dir).map_err(io)?.permissions();
        if perms.mode() & 0o001 == 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode((perms.mode() & 0o7777) | 0o001)).map_err(io)?;
        }
    }
    let mode_file = mcpwatch_api::gate::failure_mode_file_for(path);
    std::fs::write(&mode_file, format!("{mode}\n")).map_err(io)?;
    std::fs::set_permissions(&mode_file, std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    if path.exists() {
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(io)?;
    Ok(listener)
}

/// Connections open per uid, and in total.
#[derive(Default)]
struct Budget {
    per_uid: HashMap<u32, usize>,
    total: usize,
}

struct Slot {
    budget: Arc<Mutex<Budget>>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut b) = self.budget.lock() {
            b.total = b.total.saturating_sub(1);
            if let Some(n) = b.per_uid.get_mut(&self.uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    b.per_uid.remove(&self.uid);
                }
            }
        }
    }
}

/// Registers a connected wrapper's pid in [`Shared::gate_wrappers`] while it is connected.
struct WrapperMark {
    shared: Arc<Shared>,
    pid: u32,
}

impl WrapperMark {
    fn new(shared: Arc<Shared>, pid: u32) -> WrapperMark {
        if let Ok(mut m) = shared.gate_wrappers.lock() {
            *m.entry(pid).or_insert(0) += 1;
        }
        WrapperMark { shared, pid }
    }
}

impl Drop for WrapperMark {
    fn drop(&mut self) {
        if let Ok(mut m) = self.shared.gate_wrappers.lock()
            && let Some(n) = m.get_mut(&self.pid)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.pid);
            }
        }
    }
}

fn take_slot(budget: &Arc<Mutex<Budget>>, uid: u32) -> Option<Slot> {
    let mut b = budget.lock().ok()?;
    let n = b.per_uid.get(&uid).copied().unwrap_or(0);
    if b.total >= MAX_SESSIONS || n >= MAX_SESSIONS_PER_UID {
        return None;
    }
    b.total += 1;
    b.per_uid.insert(uid, n + 1);
    Some(Slot { budget: budget.clone(), uid })
}

pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    let budget = Arc::new(Mutex::new(Budget::default()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "gate accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "gate: no peer credentials; connection closed");
                continue;
            }
        };
        let Some(pid) = cred.pid().and_then(|p| u32::try_from(p).ok()) else { continue };
        let Some(slot) = take_slot(&budget, cred.uid()) else {
            tracing::warn!(uid = cred.uid(), "gate: too many wrapped servers for this uid; connection refused");
            continue;
        };
        let shared = shared.clone();
        let mark = WrapperMark::new(shared.clone(), pid);
        tokio::spawn(async move {
            connection(shared, stream, pid, cred.uid()).await;
            drop(mark);
            drop(slot);
        });
    }
}

/// Read one line of at most `MAX_GATE_LINE` bytes; `None` at end of stream or when too long.
async fn read_line(r: &mut BufReader<tokio::net::unix::OwnedReadHalf>, buf: &mut Vec<u8>) -> Option<Result<(), String>> {
    buf.clear();
    let mut limited = (&mut *r).take(MAX_GATE_LINE as u64 + 1);
    match limited.read_until(b'\n', buf).await {
        Ok(0) => None,
        Ok(_) if buf.len() > MAX_GATE_LINE => Some(Err(format!("gate line longer than {MAX_GATE_LINE} bytes"))),
        Ok(_) => Some(Ok(())),
        Err(_) => None,
    }
}


async fn connection(shared: Arc<Shared>, stream: UnixStream, wrapper_pid: u32, uid: u32) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<GateResponse>(4);
    let writer = tokio::spawn(async move {
        while let Some(resp) = rx.recv().await {
            let Ok(line) = mcpwatch_api::wire::encode(&resp) else { continue };
            if wr.write_all(&line).await.is_err() {
                break;
            }
        }
    });
    // At most one request per direction in flight.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(2));
    let mut session: Option<Arc<Session>> = None;
    let mut buf = Vec::new();
    while let Some(res) = read_line(&mut rd, &mut buf).await {
        let req = match res.and_then(|()| mcpwatch_api::wire::decode::<GateRequest>(&buf).map_err(|e| format!("not a gate request: {e}"))) {
            Ok(r) => r,
            Err(message) => {
                tracing::warn!(wrapper_pid, "gate: {message}; connection closed");
                let _ = tx.send(GateResponse { seq: 0, body: GateVerdict::Error { message } }).await;
                break;
            }
        };
        let seq = req.seq;
        match (req.body, &session) {
            (GateOp::Open { command }, None) => {
                let s = Arc::new(Session::open(shared.clone(), wrapper_pid, uid, command));
                let body = GateVerdict::Opened { server: s.endpoint.clone(), failure_mode: shared.config.failure_mode };
                session = Some(s);
                let _ = tx.send(GateResponse { seq, body }).await;
            }
            (op @ (GateOp::Client { .. } | GateOp::Server { .. }), Some(s)) => {
                let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
                let (s, tx) = (s.clone(), tx.clone());
                tokio::spawn(async move {
                    let body = match op {
                        GateOp::Client { line } => s.on_client(&line).await,
                        GateOp::Server { line } => s.on_server(&line),
                        GateOp::Open { .. } => GateVerdict::Error { message: "session already open".into() },
                    };
                    let _ = tx.send(GateResponse { seq, body }).await;
                    drop(permit);
                });
            }
            (_, _) => {
                let message = if session.is_some() { "session already open" } else { "first request must be `open`" };
                let _ = tx.send(GateResponse { seq, body: GateVerdict::Error { message: message.into() } }).await;
                break;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
    if let Some(s) = session {
        s.close();
    }
}

/// A call forwarded to the server, waiting for its answer.
struct Pending {
    record: AuditRecord,
    started: Instant,
    /// A `tools/list` without a cursor: its result starts the server's tool list.
    first_page: bool,
}

/// One wrapped server, as long as its wrapper is connected.
struct Session {
    shared: Arc<Shared>,
    /// Inventory key and policy target: `stdio://<kind>:<name>` of the launch.
    endpoint: String,
    /// The command line as shown (arguments redacted, clipped).
    cmdline: String,
    /// The client: the wrapper's parent process, as the kernel names it.
    process: Option<Arc<ProcessInfo>>,
    wrapper_pid: u32,
    pending: Mutex<crate::session::BoundedMap<String, Pending>>,
    /// The toxic-flow session: the client process talking to this server, named as the
    /// proxy names a session-less client, so `[[flow]]` rules judge both transports alike.
    flow_session: String,
}

impl Session {
    fn open(shared: Arc<Shared>, wrapper_pid: u32, uid: u32, command: Vec<String>) -> Session {
        use mcpwatch_intercept::process::{describe_pid, parent_of};
        let sanitize = crate::resolve::cmdline_filter(shared.clone());
        // The client is the wrapper's parent, unless that runs as another user than the
        // wrapper (an orphaned wrapper is re-parented to init or a subreaper, which
        // must not lend it root's identity): then the wrapper itself.
        let parent = parent_of(wrapper_pid).and_then(describe_pid).filter(|p| p.uid == uid);
        let process = parent.or_else(|| describe_pid(wrapper_pid).filter(|p| p.uid == uid)).map(|mut p| {
            sanitize(&mut p);
            Arc::new(p)
        });
        // The server key is the policy's identity of the launch (`stdio://npm:@scope/pkg`,
        // `stdio://script:/srv/x.py`), so `[[server]] package/command` entries and the
        // daemon's other stdio sources name it the same way. The command line itself
        // (arguments redacted by the detectors) goes into every record's note.
        let shown = shared.governance.current().inspector.redact_argv(&command);
        let mut cmdline: String = shown.join(" ").chars().take(MAX_KEY_CHARS).collect();
        if cmdline.is_empty() {
            cmdline.push_str("(no command)");
        }
        let key = match mcpwatch_policy::launch::identify(&command) {
            Some(l) => mcpwatch_policy::stdio_endpoint(&l).chars().take(MAX_KEY_CHARS).collect(),
            None => format!("stdio:{cmdline}"),
        };
        tracing::info!(server = %key, command = %cmdline, wrapper_pid, client = ?process.as_ref().map(|p| (p.pid, p.comm.clone())), "gate: wrapped stdio server opened");
        let flow_session = match &process {
            Some(p) => govern::flows::process_session(&key, p),
            None => format!("{key}#wrapper:{wrapper_pid}"),
        };
        Session { shared, endpoint: key, cmdline, process, wrapper_pid, pending: Mutex::new(crate::session::BoundedMap::new(MAX_PENDING)), flow_session }
    }

    fn target(&self) -> Target<'_> {
        Target::stdio(&self.endpoint)
    }

    /// This session as the govern stage sees it.
    fn site(&self) -> Site<'_> {
        Site { endpoint: &self.endpoint, target: self.target(), process: self.process.as_deref(), flow_session: &self.flow_session }
    }

    fn enforce(&self, gov: &Loaded) -> bool {
        Judge::of(&self.shared, gov).enforce(&self.site())
    }

    fn record(&self, kind: MessageKind, direction: &str, msg: Option<&Message>, bytes: u64) -> AuditRecord {
        AuditRecord {
            process: self.process.clone(),
            scheme: "stdio".into(),
            server: self.endpoint.clone(),
            transport: "stdio".into(),
            notes: vec![format!("enforced by mcpwatch wrap (wrapper pid {}): {}", self.wrapper_pid, self.cmdline)],
            ..record::message(&self.shared, kind, direction, msg, bytes)
        }
    }

    fn sight(&self, method: Option<&str>, name: Option<&str>) {
        self.shared.inventory.saw_message(&Sighting {
            endpoint: &self.endpoint,
            dst: "",
            transport: "stdio",
            process: self.process.as_deref(),
            method,
            name,
            now_ms: now_ms(),
        });
    }

    fn write_closed(&self, mut rec: AuditRecord, status: CallStatus) {
        rec.status = status;
        rec.duration_us = Some(0);
        let _ = self.shared.begin_record(&rec);
    }

    /// A client line: govern it; forward, rewrite, or answer it here.
    async fn on_client(&self, line: &str) -> GateVerdict {
        let shared = &self.shared;
        Counters::inc(&shared.counters.mcp_messages);
        let bytes = line.len() as u64;
        let msg = match jsonrpc::parse_body(line.as_bytes()) {
            Parsed::Single(m) => m,
            other => {
                let why = match other {
                    Parsed::Batch(_) => "JSON-RPC batches are not relayed to stdio servers by mcpwatch wrap".to_string(),
                    Parsed::Invalid(e) => format!("not a JSON-RPC message: {e}"),
                    Parsed::Single(_) => String::new(),
                };
                // In every mode, as on the network path: what mcpwatch cannot read the
                // server might read differently, so it never reaches the server.
                let mut rec = self.record(MessageKind::Invalid, C2S, None, bytes);
                rec.notes.push(why.clone());
                self.write_closed(rec, CallStatus::JsonrpcError { code: jsonrpc::INVALID_REQUEST, message: why.clone() });
                let err = jsonrpc::error_response(None, jsonrpc::INVALID_REQUEST, &format!("mcpwatch: {why}"), None);
                return GateVerdict::Answer { line: err.to_string() };
            }
        };
        match msg {
            Message::Request { .. } => self.on_request(&shared.governance.current(), msg, bytes).await,
            Message::Notification { .. } => {
                self.sight(msg.method(), None);
                self.write_closed(self.record(MessageKind::Notification, C2S, Some(&msg), bytes), CallStatus::Sent);
                GateVerdict::Forward { line: None }
            }
            // The client answers a request the server sent.
            Message::Response { .. } | Message::Error { .. } => GateVerdict::Forward { line: None },
        }
    }

    async fn on_request(&self, gov: &Arc<Loaded>, mut msg: Message, bytes: u64) -> GateVerdict {
        let shared = &self.shared;
        let mut rec = self.record(MessageKind::Request, C2S, Some(&msg), bytes);
        self.sight(msg.method(), rec.name.as_deref());
        let registry = gov.policy.server_for(&self.target());
        shared.inventory.set_registration(&self.endpoint, registry);
        let site = self.site();
        let Governed { fate, modified, held } = govern::request(Judge::of(shared, gov), &site, &mut msg, &mut rec);
        let audit_failed = shared.begin_record(&rec).is_err();
        if record::commit(shared, true, audit_failed).await.is_err() {
            return Self::unaudited(shared, &mut rec, &msg);
        }
        let fate = match fate {
            Fate::Forward if held => {
                let fate = govern::hold(Judge::of(shared, gov), &site, &msg, &mut rec).await;
                if matches!(fate, Fate::Forward) {
                    // The approval is on the record before the call goes.
                    shared.complete_record(&rec);
                    if record::commit(shared, true, false).await.is_err() {
                        return Self::unaudited(shared, &mut rec, &msg);
                    }
                }
                fate
            }
            fate => fate,
        };
        match fate {
            Fate::Forward => {
                let started = Instant::now();
                let first_page = msg.method() == Some("tools/list") && msg.params().and_then(|p| p.get("cursor")).is_none();
                if let Some(id) = msg.id() {
                    let evicted = self.pending.lock().map(|mut p| p.insert(id.to_string(), Pending { record: rec, started, first_page })).unwrap_or_default();
                    for mut e in evicted {
                        e.record.status = CallStatus::TransportError { reason: "evicted: too many pending calls".into() };
                        shared.complete_record(&e.record);
                    }
                }
                GateVerdict::Forward { line: modified.then(|| msg.to_value().to_string()) }
            }
            Fate::Refuse { code, message, data, .. } => {
                rec.status = CallStatus::JsonrpcError { code, message: message.clone() };
                rec.duration_us = Some(0);
                rec.notes.push("answered by mcpwatch; not forwarded".into());
                shared.complete_record(&rec);
                GateVerdict::Answer { line: jsonrpc::error_response(msg.id(), code, &message, Some(data)).to_string() }
            }
        }
    }

    /// The call's record could not be committed and failure_mode is closed: answer the
    /// client, forward nothing.
    fn unaudited(shared: &Shared, rec: &mut AuditRecord, msg: &Message) -> GateVerdict {
        rec.status = CallStatus::TransportError { reason: "not forwarded: audit write failed (fail-closed)".into() };
        shared.complete_record(rec);
        GateVerdict::Answer { line: jsonrpc::error_response(msg.id(), jsonrpc::INTERNAL_ERROR, record::UNAUDITED_REFUSAL, None).to_string() }
    }

    /// A server line: answers complete (and may redact) their call's record; an answer
    /// to an id the client never sent through the gate is dropped in enforce mode.
    fn on_server(&self, line: &str) -> GateVerdict {
        let shared = &self.shared;
        Counters::inc(&shared.counters.mcp_messages);
        let gov = shared.governance.current();
        let enforce = self.enforce(&gov);
        let bytes = line.len() as u64;
        let mut msg = match jsonrpc::parse_body(line.as_bytes()) {
            Parsed::Single(m) => m,
            _ => {
                let mut rec = self.record(MessageKind::Invalid, S2C, None, bytes);
                let why = "server wrote a line that is not one JSON-RPC message";
                rec.alerts.push(why.into());
                self.write_closed(rec, if enforce { CallStatus::TransportError { reason: "dropped by mcpwatch".into() } } else { CallStatus::Sent });
                return if enforce { GateVerdict::Drop { reason: why.into() } } else { GateVerdict::Forward { line: None } };
            }
        };
        match &msg {
            Message::Response { .. } | Message::Error { .. } => {
                let pending = msg.id().and_then(|id| self.pending.lock().ok().and_then(|mut p| p.remove(&id.to_string())));
                let Some(mut p) = pending else {
                    let why = "server answered an id the client never sent through mcpwatch";
                    let mut rec = self.record(MessageKind::Invalid, S2C, None, bytes);
                    rec.jsonrpc_id = msg.id().map(|i| i.to_string());
                    rec.alerts.push(why.into());
                    shared.inventory.add_alert(&self.endpoint, why.into());
                    self.write_closed(rec, if enforce { CallStatus::TransportError { reason: "dropped by mcpwatch (response integrity)".into() } } else { CallStatus::Sent });
                    return if enforce { GateVerdict::Drop { reason: why.into() } } else { GateVerdict::Forward { line: None } };
                };
                // Learned from, and recorded (status, result hash), as the server sent it.
                if let Some(result) = msg.result() {
                    self.learn(&p.record, result);
                }
                let (status, hash) = record::answer_of(shared, &msg);
                let changed = govern::result(Judge::of(shared, &gov), &self.site(), &mut p.record, p.first_page, &mut msg);
                p.record.status = status;
                p.record.result_hash = hash;
                p.record.duration_us = Some(p.started.elapsed().as_micros() as u64);
                p.record.response_bytes = bytes;
                shared.complete_record(&p.record);
                GateVerdict::Forward { line: changed.then(|| msg.to_value().to_string()) }
            }
            Message::Request { .. } | Message::Notification { .. } => {
                let kind = if msg.id().is_some() { MessageKind::Request } else { MessageKind::Notification };
                self.write_closed(self.record(kind, S2C, Some(&msg), bytes), CallStatus::Sent);
                GateVerdict::Forward { line: None }
            }
        }
    }

    /// serverInfo from `initialize` into the inventory.
    fn learn(&self, rec: &AuditRecord, result: &Value) {
        if !matches!(rec.method.as_deref(), Some("initialize" | "server/discover")) {
            return;
        }
        if let Some(info) = mcpwatch_mcp::server_info::server_info(result) {
            self.shared.inventory.set_server_info(&self.endpoint, ServerInfoUpdate {
                name: info.name,
                version: info.version,
                protocol_version: info.protocol_version,
                capabilities: info.capabilities,
            });
        }
    }

    /// The wrapper went away: calls still waiting for the server end as transport errors.
    fn close(&self) {
        let left = self.pending.lock().map(|mut p| p.drain_where(|_| true)).unwrap_or_default();
        for mut p in left {
            p.record.status = CallStatus::TransportError { reason: "the wrapped server or its wrapper exited before answering".into() };
            p.record.duration_us = Some(p.started.elapsed().as_micros() as u64);
            self.shared.complete_record(&p.record);
        }
    }
}
