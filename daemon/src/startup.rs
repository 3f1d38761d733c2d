//! The daemon's private state on disk: the state dir, the modes of everything in it,
//! and the per-host secret hash key.
//!
//! Why a module of its own: the audit store holds who called what, the CA key and the
//! hash key; none of it may be readable by the agents being watched, whoever starts the
//! daemon and whatever umask they have. So the daemon sets umask 077 before it creates
//! anything, creates the state dir 0700, and on every start re-applies 0700 to
//! directories and 0600 to files under it (a store first created by an older version or
//! by hand keeps no looser mode). The hash key (32 random bytes, `hash.key`, 0600) is
//! created at the first start and reused after, so hashes stay stable on this host.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mcpwatch_mcp::keyed::HashKey;

/// File name of the hash key inside the state dir.
pub const KEY_FILE: &str = "hash.key";
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: the hash key must be exactly {KEY_LEN} bytes, found {len}; it is not replaced automatically (hashes in the audit log depend on it): restore it, or remove it to start a new key")]
    BadKey { path: PathBuf, len: u64 },
    #[error("{path}: the hash key is not a regular file")]
    NotAFile { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StartupError + '_ {
    move |source| StartupError::Io { path: path.to_path_buf(), source }
}

/// Files created from now on are 0600 and directories 0700, whatever umask the daemon
/// was started with.
pub fn restrict_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// `KEY_LEN` bytes from the kernel's CSPRNG.
fn random_bytes() -> std::io::Result<[u8; KEY_LEN]> {
    let mut b = [0u8; KEY_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// A fresh random key (nothing stored).
pub fn random_key() -> std::io::Result<HashKey> {
    Ok(HashKey::new(&random_bytes()?))
}

/// Create the state dir (0700) if needed and tighten the modes of everything in it.
pub fn prepare_state_dir(dir: &Path) -> Result<(), StartupError> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
    tighten(dir)
}

/// Directories 0700, files 0600, recursively; symlinks and sockets are left alone
/// (never followed).
pub fn tighten(dir: &Path) -> Result<(), StartupError> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        std::fs::set_permissions(&d, Permissions::from_mode(0o700)).map_err(io(&d))?;
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let entry = entry.map_err(io(&d))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(io(&path))?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                std::fs::set_permissions(&path, Permissions::from_mode(0o600)).map_err(io(&path))?;
            } else if !(ft.is_symlink() || ft.is_socket()) {
                tracing::debug!(path = %path.display(), "special file in the state dir left as is");
            }
        }
    }
    Ok(())
}

/// The host's hash key: read `<state_dir>/hash.key`, or create it (0600, 32 random
/// bytes) on the first start. A key of the wrong size is an error, never replaced.
pub fn load_or_create_key(state_dir: &Path) -> Result<HashKey, StartupError> {
    let path = state_dir.join(KEY_FILE);
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
        Ok(mut f) => {
            let bytes = random_bytes().map_err(io(&path))?;
            f.write_all(&bytes).map_err(io(&path))?;
            f.sync_all().map_err(io(&path))?;
            tracing::info!(path = %path.display(), "created the hash key for audit hashes");
            Ok(HashKey::new(&bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
            if !meta.file_type().is_file() {
                return Err(StartupError::NotAFile { path });
            }
            if meta.len() != KEY_LEN as u64 {
                return Err(StartupError::BadKey { path, len: meta.len() });
            }
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "hash key was readable by others; mode set to 0600");
                std::fs::set_permissions(&path, Permissions::from_mode(0o600)).map_err(io(&path))?;
            }
            let mut bytes = [0u8; KEY_LEN];
            std::fs::File::open(&path).and_then(|mut f| f.read_exact(&mut bytes)).map_err(io(&path))?;
            Ok(HashKey::new(&bytes))
        }
        Err(e) => Err(io(&path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn key_is_created_private_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        prepare_state_dir(&dir).unwrap();
        let k1 = load_or_create_key(&dir).unwrap();
        let path = dir.join(KEY_FILE);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 32);
        let k2 = load_or_create_key(&dir).unwrap();
        assert_eq!(k1.hex_mac(b"x"), k2.hex_mac(b"x"), "reused after restart");
        let other = tempfile::tempdir().unwrap();
        let k3 = load_or_create_key(other.path()).unwrap();
        assert_ne!(k1.hex_mac(b"x"), k3.hex_mac(b"x"), "another host, another key");
        // Loosened by hand: tightened again on load.
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        load_or_create_key(&dir).unwrap();
        assert_eq!(mode(&path), 0o600);
        // Truncated: refused, not silently replaced.
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(load_or_create_key(&dir), Err(StartupError::BadKey { len: 5, .. })));
    }

    #[test]
    fn tighten_fixes_an_existing_loose_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir_all(dir.join("db/blobs")).unwrap();
        std::fs::write(dir.join("db/conf"), b"x").unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.join("db/conf"), Permissions::from_mode(0o644)).unwrap();
        prepare_state_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("db/blobs")), 0o700);
        assert_eq!(mode(&dir.join("db/conf")), 0o600);
    }
}
