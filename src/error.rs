//! The library's one error type. Every variant carries the context a user needs to act on it,
//! and the error it comes from (I/O, the index, object storage) as its `source()`.

use std::path::PathBuf;

/// An error from another library (the index, object storage), kept as a `source()`.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors returned by the engine. `#[non_exhaustive]`: match with a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Reading the bytes being stored (a file, standard input, an upload stream) failed;
    /// nothing was stored.
    #[error("cannot read the data to store: {0}")]
    Source(#[source] std::io::Error),
    /// Writing to the caller's output (a writer given to `download_to` or `copy_to`) failed.
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
    /// An argument was refused before anything was written.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidInput {
        /// What it is (`"prefix"`, `"tag"`, ...).
        what: &'static str,
        /// The value given (shortened when long).
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// No such version, path or experiment.
    #[error("not found: {0}")]
    NotFound(String),
    /// Stored bytes failed a check: they are never returned as data.
    #[error("corrupt data in {location}: {reason}")]
    Corrupt {
        /// Which file, version or chunk.
        location: String,
        /// What failed.
        reason: String,
    },
    /// A source file changed while it was being stored; nothing was stored.
    #[error("source file {} changed while it was being read ({reason}); nothing was stored", path.display())]
    SourceChanged {
        /// The file.
        path: PathBuf,
        /// What changed.
        reason: String,
    },
    /// The bytes received do not hash to the SHA-256 the sender declared for them (they
    /// changed after they were hashed, or were damaged on the way); nothing was stored.
    #[error(
        "{location}: the bytes received ({size} bytes) have SHA-256 {actual}, not the declared {expected}; nothing was stored"
    )]
    ChecksumMismatch {
        /// The file being stored.
        location: String,
        /// The checksum the sender declared.
        expected: String,
        /// The checksum of the bytes received.
        actual: String,
        /// How many bytes were received.
        size: u64,
    },
    /// The directory is not a store this version can use.
    #[error("store at {} is not usable: {reason}", root.display())]
    BadStore {
        /// The store directory.
        root: PathBuf,
        /// Why.
        reason: String,
        /// The I/O error behind it, if any.
        #[source]
        source: Option<std::io::Error>,
    },
    /// An earlier write or fsync failed: the store refuses writes until it is opened again
    /// (retrying an fsync can silently lose data).
    #[error("store is poisoned by an earlier failed write or fsync; reopen it: {0}")]
    Poisoned(String),
    /// The index failed (it is derived data: `ml-dash repair` rebuilds it).
    #[error("index error: {reason}")]
    Index {
        /// What failed.
        reason: String,
        /// The index library's error, if it raised one.
        #[source]
        source: Option<Cause>,
    },
    /// The index's own files are damaged (it is derived data: `rebuild_index` recreates it).
    #[error("index is damaged: {reason}")]
    IndexDamaged {
        /// What is wrong.
        reason: String,
        /// The index library's error, if it raised one.
        #[source]
        source: Option<Cause>,
    },
    /// A remote (S3-compatible object storage) refused or failed a request, or holds data this
    /// version cannot use. Never carries credentials.
    #[error("remote {remote}: {reason}")]
    Remote {
        /// The remote's URL.
        remote: String,
        /// What failed.
        reason: String,
        /// The object storage library's error, if it raised one.
        #[source]
        source: Option<Cause>,
    },
    /// The call was interrupted (Ctrl-C) before it committed anything: the store is as it was.
    #[error("interrupted; nothing was stored or changed")]
    Interrupted,
    /// One or more background uploads failed (each named, with its error); nothing of a
    /// failed upload was stored.
    #[error("{0}")]
    Background(String),
    /// Something that cannot happen did (a worker thread panicked): a bug in ml-dash.
    #[error("internal error (a bug in ml-dash): {0}")]
    Internal(String),
    /// Another process held the store lock for longer than the lock timeout.
    #[error("timed out after {secs} s waiting for the store lock at {}", path.display())]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long this call waited.
        secs: u64,
    },
}

/// `Result` with the engine's `Error`.
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

    /// An index failure the engine itself noticed.
    pub(crate) fn index(reason: impl Into<String>) -> Self {
        Error::Index {
            reason: reason.into(),
            source: None,
        }
    }

    /// A remote failure or refusal with no library error behind it.
    #[cfg(feature = "remote")]
    pub(crate) fn remote(remote: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Remote {
            remote: remote.into(),
            reason: reason.into(),
            source: None,
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
