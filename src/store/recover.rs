//! Finishing interrupted commits, and rebuilding the index from durable data.
//!
//! The index is derived: `rebuild` recreates it from packs (chunk locations), manifests
//! (versions) and events (deletes, updates), applied in id order.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::format::codec::Codec;
use crate::format::digest::ChunkId;

use crate::error::{Error, IoContext, Result};
use crate::format::id::Id;
use crate::format::manifest::{self, Event, Manifest};
use crate::format::pack;
use crate::store::findings::{Finding, RebuildKind};
use crate::store::index::{Index, IndexBatch};
use crate::store::packs::{self, PackWriter};
use crate::store::{Session, Store};

/// The index changes an event makes.
pub(crate) fn event_batch(ix: &Index, e: &Event) -> Result<IndexBatch> {
    let mut b = IndexBatch::default();
    match e {
        Event::Delete {
            up_to_version, at, ..
        } => {
            let key = e.file_key().expect("a delete names a path");
            for (v, id) in ix.versions_of(&key)? {
                if v > *up_to_version {
                    continue;
                }
                if let Some(mut r) = ix.version(id)?
                    && r.deleted_at.is_none()
                {
                    r.deleted_at = Some(at.clone());
                    r.updated_at.clone_from(at);
                    b.put_version(&r);
                }
            }
            b.set_deleted_up_to(&key, ix.deleted_up_to(&key)?.max(*up_to_version));
        }
        Event::DeleteVersions {
            version_ids, at, ..
        } => {
            for id in version_ids {
                b.set_dropped(*id);
                if let Some(mut r) = ix.version(*id)?
                    && r.deleted_at.is_none()
                {
                    r.deleted_at = Some(at.clone());
                    r.updated_at.clone_from(at);
                    b.put_version(&r);
                }
            }
        }
        Event::Update { version_id, .. } => {
            if let Some(mut r) = ix.version(*version_id)? {
                e.apply_update(&mut r);
                b.put_version(&r);
            }
        }
    }
    Ok(b)
}

/// Settle the commit a crash (or a failed durable step) interrupted, if any.
///
/// The `pending` marker names the versions and events of one commit (16-byte ids, in apply
/// order): an upload of one file or of many, a delete, an update, a pull. They become visible
/// together or not at all. Their files are renamed into place only once all of them are
/// durable, so if every one of them is under its final name, the commit got that far and is
/// finished here: each becomes visible. Otherwise it stopped before or during the renames: the
/// files that made it are removed (durably) and none becomes visible; the commit was never
/// acknowledged.
pub(crate) fn finish_pending(s: &Session<'_>) -> Result<()> {
    let Some(raw) = s.index.meta("pending")? else {
        return Ok(());
    };
    let ids = pending_ids(&raw);
    match read_pending(s.store, &ids)? {
        Some(files) => {
            for (id, file) in ids.iter().zip(files) {
                s.index.apply_unflushed(commit_batch(s, *id, file)?)?;
            }
        }
        None => roll_back(s.store, &ids)?,
    }
    let mut b = IndexBatch::default();
    b.remove_meta("pending");
    s.index.apply(b)
}

fn pending_ids(raw: &[u8]) -> Vec<Id> {
    raw.chunks_exact(16)
        .map(|id| Id(id.try_into().expect("16 bytes")))
        .collect()
}

/// A pending id's file under its final name.
enum PendingFile {
    Manifest(Vec<u8>),
    Event(Vec<u8>),
}

/// The file of every pending id, or `None` if any of them is not in place.
fn read_pending(store: &Store, ids: &[Id]) -> Result<Option<Vec<PendingFile>>> {
    let mut files = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(b) = read_if_exists(&store.manifest_path(*id))? {
            files.push(PendingFile::Manifest(b));
        } else if let Some(b) = read_if_exists(&store.event_path(*id))? {
            files.push(PendingFile::Event(b));
        } else {
            return Ok(None);
        }
    }
    Ok(Some(files))
}

/// Remove the files of an interrupted commit that reached their final names, so that neither
/// this store nor a later `repair` shows part of it.
fn roll_back(store: &Store, ids: &[Id]) -> Result<()> {
    let faults = &store.opts.faults;
    for (dir, path_of) in [
        (
            "manifests",
            Store::manifest_path as fn(&Store, Id) -> PathBuf,
        ),
        ("events", Store::event_path),
    ] {
        let mut removed = false;
        for id in ids {
            let p = path_of(store, *id);
            if fs::symlink_metadata(&p).is_ok() {
                crate::store::durable::remove_file(&p, faults)?;
                removed = true;
            }
        }
        if removed {
            crate::store::durable::fsync_dir(&store.dir(dir), faults)?;
        }
    }
    Ok(())
}

/// The index changes that make version or event `id` visible. A file under its final name was
/// renamed there complete; if it does not decode anyway (disk damage), it is skipped and left
/// for `verify` to report.
fn commit_batch(s: &Session<'_>, id: Id, file: PendingFile) -> Result<IndexBatch> {
    let mut b = IndexBatch::default();
    match file {
        PendingFile::Manifest(bytes) => {
            let mp = s.store.manifest_path(id);
            if let Ok(m) = Manifest::decode(&bytes, &mp.display().to_string())
                && m.record.id == id
            {
                b.put_version(&m.record);
            }
        }
        PendingFile::Event(bytes) => {
            let ep = s.store.event_path(id);
            if let Ok(e) = manifest::decode_event(&bytes, &ep.display().to_string())
                && e.id() == id
            {
                b = event_batch(&s.index, &e)?;
            }
        }
    }
    Ok(b)
}

/// Before a rebuild: if the index being replaced opens and names an interrupted commit that
/// did not get all its files into place, remove the ones that did (`roll_back`), so that the
/// rebuilt index does not show part of a commit either.
fn settle_pending_in(store: &Store, dir: &Path) {
    if !dir.join("conf").exists() {
        return;
    }
    let Ok(ix) = Index::open(dir) else {
        return;
    };
    let Ok(Some(raw)) = ix.meta("pending") else {
        return;
    };
    drop(ix);
    let ids = pending_ids(&raw);
    if let Ok(None) = read_pending(store, &ids) {
        // A failure leaves the files; the rebuild then shows what is complete of them.
        let _ = roll_back(store, &ids);
    }
}

fn read_if_exists(p: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(p, e)),
    }
}

/// `(id, path)` of every file in `dir` named `<id>.<ext>`, sorted by id.
pub(crate) fn list_ids(dir: &Path, ext: &str) -> Result<Vec<(Id, std::path::PathBuf)>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        if let Some(id) = e
            .file_name()
            .to_str()
            .and_then(|n| manifest::parse_file_name(n, ext))
        {
            v.push((id, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// What a rebuild found.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RebuildReport {
    /// Packs scanned.
    pub packs: usize,
    /// Chunks indexed.
    pub chunks: usize,
    /// Versions indexed (from manifests).
    pub versions: usize,
    /// Events applied.
    pub events: usize,
    /// Damage found, one line each: spans of packs that hold no valid record (the scan
    /// resumed after each), records whose data fails its check, damaged manifests and events.
    pub damaged: Vec<Finding<RebuildKind>>,
    /// Versions that cannot be read back after the rebuild (a chunk they need is in no
    /// valid record), `ns/project/experiment/path/name vN: why`.
    pub unreadable_versions: Vec<Finding<RebuildKind>>,
    /// Versions this store had (the old index, or an update event, names them) whose
    /// manifest is gone: they cannot be brought back from this store.
    pub lost_versions: Vec<Finding<RebuildKind>>,
    /// Packs holding valid chunks that no manifest references, one line each. They may be
    /// all that is left of versions whose manifests were lost, so `gc` keeps these packs
    /// until it is told otherwise (`gc --drop-unreferenced`).
    pub unreferenced: Vec<Finding<RebuildKind>>,
    /// Chunks copied back into the store from packs `gc` had quarantined.
    pub salvaged_chunks: usize,
}

impl RebuildReport {
    /// Nothing damaged, unreadable, lost or unreferenced.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
            && self.unreadable_versions.is_empty()
            && self.lost_versions.is_empty()
            && self.unreferenced.is_empty()
    }
}

/// Packs `gc` must leave alone until `gc --drop-unreferenced`: a rebuild found chunks in them
/// that no manifest references (`<root>/held`, one pack id per line; a durable file, since
/// the index is derived data and a later rebuild must not forget it).
pub(crate) const HELD_FILE: &str = "held";

/// The packs a rebuild asked `gc` to keep.
pub(crate) fn read_held(root: &Path) -> Result<HashSet<Id>> {
    let p = root.join(HELD_FILE);
    match fs::read_to_string(&p) {
        Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(Error::io(p, e)),
    }
}

/// Replace the set of held packs (an empty set removes the file).
pub(crate) fn write_held(store: &Store, held: &HashSet<Id>) -> Result<()> {
    let p = store.root.join(HELD_FILE);
    if held.is_empty() {
        if !p.exists() {
            return Ok(());
        }
        crate::store::durable::remove_file(&p, &store.opts.faults)?;
        return crate::store::durable::fsync_dir(&store.root, &store.opts.faults);
    }
    let mut ids: Vec<Id> = held.iter().copied().collect();
    ids.sort();
    let body: String = ids.iter().map(|id| format!("{id}\n")).collect();
    crate::store::durable::write_atomic(&p, body.as_bytes(), &store.opts.faults)
}

/// Where packs go that `gc` could not account for (`<root>/quarantine/`): kept for
/// inspection, reported by `verify`, and searched by a rebuild for chunks a file needs.
pub(crate) const QUARANTINE_DIR: &str = "quarantine";

/// The live versions an index knows (id → `name vN`), if it opens; for naming versions a
/// rebuild cannot bring back.
fn versions_in(dir: &Path) -> HashMap<Id, String> {
    if !dir.join("conf").exists() {
        return HashMap::new();
    }
    let Ok(ix) = Index::open(dir) else {
        return HashMap::new();
    };
    ix.scan_versions(&Default::default())
        .filter_map(|r| r.ok())
        .filter(|r| !r.is_deleted())
        .map(|r| (r.id, format!("{} v{}", r.key().display(), r.version)))
        .collect()
}

/// A valid record found in a quarantined pack.
struct Spare {
    path: PathBuf,
    header: pack::RecordHeader,
    offset: u64,
}

impl Store {
    /// Recreate `<root>/index/` from packs, manifests and events (`ml-dash repair`). Works when
    /// the index is missing, damaged, or will not open. The new index is built beside the old
    /// one and swapped in only when complete: a rebuild that fails leaves the old index as it
    /// was.
    pub fn rebuild_index(&self) -> Result<RebuildReport> {
        // Packs of uploads in flight are not in any index yet: wait for them to commit, so the
        // rebuild does not take their chunks for unreferenced ones.
        let _writers = self.writers_lock(true)?;
        let _lock = self.lock()?;
        self.rebuild_locked()
    }

    /// The rebuild itself; the caller holds the store lock.
    pub(crate) fn rebuild_locked(&self) -> Result<RebuildReport> {
        let dir = self.dir("index");
        let new_dir = self.dir("index.rebuild");
        remove_any(&new_dir)?;
        remove_any(&self.dir("index.old"))?;
        settle_pending_in(self, &dir);
        let known_before = versions_in(&dir);
        let rep = {
            let ix = Index::open(&new_dir)?.with_faults(self.opts.faults.clone());
            let rep = self.rebuild_into(&ix, &known_before)?;
            ix.flush()?;
            rep
        };
        // Swap: the old index (or whatever is in its place) moves aside, the new one in.
        if fs::symlink_metadata(&dir).is_ok() {
            crate::store::durable::rename(&dir, &self.dir("index.old"), &self.opts.faults)?;
        }
        crate::store::durable::rename(&new_dir, &dir, &self.opts.faults)?;
        crate::store::durable::fsync_dir(&self.root, &self.opts.faults)?;
        remove_any(&self.dir("index.old"))?;
        Ok(rep)
    }

    fn rebuild_into(
        &self,
        ix: &Index,
        known_before: &HashMap<Id, String>,
    ) -> Result<RebuildReport> {
        let mut rep = RebuildReport::default();
        let mut last_id: Option<Id> = None;
        // A chunk can have several good records (gc leaves records it no longer indexes in
        // packs it does not rewrite; a crash can leave a copy): a whole record wins over a delta
        // (its base may be long gone), and every delta record is remembered in case the one
        // indexed turns out not to decode.
        let mut delta_records: HashMap<ChunkId, Vec<pack::ChunkLoc>> = HashMap::new();
        // Delta records that fail their check on their own (the inner checksum): reads never
        // look at that checksum (they decode the record through its base and prove the result
        // against the chunk id), so such a record may still hold its chunk, and be the only
        // one that does. It is tried like any other delta record, after the sound ones.
        let mut unchecked: Vec<(PathBuf, ChunkId, pack::ChunkLoc)> = Vec::new();
        let mut in_pack: HashMap<Id, Vec<ChunkId>> = HashMap::new();
        for (pid, path) in list_ids(&self.dir("packs"), "pack")? {
            let mut b = IndexBatch::default();
            let mut here: HashMap<ChunkId, pack::ChunkLoc> = HashMap::new();
            let ids = in_pack.entry(pid).or_default();
            let scanned = packs::scan(&path, pid, true, |r| {
                let id = r.header.id;
                let loc = pack::ChunkLoc {
                    pack: pid,
                    offset: r.offset,
                    stored_len: r.header.stored_len,
                    raw_len: r.header.raw_len,
                    codec: r.header.codec,
                    base: r.base,
                };
                if r.data_ok == Some(true) {
                    ids.push(id);
                    if loc.base.is_some() {
                        delta_records.entry(id).or_default().push(loc);
                    }
                    let current = here
                        .get(&id)
                        .copied()
                        .or_else(|| ix.chunk(&id).ok().flatten());
                    if current.is_none_or(|c| c.base.is_some() && loc.base.is_none()) {
                        b.put_chunk(&id, &loc);
                        here.insert(id, loc);
                    }
                } else if r.data_ok == Some(false) && loc.base.is_some() {
                    unchecked.push((path.clone(), id, loc));
                } else if r.data_ok == Some(false) {
                    rep.damaged.push(Finding::new(
                        RebuildKind::DamagedRecord,
                        format!(
                            "{}: chunk {} at offset {} is damaged",
                            path.display(),
                            r.header.id,
                            r.offset
                        ),
                    ));
                }
            })?;
            if let Some(reason) = &scanned.header {
                rep.damaged.push(Finding::new(
                    RebuildKind::BadPackHeader,
                    format!(
                        "{}: {reason} (its records were read anyway)",
                        path.display()
                    ),
                ));
            }
            for d in &scanned.damaged {
                rep.damaged.push(Finding::new(RebuildKind::DamagedSpan, format!(
                    "{}: bytes {}..{} hold no valid record ({}); the records after them were kept",
                    path.display(),
                    d.start,
                    d.end,
                    d.reason
                )));
            }
            rep.chunks += here.len();
            // A pack shorter than its header (killed right after creation) holds nothing:
            // leave it unregistered for gc to delete.
            if !scanned.is_empty_leftover() {
                b.put_pack(pid, scanned.end);
            }
            ix.apply_unflushed(b)?;
            rep.packs += 1;
        }
        let mut b = IndexBatch::default();
        for (_, id, loc) in &unchecked {
            delta_records.entry(*id).or_default().push(*loc);
            if ix.chunk(id)?.is_none() {
                b.put_chunk(id, loc);
            }
        }
        ix.apply_unflushed(b)?;
        self.prove_deltas(ix, &delta_records, &mut rep)?;
        self.store_whole(ix, &unchecked, &mut in_pack, &mut rep)?;

        // Versions and events.
        let mut referenced: HashSet<ChunkId> = HashSet::new();
        let mut live: Vec<(crate::FileRecord, Vec<ChunkId>)> = Vec::new();
        let mut have_manifest: HashSet<Id> = HashSet::new();
        for (id, path) in list_ids(&self.dir("manifests"), "manifest")? {
            match fs::read(&path)
                .at(&path)
                .and_then(|b| Manifest::decode(&b, &path.display().to_string()))
            {
                Ok(m) if m.record.id == id => {
                    let mut b = IndexBatch::default();
                    b.put_version(&m.record);
                    ix.apply_unflushed(b)?;
                    rep.versions += 1;
                    last_id = last_id.max(Some(id));
                    have_manifest.insert(id);
                    let chunks: Vec<ChunkId> = m.chunks.iter().map(|(c, _)| *c).collect();
                    referenced.extend(chunks.iter().copied());
                    live.push((m.record, chunks));
                }
                Ok(_) => rep.damaged.push(Finding::new(
                    RebuildKind::Unreadable,
                    format!("{}: id does not match file name", path.display()),
                )),
                Err(e) => rep
                    .damaged
                    .push(Finding::new(RebuildKind::Unreadable, e.to_string())),
            }
        }
        for (id, path) in list_ids(&self.dir("events"), "event")? {
            match fs::read(&path)
                .at(&path)
                .and_then(|b| manifest::decode_event(&b, &path.display().to_string()))
            {
                Ok(e) if e.id() == id => {
                    if let Event::Update { version_id, .. } = &e
                        && !have_manifest.contains(version_id)
                        && !known_before.contains_key(version_id)
                        && ix.version(*version_id)?.is_none()
                    {
                        rep.lost_versions.push(Finding::new(RebuildKind::LostVersion, format!(
                            "version {version_id}: event {id} updates it, but its manifest is gone"
                        )));
                    }
                    ix.apply_unflushed(event_batch(ix, &e)?)?;
                    rep.events += 1;
                    last_id = last_id.max(Some(id));
                }
                Ok(_) => rep.damaged.push(Finding::new(
                    RebuildKind::Unreadable,
                    format!("{}: id does not match file name", path.display()),
                )),
                Err(e) => rep
                    .damaged
                    .push(Finding::new(RebuildKind::Unreadable, e.to_string())),
            }
        }
        for (id, name) in known_before {
            if !have_manifest.contains(id) {
                rep.lost_versions.push(Finding::new(
                    RebuildKind::LostVersion,
                    format!("{name} ({id}): in the index before the rebuild, its manifest is gone"),
                ));
            }
        }
        rep.lost_versions.sort();

        // Chunks the manifests need that no pack holds: look in quarantined packs.
        self.salvage_quarantined(ix, &referenced, &mut rep)?;

        // Delta bases of referenced chunks are referenced too.
        let mut todo: Vec<ChunkId> = referenced.iter().copied().collect();
        while let Some(c) = todo.pop() {
            if let Some(b) = ix.chunk(&c)?.and_then(|l| l.base)
                && referenced.insert(b)
            {
                todo.push(b);
            }
        }
        for (rec, chunks) in &live {
            if rec.is_deleted() {
                continue;
            }
            if let Some(c) = chunks.iter().find(|c| ix.chunk(c).ok().flatten().is_none()) {
                rep.unreadable_versions.push(Finding::new(
                    RebuildKind::UnreadableVersion,
                    format!(
                        "{} v{}: chunk {c} is in no valid record",
                        rec.key().display(),
                        rec.version
                    ),
                ));
            }
        }
        rep.unreadable_versions.sort();

        // Valid chunks no manifest needs, per pack: held for the user to decide.
        let mut held = HashSet::new();
        let mut pids: Vec<&Id> = in_pack.keys().collect();
        pids.sort();
        for pid in pids {
            let mut n = 0usize;
            let mut bytes = 0u64;
            let mut seen = HashSet::new();
            for c in &in_pack[pid] {
                if referenced.contains(c) || !seen.insert(*c) {
                    continue;
                }
                if let Some(l) = ix.chunk(c)?
                    && l.pack == *pid
                {
                    n += 1;
                    bytes += l.record_len();
                }
            }
            if n > 0 {
                held.insert(*pid);
                rep.unreferenced.push(Finding::new(RebuildKind::Unreferenced, format!(
                    "packs/{}: {n} chunks ({bytes} bytes) that no manifest references; kept by gc until `ml-dash gc --drop-unreferenced`",
                    pack::pack_file_name(*pid)
                )));
            }
        }
        write_held(self, &held)?;

        let mut b = IndexBatch::default();
        if let Some(id) = last_id {
            b.set_meta("last_id", &id.0);
        }
        ix.apply(b)?;
        Ok(rep)
    }

    /// Every indexed delta must decode, through an indexed chain, to its chunk id: else take
    /// another record of it that does, or leave it out (the report then names the versions
    /// that needed it). Repeat while something changes: leaving one out can break a delta
    /// above it (each pass removes or replaces at least one entry, so this ends).
    fn prove_deltas(
        &self,
        ix: &Index,
        delta_records: &HashMap<ChunkId, Vec<pack::ChunkLoc>>,
        rep: &mut RebuildReport,
    ) -> Result<()> {
        let proves = |loc: &pack::ChunkLoc, id: &ChunkId| -> bool {
            let mut located = crate::store::read::Located::new(self.dir("packs"));
            let what = || format!("chunk {id}");
            located.add(ix, loc, &what).is_ok() && located.read(loc, id, &what).is_ok()
        };
        let mut failed: HashSet<(ChunkId, Id, u64)> = HashSet::new();
        for _ in 0..=delta_records.len() {
            let mut b = IndexBatch::default();
            let mut changed = false;
            for (id, alts) in delta_records {
                let Some(cur) = ix.chunk(id)? else { continue };
                if cur.base.is_none() || proves(&cur, id) {
                    continue;
                }
                changed = true;
                failed.insert((*id, cur.pack, cur.offset));
                let other = alts
                    .iter()
                    .find(|a| !failed.contains(&(*id, a.pack, a.offset)) && proves(a, id));
                match other {
                    Some(a) => b.put_chunk(id, a),
                    None => b.remove_chunk(id),
                }
            }
            ix.apply_unflushed(b)?;
            if !changed {
                break;
            }
        }
        let mut failed: Vec<_> = failed.into_iter().collect();
        failed.sort();
        for (id, pid, off) in failed {
            if ix
                .chunk(&id)?
                .is_none_or(|l| l.pack != pid || l.offset != off)
            {
                rep.damaged.push(Finding::new(RebuildKind::DeltaUndecodable, format!(
                    "packs/{}: delta chunk {id} at offset {off} does not decode to its id (its base is missing or damaged)",
                    pack::pack_file_name(pid)
                )));
            }
        }
        Ok(())
    }

    /// Delta records that failed their check on their own: each one `prove_deltas` kept
    /// (it decodes to its chunk id through its base) is stored again, whole, in a new pack, so
    /// that gc, push and verify, which check records on their own, find a sound record of the
    /// chunk; the others are reported damaged.
    fn store_whole(
        &self,
        ix: &Index,
        unchecked: &[(PathBuf, ChunkId, pack::ChunkLoc)],
        in_pack: &mut HashMap<Id, Vec<ChunkId>>,
        rep: &mut RebuildReport,
    ) -> Result<()> {
        let mut w: Option<PackWriter> = None;
        let mut b = IndexBatch::default();
        for (path, id, loc) in unchecked {
            let what = || format!("chunk {id}");
            let raw = if ix.chunk(id)? == Some(*loc) {
                let mut located = crate::store::read::Located::new(self.dir("packs"));
                located
                    .add(ix, loc, &what)
                    .and_then(|()| located.read(loc, id, &what))
                    .ok()
            } else {
                None
            };
            let Some(raw) = raw else {
                rep.damaged.push(Finding::new(
                    RebuildKind::DamagedRecord,
                    format!(
                        "{}: chunk {id} at offset {} is damaged",
                        path.display(),
                        loc.offset
                    ),
                ));
                continue;
            };
            let w = match &mut w {
                Some(w) => w,
                None => w.insert(PackWriter::create(&self.dir("packs"), &self.opts.faults)?),
            };
            let new = match crate::format::codec::encode(&raw, self.opts.compression) {
                Some((codec, stored)) => w.append(*id, loc.raw_len, codec, &stored)?,
                None => w.append(*id, loc.raw_len, Codec::Raw, &raw)?,
            };
            b.put_chunk(id, &new);
            in_pack.entry(w.id).or_default().push(*id);
            rep.damaged.push(Finding::new(RebuildKind::DamagedRecord, format!(
                "{}: delta chunk {id} at offset {} fails its inner checksum but decodes to its id through its base; stored again whole in packs/{}",
                path.display(),
                loc.offset,
                pack::pack_file_name(w.id)
            )));
        }
        if let Some(mut w) = w {
            w.sync()?;
            b.put_pack(w.id, w.len());
            ix.apply_unflushed(b)?;
        }
        Ok(())
    }

    /// Copy records the manifests need, and no pack in `packs/` holds, out of quarantined packs
    /// into a new pack (whole records only, or deltas whose base is indexed; each proven).
    fn salvage_quarantined(
        &self,
        ix: &Index,
        referenced: &HashSet<ChunkId>,
        rep: &mut RebuildReport,
    ) -> Result<()> {
        let qdir = self.dir(QUARANTINE_DIR);
        if !qdir.is_dir() {
            return Ok(());
        }
        let mut spares: HashMap<ChunkId, Vec<Spare>> = HashMap::new();
        for (pid, path) in list_ids(&qdir, "pack")? {
            packs::scan(&path, pid, true, |r| {
                if r.data_ok == Some(true)
                    && referenced.contains(&r.header.id)
                    && ix.chunk(&r.header.id).ok().flatten().is_none()
                {
                    spares.entry(r.header.id).or_default().push(Spare {
                        path: path.clone(),
                        header: r.header,
                        offset: r.offset,
                    });
                }
            })?;
        }
        if spares.is_empty() {
            return Ok(());
        }
        let mut w = PackWriter::create(&self.dir("packs"), &self.opts.faults)?;
        let mut pending = Vec::new();
        // Whole records first, then deltas (their base may be among the whole ones).
        let mut order: Vec<(&ChunkId, &Spare)> = spares
            .iter()
            .flat_map(|(id, v)| v.iter().map(move |s| (id, s)))
            .collect();
        order.sort_by_key(|(_, s)| s.header.codec == Codec::Delta);
        let mut done = HashSet::new();
        for (id, sp) in order {
            if done.contains(id) {
                continue;
            }
            let f = fs::File::open(&sp.path).at(&sp.path)?;
            let mut data = vec![0u8; sp.header.stored_len as usize];
            std::os::unix::fs::FileExt::read_exact_at(
                &f,
                &mut data,
                sp.offset + pack::RECORD_HEADER_LEN as u64,
            )
            .at(&sp.path)?;
            let loc = w.append(*id, sp.header.raw_len, sp.header.codec, &data)?;
            pending.push((*id, loc));
            done.insert(*id);
        }
        w.sync()?;
        let mut b = IndexBatch::default();
        b.put_pack(w.id, w.len());
        ix.apply_unflushed(b)?;
        // Index whole records, then each delta whose chain decodes to its id.
        for pass in 0..=pending.len() {
            let mut b = IndexBatch::default();
            let before = pending.len();
            pending.retain(|(id, loc)| {
                if loc.base.is_none() {
                    b.put_chunk(id, loc);
                    rep.salvaged_chunks += 1;
                    return false;
                }
                let mut located = crate::store::read::Located::new(self.dir("packs"));
                let what = || format!("chunk {id}");
                if located.add(ix, loc, &what).is_ok() && located.read(loc, id, &what).is_ok() {
                    b.put_chunk(id, loc);
                    rep.salvaged_chunks += 1;
                    return false;
                }
                true
            });
            ix.apply_unflushed(b)?;
            if pending.len() == before && pass > 0 {
                break;
            }
        }
        Ok(())
    }
}

/// Remove a file or directory tree at `p`, if there is one.
fn remove_any(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).at(p),
        Ok(_) => fs::remove_file(p).at(p),
        Err(_) => Ok(()),
    }
}
