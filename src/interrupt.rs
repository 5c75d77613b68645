//! Interrupting a long call from another thread (Ctrl-C in Python): the caller runs the call
//! under [`with_interrupt`] with a flag; setting the flag makes the call stop at its next check
//! with [`Error::Interrupted`], before anything is committed, as if it had not started.
//!
//! Checked: every read of a file being stored (so an upload stops within one read), every
//! write of a download (its temporary file is removed), the wait of a download for a reader of
//! the named pipe it writes to, each poll of a lock wait, and once
//! more just before an upload commits. The flag follows the call to the threads it reads a
//! source on.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

thread_local! {
    static FLAG: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Run `f` on this thread so that setting `flag` (from any thread) interrupts it.
pub fn with_interrupt<T>(flag: Arc<AtomicBool>, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<Arc<AtomicBool>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let old = self.0.take();
            FLAG.with(|c| *c.borrow_mut() = old);
        }
    }
    let old = FLAG.with(|c| c.borrow_mut().replace(flag));
    let _reset = Reset(old);
    f()
}

/// The flag of the call running on this thread, if it can be interrupted.
pub(crate) fn current() -> Option<Arc<AtomicBool>> {
    FLAG.with(|c| c.borrow().clone())
}

/// `Err(Interrupted)` if the call running on this thread was interrupted.
pub(crate) fn check() -> Result<()> {
    match current() {
        Some(f) if f.load(Ordering::Relaxed) => Err(Error::Interrupted),
        _ => Ok(()),
    }
}

fn interrupted() -> std::io::Error {
    std::io::Error::other("interrupted")
}

/// A reader that fails once `flag` is set.
pub(crate) struct CheckedRead<R> {
    pub(crate) inner: R,
    pub(crate) flag: Arc<AtomicBool>,
}

impl<R: Read> Read for CheckedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.flag.load(Ordering::Relaxed) {
            return Err(interrupted());
        }
        self.inner.read(buf)
    }
}

/// A writer that fails once `flag` is set.
pub(crate) struct CheckedWrite<W> {
    pub(crate) inner: W,
    pub(crate) flag: Arc<AtomicBool>,
}

impl<W: Write> Write for CheckedWrite<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.flag.load(Ordering::Relaxed) {
            return Err(interrupted());
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
