//! `mcpwatch scan` as built, against the fixture trees in `tests/fixtures/discovery` (one file per
//! client in its real shape) and synthetic homes made in temp dirs.
//!
//! Hermetic: every run passes `--root` or `--home` with a fixture directory, and the environment
//! variables that move a user's own files are pointed away from the real home, so nothing under
//! the real `/root`, `/home` or `/etc` is read.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use mcpwatch_discover::RiskFlag;
use mcpwatch_discover::clients::CLIENTS;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mcpwatch");

/// Values planted in the fixtures that must never be printed.
const SECRETS: &[&str] = &[
    "ghp_Zq3FakeTokenForScanTests0123456789ab",
    "sk-live-FAKE9a8b7c6d5e4f3g2h1i0j",
    "Hunter2Password!",
    "qk_FAKEquerySecret98765",
    "sk-FAKEargSecret0123456789abcdef",
    "ghp_BrokenFileSecret0123456789abcdefghij",
    "CONTINUE_SECRET_VALUE_abc123XYZ",
    "AKIAQ3FAKESCANTEST7X",
    "xoxb-123456789012-abcdefghijklmnopqrstuvwx",
    "sk-proj-FAKEcodexSecretValue1234567890",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/discovery")
}

fn root() -> PathBuf {
    fixtures().join("root")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `mcpwatch scan ARGS` with `home` as the invoking user's `$HOME` (default: a path that
/// does not exist) and no variables that move client files.
fn scan_env(args: &[&str], home: Option<&Path>, extra_env: &[(&str, &Path)]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.arg("scan").args(args);
    for v in [
        "XDG_CONFIG_HOME",
        "CLAUDE_CONFIG_DIR",
        "CODEX_HOME",
        "OPENCODE_CONFIG",
    ] {
        cmd.env_remove(v);
    }
    cmd.env(
        "HOME",
        home.unwrap_or(Path::new("/nonexistent/mcpwatch-scan-test")),
    );
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run mcpwatch");
    Run {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

fn scan(args: &[&str]) -> Run {
    scan_env(args, None, &[])
}

fn json(args: &[&str]) -> (i32, Value) {
    let mut a = args.to_vec();
    a.push("--json");
    let r = scan(&a);
    let v = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", r.stdout, r.stderr));
    (r.code, v)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn servers(v: &Value) -> &Vec<Value> {
    v["servers"].as_array().expect("servers array")
}

fn server<'a>(v: &'a Value, name: &str) -> &'a Value {
    servers(v)
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no server {name}"))
}

fn flags_of(v: &Value) -> BTreeSet<String> {
    v["risks"]
        .as_array()
        .expect("risks")
        .iter()
        .map(|r| r["flag"].as_str().expect("flag").to_string())
        .collect()
}

#[test]
fn every_client_in_the_table_is_found_in_its_fixture() {
    let r = root();
    let (code, v) = json(&["--root", s(&r)]);
    assert_eq!(code, 1, "fixture has risky servers");
    let found: BTreeSet<&str> = servers(&v)
        .iter()
        .map(|x| x["client"].as_str().expect("client"))
        .collect();
    let table: BTreeSet<&str> = CLIENTS.iter().map(|c| c.id).collect();
    assert_eq!(
        found, table,
        "every client of the table has a fixture that is found"
    );
    let scopes: BTreeSet<&str> = servers(&v)
        .iter()
        .map(|x| x["scope"].as_str().expect("scope"))
        .collect();
    assert_eq!(
        scopes,
        BTreeSet::from(["managed", "plugin", "project", "user"])
    );
    assert_eq!(v["summary"]["servers"], 47, "{}", v["summary"]);
    assert_eq!(v["summary"]["homes_scanned"], 4);
    // A home outside /home, found through /etc/passwd.
    assert_eq!(server(&v, "svc-git")["scope"], "user");

    // Shapes: placeholders and comments parsed, transports per client rules, names only.
    assert_eq!(
        server(&v, "gh-remote")["headers"],
        serde_json::json!(["Authorization"])
    );
    assert_eq!(server(&v, "events")["transport"], "sse", "Gemini url = SSE");
    assert_eq!(
        server(&v, "corp-search")["transport"],
        "http",
        "Gemini httpUrl = HTTP"
    );
    assert_eq!(
        server(&v, "remote-goose")["url"],
        "https://goose-tools.example.com/mcp"
    );
    assert_eq!(server(&v, "oc-local")["command"], "bun");
    assert_eq!(
        server(&v, "postgres-zed")["command"],
        "/usr/local/bin/mcp-postgres"
    );
    assert_eq!(server(&v, "disabled-one")["enabled"], false);
    assert_eq!(
        server(&v, "figma")["headers"],
        serde_json::json!(["X-Figma-Region", "X-Figma-Token"])
    );
    assert_eq!(
        server(&v, "github-desktop")["env"],
        serde_json::json!(["GITHUB_PERSONAL_ACCESS_TOKEN"])
    );
    // Project files found through the clients' records: Claude's `projects`, VS Code's workspaceStorage.
    assert_eq!(server(&v, "local-db")["project"], "/home/alice/work/app");
    assert_eq!(server(&v, "legacy-remote")["scope"], "project");
    assert_eq!(server(&v, "tool-helper")["scope"], "project");
    assert_eq!(server(&v, "acme-db")["scope"], "plugin");
    assert_eq!(server(&v, "corp-tickets")["scope"], "managed");
    // The launch hash is a sha256 of the launch, stable across runs.
    let h = server(&v, "ops")["launch_hash"].as_str().expect("hash");
    assert_eq!(h.len(), 64);
    let (_, again) = json(&["--root", s(&r)]);
    assert_eq!(server(&again, "ops")["launch_hash"], h);
}

#[test]
fn each_risk_flag_is_shown_on_the_server_that_has_it() {
    let r = root();
    let (_, v) = json(&["--root", s(&r)]);
    let expect: &[(&str, RiskFlag)] = &[
        ("filesystem", RiskFlag::UnpinnedFetch),
        ("sqlite", RiskFlag::UnpinnedFetch),
        ("github-desktop", RiskFlag::PlaintextSecret),
        ("linear", RiskFlag::PlaintextSecret),
        ("oc-remote", RiskFlag::PlaintextSecret),
        ("q-app", RiskFlag::PlaintextSecret),
        ("app-api", RiskFlag::PlaintextSecret),
        ("internal-wiki", RiskFlag::CleartextUrl),
        ("runner", RiskFlag::ShellCommand),
        ("ops", RiskFlag::ShellCommand),
        ("ops", RiskFlag::UnpinnedFetch),
        ("legacy-remote", RiskFlag::RemoteBridge),
        ("legacy-remote", RiskFlag::VulnerableVersion),
        ("sandboxed", RiskFlag::ContainerHostAccess),
        ("notes", RiskFlag::PublicListener),
    ];
    for (name, flag) in expect {
        let f = flags_of(server(&v, name));
        assert!(
            f.contains(flag.id()),
            "{name} should have {}: {f:?}",
            flag.id()
        );
    }
    // And the clean launches have none (pinned npx/uvx, placeholders, https).
    for name in [
        "perplexity",
        "time",
        "fetch",
        "kiro-fetch",
        "aws-docs",
        "playwright",
        "gh-remote",
        "github",
        "sentry",
        "svc-git",
    ] {
        let f = flags_of(server(&v, name));
        assert!(f.is_empty(), "{name}: {f:?}");
    }
    // Every flag but world-readable (mode-dependent, own test below) is covered above.
    for flag in RiskFlag::ALL {
        if flag != RiskFlag::WorldReadableSecret {
            assert!(expect.iter().any(|(_, f)| *f == flag), "{flag} untested");
        }
    }
}

#[test]
fn world_readable_secret_only_when_other_users_can_read_the_file() {
    let d = tempfile::tempdir().expect("tmp");
    let home = d.path().join("carol");
    fs::create_dir_all(home.join(".cursor")).expect("mkdir");
    let file = home.join(".cursor/mcp.json");
    fs::write(
        &file,
        r#"{"mcpServers":{"gh":{"command":"node","args":["s.js"],"env":{"GITHUB_TOKEN":"ghp_Zq3FakeTokenForScanTests0123456789ab"}}}}"#,
    )
    .expect("write");
    for dir in [d.path(), home.as_path(), home.join(".cursor").as_path()] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let flags = || {
        let (_, v) = json(&["--home", s(&home)]);
        flags_of(server(&v, "gh"))
    };
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(flags().contains("world-readable-secret"));
    assert!(flags().contains("plaintext-secret"));
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(!flags().contains("world-readable-secret"));
    // Readable file in a home others cannot enter: not exposed.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).expect("chmod");
    assert!(!flags().contains("world-readable-secret"));
    assert!(flags().contains("plaintext-secret"));
}

#[test]
fn no_output_format_prints_a_planted_secret() {
    // The secrets really are in the fixtures (else this test could not fail).
    let mut all = String::new();
    let mut stack = vec![fixtures()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            if e.file_type().expect("type").is_dir() {
                stack.push(e.path());
            } else {
                all.push_str(&fs::read_to_string(e.path()).expect("read"));
            }
        }
    }
    for secret in SECRETS {
        assert!(all.contains(secret), "{secret} not planted");
    }
    let r = root();
    let policy = fixtures().join("policy.toml");
    for format in ["table", "json", "csv", "md", "sarif"] {
        let run = scan(&["--root", s(&r), "--policy", s(&policy), "--format", format]);
        assert_eq!(run.code, 1, "{format}: {}", run.stderr);
        assert!(
            run.stdout.len() > 1000,
            "{format} printed little: {}",
            run.stdout
        );
        for secret in SECRETS {
            assert!(
                !run.stdout.contains(secret),
                "{format} stdout leaks {secret}"
            );
            assert!(
                !run.stderr.contains(secret),
                "{format} stderr leaks {secret}"
            );
        }
        // The redaction shows where a secret was.
        if format != "sarif" {
            assert!(
                run.stdout.contains("<redacted>") || run.stdout.contains("&lt;redacted&gt;"),
                "{format}"
            );
        }
    }
}

#[test]
fn exit_status_is_0_clean_1_shadow_2_error() {
    let home = fixtures().join("clean/home");
    let r = scan(&["--home", s(&home)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("corp-docs"), "{}", r.stdout);

    let registered = fixtures().join("policy.toml");
    let (code, v) = json(&["--home", s(&home), "--policy", s(&registered)]);
    assert_eq!(code, 0);
    assert_eq!(
        server(&v, "corp-docs")["registry"],
        serde_json::json!({"status": "registered", "name": "corp"})
    );

    let other = fixtures().join("other-policy.toml");
    let (code, v) = json(&["--home", s(&home), "--policy", s(&other)]);
    assert_eq!(code, 1, "shadow server");
    assert_eq!(server(&v, "corp-docs")["registry"]["status"], "shadow");
    assert_eq!(v["summary"]["shadow"], 1);

    assert_eq!(scan(&["--home", s(&home), "--bogus"]).code, 2);
    assert_eq!(scan(&["--home", s(&home), "--format", "xml"]).code, 2);
    let missing = scan(&["--home", "/nonexistent/mcpwatch-test"]);
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("not a directory"),
        "{}",
        missing.stderr
    );
    let bad_policy = tempfile::NamedTempFile::new().expect("tmp");
    fs::write(bad_policy.path(), "version = 1\nmode = \"loud\"\n").expect("write");
    let r = scan(&["--home", s(&home), "--policy", s(bad_policy.path())]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(":2"),
        "policy error with its line: {}",
        r.stderr
    );
}

#[test]
fn unparsable_file_is_reported_with_line_and_column_and_the_scan_goes_on() {
    let r = root();
    let (code, v) = json(&["--root", s(&r)]);
    assert_eq!(code, 1);
    let errors = v["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert!(
        e["file"]
            .as_str()
            .expect("file")
            .ends_with("home/bob/.cursor/mcp.json")
    );
    assert_eq!(
        (e["line"].as_u64(), e["column"].as_u64()),
        (Some(6), Some(7)),
        "{e}"
    );
    assert_eq!(e["client"], "cursor");
    // Files after it (other homes, managed files) were still read.
    assert!(servers(&v).iter().any(|x| x["name"] == "ops"));
    assert!(servers(&v).iter().any(|x| x["name"] == "corp-tickets"));

    let table = scan(&["--root", s(&r)]);
    assert!(
        table
            .stdout
            .contains("home/bob/.cursor/mcp.json:6:7: JSON5 syntax"),
        "{}",
        table.stdout
    );

    // A broken TOML and YAML file too, each with its position.
    let d = tempfile::tempdir().expect("tmp");
    fs::create_dir_all(d.path().join(".codex")).expect("mkdir");
    fs::create_dir_all(d.path().join(".continue")).expect("mkdir");
    fs::write(
        d.path().join(".codex/config.toml"),
        "[mcp_servers.a]\ncommand = \"x\nargs = []\n",
    )
    .expect("w");
    fs::write(
        d.path().join(".continue/config.yaml"),
        "mcpServers:\n  - name: a\n    args: [x\n",
    )
    .expect("w");
    fs::create_dir_all(d.path().join(".cursor")).expect("mkdir");
    fs::write(
        d.path().join(".cursor/mcp.json"),
        r#"{"mcpServers":{"ok":{"url":"https://ok.example/mcp"}}}"#,
    )
    .expect("w");
    let (code, v) = json(&["--home", s(d.path())]);
    assert_eq!(code, 1);
    let errors = v["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2, "{errors:?}");
    for e in errors {
        assert!(e["line"].as_u64().is_some(), "{e}");
    }
    assert_eq!(servers(&v).len(), 1);
}

#[test]
fn sarif_is_2_1_0_with_one_rule_per_risk_flag() {
    let r = root();
    let run = scan(&["--root", s(&r), "--format", "sarif"]);
    let v: Value = serde_json::from_str(&run.stdout).expect("sarif json");
    assert_eq!(v["version"], "2.1.0");
    let run0 = &v["runs"][0];
    let rules: Vec<&str> = run0["tool"]["driver"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    for flag in RiskFlag::ALL {
        assert_eq!(
            rules.iter().filter(|r| **r == flag.id()).count(),
            1,
            "{flag}"
        );
    }
    let results = run0["results"].as_array().expect("results");
    assert!(!results.is_empty());
    for res in results {
        let idx = usize::try_from(res["ruleIndex"].as_u64().expect("index")).expect("usize");
        assert_eq!(rules[idx], res["ruleId"].as_str().expect("ruleId"));
        let uri = res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            .as_str()
            .expect("uri");
        assert!(uri.starts_with("file://"), "{uri}");
    }
    assert!(results.iter().any(|r| r["ruleId"] == "vulnerable-version"));
    assert!(results.iter().any(|r| r["ruleId"] == "unreadable-config"
        && r["locations"][0]["physicalLocation"]["region"]["startLine"] == 6));
}

#[test]
fn csv_and_markdown_have_one_row_per_server() {
    let r = root();
    let csv = scan(&["--root", s(&r), "--format", "csv"]);
    assert_eq!(csv.stdout.lines().count(), 48, "header + 47 servers");
    assert!(csv.stdout.starts_with("client,scope,owner,name,transport,"));
    let md = scan(&["--root", s(&r), "--format", "md"]);
    let rows = md
        .stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| client"))
        .count();
    assert_eq!(rows, 47);
}

#[test]
fn xdg_config_home_is_honoured_for_the_invoking_users_own_home_only() {
    let d = tempfile::tempdir().expect("tmp");
    let home = d.path().join("me");
    let xdg = d.path().join("xdg");
    fs::create_dir_all(home.join(".config")).expect("mkdir");
    fs::create_dir_all(xdg.join("zed")).expect("mkdir");
    fs::write(
        xdg.join("zed/settings.json"),
        "// moved config\n{ \"context_servers\": { \"moved\": { \"command\": \"node\", \"args\": [\"m.js\"], }, }, }",
    )
    .expect("w");
    let own = scan_env(
        &["--home", s(&home), "--json"],
        Some(&home),
        &[("XDG_CONFIG_HOME", &xdg)],
    );
    let v: Value = serde_json::from_str(&own.stdout).expect("json");
    assert!(
        servers(&v).iter().any(|x| x["name"] == "moved"),
        "{}",
        own.stdout
    );
    // Someone else's home: their environment is unknown, the default ~/.config is read.
    let other = scan_env(
        &["--home", s(&home), "--json"],
        None,
        &[("XDG_CONFIG_HOME", &xdg)],
    );
    let v: Value = serde_json::from_str(&other.stdout).expect("json");
    assert!(servers(&v).is_empty(), "{}", other.stdout);
}

#[test]
fn synthetic_home_with_50_config_files_and_200_projects() {
    let d = tempfile::tempdir().expect("tmp");
    let home = d.path().join("dev");
    // 30 VS Code profiles and 20 Claude plugins: 50 user/plugin config files, 2 servers each.
    for i in 0..30 {
        let p = home.join(format!(".config/Code/User/profiles/p{i}"));
        fs::create_dir_all(&p).expect("mkdir");
        fs::write(
            p.join("mcp.json"),
            format!(r#"{{ "servers": {{ "a{i}": {{ "command": "node", "args": ["a.js"] }}, "b{i}": {{ "type": "http", "url": "https://b{i}.example/mcp" }}, }} }}"#),
        )
        .expect("w");
    }
    for i in 0..20 {
        let p = home.join(format!(".claude/plugins/market/plugins/p{i}"));
        fs::create_dir_all(&p).expect("mkdir");
        fs::write(
            p.join(".mcp.json"),
            format!(r#"{{ "mcpServers": {{ "pa{i}": {{ "command": "x" }}, "pb{i}": {{ "command": "npx", "args": ["-y", "pkg{i}"] }} }} }}"#),
        )
        .expect("w");
    }
    // 200 projects: 100 recorded in ~/.claude.json, 100 found only by the --path walk.
    let work = d.path().join("work");
    let mut recorded = serde_json::Map::new();
    for i in 0..200 {
        let p = work.join(format!("group{}/proj{i}", i % 10));
        fs::create_dir_all(p.join(".vscode")).expect("mkdir");
        fs::write(
            p.join(".mcp.json"),
            format!(r#"{{"mcpServers":{{"m{i}":{{"command":"node","args":["m.js"]}}}}}}"#),
        )
        .expect("w");
        fs::write(
            p.join(".vscode/mcp.json"),
            format!(r#"{{"servers":{{"v{i}":{{"url":"https://v{i}.example/mcp"}}}}}}"#),
        )
        .expect("w");
        if i < 100 {
            recorded.insert(
                p.to_str().expect("utf-8").to_string(),
                serde_json::json!({"mcpServers": {}}),
            );
        }
    }
    // Never walked: dependency trees and directories past the depth limit.
    let nm = work.join("group0/proj0/node_modules/dep");
    fs::create_dir_all(&nm).expect("mkdir");
    fs::write(
        nm.join(".mcp.json"),
        r#"{"mcpServers":{"hidden":{"command":"x"}}}"#,
    )
    .expect("w");
    let deep = work.join("a/b/c/d/e/f/g/h");
    fs::create_dir_all(&deep).expect("mkdir");
    fs::write(
        deep.join(".mcp.json"),
        r#"{"mcpServers":{"too-deep":{"command":"x"}}}"#,
    )
    .expect("w");
    fs::create_dir_all(&home).expect("mkdir");
    fs::write(
        home.join(".claude.json"),
        serde_json::json!({"projects": recorded}).to_string(),
    )
    .expect("w");

    let started = std::time::Instant::now();
    let (code, v) = json(&["--home", s(&home), "--path", s(&work)]);
    let took = started.elapsed();
    assert_eq!(code, 1, "unpinned npx in the plugins");
    assert_eq!(
        v["summary"]["files_scanned"],
        1 + 50 + 400,
        "{}",
        v["summary"]
    );
    assert_eq!(v["summary"]["projects_scanned"], 200, "{}", v["summary"]);
    assert_eq!(v["summary"]["servers"], 60 + 40 + 400, "{}", v["summary"]);
    assert_eq!(v["summary"]["risky"], 20);
    assert!(
        !servers(&v)
            .iter()
            .any(|x| x["name"] == "hidden" || x["name"] == "too-deep")
    );
    eprintln!("synthetic scan (debug build): {took:?}");
}

#[test]
fn running_stdio_server_is_matched_to_its_pid() {
    let d = tempfile::tempdir().expect("tmp");
    let home = d.path().join("runner");
    fs::create_dir_all(home.join(".cursor")).expect("mkdir");
    // A distinctive argv so no other process on the host matches.
    let arg = format!(
        "{}.{}",
        3000 + std::process::id() % 1000,
        std::process::id()
    );
    fs::write(
        home.join(".cursor/mcp.json"),
        format!(r#"{{"mcpServers":{{"sleeper":{{"command":"sleep","args":["{arg}"]}},"idle":{{"command":"sleep","args":["{arg}9"]}}}}}}"#),
    )
    .expect("w");
    let mut child = Command::new("sleep")
        .arg(&arg)
        .spawn()
        .expect("spawn sleep");
    // /proc/<pid>/cmdline is filled in after exec: wait for it.
    let cmdline = PathBuf::from(format!("/proc/{}/cmdline", child.id()));
    for _ in 0..200 {
        if fs::read(&cmdline).is_ok_and(|b| b.starts_with(b"sleep")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (_, v) = json(&["--home", s(&home)]);
    child.kill().expect("kill sleep");
    child.wait().expect("reap sleep");
    assert_eq!(
        server(&v, "sleeper")["pids"],
        serde_json::json!([child.id()])
    );
    assert_eq!(server(&v, "idle")["pids"], serde_json::json!([]));
}

#[test]
fn closed_stdout_exits_0_like_the_other_commands() {
    let d = tempfile::tempdir().expect("tmp");
    fs::create_dir_all(d.path().join(".cursor")).expect("mkdir");
    // Enough output (several hundred KB) to outlast the pipe buffer.
    let servers: serde_json::Map<String, Value> = (0..3000)
        .map(|i| {
            (
                format!("server-{i}"),
                serde_json::json!({"command": "npx", "args": ["-y", format!("pkg-{i}")]}),
            )
        })
        .collect();
    fs::write(
        d.path().join(".cursor/mcp.json"),
        serde_json::json!({ "mcpServers": servers }).to_string(),
    )
    .expect("w");
    let mut child = Command::new(BIN)
        .args(["scan", "--home", s(d.path()), "--json"])
        .env("HOME", "/nonexistent/mcpwatch-scan-test")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("first bytes");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stdio_servers_register_by_launch_and_direct_calls_around_a_gateway_are_bypass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".cursor")).expect("mkdir");
    std::fs::write(
        home.join(".cursor/mcp.json"),
        r#"{ "mcpServers": {
            "everything": { "command": "npx", "args": ["-y", "@modelcontextprotocol/server-everything@2025.9.25"] },
            "fetch": { "command": "uvx", "args": ["mcp-server-fetch==2025.4.7"] },
            "copilot": { "url": "https://api.githubcopilot.com/mcp/" },
            "via-gateway": { "url": "https://gw.corp.example/mcp" }
        } }"#,
    )
    .expect("write config");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "version = 1\nmode = \"audit\"\n\
         [[server]]\nname = \"everything\"\npackage = \"npm:@modelcontextprotocol/server-everything\"\n\
         [[server]]\nname = \"gw\"\nurl = \"https://gw.corp.example/mcp\"\n\
         [[gateway]]\nname = \"corp\"\nurl = \"https://gw.corp.example/mcp\"\ncovers = [\"*.githubcopilot.com\"]\n",
    )
    .expect("write policy");
    let (code, v) = json(&["--home", s(&home), "--policy", s(&policy)]);
    assert_eq!(code, 1, "shadow and bypass need attention");
    assert_eq!(
        server(&v, "everything")["registry"],
        serde_json::json!({"status": "registered", "name": "everything"})
    );
    assert_eq!(server(&v, "fetch")["registry"]["status"], "shadow");
    assert_eq!(server(&v, "copilot")["registry"]["status"], "bypass");
    assert_eq!(server(&v, "copilot")["registry"]["gateway"], "corp");
    assert_eq!(server(&v, "via-gateway")["registry"]["status"], "registered");
    assert_eq!((v["summary"]["shadow"].as_u64(), v["summary"]["bypass"].as_u64()), (Some(1), Some(1)));
    // SARIF carries the bypass under its own rule.
    let sarif = scan(&["--home", s(&home), "--policy", s(&policy), "--format", "sarif"]);
    let sv: Value = serde_json::from_str(&sarif.stdout).expect("sarif json");
    let results = sv["runs"][0]["results"].as_array().expect("results");
    assert!(results.iter().any(|r| r["ruleId"] == "gateway-bypass" && r["message"]["text"].as_str().unwrap_or("").contains("copilot")));
    let rules = sv["runs"][0]["tool"]["driver"]["rules"].as_array().expect("rules");
    for r in results {
        let i = r["ruleIndex"].as_u64().expect("index") as usize;
        assert_eq!(rules[i]["id"], r["ruleId"], "ruleIndex points at its rule");
    }
}
