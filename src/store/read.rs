//! Reading versions back: a `Read + Seek` handle and a parallel, verified download.
//!
//! Chunk locations are resolved and the packs opened while the store lock is held; then the lock
//! is released and bytes are read through the open file handles. `gc` may delete a pack in the
//! meantime: on Unix an open handle keeps the unlinked file readable, so a reader never sees a
//! half-rewritten store. Every chunk is decoded and checked against its BLAKE3 id before a
//! single byte of it is returned.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::digest::ChunkId;
use crate::format::id::Id;
use crate::format::manifest::Manifest;
use crate::format::names::FileKey;
use crate::format::pack::{self, ChunkLoc};
use crate::format::record::FileRecord;
use crate::store::durable::AtomicFile;
use crate::store::index::Index;
use crate::store::packs;
use crate::store::{Session, Store};

/// Decoded bytes all downloads of this process hold at once (batches being decoded, queued
/// or written), whatever the chunk sizes and however many files are copied in parallel.
const BYTES_IN_FLIGHT: u64 = 256 << 20;

/// A counting semaphore over bytes: `BYTES_IN_FLIGHT` shared by every `copy_to`.
struct Budget {
    free: std::sync::Mutex<u64>,
    cv: std::sync::Condvar,
}

static BUDGET: Budget = Budget {
    free: std::sync::Mutex::new(BYTES_IN_FLIGHT),
    cv: std::sync::Condvar::new(),
};

/// Bytes taken from `BUDGET`, given back on drop.
struct Held(u64);

impl Budget {
    fn take(&'static self, n: u64) -> Held {
        let n = n.min(BYTES_IN_FLIGHT);
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free < n {
            free = self.cv.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= n;
        Held(n)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut free = BUDGET.free.lock().unwrap_or_else(|p| p.into_inner());
        *free += self.0;
        BUDGET.cv.notify_all();
    }
}

/// The SHA-256 of a version's bytes as they are read in order, checked at the end against
/// the record: a manifest whose chunks do not make the file its record describes is damage.
struct WholeFile {
    hasher: sha2::Sha256,
    /// Bytes hashed so far (the next read must start here to keep hashing).
    upto: u64,
}

impl WholeFile {
    fn new() -> WholeFile {
        WholeFile {
            hasher: <sha2::Sha256 as sha2::Digest>::new(),
            upto: 0,
        }
    }

    fn update(&mut self, b: &[u8]) {
        sha2::Digest::update(&mut self.hasher, b);
        self.upto += b.len() as u64;
    }

    /// Compare with the record once every byte passed through.
    fn check(self, rec: &FileRecord) -> Result<()> {
        let got = crate::format::digest::Sha256(crate::format::digest::Digest(
            sha2::Digest::finalize(self.hasher).into(),
        ));
        if self.upto != rec.size_bytes || got != rec.checksum {
            return Err(Error::corrupt(
                format!("{} v{}", rec.key().display(), rec.version),
                format!(
                    "its chunks make {} bytes with SHA-256 {got}, the record says {} bytes with {}",
                    self.upto, rec.size_bytes, rec.checksum
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Clone)]
struct ChunkRef {
    id: ChunkId,
    loc: ChunkLoc,
    start: u64,
}

/// A version's bytes, readable and seekable. Holds no lock.
///
/// Streaming reads (`STREAM_BYTES` read in order since the last jump) are served from batches
/// of chunks decoded in parallel, and the batch after the one being read is decoded in the
/// background while the caller works (read-ahead). A read that starts at a chunk and wants at
/// least that whole chunk, which no decoded batch holds, gets its whole chunks decoded
/// straight into the caller's buffer. Random reads decode only the chunks they touch.
pub struct FileReader {
    /// The version's chunks, shared with a read-ahead in flight.
    shared: Arc<Chunks>,
    pos: u64,
    /// Chunks decoded for reads (the batch being read).
    cache: Option<Decoded>,
    /// The next batch, being decoded in the background.
    ahead: Option<Ahead>,
    /// A batch buffer no longer read, for the next batch (decoded bytes need no zeroing).
    spare: Vec<u8>,
    /// The last chunk a read took bytes from, and where that read ended. A read from there
    /// on (small skips forward allowed) in that chunk or the next goes on in order; anything
    /// else is a jump (a header sniffed, a seek).
    last: Option<(usize, u64)>,
    /// Bytes read in order since the last jump: from `STREAM_BYTES` on, reads are a stream
    /// (`torch.load`, a copy) and the chunks after them are decoded ahead.
    run: u64,
    /// Whether streaming reads may decode ahead (not for readers the store uses internally
    /// while it holds its lock).
    may_read_ahead: bool,
    /// Batches decoded ahead so far (for tests).
    ahead_started: u64,
    /// Hashing of the bytes read so far in order from the start (`None` once a read jumps).
    whole: Option<WholeFile>,
    /// Set when a read to the end found the bytes do not match the record: every later read
    /// fails with it.
    failed: Option<String>,
    /// The manifest is the one an upload in this store wrote after hashing these chunks to the
    /// record's SHA-256, or one a `verify` read whole (`Index::proof`): reads rely on the chunk
    /// ids and skip the SHA-256.
    proven: bool,
    /// BLAKE3 of the manifest file the chunk list was read from (what a proof records).
    manifest_hash: [u8; 32],
    /// The process that opened it: a process forked since has no rayon threads, so reads
    /// there decode on the caller's thread and nothing is read ahead.
    opened_by: u32,
}

/// A version's chunks, their offsets in the file and how to read them.
#[derive(Clone)]
struct Chunks {
    record: FileRecord,
    list: Vec<ChunkRef>,
    located: Located,
}

/// Chunks `first..end` decoded and verified: the file's bytes `start..stop`, in `buf`.
/// `failed` is the error of chunk `end` when it is where a batch stopped: bytes before a
/// damaged chunk still read, and a read of that chunk gets its error.
struct Decoded {
    first: usize,
    end: usize,
    start: u64,
    stop: u64,
    buf: Vec<u8>,
    failed: Option<Error>,
}

impl Decoded {
    /// Does it answer a read in chunk `i` (with bytes, or with the chunk's error)?
    fn answers(&self, i: usize) -> bool {
        (self.first..self.end).contains(&i) || (i == self.end && self.failed.is_some())
    }
}

/// Bytes read in order after which reads are taken for a stream and decoded ahead: more than
/// the few small reads of a header or a record read in place.
const STREAM_BYTES: u64 = 256 << 10;

/// A batch of chunks (`first..end`) being decoded in the background. Dropped unread (the
/// reader jumped elsewhere, or is gone), it stops the decoding at the next chunk.
struct Ahead {
    first: usize,
    end: usize,
    done: crossbeam_channel::Receiver<Decoded>,
    cancel: Arc<AtomicBool>,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Open packs and the locations of delta bases, resolved under the lock so chunks (and the
/// bases they are stored against) can be read after it is released.
#[derive(Clone)]
pub(crate) struct Located {
    packs_dir: PathBuf,
    bases: HashMap<ChunkId, ChunkLoc>,
    packs: HashMap<Id, Arc<File>>,
}

impl Located {
    /// Nothing resolved yet; packs are opened from `packs_dir`.
    pub(crate) fn new(packs_dir: PathBuf) -> Located {
        Located {
            packs_dir,
            bases: HashMap::new(),
            packs: HashMap::new(),
        }
    }

    /// Open `loc`'s pack and resolve the chain of bases behind it through `index`.
    pub(crate) fn add(
        &mut self,
        index: &Index,
        loc: &ChunkLoc,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        self.open_pack(loc.pack, what)?;
        let mut next = loc.base;
        let mut steps = 0;
        while let Some(b) = next {
            if self.bases.contains_key(&b) {
                break; // resolved before, with its own chain
            }
            steps += 1;
            if steps > crate::format::delta::MAX_DEPTH {
                return Err(Error::corrupt(
                    what(),
                    "delta chain longer than any writer makes",
                ));
            }
            let bl = index.chunk(&b)?.ok_or_else(|| {
                Error::corrupt(what(), format!("delta base {b} is missing from the store"))
            })?;
            self.open_pack(bl.pack, what)?;
            self.bases.insert(b, bl);
            next = bl.base;
        }
        Ok(())
    }

    fn open_pack(&mut self, pack: Id, what: &dyn Fn() -> String) -> Result<()> {
        if let std::collections::hash_map::Entry::Vacant(e) = self.packs.entry(pack) {
            let p = self.packs_dir.join(pack::pack_file_name(pack));
            let f = File::open(&p).map_err(|err| {
                Error::corrupt(what(), format!("cannot open pack {}: {err}", p.display()))
            })?;
            e.insert(Arc::new(f));
        }
        Ok(())
    }

    /// How many delta steps lie under `loc` (0: not a delta), if its chain is resolved.
    /// Does the chain of bases behind `loc` (`base` first) name `id`? A chunk stored against
    /// such a base would need itself to be read.
    pub(crate) fn chain_holds(&self, base: &ChunkId, loc: &ChunkLoc, id: &ChunkId) -> bool {
        if base == id {
            return true;
        }
        let mut next = loc.base;
        let mut steps = 0;
        while let Some(b) = next {
            steps += 1;
            if b == *id || steps > crate::format::delta::MAX_DEPTH {
                return true;
            }
            next = self.bases.get(&b).and_then(|l| l.base);
        }
        false
    }

    pub(crate) fn depth(&self, loc: &ChunkLoc) -> Option<u8> {
        let mut d = 0u8;
        let mut next = loc.base;
        while let Some(b) = next {
            d += 1;
            if d > crate::format::delta::MAX_DEPTH {
                return None;
            }
            next = self.bases.get(&b)?.base;
        }
        Some(d)
    }

    /// Read, decode and verify chunk `id` at `loc` (added before).
    pub(crate) fn read(
        &self,
        loc: &ChunkLoc,
        id: &ChunkId,
        location: &dyn Fn() -> String,
    ) -> Result<Vec<u8>> {
        let mut out = vec![0u8; loc.raw_len as usize];
        self.read_into(loc, id, location, &mut out)?;
        Ok(out)
    }

    /// `read` into `out` (the chunk's raw length).
    pub(crate) fn read_into(
        &self,
        loc: &ChunkLoc,
        id: &ChunkId,
        location: &dyn Fn() -> String,
        out: &mut [u8],
    ) -> Result<()> {
        let pack_of = |l: &ChunkLoc| {
            self.packs.get(&l.pack).cloned().ok_or_else(|| {
                Error::corrupt(location(), format!("pack {} was not opened", l.pack))
            })
        };
        let lookup = |b: &ChunkId| -> Result<(Arc<File>, ChunkLoc)> {
            let l = self.bases.get(b).ok_or_else(|| {
                Error::corrupt(location(), format!("delta base {b} is not in the store"))
            })?;
            Ok((pack_of(l)?, *l))
        };
        packs::read_chunk_into(&*pack_of(loc)?, loc, id, &lookup, location, out)
    }
}

/// Pack files opened on demand and shared by threads (ingest's dedup checks).
pub(crate) struct PackFiles {
    dir: PathBuf,
    open: std::sync::Mutex<HashMap<Id, Arc<File>>>,
}

impl PackFiles {
    pub(crate) fn new(dir: PathBuf) -> PackFiles {
        PackFiles {
            dir,
            open: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, pack: Id) -> Result<Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = open.get(&pack) {
            return Ok(f.clone());
        }
        let p = self.dir.join(pack::pack_file_name(pack));
        let f = Arc::new(File::open(&p).map_err(|e| Error::io(&p, e))?);
        open.insert(pack, f.clone());
        Ok(f)
    }

    /// Does the indexed record of chunk `id` at `loc` hold exactly `expect` (`packs::holds`,
    /// delta bases found through `index`)? Anything unreadable is a no.
    pub(crate) fn holds(
        &self,
        index: &dyn crate::store::index::ChunkLookup,
        loc: &ChunkLoc,
        id: &ChunkId,
        expect: &[u8],
    ) -> bool {
        matches!(self.compare(index, loc, id, expect), packs::Compared::Same)
    }

    /// `packs::compare` of the record of chunk `id` at `loc` with `expect`, delta bases found
    /// through `index`.
    pub(crate) fn compare(
        &self,
        index: &dyn crate::store::index::ChunkLookup,
        loc: &ChunkLoc,
        id: &ChunkId,
        expect: &[u8],
    ) -> packs::Compared {
        let Ok(file) = self.get(loc.pack) else {
            return packs::Compared::Differs(None);
        };
        let lookup = |b: &ChunkId| -> Result<(Arc<File>, ChunkLoc)> {
            let l = index
                .chunk_loc(b)?
                .ok_or_else(|| Error::corrupt(b.to_string(), "delta base is not in the store"))?;
            Ok((self.get(l.pack)?, l))
        };
        packs::compare(&file, loc, id, expect, &lookup)
    }

    /// Does the record at `loc` decode (delta bases found through `index`) to chunk `id`?
    #[cfg(feature = "remote")]
    pub(crate) fn proves(&self, index: &Index, loc: &ChunkLoc, id: &ChunkId) -> bool {
        let Ok(file) = self.get(loc.pack) else {
            return false;
        };
        let lookup = |b: &ChunkId| -> Result<(Arc<File>, ChunkLoc)> {
            let l = index
                .chunk(b)?
                .ok_or_else(|| Error::corrupt(b.to_string(), "delta base is not in the store"))?;
            Ok((self.get(l.pack)?, l))
        };
        let mut raw = vec![0u8; loc.raw_len as usize];
        packs::read_chunk_into(&file, loc, id, &lookup, &String::new, &mut raw).is_ok()
    }
}

pub(crate) fn load_manifest(s: &Session<'_>, rec: &FileRecord) -> Result<Manifest> {
    load_manifest_hashed(s, rec).map(|(m, _)| m)
}

/// `load_manifest`, and the BLAKE3 of the manifest file.
pub(crate) fn load_manifest_hashed(
    s: &Session<'_>,
    rec: &FileRecord,
) -> Result<(Manifest, [u8; 32])> {
    let path = s.store.manifest_path(rec.id);
    let what = format!("manifest of {} v{}", rec.key().display(), rec.version);
    let bytes = std::fs::read(&path).map_err(|e| {
        Error::corrupt(what.clone(), format!("cannot read {}: {e}", path.display()))
    })?;
    let m = Manifest::decode(&bytes, &what)?;
    if m.record.id != rec.id
        || m.record.checksum != rec.checksum
        || m.record.size_bytes != rec.size_bytes
    {
        return Err(Error::corrupt(what, "manifest does not match the index"));
    }
    Ok((m, *blake3::hash(&bytes).as_bytes()))
}

pub(crate) fn open_reader(s: &Session<'_>, rec: FileRecord) -> Result<FileReader> {
    let (m, hash) = load_manifest_hashed(s, &rec)?;
    let proven = s.index.proof(rec.id)? == Some(hash);
    let mut located = Located::new(s.store.dir("packs"));
    let mut chunks = Vec::with_capacity(m.chunks.len());
    let mut start = 0u64;
    for (id, len) in m.chunks {
        let loc = s.index.chunk(&id)?.ok_or_else(|| {
            Error::corrupt(
                format!("{} v{}", rec.key().display(), rec.version),
                format!("chunk {id} is missing from the store"),
            )
        })?;
        if loc.raw_len != len {
            return Err(Error::corrupt(
                rec.key().display(),
                format!("chunk {id} length differs from the manifest"),
            ));
        }
        located.add(&s.index, &loc, &|| rec.key().display())?;
        chunks.push(ChunkRef { id, loc, start });
        start += u64::from(len);
    }
    Ok(FileReader {
        shared: Arc::new(Chunks {
            record: rec,
            list: chunks,
            located,
        }),
        pos: 0,
        cache: None,
        ahead: None,
        spare: Vec::new(),
        last: None,
        run: 0,
        may_read_ahead: true,
        ahead_started: 0,
        whole: (!proven).then(WholeFile::new),
        failed: None,
        manifest_hash: hash,
        proven,
        opened_by: std::process::id(),
    })
}

impl FileReader {
    /// Pack files this reader holds open.
    pub(crate) fn packs_open(&self) -> usize {
        self.shared.located.packs.len()
    }

    /// How many batches this reader started decoding ahead of its reads.
    #[cfg(feature = "testing")]
    pub(crate) fn batches_read_ahead(&self) -> u64 {
        self.ahead_started
    }

    /// This reader, never decoding ahead of its reads (for the few bytes the store reads of a
    /// version while it holds its lock).
    pub(crate) fn without_read_ahead(mut self) -> FileReader {
        self.may_read_ahead = false;
        self.ahead = None;
        self
    }

    /// Each chunk's `(offset in the file, id, location)`, and the open packs and delta chains.
    pub(crate) fn into_parts(mut self) -> (Vec<(u64, ChunkId, ChunkLoc)>, Located) {
        self.ahead = None;
        let chunks = Arc::unwrap_or_clone(self.shared);
        let list = chunks.list.iter().map(|c| (c.start, c.id, c.loc)).collect();
        (list, chunks.located)
    }

    /// The whole version in memory, verified (for small files; `copy_to` streams any size).
    pub fn read_all(&self) -> Result<Vec<u8>> {
        read_all(self)
    }

    /// The version being read.
    pub fn record(&self) -> &FileRecord {
        &self.shared.record
    }

    /// Its size (bytes).
    pub fn len(&self) -> u64 {
        self.shared.record.size_bytes
    }

    /// Is it empty?
    pub fn is_empty(&self) -> bool {
        self.shared.record.size_bytes == 0
    }
}

impl Chunks {
    /// The chunks decoded together from `start`: up to `budget` raw bytes, at least one.
    /// Returns the end index and their raw bytes.
    fn batch_from(&self, start: usize, budget: u64) -> (usize, u64) {
        let mut end = start + 1;
        let mut bytes = u64::from(self.list[start].loc.raw_len);
        while end < self.list.len() && bytes + u64::from(self.list[end].loc.raw_len) <= budget {
            bytes += u64::from(self.list[end].loc.raw_len);
            end += 1;
        }
        (end, bytes)
    }

    /// Chunk `i` into `out` (its raw length).
    fn read_chunk_into(&self, i: usize, out: &mut [u8]) -> Result<()> {
        let c = &self.list[i];
        let location = || {
            format!(
                "{} v{} (chunk {} at pack {} offset {})",
                self.record.key().display(),
                self.record.version,
                c.id,
                c.loc.pack,
                c.loc.offset
            )
        };
        self.located.read_into(&c.loc, &c.id, &location, out)
    }

    /// Chunks `start..end` decoded into `buf` (their raw bytes, in order), in parallel unless
    /// `on_this_thread`. Returns how many decoded before the first that failed, and its error.
    /// Once `cancel` is set, chunks not started fail.
    fn decode_some(
        &self,
        start: usize,
        end: usize,
        buf: &mut [u8],
        on_this_thread: bool,
        cancel: Option<&AtomicBool>,
    ) -> (usize, Option<Error>) {
        let read = |k: usize, part: &mut [u8]| {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(Error::Internal("read-ahead cancelled".into()));
            }
            self.read_chunk_into(start + k, part)
        };
        let mut parts = Vec::with_capacity(end - start);
        let mut rest = buf;
        for c in &self.list[start..end] {
            let (part, after) = rest.split_at_mut(c.loc.raw_len as usize);
            parts.push(part);
            rest = after;
        }
        let results: Vec<Result<()>> = if on_this_thread || parts.len() == 1 {
            let mut out = Vec::with_capacity(parts.len());
            for (k, part) in parts.into_iter().enumerate() {
                let r = read(k, part);
                let bad = r.is_err();
                out.push(r);
                if bad {
                    break;
                }
            }
            out
        } else {
            parts
                .into_par_iter()
                .enumerate()
                .map(|(k, part)| read(k, part))
                .collect()
        };
        let mut ok = 0;
        for r in results {
            match r {
                Ok(()) => ok += 1,
                Err(e) => return (ok, Some(e)),
            }
        }
        (ok, None)
    }

    /// Chunks `start..end` decoded in parallel into `buf`: all of them, or the first error.
    fn decode_batch(&self, start: usize, end: usize, buf: &mut [u8]) -> Result<()> {
        match self.decode_some(start, end, buf, false, None) {
            (_, Some(e)) => Err(e),
            (_, None) => Ok(()),
        }
    }

    /// Chunks `first..end` decoded into `buf` (grown as needed, never zeroed again).
    fn decode(
        &self,
        first: usize,
        end: usize,
        mut buf: Vec<u8>,
        on_this_thread: bool,
        cancel: Option<&AtomicBool>,
    ) -> Decoded {
        let len: u64 = self.list[first..end]
            .iter()
            .map(|c| u64::from(c.loc.raw_len))
            .sum();
        let len = crate::format::usize_from(len);
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let (ok, failed) = self.decode_some(first, end, &mut buf[..len], on_this_thread, cancel);
        let start = self.list[first].start;
        let stop = self.list[first..first + ok]
            .iter()
            .fold(start, |at, c| at + u64::from(c.loc.raw_len));
        Decoded {
            first,
            end: first + ok,
            start,
            stop,
            buf,
            failed,
        }
    }
}

impl FileReader {
    /// Stream the whole file into `out`, decoding chunks in parallel; every chunk is verified
    /// against its BLAKE3 id. The whole file is also checked against the record's SHA-256
    /// unless an upload to this store or a `verify` proved the chunk list (see
    /// [`is_proven`](Self::is_proven)): then the chunk ids, listed by a manifest that still
    /// hashes as written, already fix every byte. A mismatch is an error after the last byte:
    /// a caller that must not keep wrong bytes writes to a temporary file, as `download` does.
    /// Errors writing to `out` are `Error::Output`.
    pub fn copy_to(&self, out: &mut (dyn Write + Send)) -> Result<u64> {
        self.copy_impl(out, !self.proven)
    }

    /// Like [`copy_to`](Self::copy_to), always hashing the whole file with SHA-256 and
    /// comparing it with the record (what `verify` does).
    pub fn copy_to_checking_sha256(&self, out: &mut (dyn Write + Send)) -> Result<u64> {
        self.copy_impl(out, true)
    }

    /// Did an upload to this store write this version's manifest, exactly as it is now, after
    /// hashing its chunks to the record's SHA-256 (or did a `verify` hash them so)? Versions
    /// that came by pull, whose commit crash recovery finished, or that an index rebuild
    /// re-indexed are not proven until a `verify`: their reads hash the whole file.
    pub fn is_proven(&self) -> bool {
        self.proven
    }

    /// BLAKE3 of the manifest file this reader's chunk list came from.
    pub(crate) fn manifest_hash(&self) -> [u8; 32] {
        self.manifest_hash
    }

    /// Like [`copy_to`](Self::copy_to), every chunk verified against its BLAKE3 id, but the
    /// whole file is not hashed again with SHA-256: for a caller whose reader checks the
    /// record's checksum itself (a server answering a client that compares the bytes it
    /// received with the `ETag`), so that the SHA-256 is computed once, where it ends up.
    pub fn copy_to_no_sha256(&self, out: &mut (dyn Write + Send)) -> Result<u64> {
        self.copy_impl(out, false)
    }

    /// After a copy: the bytes' count (and their SHA-256 when it was computed) against the
    /// record.
    fn finish_copy(&self, whole: WholeFile, sha256: bool) -> Result<u64> {
        let n = whole.upto;
        if sha256 {
            whole.check(&self.shared.record)?;
        } else if n != self.shared.record.size_bytes {
            return Err(Error::corrupt(
                format!(
                    "{} v{}",
                    self.shared.record.key().display(),
                    self.shared.record.version
                ),
                format!(
                    "its chunks make {n} bytes, the record says {}",
                    self.shared.record.size_bytes
                ),
            ));
        }
        Ok(n)
    }

    fn copy_impl(&self, out: &mut (dyn Write + Send), sha256: bool) -> Result<u64> {
        let total: u64 = self
            .shared
            .list
            .iter()
            .map(|c| u64::from(c.loc.raw_len))
            .sum();
        // Raw bytes decoded together (at least one chunk): hashed while still in the cache.
        let batch_bytes = crate::store::hot_bytes() as u64;
        if total <= batch_bytes {
            // One batch (a small file, e.g. one of the thousands an export copies): on this
            // thread, without the writer thread.
            let _held = BUDGET.take(total);
            let mut bytes = vec![0u8; crate::format::usize_from(total)];
            self.shared
                .decode_batch(0, self.shared.list.len(), &mut bytes)?;
            let mut whole = WholeFile::new();
            out.write_all(&bytes).map_err(Error::Output)?;
            if sha256 {
                whole.update(&bytes);
            } else {
                whole.upto += total;
            }
            out.flush().map_err(Error::Output)?;
            return self.finish_copy(whole, sha256);
        }
        // Decoded batches go to the writer and, shared, to a thread of their own that computes
        // the SHA-256, so hashing overlaps writing and decoding instead of following them. A
        // batch's share of the decode budget returns, and its buffer comes back for another
        // batch, when both are done with it.
        let (free_tx, free_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        let (tx, rx) = crossbeam_channel::bounded::<Arc<Batch>>(2);
        let (sha_tx, sha_rx) = crossbeam_channel::bounded::<Arc<Batch>>(2);
        std::thread::scope(|s| {
            let hasher = s.spawn(move || {
                let mut whole = WholeFile::new();
                for batch in sha_rx {
                    if sha256 {
                        whole.update(batch.bytes());
                    } else {
                        whole.upto += batch.len as u64;
                    }
                }
                whole
            });
            let writer = s.spawn(move || -> io::Result<()> {
                for batch in rx {
                    out.write_all(batch.bytes())?;
                }
                out.flush()
            });
            let produced = (|| -> Result<()> {
                let mut start = 0;
                while start < self.shared.list.len() {
                    let (end, bytes) = self.shared.batch_from(start, batch_bytes);
                    let held = BUDGET.take(bytes);
                    let len = crate::format::usize_from(bytes);
                    let mut buf = free_rx.try_recv().unwrap_or_default();
                    if buf.len() < len {
                        buf.resize(len, 0);
                    }
                    self.shared.decode_batch(start, end, &mut buf[..len])?;
                    let batch = Arc::new(Batch {
                        buf,
                        len,
                        _held: held,
                        free: free_tx.clone(),
                    });
                    if sha_tx.send(batch.clone()).is_err() || tx.send(batch).is_err() {
                        break; // the writer failed; its error is reported below
                    }
                    start = end;
                }
                Ok(())
            })();
            drop(tx);
            drop(sha_tx);
            let written = writer
                .join()
                .map_err(|_| Error::Internal("download writer panicked".into()))?;
            let whole = hasher
                .join()
                .map_err(|_| Error::Internal("download hasher panicked".into()))?;
            produced?;
            written.map_err(Error::Output)?;
            self.finish_copy(whole, sha256)
        })
    }
}

/// Decoded chunks on their way to the writer and the hasher of a copy: the first `len` bytes
/// of `buf`. Dropped by the last of them, it gives its share of the decode budget back and
/// its buffer to a later batch.
struct Batch {
    buf: Vec<u8>,
    len: usize,
    _held: Held,
    free: crossbeam_channel::Sender<Vec<u8>>,
}

impl Batch {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // At most two idle buffers wait for a batch (the budget counts only batches in use).
        if self.free.len() < 2 {
            let _ = self.free.send(std::mem::take(&mut self.buf));
        }
    }
}

impl FileReader {
    /// After the last byte was read in order from the start: compare with the record.
    fn check_whole(&mut self) -> io::Result<()> {
        let size = self.shared.record.size_bytes;
        if let Some(w) = self.whole.take_if(|w| w.upto == size)
            && let Err(e) = w.check(&self.shared.record)
        {
            self.failed = Some(e.to_string());
        }
        match &self.failed {
            Some(why) => Err(io::Error::new(io::ErrorKind::InvalidData, why.clone())),
            None => Ok(()),
        }
    }

    /// Can this reader decode on the rayon pool in the background? Not in a process forked
    /// since it was opened (no pool threads there), and not from a pool thread itself: one
    /// waiting there for its read-ahead could hold up the very thread that would run it.
    fn can_read_ahead(&self) -> bool {
        self.may_read_ahead
            && std::process::id() == self.opened_by
            && rayon::current_thread_index().is_none()
    }

    /// Start decoding chunks from `next` in the background, unless that is under way already.
    fn read_ahead(&mut self, next: usize) {
        if self.ahead.is_some() || next >= self.shared.list.len() || !self.can_read_ahead() {
            return;
        }
        let end = self
            .shared
            .batch_from(next, crate::store::hot_bytes() as u64)
            .0;
        let (tx, done) = crossbeam_channel::bounded(1);
        let shared = self.shared.clone();
        let buf = std::mem::take(&mut self.spare);
        let cancel = Arc::new(AtomicBool::new(false));
        let cancelled = cancel.clone();
        rayon::spawn(move || {
            // A panic here would abort the process (rayon's pool has no handler): it ends the
            // job instead, and the read that waits for it fails.
            let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                shared.decode(next, end, buf, false, Some(&cancelled))
            }));
            if let Ok(d) = decoded {
                // The reader may be gone (dropped, or it jumped elsewhere): then so is this.
                let _ = tx.send(d);
            }
        });
        self.ahead = Some(Ahead {
            first: next,
            end,
            done,
            cancel,
        });
        self.ahead_started += 1;
    }

    /// Put a batch no longer read aside for its buffer.
    fn retire(&mut self, old: Option<Decoded>) {
        if let Some(d) = old
            && d.buf.len() > self.spare.len()
        {
            self.spare = d.buf;
        }
    }

    /// Bytes from `self.pos` (in chunk `i`) into `buf`, at least one. `streaming`: the read
    /// goes on from the last, so the chunks after it are decoded with it.
    fn fill(&mut self, i: usize, streaming: bool, buf: &mut [u8]) -> io::Result<usize> {
        let on_this_thread = std::process::id() != self.opened_by;
        if on_this_thread || rayon::current_thread_index().is_some() {
            // Never wait for a batch decoded ahead: forked while it was decoded, no thread of
            // this process will finish it; on a pool thread, the batch (or a part of it) may
            // be queued behind this very thread, or under it on its stack. Dropped, it stops.
            self.ahead = None;
        }
        loop {
            if let Some(d) = &mut self.cache
                && d.answers(i)
            {
                if i == d.end {
                    let e = d.failed.take().expect("answers a failed chunk");
                    self.cache = None;
                    return Err(io::Error::other(e));
                }
                let off = crate::format::usize_from(self.pos - d.start);
                let n = buf.len().min(crate::format::usize_from(d.stop - self.pos));
                buf[..n].copy_from_slice(&d.buf[off..off + n]);
                return Ok(n);
            }
            // The batch decoded ahead, when it holds chunk `i`, becomes the one read; one that
            // does not is left to end on its own (the read jumped).
            if let Some(a) = self.ahead.take()
                && (a.first..a.end).contains(&i)
            {
                let d = a
                    .done
                    .recv()
                    .map_err(|_| io::Error::other("the read-ahead ended without a result"))?;
                let old = self.cache.replace(d);
                self.retire(old);
                continue;
            }
            let c = &self.shared.list[i];
            if self.pos == c.start && buf.len() as u64 >= u64::from(c.loc.raw_len) {
                // Whole chunks wanted: decoded straight into the caller's buffer.
                let (end, bytes) = self.shared.batch_from(i, buf.len() as u64);
                let dest = &mut buf[..crate::format::usize_from(bytes)];
                let (ok, failed) = self.shared.decode_some(i, end, dest, on_this_thread, None);
                let n: u64 = self.shared.list[i..i + ok]
                    .iter()
                    .map(|c| u64::from(c.loc.raw_len))
                    .sum();
                let n = crate::format::usize_from(n);
                if let Some(e) = failed {
                    // What the damaged chunk decoded to (and what came after it) is not data.
                    dest[n..].fill(0);
                    if ok == 0 {
                        return Err(io::Error::other(e));
                    }
                }
                return Ok(n);
            }
            let end = if streaming && !on_this_thread {
                self.shared
                    .batch_from(i, crate::store::hot_bytes() as u64)
                    .0
            } else {
                i + 1
            };
            let spare = std::mem::take(&mut self.spare);
            let d = self.shared.decode(i, end, spare, on_this_thread, None);
            let old = self.cache.replace(d);
            self.retire(old);
        }
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = &self.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
        }
        let size = self.shared.record.size_bytes;
        if self.pos >= size {
            self.check_whole()?;
            return Ok(0);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let chunk_of = |list: &[ChunkRef], pos: u64| list.partition_point(|c| c.start <= pos) - 1;
        let i = chunk_of(&self.shared.list, self.pos);
        let in_order = self
            .last
            .is_some_and(|(l, end)| (i == l || i == l + 1) && self.pos >= end);
        if !in_order {
            self.run = 0;
        }
        let streaming =
            in_order && self.run >= STREAM_BYTES && self.last.is_some_and(|(l, _)| i == l + 1);
        let n = self.fill(i, streaming, buf)?;
        self.run += n as u64;
        if self.whole.as_ref().is_some_and(|w| w.upto != self.pos) {
            self.whole = None; // not read in order: no whole-file check
        }
        if let Some(w) = &mut self.whole {
            w.update(&buf[..n]);
        }
        self.pos += n as u64;
        let last = chunk_of(&self.shared.list, self.pos - 1);
        // A stream: the chunks after what is decoded are decoded while the caller works on
        // these bytes. Not after a short read, which the caller is likely to follow at once
        // with the rest (whole chunks of it are decoded straight into its buffer then).
        if self.run >= STREAM_BYTES && self.last.is_some_and(|(l, _)| last > l) && n == buf.len() {
            let next = match &self.cache {
                Some(d) if (d.first..d.end).contains(&last) => d.end,
                _ => last + 1,
            };
            self.read_ahead(next);
        }
        self.last = Some((last, self.pos));
        if self.pos >= size {
            // Read to the end: keep no decoded chunks.
            self.cache = None;
            self.ahead = None;
            self.spare = Vec::new();
            self.check_whole()?;
        }
        Ok(n)
    }
}

impl Seek for FileReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.shared.record.size_bytes.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(n) => {
                self.pos = n;
                Ok(n)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )),
        }
    }
}

impl Store {
    /// Open a version (`None`: the latest live one) for reading.
    pub fn open_file(&self, key: &FileKey, version: Option<u32>) -> Result<FileReader> {
        let s = self.session()?;
        let rec = crate::store::resolve_in(&s, key, version)?;
        open_reader(&s, rec)
    }

    /// The record of a version, by its id (deleted versions too, with `deleted_at` set), without
    /// opening its packs.
    pub fn version_record(&self, id: Id) -> Result<FileRecord> {
        let s = self.session()?;
        s.index
            .version(id)?
            .ok_or_else(|| Error::NotFound(format!("version {id}")))
    }

    /// Open a version by its id.
    pub fn open_version(&self, id: Id) -> Result<FileReader> {
        let s = self.session()?;
        let rec = s
            .index
            .version(id)?
            .ok_or_else(|| Error::NotFound(format!("version {id}")))?;
        open_reader(&s, rec)
    }

    /// Open readers of `ids`, in order, under one hold of the lock, until they hold
    /// `max_packs` open pack files between them (at least one reader is opened).
    pub(crate) fn open_versions_within(
        &self,
        ids: &[Id],
        max_packs: usize,
    ) -> Result<Vec<Result<FileReader>>> {
        let s = self.session()?;
        let mut out = Vec::new();
        let mut packs = 0;
        for &id in ids {
            if !out.is_empty() && packs >= max_packs {
                break;
            }
            let r = s
                .index
                .version(id)
                .and_then(|v| v.ok_or_else(|| Error::NotFound(format!("version {id}"))))
                .and_then(|rec| open_reader(&s, rec));
            packs += r.as_ref().map_or(0, FileReader::packs_open);
            out.push(r);
        }
        Ok(out)
    }

    /// Open many versions by id under one hold of the store's lock (an export opens thousands):
    /// one result per id, in order. The readers hold open pack handles, not the lock.
    pub fn open_versions(&self, ids: &[Id]) -> Result<Vec<Result<FileReader>>> {
        let s = self.session()?;
        Ok(ids
            .iter()
            .map(|&id| {
                let rec = s
                    .index
                    .version(id)?
                    .ok_or_else(|| Error::NotFound(format!("version {id}")))?;
                open_reader(&s, rec)
            })
            .collect())
    }

    /// Download a version to `dest`. The bytes land under a temporary name and are renamed into
    /// place only when every chunk has been verified, so `dest` never holds wrong bytes. Like
    /// `cp`, the copy is not fsynced (the store can always make it again). A `dest` that is a
    /// device or a named pipe (`/dev/null`) is written in place: it cannot be renamed over.
    pub fn download(&self, key: &FileKey, version: Option<u32>, dest: &Path) -> Result<FileRecord> {
        let r = self.open_file(key, version)?;
        if dest.is_dir() {
            return Err(Error::invalid(
                "destination",
                dest.display().to_string(),
                "is a directory",
            ));
        }
        // A device or a pipe takes the bytes straight in, as they verify; anything else gets
        // them under a temporary name.
        let mut special = crate::store::durable::special_destination(dest)?;
        let mut atomic = None;
        let out: &mut (dyn Write + Send) = match &mut special {
            Some(f) => f,
            None => atomic.insert(AtomicFile::create(dest, &self.opts.faults)?),
        };
        let copied = match crate::interrupt::current() {
            Some(flag) => r.copy_to(&mut crate::interrupt::CheckedWrite { inner: out, flag }),
            None => r.copy_to(out),
        };
        // Interrupted: the temporary file goes with `atomic`; `dest` is untouched.
        crate::interrupt::check()?;
        copied.map_err(|e| match e {
            Error::Output(source) => Error::io(dest, source),
            other => other,
        })?;
        if let Some(out) = atomic {
            out.commit_no_sync()?;
        }
        Ok(r.record().clone())
    }

    /// Download a version into a writer (no atomicity: the writer sees bytes as they verify).
    pub fn download_to(
        &self,
        key: &FileKey,
        version: Option<u32>,
        out: &mut (dyn Write + Send),
    ) -> Result<FileRecord> {
        let r = self.open_file(key, version)?;
        r.copy_to(out)?;
        Ok(r.record().clone())
    }
}

/// Read a whole version into memory (for tests and small files).
pub fn read_all(r: &FileReader) -> Result<Vec<u8>> {
    let mut v = Vec::with_capacity(crate::format::usize_from(r.len()));
    r.copy_to(&mut v)?;
    Ok(v)
}
