//! The store: one directory of packs, manifests, events and journals, and the sled index
//! derived from them, opened per operation under a lock. Everything here does I/O; the bytes'
//! layout is `format`'s. The store directory and every file in it: docs/format.md.
//!
//! sled admits one process at a time, so every operation takes the exclusive lock on
//! `<root>/lock`, opens the index, does its work, flushes and closes the index, and releases the
//! lock. A `Store` value (or an `Experiment`) holds no lock between operations, so a training run
//! that keeps its experiment open for days never locks out `ml-dash list` in another terminal;
//! concurrent callers wait for the lock (up to `lock_timeout`) instead of failing.

pub(crate) mod batch;
pub(crate) mod durable;
pub mod fault;
pub mod findings;
pub(crate) mod gc;
pub mod index;
pub(crate) mod ingest;
pub(crate) mod journal;
#[cfg(feature = "remote")]
pub(crate) mod journal_sync;
mod list;
pub mod packs;
pub mod read;
pub(crate) mod recover;
pub(crate) mod retention;
pub(crate) mod stats;
pub(crate) mod tokens;
pub(crate) mod tree;
pub(crate) mod verify;
pub(crate) mod write;

pub use batch::UploadBatch;
pub use list::ListFilter;
pub(crate) use list::resolve_in;
pub(crate) use write::ImportedVersion;
pub use write::{NewVersion, RecordChanges};

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::format::chunker::{Chunker, ChunkerConfig};
use crate::format::codec::Compression;
use crate::format::id::Id;
use crate::format::manifest::{self};
use crate::store::index::Index;

/// 2: format 1 plus delta records (codec 4), delta bases in index values and remote pack
/// indexes. 3: format 2 plus Huffman-coded byte planes (codec 5). An older store is marked 3
/// when this version opens it, so older versions refuse it instead of misreading the records
/// they do not know as damage.
pub const STORE_FORMAT: u32 = 3;
/// Default for `StoreOptions::delta_depth`.
pub const DEFAULT_DELTA_DEPTH: u8 = 2;
const FORMAT_FILE: &str = "FORMAT";

/// How many bytes an ingest reads, or a download decodes, ahead of hashing them: few enough
/// that the SHA-256 and BLAKE3 passes find them still in the CPU cache (on the reference
/// machine SHA-256 runs at 1.75 GiB/s over cached bytes and at 1.1 GiB/s over bytes that went
/// back to memory, and 2 MiB beat 4 and 8 MiB), growing with the worker threads so that more
/// cores get chunks to work on, up to 8 MiB (sizes above 2 MiB were not measured on machines
/// with more cores).
pub(crate) fn hot_bytes() -> usize {
    (rayon::current_num_threads() << 20).clamp(2 << 20, 8 << 20)
}
/// Store settings. Builder-style setters document their defaults.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub(crate) chunker: ChunkerConfig,
    pub(crate) compression: Compression,
    pub(crate) pack_target: u64,
    pub(crate) lock_timeout: Duration,
    pub(crate) faults: crate::store::fault::Faults,
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
    /// How a new store cuts files into chunks (default hash16, min 16 KiB / avg 64 KiB / max
    /// 256 KiB). It is recorded in the store's `FORMAT` file; an existing store keeps its
    /// recorded chunker whatever is given here (`Store::set_chunker` changes it), and a store
    /// made before chunkers were recorded cuts with FastCDC at these sizes.
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
    #[cfg(feature = "testing")]
    pub fn faults(mut self, f: crate::store::fault::Faults) -> Self {
        self.faults = f;
        self
    }
    /// Longest chain of deltas a new tensor piece may be stored at the end of (default 2; 0
    /// turns deltas off; at most 15). A read of a
    /// piece at depth d decodes d + 1 records, so this bounds read cost; after d deltas in a
    /// row a piece is stored whole again.
    pub fn delta_depth(mut self, d: u8) -> Self {
        self.delta_depth = d.min(crate::format::delta::MAX_DEPTH);
        self
    }
    /// How long an operation waits for another process's operation (default 10 minutes).
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.lock_timeout = d;
        self
    }
}

/// An open store. Cheap to clone; holds no lock between operations.
///
/// ```
/// use ml_dash::{ExperimentKey, GcOptions, ListFilter, NewVersion, Store};
///
/// # fn main() -> ml_dash::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let store = Store::open(dir.path().join("store"))?;
/// let key = ExperimentKey::new("local", "vision", "run-1")?
///     .file("/checkpoints".into(), "step-100.bin".into());
/// let rec = store.put_reader(&b"weights"[..], &key, NewVersion::default(), None)?;
/// assert_eq!((rec.version, rec.size_bytes), (1, 7));
///
/// let mut back = Vec::new();
/// store.download_to(&key, None, &mut back)?; // every chunk and the SHA-256 checked
/// assert_eq!(back, b"weights");
///
/// store.delete(&key)?; // soft: the bytes stay until gc
/// assert!(store.list(&ListFilter::default())?.is_empty());
/// let freed = store.gc(&GcOptions::new())?;
/// assert_eq!(freed.deleted_versions, 1);
/// assert!(store.verify()?.ok);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Store {
    pub(crate) root: PathBuf,
    pub(crate) opts: StoreOptions,
    pub(crate) chunker: Chunker,
    poisoned: Arc<Mutex<Option<String>>>,
    /// `FORMAT` is known to say `STORE_FORMAT` (see `Session::ensure_format`).
    format_current: Arc<std::sync::atomic::AtomicBool>,
}

/// One operation's hold on the store: the lock and the open index.
pub(crate) struct Session<'a> {
    pub store: &'a Store,
    pub index: Index,
    _lock: File,
}
/// Take an exclusive flock on `lock_path`, polling with backoff for up to `timeout`.
fn acquire_lock(lock_path: &Path, timeout: Duration) -> Result<File> {
    acquire_flock(lock_path, timeout, true)
}
/// Take a flock on `lock_path` (exclusive or shared), polling with backoff for up to `timeout`.
fn acquire_flock(lock_path: &Path, timeout: Duration, exclusive: bool) -> Result<File> {
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
        let got = match exclusive {
            true => lock.try_lock(),
            false => lock.try_lock_shared(),
        };
        match got {
            Ok(()) => return Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) => {
                crate::interrupt::check()?;
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
fn create_layout(
    root: &Path,
    chunker: ChunkerConfig,
    faults: &crate::store::fault::Faults,
) -> Result<()> {
    check_empty_for_create(root)?;
    let bad_io = |reason: String, e: std::io::Error| Error::BadStore {
        root: root.to_path_buf(),
        reason,
        source: Some(e),
    };
    for d in ["packs", "manifests", "events", "index"] {
        fs::create_dir_all(root.join(d))
            .map_err(|e| bad_io(format!("cannot create {d}/: {e}"), e))?;
    }
    durable::fsync_dir(root, faults)?;
    let body = serde_json::json!({
        "format": STORE_FORMAT,
        "kind": "ml-dash artifact store",
        "packFormat": crate::format::pack::PACK_FORMAT,
        "manifestFormat": manifest::FORMAT,
        "chunker": chunker.to_json(),
    });
    durable::write_atomic(
        &root.join(FORMAT_FILE),
        format!("{body}\n").as_bytes(),
        faults,
    )
}
/// Mark an older store as `STORE_FORMAT` (under the lock). Failure (a read-only store) is
/// left for the first write to run into.
fn upgrade_format(root: &Path, timeout: Duration, faults: &crate::store::fault::Faults) {
    let path = root.join(FORMAT_FILE);
    let is_old = |b: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(b)
            .ok()
            .and_then(|v| v.get("format").and_then(|f| f.as_u64()))
            .is_some_and(|f| f < u64::from(STORE_FORMAT))
    };
    if !fs::read(&path).is_ok_and(|b| is_old(&b)) {
        return;
    }
    let Ok(_lock) = acquire_lock(&root.join("lock"), timeout) else {
        return;
    };
    let Ok(b) = fs::read(&path) else { return };
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&b) else {
        return;
    };
    if !is_old(&b) {
        return;
    }
    v["format"] = STORE_FORMAT.into();
    let _ = durable::write_atomic(&path, format!("{v}\n").as_bytes(), faults);
}
impl Session<'_> {
    /// Before anything is written: make sure `FORMAT` says `STORE_FORMAT`. Opening tries to
    /// mark an older store, but a lock that times out or a write that fails leaves it as it
    /// was; writing records of the current format into it would let older versions read them
    /// as damage. Holds the store lock (it is a session); checked once per `Store`.
    pub(crate) fn ensure_format(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let store = self.store;
        if store.format_current.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut v = read_format(&store.root)?;
        if v.get("format").and_then(|f| f.as_u64()) < Some(u64::from(STORE_FORMAT)) {
            v["format"] = STORE_FORMAT.into();
            durable::write_atomic(
                &store.root.join(FORMAT_FILE),
                format!("{v}\n").as_bytes(),
                &store.opts.faults,
            )?;
        }
        store.format_current.store(true, Ordering::Release);
        Ok(())
    }
}

/// `root`'s `FORMAT` file as JSON.
fn read_format(root: &Path) -> Result<serde_json::Value> {
    let path = root.join(FORMAT_FILE);
    let b = fs::read(&path).at(&path)?;
    serde_json::from_slice(&b).map_err(|_| Error::BadStore {
        root: root.to_path_buf(),
        reason: "FORMAT file is damaged".into(),
        source: None,
    })
}
/// The chunker `root`'s `FORMAT` file records; FastCDC at the sizes of `given` for a store
/// that records none (made before chunkers were recorded).
fn recorded_chunker(root: &Path, given: ChunkerConfig) -> Result<ChunkerConfig> {
    match read_format(root)?.get("chunker") {
        None => Ok(given.fastcdc()),
        Some(c) => ChunkerConfig::from_json(c).map_err(|reason| Error::BadStore {
            root: root.to_path_buf(),
            reason: format!("FORMAT file: {reason}"),
            source: None,
        }),
    }
}
fn check_empty_for_create(root: &Path) -> Result<()> {
    let bad = |reason: String| Error::BadStore {
        root: root.to_path_buf(),
        reason,
        source: None,
    };
    let bad_io = |reason: String, e: std::io::Error| Error::BadStore {
        root: root.to_path_buf(),
        reason,
        source: Some(e),
    };
    let leftover = |e: &fs::DirEntry| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name == "lock"
            || name.starts_with(".FORMAT")
            || (["packs", "manifests", "events", "index"].contains(&name.as_ref())
                && fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_none()))
    };
    let entries = fs::read_dir(root).map_err(|e| bad_io(e.to_string(), e))?;
    if entries.flatten().any(|e| !leftover(&e)) {
        return Err(bad(
            "directory is not empty and has no FORMAT file: not an ml-dash store".into(),
        ));
    }
    Ok(())
}

impl Store {
    /// Open the store at `root`, creating it if the directory is missing or empty.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(root, StoreOptions::default())
    }
    /// `open` with options.
    pub fn open_with(root: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        Store::open_inner(root.as_ref(), opts, true)
    }
    /// Open an existing store; never creates one (for read-only commands).
    pub fn open_existing(root: impl AsRef<Path>) -> Result<Store> {
        Store::open_existing_with(root, StoreOptions::default())
    }
    /// `open_existing` with options.
    pub fn open_existing_with(root: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        Store::open_inner(root.as_ref(), opts, false)
    }
    fn open_inner(root: &Path, opts: StoreOptions, create: bool) -> Result<Store> {
        // A new store records its chunker: refuse a bad one before creating anything.
        if create {
            Chunker::new(opts.chunker)?;
        }
        let root = root.to_path_buf();
        let bad = |reason: String| Error::BadStore {
            root: root.clone(),
            reason,
            source: None,
        };
        let bad_io = |reason: String, e: std::io::Error| Error::BadStore {
            root: root.clone(),
            reason,
            source: Some(e),
        };
        match fs::metadata(&root) {
            Ok(m) if !m.is_dir() => return Err(bad("exists and is not a directory".into())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                fs::create_dir_all(&root)
                    .map_err(|e| bad_io(format!("cannot create it: {e}"), e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad(
                    "no ml-dash store here (the first upload creates one)".into()
                ));
            }
            Err(e) => return Err(bad_io(e.to_string(), e)),
        }
        let format_path = root.join(FORMAT_FILE);
        let check_format = |b: &[u8]| -> Result<()> {
            let v: serde_json::Value =
                serde_json::from_slice(b).map_err(|_| bad("FORMAT file is damaged".into()))?;
            if !matches!(v.get("format").and_then(|f| f.as_u64()), Some(1..=3)) {
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
                    Err(_) => {
                        create_layout(&root, opts.chunker, &opts.faults).map_err(|e| match e {
                            Error::BadStore { .. } => e,
                            other => bad(other.to_string()),
                        })?;
                    }
                }
            }
            Err(e) => return Err(bad_io(e.to_string(), e)),
        }
        Store::finish_open(root, opts)
    }
    fn finish_open(root: PathBuf, opts: StoreOptions) -> Result<Store> {
        upgrade_format(&root, opts.lock_timeout, &opts.faults);
        let chunker = Chunker::new(recorded_chunker(&root, opts.chunker)?)?;
        Ok(Store {
            root,
            opts,
            chunker,
            poisoned: Arc::new(Mutex::new(None)),
            format_current: Arc::default(),
        })
    }
    /// Does any pack, manifest or event exist?
    fn has_durable_data(&self) -> Result<bool> {
        for d in ["packs", "manifests", "events"] {
            let dir = self.dir(d);
            let mut it = fs::read_dir(&dir).at(&dir)?;
            // Packs of uploads not committed yet hold nothing a rebuild would find.
            let counts = |name: &str| {
                !name.starts_with('.')
                    && !name.ends_with(&format!(".{}", crate::format::pack::INCOMING_EXT))
            };
            if it.any(|e| e.is_ok_and(|e| counts(&e.file_name().to_string_lossy()))) {
                return Ok(true);
            }
        }
        Ok(false)
    }
    /// How this handle cuts files into chunks: the chunker the store's `FORMAT` file recorded
    /// when it was opened.
    pub fn chunker(&self) -> ChunkerConfig {
        self.chunker.config()
    }
    /// Record `c` as the chunker of every upload from now on, in the store's `FORMAT` file.
    ///
    /// Handles opened before keep the chunker they opened with. Stored versions are not
    /// touched: they read as before, and files chunked by content dedup against them again
    /// only from their next upload on (tensor files cut on their tensor grid are not affected).
    pub fn set_chunker(&self, c: ChunkerConfig) -> Result<()> {
        Chunker::new(c)?;
        let _lock = self.lock()?;
        let mut v = read_format(&self.root)?;
        v["chunker"] = c.to_json();
        self.poison(durable::write_atomic(
            &self.root.join(FORMAT_FILE),
            format!("{v}\n").as_bytes(),
            &self.opts.faults,
        ))
    }
    /// The store directory.
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
    /// Take the writers' lock (waiting up to `lock_timeout`): shared by every upload and pull
    /// for its whole run (an upload outside the store lock from before its snapshot of the
    /// index until its commit), and by a dry-run gc; exclusive for gc and repair, the only
    /// operations that move or remove chunks. Always taken before the store lock, never while
    /// holding it.
    pub(crate) fn writers_lock(&self, exclusive: bool) -> Result<File> {
        acquire_flock(
            &self.root.join("writers"),
            self.opts.lock_timeout,
            exclusive,
        )
    }
    /// Take the lock, open the index and finish any commit a crash interrupted.
    ///
    /// The index is derived data: if it is missing (deleted, or never built by this version)
    /// while the store holds packs, manifests or events, or sled reports its files damaged, it
    /// is rebuilt here first, so a lost index never looks like an empty store (and never
    /// restarts version numbers).
    pub(crate) fn session(&self) -> Result<Session<'_>> {
        self.session_with(self.lock()?)
    }
    /// `session`, waiting for the lock up to `wait` instead of `lock_timeout` (if longer).
    pub(crate) fn session_waiting(&self, wait: Duration) -> Result<Session<'_>> {
        let lock = acquire_lock(&self.root.join("lock"), wait.max(self.opts.lock_timeout))?;
        self.session_with(lock)
    }
    fn session_with(&self, lock: File) -> Result<Session<'_>> {
        if !self.dir("index").join("conf").exists() && self.has_durable_data()? {
            self.rebuild_locked()?;
        }
        let index = match Index::open(&self.dir("index")) {
            // Derived data whose files are damaged (e.g. after a full disk, or overwritten),
            // or an empty index beside durable data: rebuild it.
            Err(Error::IndexDamaged { .. }) => {
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
        .map_err(|e| match e {
            // Keep the index library's error as the source; add what the user can do.
            Error::Index { reason, source } => Error::Index {
                reason: format!("{reason} (run `ml-dash repair` to rebuild the index)"),
                source,
            },
            other => other,
        })?
        .with_faults(self.opts.faults.clone());
        let s = Session {
            store: self,
            index,
            _lock: lock,
        };
        crate::store::recover::finish_pending(&s)?;
        Ok(s)
    }
}
