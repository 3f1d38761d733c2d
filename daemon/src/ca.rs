//! The daemon's side of the local CA's lifecycle: start-up preparation, `mcpwatch ca rotate` /
//! `ca withdraw` over the control socket, the automatic withdrawal after the overlap, and what
//! `mcpwatch status` shows about the CA.
//!
//! Why a module of its own: the CA directory logic lives in `mcpwatch_tls::CaStore`; this is the
//! glue to the daemon's config, its leaf issuer and its status, kept out of the proxy. The
//! daemon cannot write the system trust store (the unit runs it unprivileged with
//! `ProtectSystem=strict`): it keeps `<state>/ca/bundle.pem` current and hands the bundle and
//! the withdrawn certificates to the CLI, which publishes them where `ca install` did.

use std::time::Duration;

use mcpwatch_api::{CaCert, CaChange, CaStatus, RetiredCaCert};
use mcpwatch_tls::{CaCertInfo, CaStore, TlsError};

use crate::config::TlsConfig;
use crate::state::Shared;

/// How often the daemon checks whether a retired CA's overlap has ended.
pub const WITHDRAW_CHECK_EVERY: Duration = Duration::from_secs(60);

/// At start, before the TLS runtime loads the CA: create it (constrained to the scope) on
/// first start, re-issue it when the scope's constraints changed, withdraw retired CAs whose
/// overlap ended. Logs what it did.
pub fn prepare(config: &TlsConfig, state_dir: &std::path::Path, hostname: &str) -> Result<(), TlsError> {
    let store = CaStore::new(&crate::interception::ca_dir(state_dir), hostname, config.rotation_overlap);
    let desired = config.ca_constraints();
    if let Err(why) = &desired {
        tracing::info!("local CA without name constraints: {why}");
    }
    let prepared = store.prepare(desired.as_ref().ok())?;
    if let Some(msg) = prepared.reissued {
        tracing::warn!("{msg}; publish the new bundle: `mcpwatch ca install`");
    }
    for w in prepared.withdrawn {
        tracing::warn!(fingerprint = %w.info.fingerprint_sha256, "retired CA withdrawn (overlap over); `mcpwatch ca install` removes it from the system trust store");
    }
    Ok(())
}

fn store(shared: &Shared) -> Option<&CaStore> {
    shared.ca_store.as_ref()
}

fn cert(info: &CaCertInfo) -> CaCert {
    CaCert { fingerprint_sha256: info.fingerprint_sha256.clone(), subject: info.subject.clone(), not_after_unix: info.not_after_unix }
}

/// What `mcpwatch status` shows about the CA; `None` without TLS.
pub fn status(shared: &Shared) -> Option<CaStatus> {
    let rt = shared.tls.as_ref()?;
    let store = store(shared)?;
    let ca = rt.issuer.ca();
    let retired = store
        .retired()
        .unwrap_or_default()
        .into_iter()
        .map(|r| RetiredCaCert {
            withdraw_after_unix: store.withdraw_after(&r),
            cert: cert(&r.info),
            retired_at_unix: r.retired_at_unix,
            reason: r.reason.describe().to_string(),
        })
        .collect();
    Some(CaStatus {
        current: cert(ca.info()),
        retired,
        name_constraints: mcpwatch_tls::constraints::describe(ca.name_constraints()),
        unconstrained_reason: match ca.name_constraints() {
            Some(_) => None,
            None => shared.config.tls.ca_constraints().err(),
        },
        bundle_path: store.dir().join(mcpwatch_tls::rotation::BUNDLE_FILE).display().to_string(),
    })
}

/// Status warnings: expiry of the CA signing now, and a pending withdrawal.
pub fn warnings(shared: &Shared) -> Vec<String> {
    let Some(rt) = shared.tls.as_ref() else { return Vec::new() };
    let mut out: Vec<String> = rt.issuer.ca().info().expiry_warning(mcpwatch_tls::unix_now()).into_iter().collect();
    if let Some(st) = status(shared)
        && !st.retired.is_empty()
    {
        let when = match st.retired.iter().filter_map(|r| r.withdraw_after_unix).min() {
            Some(t) => format!("automatically in {} day(s), or now with `mcpwatch ca withdraw`", (t - mcpwatch_tls::unix_now()).max(0) / 86_400),
            None => "by `mcpwatch ca withdraw` ([tls] rotation_overlap_days = 0)".to_string(),
        };
        out.push(format!(
            "CA rotation in progress: {} previous CA(s) still trusted in the bundle; withdrawal pending ({when}). Until then publish the bundle to every client: `mcpwatch ca install`",
            st.retired.len()
        ));
    }
    out
}

/// `mcpwatch ca rotate` against the running daemon.
pub fn rotate(shared: &Shared) -> Result<CaChange, String> {
    let (Some(rt), Some(store)) = (shared.tls.as_ref(), store(shared)) else {
        return Err("TLS interception is disabled ([tls] enabled = false): there is no CA to rotate".into());
    };
    let old = rt.issuer.ca();
    let new = store.rotate(&rt.issuer).map_err(|e| e.to_string())?;
    tracing::warn!(old = %old.fingerprint_sha256(), new = %new.fingerprint_sha256(), "local CA rotated: the new CA signs every new leaf; the old one stays in the bundle until withdrawn");
    change(shared, store, Vec::new(), format!(
        "rotated the local CA: new leaves are signed by {} (sha256 {}); the previous CA ({}) stays trusted in the bundle until withdrawn",
        new.info().subject,
        new.fingerprint_sha256(),
        old.fingerprint_sha256()
    ))
}

/// `mcpwatch ca withdraw` against the running daemon: every retired CA goes.
pub fn withdraw(shared: &Shared) -> Result<CaChange, String> {
    let Some(store) = store(shared) else {
        return Err("TLS interception is disabled ([tls] enabled = false): there is no CA".into());
    };
    let gone = store.withdraw(false).map_err(|e| e.to_string())?;
    for w in &gone {
        tracing::warn!(fingerprint = %w.info.fingerprint_sha256, "retired CA withdrawn by `mcpwatch ca withdraw`");
    }
    let message = if gone.is_empty() {
        "no previous CA is waiting for withdrawal".to_string()
    } else {
        format!(
            "withdrew {} previous CA(s) ({}): deleted, and no longer in the bundle",
            gone.len(),
            gone.iter().map(|w| w.info.fingerprint_sha256.as_str()).collect::<Vec<_>>().join(", ")
        )
    };
    change(shared, store, gone.into_iter().map(|w| w.info.pem).collect(), message)
}

fn change(shared: &Shared, store: &CaStore, withdrawn_pem: Vec<String>, message: String) -> Result<CaChange, String> {
    Ok(CaChange {
        status: status(shared).unwrap_or_default(),
        bundle_pem: store.bundle_pem().map_err(|e| e.to_string())?,
        withdrawn_pem,
        message,
    })
}

/// Withdraws retired CAs whose overlap ended, every [`WITHDRAW_CHECK_EVERY`].
pub async fn withdraw_when_due(shared: std::sync::Arc<Shared>) {
    let Some(store) = store(&shared) else { return };
    if store.overlap().is_none() {
        return;
    }
    loop {
        tokio::time::sleep(WITHDRAW_CHECK_EVERY).await;
        match store.withdraw(true) {
            Ok(gone) => {
                for w in gone {
                    tracing::warn!(fingerprint = %w.info.fingerprint_sha256, "retired CA withdrawn (overlap over); run `mcpwatch ca install` to remove it from the system trust store");
                }
            }
            Err(e) => tracing::error!(error = %e, "withdrawing retired CAs failed"),
        }
    }
}
