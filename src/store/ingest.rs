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
//! Windows come from a fixed pool of buffers (`POOL` × `WINDOW`), so memory is bounded whatever
//! the file size and a slow stage applies back-pressure to the reader. Chunks are `Bytes` slices
//! of those buffers (no copy); a buffer returns to the pool when its last chunk is dropped.
//! Nothing here touches manifests or the index beyond lookups: `write.rs` commits the result.

use std::collections::HashSet;
use std::io::{ErrorKind, Read};
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

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
use crate::store::index::{Index, IndexBatch};
use crate::store::packs::PackWriter;
use crate::store::read::Located;

const WINDOW: usize = 8 << 20;

const POOL: usize = 6;

/// What an ingest produced. Nothing is visible until the caller commits it.
pub struct Ingested {
    pub checksum: Sha256,
    pub size: u64,
    pub chunks: Vec<(ChunkId, u32)>,
    /// Packs written to and their final lengths. All are fsynced, and the index already holds
    /// their lengths and the locations of the chunks in them (applied, not yet flushed).
    pub packs: Vec<(Id, u64)>,
    /// Stored bytes added (record headers included).
    pub new_bytes: u64,
}

/// Where appends go and how.
pub struct IngestConfig<'a> {
    pub packs_dir: &'a Path,
    pub chunker: &'a Chunker,
    pub compression: Compression,
    pub pack_target: u64,
    /// The pack to continue, if the index has one open.
    pub active: Option<(Id, u64)>,
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

/// An earlier version an upload may store deltas against: its tensor layout and where each of
/// its chunks starts, with their locations resolved (under the session's lock).
pub struct Previous {
    pub(crate) layout: Layout,
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

type Batch = Vec<(Bytes, Option<Hint>)>;

enum Processed {
    Known(ChunkId, u32),
    New {
        id: ChunkId,
        raw: Bytes,
        packed: Option<(Codec, Vec<u8>)>,
    },
}

/// Read `src` to the end, chunk, dedup against `index`, and append new chunks to packs.
pub fn ingest<R: Read + Send>(
    mut src: R,
    index: &Index,
    cfg: &IngestConfig<'_>,
) -> Result<Ingested> {
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(POOL);
    for _ in 0..POOL {
        pool_tx.send(Vec::new()).expect("pool has room");
    }
    let (sha_tx, sha_rx) = bounded::<Bytes>(POOL);
    let (batch_tx, batch_rx) = bounded::<Batch>(2);

    std::thread::scope(|s| {
        let sha = s.spawn(move || {
            let mut h = sha2::Sha256::new();
            let mut n = 0u64;
            for b in sha_rx {
                h.update(&b);
                n += b.len() as u64;
            }
            (Sha256(Digest(h.finalize().into())), n)
        });
        let worker = s.spawn(move || write_chunks(batch_rx, index, cfg));
        let read = read_windows(&mut src, cfg, pool_tx, pool_rx, sha_tx, batch_tx);
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
    })
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

fn read_windows(
    src: &mut impl Read,
    cfg: &IngestConfig<'_>,
    pool_tx: Sender<Vec<u8>>,
    pool_rx: Receiver<Vec<u8>>,
    sha_tx: Sender<Bytes>,
    batch_tx: Sender<Batch>,
) -> Result<()> {
    let mut carry: Option<Bytes> = None;
    let mut cuts = Vec::new();
    let mut grid_cuts = Vec::new();
    let mut cutter: Option<Cutter<'_>> = None;
    // Absolute offset of the current window's first byte.
    let mut at = 0u64;
    // The carried tail is shorter than one max-size chunk; keep windows well above that.
    let window_len = WINDOW.max(4 * cfg.chunker.config().max);
    loop {
        let Ok(mut buf) = pool_rx.recv() else {
            return Ok(());
        };
        buf.resize(window_len, 0);
        let carried = carry.as_ref().map_or(0, |c| c.len());
        if let Some(c) = carry.take() {
            buf[..carried].copy_from_slice(&c);
        }
        let fresh = read_full(src, &mut buf[carried..]).map_err(Error::Source)?;
        let eof = carried + fresh < window_len;
        let len = carried + fresh;
        let window = Bytes::from_owner(PoolBuf {
            buf,
            len,
            home: pool_tx.clone(),
        });
        if fresh > 0 {
            if let Some(p) = cfg.progress {
                p.fetch_add(fresh as u64, Ordering::Relaxed);
            }
            if sha_tx.send(window.slice(carried..)).is_err() {
                return Ok(());
            }
        }
        let cutter = cutter.get_or_insert_with(|| choose_cutter(&window, cfg));
        let mut pos = 0;
        let (used, batch): (usize, Batch) = match cutter {
            Cutter::Cdc(chunker) => {
                cuts.clear();
                let used = chunker.cuts(&window, eof, &mut cuts);
                let batch = cuts
                    .iter()
                    .map(|&l| {
                        pos += l;
                        (window.slice(pos - l..pos), None)
                    })
                    .collect();
                (used, batch)
            }
            Cutter::Grid { grid, matches } => {
                grid_cuts.clear();
                let used = grid.cuts(at, &window, eof, &mut grid_cuts);
                let batch = grid_cuts
                    .iter()
                    .map(|&(l, place)| {
                        pos += l;
                        let hint = place.and_then(|p| hint(cfg, grid, matches, p, l));
                        (window.slice(pos - l..pos), hint)
                    })
                    .collect();
                (used, batch)
            }
        };
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
    let matches = match previous {
        Some(prev) if cfg.delta_depth > 0 => {
            let by_name = prev.layout.by_name();
            layout
                .tensors
                .iter()
                .map(|t| {
                    let &i = by_name.get(t.name.as_str())?;
                    let p = &prev.layout.tensors[i];
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
    let p = &prev.layout.tensors[matches[tensor]?];
    let &(base, base_len, loc) = prev.chunk_at.get(&(p.start + offset))?;
    (base_len as usize == len).then_some(Hint {
        base,
        loc,
        width: grid.layout().tensors[tensor].width(),
    })
}

/// Store `chunk` as a delta against the hinted base, if the chain allows and it pays.
fn encode_delta(chunk: &[u8], h: &Hint, cfg: &IngestConfig<'_>) -> Option<(Codec, Vec<u8>)> {
    let prev = cfg.previous.get()?.as_ref()?;
    let depth = prev.located.depth(&h.loc)? + 1;
    if depth > cfg.delta_depth {
        return None;
    }
    // A base that cannot be read back (damage) is simply not used.
    let base = prev.located.read(&h.loc, &h.base, &String::new).ok()?;
    let t = match h.width {
        Some(w) => crate::format::delta::Transform::for_width(w),
        None => crate::format::delta::Transform::guess(chunk, &base),
    };
    let stored = crate::format::delta::encode(
        chunk,
        &base,
        &h.base,
        depth,
        t,
        cfg.compression,
        DELTA_MIN_GAIN,
    )?;
    Some((Codec::Delta, stored))
}

fn process(
    chunk: Bytes,
    hint: Option<Hint>,
    index: &Index,
    cfg: &IngestConfig<'_>,
) -> Result<Processed> {
    let id = ChunkId::of(&chunk);
    // A known chunk is referenced only if its record really holds these bytes: damage (bit
    // rot, a chain whose base is gone) must not turn a new upload into an unreadable one.
    // Otherwise the chunk is written again and its new location takes over the id.
    if let Some(loc) = index.chunk(&id)?
        && cfg.pack_files.holds(index, &loc, &id, &chunk)
    {
        return Ok(Processed::Known(id, len_field(&chunk)?));
    }
    let packed = hint
        .and_then(|h| encode_delta(&chunk, &h, cfg))
        .or_else(|| codec::encode(&chunk, cfg.compression));
    Ok(Processed::New {
        id,
        raw: chunk,
        packed,
    })
}

fn write_chunks(
    batches: Receiver<Batch>,
    index: &Index,
    cfg: &IngestConfig<'_>,
) -> Result<Ingested> {
    let mut out = Ingested {
        checksum: Sha256::default(),
        size: 0,
        chunks: Vec::new(),
        packs: Vec::new(),
        new_bytes: 0,
    };
    let mut seen: HashSet<ChunkId> = HashSet::new();
    let mut writer: Option<PackWriter> = None;
    // Locations of the chunks appended to `writer`, recorded once that pack is fsynced.
    let mut locs: Vec<(ChunkId, ChunkLoc)> = Vec::new();
    let (sync_tx, sync_rx) = bounded::<(PackWriter, Vec<(ChunkId, ChunkLoc)>)>(4);
    std::thread::scope(|s| {
        // fsync full packs while the next one fills, then record their chunks in the index
        // (in small batches: one sled batch per 50k entries costs ~200 MB).
        let syncer = s.spawn(move || -> Result<Vec<(Id, u64)>> {
            let mut done = Vec::new();
            for (mut w, locs) in sync_rx {
                w.sync()?;
                for part in locs.chunks(256) {
                    let mut b = IndexBatch::default();
                    for (id, loc) in part {
                        b.put_chunk(id, loc);
                    }
                    index.apply_unflushed(b)?;
                }
                let mut b = IndexBatch::default();
                b.put_pack(w.id, w.len());
                index.apply_unflushed(b)?;
                done.push((w.id, w.len()));
            }
            Ok(done)
        });
        let res = (|| -> Result<()> {
            for batch in batches {
                let processed: Vec<Result<Processed>> = batch
                    .into_par_iter()
                    .map(|(c, h)| process(c, h, index, cfg))
                    .collect();
                for p in processed {
                    match p? {
                        Processed::Known(id, len) => out.chunks.push((id, len)),
                        Processed::New { id, raw, packed } => {
                            out.chunks.push((id, len_field(&raw)?));
                            if !seen.insert(id) {
                                continue;
                            }
                            let (codec, stored): (Codec, &[u8]) = match &packed {
                                Some((codec, c)) => (*codec, c),
                                None => (Codec::Raw, &raw),
                            };
                            let need = (RECORD_HEADER_LEN + stored.len()) as u64;
                            let w = match writer.take() {
                                Some(w) if w.is_empty() || w.len() + need <= cfg.pack_target => w,
                                Some(full) => {
                                    sync_tx.send((full, std::mem::take(&mut locs))).map_err(
                                        |_| Error::Internal("pack sync thread stopped".into()),
                                    )?;
                                    PackWriter::create(cfg.packs_dir, cfg.faults)?
                                }
                                None => match cfg.active {
                                    Some((id, len)) if len + need <= cfg.pack_target => {
                                        match PackWriter::reopen(
                                            cfg.packs_dir,
                                            id,
                                            len,
                                            cfg.faults,
                                        )? {
                                            Some(w) => w,
                                            None => PackWriter::create(cfg.packs_dir, cfg.faults)?,
                                        }
                                    }
                                    _ => PackWriter::create(cfg.packs_dir, cfg.faults)?,
                                },
                            };
                            let w = writer.insert(w);
                            let loc = w.append(id, len_field(&raw)?, codec, stored)?;
                            out.new_bytes += loc.record_len();
                            locs.push((id, loc));
                        }
                    }
                }
            }
            Ok(())
        })();
        if let Some(w) = writer.take() {
            let _ = sync_tx.send((w, locs));
        }
        drop(sync_tx);
        let synced = syncer
            .join()
            .map_err(|_| Error::Internal("pack sync thread panicked".into()))?;
        // A failed fsync is the root cause when both failed (the worker then only saw the
        // sync thread stop): report it first.
        out.packs = synced?;
        res?;
        Ok(out)
    })
}
