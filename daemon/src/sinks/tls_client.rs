//! The verified TLS client every sink uses (syslog over TLS, HTTPS for HEC and Loki).
//!
//! One place decides how a sink trusts its collector: the PEM anchors of `ca_file` when
//! given, else the system roots; always full verification (there is no option to turn
//! it off: an audit trail sent to an unverified peer is an audit trail sent to anyone).

use std::path::Path;
use std::sync::Arc;

use mcpwatch_tls::{rustls, tokio_rustls};

/// A connector trusting `ca_file` (or the system roots). `what` names the config key in
/// errors (`sinks.hec`).
pub fn connector(ca_file: Option<&Path>, what: &str) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{what}.ca_file {}: {e}", path.display()))?;
            for c in certs {
                roots.add(c).map_err(|e| format!("{what}.ca_file {}: {e}", path.display()))?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    if roots.is_empty() {
        return Err(format!("{what}: no trust anchors for TLS"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{what}: TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
