//! Keyed hashes (HMAC-SHA256) of sensitive values.
//!
//! Why this exists: audit records and finding reports carry hashes of arguments,
//! results and detected values so calls can be correlated and pinned without storing
//! the values. A plain sha256 of a 9-digit SSN or a short token is reversed by brute
//! force in seconds; an HMAC under a per-host secret ([`HashKey`], 32 random bytes the
//! daemon keeps 0600 in its state dir) is not, while staying stable on one host.
//! HMAC is written out here over `sha2` (RFC 2104) rather than pulling in a crate;
//! the RFC 4231 vectors below pin it.

use sha2::{Digest, Sha256};

const BLOCK: usize = 64;

/// A secret key for [`HashKey::hex_mac`]. Its `Debug` never shows the bytes.
///
/// It keeps both hash states with their pad block (the block-sized key XOR ipad, XOR
/// opad) already absorbed, so a MAC clones them instead of compressing the two pad blocks
/// again: two of the four to five SHA-256 blocks of a short value's MAC, and every call
/// MACs its arguments and its result.
#[derive(Clone)]
pub struct HashKey {
    /// The key padded to a block: what equality compares (the states follow from it).
    key: [u8; BLOCK],
    inner: Sha256,
    outer: Sha256,
}

impl PartialEq for HashKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for HashKey {}

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(..)")
    }
}

impl HashKey {
    /// A key from secret bytes (the daemon uses 32 random bytes). Keys longer than the
    /// SHA-256 block are hashed first, as RFC 2104 says.
    pub fn new(secret: &[u8]) -> HashKey {
        let mut k = [0u8; BLOCK];
        if secret.len() > BLOCK {
            k[..32].copy_from_slice(&Sha256::digest(secret));
        } else {
            k[..secret.len()].copy_from_slice(secret);
        }
        let mut ipad = [0x36u8; BLOCK];
        let mut opad = [0x5cu8; BLOCK];
        for i in 0..BLOCK {
            ipad[i] ^= k[i];
            opad[i] ^= k[i];
        }
        let mut inner = Sha256::new();
        inner.update(ipad);
        let mut outer = Sha256::new();
        outer.update(opad);
        HashKey { key: k, inner, outer }
    }

    /// HMAC-SHA256 of the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut inner = self.inner.clone();
        for p in parts {
            inner.update(p);
        }
        let mut outer = self.outer.clone();
        outer.update(inner.finalize());
        outer.finalize().into()
    }

    /// Lower-case hex HMAC-SHA256 of `data`.
    pub fn hex_mac(&self, data: &[u8]) -> String {
        // Into a fixed buffer: `hex::encode` builds its String char by char (~900
        // instructions, and every call hashes its arguments and its result).
        let mac = self.mac(&[data]);
        let mut text = [0u8; 64];
        // Neither fails (64 hex digits fit, and they are ASCII); `hex::encode` stays the
        // one fallback rather than a panic.
        hex::encode_to_slice(mac, &mut text)
            .ok()
            .and_then(|()| String::from_utf8(text.to_vec()).ok())
            .unwrap_or_else(|| hex::encode(mac))
    }

    /// Keyed hash of the canonical JSON of `v` (what `args_hash`/`result_hash` record).
    ///
    /// The canonical text is written into a buffer this thread keeps (every call hashes
    /// its arguments and its result): at most [`KEEP_BUFFER`] bytes of it stay allocated.
    pub fn hash_json(&self, v: &serde_json::Value) -> String {
        thread_local! {
            static BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        BUF.with(|b| match b.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                crate::canonical::write_canonical(v, &mut buf);
                let hex = self.hex_mac(buf.as_bytes());
                if buf.capacity() > KEEP_BUFFER {
                    buf.clear();
                    buf.shrink_to(KEEP_BUFFER);
                }
                hex
            }
            Err(_) => self.hex_mac(crate::canonical::canonical_json(v).as_bytes()),
        })
    }
}

/// Most bytes of [`HashKey::hash_json`]'s canonical-text buffer a thread keeps between
/// calls (a larger value's text is freed once hashed).
pub const KEEP_BUFFER: usize = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    /// The reused buffer changes nothing: a big value, then a small one, then the big
    /// one again hash as their canonical text does.
    #[test]
    fn hash_json_is_the_mac_of_the_canonical_text_whatever_came_before() {
        let k = HashKey::new(b"k");
        let big = serde_json::json!({"z": "x".repeat(200_000), "a": [1, 2.5, null]});
        let small = serde_json::json!({"b": 1, "a": "\u{1}"});
        for v in [&big, &small, &big, &small] {
            assert_eq!(k.hash_json(v), k.hex_mac(crate::canonical::canonical_json(v).as_bytes()));
        }
        assert_ne!(k.hash_json(&big), k.hash_json(&small));
    }

    #[test]
    fn rfc4231_vectors() {
        // Test case 1.
        let k = HashKey::new(&[0x0b; 20]);
        assert_eq!(k.hex_mac(b"Hi There"), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        // Test case 2: short key.
        let k = HashKey::new(b"Jefe");
        assert_eq!(k.hex_mac(b"what do ya want for nothing?"), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert_eq!(k.mac(&[b"what do ya ", b"want for nothing?"]), k.mac(&[b"what do ya want for nothing?"]));
        // Test case 6: key longer than a block.
        let k = HashKey::new(&[0xaa; 131]);
        assert_eq!(
            k.hex_mac(b"Test Using Larger Than Block-Size Key - Hash Key First"),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// The kept pad states are what absorbing the pads gives: a MAC over them equals
    /// the RFC 2104 construction written out, for values across block boundaries.
    #[test]
    fn kept_pad_states_give_the_written_out_hmac() {
        let k = HashKey::new(b"per-host secret");
        for n in [0usize, 1, 55, 56, 63, 64, 65, 200] {
            let data = vec![0x5a; n];
            let mut inner = Sha256::new();
            inner.update(k.key.map(|b| b ^ 0x36));
            inner.update(&data);
            let mut outer = Sha256::new();
            outer.update(k.key.map(|b| b ^ 0x5c));
            outer.update(inner.finalize());
            let want: [u8; 32] = outer.finalize().into();
            assert_eq!(k.mac(&[&data]), want, "{n} bytes");
        }
        assert_eq!(k, HashKey::new(b"per-host secret"));
        assert_ne!(k, HashKey::new(b"another secret"));
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(format!("{:?}", HashKey::new(b"secret")), "HashKey(..)");
    }
}
