//! Who opened a connection, completed from `/proc`: the connect hook gives pid,
//! uid, comm and cgroup id; this adds exe, argv, user name, cgroup path, systemd
//! unit, ancestry and the "agent" a call is attributed to.
//!
//! Everything here tolerates the process having exited (short-lived clients): it
//! falls back to what the eBPF side captured. Reads are bounded (argv size,
//! ancestry depth). A pid reused between the connect and this lookup would be
//! described as the new process; the window is the daemon's accept latency.

use std::path::Path;

use mcpwatch_api::{Ancestor, ProcessInfo};

use crate::Origin;

/// How far up the parent chain [`describe`] walks.
pub const MAX_ANCESTRY: usize = 32;
/// At most this many bytes of `/proc/<pid>/cmdline` are read.
const MAX_CMDLINE_BYTES: u64 = 64 * 1024;
/// At most this many argv entries are kept.
const MAX_ARGS: usize = 256;

/// Describes the process behind `origin`. `exec_comm` is the name recorded at
/// exec time (see [`crate::Interceptor::exec_comm`]), used when `/proc` is gone.
pub fn describe(origin: &Origin, exec_comm: Option<String>) -> ProcessInfo {
    let tgid = origin.tgid;
    let alive = Path::new(&format!("/proc/{tgid}")).exists();
    let comm = alive
        .then(|| read_comm(tgid))
        .flatten()
        .or(exec_comm)
        .unwrap_or_else(|| origin.comm.clone());
    // A leader that exited while other threads run is a zombie: its `exe` is gone and its
    // `cmdline` empty, but the connecting thread's are still there (otherwise the process
    // would be named by `comm` alone, which it sets itself).
    let thread = |what: &str| format!("{tgid}/task/{}/{what}", origin.pid);
    let exe = alive.then(|| read_exe(tgid).or_else(|| read_link_in_proc(&thread("exe")))).flatten();
    let cmdline = if alive {
        let own = read_cmdline(tgid);
        if own.is_empty() && origin.pid != tgid { read_cmdline_at(&thread("cmdline")) } else { own }
    } else {
        Vec::new()
    };
    let cgroup_path = alive.then(|| crate::cgroup::cgroup_path_of(tgid)).flatten();
    let unit = cgroup_path.as_deref().and_then(unit_of);
    let ancestry = if alive { ancestry_of(tgid) } else { Vec::new() };

    let me = Ancestor {
        pid: tgid,
        comm: comm.clone(),
        exe: exe.clone(),
    };
    let agent = if is_launcher(&comm, &cmdline) {
        ancestry
            .iter()
            .find(|a| !is_launcher(&a.comm, &read_cmdline(a.pid)))
            .cloned()
            .unwrap_or(me)
    } else {
        me
    };

    ProcessInfo {
        pid: origin.pid,
        tgid,
        uid: origin.uid,
        gid: origin.gid,
        user: user_name(origin.uid),
        group: group_name(origin.gid),
        comm,
        exe,
        cmdline,
        cgroup_id: origin.cgroup_id,
        cgroup_path,
        unit,
        ancestry,
        agent: Some(agent),
        start_ticks: (origin.start_ns != 0).then(|| ns_to_ticks(origin.start_ns)),
    }
}

/// Nanoseconds after boot as `/proc/<pid>/stat` counts them: clock ticks (`USER_HZ`).
pub fn ns_to_ticks(ns: u64) -> u64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|h| *h > 0).unwrap_or(100) as u64;
    ns / (1_000_000_000 / hz)
}

/// Why the process `/proc` shows at `origin.tgid` may not be the one that connected, or
/// `None` when it is: it is gone (exited, a zombie), it started at another time (its pid
/// reused), or it exec'd since the connect (`exec_ns_now`, the exec map's time for it).
/// A client that connects, sends its call and exits (or execs another program) before
/// the daemon reads `/proc` would otherwise be judged as nobody, or as the program it
/// became. Call after [`describe`]: what that read is of the connecting image when this
/// finds nothing changed.
pub fn changed_since_connect(origin: &Origin, exec_ns_now: Option<u64>) -> Option<&'static str> {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", origin.tgid)) else {
        return Some("the process that opened the connection exited before it could be identified");
    };
    if !is_alive_by_stat(origin.tgid, &stat) {
        return Some("the process that opened the connection exited before it could be identified");
    }
    if origin.start_ns != 0 && stat_start_ticks(&stat) != Some(ns_to_ticks(origin.start_ns)) {
        return Some("the process that opened the connection is gone (its pid belongs to another process now)");
    }
    if exec_ns_now.unwrap_or(0) != origin.exec_ns {
        return Some("the process that opened the connection ran another program (exec) before it could be identified");
    }
    None
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks), read past the `comm`.
fn stat_start_ticks(stat: &str) -> Option<u64> {
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Describes a live process by pid alone (no connection): for classifying a process
/// as an agent right after its exec. `None` if it is gone.
pub fn describe_pid(tgid: u32) -> Option<ProcessInfo> {
    let status = std::fs::read_to_string(format!("/proc/{tgid}/status")).ok()?;
    let id_of = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
    };
    let (uid, gid) = (id_of("Uid:")?, id_of("Gid:")?);
    let comm = read_comm(tgid)?;
    let origin = Origin {
        dst: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        pid: tgid,
        tgid,
        uid,
        gid,
        comm,
        cgroup_id: 0,
        start_ns: 0,
        exec_ns: 0,
    };
    Some(describe(&origin, None))
}

/// The parent of a live process, from `/proc/<pid>/stat`.
pub fn parent_of(pid: u32) -> Option<u32> {
    read_stat(pid).map(|(_, ppid, _)| ppid)
}

/// Whether `pid` is a live process: it exists and some thread of it is not a zombie. A
/// leader thread that exited (`syscall(SYS_exit)`) while others run shows `Z` in
/// `/proc/<pid>/stat`, yet the process goes on (and connects): judged by its threads.
pub fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| is_alive_by_stat(pid, &stat))
}

/// [`is_alive`] for a caller that has read `/proc/<pid>/stat` already (`stat`): no
/// second read of it; the threads are read only when the leader is a zombie.
pub fn is_alive_by_stat(pid: u32, stat: &str) -> bool {
    if state_alive(stat) {
        return true;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.filter_map(Result::ok).any(|t| stat_alive(&t.path().join("stat").to_string_lossy()))
}

/// A `stat` file whose state is neither zombie nor dead.
fn stat_alive(path: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|stat| state_alive(&stat))
}

/// A `stat` line whose state is neither zombie nor dead.
fn state_alive(stat: &str) -> bool {
    // The state follows the comm, which may itself contain ") ".
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Pids of the live processes (not threads), from `/proc`.
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn group_name(gid: u32) -> Option<String> {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}

fn read_comm(pid: u32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(s.trim_end_matches('\n').to_string())
}

fn read_exe(pid: u32) -> Option<String> {
    read_link_in_proc(&format!("{pid}/exe"))
}

/// The target of `/proc/<rel>`.
fn read_link_in_proc(rel: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{rel}")).ok().map(|p| p.to_string_lossy().into_owned())
}

fn read_cmdline(pid: u32) -> Vec<String> {
    read_cmdline_at(&format!("{pid}/cmdline"))
}

/// `/proc/<rel>` (a `cmdline` file) split into arguments.
fn read_cmdline_at(rel: &str) -> Vec<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    let Ok(f) = std::fs::File::open(format!("/proc/{rel}")) else {
        return Vec::new();
    };
    if f.take(MAX_CMDLINE_BYTES).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    split_cmdline(&buf)
}

fn split_cmdline(buf: &[u8]) -> Vec<String> {
    let buf = buf.strip_suffix(&[0]).unwrap_or(buf);
    if buf.is_empty() {
        return Vec::new();
    }
    buf.split(|&b| b == 0)
        .take(MAX_ARGS)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// `(comm, ppid, session)` from `/proc/<pid>/stat`.
fn read_stat(pid: u32) -> Option<(String, u32, u32)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(stat: &str) -> Option<(String, u32, u32)> {
    // "pid (comm) state ppid pgrp session ..."; comm may hold spaces and parens.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    let _pgrp = rest.next()?;
    let session = rest.next()?.parse().ok()?;
    Some((comm, ppid, session))
}

/// Parents of `pid`, nearest first, up to and including its session leader,
/// stopping before pid 1 and after [`MAX_ANCESTRY`] steps.
fn ancestry_of(pid: u32) -> Vec<Ancestor> {
    let mut out = Vec::new();
    let Some((_, mut ppid, session)) = read_stat(pid) else {
        return out;
    };
    if pid == session {
        return out; // it leads its own session
    }
    while out.len() < MAX_ANCESTRY && ppid > 1 {
        let Some((comm, next, _)) = read_stat(ppid) else {
            break;
        };
        out.push(Ancestor {
            pid: ppid,
            comm,
            exe: read_exe(ppid),
        });
        if ppid == session {
            break;
        }
        ppid = next;
    }
    out
}

/// The systemd unit a cgroup path belongs to, as the system manager knows it: its first
/// `.service` or `.scope` component from the root. Below a unit the cgroup tree is
/// delegated to whatever runs there, which names it: a user's own manager
/// (`user@1000.service`) creates `run-x.scope` or `ci-runner-7.service` for
/// `systemd-run --user --unit=ci-runner-7`, and a service with `Delegate=` names its own
/// sub-cgroups. Those names are the user's to choose; `[[agent]] unit` rules match what
/// only root can start.
pub fn unit_of(cgroup_path: &str) -> Option<String> {
    cgroup_path
        .split('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_string)
}

fn base(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// Whether a process is a launcher or bridge (`npx`, `npm exec`, `uvx`, `uv run`,
/// `env`, `sh -c`, `mcp-remote`) rather than the agent itself.
pub fn is_launcher(comm: &str, argv: &[String]) -> bool {
    const NAMES: &[&str] = &["npx", "uvx", "env", "mcp-remote"];
    const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ash", "ksh"];
    const INTERPRETERS: &[&str] = &["node", "nodejs", "bun", "deno", "python", "python3"];
    if NAMES.contains(&comm) || comm.starts_with("npm exec") || comm.starts_with("npx ") {
        return true;
    }
    if argv.iter().any(|a| a.contains("mcp-remote")) {
        return true;
    }
    let Some(first) = argv.first() else {
        return false;
    };
    // For `node /usr/bin/npx ...` the launcher is the script, not node.
    let mut prog = base(first);
    let mut rest = &argv[1..];
    if INTERPRETERS
        .iter()
        .any(|i| prog == *i || prog.starts_with(&format!("{i}.")))
        && let Some((script, tail)) = rest.split_first()
        && !script.starts_with('-')
    {
        prog = base(script);
        rest = tail;
    }
    let prog = prog.strip_suffix(".js").unwrap_or(prog);
    let prog = prog.strip_suffix("-cli").unwrap_or(prog);
    let sub = rest.first().map(String::as_str);
    NAMES.contains(&prog)
        || (prog == "npm" && matches!(sub, Some("exec" | "x")))
        || (prog == "uv" && sub == Some("run"))
        || (SHELLS.contains(&prog) && rest.iter().any(|a| a == "-c"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process whose main thread exited (`SYS_exit`) while a worker runs: `/proc/<pid>`
    /// shows a zombie leader with no `exe` and an empty `cmdline`. It is alive (the agent
    /// map keeps it: pruned, its threads connected unwatched), and its connecting
    /// thread's executable and command line still name it.
    #[test]
    fn a_process_whose_leader_thread_exited_is_alive_and_named() {
        use std::io::BufRead;
        let script = "import ctypes, sys, threading, time\n\
                      threading.Thread(target=time.sleep, args=(20,)).start()\n\
                      print('ready', flush=True)\n\
                      ctypes.CDLL(None).syscall(60, 0)\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let pid = child.id();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready");
        // Wait for the leader to become a zombie (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while stat_alive(&format!("/proc/{pid}/stat")) {
            assert!(std::time::Instant::now() < deadline, "the leader never exited");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // What the old checks read: the leader's own state (zombie) and its `exe` (gone).
        assert!(read_exe(pid).is_none(), "precondition: the zombie leader has no exe link");
        assert!(is_alive(pid), "a running worker thread keeps the process alive");
        let worker: u32 = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("tasks")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .find(|&t| t != pid)
            .expect("the worker thread");
        let origin = Origin {
            dst: "127.0.0.1:9".parse().expect("addr"),
            pid: worker,
            tgid: pid,
            uid: 0,
            gid: 0,
            comm: "renamed".into(),
            cgroup_id: 0,
            start_ns: 0,
            exec_ns: 0,
        };
        let info = describe(&origin, None);
        assert!(info.exe.as_deref().is_some_and(|e| e.contains("python")), "{info:?}");
        assert!(info.cmdline.iter().any(|a| a.contains("threading")), "{info:?}");
        let _ = child.kill();
        let _ = child.wait();
        assert!(!is_alive(pid), "reaped");
    }

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn launchers_are_recognised() {
        let yes = [
            ("npx", ""),
            (
                "node",
                "node /usr/lib/node_modules/npm/bin/npx-cli.js -y mcp-server",
            ),
            (
                "node",
                "/usr/bin/node /home/a/.npm/_npx/1/node_modules/.bin/mcp-remote https://x",
            ),
            ("npm exec foo", "npm exec foo"),
            ("node", "node /usr/bin/npm exec -- server"),
            ("uvx", "uvx mcp-server-fetch"),
            ("uv", "/usr/local/bin/uv run server.py"),
            ("env", "/usr/bin/env FOO=1 python3 x.py"),
            ("sh", "/bin/sh -c python3 client.py"),
            ("bash", "bash -c exec node x"),
        ];
        for (comm, args) in yes {
            assert!(is_launcher(comm, &argv(args)), "{comm} / {args}");
        }
        let no = [
            ("claude", "claude --resume"),
            ("python3", "python3 agent.py"),
            ("node", "node /opt/agent/index.js"),
            ("bash", "bash script.sh"),
            ("uv", "uv pip install x"),
            ("environ", "environ"),
            ("python3", ""),
        ];
        for (comm, args) in no {
            assert!(!is_launcher(comm, &argv(args)), "{comm} / {args}");
        }
    }

    #[test]
    fn units_are_the_system_managers() {
        // A unit the user's own manager started is named by the user: the unit is the
        // user manager's.
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/user@1000.service/app.slice/ci-runner-7.service")
                .as_deref(),
            Some("user@1000.service")
        );
        assert_eq!(unit_of("/user.slice/user-1000.slice/session-3.scope").as_deref(), Some("session-3.scope"));
        // A sub-cgroup a delegated service names itself is that service's.
        assert_eq!(unit_of("/system.slice/runner.service/job-9.scope").as_deref(), Some("runner.service"));
        assert_eq!(
            unit_of("/system.slice/mcpwatchd.service").as_deref(),
            Some("mcpwatchd.service")
        );
        assert_eq!(unit_of("/"), None);
        assert_eq!(unit_of("/mcpwatch-test-1-0"), None);
    }

    #[test]
    fn stat_lines_with_awkward_comms_parse() {
        assert_eq!(
            parse_stat("42 (a) b (c)) S 7 42 40 0 -1"),
            Some(("a) b (c)".into(), 7, 40))
        );
        assert_eq!(
            parse_stat("1 (init) S 0 1 1 0"),
            Some(("init".into(), 0, 1))
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S notanumber 1 1"), None);
        assert_eq!(
            split_cmdline(b"a\0b c\0"),
            vec!["a".to_string(), "b c".to_string()]
        );
        assert!(split_cmdline(b"").is_empty());
    }

    fn origin_of(pid: u32, comm: &str) -> Origin {
        Origin {
            dst: "127.0.0.1:1".parse().unwrap(),
            pid,
            tgid: pid,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            comm: comm.into(),
            cgroup_id: 7,
            start_ns: 0,
            exec_ns: 0,
        }
    }

    #[test]
    fn describes_a_live_process_and_attributes_launchers_to_their_parent() {
        // sh -c (a launcher) running sleep; describe the shell: agent = this test binary.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30; true"])
            .spawn()
            .unwrap();
        let pid = child.id();
        // Wait until the shell has exec'd: comm changes first, the argument pages (and so
        // /proc/<pid>/cmdline) appear a moment later in the same exec.
        for _ in 0..500 {
            let cmdline_ready = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty());
            if read_comm(pid).as_deref() == Some("sh") && cmdline_ready {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let info = describe(&origin_of(pid, "thread-name"), None);
        child.kill().unwrap();
        child.wait().unwrap();

        assert_eq!(info.comm, "sh");
        assert_eq!(info.tgid, pid);
        assert_eq!(info.cmdline, vec!["/bin/sh", "-c", "sleep 30; true"]);
        assert!(
            info.exe.as_deref().is_some_and(|e| e.ends_with("sh")),
            "{:?}",
            info.exe
        );
        assert_eq!(
            info.user.as_deref(),
            user_name(nix::unistd::getuid().as_raw()).as_deref()
        );
        assert_eq!(
            info.group.as_deref(),
            group_name(nix::unistd::getgid().as_raw()).as_deref()
        );
        assert!(
            info.user.is_some() && info.group.is_some(),
            "root and its group exist here"
        );
        assert!(info.cgroup_path.is_some());
        let me = std::process::id();
        assert_eq!(
            info.ancestry.first().map(|a| a.pid),
            Some(me),
            "{:?}",
            info.ancestry
        );
        assert_eq!(info.agent.as_ref().map(|a| a.pid), Some(me));
    }

    #[test]
    fn describes_an_exited_process_from_what_ebpf_captured() {
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let info = describe(&origin_of(pid, "true"), Some("true-exec".into()));
        assert_eq!(info.comm, "true-exec");
        assert_eq!(info.exe, None);
        assert!(info.cmdline.is_empty() && info.ancestry.is_empty());
        assert_eq!(
            info.agent.map(|a| (a.pid, a.comm)),
            Some((pid, "true-exec".into()))
        );
        let info = describe(&origin_of(pid, "true"), None);
        assert_eq!(info.comm, "true");
        assert_eq!(info.cgroup_id, 7);
    }
}
