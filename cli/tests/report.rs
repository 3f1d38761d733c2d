//! The built `mcpwatch` binary: `list` merging the daemon's inventory (a fake control socket)
//! with a scan of a synthetic home, `list` without a daemon, and `report --json` / `--merge`
//! from files. Hermetic: scans only a temp home (`--home`), `$HOME` points there, and the
//! variables that move client files are removed. The HTML rendering is tested in real Chromium
//! (tests/tests/it/report.rs).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;

use mcpwatch_api::{ClientUse, Request, Response, ServerEntry, ToolEntry};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mcpwatch");

/// One connection: read the request, answer `resp`, hand back the request.
fn fake(dir: &Path, resp: Response) -> (PathBuf, JoinHandle<Request>) {
    let path = dir.join("control.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let h = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("read");
        let mut s = stream;
        s.write_all(format!("{}\n", serde_json::to_string(&resp).expect("encode")).as_bytes())
            .expect("answer");
        serde_json::from_str(&line).expect("request")
    });
    (path, h)
}

/// A home with a Cursor config: one remote server the daemon also saw, one stdio server.
fn home(dir: &Path) -> PathBuf {
    let home = dir.join("home/alice");
    std::fs::create_dir_all(home.join(".cursor")).expect("mkdir");
    std::fs::write(
        home.join(".cursor/mcp.json"),
        r#"{"mcpServers": {
            "billing": {"url": "http://127.0.0.2:18001/mcp/"},
            "git": {"command": "uvx", "args": ["mcp-server-git"]}
        }}"#,
    )
    .expect("write config");
    home
}

fn run(socket: &Path, home: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--socket")
        .arg(socket)
        .env("HOME", home)
        .env_remove("MCPWATCH_SOCKET");
    for v in [
        "XDG_CONFIG_HOME",
        "CLAUDE_CONFIG_DIR",
        "CODEX_HOME",
        "OPENCODE_CONFIG",
    ] {
        cmd.env_remove(v);
    }
    cmd.output().expect("run mcpwatch")
}

/// `list --format json`, scanning only `home`.
fn list_json(socket: &Path, home: &Path) -> Output {
    let home_arg = home.to_str().expect("utf8");
    run(
        socket,
        home,
        &["list", "--format", "json", "--home", home_arg],
    )
}

fn network() -> Vec<ServerEntry> {
    vec![ServerEntry {
        endpoint: "http://127.0.0.2:18001/mcp".into(),
        transport: "streamable-http".into(),
        server_name: Some("billing".into()),
        call_count: 4,
        message_count: 6,
        registered: Some("billing".into()),
        tools: vec![ToolEntry {
            name: "charge".into(),
            calls: 4,
            ..Default::default()
        }],
        clients: vec![ClientUse {
            comm: "node".into(),
            uid: 1000,
            user: Some("alice".into()),
            ..Default::default()
        }],
        last_seen_ms: 1,
        ..Default::default()
    }]
}

fn status_of(inv: &Value, name: &str) -> String {
    let s = inv["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name}: {inv:#}"));
    s["status"].as_str().expect("status").to_string()
}

#[test]
fn list_merges_network_and_configured_servers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = home(dir.path());
    let (sock, h) = fake(dir.path(), Response::List { servers: network() });
    let out = list_json(&sock, &home);
    assert_eq!(h.join().expect("fake"), Request::List);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inv: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(inv["kind"], "mcpwatch-inventory");
    assert!(inv["host"].as_str().is_some_and(|h| !h.is_empty()));
    assert_eq!(
        (inv["network"].as_bool(), inv["scanned"].as_bool()),
        (Some(true), Some(true))
    );
    let servers = inv["servers"].as_array().expect("servers");
    assert_eq!(
        servers.len(),
        2,
        "the configured billing URL is the network server: {inv:#}"
    );
    let billing = &servers
        .iter()
        .find(|s| s["id"] == "http://127.0.0.2:18001/mcp")
        .expect("billing");
    assert_eq!(billing["status"], "registered");
    assert_eq!(
        (billing["seen"].as_bool(), billing["configured"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(billing["clients"], serde_json::json!(["node", "cursor"]));
    assert_eq!(billing["configs"][0]["client"], "cursor");
    assert_eq!(status_of(&inv, "git"), "configured-only");
    let git = servers.iter().find(|s| s["name"] == "git").expect("git");
    assert!(
        git["risks"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["flag"] == "unpinned-fetch")),
        "{git:#}"
    );
}

#[test]
fn list_without_the_daemon_says_so_and_shows_configured_servers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = home(dir.path());
    let sock = dir.path().join("nobody.sock");
    let out = run(
        &sock,
        &home,
        &["list", "--home", home.to_str().expect("utf8")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach mcpwatchd") && err.contains("configured servers only"),
        "{err}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "header + billing + git: {text}");
    assert!(
        lines[0].starts_with("SERVER") && lines[0].contains("STATUS") && lines[0].contains("RISKS")
    );
    assert!(
        lines
            .iter()
            .skip(1)
            .all(|l| l.contains("configured-only") && l.ends_with("never")),
        "{text}"
    );
    assert!(
        text.contains("stdio:uvx mcp-server-git") && text.contains("unpinned-fetch"),
        "{text}"
    );

    // --no-scan leaves nothing: an error, not an empty table.
    let out = run(&sock, &home, &["list", "--no-scan"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to list"));
}

#[test]
fn list_csv_and_markdown_escape_hostile_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    let mut servers = network();
    servers[0].server_name = Some("=HYPERLINK(\"x\")|<b>".into());
    for (format, bad, good) in [
        ("csv", "\"=HYPERLINK", "\"'=HYPERLINK"),
        ("md", "|<b>", "\\|&lt;b&gt;"),
    ] {
        let sub = tempfile::tempdir_in(dir.path()).expect("sub");
        let (sock, h) = fake(
            sub.path(),
            Response::List {
                servers: servers.clone(),
            },
        );
        let out = run(&sock, home, &["list", "--no-scan", "--format", format]);
        h.join().expect("fake");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{format}");
        assert!(
            !text.contains(bad) && text.contains(good),
            "{format}: {text}"
        );
    }
}

fn fixture(name: &str) -> String {
    format!(
        "{}/../tests/fixtures/report/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn report_json_from_files_counts_denied_redacted_and_coverage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("unused.sock");
    let out = run(
        &sock,
        dir.path(),
        &[
            "report",
            "--json",
            "--network",
            &fixture("network.json"),
            "--scan",
            &fixture("scan.json"),
            "--audit",
            &fixture("audit.ndjson"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["hosts"][0]["host"], "fixture-host");
    assert_eq!(r["denied"].as_array().map(Vec::len), Some(2));
    assert_eq!(r["redacted"].as_array().map(Vec::len), Some(1));
    let c = &r["coverage"];
    assert_eq!(
        (
            c["known"].as_u64(),
            c["watched"].as_u64(),
            c["unwatched"].as_u64()
        ),
        (Some(6), Some(3), Some(3))
    );
    assert_eq!(
        (c["calls_seen"].as_u64(), c["calls_registered"].as_u64()),
        (Some(26), Some(21))
    );
    assert_eq!(c["percent"].as_f64(), Some(50.0));

    // Nothing to write is a usage error; a broken audit line names its line.
    let out = run(
        &sock,
        dir.path(),
        &["report", "--network", &fixture("network.json")],
    );
    assert_eq!(out.status.code(), Some(2));
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(&bad, "{}\n").expect("write");
    let out = run(
        &sock,
        dir.path(),
        &["report", "--json", "--audit", bad.to_str().expect("utf8")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.ndjson:1: not an audit record"));
}

#[test]
fn report_merge_joins_a_hosts_list_and_scan_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = home(dir.path());
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).expect("mkdir");
    // This host: its merged inventory (list --format json) and, separately, a second host's scan.
    let (sock, h) = fake(dir.path(), Response::List { servers: network() });
    let out = list_json(&sock, &home);
    h.join().expect("fake");
    std::fs::write(inputs.join("a.json"), &out.stdout).expect("write");
    std::fs::copy(fixture("scan.json"), inputs.join("b.json")).expect("copy");
    std::fs::write(inputs.join("notes.txt"), "ignored").expect("write");
    let merge = || {
        run(
            &sock,
            &home,
            &[
                "report",
                "--merge",
                inputs.to_str().expect("utf8"),
                "--json",
            ],
        )
    };
    let out = merge();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    let hosts = r["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 2);
    assert!(
        hosts.iter().any(
            |h| h["host"] == "fixture-host" && h["servers"].as_array().map(Vec::len) == Some(4)
        )
    );
    assert_eq!(r["coverage"]["known"], 6);
    assert_eq!(r["coverage"]["watched"], 1);

    // A file that is neither is an error naming it.
    std::fs::write(inputs.join("c.json"), "{\"servers\": 42}").expect("write");
    let out = merge();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("c.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
