//! `mcpwatch wrap --install / --uninstall`: rewrite client configurations so their stdio
//! servers launch through `mcpwatch wrap --`, and back.
//!
//! Why it exists: `mcpwatch wrap` governs a stdio server only when the client launches
//! it through the wrapper, and nobody edits a dozen clients' files by hand. The files
//! are found by the same scan as `mcpwatch scan` (`mcpwatch_discover`); the text edits
//! are `mcpwatch_discover::install` (only the command/args spans change, comments and
//! other keys stay). Each changed file gets a backup next to it first; the new text is
//! written to a temporary file in the same directory (same mode and owner) and renamed
//! over the original.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use mcpwatch_discover::install::{self, Direction, EditError};
use mcpwatch_discover::{Environment, Options, Transport};

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Rewrite client configurations so stdio servers launch through `mcpwatch wrap --`:
    /// one client id (e.g. `claude-code`), or `--all`.
    #[arg(long, value_name = "CLIENT", num_args = 0..=1, default_missing_value = "", conflicts_with = "uninstall")]
    pub install: Option<String>,
    /// Undo `--install`: one client id, or `--all`.
    #[arg(long, value_name = "CLIENT", num_args = 0..=1, default_missing_value = "")]
    pub uninstall: Option<String>,
    /// Every client (with --install / --uninstall).
    #[arg(long)]
    pub all: bool,
    /// Print a unified diff of the changes; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Edit the files of this home (repeatable) instead of the invoking user's ($HOME).
    #[arg(long, value_name = "DIR")]
    pub home: Vec<PathBuf>,
    /// Filesystem root: every home under it (and its managed files), like `scan --root`.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

impl InstallArgs {
    pub fn wants(&self) -> bool {
        self.install.is_some() || self.uninstall.is_some()
    }
}

pub fn run(args: &InstallArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let (dir, which) = match (&args.install, &args.uninstall) {
        (Some(c), _) => (Direction::Install, c.as_str()),
        (None, Some(c)) => (Direction::Uninstall, c.as_str()),
        (None, None) => bail!("--install or --uninstall"),
    };
    let only = match (which, args.all) {
        ("", true) => None,
        ("", false) => {
            let ids: Vec<&str> = mcpwatch_discover::clients::CLIENTS.iter().map(|c| c.id).collect();
            bail!("name a client ({}) or use --all", ids.join(", "));
        }
        (id, _) => Some(mcpwatch_discover::clients::client(id).with_context(|| format!("unknown client `{id}`"))?.id),
    };
    let wrapper = std::env::current_exe().and_then(|p| p.canonicalize()).context("cannot find the mcpwatch binary's absolute path")?;
    let wrapper = wrapper.to_str().context("the mcpwatch binary's path is not UTF-8")?.to_string();
    let homes = match (&args.root, args.home.is_empty()) {
        (_, false) => Some(args.home.clone()),
        (Some(_), true) => None,
        (None, true) => Some(vec![std::env::var_os("HOME").map(PathBuf::from).context("$HOME is not set; use --home DIR")?]),
    };
    for d in args.home.iter().chain(&args.root) {
        if !d.is_dir() {
            bail!("{} is not a directory", d.display());
        }
    }
    let opts = Options {
        root: args.root.clone().unwrap_or_else(|| PathBuf::from("/")),
        homes,
        system: args.root.is_some(),
        paths: Vec::new(),
        max_depth: 6,
        env: Environment::from_process(),
    };
    let report = mcpwatch_discover::scan(&opts, None);
    let wanted = |client: &str| only.is_none_or(|c| c == client);

    let mut failed = false;
    for e in report.errors.iter().filter(|e| wanted(e.client)) {
        failed = true;
        let pos = match (e.line, e.column) {
            (Some(l), Some(c)) => format!(":{l}:{c}"),
            _ => String::new(),
        };
        writeln!(out, "refused {}{pos}: {}; not touched", e.file.display(), e.message)?;
    }
    let mut files: Vec<(PathBuf, &'static str)> = report
        .servers
        .iter()
        .filter(|s| s.transport == Transport::Stdio && wanted(s.client))
        .map(|s| (s.file.clone(), s.client))
        .collect();
    files.sort();
    files.dedup();
    let mut changed_files = 0;
    for (file, client) in files {
        let Some(def) = mcpwatch_discover::clients::client(client) else { continue };
        let text = match read_bounded(&file) {
            Ok(t) => t,
            Err(e) => {
                failed = true;
                writeln!(out, "refused {}: {e:#}; not touched", file.display())?;
                continue;
            }
        };
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let edit = match install::edit(name, &text, def, &wrapper, dir) {
            Ok(e) => e,
            Err(e @ EditError::Unsupported(_)) => {
                writeln!(out, "skipped {}: {e}", file.display())?;
                continue;
            }
            Err(EditError::Parse { line, column, message }) => {
                failed = true;
                writeln!(out, "refused {}:{line}:{column}: {message}; not touched", file.display())?;
                continue;
            }
        };
        if edit.text == text {
            continue;
        }
        changed_files += 1;
        if args.dry_run {
            out.write_all(install::unified_diff(&file.display().to_string(), &text, &edit.text).as_bytes())?;
            continue;
        }
        let backup = install::backup_path(&file);
        write_like(&file, &backup, &text).with_context(|| format!("cannot write the backup {}", backup.display()))?;
        write_like(&file, &file, &edit.text).with_context(|| format!("cannot write {}", file.display()))?;
        let verb = if dir == Direction::Install { "wrapped" } else { "unwrapped" };
        writeln!(out, "{verb} {} ({}) in {} (backup: {})", edit.changed.join(", "), client, file.display(), backup.display())?;
    }
    if changed_files == 0 {
        writeln!(out, "nothing to change")?;
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn read_bounded(file: &Path) -> Result<String> {
    // A link could point anywhere (a user's link, followed by root): not edited.
    if std::fs::symlink_metadata(file)?.file_type().is_symlink() {
        bail!("a symbolic link");
    }
    let meta = std::fs::metadata(file)?;
    if meta.len() > mcpwatch_discover::MAX_FILE_BYTES {
        bail!("larger than {} bytes", mcpwatch_discover::MAX_FILE_BYTES);
    }
    Ok(std::fs::read_to_string(file)?)
}

/// Write `text` to `dest` through a temporary file in its directory, with the mode and
/// owner of `like` (the configuration file), then rename it into place.
fn write_like(like: &Path, dest: &Path, text: &str) -> Result<()> {
    let meta = std::fs::metadata(like)?;
    let dir = dest.parent().context("no parent directory")?;
    let mut tmp_name = dest.file_name().context("no file name")?.to_os_string();
    tmp_name.push(format!(".mcpwatch-tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let res = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        // Only root can give a file away; as the owner this keeps what it is.
        let _ = std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()));
        std::fs::rename(&tmp, dest)?;
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}
