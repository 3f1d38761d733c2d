//! Shared fixtures for the loopback TLS tests: a test-only upstream CA, upstream TLS servers,
//! a one-connection "proxy" driving the crate exactly as mcpwatchd does, rustls clients, a byte
//! tap, and a hand-rolled ClientHello builder for hostile hellos rustls itself would never send.
#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use mcpwatch_tls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use mcpwatch_tls::rustls::{self, ClientConfig, ServerConfig};
use mcpwatch_tls::{
    InterceptError, LeafIssuer, LeafOptions, LocalCa, TlsInfo, UpstreamOptions, UpstreamTls,
    intercept, read_client_hello,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Fails loudly instead of hanging; not a timing assertion.
pub async fn guard<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test step hung")
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// (year, month, day).
pub type Ymd = (i32, u8, u8);

/// A test-only CA standing in for a public CA the upstream's certificate chains to.
pub struct TestCa {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    pub pem_path: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.remove(DnType::CommonName);
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let pem_path = dir.join(format!("{}.pem", name.replace(' ', "-")));
        std::fs::write(&pem_path, cert.pem()).unwrap();
        TestCa {
            cert,
            key,
            pem_path,
        }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A server certificate for `sans` valid over [not_before, not_after] (None: rcgen's wide
    /// default range).
    pub fn issue(&self, cn: &str, sans: &[&str], validity: Option<(Ymd, Ymd)>) -> ServerCert {
        self.issue_with(cn, sans, |params| {
            if let Some(((y1, m1, d1), (y2, m2, d2))) = validity {
                params.not_before = rcgen::date_time_ymd(y1, m1, d1);
                params.not_after = rcgen::date_time_ymd(y2, m2, d2);
            }
        })
    }

    /// A server certificate for `sans` that expires `secs` seconds from now.
    pub fn issue_expiring_in(&self, cn: &str, sans: &[&str], secs: u64) -> ServerCert {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        self.issue_with(cn, sans, |params| {
            params.not_before = rcgen::date_time_ymd(1970, 1, 1) + (now - Duration::from_secs(3600));
            params.not_after = rcgen::date_time_ymd(1970, 1, 1) + (now + Duration::from_secs(secs));
        })
    }

    /// A server certificate for `sans` signed by this CA, its validity set by `validity`.
    fn issue_with(&self, cn: &str, sans: &[&str], validity: impl FnOnce(&mut CertificateParams)) -> ServerCert {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.remove(DnType::CommonName);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        ServerCert {
            chain: vec![cert.der().clone(), self.der()],
            key: key.serialize_der(),
        }
    }
}

/// A self-signed server certificate (issuer == subject).
pub fn self_signed(cn: &str, sans: &[&str]) -> ServerCert {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.remove(DnType::CommonName);
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = params.self_signed(&key).unwrap();
    ServerCert {
        chain: vec![cert.der().clone()],
        key: key.serialize_der(),
    }
}

#[derive(Clone)]
pub struct ServerCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Vec<u8>,
}

impl ServerCert {
    pub fn fingerprint(&self) -> String {
        mcpwatch_tls::fingerprint_sha256(&self.chain[0])
    }

    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
            )
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// Records every byte read from and written to the wrapped stream.
pub struct Tap<T> {
    pub inner: T,
    pub read: Arc<Mutex<Vec<u8>>>,
    pub written: Arc<Mutex<Vec<u8>>>,
}

impl<T> Tap<T> {
    pub fn new(inner: T) -> Tap<T> {
        Tap {
            inner,
            read: Arc::default(),
            written: Arc::default(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.read
            .lock()
            .unwrap()
            .extend_from_slice(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.written.lock().unwrap().extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    // Vectored like the socket it wraps: tokio-rustls sends a last-gasp alert with a single
    // write call, and a non-vectored wrapper would cut it to its first buffer.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        let mut written = this.written.lock().unwrap();
        for b in bufs {
            let take = left.min(b.len());
            written.extend_from_slice(&b[..take]);
            left -= take;
        }
        Poll::Ready(Ok(n))
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What an upstream test server saw.
#[derive(Debug, Default)]
pub struct UpstreamReport {
    pub accepted: usize,
    pub handshake_ok: bool,
    pub alpn: Option<Vec<u8>>,
    pub raw_read: Vec<u8>,
    pub raw_written: Vec<u8>,
}

/// A TLS server on loopback that accepts one connection, answers "echo:<line>" to one line and
/// closes. The handle yields what it saw.
pub async fn upstream_server(
    cert: &ServerCert,
    alpn: &[&[u8]],
) -> (SocketAddr, JoinHandle<UpstreamReport>) {
    upstream_server_with(cert.server_config(alpn)).await
}

/// [`upstream_server`] with a given config: one config across servers keeps its session
/// cache, so a later server resumes the sessions of an earlier one.
pub async fn upstream_server_with(config: Arc<ServerConfig>) -> (SocketAddr, JoinHandle<UpstreamReport>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handle = tokio::spawn(async move {
        let mut report = UpstreamReport::default();
        let (tcp, _) = match tokio::time::timeout(Duration::from_secs(20), listener.accept()).await
        {
            Ok(Ok(c)) => c,
            _ => return report,
        };
        report.accepted = 1;
        let tap = Tap::new(tcp);
        let (read, written) = (tap.read.clone(), tap.written.clone());
        if let Ok(mut tls) = acceptor.accept(tap).await {
            report.handshake_ok = true;
            report.alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while let Ok(1) = tls.read(&mut byte).await {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    break;
                }
            }
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&line);
            let _ = tls.write_all(&reply).await;
            let _ = tls.shutdown().await;
            // Drain until the peer closes so every byte is accounted for.
            let mut sink = Vec::new();
            let _ = tls.read_to_end(&mut sink).await;
        }
        report.raw_read = read.lock().unwrap().clone();
        report.raw_written = written.lock().unwrap().clone();
        report
    });
    (addr, handle)
}

/// A plain TCP listener counting the bytes it receives (an upstream that must never be used).
pub async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bytes = Arc::new(AtomicUsize::new(0));
    let counter = bytes.clone();
    let handle = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                // Count what arrives first, then hang up (a TLS client fails fast instead of
                // waiting out its handshake timeout).
                let mut buf = [0u8; 4096];
                if let Ok(n) = tcp.read(&mut buf).await {
                    counter.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, bytes, handle)
}

/// The crate wired up as mcpwatchd would: local CA, issuer, upstream verifier trusting the
/// test upstream CA only.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub ca: Arc<LocalCa>,
    pub issuer: Arc<LeafIssuer>,
    pub upstream_ca: TestCa,
    pub upstream: Arc<UpstreamTls>,
}

impl Env {
    pub fn new() -> Env {
        Env::with_insecure(&[])
    }

    pub fn with_insecure(insecure: &[&str]) -> Env {
        Env::with_upstream(insecure, UpstreamOptions::default().resumption_max_age)
    }

    /// An env whose upstream sessions resume for `resumption` (zero: never).
    pub fn with_upstream(insecure: &[&str], resumption: Duration) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(LocalCa::load_or_create(&dir.path().join("state"), "testhost").unwrap());
        let issuer = Arc::new(LeafIssuer::new(ca.clone(), LeafOptions::default()).unwrap());
        let upstream_ca = TestCa::new(dir.path(), "mcpwatch test upstream CA");
        let upstream = Arc::new(
            UpstreamTls::new(UpstreamOptions {
                extra_anchors_pem: vec![upstream_ca.pem_path.clone()],
                use_system_roots: false,
                insecure_hosts: insecure.iter().map(|s| s.to_string()).collect(),
                exclude_anchors_der: vec![ca.cert_der().to_vec()],
                resumption_max_age: resumption,
                ..UpstreamOptions::default()
            })
            .unwrap(),
        );
        Env {
            dir,
            ca,
            issuer,
            upstream_ca,
            upstream,
        }
    }

    /// A one-connection proxy in front of `upstream_addr` that always intercepts; after a
    /// successful intercept it relays plaintext both ways.
    pub async fn intercepting_proxy(
        &self,
        upstream_addr: SocketAddr,
    ) -> (SocketAddr, JoinHandle<Result<TlsInfo, InterceptError>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = self.issuer.clone();
        let upstream = self.upstream.clone();
        let handle = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let hello = read_client_hello(tcp, Duration::from_secs(10))
                .await
                .expect("client hello");
            let up_tcp = TcpStream::connect(upstream_addr).await.unwrap();
            let mut conn = intercept(hello, up_tcp, &issuer, &upstream).await?;
            let info = conn.info.clone();
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut conn.client, &mut conn.upstream).await;
            });
            Ok(info)
        });
        (addr, handle)
    }

    /// A client config trusting our local CA.
    pub fn client_trusting_local_ca(&self, alpn: &[&[u8]]) -> ClientConfig {
        client_config(&[self.ca.cert_der()], alpn)
    }
}

pub fn client_config(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// What a client saw.
#[derive(Debug)]
pub struct ClientReport {
    pub result: Result<Vec<u8>, io::Error>,
    pub peer_leaf: Option<CertificateDer<'static>>,
    pub alpn: Option<Vec<u8>>,
    pub raw_written: Vec<u8>,
    pub raw_read: Vec<u8>,
}

impl ClientReport {
    /// The rustls error the handshake failed with, if any.
    pub fn tls_error(&self) -> Option<rustls::Error> {
        self.result
            .as_ref()
            .err()
            .and_then(|e| e.get_ref())
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .cloned()
    }
}

/// Connects to `addr` with TLS for `name`, sends "ping\n", reads the reply to EOF.
pub async fn run_client(addr: SocketAddr, config: ClientConfig, name: &str) -> ClientReport {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tap = Tap::new(tcp);
    let (raw_read, raw_written) = (tap.read.clone(), tap.written.clone());
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let mut peer_leaf = None;
    let mut alpn = None;
    let result = async {
        let mut tls = connector.connect(server_name, tap).await?;
        peer_leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned();
        alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        tls.write_all(b"ping\n").await?;
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply).await?;
        let _ = tls.shutdown().await;
        Ok::<_, io::Error>(reply)
    }
    .await;
    let raw_read = raw_read.lock().unwrap().clone();
    let raw_written = raw_written.lock().unwrap().clone();
    ClientReport {
        result,
        peer_leaf,
        alpn,
        raw_written,
        raw_read,
    }
}

/// The bytes of a real rustls ClientHello for `name`.
pub fn rustls_client_hello(name: ServerName<'static>, alpn: &[&[u8]]) -> Vec<u8> {
    let config = client_config(&[], alpn);
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// Hand-built ClientHello, for hellos rustls would refuse to send.
pub struct RawHello<'a> {
    pub version: u16,
    pub suites: &'a [u16],
    pub sni: Option<&'a [u8]>,
    pub alpn: &'a [&'a [u8]],
    pub signature_algorithms: bool,
}

impl RawHello<'_> {
    pub fn modern(sni: Option<&[u8]>) -> RawHello<'_> {
        RawHello {
            version: 0x0303,
            suites: &[0x1301, 0xc02b],
            sni,
            alpn: &[b"http/1.1"],
            signature_algorithms: true,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        fn u16be(v: usize) -> [u8; 2] {
            (v as u16).to_be_bytes()
        }
        fn ext(out: &mut Vec<u8>, typ: u16, body: &[u8]) {
            out.extend_from_slice(&typ.to_be_bytes());
            out.extend_from_slice(&u16be(body.len()));
            out.extend_from_slice(body);
        }
        let mut exts = Vec::new();
        if let Some(name) = self.sni {
            let mut list = vec![0u8];
            list.extend_from_slice(&u16be(name.len()));
            list.extend_from_slice(name);
            let mut body = u16be(list.len()).to_vec();
            body.extend_from_slice(&list);
            ext(&mut exts, 0, &body);
        }
        if self.signature_algorithms {
            let schemes = [0x04u8, 0x03, 0x08, 0x04, 0x04, 0x01];
            let mut body = u16be(schemes.len()).to_vec();
            body.extend_from_slice(&schemes);
            ext(&mut exts, 13, &body);
        }
        if !self.alpn.is_empty() {
            let mut list = Vec::new();
            for p in self.alpn {
                list.push(p.len() as u8);
                list.extend_from_slice(p);
            }
            let mut body = u16be(list.len()).to_vec();
            body.extend_from_slice(&list);
            ext(&mut exts, 16, &body);
        }
        let mut hello = self.version.to_be_bytes().to_vec();
        hello.extend_from_slice(&[0x5a; 32]);
        hello.push(0);
        hello.extend_from_slice(&u16be(self.suites.len() * 2));
        for s in self.suites {
            hello.extend_from_slice(&s.to_be_bytes());
        }
        hello.extend_from_slice(&[1, 0]);
        hello.extend_from_slice(&u16be(exts.len()));
        hello.extend_from_slice(&exts);
        let mut handshake = vec![1u8];
        handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&hello);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend_from_slice(&u16be(handshake.len()));
        record.extend_from_slice(&handshake);
        record
    }
}

/// Reads whatever the server sends back until EOF (bounded).
pub async fn read_all(tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > 1 << 20 {
                    break;
                }
            }
        }
    }
    out
}

/// Loads the `tls` cases of the shared threat corpus.
pub fn tls_cases() -> Vec<serde_json::Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/threats.jsonl"
    );
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("threat corpus {path} missing: {e}"));
    let cases: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line in {path}: {e}")))
        .filter(|v: &serde_json::Value| v["category"] == "tls")
        .collect();
    assert!(!cases.is_empty(), "no tls cases in {path}");
    cases
}
