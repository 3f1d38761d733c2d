//! Verified TLS to the original destination: the half of interception that keeps it honest.
//!
//! Before the client is shown a leaf for a name, the daemon connects to the real server with the
//! same name and verifies its certificate exactly as a careful client would: webpki against the
//! system trust store (rustls-native-certs, which honours `SSL_CERT_FILE`/`SSL_CERT_DIR`) plus any
//! configured extra anchors. Failures are categorised ([`CertProblem`]) so the audit can say why
//! a connection was refused, and carry a summary of the certificate that was presented.
//!
//! Sessions are resumed (a full handshake verifies the chain, later connections to the same
//! name may resume from it) only within the bounds of [`crate::resume`]: at most
//! `resumption_max_age` after the full verification they descend from, never past the
//! verified certificate's expiry, never for insecure-listed hosts. A zero max age verifies
//! every connection in full. The audit sees the certificate either way (a resumed session
//! carries the chain it was verified with) and whether the connection was resumed.
//!
//! The local mcpwatch CA is excluded from the upstream anchors even after `mcpwatch ca install`
//! put it into the system store: a certificate signed by our own CA is never a valid upstream.
//! The only relaxation is a per-host insecure list, and a connection that used it says so
//! ([`UpstreamCert::insecure`], with the problem that was overridden).

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::hello::rustls_error;
use crate::leaf::{ServerTarget, validate_server_name};
use crate::{TlsError, fingerprint_sha256, provider, version_name};

/// The upstream-side stream after a verified handshake.
pub type UpstreamTlsStream<T = TcpStream> = tokio_rustls::client::TlsStream<T>;

/// Largest PEM anchor file read.
const MAX_ANCHOR_FILE: u64 = 4 * 1024 * 1024;

/// Options for [`UpstreamTls`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamOptions {
    /// PEM files with additional trust anchors (e.g. a private CA for internal MCP servers).
    pub extra_anchors_pem: Vec<PathBuf>,
    /// Trust the system store. Default true.
    pub use_system_roots: bool,
    /// Hosts (exact names or IP literals) whose certificate is accepted even when verification
    /// fails. The connection info says `insecure: true` and what was overridden.
    pub insecure_hosts: Vec<String>,
    /// Certificates (DER) never to trust as anchors, even if the system store has them: pass the
    /// local CA here ([`crate::LocalCa::cert_der`]).
    pub exclude_anchors_der: Vec<Vec<u8>>,
    /// ALPN protocols the proxy can carry end to end, in preference order. Default
    /// `[http/1.1]`; add `h2` only when the proxy really relays HTTP/2.
    pub carried_alpn: Vec<Vec<u8>>,
    /// Bound on the upstream TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// How long after a full verification its sessions may be resumed (see
    /// [`crate::resume`]). Zero: no resumption, every connection verified in full.
    /// Default 300 s.
    pub resumption_max_age: Duration,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            extra_anchors_pem: Vec::new(),
            use_system_roots: true,
            insecure_hosts: Vec::new(),
            exclude_anchors_der: Vec::new(),
            carried_alpn: vec![crate::ALPN_HTTP1_1.to_vec()],
            handshake_timeout: Duration::from_secs(10),
            resumption_max_age: Duration::from_secs(300),
        }
    }
}

/// Why an upstream certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum CertProblem {
    Expired,
    NotYetValid,
    NotValidForName,
    SelfSigned,
    UnknownIssuer,
    Revoked,
    Other(String),
}

impl std::fmt::Display for CertProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertProblem::Expired => f.write_str("certificate expired"),
            CertProblem::NotYetValid => f.write_str("certificate not yet valid"),
            CertProblem::NotValidForName => {
                f.write_str("certificate not valid for the server name")
            }
            CertProblem::SelfSigned => f.write_str("self-signed certificate"),
            CertProblem::UnknownIssuer => f.write_str("certificate issued by an unknown CA"),
            CertProblem::Revoked => f.write_str("certificate revoked"),
            CertProblem::Other(s) => write!(f, "certificate invalid: {s}"),
        }
    }
}

/// Identity of a certificate, for the audit and inventory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertSummary {
    /// Subject DN as text.
    pub subject: String,
    /// Issuer DN as text.
    pub issuer: String,
    /// SHA-256 of the DER, colon hex.
    pub fingerprint_sha256: String,
    /// Expiry, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

impl CertSummary {
    /// Summarises a DER certificate; an unparsable one still gets its fingerprint.
    pub fn from_der(der: &[u8]) -> CertSummary {
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => CertSummary {
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
                fingerprint_sha256: fingerprint_sha256(der),
                not_after_unix: cert.validity().not_after.timestamp(),
            },
            Err(_) => CertSummary {
                subject: "<unparsable>".into(),
                issuer: "<unparsable>".into(),
                fingerprint_sha256: fingerprint_sha256(der),
                not_after_unix: 0,
            },
        }
    }
}

/// What the upstream side of a connection was, for the audit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamCert {
    /// The name (or IP) the certificate was verified for.
    pub server_name: String,
    /// The end-entity certificate the upstream presented.
    pub cert: CertSummary,
    /// Negotiated version, "TLSv1.3" / "TLSv1.2".
    pub version: String,
    /// Negotiated ALPN protocol, if any.
    pub alpn: Option<Vec<u8>>,
    /// True when this host is on the insecure list (verification failures are overridden).
    pub insecure: bool,
    /// When `insecure`, the verification failure that was overridden (None: it verified anyway).
    pub overridden: Option<CertProblem>,
    /// The session was resumed: `cert` was verified by the full handshake it descends from.
    pub resumed: bool,
}

/// Why the upstream TLS connection failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("client: unusable server name: {0}")]
    BadName(TlsError),
    #[error("upstream: {problem} (server name {server_name})")]
    Certificate {
        server_name: String,
        problem: CertProblem,
        presented: Option<CertSummary>,
    },
    #[error("upstream: TLS handshake did not finish within {0:?}")]
    Timeout(Duration),
    #[error("upstream: TLS error: {0}")]
    Tls(rustls::Error),
    #[error("upstream: I/O error: {0}")]
    Io(io::Error),
}

impl UpstreamTlsError {
    /// Which side failed (a bad name comes from the client's SNI).
    pub fn side(&self) -> crate::Side {
        match self {
            UpstreamTlsError::BadName(_) => crate::Side::Client,
            _ => crate::Side::Upstream,
        }
    }

    /// The certificate problem, when that is why it failed.
    pub fn cert_problem(&self) -> Option<&CertProblem> {
        match self {
            UpstreamTlsError::Certificate { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// Builds verified upstream TLS connections. Share it behind an `Arc`.
pub struct UpstreamTls {
    /// Verified hosts: one shared verifier (rustls resumes only sessions made with the same
    /// verifier instance) and the bounded session store.
    verified: Arc<ClientConfig>,
    /// Insecure-listed hosts: accepts a failed chain, never resumes (a resumed session
    /// would hide what was overridden).
    insecure_config: Arc<ClientConfig>,
    insecure: HashSet<ServerTarget>,
    handshake_timeout: Duration,
    anchors: usize,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("anchors", &self.anchors)
            .field("insecure", &self.insecure)
            .field("carried_alpn", &self.carried_alpn())
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Loads the trust anchors and builds the client config. Errors: unreadable or empty anchor
    /// files, an invalid insecure host, or no anchors at all.
    pub fn new(options: UpstreamOptions) -> Result<UpstreamTls, TlsError> {
        let mut roots = RootCertStore::empty();
        let excluded: HashSet<&[u8]> = options
            .exclude_anchors_der
            .iter()
            .map(Vec::as_slice)
            .collect();
        if options.use_system_roots {
            let native = rustls_native_certs::load_native_certs();
            for err in &native.errors {
                tracing::warn!(error = %err, "problem loading a system trust anchor");
            }
            let certs = native
                .certs
                .into_iter()
                .filter(|c| !excluded.contains(c.as_ref()));
            let (added, ignored) = roots.add_parsable_certificates(certs);
            tracing::debug!(added, ignored, "system trust anchors loaded");
        }
        for path in &options.extra_anchors_pem {
            let certs = read_pem_certs(path)?;
            for cert in certs {
                if excluded.contains(cert.as_ref()) {
                    continue;
                }
                roots.add(cert).map_err(|e| {
                    TlsError::Anchors(format!("{}: unusable anchor: {e}", path.display()))
                })?;
            }
        }
        let anchors = roots.len();
        if anchors == 0 {
            return Err(TlsError::Anchors(
                "no trust anchors (system store empty and no extra anchors)".into(),
            ));
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Anchors(e.to_string()))?;
        let insecure = options
            .insecure_hosts
            .iter()
            .map(|h| {
                validate_server_name(h).map_err(|_| {
                    TlsError::BadOptions(format!("insecure host {h:?} is not a host name or IP"))
                })
            })
            .collect::<Result<HashSet<_>, _>>()?;
        for alpn in &options.carried_alpn {
            if alpn.is_empty() || alpn.len() > 255 {
                return Err(TlsError::BadAlpn(
                    "carried ALPN protocol empty or longer than 255 bytes",
                ));
            }
        }
        let sessions = (!options.resumption_max_age.is_zero())
            .then(|| Arc::new(crate::resume::SessionStore::new(options.resumption_max_age)));
        let config = |insecure: bool| -> Result<ClientConfig, TlsError> {
            let recorder = Arc::new(RecordingVerifier {
                inner: verifier.clone(),
                insecure,
                sessions: if insecure { None } else { sessions.clone() },
            });
            let mut c = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                .dangerous()
                .with_custom_certificate_verifier(recorder)
                .with_no_client_auth();
            // The usual offer: a connection offering exactly this needs no config of its own.
            c.alpn_protocols.clone_from(&options.carried_alpn);
            c.resumption = match (&sessions, insecure) {
                (Some(store), false) => rustls::client::Resumption::store(store.clone()),
                _ => rustls::client::Resumption::disabled(),
            };
            Ok(c)
        };
        let (verified, insecure_config) = (Arc::new(config(false)?), Arc::new(config(true)?));
        if !insecure.is_empty() {
            tracing::warn!(hosts = ?options.insecure_hosts, "upstream certificate verification is disabled for these hosts");
        }
        Ok(UpstreamTls {
            verified,
            insecure_config,
            insecure,
            handshake_timeout: options.handshake_timeout,
            anchors,
        })
    }

    /// Number of trust anchors in use.
    pub fn anchor_count(&self) -> usize {
        self.anchors
    }

    /// The ALPN protocols the proxy carries end to end (the configs' usual offer).
    pub fn carried_alpn(&self) -> &[Vec<u8>] {
        &self.verified.alpn_protocols
    }

    /// The client's offer restricted to what we carry, in the client's order.
    pub fn filter_alpn(&self, client_offer: &[Vec<u8>]) -> Vec<Vec<u8>> {
        client_offer
            .iter()
            .filter(|p| self.carried_alpn().contains(p))
            .cloned()
            .collect()
    }

    /// Whether `target` is on the insecure list.
    pub fn is_insecure(&self, target: &ServerTarget) -> bool {
        self.insecure.contains(target)
    }

    /// TLS over `tcp` (already connected to the original destination) for server name `sni`
    /// (a DNS name or an IP literal), offering `alpn`; verified unless the host is insecure-listed.
    pub async fn connect<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        tcp: T,
        sni: &str,
        alpn: &[Vec<u8>],
    ) -> Result<(UpstreamTlsStream<T>, UpstreamCert), UpstreamTlsError> {
        let target = validate_server_name(sni).map_err(UpstreamTlsError::BadName)?;
        self.connect_target(tcp, &target, alpn).await
    }

    /// [`UpstreamTls::connect`] for an already validated name.
    pub async fn connect_target<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        tcp: T,
        target: &ServerTarget,
        alpn: &[Vec<u8>],
    ) -> Result<(UpstreamTlsStream<T>, UpstreamCert), UpstreamTlsError> {
        let insecure = self.is_insecure(target);
        let base = if insecure { &self.insecure_config } else { &self.verified };
        let config = if base.alpn_protocols.as_slice() == alpn {
            base.clone()
        } else {
            // The clone shares the verifier and the session store: resumption still applies.
            let mut c = (**base).clone();
            c.alpn_protocols = alpn.to_vec();
            Arc::new(c)
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let server_name = target.server_name();
        let recording = Recording { inner: connector.connect(server_name, tcp), seen: Some(Seen::default()) };
        let (result, seen) = match tokio::time::timeout(self.handshake_timeout, recording).await {
            Err(_) => return Err(UpstreamTlsError::Timeout(self.handshake_timeout)),
            Ok(done) => done,
        };
        let stream = match result {
            Ok(stream) => stream,
            Err(e) => {
                if let (Some(failure), false) = (&seen.failure, insecure) {
                    let presented = seen.end_entity.as_deref().map(CertSummary::from_der);
                    return Err(UpstreamTlsError::Certificate {
                        server_name: target.to_string(),
                        problem: categorise(failure, seen.end_entity.as_deref()),
                        presented,
                    });
                }
                return Err(match rustls_error(&e) {
                    Some(tls) => UpstreamTlsError::Tls(tls),
                    None => UpstreamTlsError::Io(e),
                });
            }
        };
        let (_, conn) = stream.get_ref();
        let end_entity = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .or(seen.end_entity.clone());
        let cert = match end_entity.as_deref() {
            Some(der) => CertSummary::from_der(der),
            // rustls always has the peer chain after a successful handshake.
            None => {
                return Err(UpstreamTlsError::Tls(
                    rustls::Error::NoCertificatesPresented,
                ));
            }
        };
        let overridden = seen
            .failure
            .as_ref()
            .map(|f| categorise(f, end_entity.as_deref()));
        if let Some(problem) = &overridden {
            tracing::warn!(server = %target, %problem, "upstream certificate accepted only because the host is insecure-listed");
        }
        let info = UpstreamCert {
            server_name: target.to_string(),
            cert,
            version: version_name(conn.protocol_version()),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            insecure,
            overridden,
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        };
        Ok((stream, info))
    }
}

fn read_pem_certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let io = |source| TlsError::Io {
        path: path.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_ANCHOR_FILE {
        return Err(TlsError::Anchors(format!(
            "{} is larger than {MAX_ANCHOR_FILE} bytes",
            path.display()
        )));
    }
    let data = std::fs::read(path).map_err(io)?;
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut data.as_slice()) {
        certs.push(item.map_err(|e| TlsError::Anchors(format!("{}: {e}", path.display())))?);
    }
    if certs.is_empty() {
        return Err(TlsError::Anchors(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// Maps a verification failure to the audit's categories.
fn categorise(err: &rustls::Error, end_entity: Option<&[u8]>) -> CertProblem {
    let self_issued = end_entity
        .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
        .is_some_and(|(_, c)| c.issuer().as_raw() == c.subject().as_raw());
    match err {
        rustls::Error::InvalidCertificate(ce) => match ce {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                CertProblem::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                CertProblem::NotYetValid
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                CertProblem::NotValidForName
            }
            CertificateError::Revoked => CertProblem::Revoked,
            CertificateError::UnknownIssuer if self_issued => CertProblem::SelfSigned,
            CertificateError::UnknownIssuer => CertProblem::UnknownIssuer,
            _ if self_issued => CertProblem::SelfSigned,
            other => CertProblem::Other(format!("{other:?}")),
        },
        other => CertProblem::Other(other.to_string()),
    }
}

#[derive(Debug, Default)]
struct Seen {
    end_entity: Option<Vec<u8>>,
    failure: Option<rustls::Error>,
}

thread_local! {
    /// What the verifier saw during the poll of one [`Recording`] on this thread.
    static SEEN: std::cell::RefCell<Option<Seen>> = const { std::cell::RefCell::new(None) };
}

/// Drives a handshake with its own [`Seen`] installed for each poll: rustls calls the
/// (shared) verifier synchronously inside a poll, so it records into this connection's
/// `Seen`, never another's.
struct Recording<F> {
    inner: F,
    seen: Option<Seen>,
}

impl<F: std::future::Future + Unpin> std::future::Future for Recording<F> {
    type Output = (F::Output, Seen);

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        SEEN.with(|s| *s.borrow_mut() = this.seen.take());
        let polled = std::pin::Pin::new(&mut this.inner).poll(cx);
        this.seen = SEEN.with(|s| s.borrow_mut().take());
        polled.map(|out| (out, this.seen.take().unwrap_or_default()))
    }
}

/// Delegates to webpki, recording (into the polling [`Recording`]'s `Seen`) what was
/// presented and why it failed, and telling the session store of each full verification;
/// for insecure-listed hosts it accepts a failed chain (signatures over the handshake are
/// still checked).
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    insecure: bool,
    sessions: Option<Arc<crate::resume::SessionStore>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        SEEN.with(|s| {
            if let Some(seen) = s.borrow_mut().as_mut() {
                seen.end_entity = Some(end_entity.to_vec());
                seen.failure = result.as_ref().err().cloned();
            }
        });
        match result {
            Ok(ok) => {
                if let Some(store) = &self.sessions {
                    store.verified(server_name, end_entity);
                }
                Ok(ok)
            }
            Err(e) => {
                if self.insecure {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(e)
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
