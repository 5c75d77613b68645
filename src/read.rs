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
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use crate::digest::ChunkId;
use crate::durable::AtomicFile;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::manifest::Manifest;
use crate::pack::{self, ChunkLoc};
use crate::path::FileKey;
use crate::record::FileRecord;
use crate::store::{Session, Store};

/// Chunks decoded together by a download (~8 MiB at the default chunk size).
const DOWNLOAD_BATCH: usize = 128;

#[derive(Clone)]
struct ChunkRef {
    id: ChunkId,
    loc: ChunkLoc,
    start: u64,
}

/// A version's bytes, readable and seekable. Holds no lock.
pub struct FileReader {
    record: FileRecord,
    chunks: Vec<ChunkRef>,
    located: Located,
    pos: u64,
    cache: Option<(usize, Vec<u8>)>,
}

/// Open packs and the locations of delta bases, resolved under the lock so chunks (and the
/// bases they are stored against) can be read after it is released.
#[derive(Default)]
pub(crate) struct Located {
    bases: HashMap<ChunkId, ChunkLoc>,
    packs: HashMap<Id, Arc<File>>,
}

impl Located {
    /// Open `loc`'s pack and resolve the chain of bases behind it.
    pub(crate) fn add(
        &mut self,
        s: &Session<'_>,
        loc: &ChunkLoc,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        self.open_pack(s, loc.pack, what)?;
        let mut next = loc.base;
        let mut steps = 0;
        while let Some(b) = next {
            if self.bases.contains_key(&b) {
                break; // resolved before, with its own chain
            }
            steps += 1;
            if steps > crate::delta::MAX_DEPTH {
                return Err(Error::corrupt(
                    what(),
                    "delta chain longer than any writer makes",
                ));
            }
            let bl = s.index.chunk(&b)?.ok_or_else(|| {
                Error::corrupt(what(), format!("delta base {b} is missing from the store"))
            })?;
            self.open_pack(s, bl.pack, what)?;
            self.bases.insert(b, bl);
            next = bl.base;
        }
        Ok(())
    }

    fn open_pack(&mut self, s: &Session<'_>, pack: Id, what: &dyn Fn() -> String) -> Result<()> {
        if let std::collections::hash_map::Entry::Vacant(e) = self.packs.entry(pack) {
            let p = s.store.dir("packs").join(pack::pack_file_name(pack));
            let f = File::open(&p).map_err(|err| {
                Error::corrupt(what(), format!("cannot open pack {}: {err}", p.display()))
            })?;
            e.insert(Arc::new(f));
        }
        Ok(())
    }

    /// How many delta steps lie under `loc` (0: not a delta), if its chain is resolved.
    pub(crate) fn depth(&self, loc: &ChunkLoc) -> Option<u8> {
        let mut d = 0u8;
        let mut next = loc.base;
        while let Some(b) = next {
            d += 1;
            if d > crate::delta::MAX_DEPTH {
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
        pack::read_chunk(&*pack_of(loc)?, loc, id, &lookup, location)
    }
}

pub(crate) fn load_manifest(s: &Session<'_>, rec: &FileRecord) -> Result<Manifest> {
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
    Ok(m)
}

pub(crate) fn open_reader(s: &Session<'_>, rec: FileRecord) -> Result<FileReader> {
    let m = load_manifest(s, &rec)?;
    let mut located = Located::default();
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
        located.add(s, &loc, &|| rec.key().display())?;
        chunks.push(ChunkRef { id, loc, start });
        start += len as u64;
    }
    Ok(FileReader {
        record: rec,
        chunks,
        located,
        pos: 0,
        cache: None,
    })
}

impl FileReader {
    /// Each chunk's `(offset in the file, id, location)`, and the open packs and delta chains.
    pub(crate) fn into_parts(self) -> (Vec<(u64, ChunkId, ChunkLoc)>, Located) {
        let chunks = self.chunks.iter().map(|c| (c.start, c.id, c.loc)).collect();
        (chunks, self.located)
    }

    pub fn record(&self) -> &FileRecord {
        &self.record
    }

    pub fn len(&self) -> u64 {
        self.record.size_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.record.size_bytes == 0
    }

    fn read_chunk(&self, i: usize) -> Result<Vec<u8>> {
        let c = &self.chunks[i];
        self.located.read(&c.loc, &c.id, &|| {
            format!(
                "{} v{} (chunk {} at pack {} offset {})",
                self.record.key().display(),
                self.record.version,
                c.id,
                c.loc.pack,
                c.loc.offset
            )
        })
    }

    /// Stream the whole file into `out`, decoding chunks in parallel; every chunk is verified.
    pub fn copy_to(&self, out: &mut (dyn Write + Send)) -> Result<u64> {
        let (tx, rx) = crossbeam_channel::bounded::<Vec<Vec<u8>>>(2);
        std::thread::scope(|s| {
            let writer = s.spawn(move || -> io::Result<u64> {
                let mut n = 0;
                for batch in rx {
                    for c in batch {
                        out.write_all(&c)?;
                        n += c.len() as u64;
                    }
                }
                out.flush()?;
                Ok(n)
            });
            let produced = (|| -> Result<()> {
                for start in (0..self.chunks.len()).step_by(DOWNLOAD_BATCH) {
                    let end = (start + DOWNLOAD_BATCH).min(self.chunks.len());
                    let batch = (start..end)
                        .into_par_iter()
                        .map(|i| self.read_chunk(i))
                        .collect::<Result<Vec<_>>>()?;
                    if tx.send(batch).is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Ok(())
            })();
            drop(tx);
            let written = writer
                .join()
                .map_err(|_| Error::Index("download writer panicked".into()))?;
            produced?;
            written.map_err(|e| Error::io("<output>", e))
        })
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.record.size_bytes || buf.is_empty() {
            return Ok(0);
        }
        let i = self.chunks.partition_point(|c| c.start <= self.pos) - 1;
        if self.cache.as_ref().map(|(ci, _)| *ci) != Some(i) {
            let data = self.read_chunk(i).map_err(io::Error::other)?;
            self.cache = Some((i, data));
        }
        let (_, data) = self.cache.as_ref().expect("filled above");
        let off = (self.pos - self.chunks[i].start) as usize;
        let n = buf.len().min(data.len() - off);
        buf[..n].copy_from_slice(&data[off..off + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for FileReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.record.size_bytes.checked_add_signed(d),
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

    /// Open a version by its id.
    pub fn open_version(&self, id: Id) -> Result<FileReader> {
        let s = self.session()?;
        let rec = s
            .index
            .version(id)?
            .ok_or_else(|| Error::NotFound(format!("version {id}")))?;
        open_reader(&s, rec)
    }

    /// Download a version to `dest`. The bytes land under a temporary name and are renamed into
    /// place only when every chunk has been verified, so `dest` never holds wrong bytes. Like
    /// `cp`, the copy is not fsynced (the store can always make it again).
    pub fn download(&self, key: &FileKey, version: Option<u32>, dest: &Path) -> Result<FileRecord> {
        let r = self.open_file(key, version)?;
        if dest.is_dir() {
            return Err(Error::invalid(
                "destination",
                dest.display().to_string(),
                "is a directory",
            ));
        }
        let mut out = AtomicFile::create(dest)?;
        r.copy_to(&mut out)?;
        out.commit_no_sync()?;
        Ok(r.record)
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
        Ok(r.record)
    }
}

/// Read a whole version into memory (for tests and small files).
pub fn read_all(r: &FileReader) -> Result<Vec<u8>> {
    let mut v = Vec::with_capacity(r.len() as usize);
    r.copy_to(&mut v)?;
    Ok(v)
}
