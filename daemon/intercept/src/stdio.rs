//! Stdio capture: loads `ebpf/stdio.bpf.c`, attaches it to the raw tracepoints
//! sys_enter/sys_exit, and hands user space what watched processes read and
//! wrote (read/write/writev on any fd: SDKs move their wire off fds 0/1).
//!
//! Why a separate loader from [`crate::Interceptor`]: stdio MCP servers never
//! touch the network, so the cgroup redirect never sees them; and these
//! programs are global tracepoints whose cost must stay one hash lookup per
//! syscall for every process outside the watched set. The watched set is
//! bounded ([`MAX_WATCHED`]); the caller adds a server's pid when it classifies
//! it and removes it at exit. Links are never pinned: capture stops with the
//! daemon. Data the kernel could not queue (ring full) is counted by
//! [`StdioCapture::lost`], never silently dropped.

use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::RawTracePoint;
use aya::{Ebpf, EbpfLoader};

use crate::error::InterceptError;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stdio.bpf.o"));

/// Processes watched at once (`stdio_watch` max_entries in stdio.bpf.c).
pub const MAX_WATCHED: usize = 4096;
/// Bytes of one syscall copied at most (`MCPW_STDIO_CHUNK`).
pub const MAX_CHUNK: usize = 16384;
const HEADER: usize = 24;

/// Which way the bytes went, seen from the watched process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StdioDir {
    Read,
    Write,
}

/// One captured syscall's bytes.
#[derive(Debug, Clone)]
pub struct StdioChunk {
    pub pid: u32,
    pub fd: u32,
    pub dir: StdioDir,
    pub data: Vec<u8>,
    /// The syscall moved more bytes than were copied.
    pub truncated: bool,
}

/// The loaded and attached stdio programs.
pub struct StdioCapture {
    watch: HashMap<MapData, u32, u32>,
    lost: PerCpuArray<MapData, u64>,
    events: RingBuf<MapData>,
    _ebpf: Ebpf,
}

impl std::fmt::Debug for StdioCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioCapture").finish_non_exhaustive()
    }
}

const PROGRAMS: [(&str, &str); 4] = [
    ("stdio_enter", "sys_enter"),
    ("stdio_exit", "sys_exit"),
    ("stdio_fork", "sched_process_fork"),
    ("stdio_exit_process", "sched_process_exit"),
];
/// `stdio_watch` values (stdio.bpf.c).
const CAPTURE: u32 = 1;
const CLIENT: u32 = 2;

impl StdioCapture {
    /// Load and attach. Nothing is captured until [`StdioCapture::watch`].
    pub fn attach() -> Result<Self, InterceptError> {
        let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(InterceptError::load)?;
        for (name, tp) in PROGRAMS {
            let prog: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or(InterceptError::MissingProgram(name))?
                .try_into()
                .map_err(|e| InterceptError::program_load(name, e))?;
            prog.load().map_err(|e| InterceptError::program_load(name, e))?;
            prog.attach(tp).map_err(|e| InterceptError::ProgramLoad { program: name, source: e })?;
        }
        let watch = ebpf.take_map("stdio_watch").ok_or(InterceptError::MissingMap("stdio_watch"))?;
        let lost = ebpf.take_map("stdio_lost").ok_or(InterceptError::MissingMap("stdio_lost"))?;
        let events = ebpf.take_map("stdio_events").ok_or(InterceptError::MissingMap("stdio_events"))?;
        Ok(StdioCapture {
            watch: HashMap::try_from(watch).map_err(|source| InterceptError::Map { map: "stdio_watch", source })?,
            lost: PerCpuArray::try_from(lost).map_err(|source| InterceptError::Map { map: "stdio_lost", source })?,
            events: RingBuf::try_from(events).map_err(|source| InterceptError::Map { map: "stdio_events", source })?,
            _ebpf: ebpf,
        })
    }

    /// Start capturing `pid`'s reads and writes, and those of the children it forks
    /// from now on. Fails when [`MAX_WATCHED`] are watched.
    pub fn watch(&mut self, pid: u32) -> Result<(), InterceptError> {
        self.watch.insert(pid, CAPTURE, 0).map_err(|source| InterceptError::Map { map: "stdio_watch", source })
    }

    /// `pid` is an MCP client: not captured itself, but every child it forks from
    /// now on (and their descendants) is. The kernel drops it at exit.
    pub fn watch_client(&mut self, pid: u32) -> Result<(), InterceptError> {
        if self.watch.get(&pid, 0).is_ok() {
            return Ok(());
        }
        self.watch.insert(pid, CLIENT, 0).map_err(|source| InterceptError::Map { map: "stdio_watch", source })
    }

    /// Whether `pid` is in the watched set (as a client or captured).
    pub fn is_watched(&self, pid: u32) -> bool {
        self.watch.get(&pid, 0).is_ok()
    }

    /// Stop capturing `pid` (exit, or no longer a server). Unknown pids are fine.
    pub fn unwatch(&mut self, pid: u32) {
        let _ = self.watch.remove(&pid);
    }

    /// Chunks the kernel could not queue because the ring was full, all CPUs.
    pub fn lost(&self) -> u64 {
        self.lost.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// The captured chunks queued so far (non-blocking), at most `max`.
    pub fn drain(&mut self, max: usize) -> Vec<StdioChunk> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = self.events.next() else { break };
            if let Some(c) = decode(&item) {
                out.push(c);
            }
        }
        out
    }
}

/// Decode one ring record (`struct mcpw_stdio_hdr` + bytes).
fn decode(b: &[u8]) -> Option<StdioChunk> {
    let u32_at = |o: usize| b.get(o..o + 4).and_then(|s| s.try_into().ok()).map(u32::from_ne_bytes);
    let pid = u32_at(0)?;
    let fd = u32_at(4)?;
    let dir = if u32_at(8)? == 0 { StdioDir::Read } else { StdioDir::Write };
    let len = u32_at(12)? as usize;
    let total = b.get(16..24).and_then(|s| s.try_into().ok()).map(u64::from_ne_bytes)?;
    let data = b.get(HEADER..HEADER + len.min(MAX_CHUNK))?.to_vec();
    Some(StdioChunk { pid, fd, dir, truncated: (data.len() as u64) < total, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_reads_the_header_and_flags_truncation() {
        let mut b = Vec::new();
        for v in [42u32, 1, 1, 3] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&5u64.to_ne_bytes());
        b.extend_from_slice(b"abc");
        let c = decode(&b).unwrap();
        assert_eq!((c.pid, c.fd, c.dir, c.data.as_slice(), c.truncated), (42, 1, StdioDir::Write, &b"abc"[..], true));
        assert!(decode(&b[..10]).is_none());
    }

    /// Root only (like the crate's other kernel tests): a watched child's pipe
    /// write is captured, an unwatched process's is not.
    #[test]
    fn captures_a_watched_child_and_nothing_else() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let mut cap = StdioCapture::attach().unwrap();
        let line = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}";
        let spawn = |marker: &str| {
            std::process::Command::new("sh")
                .args(["-c", &format!("read _; echo '{line}' {marker}")])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut watched = spawn("W");
        let mut other = spawn("O");
        let watched_pid = watched.id();
        cap.watch(watched_pid).unwrap();
        for c in [&mut watched, &mut other] {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"go\n").unwrap();
        }
        let (w_out, o_out) = (watched.wait_with_output().unwrap(), other.wait_with_output().unwrap());
        assert!(String::from_utf8_lossy(&w_out.stdout).contains("W"));
        assert!(String::from_utf8_lossy(&o_out.stdout).contains("O"));
        let chunks = cap.drain(1000);
        let text: String = chunks.iter().map(|c| String::from_utf8_lossy(&c.data).into_owned()).collect();
        assert!(text.contains(&format!("{line} W")), "watched write not captured: {chunks:?}");
        // A read already blocked when the pid was watched is missed (its entry was
        // not saved); the shell reads byte by byte, so the later bytes are seen.
        assert!(chunks.iter().any(|c| c.dir == StdioDir::Read && c.fd == 0 && c.data == b"\n"), "watched read not captured: {chunks:?}");
        assert!(!text.contains(" O"), "unwatched process captured: {chunks:?}");
        assert_eq!(cap.lost(), 0);
        assert!(!cap.is_watched(watched_pid), "exit must drop the pid");
    }

    /// Run `program args` as a watched client (its stdin released with one line
    /// once it is watched); returns its pid, stdout and the captured chunks.
    fn run_client(program: &str, args: &[&str]) -> Option<(u32, String, Vec<StdioChunk>)> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return None;
        }
        let mut cap = StdioCapture::attach().unwrap();
        let mut client = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = client.id();
        cap.watch_client(pid).unwrap();
        {
            use std::io::Write;
            client.stdin.take().unwrap().write_all(b"go\n").unwrap();
        }
        let out = client.wait_with_output().unwrap();
        Some((pid, String::from_utf8_lossy(&out.stdout).into_owned(), cap.drain(1000)))
    }

    /// Root only: Python's subprocess (vfork + exec) children are followed too.
    #[test]
    fn children_of_a_python_client_are_captured() {
        let script = "import sys, subprocess; sys.stdin.readline(); p = subprocess.Popen(['sh', '-c', 'read x; echo child-$x'], stdin=subprocess.PIPE, stdout=subprocess.PIPE); print(p.communicate(b'py\\n')[0])";
        let Some((pid, stdout, chunks)) = run_client("python3", &["-c", script]) else { return };
        assert!(stdout.contains("child-py"), "{stdout}");
        assert!(chunks.iter().any(|c| c.pid != pid && c.data == b"child-py\n"), "child not captured: {chunks:?}");
    }

    /// Root only: children of a client are captured from their first write; the
    /// client itself is not.
    #[test]
    fn children_of_a_client_are_captured_from_birth() {
        let Some((pid, stdout, chunks)) = run_client("sh", &["-c", "read _; echo client-own; sh -c 'echo child-line'"]) else { return };
        assert!(stdout.contains("child-line"), "{stdout}");
        assert!(chunks.iter().any(|c| c.pid != pid && c.data == b"child-line\n"), "child not captured: {chunks:?}");
        assert!(!chunks.iter().any(|c| c.pid == pid), "the client itself captured: {chunks:?}");
    }
}
