fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v { serde_json::Value::String(s) => out.push(s.clone()), serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)), serde_json::Value::Object(m) => m.values().for_each(|x| strings(x, out)), _ => {} }
}
fn main() {
    let ins = mcpwatch_inspect::Inspector::new(&Default::default()).unwrap();
    let text = std::fs::read_to_string("/work/shared/threats/cases.jsonl").unwrap();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let c: serde_json::Value = serde_json::from_str(l).unwrap();
        let cat = c["category"].as_str().unwrap();
        if ["pii","secret","tool_poisoning","rug_pull"].contains(&cat) { continue; }
        let mut ins_strs = Vec::new();
        strings(&c["input"], &mut ins_strs);
        for s in ins_strs {
            let v: serde_json::Value = serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s.clone()));
            for f in ins.scan_json(&v) {
                let st = if f.in_key { "KEY".to_string() } else { v.pointer(&f.pointer).and_then(|x| x.as_str()).map(|x| x[f.finding.start..f.finding.end].to_string()).unwrap_or_default() };
                println!("{} [{}] {} {:?}", c["id"].as_str().unwrap(), c["expected"]["action"], f.finding.detector, st.chars().take(60).collect::<String>());
            }
            let r = mcpwatch_inspect::poison::scan_result(&v);
            if r.score > 0 { println!("{} [{}] poison-result {:?} {:?}", c["id"].as_str().unwrap(), c["expected"]["action"], r.severity, r.signals.iter().map(|s| s.kind).collect::<Vec<_>>()); }
            if let Some(tools) = v.pointer("/result/tools").and_then(|t| t.as_array()) {
                for t in tools { let r = mcpwatch_inspect::poison::scan_tool(t, &[]); if r.score > 0 { println!("{} [{}] poison-tool {} {:?} {:?}", c["id"].as_str().unwrap(), c["expected"]["action"], t["name"], r.severity, r.signals.iter().map(|s| s.kind).collect::<Vec<_>>()); } }
            }
        }
    }
}
