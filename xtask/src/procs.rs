//! Processes that `bench` and `demo` start: owned by a guard that stops them by PID
//! (SIGTERM, then SIGKILL after a grace period), their peak memory, and Ctrl-C handling
//! that lets those guards run.
//!
//! Why it exists: a benchmark or demo that leaves a daemon attached to a cgroup, or a
//! server listening, after an error or a Ctrl-C is a mess on a shared machine. Every
//! process is stopped by the PID we got from `spawn`, never by name.

use std::net::{SocketAddr, TcpListener};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catch SIGINT and SIGTERM instead of dying at once, so `Drop` guards get to stop the
/// processes we started and remove the cgroup. Loops call [`check_interrupted`].
pub fn catch_interrupts() {
    let handler = on_interrupt as extern "C" fn(libc::c_int);
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// Whether Ctrl-C (or SIGTERM) arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with "interrupted" once Ctrl-C arrived, so `?` unwinds through the guards.
pub fn check_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// A child process we started, stopped by PID when dropped: SIGTERM, up to `grace`
/// for it to exit, then SIGKILL.
pub struct Proc {
    child: Child,
    what: String,
    grace: Duration,
    stopped: bool,
}

impl Proc {
    pub fn new(child: Child, what: impl Into<String>, grace: Duration) -> Proc {
        Proc {
            child,
            what: what.into(),
            grace,
            stopped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once it exited (it is reaped).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops it now (see the type's doc); returns a description of how it ended.
    pub fn stop(&mut self) -> String {
        if self.stopped {
            return "already stopped".into();
        }
        self.stopped = true;
        if let Some(st) = self.exited() {
            return format!("had already exited ({st})");
        }
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return "killed".into();
        };
        // SAFETY: kill(2) on the PID of our own unreaped child (it cannot be recycled
        // before we wait for it).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < self.grace {
            if let Some(st) = self.exited() {
                return format!("exited after SIGTERM ({st})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        format!("killed (SIGKILL) after {:?}", self.grace)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.stopped {
            let how = self.stop();
            println!("    stopped {} (pid {}): {how}", self.what, self.child.id());
        }
    }
}

/// CPU time (user + system, in clock ticks) used so far by `pid` and every live process
/// below it (nginx does its work in a worker child). `None` when `pid` is gone.
pub fn cpu_ticks_tree(pid: u32) -> Option<u64> {
    // (pid, ppid, utime + stime) of every process, from /proc/N/stat.
    let mut all: Vec<(u32, u32, u64)> = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(n) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Some(t) = std::fs::read_to_string(format!("/proc/{n}/stat")).ok().and_then(|s| parse_stat(&s)) {
            all.push((n, t.0, t.1));
        }
    }
    all.iter().find(|(p, _, _)| *p == pid)?;
    let mut tree = vec![pid];
    let mut total = 0;
    while let Some(p) = tree.pop() {
        for (child, parent, ticks) in &all {
            if *child == p {
                total += ticks;
            }
            if *parent == p && *child != p {
                tree.push(*child);
            }
        }
    }
    Some(total)
}

/// (ppid, utime + stime) from a `/proc/N/stat` line; the command name may hold spaces
/// and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = f.get(1)?.parse().ok()?;
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, ut + st))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 { n as u64 } else { 100 }
}

/// Peak resident set size (`VmHWM`) of a live process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_kib(&status, "VmHWM:")
}

fn parse_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// A port free on both 127.0.0.1 and [::1] (mcpwatchd listens on both).
pub fn free_dual_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let v4 = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let port = v4.local_addr().context("local_addr")?.port();
        match TcpListener::bind(("::1", port)) {
            Ok(_) => return Ok(port),
            // No IPv6 loopback at all: the daemon listens on v4 only.
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => return Ok(port),
            Err(_) => continue,
        }
    }
    bail!("no port free on both 127.0.0.1 and [::1]")
}

/// A free port on `ip` (a loopback address) in `range`, starting at a PID-dependent
/// offset so parallel runs do not race for the same one.
pub fn free_port_in(
    ip: std::net::IpAddr,
    range: std::ops::RangeInclusive<u16>,
) -> anyhow::Result<u16> {
    if !ip.is_loopback() {
        bail!("{ip} is not a loopback address");
    }
    let (lo, hi) = (*range.start(), *range.end());
    let span = u32::from(hi - lo) + 1;
    let offset = std::process::id() % span;
    for i in 0..span {
        let port = lo + u16::try_from((offset + i) % span).unwrap_or(0);
        if TcpListener::bind(SocketAddr::new(ip, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on {ip} in {lo}-{hi}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields_of_proc_status() {
        let status = "Name:\tx\nVmHWM:\t   12345 kB\nVmRSS:\t  999 kB\n";
        assert_eq!(parse_kib(status, "VmHWM:"), Some(12345));
        assert_eq!(parse_kib(status, "VmRSS:"), Some(999));
        assert_eq!(parse_kib(status, "VmSwap:"), None);
        assert!(peak_rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }

    #[test]
    fn free_port_in_stays_in_range_and_on_loopback() {
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let p = free_port_in(ip, 18000..=18999).expect("a free port");
        assert!((18000..=18999).contains(&p));
        assert!(free_port_in(std::net::IpAddr::from([10, 0, 0, 1]), 18000..=18999).is_err());
    }
}
