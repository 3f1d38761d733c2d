//! Which destination ports are intercepted: parsed from the operator's config
//! (`"80,443,8000-8999"` or `"all"`) and turned into the 65536-bit bitmap the
//! connect hooks consult.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

/// Number of 64-bit words in the port bitmap (65536 bits).
pub(crate) const PORT_WORDS: usize = 1024;

/// The set of destination ports whose TCP connections are redirected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortScope {
    /// Every TCP port.
    All,
    /// Only these ports (inclusive ranges; a single port is `p..=p`).
    Ranges(Vec<RangeInclusive<u16>>),
}

/// Why a port scope string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortScopeError {
    #[error("empty port list (use \"all\" or e.g. \"80,443,8000-8999\")")]
    Empty,
    #[error("empty item in port list {0:?} (stray comma?)")]
    EmptyItem(String),
    #[error("{0:?} is not a port number (expected 1-65535)")]
    NotAPort(String),
    #[error("port 0 is not a valid destination port")]
    Zero,
    #[error("port range {0:?} is reversed (start is after end)")]
    Reversed(String),
}

impl PortScope {
    /// Whether `port` is in scope.
    pub fn contains(&self, port: u16) -> bool {
        match self {
            PortScope::All => true,
            PortScope::Ranges(ranges) => ranges.iter().any(|r| r.contains(&port)),
        }
    }

    /// The bitmap loaded into the `ports` map: bit `p % 64` of word `p / 64`.
    pub(crate) fn bitmap(&self) -> Box<[u64; PORT_WORDS]> {
        let mut words = Box::new([0u64; PORT_WORDS]);
        match self {
            PortScope::All => words.iter_mut().for_each(|w| *w = u64::MAX),
            PortScope::Ranges(ranges) => {
                for r in ranges {
                    for p in r.clone() {
                        words[usize::from(p) / 64] |= 1u64 << (p % 64);
                    }
                }
            }
        }
        words
    }
}

fn parse_port(s: &str) -> Result<u16, PortScopeError> {
    let p: u16 = s
        .trim()
        .parse()
        .map_err(|_| PortScopeError::NotAPort(s.trim().to_string()))?;
    if p == 0 {
        return Err(PortScopeError::Zero);
    }
    Ok(p)
}

impl FromStr for PortScope {
    type Err = PortScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(PortScope::All);
        }
        if s.is_empty() {
            return Err(PortScopeError::Empty);
        }
        let mut ranges = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(PortScopeError::EmptyItem(s.to_string()));
            }
            let range = match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (parse_port(a)?, parse_port(b)?);
                    if a > b {
                        return Err(PortScopeError::Reversed(item.to_string()));
                    }
                    a..=b
                }
                None => {
                    let p = parse_port(item)?;
                    p..=p
                }
            };
            ranges.push(range);
        }
        Ok(PortScope::Ranges(ranges))
    }
}

impl fmt::Display for PortScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortScope::All => f.write_str("all"),
            PortScope::Ranges(ranges) => {
                for (i, r) in ranges.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    if r.start() == r.end() {
                        write!(f, "{}", r.start())?;
                    } else {
                        write!(f, "{}-{}", r.start(), r.end())?;
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_ranges_and_all() {
        assert_eq!("all".parse::<PortScope>().unwrap(), PortScope::All);
        assert_eq!(" ALL ".parse::<PortScope>().unwrap(), PortScope::All);
        let s: PortScope = "80, 443,8000-8999".parse().unwrap();
        assert_eq!(s, PortScope::Ranges(vec![80..=80, 443..=443, 8000..=8999]));
        assert!(s.contains(80) && s.contains(8000) && s.contains(8999));
        assert!(!s.contains(81) && !s.contains(9000) && !s.contains(7999));
    }

    #[test]
    fn display_round_trips() {
        for text in ["all", "80", "80,443,8000-8999", "1-65535"] {
            let s: PortScope = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
            assert_eq!(s.to_string().parse::<PortScope>().unwrap(), s);
        }
    }

    #[test]
    fn rejects_bad_input_with_clear_errors() {
        let cases = [
            ("", PortScopeError::Empty),
            ("80,,443", PortScopeError::EmptyItem("80,,443".into())),
            ("http", PortScopeError::NotAPort("http".into())),
            ("70000", PortScopeError::NotAPort("70000".into())),
            ("0", PortScopeError::Zero),
            ("9000-8000", PortScopeError::Reversed("9000-8000".into())),
            ("80-", PortScopeError::NotAPort("".into())),
            ("-5", PortScopeError::NotAPort("".into())),
        ];
        for (input, want) in cases {
            assert_eq!(
                input.parse::<PortScope>().unwrap_err(),
                want,
                "input {input:?}"
            );
        }
        assert!(PortScopeError::Zero.to_string().contains("port 0"));
    }

    #[test]
    fn bitmap_matches_contains() {
        let s: PortScope = "1,63-65,443,65535".parse().unwrap();
        let bm = s.bitmap();
        for p in 0..=u16::MAX {
            let bit = (bm[usize::from(p) / 64] >> (p % 64)) & 1 == 1;
            assert_eq!(bit, s.contains(p), "port {p}");
        }
        assert!(PortScope::All.bitmap().iter().all(|w| *w == u64::MAX));
    }
}
