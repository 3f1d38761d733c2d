//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` (docs/fuzzing.md).
//!
//! It exists so the adversarial suite is one command on a fresh machine and part of
//! `cargo xtask test`: it checks for nightly Rust (the only reason to skip), installs
//! cargo-fuzz if missing, seeds each target's corpus from the threat corpus
//! (`tests/fixtures/threats.jsonl`) plus the checked-in `fuzz/seeds/`, builds all targets
//! once, runs each for a fixed time, and fails with the reproducer path of every crash.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::util::{self, section, step};

/// Every target `cargo xtask fuzz` runs, in order (fuzz/fuzz_targets/<name>.rs).
pub const TARGETS: &[&str] =
    &["sniff", "http_head", "jsonrpc", "sse_chunks", "tls_hello", "policy_args", "path_normalize"];

/// libFuzzer verdict on one input taking longer than this: a hang.
const INPUT_TIMEOUT_SECS: u64 = 20;
/// Seeds larger than this are left out (libFuzzer's default `-max_len` is 4096).
const MAX_SEED_BYTES: usize = 8 * 1024;

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Clone, clap::Args)]
pub struct FuzzArgs {
    /// Seconds each target runs (3600 for a long run).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Targets to run (default: all).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub targets: Vec<String>,
}

/// How a fuzz run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every target ran its time without a crash.
    Passed,
    /// Not run, and why (nightly Rust is missing).
    Skipped(String),
    /// At least one target crashed, hung or ran out of memory.
    Failed,
}

/// `cargo xtask fuzz`.
pub fn run(args: &FuzzArgs) -> anyhow::Result<Outcome> {
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    check_layout()?;
    section("fuzzing: toolchain");
    if let Some(reason) = missing_nightly() {
        step(format!("SKIPPED: {reason}"));
        return Ok(Outcome::Skipped(reason));
    }
    ensure_cargo_fuzz()?;

    section("fuzzing: seed corpora");
    seed_corpora(&targets)?;

    section("fuzzing: build (nightly, libFuzzer, no sanitizer)");
    let started = Instant::now();
    util::run(nightly_cargo().args(["fuzz", "build", "-s", "none"]))?;
    step(format!("built in {:.0} s", started.elapsed().as_secs_f64()));

    let mut failed = Vec::new();
    for target in &targets {
        section(&format!("fuzzing: {target} for {} s", args.seconds));
        if !run_target(target, args.seconds)? {
            failed.push(*target);
        }
    }
    if failed.is_empty() {
        section(&format!("fuzzing: {} targets, no crash", targets.len()));
        Ok(Outcome::Passed)
    } else {
        section(&format!("fuzzing FAILED: {}", failed.join(", ")));
        Ok(Outcome::Failed)
    }
}

fn fuzz_dir() -> PathBuf {
    util::repo_root().join("fuzz")
}

/// `rustup run nightly cargo` in the repository root, cleaned of what `cargo run` set for
/// xtask: the stable toolchain's variables, CARGO_TARGET_DIR (the fuzz build keeps its own
/// target dir, `fuzz/target`) and the package variables (`CARGO_PKG_NAME`, ...), which
/// build scripts such as ring's track: left in, every run would rebuild them.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]).current_dir(util::repo_root());
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTDOC", "CARGO", "CARGO_TARGET_DIR", "RUSTC_WRAPPER"] {
        cmd.env_remove(var);
    }
    for (var, _) in std::env::vars_os() {
        if is_set_by_cargo_run(&var.to_string_lossy()) {
            cmd.env_remove(var);
        }
    }
    cmd
}

/// Variables `cargo run` sets for the program it runs (not user configuration).
fn is_set_by_cargo_run(var: &str) -> bool {
    var.starts_with("CARGO_PKG_")
        || matches!(
            var,
            "CARGO_MANIFEST_DIR" | "CARGO_MANIFEST_PATH" | "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
        )
}

/// Why fuzzing cannot run here, or `None` when nightly Rust is installed.
fn missing_nightly() -> Option<String> {
    if util::which("rustup").is_none() {
        return Some("rustup is not installed, so there is no nightly toolchain for cargo-fuzz".into());
    }
    let ok = nightly_cargo()
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        None
    } else {
        Some("nightly Rust is not installed (cargo-fuzz needs it): `rustup toolchain install nightly`".into())
    }
}

/// Installs cargo-fuzz unless `cargo fuzz` already works (idempotent, fast when present).
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let version = nightly_cargo().args(["fuzz", "--version"]).output();
    if let Ok(out) = version
        && out.status.success()
    {
        step(String::from_utf8_lossy(&out.stdout).trim());
        return Ok(());
    }
    step("cargo-fuzz missing: installing it");
    let started = Instant::now();
    util::run(nightly_cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    step(format!("installed in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// Runs one target; `Ok(false)` when it found a crash (reported with its reproducer).
fn run_target(target: &str, seconds: u64) -> anyhow::Result<bool> {
    let dir = fuzz_dir();
    let corpus = dir.join("corpus").join(target);
    let seeds = dir.join("seeds").join(target);
    let artifacts = dir.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
    let log = dir.join("artifacts").join(format!("{target}.log"));
    let log_file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let since = SystemTime::now();

    let mut cmd = nightly_cargo();
    cmd.args(["fuzz", "run", "-s", "none", target]).arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1");
    cmd.stdout(log_file.try_clone()?).stderr(log_file);
    let status = util::run_status(&mut cmd)?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if status.success() {
        step(summary(&text).unwrap_or_else(|| "done".into()));
        return Ok(true);
    }
    for line in excerpt(&text) {
        println!("      | {line}");
    }
    let found = new_artifacts(&artifacts, since);
    if found.is_empty() {
        step(format!("FAILED ({status}) without a reproducer; full log: {}", log.display()));
    }
    for path in found {
        step(format!("CRASH in {target}: reproducer {}", path.display()));
        step(format!("  reproduce: cargo +nightly fuzz run -s none {target} {}", path.display()));
        step(format!("  minimise:  cargo +nightly fuzz tmin -s none {target} {}", path.display()));
    }
    step(format!("full log: {}", log.display()));
    Ok(false)
}

/// libFuzzer's "Done N runs in S second(s)" line plus the corpus size.
fn summary(log: &str) -> Option<String> {
    let done = log.lines().rev().find(|l| l.starts_with("Done "))?;
    let corpus = log
        .lines()
        .rev()
        .find_map(|l| l.split_once(" corp: ").map(|(_, c)| c.split_whitespace().next().unwrap_or("?").to_owned()));
    Some(match corpus {
        Some(c) => format!("{done}; corpus {c} inputs/bytes; no crash"),
        None => format!("{done}; no crash"),
    })
}

/// What to show of a failed run's log: the panic message (the violated property) and
/// the failing input as cargo-fuzz prints it; the last lines when there is no panic.
fn excerpt(log: &str) -> Vec<&str> {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    if let Some(at) = lines.iter().position(|l| l.contains("panicked at")) {
        out.extend(lines[at..].iter().take(8).take_while(|l| !l.starts_with("stack backtrace")));
    }
    if let Some(at) = lines.iter().position(|l| l.starts_with("Failing input")) {
        out.extend(lines[at..].iter().take(7).filter(|l| !l.trim().is_empty()));
    } else if out.is_empty() {
        out.extend(&lines[lines.len().saturating_sub(30)..]);
    }
    out
}

/// Files libFuzzer wrote into `dir` (crash-, timeout-, oom-, leak-...) since `since`.
fn new_artifacts(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

// ---------------------------------------------------------------------------
// Seeds: the threat corpus's attack inputs, routed to the targets that parse them.

/// One seed file: which target, a name, the bytes.
#[derive(Debug, PartialEq)]
struct Seed {
    target: &'static str,
    name: String,
    bytes: Vec<u8>,
}

/// Writes `fuzz/corpus/<target>/threat-*` from tests/fixtures/threats.jsonl. The corpus
/// directories are git-ignored and also collect what libFuzzer finds.
fn seed_corpora(targets: &[&str]) -> anyhow::Result<()> {
    let path = util::repo_root().join("tests").join("fixtures").join("threats.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let seeds = seeds_from_threats(&text)?;
    for target in targets {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut n = 0;
        for seed in seeds.iter().filter(|s| s.target == *target) {
            let file = dir.join(&seed.name);
            std::fs::write(&file, &seed.bytes).with_context(|| format!("writing {}", file.display()))?;
            n += 1;
        }
        let checked_in = std::fs::read_dir(fuzz_dir().join("seeds").join(target)).map_or(0, Iterator::count);
        step(format!("{target}: {n} from the threat corpus, {checked_in} in fuzz/seeds"));
    }
    Ok(())
}

/// Routes every string inside each threat's `input` (lists and objects are walked):
/// HTTP request text to `sniff` and `http_head` (and its body onwards), JSON text to
/// `jsonrpc`, `sse_chunks` (as an SSE event), the arguments of calls to `policy_args`
/// and every string in `params` (paths, URIs, names) to `path_normalize`.
fn seeds_from_threats(jsonl: &str) -> anyhow::Result<Vec<Seed>> {
    let mut seeds = Vec::new();
    for (lineno, line) in jsonl.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Value =
            serde_json::from_str(line).with_context(|| format!("threats.jsonl line {}", lineno + 1))?;
        let id = record.get("id").and_then(Value::as_str).unwrap_or("unknown");
        let mut strings = Vec::new();
        if let Some(input) = record.get("input") {
            collect_strings(input, &mut strings);
        }
        for (n, s) in strings.iter().enumerate() {
            let name = |kind: &str| format!("threat-{id}-{n}{kind}");
            let mut push = |target: &'static str, name: String, bytes: Vec<u8>| {
                if !bytes.is_empty() && bytes.len() <= MAX_SEED_BYTES {
                    seeds.push(Seed { target, name, bytes });
                }
            };
            if is_http_request(s) {
                push("sniff", name(""), s.as_bytes().to_vec());
                push("http_head", name(""), s.as_bytes().to_vec());
                if let Some((_, body)) = s.split_once("\r\n\r\n") {
                    push("jsonrpc", name("-body"), body.as_bytes().to_vec());
                }
            }
            let trimmed = s.trim_start();
            if trimmed.starts_with('{') || trimmed.starts_with('[') {
                push("jsonrpc", name(""), s.as_bytes().to_vec());
                // sse_chunks input: [limit-1][cut count][cuts...][stream].
                let mut sse = vec![255, 3, 40, 128, 200];
                sse.extend_from_slice(format!("event: message\nid: {n}\ndata: {s}\n\n").as_bytes());
                push("sse_chunks", name(""), sse);
                if let Ok(v) = serde_json::from_str::<Value>(s) {
                    if let Some(args) = v.pointer("/params/arguments") {
                        push("policy_args", name(""), args.to_string().into_bytes());
                    }
                    let mut params = Vec::new();
                    if let Some(p) = v.get("params") {
                        collect_strings(p, &mut params);
                    }
                    for (k, text) in params.into_iter().enumerate() {
                        push("path_normalize", name(&format!("-{k}")), text.as_bytes().to_vec());
                    }
                }
            }
        }
    }
    Ok(seeds)
}

fn is_http_request(s: &str) -> bool {
    ["GET ", "POST ", "PUT ", "DELETE ", "HEAD ", "OPTIONS ", "PATCH "]
        .iter()
        .any(|m| s.starts_with(m))
        && s.contains(" HTTP/1.")
}

fn collect_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(map) => map.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

/// Fails early with a clear message when `fuzz/` is missing (e.g. a partial checkout).
fn check_layout() -> anyhow::Result<()> {
    let manifest = fuzz_dir().join("Cargo.toml");
    if !manifest.is_file() {
        bail!("{} not found: the fuzz targets are missing", manifest.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threat_inputs_are_routed_to_their_targets() {
        let jsonl = concat!(
            r#"{"id":"PA-007","input":"POST /mcp HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"}"#,
            "\n",
            r#"{"id":"TR-001","input":{"roots":["file:///p"],"message":"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"read_file\",\"arguments\":{\"path\":\"/p/../etc\"}}}"}}"#,
            "\n\n",
            r#"{"id":"RE-1","input":{"kind":"generated","python":"'[' * 9"}}"#,
        );
        let seeds = seeds_from_threats(jsonl).unwrap();
        let names: Vec<(&str, &str)> = seeds.iter().map(|s| (s.target, s.name.as_str())).collect();
        assert_eq!(
            names,
            [
                ("sniff", "threat-PA-007-0"),
                ("http_head", "threat-PA-007-0"),
                ("jsonrpc", "threat-PA-007-0-body"),
                ("jsonrpc", "threat-TR-001-0"),
                ("sse_chunks", "threat-TR-001-0"),
                ("policy_args", "threat-TR-001-0"),
                ("path_normalize", "threat-TR-001-0-0"),
                ("path_normalize", "threat-TR-001-0-1"),
            ]
        );
        assert_eq!(seeds[5].bytes, br#"{"path":"/p/../etc"}"#);
        assert!(seeds[4].bytes.ends_with(b"\n\n"));
        assert_eq!(seeds[6].bytes, b"/p/../etc");
        assert!(seeds_from_threats("{not json").is_err());
    }

    #[test]
    fn every_target_has_a_source_file() {
        for t in TARGETS {
            assert!(fuzz_dir().join("fuzz_targets").join(format!("{t}.rs")).is_file(), "{t}");
        }
    }

    #[test]
    fn cargo_run_variables_are_told_from_configuration() {
        assert!(is_set_by_cargo_run("CARGO_PKG_NAME"));
        assert!(is_set_by_cargo_run("CARGO_MANIFEST_DIR"));
        assert!(!is_set_by_cargo_run("CARGO_HOME"));
        assert!(!is_set_by_cargo_run("CARGO_NET_OFFLINE"));
    }

    #[test]
    fn excerpt_shows_the_property_and_the_input() {
        let log = "INFO: seed\nthread '<unnamed>' panicked at fuzz_targets/x.rs:3:5:\nproperty broken\nstack backtrace:\n  0: foo\nFailing input:\n\n\tfuzz/artifacts/x/crash-1\n\nOutput of `std::fmt::Debug`:\n\n\t[1]\n";
        assert_eq!(
            excerpt(log),
            [
                "thread '<unnamed>' panicked at fuzz_targets/x.rs:3:5:",
                "property broken",
                "Failing input:",
                "\tfuzz/artifacts/x/crash-1",
                "Output of `std::fmt::Debug`:",
                "\t[1]",
            ]
        );
        assert_eq!(excerpt("a\nb"), ["a", "b"]);
    }

    #[test]
    fn summary_reads_libfuzzer_stats() {
        let log = "#2\tINITED cov: 10 ft: 10 corp: 5/300b exec/s: 0\n#900\tNEW cov: 12 corp: 7/412b\nDone 1234 runs in 3 second(s)\n";
        assert_eq!(summary(log).unwrap(), "Done 1234 runs in 3 second(s); corpus 7/412b inputs/bytes; no crash");
        assert_eq!(summary("crash"), None);
    }
}
