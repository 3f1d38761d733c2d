//! Fuzz target: peeking the client's ClientHello (`mcpwatch_tls::hello`) over a real
//! loopback TCP connection, because `read_client_hello` takes a socket.
//!
//! Input: `[chunk byte][stream ...]`: the client writes the stream in chunks of
//! `chunk + 1` bytes, then half-closes. Properties:
//! - a parsed hello's `recorded()` bytes are exactly a prefix of what the client sent,
//!   `into_passthrough()` gives back the same bytes, and those bytes alone contain the
//!   same ClientHello (rustls parses the same SNI and ALPN from them): a passthrough
//!   relay hands the upstream exactly the hello the decision was made on;
//! - the SNI is lower-case and at most 32 ALPN protocols are kept;
//! - errors say what happened: `NotTls` names the real first byte, `Truncated` counts
//!   every byte sent, `TooLarge` only past the cap, and never a timeout (the client
//!   has closed, so a timeout is a hang).
//!
//! Sockets: one listener on 127.0.0.1 with an OS-assigned port; both ends close with
//! SO_LINGER 0 (RST), so a long run leaves no TIME_WAIT sockets behind.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mcpwatch_tls::hello::{HelloError, MAX_HELLO_BYTES, read_client_hello};
use mcpwatch_tls::rustls;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// Far longer than any hello takes on loopback; reaching it fails the run.
const DEADLINE: Duration = Duration::from_secs(5);

struct Env {
    rt: Runtime,
    listener: TcpListener,
    addr: SocketAddr,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        Env { rt, listener, addr }
    })
}

fuzz_target!(|input: &[u8]| {
    let [chunk, stream @ ..] = input else { return };
    let chunk = usize::from(*chunk) + 1;
    let env = env();
    env.rt.block_on(async {
        let client = TcpStream::connect(env.addr).await.unwrap();
        let (server, _) = env.listener.accept().await.unwrap();
        client.set_zero_linger().unwrap();
        server.set_zero_linger().unwrap();
        let writer = tokio::spawn(write_then_close(client, stream.to_vec(), chunk));
        let result = read_client_hello(server, DEADLINE).await;
        check(stream, result);
        // Unblock and drop the client (RST) whatever state it is in.
        writer.abort();
        let _ = writer.await;
    });
});

async fn write_then_close(mut client: TcpStream, stream: Vec<u8>, chunk: usize) {
    for piece in stream.chunks(chunk) {
        if client.write_all(piece).await.is_err() {
            return;
        }
        tokio::task::yield_now().await;
    }
    let _ = client.shutdown().await;
    // Keep the socket open (half-closed) until aborted, so the server sees EOF, not RST.
    std::future::pending::<()>().await;
}

fn check(stream: &[u8], result: Result<mcpwatch_tls::hello::Hello, HelloError>) {
    match result {
        Ok(hello) => {
            let recorded = hello.recorded().to_vec();
            assert!(!recorded.is_empty());
            assert!(stream.starts_with(&recorded), "recorded bytes are not what the client sent");
            let sni = hello.sni().map(str::to_owned);
            if let Some(name) = &sni {
                assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "SNI {name:?} not lower-case");
            }
            let alpn = hello.alpn().to_vec();
            assert!(alpn.len() <= 32);
            let (_tcp, passthrough) = hello.into_passthrough();
            assert_eq!(passthrough, recorded, "passthrough bytes differ from the recording");
            // The recorded bytes alone hold the same ClientHello.
            let mut acceptor = rustls::server::Acceptor::default();
            let mut rd = &passthrough[..];
            while !rd.is_empty() {
                if acceptor.read_tls(&mut rd).is_err() {
                    break;
                }
            }
            let accepted = match acceptor.accept() {
                Ok(Some(a)) => a,
                Ok(None) => panic!("recorded bytes do not hold a complete ClientHello"),
                Err((e, _)) => panic!("recorded bytes do not parse as the hello that was accepted: {e}"),
            };
            let hello2 = accepted.client_hello();
            assert_eq!(hello2.server_name().map(str::to_owned), sni);
            let alpn2: Vec<Vec<u8>> =
                hello2.alpn().map(|p| p.take(32).map(<[u8]>::to_vec).collect()).unwrap_or_default();
            assert_eq!(alpn2, alpn);
        }
        Err(HelloError::NotTls { first_byte }) => {
            assert_eq!(Some(&first_byte), stream.first());
            assert_ne!(first_byte, 0x16);
        }
        Err(HelloError::Truncated { received }) => {
            assert_eq!(received, stream.len(), "Truncated after {received} of {} bytes", stream.len());
        }
        Err(HelloError::TooLarge) => assert!(stream.len() > MAX_HELLO_BYTES),
        Err(HelloError::Timeout(d)) => panic!("no verdict within {d:?} although the client closed"),
        Err(HelloError::Invalid(_) | HelloError::Io(_)) => {}
    }
}
