//! `gc`: drop deleted versions, forget chunks no live version references, delete packs that
//! hold nothing live and rewrite packs that became mostly garbage.
//!
//! Crash safety, step by step (each step is durable before the next starts):
//! 1. the manifests of deleted versions are removed, then those versions leave the index (their
//!    tombstone events stay, so a rebuild still knows them as deleted; a crash in between leaves
//!    index entries without manifests, which the next gc drops);
//! 2. garbage chunks leave the index;
//! 3. a pack to rewrite: live records are copied to a new pack under its incoming name and
//!    fsynced (without the store lock), then, under it, the copy is renamed to its pack name,
//!    the index moves to the new locations, and the old pack file is deleted. A crash in
//!    between leaves a second, unreferenced copy, which the next gc deletes. No pack is
//!    modified in place.
//!
//! gc holds `writers` exclusively from start to end (a dry run: shared) (no upload or pull adds or moves chunks
//! meanwhile) and the store lock only to plan and apply steps 1 and 2, and then once per group
//! of packs to publish copies and delete old packs: readers, deletes and record updates go
//! ahead while it reads and copies packs.

use std::collections::{HashMap, HashSet};
use std::fs::File;

use serde::Serialize;

use crate::error::{IoContext, Result};
use crate::format::digest::ChunkId;
use crate::format::id::Id;
use crate::format::pack::{self, ChunkLoc};
use crate::store::Store;
use crate::store::durable::fsync_dir;
use crate::store::findings::{Finding, GcKind};
use crate::store::index::IndexBatch;
use crate::store::packs::{self, PackWriter};
use crate::store::recover::list_ids;
use crate::store::retention::{RetentionPolicy, RetentionScope, ScopedPolicy};

/// What `gc` freed (or, with `dry_run`, would free).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    /// Nothing was changed: the figures say what gc would do.
    pub dry_run: bool,
    /// Deleted versions dropped (their manifests removed), including those retention dropped.
    pub deleted_versions: usize,
    /// The versions a retention policy dropped in this run (with `dry_run`: would drop), as
    /// they were before.
    pub retention_dropped: Vec<crate::FileRecord>,
    /// Chunks no live version needs.
    pub garbage_chunks: usize,
    /// Pack bytes (records with headers) of chunks no live version references.
    pub garbage_bytes: u64,
    /// Packs deleted whole.
    pub packs_deleted: usize,
    /// Packs whose live records were copied to a new pack.
    pub packs_rewritten: usize,
    /// Bytes of pack files removed from disk (new pack bytes subtracted).
    pub reclaimed_bytes: u64,
    /// Garbage left in packs below the rewrite threshold.
    pub remaining_garbage_bytes: u64,
    /// Chunks no live version names, kept because a live chunk is stored as a delta against
    /// them (directly or through a chain).
    pub kept_as_delta_bases: usize,
    /// Packs left alone because a rebuild found chunks in them that no manifest references
    /// (`ml-dash repair`); `drop_unreferenced` lets gc collect them.
    pub held_packs: usize,
    /// Packs moved to `quarantine/` instead of being deleted: they hold bytes gc cannot
    /// account for as garbage (damaged spans, or a chunk a file needs that the index lacks).
    pub packs_quarantined: usize,
    /// What gc left alone and why (a live record that fails its check is never copied).
    pub problems: Vec<Finding<GcKind>>,
}

/// How `gc` runs. Build it with `GcOptions::new()` and the setters (more settings may come).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GcOptions {
    /// Report what would be freed; change nothing (default false).
    pub dry_run: bool,
    /// Rewrite a pack when at least this fraction of its bytes is garbage (default 0.5;
    /// 0.0 rewrites every pack with any garbage).
    pub rewrite_threshold: f64,
    /// Also collect the packs a rebuild held because they hold chunks no manifest references
    /// (default false: they may be all that is left of versions whose manifests were lost).
    pub drop_unreferenced: bool,
    /// A retention policy for the files in its scope (there it replaces stored policies).
    pub retention: Option<ScopedPolicy>,
    /// Apply the policies stored in the store (`Store::set_retention`) (default true).
    pub stored_policies: bool,
}

impl GcOptions {
    /// The defaults: collect, rewrite packs at least half garbage, keep held packs.
    pub fn new() -> GcOptions {
        GcOptions::default()
    }
    /// Report only (default false).
    pub fn dry_run(mut self, yes: bool) -> Self {
        self.dry_run = yes;
        self
    }
    /// Rewrite a pack when at least this fraction of it is garbage (default 0.5).
    pub fn rewrite_threshold(mut self, t: f64) -> Self {
        self.rewrite_threshold = t;
        self
    }
    /// Also collect packs a rebuild held (default false).
    pub fn drop_unreferenced(mut self, yes: bool) -> Self {
        self.drop_unreferenced = yes;
        self
    }
    /// Soft-delete, before collecting, the versions `policy` does not keep in `scope`.
    pub fn retention(mut self, scope: RetentionScope, policy: RetentionPolicy) -> Self {
        self.retention = Some(ScopedPolicy { scope, policy });
        self
    }
    /// Apply the stored retention policies (default true).
    pub fn stored_policies(mut self, yes: bool) -> Self {
        self.stored_policies = yes;
        self
    }
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            rewrite_threshold: 0.5,
            drop_unreferenced: false,
            retention: None,
            stored_policies: true,
        }
    }
}

/// Packs handled per hold of the store lock, and live bytes copied per group.
const GROUP_PACKS: usize = 16;
const GROUP_BYTES: u64 = 1 << 30;

/// A pack's live records, copied by `copy_live`.
struct Copy {
    id: Id,
    len: u64,
    locs: Vec<(ChunkId, ChunkLoc)>,
}

/// What `scan_needed` found in a pack.
struct Scan {
    needed: Vec<ChunkId>,
    damaged: Vec<packs::Damage>,
}

/// What one pack holds that gc must keep in mind before deleting it.
struct PackPlan {
    id: Id,
    path: std::path::PathBuf,
    len: u64,
    live_bytes: u64,
    header_ok: bool,
}

impl Store {
    /// Collect garbage as `o` says: drop deleted versions, forget chunks no live version
    /// needs, delete packs that hold nothing live and rewrite packs that are mostly garbage.
    /// Each step is durable before the next, and no pack is modified in place. gc never
    /// deletes a pack holding a record it cannot account for as garbage (damaged bytes, or a
    /// chunk a file needs that the index lacks): it moves it to `quarantine/` instead, and
    /// keeps packs a rebuild found holding chunks no manifest references unless
    /// `drop_unreferenced` is set. Problems are reported in `GcReport::problems`.
    pub fn gc(&self, o: &GcOptions) -> Result<GcReport> {
        let dry_run = o.dry_run;
        if !dry_run {
            self.check_poison()?;
        }
        // No upload or pull runs while gc does (snapshots name chunks gc may remove, packs of
        // uploads in flight are not in the index yet, and gc releases the store lock while it
        // copies). A dry run removes nothing: it only keeps a real gc from deleting the packs
        // it reads.
        let _writers = self.writers_lock(!dry_run)?;
        let s = self.session()?;
        let ix = &s.index;
        let mut rep = GcReport {
            dry_run,
            ..Default::default()
        };
        // Retention first: the versions the policies drop are soft-deleted (a dry run only
        // counts them as deleted below).
        let given = match &o.retention {
            Some(g) => {
                g.policy.check()?;
                Some(ScopedPolicy {
                    scope: g.scope.clone().checked()?,
                    policy: g.policy.clone(),
                })
            }
            None => None,
        };
        let stored = if o.stored_policies {
            self.retention_policies()?
        } else {
            Vec::new()
        };
        rep.retention_dropped = crate::store::retention::plan(ix, given.as_ref(), &stored)?;
        let dropping: HashSet<Id> = if dry_run {
            rep.retention_dropped.iter().map(|r| r.id).collect()
        } else {
            self.delete_versions(&s, &rep.retention_dropped, "retention")?;
            HashSet::new()
        };
        let held = if o.drop_unreferenced {
            HashSet::new()
        } else {
            crate::store::recover::read_held(&self.root)?
        };

        let mut live: HashSet<ChunkId> = HashSet::new();
        let mut dead_versions = Vec::new();
        for r in ix.scan_versions(&Default::default()) {
            let r = r?;
            if r.is_deleted() || dropping.contains(&r.id) {
                dead_versions.push(r);
            } else {
                let m = crate::store::read::load_manifest(&s, &r)?;
                live.extend(m.chunks.iter().map(|(id, _)| *id));
            }
        }
        rep.deleted_versions = dead_versions.len();
        // A live chunk stored as a delta keeps its base (and the base's base) live; so does
        // every chunk in a held pack.
        let mut base_of: HashMap<ChunkId, ChunkId> = HashMap::new();
        let mut in_held: Vec<ChunkId> = Vec::new();
        for c in ix.chunks() {
            let (id, loc) = c?;
            if let Some(b) = loc.base {
                base_of.insert(id, b);
            }
            if held.contains(&loc.pack) {
                in_held.push(id);
            }
        }
        let mut todo: Vec<ChunkId> = live
            .iter()
            .filter(|id| base_of.contains_key(id))
            .copied()
            .collect();
        for id in in_held {
            if live.insert(id) && base_of.contains_key(&id) {
                todo.push(id);
            }
        }
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
        let mut plan: Vec<PackPlan> = Vec::new();
        for (pid, path) in list_ids(&packs_dir, "pack")? {
            let len = std::fs::metadata(&path).at(&path)?.len();
            let live_bytes: u64 = live_in_pack
                .get(&pid)
                .map_or(0, |v| v.iter().map(|(_, l)| l.record_len()).sum());
            let header_ok = len < pack::PACK_HEADER_LEN || pack_header_ok(&path, pid);
            plan.push(PackPlan {
                id: pid,
                path,
                len,
                live_bytes,
                header_ok,
            });
        }

        if !dry_run {
            self.poison(self.gc_apply(&s, &dead_versions, &garbage))?;
        }
        // The index this plan was made from: an index rebuilt while the lock is released
        // (another process found it missing or damaged) may name chunks where the plan does
        // not expect them, so the groups below stop if it changes.
        let generation = match ix.meta("gc_generation")? {
            Some(g) => g,
            None if dry_run => Vec::new(),
            None => {
                let g = Id::generate().0.to_vec();
                let mut b = IndexBatch::default();
                b.set_meta("gc_generation", &g);
                self.poison(ix.apply(b))?;
                g
            }
        };
        // The plan is durable in the index; the rest reads and copies packs, so the store lock
        // is released while it does (readers, deletes and record updates go ahead; uploads and
        // pulls wait for `writers`, so no chunk is added or moved meanwhile and the plan stays
        // true). Packs go in groups: copies and scans without the lock, then one short hold of
        // it to publish the copies and delete (or quarantine) the old packs.
        drop(s);
        let mut todo: Vec<(PackPlan, bool, u64)> = Vec::new();
        for p in plan {
            if held.contains(&p.id) {
                rep.held_packs += 1;
                continue;
            }
            let garbage_here = p.len.saturating_sub(p.live_bytes + pack::PACK_HEADER_LEN);
            // A pack with nothing live goes whole, even an empty one (a killed creation);
            // one whose header is damaged is rewritten whatever its garbage.
            let rewrite = p.live_bytes > 0
                && (!p.header_ok
                    || (garbage_here > 0
                        && garbage_here as f64 >= o.rewrite_threshold * p.len as f64));
            if p.live_bytes > 0 && !rewrite {
                rep.remaining_garbage_bytes += garbage_here;
                continue;
            }
            todo.push((p, rewrite, garbage_here));
        }
        let mut todo = todo.into_iter().peekable();
        while todo.peek().is_some() {
            // 1. Without the lock: check, copy and scan up to GROUP_PACKS packs or
            //    GROUP_BYTES of live records.
            let mut group = Vec::new();
            let mut copied = 0u64;
            while group.len() < GROUP_PACKS && copied < GROUP_BYTES {
                let Some((p, rewrite, garbage_here)) = todo.next() else {
                    break;
                };
                let mut copy = None;
                if rewrite {
                    let moved = &live_in_pack[&p.id];
                    if let Some(why) = Self::check_live_records(&p, moved)? {
                        rep.problems
                            .push(Finding::new(GcKind::LiveRecordFails, why));
                        rep.remaining_garbage_bytes += garbage_here;
                        continue;
                    }
                    if !dry_run {
                        copy = Some(self.poison(self.copy_live(p.id, moved))?);
                    }
                    copied += p.live_bytes;
                }
                let scan = Self::scan_needed(&p, &live)?;
                group.push((p, rewrite, garbage_here, copy, scan));
            }
            // 2. Under the lock: the copies take over, the old packs go.
            let s = self.session()?;
            let ix = &s.index;
            if !dry_run && ix.meta("gc_generation")?.as_deref() != Some(&generation[..]) {
                return Err(crate::Error::Internal(
                    "the index was rebuilt while gc ran; nothing is lost: run gc again".into(),
                ));
            }
            for (p, rewrite, garbage_here, copy, scan) in group {
                if let Some(c) = copy {
                    self.poison(self.publish_copy(&s, c, active == Some(p.id)))?;
                }
                // Everything live is elsewhere now: the pack may go if gc can account for
                // every byte of it; else it is moved aside.
                let unaccounted = Self::unaccounted(&s, &p, &scan, dry_run && rewrite)?;
                if unaccounted.is_empty() {
                    if rewrite {
                        rep.packs_rewritten += 1;
                        rep.reclaimed_bytes += garbage_here;
                    } else {
                        rep.packs_deleted += 1;
                        rep.reclaimed_bytes += p.len;
                    }
                    if !dry_run {
                        let mut b = IndexBatch::default();
                        b.remove_pack(p.id);
                        if active == Some(p.id) && !rewrite {
                            b.remove_meta("active_pack");
                        }
                        self.poison(ix.apply(b))?;
                        self.poison(self.remove_file(&p.path))?;
                    }
                } else {
                    rep.packs_quarantined += 1;
                    if rewrite {
                        rep.packs_rewritten += 1;
                    }
                    rep.problems.push(Finding::new(
                        GcKind::Quarantined,
                        format!(
                            "packs/{}: moved to {}/ (not deleted): {}",
                            pack::pack_file_name(p.id),
                            crate::store::recover::QUARANTINE_DIR,
                            unaccounted.join("; ")
                        ),
                    ));
                    if !dry_run {
                        self.poison(self.quarantine(&s, &p, active == Some(p.id) && !rewrite))?;
                    }
                }
            }
        }
        if !dry_run {
            // Packs still under their incoming name belong to uploads that were killed before
            // they committed (none is in flight: gc holds the writers' lock). Nothing refers to
            // them.
            for (_, path) in list_ids(&packs_dir, pack::INCOMING_EXT)? {
                let len = std::fs::metadata(&path).at(&path)?.len();
                self.poison(self.remove_file(&path))?;
                rep.packs_deleted += 1;
                rep.reclaimed_bytes += len;
            }
            self.poison(fsync_dir(&packs_dir, &self.opts.faults))?;
            if o.drop_unreferenced {
                self.poison(crate::store::recover::write_held(self, &HashSet::new()))?;
            }
        }
        if !rep.dry_run {
            self.note_last("gc", &rep);
        }
        Ok(rep)
    }

    /// Check every live record of a pack about to be rewritten: `Some(why)` if one fails (it
    /// is never copied forward; the pack stays as it is and `verify` names the file).
    fn check_live_records(p: &PackPlan, live: &[(ChunkId, ChunkLoc)]) -> Result<Option<String>> {
        let file = File::open(&p.path).at(&p.path)?;
        for (id, loc) in live {
            let where_ = || format!("{} offset {}", p.path.display(), loc.offset);
            if let Err(e) = packs::read_record(&file, loc, id, &where_) {
                return Ok(Some(format!(
                    "packs/{}: not rewritten: a live record fails its check ({e})",
                    pack::pack_file_name(p.id)
                )));
            }
        }
        Ok(None)
    }

    /// Read pack `p` (without the store lock): the live chunks it holds records of, and the
    /// spans that hold no valid record.
    fn scan_needed(p: &PackPlan, live: &HashSet<ChunkId>) -> Result<Scan> {
        let mut needed: Vec<ChunkId> = Vec::new();
        let scanned = packs::scan(&p.path, p.id, false, |r| {
            if live.contains(&r.header.id) {
                needed.push(r.header.id);
            }
        })?;
        Ok(Scan {
            needed,
            damaged: scanned.damaged,
        })
    }

    /// Why gc cannot call all of pack `p` garbage, once every live chunk of it is indexed
    /// elsewhere (`relocated`: a dry run counts them as moved): spans inside its committed
    /// length that hold no valid record (they may have held anything), and records of chunks
    /// a live file needs that the index does not hold elsewhere.
    fn unaccounted(
        s: &crate::store::Session<'_>,
        p: &PackPlan,
        scan: &Scan,
        relocated: bool,
    ) -> Result<Vec<String>> {
        let committed = s.index.pack_len(p.id)?.unwrap_or(0);
        let mut why = Vec::new();
        for c in &scan.needed {
            match s.index.chunk(c)? {
                Some(l) if l.pack != p.id || relocated => {}
                _ => why.push(format!(
                    "holds chunk {c}, which a file needs and no other pack holds"
                )),
            }
        }
        for d in scan.damaged.iter().filter(|d| d.start < committed) {
            why.push(format!(
                "bytes {}..{} hold no valid record ({})",
                d.start, d.end, d.reason
            ));
        }
        Ok(why)
    }

    /// Move pack `p` to `quarantine/` and forget it in the index.
    fn quarantine(
        &self,
        s: &crate::store::Session<'_>,
        p: &PackPlan,
        was_active: bool,
    ) -> Result<()> {
        let qdir = self.dir(crate::store::recover::QUARANTINE_DIR);
        std::fs::create_dir_all(&qdir).at(&qdir)?;
        let to = qdir.join(pack::pack_file_name(p.id));
        crate::store::durable::rename(&p.path, &to, &self.opts.faults)?;
        fsync_dir(&qdir, &self.opts.faults)?;
        let mut b = IndexBatch::default();
        b.remove_pack(p.id);
        if was_active {
            b.remove_meta("active_pack");
        }
        s.index.apply(b)
    }

    fn gc_apply(
        &self,
        s: &crate::store::Session<'_>,
        dead: &[crate::FileRecord],
        garbage: &[(ChunkId, ChunkLoc)],
    ) -> Result<()> {
        // Record updates of the versions dropped go first: left behind, they would name a
        // version whose manifest is gone, which a rebuild must report as lost.
        if !dead.is_empty() {
            let dead_ids: HashSet<Id> = dead.iter().map(|r| r.id).collect();
            let mut removed = false;
            for (_, p) in list_ids(&self.dir("events"), "event")? {
                let updates_dead = std::fs::read(&p).ok().is_some_and(|b| {
                    matches!(
                        crate::format::manifest::decode_event(&b, ""),
                        Ok(crate::format::manifest::Event::Update { version_id, .. })
                            if dead_ids.contains(&version_id)
                    )
                });
                if updates_dead {
                    self.remove_file(&p)?;
                    removed = true;
                }
            }
            if removed {
                fsync_dir(&self.dir("events"), &self.opts.faults)?;
            }
        }
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
        for (id, p) in crate::store::recover::list_ids(&self.dir("manifests"), "manifest")? {
            if s.index.version(id)?.is_some() {
                continue;
            }
            let covered = std::fs::read(&p)
                .ok()
                .and_then(|b| crate::format::manifest::Manifest::decode(&b, "").ok())
                .is_some_and(|m| s.index.covered_by_delete(&m.record).is_ok_and(|c| c));
            if covered {
                self.remove_file(&p)?;
            }
        }
        fsync_dir(&self.dir("manifests"), &self.opts.faults)?;
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

    /// Copy the live records of pack `old` to a new pack under its incoming name, checking
    /// each before it is copied (damage is never copied forward), and fsync it. Nothing refers
    /// to the copy until `publish_copy`.
    fn copy_live(&self, old: Id, live: &[(ChunkId, ChunkLoc)]) -> Result<Copy> {
        let dir = self.dir("packs");
        let old_path = dir.join(pack::pack_file_name(old));
        let file = File::open(&old_path).at(&old_path)?;
        let mut w = PackWriter::create_incoming(&dir, &self.opts.faults)?;
        let mut locs = Vec::with_capacity(live.len());
        let mut sorted = live.to_vec();
        sorted.sort_by_key(|(_, l)| l.offset);
        for (id, loc) in &sorted {
            let mut buf = vec![0u8; crate::format::usize_from(loc.record_len())];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, loc.offset).at(&old_path)?;
            let where_ = || format!("{} offset {}", old_path.display(), loc.offset);
            let h =
                pack::decode_record_header(&buf).map_err(|r| crate::Error::corrupt(where_(), r))?;
            pack::check_stored(&h, &buf[pack::RECORD_HEADER_LEN..], &where_)?;
            let new = w.append(*id, loc.raw_len, loc.codec, &buf[pack::RECORD_HEADER_LEN..])?;
            locs.push((*id, new));
        }
        w.sync()?;
        Ok(Copy {
            id: w.id,
            len: w.len(),
            locs,
        })
    }

    /// Under the lock: rename a copy to its pack name, fsync the directory, and move the
    /// index to its locations (and make it the open pack if the old one was).
    fn publish_copy(&self, s: &crate::store::Session<'_>, c: Copy, was_active: bool) -> Result<()> {
        let dir = self.dir("packs");
        packs::publish_incoming(&dir, c.id, &self.opts.faults)?;
        fsync_dir(&dir, &self.opts.faults)?;
        let mut b = IndexBatch::default();
        for (id, loc) in &c.locs {
            b.put_chunk(id, loc);
        }
        b.put_pack(c.id, c.len);
        if was_active {
            b.set_meta("active_pack", &c.id.0);
        }
        s.index.apply(b)
    }

    fn remove_file(&self, p: &std::path::Path) -> Result<()> {
        crate::store::durable::remove_file(p, &self.opts.faults)
    }
}

/// Is the 32-byte header of the pack at `path` valid and does it name `id`?
fn pack_header_ok(path: &std::path::Path, id: Id) -> bool {
    let mut h = [0u8; crate::format::usize_from(pack::PACK_HEADER_LEN)];
    File::open(path)
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut h, 0))
        .is_ok()
        && pack::check_pack_header(&h, id).is_ok()
}
