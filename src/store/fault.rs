//! Injected I/O failures, for tests of what happens when the disk says no.
//!
//! A `Faults` handle travels in `StoreOptions` to every durable step: pack appends and fsyncs,
//! manifest / event writes, fsyncs, renames and directory fsyncs, index flushes and file
//! removals. With a plan installed (`Faults::fail_nth`), the Nth matching operation fails with
//! an I/O error instead of happening (like redb's fuzzer failing the Nth write or sync). Without
//! one (the default) every check is a single branch on `None`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Which operations a plan counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Writes, renames and removals.
    Write,
    /// fsyncs of files and directories, and index flushes.
    Sync,
    /// Both.
    Any,
}

#[derive(Debug)]
struct Plan {
    kind: FaultKind,
    fail_at: u64,
    seen: AtomicU64,
}

/// A handle on an optional fault plan; cheap to clone, shared by clones.
#[derive(Clone, Debug, Default)]
pub struct Faults(Option<Arc<Plan>>);

impl Faults {
    /// No injected failures (the default).
    #[cfg(any(test, feature = "testing"))]
    pub fn none() -> Faults {
        Faults(None)
    }

    /// Fail the `n`th (1-based) operation of `kind`; all others succeed.
    #[cfg(any(test, feature = "testing"))]
    pub fn fail_nth(kind: FaultKind, n: u64) -> Faults {
        Faults(Some(Arc::new(Plan {
            kind,
            fail_at: n,
            seen: AtomicU64::new(0),
        })))
    }

    /// Has the planned failure happened?
    #[cfg(any(test, feature = "testing"))]
    pub fn fired(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|p| p.seen.load(Ordering::SeqCst) >= p.fail_at)
    }

    /// Called before an operation of `kind` on `path`: `Err` if this is the one to fail.
    pub(crate) fn check(&self, kind: FaultKind, path: &Path) -> Result<()> {
        let Some(p) = &self.0 else { return Ok(()) };
        if p.kind != FaultKind::Any && p.kind != kind {
            return Ok(());
        }
        if p.seen.fetch_add(1, Ordering::SeqCst) + 1 == p.fail_at {
            return Err(Error::io(
                path,
                std::io::Error::other(format!("injected {kind:?} failure")),
            ));
        }
        Ok(())
    }
}
