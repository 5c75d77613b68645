//! Finishing interrupted commits, and rebuilding the index from durable data.
//!
//! The index is derived: `rebuild` recreates it from packs (chunk locations), manifests
//! (versions) and events (deletes, updates), applied in id order.

use std::collections::HashMap;

use crate::digest::ChunkId;
use std::fs;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::index::{Index, IndexBatch};
use crate::manifest::{self, Event, Manifest};
use crate::pack::{self, ScanEnd};
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
                    r.updated_at = at.clone();
                    b.put_version(&r);
                }
            }
            b.set_deleted_up_to(&key, ix.deleted_up_to(&key)?.max(*up_to_version));
        }
        Event::Update {
            version_id,
            description,
            tags,
            metadata,
            at,
            ..
        } => {
            if let Some(mut r) = ix.version(*version_id)? {
                if let Some(d) = description {
                    r.description = d.clone();
                }
                if let Some(t) = tags {
                    r.tags = t.clone();
                }
                if let Some(m) = metadata {
                    r.metadata = m.clone();
                }
                r.updated_at = at.clone();
                b.put_version(&r);
            }
        }
    }
    Ok(b)
}

/// Complete the commits a crash interrupted, if any: the `pending` marker names one or more
/// versions or events (16-byte ids, in apply order; a pull commits many at once) whose files
/// may or may not have become durable.
pub(crate) fn finish_pending(s: &Session<'_>) -> Result<()> {
    let Some(raw) = s.index.meta("pending")? else {
        return Ok(());
    };
    for id in raw.chunks_exact(16) {
        let id = Id(id.try_into().expect("16 bytes"));
        s.index.apply_unflushed(commit_batch(s, id)?)?;
    }
    let mut b = IndexBatch::default();
    b.remove_meta("pending");
    s.index.apply(b)
}

/// The index changes that make version or event `id` visible, if its file is complete.
fn commit_batch(s: &Session<'_>, id: Id) -> Result<IndexBatch> {
    let mut b = IndexBatch::default();
    let mp = s.store.manifest_path(id);
    let ep = s.store.event_path(id);
    // A file that exists under its final name was renamed there complete; if it does not
    // decode anyway (disk damage), skip it and leave the report to `verify`.
    if let Some(bytes) = read_if_exists(&mp)? {
        if let Ok(m) = Manifest::decode(&bytes, &mp.display().to_string())
            && m.record.id == id
        {
            b.put_version(&m.record);
        }
    } else if let Some(bytes) = read_if_exists(&ep)?
        && let Ok(e) = manifest::decode_event(&bytes, &ep.display().to_string())
        && e.id() == id
    {
        b = event_batch(&s.index, &e)?;
    }
    Ok(b)
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
    pub packs: usize,
    pub chunks: usize,
    pub versions: usize,
    pub events: usize,
    /// Files that could not be used (damaged manifests, events or pack regions).
    pub damaged: Vec<String>,
}

impl Store {
    /// Recreate `<root>/index/` from packs, manifests and events (`ml-dash repair`). Works when
    /// the index is missing, damaged, or will not open.
    pub fn rebuild_index(&self) -> Result<RebuildReport> {
        let _lock = self.lock()?;
        self.rebuild_locked()
    }

    /// The rebuild itself; the caller holds the store lock.
    pub(crate) fn rebuild_locked(&self) -> Result<RebuildReport> {
        let dir = self.dir("index");
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&dir).at(&dir)?,
            Ok(_) => fs::remove_file(&dir).at(&dir)?,
            Err(_) => {}
        }
        let ix = Index::open(&dir)?;
        let mut rep = RebuildReport::default();
        let mut last_id: Option<Id> = None;
        // A chunk can have several good records (gc leaves records it no longer indexes in
        // packs it does not rewrite; a crash can leave a copy): a whole record wins over a delta
        // (its base may be long gone), and every delta record is remembered in case the one
        // indexed turns out to stand on a missing base.
        let mut delta_records: HashMap<ChunkId, Vec<pack::ChunkLoc>> = HashMap::new();
        for (pid, path) in list_ids(&self.dir("packs"), "pack")? {
            let mut b = IndexBatch::default();
            let mut end = pack::PACK_HEADER_LEN;
            let mut here: HashMap<ChunkId, pack::ChunkLoc> = HashMap::new();
            let how = pack::scan(&path, pid, true, |r| {
                end = r.offset + r.header.stored_len as u64 + pack::RECORD_HEADER_LEN as u64;
                if r.data_ok == Some(true) {
                    let id = r.header.id;
                    let loc = pack::ChunkLoc {
                        pack: pid,
                        offset: r.offset,
                        stored_len: r.header.stored_len,
                        raw_len: r.header.raw_len,
                        codec: r.header.codec,
                        base: r.base,
                    };
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
                } else if r.data_ok == Some(false) {
                    rep.damaged.push(format!(
                        "{}: chunk {} at offset {} is damaged",
                        path.display(),
                        r.header.id,
                        r.offset
                    ));
                }
            })?;
            if let ScanEnd::Damaged { offset, reason } = &how {
                rep.damaged
                    .push(format!("{}: {reason} at offset {offset}", path.display()));
            }
            rep.chunks += here.len();
            // A pack shorter than its header (killed right after creation) holds nothing:
            // leave it unregistered for gc to delete.
            if how != (ScanEnd::TornTail { offset: 0 }) {
                b.put_pack(pid, end);
            }
            ix.apply(b)?;
            rep.packs += 1;
        }
        // Every indexed delta must stand on an indexed chain: else take another record of it
        // whose base is indexed, or leave it out (verify then names what needed it). Repeat
        // while something changes: leaving one out can break a delta above it (each pass
        // removes or replaces at least one entry, so this ends).
        for _ in 0..=delta_records.len() {
            let mut b = IndexBatch::default();
            let mut changed = false;
            for (id, alts) in &delta_records {
                let Some(cur) = ix.chunk(id)? else { continue };
                let Some(base) = cur.base else { continue };
                if ix.chunk(&base)?.is_some() {
                    continue;
                }
                changed = true;
                let mut other = None;
                for a in alts {
                    if let Some(ab) = a.base
                        && ix.chunk(&ab)?.is_some()
                    {
                        other = Some(*a);
                        break;
                    }
                }
                match other {
                    Some(a) => b.put_chunk(id, &a),
                    None => b.remove_chunk(id),
                }
            }
            ix.apply(b)?;
            if !changed {
                break;
            }
        }
        for (id, path) in list_ids(&self.dir("manifests"), "manifest")? {
            match fs::read(&path)
                .at(&path)
                .and_then(|b| Manifest::decode(&b, &path.display().to_string()))
            {
                Ok(m) if m.record.id == id => {
                    let mut b = IndexBatch::default();
                    b.put_version(&m.record);
                    ix.apply(b)?;
                    rep.versions += 1;
                    last_id = last_id.max(Some(id));
                }
                Ok(_) => rep
                    .damaged
                    .push(format!("{}: id does not match file name", path.display())),
                Err(e) => rep.damaged.push(e.to_string()),
            }
        }
        for (id, path) in list_ids(&self.dir("events"), "event")? {
            match fs::read(&path)
                .at(&path)
                .and_then(|b| manifest::decode_event(&b, &path.display().to_string()))
            {
                Ok(e) if e.id() == id => {
                    ix.apply(event_batch(&ix, &e)?)?;
                    rep.events += 1;
                    last_id = last_id.max(Some(id));
                }
                Ok(_) => rep
                    .damaged
                    .push(format!("{}: id does not match file name", path.display())),
                Err(e) => rep.damaged.push(e.to_string()),
            }
        }
        let mut b = IndexBatch::default();
        if let Some(id) = last_id {
            b.set_meta("last_id", &id.0);
        }
        ix.apply(b)?;
        Ok(rep)
    }
}
