//! Content inspection in the data path (issue 5): redaction both ways, poisoned tools,
//! rug pulls, and `mcpwatch inspect` offline. Real SDK client and server through eBPF.

use mcpwatch_api::CallStatus;
use mcpwatch_tests::daemon::DaemonOpts;
use mcpwatch_tests::harness::Watched;
use mcpwatch_tests::peers::{self, Client, Peer};
use serde_json::json;

const SSN: &str = "536-22-8741";
const CARD: &str = "4111 1111 1111 1111";

fn threat_server() -> Peer {
    peers::python_server().ip([127, 0, 0, 2].into()).json_response().arg("--threat-tools").spawn()
}

fn start(test: &str, server: &Peer, policy: Option<&str>) -> Option<Watched> {
    Watched::start_with(test, DaemonOpts { ports: Some(server.addr().port().to_string()), policy: policy.map(str::to_string), ..Default::default() })
}

#[test]
fn results_are_redacted_on_embedded_defaults_and_the_audit_keeps_no_raw_values() {
    let server = threat_server();
    // No --policy: the embedded default policy applies.
    let Some(w) = start("results_are_redacted_on_embedded_defaults", &server, None) else { return };
    let out = Client::python(&server.url()).cgroup(w.cgroup()).call("lookup_customer", json!({"customer_id": "c-42"})).run();
    let text = out.steps()[0]["text"].as_str().unwrap_or_default().to_string();
    assert!(!text.contains(SSN) && !text.contains(CARD), "raw PII reached the client: {text}");
    assert!(text.contains("<US_SSN>") && text.contains("<CREDIT_CARD>"), "{text}");
    // Contact data is recorded, not changed, by the default policy.
    assert!(text.contains("jane.doe@example.com"), "{text}");

    let recs = w.daemon.wait_audit("lookup record", |r| r.iter().any(|x| x.name.as_deref() == Some("lookup_customer") && x.status == CallStatus::Ok));
    let rec = recs.iter().find(|x| x.name.as_deref() == Some("lookup_customer")).unwrap();
    let found = |d: &str, action: &str| rec.findings.iter().any(|f| f.detector == d && f.direction == "response" && f.action == action);
    assert!(found("pii.us_ssn", "redact") && found("pii.credit_card", "redact") && found("pii.email", "audit"), "{:?}", rec.findings);
    let status = w.daemon.status();
    assert_eq!(status.policy.as_deref(), Some("<embedded default policy>"));
    // The store never holds the raw values.
    let audit_json = String::from_utf8_lossy(&w.daemon.cli(&["audit", "--json", "--limit", "0"]).stdout).to_string();
    // The values as the server sent them, and the card without its spaces. (Not a bare
    // "4111": four digits also turn up in hex hashes, ids and timestamps.)
    let card_digits: String = CARD.chars().filter(char::is_ascii_digit).collect();
    for raw in [SSN, CARD, card_digits.as_str()] {
        if let Some(at) = audit_json.find(raw) {
            let from = audit_json[..at].char_indices().rev().nth(80).map_or(0, |(i, _)| i);
            panic!("raw value {raw:?} in the audit log: …{}…", &audit_json[from..(at + raw.len()).min(audit_json.len())]);
        }
    }
}

/// Framing choice: results the server compresses. Clients accept gzip by default (httpx,
/// undici) and decode it, so a server behind a compression middleware sent results
/// mcpwatch could not read: the SSN went to the client unredacted and the audit had
/// no finding. mcpwatch now asks MCP servers for uncompressed answers.
#[test]
fn a_compressing_server_cannot_take_results_past_redaction() {
    let server = peers::python_server().ip([127, 0, 0, 2].into()).json_response().arg("--threat-tools").arg("--gzip").spawn();
    let Some(w) = start("a_compressing_server_cannot_take_results_past_redaction", &server, None) else { return };
    let out = Client::python(&server.url()).cgroup(w.cgroup()).call("lookup_customer", json!({"customer_id": "c-43"})).run();
    let text = out.steps()[0]["text"].as_str().unwrap_or_default().to_string();
    assert!(!text.contains(SSN) && !text.contains(CARD), "raw PII reached the client in a compressed answer: {text}");
    assert!(text.contains("<US_SSN>") && text.contains("<CREDIT_CARD>"), "{text}");
    let recs = w.daemon.wait_audit("lookup record", |r| r.iter().any(|x| x.name.as_deref() == Some("lookup_customer") && x.status == CallStatus::Ok));
    let rec = recs.iter().find(|x| x.name.as_deref() == Some("lookup_customer")).unwrap();
    assert!(rec.findings.iter().any(|f| f.detector == "pii.us_ssn" && f.action == "redact"), "{:?}", rec.findings);
}

#[test]
fn arguments_are_redacted_before_the_server_sees_them() {
    let server = threat_server();
    let policy = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n[inspect.detectors]\ndefault_action = \"redact\"\n";
    let Some(w) = start("arguments_are_redacted_before_the_server_sees_them", &server, Some(policy)) else { return };
    let out = Client::python(&server.url()).cgroup(w.cgroup()).call("echo", json!({"text": "mail bob.smith@corp-mail.com please"})).run();
    let seen = server.recorded_calls();
    let arg = seen[0]["arguments"]["text"].as_str().unwrap();
    assert_eq!(arg, "mail <EMAIL_ADDRESS> please", "what the server received");
    assert_eq!(out.steps()[0]["text"], "mail <EMAIL_ADDRESS> please");
    let recs = w.daemon.wait_audit("echo record", |r| r.iter().any(|x| x.name.as_deref() == Some("echo") && x.status == CallStatus::Ok));
    let rec = recs.iter().find(|x| x.name.as_deref() == Some("echo")).unwrap();
    assert!(rec.findings.iter().any(|f| f.detector == "pii.email" && f.direction == "request" && f.action == "redact"), "{:?}", rec.findings);
}

#[test]
fn poisoned_tools_are_stripped_and_calls_to_them_denied() {
    let server = threat_server();
    let Some(w) = start("poisoned_tools_are_stripped_and_calls_to_them_denied", &server, None) else { return };
    let out = Client::python(&server.url()).cgroup(w.cgroup()).list().call("add_numbers", json!({"a": 1, "b": 2, "sidenote": "x"})).run();
    let tools: Vec<&str> = out.steps()[0]["tools"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(!tools.contains(&"add_numbers"), "poisoned tool still listed: {tools:?}");
    assert!(tools.contains(&"echo") && tools.contains(&"weather"));
    assert_eq!(out.steps()[1]["ok"], false, "{:?}", out.lines);
    assert_eq!(out.steps()[1]["error"]["code"], -32001);
    assert!(!server.recorded_calls().iter().any(|c| c["tool"] == "add_numbers"), "the server saw a call to the poisoned tool");
    let list = w.daemon.list();
    let t = list[0].tools.iter().find(|t| t.name == "add_numbers").expect("inventory keeps the poisoned tool");
    assert!(t.hidden.is_some() && t.poisoning.is_some(), "{t:?}");
    assert!(list[0].alerts.iter().any(|a| a.contains("add_numbers")), "{:?}", list[0].alerts);
}

#[test]
fn changed_tool_definitions_trigger_the_pin_action() {
    let server = threat_server();
    let policy = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n[inspect]\npinning = \"hide\"\n";
    let Some(w) = start("changed_tool_definitions_trigger_the_pin_action", &server, Some(policy)) else { return };
    // First tools/list pins `weather`; the server changes it before the second.
    let out = Client::python(&server.url()).cgroup(w.cgroup()).list().list().call("weather", json!({"city": "Oslo"})).run();
    let names = |i: usize| -> Vec<String> { out.steps()[i]["tools"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect() };
    assert!(names(0).contains(&"weather".to_string()));
    assert!(!names(1).contains(&"weather".to_string()), "changed tool hidden: {:?}", names(1));
    assert_eq!(out.steps()[2]["ok"], false, "{:?}", out.lines);
    assert!(!server.recorded_calls().iter().any(|c| c["tool"] == "weather"));
    let list = w.daemon.list();
    let t = list[0].tools.iter().find(|t| t.name == "weather").unwrap();
    assert!(t.changed && !t.diff.is_empty() && t.diff[0].contains("description"), "{t:?}");
    let table = String::from_utf8_lossy(&w.daemon.cli(&["list"]).stdout).to_string();
    assert!(table.contains("weather [hid"), "flagged tools are listed first: {table}");

    // An operator accepts the new definition: the tool is back.
    let out = w.daemon.cli(&["pin", "accept", &list[0].endpoint, "weather"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Client::python(&server.url()).cgroup(w.cgroup()).call("weather", json!({"city": "Oslo"})).run();
    assert_eq!(out.steps()[0]["text"], "sunny in Oslo", "{:?}", out.lines);
}

#[test]
fn inspect_command_runs_detectors_offline() {
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("msg.json");
    std::fs::write(&msg, json!({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": format!("SSN {SSN} key AKIAQYLPMN5HHHFPZAM2")}]}}).to_string()).unwrap();
    let out = std::process::Command::new(mcpwatch_tests::daemon::bin("mcpwatch")).args(["inspect", "--json"]).arg(&msg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dets: Vec<&str> = v["findings"].as_array().unwrap().iter().map(|f| f["finding"]["detector"].as_str().unwrap()).collect();
    assert!(dets.contains(&"pii.us_ssn") && dets.contains(&"secret.aws_access_key"), "{dets:?}");
    let redacted = v["redacted"].to_string();
    assert!(!redacted.contains(SSN) && redacted.contains("<US_SSN>"), "{redacted}");
}

/// Regression: a warn-mode rule that matches every call (the example policy's per-user
/// rate limit) must not switch redaction off; inspection follows the server's mode.
#[test]
fn a_warn_mode_rule_does_not_switch_redaction_off() {
    let server = threat_server();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.toml")).unwrap();
    let Some(w) = start("a_warn_mode_rule_does_not_switch_redaction_off", &server, Some(&example)) else { return };
    let out = Client::python(&server.url()).cgroup(w.cgroup()).call("lookup_customer", json!({"customer_id": "c-7"})).run();
    let text = out.steps()[0]["text"].as_str().unwrap_or_default();
    assert!(!text.contains(SSN) && text.contains("<US_SSN>"), "{text}");
    let recs = w.daemon.wait_audit("lookup", |r| r.iter().any(|x| x.name.as_deref() == Some("lookup_customer") && x.status == CallStatus::Ok));
    let d = recs.iter().find(|x| x.name.as_deref() == Some("lookup_customer")).unwrap().decision.clone().unwrap();
    assert!(d.rules.iter().any(|r| r == "calls-per-user") && d.mode.as_str() == "warn", "the warn rule decided: {d:?}");
}
