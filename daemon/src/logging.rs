//! The daemon's log: journald's native protocol under systemd, plain text otherwise;
//! and one log line per security event (deny, redaction, shadow server).
//!
//! Why a module of its own: under systemd, plain text on stderr loses the level (every
//! line lands at the unit's default priority, so `journalctl -p err` finds nothing) and
//! the structured fields. When `$JOURNAL_STREAM` names the device and inode of our
//! stderr, systemd connected it to the journal: each event is then sent as one datagram
//! to the journal socket with `PRIORITY`, `MESSAGE`, `SYSLOG_IDENTIFIER` and every
//! tracing field as an upper-case journal field. Anything else (a terminal, a file, a
//! test harness) gets the familiar text format.
//!
//! The event log sees each record as the audit store is handed it (`Shared::begin_record`
//! and `complete_record` call [`note_record`]): a record without a security event costs a
//! few comparisons; one with an event is logged once, however often it is rewritten. Not
//! a task fed by the record broadcast, which woke a task (and often the other worker
//! thread) twice per call.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use mcpwatch_api::{ActionKind, AuditRecord, Effect};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Where journald listens for native messages.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// Overrides [`JOURNAL_SOCKET`] (tests use a socket of their own).
pub const JOURNAL_SOCKET_ENV: &str = "MCPWATCH_JOURNAL_SOCKET";

/// Install the global subscriber: journald when stderr is connected to the journal,
/// text on stderr otherwise. The filter comes from `$MCPWATCH_LOG` (default `info`).
pub fn init() {
    let filter = || EnvFilter::try_from_env("MCPWATCH_LOG").unwrap_or_else(|_| "info".into());
    if let Some(journal) = journal_socket()
        && let Ok(layer) = JournalLayer::connect(journal)
    {
        tracing_subscriber::registry().with(layer.with_filter(filter())).init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The journal socket, when `$JOURNAL_STREAM` ("dev:ino") names our stderr.
fn journal_socket() -> Option<PathBuf> {
    let stream = std::env::var("JOURNAL_STREAM").ok()?;
    let (dev, ino) = stream.split_once(':')?;
    let (dev, ino): (u64, u64) = (dev.trim().parse().ok()?, ino.trim().parse().ok()?);
    let st = nix::sys::stat::fstat(2).ok()?;
    if st.st_dev as u64 != dev || st.st_ino as u64 != ino {
        return None;
    }
    Some(std::env::var_os(JOURNAL_SOCKET_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(JOURNAL_SOCKET)))
}

/// syslog priority of a tracing level (`journalctl -p`): error 3, warn 4, info 6,
/// debug and trace 7.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Sends each event as one native-protocol datagram to the journal.
pub struct JournalLayer {
    sock: UnixDatagram,
    path: PathBuf,
}

impl JournalLayer {
    pub fn connect(path: PathBuf) -> std::io::Result<JournalLayer> {
        Ok(JournalLayer { sock: UnixDatagram::unbound()?, path })
    }
}

/// A journal field name from a tracing field name: upper case, `[A-Z0-9_]` only, never
/// starting with `_` (those are trusted fields journald sets itself) or a digit.
fn field_name(name: &str) -> String {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    while out.starts_with('_') || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.remove(0);
    }
    out.truncate(64);
    if out.is_empty() { "FIELD".into() } else { out }
}

/// Append one field in the native format (the binary form when the value has a newline).
fn put(buf: &mut Vec<u8>, name: &str, value: &str) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

#[derive(Default)]
struct Fields {
    message: String,
    extra: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.extra.push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.extra.push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

impl<S: Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut f = Fields::default();
        event.record(&mut f);
        // MESSAGE reads like the text log: the message, then key=value pairs.
        let mut message = f.message.clone();
        for (k, v) in &f.extra {
            let _ = write!(message, " {k}={v}");
        }
        let mut buf = Vec::with_capacity(256);
        put(&mut buf, "PRIORITY", &priority(meta.level()).to_string());
        put(&mut buf, "SYSLOG_IDENTIFIER", "mcpwatchd");
        put(&mut buf, "MESSAGE", &message);
        put(&mut buf, "TARGET", meta.target());
        if let Some(file) = meta.file() {
            put(&mut buf, "CODE_FILE", file);
        }
        if let Some(line) = meta.line() {
            put(&mut buf, "CODE_LINE", &line.to_string());
        }
        for (k, v) in &f.extra {
            let name = field_name(k);
            if matches!(name.as_str(), "PRIORITY" | "MESSAGE" | "SYSLOG_IDENTIFIER" | "TARGET" | "CODE_FILE" | "CODE_LINE") {
                continue;
            }
            put(&mut buf, &format!("MCPWATCH_{name}"), v);
        }
        if self.sock.send_to(&buf, &self.path).is_err() {
            // Journal gone or the entry too large for a datagram: the line still goes out.
            eprintln!("<{}>{message}", priority(meta.level()));
        }
    }
}

/// How many (record, event) pairs are remembered so that a record written twice
/// (pending, then final) is logged once.
const MAX_LOGGED: usize = 4096;

/// The (record or server, event) pairs logged already, bounded by [`MAX_LOGGED`].
#[derive(Default)]
pub struct EventLog(Logged);

/// The keys logged, oldest first, and per event kind the set of keys (looked up by
/// `&str`: a key already logged, such as a busy shadow server, costs no allocation).
type Logged = (VecDeque<(String, &'static str)>, HashMap<&'static str, HashSet<String>>);

fn first(logged: &mut Logged, id: &str, what: &'static str) -> bool {
    let seen = logged.1.entry(what).or_default();
    if seen.contains(id) {
        return false;
    }
    seen.insert(id.to_string());
    logged.0.push_back((id.to_string(), what));
    if logged.0.len() > MAX_LOGGED
        && let Some((old, kind)) = logged.0.pop_front()
        && let Some(set) = logged.1.get_mut(kind)
    {
        set.remove(&old);
    }
    true
}

/// Log one line per security event of a record as it is written: a call denied or
/// blocked (warn), content redacted or blocked by a detector (info), the first traffic
/// to each shadow server (warn). Most records carry none: they cost a few comparisons
/// and no lock.
pub fn note_record(log: &std::sync::Mutex<EventLog>, rec: &AuditRecord) {
    // The lock is taken only once an event's condition holds (they short-circuit).
    let first = |key: &str, what: &'static str| log.lock().is_ok_and(|mut g| first(&mut g.0, key, what));
    let tool = rec.name.as_deref().unwrap_or(rec.method.as_deref().unwrap_or("-"));
    let pid = rec.process.as_ref().map(|p| p.pid).unwrap_or(0);
    if let Some(d) = &rec.decision {
        if d.effective == Effect::Block && first(&rec.id, "deny") {
            tracing::warn!(
                audit_id = %rec.id, server = %rec.server, tool, pid, action = %d.action, rules = %d.rules.join(","),
                "call blocked: {}", d.reason
            );
        } else if d.action == ActionKind::Deny && d.effective != Effect::Block && first(&rec.id, "deny") {
            tracing::warn!(
                audit_id = %rec.id, server = %rec.server, tool, pid, mode = %d.mode, rules = %d.rules.join(","),
                "call would be denied ({} mode): {}", d.mode, d.reason
            );
        }
        // Once per server, not per call: a busy shadow server would otherwise flood the
        // journal (and pay a log write per call); every call is in the audit store.
        if d.shadow && first(&rec.server, "shadow") {
            tracing::warn!(audit_id = %rec.id, server = %rec.server, tool, pid, "traffic to a shadow MCP server (not in the policy registry); logged once per server, every call is audited");
        }
    }
    let redacted: Vec<String> = rec
        .findings
        .iter()
        .filter(|f| f.action == "redact" || f.action == "block")
        .map(|f| format!("{}x{} ({}, {})", f.detector, f.count, f.direction, f.action))
        .collect();
    if !redacted.is_empty() && first(&rec.id, "redact") {
        tracing::info!(audit_id = %rec.id, server = %rec.server, tool, pid, findings = %redacted.join(", "), "sensitive content redacted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_encoded_in_the_native_format() {
        let mut b = Vec::new();
        put(&mut b, "MESSAGE", "one line");
        put(&mut b, "DETAIL", "two\nlines");
        let mut want = b"MESSAGE=one line\nDETAIL\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(b, want);
        assert_eq!(field_name("_audit.id"), "AUDIT_ID");
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }

    #[test]
    fn a_record_written_twice_is_logged_once() {
        let mut l = Logged::default();
        assert!(first(&mut l, "1", "deny"));
        assert!(!first(&mut l, "1", "deny"));
        assert!(first(&mut l, "1", "shadow"));
        for i in 0..MAX_LOGGED + 1 {
            first(&mut l, &i.to_string(), "x");
        }
        let kept: usize = l.1.values().map(HashSet::len).sum();
        assert!(l.0.len() <= MAX_LOGGED && kept <= MAX_LOGGED, "{} queued, {kept} kept", l.0.len());
        assert_eq!(kept, l.0.len(), "the sets and the queue forget together");
        assert!(first(&mut l, "1", "deny"), "the oldest key was forgotten, so it logs again");
    }
}
