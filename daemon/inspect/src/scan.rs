//! The compiled detector set and the single-string scanner.
//!
//! Each string is scanned once per message: an Aho-Corasick pass over literal anchors (`@`,
//! `AKIA`, `ghp_`, `-----BEGIN`, `eyJ`, `://`, secret key names ...) and a byte count of digits
//! decide which detectors can possibly fire; only those run their regex, and every regex hit goes
//! through a validator (checksum, number ranges, boundaries, entropy, placeholder filters) before
//! it becomes a candidate. Overlapping candidates are resolved by detector priority, then length.
//!
//! Precision rules worth knowing (each has a unit test):
//! - Email: not when followed by `:path` (scp-style `git@github.com:org/repo`), not inside URL
//!   user-info (`scheme://user:pw@host`), not role mailboxes (`billing@`, `support@`, see
//!   `ROLE_ACCOUNTS`: organisations, not persons). A digits-only local part (WhatsApp JID
//!   `442079460958@s.whatsapp.net`) is reported as `pii.phone` over the digits only.
//! - Phone: `+` followed by 8-15 digits in groups; NANP `(415) 555-0132` / `415-555-0132` with
//!   consistent separators; trunk-0 national forms `020 7946 0958` (10-11 digits, with
//!   separators). Never inside longer digit runs, decimals, dates (`+2025-06-18`) or times.
//! - SSN: `ddd-dd-dddd`; space/dot-separated or bare 9 digits only with an SSN context word.
//!   Mixed delimiters, invalid area/group/serial and published samples are rejected; we follow
//!   Presidio and do NOT redact `123-45-6789`.
//! - Card: 13-19 digits (ASCII or full-width), ungrouped or in groups with one consistent
//!   separator, brand prefix + length valid, Luhn valid; an ungrouped number without a card
//!   context word must have 15 or 16 digits. JSON numbers are never scanned (a
//!   number is not turned into a string).
//! - IPv4: the maximal dotted-decimal run must have exactly 4 parts (so OIDs like
//!   `1.3.6.1.2.1.1.5.0` never match); not preceded by a letter (`v1.2.3.4`), by `word/`
//!   (`Chrome/120.0.0.0`) or by a version word (`version`, `ver`, `build`, `firmware`, `release`,
//!   ... see `VERSION_WORDS`); loopback, 0.0.0.0 and 255.x masks are not flagged.
//! - IPv6: parsed by `std::net::Ipv6Addr`, must contain a decimal digit, not `::`/`::1`.
//! - Secrets: documentation/placeholder values (`EXAMPLE`, `xxxx`, `<...>`, `${VAR}`) and low
//!   entropy values never fire; bare hex digests and UUIDs are never secrets (only a value under
//!   an explicit secret key name can be).

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::str::FromStr;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine as _;
use regex::{Regex, RegexBuilder};

use crate::config::{Action, InspectConfig, selects};
use crate::detectors::{ALL_BUILTINS, BUILTIN_DETECTORS, Builtin, CUSTOM_PRIORITY};
use crate::text::{
    context_has, is_word, next_char, next_next_char, preceding_word, prev_char,
};
use crate::validate::{
    card_brand_ok, char_classes, iban_length, iban_mod97_ok, is_hex, is_uuid, looks_placeholder,
    luhn_ok, shannon_entropy, ssn_ok,
};
use crate::{Finding, InspectError, Kind};

const N: usize = ALL_BUILTINS.len();

/// Which detector produced a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Det {
    Builtin(Builtin),
    Custom(usize),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Cand {
    pub(crate) det: Det,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) confidence: f32,
}

struct Custom {
    id: String,
    kind: Kind,
    replacement: String,
    re: Regex,
    confidence: f32,
    action: Action,
}

// Anchor groups found by the Aho-Corasick prefilter.
const G_AT: u16 = 1;
const G_AWS_ID: u16 = 1 << 1;
const G_AWS_SECRET: u16 = 1 << 2;
const G_GITHUB: u16 = 1 << 3;
const G_SLACK: u16 = 1 << 4;
const G_PEM: u16 = 1 << 5;
const G_JWT: u16 = 1 << 6;
const G_URL: u16 = 1 << 7;
const G_KEYWORD: u16 = 1 << 8;

const ANCHORS: &[(&str, u16)] = &[
    ("@", G_AT),
    ("akia", G_AWS_ID),
    ("asia", G_AWS_ID),
    ("abia", G_AWS_ID),
    ("acca", G_AWS_ID),
    ("a3t", G_AWS_ID),
    ("secret", G_AWS_SECRET | G_KEYWORD),
    ("ghp_", G_GITHUB),
    ("gho_", G_GITHUB),
    ("ghu_", G_GITHUB),
    ("ghs_", G_GITHUB),
    ("ghr_", G_GITHUB),
    ("github_pat_", G_GITHUB),
    ("xox", G_SLACK),
    ("-----begin", G_PEM),
    ("eyj", G_JWT),
    ("://", G_URL),
    ("pass", G_KEYWORD),
    ("pwd", G_KEYWORD),
    ("token", G_KEYWORD),
    ("key", G_KEYWORD),
    ("bearer", G_KEYWORD),
    ("basic", G_KEYWORD),
    ("credential", G_KEYWORD),
];

/// Key names whose value is a secret. The key must END with one of these words (so
/// `token_type`, `secret_name` do not qualify); password-like words map to `secret.password`.
const KEY_WORDS: &str = r"password|passwd|passwort|passphrase|pwd|pass|secret|api[_\-]?key|apikey|access[_\-]?token|auth[_\-]?token|refresh[_\-]?token|id[_\-]?token|client[_\-]?secret|private[_\-]?key|secret[_\-]?key|token|credentials?";

/// Key names that end in a secret word but hold non-secret values (pagination cursors, limits).
const KEY_DENY: [&str; 9] = ["page", "cursor", "continuation", "next", "sync", "max", "count", "csrf", "xsrf"];

/// Local parts of role (organisational) mailboxes: not personal data, and redacting them breaks
/// legitimate recipients of outgoing mail (PII-005 keeps `billing@vendor-partner.example`).
const ROLE_ACCOUNTS: [&str; 34] = [
    "abuse", "accounts", "admin", "billing", "careers", "contact", "dev", "devops", "feedback",
    "hello", "help", "helpdesk", "hostmaster", "hr", "info", "invoices", "jobs", "legal",
    "mailer-daemon", "marketing", "no-reply", "noreply", "notifications", "office", "ops",
    "postmaster", "press", "privacy", "sales", "security", "support", "team", "webmaster", "root",
];

/// Words right before a dotted quad that make it a version, not an address.
const VERSION_WORDS: [&str; 30] = [
    "version", "ver", "v", "vers", "release", "rel", "build", "firmware", "fw", "rev", "revision",
    "kernel", "driver", "chrome", "chromium", "firefox", "safari", "edg", "python", "node",
    "nodejs", "ios", "android", "macos", "windows", "semver", "oid", "mib", "assemblyversion",
    "fileversion",
];

struct Patterns {
    email: Regex,
    phone_nanp: Regex,
    phone_trunk: Regex,
    ssn: Regex,
    digit_run: Regex,
    digit_run_ascii: Regex,
    iban: Regex,
    ipv4_run: Regex,
    ipv6: Regex,
    aws_id: Regex,
    aws_secret: Regex,
    github: Regex,
    slack: Regex,
    pem_begin: Regex,
    pem_end: Regex,
    jwt: Regex,
    assignment: Regex,
    bearer: Regex,
    basic: Regex,
    url_cred: Regex,
    base64: Regex,
    secret_key_name: Regex,
}

fn re(p: &str) -> Result<Regex, InspectError> {
    RegexBuilder::new(p)
        .size_limit(8 << 20)
        .build()
        .map_err(|e| InspectError::Internal(format!("{p}: {e}")))
}

impl Patterns {
    fn compile() -> Result<Patterns, InspectError> {
        Ok(Patterns {
            email: re(
                r"(?i)[a-z0-9._%+\-]+@[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?)*\.[a-z]{2,24}(?-u:\b)",
            )?,
            phone_nanp: re(r"(?:\([2-9][0-9]{2}\) ?|(?-u:\b)[2-9][0-9]{2}[-. ])[2-9][0-9]{2}[-. ][0-9]{4}(?-u:\b)")?,
            phone_trunk: re(
                r"(?-u:\b)0[1-9][0-9]{1,4}[ \-][0-9]{3,4}(?:[ \-]?[0-9]{3,4})?(?-u:\b)|(?-u:\b)0[1-9](?:[ .\-][0-9]{2}){4}(?-u:\b)",
            )?,
            ssn: re(r"(?-u:\b)[0-9]{3}[- .][0-9]{2}[- .][0-9]{4}(?-u:\b)|(?-u:\b)[0-9]{9}(?-u:\b)")?,
            digit_run: re(r"[0-9\x{FF10}-\x{FF19}]+(?:[ \-\x{3000}\x{FF0D}][0-9\x{FF10}-\x{FF19}]+)*")?,
            digit_run_ascii: re(r"[0-9]+(?:[ \-][0-9]+)*")?,
            iban: re(r"(?-u:\b)[A-Z]{2}[0-9]{2} ?[A-Z0-9]{4}")?,
            ipv4_run: re(r"[0-9]+(?:\.[0-9]+)+")?,
            ipv6: re(
                r"[0-9A-Fa-f]{0,4}(?::(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{0,4})){2,8}",
            )?,
            aws_id: re(r"(?-u:\b)(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}(?-u:\b)")?,
            aws_secret: re(
                r#"(?i)(?:secret_?access_?key|aws_?secret(?:_?key)?)["']?[ \t]*(?:=>|:=|:|=)[ \t]*["']?([A-Za-z0-9/+]{40})"#,
            )?,
            github: re(r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})(?-u:\b)")?,
            slack: re(r"(?-u:\b)xox[baprs]-[0-9A-Za-z]{1,48}(?:-[0-9A-Za-z]{1,64}){1,5}(?-u:\b)")?,
            pem_begin: re(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")?,
            pem_end: re(r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")?,
            jwt: re(r"(?-u:\b)eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*")?,
            assignment: re(&format!(
                r#"(?i)([a-z0-9_.\-]{{0,40}}?(?:{KEY_WORDS}))["']?[ \t]*(?:=>|:=|:|=)[ \t]*["']?([^\s"'`,;<>\\]{{1,256}})"#
            ))?,
            bearer: re(r"(?i)(?-u:\b)bearer[ \t]+([A-Za-z0-9\-._~+/]{16,}=*)")?,
            basic: re(r"(?i)(?-u:\b)basic[ \t]+([A-Za-z0-9+/]{8,}={0,2})")?,
            url_cred: re(
                r#"(?i)(?-u:\b)[a-z][a-z0-9+.\-]{1,20}://[^\s:/?#@"'<>\\]{1,128}:([^\s/?#@"'<>\\]{1,256})@"#,
            )?,
            base64: re(r"[A-Za-z0-9+/]{16,}={0,2}")?,
            secret_key_name: re(&format!(r"(?i)^[a-z0-9_.\-]{{0,40}}?(?:{KEY_WORDS})$"))?,
        })
    }
}

/// PII and secret detectors, compiled once from an [`InspectConfig`]. Cheap to share
/// (`Arc<Inspector>`); all methods take `&self`.
pub struct Inspector {
    enabled: [bool; N],
    actions: [Action; N],
    min_confidence: f32,
    decode_base64: bool,
    pub(crate) hash_salt: Option<String>,
    /// The host's secret hash key (the daemon sets it): finding hashes are HMACs.
    pub(crate) hash_key: Option<mcpwatch_mcp::keyed::HashKey>,
    custom: Vec<Custom>,
    pat: Patterns,
    anchors: AhoCorasick,
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("enabled", &self.enabled_ids())
            .field("min_confidence", &self.min_confidence)
            .finish_non_exhaustive()
    }
}

fn valid_replacement(r: &str) -> bool {
    !r.is_empty()
        && r.chars().count() <= 64
        && !r.chars().any(|c| c.is_control() || c == '"' || c == '\\')
}

impl Inspector {
    /// Validate the config and compile every detector.
    pub fn new(cfg: &InspectConfig) -> Result<Inspector, InspectError> {
        for (field, value) in [("min_confidence", cfg.min_confidence)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(InspectError::OutOfRange { field, value });
            }
        }
        let mut custom = Vec::with_capacity(cfg.custom.len());
        for cp in &cfg.custom {
            let name_ok = !cp.name.is_empty()
                && cp.name.len() <= 40
                && cp.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !name_ok {
                return Err(InspectError::InvalidPatternName(cp.name.clone()));
            }
            let id = format!("custom.{}", cp.name);
            if custom.iter().any(|c: &Custom| c.id == id) {
                return Err(InspectError::DuplicatePattern(cp.name.clone()));
            }
            if cp.pattern.len() > 1024 {
                return Err(InspectError::PatternTooLong(cp.name.clone()));
            }
            if !(0.0..=1.0).contains(&cp.confidence) {
                return Err(InspectError::OutOfRange { field: "custom.confidence", value: cp.confidence });
            }
            let re = RegexBuilder::new(&cp.pattern)
                .size_limit(1 << 20)
                .dfa_size_limit(2 << 20)
                .build()
                .map_err(|e| InspectError::PatternSyntax { name: cp.name.clone(), source: Box::new(e) })?;
            if re.is_match("") {
                return Err(InspectError::PatternMatchesEmpty(cp.name.clone()));
            }
            let replacement = match &cp.replacement {
                Some(r) => r.clone(),
                None => format!("<{}>", cp.name.to_ascii_uppercase()),
            };
            if !valid_replacement(&replacement) {
                return Err(InspectError::InvalidReplacement(replacement));
            }
            custom.push(Custom {
                action: cfg.action_for(&id),
                id,
                kind: cp.kind,
                replacement,
                re,
                confidence: cp.confidence,
            });
        }

        // Every selector must name something that exists.
        let known = |sel: &str| {
            matches!(sel, "*" | "pii" | "secret" | "custom")
                || BUILTIN_DETECTORS.iter().any(|d| d.id == sel)
                || custom.iter().any(|c| c.id == sel)
        };
        for sel in cfg.enabled.iter().chain(&cfg.disabled).chain(cfg.actions.keys()) {
            if !known(sel) {
                return Err(InspectError::UnknownDetector(sel.clone()));
            }
        }
        let is_on = |id: &str| {
            cfg.enabled.iter().any(|s| selects(s, id)) && !cfg.disabled.iter().any(|s| selects(s, id))
        };
        let mut enabled = [false; N];
        let mut actions = [cfg.default_action; N];
        for b in ALL_BUILTINS {
            enabled[b.index()] = is_on(b.info().id);
            actions[b.index()] = cfg.action_for(b.info().id);
        }
        custom.retain(|c| is_on(&c.id));

        let anchors = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(ANCHORS.iter().map(|(a, _)| *a))
            .map_err(|e| InspectError::Internal(format!("anchors: {e}")))?;

        Ok(Inspector {
            enabled,
            actions,
            min_confidence: cfg.min_confidence,
            decode_base64: cfg.decode_base64,
            hash_salt: cfg.hash_salt.clone(),
            hash_key: None,
            custom,
            pat: Patterns::compile()?,
            anchors,
        })
    }

    /// Hash finding values with the host's secret key (HMAC-SHA256) instead of a
    /// plain (optionally salted) sha256 that a short value can be brute-forced from.
    pub fn with_hash_key(mut self, key: mcpwatch_mcp::keyed::HashKey) -> Inspector {
        self.hash_key = Some(key);
        self
    }

    /// Ids of the detectors that run, built-ins first.
    pub fn enabled_ids(&self) -> Vec<&str> {
        ALL_BUILTINS
            .iter()
            .filter(|b| self.enabled[b.index()])
            .map(|b| b.info().id)
            .chain(self.custom.iter().map(|c| c.id.as_str()))
            .collect()
    }

    /// Configured action for a detector id (built-in or `custom.<name>`); `None` if unknown.
    pub fn action_for(&self, detector: &str) -> Option<Action> {
        if let Some(b) = ALL_BUILTINS.iter().find(|b| b.info().id == detector) {
            return Some(self.actions[b.index()]);
        }
        self.custom.iter().find(|c| c.id == detector).map(|c| c.action)
    }

    /// Replacement token for a detector id, e.g. `<EMAIL_ADDRESS>`; `None` if unknown.
    pub fn replacement(&self, detector: &str) -> Option<&str> {
        if let Some(b) = ALL_BUILTINS.iter().find(|b| b.info().id == detector) {
            return Some(b.info().replacement);
        }
        self.custom.iter().find(|c| c.id == detector).map(|c| c.replacement.as_str())
    }

    /// All findings in `s`, non-overlapping, ordered by start offset.
    pub fn scan_str(&self, s: &str) -> Vec<Finding> {
        self.scan_with_key(s, None).into_iter().map(|c| self.finding(c)).collect()
    }

    pub(crate) fn det_id(&self, d: Det) -> &str {
        match d {
            Det::Builtin(b) => b.info().id,
            Det::Custom(i) => self.custom.get(i).map_or("custom.unknown", |c| c.id.as_str()),
        }
    }

    pub(crate) fn det_kind(&self, d: Det) -> Kind {
        match d {
            Det::Builtin(b) => b.info().kind,
            Det::Custom(i) => self.custom.get(i).map_or(Kind::Pii, |c| c.kind),
        }
    }

    pub(crate) fn det_action(&self, d: Det) -> Action {
        match d {
            Det::Builtin(b) => self.actions[b.index()],
            Det::Custom(i) => self.custom.get(i).map_or(Action::Redact, |c| c.action),
        }
    }

    pub(crate) fn det_replacement(&self, d: Det) -> &str {
        match d {
            Det::Builtin(b) => b.info().replacement,
            Det::Custom(i) => self.custom.get(i).map_or("<REDACTED>", |c| c.replacement.as_str()),
        }
    }

    fn det_priority(&self, d: Det) -> u8 {
        match d {
            Det::Builtin(b) => b.priority(),
            Det::Custom(_) => CUSTOM_PRIORITY,
        }
    }

    pub(crate) fn finding(&self, c: Cand) -> Finding {
        Finding {
            detector: self.det_id(c.det).to_string(),
            kind: self.det_kind(c.det),
            start: c.start,
            end: c.end,
            confidence: c.confidence,
        }
    }

    fn on(&self, b: Builtin) -> bool {
        self.enabled[b.index()]
    }

    /// Scan one string; `key` is the JSON object key the string is the value of, which lets a
    /// value under `"password"` or `"api_key"` be judged as a whole.
    pub(crate) fn scan_with_key(&self, s: &str, key: Option<&str>) -> Vec<Cand> {
        let mut cands = Vec::new();
        self.collect(s, false, &mut cands);
        if let Some(k) = key {
            self.key_context(s, k, &mut cands);
        }
        if self.decode_base64 {
            self.find_base64(s, &mut cands);
        }
        self.resolve(cands)
    }

    fn prefilter(&self, s: &str) -> u16 {
        let mut groups = 0u16;
        for m in self.anchors.find_iter(s) {
            groups |= ANCHORS.get(m.pattern().as_usize()).map_or(0, |(_, g)| *g);
        }
        groups
    }

    fn collect(&self, s: &str, secrets_only: bool, out: &mut Vec<Cand>) {
        let groups = self.prefilter(s);
        if !secrets_only {
            let digits = s.bytes().filter(u8::is_ascii_digit).count()
                + if s.is_ascii() { 0 } else { s.chars().filter(|c| ('\u{FF10}'..='\u{FF19}').contains(c)).count() };
            if groups & G_AT != 0 && (self.on(Builtin::Email) || self.on(Builtin::Phone)) {
                self.find_email(s, out);
            }
            if digits >= 8 && self.on(Builtin::Phone) {
                self.find_phone(s, out);
            }
            if digits >= 9 && self.on(Builtin::UsSsn) {
                self.find_ssn(s, out);
            }
            if digits >= 13 && self.on(Builtin::CreditCard) {
                self.find_card(s, out);
            }
            if digits >= 4 && self.on(Builtin::Iban) {
                self.find_iban(s, out);
            }
            if digits >= 1 && self.on(Builtin::IpAddress) {
                if digits >= 4 && s.contains('.') {
                    self.find_ipv4(s, out);
                }
                if s.contains(':') {
                    self.find_ipv6(s, out);
                }
            }
        }
        if groups & G_AWS_ID != 0 && self.on(Builtin::AwsAccessKey) {
            self.find_aws_id(s, out);
        }
        if groups & G_AWS_SECRET != 0 && self.on(Builtin::AwsSecretKey) {
            self.find_aws_secret(s, out);
        }
        if groups & G_GITHUB != 0 && self.on(Builtin::GithubToken) {
            self.find_github(s, out);
        }
        if groups & G_SLACK != 0 && self.on(Builtin::SlackToken) {
            self.find_slack(s, out);
        }
        if groups & G_PEM != 0 && self.on(Builtin::PrivateKey) {
            self.find_pem(s, out);
        }
        if groups & G_JWT != 0 && self.on(Builtin::Jwt) {
            self.find_jwt(s, out);
        }
        if groups & G_URL != 0 && self.on(Builtin::Password) {
            self.find_url_cred(s, out);
        }
        if groups & G_KEYWORD != 0 && (self.on(Builtin::Password) || self.on(Builtin::GenericSecret)) {
            self.find_assignments(s, out);
        }
        for (i, c) in self.custom.iter().enumerate() {
            if secrets_only && c.kind != Kind::Secret {
                continue;
            }
            for m in c.re.find_iter(s) {
                if m.start() < m.end() {
                    out.push(Cand { det: Det::Custom(i), start: m.start(), end: m.end(), confidence: c.confidence });
                }
            }
        }
    }

    /// Keep the best non-overlapping candidates (priority, then length), ordered by start.
    fn resolve(&self, mut cands: Vec<Cand>) -> Vec<Cand> {
        cands.retain(|c| c.confidence >= self.min_confidence && c.start < c.end);
        if cands.len() <= 1 {
            return cands;
        }
        cands.sort_by(|a, b| {
            self.det_priority(b.det)
                .cmp(&self.det_priority(a.det))
                .then((b.end - b.start).cmp(&(a.end - a.start)))
                .then(a.start.cmp(&b.start))
        });
        let mut taken: BTreeMap<usize, Cand> = BTreeMap::new();
        for c in cands {
            let overlaps = taken.range(..c.end).next_back().is_some_and(|(_, t)| t.end > c.start);
            if !overlaps {
                taken.insert(c.start, c);
            }
        }
        taken.into_values().collect()
    }

    fn push(&self, out: &mut Vec<Cand>, b: Builtin, start: usize, end: usize, confidence: f32) {
        if self.on(b) {
            out.push(Cand { det: Det::Builtin(b), start, end, confidence });
        }
    }

    // ---------------------------------------------------------------- PII

    fn find_email(&self, s: &str, out: &mut Vec<Cand>) {
        for m in self.pat.email.find_iter(s) {
            let at = match m.as_str().find('@') {
                Some(i) => m.start() + i,
                None => continue,
            };
            // Trim leading punctuation the permissive local-part class swallowed.
            let mut start = m.start();
            while start < at && matches!(s.as_bytes()[start], b'.' | b'-' | b'+' | b'%') {
                start += 1;
            }
            let local = &s[start..at];
            if local.is_empty() || local.len() > 64 || local.ends_with('.') || local.contains("..") {
                continue;
            }
            // scp-style remote: git@github.com:org/repo.git
            if next_char(s, m.end()) == Some(':')
                && next_next_char(s, m.end()).is_some_and(|c| !c.is_whitespace())
            {
                continue;
            }
            if in_url_userinfo(s, start) {
                continue;
            }
            let digits = local.strip_prefix('+').unwrap_or(local);
            if digits.bytes().all(|b| b.is_ascii_digit()) {
                if (8..=15).contains(&digits.len()) {
                    self.push(out, Builtin::Phone, start, at, 0.75);
                }
                continue;
            }
            if ROLE_ACCOUNTS.contains(&local.to_ascii_lowercase().as_str()) {
                continue; // billing@, support@ ...: an organisation, not a person
            }
            self.push(out, Builtin::Email, start, m.end(), 0.9);
        }
    }

    fn find_phone(&self, s: &str, out: &mut Vec<Cand>) {
        const CTX: [&str; 8] = ["phone", "tel", "mobile", "cell", "call", "fax", "whatsapp", "sms"];
        // International: + then 8..=15 digits.
        let b = s.as_bytes();
        let mut i = 0;
        while let Some(off) = b.get(i..).and_then(|r| r.iter().position(|&c| c == b'+')) {
            let plus = i + off;
            i = plus + 1;
            if !b.get(plus + 1).is_some_and(|c| (b'1'..=b'9').contains(c)) {
                continue;
            }
            let pc = prev_char(s, plus);
            if is_word(pc) || matches!(pc, Some('+' | '.' | '/' | '-')) {
                continue;
            }
            if let Some(end) = scan_plus_number(b, plus + 1) {
                self.push(out, Builtin::Phone, plus, end, 0.85);
                i = end;
            }
        }
        for (re, base) in [(&self.pat.phone_nanp, 0.7f32), (&self.pat.phone_trunk, 0.6)] {
            for m in re.find_iter(s) {
                if !number_boundaries(s, m.start(), m.end()) {
                    continue;
                }
                let seps: Vec<char> = m.as_str().chars().filter(|c| matches!(c, ' ' | '-' | '.')).collect();
                let paren = m.as_str().starts_with('(');
                if !paren && seps.windows(2).any(|w| w[0] != w[1]) {
                    continue;
                }
                let nd = m.as_str().bytes().filter(u8::is_ascii_digit).count();
                if !(10..=11).contains(&nd) {
                    continue;
                }
                let conf = if context_has(s, m.start(), 40, &CTX) { base + 0.15 } else { base };
                self.push(out, Builtin::Phone, m.start(), m.end(), conf);
            }
        }
    }

    fn find_ssn(&self, s: &str, out: &mut Vec<Cand>) {
        const CTX: [&str; 4] = ["ssn", "social security", "ss#", "taxpayer"];
        for m in self.pat.ssn.find_iter(s) {
            if !number_boundaries(s, m.start(), m.end()) {
                continue;
            }
            let text = m.as_str();
            let digits: String = text.chars().filter(char::is_ascii_digit).collect();
            if !ssn_ok(&digits) {
                continue;
            }
            let ctx = context_has(s, m.start(), 40, &CTX);
            let conf = if text.len() == 9 {
                if !ctx {
                    continue;
                }
                0.75
            } else {
                let (a, b) = (text.as_bytes()[3], text.as_bytes()[6]);
                if a != b {
                    continue; // mixed delimiters: 693-09.4444
                }
                match (a, ctx) {
                    (b'-', true) => 0.95,
                    (b'-', false) => 0.85,
                    (_, true) => 0.8,
                    (_, false) => continue,
                }
            };
            self.push(out, Builtin::UsSsn, m.start(), m.end(), conf);
        }
    }

    fn find_card(&self, s: &str, out: &mut Vec<Cand>) {
        const CTX: [&str; 11] = ["card", "visa", "mastercard", "amex", "credit", "debit", "pan", "cc", "payment", "paid", "discover"];
        let runs = if s.is_ascii() { &self.pat.digit_run_ascii } else { &self.pat.digit_run };
        for m in runs.find_iter(s) {
            let run = m.as_str();
            if run.len() < 13 || run.bytes().filter(u8::is_ascii_digit).count() + run.chars().filter(|c| digit_value(*c).is_some_and(|_| !c.is_ascii())).count() < 13 {
                continue;
            }
            // Groups: (byte start, byte end, digits) within s.
            let mut groups: Vec<(usize, usize, Vec<u8>)> = Vec::new();
            let mut seps: Vec<char> = Vec::new();
            let mut cur: Option<(usize, Vec<u8>)> = None;
            let mut total = 0usize;
            for (off, c) in run.char_indices() {
                let pos = m.start() + off;
                if let Some(d) = digit_value(c) {
                    total += 1;
                    match &mut cur {
                        Some((_, ds)) => ds.push(d),
                        None => cur = Some((pos, vec![d])),
                    }
                } else {
                    if let Some((gs, ds)) = cur.take() {
                        groups.push((gs, pos, ds));
                    }
                    seps.push(c);
                }
                if groups.len() > 32 {
                    break;
                }
            }
            if let Some((gs, ds)) = cur.take() {
                groups.push((gs, m.end(), ds));
            }
            if total < 13 || groups.is_empty() || groups.len() > 32 {
                continue;
            }
            let pc = prev_char(s, m.start());
            let nc = next_char(s, m.end());
            let run_start_ok = !is_word(pc) && !matches!(pc, Some('.' | '+' | '/' | '-' | ','));
            let decimal_follows =
                matches!(nc, Some('.' | ',')) && next_next_char(s, m.end()).and_then(digit_value).is_some();
            let run_end_ok = !is_word(nc) && !decimal_follows;
            let mut i = 0;
            while i < groups.len() {
                let mut best: Option<usize> = None;
                let mut nd = 0;
                for j in i..groups.len() {
                    nd += groups[j].2.len();
                    if nd > 19 {
                        break;
                    }
                    if j > i && seps.get(j - 1) != seps.get(i) {
                        break;
                    }
                    let window_ok = if i == j {
                        true
                    } else {
                        groups[i..=j].iter().all(|g| (3..=6).contains(&g.2.len()))
                    };
                    // A window strictly inside the run must be cut at whitespace separators.
                    let start_ok = if i == 0 { run_start_ok } else { seps.get(i - 1).is_some_and(|c| c.is_whitespace()) };
                    let end_ok = if j + 1 == groups.len() { run_end_ok } else { seps.get(j).is_some_and(|c| c.is_whitespace()) };
                    let edges_ok = start_ok && end_ok;
                    if nd >= 13 && window_ok && edges_ok {
                        let digits: Vec<u8> = groups[i..=j].iter().flat_map(|g| g.2.iter().copied()).collect();
                        if card_brand_ok(&digits) && luhn_ok(&digits) && !digits.iter().all(|d| *d == digits[0]) {
                            best = Some(j);
                        }
                    }
                }
                match best {
                    Some(j) => {
                        let (start, end) = (groups[i].0, groups[j].1);
                        let grouped = j > i;
                        let ctx = context_has(s, start, 40, &CTX);
                        // An ungrouped digit string is only a card without context words when
                        // it has the common PAN lengths (Amex 15, others 16): 13-digit phone
                        // numbers and ids pass Luhn one time in ten.
                        let len = groups[i].2.len();
                        if !grouped && !ctx && len != 15 && len != 16 {
                            i = j + 1;
                            continue;
                        }
                        let conf = match (grouped, ctx) {
                            (_, true) => 0.95,
                            (true, false) => 0.9,
                            (false, false) => 0.75,
                        };
                        self.push(out, Builtin::CreditCard, start, end, conf);
                        i = j + 1;
                    }
                    None => i += 1,
                }
            }
        }
    }

    fn find_iban(&self, s: &str, out: &mut Vec<Cand>) {
        for m in self.pat.iban.find_iter(s) {
            let start = m.start();
            let Some(expected) = s.get(start..start + 2).and_then(iban_length) else { continue };
            let mut compact = String::with_capacity(expected);
            let mut end = start;
            let mut last_space = false;
            for (off, c) in s[start..].char_indices() {
                if compact.len() == expected {
                    break;
                }
                if c.is_ascii_uppercase() || c.is_ascii_digit() {
                    compact.push(c);
                    end = start + off + 1;
                    last_space = false;
                } else if c == ' ' && !last_space && !compact.is_empty() {
                    last_space = true;
                } else {
                    break;
                }
            }
            if compact.len() != expected || is_word(next_char(s, end)) || is_word(prev_char(s, start)) {
                continue;
            }
            if iban_mod97_ok(&compact) {
                self.push(out, Builtin::Iban, start, end, 0.9);
            }
        }
    }

    fn find_ipv4(&self, s: &str, out: &mut Vec<Cand>) {
        const CTX: [&str; 7] = ["ip", "src", "dst", "addr", "host", "from", "client"];
        for m in self.pat.ipv4_run.find_iter(s) {
            let parts: Vec<&str> = m.as_str().split('.').collect();
            if parts.len() != 4 {
                continue; // OIDs and longer dotted runs
            }
            let mut octets = [0u16; 4];
            let mut ok = true;
            for (k, p) in parts.iter().enumerate() {
                let valid = !p.is_empty() && p.len() <= 3 && !(p.len() > 1 && p.starts_with('0'));
                match p.parse::<u16>() {
                    Ok(v) if valid && v <= 255 => octets[k] = v,
                    _ => ok = false,
                }
            }
            if !ok {
                continue;
            }
            let pc = prev_char(s, m.start());
            if is_word(pc) || pc == Some('.') {
                continue;
            }
            if pc == Some('/') {
                let before = prev_char(s, m.start() - 1);
                if is_word(before) {
                    continue; // product/version token: Chrome/120.0.0.0
                }
            }
            if is_word(next_char(s, m.end())) {
                continue;
            }
            let word = preceding_word(s, m.start());
            if VERSION_WORDS.contains(&word.as_str()) {
                continue;
            }
            if octets == [0, 0, 0, 0] || octets[0] == 127 || octets[0] == 255 {
                continue;
            }
            let conf = if context_has(s, m.start(), 24, &CTX) { 0.95 } else { 0.85 };
            self.push(out, Builtin::IpAddress, m.start(), m.end(), conf);
        }
    }

    fn find_ipv6(&self, s: &str, out: &mut Vec<Cand>) {
        for m in self.pat.ipv6.find_iter(s) {
            let text = m.as_str();
            if text.len() < 3 || !text.bytes().any(|b| b.is_ascii_digit()) {
                continue;
            }
            let pc = prev_char(s, m.start());
            let nc = next_char(s, m.end());
            if is_word(pc) || matches!(pc, Some(':' | '.')) || is_word(nc) || nc == Some(':') {
                continue;
            }
            match Ipv6Addr::from_str(text) {
                Ok(a) if !a.is_unspecified() && !a.is_loopback() => {
                    let groups = text.split(':').filter(|g| !g.is_empty()).count();
                    if groups >= 2 {
                        self.push(out, Builtin::IpAddress, m.start(), m.end(), 0.85);
                    }
                }
                _ => {}
            }
        }
    }

    // ---------------------------------------------------------------- secrets

    fn find_aws_id(&self, s: &str, out: &mut Vec<Cand>) {
        for m in self.pat.aws_id.find_iter(s) {
            let v = m.as_str();
            if looks_placeholder(v) || shannon_entropy(v) < 3.0 {
                continue;
            }
            let conf = if v.starts_with("AKIA") || v.starts_with("ASIA") { 0.95 } else { 0.85 };
            self.push(out, Builtin::AwsAccessKey, m.start(), m.end(), conf);
        }
    }

    fn find_aws_secret(&self, s: &str, out: &mut Vec<Cand>) {
        for c in self.pat.aws_secret.captures_iter(s) {
            let Some(v) = c.get(1) else { continue };
            if next_char(s, v.end()).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '+' | '=')) {
                continue;
            }
            if looks_placeholder(v.as_str()) || shannon_entropy(v.as_str()) < 3.8 {
                continue;
            }
            self.push(out, Builtin::AwsSecretKey, v.start(), v.end(), 0.9);
        }
    }

    fn find_github(&self, s: &str, out: &mut Vec<Cand>) {
        for m in self.pat.github.find_iter(s) {
            let v = m.as_str();
            let body = v.split_once('_').map_or(v, |(_, b)| b);
            let body = body.strip_prefix("pat_").unwrap_or(body);
            if looks_placeholder(v) || shannon_entropy(body) < 3.0 {
                continue;
            }
            self.push(out, Builtin::GithubToken, m.start(), m.end(), 0.95);
        }
    }

    fn find_slack(&self, s: &str, out: &mut Vec<Cand>) {
        for m in self.pat.slack.find_iter(s) {
            let v = m.as_str();
            let digits = v.bytes().filter(u8::is_ascii_digit).count();
            if v.len() < 24 || digits < 8 || looks_placeholder(v) || shannon_entropy(v) < 3.0 {
                continue;
            }
            self.push(out, Builtin::SlackToken, m.start(), m.end(), 0.9);
        }
    }

    fn find_pem(&self, s: &str, out: &mut Vec<Cand>) {
        const MAX_BODY: usize = 64 * 1024;
        let mut from = 0;
        while let Some(b) = s.get(from..).and_then(|t| self.pat.pem_begin.find(t)) {
            let (bstart, bend) = (from + b.start(), from + b.end());
            let limit = crate::text::floor_boundary(s, bend.saturating_add(MAX_BODY));
            let window = &s[bend..limit];
            let (body, end, conf) = match self.pat.pem_end.find(window) {
                Some(e) => (&window[..e.start()], bend + e.end(), 0.99),
                None => {
                    // Truncated block: take the body characters that follow.
                    let n = window
                        .char_indices()
                        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | ':' | ',' | '-' | '\\') || c.is_whitespace()))
                        .map_or(window.len(), |(i, _)| i);
                    let body = window[..n].trim_end();
                    (body, bend + body.len(), 0.85)
                }
            };
            let b64 = body.bytes().filter(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/')).count();
            if b64 >= 40 {
                self.push(out, Builtin::PrivateKey, bstart, end, conf);
                from = end;
            } else {
                from = bend;
            }
        }
    }

    fn find_jwt(&self, s: &str, out: &mut Vec<Cand>) {
        for m in self.pat.jwt.find_iter(s) {
            if prev_char(s, m.start()).is_some_and(|c| c == '.' || c == '-') {
                continue;
            }
            let mut parts = m.as_str().split('.');
            let header = parts.next().unwrap_or("");
            let sig = parts.nth(1).unwrap_or("");
            let Some(alg) = jwt_alg(header) else { continue };
            if sig.is_empty() && !alg.eq_ignore_ascii_case("none") {
                continue;
            }
            // JWE compact form has five parts: extend over up to two more.
            let mut end = m.end();
            for _ in 0..2 {
                if next_char(s, end) != Some('.') {
                    break;
                }
                let rest = &s[end + 1..];
                let n = rest.bytes().take_while(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_').count();
                if n == 0 {
                    break;
                }
                end += 1 + n;
            }
            self.push(out, Builtin::Jwt, m.start(), end, 0.95);
        }
    }

    fn find_url_cred(&self, s: &str, out: &mut Vec<Cand>) {
        const NOT_PASSWORDS: [&str; 6] = ["password", "pass", "secret", "pwd", "x-oauth-basic", "token"];
        for c in self.pat.url_cred.captures_iter(s) {
            let Some(v) = c.get(1) else { continue };
            let pw = v.as_str();
            if pw.len() < 3 || looks_placeholder(pw) || NOT_PASSWORDS.contains(&pw.to_ascii_lowercase().as_str()) {
                continue;
            }
            if pw.len() <= 5 && pw.bytes().all(|b| b.is_ascii_digit()) {
                continue; // host:port@ oddities
            }
            self.push(out, Builtin::Password, v.start(), v.end(), 0.9);
        }
    }

    fn find_assignments(&self, s: &str, out: &mut Vec<Cand>) {
        for c in self.pat.assignment.captures_iter(s) {
            let (Some(k), Some(v)) = (c.get(1), c.get(2)) else { continue };
            // Trim closing brackets / sentence punctuation glued to the value.
            let raw = v.as_str();
            let trimmed = raw.trim_end_matches([')', ']', '}', '.']);
            let end = v.start() + trimmed.len();
            if let Some(b) = classify_secret(k.as_str(), trimmed, false) {
                self.push(out, b, v.start(), end, if b == Builtin::Password { 0.85 } else { 0.8 });
            }
        }
        if self.on(Builtin::Password) {
            self.find_basic_auth(s, out);
        }
        if self.on(Builtin::GenericSecret) {
            for c in self.pat.bearer.captures_iter(s) {
                let Some(v) = c.get(1) else { continue };
                let t = v.as_str();
                // `Bearer realm="..."` / `resource_metadata="..."` are challenge parameters.
                if next_char(s, v.end()) == Some('"') {
                    continue;
                }
                let has_digit = t.bytes().any(|b| b.is_ascii_digit());
                if has_digit && !looks_placeholder(t) && shannon_entropy(t) >= 3.0 && char_classes(t) >= 2 {
                    self.push(out, Builtin::GenericSecret, v.start(), v.end(), 0.85);
                }
            }
        }
    }

    /// `Authorization: Basic base64(user:password)`.
    fn find_basic_auth(&self, s: &str, out: &mut Vec<Cand>) {
        for c in self.pat.basic.captures_iter(s) {
            let Some(v) = c.get(1) else { continue };
            if is_word(next_char(s, v.end())) {
                continue;
            }
            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(v.as_str()) else { continue };
            let Ok(text) = std::str::from_utf8(&bytes) else { continue };
            match text.split_once(':') {
                Some((user, pw)) if !user.is_empty() && !pw.is_empty() && !looks_placeholder(pw) => {
                    self.push(out, Builtin::Password, v.start(), v.end(), 0.85);
                }
                _ => {}
            }
        }
    }

    /// A whole string value under a secret-looking JSON key (`"db_password": "..."`).
    fn key_context(&self, s: &str, key: &str, out: &mut Vec<Cand>) {
        if key.len() > 64 || !self.pat.secret_key_name.is_match(key) {
            return;
        }
        let lead = s.len() - s.trim_start().len();
        let v = s.trim();
        if let Some(b) = classify_secret(key, v, true) {
            self.push(out, b, lead, lead + v.len(), if b == Builtin::Password { 0.85 } else { 0.8 });
        }
    }

    /// Decode base64 tokens one level and report secrets found inside on the encoded span.
    fn find_base64(&self, s: &str, out: &mut Vec<Cand>) {
        let covered: Vec<(usize, usize)> = out.iter().map(|c| (c.start, c.end)).collect();
        for m in self.pat.base64.find_iter(s) {
            let tok = m.as_str();
            if tok.len() > 4096 || tok.len() % 4 != 0 || is_hex(tok) {
                continue;
            }
            let pc = prev_char(s, m.start());
            let nc = next_char(s, m.end());
            if is_word(pc) || matches!(pc, Some('-' | '.' | '=')) || is_word(nc) || nc == Some('-') {
                continue;
            }
            if covered.iter().any(|&(a, b)| a < m.end() && m.start() < b) {
                continue;
            }
            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(tok) else { continue };
            let Ok(text) = std::str::from_utf8(&bytes) else { continue };
            let printable = text.bytes().filter(|b| (0x20..0x7f).contains(b) || matches!(b, b'\n' | b'\r' | b'\t')).count();
            if text.len() < 12 || printable * 20 < text.len() * 19 {
                continue;
            }
            let mut inner = Vec::new();
            self.collect(text, true, &mut inner);
            let best = inner
                .iter()
                .filter(|c| c.confidence >= self.min_confidence)
                .max_by_key(|c| self.det_priority(c.det));
            if let Some(b) = best {
                out.push(Cand { det: b.det, start: m.start(), end: m.end(), confidence: b.confidence * 0.95 });
            }
        }
    }
}

/// Is `start` inside the user-info of a URL (`scheme://user:pw@`)?
fn in_url_userinfo(s: &str, start: usize) -> bool {
    let from = crate::text::floor_boundary(s, start.saturating_sub(256));
    let head = &s[from..start];
    let token = head.rsplit(char::is_whitespace).next().unwrap_or(head);
    match token.rfind("://") {
        Some(i) => !token[i + 3..].contains('/'),
        None => false,
    }
}

/// Walk an international number after `+`; returns the end (exclusive) of the last digit when
/// it has 8..=15 digits, sane separators, and is not a date/decimal/time.
fn scan_plus_number(b: &[u8], from: usize) -> Option<usize> {
    let mut digits = 0usize;
    let mut end = from;
    let mut sep_run: Vec<u8> = Vec::new();
    let mut open = false;
    let mut groups: Vec<usize> = Vec::new();
    let mut cur = 0usize;
    let mut seps_seen: Vec<u8> = Vec::new();
    let mut j = from;
    while j < b.len() {
        let c = b[j];
        if c.is_ascii_digit() {
            if !sep_run.is_empty() {
                let ok = sep_run.len() == 1 || (sep_run.len() == 2 && sep_run.iter().any(|c| *c == b'(' || *c == b')'));
                if !ok {
                    break;
                }
                seps_seen.extend(sep_run.iter().filter(|c| matches!(c, b' ' | b'-' | b'.')));
                sep_run.clear();
                groups.push(cur);
                cur = 0;
            }
            digits += 1;
            cur += 1;
            end = j + 1;
            if digits > 15 {
                return None;
            }
        } else if matches!(c, b' ' | b'-' | b'.') {
            sep_run.push(c);
        } else if c == b'(' && !open {
            open = true;
            sep_run.push(c);
        } else if c == b')' && open {
            open = false;
            sep_run.push(c);
        } else {
            break;
        }
        if sep_run.len() > 2 {
            break;
        }
        j += 1;
    }
    groups.push(cur);
    if !(8..=15).contains(&digits) {
        return None;
    }
    // The digit run must really end here.
    let after = b.get(end).copied();
    let after2 = b.get(end + 1).copied();
    if after.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
        return None;
    }
    if matches!(after, Some(b'.' | b':' | b',')) && after2.is_some_and(|c| c.is_ascii_digit()) {
        return None;
    }
    if groups == [4, 2, 2] && seps_seen.iter().all(|c| *c == b'-') {
        return None; // +2025-06-18
    }
    Some(end)
}

/// Neighbours of a number-shaped match: not glued to letters, other digits, decimals or
/// dotted/dashed continuations.
fn number_boundaries(s: &str, start: usize, end: usize) -> bool {
    let pc = prev_char(s, start);
    let nc = next_char(s, end);
    if is_word(pc) || is_word(nc) {
        return false;
    }
    if matches!(pc, Some('-' | '.' | '+' | '/')) {
        return false;
    }
    if matches!(nc, Some('-' | '.' | '/' | ',')) && next_next_char(s, end).is_some_and(|c| c.is_ascii_digit()) {
        return false;
    }
    true
}

fn digit_value(c: char) -> Option<u8> {
    match c {
        '0'..='9' => Some(c as u8 - b'0'),
        '\u{FF10}'..='\u{FF19}' => Some((u32::from(c) - 0xFF10) as u8),
        _ => None,
    }
}

/// `alg` of a JWT header segment, if it decodes to a JSON object that has one.
fn jwt_alg(header: &str) -> Option<String> {
    let h = header.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(str::to_string)
}

/// Decide whether `value` assigned to `key` is a password or a generic secret.
/// `whole` is true for a complete JSON string value (may contain spaces).
fn classify_secret(key: &str, value: &str, whole: bool) -> Option<Builtin> {
    let k = key.to_ascii_lowercase();
    if KEY_DENY.iter().any(|d| k.contains(d)) {
        return None;
    }
    if value.is_empty() || value.len() > 256 || looks_placeholder(value) {
        return None;
    }
    if !whole && value.chars().any(char::is_whitespace) {
        return None;
    }
    let lower_v = value.to_ascii_lowercase();
    if matches!(lower_v.as_str(), "null" | "none" | "true" | "false" | "undefined" | "string" | "required" | "optional") {
        return None;
    }
    let is_password = ["password", "passwd", "passwort", "passphrase", "pwd", "pass"]
        .iter()
        .any(|w| k.ends_with(w));
    if is_password {
        let n = value.chars().count();
        if n >= 6 && char_classes(value) >= 2 && !value.contains(char::is_whitespace) || (whole && n >= 12 && char_classes(value) >= 2) {
            return Some(Builtin::Password);
        }
        return None;
    }
    if value.contains(char::is_whitespace) {
        return None;
    }
    let has_digit = value.bytes().any(|b| b.is_ascii_digit());
    let has_alpha = value.bytes().any(|b| b.is_ascii_alphabetic());
    let long_enough = value.len() >= 12 || (is_uuid(value));
    if long_enough && has_digit && has_alpha && shannon_entropy(value) >= 3.0 {
        return Some(Builtin::GenericSecret);
    }
    None
}

#[cfg(test)]
mod tests;
