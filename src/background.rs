//! Uploads off the training thread: `experiment.file(path)...background()` opens the file,
//! checks the names and returns an [`Upload`] handle at once; one worker thread per experiment
//! stores the queued files in order.
//!
//! - Back-pressure: the bytes of queued and running uploads are capped (default 4 GiB, at most
//!   64 files); a call that would go past the cap waits until earlier uploads finish (a single
//!   file larger than the cap is admitted when nothing else is queued). Queued files are open
//!   files, not copies: memory stays bounded whatever the queue holds.
//! - Snapshot rule: an upload stores the bytes of the file as it was opened when the call
//!   returned. A file replaced afterwards by a rename (`torch.save` to a temporary name, then
//!   `os.replace`) does not matter: the open file still holds the old bytes. A file modified in
//!   place before its upload has read it (size or modification time differ at the end of the
//!   read) fails that upload with `SourceChanged` and stores nothing: a record never describes
//!   bytes other than the ones stored.
//! - Errors: `Upload::wait` returns an upload's error; `Experiment::wait_background` (and
//!   `close`) waits for every upload and returns the errors no `wait` returned. Dropping the
//!   last clone of an experiment without either still waits for the uploads, but cannot
//!   return their errors: call `close` or `wait_background` to see them.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::format::names::FileKey;
use crate::format::record::FileRecord;
use crate::store::batch::Opened;
use crate::store::{NewVersion, Store};

/// Default cap on the bytes of queued and running background uploads.
pub const DEFAULT_LIMIT: u64 = 4 << 30;
/// At most this many background uploads queued or running per experiment.
pub const MAX_QUEUED: usize = 64;

/// How one background upload ended, once it has.
#[derive(Default)]
struct Outcome {
    finished: bool,
    record: Option<FileRecord>,
    /// Taken by the first `wait` (or by `wait_background`) that reports it.
    error: Option<Error>,
    reported: bool,
}

struct Job {
    what: String,
    outcome: Mutex<Outcome>,
    done: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A background upload: `wait` for its record.
#[derive(Clone)]
pub struct Upload {
    job: Arc<Job>,
}

impl Upload {
    /// Has it finished (stored or failed)?
    pub fn done(&self) -> bool {
        lock(&self.job.outcome).finished
    }

    /// Wait until it has finished, at most `timeout`; true when it has.
    pub fn wait_for(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut o = lock(&self.job.outcome);
        while !o.finished {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            o = self
                .job
                .done
                .wait_timeout(o, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }

    /// The record once it has been stored (None while running, or if it failed).
    pub fn record(&self) -> Option<FileRecord> {
        lock(&self.job.outcome).record.clone()
    }

    /// Wait until it has finished; its record, or why it failed (the error is handed out once:
    /// a second `wait` of a failed upload says it was already reported).
    pub fn wait(&self) -> Result<FileRecord> {
        let mut o = lock(&self.job.outcome);
        while !o.finished {
            o = self
                .job
                .done
                .wait(o)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if let Some(r) = &o.record {
            return Ok(r.clone());
        }
        o.reported = true;
        Err(o.error.take().unwrap_or_else(|| {
            Error::Background(format!(
                "the upload of {} failed (its error was already reported)",
                self.job.what
            ))
        }))
    }
}

struct Queued {
    job: Arc<Job>,
    src: Opened,
    key: FileKey,
    v: NewVersion,
    size: u64,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Queued>,
    /// Bytes of queued and running uploads.
    bytes: u64,
    /// Uploads queued or running.
    pending: usize,
    worker: bool,
    /// Uploads that failed; their errors go to `wait_background` unless a `wait` took them.
    failed: Vec<Arc<Job>>,
}

/// The background uploads of one experiment (shared by its clones).
pub(crate) struct Background {
    store: Store,
    limit: u64,
    q: Mutex<Queue>,
    changed: Condvar,
}

impl Background {
    pub(crate) fn new(store: Store, limit: u64) -> Background {
        Background {
            store,
            limit,
            q: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        }
    }

    /// Queue an upload; waits while the queue is full.
    pub(crate) fn submit(
        self: &Arc<Self>,
        src: Opened,
        key: FileKey,
        v: NewVersion,
    ) -> Result<Upload> {
        let size = src.len();
        let job = Arc::new(Job {
            what: key.display(),
            outcome: Mutex::new(Outcome::default()),
            done: Condvar::new(),
        });
        let mut q = lock(&self.q);
        while q.pending > 0
            && (q.bytes.saturating_add(size) > self.limit || q.pending >= MAX_QUEUED)
        {
            // Waiting for room can take as long as an upload: an interrupt flag ends it.
            crate::interrupt::check()?;
            q = self
                .changed
                .wait_timeout(q, Duration::from_millis(50))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        q.bytes += size;
        q.pending += 1;
        q.jobs.push_back(Queued {
            job: Arc::clone(&job),
            src,
            key,
            v,
            size,
        });
        if !q.worker {
            let me = Arc::clone(self);
            if let Err(e) = std::thread::Builder::new()
                .name("ml-dash-background".into())
                .spawn(move || me.work())
            {
                // Nothing will run it: take it back out, so that nobody waits for it.
                q.jobs.pop_back();
                q.bytes -= size;
                q.pending -= 1;
                return Err(Error::Internal(format!(
                    "cannot start the upload thread: {e}"
                )));
            }
            q.worker = true;
        }
        Ok(Upload { job })
    }

    fn work(&self) {
        loop {
            let Some(next) = ({
                let mut q = lock(&self.q);
                let n = q.jobs.pop_front();
                if n.is_none() {
                    q.worker = false;
                    self.changed.notify_all();
                }
                n
            }) else {
                return;
            };
            let Queued {
                job,
                src,
                key,
                v,
                size,
            } = next;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut b = self.store.upload_batch();
                b.opened(src, key, v);
                b.commit().and_then(|mut recs| {
                    recs.pop()
                        .ok_or_else(|| Error::Internal("a batch of one file committed none".into()))
                })
            }))
            .unwrap_or_else(|_| Err(Error::Internal("the upload thread panicked".into())));
            let failed = r.is_err();
            {
                let mut o = lock(&job.outcome);
                match r {
                    Ok(rec) => o.record = Some(rec),
                    Err(e) => o.error = Some(e),
                }
                o.finished = true;
                job.done.notify_all();
            }
            let mut q = lock(&self.q);
            q.bytes -= size;
            q.pending -= 1;
            if failed {
                q.failed.push(job);
            }
            self.changed.notify_all();
        }
    }

    /// Wait at most `timeout` until no upload is queued or running; true when none is.
    pub(crate) fn idle_within(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut q = lock(&self.q);
        while q.pending > 0 || q.worker {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            q = self
                .changed
                .wait_timeout(q, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Wait until no upload is queued or running; then the errors no `wait` reported.
    pub(crate) fn wait_all(&self) -> Result<()> {
        let mut q = lock(&self.q);
        while q.pending > 0 || q.worker {
            q = self
                .changed
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let failed = std::mem::take(&mut q.failed);
        drop(q);
        let mut errors: Vec<Error> = Vec::new();
        for j in failed {
            let mut o = lock(&j.outcome);
            if !o.reported {
                o.reported = true;
                if let Some(e) = o.error.take() {
                    errors.push(e);
                }
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.pop().expect("one error")),
            n => Err(Error::Background(format!(
                "{n} background uploads failed: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ))),
        }
    }
}
