//! Pack files on disk: `PackWriter` appends records (fsync on `sync`), `read_chunk_into` reads and
//! proves one chunk (following delta bases), `compare` compares a record with bytes, `scan` walks
//! every record of a pack past damage. The format itself is `format::pack`.
//!
//! A pack is never rewritten in place: `gc` copies live chunks to a new pack and deletes the old
//! one. A crash can leave an incomplete record at the very end of a pack (a torn tail); nothing
//! is ever appended after a torn tail (see `PackWriter::reopen`).

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use crate::format::codec::{self, Codec};
use crate::format::digest::ChunkId;
use crate::format::id::Id;
use crate::format::pack::{
    ChunkLoc, PACK_HEADER_LEN, RECORD_HEADER_LEN, RECORD_MAGIC, RecordHeader, check_pack_header,
    check_stored, decode_record_header, encode_pack_header, encode_record_header, len_field,
    pack_file_name,
};
use crate::format::usize_from;
use crate::store::fault::{FaultKind, Faults};

/// Where the base of a delta chunk is: its location and its open pack.
pub type BaseLookup<'a> = &'a dyn Fn(&ChunkId) -> Result<(Arc<File>, ChunkLoc)>;

/// `read_chunk_into` a new buffer.
#[cfg(test)]
pub fn read_chunk(
    file: &File,
    loc: &ChunkLoc,
    id: &ChunkId,
    bases: BaseLookup<'_>,
    location: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; loc.raw_len as usize];
    read_chunk_into(file, loc, id, bases, location, &mut out)?;
    Ok(out)
}

/// Read one chunk at a known location into `out` (its raw length) and check it is the
/// expected chunk. A delta chunk's base (and its base, ...) is found through `bases`; a chain
/// is followed for at most `delta::MAX_DEPTH` steps (so a damaged or looping chain ends in an
/// error), and only the chunk asked for is proven against its id (which proves its bases' bytes
/// too). The depth a delta record announces is how its writer stored it; the same base may sit
/// at another depth in this store (pulled from elsewhere), so only the step count bounds the
/// walk. On an error `out` holds no meaning.
pub fn read_chunk_into(
    file: &File,
    loc: &ChunkLoc,
    id: &ChunkId,
    bases: BaseLookup<'_>,
    location: &dyn Fn() -> String,
    out: &mut [u8],
) -> Result<()> {
    read_chained(file, loc, id, 0, true, bases, location, out)
}

/// What a record holds, against bytes in hand.
pub enum Compared {
    /// Exactly those bytes.
    Same,
    /// Other bytes, or it could not be read: what it decoded to, if it was decoded (a record
    /// of another length, or a raw one, is compared without decoding). Those bytes are not
    /// proven against the record's id.
    Differs(Option<Spare>),
}

/// Does the record at `loc` hold exactly `expect`, the raw bytes of chunk `id`? The record is
/// decoded (through its delta bases, found through `bases`) and compared, which proves it as
/// its BLAKE3 check would, without hashing: ingest asks this of every chunk it would
/// deduplicate against. The decoded bytes of a record that differs are kept.
pub fn compare(
    file: &File,
    loc: &ChunkLoc,
    id: &ChunkId,
    expect: &[u8],
    bases: BaseLookup<'_>,
) -> Compared {
    if loc.raw_len as usize != expect.len() {
        return Compared::Differs(None);
    }
    let location = String::new;
    if loc.codec == Codec::Raw {
        let mut buf = Spare::take(usize_from(loc.record_len()));
        let same = read_record_into(file, loc, id, &location, &mut buf).is_ok()
            && buf[RECORD_HEADER_LEN..] == *expect;
        return if same {
            Compared::Same
        } else {
            Compared::Differs(None)
        };
    }
    let mut raw = Spare::take(expect.len());
    match read_chained(file, loc, id, 0, false, bases, &location, &mut raw) {
        Ok(()) if *raw == *expect => Compared::Same,
        Ok(()) => Compared::Differs(Some(raw)),
        Err(_) => Compared::Differs(None),
    }
}

thread_local! {
    /// Buffers this thread reuses for the records it reads and the delta bases it decodes.
    static SPARES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of at least `len` bytes from this thread's spares (grown when short, never zeroed
/// again: whoever takes it writes the bytes it reads), returned to them on drop. A chain of
/// deltas holds two per step at once.
pub struct Spare {
    buf: Vec<u8>,
    len: usize,
}

impl Spare {
    /// Bytes of spares a thread keeps at most (enough for a chain of depth 2 of 2 MiB chunks;
    /// larger chunks or longer chains get fresh buffers for the rest).
    const KEEP_BYTES: usize = 16 << 20;

    pub(crate) fn take(len: usize) -> Spare {
        let mut buf = SPARES.with(|s| s.borrow_mut().pop()).unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        Spare { buf, len }
    }
}

impl std::ops::Deref for Spare {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::ops::DerefMut for Spare {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        SPARES.with(|s| {
            let mut s = s.borrow_mut();
            let kept: usize = s.iter().map(Vec::len).sum();
            if kept + buf.len() <= Self::KEEP_BYTES {
                s.push(buf);
            }
        });
    }
}

/// Decode chunk `id` at `loc` into `out` (its raw length) through its chain of bases, `steps`
/// below the chunk asked for; with `prove`, the chunk asked for is hashed piece by piece as it
/// is decoded and checked against its id.
#[allow(
    clippy::too_many_arguments,
    reason = "one step of a recursive walk: where, what, how deep, and where to"
)]
fn read_chained(
    file: &File,
    loc: &ChunkLoc,
    id: &ChunkId,
    steps: u8,
    prove: bool,
    bases: BaseLookup<'_>,
    location: &dyn Fn() -> String,
    out: &mut [u8],
) -> Result<()> {
    if out.len() != loc.raw_len as usize {
        return Err(Error::Internal(format!(
            "chunk {id} of {} bytes read into {}",
            loc.raw_len,
            out.len()
        )));
    }
    let mut buf = Spare::take(usize_from(loc.record_len()));
    read_record_into(file, loc, id, location, &mut buf)?;
    let h = decode_record_header(&buf).expect("checked by read_record_into");
    let stored = &buf[RECORD_HEADER_LEN..];
    let mut hasher = (prove && steps == 0).then(blake3::Hasher::new);
    let mut hash = |_: usize, piece: &mut [u8]| {
        if let Some(h) = &mut hasher {
            h.update(piece);
        }
    };
    // The base a delta chunk was decoded on, for the error below.
    let on = if h.codec == Codec::Delta {
        if steps >= crate::format::delta::MAX_DEPTH {
            return Err(Error::corrupt(
                location(),
                format!("delta chain above chunk {id} is longer than any writer makes"),
            ));
        }
        // Only the chunk asked for is proven (below), and that proves every byte under it: the
        // inner checksum is for checking a record on its own.
        let (dh, inner) = crate::format::delta::parse_header(stored)
            .map_err(|r| Error::corrupt(location(), format!("chunk {id}: {r}")))?;
        if loc.base != Some(dh.base) {
            return Err(Error::corrupt(
                location(),
                format!("delta chunk {id}: its base differs from the index"),
            ));
        }
        let (bfile, bloc) = bases(&dh.base)?;
        if bloc.raw_len != loc.raw_len {
            return Err(Error::corrupt(
                location(),
                format!("delta base {} has the wrong length", dh.base),
            ));
        }
        let mut base = Spare::take(out.len());
        read_chained(
            &bfile,
            &bloc,
            &dh.base,
            steps + 1,
            false,
            bases,
            location,
            &mut base,
        )?;
        crate::format::delta::decode_into(&dh, inner, &base, out, location, &mut hash)?;
        Some(dh.base)
    } else {
        codec::decode_into(h.codec, stored, out, location, &mut hash)?;
        None
    };
    if let Some(hasher) = hasher
        && ChunkId::from_hash(hasher.finalize()) != h.id
    {
        let on = on.map_or(String::new(), |b| format!(" (a delta on chunk {b})"));
        return Err(Error::corrupt(
            location(),
            format!("chunk {}{on} fails its BLAKE3 check", h.id),
        ));
    }
    Ok(())
}

/// Read one whole record (header and stored bytes, as in the pack) and check it holds chunk
/// `id` (`check_stored`) before returning it: for copying records verbatim (push to a remote).
pub fn read_record(
    file: &File,
    loc: &ChunkLoc,
    id: &ChunkId,
    location: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    let buf = read_record_unverified(file, loc, id, location)?;
    let h = decode_record_header(&buf).expect("checked by read_record_unverified");
    check_stored(&h, &buf[RECORD_HEADER_LEN..], location)?;
    Ok(buf)
}

/// The record bytes at `loc`, with a header that is valid and matches `loc` and `id`.
fn read_record_unverified(
    file: &File,
    loc: &ChunkLoc,
    id: &ChunkId,
    location: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; usize_from(loc.record_len())];
    read_record_into(file, loc, id, location, &mut buf)?;
    Ok(buf)
}

/// `read_record_unverified` into `buf` (the record's length).
fn read_record_into(
    file: &File,
    loc: &ChunkLoc,
    id: &ChunkId,
    location: &dyn Fn() -> String,
    buf: &mut [u8],
) -> Result<()> {
    file.read_exact_at(buf, loc.offset)
        .map_err(|e| Error::corrupt(location(), format!("cannot read chunk {id}: {e}")))?;
    let h = decode_record_header(buf)
        .map_err(|r| Error::corrupt(location(), format!("chunk {id}: {r}")))?;
    if h.id != *id
        || h.stored_len != loc.stored_len
        || h.raw_len != loc.raw_len
        || h.codec != loc.codec
    {
        return Err(Error::corrupt(
            location(),
            format!("chunk {id}: record header does not match the index"),
        ));
    }
    Ok(())
}

/// Give a fsynced pack written under its incoming name (`PackWriter::create_incoming`) its
/// pack name; the caller fsyncs `dir` before anything refers to it.
pub(crate) fn publish_incoming(dir: &Path, id: Id, faults: &Faults) -> Result<()> {
    crate::store::durable::rename(
        &dir.join(crate::format::pack::incoming_file_name(id)),
        &dir.join(pack_file_name(id)),
        faults,
    )
}

/// Appends records to one pack. Bytes are durable only after `sync`.
pub struct PackWriter {
    pub id: Id,
    path: PathBuf,
    out: File,
    len: u64,
    /// Where the bytes not yet handed to the kernel's writeback start (`start_writeback`).
    written_back: u64,
    created: bool,
    faults: Faults,
}

/// Bytes a pack writer appends before it asks the kernel to start writing them to disk.
const WRITEBACK_STEP: u64 = 8 << 20;
/// `start_writeback` hands over whole pages of this size (that of x86-64 and most Linux
/// systems; with larger pages the page being appended to may be written early, which costs
/// time, never data).
const PAGE: u64 = 4096;

impl PackWriter {
    /// Start a new pack in `dir`.
    pub fn create(dir: &Path, faults: &Faults) -> Result<PackWriter> {
        Self::create_named(dir, faults, pack_file_name)
    }

    /// Start a new pack in `dir` under its incoming name (`<id>.incoming`), which nothing that
    /// lists packs sees until the upload that writes it commits and renames it.
    pub fn create_incoming(dir: &Path, faults: &Faults) -> Result<PackWriter> {
        Self::create_named(dir, faults, crate::format::pack::incoming_file_name)
    }

    fn create_named(dir: &Path, faults: &Faults, name: fn(Id) -> String) -> Result<PackWriter> {
        let id = Id::generate();
        let path = dir.join(name(id));
        faults.check(FaultKind::Write, &path)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .at(&path)?;
        let mut w = PackWriter {
            id,
            path,
            out: file,
            len: 0,
            written_back: 0,
            created: true,
            faults: faults.clone(),
        };
        w.out.write_all(&encode_pack_header(id)).at(&w.path)?;
        w.len = PACK_HEADER_LEN;
        Ok(w)
    }

    /// Reopen an existing pack to append, only if its length on disk is exactly `committed`
    /// (what the index knows). Anything else means a crashed writer left bytes behind:
    /// returns `None` and the caller starts a new pack, so nothing follows a torn tail.
    pub fn reopen(
        dir: &Path,
        id: Id,
        committed: u64,
        faults: &Faults,
    ) -> Result<Option<PackWriter>> {
        let path = dir.join(pack_file_name(id));
        let file = match OpenOptions::new().append(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let on_disk = file.metadata().at(&path)?.len();
        if on_disk != committed {
            return Ok(None);
        }
        Ok(Some(PackWriter {
            id,
            path,
            out: file,
            len: committed,
            written_back: committed,
            created: false,
            faults: faults.clone(),
        }))
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len <= PACK_HEADER_LEN
    }

    /// Append a chunk; returns its location.
    pub fn append(
        &mut self,
        id: ChunkId,
        raw_len: u32,
        codec: Codec,
        stored: &[u8],
    ) -> Result<ChunkLoc> {
        let h = RecordHeader {
            codec,
            raw_len,
            stored_len: len_field(stored)?,
            id,
        };
        let base = match codec {
            Codec::Delta => Some(crate::format::delta::base_of(stored).ok_or_else(|| {
                Error::corrupt(self.path.display().to_string(), "delta record too short")
            })?),
            _ => None,
        };
        let offset = self.len;
        self.faults.check(FaultKind::Write, &self.path)?;
        // Header and data in one writev, straight from the chunk's memory (no buffer copy).
        let header = encode_record_header(&h);
        let mut bufs = [
            std::io::IoSlice::new(&header),
            std::io::IoSlice::new(stored),
        ];
        let mut bufs = &mut bufs[..];
        while !bufs.is_empty() {
            match self.out.write_vectored(bufs) {
                Ok(0) => {
                    let e = std::io::Error::new(std::io::ErrorKind::WriteZero, "pack write");
                    return Err(Error::io(&self.path, e));
                }
                Ok(n) => std::io::IoSlice::advance_slices(&mut bufs, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&self.path, e)),
            }
        }
        self.len += RECORD_HEADER_LEN as u64 + stored.len() as u64;
        if self.len - self.written_back >= WRITEBACK_STEP {
            self.start_writeback();
        }
        Ok(ChunkLoc {
            pack: self.id,
            offset,
            stored_len: h.stored_len,
            raw_len,
            codec,
            base,
        })
    }

    /// Ask the kernel to start writing the bytes appended since the last call to disk, without
    /// waiting for them, so that the `sync` at the end of an upload finds most of a pack
    /// already written instead of all of it. Only a hint: durability still comes from `sync`,
    /// and a failure here changes nothing.
    fn start_writeback(&mut self) {
        // Whole pages only: the page the next append goes on stays in the cache, so that
        // append never waits for it to be written (file systems that keep pages stable while
        // they are written make writers wait).
        let end = self.len & !(PAGE - 1);
        let from = std::mem::replace(&mut self.written_back, end);
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let (Ok(from), Ok(len)) =
                (i64::try_from(from), i64::try_from(end.saturating_sub(from)))
            else {
                return;
            };
            // SAFETY: a plain syscall on a file descriptor this writer owns; no memory is passed.
            unsafe {
                libc::sync_file_range(self.out.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = from;
    }

    /// Flush and fsync (and fsync the directory if this writer created the pack).
    /// An error here must poison the store: the bytes' fate is unknown.
    pub fn sync(&mut self) -> Result<()> {
        self.faults.check(FaultKind::Sync, &self.path)?;
        self.out.sync_data().at(&self.path)?;
        if self.created {
            crate::store::durable::fsync_dir(
                self.path.parent().unwrap_or(Path::new(".")),
                &self.faults,
            )?;
            self.created = false;
        }
        Ok(())
    }
}

/// One record found by `scan`.
pub struct Scanned {
    pub header: RecordHeader,
    pub offset: u64,
    /// The base a delta record names.
    pub base: Option<ChunkId>,
    /// Present only when scanning with `verify`: whether the data checks out on its own
    /// (`check_stored`).
    pub data_ok: Option<bool>,
}

/// A span of a pack that holds no valid record: `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub start: u64,
    pub end: u64,
    pub reason: String,
}

/// What a scan found besides the records it reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// The file's length.
    pub len: u64,
    /// Why the 32-byte pack header is not valid, if it is not (records are scanned anyway:
    /// they are self-describing, and locations name packs by file name, not by header).
    pub header: Option<String>,
    /// Spans between valid records that hold none; the scan resumed at the next valid record
    /// header after each.
    pub damaged: Vec<Damage>,
    /// Where an incomplete last record starts (an append a crash interrupted), if any.
    pub torn_tail: Option<u64>,
    /// End of the last valid record (the header's end if there is none).
    pub end: u64,
}

impl ScanReport {
    /// A pack shorter than its own header (a writer killed right after creating it).
    pub fn is_empty_leftover(&self) -> bool {
        self.torn_tail == Some(0)
    }
}

/// Bytes of a pack file read through a window (`scan` and its resynchronization).
struct Window<'a> {
    file: &'a File,
    path: &'a Path,
    len: u64,
    start: u64,
    buf: Vec<u8>,
    /// Bytes read at least per refill: all of the pack when its data is checked, little more
    /// than a header when only headers are walked.
    read_ahead: usize,
}

impl Window<'_> {
    const SIZE: usize = 1 << 20;

    /// `n` bytes at `off` (the caller checked they are inside the file).
    fn get(&mut self, off: u64, n: usize) -> Result<&[u8]> {
        let have = off >= self.start && off + n as u64 <= self.start + self.buf.len() as u64;
        if !have {
            let want = usize_from((n.max(self.read_ahead) as u64).min(self.len - off));
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, off).at(self.path)?;
            self.start = off;
        }
        let at = usize_from(off - self.start);
        Ok(&self.buf[at..at + n])
    }

    /// The first offset at or after `from` where a valid record header starts whose record
    /// fits in the file. Record headers carry their own checksum, so a match inside damaged
    /// bytes is a real record (one stored inside another record's data is a real record
    /// too, and checked against its id like any other).
    fn resync(&mut self, from: u64) -> Result<Option<u64>> {
        let mut at = from;
        while at + RECORD_HEADER_LEN as u64 <= self.len {
            let n = usize_from(self.len - at).min(Self::SIZE);
            let block = self.get(at, n)?;
            let found = block
                .windows(RECORD_MAGIC.len())
                .enumerate()
                .filter(|(_, w)| w == RECORD_MAGIC)
                .map(|(i, _)| at + i as u64)
                .collect::<Vec<u64>>();
            for cand in found {
                if cand + RECORD_HEADER_LEN as u64 > self.len {
                    break;
                }
                let mut hb = [0u8; RECORD_HEADER_LEN];
                hb.copy_from_slice(self.get(cand, RECORD_HEADER_LEN)?);
                if let Ok(h) = decode_record_header(&hb)
                    && cand + RECORD_HEADER_LEN as u64 + u64::from(h.stored_len) <= self.len
                {
                    return Ok(Some(cand));
                }
            }
            if at + n as u64 >= self.len {
                break;
            }
            // Overlap by the magic's length so a magic across the boundary is found.
            at += (n - RECORD_MAGIC.len() + 1) as u64;
        }
        Ok(None)
    }
}

/// Read every record of a pack in order, past damage: a damaged header is skipped by
/// resynchronizing on the next valid record header (`ScanReport::damaged` names the span), and
/// so is a valid header whose record would run past the end when a valid record follows it.
/// With `verify`, each record's data is checked on its own (`check_stored`), and the scan goes
/// on at a valid record header inside a record that fails (its length may be damaged).
pub fn scan(path: &Path, id: Id, verify: bool, mut f: impl FnMut(Scanned)) -> Result<ScanReport> {
    let file = File::open(path).at(path)?;
    let len = file.metadata().at(path)?.len();
    let mut rep = ScanReport {
        len,
        end: PACK_HEADER_LEN,
        ..ScanReport::default()
    };
    if len < PACK_HEADER_LEN {
        rep.torn_tail = Some(0);
        rep.end = 0;
        return Ok(rep);
    }
    let mut w = Window {
        file: &file,
        path,
        len,
        start: 0,
        buf: Vec::new(),
        read_ahead: if verify { Window::SIZE } else { 4096 },
    };
    if let Err(reason) = check_pack_header(w.get(0, usize_from(PACK_HEADER_LEN))?, id) {
        rep.header = Some(reason);
    }
    let mut offset = PACK_HEADER_LEN;
    let mut data = Vec::new();
    while offset < len {
        if len - offset < RECORD_HEADER_LEN as u64 {
            rep.torn_tail = Some(offset);
            break;
        }
        let header = match decode_record_header(w.get(offset, RECORD_HEADER_LEN)?) {
            Ok(h) => h,
            Err(reason) => {
                let next = w.resync(offset + 1)?;
                rep.damaged.push(Damage {
                    start: offset,
                    end: next.unwrap_or(len),
                    reason: reason.to_string(),
                });
                match next {
                    Some(n) => {
                        offset = n;
                        continue;
                    }
                    None => break,
                }
            }
        };
        let end = offset + RECORD_HEADER_LEN as u64 + u64::from(header.stored_len);
        if end > len {
            // A valid header whose data runs past the end: an append a crash interrupted,
            // unless a valid record starts after it (its length is damaged: a header checksum
            // is 4 bytes, and a misdirected write can bring a valid header of another record).
            if let Some(next) = w.resync(offset + 1)? {
                rep.damaged.push(Damage {
                    start: offset,
                    end: next,
                    reason: "a record runs past the end of the pack".into(),
                });
                offset = next;
                continue;
            }
            rep.torn_tail = Some(offset);
            break;
        }
        let (data_ok, base) = if verify || header.codec == Codec::Delta {
            data.clear();
            data.extend_from_slice(w.get(
                offset + RECORD_HEADER_LEN as u64,
                header.stored_len as usize,
            )?);
            let ok = verify.then(|| check_stored(&header, &data, &String::new).is_ok());
            let base = match header.codec {
                Codec::Delta => crate::format::delta::base_of(&data),
                _ => None,
            };
            (ok, base)
        } else {
            (None, None)
        };
        f(Scanned {
            header,
            offset,
            base,
            data_ok,
        });
        rep.end = rep.end.max(end);
        // A record whose data fails its check may have a damaged length: a valid record
        // header inside the span it claims starts the next record (else records after it,
        // intact and still read through the index, would be lost to a rebuild).
        offset = match data_ok {
            Some(false) => w.resync(offset + 1)?.filter(|n| *n < end).unwrap_or(end),
            _ => end,
        };
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_scan_read_roundtrip_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(dir.path(), &Faults::none()).unwrap();
        let a = b"hello chunk".to_vec();
        let b = vec![3u8; 5000];
        let la = w
            .append(ChunkId::of(&a), len_field(&a).unwrap(), Codec::Raw, &a)
            .unwrap();
        let (_, cb) = codec::encode(&b, codec::Compression::Always(1)).unwrap();
        let lb = w
            .append(ChunkId::of(&b), len_field(&b).unwrap(), Codec::Zstd, &cb)
            .unwrap();
        w.sync().unwrap();
        let path = dir.path().join(pack_file_name(w.id));
        let f = File::open(&path).unwrap();
        let no_bases =
            |b: &ChunkId| -> Result<(Arc<File>, ChunkLoc)> { Err(Error::NotFound(b.to_string())) };
        assert_eq!(
            read_chunk(&f, &la, &ChunkId::of(&a), &no_bases, &String::new).unwrap(),
            a
        );
        assert_eq!(
            read_chunk(&f, &lb, &ChunkId::of(&b), &no_bases, &String::new).unwrap(),
            b
        );
        assert!(read_chunk(&f, &la, &ChunkId::of(&b), &no_bases, &String::new).is_err());
        let mut seen = vec![];
        let rep = scan(&path, w.id, true, |s| seen.push((s.offset, s.data_ok))).unwrap();
        assert_eq!(
            (rep.damaged.len(), rep.torn_tail, rep.header),
            (0, None, None)
        );
        assert_eq!(seen, vec![(la.offset, Some(true)), (lb.offset, Some(true))]);
        assert_eq!(ChunkLoc::decode(&lb.encode()), Some(lb));

        // Torn tail: cut the last record short.
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let mut n = 0;
        assert_eq!(
            scan(&path, w.id, false, |_| n += 1).unwrap().torn_tail,
            Some(lb.offset)
        );
        assert_eq!(n, 1);
        assert!(
            PackWriter::reopen(dir.path(), w.id, len, &Faults::none())
                .unwrap()
                .is_none()
        );
    }

    /// Appends past several writeback steps, into a new pack and into a reopened one whose
    /// committed length is not a whole page: every record reads back, and the scan finds the
    /// pack whole.
    #[test]
    fn writeback_steps_leave_every_record_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut locs = vec![];
        let mut append = |w: &mut PackWriter, c: Vec<u8>| {
            let l = w
                .append(ChunkId::of(&c), len_field(&c).unwrap(), Codec::Raw, &c)
                .unwrap();
            locs.push((c, l));
        };
        let mut w = PackWriter::create(dir.path(), &Faults::none()).unwrap();
        append(&mut w, b"not a whole page".to_vec());
        for seed in 0..6 {
            append(&mut w, crate::test_support::random_bytes(seed, 3 << 20));
        }
        w.sync().unwrap();
        let (id, committed) = (w.id, w.len());
        assert!(committed > 2 * WRITEBACK_STEP);
        assert_ne!(committed % PAGE, 0);
        drop(w);
        let mut w = PackWriter::reopen(dir.path(), id, committed, &Faults::none())
            .unwrap()
            .unwrap();
        for seed in 6..12 {
            append(&mut w, crate::test_support::random_bytes(seed, 3 << 20));
        }
        w.sync().unwrap();
        assert!(w.len() > committed + 2 * WRITEBACK_STEP);
        let path = dir.path().join(pack_file_name(id));
        let f = File::open(&path).unwrap();
        let no_bases =
            |b: &ChunkId| -> Result<(Arc<File>, ChunkLoc)> { Err(Error::NotFound(b.to_string())) };
        for (c, l) in &locs {
            assert_eq!(
                &read_chunk(&f, l, &ChunkId::of(c), &no_bases, &String::new).unwrap(),
                c
            );
        }
        let rep = scan(&path, id, true, |s| assert_eq!(s.data_ok, Some(true))).unwrap();
        assert_eq!(
            (rep.damaged.len(), rep.torn_tail, rep.end),
            (0, None, w.len())
        );
    }
}
