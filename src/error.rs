//! The library's one error type. Every variant carries the context a user needs to act on it.

use std::path::PathBuf;

/// Errors returned by the engine. `#[non_exhaustive]`: match with a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidInput {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("corrupt data in {location}: {reason}")]
    Corrupt { location: String, reason: String },
    #[error("source file {path} changed while it was being read ({reason}); nothing was stored")]
    SourceChanged { path: PathBuf, reason: String },
    #[error("store at {root} is not usable: {reason}")]
    BadStore { root: PathBuf, reason: String },
    #[error("store is poisoned by an earlier failed write or fsync; reopen it: {0}")]
    Poisoned(String),
    #[error("index error: {0}")]
    Index(String),
    /// The index's own files are damaged (it is derived data: `rebuild_index` recreates it).
    #[error("index is damaged: {0}")]
    IndexDamaged(String),
    /// A remote (S3-compatible object storage) refused or failed a request, or holds data this
    /// version cannot use. Never carries credentials.
    #[error("remote {remote}: {reason}")]
    Remote { remote: String, reason: String },
    /// Writing to a caller's output (a writer given to `download_to` or `copy_to`) failed.
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
    #[error("timed out after {secs} s waiting for the store lock at {path}")]
    LockTimeout { path: PathBuf, secs: u64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(
        what: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidInput {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(location: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            location: location.into(),
            reason: reason.into(),
        }
    }
}

/// Attach a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
