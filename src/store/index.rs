//! The sled index: the only module that imports sled.
//!
//! The index is derived data (rebuilt from packs, manifests and events by `Store::rebuild_index`),
//! but for the `s` proofs, which a rebuild drops (reads of those versions then hash whole files).
//! Everything lives in one sled tree so that one `Batch` updates it atomically:
//!
//! | key | value |
//! |---|---|
//! | `c` chunk id (32) | `ChunkLoc` (33 bytes; 65 for a delta: its base id follows) |
//! | `v` version id (16) | the version's `FileRecord` as JSON |
//! | `p` ns `\0` project `\0` experiment `\0` path `\0` filename `\0` version (u32 BE) | version id |
//! | `d` ns `\0` ... filename `\0` | highest version ever deleted (u32 BE), kept after gc |
//! | `x` version id (16) | empty: the version was deleted by id (a `DeleteVersions` event), kept after gc |
//! | `k` pack id (16) | committed length of the pack (u64 LE) |
//! | `s` version id (16) | BLAKE3 of the version's manifest file whose chunks an upload (as it stored them) or a `verify` hashed to the record's SHA-256 |
//! | `m` name | store metadata: `format`, `active_pack`, `last_id`, `pending`, `gc_generation` |

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::digest::ChunkId;
use crate::format::id::Id;
use crate::format::names::FileKey;
use crate::format::pack::ChunkLoc;
use crate::format::record::FileRecord;

pub const INDEX_FORMAT: u32 = 1;

/// Where chunks are: the index itself, or a snapshot of its chunk locations that an upload
/// reads without the store lock (`Snapshot`).
pub(crate) trait ChunkLookup: Sync {
    fn chunk_loc(&self, id: &ChunkId) -> Result<Option<ChunkLoc>>;
}

impl ChunkLookup for Index {
    fn chunk_loc(&self, id: &ChunkId) -> Result<Option<ChunkLoc>> {
        self.chunk(id)
    }
}

/// Every chunk location the index held when it was taken (under the store lock): what an
/// upload that ingests outside the lock deduplicates against. Chunks committed after it was
/// taken are stored again (and reclaimed by gc); chunks in it stay where it says for as long as
/// the taker holds the writers' lock (`Store::writers_lock`), since only gc and repair move or
/// remove chunks, and they take that lock exclusively.
pub(crate) struct Snapshot {
    chunks: std::collections::HashMap<ChunkId, ChunkLoc>,
}

impl Snapshot {
    pub(crate) fn take(ix: &Index) -> Result<Snapshot> {
        let chunks = ix.chunks().collect::<Result<_>>()?;
        Ok(Snapshot { chunks })
    }

    #[cfg(feature = "testing")]
    pub(crate) fn len(&self) -> usize {
        self.chunks.len()
    }
}

impl ChunkLookup for Snapshot {
    fn chunk_loc(&self, id: &ChunkId) -> Result<Option<ChunkLoc>> {
        Ok(self.chunks.get(id).copied())
    }
}

#[derive(Clone)]
pub struct Index {
    db: sled::Db,
    faults: crate::store::fault::Faults,
}

fn ie(e: sled::Error) -> Error {
    Error::Index {
        reason: e.to_string(),
        source: Some(Box::new(e)),
    }
}

fn path_prefix(parts: &[&str]) -> Vec<u8> {
    let mut k = vec![b'p'];
    for p in parts {
        k.extend_from_slice(p.as_bytes());
        k.push(0);
    }
    k
}

fn file_key_bytes(tag: u8, key: &FileKey) -> Vec<u8> {
    let mut k = path_prefix(&[
        &key.namespace,
        &key.project,
        &key.experiment,
        &key.path,
        &key.filename,
    ]);
    k[0] = tag;
    k
}

fn id_from(b: &[u8]) -> Result<Id> {
    b.try_into()
        .map(Id)
        .map_err(|_| Error::index("bad id value"))
}

/// Which versions to scan: any leading part of (namespace, project, experiment).
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this project (of the namespace, if one is given).
    pub project: Option<String>,
    /// Only this experiment.
    pub experiment: Option<String>,
}

impl Scope {
    fn key_prefix(&self) -> Vec<u8> {
        let mut parts: Vec<&str> = vec![];
        for p in [&self.namespace, &self.project, &self.experiment] {
            match p {
                Some(s) => parts.push(s),
                None => break,
            }
        }
        path_prefix(&parts)
    }

    /// Is `r` in scope?
    pub fn matches(&self, r: &FileRecord) -> bool {
        self.namespace.as_ref().is_none_or(|n| *n == r.namespace)
            && self.project.as_ref().is_none_or(|p| *p == r.project)
            && self.experiment.as_ref().is_none_or(|e| *e == r.experiment)
    }
}

/// How long `Index::open` waits for a lingering handle of this process to let go of the index.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Wait until the flock sled takes on `db` is free (and let go of it at once), as it is once our
/// own previous handle has finished closing; for up to `deadline`. False if it is still held
/// then.
fn wait_for_sled_lock(db: &Path, deadline: std::time::Instant) -> bool {
    let Ok(f) = std::fs::File::open(db) else {
        return true; // a new index, or one sled will report on
    };
    loop {
        match f.try_lock() {
            Ok(()) => return true, // released when `f` is dropped
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(std::fs::TryLockError::WouldBlock) => return false,
            Err(std::fs::TryLockError::Error(_)) => return true,
        }
    }
}

/// sled's refusal to open because another handle holds its file lock. sled reports it as a
/// plain I/O error of kind `Other`; only its message tells it from damaged files.
fn is_sled_lock_refusal(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::Other
        && io.to_string().starts_with("could not acquire lock"))
}

impl Index {
    /// Open (or create) the index in `dir`.
    ///
    /// Callers hold the store lock, so no other process has the index open. sled drops its own
    /// file lock (an flock on `db`) asynchronously: a background thread may hold the last
    /// reference for a while after `Db` is dropped, longer on a loaded machine. So wait, for up
    /// to two minutes, until that flock is free. A lock still held then is an error of its
    /// own, never taken for damage: rebuilding would drop whatever is unreadable at that
    /// moment from the index.
    pub fn open(dir: &Path) -> Result<Index> {
        Index::open_waiting(dir, SLED_LOCK_WAIT)
    }
    /// `open`, waiting up to `wait` for the index's file lock.
    pub(crate) fn open_waiting(dir: &Path, wait: std::time::Duration) -> Result<Index> {
        let deadline = std::time::Instant::now() + wait;
        let held = || Error::Index {
            reason: format!(
                "the index in {} is still held by another handle after {:.0?}",
                dir.display(),
                wait
            ),
            source: None,
        };
        let db = loop {
            if !wait_for_sled_lock(&dir.join("db"), deadline) {
                return Err(held());
            }
            match sled::Config::new()
                .path(dir)
                .cache_capacity(64 << 20)
                .flush_every_ms(None)
                .open()
            {
                Ok(db) => break db,
                // Taken again between our look and sled's: wait again.
                Err(e) if is_sled_lock_refusal(&e) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(held());
                    }
                }
                // A refusal of the file system to let us in is reported as it is.
                Err(sled::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::PermissionDenied
                            | std::io::ErrorKind::ReadOnlyFilesystem
                            | std::io::ErrorKind::StorageFull
                            | std::io::ErrorKind::QuotaExceeded
                            | std::io::ErrorKind::WouldBlock
                    ) =>
                {
                    return Err(ie(sled::Error::Io(e)));
                }
                // Anything else means the index's files are not what sled wrote: derived
                // data, rebuilt by the caller.
                Err(e) => {
                    return Err(Error::IndexDamaged {
                        reason: e.to_string(),
                        source: Some(Box::new(e)),
                    });
                }
            }
        };
        let ix = Index {
            db,
            faults: Default::default(),
        };
        match ix.meta("format")? {
            None => {
                ix.db
                    .insert(b"mformat", &INDEX_FORMAT.to_le_bytes())
                    .map_err(ie)?;
            }
            Some(v) if v == INDEX_FORMAT.to_le_bytes() => {}
            Some(_) => {
                return Err(Error::IndexDamaged {
                    reason: "unsupported index format".into(),
                    source: None,
                });
            }
        }
        Ok(ix)
    }

    /// Does the index hold nothing but its own metadata (no chunk, version, path, deletion or
    /// pack entry)? An index like that beside durable data is not the store's index.
    pub fn is_blank(&self) -> Result<bool> {
        for p in [b"c", b"v", b"p", b"d", b"k"] {
            if self
                .db
                .scan_prefix(p)
                .next()
                .transpose()
                .map_err(ie)?
                .is_some()
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Route this handle's flushes through an injected-fault plan (tests).
    pub fn with_faults(mut self, faults: crate::store::fault::Faults) -> Index {
        self.faults = faults;
        self
    }

    pub fn flush(&self) -> Result<()> {
        self.faults
            .check(crate::store::fault::FaultKind::Sync, Path::new("index"))?;
        self.db.flush().map(|_| ()).map_err(ie)
    }

    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let mut k = vec![b'm'];
        k.extend_from_slice(name.as_bytes());
        Ok(self.db.get(k).map_err(ie)?.map(|v| v.to_vec()))
    }

    pub fn meta_id(&self, name: &str) -> Result<Option<Id>> {
        self.meta(name)?.map(|v| id_from(&v)).transpose()
    }

    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkLoc>> {
        let mut k = [0u8; 33];
        k[0] = b'c';
        k[1..].copy_from_slice(id.as_bytes());
        match self.db.get(k).map_err(ie)? {
            None => Ok(None),
            Some(v) => ChunkLoc::decode(&v)
                .map(Some)
                .ok_or_else(|| Error::index(format!("bad location for chunk {id}"))),
        }
    }

    pub fn chunks(&self) -> impl Iterator<Item = Result<(ChunkId, ChunkLoc)>> + '_ {
        self.db.scan_prefix(b"c").map(|kv| {
            let (k, v) = kv.map_err(ie)?;
            let id = ChunkId(crate::format::digest::Digest(
                k[1..]
                    .try_into()
                    .map_err(|_| Error::index("bad chunk key"))?,
            ));
            let loc = ChunkLoc::decode(&v)
                .ok_or_else(|| Error::index(format!("bad location for chunk {id}")))?;
            Ok((id, loc))
        })
    }

    pub fn version(&self, id: Id) -> Result<Option<FileRecord>> {
        let mut k = vec![b'v'];
        k.extend_from_slice(&id.0);
        match self.db.get(k).map_err(ie)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| Error::index(e.to_string())),
        }
    }

    /// The BLAKE3 of version `id`'s manifest file when an upload in this store wrote it, or a
    /// `verify` hashed its bytes whole (see `IndexBatch::put_proof`).
    pub fn proof(&self, id: Id) -> Result<Option<[u8; 32]>> {
        let mut k = vec![b's'];
        k.extend_from_slice(&id.0);
        Ok(self
            .db
            .get(k)
            .map_err(ie)?
            .and_then(|v| <[u8; 32]>::try_from(&v[..]).ok()))
    }

    /// Every version of one path: `(version, id)` ascending.
    pub fn versions_of(&self, key: &FileKey) -> Result<Vec<(u32, Id)>> {
        let prefix = file_key_bytes(b'p', key);
        self.db
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(ie)?;
                let ver = k[prefix.len()..]
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| Error::index("bad path key"))?;
                Ok((ver, id_from(&v)?))
            })
            .collect()
    }

    /// Highest version number of a path ever deleted (kept after gc drops the versions).
    pub fn deleted_up_to(&self, key: &FileKey) -> Result<u32> {
        Ok(self
            .db
            .get(file_key_bytes(b'd', key))
            .map_err(ie)?
            .and_then(|v| v.as_ref().try_into().ok().map(u32::from_be_bytes))
            .unwrap_or(0))
    }

    /// Was version `id` deleted by id (retention), possibly long ago and collected since?
    pub fn is_dropped(&self, id: Id) -> Result<bool> {
        let mut k = vec![b'x'];
        k.extend_from_slice(&id.0);
        self.db.contains_key(k).map_err(ie)
    }

    /// Is `r` covered by a delete: its number is at or below the highest deleted version of its
    /// path, or it was deleted by id. Such a version never comes back (by pull or rebuild).
    pub fn covered_by_delete(&self, r: &FileRecord) -> Result<bool> {
        Ok(r.version <= self.deleted_up_to(&r.key())? || self.is_dropped(r.id)?)
    }

    /// All versions in scope, in (namespace, project, experiment, path, filename, version) order.
    pub fn scan_versions(&self, scope: &Scope) -> impl Iterator<Item = Result<FileRecord>> + '_ {
        let scope = scope.clone();
        self.db
            .scan_prefix(scope.key_prefix())
            .filter_map(move |kv| {
                let r = (|| {
                    let (_, v) = kv.map_err(ie)?;
                    let id = id_from(&v)?;
                    self.version(id)?
                        .ok_or_else(|| Error::index(format!("path entry without version {id}")))
                })();
                match r {
                    Ok(rec) if !scope.matches(&rec) => None,
                    other => Some(other),
                }
            })
    }

    pub fn pack_len(&self, id: Id) -> Result<Option<u64>> {
        let mut k = vec![b'k'];
        k.extend_from_slice(&id.0);
        Ok(self
            .db
            .get(k)
            .map_err(ie)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_le_bytes)))
    }

    pub fn packs(&self) -> Result<Vec<(Id, u64)>> {
        self.db
            .scan_prefix(b"k")
            .map(|kv| {
                let (k, v) = kv.map_err(ie)?;
                let len = v
                    .as_ref()
                    .try_into()
                    .map(u64::from_le_bytes)
                    .map_err(|_| Error::index("bad pack entry"))?;
                Ok((id_from(&k[1..])?, len))
            })
            .collect()
    }

    /// Apply a batch atomically without waiting for it to be durable (a later `apply` or
    /// `flush` makes it so).
    pub fn apply_unflushed(&self, batch: IndexBatch) -> Result<()> {
        self.db.apply_batch(batch.0).map_err(ie)
    }

    /// Apply a batch atomically and make it durable.
    pub fn apply(&self, batch: IndexBatch) -> Result<()> {
        self.db.apply_batch(batch.0).map_err(ie)?;
        self.flush()
    }
}

/// A set of index changes applied atomically by `Index::apply`.
#[derive(Default)]
pub struct IndexBatch(sled::Batch);

impl IndexBatch {
    pub fn put_chunk(&mut self, id: &ChunkId, loc: &ChunkLoc) {
        let mut k = vec![b'c'];
        k.extend_from_slice(id.as_bytes());
        self.0.insert(k, &loc.encode()[..]);
    }

    pub fn remove_chunk(&mut self, id: &ChunkId) {
        let mut k = vec![b'c'];
        k.extend_from_slice(id.as_bytes());
        self.0.remove(k);
    }

    /// Insert or replace a version's record and its path entry.
    pub fn put_version(&mut self, r: &FileRecord) {
        let mut k = vec![b'v'];
        k.extend_from_slice(&r.id.0);
        self.0
            .insert(k, serde_json::to_vec(r).expect("record serializes"));
        let mut pk = file_key_bytes(b'p', &r.key());
        pk.extend_from_slice(&r.version.to_be_bytes());
        self.0.insert(pk, &r.id.0[..]);
    }

    /// Record that version `id`'s manifest file, whose BLAKE3 is `manifest`, lists chunks that
    /// were hashed to the record's SHA-256 (as they were stored by an upload, or read back by
    /// `verify`): reads of a version whose manifest still has that hash can rely on the chunk
    /// ids alone. A manifest that came from elsewhere (a pull, a rebuild) has no proof until
    /// `verify` makes one.
    pub fn put_proof(&mut self, id: Id, manifest: &[u8; 32]) {
        let mut k = vec![b's'];
        k.extend_from_slice(&id.0);
        self.0.insert(k, &manifest[..]);
    }

    pub fn remove_version(&mut self, r: &FileRecord) {
        let mut k = vec![b'v'];
        k.extend_from_slice(&r.id.0);
        self.0.remove(k);
        let mut k = vec![b's'];
        k.extend_from_slice(&r.id.0);
        self.0.remove(k);
        let mut pk = file_key_bytes(b'p', &r.key());
        pk.extend_from_slice(&r.version.to_be_bytes());
        self.0.remove(pk);
    }

    pub fn set_deleted_up_to(&mut self, key: &FileKey, version: u32) {
        self.0
            .insert(file_key_bytes(b'd', key), &version.to_be_bytes()[..]);
    }

    pub fn set_dropped(&mut self, id: Id) {
        let mut k = vec![b'x'];
        k.extend_from_slice(&id.0);
        self.0.insert(k, &[][..]);
    }

    pub fn put_pack(&mut self, id: Id, len: u64) {
        let mut k = vec![b'k'];
        k.extend_from_slice(&id.0);
        self.0.insert(k, &len.to_le_bytes()[..]);
    }

    pub fn remove_pack(&mut self, id: Id) {
        let mut k = vec![b'k'];
        k.extend_from_slice(&id.0);
        self.0.remove(k);
    }

    pub fn set_meta(&mut self, name: &str, value: &[u8]) {
        let mut k = vec![b'm'];
        k.extend_from_slice(name.as_bytes());
        self.0.insert(k, value);
    }

    pub fn remove_meta(&mut self, name: &str) {
        let mut k = vec![b'm'];
        k.extend_from_slice(name.as_bytes());
        self.0.remove(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An flock on the index's `db` file, as a lingering sled handle holds it.
    fn hold(dir: &Path) -> std::fs::File {
        let f = std::fs::File::open(dir.join("db")).unwrap();
        f.lock().unwrap();
        f
    }

    fn new_index(dir: &Path) {
        let ix = Index::open(dir).unwrap();
        let mut b = IndexBatch::default();
        b.set_meta("probe", b"kept");
        ix.apply(b).unwrap();
    }

    #[test]
    fn open_waits_for_a_lingering_handle_to_let_go() {
        let t = tempfile::tempdir().unwrap();
        new_index(t.path());
        let held = hold(t.path());
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let ix = Index::open_waiting(t.path(), Duration::from_secs(30)).unwrap();
        assert_eq!(ix.meta("probe").unwrap().as_deref(), Some(&b"kept"[..]));
        release.join().unwrap();
    }

    #[test]
    fn a_lock_held_past_the_wait_is_not_taken_for_damage() {
        let t = tempfile::tempdir().unwrap();
        new_index(t.path());
        let held = hold(t.path());
        match Index::open_waiting(t.path(), Duration::from_millis(200)) {
            Err(Error::Index { reason, .. }) => assert!(reason.contains("still held"), "{reason}"),
            Err(e) => panic!("a held lock reported as {e:?}"),
            Ok(_) => panic!("opened an index another handle holds"),
        }
        drop(held);
        let ix = Index::open(t.path()).unwrap();
        assert_eq!(ix.meta("probe").unwrap().as_deref(), Some(&b"kept"[..]));
    }

    /// sled's own refusal (the lock taken between our look and its open) is recognised.
    #[test]
    fn sled_lock_refusal_is_recognised() {
        let t = tempfile::tempdir().unwrap();
        new_index(t.path());
        let _held = hold(t.path());
        let e = sled::Config::new().path(t.path()).open().err().unwrap();
        assert!(is_sled_lock_refusal(&e), "{e:?}");
    }
}
