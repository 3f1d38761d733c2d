//! HTTP JSON sink in the shape of Splunk's HTTP Event Collector.
//!
//! Why: Splunk (and several collectors that speak its protocol: Cribl, Vector's
//! `splunk_hec` source, OpenTelemetry's receiver) take events at
//! `/services/collector/event` with `Authorization: Splunk <token>`. A batch is the
//! concatenation of one `{"time","host","source","sourcetype","event"}` object per
//! record; any 2xx acknowledges the batch.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::event::Prepared;
use super::http::{HttpTarget, post};
use super::SinkError;

/// `[sinks.hec]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HecConfig {
    /// Base URL of the collector, e.g. `http://127.0.0.1:8088`.
    pub url: String,
    /// PEM trust anchors for an `https://` collector (default: the system roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// File holding the HEC token (kept out of the config file; read at start).
    pub token_file: PathBuf,
    /// Splunk `index` (optional: the token's default index otherwise).
    pub index: Option<String>,
    /// Default `mcpwatch:audit`.
    pub sourcetype: Option<String>,
}

impl HecConfig {
    pub fn validate(&self) -> Result<(), String> {
        HttpTarget::new(&self.url, self.ca_file.as_deref(), "sinks.hec")?;
        if self.token_file.as_os_str().is_empty() {
            return Err("sinks.hec.token_file must name a file".into());
        }
        Ok(())
    }
}

pub struct Hec {
    url: HttpTarget,
    auth: String,
    index: Option<String>,
    sourcetype: String,
    timeout: Duration,
}

impl Hec {
    pub fn new(cfg: HecConfig, timeout: Duration) -> Result<Hec, String> {
        let token = std::fs::read_to_string(&cfg.token_file).map_err(|e| format!("sinks.hec.token_file {}: {e}", cfg.token_file.display()))?;
        let token = token.trim();
        if token.is_empty() || token.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("sinks.hec.token_file {}: not a token", cfg.token_file.display()));
        }
        let url = HttpTarget::new(&cfg.url, cfg.ca_file.as_deref(), "sinks.hec")?;
        Ok(Hec {
            url,
            auth: format!("Splunk {token}"),
            index: cfg.index,
            sourcetype: cfg.sourcetype.unwrap_or_else(|| "mcpwatch:audit".into()),
            timeout,
        })
    }

    pub async fn send(&mut self, batch: &[Prepared<'_>]) -> Result<(), SinkError> {
        let mut body = Vec::new();
        for p in batch {
            // The event is embedded as JSON, not as a string: Splunk indexes its fields.
            let event: serde_json::Value = serde_json::from_str(&p.json).unwrap_or_else(|_| json!(p.json));
            let mut obj = json!({
                "time": p.record.ts_ms as f64 / 1000.0,
                "host": p.hostname,
                "source": "mcpwatch",
                "sourcetype": self.sourcetype,
                "event": event,
            });
            if let Some(i) = &self.index {
                obj["index"] = json!(i);
            }
            body.extend_from_slice(obj.to_string().as_bytes());
            body.push(b'\n');
        }
        post(&self.url, "/services/collector/event", &[("authorization", self.auth.clone())], body, self.timeout).await
    }
}
