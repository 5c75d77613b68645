//! `pull`: fetch the versions and events the store lacks, and only the chunks it lacks.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use object_store::ObjectStoreExt;
use rayon::prelude::*;
use serde::Serialize;

use super::{Remote, SMALL_CONCURRENCY};
use crate::codec::Codec;
use crate::digest::ChunkId;
use crate::durable;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::IndexBatch;
use crate::manifest::{self, Manifest};
use crate::pack::{self, PackWriter};
use crate::path::FileKey;
use crate::recover::list_ids;
use crate::rpack;
use crate::store::{Session, Store};

/// Ranges closer than this are fetched as one GET.
const MAX_GAP: u64 = 256 << 10;
/// The largest single ranged GET (bounds memory: `RANGES_IN_FLIGHT` of these at once).
const MAX_RANGE: u64 = 16 << 20;
const RANGES_IN_FLIGHT: usize = 4;

/// What a pull did.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullReport {
    pub remote: String,
    /// New versions and events committed.
    pub manifests: u64,
    pub events: u64,
    /// Chunks fetched (the store lacked them) and their bytes as stored.
    pub chunks: u64,
    pub bytes: u64,
    /// Chunks the new versions use that the store already had.
    pub chunks_already_local: u64,
    /// Versions not pulled because the store has another version with the same number for
    /// the same path (two machines uploaded it independently).
    pub conflicts: Vec<String>,
    /// Remote objects that could not be used (damaged, or naming chunks the remote lacks).
    pub damaged: Vec<String>,
}

struct Wanted {
    pack: Id,
    entry: rpack::Entry,
}

impl Store {
    /// Merge the remote into this store (which may be empty). Holds the store lock throughout.
    pub fn pull(&self, remote: &Remote, progress: Option<&AtomicU64>) -> Result<PullReport> {
        if !remote.rt.block_on(remote.check_marker(false))? {
            return Err(Error::Remote {
                remote: remote.url.clone(),
                reason: "no ml-dash remote here (nothing was pushed to it)".into(),
            });
        }
        // Manifests before packs: a pusher uploads packs before manifests, so every manifest
        // listed here has its chunks in a pack listed after it (listed the other way round, a
        // push landing in between looked like a manifest whose chunks the remote lacks).
        let (rman, rev) = remote.rt.block_on(async {
            futures::try_join!(
                remote.list_ids("manifests", "manifest"),
                remote.list_ids("events", "event")
            )
        })?;
        let known = remote
            .rt
            .block_on(remote.chunk_map(&self.remote_cache(remote)))?;
        self.check_poison()?;
        let s = self.session()?;
        let mut rep = PullReport {
            remote: remote.url.clone(),
            damaged: known.damaged.clone(),
            ..PullReport::default()
        };
        let have_m: HashSet<Id> = list_ids(&self.dir("manifests"), "manifest")?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let have_e: HashSet<Id> = list_ids(&self.dir("events"), "event")?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let remote_versions: HashSet<Id> = rman.iter().map(|(id, _)| *id).collect();
        let new_m: Vec<Id> = rman
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| !have_m.contains(id))
            .collect();
        let new_e: Vec<Id> = rev
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| !have_e.contains(id))
            .collect();
        let manifests = fetch_all(remote, "manifests", "manifest", &new_m)?;
        let events = fetch_all(remote, "events", "event", &new_e)?;

        // Which versions can be pulled, and which chunks they need.
        let mut items: Vec<(Id, Vec<u8>)> = Vec::new();
        let mut want: Vec<Wanted> = Vec::new();
        let mut scheduled: HashSet<ChunkId> = HashSet::new();
        let mut taken: HashMap<(FileKey, u32), Id> = HashMap::new();
        for (id, bytes) in manifests {
            let what = format!("manifests/{id}.manifest");
            let m = match Manifest::decode(&bytes, &what) {
                Ok(m) if m.record.id == id => m,
                Ok(_) => {
                    rep.damaged
                        .push(format!("{what}: id does not match its name"));
                    continue;
                }
                Err(e) => {
                    rep.damaged.push(e.to_string());
                    continue;
                }
            };
            let key = m.record.key();
            let v = m.record.version;
            // Deleted here and collected by gc (the manifest is gone, the delete event stays):
            // pulling it again would bring it back as a live version, since the event that
            // deleted it is already here and is not applied again.
            if v <= s.index.deleted_up_to(&key)? {
                continue;
            }
            let local = s.index.versions_of(&key)?;
            if let Some(other) = local
                .iter()
                .find(|(lv, lid)| *lv == v && *lid != id)
                .map(|(_, lid)| *lid)
                .or_else(|| taken.get(&(key.clone(), v)).copied())
            {
                rep.conflicts.push(format!(
                    "{} version {v}: remote {id} kept out, this store has {other}",
                    key.display()
                ));
                continue;
            }
            let mut mine = Vec::new();
            let mut missing = None;
            let mut local_hits = 0u64;
            let mut seen_here = HashSet::new();
            // The manifest's chunks and the delta bases they need (a local delta whose base
            // is missing, as an interrupted pull can leave, gets its base too).
            let mut todo: Vec<ChunkId> = m.chunks.iter().rev().map(|(cid, _)| *cid).collect();
            while let Some(cid) = todo.pop() {
                let cid = &cid;
                if scheduled.contains(cid) || !seen_here.insert(*cid) {
                    continue;
                }
                if let Some(loc) = s.index.chunk(cid)? {
                    local_hits += 1;
                    todo.extend(loc.base);
                } else if let Some((pack, entry)) = known.chunks.get(cid) {
                    mine.push(Wanted {
                        pack: *pack,
                        entry: *entry,
                    });
                    todo.extend(entry.base);
                } else {
                    missing = Some(*cid);
                    break;
                }
            }
            if let Some(cid) = missing {
                rep.damaged
                    .push(format!("{what}: the remote has no chunk {cid} it needs"));
                continue;
            }
            // A remote delta on a base this store holds as a delta itself makes a longer chain
            // here than either side wrote; refuse what no reader would follow.
            let mut too_deep = None;
            for w in mine.iter().filter(|w| w.entry.base.is_some()) {
                let (mut steps, mut next) = (0u8, w.entry.base);
                while let Some(b) = next {
                    steps += 1;
                    if steps > crate::delta::MAX_DEPTH {
                        too_deep = Some(w.entry.id);
                        break;
                    }
                    next = match s.index.chunk(&b)? {
                        Some(l) => l.base,
                        None => known.chunks.get(&b).and_then(|(_, e)| e.base),
                    };
                }
            }
            if let Some(cid) = too_deep {
                rep.damaged.push(format!(
                    "{what}: chunk {cid} would be a delta chain longer than {} here",
                    crate::delta::MAX_DEPTH
                ));
                continue;
            }
            rep.chunks_already_local += local_hits;
            scheduled.extend(mine.iter().map(|w| w.entry.id));
            want.extend(mine);
            taken.insert((key, v), id);
            items.push((id, bytes));
        }
        for (id, bytes) in events {
            let what = format!("events/{id}.event");
            match manifest::decode_event(&bytes, &what) {
                Ok(e) if e.id() == id => {
                    // A delete names a path and a version number. A live local version of that
                    // path with such a number that the remote never saw (uploaded here and not
                    // pushed) is not the one deleted: keep the event out rather than hide it.
                    if let manifest::Event::Delete { up_to_version, .. } = &e
                        && let Some(key) = e.file_key()
                    {
                        let mut unseen = None;
                        for (v, vid) in s.index.versions_of(&key)? {
                            if v <= *up_to_version
                                && !remote_versions.contains(&vid)
                                && s.index.version(vid)?.is_some_and(|r| !r.is_deleted())
                            {
                                unseen = Some((v, vid));
                                break;
                            }
                        }
                        if let Some((v, vid)) = unseen {
                            rep.conflicts.push(format!(
                                "{} delete up to version {up_to_version}: remote event {id} kept out, this store's version {v} ({vid}) was never pushed",
                                key.display()
                            ));
                            continue;
                        }
                    }
                    items.push((id, bytes))
                }
                Ok(_) => rep
                    .damaged
                    .push(format!("{what}: id does not match its name")),
                Err(e) => rep.damaged.push(e.to_string()),
            }
        }

        let (chunks, bytes) =
            self.poison_unless_remote(fetch_chunks(&s, remote, want, progress))?;
        rep.chunks = chunks;
        rep.bytes = bytes;
        items.sort_by_key(|(id, _)| *id);
        self.poison(commit(&s, &items))?;
        rep.manifests = items
            .iter()
            .filter(|(id, _)| new_m.binary_search(id).is_ok())
            .count() as u64;
        rep.events = items.len() as u64 - rep.manifests;
        Ok(rep)
    }

    /// Local write failures poison the store; a network failure does not (nothing local is
    /// left half-done by it: chunks fetched so far are durable and indexed).
    fn poison_unless_remote<T>(&self, r: Result<T>) -> Result<T> {
        match r {
            Err(e @ Error::Remote { .. }) => Err(e),
            other => self.poison(other),
        }
    }
}

/// GET every `dir/<id>.<ext>` in `ids`, in parallel; results in `ids` order.
fn fetch_all(remote: &Remote, dir: &str, ext: &str, ids: &[Id]) -> Result<Vec<(Id, Vec<u8>)>> {
    let results: Vec<Result<(Id, Vec<u8>)>> = remote.rt.block_on(
        futures::stream::iter(ids.iter().copied())
            .map(|id| {
                let key = remote.key(&format!("{dir}/{id}.{ext}"));
                async move { Ok((id, remote.get_bytes(&key).await?.to_vec())) }
            })
            .buffered(SMALL_CONCURRENCY)
            .collect(),
    );
    results.into_iter().collect()
}

/// Chunk records to fetch from one pack in one GET.
struct Fetch {
    pack: Id,
    range: Range<u64>,
    entries: Vec<rpack::Entry>,
}

fn plan_fetches(mut want: Vec<Wanted>) -> Vec<Fetch> {
    want.sort_by_key(|w| (w.pack, w.entry.offset));
    let mut out: Vec<Fetch> = Vec::new();
    for w in want {
        let r = w.entry.offset..w.entry.offset + w.entry.record_len();
        match out.last_mut() {
            Some(f)
                if f.pack == w.pack
                    && r.start >= f.range.end
                    && r.start - f.range.end <= MAX_GAP
                    && r.end - f.range.start <= MAX_RANGE =>
            {
                f.range.end = r.end;
                f.entries.push(w.entry);
            }
            _ => out.push(Fetch {
                pack: w.pack,
                range: r,
                entries: vec![w.entry],
            }),
        }
    }
    out
}

/// Fetch, check and append the wanted chunks to new local packs; each pack's chunk locations
/// enter the index after its fsync. Returns (chunks, bytes).
fn fetch_chunks(
    s: &Session<'_>,
    remote: &Remote,
    want: Vec<Wanted>,
    progress: Option<&AtomicU64>,
) -> Result<(u64, u64)> {
    let fetches = plan_fetches(want);
    let store = s.store;
    let dir = store.dir("packs");
    let mut out = Sink {
        s,
        w: None,
        waiting: Vec::new(),
        appended: Vec::new(),
        indexed: HashSet::new(),
    };
    let (mut chunks, mut bytes) = (0u64, 0u64);
    let r: Result<()> = remote.rt.block_on(async {
        let mut st = futures::stream::iter(fetches)
            .map(|f| {
                let key = remote.key(&format!("packs/{}", rpack::object_name(f.pack)));
                async move {
                    let b = remote
                        .os
                        .get_range(&key, f.range.clone())
                        .await
                        .map_err(|e| remote.err(format!("reading {key}"), e))?;
                    Ok::<_, Error>((f, b))
                }
            })
            .buffered(RANGES_IN_FLIGHT);
        while let Some(r) = st.next().await {
            let (f, b) = r?;
            let what = || format!("remote pack {}", f.pack);
            if b.len() as u64 != f.range.end - f.range.start {
                return Err(remote.damaged(what(), "short ranged read"));
            }
            // Check every record (header matches the pack's index, data matches its id).
            let checked: Vec<Result<&[u8]>> = f
                .entries
                .par_iter()
                .map(|e| {
                    let at = (e.offset - f.range.start) as usize;
                    let rec = &b[at..at + e.record_len() as usize];
                    let h = pack::decode_record_header(rec)
                        .map_err(|r| remote.damaged(what(), format!("chunk {}: {r}", e.id)))?;
                    if h.id != e.id
                        || h.stored_len != e.stored_len
                        || h.raw_len != e.raw_len
                        || h.codec != e.codec
                    {
                        return Err(remote.damaged(
                            what(),
                            format!("chunk {}: record does not match the pack index", e.id),
                        ));
                    }
                    let data = &rec[pack::RECORD_HEADER_LEN..];
                    if e.codec == Codec::Delta && crate::delta::base_of(data) != e.base {
                        return Err(remote.damaged(
                            what(),
                            format!("chunk {}: delta base differs from the pack index", e.id),
                        ));
                    }
                    pack::check_stored(&h, data, &|| what()).map_err(|e| Error::Remote {
                        remote: remote.url.clone(),
                        reason: e.to_string(),
                    })?;
                    Ok(data)
                })
                .collect();
            for (e, data) in f.entries.iter().zip(checked) {
                let data = data?;
                out.append(&dir, e, data)?;
                chunks += 1;
                bytes += e.record_len();
                if let Some(p) = progress {
                    p.fetch_add(e.record_len(), Ordering::Relaxed);
                }
            }
        }
        Ok(())
    });
    // Whatever arrived is kept (a re-run fetches only the rest), even when a request failed.
    out.finish()?;
    r.map(|()| (chunks, bytes))
}

/// Appends fetched records to local packs and indexes them after each pack's fsync. A delta
/// enters the index only once its base is there (in an earlier or the same batch), so a pull cut
/// short never leaves the index naming a delta whose base did not arrive: such records stay
/// unindexed (garbage for gc) and a re-run fetches them again with their bases.
struct Sink<'a, 's> {
    s: &'a Session<'s>,
    w: Option<PackWriter>,
    /// Appended to packs already fsynced (or to `w`), not yet indexed.
    waiting: Vec<(ChunkId, pack::ChunkLoc)>,
    /// Appended to `w`.
    appended: Vec<(ChunkId, pack::ChunkLoc)>,
    indexed: HashSet<ChunkId>,
}

impl Sink<'_, '_> {
    fn append(&mut self, dir: &std::path::Path, e: &rpack::Entry, data: &[u8]) -> Result<()> {
        let target = self.s.store.opts.pack_target;
        if self
            .w
            .as_ref()
            .is_some_and(|w| w.len() + e.record_len() > target && !w.is_empty())
        {
            self.seal()?;
        }
        if self.w.is_none() {
            self.w = Some(PackWriter::create(dir, &self.s.store.opts.faults)?);
        }
        let w = self.w.as_mut().expect("just set");
        let loc = w.append(e.id, e.raw_len, e.codec, data)?;
        self.appended.push((e.id, loc));
        Ok(())
    }

    fn seal(&mut self) -> Result<()> {
        if let Some(mut w) = self.w.take() {
            w.sync()?;
            self.waiting.append(&mut self.appended);
            let mut b = IndexBatch::default();
            // Bases first: repeat while a pass indexes something (chains are short).
            loop {
                let before = self.waiting.len();
                let mut still = Vec::new();
                for (id, loc) in std::mem::take(&mut self.waiting) {
                    let ready = match loc.base {
                        None => true,
                        Some(base) => {
                            self.indexed.contains(&base) || self.s.index.chunk(&base)?.is_some()
                        }
                    };
                    if ready {
                        b.put_chunk(&id, &loc);
                        self.indexed.insert(id);
                    } else {
                        still.push((id, loc));
                    }
                }
                self.waiting = still;
                if self.waiting.len() == before {
                    break;
                }
            }
            b.put_pack(w.id, w.len());
            self.s.index.apply(b)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.seal()
    }
}

/// Commit pulled versions and events (sorted by id) with an upload's write order: a pending
/// marker naming all of them, then their files made durable, then the index entries.
fn commit(s: &Session<'_>, items: &[(Id, Vec<u8>)]) -> Result<()> {
    let Some(max) = items.iter().map(|(id, _)| *id).max() else {
        return Ok(());
    };
    let mut b = IndexBatch::default();
    let ids: Vec<u8> = items.iter().flat_map(|(id, _)| id.0).collect();
    b.set_meta("pending", &ids);
    let last = s.index.meta_id("last_id")?;
    b.set_meta("last_id", &last.max(Some(max)).unwrap_or(max).0);
    s.index.apply(b)?;
    let faults = &s.store.opts.faults;
    for (id, bytes) in items {
        let p = if bytes.starts_with(manifest::MANIFEST_MAGIC.as_bytes()) {
            s.store.manifest_path(*id)
        } else {
            s.store.event_path(*id)
        };
        durable::write_atomic(&p, bytes, faults)?;
    }
    crate::recover::finish_pending(s)
}
