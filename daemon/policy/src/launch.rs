//! What a stdio server launch *is*: the package, image or script behind the launchers.
//!
//! A stdio MCP server is named by how it is started, not by an endpoint: `npx -y pkg`,
//! `uvx pkg==1.2`, `docker run -i image`, `python server.py`, or `node <cache>/.bin/x` once
//! npx has resolved it. The scanner (client configurations), the daemon (exec events and
//! stdio observation) and `mcpwatch wrap` all need the same answer, and the policy's
//! `[[server]] package = ...` / `command = ...` entries match against it, so the rule lives
//! here, in the pure policy crate, once. [`identify`] is total: any argv gives `None` or a
//! [`Launch`]; launchers (env, shells, npx, npm exec, uvx, pipx, uv, node, python, docker,
//! ...) are looked through to the thing they run.

use std::fmt;

/// Which registry or kind of file a launch names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LaunchKind {
    /// An npm package (`npx`, `npm exec`, `pnpm dlx`, `bunx`, a `node_modules` path).
    Npm,
    /// A PyPI package (`uvx`, `pipx run`, `uv tool run`).
    Pypi,
    /// A Python module run with `python -m`.
    PyModule,
    /// A container image (`docker run`, `podman run`).
    Oci,
    /// A script run by an interpreter (`python x.py`, `node dist/index.js`, `uv run x.py`).
    Script,
    /// A program run directly.
    Binary,
}

impl LaunchKind {
    /// The prefix used in `package = "npm:..."` and in [`Launch::key`].
    pub fn label(self) -> &'static str {
        match self {
            LaunchKind::Npm => "npm",
            LaunchKind::Pypi => "pypi",
            LaunchKind::PyModule => "pymodule",
            LaunchKind::Oci => "oci",
            LaunchKind::Script => "script",
            LaunchKind::Binary => "binary",
        }
    }

    /// The inverse of [`LaunchKind::label`].
    pub fn from_label(s: &str) -> Option<LaunchKind> {
        Some(match s {
            "npm" => LaunchKind::Npm,
            "pypi" => LaunchKind::Pypi,
            "pymodule" => LaunchKind::PyModule,
            "oci" => LaunchKind::Oci,
            "script" => LaunchKind::Script,
            "binary" => LaunchKind::Binary,
            _ => return None,
        })
    }

    /// Packages and images come from a registry; scripts and binaries are files.
    pub fn is_package(self) -> bool {
        matches!(self, LaunchKind::Npm | LaunchKind::Pypi | LaunchKind::PyModule | LaunchKind::Oci)
    }
}

/// The identity of one stdio server launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub kind: LaunchKind,
    /// Package or image name without version (`@scope/name`, `mcp-server-fetch`,
    /// `mcp/github`), or the script/program path as written.
    pub name: String,
    /// The pinned version or tag, when the launch names one.
    pub version: Option<String>,
    /// The launcher that was looked through first (`npx`, `uvx`, `docker`, ...), if any.
    pub launcher: Option<String>,
}

impl Launch {
    /// `kind:name`, the form `[[server]] package = ...` is written in.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind.label(), self.name)
    }
}

impl fmt::Display for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.label(), self.name)?;
        if let Some(v) = &self.version {
            write!(f, "@{v}")?;
        }
        Ok(())
    }
}

/// How deep launchers may nest (`sh -c "env X=1 npx ..."`): a bound, so hostile argv
/// cannot recurse without end.
const MAX_DEPTH: usize = 6;

/// The package, image or script an argv launches, looking through launchers.
pub fn identify(argv: &[String]) -> Option<Launch> {
    identify_at(argv, 0, None)
}

fn base(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

fn identify_at(argv: &[String], depth: usize, launcher: Option<&str>) -> Option<Launch> {
    if depth > MAX_DEPTH {
        return None;
    }
    let first = argv.first()?;
    let prog = base(first);
    let rest = &argv[1..];
    let outer = |l: &str| -> Option<String> { Some(launcher.unwrap_or(l).to_string()) };
    match prog {
        "env" => {
            // env [-i] [-u NAME] [NAME=value]... CMD ARGS
            let mut i = 0;
            while let Some(a) = rest.get(i) {
                if a == "-u" || a == "--unset" || a == "-C" || a == "--chdir" {
                    i += 2;
                } else if a.starts_with('-') || (a.contains('=') && !a.starts_with('/')) {
                    i += 1;
                } else {
                    break;
                }
            }
            identify_at(rest.get(i..)?, depth + 1, launcher)
        }
        // `mcpwatch wrap [options] -- CMD ARGS`: the server it runs (the wrapper is
        // transparent, so an installed wrap keeps a server's registration).
        "mcpwatch" if rest.first().is_some_and(|w| w == "wrap") => {
            let dash = rest.iter().position(|a| a == "--")?;
            identify_at(rest.get(dash + 1..)?, depth + 1, launcher)
        }
        "sh" | "bash" | "dash" | "zsh" => {
            let c = rest.iter().position(|a| a == "-c" || (a.starts_with('-') && !a.starts_with("--") && a.contains('c')))?;
            let words = shell_words(rest.get(c + 1)?);
            identify_at(&words, depth + 1, Some(launcher.unwrap_or(prog)))
        }
        "npx" | "bunx" | "pnpx" => npm_exec(rest, outer(prog)),
        "npm" | "pnpm" | "yarn" | "bun" => {
            let sub = rest.iter().position(|a| !a.starts_with('-'))?;
            match rest[sub].as_str() {
                "exec" | "x" | "dlx" => npm_exec(&rest[sub + 1..], outer(prog)),
                // `bun script.js` runs a file.
                s if prog == "bun" && looks_like_script(s) => Some(script(s, launcher.or(Some(prog)))),
                _ => None,
            }
        }
        "node" | "nodejs" | "deno" => {
            let mut args = rest.iter().enumerate();
            let (i, target) = loop {
                let (i, a) = args.next()?;
                if a == "run" && prog == "deno" {
                    continue;
                }
                if a == "-r" || a == "--require" || a == "--import" || a == "--loader" {
                    args.next();
                    continue;
                }
                if !a.starts_with('-') {
                    break (i, a);
                }
            };
            if matches!(base(target), "npx" | "npx-cli.js") {
                return npm_exec(&rest[i + 1..], outer("npx"));
            }
            if matches!(base(target), "npm" | "npm-cli.js") {
                let mut inner = vec!["npm".to_string()];
                inner.extend_from_slice(&rest[i + 1..]);
                return identify_at(&inner, depth + 1, launcher);
            }
            if let Some(spec) = target.strip_prefix("npm:") {
                let (name, version) = split_npm(spec);
                return Some(Launch { kind: LaunchKind::Npm, name, version, launcher: outer(prog) });
            }
            if let Some(l) = from_node_modules(target, outer(prog)) {
                return Some(l);
            }
            Some(script(target, launcher.or(Some(prog))))
        }
        "uvx" => py_tool(rest, outer(prog)),
        "uv" => match rest.iter().find(|a| !a.starts_with('-')).map(String::as_str) {
            Some("tool") => {
                let i = rest.iter().position(|a| a == "tool")?;
                if rest.get(i + 1).map(String::as_str) != Some("run") {
                    return None;
                }
                py_tool(&rest[i + 2..], outer("uv tool run"))
            }
            Some("run") => {
                let i = rest.iter().position(|a| a == "run")?;
                uv_run(&rest[i + 1..], depth, launcher)
            }
            _ => None,
        },
        "pipx" => {
            let i = rest.iter().position(|a| a == "run")?;
            py_tool(&rest[i + 1..], outer("pipx"))
        }
        "docker" | "podman" | "nerdctl" => {
            let i = rest.iter().position(|a| a == "run")?;
            container(&rest[i + 1..], outer(prog))
        }
        p if is_python(p) => {
            let mut i = 0;
            while let Some(a) = rest.get(i) {
                match a.as_str() {
                    "-m" => {
                        let m = rest.get(i + 1)?;
                        return Some(Launch {
                            kind: LaunchKind::PyModule,
                            name: m.clone(),
                            version: None,
                            launcher: outer(prog),
                        });
                    }
                    "-X" | "-W" => i += 2,
                    "-c" => return None,
                    a if a.starts_with('-') => i += 1,
                    a => return Some(script(a, launcher.or(Some(prog)))),
                }
            }
            None
        }
        "java" => {
            let i = rest.iter().position(|a| a == "-jar")?;
            Some(script(rest.get(i + 1)?, launcher.or(Some(prog))))
        }
        _ => {
            if let Some(l) = from_node_modules(first, launcher.map(str::to_string)) {
                return Some(l);
            }
            Some(Launch {
                kind: LaunchKind::Binary,
                name: first.clone(),
                version: None,
                launcher: launcher.map(str::to_string),
            })
        }
    }
}

fn is_python(p: &str) -> bool {
    let Some(v) = p.strip_prefix("python") else {
        return false;
    };
    v.is_empty() || v.chars().all(|c| c.is_ascii_digit() || c == '.')
}

fn looks_like_script(s: &str) -> bool {
    [".js", ".mjs", ".cjs", ".ts", ".py"].iter().any(|e| s.ends_with(e))
}

fn script(path: &str, launcher: Option<&str>) -> Launch {
    Launch { kind: LaunchKind::Script, name: path.to_string(), version: None, launcher: launcher.map(str::to_string) }
}

/// `@scope/name@1.2.3` -> (`@scope/name`, `1.2.3`); `name` -> (`name`, None).
fn split_npm(spec: &str) -> (String, Option<String>) {
    match spec.rfind('@') {
        Some(i) if i > 0 => (spec[..i].to_string(), Some(spec[i + 1..].to_string()).filter(|v| !v.is_empty())),
        _ => (spec.to_string(), None),
    }
}

/// `npx [-y] [--package=P | -p P] PKG[@v] ARGS`: the package is `--package` when given,
/// else the first positional argument.
fn npm_exec(args: &[String], launcher: Option<String>) -> Option<Launch> {
    let mut i = 0;
    let mut package: Option<&str> = None;
    while let Some(a) = args.get(i) {
        if a == "--" {
            i += 1;
            break;
        }
        if a == "-p" || a == "--package" {
            package = args.get(i + 1).map(String::as_str);
            i += 2;
            continue;
        }
        if let Some(p) = a.strip_prefix("--package=") {
            package = Some(p);
            i += 1;
            continue;
        }
        if a == "-c" || a == "--call" {
            i += 2;
            continue;
        }
        if a.starts_with('-') {
            i += 1;
            continue;
        }
        break;
    }
    let spec = package.or_else(|| args.get(i).map(String::as_str))?;
    if spec.starts_with('.') || spec.starts_with('/') {
        return Some(script(spec, launcher.as_deref()));
    }
    let (name, version) = split_npm(spec);
    if name.is_empty() {
        return None;
    }
    Some(Launch { kind: LaunchKind::Npm, name, version, launcher })
}

/// The package a path inside `node_modules` belongs to: `.../node_modules/@s/n/dist/i.js`
/// -> `@s/n`; `.../node_modules/.bin/x` -> `x` (the bin npx resolved).
fn from_node_modules(path: &str, launcher: Option<String>) -> Option<Launch> {
    let (_, after) = path.rsplit_once("node_modules/")?;
    let mut parts = after.split('/');
    let first = parts.next()?;
    let name = if first == ".bin" {
        parts.next()?.to_string()
    } else if first.starts_with('@') {
        format!("{first}/{}", parts.next()?)
    } else {
        first.to_string()
    };
    if name.is_empty() {
        return None;
    }
    Some(Launch { kind: LaunchKind::Npm, name, version: None, launcher })
}

/// `pkg==1.2`, `pkg@1.2`, `pkg[extra]>=1` -> name and exact pin (only `==`/`@` pin).
fn split_pypi(spec: &str) -> (String, Option<String>) {
    let (head, version) = if let Some((h, v)) = spec.split_once("==") {
        (h, Some(v.to_string()))
    } else if let Some((h, v)) = spec.split_once('@') {
        (h, Some(v.to_string()))
    } else {
        (spec, None)
    };
    let name_end = head.find(['[', '<', '>', '=', '!', '~', ';', ' ']).unwrap_or(head.len());
    (head[..name_end].to_string(), version.filter(|v| !v.is_empty()))
}

/// `uvx [--from SPEC] [--with X] [--python V] CMD[@v] ARGS` (and `pipx run`, `uv tool run`).
fn py_tool(args: &[String], launcher: Option<String>) -> Option<Launch> {
    let mut i = 0;
    let mut from: Option<&str> = None;
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "--from" | "--spec" => {
                from = args.get(i + 1).map(String::as_str);
                i += 2;
            }
            "--with" | "--python" | "-p" | "--index-url" | "--index" | "--extra-index-url" | "--pip-args" => i += 2,
            "--" => {
                i += 1;
                break;
            }
            a if a.starts_with("--from=") || a.starts_with("--spec=") => {
                from = a.split_once('=').map(|(_, v)| v);
                i += 1;
            }
            a if a.starts_with('-') => i += 1,
            _ => break,
        }
    }
    let spec = from.or_else(|| args.get(i).map(String::as_str))?;
    let (name, version) = split_pypi(spec);
    if name.is_empty() {
        return None;
    }
    Some(Launch { kind: LaunchKind::Pypi, name, version, launcher })
}

/// `uv run [--directory D] [--with X] script.py | CMD ARGS`.
fn uv_run(args: &[String], depth: usize, launcher: Option<&str>) -> Option<Launch> {
    let mut i = 0;
    let mut dir: Option<&str> = None;
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "--directory" | "--project" => {
                dir = args.get(i + 1).map(String::as_str);
                i += 2;
            }
            "--with" | "--python" | "-p" | "--env-file" | "--extra" | "--group" => i += 2,
            "--" => {
                i += 1;
                break;
            }
            a if a.starts_with('-') => i += 1,
            _ => break,
        }
    }
    let target = args.get(i)?;
    if target.ends_with(".py") {
        let path = match dir {
            Some(d) if !target.starts_with('/') => format!("{}/{target}", d.trim_end_matches('/')),
            _ => target.clone(),
        };
        return Some(script(&path, Some(launcher.unwrap_or("uv run"))));
    }
    identify_at(&args[i..], depth + 1, Some(launcher.unwrap_or("uv run")))
}

/// `docker run [flags] IMAGE[:tag|@digest] ARGS`.
fn container(args: &[String], launcher: Option<String>) -> Option<Launch> {
    const WITH_VALUE: &[&str] = &[
        "-e", "--env", "-v", "--volume", "--name", "--network", "--net", "--mount", "-p", "--publish", "-u", "--user",
        "-w", "--workdir", "--entrypoint", "--env-file", "-l", "--label", "--platform", "--pull", "--cpus", "-m",
        "--memory", "--add-host", "--cap-add", "--cap-drop", "--device", "--dns", "-h", "--hostname", "--ipc", "--pid",
        "--security-opt", "--tmpfs", "--ulimit", "--userns", "--group-add", "--log-driver", "--log-opt", "--restart",
        "--runtime", "--shm-size", "--stop-signal", "--cidfile", "--gpus", "--init-path",
    ];
    let mut i = 0;
    while let Some(a) = args.get(i) {
        if WITH_VALUE.contains(&a.as_str()) {
            i += 2;
        } else if a.starts_with('-') {
            i += 1;
        } else {
            break;
        }
    }
    let image = args.get(i)?;
    let (name, version) = if let Some((n, d)) = image.split_once('@') {
        (n.to_string(), Some(d.to_string()))
    } else {
        let slash = image.rfind('/').map_or(0, |s| s + 1);
        match image[slash..].rfind(':') {
            Some(c) => (image[..slash + c].to_string(), Some(image[slash + c + 1..].to_string())),
            None => (image.clone(), None),
        }
    };
    Some(Launch { kind: LaunchKind::Oci, name, version, launcher })
}

/// Split a `sh -c` string into words: whitespace-separated, with '...' and "..." quoting
/// and backslash escapes. Enough to read a launch line, not a shell.
pub fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut any = false;
    let mut chars = s.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    any = true;
                }
            }
            (None, ';' | '&' | '|') => break,
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    // `exec CMD` is CMD.
    if out.first().map(String::as_str) == Some("exec") {
        out.remove(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Option<Launch> {
        identify(&shell_words(s))
    }

    fn is(s: &str, kind: LaunchKind, name: &str, version: Option<&str>) {
        let l = id(s).unwrap_or_else(|| panic!("{s}: no launch"));
        assert_eq!((l.kind, l.name.as_str(), l.version.as_deref()), (kind, name, version), "{s}");
    }

    #[test]
    fn looks_through_package_launchers() {
        use LaunchKind::*;
        is("npx -y @modelcontextprotocol/server-everything", Npm, "@modelcontextprotocol/server-everything", None);
        is("npx -y @modelcontextprotocol/server-filesystem@2025.1.14 /tmp", Npm, "@modelcontextprotocol/server-filesystem", Some("2025.1.14"));
        is("npx --package=mcp-remote@0.1.16 mcp-remote https://x", Npm, "mcp-remote", Some("0.1.16"));
        is("node /usr/bin/npx -y pkg", Npm, "pkg", None);
        is("npm exec -y -- pkg@1", Npm, "pkg", Some("1"));
        is("pnpm dlx pkg", Npm, "pkg", None);
        is("node /root/.npm/_npx/ab12/node_modules/.bin/mcp-server-everything", Npm, "mcp-server-everything", None);
        is("node /x/node_modules/@modelcontextprotocol/server-everything/dist/index.js stdio", Npm, "@modelcontextprotocol/server-everything", None);
        is("uvx mcp-server-fetch", Pypi, "mcp-server-fetch", None);
        is("uvx --from mcp-server-git==0.6.2 mcp-server-git", Pypi, "mcp-server-git", Some("0.6.2"));
        is("uvx mcp-server-time@2025.1", Pypi, "mcp-server-time", Some("2025.1"));
        is("uv tool run pkg[extra]>=1", Pypi, "pkg", None);
        is("pipx run pkg==2", Pypi, "pkg", Some("2"));
        is("python3 -u -m mcp_server_fetch", PyModule, "mcp_server_fetch", None);
        is("python server.py --port 1", Script, "server.py", None);
        is("uv run --directory /srv/weather weather.py", Script, "/srv/weather/weather.py", None);
        is("docker run -i --rm -e TOKEN -v /a:/b mcp/github:1.2", Oci, "mcp/github", Some("1.2"));
        is("docker run -i registry:5000/team/img", Oci, "registry:5000/team/img", None);
        is("podman run --rm -i img@sha256:abc", Oci, "img", Some("sha256:abc"));
        is("env FOO=1 BAR=2 npx pkg", Npm, "pkg", None);
        is("sh -c 'exec npx -y pkg@3 --flag'", Npm, "pkg", Some("3"));
        is("bash -lc \"uvx tool\"", Pypi, "tool", None);
        is("node dist/index.js", Script, "dist/index.js", None);
        is("/opt/mcp/bin/server --stdio", Binary, "/opt/mcp/bin/server", None);
        is("java -jar /opt/s.jar", Script, "/opt/s.jar", None);
        is("/usr/bin/mcpwatch wrap -- npx -y pkg@4", Npm, "pkg", Some("4"));
        is("mcpwatch wrap --failure open -- python server.py", Script, "server.py", None);
    }

    #[test]
    fn launchers_are_kept_and_odd_input_is_total() {
        let l = id("sh -c 'npx -y pkg'").expect("launch");
        assert_eq!(l.launcher.as_deref(), Some("sh"));
        assert_eq!(id("npx -y pkg").expect("launch").launcher.as_deref(), Some("npx"));
        assert_eq!(id(""), None);
        assert_eq!(id("npx -y"), None);
        assert_eq!(id("python -c 'print(1)'"), None);
        assert_eq!(id("docker ps"), None);
        // Nesting is bounded.
        let deep = "sh -c ".repeat(50) + "x";
        let _ = identify(&shell_words(&deep));
        let mut argv = Vec::new();
        for _ in 0..20 {
            argv.push("env".to_string());
        }
        argv.push("npx".into());
        argv.push("p".into());
        assert_eq!(identify(&argv), None, "deeper than MAX_DEPTH");
    }

    #[test]
    fn shell_words_quote_and_stop_at_operators() {
        assert_eq!(shell_words(r#"a 'b c' "d \" e" f\ g; rm -rf /"#), vec!["a", "b c", "d \" e", "f g"]);
        assert_eq!(shell_words("exec x ''"), vec!["x", ""]);
    }
}
