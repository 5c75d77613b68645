//! Writes: single uploads (`put_file`, `put_reader`: batches of one, see `batch.rs`), deletes
//! and record updates, each committed in the store's write order (see ARCHITECTURE.md); and
//! what uploads need to know about the store (`check_new`, `next_version`, `previous_for`).

use std::io::Read;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use super::batch::Source;
use super::{Session, Store};
use crate::error::{Error, Result};
use crate::format::id::Id;
use crate::format::manifest::{self, Event};
use crate::format::names::FileKey;
use crate::format::record::{self, FileRecord};
use crate::store::durable;
use crate::store::index::{Index, IndexBatch, Scope};
use crate::store::ingest::Previous;

/// What to record with a new version.
#[derive(Clone, Debug, Default)]
pub struct NewVersion {
    /// A description (at most 64 KiB).
    pub description: Option<String>,
    /// Tags (at most 256, each 1-256 bytes, no control characters).
    pub tags: Vec<String>,
    /// A JSON object or null (at most 64 KiB, 32 levels).
    pub metadata: serde_json::Value,
}
/// Changes to a version's record (`Store::update`): what is left `None` stays as it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordChanges {
    /// `Some(Some(text))` sets the description, `Some(None)` clears it.
    pub description: Option<Option<String>>,
    /// Replaces every tag.
    pub tags: Option<Vec<String>>,
    /// Replaces the metadata (a JSON object, or null).
    pub metadata: Option<serde_json::Value>,
}

impl RecordChanges {
    /// No change.
    pub fn new() -> RecordChanges {
        RecordChanges::default()
    }
    /// Set the description.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = Some(Some(d.into()));
        self
    }
    /// Clear the description.
    pub fn clear_description(mut self) -> Self {
        self.description = Some(None);
        self
    }
    /// Replace the tags.
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = Some(tags.into_iter().map(Into::into).collect());
        self
    }
    /// Replace the metadata.
    pub fn metadata(mut self, m: serde_json::Value) -> Self {
        self.metadata = Some(m);
        self
    }
}

/// What an import keeps from the record it copies (`Store::put_file_imported`, used only by
/// `ml-dash import`): the original timestamps, and the size and SHA-256 the bytes must have.
#[derive(Clone, Debug)]
pub struct ImportedVersion {
    /// Recorded as given (the caller checks the format).
    pub uploaded_at: String,
    /// Recorded as given.
    pub updated_at: String,
    /// The bytes read must hash to this and have this length, else nothing is recorded.
    pub checksum: crate::format::digest::Sha256,
    /// The size the bytes must have.
    pub size_bytes: u64,
}
/// Check a new version's key and values (every upload, before anything is written).
pub(crate) fn check_new(key: &FileKey, v: &NewVersion) -> Result<()> {
    // Keys come from `ExperimentKey::new` (`names.rs`), but a FileKey is a plain struct:
    // check again.
    for (what, s) in [
        ("namespace", &key.namespace),
        ("project", &key.project),
        ("experiment", &key.experiment),
        ("file name", &key.filename),
    ] {
        crate::format::names::segment(what, s)?;
    }
    if crate::format::names::prefix(&key.path)? != key.path {
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
/// The version a new upload of `key` compares its chunks with, and may store deltas against
/// when it is a safetensors file or a zip archive (`torch.save`): the latest live version of
/// `key`, else the newest live file with the same extension in the same experiment and
/// prefix (checkpoints are often saved under a new name each time). Anything unreadable just
/// means none (verify reports damage).
/// The most chunks a `Previous` version may have (its chunk map costs about 150 bytes a chunk:
/// 40 MiB at most; 16 GiB of content-defined chunks, far more of a checkpoint's tensor pieces).
const PREVIOUS_MAX_CHUNKS: usize = 1 << 18;

pub(super) fn previous_for(s: &Session<'_>, key: &FileKey) -> Option<Previous> {
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
    let mut r = crate::store::read::open_reader(s, rec)
        .ok()?
        .without_read_ahead();
    let mut first = vec![0u8; 8];
    r.read_exact(&mut first).ok()?;
    let n = u64::from_le_bytes(first[..8].try_into().ok()?);
    let layout = if n <= crate::format::tensors::MAX_HEADER && n < r.len() {
        first.resize(8 + crate::format::usize_from(n), 0);
        r.read_exact(&mut first[8..]).ok()?;
        crate::format::tensors::Layout::safetensors(&first)
    } else {
        None
    };
    let layout = layout.or_else(|| {
        let len = r.len();
        zip_layout(&mut r, len)
    });
    let (chunks, located) = r.into_parts();
    // Its chunks are kept in memory for the whole upload: a version of so many is not used.
    if chunks.len() > PREVIOUS_MAX_CHUNKS {
        return None;
    }
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
pub(super) fn zip_layout<R: Read + std::io::Seek>(
    r: &mut R,
    len: u64,
) -> Option<crate::format::tensors::Layout> {
    let mut magic = [0u8; 4];
    r.seek(std::io::SeekFrom::Start(0)).ok()?;
    r.read_exact(&mut magic).ok()?;
    if magic != *b"PK\x03\x04" {
        return None;
    }
    crate::format::tensors::Layout::zip(r, len)
}
/// The version number the next upload of `key` gets.
pub(super) fn next_version(ix: &Index, key: &FileKey) -> Result<u32> {
    let last = ix.versions_of(key)?.last().map_or(0, |(v, _)| *v);
    last.max(ix.deleted_up_to(key)?)
        .checked_add(1)
        .filter(|v| *v <= record::MAX_VERSION)
        .ok_or_else(|| no_versions_left(key))
}
pub(super) fn no_versions_left(key: &FileKey) -> Error {
    Error::invalid(
        "path",
        key.display(),
        "has no version numbers left (the last is 2147483647)",
    )
}
/// An event (delete, update) in the write order: pending marker and index flush → event file
/// durable → its changes in the index (`recover::finish_pending` settles a crash in between).
pub(crate) fn commit_event(s: &Session<'_>, e: &Event) -> Result<()> {
    let mut b = IndexBatch::default();
    b.set_meta("pending", &e.id().0);
    b.set_meta("last_id", &e.id().0);
    s.index.apply(b)?;
    durable::write_atomic(
        &s.store.event_path(e.id()),
        &manifest::encode_event(e),
        &s.store.opts.faults,
    )?;
    let mut b = crate::store::recover::event_batch(&s.index, e)?;
    b.remove_meta("pending");
    s.index.apply(b)
}

impl Store {
    /// Store a file from disk as a new version of `key` (an [`UploadBatch`] of one). Symlinks
    /// are followed; directories, FIFOs, sockets and devices are refused. If the file changes
    /// while it is read (size or mtime differ before and after), nothing is recorded and
    /// `SourceChanged` is returned.
    ///
    /// [`UploadBatch`]: crate::UploadBatch
    pub fn put_file(
        &self,
        src: &Path,
        key: &FileKey,
        v: NewVersion,
        progress: Option<&AtomicU64>,
    ) -> Result<FileRecord> {
        let mut b = self.upload_batch();
        b.push(
            Source::Path(src.to_path_buf()),
            key.clone(),
            v,
            None,
            progress,
        );
        one(b.commit())
    }
    /// Store everything `src` yields as a new version of `key` (e.g. standard input).
    pub fn put_reader(
        &self,
        src: impl Read + Send,
        key: &FileKey,
        v: NewVersion,
        progress: Option<&AtomicU64>,
    ) -> Result<FileRecord> {
        let mut b = self.upload_batch();
        b.push(
            Source::Reader(Box::new(src)),
            key.clone(),
            v,
            None,
            progress,
        );
        one(b.commit())
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
            at: crate::format::time::now_iso(),
        };
        self.poison(commit_event(&s, &event))?;
        // The records as they are now (deleted).
        live.iter()
            .map(|r| {
                s.index
                    .version(r.id)?
                    .ok_or_else(|| Error::index(format!("version {} vanished", r.id)))
            })
            .collect()
    }
    /// Change description, tags or metadata of one version (absent arguments stay as they are).
    pub fn update(&self, version_id: Id, changes: &RecordChanges) -> Result<FileRecord> {
        let RecordChanges {
            description,
            tags,
            metadata,
        } = changes.clone();
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
            at: crate::format::time::now_iso(),
        };
        self.poison(commit_event(&s, &event))?;
        s.index
            .version(version_id)?
            .ok_or_else(|| Error::NotFound(format!("version {version_id}")))
    }
}

/// The one record of a batch of one.
fn one(records: Result<Vec<FileRecord>>) -> Result<FileRecord> {
    records?
        .pop()
        .ok_or_else(|| Error::Internal("a batch of one file committed none".into()))
}
