//! Host-wide MCP server discovery without a daemon: which MCP servers every user's clients are
//! configured to start or call, and which of those launches are risky or unregistered.
//!
//! Why a library of its own: the daemon only sees servers once traffic flows, and stdio servers
//! never cross the network. The client configuration files say what *can* run. This crate reads
//! them (every home, the system-wide managed files, project files the clients recorded or a walk
//! finds), parses them leniently, and returns a [`Report`]: one [`Server`] per entry with its
//! launch, env/header names (never values), a launch hash, [`RiskFlag`]s and its [`Registry`]
//! status against a policy. The CLI (`mcpwatch scan`) renders it. No daemon, no network.
//!
//! - [`clients::CLIENTS`]: the data table of clients and their files (extend here).
//! - [`scan()`]: the scan; [`Options`] say where (root, homes, walked paths).
//! - Secrets found in a config are flagged and redacted before they enter the report.
//! - Running stdio servers are matched to their pids by argv (`<root>/proc/*/cmdline`).

pub mod clients;
mod extract;
pub mod install;
mod model;
mod parse;
mod procs;
mod registry;
mod risk;
mod scan;
mod url;

pub use model::{FileError, Registry, Report, Risk, RiskFlag, Scope, Server, Transport};
pub use registry::bypassed_gateway;
pub use risk::REDACTED;
pub use scan::{Environment, MAX_FILE_BYTES, Options, scan};
pub use url::match_key;
