//! `cargo xtask setup`: installs everything the integration tests and the benchmark
//! need, idempotently. A fresh machine has only the Rust toolchain; this brings the
//! Debian packages (clang/llvm/libbpf for eBPF, nginx and wrk for comparisons), a
//! Python venv with the pinned MCP SDK, the pinned Node SDK packages, and the rmcp
//! peer binary. Every step checks first and says what it does; a second run is a
//! handful of cheap checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{self, section, step};

/// Options of `cargo xtask setup`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SetupArgs {
    /// Skip the Debian packages check (for machines where they come from elsewhere).
    #[arg(long)]
    pub no_apt: bool,
}

/// One Debian requirement: satisfied when any of `any_of` is installed; `install` is
/// what gets installed otherwise.
struct AptNeed {
    any_of: &'static [&'static str],
    install: &'static str,
}

const APT_NEEDS: &[AptNeed] = &[
    AptNeed {
        any_of: &["clang-19"],
        install: "clang-19",
    },
    AptNeed {
        any_of: &["llvm-19"],
        install: "llvm-19",
    },
    AptNeed {
        any_of: &["libbpf-dev"],
        install: "libbpf-dev",
    },
    AptNeed {
        any_of: &["bpftool"],
        install: "bpftool",
    },
    AptNeed {
        any_of: &["nginx-light", "nginx", "nginx-core", "nginx-full"],
        install: "nginx-light",
    },
    AptNeed {
        any_of: &["wrk"],
        install: "wrk",
    },
    AptNeed {
        any_of: &["iproute2"],
        install: "iproute2",
    },
    AptNeed {
        any_of: &["python3-venv"],
        install: "python3-venv",
    },
    AptNeed {
        any_of: &["ca-certificates"],
        install: "ca-certificates",
    },
    // Real SIEM-side peers for the sink and metrics tests (tests/src/siem.rs). There is
    // no Grafana Loki in Debian (its `loki` package is unrelated genetics software), so
    // the Loki sink is tested against a receiver in the test.
    AptNeed {
        any_of: &["rsyslog"],
        install: "rsyslog",
    },
    AptNeed {
        any_of: &["rsyslog-gnutls"],
        install: "rsyslog-gnutls",
    },
    AptNeed {
        any_of: &["prometheus"],
        install: "prometheus",
    },
    // Headless browser for the HTML report test (tests/tests/it/report.rs).
    AptNeed {
        any_of: &["chromium"],
        install: "chromium",
    },
];

/// Where the Python venv of the peers lives (git-ignored).
pub fn venv_dir() -> PathBuf {
    util::repo_root().join(".peers").join("venv")
}

/// Where the Node peers and their node_modules live.
pub fn node_dir() -> PathBuf {
    util::repo_root().join("tests").join("peers").join("node")
}

/// Runs every setup step in order.
pub fn run(args: &SetupArgs) -> anyhow::Result<()> {
    if args.no_apt {
        section("Debian packages: skipped (--no-apt)");
    } else {
        apt_packages()?;
    }
    python_venv()?;
    node_packages()?;
    rmcp_peer()?;
    section("setup done");
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    section("Debian packages");
    let mut names: Vec<&str> = APT_NEEDS
        .iter()
        .flat_map(|n| n.any_of.iter().copied())
        .collect();
    let need_node = util::which("node").is_none() || util::which("npm").is_none();
    if need_node {
        names.extend(["nodejs", "npm"]);
    }
    let installed = dpkg_installed(&names);
    let mut missing: Vec<&str> = APT_NEEDS
        .iter()
        .filter(|n| {
            !n.any_of
                .iter()
                .any(|p| installed.get(*p).copied().unwrap_or(false))
        })
        .map(|n| n.install)
        .collect();
    if need_node {
        missing.extend(
            ["nodejs", "npm"]
                .into_iter()
                .filter(|p| !installed.get(*p).copied().unwrap_or(false)),
        );
    }
    if missing.is_empty() {
        step(format!(
            "all {} present",
            APT_NEEDS.len() + if need_node { 2 } else { 0 }
        ));
        return Ok(());
    }
    step(format!("missing: {}", missing.join(" ")));
    if !util::is_root() {
        bail!(
            "Debian packages missing ({}) and we are not root: run `sudo apt-get install {}` \
             or re-run `cargo xtask setup` as root",
            missing.join(", "),
            missing.join(" ")
        );
    }
    util::run(Command::new("apt-get").arg("update").arg("-q"))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(())
}

/// Package name -> installed, for the names dpkg knows about.
fn dpkg_installed(names: &[&str]) -> BTreeMap<String, bool> {
    let mut map = BTreeMap::new();
    // dpkg-query exits 1 when some name is unknown but still prints the known ones.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package}\t${db:Status-Abbrev}\n"])
        .args(names)
        .output();
    if let Ok(out) = out {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((pkg, status)) = line.split_once('\t') {
                let pkg = pkg.split(':').next().unwrap_or(pkg).to_owned();
                map.insert(pkg, status.starts_with("ii"));
            }
        }
    }
    map
}

/// A Python able to create the venv: 3.10+ with venv and ensurepip.
fn base_python() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("MCPWATCH_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(p) = util::which("python3") {
        candidates.push(p);
    }
    candidates.push(PathBuf::from("/usr/bin/python3"));
    let probe = "import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 10) else 1)";
    for c in &candidates {
        let ok = Command::new(c)
            .args(["-c", probe])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(c.clone());
        }
    }
    bail!(
        "no Python 3.10+ with venv/ensurepip found (tried {}); install python3-venv or set MCPWATCH_PYTHON",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn python_venv() -> anyhow::Result<()> {
    section("Python peers (.peers/venv)");
    let root = util::repo_root();
    let requirements = root.join("tests/peers/python/requirements.txt");
    let req_bytes = std::fs::read(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let venv = venv_dir();
    let py = venv.join("bin").join("python");
    let venv_version = util::output_of(&py.to_string_lossy(), ["--version"]);
    if venv_version.is_none() {
        if venv.exists() {
            step(format!("{} is broken: recreating it", venv.display()));
            std::fs::remove_dir_all(&venv)
                .with_context(|| format!("removing {}", venv.display()))?;
        }
        let base = base_python()?;
        util::run(Command::new(&base).args(["-m", "venv"]).arg(&venv))?;
    }
    let version = util::output_of(&py.to_string_lossy(), ["--version"])
        .with_context(|| format!("{} does not run after creating the venv", py.display()))?;
    let expected = util::fingerprint(&[&req_bytes, version.as_bytes()]);
    let stamp = venv.join(".mcpwatch-requirements");
    if util::stamp_matches(&stamp, &expected) {
        step(format!("up to date ({version}, requirements {expected})"));
        return Ok(());
    }
    util::run(
        Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
                "-r",
            ])
            .arg(&requirements),
    )?;
    write_stamp(&stamp, &expected)?;
    step(format!("installed ({version}, requirements {expected})"));
    Ok(())
}

/// Where the pinned MCP conformance suite (and the Node 22 it runs on) is installed.
pub fn conformance_dir() -> PathBuf {
    util::repo_root().join("tests").join("peers").join("conformance")
}

fn node_packages() -> anyhow::Result<()> {
    npm_ci(&node_dir(), "Node peers (tests/peers/node/node_modules)")?;
    npm_ci(&conformance_dir(), "MCP conformance suite (tests/peers/conformance/node_modules)")
}

/// `npm ci` in `dir` unless its lock, manifest and the machine's node are unchanged since
/// the last install (a stamp in node_modules records them).
fn npm_ci(dir: &Path, what: &str) -> anyhow::Result<()> {
    section(what);
    let lock = std::fs::read(dir.join("package-lock.json"))
        .with_context(|| format!("reading {}/package-lock.json", dir.display()))?;
    let manifest = std::fs::read(dir.join("package.json"))
        .with_context(|| format!("reading {}/package.json", dir.display()))?;
    let node_version =
        util::output_of("node", ["--version"]).context("`node` not found on PATH")?;
    let major: u32 = node_version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 18 {
        bail!("node {node_version} is too old: the MCP SDK needs Node 18 or newer");
    }
    let expected = util::fingerprint(&[&lock, &manifest, node_version.as_bytes()]);
    let stamp = dir.join("node_modules").join(".mcpwatch-lock");
    if util::stamp_matches(&stamp, &expected) {
        step(format!("up to date (node {node_version}, lock {expected})"));
        return Ok(());
    }
    let ci = || {
        util::run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(dir),
        )
    };
    // npm's tar extraction now and then fails a package with ENOENT ("Cannot cd into
    // node_modules/<pkg>", npm/cli#4140; seen once here in a fresh-clone CI run). `npm ci`
    // starts from an empty node_modules, so one more run is a clean retry; a second
    // failure is reported.
    if let Err(first) = ci() {
        step(format!("npm ci failed ({first:#}); retrying once"));
        ci().context("npm ci failed twice")?;
    }
    write_stamp(&stamp, &expected)?;
    step(format!("installed (node {node_version}, lock {expected})"));
    Ok(())
}

fn rmcp_peer() -> anyhow::Result<()> {
    section("rmcp peer (cargo build --release -p mcpwatch-peer-rmcp)");
    util::run(util::cargo().args(["build", "--release", "-p", "mcpwatch-peer-rmcp"]))
}

fn write_stamp(stamp: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(stamp, format!("{value}\n"))
        .with_context(|| format!("writing {}", stamp.display()))
}
