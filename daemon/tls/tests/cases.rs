//! The `tls` cases of tests/fixtures/threats.jsonl, run against this crate.
//!
//! Every tls case is either exercised here or listed in `NOT_THIS_CRATE` with the crate that
//! owns it; a new tls case that is in neither fails the test, so the corpus cannot silently
//! outgrow the table.

mod support;

use std::time::Duration;

use mcpwatch_tls::rustls::{self, AlertDescription};
use mcpwatch_tls::{
    CertProblem, HelloError, InterceptError, TlsAction, TlsScope, TlsScopeConfig, UpstreamTlsError,
    intercept, read_client_hello,
};
use serde_json::Value;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const H1: &[u8] = b"http/1.1";

/// Cases that need the HTTP layer, the proxy or eBPF rather than this crate.
const NOT_THIS_CRATE: &[(&str, &str)] = &[
    (
        "TLS-004",
        "Host vs SNI mismatch is an HTTP-layer check in the proxy (421)",
    ),
    (
        "TLS-005",
        "cleartext HTTP to a remote MCP server is a proxy/policy decision",
    ),
    (
        "TLS-007",
        "QUIC/UDP 443 and Alt-Svc stripping belong to intercept (eBPF) and the HTTP layer",
    ),
];

#[tokio::test]
async fn tls_cases_from_the_threat_corpus() {
    let mut ran = Vec::new();
    for case in tls_cases() {
        let id = case["id"].as_str().expect("case id").to_string();
        match id.as_str() {
            "TLS-001" => self_signed_upstream(&case).await,
            "TLS-002" => expired_upstream(&case).await,
            "TLS-008" => legacy_client_hello(&case).await,
            "TLS-010" => non_mcp_passes_through(&case).await,
            other if NOT_THIS_CRATE.iter().any(|(n, _)| *n == other) => continue,
            other => {
                panic!("tls case {other} is neither exercised here nor listed in NOT_THIS_CRATE")
            }
        }
        ran.push(id);
    }
    assert_eq!(ran, ["TLS-001", "TLS-002", "TLS-008", "TLS-010"]);
}

/// Runs an intercept against an upstream presenting `cert` for `sni`; asserts the case's
/// "block": the client fails with a fatal alert, the error is upstream-side with `want`, and no
/// leaf was minted.
async fn assert_blocked(env: &Env, cert: &ServerCert, sni: &str, want: CertProblem, id: &str) {
    let (up_addr, _up) = upstream_server(cert, &[H1]).await;
    let (proxy_addr, proxy) = env.intercepting_proxy(up_addr).await;
    let client = guard(run_client(
        proxy_addr,
        env.client_trusting_local_ca(&[H1]),
        sni,
    ))
    .await;
    assert_eq!(
        client.tls_error(),
        Some(rustls::Error::AlertReceived(
            AlertDescription::HandshakeFailure
        )),
        "{id}"
    );
    match guard(proxy).await.unwrap() {
        Err(InterceptError::Upstream(UpstreamTlsError::Certificate { problem, .. })) => {
            assert_eq!(problem, want, "{id}")
        }
        other => panic!("{id}: expected an upstream certificate refusal, got {other:?}"),
    }
    assert_eq!(
        env.issuer.minted_count(),
        0,
        "{id}: a leaf would launder the upstream certificate"
    );
}

/// `"CN=mcp.vendor.example"` -> `"mcp.vendor.example"`.
fn cn(dn: &str) -> &str {
    dn.strip_prefix("CN=")
        .unwrap_or_else(|| panic!("unexpected DN {dn}"))
}

async fn self_signed_upstream(case: &Value) {
    let input = &case["input"];
    let sni = input["client_request"]
        .as_str()
        .and_then(|r| r.split("SNI=").nth(1))
        .expect("TLS-001 client_request names the SNI")
        .trim();
    let cert_spec = &input["upstream_cert"];
    assert_eq!(cert_spec["self_signed"], true);
    assert_eq!(cert_spec["subject"], cert_spec["issuer"]);
    assert_eq!(case["expected"]["action"], "block");
    let subject = cn(cert_spec["subject"].as_str().unwrap());
    let env = Env::new();
    assert_blocked(
        &env,
        &self_signed(subject, &[subject]),
        sni,
        CertProblem::SelfSigned,
        "TLS-001",
    )
    .await;
}

async fn expired_upstream(case: &Value) {
    let input = &case["input"];
    let sni = input["sni"].as_str().expect("TLS-002 sni");
    let not_after = input["upstream_cert"]["notAfter"]
        .as_str()
        .expect("TLS-002 notAfter");
    let date: Vec<i64> = not_after[..10]
        .split('-')
        .map(|p| p.parse().unwrap())
        .collect();
    let (y, m, d) = (date[0] as i32, date[1] as u8, date[2] as u8);
    assert_eq!(case["expected"]["action"], "block");
    let env = Env::new();
    let cert = env
        .upstream_ca
        .issue(sni, &[sni], Some(((y - 1, m, d), (y, m, d))));
    assert_blocked(&env, &cert, sni, CertProblem::Expired, "TLS-002").await;

    // "no insecure override unless an explicit per-host pin exists": with one, it goes through
    // and says so.
    let env = Env::with_insecure(&[sni]);
    let cert = env
        .upstream_ca
        .issue(sni, &[sni], Some(((y - 1, m, d), (y, m, d))));
    let (up_addr, _up) = upstream_server(&cert, &[H1]).await;
    let (proxy_addr, proxy) = env.intercepting_proxy(up_addr).await;
    let client = guard(run_client(
        proxy_addr,
        env.client_trusting_local_ca(&[H1]),
        sni,
    ))
    .await;
    assert_eq!(client.result.as_ref().unwrap(), b"echo:ping\n");
    let info = guard(proxy).await.unwrap().unwrap();
    assert!(info.upstream.insecure);
    assert_eq!(info.upstream.overridden, Some(CertProblem::Expired));
}

fn suite_code(name: &str) -> u16 {
    match name {
        "TLS_RSA_WITH_RC4_128_SHA" => 0x0005,
        "TLS_RSA_WITH_3DES_EDE_CBC_SHA" => 0x000a,
        other => panic!("TLS-008 names an unknown suite {other}"),
    }
}

async fn legacy_client_hello(case: &Value) {
    let spec = &case["input"]["client_hello"];
    let version = u16::from_str_radix(
        spec["legacy_version"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    assert!(spec["supported_versions"].is_null());
    let suites: Vec<u16> = spec["cipher_suites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| suite_code(s.as_str().unwrap()))
        .collect();
    assert_eq!(case["expected"]["action"], "block");
    let env = Env::new();

    // A faithful TLS 1.0 hello has no signature_algorithms extension: refused while peeking,
    // with rustls' handshake_failure alert.
    for with_sig_algs in [false, true] {
        let raw = RawHello {
            version,
            suites: &suites,
            sni: Some(b"mcp.vendor.example"),
            alpn: &[],
            signature_algorithms: with_sig_algs,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        client.write_all(&raw.bytes()).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let (up_addr, up_bytes, _h) = counting_listener().await;
        match guard(read_client_hello(tcp, Duration::from_secs(5))).await {
            Err(HelloError::Invalid(_)) => assert!(
                !with_sig_algs,
                "TLS-008: parse should only fail without sig algs"
            ),
            Ok(hello) => {
                assert!(with_sig_algs);
                let up_tcp = TcpStream::connect(up_addr).await.unwrap();
                let err = guard(intercept(hello, up_tcp, &env.issuer, &env.upstream))
                    .await
                    .unwrap_err();
                assert!(
                    matches!(err, InterceptError::LegacyClient),
                    "TLS-008: {err}"
                );
            }
            Err(other) => panic!("TLS-008: unexpected {other}"),
        }
        let reply = guard(read_all(&mut client)).await;
        assert!(
            reply.len() >= 7 && reply[0] == 0x15,
            "TLS-008: expected an alert, got {reply:02x?}"
        );
        let alert = reply[6];
        assert!(
            alert == u8::from(AlertDescription::HandshakeFailure)
                || alert == u8::from(AlertDescription::ProtocolVersion),
            "TLS-008: alert {alert}"
        );
        assert_eq!(up_bytes.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
    assert_eq!(env.issuer.minted_count(), 0);
}

async fn non_mcp_passes_through(case: &Value) {
    let sni = case["input"]["client_hello"]
        .as_str()
        .and_then(|s| s.strip_prefix("SNI="))
        .expect("TLS-010 SNI");
    assert_eq!(case["expected"]["action"], "pass");
    // A scope that intercepts only known MCP hosts.
    let scope = TlsScope::from_config(&TlsScopeConfig {
        always: vec!["mcp.vendor.example".into(), "*.mcp.example".into()],
        never: vec![],
        default: TlsAction::PassThrough,
        no_sni: None,
    })
    .unwrap();
    assert_eq!(scope.decide(Some(sni)), TlsAction::PassThrough);
    assert_eq!(
        scope.decide(Some("mcp.vendor.example")),
        TlsAction::Intercept
    );

    // And live: the hello is peeked, passed through, the client sees the real certificate.
    let env = Env::new();
    let cert = env.upstream_ca.issue(sni, &[sni], None);
    let (up_addr, up) = upstream_server(&cert, &[H1]).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let proxy = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let hello = read_client_hello(tcp, Duration::from_secs(10))
            .await
            .unwrap();
        let action = scope.decide(hello.sni());
        let (mut client, recorded) = hello.into_passthrough();
        let mut upstream = TcpStream::connect(up_addr).await.unwrap();
        upstream.write_all(&recorded).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        action
    });
    let client = guard(run_client(
        proxy_addr,
        client_config(&[env.upstream_ca.der()], &[H1]),
        sni,
    ))
    .await;
    assert_eq!(client.result.as_ref().unwrap(), b"echo:ping\n");
    assert_eq!(
        mcpwatch_tls::fingerprint_sha256(client.peer_leaf.as_ref().unwrap()),
        cert.fingerprint()
    );
    assert_eq!(guard(proxy).await.unwrap(), TlsAction::PassThrough);
    let report = guard(up).await.unwrap();
    assert_eq!(report.raw_read, client.raw_written);
    assert_eq!(
        env.issuer.minted_count(),
        0,
        "TLS-010: no leaf minted for a pass-through host"
    );
}
