//! The production unit (`systemd/mcpwatchd.service`): it verifies, scores "OK" in
//! `systemd-analyze security`, and the capability set it grants is enough for the daemon
//! to do its job as an unprivileged user (attach, attribute, deny, audit).
//!
//! PID 1 here is not systemd, so the unit cannot be started by systemd itself: the
//! daemon is run the way the unit runs it (uid, bounding/ambient capabilities taken from
//! the unit file, no_new_privs) with `setpriv`. The system-call filter is checked only
//! offline (by the security score), not enforced in this test.

use std::path::PathBuf;
use std::process::Command;

use mcpwatch_api::CallStatus;
use mcpwatch_tests::daemon::{DaemonOpts, RunAs};
use mcpwatch_tests::harness::Watched;
use mcpwatch_tests::peers::{self, Client};
use serde_json::json;

fn unit_path() -> PathBuf {
    peers::repo_root().join("systemd").join("mcpwatchd.service")
}

fn unit_text() -> String {
    std::fs::read_to_string(unit_path()).expect("read unit")
}

/// The values of every `Key=` line of the unit, in order.
fn unit_values(key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit_text().lines().filter_map(|l| l.strip_prefix(&prefix).map(str::to_string)).collect()
}

fn systemd_analyze() -> &'static str {
    let p = "/usr/bin/systemd-analyze";
    assert!(std::path::Path::new(p).exists(), "systemd-analyze is missing: apt-get install systemd (cargo xtask setup does)");
    p
}

/// A copy of the unit whose ExecStart names a binary that exists, so `verify` can run
/// without installing anything.
fn unit_copy(dir: &std::path::Path) -> PathBuf {
    let text = unit_text().replace("/usr/local/bin/mcpwatchd", &mcpwatch_tests::daemon::bin("mcpwatchd").display().to_string());
    let p = dir.join("mcpwatchd.service");
    std::fs::write(&p, text).expect("write unit copy");
    p
}

#[test]
fn unit_verifies_and_scores_ok_in_systemd_analyze_security() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let unit = unit_copy(tmp.path());
    let out = Command::new(systemd_analyze()).arg("verify").arg(&unit).output().expect("systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "verify is not clean:\n{stderr}");

    let out = Command::new(systemd_analyze()).args(["security", "--offline=yes", "--no-pager"]).arg(&unit).output().expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("no score in:\n{text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score from {line:?}"));
    assert!(score <= 3.0, "exposure {score} > 3.0:\n{text}");

    // The unit runs unprivileged with a bounded capability set, never CAP_SYS_ADMIN.
    assert_eq!(unit_values("User"), vec!["mcpwatch"]);
    let caps = unit_values("CapabilityBoundingSet");
    assert_eq!(caps.len(), 1);
    assert!(!caps[0].contains("CAP_SYS_ADMIN"), "{caps:?}");
    assert_eq!(unit_values("AmbientCapabilities"), caps, "ambient and bounding sets differ");
    assert_eq!(unit_values("NoNewPrivileges"), vec!["yes"]);
    assert_eq!(unit_values("ExecReload").len(), 1, "no ExecReload");
}

/// The unit's capability set is enough: as `nobody` with exactly those capabilities the
/// daemon attaches to a cgroup, attributes the client (another user's process), denies a
/// call by policy and audits it.
#[test]
fn daemon_works_with_exactly_the_units_capabilities_as_an_unprivileged_user() {
    let caps: Vec<String> = unit_values("CapabilityBoundingSet")
        .first()
        .expect("CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let server = peers::python_server().ip([127, 0, 0, 2].into()).json_response().spawn();
    let policy = r#"
version = 1
mode = "enforce"

[[rule]]
id = "no-ssh"
tools = ["read_file"]
action = "deny"
[[rule.when]]
pointer = "/path"
matches = '(^|/)\.ssh(/|$)'
"#;
    let opts = DaemonOpts {
        ports: Some(server.addr().port().to_string()),
        policy: Some(policy.to_string()),
        run_as: Some(RunAs { uid: 65534, gid: 65534, caps }),
        ..Default::default()
    };
    let Some(w) = Watched::start_with("daemon_works_with_exactly_the_units_capabilities", opts) else { return };
    let st = std::fs::metadata(&w.daemon.state_dir).expect("state dir");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&st), 65534, "the daemon did not run as nobody");

    let out = Client::python(&server.url()).cgroup(w.cgroup()).call("echo", json!({"text": "hi"})).call("read_file", json!({"path": "/root/.ssh/id_rsa"})).run();
    assert_eq!(out.steps()[0]["text"], "hi", "{:?}", out.lines);
    assert_eq!(out.steps()[1]["ok"], false, "{:?}", out.lines);
    assert!(!server.recorded_calls().iter().any(|c| c["tool"] == "read_file"), "the denied call reached the server");

    let recs = w.daemon.wait_audit("both calls audited", |r| {
        r.iter().filter(|x| x.method.as_deref() == Some("tools/call") && x.status != CallStatus::Pending).count() >= 2
    });
    let echo = recs.iter().find(|r| r.name.as_deref() == Some("echo") && r.status == CallStatus::Ok).expect("echo record");
    let p = echo.process.as_ref().expect("process identity");
    assert_eq!(p.uid, 0, "{p:?}");
    assert!(p.exe.as_deref().unwrap_or_default().contains("python"), "root's process not attributed: {p:?}");
    assert!(recs.iter().any(|r| r.name.as_deref() == Some("read_file") && r.decision.as_ref().is_some_and(|d| d.action == "deny")), "{recs:#?}");
}
