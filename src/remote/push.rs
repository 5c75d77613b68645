//! `push`: send the remote what it lacks (packs of missing chunks, then manifests, then events).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use object_store::MultipartUpload;
use object_store::path::Path as OPath;
use rayon::prelude::*;
use serde::Serialize;

use super::{Remote, SMALL_CONCURRENCY, part_size_for};
use crate::error::{Error, IoContext, Result};
use crate::format::digest::ChunkId;
use crate::format::id::Id;
use crate::format::manifest::{self, Manifest};
use crate::format::pack::{self, ChunkLoc};
use crate::format::rpack;
use crate::store::Store;
use crate::store::packs;
use crate::store::recover::list_ids;

/// What a push did.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushReport {
    /// The remote's URL.
    pub remote: String,
    /// Packs uploaded by this push.
    pub packs: u64,
    /// Chunks uploaded (each one the remote did not have).
    pub chunks: u64,
    /// Bytes of pack objects uploaded.
    pub bytes: u64,
    /// Manifests (versions) uploaded.
    pub manifests: u64,
    /// Events (deletes, updates) uploaded.
    pub events: u64,
    /// Journal lines (parameters, log lines, metric points) uploaded.
    pub journal_lines: u64,
    /// Chunks the new manifests use that the remote already had.
    pub chunks_already_remote: u64,
    /// Chunks sent again because a remote gc marked (or deleted) the pack holding the
    /// remote's copy while this push ran (they are in the counts above too).
    pub chunks_resent: u64,
    /// The remote after the push: packs and bytes of chunk records in them.
    pub remote_packs: u64,
    /// Bytes of chunk records the remote holds after the push.
    pub remote_bytes: u64,
}

/// Part uploads of one multipart object, at most `MAX_IN_FLIGHT` at a time.
pub(crate) struct PartUploader<'a> {
    remote: &'a Remote,
    key: OPath,
    up: Box<dyn MultipartUpload>,
    buf: Vec<u8>,
    part: usize,
    in_flight: VecDeque<tokio::task::JoinHandle<object_store::Result<()>>>,
}

const MAX_IN_FLIGHT: usize = 4;

impl<'a> PartUploader<'a> {
    pub(crate) fn start(remote: &'a Remote, key: OPath, total: u64) -> Result<PartUploader<'a>> {
        let up = remote
            .rt
            .block_on(object_store::ObjectStoreExt::put_multipart(
                &*remote.os,
                &key,
            ))
            .map_err(|e| remote.err(format!("starting upload of {key}"), e))?;
        let part = part_size_for(total);
        Ok(PartUploader {
            remote,
            key,
            up,
            buf: Vec::with_capacity(part),
            part,
            in_flight: VecDeque::new(),
        })
    }

    pub(crate) fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = (self.part - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == self.part {
                self.send_part()?;
            }
        }
        Ok(())
    }

    fn send_part(&mut self) -> Result<()> {
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            self.wait_one()?;
        }
        let body = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part));
        let fut = self.up.put_part(body.into());
        self.in_flight.push_back(self.remote.rt.spawn(fut));
        Ok(())
    }

    fn wait_one(&mut self) -> Result<()> {
        if let Some(h) = self.in_flight.pop_front() {
            let r = self.remote.rt.block_on(h).map_err(|e| Error::Remote {
                remote: self.remote.url.clone(),
                reason: format!("part upload of {} stopped: {e}", self.key),
                source: Some(Box::new(e)),
            })?;
            r.map_err(|e| {
                self.remote
                    .err(format!("uploading a part of {}", self.key), e)
            })?;
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<()> {
        let r = (|| {
            if !self.buf.is_empty() {
                self.send_part()?;
            }
            while !self.in_flight.is_empty() {
                self.wait_one()?;
            }
            self.remote
                .rt
                .block_on(self.up.complete())
                .map(|_| ())
                .map_err(|e| self.remote.err(format!("completing {}", self.key), e))
        })();
        if r.is_err() {
            self.abort();
        }
        r
    }

    /// Give up: the parts sent are discarded by the server (never a visible object).
    pub(crate) fn abort(mut self) {
        for h in self.in_flight.drain(..) {
            h.abort();
        }
        let _ = self.remote.rt.block_on(self.up.abort());
    }
}

/// An object written either in one PUT (small) or as a multipart upload. `Whole` with
/// `overwrite` false is for immutable names (an object already there is kept, see
/// `put_immutable`); true replaces it, as a completed multipart upload always does.
pub(crate) enum ObjectWriter<'a> {
    Whole {
        remote: &'a Remote,
        key: OPath,
        buf: Vec<u8>,
        overwrite: bool,
    },
    Parts(PartUploader<'a>),
}

impl<'a> ObjectWriter<'a> {
    pub(crate) fn start(
        remote: &'a Remote,
        key: OPath,
        total: u64,
        overwrite: bool,
    ) -> Result<ObjectWriter<'a>> {
        if total <= part_size_for(total) as u64 {
            Ok(ObjectWriter::Whole {
                remote,
                key,
                buf: Vec::with_capacity(crate::format::usize_from(total)),
                overwrite,
            })
        } else {
            Ok(ObjectWriter::Parts(PartUploader::start(
                remote, key, total,
            )?))
        }
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> Result<()> {
        match self {
            ObjectWriter::Whole { buf, .. } => {
                buf.extend_from_slice(data);
                Ok(())
            }
            ObjectWriter::Parts(p) => p.write(data),
        }
    }

    pub(crate) fn finish(self) -> Result<()> {
        match self {
            ObjectWriter::Whole {
                remote: r,
                key,
                buf,
                overwrite: false,
            } => r.rt.block_on(r.put_immutable(&key, buf)),
            ObjectWriter::Whole {
                remote: r,
                key,
                buf,
                overwrite: true,
            } => {
                r.rt.block_on(object_store::ObjectStoreExt::put(&*r.os, &key, buf.into()))
                    .map(|_| ())
                    .map_err(|e| r.err(format!("writing {key}"), e))
            }
            ObjectWriter::Parts(p) => p.finish(),
        }
    }

    pub(crate) fn abort(self) {
        if let ObjectWriter::Parts(p) = self {
            p.abort();
        }
    }

    /// Write the object with `body`, then complete it; if `body` fails, abort (no object
    /// becomes visible) and return its error.
    pub(crate) fn write_all_with(
        mut self,
        body: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        match body(&mut self) {
            Ok(()) => self.finish(),
            Err(e) => {
                self.abort();
                Err(e)
            }
        }
    }
}

/// Manifests uploaded between two looks at the remote gc marks: at most this many, and this
/// many bytes (unless one manifest is larger).
const MANIFEST_BATCH: usize = 512;
const MANIFEST_BATCH_BYTES: usize = 64 << 20;

/// `items` cut into batches of at most `MANIFEST_BATCH` items and `MANIFEST_BATCH_BYTES`.
fn batches(items: &[(Id, Vec<u8>)]) -> Vec<&[(Id, Vec<u8>)]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, b)) in items.iter().enumerate() {
        if i > start && (i - start >= MANIFEST_BATCH || bytes + b.len() > MANIFEST_BATCH_BYTES) {
            out.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += b.len();
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// A push looks at the marks again when a manifest batch starts this long after the last look
/// (far below any grace period a remote gc should use).
const RECHECK_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// What a push has sent so far, and how it reports.
struct Uploads<'a> {
    files: HashMap<Id, Arc<File>>,
    /// Each chunk this push uploaded: the new pack, and the base it was sent as a delta on.
    sent: HashMap<ChunkId, (Id, Option<ChunkId>)>,
    progress: Option<&'a AtomicU64>,
    rep: PushReport,
}

/// Where the remote holds `id` and the delta bases it stands on: chunks this push sent first,
/// then the remote's copies; `None` for a chunk found nowhere (the chain ends there).
fn locate(
    id: &ChunkId,
    sent: &HashMap<ChunkId, (Id, Option<ChunkId>)>,
    known: &super::RemoteChunks,
) -> Vec<(ChunkId, Option<Id>)> {
    let mut out = Vec::new();
    let mut cur = *id;
    while out.len() <= usize::from(crate::format::delta::MAX_DEPTH) {
        let (pack, base) = match (sent.get(&cur), known.chunks.get(&cur)) {
            (Some((p, b)), _) => (*p, *b),
            (None, Some((p, e))) => (*p, e.base),
            (None, None) => break,
        };
        out.push((cur, Some(pack)));
        match base {
            Some(b) => cur = b,
            None => return out,
        }
    }
    out.push((cur, None));
    out
}

/// PUT `dir/<id>.<ext>` for every item, 16 at a time.
fn put_all(remote: &Remote, dir: &str, ext: &str, items: &[(Id, Vec<u8>)]) -> Result<()> {
    remote.rt.block_on(
        futures::stream::iter(items.iter())
            .map(|(id, b)| {
                let key = remote.key(&format!("{dir}/{id}.{ext}"));
                async move { remote.put_immutable(&key, b.clone()).await }
            })
            .buffer_unordered(SMALL_CONCURRENCY)
            .try_collect::<Vec<()>>(),
    )?;
    Ok(())
}

/// What a push sends, read under the store lock.
struct Plan {
    manifests: Vec<(Id, Vec<u8>)>,
    events: Vec<(Id, Vec<u8>)>,
    chunks: Vec<(ChunkId, ChunkLoc)>,
    /// Every chunk the manifests to upload use.
    needed: Vec<ChunkId>,
    /// Open handles: a pack deleted by a concurrent gc stays readable.
    files: HashMap<Id, Arc<File>>,
    already_remote: u64,
}

impl Store {
    /// Push everything the remote lacks. Safe to interrupt and re-run: only whole packs become
    /// visible, and manifests go up only after every chunk they use is there.
    pub fn push(&self, remote: &Remote, progress: Option<&AtomicU64>) -> Result<PushReport> {
        remote.rt.block_on(remote.check_marker(true))?;
        let mut known = remote
            .rt
            .block_on(remote.chunk_map(&self.remote_cache(remote)))?;
        // Packs a remote gc marked are about to go: their chunks count as missing, and so are
        // copies whose delta base a remote gc collected.
        let marked = remote.rt.block_on(remote.marked_packs())?;
        known.without_packs(&marked);
        known.settle(&marked, &|_| false);
        let (rman, rev) = remote.rt.block_on(async {
            futures::try_join!(
                remote.list_ids("manifests", "manifest"),
                remote.list_ids("events", "event")
            )
        })?;
        let rman: HashSet<Id> = rman.into_iter().map(|(id, _)| id).collect();
        let rev: HashSet<Id> = rev.into_iter().map(|(id, _)| id).collect();
        // Damaged remote packs are left out of `known`: their chunks count as missing, and the
        // versions already pushed are checked too so that those chunks go up again.
        let heal = !known.damaged.is_empty() || known.bad_records > 0;
        let mut plan = self.push_plan(&known.chunks, &rman, &rev, heal)?;
        plan.needed.sort_unstable();
        plan.needed.dedup();

        let mut up = Uploads {
            files: std::mem::take(&mut plan.files),
            sent: HashMap::new(),
            progress,
            rep: PushReport {
                remote: remote.url.clone(),
                chunks_already_remote: plan.already_remote,
                remote_packs: known.packs,
                remote_bytes: known.bytes,
                ..PushReport::default()
            },
        };
        self.upload_packs(remote, &mut up, &plan.chunks)?;
        // Manifests go up in batches; before the first, and again whenever a batch starts more
        // than a minute after the last look, the marks and packs are checked once more.
        let mut checked: Option<std::time::Instant> = None;
        for batch in batches(&plan.manifests) {
            if checked.is_none_or(|t| t.elapsed() > RECHECK_AFTER) {
                self.confirm_copies(remote, &known, &plan.needed, &mut up)?;
                checked = Some(std::time::Instant::now());
            }
            put_all(remote, "manifests", "manifest", batch)?;
        }
        put_all(remote, "events", "event", &plan.events)?;
        let mut rep = up.rep;
        rep.manifests = plan.manifests.len() as u64;
        rep.events = plan.events.len() as u64;
        rep.journal_lines = self.push_journals(remote)?;
        Ok(rep)
    }

    /// Upload `chunks` as packs of about the pack target, recording where each went.
    fn upload_packs(
        &self,
        remote: &Remote,
        up: &mut Uploads<'_>,
        chunks: &[(ChunkId, ChunkLoc)],
    ) -> Result<()> {
        for (_, loc) in chunks {
            if let std::collections::hash_map::Entry::Vacant(v) = up.files.entry(loc.pack) {
                let p = self.dir("packs").join(pack::pack_file_name(loc.pack));
                v.insert(Arc::new(File::open(&p).at(&p)?));
            }
        }
        let target = self.opts.pack_target;
        let mut group: Vec<(ChunkId, ChunkLoc)> = Vec::new();
        let mut group_len = 0u64;
        for (i, c) in chunks.iter().enumerate() {
            group.push(*c);
            group_len += c.1.record_len();
            // A pack object ends at the pack target, or at the most records one index may list
            // (millions of tiny files), so that every pack pushed can be pulled.
            if group_len >= target || group.len() >= rpack::MAX_RECORDS || i + 1 == chunks.len() {
                let (id, n) = self.upload_pack(remote, &up.files, &group, up.progress)?;
                for (c, loc) in &group {
                    up.sent.insert(*c, (id, loc.base));
                }
                up.rep.packs += 1;
                up.rep.chunks += group.len() as u64;
                up.rep.bytes += n;
                up.rep.remote_packs += 1;
                up.rep.remote_bytes += group_len;
                group.clear();
                group_len = 0;
            }
        }
        Ok(())
    }

    /// Just before manifests go up: read the remote gc marks and list the packs again, and
    /// send again what the manifests need from a pack marked or deleted since the push began
    /// (the chunk, or, when this store does not hold it, the chunk whose remote copy stands on
    /// it as a delta base), with the bases of what is sent.
    fn confirm_copies(
        &self,
        remote: &Remote,
        known: &super::RemoteChunks,
        needed: &[ChunkId],
        up: &mut Uploads<'_>,
    ) -> Result<()> {
        let again = |what: String| {
            Error::remote(
                remote.url.clone(),
                format!("{what}; the push stopped before its remaining manifests, push again"),
            )
        };
        for _ in 0..4 {
            let (marked, listed) = remote.rt.block_on(async {
                futures::try_join!(remote.marked_packs(), remote.list_ids("packs", "pack"))
            })?;
            let present: HashSet<Id> = listed.into_iter().map(|(id, _)| id).collect();
            let safe = |p: &Id| !marked.contains(p) && present.contains(p);
            let s = self.session()?;
            let held = |c: &ChunkId| s.index.chunk(c);
            let mut work: Vec<ChunkId> = Vec::new();
            for root in needed {
                let chain = locate(root, &up.sent, known);
                let Some(i) = chain
                    .iter()
                    .position(|(_, p)| !p.as_ref().is_some_and(safe))
                else {
                    continue;
                };
                let mut pick = None;
                for (c, _) in chain[..=i].iter().rev() {
                    if held(c)?.is_some() {
                        pick = Some(*c);
                        break;
                    }
                }
                match pick {
                    Some(c) => work.push(c),
                    None => {
                        return Err(again(format!(
                            "chunk {} is in a pack a remote gc is deleting, and this store does not hold it",
                            chain[i].0
                        )));
                    }
                }
            }
            if work.is_empty() {
                return Ok(());
            }
            // What to send: those chunks, and the local delta bases the remote lacks.
            let mut send: Vec<(ChunkId, ChunkLoc)> = Vec::new();
            let mut planned: HashSet<ChunkId> = HashSet::new();
            while let Some(c) = work.pop() {
                if !planned.insert(c) {
                    continue;
                }
                let loc = held(&c)?.ok_or_else(|| {
                    again(format!("chunk {c} left this store while the push ran"))
                })?;
                send.push((c, loc));
                if let Some(b) = loc.base
                    && !planned.contains(&b)
                    && locate(&b, &up.sent, known)
                        .iter()
                        .any(|(_, p)| !p.as_ref().is_some_and(safe))
                {
                    work.push(b);
                }
            }
            drop(s);
            up.rep.chunks_resent += send.len() as u64;
            self.upload_packs(remote, up, &send)?;
        }
        Err(again(
            "a remote gc kept marking the packs this push relies on".into(),
        ))
    }

    fn push_plan(
        &self,
        known: &HashMap<ChunkId, (Id, rpack::Entry)>,
        rman: &HashSet<Id>,
        rev: &HashSet<Id>,
        heal: bool,
    ) -> Result<Plan> {
        let s = self.session()?;
        let mut plan = Plan {
            manifests: Vec::new(),
            events: Vec::new(),
            chunks: Vec::new(),
            needed: Vec::new(),
            files: HashMap::new(),
            already_remote: 0,
        };
        let mut seen = HashSet::new();
        for (id, path) in list_ids(&self.dir("manifests"), "manifest")? {
            let on_remote = rman.contains(&id);
            if on_remote && !heal {
                continue;
            }
            let bytes = fs::read(&path).at(&path)?;
            // Never spread damage: a manifest that does not decode stops the push.
            let m = Manifest::decode(&bytes, &path.display().to_string())?;
            // The manifest's chunks, then the delta bases they need (pushed too, so a remote
            // manifest always has every chunk it needs to decode). `true`: the manifest needs
            // it here; a base the remote's copy of a chunk names is sent when this store has
            // it (a damaged remote pack may have held only the base), best effort.
            let mut todo: Vec<(ChunkId, bool)> =
                m.chunks.iter().rev().map(|(cid, _)| (*cid, true)).collect();
            while let Some((cid, needed)) = todo.pop() {
                let cid = &cid;
                if seen.contains(cid) {
                    continue;
                }
                if let Some((_, e)) = known.get(cid) {
                    seen.insert(*cid);
                    plan.already_remote += u64::from(!on_remote && needed);
                    todo.extend(e.base.map(|b| (b, false)));
                    continue;
                }
                let loc = match s.index.chunk(cid)? {
                    Some(loc) => loc,
                    // Healing is best effort (e.g. a deleted version's chunks gc took).
                    None if on_remote || !needed => continue,
                    None => {
                        return Err(Error::corrupt(
                            path.display().to_string(),
                            format!("chunk {cid} is not in the store (run `ml-dash verify`)"),
                        ));
                    }
                };
                if let std::collections::hash_map::Entry::Vacant(v) = plan.files.entry(loc.pack) {
                    let p = self.dir("packs").join(pack::pack_file_name(loc.pack));
                    v.insert(Arc::new(File::open(&p).at(&p)?));
                }
                seen.insert(*cid);
                plan.chunks.push((*cid, loc));
                todo.extend(loc.base.map(|b| (b, needed)));
            }
            if !on_remote {
                plan.needed.extend(m.chunks.iter().map(|(c, _)| *c));
                plan.manifests.push((id, bytes));
            }
        }
        for (id, path) in list_ids(&self.dir("events"), "event")? {
            if rev.contains(&id) {
                continue;
            }
            let bytes = fs::read(&path).at(&path)?;
            manifest::decode_event(&bytes, &path.display().to_string())?;
            plan.events.push((id, bytes));
        }
        Ok(plan)
    }

    /// Upload one remote pack holding `chunks` (records copied verbatim after their BLAKE3
    /// check). Returns the object's size.
    fn upload_pack(
        &self,
        remote: &Remote,
        files: &HashMap<Id, Arc<File>>,
        chunks: &[(ChunkId, ChunkLoc)],
        progress: Option<&AtomicU64>,
    ) -> Result<(Id, u64)> {
        // Push cuts groups at `MAX_RECORDS`, so every index it writes can be read back.
        if chunks.len() > rpack::MAX_RECORDS {
            return Err(Error::Internal(format!(
                "{} records are too many for one remote pack",
                chunks.len()
            )));
        }
        let id = Id::generate();
        let key = remote.key(&format!("packs/{}", rpack::object_name(id)));
        let records: u64 = chunks.iter().map(|c| c.1.record_len()).sum();
        let total = pack::PACK_HEADER_LEN
            + records
            + 12
            + (chunks.len() * rpack::ENTRY_LEN) as u64
            + 32 * chunks.iter().filter(|c| c.1.base.is_some()).count() as u64
            + rpack::FOOTER_LEN;
        ObjectWriter::start(remote, key, total, false)?.write_all_with(|w| {
            w.write(&pack::encode_pack_header(id))?;
            let mut entries = Vec::with_capacity(chunks.len());
            let mut offset = pack::PACK_HEADER_LEN;
            // Read and check a batch in parallel, then send it in order.
            for batch in chunks.chunks(64) {
                let bufs: Vec<Vec<u8>> = batch
                    .par_iter()
                    .map(|(cid, loc)| {
                        let p = self.dir("packs").join(pack::pack_file_name(loc.pack));
                        packs::read_record(&files[&loc.pack], loc, cid, &|| p.display().to_string())
                    })
                    .collect::<Result<_>>()?;
                for ((cid, loc), buf) in batch.iter().zip(bufs) {
                    entries.push(rpack::Entry {
                        id: *cid,
                        offset,
                        stored_len: loc.stored_len,
                        raw_len: loc.raw_len,
                        codec: loc.codec,
                        base: loc.base,
                    });
                    offset += buf.len() as u64;
                    w.write(&buf)?;
                    if let Some(p) = progress {
                        p.fetch_add(buf.len() as u64, Ordering::Relaxed);
                    }
                }
            }
            let idx = rpack::encode_index(&entries);
            w.write(&idx)?;
            w.write(&rpack::encode_footer(offset, &idx))?;
            Ok(())
        })?;
        Ok((id, total))
    }
}
