//! A minimal HTTP/1.1 POST for the HTTP sinks (Loki, HEC), over hyper.
//!
//! Why a module of its own: both HTTP sinks need the same thing: one request per batch
//! to a configured `http(s)://host:port/base` URL, a deadline, and "2xx or it failed".
//! `https://` is verified TLS (`tls_client`: the sink's `ca_file`, else the system
//! roots, checked against the URL's host name).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

use mcpwatch_tls::{rustls, tokio_rustls};

use super::SinkError;

/// A parsed `http(s)://authority/base` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `https://`: the request goes over verified TLS.
    pub https: bool,
    /// `host:port` to connect to (port 80 when absent).
    pub authority: String,
    /// Host header value (as written in the URL).
    pub host: String,
    /// Path prefix without a trailing `/` (may be empty).
    pub base: String,
}

impl HttpUrl {
    pub fn parse(url: &str, what: &str) -> Result<HttpUrl, String> {
        let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            _ => return Err(format!("{what}: {url:?}: the URL must start with http:// or https://")),
        };
        let (host, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if host.is_empty() || host.contains('@') || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{what}: {url:?} has no usable host"));
        }
        if base.contains(['?', '#']) || base.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{what}: {url:?}: the path may not hold a query, fragment or spaces"));
        }
        let has_port = match host.rfind(':') {
            Some(i) => !host.ends_with(']') && host[i + 1..].parse::<u16>().is_ok(),
            None => false,
        };
        let default_port = if https { 443 } else { 80 };
        let authority = if has_port { host.to_string() } else { format!("{host}:{default_port}") };
        if https {
            tls_name(host).map_err(|e| format!("{what}: {e}"))?;
        }
        Ok(HttpUrl { https, authority, host: host.to_string(), base: base.to_string() })
    }

    fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }
}

/// The name a collector's certificate must carry: the URL's host without port/brackets.
fn tls_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else {
        host.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(host, |(h, _)| h)
    };
    rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|_| format!("{name:?} is not a TLS server name"))
}

/// Where an HTTP sink posts: the URL and, for `https://`, its verified TLS client.
pub struct HttpTarget {
    pub url: HttpUrl,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
}

impl HttpTarget {
    /// Parse `url`; for https build the TLS client from `ca_file` (else the system roots).
    /// A `ca_file` with a plain http URL is a mistake, not silently ignored.
    pub fn new(url: &str, ca_file: Option<&std::path::Path>, what: &str) -> Result<HttpTarget, String> {
        let url = HttpUrl::parse(url, &format!("{what}.url"))?;
        let tls = if url.https {
            Some((super::tls_client::connector(ca_file, what)?, tls_name(&url.host)?))
        } else {
            if ca_file.is_some() {
                return Err(format!("{what}.ca_file needs an https:// url"));
            }
            None
        };
        Ok(HttpTarget { url, tls })
    }
}

/// POST `body` to `url.base + path`; Ok on any 2xx.
pub async fn post(t: &HttpTarget, path: &str, headers: &[(&str, String)], body: Vec<u8>, timeout: Duration) -> Result<(), SinkError> {
    let url = &t.url;
    let target = format!("{}://{}{}{}", url.scheme(), url.host, url.base, path);
    match tokio::time::timeout(timeout, post_inner(t, path, headers, body, &target)).await {
        Ok(r) => r,
        Err(_) => Err(SinkError::Timeout { target, timeout }),
    }
}

async fn post_inner(t: &HttpTarget, path: &str, headers: &[(&str, String)], body: Vec<u8>, target: &str) -> Result<(), SinkError> {
    let url = &t.url;
    let tcp = tokio::net::TcpStream::connect(&url.authority)
        .await
        .map_err(|source| SinkError::Connect { target: target.to_string(), source })?;
    let _ = tcp.set_nodelay(true);
    match &t.tls {
        None => exchange(TokioIo::new(tcp), url, path, headers, body, target).await,
        Some((connector, name)) => {
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|source| SinkError::Connect { target: target.to_string(), source })?;
            exchange(TokioIo::new(tls), url, path, headers, body, target).await
        }
    }
}

async fn exchange<I>(io: I, url: &HttpUrl, path: &str, headers: &[(&str, String)], body: Vec<u8>, target: &str) -> Result<(), SinkError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let http_err = |e: &dyn std::fmt::Display| SinkError::Http { target: target.to_string(), message: e.to_string() };
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await.map_err(|e| http_err(&e))?;
    let conn_task = tokio::spawn(conn);
    let mut req = http::Request::post(format!("{}{}", url.base, path))
        .header(http::header::HOST, &url.host)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req.body(Full::new(Bytes::from(body))).map_err(|e| http_err(&e))?;
    let resp = send.send_request(req).await.map_err(|e| http_err(&e))?;
    let status = resp.status();
    // Bounded: an error body is only for the log.
    let body = http_body_util::Limited::new(resp.into_body(), 4096).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    conn_task.abort();
    if status.is_success() {
        Ok(())
    } else {
        Err(SinkError::Rejected {
            target: target.to_string(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).chars().take(300).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_https_needs_a_server_name() {
        let u = HttpUrl::parse("http://127.0.0.1:3100", "x").unwrap();
        assert_eq!((u.authority.as_str(), u.base.as_str()), ("127.0.0.1:3100", ""));
        let u = HttpUrl::parse("http://collector.local/splunk/", "x").unwrap();
        assert_eq!((u.authority.as_str(), u.base.as_str()), ("collector.local:80", "/splunk"));
        let u = HttpUrl::parse("http://[::1]:8088", "x").unwrap();
        assert_eq!(u.authority, "[::1]:8088");
        let u = HttpUrl::parse("https://splunk.corp:8088/x", "x").unwrap();
        assert!(u.https);
        assert_eq!((u.authority.as_str(), u.base.as_str()), ("splunk.corp:8088", "/x"));
        assert_eq!(HttpUrl::parse("https://loki.corp", "x").unwrap().authority, "loki.corp:443");
        assert!(HttpUrl::parse("ftp://x", "sinks.hec.url").unwrap_err().contains("http:// or https://"));
        assert!(HttpTarget::new("http://127.0.0.1:1", Some(std::path::Path::new("/ca.pem")), "sinks.hec").is_err(), "ca_file without https is refused");
        assert!(HttpUrl::parse("http://user@host/", "x").is_err());
        assert!(HttpUrl::parse("http:///x", "x").is_err());
    }
}
