//! Incremental, bounded `text/event-stream` parser (WHATWG HTML "event stream
//! interpretation").
//!
//! Why this exists: MCP servers answer on SSE streams (legacy HTTP+SSE `GET`
//! streams, Streamable HTTP POST responses). The proxy sees arbitrary TCP/HTTP
//! chunk boundaries, must inspect every event as it passes, and must not buffer
//! without bound when a server sends a never-ending line.
//!
//! Rules implemented: one leading UTF-8 BOM is skipped; lines end in CRLF, LF
//! or CR (a CRLF split across chunks counts once); `:` lines are comments;
//! `field: value` drops one space after the colon; `data` lines are joined with
//! `\n`; `event`, `id` (ignored if it contains NUL) and `retry` (digits only)
//! are honoured; an empty line dispatches.
//!
//! Deliberate differences from a browser, for an observer:
//! * a block with fields but no `data` (e.g. `id: 5` + blank line, an MCP
//!   priming event) is returned with empty `data` instead of being dropped;
//!   blocks of only comments are not events;
//! * [`SseEvent::id`] is the id set *in this event*; the sticky "last event ID"
//!   is [`SseParser::last_event_id`];
//! * invalid UTF-8 is replaced with U+FFFD (as browsers do) but flagged in
//!   [`SseEvent::invalid_utf8`] so the proxy can refuse to evaluate lossy JSON;
//! * when a line plus the event's buffered data would exceed the limit, an event
//!   with [`SseEvent::oversized`] set is returned *at once* (so the proxy can
//!   abort the stream) and the rest of that event is skipped up to its blank line;
//! * [`SseParser::finish`] returns an unterminated last event flagged
//!   [`SseEvent::truncated`] (a browser would discard it).
//!
//! Memory is bounded by about twice `max_event_bytes`. Results do not depend
//! on how the input is split into chunks.

/// Default bound for one event (line + accumulated data): 8 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field; `None` means the default type `message`.
    pub event: Option<String>,
    /// `data:` lines joined with `\n` (no trailing newline). Empty for priming
    /// events and for oversized events.
    pub data: String,
    /// The `id:` field set in this event, if any.
    pub id: Option<String>,
    /// The `retry:` field (milliseconds), if valid.
    pub retry: Option<u64>,
    /// Input bytes attributed to this event: its lines and terminators since
    /// the previous event (comments and blank lines in between included). The
    /// LF of a CRLF counts toward the following line. Bytes skipped after an
    /// oversized event (up to its blank line) are attributed to no event.
    pub raw_len: usize,
    /// The event exceeded the parser's limit; `data` was dropped.
    pub oversized: bool,
    /// Returned by [`SseParser::finish`]: the stream ended before the blank line.
    pub truncated: bool,
    /// Some field value was not valid UTF-8 (replaced with U+FFFD).
    pub invalid_utf8: bool,
}

impl SseEvent {
    /// The event type: the `event` field or `"message"`.
    pub fn event_type(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }

    /// True when this is a complete, within-limit event of type `message`
    /// carrying data: the ones that hold JSON-RPC messages.
    pub fn is_message(&self) -> bool {
        self.event_type() == "message" && !self.data.is_empty() && !self.oversized
    }
}

/// Incremental event-stream parser; feed it with [`SseParser::push`].
#[derive(Debug, Clone)]
pub struct SseParser {
    max: usize,
    /// Leading BOM bytes matched so far; `None` once the BOM question is settled.
    bom_matched: Option<usize>,
    line: Vec<u8>,
    pending_cr: bool,
    /// After an oversized event: skipping until a blank line.
    discarding: bool,
    discard_line_has_bytes: bool,
    // The event being built.
    event: Option<String>,
    data: String,
    id: Option<String>,
    retry: Option<u64>,
    fields_seen: bool,
    invalid_utf8: bool,
    raw: usize,
    last_event_id: Option<String>,
}

/// Longest event id kept as the stream's last event id.
const MAX_KEPT_ID: usize = 1024;

/// Largest buffer kept for reuse between lines and events.
const KEEP_CAPACITY: usize = 64 << 10;

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    /// A parser that flags any event whose line or data exceeds
    /// `max_event_bytes` (at least 1).
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            max: max_event_bytes.max(1),
            bom_matched: Some(0),
            line: Vec::new(),
            pending_cr: false,
            discarding: false,
            discard_line_has_bytes: false,
            event: None,
            data: String::new(),
            id: None,
            retry: None,
            fields_seen: false,
            invalid_utf8: false,
            raw: 0,
            last_event_id: None,
        }
    }

    /// Feed the next chunk; returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let mut input = chunk;
        if let Some(mut matched) = self.bom_matched {
            let mut i = 0;
            while i < input.len() && matched < BOM.len() && input[i] == BOM[matched] {
                matched += 1;
                i += 1;
            }
            if matched == BOM.len() {
                self.bom_matched = None;
                input = &input[i..];
            } else if i == input.len() {
                // All of it may still be the start of a BOM: wait for more.
                self.bom_matched = Some(matched);
                return out;
            } else {
                // Not a BOM: the bytes held back are ordinary input.
                self.bom_matched = None;
                self.feed(&BOM[..matched], &mut out);
                input = &input[i..];
            }
        }
        self.feed(input, &mut out);
        out
    }

    /// End of stream: returns the unterminated last event, if it had any
    /// field, flagged `truncated`. The parser is reset and can be reused.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let mut out = Vec::new();
        if let Some(matched) = self.bom_matched.take() {
            self.feed(&BOM[..matched], &mut out);
        }
        let mut result = None;
        if !self.discarding {
            if !self.line.is_empty() {
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, &mut out);
            }
            if self.fields_seen {
                let mut ev = self.take_event();
                ev.truncated = true;
                result = Some(ev);
            }
        }
        let last = self.last_event_id.take();
        *self = SseParser::new(self.max);
        self.last_event_id = last;
        result
    }

    /// The sticky last event ID (what a client would send as `Last-Event-ID`).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// Bytes currently buffered (partial line + partial event data).
    pub fn buffered(&self) -> usize {
        self.line.len() + self.data.len()
    }

    /// Bytes the parser's buffers hold allocated (at least [`Self::buffered`]): what a
    /// caller accounting memory charges. Past an event or line longer than 64 KiB its
    /// buffers are freed, not kept for reuse.
    pub fn allocated(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
        self.line.capacity() + self.data.capacity() + text(&self.event) + text(&self.id) + text(&self.last_event_id)
    }

    fn feed(&mut self, mut input: &[u8], out: &mut Vec<SseEvent>) {
        while !input.is_empty() {
            if self.pending_cr {
                self.pending_cr = false;
                if input[0] == b'\n' {
                    self.raw += 1;
                    input = &input[1..];
                    continue;
                }
            }
            match input.iter().position(|&b| b == b'\r' || b == b'\n') {
                None => {
                    self.extend_line(input, out);
                    break;
                }
                Some(pos) => {
                    self.extend_line(&input[..pos], out);
                    self.raw += 1;
                    self.pending_cr = input[pos] == b'\r';
                    self.end_line(out);
                    input = &input[pos + 1..];
                }
            }
        }
    }

    fn extend_line(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        if bytes.is_empty() {
            return;
        }
        if self.discarding {
            self.discard_line_has_bytes = true;
            return;
        }
        let held = self.line.len() + self.data.len();
        let room = self.max.saturating_sub(held);
        if bytes.len() > room {
            // The (room+1)-th byte crosses the limit: report now, skip the rest.
            self.raw += room + 1;
            let mut ev = self.take_event();
            ev.oversized = true;
            ev.data.clear();
            out.push(ev);
            self.line.clear();
            self.discarding = true;
            self.discard_line_has_bytes = true;
            return;
        }
        self.line.extend_from_slice(bytes);
        self.raw += bytes.len();
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        if self.discarding {
            if !self.discard_line_has_bytes {
                // Blank line: the oversized event is over.
                self.discarding = false;
                self.raw = 0;
            }
            self.discard_line_has_bytes = false;
            return;
        }
        let line = std::mem::take(&mut self.line);
        self.process_line(&line, out);
        // Give a small allocation back for reuse; a large one (a long line) is freed.
        if line.capacity() <= KEEP_CAPACITY {
            self.line = line;
            self.line.clear();
        }
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.fields_seen {
                out.push(self.take_event());
            } else {
                self.reset_event();
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                match std::str::from_utf8(value) {
                    Ok(v) => self.data.push_str(v),
                    Err(_) => {
                        self.invalid_utf8 = true;
                        self.data.push_str(&String::from_utf8_lossy(value));
                    }
                }
                self.data.push('\n');
                self.fields_seen = true;
            }
            b"event" => {
                let v = self.decode(value);
                self.event = if v.is_empty() { None } else { Some(v) };
                self.fields_seen = true;
            }
            b"id" => {
                if !value.contains(&0) {
                    let v = self.decode(value);
                    // Kept for the stream's life: only an id of a sane length (a
                    // server's 8 MiB id is not held per stream until it closes).
                    self.last_event_id = (v.len() <= MAX_KEPT_ID).then(|| v.clone());
                    self.id = Some(v);
                }
                self.fields_seen = true;
            }
            b"retry" => {
                if !value.is_empty() && value.iter().all(u8::is_ascii_digit)
                    && let Some(ms) = std::str::from_utf8(value).ok().and_then(|s| s.parse::<u64>().ok()) {
                        self.retry = Some(ms);
                    }
                self.fields_seen = true;
            }
            _ => {}
        }
    }

    fn decode(&mut self, bytes: &[u8]) -> String {
        match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => {
                self.invalid_utf8 = true;
                String::from_utf8_lossy(bytes).into_owned()
            }
        }
    }

    fn take_event(&mut self) -> SseEvent {
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let ev = SseEvent {
            event: self.event.take(),
            data,
            id: self.id.take(),
            retry: self.retry.take(),
            raw_len: self.raw,
            oversized: false,
            truncated: false,
            invalid_utf8: self.invalid_utf8,
        };
        self.reset_event();
        self.raw = 0;
        ev
    }

    fn reset_event(&mut self) {
        self.event = None;
        if self.data.capacity() > KEEP_CAPACITY {
            self.data = String::new();
        }
        self.data.clear();
        self.id = None;
        self.retry = None;
        self.fields_seen = false;
        self.invalid_utf8 = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut evs = p.push(input);
        evs.extend(p.finish());
        evs
    }

    fn ev(event: Option<&str>, data: &str, id: Option<&str>) -> (Option<String>, String, Option<String>) {
        (event.map(str::to_owned), data.to_owned(), id.map(str::to_owned))
    }

    fn key(e: &SseEvent) -> (Option<String>, String, Option<String>) {
        (e.event.clone(), e.data.clone(), e.id.clone())
    }

    const STREAM: &[u8] = b"\xEF\xBB\xBF: keep-alive\r\n\r\nid: 0\ndata:\n\nevent: endpoint\r\ndata: /messages?sessionId=abc\r\n\r\nevent: message\nid: 1\nretry: 3000\ndata: {\"jsonrpc\":\"2.0\",\r\ndata:  \"id\":1,\"result\":{\"t\":\"\xC3\xA9\"}}\n\n: c\rdata: x\rdata\r\rdata:tail";

    #[test]
    fn parses_mixed_stream() {
        let evs = parse_all(STREAM);
        let keys: Vec<_> = evs.iter().map(key).collect();
        assert_eq!(keys, vec![
            ev(None, "", Some("0")),
            ev(Some("endpoint"), "/messages?sessionId=abc", None),
            ev(Some("message"), "{\"jsonrpc\":\"2.0\",\n \"id\":1,\"result\":{\"t\":\"é\"}}", Some("1")),
            ev(None, "x\n", None),
            ev(None, "tail", None),
        ]);
        assert_eq!(evs[2].retry, Some(3000));
        assert!(evs[..4].iter().all(|e| !e.truncated && !e.oversized && !e.invalid_utf8));
        assert!(evs[4].truncated);
        assert_eq!(evs[2].event_type(), "message");
        assert!(evs[2].is_message());
        assert!(!evs[1].is_message());
        assert!(!evs[0].is_message());
    }

    #[test]
    fn every_split_point_gives_same_events() {
        let whole = parse_all(STREAM);
        for cut in 0..=STREAM.len() {
            let mut p = SseParser::default();
            let mut evs = p.push(&STREAM[..cut]);
            evs.extend(p.push(&STREAM[cut..]));
            evs.extend(p.finish());
            assert_eq!(evs, whole, "split at {cut}");
        }
        // Byte-at-a-time too.
        let mut p = SseParser::default();
        let mut evs = Vec::new();
        for b in STREAM {
            evs.extend(p.push(std::slice::from_ref(b)));
        }
        evs.extend(p.finish());
        assert_eq!(evs, whole);
        // Three-way splits.
        for a in (0..STREAM.len()).step_by(7) {
            for b in (a..STREAM.len()).step_by(5) {
                let mut p = SseParser::default();
                let mut evs = p.push(&STREAM[..a]);
                evs.extend(p.push(&STREAM[a..b]));
                evs.extend(p.push(&STREAM[b..]));
                evs.extend(p.finish());
                assert_eq!(evs, whole, "split at {a},{b}");
            }
        }
    }

    /// A long event's buffers are freed once it is over, not kept for the stream's life:
    /// what a caller charges for the parser (`allocated`) falls back.
    #[test]
    fn long_events_do_not_keep_their_buffers() {
        let mut p = SseParser::new(1 << 20);
        let long = format!("data: {}\n", "x".repeat(200_000));
        assert!(p.push(long.as_bytes()).is_empty());
        assert!(p.allocated() >= 200_000, "held while it waits: {}", p.allocated());
        assert_eq!(p.push(b"\n").len(), 1);
        assert!(p.allocated() <= 2 * KEEP_CAPACITY, "{}", p.allocated());
        // A long id is not kept as the stream's last event id.
        let long_id = format!("id: {}\ndata: x\n\n", "i".repeat(200_000));
        assert_eq!(p.push(long_id.as_bytes()).len(), 1);
        assert!(p.last_event_id().is_none() && p.allocated() <= 2 * KEEP_CAPACITY, "{}", p.allocated());
    }

    #[test]
    fn raw_len_accounts_for_every_byte() {
        let evs = parse_all(STREAM);
        let total: usize = evs.iter().map(|e| e.raw_len).sum();
        assert_eq!(total, STREAM.len() - 3, "all bytes but the BOM");
        let evs = parse_all(b"data: a\n\ndata: bb\n\n");
        assert_eq!(evs.iter().map(|e| e.raw_len).collect::<Vec<_>>(), vec![9, 10]);
    }

    #[test]
    fn line_endings_crlf_cr_lf_equivalent() {
        let lf = parse_all(b"event: a\ndata: 1\ndata: 2\n\nid: 9\ndata: 3\n\n");
        let crlf = parse_all(b"event: a\r\ndata: 1\r\ndata: 2\r\n\r\nid: 9\r\ndata: 3\r\n\r\n");
        let cr = parse_all(b"event: a\rdata: 1\rdata: 2\r\rid: 9\rdata: 3\r\r");
        let k = |v: &[SseEvent]| v.iter().map(key).collect::<Vec<_>>();
        assert_eq!(k(&lf), vec![ev(Some("a"), "1\n2", None), ev(None, "3", Some("9"))]);
        assert_eq!(k(&crlf), k(&lf));
        assert_eq!(k(&cr), k(&lf));
        // "\r\r\n" is two line ends then a blank line's LF... i.e. CR, then CRLF.
        let mixed = parse_all(b"data: a\r\r\ndata: b\n\r\n");
        assert_eq!(k(&mixed), vec![ev(None, "a", None), ev(None, "b", None)]);
    }

    #[test]
    fn priming_and_field_edge_cases() {
        // MCP priming event: id and empty data.
        let evs = parse_all(b"id: 42\ndata: \n\n");
        assert_eq!(evs.len(), 1);
        assert_eq!((evs[0].id.as_deref(), evs[0].data.as_str()), (Some("42"), ""));
        // id only, no data line: still reported.
        let mut p = SseParser::default();
        let evs = p.push(b"id: 43\n\n");
        assert_eq!(evs.len(), 1);
        assert_eq!(p.last_event_id(), Some("43"));
        // Comment-only blocks are not events.
        assert!(parse_all(b": ping\n\n:pong\r\n\r\n").is_empty());
        // No space after colon; only one space stripped; field with no colon.
        let evs = parse_all(b"data:x\ndata:  y\ndata\n\n");
        assert_eq!(evs[0].data, "x\n y\n");
        // Unknown fields ignored; id with NUL ignored; bad retry ignored.
        let evs = parse_all(b"foo: bar\nid: a\0b\nretry: 12x\ndata: d\n\nretry: 99999999999999999999999\ndata: e\n\n");
        assert_eq!(evs[0].id, None);
        assert_eq!(evs[0].retry, None);
        assert_eq!(evs[1].retry, None);
        // Empty event name means "message".
        let evs = parse_all(b"event:\ndata: z\n\n");
        assert_eq!(evs[0].event, None);
        // id is per event here, sticky on the parser.
        let mut p = SseParser::default();
        let evs = p.push(b"id: 1\ndata: a\n\ndata: b\n\n");
        assert_eq!(evs[1].id, None);
        assert_eq!(p.last_event_id(), Some("1"));
        // Blank lines between events produce nothing extra.
        assert_eq!(parse_all(b"\n\n\ndata: a\n\n\n\n").len(), 1);
    }

    #[test]
    fn bom_only_at_start_and_partial_bom_is_data() {
        let evs = parse_all(b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n");
        assert_eq!(evs.len(), 1, "second BOM makes a field named BOM+data: ignored");
        assert_eq!(evs[0].data, "a");
        // A lone partial BOM followed by other bytes: kept as (invalid UTF-8) data.
        let mut p = SseParser::default();
        assert!(p.push(b"\xEF").is_empty());
        assert!(p.push(b"\xBB").is_empty());
        let evs = p.push(b"X: 1\n\ndata: q\n\n");
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].data, "q");
        // Stream that is only a partial BOM.
        let mut p = SseParser::default();
        p.push(b"\xEF\xBB");
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn invalid_utf8_flagged() {
        let evs = parse_all(b"data: {\"p\":\"..\xC0\xAF..\"}\n\ndata: ok\n\n");
        assert!(evs[0].invalid_utf8);
        assert!(evs[0].data.contains('\u{FFFD}'));
        assert!(!evs[1].invalid_utf8);
        // A multi-byte char split across chunks is not an error.
        let mut p = SseParser::default();
        let mut evs = p.push(b"data: \xC3");
        evs.extend(p.push(b"\xA9\n\n"));
        assert_eq!(evs[0].data, "é");
        assert!(!evs[0].invalid_utf8);
    }

    #[test]
    fn oversized_line_is_bounded_and_reported_immediately() {
        let mut p = SseParser::new(64);
        let mut evs = p.push(b"event: message\nid: 5\ndata: {\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{\"content\":[{\"text\":\"");
        assert!(evs.is_empty());
        // A never-ending line: the report comes while the line is still open.
        evs.extend(p.push(&[b'A'; 100]));
        assert_eq!(evs.len(), 1);
        assert!(evs[0].oversized);
        assert_eq!(evs[0].event.as_deref(), Some("message"));
        assert_eq!(evs[0].id.as_deref(), Some("5"));
        assert!(evs[0].data.is_empty());
        for _ in 0..1000 {
            assert!(p.push(&[b'A'; 1000]).is_empty());
            assert!(p.buffered() <= 64);
        }
        // The rest of the oversized event is skipped; the stream recovers.
        let evs = p.push(b"\ndata: more\n\ndata: next\n\n");
        assert_eq!(evs.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), vec!["next"]);
        assert!(!evs[0].oversized);
    }

    #[test]
    fn oversized_by_many_data_lines() {
        let mut p = SseParser::new(32);
        let evs = p.push(b"data: 0123456789\ndata: 0123456789\ndata: 0123456789\n\ndata: ok\n\n");
        assert_eq!(evs.len(), 2);
        assert!(evs[0].oversized);
        assert_eq!(evs[1].data, "ok");
        // Same result for every split point.
        let input = b"data: 0123456789\ndata: 0123456789\ndata: 0123456789\n\ndata: ok\n\n";
        for cut in 0..=input.len() {
            let mut p = SseParser::new(32);
            let mut got = p.push(&input[..cut]);
            got.extend(p.push(&input[cut..]));
            assert_eq!(got, evs, "split {cut}");
        }
    }

    #[test]
    fn finish_behaviour() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: partial").is_empty());
        let last = p.finish().expect("remainder");
        assert_eq!(last.data, "partial");
        assert!(last.truncated);
        // Reusable after finish, keeping the last event id.
        let mut p = SseParser::default();
        p.push(b"id: 7\ndata: a\n\n");
        assert_eq!(p.finish(), None);
        assert_eq!(p.last_event_id(), Some("7"));
        assert_eq!(p.push(b"data: b\n\n")[0].data, "b");
        // Oversized remainder is not reported twice.
        let mut p = SseParser::new(8);
        assert_eq!(p.push(b"data: 0123456789").len(), 1);
        assert_eq!(p.finish(), None);
        // Comment-only remainder is nothing.
        let mut p = SseParser::default();
        p.push(b": just a comment");
        assert_eq!(p.finish(), None);
    }
}
