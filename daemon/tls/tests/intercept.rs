//! End-to-end interception on loopback: a rustls client trusting the local CA, the crate in the
//! middle, a rustls server whose certificate comes from a test-only upstream CA.

mod support;

use std::time::Duration;

use mcpwatch_tls::rustls::pki_types::ServerName;
use mcpwatch_tls::rustls::{self, AlertDescription};
use mcpwatch_tls::{
    CertProblem, DistrustReason, DistrustTracker, HandshakeError, InterceptError, Side,
    UpstreamTlsError, intercept, read_client_hello,
};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const H1: &[u8] = b"http/1.1";
const H2: &[u8] = b"h2";

#[tokio::test]
async fn intercepts_end_to_end_and_reports_tls_details() {
    let env = Env::new();
    let upstream_cert = env
        .upstream_ca
        .issue("mcp.vendor.example", &["mcp.vendor.example"], None);
    // The upstream would pick h2 if offered: it must not be, since we only carry http/1.1.
    let (up_addr, up) = upstream_server(&upstream_cert, &[H2, H1]).await;
    let (proxy_addr, proxy) = env.intercepting_proxy(up_addr).await;

    let client = guard(run_client(
        proxy_addr,
        env.client_trusting_local_ca(&[H2, H1]),
        "mcp.vendor.example",
    ))
    .await;
    assert_eq!(client.result.as_ref().unwrap(), b"echo:ping\n");
    assert_eq!(client.alpn.as_deref(), Some(H1));

    let info = guard(proxy).await.unwrap().unwrap();
    assert_eq!(info.sni.as_deref(), Some("mcp.vendor.example"));
    assert_eq!(info.server_name, "mcp.vendor.example");
    assert_eq!(info.client_alpn, vec![H2.to_vec(), H1.to_vec()]);
    assert_eq!(info.alpn.as_deref(), Some(H1));
    assert_eq!(info.client_version, "TLSv1.3");
    assert_eq!(info.upstream.version, "TLSv1.3");
    assert_eq!(info.upstream.alpn.as_deref(), Some(H1));
    assert_eq!(
        info.upstream.cert.fingerprint_sha256,
        upstream_cert.fingerprint()
    );
    assert_eq!(info.upstream.cert.subject, "CN=mcp.vendor.example");
    assert_eq!(info.upstream.cert.issuer, "CN=mcpwatch test upstream CA");
    assert!(!info.upstream.insecure);
    assert_eq!(info.upstream.overridden, None);

    let report = guard(up).await.unwrap();
    assert!(report.handshake_ok);
    assert_eq!(report.alpn.as_deref(), Some(H1));

    // The client saw our leaf (chained to the local CA, own key), not the upstream certificate.
    let leaf = client.peer_leaf.unwrap();
    assert_ne!(
        mcpwatch_tls::fingerprint_sha256(&leaf),
        upstream_cert.fingerprint()
    );
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert_ne!(parsed.public_key().raw, env.ca.public_key_der().as_slice());
    assert_eq!(
        parsed.issuer().to_string(),
        "CN=mcpwatch local CA (testhost), O=mcpwatch"
    );
    assert_eq!(env.issuer.minted_count(), 1);
}

#[tokio::test]
async fn client_without_alpn_and_reused_leaf() {
    let env = Env::new();
    let cert = env
        .upstream_ca
        .issue("mcp.vendor.example", &["mcp.vendor.example"], None);
    for round in 0..2 {
        let (up_addr, up) = upstream_server(&cert, &[H1]).await;
        let (proxy_addr, proxy) = env.intercepting_proxy(up_addr).await;
        let client = guard(run_client(
            proxy_addr,
            env.client_trusting_local_ca(&[]),
            "mcp.vendor.example",
        ))
        .await;
        assert_eq!(
            client.result.as_ref().unwrap(),
            b"echo:ping\n",
            "round {round}"
        );
        assert_eq!(client.alpn, None);
        let info = guard(proxy).await.unwrap().unwrap();
        assert_eq!(info.alpn, None);
        assert!(info.client_alpn.is_empty());
        assert_eq!(guard(up).await.unwrap().alpn, None);
    }
    // The second connection reused the cached leaf config.
    assert_eq!(env.issuer.minted_count(), 1);
}

#[tokio::test]
async fn no_sni_uses_the_destination_ip() {
    let env = Env::new();
    let cert = env.upstream_ca.issue("loopback", &["127.0.0.1"], None);
    let (up_addr, up) = upstream_server(&cert, &[H1]).await;
    let (proxy_addr, proxy) = env.intercepting_proxy(up_addr).await;
    // rustls sends no SNI for an IP address (RFC 6066).
    let client = guard(run_client(
        proxy_addr,
        env.client_trusting_local_ca(&[H1]),
        "127.0.0.1",
    ))
    .await;
    assert_eq!(client.result.as_ref().unwrap(), b"echo:ping\n");
    let info = guard(proxy).await.unwrap().unwrap();
    assert_eq!(info.sni, None);
    assert_eq!(info.server_name, "127.0.0.1");
    let (_, leaf) =
        x509_parser::parse_x509_certificate(client.peer_leaf.as_ref().unwrap()).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap().value;
    assert!(matches!(
        san.general_names[..],
        [x509_parser::extensions::GeneralName::IPAddress(&[
            127, 0, 0, 1
        ])]
    ));
    assert!(guard(up).await.unwrap().handshake_ok);
}

/// One refused-upstream scenario: the client must fail with a fatal alert, the proxy must say
/// why (upstream side), and no leaf may exist.
async fn assert_upstream_refused(env: &Env, cert: &ServerCert, sni: &str, want: CertProblem) {
    let (up_addr, up) = upstream_server(cert, &[H1]).await;
    let (proxy_addr, proxy) = env.intercepting_proxy(up_addr).await;
    let client = guard(run_client(
        proxy_addr,
        env.client_trusting_local_ca(&[H1]),
        sni,
    ))
    .await;
    assert!(client.result.is_err(), "{sni}: client must not get through");
    assert_eq!(
        client.tls_error(),
        Some(rustls::Error::AlertReceived(
            AlertDescription::HandshakeFailure
        )),
        "{sni}"
    );
    assert!(client.peer_leaf.is_none());

    let err = guard(proxy).await.unwrap().unwrap_err();
    assert_eq!(err.side(), Side::Upstream, "{err}");
    match &err {
        InterceptError::Upstream(UpstreamTlsError::Certificate {
            problem,
            presented,
            server_name,
        }) => {
            assert_eq!(*problem, want, "{sni}");
            assert_eq!(server_name, sni);
            assert_eq!(
                presented.as_ref().unwrap().fingerprint_sha256,
                cert.fingerprint()
            );
        }
        other => panic!("{sni}: expected a certificate refusal, got {other:?}"),
    }
    assert!(err.to_string().starts_with("upstream: "), "{err}");
    assert_eq!(
        env.issuer.minted_count(),
        0,
        "{sni}: no leaf may be minted for a refused upstream"
    );
    assert_eq!(env.issuer.cache_len(), 0);
    // Nothing but the handshake reached the upstream: no application data was forwarded.
    let report = guard(up).await.unwrap();
    assert!(!report.handshake_ok);
}

#[tokio::test]
async fn refuses_expired_wrong_name_self_signed_and_unknown_issuer() {
    let env = Env::new();
    let expired = env.upstream_ca.issue(
        "mcp.vendor.example",
        &["mcp.vendor.example"],
        Some(((2015, 1, 1), (2015, 4, 12))),
    );
    assert_upstream_refused(&env, &expired, "mcp.vendor.example", CertProblem::Expired).await;

    let wrong = env
        .upstream_ca
        .issue("other.example", &["other.example"], None);
    assert_upstream_refused(
        &env,
        &wrong,
        "mcp.vendor.example",
        CertProblem::NotValidForName,
    )
    .await;

    let selfsigned = self_signed("mcp.vendor.example", &["mcp.vendor.example"]);
    assert_upstream_refused(
        &env,
        &selfsigned,
        "mcp.vendor.example",
        CertProblem::SelfSigned,
    )
    .await;

    let stranger = TestCa::new(env.dir.path(), "untrusted CA");
    let unknown = stranger.issue("mcp.vendor.example", &["mcp.vendor.example"], None);
    assert_upstream_refused(
        &env,
        &unknown,
        "mcp.vendor.example",
        CertProblem::UnknownIssuer,
    )
    .await;

    // A certificate signed by our own local CA is never a valid upstream (no loops, no
    // laundering): the verifier was built with the local CA excluded.
    let config = env
        .issuer
        .server_config_for("mcp.vendor.example", &[H1.to_vec()])
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await;
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let err = guard(
        env.upstream
            .connect(tcp, "mcp.vendor.example", &[H1.to_vec()]),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.cert_problem(),
        Some(&CertProblem::UnknownIssuer),
        "{err}"
    );
    let _ = server.await;
}

#[tokio::test]
async fn insecure_host_is_explicit_and_reported() {
    let env = Env::with_insecure(&["mcp.vendor.example"]);
    let selfsigned = self_signed("mcp.vendor.example", &["mcp.vendor.example"]);
    let (up_addr, up) = upstream_server(&selfsigned, &[H1]).await;
    let (proxy_addr, proxy) = env.intercepting_proxy(up_addr).await;
    let client = guard(run_client(
        proxy_addr,
        env.client_trusting_local_ca(&[H1]),
        "mcp.vendor.example",
    ))
    .await;
    assert_eq!(client.result.as_ref().unwrap(), b"echo:ping\n");
    let info = guard(proxy).await.unwrap().unwrap();
    assert!(info.upstream.insecure);
    assert_eq!(info.upstream.overridden, Some(CertProblem::SelfSigned));
    assert_eq!(
        info.upstream.cert.fingerprint_sha256,
        selfsigned.fingerprint()
    );
    assert!(guard(up).await.unwrap().handshake_ok);

    // Another host on the same verifier is still verified.
    let selfsigned2 = self_signed("other.example", &["other.example"]);
    assert_upstream_refused(
        &Env::with_insecure(&["mcp.vendor.example"]),
        &selfsigned2,
        "other.example",
        CertProblem::SelfSigned,
    )
    .await;
}

#[tokio::test]
async fn client_that_distrusts_our_ca_is_classified() {
    let env = Env::new();
    let cert = env
        .upstream_ca
        .issue("mcp.vendor.example", &["mcp.vendor.example"], None);
    let (up_addr, _up) = upstream_server(&cert, &[H1]).await;
    let (proxy_addr, proxy) = env.intercepting_proxy(up_addr).await;
    // This client trusts the upstream's CA but not ours.
    let config = client_config(&[env.upstream_ca.der()], &[H1]);
    let client = guard(run_client(proxy_addr, config, "mcp.vendor.example")).await;
    assert!(
        matches!(
            client.tls_error(),
            Some(rustls::Error::InvalidCertificate(_))
        ),
        "{:?}",
        client.result
    );
    let err = guard(proxy).await.unwrap().unwrap_err();
    assert_eq!(err.side(), Side::Client);
    assert_eq!(
        err.distrust(),
        Some(DistrustReason::Alert(AlertDescription::UnknownCA)),
        "{err}"
    );
    assert!(matches!(
        err,
        InterceptError::Client {
            error: HandshakeError::AlertReceived(AlertDescription::UnknownCA),
            ..
        }
    ));

    let tracker = DistrustTracker::new(Default::default());
    let now = std::time::Instant::now();
    let client = mcpwatch_tls::ClientProcess { pid: 4242, start_ticks: 17 };
    if err.distrust().is_some() {
        tracker.record(client, "/usr/bin/node", "mcp.vendor.example", now);
    }
    assert!(tracker.is_backed_off(client, "mcp.vendor.example", now));
}

#[tokio::test]
async fn client_hanging_up_after_our_certificate_is_classified() {
    let env = Env::new();
    let cert = env
        .upstream_ca
        .issue("mcp.vendor.example", &["mcp.vendor.example"], None);
    let (up_addr, _up) = upstream_server(&cert, &[H1]).await;
    let (proxy_addr, proxy) = env.intercepting_proxy(up_addr).await;
    let hello = rustls_client_hello(ServerName::try_from("mcp.vendor.example").unwrap(), &[H1]);
    let mut tcp = TcpStream::connect(proxy_addr).await.unwrap();
    tcp.write_all(&hello).await.unwrap();
    // Read the start of our server flight, then vanish without an alert.
    let mut buf = [0u8; 5];
    guard(tcp.read_exact(&mut buf)).await.unwrap();
    assert_eq!(buf[0], 0x16, "server flight starts with a handshake record");
    drop(tcp);
    let err = guard(proxy).await.unwrap().unwrap_err();
    assert_eq!(
        err.distrust(),
        Some(DistrustReason::ClosedAfterServerFlight),
        "{err}"
    );
}

#[tokio::test]
async fn legacy_client_is_refused_before_upstream_is_touched() {
    let env = Env::new();
    let (up_addr, up_bytes, _h) = counting_listener().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let raw = RawHello {
        version: 0x0301,
        suites: &[0x0005, 0x000a],
        sni: Some(b"mcp.vendor.example"),
        alpn: &[],
        signature_algorithms: true,
    };
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&raw.bytes()).await.unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    let hello = guard(read_client_hello(tcp, Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(!hello.shares_cipher_suite());
    let up_tcp = TcpStream::connect(up_addr).await.unwrap();
    let err = guard(intercept(hello, up_tcp, &env.issuer, &env.upstream))
        .await
        .unwrap_err();
    assert!(matches!(err, InterceptError::LegacyClient), "{err}");
    assert_eq!(err.side(), Side::Client);
    let reply = guard(read_all(&mut client)).await;
    assert_eq!(
        reply,
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 40],
        "fatal handshake_failure alert"
    );
    assert_eq!(up_bytes.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(env.issuer.minted_count(), 0);
}

#[tokio::test]
async fn upstream_options_are_validated() {
    use mcpwatch_tls::{TlsError, UpstreamOptions, UpstreamTls};
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificates here\n").unwrap();
    let opts = |anchors: Vec<std::path::PathBuf>, insecure: Vec<String>| UpstreamOptions {
        extra_anchors_pem: anchors,
        use_system_roots: false,
        insecure_hosts: insecure,
        ..UpstreamOptions::default()
    };
    assert!(matches!(
        UpstreamTls::new(opts(vec![], vec![])),
        Err(TlsError::Anchors(_))
    ));
    assert!(matches!(
        UpstreamTls::new(opts(vec![empty], vec![])),
        Err(TlsError::Anchors(_))
    ));
    assert!(matches!(
        UpstreamTls::new(opts(vec![dir.path().join("missing.pem")], vec![])),
        Err(TlsError::Io { .. })
    ));
    let ca = TestCa::new(dir.path(), "anchor");
    assert!(matches!(
        UpstreamTls::new(opts(vec![ca.pem_path.clone()], vec!["*.bad".into()])),
        Err(TlsError::BadOptions(_))
    ));
    let ok = UpstreamTls::new(opts(vec![ca.pem_path.clone()], vec!["mcp.example".into()])).unwrap();
    assert_eq!(ok.anchor_count(), 1);
    assert_eq!(
        ok.filter_alpn(&[H2.to_vec(), H1.to_vec(), b"spdy/3".to_vec()]),
        vec![H1.to_vec()]
    );
    // The system store loads alongside extra anchors (whatever this machine has).
    let with_system = UpstreamTls::new(UpstreamOptions {
        extra_anchors_pem: vec![ca.pem_path.clone()],
        ..UpstreamOptions::default()
    })
    .unwrap();
    assert!(with_system.anchor_count() >= 1);
    // Excluding an anchor removes it.
    let excluded = UpstreamTls::new(UpstreamOptions {
        exclude_anchors_der: vec![ca.der().to_vec()],
        ..opts(vec![ca.pem_path.clone()], vec![])
    });
    assert!(matches!(excluded, Err(TlsError::Anchors(_))));
}

/// One intercepted connection through `env` to a server with `config`: what the proxy saw.
async fn through(env: &Env, config: std::sync::Arc<rustls::ServerConfig>, sni: &str) -> Result<mcpwatch_tls::TlsInfo, InterceptError> {
    let (up_addr, up) = upstream_server_with(config).await;
    let (proxy_addr, proxy) = env.intercepting_proxy(up_addr).await;
    let client = guard(run_client(proxy_addr, env.client_trusting_local_ca(&[H1]), sni)).await;
    let info = guard(proxy).await.unwrap();
    if info.is_ok() {
        assert_eq!(client.result.as_ref().unwrap(), b"echo:ping\n");
    }
    let _ = guard(up).await;
    info
}

#[tokio::test]
async fn upstream_sessions_resume_only_from_a_verification_still_standing() {
    let env = Env::new();
    let cert = env.upstream_ca.issue("mcp.vendor.example", &["mcp.vendor.example"], None);
    let server = cert.server_config(&[H1]);
    let mut resumed = Vec::new();
    for _ in 0..3 {
        let info = through(&env, server.clone(), "mcp.vendor.example").await.unwrap();
        // A resumed session still reports the certificate its full handshake verified.
        assert_eq!(info.upstream.cert.fingerprint_sha256, cert.fingerprint());
        resumed.push(info.upstream.resumed);
    }
    assert_eq!(resumed, [false, true, true], "the first connection verifies, later ones resume");

    // The host now presents another certificate (and knows none of our sessions): a full,
    // verified handshake, which retires every ticket of the old one.
    let replaced = env.upstream_ca.issue("mcp.vendor.example", &["mcp.vendor.example"], None);
    let info = through(&env, replaced.server_config(&[H1]), "mcp.vendor.example").await.unwrap();
    assert!(!info.upstream.resumed);
    assert_eq!(info.upstream.cert.fingerprint_sha256, replaced.fingerprint());
    // The old server would still take its ticket; it is not offered.
    let info = through(&env, server.clone(), "mcp.vendor.example").await.unwrap();
    assert!(!info.upstream.resumed, "a ticket outlived the verification it came from");

    // Resumption off: every connection is verified in full.
    let off = Env::with_upstream(&[], Duration::ZERO);
    let cert = off.upstream_ca.issue("mcp.vendor.example", &["mcp.vendor.example"], None);
    let server = cert.server_config(&[H1]);
    for _ in 0..2 {
        assert!(!through(&off, server.clone(), "mcp.vendor.example").await.unwrap().upstream.resumed);
    }
}

#[tokio::test]
async fn an_expired_certificate_is_never_hidden_by_a_resumed_session() {
    let env = Env::new();
    let cert = env.upstream_ca.issue_expiring_in("mcp.vendor.example", &["mcp.vendor.example"], 2);
    let server = cert.server_config(&[H1]);
    let first = through(&env, server.clone(), "mcp.vendor.example").await.unwrap();
    assert!(!first.upstream.resumed);
    let second = through(&env, server.clone(), "mcp.vendor.example").await.unwrap();
    assert!(second.upstream.resumed, "the precondition: this server resumes our sessions");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    // The server would resume (its ticket is fresh), but the certificate has expired since
    // it was verified: verified again, and refused.
    match through(&env, server, "mcp.vendor.example").await {
        Err(InterceptError::Upstream(UpstreamTlsError::Certificate { problem, presented, .. })) => {
            assert_eq!(problem, CertProblem::Expired);
            assert_eq!(presented.unwrap().fingerprint_sha256, cert.fingerprint());
        }
        other => panic!("expected an expired-certificate refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_insecure_host_is_verified_and_reported_on_every_connection() {
    let env = Env::with_insecure(&["mcp.vendor.example"]);
    let selfsigned = self_signed("mcp.vendor.example", &["mcp.vendor.example"]);
    let server = selfsigned.server_config(&[H1]);
    for round in 0..2 {
        let info = through(&env, server.clone(), "mcp.vendor.example").await.unwrap();
        assert!(!info.upstream.resumed, "round {round}");
        assert_eq!(info.upstream.overridden, Some(CertProblem::SelfSigned), "round {round}: what was overridden is said every time");
    }
}
