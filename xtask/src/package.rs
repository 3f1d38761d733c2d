//! `cargo xtask deb`, `install`, `uninstall`: put mcpwatch on a host as a service.
//!
//! Why it exists: installing by hand was six commands an SRE had to type in the right
//! order. One file list ([`layout`]) serves both the Debian package (staged, then
//! `dpkg-deb --build`) and the direct install for hosts without dpkg, so the two never
//! disagree about what goes where. Neither enables or starts the service: that stays
//! the admin's decision (`systemctl enable --now mcpwatchd`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Cargo profile whose binaries are packaged (`release`, or `debug` for tests).
    #[arg(long, default_value = "release")]
    profile: String,
    /// Package the binaries already built for that profile instead of building them.
    #[arg(long)]
    no_build: bool,
}

#[derive(Debug, clap::Args)]
pub struct DebArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// Directory the .deb is written to.
    #[arg(long, default_value = "target/debian")]
    out: PathBuf,
    /// Then install it with `dpkg -i` (needs root). The service is not enabled.
    #[arg(long)]
    install: bool,
}

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// Filesystem root to install into (a staging directory; `/` for the host).
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// Also remove the configuration and the state (audit store, CA, host secret).
    #[arg(long)]
    purge: bool,
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

/// One installed file: where it comes from and where it goes.
struct Item {
    dest: String,
    mode: u32,
    content: Content,
}

enum Content {
    /// A file of the repository.
    Repo(&'static str),
    /// A built binary of the chosen profile.
    Binary(&'static str),
    /// Generated text.
    Text(String),
}

/// Where the binaries go: `/usr/bin` in the package, `/usr/local/bin` when installed
/// directly (so dpkg's files and a hand install never overwrite each other).
fn layout(bindir: &str, bins: &Path) -> Result<Vec<Item>> {
    let unit = std::fs::read_to_string(util::repo_root().join("systemd/mcpwatchd.service"))?
        .replace("/usr/local/bin/mcpwatchd", &format!("{bindir}/mcpwatchd"));
    let unit_dest = if bindir == "/usr/bin" { "/lib/systemd/system/mcpwatchd.service" } else { "/etc/systemd/system/mcpwatchd.service" };
    let mcpwatch = bins.join("mcpwatch");
    let completion = |args: &[&str]| -> Result<String> {
        let out = Command::new(&mcpwatch).args(args).output().with_context(|| format!("running {}", mcpwatch.display()))?;
        if !out.status.success() {
            bail!("mcpwatch {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let help = |bin: &str, args: &[&str]| -> Result<String> {
        let out = Command::new(bins.join(bin)).args(args).arg("--help").output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut reference = String::new();
    reference.push_str(&format!("$ mcpwatchd --help\n{}\n", help("mcpwatchd", &[])?));
    reference.push_str(&format!("$ mcpwatch --help\n{}\n", help("mcpwatch", &[])?));
    for sub in ["list", "audit", "status", "ca", "pending", "approve", "deny", "policy", "pin", "inspect"] {
        let text = help("mcpwatch", &[sub])?;
        if !text.is_empty() {
            reference.push_str(&format!("$ mcpwatch {sub} --help\n{text}\n"));
        }
    }
    let item = |dest: &str, mode: u32, content: Content| Item { dest: dest.to_string(), mode, content };
    Ok(vec![
        item(&format!("{bindir}/mcpwatchd"), 0o755, Content::Binary("mcpwatchd")),
        item(&format!("{bindir}/mcpwatch"), 0o755, Content::Binary("mcpwatch")),
        item(unit_dest, 0o644, Content::Text(unit)),
        item("/usr/lib/sysusers.d/mcpwatch.conf", 0o644, Content::Repo("systemd/mcpwatch.sysusers.conf")),
        item("/usr/lib/tmpfiles.d/mcpwatch.conf", 0o644, Content::Repo("systemd/mcpwatch.tmpfiles.conf")),
        item(CONFIG, 0o644, Content::Repo("systemd/mcpwatchd.toml")),
        item("/usr/share/doc/mcpwatch/README.md", 0o644, Content::Repo("README.md")),
        item("/usr/share/doc/mcpwatch/policy.md", 0o644, Content::Repo("docs/policy.md")),
        item("/usr/share/doc/mcpwatch/examples/policy.toml", 0o644, Content::Repo("examples/policy.toml")),
        item("/usr/share/doc/mcpwatch/reference.txt", 0o644, Content::Text(reference)),
        item("/usr/share/bash-completion/completions/mcpwatch", 0o644, Content::Text(completion(&["completions", "bash"])?)),
        item("/usr/share/zsh/vendor-completions/_mcpwatch", 0o644, Content::Text(completion(&["completions", "zsh"])?)),
        item("/usr/share/fish/vendor_completions.d/mcpwatch.fish", 0o644, Content::Text(completion(&["completions", "fish"])?)),
    ])
}

const CONFIG: &str = "/etc/mcpwatch/mcpwatchd.toml";
const STATE_DIR: &str = "/var/lib/mcpwatch";

/// Creates the user, group and directories: systemd's tools where they exist, the
/// classic ones otherwise (containers, hosts without systemd as PID 1 still have them).
const SETUP_SCRIPT: &str = r#"
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers /usr/lib/sysusers.d/mcpwatch.conf
else
    getent group mcpwatch >/dev/null || groupadd --system mcpwatch
    getent passwd mcpwatch >/dev/null || useradd --system --gid mcpwatch --home-dir /var/lib/mcpwatch --no-create-home --shell /usr/sbin/nologin mcpwatch
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/mcpwatch.conf || true
fi
install -d -m 0700 -o mcpwatch -g mcpwatch /var/lib/mcpwatch
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
"#;

fn build(args: &BuildArgs) -> Result<PathBuf> {
    if !args.no_build {
        let mut cmd = util::cargo();
        cmd.args(["build", "-p", "mcpwatchd", "-p", "mcpwatch"]);
        if args.profile == "release" {
            cmd.arg("--release");
        } else if args.profile != "debug" {
            cmd.args(["--profile", &args.profile]);
        }
        util::run(&mut cmd)?;
    }
    let dir = util::target_dir().join(&args.profile);
    for b in ["mcpwatchd", "mcpwatch"] {
        if !dir.join(b).exists() {
            bail!("{} is not built (drop --no-build, or build the {} profile first)", dir.join(b).display(), args.profile);
        }
    }
    Ok(dir)
}

/// Writes every item under `root`, creating directories; `keep_config` leaves an
/// existing config file alone (the admin's edits win).
fn place(items: &[Item], bins: &Path, root: &Path, keep_config: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for it in items {
        let dest = root.join(it.dest.trim_start_matches('/'));
        if keep_config && it.dest == CONFIG && dest.exists() {
            util::step(format!("keeping {}", dest.display()));
            continue;
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let bytes = match &it.content {
            Content::Repo(p) => std::fs::read(util::repo_root().join(p)).with_context(|| format!("reading {p}"))?,
            Content::Binary(b) => std::fs::read(bins.join(b)).with_context(|| format!("reading {b}"))?,
            Content::Text(t) => t.clone().into_bytes(),
        };
        // Via a temporary name: a running binary is replaced, not written into.
        let tmp = dest.with_extension("xtask-new");
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(it.mode))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
    }
    Ok(())
}

fn arch() -> String {
    util::output_of("dpkg", ["--print-architecture"]).map(|s| s.trim().to_string()).unwrap_or_else(|| "amd64".into())
}

pub fn deb(args: &DebArgs) -> Result<PathBuf> {
    if util::which("dpkg-deb").is_none() {
        bail!("dpkg-deb not found: `cargo xtask deb` builds a Debian package (use `cargo xtask install` elsewhere)");
    }
    let bins = build(&args.build)?;
    let items = layout("/usr/bin", &bins)?;
    let stage = tempfile_dir("mcpwatch-deb")?;
    place(&items, &bins, &stage, false)?;
    // Debug info stays in the build tree; the package carries stripped binaries.
    if util::which("strip").is_some() {
        for b in ["mcpwatchd", "mcpwatch"] {
            util::run(Command::new("strip").arg("--strip-debug").arg(stage.join("usr/bin").join(b)))?;
        }
    }
    let debian = stage.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;
    let version = env!("CARGO_PKG_VERSION");
    let installed_kib: u64 = items
        .iter()
        .filter_map(|i| std::fs::metadata(stage.join(i.dest.trim_start_matches('/'))).ok())
        .map(|m| m.len().div_ceil(1024))
        .sum();
    let control = format!(
        "Package: mcpwatch\nVersion: {version}\nArchitecture: {}\nMaintainer: mcpwatch developers <mcpwatch@localhost>\n\
         Installed-Size: {installed_kib}\nDepends: libc6, passwd\nRecommends: systemd\nSection: admin\nPriority: optional\n\
         Homepage: https://example.invalid/mcpwatch\n\
         Description: watch and govern MCP (Model Context Protocol) connections on a host\n \
         mcpwatchd redirects AI agents' MCP connections with eBPF, audits every call,\n \
         applies a policy (deny, redact, approve, rate-limit) and keeps an inventory\n \
         of MCP servers. The service is installed but not enabled.\n",
        arch()
    );
    let scripts = [
        ("control", control, 0o644),
        ("conffiles", format!("{CONFIG}\n"), 0o644),
        // Installs the user and directories; enables nothing the admin did not ask for.
        ("postinst", format!("#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n{SETUP_SCRIPT}\nfi\nexit 0\n"), 0o755),
        (
            "prerm",
            "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ] && systemctl is-active --quiet mcpwatchd 2>/dev/null; then\n    systemctl stop mcpwatchd || true\nfi\nexit 0\n".to_string(),
            0o755,
        ),
        // State (audit trail, CA, host secret) goes only on purge.
        (
            "postrm",
            format!("#!/bin/sh\nset -e\nif [ \"$1\" = purge ]; then\n    rm -rf {STATE_DIR} /etc/mcpwatch /run/mcpwatch\nfi\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\nexit 0\n"),
            0o755,
        ),
    ];
    for (name, text, mode) in scripts {
        let p = debian.join(name);
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    }
    let out = if args.out.is_absolute() { args.out.clone() } else { util::repo_root().join(&args.out) };
    std::fs::create_dir_all(&out)?;
    let deb = out.join(format!("mcpwatch_{version}_{}.deb", arch()));
    util::run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zgzip", "--build"]).arg(&stage).arg(&deb))?;
    let _ = std::fs::remove_dir_all(&stage);
    util::step(format!("built {}", deb.display()));
    if args.install {
        util::run(Command::new("dpkg").arg("-i").arg(&deb))?;
        util::step("installed; enable it with: systemctl enable --now mcpwatchd");
    }
    println!("{}", deb.display());
    Ok(deb)
}

pub fn install(args: &InstallArgs) -> Result<()> {
    let bins = build(&args.build)?;
    let items = layout("/usr/local/bin", &bins)?;
    place(&items, &bins, &args.root, true)?;
    if args.root == Path::new("/") {
        util::run(Command::new("sh").arg("-c").arg(SETUP_SCRIPT))?;
    }
    util::step("installed; the service is not enabled: systemctl enable --now mcpwatchd");
    Ok(())
}

pub fn uninstall(args: &UninstallArgs) -> Result<()> {
    // Binaries are not needed to know the file list; an empty bins dir will do for
    // everything but the generated texts, which are only removed.
    for dest in [
        "/usr/local/bin/mcpwatchd",
        "/usr/local/bin/mcpwatch",
        "/etc/systemd/system/mcpwatchd.service",
        "/usr/lib/sysusers.d/mcpwatch.conf",
        "/usr/lib/tmpfiles.d/mcpwatch.conf",
        "/usr/share/bash-completion/completions/mcpwatch",
        "/usr/share/zsh/vendor-completions/_mcpwatch",
        "/usr/share/fish/vendor_completions.d/mcpwatch.fish",
    ] {
        let p = args.root.join(dest.trim_start_matches('/'));
        match std::fs::remove_file(&p) {
            Ok(()) => util::step(format!("removed {}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    let mut dirs = vec!["/usr/share/doc/mcpwatch"];
    if args.purge {
        dirs.extend(["/etc/mcpwatch", STATE_DIR]);
    }
    for d in dirs {
        let p = args.root.join(d.trim_start_matches('/'));
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            util::step(format!("removed {}", p.display()));
        }
    }
    if !args.purge {
        util::step(format!("kept {CONFIG} and {STATE_DIR} (--purge removes them)"));
    }
    Ok(())
}

fn tempfile_dir(prefix: &str) -> Result<PathBuf> {
    let p = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
