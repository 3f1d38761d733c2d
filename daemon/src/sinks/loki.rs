//! Loki sink: batches pushed to `/loki/api/v1/push` as JSON.
//!
//! Why: Loki is a common log store; its push API takes streams of `[ns, line]` pairs.
//! One stream per daemon (labels `job`, `host`, plus configured static labels: no
//! per-record labels, so Loki's stream cardinality stays at one). Each line is the event
//! JSON; its timestamp is derived from the record id, so a batch sent twice (after a
//! crash before the cursor write) carries identical timestamp+line pairs, which Loki
//! drops as duplicates.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::event::Prepared;
use crate::host::HostIdentity;
use super::http::{HttpTarget, post};
use super::SinkError;

/// `[sinks.loki]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LokiConfig {
    /// Base URL, e.g. `http://127.0.0.1:3100`.
    pub url: String,
    /// PEM trust anchors for an `https://` collector (default: the system roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// Static stream labels added to `job="mcpwatch"` and `host`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Sent as `X-Scope-OrgID` (multi-tenant Loki).
    pub tenant: Option<String>,
}

impl LokiConfig {
    pub fn validate(&self) -> Result<(), String> {
        HttpTarget::new(&self.url, self.ca_file.as_deref(), "sinks.loki")?;
        for k in self.labels.keys() {
            let ok = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok || k.starts_with("__") {
                return Err(format!("sinks.loki.labels: {k:?} is not a Loki label name"));
            }
        }
        if self.tenant.as_deref().is_some_and(|t| t.is_empty() || t.chars().any(|c| c.is_control())) {
            return Err("sinks.loki.tenant must be a non-empty header value".into());
        }
        Ok(())
    }
}

pub struct Loki {
    url: HttpTarget,
    labels: BTreeMap<String, String>,
    headers: Vec<(&'static str, String)>,
    timeout: Duration,
}

impl Loki {
    pub fn new(cfg: LokiConfig, timeout: Duration, identity: &HostIdentity) -> Result<Loki, String> {
        let mut labels = cfg.labels.clone();
        labels.entry("job".into()).or_insert_with(|| "mcpwatch".into());
        labels.entry("host".into()).or_insert_with(|| identity.hostname.clone());
        let headers = cfg.tenant.iter().map(|t| ("x-scope-orgid", t.clone())).collect();
        let url = HttpTarget::new(&cfg.url, cfg.ca_file.as_deref(), "sinks.loki")?;
        Ok(Loki { url, labels, headers, timeout })
    }

    pub async fn send(&mut self, batch: &[Prepared<'_>]) -> Result<(), SinkError> {
        let values: Vec<_> = batch.iter().map(|p| json!([p.unique_ns().to_string(), p.json])).collect();
        let body = json!({ "streams": [ { "stream": self.labels, "values": values } ] });
        post(&self.url, "/loki/api/v1/push", &self.headers, body.to_string().into_bytes(), self.timeout).await
    }
}
