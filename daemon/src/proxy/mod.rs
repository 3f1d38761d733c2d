//! The data path: accept redirected connections and relay them to where they were going.
//!
//! [`run`] takes its listeners, its [`Resolve`]r and a shutdown future (mini-redis
//! style), so a test can start a real proxy on `127.0.0.1:0` with a static upstream and
//! no root, while the daemon passes the eBPF-backed resolver.
//!
//! Per connection ([`conn`]): take a global slot without waiting (none left: close at once),
//! resolve the original destination, take the process's and uid's share ([`crate::admission`]),
//! connect upstream first (server-speaks-first protocols must keep working), then classify
//! the client's first bytes with no deadline an attacker controls: HTTP/1.x and HTTP/2 go
//! to [`http`] (parsed, MCP-aware), TLS to [`tls`] (intercepted or passed through by scope),
//! bytes that are positively not HTTP (SSH, binary protocols) or a server that speaks first
//! are relayed byte-for-byte (refused toward governed destinations in enforce mode), and a
//! client that stays silent is closed, never relayed.

pub mod auth;
pub mod body;
pub mod conn;
pub mod ctx;
pub mod exchange;
pub mod forward;
pub mod headlog;
pub mod hooked;
pub mod lifecycle;
pub mod pool;
pub mod relay;
pub mod responses;
pub mod scope;
pub mod splice;
pub mod http;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod upgrade;
pub mod websocket;
pub mod workers;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::admission::Refusal;
use crate::resolve::Resolve;
use crate::state::{Counters, Shared};

/// How long in-flight connections get to finish after shutdown is requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve until `shutdown` resolves, then stop accepting and drain.
pub async fn run(
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    resolver: Arc<dyn Resolve>,
    shutdown: impl Future<Output = ()>,
) {
    // The data path's own background work: the audit group commit (requests wait on
    // it before forwarding) and the inventory writer.
    let flusher = tokio::spawn(shared.clone().flush_forever());
    let inventory_writer = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let s = shared.clone();
                let _ = tokio::task::spawn_blocking(move || s.inventory.persist()).await;
            }
        })
    };
    let tracker = TaskTracker::new();
    let idle: Arc<dyn Fn() + Send + Sync> = {
        let shared = Arc::downgrade(&shared);
        Arc::new(move || {
            if let Some(s) = shared.upgrade() {
                s.run_deferred_on_park();
            }
        })
    };
    let workers = match workers::Workers::start(shared.config.limits.proxy_threads, Some(idle)) {
        Ok(w) => Some(Arc::new(w)),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the proxy threads; serving connections on the main runtime");
            None
        }
    };
    let limit = Arc::new(Semaphore::new(shared.config.limits.max_connections));
    let (stop_tx, _) = tokio::sync::watch::channel(false);
    for (k, listener) in listeners.into_iter().enumerate() {
        let accept = Accept {
            shared: shared.clone(),
            resolver: resolver.clone(),
            limit: limit.clone(),
            tracker: tracker.clone(),
            workers: workers.clone(),
            stop: stop_tx.subscribe(),
        };
        let Some(w) = &workers else {
            tracker.spawn(accept.run(listener));
            continue;
        };
        // The accept loop moves to a proxy thread (out of this runtime's poller, into
        // that thread's), so most connections start where they were accepted.
        match listener.into_std() {
            Ok(std) => w.run_on(
                k,
                tracker.track_future(async move {
                    match TcpListener::from_std(std) {
                        Ok(listener) => accept.run(listener).await,
                        Err(e) => tracing::error!(error = %e, "cannot listen on a proxy thread"),
                    }
                }),
            ),
            Err(e) => tracing::error!(error = %e, "cannot hand a listener to a proxy thread"),
        }
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    if let Some(workers) = workers.and_then(|w| Arc::try_unwrap(w).ok()) {
        // Connections past the drain timeout are closed with their threads.
        let _ = tokio::task::spawn_blocking(move || workers.stop()).await;
    }
    inventory_writer.abort();
    flusher.abort();
    shared.run_deferred();
    shared.inventory.persist();
    if let Err(e) = shared.store.flush() {
        tracing::error!(error = %e, "final audit flush failed");
    }
}

/// One listener's accept loop and what it hands each connection.
struct Accept {
    shared: Arc<Shared>,
    resolver: Arc<dyn Resolve>,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
    workers: Option<Arc<workers::Workers>>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Accept {
    async fn run(mut self, listener: TcpListener) {
        let shared = &self.shared;
        // One heartbeat timer for the loop's life, re-armed only when it fires: a timer
        // created per accepted connection is registered earlier than the thread's next
        // wake-up, and tokio then wakes its own driver (an eventfd write and one more
        // epoll_wait for every connection; seen with strace, new connection per call).
        let beat = tokio::time::sleep(crate::notify::HEARTBEAT_EVERY);
        tokio::pin!(beat);
        loop {
            // Never wait for a slot before accepting: a full daemon accepts and closes at
            // once (counted, shown by `mcpwatch status`), so the backlog never fills and
            // callers are not left hanging in connect().
            shared.heartbeats.accept();
            let (stream, peer) = tokio::select! {
                () = &mut beat => {
                    beat.as_mut().reset(tokio::time::Instant::now() + crate::notify::HEARTBEAT_EVERY);
                    continue;
                }
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = self.stop.changed() => return,
            };
            Counters::inc(&shared.counters.connections);
            let Ok(permit) = self.limit.clone().try_acquire_owned() else {
                Counters::inc(shared.counters.refused(Refusal::Global));
                shared.admission.refused_global();
                // RST rather than FIN: the client learns at once, and no TIME_WAIT here.
                let _ = stream.set_zero_linger();
                drop(stream);
                continue;
            };
            let (shared, resolver) = (shared.clone(), self.resolver.clone());
            let Some(workers) = &self.workers else {
                self.tracker.spawn(async move { conn::handle(shared, resolver, stream, peer, permit).await });
                continue;
            };
            match workers.place() {
                (workers::Placement::Here, live) => {
                    self.tracker.spawn(async move {
                        let _live = live;
                        conn::handle(shared, resolver, stream, peer, permit).await;
                    });
                }
                (workers::Placement::There(i), live) => {
                    // Another thread has more room: the connection moves to its poller.
                    let stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot hand an accepted connection to a proxy thread");
                            continue;
                        }
                    };
                    workers.run_on(
                        i,
                        self.tracker.track_future(async move {
                            let _live = live;
                            match tokio::net::TcpStream::from_std(stream) {
                                Ok(stream) => conn::handle(shared, resolver, stream, peer, permit).await,
                                Err(e) => tracing::warn!(error = %e, "cannot register a connection on its proxy thread"),
                            }
                        }),
                    );
                }
            }
        }
    }
}
