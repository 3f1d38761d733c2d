//! `cargo xtask bench --instructions`: instructions per call, counted by callgrind, for
//! `hyper-floor` (mcpwatchd's HTTP stack alone), `mcpwatchd-static`, `mcpwatchd` (the real
//! path: eBPF redirect, so every record describes the client process; skipped, saying why,
//! where the kernel cannot) and, with `$MCPWATCH_BENCH_BASE`, the same two on that build
//! (`mcpwatchd-base`, `mcpwatchd-base-real`), with what mcpwatchd's own work spends them on.
//!
//! Why it exists: the timed bench's ratios move by a third between runs on this machine,
//! and its CPU per call cannot say where the time goes. An instruction count is
//! repeatable (same binary, same inputs: the same count whatever else runs), so a change
//! of 2 % shows, and grouping the count by crate and module shows what a change should
//! aim at. It is a profile, not a timing: valgrind runs the code ~50 times slower, and it
//! has no SHA-NI, so SHA-256 runs in software there (counted on a line of its own, and
//! left out of the "without SHA-256" total, which is the one that compares with the CPU).
//!
//! Method: each target starts under `valgrind --tool=callgrind`; one keep-alive client
//! makes warm-up calls (caches, lazily built rule sets, pools); the counters are zeroed
//! (`callgrind_control -z`); the client makes `calls` calls; the counts are dumped
//! (`callgrind_control -d`) and summed by `callgrind_annotate`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{ChildGuard, free_loopback_addr, section, step, wait_listening, wait_until};
use crate::util;

/// Calls made before the counters are zeroed.
const WARMUP_CALLS: usize = 300;
/// Groups shown under the totals.
const SHOWN_GROUPS: usize = 24;

/// One measured target: instructions per call, in all and by group.
struct Counted {
    name: &'static str,
    per_call: f64,
    groups: HashMap<String, f64>,
}

impl Counted {
    fn sha(&self) -> f64 {
        self.groups.get(SHA_GROUP).copied().unwrap_or(0.0)
    }
}

/// What runs under callgrind, and how it is told where to listen.
enum Counting {
    /// `xtask bench-floor` (`--listen ADDR`).
    Floor,
    /// An mcpwatchd build in static-upstream mode (`--listen-port PORT`, on 127.0.0.1 and
    /// ::1 both), its state beside its callgrind output.
    Daemon { bin: PathBuf },
    /// An mcpwatchd build on the real path: its eBPF programs on a child cgroup made for
    /// the count, the client inside it dialling the backend itself (redirected).
    Watched { bin: PathBuf },
}

const SHA_GROUP: &str = "sha2 (SHA-256, software under valgrind)";

/// Runs the count for every target against `backend` and prints the comparison.
pub(super) fn run(backend: SocketAddr, scratch: &Path, calls: usize) -> anyhow::Result<()> {
    for tool in ["valgrind", "callgrind_control", "callgrind_annotate"] {
        if util::which(tool).is_none() {
            println!("skipped: `{tool}` is not installed (Debian's valgrind package has all three)");
            return Ok(());
        }
    }
    let mut targets = vec![("hyper-floor", Counting::Floor)];
    let base = std::env::var_os(super::daemon_targets::BASE_ENV).map(PathBuf::from).filter(|p| p.is_file());
    if let Some(base) = &base {
        targets.push(("mcpwatchd-base", Counting::Daemon { bin: base.clone() }));
    }
    let ours = util::target_dir().join("release").join("mcpwatchd");
    targets.push(("mcpwatchd-static", Counting::Daemon { bin: ours.clone() }));
    match crate::cgroup::ebpf_unavailable() {
        None => {
            if let Some(base) = base {
                targets.push(("mcpwatchd-base-real", Counting::Watched { bin: base }));
            }
            targets.push(("mcpwatchd", Counting::Watched { bin: ours }));
        }
        Some(why) => println!("skipped: the real path (mcpwatchd, eBPF): {why}"),
    }
    let mut counted = Vec::new();
    for (name, what) in targets {
        section(&format!("{name}: {calls} calls under callgrind"));
        // One target that cannot be counted (the real path's start under valgrind can
        // outlast its wait) does not throw away the counts already made.
        match count(name, &what, backend, scratch, calls) {
            Ok(c) => counted.push(c),
            Err(e) => println!("not counted: {name}: {e:#}"),
        }
    }
    print(&counted);
    Ok(())
}

/// Starts `what` under callgrind, makes the calls and reads the counts back.
fn count(name: &'static str, what: &Counting, backend: SocketAddr, scratch: &Path, calls: usize) -> anyhow::Result<Counted> {
    let dir = scratch.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join("callgrind.out");
    // Declared before the daemon's guard, so it outlives it: the daemon is stopped first.
    let mut cgroup = None;
    let mut cmd = Command::new("valgrind");
    // Fair scheduling: valgrind runs one thread at a time, and without it a thread
    // spinning on a lock (sled's `Lazy` at the store's open) can starve the holder.
    cmd.arg("--tool=callgrind").arg("--fair-sched=yes").arg(format!("--callgrind-out-file={}", out.display()));
    let addr = match what {
        Counting::Floor => {
            let addr = free_loopback_addr()?;
            cmd.arg(std::env::current_exe().context("finding xtask's own binary")?).arg("bench-floor");
            cmd.arg("--listen").arg(addr.to_string()).arg("--upstream").arg(backend.to_string());
            addr
        }
        Counting::Daemon { bin } => {
            let port = crate::procs::free_dual_port()?;
            cmd.arg(bin).arg("--state-dir").arg(dir.join("state")).arg("--control-socket").arg(dir.join("control.sock"));
            cmd.arg("--listen-port").arg(port.to_string()).arg("--static-upstream").arg(backend.to_string());
            cmd.env("MCPWATCH_LOG", "warn");
            SocketAddr::from(([127, 0, 0, 1], port))
        }
        Counting::Watched { bin } => {
            let cg = crate::cgroup::ChildCgroup::create("mcpwatch-instr")?;
            let port = crate::procs::free_dual_port()?;
            cmd.arg(bin).arg("--state-dir").arg(dir.join("state")).arg("--control-socket").arg(dir.join("control.sock"));
            cmd.arg("--listen-port").arg(port.to_string()).arg("--cgroup").arg(cg.path()).arg("--ports").arg(backend.port().to_string());
            cmd.env("MCPWATCH_LOG", "warn");
            cgroup = Some(cg);
            SocketAddr::from(([127, 0, 0, 1], port))
        }
    };
    let log = std::fs::File::create(dir.join("valgrind.log")).context("creating the valgrind log")?;
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    step(format!("$ {}", util::describe(&cmd)));
    let child = cmd.spawn().context("starting valgrind")?;
    let pid = child.id();
    let _guard = ChildGuard { child, what: name };
    // Under valgrind a start takes tens of seconds (the daemon builds its rule sets).
    wait_listening(addr, Duration::from_secs(180)).with_context(|| format!("{name} did not listen under valgrind; see {}", dir.join("valgrind.log").display()))?;
    // The real path's client dials the backend itself, from inside the watched cgroup,
    // once the control socket answers (the programs are attached by then).
    let (client_addr, inside) = match &cgroup {
        Some(cg) => {
            let socket = dir.join("control.sock");
            wait_until(Duration::from_secs(180), || std::os::unix::net::UnixStream::connect(&socket).is_ok())
                .with_context(|| format!("{name}: the control socket {} did not answer; see {}", socket.display(), dir.join("valgrind.log").display()))?;
            (backend, Some(cg.path()))
        }
        None => (addr, None),
    };
    super::worker::run_counted(client_addr, WARMUP_CALLS, inside)?;
    control(pid, "-z")?;
    super::worker::run_counted(client_addr, calls, inside)?;
    control(pid, "-d")?;
    let dump = dump_of(&out)?;
    let text = stdout_of(Command::new("callgrind_annotate").arg("--auto=no").arg("--threshold=100").arg(&dump))?;
    let (total, groups) = group_counts(&text);
    let per = calls.max(1) as f64;
    Ok(Counted { name, per_call: total as f64 / per, groups: groups.into_iter().map(|(k, v)| (k, v as f64 / per)).collect() })
}

/// Runs `cmd` quietly; its stdout, or an error with its stderr unless it exits 0.
fn stdout_of(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("could not start `{}`", util::describe(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", util::describe(cmd), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn control(pid: u32, what: &str) -> anyhow::Result<()> {
    stdout_of(Command::new("callgrind_control").arg(what).arg(pid.to_string())).map(|_| ())
}

/// The dump `callgrind_control -d` wrote next to `out` (`out.1`), once it is complete.
fn dump_of(out: &Path) -> anyhow::Result<PathBuf> {
    let dump = PathBuf::from(format!("{}.1", out.display()));
    for _ in 0..100 {
        if std::fs::read_to_string(&dump).is_ok_and(|t| t.contains("\ntotals:") || t.contains("\nsummary:")) {
            return Ok(dump);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("callgrind wrote no dump at {}", dump.display())
}

/// The program total and the self cost of each group in `callgrind_annotate` output.
///
/// A group is a crate, or crate and module for mcpwatch's own crates; glibc's allocator
/// and its memory/string functions are groups of their own, and SHA-256 is one group
/// whatever its caller.
fn group_counts(annotated: &str) -> (u64, HashMap<String, u64>) {
    let mut total = 0;
    let mut groups: HashMap<String, u64> = HashMap::new();
    for line in annotated.lines() {
        let Some((count, rest)) = line.trim_start().split_once(' ') else { continue };
        let Ok(n) = count.replace(',', "").parse::<u64>() else { continue };
        if rest.contains("PROGRAM TOTALS") {
            total = n;
            continue;
        }
        // "(12.34%)  file:function [object]"
        let Some(after) = rest.split_once(')').map(|(_, a)| a.trim()) else { continue };
        let (place, object) = match after.rsplit_once(" [") {
            Some((p, o)) => (p, o.trim_end_matches(']')),
            None => (after, ""),
        };
        // A thread's root frames (clone, start_thread, thread_start, ...) are still on
        // its stack at the dump, and callgrind lists them with the whole program's cost.
        if total > 0 && n >= total / 10 * 9 {
            continue;
        }
        let function = place.split_once(':').map_or(place, |(_, f)| f);
        *groups.entry(group_of(function, object)).or_default() += n;
    }
    (total, groups)
}

fn group_of(function: &str, object: &str) -> String {
    if function.contains("sha2::") || function.contains("compress256") {
        return SHA_GROUP.into();
    }
    if object.contains("libc.so") {
        let f = function.to_ascii_lowercase();
        return if ["malloc", "free", "realloc", "calloc", "consolidate", "unlink_chunk", "tcache"].iter().any(|m| f.contains(m)) {
            "libc malloc/free".into()
        } else if f.contains("mem") || f.contains("str") {
            "libc memcpy/memcmp/str*".into()
        } else {
            "libc (other)".into()
        };
    }
    if !object.is_empty() && !object.contains("mcpwatchd") && !object.contains("xtask") {
        return format!("({})", object.rsplit('/').next().unwrap_or(object));
    }
    // `<a::b as c::d>::f` and `&mut a::b` name the type's crate first.
    let f = function.trim_start_matches('<').trim_start_matches("&mut ").trim_start_matches('&');
    let mut parts = f.split("::");
    let krate = parts.next().unwrap_or_default();
    let module = parts.next().unwrap_or_default();
    if krate.starts_with("mcpwatch") || matches!(krate, "core" | "alloc" | "std") {
        let module = module.split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap_or_default();
        format!("{krate}::{module}")
    } else {
        krate.split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap_or_default().to_string()
    }
}

fn print(counted: &[Counted]) {
    let Some(floor) = counted.iter().find(|c| c.name == "hyper-floor") else { return };
    section("instructions per call (callgrind; keep-alive, one client)");
    println!("{:<18} {:>12} {:>16} {:>12}", "target", "per call", "without SHA-256", "x floor");
    for c in counted {
        let lean = c.per_call - c.sha();
        println!("{:<18} {:>12.0} {:>16.0} {:>11.2}x", c.name, c.per_call, lean, lean / (floor.per_call - floor.sha()).max(1.0));
    }
    let lean = |name: &str| counted.iter().find(|c| c.name == name).map(|c| c.per_call - c.sha());
    for (new, old) in [("mcpwatchd-static", "mcpwatchd-base"), ("mcpwatchd", "mcpwatchd-base-real"), ("mcpwatchd", "mcpwatchd-static")] {
        if let (Some(a), Some(b)) = (lean(new), lean(old)) {
            println!("{new} vs {old}, without SHA-256: {:+.0} per call ({:.3}x)", a - b, a / b.max(1.0));
        }
    }
    let Some(ours) = counted.iter().find(|c| c.name == "mcpwatchd-static") else { return };
    println!("\n{} by group (self instructions per call; floor's beside it):", ours.name);
    let mut rows: Vec<(&String, &f64)> = ours.groups.iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(a.1));
    for (g, n) in rows.into_iter().take(SHOWN_GROUPS) {
        let f = floor.groups.get(g).copied().unwrap_or(0.0);
        println!("  {n:>10.0} {f:>10.0}  {g}");
    }
    println!("(valgrind has no SHA-NI: SHA-256 runs in software there and costs far less on this CPU)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotate_lines_are_summed_by_group() {
        let text = "\
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
1,000,000 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                 file:function
--------------------------------------------------------------------------------
1,000,000 (100.0%)  ./misc/../sysdeps/unix/sysv/linux/x86_64/clone.S:clone [/usr/lib/x86_64-linux-gnu/libc.so.6]
1,000,000 (100.0%)  /rustc/x/library/alloc/src/boxed.rs:<std::sys::thread::unix::Thread>::new::thread_start
200,000 (20.00%)  ./malloc/./malloc/malloc.c:malloc [/usr/lib/x86_64-linux-gnu/libc.so.6]
100,000 (10.00%)  ./malloc/./malloc/malloc.c:_int_free [/usr/lib/x86_64-linux-gnu/libc.so.6]
 50,000 ( 5.00%)  ./string/../sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S:__memcpy_avx_unaligned_erms [/usr/lib/x86_64-linux-gnu/libc.so.6]
 90,000 ( 9.00%)  /x/sha2-0.10.9/src/sha256/soft.rs:sha2::sha256::compress256 [/t/mcpwatchd]
 40,000 ( 4.00%)  /w/daemon/src/govern/request.rs:mcpwatchd::govern::request::request [/t/mcpwatchd]
 30,000 ( 3.00%)  /w/daemon/src/proxy/scope.rs:mcpwatchd::proxy::scope::Scope::new [/t/mcpwatchd]
 20,000 ( 2.00%)  /r/serde_json-1.0.154/src/de.rs:<&mut serde_json::de::Deserializer<R> as serde_core::de::Deserializer>::deserialize_any [/t/mcpwatchd]
 10,000 ( 1.00%)  /r/hyper/src/proto/h1/role.rs:<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::parse [/t/mcpwatchd]
  5,000 ( 0.50%)  ???:0x0000000000001234 [/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2]
";
        let (total, g) = group_counts(text);
        assert_eq!(total, 1_000_000);
        assert_eq!(g["libc malloc/free"], 300_000);
        assert_eq!(g["libc memcpy/memcmp/str*"], 50_000);
        assert_eq!(g[SHA_GROUP], 90_000);
        assert_eq!(g["mcpwatchd::govern"], 40_000);
        assert_eq!(g["mcpwatchd::proxy"], 30_000);
        assert_eq!(g["serde_json"], 20_000);
        assert_eq!(g["hyper"], 10_000);
        assert_eq!(g["(ld-linux-x86-64.so.2)"], 5_000);
        assert_eq!(g.values().sum::<u64>(), 545_000);
    }
}
