//! `gc`: drop deleted versions, forget chunks no live version references, delete packs that
//! hold nothing live and rewrite packs that became mostly garbage.
//!
//! Crash safety, step by step (each step is durable before the next starts):
//! 1. deleted versions leave the index; then their manifests are removed (their tombstone events
//!    stay, so a rebuild still knows them as deleted);
//! 2. garbage chunks leave the index;
//! 3. a pack to rewrite: live records are copied to a new pack and fsynced, the index moves to
//!    the new locations, then the old pack file is deleted. A crash in between leaves a second,
//!    unreferenced copy, which the next gc deletes. No pack is modified in place.

use std::collections::{HashMap, HashSet};
use std::fs::File;

use serde::Serialize;

use crate::digest::ChunkId;
use crate::durable::fsync_dir;
use crate::error::{IoContext, Result};
use crate::id::Id;
use crate::index::IndexBatch;
use crate::pack::{self, ChunkLoc, PackWriter};
use crate::recover::list_ids;
use crate::store::Store;

/// What `gc` freed (or, with `dry_run`, would free).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    pub dry_run: bool,
    pub deleted_versions: usize,
    pub garbage_chunks: usize,
    /// Pack bytes (records with headers) of chunks no live version references.
    pub garbage_bytes: u64,
    pub packs_deleted: usize,
    pub packs_rewritten: usize,
    /// Bytes of pack files removed from disk (new pack bytes subtracted).
    pub reclaimed_bytes: u64,
    /// Garbage left in packs below the rewrite threshold.
    pub remaining_garbage_bytes: u64,
    /// Chunks no live version names, kept because a live chunk is stored as a delta against
    /// them (directly or through a chain).
    pub kept_as_delta_bases: usize,
}

impl Store {
    /// Collect garbage. A pack is rewritten when at least `rewrite_threshold` of its bytes are
    /// garbage (0.0 rewrites every pack with any garbage; the CLI default is 0.5).
    pub fn gc(&self, dry_run: bool, rewrite_threshold: f64) -> Result<GcReport> {
        if !dry_run {
            self.check_poison()?;
        }
        let s = self.session()?;
        let ix = &s.index;
        let mut rep = GcReport {
            dry_run,
            ..Default::default()
        };

        let mut live: HashSet<ChunkId> = HashSet::new();
        let mut dead_versions = Vec::new();
        for r in ix.scan_versions(&Default::default()) {
            let r = r?;
            if r.is_deleted() {
                dead_versions.push(r);
            } else {
                let m = crate::read::load_manifest(&s, &r)?;
                live.extend(m.chunks.iter().map(|(id, _)| *id));
            }
        }
        rep.deleted_versions = dead_versions.len();
        // A live chunk stored as a delta keeps its base (and the base's base) live.
        let mut base_of: HashMap<ChunkId, ChunkId> = HashMap::new();
        for c in ix.chunks() {
            let (id, loc) = c?;
            if let Some(b) = loc.base {
                base_of.insert(id, b);
            }
        }
        let mut todo: Vec<ChunkId> = live
            .iter()
            .filter(|id| base_of.contains_key(id))
            .copied()
            .collect();
        while let Some(id) = todo.pop() {
            if let Some(b) = base_of.get(&id)
                && live.insert(*b)
            {
                rep.kept_as_delta_bases += 1;
                todo.push(*b);
            }
        }

        let mut garbage: Vec<(ChunkId, ChunkLoc)> = Vec::new();
        let mut live_in_pack: HashMap<Id, Vec<(ChunkId, ChunkLoc)>> = HashMap::new();
        for c in ix.chunks() {
            let (id, loc) = c?;
            if live.contains(&id) {
                live_in_pack.entry(loc.pack).or_default().push((id, loc));
            } else {
                rep.garbage_bytes += loc.record_len();
                garbage.push((id, loc));
            }
        }
        rep.garbage_chunks = garbage.len();

        // Per pack: on-disk length vs live bytes. Packs on disk the index does not know
        // (leftovers of a crashed write or rewrite) count as all garbage.
        let packs_dir = self.dir("packs");
        let active = ix.meta_id("active_pack")?;
        let mut plan: Vec<(Id, u64, u64)> = Vec::new(); // (pack, disk len, live bytes)
        for (pid, path) in list_ids(&packs_dir, "pack")? {
            let len = std::fs::metadata(&path).at(&path)?.len();
            let live_bytes: u64 = live_in_pack
                .get(&pid)
                .map_or(0, |v| v.iter().map(|(_, l)| l.record_len()).sum());
            plan.push((pid, len, live_bytes));
        }

        if !dry_run {
            self.poison(self.gc_apply(&s, &dead_versions, &garbage))?;
        }
        for (pid, len, live_bytes) in plan {
            let garbage_here = len.saturating_sub(live_bytes + pack::PACK_HEADER_LEN);
            // A pack with nothing live goes whole, even an empty one (a killed creation).
            if live_bytes == 0 {
                rep.packs_deleted += 1;
                rep.reclaimed_bytes += len;
                if !dry_run {
                    let mut b = IndexBatch::default();
                    b.remove_pack(pid);
                    if active == Some(pid) {
                        b.remove_meta("active_pack");
                    }
                    self.poison(ix.apply(b))?;
                    let p = packs_dir.join(pack::pack_file_name(pid));
                    self.poison(self.remove_file(&p))?;
                }
            } else if garbage_here == 0 {
                continue;
            } else if garbage_here as f64 >= rewrite_threshold * len as f64 {
                rep.packs_rewritten += 1;
                rep.reclaimed_bytes += garbage_here;
                if !dry_run {
                    let moved = &live_in_pack[&pid];
                    self.poison(self.rewrite_pack(&s, pid, moved, active == Some(pid)))?;
                }
            } else {
                rep.remaining_garbage_bytes += garbage_here;
            }
        }
        if !dry_run {
            self.poison(
                self.opts
                    .faults
                    .check(crate::fault::FaultKind::Sync, &packs_dir)
                    .and_then(|()| fsync_dir(&packs_dir)),
            )?;
        }
        Ok(rep)
    }

    fn gc_apply(
        &self,
        s: &crate::store::Session<'_>,
        dead: &[crate::FileRecord],
        garbage: &[(ChunkId, ChunkLoc)],
    ) -> Result<()> {
        // Manifests first, then the index: a crash in between leaves deleted versions in the
        // index without manifests, which the next gc drops (and verify accepts for deleted
        // versions). The other order would leave manifests that no later gc could find.
        for r in dead {
            let p = self.manifest_path(r.id);
            if p.exists() {
                self.remove_file(&p)?;
            }
        }
        // Manifests an older, interrupted gc left behind: not in the index, covered by a delete.
        for (id, p) in crate::recover::list_ids(&self.dir("manifests"), "manifest")? {
            if s.index.version(id)?.is_some() {
                continue;
            }
            let covered = std::fs::read(&p)
                .ok()
                .and_then(|b| crate::manifest::Manifest::decode(&b, "").ok())
                .is_some_and(|m| {
                    s.index
                        .deleted_up_to(&m.record.key())
                        .is_ok_and(|d| m.record.version <= d)
                });
            if covered {
                self.remove_file(&p)?;
            }
        }
        self.opts
            .faults
            .check(crate::fault::FaultKind::Sync, &self.dir("manifests"))?;
        fsync_dir(&self.dir("manifests"))?;
        let mut b = IndexBatch::default();
        for r in dead {
            b.remove_version(r);
        }
        s.index.apply(b)?;
        let mut b = IndexBatch::default();
        for (id, _) in garbage {
            b.remove_chunk(id);
        }
        s.index.apply(b)
    }

    fn rewrite_pack(
        &self,
        s: &crate::store::Session<'_>,
        old: Id,
        live: &[(ChunkId, ChunkLoc)],
        was_active: bool,
    ) -> Result<()> {
        let dir = self.dir("packs");
        let old_path = dir.join(pack::pack_file_name(old));
        let file = File::open(&old_path).at(&old_path)?;
        let mut w = PackWriter::create(&dir, &self.opts.faults)?;
        let mut b = IndexBatch::default();
        let mut sorted = live.to_vec();
        sorted.sort_by_key(|(_, l)| l.offset);
        for (id, loc) in &sorted {
            let mut buf = vec![0u8; loc.record_len() as usize];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, loc.offset).at(&old_path)?;
            // Never copy damage forward: decode and check before writing the copy.
            let where_ = || format!("{} offset {}", old_path.display(), loc.offset);
            let h =
                pack::decode_record_header(&buf).map_err(|r| crate::Error::corrupt(where_(), r))?;
            pack::check_stored(&h, &buf[pack::RECORD_HEADER_LEN..], &where_)?;
            let new = w.append(*id, loc.raw_len, loc.codec, &buf[pack::RECORD_HEADER_LEN..])?;
            b.put_chunk(id, &new);
        }
        w.sync()?;
        b.put_pack(w.id, w.len());
        b.remove_pack(old);
        if was_active {
            b.set_meta("active_pack", &w.id.0);
        }
        s.index.apply(b)?;
        self.remove_file(&old_path)
    }

    fn remove_file(&self, p: &std::path::Path) -> Result<()> {
        self.opts.faults.check(crate::fault::FaultKind::Write, p)?;
        std::fs::remove_file(p).at(p)
    }
}
