//! TLS interception for mcpwatchd, built so that it never makes a connection less safe than it was.
//!
//! Most real MCP servers are remote and speak HTTPS; to see inside that traffic the daemon has to
//! terminate TLS with a certificate the client trusts and open its own verified TLS connection to
//! the original destination. This crate holds every piece of that, so the proxy only has to call
//! a few functions per connection:
//!
//! 1. [`read_client_hello`] peeks the ClientHello (SNI, ALPN) under one deadline, recording the
//!    bytes it read so the connection can still be passed through byte-identical.
//! 2. [`TlsScope::decide`] says whether to intercept or pass through (config lists + default);
//!    [`DistrustTracker`] says whether this process (pid + start time) and destination are in a
//!    back-off because the client refused our CA before.
//! 3. Pass-through: [`Hello::into_passthrough`] gives back the raw socket and the exact bytes
//!    already read; the proxy writes them upstream and relays bytes.
//! 4. Intercept: [`intercept`] connects upstream TLS with the same SNI and verifies it
//!    ([`UpstreamTls`]); only if that succeeds does it mint a leaf ([`LeafIssuer`], signed by the
//!    [`LocalCa`]) and finish the client's handshake. An invalid upstream certificate is never
//!    laundered into one the client trusts.
//!
//! Invariants:
//! - A leaf always has its own fresh key; the CA key signs, it is never served.
//! - No leaf is minted before the upstream certificate verified for the same name.
//! - Nothing from the network (SNI, ALPN, hello bytes, alerts) can panic this crate; every
//!   cache and buffer is bounded.
//! - Both legs are TLS 1.2 or 1.3 only (rustls implements nothing older).
//!
//! The CA can be rotated while the daemon runs ([`CaStore`]: the old certificate stays trusted in
//! a bundle until withdrawn) and carries X.509 name constraints limiting it to the hosts the
//! scope intercepts ([`constraints`]).
//!
//! Every error type says which side failed: the client, the upstream, or us ([`Side`]).

pub mod ca;
pub mod constraints;
pub mod decide;
pub mod distrust;
pub mod flow;
pub mod hello;
pub mod leaf;
pub mod resume;
pub mod rotation;
pub mod upstream;

use std::sync::{Arc, OnceLock};

pub use ca::{CA_EXPIRY_WARNING, CA_VALIDITY, CaCertInfo, LocalCa};
pub use decide::{HostPattern, TlsAction, TlsScope, TlsScopeConfig};
pub use distrust::{
    ClientProcess, DistrustEntry, DistrustOptions, DistrustReason, DistrustTracker, classify_client_abort,
};
pub use flow::{InterceptError, Intercepted, TlsInfo, intercept, intercept_over, intercept_serving};
pub use hello::{
    ClientTlsStream, HandshakeError, Hello, HelloError, HelloStream, read_client_hello,
};
pub use constraints::scope_constraints;
pub use rcgen::NameConstraints;
pub use rotation::{CaStore, Prepared, RetiredCa, RotationReason};
pub use leaf::{LeafIssuer, LeafOptions, ServerTarget, validate_server_name};
pub use upstream::{
    CertProblem, CertSummary, UpstreamCert, UpstreamOptions, UpstreamTls, UpstreamTlsError,
    UpstreamTlsStream,
};

/// Re-exported so callers name the same rustls types this crate uses.
pub use rustls;
pub use tokio_rustls;

/// ALPN id of HTTP/1.1, the protocol offered by default.
pub const ALPN_HTTP1_1: &[u8] = b"http/1.1";
/// ALPN id of HTTP/2; offer it only when the proxy carries HTTP/2 end to end.
pub const ALPN_H2: &[u8] = b"h2";

/// Which party a failure belongs to; the audit records it with the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The connecting client (its ClientHello, its handshake, its trust in our CA).
    Client,
    /// The original destination (its certificate, its handshake).
    Upstream,
    /// mcpwatchd itself (CA files, key generation, configuration).
    Internal,
}

/// Errors from the local parts of this crate: CA files, leaf minting, configuration.
///
/// [`TlsError::BadSni`] is the only variant caused by network input (a hostile or malformed
/// server name); everything else is [`Side::Internal`].
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("client: unusable server name {name:?}: {reason}")]
    BadSni { name: String, reason: &'static str },
    #[error("internal: unusable ALPN list: {0}")]
    BadAlpn(&'static str),
    #[error("internal: {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("internal: CA files in {dir}: {reason}")]
    CaFiles {
        dir: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "internal: CA key {path} has mode {mode:o}, readable beyond its owner; the key may have leaked, run `mcpwatch ca rotate`"
    )]
    KeyFileTooOpen { path: std::path::PathBuf, mode: u32 },
    #[error("internal: certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("internal: rustls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("internal: invalid options: {0}")]
    BadOptions(String),
    #[error("internal: invalid host pattern {pattern:?}: {reason}")]
    BadPattern {
        pattern: String,
        reason: &'static str,
    },
    #[error("internal: trust anchors: {0}")]
    Anchors(String),
}

impl TlsError {
    /// Which side this error belongs to.
    pub fn side(&self) -> Side {
        match self {
            TlsError::BadSni { .. } => Side::Client,
            _ => Side::Internal,
        }
    }
}

/// The one crypto provider this crate uses (ring), independent of any process-wide default so a
/// second provider feature elsewhere in the build can never make a config builder panic.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Colon-separated upper-case hex SHA-256 of `der` (the form browsers and openssl print).
pub fn fingerprint_sha256(der: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(der);
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, byte) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&hex::encode_upper([*byte]));
    }
    out
}

/// Seconds since the Unix epoch, for certificate validity arithmetic.
pub fn unix_now() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Renders a protocol version the way audit records show it ("TLSv1.3").
pub(crate) fn version_name(v: Option<rustls::ProtocolVersion>) -> String {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_string(),
    }
}
