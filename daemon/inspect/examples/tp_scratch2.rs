fn main() {
    let v = mcpwatch_inspect::scan_throughput_fixture();
    let n = serde_json::to_string(&v).unwrap().len();
    let mut ids: Vec<String> = mcpwatch_inspect::BUILTIN_DETECTORS.iter().map(|d| d.id.to_string()).collect();
    ids.push("none".into());
    for id in ids {
        let mut cfg = mcpwatch_inspect::InspectConfig::default();
        if id == "none" { cfg.enabled = vec![]; cfg.decode_base64 = true; } else { cfg.enabled = vec![id.clone()]; cfg.decode_base64 = false; }
        let ins = mcpwatch_inspect::Inspector::new(&cfg).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..5 { std::hint::black_box(ins.scan_json(&v)); }
        let dt = t.elapsed().as_secs_f64() / 5.0;
        println!("{id:24} {:8.1} MB/s  {:.2} ms", n as f64 / dt / 1e6, dt*1e3);
    }
}
