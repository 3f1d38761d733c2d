//! The scan itself: which homes, files and project directories to read, and turning each file's
//! entries into [`Server`]s.
//!
//! Why paths are built from an explicit root and explicit homes: the same code scans the real
//! host (`/`, every home under `/home` and `/root`) and a fixture tree in tests, which must never
//! touch the real homes. Reading is defensive because the scanner usually runs as root over files
//! other users control: symlinks to devices or FIFOs are refused (non-blocking open, regular files
//! only), files are size-capped, directory walks never follow symlinks and are bounded in depth
//! and count, and a file that fails to parse is reported and skipped.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use mcpwatch_policy::Policy;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::clients::{CLIENTS, ClientDef, ProjectRecords};
use crate::extract::{self, RawEntry};
use crate::model::{FileError, Report, Risk, RiskFlag, Scope, Server, Transport};
use crate::parse::{self, Syntax};
use crate::procs::{self, Proc};
use crate::registry;
use crate::risk::{self, Secrets};

/// Largest client file read (Claude Code's `~/.claude.json` grows with history).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Most directories one `--path` walk (or plugin walk) visits.
pub const MAX_WALK_DIRS: usize = 200_000;
/// Most project directories taken from the clients' records per home.
pub const MAX_RECORDED_PROJECTS: usize = 10_000;

/// The invoking user's environment, which moves that user's own files (`$XDG_CONFIG_HOME`,
/// `$CLAUDE_CONFIG_DIR`, `$CODEX_HOME`, `$OPENCODE_CONFIG`). Other users' environments are unknown,
/// so their homes are read at the default places.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `$HOME`: the home these variables apply to.
    pub home: Option<PathBuf>,
    /// Variable name -> value (only the variables named in the client table are looked up).
    pub vars: BTreeMap<String, String>,
}

impl Environment {
    /// The variables of this process that the client table names.
    pub fn from_process() -> Environment {
        let mut vars = BTreeMap::new();
        let names = CLIENTS
            .iter()
            .filter_map(|c| c.env_override.map(|o| o.var))
            .chain(["XDG_CONFIG_HOME"]);
        for n in names {
            if let Some(v) = std::env::var_os(n).and_then(|v| v.into_string().ok())
                && !v.is_empty()
            {
                vars.insert(n.to_string(), v);
            }
        }
        Environment {
            home: std::env::var_os("HOME").map(PathBuf::from),
            vars,
        }
    }
}

/// What to scan.
#[derive(Debug, Clone)]
pub struct Options {
    /// Filesystem root: homes are `<root>/home/*` and `<root>/root`, managed files are under it,
    /// and absolute project paths recorded by clients are resolved below it.
    pub root: PathBuf,
    /// Scan only these homes instead of every home under the root.
    pub homes: Option<Vec<PathBuf>>,
    /// Read the system-wide managed files under `root`.
    pub system: bool,
    /// Directories to walk for project files.
    pub paths: Vec<PathBuf>,
    /// Depth limit of the `paths` walks (0 = the directory itself).
    pub max_depth: usize,
    pub env: Environment,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            root: PathBuf::from("/"),
            homes: None,
            system: true,
            paths: Vec::new(),
            max_depth: 6,
            env: Environment::default(),
        }
    }
}

/// Run a scan. Never fails: unreadable files are listed in [`Report::errors`].
pub fn scan(opts: &Options, policy: Option<&Policy>) -> Report {
    let mut s = Scanner {
        opts,
        policy,
        secrets: Secrets::new(),
        users: BTreeMap::new(),
        report: Report::default(),
        seen_files: HashSet::new(),
        seen_projects: BTreeSet::new(),
        procs: procs::list(&opts.root),
    };
    let passwd = read_passwd(&opts.root.join("etc/passwd"));
    s.users = passwd.names;
    let homes = match &opts.homes {
        Some(h) => h.clone(),
        None => list_homes(&opts.root, &passwd.homes),
    };
    for home in &homes {
        s.home(home);
    }
    if opts.system {
        for c in CLIENTS {
            for f in c.managed_files {
                let path = opts.root.join(f);
                s.file(c, Scope::Managed, &path, None);
            }
        }
    }
    for p in &opts.paths {
        let mut found = Vec::new();
        walk_projects(p, opts.max_depth, &mut found);
        for dir in found {
            s.project(&dir);
        }
    }
    s.report.homes_scanned = homes.len();
    s.report.projects_scanned = s.seen_projects.len();
    s.report
}

/// `<root>/root`, every directory in `<root>/home`, and the homes of human users (uid 0 or
/// 1000..65534) that `<root>/etc/passwd` puts elsewhere; sorted, symlinks skipped.
fn list_homes(root: &Path, passwd_homes: &[PathBuf]) -> Vec<PathBuf> {
    let is_dir = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    let mut homes = BTreeSet::new();
    let r = root.join("root");
    if is_dir(&r) {
        homes.insert(r);
    }
    if let Ok(rd) = fs::read_dir(root.join("home")) {
        homes.extend(
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    for h in passwd_homes {
        let rooted = match h.strip_prefix("/") {
            Ok(rel) => root.join(rel),
            Err(_) => continue,
        };
        if h != Path::new("/") && is_dir(&rooted) {
            homes.insert(rooted);
        }
    }
    homes.into_iter().collect()
}

/// Users from a passwd file (missing file: none, owners shown as uids).
#[derive(Debug, Default)]
struct Passwd {
    names: BTreeMap<u32, String>,
    /// Homes of uid 0 and 1000..65534.
    homes: Vec<PathBuf>,
}

fn read_passwd(path: &Path) -> Passwd {
    let mut p = Passwd::default();
    if let Ok(Some(f)) = read_capped(path) {
        for line in f.text.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 6
                && let Ok(uid) = f[2].parse::<u32>()
            {
                p.names.entry(uid).or_insert_with(|| f[0].to_string());
                if uid == 0 || (1000..65534).contains(&uid) {
                    p.homes.push(PathBuf::from(f[5]));
                }
            }
        }
    }
    p
}

struct ReadFile {
    text: String,
    uid: u32,
    mode: u32,
}

/// Read a regular file of at most [`MAX_FILE_BYTES`]. `Ok(None)`: nothing there (or not a file).
fn read_capped(path: &Path) -> Result<Option<ReadFile>, String> {
    // Follows symlinks (dotfile managers link these files) but only to regular files.
    match fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(None),
        Err(e) => return Err(format!("cannot stat: {e}")),
    }
    // Non-blocking: a file swapped for a FIFO after the stat must not hang the scan.
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot open: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes; not read"));
    }
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes; not read"));
    }
    let text = String::from_utf8(buf).map_err(|e| {
        let (line, _) = parse::line_col(
            &String::from_utf8_lossy(e.as_bytes()),
            e.utf8_error().valid_up_to(),
        );
        format!("not UTF-8 (line {})", line.unwrap_or(0))
    })?;
    Ok(Some(ReadFile {
        text,
        uid: meta.uid(),
        mode: meta.mode(),
    }))
}

/// Expand a table path (`{config}`, one `*` per component, `**`) below `base`.
fn expand(base: &Path, pattern: &str, config: &Path, out: &mut Vec<PathBuf>) {
    let (start, rest) = match pattern.strip_prefix("{config}/") {
        Some(r) => (config.to_path_buf(), r),
        None => (base.to_path_buf(), pattern),
    };
    let comps: Vec<&str> = rest.split('/').filter(|c| !c.is_empty()).collect();
    let mut budget = MAX_WALK_DIRS;
    expand_from(&start, &comps, out, 0, &mut budget);
}

/// `budget` counts directories listed, so a hostile tree under `**` cannot stall the scan.
fn expand_from(
    dir: &Path,
    comps: &[&str],
    out: &mut Vec<PathBuf>,
    depth: usize,
    budget: &mut usize,
) {
    if *budget == 0 {
        return;
    }
    let Some((first, tail)) = comps.split_first() else {
        out.push(dir.to_path_buf());
        return;
    };
    if *first == "**" {
        // Zero or more directories, bounded.
        expand_from(dir, tail, out, depth, budget);
        if depth < 8 {
            *budget = budget.saturating_sub(1);
            for d in sorted_subdirs(dir) {
                expand_from(&d, comps, out, depth + 1, budget);
            }
        }
    } else if let Some((pre, suf)) = first.split_once('*') {
        let Ok(rd) = fs::read_dir(dir) else { return };
        *budget = budget.saturating_sub(1);
        let mut names: Vec<(String, PathBuf)> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok().map(|n| (n, e.path())))
            .filter(|(n, _)| {
                n.len() >= pre.len() + suf.len() && n.starts_with(pre) && n.ends_with(suf)
            })
            .collect();
        names.sort();
        for (_, p) in names {
            if tail.is_empty() || fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                expand_from(&p, tail, out, depth, budget);
            }
        }
    } else {
        expand_from(&dir.join(first), tail, out, depth, budget);
    }
}

fn sorted_subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Directory names never walked into: dependency trees, VCS data, build output.
const SKIP_DIRS: &[&str] = &[
    "node_modules",
    ".git",
    ".hg",
    ".svn",
    "target",
    ".venv",
    "venv",
    "__pycache__",
    ".cache",
    ".npm",
    ".cargo",
    ".rustup",
];

/// The first path components of every project file, to tell a project directory with one read_dir.
fn project_markers() -> BTreeSet<&'static str> {
    CLIENTS
        .iter()
        .flat_map(|c| c.project_files.iter())
        .filter_map(|f| f.split('/').next())
        .collect()
}

/// Collect directories under `root` (itself included) that hold a project file of any client.
fn walk_projects(root: &Path, max_depth: usize, found: &mut Vec<PathBuf>) {
    let markers = project_markers();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    let mut visited = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        visited += 1;
        if visited > MAX_WALK_DIRS {
            break;
        }
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        let mut is_project = false;
        let mut subdirs = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if markers.contains(name) {
                is_project = true;
            }
            if depth < max_depth
                && !name.starts_with('.')
                && !SKIP_DIRS.contains(&name)
                && e.file_type().is_ok_and(|t| t.is_dir())
            {
                subdirs.push(e.path());
            }
        }
        if is_project {
            found.push(dir.clone());
        }
        subdirs.sort();
        for d in subdirs.into_iter().rev() {
            stack.push((d, depth + 1));
        }
    }
    found.sort();
}

struct Scanner<'a> {
    opts: &'a Options,
    policy: Option<&'a Policy>,
    secrets: Secrets,
    users: BTreeMap<u32, String>,
    report: Report,
    seen_files: HashSet<(&'static str, PathBuf)>,
    seen_projects: BTreeSet<PathBuf>,
    procs: Vec<Proc>,
}

impl Scanner<'_> {
    /// Is `home` the invoking user's own home (whose environment we know)?
    fn own_home(&self, home: &Path) -> bool {
        self.opts.env.home.as_ref().is_some_and(|h| {
            h == home
                || (fs::canonicalize(h)
                    .ok()
                    .is_some_and(|a| fs::canonicalize(home).ok() == Some(a)))
        })
    }

    fn home(&mut self, home: &Path) {
        let own = self.own_home(home);
        let config = match self.opts.env.vars.get("XDG_CONFIG_HOME") {
            Some(x) if own && x.starts_with('/') => PathBuf::from(x),
            _ => home.join(".config"),
        };
        let mut projects: Vec<PathBuf> = Vec::new();
        for c in CLIENTS {
            let mut files = Vec::new();
            for f in c.user_files {
                expand(home, f, &config, &mut files);
            }
            if own
                && let Some(o) = c.env_override
                && let Some(v) = self.opts.env.vars.get(o.var)
            {
                if o.files.is_empty() {
                    files.push(PathBuf::from(v));
                } else {
                    for f in o.files {
                        files.push(Path::new(v).join(f));
                    }
                }
            }
            for f in files {
                if let Some(v) = self.file(c, Scope::User, &f, None) {
                    self.records(c, &v, &mut projects);
                }
            }
            let mut plugins = Vec::new();
            for f in c.plugin_files {
                expand(home, f, &config, &mut plugins);
            }
            for f in plugins {
                self.file(c, Scope::Plugin, &f, None);
            }
            if c.project_records == ProjectRecords::VsCodeWorkspaces {
                let mut ws = Vec::new();
                expand(
                    home,
                    "{config}/Code/User/workspaceStorage/*/workspace.json",
                    &config,
                    &mut ws,
                );
                for w in ws.into_iter().take(MAX_RECORDED_PROJECTS) {
                    if let Ok(Some(f)) = read_capped(&w)
                        && let Ok(v) = parse::parse(&f.text, Syntax::Json)
                        && let Some(folder) = v.get("folder").and_then(Value::as_str)
                        && let Some(p) = file_uri_path(folder)
                    {
                        projects.push(p);
                    }
                }
            }
        }
        projects.truncate(MAX_RECORDED_PROJECTS);
        for p in projects {
            let dir = self.rooted(&p);
            self.project(&dir);
        }
    }

    /// An absolute path a client recorded, below the scan root.
    fn rooted(&self, p: &Path) -> PathBuf {
        match p.strip_prefix("/") {
            Ok(rel) if self.opts.root != Path::new("/") => self.opts.root.join(rel),
            _ => p.to_path_buf(),
        }
    }

    /// Projects a client's user file records.
    fn records(&self, c: &ClientDef, v: &Value, out: &mut Vec<PathBuf>) {
        match c.project_records {
            ProjectRecords::ClaudeProjects | ProjectRecords::CodexProjects => {
                if let Some(Value::Object(m)) = v.get("projects") {
                    out.extend(m.keys().filter(|k| k.starts_with('/')).map(PathBuf::from));
                }
            }
            ProjectRecords::VsCodeWorkspaces | ProjectRecords::None => {}
        }
    }

    fn project(&mut self, dir: &Path) {
        let key = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        if !self.seen_projects.insert(key) {
            return;
        }
        if !fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
            return;
        }
        for c in CLIENTS {
            let mut files = Vec::new();
            for f in c.project_files {
                expand(dir, f, dir, &mut files);
            }
            for f in files {
                self.file(c, Scope::Project, &f, Some(dir));
            }
        }
    }

    /// Read, parse and report one file. Returns the parsed value for project records.
    fn file(
        &mut self,
        c: &'static ClientDef,
        scope: Scope,
        path: &Path,
        project: Option<&Path>,
    ) -> Option<Value> {
        let key = (
            c.id,
            fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        );
        if self.seen_files.contains(&key) {
            return None;
        }
        let read = match read_capped(path) {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(message) => {
                self.seen_files.insert(key);
                self.report.files_scanned += 1;
                self.report.errors.push(FileError {
                    file: path.to_path_buf(),
                    client: c.id,
                    line: None,
                    column: None,
                    message,
                });
                return None;
            }
        };
        self.seen_files.insert(key);
        self.report.files_scanned += 1;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let value = match parse::parse(&read.text, Syntax::of(name)) {
            Ok(v) => v,
            Err(e) => {
                self.report.errors.push(FileError {
                    file: path.to_path_buf(),
                    client: c.id,
                    line: e.line,
                    column: e.column,
                    message: e.message,
                });
                return None;
            }
        };
        let owner = self
            .users
            .get(&read.uid)
            .cloned()
            .unwrap_or_else(|| read.uid.to_string());
        let exposed = read.mode & 0o004 != 0 && dirs_traversable(path);

        for e in extract::entries(c, &value) {
            self.server(
                c, scope, path, project, &owner, exposed, read.mode, &read.text, &e,
            );
        }
        // Claude Code's local scope: `projects.<dir>.mcpServers` inside the user file.
        if c.project_records == ProjectRecords::ClaudeProjects
            && let Some(Value::Object(projects)) = value.get("projects")
        {
            for (dir, p) in projects {
                if let Some(servers) = p.get("mcpServers") {
                    let mut es = Vec::new();
                    extract::collection(c, servers, &mut es);
                    let dir = PathBuf::from(dir);
                    for e in &es {
                        self.server(
                            c,
                            Scope::Project,
                            path,
                            Some(&dir),
                            &owner,
                            exposed,
                            read.mode,
                            &read.text,
                            e,
                        );
                    }
                }
            }
        }
        Some(value)
    }

    #[allow(clippy::too_many_arguments)]
    fn server(
        &mut self,
        c: &'static ClientDef,
        scope: Scope,
        path: &Path,
        project: Option<&Path>,
        owner: &str,
        exposed: bool,
        mode: u32,
        text: &str,
        e: &RawEntry,
    ) {
        let mut a = risk::assess(e, &self.secrets);
        if exposed && a.has_secret {
            a.risks.push(Risk {
                flag: RiskFlag::WorldReadableSecret,
                detail: format!("file mode {:o}", mode & 0o7777),
            });
        }
        let transport = e.transport.unwrap_or(Transport::Stdio);
        let registry = registry::status(self.policy, a.url_raw.as_deref(), e.command.as_deref(), &e.args);
        let pids = match (&e.command, transport) {
            (Some(c), Transport::Stdio) => procs::running(&self.procs, c, &e.args),
            _ => Vec::new(),
        };
        let wrapped = (transport == Transport::Stdio)
            .then(|| crate::install::is_wrapped(e.command.as_deref().unwrap_or_default(), &e.args));
        self.report.servers.push(Server {
            client: c.id,
            scope,
            file: path.to_path_buf(),
            line: find_line(text, &e.name),
            project: project.map(Path::to_path_buf),
            owner: owner.to_string(),
            name: e.name.clone(),
            transport,
            command: a.command,
            args: a.args,
            url: a.url,
            env: e.env.iter().map(|(n, _)| n.clone()).collect(),
            headers: e.headers.iter().map(|(n, _)| n.clone()).collect(),
            enabled: e.enabled,
            launch_hash: launch_hash(e, transport),
            risks: a.risks,
            registry,
            pids,
            wrapped,
        });
    }
}

/// Can every local user reach the file (each ancestor directory has o+x)?
fn dirs_traversable(path: &Path) -> bool {
    let mut p = path.parent();
    while let Some(d) = p {
        if d.as_os_str().is_empty() {
            break;
        }
        match fs::metadata(d) {
            Ok(m) if m.mode() & 0o001 == 0 => return false,
            Ok(_) => {}
            Err(_) => return false,
        }
        p = d.parent();
    }
    true
}

/// sha256 over the canonical JSON of the launch as written.
fn launch_hash(e: &RawEntry, transport: Transport) -> String {
    let mut parts: Vec<Value> = vec![Value::from(transport.as_str())];
    if transport == Transport::Stdio {
        parts.push(Value::from(e.command.clone().unwrap_or_default()));
        parts.extend(e.args.iter().map(|a| Value::from(a.as_str())));
    } else {
        parts.push(Value::from(e.url.clone().unwrap_or_default()));
    }
    let canon = Value::Array(parts).to_string();
    hex::encode(Sha256::digest(canon.as_bytes()))
}

/// 1-based line of the first `"name"` (JSON), `name:` (YAML) or `.name]` (TOML) in `text`.
fn find_line(text: &str, name: &str) -> Option<usize> {
    let needles = [
        format!("\"{name}\""),
        format!("{name}:"),
        format!(".{name}]"),
        format!("'{name}'"),
        format!("name: {name}"),
    ];
    needles
        .iter()
        .filter_map(|n| text.find(n.as_str()))
        .min()
        .map(|pos| text[..pos].matches('\n').count() + 1)
}

/// `file:///home/me/proj%20x` -> `/home/me/proj x`; other schemes (remote workspaces) -> None.
fn file_uri_path(uri: &str) -> Option<PathBuf> {
    let rest = uri.strip_prefix("file://")?;
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(rest.get(i + 1..i + 3).unwrap_or(""), 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    s.starts_with('/').then(|| PathBuf::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_decode() {
        assert_eq!(
            file_uri_path("file:///home/a/my%20proj"),
            Some(PathBuf::from("/home/a/my proj"))
        );
        assert_eq!(file_uri_path("vscode-remote://ssh/x"), None);
    }

    #[test]
    fn find_line_of_each_syntax() {
        assert_eq!(find_line("{\n \"a\": {}\n}", "a"), Some(2));
        assert_eq!(find_line("x = 1\n[mcp_servers.b]\n", "b"), Some(2));
        assert_eq!(find_line("m:\n  c:\n", "c"), Some(2));
    }

    #[test]
    fn expand_handles_stars_and_globstar() {
        let d = tempfile::tempdir().expect("tmp");
        fs::create_dir_all(d.path().join("p/a/b")).expect("mkdir");
        fs::create_dir_all(d.path().join("q/one")).expect("mkdir");
        fs::write(d.path().join("p/a/b/.mcp.json"), "{}").expect("w");
        fs::write(d.path().join("q/one/x.yaml"), "").expect("w");
        let mut out = Vec::new();
        expand(d.path(), "p/**/.mcp.json", d.path(), &mut out);
        assert!(out.contains(&d.path().join("p/a/b/.mcp.json")), "{out:?}");
        let mut out = Vec::new();
        expand(d.path(), "q/*/*.yaml", d.path(), &mut out);
        assert_eq!(out, [d.path().join("q/one/x.yaml")]);
    }
}
