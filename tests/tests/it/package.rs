//! The Debian package, installed for real: `cargo xtask deb` (from this build's debug
//! binaries), `dpkg -i`, the files in place, `mcpwatchd --check`, the daemon started by
//! hand from the installed files the way the unit runs it (PID 1 here is not systemd),
//! `mcpwatch status` for a member of the `mcpwatch` group and refused for others, then
//! `dpkg -r` (state and config kept) and `dpkg --purge` (both gone).
//!
//! It changes the host (a package, the `mcpwatch` user), so it needs root and dpkg, and
//! it will not touch a host where a `mcpwatch` package is already installed: both skip
//! with the reason printed. The package is purged even when an assertion fails.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mcpwatch_tests::daemon::{bin, free_dual_port};

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (dpkg -i)".into());
    }
    if !Path::new("/usr/bin/dpkg").exists() {
        return Some("no dpkg on this host".into());
    }
    let st = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "mcpwatch"]));
    if String::from_utf8_lossy(&st.stdout).contains("installed") && !String::from_utf8_lossy(&st.stdout).contains("not-installed") {
        return Some("a mcpwatch package is already installed on this host; not replacing it".into());
    }
    None
}

/// Purges the package on the way out, whatever happened.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "mcpwatch"]).output();
    }
}

/// The unit's capability set, as the daemon gets it from systemd.
fn unit_caps() -> String {
    let unit = std::fs::read_to_string("/lib/systemd/system/mcpwatchd.service").expect("installed unit");
    let caps = unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).expect("caps").to_string();
    caps.split_whitespace().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase())).collect::<Vec<_>>().join(",")
}

fn id_of(db: &str, name: &str) -> u32 {
    let line = ok(Command::new("getent").args([db, name]));
    line.split(':').nth(2).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("getent {db} {name}: {line}"))
}

#[test]
fn deb_installs_runs_from_its_files_and_purges_clean() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP deb_installs_runs_from_its_files_and_purges_clean: {why}");
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let deb = ok(Command::new(bin("xtask")).args(["deb", "--profile", "debug", "--no-build", "--out"]).arg(out.path()));
    let deb = deb.lines().last().expect("deb path").trim().to_string();
    let _purge = Purge;
    ok(Command::new("dpkg").arg("-i").arg(&deb));

    // Files in place, the user and the private state dir made, nothing enabled.
    for f in [
        "/usr/bin/mcpwatchd",
        "/usr/bin/mcpwatch",
        "/lib/systemd/system/mcpwatchd.service",
        "/usr/lib/sysusers.d/mcpwatch.conf",
        "/usr/lib/tmpfiles.d/mcpwatch.conf",
        "/etc/mcpwatch/mcpwatchd.toml",
        "/usr/share/doc/mcpwatch/README.md",
        "/usr/share/doc/mcpwatch/reference.txt",
        "/usr/share/bash-completion/completions/mcpwatch",
    ] {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    let unit = std::fs::read_to_string("/lib/systemd/system/mcpwatchd.service").expect("unit");
    assert!(unit.contains("ExecStart=/usr/bin/mcpwatchd"), "the packaged unit starts the packaged binary");
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/mcpwatchd.service").exists(), "postinst enabled the service");
    let uid = id_of("passwd", "mcpwatch");
    let gid = id_of("group", "mcpwatch");
    let state = std::fs::metadata("/var/lib/mcpwatch").expect("state dir");
    assert_eq!((state.mode() & 0o777, state.uid()), (0o700, uid), "state dir mode/owner");
    let run_dir = std::fs::metadata("/run/mcpwatch").expect("/run/mcpwatch");
    assert_eq!((run_dir.mode() & 0o777, run_dir.gid()), (0o750, gid), "runtime dir lets the group in");
    let check = ok(Command::new("/usr/bin/mcpwatchd").args(["--check", "--config", "/etc/mcpwatch/mcpwatchd.toml"]));
    assert!(check.contains("config ok"), "{check}");

    // The daemon from the installed files, as the unit runs it, on a test cgroup (never
    // the host's root cgroup), with the packaged config's socket and state dir.
    let cg = mcpwatch_intercept::cgroup::TestCgroup::unique("mcpwatch-pkg").expect("test cgroup");
    let caps = unit_caps();
    let log = out.path().join("daemon.log");
    let mut daemon = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--init-groups")
        .arg("--no-new-privs")
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg(format!("--bounding-set=-all,{caps}"))
        .args(["--", "/usr/bin/mcpwatchd", "--config", "/etc/mcpwatch/mcpwatchd.toml", "--cgroup"])
        .arg(cg.path())
        .args(["--listen-port", &free_dual_port().to_string()])
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start mcpwatchd");
    let status_as = |groups: &str| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", &format!("--groups={groups}"), "--", "/usr/bin/mcpwatch", "status", "--json"])
            .output()
            .expect("mcpwatch status")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let member = loop {
        let o = status_as(&gid.to_string());
        if o.status.success() {
            break o;
        }
        if let Ok(Some(st)) = daemon.try_wait() {
            panic!("mcpwatchd exited ({st}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "status never worked for a group member:\n{}\n{}", String::from_utf8_lossy(&o.stderr), std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    };
    let st: serde_json::Value = serde_json::from_slice(&member.stdout).expect("status json");
    assert_eq!(st["attached"], true, "{st}");
    let other = status_as("65534");
    assert_eq!(other.status.code(), Some(2), "a non-member was served: {}", String::from_utf8_lossy(&other.stdout));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = daemon.wait();
    drop(cg);
    assert!(Path::new("/var/lib/mcpwatch/audit.sled").exists(), "the daemon used the packaged state dir");

    // Remove keeps config and state; purge removes both.
    ok(Command::new("dpkg").args(["-r", "mcpwatch"]));
    assert!(!Path::new("/usr/bin/mcpwatchd").exists() && !Path::new("/lib/systemd/system/mcpwatchd.service").exists());
    assert!(Path::new("/etc/mcpwatch/mcpwatchd.toml").exists() && Path::new("/var/lib/mcpwatch/audit.sled").exists(), "remove must keep config and state");
    ok(Command::new("dpkg").args(["--purge", "mcpwatch"]));
    assert!(!Path::new("/etc/mcpwatch").exists() && !Path::new("/var/lib/mcpwatch").exists(), "purge left config or state behind");
}
