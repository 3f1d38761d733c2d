//! Stdio MCP servers: turning captured pipe/socketpair bytes into MCP events.
//!
//! Why it exists: a stdio MCP server talks to its client over fds 0/1, never
//! through the network redirect, so the proxy never sees it. The kernel side
//! (raw_tracepoint sys_enter/sys_exit on a watched-pid map) hands user space
//! chunks of what a watched server read or wrote; this module reassembles them
//! into newline-delimited JSON-RPC lines per (pid, fd, direction), parses them
//! with `mcpwatch-mcp`, and reports what the inventory and the audit need:
//! server identity, tools lists, and tool calls (observed only: the kernel
//! cannot block a write that already happened).
//!
//! Everything is bounded: bytes buffered per stream ([`MAX_LINE`]), streams
//! tracked at once ([`MAX_STREAMS`]), requests awaiting their response
//! ([`MAX_PENDING`]). Lost data is never silent: a truncated chunk, an
//! overlong line or a ring-buffer drop reported by the kernel sets a `lost`
//! mark on the next event of that stream, and a counter.

use std::collections::HashSet;

use mcpwatch_mcp::jsonrpc::{self, Id, Message};
use serde_json::Value;

use crate::session::BoundedMap;

pub mod task;

/// Longest JSON-RPC line kept (bytes); longer lines are dropped and counted.
pub const MAX_LINE: usize = 4 * 1024 * 1024;
/// Streams (pid, fd, direction) reassembled at once.
pub const MAX_STREAMS: usize = 4096;
/// Requests awaiting their response, over all streams.
pub const MAX_PENDING: usize = 16_384;
/// Bytes of partial lines held for all streams together. [`MAX_LINE`] times
/// [`MAX_STREAMS`] is 16 GiB, and the programs capture every descriptor of a watched
/// process: one process with enough pipes, writing lines it never ends, could make the
/// daemon hold that. Past this bound a stream's partial line is dropped (its next event
/// carries `lost`), as an overlong line is.
pub const MAX_BUFFERED: usize = 64 << 20;

/// Which way the bytes went, seen from the watched server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The server read them (client → server).
    Read,
    /// The server wrote them (server → client).
    Write,
}

/// One chunk captured by the kernel.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub pid: u32,
    pub fd: u32,
    pub dir: Direction,
    pub data: Vec<u8>,
    /// The syscall moved more bytes than the kernel copied: the tail is missing.
    pub truncated: bool,
}

/// What a reassembled line meant.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The server answered `initialize`.
    ServerInfo { pid: u32, name: Option<String>, version: Option<String>, protocol_version: Option<String> },
    /// The server answered `tools/list` (`first_page`: the request had no cursor).
    ToolsList { pid: u32, tools: Vec<Value>, first_page: bool, last_page: bool, lost: bool },
    /// The client asked the server to run a tool.
    ToolCall { pid: u32, id: Id, name: String, arguments: Option<Value>, lost: bool, unmatched: bool },
    /// The server answered a tool call (`is_error`: error response or `isError`).
    ToolResult { pid: u32, id: Id, name: String, is_error: bool, lost: bool },
}

/// Does a parse hold a message refused only for an id, method or name too long to keep?
fn has_overlong(parsed: &jsonrpc::Parsed) -> bool {
    let overlong = |e: &jsonrpc::Invalid| matches!(e, jsonrpc::Invalid::TooLong { .. });
    match parsed {
        jsonrpc::Parsed::Invalid(e) => overlong(e),
        jsonrpc::Parsed::Batch(items) => items.iter().any(|i| i.as_ref().err().is_some_and(overlong)),
        jsonrpc::Parsed::Single(_) => false,
    }
}

#[derive(Default)]
struct Stream {
    buf: Vec<u8>,
    /// Bytes were lost on this stream since the last event.
    lost: bool,
    /// The current line overflowed [`MAX_LINE`]: skip to the next newline.
    skipping: bool,
}

/// The pending request a response will be matched against.
#[derive(Clone)]
struct PendingReq {
    method: String,
    tool: Option<String>,
    has_cursor: bool,
}

/// Reassembler and parser for every watched stdio stream.
pub struct StdioObserver {
    streams: BoundedMap<(u32, u32, Direction), Stream>,
    pending: BoundedMap<(u32, mcpwatch_mcp::IdKey), PendingReq>,
    /// Bytes of the streams' partial lines, at most [`MAX_BUFFERED`].
    buffered: usize,
    lost_total: u64,
    /// Kernel drops reported for a pid, not yet attached to an event.
    lost_pids: HashSet<u32>,
}

impl Default for StdioObserver {
    fn default() -> Self {
        Self::new()
    }
}

impl StdioObserver {
    pub fn new() -> Self {
        StdioObserver {
            streams: BoundedMap::new(MAX_STREAMS),
            pending: BoundedMap::new(MAX_PENDING),
            buffered: 0,
            lost_total: 0,
            lost_pids: HashSet::new(),
        }
    }

    /// Chunks or lines lost so far (truncation, overlong lines, kernel drops).
    pub fn lost_total(&self) -> u64 {
        self.lost_total
    }

    /// The kernel could not queue `n` chunks (ring buffer full); it does not say
    /// whose, so the caller marks every stream it knows with [`Self::mark_lost`].
    pub fn note_kernel_loss(&mut self, n: u64) {
        self.lost_total += n;
    }

    /// Data of `pid` may be missing: its next event carries `lost`.
    pub fn mark_lost(&mut self, pid: u32) {
        if self.lost_pids.len() < MAX_STREAMS {
            self.lost_pids.insert(pid);
        }
    }

    /// The process exited: forget its streams and pending requests.
    pub fn forget_pid(&mut self, pid: u32) {
        for gone in self.streams.drain_where(|k| k.0 == pid) {
            self.buffered -= gone.buf.len();
        }
        let _ = self.pending.drain_where(|k| k.0 == pid);
        let _ = self.lost_pids.remove(&pid);
    }

    /// Feed one chunk; returns the events of the lines it completed.
    pub fn feed(&mut self, chunk: Chunk) -> Vec<Event> {
        let key = (chunk.pid, chunk.fd, chunk.dir);
        if self.streams.get(&key).is_none() {
            // A stream pushed out loses its partial line: its process's next event says so.
            for ((pid, _, _), gone) in self.streams.insert_entries(key, Stream::default()) {
                self.buffered -= gone.buf.len();
                if !gone.buf.is_empty() || gone.skipping {
                    self.lost_total += 1;
                    self.mark_lost(pid);
                }
            }
        }
        let mut lines: Vec<(Vec<u8>, bool)> = Vec::new();
        let mut newly_lost = 0u64;
        {
            let Some(s) = self.streams.get_mut(&key) else { return Vec::new() };
            let mut rest: &[u8] = &chunk.data;
            while !rest.is_empty() {
                match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        // A completed line leaves the stream (it is read before this
                        // returns): what it held is no longer buffered.
                        self.buffered -= s.buf.len();
                        if s.skipping {
                            s.skipping = false;
                        } else if s.buf.len() + i <= MAX_LINE {
                            s.buf.extend_from_slice(&rest[..i]);
                            lines.push((std::mem::take(&mut s.buf), std::mem::take(&mut s.lost)));
                        } else {
                            s.buf = Vec::new();
                            s.lost = true;
                            newly_lost += 1;
                        }
                        rest = &rest[i + 1..];
                    }
                    None => {
                        if !s.skipping {
                            if s.buf.len() + rest.len() <= MAX_LINE && self.buffered + rest.len() <= MAX_BUFFERED {
                                s.buf.extend_from_slice(rest);
                                self.buffered += rest.len();
                            } else {
                                self.buffered -= s.buf.len();
                                s.buf = Vec::new();
                                s.skipping = true;
                                s.lost = true;
                                newly_lost += 1;
                            }
                        }
                        rest = &[];
                    }
                }
            }
            if chunk.truncated {
                // The tail of this write is missing: the partial line cannot be trusted.
                self.buffered -= s.buf.len();
                s.buf = Vec::new();
                s.skipping = true;
                s.lost = true;
                newly_lost += 1;
            }
        }
        self.lost_total += newly_lost;
        let kernel_lost = self.lost_pids.remove(&chunk.pid);
        let mut events = Vec::new();
        for (i, (line, lost)) in lines.into_iter().enumerate() {
            let lost = lost || (i == 0 && kernel_lost);
            self.line(chunk.pid, chunk.dir, &line, lost, &mut events);
        }
        events
    }

    /// Calls refused as invalid for an id or name too long to keep
    /// (`jsonrpc::MAX_ID_BYTES`, `MAX_TARGET_BYTES`): the proxy and the gate refuse them,
    /// but a server observed here still runs them. They are reported with the id and name
    /// cut (so marked `lost`), and nothing is kept to match their answer.
    fn overlong_calls(&mut self, pid: u32, line: &[u8], out: &mut Vec<Event>) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else { return };
        let items = match &v {
            Value::Array(a) => a.iter().collect::<Vec<_>>(),
            one => vec![one],
        };
        for m in items {
            if m.get("method").and_then(Value::as_str) != Some("tools/call") || jsonrpc::message_from_value(m.clone()).is_ok() {
                continue;
            }
            let id = match m.get("id") {
                Some(Value::String(s)) => Id::String(jsonrpc::clip(s, 64).to_owned()),
                Some(Value::Number(n)) => Id::Number(n.clone()),
                _ => continue,
            };
            let params = m.get("params");
            let Some(name) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else { continue };
            let arguments = params.and_then(|p| p.get("arguments")).cloned();
            out.push(Event::ToolCall { pid, id, name: jsonrpc::clip(name, 256).to_owned(), arguments, lost: true, unmatched: true });
        }
    }

    fn line(&mut self, pid: u32, dir: Direction, line: &[u8], lost: bool, out: &mut Vec<Event>) {
        let trimmed = line.strip_suffix(b"\r").unwrap_or(line);
        if trimmed.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let parsed = jsonrpc::parse_body(trimmed);
        if dir == Direction::Read && has_overlong(&parsed) {
            self.overlong_calls(pid, trimmed, out);
        }
        for m in parsed.messages() {
            match (dir, m) {
                (Direction::Read, Message::Request { id, method, params }) => {
                    let tool = (method == "tools/call").then(|| params.as_ref().and_then(|p| p.get("name")).and_then(Value::as_str).map(str::to_string)).flatten();
                    let has_cursor = params.as_ref().and_then(|p| p.get("cursor")).is_some_and(|c| !c.is_null());
                    let _ = self.pending.insert((pid, id.key()), PendingReq { method: method.clone(), tool: tool.clone(), has_cursor });
                    if let Some(name) = tool {
                        let arguments = params.as_ref().and_then(|p| p.get("arguments")).cloned();
                        out.push(Event::ToolCall { pid, id: id.clone(), name, arguments, lost, unmatched: false });
                    }
                }
                (Direction::Write, Message::Response { id, result }) => {
                    let Some(req) = self.pending.remove(&(pid, id.key())) else { continue };
                    match req.method.as_str() {
                        "initialize" => {
                            let info = result.get("serverInfo");
                            let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
                            out.push(Event::ServerInfo {
                                pid,
                                name: s(info.and_then(|i| i.get("name"))),
                                version: s(info.and_then(|i| i.get("version"))),
                                protocol_version: s(result.get("protocolVersion")),
                            });
                        }
                        "tools/list" => {
                            let tools = result.get("tools").and_then(Value::as_array).cloned().unwrap_or_default();
                            let last_page = result.get("nextCursor").is_none_or(Value::is_null);
                            out.push(Event::ToolsList { pid, tools, first_page: !req.has_cursor, last_page, lost });
                        }
                        "tools/call" => {
                            let is_error = result.get("isError").and_then(Value::as_bool).unwrap_or(false);
                            out.push(Event::ToolResult { pid, id: id.clone(), name: req.tool.unwrap_or_default(), is_error, lost });
                        }
                        _ => {}
                    }
                }
                (Direction::Write, Message::Error { id: Some(id), .. }) => {
                    let Some(req) = self.pending.remove(&(pid, id.key())) else { continue };
                    if req.method == "tools/call" {
                        out.push(Event::ToolResult { pid, id: id.clone(), name: req.tool.unwrap_or_default(), is_error: true, lost });
                    }
                }
                _ => {}
            }
        }
    }
}

/// The inventory and audit key of a stdio server: its launch identity
/// (`stdio://npm:@scope/name`, `stdio://script:/abs/server.py`, from
/// `mcpwatch_policy::launch`, the same key `mcpwatch wrap`, `[[server]] package/command`
/// and `mcpwatch list` use), relative script and program paths resolved against the
/// process's working directory `cwd`. A command line nothing can be made of is keyed by a
/// hash of it.
pub fn endpoint_key(argv: &[String], cwd: Option<&std::path::Path>) -> String {
    match mcpwatch_policy::launch::identify(argv) {
        Some(mut l) => {
            if !l.kind.is_package() && !l.name.starts_with('/') && l.name.contains(['/', '.'])
                && let Some(dir) = cwd
            {
                l.name = dir.join(&l.name).display().to_string();
            }
            mcpwatch_policy::stdio_endpoint(&l)
        }
        None => format!("stdio:{}", mcpwatch_mcp::canonical::sha256_hex(argv.join(" ").as_bytes()).get(..16).unwrap_or_default()),
    }
}

/// The server a command line names, looked through launchers (`mcpwatch_policy::launch`):
/// the package (`npx -y @scope/pkg` → `@scope/pkg`, `python -m pkg` → `pkg`) or the file
/// name of the script or program (`python3 server.py` → `server.py`).
pub fn server_name(argv: &[String]) -> Option<String> {
    let l = mcpwatch_policy::launch::identify(argv)?;
    Some(if l.kind.is_package() { l.name } else { l.name.rsplit('/').next().unwrap_or(&l.name).to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(pid: u32, dir: Direction, s: &str) -> Chunk {
        Chunk { pid, fd: if dir == Direction::Read { 0 } else { 1 }, dir, data: s.as_bytes().to_vec(), truncated: false }
    }

    #[test]
    fn initialize_tools_and_calls_across_split_writes() {
        let mut o = StdioObserver::new();
        assert!(o.feed(chunk(7, Direction::Read, r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#)).is_empty());
        assert!(o.feed(chunk(7, Direction::Read, "\n")).is_empty());
        let ev = o.feed(chunk(7, Direction::Write, "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocolVersion\":\"2025-06-18\",\"serverInfo\":{\"name\":\"s\",\"version\":\"1\"}}}\n"));
        assert_eq!(ev, vec![Event::ServerInfo { pid: 7, name: Some("s".into()), version: Some("1".into()), protocol_version: Some("2025-06-18".into()) }]);
        o.feed(chunk(7, Direction::Read, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}\n"));
        let ev = o.feed(chunk(7, Direction::Write, "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[{\"name\":\"echo\"}]}}\n"));
        assert!(matches!(&ev[..], [Event::ToolsList { tools, first_page: true, last_page: true, lost: false, .. }] if tools.len() == 1));
        let ev = o.feed(chunk(7, Direction::Read, "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"m\":\"hi\"}}}\n"));
        assert!(matches!(&ev[..], [Event::ToolCall { name, lost: false, .. }] if name == "echo"));
        let ev = o.feed(chunk(7, Direction::Write, "{\"jsonrpc\":\"2.0\",\"id\":3,\"error\":{\"code\":-1,\"message\":\"no\"}}\n"));
        assert!(matches!(&ev[..], [Event::ToolResult { is_error: true, .. }]));
    }

    /// Partial lines of all streams together are bounded ([`MAX_BUFFERED`]): a process
    /// with many descriptors writing lines it never ends cannot make the daemon hold
    /// 4 MiB a stream; a stream past the bound loses its line, and says so.
    #[test]
    fn partial_lines_of_all_streams_are_bounded() {
        let mut o = StdioObserver::new();
        let part = |fd: u32, data: Vec<u8>| Chunk { pid: 9, fd, dir: Direction::Read, data, truncated: false };
        let full = MAX_BUFFERED / MAX_LINE;
        for fd in 0..full as u32 {
            assert!(o.feed(part(fd + 10, vec![b' '; MAX_LINE])).is_empty());
        }
        assert_eq!(o.buffered, MAX_BUFFERED);
        // One more stream's partial line does not fit: dropped, not held.
        o.feed(part(5, vec![b' '; 1024]));
        assert_eq!(o.buffered, MAX_BUFFERED);
        let call = b"\n{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\"}}\n".to_vec();
        let ev = o.feed(part(5, call.clone()));
        assert!(matches!(&ev[..], [Event::ToolCall { lost: true, .. }]), "the stream past the bound says it lost data: {ev:?}");
        // A line that ends gives its bytes back; so does a process that exits.
        o.feed(part(10, b"\n".to_vec()));
        assert_eq!(o.buffered, MAX_BUFFERED - MAX_LINE);
        let ev = o.feed(part(5, call[1..].to_vec()));
        assert!(matches!(&ev[..], [Event::ToolCall { lost: false, .. }]), "{ev:?}");
        o.forget_pid(9);
        assert_eq!(o.buffered, 0);
    }

    /// A call with an id too long to keep is refused on the proxy and the gate, but a
    /// server observed here runs it: it is still reported (id and name cut, marked lost).
    #[test]
    fn a_call_with_an_overlong_id_is_still_reported() {
        let mut o = StdioObserver::new();
        let long = "i".repeat(jsonrpc::MAX_ID_BYTES + 1);
        let line = format!("{{\"jsonrpc\":\"2.0\",\"id\":\"{long}\",\"method\":\"tools/call\",\"params\":{{\"name\":\"delete\",\"arguments\":{{\"t\":1}}}}}}\n");
        let ev = o.feed(chunk(3, Direction::Read, &line));
        assert!(matches!(&ev[..], [Event::ToolCall { name, id: Id::String(id), lost: true, unmatched: true, arguments: Some(_), .. }] if name == "delete" && id.len() == 64), "{ev:?}");
        assert_eq!(o.pending.len(), 0, "nothing kept to match its answer");
    }

    #[test]
    fn a_response_without_its_request_is_ignored() {
        let mut o = StdioObserver::new();
        let ev = o.feed(chunk(1, Direction::Write, "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"serverInfo\":{\"name\":\"forged\"}}}\n"));
        assert!(ev.is_empty());
    }

    #[test]
    fn truncation_and_kernel_loss_mark_the_next_event() {
        let mut o = StdioObserver::new();
        let mut c = chunk(2, Direction::Read, "{\"jsonrpc\":\"2.0\",\"id\":1,\"meth");
        c.truncated = true;
        assert!(o.feed(c).is_empty());
        // The rest of the truncated line is skipped, the next line is marked lost.
        let ev = o.feed(chunk(2, Direction::Read, "od\":\"x\"}\n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"t\"}}\n"));
        assert!(matches!(&ev[..], [Event::ToolCall { lost: true, .. }]));
        assert_eq!(o.lost_total(), 1);
        o.note_kernel_loss(3);
        o.mark_lost(2);
        let ev = o.feed(chunk(2, Direction::Read, "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"t\"}}\n"));
        assert!(matches!(&ev[..], [Event::ToolCall { lost: true, .. }]));
        assert_eq!(o.lost_total(), 4);
    }

    #[test]
    fn overlong_lines_are_dropped_and_counted() {
        let mut o = StdioObserver::new();
        let big = "x".repeat(MAX_LINE + 1);
        assert!(o.feed(chunk(3, Direction::Read, &big)).is_empty());
        assert!(o.feed(chunk(3, Direction::Read, "tail\n")).is_empty());
        let ev = o.feed(chunk(3, Direction::Read, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"t\"}}\n"));
        assert!(matches!(&ev[..], [Event::ToolCall { lost: true, .. }]));
        assert_eq!(o.lost_total(), 1);
    }

    #[test]
    fn server_names_look_through_launchers() {
        let v = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(server_name(&v("npx -y @modelcontextprotocol/server-everything")).as_deref(), Some("@modelcontextprotocol/server-everything"));
        assert_eq!(server_name(&v("/usr/bin/python3.12 -m mcp_server_git")).as_deref(), Some("mcp_server_git"));
        assert_eq!(server_name(&v("uv run server.py")).as_deref(), Some("server.py"));
        assert_eq!(server_name(&v("/opt/bin/my-server --stdio")).as_deref(), Some("my-server"));
        assert_eq!(server_name(&v("bash")), None);
    }
}
