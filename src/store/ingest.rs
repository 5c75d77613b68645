//! The ingest pipeline: bytes in, chunks in packs and a chunk list out.
//!
//! ```text
//! reader thread ──windows──▶ SHA-256 thread                      (whole-file checksum)
//!      │ chunk cuts (FastCDC, or a tensor-aligned grid for safetensors)
//!      └──batches──▶ worker: rayon { BLAKE3, index lookup, delta? compress? } ─▶ pack appends
//!                                                     rotated packs ─▶ fsync thread
//! ```
//! A safetensors file (detected from its header in the first window) is cut on a grid aligned
//! to its tensors (`tensors.rs`). When the upload has a `Previous` version with a layout, each
//! piece of a tensor is paired with the same piece of the same tensor (by name, dtype and
//! length) in that version, and stored as a delta against it (`delta.rs`) when that is
//! predicted to save at least `DELTA_MIN_GAIN` and the chain stays within `delta_depth`.
//! Windows come from a fixed pool of buffers (`POOL` of them, each `hot_bytes()` or 4 of the
//! largest chunks, the first one large enough for a safetensors header), so memory is bounded
//! whatever the file size and a slow stage applies back-pressure to the reader. Chunks are
//! `Bytes` slices of those buffers (no copy); a buffer returns to the pool when its last chunk
//! is dropped.
//! The files of one commit share a `PackSink`: the pack being appended to stays open from one
//! file to the next and is fsynced once, when the commit finishes the sink (a full pack is
//! fsynced as soon as the next one starts). Chunks appended by the commit are found again by the
//! files after them (dedup within a commit) before the index records them.
//! Nothing here touches manifests or the index beyond lookups and the chunk locations of fsynced
//! packs: `batch.rs` commits the result.

use std::io::{ErrorKind, Read};
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded};
use rayon::prelude::*;
use sha2::Digest as _;

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::format::chunker::Chunker;
use crate::format::codec::{self, Codec, Compression};
use crate::format::digest::{ChunkId, Digest, Sha256};
use crate::format::id::Id;
use crate::format::pack::{ChunkLoc, RECORD_HEADER_LEN, len_field};
use crate::format::tensors::{Grid, Layout};
use crate::store::index::{ChunkLookup, Index, IndexBatch};
use crate::store::packs::{Compared, PackWriter, Spare};
use crate::store::read::Located;

/// Windows in flight: one being read, the others being cut, hashed and stored. Each is
/// `hot_bytes()` long (at least 4 of the largest chunks), so the bytes in flight stay in the
/// CPU cache from the read to the SHA-256 and BLAKE3 passes.
const POOL: usize = 4;

/// The first window of a source whose size is known is only as large as the source (plus one
/// byte, to see its end), but at least this: a small file never costs a whole window.
const SMALL_WINDOW: usize = 64 << 10;

/// Sources of known size up to this are read whole and ingested on the calling thread: for small
/// files (many of them in one batch) starting the pipeline's threads would cost more than the
/// work.
const INLINE_MAX: u64 = 1 << 20;

/// Sources from this size on (or of unknown size and longer than the first window) look up the
/// version before them to compare their chunks with (`Previous`); for smaller ones the lookup
/// would cost more than it saves.
const COMPARE_MIN: u64 = 8 << 20;

/// What an ingest produced. Nothing is visible until the caller commits it.
pub struct Ingested {
    pub checksum: Sha256,
    pub size: u64,
    pub chunks: Vec<(ChunkId, u32)>,
    /// Stored bytes added (record headers included).
    pub new_bytes: u64,
}

/// Where the files of one commit append their new chunks, from one file to the next.
///
/// Full packs are fsynced (by ingest's sync thread) as soon as the next one starts, and the
/// index then records their chunks (applied, not flushed). The pack being appended to is
/// fsynced only by `finish`, once for the whole commit; until then its chunks are known only
/// here (`fresh`), so later files of the commit deduplicate against them without the index
/// naming bytes that are not durable yet.
pub(crate) struct PackSink {
    /// The pack the index names as open, with its committed length: the first append continues
    /// it if it has room and its length on disk is what the index says.
    active: Option<(Id, u64)>,
    writer: Option<PackWriter>,
    /// Chunks appended to `writer` since it was opened: recorded in the index by `finish`.
    unsynced: Vec<(ChunkId, ChunkLoc)>,
    /// Every chunk this commit appended, wherever it went.
    fresh: HashMap<ChunkId, ChunkLoc>,
    /// Window buffers, kept from one file to the next.
    buffers: Vec<Vec<u8>>,
    /// Packs fsynced but not yet recorded in the index (an upload outside the store lock
    /// records them when it commits: `record_deferred`).
    deferred: Vec<SyncedPack>,
    /// New packs get their incoming name (an upload outside the store lock).
    incoming: bool,
    /// Chunks the lookup knew whose stored record did not hold their bytes: this sink's copy
    /// takes over their index entries.
    takeovers: std::collections::HashSet<ChunkId>,
}

/// A fsynced pack, its length and the chunks appended to it.
type SyncedPack = (Id, u64, Vec<(ChunkId, ChunkLoc)>);

impl PackSink {
    /// A sink that continues `active` (the index's open pack and its committed length).
    pub(crate) fn new(active: Option<(Id, u64)>) -> PackSink {
        PackSink {
            active,
            writer: None,
            unsynced: Vec::new(),
            fresh: HashMap::new(),
            buffers: Vec::new(),
            deferred: Vec::new(),
            takeovers: Default::default(),
            incoming: false,
        }
    }

    /// A sink for an upload outside the store lock: it never continues the store's open pack,
    /// and its packs carry their incoming name until `record_deferred` publishes them.
    pub(crate) fn incoming() -> PackSink {
        PackSink {
            incoming: true,
            ..PackSink::new(None)
        }
    }

    fn new_pack(&self, cfg: &IngestConfig<'_>) -> Result<PackWriter> {
        match self.incoming {
            true => PackWriter::create_incoming(cfg.packs_dir, cfg.faults),
            false => PackWriter::create(cfg.packs_dir, cfg.faults),
        }
    }

    /// fsync the open pack and record its chunks and length in `index` (applied, not flushed:
    /// the commit's next index flush makes them durable), or keep them for
    /// `record_deferred` (`None`). Returns the pack later appends should continue, if this
    /// commit wrote any. An error here must poison the store.
    pub(crate) fn finish(&mut self, index: Option<&Index>) -> Result<Option<Id>> {
        let Some(mut w) = self.writer.take() else {
            return Ok(None);
        };
        let locs = std::mem::take(&mut self.unsynced);
        sync_and_record(index, &mut w, locs, &mut self.deferred)?;
        Ok(Some(w.id))
    }

    /// Remove the packs of a failed upload outside the store lock: nothing refers to them (no
    /// index knows their incoming names), so they go at once instead of waiting for gc. A
    /// removal that fails leaves the file for gc.
    pub(crate) fn discard_incoming(&mut self, packs_dir: &Path) {
        if !self.incoming {
            return;
        }
        let mut ids: Vec<Id> = self.deferred.drain(..).map(|(id, _, _)| id).collect();
        if let Some(w) = self.writer.take() {
            ids.push(w.id);
        }
        self.unsynced.clear();
        for id in ids {
            let _ =
                std::fs::remove_file(packs_dir.join(crate::format::pack::incoming_file_name(id)));
        }
    }

    /// Publish the packs an upload outside the store lock fsynced (`finish(None)` and full
    /// packs) and record them in the index, under the lock, at its commit: each is renamed
    /// from its incoming name, the directory fsynced once, then the index records their
    /// chunks (applied, not flushed: the commit's next flush makes them durable, before any
    /// manifest names them). A chunk the index learned meanwhile (another writer committed
    /// the same bytes) keeps the location it has: this sink's copy is garbage for gc. A chunk
    /// whose indexed record did not hold its bytes is taken over.
    pub(crate) fn record_deferred(
        &mut self,
        index: &Index,
        packs_dir: &Path,
        faults: &crate::store::fault::Faults,
    ) -> Result<()> {
        let deferred = std::mem::take(&mut self.deferred);
        if self.incoming && !deferred.is_empty() {
            for (pack, _, _) in &deferred {
                crate::store::packs::publish_incoming(packs_dir, *pack, faults)?;
            }
            crate::store::durable::fsync_dir(packs_dir, faults)?;
        }
        let takeovers = &self.takeovers;
        let keep = |id: &ChunkId| Ok(takeovers.contains(id) || index.chunk(id)?.is_none());
        for (pack, len, locs) in deferred {
            record_pack(index, pack, len, &locs, &keep)?;
        }
        Ok(())
    }
}

/// The SHA-256 of bytes in memory.
pub(crate) fn sha256_of(bytes: &[u8]) -> Sha256 {
    Sha256(Digest(sha2::Sha256::digest(bytes).into()))
}

/// fsync a pack, then record it in `index` or, with `None`, keep it in `deferred` for
/// `record_deferred`.
fn sync_and_record(
    index: Option<&Index>,
    w: &mut PackWriter,
    locs: Vec<(ChunkId, ChunkLoc)>,
    deferred: &mut Vec<SyncedPack>,
) -> Result<()> {
    w.sync()?;
    match index {
        Some(ix) => record_pack(ix, w.id, w.len(), &locs, &|_| Ok(true)),
        None => {
            deferred.push((w.id, w.len(), locs));
            Ok(())
        }
    }
}

/// Record the chunks of a fsynced pack that `keep` accepts, and its length, in the index (in
/// small batches: one sled batch per 50k entries costs ~200 MB).
fn record_pack(
    index: &Index,
    pack: Id,
    len: u64,
    locs: &[(ChunkId, ChunkLoc)],
    keep: &dyn Fn(&ChunkId) -> Result<bool>,
) -> Result<()> {
    for part in locs.chunks(256) {
        let mut b = IndexBatch::default();
        for (id, loc) in part {
            if keep(id)? {
                b.put_chunk(id, loc);
            }
        }
        index.apply_unflushed(b)?;
    }
    let mut b = IndexBatch::default();
    b.put_pack(pack, len);
    index.apply_unflushed(b)
}

/// Where appends go and how.
pub struct IngestConfig<'a> {
    pub packs_dir: &'a Path,
    pub chunker: &'a Chunker,
    pub compression: Compression,
    pub pack_target: u64,
    /// The source's size, if known (a file): its first window is allocated to fit.
    pub size_hint: Option<u64>,
    pub progress: Option<&'a AtomicU64>,
    pub faults: &'a crate::store::fault::Faults,
    /// The version to store deltas against: found (by `find_previous`) only once the source
    /// turns out to have a tensor layout, so other uploads never pay for looking.
    pub previous: &'a OnceLock<Option<Previous>>,
    pub find_previous: &'a (dyn Fn() -> Option<Previous> + Sync),
    /// Longest delta chain to create (0: no deltas).
    pub delta_depth: u8,
    /// The source's tensor layout when the caller knows it (a zip archive read from a file);
    /// a safetensors header in the first window is detected here.
    pub layout: Option<Layout>,
    /// Open packs for checking the records of known chunks.
    pub(crate) pack_files: &'a crate::store::read::PackFiles,
}

/// A delta must be predicted to store this fraction of a piece's size less than the piece on
/// its own (a delta costs a base read on every read).
pub const DELTA_MIN_GAIN: f64 = 0.03;

/// An earlier version of the file (or of a file like it) an upload compares its chunks with and
/// may store deltas against: its tensor layout, if it has one, and where each of its chunks
/// starts, with their locations resolved (under the session's lock).
pub struct Previous {
    pub(crate) layout: Option<Layout>,
    /// Chunk starting at each file offset: `(id, length, location)`.
    pub(crate) chunk_at: HashMap<u64, (ChunkId, u32, ChunkLoc)>,
    pub(crate) located: Located,
}

/// The chunk a new piece may be stored against.
#[derive(Clone, Copy)]
struct Hint {
    base: ChunkId,
    loc: ChunkLoc,
    /// Element width, if the dtype is known.
    width: Option<usize>,
}

/// How the reader cuts: FastCDC, or a tensor grid with, per tensor of the new file, the
/// matching tensor of the previous version.
enum Cutter<'a> {
    Cdc(&'a Chunker),
    Grid {
        grid: Grid,
        matches: Vec<Option<usize>>,
    },
}

struct PoolBuf {
    buf: Vec<u8>,
    len: usize,
    home: Sender<Vec<u8>>,
}

impl AsRef<[u8]> for PoolBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        let _ = self.home.try_send(std::mem::take(&mut self.buf));
    }
}

/// One chunk on its way to the workers.
struct Piece {
    bytes: Bytes,
    /// The base a delta may be stored against.
    hint: Option<Hint>,
    /// The previous version's chunk at the same place (same tensor piece, else same offset)
    /// and of the same length: likely these very bytes.
    same: Option<(ChunkId, ChunkLoc)>,
}

type Batch = Vec<Piece>;

enum Processed {
    Known(ChunkId, u32),
    New {
        id: ChunkId,
        raw: Bytes,
        packed: Option<(Codec, Vec<u8>)>,
        /// The lookup knew the id, but its record did not hold these bytes.
        takeover: bool,
    },
}

/// Where an ingest looks chunks up, and where it records the chunks of the packs it fsyncs.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub lookup: &'a dyn ChunkLookup,
    /// The index (under the store lock), or `None`: the sink keeps them for its commit.
    pub record: Option<&'a Index>,
}

/// Read `src` to the end, chunk, dedup against `index` and the chunks of `sink`, and append new
/// chunks to the sink's packs.
pub(crate) fn ingest<R: Read + Send>(
    mut src: R,
    index: Target<'_>,
    cfg: &IngestConfig<'_>,
    sink: &mut PackSink,
) -> Result<Ingested> {
    match cfg.size_hint.filter(|n| *n <= INLINE_MAX) {
        None => pipeline(src, index, cfg, sink),
        Some(n) => {
            let mut buf = vec![0u8; crate::format::usize_from(n) + 1];
            let got = read_full(&mut src, &mut buf).map_err(Error::Source)?;
            buf.truncate(got);
            if got as u64 <= n {
                return ingest_inline(Bytes::from(buf), index, cfg, sink);
            }
            // Longer than it said it is (growing while read): all of it through the pipeline.
            pipeline(std::io::Cursor::new(buf).chain(src), index, cfg, sink)
        }
    }
}

/// `ingest` through the reader, hashing and chunk-writing threads.
fn pipeline<R: Read + Send>(
    mut src: R,
    index: Target<'_>,
    cfg: &IngestConfig<'_>,
    sink: &mut PackSink,
) -> Result<Ingested> {
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(POOL);
    for _ in 0..POOL {
        let buf = sink.buffers.pop().unwrap_or_default();
        pool_tx.send(buf).expect("pool has room");
    }
    // The chunks of each window, in order: the SHA-256 is taken over exactly the bytes the
    // manifest will list, which is what lets reads of the version skip it (`Index::proof`).
    let (sha_tx, sha_rx) = bounded::<Vec<Bytes>>(POOL);
    let (batch_tx, batch_rx) = bounded::<Batch>(2);

    let res = std::thread::scope(|s| {
        // The previous version is looked up beside the reader for a large source: chunks cut
        // once it is known are compared with its chunks at the same place before they are
        // hashed (a checkpoint's unchanged part). A tensor grid waits for it when it needs it.
        let look_up = || {
            s.spawn(|| cfg.previous.get_or_init(cfg.find_previous).is_some());
        };
        let sha = s.spawn(move || {
            let mut h = sha2::Sha256::new();
            let mut n = 0u64;
            for chunks in sha_rx {
                for b in chunks {
                    h.update(&b);
                    n += b.len() as u64;
                }
            }
            (Sha256(Digest(h.finalize().into())), n)
        });
        let sink = &mut *sink;
        let worker = s.spawn(move || write_chunks(batch_rx, index, cfg, sink));
        let read = read_windows(&mut src, cfg, &look_up, pool_tx, &pool_rx, sha_tx, batch_tx);
        let written = worker
            .join()
            .map_err(|_| Error::Internal("ingest worker panicked".into()))?;
        let (checksum, size) = sha
            .join()
            .map_err(|_| Error::Internal("hash thread panicked".into()))?;
        read?;
        let mut out = written?;
        out.checksum = checksum;
        out.size = size;
        Ok(out)
    });
    // Every window has come home (their chunks are dropped): keep them for the next file.
    sink.buffers.extend(pool_rx.try_iter());
    res
}

fn read_full(src: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Read `src` in windows, cut them and send the chunks on. `look_up` starts the lookup of the
/// previous version, once the first window shows the source is large enough for it to pay.
fn read_windows(
    src: &mut impl Read,
    cfg: &IngestConfig<'_>,
    look_up: &dyn Fn(),
    pool_tx: Sender<Vec<u8>>,
    pool_rx: &Receiver<Vec<u8>>,
    sha_tx: Sender<Vec<Bytes>>,
    batch_tx: Sender<Batch>,
) -> Result<()> {
    let mut carry: Option<Bytes> = None;
    let mut cuts = Cuts::default();
    let mut cutter: Option<Cutter<'_>> = None;
    let mut looked_up = false;
    // Absolute offset of the current window's first byte.
    let mut at = 0u64;
    // The carried tail is shorter than one max-size chunk; keep windows well above that.
    let window_len = crate::store::hot_bytes().max(4 * cfg.chunker.config().max);
    // The cutter is chosen from the first window: it holds any safetensors header. A source
    // of known size gets a first window that fits it (a longer source then simply continues in
    // whole windows).
    let first_len =
        window_len.max(crate::format::usize_from(crate::format::tensors::MAX_HEADER) + 8);
    let mut want = match cfg.size_hint.and_then(|n| usize::try_from(n).ok()) {
        Some(n) => n.saturating_add(1).clamp(SMALL_WINDOW, first_len),
        None => first_len,
    };
    loop {
        let Ok(mut buf) = pool_rx.recv() else {
            return Ok(());
        };
        buf.resize(want, 0);
        let carried = carry.as_ref().map_or(0, |c| c.len());
        if let Some(c) = carry.take() {
            buf[..carried].copy_from_slice(&c);
        }
        let fresh = read_full(src, &mut buf[carried..]).map_err(Error::Source)?;
        let eof = carried + fresh < want;
        if !looked_up && !eof && cfg.size_hint.is_none_or(|n| n >= COMPARE_MIN) {
            looked_up = true;
            look_up();
        }
        want = window_len;
        let len = carried + fresh;
        let window = Bytes::from_owner(PoolBuf {
            buf,
            len,
            home: pool_tx.clone(),
        });
        if fresh > 0
            && let Some(p) = cfg.progress
        {
            p.fetch_add(fresh as u64, Ordering::Relaxed);
        }
        let cutter = cutter.get_or_insert_with(|| choose_cutter(&window, cfg));
        let (used, batch) = cut_window(cutter, &window, at, eof, cfg, &mut cuts);
        if !batch.is_empty()
            && sha_tx
                .send(batch.iter().map(|c| c.bytes.clone()).collect())
                .is_err()
        {
            return Ok(());
        }
        at += used as u64;
        if used < len {
            carry = Some(window.slice(used..));
        }
        if !batch.is_empty() && batch_tx.send(batch).is_err() {
            return Ok(()); // the worker failed; its error is reported
        }
        if eof {
            return Ok(());
        }
    }
}

/// Reused buffers of `cut_window`.
#[derive(Default)]
struct Cuts {
    cdc: Vec<usize>,
    grid: Vec<(usize, Option<crate::format::tensors::Place>)>,
}

/// Cut `window` (starting at file offset `at`; `eof`: nothing follows it) into chunks, with the
/// delta hint of each piece of a tensor. Returns the bytes used (the rest is carried into the
/// next window) and the chunks.
fn cut_window(
    cutter: &Cutter<'_>,
    window: &Bytes,
    at: u64,
    eof: bool,
    cfg: &IngestConfig<'_>,
    cuts: &mut Cuts,
) -> (usize, Batch) {
    let mut pos = 0;
    // Looked up in the background (`pipeline`): the chunks cut before it is known are simply
    // not compared with it.
    let previous = cfg.previous.get().and_then(Option::as_ref);
    let same_offset = |pos: usize, len: usize| {
        let &(id, raw_len, loc) = previous?.chunk_at.get(&(at + pos as u64))?;
        (raw_len as usize == len).then_some((id, loc))
    };
    match cutter {
        Cutter::Cdc(chunker) => {
            cuts.cdc.clear();
            let used = chunker.cuts(window, eof, &mut cuts.cdc);
            let batch = cuts
                .cdc
                .iter()
                .map(|&l| {
                    pos += l;
                    Piece {
                        bytes: window.slice(pos - l..pos),
                        hint: None,
                        same: same_offset(pos - l, l),
                    }
                })
                .collect();
            (used, batch)
        }
        Cutter::Grid { grid, matches } => {
            cuts.grid.clear();
            let used = grid.cuts(at, window, eof, &mut cuts.grid);
            let batch = cuts
                .grid
                .iter()
                .map(|&(l, place)| {
                    pos += l;
                    let hint = place.and_then(|p| hint(cfg, grid, matches, p, l));
                    Piece {
                        bytes: window.slice(pos - l..pos),
                        hint,
                        same: match hint {
                            Some(h) => Some((h.base, h.loc)),
                            None => same_offset(pos - l, l),
                        },
                    }
                })
                .collect();
            (used, batch)
        }
    }
}

/// A grid for a safetensors file (its header is in the first window) or a source whose layout
/// the caller gave, else FastCDC.
fn choose_cutter<'a>(first: &[u8], cfg: &IngestConfig<'a>) -> Cutter<'a> {
    let Some(layout) = Layout::safetensors(first).or_else(|| cfg.layout.clone()) else {
        return Cutter::Cdc(cfg.chunker);
    };
    let previous = match cfg.delta_depth {
        0 => None,
        _ => cfg.previous.get_or_init(cfg.find_previous).as_ref(),
    };
    let matches = match previous.and_then(|p| p.layout.as_ref()) {
        Some(prev) if cfg.delta_depth > 0 => {
            let by_name = prev.by_name();
            layout
                .tensors
                .iter()
                .map(|t| {
                    let &i = by_name.get(t.name.as_str())?;
                    let p = &prev.tensors[i];
                    (p.dtype == t.dtype && p.len() == t.len()).then_some(i)
                })
                .collect()
        }
        _ => vec![None; layout.tensors.len()],
    };
    Cutter::Grid {
        grid: Grid::new(layout, cfg.chunker.config().max),
        matches,
    }
}

/// The chunk of the previous version holding the same `len` bytes of the same tensor.
fn hint(
    cfg: &IngestConfig<'_>,
    grid: &Grid,
    matches: &[Option<usize>],
    (tensor, offset): (usize, u64),
    len: usize,
) -> Option<Hint> {
    let prev = cfg.previous.get()?.as_ref()?;
    let p = &prev.layout.as_ref()?.tensors[matches[tensor]?];
    let &(base, base_len, loc) = prev.chunk_at.get(&(p.start + offset))?;
    (base_len as usize == len).then_some(Hint {
        base,
        loc,
        width: grid.layout().tensors[tensor].width(),
    })
}

/// May a chunk be stored as a delta against `h` (the chain stays within `delta_depth`)?
fn delta_allowed(h: &Hint, cfg: &IngestConfig<'_>) -> bool {
    cfg.previous
        .get()
        .and_then(Option::as_ref)
        .and_then(|p| p.located.depth(&h.loc))
        .is_some_and(|d| d < cfg.delta_depth)
}

/// Store `chunk` as a delta against the hinted base, if the chain allows and it pays.
/// `decoded`: the base's record as decoded when the chunk was compared with it (not proven yet).
fn encode_delta(
    id: &ChunkId,
    chunk: &[u8],
    h: &Hint,
    decoded: Option<&[u8]>,
    cfg: &IngestConfig<'_>,
) -> Option<(Codec, Vec<u8>)> {
    let prev = cfg.previous.get()?.as_ref()?;
    // Never against a chain that holds this very chunk (it is new here only because its
    // stored record could not be read just now): the two would need each other to be read.
    if prev.located.chain_holds(&h.base, &h.loc, id) {
        return None;
    }
    let depth = prev.located.depth(&h.loc)? + 1;
    if depth > cfg.delta_depth {
        return None;
    }
    // The base proven against its id before a delta depends on it; a base that cannot be read
    // back (damage) is simply not used.
    let mut read = None;
    let base: &[u8] = match decoded {
        Some(d) if ChunkId::of(d) == h.base => d,
        _ => {
            let mut buf = Spare::take(chunk.len());
            prev.located
                .read_into(&h.loc, &h.base, &String::new, &mut buf)
                .ok()?;
            read.insert(buf)
        }
    };
    let t = match h.width {
        Some(w) => crate::format::delta::Transform::for_width(w),
        None => crate::format::delta::Transform::guess(chunk, base),
    };
    let stored = crate::format::delta::encode(
        chunk,
        base,
        &h.base,
        depth,
        t,
        cfg.compression,
        DELTA_MIN_GAIN,
    )?;
    Some((Codec::Delta, stored))
}

/// How comparing chunks with the previous version's has gone in this upload. A chunk is
/// compared with the previous version's at its place before it is hashed; when that many
/// comparisons in a row found other bytes (a file whose every chunk changed), only one chunk
/// in `SAMPLE_EVERY` is compared, until one is the same again. Chunks whose comparison decodes
/// the base of their delta are always compared (the decoding is needed anyway).
#[derive(Default)]
struct Tries {
    misses_in_row: AtomicU32,
    skipped: AtomicU32,
}

impl Tries {
    const MISSES_BEFORE_SAMPLING: u32 = 16;
    const SAMPLE_EVERY: u32 = 16;

    fn worth_it(&self) -> bool {
        self.misses_in_row.load(Ordering::Relaxed) < Self::MISSES_BEFORE_SAMPLING
            || self
                .skipped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(Self::SAMPLE_EVERY)
    }

    fn record(&self, same: bool) {
        if same {
            self.misses_in_row.store(0, Ordering::Relaxed);
        } else {
            self.misses_in_row.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn process(
    piece: Piece,
    index: &dyn ChunkLookup,
    fresh: &HashMap<ChunkId, ChunkLoc>,
    cfg: &IngestConfig<'_>,
    tries: &Tries,
) -> Result<Processed> {
    let Piece {
        bytes: chunk,
        hint,
        same,
    } = piece;
    let len = len_field(&chunk)?;
    let delta_base = hint.filter(|h| delta_allowed(h, cfg));
    // The previous version's chunk at this place: if its record decodes to exactly these
    // bytes, they are that chunk, and need no hash. Its record was written from bytes with
    // that id (or proven against it when it came from elsewhere), so a record that decodes to
    // them is sound: the same proof the check of a known chunk below gives.
    let mut tried = None;
    let mut decoded = None;
    if let Some((x, xloc)) = same
        && (delta_base.is_some() || tries.worth_it())
    {
        match cfg.pack_files.compare(index, &xloc, &x, &chunk) {
            Compared::Same => {
                tries.record(true);
                return Ok(Processed::Known(x, len));
            }
            Compared::Differs(d) => {
                if delta_base.is_none() {
                    tries.record(false);
                }
                tried = Some((x, xloc));
                decoded = d;
            }
        }
    }
    let id = ChunkId::of(&chunk);
    // Appended by this commit, from bytes hashed here: not durable yet, but it will be before
    // anything refers to it (the whole commit fails otherwise).
    if fresh.contains_key(&id) {
        return Ok(Processed::Known(id, len));
    }
    // A known chunk is referenced only if its record really holds these bytes: damage (bit
    // rot, a chain whose base is gone) must not turn a new upload into an unreadable one.
    // Otherwise the chunk is written again and its new location takes over the id. (A record
    // just found to hold other bytes is not read again.)
    let known = index.chunk_loc(&id)?;
    if let Some(loc) = known
        && tried != Some((id, loc))
        && cfg.pack_files.holds(index, &loc, &id, &chunk)
    {
        return Ok(Processed::Known(id, len));
    }
    let base_decoded = decoded.filter(|_| {
        tried
            .zip(delta_base)
            .is_some_and(|((x, xloc), h)| x == h.base && xloc == h.loc)
    });
    let packed = delta_base
        .and_then(|h| encode_delta(&id, &chunk, &h, base_decoded.as_deref(), cfg))
        .or_else(|| codec::encode(&chunk, cfg.compression));
    Ok(Processed::New {
        id,
        raw: chunk,
        packed,
        takeover: known.is_some(),
    })
}

fn write_chunks(
    batches: Receiver<Batch>,
    index: Target<'_>,
    cfg: &IngestConfig<'_>,
    sink: &mut PackSink,
) -> Result<Ingested> {
    let tries = Tries::default();
    let mut out = Ingested {
        checksum: Sha256::default(),
        size: 0,
        chunks: Vec::new(),
        new_bytes: 0,
    };
    let (sync_tx, sync_rx) = bounded::<(PackWriter, Vec<(ChunkId, ChunkLoc)>)>(4);
    std::thread::scope(|s| {
        // fsync full packs while the next one fills, then record their chunks in the index.
        let syncer = s.spawn(move || -> Result<Vec<SyncedPack>> {
            let mut deferred = Vec::new();
            for (mut w, locs) in sync_rx {
                sync_and_record(index.record, &mut w, locs, &mut deferred)?;
            }
            Ok(deferred)
        });
        let mut full = |w: PackWriter, locs: Vec<(ChunkId, ChunkLoc)>| {
            sync_tx
                .send((w, locs))
                .map_err(|_| Error::Internal("pack sync thread stopped".into()))
        };
        let res = (|| -> Result<()> {
            for batch in batches {
                store_batch(batch, index, cfg, &tries, sink, &mut out, &mut full)?;
            }
            Ok(())
        })();
        drop(sync_tx);
        let synced = syncer
            .join()
            .map_err(|_| Error::Internal("pack sync thread panicked".into()))?;
        // A failed fsync is the root cause when both failed (the worker then only saw the
        // sync thread stop): report it first.
        sink.deferred.extend(synced?);
        res?;
        Ok(out)
    })
}

/// A full pack handed on to be fsynced, with the locations of its chunks.
type OnFull<'f> = dyn FnMut(PackWriter, Vec<(ChunkId, ChunkLoc)>) -> Result<()> + 'f;

/// Dedup, encode and append one batch of chunks to the sink's packs, recording them in `out`.
/// A pack that fills up is handed to `full` and a new one started.
fn store_batch(
    batch: Batch,
    index: Target<'_>,
    cfg: &IngestConfig<'_>,
    tries: &Tries,
    sink: &mut PackSink,
    out: &mut Ingested,
    full: &mut OnFull<'_>,
) -> Result<()> {
    let fresh = &sink.fresh;
    let processed: Vec<Result<Processed>> = if batch.len() == 1 {
        batch
            .into_iter()
            .map(|p| process(p, index.lookup, fresh, cfg, tries))
            .collect()
    } else {
        batch
            .into_par_iter()
            .map(|p| process(p, index.lookup, fresh, cfg, tries))
            .collect()
    };
    for p in processed {
        let (id, raw, packed) = match p? {
            Processed::Known(id, len) => {
                out.chunks.push((id, len));
                continue;
            }
            Processed::New {
                id,
                raw,
                packed,
                takeover,
            } => {
                if takeover {
                    sink.takeovers.insert(id);
                }
                (id, raw, packed)
            }
        };
        out.chunks.push((id, len_field(&raw)?));
        if sink.fresh.contains_key(&id) {
            continue; // earlier in this batch of chunks
        }
        let (codec, stored): (Codec, &[u8]) = match &packed {
            Some((codec, c)) => (*codec, c),
            None => (Codec::Raw, &raw),
        };
        let need = (RECORD_HEADER_LEN + stored.len()) as u64;
        let w = match sink.writer.take() {
            Some(w) if w.is_empty() || w.len() + need <= cfg.pack_target => w,
            Some(done) => {
                full(done, std::mem::take(&mut sink.unsynced))?;
                sink.new_pack(cfg)?
            }
            None => match sink.active.take() {
                Some((id, len)) if len + need <= cfg.pack_target => {
                    match PackWriter::reopen(cfg.packs_dir, id, len, cfg.faults)? {
                        Some(w) => w,
                        None => sink.new_pack(cfg)?,
                    }
                }
                _ => sink.new_pack(cfg)?,
            },
        };
        let w = sink.writer.insert(w);
        let loc = w.append(id, len_field(&raw)?, codec, stored)?;
        out.new_bytes += loc.record_len();
        sink.unsynced.push((id, loc));
        sink.fresh.insert(id, loc);
    }
    Ok(())
}

/// `ingest` of a source read whole (`INLINE_MAX` bytes at most), on the calling thread.
fn ingest_inline(
    data: Bytes,
    index: Target<'_>,
    cfg: &IngestConfig<'_>,
    sink: &mut PackSink,
) -> Result<Ingested> {
    if let Some(p) = cfg.progress {
        p.fetch_add(data.len() as u64, Ordering::Relaxed);
    }
    let mut out = Ingested {
        checksum: Sha256(Digest(sha2::Sha256::digest(&data).into())),
        size: data.len() as u64,
        chunks: Vec::new(),
        new_bytes: 0,
    };
    let cutter = choose_cutter(&data, cfg);
    let (_, batch) = cut_window(&cutter, &data, 0, true, cfg, &mut Cuts::default());
    let mut synced = Vec::new();
    let mut full = |mut w: PackWriter, locs: Vec<(ChunkId, ChunkLoc)>| {
        sync_and_record(index.record, &mut w, locs, &mut synced)
    };
    let tries = Tries::default();
    let stored = store_batch(batch, index, cfg, &tries, sink, &mut out, &mut full);
    sink.deferred.append(&mut synced);
    stored?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::chunker::ChunkerConfig;
    use crate::store::fault::Faults;
    use crate::store::read::PackFiles;
    use crate::test_support::random_bytes;
    use std::os::unix::fs::FileExt;

    /// Chunk locations in memory, as a snapshot holds them.
    struct Locs(HashMap<ChunkId, ChunkLoc>);

    impl ChunkLookup for Locs {
        fn chunk_loc(&self, id: &ChunkId) -> Result<Option<ChunkLoc>> {
            Ok(self.0.get(id).copied())
        }
    }

    /// One pack holding `chunks` (coded as a store codes them), and their locations.
    fn stored(dir: &Path, chunks: &[&[u8]]) -> Locs {
        let mut w = PackWriter::create(dir, &Faults::none()).unwrap();
        let mut locs = HashMap::new();
        for c in chunks {
            let (codec, bytes) =
                codec::encode(c, Compression::default()).unwrap_or((Codec::Raw, c.to_vec()));
            let id = ChunkId::of(c);
            let loc = w.append(id, len_field(c).unwrap(), codec, &bytes).unwrap();
            locs.insert(id, loc);
        }
        w.sync().unwrap();
        Locs(locs)
    }

    /// Float32 weights: their records are coded byte planes, which a compare decodes.
    fn floats(seed: u64, n: usize) -> Vec<u8> {
        let mut r = crate::test_support::XorShift::new(seed);
        (0..n)
            .flat_map(|_| ((r.unit_f32() - 0.5) * 0.04).to_le_bytes())
            .collect()
    }

    fn run(dir: &Path, locs: &Locs, piece: Piece, tries: &Tries) -> Processed {
        let chunker = Chunker::new(ChunkerConfig::default()).unwrap();
        let previous = OnceLock::new();
        let pack_files = PackFiles::new(dir.to_path_buf());
        let faults = Faults::none();
        let cfg = IngestConfig {
            packs_dir: dir,
            chunker: &chunker,
            compression: Compression::default(),
            pack_target: 1 << 30,
            size_hint: None,
            progress: None,
            faults: &faults,
            previous: &previous,
            find_previous: &|| None,
            delta_depth: 0,
            layout: None,
            pack_files: &pack_files,
        };
        process(piece, locs, &HashMap::new(), &cfg, tries).unwrap()
    }

    fn piece(bytes: &[u8], same: (ChunkId, ChunkLoc)) -> Piece {
        Piece {
            bytes: Bytes::copy_from_slice(bytes),
            hint: None,
            same: Some(same),
        }
    }

    /// A chunk the previous version had at the same place is proven by comparing it with the
    /// record, and only those exact bytes are: one byte off, and the chunk is hashed and
    /// stored as new; a record that rotted is never referenced, and the new copy takes over.
    #[test]
    fn a_chunk_is_the_previous_versions_only_if_its_record_holds_exactly_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let raw = random_bytes(7, 100_000);
        let coded = floats(8, 50_000);
        let locs = stored(dir.path(), &[&raw, &coded]);
        for (name, c) in [("raw", &raw), ("coded", &coded)] {
            let id = ChunkId::of(c);
            let loc = locs.0[&id];
            assert_eq!(
                loc.codec == Codec::Raw,
                name == "raw",
                "the test wants one record of each kind"
            );
            let tries = Tries::default();
            match run(dir.path(), &locs, piece(c, (id, loc)), &tries) {
                Processed::Known(got, len) => assert_eq!((got, len as usize), (id, c.len())),
                Processed::New { .. } => panic!("{name}: an unchanged chunk was stored again"),
            }
            assert_eq!(tries.misses_in_row.load(Ordering::Relaxed), 0);

            for at in [0, c.len() / 2, c.len() - 1] {
                let mut edited = c.clone();
                edited[at] ^= 0x40;
                match run(dir.path(), &locs, piece(&edited, (id, loc)), &tries) {
                    Processed::New {
                        id: got, takeover, ..
                    } => {
                        assert_eq!(got, ChunkId::of(&edited), "{name}, byte {at}");
                        assert!(!takeover);
                    }
                    Processed::Known(..) => panic!("{name}: byte {at} changed, yet known"),
                }
            }
            assert_eq!(tries.misses_in_row.load(Ordering::Relaxed), 3);
        }

        // Rot in each record: the same bytes are now stored again, taking over the id.
        let pack = dir.path().join(crate::format::pack::pack_file_name(
            locs.0[&ChunkId::of(&raw)].pack,
        ));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&pack)
            .unwrap();
        for c in [&raw, &coded] {
            let loc = locs.0[&ChunkId::of(c)];
            let at = loc.offset + RECORD_HEADER_LEN as u64 + u64::from(loc.stored_len) / 2;
            let mut b = [0u8];
            f.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] ^ 1], at).unwrap();
        }
        for c in [&raw, &coded] {
            let id = ChunkId::of(c);
            let loc = locs.0[&id];
            match run(dir.path(), &locs, piece(c, (id, loc)), &Tries::default()) {
                Processed::New {
                    id: got, takeover, ..
                } => assert!(got == id && takeover),
                Processed::Known(..) => panic!("a rotten record was referenced"),
            }
        }
    }

    /// After a run of chunks that all differ from the previous version's, only one in
    /// `SAMPLE_EVERY` is compared, until one is the same again.
    #[test]
    fn comparing_backs_off_after_misses_and_resumes_on_a_hit() {
        let t = Tries::default();
        for _ in 0..Tries::MISSES_BEFORE_SAMPLING {
            assert!(t.worth_it());
            t.record(false);
        }
        let compared = (0..Tries::SAMPLE_EVERY * 4)
            .filter(|_| t.worth_it())
            .count();
        assert_eq!(compared, 4);
        t.record(true);
        assert!((0..8).all(|_| t.worth_it()));
    }
}
