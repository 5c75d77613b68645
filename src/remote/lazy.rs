//! Reading one version straight from a remote, without pulling the store: a seekable,
//! verified reader that fetches only the chunk records it needs.
//!
//! - Finding the version: the remote's manifests and events are read once and cached under
//!   `cache/remote/<r>/manifests/` and `events/` (they are immutable), each checked like a
//!   pull checks it; deletes hide versions as they do locally.
//! - Reading: a read at a position fetches the records of the chunks it covers (and, while
//!   reads stay sequential, a read-ahead window that doubles up to 64 MiB), with ranged GETs
//!   of adjacent records coalesced; delta bases are fetched as needed. Every chunk is proven
//!   against its BLAKE3 id before a byte of it is returned; a record that fails is an error,
//!   never data.
//! - Cache: fetched records are kept under `cache/remote/<r>/chunks/` (bounded: 2 GiB by
//!   default, `ML_DASH_REMOTE_CACHE_BYTES`; oldest files go first), so a later read of the same
//!   chunks, and a later `pull`, does not fetch them again.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use crate::error::{Error, IoContext, Result};
use crate::format::codec::Codec;
use crate::format::digest::ChunkId;
use crate::format::id::Id;
use crate::format::manifest::{self, Event, Manifest};
use crate::format::names::FileKey;
use crate::format::pack::{self, RECORD_HEADER_LEN};
use crate::format::record::FileRecord;
use crate::format::rpack;
use crate::remote::Remote;
use crate::store::Store;

/// The largest read-ahead of a sequential reader.
const MAX_READAHEAD: u64 = 64 << 20;
/// Adjacent records closer than this are fetched by one ranged GET.
const GAP: u64 = 4 << 10;
/// The largest single ranged GET.
const MAX_RANGE: u64 = 4 << 20;
const DEFAULT_CACHE: u64 = 2 << 30;

/// Records fetched from one remote, kept on disk by chunk id and bounded in size.
#[derive(Clone)]
pub(crate) struct RecordCache {
    dir: PathBuf,
    limit: u64,
}

impl RecordCache {
    pub(crate) fn new(store: &Store, remote: &Remote) -> RecordCache {
        let limit = std::env::var("ML_DASH_REMOTE_CACHE_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_CACHE);
        RecordCache {
            dir: store.remote_cache(remote).join("chunks"),
            limit,
        }
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_string();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// The record cached for `e`, if one is there and still matches it.
    pub(crate) fn get(&self, e: &rpack::Entry) -> Option<Vec<u8>> {
        let b = std::fs::read(self.path(&e.id)).ok()?;
        check_record(e, &b).ok()?;
        Some(b)
    }

    fn put(&self, id: &ChunkId, rec: &[u8]) {
        if self.limit == 0 {
            return;
        }
        let p = self.path(id);
        if let Some(parent) = p.parent()
            && std::fs::create_dir_all(parent).is_ok()
        {
            // Derived data: not fsynced; a torn file fails `check_record` and is fetched again.
            let tmp = p.with_extension("tmp");
            if std::fs::write(&tmp, rec).is_ok() {
                let _ = std::fs::rename(&tmp, &p);
            }
        }
    }

    /// Remove the oldest records until the cache holds at most 80 % of its limit.
    fn trim(&self) {
        let mut files = Vec::new();
        let mut total = 0u64;
        for sub in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(sub.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(m) = f.metadata() {
                    total += m.len();
                    files.push((m.modified().ok(), m.len(), f.path()));
                }
            }
        }
        if total <= self.limit {
            return;
        }
        files.sort();
        for (_, len, p) in files {
            if total <= self.limit / 10 * 8 {
                break;
            }
            if std::fs::remove_file(&p).is_ok() {
                total -= len;
            }
        }
    }
}

/// A fetched record against its remote pack index entry: header as the index says, data that
/// checks out on its own (a whole record decodes to its id; a delta's header and checksum hold).
pub(crate) fn check_record(e: &rpack::Entry, rec: &[u8]) -> std::result::Result<(), String> {
    if rec.len() as u64 != e.record_len() {
        return Err("record length differs from the pack index".into());
    }
    let h = pack::decode_record_header(rec).map_err(ToString::to_string)?;
    if h.id != e.id || h.stored_len != e.stored_len || h.raw_len != e.raw_len || h.codec != e.codec
    {
        return Err("record does not match the pack index".into());
    }
    let data = &rec[RECORD_HEADER_LEN..];
    if e.codec == Codec::Delta && crate::format::delta::base_of(data) != e.base {
        return Err("delta base differs from the pack index".into());
    }
    pack::check_stored(&h, data, &|| "the record".into()).map_err(|e| e.to_string())
}

/// How much a remote reader fetched.
#[derive(Clone, Copy, Debug, Default)]
pub struct FetchStats {
    /// Bytes of records fetched from the remote (cache hits not counted).
    pub bytes: u64,
    /// Records fetched from the remote.
    pub records: u64,
    /// Ranged GETs sent.
    pub requests: u64,
    /// Records found in the local cache.
    pub cached: u64,
}

/// One version read straight from a remote: `Read + Seek`, every chunk proven against its
/// BLAKE3 id. Made by [`Store::open_remote`].
pub struct RemoteFile {
    remote: Arc<Remote>,
    record: FileRecord,
    chunks: Vec<ChunkId>,
    /// `starts[i]`: offset of chunk `i`; `starts[n]`: the size.
    starts: Vec<u64>,
    map: Arc<HashMap<ChunkId, (Id, rpack::Entry)>>,
    cache: RecordCache,
    pos: u64,
    /// Decoded chunks of the current window.
    window: HashMap<ChunkId, Arc<Vec<u8>>>,
    /// Where the last read ended, and the read-ahead it earned.
    last_end: u64,
    readahead: u64,
    stats: FetchStats,
    fetched_since_trim: u64,
}

impl std::fmt::Debug for RemoteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteFile")
            .field("record", &self.record.key().display())
            .field("pos", &self.pos)
            .finish()
    }
}

impl Store {
    /// Open version `version` (default: the latest live one) of `key` as it is on `remote`,
    /// without pulling: only the manifests and events not seen before are fetched (and cached
    /// under this store's `cache/`), then chunk records as they are read.
    pub fn open_remote(
        &self,
        remote: Arc<Remote>,
        key: &FileKey,
        version: Option<u32>,
    ) -> Result<RemoteFile> {
        let cache_dir = self.remote_cache(&remote);
        if !remote.rt.block_on(remote.check_marker(false))? {
            return Err(Error::remote(
                remote.url.clone(),
                "no ml-dash remote here (nothing was pushed to it)",
            ));
        }
        let m = find_version(&remote, &cache_dir, key, version)?;
        let mut known = remote.rt.block_on(remote.chunk_map(&cache_dir))?;
        known.settle(&remote.rt.block_on(remote.marked_packs())?, &|_| false);
        let mut starts = Vec::with_capacity(m.chunks.len() + 1);
        let mut at = 0u64;
        for (id, len) in &m.chunks {
            if !known.chunks.contains_key(id) {
                return Err(remote.damaged(
                    format!("manifests/{}.manifest", m.record.id),
                    format!("chunk {id} is in no remote pack"),
                ));
            }
            starts.push(at);
            at += u64::from(*len);
        }
        starts.push(at);
        Ok(RemoteFile {
            cache: RecordCache::new(self, &remote),
            remote,
            record: m.record,
            chunks: m.chunks.iter().map(|(c, _)| *c).collect(),
            starts,
            map: Arc::new(known.chunks),
            pos: 0,
            window: HashMap::new(),
            last_end: u64::MAX,
            readahead: 0,
            stats: FetchStats::default(),
            fetched_since_trim: 0,
        })
    }
}

/// Fetch the objects `dir/<id>.<ext>` of `ids` (listed with their sizes) that `local` does not
/// hold yet into `local/<id>.<ext>`. Objects larger than `max_len` are left out; whoever
/// reads the cache checks every file and removes one that does not decode.
fn cache_objects(
    remote: &Remote,
    dir: &'static str,
    ext: &'static str,
    local: &std::path::Path,
    ids: &[(Id, u64)],
    max_len: u64,
) -> Result<()> {
    let todo: Vec<(Id, u64)> = ids
        .iter()
        .filter(|(id, size)| *size <= max_len && !local.join(format!("{id}.{ext}")).exists())
        .copied()
        .collect();
    remote.rt.block_on(
        futures::stream::iter(todo)
            .map(|(id, size)| async move {
                // Only the listed size is read, whatever the object holds.
                let key = remote.key(&format!("{dir}/{id}.{ext}"));
                let b = if size == 0 {
                    bytes::Bytes::new()
                } else {
                    remote
                        .os
                        .get_range(&key, 0..size)
                        .await
                        .map_err(|e| remote.err(format!("reading {key}"), e))?
                };
                Ok::<_, Error>((id, b))
            })
            .buffer_unordered(super::SMALL_CONCURRENCY)
            .try_for_each(|(id, b)| {
                // Cached as fetched (temporary file, then rename: never half a file under its
                // name); checked every time it is used.
                let dest = local.join(format!("{id}.{ext}"));
                let tmp = local.join(format!(".{id}.{ext}.tmp"));
                if std::fs::write(&tmp, &b).is_ok() {
                    let _ = std::fs::rename(&tmp, &dest);
                }
                async { Ok(()) }
            }),
    )
}

/// List the remote's manifests and events, and fetch those not cached yet into
/// `cache/manifests/` and `cache/events/`. Returns both listings and both directories.
#[allow(
    clippy::type_complexity,
    reason = "two listings and their two directories"
)]
pub(crate) fn cache_catalog(
    remote: &Remote,
    cache: &std::path::Path,
) -> Result<(Vec<(Id, u64)>, Vec<(Id, u64)>, PathBuf, PathBuf)> {
    let (rman, rev) = remote.rt.block_on(async {
        futures::try_join!(
            remote.list_ids("manifests", "manifest"),
            remote.list_ids("events", "event")
        )
    })?;
    let mdir = cache.join("manifests");
    let edir = cache.join("events");
    std::fs::create_dir_all(&mdir).at(&mdir)?;
    std::fs::create_dir_all(&edir).at(&edir)?;
    cache_objects(
        remote,
        "manifests",
        "manifest",
        &mdir,
        &rman,
        manifest::MAX_FILE_LEN as u64,
    )?;
    cache_objects(
        remote,
        "events",
        "event",
        &edir,
        &rev,
        manifest::MAX_EVENT_LEN,
    )?;
    Ok((rman, rev, mdir, edir))
}

/// Read every manifest and event of the remote this store has not cached, and find the version.
fn find_version(
    remote: &Remote,
    cache: &std::path::Path,
    key: &FileKey,
    version: Option<u32>,
) -> Result<Manifest> {
    let (rman, rev, mdir, edir) = cache_catalog(remote, cache)?;
    let mut versions: Vec<Manifest> = Vec::new();
    for (id, _) in &rman {
        let what = format!("manifests/{id}.manifest");
        let Ok(b) = std::fs::read(mdir.join(format!("{id}.manifest"))) else {
            continue;
        };
        match Manifest::decode(&b, &what) {
            Ok(m)
                if m.record.id == *id
                    && m.record.key() == *key
                    && crate::format::record::check_pulled_manifest(&m).is_ok() =>
            {
                versions.push(m);
            }
            Ok(_) => {}
            // Damaged in the cache (or on the remote): fetched again next time.
            Err(_) => {
                let _ = std::fs::remove_file(mdir.join(format!("{id}.manifest")));
            }
        }
    }
    let mut events: Vec<Event> = Vec::new();
    for (id, _) in &rev {
        let path = edir.join(format!("{id}.event"));
        let Ok(b) = std::fs::read(&path) else {
            continue;
        };
        match manifest::decode_event(&b, "") {
            Ok(e) if e.id() == *id && crate::format::record::check_pulled_event(&e).is_ok() => {
                events.push(e);
            }
            Ok(_) => {}
            // Damaged in the cache (or on the remote): fetched again next time.
            Err(_) => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    events.sort_by_key(Event::id);
    let mut dropped: HashSet<Id> = HashSet::new();
    let mut deleted_up_to = 0u32;
    for e in &events {
        match e {
            Event::Delete { up_to_version, .. } if e.file_key().as_ref() == Some(key) => {
                deleted_up_to = deleted_up_to.max(*up_to_version);
            }
            Event::DeleteVersions { version_ids, .. } => dropped.extend(version_ids),
            Event::Update { version_id, .. } => {
                if let Some(m) = versions.iter_mut().find(|m| m.record.id == *version_id) {
                    e.apply_update(&mut m.record);
                }
            }
            Event::Delete { .. } => {}
        }
    }
    versions.retain(|m| m.record.version > deleted_up_to && !dropped.contains(&m.record.id));
    versions.sort_by_key(|m| m.record.version);
    let found = match version {
        Some(v) => versions.into_iter().find(|m| m.record.version == v),
        None => versions.pop(),
    };
    found.ok_or_else(|| {
        Error::NotFound(match version {
            Some(v) => format!("{} version {v} on {}", key.display(), remote.url),
            None => format!("{} on {}", key.display(), remote.url),
        })
    })
}

impl RemoteFile {
    /// The version's record.
    pub fn record(&self) -> &FileRecord {
        &self.record
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.record.size_bytes
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.record.size_bytes == 0
    }

    /// Where each chunk starts, and the size last: chunk `i` is bytes
    /// `chunk_starts()[i]..chunk_starts()[i + 1]`.
    pub fn chunk_starts(&self) -> &[u64] {
        &self.starts
    }

    /// What this reader fetched so far.
    pub fn stats(&self) -> FetchStats {
        self.stats
    }

    /// Chunk index holding byte `pos` (`pos` < size).
    fn chunk_at(&self, pos: u64) -> usize {
        self.starts.partition_point(|s| *s <= pos) - 1
    }

    /// Make the chunks covering `[from, to)` readable from the window.
    fn ensure(&mut self, from: u64, to: u64) -> Result<()> {
        let (a, b) = (self.chunk_at(from), self.chunk_at(to - 1));
        let wanted: Vec<ChunkId> = self.chunks[a..=b].to_vec();
        if wanted.iter().all(|c| self.window.contains_key(c)) {
            return Ok(());
        }
        // The window becomes these chunks (and the bases they need).
        let keep: HashSet<ChunkId> = wanted.iter().copied().collect();
        self.window.retain(|c, _| keep.contains(c));
        let mut records = self.fetch(&wanted)?;
        for c in &wanted {
            if !self.window.contains_key(c) {
                let raw = self.decode(c, &mut records, 0)?;
                self.window.insert(*c, raw);
            }
        }
        if self.fetched_since_trim > self.cache.limit / 8 {
            self.cache.trim();
            self.fetched_since_trim = 0;
        }
        Ok(())
    }

    /// The records of `ids` (from the cache, else by coalesced ranged GETs), each checked
    /// against the remote pack index.
    fn fetch(&mut self, ids: &[ChunkId]) -> Result<HashMap<ChunkId, Vec<u8>>> {
        let mut out = HashMap::new();
        let mut want: Vec<(Id, rpack::Entry)> = Vec::new();
        let mut seen = HashSet::new();
        for c in ids {
            if !seen.insert(*c) || self.window.contains_key(c) {
                continue;
            }
            let (pack, e) = *self.map.get(c).ok_or_else(|| {
                self.remote
                    .damaged(self.what(), format!("chunk {c} is in no remote pack"))
            })?;
            match self.cache.get(&e) {
                Some(rec) => {
                    self.stats.cached += 1;
                    out.insert(*c, rec);
                }
                None => want.push((pack, e)),
            }
        }
        want.sort_by_key(|(p, e)| (*p, e.offset));
        let mut ranges: Vec<(Id, std::ops::Range<u64>, Vec<rpack::Entry>)> = Vec::new();
        for (p, e) in want {
            let r = e.offset..e.offset + e.record_len();
            match ranges.last_mut() {
                Some((lp, lr, es))
                    if *lp == p
                        && r.start >= lr.end
                        && r.start - lr.end <= GAP
                        && r.end - lr.start <= MAX_RANGE =>
                {
                    lr.end = r.end;
                    es.push(e);
                }
                _ => ranges.push((p, r, vec![e])),
            }
        }
        let remote = &self.remote;
        let got: Vec<(std::ops::Range<u64>, Vec<rpack::Entry>, bytes::Bytes)> =
            remote.rt.block_on(
                futures::stream::iter(ranges)
                    .map(|(p, r, es)| async move {
                        let key = remote.key(&format!("packs/{}", rpack::object_name(p)));
                        let b = remote
                            .os
                            .get_range(&key, r.clone())
                            .await
                            .map_err(|e| remote.err(format!("reading {key}"), e))?;
                        Ok::<_, Error>((r, es, b))
                    })
                    .buffered(8)
                    .try_collect(),
            )?;
        let counter = AtomicU64::new(0);
        for (r, es, b) in got {
            self.stats.requests += 1;
            if b.len() as u64 != r.end - r.start {
                return Err(self.remote.damaged(self.what(), "short ranged read"));
            }
            counter.fetch_add(b.len() as u64, Ordering::Relaxed);
            for e in es {
                let at = crate::format::usize_from(e.offset - r.start);
                let rec = &b[at..at + crate::format::usize_from(e.record_len())];
                check_record(&e, rec).map_err(|why| {
                    Error::corrupt(format!("{}: chunk {}", self.what(), e.id), why)
                })?;
                self.cache.put(&e.id, rec);
                self.stats.records += 1;
                out.insert(e.id, rec.to_vec());
            }
        }
        let n = counter.into_inner();
        self.stats.bytes += n;
        self.fetched_since_trim += n;
        Ok(out)
    }

    fn what(&self) -> String {
        format!(
            "{} v{} on {}",
            self.record.key().display(),
            self.record.version,
            self.remote.url
        )
    }

    /// Decode chunk `id` from its record (fetching delta bases as needed) and prove it.
    fn decode(
        &mut self,
        id: &ChunkId,
        records: &mut HashMap<ChunkId, Vec<u8>>,
        depth: u8,
    ) -> Result<Arc<Vec<u8>>> {
        if let Some(raw) = self.window.get(id) {
            return Ok(Arc::clone(raw));
        }
        if depth > crate::format::delta::MAX_DEPTH {
            return Err(Error::corrupt(
                self.what(),
                format!("delta chain above chunk {id} is too long"),
            ));
        }
        if !records.contains_key(id) {
            records.extend(self.fetch(&[*id])?);
        }
        let rec = records
            .get(id)
            .ok_or_else(|| Error::Internal(format!("chunk {id} was fetched but is missing")))?
            .clone();
        let h = pack::decode_record_header(&rec)
            .map_err(|r| Error::corrupt(self.what(), r.to_string()))?;
        let stored = &rec[RECORD_HEADER_LEN..];
        let what = self.what();
        let location = || what.clone();
        let raw = if h.codec == Codec::Delta {
            let (dh, inner) = crate::format::delta::parse_header(stored)
                .map_err(|r| Error::corrupt(self.what(), format!("chunk {id}: {r}")))?;
            let base = self.decode(&dh.base, records, depth + 1)?;
            let mut raw = vec![0u8; h.raw_len as usize];
            crate::format::delta::decode_into(
                &dh,
                inner,
                &base,
                &mut raw,
                &location,
                &mut |_, _| {},
            )?;
            if ChunkId::of(&raw) != h.id {
                return Err(Error::corrupt(
                    self.what(),
                    format!("chunk {id} (a delta) fails its BLAKE3 check"),
                ));
            }
            raw
        } else {
            pack::decode_and_verify(&h, stored, &location)?
        };
        if h.id != *id {
            return Err(Error::corrupt(
                self.what(),
                format!("record of chunk {} where chunk {id} was expected", h.id),
            ));
        }
        let raw = Arc::new(raw);
        if depth > 0 {
            // A base: kept while the window lasts (the next delta on it needs it too).
            self.window.insert(*id, Arc::clone(&raw));
        }
        Ok(raw)
    }
}

impl Read for RemoteFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.len();
        if buf.is_empty() || self.pos >= size {
            return Ok(0);
        }
        let sequential = self.pos == self.last_end;
        self.readahead = if sequential {
            (self.readahead * 2).clamp(1 << 20, MAX_READAHEAD)
        } else {
            0
        };
        let i = self.chunk_at(self.pos);
        if !self.window.contains_key(&self.chunks[i]) {
            let to = (self.pos + (buf.len() as u64).max(self.readahead)).min(size);
            self.ensure(self.pos, to).map_err(std::io::Error::other)?;
        }
        let raw = Arc::clone(&self.window[&self.chunks[i]]);
        // The manifest's lengths placed the chunk; a chunk of another length (a hostile or
        // damaged manifest) would misplace every byte after it.
        if raw.len() as u64 != self.starts[i + 1] - self.starts[i] {
            return Err(std::io::Error::other(Error::corrupt(
                self.what(),
                format!(
                    "chunk {} is {} bytes, the manifest says {}",
                    self.chunks[i],
                    raw.len(),
                    self.starts[i + 1] - self.starts[i]
                ),
            )));
        }
        let off = crate::format::usize_from(self.pos - self.starts[i]);
        let n = (raw.len() - off).min(buf.len());
        buf[..n].copy_from_slice(&raw[off..off + n]);
        self.pos += n as u64;
        self.last_end = self.pos;
        Ok(n)
    }
}

impl Seek for RemoteFile {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let size = i128::from(self.len());
        let target = match to {
            SeekFrom::Start(n) => i128::from(n),
            SeekFrom::End(d) => size + i128::from(d),
            SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        if target < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start",
            ));
        }
        self.pos = u64::try_from(target).unwrap_or(u64::MAX);
        Ok(self.pos)
    }
}
