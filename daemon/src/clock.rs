//! Wall-clock time as records, policies and sinks count it: milliseconds since the Unix
//! epoch.
//!
//! Why a module of its own: the audit record stamps, the govern stage (rate limits, holds,
//! toxic-flow ages), the loaded policy's time and the sinks' settle times all read the same
//! clock; here, below every one of them, reading it imports nothing else of the daemon.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
