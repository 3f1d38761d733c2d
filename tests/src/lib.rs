//! Shared helpers for the integration tests.
pub mod daemon;
pub mod peers;
