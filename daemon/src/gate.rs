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
//! A connection must send `open` within [`OPEN_DEADLINE`] and counts against its uid's
//! sessions only from then on (connections that never open have a budget of their own),
//! and a full budget is answered with [`GateVerdict::Refused`], which the wrapper obeys
//! whatever its failure mode: holding connections open must never make a later wrapper
//! take the daemon for dead and run its server unobserved.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcpwatch_api::gate::{GateOp, GateRequest, GateResponse, GateVerdict, MAX_GATE_LINE};
use mcpwatch_api::{AuditRecord, CallStatus, FailureMode, MessageKind, ProcessInfo};
use mcpwatch_mcp::jsonrpc::{self, IdKey, Message, Parsed};
use mcpwatch_policy::Target;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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
/// Connections one uid may have that have not sent `open` yet (a wrapper sends it at once).
pub const MAX_UNOPENED_PER_UID: usize = 32;
/// Connections that have not sent `open` yet, in total.
pub const MAX_UNOPENED: usize = 256;
/// How long a connection may take to send `open` before it is closed.
pub const OPEN_DEADLINE: Duration = Duration::from_secs(5);
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

/// Which budget a gate connection counts against: one that has not sent `open` yet, or
/// an open session. Apart, so connections that never open cannot use up their uid's
/// sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Unopened,
    Session,
}

impl Stage {
    /// (per uid, in total)
    fn limits(self) -> (usize, usize) {
        match self {
            Stage::Unopened => (MAX_UNOPENED_PER_UID, MAX_UNOPENED),
            Stage::Session => (MAX_SESSIONS_PER_UID, MAX_SESSIONS),
        }
    }
}

/// Connections of one stage per uid, and in total.
#[derive(Default)]
struct Counts {
    per_uid: HashMap<u32, usize>,
    total: usize,
}

#[derive(Default)]
struct Budget {
    unopened: Counts,
    sessions: Counts,
}

impl Budget {
    fn of(&mut self, stage: Stage) -> &mut Counts {
        match stage {
            Stage::Unopened => &mut self.unopened,
            Stage::Session => &mut self.sessions,
        }
    }
}

struct Slot {
    budget: Arc<Mutex<Budget>>,
    uid: u32,
    stage: Stage,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut b) = self.budget.lock() {
            let c = b.of(self.stage);
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.per_uid.get_mut(&self.uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.per_uid.remove(&self.uid);
                }
            }
        }
    }
}

/// A budget that had no room: what the refusal says.
#[derive(Debug, Clone, Copy)]
struct Full {
    stage: Stage,
    /// The uid's own share (rather than everyone's together) is used up.
    per_uid: bool,
}

impl Full {
    fn message(self, uid: u32) -> String {
        let (per_uid, total) = self.stage.limits();
        let what = match self.stage {
            Stage::Unopened => "gate connections waiting to open",
            Stage::Session => "wrapped servers",
        };
        if self.per_uid {
            format!("mcpwatch gate: too many {what} for uid {uid} (at most {per_uid}); session refused")
        } else {
            format!("mcpwatch gate: too many {what} in total (at most {total}); session refused")
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

fn take_slot(budget: &Arc<Mutex<Budget>>, uid: u32, stage: Stage) -> Result<Slot, Full> {
    let mut b = budget.lock().unwrap_or_else(|p| p.into_inner());
    let (max_per_uid, max_total) = stage.limits();
    let c = b.of(stage);
    let n = c.per_uid.get(&uid).copied().unwrap_or(0);
    if n >= max_per_uid || c.total >= max_total {
        return Err(Full { stage, per_uid: n >= max_per_uid });
    }
    c.total += 1;
    c.per_uid.insert(uid, n + 1);
    Ok(Slot { budget: budget.clone(), uid, stage })
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
        let uid = cred.uid();
        let waiting = match take_slot(&budget, uid, Stage::Unopened) {
            Ok(slot) => slot,
            Err(full) => {
                let message = full.message(uid);
                tracing::warn!(uid, pid, "{message}");
                // Said, not just closed: a wrapper that sees the connection drop takes the
                // daemon for dead (and may run unobserved). A fresh connection's socket
                // buffer takes this short line whole, so one non-blocking write (outside the
                // reactor, which may not know the socket writable yet) never makes the
                // accept loop wait.
                if let (Ok(line), Ok(stream)) = (mcpwatch_api::wire::encode(&GateResponse { seq: 0, body: GateVerdict::Refused { message } }), stream.into_std()) {
                    let _ = std::io::Write::write(&mut &stream, &line);
                }
                continue;
            }
        };
        let (shared, budget) = (shared.clone(), budget.clone());
        tokio::spawn(connection(shared, stream, pid, uid, budget, waiting));
    }
}

type Reader = BufReader<tokio::net::unix::OwnedReadHalf>;

/// Longest `open` line: a command line (the kernel's argument list is read up to 64 KiB
/// anyway). Decoded, a 16 MiB line of empty arguments was ~128 MiB of `String`s, for
/// each of the 32 connections a uid may hold unopened.
const MAX_OPEN_LINE: usize = 256 << 10;

/// Most bytes of a connection's line buffer kept between lines.
const KEEP_LINE_BUFFER: usize = 64 << 10;

/// An answer on its way to the wrapper, with the share of the body budget it holds
/// until it is written.
type Outgoing = (GateResponse, Option<crate::bodies::Lease>);

/// Why a line was not read as a request.
enum LineError {
    /// The connection is broken or abused (too long, not a gate request, not finished in
    /// time): told why, then closed.
    Fatal(String),
    /// The line could not be held (the body budget is spent): it is dropped, its wrapper
    /// told so under its `seq`, and the session goes on. Closing the session would leave a
    /// wrapper in failure mode open relaying unobserved, and the budget is one a watched
    /// user can fill from elsewhere (its HTTP bodies).
    Refused { seq: u64, why: String },
}

const BUDGET_SPENT: &str = crate::bodies::budget_spent!("gate line");

/// The `seq` a wrapper's line starts with (`{"seq":N,`, as `wire::encode` writes it).
fn leading_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || rest.get(digits) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Read one request of at most `max` bytes, with the lease that holds its bytes; `None`
/// at end of stream.
///
/// A line is up to 16 MiB and a uid may hold 64 sessions: the buffer a line is read into
/// is held from the daemon-wide body budget (`crate::bodies`, charged to the wrapper's
/// uid) from its first byte until the request it decodes to is answered, and a line must
/// be whole within `limits.body_timeout` of its first byte. A wrapper that starts lines
/// and never ends them made the daemon hold a gigabyte per uid, for as long as it liked.
async fn read_request(r: &mut Reader, buf: &mut Vec<u8>, budget: &Arc<crate::bodies::BodyBudget>, uid: u32, timeout: Duration, max: usize) -> Option<Result<(GateRequest, crate::bodies::Lease), LineError>> {
    buf.clear();
    let mut lease = budget.lease_for(Some(uid));
    let mut deadline = None;
    // Once the budget refused the line: its seq; the rest of it is read and dropped.
    let mut refused: Option<u64> = None;
    let read = loop {
        let avail = match deadline {
            None => r.fill_buf().await,
            Some(at) => match tokio::time::timeout_at(at, r.fill_buf()).await {
                Ok(res) => res,
                Err(_) => break Err(LineError::Fatal(format!("gate line not finished within {} ms of its first byte (limits.body_timeout_ms)", timeout.as_millis()))),
            },
        };
        let avail = match avail {
            Ok(a) => a,
            Err(_) => return None,
        };
        if avail.is_empty() {
            // End of stream: a partial last line is judged as it is (and fails to decode).
            break Ok(());
        }
        deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout);
        let (used, whole) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        if refused.is_some() {
            r.consume(used);
        } else {
            let used = used.min(max + 1 - buf.len());
            buf.extend_from_slice(&avail[..used]);
            r.consume(used);
            if buf.len() > max {
                break Err(LineError::Fatal(format!("gate line longer than {max} bytes")));
            }
            // What the buffer holds is its capacity, not its length.
            if !lease.hold(buf.capacity()) {
                let Some(seq) = leading_seq(buf) else { break Err(LineError::Fatal(BUDGET_SPENT.into())) };
                refused = Some(seq);
                *buf = Vec::new();
                lease.hold(0);
            }
        }
        if whole {
            break Ok(());
        }
    };
    let res = match (read, refused) {
        (Err(e), _) => Some(Err(e)),
        (Ok(()), Some(seq)) => Some(Err(LineError::Refused { seq, why: BUDGET_SPENT.into() })),
        (Ok(()), None) if buf.is_empty() => None,
        (Ok(()), None) => Some(match mcpwatch_api::wire::decode::<GateRequest>(buf) {
            Ok(req) => {
                // The lease goes on holding what the decoded line holds (less than the
                // buffer: giving back never fails).
                lease.hold(buf.len());
                Ok((req, lease))
            }
            Err(e) => Err(LineError::Fatal(format!("not a gate request: {e}"))),
        }),
    };
    if buf.capacity() > KEEP_LINE_BUFFER {
        *buf = Vec::new();
    }
    res
}

/// An open session's hold on the daemon: its budget slot and its wrapper's mark.
struct Opened {
    session: Arc<Session>,
    _slot: Slot,
    _mark: WrapperMark,
}

/// The connection's first request, which must be `open` and come within
/// [`OPEN_DEADLINE`]; `None` when the connection is to be closed (answered already).
async fn open(shared: &Arc<Shared>, rd: &mut Reader, buf: &mut Vec<u8>, tx: &tokio::sync::mpsc::Sender<Outgoing>, budget: &Arc<Mutex<Budget>>, wrapper_pid: u32, uid: u32) -> Option<Opened> {
    let req = match tokio::time::timeout(OPEN_DEADLINE, read_request(rd, buf, &shared.bodies, uid, shared.config.limits.body_timeout, MAX_OPEN_LINE)).await {
        Err(_) => {
            tracing::warn!(wrapper_pid, uid, "gate: no `open` within {} s; connection closed", OPEN_DEADLINE.as_secs());
            return None;
        }
        Ok(None) => return None,
        Ok(Some(Err(LineError::Fatal(message) | LineError::Refused { why: message, .. }))) => {
            tracing::warn!(wrapper_pid, "gate: {message}; connection closed");
            let _ = tx.send((GateResponse { seq: 0, body: GateVerdict::Error { message } }, None)).await;
            return None;
        }
        // An `open` is small: what it held is given back.
        Ok(Some(Ok((req, _held)))) => req,
    };
    let GateOp::Open { command } = req.body else {
        let _ = tx.send((GateResponse { seq: req.seq, body: GateVerdict::Error { message: "first request must be `open`".into() } }, None)).await;
        return None;
    };
    let session = Session::open(shared.clone(), wrapper_pid, uid, command);
    match take_slot(budget, uid, Stage::Session) {
        Ok(slot) => {
            tracing::info!(server = %session.endpoint, command = %session.cmdline, wrapper_pid, client = ?session.process.as_ref().map(|p| (p.pid, p.comm.clone())), "gate: wrapped stdio server opened");
            let body = GateVerdict::Opened { server: session.endpoint.clone(), failure_mode: shared.config.failure_mode };
            let _ = tx.send((GateResponse { seq: req.seq, body }, None)).await;
            Some(Opened { session: Arc::new(session), _slot: slot, _mark: WrapperMark::new(shared.clone(), wrapper_pid) })
        }
        Err(full) => {
            let message = full.message(uid);
            tracing::warn!(server = %session.endpoint, wrapper_pid, uid, "{message}");
            session.refused(&message);
            let _ = tx.send((GateResponse { seq: req.seq, body: GateVerdict::Refused { message } }, None)).await;
            None
        }
    }
}

async fn connection(shared: Arc<Shared>, stream: UnixStream, wrapper_pid: u32, uid: u32, budget: Arc<Mutex<Budget>>, waiting: Slot) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Outgoing>(2);
    // A wrapper that stops reading its answers has them (a redacted line may be 16 MiB)
    // given up after `limits.body_timeout`, and its connection closed.
    let write_timeout = shared.config.limits.body_timeout;
    let writer = tokio::spawn(async move {
        while let Some((resp, held)) = rx.recv().await {
            let Ok(line) = mcpwatch_api::wire::encode(&resp) else { continue };
            drop(resp);
            if !matches!(tokio::time::timeout(write_timeout, wr.write_all(&line)).await, Ok(Ok(()))) {
                break;
            }
            // What the answer held of the body budget is given back once it is written.
            drop(held);
        }
    });
    let mut buf = Vec::new();
    let opened = open(&shared, &mut rd, &mut buf, &tx, &budget, wrapper_pid, uid).await;
    // Opened or not, it no longer waits to open.
    drop(waiting);
    if let Some(opened) = &opened {
        relay(&shared, &opened.session, &mut rd, &mut buf, &tx, wrapper_pid, uid).await;
    }
    drop((tx, buf, rd));
    let _ = writer.await;
    if let Some(opened) = opened {
        opened.session.close();
    }
}

/// An open session's requests until the wrapper goes away or breaks the protocol.
async fn relay(shared: &Shared, session: &Arc<Session>, rd: &mut Reader, buf: &mut Vec<u8>, tx: &tokio::sync::mpsc::Sender<Outgoing>, wrapper_pid: u32, uid: u32) {
    // At most one request per direction in flight.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(2));
    loop {
        // The next line is read only once one may be judged: a wrapper that stops reading
        // its answers stops having its lines read, rather than piling them up here.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        // The writer gave up (the wrapper did not take its answers in time): so does this.
        if tx.is_closed() {
            break;
        }
        let Some(res) = read_request(rd, buf, &shared.bodies, uid, shared.config.limits.body_timeout, MAX_GATE_LINE).await else { break };
        let (req, held) = match res {
            Ok(r) => r,
            Err(LineError::Refused { seq, why }) => {
                tracing::warn!(wrapper_pid, "gate: {why}; line dropped");
                session.line_refused(&why);
                let _ = tx.send((GateResponse { seq, body: GateVerdict::Drop { reason: why } }, None)).await;
                continue;
            }
            Err(LineError::Fatal(message)) => {
                tracing::warn!(wrapper_pid, "gate: {message}; connection closed");
                let _ = tx.send((GateResponse { seq: 0, body: GateVerdict::Error { message } }, None)).await;
                break;
            }
        };
        let seq = req.seq;
        let op = match req.body {
            GateOp::Open { .. } => {
                let _ = tx.send((GateResponse { seq, body: GateVerdict::Error { message: "session already open".into() } }, None)).await;
                break;
            }
            op => op,
        };
        let (s, tx) = (session.clone(), tx.clone());
        tokio::spawn(async move {
            let mut held = held;
            let mut body = match op {
                GateOp::Client { line } => s.on_client(&line).await,
                GateOp::Server { line } => s.on_server(&line),
                GateOp::Open { .. } => GateVerdict::Error { message: "session already open".into() },
            };
            // The answer waits to be written (a wrapper may be slow to read it, or never
            // read): it holds its bytes from the budget until it is, twice its text (the
            // line as a JSON string, then encoded). A rewritten line that does not fit is
            // not sent: the wrapper drops it (and answers a client request with an error).
            let size = match &body {
                GateVerdict::Forward { line: Some(l) } | GateVerdict::Answer { line: l } => 2 * l.len(),
                _ => 0,
            };
            if !held.hold(size) {
                body = GateVerdict::Drop { reason: BUDGET_SPENT.into() };
                held.hold(0);
            }
            let _ = tx.send((GateResponse { seq, body }, Some(held))).await;
            drop(permit);
        });
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
    /// The client's calls forwarded to the server, by [`Id::key`].
    pending: Mutex<crate::session::BoundedMap<IdKey, Pending>>,
    /// The server's requests forwarded to the client (sampling, elicitation, roots), by
    /// [`Id::key`]: the client's answer completes their record.
    server_pending: Mutex<crate::session::BoundedMap<IdKey, Pending>>,
    /// Calls the client cancelled (`notifications/cancelled`): out of `pending`, so that
    /// calls no answer will come for do not fill its bound, and still in use (a late
    /// answer completes them; their ids are not reused). Bounded by eviction: the oldest
    /// cancelled call is closed to make room.
    cancelled: Mutex<crate::session::BoundedMap<IdKey, Pending>>,
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
        let flow_session = match &process {
            Some(p) => govern::flows::process_session(&key, p),
            None => format!("{key}#wrapper:{wrapper_pid}"),
        };
        let pending = || Mutex::new(crate::session::BoundedMap::new(MAX_PENDING));
        Session { shared, endpoint: key, cmdline, process, wrapper_pid, pending: pending(), server_pending: pending(), cancelled: pending(), flow_session }
    }

    /// The session was refused (the budget is full): on the record, with the server it
    /// would have run, since the wrapper does not start it.
    fn refused(&self, message: &str) {
        let mut rec = self.record(MessageKind::Invalid, C2S, None, 0);
        rec.alerts.push(message.to_string());
        self.write_closed(rec, CallStatus::TransportError { reason: "session refused by the gate; the wrapper does not start the server".into() });
    }

    /// A line of this session was dropped unread (the body budget could not hold it): on
    /// the record, since neither end learns what it said.
    fn line_refused(&self, why: &str) {
        let mut rec = self.record(MessageKind::Invalid, C2S, None, 0);
        rec.alerts.push(why.to_string());
        self.write_closed(rec, CallStatus::TransportError { reason: why.to_string() });
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
        if let Some(why) = stray_cr(line) {
            // In every mode: the server would not read what mcpwatch judged.
            let id = match jsonrpc::parse_body(line.as_bytes()) {
                Parsed::Single(m @ Message::Request { .. }) => m.id().cloned(),
                _ => None,
            };
            let mut rec = self.record(MessageKind::Invalid, C2S, None, bytes);
            rec.jsonrpc_id = id.as_ref().map(ToString::to_string);
            rec.alerts.push(why.into());
            self.write_closed(rec, CallStatus::JsonrpcError { code: jsonrpc::INVALID_REQUEST, message: why.into() });
            let err = jsonrpc::error_response(id.as_ref(), jsonrpc::INVALID_REQUEST, &format!("mcpwatch: {why}"), None);
            return GateVerdict::Answer { line: err.to_string() };
        }
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
                if msg.method() == Some("notifications/cancelled")
                    && let Some(id) = msg.params().and_then(|p| p.get("requestId")).and_then(jsonrpc::Id::from_value)
                {
                    self.retire(&id.key());
                }
                let mut msg = msg;
                let mut rec = self.record(MessageKind::Notification, C2S, Some(&msg), bytes);
                match govern::notification(Judge::of(shared, &shared.governance.current()), &self.site(), &mut rec, &mut msg) {
                    govern::Noted::Blocked(reason) => {
                        // Recorded as the network path records it: refused, not sent.
                        self.write_closed(rec, CallStatus::JsonrpcError { code: govern::CODE_CONTENT_BLOCKED, message: reason.clone() });
                        GateVerdict::Drop { reason }
                    }
                    noted => {
                        self.write_closed(rec, CallStatus::Sent);
                        GateVerdict::Forward { line: (noted == govern::Noted::Redacted).then(|| msg.to_value().to_string()) }
                    }
                }
            }
            // The client answers a request the server sent.
            Message::Response { .. } | Message::Error { .. } => self.on_client_answer(msg, bytes),
        }
    }

    /// A client's answer completes the record of the server request it answers; one to an
    /// id no server request carried through the gate is recorded (it carries data to the
    /// server), with its keyed hash and an alert, as on the network path. Either way it is
    /// inspected as arguments are first ([`govern::answer`]): the line the server gets is
    /// the redacted one (or an error, when a detector blocks), and the hash is of that.
    fn on_client_answer(&self, mut msg: Message, bytes: u64) -> GateVerdict {
        let shared = &self.shared;
        let gov = shared.governance.current();
        let site = self.site();
        let pending = msg.id().and_then(|id| self.server_pending.lock().ok().and_then(|mut p| p.remove(&id.key())));
        let rewritten = match pending {
            Some(mut p) => {
                let rewritten = govern::answer(Judge::of(shared, &gov), &site, &mut p.record, &mut msg);
                let (status, hash) = record::answer_of(shared, &msg);
                p.record.status = status;
                p.record.result_hash = hash;
                p.record.duration_us = Some(p.started.elapsed().as_micros() as u64);
                p.record.response_bytes = bytes;
                shared.complete_record(&p.record);
                rewritten
            }
            None => {
                let mut rec = self.record(MessageKind::Invalid, C2S, None, bytes);
                let rewritten = govern::unasked_answer(Judge::of(shared, &gov), &site, &mut rec, &mut msg);
                self.write_closed(rec, CallStatus::Sent);
                rewritten
            }
        };
        GateVerdict::Forward { line: rewritten.then(|| msg.to_value().to_string()) }
    }

    async fn on_request(&self, gov: &Arc<Loaded>, mut msg: Message, bytes: u64) -> GateVerdict {
        let shared = &self.shared;
        let mut rec = self.record(MessageKind::Request, C2S, Some(&msg), bytes);
        if let Some(why) = self.already_pending(&msg) {
            rec.alerts.push(why.clone());
            rec.notes.push("answered by mcpwatch; not forwarded".into());
            self.write_closed(rec, CallStatus::JsonrpcError { code: jsonrpc::INVALID_REQUEST, message: why.clone() });
            return GateVerdict::Answer { line: jsonrpc::error_response(msg.id(), jsonrpc::INVALID_REQUEST, &format!("mcpwatch: {why}"), None).to_string() };
        }
        self.sight(msg.method(), rec.name.as_deref());
        let registry = gov.policy.server_for(&self.target());
        shared.inventory.set_registration(&self.endpoint, registry);
        let site = self.site();
        let Governed { fate, modified, held } = govern::request(Judge::of(shared, gov), &site, &mut msg, &mut rec);
        let audit_failed = shared.begin_record(&rec).is_err();
        if record::commit(shared, true, audit_failed, || self.enforce(gov)).await.is_err() {
            return Self::unaudited(shared, &mut rec, &msg);
        }
        let fate = match fate {
            Fate::Forward if held => {
                let fate = govern::hold(Judge::of(shared, gov), &site, &msg, &mut rec).await;
                if matches!(fate, Fate::Forward) {
                    // The approval is on the record before the call goes.
                    shared.complete_record(&rec);
                    if record::commit(shared, true, false, || self.enforce(gov)).await.is_err() {
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
                    let Ok(mut pending) = self.pending.lock() else {
                        return Self::refuse_begun(shared, rec, &msg, "mcpwatch: pending calls unavailable".into());
                    };
                    // Checked again here: a call held for approval took its time. An entry
                    // is never replaced: its answer would be taken for the new call's.
                    if self.in_use(&pending, &id.key()) {
                        drop(pending);
                        let why = format!("request id {} is already pending on this session", record::clip(&id.to_string()));
                        rec.alerts.push(why.clone());
                        return Self::refuse_begun(shared, rec, &msg, why);
                    }
                    // Full: refused, never an older call pushed out. Its id would be free to
                    // reuse while the server still works on it, and the server's answer to
                    // it taken for the new call's (a `tools/call` result judged as a
                    // `tools/list`: no detectors, no redaction).
                    if pending.is_full() {
                        drop(pending);
                        let why = format!("too many calls pending on this session ({MAX_PENDING})");
                        rec.alerts.push(why.clone());
                        return Self::refuse_begun(shared, rec, &msg, why);
                    }
                    let replaced = pending.insert(id.key(), Pending { record: rec, started, first_page });
                    drop(pending);
                    debug_assert!(replaced.is_empty(), "checked: not pending, not full");
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

    /// A call the client cancelled moves from `pending` to `cancelled`.
    fn retire(&self, key: &IdKey) {
        let Ok(mut pending) = self.pending.lock() else { return };
        let Some(p) = pending.remove(key) else { return };
        let evicted = self.cancelled.lock().map(|mut c| c.insert(key.clone(), p)).unwrap_or_default();
        drop(pending);
        for mut e in evicted {
            e.record.status = CallStatus::TransportError { reason: "cancelled by the client; no answer came".into() };
            e.record.duration_us = Some(e.started.elapsed().as_micros() as u64);
            self.shared.complete_record(&e.record);
        }
    }

    /// Is a call with this id waiting (or cancelled and perhaps still answered)? Called with
    /// `pending` locked.
    fn in_use(&self, pending: &crate::session::BoundedMap<IdKey, Pending>, key: &IdKey) -> bool {
        pending.get(key).is_some() || self.cancelled.lock().is_ok_and(|c| c.get(key).is_some())
    }

    /// A client request whose id is still waiting for the server's answer: its answer would
    /// be taken for the pending call's (and the pending call's for it), so the audit and
    /// the toxic-flow labels would follow the wrong tool.
    fn already_pending(&self, msg: &Message) -> Option<String> {
        let id = msg.id()?;
        let pending = self.pending.lock().ok()?;
        self.in_use(&pending, &id.key()).then(|| format!("request id {} is already pending on this session", record::clip(&id.to_string())))
    }

    /// A request whose record is begun is refused after all: answered here, not forwarded.
    fn refuse_begun(shared: &Shared, mut rec: AuditRecord, msg: &Message, why: String) -> GateVerdict {
        rec.status = CallStatus::JsonrpcError { code: jsonrpc::INVALID_REQUEST, message: why.clone() };
        rec.duration_us = Some(0);
        rec.notes.push("answered by mcpwatch; not forwarded".into());
        shared.complete_record(&rec);
        GateVerdict::Answer { line: jsonrpc::error_response(msg.id(), jsonrpc::INVALID_REQUEST, &format!("mcpwatch: {why}"), None).to_string() }
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
        let parsed = match stray_cr(line) {
            // A client reading with universal newlines would see more than the gate did.
            Some(why) => Err(why),
            None => match jsonrpc::parse_body(line.as_bytes()) {
                Parsed::Single(m) => Ok(m),
                _ => Err("server wrote a line that is not one JSON-RPC message"),
            },
        };
        let mut msg = match parsed {
            Ok(m) => m,
            Err(why) => {
                let mut rec = self.record(MessageKind::Invalid, S2C, None, bytes);
                rec.alerts.push(why.into());
                self.write_closed(rec, if enforce { CallStatus::TransportError { reason: "dropped by mcpwatch".into() } } else { CallStatus::Sent });
                return if enforce { GateVerdict::Drop { reason: why.into() } } else { GateVerdict::Forward { line: None } };
            }
        };
        match &msg {
            Message::Response { .. } | Message::Error { .. } => {
                let pending = msg.id().and_then(|id| {
                    let key = id.key();
                    let mut p = self.pending.lock().ok()?;
                    p.remove(&key).or_else(|| self.cancelled.lock().ok()?.remove(&key))
                });
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
            Message::Request { .. } => {
                // Open until the client answers (`on_client_answer`).
                let rec = self.record(MessageKind::Request, S2C, Some(&msg), bytes);
                let _ = shared.begin_record(&rec);
                if let Some(id) = msg.id() {
                    let (replaced, evicted) = self
                        .server_pending
                        .lock()
                        .map(|mut p| {
                            let key = id.key();
                            (p.remove(&key), p.insert(key, Pending { record: rec, started: Instant::now(), first_page: false }))
                        })
                        .unwrap_or_default();
                    for (mut e, reason) in replaced.into_iter().map(|e| (e, "the server reused its id before the client answered")).chain(evicted.into_iter().map(|e| (e, "evicted: too many pending server requests"))) {
                        e.record.status = CallStatus::TransportError { reason: reason.into() };
                        shared.complete_record(&e.record);
                    }
                }
                GateVerdict::Forward { line: None }
            }
            Message::Notification { .. } => {
                self.write_closed(self.record(MessageKind::Notification, S2C, Some(&msg), bytes), CallStatus::Sent);
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
        let mut calls = self.pending.lock().map(|mut p| p.drain_where(|_| true)).unwrap_or_default();
        calls.extend(self.cancelled.lock().map(|mut p| p.drain_where(|_| true)).unwrap_or_default());
        let asked = self.server_pending.lock().map(|mut p| p.drain_where(|_| true)).unwrap_or_default();
        let left = calls
            .into_iter()
            .map(|p| (p, "the wrapped server or its wrapper exited before answering"))
            .chain(asked.into_iter().map(|p| (p, "the session ended before the client answered")));
        for (mut p, reason) in left {
            p.record.status = CallStatus::TransportError { reason: reason.into() };
            p.record.duration_us = Some(p.started.elapsed().as_micros() as u64);
            self.shared.complete_record(&p.record);
        }
    }
}

/// Why a line may not pass: it holds a `\r` other than one just before its `\n`. JSON
/// takes `\r` for whitespace, so the gate reads such a line as one message, while a peer
/// reading with universal newlines (the Python SDK reads stdio through `TextIOWrapper`)
/// splits it there and may run a message the gate saw only as the value of some unknown
/// field. Other separators `str.splitlines` knows are control characters JSON forbids
/// outside strings (`\x0b`, `\x1c`...) or stand only inside a string (`U+2028`), whose
/// quotes cannot close there: no JSON-RPC message starts after them.
fn stray_cr(line: &str) -> Option<&'static str> {
    line.strip_suffix('\r').unwrap_or(line).contains('\r').then_some("a carriage return inside a line (a peer reading universal newlines would split the line there)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line the budget cannot hold is answered under its `seq`, read from the line's
    /// start: where the wrapper's encoding puts it.
    #[test]
    fn the_seq_of_a_line_is_read_from_its_start() {
        let line = mcpwatch_api::wire::encode(&GateRequest { seq: 42, body: GateOp::Client { line: "x".repeat(100) } }).unwrap();
        assert_eq!(leading_seq(&line), Some(42));
        assert_eq!(leading_seq(&line[..9]), None, "cut before the comma");
        assert_eq!(leading_seq(br#"{"op":"client","seq":1,"line":""}"#), None);
        assert_eq!(leading_seq(br#"{"seq":-1,"op":"client"}"#), None);
    }

    #[test]
    fn a_carriage_return_passes_only_at_the_end() {
        assert!(stray_cr(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).is_none());
        assert!(stray_cr("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r").is_none());
        assert!(stray_cr("{\"x\":\r{\"id\":7}\r}").is_some());
        assert!(stray_cr("{}\r\r").is_some(), "two at the end: an empty line between");
        assert!(stray_cr("\r{}").is_some());
    }

    #[test]
    fn unopened_connections_have_their_own_budget() {
        let budget = Arc::new(Mutex::new(Budget::default()));
        let waiting: Vec<Slot> = (0..MAX_UNOPENED_PER_UID).map(|_| take_slot(&budget, 1000, Stage::Unopened).unwrap()).collect();
        let full = take_slot(&budget, 1000, Stage::Unopened).err().expect("the uid's unopened budget is full");
        assert!(full.per_uid && full.message(1000).contains("uid 1000"), "{}", full.message(1000));
        // Waiting connections take nothing from the uid's sessions, or from another uid.
        let sessions: Vec<Slot> = (0..MAX_SESSIONS_PER_UID).map(|_| take_slot(&budget, 1000, Stage::Session).unwrap()).collect();
        assert!(take_slot(&budget, 1000, Stage::Session).is_err());
        assert!(take_slot(&budget, 1001, Stage::Unopened).is_ok());
        drop(waiting);
        assert!(take_slot(&budget, 1000, Stage::Unopened).is_ok(), "released on drop");
        drop(sessions);
        assert!(take_slot(&budget, 1000, Stage::Session).is_ok());
    }
}
