//! Policy and inspection at run time.
//!
//! Holds the compiled policy and inspector behind one `Arc` that a reload swaps
//! atomically: a connection evaluates against the policy that was current when its
//! message arrived, and a broken new file never replaces a working one (the error is
//! kept for `mcpwatch status`). Rate-limit state lives here, outside the policy, so it
//! survives reloads. Evaluation itself is pure (`mcpwatch-policy`, `mcpwatch-inspect`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use mcpwatch_inspect::Inspector;
use mcpwatch_mcp::keyed::HashKey;
use mcpwatch_policy::{Decision, FlowTable, Policy, RateLimiter};

/// The policy compiled into the binary, used when no policy file exists.
pub const EMBEDDED_POLICY: &str = include_str!("../default-policy.toml");
pub const EMBEDDED_NAME: &str = "<embedded default policy>";

/// One loaded policy with its compiled inspector.
pub struct Loaded {
    pub policy: Policy,
    pub inspector: Inspector,
    /// File path, or [`EMBEDDED_NAME`].
    pub origin: String,
    pub loaded_ms: u64,
}

#[derive(Debug, Clone)]
pub enum Source {
    Embedded,
    /// An explicit policy file: it must exist, at start and at every reload.
    File(PathBuf),
    /// The system default path (`/etc/mcpwatch/policy.toml`): read when it exists, else
    /// the embedded default. Re-checked at every reload, so writing the file for the
    /// first time and reloading puts it in force.
    DefaultPath(PathBuf),
}

pub struct Governance {
    source: Source,
    /// The host's secret hash key (`crate::startup::load_or_create_key`): argument,
    /// result and finding hashes are keyed with it.
    key: HashKey,
    current: RwLock<Arc<Loaded>>,
    last_error: Mutex<Option<String>>,
    limiter: Mutex<RateLimiter>,
    /// Per-session taint (toxic flows); like rate limits, it survives reloads.
    flows: Mutex<FlowTable>,
}

/// Parse and compile policy text. Errors carry file, line and column. Finding hashes
/// are keyed with `key`.
pub fn compile(src: &str, origin: &str, key: &HashKey) -> Result<Loaded, String> {
    let policy = mcpwatch_policy::parse(src, origin).map_err(|e| e.render())?;
    let inspector = Inspector::new(&policy.inspect().detectors)
        .map_err(|e| format!("{origin}: [inspect.detectors]: {e}"))?
        .with_hash_key(key.clone());
    for w in policy.warnings() {
        tracing::warn!("{origin}: {w}");
    }
    Ok(Loaded { policy, inspector, origin: origin.to_string(), loaded_ms: crate::clock::now_ms() })
}

fn load(source: &Source, key: &HashKey) -> Result<Loaded, String> {
    match source {
        Source::Embedded => compile(EMBEDDED_POLICY, EMBEDDED_NAME, key),
        Source::File(p) => {
            let src = std::fs::read_to_string(p).map_err(|e| format!("cannot read policy {}: {e}", p.display()))?;
            compile(&src, &p.display().to_string(), key)
        }
        Source::DefaultPath(p) if p.exists() => load(&Source::File(p.clone()), key),
        Source::DefaultPath(_) => compile(EMBEDDED_POLICY, EMBEDDED_NAME, key),
    }
}

impl Loaded {
    /// Run the detectors on `v`. In enforce mode spans are redacted in place per their
    /// action; otherwise `v` is left untouched and every hit is reported detect-only.
    pub fn inspect(&self, v: &mut serde_json::Value, enforce: bool) -> mcpwatch_inspect::RedactReport {
        self.inspect_with(v, enforce, mcpwatch_inspect::Embedded::AsText)
    }

    /// [`Loaded::inspect`], reading strings that hold JSON as `embedded` says.
    pub fn inspect_with(&self, v: &mut serde_json::Value, enforce: bool, embedded: mcpwatch_inspect::Embedded) -> mcpwatch_inspect::RedactReport {
        if enforce {
            return self.inspector.redact_json_with(v, embedded);
        }
        let mut copy = v.clone();
        let mut r = self.inspector.redact_json_with(&mut copy, embedded);
        for (k, n) in std::mem::take(&mut r.counts) {
            *r.detected_only.entry(k).or_default() += n;
        }
        r
    }

    /// The mode for what mcpwatch cannot inspect toward a server (a compressed or
    /// foreign-charset body, one past the size limit, MCP over WebSocket): nothing in it
    /// is judged, so any rule that would be enforced on it might be undone. Enforce when
    /// the server's mode is, or when any restrictive rule of the policy enforces itself
    /// (`mode = "enforce"` on a deny, approval or rate-limit rule under an audit or warn
    /// policy: an enforced rule is never weakened, docs/policy.md §Modes).
    pub fn uninspectable_mode(&self, target: &mcpwatch_policy::Target<'_>) -> mcpwatch_policy::Mode {
        let mode = self.inspect_mode(target);
        let enforced_rule = self.policy.rules().iter().any(|r| r.mode == Some(mcpwatch_policy::Mode::Enforce) && r.action != mcpwatch_policy::RuleAction::Allow);
        if enforced_rule { mcpwatch_policy::Mode::Enforce } else { mode }
    }

    /// The strictest rollout mode any server could be judged in: the policy's, or a
    /// registry entry's own (for a destination whose endpoints are not known any more).
    pub fn strictest_mode(&self) -> mcpwatch_policy::Mode {
        let modes = self.policy.servers().iter().filter_map(|s| s.mode);
        modes.fold(self.policy.mode(), |a, b| if b.rank() > a.rank() { b } else { a })
    }

    /// The rollout mode content inspection runs in for a server: the server's own
    /// `mode` in the registry, else the policy's. Deliberately not the mode of whichever
    /// rule decided a call: a warn-mode rate limit must not switch redaction off.
    pub fn inspect_mode(&self, target: &mcpwatch_policy::Target<'_>) -> mcpwatch_policy::Mode {
        self.policy.server_for(target).and_then(|s| s.mode).unwrap_or(self.policy.mode())
    }
}

impl Governance {
    /// [`Governance::start_keyed`] with a fresh random key (tests, benchmarks: hashes
    /// are then stable only for this process).
    pub fn start(source: Source) -> Result<Governance, String> {
        let key = crate::startup::random_key().map_err(|e| format!("cannot generate a hash key: {e}"))?;
        Governance::start_keyed(source, key)
    }

    /// Load at start-up: an invalid policy is an error (the daemon refuses to start
    /// rather than run without the rules the operator wrote).
    pub fn start_keyed(source: Source, key: HashKey) -> Result<Governance, String> {
        let loaded = load(&source, &key)?;
        Ok(Governance {
            source,
            key,
            current: RwLock::new(Arc::new(loaded)),
            last_error: Mutex::new(None),
            limiter: Mutex::new(RateLimiter::default()),
            flows: Mutex::new(FlowTable::new(mcpwatch_policy::FlowLimits::default())),
        })
    }

    /// Pick the policy file: an explicit path, else `default_path` (read when it
    /// exists, at start and at every reload; the embedded default while it does not).
    pub fn source_for(explicit: Option<&Path>, default_path: &Path) -> Source {
        match explicit {
            Some(p) => Source::File(p.to_path_buf()),
            None => Source::DefaultPath(default_path.to_path_buf()),
        }
    }

    /// The host's secret hash key: `Message::args_hash(key)`, `result_hash(key)`.
    pub fn hash_key(&self) -> &HashKey {
        &self.key
    }

    pub fn current(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Is `loaded` (what something was judged by) still the policy in force? A reload
    /// since makes it stale: what it let through is not forwarded.
    pub fn is_current(&self, loaded: &Arc<Loaded>) -> bool {
        Arc::ptr_eq(loaded, &self.current())
    }

    /// Re-read the policy. On error the old policy stays in force and the error is
    /// remembered for `status`. Returns a one-line summary or the error.
    pub fn reload(&self) -> Result<String, String> {
        match load(&self.source, &self.key) {
            Ok(new) => {
                let summary = format!(
                    "policy {} loaded: {} servers, {} agents, {} rules, mode {}",
                    new.origin,
                    new.policy.servers().len(),
                    new.policy.agents().len(),
                    new.policy.rules().len(),
                    new.policy.mode()
                );
                if let Ok(mut l) = self.limiter.lock() {
                    l.retain_rules(&new.policy);
                }
                if let Ok(mut c) = self.current.write() {
                    *c = Arc::new(new);
                }
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                tracing::info!("{summary}");
                Ok(summary)
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload rejected; the previous policy stays in force");
                if let Ok(mut l) = self.last_error.lock() {
                    *l = Some(e.clone());
                }
                Err(e)
            }
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Run `f` on the session taint table (`None` if its lock is poisoned).
    pub fn with_flows<T>(&self, f: impl FnOnce(&mut FlowTable) -> T) -> Option<T> {
        self.flows.lock().ok().map(|mut t| f(&mut t))
    }

    /// Apply rate limits to a decision (mutates its effect when a limit trips).
    pub fn apply_rate_limits(&self, now_ms: u64, d: &mut Decision) -> Option<mcpwatch_policy::RateResult> {
        self.limiter.lock().ok().and_then(|mut l| l.apply(now_ms, d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_policy_compiles() {
        let l = compile(EMBEDDED_POLICY, EMBEDDED_NAME, &HashKey::new(b"k")).unwrap();
        assert_eq!(l.policy.mode(), mcpwatch_policy::Mode::Enforce);
        assert!(l.policy.rule("no-credential-files").is_some());
    }

    #[test]
    fn broken_reload_keeps_the_old_policy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.toml");
        std::fs::write(&p, EMBEDDED_POLICY).unwrap();
        let g = Governance::start(Source::File(p.clone())).unwrap();
        std::fs::write(&p, "version = 1\nmode = \"enforce\"\nshadw = \"block\"\n").unwrap();
        let err = g.reload().unwrap_err();
        assert!(err.contains(":3:1"), "line and column: {err}");
        assert!(g.current().policy.rule("no-credential-files").is_some(), "old policy still in force");
        assert_eq!(g.last_error().as_deref(), Some(err.as_str()));
        std::fs::write(&p, "version = 1\nmode = \"audit\"\n").unwrap();
        g.reload().unwrap();
        assert_eq!(g.current().policy.mode(), mcpwatch_policy::Mode::Audit);
        assert!(g.last_error().is_none());
    }

    #[test]
    fn default_path_written_after_start_is_picked_up_by_reload() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.toml");
        let g = Governance::start(Governance::source_for(None, &p)).unwrap();
        assert_eq!(g.current().origin, EMBEDDED_NAME);
        std::fs::write(&p, "version = 1\nmode = \"audit\"\n").unwrap();
        let summary = g.reload().unwrap();
        assert!(summary.contains(&p.display().to_string()), "{summary}");
        assert_eq!(g.current().origin, p.display().to_string());
        assert_eq!(g.current().policy.mode(), mcpwatch_policy::Mode::Audit);
    }
}
