//! An audit record's JSON, written directly: the same bytes `serde_json::to_writer` writes
//! for [`AuditRecord`], at a fraction of the cost.
//!
//! Why a module of its own: every proxied call encodes its record twice (begun, then
//! completed), and serde_json spent ~15 k instructions per ~1.3 KB record, most of it
//! escaping strings byte by byte through a table. Here strings are scanned eight bytes
//! at a time and copied in runs, and keys are written as literals.
//!
//! The bytes must stay exactly serde_json's: stored values are hashed into the chain,
//! read back with serde, and shipped to SIEMs; a second dialect would be a second format.
//! Two things keep it so:
//! - every struct is destructured without `..`, so a field added to the API types does
//!   not compile here until it is written;
//! - the tests compare this encoder with serde_json over every field, every variant and
//!   every byte value at every position of a string.

use std::sync::{Arc, Weak};

use mcpwatch_api::{Ancestor, AuditRecord, CallStatus, DecisionView, FindingCount, FlowView, MessageKind, ProcessInfo, TlsDetails};

/// Appends the JSON of `rec` to `out`: byte for byte what `serde_json::to_writer` writes.
pub(crate) fn write(out: &mut Vec<u8>, rec: &AuditRecord) {
    let AuditRecord {
        schema,
        id,
        ts_ms,
        duration_us,
        process,
        dst,
        host,
        scheme,
        http_method,
        path,
        server,
        transport,
        session_id,
        protocol_version,
        kind,
        direction,
        method,
        jsonrpc_id,
        name,
        args_hash,
        result_hash,
        status,
        request_bytes,
        response_bytes,
        notes,
        decision,
        findings,
        alerts,
        tls,
        flow,
        hostname,
        host_id,
    } = rec;
    out.extend_from_slice(b"{\"schema\":");
    uint(out, u64::from(*schema));
    key(out, b",\"id\":");
    string(out, id);
    key(out, b",\"ts_ms\":");
    uint(out, *ts_ms);
    key(out, b",\"duration_us\":");
    opt_uint(out, *duration_us);
    key(out, b",\"process\":");
    match process {
        Some(p) => shared_process_info(out, p),
        None => out.extend_from_slice(b"null"),
    }
    key(out, b",\"dst\":");
    string(out, dst);
    key(out, b",\"host\":");
    opt_string(out, host);
    key(out, b",\"scheme\":");
    string(out, scheme);
    key(out, b",\"http_method\":");
    string(out, http_method);
    key(out, b",\"path\":");
    string(out, path);
    key(out, b",\"server\":");
    string(out, server);
    key(out, b",\"transport\":");
    string(out, transport);
    key(out, b",\"session_id\":");
    opt_string(out, session_id);
    key(out, b",\"protocol_version\":");
    opt_string(out, protocol_version);
    key(out, b",\"kind\":");
    out.extend_from_slice(match kind {
        MessageKind::Request => b"\"request\"".as_slice(),
        MessageKind::Notification => b"\"notification\"",
        MessageKind::Invalid => b"\"invalid\"",
    });
    key(out, b",\"direction\":");
    string(out, direction);
    key(out, b",\"method\":");
    opt_string(out, method);
    key(out, b",\"jsonrpc_id\":");
    opt_string(out, jsonrpc_id);
    key(out, b",\"name\":");
    opt_string(out, name);
    key(out, b",\"args_hash\":");
    opt_string(out, args_hash);
    key(out, b",\"result_hash\":");
    opt_string(out, result_hash);
    key(out, b",\"status\":");
    call_status(out, status);
    key(out, b",\"request_bytes\":");
    uint(out, *request_bytes);
    key(out, b",\"response_bytes\":");
    uint(out, *response_bytes);
    key(out, b",\"notes\":");
    strings(out, notes);
    // What serde skips when unset or empty.
    present(out, b",\"decision\":", decision.as_ref(), decision_view);
    present(out, b",\"findings\":", (!findings.is_empty()).then_some(findings), |out, f| array(out, f, finding));
    present(out, b",\"alerts\":", (!alerts.is_empty()).then_some(alerts), |out, a| strings(out, a));
    present(out, b",\"tls\":", tls.as_ref(), tls_details);
    present(out, b",\"flow\":", flow.as_ref(), flow_view);
    present(out, b",\"hostname\":", hostname.as_ref(), |out, h| string(out, h));
    present(out, b",\"host_id\":", host_id.as_ref(), |out, h| string(out, h));
    out.push(b'}');
}

/// `literal` (`,"name":`) and the value, if there is one: a field serde skips otherwise.
fn present<T: ?Sized>(out: &mut Vec<u8>, literal: &[u8], value: Option<&T>, write: impl FnOnce(&mut Vec<u8>, &T)) {
    if let Some(v) = value {
        key(out, literal);
        write(out, v);
    }
}

/// `[a,b,...]`, each item written by `write`.
fn array<T>(out: &mut Vec<u8>, items: &[T], write: impl Fn(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

/// How many process descriptions each thread keeps encoded ([`shared_process_info`]).
const PROCESS_CACHE: usize = 8;

thread_local! {
    /// The JSON of the last process descriptions this thread encoded, each beside a weak
    /// pointer to the description it was made from. Oldest replaced first.
    static PROCESSES: std::cell::RefCell<(usize, Vec<(Weak<ProcessInfo>, Vec<u8>)>)> = const { std::cell::RefCell::new((0, Vec::new())) };
}

/// [`process_info`] for a description shared by every record of a connection: its JSON is
/// made once per thread and copied after. A hit needs the very allocation it was made from
/// (`Weak::upgrade` and pointer equality): a description changed since cannot be that
/// allocation (`Arc::get_mut` refuses while a weak pointer exists, and `Arc::make_mut`
/// moves the value away from its weak pointers), and its memory is not reused while the
/// weak pointer holds it, so an address cannot stand for another description.
fn shared_process_info(out: &mut Vec<u8>, p: &Arc<ProcessInfo>) {
    PROCESSES.with(|cell| {
        let Ok(mut cache) = cell.try_borrow_mut() else {
            return process_info(out, p);
        };
        let (next, entries) = &mut *cache;
        if let Some((_, json)) = entries.iter().find(|(w, _)| w.upgrade().is_some_and(|a| Arc::ptr_eq(&a, p))) {
            out.extend_from_slice(json);
            return;
        }
        let start = out.len();
        process_info(out, p);
        let made = &out[start..];
        if entries.len() < PROCESS_CACHE {
            entries.push((Arc::downgrade(p), made.to_vec()));
        } else {
            let slot = &mut entries[*next];
            slot.0 = Arc::downgrade(p);
            slot.1.clear();
            slot.1.extend_from_slice(made);
            *next = (*next + 1) % PROCESS_CACHE;
        }
    })
}

fn process_info(out: &mut Vec<u8>, p: &ProcessInfo) {
    let ProcessInfo { pid, tgid, uid, gid, user, group, comm, exe, cmdline, cgroup_id, cgroup_path, unit, ancestry, agent, start_ticks } = p;
    out.extend_from_slice(b"{\"pid\":");
    uint(out, u64::from(*pid));
    key(out, b",\"tgid\":");
    uint(out, u64::from(*tgid));
    key(out, b",\"uid\":");
    uint(out, u64::from(*uid));
    key(out, b",\"gid\":");
    uint(out, u64::from(*gid));
    key(out, b",\"user\":");
    opt_string(out, user);
    key(out, b",\"group\":");
    opt_string(out, group);
    key(out, b",\"comm\":");
    string(out, comm);
    key(out, b",\"exe\":");
    opt_string(out, exe);
    key(out, b",\"cmdline\":");
    strings(out, cmdline);
    key(out, b",\"cgroup_id\":");
    uint(out, *cgroup_id);
    key(out, b",\"cgroup_path\":");
    opt_string(out, cgroup_path);
    key(out, b",\"unit\":");
    opt_string(out, unit);
    key(out, b",\"ancestry\":");
    array(out, ancestry, ancestor);
    key(out, b",\"agent\":");
    match agent {
        Some(a) => ancestor(out, a),
        None => out.extend_from_slice(b"null"),
    }
    present(out, b",\"start_ticks\":", start_ticks.as_ref(), |out, t| uint(out, *t));
    out.push(b'}');
}

fn ancestor(out: &mut Vec<u8>, a: &Ancestor) {
    let Ancestor { pid, comm, exe } = a;
    out.extend_from_slice(b"{\"pid\":");
    uint(out, u64::from(*pid));
    key(out, b",\"comm\":");
    string(out, comm);
    key(out, b",\"exe\":");
    opt_string(out, exe);
    out.push(b'}');
}

fn call_status(out: &mut Vec<u8>, s: &CallStatus) {
    match s {
        CallStatus::Pending => out.extend_from_slice(b"{\"state\":\"pending\"}"),
        CallStatus::Ok => out.extend_from_slice(b"{\"state\":\"ok\"}"),
        CallStatus::Sent => out.extend_from_slice(b"{\"state\":\"sent\"}"),
        CallStatus::JsonrpcError { code, message } => {
            out.extend_from_slice(b"{\"state\":\"jsonrpc_error\",\"code\":");
            int(out, *code);
            key(out, b",\"message\":");
            string(out, message);
            out.push(b'}');
        }
        CallStatus::TransportError { reason } => {
            out.extend_from_slice(b"{\"state\":\"transport_error\",\"reason\":");
            string(out, reason);
            out.push(b'}');
        }
    }
}

fn decision_view(out: &mut Vec<u8>, d: &DecisionView) {
    let DecisionView { action, effective, mode, rules, reason, shadow, approval } = d;
    out.extend_from_slice(b"{\"action\":");
    word(out, action.as_str());
    key(out, b",\"effective\":");
    word(out, effective.as_str());
    key(out, b",\"mode\":");
    word(out, mode.as_str());
    key(out, b",\"rules\":");
    strings(out, rules);
    key(out, b",\"reason\":");
    string(out, reason);
    key(out, b",\"shadow\":");
    boolean(out, *shadow);
    present(out, b",\"approval\":", approval.as_ref(), |out, a| string(out, a));
    out.push(b'}');
}

fn finding(out: &mut Vec<u8>, f: &FindingCount) {
    let FindingCount { detector, direction, count, action } = f;
    out.extend_from_slice(b"{\"detector\":");
    string(out, detector);
    key(out, b",\"direction\":");
    string(out, direction);
    key(out, b",\"count\":");
    uint(out, u64::from(*count));
    key(out, b",\"action\":");
    string(out, action);
    out.push(b'}');
}

fn tls_details(out: &mut Vec<u8>, t: &TlsDetails) {
    let TlsDetails { sni, client_version, upstream_version, alpn, upstream_subject, upstream_issuer, upstream_fingerprint, insecure, resumed } = t;
    out.extend_from_slice(b"{\"sni\":");
    opt_string(out, sni);
    key(out, b",\"client_version\":");
    opt_string(out, client_version);
    key(out, b",\"upstream_version\":");
    opt_string(out, upstream_version);
    key(out, b",\"alpn\":");
    opt_string(out, alpn);
    key(out, b",\"upstream_subject\":");
    opt_string(out, upstream_subject);
    key(out, b",\"upstream_issuer\":");
    opt_string(out, upstream_issuer);
    key(out, b",\"upstream_fingerprint\":");
    opt_string(out, upstream_fingerprint);
    key(out, b",\"insecure\":");
    boolean(out, *insecure);
    if *resumed {
        key(out, b",\"resumed\":true");
    }
    out.push(b'}');
}

fn flow_view(out: &mut Vec<u8>, f: &FlowView) {
    let FlowView { session, labels, tainted, tainted_by, taints } = f;
    out.extend_from_slice(b"{\"session\":");
    string(out, session);
    present(out, b",\"labels\":", (!labels.is_empty()).then_some(labels), |out, l| strings(out, l));
    key(out, b",\"tainted\":");
    boolean(out, *tainted);
    present(out, b",\"tainted_by\":", (!tainted_by.is_empty()).then_some(tainted_by), |out, l| strings(out, l));
    key(out, b",\"taints\":");
    boolean(out, *taints);
    out.push(b'}');
}

#[inline]
fn key(out: &mut Vec<u8>, literal: &[u8]) {
    out.extend_from_slice(literal);
}

/// A fixed word (an enum's `as_str`): letters and `_` only, nothing to escape.
fn word(out: &mut Vec<u8>, w: &str) {
    debug_assert!(w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    out.push(b'"');
    out.extend_from_slice(w.as_bytes());
    out.push(b'"');
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

fn opt_uint(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => uint(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

fn uint(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

fn int(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    uint(out, n.unsigned_abs());
}

fn opt_string(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn strings(out: &mut Vec<u8>, list: &[String]) {
    array(out, list, |out, s| string(out, s));
}

const LOW: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of the word is below 0x20, a `"` or a `\`. Exact as a yes/no
/// (borrows only start at a byte that matches); which byte matched is found bytewise.
#[inline]
fn needs_escape(w: u64) -> bool {
    let below_space = w.wrapping_sub(LOW * 0x20) & !w;
    let quote = w ^ (LOW * u64::from(b'"'));
    let backslash = w ^ (LOW * u64::from(b'\\'));
    let has_quote = quote.wrapping_sub(LOW) & !quote;
    let has_backslash = backslash.wrapping_sub(LOW) & !backslash;
    (below_space | has_quote | has_backslash) & HIGH != 0
}

/// A JSON string as serde_json writes it: `"` and `\` escaped, the controls below 0x20
/// as `\b \t \n \f \r` or `\u00XX` (lower-case hex), everything else (DEL and all of
/// non-ASCII included) as is.
fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    if is_clean(bytes) {
        out.extend_from_slice(bytes);
    } else {
        escaped(out, bytes);
    }
    out.push(b'"');
}

/// Nothing in `bytes` needs escaping: checked a word at a time, the last partial word
/// padded with spaces (which need none).
#[inline]
fn is_clean(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        if needs_escape(u64::from_le_bytes(<[u8; 8]>::try_from(w).expect("eight bytes"))) {
            return false;
        }
    }
    let rest = words.remainder();
    let mut last = [b' '; 8];
    last[..rest.len()].copy_from_slice(rest);
    !needs_escape(u64::from_le_bytes(last))
}

/// The escaping copy, for the strings [`is_clean`] turned down: clean words are still
/// skipped whole, and the bytes of a word that is not are looked at one by one.
fn escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8)
            && !needs_escape(u64::from_le_bytes(<[u8; 8]>::try_from(word).expect("eight bytes")))
        {
            i += 8;
            continue;
        }
        let end = (i + 8).min(bytes.len());
        while i < end {
            let b = bytes[i];
            i += 1;
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                0x08 => b"\\b",
                0x0c => b"\\f",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x00..=0x1f => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(&bytes[start..i - 1]);
                    out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
                    start = i;
                    continue;
                }
                _ => continue,
            };
            out.extend_from_slice(&bytes[start..i - 1]);
            out.extend_from_slice(esc);
            start = i;
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpwatch_api::decision::{ActionKind, Effect, Mode};

    #[test]
    fn a_shared_process_description_is_encoded_once_and_never_stale() {
        let mut r = full("cached");
        // Hits: the same allocation again, on this thread.
        same_as_serde(&r);
        same_as_serde(&r);
        // A change through the Arc is a different allocation (make_mut moves the value
        // away from the cache's weak pointer), so it is encoded anew.
        std::sync::Arc::make_mut(r.process.as_mut().expect("set")).comm = s("changed\"");
        same_as_serde(&r);
        assert!(String::from_utf8(encoded(&r)).unwrap().contains(r#""comm":"changed\"""#));
        // More descriptions than the cache holds, round and round, each its own bytes.
        let many: Vec<AuditRecord> = (0..super::PROCESS_CACHE * 2 + 1)
            .map(|i| {
                let mut r = full("cached");
                std::sync::Arc::make_mut(r.process.as_mut().expect("set")).pid = i as u32;
                r
            })
            .collect();
        for _ in 0..3 {
            for r in &many {
                same_as_serde(r);
            }
        }
        // A description dropped and another made (perhaps at the same address) is not
        // mistaken for it.
        for i in 0..4u32 {
            let mut r = full("cached");
            std::sync::Arc::make_mut(r.process.as_mut().expect("set")).uid = 1000 + i;
            same_as_serde(&r);
            drop(r);
        }
    }

    fn encoded(rec: &AuditRecord) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, rec);
        out
    }

    fn same_as_serde(rec: &AuditRecord) {
        let mut ours = Vec::new();
        write(&mut ours, rec);
        let theirs = serde_json::to_vec(rec).expect("serde encodes");
        assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
        assert_eq!(ours, theirs);
    }

    fn s(v: &str) -> String {
        v.to_string()
    }

    /// Every field set (listed without `..`, so a new field must be added here too).
    fn full(text: &str) -> AuditRecord {
        let ancestor = Ancestor { pid: 7, comm: format!("sh{text}"), exe: Some(format!("/bin/{text}")) };
        AuditRecord {
            schema: 1,
            id: format!("0001{text}"),
            ts_ms: u64::MAX,
            duration_us: Some(0),
            process: Some(std::sync::Arc::new(ProcessInfo {
                pid: u32::MAX,
                tgid: 1,
                uid: 0,
                gid: 1000,
                user: Some(format!("u{text}")),
                group: None,
                comm: s(text),
                exe: Some(s(text)),
                cmdline: vec![s(text), s(""), s("--flag=\"x\"")],
                cgroup_id: 12345678901234,
                cgroup_path: Some(format!("/a/{text}")),
                unit: None,
                ancestry: vec![ancestor.clone(), Ancestor { pid: 1, comm: s("init"), exe: None }],
                agent: Some(ancestor),
                start_ticks: Some(99),
            })),
            dst: s("127.0.0.1:1"),
            host: Some(s(text)),
            scheme: s("https"),
            http_method: s("POST"),
            path: format!("/mcp?{text}"),
            server: s("https://h/mcp"),
            transport: s("streamable-http"),
            session_id: Some(s(text)),
            protocol_version: None,
            kind: MessageKind::Notification,
            direction: s("client->server"),
            method: Some(s("tools/call")),
            jsonrpc_id: Some(format!("\"{text}\"")),
            name: Some(s(text)),
            args_hash: Some(s("ab")),
            result_hash: None,
            status: CallStatus::JsonrpcError { code: i64::MIN, message: s(text) },
            request_bytes: 0,
            response_bytes: 17,
            notes: vec![s(text), s(text)],
            decision: Some(DecisionView {
                action: ActionKind::RequireApproval,
                effective: Effect::Hold,
                mode: Mode::Warn,
                rules: vec![s("policy:default"), s(text)],
                reason: s(text),
                shadow: true,
                approval: Some(s(text)),
            }),
            findings: vec![FindingCount { detector: s(text), direction: s("request"), count: 3, action: s("redact") }, FindingCount::default()],
            alerts: vec![s(text)],
            tls: Some(TlsDetails {
                sni: Some(s(text)),
                client_version: Some(s("TLSv1_3")),
                upstream_version: None,
                alpn: Some(s("h2")),
                upstream_subject: Some(s(text)),
                upstream_issuer: None,
                upstream_fingerprint: Some(s("aa:bb")),
                insecure: true,
                resumed: true,
            }),
            flow: Some(FlowView { session: s(text), labels: vec![s("private_data")], tainted: true, tainted_by: vec![s(text)], taints: true }),
            hostname: Some(s(text)),
            host_id: Some(s("4a57")),
        }
    }

    #[test]
    fn every_field_and_variant_matches_serde() {
        same_as_serde(&AuditRecord::default());
        let mut r = full("plain");
        same_as_serde(&r);
        for status in [
            CallStatus::Pending,
            CallStatus::Ok,
            CallStatus::Sent,
            CallStatus::JsonrpcError { code: -32601, message: s("no") },
            CallStatus::JsonrpcError { code: 0, message: s("") },
            CallStatus::TransportError { reason: s("reset \"by\" peer") },
        ] {
            r.status = status;
            same_as_serde(&r);
        }
        for kind in [MessageKind::Request, MessageKind::Notification, MessageKind::Invalid] {
            r.kind = kind;
            same_as_serde(&r);
        }
        for (action, effective, mode) in [
            (ActionKind::Allow, Effect::Forward, Mode::Audit),
            (ActionKind::Deny, Effect::Block, Mode::Enforce),
            (ActionKind::RateLimit, Effect::Block, Mode::Warn),
        ] {
            let d = r.decision.as_mut().expect("set above");
            (d.action, d.effective, d.mode, d.shadow, d.approval) = (action, effective, mode, false, None);
            same_as_serde(&r);
        }
        // What serde skips when empty or unset, one at a time and all at once.
        r.tls.as_mut().expect("set").resumed = false;
        same_as_serde(&r);
        let f = r.flow.as_mut().expect("set");
        (f.labels, f.tainted_by) = (vec![], vec![]);
        same_as_serde(&r);
        std::sync::Arc::make_mut(r.process.as_mut().expect("set")).start_ticks = None;
        std::sync::Arc::make_mut(r.process.as_mut().expect("set")).agent = None;
        same_as_serde(&r);
        (r.findings, r.alerts, r.decision, r.tls, r.flow, r.hostname, r.host_id, r.process) = (vec![], vec![], None, None, None, None, None, None);
        same_as_serde(&r);
    }

    #[test]
    fn every_byte_at_every_position_is_escaped_as_serde_does() {
        // Each ASCII byte (controls, quote, backslash, DEL) at each offset of strings
        // from 0 to 19 bytes: inside a clean word, at its edges and in the bytewise tail.
        for len in 0..20usize {
            for at in 0..len.max(1) {
                for b in 0u8..0x80 {
                    let mut v = vec![b'a'; len];
                    if len > 0 {
                        v[at] = b;
                    }
                    let text = String::from_utf8(v).expect("ASCII");
                    let mut ours = Vec::new();
                    string(&mut ours, &text);
                    assert_eq!(ours, serde_json::to_vec(&text).expect("serde"), "byte {b:#04x} at {at} of {len}");
                }
            }
        }
        // Non-ASCII (bytes ≥ 0x80 must never look like controls), mixed escapes, runs.
        for text in ["é€😀\u{2028}\u{7f}", "\"\"\\\\\n\n", "日本語\t\u{1}テキスト\u{1f}", &"x\u{0}".repeat(33), &"ÿ".repeat(40)] {
            let mut ours = Vec::new();
            string(&mut ours, text);
            assert_eq!(ours, serde_json::to_vec(&text).expect("serde"), "{text:?}");
            same_as_serde(&full(text));
        }
    }

    #[test]
    fn numbers_match_serde_at_their_limits() {
        for n in [0u64, 9, 10, 99, 100, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
            let mut ours = Vec::new();
            uint(&mut ours, n);
            assert_eq!(ours, serde_json::to_vec(&n).expect("serde"));
        }
        for n in [i64::MIN, i64::MIN + 1, -32700, -1, 0, 1, i64::MAX] {
            let mut ours = Vec::new();
            int(&mut ours, n);
            assert_eq!(ours, serde_json::to_vec(&n).expect("serde"));
        }
    }
}
