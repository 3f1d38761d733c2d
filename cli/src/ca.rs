//! `mcpwatch ca`: the local CA that mcpwatchd signs its TLS leaves with.
//!
//! Why it exists: intercepting HTTPS only works for clients that trust the mcpwatch CA, and
//! getting a CA into the right trust stores (system, Node, Python, systemd services) is where
//! operators go wrong. This module shows and exports the certificate, installs it into the
//! system store (Debian's update-ca-certificates or RHEL's update-ca-trust), prints exactly
//! what each runtime needs, reverses the install, and retires the CA for rotation.
//!
//! It works without the daemon and without linking it: `show`/`export` read
//! `<state-dir>/ca/ca.pem` and `<state-dir>/ca/retired/*.pem` as text (the fingerprint is the
//! SHA-256 of the DER inside the PEM); the private key is never read.
//!
//! Rotation keeps clients working: `rotate` asks the running daemon for a new CA (it signs new
//! leaves at once) and publishes the bundle (new + previous certificate) where `install` put
//! the anchor; `withdraw` removes the previous CA from the daemon, the bundle and every store
//! `install` wrote, and checks it is gone. With the daemon stopped, `rotate` retires the
//! certificate (kept trusted, in `retired/`) and deletes the key; the next start creates the
//! new CA. The daemon never writes the system store itself (it runs unprivileged).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use sha2::Digest as _;

/// File names inside `<state-dir>/ca/` (kept in step with mcpwatch-tls).
const CA_DIR: &str = "ca";
const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
/// Name of the installed anchor in the system store.
const ANCHOR_NAME: &str = "mcpwatch-ca.crt";
/// A CA file larger than this is not ours.
const MAX_PEM_BYTES: u64 = 64 * 1024;

#[derive(Debug, Args)]
pub struct CaArgs {
    /// mcpwatchd's state directory (the CA is in `<DIR>/ca/`). Default: the running
    /// daemon's (asked over the control socket), else /var/lib/mcpwatch.
    #[arg(long, global = true, value_name = "DIR", env = "MCPWATCH_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Filesystem root for the trust store (tests); the store's update command only runs
    /// when this is `/`.
    #[arg(long, global = true, hide = true, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Path, fingerprint, subject and expiry of the CA certificate.
    Show {
        /// Print as a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print the CA certificate (never the key).
    Export {
        #[arg(long, value_enum, default_value_t = Format::Pem)]
        format: Format,
        /// Print the trust bundle instead: the current CA and every previous one not yet
        /// withdrawn (PEM only).
        #[arg(long, conflicts_with = "format")]
        bundle: bool,
    },
    /// Add the CA bundle to the system trust store and print what Node, Python and systemd need.
    Install,
    /// Remove the CA from the system trust store.
    Uninstall,
    /// Make a new CA sign from now on; the current one stays trusted (in the published bundle)
    /// until `ca withdraw` or `[tls] rotation_overlap_days`.
    Rotate,
    /// Withdraw every previous CA: out of the bundle, every trust store `install` wrote, and
    /// the state dir.
    Withdraw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Pem,
    Der,
}

/// What `ca show` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CaView {
    pub path: String,
    pub fingerprint_sha256: String,
    pub subject: Option<String>,
    pub not_after: Option<String>,
    /// Where `ca install` puts it, and whether it is there (same certificate).
    pub system_store: Option<String>,
    pub installed: bool,
    /// Previous CAs still trusted (in the bundle) until withdrawn.
    pub previous: Vec<PreviousView>,
    /// The installed anchor holds exactly the current bundle.
    pub store_current: bool,
}

/// A previous CA waiting for withdrawal, as `ca show` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PreviousView {
    pub path: String,
    pub fingerprint_sha256: String,
    pub not_after: Option<String>,
    pub retired_at_unix: i64,
    pub reason: String,
    pub installed: bool,
}

/// The state dir: the flag (or `MCPWATCH_STATE_DIR`), else the one the running daemon
/// reports in its status, else the default. A daemon started with `--state-dir` keeps
/// its CA elsewhere than the default; asking it avoids showing or installing a stale one.
fn state_dir(args: &CaArgs, socket: &Path) -> PathBuf {
    if let Some(d) = &args.state_dir {
        return d.clone();
    }
    match crate::client::Conn::call(socket, &mcpwatch_api::Request::Status) {
        Ok(mcpwatch_api::Response::Status(st)) if !st.state_dir.is_empty() => PathBuf::from(st.state_dir),
        _ => PathBuf::from(mcpwatch_api::DEFAULT_STATE_DIR),
    }
}

pub fn run(args: &CaArgs, socket: &Path, out: &mut dyn Write) -> Result<()> {
    let dir = state_dir(args, socket).join(CA_DIR);
    match &args.command {
        CaCommand::Show { json } => show(&dir, &args.root, *json, out),
        CaCommand::Export { bundle: true, .. } => write_out(out, bundle(&dir)?.as_bytes()),
        CaCommand::Export { format, .. } => {
            let ca = read_ca(&dir)?;
            match format {
                Format::Pem => write_out(out, ca.pem.as_bytes()),
                Format::Der => write_out(out, &ca.der),
            }
        }
        CaCommand::Install => install(&dir, &args.root, out),
        CaCommand::Uninstall => uninstall(&args.root, out),
        CaCommand::Rotate => rotate(&dir, &args.root, socket, out),
        CaCommand::Withdraw => withdraw(&dir, &args.root, socket, out),
    }
}

fn write_out(out: &mut dyn Write, bytes: &[u8]) -> Result<()> {
    out.write_all(bytes)
        .map_err(|e| crate::StdoutError(e).into())
}

/// The CA certificate as read from `ca.pem`.
#[derive(Debug, Clone)]
pub struct CaCert {
    pub path: PathBuf,
    pub pem: String,
    pub der: Vec<u8>,
}

fn read_ca(dir: &Path) -> Result<CaCert> {
    let path = dir.join(CA_CERT_FILE);
    let meta = std::fs::metadata(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!(
                "no CA at {}: mcpwatchd creates it on its first start with TLS enabled (or pass --state-dir)",
                path.display()
            )
        } else {
            anyhow!("reading {}: {e}", path.display())
        }
    })?;
    if meta.len() > MAX_PEM_BYTES {
        bail!("{} is larger than {MAX_PEM_BYTES} bytes: not an mcpwatch CA", path.display());
    }
    let pem = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let der = pem_to_der(&pem).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(CaCert { path, pem, der })
}

/// The DER of the single certificate in `pem`.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find(BEGIN).ok_or("no BEGIN CERTIFICATE line")?;
    let rest = &pem[start + BEGIN.len()..];
    let end = rest.find(END).ok_or("no END CERTIFICATE line")?;
    if rest[end + END.len()..].contains(BEGIN) {
        return Err("more than one certificate".into());
    }
    let b64: String = rest[..end].chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| format!("certificate is not valid base64: {e}"))?;
    if der.first() != Some(&0x30) {
        return Err("certificate is not DER".into());
    }
    Ok(der)
}

/// Colon-separated upper-case hex SHA-256 (the form openssl and browsers print).
pub fn fingerprint(der: &[u8]) -> String {
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Where the system trust store wants local anchors, and how to refresh it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TrustStore {
    /// The anchor file we manage (`<root>/…/mcpwatch-ca.crt`).
    anchor: PathBuf,
    /// The refresh command (`update-ca-certificates` / `update-ca-trust extract`).
    update: Vec<&'static str>,
    /// The refresh command after a removal: Debian's plain refresh only adds links, so a
    /// removed anchor stays linked in /etc/ssl/certs (and in Java's cacerts) without `--fresh`.
    update_removal: Vec<&'static str>,
    /// Files that hold every trusted certificate after a refresh (the bundle and Java's
    /// store): checked after `uninstall` so "removed" means no longer trusted.
    stores: Vec<&'static str>,
    /// The system bundle that includes the anchor after the refresh (for SSL_CERT_FILE).
    bundle: &'static str,
    family: &'static str,
}

fn trust_store(root: &Path) -> Result<TrustStore> {
    let debian = root.join("usr/local/share/ca-certificates");
    let rhel = root.join("etc/pki/ca-trust/source/anchors");
    if debian.is_dir() || root.join("usr/sbin/update-ca-certificates").exists() {
        Ok(TrustStore {
            anchor: debian.join(ANCHOR_NAME),
            update: vec!["update-ca-certificates"],
            update_removal: vec!["update-ca-certificates", "--fresh"],
            stores: vec!["etc/ssl/certs/ca-certificates.crt", "etc/ssl/certs/java/cacerts"],
            bundle: "/etc/ssl/certs/ca-certificates.crt",
            family: "Debian/Ubuntu",
        })
    } else if rhel.is_dir() || root.join("usr/bin/update-ca-trust").exists() {
        Ok(TrustStore {
            anchor: rhel.join(ANCHOR_NAME),
            update: vec!["update-ca-trust", "extract"],
            update_removal: vec!["update-ca-trust", "extract"],
            stores: vec!["etc/pki/tls/certs/ca-bundle.crt", "etc/pki/java/cacerts"],
            bundle: "/etc/pki/tls/certs/ca-bundle.crt",
            family: "RHEL/Fedora",
        })
    } else {
        bail!(
            "no supported system trust store under {} (expected usr/local/share/ca-certificates or etc/pki/ca-trust/source/anchors); \
             use `mcpwatch ca export` and add the certificate by hand",
            root.display()
        )
    }
}

fn show(dir: &Path, root: &Path, json: bool, out: &mut dyn Write) -> Result<()> {
    let ca = read_ca(dir)?;
    let (subject, not_after) = der::subject_and_expiry(&ca.der).unwrap_or((None, None));
    let store = trust_store(root).ok();
    let anchor: Vec<Vec<u8>> = store
        .as_ref()
        .and_then(|s| std::fs::read_to_string(&s.anchor).ok())
        .map(|pem| pem_ders(&pem))
        .unwrap_or_default();
    let previous: Vec<PreviousView> = retired(dir)?
        .into_iter()
        .map(|r| PreviousView {
            path: r.cert.path.display().to_string(),
            fingerprint_sha256: fingerprint(&r.cert.der),
            not_after: der::subject_and_expiry(&r.cert.der).and_then(|(_, t)| t),
            retired_at_unix: r.retired_at_unix,
            reason: r.reason,
            installed: anchor.contains(&r.cert.der),
        })
        .collect();
    let wanted = pem_ders(&bundle(dir)?);
    let view = CaView {
        path: ca.path.display().to_string(),
        fingerprint_sha256: fingerprint(&ca.der),
        subject,
        not_after,
        system_store: store.map(|s| s.anchor.display().to_string()),
        installed: anchor.contains(&ca.der),
        previous,
        store_current: anchor == wanted,
    };
    if json {
        let mut text = serde_json::to_string_pretty(&view)?;
        text.push('\n');
        return write_out(out, text.as_bytes());
    }
    let mut text = String::new();
    text.push_str(&format!("path            {}\n", view.path));
    text.push_str(&format!("sha256          {}\n", view.fingerprint_sha256));
    if let Some(s) = &view.subject {
        text.push_str(&format!("subject         {s}\n"));
    }
    if let Some(t) = &view.not_after {
        text.push_str(&format!("expires         {t}\n"));
    }
    match &view.system_store {
        Some(p) if view.installed => text.push_str(&format!("system store    installed ({p})\n")),
        Some(p) => text.push_str(&format!("system store    not installed (`mcpwatch ca install` puts it at {p})\n")),
        None => text.push_str("system store    unsupported distribution\n"),
    }
    for p in &view.previous {
        text.push_str(&format!(
            "previous CA     sha256 {}, expires {}, {} at {} (unix); WITHDRAWAL PENDING (`mcpwatch ca withdraw`){}\n",
            p.fingerprint_sha256,
            p.not_after.as_deref().unwrap_or("?"),
            p.reason,
            p.retired_at_unix,
            if p.installed { "; in the system store" } else { "" }
        ));
    }
    if view.system_store.is_some() && view.installed && !view.store_current {
        text.push_str("system store    OUT OF DATE: it does not hold exactly the current bundle; run `mcpwatch ca install`\n");
    }
    write_out(out, text.as_bytes())
}

fn install(dir: &Path, root: &Path, out: &mut dyn Write) -> Result<()> {
    let ca = read_ca(dir)?;
    let store = trust_store(root)?;
    let bundle = bundle(dir)?;
    let mut text = format!(
        "installed the mcpwatch CA (sha256 {}) as {}\n",
        fingerprint(&ca.der),
        store.anchor.display()
    );
    let previous = pem_ders(&bundle).len() - 1;
    if previous > 0 {
        text.push_str(&format!(
            "  with {previous} previous CA(s) still trusted until `mcpwatch ca withdraw` (the bundle)\n"
        ));
    }
    text.push_str(&publish(&store, root, &bundle, &[])?);
    // Agents run as other users and cannot read the state dir (0700): point them at the
    // published anchor (0644, certificates only), never at the daemon's own copy.
    text.push_str(&client_instructions(&published_path(&store, root), &store));
    write_out(out, text.as_bytes())
}

/// Writes `bundle` as the anchor, refreshes the store, and checks that no store still holds
/// a certificate the anchor held before but the bundle does not (or one of `withdrawn`).
fn publish(store: &TrustStore, root: &Path, bundle: &str, withdrawn: &[Vec<u8>]) -> Result<String> {
    if let Some(parent) = store.anchor.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let keep = pem_ders(bundle);
    let before = std::fs::read_to_string(&store.anchor).map(|p| pem_ders(&p)).unwrap_or_default();
    let mut removed: Vec<Vec<u8>> = before.into_iter().chain(withdrawn.iter().cloned()).filter(|d| !keep.contains(d)).collect();
    removed.dedup();
    write_public_file(&store.anchor, bundle.as_bytes())?;
    let mut text = format!("published the bundle ({} certificate(s)) as {}\n", keep.len(), store.anchor.display());
    if removed.is_empty() {
        text.push_str(&refresh(&store.update, store, root)?);
        return Ok(text);
    }
    text.push_str(&refresh(&store.update_removal, store, root)?);
    for der in &removed {
        let still = holding(store, root, der);
        if !still.is_empty() {
            bail!(
                "{text}the withdrawn mcpwatch CA (sha256 {}) is still trusted by {} after the refresh: remove it there by hand",
                fingerprint(der),
                still.join(", ")
            );
        }
        text.push_str(&format!("checked: no trust store holds the withdrawn CA (sha256 {}) any more\n", fingerprint(der)));
    }
    Ok(text)
}

fn uninstall(root: &Path, out: &mut dyn Write) -> Result<()> {
    let store = trust_store(root)?;
    let installed_der = std::fs::read_to_string(&store.anchor).ok().and_then(|pem| pem_to_der(&pem).ok());
    let text = match std::fs::remove_file(&store.anchor) {
        Ok(()) => {
            let mut t = format!("removed {}\n", store.anchor.display());
            t.push_str(&refresh(&store.update_removal, &store, root)?);
            if let Some(der) = &installed_der {
                let still = still_trusted_by(&store, root, der);
                if !still.is_empty() {
                    write_out(out, t.as_bytes())?;
                    bail!(
                        "the mcpwatch CA is still trusted by {} after the refresh: remove it there by hand",
                        still.join(", ")
                    );
                }
                t.push_str("checked: no system or Java trust store holds the mcpwatch CA any more\n");
            }
            t.push_str(
                "also remove NODE_EXTRA_CA_CERTS / SSL_CERT_FILE / REQUESTS_CA_BUNDLE settings that point at the mcpwatch CA\n",
            );
            t
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("the mcpwatch CA is not installed ({} does not exist)\n", store.anchor.display())
        }
        Err(e) => return Err(anyhow!("removing {}: {e}", store.anchor.display())),
    };
    write_out(out, text.as_bytes())
}

fn rotate(dir: &Path, root: &Path, socket: &Path, out: &mut dyn Write) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        let change = ask(socket, &mcpwatch_api::Request::CaRotate)?;
        let mut text = format!("{}\n", change.message);
        text.push_str(&publish_change(root, &change).with_context(|| {
            format!("{}\nthe daemon rotated its CA, but publishing the bundle failed: run `mcpwatch ca install` as root", change.message)
        })?);
        text.push_str(
            "next: give the bundle to every client that does not read the system store (NODE_EXTRA_CA_CERTS, \
             SSL_CERT_FILE: `mcpwatch ca export --bundle`), then `mcpwatch ca withdraw` once they have it\n",
        );
        return write_out(out, text.as_bytes());
    }
    // Offline: retire the certificate (still trusted until withdrawn) and delete the key;
    // mcpwatchd creates the new CA at its next start.
    let cert = dir.join(CA_CERT_FILE);
    let key = dir.join(CA_KEY_FILE);
    if !cert.exists() && !key.exists() {
        bail!("no CA in {}: nothing to rotate (mcpwatchd creates one on its next start)", dir.display());
    }
    let mut text = String::new();
    match std::fs::remove_file(&key) {
        Ok(()) => text.push_str(&format!("deleted the old CA key {}\n", key.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow!("deleting {}: {e}", key.display())),
    }
    if cert.exists() {
        let der = read_ca(dir).map(|c| c.der).unwrap_or_default();
        let fp = fingerprint(&der);
        let retired_dir = dir.join(RETIRED_DIR);
        std::fs::create_dir_all(&retired_dir).with_context(|| format!("creating {}", retired_dir.display()))?;
        let short: String = fp.chars().filter(|c| *c != ':').take(16).collect();
        let target = retired_dir.join(format!("{}-offline-{short}.pem", unix_now()));
        std::fs::rename(&cert, &target).with_context(|| format!("retiring {}", cert.display()))?;
        text.push_str(&format!(
            "retired the old certificate (sha256 {fp}) to {}: it stays trusted (in the bundle) until `mcpwatch ca withdraw`\n",
            target.display()
        ));
    }
    text.push_str(
        "next: start mcpwatchd (it creates the new CA), run `mcpwatch ca install` to publish the bundle (new + old), \
         give it to clients that do not read the system store, then `mcpwatch ca withdraw`\n",
    );
    write_out(out, text.as_bytes())
}

fn withdraw(dir: &Path, root: &Path, socket: &Path, out: &mut dyn Write) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        let change = ask(socket, &mcpwatch_api::Request::CaWithdraw)?;
        let mut text = format!("{}\n", change.message);
        text.push_str(&publish_change(root, &change).with_context(|| {
            format!("{}\nthe daemon withdrew the CA(s), but the trust store still needs updating: run `mcpwatch ca install` as root", change.message)
        })?);
        return write_out(out, text.as_bytes());
    }
    // Offline: the retired certificates go; the bundle is the current CA alone.
    read_ca(dir).context("no current CA to keep trusting: start mcpwatchd first (it creates the new CA), then withdraw")?;
    let gone = retired(dir)?;
    let mut text = String::new();
    for r in &gone {
        std::fs::remove_file(&r.cert.path).with_context(|| format!("deleting {}", r.cert.path.display()))?;
        text.push_str(&format!("withdrew the previous CA (sha256 {}): deleted {}\n", fingerprint(&r.cert.der), r.cert.path.display()));
    }
    if gone.is_empty() {
        text.push_str("no previous CA is waiting for withdrawal\n");
    }
    let withdrawn: Vec<Vec<u8>> = gone.into_iter().map(|r| r.cert.der).collect();
    if let Ok(store) = trust_store(root)
        && store.anchor.exists()
    {
        text.push_str(&publish(&store, root, &bundle(dir)?, &withdrawn)?);
    }
    write_out(out, text.as_bytes())
}

/// Sends a CA request to the running daemon; its refusal is the error.
fn ask(socket: &Path, req: &mcpwatch_api::Request) -> Result<mcpwatch_api::CaChange> {
    match crate::client::Conn::call(socket, req)? {
        mcpwatch_api::Response::Ca(change) => Ok(change),
        mcpwatch_api::Response::Error { message } => bail!("mcpwatchd: {message}"),
        _ => bail!("mcpwatchd answered the CA request with something else (an older daemon?)"),
    }
}

/// Publishes a daemon's new bundle where `ca install` put the anchor (if it did).
fn publish_change(root: &Path, change: &mcpwatch_api::CaChange) -> Result<String> {
    let withdrawn: Vec<Vec<u8>> = change.withdrawn_pem.iter().flat_map(|p| pem_ders(p)).collect();
    match trust_store(root) {
        Ok(store) if store.anchor.exists() => publish(&store, root, &change.bundle_pem, &withdrawn),
        Ok(store) => Ok(format!(
            "the system store has no mcpwatch anchor ({} does not exist): run `mcpwatch ca install` to publish the bundle\n",
            store.anchor.display()
        )),
        Err(e) => Ok(format!("{e}\n")),
    }
}

/// Sub-directory of the CA dir with the retired certificates (kept in step with mcpwatch-tls).
const RETIRED_DIR: &str = "retired";

/// A retired certificate, still trusted until withdrawn.
struct Retired {
    cert: CaCert,
    retired_at_unix: i64,
    reason: String,
}

/// `<dir>/retired/<unix>-<reason>-<fp>.pem`, oldest first; the current certificate is skipped.
fn retired(dir: &Path) -> Result<Vec<Retired>> {
    let rdir = dir.join(RETIRED_DIR);
    let entries = match std::fs::read_dir(&rdir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow!("reading {}: {e}", rdir.display())),
    };
    let current = read_ca(dir).map(|c| c.der).ok();
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".pem") else { continue };
        let mut parts = stem.splitn(3, '-');
        let Some(at) = parts.next().and_then(|t| t.parse::<i64>().ok()) else { continue };
        let reason = match parts.next() {
            Some("offline") => "rotated while mcpwatchd was stopped",
            Some("scope") => "re-issued for a changed [tls] scope",
            _ => "rotated",
        };
        let path = e.path();
        let Ok(pem) = std::fs::read_to_string(&path) else { continue };
        let Ok(der) = pem_to_der(&pem) else { continue };
        if Some(&der) == current.as_ref() {
            continue;
        }
        out.push(Retired { cert: CaCert { path, pem, der }, retired_at_unix: at, reason: reason.to_string() });
    }
    out.sort_by_key(|r| r.retired_at_unix);
    Ok(out)
}

/// The trust bundle: the current certificate, then every retired one.
fn bundle(dir: &Path) -> Result<String> {
    let mut text = read_ca(dir)?.pem;
    for r in retired(dir)? {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&r.cert.pem);
    }
    Ok(text)
}

/// The DER of every certificate in a PEM text.
fn pem_ders(text: &str) -> Vec<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let block = &rest[start..];
        let Some(end) = block.find(END) else { break };
        if let Ok(der) = pem_to_der(&block[..end + END.len()]) {
            out.push(der);
        }
        rest = &block[end + END.len()..];
    }
    out
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Where agents find the certificate: the published anchor, as seen from inside `root`.
fn published_path(store: &TrustStore, root: &Path) -> PathBuf {
    match store.anchor.strip_prefix(root) {
        Ok(rel) => Path::new("/").join(rel),
        Err(_) => store.anchor.clone(),
    }
}

/// The stores (under `root`) that still hold the certificate `der`: the PEM bundle, any
/// link or file in the hashed certs directory, and Java's keystore (searched for the DER
/// bytes, which a JKS/PKCS#12 trust store keeps as is).
fn still_trusted_by(store: &TrustStore, root: &Path, der: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for rel in &store.stores {
        let path = root.join(rel);
        let Ok(bytes) = std::fs::read(&path) else { continue };
        if holds_cert(&bytes, der) {
            found.push(path.display().to_string());
        }
    }
    if let Ok(entries) = std::fs::read_dir(root.join("etc/ssl/certs")) {
        for e in entries.flatten() {
            // update-ca-certificates links `mcpwatch-ca.pem` (and a hash link to that).
            let p = e.path();
            let ours = e.file_name().to_string_lossy().contains("mcpwatch-ca")
                || std::fs::read_link(&p).is_ok_and(|t| t.to_string_lossy().contains("mcpwatch-ca"));
            if ours {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

/// The stores (under `root`) whose content holds the certificate `der`: the PEM bundle, Java's
/// keystore, and any file or link in the hashed certs directory (by content, not by name: the
/// current mcpwatch anchor is legitimately linked there under our name).
fn holding(store: &TrustStore, root: &Path, der: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for rel in &store.stores {
        let path = root.join(rel);
        if std::fs::read(&path).is_ok_and(|b| holds_cert(&b, der)) {
            found.push(path.display().to_string());
        }
    }
    if let Ok(entries) = std::fs::read_dir(root.join("etc/ssl/certs")) {
        for e in entries.flatten() {
            let p = e.path();
            let small = std::fs::metadata(&p).is_ok_and(|m| m.is_file() && m.len() <= MAX_PEM_BYTES);
            if small && std::fs::read(&p).is_ok_and(|b| holds_cert(&b, der)) {
                found.push(p.display().to_string());
            }
        }
    }
    if store.anchor.exists() && std::fs::read(&store.anchor).is_ok_and(|b| holds_cert(&b, der)) {
        found.push(store.anchor.display().to_string());
    }
    found
}

/// Whether `bytes` (PEM text or a binary keystore) contains the certificate `der`.
fn holds_cert(bytes: &[u8], der: &[u8]) -> bool {
    if !der.is_empty() && bytes.windows(der.len()).any(|w| w == der) {
        return true;
    }
    let text = String::from_utf8_lossy(bytes);
    let mut rest = text.as_ref();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let block = &rest[start..];
        let Some(end) = block.find("-----END CERTIFICATE-----") else { break };
        let pem = &block[..end + "-----END CERTIFICATE-----".len()];
        if pem_to_der(pem).is_ok_and(|d| d == der) {
            return true;
        }
        rest = block.get(end + 1..).unwrap_or_default();
    }
    false
}

/// Runs `cmd` (a store refresh) when `root` is the real root; otherwise says it did not.
fn refresh(cmd_argv: &[&'static str], store: &TrustStore, root: &Path) -> Result<String> {
    let cmd = cmd_argv.join(" ");
    if root != Path::new("/") {
        return Ok(format!("not running `{cmd}`: --root {} is not /\n", root.display()));
    }
    let status = Command::new(cmd_argv[0])
        .args(&cmd_argv[1..])
        .status()
        .with_context(|| format!("running `{cmd}` ({} trust store)", store.family))?;
    if !status.success() {
        bail!("`{cmd}` failed ({status})");
    }
    Ok(format!("ran `{cmd}`\n"))
}

/// Writes a 0644 file via a temporary name, so a reader never sees half of it.
fn write_public_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("crt.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Exactly what each runtime needs to trust the CA.
fn client_instructions(ca_path: &Path, store: &TrustStore) -> String {
    let ca = ca_path.display();
    let bundle = store.bundle;
    format!(
        "\n\
Clients that use the system store now trust it (curl, Go, Rust with native roots, Python via truststore).\n\
Runtimes with their own store need one of these in their environment:\n\
  Node.js:   NODE_EXTRA_CA_CERTS={ca}\n\
             (Node >= 22.19 / 23.8: NODE_USE_SYSTEM_CA=1 uses the system store instead)\n\
  Python:    SSL_CERT_FILE={bundle}\n\
             REQUESTS_CA_BUNDLE={bundle}   (requests ignores SSL_CERT_FILE)\n\
             (the system bundle, which now includes the mcpwatch CA; pointing these at the CA\n\
              alone would break every host mcpwatch passes through)\n\
  systemd:   a drop-in per agent service, e.g. /etc/systemd/system/AGENT.service.d/mcpwatch-ca.conf:\n\
               [Service]\n\
               Environment=NODE_EXTRA_CA_CERTS={ca}\n\
               Environment=SSL_CERT_FILE={bundle}\n\
               Environment=REQUESTS_CA_BUNDLE={bundle}\n\
             then: systemctl daemon-reload && systemctl restart AGENT.service\n\
Processes already running keep their old trust store until restarted.\n"
    )
}

/// Just enough DER to name the certificate: subject CN/O and notAfter. Every failure is `None`.
mod der {
    /// (tag, content, rest) of the TLV at the start of `b`.
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *b.first()?;
        let first = *b.get(1)?;
        let (len, hdr) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | usize::from(*b.get(2 + i)?);
            }
            (len, 2 + n)
        };
        let end = hdr.checked_add(len)?;
        if end > b.len() {
            return None;
        }
        Some((tag, &b[hdr..end], &b[end..]))
    }

    pub fn subject_and_expiry(cert: &[u8]) -> Option<(Option<String>, Option<String>)> {
        let (_, cert_body, _) = tlv(cert)?;
        let (_, tbs, _) = tlv(cert_body)?;
        let mut rest = tbs;
        let (tag, _, r) = tlv(rest)?;
        rest = if tag == 0xa0 { r } else { rest }; // [0] version
        let (_, _, r) = tlv(rest)?; // serial
        let (_, _, r) = tlv(r)?; // signature algorithm
        let (_, _, r) = tlv(r)?; // issuer
        let (_, validity, r) = tlv(r)?;
        let (_, subject, _) = tlv(r)?;
        let not_after = tlv(validity)
            .and_then(|(_, _, after)| tlv(after))
            .and_then(|(tag, t, _)| time(tag, t));
        Some((name(subject), not_after))
    }

    /// `CN=..., O=...` from a Name (CN and O only).
    fn name(mut rdns: &[u8]) -> Option<String> {
        let mut parts = Vec::new();
        while !rdns.is_empty() {
            let (_, set, r) = tlv(rdns)?;
            rdns = r;
            let (_, atv, _) = tlv(set)?;
            let (_, oid, r) = tlv(atv)?;
            let (_, value, _) = tlv(r)?;
            let label = match oid {
                [0x55, 0x04, 0x03] => "CN",
                [0x55, 0x04, 0x0a] => "O",
                _ => continue,
            };
            let text: String = String::from_utf8_lossy(value)
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            parts.push(format!("{label}={text}"));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// UTCTime / GeneralizedTime as `YYYY-MM-DD HH:MM:SS UTC`.
    fn time(tag: u8, t: &[u8]) -> Option<String> {
        let s = std::str::from_utf8(t).ok()?;
        let full = match tag {
            0x17 if s.len() >= 12 => {
                let yy: u32 = s.get(0..2)?.parse().ok()?;
                format!("{}{}", if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
            }
            0x18 => s.to_string(),
            _ => return None,
        };
        if full.len() < 14 || !full[..14].bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(format!(
            "{}-{}-{} {}:{}:{} UTC",
            &full[0..4],
            &full[4..6],
            &full[6..8],
            &full[8..10],
            &full[10..12],
            &full[12..14]
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed P-256 certificate (CN "mcpwatch test CA", O "mcpwatch") made once with
    /// `openssl req -x509` for these tests; [`OPENSSL_FP`] is what `openssl x509 -fingerprint
    /// -sha256` printed for it.
    const PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBsTCCAVegAwIBAgIUUsV7p+ufl4olbM5YSksOz+LSvJswCgYIKoZIzj0EAwIw
LjEZMBcGA1UEAwwQbWNwd2F0Y2ggdGVzdCBDQTERMA8GA1UECgwIbWNwd2F0Y2gw
HhcNMjYxMTIyMDA0NjM5WhcNMzYxMTE5MDA0NjM5WjAuMRkwFwYDVQQDDBBtY3B3
YXRjaCB0ZXN0IENBMREwDwYDVQQKDAhtY3B3YXRjaDBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABHwFyYMgx1/8r5h1vpxBLMfYF85fq+NEv9GWeqXd19MlKJ7hin/8
P+JqjE5drCs56pg9YrzluwcHi602rH7C5lKjUzBRMB0GA1UdDgQWBBTnTlnP2fGJ
ycKlkH/WfAre699UujAfBgNVHSMEGDAWgBTnTlnP2fGJycKlkH/WfAre699UujAP
BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIBfaVJkwlL1IAlOfQ9st
Uq4voOZ//CxBOKc+/kAYNBygAiEArh7m4N8tM7zvJXXL205FoV1Y9u6hCx7216By
h+S1dp0=
-----END CERTIFICATE-----
";
    /// A second certificate (CN "mcpwatch test CA 2"), the "new" CA of the rotation tests.
    const PEM2: &str = "-----BEGIN CERTIFICATE-----
MIIBtTCCAVugAwIBAgIUTMgUjRnOYq74Zc9mB5l0so6FgDAwCgYIKoZIzj0EAwIw
MDEbMBkGA1UEAwwSbWNwd2F0Y2ggdGVzdCBDQSAyMREwDwYDVQQKDAhtY3B3YXRj
aDAeFw0yNjEyMDQyMTE0MTdaFw0zNjEyMDEyMTE0MTdaMDAxGzAZBgNVBAMMEm1j
cHdhdGNoIHRlc3QgQ0EgMjERMA8GA1UECgwIbWNwd2F0Y2gwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAATJuK6shqZ9jewqkBRie0liR+IlXomgci4K+vHAziY2S/p3
uvAcVqOXfUV8QtyciB4EzDt0ychzEj6EvcBFFbfmo1MwUTAdBgNVHQ4EFgQUGwmk
5g1OoLq3W7Ab3tpKMTnh71MwHwYDVR0jBBgwFoAUGwmk5g1OoLq3W7Ab3tpKMTnh
71MwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEA7itIG+sMLEH+
Uv4tRCqS38nqWHL1lGcvTH7N5XGbP2ACIGLlT2WE0hbj+jAlRLVlZlXBmd4KRS7l
EAmmr2LFYi7V
-----END CERTIFICATE-----
";
    const OPENSSL_FP: &str = "2A:6D:BD:06:69:60:E7:72:9D:6D:06:C6:23:B7:5A:A3:92:AF:95:2E:9B:7F:14:AA:9C:33:DC:F3:09:B8:12:17";

    #[test]
    fn pem_decodes_and_names_parse() {
        let der = pem_to_der(PEM).expect("decodes");
        assert_eq!(der[0], 0x30);
        let (subject, expiry) = der::subject_and_expiry(&der).expect("parses");
        assert_eq!(subject.as_deref(), Some("CN=mcpwatch test CA, O=mcpwatch"));
        assert_eq!(expiry.as_deref(), Some("2036-11-19 00:46:39 UTC"));
    }

    #[test]
    fn fingerprint_is_sha256_of_the_der_in_colon_hex() {
        let der = pem_to_der(PEM).expect("decodes");
        assert_eq!(fingerprint(&der), OPENSSL_FP);
    }

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        assert!(pem_to_der("").is_err());
        assert!(pem_to_der("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
        assert!(pem_to_der(&format!("{PEM}{PEM}")).is_err(), "two certificates");
        assert!(pem_to_der("-----BEGIN CERTIFICATE-----\nAAAA\n").is_err(), "no END");
        // Truncated DER never panics the name parser.
        let der = pem_to_der(PEM).expect("decodes");
        for cut in 0..der.len() {
            let _ = der::subject_and_expiry(&der[..cut]);
        }
    }

    fn ca_dir_with(pem: &str) -> tempfile::TempDir {
        let state = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(state.path().join(CA_DIR)).expect("mkdir");
        std::fs::write(state.path().join(CA_DIR).join(CA_CERT_FILE), pem).expect("write");
        std::fs::write(state.path().join(CA_DIR).join(CA_KEY_FILE), "key").expect("write");
        state
    }

    #[test]
    fn install_uninstall_and_rotate_against_a_temp_root() {
        let state = ca_dir_with(PEM);
        let dir = state.path().join(CA_DIR);
        let root = tempfile::tempdir().expect("root");
        std::fs::create_dir_all(root.path().join("usr/local/share/ca-certificates")).expect("mkdir");
        let anchor = root.path().join("usr/local/share/ca-certificates").join(ANCHOR_NAME);

        let mut out = Vec::new();
        install(&dir, root.path(), &mut out).expect("install");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(std::fs::read_to_string(&anchor).expect("installed"), PEM);
        for needle in ["NODE_EXTRA_CA_CERTS=", "NODE_USE_SYSTEM_CA=1", "SSL_CERT_FILE=", "REQUESTS_CA_BUNDLE=", "Environment=", "not running `update-ca-certificates`"] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
        let mut out = Vec::new();
        show(&dir, root.path(), true, &mut out).expect("show");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["installed"], true);

        // Agents are told the published, world-readable anchor, not the 0700 state dir.
        assert!(text.contains("NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/mcpwatch-ca.crt"), "{text}");
        assert!(!text.contains(&dir.display().to_string()), "instructions point into the state dir:\n{text}");

        // A store that still holds the CA after the refresh makes uninstall fail, naming it
        // (Debian's refresh without --fresh left exactly these behind).
        let certs = root.path().join("etc/ssl/certs");
        std::fs::create_dir_all(certs.join("java")).expect("mkdir certs");
        std::fs::write(certs.join("ca-certificates.crt"), PEM).expect("bundle");
        std::os::unix::fs::symlink(&anchor, certs.join("mcpwatch-ca.pem")).expect("link");
        let err = uninstall(root.path(), &mut Vec::new()).expect_err("still trusted");
        let msg = err.to_string();
        assert!(msg.contains("ca-certificates.crt") && msg.contains("mcpwatch-ca.pem"), "{msg}");
        // Java's keystore keeps the DER as is.
        std::fs::write(certs.join("ca-certificates.crt"), "").expect("bundle");
        std::fs::remove_file(certs.join("mcpwatch-ca.pem")).expect("rm link");
        std::fs::write(&anchor, PEM).expect("reinstall");
        let mut jks = b"\xfe\xed\xfe\xed....".to_vec();
        jks.extend_from_slice(&pem_to_der(PEM).expect("der"));
        std::fs::write(certs.join("java/cacerts"), jks).expect("cacerts");
        let err = uninstall(root.path(), &mut Vec::new()).expect_err("java still trusts");
        assert!(err.to_string().contains("java/cacerts"), "{err}");
        std::fs::write(certs.join("java/cacerts"), b"\xfe\xed\xfe\xed").expect("cacerts");
        std::fs::write(&anchor, PEM).expect("reinstall");

        let mut out = Vec::new();
        uninstall(root.path(), &mut out).expect("uninstall");
        assert!(!anchor.exists());
        assert!(String::from_utf8_lossy(&out).contains("no system or Java trust store"), "{}", String::from_utf8_lossy(&out));
        let mut out = Vec::new();
        uninstall(root.path(), &mut out).expect("uninstall twice is fine");
        assert!(String::from_utf8_lossy(&out).contains("not installed"));

        // Rotate with the daemon stopped: the key goes, the certificate is retired but stays
        // trusted (the installed anchor is untouched) until withdrawn.
        install(&dir, root.path(), &mut Vec::new()).expect("install");
        let sock_dir = tempfile::tempdir().expect("sock dir");
        let sock = sock_dir.path().join("control.sock");
        let mut out = Vec::new();
        rotate(&dir, root.path(), &sock, &mut out).expect("rotate");
        assert!(String::from_utf8_lossy(&out).contains("stays trusted"), "{}", String::from_utf8_lossy(&out));
        assert!(!dir.join(CA_KEY_FILE).exists() && !dir.join(CA_CERT_FILE).exists());
        assert_eq!(pem_ders(&std::fs::read_to_string(&anchor).expect("anchor")), vec![pem_to_der(PEM).expect("der")], "old CA still trusted");
        assert!(rotate(&dir, root.path(), &sock, &mut Vec::new()).is_err(), "nothing left to rotate");
        let err = withdraw(&dir, root.path(), &sock, &mut Vec::new()).expect_err("no current CA yet");
        assert!(format!("{err:#}").contains("start mcpwatchd first"), "{err:#}");

        // The daemon's next start creates the new CA: install publishes new + old.
        std::fs::write(dir.join(CA_CERT_FILE), PEM2).expect("new CA");
        let mut out = Vec::new();
        install(&dir, root.path(), &mut out).expect("install bundle");
        assert!(String::from_utf8_lossy(&out).contains("1 previous CA(s)"), "{}", String::from_utf8_lossy(&out));
        let new_der = pem_to_der(PEM2).expect("der");
        let old_der = pem_to_der(PEM).expect("der");
        assert_eq!(pem_ders(&std::fs::read_to_string(&anchor).expect("anchor")), vec![new_der.clone(), old_der.clone()]);
        let mut out = Vec::new();
        show(&dir, root.path(), true, &mut out).expect("show");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["previous"][0]["fingerprint_sha256"], OPENSSL_FP);
        assert_eq!(v["previous"][0]["installed"], true);
        assert_eq!(v["store_current"], true);

        // Withdraw: the old certificate leaves the state dir and the anchor, checked.
        let mut out = Vec::new();
        withdraw(&dir, root.path(), &sock, &mut out).expect("withdraw");
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(text.contains("no trust store holds the withdrawn CA"), "{text}");
        assert_eq!(pem_ders(&std::fs::read_to_string(&anchor).expect("anchor")), vec![new_der]);
        assert!(retired(&dir).expect("retired").is_empty());
    }

    #[test]
    fn unknown_distribution_is_a_clear_error() {
        let root = tempfile::tempdir().expect("root");
        let err = trust_store(root.path()).expect_err("no store");
        assert!(err.to_string().contains("mcpwatch ca export"), "{err}");
    }
}
