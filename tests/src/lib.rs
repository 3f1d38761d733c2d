//! Shared helpers for the integration tests.
pub mod daemon;
pub mod harness;
pub mod peers;
pub mod siem;
pub mod tls;
