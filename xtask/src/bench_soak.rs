//! `cargo xtask bench --soak`: does mcpwatchd stay small over a million audited calls?
//!
//! A host-wide daemon runs for months; a per-record leak that a 3-second bench cell
//! cannot show shows here. The soak drives `--soak-calls` tools/call requests (default
//! 1,000,000) through mcpwatchd in static-upstream mode (the proxy, policy, inspection and
//! audit store; no eBPF, so it needs no cgroup) with 8 keep-alive workers, in chunks, and
//! samples the daemon's RSS while each chunk runs. It reports RSS at the half-way mark
//! and at the end, the growth between them, the peak, and how long `mcpwatch audit --since
//! 1h` takes over the full store (the default view, and every record as NDJSON).
//!
//! A chunk's RSS is the median of samples taken every [`SAMPLE_EVERY`] while it runs, not
//! one reading at its end: the daemon trims its heap every 2 s (`memory::TRIM_EVERY`), so
//! a single reading lands anywhere in a ~2 MiB saw-tooth, and three soaks of one build
//! read +0.7 %, +2.8 % and +5.9 % growth that way. The last reading is printed beside it.
//!
//! Bounded by the call count and by [`super::MAX_SOAK_SECONDS`]; loopback only; the daemon
//! is stopped by PID when this returns.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{MAX_SOAK_CALLS, MAX_SOAK_SECONDS, Mode};
use crate::daemon::{self, Daemon, Upstream};
use crate::util::{section, step};

/// Calls per chunk: one RSS level (and one progress line) each.
const CHUNK: usize = 50_000;
/// How often RSS is read while a chunk runs.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The median of RSS readings of `pid` taken every [`SAMPLE_EVERY`] while `work` runs,
/// with `work`'s result; one reading after it when it was too quick for any.
fn rss_while<T>(pid: u32, work: impl FnOnce() -> T) -> (T, Option<u64>) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (out, mut readings) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut r = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                r.extend(rss_kib(pid));
                std::thread::sleep(SAMPLE_EVERY);
            }
            r
        });
        let out = work();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, sampler.join().unwrap_or_default())
    });
    if readings.is_empty() {
        readings.extend(rss_kib(pid));
    }
    readings.sort_unstable();
    let median = readings.get(readings.len() / 2).copied();
    (out, median)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub(super) fn run(backend: SocketAddr, scratch: &Path, calls: usize) -> anyhow::Result<()> {
    let calls = calls.clamp(CHUNK, MAX_SOAK_CALLS);
    section(format!("soak: {calls} audited calls through mcpwatchd (static upstream, 8 keep-alive workers)").as_str());
    let dir = scratch.join("soak");
    std::fs::create_dir_all(&dir).context("creating the soak dir")?;
    let bin = crate::util::target_dir().join("release").join("mcpwatchd");
    // The same daemon twice: the soak, then a restart on the store it filled.
    let opts = daemon::Opts { bin: &bin, upstream: Upstream::Static(backend), policy: None, dir: &dir, log_filter: "warn", config: None };
    let d = Daemon::start(&opts)?;
    let pid = d.pid();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the soak runtime")?;
    let started = Instant::now();
    let mut done = 0usize;
    let mut errors = 0usize;
    // (median while the chunk ran, reading at its end), KiB.
    let mut half: Option<(u64, u64)> = None;
    let mut end: Option<(u64, u64)> = None;
    while done < calls {
        crate::procs::check_interrupted()?;
        if started.elapsed() > Duration::from_secs(MAX_SOAK_SECONDS) {
            step(format!("time limit ({MAX_SOAK_SECONDS} s) reached after {done} calls"));
            break;
        }
        let n = CHUNK.min(calls - done);
        let (cell, level) = rss_while(pid, || rt.block_on(super::load(d.listen, Mode::KeepAlive, 8, Duration::from_secs(300), n)));
        done += cell.ok;
        errors += cell.errors;
        if let Some(e) = &cell.first_error {
            step(format!("first error in chunk: {e}"));
        }
        if cell.ok == 0 {
            anyhow::bail!("a whole chunk failed; mcpwatchd log tail:\n{}", d.log_tail(15));
        }
        let last = rss_kib(pid).context("mcpwatchd's /proc status is unreadable (exited?)")?;
        let rss = level.unwrap_or(last);
        end = Some((rss, last));
        if half.is_none() && done >= calls / 2 {
            half = Some((rss, last));
        }
        step(format!(
            "{done:>8} calls  {:>7.1} MiB RSS (median while it ran; {:>5.1} at its end)  {:>6.0} calls/s  ({} s)",
            mib(rss),
            mib(last),
            cell.per_sec,
            started.elapsed().as_secs()
        ));
    }
    let peak = crate::procs::peak_rss_kib(pid);
    let records = d
        .status()
        .ok()
        .and_then(|s| s.pointer("/counts/audit_records").and_then(serde_json::Value::as_u64));

    let timed = |args: &[&str]| -> (f64, Result<usize, String>) {
        let t0 = Instant::now();
        let out = d.cli(args);
        let secs = t0.elapsed().as_secs_f64();
        let lines = match out {
            Ok(o) if o.status.success() => Ok(o.stdout.iter().filter(|b| **b == b'\n').count()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().chars().take(300).collect()),
            Err(e) => Err(format!("{e:#}")),
        };
        (secs, lines)
    };
    let view = timed(&["audit", "--since", "1h"]);
    let half_limit = (calls / 2).to_string();
    let newest = timed(&["audit", "--since", "1h", "--limit", &half_limit, "--json"]);
    let peak_after_newest = crate::procs::peak_rss_kib(pid);
    let all = timed(&["audit", "--since", "1h", "--limit", "0", "--json"]);
    // The dumps are read page by page (the newest-N one too); their memory shows in the
    // peak taken after them.
    let peak_after_dump = crate::procs::peak_rss_kib(pid);
    drop(d);
    // A restart on the full store (opening counts every record), then a full verify.
    let restarted = Daemon::start(&opts)?;
    let after_open = rss_kib(restarted.pid());
    let t0 = Instant::now();
    let verify = restarted.cli(&["audit", "verify"]);
    let verify_secs = t0.elapsed().as_secs_f64();
    let verify_ok = verify.as_ref().is_ok_and(|o| o.status.success());
    let peak_after_verify = crate::procs::peak_rss_kib(restarted.pid());
    drop(restarted);

    section("soak results");
    println!("calls answered         {done} ({errors} errors) in {} s", started.elapsed().as_secs());
    println!("audit records          {}", records.map_or("-".into(), |r| r.to_string()));
    match (half, end) {
        (Some((h, h_last)), Some((e, e_last))) => {
            let growth = |from: u64, to: u64| (to as f64 - from as f64) * 100.0 / from as f64;
            println!("RSS at half-way        {:.1} MiB   (median while that chunk ran; {:.1} at its end)", mib(h), mib(h_last));
            println!("RSS at the end         {:.1} MiB   (median while the last chunk ran; {:.1} at its end)", mib(e), mib(e_last));
            println!(
                "growth half -> end     {:+.1} %   (bar: < 5 %: {}; single readings at the chunks' ends: {:+.1} %)",
                growth(h, e),
                if growth(h, e) < 5.0 { "PASS" } else { "MISS" },
                growth(h_last, e_last)
            );
            let worst = e.max(e_last);
            println!("end RSS <= 64 MiB      {}", if mib(worst) <= 64.0 { "PASS" } else { "MISS" });
        }
        _ => println!("RSS: not enough samples"),
    }
    if let Some(p) = peak {
        println!("peak RSS (VmHWM)       {:.1} MiB", mib(p));
    }
    if let Some(p) = peak_after_newest {
        println!("peak RSS incl. newest  {:.1} MiB   (after the `--limit {half_limit}` dump below)", mib(p));
    }
    if let Some(p) = peak_after_dump {
        println!("peak RSS incl. queries {:.1} MiB   (after both dumps below)", mib(p));
    }
    let newest_what = format!("`audit --since 1h --limit {half_limit} --json`");
    for (what, (secs, lines)) in [("`audit --since 1h` (newest 50)", view), (newest_what.as_str(), newest), ("`audit --since 1h --limit 0 --json`", all)] {
        match lines {
            Ok(n) => println!("{what:<38} {secs:.2} s, {n} lines"),
            Err(e) => println!("{what:<38} failed after {secs:.2} s: {e}"),
        }
    }
    if let Some(r) = after_open {
        println!("RSS after a restart    {:.1} MiB   (the store is opened and its records counted)", mib(r));
    }
    println!("`audit verify`                         {verify_secs:.2} s, {}", if verify_ok { "passed" } else { "FAILED" });
    if let Some(p) = peak_after_verify {
        println!("peak RSS after restart {:.1} MiB   (open + full verify)", mib(p));
    }
    Ok(())
}
