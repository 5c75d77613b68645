//! ml-dash: a content-addressed artifact store for machine-learning experiments.
//!
//! Files are cut by content-defined chunking, each chunk named by its BLAKE3 digest, compressed
//! with zstd when that pays, and appended to pack files; a sled index maps experiment paths to
//! versions whose manifests carry the SHA-256, tags and metadata. See `ARCHITECTURE.md`.

pub mod chunker;
pub mod codec;
pub mod delta;
pub mod digest;
pub mod durable;
pub mod error;
pub mod experiment;
pub mod export;
pub mod fault;
pub mod gc;
pub mod glob;
pub mod id;
pub mod index;
pub mod ingest;
pub mod journal;
pub mod manifest;
pub mod pack;
pub mod path;
pub mod read;
pub mod record;
pub mod recover;
#[cfg(feature = "remote")]
pub mod remote;
pub mod rpack;
pub mod stats;
pub mod store;
pub mod tensors;
pub mod time;
pub mod verify;

pub use error::{Error, Result};
pub use experiment::{Experiment, FileUpload};
pub use record::FileRecord;
pub use store::{ListFilter, NewVersion, Store, StoreOptions};
