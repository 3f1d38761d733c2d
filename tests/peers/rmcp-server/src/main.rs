//! A real MCP server on the official Rust SDK (`rmcp`), used as the backend of the
//! integration tests and of `cargo xtask bench`.
//!
//! It exists so that mcpwatch is measured and tested against an SDK it did not write:
//! the server speaks whatever protocol versions rmcp negotiates (2026-07-28 stateless
//! requests as well as the 2025 `initialize` handshake), serves Streamable HTTP with
//! JSON response bodies and no sessions (the cheapest mode, so the proxy's overhead
//! dominates a benchmark), and exposes two tools: `echo` and `add`.
//!
//! Usage: `mcpwatch-peer-rmcp --listen 127.0.0.1:18080 [--path /mcp] [--any-host] [--sessions]`.
//! It prints `ready <addr>` on stdout once the socket is bound.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::service::TowerToHyperService;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use std::io::Write as _;

/// Command line of the peer.
#[derive(Debug, Parser)]
#[command(
    name = "mcpwatch-peer-rmcp",
    about = "rmcp Streamable HTTP server (echo, add)"
)]
struct Cli {
    /// Address to listen on (loopback only in tests), e.g. 127.0.0.1:18080.
    #[arg(long)]
    listen: SocketAddr,
    /// HTTP path of the MCP endpoint.
    #[arg(long, default_value = "/mcp")]
    path: String,
    /// Accept any Host header (rmcp otherwise only accepts loopback names and the listen IP).
    #[arg(long)]
    any_host: bool,
    /// Keep rmcp's legacy session mode (Mcp-Session-Id, SSE bodies) for pre-2026 clients
    /// instead of the default stateless JSON mode.
    #[arg(long)]
    sessions: bool,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// Text to send back unchanged.
    text: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct AddArgs {
    a: f64,
    b: f64,
}

/// The tool set: deliberately tiny so the benchmark measures transport, not work.
#[derive(Debug, Clone)]
struct Peer {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Peer {
    fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Return the given text unchanged")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "Add two numbers")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        let sum = a + b;
        if sum.fract() == 0.0 && sum.abs() < 9.0e15 {
            format!("{}", sum as i64)
        } else {
            format!("{sum}")
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Peer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new("mcpwatch-peer-rmcp", env!("CARGO_PKG_VERSION")),
        )
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Two worker threads: the machine is small and a benchmark backend should not
    // starve the proxy it is measuring.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(serve(cli))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let mut config = StreamableHttpServerConfig::default()
        .with_sse_keep_alive(None)
        .with_legacy_session_mode(cli.sessions)
        .with_json_response(!cli.sessions);
    config = if cli.any_host {
        config.disable_allowed_hosts()
    } else {
        let ip = cli.listen.ip().to_string();
        config.with_allowed_hosts([
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
            ip,
        ])
    };
    let service: StreamableHttpService<Peer, LocalSessionManager> =
        StreamableHttpService::new(|| Ok(Peer::new()), Default::default(), config);

    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {local}").context("writing the ready line")?;
        out.flush().context("flushing stdout")?;
    }

    let path = cli.path;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let path = path.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let service = service.clone();
                    let on_path = req.uri().path() == path;
                    async move {
                        if on_path {
                            TowerToHyperService::new(service).call_boxed(req).await
                        } else {
                            Ok(not_found())
                        }
                    }
                });
            let _ = ConnBuilder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Answer for any path other than the MCP endpoint.
fn not_found<B: Default>() -> hyper::Response<B> {
    let mut resp = hyper::Response::new(B::default());
    *resp.status_mut() = hyper::StatusCode::NOT_FOUND;
    resp
}

/// Small adapter so the path check can wrap the tower service without naming its
/// response body type.
trait CallBoxed<R> {
    type Output;
    fn call_boxed(self, req: R) -> Self::Output;
}

impl<S, R> CallBoxed<R> for TowerToHyperService<S>
where
    TowerToHyperService<S>: hyper::service::Service<R>,
{
    type Output = <TowerToHyperService<S> as hyper::service::Service<R>>::Future;
    fn call_boxed(self, req: R) -> Self::Output {
        hyper::service::Service::call(&self, req)
    }
}
