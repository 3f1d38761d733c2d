//! The gate protocol: how `mcpwatch wrap` asks the daemon about each stdio message.
//!
//! Why it exists: a stdio MCP server cannot be redirected to mcpwatchd the way a socket
//! can, so the wrapper sits in the pipe and asks the daemon, message by message, what to
//! do (one policy, one audit store, one approval queue for network and stdio traffic).
//! The gate is served on its own Unix socket ([`DEFAULT_GATE_SOCKET`], world-connectable)
//! that answers only these requests; the daemon identifies the caller from `SO_PEERCRED`,
//! never from anything in a message.
//!
//! Framing is the control socket's ([`crate::wire`]): one JSON object per line each way.
//! Every request carries a `seq` the answer repeats, so the wrapper can have a client
//! message and a server message in flight at once.

use serde::{Deserialize, Serialize};

use crate::FailureMode;

/// Default path of the gate socket (next to the control socket).
pub const DEFAULT_GATE_SOCKET: &str = "/run/mcpwatch/gate.sock";

/// File next to the gate socket holding the daemon's failure mode (`open` / `closed`),
/// written at start-up and left in place when the daemon stops, so a wrapper that
/// cannot reach the gate knows whether to relay or refuse.
pub const FAILURE_MODE_FILE: &str = "failure-mode";

/// Longest gate line (a request carries one whole JSON-RPC message).
pub const MAX_GATE_LINE: usize = 16 * 1024 * 1024;

/// The gate socket that goes with a control socket: same directory, `gate.sock`.
pub fn gate_socket_for(control_socket: &std::path::Path) -> std::path::PathBuf {
    control_socket.with_file_name("gate.sock")
}

/// The failure-mode file that goes with a gate socket.
pub fn failure_mode_file_for(gate_socket: &std::path::Path) -> std::path::PathBuf {
    gate_socket.with_file_name(FAILURE_MODE_FILE)
}

/// Parse the failure-mode file's text (`open` / `closed`, surrounding space ignored).
pub fn parse_failure_mode(text: &str) -> Option<FailureMode> {
    match text.trim() {
        "open" => Some(FailureMode::Open),
        "closed" => Some(FailureMode::Closed),
        _ => None,
    }
}

/// One request from the wrapper.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateRequest {
    pub seq: u64,
    #[serde(flatten)]
    pub body: GateOp,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum GateOp {
    /// First request of a connection: the wrapped server's command line. Nothing here
    /// names the client; the daemon attributes the session to the wrapper's parent
    /// process as the kernel reports it.
    Open { command: Vec<String> },
    /// One line the client wrote to the server's stdin.
    Client { line: String },
    /// One line the server wrote to its stdout.
    Server { line: String },
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateResponse {
    pub seq: u64,
    #[serde(flatten)]
    pub body: GateVerdict,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum GateVerdict {
    /// The session is open: the server's inventory key and the failure mode in force.
    Opened { server: String, failure_mode: FailureMode },
    /// Pass the message on; `line` replaces it when the daemon rewrote it (redaction).
    Forward { line: Option<String> },
    /// Do not pass a client message on; write `line` (a JSON-RPC error) back to the client.
    Answer { line: String },
    /// Do not pass a server message on (e.g. it answers an id the client never sent).
    Drop { reason: String },
    /// The request was not understood or not allowed; the daemon closes the connection.
    Error { message: String },
    /// The daemon is up but will not take this session (its uid has too many wrapped
    /// servers or connections waiting to open); the daemon closes the connection. May come
    /// before the wrapper's `open` is read, with `seq` 0. Never a reason to run the server
    /// unobserved: the wrapper fails closed whatever its failure mode.
    Refused { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_claimed_identity() {
        let r = GateRequest { seq: 7, body: GateOp::Client { line: "{}".into() } };
        let line = crate::wire::encode(&r).unwrap();
        assert_eq!(crate::wire::decode::<GateRequest>(&line).unwrap(), r);
        // Fields a caller adds (a claimed pid) are not part of the protocol.
        let forged = br#"{"seq":1,"op":"open","command":["srv"],"pid":1,"uid":0}"#;
        let r: GateRequest = crate::wire::decode(forged).unwrap();
        assert_eq!(r.body, GateOp::Open { command: vec!["srv".into()] });
        // Control requests are not gate requests.
        assert!(crate::wire::decode::<GateRequest>(br#"{"seq":1,"op":"approve","id":"x"}"#).is_err());
        assert!(crate::wire::decode::<GateRequest>(br#"{"op":"status"}"#).is_err());
        let refused = GateResponse { seq: 0, body: GateVerdict::Refused { message: "full".into() } };
        assert_eq!(crate::wire::decode::<GateResponse>(&crate::wire::encode(&refused).unwrap()).unwrap(), refused);
    }

    #[test]
    fn paths_and_modes() {
        let g = gate_socket_for(std::path::Path::new("/run/mcpwatch/control.sock"));
        assert_eq!(g, std::path::Path::new(DEFAULT_GATE_SOCKET));
        assert_eq!(failure_mode_file_for(&g), std::path::Path::new("/run/mcpwatch/failure-mode"));
        assert_eq!(parse_failure_mode("closed\n"), Some(FailureMode::Closed));
        assert_eq!(parse_failure_mode("open"), Some(FailureMode::Open));
        assert_eq!(parse_failure_mode("x"), None);
    }
}
