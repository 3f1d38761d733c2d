//! Registered, shadow or bypass: a found server against the policy's `[[server]]` registry
//! and its `[[gateway]]` list.
//!
//! Everything is matched with the code the daemon uses on live traffic: network endpoints
//! with `Policy::server_for`, stdio servers by what they launch
//! (`mcpwatch_policy::launch::identify`, looking through npx/uvx/docker/shells, against
//! `[[server]] package = ...` / `command = ...`). A remote URL whose host a `[[gateway]]`
//! covers, reached directly instead of through the gateway, is a **bypass**, whether or
//! not a `[[server]]` entry names it: the call skips the company's gateway.

use mcpwatch_policy::launch::{identify, shell_words};
use mcpwatch_policy::{Policy, Target, stdio_endpoint};

use crate::model::Registry;
use crate::url;

/// The registry status of a server reached at `url_raw` (as written), or launched as
/// `command` + `args` when it has no URL.
pub(crate) fn status(policy: Option<&Policy>, url_raw: Option<&str>, command: Option<&str>, args: &[String]) -> Registry {
    let Some(policy) = policy else {
        return Registry::Unchecked;
    };
    let Some(raw) = url_raw else {
        return stdio_status(policy, command, args);
    };
    with_target(raw, |policy_target, host, port| {
        if let Some(g) = policy.bypassed_gateway(policy_target) {
            return Registry::Bypass {
                gateway: g.name.clone(),
                reason: format!("{host} is fronted by gateway `{}` but is reached directly", g.name),
            };
        }
        match policy.server_for(policy_target) {
            Some(def) => Registry::Registered {
                name: def.name.clone(),
            },
            None => Registry::Shadow {
                reason: format!("no [[server]] entry matches {host}:{port}"),
            },
        }
    })
    .unwrap_or_else(|| Registry::Shadow {
        reason: "URL could not be parsed".into(),
    })
}

/// The `[[gateway]]` a direct call to `url_raw` goes around, if any.
pub fn bypassed_gateway(policy: &Policy, url_raw: &str) -> Option<String> {
    with_target(url_raw, |t, _, _| policy.bypassed_gateway(t).map(|g| g.name.clone())).flatten()
}

/// Run `f` on the policy target the proxy would build for `raw` (endpoint key
/// scheme://host:port/path, no query, no user-info), with the URL's host and port;
/// `None` when the URL does not parse.
fn with_target<R>(raw: &str, f: impl FnOnce(&Target<'_>, &str, u16) -> R) -> Option<R> {
    let u = url::parse(raw)?;
    let host = if u.host.contains(':') { format!("[{}]", u.host) } else { u.host.to_ascii_lowercase() };
    let endpoint = format!("{}://{}:{}{}", u.scheme.to_ascii_lowercase(), host, u.port, u.path);
    let target = Target { endpoint: &endpoint, host: u.host, port: u.port, path: u.path };
    Some(f(&target, u.host, u.port))
}

fn stdio_status(policy: &Policy, command: Option<&str>, args: &[String]) -> Registry {
    let Some(cmd) = command else {
        return Registry::Shadow { reason: "no command and no URL".into() };
    };
    // A whole command line in `command` (no `args`) is split like the client would.
    let mut argv = if args.is_empty() && cmd.trim().contains(' ') { shell_words(cmd) } else { vec![cmd.to_string()] };
    argv.extend(args.iter().cloned());
    let Some(launch) = identify(&argv) else {
        return Registry::Shadow { reason: format!("cannot tell what `{cmd}` launches") };
    };
    let endpoint = stdio_endpoint(&launch);
    match policy.server_for(&Target::stdio(&endpoint)) {
        Some(def) => Registry::Registered { name: def.name.clone() },
        None => Registry::Shadow {
            reason: format!("no [[server]] package/command entry matches {}", launch.key()),
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
            status(Some(&p), Some("https://api.example.com/mcp/"), None, &[]),
            Registry::Registered { name: "gh".into() }
        );
        assert_eq!(
            status(Some(&p), Some("https://x.corp.example:8443/a?k=v"), None, &[]),
            Registry::Registered {
                name: "corp".into()
            }
        );
        assert!(status(Some(&p), Some("https://api.example.com/other"), None, &[]).is_shadow());
        assert!(status(Some(&p), None, Some("npx"), &["-y".into(), "pkg".into()]).is_shadow());
        assert_eq!(status(None, None, None, &[]), Registry::Unchecked);
    }

    #[test]
    fn stdio_servers_register_by_launch_and_gateways_mark_bypasses() {
        let p = mcpwatch_policy::parse(
            "version = 1\nmode = \"audit\"\n[[server]]\nname = \"everything\"\npackage = \"npm:@modelcontextprotocol/server-everything\"\n[[server]]\nname = \"copilot\"\nurl = \"https://api.githubcopilot.com/mcp\"\n[[gateway]]\nname = \"corp\"\nurl = \"https://gw.corp.example/mcp\"\ncovers = [\"*.githubcopilot.com\"]\n",
            "p.toml",
        )
        .expect("policy");
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            status(Some(&p), None, Some("npx"), &args(&["-y", "@modelcontextprotocol/server-everything@2025.1.1"])),
            Registry::Registered { name: "everything".into() }
        );
        assert_eq!(
            status(Some(&p), None, Some("npx -y @modelcontextprotocol/server-everything"), &[]),
            Registry::Registered { name: "everything".into() }
        );
        assert!(status(Some(&p), None, Some("uvx"), &args(&["other"])).is_shadow());
        // Registered or not, a covered host reached directly goes around the gateway.
        assert!(status(Some(&p), Some("https://api.githubcopilot.com/mcp"), None, &[]).is_bypass());
        assert_eq!(status(Some(&p), Some("https://gw.corp.example/mcp"), None, &[]).label(), "SHADOW");
    }
}
