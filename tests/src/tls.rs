//! TLS material and probes for the HTTPS integration tests.
//!
//! Why: interception has to be proven against real TLS stacks (OpenSSL in Python, Node's TLS),
//! with upstream certificates whose faults we control. This module makes a test-only upstream
//! CA that mcpwatchd is told to trust (`[tls] extra_anchors`), server certificates that are
//! valid, expired, issued for another name or self-signed, raw ClientHellos (well-formed,
//! legacy and hostile) to send straight at the daemon, and a Python `ssl` probe that reports
//! which certificate a client was shown. Everything listens and connects on loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use serde_json::Value;

use crate::daemon::Daemon;
use crate::peers::{Peer, ServerBuilder};

/// Common name of the test-only upstream CA.
pub const UPSTREAM_CA_CN: &str = "mcpwatch test upstream CA";

/// What is wrong with a server certificate, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// Issued by the test CA for the host, valid now.
    Valid,
    /// Issued by the test CA for the host, expired (notAfter `not_after_unix`).
    Expired { not_after_unix: i64 },
    /// Issued by the test CA for another name.
    WrongName,
    /// Self-signed for the host (no CA anyone trusts).
    SelfSigned,
}

/// A server certificate on disk.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

/// A test-only upstream CA in a temp dir, and the certificates it issued.
pub struct TestPki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// `ca.pem` of the test CA: give it to mcpwatchd as an extra anchor, or to a client that
    /// should trust the upstream directly.
    pub ca_pem: PathBuf,
    issued: std::cell::Cell<u32>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::Builder::new().prefix("mcpwatch-pki-").tempdir().expect("pki tempdir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, UPSTREAM_CA_CN);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let ca = params.self_signed(&ca_key).expect("CA self-signed");
        let ca_pem = dir.path().join("upstream-ca.pem");
        std::fs::write(&ca_pem, ca.pem()).expect("write CA");
        TestPki { dir, ca, ca_key, ca_pem, issued: std::cell::Cell::new(0) }
    }

    /// A server certificate of `kind` for `host` (DNS name or IP literal).
    pub fn server_cert(&self, kind: CertKind, host: &str) -> ServerCert {
        let san = match kind {
            CertKind::WrongName => "not-the-host.mcpwatch.test".to_string(),
            _ => host.to_string(),
        };
        self.issue(kind, vec![san])
    }

    /// A valid certificate from the test CA for every name of `names` (the first is the CN).
    pub fn server_cert_for_names(&self, names: &[&str]) -> ServerCert {
        self.issue(CertKind::Valid, names.iter().map(|n| n.to_string()).collect())
    }

    fn issue(&self, kind: CertKind, sans: Vec<String>) -> ServerCert {
        let key = KeyPair::generate().expect("leaf key");
        let cn = sans.first().cloned().unwrap_or_default();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen::date_time_ymd(2001, 1, 1);
        params.not_after = rcgen::date_time_ymd(2098, 1, 1);
        let cert = match kind {
            CertKind::Expired { not_after_unix } => {
                let epoch = rcgen::date_time_ymd(1970, 1, 1);
                params.not_after = epoch + Duration::from_secs(u64::try_from(not_after_unix).expect("after 1970"));
                params.not_before = params.not_after - Duration::from_secs(90 * 24 * 3600);
                params.signed_by(&key, &self.ca, &self.ca_key)
            }
            CertKind::SelfSigned => params.self_signed(&key),
            CertKind::Valid | CertKind::WrongName => params.signed_by(&key, &self.ca, &self.ca_key),
        }
        .expect("sign server cert");
        let n = self.issued.get() + 1;
        self.issued.set(n);
        let cert_path = self.dir.path().join(format!("server-{n}.pem"));
        let key_path = self.dir.path().join(format!("server-{n}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        ServerCert { cert: cert_path, key: key_path, der: cert.der().to_vec() }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

/// Make a Python or Node server peer serve HTTPS with `cert`.
pub fn https(server: ServerBuilder, cert: &ServerCert) -> ServerBuilder {
    server
        .arg("--certfile")
        .arg(cert.cert.display().to_string())
        .arg("--keyfile")
        .arg(cert.key.display().to_string())
}

/// `https://HOST:PORT/mcp` for a peer.
pub fn https_url(host: &str, peer: &Peer) -> String {
    format!("https://{host}:{}/mcp", peer.addr().port())
}

/// The daemon's CA certificate (`<state>/ca/ca.pem`).
pub fn daemon_ca(daemon: &Daemon) -> PathBuf {
    daemon.state_dir.join("ca").join("ca.pem")
}

/// A `[tls]` table trusting the test CA upstream, plus `extra` lines.
pub fn tls_config(pki: &TestPki, extra: &str) -> String {
    format!("[tls]\nextra_anchors = [{:?}]\n{extra}\n", pki.ca_pem.display().to_string())
}

/// The DER of the only certificate in a PEM file.
pub fn pem_file_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut certs = pem_certs(&pem);
    assert_eq!(certs.len(), 1, "{} holds {} certificates", path.display(), certs.len());
    certs.remove(0)
}

fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    ::x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

/// Python `ssl` probe: connect to `host:port` (in `cgroup`, if any), handshake with
/// `server_hostname` trusting only `cafile`, optionally send `payload` and read until EOF.
/// Returns `{"ok":bool,"error":str,"cert":hex DER,"version":str,"got":hex}`.
pub fn ssl_probe(cgroup: Option<&Path>, host: &str, port: u16, server_hostname: &str, cafile: &Path, payload: &[u8]) -> Value {
    let script = format!(
        r#"
import json, socket, ssl, sys
payload = sys.stdin.buffer.read()
ctx = ssl.create_default_context(cafile={cafile:?})
out = {{"ok": False}}
try:
    raw = socket.create_connection(({host:?}, {port}), timeout=20)
    s = ctx.wrap_socket(raw, server_hostname={server_hostname:?})
    out["cert"] = s.getpeercert(binary_form=True).hex()
    out["version"] = s.version()
    got = b""
    if payload:
        s.sendall(payload)
        while True:
            chunk = s.recv(65536)
            if not chunk: break
            got += chunk
    out["got"] = got.hex()
    out["ok"] = True
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"#,
        cafile = cafile.display().to_string(),
    );
    crate::harness::py_stdin(cgroup, &script, payload)
}

/// Upper-case colon hex SHA-256, the form audit records use.
pub fn fingerprint(der: &[u8]) -> String {
    mcpwatch_tls::fingerprint_sha256(der)
}

/// SubjectPublicKeyInfo (DER) and subject of a certificate.
pub fn spki_and_subject(der: &[u8]) -> (Vec<u8>, String) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("certificate parses");
    (cert.public_key().raw.to_vec(), cert.subject().to_string())
}

/// Builders for raw ClientHello records.
pub mod hello {
    /// One TLS extension.
    fn ext(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut v = kind.to_be_bytes().to_vec();
        v.extend_from_slice(&u16::try_from(body.len()).expect("ext len").to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn u16_prefixed(body: &[u8]) -> Vec<u8> {
        let mut v = u16::try_from(body.len()).expect("len").to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    /// The server_name extension carrying `name` verbatim (no validation: hostile names too).
    pub fn sni_ext(name: &[u8]) -> Vec<u8> {
        let mut entry = vec![0u8];
        entry.extend_from_slice(&u16_prefixed(name));
        ext(0x0000, &u16_prefixed(&entry))
    }

    /// A complete TLS 1.3-capable ClientHello record (what OpenSSL or rustls would send),
    /// with the given SNI (None: no server_name extension), offering ALPN http/1.1.
    pub fn client_hello(sni: Option<&[u8]>) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            exts.extend(sni_ext(name));
        }
        exts.extend(ext(0x002b, &[4, 0x03, 0x04, 0x03, 0x03])); // supported_versions 1.3, 1.2
        exts.extend(ext(0x000a, &u16_prefixed(&[0x00, 0x1d, 0x00, 0x17]))); // x25519, P-256
        exts.extend(ext(0x000b, &[1, 0])); // ec_point_formats
        exts.extend(ext(0x000d, &u16_prefixed(&[0x04, 0x03, 0x08, 0x04, 0x04, 0x01]))); // sig algs
        let mut share = vec![0x00, 0x1d, 0x00, 0x20];
        share.extend((0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(9)));
        exts.extend(ext(0x0033, &u16_prefixed(&share))); // key_share
        let mut alpn = vec![8u8];
        alpn.extend_from_slice(b"http/1.1");
        exts.extend(ext(0x0010, &u16_prefixed(&alpn)));
        // TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, ECDHE-ECDSA-AES128-GCM, ECDHE-RSA-AES128-GCM
        build(0x0303, &[0x13, 0x01, 0x13, 0x02, 0xc0, 0x2b, 0xc0, 0x2f], &exts)
    }

    /// A TLS 1.0 ClientHello offering only RC4 and 3DES (threat case TLS-008).
    pub fn legacy_client_hello(sni: &[u8]) -> Vec<u8> {
        build(0x0301, &[0x00, 0x05, 0x00, 0x0a], &sni_ext(sni))
    }

    fn build(version: u16, suites: &[u8], exts: &[u8]) -> Vec<u8> {
        let mut body = version.to_be_bytes().to_vec();
        body.extend((0..32u8).map(|i| i.wrapping_mul(13).wrapping_add(1))); // random
        body.push(32);
        body.extend((0..32u8).map(|i| i.wrapping_mul(7))); // legacy session id
        body.extend(u16_prefixed(suites));
        body.extend([1, 0]); // compression: null
        body.extend(u16_prefixed(exts));
        let mut hs = vec![0x01];
        hs.extend_from_slice(&u32::try_from(body.len()).expect("len").to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend(u16_prefixed(&hs));
        rec
    }
}

/// How a raw connection to the daemon ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEnd {
    /// Everything the daemon sent before closing.
    pub received: Vec<u8>,
    /// The daemon closed (EOF or reset) rather than the read timing out.
    pub closed: bool,
}

/// Sends `bytes` to `addr` (optionally half-closing after them), then reads until the peer
/// closes, giving up after `limit` (which is far above the daemon's deadline: reaching it means
/// the daemon hung).
pub fn send_raw(addr: SocketAddr, bytes: &[u8], half_close: bool, limit: Duration) -> RawEnd {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(limit)).expect("timeout");
    // The daemon may reset the connection before we finish writing: that is an ending too.
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return RawEnd { received, closed: true },
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return RawEnd { received, closed: false };
            }
            Err(_) => return RawEnd { received, closed: true },
        }
    }
}

/// Dribbles `bytes` one at a time, `gap` apart, until the daemon closes the connection.
/// Returns how many bytes were sent before it did (all of them: it never closed).
pub fn slowloris(addr: SocketAddr, bytes: &[u8], gap: Duration) -> usize {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut reader = s.try_clone().expect("clone");
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = closed.clone();
    let watcher = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        reader.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let mut sent = 0;
    for b in bytes {
        if closed.load(std::sync::atomic::Ordering::SeqCst) || s.write_all(&[*b]).is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(gap);
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = watcher.join();
    sent
}
