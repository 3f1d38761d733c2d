//! Rough cost of one policy evaluation (the real benchmark is `cargo xtask bench`):
//! `cargo run --release -p mcpwatch-policy --example eval_speed`.

use std::time::Instant;

use mcpwatch_api::ProcessInfo;
use mcpwatch_policy::{Call, RateLimiter, Subject, Target, parse};
use serde_json::json;

fn main() {
    let src = include_str!("../../../examples/policy.toml");
    let policy = match parse(src, "examples/policy.toml") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}", e.render());
            std::process::exit(1);
        }
    };
    let ops = ProcessInfo {
        comm: "ops-agent".into(),
        exe: Some("/usr/local/bin/ops-agent".into()),
        uid: 1001,
        ..Default::default()
    };
    let subject = Subject {
        process: Some(&ops),
    };
    let target = Target {
        endpoint: "http://127.0.0.3:8766/mcp",
        host: "127.0.0.3",
        port: 8766,
        path: "/mcp",
    };
    let args = json!({"path": "/home/ops/project/src/main.rs"});
    let call = Call {
        method: "tools/call",
        name: Some("read_file"),
        arguments: Some(&args),
    };
    let mut limiter = RateLimiter::default();
    let n = 200_000u64;
    let start = Instant::now();
    let mut forwarded = 0u64;
    for i in 0..n {
        let mut d = policy.evaluate(&subject, &target, &call);
        limiter.apply(i / 1000, &mut d);
        forwarded += u64::from(d.effective == mcpwatch_policy::Effect::Forward);
    }
    let per_call = start.elapsed().as_nanos() / u128::from(n);
    println!(
        "evaluate + rate limiter: {per_call} ns per tools/call ({forwarded} of {n} forwarded)"
    );
    let start = Instant::now();
    let mut visible = 0u64;
    for _ in 0..n {
        visible += u64::from(policy.tool_visible(&subject, &target, "read_file"));
    }
    let per = start.elapsed().as_nanos() / u128::from(n);
    println!("tool_visible: {per} ns per tool ({visible} visible)");
}
