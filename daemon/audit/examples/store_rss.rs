//! Store micro: writes N calls (insert + completion update, as the proxy does) through
//! `Store` and prints the process's RSS every 100k calls, separating the store's memory
//! from the daemon's. `cargo run --release -p mcpwatch-audit --example store_rss -- N`.

use mcpwatch_api::{AuditRecord, CallStatus, MessageKind};
use mcpwatch_audit::{Store, StoreOptions};

/// A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

fn hwm_kib() -> u64 {
    status_kib("VmHWM")
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(400_000);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let before = rss_kib();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap_or_else(|e| panic!("open: {e}"));
    println!("RSS {:.1} MiB before opening the store, {:.1} MiB after", before as f64 / 1024.0, rss_kib() as f64 / 1024.0);
    let t0 = std::time::Instant::now();
    for i in 0..n {
        let mut rec = AuditRecord {
            id: store.new_record_id(),
            ts_ms: 1_780_000_000_000 + i,
            dst: "127.0.0.1:40123".into(),
            host: Some("127.0.0.1:40123".into()),
            scheme: "http".into(),
            http_method: "POST".into(),
            path: "/mcp".into(),
            server: "http://127.0.0.1:40123/mcp".into(),
            transport: "streamable-http".into(),
            protocol_version: Some("2025-06-18".into()),
            kind: MessageKind::default(),
            direction: "client->server".into(),
            method: Some("tools/call".into()),
            jsonrpc_id: Some(i.to_string()),
            name: Some("echo".into()),
            args_hash: Some("a".repeat(64)),
            status: CallStatus::default(),
            request_bytes: 120,
            hostname: Some("bench-host".into()),
            host_id: Some("b".repeat(32)),
            ..Default::default()
        };
        store.insert_record(&rec).unwrap_or_else(|e| panic!("insert: {e}"));
        rec.duration_us = Some(900);
        rec.status = CallStatus::Ok;
        rec.result_hash = Some("c".repeat(64));
        rec.response_bytes = 200;
        store.update_record(&rec).unwrap_or_else(|e| panic!("update: {e}"));
        if (i + 1) % 100_000 == 0 {
            println!(
                "{:>8} calls  {:>7.1} MiB RSS  stored {} records, {} bytes  ({:.1} s)",
                i + 1,
                rss_kib() as f64 / 1024.0,
                store.record_count(),
                store.stored_bytes(),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let t = std::time::Instant::now();
    let q = store
        .query(&mcpwatch_api::AuditFilter { limit: Some(50), ..Default::default() })
        .unwrap_or_else(|e| panic!("query: {e}"));
    println!("query newest 50: {} records in {:.3} s, RSS {:.1} MiB", q.len(), t.elapsed().as_secs_f64(), rss_kib() as f64 / 1024.0);
    println!("before the full scan: RSS {:.1} MiB, peak {:.1} MiB", rss_kib() as f64 / 1024.0, hwm_kib() as f64 / 1024.0);
    let t = std::time::Instant::now();
    let mut n = 0usize;
    store
        .query_pages(&mcpwatch_api::AuditFilter::default(), 2000, |page| {
            n += page.len();
            true
        })
        .unwrap_or_else(|e| panic!("query_pages: {e}"));
    println!("every record, page by page: {n} in {:.1} s, RSS {:.1} MiB, peak {:.1} MiB", t.elapsed().as_secs_f64(), rss_kib() as f64 / 1024.0, hwm_kib() as f64 / 1024.0);
    // What stays after glibc gives freed heap back (the daemon trims every 2 s).
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns glibc's free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    println!("after malloc_trim: RSS {:.1} MiB", rss_kib() as f64 / 1024.0);
    // Opening a full store counts its records: a pass over every chunk.
    drop(store);
    let before = rss_kib();
    let t = std::time::Instant::now();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap_or_else(|e| panic!("reopen: {e}"));
    println!("reopened ({} records) in {:.1} s: RSS {:.1} MiB before, {:.1} MiB after", store.record_count(), t.elapsed().as_secs_f64(), before as f64 / 1024.0, rss_kib() as f64 / 1024.0);
    // A full verify (chain and every record); VmHWM reset first (clear_refs 5).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t = std::time::Instant::now();
    let report = store.verify().unwrap_or_else(|e| panic!("verify: {e}"));
    println!(
        "verify: {} records, {} problems in {:.1} s, peak {:.1} MiB, RSS after {:.1} MiB",
        report.records,
        report.problems.len(),
        t.elapsed().as_secs_f64(),
        hwm_kib() as f64 / 1024.0,
        rss_kib() as f64 / 1024.0
    );
    if std::env::var_os("STORE_RSS_FORGET").is_some() {
        // Under heaptrack: what is still allocated at exit is what the store holds.
        std::mem::forget(store);
        std::process::exit(0);
    }
}
