//! MCP over WebSocket found by what the client sends, not by what its handshake says.
//!
//! The handshake gate ([`super::upgrade::gate`]) refuses a WebSocket that *says* it
//! carries MCP (subprotocol `mcp`, MCP headers, a governed destination). A client that
//! says nothing, toward a server never seen before, used to get a byte-for-byte splice:
//! picking WebSocket instead of a POST was enough to take calls past the policy and the
//! audit. So after a `101` the client's frames are read here (RFC 6455 §5): every data
//! message (and control payload) is reassembled, unmasked and classified like a POST body
//! ([`integrity::body_shape`]) before its frames go on.
//!
//! - A message that is MCP makes the socket MCP over WebSocket, which mcpwatch does not
//!   govern message by message. In enforce mode (the destination's strictest mode) the
//!   message is not forwarded: it is recorded, the client gets a close frame (1008) and
//!   both sides are closed. In audit and warn mode every MCP message is recorded (method,
//!   tool, keyed argument hash, and an alert on the first) and committed before its
//!   frames are forwarded, as for a POST; fail-closed refuses when a record cannot be
//!   written.
//! - Compression would hide the payload, so the handshake's `Sec-WebSocket-Extensions`
//!   is never offered to the server, a `101` that turns an extension on anyway is not
//!   spliced ([`super::upgrade::splice`]), and a frame with a reserved bit or opcode
//!   closes the socket (1002) in every mode.
//! - A message larger than `limits.max_body_bytes` cannot be held for inspection: one that
//!   starts like JSON is refused in enforce mode (1009) and alerted otherwise; other
//!   large messages (a browser-automation screenshot) stream on.
//! - A message is held until it is whole, at most `limits.body_timeout` from its first
//!   frame (then 1008), so a client cannot hold memory with one it never finishes.
//! - Other messages go on unchanged and unrecorded; the server's frames are relayed as
//!   they are.

use std::sync::Arc;

use bytes::BytesMut;
use mcpwatch_api::{CallStatus, MessageKind};
use mcpwatch_mcp::integrity::{self, BodyShape};
use mcpwatch_mcp::jsonrpc::{self, Parsed};
use mcpwatch_policy::Mode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::scope::{Scope, C2S};
use crate::record;
use crate::state::{Counters, Shared};

/// The audit record's `transport` for messages found on a WebSocket.
pub(super) const TRANSPORT: &str = "websocket";

/// Longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEAD: usize = 14;
/// How much of an oversized message is looked at to tell whether it may be JSON.
const PREFIX: usize = 64;

/// One frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    /// Bytes of the header itself.
    len: usize,
    /// Bytes of payload after it.
    payload: u64,
}

impl Head {
    fn is_control(self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Why the client's side of a socket is closed by mcpwatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Close {
    /// A frame no extension-free WebSocket sends (RFC 6455 §5.2, §7.4.1: 1002).
    Protocol(&'static str),
    /// MCP in enforce mode, not governed over WebSocket (1008).
    Policy(String),
    /// Too large to inspect and may be JSON, in enforce mode (1009).
    TooLarge(String),
    /// The record could not be written and failure_mode is closed (1011).
    Unaudited,
    /// A message not whole within `limits.body_timeout` (1008).
    Slow(std::time::Duration),
    /// The budget for bodies held for inspection (`bodies`) cannot hold the message
    /// (1013, try again later).
    Busy,
}

impl Close {
    fn code(&self) -> u16 {
        match self {
            Close::Protocol(_) => 1002,
            Close::Policy(_) | Close::Slow(_) => 1008,
            Close::TooLarge(_) => 1009,
            Close::Unaudited => 1011,
            Close::Busy => 1013,
        }
    }

    /// The close frame the client gets (unmasked, as a server sends it); the reason is
    /// cut to fit a control frame.
    fn frame(&self) -> Vec<u8> {
        let reason = match self {
            Close::Protocol(why) => format!("mcpwatch: {why}"),
            Close::Policy(_) => "mcpwatch: MCP over WebSocket is not inspected; refused (enforce mode)".to_string(),
            Close::TooLarge(_) => "mcpwatch: message too large to inspect; refused (enforce mode)".to_string(),
            Close::Unaudited => "mcpwatch: audit store unavailable (fail-closed)".to_string(),
            Close::Slow(t) => format!("mcpwatch: message not complete within {t:?} (limits.body_timeout)"),
            Close::Busy => "mcpwatch: too many bodies held for inspection (limits.max_buffered_body_bytes); try again later".to_string(),
        };
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut f = vec![0x88, (2 + end) as u8];
        f.extend_from_slice(&self.code().to_be_bytes());
        f.extend_from_slice(&reason.as_bytes()[..end]);
        f
    }
}

/// Parse a frame header from the front of `buf`: `Ok(None)` until it is all there.
pub(super) fn parse_head(buf: &[u8]) -> Result<Option<Head>, Close> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    let (payload, mut len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let n = u64::from_be_bytes(b.try_into().unwrap_or_default());
                if n >> 63 != 0 {
                    return Err(Close::Protocol("frame length with its top bit set"));
                }
                (n, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let Some(m) = buf.get(len..len + 4) else { return Ok(None) };
        len += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    let head = Head { fin: b0 & 0x80 != 0, rsv: (b0 >> 4) & 0x7, opcode: b0 & 0xf, mask, len, payload };
    if head.rsv != 0 {
        // No extension was negotiated (the offer is stripped): a set bit is compression
        // or another encoding mcpwatch cannot read.
        return Err(Close::Protocol("frame with a reserved bit set (no extension was negotiated)"));
    }
    match head.opcode {
        0..=2 | 8..=10 => {}
        _ => return Err(Close::Protocol("frame with a reserved opcode")),
    }
    if head.is_control() && (!head.fin || head.payload > 125) {
        return Err(Close::Protocol("fragmented or oversized control frame"));
    }
    Ok(Some(head))
}

/// A frame's payload (from its first byte) unmasked in place.
fn unmask(payload: &mut [u8], mask: Option<[u8; 4]>) {
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
}

/// What the client's frames are judged by: the exchange's scope and the destination's
/// strictest mode, taken when the socket opened.
pub(super) struct Watch {
    shared: Arc<Shared>,
    scope: Scope,
    mode: Mode,
    /// An MCP message was seen (its record carried the alert).
    mcp: bool,
    /// An oversized JSON-like message was alerted.
    alerted_large: bool,
}

impl Watch {
    pub(super) fn new(shared: Arc<Shared>, scope: Scope, mode: Mode) -> Watch {
        Watch { shared, scope, mode, mcp: false, alerted_large: false }
    }

    /// Judge one complete message (or control payload): `Ok` to forward it.
    async fn judge(&mut self, payload: &[u8]) -> Result<(), Close> {
        let shape = integrity::body_shape(payload);
        if !(shape.is_mcp() || (self.mcp && shape == BodyShape::JsonRpc)) {
            return Ok(());
        }
        let shared = self.shared.clone();
        let parsed = jsonrpc::parse_body(payload);
        let first = parsed.messages().next();
        let what = first.and_then(|m| m.method()).map(|m| match first.and_then(|m| m.target_name()) {
            Some(name) => format!("`{m}` `{name}`"),
            None => format!("`{m}`"),
        });
        let what = what.unwrap_or_else(|| "a JSON-RPC message".into());
        let size = payload.len() as u64;
        let records = self.records(&parsed, size);
        if records.is_empty() {
            return Ok(());
        }
        let dst = self.scope.ctx.dst_key();
        shared.inventory.saw_message(&crate::inventory::Sighting {
            dst,
            transport: TRANSPORT,
            ..self.scope.sighting(first.and_then(|m| m.method()), first.and_then(|m| m.target_name()))
        });
        if self.mode == Mode::Enforce {
            Counters::inc(&shared.counters.refused_protocol);
            let alert = format!("MCP over WebSocket (a message on the socket is {what}) cannot be inspected: refused, socket closed (enforce mode)");
            tracing::warn!(dst = %dst, "{alert}");
            for (i, mut rec) in records.into_iter().enumerate() {
                if i == 0 {
                    rec.alerts.push(alert.clone());
                }
                rec.notes.push("refused by mcpwatch; not forwarded".into());
                record::write_closed(&shared, rec, CallStatus::TransportError { reason: "1008 refused by mcpwatch (MCP over WebSocket)".into() });
            }
            return Err(Close::Policy(alert));
        }
        let mut failed = false;
        for (i, mut rec) in records.into_iter().enumerate() {
            if i == 0 && !self.mcp {
                let alert = format!("MCP over WebSocket (a message on the socket is {what}) cannot be inspected: relayed uninspected ({:?} mode)", self.mode);
                tracing::warn!(dst = %dst, "{alert}");
                rec.alerts.push(alert);
            }
            rec.notes.push("over WebSocket: recorded, not governed".into());
            rec.status = CallStatus::Sent;
            failed |= shared.begin_record(&rec).is_err();
        }
        self.mcp = true;
        let enforced = self.mode == mcpwatch_policy::Mode::Enforce;
        record::commit(&shared, true, failed, || enforced).await.map_err(|_| Close::Unaudited)
    }

    /// One record per message of the payload (one `invalid` record for MCP-shaped
    /// bytes that do not parse).
    fn records(&self, parsed: &Parsed, size: u64) -> Vec<mcpwatch_api::AuditRecord> {
        // The client's answers to the server's requests are not calls: not recorded.
        let mut recs: Vec<_> = parsed
            .messages()
            .filter(|m| m.method().is_some())
            .map(|m| {
                let kind = if m.id().is_some() { MessageKind::Request } else { MessageKind::Notification };
                self.scope.record(&self.shared, kind, C2S, Some(m), size)
            })
            .collect();
        if recs.is_empty() && parsed.messages().next().is_none() {
            let mut rec = self.scope.record(&self.shared, MessageKind::Invalid, C2S, None, size);
            rec.notes.push("MCP-shaped message that is not valid JSON-RPC".into());
            recs.push(rec);
        }
        for r in &mut recs {
            r.transport = TRANSPORT.into();
        }
        recs
    }

    /// A message past the inspection limit whose first bytes are `prefix`.
    fn oversized(&mut self, prefix: &[u8]) -> Result<(), Close> {
        if !integrity::may_be_json(prefix) {
            return Ok(());
        }
        let limit = self.shared.config.limits.max_body_bytes;
        let shared = self.shared.clone();
        if self.mode == Mode::Enforce {
            Counters::inc(&shared.counters.refused_protocol);
            let alert = format!("WebSocket message larger than limits.max_body_bytes ({limit} bytes) that may be JSON: not inspectable, refused, socket closed (enforce mode)");
            self.scope.refuse(&shared, http::StatusCode::PAYLOAD_TOO_LARGE, alert.clone(), "");
            return Err(Close::TooLarge(alert));
        }
        if !self.alerted_large {
            self.alerted_large = true;
            self.scope.alert_forwarded(&shared, format!("WebSocket message larger than limits.max_body_bytes ({limit} bytes) that may be JSON: relayed uninspected ({:?} mode)", self.mode));
        }
        Ok(())
    }
}

/// Relay an upgraded WebSocket: the server's bytes as they come, the client's through
/// [`inspect`]. Returns when both sides are done, or after mcpwatch closed the socket.
pub(super) async fn relay<C, S>(client: C, server: S, mut watch: Watch)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    let closed = {
        let down = async {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
            let _ = cw.shutdown().await;
        };
        let up = inspect(&mut cr, &mut sw, &mut watch);
        tokio::pin!(down, up);
        tokio::select! {
            closed = &mut up => match closed {
                Ok(()) => {
                    // The client is done: the server's answers still come back.
                    down.await;
                    None
                }
                Err(c) => Some(c),
            },
            () = &mut down => up.await.err(),
        }
    };
    if let Some(close) = closed {
        tracing::debug!(?close, "closing a WebSocket");
        let _ = cw.write_all(&close.frame()).await;
        let _ = cw.shutdown().await;
        let _ = sw.shutdown().await;
    }
}

/// The client → server direction: frames read, messages judged, frames forwarded
/// unchanged once their message may go. `Ok` when the client is done.
async fn inspect<R, W>(client: &mut R, server: &mut W, watch: &mut Watch) -> Result<(), Close>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let limit = watch.shared.config.limits.max_body_bytes;
    // The message being held takes from the daemon-wide budget (twice its payload: its
    // frames as received and its unmasked copy), given back when it has gone on.
    let process = watch.scope.ctx.origin.process.clone();
    let mut lease = watch.shared.bodies.lease(process.as_deref());
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // The message being assembled: its frames as received, and its unmasked payload.
    let mut held = BytesMut::new();
    let mut message: Vec<u8> = Vec::new();
    let mut in_message = false;
    // Passing an oversized message through: its remaining frames are not held.
    let mut streaming = false;
    // Read more of the client; at its end, a message not yet whole never goes.
    // A message being held must be whole within `limits.body_timeout` of its first frame,
    // as a POST body must: a client cannot hold memory by never finishing one.
    let timeout = watch.shared.config.limits.body_timeout;
    let mut since: Option<tokio::time::Instant> = None;
    macro_rules! more {
        () => {{
            buf.reserve(8 * 1024);
            let read = client.read_buf(&mut buf);
            let read = match since {
                Some(t) => match tokio::time::timeout_at(t + timeout, read).await {
                    Ok(r) => r,
                    Err(_) => return Err(Close::Slow(timeout)),
                },
                None => read.await,
            };
            match read {
                Ok(0) | Err(_) => {
                    let _ = server.shutdown().await;
                    return Ok(());
                }
                Ok(_) => {}
            }
        }};
    }
    macro_rules! send {
        ($bytes:expr) => {
            if server.write_all($bytes).await.is_err() {
                return Ok(());
            }
        };
    }
    loop {
        let head = loop {
            if let Some(h) = parse_head(&buf[..buf.len().min(MAX_HEAD)])? {
                break h;
            }
            more!();
        };
        let is_data = !head.is_control();
        if is_data && !streaming && since.is_none() {
            since = Some(tokio::time::Instant::now());
        }
        if is_data {
            let continuation = head.opcode == 0;
            if continuation != (in_message || streaming) {
                return Err(Close::Protocol("data frame out of sequence"));
            }
        }
        if is_data && !streaming && message.len() as u64 + head.payload > limit as u64 {
            // Too large to hold: judged by its first bytes, then streamed from here on.
            let mut prefix = message.iter().take(PREFIX).copied().collect::<Vec<u8>>();
            if prefix.len() < PREFIX {
                let want = ((PREFIX - prefix.len()) as u64).min(head.payload) as usize;
                while buf.len() < head.len + want {
                    more!();
                }
                let mut p = buf[head.len..head.len + want].to_vec();
                unmask(&mut p, head.mask);
                prefix.extend_from_slice(&p);
            }
            watch.oversized(&prefix)?;
            send!(&held);
            held.clear();
            message.clear();
            in_message = false;
            streaming = true;
            since = None;
        }
        if is_data && streaming {
            // Forward as it comes, without holding.
            let mut left = head.payload;
            let first = buf.split_to(head.len);
            send!(&first);
            while left > 0 {
                if buf.is_empty() {
                    more!();
                }
                let n = (buf.len() as u64).min(left) as usize;
                let chunk = buf.split_to(n);
                send!(&chunk);
                left -= n as u64;
            }
            streaming = !head.fin;
            continue;
        }
        if is_data && !lease.grow((head.payload as usize).saturating_mul(2)) {
            let shared = watch.shared.clone();
            let why = "WebSocket message refused: the budget for bodies held for inspection (limits.max_buffered_body_bytes) is spent; socket closed".to_string();
            watch.scope.refuse(&shared, http::StatusCode::SERVICE_UNAVAILABLE, why, "");
            return Err(Close::Busy);
        }
        let total = head.len + head.payload as usize;
        while buf.len() < total {
            more!();
        }
        let frame = buf.split_to(total);
        if !is_data {
            let mut payload = frame[head.len..].to_vec();
            unmask(&mut payload, head.mask);
            watch.judge(&payload).await?;
            if head.opcode == 8 {
                // The client closes: an unfinished message never goes.
                held.clear();
                message.clear();
                in_message = false;
                lease = watch.shared.bodies.lease(process.as_deref());
            }
            send!(&frame);
            continue;
        }
        let start = message.len();
        message.extend_from_slice(&frame[head.len..]);
        unmask(&mut message[start..], head.mask);
        held.extend_from_slice(&frame);
        in_message = !head.fin;
        if head.fin {
            watch.judge(&message).await?;
            send!(&held);
            held.clear();
            message.clear();
            since = None;
            lease = watch.shared.bodies.lease(process.as_deref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as RFC 6455 requires of clients.
    pub(crate) fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn headers_parse_only_when_complete() {
        let f = frame(true, 1, &[b'x'; 300]);
        for cut in 0..8 {
            assert_eq!(parse_head(&f[..cut]), Ok(None), "cut at {cut}");
        }
        let h = parse_head(&f).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode, h.len, h.payload), (true, 1, 8, 300));
        let mut p = f[h.len..].to_vec();
        unmask(&mut p, h.mask);
        assert_eq!(p, vec![b'x'; 300]);
    }

    #[test]
    fn what_no_plain_websocket_sends_is_refused() {
        let mut compressed = frame(true, 1, b"{}");
        compressed[0] |= 0x40; // RSV1: permessage-deflate
        assert!(matches!(parse_head(&compressed), Err(Close::Protocol(_))));
        assert!(matches!(parse_head(&frame(true, 3, b"{}")), Err(Close::Protocol(_))), "reserved opcode");
        assert!(matches!(parse_head(&frame(false, 9, b"")), Err(Close::Protocol(_))), "fragmented ping");
        assert!(matches!(parse_head(&frame(true, 9, &[0; 126])), Err(Close::Protocol(_))), "long ping");
        let mut huge = frame(true, 2, b"");
        huge[1] = 0x80 | 127;
        huge.splice(2..2, [0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(parse_head(&huge), Err(Close::Protocol(_))), "top length bit");
    }

    #[test]
    fn a_close_frame_fits_a_control_frame() {
        let c = Close::Policy("x".repeat(500));
        let f = c.frame();
        assert_eq!(f[0], 0x88);
        assert!(f.len() <= 127 && f[1] as usize == f.len() - 2);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 1008);
    }
}
