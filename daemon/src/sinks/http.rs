//! A minimal HTTP/1.1 POST for the HTTP sinks (Loki, HEC), over hyper.
//!
//! Why a module of its own: both HTTP sinks need the same thing: one request per batch
//! to a configured `http://host:port/base` URL, a deadline, and "2xx or it failed".
//! Only plain `http://` is supported: point it at a loopback forwarder or collector
//! (https to a remote collector is not implemented yet).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

use super::SinkError;

/// A parsed `http://authority/base` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port` to connect to (port 80 when absent).
    pub authority: String,
    /// Host header value (as written in the URL).
    pub host: String,
    /// Path prefix without a trailing `/` (may be empty).
    pub base: String,
}

impl HttpUrl {
    pub fn parse(url: &str, what: &str) -> Result<HttpUrl, String> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!("{what}: {url:?}: only http:// URLs are supported (use a local forwarder for TLS)"));
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
        let authority = if has_port { host.to_string() } else { format!("{host}:80") };
        Ok(HttpUrl { authority, host: host.to_string(), base: base.to_string() })
    }
}

/// POST `body` to `url.base + path`; Ok on any 2xx.
pub async fn post(url: &HttpUrl, path: &str, headers: &[(&str, String)], body: Vec<u8>, timeout: Duration) -> Result<(), SinkError> {
    let target = format!("http://{}{}{}", url.host, url.base, path);
    match tokio::time::timeout(timeout, post_inner(url, path, headers, body, &target)).await {
        Ok(r) => r,
        Err(_) => Err(SinkError::Timeout { target, timeout }),
    }
}

async fn post_inner(url: &HttpUrl, path: &str, headers: &[(&str, String)], body: Vec<u8>, target: &str) -> Result<(), SinkError> {
    let http_err = |e: &dyn std::fmt::Display| SinkError::Http { target: target.to_string(), message: e.to_string() };
    let tcp = tokio::net::TcpStream::connect(&url.authority)
        .await
        .map_err(|source| SinkError::Connect { target: target.to_string(), source })?;
    let _ = tcp.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp)).await.map_err(|e| http_err(&e))?;
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
    fn urls_parse_and_https_is_refused_clearly() {
        let u = HttpUrl::parse("http://127.0.0.1:3100", "x").unwrap();
        assert_eq!((u.authority.as_str(), u.base.as_str()), ("127.0.0.1:3100", ""));
        let u = HttpUrl::parse("http://collector.local/splunk/", "x").unwrap();
        assert_eq!((u.authority.as_str(), u.base.as_str()), ("collector.local:80", "/splunk"));
        let u = HttpUrl::parse("http://[::1]:8088", "x").unwrap();
        assert_eq!(u.authority, "[::1]:8088");
        assert!(HttpUrl::parse("https://splunk:8088", "sinks.hec.url").unwrap_err().contains("only http://"));
        assert!(HttpUrl::parse("http://user@host/", "x").is_err());
        assert!(HttpUrl::parse("http:///x", "x").is_err());
    }
}
