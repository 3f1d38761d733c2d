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
//!
//! Pure functions: the proxy decides what to do with the findings.

use std::net::IpAddr;

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
    fn cors_simple_types() {
        assert!(is_cors_simple("text/plain;charset=UTF-8"));
        assert!(is_cors_simple("application/x-www-form-urlencoded"));
        assert!(!is_cors_simple("application/json"));
    }
}
