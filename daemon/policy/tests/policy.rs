//! Behaviour of the policy crate through its public API: precedence, specificity,
//! defaults, modes, shadow servers, tools/list visibility, rate limits across reloads,
//! load errors with positions, the example policy, and the threat cases from
//! tests/fixtures/threats.jsonl that the policy language can express.

use mcpwatch_api::{Ancestor, ProcessInfo};
use mcpwatch_policy::{
    Action, Call, Decision, Effect, Mode, Policy, RateLimiter, RateScope, Subject, Target,
    approval_key, parse,
};
use serde_json::{Value, json};

// ------------------------------------------------------------------ helpers

fn pol(src: &str) -> Policy {
    parse(src, "test.toml").unwrap_or_else(|e| panic!("policy should parse:\n{}", e.render()))
}

fn proc_(comm: &str, exe: &str, uid: u32) -> ProcessInfo {
    ProcessInfo {
        pid: 4242,
        tgid: 4242,
        uid,
        gid: uid,
        comm: comm.into(),
        exe: Some(exe.into()),
        ..Default::default()
    }
}

/// An endpoint key `scheme://host:port/path` split into a [`Target`].
struct Ep {
    endpoint: String,
    host: String,
    port: u16,
    path: String,
}

fn ep(endpoint: &str) -> Ep {
    let (scheme, rest) = endpoint.split_once("://").expect("scheme");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h.to_string(), p.parse().expect("port"))
        }
        _ => (
            authority.to_string(),
            if scheme == "https" { 443 } else { 80 },
        ),
    };
    Ep {
        endpoint: endpoint.into(),
        host,
        port,
        path: path.into(),
    }
}

impl Ep {
    fn t(&self) -> Target<'_> {
        Target {
            endpoint: &self.endpoint,
            host: &self.host,
            port: self.port,
            path: &self.path,
        }
    }
}

fn eval(
    p: &Policy,
    who: Option<&ProcessInfo>,
    at: &str,
    method: &str,
    name: Option<&str>,
    args: Option<&Value>,
) -> Decision {
    let e = ep(at);
    p.evaluate(
        &Subject { process: who },
        &e.t(),
        &Call {
            method,
            name,
            arguments: args,
        },
    )
}

fn call(p: &Policy, who: Option<&ProcessInfo>, at: &str, tool: &str, args: Value) -> Decision {
    eval(p, who, at, "tools/call", Some(tool), Some(&args))
}

// ------------------------------------------------------------------ the table

const BASE: &str = r##"
version = 1
mode = "enforce"
shadow = "alert"
contact = "#mcp-gov"

[[server]]
name = "files"
url = "http://127.0.0.2:8765/mcp"

[[server]]
name = "db"
host = "*.db.internal"
port = 443

[[server]]
name = "db-primary"
host = "primary.db.internal"
port = 443
path = "/mcp"
mode = "warn"

[[server]]
name = "pinned"
host = "pinned.internal"
tools = ["list_files", "delete_file"]

[[agent]]
name = "reader"
comm = "reader"
servers = ["files", "db*", "pinned"]
tools = ["read_*", "list_*", "search"]

[[agent]]
name = "reader-alice"
comm = "reader"
uid = 1000

[[agent]]
name = "ops"
exe = "/usr/bin/ops-*"
deny_tools = ["drop_*"]

[[rule]]
id = "allow-delete-generic"
tools = ["delete_*"]
action = "allow"

[[rule]]
id = "approve-delete"
tools = ["delete_file", "delete_records"]
action = "require_approval"

[[rule]]
id = "deny-delete-prod"
servers = ["db-primary"]
tools = ["delete_*"]
action = "deny"

[[rule]]
id = "deny-audit-staged"
tools = ["delete_records"]
action = "deny"
mode = "audit"

[[rule]]
id = "ops-writes"
agents = ["ops"]
tools = ["write_*"]
action = "rate_limit"
rate = { count = 2, per = "minute", scope = "agent" }

[[rule]]
id = "no-ssh"
tools = ["read_file"]
action = "deny"
message = "no SSH keys"
[[rule.when]]
pointer = "/path"
matches = '(^|/)\.ssh(/|$)'

[[rule]]
id = "warn-big-query"
tools = ["query"]
action = "deny"
mode = "warn"
[[rule.when]]
pointer = "/limit"
matches = '^[0-9]{5,}$'
"##;

const FILES: &str = "http://127.0.0.2:8765/mcp";
const SHADOW: &str = "http://evil.example:80/mcp";

struct Case {
    name: &'static str,
    who: Option<ProcessInfo>,
    at: &'static str,
    method: &'static str,
    tool: Option<&'static str>,
    args: Value,
    action: &'static str,
    effect: Effect,
    mode: Mode,
    rules: &'static [&'static str],
    shadow: bool,
    alert: bool,
    agent: Option<&'static str>,
    server: Option<&'static str>,
}

fn ops() -> Option<ProcessInfo> {
    Some(proc_("ops-cli", "/usr/bin/ops-cli", 2000))
}

fn reader() -> Option<ProcessInfo> {
    Some(proc_("reader", "/opt/reader/bin/reader", 1001))
}

fn alice_reader() -> Option<ProcessInfo> {
    Some(proc_("reader", "/opt/reader/bin/reader", 1000))
}

fn cases() -> Vec<Case> {
    use Effect::*;
    use Mode::*;
    let c = |name, who, at, tool: &'static str, args: Value| Case {
        name,
        who,
        at,
        method: "tools/call",
        tool: Some(tool),
        args,
        action: "allow",
        effect: Forward,
        mode: Enforce,
        rules: &[],
        shadow: false,
        alert: false,
        agent: None,
        server: Some("files"),
    };
    vec![
        Case {
            action: "require_approval",
            effect: Hold,
            rules: &["approve-delete", "allow-delete-generic"],
            alert: true,
            agent: Some("ops"),
            ..c(
                "require_approval beats allow",
                ops(),
                FILES,
                "delete_file",
                json!({}),
            )
        },
        Case {
            action: "require_approval",
            effect: Hold,
            rules: &[
                "approve-delete",
                "deny-audit-staged",
                "allow-delete-generic",
            ],
            alert: true,
            agent: Some("ops"),
            ..c(
                "an audit-mode deny does not weaken an enforced approval",
                ops(),
                FILES,
                "delete_records",
                json!({"ids": [1, 2]}),
            )
        },
        Case {
            action: "deny",
            effect: Forward,
            mode: Warn,
            rules: &["deny-delete-prod", "allow-delete-generic"],
            alert: true,
            agent: Some("ops"),
            server: Some("db-primary"),
            ..c(
                "server mode warn: deny is reported and alerted, not blocked; most specific server wins",
                ops(),
                "https://primary.db.internal:443/mcp",
                "delete_rows",
                json!({}),
            )
        },
        Case {
            rules: &["allow-delete-generic"],
            agent: Some("ops"),
            server: Some("db"),
            ..c(
                "host glob server, allow rule",
                ops(),
                "https://replica.db.internal:443/mcp",
                "delete_rows",
                json!({}),
            )
        },
        Case {
            action: "deny",
            effect: Block,
            rules: &["no-ssh", "agent:reader"],
            alert: true,
            agent: Some("reader"),
            ..c(
                "argument condition deny beats the agent tool list allow",
                reader(),
                FILES,
                "read_file",
                json!({"path": "/home/a/.ssh/id_rsa"}),
            )
        },
        Case {
            rules: &["agent:reader"],
            agent: Some("reader"),
            ..c(
                "agent tool list allows read_file",
                reader(),
                FILES,
                "read_file",
                json!({"path": "/home/a/notes.txt"}),
            )
        },
        Case {
            action: "deny",
            effect: Block,
            rules: &["agent:reader"],
            alert: true,
            agent: Some("reader"),
            ..c(
                "tool outside the agent's list",
                reader(),
                FILES,
                "write_file",
                json!({}),
            )
        },
        Case {
            rules: &["policy:default"],
            agent: Some("reader-alice"),
            ..c(
                "most specific agent (comm + uid) has no restrictions; default allow",
                alice_reader(),
                FILES,
                "write_file",
                json!({}),
            )
        },
        Case {
            action: "deny",
            effect: Block,
            rules: &["agent:reader"],
            shadow: true,
            alert: true,
            agent: Some("reader"),
            server: None,
            ..c(
                "agent restricted to listed servers; shadow server",
                reader(),
                SHADOW,
                "list_files",
                json!({}),
            )
        },
        Case {
            rules: &["policy:default"],
            shadow: true,
            alert: true,
            server: None,
            ..c(
                "unidentified process on a shadow server: alert only",
                None,
                SHADOW,
                "read_file",
                json!({"path": "x"}),
            )
        },
        Case {
            action: "require_approval",
            effect: Hold,
            rules: &["approve-delete", "allow-delete-generic"],
            alert: true,
            agent: Some("ops"),
            server: Some("pinned"),
            ..c(
                "registered tool on a pinned server",
                ops(),
                "http://pinned.internal:80/mcp",
                "delete_file",
                json!({}),
            )
        },
        Case {
            action: "deny",
            effect: Block,
            rules: &["server:pinned"],
            alert: true,
            agent: Some("ops"),
            server: Some("pinned"),
            ..c(
                "case variant of a pinned tool is not that tool",
                ops(),
                "http://pinned.internal:80/mcp",
                "Delete_File",
                json!({}),
            )
        },
        Case {
            action: "deny",
            effect: Block,
            rules: &["agent:ops"],
            alert: true,
            agent: Some("ops"),
            ..c("agent deny_tools", ops(), FILES, "drop_table", json!({}))
        },
        Case {
            action: "rate_limit",
            rules: &["ops-writes"],
            agent: Some("ops"),
            ..c("rate-limited tool", ops(), FILES, "write_file", json!({}))
        },
        Case {
            action: "deny",
            mode: Warn,
            rules: &["warn-big-query"],
            alert: true,
            agent: Some("ops"),
            ..c(
                "warn-mode rule: alert, forward",
                ops(),
                FILES,
                "query",
                json!({"limit": 100000}),
            )
        },
        Case {
            rules: &["policy:default"],
            agent: Some("ops"),
            ..c(
                "condition not met: default",
                ops(),
                FILES,
                "query",
                json!({"limit": 10}),
            )
        },
        Case {
            method: "initialize",
            tool: None,
            agent: Some("reader"),
            ..c(
                "methods other than tools/call are not governed by tool rules",
                reader(),
                FILES,
                "",
                json!({}),
            )
        },
        Case {
            method: "tools/list",
            tool: None,
            action: "deny",
            effect: Block,
            rules: &["agent:reader"],
            shadow: true,
            alert: true,
            agent: Some("reader"),
            server: None,
            ..c(
                "server lists apply to every method",
                reader(),
                SHADOW,
                "",
                json!({}),
            )
        },
    ]
}

#[test]
fn precedence_specificity_defaults_modes_shadow_table() {
    let p = pol(BASE);
    let mut failures = Vec::new();
    for case in cases() {
        let d = eval(
            &p,
            case.who.as_ref(),
            case.at,
            case.method,
            case.tool,
            Some(&case.args),
        );
        let got = (
            d.action.label(),
            d.effective,
            d.mode,
            d.matched_rules
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            d.shadow,
            d.alert,
            d.agent.as_deref(),
            d.server.as_deref(),
        );
        let want = (
            case.action,
            case.effect,
            case.mode,
            case.rules.to_vec(),
            case.shadow,
            case.alert,
            case.agent,
            case.server,
        );
        if got != want {
            failures.push(format!(
                "{}:\n  got  {got:?}\n  want {want:?}\n  reason: {}",
                case.name, d.reason
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn reasons_name_the_rule_and_how_to_ask() {
    let p = pol(BASE);
    let d = call(
        &p,
        reader().as_ref(),
        FILES,
        "read_file",
        json!({"path": "~/.ssh/id_rsa"}),
    );
    assert!(d.reason.contains("\"no-ssh\""), "{}", d.reason);
    assert!(d.reason.contains("no SSH keys"), "{}", d.reason);
    assert!(d.reason.contains("#mcp-gov"), "{}", d.reason);

    let d = call(&p, reader().as_ref(), FILES, "write_file", json!({}));
    assert!(d.reason.contains("read_*, list_*, search"), "{}", d.reason);
    assert!(d.reason.contains("\"write_file\""), "{}", d.reason);

    let d = call(&p, ops().as_ref(), FILES, "delete_file", json!({}));
    assert!(d.reason.contains("mcpwatch approve"), "{}", d.reason);
    assert!(d.reason.contains("50 s"), "{}", d.reason);

    // Attacker-controlled names are quoted with control characters escaped.
    let d = call(&p, reader().as_ref(), FILES, "evil\nline", json!({}));
    assert!(!d.reason.contains('\n'), "{}", d.reason);
    assert!(d.reason.contains("evil\\nline"), "{}", d.reason);
}

#[test]
fn default_deny_applies_only_to_unspoken_tool_calls() {
    let p = pol(r#"
version = 1
mode = "enforce"
default = "deny"
[[rule]]
id = "reads"
tools = ["read_*"]
action = "allow"
"#);
    let d = call(&p, None, FILES, "write_file", json!({}));
    assert_eq!((d.action.label(), d.effective), ("deny", Effect::Block));
    assert_eq!(d.matched_rules, ["policy:default"]);
    assert!(d.reason.contains("default is deny"), "{}", d.reason);
    let d = call(&p, None, FILES, "read_file", json!({}));
    assert_eq!((d.action.label(), d.effective), ("allow", Effect::Forward));
    assert_eq!(d.matched_rules, ["reads"]);
    for m in ["initialize", "tools/list", "ping"] {
        let d = eval(&p, None, FILES, m, None, None);
        assert_eq!(d.effective, Effect::Forward, "{m}");
    }
    let s = Subject { process: None };
    let e = ep(FILES);
    assert!(p.tool_visible(&s, &e.t(), "read_file"));
    assert!(!p.tool_visible(&s, &e.t(), "write_file"));
}

#[test]
fn shadow_allow_alert_block_and_modes() {
    let src = |mode: &str, shadow: &str| {
        format!(
            "version = 1\nmode = \"{mode}\"\nshadow = \"{shadow}\"\n[[server]]\nname = \"known\"\nurl = \"{FILES}\"\n"
        )
    };
    // (mode, shadow) -> (effect, alert, matched)
    let table: &[(&str, &str, Effect, bool, &[&str])] = &[
        ("enforce", "allow", Effect::Forward, false, &[]),
        ("enforce", "alert", Effect::Forward, true, &[]),
        ("audit", "alert", Effect::Forward, true, &[]),
        ("enforce", "block", Effect::Block, true, &["policy:shadow"]),
        ("warn", "block", Effect::Forward, true, &["policy:shadow"]),
        ("audit", "block", Effect::Forward, false, &["policy:shadow"]),
    ];
    for (mode, shadow, effect, alert, matched) in table {
        let p = pol(&src(mode, shadow));
        let d = eval(&p, None, SHADOW, "initialize", None, None);
        assert!(d.shadow, "{mode}/{shadow}");
        assert_eq!(
            (d.effective, d.alert),
            (*effect, *alert),
            "{mode}/{shadow}: {}",
            d.reason
        );
        assert_eq!(d.matched_rules, *matched, "{mode}/{shadow}");
        let known = eval(&p, None, FILES, "initialize", None, None);
        assert!(
            !known.shadow && !known.alert && known.effective == Effect::Forward,
            "{mode}/{shadow}"
        );
        assert_eq!(known.server.as_deref(), Some("known"));
    }
}

#[test]
fn modes_global_server_rule() {
    let src = |global: &str, server_mode: &str, rule_mode: &str| {
        format!(
            "version = 1\nmode = \"{global}\"\n[[server]]\nname = \"s\"\nurl = \"{FILES}\"\n{server_mode}\n\
             [[rule]]\nid = \"d\"\naction = \"deny\"\n{rule_mode}\n\
             [[rule]]\nid = \"a\"\ntools = [\"approve_me\"]\naction = \"require_approval\"\n{rule_mode}\n"
        )
    };
    // (global, server, rule) -> effective mode and effects for deny and approval
    let table: &[(&str, &str, &str, Mode, Effect, Effect, bool)] = &[
        (
            "enforce",
            "",
            "",
            Mode::Enforce,
            Effect::Block,
            Effect::Block,
            true,
        ),
        (
            "warn",
            "",
            "",
            Mode::Warn,
            Effect::Forward,
            Effect::Forward,
            true,
        ),
        (
            "audit",
            "",
            "",
            Mode::Audit,
            Effect::Forward,
            Effect::Forward,
            false,
        ),
        (
            "enforce",
            "mode = \"audit\"",
            "",
            Mode::Audit,
            Effect::Forward,
            Effect::Forward,
            false,
        ),
        (
            "audit",
            "mode = \"audit\"",
            "mode = \"enforce\"",
            Mode::Enforce,
            Effect::Block,
            Effect::Block,
            true,
        ),
        (
            "enforce",
            "",
            "mode = \"warn\"",
            Mode::Warn,
            Effect::Forward,
            Effect::Forward,
            true,
        ),
    ];
    for (g, s, r, mode, deny_effect, _, alert) in table {
        let p = pol(&src(g, s, r));
        let d = call(&p, None, FILES, "anything", json!({}));
        assert_eq!(
            (d.action.label(), d.mode, d.effective, d.alert),
            ("deny", *mode, *deny_effect, *alert),
            "global {g}, server `{s}`, rule `{r}`: {}",
            d.reason
        );
        match mode {
            Mode::Audit => assert!(d.reason.contains("audit mode"), "{}", d.reason),
            Mode::Warn => assert!(d.reason.contains("warn mode"), "{}", d.reason),
            Mode::Enforce => assert!(
                d.reason.contains("#") || d.reason.contains("To request access"),
                "{}",
                d.reason
            ),
        }
    }
    // Approval alone, per mode.
    for (mode, effect, alert) in [
        ("enforce", Effect::Hold, true),
        ("warn", Effect::Forward, true),
        ("audit", Effect::Forward, false),
    ] {
        let p = pol(&format!(
            "version = 1\nmode = \"{mode}\"\nshadow = \"allow\"\n[[rule]]\nid = \"a\"\naction = \"require_approval\"\n"
        ));
        let d = call(&p, None, FILES, "t", json!({}));
        assert_eq!(
            (d.action.label(), d.effective, d.alert),
            ("require_approval", effect, alert),
            "{mode}"
        );
    }
}

#[test]
fn specificity_and_file_order_pick_the_decisive_rule() {
    let p = pol(r#"
version = 1
mode = "enforce"
[[agent]]
name = "bot"
comm = "bot"
[[rule]]
id = "broad"
action = "deny"
[[rule]]
id = "by-tool-glob"
tools = ["del*"]
action = "deny"
[[rule]]
id = "by-tool-and-agent"
tools = ["delete"]
agents = ["bot"]
action = "deny"
message = "bots may not delete"
[[rule]]
id = "same-as-broad"
action = "deny"
"#);
    let bot = proc_("bot", "/bin/bot", 1);
    let d = call(&p, Some(&bot), FILES, "delete", json!({}));
    assert_eq!(
        d.matched_rules,
        [
            "by-tool-and-agent",
            "by-tool-glob",
            "broad",
            "same-as-broad"
        ]
    );
    assert!(d.reason.contains("bots may not delete"), "{}", d.reason);
    let d = call(&p, None, FILES, "other", json!({}));
    assert_eq!(
        d.matched_rules,
        ["broad", "same-as-broad"],
        "file order breaks ties"
    );
}

#[test]
fn agent_identity_matchers() {
    let p = pol(r#"
version = 1
mode = "enforce"
[[agent]]
name = "by-exe"
exe = "/usr/lib/editor/**"
[[agent]]
name = "by-unit"
unit = "ci-runner-*.service"
[[agent]]
name = "by-cgroup"
cgroup = "/user.slice/user-1000.slice/**"
[[agent]]
name = "by-user-group"
user = "alice"
group = "research"
[[agent]]
name = "by-gid"
gid = 4000
"#);
    let who = |f: &dyn Fn(&mut ProcessInfo)| {
        let mut p = proc_("x", "/usr/bin/x", 5);
        f(&mut p);
        p
    };
    let agent = |pi: &ProcessInfo| {
        p.agent_for(&Subject { process: Some(pi) })
            .map(|a| a.name.clone())
    };
    assert_eq!(
        agent(&who(&|p| p.exe = Some("/usr/lib/editor/bin/code".into()))).as_deref(),
        Some("by-exe")
    );
    // `*`-style globs on paths do not cross `/`, `**` does; the attributed agent counts.
    assert_eq!(
        agent(&who(&|p| {
            p.exe = Some("/usr/bin/node".into());
            p.agent = Some(Ancestor {
                pid: 1,
                comm: "code".into(),
                exe: Some("/usr/lib/editor/code".into()),
            });
        }))
        .as_deref(),
        Some("by-exe")
    );
    assert_eq!(
        agent(&who(&|p| p.unit = Some("ci-runner-7.service".into()))).as_deref(),
        Some("by-unit")
    );
    assert_eq!(
        agent(&who(
            &|p| p.cgroup_path = Some("/user.slice/user-1000.slice/session-3.scope".into())
        ))
        .as_deref(),
        Some("by-cgroup")
    );
    assert_eq!(
        agent(&who(&|p| {
            p.user = Some("alice".into());
            p.group = Some("research".into());
        }))
        .as_deref(),
        Some("by-user-group")
    );
    assert_eq!(
        agent(&who(&|p| p.user = Some("alice".into()))),
        None,
        "all matchers must hold"
    );
    assert_eq!(agent(&who(&|p| p.gid = 4000)).as_deref(), Some("by-gid"));
    assert_eq!(agent(&who(&|_| {})), None);
    assert!(p.agent_for(&Subject { process: None }).is_none());
}

#[test]
fn server_matching_url_host_port_path() {
    let p = pol(r#"
version = 1
mode = "enforce"
[[server]]
name = "exact"
url = "HTTPS://Mcp.Linear.App/sse/"
[[server]]
name = "v6"
url = "http://[::1]:18001/mcp"
[[server]]
name = "any-path"
host = "*.corp.example"
[[server]]
name = "api-path"
host = "tools.corp.example"
port = 8443
path = "/api/*"
"#);
    let name = |at: &str| {
        let e = ep(at);
        p.server_for(&e.t()).map(|s| s.name.clone())
    };
    assert_eq!(
        name("https://mcp.linear.app:443/sse").as_deref(),
        Some("exact")
    );
    assert_eq!(
        name("https://mcp.linear.app:443/sse?x=1").as_deref(),
        Some("exact")
    );
    assert_eq!(
        name("http://mcp.linear.app:443/sse"),
        None,
        "scheme is part of a url match"
    );
    assert_eq!(name("https://mcp.linear.app:443/other"), None);
    assert_eq!(name("http://[::1]:18001/mcp").as_deref(), Some("v6"));
    assert_eq!(
        name("https://a.b.corp.example:443/whatever").as_deref(),
        Some("any-path")
    );
    assert_eq!(
        name("https://tools.corp.example:8443/api/v1").as_deref(),
        Some("api-path")
    );
    assert_eq!(
        name("https://tools.corp.example:8443/api/v1/x").as_deref(),
        Some("any-path"),
        "`*` stops at `/`"
    );
    assert_eq!(
        name("https://tools.corp.example:9999/api/v1").as_deref(),
        Some("any-path")
    );
    assert_eq!(name("https://corp.example.evil:443/mcp"), None);
    // Hosts as they come in a Host header (with port, brackets, trailing dot).
    let raw = |host: &str, port: u16, path: &str| {
        p.server_for(&Target {
            endpoint: "https://x",
            host,
            port,
            path,
        })
        .map(|s| s.name.clone())
    };
    assert_eq!(
        raw("Mcp.Linear.App:443", 443, "/sse").as_deref(),
        Some("exact")
    );
    assert_eq!(
        raw("mcp.linear.app.", 443, "/sse").as_deref(),
        Some("exact")
    );
    assert_eq!(
        p.server_for(&Target {
            endpoint: "http://[::1]:18001/mcp",
            host: "[::1]:18001",
            port: 18001,
            path: "/mcp"
        })
        .map(|s| s.name.as_str()),
        Some("v6")
    );
    assert_eq!(
        p.server_for(&Target {
            endpoint: "http://[::1]:18001/mcp",
            host: "::1",
            port: 18001,
            path: "/mcp/"
        })
        .map(|s| s.name.as_str()),
        Some("v6")
    );
}

/// A variant of a registered path that a server still routes to the registered endpoint
/// must not make the server look unregistered (its registry rules would not apply):
/// uvicorn decodes `%6D`, Express matches case-insensitively, servlet containers drop
/// `;params`, and proxies collapse `//` and dot segments.
#[test]
fn registered_paths_match_the_variants_servers_route() {
    let p = pol(r#"
version = 1
mode = "enforce"
[[server]]
name = "records"
url = "http://10.0.0.5:8000/mcp"
[[server]]
name = "api"
host = "tools.corp.example"
path = "/API/*"
"#);
    let name = |path: &str| {
        p.server_for(&Target { endpoint: "http://x", host: "10.0.0.5", port: 8000, path }).map(|s| s.name.clone())
    };
    for variant in ["/mcp", "/MCP", "/%6Dcp", "/%6dcp/", "//mcp", "/./mcp", "/x/../mcp", "/mcp;jsessionid=1", "/m%63p?x=1", "/%2Fmcp"] {
        assert_eq!(name(variant).as_deref(), Some("records"), "{variant}");
    }
    for other in ["/mcpx", "/mcp/x", "/x/mcp", "/%256Dcp", "/m%"] {
        assert_eq!(name(other), None, "{other}");
    }
    let api = |path: &str| {
        p.server_for(&Target { endpoint: "https://x", host: "tools.corp.example", port: 443, path }).map(|s| s.name.clone())
    };
    assert_eq!(api("/api/v1").as_deref(), Some("api"));
    assert_eq!(api("/Api/%761").as_deref(), Some("api"));
    assert_eq!(api("/api/v1/x"), None, "`*` still stops at `/`");

    // A loopback address is `localhost` too (the daemon names plain-HTTP loopback
    // endpoints by address); another loopback address is another server.
    let p = pol("version = 1\nmode = \"enforce\"\n[[server]]\nname = \"local\"\nurl = \"http://localhost:8000/mcp\"\n[[server]]\nname = \"two\"\nurl = \"http://127.0.0.2:8000/mcp\"\n");
    let at = |host: &str| p.server_for(&Target { endpoint: "http://x", host, port: 8000, path: "/mcp" }).map(|s| s.name.clone());
    assert_eq!(at("127.0.0.1").as_deref(), Some("local"));
    assert_eq!(at("::1").as_deref(), Some("local"));
    assert_eq!(at("127.0.0.2").as_deref(), Some("two"), "the literal entry is more specific");
    assert_eq!(at("10.0.0.1"), None);
}

#[test]
fn tools_list_visibility_per_agent() {
    let p = pol(BASE);
    let vis = |who: Option<ProcessInfo>, at: &str, tool: &str| {
        let e = ep(at);
        p.tool_visible(
            &Subject {
                process: who.as_ref(),
            },
            &e.t(),
            tool,
        )
    };
    // reader: its own list only; a conditional deny does not hide read_file.
    assert!(vis(reader(), FILES, "read_file"));
    assert!(vis(reader(), FILES, "list_files"));
    assert!(!vis(reader(), FILES, "write_file"));
    assert!(!vis(reader(), FILES, "delete_file"));
    // Another identity sees other tools.
    assert!(vis(alice_reader(), FILES, "write_file"));
    assert!(vis(ops(), FILES, "delete_file"), "approval does not hide");
    assert!(vis(ops(), FILES, "write_file"), "rate limit does not hide");
    assert!(!vis(ops(), FILES, "drop_table"));
    // Pinned server: unregistered tools are hidden from everyone.
    assert!(vis(ops(), "http://pinned.internal:80/mcp", "list_files"));
    assert!(!vis(
        ops(),
        "http://pinned.internal:80/mcp",
        "surprise_tool"
    ));
    // Warn-mode server: a deny there never hides anything.
    assert!(vis(
        ops(),
        "https://primary.db.internal:443/mcp",
        "delete_rows"
    ));
    // Reader cannot use a shadow server at all.
    assert!(!vis(reader(), SHADOW, "list_files"));
}

// ------------------------------------------------------------------ rate limits

const RATED: &str = r#"
version = 1
mode = "enforce"
[[agent]]
name = "a"
comm = "a"
[[agent]]
name = "b"
comm = "b"
[[rule]]
id = "per-agent"
tools = ["write"]
action = "rate_limit"
rate = { count = 3, per = "minute", scope = "agent" }
[[rule]]
id = "per-uid"
tools = ["uid_tool"]
action = "rate_limit"
rate = { count = 1, per = "minute", scope = "uid" }
[[rule]]
id = "per-tool"
tools = ["tool_*"]
action = "rate_limit"
rate = { count = 1, per = "hour", scope = "tool" }
[[rule]]
id = "everything"
methods = ["*"]
action = "rate_limit"
rate = { count = 100, per = "second", scope = "aggregate" }
mode = "warn"
"#;

fn limited(
    p: &Policy,
    l: &mut RateLimiter,
    now: u64,
    who: &ProcessInfo,
    at: &str,
    tool: &str,
) -> (Decision, bool, u64) {
    let mut d = call(p, Some(who), at, tool, json!({}));
    let r = l.apply(now, &mut d).expect("decision carries rate limits");
    assert_eq!(r.allowed, d.effective == Effect::Forward);
    (d, r.allowed, r.retry_after_ms)
}

#[test]
fn rate_limit_trips_at_count_and_recovers_after_the_window() {
    let p = pol(RATED);
    let mut l = RateLimiter::default();
    let a = proc_("a", "/bin/a", 10);
    let t0 = 5_000;
    for i in 0..3 {
        let (d, ok, _) = limited(&p, &mut l, t0 + i, &a, FILES, "write");
        assert!(ok, "call {i}: {}", d.reason);
        match &d.action {
            Action::RateLimit(spec) => {
                assert_eq!(
                    (spec.rule.as_str(), spec.key.as_str(), spec.scope),
                    ("per-agent", "agent:a", RateScope::Agent)
                );
            }
            other => panic!("expected rate_limit, got {other:?}"),
        }
    }
    let (d, ok, retry) = limited(&p, &mut l, t0 + 3, &a, FILES, "write");
    assert!(!ok);
    assert_eq!(
        (d.effective, d.mode, d.alert),
        (Effect::Block, Mode::Enforce, true)
    );
    assert_eq!(d.matched_rules[0], "per-agent");
    assert!(
        d.reason.contains("rate limit exceeded") && d.reason.contains("per-agent"),
        "{}",
        d.reason
    );
    assert_eq!(retry, 20_000 - 3);
    // Another agent has its own counter.
    let (_, ok, _) = limited(
        &p,
        &mut l,
        t0 + 4,
        &proc_("b", "/bin/b", 10),
        FILES,
        "write",
    );
    assert!(ok);
    // After the window the full burst is back.
    let later = t0 + 60_000;
    for i in 0..3 {
        assert!(
            limited(&p, &mut l, later + i, &a, FILES, "write").1,
            "after window, call {i}"
        );
    }
    assert!(!limited(&p, &mut l, later + 3, &a, FILES, "write").1);
}

#[test]
fn rate_scopes_uid_tool_aggregate_and_warn_mode() {
    let p = pol(RATED);
    let mut l = RateLimiter::default();
    let a = proc_("a", "/bin/a", 10);
    let b_same_uid = proc_("b", "/bin/b", 10);
    let b_other_uid = proc_("b", "/bin/b", 11);
    assert!(limited(&p, &mut l, 0, &a, FILES, "uid_tool").1);
    assert!(
        !limited(&p, &mut l, 1, &b_same_uid, FILES, "uid_tool").1,
        "same uid shares the counter"
    );
    assert!(limited(&p, &mut l, 2, &b_other_uid, FILES, "uid_tool").1);

    assert!(limited(&p, &mut l, 3, &a, FILES, "tool_x").1);
    assert!(
        !limited(&p, &mut l, 4, &b_other_uid, FILES, "tool_x").1,
        "per tool: shared by callers"
    );
    assert!(
        limited(&p, &mut l, 5, &a, FILES, "tool_y").1,
        "another tool"
    );
    assert!(
        limited(&p, &mut l, 6, &a, SHADOW, "tool_x").1,
        "same tool on another server"
    );

    // Aggregate warn-mode limit of 100/s across servers: exceeding it alerts, never blocks.
    let mut l = RateLimiter::default();
    let mut alerted = 0;
    for i in 0..150u64 {
        let at = if i % 2 == 0 { FILES } else { SHADOW };
        // All at the same instant: exactly 100 fit in the bucket.
        let (d, ok, _) = limited(&p, &mut l, 1_000, &a, at, "read");
        assert!(ok, "warn mode never blocks");
        if d.reason.contains("\"everything\" exceeded") {
            alerted += 1;
            assert!(d.alert);
        }
    }
    assert_eq!(alerted, 50, "calls 101..150 exceed the aggregate limit");
}

/// A counter key the caller can vary is a way around the limit: an unidentified process
/// that copies its interpreter elsewhere, or a client that spells a shadow server's path
/// another way, still counts against the same limit.
#[test]
fn rate_counters_are_not_reset_by_a_new_exe_or_a_spelling() {
    let p = pol(RATED);
    let mut l = RateLimiter::default();
    let python = proc_("python3", "/usr/bin/python3.11", 10);
    let copy = proc_("p", "/tmp/x/python3-copy", 10);
    let other_user = proc_("p", "/tmp/x/python3-copy", 11);
    for i in 0..3 {
        assert!(limited(&p, &mut l, i, &python, FILES, "write").1);
    }
    assert!(!limited(&p, &mut l, 3, &copy, FILES, "write").1, "a copied executable is the same unidentified caller");
    assert!(limited(&p, &mut l, 4, &other_user, FILES, "write").1, "another user has its own counter");

    let mut l = RateLimiter::default();
    let shadow = "http://evil.example:80/mcp";
    assert!(limited(&p, &mut l, 0, &python, shadow, "tool_x").1);
    for variant in ["http://EVIL.example.:80/MCP", "http://evil.example:80/%6Dcp/", "http://evil.example:80//mcp;x"] {
        assert!(!limited(&p, &mut l, 1, &python, variant, "tool_x").1, "{variant}: a fresh counter");
    }
    assert!(limited(&p, &mut l, 2, &python, "http://evil.example:80/other", "tool_x").1, "another endpoint");
}

#[test]
fn reload_keeps_rate_limit_state() {
    let v1 = pol(RATED);
    let mut l = RateLimiter::default();
    let a = proc_("a", "/bin/a", 10);
    for i in 0..3 {
        assert!(limited(&v1, &mut l, i, &a, FILES, "write").1);
    }
    assert!(!limited(&v1, &mut l, 3, &a, FILES, "write").1);

    // A new policy version with the same rule id (and an extra rule) keeps the counter.
    let v2 = pol(&format!(
        "{RATED}\n[[rule]]\nid = \"new\"\ntools = [\"x\"]\naction = \"deny\"\n"
    ));
    l.retain_rules(&v2);
    assert!(
        !limited(&v2, &mut l, 10, &a, FILES, "write").1,
        "state survived the reload"
    );

    // A version without the rule forgets its counters.
    let v3 = pol(&RATED.replace("id = \"per-agent\"", "id = \"per-agent-v2\""));
    let before = l.len();
    l.retain_rules(&v3);
    assert!(l.len() < before);
    assert!(
        limited(&v3, &mut l, 11, &a, FILES, "write").1,
        "renamed rule starts fresh"
    );
}

#[test]
fn blocked_or_held_calls_carry_no_rate_limits() {
    let p = pol(r#"
version = 1
mode = "enforce"
[[rule]]
id = "rl"
action = "rate_limit"
rate = { count = 1, per = "minute" }
[[rule]]
id = "approve"
tools = ["pay"]
action = "require_approval"
"#);
    let d = call(&p, None, FILES, "pay", json!({}));
    assert_eq!(d.effective, Effect::Hold);
    assert!(d.rate_limits.is_empty());
    assert!(RateLimiter::default().apply(0, &mut d.clone()).is_none());
    let d = call(&p, None, FILES, "other", json!({}));
    assert_eq!(d.rate_limits.len(), 1);
    assert_eq!(
        d.rate_limits[0].key, "unknown",
        "scope defaults to agent; no process known"
    );
}

// ------------------------------------------------------------------ load errors

fn err(src: &str) -> mcpwatch_policy::PolicyError {
    match parse(src, "bad.toml") {
        Ok(_) => panic!("policy should be rejected:\n{src}"),
        Err(e) => e,
    }
}

#[test]
fn typo_in_a_key_is_rejected_with_line_and_column() {
    let src = "version = 1\nmode = \"enforce\"\n\n[[rule]]\nid = \"x\"\n  acton = \"deny\"\n";
    let e = err(src);
    assert_eq!(
        (e.file.as_str(), e.line, e.column),
        ("bad.toml", 6, 3),
        "{e}"
    );
    assert!(e.message.contains("unknown key `acton`"), "{e}");
    assert!(
        e.message.contains("expected one of: id, action, methods"),
        "{e}"
    );
    assert!(e.message.contains("did you mean `action`?"), "{e}");
    assert!(e.message.contains("[[rule]]"), "{e}");
    assert!(e.to_string().starts_with("bad.toml:6:3: "), "{e}");
    assert!(
        e.render().contains("6 |   acton = \"deny\"\n  |   ^^^^^"),
        "{}",
        e.render()
    );

    let e = err("version = 1\nmode = \"enforce\"\n[[rules]]\nid = \"x\"\n");
    assert_eq!((e.line, e.column), (3, 3), "{e}");
    assert!(
        e.message.contains("unknown key `rules`") && e.message.contains("did you mean `rule`?"),
        "{e}"
    );
}

#[test]
fn bad_regex_points_at_the_value() {
    let src = "version = 1\nmode = \"enforce\"\n[[rule]]\nid = \"r\"\naction = \"deny\"\n[[rule.when]]\npointer = \"/path\"\nmatches = '(unclosed'\n";
    let e = err(src);
    assert_eq!((e.line, e.column), (8, 11), "{e}");
    assert!(
        e.message.contains("rule `r`: invalid regex") && e.message.contains("unclosed group"),
        "{e}"
    );
}

#[test]
fn duplicate_rule_id_points_at_the_second() {
    let src = "version = 1\nmode = \"enforce\"\n[[rule]]\nid = \"same\"\naction = \"deny\"\n\n[[rule]]\nid = \"same\"\naction = \"allow\"\n";
    let e = err(src);
    assert_eq!((e.line, e.column), (8, 6), "{e}");
    assert_eq!(
        e.message,
        "duplicate rule id `same` (first defined at line 4)"
    );
}

#[test]
fn other_errors_have_positions_and_helpful_messages() {
    let head = "version = 1\nmode = \"enforce\"\n";
    // (source after head, line, column, message fragment)
    let table: &[(&str, usize, usize, &str)] = &[
        (
            "[[rule]]\nid = \"r\"\naction = \"rate_limit\"\nrate = { count = \"ten\", per = \"minute\" }\n",
            6,
            18,
            "invalid type: string \"ten\", expected u32",
        ),
        (
            "[[rule]]\nid = \"r\"\naction = \"deny\"\nmode = \"enforced\"\n",
            6,
            8,
            "unknown variant `enforced`, expected one of `audit`, `warn`, `enforce`",
        ),
        (
            "[[rule]]\nid = \"r\"\naction = \"deny\"\nservers = [\"fils\"]\n[[server]]\nname = \"files\"\nurl = \"http://h/mcp\"\n",
            6,
            12,
            "unknown server `fils` in rule `r`; defined servers: files (did you mean `files`?)",
        ),
        (
            "[[rule]]\nid = \"r\"\naction = \"deny\"\nagents = [\"nobody\"]\n",
            6,
            11,
            "unknown agent `nobody` in rule `r`; no [[agent]] is defined",
        ),
        (
            "[[rule]]\nid = \"r\"\naction = \"deny\"\nagents = [\"x*\"]\n[[agent]]\nname = \"bot\"\ncomm = \"bot\"\n",
            6,
            11,
            "pattern \"x*\" in rule `r` matches no defined agent",
        ),
        (
            "[[rule]]\nid = \"r\"\naction = \"deny\"\ntools = [\"read_[abc\"]\n",
            6,
            10,
            "invalid glob in `tools`",
        ),
        (
            "[[rule]]\nid = \"r\"\naction = \"deny\"\ntools = []\n",
            6,
            9,
            "`tools` is an empty list, which matches nothing",
        ),
        (
            "[[rule]]\nid = \"r\"\naction = \"rate_limit\"\n",
            5,
            10,
            "needs `rate = ",
        ),
        (
            "[[rule]]\nid = \"r\"\naction = \"deny\"\nrate = { count = 1, per = \"minute\" }\n",
            6,
            8,
            "`rate` only applies to action \"rate_limit\"",
        ),
        (
            "[[rule]]\nid = \"r\"\naction = \"allow\"\nmode = \"audit\"\n",
            6,
            8,
            "`mode` has no effect on an allow rule",
        ),
        (
            "[[rule]]\nid = \"has space\"\naction = \"deny\"\n",
            4,
            6,
            "invalid rule id \"has space\"",
        ),
        (
            "[[rule]]\nid = \"r\"\naction = \"deny\"\n[[rule.when]]\npointer = \"path\"\nmatches = \"x\"\n",
            7,
            11,
            "invalid JSON pointer \"path\"",
        ),
        (
            "[[rule]]\nid = \"r\"\naction = \"deny\"\n[[rule.when]]\npointer = \"/p\"\n",
            7,
            11,
            "needs `matches = \"regex\"` or `not_matches",
        ),
        (
            "[[agent]]\nname = \"a\"\ntools = [\"x\"]\n",
            4,
            8,
            "agent `a` has no identity matcher",
        ),
        (
            "[[agent]]\nname = \"a\"\ncomm = \"a\"\nservers = [\"nope\"]\n",
            6,
            12,
            "unknown server `nope` in agent `a`",
        ),
        ("[[server]]\nname = \"s\"\n", 4, 8, "server `s` needs `url`"),
        (
            "[[server]]\nname = \"s\"\nurl = \"ftp://h/x\"\n",
            5,
            7,
            "the scheme must be http or https",
        ),
        (
            "[[server]]\nname = \"s\"\nurl = \"http://h/x\"\nport = 80\n",
            6,
            8,
            "`port` cannot be combined with `url`",
        ),
        (
            "[[server]]\nname = \"s\"\nhost = \"h\"\nport = 70000\n",
            6,
            8,
            "invalid value: integer `70000`, expected u16",
        ),
        (
            "[[server]]\nname = \"s\"\nhost = \"h\"\ndeprecated_since = 2025-06-30\n",
            6,
            20,
            "`deprecated_since` needs `status = \"deprecated\"`",
        ),
        (
            "[[server]]\nname = \"s\"\nhost = \"h\"\nstatus = \"deprecated\"\ndeprecated_since = \"June\"\n",
            7,
            20,
            "expected a date like 2025-06-30",
        ),
        (
            "[[server]]\nname = \"s\"\nhost = \"a\"\n[[server]]\nname = \"s\"\nhost = \"b\"\n",
            7,
            8,
            "duplicate server name `s` (first defined at line 4)",
        ),
        (
            "approval_timeout_secs = 0\n",
            3,
            25,
            "`approval_timeout_secs` must be between 1 and 86400",
        ),
        (
            "shadow = \"maybe\"\n",
            3,
            10,
            "unknown variant `maybe`, expected one of `allow`, `alert`, `block`",
        ),
        ("[[rule]]\nid = \"r\"\n", 3, 1, "missing field `action`"),
    ];
    let mut failures = Vec::new();
    for (body, line, column, fragment) in table {
        let src = format!("{head}{body}");
        match parse(&src, "bad.toml") {
            Ok(_) => failures.push(format!("accepted:\n{src}")),
            Err(e) => {
                if (e.line, e.column) != (*line, *column) || !e.message.contains(fragment) {
                    failures.push(format!(
                        "{body:?}\n  got  {}:{}: {}\n  want {line}:{column}: ..{fragment}..",
                        e.line, e.column, e.message
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn version_and_mode_are_required_and_checked() {
    let e = err("version = 2\nmode = \"enforce\"\n");
    assert_eq!((e.line, e.column), (1, 11), "{e}");
    assert!(e.message.contains("unsupported policy version 2"), "{e}");
    let e = err("mode = \"enforce\"\n");
    assert!(e.message.contains("missing field `version`"), "{e}");
    let e = err("version = 1\n");
    assert!(e.message.contains("missing field `mode`"), "{e}");
    let e = err("version = 1\nmode = enforce\n");
    assert_eq!(
        (e.line, e.column),
        (2, 8),
        "syntax errors have positions too: {e}"
    );
}

#[test]
fn accepted_forms() {
    let p = pol(r#"
version = 1
mode = "audit"
approval_timeout_secs = 120
[[server]]
name = "old"
host = "old.example"
status = "deprecated"
deprecated_since = 2024-12-31
[[server]]
name = "old2"
host = "old2.example"
status = "deprecated"
deprecated_since = "2025-01-15"
[[rule]]
id = "inline-when"
action = "deny"
when = [{ pointer = "", not_matches = "^ok$" }]
"#);
    assert_eq!(p.approval_timeout().as_secs(), 120);
    assert_eq!(
        p.servers()[0].deprecated_since.as_deref(),
        Some("2024-12-31")
    );
    assert_eq!(
        p.servers()[1].deprecated_since.as_deref(),
        Some("2025-01-15")
    );
    assert_eq!(p.mode(), Mode::Audit);
    assert_eq!(
        pol("version = 1\nmode = \"warn\"\n")
            .approval_timeout()
            .as_secs(),
        50
    );
    // not_matches: a missing value counts as not matching.
    let d = call(&p, None, FILES, "t", json!({"x": "bad"}));
    assert_eq!(d.action.label(), "deny");
    let d = eval(&p, None, FILES, "tools/call", Some("t"), None);
    assert_eq!(d.action.label(), "deny");
    let d = eval(&p, None, FILES, "tools/call", Some("t"), Some(&json!("ok")));
    assert_eq!(
        (d.action.label(), d.matched_rules.as_slice()),
        ("allow", ["policy:default".to_string()].as_slice())
    );
}

// ------------------------------------------------------------------ example policy

#[test]
fn example_policy_parses_and_says_what_it_claims() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.toml");
    let src = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let p = parse(&src, "examples/policy.toml").unwrap_or_else(|e| panic!("{}", e.render()));
    assert_eq!(p.shadow(), mcpwatch_policy::ShadowAction::Alert);
    assert_eq!(p.approval_timeout().as_secs(), 50);
    let records = "http://127.0.0.2:8765/mcp";
    let reader = proc_("reader-agent", "/usr/local/bin/reader-agent", 1000);
    let ops = proc_("ops-agent", "/usr/local/bin/ops-agent", 1001);

    // reader: read tools only.
    assert_eq!(
        call(&p, Some(&reader), records, "read_record", json!({"id": 1})).effective,
        Effect::Forward
    );
    let d = call(
        &p,
        Some(&reader),
        records,
        "delete_records",
        json!({"ids": [1]}),
    );
    assert_eq!(
        (d.action.label(), d.effective),
        ("deny", Effect::Block),
        "{}",
        d.reason
    );
    let e = ep(records);
    assert!(p.tool_visible(
        &Subject {
            process: Some(&reader)
        },
        &e.t(),
        "search_records"
    ));
    assert!(!p.tool_visible(
        &Subject {
            process: Some(&reader)
        },
        &e.t(),
        "delete_records"
    ));
    assert!(p.tool_visible(
        &Subject {
            process: Some(&ops)
        },
        &e.t(),
        "delete_records"
    ));

    // ops: deletes need approval.
    let d = call(
        &p,
        Some(&ops),
        records,
        "delete_records",
        json!({"ids": [1]}),
    );
    assert_eq!(
        (d.action.label(), d.effective),
        ("require_approval", Effect::Hold),
        "{}",
        d.reason
    );

    // ops: writes are rate-limited (5 per minute).
    let mut l = RateLimiter::default();
    for i in 0..5 {
        assert!(
            limited(&p, &mut l, i, &ops, records, "update_record").1,
            "write {i}"
        );
    }
    assert!(!limited(&p, &mut l, 5, &ops, records, "update_record").1);

    // Nobody reads SSH keys.
    let d = call(
        &p,
        Some(&ops),
        "http://127.0.0.3:8766/mcp",
        "read_file",
        json!({"path": "/home/ops/.ssh/id_ed25519"}),
    );
    assert_eq!(
        (d.matched_rules[0].as_str(), d.effective),
        ("no-ssh-keys", Effect::Block),
        "{}",
        d.reason
    );
    let d = call(
        &p,
        Some(&ops),
        "http://127.0.0.3:8766/mcp",
        "read_file",
        json!({"path": "~/.SSH/config"}),
    );
    assert_eq!(d.effective, Effect::Block);
    let d = call(
        &p,
        Some(&ops),
        "http://127.0.0.3:8766/mcp",
        "read_file",
        json!({"path": "/home/ops/notes/ssh.txt"}),
    );
    assert_eq!(d.effective, Effect::Forward, "{}", d.reason);

    // Shadow servers are alerted, not blocked.
    let d = call(
        &p,
        Some(&ops),
        "https://unknown.example:443/mcp",
        "anything",
        json!({}),
    );
    assert_eq!(
        (d.shadow, d.alert, d.effective),
        (true, true, Effect::Forward)
    );

    // Deprecated server is listed as such.
    let old = p
        .servers()
        .iter()
        .find(|s| s.name == "legacy-search")
        .expect("legacy-search");
    assert_eq!(old.status, mcpwatch_policy::ServerStatus::Deprecated);
    assert_eq!(old.deprecated_since.as_deref(), Some("2025-06-30"));
    let rate = p.rule("ops-write-rate").and_then(|r| r.rate());
    assert_eq!(rate, Some((5, mcpwatch_policy::Per::Minute, RateScope::Agent)));
}

// ------------------------------------------------------------------ threat cases

fn cases_file() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/threats.jsonl"
    );
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("threat cases must exist at {path}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad case line {l}: {e}")))
        .collect()
}

/// Every JSON-RPC message in a case's `input` (strings, lists of strings, `message`
/// fields, HTTP bodies, batches flattened).
fn messages(input: &Value) -> Vec<Value> {
    let mut texts: Vec<&str> = Vec::new();
    match input {
        Value::String(s) => texts.push(s),
        Value::Array(a) => texts.extend(a.iter().filter_map(Value::as_str)),
        Value::Object(o) => match o.get("message") {
            Some(Value::String(s)) => texts.push(s),
            Some(Value::Array(a)) => texts.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        },
        _ => {}
    }
    let mut out = Vec::new();
    for t in texts {
        let body = t.split_once("\r\n\r\n").map_or(t, |(_, b)| b);
        match serde_json::from_str::<Value>(body) {
            Ok(Value::Array(batch)) => out.extend(batch),
            Ok(v @ Value::Object(_)) => out.push(v),
            _ => {} // "-- human approves id 28 --" and similar narration
        }
    }
    out
}

/// (method, name, arguments) the proxy would hand to the policy for a message.
fn call_parts(m: &Value) -> (String, Option<String>, Option<Value>) {
    let method = m["method"].as_str().unwrap_or("").to_string();
    let params = &m["params"];
    match method.as_str() {
        "tools/call" | "prompts/get" => (
            method,
            params["name"].as_str().map(String::from),
            params.get("arguments").cloned(),
        ),
        "resources/read" => (
            method,
            params["uri"].as_str().map(String::from),
            Some(params.clone()),
        ),
        _ => (method, None, Some(params.clone())),
    }
}

fn judge_msg(p: &Policy, who: Option<&ProcessInfo>, at: &str, m: &Value) -> Decision {
    let (method, name, args) = call_parts(m);
    eval(p, who, at, &method, name.as_deref(), args.as_ref())
}

/// Sensitive-path and traversal rules as an SRE would write them.
const PATHS: &str = r#"
version = 1
mode = "enforce"
[[rule]]
id = "no-traversal"
tools = ["read_file", "write_file"]
action = "deny"
message = "path traversal"
[[rule.when]]
pointer = "/path"
matches = '(^|[/\\])\.\.([/\\]|$)'

[[rule]]
id = "no-traversal-raw"
tools = ["read_file", "write_file"]
action = "deny"
[[rule.when]]
pointer = "/path"
form = "raw"
matches = '(^|[/\\])\.\.([/\\]|$)'

[[rule]]
id = "outside-project"
tools = ["read_file", "write_file"]
action = "deny"
message = "outside the project root"
[[rule.when]]
pointer = "/path"
matches = '^/'
[[rule.when]]
pointer = "/path"
not_matches = '^/home/alice/project(/|$)'

[[rule]]
id = "no-secrets-paths"
tools = ["read_file"]
action = "deny"
[[rule.when]]
pointer = "/path"
matches = '(?i)(^|[/\\:])\.(ssh|aws|config[/\\]gh|cursor[/\\]mcp\.json)([/\\]|$)|(^|[/\\])\.env$'

[[rule]]
id = "no-nul"
action = "deny"
[[rule.when]]
pointer = ""
matches = '\x00'

[[rule]]
id = "resource-uri"
methods = ["resources/read"]
action = "deny"
message = "encoded or relative traversal in a resource URI"
[[rule.when]]
pointer = "/uri"
matches = '(?i)%2e|%2f|%5c|%25|(^|/)\.\.(/|$)'
"#;

const INJECTION: &str = r#"
version = 1
mode = "enforce"
[[agent]]
name = "support"
comm = "support-bot"
deny_tools = ["execute_sql"]

[[rule]]
id = "sql-one-read-statement"
tools = ["query"]
action = "deny"
message = "one read-only statement per query"
[[rule.when]]
pointer = "/sql"
matches = '(?is);\s*\S|\b(commit|rollback|drop|alter|truncate|grant|create)\b'

[[rule]]
id = "no-flag-values-for-git"
tools = ["git_*"]
action = "deny"
[[rule.when]]
pointer = ""
matches = '^-'

[[rule]]
id = "no-metadata-ssrf"
tools = ["fetch"]
action = "deny"
[[rule.when]]
pointer = "/url"
matches = '(?i)^[a-z]+://(169\.254\.\d{1,3}\.\d{1,3}|\[[0-9a-f:]*:a9fe:a9fe\]|2852039166|0xa9fea9fe|0251\.0376\.0251\.0376)([:/]|$)'

[[rule]]
id = "no-shell-substitution"
action = "deny"
[[rule.when]]
pointer = ""
matches = '\$\(|`|\$\{'
"#;

const APPROVALS: &str = r#"
version = 1
mode = "enforce"
[[server]]
name = "fs"
url = "http://127.0.0.2:8765/mcp"
tools = ["list_files", "delete_file", "read_file"]

[[server]]
name = "bank"
url = "http://127.0.0.4:8765/mcp"

[[rule]]
id = "approve-delete"
tools = ["delete_file"]
action = "require_approval"

[[rule]]
id = "approve-money"
tools = ["transfer_funds", "send_message"]
action = "require_approval"

[[rule]]
id = "approve-writes-sql"
tools = ["query"]
action = "require_approval"
[[rule.when]]
pointer = "/sql"
matches = '(?is)^\s*(/\*.*?\*/\s*|--[^\n]*\n\s*)*(delete|update|insert|drop|truncate|grant|alter|merge)\b'
"#;

fn registry(shadow: &str) -> String {
    format!(
        r#"
version = 1
mode = "enforce"
shadow = "{shadow}"
[[server]]
name = "github"
url = "https://api.githubcopilot.com/mcp/"
[[server]]
name = "linear"
url = "https://mcp.linear.app/sse"
[[server]]
name = "mail"
host = "mail.internal"
tools = ["send_email"]
[[server]]
name = "utils"
host = "utils.internal"
tools = ["format_text"]
"#
    )
}

/// Which threat cases the policy language expresses, and why the rest are elsewhere.
const NOT_EXPRESSIBLE: &[(&str, &str)] = &[
    (
        "SH-002",
        "stdio servers are not intercepted; the registry matches network endpoints only",
    ),
    (
        "TR-008",
        "needs realpath() on the filesystem: the policy crate does no I/O",
    ),
];

fn threat_case(id: &str, case: &Value) -> Option<String> {
    let msgs = messages(&case["input"]);
    let fail = |what: String| Some(format!("{id}: {what}"));
    let block_all =
        |p: &Policy, who: Option<&ProcessInfo>, at: &str, want_rule: &str| -> Option<String> {
            if msgs.is_empty() {
                return fail("no messages found in input".into());
            }
            for m in &msgs {
                let d = judge_msg(p, who, at, m);
                if d.effective != Effect::Block || !d.matched_rules.iter().any(|r| r == want_rule) {
                    return fail(format!(
                        "expected block by {want_rule}, got {:?} {:?}: {}",
                        d.effective, d.matched_rules, d.reason
                    ));
                }
            }
            None
        };
    let paths = pol(PATHS);
    let inj = pol(INJECTION);
    let appr = pol(APPROVALS);
    let fs = "http://127.0.0.2:8765/mcp";
    let bank = "http://127.0.0.4:8765/mcp";
    match id {
        "INJ-001" => {
            let r = block_all(&inj, None, FILES, "sql-one-read-statement");
            // False-positive guard: a plain read passes.
            let ok = call(
                &inj,
                None,
                FILES,
                "query",
                json!({"sql": "SELECT id FROM users WHERE created_at > now() - interval '1 day'"}),
            );
            r.or_else(|| {
                (ok.effective != Effect::Forward)
                    .then(|| format!("{id}: plain SELECT blocked: {}", ok.reason))
            })
        }
        "INJ-002" => block_all(&inj, None, FILES, "no-flag-values-for-git"),
        "INJ-004" => block_all(&inj, None, FILES, "no-metadata-ssrf"),
        "INJ-005" => block_all(
            &inj,
            Some(&proc_("support-bot", "/srv/support-bot", 500)),
            FILES,
            "agent:support",
        ),
        "INJ-007" => block_all(&inj, None, FILES, "no-shell-substitution"),
        "TR-001" => block_all(&paths, None, FILES, "outside-project")
            .or_else(|| block_all(&paths, None, FILES, "no-traversal-raw")),
        "TR-002" => block_all(&paths, None, FILES, "no-secrets-paths"),
        "TR-004" => block_all(&paths, None, FILES, "resource-uri"),
        "TR-005" => {
            for m in &msgs {
                let d = judge_msg(&paths, None, FILES, m);
                if d.effective != Effect::Block {
                    return fail(format!("not blocked: {m}: {}", d.reason));
                }
            }
            (msgs.len() != 3).then(|| format!("{id}: expected 3 messages, found {}", msgs.len()))
        }
        "TR-007" => block_all(&paths, None, FILES, "no-nul"),
        "SH-001" => {
            let at = "http://mcp.quick-tools.example:80/mcp";
            let alert = judge_msg(&pol(&registry("alert")), None, at, &msgs[0]);
            let block = judge_msg(&pol(&registry("block")), None, at, &msgs[0]);
            let ok = alert.shadow
                && alert.alert
                && alert.effective == Effect::Forward
                && block.shadow
                && block.effective == Effect::Block
                && block.matched_rules == ["policy:shadow"];
            (!ok).then(|| format!("{id}: alert={alert:?} block={block:?}"))
        }
        "SH-004" => {
            // Registry binds `github` to its real endpoint; serverInfo is never consulted.
            let p = pol(&registry("alert"));
            let d = eval(
                &p,
                None,
                case["input"]["endpoint"].as_str().unwrap_or(""),
                "initialize",
                None,
                None,
            );
            let real = eval(
                &p,
                None,
                "https://api.githubcopilot.com:443/mcp",
                "initialize",
                None,
                None,
            );
            let ok = d.shadow
                && d.alert
                && d.server.is_none()
                && real.server.as_deref() == Some("github")
                && !real.shadow;
            (!ok).then(|| format!("{id}: impostor {d:?} real {real:?}"))
        }
        "SH-005" => {
            // The newcomer's copies of send_email (and its homoglyph twin) are hidden.
            let p = pol(&registry("alert"));
            let s = Subject { process: None };
            let (mail, utils) = (
                ep("http://mail.internal:80/mcp"),
                ep("http://utils.internal:80/mcp"),
            );
            let ok = p.tool_visible(&s, &mail.t(), "send_email")
                && !p.tool_visible(&s, &utils.t(), "send_email")
                && !p.tool_visible(&s, &utils.t(), "send_ema\u{456}l")
                && !p.tool_visible(&s, &mail.t(), "send_ema\u{456}l");
            (!ok).then(|| format!("{id}: visibility wrong"))
        }
        "SH-007" => {
            // POSTs redirected to an unregistered origin meet the shadow policy.
            let p = pol(&registry("block"));
            let d = call(
                &p,
                None,
                "https://collector.attacker.example:443/messages",
                "send_email",
                json!({}),
            );
            (!(d.shadow && d.effective == Effect::Block)).then(|| format!("{id}: {d:?}"))
        }
        "SH-008" => {
            // Identity is the host name, not the IP: a CDN IP change is not shadow.
            let p = pol(&registry("block"));
            let observed = &case["input"]["observed"];
            let host = observed["sni"].as_str().unwrap_or("");
            let t = Target {
                endpoint: "https://mcp.linear.app:443/sse",
                host,
                port: 443,
                path: "/sse",
            };
            let d = p.evaluate(
                &Subject { process: None },
                &t,
                &Call {
                    method: "initialize",
                    name: None,
                    arguments: None,
                },
            );
            (d.shadow || d.alert || d.effective != Effect::Forward).then(|| format!("{id}: {d:?}"))
        }
        "AB-001" => {
            // Judged per message: the second element still needs approval.
            let ds: Vec<Decision> = msgs.iter().map(|m| judge_msg(&appr, None, fs, m)).collect();
            let effects: Vec<Effect> = ds.iter().map(|d| d.effective).collect();
            (effects != [Effect::Forward, Effect::Hold]).then(|| format!("{id}: {effects:?}"))
        }
        "AB-002" => {
            // None of the variants is the registered delete_file: denied, never "not on the approval list".
            for m in &msgs {
                let d = judge_msg(&appr, None, fs, m);
                if d.effective != Effect::Block || d.matched_rules != ["server:fs"] {
                    return fail(format!("{m}: {d:?}"));
                }
            }
            (msgs.len() != 4).then(|| format!("{id}: expected 4 variants"))
        }
        "AB-004" | "AB-005" | "AB-007" => {
            let mut keys = Vec::new();
            for m in &msgs {
                let d = judge_msg(&appr, None, bank, m);
                if d.effective != Effect::Hold {
                    return fail(format!("{m}: {d:?}"));
                }
                let (_, name, args) = call_parts(m);
                keys.push(approval_key(
                    "anon",
                    "bank",
                    name.as_deref().unwrap_or(""),
                    args.as_ref(),
                ));
            }
            match id {
                // Swapped arguments after approval need a new approval.
                "AB-004" => {
                    (keys.len() != 2 || keys[0] == keys[1]).then(|| format!("{id}: keys {keys:?}"))
                }
                // Same arguments hash the same (single use is the approval store's job);
                // different arguments never do.
                "AB-007" => (keys.len() != 3 || keys[0] != keys[1] || keys[0] == keys[2])
                    .then(|| format!("{id}: keys {keys:?}")),
                _ => (keys.len() != 1).then(|| format!("{id}: keys {keys:?}")),
            }
        }
        "AB-008" => {
            for m in &msgs {
                let d = judge_msg(&appr, None, bank, m);
                if d.effective != Effect::Hold || d.matched_rules != ["approve-writes-sql"] {
                    return fail(format!("{m}: {d:?}"));
                }
            }
            let read = call(
                &appr,
                None,
                bank,
                "query",
                json!({"sql": "/* count */ SELECT count(*) FROM users"}),
            );
            (read.effective != Effect::Forward)
                .then(|| format!("{id}: a SELECT was held: {}", read.reason))
        }
        _ => {
            fail("threat case not classified: map it to a policy test or to NOT_EXPRESSIBLE".into())
        }
    }
}

#[test]
fn threat_cases_expressible_in_policy() {
    let wanted = [
        "approval_bypass",
        "injection_in_args",
        "traversal",
        "shadow_server",
    ];
    let mut failures = Vec::new();
    let mut covered = Vec::new();
    for case in cases_file() {
        let category = case["category"].as_str().unwrap_or("");
        if !wanted.contains(&category) {
            continue;
        }
        let id = case["id"].as_str().unwrap_or("?");
        if NOT_EXPRESSIBLE.iter().any(|(n, _)| *n == id) {
            continue;
        }
        match threat_case(id, &case) {
            Some(f) => failures.push(f),
            None => covered.push(id.to_string()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let expected = [
        "INJ-001", "INJ-002", "INJ-004", "INJ-005", "INJ-007", "SH-001", "SH-004", "SH-005",
        "SH-007", "SH-008", "AB-001", "AB-002", "AB-004", "AB-005", "AB-007", "AB-008", "TR-001",
        "TR-002", "TR-004", "TR-005", "TR-007",
    ];
    covered.sort();
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(covered, expected);
}

#[test]
fn policy_is_shareable_and_decisions_serialize() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Policy>();
    shareable::<RateLimiter>();
    let p = pol(RATED);
    let d = call(&p, Some(&proc_("a", "/bin/a", 10)), FILES, "write", json!({}));
    let v = serde_json::to_value(&d).expect("decision serializes");
    assert_eq!(v["action"]["kind"], "rate_limit");
    assert_eq!(v["action"]["rule"], "per-agent");
    assert_eq!(v["effective"], "forward");
    assert_eq!(v["mode"], "enforce");
    let back: Decision = serde_json::from_value(v).expect("and back");
    assert_eq!(back, d);
}

#[test]
fn inspect_table_parses_and_typos_in_it_are_positioned() {
    // `[inspect.detectors]` alone (no `[inspect]` header) creates the table implicitly.
    let p = mcpwatch_policy::parse("version = 1\nmode = \"enforce\"\n[inspect.detectors]\ndefault_action = \"audit\"\n", "p.toml").unwrap();
    assert_eq!(p.inspect().detectors.default_action, mcpwatch_inspect::Action::Audit);
    assert_eq!(p.inspect().pinning, mcpwatch_policy::PinAction::Alert);
    let e = mcpwatch_policy::parse("version = 1\nmode = \"enforce\"\n[inspect]\npining = \"hide\"\n", "p.toml").unwrap_err();
    assert_eq!((e.line, e.column), (4, 1), "{}", e.render());
    let e = mcpwatch_policy::parse("version = 1\nmode = \"enforce\"\n[inspect.detectors]\nenabled = [\"pii.emial\"]\n", "p.toml").unwrap_err();
    assert_eq!(e.line, 3, "{}", e.render());
    assert!(e.message.contains("pii.emial"), "{}", e.render());
}

// ------------------------------------------------------------------ path normalisation

const NORMALISED: &str = r#"
version = 1
mode = "enforce"
[[rule]]
id = "no-dotdot"
tools = ["read_file"]
action = "deny"
[[rule.when]]
pointer = "/path"
matches = '(^|/)\.\.(/|$)'

[[rule]]
id = "no-etc"
tools = ["read_file"]
action = "deny"
[[rule.when]]
pointer = "/path"
matches = '^/etc(/|$)'

[[rule]]
id = "no-dotdot-raw"
tools = ["write_file"]
action = "deny"
[[rule.when]]
pointer = "/path"
form = "raw"
matches = '(^|/)\.\.(/|$)'

[[rule]]
id = "no-etc-uri"
methods = ["resources/read"]
action = "deny"
[[rule.when]]
pointer = "/uri"
matches = '^file:///etc(/|$)'
"#;

#[test]
fn path_conditions_match_the_normalised_path() {
    let p = pol(NORMALISED);
    let d = |tool: &str, path: &str| call(&p, None, FILES, tool, json!({ "path": path }));
    // Lexically inside the directory: a rule against `..` does not fire.
    let ok = d("read_file", "docs/../README.md");
    assert_eq!(ok.effective, Effect::Forward, "{ok:?}");
    // An escape above a relative root stays visible.
    let esc = d("read_file", "docs/../../secret");
    assert_eq!((esc.effective, esc.matched_rules.clone()), (Effect::Block, vec!["no-dotdot".to_string()]));
    // `/tmp/../etc` is `/etc`; so are `//etc` and `/./etc`.
    for path in ["/tmp/../etc/passwd", "//etc/passwd", "/./etc/shadow", "/../etc/hosts", "/etc"] {
        let b = d("read_file", path);
        assert_eq!(b.effective, Effect::Block, "{path}: {b:?}");
        assert!(b.matched_rules.contains(&"no-etc".to_string()), "{path}: {b:?}");
    }
    // Nested values are normalised too.
    let nested = call(&p, None, FILES, "read_file", json!({ "path": ["a", "/var/../etc/passwd"] }));
    assert_eq!(nested.effective, Effect::Block, "array elements are normalised and matched: {nested:?}");
    // `form = "raw"` matches the string as sent.
    let raw = d("write_file", "docs/../README.md");
    assert_eq!(raw.effective, Effect::Block, "{raw:?}");
    // URLs: only the path part is normalised.
    let uri = mcpwatch_policy::Call { method: "resources/read", name: Some("file:///tmp/../etc/passwd"), arguments: Some(&json!({"uri": "file:///tmp/../etc/passwd"})) };
    let target = mcpwatch_policy::Target { endpoint: FILES, host: "127.0.0.2", port: 8765, path: "/mcp" };
    let u = p.evaluate(&mcpwatch_policy::Subject { process: None }, &target, &uri);
    assert_eq!(u.effective, Effect::Block, "{u:?}");
}

/// Go's `encoding/json` fills a typed handler's `path` field from `"PATH"` (or `"Path"`,
/// or with `ſ` for `s`), the last of several: a condition on `/path` sees every such
/// argument.
#[test]
fn conditions_find_keys_as_case_blind_servers_read_them() {
    let p = pol(NORMALISED);
    for key in ["PATH", "Path", "pAtH"] {
        let b = call(&p, None, FILES, "read_file", json!({ key: "/etc/passwd" }));
        assert_eq!(b.effective, Effect::Block, "{key}: {b:?}");
        assert!(b.matched_rules.contains(&"no-etc".to_string()), "{key}: {b:?}");
    }
    // Both spellings (environment-like maps keep them apart; a Go server takes the last):
    // the rule sees both.
    let both = call(&p, None, FILES, "read_file", json!({ "path": "/tmp/x", "PATH": "/etc/passwd" }));
    assert_eq!(both.effective, Effect::Block, "{both:?}");
    let nested = pol("version = 1\nmode = \"enforce\"\n[[rule]]\nid = \"deep\"\ntools = [\"q\"]\naction = \"deny\"\n[[rule.when]]\npointer = \"/opts/table\"\nmatches = '^users$'\n");
    let b = call(&nested, None, FILES, "q", json!({ "OPTS": { "Table": "users" } }));
    assert_eq!(b.effective, Effect::Block, "{b:?}");
    let other = call(&nested, None, FILES, "q", json!({ "opts": { "tables": "users" } }));
    assert_eq!(other.effective, Effect::Forward, "another key is not the key: {other:?}");
}

/// The Python SDK `json.loads` a string argument whose parameter is not typed `str`
/// (`pre_parse_json`): `"[\"\\u002fetc\\u002fpasswd\"]"` is the list `["/etc/passwd"]` to the
/// tool. Conditions see the decoded value too (found by a red-team pass: the rule's regex
/// met the escapes as text and the call went through).
#[test]
fn conditions_see_json_sent_as_a_string() {
    let p = pol(NORMALISED);
    let d = |args: Value| call(&p, None, FILES, "read_file", args);
    for (what, path) in [
        ("escaped list", json!(r#"["\u002fetc\u002fpasswd"]"#)),
        ("object", json!(r#" {"p": "/tmp/../etc/shadow"} "#)),
        ("a string within a string", json!(r#"["[\"\\u002fetc\\u002fhosts\"]"]"#)),
    ] {
        let b = d(json!({ "path": path }));
        assert_eq!(b.effective, Effect::Block, "{what}: {b:?}");
        assert!(b.matched_rules.contains(&"no-etc".to_string()), "{what}: {b:?}");
    }
    // What is not a JSON array or object stays a plain string.
    for path in [r#"["docs/a.md"]"#, "[not json", r#""/etc/passwd""#] {
        let ok = d(json!({ "path": path }));
        assert_eq!(ok.effective, Effect::Forward, "{path}: {ok:?}");
    }
}

#[test]
fn condition_form_is_checked() {
    let src = NORMALISED.replace("form = \"raw\"", "form = \"lexical\"");
    let e = err(&src);
    assert!(e.render().contains("lexical"), "{}", e.render());
}

#[test]
fn approvers_parse_and_reject_typos() {
    let p = pol("version = 1\nmode = \"enforce\"\n[approvals]\napprovers = [\"uid:1000\", \"user:alice\", \"group:secops\"]\n");
    use mcpwatch_policy::Approver;
    assert_eq!(p.approvers(), &[Approver::Uid(1000), Approver::User("alice".into()), Approver::Group("secops".into())]);
    assert!(p.approvers()[0].names(1000, None, &[]));
    assert!(!p.approvers()[0].names(1001, Some("alice"), &[]));
    assert!(p.approvers()[1].names(5, Some("alice"), &[]));
    assert!(p.approvers()[2].names(5, None, &["users".into(), "secops".into()]));
    assert!(pol("version = 1\nmode = \"enforce\"\n").approvers().is_empty());
    for (bad, want) in [
        ("approvers = [\"alice\"]", "uid:N"),
        ("approvers = [\"uid:alice\"]", "must be a number"),
        ("approvers = [\"user:\"]", "invalid user"),
        ("approvers = []", "empty"),
        ("approver = [\"uid:0\"]", "unknown key `approver`"),
    ] {
        let e = err(&format!("version = 1\nmode = \"enforce\"\n[approvals]\n{bad}\n"));
        assert!(e.render().contains(want), "{bad}: {}", e.render());
        assert!(e.render().contains(":4:"), "{bad}: position: {}", e.render());
    }
}

// ------------------------------------------------------------------ stdio servers and gateways

#[test]
fn stdio_servers_register_by_package_or_command_and_never_match_network_targets() {
    use mcpwatch_policy::launch::identify;
    use mcpwatch_policy::stdio_endpoint;
    let p = pol(
        "version = 1\nmode = \"enforce\"\n\
         [[server]]\nname = \"everything\"\npackage = \"npm:@modelcontextprotocol/server-*\"\n\
         [[server]]\nname = \"fetch\"\npackage = \"pypi:mcp-server-fetch\"\n\
         [[server]]\nname = \"local\"\ncommand = \"/opt/mcp/**\"\n\
         [[server]]\nname = \"web\"\nhost = \"*\"\n",
    );
    let name_of = |argv: &str| {
        let argv: Vec<String> = argv.split(' ').map(str::to_string).collect();
        let l = identify(&argv).expect("launch");
        let ep = stdio_endpoint(&l);
        p.server_for(&Target::stdio(&ep)).map(|s| s.name.clone())
    };
    assert_eq!(name_of("npx -y @modelcontextprotocol/server-everything").as_deref(), Some("everything"));
    assert_eq!(name_of("node /c/node_modules/@modelcontextprotocol/server-memory/dist/index.js").as_deref(), Some("everything"));
    assert_eq!(name_of("uvx mcp-server-fetch==1.0").as_deref(), Some("fetch"));
    assert_eq!(name_of("python3 /opt/mcp/weather/server.py").as_deref(), Some("local"));
    assert_eq!(name_of("/opt/mcp/bin/srv").as_deref(), Some("local"));
    // A package of the wrong registry, an unlisted script: shadow. The catch-all network
    // entry (`host = "*"`) never registers a stdio server.
    assert_eq!(name_of("uvx server-everything"), None);
    assert_eq!(name_of("python3 /home/u/evil.py"), None);
    // And a stdio entry never registers a network endpoint.
    let e = ep("https://opt.example:443/opt/mcp/x");
    assert_eq!(p.server_for(&e.t()).map(|s| s.name.as_str()), Some("web"));
}

#[test]
fn gateways_name_bypasses_and_are_not_bypasses_themselves() {
    let p = pol(
        "version = 1\nmode = \"enforce\"\n\
         [[gateway]]\nname = \"corp\"\nurl = \"https://mcp-gw.corp.example/mcp\"\ncovers = [\"*.githubcopilot.com\", \"mcp.atlassian.com\"]\n",
    );
    let direct = ep("https://api.githubcopilot.com:443/mcp");
    assert_eq!(p.bypassed_gateway(&direct.t()).map(|g| g.name.as_str()), Some("corp"));
    let other = ep("https://mcp.example.org:443/mcp");
    assert!(p.bypassed_gateway(&other.t()).is_none());
    let gw = ep("https://mcp-gw.corp.example:443/mcp");
    assert_eq!(p.gateway_for(&gw.t()).map(|g| g.name.as_str()), Some("corp"));
    assert!(p.bypassed_gateway(&gw.t()).is_none());
    assert_eq!(p.gateways()[0].covers(), ["*.githubcopilot.com", "mcp.atlassian.com"]);
}

#[test]
fn stdio_and_gateway_entries_reject_mistakes_with_positions() {
    let head = "version = 1\nmode = \"enforce\"\n";
    let table: &[(&str, usize, usize, &str)] = &[
        ("[[server]]\nname = \"s\"\npackage = \"npm:x\"\nurl = \"https://a/b\"\n", 6, 7, "cannot be combined"),
        ("[[server]]\nname = \"s\"\npackage = \"cargo:x\"\n", 5, 11, "expected `npm:NAME`"),
        ("[[server]]\nname = \"s\"\npackage = \"script:/x\"\n", 5, 11, "`command ="),
        ("[[server]]\nname = \"s\"\npackage = \"npm:x\"\ncommand = \"/y\"\n", 6, 11, "both `package` and `command`"),
        ("[[server]]\nname = \"s\"\npakage = \"npm:x\"\n", 5, 1, "did you mean `package`?"),
        ("[[gateway]]\nname = \"g\"\ncovers = [\"a\"]\n", 4, 8, "needs `url`"),
        ("[[gateway]]\nname = \"g\"\nhost = \"gw\"\ncovers = []\n", 6, 10, "`covers` is empty"),
        ("[[gateway]]\nname = \"g\"\nhost = \"gw\"\n", 3, 1, "missing field `covers`"),
    ];
    for (body, line, column, fragment) in table {
        let src = format!("{head}{body}");
        match parse(&src, "bad.toml") {
            Ok(_) => panic!("accepted:\n{src}"),
            Err(e) => assert!(
                (e.line, e.column) == (*line, *column) && e.message.contains(fragment),
                "{body:?}\n  got  {}:{}: {}\n  want {line}:{column}: ..{fragment}..",
                e.line,
                e.column,
                e.message
            ),
        }
    }
}

/// RE-007, an agent loop: the same call repeated trips a `scope = "call"` limit after
/// `count`; the same arguments in another key order are the same call; other arguments,
/// another tool or another caller count apart.
#[test]
fn a_call_scoped_limit_stops_a_repeated_identical_call_only() {
    let p = pol(r#"
version = 1
mode = "enforce"
[[agent]]
name = "a"
comm = "a"
[[agent]]
name = "b"
comm = "b"
[[rule]]
id = "no-loops"
action = "rate_limit"
rate = { count = 5, per = "minute", scope = "call" }
"#);
    let mut l = RateLimiter::default();
    let a = proc_("a", "/bin/a", 10);
    let b = proc_("b", "/bin/b", 10);
    let mut once = |now: u64, who: &ProcessInfo, tool: &str, args: Value| {
        let mut d = call(&p, Some(who), FILES, tool, args);
        let r = l.apply(now, &mut d).expect("rate limited rule");
        (r.allowed, d)
    };
    let ticket = json!({"title": "Printer on floor 3 offline", "priority": "high"});
    for i in 0..5 {
        assert!(once(i, &a, "create_ticket", ticket.clone()).0, "identical call {i} is within the count");
    }
    let (ok, d) = once(5, &a, "create_ticket", json!({"priority": "high", "title": "Printer on floor 3 offline"}));
    assert!(!ok, "the sixth identical call (keys reordered) went through: {}", d.reason);
    match &d.action {
        Action::RateLimit(spec) => assert!(spec.key.starts_with("call:agent:a/http://127.0.0.2:8765/mcp/create_ticket/"), "{}", spec.key),
        other => panic!("{other:?}"),
    }
    assert!(once(6, &a, "create_ticket", json!({"title": "Printer on floor 4 offline", "priority": "high"})).0, "other arguments are another call");
    assert!(once(7, &a, "update_ticket", ticket.clone()).0, "another tool is another call");
    assert!(once(8, &b, "create_ticket", ticket.clone()).0, "another agent is another caller");
}

/// AU-007 and AU-008, a per-agent tool list written as the cases state it: the agent's
/// `allow` list is its `[[agent]] tools`, its `deny` list an agent-scoped deny rule. A
/// denied tool is blocked (deny wins over the allow list), tools outside the list are
/// blocked, and the agent's `tools/list` shows exactly its allowed tools.
#[test]
fn per_agent_allow_and_deny_lists_from_the_threat_cases() {
    let cases = cases_file();
    let case = |id: &str| cases.iter().find(|c| c["id"] == id).unwrap_or_else(|| panic!("{id}")).clone();
    let au7 = case("AU-007");
    let list = |v: &Value| -> Vec<String> { v.as_array().expect("list").iter().map(|s| s.as_str().expect("name").to_string()).collect() };
    let agent = au7["input"]["policy"]["agent"].as_str().expect("agent").to_string();
    let allow = list(&au7["input"]["policy"]["allow"]);
    let deny = list(&au7["input"]["policy"]["deny"]);
    let quoted = |v: &[String]| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    // The allow list plus a glob the deny list overlaps: deny must still win.
    let p = pol(&format!(
        "version = 1\nmode = \"enforce\"\n[[agent]]\nname = {agent:?}\ncomm = {agent:?}\ntools = [{}, \"*_ticket*\"]\n[[rule]]\nid = \"support-deny\"\nagents = [{agent:?}]\ntools = [{}]\naction = \"deny\"\n",
        quoted(&allow),
        quoted(&deny)
    ));
    let bot = proc_(&agent, "/srv/support-bot", 500);
    let msgs = messages(&au7["input"]);
    assert_eq!(msgs.len(), 1);
    let d = judge_msg(&p, Some(&bot), FILES, &msgs[0]);
    assert_eq!(d.effective, Effect::Block, "{}", d.reason);
    assert!(d.matched_rules.iter().any(|r| r == "support-deny"), "{:?}", d.matched_rules);
    let d = call(&p, Some(&bot), FILES, "delete_ticket", json!({"id": 1}));
    assert_eq!(d.effective, Effect::Block, "deny wins over the allow list's `*_ticket*`: {}", d.reason);
    assert_eq!(call(&p, Some(&bot), FILES, "drop_table", json!({})).effective, Effect::Block, "a tool outside the allow list");
    for tool in &allow {
        assert_eq!(call(&p, Some(&bot), FILES, tool, json!({})).effective, Effect::Forward, "{tool}");
    }

    // AU-008: the tools/list result, filtered to what the agent may call.
    let au8 = case("AU-008");
    let result: Value = serde_json::from_str(au8["input"]["message"].as_str().expect("message")).expect("result JSON");
    let e = ep(FILES);
    let subject = Subject { process: Some(&bot) };
    let visible: Vec<String> = result["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .filter(|name| p.tool_visible(&subject, &e.t(), name))
        .map(str::to_string)
        .collect();
    assert_eq!(visible, list(&au8["input"]["policy"]["allow"]), "{}", au8["expected"]["details"]);
}

/// An agent known only by what a process picks for itself (exe, comm) is valid but
/// warned about, naming its line; one that also has a kernel-attributed matcher is not.
#[test]
fn agents_identified_only_by_exe_or_comm_are_warned_about() {
    let p = pol(r#"
version = 1
mode = "enforce"
[[agent]]
name = "by-comm"
comm = "reader-agent"
tools = ["read_*"]
[[agent]]
name = "by-exe-and-comm"
exe = "/usr/lib/editor/**"
comm = "code"
[[agent]]
name = "by-exe-and-uid"
exe = "/usr/lib/editor/**"
uid = 1000
[[agent]]
name = "by-unit"
unit = "ci-runner-*.service"
"#);
    let w = p.warnings();
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(w[0].starts_with("line 5: agent `by-comm`"), "{w:#?}");
    assert!(w[1].starts_with("line 9: agent `by-exe-and-comm`"), "{w:#?}");
    assert!(w.iter().all(|l| l.contains("the process itself chooses")), "{w:#?}");
}

/// A list is judged element by element, the way the server uses it. The containment
/// recipe of docs/policy.md (deny `matches = '^/'` and `not_matches = '^/srv/project(/|$)'`)
/// once let `["/srv/project/a", "/etc/passwd"]` through: one path inside the root made
/// `not_matches` fail for the whole list. A deny rule now holds when any element breaks
/// it; an allow rule only when every element fits.
#[test]
fn lists_are_judged_element_by_element() {
    const ROOT: &str = r#"
version = 1
mode = "enforce"
default = "allow"

[[rule]]
id = "outside-root"
tools = ["read_multiple_files"]
action = "deny"
[[rule.when]]
pointer = "/paths"
matches = '^/'
[[rule.when]]
pointer = "/paths"
not_matches = '^/srv/project(/|$)'
"#;
    const DOCS: &str = r#"
version = 1
mode = "enforce"
default = "deny"

[[rule]]
id = "only-docs"
tools = ["publish"]
action = "allow"
[[rule.when]]
pointer = "/files"
matches = '^docs/'
"#;
    let p = pol(ROOT);
    let read = |paths: Value| call(&p, None, FILES, "read_multiple_files", json!({ "paths": paths }));
    let mixed = read(json!(["/srv/project/a", "/etc/passwd"]));
    assert_eq!((mixed.effective, mixed.matched_rules.clone()), (Effect::Block, vec!["outside-root".to_string()]), "{mixed:?}");
    let as_string = read(json!(r#"["/srv/project/a", "/etc/passwd"]"#));
    assert_eq!(as_string.effective, Effect::Block, "the same list sent as a JSON string: {as_string:?}");
    for inside in [json!(["/srv/project/a", "/srv/project/b/c"]), json!("/srv/project/x"), json!([])] {
        let ok = read(inside.clone());
        assert_eq!(ok.effective, Effect::Forward, "{inside}: {ok:?}");
    }
    let docs = pol(DOCS);
    let publish = |files: Value| call(&docs, None, FILES, "publish", json!({ "files": files }));
    let ok = publish(json!(["docs/a.md", "docs/b.md"]));
    assert_eq!(ok.effective, Effect::Forward, "{ok:?}");
    for bad in [json!(["docs/a.md", "secrets/key.pem"]), json!([]), json!(r#"["docs/a.md","/etc/shadow"]"#)] {
        let b = publish(bad.clone());
        assert_eq!(b.effective, Effect::Block, "an allow rule must fit every element: {bad}: {b:?}");
    }
}
