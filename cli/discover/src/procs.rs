//! Which configured stdio servers are running now: the processes whose command line is the
//! configured launch.
//!
//! Why: a configuration says what *can* run; a pid says what *does*, and is the handle for the
//! daemon's stdio watching later. Matching is by argv, read from `<root>/proc/*/cmdline` (with a
//! fixture `--root` there is no `proc`, so nothing matches): a process matches when one of its
//! arguments is the configured command (same program name) and the configured arguments follow it
//! in order. `npx -y pkg` therefore matches the resident `npm exec` launcher (`node /usr/bin/npx
//! -y pkg`), `docker run ... image` the docker CLI, `uvx pkg` the uv launcher.

use std::fs;
use std::path::Path;

/// Most processes looked at.
const MAX_PROCS: usize = 100_000;

/// One process: pid and argv.
#[derive(Debug, Clone)]
pub(crate) struct Proc {
    pub pid: u32,
    pub argv: Vec<String>,
}

/// Every readable process under `<root>/proc`, sorted by pid.
pub(crate) fn list(root: &Path) -> Vec<Proc> {
    let Ok(rd) = fs::read_dir(root.join("proc")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten().take(MAX_PROCS) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let dir = e.path();
        let Ok(bytes) = fs::read(dir.join("cmdline")) else {
            continue;
        };
        if bytes.is_empty() {
            continue; // kernel thread or zombie
        }
        let argv = bytes
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push(Proc { pid, argv });
    }
    out.sort_by_key(|p| p.pid);
    out
}

fn base(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// Pids of the processes running `command args...`.
pub(crate) fn running(procs: &[Proc], command: &str, args: &[String]) -> Vec<u32> {
    let want = base(command);
    if want.is_empty() {
        return Vec::new();
    }
    procs
        .iter()
        .filter(|p| {
            p.argv.iter().enumerate().any(|(i, a)| {
                base(a) == want && {
                    let rest = &p.argv[i + 1..];
                    // A bare `node` matches only a bare `node`, not every node process.
                    if args.is_empty() {
                        rest.is_empty()
                    } else {
                        rest.len() >= args.len() && rest[..args.len()] == *args
                    }
                }
            })
        })
        .map(|p| p.pid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, argv: &[&str]) -> Proc {
        Proc {
            pid,
            argv: argv.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn launchers_and_plain_commands_match_by_argv() {
        let procs = [
            p(10, &["node", "/usr/bin/npx", "-y", "@scope/server", "/tmp"]),
            p(
                11,
                &[
                    "node",
                    "/root/.npm/_npx/abc/node_modules/.bin/server",
                    "/tmp",
                ],
            ),
            p(12, &["/usr/bin/python3", "-m", "srv", "--port", "1"]),
            p(13, &["node"]),
        ];
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            running(&procs, "npx", &a(&["-y", "@scope/server", "/tmp"])),
            [10]
        );
        assert_eq!(running(&procs, "python3", &a(&["-m", "srv"])), [12]);
        assert_eq!(
            running(&procs, "python3", &a(&["-m", "other"])),
            Vec::<u32>::new()
        );
        assert_eq!(running(&procs, "node", &[]), [13]);
    }
}
