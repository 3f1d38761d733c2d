//! Stdio capture cost and capture rate, run by `cargo xtask bench` (xtask/src/bench_stdio.rs).
//!
//! Why an example of this crate: it needs the loader (aya), which only this crate
//! links. Root only. Prints one JSON line:
//! - `pipe_writes_ns_*`: 1M 16-byte writes to a pipe by this (unwatched) process,
//!   without and with the stdio programs attached, and their ratio: the cost every
//!   process outside the watched set pays (one hash lookup per syscall).
//! - `capture_rate`: lines seen / lines sent by a watched child writing JSON-RPC lines.

use std::io::{Read, Write};
use std::time::Instant;

use mcpwatch_intercept::stdio::StdioCapture;

const WRITES: usize = 1_000_000;
const LINES: usize = 20_000;

fn pipe_writes() -> u128 {
    let mut fds = [0i32; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let (r, w) = (fds[0], fds[1]);
    let reader = std::thread::spawn(move || {
        let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(r) };
        let mut buf = vec![0u8; 65536];
        while f.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    });
    let msg = [b'x'; 16];
    let t = Instant::now();
    for _ in 0..WRITES {
        let _ = unsafe { libc::write(w, msg.as_ptr().cast(), msg.len()) };
    }
    let ns = t.elapsed().as_nanos();
    unsafe { libc::close(w) };
    let _ = reader.join();
    ns
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        println!("{{\"skipped\":\"needs root\"}}");
        return;
    }
    let without = pipe_writes();
    let mut cap = match StdioCapture::attach() {
        Ok(c) => c,
        Err(e) => {
            println!("{{\"skipped\":{:?}}}", e.to_string());
            return;
        }
    };
    let with = pipe_writes();

    // Capture rate: this process is the "client"; its child is watched from birth.
    cap.watch_client(std::process::id()).expect("watch self as client");
    let script = format!("i=0; while [ $i -lt {LINES} ]; do echo '{{\"jsonrpc\":\"2.0\",\"id\":'$i',\"method\":\"ping\"}}'; i=$((i+1)); done");
    let mut child = std::process::Command::new("sh").args(["-c", &script]).stdout(std::process::Stdio::piped()).spawn().expect("spawn sh");
    let mut out = child.stdout.take().expect("stdout");
    let mut seen = 0usize;
    let mut sink = Vec::new();
    let drain = |cap: &mut StdioCapture, seen: &mut usize| {
        for c in cap.drain(1 << 20) {
            *seen += c.data.iter().filter(|&&b| b == b'\n').count();
        }
    };
    let mut buf = vec![0u8; 65536];
    loop {
        let n = out.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        sink.extend_from_slice(&buf[..n]);
        drain(&mut cap, &mut seen);
    }
    let _ = child.wait();
    drain(&mut cap, &mut seen);
    let sent = sink.iter().filter(|&&b| b == b'\n').count();
    let _ = std::io::stdout().flush();
    println!(
        "{{\"pipe_writes\":{WRITES},\"pipe_writes_ns_without\":{without},\"pipe_writes_ns_with\":{with},\"ratio\":{:.3},\"lines_sent\":{sent},\"lines_seen\":{seen},\"capture_rate\":{:.4},\"lost\":{}}}",
        with as f64 / without.max(1) as f64,
        seen as f64 / sent.max(1) as f64,
        cap.lost()
    );
}
