//! The bench's "agent, non-MCP" case: what agent scope costs an agent's ordinary
//! traffic. With agent scope every TCP connection of an agent goes through mcpwatchd
//! (relayed opaquely when it is not HTTP), not only MCP ports; this measures a large
//! download and a database-like session of small request/response round trips, from the
//! same client program run under an agent name (redirected to mcpwatchd) and under
//! another name (direct), in the same watched cgroup, in one run, as ratios.
//!
//! Why a case of its own: the HTTP table measures MCP calls; this is the price paid by
//! everything else an agent does. Bounded: a fixed byte count and round-trip count per
//! run, a 10 s ceiling per run in the client, two runs per path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::cgroup::{self, ChildCgroup};
use crate::daemon::{self, Daemon, Upstream};
use crate::procs;
use crate::util::{self, section, step};

/// Bytes per download run (1 GiB).
const DOWNLOAD_BYTES: u64 = 1 << 30;
/// Round trips per request/response run (64-byte request, 64-byte reply).
const ROUND_TRIPS: u64 = 20_000;
/// Runs per path and workload (interleaved direct / mcpwatchd); the best run counts.
const RUNS: usize = 2;
/// Command names: the first is listed in `scope.agent_comms`, the second is not.
const AGENT_NAME: &str = "mcpw-bench-agt";
const PLAIN_NAME: &str = "mcpw-bench-dir";

/// The client: `download N` (send 'D' + length, read N bytes) or `rr N` (send 'R', then
/// N times: 64 bytes out, 64 bytes back). Prints one JSON line.
const CLIENT: &str = r#"
import json, socket, struct, sys, time
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.create_connection((host, port), timeout=20)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
local = s.getsockname()[1]
if mode == "download":
    t = time.perf_counter()
    s.sendall(b"D" + struct.pack(">Q", n))
    buf = bytearray(1 << 20)
    mv = memoryview(buf)
    got = 0
    while got < n:
        k = s.recv_into(mv)
        if k == 0:
            break
        got += k
    print(json.dumps({"local": local, "units": got, "secs": time.perf_counter() - t}))
else:
    s.sendall(b"R")
    req = b"q" * 64
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        s.sendall(req)
        got = 0
        while got < 64:
            c = s.recv(64 - got)
            if not c:
                raise SystemExit("server closed early")
            got += len(c)
        lat.append(time.perf_counter() - t)
        if t - t0 > 10:
            break
    total = time.perf_counter() - t0
    lat.sort()
    print(json.dumps({"local": local, "units": len(lat), "secs": total,
                      "p50_us": lat[len(lat) // 2] * 1e6, "p99_us": lat[int(len(lat) * 0.99)] * 1e6}))
"#;

/// The server: one thread per connection; 'D' + u64 → that many bytes, 'R' → echo 64-byte
/// frames until EOF. Loopback only; the listener thread ends with the process.
fn start_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the raw server")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(s) = conn else { return };
            std::thread::spawn(move || {
                let _ = serve(s);
            });
        }
    });
    Ok(addr)
}

fn serve(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut cmd = [0u8; 1];
    s.read_exact(&mut cmd)?;
    match cmd[0] {
        b'D' => {
            let mut n = [0u8; 8];
            s.read_exact(&mut n)?;
            let mut left = u64::from_be_bytes(n).min(DOWNLOAD_BYTES);
            let chunk = vec![0x5au8; 1 << 20];
            while left > 0 {
                let k = left.min(chunk.len() as u64) as usize;
                s.write_all(&chunk[..k])?;
                left -= k as u64;
            }
        }
        b'R' => {
            let mut frame = [0u8; 64];
            loop {
                match s.read_exact(&mut frame) {
                    Ok(()) => s.write_all(&frame)?,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
        }
        _ => {}
    }
    Ok(())
}

struct Run {
    units: f64,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
    local: u16,
}

fn client(cg: &Path, program: &Path, mode: &str, server: SocketAddr, n: u64) -> anyhow::Result<Run> {
    let mut cmd = Command::new(program);
    cmd.args(["-c", CLIENT, mode, &server.ip().to_string(), &server.port().to_string(), &n.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cgroup::spawn_inside(&mut cmd, cg)?;
    let out = cmd.output().with_context(|| format!("running {}", util::describe(&cmd)))?;
    if !out.status.success() {
        bail!("client {mode} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).with_context(|| format!("client output {line:?}"))?;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Ok(Run { units: f("units"), secs: f("secs").max(1e-9), p50_us: f("p50_us"), p99_us: f("p99_us"), local: f("local") as u16 })
}

/// Runs the case with the release mcpwatchd at `bin`; prints a table. Skips (with the
/// reason) where eBPF or the binary is unavailable.
pub(super) fn run(bin: &Path, scratch: &Path) -> anyhow::Result<()> {
    section("agent scope: an agent's non-MCP traffic, through mcpwatchd vs direct");
    if !bin.exists() {
        step(format!("skipped: {} is not built", bin.display()));
        return Ok(());
    }
    if let Some(why) = cgroup::ebpf_unavailable() {
        step(format!("skipped: eBPF interception unavailable: {why}"));
        return Ok(());
    }
    // The real interpreter (not a pyenv shim, which would exec by name).
    let python = util::output_of("python3", ["-c", "import os, sys; print(os.path.realpath(sys.executable))"])
        .context("python3 is needed for the agent case's client")?;
    let python = std::path::PathBuf::from(python.trim());
    let dir = scratch.join("agent-case");
    std::fs::create_dir_all(&dir).context("creating the agent case's scratch dir")?;
    let agent = dir.join(AGENT_NAME);
    let plain = dir.join(PLAIN_NAME);
    for link in [&agent, &plain] {
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&python, link).with_context(|| format!("symlink {}", link.display()))?;
    }
    let server = start_server()?;
    let cg = ChildCgroup::create("mcpwatch-bench-agent")?;
    let config = format!("[scope]\nagent_comms = [\"{AGENT_NAME}\"]\n");
    // Port scope "1": the server's port is not in it, so only agent scope redirects.
    let mut daemon = Daemon::start(&daemon::Opts {
        bin,
        upstream: Upstream::Watch { cgroup: cg.path(), ports: "1".into() },
        policy: None,
        dir: &dir,
        log_filter: "info",
        config: Some(&config),
    })?;
    let conns = |d: &Daemon| -> u64 { d.status().ok().and_then(|s| s["counts"]["connections"].as_u64()).unwrap_or(0) };

    struct Row {
        name: &'static str,
        unit: &'static str,
        direct: Run,
        proxied: Run,
    }
    let mut rows = Vec::new();
    for (name, unit, mode, n) in [
        ("download 1 GiB", "MiB/s", "download", DOWNLOAD_BYTES),
        ("request/response 64 B", "round trips/s", "rr", ROUND_TRIPS),
    ] {
        let mut best: [Option<Run>; 2] = [None, None];
        for _ in 0..RUNS {
            for (i, program) in [&plain, &agent].into_iter().enumerate() {
                procs::check_interrupted()?;
                let before = conns(&daemon);
                let r = client(cg.path(), program, mode, server, n)?;
                let through = conns(&daemon) > before;
                if through != (i == 1) {
                    bail!(
                        "{name}: the {} client {} through mcpwatchd",
                        if i == 1 { "agent" } else { "non-agent" },
                        if through { "went" } else { "did not go" }
                    );
                }
                if r.units < n as f64 {
                    bail!("{name}: only {} of {n} completed (local port {})", r.units, r.local);
                }
                let better = best[i].as_ref().is_none_or(|b| r.units / r.secs > b.units / b.secs);
                if better {
                    best[i] = Some(r);
                }
            }
        }
        let [Some(direct), Some(proxied)] = best else { bail!("{name}: no run") };
        rows.push(Row { name, unit, direct, proxied });
    }
    let problems = daemon.log_problems(100);
    let _ = daemon.stop();
    drop(cg);

    println!("  {:<24} {:>16} {:>16} {:>8}   unit", "workload (best of 2)", "direct", "via mcpwatchd", "ratio");
    for r in &rows {
        let rate = |x: &Run| {
            if r.unit == "MiB/s" { x.units / x.secs / (1 << 20) as f64 } else { x.units / x.secs }
        };
        let (d, p) = (rate(&r.direct), rate(&r.proxied));
        println!("  {:<24} {:>16.0} {:>16.0} {:>7.2}x   {}", r.name, d, p, p / d, r.unit);
        if r.unit != "MiB/s" {
            println!(
                "  {:<24} {:>16} {:>16}",
                "  p50 / p99 latency",
                format!("{:.0} / {:.0} us", r.direct.p50_us, r.direct.p99_us),
                format!("{:.0} / {:.0} us", r.proxied.p50_us, r.proxied.p99_us)
            );
        }
    }
    println!(
        "  same python client, same watched cgroup, port scope \"1\": as `{AGENT_NAME}` (in scope.agent_comms) it is \
         redirected to mcpwatchd and relayed opaquely; as `{PLAIN_NAME}` it connects directly"
    );
    if let Some(first) = problems.first() {
        println!("note: {} WARN/ERROR lines in mcpwatchd's log, the first: {first}", problems.len());
    }
    Ok(())
}
