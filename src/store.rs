//! A store: one directory, opened per operation under a lock.
//!
//! ```text
//! <root>/FORMAT        {"format":2,...}: which on-disk format this is
//! <root>/lock          flock'd for the length of each operation
//! <root>/packs/        <pack id>.pack       chunk records (pack.rs)
//! <root>/manifests/    <version id>.manifest (manifest.rs)
//! <root>/events/       <event id>.event      deletes and updates (manifest.rs)
//! <root>/index/        sled, derived: rebuilt from the three above (recover.rs)
//! ```
//! sled admits one process at a time, so every operation takes the exclusive lock on
//! `<root>/lock`, opens the index, does its work, flushes and closes the index, and releases the
//! lock. A `Store` value (or an `Experiment`) holds no lock between operations, so a training run
//! that keeps its experiment open for days never locks out `ml-dash list` in another terminal;
//! concurrent callers wait for the lock (up to `lock_timeout`) instead of failing.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::chunker::{Chunker, ChunkerConfig};
use crate::codec::Compression;
use crate::durable;
use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::index::{Index, IndexBatch, Scope};
use crate::ingest::{self, IngestConfig, Ingested, Previous};
use crate::manifest::{self, Event, Manifest};
use crate::path::FileKey;
use crate::record::{self, FileRecord};

/// 2: format 1 plus delta records (codec 4), delta bases in index values and remote pack
/// indexes. A format-1 store is marked 2 when this version opens it, so older versions refuse
/// it instead of misreading delta records as damage.
pub const STORE_FORMAT: u32 = 2;
/// Default for `StoreOptions::delta_depth`.
pub const DEFAULT_DELTA_DEPTH: u8 = 2;
const FORMAT_FILE: &str = "FORMAT";

/// Store settings. Builder-style setters document their defaults.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub(crate) chunker: ChunkerConfig,
    pub(crate) compression: Compression,
    pub(crate) pack_target: u64,
    pub(crate) lock_timeout: Duration,
    pub(crate) faults: crate::fault::Faults,
    pub(crate) delta_depth: u8,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            chunker: ChunkerConfig::default(),
            compression: Compression::default(),
            pack_target: 64 << 20,
            lock_timeout: Duration::from_secs(600),
            faults: Default::default(),
            delta_depth: DEFAULT_DELTA_DEPTH,
        }
    }
}

impl StoreOptions {
    /// Chunk sizes (default min 16 KiB / avg 64 KiB / max 256 KiB). Changing them on an existing
    /// store is allowed but new uploads then dedup poorly against old ones.
    pub fn chunker(mut self, c: ChunkerConfig) -> Self {
        self.chunker = c;
        self
    }
    /// Chunk compression (default `Compression::Auto(1)`).
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }
    /// Size at which a pack is closed and a new one started (default 64 MiB).
    pub fn pack_target(mut self, bytes: u64) -> Self {
        self.pack_target = bytes.max(1 << 20);
        self
    }
    /// Inject I/O failures (tests; default none). See `fault.rs`.
    pub fn faults(mut self, f: crate::fault::Faults) -> Self {
        self.faults = f;
        self
    }
    /// Longest chain of deltas a new tensor piece may be stored at the end of (default
    /// `DEFAULT_DELTA_DEPTH`; 0 turns deltas off, at most `delta::MAX_DEPTH`). A read of a
    /// piece at depth d decodes d + 1 records, so this bounds read cost; after d deltas in a
    /// row a piece is stored whole again.
    pub fn delta_depth(mut self, d: u8) -> Self {
        self.delta_depth = d.min(crate::delta::MAX_DEPTH);
        self
    }
    /// How long an operation waits for another process's operation (default 10 minutes).
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.lock_timeout = d;
        self
    }
}

/// What to record with a new version.
#[derive(Clone, Debug, Default)]
pub struct NewVersion {
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub metadata: serde_json::Value,
}

/// What an import keeps from the record it copies (`Store::put_file_imported`, used only by
/// `ml-dash import`): the original timestamps, and the size and SHA-256 the bytes must have.
#[derive(Clone, Debug)]
pub struct ImportedVersion {
    /// Recorded as given (the caller checks the format).
    pub uploaded_at: String,
    pub updated_at: String,
    /// The bytes read must hash to this and have this length, else nothing is recorded.
    pub checksum: crate::digest::Sha256,
    pub size_bytes: u64,
}

/// What a stream upload knows besides its bytes.
struct How<'a> {
    /// Import: the record's timestamps, size and checksum to keep.
    imported: Option<&'a ImportedVersion>,
    /// The source's tensor layout, when read from a file (zip archives).
    layout: Option<crate::tensors::Layout>,
}

/// An open store. Cheap to clone; holds no lock between operations.
#[derive(Clone)]
pub struct Store {
    pub(crate) root: PathBuf,
    pub(crate) opts: StoreOptions,
    pub(crate) chunker: Chunker,
    poisoned: Arc<Mutex<Option<String>>>,
}

/// One operation's hold on the store: the lock and the open index.
pub(crate) struct Session<'a> {
    pub store: &'a Store,
    pub index: Index,
    _lock: File,
}

impl Store {
    /// Open the store at `root`, creating it if the directory is missing or empty.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(root, StoreOptions::default())
    }

    pub fn open_with(root: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        Store::open_inner(root.as_ref(), opts, true)
    }

    /// Open an existing store; never creates one (for read-only commands).
    pub fn open_existing(root: impl AsRef<Path>) -> Result<Store> {
        Store::open_existing_with(root, StoreOptions::default())
    }

    pub fn open_existing_with(root: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        Store::open_inner(root.as_ref(), opts, false)
    }

    fn open_inner(root: &Path, opts: StoreOptions, create: bool) -> Result<Store> {
        let root = root.to_path_buf();
        let bad = |reason: String| Error::BadStore {
            root: root.clone(),
            reason,
        };
        match fs::metadata(&root) {
            Ok(m) if !m.is_dir() => return Err(bad("exists and is not a directory".into())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                fs::create_dir_all(&root).map_err(|e| bad(format!("cannot create it: {e}")))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad(
                    "no ml-dash store here (the first upload creates one)".into()
                ));
            }
            Err(e) => return Err(bad(e.to_string())),
        }
        let format_path = root.join(FORMAT_FILE);
        let check_format = |b: &[u8]| -> Result<()> {
            let v: serde_json::Value =
                serde_json::from_slice(b).map_err(|_| bad("FORMAT file is damaged".into()))?;
            if !matches!(v.get("format").and_then(|f| f.as_u64()), Some(1 | 2)) {
                return Err(bad(format!("unsupported store format {}", v["format"])));
            }
            Ok(())
        };
        match fs::read(&format_path) {
            Ok(b) => check_format(&b)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => {
                return Err(bad(
                    "no ml-dash store here (the first upload creates one)".into()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Refuse a foreign directory before creating anything in it; unless another
                // process finished creating the store since we looked (FORMAT exists now).
                if let Err(refused) = check_empty_for_create(&root) {
                    let b = fs::read(&format_path).map_err(|_| refused)?;
                    check_format(&b)?;
                    return Store::finish_open(root, opts);
                }
                // Create under the store lock so that processes racing to create the same
                // store agree: the loser finds FORMAT when it gets the lock.
                let _lock = acquire_lock(&root.join("lock"), opts.lock_timeout)?;
                match fs::read(&format_path) {
                    Ok(b) => check_format(&b)?,
                    Err(_) => create_layout(&root).map_err(|e| match e {
                        Error::BadStore { .. } => e,
                        other => bad(other.to_string()),
                    })?,
                }
            }
            Err(e) => return Err(bad(e.to_string())),
        }
        Store::finish_open(root, opts)
    }

    fn finish_open(root: PathBuf, opts: StoreOptions) -> Result<Store> {
        let chunker = Chunker::new(opts.chunker)?;
        upgrade_format(&root, opts.lock_timeout);
        Ok(Store {
            root,
            opts,
            chunker,
            poisoned: Arc::new(Mutex::new(None)),
        })
    }

    /// Does any pack, manifest or event exist?
    fn has_durable_data(&self) -> Result<bool> {
        for d in ["packs", "manifests", "events"] {
            let dir = self.dir(d);
            let mut it = fs::read_dir(&dir).at(&dir)?;
            if it.any(|e| e.is_ok_and(|e| !e.file_name().to_string_lossy().starts_with('.'))) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub(crate) fn manifest_path(&self, id: Id) -> PathBuf {
        self.dir("manifests").join(manifest::manifest_file_name(id))
    }

    pub(crate) fn event_path(&self, id: Id) -> PathBuf {
        self.dir("events").join(manifest::event_file_name(id))
    }

    pub(crate) fn check_poison(&self) -> Result<()> {
        match &*self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Mark the store unusable for writes after a failed durable step (never retry an fsync).
    pub(crate) fn poison<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            let mut p = self.poisoned.lock().unwrap_or_else(|p| p.into_inner());
            p.get_or_insert_with(|| e.to_string());
        }
        r
    }

    /// Take the store lock (waiting up to `lock_timeout`).
    pub(crate) fn lock(&self) -> Result<File> {
        acquire_lock(&self.root.join("lock"), self.opts.lock_timeout)
    }

    /// Take the lock, open the index and finish any commit a crash interrupted.
    ///
    /// The index is derived data: if it is missing (deleted, or never built by this version)
    /// while the store holds packs, manifests or events, or sled reports its files damaged, it
    /// is rebuilt here first, so a lost index never looks like an empty store (and never
    /// restarts version numbers).
    pub(crate) fn session(&self) -> Result<Session<'_>> {
        let lock = self.lock()?;
        if !self.dir("index").join("conf").exists() && self.has_durable_data()? {
            self.rebuild_locked()?;
        }
        let index = match Index::open(&self.dir("index")) {
            // Derived data whose files are damaged (e.g. after a full disk, or overwritten),
            // or an empty index beside durable data: rebuild it.
            Err(Error::IndexDamaged(_)) => {
                self.rebuild_locked()?;
                Index::open(&self.dir("index"))
            }
            Ok(ix) if ix.is_blank()? && self.has_durable_data()? => {
                drop(ix);
                self.rebuild_locked()?;
                Index::open(&self.dir("index"))
            }
            other => other,
        }
        .map_err(|e| Error::Index(format!("{e} (run `ml-dash repair` to rebuild the index)")))?
        .with_faults(self.opts.faults.clone());
        let s = Session {
            store: self,
            index,
            _lock: lock,
        };
        crate::recover::finish_pending(&s)?;
        Ok(s)
    }

    /// Store a file from disk as a new version of `key`. Symlinks are followed; directories,
    /// FIFOs, sockets and devices are refused. If the file changes while it is read (size or
    /// mtime differ before and after), nothing is recorded and `SourceChanged` is returned.
    pub fn put_file(
        &self,
        src: &Path,
        key: &FileKey,
        v: NewVersion,
        progress: Option<&AtomicU64>,
    ) -> Result<FileRecord> {
        self.put_file_inner(src, key, v, progress, None)
    }

    /// Import: store a file as a new version keeping the timestamps of `imported`. The bytes are
    /// checked against its size and SHA-256 before anything is recorded: on a mismatch the
    /// version is not created (`Error::Corrupt`; chunks already appended are garbage for `gc`).
    pub fn put_file_imported(
        &self,
        src: &Path,
        key: &FileKey,
        v: NewVersion,
        imported: &ImportedVersion,
        progress: Option<&AtomicU64>,
    ) -> Result<FileRecord> {
        self.put_file_inner(src, key, v, progress, Some(imported))
    }

    fn put_file_inner(
        &self,
        src: &Path,
        key: &FileKey,
        v: NewVersion,
        progress: Option<&AtomicU64>,
        imported: Option<&ImportedVersion>,
    ) -> Result<FileRecord> {
        check_new(key, &v)?;
        let meta = fs::metadata(src).at(src)?;
        if meta.is_dir() {
            return Err(Error::invalid(
                "source",
                src.display().to_string(),
                "is a directory",
            ));
        }
        if !meta.is_file() {
            return Err(Error::invalid(
                "source",
                src.display().to_string(),
                "is not a regular file (FIFO, socket or device)",
            ));
        }
        let file = File::open(src).at(src)?;
        let before = file.metadata().at(src)?;
        // A zip archive (PyTorch checkpoints) is laid out from its central directory, at the
        // end; a second handle reads it (a stale layout only changes where chunks are cut).
        let layout = match self.opts.delta_depth {
            0 => None,
            _ => File::open(src)
                .ok()
                .and_then(|mut f| zip_layout(&mut f, before.len())),
        };
        let changed = |reason: String| Error::SourceChanged {
            path: src.to_path_buf(),
            reason,
        };
        let how = How { imported, layout };
        self.put_stream(file, key, v, progress, how, |got| {
            let after =
                fs::metadata(src).map_err(|e| changed(format!("cannot stat it again: {e}")))?;
            if after.len() != before.len() || got != before.len() {
                return Err(changed(format!(
                    "size was {} bytes, read {got}, now {}",
                    before.len(),
                    after.len()
                )));
            }
            if after.modified().ok() != before.modified().ok() {
                return Err(changed("modification time changed".into()));
            }
            Ok(())
        })
    }

    /// Store everything `src` yields as a new version of `key` (e.g. standard input).
    pub fn put_reader(
        &self,
        src: impl Read + Send,
        key: &FileKey,
        v: NewVersion,
        progress: Option<&AtomicU64>,
    ) -> Result<FileRecord> {
        check_new(key, &v)?;
        let how = How {
            imported: None,
            layout: None,
        };
        self.put_stream(src, key, v, progress, how, |_| Ok(()))
    }

    fn put_stream(
        &self,
        src: impl Read + Send,
        key: &FileKey,
        v: NewVersion,
        progress: Option<&AtomicU64>,
        how: How<'_>,
        check_source: impl FnOnce(u64) -> Result<()>,
    ) -> Result<FileRecord> {
        let How { imported, layout } = how;
        self.check_poison()?;
        let s = self.session()?;
        let ix = &s.index;
        let active = match ix.meta_id("active_pack")? {
            Some(id) => ix.pack_len(id)?.map(|len| (id, len)),
            None => None,
        };
        let packs_dir = self.dir("packs");
        let previous = std::sync::OnceLock::new();
        let find_previous = || previous_for(&s, key);
        let pack_files = crate::read::PackFiles::new(packs_dir.clone());
        let cfg = IngestConfig {
            packs_dir: &packs_dir,
            chunker: &self.chunker,
            compression: self.opts.compression,
            pack_target: self.opts.pack_target,
            active,
            progress,
            faults: &self.opts.faults,
            previous: &previous,
            find_previous: &find_previous,
            delta_depth: self.opts.delta_depth,
            layout,
            pack_files: &pack_files,
        };
        // Any failure other than reading the source happened while writing packs: the fate of
        // those bytes is unknown, so the store stops taking writes until reopened.
        let ing = ingest::ingest(src, ix, &cfg).map_err(|e| match e {
            e @ Error::Io { .. } if is_source_error(&e) => e,
            e => self.poison::<()>(Err(e)).unwrap_err(),
        })?;
        check_source(ing.size)?;
        if let Some(imp) = imported
            && (imp.checksum != ing.checksum || imp.size_bytes != ing.size)
        {
            return Err(Error::corrupt(
                key.display(),
                format!(
                    "the record says {} bytes with SHA-256 {}, the bytes are {} with {}",
                    imp.size_bytes, imp.checksum, ing.size, ing.checksum
                ),
            ));
        }

        let version = next_version(ix, key)?;
        let vid = Id::generate_after(ix.meta_id("last_id")?);
        if ix.version(vid)?.is_some() {
            return Err(Error::Index(format!("version id {vid} already exists")));
        }
        let now = crate::time::now_iso();
        let (uploaded_at, updated_at) = match imported {
            Some(imp) => (imp.uploaded_at.clone(), imp.updated_at.clone()),
            None => (now.clone(), now),
        };
        let rec = FileRecord {
            id: vid,
            namespace: key.namespace.clone(),
            project: key.project.clone(),
            experiment: key.experiment.clone(),
            path: key.path.clone(),
            filename: key.filename.clone(),
            version,
            size_bytes: ing.size,
            checksum: ing.checksum,
            content_type: record::content_type(&key.filename).to_string(),
            description: v.description,
            tags: v.tags,
            metadata: v.metadata,
            uploaded_at,
            updated_at,
            deleted_at: None,
            new_bytes: ing.new_bytes,
        };
        self.poison(commit_version(&s, &rec, ing))?;
        Ok(rec)
    }

    /// Versions matching `f`, in path order (ascending version within a path).
    pub fn list(&self, f: &ListFilter) -> Result<Vec<FileRecord>> {
        let s = self.session()?;
        let mut out: Vec<FileRecord> = Vec::new();
        let mut group: Vec<FileRecord> = Vec::new();
        let flush = |group: &mut Vec<FileRecord>, out: &mut Vec<FileRecord>| {
            if f.all_versions {
                out.extend(
                    group
                        .drain(..)
                        .filter(|r| f.include_deleted || !r.is_deleted()),
                );
            } else {
                let latest = group
                    .iter()
                    .rev()
                    .find(|r| f.include_deleted || !r.is_deleted())
                    .cloned();
                out.extend(latest);
                group.clear();
            }
        };
        for r in s.index.scan_versions(&f.scope) {
            let r = r?;
            if !f.matches_path(&r) {
                continue;
            }
            if group.last().is_some_and(|g| g.key() != r.key()) {
                flush(&mut group, &mut out);
            }
            group.push(r);
        }
        flush(&mut group, &mut out);
        out.retain(|r| f.tags.iter().all(|t| r.tags.contains(t)));
        Ok(out)
    }

    /// One version of a path: `version` or the latest live one.
    pub fn resolve(&self, key: &FileKey, version: Option<u32>) -> Result<FileRecord> {
        let s = self.session()?;
        resolve_in(&s, key, version)
    }

    /// Soft-delete every version of a path. Returns the versions hidden.
    pub fn delete(&self, key: &FileKey) -> Result<Vec<FileRecord>> {
        self.check_poison()?;
        let s = self.session()?;
        let live: Vec<FileRecord> = s
            .index
            .versions_of(key)?
            .into_iter()
            .filter_map(|(_, id)| s.index.version(id).transpose())
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|r| !r.is_deleted())
            .collect();
        let Some(last) = live.last() else {
            return Err(Error::NotFound(key.display()));
        };
        let event = Event::Delete {
            id: Id::generate_after(s.index.meta_id("last_id")?),
            namespace: key.namespace.clone(),
            project: key.project.clone(),
            experiment: key.experiment.clone(),
            path: key.path.clone(),
            filename: key.filename.clone(),
            up_to_version: last.version,
            at: crate::time::now_iso(),
        };
        self.poison(commit_event(&s, &event))?;
        // The records as they are now (deleted).
        live.iter()
            .map(|r| {
                s.index
                    .version(r.id)?
                    .ok_or_else(|| Error::Index(format!("version {} vanished", r.id)))
            })
            .collect()
    }

    /// Change description, tags or metadata of one version (absent arguments stay as they are).
    pub fn update(
        &self,
        version_id: Id,
        description: Option<Option<String>>,
        tags: Option<Vec<String>>,
        metadata: Option<serde_json::Value>,
    ) -> Result<FileRecord> {
        if let Some(t) = &tags {
            record::check_tags(t)?;
        }
        if let Some(m) = &metadata {
            record::check_metadata(m)?;
        }
        if let Some(Some(d)) = &description {
            record::check_description(d)?;
        }
        self.check_poison()?;
        let s = self.session()?;
        let rec = s
            .index
            .version(version_id)?
            .ok_or_else(|| Error::NotFound(format!("version {version_id}")))?;
        if rec.is_deleted() {
            return Err(Error::NotFound(format!(
                "{} (deleted)",
                rec.key().display()
            )));
        }
        let event = Event::Update {
            id: Id::generate_after(s.index.meta_id("last_id")?),
            version_id,
            description,
            tags,
            metadata,
            at: crate::time::now_iso(),
        };
        self.poison(commit_event(&s, &event))?;
        s.index
            .version(version_id)?
            .ok_or_else(|| Error::NotFound(format!("version {version_id}")))
    }
}

/// Take an exclusive flock on `lock_path`, polling with backoff for up to `timeout`.
fn acquire_lock(lock_path: &Path, timeout: Duration) -> Result<File> {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(lock_path)
        .at(lock_path)?;
    let start = Instant::now();
    let mut wait = Duration::from_millis(2);
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) => {
                if start.elapsed() >= timeout {
                    return Err(Error::LockTimeout {
                        path: lock_path.to_path_buf(),
                        secs: timeout.as_secs(),
                    });
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(lock_path, e)),
        }
    }
}

/// Lay out a new store in `root` (caller holds the lock). Refuses a directory holding anything
/// but what an interrupted creation leaves: the lock, a FORMAT temp file, our empty directories.
fn create_layout(root: &Path) -> Result<()> {
    check_empty_for_create(root)?;
    let bad = |reason: String| Error::BadStore {
        root: root.to_path_buf(),
        reason,
    };
    for d in ["packs", "manifests", "events", "index"] {
        fs::create_dir_all(root.join(d)).map_err(|e| bad(format!("cannot create {d}/: {e}")))?;
    }
    durable::fsync_dir(root)?;
    let body = serde_json::json!({
        "format": STORE_FORMAT,
        "kind": "ml-dash artifact store",
        "packFormat": crate::pack::PACK_FORMAT,
        "manifestFormat": manifest::FORMAT,
    });
    durable::write_atomic(
        &root.join(FORMAT_FILE),
        format!("{body}\n").as_bytes(),
        &Default::default(),
    )
}

/// Mark a format-1 store as format 2 (under the lock). Failure (a read-only store) is left
/// for the first write to run into.
fn upgrade_format(root: &Path, timeout: Duration) {
    let path = root.join(FORMAT_FILE);
    let is_v1 = |b: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(b)
            .ok()
            .and_then(|v| v.get("format").and_then(|f| f.as_u64()))
            == Some(1)
    };
    if !fs::read(&path).is_ok_and(|b| is_v1(&b)) {
        return;
    }
    let Ok(_lock) = acquire_lock(&root.join("lock"), timeout) else {
        return;
    };
    let Ok(b) = fs::read(&path) else { return };
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&b) else {
        return;
    };
    if !is_v1(&b) {
        return;
    }
    v["format"] = STORE_FORMAT.into();
    let _ = durable::write_atomic(&path, format!("{v}\n").as_bytes(), &Default::default());
}

fn check_empty_for_create(root: &Path) -> Result<()> {
    let bad = |reason: String| Error::BadStore {
        root: root.to_path_buf(),
        reason,
    };
    let leftover = |e: &fs::DirEntry| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name == "lock"
            || name.starts_with(".FORMAT")
            || (["packs", "manifests", "events", "index"].contains(&name.as_ref())
                && fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_none()))
    };
    let entries = fs::read_dir(root).map_err(|e| bad(e.to_string()))?;
    if entries.flatten().any(|e| !leftover(&e)) {
        return Err(bad(
            "directory is not empty and has no FORMAT file: not an ml-dash store".into(),
        ));
    }
    Ok(())
}

fn is_source_error(e: &Error) -> bool {
    matches!(e, Error::Io { path, .. } if path == Path::new(ingest::SOURCE))
}

fn check_new(key: &FileKey, v: &NewVersion) -> Result<()> {
    // Keys come from `path::` constructors, but a FileKey is a plain struct: check again.
    for (what, s) in [
        ("namespace", &key.namespace),
        ("project", &key.project),
        ("experiment", &key.experiment),
        ("file name", &key.filename),
    ] {
        crate::path::segment(what, s)?;
    }
    if crate::path::prefix(&key.path)? != key.path {
        return Err(Error::invalid(
            "prefix",
            key.path.clone(),
            "is not normalized",
        ));
    }
    record::check_tags(&v.tags)?;
    record::check_metadata(&v.metadata)?;
    if let Some(d) = &v.description {
        record::check_description(d)?;
    }
    Ok(())
}

/// The version a new upload of `key` may store deltas against: the latest live version of
/// `key`, else the newest live file with the same extension in the same experiment and
/// prefix (checkpoints are often saved under a new name each time), if it is a safetensors
/// file. Anything unreadable just means no deltas (verify reports damage).
fn previous_for(s: &Session<'_>, key: &FileKey) -> Option<Previous> {
    let ix = &s.index;
    let live = |id: Id| ix.version(id).ok().flatten().filter(|r| !r.is_deleted());
    let own = ix
        .versions_of(key)
        .ok()?
        .iter()
        .rev()
        .find_map(|(_, id)| live(*id));
    let rec = match own {
        Some(r) => r,
        None => {
            let ext = key.filename.rsplit_once('.').map(|x| x.1)?;
            let scope = Scope {
                namespace: Some(key.namespace.clone()),
                project: Some(key.project.clone()),
                experiment: Some(key.experiment.clone()),
            };
            ix.scan_versions(&scope)
                .filter_map(|r| r.ok())
                .filter(|r| {
                    !r.is_deleted()
                        && r.path == key.path
                        && r.filename.rsplit_once('.').map(|x| x.1) == Some(ext)
                })
                .max_by_key(|r| r.id)?
        }
    };
    let mut r = crate::read::open_reader(s, rec).ok()?;
    let mut first = vec![0u8; 8];
    r.read_exact(&mut first).ok()?;
    let n = u64::from_le_bytes(first[..8].try_into().ok()?);
    let layout = if n <= crate::tensors::MAX_HEADER && n < r.len() {
        first.resize(8 + n as usize, 0);
        r.read_exact(&mut first[8..]).ok()?;
        crate::tensors::Layout::safetensors(&first)
    } else {
        None
    };
    let layout = match layout {
        Some(l) => l,
        None => {
            let len = r.len();
            zip_layout(&mut r, len)?
        }
    };
    let (chunks, located) = r.into_parts();
    let chunk_at = chunks
        .into_iter()
        .map(|(start, id, loc)| (start, (id, loc.raw_len, loc)))
        .collect();
    Some(Previous {
        layout,
        chunk_at,
        located,
    })
}

/// The layout of a zip archive (`tensors::Layout::zip`), if `r` starts like one.
fn zip_layout<R: Read + std::io::Seek>(r: &mut R, len: u64) -> Option<crate::tensors::Layout> {
    let mut magic = [0u8; 4];
    r.seek(std::io::SeekFrom::Start(0)).ok()?;
    r.read_exact(&mut magic).ok()?;
    if magic != *b"PK\x03\x04" {
        return None;
    }
    crate::tensors::Layout::zip(r, len)
}

fn next_version(ix: &Index, key: &FileKey) -> Result<u32> {
    let last = ix.versions_of(key)?.last().map_or(0, |(v, _)| *v);
    last.max(ix.deleted_up_to(key)?)
        .checked_add(1)
        .filter(|v| *v <= record::MAX_VERSION)
        .ok_or_else(|| {
            Error::invalid(
                "path",
                key.display(),
                "has no version numbers left (the last is 2147483647)",
            )
        })
}

pub(crate) fn resolve_in(
    s: &Session<'_>,
    key: &FileKey,
    version: Option<u32>,
) -> Result<FileRecord> {
    let versions = s.index.versions_of(key)?;
    for (v, id) in versions.iter().rev() {
        if version.is_some_and(|want| want != *v) {
            continue;
        }
        let r = s
            .index
            .version(*id)?
            .ok_or_else(|| Error::Index(format!("missing version {id}")))?;
        if !r.is_deleted() {
            return Ok(r);
        }
        if version.is_some() {
            return Err(Error::NotFound(format!(
                "{} version {} (deleted)",
                key.display(),
                v
            )));
        }
    }
    Err(Error::NotFound(match version {
        Some(v) => format!("{} version {v}", key.display()),
        None => key.display(),
    }))
}

/// Write order: packs fsynced and their chunk locations recorded (by ingest) → pending marker
/// and index flush →
/// manifest durable → version in the index. A crash between steps leaves either nothing visible
/// or, via the pending marker, a version that `finish_pending` completes on the next open.
fn commit_version(s: &Session<'_>, rec: &FileRecord, ing: Ingested) -> Result<()> {
    // Chunk locations and pack lengths are already in the index (ingest records them after each
    // pack's fsync); this flush makes them durable together with the pending marker.
    let mut b = IndexBatch::default();
    if let Some((id, _)) = ing.packs.last() {
        b.set_meta("active_pack", &id.0);
    }
    b.set_meta("pending", &rec.id.0);
    b.set_meta("last_id", &rec.id.0);
    s.index.apply(b)?;
    let m = Manifest {
        format: manifest::FORMAT,
        record: rec.clone(),
        chunks: ing.chunks,
    };
    durable::write_atomic(
        &s.store.manifest_path(rec.id),
        &m.encode(),
        &s.store.opts.faults,
    )?;
    let mut b = IndexBatch::default();
    b.put_version(rec);
    b.remove_meta("pending");
    s.index.apply(b)
}

fn commit_event(s: &Session<'_>, e: &Event) -> Result<()> {
    let mut b = IndexBatch::default();
    b.set_meta("pending", &e.id().0);
    b.set_meta("last_id", &e.id().0);
    s.index.apply(b)?;
    durable::write_atomic(
        &s.store.event_path(e.id()),
        &manifest::encode_event(e),
        &s.store.opts.faults,
    )?;
    let mut b = crate::recover::event_batch(&s.index, e)?;
    b.remove_meta("pending");
    s.index.apply(b)
}

/// What `list` shows.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub scope: Scope,
    /// A normalized prefix; matches whole segments.
    pub prefix: Option<String>,
    /// Every tag must be present.
    pub tags: Vec<String>,
    /// Matched against the full path (`/a/b/name`), or the file name when it has no `/`
    /// (`crate::glob`: `*` stays inside a segment, `**` crosses segments).
    pub glob: Option<crate::glob::Glob>,
    pub all_versions: bool,
    pub include_deleted: bool,
}

impl ListFilter {
    fn matches_path(&self, r: &FileRecord) -> bool {
        if let Some(p) = &self.prefix
            && !crate::path::under(&r.path, p)
        {
            return false;
        }
        if let Some(g) = &self.glob
            && !g.matches(r)
        {
            return false;
        }
        true
    }
}
