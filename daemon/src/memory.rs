//! Give freed heap back to the kernel, so the daemon's resident size follows its live data.
//!
//! Measured (`cargo xtask bench --soak`, glibc malloc, 8 keep-alive clients): after
//! 60k calls mcpwatchd had 194 MiB resident while heaptrack showed ~30 MiB live; two
//! 64 MiB per-thread malloc arenas were fully resident with freed chunks that glibc keeps
//! for reuse. One `malloc_trim(0)` took the process to 78 MiB. Short-lived request
//! buffers are freed on whichever tokio worker finishes the request, so the arenas fill
//! with holes that plain `free` never returns. A host-wide daemon's footprint must not
//! depend on that, so [`limit_arenas`] caps the arenas at start and a background task
//! trims every [`TRIM_EVERY`]: one call costs
//! a few milliseconds of one core (it walks the arenas) and never blocks a request (it
//! runs on a blocking thread; allocation elsewhere proceeds, arenas are locked one at a
//! time).
//!
//! Large blocks are a second source: glibc raises its mmap threshold each time a
//! mmap-backed block is freed (up to 32 MiB), after which sled's 512 KiB log buffers and
//! the audit store's sealing batches come from the arenas and leave large holes there.
//! [`limit_arenas`] pins the threshold at [`MMAP_THRESHOLD`] (which also turns the
//! dynamic adjustment off), so blocks that large always go back to the kernel when freed.
//! Measured (`cargo xtask bench --soak`, 200k calls, audit store with 2 KiB chunks):
//! 82 MiB -> 65 MiB resident.
//!
//! Why glibc's malloc and not another allocator: mimalloc (crate `mimalloc` 0.1.52, as
//! the global allocator) was measured. It cut the daemon's instructions per call by 11 %
//! (`bench --instructions`: malloc/free 33 k -> ~8 k), but c=8 throughput did not move
//! beyond the run-to-run spread (three alternating pairs), and resident memory rose from
//! 41 MiB to 120-134 MiB (v3 defaults), 78 MiB (transparent huge pages off) and 62-70
//! MiB (also `purge_delay = 0`) over 100-200k calls at 8 clients, still growing; its
//! statistics at exit counted 249 of its 272 pages as abandoned by threads that had
//! ended. The RSS bar is 64 MiB.

use std::time::Duration;

/// How often the heap is trimmed.
pub const TRIM_EVERY: Duration = Duration::from_secs(2);

/// malloc arenas the process may use. glibc's default (8 per core) lets every tokio
/// worker and blocking thread grow its own 64 MiB heap; two keep contention low on the
/// request path and measured 71 MiB instead of 85 MiB after 100k calls.
pub const MAX_ARENAS: i32 = 2;

/// Blocks of at least this size are mmapped (and unmapped when freed) instead of carved
/// out of an arena.
pub const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Cap malloc's arenas at [`MAX_ARENAS`] and pin the mmap threshold at
/// [`MMAP_THRESHOLD`]. Call first thing in `main`, before threads start.
pub fn limit_arenas() {
    // SAFETY: mallopt only sets glibc tunables; called before other threads allocate.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MAX_ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Trim every [`TRIM_EVERY`] until the task is dropped.
pub async fn trim_periodically() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

/// Return free heap pages to the kernel now. Returns whether any memory was released.
pub fn trim() -> bool {
    // SAFETY: malloc_trim only walks and madvises glibc's own free lists; it takes no
    // pointers from us and is thread-safe (each arena is locked while it is trimmed).
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0) == 1
    }
    #[cfg(not(target_env = "gnu"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").expect("status");
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("VmRSS")
    }

    #[test]
    fn trimming_returns_freed_fragmented_heap_to_the_kernel() {
        // Interleave small blocks we keep with large blocks we free: the freed space sits
        // between live chunks, where `free` alone does not give it back.
        let mut keep = Vec::new();
        let mut drop_later = Vec::new();
        for i in 0..20_000u32 {
            keep.push(vec![i as u8; 64]);
            drop_later.push(vec![1u8; 8 * 1024]);
        }
        drop(drop_later);
        let before = rss_kib();
        assert!(trim() || rss_kib() < before, "malloc_trim released nothing");
        let after = rss_kib();
        assert!(
            after + 32 * 1024 < before,
            "trim should release the ~160 MiB freed between live chunks: {before} KiB -> {after} KiB"
        );
        assert_eq!(keep.len(), 20_000);
    }
}
