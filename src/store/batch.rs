//! Uploads, one file or many, committed together (`UploadBatch`).
//!
//! A batch is one commit: every file ingested into the same sink (`PackSink`: the pack being
//! appended to stays open from one file to the next and is fsynced once), then
//! `commit_versions` makes every version visible at once in the store's write order. A small
//! batch holds one session (the store lock and the index) from its first file to its commit; a
//! large one (over 16 MiB) ingests outside the lock into packs of its own and takes the lock to
//! snapshot the chunk locations and to commit (see `Run::ingest_outside_lock`, and the
//! Concurrency paragraph of ARCHITECTURE.md). `put_file` and `put_reader` are batches of one. Everything that can be checked before writing (names, values, the sources being
//! regular files) is checked first, so bad input commits nothing and writes nothing.
//!
//! The commit step (`commit_versions`) takes prepared versions and the pack sink their new
//! chunks went to: it does not care how, or under which lock, they were ingested.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use super::write::{check_new, next_version, no_versions_left, previous_for, zip_layout};
use super::{Session, Store};
use crate::error::{Error, IoContext, Result};
use crate::format::digest::Sha256;
use crate::format::id::Id;
use crate::format::manifest::{self, Manifest};
use crate::format::names::FileKey;
use crate::format::record::{self, FileRecord};
use crate::store::durable;
use crate::store::index::IndexBatch;
use crate::store::index::Snapshot;
use crate::store::ingest::{self, IngestConfig, Ingested, PackSink, Previous, Target};
use crate::store::read::PackFiles;
use crate::store::{ImportedVersion, NewVersion};

/// Where a file's bytes come from.
pub(crate) enum Source<'a> {
    Path(PathBuf),
    /// A file opened (and its metadata taken) earlier, e.g. when a background upload was
    /// queued: the bytes stored are those of that open file, and it must not change between
    /// that moment and the end of the read (a file replaced by a rename is not a change: the
    /// open file still holds the old bytes).
    Opened(Opened),
    Reader(Box<dyn Read + Send + 'a>),
    /// A stream read to its end before the batch chose how to ingest (it was small).
    Memory(Vec<u8>),
}

/// A regular file opened for a later upload, with its state at that moment.
pub struct Opened {
    file: File,
    path: PathBuf,
    before: fs::Metadata,
}

impl Opened {
    /// Open `path` now (following symlinks) and take its size and modification time: the
    /// upload stores exactly these bytes, or fails with `SourceChanged` if the file is
    /// modified in place before it has been read. Directories, FIFOs, sockets and devices are
    /// refused here.
    pub fn open(path: &Path) -> Result<Opened> {
        regular_file(path)?;
        let file = File::open(path).at(path)?;
        let before = file.metadata().at(path)?;
        Ok(Opened {
            file,
            path: path.to_path_buf(),
            before,
        })
    }

    /// Its size when it was opened.
    pub fn len(&self) -> u64 {
        self.before.len()
    }

    /// Whether it was empty when it was opened.
    pub fn is_empty(&self) -> bool {
        self.before.len() == 0
    }
}

/// One file of a batch.
struct Item<'a> {
    /// Taken when the file is ingested.
    source: Option<Source<'a>>,
    key: FileKey,
    v: NewVersion,
    imported: Option<ImportedVersion>,
    /// The SHA-256 the bytes must have (declared by whoever sent them), else nothing is stored.
    expect: Option<Expected>,
    progress: Option<&'a AtomicU64>,
}

/// A checksum declared by the sender of a stream: before the bytes, or after them (set by
/// the time the stream ends).
#[derive(Clone)]
enum Expected {
    Now(Sha256),
    AtEnd(Arc<OnceLock<Sha256>>),
}

impl Expected {
    /// The checksum to compare with, once the stream has ended (none declared: nothing to check).
    fn get(&self) -> Option<Sha256> {
        match self {
            Expected::Now(c) => Some(*c),
            Expected::AtEnd(c) => c.get().copied(),
        }
    }
}

/// Called as each file of a batch starts: its position in the batch and key; the counter it
/// returns (if any) is advanced by the bytes read from that file.
type OnStart<'a> = Box<dyn FnMut(usize, &FileKey) -> Option<Arc<AtomicU64>> + 'a>;

/// Several uploads committed as one: every file becomes a new version, and all of them become
/// visible together, or none of them does. Made by [`Store::upload_batch`].
///
/// A batch appends the new chunks of all its files to the same pack, fsyncs it once, writes
/// every manifest and fsyncs the manifest directory once, and makes all versions visible with
/// one index update: many small files cost little more than one. A batch of at most 16 MiB
/// holds the store's lock from `commit` until it returns; a larger one (or one reading a longer
/// stream) holds it only to take a snapshot of what is stored and to commit, so other
/// processes list, read and upload meanwhile. A crash at any point leaves all of the batch's
/// versions or none of them after the store is next opened. (If a durable step of the commit
/// itself fails after every manifest is in place, `commit` returns the error and the store is
/// poisoned, but the next open makes all of the versions visible.)
///
/// Callbacks (`on_file_start`) and readers run while the batch holds the store's locks: they
/// must not call the same store (it would wait for itself until `lock_timeout`).
///
/// Files are stored in the order they were added. The same path may appear more than once:
/// each gets its own version, consecutive in that order. Nothing is read or written before
/// every name and value is checked and every source path is found to be a regular file (so a
/// bad third file commits nothing, and leaves no trace); a source that cannot be read, or that
/// changes while it is read, fails the whole batch too (its chunks are left for `gc`).
///
/// ```
/// use ml_dash::{ExperimentKey, NewVersion, Store};
///
/// # fn main() -> ml_dash::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
/// # std::fs::write(&a, b"{}").unwrap();
/// # std::fs::write(&b, b"[]").unwrap();
/// let store = Store::open(dir.path().join("store"))?;
/// let exp = ExperimentKey::new("local", "vision", "run-1")?;
/// let mut batch = store.upload_batch();
/// batch.file(&a, exp.file("/configs".into(), "a.json".into()), NewVersion::default());
/// batch.file(&b, exp.file("/configs".into(), "b.json".into()), NewVersion::default());
/// // Standard input, or any reader, can be part of a batch too.
/// batch.reader(&b"v2"[..], exp.file("/configs".into(), "a.json".into()), NewVersion::default());
/// let records = batch.commit()?;
/// let versions: Vec<u32> = records.iter().map(|r| r.version).collect();
/// assert_eq!(versions, [1, 1, 2]); // a.json twice: consecutive versions
/// # Ok(())
/// # }
/// ```
pub struct UploadBatch<'a> {
    store: &'a Store,
    items: Vec<Item<'a>>,
    on_start: Option<OnStart<'a>>,
}

/// A version ready to commit: its record and chunk list. Its new chunks are in packs: full ones
/// fsynced and recorded in the index (applied, not flushed), the open one in the `PackSink`
/// handed to `commit_versions` with it. Its manifest is not written yet.
pub(crate) struct Prepared {
    pub manifest: Manifest,
}

impl Store {
    /// Start a batch of uploads that are committed together (see [`UploadBatch`]).
    pub fn upload_batch(&self) -> UploadBatch<'_> {
        UploadBatch {
            store: self,
            items: Vec::new(),
            on_start: None,
        }
    }

    /// Store files from disk as new versions, all committed together (an [`UploadBatch`] of
    /// `files`): returns their records in the order given, or an error and nothing stored.
    ///
    /// ```
    /// use ml_dash::{ExperimentKey, NewVersion, Store};
    ///
    /// # fn main() -> ml_dash::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path().join("store"))?;
    /// let exp = ExperimentKey::new("local", "vision", "run-1")?;
    /// let mut files = Vec::new();
    /// for step in 0..3 {
    ///     let src = dir.path().join(format!("plot-{step}.png"));
    ///     std::fs::write(&src, format!("plot {step}")).unwrap();
    ///     let key = exp.file("/plots".into(), format!("plot-{step}.png"));
    ///     files.push((src, key, NewVersion::default()));
    /// }
    /// let records = store.put_files(&files)?;
    /// assert_eq!(records.len(), 3);
    /// assert_eq!(records[2].filename, "plot-2.png");
    /// # Ok(())
    /// # }
    /// ```
    pub fn put_files<P: AsRef<Path>>(
        &self,
        files: &[(P, FileKey, NewVersion)],
    ) -> Result<Vec<FileRecord>> {
        let mut batch = self.upload_batch();
        for (src, key, v) in files {
            batch.file(src.as_ref(), key.clone(), v.clone());
        }
        batch.commit()
    }
}

impl<'a> UploadBatch<'a> {
    /// Add a file from disk, stored as a new version of `key`. Symlinks are followed;
    /// directories, FIFOs, sockets and devices are refused (by `commit`, before anything is
    /// written). If the file changes while it is read (size or mtime differ before and after),
    /// the batch fails with `SourceChanged`.
    pub fn file(&mut self, src: impl AsRef<Path>, key: FileKey, v: NewVersion) -> &mut Self {
        self.push(Source::Path(src.as_ref().to_path_buf()), key, v, None, None)
    }

    /// Add a file opened earlier ([`Opened::open`]) as a new version of `key`.
    pub fn opened(&mut self, src: Opened, key: FileKey, v: NewVersion) -> &mut Self {
        self.push(Source::Opened(src), key, v, None, None)
    }

    /// Add everything `src` yields (e.g. standard input) as a new version of `key`.
    pub fn reader(&mut self, src: impl Read + Send + 'a, key: FileKey, v: NewVersion) -> &mut Self {
        self.push(Source::Reader(Box::new(src)), key, v, None, None)
    }

    /// Add everything `src` yields as a new version of `key`, stored only if it hashes to
    /// `checksum`, the SHA-256 its sender declared: bytes that changed after they were hashed,
    /// or were damaged on the way, fail with [`Error::ChecksumMismatch`] and no version is
    /// recorded (a server receiving uploads checks them so, before it commits).
    pub fn reader_checked(
        &mut self,
        src: impl Read + Send + 'a,
        key: FileKey,
        v: NewVersion,
        checksum: Sha256,
    ) -> &mut Self {
        self.push_expecting(Box::new(src), key, v, Expected::Now(checksum))
    }

    /// Like [`reader_checked`](Self::reader_checked), for a sender that declares the checksum
    /// after the bytes (it hashed them as it sent them): whatever `checksum` holds when `src`
    /// has ended is compared with the SHA-256 of what was read, before anything is recorded. If
    /// it is still empty then, nothing was declared and the version is stored unchecked, as
    /// [`reader`](Self::reader) does; `src` must therefore set it before it returns its end.
    pub fn reader_checked_at_end(
        &mut self,
        src: impl Read + Send + 'a,
        key: FileKey,
        v: NewVersion,
        checksum: Arc<OnceLock<Sha256>>,
    ) -> &mut Self {
        self.push_expecting(Box::new(src), key, v, Expected::AtEnd(checksum))
    }

    fn push_expecting(
        &mut self,
        src: Box<dyn Read + Send + 'a>,
        key: FileKey,
        v: NewVersion,
        expect: Expected,
    ) -> &mut Self {
        self.push(Source::Reader(src), key, v, None, None);
        if let Some(it) = self.items.last_mut() {
            it.expect = Some(expect);
        }
        self
    }

    /// Call `f` as each file starts (with its position in the batch and its key); the counter
    /// it returns, if any, is advanced by the bytes read from that file (a progress bar).
    pub fn on_file_start(
        &mut self,
        f: impl FnMut(usize, &FileKey) -> Option<Arc<AtomicU64>> + 'a,
    ) -> &mut Self {
        self.on_start = Some(Box::new(f));
        self
    }

    /// Files added so far.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// No file added yet?
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn push(
        &mut self,
        source: Source<'a>,
        key: FileKey,
        v: NewVersion,
        imported: Option<ImportedVersion>,
        progress: Option<&'a AtomicU64>,
    ) -> &mut Self {
        self.items.push(Item {
            source: Some(source),
            key,
            v,
            imported,
            expect: None,
            progress,
        });
        self
    }

    /// Store every file and make all the new versions visible together. Returns their records
    /// in the order the files were added. On any error nothing becomes visible: bad names,
    /// values or sources are found before anything is written; a source that fails while it
    /// is read, or bytes that do not match an imported record, fail the batch with chunks left
    /// for `gc`; a failed durable step also poisons the store (see [`Store`]).
    pub fn commit(self) -> Result<Vec<FileRecord>> {
        self.run(false)?.into_iter().collect()
    }

    /// Like `commit`, but a file that cannot be stored (a bad name, a source that is missing,
    /// unreadable or changing, bytes that do not match their imported record) only gets its
    /// error, in its place in the result, and the others are committed together. Errors of the
    /// store itself (a failed pack write or fsync, the lock) still fail the whole batch.
    pub fn commit_each(self) -> Result<Vec<Result<FileRecord>>> {
        self.run(true)
    }

    fn run(self, each: bool) -> Result<Vec<Result<FileRecord>>> {
        let UploadBatch {
            store,
            mut items,
            mut on_start,
        } = self;
        // 1. Everything that can be checked without the store, before anything is written.
        let mut results: Vec<Option<Result<FileRecord>>> = Vec::with_capacity(items.len());
        for it in &items {
            match check_item(it) {
                Ok(()) => results.push(None),
                Err(e) if each => results.push(Some(Err(e))),
                Err(e) => return Err(e),
            }
        }
        store.check_poison()?;
        if results.iter().all(Option::is_some) {
            return Ok(results.into_iter().flatten().collect());
        }
        let mut run = Run {
            store,
            items: &mut items,
            results: &mut results,
            each,
            on_start: &mut on_start,
            interrupt: crate::interrupt::current(),
        };
        if run.outside_lock()? {
            run.ingest_outside_lock()?;
        } else {
            run.ingest_under_lock()?;
        }
        drop(on_start);
        Ok(results.into_iter().flatten().collect())
    }
}

/// Batches whose files hold more than this many bytes (or that read from a stream, whose size
/// is unknown) are ingested outside the store lock; smaller ones hold it from start to commit,
/// which costs less than a snapshot and a second hold of the lock.
const OUTSIDE_LOCK_MIN: u64 = 16 << 20;

/// How long the commit of an upload outside the lock waits for the store lock, whatever
/// `lock_timeout` says: its bytes are written, durable, and would otherwise be left for gc.
const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// One run of a batch: its files, and each one's result once it has one.
struct Run<'r, 'a> {
    store: &'a Store,
    items: &'r mut Vec<Item<'a>>,
    results: &'r mut Vec<Option<Result<FileRecord>>>,
    each: bool,
    on_start: &'r mut Option<OnStart<'a>>,
    /// Set from another thread to stop the run before it commits (`crate::interrupt`).
    interrupt: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Run<'_, '_> {
    fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn check_interrupt(&self) -> Result<()> {
        if self.interrupted() {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    }

    /// Do the files hold more than `OUTSIDE_LOCK_MIN` bytes? Streams are read (into memory) up
    /// to what is left of that budget to find out: one that ends within it is kept as bytes,
    /// one that does not continues after the bytes read.
    fn outside_lock(&mut self) -> Result<bool> {
        let mut bytes = 0u64;
        for (i, it) in self.items.iter_mut().enumerate() {
            if self.results[i].is_some() {
                continue;
            }
            match it.source.take() {
                None => {}
                Some(Source::Path(p)) => {
                    bytes = bytes.saturating_add(fs::metadata(&p).map_or(0, |m| m.len()));
                    it.source = Some(Source::Path(p));
                }
                Some(Source::Opened(o)) => {
                    bytes = bytes.saturating_add(o.before.len());
                    it.source = Some(Source::Opened(o));
                }
                Some(Source::Memory(b)) => {
                    bytes = bytes.saturating_add(b.len() as u64);
                    it.source = Some(Source::Memory(b));
                }
                Some(Source::Reader(mut r)) => {
                    let room = OUTSIDE_LOCK_MIN.saturating_sub(bytes);
                    let mut head = Vec::new();
                    let read = (&mut r).take(room + 1).read_to_end(&mut head);
                    bytes = bytes.saturating_add(head.len() as u64);
                    match read {
                        Err(e) if self.each => self.results[i] = Some(Err(Error::Source(e))),
                        Err(e) => return Err(Error::Source(e)),
                        Ok(n) if n as u64 <= room => {
                            // A small stream is whole in memory: bytes that do not match their
                            // declared checksum are refused before anything is written.
                            let wrong =
                                it.expect.as_ref().and_then(Expected::get).and_then(|want| {
                                    let got = ingest::sha256_of(&head);
                                    (got != want).then(|| Error::ChecksumMismatch {
                                        location: it.key.display(),
                                        expected: want.to_string(),
                                        actual: got.to_string(),
                                        size: head.len() as u64,
                                    })
                                });
                            match wrong {
                                Some(e) if self.each => self.results[i] = Some(Err(e)),
                                Some(e) => return Err(e),
                                None => it.source = Some(Source::Memory(head)),
                            }
                        }
                        Ok(_) => {
                            let rest = std::io::Cursor::new(head).chain(r);
                            it.source = Some(Source::Reader(Box::new(rest)));
                        }
                    }
                }
            }
            if bytes > OUTSIDE_LOCK_MIN {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Small batches: one session from the first file's ingest to the commit, appending to
    /// the store's open pack and recording full packs in the index as they are fsynced.
    fn ingest_under_lock(&mut self) -> Result<()> {
        // Every upload holds `writers` shared: gc holds it exclusively while it runs, also
        // while it releases the store lock to copy packs.
        let _writers = self.store.writers_lock(false)?;
        let s = self.store.session()?;
        self.store.check_poison()?;
        s.ensure_format()?;
        let ix = &s.index;
        let active = match ix.meta_id("active_pack")? {
            Some(id) => ix.pack_len(id)?.map(|len| (id, len)),
            None => None,
        };
        let mut sink = PackSink::new(active);
        let target = Target {
            lookup: ix,
            record: Some(ix),
        };
        let find = |_: usize, key: &FileKey| previous_for(&s, key);
        let done = self.ingest_all(target, &find, &mut sink)?;
        self.commit(&s, &mut sink, done)
    }

    /// Large batches: the store lock only to take a snapshot of the chunk locations, to look up
    /// the version a checkpoint's deltas go against, and to commit. Chunking, hashing, compression,
    /// deltas and pack writes run without it, into packs only this upload appends to, which
    /// the index does not know until the commit (gc reclaims them if the process dies). The
    /// writers' lock, held shared throughout, keeps gc and repair from moving or removing the
    /// chunks the snapshot names (deduplicated chunks and delta bases) until the commit.
    fn ingest_outside_lock(&mut self) -> Result<()> {
        let store = self.store;
        let _writers = store.writers_lock(false)?;
        // The snapshot's session ends here: ingest runs without the store lock.
        let snapshot = {
            let s = store.session()?;
            s.ensure_format()?;
            Snapshot::take(&s.index)?
        };
        let mut sink = PackSink::incoming();
        let target = Target {
            lookup: &snapshot,
            record: None,
        };
        // The version deltas are stored against is looked up only for a file found to be a
        // checkpoint, in a short session of its own; its chunks and bases stay in place while
        // `writers` is held. A lookup that fails only means no deltas.
        let find = |_: usize, key: &FileKey| {
            let s = store.session().ok()?;
            previous_for(&s, key)
        };
        let done = match self.ingest_all(target, &find, &mut sink) {
            Ok(d) => d,
            Err(e) => {
                // A source that failed (or bytes that did not match their checksum): this
                // upload's own packs are referenced by nothing, so they go now.
                if !matches!(e, Error::Poisoned(_)) && store.check_poison().is_ok() {
                    sink.discard_incoming(&store.dir("packs"));
                }
                return Err(e);
            }
        };
        // The last pack is durable before the lock is taken again. The work is done: the
        // commit waits for the lock as long as it takes (a verify or pull may hold it long).
        store.poison(sink.finish(None))?;
        self.check_interrupt()?;
        let s = store.session_waiting(COMMIT_WAIT)?;
        store.check_poison()?;
        self.check_interrupt()?;
        let packs_dir = store.dir("packs");
        store.poison(sink.record_deferred(&s.index, &packs_dir, &store.opts.faults))?;
        self.commit(&s, &mut sink, done)
    }

    /// Ingest every file into the sink. A source that fails is the file's own error (with
    /// `each`; else the batch's); anything else happened while writing packs: the fate of
    /// those bytes is unknown, so the store stops taking writes until reopened.
    fn ingest_all(
        &mut self,
        target: Target<'_>,
        find_previous: &(dyn Fn(usize, &FileKey) -> Option<Previous> + Sync),
        sink: &mut PackSink,
    ) -> Result<Vec<(usize, Ingested)>> {
        let store = self.store;
        let stop = self.interrupt.clone();
        let interrupted = || {
            stop.as_ref()
                .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
        };
        let mut done: Vec<(usize, Ingested)> = Vec::new();
        for (i, it) in self.items.iter_mut().enumerate() {
            let Some(source) = it.source.take().filter(|_| self.results[i].is_none()) else {
                continue;
            };
            let counter = self.on_start.as_mut().and_then(|f| f(i, &it.key));
            let progress = counter.as_deref().or(it.progress);
            let imported = it.imported.as_ref();
            let key = &it.key;
            let find = || find_previous(i, key);
            let expect = it.expect.clone();
            let r = ingest_item(
                store,
                target,
                &find,
                source,
                key,
                imported,
                progress,
                sink,
                stop.as_ref(),
            )
            .and_then(|ing| check_expected(key, expect.as_ref().and_then(Expected::get), ing));
            // An interrupted read fails the whole batch, whatever `each` says.
            let r = match r {
                Err(Failed::Item(_)) if interrupted() => Err(Failed::Item(Error::Interrupted)),
                r => r,
            };
            let each = self.each && !interrupted();
            match r {
                Ok(ing) => done.push((i, ing)),
                Err(Failed::Item(e)) if each => self.results[i] = Some(Err(e)),
                Err(Failed::Item(e)) => {
                    // What was appended is recorded (fsynced, in the index), so that it is
                    // plain garbage for gc rather than bytes no index knows; outside the lock
                    // the packs are this upload's own, removed by the caller.
                    store.poison(sink.finish(target.record))?;
                    return Err(e);
                }
                Err(Failed::Store(e)) => return store.poison(Err(e)),
            }
        }
        Ok(done)
    }

    /// Version numbers (consecutive for a path given twice), ids and records, then the commit.
    fn commit(
        &mut self,
        s: &Session<'_>,
        sink: &mut PackSink,
        done: Vec<(usize, Ingested)>,
    ) -> Result<()> {
        let ix = &s.index;
        let mut last = ix.meta_id("last_id")?;
        let mut numbers: std::collections::HashMap<FileKey, u32> = Default::default();
        let mut prepared = Vec::with_capacity(done.len());
        let mut placed = Vec::with_capacity(done.len());
        for (i, ing) in done {
            let it = &self.items[i];
            let version = match numbers.get(&it.key) {
                Some(v) => v
                    .checked_add(1)
                    .filter(|v| *v <= record::MAX_VERSION)
                    .ok_or_else(|| no_versions_left(&it.key)),
                None => next_version(ix, &it.key),
            };
            let version = match version {
                Ok(v) => v,
                Err(e @ Error::InvalidInput { .. }) if self.each => {
                    self.results[i] = Some(Err(e));
                    continue;
                }
                Err(e) => return Err(e),
            };
            numbers.insert(it.key.clone(), version);
            let vid = Id::generate_after(last);
            last = Some(vid);
            if ix.version(vid)?.is_some() {
                return Err(Error::index(format!("version id {vid} already exists")));
            }
            let rec = record_for(&it.key, &it.v, it.imported.as_ref(), vid, version, &ing);
            prepared.push(Prepared {
                manifest: Manifest {
                    format: manifest::FORMAT,
                    record: rec,
                    chunks: ing.chunks,
                },
            });
            placed.push(i);
        }
        self.store.poison(commit_versions(s, sink, &prepared))?;
        for (i, p) in placed.into_iter().zip(prepared) {
            self.results[i] = Some(Ok(p.manifest.record));
        }
        Ok(())
    }
}

/// Why a file of a batch was not ingested.
enum Failed {
    /// Its own fault (its source, its bytes): the batch may go on without it.
    Item(Error),
    /// A failed write to the store: everything stops and the store is poisoned.
    Store(Error),
}

/// The checks that need no store: names and values, and that a source path is a regular file.
fn check_item(it: &Item<'_>) -> Result<()> {
    check_new(&it.key, &it.v)?;
    if let Some(Source::Path(src)) = &it.source {
        regular_file(src)?;
    }
    Ok(())
}

/// `SourceChanged` unless the file is as it was before `read` bytes of it were read: same size
/// (and all of it read), same modification time. `queued`: `before` was taken when a
/// background upload was queued.
fn unchanged(
    path: &Path,
    before: &fs::Metadata,
    read: u64,
    after: std::io::Result<fs::Metadata>,
    queued: bool,
) -> std::result::Result<(), Failed> {
    let changed = |reason: String| {
        Failed::Item(Error::SourceChanged {
            path: path.to_path_buf(),
            reason,
        })
    };
    let after = after.map_err(|e| changed(format!("cannot stat it again: {e}")))?;
    let when = if queued {
        " when the upload was queued"
    } else {
        ""
    };
    if after.len() != before.len() || read != before.len() {
        return Err(changed(format!(
            "size was {} bytes{when}, read {read}, now {}",
            before.len(),
            after.len()
        )));
    }
    if after.modified().ok() != before.modified().ok() {
        return Err(changed(if queued {
            "modified in place after the upload was queued".into()
        } else {
            "modification time changed".into()
        }));
    }
    Ok(())
}

/// The metadata of `path` (symlinks followed) if it is a regular file; directories, FIFOs,
/// sockets and devices are refused.
fn regular_file(path: &Path) -> Result<fs::Metadata> {
    let meta = fs::metadata(path).at(path)?;
    let refuse = |why| Err(Error::invalid("source", path.display().to_string(), why));
    if meta.is_dir() {
        return refuse("is a directory");
    }
    if !meta.is_file() {
        return refuse("is not a regular file (FIFO, socket or device)");
    }
    Ok(meta)
}

/// Read one file of a batch into the sink's packs.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, each argument distinct"
)]
fn ingest_item(
    store: &Store,
    target: Target<'_>,
    find_previous: &(dyn Fn() -> Option<Previous> + Sync),
    source: Source<'_>,
    key: &FileKey,
    imported: Option<&ImportedVersion>,
    progress: Option<&AtomicU64>,
    sink: &mut PackSink,
    interrupt: Option<&Arc<std::sync::atomic::AtomicBool>>,
) -> std::result::Result<Ingested, Failed> {
    let packs_dir = store.dir("packs");
    // Every read of the source checks the interrupt flag, if the call has one.
    let checked = |r| checked_source(r, interrupt);
    let previous = std::sync::OnceLock::new();
    let pack_files = PackFiles::new(packs_dir.clone());
    let mut cfg = IngestConfig {
        packs_dir: &packs_dir,
        chunker: &store.chunker,
        compression: store.opts.compression,
        pack_target: store.opts.pack_target,
        size_hint: None,
        progress,
        faults: &store.opts.faults,
        previous: &previous,
        find_previous,
        delta_depth: store.opts.delta_depth,
        layout: None,
        pack_files: &pack_files,
    };
    // Failing to read the source is the file's own fault; anything else happened while writing
    // packs.
    let failed = |e: Error| match e {
        e @ Error::Source(_) => Failed::Item(e),
        e => Failed::Store(e),
    };
    let ing = match source {
        Source::Reader(r) => ingest::ingest(checked(r), target, &cfg, sink).map_err(failed)?,
        Source::Memory(b) => {
            cfg.size_hint = Some(b.len() as u64);
            ingest::ingest(&b[..], target, &cfg, sink).map_err(failed)?
        }
        Source::Opened(Opened { file, path, before }) => {
            use std::os::unix::fs::MetadataExt;
            // The path still names the opened file: its zip layout, read through a second
            // handle (a stale layout only changes where chunks are cut). With deltas off too:
            // chunks aligned to tensors dedup unchanged tensors whatever moves around them.
            cfg.layout = File::open(&path)
                .ok()
                .filter(|f| {
                    f.metadata()
                        .is_ok_and(|m| m.ino() == before.ino() && m.dev() == before.dev())
                })
                .and_then(|mut f| zip_layout(&mut f, before.len()));
            cfg.size_hint = Some(before.len());
            let handle = file.try_clone().at(&path).map_err(Failed::Item)?;
            let ing =
                ingest::ingest(checked(Box::new(handle)), target, &cfg, sink).map_err(failed)?;
            unchanged(&path, &before, ing.size, file.metadata(), true)?;
            ing
        }
        Source::Path(src) => {
            let item = Failed::Item;
            let file = File::open(&src).at(&src).map_err(item)?;
            let before = file.metadata().at(&src).map_err(item)?;
            // A zip archive (PyTorch checkpoints) is laid out from its central directory, at
            // the end; a second handle reads it (a stale layout only changes where chunks are
            // cut). With deltas off too, as for safetensors files.
            cfg.layout = File::open(&src)
                .ok()
                .and_then(|mut f| zip_layout(&mut f, before.len()));
            cfg.size_hint = Some(before.len());
            let ing =
                ingest::ingest(checked(Box::new(file)), target, &cfg, sink).map_err(failed)?;
            unchanged(&src, &before, ing.size, fs::metadata(&src), false)?;
            ing
        }
    };
    if let Some(imp) = imported
        && (imp.checksum != ing.checksum || imp.size_bytes != ing.size)
    {
        return Err(Failed::Item(Error::corrupt(
            key.display(),
            format!(
                "the record says {} bytes with SHA-256 {}, the bytes are {} with {}",
                imp.size_bytes, imp.checksum, ing.size, ing.checksum
            ),
        )));
    }
    Ok(ing)
}

/// `r`, failing every read once `interrupt` is set.
fn checked_source<'r>(
    r: Box<dyn Read + Send + 'r>,
    interrupt: Option<&Arc<std::sync::atomic::AtomicBool>>,
) -> Box<dyn Read + Send + 'r> {
    match interrupt {
        Some(f) => Box::new(crate::interrupt::CheckedRead {
            inner: r,
            flag: Arc::clone(f),
        }),
        None => r,
    }
}

/// Refuse bytes that do not hash to the checksum their sender declared.
fn check_expected(
    key: &FileKey,
    expect: Option<Sha256>,
    ing: Ingested,
) -> std::result::Result<Ingested, Failed> {
    match expect {
        Some(want) if want != ing.checksum => Err(Failed::Item(Error::ChecksumMismatch {
            location: key.display(),
            expected: want.to_string(),
            actual: ing.checksum.to_string(),
            size: ing.size,
        })),
        _ => Ok(ing),
    }
}

/// The record of a new version.
fn record_for(
    key: &FileKey,
    v: &NewVersion,
    imported: Option<&ImportedVersion>,
    id: Id,
    version: u32,
    ing: &Ingested,
) -> FileRecord {
    let now = crate::format::time::now_iso();
    let (uploaded_at, updated_at) = match imported {
        Some(imp) => (imp.uploaded_at.clone(), imp.updated_at.clone()),
        None => (now.clone(), now),
    };
    FileRecord {
        id,
        namespace: key.namespace.clone(),
        project: key.project.clone(),
        experiment: key.experiment.clone(),
        path: key.path.clone(),
        filename: key.filename.clone(),
        version,
        size_bytes: ing.size,
        checksum: ing.checksum,
        content_type: record::content_type(&key.filename).to_string(),
        description: v.description.clone(),
        tags: v.tags.clone(),
        metadata: v.metadata.clone(),
        uploaded_at,
        updated_at,
        deleted_at: None,
        new_bytes: ing.new_bytes,
    }
}

/// Make `versions` visible together, in the store's write order:
///
/// 1. their chunks durable in packs and recorded in the index (applied, not flushed): ingest
///    did that for full packs, `PackSink::finish` does it for the open one, while every
///    manifest is written to a temporary file and fsynced (`durable::stage_all`);
/// 2. a `pending` marker naming every version, flushed with those chunk locations;
/// 3. the manifests renamed into place, the directory fsynced (`Staged::commit`);
/// 4. every version in one index batch, the marker removed, flushed.
///
/// A crash before 3 finishes leaves some manifests or none in place: `finish_pending` removes
/// them and no version is visible. After 3, all are in place and `finish_pending` makes every
/// version visible. With no versions, only the sink is finished (its chunks are garbage).
pub(crate) fn commit_versions(
    s: &Session<'_>,
    sink: &mut PackSink,
    versions: &[Prepared],
) -> Result<()> {
    let store = s.store;
    let encoded: Vec<Vec<u8>> = versions.iter().map(|p| p.manifest.encode()).collect();
    let manifest = |i: usize| {
        let m = &versions[i].manifest;
        (store.manifest_path(m.record.id), encoded[i].clone())
    };
    let (active, staged) = std::thread::scope(|t| {
        let staging = (!versions.is_empty())
            .then(|| t.spawn(|| durable::stage_all(versions.len(), &manifest, &store.opts.faults)));
        let active = sink.finish(Some(&s.index));
        let staged = staging.map(|h| {
            h.join()
                .map_err(|_| Error::Internal("manifest writer panicked".into()))?
        });
        (active, staged)
    });
    let active = active?;
    let Some(staged) = staged.transpose()? else {
        return Ok(());
    };
    let max = versions
        .iter()
        .map(|p| p.manifest.record.id)
        .max()
        .expect("versions to commit");
    let mut b = IndexBatch::default();
    if let Some(id) = active {
        b.set_meta("active_pack", &id.0);
    }
    let ids: Vec<u8> = versions
        .iter()
        .flat_map(|p| p.manifest.record.id.0)
        .collect();
    b.set_meta("pending", &ids);
    let last = s.index.meta_id("last_id")?.max(Some(max)).unwrap_or(max);
    b.set_meta("last_id", &last.0);
    s.index.apply(b)?;
    staged.commit()?;
    let mut b = IndexBatch::default();
    for (p, bytes) in versions.iter().zip(&encoded) {
        b.put_version(&p.manifest.record);
        // Every upload hashed its chunks to the record's SHA-256 as it stored them.
        b.put_proof(p.manifest.record.id, blake3::hash(bytes).as_bytes());
    }
    b.remove_meta("pending");
    s.index.apply(b)
}
