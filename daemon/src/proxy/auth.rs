//! Authorization-layer checks the proxy can make on the wire (MCP's OAuth profile).
//!
//! - OAuth metadata a server hands its clients (authorization-server and
//!   protected-resource metadata) is validated before a client sees it: endpoints must
//!   be absolute `https://` URLs (plain `http://` only on loopback), free of shell
//!   metacharacters (CVE-2025-6514 launched commands through `authorization_endpoint`),
//!   and authorization servers must not point at private, link-local or loopback
//!   addresses (SSRF to cloud metadata services).
//! - A browser page may send a "CORS-simple" request (text/plain body, no preflight) to
//!   a local MCP server: an MCP message in such a body is refused (CSRF).
//! - A bearer token whose audience names another service is not forwarded (token
//!   passthrough / confused deputy).
//! - The Host and Origin of a request must fit where the connection really goes: a
//!   non-local Host name toward a loopback server is DNS rebinding, a Host IP literal
//!   other than the destination is misdirection, and a foreign web page's Origin toward
//!   a loopback server is a browser-borne attack (MCP Inspector, CVE-2025-49596).
//!
//! Pure functions: the proxy decides what to do with the findings.

use std::net::IpAddr;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::Value;

/// Paths whose JSON responses are OAuth metadata.
pub fn is_oauth_metadata_path(path: &str) -> bool {
    path.starts_with("/.well-known/oauth-authorization-server")
        || path.starts_with("/.well-known/openid-configuration")
        || path.starts_with("/.well-known/oauth-protected-resource")
}

const URL_FIELDS: &[&str] = &[
    "issuer",
    "authorization_endpoint",
    "token_endpoint",
    "registration_endpoint",
    "jwks_uri",
    "revocation_endpoint",
    "introspection_endpoint",
    "userinfo_endpoint",
    "end_session_endpoint",
    "device_authorization_endpoint",
    "pushed_authorization_request_endpoint",
    "resource",
];

/// Problems in OAuth metadata; empty when it is safe to hand to a client.
pub fn metadata_problems(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for field in URL_FIELDS {
        if let Some(v) = doc.get(*field) {
            match v.as_str() {
                Some(url) => {
                    if let Err(why) = check_url(url, false) {
                        out.push(format!("{field}: {why}"));
                    }
                }
                None => out.push(format!("{field}: not a string")),
            }
        }
    }
    if let Some(servers) = doc.get("authorization_servers") {
        match servers.as_array() {
            Some(list) => {
                for s in list {
                    match s.as_str() {
                        Some(url) => {
                            if let Err(why) = check_url(url, true) {
                                out.push(format!("authorization_servers: {why}"));
                            }
                        }
                        None => out.push("authorization_servers: entry is not a string".into()),
                    }
                }
            }
            None => out.push("authorization_servers: not an array".into()),
        }
    }
    out
}

/// An endpoint URL a client may be sent to. `strict_host`: also refuse private,
/// link-local and loopback addresses (authorization servers).
fn check_url(url: &str, strict_host: bool) -> Result<(), String> {
    const SHELL: &[&str] = &["$(", "`", ";", "|", "\n", "\r", "<", ">", "\\", "\"", "'", " "];
    if let Some(bad) = SHELL.iter().find(|m| url.contains(**m)) {
        return Err(format!("contains {bad:?}, which has no place in an endpoint URL: {}", clip(url)));
    }
    let uri: http::Uri = url.parse().map_err(|_| format!("not a valid URL: {}", clip(url)))?;
    let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    if host.is_empty() {
        return Err(format!("not an absolute URL: {}", clip(url)));
    }
    let ip: Option<IpAddr> = host.parse().ok();
    let loopback = host == "localhost" || ip.is_some_and(|i| i.is_loopback());
    match scheme.as_str() {
        "https" => {}
        "http" if loopback && !strict_host => {}
        other => return Err(format!("scheme `{other}` (only https, or http on loopback): {}", clip(url))),
    }
    if strict_host {
        let internal = loopback
            || host.ends_with(".local")
            || host.ends_with(".internal")
            || ip.is_some_and(|i| match i {
                IpAddr::V4(v) => v.is_private() || v.is_link_local() || v.is_unspecified() || v.is_broadcast(),
                IpAddr::V6(v) => v.is_unspecified() || (v.segments()[0] & 0xfe00) == 0xfc00 || (v.segments()[0] & 0xffc0) == 0xfe80,
            });
        if internal {
            return Err(format!("points at an internal address ({host}), a server-side request forgery risk"));
        }
    }
    Ok(())
}

fn clip(s: &str) -> String {
    let mut c: String = s.chars().take(80).collect();
    if s.chars().count() > 80 {
        c.push('…');
    }
    c.chars().map(|ch| if ch.is_control() { '?' } else { ch }).collect()
}

/// Content types a browser sends cross-origin without a CORS preflight.
pub fn is_cors_simple(content_type: &str) -> bool {
    let ct = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    matches!(ct.as_str(), "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data")
}

/// If `authorization` is a bearer JWT whose `aud` names URLs of other hosts only,
/// say so. Tokens that are not JWTs, or audiences that are not URLs, cannot be
/// judged and pass.
pub fn audience_mismatch(authorization: &str, host: &str) -> Option<String> {
    let token = authorization.strip_prefix("Bearer ").or_else(|| authorization.strip_prefix("bearer "))?.trim();
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let auds: Vec<&str> = match claims.get("aud")? {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    let mut url_hosts = Vec::new();
    for aud in &auds {
        let Ok(uri) = aud.parse::<http::Uri>() else { return None };
        let (Some(_), Some(h)) = (uri.scheme(), uri.host()) else { return None };
        let h = h.to_ascii_lowercase();
        if h == host {
            return None;
        }
        url_hosts.push(h);
    }
    (!url_hosts.is_empty()).then(|| format!("bearer token audience {} is not this server ({host})", url_hosts.join(", ")))
}

/// Does a request's Host/Origin fit its real destination? See [`host_fit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostFit {
    Fits,
    /// Host names a non-local name while the destination is local (DNS rebinding).
    Rebinding { host: String },
    /// Host is an IP literal other than the destination.
    IpMismatch { host: String },
    /// A web page of another site (or an opaque `null` origin) addresses a local server.
    ForeignOrigin { origin: String },
}

impl std::fmt::Display for HostFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostFit::Fits => f.write_str("fits"),
            HostFit::Rebinding { host } => write!(f, "Host `{host}` is not a local name but the server is on loopback (DNS rebinding)"),
            HostFit::IpMismatch { host } => write!(f, "Host `{host}` is an address other than the one connected to"),
            HostFit::ForeignOrigin { origin } => write!(f, "Origin `{origin}` is a foreign web page addressing a loopback server (cross-origin request)"),
        }
    }
}

/// Loopback, or the unspecified address (`0.0.0.0`, `::`), which Linux routes to this
/// host (the "0.0.0.0 day" browser attacks use it).
pub fn is_local_ip(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_unspecified()
}

/// `host`, `host:port`, `[v6]:port` → lower-case host without a trailing dot.
fn host_part(h: &str) -> String {
    let h = h.trim();
    let host = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => host,
            _ => h,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Names that resolve to this host without DNS: `localhost`, `*.localhost` (RFC 6761;
/// browsers never ask DNS for them), and `extra` (this host's name and the loopback
/// aliases of `/etc/hosts`, see [`local_names`]).
fn is_local_name(name: &str, extra: &[String]) -> bool {
    name == "localhost" || name.ends_with(".localhost") || extra.iter().any(|e| e == name)
}

/// Judge the Host and Origin headers of a request whose connection really goes to `dst`.
///
/// - Host: an IP literal must be `dst` itself; a name toward a local `dst` must be a
///   local name. Toward a non-local `dst` only the IP is known, so a Host *name* cannot
///   be checked against it (no DNS lookup: the attacker controls DNS) and fits.
/// - Origin (browsers only; its absence is normal): toward a local `dst`, a page whose
///   host is not local, or the opaque `null` origin of sandboxed frames, is foreign.
///   Another port on loopback is the same machine and fits.
pub fn host_fit(dst: IpAddr, host: Option<&str>, origin: Option<&str>, local: &[String]) -> HostFit {
    let dst = dst.to_canonical();
    let local_dst = is_local_ip(dst);
    if let Some(raw) = host.filter(|h| !h.trim().is_empty()) {
        let name = host_part(raw);
        match name.parse::<IpAddr>() {
            Ok(ip) if ip.to_canonical() != dst => return HostFit::IpMismatch { host: clip(raw) },
            Ok(_) => {}
            Err(_) if local_dst && !is_local_name(&name, local) => return HostFit::Rebinding { host: clip(raw) },
            Err(_) => {}
        }
    }
    if let (true, Some(o)) = (local_dst, origin) {
        let o = o.trim();
        let foreign = match o.split_once("://") {
            Some((_, rest)) => {
                let h = host_part(rest.split('/').next().unwrap_or_default());
                !match h.parse::<IpAddr>() {
                    Ok(ip) => is_local_ip(ip),
                    Err(_) => is_local_name(&h, local),
                }
            }
            None => true, // `null` or garbage
        };
        if foreign {
            return HostFit::ForeignOrigin { origin: clip(o) };
        }
    }
    HostFit::Fits
}

/// This host's own name and the names `/etc/hosts` maps to loopback addresses, read
/// once (bounded). Those are the names a local client may put in Host for a loopback
/// server without DNS being involved.
pub fn local_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = Vec::new();
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            names.push(h.trim().to_ascii_lowercase());
        }
        if let Ok(text) = std::fs::read_to_string("/etc/hosts") {
            names.extend(hosts_loopback_names(&text));
        }
        names.retain(|n| !n.is_empty());
        names.truncate(256);
        names
    })
}

/// The names `/etc/hosts` text maps to loopback addresses.
pub fn hosts_loopback_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().take(4096) {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|a| a.parse::<IpAddr>().ok()) else { continue };
        if is_local_ip(ip) {
            out.extend(fields.map(|n| n.trim_end_matches('.').to_ascii_lowercase()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_checks() {
        assert!(metadata_problems(&json!({"issuer": "https://as.example", "authorization_endpoint": "https://as.example/authorize?x=1&y=2"})).is_empty());
        assert!(metadata_problems(&json!({"authorization_endpoint": "http://127.0.0.1:9000/auth"})).is_empty());
        let p = metadata_problems(&json!({"authorization_endpoint": "a:$(cmd.exe /c whoami)?response_type=code"}));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(!metadata_problems(&json!({"authorization_endpoint": "file:/c:/windows/system32/calc.exe"})).is_empty());
        assert!(!metadata_problems(&json!({"token_endpoint": "http://as.example/token"})).is_empty());
        assert!(!metadata_problems(&json!({"authorization_servers": ["http://169.254.169.254/latest/meta-data/iam/"]})).is_empty());
        assert!(!metadata_problems(&json!({"authorization_servers": ["https://10.0.0.5/"]})).is_empty());
        assert!(metadata_problems(&json!({"resource": "https://mcp.vendor.example/mcp", "authorization_servers": ["https://login.vendor.example"]})).is_empty());
    }

    #[test]
    fn audience() {
        let jwt = |claims: Value| format!("Bearer e30.{}.c2ln", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string()));
        assert!(audience_mismatch(&jwt(json!({"aud": "https://api.github.com"})), "mcp.internal-tools.example").is_some());
        assert!(audience_mismatch(&jwt(json!({"aud": "https://mcp.example/mcp"})), "mcp.example:443").is_none());
        assert!(audience_mismatch(&jwt(json!({"aud": ["https://other.example", "https://mcp.example"]})), "mcp.example").is_none());
        assert!(audience_mismatch(&jwt(json!({"aud": "my-api"})), "mcp.example").is_none(), "non-URL audiences cannot be judged");
        assert!(audience_mismatch("Bearer opaque-token", "mcp.example").is_none());
        assert!(audience_mismatch("Basic dXNlcjpwYXNz", "mcp.example").is_none());
    }

    #[test]
    fn host_and_origin_fit() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let names = vec!["devbox".to_string()];
        for h in ["127.0.0.1:8931", "127.0.0.1", "localhost:3000", "LOCALHOST.", "app.localhost", "devbox:80"] {
            assert_eq!(host_fit(lo, Some(h), None, &names), HostFit::Fits, "{h}");
        }
        assert!(matches!(host_fit(lo, Some("evil.example:8931"), None, &names), HostFit::Rebinding { .. }));
        assert!(matches!(host_fit(lo, Some("127.0.0.2:8931"), None, &names), HostFit::IpMismatch { .. }));
        assert!(matches!(host_fit(lo, Some("[::1]:8931"), None, &names), HostFit::IpMismatch { .. }));
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(host_fit(v6, Some("[::1]:8931"), None, &names), HostFit::Fits);
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(host_fit(mapped, Some("127.0.0.1"), None, &names), HostFit::Fits);
        // 0.0.0.0 reaches this host: it is local, and so is its Host.
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        assert_eq!(host_fit(any, Some("0.0.0.0:6277"), None, &names), HostFit::Fits);
        assert!(matches!(host_fit(any, Some("0.0.0.0:6277"), Some("http://evil.example"), &names), HostFit::ForeignOrigin { .. }));
        // Origins.
        assert!(matches!(host_fit(lo, Some("localhost:6277"), Some("https://news-site.example"), &names), HostFit::ForeignOrigin { .. }));
        assert!(matches!(host_fit(lo, Some("localhost"), Some("null"), &names), HostFit::ForeignOrigin { .. }));
        assert_eq!(host_fit(lo, Some("localhost:6277"), Some("http://localhost:6274"), &names), HostFit::Fits);
        assert_eq!(host_fit(lo, Some("localhost"), Some("http://127.0.0.1:5173"), &names), HostFit::Fits);
        // Remote destinations: names cannot be checked, IP literals can; Origin is the server's business.
        let remote: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(host_fit(remote, Some("mcp.example.com"), Some("https://other.example"), &names), HostFit::Fits);
        assert!(matches!(host_fit(remote, Some("10.1.2.4"), None, &names), HostFit::IpMismatch { .. }));
        assert_eq!(host_fit(lo, None, None, &names), HostFit::Fits);
    }

    #[test]
    fn etc_hosts_aliases() {
        let text = "127.0.0.1 localhost\n127.0.1.1 devbox.lan devbox # me\n10.0.0.5 db\n::1 ip6-localhost\n# 127.0.0.1 commented\n";
        assert_eq!(hosts_loopback_names(text), vec!["localhost", "devbox.lan", "devbox", "ip6-localhost"]);
    }

    #[test]
    fn cors_simple_types() {
        assert!(is_cors_simple("text/plain;charset=UTF-8"));
        assert!(is_cors_simple("application/x-www-form-urlencoded"));
        assert!(!is_cors_simple("application/json"));
    }
}
