//! Fuzz target: the incremental SSE parser (`mcpwatch_mcp::sse`) fed in arbitrary
//! chunkings. The proxy sees whatever TCP/HTTP chunk boundaries the server (or an
//! attacker shaping its writes) chooses; the events it inspects must not depend on them.
//!
//! Input: `[limit byte][cut count byte][cut bytes ...][stream ...]`. The stream is parsed
//! whole and again split at the fuzzer-chosen cut points (sorted offsets into the stream).
//! Properties:
//! - the split parse yields exactly the events of the unsplit parse (including
//!   `raw_len`, `oversized`, `truncated`, `invalid_utf8`) and the same last event id;
//! - memory stays bounded: buffered bytes stay within 3x the limit (U+FFFD replacement
//!   of invalid UTF-8 can triple a line's bytes in the data);
//! - byte accounting: the events' `raw_len` never sum to more than the stream;
//! - an event flagged oversized carries no data, and no event's data exceeds the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpwatch_mcp::sse::{SseEvent, SseParser};

fuzz_target!(|input: &[u8]| {
    let [limit, ncuts, rest @ ..] = input else { return };
    // Limits from 1 to 256 bytes so oversized events are common.
    let limit = usize::from(*limit) + 1;
    let ncuts = usize::from(*ncuts % 16).min(rest.len());
    let (cut_bytes, stream) = rest.split_at(ncuts);
    let mut cuts: Vec<usize> = cut_bytes
        .iter()
        .map(|&c| if stream.is_empty() { 0 } else { usize::from(c) * stream.len() / 255 })
        .collect();
    cuts.sort_unstable();

    let (whole, whole_last_id) = parse(limit, &[0, stream.len()], stream);
    let mut bounds = vec![0];
    bounds.extend(&cuts);
    bounds.push(stream.len());
    let (split, split_last_id) = parse(limit, &bounds, stream);
    assert_eq!(split, whole, "events differ when split at {cuts:?}");
    assert_eq!(split_last_id, whole_last_id);

    let counted: usize = whole.iter().map(|e| e.raw_len).sum();
    assert!(counted <= stream.len(), "{counted} bytes attributed, stream has {}", stream.len());
    for e in &whole {
        assert!(!e.oversized || e.data.is_empty(), "oversized event kept data: {e:?}");
        // U+FFFD replacement can triple an invalid byte; the limit counts input bytes.
        assert!(e.data.len() <= 3 * limit, "event data {} bytes over limit {limit}", e.data.len());
    }
});

/// Parse `stream` pushing the chunks between consecutive `bounds`, then finish.
fn parse(limit: usize, bounds: &[usize], stream: &[u8]) -> (Vec<SseEvent>, Option<String>) {
    let mut p = SseParser::new(limit);
    let mut events = Vec::new();
    for w in bounds.windows(2) {
        events.extend(p.push(&stream[w[0]..w[1]]));
        assert!(p.buffered() <= 3 * limit + 1, "buffered {} with limit {limit}", p.buffered());
    }
    events.extend(p.finish());
    (events, p.last_event_id().map(str::to_owned))
}
