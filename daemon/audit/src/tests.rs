//! Store behaviour against a real sled database in a temporary directory.

use super::*;
use mcpwatch_api::{CallStatus, ClientUse, MessageKind, ProcessInfo, ToolEntry};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn opts(max_records: u64) -> StoreOptions {
    StoreOptions {
        max_records,
        flush_every_ms: None,
        ..Default::default()
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir, opts(1_000_000)).expect("open store")
}

/// A record stamped `ts_ms` with an id taken at that same instant.
fn rec_at(store: &Store, ts_ms: u64, server: &str, tool: Option<&str>) -> AuditRecord {
    AuditRecord {
        schema: AUDIT_SCHEMA_VERSION,
        id: store.inner.ids.next_at(ts_ms),
        ts_ms,
        server: server.to_string(),
        host: Some(
            server
                .split("://")
                .nth(1)
                .unwrap_or("")
                .split('/')
                .next()
                .unwrap_or("")
                .into(),
        ),
        transport: "streamable-http".into(),
        kind: MessageKind::Request,
        direction: "client->server".into(),
        method: Some(
            if tool.is_some() {
                "tools/call"
            } else {
                "tools/list"
            }
            .into(),
        ),
        name: tool.map(str::to_string),
        process: Some(std::sync::Arc::new(ProcessInfo {
            tgid: 42,
            comm: "python3".into(),
            ..Default::default()
        })),
        request_bytes: 100,
        ..Default::default()
    }
}

/// Every stored inventory entry, in endpoint order.
fn servers(store: &Store) -> Vec<ServerEntry> {
    let mut out = Vec::new();
    store.each_server(|s| out.push(s)).expect("servers");
    out
}

fn ids(recs: &[AuditRecord]) -> Vec<u64> {
    recs.iter().map(|r| r.ts_ms).collect()
}

#[test]
fn store_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Store>();
}

#[test]
fn insert_get_roundtrip() {
    let dir = tmp();
    let store = open(dir.path());
    let mut rec = rec_at(&store, 1_000, "http://127.0.0.1:18001/mcp", Some("add"));
    rec.schema = 0; // unset by the caller: stored as the current version
    rec.notes = vec!["batch of 3".into()];
    rec.status = CallStatus::JsonrpcError {
        code: -32601,
        message: "nope".into(),
    };
    store.insert_record(&rec).expect("insert");
    let got = store.get_record(&rec.id).expect("get").expect("present");
    assert_eq!(
        got,
        AuditRecord {
            schema: AUDIT_SCHEMA_VERSION,
            ..rec.clone()
        }
    );
    assert_eq!(store.record_count(), 1);
    assert_eq!(
        store.get_record("00000000000000000000000000").expect("get"),
        None
    );
}

#[test]
fn insert_rejects_duplicates_bad_ids_and_future_schemas() {
    let dir = tmp();
    let store = open(dir.path());
    let rec = rec_at(&store, 1_000, "http://a/mcp", None);
    store.insert_record(&rec).expect("insert");
    assert!(matches!(
        store.insert_record(&rec),
        Err(StoreError::DuplicateId { .. })
    ));
    for bad in ["", "1", "abc", "0000000000000000000000000x"] {
        let r = AuditRecord {
            id: bad.into(),
            ..rec.clone()
        };
        assert!(
            matches!(store.insert_record(&r), Err(StoreError::InvalidId { .. })),
            "{bad:?}"
        );
        assert!(
            matches!(store.update_record(&r), Err(StoreError::InvalidId { .. })),
            "{bad:?}"
        );
    }
    let future = AuditRecord {
        id: store.new_record_id(),
        schema: AUDIT_SCHEMA_VERSION + 1,
        ..rec.clone()
    };
    assert!(matches!(
        store.insert_record(&future),
        Err(StoreError::UnsupportedSchema { .. })
    ));
    assert_eq!(store.record_count(), 1);
}

#[test]
fn update_replaces_in_place() {
    let dir = tmp();
    let store = open(dir.path());
    let mut rec = rec_at(&store, 1_000, "http://a/mcp", Some("add"));
    store.insert_record(&rec).expect("insert");
    rec.status = CallStatus::Ok;
    rec.duration_us = Some(1234);
    rec.response_bytes = 77;
    store.update_record(&rec).expect("update");
    assert_eq!(store.get_record(&rec.id).expect("get"), Some(rec.clone()));
    assert_eq!(store.record_count(), 1);
    assert_eq!(
        store.query(&AuditFilter::default()).expect("query"),
        vec![rec]
    );
}

/// Records are encoded into a buffer the writing thread keeps: a record larger than
/// what it keeps, then small ones, then the large one completed, each read back as
/// written, and the chain verifies (every value hashed is the value stored).
#[test]
fn the_reused_encoding_buffer_leaks_nothing_between_records() {
    let dir = tmp();
    let store = open(dir.path());
    let mut big = rec_at(&store, 1_000, "http://a/mcp", Some("add"));
    big.notes = vec!["n".repeat(KEEP_ENCODING + 10)];
    let small = rec_at(&store, 1_001, "http://a/mcp", Some("sub"));
    let old_schema = AuditRecord { schema: 0, ..rec_at(&store, 1_002, "http://b/mcp", None) };
    store.insert_record(&big).expect("insert big");
    store.insert_record(&small).expect("insert small");
    store.insert_record(&old_schema).expect("insert schema 0");
    big.status = CallStatus::Ok;
    big.response_bytes = 9;
    store.finish_record(&big).expect("finish big");
    store.sync().expect("sync");
    assert_eq!(store.get_record(&big.id).expect("get"), Some(big.clone()));
    assert_eq!(store.get_record(&small.id).expect("get"), Some(small.clone()));
    let upgraded = store.get_record(&old_schema.id).expect("get").expect("stored");
    assert_eq!(upgraded, AuditRecord { schema: AUDIT_SCHEMA_VERSION, ..old_schema });
    assert!(store.verify().expect("verify").problems.is_empty());
}

#[test]
fn update_of_missing_record_stores_it() {
    let dir = tmp();
    let store = open(dir.path());
    let rec = rec_at(&store, 1_000, "http://a/mcp", Some("add"));
    store.update_record(&rec).expect("update");
    assert_eq!(store.get_record(&rec.id).expect("get"), Some(rec));
    assert_eq!(store.record_count(), 1);
}

#[test]
fn new_record_ids_are_unique_and_increasing() {
    let dir = tmp();
    let store = open(dir.path());
    let mut all: Vec<String> = Vec::new();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let s = store.clone();
            std::thread::spawn(move || (0..2_000).map(|_| s.new_record_id()).collect::<Vec<_>>())
        })
        .collect();
    for h in handles {
        let ids = h.join().expect("thread");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "per-thread ids must increase"
        );
        all.extend(ids);
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "ids must be unique");
    assert!(
        all.iter()
            .all(|id| id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_digit()))
    );
}

#[test]
fn concurrent_inserts_are_all_counted() {
    let dir = tmp();
    let store = open(dir.path());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let s = store.clone();
            std::thread::spawn(move || {
                for i in 0..250u64 {
                    let rec = AuditRecord {
                        id: s.new_record_id(),
                        ts_ms: t * 1000 + i,
                        ..Default::default()
                    };
                    s.insert_record(&rec).expect("insert");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    assert_eq!(store.record_count(), 1_000);
    assert_eq!(
        store.query(&AuditFilter::default()).expect("query").len(),
        1_000
    );
}

/// Records at t = 1000, 2000, ... 10000 across two servers and a few tools.
fn seeded(store: &Store) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    for i in 1..=10u64 {
        let server = if i % 2 == 0 {
            "http://127.0.0.1:18002/mcp"
        } else {
            "https://api.example.com:443/mcp"
        };
        let tool = match i % 3 {
            0 => Some("search"),
            1 => Some("add"),
            _ => None,
        };
        let rec = rec_at(store, i * 1000, server, tool);
        store.insert_record(&rec).expect("insert");
        out.push(rec);
    }
    out
}

#[test]
fn query_without_filter_is_everything_in_time_order() {
    let dir = tmp();
    let store = open(dir.path());
    let all = seeded(&store);
    assert_eq!(store.query(&AuditFilter::default()).expect("query"), all);
}

#[test]
fn query_since() {
    let dir = tmp();
    let store = open(dir.path());
    seeded(&store);
    let f = AuditFilter {
        since_ms: Some(7_000),
        ..Default::default()
    };
    assert_eq!(
        ids(&store.query(&f).expect("query")),
        vec![7_000, 8_000, 9_000, 10_000]
    );
    let f = AuditFilter {
        since_ms: Some(10_001),
        ..Default::default()
    };
    assert!(store.query(&f).expect("query").is_empty());
}

#[test]
fn query_server_matches_endpoint_or_host_substring() {
    let dir = tmp();
    let store = open(dir.path());
    seeded(&store);
    let f = AuditFilter {
        server: Some("18002".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(&store.query(&f).expect("query")),
        vec![2_000, 4_000, 6_000, 8_000, 10_000]
    );
    // Host-only hit: the endpoint of this record says nothing about "example".
    let dir2 = tmp();
    let s2 = open(dir2.path());
    let mut r = rec_at(&s2, 5, "http://10.0.0.1:80/mcp", None);
    r.host = Some("mcp.example.org".into());
    s2.insert_record(&r).expect("insert");
    let f = AuditFilter {
        server: Some("example.org".into()),
        ..Default::default()
    };
    assert_eq!(s2.query(&f).expect("query"), vec![r]);
}

#[test]
fn query_tool_is_exact() {
    let dir = tmp();
    let store = open(dir.path());
    seeded(&store);
    let f = AuditFilter {
        tool: Some("search".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(&store.query(&f).expect("query")),
        vec![3_000, 6_000, 9_000]
    );
    let f = AuditFilter {
        tool: Some("sea".into()),
        ..Default::default()
    };
    assert!(store.query(&f).expect("query").is_empty());
}

#[test]
fn query_limit_keeps_the_newest_in_time_order() {
    let dir = tmp();
    let store = open(dir.path());
    seeded(&store);
    let f = AuditFilter {
        limit: Some(3),
        ..Default::default()
    };
    assert_eq!(
        ids(&store.query(&f).expect("query")),
        vec![8_000, 9_000, 10_000]
    );
    let f = AuditFilter {
        limit: Some(2),
        tool: Some("add".into()),
        ..Default::default()
    };
    assert_eq!(ids(&store.query(&f).expect("query")), vec![7_000, 10_000]);
    let f = AuditFilter {
        limit: Some(10),
        since_ms: Some(4_000),
        server: Some("example.com".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(&store.query(&f).expect("query")),
        vec![5_000, 7_000, 9_000]
    );
    let f = AuditFilter {
        limit: Some(0),
        ..Default::default()
    };
    assert!(store.query(&f).expect("query").is_empty());
}

#[test]
fn query_since_seeks_by_key_instead_of_scanning() {
    let dir = tmp();
    let store = open(dir.path());
    // An old key carrying a recent ts_ms: a full scan would return it, a seek to
    // `since` (minus the slack) never reads it.
    let mut stray = rec_at(&store, 1_000, "http://a/mcp", None);
    stray.ts_ms = 10_000_000;
    store.insert_record(&stray).expect("insert");
    let inside = rec_at(&store, 10_000_000, "http://a/mcp", None);
    store.insert_record(&inside).expect("insert");
    let f = AuditFilter {
        since_ms: Some(9_000_000),
        ..Default::default()
    };
    assert_eq!(store.query(&f).expect("query"), vec![inside.clone()]);
    // Without `since` both are visible, proving the stray one is otherwise matchable.
    assert_eq!(
        store.query(&AuditFilter::default()).expect("query").len(),
        2
    );
    // A key a little older than its ts_ms (within the slack) is still found.
    let mut late = rec_at(&store, 20_000_000, "http://a/mcp", None);
    late.ts_ms = 20_000_000 + SINCE_SEEK_SLACK_MS / 2;
    store.insert_record(&late).expect("insert");
    let f = AuditFilter {
        since_ms: Some(late.ts_ms),
        ..Default::default()
    };
    assert_eq!(store.query(&f).expect("query"), vec![late]);
}

#[test]
fn servers_put_replace_and_list() {
    let dir = tmp();
    let store = open(dir.path());
    let mut a = ServerEntry {
        endpoint: "http://127.0.0.1:18003/mcp".into(),
        transport: "streamable-http".into(),
        server_name: Some("demo".into()),
        tools: vec![ToolEntry {
            name: "add".into(),
            hash: "ab".into(),
            first_seen_ms: 1,
            calls: 2,
            ..Default::default()
        }],
        clients: vec![ClientUse {
            comm: "node".into(),
            uid: 1000,
            ..Default::default()
        }],
        capabilities: Some(serde_json::json!({"tools": {"listChanged": true}})),
        ..Default::default()
    };
    let b = ServerEntry {
        endpoint: "http://127.0.0.1:18004/mcp".into(),
        ..Default::default()
    };
    store.put_server(&b).expect("put");
    store.put_server(&a).expect("put");
    a.call_count = 9;
    store.put_server(&a).expect("put again");
    assert_eq!(servers(&store), vec![a, b]);
}

#[test]
fn records_and_servers_survive_reopen() {
    let dir = tmp();
    let (records, server, last_id) = {
        let store = open(dir.path());
        let records = seeded(&store);
        let server = ServerEntry {
            endpoint: "http://127.0.0.1:18005/mcp".into(),
            call_count: 4,
            ..Default::default()
        };
        store.put_server(&server).expect("put");
        // An id from "the future" (clock stepped back since): new ids must still sort after it.
        let future = rec_at(&store, id::now_ms() + 86_400_000, "http://a/mcp", None);
        store.insert_record(&future).expect("insert");
        store.flush().expect("flush");
        let mut records = records;
        records.push(future.clone());
        (records, server, future.id)
    };
    let store = open(dir.path());
    assert_eq!(store.record_count(), records.len() as u64);
    assert_eq!(
        store.query(&AuditFilter::default()).expect("query"),
        records
    );
    assert_eq!(servers(&store), vec![server]);
    let next = store.new_record_id();
    assert!(next > last_id, "{next} must sort after {last_id}");
}

#[test]
fn second_opener_gets_a_clear_lock_error() {
    let dir = tmp();
    let first = open(dir.path());
    let err = Store::open(dir.path(), opts(10)).expect_err("second open must fail");
    match &err {
        StoreError::Locked { dir: d, holder } => {
            assert_eq!(d, dir.path());
            assert_eq!(*holder, Some(std::process::id()));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("another mcpwatchd"), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    // A clone keeps the lock; dropping the last handle releases it.
    let clone = first.clone();
    drop(first);
    assert!(matches!(
        Store::open(dir.path(), opts(10)),
        Err(StoreError::Locked { .. })
    ));
    drop(clone);
    Store::open(dir.path(), opts(10)).expect("open after release");
}

#[test]
fn pruning_keeps_the_newest_within_the_bound() {
    let dir = tmp();
    let max = 128u64;
    let store = Store::open(dir.path(), opts(max)).expect("open");
    let mut all = Vec::new();
    for i in 0..1_000u64 {
        let rec = rec_at(&store, 1_000 + i, "http://a/mcp", None);
        store.insert_record(&rec).expect("insert");
        all.push(rec);
        assert!(store.record_count() <= max, "bound exceeded at insert {i}");
    }
    let slack = max / 64;
    let kept = store.query(&AuditFilter::default()).expect("query");
    assert_eq!(kept.len() as u64, store.record_count());
    assert!(
        store.record_count() >= max - slack,
        "pruned too much: {}",
        store.record_count()
    );
    // What is kept is exactly the newest records.
    assert_eq!(kept, all[all.len() - kept.len()..].to_vec());
    assert_eq!(store.get_record(&all[0].id).expect("get"), None);
}

#[test]
fn lowering_the_bound_prunes_at_open() {
    let dir = tmp();
    let all = {
        let store = open(dir.path());
        (0..50u64)
            .map(|i| {
                let rec = rec_at(&store, 1_000 + i, "http://a/mcp", None);
                store.insert_record(&rec).expect("insert");
                rec
            })
            .collect::<Vec<_>>()
    };
    let store = Store::open(dir.path(), opts(10)).expect("reopen");
    assert_eq!(store.record_count(), 10);
    assert_eq!(
        store.query(&AuditFilter::default()).expect("query"),
        all[40..].to_vec()
    );
}

#[test]
fn corrupt_and_newer_values_are_skipped_not_fatal() {
    let dir = tmp();
    let store = open(dir.path());
    let good1 = rec_at(&store, 1_000, "http://a/mcp", Some("add"));
    store.insert_record(&good1).expect("insert");
    let corrupt_id = store.inner.ids.next_at(2_000);
    store
        .inner
        .records
        .insert(corrupt_id.as_bytes(), &b"{\"schema\":1,\"id\":\x00\xff"[..])
        .expect("raw");
    let newer_id = store.inner.ids.next_at(3_000);
    store
        .inner
        .records
        .insert(
            newer_id.as_bytes(),
            &br#"{"schema":99,"id":"x","ts_ms":3000,"shape":"new"}"#[..],
        )
        .expect("raw");
    let good2 = rec_at(&store, 4_000, "http://a/mcp", Some("add"));
    store.insert_record(&good2).expect("insert");

    assert_eq!(
        store.query(&AuditFilter::default()).expect("query"),
        vec![good1.clone(), good2.clone()]
    );
    let f = AuditFilter {
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(store.query(&f).expect("query"), vec![good1, good2]);

    assert!(matches!(
        store.get_record(&corrupt_id),
        Err(StoreError::Unreadable {
            reason: DecodeError::Corrupt(_),
            ..
        })
    ));
    assert!(matches!(
        store.get_record(&newer_id),
        Err(StoreError::Unreadable {
            reason: DecodeError::NewerSchema { found: 99, .. },
            ..
        })
    ));

    let ok = ServerEntry {
        endpoint: "http://b/mcp".into(),
        ..Default::default()
    };
    store.put_server(&ok).expect("put");
    store
        .inner
        .servers
        .insert(b"http://a/mcp", &b"not json"[..])
        .expect("raw");
    assert_eq!(servers(&store), vec![ok]);
}

#[test]
fn newer_store_layout_is_refused() {
    let dir = tmp();
    {
        let store = open(dir.path());
        let meta = store.inner.db.open_tree("meta").expect("meta");
        meta.insert(META_SCHEMA_VERSION, &b"99"[..]).expect("raw");
        store.flush().expect("flush");
    }
    match Store::open(dir.path(), opts(10)) {
        Err(StoreError::NewerLayout {
            found: 99,
            supported: STORE_LAYOUT_VERSION,
            ..
        }) => {}
        other => panic!("expected NewerLayout, got {other:?}"),
    }
}

#[test]
fn layout_version_is_written_on_create() {
    let dir = tmp();
    let store = open(dir.path());
    let meta = store.inner.db.open_tree("meta").expect("meta");
    assert_eq!(
        meta.get(META_SCHEMA_VERSION).expect("get").as_deref(),
        Some(STORE_LAYOUT_VERSION.to_string().as_bytes())
    );
}

// ------------------------------------------------------------------ tamper evidence

/// A store with `n` records, half of them completed (written twice), closed again.
fn chained_store(dir: &Path, n: u64) -> Vec<String> {
    let store = open(dir);
    let mut ids = Vec::new();
    for i in 0..n {
        let mut r = rec_at(&store, 1_700_000_000_000 + i, "http://127.0.0.1:9/mcp", Some("echo"));
        store.insert_record(&r).expect("insert");
        if i % 2 == 0 {
            r.status = CallStatus::Ok;
            r.response_bytes = 7;
            store.update_record(&r).expect("update");
        }
        ids.push(r.id);
    }
    assert!(store.verify().expect("verify").ok());
    drop(store);
    ids
}

/// Opens the store's sled files directly, as someone editing them behind the daemon would.
/// sled releases its file lock when the dropped store's background threads finish, which
/// under load (CI) can take a moment: wait for it as `Store::open` does.
fn raw_tree(dir: &Path, tree: &str, f: impl FnOnce(&sled::Tree)) {
    let locked = |e: &sled::Error| matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"));
    let mut attempt = 0;
    let db = loop {
        match sled::open(dir.join(DB_DIR_NAME)) {
            Err(e) if locked(&e) && attempt < SLED_LOCK_RETRIES => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => break r.expect("raw open"),
        }
    };
    f(&db.open_tree(tree).expect("tree"));
    db.flush().expect("flush");
}

/// Every item of a chunked tree, in key order, and the tree rewritten with `f`'s result
/// as one chunk: what an attacker who understands the layout can do.
fn raw_items(dir: &Path, tree: &str, f: impl FnOnce(&mut Vec<chunk::Item>)) {
    let legacy = if tree == "chain" { chain::legacy_entry } else { chunk::legacy_record };
    raw_tree(dir, tree, |t| {
        let mut items = Vec::new();
        for c in t.iter() {
            let (k, v) = c.expect("read");
            items.extend(chunk::decode(&k, &v, legacy).expect("chunk"));
            t.remove(k).expect("remove");
        }
        f(&mut items);
        if let Some(first) = items.first() {
            let key = if tree == "chain" { first.seq.to_be_bytes().to_vec() } else { first.id.clone() };
            t.insert(key, chunk::encode(&items)).expect("write");
        }
    });
}

/// Edits the stored records (id -> value) behind the daemon's back.
fn raw_records(dir: &Path, f: impl FnOnce(&mut BTreeMap<Vec<u8>, Vec<u8>>)) {
    raw_items(dir, "records", |items| {
        let mut map: BTreeMap<Vec<u8>, Vec<u8>> = items.drain(..).map(|it| (it.id, it.value)).collect();
        f(&mut map);
        items.extend(map.into_iter().map(|(id, value)| chunk::Item { id, seq: 0, value }));
    });
}

fn problems(dir: &Path) -> Vec<Problem> {
    open(dir).verify().expect("verify").problems
}

#[test]
fn verify_passes_on_an_untouched_store_across_reopen() {
    let dir = tmp();
    chained_store(dir.path(), 20);
    let store = open(dir.path());
    let report = store.verify().expect("verify");
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.records, 20);
    assert_eq!(report.chain_entries, 30);
    assert_eq!(report.head_seq, 30);
    assert_eq!(report.head.len(), 64);
}

#[test]
fn verify_names_an_edited_record() {
    let dir = tmp();
    let ids = chained_store(dir.path(), 10);
    raw_records(dir.path(), |t| {
        let v = t.get(ids[3].as_bytes()).expect("present");
        let edited = String::from_utf8_lossy(v).replace("python3", "innocent");
        t.insert(ids[3].clone().into_bytes(), edited.into_bytes());
    });
    assert_eq!(problems(dir.path()), vec![Problem::Changed { id: ids[3].clone() }]);
}

#[test]
fn verify_names_a_deleted_record_and_a_forged_one() {
    let dir = tmp();
    let ids = chained_store(dir.path(), 10);
    raw_records(dir.path(), |t| {
        let v = t.remove(ids[5].as_bytes()).expect("present");
        // The same bytes under a new id: never written by the daemon.
        let forged = format!("{}9", &ids[9][..ids[9].len() - 1]);
        t.insert(forged.into_bytes(), v);
    });
    let p = problems(dir.path());
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p.contains(&Problem::Removed { id: ids[5].clone() }), "{p:?}");
    assert!(p.iter().any(|x| matches!(x, Problem::Unchained { .. })), "{p:?}");
    // The first problem is the earliest record.
    assert_eq!(p[0].position(), ids[5]);
}

#[test]
fn verify_names_reordered_records_and_a_broken_chain() {
    let dir = tmp();
    let ids = chained_store(dir.path(), 10);
    raw_records(dir.path(), |t| {
        let a = t.get(ids[1].as_bytes()).expect("a").clone();
        let b = t.get(ids[2].as_bytes()).expect("b").clone();
        t.insert(ids[1].clone().into_bytes(), b);
        t.insert(ids[2].clone().into_bytes(), a);
    });
    assert_eq!(
        problems(dir.path()),
        vec![Problem::Changed { id: ids[1].clone() }, Problem::Changed { id: ids[2].clone() }]
    );

    // Removing a chain entry (to hide a write) breaks the links.
    let dir = tmp();
    chained_store(dir.path(), 10);
    raw_items(dir.path(), "chain", |items| {
        let n = items.len();
        items.retain(|it| it.seq != 4);
        assert_eq!(items.len(), n - 1, "entry 4 was there");
    });
    let p = problems(dir.path());
    assert!(p.iter().any(|x| matches!(x, Problem::ChainBroken { seq: 5, .. })), "{p:?}");
}

/// A store checked in several passes (a few ids held at a time, as a store larger than
/// `verify_ids_per_pass` is) finds exactly what one pass finds: every id is judged once,
/// in its own pass, and the chain's links in the first.
#[test]
fn verify_in_passes_finds_what_one_pass_finds() {
    let in_passes = |dir: &Path, per_pass: usize| {
        let store = Store::open(dir, StoreOptions { verify_ids_per_pass: per_pass, ..opts(1_000_000) }).expect("open");
        store.verify().expect("verify")
    };
    let dir = tmp();
    let ids = chained_store(dir.path(), 40);
    let whole = in_passes(dir.path(), VERIFY_IDS_PER_PASS);
    assert!(whole.ok(), "{whole:?}");
    let spread: std::collections::HashSet<u64> = ids.iter().map(|id| chain::pass_of(id.as_bytes(), 14)).collect();
    assert!(spread.len() >= 8, "40 ids fall in only {} of 14 passes", spread.len());
    let split = in_passes(dir.path(), 3);
    assert_eq!(split, whole, "an untouched store, 14 passes");

    // Edited, removed, forged and swapped records at once.
    raw_records(dir.path(), |t| {
        let v = t.get(ids[3].as_bytes()).expect("present").clone();
        t.insert(ids[3].clone().into_bytes(), String::from_utf8_lossy(&v).replace("python3", "innocent").into_bytes());
        let gone = t.remove(ids[25].as_bytes()).expect("present");
        t.insert(format!("{}9", &ids[39][..ids[39].len() - 1]).into_bytes(), gone);
        let a = t.get(ids[11].as_bytes()).expect("a").clone();
        let b = t.get(ids[30].as_bytes()).expect("b").clone();
        t.insert(ids[11].clone().into_bytes(), b);
        t.insert(ids[30].clone().into_bytes(), a);
    });
    let whole = in_passes(dir.path(), VERIFY_IDS_PER_PASS);
    for want in [
        Problem::Changed { id: ids[3].clone() },
        Problem::Removed { id: ids[25].clone() },
        Problem::Changed { id: ids[11].clone() },
        Problem::Changed { id: ids[30].clone() },
    ] {
        assert!(whole.problems.contains(&want), "{want:?} not found: {:?}", whole.problems);
    }
    assert!(whole.problems.iter().any(|p| matches!(p, Problem::Unchained { .. })), "{:?}", whole.problems);
    for per_pass in [1, 3, 7, 39] {
        assert_eq!(in_passes(dir.path(), per_pass).problems, whole.problems, "{per_pass} ids a pass");
    }

    // A chain entry removed: found once, by the first pass.
    raw_items(dir.path(), "chain", |items| items.retain(|it| it.seq != 9));
    let whole = in_passes(dir.path(), VERIFY_IDS_PER_PASS);
    assert_eq!(whole.problems.iter().filter(|p| matches!(p, Problem::ChainBroken { seq: 10, .. })).count(), 1, "{:?}", whole.problems);
    assert_eq!(in_passes(dir.path(), 3).problems, whole.problems);
}

#[test]
fn verify_survives_retention_through_the_checkpoint() {
    let dir = tmp();
    let store = Store::open(dir.path(), opts(64)).expect("open");
    for i in 0..300u64 {
        let mut r = rec_at(&store, 1_700_000_000_000 + i, "http://127.0.0.1:9/mcp", Some("echo"));
        store.insert_record(&r).expect("insert");
        r.status = CallStatus::Ok;
        store.update_record(&r).expect("update");
    }
    let report = store.verify().expect("verify");
    assert!(report.ok(), "{report:?}");
    assert!(report.records <= 64);
    // The chain shrank with the records: bounded, not one entry per write ever made.
    assert!(report.chain_entries <= 2 * 64 + 2, "{report:?}");
    assert_eq!(report.head_seq, 600);
    // A record retention did not reach, deleted behind the daemon's back, is still seen.
    let newest = store.query(&AuditFilter { limit: Some(1), ..Default::default() }).expect("q")[0].id.clone();
    drop(store);
    raw_records(dir.path(), |t| {
        t.remove(newest.as_bytes()).expect("rm");
    });
    let p = Store::open(dir.path(), opts(64)).expect("open").verify().expect("verify").problems;
    assert_eq!(p, vec![Problem::Removed { id: newest }]);
}

// ------------------------------------------------------------------ journal

fn journal_segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(JOURNAL_DIR_NAME))
        .expect("journal dir")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

/// A crash after journal writes but before sled held them: sled is put back to its state
/// before the writes, the journal keeps what was written then plus half a line (the
/// process died inside a write). Every complete write comes back, the chain verifies
/// across the part that was in sled and the replayed part, the torn line is cut.
#[test]
fn crash_replay_restores_every_complete_write_and_cuts_a_torn_tail() {
    let dir = tmp();
    let snapshot = tmp();
    let journal_copy = tmp();
    let mut expected = Vec::new();
    {
        let store = open(dir.path());
        for i in 0..5 {
            let r = rec_at(&store, 1_700_000_000_000 + i, "http://127.0.0.1:9/mcp", Some("echo"));
            store.insert_record(&r).expect("insert");
            expected.push(r);
        }
    }
    // Clean close: the journal is empty, sled has all five.
    assert!(journal_segments(dir.path()).iter().all(|p| std::fs::metadata(p).expect("meta").len() == 0));
    copy_dir(&dir.path().join(DB_DIR_NAME), snapshot.path());
    {
        let store = open(dir.path());
        for i in 5..10 {
            let mut r = rec_at(&store, 1_700_000_000_000 + i, "http://127.0.0.1:9/mcp", Some("echo"));
            store.insert_record(&r).expect("insert");
            r.status = CallStatus::Ok;
            r.response_bytes = 3;
            store.update_record(&r).expect("update");
            expected.push(r);
        }
        store.sync().expect("sync");
        // What a SIGKILL leaves behind: the journal as written (the store, still open,
        // has not checkpointed: no background interval in these tests).
        copy_dir(&dir.path().join(JOURNAL_DIR_NAME), journal_copy.path());
    }
    std::fs::remove_dir_all(dir.path().join(DB_DIR_NAME)).expect("rm sled");
    std::fs::remove_dir_all(dir.path().join(JOURNAL_DIR_NAME)).expect("rm journal");
    copy_dir(snapshot.path(), &dir.path().join(DB_DIR_NAME));
    copy_dir(journal_copy.path(), &dir.path().join(JOURNAL_DIR_NAME));
    let segs = journal_segments(dir.path());
    let last = segs.last().expect("a segment");
    let full = std::fs::read(last).expect("read");
    assert!(full.len() > 100, "the journal holds the writes");
    {
        let mut f = OpenOptions::new().append(true).open(last).expect("open");
        f.write_all(&full[..60]).expect("torn write");
    }

    let store = open(dir.path());
    assert_eq!(store.query(&AuditFilter::default()).expect("query"), expected);
    assert_eq!(store.record_count(), 10);
    let report = store.verify().expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.head_seq, 15);
    // Replayed, flushed into sled, and the segments deleted.
    assert!(!last.exists(), "a replayed segment is deleted");
    // Writing on continues the chain.
    let r = rec_at(&store, 1_700_000_000_100, "http://127.0.0.1:9/mcp", None);
    store.insert_record(&r).expect("insert after replay");
    assert!(store.verify().expect("verify").ok());
}

/// Replaying a journal whose lines sled already has (crash after the sled flush but
/// before the segment was deleted) changes nothing.
#[test]
fn replaying_lines_sled_already_has_is_idempotent() {
    let dir = tmp();
    let journal_copy = tmp();
    let expected = {
        let store = open(dir.path());
        let mut out = Vec::new();
        for i in 0..6 {
            let mut r = rec_at(&store, 1_700_000_000_000 + i, "http://a/mcp", None);
            store.insert_record(&r).expect("insert");
            if i % 2 == 0 {
                r.status = CallStatus::Ok;
                store.update_record(&r).expect("update");
            }
            out.push(r);
        }
        copy_dir(&dir.path().join(JOURNAL_DIR_NAME), journal_copy.path());
        out
    };
    copy_dir(journal_copy.path(), &dir.path().join(JOURNAL_DIR_NAME));
    let store = open(dir.path());
    assert_eq!(store.query(&AuditFilter::default()).expect("query"), expected);
    let report = store.verify().expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.head_seq, 9);
}

/// A finished call's completion waits in user space and goes out with the next write:
/// the next record begun, a sync, or the store's close. What a SIGKILL leaves (the
/// journal as written) has every call's own record; a crash that cuts the deferred
/// completion off replays to the record as begun, with the chain intact.
#[test]
fn completions_ride_with_the_next_write() {
    let dir = tmp();
    let journal_copy = tmp();
    let snapshot = tmp();
    let journal_len = |d: &Path| journal_segments(d).iter().map(|p| std::fs::metadata(p).expect("meta").len()).sum::<u64>();
    {
        let _ = open(dir.path());
    }
    copy_dir(&dir.path().join(DB_DIR_NAME), snapshot.path());
    let store = open(dir.path());
    let mut first = rec_at(&store, 1_700_000_000_000, "http://a/mcp", Some("echo"));
    store.insert_record(&first).expect("insert");
    let after_insert = journal_len(dir.path());
    assert!(after_insert > 0, "a call's own record is written at once");
    first.status = CallStatus::Ok;
    first.response_bytes = 7;
    store.finish_record(&first).expect("finish");
    assert_eq!(journal_len(dir.path()), after_insert, "the completion waits for the next write");
    // What a SIGKILL here would leave: the record as begun.
    copy_dir(&dir.path().join(JOURNAL_DIR_NAME), journal_copy.path());
    let second = rec_at(&store, 1_700_000_000_001, "http://a/mcp", Some("add"));
    store.insert_record(&second).expect("insert");
    let both = journal_len(dir.path());
    assert!(both > after_insert * 2, "one write carried the completion and the next record");
    assert_eq!(store.get_record(&first.id).expect("get"), Some(first.clone()));
    // A sync writes a completion that nothing followed.
    let mut done = second.clone();
    done.status = CallStatus::Ok;
    store.finish_record(&done).expect("finish");
    store.sync().expect("sync");
    assert!(journal_len(dir.path()) > both);
    drop(store);

    // Replay the journal as a SIGKILL left it after the first record.
    std::fs::remove_dir_all(dir.path().join(DB_DIR_NAME)).expect("rm sled");
    std::fs::remove_dir_all(dir.path().join(JOURNAL_DIR_NAME)).expect("rm journal");
    copy_dir(snapshot.path(), &dir.path().join(DB_DIR_NAME));
    copy_dir(journal_copy.path(), &dir.path().join(JOURNAL_DIR_NAME));
    let store = open(dir.path());
    let got = store.get_record(&first.id).expect("get").expect("the call's record survives");
    assert_eq!(got.status, CallStatus::Pending, "its completion was not yet written");
    assert!(store.verify().expect("verify").ok());
}

/// Group commit: many writers' lines, one fdatasync.
#[test]
fn one_journal_sync_covers_many_concurrent_writers() {
    let dir = tmp();
    let store = open(dir.path());
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let s = store.clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                for _ in 0..10 {
                    let rec = AuditRecord { id: s.new_record_id(), ..Default::default() };
                    s.insert_record(&rec).expect("insert");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    assert_eq!(store.journal_syncs(), 0, "writes alone do not fsync");
    store.sync().expect("sync");
    assert_eq!(store.journal_syncs(), 1, "one fsync for all 80 writes");
    store.sync().expect("sync");
    assert_eq!(store.journal_syncs(), 1, "nothing new: no fsync");
    let rec = AuditRecord { id: store.new_record_id(), ..Default::default() };
    store.insert_record(&rec).expect("insert");
    store.sync().expect("sync");
    assert_eq!(store.journal_syncs(), 2);
    let lines: usize = journal_segments(dir.path())
        .iter()
        .map(|p| std::fs::read(p).expect("read").iter().filter(|b| **b == b'\n').count())
        .sum();
    assert_eq!(lines, 81, "every write is a journal line in the kernel before insert returns");
}

/// A checkpoint moves the journal into sled and deletes its segments: the journal does
/// not grow with the number of records.
#[test]
fn checkpoint_empties_the_journal() {
    let dir = tmp();
    let store = open(dir.path());
    for _ in 0..50 {
        let rec = AuditRecord { id: store.new_record_id(), ..Default::default() };
        store.insert_record(&rec).expect("insert");
    }
    let bytes = |d: &Path| -> u64 { journal_segments(d).iter().map(|p| std::fs::metadata(p).expect("m").len()).sum() };
    assert!(bytes(dir.path()) > 0);
    store.flush().expect("checkpoint");
    assert_eq!(bytes(dir.path()), 0);
    assert_eq!(store.record_count(), 50);
    assert!(store.verify().expect("verify").ok());
}

// ------------------------------------------------------------------ retention by size and age

/// Records keep coming; the store stays under its size bound after every insert, keeps
/// the newest, and the chain verifies through the moving checkpoint, also after reopen.
#[test]
fn retention_by_size_holds_while_records_keep_coming() {
    let dir = tmp();
    let max_bytes = 40_000;
    let o = StoreOptions { max_bytes: Some(max_bytes), ..opts(1_000_000) };
    let last = {
        let store = Store::open(dir.path(), o.clone()).expect("open");
        let mut last = None;
        for i in 0..600u64 {
            let mut r = rec_at(&store, 1_700_000_000_000 + i, "http://127.0.0.1:9/mcp", Some("echo"));
            store.insert_record(&r).expect("insert");
            r.status = CallStatus::Ok;
            store.update_record(&r).expect("update");
            assert!(store.stored_bytes() <= max_bytes, "{} bytes after {i} records", store.stored_bytes());
            last = Some(r);
        }
        let n = store.record_count();
        assert!(n < 600 && n > 10, "kept {n}");
        let kept = store.query(&AuditFilter::default()).expect("query");
        assert_eq!(kept.len() as u64, n);
        assert_eq!(kept.last(), last.as_ref(), "the newest record is kept");
        let report = store.verify().expect("verify");
        assert!(report.ok(), "{:?}", report.problems);
        last.expect("a record")
    };
    let store = Store::open(dir.path(), o).expect("reopen");
    assert!(store.stored_bytes() <= max_bytes);
    assert_eq!(store.get_record(&last.id).expect("get"), Some(last));
    assert!(store.verify().expect("verify").ok());
}

/// Records older than `max_age_ms` go when retention runs (clock injected), newer ones
/// stay, and verify still passes (the checkpoint moved past the old ones).
#[test]
fn retention_by_age_drops_only_old_records() {
    let dir = tmp();
    let t0 = 1_700_000_000_000u64;
    let day = 86_400_000u64;
    let store = Store::open(dir.path(), StoreOptions { max_age_ms: Some(7 * day), ..opts(1_000_000) }).expect("open");
    let mut young = Vec::new();
    for d in 0..10u64 {
        let r = rec_at(&store, t0 + d * day, "http://a/mcp", None);
        store.insert_record(&r).expect("insert");
        if d >= 3 {
            young.push(r);
        }
    }
    // "Now" is day 10: records of days 0, 1, 2 are older than 7 days.
    assert_eq!(store.enforce_retention_at(t0 + 10 * day).expect("retention"), 3);
    assert_eq!(store.query(&AuditFilter::default()).expect("query"), young);
    let report = store.verify().expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(store.enforce_retention_at(t0 + 10 * day).expect("again"), 0);
    // Tampering below the new checkpoint's line is still caught above it.
    drop(store);
    raw_records(dir.path(), |t| {
        t.remove(young[0].id.as_bytes()).expect("raw remove");
    });
    assert_eq!(problems(dir.path()), vec![Problem::Removed { id: young[0].id.clone() }]);
}

// ------------------------------------------------------------------ bounded memory

/// sled keeps bookkeeping in memory for every page it wrote, and a leaf holds at most
/// 16 keys: the store hands it chunks, not one key per record and one per chain entry
/// (which made the daemon's resident memory grow with the number of records). Counts
/// sled keys, not bytes of RSS.
#[test]
fn sled_keys_grow_by_chunks_not_by_records() {
    let dir = tmp();
    let store = open(dir.path());
    let n = 2_000u64;
    for i in 0..n {
        let mut r = rec_at(&store, 1_700_000_000_000 + i, "http://127.0.0.1:9/mcp", Some("echo"));
        store.insert_record(&r).expect("insert");
        r.status = CallStatus::Ok;
        store.update_record(&r).expect("update");
        if i % 300 == 7 {
            // A checkpoint between a call's two writes, as the background one may land.
            store.flush().expect("checkpoint");
        }
    }
    store.flush().expect("checkpoint");
    let (records, chain) = (store.inner.records.len() as u64, store.inner.chain.len() as u64);
    assert!(records * 4 <= n, "{records} sled keys for {n} records");
    assert!(chain * 10 <= 2 * n, "{chain} sled keys for {} chain entries", 2 * n);
    assert_eq!(store.record_count(), n);
    let all = store.query(&AuditFilter::default()).expect("query");
    assert_eq!(all.len() as u64, n);
    assert!(all.iter().all(|r| r.status == CallStatus::Ok), "every completion is stored");
    let report = store.verify().expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.chain_entries, 2 * n);
}

/// Writes not yet sealed into sled are bounded (bytes held), whether or not a
/// checkpoint runs: past `TAIL_MAX_BYTES` the writer seals the tail itself.
#[test]
fn the_unsealed_tail_stays_bounded_without_a_checkpoint() {
    let dir = tmp();
    let store = open(dir.path());
    let pad = "x".repeat(16 * 1024);
    let mut ids = Vec::new();
    for i in 0..200u64 {
        let mut r = rec_at(&store, 1_700_000_000_000 + i, "http://a/mcp", Some("echo"));
        r.notes = vec![pad.clone()];
        store.insert_record(&r).expect("insert");
        let held = store.inner.head.lock().expect("head").tail.bytes;
        assert!(held <= TAIL_MAX_BYTES, "{held} bytes unsealed after {i} records");
        ids.push(r.id);
    }
    assert!(!store.inner.records.is_empty(), "the writer sealed without a checkpoint");
    let got: Vec<String> = store.query(&AuditFilter::default()).expect("query").into_iter().map(|r| r.id).collect();
    assert_eq!(got, ids);
}

/// A store written by layout 1 (one sled key per record and per chain entry) is read as
/// it is: every record, a passing verify, and the chain goes on in chunks.
#[test]
fn a_layout_one_store_reads_verifies_and_continues() {
    let dir = tmp();
    let ids = chained_store(dir.path(), 12);
    raw_tree(dir.path(), "records", |t| {
        let chunks: Vec<_> = t.iter().map(|c| c.expect("read")).collect();
        for (k, v) in chunks {
            t.remove(&k).expect("rm");
            for it in chunk::decode(&k, &v, chunk::legacy_record).expect("chunk") {
                t.insert(it.id, it.value).expect("one key per record");
            }
        }
    });
    raw_tree(dir.path(), "chain", |t| {
        let chunks: Vec<_> = t.iter().map(|c| c.expect("read")).collect();
        for (k, v) in chunks {
            t.remove(&k).expect("rm");
            for it in chunk::decode(&k, &v, chain::legacy_entry).expect("chunk") {
                let e = chain::Entry::from_item(&it).expect("entry");
                t.insert(it.seq.to_be_bytes(), e.encode()).expect("one key per entry");
            }
        }
    });
    raw_tree(dir.path(), "meta", |t| {
        t.insert(META_SCHEMA_VERSION, &b"1"[..]).expect("layout 1");
    });
    let store = open(dir.path());
    assert_eq!(store.inner.records.len(), 12, "read in place, not rewritten");
    let got: Vec<String> = store.query(&AuditFilter::default()).expect("query").into_iter().map(|r| r.id).collect();
    assert_eq!(got, ids);
    assert!(store.verify().expect("verify").ok());
    let mut r = rec_at(&store, 1_700_000_001_000, "http://127.0.0.1:9/mcp", Some("echo"));
    store.insert_record(&r).expect("insert");
    r.status = CallStatus::Ok;
    store.update_record(&r).expect("update");
    let report = store.verify().expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.records, 13);
    let meta = store.inner.db.open_tree("meta").expect("meta");
    assert_eq!(meta.get(META_SCHEMA_VERSION).expect("get").as_deref(), Some(STORE_LAYOUT_VERSION.to_string().as_bytes()));
}

/// `query_pages` hands out exactly what `query` returns, page by page, oldest first, and
/// stops when told to; with a limit too (the newest `limit` matches, found by walking
/// back, handed out forward across pages).
#[test]
fn query_pages_is_query_in_pages() {
    let dir = tmp();
    let store = open(dir.path());
    seeded(&store);
    let all = store.query(&AuditFilter::default()).expect("query").len();
    assert!(all >= 6, "seeded {all} records");
    for filter in [
        AuditFilter::default(),
        AuditFilter { since_ms: Some(5_000), ..Default::default() },
        AuditFilter { limit: Some(2), ..Default::default() },
        AuditFilter { limit: Some(5), ..Default::default() },
        AuditFilter { limit: Some(all + 10), ..Default::default() },
        AuditFilter { limit: Some(0), ..Default::default() },
        AuditFilter { limit: Some(3), tool: Some("add".into()), ..Default::default() },
        AuditFilter { limit: Some(3), since_ms: Some(5_000), ..Default::default() },
        AuditFilter { tool: Some("add".into()), ..Default::default() },
    ] {
        let mut pages = Vec::new();
        store.query_pages(&filter, 2, |p| {
            pages.push(p);
            true
        }).expect("pages");
        assert!(pages.iter().all(|p| !p.is_empty() && p.len() <= 2), "{filter:?}");
        assert_eq!(pages.concat(), store.query(&filter).expect("query"), "{filter:?}");
    }
    let mut seen = 0;
    store.query_pages(&AuditFilter::default(), 1, |_| {
        seen += 1;
        false
    }).expect("pages");
    assert_eq!(seen, 1, "stopped after the first page");
}

/// A limited answer is the newest `limit` matches as of its walk back: records written
/// between that walk and the read forward (which starts at the oldest of them) come
/// after them and are not handed out.
#[test]
fn a_limited_answer_ignores_records_written_after_its_walk_back() {
    let dir = tmp();
    let store = open(dir.path());
    let seeded = seeded(&store);
    let filter = AuditFilter { limit: Some(3), ..Default::default() };
    let from = id::key_floor_for_ms(0).into_bytes();
    let oldest = store.nth_newest_match(&filter, &from, 3, &mut Skipped::default()).expect("walk back").expect("a match");
    assert_eq!(oldest, seeded[7].id.as_bytes(), "the third newest of ten");
    for ms in [20_000, 21_000] {
        let r = rec_at(&store, ms, "http://127.0.0.1:18002/mcp", Some("add"));
        store.insert_record(&r).expect("insert");
    }
    let mut got = Vec::new();
    store
        .pages_from(&filter, &oldest, 3, 2, &mut Skipped::default(), &mut |p| {
            assert!(p.len() <= 2, "a page of {}", p.len());
            got.extend(p);
            true
        })
        .expect("read forward");
    let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, seeded[7..].iter().map(|r| r.id.as_str()).collect::<Vec<_>>());
}

/// Sealing runs beside the writers, not under their mutex: with several writers, the
/// background checkpoint thread woken to seal, readers and checkpoints all at once,
/// no write is lost or counted twice, every completion wins over its insert (also when
/// the insert was being sealed as the completion came), and the chain verifies, also
/// after reopening.
#[test]
fn concurrent_writers_seals_and_readers_lose_nothing() {
    let dir = tmp();
    let store = Store::open(dir.path(), StoreOptions { flush_every_ms: Some(10), ..opts(1_000_000) }).expect("open");
    let pad = "p".repeat(2 * 1024);
    let (writers, per) = (4u64, 400u64);
    let done = std::sync::atomic::AtomicBool::new(false);
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (store, pad) = (store.clone(), pad.clone());
                s.spawn(move || {
                    let mut ids = Vec::new();
                    for i in 0..per {
                        let mut r = rec_at(&store, 1_700_000_000_000 + w * per + i, "http://a/mcp", Some("echo"));
                        r.notes = vec![pad.clone()];
                        store.insert_record(&r).expect("insert");
                        assert!(store.get_record(&r.id).expect("get").is_some(), "a record reads back at once");
                        r.status = CallStatus::Ok;
                        store.update_record(&r).expect("update");
                        ids.push(r.id);
                    }
                    ids
                })
            })
            .collect();
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                store.query(&AuditFilter { limit: Some(50), ..Default::default() }).expect("query");
                store.flush().expect("checkpoint");
            }
        });
        let ids = handles.into_iter().flat_map(|h| h.join().expect("writer")).collect();
        done.store(true, Ordering::Relaxed);
        ids
    });
    let check = |store: &Store| {
        assert_eq!(store.record_count(), writers * per);
        let all = store.query(&AuditFilter::default()).expect("query");
        let mut want = ids.clone();
        want.sort();
        assert_eq!(all.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), want);
        assert!(all.iter().all(|r| r.status == CallStatus::Ok), "a completion was lost to an older value");
        let report = store.verify().expect("verify");
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(report.chain_entries, 2 * writers * per);
    };
    check(&store);
    drop(store);
    check(&open(dir.path()));
}

/// `verify` does not hold writers up for its pass, and what they write meanwhile (new
/// records sealed during the pass, completions of records sealed before it) is not taken
/// for tampering (the tests above show edits behind the store's back still are).
#[test]
fn verify_beside_writers_reports_only_tampering_and_lets_them_write() {
    let dir = tmp();
    let store = Store::open(dir.path(), StoreOptions { flush_every_ms: Some(2), ..opts(1_000_000) }).expect("open");
    let mut pending = Vec::new();
    for i in 0..10_000u64 {
        let r = rec_at(&store, 1_700_000_000_000 + i, "http://127.0.0.1:9/mcp", Some("echo"));
        store.insert_record(&r).expect("insert");
        pending.push(r);
    }
    store.flush().expect("flush");
    let writes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, writes, stop) = (store.clone(), writes.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // A new record, and the completion of one written long before.
                let r = rec_at(&store, 1_800_000_000_000 + i, "http://127.0.0.1:9/mcp", Some("add"));
                store.insert_record(&r).expect("insert");
                if let Some(mut old) = pending.pop() {
                    old.status = CallStatus::Ok;
                    old.response_bytes = 9;
                    store.update_record(&old).expect("update");
                }
                writes.fetch_add(1, Ordering::Relaxed);
                i += 1;
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    let mut during = 0;
    for _ in 0..5 {
        let before = writes.load(Ordering::Relaxed);
        let report = store.verify().expect("verify");
        during += writes.load(Ordering::Relaxed) - before;
        assert!(report.ok(), "writes during the pass were taken for tampering: {:?}", report.problems);
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    assert!(during > 5, "writers were held up by verify ({during} writes during 5 passes)");
    let report = store.verify().expect("verify");
    assert!(report.ok() && report.records == store.record_count(), "{report:?}");
}

/// Retention by count removes the oldest records whatever their age; when those are
/// young (a flood pushing a call's record out) the store counts them, so the operator
/// sees it (`mcpwatch_audit_pruned_young_total`). Records old enough are not counted.
#[test]
fn retention_by_count_counts_the_young_records_it_removes() {
    let dir = tmp();
    // Writers prune as they go, by the real clock: records are stamped relative to it.
    let hour = 3_600_000u64;
    let t0 = id::now_ms() - 48 * hour;
    let store = Store::open(dir.path(), opts(100)).expect("open");
    // 10 records two days old, then 200 of the last hour.
    for i in 0..10u64 {
        store.insert_record(&rec_at(&store, t0 + i, "http://a/mcp", None)).expect("insert");
    }
    for i in 0..200u64 {
        store.insert_record(&rec_at(&store, t0 + 47 * hour + i, "http://a/mcp", None)).expect("insert");
    }
    store.enforce_retention_at(id::now_ms()).expect("retention");
    let removed = 210 - store.record_count();
    assert!(removed >= 110, "{removed}");
    assert_eq!(store.pruned_young(), removed - 10, "the two-day-old records are not young");
    assert!(store.verify().expect("verify").ok());
}
