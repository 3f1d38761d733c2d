//! The official MCP conformance suite as a standing transparency test.
//!
//! `@modelcontextprotocol/conformance` (pinned in tests/peers/conformance, with the Node 22
//! it needs, installed by `cargo xtask setup`) runs its server scenarios against the npm
//! reference server directly, then again from inside a watched cgroup, where every
//! connection is redirected through mcpwatchd (eBPF, policy in audit mode). mcpwatch must
//! be invisible: every scenario ends with the same passed/failed counts both ways (the
//! reference server does not pass every scenario; a difference, not a failure, is
//! mcpwatch's fault). Afterwards every connection must be gone: no daemon socket left in
//! CLOSE-WAIT and no daemon connection to the server, as direct use leaves none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcpwatch_tests::daemon::DaemonOpts;
use mcpwatch_tests::harness::{TCP_CLOSE_WAIT, TCP_ESTABLISHED, Watched, tcp_sockets};
use mcpwatch_tests::peers::{everything_server, move_into_cgroup, repo_root};

/// Per scenario: (checks passed, checks failed).
type Results = BTreeMap<String, (u32, u32)>;

fn suite() -> (PathBuf, PathBuf) {
    let dir = repo_root().join("tests/peers/conformance/node_modules");
    let node = dir.join("node/bin/node");
    let script = dir.join("@modelcontextprotocol/conformance/dist/index.js");
    for p in [&node, &script] {
        assert!(p.exists(), "{} is missing: run `cargo xtask setup`", p.display());
    }
    (node, script)
}

/// `✓ name: 1 passed, 0 failed` lines of the suite's output.
fn parse(out: &str) -> Results {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("✓ ").or_else(|| l.strip_prefix("✗ "))?;
            let (name, counts) = rest.split_once(": ")?;
            let mut n = counts.split(", ").map(|c| c.split(' ').next().and_then(|x| x.parse::<u32>().ok()));
            Some((name.to_string(), (n.next()??, n.next()??)))
        })
        .collect()
}

fn run_suite(url: &str, cgroup: Option<&Path>) -> (Results, String) {
    let (node, script) = suite();
    let work = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(&node);
    cmd.arg(&script)
        .args(["server", "--url", url])
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for v in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"] {
        cmd.env_remove(v);
    }
    if let Some(cg) = cgroup {
        move_into_cgroup(&mut cmd, cg);
    }
    let mut child = cmd.spawn().expect("start the conformance suite");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the conformance suite ran over 180 s against {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("suite output");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (parse(&text), text)
}


#[test]
fn conformance_results_are_the_same_direct_and_through_mcpwatchd_and_no_connection_lingers() {
    let server = everything_server().spawn();
    let url = server.url();
    let (direct, direct_text) = run_suite(&url, None);
    assert!(direct.len() >= 20, "the suite ran too few scenarios directly:\n{direct_text}");
    assert!(direct.values().any(|(p, _)| *p > 0), "nothing passed directly:\n{direct_text}");

    let Some(w) = Watched::start_with(
        "conformance_results_are_the_same_direct_and_through_mcpwatchd_and_no_connection_lingers",
        DaemonOpts {
            ports: Some(server.addr().port().to_string()),
            // Audit mode: mcpwatch watches and records, and must change nothing.
            policy: Some("version = 1\nmode = \"audit\"\nshadow = \"allow\"\n".into()),
            ..Default::default()
        },
    ) else {
        return;
    };
    let (through, through_text) = run_suite(&url, Some(w.cgroup()));
    let differ: Vec<String> = direct
        .keys()
        .chain(through.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| direct.get(*k) != through.get(*k))
        .map(|k| format!("{k}: direct {:?}, through mcpwatchd {:?}", direct.get(k), through.get(k)))
        .collect();
    assert!(
        differ.is_empty(),
        "mcpwatchd changed conformance results:\n{}\n--- through mcpwatchd:\n{through_text}\n--- daemon log:\n{}",
        differ.join("\n"),
        w.daemon.log_text()
    );
    let messages = w.daemon.status().counts.mcp_messages;
    assert!(messages >= 20, "the suite's traffic did not go through mcpwatchd ({messages} MCP messages)");

    // Every client is gone: the daemon must let go of both sides.
    let port = server.addr().port();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let socks = tcp_sockets(w.daemon.pid());
        let close_wait = socks.iter().filter(|s| s.state == TCP_CLOSE_WAIT).count();
        let upstream = socks.iter().filter(|s| s.state == TCP_ESTABLISHED && s.remote_port == port).count();
        if close_wait == 0 && upstream == 0 {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "10 s after the suite ended mcpwatchd still holds {close_wait} socket(s) in CLOSE-WAIT and {upstream} connection(s) to the server"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn suite_output_parses_into_per_scenario_counts() {
    let r = parse("noise\n✓ ping: 1 passed, 0 failed\n  ✗ dns-rebinding-protection: 1 passed, 1 failed\nTotal: 2 passed, 1 failed\n");
    assert_eq!(r.get("ping"), Some(&(1, 0)));
    assert_eq!(r.get("dns-rebinding-protection"), Some(&(1, 1)));
    assert_eq!(r.len(), 2);
}
