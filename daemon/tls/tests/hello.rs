//! ClientHello peeking: real hellos, hostile hellos, slowloris, and byte-identical pass-through.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use mcpwatch_tls::rustls::pki_types::ServerName;
use mcpwatch_tls::{
    HelloError, InterceptError, TlsAction, TlsScope, TlsScopeConfig, intercept, read_client_hello,
};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const H1: &[u8] = b"http/1.1";
const H2: &[u8] = b"h2";

/// Sends `bytes` (then half-closes if `close`), returns the server-side result.
async fn peek(
    bytes: Vec<u8>,
    close: bool,
    deadline: Duration,
) -> (Result<mcpwatch_tls::Hello, HelloError>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    client.write_all(&bytes).await.unwrap();
    if close {
        client.shutdown().await.unwrap();
    }
    let (tcp, _) = listener.accept().await.unwrap();
    (guard(read_client_hello(tcp, deadline)).await, client)
}

#[tokio::test]
async fn real_rustls_hello_is_parsed_and_recorded() {
    let bytes = rustls_client_hello(
        ServerName::try_from("MCP.Vendor.Example").unwrap(),
        &[H2, H1],
    );
    let (hello, _client) = peek(bytes.clone(), false, Duration::from_secs(5)).await;
    let hello = hello.unwrap();
    assert_eq!(hello.sni(), Some("mcp.vendor.example"));
    assert_eq!(hello.alpn(), &[H2.to_vec(), H1.to_vec()]);
    assert!(hello.shares_cipher_suite());
    assert_eq!(hello.recorded(), bytes.as_slice());
    let (_tcp, recorded) = hello.into_passthrough();
    assert_eq!(recorded, bytes);
}

/// The outcome a hostile hello must have.
#[derive(Debug)]
enum Want {
    /// Parsed, with this SNI; then `intercept` must refuse it as a bad name (Some) or it carried
    /// no SNI at all (None).
    Parsed(Option<&'static str>),
    NotTls,
    Invalid,
    Truncated,
    Timeout,
    InvalidOrTooLarge,
}

#[tokio::test]
async fn hostile_hellos_end_cleanly_within_the_deadline() {
    let real = rustls_client_hello(ServerName::try_from("mcp.vendor.example").unwrap(), &[H1]);
    let label255 = vec![b'a'; 255];
    let name254 = {
        let mut n = Vec::new();
        for l in ["a", "b", "c"] {
            n.extend(std::iter::repeat_n(l.as_bytes()[0], 63));
            n.push(b'.');
        }
        n.extend(std::iter::repeat_n(b'd', 62));
        assert_eq!(n.len(), 254);
        n
    };
    let mut garbage_after_header = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    garbage_after_header.extend(std::iter::repeat_n(0x41, 64));
    let mut huge_record = vec![0x16, 0x03, 0x01, 0xff, 0xff];
    huge_record.extend(std::iter::repeat_n(0x01, 0xffff));

    let cases: Vec<(&str, Vec<u8>, bool, Want)> = vec![
        (
            "http request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            true,
            Want::NotTls,
        ),
        (
            "ssh banner",
            b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
            true,
            Want::NotTls,
        ),
        (
            "garbage after record header",
            garbage_after_header,
            true,
            Want::Invalid,
        ),
        (
            "truncated real hello",
            real[..real.len() / 2].to_vec(),
            true,
            Want::Truncated,
        ),
        (
            "record header only",
            real[..5].to_vec(),
            true,
            Want::Truncated,
        ),
        ("empty connection", Vec::new(), true, Want::Truncated),
        (
            "255-byte label sni",
            RawHello::modern(Some(&label255)).bytes(),
            false,
            Want::Invalid,
        ),
        (
            "254-byte sni",
            RawHello::modern(Some(&name254)).bytes(),
            false,
            Want::Invalid,
        ),
        (
            "nul in sni",
            RawHello::modern(Some(b"mcp\0.example")).bytes(),
            false,
            Want::Invalid,
        ),
        (
            "empty sni",
            RawHello::modern(Some(b"")).bytes(),
            false,
            Want::Invalid,
        ),
        (
            "no sni",
            RawHello::modern(None).bytes(),
            false,
            Want::Parsed(None),
        ),
        (
            "ip literal sni",
            RawHello::modern(Some(b"127.0.0.1")).bytes(),
            false,
            Want::Parsed(None),
        ),
        (
            "trailing-dot sni",
            RawHello::modern(Some(b"mcp.example.")).bytes(),
            false,
            Want::Parsed(Some("mcp.example.")),
        ),
        ("huge record", huge_record, true, Want::InvalidOrTooLarge),
        (
            "TLS 1.0 RC4/3DES without signature_algorithms",
            RawHello {
                version: 0x0301,
                suites: &[0x0005, 0x000a],
                sni: Some(b"x.example"),
                alpn: &[],
                signature_algorithms: false,
            }
            .bytes(),
            false,
            Want::Invalid,
        ),
        (
            "silent client (slowloris with nothing)",
            Vec::new(),
            false,
            Want::Timeout,
        ),
    ];

    let env = Env::new();
    for (what, bytes, close, want) in cases {
        let (result, mut client) = peek(bytes, close, Duration::from_millis(300)).await;
        match (&want, result) {
            (Want::NotTls, Err(HelloError::NotTls { .. }))
            | (Want::Invalid, Err(HelloError::Invalid(_)))
            | (Want::Truncated, Err(HelloError::Truncated { .. }))
            | (Want::Timeout, Err(HelloError::Timeout(_)))
            | (Want::InvalidOrTooLarge, Err(HelloError::Invalid(_) | HelloError::TooLarge)) => {}
            (Want::Parsed(sni), Ok(hello)) => {
                assert_eq!(hello.sni(), *sni, "{what}");
                let (up_addr, up_bytes, _h) = counting_listener().await;
                let up_tcp = TcpStream::connect(up_addr).await.unwrap();
                let err = guard(intercept(hello, up_tcp, &env.issuer, &env.upstream))
                    .await
                    .unwrap_err();
                match sni {
                    Some(_) => {
                        assert!(matches!(err, InterceptError::BadName(_)), "{what}: {err}");
                        assert_eq!(
                            up_bytes.load(Ordering::SeqCst),
                            0,
                            "{what}: upstream must not be contacted"
                        );
                    }
                    // No SNI: the destination IP is the name; the (non-TLS) upstream fails.
                    None => assert_eq!(err.side(), mcpwatch_tls::Side::Upstream, "{what}: {err}"),
                }
            }
            (want, got) => panic!("{what}: wanted {want:?}, got {got:?}"),
        }
        // Whatever the client got back, it is never a ServerHello: empty, or a fatal alert.
        let reply = guard(read_all(&mut client)).await;
        assert!(
            reply.is_empty() || reply[0] == 0x15,
            "{what}: unexpected reply {reply:02x?}"
        );
    }
    assert_eq!(env.issuer.minted_count(), 0);
}

#[tokio::test]
async fn slowloris_hello_ends_within_the_deadline() {
    let real = rustls_client_hello(ServerName::try_from("mcp.vendor.example").unwrap(), &[H1]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let dribble = tokio::spawn(async move {
        for byte in real {
            if client.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let result = guard(read_client_hello(tcp, Duration::from_millis(300))).await;
    assert!(matches!(result, Err(HelloError::Timeout(_))), "{result:?}");
    dribble.abort();
}

/// The pass-through path: the client talks TLS to the real upstream through us, sees the
/// upstream's own certificate, and every byte arrives unchanged in both directions.
#[tokio::test]
async fn passthrough_is_byte_identical() {
    let env = Env::new();
    let cert = env
        .upstream_ca
        .issue("login.example", &["login.example"], None);
    let (up_addr, up) = upstream_server(&cert, &[H1]).await;
    let scope = TlsScope::from_config(&TlsScopeConfig {
        always: vec!["*.mcp.example".into()],
        default: TlsAction::PassThrough,
        ..TlsScopeConfig::default()
    })
    .unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let proxy = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let hello = read_client_hello(tcp, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(scope.decide(hello.sni()), TlsAction::PassThrough);
        let (mut client, recorded) = hello.into_passthrough();
        let mut upstream = TcpStream::connect(up_addr).await.unwrap();
        upstream.write_all(&recorded).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        recorded
    });

    let client = guard(run_client(
        proxy_addr,
        client_config(&[env.upstream_ca.der()], &[H1]),
        "login.example",
    ))
    .await;
    assert_eq!(client.result.as_ref().unwrap(), b"echo:ping\n");
    assert_eq!(
        mcpwatch_tls::fingerprint_sha256(client.peer_leaf.as_ref().unwrap()),
        cert.fingerprint()
    );
    let recorded = guard(proxy).await.unwrap();
    let report = guard(up).await.unwrap();
    assert!(report.raw_read.starts_with(&recorded));
    assert_eq!(
        report.raw_read, client.raw_written,
        "client -> upstream bytes identical"
    );
    assert_eq!(
        client.raw_read, report.raw_written,
        "upstream -> client bytes identical"
    );
    assert_eq!(env.issuer.minted_count(), 0);
}
