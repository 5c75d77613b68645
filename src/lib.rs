//! ml-dash: a content-addressed artifact store for machine-learning experiments.
//!
//! Training code hands it models, checkpoints, plots, configs and results; it files them under
//! `namespace / project / experiment / prefix / filename` with a SHA-256 checksum, tags, a
//! description and metadata, every upload a new version. Files are cut into content-defined
//! chunks (or on a grid aligned to the tensors of a checkpoint), each named by its BLAKE3
//! digest, deduplicated across everything stored, compressed when that pays (zstd, byte planes
//! for floats, deltas against the previous checkpoint), and appended to pack files; a sled
//! index, derived from the packs and the per-version manifests, maps paths to versions. Reads
//! are verified chunk by chunk and file by file.
//!
//! The entry points are [`Experiment`] (the ml-dash Files tutorial's API: an experiment whose
//! `file(...)` stores a file and returns its [`FileRecord`]) and [`Store`] (the store itself:
//! uploads, listing, reads, deletes, `verify`, `gc`, `repair`). With the `remote` feature (on by
//! default), a store pushes to and pulls from S3-compatible object storage ([`Remote`]).
//!
//! ```
//! use ml_dash::{Experiment, ListFilter};
//!
//! # fn main() -> ml_dash::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let root = dir.path().join(".ml-dash");
//! # std::fs::write(dir.path().join("model.pth"), b"weights").unwrap();
//! # let model = dir.path().join("model.pth");
//! let experiment = Experiment::new("my-experiment", "project").local_path(&root).open()?;
//! let record = experiment
//!     .file(&model)
//!     .prefix("/models")
//!     .tags(["checkpoint", "best"])
//!     .metadata(serde_json::json!({"epoch": 50}))
//!     .save()?;
//! assert_eq!((record.filename.as_str(), record.size_bytes, record.version), ("model.pth", 7, 1));
//!
//! // Read it back (every chunk and the whole file are checked).
//! let bytes = experiment.read("/models/model.pth", None)?;
//! assert_eq!(bytes, b"weights");
//! assert_eq!(experiment.list(ListFilter::default())?.len(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! `ARCHITECTURE.md` is the map of the code; `docs/format.md` the on-disk format.

// Every public item of the API is documented; the internals `testing` exposes are not an API.
#![cfg_attr(not(feature = "testing"), warn(missing_docs))]

// Offsets and lengths are u64 on disk and usize in memory: on the 64-bit targets ml-dash
// supports, `format::usize_from` converts them without loss. Refuse anything else.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("ml-dash supports only 64-bit targets (usize must hold every u64 offset)");

pub(crate) mod background;
pub(crate) mod error;
pub(crate) mod experiment;
pub(crate) mod format;
pub(crate) mod interop;
pub(crate) mod interrupt;
#[cfg(feature = "remote")]
pub(crate) mod remote;
pub(crate) mod store;
#[cfg(any(test, feature = "testing"))]
pub(crate) mod test_support;

pub use background::Upload;
pub use error::{Cause, Error, Result};
pub use experiment::{Experiment, ExperimentBuilder, FileUpload, Metric, Parameters};
pub use format::chunker::{ChunkAlgorithm, ChunkerConfig};
pub use format::codec::Compression;
pub use format::digest::{ChunkId, Digest, Sha256};
pub use format::glob::Glob;
pub use format::id::Id;
pub use format::names::{ExperimentKey, FileKey};
pub use format::record::FileRecord;
pub use interop::{ExportLayout, ExportPlan, ExportSummary, ImportSummary, import};
pub use interrupt::with_interrupt;
#[cfg(feature = "remote")]
pub use remote::{
    FetchStats, FilesReport, Inventory, PullReport, PushReport, Remote, RemoteConfig, RemoteFile,
    RemoteGcOptions, RemoteGcReport,
};
pub use store::batch::Opened;
pub use store::durable::{is_special_destination, special_destination};
#[cfg(feature = "remote")]
pub use store::findings::PullKind;
pub use store::findings::{Finding, GcKind, RebuildKind, VerifyKind};
pub use store::gc::{GcOptions, GcReport};
pub use store::index::Scope;
pub use store::journal::{ExperimentInfo, JournalContents, LogEntry, MetricPoint, Params};
pub use store::read::FileReader;
pub use store::recover::RebuildReport;
pub use store::retention::{RetentionPolicy, RetentionScope, ScopedPolicy};
pub use store::stats::{CodecBytes, Stats, VersionStorage};
pub use store::tokens::TokenInfo;
pub use store::verify::VerifyReport;
pub use store::{ListFilter, NewVersion, RecordChanges, Store, StoreOptions, UploadBatch};

/// Checks of names and values, as every upload applies them: an embedder (or a form) can check
/// input before calling the store, with the same errors.
pub mod validate {
    pub use crate::format::names::{
        MAX_DEPTH, MAX_PREFIX, MAX_SEGMENT, metric_name, prefix, segment, split_full, target, under,
    };
    pub use crate::format::record::{
        MAX_DESCRIPTION, MAX_VERSION, check_description, check_metadata, check_tags,
    };
    pub use crate::store::retention::{format_duration, parse_duration};
    pub use crate::store::tree::walk_tree;
}

/// Internals for tests, fuzz targets and benchmarks (cargo feature `testing`): fault injection
/// and the on-disk formats, to craft and inspect packs, manifests, events and remote objects.
/// Not a stable API.
#[cfg(feature = "testing")]
#[allow(missing_docs)]
pub mod testing {
    #[cfg(feature = "remote")]
    pub use crate::format::rpack;
    pub use crate::format::{
        chunker, codec, delta, digest, huffman, manifest, names, pack, planes, record, tensors,
        time, usize_from,
    };
    #[cfg(feature = "remote")]
    pub use crate::remote::{parse_url, part_size_for};
    pub use crate::store::fault::{FaultKind, Faults};
    pub use crate::store::index::{Index, IndexBatch};

    /// Take the snapshot of chunk locations an upload outside the store lock deduplicates
    /// against; returns how many it holds.
    pub fn snapshot_chunks(ix: &Index) -> crate::Result<usize> {
        crate::store::index::Snapshot::take(ix).map(|s| s.len())
    }
    pub use crate::store::packs::{self, PackWriter};
    pub use crate::store::read::read_all;

    /// How many batches `r` started decoding ahead of its reads.
    pub fn batches_read_ahead(r: &crate::FileReader) -> u64 {
        r.batches_read_ahead()
    }
    pub use crate::store::write::ImportedVersion;
    pub use crate::test_support::{XorShift, random_bytes};

    /// Queue a file as `ml-dash import` does: its bytes must match `imported`'s size and SHA-256.
    pub fn imported_file(
        batch: &mut crate::UploadBatch<'_>,
        src: impl AsRef<std::path::Path>,
        key: crate::FileKey,
        v: crate::NewVersion,
        imported: ImportedVersion,
    ) {
        let src = crate::store::batch::Source::Path(src.as_ref().to_path_buf());
        batch.push(src, key, v, Some(imported), None);
    }

    /// Append log lines as `ml-dash import` does (one write and one fdatasync for all).
    pub fn import_logs(
        store: &crate::Store,
        exp: &crate::ExperimentKey,
        entries: Vec<crate::LogEntry>,
    ) -> crate::Result<()> {
        store.import_logs(exp, entries)
    }

    /// Append metric points as `ml-dash import` does (one write and one fdatasync for all).
    pub fn import_metrics(
        store: &crate::Store,
        exp: &crate::ExperimentKey,
        name: &str,
        points: Vec<crate::MetricPoint>,
    ) -> crate::Result<()> {
        store.import_metrics(exp, name, points)
    }

    /// Read an experiment's journal from disk, past any lines this process cached.
    pub fn journal_from_disk(
        store: &crate::Store,
        exp: &crate::ExperimentKey,
    ) -> crate::Result<crate::JournalContents> {
        store.journal_from_disk(exp)
    }
}
