//! A deterministic ~1 MB tool result mixing what real results carry (logs, embedded JSON
//! records, prose, hashes, UUIDs, base64, a few PII values and secrets), so `cargo xtask bench`
//! can report detector throughput in MB/s on realistic input. No randomness, no I/O.

use serde_json::{Value, json};

/// Target size of the serialised fixture in bytes.
pub const FIXTURE_BYTES: usize = 1 << 20;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        let i = (self.next() as usize) % xs.len().max(1);
        xs.get(i).copied().unwrap_or("")
    }
    fn hex(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b"0123456789abcdef"[(self.next() % 16) as usize])).collect()
    }
}

const WORDS: &[&str] = &[
    "the", "deployment", "finished", "with", "status", "ok", "retrying", "connection", "to",
    "upstream", "cache", "miss", "for", "key", "user", "session", "renewed", "latency", "p99",
    "increased", "after", "release", "of", "version", "billing", "service", "queue", "drained",
];

/// Build the fixture: a `tools/call` result whose `content` holds text blocks of logs, prose and
/// embedded JSON, plus `structuredContent` with numbers, hashes and ids.
pub fn scan_throughput_fixture() -> Value {
    let mut rng = Lcg(0x6d63_7077_6174_6368);
    let mut blocks = Vec::new();
    let mut size = 0usize;
    let mut n = 0u64;
    while size < FIXTURE_BYTES {
        let text = match n % 4 {
            0 => {
                // Log lines with timestamps, IPs, versions, request ids.
                let mut t = String::new();
                for i in 0..40 {
                    t.push_str(&format!(
                        "2025-06-18T02:{:02}:{:02}Z level=info src=10.{}.{}.{} req={}-{}-4{}-a{}-{} version 1.{}.{}.{} msg=\"{} {} {}\"\n",
                        i % 60,
                        rng.next() % 60,
                        rng.next() % 256,
                        rng.next() % 256,
                        1 + rng.next() % 250,
                        rng.hex(8),
                        rng.hex(4),
                        rng.hex(3),
                        rng.hex(3),
                        rng.hex(12),
                        rng.next() % 10,
                        rng.next() % 10,
                        rng.next() % 100,
                        rng.pick(WORDS),
                        rng.pick(WORDS),
                        rng.pick(WORDS),
                    ));
                }
                t
            }
            1 => {
                // Embedded JSON records, some with PII.
                let mut rows = Vec::new();
                for i in 0..25u64 {
                    let pii = i % 5 == 0;
                    rows.push(json!({
                        "id": format!("cus_{}", rng.hex(14)),
                        "name": format!("{} {}", rng.pick(&["Dana", "Lee", "Maria", "Omar", "Yuki"]), rng.pick(&["Whitfield", "Park", "Gonzalez", "Haddad", "Sato"])),
                        "email": if pii { format!("user{}@example.org", rng.next() % 10000) } else { "redacted".to_string() },
                        "phone": if pii { "+44 20 7946 0958".to_string() } else { String::new() },
                        "card": if pii { "4111 1111 1111 1111" } else { "" },
                        "ssn": if i % 10 == 0 { "372-81-4419" } else { "" },
                        "commit": rng.hex(40),
                        "balance_cents": rng.next() % 1_000_000,
                        "created_at_us": 1_718_712_345_678_909u64 + i,
                    }));
                }
                serde_json::to_string_pretty(&Value::Array(rows)).unwrap_or_default()
            }
            2 => {
                // Prose and code.
                let mut t = String::from("## Release notes\n\n");
                for _ in 0..200 {
                    t.push_str(rng.pick(WORDS));
                    t.push(' ');
                }
                t.push_str("\n\n```rust\nfn main() { let token_count = 42; println!(\"{}\", token_count); }\n```\n");
                t.push_str("sha256: ");
                t.push_str(&rng.hex(64));
                t.push_str("\nsnmpget -v2c -c public router1 1.3.6.1.2.1.1.5.0\ngit clone git@github.com:acme/billing-api.git\n");
                t
            }
            _ => {
                // Config dump with base64 blobs and an occasional secret.
                let mut t = String::from("[default]\nregion = eu-central-1\n");
                for _ in 0..30 {
                    t.push_str(&format!("blob_{} = {}\n", rng.hex(4), base64_like(&mut rng, 44)));
                }
                if n % 8 == 3 {
                    t.push_str("aws_access_key_id = AKIALALEMEL33243OLIB\nGITHUB_TOKEN=ghp_paji5ZlVmLSVdSuBVhkdGjEsowumCtOKU0hl\n");
                }
                t
            }
        };
        let block = json!({ "type": "text", "text": text });
        size += serde_json::to_string(&block).map_or(text.len(), |b| b.len()) + 1;
        blocks.push(block);
        n += 1;
    }
    json!({
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "content": blocks,
            "structuredContent": {
                "request_id": "550e8400-e29b-41d4-a716-446655440000",
                "created_at_us": 1_718_712_345_678_909u64,
                "artifact_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            },
            "isError": false,
        }
    })
}

fn base64_like(rng: &mut Lcg, n: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..n).map(|_| char::from(A[(rng.next() % 64) as usize])).collect()
}
