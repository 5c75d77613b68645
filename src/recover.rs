//! Finishing interrupted commits, and rebuilding the index from durable data.
//!
//! The index is derived: `rebuild` recreates it from packs (chunk locations), manifests
//! (versions) and events (deletes, updates), applied in id order.

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
        for (pid, path) in list_ids(&self.dir("packs"), "pack")? {
            let mut b = IndexBatch::default();
            let mut end = pack::PACK_HEADER_LEN;
            let mut seen = std::collections::HashSet::new();
            let how = pack::scan(&path, pid, true, |r| {
                end = r.offset + r.header.stored_len as u64 + pack::RECORD_HEADER_LEN as u64;
                if r.data_ok == Some(true) && seen.insert(r.header.id) {
                    let loc = pack::ChunkLoc {
                        pack: pid,
                        offset: r.offset,
                        stored_len: r.header.stored_len,
                        raw_len: r.header.raw_len,
                        codec: r.header.codec,
                        base: r.base,
                    };
                    if ix.chunk(&r.header.id).ok().flatten().is_none() {
                        b.put_chunk(&r.header.id, &loc);
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
            rep.chunks += seen.len();
            // A pack shorter than its header (killed right after creation) holds nothing:
            // leave it unregistered for gc to delete.
            if how != (ScanEnd::TornTail { offset: 0 }) {
                b.put_pack(pid, end);
            }
            ix.apply(b)?;
            rep.packs += 1;
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
