//! `hyper-floor`: the bench's measure of what mcpwatchd's plumbing costs before it does
//! any of its own work.
//!
//! Why it exists: the issue-9 bars compare mcpwatchd with nginx, which parses HTTP and
//! forwards bytes. mcpwatchd is built on hyper (a decision of the project), on proxy
//! threads that each run a current-thread tokio runtime, with hyper's HTTP/1 server on
//! the client side and hyper's HTTP/1 client on one upstream connection per client
//! connection, driven in the client connection's task. This target is exactly that stack
//! and nothing else: no JSON-RPC parse, no policy, no audit record, no inspection, no eBPF
//! lookup. Its ratio to nginx is the floor the daemon's ratio cannot go below without
//! replacing that stack; the gap between it and `mcpwatchd` is what mcpwatch's own work
//! costs. Run by `bench` as `xtask bench-floor --listen A --upstream B` (internal).

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

#[derive(Debug, clap::Args)]
pub struct FloorArgs {
    /// Where to listen (loopback).
    #[arg(long)]
    listen: SocketAddr,
    /// The server to forward to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Proxy threads (mcpwatchd runs one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

type Body = BoxBody<Bytes, hyper::Error>;

/// Serve until killed: one accepting thread hands connections round-robin to `threads`
/// proxy threads, each a current-thread runtime (as `mcpwatchd`'s `proxy::workers`).
pub fn run(args: &FloorArgs) -> anyhow::Result<()> {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("floor-{i}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("floor runtime");
                let _ = tx.send(rt.handle().clone());
                rt.block_on(std::future::pending::<()>());
            })
            .context("starting a floor proxy thread")?;
        handles.push(rx.recv().context("floor proxy thread did not start")?);
    }
    let listener = std::net::TcpListener::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    println!("ready {}", args.listen);
    let upstream = args.upstream;
    for (n, conn) in listener.incoming().enumerate() {
        let Ok(client) = conn else { continue };
        let _ = client.set_nodelay(true);
        let _ = client.set_nonblocking(true);
        handles[n % handles.len()].spawn(async move {
            if let Ok(client) = tokio::net::TcpStream::from_std(client) {
                serve(client, upstream).await;
            }
        });
    }
    Ok(())
}

/// One client connection: dial the upstream first (as mcpwatchd's eager connect), then
/// serve the client with hyper while the upstream connection is polled in this task.
async fn serve(client: tokio::net::TcpStream, upstream: SocketAddr) {
    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else { return };
    let _ = up.set_nodelay(true);
    let Ok((sender, conn)) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(false)
        .title_case_headers(false)
        .handshake::<_, Body>(TokioIo::new(up))
        .await
    else {
        return;
    };
    let sender = std::sync::Arc::new(tokio::sync::Mutex::new(sender));
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let sender = sender.clone();
        async move { Ok::<_, Infallible>(forward(&sender, req).await) }
    });
    // The same settings as mcpwatchd's client side (daemon/src/proxy/http.rs, `serve_io_keeping`), with
    // header names lower-cased as its default `[http] header_case = "auto"` passes them toward a
    // destination known to speak MCP: a copy on purpose, so the floor measures the daemon's
    // stack; change both together.
    let served = hyper::server::conn::http1::Builder::new()
        .preserve_header_case(false)
        .title_case_headers(false)
        .keep_alive(true)
        .auto_date_header(false)
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(30))
        .serve_connection(TokioIo::new(client), svc);
    tokio::pin!(served);
    let mut conn = std::pin::pin!(conn);
    let mut up_done = false;
    loop {
        tokio::select! {
            _ = &mut served => return,
            _ = &mut conn, if !up_done => up_done = true,
        }
    }
}

async fn forward(sender: &tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Body>>, req: Request<Incoming>) -> Response<Body> {
    let req = req.map(|b| b.boxed());
    let mut s = sender.lock().await;
    let sent = match s.ready().await {
        Ok(()) => s.send_request(req).await,
        Err(e) => Err(e),
    };
    match sent {
        Ok(resp) => resp.map(|b| b.boxed()),
        Err(_) => {
            let mut r = Response::new(http_body_util::Empty::new().map_err(|n: Infallible| match n {}).boxed());
            *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            r
        }
    }
}
