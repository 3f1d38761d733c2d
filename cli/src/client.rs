//! The control-socket client: one Unix stream connection, newline-delimited JSON.
//!
//! Why its own module: every way of failing to talk to mcpwatchd (no socket, daemon
//! down, permission denied, a hung daemon, a malformed answer) is turned into one
//! actionable message here, so the commands only see `Response`s.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use mcpwatch_api::{Request, Response};

/// How long a one-shot request may wait for its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on one response line (a large `audit --limit 0` answer fits well below).
const MAX_LINE_BYTES: u64 = mcpwatch_api::wire::MAX_RESPONSE_LINE;

pub struct Conn {
    reader: BufReader<UnixStream>,
    path: PathBuf,
}

impl Conn {
    /// Connects; `streaming` connections wait for the daemon indefinitely.
    pub fn connect(path: &Path, streaming: bool) -> Result<Conn> {
        let stream = UnixStream::connect(path).map_err(|e| connect_error(path, &e))?;
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .context("setting socket write timeout")?;
        let read_timeout = if streaming {
            None
        } else {
            Some(ANSWER_TIMEOUT)
        };
        stream
            .set_read_timeout(read_timeout)
            .context("setting socket read timeout")?;
        Ok(Conn {
            reader: BufReader::new(stream),
            path: path.to_path_buf(),
        })
    }

    pub fn send(&mut self, req: &Request) -> Result<()> {
        let line = mcpwatch_api::wire::encode(req).context("encoding request")?;
        let stream = self.reader.get_mut();
        stream
            .write_all(&line)
            .and_then(|()| stream.flush())
            .map_err(|e| {
                anyhow!(
                    "sending request to mcpwatchd at {}: {}",
                    self.path.display(),
                    reason(&e)
                )
            })
    }

    /// The next response; `None` when the daemon closed the connection cleanly.
    pub fn next(&mut self) -> Result<Option<Response>> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => anyhow!(
                    "mcpwatchd at {} did not answer within {}s",
                    self.path.display(),
                    ANSWER_TIMEOUT.as_secs()
                ),
                _ => anyhow!(
                    "reading from mcpwatchd at {}: {}",
                    self.path.display(),
                    reason(&e)
                ),
            })?;
        if n == 0 {
            return Ok(None);
        }
        if buf.len() as u64 > MAX_LINE_BYTES {
            bail!("mcpwatchd sent a response line longer than {MAX_LINE_BYTES} bytes");
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let resp = mcpwatch_api::wire::decode(line).map_err(|e| {
            let preview: String = String::from_utf8_lossy(&line[..line.len().min(120)]).into();
            anyhow!(
                "mcpwatchd sent a response this mcpwatch does not understand ({e}): {preview:?}"
            )
        })?;
        Ok(Some(resp))
    }

    /// One request, one answer; `Response::Error` becomes an error.
    pub fn call(path: &Path, req: &Request) -> Result<Response> {
        let mut conn = Conn::connect(path, false)?;
        conn.send(req)?;
        match conn.next()? {
            Some(Response::Error { message }) => Err(daemon_error(&message)),
            Some(resp) => Ok(resp),
            None => bail!(
                "mcpwatchd at {} closed the connection without answering",
                path.display()
            ),
        }
    }
}

impl Conn {
    /// `Audit`, handing each part of the answer to `f` as it arrives (a large answer comes
    /// as `AuditPart`s, then `Audit`).
    pub fn audit(path: &Path, filter: mcpwatch_api::AuditFilter, mut f: impl FnMut(Vec<mcpwatch_api::AuditRecord>) -> Result<()>) -> Result<()> {
        let mut conn = Conn::connect(path, false)?;
        conn.send(&Request::Audit { filter })?;
        loop {
            match conn.next()? {
                Some(Response::AuditPart { records }) => f(records)?,
                Some(Response::Audit { records }) => return f(records),
                Some(Response::Error { message }) => return Err(daemon_error(&message)),
                Some(other) => bail!("mcpwatchd answered audit with {other:?}"),
                None => bail!("mcpwatchd at {} closed the connection in the middle of an audit answer", path.display()),
            }
        }
    }
}

pub fn daemon_error(message: &str) -> anyhow::Error {
    anyhow!("mcpwatchd: {}", crate::table::sanitize_lines(message))
}

/// What to tell the operator when the socket cannot be reached.
pub fn connect_error(path: &Path, e: &io::Error) -> anyhow::Error {
    let p = path.display();
    let why = reason(e);
    let is_socket = std::fs::metadata(path).map(|m| m.file_type().is_socket());
    if e.kind() == io::ErrorKind::ConnectionRefused && matches!(is_socket, Ok(false)) {
        return anyhow!(
            "cannot reach mcpwatchd at {p}: not a Unix socket (check --socket or MCPWATCH_SOCKET)"
        );
    }
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => anyhow!(
            "cannot reach mcpwatchd at {p}: {why} (is the daemon running? see `systemctl status mcpwatchd`)"
        ),
        io::ErrorKind::PermissionDenied => anyhow!(
            "cannot reach mcpwatchd at {p}: {why} (the control socket is restricted: run as root or as a member of the `mcpwatch` group)"
        ),
        _ => anyhow!("cannot reach mcpwatchd at {p}: {why}"),
    }
}

/// The OS error text without Rust's " (os error N)" suffix.
fn reason(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_socket_message_names_path_and_next_step() {
        let e = io::Error::from_raw_os_error(2); // ENOENT
        let msg = connect_error(Path::new("/run/mcpwatch/control.sock"), &e).to_string();
        assert_eq!(
            msg,
            "cannot reach mcpwatchd at /run/mcpwatch/control.sock: No such file or directory \
             (is the daemon running? see `systemctl status mcpwatchd`)"
        );
    }

    #[test]
    fn refused_connection_suggests_the_daemon_is_down() {
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        let msg = connect_error(Path::new("/s"), &e).to_string();
        assert!(msg.contains("is the daemon running?"), "{msg}");
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_named_as_such() {
        let dir = std::env::temp_dir();
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        let msg = connect_error(&dir, &e).to_string();
        assert!(
            msg.ends_with("not a Unix socket (check --socket or MCPWATCH_SOCKET)"),
            "{msg}"
        );
    }

    #[test]
    fn permission_denied_names_the_group() {
        let e = io::Error::from_raw_os_error(13); // EACCES
        let msg = connect_error(Path::new("/s"), &e).to_string();
        assert!(
            msg.starts_with("cannot reach mcpwatchd at /s: Permission denied"),
            "{msg}"
        );
        assert!(
            msg.contains("root or as a member of the `mcpwatch` group"),
            "{msg}"
        );
    }

    #[test]
    fn daemon_error_is_escaped() {
        assert_eq!(
            daemon_error("bad\x1b[2J").to_string(),
            "mcpwatchd: bad\\u{1b}[2J"
        );
    }

    #[test]
    fn daemon_error_keeps_line_breaks() {
        assert_eq!(
            daemon_error("policy rejected:\np.toml:3:1: bad\r key").to_string(),
            "mcpwatchd: policy rejected:\np.toml:3:1: bad\\r key"
        );
    }
}
