fn main() {
    let v = mcpwatch_inspect::scan_throughput_fixture();
    let n = serde_json::to_string(&v).unwrap().len();
    let ins = mcpwatch_inspect::Inspector::new(&Default::default()).unwrap();
    let t = std::time::Instant::now();
    let mut c = 0;
    for _ in 0..10 { c += ins.scan_json(&v).len(); }
    let dt = t.elapsed().as_secs_f64() / 10.0;
    println!("scan_json: {} bytes, {} findings, {:.1} MB/s", n, c / 10, n as f64 / dt / 1e6);
    let t = std::time::Instant::now();
    for _ in 0..10 { let mut w = v.clone(); ins.redact_json(&mut w); }
    let dt = t.elapsed().as_secs_f64() / 10.0;
    println!("redact_json (incl clone): {:.1} MB/s", n as f64 / dt / 1e6);
    let t = std::time::Instant::now();
    for _ in 0..10 { std::hint::black_box(mcpwatch_inspect::poison::scan_result(&v)); }
    let dt = t.elapsed().as_secs_f64() / 10.0;
    println!("scan_result: {:.1} MB/s", n as f64 / dt / 1e6);
    let f = ins.scan_json(&v);
    let mut counts = std::collections::BTreeMap::new();
    for x in &f { *counts.entry(x.finding.detector.clone()).or_insert(0) += 1; }
    println!("{counts:?}");
}
