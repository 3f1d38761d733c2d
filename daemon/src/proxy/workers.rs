//! The connection threads: one single-threaded runtime per thread, each owning the
//! connections the accept loop hands it, for their whole life.
//!
//! Why not the work-stealing runtime the rest of the daemon runs on: a proxied call wakes
//! several tasks in turn (the client half, the upstream connection's driver, the audit
//! commit), and a work-stealing scheduler wakes an idle worker for each of them and moves
//! them between threads. On this machine that cost more than the proxying itself: at one
//! client, 215 µs of CPU per call with two workers against 136 µs with one (`cargo xtask
//! bench`, static upstream). nginx answers the same way: worker processes that never share a
//! connection. Here a connection, every task it spawns and its timers stay on one thread;
//! the shared state (policy, audit store, sessions) is reached through the same `Arc`s.
//!
//! The accept loops run on these threads too (listener k on thread k mod n), so a new
//! connection wakes one thread, not the main runtime and then a proxy thread. It goes to
//! the thread holding the fewest live connections; among equals, the thread that accepted
//! it (no hand-over at all), else round-robin. Measured (`cargo xtask bench`, new
//! connection per call, one client): the hand-over from an accept loop on the main runtime
//! cost a context switch there and a cross-thread wake-up per connection. The count is
//! `[limits] proxy_threads` (default: one per CPU).

use std::future::Future;
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How long a thread's runtime waits for its blocking tasks when the proxy stops.
const STOP_GRACE: Duration = Duration::from_secs(2);

thread_local! {
    /// On a connection thread: its index in its [`Workers`].
    static HERE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Where a new connection runs: on the calling thread (the one that accepted it) or on
/// another one, which takes it through its own poller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Here,
    There(usize),
}

/// The set of connection threads.
pub struct Workers {
    threads: Vec<Worker>,
    next: AtomicUsize,
}

struct Worker {
    handle: Handle,
    live: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<()>>,
}

/// Decrements a thread's live count when the connection's future ends or is dropped.
pub struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Start `n` threads (at least one), each running a current-thread runtime with I/O and
    /// timers until [`Workers::stop`]. `idle`: run whenever a thread is about to sleep, and
    /// once more when it ends (the proxy may write the call completions left for then:
    /// `record::finish`, `Shared::run_deferred_on_park`).
    pub fn start(n: usize, idle: Option<Arc<dyn Fn() + Send + Sync>>) -> std::io::Result<Self> {
        let mut threads = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.enable_all().thread_name("mcpwatch-proxy-blocking");
            if let Some(f) = idle.clone() {
                builder.on_thread_park(move || f());
            }
            let rt = builder.build()?;
            let idle = idle.clone();
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let join = std::thread::Builder::new()
                .name(format!("mcpwatch-proxy-{i}"))
                .spawn(move || {
                    HERE.with(|h| h.set(Some(i)));
                    if idle.is_some() {
                        crate::record::defer_on_this_thread();
                    }
                    let _ = rt.block_on(stopped);
                    rt.shutdown_timeout(STOP_GRACE);
                    if let Some(f) = idle {
                        f();
                    }
                })?;
            threads.push(Worker { handle, live: Arc::new(AtomicUsize::new(0)), stop: Some(stop), join: Some(join) });
        }
        Ok(Workers { threads, next: AtomicUsize::new(0) })
    }

    /// Choose the thread for a new connection: the fewest live connections; among equals
    /// the calling thread if it is one of them (so a connection accepted on a thread with
    /// room stays there), else round-robin. Counts the connection as live there; the
    /// returned guard uncounts it when dropped.
    pub fn place(&self) -> (Placement, Live) {
        let here = HERE.with(Cell::get).filter(|i| *i < self.threads.len());
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.threads.len();
        let mut best = start % n;
        let mut least = usize::MAX;
        for k in 0..n {
            let i = (start + k) % n;
            let live = self.threads[i].live.load(Ordering::Relaxed);
            if live < least || (live == least && Some(i) == here) {
                least = live;
                best = i;
            }
        }
        let w = &self.threads[best];
        w.live.fetch_add(1, Ordering::Relaxed);
        let live = Live(w.live.clone());
        (if Some(best) == here { Placement::Here } else { Placement::There(best) }, live)
    }

    /// Run `fut` on the thread with the fewest live connections (see [`Workers::place`]).
    /// The accept loops place connections themselves (a stream accepted here moves to
    /// another thread's poller only when it goes there); tests place futures with this.
    #[cfg(test)]
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (at, live) = self.place();
        let task = async move {
            let _live = live;
            fut.await;
        };
        match at {
            Placement::Here => drop(tokio::spawn(task)),
            Placement::There(i) => self.run_on(i, task),
        }
    }

    /// Run `fut` on thread `i mod n`: an accept loop, or a connection placed there by
    /// [`Workers::place`] (which counts it).
    pub fn run_on<F>(&self, i: usize, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.threads[i % self.threads.len()].handle.spawn(fut));
    }

    /// Live connections per thread.
    pub fn live(&self) -> Vec<usize> {
        self.threads.iter().map(|w| w.live.load(Ordering::Relaxed)).collect()
    }

    /// Stop every thread: connections still running are dropped (closed), blocking tasks
    /// get [`STOP_GRACE`]. Returns once the threads have ended.
    pub fn stop(mut self) {
        self.signal_stop();
        for w in &mut self.threads {
            if let Some(join) = w.join.take() {
                let _ = join.join();
            }
        }
    }

    /// Tell every thread to end (once; later calls find nothing left to send).
    fn signal_stop(&mut self) {
        for w in &mut self.threads {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Dropped without `stop` (a panic on the way): let the threads end on their own.
        self.signal_stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_loaded_thread_and_stay_on_it() {
        let workers = Workers::start(2, None).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (hold_tx, hold_rx) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            let tx = tx.clone();
            let mut hold = hold_rx.clone();
            workers.spawn(async move {
                let before = std::thread::current().name().map(str::to_string);
                tokio::task::yield_now().await;
                let _ = hold.wait_for(|h| *h).await;
                let after = std::thread::current().name().map(str::to_string);
                tx.send((before, after)).unwrap();
            });
        }
        // Four held connections spread two and two.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while workers.live() != vec![2, 2] {
            assert!(std::time::Instant::now() < deadline, "live per thread: {:?}", workers.live());
            std::thread::sleep(Duration::from_millis(5));
        }
        hold_tx.send(true).unwrap();
        let mut names = Vec::new();
        for _ in 0..4 {
            let (before, after) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(before, after, "a connection moved between threads");
            names.push(before.unwrap());
        }
        names.sort();
        assert_eq!(names, ["mcpwatch-proxy-0", "mcpwatch-proxy-0", "mcpwatch-proxy-1", "mcpwatch-proxy-1"]);
        while workers.live() != vec![0, 0] {
            assert!(std::time::Instant::now() < deadline, "live per thread: {:?}", workers.live());
            std::thread::sleep(Duration::from_millis(5));
        }
        workers.stop();
    }

    #[test]
    fn a_connection_accepted_on_a_thread_with_room_stays_there() {
        let workers = Arc::new(Workers::start(2, None).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..2 {
            let (w, tx) = (workers.clone(), tx.clone());
            workers.run_on(i, async move {
                let (at, live) = w.place();
                // Uncounted before the test goes on to read the counts.
                drop(live);
                tx.send((i, at)).unwrap();
            });
        }
        let mut seen: Vec<(usize, Placement)> = (0..2).map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
        seen.sort_by_key(|(i, _)| *i);
        assert_eq!(seen, [(0, Placement::Here), (1, Placement::Here)]);
        // Thread 0 busier than thread 1: what thread 0 accepts goes to thread 1.
        let (_, held) = workers.place();
        let busy = if workers.live() == vec![1, 0] { 0 } else { 1 };
        let w = workers.clone();
        workers.run_on(busy, async move {
            let (at, _live) = w.place();
            tx.send((busy, at)).unwrap();
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), (busy, Placement::There(1 - busy)));
        drop(held);
        // From outside the threads nothing is "here".
        assert!(matches!(workers.place().0, Placement::There(_)));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&workers) > 1 {
            assert!(std::time::Instant::now() < deadline, "a placing task still holds the workers");
            std::thread::sleep(Duration::from_millis(5));
        }
        Arc::try_unwrap(workers).ok().unwrap().stop();
    }
}
