//! systemd service notification (`Type=notify`) and the liveness watchdog.
//!
//! Why a module of its own: systemd must learn when the daemon is really serving
//! (`READY=1` only once interception is attached and the listeners and control socket
//! are up), when it reloads (`RELOADING=1` + `MONOTONIC_USEC`, then `READY=1`) and when it
//! stops (`STOPPING=1`); and `WatchdogSec=` must restart a daemon that is alive but
//! stuck. The protocol is one datagram per message to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace), so no crate is
//! needed. Outside systemd (`$NOTIFY_SOCKET` unset) every call is a no-op.
//!
//! The watchdog is fed only while the two parts that must never stop are alive: the
//! accept loop and the audit flusher each bump a [`Heartbeats`] counter (at least every
//! [`HEARTBEAT_EVERY`], idle or not); `WATCHDOG=1` is sent only when both moved recently.
//! A wedged flusher (a hung disk) or a dead accept loop therefore stops the pings and
//! systemd restarts the service.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the accept loop and the audit flusher bump their heartbeat when idle.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// Where notifications go: the `$NOTIFY_SOCKET` datagram socket, or nowhere.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<String>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (unset or empty: notifications are dropped).
    pub fn from_env() -> Notifier {
        Notifier { target: std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty()) }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Send one notification (newline-separated `KEY=value` lines). Failures are logged
    /// at debug level: a missing supervisor must not stop the daemon.
    pub fn send(&self, msg: &str) {
        let Some(target) = &self.target else { return };
        if let Err(e) = send_to(target, msg.as_bytes()) {
            tracing::debug!(socket = %target, error = %e, "sd_notify failed");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `RELOADING=1` with the monotonic timestamp systemd requires alongside it.
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the policy", monotonic_usec()));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=shutting down");
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

fn send_to(target: &str, msg: &[u8]) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(msg, &addr)?;
    } else {
        sock.send_to(msg, target)?;
    }
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds (what `MONOTONIC_USEC=` is compared against).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000).saturating_add(ts.tv_nsec as u64 / 1_000)
}

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`, honoured only when
/// `$WATCHDOG_PID` is unset or names this process).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Liveness counters the watchdog reads: milliseconds since `origin` of the last beat of
/// the accept loop and of the audit flusher.
#[derive(Debug)]
pub struct Heartbeats {
    origin: Instant,
    accept: AtomicU64,
    flusher: AtomicU64,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Heartbeats { origin: Instant::now(), accept: AtomicU64::new(0), flusher: AtomicU64::new(0) }
    }
}

impl Heartbeats {
    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The accept loop is turning.
    pub fn accept(&self) {
        self.accept.store(self.now(), Ordering::Relaxed);
    }

    /// The audit flusher is turning.
    pub fn flusher(&self) {
        self.flusher.store(self.now(), Ordering::Relaxed);
    }

    /// Both beat within `window`.
    pub fn alive_within(&self, window: Duration) -> bool {
        let now = self.now();
        let w = window.as_millis() as u64;
        let fresh = |a: &AtomicU64| now.saturating_sub(a.load(Ordering::Relaxed)) <= w;
        fresh(&self.accept) && fresh(&self.flusher)
    }
}

/// Ping `WATCHDOG=1` every `interval / 3` while both heartbeats are fresh. A stale one
/// is logged once per episode and the pings stop, so systemd restarts the service.
/// `alive(window)`: both heartbeats beat within `window` ([`Heartbeats::alive_within`]).
pub async fn watchdog(notifier: Notifier, alive: impl Fn(Duration) -> bool, interval: Duration) {
    let period = (interval / 3).max(Duration::from_millis(100));
    // Fresh means: beat within half the interval, but never tighter than a few beats.
    let window = (interval / 2).max(HEARTBEAT_EVERY * 4);
    // The first check waits one period: the accept loop starts after READY=1.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut stale = false;
    loop {
        tick.tick().await;
        if alive(window) {
            if stale {
                tracing::info!("accept loop and audit flusher alive again; watchdog pings resume");
                stale = false;
            }
            notifier.send("WATCHDOG=1");
        } else if !stale {
            stale = true;
            tracing::error!(
                window_ms = window.as_millis() as u64,
                "accept loop or audit flusher stalled: watchdog pings stop, systemd will restart mcpwatchd"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_a_path_socket_and_abstract_one() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        Notifier { target: Some(path.display().to_string()) }.ready("serving\nnow");
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving now");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("mcpwatch-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier { target: Some(format!("@{name}")) }.reloading();
        let n = rx.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");
        let usec: u64 = text.lines().nth(1).unwrap().trim_start_matches("MONOTONIC_USEC=").parse().unwrap();
        assert!(usec > 0);
    }

    #[test]
    fn heartbeats_go_stale() {
        let b = Heartbeats::default();
        b.accept();
        b.flusher();
        assert!(b.alive_within(Duration::from_millis(200)));
        std::thread::sleep(Duration::from_millis(60));
        b.accept();
        assert!(!b.alive_within(Duration::from_millis(30)), "the flusher did not beat");
        b.flusher();
        assert!(b.alive_within(Duration::from_millis(30)));
    }
}
