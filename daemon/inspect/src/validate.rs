//! Validators that turn a regex candidate into a finding: checksums (Luhn, mod-97), SSN number
//! ranges, card brand prefixes, entropy and placeholder filters. Small pure functions so each rule
//! is unit-tested on its own; precision of the detectors lives here.

/// Luhn checksum over ASCII digit values (0..=9).
pub(crate) fn luhn_ok(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn prefix_num(digits: &[u8], n: usize) -> u32 {
    digits.iter().take(n).fold(0u32, |acc, &d| acc * 10 + u32::from(d))
}

/// Issuer prefix (IIN) and length of the major card brands. Rejects, e.g., microsecond
/// timestamps (`1718712345678909`, prefix 1) that pass Luhn by chance.
pub(crate) fn card_brand_ok(digits: &[u8]) -> bool {
    let len = digits.len();
    if !(13..=19).contains(&len) {
        return false;
    }
    let p1 = prefix_num(digits, 1);
    let p2 = prefix_num(digits, 2);
    let p3 = prefix_num(digits, 3);
    let p4 = prefix_num(digits, 4);
    let p6 = prefix_num(digits, 6);
    // Visa
    if p1 == 4 {
        return matches!(len, 13 | 16 | 19);
    }
    // Mastercard
    if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) {
        return len == 16;
    }
    // Mir
    if (2200..=2204).contains(&p4) {
        return (16..=19).contains(&len);
    }
    // American Express
    if p2 == 34 || p2 == 37 {
        return len == 15;
    }
    // Diners Club
    if (300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39 || p4 == 3095 {
        return (14..=19).contains(&len);
    }
    // JCB
    if (3528..=3589).contains(&p4) {
        return (16..=19).contains(&len);
    }
    // Discover, UnionPay, Maestro (6x)
    if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || (622126..=622925).contains(&p6) || p2 == 62 {
        return (16..=19).contains(&len);
    }
    // Maestro
    if p2 == 50 || (56..=69).contains(&p2) {
        return (13..=19).contains(&len);
    }
    false
}

/// Well-known sample SSNs that are published everywhere (Woolworth wallet card, textbook
/// examples, advertising). Presidio rejects these too.
const SAMPLE_SSNS: [&str; 4] = ["078051120", "123456789", "219099999", "457555462"];

/// US SSN validity: area not 000, 666 or 900-999; group not 00; serial not 0000; not all one
/// digit; not a known sample. `digits` is exactly 9 ASCII digits.
pub(crate) fn ssn_ok(digits: &str) -> bool {
    let b = digits.as_bytes();
    if b.len() != 9 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let area = &digits[0..3];
    let group = &digits[3..5];
    let serial = &digits[5..9];
    if area == "000" || area == "666" || b[0] == b'9' || group == "00" || serial == "0000" {
        return false;
    }
    if b.iter().all(|&c| c == b[0]) {
        return false;
    }
    !SAMPLE_SSNS.contains(&digits)
}

/// IBAN lengths per country (SWIFT IBAN registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24), ("AE", 23), ("AL", 28), ("AT", 20), ("AZ", 28), ("BA", 20), ("BE", 16),
    ("BG", 22), ("BH", 22), ("BI", 27), ("BR", 29), ("BY", 28), ("CH", 21), ("CR", 22),
    ("CY", 28), ("CZ", 24), ("DE", 22), ("DJ", 27), ("DK", 18), ("DO", 28), ("EE", 20),
    ("EG", 29), ("ES", 24), ("FI", 18), ("FK", 18), ("FO", 18), ("FR", 27), ("GB", 22),
    ("GE", 22), ("GI", 23), ("GL", 18), ("GR", 27), ("GT", 28), ("HR", 21), ("HU", 28),
    ("IE", 22), ("IL", 23), ("IQ", 23), ("IS", 26), ("IT", 27), ("JO", 30), ("KW", 30),
    ("KZ", 20), ("LB", 28), ("LC", 32), ("LI", 21), ("LT", 20), ("LU", 20), ("LV", 21),
    ("LY", 25), ("MC", 27), ("MD", 24), ("ME", 22), ("MK", 19), ("MN", 20), ("MR", 27),
    ("MT", 31), ("MU", 30), ("NI", 28), ("NL", 18), ("NO", 15), ("OM", 23), ("PK", 24),
    ("PL", 28), ("PS", 29), ("PT", 25), ("QA", 29), ("RO", 24), ("RS", 22), ("RU", 33),
    ("SA", 24), ("SC", 31), ("SD", 18), ("SE", 24), ("SI", 19), ("SK", 24), ("SM", 27),
    ("SO", 23), ("ST", 25), ("SV", 28), ("TL", 23), ("TN", 24), ("TR", 26), ("UA", 29),
    ("VA", 22), ("VG", 24), ("XK", 20), ("YE", 30),
];

pub(crate) fn iban_length(country: &str) -> Option<usize> {
    IBAN_LENGTHS.iter().find(|(c, _)| *c == country).map(|(_, n)| *n)
}

/// ISO 13616 mod-97 check over a compact (no spaces), upper-case IBAN.
pub(crate) fn iban_mod97_ok(compact: &str) -> bool {
    let b = compact.as_bytes();
    if b.len() < 5 || !b.iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) {
        return false;
    }
    let mut rem: u32 = 0;
    for &c in b[4..].iter().chain(b[..4].iter()) {
        if c.is_ascii_digit() {
            rem = (rem * 10 + u32::from(c - b'0')) % 97;
        } else {
            let v = u32::from(c - b'A') + 10;
            rem = (rem * 100 + v) % 97;
        }
    }
    rem == 1
}

/// Shannon entropy in bits per byte.
pub(crate) fn shannon_entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Values that are obviously not real secrets: documentation examples, templates, masks.
pub(crate) fn looks_placeholder(v: &str) -> bool {
    if v.contains("EXAMPLE") {
        return true;
    }
    let lower = v.to_ascii_lowercase();
    const MARKERS: [&str; 18] = [
        "example", "xxxx", "****", "....", "your", "changeme", "change_me", "placeholder",
        "dummy", "redacted", "<", ">", "${", "{{", "%s", "replace", "insert", "sample",
    ];
    if MARKERS.iter().any(|m| lower.contains(m)) {
        return true;
    }
    if lower.starts_with('$') || lower.starts_with('%') || lower.starts_with("env:") {
        return true;
    }
    let mut chars = v.chars();
    match chars.next() {
        Some(first) => chars.all(|c| c == first),
        None => true,
    }
}

pub(crate) fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Number of character classes present (lower, upper, digit, other). A leading capital alone
/// (`Required`) does not count as upper case.
pub(crate) fn char_classes(v: &str) -> u32 {
    let (mut lo, mut up, mut di, mut ot) = (false, false, false, false);
    for (i, c) in v.chars().enumerate() {
        if c.is_ascii_lowercase() {
            lo = true;
        } else if c.is_ascii_uppercase() {
            if i > 0 {
                up = true;
            }
        } else if c.is_ascii_digit() {
            di = true;
        } else {
            ot = true;
        }
    }
    u32::from(lo) + u32::from(up) + u32::from(di) + u32::from(ot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(s: &str) -> Vec<u8> {
        s.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect()
    }

    #[test]
    fn luhn() {
        assert!(luhn_ok(&digits("4111 1111 1111 1111")));
        assert!(luhn_ok(&digits("378282246310005")));
        assert!(!luhn_ok(&digits("4111 1111 1111 1112")));
        assert!(!luhn_ok(&[]));
    }

    #[test]
    fn card_brands() {
        assert!(card_brand_ok(&digits("4111111111111111")));
        assert!(card_brand_ok(&digits("5500000000000004")));
        assert!(card_brand_ok(&digits("378282246310005")));
        assert!(card_brand_ok(&digits("6011111111111117")));
        assert!(card_brand_ok(&digits("3530111333300000")));
        // timestamp-like, UATP prefix 1
        assert!(!card_brand_ok(&digits("1718712345678909")));
        // Amex prefix with the wrong length
        assert!(!card_brand_ok(&digits("3782822463100051")));
        assert!(!card_brand_ok(&digits("411111111111")));
    }

    #[test]
    fn ssn_rules() {
        assert!(ssn_ok("372814419"));
        for bad in ["000123456", "666123456", "912345678", "372004419", "372810000", "078051120", "123456789", "111111111"] {
            assert!(!ssn_ok(bad), "{bad}");
        }
        assert!(!ssn_ok("37281441"));
        assert!(!ssn_ok("37281441x"));
    }

    #[test]
    fn iban_rules() {
        assert!(iban_mod97_ok("DE89370400440532013000"));
        assert!(iban_mod97_ok("GB82WEST12345698765432"));
        assert!(!iban_mod97_ok("DE00370400440532013000"));
        assert!(!iban_mod97_ok("GB83WEST12345698765432"));
        assert!(!iban_mod97_ok("de89370400440532013000"));
        assert_eq!(iban_length("DE"), Some(22));
        assert_eq!(iban_length("ZZ"), None);
    }

    #[test]
    fn entropy_and_placeholders() {
        assert!(shannon_entropy("aaaaaaaa") < 0.01);
        assert!(shannon_entropy("hi1ixJYaVPwydIj+r48/x43YH33t2XUXw7dtRQi+") > 4.0);
        assert!(looks_placeholder("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"));
        assert!(looks_placeholder("<your-key-here>"));
        assert!(looks_placeholder("${DB_PASSWORD}"));
        assert!(looks_placeholder("xxxxxxxxxxxx"));
        assert!(!looks_placeholder("Sup3r-S3cret-Pa55!"));
    }

    #[test]
    fn shapes() {
        assert!(is_hex("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"));
        assert!(!is_hex("33a64df551425fcc55e4d42a148795d9f25f89dz"));
        assert!(!is_hex(""));
        assert!(is_uuid("550e8400-e29b-41d4-a716-446655440000"));
        assert!(!is_uuid("550e8400e29b-41d4-a716-446655440000-"));
        assert_eq!(char_classes("Required"), 1);
        assert_eq!(char_classes("hunter2"), 2);
        assert_eq!(char_classes("Sup3r-S3cret-Pa55!"), 4);
    }
}
