//! Record ids: the store's keys, chosen so that byte order is time order.
//!
//! Why not sled's `generate_id`: the query path seeks to `since_ms` by key prefix and
//! pruning drops the lowest keys, so the key itself must start with the time. An id is
//! 26 ASCII digits: a 20-digit millisecond timestamp followed by a 6-digit sequence
//! within that millisecond. Both halves live in one `u64` (`ms * 1_000_000 + seq`), so
//! the generator is a single atomic `max(previous + 1, now * 1_000_000)`: monotonic
//! even when the wall clock steps back, and unique across restarts because the store
//! seeds it from the highest key on disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Length of every record id.
pub const ID_LEN: usize = 26;
/// Digits of the millisecond prefix.
pub(crate) const MS_DIGITS: usize = 20;
const SEQ_PER_MS: u64 = 1_000_000;

/// Monotonic id source.
#[derive(Debug)]
pub(crate) struct IdGen {
    last: AtomicU64,
}

impl IdGen {
    /// Starts after `floor` (the packed value of the highest id already stored, or 0).
    pub(crate) fn new(floor: u64) -> IdGen {
        IdGen {
            last: AtomicU64::new(floor),
        }
    }

    pub(crate) fn next(&self) -> String {
        self.next_at(now_ms())
    }

    /// The next id given the current wall clock, exposed for tests.
    pub(crate) fn next_at(&self, now_ms: u64) -> String {
        let floor = now_ms.saturating_mul(SEQ_PER_MS);
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = floor.max(prev.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return format_id(next),
                Err(actual) => prev = actual,
            }
        }
    }
}

/// `ms * 1_000_000 + seq` rendered as 26 digits.
pub(crate) fn format_id(packed: u64) -> String {
    // `format!("{:020}{:06}", ms, seq)`, written digit by digit into one allocation
    // (every call's record takes an id; the formatter grew its string three times).
    let mut digits = [b'0'; ID_LEN];
    let (mut ms, mut seq) = (packed / SEQ_PER_MS, packed % SEQ_PER_MS);
    for d in digits[MS_DIGITS..].iter_mut().rev() {
        *d = b'0' + (seq % 10) as u8;
        seq /= 10;
    }
    for d in digits[..MS_DIGITS].iter_mut().rev() {
        *d = b'0' + (ms % 10) as u8;
        ms /= 10;
    }
    digits.iter().map(|&d| char::from(d)).collect()
}

/// The packed value of a well-formed id, `None` for anything else.
pub(crate) fn parse_id(id: &[u8]) -> Option<u64> {
    if id.len() != ID_LEN || !id.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let digits = std::str::from_utf8(id).ok()?;
    let ms: u64 = digits[..MS_DIGITS].parse().ok()?;
    let seq: u64 = digits[MS_DIGITS..].parse().ok()?;
    ms.checked_mul(SEQ_PER_MS)?.checked_add(seq)
}

/// The smallest key whose millisecond prefix is `>= ms`.
pub(crate) fn key_floor_for_ms(ms: u64) -> String {
    format!("{:0ms$}", ms, ms = MS_DIGITS)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_id_is_twenty_ms_digits_and_six_sequence_digits() {
        for packed in [0, 1, 999_999, 1_000_000, 1_796_583_088_035_000_123, u64::MAX] {
            let want = format!("{:020}{:06}", packed / SEQ_PER_MS, packed % SEQ_PER_MS);
            assert_eq!(format_id(packed), want);
            assert_eq!(parse_id(want.as_bytes()), Some(packed));
        }
    }

    #[test]
    fn ids_are_fixed_width_and_parse_back() {
        let g = IdGen::new(0);
        let id = g.next_at(1_700_000_000_123);
        assert_eq!(id, "00000001700000000123000000");
        assert_eq!(id.len(), ID_LEN);
        assert_eq!(
            parse_id(id.as_bytes()),
            Some(1_700_000_000_123 * SEQ_PER_MS)
        );
    }

    #[test]
    fn same_millisecond_bumps_the_sequence() {
        let g = IdGen::new(0);
        let a = g.next_at(5);
        let b = g.next_at(5);
        assert_eq!(a, "00000000000000000005000000");
        assert_eq!(b, "00000000000000000005000001");
    }

    #[test]
    fn clock_stepping_back_stays_monotonic() {
        let g = IdGen::new(0);
        let a = g.next_at(1_000);
        let b = g.next_at(900);
        assert!(b > a, "{b} should sort after {a}");
        assert_eq!(&b[..MS_DIGITS], &a[..MS_DIGITS]);
    }

    #[test]
    fn seeded_generator_continues_after_floor() {
        let floor = parse_id(b"00000000000000002000000007").expect("valid id");
        let g = IdGen::new(floor);
        assert_eq!(g.next_at(1_000), "00000000000000002000000008");
    }

    #[test]
    fn malformed_ids_do_not_parse() {
        for bad in [
            &b""[..],
            b"123",
            b"0000000000000000200000000x",
            b"000000000000000020000000000",
        ] {
            assert_eq!(parse_id(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn key_floor_sorts_before_ids_of_that_millisecond() {
        let g = IdGen::new(0);
        let id = g.next_at(42);
        let floor = key_floor_for_ms(42);
        assert!(floor.as_str() <= id.as_str());
        assert!(key_floor_for_ms(43).as_str() > id.as_str());
    }
}
