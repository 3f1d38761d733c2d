//! `mcpwatch wrap -- CMD ARGS...`: enforce policy on a stdio MCP server.
//!
//! Why it exists: the kernel can watch a stdio pipe but not rewrite it, so a client that
//! should be governed launches its server through this wrapper. The wrapper runs the
//! server as its child and relays newline-delimited JSON-RPC both ways (stderr passes
//! through untouched), asking mcpwatchd's gate ([`mcpwatch_api::gate`]) about every
//! line: the daemon decides, audits and may rewrite; the wrapper only does what it is
//! told. It never decides on policy itself.
//!
//! When the gate cannot be reached the daemon's failure mode applies, read from the
//! file the daemon publishes next to the gate socket (`failure-mode`), or from
//! `--failure` / `MCPWATCH_WRAP_FAILURE`, and `closed` when neither says: `open` relays
//! unobserved and says so once on stderr; `closed` answers every request with a
//! JSON-RPC error and does not start the server (or stops forwarding, if the gate goes
//! away mid-session). A daemon that answers but will not take the session (its budget
//! for this uid is full, [`GateVerdict::Refused`]) is not unreachable: the wrapper then
//! refuses like `closed` whatever the mode, or holding the gate's connections would be a
//! way to run servers unobserved.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use clap::Args;
use mcpwatch_api::FailureMode;
use mcpwatch_api::gate::{GateOp, GateRequest, GateResponse, GateVerdict, MAX_GATE_LINE};

/// JSON-RPC error code of the wrapper's own refusals (daemon unreachable, fail-closed).
pub const CODE_UNAVAILABLE: i64 = -32005;

#[derive(Debug, Args)]
pub struct WrapArgs {
    /// The daemon's gate socket (default: `gate.sock` next to the control socket).
    #[arg(long, value_name = "PATH", env = "MCPWATCH_GATE")]
    pub gate: Option<PathBuf>,
    /// What to do when the daemon cannot be reached: `open` (relay unobserved) or
    /// `closed` (refuse). Default: the daemon's setting as it last published it, else closed.
    #[arg(long, value_name = "MODE", env = "MCPWATCH_WRAP_FAILURE", value_parser = parse_mode)]
    pub failure: Option<FailureMode>,
    #[command(flatten)]
    pub install: crate::wrap_install::InstallArgs,
    /// The server to run, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_mode(s: &str) -> Result<FailureMode, String> {
    mcpwatch_api::gate::parse_failure_mode(s).ok_or_else(|| format!("`{s}`: expected open or closed"))
}

pub fn run(socket: &Path, args: &WrapArgs) -> Result<ExitCode> {
    if args.install.wants() {
        let mut out = io::stdout().lock();
        return crate::wrap_install::run(&args.install, &mut out);
    }
    if args.command.is_empty() {
        bail!("usage: mcpwatch wrap [--gate PATH] [--failure open|closed] -- CMD ARGS...  (or --install / --uninstall)");
    }
    let gate_path = args.gate.clone().unwrap_or_else(|| mcpwatch_api::gate::gate_socket_for(socket));
    let published = std::fs::read_to_string(mcpwatch_api::gate::failure_mode_file_for(&gate_path)).ok().and_then(|t| mcpwatch_api::gate::parse_failure_mode(&t));
    let mode = args.failure.or(published).unwrap_or(FailureMode::Closed);
    match Gate::open(&gate_path, &args.command) {
        Ok(Opening::Opened(gate, mode_now)) => relay(gate, &args.command, args.failure.unwrap_or(mode_now)),
        Ok(Opening::Refused(message)) => {
            eprintln!("mcpwatch wrap: the mcpwatch daemon refused the session ({message}); {} not started, requests refused", args.command[0]);
            refuse_all(&format!("mcpwatch: the daemon refused the session ({message}), so the server was not started"));
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            let why = format!("the mcpwatch daemon is unreachable (gate {}: {e:#})", gate_path.display());
            match mode {
                FailureMode::Open => {
                    eprintln!("mcpwatch wrap: {why}; failure mode open: running {} UNOBSERVED", args.command[0]);
                    let status = Command::new(&args.command[0]).args(&args.command[1..]).status().with_context(|| format!("cannot run {}", args.command[0]))?;
                    Ok(exit_code(status))
                }
                FailureMode::Closed => {
                    eprintln!("mcpwatch wrap: {why}; failure mode closed: {} not started, requests refused", args.command[0]);
                    refuse_all(&format!("mcpwatch: {why}; failure mode is closed, so the server was not started"));
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    ExitCode::from(status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1)))
}

/// Fail-closed without a server: answer every request on stdin with an error until EOF.
fn refuse_all(message: &str) {
    let stdin = io::stdin();
    let mut reader = stdin.lock();
    let mut out = io::stdout();
    let mut buf = Vec::new();
    while let Ok(Some(())) = read_line(&mut reader, &mut buf) {
        if let Some(reply) = error_for(&buf, message) {
            let _ = out.write_all(reply.as_bytes()).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
        }
    }
}

/// The JSON-RPC error answering `line`, if it is a request (it has an id).
fn error_for(line: &[u8], message: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let id = v.get("id").filter(|id| !id.is_null() && v.get("method").is_some())?;
    Some(serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": CODE_UNAVAILABLE, "message": message}}).to_string())
}

/// Read one line (without its `\n`) of at most `MAX_GATE_LINE` bytes; a longer line is
/// consumed and returned truncated to nothing (it is never forwarded). `None` at EOF.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Option<()>> {
    buf.clear();
    let n = r.by_ref().take(MAX_GATE_LINE as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_GATE_LINE && buf.last() != Some(&b'\n') {
        // Too long: skip the rest of it.
        let mut sink = Vec::new();
        r.read_until(b'\n', &mut sink)?;
        // Not UTF-8, so never forwarded.
        buf.clear();
        buf.push(0xff);
        return Ok(Some(()));
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Ok(Some(()))
}

/// What the daemon said to `open`.
enum Opening {
    Opened(Gate, FailureMode),
    /// The daemon answered and will not govern this server: never run it unobserved.
    Refused(String),
}

/// The gate connection: requests go out under a lock, a reader thread hands each answer
/// to whoever waits for its `seq`.
struct Gate {
    writer: Mutex<UnixStream>,
    waiting: Arc<Mutex<HashMap<u64, mpsc::Sender<GateVerdict>>>>,
    next: AtomicU64,
    broken: Arc<AtomicBool>,
}

impl Gate {
    /// Connect and open the session. `Err` only when no daemon answered: an answer that
    /// is not `opened` is a refusal.
    fn open(path: &Path, command: &[String]) -> Result<Opening> {
        let mut stream = UnixStream::connect(path)?;
        let mut r = BufReader::new(stream.try_clone()?);
        // Read the answer even when the write fails: a daemon that refuses at once
        // (`seq` 0) may have closed the connection before our request reached it.
        let request = mcpwatch_api::wire::encode(&GateRequest { seq: 1, body: GateOp::Open { command: command.to_vec() } })?;
        let sent = stream.write_all(&request);
        let mut answer = Vec::new();
        let read = r.by_ref().take(MAX_GATE_LINE as u64).read_until(b'\n', &mut answer);
        let (failure_mode, message) = match mcpwatch_api::wire::decode::<GateResponse>(&answer).map(|a| a.body) {
            Ok(GateVerdict::Opened { failure_mode, .. }) if sent.is_ok() => (failure_mode, None),
            Ok(GateVerdict::Refused { message } | GateVerdict::Error { message }) => (FailureMode::Closed, Some(message)),
            Ok(other) => (FailureMode::Closed, Some(format!("unexpected answer from the gate: {other:?}"))),
            Err(_) => {
                sent.context("sending `open` to the gate")?;
                read.context("reading the gate's answer")?;
                if answer.is_empty() {
                    bail!("the gate closed the connection without answering");
                }
                bail!("not a gate answer: {}", String::from_utf8_lossy(&answer[..answer.len().min(200)]));
            }
        };
        if let Some(message) = message {
            return Ok(Opening::Refused(message));
        }
        let gate = Gate { writer: Mutex::new(stream), waiting: Arc::default(), next: AtomicU64::new(2), broken: Arc::default() };
        let (waiting, broken) = (gate.waiting.clone(), gate.broken.clone());
        std::thread::spawn(move || {
            let mut line = Vec::new();
            loop {
                line.clear();
                // An answer may be a rewritten message, larger than its request after
                // escaping: read what the daemon can produce, not just the request limit.
                match r.by_ref().take(MAX_GATE_LINE as u64 * 8).read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let Ok(resp) = mcpwatch_api::wire::decode::<GateResponse>(&line) else { break };
                if let Some(tx) = waiting.lock().ok().and_then(|mut w| w.remove(&resp.seq)) {
                    let _ = tx.send(resp.body);
                }
            }
            broken.store(true, Ordering::SeqCst);
            // Wake everyone still waiting: their answer will not come.
            if let Ok(mut w) = waiting.lock() {
                w.clear();
            }
        });
        Ok(Opening::Opened(gate, failure_mode))
    }

    /// One request and its answer; `None` when the gate is gone.
    fn ask(&self, body: GateOp) -> Option<GateVerdict> {
        if self.broken.load(Ordering::SeqCst) {
            return None;
        }
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let line = mcpwatch_api::wire::encode(&GateRequest { seq, body }).ok()?;
        // Too long for the gate (JSON escaping grows a line): never forwarded, and the
        // gate is not made to drop the session over it.
        if line.len() > MAX_GATE_LINE {
            return Some(GateVerdict::Drop { reason: format!("line longer than the gate's limit of {MAX_GATE_LINE} bytes") });
        }
        let (tx, rx) = mpsc::channel();
        self.waiting.lock().ok()?.insert(seq, tx);
        if self.broken.load(Ordering::SeqCst) {
            self.waiting.lock().ok()?.remove(&seq);
            return None;
        }
        if self.writer.lock().ok()?.write_all(&line).is_err() {
            self.broken.store(true, Ordering::SeqCst);
            return None;
        }
        rx.recv().ok()
    }
}

/// What the wrapper does with lines once the gate is gone.
struct Degraded {
    mode: FailureMode,
    warned: AtomicBool,
}

impl Degraded {
    fn note(&self) {
        if !self.warned.swap(true, Ordering::SeqCst) {
            match self.mode {
                FailureMode::Open => eprintln!("mcpwatch wrap: lost the mcpwatch daemon; failure mode open: relaying UNOBSERVED from now on"),
                FailureMode::Closed => eprintln!("mcpwatch wrap: lost the mcpwatch daemon; failure mode closed: refusing requests from now on"),
            }
        }
    }
}

fn write_line(w: &Mutex<impl Write>, line: &[u8]) -> io::Result<()> {
    let mut w = w.lock().map_err(|_| io::Error::other("writer lock poisoned"))?;
    w.write_all(line)?;
    w.write_all(b"\n")?;
    w.flush()
}

fn relay(gate: Gate, command: &[String], mode: FailureMode) -> Result<ExitCode> {
    let mut child: Child = Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {}", command[0]))?;
    let child_in: ChildStdin = child.stdin.take().context("child stdin")?;
    let child_out = child.stdout.take().context("child stdout")?;
    let gate = Arc::new(gate);
    let degraded = Arc::new(Degraded { mode, warned: AtomicBool::new(false) });
    let to_client = Arc::new(Mutex::new(io::stdout()));

    // Client → server on a thread; server → client here: the relay ends with the
    // server's stdout. When the client hangs up, dropping `to_server` closes the server's stdin.
    {
        let (gate, degraded, to_client) = (gate.clone(), degraded.clone(), to_client.clone());
        let to_server = Mutex::new(child_in);
        std::thread::spawn(move || pump(&mut io::stdin().lock(), Side::Client, &gate, &degraded, &to_server, &to_client));
    }
    pump(&mut BufReader::new(child_out), Side::Server, &gate, &degraded, &to_client, &to_client);
    let status = child.wait().context("waiting for the server")?;
    Ok(exit_code(status))
}

/// Which end a line comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// Relay lines from `reader` as the gate says: `onward` (to the other end) or `back`
/// (a client request answered by mcpwatch). Without a gate, the failure mode decides.
fn pump(reader: &mut impl BufRead, side: Side, gate: &Gate, degraded: &Degraded, onward: &Mutex<impl Write>, back: &Mutex<impl Write>) {
    let who = if side == Side::Client { "client" } else { "server" };
    let mut buf = Vec::new();
    while let Ok(Some(())) = read_line(reader, &mut buf) {
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            eprintln!("mcpwatch wrap: a {who} line that is not UTF-8 was not forwarded");
            continue;
        };
        let op = match side {
            Side::Client => GateOp::Client { line: line.to_string() },
            Side::Server => GateOp::Server { line: line.to_string() },
        };
        let ok = match gate.ask(op) {
            Some(GateVerdict::Forward { line: new }) => write_line(onward, new.as_deref().map_or(&buf[..], str::as_bytes)),
            Some(GateVerdict::Answer { line }) if side == Side::Client => write_line(back, line.as_bytes()),
            Some(GateVerdict::Drop { reason } | GateVerdict::Error { message: reason } | GateVerdict::Refused { message: reason }) => {
                eprintln!("mcpwatch wrap: {who} line not forwarded: {reason}");
                // A client request that goes nowhere is answered, or the client waits for
                // ever (the gate drops a line it cannot hold: its body budget is spent).
                match (side, error_for(&buf, &format!("mcpwatch: not forwarded: {reason}"))) {
                    (Side::Client, Some(reply)) => write_line(back, reply.as_bytes()),
                    _ => Ok(()),
                }
            }
            Some(_) => Ok(()),
            None => {
                degraded.note();
                match (degraded.mode, side) {
                    (FailureMode::Open, _) => write_line(onward, &buf),
                    (FailureMode::Closed, Side::Client) => {
                        match error_for(&buf, "mcpwatch: the mcpwatch daemon went away and failure mode is closed; not forwarded") {
                            Some(reply) => write_line(back, reply.as_bytes()),
                            None => Ok(()),
                        }
                    }
                    (FailureMode::Closed, Side::Server) => Ok(()),
                }
            }
        };
        if ok.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_answer_requests_only() {
        let r = error_for(br#"{"jsonrpc":"2.0","id":4,"method":"tools/call"}"#, "no").unwrap();
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert_eq!(v["id"], 4);
        assert_eq!(v["error"]["code"], CODE_UNAVAILABLE);
        assert!(error_for(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#, "no").is_none());
        assert!(error_for(br#"{"jsonrpc":"2.0","id":4,"result":{}}"#, "no").is_none());
        assert!(error_for(b"garbage", "no").is_none());
    }

    /// A client request the gate drops (it could not hold it: its body budget is spent)
    /// is answered with an error, not left waiting; nothing goes on to the server.
    #[test]
    fn a_dropped_client_request_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gate.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut w = stream;
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let req: GateRequest = mcpwatch_api::wire::decode(&line).unwrap();
                let body = match req.body {
                    GateOp::Open { .. } => GateVerdict::Opened { server: "s".into(), failure_mode: FailureMode::Open },
                    _ => GateVerdict::Drop { reason: "gate line not held".into() },
                };
                w.write_all(&mcpwatch_api::wire::encode(&GateResponse { seq: req.seq, body }).unwrap()).unwrap();
                line.clear();
            }
        });
        let Opening::Opened(gate, mode) = Gate::open(&path, &["srv".into()]).unwrap() else { panic!("refused") };
        let degraded = Degraded { mode, warned: AtomicBool::new(false) };
        let (onward, back) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
        let mut client = io::Cursor::new(b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/call\",\"params\":{\"name\":\"x\"}}\n".to_vec());
        pump(&mut client, Side::Client, &gate, &degraded, &onward, &back);
        assert!(onward.lock().unwrap().is_empty(), "nothing reached the server");
        let answer: serde_json::Value = serde_json::from_slice(back.lock().unwrap().trim_ascii()).unwrap();
        assert_eq!(answer["id"], 5);
        assert!(answer["error"]["message"].as_str().unwrap().contains("gate line not held"), "{answer}");
    }

    #[test]
    fn lines_are_bounded() {
        let mut big = vec![b'x'; MAX_GATE_LINE + 10];
        big.push(b'\n');
        big.extend_from_slice(b"{}\n");
        let mut r = io::Cursor::new(big);
        let mut buf = Vec::new();
        read_line(&mut r, &mut buf).unwrap().unwrap();
        assert!(std::str::from_utf8(&buf).is_err(), "an over-long line is never passed on");
        read_line(&mut r, &mut buf).unwrap().unwrap();
        assert_eq!(buf, b"{}");
        assert!(read_line(&mut r, &mut buf).unwrap().is_none());
    }
}
