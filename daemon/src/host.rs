//! Which host this is: its name and a stable id, stamped on every audit record (and added
//! by the sinks to records that predate the stamp).
//!
//! Why a module of its own: the daemon-wide state holds the identity (records are begun
//! with it) and the sinks send it; here, below both, neither imports the other for it.

use std::path::Path;

use sha2::{Digest as _, Sha256};

/// The host's name and a stable id for it.
#[derive(Debug, Clone)]
pub struct HostIdentity {
    pub hostname: String,
    /// 32 hex digits: sha256 of `mcpwatch host id:` + `/etc/machine-id` (the machine id
    /// itself is never sent), else a random id kept in `<state dir>/host_id`.
    pub host_id: String,
}

impl HostIdentity {
    pub fn load(state_dir: &Path) -> HostIdentity {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let host_id = machine_host_id(Path::new("/etc/machine-id")).unwrap_or_else(|| state_host_id(state_dir));
        HostIdentity { hostname, host_id }
    }
}

fn machine_host_id(path: &Path) -> Option<String> {
    let id = std::fs::read_to_string(path).ok()?;
    let id = id.trim();
    if id.is_empty() {
        return None;
    }
    let digest = Sha256::digest(format!("mcpwatch host id:{id}").as_bytes());
    Some(hex::encode(&digest[..16]))
}

/// A random id persisted (0600) in the state dir; regenerated only if unreadable.
fn state_host_id(state_dir: &Path) -> String {
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = state_dir.join("host_id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return s.to_string();
        }
    }
    let mut raw = [0u8; 16];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut raw));
    let id = hex::encode(raw);
    let written = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path).and_then(|mut f| f.write_all(id.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot persist the host id; it changes on restart");
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_id_is_a_hash_of_the_machine_id_or_a_persisted_random_id() {
        let dir = tempfile::tempdir().unwrap();
        let mid = dir.path().join("machine-id");
        std::fs::write(&mid, "0123456789abcdef0123456789abcdef\n").unwrap();
        let h = machine_host_id(&mid).unwrap();
        assert_eq!(h.len(), 32);
        assert!(!h.contains("0123456789abcdef"), "the machine id itself is not sent");
        let a = state_host_id(dir.path());
        assert_eq!(state_host_id(dir.path()), a, "stable across restarts");
    }
}
