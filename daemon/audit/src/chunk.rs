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
//! length, value`; or [`MAGIC_LZ4`], the length of those items' encoding (u32 LE), the
//! length of the block that follows (u32 LE), and that encoding as one LZ4 block (the
//! lengths make a compressed chunk self-delimiting: a scan of the store's files can find
//! and read one without sled, as the secrets test does). Record chunks are compressed when that saves a quarter: a
//! record is ~2 KiB of JSON that repeats its neighbours (the same process, server and
//! decision), so a chunk of [`RECORD_CHUNK_RAW_BYTES`] of records is stored in about
//! [`CHUNK_BYTES`], and sled sees about four times fewer pages than with raw chunks of that
//! size (its resident memory grows with the page count; docs/audit-store.md). Record chunks: items sorted by record id, unique; the key is at most
//! the smallest id, and every id is below the next chunk's key. `seq` is the chain seq of
//! the record's latest write. Chain chunks: items in seq order, key = the first seq (u64
//! big-endian), `value` = link || value hash. A value without [`MAGIC`] is a single item
//! as layout 1 stored it (one key per record or entry); `decode` reads both.

/// The first bytes of every chunk value. A layout-1 record value is JSON (`{`), a
/// layout-1 chain value starts with a hash.
pub(crate) const MAGIC: &[u8] = b"\0mwc\x01";
/// The first bytes of a compressed chunk.
pub(crate) const MAGIC_LZ4: &[u8] = b"\0mwc\x02";
/// The most a compressed chunk may say it holds: larger is a damaged or forged value (it
/// would be an allocation of the claimed size), read as a bad chunk.
const RAW_MAX: usize = 1 << 20;
/// Encodings shorter than this are not worth compressing.
const COMPRESS_FROM: usize = 1024;
/// A chunk is closed once its encoding reaches this size. sled's page cache is 256
/// shards that each keep at least their most recent page whatever its size, so resident
/// memory has a floor of ~256 leaves (a leaf holds up to 16 values): measured over 1M
/// records, 2 KiB chunks kept the floor lowest but still grew with the page count,
/// 8 KiB (and 32 KiB) chunks raised the floor by 30 (140) MiB, 4 KiB stayed flat.
pub(crate) const CHUNK_BYTES: usize = 4 * 1024;
/// A record chunk is closed once its items' encoding (before compression) reaches this:
/// compressed, about [`CHUNK_BYTES`] (measured on the daemon's records: 8 of ~2.1 KiB
/// store in ~3.5 KiB).
pub(crate) const RECORD_CHUNK_RAW_BYTES: usize = 16 * 1024;
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
    let mut body = Vec::with_capacity(items.iter().map(Item::encoded_len).sum::<usize>());
    for it in items {
        // Ids are 26-byte record ids; a longer one (only from a hand-edited store) is cut
        // to what the length field holds rather than written unreadable.
        let id = &it.id[..it.id.len().min(usize::from(u16::MAX))];
        body.extend_from_slice(&(id.len() as u16).to_le_bytes());
        body.extend_from_slice(id);
        body.extend_from_slice(&it.seq.to_le_bytes());
        let value = &it.value[..it.value.len().min(u32::MAX as usize)];
        body.extend_from_slice(&(value.len() as u32).to_le_bytes());
        body.extend_from_slice(value);
    }
    if (COMPRESS_FROM..=RAW_MAX).contains(&body.len()) {
        let packed = lz4_flex::block::compress(&body);
        if packed.len() + 8 < body.len() / 4 * 3 {
            let mut out = Vec::with_capacity(MAGIC_LZ4.len() + 8 + packed.len());
            out.extend_from_slice(MAGIC_LZ4);
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&(packed.len() as u32).to_le_bytes());
            out.extend_from_slice(&packed);
            return out;
        }
    }
    let mut out = Vec::with_capacity(MAGIC.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&body);
    out
}

/// The items of the chunk stored under `key`; `legacy` turns a layout-1 value (no
/// [`MAGIC`]) into its single item.
pub(crate) fn decode(key: &[u8], bytes: &[u8], legacy: fn(&[u8], &[u8]) -> Option<Item>) -> Result<Vec<Item>, BadChunk> {
    if let Some(rest) = bytes.strip_prefix(MAGIC_LZ4) {
        let (len, rest) = take(rest, 4)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (plen, packed) = take(rest, 4)?;
        let plen = u32::from_le_bytes([plen[0], plen[1], plen[2], plen[3]]) as usize;
        if len > RAW_MAX || plen != packed.len() {
            return Err(BadChunk);
        }
        let body = lz4_flex::block::decompress(packed, len).map_err(|_| BadChunk)?;
        if body.len() != len {
            return Err(BadChunk);
        }
        return items(&body);
    }
    match bytes.strip_prefix(MAGIC) {
        Some(rest) => items(rest),
        None => legacy(key, bytes).map(|it| vec![it]).ok_or(BadChunk),
    }
}

/// The items of an uncompressed encoding.
fn items(mut rest: &[u8]) -> Result<Vec<Item>, BadChunk> {
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

/// The length of `items`' encoding before compression (what [`has_room`] measures).
pub(crate) fn raw_len(items: &[Item]) -> usize {
    MAGIC.len() + items.iter().map(Item::encoded_len).sum::<usize>()
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

/// Whether `items` (whose encoding before compression is `len` bytes) can take one more
/// item, in a chunk closed at `limit` bytes ([`CHUNK_BYTES`] for the chain,
/// [`RECORD_CHUNK_RAW_BYTES`] for records).
pub(crate) fn has_room(items: usize, len: usize, limit: usize) -> bool {
    items < CHUNK_ITEMS && len < limit
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

    /// Records as the daemon writes them: the same process, server and decision, with
    /// their own id, time and hashes.
    fn records(n: u64) -> Vec<Item> {
        use sha2::Digest;
        (0..n)
            .map(|i| {
                let h = |what: &str| format!("{:x}", sha2::Sha256::digest(format!("{what}{i}")));
                let value = format!(
                    r#"{{"schema":1,"id":"0000000179652821{i:010}","ts_ms":{},"duration_us":{},"process":{{"pid":32230,"comm":"python3","exe":"/usr/bin/python3.13","cmdline":["python3","agent.py","--server","http://127.0.0.1:38567/mcp"],"ancestry":[{{"pid":32157,"comm":"bash","exe":"/usr/bin/bash"}},{{"pid":1191,"comm":"systemd","exe":"/usr/lib/systemd/systemd"}}]}},"dst":"127.0.0.1:38567","server":"http://127.0.0.1:38567/mcp","transport":"streamable-http","method":"tools/call","jsonrpc_id":"{i}","name":"echo","args_hash":"{}","result_hash":"{}","status":{{"state":"ok"}},"decision":{{"action":"allow","effective":"forward","mode":"enforce","rules":["policy:default"],"reason":"no policy rule matched; the policy default is allow"}},"alerts":["shadow MCP server: http://127.0.0.1:38567/mcp is not in the policy registry"],"hostname":"vm","host_id":"4a5771f4c3786b796d085a1d57e5df4e"}}"#,
                    1_796_528_216_328 + i,
                    150 + i % 97,
                    h("args"),
                    h("result"),
                );
                item(&format!("0000000179652821{i:010}"), i, &value)
            })
            .collect()
    }

    #[test]
    fn record_chunks_are_stored_compressed_and_read_back_whole() {
        let items = records(8);
        let bytes = encode(&items);
        assert!(bytes.starts_with(MAGIC_LZ4), "a chunk of records is compressed");
        assert!(bytes.len() * 3 < raw_len(&items), "{} bytes stored for {} raw", bytes.len(), raw_len(&items));
        assert_eq!(decode(b"k", &bytes, legacy_record), Ok(items));
        // A chunk of what does not compress (hashes) is stored as it is.
        let links: Vec<Item> = (0..40u64)
            .map(|i| {
                use sha2::Digest;
                let id = sha2::Sha256::digest(i.to_le_bytes()).to_vec();
                let mut value = sha2::Sha256::digest(&id).to_vec();
                value.extend_from_slice(&sha2::Sha256::digest(&value));
                Item { id, seq: i, value }
            })
            .collect();
        let bytes = encode(&links);
        assert!(bytes.starts_with(MAGIC), "{:?}", &bytes[..5]);
        assert_eq!(decode(b"k", &bytes, legacy_record), Ok(links));
    }

    #[test]
    fn a_damaged_compressed_chunk_is_a_bad_chunk_not_an_allocation() {
        let bytes = encode(&records(8));
        assert!(bytes.starts_with(MAGIC_LZ4));
        let claim = |len: u32| {
            let mut b = bytes.clone();
            b[MAGIC_LZ4.len()..MAGIC_LZ4.len() + 4].copy_from_slice(&len.to_le_bytes());
            decode(b"k", &b, legacy_record)
        };
        assert_eq!(claim(u32::MAX), Err(BadChunk), "4 GiB claimed");
        assert_eq!(claim(10), Err(BadChunk), "less than the block holds");
        for cut in [MAGIC_LZ4.len() + 2, MAGIC_LZ4.len() + 4, MAGIC_LZ4.len() + 8, bytes.len() / 2, bytes.len() - 1] {
            assert_eq!(decode(b"k", &bytes[..cut], legacy_record), Err(BadChunk), "cut at {cut}");
        }
    }

    /// A store file edited by hand (or by an attacker) must not crash whoever reads it:
    /// every single-byte change and every cut of a compressed chunk decodes to items or to
    /// a bad chunk, never a panic or an allocation past `RAW_MAX`.
    #[test]
    fn every_damaged_compressed_chunk_decodes_or_is_refused() {
        let bytes = encode(&records(8));
        assert!(bytes.starts_with(MAGIC_LZ4));
        // A changed literal inside the block decodes to changed values: the hash chain,
        // not the chunk framing, is what tells (verify names the record).
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                if let Ok(items) = decode(b"k", &b, legacy_record) {
                    assert!(raw_len(&items) <= RAW_MAX + MAGIC.len(), "byte {i}");
                }
            }
        }
        for cut in 0..bytes.len() {
            let _ = decode(b"k", &bytes[..cut], legacy_record);
        }
    }

    #[test]
    fn broken_framing_is_a_bad_chunk_not_a_panic() {
        let bytes = encode(&[item("abc", 1, "value")]);
        for cut in MAGIC.len() + 1..bytes.len() {
            assert_eq!(decode(b"k", &bytes[..cut], legacy_record), Err(BadChunk), "cut at {cut}");
        }
    }
}
