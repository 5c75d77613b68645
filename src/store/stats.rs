//! `stats`: how much was stored, and how much dedup and compression saved.

use std::collections::HashSet;

use serde::Serialize;

use crate::error::Result;
use crate::format::digest::ChunkId;
use crate::store::Store;
use crate::store::index::Scope;

/// What a store (or a scope of it) holds, and what it costs on disk.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Paths with at least one live version.
    pub files: u64,
    /// Live versions.
    pub versions: u64,
    /// Deleted versions gc has not yet dropped.
    pub deleted_versions: u64,
    /// Sum of the sizes of live versions.
    pub logical_bytes: u64,
    /// Raw bytes of the distinct chunks live versions reference.
    pub unique_bytes: u64,
    /// Bytes those chunks take in packs (compressed where it paid, record headers included).
    pub stored_bytes: u64,
    /// Distinct chunks live versions reference.
    pub chunks: u64,
    /// `logicalBytes / storedBytes`.
    pub saving_ratio: f64,
    /// Whole store, regardless of scope: pack files and their bytes on disk.
    pub packs: u64,
    /// Bytes of pack files on disk.
    pub pack_bytes: u64,
}

impl Store {
    /// Files, versions, and logical / unique / stored bytes of `scope`.
    pub fn stats(&self, scope: &Scope) -> Result<Stats> {
        let s = self.session()?;
        let mut st = Stats::default();
        let mut seen: HashSet<ChunkId> = HashSet::new();
        let mut last_key = None;
        for r in s.index.scan_versions(scope) {
            let r = r?;
            if r.is_deleted() {
                st.deleted_versions += 1;
                continue;
            }
            st.versions += 1;
            st.logical_bytes += r.size_bytes;
            let key = r.key();
            if last_key.as_ref() != Some(&key) {
                st.files += 1;
                last_key = Some(key);
            }
            let m = crate::store::read::load_manifest(&s, &r)?;
            for (id, len) in m.chunks {
                if seen.insert(id) {
                    st.unique_bytes += u64::from(len);
                    if let Some(loc) = s.index.chunk(&id)? {
                        st.stored_bytes += loc.record_len();
                    }
                }
            }
        }
        st.chunks = seen.len() as u64;
        st.saving_ratio = if st.stored_bytes > 0 {
            st.logical_bytes as f64 / st.stored_bytes as f64
        } else {
            1.0
        };
        for (_, len) in s.index.packs()? {
            st.packs += 1;
            st.pack_bytes += len;
        }
        Ok(st)
    }
}
