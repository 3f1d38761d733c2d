//! Records and chain entries are kept in sled as chunks: one sled value holds many.
//!
//! Why it exists: sled keeps bookkeeping in memory for every page it has written (a page
//! table slot, the page's fragment list, its place in a segment's page set), and a leaf
//! page splits at 16 keys. One key per record and one per chain entry (two per call)
//! therefore made mcpwatchd's resident memory grow with the number of records stored
//! (measured: ~3.5 MiB per 100k calls, +27 % between the 500k and 1M marks of the soak).
//! A chunk holds up to [`CHUNK_BYTES`] of items, so sled sees ~10x fewer pages and its
//! bookkeeping stays small whatever the number of records (docs/audit-store.md).
//!
//! A chunk value: [`MAGIC`], then per item `u16 LE id length, id, u64 LE seq, u32 LE value
//! length, value`. Record chunks: items sorted by record id, unique; the key is at most
//! the smallest id, and every id is below the next chunk's key. `seq` is the chain seq of
//! the record's latest write. Chain chunks: items in seq order, key = the first seq (u64
//! big-endian), `value` = link || value hash. A value without [`MAGIC`] is a single item
//! as layout 1 stored it (one key per record or entry); `decode` reads both.

/// The first bytes of every chunk value. A layout-1 record value is JSON (`{`), a
/// layout-1 chain value starts with a hash.
pub(crate) const MAGIC: &[u8] = b"\0mwc\x01";
/// A chunk is closed once its encoding reaches this size. sled's page cache is 256
/// shards that each keep at least their most recent page whatever its size, so resident
/// memory has a floor of ~256 leaves (a leaf holds up to 16 values): measured over 1M
/// records, 2 KiB chunks kept the floor lowest but still grew with the page count,
/// 8 KiB (and 32 KiB) chunks raised the floor by 30 (140) MiB, 4 KiB stayed flat.
pub(crate) const CHUNK_BYTES: usize = 4 * 1024;
/// At most this many items per chunk (chain entries are small).
pub(crate) const CHUNK_ITEMS: usize = 128;

/// One record (or chain entry) inside a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub id: Vec<u8>,
    pub seq: u64,
    pub value: Vec<u8>,
}

impl Item {
    pub fn encoded_len(&self) -> usize {
        2 + self.id.len() + 8 + 4 + self.value.len()
    }
}

/// A chunk whose framing is broken (not a decodable sequence of items).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadChunk;

pub(crate) fn encode(items: &[Item]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + items.iter().map(Item::encoded_len).sum::<usize>());
    out.extend_from_slice(MAGIC);
    for it in items {
        // Ids are 26-byte record ids; a longer one (only from a hand-edited store) is cut
        // to what the length field holds rather than written unreadable.
        let id = &it.id[..it.id.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id);
        out.extend_from_slice(&it.seq.to_le_bytes());
        let value = &it.value[..it.value.len().min(u32::MAX as usize)];
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// The items of the chunk stored under `key`; `legacy` turns a layout-1 value (no
/// [`MAGIC`]) into its single item.
pub(crate) fn decode(key: &[u8], bytes: &[u8], legacy: fn(&[u8], &[u8]) -> Option<Item>) -> Result<Vec<Item>, BadChunk> {
    let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
        return legacy(key, bytes).map(|it| vec![it]).ok_or(BadChunk);
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (id_len, r) = take(rest, 2)?;
        let id_len = usize::from(u16::from_le_bytes([id_len[0], id_len[1]]));
        let (id, r) = take(r, id_len)?;
        let (seq, r) = take(r, 8)?;
        let (vlen, r) = take(r, 4)?;
        let vlen = u32::from_le_bytes([vlen[0], vlen[1], vlen[2], vlen[3]]) as usize;
        let (value, r) = take(r, vlen)?;
        let mut s = [0u8; 8];
        s.copy_from_slice(seq);
        out.push(Item { id: id.to_vec(), seq: u64::from_le_bytes(s), value: value.to_vec() });
        rest = r;
    }
    Ok(out)
}

fn take(b: &[u8], n: usize) -> Result<(&[u8], &[u8]), BadChunk> {
    if b.len() < n {
        return Err(BadChunk);
    }
    Ok(b.split_at(n))
}

/// A layout-1 record value: the key is the record id, the value its JSON.
pub(crate) fn legacy_record(key: &[u8], value: &[u8]) -> Option<Item> {
    Some(Item { id: key.to_vec(), seq: 0, value: value.to_vec() })
}

/// Whether `items` (already encoded as `len` bytes) can take one more item.
pub(crate) fn has_room(items: usize, len: usize) -> bool {
    items < CHUNK_ITEMS && len < CHUNK_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, seq: u64, value: &str) -> Item {
        Item { id: id.as_bytes().to_vec(), seq, value: value.as_bytes().to_vec() }
    }

    #[test]
    fn chunks_roundtrip_and_layout_one_values_read_as_one_item() {
        let items = vec![item("a", 1, "{\"x\":1}"), item("b", 7, ""), item("c", u64::MAX, "z")];
        let bytes = encode(&items);
        assert!(bytes.starts_with(MAGIC));
        assert_eq!(decode(b"a", &bytes, legacy_record), Ok(items));
        assert_eq!(decode(b"k", b"{\"schema\":1}", legacy_record), Ok(vec![item("k", 0, "{\"schema\":1}")]));
        assert_eq!(decode(b"k", &encode(&[]), legacy_record), Ok(vec![]));
    }

    #[test]
    fn broken_framing_is_a_bad_chunk_not_a_panic() {
        let bytes = encode(&[item("abc", 1, "value")]);
        for cut in MAGIC.len() + 1..bytes.len() {
            assert_eq!(decode(b"k", &bytes[..cut], legacy_record), Err(BadChunk), "cut at {cut}");
        }
    }
}
