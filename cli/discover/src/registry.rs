//! Registered or shadow: a found server against the policy's `[[server]]` registry.
//!
//! The policy registers network endpoints only (`url = ...`, or `host`/`port`/`path` globs; see
//! docs/policy.md), and matches them with the same code the daemon uses on live traffic
//! (`Policy::server_for`). So a remote server, or a stdio bridge to one, is registered when the
//! daemon would call it registered. A plain stdio server has no endpoint the registry can name: it
//! is shadow (unmanaged) until the policy can register launch commands.

use mcpwatch_policy::{Policy, Target};

use crate::model::Registry;
use crate::url;

/// The registry status of a server reached at `url_raw` (as written), if any.
pub(crate) fn status(policy: Option<&Policy>, url_raw: Option<&str>) -> Registry {
    let Some(policy) = policy else {
        return Registry::Unchecked;
    };
    let Some(raw) = url_raw else {
        return Registry::Shadow {
            reason: "stdio server: the policy registry names network endpoints only".into(),
        };
    };
    let Some(u) = url::parse(raw) else {
        return Registry::Shadow {
            reason: "URL could not be parsed".into(),
        };
    };
    // The endpoint key the proxy would build: scheme://host:port/path (no query, no user-info).
    let host = if u.host.contains(':') {
        format!("[{}]", u.host)
    } else {
        u.host.to_ascii_lowercase()
    };
    let endpoint = format!(
        "{}://{}:{}{}",
        u.scheme.to_ascii_lowercase(),
        host,
        u.port,
        u.path
    );
    let target = Target {
        endpoint: &endpoint,
        host: u.host,
        port: u.port,
        path: u.path,
    };
    match policy.server_for(&target) {
        Some(def) => Registry::Registered {
            name: def.name.clone(),
        },
        None => Registry::Shadow {
            reason: format!("no [[server]] entry matches {}:{}", u.host, u.port),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_and_host_entries_match_like_the_daemon() {
        let p = mcpwatch_policy::parse(
            "version = 1\nmode = \"audit\"\n[[server]]\nname = \"gh\"\nurl = \"https://api.example.com/mcp\"\n[[server]]\nname = \"corp\"\nhost = \"*.corp.example\"\n",
            "p.toml",
        )
        .expect("policy");
        assert_eq!(
            status(Some(&p), Some("https://api.example.com/mcp/")),
            Registry::Registered { name: "gh".into() }
        );
        assert_eq!(
            status(Some(&p), Some("https://x.corp.example:8443/a?k=v")),
            Registry::Registered {
                name: "corp".into()
            }
        );
        assert!(status(Some(&p), Some("https://api.example.com/other")).is_shadow());
        assert!(status(Some(&p), None).is_shadow());
        assert_eq!(status(None, None), Registry::Unchecked);
    }
}
