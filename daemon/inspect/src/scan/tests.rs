//! Per-detector valid/invalid examples, config validation, actions, JSON scanning and redaction.

use serde_json::{Value, json};
use sha2::Digest as _;

use super::*;
use crate::{CustomPattern, Embedded, InspectConfig};

fn ins() -> Inspector {
    Inspector::new(&InspectConfig::default()).unwrap()
}

/// (detector id, matched text) for every finding.
fn hits(s: &str) -> Vec<(String, String)> {
    ins().scan_str(s).into_iter().map(|f| (f.detector.clone(), s[f.start..f.end].to_string())).collect()
}

fn one(s: &str, detector: &str, text: &str) {
    let h = hits(s);
    assert_eq!(h, vec![(detector.to_string(), text.to_string())], "input: {s:?}");
}

fn none(s: &str) {
    let h = hits(s);
    assert!(h.is_empty(), "input {s:?} gave {h:?}");
}

fn none_of(s: &str, detector: &str) {
    let h = hits(s);
    assert!(!h.iter().any(|(d, _)| d == detector), "input {s:?} gave {h:?}");
}

#[test]
fn email() {
    one("contact maria.gonzalez@example.org today", "pii.email", "maria.gonzalez@example.org");
    one("mailto:alice@example.com", "pii.email", "alice@example.com");
    one("Contact alice@example.com: she knows", "pii.email", "alice@example.com");
    one("<bob.smith+tag@mail.example.co.uk>", "pii.email", "bob.smith+tag@mail.example.co.uk");
    none("git clone git@github.com:acme/billing-api.git");
    none("ssh://git@github.com/acme/x");
    none("user@localhost and a@b.c and pkg@1.2.3");
    none("send to billing@vendor-partner.example or support@acme.example");
    none("@scope/package and foo@ bar");
}

#[test]
fn jid_digits_are_a_phone_number() {
    one("442079460958@s.whatsapp.net", "pii.phone", "442079460958");
}

#[test]
fn phone() {
    one("call +44 20 7946 0958 now", "pii.phone", "+44 20 7946 0958");
    one("to +13241234123.", "pii.phone", "+13241234123");
    one("tel: +1 (415) 555-0132", "pii.phone", "+1 (415) 555-0132");
    one("office (415) 555-0132", "pii.phone", "(415) 555-0132");
    one("fax 415-555-0132", "pii.phone", "415-555-0132");
    one("mobile 415.555.0132", "pii.phone", "415.555.0132");
    one("London 020 7946 0958", "pii.phone", "020 7946 0958");
    one("ruf an: 030 1234 5678", "pii.phone", "030 1234 5678");
    for s in [
        "2025-06-18T02:14:09+05:30",
        "+2025-06-18",
        "x+12345678901",
        "3 + 4 = 7",
        "+1.5 points",
        "id 1234567890123456789",
        "415-555.0132",
        "123-456-7890",
        "550e8400-e29b-41d4-a716-446655440000",
        "pi 3.14159265358",
        "+12345678901234567",
        "version 1.2.3.4",
    ] {
        none_of(s, "pii.phone");
    }
}

#[test]
fn ssn() {
    one("SSN: 372-81-4419", "pii.us_ssn", "372-81-4419");
    one("id 372-81-4419.", "pii.us_ssn", "372-81-4419");
    one("SSN 372 81 4419", "pii.us_ssn", "372 81 4419");
    one("ssn=372814419", "pii.us_ssn", "372814419");
    none("372 81 4419");
    none("ref 372814419");
    for bad in ["000-12-3456", "666-12-3456", "912-34-5678", "372-00-4419", "372-81-0000", "078-05-1120", "123-45-6789", "693-09.4444", "1372-81-4419", "372-81-44190", "372-81-4419-2"] {
        none_of(&format!("SSN {bad}"), "pii.us_ssn");
    }
}

#[test]
fn credit_card() {
    one("Visa 4111 1111 1111 1111 exp 12/27", "pii.credit_card", "4111 1111 1111 1111");
    one("card 4111-1111-1111-1111.", "pii.credit_card", "4111-1111-1111-1111");
    one("pan=4111111111111111", "pii.credit_card", "4111111111111111");
    one("4111111111111111", "pii.credit_card", "4111111111111111");
    one("visa 4222222222222", "pii.credit_card", "4222222222222");
    one("amex 3782 822463 10005", "pii.credit_card", "3782 822463 10005");
    one("カード ４１１１ １１１１ １１１１ １１１１ です", "pii.credit_card", "４１１１ １１１１ １１１１ １１１１");
    one("Order 12 4111 1111 1111 1111 2027", "pii.credit_card", "4111 1111 1111 1111");
    for s in [
        "4111 1111 1111 1112",
        "created 1718712345678909",
        "4111 1111-1111 1111",
        "12345678901234567890",
        "4111111111111111.5",
        "v4111111111111111",
        "0000 0000 0000 0000",
        "3782822463100051",
        // 13-digit phone number in a JID passes Visa-13 + Luhn: not a card without context.
        "4915112345678",
    ] {
        none_of(s, "pii.credit_card");
    }
}

#[test]
fn iban() {
    one("IBAN DE89 3704 0044 0532 0130 00 please", "pii.iban", "DE89 3704 0044 0532 0130 00");
    one("GB82WEST12345698765432", "pii.iban", "GB82WEST12345698765432");
    one("GB82 WEST 1234 5698 7654 32 TO", "pii.iban", "GB82 WEST 1234 5698 7654 32");
    none("DE00 3704 0044 0532 0130 00; GB83 WEST 1234 5698 7654 32");
    none_of("DE89 3704 0044 0532 0130 0012", "pii.iban");
    none_of("ZZ89 3704 0044 0532 0130 00", "pii.iban");
}

#[test]
fn ip_addresses() {
    one("login ok src=203.0.113.42 ua=x", "pii.ip_address", "203.0.113.42");
    one("from 2001:db8::7:1", "pii.ip_address", "2001:db8::7:1");
    one("[fe80::1]:8080", "pii.ip_address", "fe80::1");
    one("http://198.51.100.7/x", "pii.ip_address", "198.51.100.7");
    one("net 10.0.0.0/8", "pii.ip_address", "10.0.0.0");
    one("mapped ::ffff:192.0.2.1 ok", "pii.ip_address", "::ffff:192.0.2.1");
    for s in [
        "snmpget 1.3.6.1.2.1.1.5.0",
        "version 1.2.3.4",
        "Version: 1.2.3.4",
        "firmware=10.2.0.15",
        "v1.2.3.4",
        "Mozilla/5.0 Chrome/120.0.0.0 Safari/537.36",
        "127.0.0.1:8080",
        "0.0.0.0",
        "mask 255.255.255.0",
        "1.2.3.256",
        "01.2.3.4",
        "at 02:14:09",
        "mac aa:bb:cc:dd:ee:ff",
        "std::vector and DB::Add",
        "::1",
        "2025-06-18T02:15:40Z",
    ] {
        none_of(s, "pii.ip_address");
    }
}

#[test]
fn aws() {
    one("id AKIALALEMEL33243OLIB", "secret.aws_access_key", "AKIALALEMEL33243OLIB");
    one(
        "aws_secret_access_key = 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",
        "secret.aws_secret_key",
        "hi1ixJYaVPwydIj+r48/x43YH33t2XUXw7dtRQi+",
    );
    one(
        r#"{"SecretAccessKey": "hi1ixJYaVPwydIj+r48/x43YH33t2XUXw7dtRQi+"}"#,
        "secret.aws_secret_key",
        "hi1ixJYaVPwydIj+r48/x43YH33t2XUXw7dtRQi+",
    );
    none("AKIAIOSFODNN7EXAMPLE");
    none("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
    none("AKIAXXXXXXXXXXXXXXXX");
    // A 40-char value without the key-name context is not an AWS secret.
    none_of("value 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", "secret.aws_secret_key");
}

#[test]
fn github_and_slack() {
    one("GITHUB_TOKEN=ghp_paji5ZlVmLSVdSuBVhkdGjEsowumCtOKU0hl", "secret.github_token", "ghp_paji5ZlVmLSVdSuBVhkdGjEsowumCtOKU0hl");
    one("gho_paji5ZlVmLSVdSuBVhkdGjEsowumCtOKU0hl", "secret.github_token", "gho_paji5ZlVmLSVdSuBVhkdGjEsowumCtOKU0hl");
    for prefix in ["ghu_", "ghs_", "ghr_"] {
        let t = format!("{prefix}paji5ZlVmLSVdSuBVhkdGjEsowumCtOKU0hl");
        one(&format!("token: {t}"), "secret.github_token", &t);
    }
    none("ghx_paji5ZlVmLSVdSuBVhkdGjEsowumCtOKU0hl");
    let pat = format!("github_pat_{}", "11ABCDEFG0abcdefghijkl_mnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghi");
    assert_eq!(pat.len(), "github_pat_".len() + 82);
    one(&pat, "secret.github_token", &pat);
    none("ghp_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX");
    none("ghp_short");
    one(
        "SLACK=xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "secret.slack_token",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    );
    none("SLACK_BOT_TOKEN=xoxb-xxxxxxxxx-xxxxxxxxxx-xxxxxxxxxxxx");
}

const KEY_BODY: &str = "MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8QuKUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ";

#[test]
fn private_keys() {
    for (begin, end, nl) in [
        ("-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----", "\n"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "-----END OPENSSH PRIVATE KEY-----", "\n"),
        ("-----BEGIN EC PRIVATE KEY-----", "-----END EC PRIVATE KEY-----", "\r\n"),
        ("-----BEGIN ENCRYPTED PRIVATE KEY-----", "-----END ENCRYPTED PRIVATE KEY-----", "\n"),
        ("-----BEGIN PGP PRIVATE KEY BLOCK-----", "-----END PGP PRIVATE KEY BLOCK-----", "\n"),
    ] {
        let block = format!("{begin}{nl}{KEY_BODY}{nl}{KEY_BODY}{nl}{end}");
        one(&format!("key:{nl}{block}{nl}done"), "secret.private_key", &block);
    }
    // Documentation placeholder and public keys are not secrets.
    none("-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----");
    none(&format!("-----BEGIN PUBLIC KEY-----\n{KEY_BODY}\n-----END PUBLIC KEY-----"));
    // Truncated block (no footer) is still redacted.
    let f = ins().scan_str(&format!("-----BEGIN RSA PRIVATE KEY-----\n{KEY_BODY}\n{KEY_BODY}"));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].detector, "secret.private_key");
    assert!(f[0].confidence < 0.9);
}

#[test]
fn jwt() {
    let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    one(&format!("Authorization: Bearer {t}\n"), "secret.jwt", t);
    // alg none, empty signature
    let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxMjMifQ.";
    one(unsigned, "secret.jwt", unsigned);
    // header that is not JSON with alg
    none("eyJub3Rqc29uIjoxfQ.eyJzdWIiOiIxMjMifQ.abcdefgh");
    none("eyJfoo.bar.baz");
}

#[test]
fn passwords_and_generic_secrets() {
    one("password=hunter22", "secret.password", "hunter22");
    one("DB_PASSWORD: 'Sup3r-S3cret-Pa55!'", "secret.password", "Sup3r-S3cret-Pa55!");
    one("postgresql://admin:Sup3r-S3cret-Pa55!@db.internal.acme:5432/prod", "secret.password", "Sup3r-S3cret-Pa55!");
    one("https://oauth2:glpat9f8d7s6a5d4f@gitlab.example.com/x.git", "secret.password", "glpat9f8d7s6a5d4f");
    none("password: required");
    none("password=${DB_PASSWORD}");
    none("https://user:password@host.example/");
    none("password: ********");
    one("Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l\r\n", "secret.password", "YWxhZGRpbjpvcGVuc2VzYW1l");
    none("Authorization: Basic bm9jb2xvbmhlcmU=");
    none("basic functionality");
    one("api_key=sk9f8d7s6a5d4f3g2h1j", "secret.generic", "sk9f8d7s6a5d4f3g2h1j");
    one("{client_secret: Zm9vYmFyYmF6cXV4MTIz}", "secret.generic", "Zm9vYmFyYmF6cXV4MTIz");
    one("Authorization: Bearer abcDEF123456ghiJKL789", "secret.generic", "abcDEF123456ghiJKL789");
    none("token_type: Bearer");
    none(r#"WWW-Authenticate: Bearer resource_metadata="https://mcp.example/.well-known/x""#);
    none("next_page_token=CiAKGjBpNDd2Nmp2Zml2cXRwYjBpOXA3ZW1vYnQ");
    none("max_tokens: 4096");
    none("secret: my-secret-name");
    none("OPENAI_API_KEY=<your-key-here>");
}

#[test]
fn hashes_and_ids_are_never_secrets() {
    for s in [
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "commit 33a64df551425fcc55e4d42a148795d9f25f89d4",
        "550e8400-e29b-41d4-a716-446655440000",
        "sha512 cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
        "etag \"33a64df551425fcc55e4d42a148795d9f25f89d4\"",
        "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
    ] {
        none(s);
    }
}

#[test]
fn base64_wrapped_secrets() {
    one(r#""AWS_ACCESS_KEY_ID": "QUtJQUxBTEVNRUwzMzI0M09MSUI=""#, "secret.aws_access_key", "QUtJQUxBTEVNRUwzMzI0M09MSUI=");
    none(r#""username": "YmlsbGluZw==""#);
    // Binary-looking base64 is ignored.
    none("blob: q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQ");
    let cfg = InspectConfig { decode_base64: false, ..InspectConfig::default() };
    assert!(Inspector::new(&cfg).unwrap().scan_str("QUtJQUxBTEVNRUwzMzI0M09MSUI=").is_empty());
}

#[test]
fn custom_patterns() {
    let cfg = InspectConfig {
        custom: vec![CustomPattern {
            name: "acct".into(),
            pattern: r"ACCT-\d{6,10}".into(),
            kind: Kind::Pii,
            replacement: None,
            confidence: 0.9,
        }],
        ..InspectConfig::default()
    };
    let ins = Inspector::new(&cfg).unwrap();
    let f = ins.scan_str("account ACCT-1234567 and ACCT-12");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].detector, "custom.acct");
    assert_eq!(ins.replacement("custom.acct"), Some("<ACCT>"));
    let mut v = json!({"note": "account ACCT-1234567"});
    let r = ins.redact_json(&mut v);
    assert_eq!(v, json!({"note": "account <ACCT>"}));
    assert_eq!(r.counts.get("custom.acct"), Some(&1));
    // disabled via the custom prefix
    let off = Inspector::new(&InspectConfig { disabled: vec!["custom".into()], ..cfg }).unwrap();
    assert!(off.scan_str("ACCT-1234567").is_empty());
}

fn custom(name: &str, pattern: &str) -> InspectConfig {
    InspectConfig {
        custom: vec![CustomPattern { name: name.into(), pattern: pattern.into(), kind: Kind::Pii, replacement: None, confidence: 0.9 }],
        ..InspectConfig::default()
    }
}

#[test]
fn config_errors() {
    assert!(matches!(Inspector::new(&custom("Bad-Name", "x")), Err(InspectError::InvalidPatternName(_))));
    assert!(matches!(Inspector::new(&custom("a", "(")), Err(InspectError::PatternSyntax { .. })));
    assert!(matches!(Inspector::new(&custom("a", "x*")), Err(InspectError::PatternMatchesEmpty(_))));
    assert!(matches!(Inspector::new(&custom("a", &"x".repeat(2000))), Err(InspectError::PatternTooLong(_))));
    let mut two = custom("a", "x");
    two.custom.push(two.custom[0].clone());
    assert!(matches!(Inspector::new(&two), Err(InspectError::DuplicatePattern(_))));
    let typo = InspectConfig { disabled: vec!["pii.emial".into()], ..InspectConfig::default() };
    assert!(matches!(Inspector::new(&typo), Err(InspectError::UnknownDetector(s)) if s == "pii.emial"));
    let range = InspectConfig { min_confidence: 1.5, ..InspectConfig::default() };
    assert!(matches!(Inspector::new(&range), Err(InspectError::OutOfRange { .. })));
    let mut repl = custom("a", "x");
    repl.custom[0].replacement = Some("<A\"B>".into());
    assert!(matches!(Inspector::new(&repl), Err(InspectError::InvalidReplacement(_))));
    // Unknown fields are rejected so policy typos surface.
    assert!(serde_json::from_value::<InspectConfig>(json!({"enabeld": ["pii"]})).is_err());
    let parsed: InspectConfig = serde_json::from_value(json!({
        "enabled": ["pii.email", "secret"],
        "actions": {"secret": "block", "pii.email": "audit"},
        "custom": [{"name": "acct", "pattern": "ACCT-\\d{6,10}"}]
    }))
    .unwrap();
    let ins = Inspector::new(&parsed).unwrap();
    assert_eq!(ins.enabled_ids().first(), Some(&"pii.email"));
    assert!(!ins.enabled_ids().contains(&"pii.phone"));
    assert!(!ins.enabled_ids().contains(&"custom.acct"));
    assert_eq!(ins.action_for("secret.jwt"), Some(Action::Block));
    assert_eq!(ins.action_for("pii.email"), Some(Action::Audit));
    assert_eq!(ins.action_for("pii.nope"), None);
}

#[test]
fn min_confidence_filters() {
    // Ungrouped card without context has 0.75; a stricter threshold drops it.
    let strict = Inspector::new(&InspectConfig { min_confidence: 0.8, ..InspectConfig::default() }).unwrap();
    assert!(strict.scan_str("ref 4111111111111111").is_empty());
    assert_eq!(strict.scan_str("card 4111111111111111").len(), 1);
}

#[test]
fn overlapping_findings_prefer_specific_detectors() {
    // GITHUB_TOKEN=ghp_... is both a generic assignment and a GitHub token.
    one("GITHUB_TOKEN=ghp_paji5ZlVmLSVdSuBVhkdGjEsowumCtOKU0hl", "secret.github_token", "ghp_paji5ZlVmLSVdSuBVhkdGjEsowumCtOKU0hl");
    // Bearer + JWT: the JWT wins.
    let h = hits("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlMTIz");
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].0, "secret.jwt");
}

#[test]
fn scan_json_pointers_keys_and_key_context() {
    let v = json!({
        "a/b": [{"db_password": "hunter2!x"}, "mail maria@example.org"],
        "alice@example.com": 3,
        "api_key": "550e8400-e29b-41d4-a716-446655440000",
        "request_id": "550e8400-e29b-41d4-a716-446655440000",
        "password": "Required",
        "n": 4111111111111111u64,
    });
    let f = ins().scan_json(&v);
    let got: Vec<(&str, bool, &str)> = f.iter().map(|j| (j.pointer.as_str(), j.in_key, j.finding.detector.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("/a~1b/0/db_password", false, "secret.password"),
            ("/a~1b/1", false, "pii.email"),
            ("/alice@example.com", true, "pii.email"),
            // A UUID under an explicit secret key name is a credential (many APIs use them).
            ("/api_key", false, "secret.generic"),
        ]
    );
}

#[test]
fn redaction_keeps_json_valid_and_reports_hashes_only() {
    let mut v = json!({
        "jsonrpc": "2.0",
        "id": 7,
        "result": {
            "content": [{"type": "text", "text": "[{\"email\": \"maria@example.org\", \"ssn\": \"372-81-4419\", \"n\": 5}]"}],
            "structuredContent": {"created_at_us": 1718712345678909u64, "ok": true},
            "by_email": {"bob@example.net": 1, "<EMAIL_ADDRESS>": 2}
        }
    });
    let before = v.clone();
    let r = ins().redact_json(&mut v);
    let text = v["result"]["content"][0]["text"].as_str().unwrap();
    let inner: Value = serde_json::from_str(text).expect("embedded JSON still valid");
    assert_eq!(inner, json!([{"email": "<EMAIL_ADDRESS>", "ssn": "<US_SSN>", "n": 5}]));
    assert_eq!(v["result"]["structuredContent"], before["result"]["structuredContent"]);
    // Key redaction with a collision keeps both members.
    // (Objects are ordered maps, sorted by key: the member order is not the client's.)
    let keys: Vec<&String> = v["result"]["by_email"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["<EMAIL_ADDRESS>", "<EMAIL_ADDRESS>#2"]);
    assert_eq!(v["result"]["by_email"]["<EMAIL_ADDRESS>#2"], 1);
    assert_eq!(v["result"]["by_email"]["<EMAIL_ADDRESS>"], 2);
    assert_eq!(r.counts.get("pii.email"), Some(&2));
    assert_eq!(r.counts.get("pii.us_ssn"), Some(&1));
    assert_eq!(r.action, Some(Action::Redact));
    let serialized = serde_json::to_string(&r).unwrap();
    assert!(!serialized.contains("maria@example.org") && !serialized.contains("372-81-4419"));
    let expected_hash = hex::encode(sha2::Sha256::digest(b"372-81-4419"));
    assert!(r.values.iter().any(|x| x.detector == "pii.us_ssn" && x.sha256 == expected_hash && x.redacted));
    // Idempotent: a second pass finds nothing.
    let again = ins().redact_json(&mut v);
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn salted_hashes() {
    let cfg = InspectConfig { hash_salt: Some("pepper".into()), ..InspectConfig::default() };
    let mut v = json!("SSN 372-81-4419");
    let r = Inspector::new(&cfg).unwrap().redact_json(&mut v);
    assert_eq!(r.values[0].sha256, hex::encode(sha2::Sha256::digest(b"pepper372-81-4419")));
}

#[test]
fn keyed_hashes_need_the_host_key() {
    let key = mcpwatch_mcp::keyed::HashKey::new(&[7u8; 32]);
    let hash = |ins: &Inspector| {
        let mut v = json!("SSN 372-81-4419");
        ins.redact_json(&mut v).values[0].sha256.clone()
    };
    let keyed = Inspector::new(&InspectConfig::default()).unwrap().with_hash_key(key.clone());
    let h = hash(&keyed);
    assert_ne!(h, hex::encode(sha2::Sha256::digest(b"372-81-4419")), "not a plain sha256");
    assert_eq!(h, key.hex_mac(b"372-81-4419"));
    let other = Inspector::new(&InspectConfig::default()).unwrap().with_hash_key(mcpwatch_mcp::keyed::HashKey::new(&[8u8; 32]));
    assert_ne!(hash(&other), h, "another host key, another hash");
    assert_eq!(hash(&keyed), h, "stable for one key");
}

#[test]
fn audit_action_leaves_value_and_block_reports_block() {
    let cfg = InspectConfig {
        actions: [("pii.email".to_string(), Action::Audit), ("secret".to_string(), Action::Block)].into_iter().collect(),
        ..InspectConfig::default()
    };
    let ins = Inspector::new(&cfg).unwrap();
    let mut v = json!({"a": "mail maria@example.org", "b": "ghp_paji5ZlVmLSVdSuBVhkdGjEsowumCtOKU0hl"});
    let r = ins.redact_json(&mut v);
    assert_eq!(v["a"], "mail maria@example.org");
    assert_eq!(v["b"], "<GITHUB_TOKEN>");
    assert_eq!(r.detected_only.get("pii.email"), Some(&1));
    assert_eq!(r.counts.get("secret.github_token"), Some(&1));
    assert_eq!(r.action, Some(Action::Block));
    assert!(r.values.iter().any(|x| x.detector == "pii.email" && !x.redacted));
}

#[test]
fn custom_pattern_spanning_quotes_never_breaks_embedded_json() {
    let ins = Inspector::new(&custom("rawssn", r#""ssn": "[0-9-]+""#)).unwrap();
    let mut v = json!({"text": "{\"ssn\": \"372-81-4419\", \"x\": 1}"});
    let r = ins.redact_json(&mut v);
    let t = v["text"].as_str().unwrap();
    assert!(!t.contains("372-81-4419"), "{t}");
    assert!(r.counts.values().sum::<u64>() >= 1);
    serde_json::to_string(&v).unwrap();
}

#[test]
fn deep_and_hostile_input_does_not_panic() {
    let mut v = json!("x");
    for _ in 0..1000 {
        v = json!([v]);
    }
    assert!(ins().scan_json(&v).is_empty());
    let mut w = v.clone();
    ins().redact_json(&mut w);
    for s in [
        "\u{0}\u{1b}[31m@@@@:::...---+++",
        "+".repeat(10_000).as_str(),
        "-----BEGIN PRIVATE KEY-----",
        "eyJ.eyJ.",
        "a@b.cd:",
        "é@é.éé 4111\u{3000}1111\u{3000}1111\u{3000}1111",
        &"1.".repeat(5000),
        &"::".repeat(5000),
        &"4 ".repeat(5000),
    ] {
        for f in ins().scan_str(s) {
            assert!(s.is_char_boundary(f.start) && s.is_char_boundary(f.end));
        }
    }
}

#[test]
fn fixture_is_about_one_megabyte_and_has_findings() {
    let v = crate::scan_throughput_fixture();
    let n = serde_json::to_string(&v).unwrap().len();
    assert!((1 << 20..(1 << 20) + (64 << 10)).contains(&n), "{n}");
    let f = ins().scan_json(&v);
    for d in ["pii.email", "pii.phone", "pii.credit_card", "pii.us_ssn", "pii.ip_address", "secret.aws_access_key", "secret.github_token"] {
        assert!(f.iter().any(|x| x.finding.detector == d), "fixture lacks {d}");
    }
    // The traps inside it (hashes, OIDs, git remotes, versions, structured numbers) stay quiet.
    assert!(!f.iter().any(|x| x.pointer.starts_with("/result/structuredContent")));
}

/// `s` as a JSON string literal with every ASCII digit and letter `A`/`K` spelled as a
/// `\u` escape: text the detectors cannot read, the same value to anything that decodes it.
fn escaped_literal(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '0'..='9' | 'A' | 'K' => out.push_str(&format!("\\u{:04x}", c as u32)),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[test]
fn escaped_secret_in_a_json_string_argument_is_found_and_redacted_in_the_decoded_value() {
    // `{"paths": "[\"\u0041KIA…\"]"}`: the Python SDK hands the tool ["AKIA…"].
    let text = format!("[{}, \"/srv/ok\"]", escaped_literal("AKIALALEMEL33243OLIB"));
    assert!(!text.contains("AKIA") && !text.contains("33243"), "{text}");
    let args = json!({"paths": text, "n": 5});
    // As text, nothing is there to see.
    let mut plain = args.clone();
    assert!(ins().redact_json(&mut plain).is_empty());
    assert_eq!(plain, args);

    let mut v = args.clone();
    let r = ins().redact_json_with(&mut v, Embedded::Decoded);
    assert_eq!(r.counts.get("secret.aws_access_key"), Some(&1), "{r:?}");
    assert_eq!(r.action, Some(Action::Redact));
    assert_eq!(r.values.len(), 1);
    assert_eq!(r.values[0].pointer, "/paths/0", "the pointer continues into the decoded value");
    assert_eq!(r.values[0].sha256, hex::encode(sha2::Sha256::digest(b"AKIALALEMEL33243OLIB")));
    assert!(!serde_json::to_string(&r).unwrap().contains("AKIA"), "hashes, never values");
    // The string is the redacted value re-serialised: what the server decodes is redacted.
    let s = v["paths"].as_str().expect("still a string");
    let decoded: Value = serde_json::from_str(s).expect("still JSON");
    assert_eq!(decoded, json!(["<AWS_ACCESS_KEY>", "/srv/ok"]));
    assert_eq!(v["n"], 5);
    // Idempotent: the redacted form holds nothing more.
    assert!(ins().redact_json_with(&mut v, Embedded::Decoded).is_empty());
}

#[test]
fn escaped_pii_is_found_three_strings_deep_and_not_four() {
    // A string holding an object whose member holds a list, ... `depth` strings deep.
    let nest = |depth: usize| {
        let mut text = format!("[{}]", escaped_literal("SSN 372-81-4419"));
        for _ in 1..depth {
            text = serde_json::to_string(&json!({ "inner": text })).unwrap();
        }
        json!({ "q": text })
    };
    for depth in 1..=3 {
        let mut v = nest(depth);
        assert!(ins().redact_json(&mut v.clone()).is_empty(), "depth {depth}: visible as text");
        let r = ins().redact_json_with(&mut v, Embedded::Decoded);
        assert_eq!(r.counts.get("pii.us_ssn"), Some(&1), "depth {depth}: {r:?}");
        // Decode it all the way down: the SSN is gone at the bottom.
        let mut cur = v["q"].clone();
        for _ in 1..depth {
            cur = serde_json::from_str::<Value>(cur.as_str().unwrap()).unwrap()["inner"].clone();
        }
        let bottom: Value = serde_json::from_str(cur.as_str().unwrap()).unwrap();
        assert_eq!(bottom, json!(["SSN <US_SSN>"]), "depth {depth}");
    }
    // As deep as the policy's argument conditions look, no deeper.
    let mut v = nest(mcpwatch_mcp::message::EMBEDDED_JSON_DEPTH + 1);
    assert!(ins().redact_json_with(&mut v, Embedded::Decoded).is_empty());
}

#[test]
fn decoded_strings_count_once_and_stay_in_place_when_the_text_shows_everything() {
    let cfg = InspectConfig { actions: [("pii.email".to_string(), Action::Audit)].into_iter().collect(), ..InspectConfig::default() };
    let ins = Inspector::new(&cfg).unwrap();
    // Plain spellings: the text pass sees them; the decoded pass adds nothing, and the
    // redaction is the in-place one (the string's own layout kept).
    let mut v = json!({"q": "[ \"maria@example.org\", \"SSN 372-81-4419\" ]"});
    let r = ins.redact_json_with(&mut v, Embedded::Decoded);
    assert_eq!(v["q"], "[ \"maria@example.org\", \"SSN <US_SSN>\" ]");
    assert_eq!(r.detected_only.get("pii.email"), Some(&1), "{r:?}");
    assert_eq!(r.counts.get("pii.us_ssn"), Some(&1), "{r:?}");
    assert_eq!(r.values.len(), 2, "{r:?}");
    // The same address twice, once escaped: two values, each counted once.
    let text = format!("[\"maria@example.org\", {}]", escaped_literal("maria@example.org").replace('a', "\\u0061"));
    let mut v = json!({ "q": text });
    let r = ins.redact_json_with(&mut v, Embedded::Decoded);
    assert_eq!(r.detected_only.get("pii.email"), Some(&2), "{r:?}");
    assert_eq!(v["q"], text, "audit only: left as it was");
}

#[test]
fn decoded_strings_block_and_ordinary_strings_are_untouched() {
    let cfg = InspectConfig { actions: [("secret".to_string(), Action::Block)].into_iter().collect(), ..InspectConfig::default() };
    let ins = Inspector::new(&cfg).unwrap();
    let mut v = json!({"cfg": format!("{{\"token\": {}}}", escaped_literal("AKIALALEMEL33243OLIB"))});
    assert_eq!(ins.redact_json_with(&mut v, Embedded::Decoded).action, Some(Action::Block));
    // Strings that only start like JSON, or are JSON but not an array or object.
    for s in ["[not json", "{", " [1, 2", "\"AKIA\"", "5", "null", "[]", "{}", "  [\"ok\"]  "] {
        let mut v = json!({ "s": s });
        assert!(ins.redact_json_with(&mut v, Embedded::Decoded).is_empty(), "{s:?}");
        assert_eq!(v["s"], s);
    }
}
