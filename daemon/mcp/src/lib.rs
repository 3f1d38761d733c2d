//! mcpwatch-mcp: the MCP wire model, pure and panic-free.
//!
//! The daemon's proxy calls this crate on every HTTP body, SSE event and stdio
//! line it sees. Nothing here does I/O, spawns tasks or reads clocks, and no
//! input makes it panic: a parse failure is a value ([`jsonrpc::Invalid`],
//! [`session::Rejection`]) the proxy turns into a JSON-RPC error, an HTTP 400
//! or an audit note.
//!
//! Typical use (the daemon's proxy keeps its pending calls in its own session tables,
//! keyed as [`Correlator`] keys them, by [`Id::key`]):
//! 1. request body -> [`jsonrpc::parse_body`] -> [`session::check_request`]
//!    (era, batch and routing-header rules) -> per message: [`Message::method`],
//!    [`Message::target_name`], [`Message::args_hash`] for policy and audit;
//! 2. remember each request id in a [`correlate::Correlator`];
//! 3. response body or each [`sse::SseParser`] event -> `parse_body` ->
//!    `Correlator::take` to pair it; [`server_info`] for `initialize`,
//!    `server/discover` and `tools/list` results; [`Message::result_hash`];
//! 4. stream end -> `Correlator::drain_key` -> transport errors.
//!
//! Legacy HTTP+SSE (2024-11-05): the `endpoint` event is decoded by
//! [`legacy::parse_endpoint`].
//!
//! ```
//! use mcpwatch_mcp::{Correlator, HeaderSignals, Parsed, SseParser, parse_body, session};
//!
//! let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/tmp/a"}}}"#;
//! let parsed = parse_body(body);
//! let headers = HeaderSignals { protocol_version: Some("2025-06-18"), ..Default::default() };
//! let era = session::check_request(&headers, &parsed, None).expect("acceptable request");
//! assert_eq!(era.map(|e| e.allows_batch()), Some(false));
//!
//! let key = mcpwatch_mcp::keyed::HashKey::new(b"per-host secret");
//! let mut pending = Correlator::new(10_000);
//! for m in parsed.messages() {
//!     assert_eq!(m.target_name(), Some("read_file"));
//!     if let Some(id) = m.id() {
//!         let evicted = pending.insert("conn-1", id.clone(), m.args_hash(&key));
//!         assert!(evicted.is_empty());
//!     }
//! }
//!
//! let mut sse = SseParser::default();
//! let mut events = sse.push(b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,");
//! events.extend(sse.push(b"\"result\":{\"content\":[]}}\n\n"));
//! for ev in events.iter().filter(|e| e.is_message()) {
//!     if let Parsed::Single(reply) = parse_body(ev.data.as_bytes()) {
//!         let args_hash = pending.take("conn-1", reply.id().expect("reply id"));
//!         assert!(args_hash.is_some());
//!     }
//! }
//! assert!(pending.drain_key("conn-1").is_empty());
//! ```

pub mod canonical;
pub mod correlate;
pub mod integrity;
pub mod jsonrpc;
pub mod keyed;
pub mod legacy;
pub mod message;
pub mod server_info;
pub mod session;
pub mod sse;

pub use canonical::{canonical_hash, canonical_json, sha256_hex};
pub use correlate::{ConversationKey, Correlator, Evicted};
pub use jsonrpc::{Id, IdKey, Invalid, Limits, Message, Parsed, error_response, parse_body, parse_body_with};
pub use session::{Era, HeaderSignals, Rejection};
pub use sse::{SseEvent, SseParser};
