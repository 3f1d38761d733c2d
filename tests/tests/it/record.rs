//! Every audit record says which host wrote it: `hostname` and `host_id` are stamped when the
//! record is begun, for message records and for connection records alike (TLS ones are
//! checked in `tls::client_that_distrusts_the_ca_fails_is_reported_and_is_not_passed_through`).

use std::process::Command;

use mcpwatch_api::{AuditRecord, CallStatus};
use mcpwatch_tests::harness::Watched;
use mcpwatch_tests::peers::{self, Client};
use serde_json::json;

/// This host's name and the id the daemon must derive from `/etc/machine-id`:
/// the first 16 bytes (32 hex digits) of sha256(`mcpwatch host id:` + machine id).
pub fn expected_host() -> (String, String) {
    let hostname = nix::unistd::gethostname().expect("gethostname").into_string().expect("utf-8 hostname");
    let machine_id = std::fs::read_to_string("/etc/machine-id").expect("/etc/machine-id (the daemon's id source)");
    let out = Command::new("sh")
        .arg("-c")
        .arg("printf '%s' \"mcpwatch host id:$1\" | sha256sum")
        .arg("sh")
        .arg(machine_id.trim())
        .output()
        .expect("sha256sum");
    let digest = String::from_utf8_lossy(&out.stdout);
    let host_id = digest.split_whitespace().next().expect("sha256sum output")[..32].to_string();
    (hostname, host_id)
}

/// `rec` carries this host's stamp.
pub fn assert_host_stamp(rec: &AuditRecord) {
    let (hostname, host_id) = expected_host();
    assert_eq!(rec.hostname.as_deref(), Some(hostname.as_str()), "{rec:?}");
    assert_eq!(rec.host_id.as_deref(), Some(host_id.as_str()), "{rec:?}");
}

#[test]
fn every_record_names_its_host() {
    let server = peers::python_server().ip([127, 0, 0, 2].into()).json_response().spawn();
    let Some(w) = Watched::start("every_record_names_its_host", &server.addr().port().to_string()) else { return };
    let out = Client::python(&server.url()).cgroup(w.cgroup()).call("echo", json!({"text": "which host"})).run();
    assert_eq!(out.steps()[0]["text"], "which host", "{:?}", out.lines);
    let recs = w.daemon.wait_audit("the echo call completed", |r| {
        r.iter().any(|x| x.name.as_deref() == Some("echo") && x.status == CallStatus::Ok)
    });
    assert!(recs.len() >= 2, "{recs:?}");
    // Read back from the store through the control socket: the stamp is stored.
    for rec in &recs {
        assert_host_stamp(rec);
    }
}
