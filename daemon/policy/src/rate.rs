//! Rate-limit counters: the only mutable state the policy needs.
//!
//! Kept outside [`crate::Policy`] so it survives a reload: counters are keyed by
//! (rule id, scope key), not by anything of a particular compiled policy, and
//! [`RateLimiter::retain_rules`] drops only the counters of rules that are gone.
//! Time is passed in (milliseconds from any monotonic origin); nothing here reads a
//! clock. The number of counters is bounded, and a counter that still carries debt is
//! never forgotten: the scope key is partly the caller's to choose (a tool name, an
//! endpoint), so dropping the least recently used live counter would let a caller flood
//! the table with fresh keys until its own exhausted counter was evicted. Fully refilled
//! counters (which carry no information) are forgotten when room is needed; while the
//! table is still full, a new key counts against its rule's one shared overflow counter
//! ([`OVERFLOW_KEY`]): new callers are limited together, nobody's limit is reset.
//!
//! Algorithm: a token bucket per counter, written as GCRA (one timestamp per counter).
//! `count` per `per` means a burst of up to `count` calls, refilled evenly: one call's
//! worth every `per / count`, all of it after one full window.

use std::collections::HashMap;

use crate::model::{Action, Decision, Effect, Mode, Policy, RateSpec, RuleAction};

/// Counters kept unless told otherwise.
pub const DEFAULT_MAX_KEYS: usize = 10_000;
/// The scope key new callers of a rule share while every counter is live.
pub const OVERFLOW_KEY: &str = "(overflow: every counter is live; new callers share this one)";
/// Time is kept in femtoseconds so `window / count` is exact enough for any count the
/// policy accepts (at most 1 000 000 per second).
const FS_PER_MS: u128 = 1_000_000_000_000;

/// Outcome of consulting a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateResult {
    pub allowed: bool,
    /// When not allowed: how long until one more call would be (0 when allowed). Use it
    /// for `Retry-After` (rounded up to seconds).
    pub retry_after_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Theoretical arrival time (fs): the bucket is full again at this instant.
    tat: u128,
    touched_ms: u64,
}

/// Rate-limit state, owned by the daemon and shared by all policy versions.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// rule id -> scope key -> bucket (nested so lookups borrow `&str`, no allocation).
    buckets: HashMap<String, HashMap<String, Bucket>>,
    len: usize,
    max_keys: usize,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new(DEFAULT_MAX_KEYS)
    }
}

fn params(spec: &RateSpec) -> (u128, u128) {
    let window = u128::from(spec.per.window_ms()) * FS_PER_MS;
    let interval = window / u128::from(spec.count.max(1));
    (interval, window - interval)
}

impl RateLimiter {
    /// A limiter that keeps at most `max_keys` counters (at least 1).
    pub fn new(max_keys: usize) -> Self {
        RateLimiter {
            buckets: HashMap::new(),
            len: 0,
            max_keys: max_keys.max(1),
        }
    }

    /// Number of live counters.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Would one more call be allowed now? Changes nothing.
    pub fn peek(&self, now_ms: u64, spec: &RateSpec) -> RateResult {
        let now = u128::from(now_ms) * FS_PER_MS;
        let (_, tolerance) = params(spec);
        let tat = self
            .buckets
            .get(&spec.rule)
            .and_then(|m| m.get(&spec.key))
            .map_or(now, |b| b.tat.max(now));
        let debt = tat - now;
        if debt <= tolerance {
            RateResult {
                allowed: true,
                retry_after_ms: 0,
            }
        } else {
            let wait = (debt - tolerance).div_ceil(FS_PER_MS);
            RateResult {
                allowed: false,
                retry_after_ms: u64::try_from(wait).unwrap_or(u64::MAX).max(1),
            }
        }
    }

    /// Count one call against the counter if it is allowed; refused calls cost nothing.
    pub fn check(&mut self, now_ms: u64, spec: &RateSpec) -> RateResult {
        let spec = self.resolve(now_ms, spec);
        let r = self.peek(now_ms, &spec);
        if r.allowed {
            self.consume(now_ms, &spec);
        }
        r
    }

    /// The counter `spec` counts against: its own when it exists or there is room for it
    /// (after forgetting refilled counters), else its rule's overflow counter.
    fn resolve<'s>(&mut self, now_ms: u64, spec: &'s RateSpec) -> std::borrow::Cow<'s, RateSpec> {
        let exists = self.buckets.get(&spec.rule).is_some_and(|m| m.contains_key(&spec.key));
        if exists || self.len < self.max_keys {
            return std::borrow::Cow::Borrowed(spec);
        }
        self.forget_refilled(now_ms);
        if self.len < self.max_keys {
            return std::borrow::Cow::Borrowed(spec);
        }
        std::borrow::Cow::Owned(RateSpec { key: OVERFLOW_KEY.to_string(), ..spec.clone() })
    }

    fn consume(&mut self, now_ms: u64, spec: &RateSpec) {
        let now = u128::from(now_ms) * FS_PER_MS;
        let (interval, _) = params(spec);
        let m = self.buckets.entry(spec.rule.clone()).or_default();
        let b = match m.get_mut(&spec.key) {
            Some(b) => b,
            None => {
                // Overflow counters (one per rule) may go past `max_keys`.
                self.len += 1;
                m.entry(spec.key.clone()).or_insert(Bucket { tat: now, touched_ms: now_ms })
            }
        };
        b.tat = b.tat.max(now) + interval;
        b.touched_ms = now_ms;
    }

    /// Forget every counter that is full again (it carries no debt).
    fn forget_refilled(&mut self, now_ms: u64) {
        let now = u128::from(now_ms) * FS_PER_MS;
        for m in self.buckets.values_mut() {
            m.retain(|_, b| b.tat > now);
        }
        self.buckets.retain(|_, m| !m.is_empty());
        self.len = self.buckets.values().map(HashMap::len).sum();
    }

    /// After a reload: forget counters of rules that are no longer `rate_limit` rules in
    /// `policy`; all others keep their state (a changed `count` applies from now on).
    pub fn retain_rules(&mut self, policy: &Policy) {
        self.buckets.retain(|rule, _| {
            policy
                .rule(rule)
                .is_some_and(|r| r.action == RuleAction::RateLimit)
        });
        self.len = self.buckets.values().map(HashMap::len).sum();
    }

    /// Consult every rate limit in `d.rate_limits` and fold the result into the decision.
    ///
    /// - An enforce-mode limit that is exhausted blocks the call: `effective = Block`,
    ///   `action = RateLimit(that limit)`, `alert`, a reason with the retry delay, and
    ///   nothing is counted.
    /// - Otherwise the call is counted against every limit that has room; exhausted
    ///   warn-mode limits set `alert`, exhausted audit-mode ones are only noted in the
    ///   reason.
    ///
    /// Returns `None` when the decision carries no rate limits.
    pub fn apply(&mut self, now_ms: u64, d: &mut Decision) -> Option<RateResult> {
        if d.rate_limits.is_empty() || d.effective != Effect::Forward {
            return None;
        }
        let specs: Vec<RateSpec> = d.rate_limits.iter().map(|s| self.resolve(now_ms, s).into_owned()).collect();
        d.rate_limits = specs;
        let results: Vec<RateResult> = d.rate_limits.iter().map(|s| self.peek(now_ms, s)).collect();
        let blocking = d
            .rate_limits
            .iter()
            .zip(&results)
            .enumerate()
            .filter(|(_, (s, r))| !r.allowed && s.mode == Mode::Enforce)
            .max_by_key(|(_, (_, r))| r.retry_after_ms)
            .map(|(i, (_, r))| (i, *r));
        if let Some((i, r)) = blocking {
            let spec = d.rate_limits[i].clone();
            d.reason = format!(
                "rate limit exceeded: policy rule \"{}\" allows {} call(s) per {} per {} ({}); retry in {} s",
                spec.rule,
                spec.count,
                spec.per.as_str(),
                spec.scope.as_str(),
                spec.key,
                r.retry_after_ms.div_ceil(1000)
            );
            if d.shadow {
                d.reason
                    .push_str(" (note: the server is not in the server registry: shadow server)");
            }
            d.matched_rules.retain(|id| *id != spec.rule);
            d.matched_rules.insert(0, spec.rule.clone());
            d.action = Action::RateLimit(spec);
            d.mode = Mode::Enforce;
            d.effective = Effect::Block;
            d.alert = true;
            return Some(r);
        }
        for (spec, r) in d.rate_limits.iter().zip(&results) {
            if r.allowed {
                self.consume(now_ms, spec);
            } else {
                if spec.mode == Mode::Warn {
                    d.alert = true;
                }
                d.reason.push_str(&format!(
                    " [rate limit of policy rule \"{}\" exceeded; {} mode: not blocked]",
                    spec.rule, spec.mode
                ));
            }
        }
        Some(RateResult {
            allowed: true,
            retry_after_ms: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Per, RateScope};

    fn spec(rule: &str, key: &str, count: u32, per: Per) -> RateSpec {
        RateSpec {
            rule: rule.into(),
            count,
            per,
            scope: RateScope::Agent,
            key: key.into(),
            mode: Mode::Enforce,
        }
    }

    #[test]
    fn trips_at_count_and_recovers_after_the_window() {
        let mut l = RateLimiter::default();
        let s = spec("r", "agent:a", 3, Per::Minute);
        let t0 = 1_000_000;
        for i in 0..3 {
            assert!(l.check(t0 + i, &s).allowed, "call {i} within the limit");
        }
        let refused = l.check(t0 + 3, &s);
        assert!(!refused.allowed);
        // One call's worth comes back 20 s after the first call.
        assert_eq!(refused.retry_after_ms, 20_000 - 3);
        assert!(!l.check(t0 + 19_999, &s).allowed);
        assert!(l.check(t0 + 20_000, &s).allowed);
        // A full window after the burst, the whole burst is available again.
        let later = t0 + 20_000 + 60_000;
        for i in 0..3 {
            assert!(l.check(later + i, &s).allowed, "after the window, call {i}");
        }
        assert!(!l.check(later + 3, &s).allowed);
    }

    #[test]
    fn refused_calls_do_not_count_and_keys_are_independent() {
        let mut l = RateLimiter::default();
        let a = spec("r", "agent:a", 1, Per::Second);
        let b = spec("r", "agent:b", 1, Per::Second);
        assert!(l.check(0, &a).allowed);
        for t in 1..10 {
            assert!(!l.check(t * 10, &a).allowed);
        }
        assert!(l.check(5, &b).allowed, "another key has its own counter");
        assert!(
            l.check(1_000, &a).allowed,
            "refusals did not push recovery back"
        );
    }

    #[test]
    fn counters_are_bounded_and_fresh_ones_go_first() {
        let mut l = RateLimiter::new(16);
        let hot = spec("r", "hot", 1, Per::Hour);
        assert!(l.check(0, &hot).allowed);
        for i in 0..100u64 {
            // 300 ms apart: each per-second counter is full again before the next arrives.
            let s = spec("r", &format!("k{i}"), 5, Per::Second);
            assert!(l.check(1 + i * 300, &s).allowed);
            assert!(l.len() <= 16, "len {} at {i}", l.len());
        }
        // Refilled counters were dropped instead of the live hour-long one.
        assert!(!l.check(30_100, &hot).allowed, "live counter kept");
    }

    /// A caller cannot reset its own exhausted counter by flooding the table with fresh
    /// keys (tool names and endpoints are the caller's to choose): live counters are never
    /// dropped, and while every counter is live new keys share one overflow counter.
    #[test]
    fn a_flood_of_fresh_keys_never_resets_a_live_counter() {
        let mut l = RateLimiter::new(8);
        let mine = spec("r", "tool:files/delete", 1, Per::Hour);
        assert!(l.check(0, &mine).allowed);
        assert!(!l.check(1, &mine).allowed);
        let mut flood_allowed = 0;
        for i in 0..1_000u64 {
            if l.check(2 + i, &spec("r", &format!("tool:files/junk{i}"), 1, Per::Hour)).allowed {
                flood_allowed += 1;
            }
            assert!(l.len() <= 8 + 1, "bounded: {}", l.len());
        }
        assert_eq!(flood_allowed, 7 + 1, "seven fresh counters fit, then one shared overflow call");
        assert!(!l.check(2_000, &mine).allowed, "the exhausted counter survived the flood");
        // Once counters refill they are forgotten and new keys get their own again.
        assert!(l.check(3_600_000 + 2_000, &spec("r", "tool:files/later", 1, Per::Hour)).allowed);
        assert!(l.buckets["r"].contains_key("tool:files/later"));
    }
}
