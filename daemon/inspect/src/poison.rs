//! Tool-poisoning signals: hidden instructions for the agent inside tool definitions,
//! `initialize` instructions, tool results and server-initiated elicitations.
//!
//! Every string of the scanned value (and every object key, so schema property names and
//! `enum` values are covered) is normalised first: ANSI escape sequences are removed and
//! reported, invisible characters (zero-width, bidi controls, Unicode tag characters) are removed
//! and reported, tag characters are decoded (ASCII smuggling) and the decoded text is scanned too,
//! literal `\n` escapes of embedded JSON become spaces. Then phrase rules raise signals.
//!
//! Scoring: each [`SignalKind`] has a weight; a kind counts once per JSON pointer and at most
//! twice per report. `score` is the sum. Severity thresholds:
//! - `None`: 0 — forward unchanged.
//! - `Low`: 1..=3 — alert only (a lone `<IMPORTANT>` tag, a lone mention of `~/.ssh`).
//! - `Medium`: 4..=6 — alert (e.g. invisible characters alone, a tag plus one instruction).
//! - `High`: 7 and above — several independent signals co-occur (instructions to read secrets,
//!   concealment, cross-tool rules...): the policy default is to strip the tool and deny calls.
//!
//! A single word such as `IMPORTANT:` is never a signal; only co-occurring signals reach `High`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::text::{ceil_boundary, enter, enter_index, floor_boundary, is_control, is_invisible, safe_excerpt};

/// Kinds of hidden-instruction evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// `<IMPORTANT>`, `<SYSTEM>`, `[INST]`, `<|im_start|>` ... tags.
    HiddenTag,
    /// `~/.ssh`, `id_rsa`, `.env`, `mcp.json`, `~/.aws/credentials` ...
    SensitivePath,
    /// "read `~/...`", "pass its content as", "append it here" ...
    ReadInstruction,
    /// "do not mention this to the user", "without further explanation" ...
    Concealment,
    /// Names another tool (from `other_tools`) or prescribes behaviour of other tools.
    CrossTool,
    /// Hard-coded recipients or endpoints, "pass private information", "full conversation" ...
    Exfiltration,
    /// "all commands must include the prefix ..."
    PrescribedCommand,
    /// `chmod -R 0666 ~`, `rm -rf ~`, `curl ... | sh` ...
    DangerousCommand,
    /// Text addressed to the model: "SYSTEM NOTE:", "instructions for Claude", "ignore previous
    /// instructions", "in reasoning" ...
    AgentDirected,
    /// "VERY VERY important", "the system will crash", "otherwise the tool will not work" ...
    Urgency,
    /// Zero-width, bidi override, Unicode tag characters.
    InvisibleUnicode,
    /// ANSI escape sequences, other C0/C1 control characters.
    ControlChars,
    /// Asking the user for passwords/tokens (elicitation).
    CredentialRequest,
}

impl SignalKind {
    pub fn weight(self) -> u32 {
        match self {
            SignalKind::Urgency => 1,
            SignalKind::HiddenTag | SignalKind::AgentDirected => 2,
            SignalKind::SensitivePath
            | SignalKind::ReadInstruction
            | SignalKind::Concealment
            | SignalKind::Exfiltration
            | SignalKind::PrescribedCommand => 3,
            SignalKind::CrossTool => 2,
            SignalKind::DangerousCommand
            | SignalKind::InvisibleUnicode
            | SignalKind::ControlChars
            | SignalKind::CredentialRequest => 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    None,
    Low,
    Medium,
    High,
}

/// Score at or above which severity is `Low`, `Medium`, `High`.
pub const LOW_SCORE: u32 = 1;
pub const MEDIUM_SCORE: u32 = 4;
pub const HIGH_SCORE: u32 = 7;
/// Severity from which a tool result should raise an alert.
pub const RESULT_ALERT: Severity = Severity::Medium;

impl Severity {
    pub fn from_score(score: u32) -> Severity {
        match score {
            0 => Severity::None,
            s if s < MEDIUM_SCORE => Severity::Low,
            s if s < HIGH_SCORE => Severity::Medium,
            _ => Severity::High,
        }
    }
}

/// One piece of evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub kind: SignalKind,
    /// RFC 6901 pointer into the scanned value ("" for `scan_instructions`).
    pub pointer: String,
    /// At most ~120 chars around the match, controls and invisible chars escaped.
    pub excerpt: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoisonReport {
    pub score: u32,
    pub severity: Severity,
    /// At most [`MAX_SIGNALS`], one per (kind, pointer).
    pub signals: Vec<Signal>,
}

pub const MAX_SIGNALS: usize = 64;
const MAX_DEPTH: usize = 64;
const EXCERPT_CHARS: usize = 120;

impl PoisonReport {
    pub fn has(&self, kind: SignalKind) -> bool {
        self.signals.iter().any(|s| s.kind == kind)
    }

    fn from_signals(signals: Vec<Signal>) -> PoisonReport {
        let mut per_kind: BTreeMap<SignalKind, u32> = BTreeMap::new();
        for s in &signals {
            *per_kind.entry(s.kind).or_default() += 1;
        }
        let score = per_kind.iter().map(|(k, n)| k.weight() * (*n).min(2)).sum();
        PoisonReport { score, severity: Severity::from_score(score), signals }
    }
}

/// Names of tools offered by OTHER servers, indexed once (Aho-Corasick) so a whole `tools/list`
/// can be scanned against hundreds of names cheaply. Mentions of sibling tools of the same
/// server are normal and must not be put here.
#[derive(Debug, Clone, Default)]
pub struct OtherTools {
    names: Vec<String>,
    ac: Option<AhoCorasick>,
}

/// At most this many names are indexed.
pub const MAX_OTHER_TOOLS: usize = 4096;

impl OtherTools {
    pub fn new(names: &[&str]) -> OtherTools {
        let names: Vec<String> = names
            .iter()
            .filter(|n| (3..=128).contains(&n.len()))
            .take(MAX_OTHER_TOOLS)
            .map(|n| n.to_string())
            .collect();
        let ac = if names.is_empty() {
            None
        } else {
            AhoCorasickBuilder::new().ascii_case_insensitive(true).match_kind(MatchKind::Standard).build(&names).ok()
        };
        OtherTools { names, ac }
    }

    /// First qualifying mention of a name other than `own` in `text`: whole-identifier match,
    /// and either the name is identifier-like (`send_email`, `readFile`, `fs.read`) or it sits
    /// next to a word like "tool", "call", "invoke".
    fn mention(&self, text: &str, own: &str) -> Option<(usize, usize)> {
        let ac = self.ac.as_ref()?;
        for m in ac.find_overlapping_iter(text) {
            let name = self.names.get(m.pattern().as_usize())?;
            if name.eq_ignore_ascii_case(own) {
                continue;
            }
            let (start, end) = (m.start(), m.end());
            let before = text[..start].chars().next_back();
            let after = text[end..].chars().next();
            let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
            if ident(before) || ident(after) || after == Some('_') {
                continue;
            }
            let distinctive = name.contains(['_', '-', '.']) || name.chars().skip(1).any(|c| c.is_ascii_uppercase());
            if distinctive {
                return Some((start, end));
            }
            let lo = floor_boundary(text, start.saturating_sub(24));
            let hi = ceil_boundary(text, end.saturating_add(24));
            let near = text[lo..hi].to_ascii_lowercase();
            if ["tool", "call", "invoke", "function", "use "].iter().any(|w| near.contains(w)) {
                return Some((start, end));
            }
        }
        None
    }
}

/// Scan a tool definition (an element of `tools/list` `result.tools`). `other_tools` are names
/// of tools offered by OTHER servers; a qualifying mention of one is a cross-tool reference.
/// For a whole list, build [`OtherTools`] once and use [`scan_tool_with`].
pub fn scan_tool(def: &Value, other_tools: &[&str]) -> PoisonReport {
    scan_tool_with(def, &OtherTools::new(other_tools))
}

/// [`scan_tool`] with a prebuilt index of other servers' tool names.
pub fn scan_tool_with(def: &Value, others: &OtherTools) -> PoisonReport {
    let own = def.get("name").and_then(Value::as_str).unwrap_or("");
    let ctx = Ctx { others: Some(others), own, mode: Mode::Definition };
    let mut acc = Acc::default();
    walk(def, &mut String::new(), 0, &ctx, &mut acc);
    acc.finish()
}

/// Scan `InitializeResult.instructions`.
pub fn scan_instructions(text: &str) -> PoisonReport {
    let mut acc = Acc::default();
    scan_text(text, "", false, &Ctx { others: None, own: "", mode: Mode::Definition }, &mut acc);
    acc.finish()
}

/// Scan a tool result (or any server-supplied data the agent will read: resource contents,
/// prompts). Instructions aimed at the agent raise signals. Data legitimately mentions paths,
/// shell commands and ANSI colours, so those signals are not used here; the proxy should alert
/// from [`RESULT_ALERT`] (`Medium`) up, where at least two independent signals co-occur.
pub fn scan_result(v: &Value) -> PoisonReport {
    let mut acc = Acc::default();
    walk(v, &mut String::new(), 0, &Ctx { others: None, own: "", mode: Mode::Data }, &mut acc);
    acc.finish()
}

/// Scan the `params` of a server->client `elicitation/create`: servers must not ask the user for
/// credentials; a request for a password/token in the message or as a requested field is
/// `CredentialRequest`.
pub fn scan_elicitation(params: &Value) -> PoisonReport {
    let mut acc = Acc::default();
    walk(params, &mut String::new(), 0, &Ctx { others: None, own: "", mode: Mode::Elicitation }, &mut acc);
    acc.finish()
}

struct Ctx<'a> {
    others: Option<&'a OtherTools>,
    own: &'a str,
    mode: Mode,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Definition,
    Data,
    Elicitation,
}

#[derive(Default)]
struct Acc {
    seen: std::collections::BTreeSet<(SignalKind, String)>,
    signals: Vec<Signal>,
}

impl Acc {
    fn add(&mut self, kind: SignalKind, pointer: &str, excerpt: String) {
        if self.signals.len() >= MAX_SIGNALS {
            return;
        }
        if self.seen.insert((kind, pointer.to_string())) {
            self.signals.push(Signal { kind, pointer: pointer.to_string(), excerpt });
        }
    }

    fn finish(self) -> PoisonReport {
        PoisonReport::from_signals(self.signals)
    }
}

fn walk(v: &Value, ptr: &mut String, depth: usize, ctx: &Ctx<'_>, acc: &mut Acc) {
    if depth > MAX_DEPTH {
        return;
    }
    match v {
        Value::String(s) => scan_text(s, ptr, false, ctx, acc),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let back = enter_index(ptr, i);
                walk(item, ptr, depth + 1, ctx, acc);
                ptr.truncate(back);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let in_properties = ptr.ends_with("/properties");
                let back = enter(ptr, k);
                scan_text(k, ptr, true, ctx, acc);
                if ctx.mode == Mode::Elicitation && in_properties && SECRET_FIELD.is_match(k) {
                    acc.add(SignalKind::CredentialRequest, ptr, safe_excerpt(k, EXCERPT_CHARS));
                }
                walk(item, ptr, depth + 1, ctx, acc);
                ptr.truncate(back);
            }
        }
        _ => {}
    }
}

/// Normalised text plus what normalisation found.
struct Prepared<'a> {
    text: Cow<'a, str>,
    invisible: Option<String>,
    control: Option<String>,
    /// Unicode tag characters were present (ASCII smuggling), not just stray zero-width chars.
    tags: bool,
}

fn excerpt_near(s: &str, byte: usize) -> String {
    let from = floor_boundary(s, byte.saturating_sub(40));
    safe_excerpt(&s[from..], EXCERPT_CHARS)
}

fn is_pictograph(c: Option<char>) -> bool {
    c.is_some_and(|c| u32::from(c) >= 0x1F000 || ('\u{2600}'..='\u{27BF}').contains(&c))
}

fn prepare(s: &str) -> Prepared<'_> {
    // Most strings (keys, ids, plain text) are printable ASCII with no escape to read:
    // they are their own normal form, so no copy.
    if s.bytes().all(|b| matches!(b, b' '..=b'~' | b'\t' | b'\n' | b'\r') && b != b'\\') {
        return Prepared { text: Cow::Borrowed(s), invisible: None, control: None, tags: false };
    }
    let mut text = String::with_capacity(s.len());
    let mut decoded_tags = String::new();
    let mut invisible = None;
    let mut control = None;
    let mut it = s.char_indices().peekable();
    let mut prev: Option<char> = None;
    while let Some((pos, c)) = it.next() {
        if c == '\u{1b}' {
            control.get_or_insert_with(|| excerpt_near(s, pos));
            // Skip the escape sequence: CSI (ESC [ ... final 0x40-0x7E), OSC (ESC ] ... BEL/ESC),
            // or a two-char escape.
            match it.next().map(|x| x.1) {
                Some('[') => {
                    for (_, x) in it.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&x) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    for (_, x) in it.by_ref() {
                        if x == '\u{7}' || x == '\u{1b}' {
                            break;
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        if is_invisible(c) {
            let next = it.peek().map(|x| x.1);
            let benign = (c == '\u{FEFF}' && pos == 0)
                || (c == '\u{200D}' && is_pictograph(prev) && is_pictograph(next));
            if !benign {
                invisible.get_or_insert_with(|| excerpt_near(s, pos));
                if ('\u{E0020}'..='\u{E007E}').contains(&c)
                    && let Some(a) = char::from_u32(u32::from(c) - 0xE0000)
                {
                    decoded_tags.push(a);
                }
            }
            continue;
        }
        prev = Some(c);
        if is_control(c) {
            control.get_or_insert_with(|| excerpt_near(s, pos));
            text.push(' ');
            continue;
        }
        if c == '\\' && it.peek().is_some_and(|x| matches!(x.1, 'n' | 't' | 'r')) {
            // Literal escapes of JSON embedded in text.
            it.next();
            text.push(' ');
            continue;
        }
        text.push(c);
    }
    let tags = !decoded_tags.is_empty();
    if tags {
        text.push('\n');
        text.push_str(&decoded_tags);
    }
    Prepared { text: Cow::Owned(text), invisible, control, tags }
}

struct Rules {
    set: RegexSet,
    rules: Vec<(SignalKind, bool, Regex)>,
}

/// Phrase rules `(kind, applies to data, pattern)`, case-insensitive, applied to normalised text.
/// Rules with `false` only apply to definitions/instructions: results legitimately mention paths
/// and shell commands. Constant patterns: a typo here fails every test in this module, never a
/// runtime input.
const RULES: &[(SignalKind, bool, &str)] = &[
    (SignalKind::HiddenTag, true, r"<\s*/?\s*(?:important|system|instructions?|admin|secret|hidden|critical|assistant|user_instructions|prompt|context)\s*>"),
    (SignalKind::HiddenTag, true, r"\[/?(?:inst|system)\]|<\|(?:im_start|im_end|system|endoftext)\|>"),
    (SignalKind::SensitivePath, false, r"~/\.ssh|\.ssh/|id_(?:rsa|dsa|ecdsa|ed25519)|(?:^|[^a-z0-9])\.env\b|mcp\.json|\.cursor/|\.aws/|credentials\.json|\.git-credentials|\.netrc|\.npmrc|\.pypirc|\.kube/config|\.docker/config\.json|/etc/(?:passwd|shadow)|_history\b|\.gnupg|wallet\.dat|\.config/gh|claude_desktop_config"),
    (SignalKind::ReadInstruction, false, r"\b(?:read|cat|open|load|fetch|get)\s+(?:the\s+)?(?:contents?\s+of\s+)?[`'\x22]?(?:~|/etc/|\$home|%userprofile%)"),
    (SignalKind::ReadInstruction, true, r"\bpass\s+(?:its|the|their|all|this)\s+(?:full\s+)?(?:contents?|output|result)\b"),
    (SignalKind::ReadInstruction, true, r"\b(?:include|append|attach|add|insert|put|send|paste)\s+(?:it|all\s+(?:of\s+)?(?:the\s+)?contents?|(?:its|the|their)\s+(?:full\s+)?contents?)\s+(?:here|as|in|into|to)\b"),
    (SignalKind::ReadInstruction, true, r"\bcontents?\s+(?:from|of)\s+reading\b|\bfirst\s+read\b"),
    (SignalKind::Concealment, true, r"\b(?:do\s+not|don'?t|never|no\s+need\s+to|must\s+not|should\s+not|without)\s+(?:\w+\s+){0,2}?(?:tell|telling|mention|mentioning|inform|notify|show|showing|reveal|disclose|explain|explaining|explanation|display|report)\b[^.\n]{0,80}?\b(?:user|human|anyone|them|this|it|step|that)\b"),
    (SignalKind::Concealment, true, r"\bwithout\s+(?:any\s+)?(?:further\s+)?explanation\b|\bhide\s+(?:this|it)\s+from\b|\b(?:user|human)\s+(?:must|should)\s+not\s+(?:know|see|notice|be\s+told)\b|\bsilently\b|\bwithout\s+(?:the\s+)?user'?s?\s+(?:knowledge|noticing|knowing)"),
    (SignalKind::CrossTool, true, r"\bmcp_[a-z0-9_]+|\bwhen\s+(?:\([^)]{1,40}\)\s+)?[a-z0-9_.\-]+\s+(?:tool\s+)?is\s+(?:invoked|called|used)\b|\bbefore\s+any\s+other\s+tool|\bside\s+effect\s+on\b|\balso\s+present\b|\bcall\s+[a-z0-9_\-]+\.[a-z0-9_\-]+|\bcall\s+[a-z0-9]+_[a-z0-9_]+\s+(?:with|on|to)\b"),
    (SignalKind::Exfiltration, true, r"\b(?:change|set|replace|override)\s+the\s+(?:recipient|destination|receiver|to\s+address|phone\s+number|email\s+address)"),
    (SignalKind::Exfiltration, true, r"(?:send|forward|post|upload|bcc|cc|copy|exfiltrate)\s+(?:\S+\s+){0,6}?to\s+(?:[a-z0-9._%+\-]+@[a-z0-9.\-]+\.[a-z]{2,}|https?://|\+?\d[\d\s\-]{7,})"),
    (SignalKind::Exfiltration, true, r"\bpass\s+(?:any\s+|all\s+)?(?:private|personal|sensitive|secret|confidential)\s+(?:information|data|info)|\b(?:full|entire|whole)\s+(?:conversation|chat\s+history|context)|\blist\s+of\s+(?:the\s+)?(?:phone\s+numbers|contacts|last\s+messages|recent\s+messages)"),
    (SignalKind::PrescribedCommand, true, r"\b(?:all|every|each)\s+(?:\w+\s+)?(?:commands?|requests?|calls?|queries|emails|messages)\s+must\s+(?:include|start|begin|contain|be\s+prefixed|be\s+sent|send|go)"),
    (SignalKind::DangerousCommand, false, r"\bchmod\s+(?:-r\s+)?[0-7]{3,4}\s+(?:~|/)|\brm\s+-(?:rf|fr)\s+(?:~|/|\*)|\b(?:curl|wget)\s+[^|\n]{1,200}\|\s*(?:ba|z)?sh\b|/dev/tcp/|\bnc\s+-e\b|\bbase64\s+-d\s*\|\s*(?:ba)?sh|\bmkfifo\b"),
    (SignalKind::AgentDirected, true, r"\bsystem\s+(?:note|message|prompt|override|instructions?)\s*:|\binstructions?\s+for\s+(?:the\s+)?(?:cursor\s+)?(?:claude|assistant|ai|agent|model|llm|gpt|copilot|cursor)\b|\bthis\s+message\s+is\s+(?:for\s+you|directed\s+at|addressed\s+to|intended\s+for)|\bignore\s+(?:all\s+)?(?:previous|prior|above|earlier|the\s+above)\s+(?:instructions|prompts|rules|messages)"),
    (SignalKind::AgentDirected, true, r"\bin\s+(?:your\s+)?reasoning\b|\bsay\s+ack\b|\byou\s+are\s+now\b|\bnew\s+instructions?\s*:|\bimportant\s+memory\b|\bwhen\s+the\s+user\s+asks\s+(?:anything|something|about|for)"),
    (SignalKind::Urgency, true, r"\bvery\s+very\b|\bwill\s+crash\b|\ball\s+data\s+will\s+be\s+lost\b|\botherwise\s+the\s+tool\s+will\s+not\s+work\b|\basap\b|\b(?:extremely|critically)\s+important\b|\bwill\s+be\s+blocked\b"),
];

const CREDENTIAL_TEXT: &str = r"(?i)\b(?:paste|enter|provide|type|give|share|send|input|submit)\s+(?:\w+\s+){0,4}?(?:password|passphrase|token|api\s*key|secret|private\s+key|credentials?|pat|2fa|otp|one[-\s]time\s+code|ssh\s+key|seed\s+phrase|recovery\s+phrase)\b";

static RULESET: LazyLock<Rules> = LazyLock::new(|| {
    let pats: Vec<String> = RULES.iter().map(|(_, _, p)| format!("(?i){p}")).collect();
    // Constant patterns; covered by every test of this module.
    #[allow(clippy::expect_used)]
    let set = RegexSet::new(&pats).expect("poison rules compile");
    #[allow(clippy::expect_used)]
    let rules = RULES
        .iter()
        .zip(&pats)
        .map(|((k, in_data, _), p)| (*k, *in_data, Regex::new(p).expect("poison rule compiles")))
        .collect();
    Rules { set, rules }
});

#[allow(clippy::expect_used)]
static CREDENTIAL_RE: LazyLock<Regex> = LazyLock::new(|| Regex::new(CREDENTIAL_TEXT).expect("credential rule compiles"));

#[allow(clippy::expect_used)]
static SECRET_FIELD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(?:[a-z0-9_\-]*[_\-])?(?:password|passwd|passphrase|pwd|token|secret|api_?key|apikey|pat|otp|private_?key|credentials?|ssn|card_?number|cvv|pin)$")
        .expect("secret field rule compiles")
});

fn scan_text(s: &str, ptr: &str, is_key: bool, ctx: &Ctx<'_>, acc: &mut Acc) {
    let mode = ctx.mode;
    let prep = prepare(s);
    // Data (tool results) routinely carries coloured terminal output, zero-width characters from
    // web pages, paths and shell snippets: there only tag-character smuggling and phrases aimed
    // at the agent count.
    let data = mode == Mode::Data;
    if let Some(e) = prep.invisible
        && (!data || prep.tags) {
            acc.add(SignalKind::InvisibleUnicode, ptr, e);
        }
    if let Some(e) = prep.control
        && !data {
            acc.add(SignalKind::ControlChars, ptr, e);
        }
    let mut text = prep.text;
    if is_key && text.contains(['_', '-']) {
        // Property names: also read `content_from_reading_ssh_id_rsa` as words.
        let spaced = text.replace(['_', '-'], " ");
        let t = text.to_mut();
        t.push('\n');
        t.push_str(&spaced);
    }
    let text = &*text;
    let rules = &*RULESET;
    // Most strings match no rule: asking that first costs no allocation (the set of
    // matches is one).
    if rules.set.is_match(text) {
        for idx in rules.set.matches(text).iter() {
            let Some((kind, in_data, re)) = rules.rules.get(idx) else { continue };
            if data && !in_data {
                continue;
            }
            if let Some(m) = re.find(text) {
                acc.add(*kind, ptr, excerpt_around(text, m.start(), m.end()));
            }
        }
    }
    if mode == Mode::Elicitation
        && let Some(m) = CREDENTIAL_RE.find(text) {
            acc.add(SignalKind::CredentialRequest, ptr, excerpt_around(text, m.start(), m.end()));
        }
    if let Some((start, end)) = ctx.others.and_then(|o| o.mention(text, ctx.own)) {
        acc.add(SignalKind::CrossTool, ptr, excerpt_around(text, start, end));
    }
}

fn excerpt_around(text: &str, start: usize, end: usize) -> String {
    let from = floor_boundary(text, start.saturating_sub(30));
    let to = ceil_boundary(text, end.saturating_add(60));
    let mut e = String::new();
    if from > 0 {
        e.push('…');
    }
    e.push_str(&safe_excerpt(&text[from..to], EXCERPT_CHARS));
    e
}

#[cfg(test)]
mod tests;
