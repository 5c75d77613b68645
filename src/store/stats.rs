//! `stats`: how much was stored, and how much dedup and compression saved.

use std::collections::HashSet;

use serde::Serialize;

use crate::error::Result;
use crate::format::digest::ChunkId;
use crate::store::Store;
use crate::store::index::Scope;

/// What a store (or a scope of it) holds, and what it costs on disk.
#[derive(Clone, Debug, Default, Serialize)]
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
    /// Raw bytes of the distinct chunks per codec family (`whole`, `planes`, `delta`).
    pub codec_bytes: CodecBytes,
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
                        st.codec_bytes.add(loc.codec, u64::from(len));
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

/// What one version costs on disk and how its chunks are stored: the figures behind "was this
/// checkpoint stored as a delta, and what did it cost?".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionStorage {
    /// Bytes of the file.
    pub logical_bytes: u64,
    /// Raw bytes of its distinct chunks.
    pub unique_bytes: u64,
    /// Bytes its distinct chunks take in packs (shared chunks counted in full).
    pub stored_bytes: u64,
    /// Bytes this upload added to the store (its record's `new_bytes`).
    pub new_bytes: u64,
    /// Raw bytes of the file carried by each codec: `whole` (raw or zstd), `planes` (byte
    /// planes), `delta` (the difference to a chunk of an earlier version).
    pub codec_bytes: CodecBytes,
    /// The longest chain of deltas a read of this version follows (0: no delta).
    pub delta_depth: u32,
}

/// Raw bytes per codec family (see [`VersionStorage::codec_bytes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CodecBytes {
    /// Stored raw or zstd-compressed.
    pub whole: u64,
    /// Byte planes (fp32 or bf16 layouts).
    pub planes: u64,
    /// Deltas against another chunk.
    pub delta: u64,
}

impl CodecBytes {
    fn add(&mut self, c: crate::format::codec::Codec, len: u64) {
        use crate::format::codec::Codec;
        match c {
            Codec::Delta => self.delta += len,
            Codec::Planes2 | Codec::Planes4 | Codec::Planes => self.planes += len,
            Codec::Raw | Codec::Zstd => self.whole += len,
        }
    }
}

impl Store {
    /// How `r` is stored (see [`VersionStorage`]); reads its manifest and the index.
    pub fn version_storage(&self, r: &crate::format::record::FileRecord) -> Result<VersionStorage> {
        use crate::format::codec::Codec;
        let s = self.session()?;
        let m = crate::store::read::load_manifest(&s, r)?;
        let mut out = VersionStorage {
            logical_bytes: r.size_bytes,
            new_bytes: r.new_bytes,
            ..Default::default()
        };
        let mut seen: HashSet<ChunkId> = HashSet::new();
        let mut depths: std::collections::HashMap<ChunkId, u32> = std::collections::HashMap::new();
        for (id, len) in &m.chunks {
            let loc = s.index.chunk(id)?;
            let len = u64::from(*len);
            out.codec_bytes
                .add(loc.as_ref().map_or(Codec::Raw, |l| l.codec), len);
            if !seen.insert(*id) {
                continue;
            }
            out.unique_bytes += len;
            let Some(loc) = loc else { continue };
            out.stored_bytes += loc.record_len();
            // The chain below this chunk (bounded: decoders refuse deeper chains).
            let mut depth = 0u32;
            let mut base = loc.base;
            while let Some(b) = base {
                depth += 1;
                if depth > u32::from(crate::format::delta::MAX_DEPTH) + 1 {
                    break;
                }
                if let Some(d) = depths.get(&b) {
                    depth += d;
                    break;
                }
                base = s.index.chunk(&b)?.and_then(|l| l.base);
            }
            depths.insert(*id, depth);
            out.delta_depth = out.delta_depth.max(depth);
        }
        Ok(out)
    }
}

impl Store {
    /// Keep the outcome of a `verify` or a `gc` (`<root>/last-verify.json`, `last-gc.json`:
    /// when, and the report) for whoever looks later, such as the server's store page. Best
    /// effort: a store that cannot take the file (read-only) still answers the command.
    pub(crate) fn note_last(&self, what: &str, report: &impl Serialize) {
        let v = serde_json::json!({"at": crate::format::time::now_iso(), "report": report});
        if let Ok(bytes) = serde_json::to_vec(&v) {
            let _ = crate::store::durable::write_atomic(
                &self.root().join(format!("last-{what}.json")),
                &bytes,
                &crate::store::fault::Faults::default(),
            );
        }
    }

    /// The last `verify` or `gc` (`what`: `"verify"` or `"gc"`) the store recorded (each run
    /// writes `<root>/last-verify.json` or `last-gc.json`): `{"at": ISO-8601, "report": ...}`,
    /// if any.
    pub fn last_result(&self, what: &str) -> Option<serde_json::Value> {
        if !matches!(what, "verify" | "gc") {
            return None;
        }
        let bytes = std::fs::read(self.root().join(format!("last-{what}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}
