//! `mcpwatch wrap --install / --uninstall`: rewrite client configurations so their stdio
//! servers launch through `mcpwatch wrap --`, and back.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Rewrite client configurations so stdio servers launch through `mcpwatch wrap --`.
    /// Optionally one client id (e.g. `claude-code`); `--all` for every client.
    #[arg(long, value_name = "CLIENT", num_args = 0..=1, default_missing_value = "", conflicts_with = "uninstall")]
    pub install: Option<String>,
    /// Undo `--install` (optionally for one client id).
    #[arg(long, value_name = "CLIENT", num_args = 0..=1, default_missing_value = "")]
    pub uninstall: Option<String>,
    /// Every client (with --install / --uninstall).
    #[arg(long)]
    pub all: bool,
    /// Print a unified diff of the changes; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Edit the files of this home only (repeatable) instead of the invoking user's.
    #[arg(long, value_name = "DIR")]
    pub home: Vec<PathBuf>,
}

impl InstallArgs {
    pub fn wants(&self) -> bool {
        self.install.is_some() || self.uninstall.is_some()
    }
}

pub fn run(_args: &InstallArgs, _out: &mut dyn Write) -> Result<ExitCode> {
    bail!("not implemented yet")
}
