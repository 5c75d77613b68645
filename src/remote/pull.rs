//! `pull`: fetch the versions and events the store lacks, and only the chunks it lacks.
//!
//! Nothing a remote holds is trusted: a bucket is written by every machine that pushes to it.
//! Every manifest and event is checked as strictly as user input (names, version numbers,
//! tag and metadata limits, sizes) before it is used, objects larger than any valid one are
//! never read, and every chunk is proven against its BLAKE3 id before the index names it (a
//! delta by decoding it through its base). A rotten record is skipped and reported (to the
//! remote too, so that a push from a store holding the chunk sends it again), another copy
//! is tried, and only versions whose every chunk arrived intact are committed.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use object_store::ObjectStoreExt;
use rayon::prelude::*;
use serde::Serialize;

use super::{Remote, SMALL_CONCURRENCY};
use crate::error::{Error, Result};
use crate::format::codec::Codec;
use crate::format::digest::ChunkId;
use crate::format::id::Id;
use crate::format::manifest::{self, Event, Manifest};
use crate::format::names::FileKey;
use crate::format::pack;
use crate::format::rpack;
use crate::format::usize_from;
use crate::store::durable;
use crate::store::findings::{Finding, PullKind};
use crate::store::index::IndexBatch;
use crate::store::packs::PackWriter;
use crate::store::read::PackFiles;
use crate::store::recover::list_ids;
use crate::store::{Session, Store};

/// Ranges closer than this are fetched as one GET.
const MAX_GAP: u64 = 256 << 10;
/// The largest single ranged GET (bounds memory: `RANGES_IN_FLIGHT` of these at once).
const MAX_RANGE: u64 = 16 << 20;
const RANGES_IN_FLIGHT: usize = 4;
/// Manifest and event bytes requested at once.
const SMALL_BYTES_IN_FLIGHT: u64 = 64 << 20;

/// What a pull did.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullReport {
    /// The remote's URL.
    pub remote: String,
    /// New versions committed.
    pub manifests: u64,
    /// Events committed.
    pub events: u64,
    /// Journal lines (parameters, log lines, metric points) merged.
    pub journal_lines: u64,
    /// Chunks fetched (the store lacked them) and their bytes as stored.
    pub chunks: u64,
    /// Their bytes as stored (record headers included).
    pub bytes: u64,
    /// Chunks the new versions use that the store already had.
    pub chunks_already_local: u64,
    /// Versions not pulled because the store has another version with the same number for
    /// the same path (two machines uploaded it independently).
    pub conflicts: Vec<Finding<PullKind>>,
    /// Remote objects and records that could not be used (damaged, invalid, too large, or
    /// naming chunks the remote lacks), and the versions kept out because of them.
    pub damaged: Vec<Finding<PullKind>>,
}

#[derive(Clone, Copy)]
struct Wanted {
    pack: Id,
    entry: rpack::Entry,
}

/// A remote record that did not hold what it claims.
struct BadRecord {
    pack: Id,
    offset: u64,
    chunk: ChunkId,
    reason: String,
}

/// A version or event to commit, with what it needs.
struct Item {
    id: Id,
    bytes: Vec<u8>,
    /// A version: its chunks (the commit needs each of them, and their bases, indexed).
    chunks: Option<Vec<ChunkId>>,
    /// An update event: the version it changes.
    updates: Option<Id>,
}

impl Store {
    /// Merge the remote into this store (which may be empty). Holds the store lock throughout.
    pub fn pull(&self, remote: &Remote, progress: Option<&AtomicU64>) -> Result<PullReport> {
        if !remote.rt.block_on(remote.check_marker(false))? {
            return Err(Error::remote(
                remote.url.clone(),
                "no ml-dash remote here (nothing was pushed to it)",
            ));
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
        let mut known = remote
            .rt
            .block_on(remote.chunk_map(&self.remote_cache(remote)))?;
        let marked = remote.rt.block_on(remote.marked_packs())?;
        self.check_poison()?;
        // Pulled chunks are added like an upload's: not while gc runs (see `writers_lock`).
        let _writers = self.writers_lock(false)?;
        let s = self.session()?;
        s.ensure_format()?;
        known.settle(&marked, &|c| matches!(s.index.chunk(c), Ok(Some(_))));
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
        let mut new_m = Vec::new();
        for (id, size) in rman.into_iter().filter(|(id, _)| !have_m.contains(id)) {
            if size > manifest::MAX_FILE_LEN as u64 {
                rep.damaged.push(Finding::new(
                    PullKind::TooLarge,
                    format!(
                        "manifests/{id}.manifest: {size} bytes, larger than any manifest (not read)"
                    ),
                ));
            } else {
                new_m.push((id, size));
            }
        }
        let mut new_e = Vec::new();
        for (id, size) in rev.into_iter().filter(|(id, _)| !have_e.contains(id)) {
            if size > manifest::MAX_EVENT_LEN {
                rep.damaged.push(Finding::new(
                    PullKind::TooLarge,
                    format!("events/{id}.event: {size} bytes, larger than any event (not read)"),
                ));
            } else {
                new_e.push((id, size));
            }
        }
        let manifests = fetch_all(remote, "manifests", "manifest", &new_m)?;
        let events = fetch_all(remote, "events", "event", &new_e)?;

        // Versions the remote deletes: pulled as deleted versions while their chunks are on
        // the remote, and left out without a word once a remote gc collected them.
        let mut remote_deleted: HashMap<FileKey, u32> = HashMap::new();
        let mut remote_dropped: HashSet<Id> = HashSet::new();
        for (id, bytes) in &events {
            match manifest::decode_event(bytes, "") {
                Ok(e) if e.id() == *id && crate::format::record::check_pulled_event(&e).is_ok() => {
                    if let (Event::Delete { up_to_version, .. }, Some(key)) = (&e, e.file_key()) {
                        let d = remote_deleted.entry(key).or_default();
                        *d = (*d).max(*up_to_version);
                    } else if let Event::DeleteVersions { version_ids, .. } = e {
                        remote_dropped.extend(version_ids);
                    }
                }
                _ => {}
            }
        }

        // Which versions can be pulled, and which chunks they need.
        let mut items: Vec<Item> = Vec::new();
        let mut want: Vec<Wanted> = Vec::new();
        let mut scheduled: HashSet<ChunkId> = HashSet::new();
        let mut taken: HashMap<(FileKey, u32), Id> = HashMap::new();
        for (id, bytes) in manifests {
            let what = format!("manifests/{id}.manifest");
            let m = match Manifest::decode(&bytes, &what) {
                Ok(m) if m.record.id != id => {
                    rep.damaged.push(Finding::new(
                        PullKind::Undecodable,
                        format!("{what}: id does not match its name"),
                    ));
                    continue;
                }
                Ok(m) => m,
                Err(e) => {
                    rep.damaged
                        .push(Finding::new(PullKind::Undecodable, e.to_string()));
                    continue;
                }
            };
            if let Err(e) = crate::format::record::check_pulled_manifest(&m) {
                rep.damaged.push(Finding::new(
                    PullKind::Refused,
                    format!("{what}: refused: {e}"),
                ));
                continue;
            }
            let key = m.record.key();
            let v = m.record.version;
            // Deleted here and collected by gc (the manifest is gone, the delete event stays):
            // pulling it again would bring it back as a live version, since the event that
            // deleted it is already here and is not applied again.
            if s.index.covered_by_delete(&m.record)? {
                continue;
            }
            let remote_dead = remote_dropped.contains(&id)
                || remote_deleted
                    .get(&m.record.key())
                    .is_some_and(|d| m.record.version <= *d);
            // Collected by a remote gc: some chunk is neither here nor on the remote.
            if remote_dead
                && m.chunks.iter().any(|(c, _)| {
                    known.copies(c).next().is_none() && !matches!(s.index.chunk(c), Ok(Some(_)))
                })
            {
                continue;
            }
            let local = s.index.versions_of(&key)?;
            if let Some(other) = local
                .iter()
                .find(|(lv, lid)| *lv == v && *lid != id)
                .map(|(_, lid)| *lid)
                .or_else(|| taken.get(&(key.clone(), v)).copied())
            {
                rep.conflicts.push(Finding::new(
                    PullKind::VersionConflict,
                    format!(
                        "{} version {v}: remote {id} kept out, this store has {other}",
                        key.display()
                    ),
                ));
                continue;
            }
            match plan_manifest(&s, &known, &m, &scheduled) {
                Ok((mine, local_hits)) => {
                    rep.chunks_already_local += local_hits;
                    scheduled.extend(mine.iter().map(|w| w.entry.id));
                    want.extend(mine);
                    taken.insert((key, v), id);
                    items.push(Item {
                        id,
                        bytes,
                        chunks: Some(m.chunks.iter().map(|(c, _)| *c).collect()),
                        updates: None,
                    });
                }
                Err(why) => rep
                    .damaged
                    .push(Finding::new(PullKind::Unusable, format!("{what}: {why}"))),
            }
        }
        for (id, bytes) in events {
            let what = format!("events/{id}.event");
            let e = match manifest::decode_event(&bytes, &what) {
                Ok(e) if e.id() == id => e,
                Ok(_) => {
                    rep.damaged.push(Finding::new(
                        PullKind::Undecodable,
                        format!("{what}: id does not match its name"),
                    ));
                    continue;
                }
                Err(e) => {
                    rep.damaged
                        .push(Finding::new(PullKind::Undecodable, e.to_string()));
                    continue;
                }
            };
            if let Err(err) = crate::format::record::check_pulled_event(&e) {
                rep.damaged.push(Finding::new(
                    PullKind::Refused,
                    format!("{what}: refused: {err}"),
                ));
                continue;
            }
            // A delete names a path and a version number. A live local version of that path
            // with such a number that the remote never saw (uploaded here and not pushed) is
            // not the one deleted: keep the event out rather than hide it.
            if let Event::Delete { up_to_version, .. } = &e
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
                    rep.conflicts.push(Finding::new(PullKind::DeleteConflict, format!(
                        "{} delete up to version {up_to_version}: remote event {id} kept out, this store's version {v} ({vid}) was never pushed",
                        key.display()
                    )));
                    continue;
                }
            }
            let updates = match &e {
                Event::Update { version_id, .. } => Some(*version_id),
                Event::Delete { .. } | Event::DeleteVersions { .. } => None,
            };
            items.push(Item {
                id,
                bytes,
                chunks: None,
                updates,
            });
        }

        let fetched =
            self.poison_unless_remote(fetch_chunks(&s, remote, &known, want, progress))?;
        rep.chunks = fetched.chunks;
        rep.bytes = fetched.bytes;
        for b in &fetched.bad {
            let told = remote
                .rt
                .block_on(remote.report_bad_record(b.pack, b.offset, &b.chunk, &b.reason))
                .is_ok();
            rep.damaged.push(Finding::new(PullKind::RottenRecord, format!(
                "packs/{}: chunk {} at offset {}: {} (skipped{})",
                rpack::object_name(b.pack),
                b.chunk,
                b.offset,
                b.reason,
                if told {
                    "; reported to the remote, so a push from a store that holds it sends it again"
                } else {
                    ""
                }
            )));
        }

        // Commit the versions whose every chunk is now indexed, with the events that can apply.
        let mut ready = Vec::new();
        let mut versions_here: HashSet<Id> = HashSet::new();
        for it in items {
            if let Some(chunks) = &it.chunks {
                if let Some(c) = first_unready(&s, chunks)? {
                    rep.damaged.push(Finding::new(PullKind::KeptOut, format!(
                        "manifests/{}.manifest: kept out: chunk {c} did not arrive intact (a later pull tries again)",
                        it.id
                    )));
                    continue;
                }
                versions_here.insert(it.id);
            }
            ready.push(it);
        }
        // An update of a version that is neither here nor pulled now waits for a later pull
        // (applied now, it would be lost: events are not applied twice).
        let mut keep = Vec::new();
        for it in ready {
            if let Some(v) = it.updates
                && !versions_here.contains(&v)
                && s.index.version(v)?.is_none()
            {
                continue;
            }
            keep.push((it.id, it.bytes, it.chunks.is_some()));
        }
        keep.sort_by_key(|(id, ..)| *id);
        let commits: Vec<(Id, Vec<u8>)> = keep.iter().map(|(id, b, _)| (*id, b.clone())).collect();
        self.poison(commit(&s, &commits))?;
        rep.manifests = keep.iter().filter(|(.., m)| *m).count() as u64;
        rep.events = keep.len() as u64 - rep.manifests;
        drop(s);
        drop(_writers);
        rep.journal_lines = self.pull_journals(remote, &mut rep.conflicts, &mut rep.damaged)?;
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

/// The chunks a pulled version needs that this store lacks (its chunks, and the delta bases
/// they need: a local delta whose base is missing, as an interrupted pull can leave, gets its
/// base too), and how many it already has; `Err(why)` if it cannot be pulled.
fn plan_manifest(
    s: &Session<'_>,
    known: &super::RemoteChunks,
    m: &Manifest,
    scheduled: &HashSet<ChunkId>,
) -> std::result::Result<(Vec<Wanted>, u64), String> {
    let ix = &s.index;
    let mut mine = Vec::new();
    let mut local_hits = 0u64;
    let mut seen_here = HashSet::new();
    let lens: HashMap<ChunkId, u32> = m.chunks.iter().copied().collect();
    let mut todo: Vec<ChunkId> = m.chunks.iter().rev().map(|(cid, _)| *cid).collect();
    while let Some(cid) = todo.pop() {
        if scheduled.contains(&cid) || !seen_here.insert(cid) {
            continue;
        }
        // A chunk of the version must have the length the manifest gives it.
        let len_ok = |raw_len: u32| lens.get(&cid).is_none_or(|l| *l == raw_len);
        if let Some(loc) = ix.chunk(&cid).map_err(|e| e.to_string())? {
            if !len_ok(loc.raw_len) {
                return Err(format!("chunk {cid} has another length in this store"));
            }
            local_hits += 1;
            todo.extend(loc.base);
        } else if let Some((pack, entry)) = known.copies(&cid).next() {
            if !len_ok(entry.raw_len) {
                return Err(format!("chunk {cid} has another length in the remote pack"));
            }
            mine.push(Wanted {
                pack: *pack,
                entry: *entry,
            });
            todo.extend(entry.base);
        } else {
            return Err(format!("the remote has no chunk {cid} it needs"));
        }
    }
    // A remote delta on a base this store holds as a delta itself makes a longer chain here
    // than either side wrote; refuse what no reader would follow.
    for w in mine.iter().filter(|w| w.entry.base.is_some()) {
        let (mut steps, mut next) = (0u8, w.entry.base);
        while let Some(b) = next {
            steps += 1;
            if steps > crate::format::delta::MAX_DEPTH {
                return Err(format!(
                    "chunk {} would be a delta chain longer than {} here",
                    w.entry.id,
                    crate::format::delta::MAX_DEPTH
                ));
            }
            next = match ix.chunk(&b).map_err(|e| e.to_string())? {
                Some(l) => l.base,
                None => known.copies(&b).next().and_then(|(_, e)| e.base),
            };
        }
    }
    Ok((mine, local_hits))
}

/// The first of `chunks` that is not indexed with its whole chain of bases, if any.
fn first_unready(s: &Session<'_>, chunks: &[ChunkId]) -> Result<Option<ChunkId>> {
    for c in chunks {
        let mut next = Some(*c);
        let mut steps = 0;
        while let Some(id) = next {
            match s.index.chunk(&id)? {
                Some(l) if steps <= crate::format::delta::MAX_DEPTH => next = l.base,
                _ => return Ok(Some(*c)),
            }
            steps += 1;
        }
    }
    Ok(None)
}

/// GET every `dir/<id>.<ext>` of `objects` (listed with their sizes, each checked to be
/// below its kind's limit), in parallel but never more than `SMALL_BYTES_IN_FLIGHT` at once;
/// results in `objects` order. Only the listed size is read, whatever the object holds.
fn fetch_all(
    remote: &Remote,
    dir: &str,
    ext: &str,
    objects: &[(Id, u64)],
) -> Result<Vec<(Id, Vec<u8>)>> {
    let mut out = Vec::with_capacity(objects.len());
    let mut start = 0;
    while start < objects.len() {
        let mut end = start + 1;
        let mut bytes = objects[start].1;
        while end < objects.len() && bytes + objects[end].1 <= SMALL_BYTES_IN_FLIGHT {
            bytes += objects[end].1;
            end += 1;
        }
        let results: Vec<Result<(Id, Vec<u8>)>> = remote.rt.block_on(
            futures::stream::iter(objects[start..end].iter().copied())
                .map(|(id, size)| {
                    let key = remote.key(&format!("{dir}/{id}.{ext}"));
                    async move {
                        if size == 0 {
                            return Ok((id, Vec::new()));
                        }
                        let b = remote
                            .os
                            .get_range(&key, 0..size)
                            .await
                            .map_err(|e| remote.err(format!("reading {key}"), e))?;
                        Ok((id, b.to_vec()))
                    }
                })
                .buffered(SMALL_CONCURRENCY)
                .collect(),
        );
        for r in results {
            out.push(r?);
        }
        start = end;
    }
    Ok(out)
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

/// What `fetch_chunks` brought in.
struct Fetched {
    chunks: u64,
    bytes: u64,
    bad: Vec<BadRecord>,
}

/// Fetch, prove and append the wanted chunks to new local packs; each pack's chunks enter the
/// index after its fsync, each once proven against its id. A record that fails is reported
/// and the next copy of its chunk (another remote pack) is tried, until none is left.
fn fetch_chunks(
    s: &Session<'_>,
    remote: &Remote,
    known: &super::RemoteChunks,
    want: Vec<Wanted>,
    progress: Option<&AtomicU64>,
) -> Result<Fetched> {
    let mut sink = Sink {
        s,
        w: None,
        waiting: Vec::new(),
        appended: Vec::new(),
        files: PackFiles::new(s.store.dir("packs")),
        bad: Vec::new(),
    };
    let mut done = Fetched {
        chunks: 0,
        bytes: 0,
        bad: Vec::new(),
    };
    // Records a lazy read already fetched (`Store::open_remote`) come from its cache.
    let cache = super::lazy::RecordCache::new(s.store, remote);
    let dir = s.store.dir("packs");
    let mut rest = Vec::with_capacity(want.len());
    for w in want {
        match cache.get(&w.entry) {
            Some(rec) => {
                sink.append(&dir, w.pack, &w.entry, &rec[pack::RECORD_HEADER_LEN..])?;
                done.chunks += 1;
                done.bytes += w.entry.record_len();
            }
            None => rest.push(w),
        }
    }
    sink.seal()?;
    let mut want = rest;
    let mut tried: HashSet<(Id, u64)> = HashSet::new();
    while !want.is_empty() {
        tried.extend(want.iter().map(|w| (w.pack, w.entry.offset)));
        let round = fetch_round(remote, &mut sink, want, progress, &mut done);
        // Whatever arrived is kept (a re-run fetches only the rest), even when a request failed.
        let sealed = sink.seal();
        round?;
        sealed?;
        let failed: Vec<BadRecord> = std::mem::take(&mut sink.bad);
        want = Vec::new();
        let mut again = HashSet::new();
        for b in &failed {
            if !again.insert(b.chunk) || s.index.chunk(&b.chunk)?.is_some() {
                continue;
            }
            if let Some((pack, entry)) = known
                .copies(&b.chunk)
                .find(|(p, e)| !tried.contains(&(*p, e.offset)))
            {
                want.push(Wanted {
                    pack: *pack,
                    entry: *entry,
                });
            }
        }
        done.bad.extend(failed);
    }
    Ok(done)
}

/// One round of ranged GETs: every record is checked against the pack index and on its own
/// (a whole record decodes to its id; a delta's header and inner checksum hold); the good
/// ones are appended to the sink, the bad ones noted in `sink.bad`.
fn fetch_round(
    remote: &Remote,
    sink: &mut Sink<'_, '_>,
    want: Vec<Wanted>,
    progress: Option<&AtomicU64>,
    done: &mut Fetched,
) -> Result<()> {
    let fetches = plan_fetches(want);
    let dir = sink.s.store.dir("packs");
    remote.rt.block_on(async {
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
            if b.len() as u64 != f.range.end - f.range.start {
                return Err(remote.damaged(format!("remote pack {}", f.pack), "short ranged read"));
            }
            let checked: Vec<std::result::Result<&[u8], String>> = f
                .entries
                .par_iter()
                .map(|e| {
                    let at = usize_from(e.offset - f.range.start);
                    check_record(e, &b[at..at + usize_from(e.record_len())])
                })
                .collect();
            for (e, data) in f.entries.iter().zip(checked) {
                match data {
                    Ok(data) => {
                        sink.append(&dir, f.pack, e, data)?;
                        done.chunks += 1;
                        done.bytes += e.record_len();
                        if let Some(p) = progress {
                            p.fetch_add(e.record_len(), Ordering::Relaxed);
                        }
                    }
                    Err(reason) => sink.bad.push(BadRecord {
                        pack: f.pack,
                        offset: e.offset,
                        chunk: e.id,
                        reason,
                    }),
                }
            }
        }
        Ok(())
    })
}

/// A fetched record's data, if its header matches the pack index and the data checks out on
/// its own (`pack::check_stored`: a whole record decodes to its id).
fn check_record<'b>(e: &rpack::Entry, rec: &'b [u8]) -> std::result::Result<&'b [u8], String> {
    let h = pack::decode_record_header(rec).map_err(|r| r.to_string())?;
    if h.id != e.id || h.stored_len != e.stored_len || h.raw_len != e.raw_len || h.codec != e.codec
    {
        return Err("record does not match the pack index".into());
    }
    let data = &rec[pack::RECORD_HEADER_LEN..];
    if e.codec == Codec::Delta && crate::format::delta::base_of(data) != e.base {
        return Err("delta base differs from the pack index".into());
    }
    pack::check_stored(&h, data, &|| "the record".into()).map_err(|e| e.to_string())?;
    Ok(data)
}

/// A record appended to a local pack, and where it came from.
struct Appended {
    id: ChunkId,
    loc: pack::ChunkLoc,
    from: (Id, u64),
}

/// Appends fetched records to local packs and indexes them after each pack's fsync: a whole
/// record at once (it was proven when fetched), a delta once its base is indexed and it
/// decodes through it to its id. A pull cut short never leaves the index naming a delta
/// whose base did not arrive: such records stay unindexed (garbage for gc) and a re-run
/// fetches them again with their bases.
struct Sink<'a, 's> {
    s: &'a Session<'s>,
    w: Option<PackWriter>,
    /// In packs already fsynced, not yet indexed (deltas waiting for their base).
    waiting: Vec<Appended>,
    /// Appended to `w`.
    appended: Vec<Appended>,
    files: PackFiles,
    bad: Vec<BadRecord>,
}

impl Sink<'_, '_> {
    fn append(
        &mut self,
        dir: &std::path::Path,
        pack: Id,
        e: &rpack::Entry,
        data: &[u8],
    ) -> Result<()> {
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
        self.appended.push(Appended {
            id: e.id,
            loc,
            from: (pack, e.offset),
        });
        Ok(())
    }

    /// fsync the open pack, then index every record that is proven.
    fn seal(&mut self) -> Result<()> {
        let ix = &self.s.index;
        if let Some(mut w) = self.w.take() {
            w.sync()?;
            self.waiting.append(&mut self.appended);
            let mut b = IndexBatch::default();
            b.put_pack(w.id, w.len());
            ix.apply_unflushed(b)?;
        }
        // Bases first: repeat while a pass indexes something (chains are short).
        loop {
            let before = self.waiting.len();
            let mut b = IndexBatch::default();
            let mut still = Vec::new();
            for a in std::mem::take(&mut self.waiting) {
                match a.loc.base {
                    None => b.put_chunk(&a.id, &a.loc),
                    Some(base) if ix.chunk(&base)?.is_none() => still.push(a),
                    Some(_) => {
                        if self.files.proves(ix, &a.loc, &a.id) {
                            b.put_chunk(&a.id, &a.loc);
                        } else {
                            self.bad.push(BadRecord {
                                pack: a.from.0,
                                offset: a.from.1,
                                chunk: a.id,
                                reason:
                                    "the delta does not decode to its chunk id through its base"
                                        .into(),
                            });
                        }
                    }
                }
            }
            ix.apply_unflushed(b)?;
            self.waiting = still;
            if self.waiting.len() == before {
                break;
            }
        }
        ix.flush()
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
    crate::store::recover::finish_pending(s)
}
