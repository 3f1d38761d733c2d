//! A read-only cursor over the records tree, for consumers that ship records elsewhere.
//!
//! Why it exists: the SIEM sinks read from the store (not from the request path) and
//! remember how far they got by record id. Ids sort by time and never repeat (see
//! `id`), so "every record with an id greater than the cursor, in key order" is exactly
//! the set not yet shipped. Nothing here writes: sled stays behind this crate's API.

use std::ops::Bound;

use mcpwatch_api::AuditRecord;

use crate::{Skipped, Store, StoreError, id};

impl Store {
    /// Up to `limit` records with an id strictly greater than `after` (`None`: from the
    /// oldest), in id order. Unreadable values are skipped (and logged once per call).
    pub fn records_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut skipped = Skipped::default();
        for item in self.inner.records.range(lower_bound(after)?) {
            let (k, v) = item?;
            if let Some(rec) = skipped.decode(&k, &v) {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        skipped.report("records_after");
        Ok(out)
    }

    /// How many keys come after `after`, counting no further than `cap` (so a huge
    /// backlog costs at most `cap` key reads).
    pub fn count_after(&self, after: Option<&str>, cap: u64) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for key in self.inner.records.range(lower_bound(after)?).keys() {
            key?;
            n += 1;
            if n >= cap {
                break;
            }
        }
        Ok(n)
    }

    /// Id of the oldest stored record, if any (retention may have pruned past a cursor).
    pub fn first_record_id(&self) -> Result<Option<String>, StoreError> {
        Ok(self.inner.records.first()?.map(|(k, _)| String::from_utf8_lossy(&k).into_owned()))
    }
}

/// A key range for sled.
type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

fn lower_bound(after: Option<&str>) -> Result<KeyRange, StoreError> {
    match after {
        None => Ok((Bound::Unbounded, Bound::Unbounded)),
        Some(a) if id::parse_id(a.as_bytes()).is_some() => Ok((Bound::Excluded(a.as_bytes().to_vec()), Bound::Unbounded)),
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
