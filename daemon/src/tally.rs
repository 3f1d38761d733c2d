//! Counts by key that forget a key when its count reaches zero.
//!
//! Why it exists: the daemon's fair-share budgets (connections per process and uid in
//! `admission`, held bodies per uid in `bodies`, parked calls per uid and live legacy
//! streams per conversation in `session`, tool bytes per resident server in `inventory`)
//! each keep "how many does this key hold", and a
//! map that kept keys at zero would grow with every process, uid or conversation ever
//! seen. One type, so the decrement-and-forget is written once.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug)]
pub struct Tally<K>(HashMap<K, usize>);

impl<K> Default for Tally<K> {
    fn default() -> Self {
        Tally(HashMap::new())
    }
}

impl<K: Eq + Hash> Tally<K> {
    /// What `k` holds (0 when it holds nothing).
    pub fn get<Q: Eq + Hash + ?Sized>(&self, k: &Q) -> usize
    where
        K: Borrow<Q>,
    {
        self.0.get(k).copied().unwrap_or(0)
    }

    pub fn add(&mut self, k: K, n: usize) {
        if n > 0 {
            *self.0.entry(k).or_default() += n;
        }
    }

    /// Takes `n` back from `k` (never below zero); a key left at zero is forgotten.
    pub fn sub<Q: Eq + Hash + ?Sized>(&mut self, k: &Q, n: usize)
    where
        K: Borrow<Q>,
    {
        if let Some(held) = self.0.get_mut(k) {
            *held = held.saturating_sub(n);
            if *held == 0 {
                self.0.remove(k);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, usize)> {
        self.0.iter().map(|(k, n)| (k, *n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_at_zero_is_forgotten() {
        let mut t: Tally<String> = Tally::default();
        t.add("a".into(), 2);
        t.add("b".into(), 0);
        assert_eq!((t.get("a"), t.get("b")), (2, 0));
        t.sub("a", 1);
        assert_eq!(t.get("a"), 1);
        t.sub("a", 5);
        t.sub("never", 1);
        assert!(t.is_empty(), "no key is kept at zero");
    }
}
