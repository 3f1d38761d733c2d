//! Syslog sink: RFC 5424 messages over TCP with octet-counting framing (RFC 6587).
//!
//! Why: every SIEM ingests syslog, and rsyslog/syslog-ng relays are already on most
//! hosts. Each record is one message: `<PRI>1 TIMESTAMP HOSTNAME mcpwatch PID audit
//! [mcpwatch@32473 id=".." event_schema=".."] {event JSON}`, framed as `LEN SP MSG`
//! so the JSON may hold any byte. Severity is `warning` for blocked calls and calls
//! with alerts, `notice` otherwise.
//!
//! With `tls = true` the connection is TLS (RFC 5425 framing is the same octet count),
//! verified against `ca_file` (else the system roots) for `server_name` (else the host
//! of `address`).
//!
//! "Acknowledged" here means written to the connection: plain syslog has no
//! application-level ack. Before each batch the connection is checked for a close by
//! the peer (a restarted relay), so a batch is not written into a dead socket; a relay
//! that dies after reading part of a batch can still lose those records (RELP would be
//! needed for more).

use std::path::PathBuf;
use std::time::Duration;

use futures_util::FutureExt as _;
use mcpwatch_tls::{rustls, tokio_rustls};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::event::{Prepared, rfc3339_ms};
use super::SinkError;

/// `[sinks.syslog]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `host:port` of the relay (TCP).
    pub address: String,
    /// Syslog facility (default `authpriv`).
    #[serde(default)]
    pub facility: Facility,
    /// APP-NAME (default `mcpwatch`).
    pub app_name: Option<String>,
    /// Syslog over TLS (RFC 5425). Default false.
    #[serde(default)]
    pub tls: bool,
    /// PEM trust anchors for the relay's certificate (default: the system roots).
    pub ca_file: Option<PathBuf>,
    /// Name to verify the relay's certificate against (default: the host of `address`).
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Facility {
    Auth,
    #[default]
    Authpriv,
    Daemon,
    User,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl Facility {
    fn code(self) -> u8 {
        match self {
            Facility::User => 1,
            Facility::Daemon => 3,
            Facility::Auth => 4,
            Facility::Authpriv => 10,
            Facility::Local0 => 16,
            Facility::Local1 => 17,
            Facility::Local2 => 18,
            Facility::Local3 => 19,
            Facility::Local4 => 20,
            Facility::Local5 => 21,
            Facility::Local6 => 22,
            Facility::Local7 => 23,
        }
    }
}

impl SyslogConfig {
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.address.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !ok {
            return Err(format!("sinks.syslog.address: {:?} is not host:port", self.address));
        }
        if let Some(a) = &self.app_name
            && (a.is_empty() || a.len() > 48 || !a.bytes().all(|b| (33..=126).contains(&b)))
        {
            return Err("sinks.syslog.app_name must be 1-48 printable ASCII characters without spaces".into());
        }
        if !self.tls && (self.ca_file.is_some() || self.server_name.is_some()) {
            return Err("sinks.syslog.ca_file and server_name need tls = true".into());
        }
        self.tls_name()?;
        Ok(())
    }

    fn tls_name(&self) -> Result<rustls::pki_types::ServerName<'static>, String> {
        let host = match &self.server_name {
            Some(n) => n.as_str(),
            None => self.address.rsplit_once(':').map_or("", |(h, _)| h).trim_start_matches('[').trim_end_matches(']'),
        };
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|_| format!("sinks.syslog: {host:?} is not a TLS server name"))
    }

    fn tls_connector(&self) -> Result<Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>, String> {
        if !self.tls {
            return Ok(None);
        }
        Ok(Some((super::tls_client::connector(self.ca_file.as_deref(), "sinks.syslog")?, self.tls_name()?)))
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct Syslog {
    cfg: SyslogConfig,
    timeout: Duration,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    conn: Option<Box<dyn Stream>>,
}

impl Syslog {
    pub fn new(cfg: SyslogConfig, timeout: Duration) -> Result<Syslog, String> {
        let tls = cfg.tls_connector()?;
        Ok(Syslog { cfg, timeout, tls, conn: None })
    }

    pub async fn send(&mut self, batch: &[Prepared<'_>]) -> Result<(), SinkError> {
        let mut frames = Vec::new();
        for p in batch {
            let msg = format_message(p, &self.cfg);
            frames.extend_from_slice(format!("{} ", msg.len()).as_bytes());
            frames.extend_from_slice(msg.as_bytes());
        }
        let target = self.cfg.address.clone();
        let timeout = self.timeout;
        let res = tokio::time::timeout(timeout, async {
            if self.conn.as_mut().is_some_and(|c| peer_closed(c.as_mut())) {
                self.conn = None;
            }
            if self.conn.is_none() {
                let s = TcpStream::connect(&self.cfg.address).await.map_err(|source| SinkError::Connect { target: target.clone(), source })?;
                let _ = s.set_nodelay(true);
                self.conn = Some(match &self.tls {
                    None => Box::new(s),
                    Some((connector, name)) => {
                        let t = connector.connect(name.clone(), s).await.map_err(|source| SinkError::Connect { target: target.clone(), source })?;
                        Box::new(t)
                    }
                });
            }
            let Some(conn) = self.conn.as_mut() else { unreachable!("connected above") };
            conn.write_all(&frames).await.map_err(|source| SinkError::Io { target: target.clone(), source })?;
            conn.flush().await.map_err(|source| SinkError::Io { target: target.clone(), source })
        })
        .await
        .unwrap_or_else(|_| Err(SinkError::Timeout { target: target.clone(), timeout }));
        if res.is_err() {
            self.conn = None;
        }
        res
    }
}

/// The relay closed (or reset) its end: anything written now would be lost. Reads
/// only what is already there (TLS: through the session, so tickets are consumed).
fn peer_closed(s: &mut dyn Stream) -> bool {
    let mut buf = [0u8; 256];
    match s.read(&mut buf).now_or_never() {
        Some(Ok(0)) | Some(Err(_)) => true,
        // Relays do not talk back on syslog; drop whatever it sent.
        Some(Ok(_)) | None => false,
    }
}

fn format_message(p: &Prepared<'_>, cfg: &SyslogConfig) -> String {
    let r = p.record;
    let warn = r.decision.as_ref().is_some_and(|d| d.effective == mcpwatch_api::Effect::Block) || !r.alerts.is_empty();
    let severity = if warn { 4 } else { 5 };
    let pri = u16::from(cfg.facility.code()) * 8 + severity;
    let hostname: String = p.hostname.chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    let hostname = if hostname.is_empty() { "-".to_string() } else { hostname };
    let app = cfg.app_name.as_deref().unwrap_or("mcpwatch");
    format!(
        "<{pri}>1 {} {hostname} {app} {} audit [mcpwatch@32473 id=\"{}\" event_schema=\"{}\"] {}",
        rfc3339_ms(r.ts_ms),
        std::process::id(),
        sd_escape(&r.id),
        super::EVENT_SCHEMA_VERSION,
        p.json
    )
}

/// RFC 5424 PARAM-VALUE escaping: `"`, `\` and `]`.
fn sd_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostIdentity;
    use mcpwatch_api::{AuditRecord, DecisionView};

    #[test]
    fn messages_are_rfc5424_with_the_event_as_msg() {
        let id = HostIdentity { hostname: "web 1".into(), host_id: "00".repeat(16) };
        let mut rec = AuditRecord { id: "00000001700000000123000007".into(), ts_ms: 1_700_000_000_123, ..Default::default() };
        let cfg = SyslogConfig { address: "127.0.0.1:1".into(), facility: Facility::Authpriv, app_name: None, tls: false, ca_file: None, server_name: None };
        let msg = format_message(&Prepared::new(&rec, &id), &cfg);
        assert!(msg.starts_with("<85>1 2023-11-14T22:13:20.123Z web1 mcpwatch "), "{msg}");
        assert!(msg.contains(" audit [mcpwatch@32473 id=\"00000001700000000123000007\" event_schema=\"1\"] {"), "{msg}");
        rec.decision = Some(DecisionView { effective: mcpwatch_api::Effect::Block, ..Default::default() });
        assert!(format_message(&Prepared::new(&rec, &id), &cfg).starts_with("<84>1 "), "blocked calls are warnings");
        assert_eq!(sd_escape("a\"b]c\\"), "a\\\"b\\]c\\\\");
    }

    #[test]
    fn address_must_be_host_port() {
        let mut cfg = SyslogConfig { address: "127.0.0.1".into(), facility: Facility::default(), app_name: None, tls: false, ca_file: None, server_name: None };
        assert!(cfg.validate().is_err());
        cfg.address = "relay.local:6514".into();
        assert!(cfg.validate().is_ok());
    }
}
