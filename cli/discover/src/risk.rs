//! Risk flags for one server entry, and the redacted form of its launch for output.
//!
//! Why here and not in the renderers: deciding what is a secret and hiding it are the same
//! decision. Every value that leaves this module (arguments, command, URL) has had its secrets
//! replaced, so no output format can print one by mistake.
//!
//! Launchers (`npx`, `uvx`, `docker`, `sh -c`, ...) are looked through to the package, image or
//! inner command they run; a `sh -c "npx -y pkg"` is judged as the shell and as the `npx` inside.

use mcpwatch_inspect::{InspectConfig, Inspector, Kind};

use crate::extract::RawEntry;
use crate::model::{Risk, RiskFlag};
use crate::url;

/// Shown in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// The secret detectors of `mcpwatch-inspect`, secrets only (PII in a config is not a finding).
pub(crate) struct Secrets {
    inspector: Option<Inspector>,
}

impl Secrets {
    pub(crate) fn new() -> Secrets {
        let cfg = InspectConfig {
            enabled: vec!["secret".into()],
            ..InspectConfig::default()
        };
        // The built-in configuration always compiles; if it did not, the name heuristics below
        // still catch the usual credentials.
        Secrets {
            inspector: Inspector::new(&cfg).ok(),
        }
    }

    /// Byte spans of secrets in `s`.
    fn spans(&self, s: &str) -> Vec<(usize, usize)> {
        self.inspector.as_ref().map_or_else(Vec::new, |i| {
            i.scan_str(s)
                .into_iter()
                .filter(|f| f.kind == Kind::Secret)
                .map(|f| (f.start, f.end))
                .collect()
        })
    }

    /// Is `value`, assigned to `name` (env variable, header, flag), a plaintext secret?
    pub(crate) fn is_secret(&self, name: &str, value: &str) -> bool {
        let v = value.trim();
        if v.is_empty() || is_placeholder(v) {
            return false;
        }
        if secretish_name(name) && v.len() >= 8 && !v.starts_with('/') && !v.starts_with('~') {
            return true;
        }
        // Give the detectors the key for context (`API_TOKEN=...` is what the generic detector keys on).
        !self.spans(&format!("{name}={v}")).is_empty() || !self.spans(v).is_empty()
    }

    /// `s` with every detected secret span replaced.
    fn redact(&self, s: &str) -> (String, bool) {
        let mut spans = self.spans(s);
        if spans.is_empty() {
            return (s.to_string(), false);
        }
        spans.sort_unstable();
        let mut out = String::new();
        let mut at = 0;
        for (a, b) in spans {
            if a < at {
                at = at.max(b);
                continue;
            }
            out.push_str(s.get(at..a).unwrap_or(""));
            out.push_str(REDACTED);
            at = b;
        }
        out.push_str(s.get(at..).unwrap_or(""));
        (out, true)
    }
}

/// `${input:x}`, `${env:X}`, `${X}`, `$X`, `{env:X}` (opencode), `{{x}}`, `<your-token>`.
pub(crate) fn is_placeholder(v: &str) -> bool {
    let whole_var = |s: &str| {
        s.strip_prefix("${")
            .and_then(|r| r.strip_suffix('}'))
            .or_else(|| s.strip_prefix("{env:").and_then(|r| r.strip_suffix('}')))
            .or_else(|| s.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")))
            .is_some_and(|inner| !inner.contains(['{', '}']))
            || s.strip_prefix('$').is_some_and(|r| {
                !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
            || (s.starts_with('<') && s.ends_with('>'))
    };
    // `Bearer ${input:token}` is a placeholder too.
    let last = v.rsplit(' ').next().unwrap_or(v);
    let lower = v.to_ascii_lowercase();
    whole_var(v)
        || whole_var(last)
        // Template text left for the user to fill in.
        || ["your_", "your-", "yourtoken", "yourkey", "xxxxxx", "changeme", "replace_me", "replace-me"]
            .iter()
            .any(|w| lower.contains(w))
}

/// Names that hold credentials: `GITHUB_TOKEN`, `x-api-key`, `Authorization`, `--password`,
/// `apiKey`, `OPENAI_KEY`. Judged by whole words (`GIT_AUTHOR_NAME` is not `auth`).
pub(crate) fn secretish_name(name: &str) -> bool {
    // Words: split at non-alphanumerics and at camelCase humps.
    let mut words: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower && !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        cur.push(c.to_ascii_lowercase());
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    const WORDS: &[&str] = &[
        "token",
        "tokens",
        "secret",
        "secrets",
        "password",
        "passwd",
        "pwd",
        "pass",
        "apikey",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "cookie",
        "pat",
        "bearer",
        "privatekey",
        "accesskey",
        "passphrase",
        "sessionid",
    ];
    words.iter().any(|w| WORDS.contains(&w.as_str()))
        // `OPENAI_KEY`, `X-Api-Key`, `access_key`: a name ending in the word `key`.
        || words.last().is_some_and(|w| w == "key")
}

/// What the scanner keeps of one entry after the checks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Assessed {
    pub command: Option<String>,
    pub args: Vec<String>,
    /// The URL (or a bridge's remote URL) as written: for the registry lookup only.
    pub url_raw: Option<String>,
    /// The same, redacted, for output.
    pub url: Option<String>,
    pub risks: Vec<Risk>,
    /// A plaintext secret was found (for the world-readable check).
    pub has_secret: bool,
}

impl Assessed {
    fn flag(&mut self, flag: RiskFlag, detail: impl Into<String>) {
        let detail = detail.into();
        if !self
            .risks
            .iter()
            .any(|r| r.flag == flag && r.detail == detail)
        {
            self.risks.push(Risk { flag, detail });
        }
    }
}

/// Program name without directories and Windows suffixes: `/usr/bin/npx` -> `npx`.
fn base(cmd: &str) -> String {
    let b = cmd
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(cmd)
        .to_ascii_lowercase();
    for suf in [".cmd", ".exe", ".bat"] {
        if let Some(s) = b.strip_suffix(suf) {
            return s.to_string();
        }
    }
    b
}

/// Check one entry. `secrets` are the detectors; the caller adds the file-level flags.
pub(crate) fn assess(e: &RawEntry, secrets: &Secrets) -> Assessed {
    let mut a = Assessed::default();

    for (name, value) in &e.env {
        if let Some(v) = value
            && secrets.is_secret(name, v)
        {
            a.has_secret = true;
            a.flag(RiskFlag::PlaintextSecret, format!("env {name}"));
        }
    }
    for (name, value) in &e.headers {
        if let Some(v) = value
            && secrets.is_secret(name, v)
        {
            a.has_secret = true;
            a.flag(RiskFlag::PlaintextSecret, format!("header {name}"));
        }
    }
    for (name, value) in &e.env {
        if let Some(v) = value
            && matches!(
                name.to_ascii_uppercase().as_str(),
                "HOST"
                    | "BIND"
                    | "LISTEN"
                    | "BIND_ADDRESS"
                    | "LISTEN_ADDRESS"
                    | "MCP_HOST"
                    | "SERVER_HOST"
                    | "FASTMCP_HOST"
            )
            && is_any_addr(v)
        {
            a.flag(RiskFlag::PublicListener, format!("env {name}"));
        }
    }

    // The command and arguments, redacted; a command written as one string is split for analysis.
    let mut argv: Vec<String> = Vec::new();
    if let Some(c) = &e.command {
        if e.args.is_empty() && c.trim().contains(' ') {
            argv.extend(c.split_whitespace().map(str::to_string));
        } else {
            argv.push(c.clone());
        }
    }
    argv.extend(e.args.iter().cloned());
    let (shown_cmd, shown_args) = redact_argv(e, &argv, secrets, &mut a);
    a.command = shown_cmd;
    a.args = shown_args;

    if !argv.is_empty() {
        launch(&argv, &mut a, 0);
    }

    if let Some(u) = &e.url {
        a.url_raw = Some(u.clone());
    }
    if let Some(raw) = a.url_raw.clone() {
        a.url = Some(url::redacted(&raw));
        if let Some(p) = url::parse(&raw) {
            if p.userinfo.is_some_and(|ui| ui.contains(':')) {
                a.has_secret = true;
                a.flag(RiskFlag::PlaintextSecret, "password in URL");
            }
            if let Some(q) = p.query {
                for kv in q.split('&') {
                    if let Some((k, v)) = kv.split_once('=')
                        && secrets.is_secret(k, v)
                    {
                        a.has_secret = true;
                        a.flag(RiskFlag::PlaintextSecret, format!("URL query {k}"));
                    }
                }
            }
            if p.scheme.eq_ignore_ascii_case("http") && !url::is_loopback(p.host) {
                a.flag(RiskFlag::CleartextUrl, format!("http://{}", p.host));
            }
        }
    }
    a
}

/// Redact the argv for output: detector hits anywhere, values after secret-named flags
/// (`--token X`, `--api-key=X`), header values (`--header "Authorization: Bearer X"`) and
/// `NAME=value` assignments with a secret-looking name.
fn redact_argv(
    e: &RawEntry,
    argv: &[String],
    secrets: &Secrets,
    a: &mut Assessed,
) -> (Option<String>, Vec<String>) {
    let mut shown = Vec::with_capacity(argv.len());
    let mut prev_flag: Option<String> = None;
    for arg in argv {
        let mut out = arg.clone();
        let mut hit = false;
        if let Some(flag) = prev_flag.take() {
            if matches!(flag.as_str(), "--header" | "-h" | "--headers") {
                if let Some((hn, hv)) = arg.split_once(':')
                    && secrets.is_secret(hn.trim(), hv.trim())
                {
                    out = format!("{hn}: {REDACTED}");
                    hit = true;
                }
            } else if secretish_name(&flag) && secrets.is_secret(&flag, arg) {
                out = REDACTED.to_string();
                hit = true;
            }
        }
        if !hit {
            if let Some((k, v)) = arg.split_once('=')
                && !k.is_empty()
                && !k.contains(' ')
                && secrets.is_secret(k.trim_start_matches('-'), v)
            {
                out = format!("{k}={REDACTED}");
                hit = true;
            } else {
                let (r, found) = secrets.redact(arg);
                if found {
                    out = r;
                    hit = true;
                }
            }
        }
        if hit {
            a.has_secret = true;
            a.flag(RiskFlag::PlaintextSecret, "command-line argument");
        }
        if arg.starts_with('-') && !arg.contains('=') {
            prev_flag = Some(arg.to_ascii_lowercase());
        }
        shown.push(out);
    }
    // A command given as one string was split above: show it whole again.
    let split_command = e.args.is_empty() && argv.len() > 1;
    if split_command {
        return (Some(shown.join(" ")), Vec::new());
    }
    let mut it = shown.into_iter();
    let cmd = if e.command.is_some() { it.next() } else { None };
    (cmd, it.collect())
}

fn is_any_addr(v: &str) -> bool {
    let host = v
        .strip_prefix('[')
        .and_then(|r| r.split_once(']').map(|(h, _)| h))
        .unwrap_or_else(|| {
            if v.matches(':').count() == 1 {
                v.split(':').next().unwrap_or(v)
            } else {
                v
            }
        });
    matches!(host.trim(), "0.0.0.0" | "::" | "*" | "0")
}

/// Look through one launch (recursively for `sh -c` and `env`), at most a few levels deep.
fn launch(argv: &[String], a: &mut Assessed, depth: u8) {
    if depth > 3 || argv.is_empty() {
        return;
    }
    let prog = base(&argv[0]);
    let rest = &argv[1..];

    // Listener on every interface, whatever the program.
    for (i, x) in rest.iter().enumerate() {
        let lower = x.to_ascii_lowercase();
        let flag_val = [
            "--host",
            "--bind",
            "--listen",
            "--address",
            "--addr",
            "--hostname",
            "--bind-address",
        ]
        .iter()
        .find_map(|f| {
            if lower == *f {
                rest.get(i + 1).map(String::as_str)
            } else {
                lower
                    .strip_prefix(&format!("{f}="))
                    .map(|_| &x[f.len() + 1..])
            }
        });
        if let Some(v) = flag_val
            && is_any_addr(v)
        {
            a.flag(
                RiskFlag::PublicListener,
                format!("{} {v}", x.split('=').next().unwrap_or(x)),
            );
        }
    }

    match prog.as_str() {
        // `mcpwatch wrap [options] -- CMD ...`: judge the server it runs.
        "mcpwatch" if rest.first().is_some_and(|w| w == "wrap") => {
            if let Some(dash) = rest.iter().position(|x| x == "--") {
                launch(&rest[dash + 1..], a, depth + 1);
            }
        }
        "sh" | "bash" | "zsh" | "dash" | "ksh" | "ash" | "fish" | "busybox" => {
            let rest = if prog == "busybox" && rest.first().is_some_and(|s| s.ends_with("sh")) {
                &rest[1..]
            } else {
                rest
            };
            if let Some(pos) = rest
                .iter()
                .position(|x| x.starts_with('-') && !x.starts_with("--") && x.contains('c'))
            {
                a.flag(RiskFlag::ShellCommand, format!("{prog} -c"));
                if let Some(script) = rest.get(pos + 1) {
                    // Judge the first simple command of the script too (`exec npx -y pkg`).
                    let inner: Vec<String> = script
                        .split(['&', ';', '|', '\n'])
                        .next()
                        .unwrap_or("")
                        .split_whitespace()
                        .filter(|w| *w != "exec")
                        .map(str::to_string)
                        .collect();
                    launch(&inner, a, depth + 1);
                }
            }
        }
        "env" => {
            let inner: Vec<String> = rest
                .iter()
                .skip_while(|x| x.starts_with('-') || x.contains('='))
                .cloned()
                .collect();
            launch(&inner, a, depth + 1);
        }
        "npx" | "bunx" => npm_exec(&prog, rest, a),
        "npm" | "pnpm" | "yarn" | "bun" => {
            if let Some(sub) = rest.first()
                && matches!(sub.as_str(), "exec" | "x" | "dlx")
            {
                npm_exec(&format!("{prog} {sub}"), &rest[1..], a);
            }
        }
        "uvx" => py_exec("uvx", rest, a),
        "uv" if rest.first().is_some_and(|s| s == "tool")
            && rest.get(1).is_some_and(|s| s == "run") =>
        {
            py_exec("uv tool run", &rest[2..], a);
        }
        "pipx" if rest.first().is_some_and(|s| s == "run") => py_exec("pipx run", &rest[1..], a),
        "docker" | "podman" | "nerdctl" => container(&prog, rest, a),
        "mcp-remote" | "mcp-proxy" | "supergateway" => bridge(&prog, None, rest, a),
        _ => {}
    }
}

/// `npx [-y] [-p pkg]... pkg[@ver] args` and friends.
fn npm_exec(launcher: &str, rest: &[String], a: &mut Assessed) {
    let mut packages: Vec<&str> = Vec::new();
    let mut i = 0;
    let mut bin: Option<usize> = None;
    while i < rest.len() {
        let x = rest[i].as_str();
        if x == "--" {
            bin = (i + 1 < rest.len()).then_some(i + 1);
            break;
        } else if x == "-p" || x == "--package" {
            if let Some(p) = rest.get(i + 1) {
                packages.push(p);
            }
            i += 2;
            continue;
        } else if let Some(p) = x.strip_prefix("--package=") {
            packages.push(p);
        } else if x == "-c" || x == "--call" {
            i += 2;
            continue;
        } else if !x.starts_with('-') {
            bin = Some(i);
            break;
        }
        i += 1;
    }
    if packages.is_empty()
        && let Some(b) = bin
    {
        packages.push(&rest[b]);
    }
    for spec in &packages {
        let (name, version) = split_npm_spec(spec);
        if name.starts_with(['.', '/', '~']) || name.contains(':') {
            continue; // local path, git or file spec
        }
        if version.is_none_or(|v| matches!(v, "latest" | "next" | "*" | "x" | "")) {
            a.flag(
                RiskFlag::UnpinnedFetch,
                format!("{launcher} {name} (no version pin)"),
            );
        }
        if name == "mcp-remote" || name == "mcp-proxy" || name == "supergateway" {
            let after = bin.map_or(&rest[rest.len()..], |b| &rest[b + 1..]);
            bridge(name, version, after, a);
        }
    }
}

/// `pkg@1.2.3` -> (`pkg`, `1.2.3`); `@scope/pkg@1` -> (`@scope/pkg`, `1`).
fn split_npm_spec(spec: &str) -> (&str, Option<&str>) {
    let from = usize::from(spec.starts_with('@'));
    match spec[from..].find('@') {
        Some(i) => (&spec[..from + i], Some(&spec[from + i + 1..])),
        None => (spec, None),
    }
}

/// `uvx [--from spec] pkg[==ver|@ver]`, `pipx run [--spec spec] pkg`.
fn py_exec(launcher: &str, rest: &[String], a: &mut Assessed) {
    const WITH_VALUE: &[&str] = &[
        "--python",
        "-p",
        "--with",
        "--with-requirements",
        "--index-url",
        "--extra-index-url",
        "--index",
        "-i",
        "--default-index",
        "--python-preference",
        "--cache-dir",
        "--directory",
        "--project",
        "--env-file",
    ];
    let mut from: Option<&str> = None;
    let mut i = 0;
    let mut target: Option<&str> = None;
    while i < rest.len() {
        let x = rest[i].as_str();
        if x == "--from" || x == "--spec" {
            from = rest.get(i + 1).map(String::as_str);
            i += 2;
            continue;
        }
        if let Some(v) = x
            .strip_prefix("--from=")
            .or_else(|| x.strip_prefix("--spec="))
        {
            from = Some(v);
        } else if WITH_VALUE.contains(&x) {
            i += 2;
            continue;
        } else if !x.starts_with('-') {
            target = Some(x);
            break;
        }
        i += 1;
    }
    let spec = from.or(target);
    if let Some(spec) = spec {
        if spec.starts_with(['.', '/', '~']) || spec.contains("://") || spec.starts_with("git+") {
            return;
        }
        let pinned = spec.contains("==")
            || spec.contains("===")
            || spec
                .split_once('@')
                .is_some_and(|(_, v)| !v.is_empty() && v != "latest");
        if !pinned {
            let name = spec
                .split(['[', '<', '>', '=', '~', '@'])
                .next()
                .unwrap_or(spec);
            a.flag(
                RiskFlag::UnpinnedFetch,
                format!("{launcher} {name} (no version pin)"),
            );
        }
        let name = spec
            .split(['[', '<', '>', '=', '~', '@'])
            .next()
            .unwrap_or(spec);
        if name == "mcp-proxy" {
            let after = target.map_or(&rest[rest.len()..], |t| {
                let p = rest.iter().position(|x| x == t).unwrap_or(rest.len());
                &rest[(p + 1).min(rest.len())..]
            });
            bridge(name, None, after, a);
        }
    }
}

/// `docker run [flags] image [args]`.
fn container(prog: &str, rest: &[String], a: &mut Assessed) {
    let mut i = 0;
    // `docker container run` / `docker run`.
    if rest.first().is_some_and(|s| s == "container") {
        i = 1;
    }
    if rest.get(i).is_none_or(|s| s != "run") {
        return;
    }
    i += 1;
    const WITH_VALUE: &[&str] = &[
        "-e",
        "--env",
        "--env-file",
        "--name",
        "-w",
        "--workdir",
        "-u",
        "--user",
        "--entrypoint",
        "-p",
        "--publish",
        "-l",
        "--label",
        "--network",
        "--net",
        "--pid",
        "--ipc",
        "--uts",
        "--userns",
        "--cap-add",
        "--cap-drop",
        "-v",
        "--volume",
        "--mount",
        "--platform",
        "--pull",
        "--device",
        "-h",
        "--hostname",
        "--add-host",
        "--security-opt",
        "--memory",
        "-m",
        "--cpus",
        "--restart",
        "--log-driver",
        "--tmpfs",
        "--ulimit",
    ];
    let mut image: Option<&str> = None;
    while i < rest.len() {
        let x = rest[i].as_str();
        let (flag, inline) = match x.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (x, None),
        };
        let value = || {
            inline
                .or_else(|| rest.get(i + 1).map(String::as_str))
                .unwrap_or("")
        };
        match flag {
            "--privileged" => a.flag(
                RiskFlag::ContainerHostAccess,
                format!("{prog} run --privileged"),
            ),
            "--pid" | "--network" | "--net" | "--ipc" | "--uts" | "--userns"
                if value() == "host" =>
            {
                a.flag(RiskFlag::ContainerHostAccess, format!("{flag}=host"));
            }
            "--cap-add" => a.flag(
                RiskFlag::ContainerHostAccess,
                format!("--cap-add {}", value()),
            ),
            "--device" => a.flag(
                RiskFlag::ContainerHostAccess,
                format!("--device {}", value()),
            ),
            "-v" | "--volume" => {
                let v = value();
                let src = v.split(':').next().unwrap_or(v);
                if sensitive_mount(src) {
                    a.flag(RiskFlag::ContainerHostAccess, format!("bind mount {src}"));
                }
            }
            "--mount" => {
                let v = value();
                for part in v.split(',') {
                    if let Some(src) = part
                        .strip_prefix("source=")
                        .or_else(|| part.strip_prefix("src="))
                        && sensitive_mount(src)
                    {
                        a.flag(RiskFlag::ContainerHostAccess, format!("bind mount {src}"));
                    }
                }
            }
            _ => {}
        }
        if inline.is_none() && WITH_VALUE.contains(&flag) {
            i += 2;
            continue;
        }
        if !x.starts_with('-') {
            image = Some(x);
            break;
        }
        i += 1;
    }
    if let Some(img) = image {
        let last = img.rsplit('/').next().unwrap_or(img);
        let pinned =
            img.contains("@sha256:") || last.split_once(':').is_some_and(|(_, t)| t != "latest");
        if !pinned {
            a.flag(
                RiskFlag::UnpinnedFetch,
                format!("{prog} image {img} (no tag or digest)"),
            );
        }
    }
}

/// Host paths whose mount gives a container the host: `/`, system directories, the Docker socket,
/// a whole home.
fn sensitive_mount(src: &str) -> bool {
    let s = src.trim_end_matches('/');
    if s.is_empty() {
        return src.starts_with('/');
    }
    if matches!(s, "~" | "$HOME" | "${HOME}" | "/home" | "/root") {
        return true;
    }
    if let Some(r) = s.strip_prefix("/home/") {
        return !r.contains('/'); // a whole home; a project below it is ordinary
    }
    [
        "/etc", "/root", "/proc", "/sys", "/dev", "/boot", "/var/run", "/run", "/var/lib", "/usr",
        "/bin", "/sbin", "/lib",
    ]
    .iter()
    .any(|p| s == *p || s.starts_with(&format!("{p}/")))
        || s.ends_with("docker.sock")
        || s.ends_with("podman.sock")
        || s.ends_with(".ssh")
}

/// A stdio bridge to a remote server: record the remote URL, flag the bridge and known bad versions.
fn bridge(name: &str, version: Option<&str>, rest: &[String], a: &mut Assessed) {
    let remote = rest
        .iter()
        .find(|x| x.starts_with("http://") || x.starts_with("https://"));
    let Some(remote) = remote else { return };
    let host = url::parse(remote).map_or_else(|| "?".to_string(), |u| u.host.to_string());
    a.flag(RiskFlag::RemoteBridge, format!("{name} -> {host}"));
    if a.url_raw.is_none() {
        a.url_raw = Some(remote.clone());
    }
    if name == "mcp-remote"
        && let Some(v) = version
        && semver_lt(v, (0, 1, 16))
    {
        a.flag(
            RiskFlag::VulnerableVersion,
            format!("mcp-remote@{v} < 0.1.16 (CVE-2025-6514)"),
        );
    }
}

/// `0.1.15` < (0,1,16); ranges and tags (`^0.1.0`, `latest`) are not judged.
fn semver_lt(v: &str, than: (u64, u64, u64)) -> bool {
    let core = v
        .trim_start_matches(['=', 'v'])
        .split(['-', '+'])
        .next()
        .unwrap_or("");
    let mut it = core.split('.').map(|p| p.parse::<u64>());
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c)), None) => (a, b, c) < than,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Transport;

    fn stdio(cmd: &str, args: &[&str]) -> RawEntry {
        RawEntry {
            name: "t".into(),
            transport: Some(Transport::Stdio),
            command: Some(cmd.into()),
            args: args.iter().map(|s| s.to_string()).collect(),
            enabled: true,
            ..RawEntry::default()
        }
    }

    fn flags(e: &RawEntry) -> Vec<RiskFlag> {
        let mut f: Vec<RiskFlag> = assess(e, &Secrets::new())
            .risks
            .iter()
            .map(|r| r.flag)
            .collect();
        f.sort();
        f.dedup();
        f
    }

    #[test]
    fn unpinned_and_pinned_fetches() {
        use RiskFlag::UnpinnedFetch as U;
        assert_eq!(
            flags(&stdio(
                "npx",
                &["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]
            )),
            [U]
        );
        assert!(
            flags(&stdio(
                "npx",
                &[
                    "-y",
                    "@modelcontextprotocol/server-filesystem@2025.8.21",
                    "/tmp"
                ]
            ))
            .is_empty()
        );
        assert_eq!(flags(&stdio("npx", &["-y", "pkg@latest"])), [U]);
        assert_eq!(flags(&stdio("uvx", &["mcp-server-fetch"])), [U]);
        assert!(flags(&stdio("uvx", &["mcp-server-fetch==2025.4.7"])).is_empty());
        assert!(
            flags(&stdio(
                "uvx",
                &["--from", "mcp-server-git==1.0", "mcp-server-git"]
            ))
            .is_empty()
        );
        assert_eq!(flags(&stdio("pipx", &["run", "mcp-server-time"])), [U]);
        assert!(flags(&stdio("node", &["dist/index.js"])).is_empty());
        assert_eq!(
            flags(&stdio("docker", &["run", "-i", "--rm", "mcp/github"])),
            [U]
        );
        assert!(
            flags(&stdio(
                "docker",
                &["run", "-i", "--rm", "-e", "X", "mcp/github:1.2"]
            ))
            .is_empty()
        );
    }

    #[test]
    fn shells_bridges_containers_listeners() {
        let f = flags(&stdio("bash", &["-lc", "exec npx -y evil-pkg"]));
        assert_eq!(f, [RiskFlag::UnpinnedFetch, RiskFlag::ShellCommand]);
        let f = flags(&stdio(
            "npx",
            &["mcp-remote@0.1.15", "https://mcp.example.com/sse"],
        ));
        assert_eq!(f, [RiskFlag::RemoteBridge, RiskFlag::VulnerableVersion]);
        let f = flags(&stdio(
            "npx",
            &["-y", "mcp-remote@0.1.16", "https://mcp.example.com/sse"],
        ));
        assert_eq!(f, [RiskFlag::RemoteBridge]);
        let f = flags(&stdio("docker", &["run", "-i", "-v", "/:/host", "img:1"]));
        assert_eq!(f, [RiskFlag::ContainerHostAccess]);
        assert!(
            flags(&stdio(
                "docker",
                &["run", "-i", "-v", "/home/me/proj:/p", "img:1"]
            ))
            .is_empty()
        );
        let f = flags(&stdio("docker", &["run", "--privileged", "img:1"]));
        assert_eq!(f, [RiskFlag::ContainerHostAccess]);
        let f = flags(&stdio("python", &["-m", "srv", "--host", "0.0.0.0"]));
        assert_eq!(f, [RiskFlag::PublicListener]);
        assert!(flags(&stdio("python", &["-m", "srv", "--host=127.0.0.1"])).is_empty());
    }

    #[test]
    fn secrets_are_flagged_and_redacted() {
        let tok = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";
        let mut e = stdio(
            "npx",
            &[
                "-y",
                "srv@1.0.0",
                "--token",
                tok,
                &format!("--api-key={tok}"),
            ],
        );
        e.env = vec![
            ("GITHUB_TOKEN".into(), Some(tok.into())),
            ("MODE".into(), Some("fast".into())),
        ];
        let a = assess(&e, &Secrets::new());
        assert!(a.has_secret);
        assert!(a.risks.iter().any(|r| r.detail == "env GITHUB_TOKEN"));
        assert!(!a.risks.iter().any(|r| r.detail == "env MODE"));
        assert!(!a.args.iter().any(|x| x.contains(tok)), "{:?}", a.args);

        let mut ok = stdio("node", &["s.js"]);
        ok.env = vec![("API_KEY".into(), Some("${input:api-key}".into()))];
        ok.headers = vec![("Authorization".into(), Some("Bearer ${env:TOKEN}".into()))];
        assert!(flags(&ok).is_empty());
    }

    #[test]
    fn secret_names_are_whole_words() {
        for n in [
            "GITHUB_TOKEN",
            "x-api-key",
            "Authorization",
            "--password",
            "apiKey",
            "OPENAI_KEY",
            "DB_PASS",
            "clientSecret",
        ] {
            assert!(secretish_name(n), "{n}");
        }
        for n in [
            "GIT_AUTHOR_NAME",
            "KEYBOARD_LAYOUT",
            "PATH",
            "TOKENIZER_MODEL",
            "MODE",
            "KEY_FILE",
            "passthrough",
        ] {
            assert!(!secretish_name(n), "{n}");
        }
        let s = Secrets::new();
        assert!(!s.is_secret("GIT_AUTHOR_NAME", "Alice Example"));
        assert!(!s.is_secret("API_KEY", "YOUR_API_KEY_HERE"));
        assert!(!s.is_secret("GITHUB_TOKEN", "${input:gh}"));
        assert!(s.is_secret("DB_PASS", "correct-horse-battery"));
    }

    #[test]
    fn cleartext_url_only_off_loopback() {
        let mut e = RawEntry {
            url: Some("http://mcp.example.com/mcp".into()),
            transport: Some(Transport::Http),
            ..RawEntry::default()
        };
        assert_eq!(flags(&e), [RiskFlag::CleartextUrl]);
        e.url = Some("http://127.0.0.1:8080/mcp".into());
        assert!(flags(&e).is_empty());
    }
}
