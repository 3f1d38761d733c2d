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
    assert!(recs.iter().any(|r| r.name.as_deref() == Some("read_file") && r.decision.as_ref().is_some_and(|d| d.action.as_str() == "deny")), "{recs:#?}");
}

/// The `$NOTIFY_SOCKET` end systemd would own: a unix datagram socket in a temp dir.
struct NotifyRx {
    sock: std::os::unix::net::UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifyRx {
    fn bind() -> NotifyRx {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(std::time::Duration::from_millis(200))).expect("timeout");
        NotifyRx { sock, path, _dir: dir }
    }

    /// Messages until one satisfies `pred` (returned last), within 20 s.
    fn until(&self, what: &str, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 4096];
        while std::time::Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                let done = pred(&msg);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
        }
        panic!("no notification {what} within 20s; got {seen:?}");
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

/// `Type=notify` without systemd: READY=1 once interception is attached, WATCHDOG=1
/// while the accept loop and audit flusher run, RELOADING=1 (with MONOTONIC_USEC) then
/// READY=1 on SIGHUP, STOPPING=1 on SIGTERM.
#[test]
fn daemon_speaks_the_sd_notify_protocol_with_a_watchdog() {
    let rx = NotifyRx::bind();
    let opts = DaemonOpts {
        ports: Some("9".into()),
        env: vec![
            ("NOTIFY_SOCKET".into(), rx.path.display().to_string()),
            ("WATCHDOG_USEC".into(), "1500000".into()),
        ],
        ..Default::default()
    };
    let Some(mut w) = Watched::start_with("daemon_speaks_the_sd_notify_protocol", opts) else { return };
    let seen = rx.until("READY=1", |m| has_line(m, "READY=1"));
    let ready = seen.last().expect("ready");
    assert!(ready.contains("STATUS=") && ready.contains("intercepting"), "{ready}");
    assert!(!seen.iter().any(|m| m.contains("WATCHDOG=1")), "watchdog before READY: {seen:?}");
    let st = w.daemon.status();
    assert!(st.attached, "READY=1 but not attached: {st:?}");

    // The watchdog keeps being fed (period WATCHDOG_USEC/3 = 0.5 s) while idle.
    for _ in 0..3 {
        rx.until("WATCHDOG=1", |m| has_line(m, "WATCHDOG=1"));
    }

    let pid = nix::unistd::Pid::from_raw(w.daemon.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let seen = rx.until("RELOADING=1", |m| has_line(m, "RELOADING=1"));
    let reloading = seen.last().expect("reloading");
    let usec = reloading.lines().find_map(|l| l.strip_prefix("MONOTONIC_USEC=")).unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading}"));
    assert!(usec.parse::<u64>().expect("number") > 0);
    let seen = rx.until("READY=1 after reload", |m| has_line(m, "READY=1"));
    assert!(seen.last().expect("ready").contains("STATUS=policy"), "{seen:?}");

    let status = w.daemon.terminate();
    assert!(status.success(), "{status}");
    rx.until("STOPPING=1", |m| has_line(m, "STOPPING=1"));
}

/// Run mcpwatchd with `args` (and `env`) and expect a refused start: nonzero exit and
/// exactly one line on stderr, which is returned.
fn refused_start(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run mcpwatchd");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "started anyway: {stderr}");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "not one line:\n{stderr}");
    stderr.trim_end().to_string()
}

/// A daemon command line with private state dir and control socket under `dir`.
fn daemon_cmd(dir: &std::path::Path, port: u16) -> Command {
    daemon_cmd_with_state(dir, &dir.join("state"), port)
}

fn daemon_cmd_with_state(dir: &std::path::Path, state: &std::path::Path, port: u16) -> Command {
    let mut c = Command::new(mcpwatch_tests::daemon::bin("mcpwatchd"));
    c.arg("--state-dir").arg(state).arg("--control-socket").arg(dir.join("control.sock")).arg("--listen-port").arg(port.to_string());
    c.env("MCPWATCH_LOG", "info");
    c
}

#[test]
fn port_in_use_is_one_line_naming_the_fix_and_creates_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let tmp = tempfile::tempdir().expect("tempdir");
    let line = refused_start(daemon_cmd(tmp.path(), port).arg("--static-upstream").arg("127.0.0.1:9"));
    assert!(line.contains(&format!("port {port}")) && line.contains("already in use") && line.contains("--listen-port"), "{line}");
    assert!(!tmp.path().join("state").exists(), "state dir created before the check");
}

#[test]
fn unusable_state_dir_is_one_line_naming_the_fix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let port = mcpwatch_tests::daemon::free_dual_port();
    let line = refused_start(daemon_cmd_with_state(tmp.path(), &file.join("state"), port).arg("--static-upstream").arg("127.0.0.1:9"));
    assert!(line.contains("state dir") && line.contains("Not a directory") && line.contains("--state-dir"), "{line}");
    assert!(!line.contains("os error"), "{line}");
}

#[test]
fn missing_cgroup_is_one_line_and_no_ca_is_created() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Ok(mount) = mcpwatch_intercept::cgroup::cgroup2_mount() else {
        eprintln!("SKIP missing_cgroup: no cgroup2 mount");
        return;
    };
    let missing = mount.join(format!("mcpwatch-it-missing-{}", std::process::id()));
    let port = mcpwatch_tests::daemon::free_dual_port();
    let line = refused_start(daemon_cmd(tmp.path(), port).arg("--cgroup").arg(&missing));
    assert!(line.contains("does not exist") && line.contains("mkdir") && line.contains("--cgroup"), "{line}");
    assert!(!tmp.path().join("state").exists(), "state (and CA) created before the check");
}

#[test]
fn closed_mode_without_bpffs_is_one_line_naming_the_mount() {
    if let Some(why) = mcpwatch_tests::harness::ebpf_unavailable() {
        eprintln!("SKIP closed_mode_without_bpffs: {why}");
        return;
    }
    let cg = mcpwatch_intercept::cgroup::TestCgroup::unique("mcpwatch-it").expect("test cgroup");
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = mcpwatch_tests::daemon::free_dual_port();
    // A tmpfs directory: not a bpf filesystem.
    let line = refused_start(
        daemon_cmd(tmp.path(), port).arg("--cgroup").arg(cg.path()).arg("--failure-mode").arg("closed").arg("--pin-dir").arg(tmp.path().join("pins")),
    );
    assert!(line.contains("no bpf filesystem") && line.contains("mount -t bpf"), "{line}");
    assert!(!tmp.path().join("state").exists());
}

#[test]
fn no_bpf_capabilities_is_one_line_naming_them() {
    if let Some(why) = mcpwatch_tests::harness::ebpf_unavailable() {
        eprintln!("SKIP no_bpf_capabilities: {why}");
        return;
    }
    let cg = mcpwatch_intercept::cgroup::TestCgroup::unique("mcpwatch-it").expect("test cgroup");
    let tmp = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(tmp.path(), Some(65534), Some(65534)).expect("chown");
    let port = mcpwatch_tests::daemon::free_dual_port();
    // As nobody with only the non-BPF capabilities of the unit.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs"])
        .args(["--inh-caps=-all,+sys_ptrace", "--ambient-caps=-all,+sys_ptrace", "--bounding-set=-all,+sys_ptrace", "--"])
        .arg(mcpwatch_tests::daemon::bin("mcpwatchd"))
        .arg("--state-dir").arg(tmp.path().join("state"))
        .arg("--control-socket").arg(tmp.path().join("control.sock"))
        .arg("--listen-port").arg(port.to_string())
        .arg("--cgroup").arg(cg.path());
    let line = refused_start(&mut cmd);
    assert!(line.contains("CAP_BPF") && line.contains("CAP_PERFMON") && line.contains("CAP_NET_ADMIN") && line.contains("AmbientCapabilities"), "{line}");
    assert!(!tmp.path().join("state").exists());
}

/// A rejected `policy reload` prints the error with real line breaks (the excerpt under
/// `file:line:col`), not literal `\n` sequences, and exits nonzero.
#[test]
fn rejected_policy_reload_prints_line_breaks() {
    let d = mcpwatch_tests::daemon::Daemon::start(DaemonOpts {
        static_upstream: Some("127.0.0.1:9".parse().expect("addr")),
        policy: Some("version = 1\nmode = \"audit\"\n".into()),
        ..Default::default()
    });
    std::fs::write(d.policy_path(), "version = 1\nmode = \"enforce\"\nshadw = \"block\"\n").expect("write policy");
    let out = d.cli(&["policy", "reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("\\n"), "literal \\n in:\n{stderr}");
    assert!(stderr.lines().count() >= 3 && stderr.contains(":3:1"), "{stderr}");
}

/// `ca show` without --state-dir asks the running daemon where its state (and CA) is.
#[test]
fn ca_show_asks_the_running_daemon_for_its_state_dir() {
    let d = mcpwatch_tests::daemon::Daemon::start(DaemonOpts { static_upstream: Some("127.0.0.1:9".parse().expect("addr")), ..Default::default() });
    let ca = d.state_dir.join("ca").join("ca.pem");
    assert!(ca.exists(), "TLS is on by default; no CA at {}", ca.display());
    let out = Command::new(mcpwatch_tests::daemon::bin("mcpwatch"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["ca", "show", "--json"])
        .env_remove("MCPWATCH_STATE_DIR")
        .output()
        .expect("run mcpwatch");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let show: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(show["path"].as_str(), Some(ca.display().to_string().as_str()), "{show}");
}

/// `audit --follow` survives a daemon restart: it reconnects (the control socket path
/// is the same, here through a symlink re-pointed at the new daemon's socket), prints
/// the records made after the restart, and none of the earlier ones twice.
#[test]
fn audit_follow_resumes_after_a_daemon_restart_without_duplicates() {
    let server = peers::python_server().ip([127, 0, 0, 2].into()).json_response().spawn();
    let port = server.addr().port().to_string();
    let Some(mut w) = Watched::start("audit_follow_resumes_after_a_daemon_restart", &port) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("control.sock");
    std::os::unix::fs::symlink(&w.daemon.socket, &link).expect("symlink");
    let mut follow = Command::new(mcpwatch_tests::daemon::bin("mcpwatch"))
        .arg("--socket")
        .arg(&link)
        .args(["audit", "--follow", "--json", "--tool", "echo"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn follower");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str(&line).expect("NDJSON")).is_err() {
                return;
            }
        }
    });
    // The record of the first completed echo after `after_ms`, and everything before it.
    let wait_ok = |after_ms: u64| -> Vec<serde_json::Value> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(v) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
                let done = v["status"]["state"] == "ok" && v["ts_ms"].as_u64().unwrap_or(0) > after_ms;
                got.push(v);
                if done {
                    return got;
                }
            }
        }
        panic!("no completed echo after {after_ms} within 30s; got {got:?}");
    };
    let call = |cg: &std::path::Path, text: &str| {
        let out = Client::python(&server.url()).cgroup(cg).call("echo", json!({"text": text})).run();
        assert_eq!(out.steps()[0]["text"], text, "{:?}", out.lines);
    };
    call(w.cgroup(), "before-restart");
    let before = wait_ok(0);

    // Restart on the same state dir; re-point the socket the follower uses.
    let state = w.daemon.state_dir.clone();
    let keep = w.daemon.keep_state();
    w.daemon.terminate();
    let restarted_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let again = mcpwatch_tests::daemon::Daemon::start(DaemonOpts {
        cgroup: Some(w.cgroup().to_path_buf()),
        ports: Some(port.clone()),
        state_dir: Some(state),
        ..Default::default()
    });
    std::fs::remove_file(&link).expect("unlink");
    std::os::unix::fs::symlink(&again.socket, &link).expect("symlink");
    w.daemon = again;
    call(w.cgroup(), "after-restart");
    let after = wait_ok(restarted_ms);
    // Anything still in flight (a duplicate would arrive with the backlog, before the
    // new record; give a late one a moment too).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let late: Vec<serde_json::Value> = rx.try_iter().collect();
    let _ = follow.kill();
    let output = follow.wait_with_output().expect("follower output");
    drop(keep);

    let mut all: Vec<String> = before.iter().chain(&after).chain(&late).map(|v| v.to_string()).collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "a record was printed twice: {before:?}\n---\n{after:?}\n---\n{late:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("reconnected"), "{stderr}");
}

/// One journal entry: (field, value) pairs in order.
type Entry = Vec<(String, String)>;

/// Parse one journal native-protocol datagram into (field, value) pairs.
fn journal_fields(mut b: &[u8]) -> Entry {
    let mut out = Vec::new();
    while !b.is_empty() {
        let nl = b.iter().position(|&c| c == b'\n').expect("field ends with a newline");
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|&c| c == b'=') {
            out.push((String::from_utf8_lossy(&line[..eq]).into(), String::from_utf8_lossy(&line[eq + 1..]).into()));
            b = &b[nl + 1..];
        } else {
            let name = String::from_utf8_lossy(line).to_string();
            let len = u64::from_le_bytes(b[nl + 1..nl + 9].try_into().expect("length")) as usize;
            let value = &b[nl + 9..nl + 9 + len];
            out.push((name, String::from_utf8_lossy(value).into()));
            b = &b[nl + 9 + len + 1..];
        }
    }
    out
}

/// Under systemd (`$JOURNAL_STREAM` names stderr) the daemon logs in journald's native
/// fields: PRIORITY per level (so `journalctl -p err` works), MESSAGE, structured
/// fields; a denied call and a rejected reload each reach the journal as one entry.
#[test]
fn logs_go_to_the_journal_with_priorities_and_fields() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let journal = std::os::unix::net::UnixDatagram::bind(tmp.path().join("journal.sock")).expect("bind fake journal");
    journal.set_read_timeout(Some(std::time::Duration::from_millis(200))).expect("timeout");
    let stderr_path = tmp.path().join("stderr");
    let stderr_file = std::fs::File::create(&stderr_path).expect("stderr file");
    let meta = std::fs::metadata(&stderr_path).expect("stat");
    let stream = format!("{}:{}", std::os::unix::fs::MetadataExt::dev(&meta), std::os::unix::fs::MetadataExt::ino(&meta));
    let policy = tmp.path().join("policy.toml");
    std::fs::write(&policy, "version = 1\nmode = \"enforce\"\n\n[[rule]]\nid = \"no-ssh\"\ntools = [\"read_file\"]\naction = \"deny\"\n").expect("policy");
    let server = peers::python_server().json_response().spawn();
    let port = mcpwatch_tests::daemon::free_dual_port();
    let mut child = daemon_cmd(tmp.path(), port)
        .arg("--static-upstream")
        .arg(server.addr().to_string())
        .arg("--policy")
        .arg(&policy)
        .env("JOURNAL_STREAM", &stream)
        .env("MCPWATCH_JOURNAL_SOCKET", tmp.path().join("journal.sock"))
        .stderr(stderr_file)
        .spawn()
        .expect("spawn mcpwatchd");
    let entries = std::cell::RefCell::new(Vec::<Entry>::new());
    let wait = |what: &str, pred: &dyn Fn(&[(String, String)]) -> bool| -> Entry {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut buf = vec![0u8; 65536];
        while std::time::Instant::now() < deadline {
            if let Ok(n) = journal.recv(&mut buf) {
                let f = journal_fields(&buf[..n]);
                entries.borrow_mut().push(f.clone());
                if pred(&f) {
                    return f;
                }
            }
        }
        panic!("no journal entry {what}; got {:#?}", entries.borrow());
    };
    let get = |f: &[(String, String)], k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();

    let ready = wait("mcpwatchd ready", &|f| get(f, "MESSAGE").starts_with("mcpwatchd ready"));
    assert_eq!(get(&ready, "PRIORITY"), "6", "{ready:?}");
    assert_eq!(get(&ready, "SYSLOG_IDENTIFIER"), "mcpwatchd");

    let out = Client::python(&format!("http://127.0.0.1:{port}/mcp")).call("read_file", json!({"path": "/root/.ssh/id_rsa"})).run();
    assert_eq!(out.steps()[0]["ok"], false, "{:?}", out.lines);
    let deny = wait("for the denied call", &|f| get(f, "MESSAGE").starts_with("call blocked"));
    assert_eq!(get(&deny, "PRIORITY"), "4", "{deny:?}");
    assert_eq!(get(&deny, "MCPWATCH_TOOL"), "read_file", "{deny:?}");
    assert!(get(&deny, "MCPWATCH_RULES").contains("no-ssh"), "{deny:?}");

    std::fs::write(&policy, "version = 1\nmode = \"enforce\"\nshadw = \"block\"\n").expect("break policy");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let err = wait("for the rejected reload", &|f| get(f, "PRIORITY") == "3");
    assert!(get(&err, "MESSAGE").contains("policy reload rejected"), "{err:?}");
    // The multi-line error travels as one field (the binary form), not as several entries.
    assert!(get(&err, "MCPWATCH_ERROR").contains(":3:1"), "{err:?}");

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let _ = child.wait();
    let text = std::fs::read_to_string(&stderr_path).expect("stderr");
    assert!(!text.contains("mcpwatchd ready"), "journal entries also went to stderr:\n{text}");
}
