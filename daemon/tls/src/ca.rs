//! The local certificate authority whose leaves clients are asked to trust.
//!
//! It exists once per host, in the daemon's state directory: `ca.pem` (the certificate, 0644, what
//! `mcpwatch ca export/install` hands out) and `ca.key` (PKCS#8 private key, 0600). The key file
//! is created with mode 0600 by `open(2)` itself, so it is never world-readable even for an
//! instant, and written to a temporary name then linked/renamed into place so a crash never leaves
//! a half-written key under the real name. Reloading keeps the same certificate, so clients that
//! trust it keep working across restarts; [`crate::CaStore`] replaces it (rotation with the old
//! certificate kept trusted until withdrawn). The daemon's start-up tightens every file of its
//! state dir to 0600, `ca.pem` included; agents get the certificate from `mcpwatch ca install`.
//!
//! Profile: ECDSA P-256, valid 2 years, CN "mcpwatch local CA (<hostname>)", basicConstraints
//! CA with pathLen 0 (it can sign leaves, never intermediates), keyUsage keyCertSign + cRLSign,
//! and (when the scope allows it) critical name constraints ([`crate::constraints`]).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    NameConstraints,
};
use rustls::pki_types::CertificateDer;

use crate::{TlsError, fingerprint_sha256, unix_now};

/// File name of the CA certificate inside the state directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the state directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// CA lifetime: two years (plus a few days' slack). A local interception CA is a
/// standing credential: a short life bounds what a copied key is worth, and two years
/// leaves operators a yearly-ish rotation rhythm without surprise expiry.
pub const CA_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600 + 3 * 24 * 3600);
/// `mcpwatch status` warns this long before the CA expires.
pub const CA_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);
/// CA `notBefore` is backdated a little so a client with a slightly slow clock accepts it.
const CA_BACKDATE: Duration = Duration::from_secs(3600);
/// X.520 upper bound for a common name.
const MAX_CN_LEN: usize = 64;
/// A CA file larger than this is not ours.
const MAX_FILE_LEN: u64 = 64 * 1024;

/// What anyone may know about the CA: read from `ca.pem` alone, no key access needed (the CLI's
/// offline `ca show` / `ca export` can use [`CaCertInfo::read`] as an unprivileged user).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CaCertInfo {
    /// Absolute or caller-relative path of `ca.pem`.
    pub path: PathBuf,
    /// The certificate in PEM form, exactly as stored.
    pub pem: String,
    /// The certificate in DER form.
    #[serde(skip)]
    pub der: Vec<u8>,
    /// SHA-256 of the DER, colon hex (`AB:CD:...`).
    pub fingerprint_sha256: String,
    /// Subject DN as text (`CN=mcpwatch local CA (host), O=mcpwatch`).
    pub subject: String,
    /// Expiry, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

impl CaCertInfo {
    /// Reads `dir/ca.pem` (only the certificate).
    pub fn read(dir: &Path) -> Result<CaCertInfo, TlsError> {
        let path = dir.join(CA_CERT_FILE);
        let pem = read_small(&path)?;
        let der = parse_single_cert_pem(&pem).map_err(|reason| TlsError::CaFiles {
            dir: dir.to_path_buf(),
            reason,
        })?;
        CaCertInfo::from_parts(path, pem, der).map_err(|reason| TlsError::CaFiles {
            dir: dir.to_path_buf(),
            reason,
        })
    }

    /// An operator warning when the CA has expired or expires within
    /// [`CA_EXPIRY_WARNING`] of `now_unix`; `None` otherwise.
    pub fn expiry_warning(&self, now_unix: i64) -> Option<String> {
        let left = self.not_after_unix - now_unix;
        if left <= 0 {
            return Some(format!(
                "the local CA {} EXPIRED {} day(s) ago: intercepted TLS clients now reject mcpwatchd; rotate it (`mcpwatch ca rotate`, no restart needed)",
                self.path.display(),
                (-left) / 86_400
            ));
        }
        (left <= CA_EXPIRY_WARNING.as_secs() as i64).then(|| {
            format!(
                "the local CA {} expires in {} day(s): rotate it before then (`mcpwatch ca rotate`, no restart needed; `mcpwatch ca withdraw` once clients have the bundle)",
                self.path.display(),
                left / 86_400
            )
        })
    }

    pub(crate) fn from_parts(path: PathBuf, pem: String, der: Vec<u8>) -> Result<CaCertInfo, String> {
        let (subject, not_after_unix) = {
            let (_, cert) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| format!("ca.pem does not parse: {e}"))?;
            (
                cert.subject().to_string(),
                cert.validity().not_after.timestamp(),
            )
        };
        Ok(CaCertInfo {
            fingerprint_sha256: fingerprint_sha256(&der),
            path,
            pem,
            der,
            subject,
            not_after_unix,
        })
    }
}

/// The loaded local CA: certificate plus the key that signs leaves.
///
/// Cheap to share behind an `Arc`; [`crate::LeafIssuer`] holds one.
pub struct LocalCa {
    info: CaCertInfo,
    key_path: PathBuf,
    key: KeyPair,
    /// The NameConstraints the certificate carries (`None`: unconstrained).
    constraints: Option<NameConstraints>,
    /// The CA as rcgen needs it to sign (same DN and key identifier as the on-disk certificate;
    /// its own DER is a re-signature and is never shown to anyone).
    signer: rcgen::Certificate,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("cert_path", &self.info.path)
            .field("fingerprint_sha256", &self.info.fingerprint_sha256)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Loads the CA from `dir`, creating it (and `dir`, mode 0755) on first start.
    ///
    /// Refuses, rather than repairs, anything suspicious: only one of the two files present, a key
    /// that does not match the certificate, a key file readable by group/others (it may have
    /// leaked: rotate), a certificate that is not a CA. `hostname` is only used when creating.
    pub fn load_or_create(dir: &Path, hostname: &str) -> Result<LocalCa, TlsError> {
        LocalCa::load_or_create_constrained(dir, hostname, None)
    }

    /// [`LocalCa::load_or_create`], creating a missing CA with `constraints` (an existing CA is
    /// loaded as it is: [`crate::CaStore::prepare`] re-issues one whose constraints differ).
    pub fn load_or_create_constrained(
        dir: &Path,
        hostname: &str,
        constraints: Option<&NameConstraints>,
    ) -> Result<LocalCa, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => LocalCa::load(dir),
            (false, false) => {
                ensure_dir(dir)?;
                let (cert_pem, key_pem) = generate(hostname, constraints)?;
                install_new(dir, &key_pem, &cert_pem)?;
                LocalCa::load(dir)
            }
            (true, false) => Err(TlsError::CaFiles {
                dir: dir.to_path_buf(),
                reason: format!(
                    "{CA_CERT_FILE} exists without {CA_KEY_FILE}; run `mcpwatch ca rotate`"
                ),
            }),
            (false, true) => Err(TlsError::CaFiles {
                dir: dir.to_path_buf(),
                reason: format!(
                    "{CA_KEY_FILE} exists without {CA_CERT_FILE}; run `mcpwatch ca rotate`"
                ),
            }),
        }
    }

    /// Loads an existing CA from `dir` (never creates one).
    pub fn load(dir: &Path) -> Result<LocalCa, TlsError> {
        let bad = |reason: String| TlsError::CaFiles {
            dir: dir.to_path_buf(),
            reason,
        };
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);

        let meta = fs::symlink_metadata(&key_path).map_err(|source| TlsError::Io {
            path: key_path.clone(),
            source,
        })?;
        if !meta.file_type().is_file() {
            return Err(bad(format!("{CA_KEY_FILE} is not a regular file")));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TlsError::KeyFileTooOpen {
                path: key_path,
                mode,
            });
        }
        let key_pem = read_small(&key_path)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| bad(format!("{CA_KEY_FILE} does not parse: {e}")))?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(bad(format!("{CA_KEY_FILE} is not an ECDSA P-256 key")));
        }

        let cert_pem = read_small(&cert_path)?;
        let der = parse_single_cert_pem(&cert_pem).map_err(bad)?;
        {
            let (_, cert) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| bad(format!("{CA_CERT_FILE} does not parse: {e}")))?;
            if cert.public_key().raw != key.public_key_der().as_slice() {
                return Err(bad(format!(
                    "{CA_KEY_FILE} does not belong to {CA_CERT_FILE}; run `mcpwatch ca rotate`"
                )));
            }
            match cert.basic_constraints() {
                Ok(Some(bc)) if bc.value.ca => {}
                _ => return Err(bad(format!("{CA_CERT_FILE} is not a CA certificate"))),
            }
        }
        let info = CaCertInfo::from_parts(cert_path, cert_pem, der).map_err(bad)?;
        let params =
            CertificateParams::from_ca_cert_der(&CertificateDer::from(info.der.as_slice()))?;
        let constraints = params.name_constraints.clone();
        let signer = params.self_signed(&key)?;
        Ok(LocalCa {
            info,
            key_path,
            key,
            constraints,
            signer,
        })
    }

    /// The certificate as stored in `ca.pem`.
    pub fn cert_pem(&self) -> &str {
        &self.info.pem
    }

    /// The certificate in DER form (what leaves chain to).
    pub fn cert_der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.info.der.clone())
    }

    /// SHA-256 fingerprint of the certificate, colon hex.
    pub fn fingerprint_sha256(&self) -> &str {
        &self.info.fingerprint_sha256
    }

    /// Path of `ca.pem`.
    pub fn cert_path(&self) -> &Path {
        &self.info.path
    }

    /// Path of `ca.key`.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// Everything public about the certificate.
    pub fn info(&self) -> &CaCertInfo {
        &self.info
    }

    /// The CA's SubjectPublicKeyInfo (DER); tests compare it with leaf keys.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.public_key_der()
    }

    /// The NameConstraints the certificate carries (`None`: it may sign any name).
    pub fn name_constraints(&self) -> Option<&NameConstraints> {
        self.constraints.as_ref()
    }

    pub(crate) fn signer(&self) -> (&rcgen::Certificate, &KeyPair) {
        (&self.signer, &self.key)
    }

    pub(crate) fn not_after_unix(&self) -> i64 {
        self.info.not_after_unix
    }
}

/// `1970-01-01T00:00:00Z + secs` in rcgen's time type, without naming the `time` crate.
pub(crate) fn rcgen_time(
    params: &mut CertificateParams,
    not_before_unix: i64,
    not_after_unix: i64,
) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(u64::try_from(not_before_unix).unwrap_or(0));
    params.not_after = epoch + Duration::from_secs(u64::try_from(not_after_unix).unwrap_or(0));
}

fn ca_common_name(hostname: &str) -> String {
    const PREFIX: &str = "mcpwatch local CA (";
    let budget = MAX_CN_LEN - PREFIX.len() - 1;
    let host: String = hostname
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '(' && *c != ')')
        .take(budget)
        .collect();
    let host = if host.is_empty() {
        "localhost".to_string()
    } else {
        host
    };
    format!("{PREFIX}{host})")
}

/// Generates a CA (critical NameConstraints when `constraints` is given); returns
/// (certificate PEM, key PEM).
pub(crate) fn generate(
    hostname: &str,
    constraints: Option<&NameConstraints>,
) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca_common_name(hostname));
    dn.push(DnType::OrganizationName, "mcpwatch");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = constraints.cloned();
    let now = unix_now();
    rcgen_time(
        &mut params,
        now - CA_BACKDATE.as_secs() as i64,
        now + CA_VALIDITY.as_secs() as i64,
    );
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Installs a freshly generated pair without clobbering anything: each file is written to a
/// temporary name and hard-linked to its real name (which fails if it already exists).
fn install_new(dir: &Path, key_pem: &str, cert_pem: &str) -> Result<(), TlsError> {
    let key_tmp = write_temp(dir, CA_KEY_FILE, key_pem.as_bytes(), 0o600)?;
    let key_final = dir.join(CA_KEY_FILE);
    let linked = fs::hard_link(&key_tmp, &key_final);
    let _ = fs::remove_file(&key_tmp);
    linked.map_err(|source| TlsError::Io {
        path: key_final.clone(),
        source,
    })?;

    let cert_tmp = write_temp(dir, CA_CERT_FILE, cert_pem.as_bytes(), 0o644)?;
    let cert_final = dir.join(CA_CERT_FILE);
    let linked = fs::hard_link(&cert_tmp, &cert_final);
    let _ = fs::remove_file(&cert_tmp);
    linked.map_err(|source| TlsError::Io {
        path: cert_final,
        source,
    })?;
    sync_dir(dir);
    Ok(())
}

/// Writes `contents` to a new, exclusive temporary file in `dir` created with `mode` (so the
/// permission is in force from the first byte), fsyncs it and returns its path.
pub(crate) fn write_temp(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<PathBuf, TlsError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = dir.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
    let io = |source| TlsError::Io {
        path: path.clone(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(io)?;
    let result = (|| {
        // The umask can only remove bits; set the exact mode so 0644 is really 0644.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&path);
        return Err(io(e));
    }
    Ok(path)
}

pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), TlsError> {
    fs::rename(from, to).map_err(|source| {
        let _ = fs::remove_file(from);
        TlsError::Io {
            path: to.to_path_buf(),
            source,
        }
    })
}

pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

pub(crate) fn ensure_dir(dir: &Path) -> Result<(), TlsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|source| TlsError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

pub(crate) fn exists(path: &Path) -> Result<bool, TlsError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(TlsError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(crate) fn read_small(path: &Path) -> Result<String, TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_FILE_LEN {
        return Err(TlsError::CaFiles {
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            reason: format!("{} is larger than {MAX_FILE_LEN} bytes", path.display()),
        });
    }
    fs::read_to_string(path).map_err(io)
}

pub(crate) fn parse_single_cert_pem(pem: &str) -> Result<Vec<u8>, String> {
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut reader) {
        certs.push(item.map_err(|e| format!("{CA_CERT_FILE} is not PEM: {e}"))?);
    }
    match certs.len() {
        1 => Ok(certs.remove(0).to_vec()),
        n => Err(format!("{CA_CERT_FILE} holds {n} certificates, expected 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_is_bounded_and_clean() {
        assert_eq!(ca_common_name("build-01"), "mcpwatch local CA (build-01)");
        let long = "h".repeat(300);
        let cn = ca_common_name(&long);
        assert_eq!(cn.len(), MAX_CN_LEN);
        assert!(cn.ends_with(')'));
        assert_eq!(ca_common_name("a)(b\n"), "mcpwatch local CA (ab)");
        assert_eq!(ca_common_name(""), "mcpwatch local CA (localhost)");
    }

    #[test]
    fn creates_with_modes_and_reloads_the_same_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let ca = LocalCa::load_or_create(&state, "testhost").unwrap();
        let key_mode = fs::metadata(state.join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        let cert_mode = fs::metadata(state.join(CA_CERT_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(key_mode, 0o600);
        assert_eq!(cert_mode, 0o644);
        // No temporary files left behind.
        let names: Vec<String> = fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        let der = ca.cert_der().to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            cert.subject().to_string(),
            "CN=mcpwatch local CA (testhost), O=mcpwatch"
        );
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        let years = (cert.validity().not_after.timestamp()
            - cert.validity().not_before.timestamp())
            / (365 * 24 * 3600);
        assert_eq!(years, 2, "a local CA lives two years, not ten");
        let info = ca.info();
        assert_eq!(info.expiry_warning(unix_now()), None, "a new CA is not about to expire");
        let soon = info.not_after_unix - 10 * 86_400;
        assert!(info.expiry_warning(soon).is_some_and(|w| w.contains("expires in 10 day(s)")));
        let late = info.not_after_unix + 3 * 86_400;
        assert!(info.expiry_warning(late).is_some_and(|w| w.contains("EXPIRED 3 day(s) ago")));
        assert_eq!(
            cert.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        assert_eq!(ca.fingerprint_sha256(), fingerprint_sha256(&der));
        assert_eq!(ca.cert_path(), state.join(CA_CERT_FILE));

        let again = LocalCa::load_or_create(&state, "otherhost").unwrap();
        assert_eq!(again.cert_der().to_vec(), der);
        assert_eq!(again.cert_pem(), ca.cert_pem());
        assert_eq!(again.public_key_der(), ca.public_key_der());
        assert_eq!(CaCertInfo::read(&state).unwrap(), *ca.info());
    }

    #[test]
    fn refuses_open_key_mismatch_and_half_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        LocalCa::load_or_create(&a, "h").unwrap();

        fs::set_permissions(a.join(CA_KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            LocalCa::load_or_create(&a, "h"),
            Err(TlsError::KeyFileTooOpen { mode: 0o644, .. })
        ));
        fs::set_permissions(a.join(CA_KEY_FILE), fs::Permissions::from_mode(0o600)).unwrap();

        let b = dir.path().join("b");
        LocalCa::load_or_create(&b, "h").unwrap();
        fs::copy(b.join(CA_CERT_FILE), a.join(CA_CERT_FILE)).unwrap();
        let err = LocalCa::load_or_create(&a, "h").unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");

        fs::remove_file(b.join(CA_KEY_FILE)).unwrap();
        let err = LocalCa::load_or_create(&b, "h").unwrap_err();
        assert!(err.to_string().contains("exists without"), "{err}");
        // The lone certificate was not overwritten.
        assert!(b.join(CA_CERT_FILE).exists() && !b.join(CA_KEY_FILE).exists());

        fs::write(b.join(CA_KEY_FILE), "garbage").unwrap();
        fs::set_permissions(b.join(CA_KEY_FILE), fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(LocalCa::load(&b), Err(TlsError::CaFiles { .. })));
    }
}
