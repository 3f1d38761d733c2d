//! Tamper evidence: every write of a record is an entry of a hash chain.
//!
//! Why it exists: an audit trail that can be edited without a trace is not evidence.
//! Each insert or update of a record appends one entry to the chain (journal first, then
//! the `chain` tree, where entries are stored in chunks, see `chunk`):
//!
//! ```text
//! entry = seq (1, 2, 3, ... with no gaps), record id, link, value_hash
//! link  = sha256(previous link || seq || record id || value_hash)
//! value_hash = sha256(the record's stored bytes)
//! ```
//!
//! `meta/chain_head` holds the last (seq, link); `meta/chain_base` holds the (seq, link)
//! just before the first retained entry plus the highest record id retention removed.
//! Retention drops entries only from the front of the chain, and only entries whose
//! record is gone or has been written again since, so the retained entries stay one
//! contiguous, verifiable run (the base is the checkpoint it starts from).
//!
//! [`verify`] then finds: a record whose bytes differ from its latest entry (edited, or
//! two records' values swapped), a record with no entry (inserted behind the daemon's
//! back), a record that has an entry but is gone although retention never reached it
//! (deleted), and entries that are missing, reordered or altered (the links break, or the
//! head does not match).
//!
//! What it does not stop: someone with write access to the state dir who recomputes the
//! whole chain and the head after an edit. The head printed by `mcpwatch audit verify`
//! can be recorded elsewhere, and the SIEM sinks keep a copy out of reach; both are the
//! answer to that attacker, not this module.

use std::collections::HashMap;

use mcpwatch_api::{AuditProblem as Problem, AuditVerify as VerifyReport};
use sha2::{Digest, Sha256};

use crate::chunk::{self, Item};

pub(crate) const CHAIN_TREE: &str = "chain";
pub(crate) const META_HEAD: &str = "chain_head";
pub(crate) const META_BASE: &str = "chain_base";

pub(crate) type Hash = [u8; 32];

/// The chain's tip (or its base checkpoint): the seq and link of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Point {
    pub seq: u64,
    pub link: Hash,
}

impl Point {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.link);
        v
    }

    pub fn decode(b: &[u8]) -> Option<Point> {
        let seq = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        let link: Hash = b.get(8..40)?.try_into().ok()?;
        Some(Point { seq, link })
    }
}

/// The base checkpoint: where the retained chain starts, and the highest record id that
/// retention has removed (records at or below it may be gone legitimately).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Base {
    pub point: Point,
    pub pruned_upto: Vec<u8>,
}

impl Base {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.point.encode();
        v.extend_from_slice(&self.pruned_upto);
        v
    }

    pub fn decode(b: &[u8]) -> Option<Base> {
        Some(Base { point: Point::decode(b)?, pruned_upto: b.get(40..)?.to_vec() })
    }
}

/// One entry of the chain as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub link: Hash,
    pub value_hash: Hash,
    pub id: Vec<u8>,
}

impl Entry {
    /// The layout-1 value of an entry (tests write such stores).
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64 + self.id.len());
        v.extend_from_slice(&self.link);
        v.extend_from_slice(&self.value_hash);
        v.extend_from_slice(&self.id);
        v
    }

    pub fn decode(b: &[u8]) -> Option<Entry> {
        Some(Entry {
            link: b.get(..32)?.try_into().ok()?,
            value_hash: b.get(32..64)?.try_into().ok()?,
            id: b.get(64..)?.to_vec(),
        })
    }
}

pub(crate) fn value_hash(value: &[u8]) -> Hash {
    Sha256::digest(value).into()
}

pub(crate) fn link(prev: &Hash, seq: u64, id: &[u8], value_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update((id.len() as u32).to_be_bytes());
    h.update(id);
    h.update(value_hash);
    h.finalize().into()
}

/// A chain entry as a chunk item: id = the record id, value = link || value hash.
impl Entry {
    pub fn into_item(self, seq: u64) -> Item {
        let mut value = Vec::with_capacity(64);
        value.extend_from_slice(&self.link);
        value.extend_from_slice(&self.value_hash);
        Item { id: self.id, seq, value }
    }

    pub fn from_item(it: &Item) -> Option<Entry> {
        Some(Entry {
            link: it.value.get(..32)?.try_into().ok()?,
            value_hash: it.value.get(32..64)?.try_into().ok()?,
            id: it.id.clone(),
        })
    }
}

/// A layout-1 chain value: key = seq (big-endian), value = link || value hash || id.
pub(crate) fn legacy_entry(key: &[u8], value: &[u8]) -> Option<Item> {
    let seq = u64::from_be_bytes(key.try_into().ok()?);
    Some(Entry::decode(value)?.into_item(seq))
}

/// The seq a chain chunk's key names (its first entry).
pub(crate) fn key_seq(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// The chain entries after `from` (the head a [`verify`] pass ran to), checked to follow
/// on from it and to end at the stored head; and the latest value hash of each record
/// they wrote, against which records written during the pass are judged.
pub(crate) struct Since {
    pub latest: HashMap<Vec<u8>, Hash>,
    pub problems: Vec<Problem>,
    pub entries: u64,
    pub head: Point,
}

pub(crate) fn verify_since(chain: &sled::Tree, meta: &sled::Tree, from: Point) -> Result<Since, sled::Error> {
    let head = meta.get(META_HEAD)?.and_then(|v| Point::decode(&v));
    let next = from.seq.saturating_add(1).to_be_bytes();
    // The chunk holding entry `from + 1` starts at or before it.
    let first = chain.range(..=next.as_slice()).next_back().transpose()?.map_or(next.to_vec(), |(k, _)| k.to_vec());
    let mut walk = Walk::from(from);
    let mut latest = HashMap::new();
    for c in chain.range(first..) {
        let (k, v) = c?;
        let Ok(items) = chunk::decode(&k, &v, legacy_entry) else {
            walk.unreadable(key_seq(&k));
            continue;
        };
        for it in items.iter().filter(|it| it.seq > from.seq) {
            if let Some(e) = walk.step(it) {
                latest.insert(e.id, e.value_hash);
            }
        }
    }
    let (head, entries, problems) = walk.end(head);
    Ok(Since { latest, problems, entries, head })
}

/// A walk along the chain's entries in seq order: each must follow the one before (no
/// gap, its link computed from the one before), and the last must be the head. One
/// break is reported once: the walk goes on from the entry that broke it.
struct Walk {
    at: Point,
    entries: u64,
    problems: Vec<Problem>,
}

impl Walk {
    fn from(at: Point) -> Walk {
        Walk { at, entries: 0, problems: Vec::new() }
    }

    /// A chunk of entries that does not decode, whose key names `seq`.
    fn unreadable(&mut self, seq: u64) {
        self.entries += 1;
        self.problems.push(Problem::ChainBroken { seq, reason: "unreadable entry".into() });
    }

    /// The next entry; `None` if it does not decode.
    fn step(&mut self, it: &Item) -> Option<Entry> {
        self.entries += 1;
        let seq = it.seq;
        let Some(e) = Entry::from_item(it) else {
            self.problems.push(Problem::ChainBroken { seq, reason: "unreadable entry".into() });
            return None;
        };
        if seq != self.at.seq + 1 {
            self.problems.push(Problem::ChainBroken { seq, reason: format!("expected entry {} next (entries missing or reordered)", self.at.seq + 1) });
        } else if link(&self.at.link, seq, &e.id, &e.value_hash) != e.link {
            self.problems.push(Problem::ChainBroken { seq, reason: "link does not follow from the entry before".into() });
        }
        self.at = Point { seq, link: e.link };
        Some(e)
    }

    /// Where the walk ended (checked against `head`), how many entries it met, and what
    /// was broken.
    fn end(mut self, head: Option<Point>) -> (Point, u64, Vec<Problem>) {
        let at = self.at;
        match head {
            Some(h) if h != at => self.problems.push(Problem::ChainBroken {
                seq: at.seq,
                reason: format!("the head names entry {} but the chain ends at {}", h.seq, at.seq),
            }),
            None if self.entries > 0 => self.problems.push(Problem::ChainBroken { seq: at.seq, reason: "no head recorded".into() }),
            _ => {}
        }
        (at, self.entries, self.problems)
    }
}

/// A chain link or head as `mcpwatch audit verify` prints it.
pub(crate) fn hex(link: &Hash) -> String {
    link.iter().map(|b| format!("{b:02x}")).collect()
}

/// 128 bits of a value hash: what [`verify`] keeps per record. The chain links use the
/// whole hash; matching a record against its entry needs no more than this (an edit
/// that keeps these bits is a 128-bit second preimage).
type Short = [u8; 16];

fn short(h: &Hash) -> Short {
    let mut s = [0u8; 16];
    s.copy_from_slice(&h[..16]);
    s
}

/// The latest value hash of every chained id, as small as it can be held: a verify
/// pass over 1M records kept ~170 MiB as `HashMap<Vec<u8>, Hash>`. A well-formed id is
/// its packed `u64`; only a damaged store has others, kept as bytes.
struct Latest {
    packed: HashMap<u64, Short>,
    other: HashMap<Vec<u8>, Short>,
}

impl Latest {
    fn insert(&mut self, id: Vec<u8>, h: &Hash) {
        match crate::id::parse_id(&id) {
            Some(p) => {
                self.packed.insert(p, short(h));
            }
            None => {
                self.other.insert(id, short(h));
            }
        }
    }

    fn remove(&mut self, id: &[u8]) -> Option<Short> {
        match crate::id::parse_id(id) {
            Some(p) => self.packed.remove(&p),
            None => self.other.remove(id),
        }
    }

    /// The ids left, as their bytes.
    fn into_ids(self) -> impl Iterator<Item = Vec<u8>> {
        self.packed.into_keys().map(|p| crate::id::format_id(p).into_bytes()).chain(self.other.into_keys())
    }
}

/// Which of `passes` verify passes judges `id` (see [`verify`]): a well-formed id's
/// packed value mixed (so time-ordered ids spread evenly), anything else in the first.
pub(crate) fn pass_of(id: &[u8], passes: u64) -> u64 {
    match crate::id::parse_id(id) {
        Some(p) => (p.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % passes,
        None => 0,
    }
}

/// Walks the chain from its base up to `snap` (the head when the pass began: entries
/// written since are skipped, see [`verify_since`]; `None`: the stored head) and checks
/// every record against it. `expected` is about how many records are stored.
///
/// The table of every chained id's latest value hash is what the check holds in memory
/// (24 bytes an id, in a hash table at most half full: ~52 MiB for the default 1M
/// records, which took a serving daemon past 100 MiB). So a store with more than
/// `ids_per_pass` records is checked in passes: pass `k` holds only the ids of its share
/// ([`pass_of`]), walking the chain and the records again, and judges only those. Every id
/// is judged in exactly one pass, whatever chunk it is stored in; the links are checked
/// in the first. Time grows by a chain and records walk per extra pass (the records' own
/// hashes are computed once each).
pub(crate) fn verify(
    records: &sled::Tree,
    chain: &sled::Tree,
    meta: &sled::Tree,
    expected: usize,
    ids_per_pass: usize,
    snap: Option<Point>,
) -> Result<VerifyReport, sled::Error> {
    let base = meta.get(META_BASE)?.and_then(|v| Base::decode(&v)).unwrap_or_default();
    let head = match snap {
        Some(p) => Some(p),
        None => meta.get(META_HEAD)?.and_then(|v| Point::decode(&v)),
    };
    let upto = snap.map_or(u64::MAX, |p| p.seq);
    let passes = expected.div_ceil(ids_per_pass.max(1)).max(1) as u64;
    let mut problems = Vec::new();
    // Walked along the chain in the first pass only.
    let mut walk = Walk::from(base.point);
    let mut n = 0u64;
    for pass in 0..passes {
        let mine = |id: &[u8]| passes == 1 || pass_of(id, passes) == pass;
        let mut latest = Latest { packed: HashMap::with_capacity(expected.div_ceil(passes as usize)), other: HashMap::new() };
        for chunk in crate::paced::Paced::all(chain) {
            let (k, v) = chunk?;
            let Ok(items) = chunk::decode(&k, &v, legacy_entry) else {
                if pass == 0 {
                    walk.unreadable(key_seq(&k));
                }
                continue;
            };
            // Below the base: left by a retention pass that stopped half way, moot. Above
            // `upto`: written during the pass, judged by `verify_since`.
            for it in items.iter().filter(|it| it.seq > base.point.seq && it.seq <= upto) {
                let e = if pass == 0 { walk.step(it) } else { Entry::from_item(it) };
                if let Some(e) = e.filter(|e| mine(&e.id)) {
                    latest.insert(e.id, &e.value_hash);
                }
            }
        }
        for chunk in crate::paced::Paced::all(records) {
            let (k, v) = chunk?;
            // A chunk whose framing is broken hides its records: they are reported as removed.
            let Ok(items) = chunk::decode(&k, &v, chunk::legacy_record) else { continue };
            for it in items.into_iter().filter(|it| mine(&it.id)) {
                n += 1;
                let id = String::from_utf8_lossy(&it.id).into_owned();
                match latest.remove(&it.id) {
                    None => problems.push(Problem::Unchained { id }),
                    Some(h) if h != short(&value_hash(&it.value)) => problems.push(Problem::Changed { id }),
                    Some(_) => {}
                }
            }
        }
        problems.extend(
            latest
                .into_ids()
                .filter(|id| id.as_slice() > base.pruned_upto.as_slice())
                .map(|id| Problem::Removed { id: String::from_utf8_lossy(&id).into_owned() }),
        );
    }
    let (_, entries, chain_problems) = walk.end(head);
    // Problems by the record they concern (each pass found its own), then the chain's.
    problems.sort_by_key(Problem::position);
    problems.extend(chain_problems);
    let head = head.unwrap_or_default();
    Ok(VerifyReport {
        records: n,
        chain_entries: entries,
        head: hex(&head.link),
        head_seq: head.seq,
        problems,
    })
}
