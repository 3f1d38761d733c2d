//! `mcpwatch report --html` rendered by real headless Chromium (Debian `chromium`, installed by
//! `cargo xtask setup`; a required component: missing, the tests fail and say so).
//!
//! The report is built from fixture files (tests/fixtures/report: a daemon inventory, a scan, an
//! audit trail with hostile server and tool names), so every number is known. The tests take a
//! screenshot (the page renders) and assert on the DOM Chromium built (`--dump-dom`), parsed
//! into elements: rows of `table#servers` and their status cells, one `rect.bar` per tool with
//! the right `data-calls`, no element injected by an attacker-controlled name, no external asset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mcpwatch_api::ServerEntry;
use mcpwatch_tests::daemon::bin;

const CHROMIUM: &str = "/usr/bin/chromium";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/report")).join(name)
}

fn chromium() -> &'static str {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the HTML report test needs Debian `chromium` \
         (run `cargo xtask setup`, or `apt-get install chromium`)"
    );
    CHROMIUM
}

/// Run headless Chromium on `page` with `extra` flags; a fresh profile each time.
fn run_chromium(page: &Path, extra: &[&str]) -> Vec<u8> {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Screenshot the page; check it is a real 1280-wide PNG with content.
fn screenshot(page: &Path, dir: &Path) -> PathBuf {
    let png = dir.join("report.png");
    run_chromium(
        page,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,2000",
        ],
    );
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().expect("IHDR width"));
    let height = u32::from_be_bytes(bytes[20..24].try_into().expect("IHDR height"));
    assert_eq!((width, height), (1280, 2000));
    // A blank page compresses to a few KB; the rendered report is far larger.
    assert!(
        bytes.len() > 40_000,
        "screenshot suspiciously small ({} bytes): page blank?",
        bytes.len()
    );
    png
}

fn dom(page: &Path) -> Node {
    let html = String::from_utf8(run_chromium(page, &["--dump-dom"])).expect("utf8 DOM");
    parse(&html)
}

// ---- A reader for Chromium's DOM serialization ----------------------------------------------
// `--dump-dom` prints `document.documentElement.outerHTML`: every non-void element has an end
// tag, attribute values are double-quoted with `&amp; &quot; &nbsp;` escaped, text has
// `&amp; &lt; &gt; &nbsp;` escaped. That canonical form is all this reader handles.

#[derive(Debug, Default)]
struct Node {
    tag: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
    /// Direct text, in order, with children's text left out.
    text: String,
}

impl Node {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn has_class(&self, c: &str) -> bool {
        self.attr("class")
            .is_some_and(|v| v.split_whitespace().any(|x| x == c))
    }

    fn all<'a>(&'a self, pred: &dyn Fn(&Node) -> bool, out: &mut Vec<&'a Node>) {
        if pred(self) {
            out.push(self);
        }
        for c in &self.children {
            c.all(pred, out);
        }
    }

    fn find_all(&self, pred: impl Fn(&Node) -> bool) -> Vec<&Node> {
        let mut v = Vec::new();
        self.all(&pred, &mut v);
        v
    }

    fn by_id(&self, id: &str) -> &Node {
        let v = self.find_all(|n| n.attr("id") == Some(id));
        assert_eq!(v.len(), 1, "exactly one element #{id}");
        v[0]
    }

    fn text_content(&self) -> String {
        let mut s = self.text.clone();
        for c in &self.children {
            s.push_str(&c.text_content());
        }
        s
    }

    /// `tbody > tr` of a table.
    fn body_rows(&self) -> Vec<&Node> {
        self.children
            .iter()
            .filter(|c| c.tag == "tbody")
            .flat_map(|b| b.children.iter().filter(|r| r.tag == "tr"))
            .collect()
    }

    fn cells(&self) -> Vec<&Node> {
        self.children.iter().filter(|c| c.tag == "td").collect()
    }
}

const VOID: [&str; 13] = [
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr",
];

fn decode(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

fn parse(html: &str) -> Node {
    let mut stack = vec![Node {
        tag: "#document".into(),
        ..Default::default()
    }];
    let mut rest = html;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("<!--") {
            rest = r.split_once("-->").map_or("", |(_, after)| after);
        } else if rest.starts_with("<!") {
            rest = rest.split_once('>').map_or("", |(_, after)| after);
        } else if let Some(r) = rest.strip_prefix("</") {
            let (name, after) = r.split_once('>').expect("end tag closes");
            let node = stack.pop().expect("open element");
            assert_eq!(
                node.tag,
                name.to_ascii_lowercase(),
                "DOM serialization nests"
            );
            stack.last_mut().expect("parent").children.push(node);
            rest = after;
        } else if let Some(r) = rest.strip_prefix('<') {
            let (node, after) = start_tag(r);
            rest = after;
            if VOID.contains(&node.tag.as_str()) {
                stack.last_mut().expect("parent").children.push(node);
            } else if node.tag == "style" || node.tag == "script" {
                let end = format!("</{}>", node.tag);
                let (raw, after) = rest
                    .split_once(end.as_str())
                    .expect("raw text element closes");
                let mut node = node;
                node.text = raw.to_string();
                stack.last_mut().expect("parent").children.push(node);
                rest = after;
            } else {
                stack.push(node);
            }
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            stack
                .last_mut()
                .expect("parent")
                .text
                .push_str(&decode(&rest[..end]));
            rest = &rest[end..];
        }
    }
    assert_eq!(stack.len(), 1, "every element closed");
    stack.pop().expect("document")
}

/// Parse `name attr="v" attr2>` after the `<`.
fn start_tag(s: &str) -> (Node, &str) {
    let name_end = s
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .expect("tag name ends");
    let mut node = Node {
        tag: s[..name_end].to_ascii_lowercase(),
        ..Default::default()
    };
    let mut rest = &s[name_end..];
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('>') {
            return (node, r);
        }
        if let Some(r) = rest.strip_prefix("/>") {
            return (node, r);
        }
        let n_end = rest
            .find(|c: char| c == '=' || c == '>' || c.is_whitespace())
            .expect("attribute name ends");
        let name = rest[..n_end].to_string();
        rest = &rest[n_end..];
        if let Some(r) = rest.strip_prefix("=\"") {
            let v_end = r.find('"').expect("attribute value closes");
            node.attrs.push((name, decode(&r[..v_end])));
            rest = &r[v_end + 1..];
        } else {
            node.attrs.push((name, String::new()));
        }
    }
}

// ---- The tests -------------------------------------------------------------------------------

fn mcpwatch(args: &[&str]) {
    let out = Command::new(bin("mcpwatch"))
        .args(args)
        .env_remove("MCPWATCH_SOCKET")
        .output()
        .expect("run mcpwatch");
    assert!(
        out.status.success(),
        "mcpwatch {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Nothing an attacker put in a name became an element, and the page loads nothing external.
fn assert_inert(doc: &Node) {
    let injected = doc.find_all(|n| {
        matches!(
            n.tag.as_str(),
            "script" | "img" | "iframe" | "object" | "embed" | "link"
        )
    });
    assert!(
        injected.is_empty(),
        "unexpected elements: {:?}",
        injected.iter().map(|n| &n.tag).collect::<Vec<_>>()
    );
    let handlers = doc.find_all(|n| {
        n.attrs
            .iter()
            .any(|(a, _)| a.starts_with("on") || a == "src" || a == "href")
    });
    assert!(
        handlers.is_empty(),
        "event handlers or external references: {handlers:?}"
    );
}

/// `mcpwatch report --html PAGE ARGS`, screenshot it, and return its inert DOM.
fn render(page: &Path, args: &[&str]) -> Node {
    let mut all = vec!["report", "--html", path_str(page)];
    all.extend_from_slice(args);
    mcpwatch(&all);
    screenshot(page, page.parent().expect("page dir"));
    let doc = dom(page);
    assert_inert(&doc);
    doc
}

/// `data-status` of each row, in order.
fn statuses<'a>(rows: &[&'a Node]) -> Vec<&'a str> {
    rows.iter()
        .map(|r| r.attr("data-status").expect("data-status"))
        .collect()
}

fn chart_bars(doc: &Node, server: &str) -> BTreeMap<String, u64> {
    let charts = doc.find_all(|n| {
        n.tag == "svg" && n.has_class("chart") && n.attr("data-server") == Some(server)
    });
    assert_eq!(charts.len(), 1, "one chart for {server}");
    charts[0]
        .find_all(|n| n.tag == "rect" && n.has_class("bar"))
        .iter()
        .map(|r| {
            let calls = r
                .attr("data-calls")
                .expect("data-calls")
                .parse()
                .expect("number");
            (r.attr("data-tool").expect("data-tool").to_string(), calls)
        })
        .collect()
}

#[test]
fn html_report_renders_in_chromium_and_its_dom_matches_the_inventory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("report.html");
    let (network, scan, audit) = (
        fixture("network.json"),
        fixture("scan.json"),
        fixture("audit.ndjson"),
    );
    let doc = render(
        &page,
        &[
            "--network",
            path_str(&network),
            "--scan",
            path_str(&scan),
            "--audit",
            path_str(&audit),
        ],
    );
    assert_eq!(
        doc.by_id("title").text_content(),
        "MCP report: fixture-host",
        "host named by the scan file"
    );

    // Servers by status: the three network servers, the configured billing entry folded into
    // its network server (same host:port/path), three configured-only or running ones.
    let expected: BTreeMap<&str, &str> = [
        ("https://tools.evil.example:443/mcp", "shadow"),
        ("stdio:uvx mcp-server-git", "running"),
        (
            "https://crm.example.com/mcp?key=[REDACTED]",
            "configured-only",
        ),
        (
            "stdio:npx -y @modelcontextprotocol/server-filesystem /home/bob",
            "configured-only",
        ),
        ("http://127.0.0.2:18001/mcp", "registered"),
        ("http://127.0.0.3:9000/mcp", "registered"),
    ]
    .into_iter()
    .collect();
    let rows = doc.by_id("servers").body_rows();
    assert_eq!(rows.len(), expected.len(), "one row per server");
    let mut seen = BTreeMap::new();
    for row in &rows {
        let status = row.attr("data-status").expect("data-status");
        let cells = row.cells();
        assert!(
            cells[0].has_class(&format!("s-{status}")),
            "status cell styled as {status}"
        );
        assert!(
            cells[0].text_content().to_lowercase().starts_with(status),
            "status cell says {status}"
        );
        assert_eq!(
            cells[1].text_content(),
            row.attr("data-server").expect("data-server")
        );
        seen.insert(cells[1].text_content(), status.to_string());
    }
    let seen: BTreeMap<&str, &str> = seen.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(seen, expected);
    // Most alarming first.
    let order = statuses(&rows);
    assert_eq!(
        order,
        [
            "shadow",
            "running",
            "configured-only",
            "configured-only",
            "registered",
            "registered"
        ]
    );
    // The hostile serverInfo name is text, not markup.
    let shadow = rows[0].cells();
    assert_eq!(
        shadow[2].text_content(),
        "<script>alert(\"x\")</script>/0.1"
    );

    // Summary cards agree with the table.
    for (id, want) in [
        ("count-servers", "6"),
        ("count-shadow", "1"),
        ("count-running", "1"),
        ("count-configured-only", "2"),
        ("count-registered", "2"),
        ("count-calls", "26"),
        ("count-denied", "2"),
        ("count-redacted", "1"),
        ("count-changed", "1"),
        ("coverage-percent", "50%"),
    ] {
        let card = doc.by_id(id);
        let value = card
            .children
            .iter()
            .find(|c| c.tag == "b")
            .expect("value")
            .text_content();
        assert_eq!(value, want, "#{id}");
    }
    assert_eq!(doc.by_id("cov-watched").text_content(), "3");
    assert_eq!(doc.by_id("cov-known").text_content(), "6");

    // One chart per network server with calls, one bar per tool, counts from the inventory.
    let servers: Vec<ServerEntry> =
        serde_json::from_str(&std::fs::read_to_string(&network).expect("fixture"))
            .expect("fixture inventory");
    let charts = doc.find_all(|n| n.tag == "svg" && n.has_class("chart"));
    assert_eq!(charts.len(), servers.len());
    for s in &servers {
        let want: BTreeMap<String, u64> =
            s.tools.iter().map(|t| (t.name.clone(), t.calls)).collect();
        assert_eq!(
            chart_bars(&doc, &s.endpoint),
            want,
            "bars of {}",
            s.endpoint
        );
    }
    // Bars are drawn to scale: the busiest tool has the widest bar.
    let billing = doc.find_all(|n| {
        n.tag == "svg" && n.attr("data-server") == Some("http://127.0.0.2:18001/mcp")
    });
    let width = |tool: &str| -> u64 {
        let bars = billing[0].find_all(|n| n.tag == "rect" && n.attr("data-tool") == Some(tool));
        bars[0]
            .attr("width")
            .expect("width")
            .parse()
            .expect("number")
    };
    assert!(
        width("charge") > width("refund")
            && width("refund") > width("<img src=x onerror=alert(1)>")
    );
    assert_eq!(width("lookup"), 0);

    // Denied and redacted calls from the audit trail; the changed tool; risk flags.
    let denied = doc.by_id("denied").body_rows();
    assert_eq!(denied.len(), 2);
    let tools: Vec<String> = denied.iter().map(|r| r.cells()[3].text_content()).collect();
    assert_eq!(tools, ["exfil", "refund"], "newest first");
    assert!(
        denied[1].cells()[4]
            .text_content()
            .contains("refunds need a human <b>approval</b>")
    );
    let redacted = doc.by_id("redacted").body_rows();
    assert_eq!(redacted.len(), 1);
    assert!(
        redacted[0].cells()[4]
            .text_content()
            .contains("aws-access-key")
    );
    let changed = doc.by_id("changed").body_rows();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].attr("data-tool"), Some("exfil"));
    assert!(
        changed[0].cells()[3]
            .text_content()
            .contains("send ~/.ssh/id_rsa")
    );
    let flags: Vec<&str> = doc
        .by_id("risks")
        .body_rows()
        .iter()
        .map(|r| r.attr("data-flag").expect("flag"))
        .collect();
    assert_eq!(flags.len(), 3);
    assert_eq!(flags.iter().filter(|f| **f == "unpinned-fetch").count(), 2);
}

#[test]
fn fleet_report_merges_hosts_and_renders_in_chromium() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inputs = dir.path().join("hosts");
    std::fs::create_dir(&inputs).expect("mkdir");
    // web-1: the daemon's raw inventory (names no host: the file does); fixture-host: a scan.
    std::fs::copy(fixture("network.json"), inputs.join("web-1.json")).expect("copy");
    std::fs::copy(fixture("scan.json"), inputs.join("laptop.json")).expect("copy");
    let page = dir.path().join("fleet.html");
    let doc = render(&page, &["--merge", path_str(&inputs)]);

    let hosts: BTreeMap<String, (String, String)> = doc
        .by_id("hosts")
        .body_rows()
        .iter()
        .map(|r| {
            let c = r.cells();
            (
                c[0].text_content(),
                (c[1].text_content(), c[6].text_content()),
            )
        })
        .collect();
    let want: BTreeMap<String, (String, String)> = [
        (
            "fixture-host".to_string(),
            ("4".to_string(), "0".to_string()),
        ),
        ("web-1".to_string(), ("3".to_string(), "26".to_string())),
    ]
    .into_iter()
    .collect();
    assert_eq!(hosts, want, "hosts: servers and calls");

    let rows = doc.by_id("servers").body_rows();
    assert_eq!(rows.len(), 7);
    let order = statuses(&rows);
    assert_eq!(
        order,
        [
            "shadow",
            "running",
            "configured-only",
            "configured-only",
            "configured-only",
            "registered",
            "registered"
        ],
        "most alarming first across hosts"
    );
    // A note that holds for every host is said once, without host names.
    let notes: Vec<String> = doc
        .by_id("notes")
        .find_all(|n| n.has_class("note"))
        .iter()
        .map(|n| n.text_content())
        .collect();
    assert_eq!(
        notes
            .iter()
            .filter(|n| n.contains("bypass is not reported"))
            .count(),
        1,
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("fixture-host: no network inventory")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("web-1: client configurations were not scanned")),
        "{notes:?}"
    );
    let mut per_host: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in &rows {
        let c = r.cells();
        *per_host
            .entry((
                c[0].text_content(),
                r.attr("data-status").expect("status").to_string(),
            ))
            .or_default() += 1;
    }
    let key = |h: &str, s: &str| (h.to_string(), s.to_string());
    // On the laptop nothing was seen on the network: billing is configured-only there.
    assert_eq!(
        per_host.get(&key("fixture-host", "configured-only")),
        Some(&3)
    );
    assert_eq!(per_host.get(&key("fixture-host", "running")), Some(&1));
    assert_eq!(per_host.get(&key("web-1", "registered")), Some(&2));
    assert_eq!(per_host.get(&key("web-1", "shadow")), Some(&1));
    assert_eq!(
        doc.by_id("title").text_content(),
        "MCP fleet report: 2 hosts"
    );
}

#[test]
fn live_report_from_a_real_daemon_charts_the_calls_it_saw() {
    use mcpwatch_tests::daemon::{Daemon, DaemonOpts};
    use mcpwatch_tests::peers::{self, Client};
    use serde_json::json;

    chromium();
    let server = peers::python_server()
        .json_response()
        .host_check(peers::HostCheck::Off)
        .spawn();
    let daemon = Daemon::start(DaemonOpts {
        static_upstream: Some(server.addr()),
        ..Default::default()
    });
    let url = format!("http://127.0.0.1:{}/mcp", daemon.port);
    Client::python(&url)
        .call("echo", json!({"text": "one"}))
        .call("echo", json!({"text": "two"}))
        .call("add", json!({"a": 1, "b": 2}))
        .run();
    daemon.wait_audit("three calls", |r| {
        r.iter()
            .filter(|x| {
                x.method.as_deref() == Some("tools/call")
                    && x.status == mcpwatch_api::CallStatus::Ok
            })
            .count()
            == 3
    });
    let inventory = daemon.list();
    assert_eq!(inventory.len(), 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("live.html");
    let out = daemon.cli(&[
        "report",
        "--no-scan",
        "--host",
        "live-host",
        "--html",
        path_str(&page),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = dom(&page);
    assert_inert(&doc);
    let rows = doc.by_id("servers").body_rows();
    assert_eq!(rows.len(), 1);
    let want_status = if inventory[0].registered.is_some() {
        "registered"
    } else {
        "shadow"
    };
    assert_eq!(rows[0].attr("data-status"), Some(want_status));
    assert_eq!(
        rows[0].attr("data-server"),
        Some(inventory[0].endpoint.as_str())
    );
    // One bar per tool the daemon knows, with its per-tool counter. The daemon counts a call per
    // tool only once the tool is listed, and the Python SDK lists tools after its first call:
    // the remainder is shown as unattributed rather than dropped.
    let bars = chart_bars(&doc, &inventory[0].endpoint);
    let want: BTreeMap<String, u64> = inventory[0]
        .tools
        .iter()
        .map(|t| (t.name.clone(), t.calls))
        .collect();
    assert_eq!(bars, want);
    assert!(
        bars.get("echo").is_some_and(|n| *n >= 1) && bars.get("add") == Some(&1),
        "{bars:?}"
    );
    let attributed: u64 = bars.values().sum();
    assert_eq!(inventory[0].call_count, 3);
    if attributed < 3 {
        let rest = doc.find_all(|n| n.has_class("unattributed"));
        assert_eq!(rest.len(), 1);
        assert!(
            rest[0]
                .text_content()
                .starts_with(&format!("{} calls", 3 - attributed)),
            "{}",
            rest[0].text_content()
        );
    }
    // The audit trail was read: the lists say "None." rather than "unknown".
    assert_eq!(
        doc.by_id("count-denied")
            .children
            .iter()
            .find(|c| c.tag == "b")
            .map(Node::text_content),
        Some("0".into())
    );
    assert_eq!(
        doc.by_id("count-calls")
            .children
            .iter()
            .find(|c| c.tag == "b")
            .map(Node::text_content),
        Some("3".into())
    );
}
