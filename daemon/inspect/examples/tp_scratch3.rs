fn main() {
    let ins = mcpwatch_inspect::Inspector::new(&Default::default()).unwrap();
    let small: serde_json::Value = serde_json::from_str(r#"{"jsonrpc": "2.0", "id": 44, "method": "tools/call", "params": {"name": "send_email", "arguments": {"to": "billing@vendor-partner.example", "subject": "Customer record", "body": "Hi, as requested: Dana Whitfield, SSN 372-81-4419, card 4111-1111-1111-1111."}}}"#).unwrap();
    let clean: serde_json::Value = serde_json::from_str(r#"{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"The weather in Berlin is 21 degrees and sunny. Forecast for tomorrow: cloudy, 18 degrees, wind 12 km/h from the north-west. Updated 2025-06-18T10:00:00Z."}],"isError":false}}"#).unwrap();
    for (name, v) in [("pii-005", &small), ("clean", &clean)] {
        let t = std::time::Instant::now();
        let n = 20000;
        for _ in 0..n { let mut w = v.clone(); std::hint::black_box(ins.redact_json(&mut w)); }
        println!("{name}: {:.2} us per redact_json", t.elapsed().as_secs_f64() / n as f64 * 1e6);
    }
    let t = std::time::Instant::now();
    let _ = mcpwatch_inspect::Inspector::new(&Default::default()).unwrap();
    println!("Inspector::new {:.2} ms", t.elapsed().as_secs_f64()*1e3);
}
