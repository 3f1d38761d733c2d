//! A read-only cursor over the records tree, for consumers that ship records elsewhere.
//!
//! Why it exists: the SIEM sinks read from the store (not from the request path) and
//! remember how far they got by record id. Ids sort by time and never repeat (see
//! `id`), so "every record with an id greater than the cursor, in key order" is exactly
//! the set not yet shipped. Nothing here writes: sled stays behind this crate's API.

use mcpwatch_api::AuditRecord;

use crate::{Skipped, Store, StoreError, chunk, id};

impl Store {
    /// Up to `limit` records with an id strictly greater than `after` (`None`: from the
    /// oldest), in id order. Unreadable values are skipped (and logged once per call).
    pub fn records_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let after = lower_bound(after)?;
        let mut skipped = Skipped::default();
        'chunks: for c in self.inner.sealed_from(&after)? {
            let (k, v) = c?;
            for it in skipped.items(&k, &v) {
                if it.id.as_slice() <= after.as_slice() {
                    continue;
                }
                if let Some(rec) = skipped.decode(&it.id, &it.value) {
                    out.push(rec);
                    if out.len() >= limit {
                        break 'chunks;
                    }
                }
            }
        }
        skipped.report("records_after");
        Ok(out)
    }

    /// How many records come after `after`, counting no further than `cap` (so a huge
    /// backlog costs at most about `cap` record reads).
    pub fn count_after(&self, after: Option<&str>, cap: u64) -> Result<u64, StoreError> {
        let after = lower_bound(after)?;
        let mut n = 0u64;
        for c in self.inner.sealed_from(&after)? {
            let (k, v) = c?;
            let items = chunk::decode(&k, &v, chunk::legacy_record).unwrap_or_default();
            n += items.iter().filter(|it| it.id.as_slice() > after.as_slice()).count() as u64;
            if n >= cap {
                return Ok(cap);
            }
        }
        Ok(n)
    }

    /// Id of the oldest stored record, if any (retention may have pruned past a cursor).
    pub fn first_record_id(&self) -> Result<Option<String>, StoreError> {
        for c in self.inner.sealed_from(b"")? {
            let (k, v) = c?;
            if let Some(it) = chunk::decode(&k, &v, chunk::legacy_record).ok().and_then(|items| items.into_iter().next()) {
                return Ok(Some(String::from_utf8_lossy(&it.id).into_owned()));
            }
        }
        Ok(None)
    }
}

/// The cursor as a key: empty for "from the oldest" (every id is above it).
fn lower_bound(after: Option<&str>) -> Result<Vec<u8>, StoreError> {
    match after {
        None => Ok(Vec::new()),
        Some(a) if id::parse_id(a.as_bytes()).is_some() => Ok(a.as_bytes().to_vec()),
        Some(a) => Err(StoreError::InvalidId { id: a.to_string() }),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    fn rec(store: &Store) -> AuditRecord {
        AuditRecord { id: store.new_record_id(), ..Default::default() }
    }

    #[test]
    fn pages_through_every_record_once_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let ids: Vec<String> = (0..7)
            .map(|_| {
                let r = rec(&store);
                store.insert_record(&r).unwrap();
                r.id
            })
            .collect();
        let mut cursor: Option<String> = None;
        let mut seen = Vec::new();
        loop {
            let page = store.records_after(cursor.as_deref(), 3).unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 3);
            cursor = page.last().map(|r| r.id.clone());
            seen.extend(page.into_iter().map(|r| r.id));
        }
        assert_eq!(seen, ids);
        assert_eq!(store.count_after(None, 100).unwrap(), 7);
        assert_eq!(store.count_after(Some(&ids[4]), 100).unwrap(), 2);
        assert_eq!(store.count_after(None, 5).unwrap(), 5, "counting stops at the cap");
        assert_eq!(store.first_record_id().unwrap().as_deref(), Some(ids[0].as_str()));
    }

    #[test]
    fn a_cursor_that_is_not_an_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(matches!(store.records_after(Some("zz"), 1), Err(StoreError::InvalidId { .. })));
        assert!(store.records_after(Some("00000000000000000000000000"), 1).unwrap().is_empty());
    }
}
