//! `cargo xtask bench --stdio`: the stdio capture section. Runs the example
//! `mcpwatch-intercept/examples/stdio_bench.rs` (it needs aya, which only that crate
//! links): cost of the sys_enter/sys_exit programs for a process OUTSIDE the watched
//! set (1M small pipe writes, without and with the programs attached, ratio), and the
//! capture rate of a watched child writing JSON-RPC lines (seen / sent). Root only;
//! bounded (1M writes, 20k lines); no network.

use std::process::Command;

use crate::util::{self, section, step};

pub fn run() -> anyhow::Result<()> {
    section("stdio capture: cost outside the watched set, capture rate");
    let out = Command::new("cargo")
        .args(["run", "--release", "-q", "-p", "mcpwatch-intercept", "--example", "stdio_bench"])
        .current_dir(util::repo_root())
        .output()?;
    if !out.status.success() {
        anyhow::bail!("stdio_bench failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("stdio_bench output not JSON ({e}): {line}"))?;
    if let Some(why) = v.get("skipped") {
        step(format!("skipped: {why}"));
        return Ok(());
    }
    let ms = |k: &str| v[k].as_f64().unwrap_or(0.0) / 1e6;
    step(format!("{} pipe writes, unwatched: {:.0} ms without, {:.0} ms with programs attached (ratio {})", v["pipe_writes"], ms("pipe_writes_ns_without"), ms("pipe_writes_ns_with"), v["ratio"]));
    step(format!("watched child: {} of {} lines captured (rate {}), {} lost to a full ring", v["lines_seen"], v["lines_sent"], v["capture_rate"], v["lost"]));
    Ok(())
}
