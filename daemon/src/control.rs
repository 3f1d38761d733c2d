//! The control socket: how `mcpwatch` talks to the daemon.
//!
//! A Unix stream socket (mode 0660, group `mcpwatch`), newline-delimited JSON of
//! [`mcpwatch_api::Request`] / [`mcpwatch_api::Response`]. Every connection is checked
//! with `SO_PEERCRED`: root, the daemon's own user, or a member of the control group.
//! Only this module and `mcpwatch-api` know the wire format.
//!
//! Answers to held calls (`approve`, `deny`) are further checked against who is asking
//! (`approvals::check_answerer`): never the agent itself, never from inside the watched
//! cgroup, unless the policy names the answerer.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use mcpwatch_api::{Request, Response, Status};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::approvals::{check_answerer, Answerer, ApprovalError, Verdict};
use crate::state::Shared;

/// `uid 0 (root)`, for approvals in the audit log.
fn who(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// The watched cgroup as a cgroup v2 path (`/` is the whole host), for the
/// self-approval check; `None` when interception is not attached (static upstream).
/// Attached but not mappable to a cgroup v2 path: `/` (everyone is in scope).
fn watched_scope(shared: &Shared) -> Option<String> {
    let attach = shared.attach.lock().ok()?.clone();
    if !attach.attached {
        return None;
    }
    let rel = attach.cgroup.and_then(|cg| {
        let mount = mcpwatch_intercept::cgroup::cgroup2_mount().ok()?;
        let rel = std::path::Path::new(&cg).strip_prefix(&mount).ok()?.to_str()?.to_string();
        Some(format!("/{}", rel.trim_matches('/')))
    });
    Some(rel.unwrap_or_else(|| "/".to_string()))
}

/// Answer a held call for the peer, if it may answer it.
fn answer(shared: &Shared, id: &str, who: &Answerer, verdict: Verdict) -> Result<mcpwatch_api::HeldCall, ApprovalError> {
    let named = shared.governance.current().policy.approvers().to_vec();
    let scope = watched_scope(shared);
    let res = shared.approvals.decide_checked(id, verdict, |call| check_answerer(who, call, &named, scope.as_deref()));
    if let Err(e @ ApprovalError::Refused(..)) = &res {
        tracing::warn!(%id, by = %who.label(), "answer to a held call refused: {e}");
    }
    res
}

/// Longest request line accepted.
const MAX_LINE: usize = mcpwatch_api::wire::MAX_REQUEST_LINE;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: another mcpwatchd is already listening there")]
    InUse { path: String },
    #[error("control socket {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Bind the control socket, replacing a stale socket file but never a live daemon's.
pub async fn bind(path: &Path, group: &str) -> Result<UnixListener, ControlError> {
    let p = path.display().to_string();
    let io = |source| ControlError::Io { path: p.clone(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        // The daemon runs with umask 077; a directory it creates for the socket must still
        // let the control group through (0750, group `control_group`), as systemd's
        // RuntimeDirectoryMode does.
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(io)?;
        if let Ok(Some(g)) = nix::unistd::Group::from_name(group) {
            let _ = nix::unistd::chown(dir, None, Some(g.gid));
        }
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse { path: p });
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    if let Ok(Some(g)) = nix::unistd::Group::from_name(group) {
        let _ = nix::unistd::chown(path, None, Some(g.gid));
    }
    Ok(listener)
}

/// Is this peer allowed? Root, our own uid, or a member of the control group.
fn authorized(uid: u32, gid: u32, pid: Option<i32>, group: &str) -> bool {
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return true;
    }
    let Ok(Some(g)) = nix::unistd::Group::from_name(group) else { return false };
    let want = g.gid.as_raw();
    if gid == want {
        return true;
    }
    // Supplementary groups of the peer process.
    pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|s| s.lines().find(|l| l.starts_with("Groups:")).map(str::to_string))
        .is_some_and(|l| l.split_whitespace().skip(1).any(|x| x.parse::<u32>() == Ok(want)))
}

pub async fn serve(listener: UnixListener, shared: Arc<Shared>, status: Arc<dyn Fn() -> Status + Send + Sync>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let status = status.clone();
        tokio::spawn(async move {
            if let Err(e) = client(stream, shared, status).await {
                tracing::debug!(error = %e, "control client ended");
            }
        });
    }
}

async fn client(stream: UnixStream, shared: Arc<Shared>, status: Arc<dyn Fn() -> Status + Send + Sync>) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let (r, mut w) = stream.into_split();
    if !authorized(cred.uid(), cred.gid(), cred.pid(), &shared.config.control_group) {
        let resp = Response::Error {
            message: format!("permission denied: uid {} is not root and not in group {}", cred.uid(), shared.config.control_group),
        };
        return send(&mut w, &resp).await;
    }
    let mut lines = BufReader::new(r.take(MAX_LINE as u64 + 1)).lines();
    let Some(line) = lines.next_line().await? else { return Ok(()) };
    if line.len() > MAX_LINE {
        return send(&mut w, &Response::Error { message: "request too long".into() }).await;
    }
    let req: Request = match mcpwatch_api::wire::decode(line.as_bytes()) {
        Ok(r) => r,
        Err(e) => return send(&mut w, &Response::Error { message: format!("bad request: {e}") }).await,
    };
    match req {
        Request::Status => send(&mut w, &Response::Status(status())).await,
        Request::List => {
            let mut servers = shared.inventory.list();
            crate::govern::flows::label_inventory(&shared, &mut servers);
            send(&mut w, &Response::List { servers }).await
        }
        Request::Pending => send(&mut w, &Response::Pending { calls: shared.approvals.list() }).await,
        Request::Approve { id } => {
            let answerer = Answerer::from_peer(cred.uid(), cred.gid(), cred.pid());
            let by = answerer.label();
            let resp = match answer(&shared, &id, &answerer, Verdict::Approved { by: by.clone() }) {
                Ok(call) => {
                    tracing::warn!(%id, %by, tool = ?call.tool, "held call approved");
                    Response::Done { message: format!("approved {id} ({} on {}); it is being forwarded", call.tool.as_deref().unwrap_or(&call.method), call.server) }
                }
                Err(e) => Response::Error { message: e.to_string() },
            };
            send(&mut w, &resp).await
        }
        Request::Deny { id, reason } => {
            let answerer = Answerer::from_peer(cred.uid(), cred.gid(), cred.pid());
            let by = answerer.label();
            let resp = match answer(&shared, &id, &answerer, Verdict::Denied { by: by.clone(), reason }) {
                Ok(call) => {
                    tracing::warn!(%id, %by, tool = ?call.tool, "held call denied");
                    Response::Done { message: format!("denied {id} ({} on {})", call.tool.as_deref().unwrap_or(&call.method), call.server) }
                }
                Err(e) => Response::Error { message: e.to_string() },
            };
            send(&mut w, &resp).await
        }
        Request::PolicyReload => {
            let resp = match shared.reload_policy() {
                Ok(summary) => Response::Done { message: summary },
                Err(e) => Response::Error { message: format!("policy rejected; the previous policy stays in force:\n{e}") },
            };
            send(&mut w, &resp).await
        }
        Request::PinAccept { server, tool } => {
            // Accepting a changed tool definition is an operator's decision, like an
            // approval: never from inside the watched cgroup (an agent accepting its own
            // rug pull), unless the policy names the account.
            let answerer = Answerer::from_peer(cred.uid(), cred.gid(), cred.pid());
            let named = shared.governance.current().policy.approvers().to_vec();
            let gate = check_answerer(&answerer, &mcpwatch_api::HeldCall::default(), &named, watched_scope(&shared).as_deref());
            if let Err(refusal) = gate {
                tracing::warn!(%server, by = %answerer.label(), "pin accept refused: {refusal}");
                let message = format!("refused: {refusal}; the tool definitions stay pinned. Accept them from outside the watched cgroup, or name who may in the policy: [approvals] approvers (docs/policy.md)");
                return send(&mut w, &Response::Error { message }).await;
            }
            let resp = match shared.inventory.accept_pins(&server, tool.as_deref()) {
                Ok((endpoint, tools)) if tools.is_empty() => Response::Done { message: format!("{endpoint}: nothing to accept, all pins are current") },
                Ok((endpoint, tools)) => {
                    tracing::warn!(%endpoint, ?tools, by = %who(cred.uid()), "tool definitions accepted");
                    Response::Done { message: format!("{endpoint}: now trusting the current definition of {}", tools.join(", ")) }
                }
                Err(e) => Response::Error { message: e },
            };
            send(&mut w, &resp).await
        }
        Request::CaRotate | Request::CaWithdraw => {
            // Replacing or withdrawing the CA changes what every client must trust: an
            // operator's decision, judged like an approval (never from inside the watched
            // cgroup, unless the policy names the account).
            let answerer = Answerer::from_peer(cred.uid(), cred.gid(), cred.pid());
            let named = shared.governance.current().policy.approvers().to_vec();
            let gate = check_answerer(&answerer, &mcpwatch_api::HeldCall::default(), &named, watched_scope(&shared).as_deref());
            if let Err(refusal) = gate {
                tracing::warn!(by = %answerer.label(), ?req, "CA change refused: {refusal}");
                let message = format!("refused: {refusal}; the CA is unchanged. Run it from outside the watched cgroup, or name who may in the policy: [approvals] approvers (docs/policy.md)");
                return send(&mut w, &Response::Error { message }).await;
            }
            let shared2 = shared.clone();
            let rotate = req == Request::CaRotate;
            let done = tokio::task::spawn_blocking(move || if rotate { crate::ca::rotate(&shared2) } else { crate::ca::withdraw(&shared2) }).await;
            let resp = match done {
                Ok(Ok(change)) => {
                    tracing::warn!(by = %who(cred.uid()), "{}", change.message);
                    Response::Ca(change)
                }
                Ok(Err(message)) => Response::Error { message },
                Err(e) => Response::Error { message: format!("CA change failed: {e}") },
            };
            send(&mut w, &resp).await
        }
        Request::AuditVerify => {
            // A full pass over the store: off the runtime's threads.
            shared.run_deferred();
            let store = shared.store.clone();
            let resp = match tokio::task::spawn_blocking(move || store.verify()).await {
                Ok(Ok(report)) => Response::Verify(report),
                Ok(Err(e)) => Response::Error { message: format!("audit store: {e}") },
                Err(e) => Response::Error { message: format!("audit verify failed: {e}") },
            };
            send(&mut w, &resp).await
        }
        Request::Audit { filter } => {
            // In parts: one line per AUDIT_PART records, so an answer of any size stays
            // within the wire's line bound; read page by page on a blocking thread, so the
            // daemon holds two pages, not the whole answer (1M records were GBs).
            shared.run_deferred();
            let store = shared.store.clone();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<mcpwatch_api::AuditRecord>>(2);
            let reader =
                tokio::task::spawn_blocking(move || store.query_pages(&filter, AUDIT_PART, |page| tx.blocking_send(page).is_ok()));
            // The last page goes out as `Audit`, every one before it as `AuditPart`.
            let mut held = None;
            while let Some(page) = rx.recv().await {
                if let Some(records) = held.replace(page) {
                    send(&mut w, &Response::AuditPart { records }).await?;
                }
            }
            match reader.await {
                Ok(Ok(())) => send(&mut w, &Response::Audit { records: held.unwrap_or_default() }).await,
                Ok(Err(e)) => send(&mut w, &Response::Error { message: format!("audit store: {e}") }).await,
                Err(e) => send(&mut w, &Response::Error { message: format!("audit query failed: {e}") }).await,
            }
        }
        Request::AuditFollow { filter } => {
            // Subscribe first so nothing falls between the backlog and the stream.
            let mut rx = shared.subscribe();
            // The backlog page by page, as for `Audit` (an unreadable store: no backlog).
            shared.run_deferred();
            let store = shared.store.clone();
            let wanted = filter.clone();
            let (tx, mut pages) = tokio::sync::mpsc::channel::<Vec<mcpwatch_api::AuditRecord>>(2);
            let reader =
                tokio::task::spawn_blocking(move || store.query_pages(&wanted, AUDIT_PART, |page| tx.blocking_send(page).is_ok()));
            while let Some(page) = pages.recv().await {
                for record in page {
                    send(&mut w, &Response::Record { record }).await?;
                }
            }
            if let Ok(Err(e)) = reader.await {
                tracing::warn!(error = %e, "audit follow: backlog unreadable");
            }
            loop {
                match rx.recv().await {
                    Ok(record) => {
                        if filter.matches(&record) {
                            send(&mut w, &Response::Record { record: Arc::unwrap_or_clone(record) }).await?;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "audit follower too slow; records skipped");
                    }
                    Err(_) => return Ok(()),
                }
            }
        }
    }
}

use tokio::io::AsyncReadExt as _;

/// Records per `AuditPart` line. Up to five pages are alive at once (one being read, two
/// queued, one held back, one being encoded), so a page's size is what a full dump adds to
/// the daemon's memory: 2,000 records a page raised its peak by ~31 MiB during a
/// 1M-record `audit --limit 0` (soak); 250 keep that to a few MiB.
pub const AUDIT_PART: usize = 250;

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, resp: &Response) -> io::Result<()> {
    let line = mcpwatch_api::wire::encode(resp).map_err(io::Error::other)?;
    w.write_all(&line).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_dir_it_creates_lets_the_control_group_through() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run").join("mcpwatch");
        let sock = dir.join("control.sock");
        let _l = bind(&sock, "nogroup").await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o750);
        assert_eq!(mode(&sock), 0o660);
        // A second daemon on the same socket is refused; the directory is left alone.
        assert!(matches!(bind(&sock, "nogroup").await, Err(ControlError::InUse { .. })));
    }
}
