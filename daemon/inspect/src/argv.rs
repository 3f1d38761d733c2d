//! Command lines in audit records: every argument passes through the detectors first.
//!
//! Why this exists: the daemon records the argv of the process behind each call, and
//! agents are started with secrets on their command line (`--token=...`,
//! `--password hunter2`, a connection URL with credentials). A record is metadata, never
//! forwarded, so every hit is replaced whatever the detector's action (an `audit` action
//! means "do not rewrite traffic", not "store the value"). A value that follows a flag
//! whose name says it is secret (`--api-key X`) is judged as that key's value, as a
//! JSON value under `"api_key"` is.

use crate::scan::Inspector;

impl Inspector {
    /// `argv` with every detector hit replaced by its `<TYPE>` token.
    pub fn redact_argv(&self, argv: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(argv.len());
        let mut prev_flag: Option<&str> = None;
        for arg in argv {
            let redacted = match arg.split_once('=').filter(|(f, _)| is_flag(f)) {
                // `--flag=value`: the value is judged under the flag's name.
                Some((flag, value)) => format!("{flag}={}", self.redact_one(value, Some(flag_name(flag)))),
                None => self.redact_one(arg, prev_flag.map(flag_name)),
            };
            prev_flag = (is_flag(arg) && !arg.contains('=')).then_some(arg.as_str());
            out.push(redacted);
        }
        out
    }

    fn redact_one(&self, s: &str, key: Option<&str>) -> String {
        let cands = self.scan_with_key(s, key);
        if cands.is_empty() {
            return s.to_string();
        }
        let mut out = String::with_capacity(s.len());
        let mut last = 0;
        for c in &cands {
            if c.start < last {
                continue;
            }
            out.push_str(s.get(last..c.start).unwrap_or(""));
            out.push_str(self.det_replacement(c.det));
            last = c.end;
        }
        out.push_str(s.get(last..).unwrap_or(""));
        out
    }
}

fn is_flag(s: &str) -> bool {
    s.len() > 1 && s.starts_with('-') && !s.starts_with("---")
}

/// `--api-key` -> `api-key`.
fn flag_name(f: &str) -> &str {
    f.trim_start_matches('-')
}

#[cfg(test)]
mod tests {
    use crate::{Action, InspectConfig, Inspector};

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn secrets_and_pii_in_argv_are_redacted() {
        let ins = Inspector::new(&InspectConfig::default()).unwrap();
        let out = ins.redact_argv(&argv(&[
            "/usr/bin/agent",
            "--token=Zq8vPl2mXk4rT9wB",
            "--password",
            "hunter2-Planted!",
            "--ssn-file",
            "/tmp/x",
            "note 372-81-4419",
            "postgres://app:S3cr3tPw0rd@db.internal/app",
            "--verbose",
        ]));
        let joined = out.join(" ");
        for secret in ["Zq8vPl2mXk4rT9wB", "hunter2-Planted!", "372-81-4419", "S3cr3tPw0rd"] {
            assert!(!joined.contains(secret), "{secret} leaked: {out:?}");
        }
        assert_eq!(out[0], "/usr/bin/agent");
        assert!(out[1].starts_with("--token=<"), "{out:?}");
        assert_eq!(out[2], "--password");
        assert_eq!((out[4].as_str(), out[5].as_str(), out[8].as_str()), ("--ssn-file", "/tmp/x", "--verbose"));
    }

    #[test]
    fn audit_only_detectors_still_redact_argv() {
        let cfg = InspectConfig { default_action: Action::Audit, ..InspectConfig::default() };
        let ins = Inspector::new(&cfg).unwrap();
        let out = ins.redact_argv(&argv(&["agent", "--api-key", "sk-live-Zq8vPl2mXk4rT9wBxx"]));
        assert!(!out.join(" ").contains("Zq8vPl2mXk4rT9wB"), "{out:?}");
    }
}
