//! Just enough URL handling for server endpoints: split into scheme, user-info, host, port, path
//! and query; tell loopback hosts; print without credentials.
//!
//! Why not a URL crate: the scanner needs five fields of `scheme://[user@]host[:port]/path?query`
//! and a redacted rendering, and must never fail on junk (a bad URL is still reported as written,
//! redacted).

/// The parts of an absolute URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url<'a> {
    pub scheme: &'a str,
    pub userinfo: Option<&'a str>,
    /// Without brackets for IPv6.
    pub host: &'a str,
    pub port: u16,
    /// `/` when absent; no query or fragment.
    pub path: &'a str,
    pub query: Option<&'a str>,
}

pub(crate) fn parse(u: &str) -> Option<Url<'_>> {
    let (scheme, rest) = u.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return None;
    }
    let rest = rest.split('#').next().unwrap_or("");
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((ui, hp)) => (Some(ui), hp),
        None => (None, authority),
    };
    let (host, port_s) = if let Some(r) = hostport.strip_prefix('[') {
        let (h, after) = r.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => 443,
        _ => 80,
    };
    let port = match port_s {
        Some("") | None => default_port,
        Some(p) => p.parse().ok()?,
    };
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    Some(Url {
        scheme,
        userinfo,
        host,
        port,
        path: if path.is_empty() { "/" } else { path },
        query,
    })
}

/// `localhost`, `*.localhost`, 127.0.0.0/8, `::1`.
/// `host:port/path` of an absolute URL: host lower-cased (IPv6 unbracketed), default port filled
/// in, path without a trailing `/`, no user-info, query or fragment. A configured server URL and
/// an endpoint the daemon saw match when their keys are equal. `None` for junk.
pub fn match_key(u: &str) -> Option<String> {
    let p = parse(u.trim())?;
    let path = p.path.trim_end_matches('/');
    Some(format!("{}:{}{}", p.host.to_ascii_lowercase(), p.port, path))
}

pub(crate) fn is_loopback(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h == "::1"
        || h.parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
        || h.parse::<std::net::Ipv6Addr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The URL as shown: user-info replaced by `***`, every query value by `***` (query strings carry
/// API keys too often to judge one by one). Unparsable text is shown as `<unparsable url>`.
pub(crate) fn redacted(u: &str) -> String {
    let Some(p) = parse(u) else {
        return "<unparsable url>".to_string();
    };
    let mut out = format!("{}://", p.scheme);
    if p.userinfo.is_some() {
        out.push_str("***@");
    }
    if p.host.contains(':') {
        out.push_str(&format!("[{}]", p.host));
    } else {
        out.push_str(p.host);
    }
    // Keep the port only when it was written.
    let authority = u
        .split_once("://")
        .map_or("", |(_, r)| r.split(['/', '?', '#']).next().unwrap_or(""));
    let hp = authority.rsplit('@').next().unwrap_or("");
    let written_port = if hp.starts_with('[') {
        hp.contains("]:")
    } else {
        hp.contains(':')
    };
    if written_port {
        out.push_str(&format!(":{}", p.port));
    }
    out.push_str(p.path);
    if let Some(q) = p.query {
        out.push('?');
        let parts: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None => "***".to_string(),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let u = parse("https://user:pw@mcp.example.com:8443/a/b?key=s3cret#f").expect("url");
        assert_eq!(
            (u.host, u.port, u.path, u.query),
            ("mcp.example.com", 8443, "/a/b", Some("key=s3cret"))
        );
        assert_eq!(
            redacted("https://user:pw@mcp.example.com:8443/a/b?key=s3cret&x"),
            "https://***@mcp.example.com:8443/a/b?key=***&***"
        );
        assert_eq!(redacted("http://[::1]:9/x"), "http://[::1]:9/x");
        assert_eq!(redacted("https://h.example"), "https://h.example/");
        let v6 = parse("http://[::1]/").expect("v6");
        assert_eq!((v6.host, v6.port), ("::1", 80));
        assert!(parse("not a url").is_none());
    }

    #[test]
    fn match_keys_ignore_credentials_query_case_and_trailing_slash() {
        assert_eq!(match_key("https://u:p@API.Example.com/mcp/?k=v").as_deref(), Some("api.example.com:443/mcp"));
        assert_eq!(match_key("http://127.0.0.2:18001/mcp").as_deref(), Some("127.0.0.2:18001/mcp"));
        assert_eq!(match_key("http://[::1]:80/"), match_key("http://[::1]"));
        assert_eq!(match_key("not a url"), None);
    }

    #[test]
    fn loopback() {
        assert!(is_loopback("127.0.0.2") && is_loopback("::1") && is_loopback("LOCALHOST"));
        assert!(!is_loopback("10.0.0.1") && !is_loopback("example.com"));
    }
}
