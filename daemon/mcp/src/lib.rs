//! mcpwatch-mcp: the MCP wire model, pure and panic-free.
//!
//! The daemon's proxy calls this crate on every HTTP body, SSE event and stdio
//! line it sees. Nothing here does I/O, spawns tasks or reads clocks, and no
//! input makes it panic: a parse failure is a value ([`jsonrpc::Invalid`],
//! [`session::Rejection`]) the proxy turns into a JSON-RPC error, an HTTP 400
//! or an audit note.
//!
//! Typical use by the proxy:
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

pub mod canonical;
pub mod correlate;
pub mod jsonrpc;
pub mod legacy;
pub mod message;
pub mod server_info;
pub mod session;
pub mod sse;

pub use canonical::{canonical_hash, canonical_json, sha256_hex};
pub use correlate::{ConversationKey, Correlator, Evicted};
pub use jsonrpc::{Id, Invalid, Limits, Message, Parsed, error_response, parse_body, parse_body_with};
pub use session::{Era, HeaderSignals, Rejection};
pub use sse::{SseEvent, SseParser};
