//! Replacing the local CA without downtime: a new CA signs at once, the old one stays trusted
//! (in the bundle) until it is withdrawn.
//!
//! Why: clients learn the CA from a file (the system store, `NODE_EXTRA_CA_CERTS`); swapping
//! the CA under them breaks every agent until each one is given the new file. So a rotation
//! keeps the previous certificate (never its key) in `retired/` and publishes a bundle of all
//! trusted mcpwatch CAs (`bundle.pem`: the current one first); the operator distributes it;
//! after the overlap (`[tls] rotation_overlap_days`) or `mcpwatch ca withdraw`, the retired
//! certificates are deleted and the bundle holds the current CA alone.
//!
//! Layout of the CA directory (`<state>/ca/`, 0700; every file 0600):
//! - `ca.pem`, `ca.key`: the CA that signs leaves now ([`crate::LocalCa`]);
//! - `retired/<unix secs>-<reason>-<fingerprint prefix>.pem`: one certificate per previous
//!   CA still trusted, named by when and why it was retired (the CLI's offline rotation writes
//!   the same names);
//! - `bundle.pem`: `ca.pem` followed by every retired certificate: what `ca install` publishes.
//!
//! Crash safety: every file is written under a temporary name, fsynced and renamed. A rotation
//! retires the old certificate first, then renames `next.key` over `ca.key` and `next.pem` over
//! `ca.pem`; [`CaStore::prepare`] finishes a rotation interrupted between those two renames,
//! and drops a retired copy of the current CA (interrupted before them).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::NameConstraints;

use crate::ca::{
    CA_CERT_FILE, CA_KEY_FILE, CaCertInfo, LocalCa, ensure_dir, exists, generate,
    parse_single_cert_pem, read_small, rename, sync_dir, write_temp,
};
use crate::{LeafIssuer, TlsError, unix_now};

/// Sub-directory of the CA directory holding retired (still trusted) certificates.
pub const RETIRED_DIR: &str = "retired";
/// The trust bundle: the current CA and every retired one.
pub const BUNDLE_FILE: &str = "bundle.pem";
/// At most this many retired CAs wait for withdrawal; one more rotation is refused.
pub const MAX_RETIRED: usize = 8;
const NEXT_CERT: &str = "next.pem";
const NEXT_KEY: &str = "next.key";

/// Why a CA was retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationReason {
    /// `mcpwatch ca rotate` against the running daemon.
    Rotated,
    /// `mcpwatch ca rotate` while the daemon was stopped.
    Offline,
    /// The `[tls]` scope changed, so the name constraints did.
    Scope,
}

impl RotationReason {
    fn as_str(self) -> &'static str {
        match self {
            RotationReason::Rotated => "rotated",
            RotationReason::Offline => "offline",
            RotationReason::Scope => "scope",
        }
    }

    fn parse(s: &str) -> RotationReason {
        match s {
            "offline" => RotationReason::Offline,
            "scope" => RotationReason::Scope,
            _ => RotationReason::Rotated,
        }
    }

    /// In words, for status lines.
    pub fn describe(self) -> &'static str {
        match self {
            RotationReason::Rotated => "rotated",
            RotationReason::Offline => "rotated while mcpwatchd was stopped",
            RotationReason::Scope => "re-issued: the [tls] scope (name constraints) changed",
        }
    }
}

/// A previous CA that is still trusted (in the bundle) until withdrawn. Its key is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredCa {
    pub info: CaCertInfo,
    pub retired_at_unix: i64,
    pub reason: RotationReason,
}

/// What [`CaStore::prepare`] did at start, for the log.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Set when the CA was re-issued because its name constraints differ from the scope's.
    pub reissued: Option<String>,
    /// Retired CAs withdrawn because their overlap ended (or they expired).
    pub withdrawn: Vec<RetiredCa>,
}

/// The CA directory and its rotation state. Rotations and withdrawals are serialised.
#[derive(Debug)]
pub struct CaStore {
    dir: PathBuf,
    hostname: String,
    /// How long a retired CA stays trusted; `None`: until `mcpwatch ca withdraw`.
    overlap: Option<Duration>,
    lock: Mutex<()>,
}

impl CaStore {
    pub fn new(dir: &Path, hostname: &str, overlap: Option<Duration>) -> CaStore {
        CaStore {
            dir: dir.to_path_buf(),
            hostname: hostname.to_string(),
            overlap,
            lock: Mutex::new(()),
        }
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long a retired CA stays trusted (`None`: until withdrawn by hand).
    pub fn overlap(&self) -> Option<Duration> {
        self.overlap
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// At start, before the CA is loaded: finishes an interrupted rotation, creates the CA on
    /// first start (with `desired` constraints), re-issues it when its constraints differ from
    /// `desired` (a rotation with overlap), withdraws retired CAs whose overlap ended, and
    /// rewrites the bundle.
    pub fn prepare(&self, desired: Option<&NameConstraints>) -> Result<Prepared, TlsError> {
        let _g = self.guard();
        ensure_dir(&self.dir)?;
        self.recover()?;
        let ca = LocalCa::load_or_create_constrained(&self.dir, &self.hostname, desired)?;
        let mut prepared = Prepared::default();
        if ca.name_constraints() != desired {
            let old = crate::constraints::describe(ca.name_constraints());
            let new = self.rotate_files(&ca, RotationReason::Scope, desired)?;
            prepared.reissued = Some(format!(
                "the local CA was re-issued because the [tls] scope changed: name constraints were \"{old}\", now \"{}\"; the previous CA ({}) stays trusted in the bundle until withdrawn",
                crate::constraints::describe(new.name_constraints()),
                ca.fingerprint_sha256()
            ));
        }
        prepared.withdrawn = self.withdraw_locked(true)?;
        self.write_bundle()?;
        Ok(prepared)
    }

    /// Retires the issuer's CA and makes a new one (new key, same name constraints) sign every
    /// new leaf. Returns the new CA.
    pub fn rotate(&self, issuer: &LeafIssuer) -> Result<Arc<LocalCa>, TlsError> {
        let _g = self.guard();
        let current = issuer.ca();
        let constraints = current.name_constraints().cloned();
        let new =
            Arc::new(self.rotate_files(&current, RotationReason::Rotated, constraints.as_ref())?);
        self.write_bundle()?;
        issuer.replace_ca(new.clone());
        Ok(new)
    }

    /// Withdraws retired CAs: all of them, or (`only_due`) those whose overlap ended or that
    /// expired. Their files are deleted and the bundle rewritten; returns what was withdrawn.
    pub fn withdraw(&self, only_due: bool) -> Result<Vec<RetiredCa>, TlsError> {
        let _g = self.guard();
        let out = self.withdraw_locked(only_due)?;
        if !out.is_empty() {
            self.write_bundle()?;
        }
        Ok(out)
    }

    /// When a retired CA is withdrawn automatically (`None`: only by hand).
    pub fn withdraw_after(&self, retired: &RetiredCa) -> Option<i64> {
        self.overlap
            .map(|o| retired.retired_at_unix.saturating_add(o.as_secs() as i64))
    }

    /// Retired CAs, oldest first (a file that does not parse is skipped with a warning; a
    /// retired copy of the current CA is not listed).
    pub fn retired(&self) -> Result<Vec<RetiredCa>, TlsError> {
        let current = CaCertInfo::read(&self.dir).ok().map(|i| i.der);
        Ok(self
            .retired_files()?
            .into_iter()
            .filter(|(_, r)| Some(&r.info.der) != current.as_ref())
            .map(|(_, r)| r)
            .collect())
    }

    /// The DER of every mcpwatch CA still trusted (current first, then retired): none of them
    /// may ever be accepted as an upstream anchor (`UpstreamOptions::exclude_anchors_der`), even
    /// after `ca install` put the bundle into the system store.
    pub fn trusted_ders(&self) -> Result<Vec<Vec<u8>>, TlsError> {
        let mut out = vec![CaCertInfo::read(&self.dir)?.der];
        out.extend(self.retired()?.into_iter().map(|r| r.info.der));
        Ok(out)
    }

    /// The bundle: the current certificate, then every retired one.
    pub fn bundle_pem(&self) -> Result<String, TlsError> {
        let mut out = CaCertInfo::read(&self.dir)?.pem;
        for r in self.retired()? {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&r.info.pem);
        }
        Ok(out)
    }

    fn write_bundle(&self) -> Result<(), TlsError> {
        let pem = self.bundle_pem()?;
        let tmp = write_temp(&self.dir, BUNDLE_FILE, pem.as_bytes(), 0o600)?;
        rename(&tmp, &self.dir.join(BUNDLE_FILE))?;
        sync_dir(&self.dir);
        Ok(())
    }

    fn retired_dir(&self) -> PathBuf {
        self.dir.join(RETIRED_DIR)
    }

    fn retired_files(&self) -> Result<Vec<(PathBuf, RetiredCa)>, TlsError> {
        let dir = self.retired_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(TlsError::Io { path: dir, source }),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".pem") else {
                continue;
            };
            let mut parts = stem.splitn(3, '-');
            let Some(at) = parts.next().and_then(|t| t.parse::<i64>().ok()) else {
                continue;
            };
            let reason = RotationReason::parse(parts.next().unwrap_or_default());
            let parsed = read_small(&path).and_then(|pem| {
                let der = parse_single_cert_pem(&pem).map_err(|reason| TlsError::CaFiles {
                    dir: dir.clone(),
                    reason,
                })?;
                CaCertInfo::from_parts(path.clone(), pem, der).map_err(|reason| TlsError::CaFiles {
                    dir: dir.clone(),
                    reason,
                })
            });
            match parsed {
                Ok(info) => out.push((
                    path,
                    RetiredCa {
                        info,
                        retired_at_unix: at,
                        reason,
                    },
                )),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "retired CA file ignored")
                }
            }
        }
        out.sort_by_key(|(_, r)| r.retired_at_unix);
        Ok(out)
    }

    fn withdraw_locked(&self, only_due: bool) -> Result<Vec<RetiredCa>, TlsError> {
        let now = unix_now();
        let current = CaCertInfo::read(&self.dir).ok().map(|i| i.der);
        let mut out = Vec::new();
        for (path, r) in self.retired_files()? {
            let duplicate = Some(&r.info.der) == current.as_ref();
            let due = !only_due
                || r.info.not_after_unix <= now
                || self.withdraw_after(&r).is_some_and(|t| t <= now);
            if !(due || duplicate) {
                continue;
            }
            fs::remove_file(&path).map_err(|source| TlsError::Io {
                path: path.clone(),
                source,
            })?;
            if !duplicate {
                out.push(r);
            }
        }
        sync_dir(&self.retired_dir());
        Ok(out)
    }

    /// Retires `current` and installs a new CA with `constraints`; returns it loaded.
    fn rotate_files(
        &self,
        current: &LocalCa,
        reason: RotationReason,
        constraints: Option<&NameConstraints>,
    ) -> Result<LocalCa, TlsError> {
        if self.retired()?.len() >= MAX_RETIRED {
            return Err(TlsError::CaFiles {
                dir: self.dir.clone(),
                reason: format!(
                    "{MAX_RETIRED} previous CAs are still waiting for withdrawal: run `mcpwatch ca withdraw` before rotating again"
                ),
            });
        }
        let (cert_pem, key_pem) = generate(&self.hostname, constraints)?;
        // 1. The old certificate (never its key) joins the retired ones.
        let retired = self.retired_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .create(&retired)
            .map_err(|source| TlsError::Io {
                path: retired.clone(),
                source,
            })?;
        restrict(&retired, 0o700)?;
        let fp: String = current
            .fingerprint_sha256()
            .chars()
            .filter(|c| *c != ':')
            .take(16)
            .collect();
        let name = format!("{}-{}-{fp}.pem", unix_now(), reason.as_str());
        let tmp = write_temp(&retired, &name, current.cert_pem().as_bytes(), 0o600)?;
        rename(&tmp, &retired.join(&name))?;
        sync_dir(&retired);
        // 2. The new pair under `next.*`, then over the real names (key first).
        let key_tmp = write_temp(&self.dir, NEXT_KEY, key_pem.as_bytes(), 0o600)?;
        rename(&key_tmp, &self.dir.join(NEXT_KEY))?;
        let cert_tmp = write_temp(&self.dir, NEXT_CERT, cert_pem.as_bytes(), 0o600)?;
        rename(&cert_tmp, &self.dir.join(NEXT_CERT))?;
        sync_dir(&self.dir);
        rename(&self.dir.join(NEXT_KEY), &self.dir.join(CA_KEY_FILE))?;
        rename(&self.dir.join(NEXT_CERT), &self.dir.join(CA_CERT_FILE))?;
        sync_dir(&self.dir);
        LocalCa::load(&self.dir)
    }

    /// Finishes or undoes a rotation a crash interrupted (see the module docs).
    fn recover(&self) -> Result<(), TlsError> {
        let next_cert = self.dir.join(NEXT_CERT);
        let next_key = self.dir.join(NEXT_KEY);
        if exists(&next_cert)? && !exists(&next_key)? {
            // The key was renamed into place: the certificate must follow it.
            if let Ok(next) = read_small(&next_cert).map(|p| parse_single_cert_pem(&p))
                && next.is_ok()
            {
                rename(&next_cert, &self.dir.join(CA_CERT_FILE))?;
                sync_dir(&self.dir);
                tracing::warn!(dir = %self.dir.display(), "finished a CA rotation interrupted by a crash");
                return Ok(());
            }
        }
        for p in [next_cert, next_key] {
            if exists(&p)? {
                fs::remove_file(&p).map_err(|source| TlsError::Io {
                    path: p.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

fn restrict(path: &Path, mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LeafOptions, TlsScope, TlsScopeConfig, constraints::scope_constraints};
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn ders(pem: &str) -> Vec<Vec<u8>> {
        let mut r = std::io::BufReader::new(pem.as_bytes());
        rustls_pemfile::certs(&mut r)
            .map(|c| c.unwrap().to_vec())
            .collect()
    }

    #[test]
    fn rotate_keeps_old_trusted_until_withdrawn_and_switches_leaves() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let store = CaStore::new(&dir, "rot", None);
        store.prepare(None).unwrap();
        let old = Arc::new(LocalCa::load(&dir).unwrap());
        let issuer = LeafIssuer::new(old.clone(), LeafOptions::default()).unwrap();
        let before = issuer.server_config_for("a.example", &[]).unwrap();
        let new = store.rotate(&issuer).unwrap();
        assert_ne!(new.cert_der(), old.cert_der());
        assert_ne!(new.public_key_der(), old.public_key_der());
        assert_eq!(issuer.ca().cert_der(), new.cert_der());
        let after = issuer.server_config_for("a.example", &[]).unwrap();
        assert!(!Arc::ptr_eq(&before, &after), "the cache was emptied");
        // A client trusting only the new CA accepts the new leaf; one trusting only the old
        // CA rejects it.
        let chain =
            crate::leaf::tests::handshake(after.clone(), new.cert_der(), "a.example").unwrap();
        assert_eq!(chain[1], new.cert_der());
        assert!(crate::leaf::tests::handshake(after, old.cert_der(), "a.example").is_err());

        let retired = store.retired().unwrap();
        assert_eq!(retired.len(), 1);
        assert_eq!(retired[0].info.der, old.cert_der().to_vec());
        assert_eq!(retired[0].reason, RotationReason::Rotated);
        let bundle = fs::read_to_string(dir.join(BUNDLE_FILE)).unwrap();
        assert_eq!(
            ders(&bundle),
            vec![new.cert_der().to_vec(), old.cert_der().to_vec()]
        );
        assert_eq!(store.trusted_ders().unwrap(), ders(&bundle));
        assert!(!bundle.contains("PRIVATE KEY"));
        for p in [
            dir.join(BUNDLE_FILE),
            dir.join(CA_KEY_FILE),
            dir.join(CA_CERT_FILE),
            retired[0].info.path.clone(),
        ] {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        assert_eq!(mode(&dir.join(RETIRED_DIR)), 0o700);

        // A restart mid-overlap: the new CA signs, the old is still listed.
        let store = CaStore::new(&dir, "rot", None);
        let p = store.prepare(None).unwrap();
        assert!(p.reissued.is_none() && p.withdrawn.is_empty(), "{p:?}");
        assert_eq!(LocalCa::load(&dir).unwrap().cert_der(), new.cert_der());
        assert_eq!(store.retired().unwrap().len(), 1);

        let gone = store.withdraw(false).unwrap();
        assert_eq!(gone.len(), 1);
        assert!(!gone[0].info.path.exists());
        assert_eq!(
            ders(&fs::read_to_string(dir.join(BUNDLE_FILE)).unwrap()),
            vec![new.cert_der().to_vec()]
        );
        assert!(store.retired().unwrap().is_empty());
    }

    #[test]
    fn overlap_withdraws_automatically_and_bound_refuses() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let store = CaStore::new(&dir, "h", Some(Duration::from_secs(3600)));
        store.prepare(None).unwrap();
        let issuer = LeafIssuer::new(
            Arc::new(LocalCa::load(&dir).unwrap()),
            LeafOptions::default(),
        )
        .unwrap();
        store.rotate(&issuer).unwrap();
        assert!(
            store.withdraw(true).unwrap().is_empty(),
            "overlap not over yet"
        );
        let r = store.retired().unwrap();
        assert_eq!(
            store.withdraw_after(&r[0]),
            Some(r[0].retired_at_unix + 3600)
        );
        // Age the retirement past the overlap: the next check withdraws it.
        let old = &r[0].info.path;
        let aged = old.with_file_name(old.file_name().unwrap().to_string_lossy().replacen(
            &r[0].retired_at_unix.to_string(),
            &(r[0].retired_at_unix - 7200).to_string(),
            1,
        ));
        fs::rename(old, &aged).unwrap();
        assert_eq!(store.withdraw(true).unwrap().len(), 1);

        for _ in 0..MAX_RETIRED {
            store.rotate(&issuer).unwrap();
        }
        let err = store.rotate(&issuer).unwrap_err();
        assert!(err.to_string().contains("mcpwatch ca withdraw"), "{err}");
    }

    #[test]
    fn scope_change_reissues_with_overlap_and_crash_is_recovered() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let store = CaStore::new(&dir, "h", None);
        store.prepare(None).unwrap();
        let unconstrained = LocalCa::load(&dir).unwrap();
        let scope = TlsScope::from_config(&TlsScopeConfig {
            always: vec!["localhost".into()],
            ..Default::default()
        })
        .unwrap();
        let nc = scope_constraints(&scope).unwrap();
        let p = store.prepare(Some(&nc)).unwrap();
        assert!(
            p.reissued
                .as_deref()
                .unwrap_or_default()
                .contains("DNS localhost"),
            "{p:?}"
        );
        let ca = LocalCa::load(&dir).unwrap();
        assert_eq!(ca.name_constraints(), Some(&nc));
        let r = store.retired().unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].reason, RotationReason::Scope);
        assert_eq!(r[0].info.der, unconstrained.cert_der().to_vec());
        // Same scope again: nothing to do.
        assert!(store.prepare(Some(&nc)).unwrap().reissued.is_none());

        // A crash between the key rename and the certificate rename is finished at start.
        let (cert_pem, key_pem) = generate("h", Some(&nc)).unwrap();
        fs::write(dir.join(CA_KEY_FILE), key_pem).unwrap();
        fs::write(dir.join(NEXT_CERT), &cert_pem).unwrap();
        assert!(LocalCa::load(&dir).is_err(), "key and certificate disagree");
        store.prepare(Some(&nc)).unwrap();
        assert_eq!(LocalCa::load(&dir).unwrap().cert_pem(), cert_pem);
        assert!(!dir.join(NEXT_CERT).exists());
    }
}
