//! `ml_dash._core`: the Python face of the ml-dash engine. The public module `ml_dash`
//! (`python/ml_dash/__init__.py`) re-exports these classes and adds a file object for reads.
//!
//! Every call that touches the store or the network releases the GIL (`Python::detach`), so
//! training threads keep running while a checkpoint is ingested. Errors become Python
//! exceptions: `ValueError` (bad input), `FileNotFoundError` (missing file or path),
//! `TimeoutError` (store lock), `OSError` (other I/O), `ml_dash.StoreError` (damage, an unusable
//! store) and its subclass `ml_dash.RemoteError`.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ml_dash::{Error, ListFilter};
use ml_dash::{Remote, RemoteConfig};
use pyo3::create_exception;
use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyMemoryError, PyOSError, PyPermissionError, PyRuntimeError,
    PyTimeoutError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString};

create_exception!(
    ml_dash,
    StoreError,
    PyException,
    "The store is damaged or unusable."
);
create_exception!(
    ml_dash,
    RemoteError,
    StoreError,
    "A remote (S3) request failed."
);

fn py_err(e: Error) -> PyErr {
    let msg = e.to_string();
    match &e {
        Error::InvalidInput { .. } => PyValueError::new_err(msg),
        Error::NotFound(_) => PyFileNotFoundError::new_err(msg),
        Error::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
            std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
            _ => PyOSError::new_err(msg),
        },
        Error::SourceChanged { .. } | Error::Output(_) | Error::Source(_) => {
            PyOSError::new_err(msg)
        }
        Error::LockTimeout { .. } => PyTimeoutError::new_err(msg),
        Error::Remote { .. } => RemoteError::new_err(msg),
        _ => StoreError::new_err(msg),
    }
}

/// Run `f` (a store call) on a helper thread while this thread, holding the GIL only between
/// 50 ms waits, runs Python's signal handlers: Ctrl-C sets the call's interrupt flag, the call
/// stops at its next check before committing anything, and `KeyboardInterrupt` is raised. A
/// call that finished before it saw the flag returns its result, and the interrupt is raised
/// right after.
fn interruptible<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> ml_dash::Result<T> + Send,
) -> PyResult<T> {
    use std::sync::mpsc::RecvTimeoutError;
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::scope(|sc| {
        let (tx, rx) = std::sync::mpsc::channel();
        // A Receiver is not Sync; the waits below hand it to `detach` behind a lock.
        let rx = Mutex::new(rx);
        let recv = |t: Option<Duration>| {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            match t {
                Some(t) => rx.recv_timeout(t),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            }
        };
        let mine = std::sync::Arc::clone(&flag);
        sc.spawn(move || {
            let _ = tx.send(ml_dash::with_interrupt(mine, f));
        });
        loop {
            match py.detach(|| recv(Some(Duration::from_millis(50)))) {
                Ok(r) => return r.map_err(py_err),
                Err(RecvTimeoutError::Timeout) => {
                    let Err(interrupt) = py.check_signals() else {
                        continue;
                    };
                    flag.store(true, Ordering::SeqCst);
                    return match py.detach(|| recv(None)) {
                        Ok(Ok(v)) => {
                            py.import("_thread")?.call_method0("interrupt_main")?;
                            Ok(v)
                        }
                        // A real failure that happened first is reported as itself.
                        Ok(Err(e)) if !matches!(e, Error::Interrupted) => Err(py_err(e)),
                        _ => Err(interrupt),
                    };
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(StoreError::new_err(
                        "the store call's thread ended without a result",
                    ));
                }
            }
        }
    })
}

/// Python object -> JSON value, through Python's own `json` (so anything `json.dumps` accepts
/// works; anything else is a `ValueError`). The `dumps`/`loads` round trip turns the value into
/// plain dicts, lists, str, int, float, bool and None, which are converted exactly: NaN and
/// infinities, and integers outside 64 bits (JSON numbers here are i64, u64 or f64), are a
/// `ValueError` rather than text `serde_json` would reject or silently round to a float.
fn to_json(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let json = py.import("json")?;
    let kw = PyDict::new(py);
    kw.set_item("allow_nan", false)?;
    let s = json
        .call_method("dumps", (obj,), Some(&kw))
        .map_err(|e| PyValueError::new_err(format!("not JSON-serializable: {e}")))?;
    plain_to_json(&json.call_method1("loads", (s,))?)
}

/// A value made by `json.loads` -> JSON value.
fn plain_to_json(o: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    use serde_json::Value;
    Ok(if o.is_none() {
        Value::Null
    } else if let Ok(b) = o.cast::<PyBool>() {
        Value::Bool(b.is_true())
    } else if o.cast::<PyInt>().is_ok() {
        if let Ok(i) = o.extract::<i64>() {
            Value::from(i)
        } else if let Ok(u) = o.extract::<u64>() {
            Value::from(u)
        } else {
            return Err(PyValueError::new_err(format!(
                "integer {o} does not fit in 64 bits (store it as a string or a float)"
            )));
        }
    } else if let Ok(f) = o.cast::<PyFloat>() {
        serde_json::Number::from_f64(f.value())
            .map(Value::Number)
            .ok_or_else(|| PyValueError::new_err(format!("{o} is not a finite number")))?
    } else if let Ok(s) = o.cast::<PyString>() {
        Value::String(s.to_cow()?.into_owned())
    } else if let Ok(l) = o.cast::<PyList>() {
        Value::Array(
            l.iter()
                .map(|v| plain_to_json(&v))
                .collect::<PyResult<_>>()?,
        )
    } else if let Ok(d) = o.cast::<PyDict>() {
        let mut m = serde_json::Map::with_capacity(d.len());
        for (k, v) in d.iter() {
            m.insert(k.extract::<String>()?, plain_to_json(&v)?);
        }
        Value::Object(m)
    } else {
        return Err(PyValueError::new_err(format!("not JSON: {o}")));
    })
}

/// A version argument: 1, 2, ... (None: the latest). Out-of-range ints are a `ValueError`.
fn version(v: Option<Bound<'_, PyInt>>) -> PyResult<Option<u32>> {
    v.map(|v| {
        v.extract::<u32>().map_err(|_| {
            PyValueError::new_err(format!("invalid version {v}: versions are 1, 2, ..."))
        })
    })
    .transpose()
}

fn to_py<T: serde::Serialize>(py: Python<'_>, v: &T) -> PyResult<Py<PyAny>> {
    let s = serde_json::to_string(v).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (s,))?.unbind())
}

/// The process that first made a store call (0: none yet); see `Experiment::store`.
static STORE_USED_BY: AtomicU32 = AtomicU32::new(0);

/// One experiment of a store: `Experiment(name=, project=, local_path=".ml-dash")`.
#[pyclass(module = "ml_dash", subclass)]
pub struct Experiment {
    name: String,
    project: String,
    namespace: String,
    local_path: PathBuf,
    /// `local_path` made absolute when the experiment was created: a later `os.chdir` must not
    /// move the experiment to another store.
    root: PathBuf,
    remote: Option<RemoteConfig>,
    keep_last: Option<u32>,
    keep_tags: Vec<String>,
    inner: Mutex<Option<ml_dash::Experiment>>,
    closed: Mutex<bool>,
}

impl Experiment {
    /// The open engine experiment (opened on first use).
    ///
    /// No lock is held while the store opens (GIL released): a thread holding `inner` across
    /// `detach` deadlocks with a thread that waits for `inner` holding the GIL. Two threads
    /// may both open the store on first use; the first one stored wins (opening is harmless).
    fn exp(&self, py: Python<'_>) -> PyResult<ml_dash::Experiment> {
        if *self.closed.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(PyValueError::new_err(
                "the experiment is closed (call open() to use it again)",
            ));
        }
        if let Some(e) = &*self.inner.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(e.clone());
        }
        let mut b = ml_dash::Experiment::new(&self.name, &self.project)
            .namespace(&self.namespace)
            .local_path(&self.root);
        if let Some(n) = self.keep_last {
            b = b.keep_last(n);
        }
        if !self.keep_tags.is_empty() {
            b = b.keep_tags(self.keep_tags.iter().cloned());
        }
        let e = py.detach(|| b.open()).map_err(py_err)?;
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(g.get_or_insert(e).clone())
    }

    /// `exp`, for calls that open the store's index (sled) or run parallel work (rayon). Both
    /// start threads on first use, and a process forked after that has none of them: such a
    /// call there would wait forever (`DataLoader` workers, `multiprocessing` with `fork`). It is
    /// refused instead. Journal calls (log, parameters, metrics) and readers opened before the
    /// fork do not need those threads and keep working.
    fn store(&self, py: Python<'_>) -> PyResult<ml_dash::Experiment> {
        let me = std::process::id();
        match STORE_USED_BY.compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => {}
            Err(pid) if pid == me => {}
            Err(pid) => {
                return Err(StoreError::new_err(format!(
                    "this process was forked from process {pid} after that one used the store; \
                     the engine's threads do not exist here, so the call would hang: start \
                     workers with multiprocessing's \"spawn\" or \"forkserver\" method, or \
                     before the first store call (files opened with open_file before the fork \
                     stay readable)"
                )));
            }
        }
        self.exp(py)
    }

    /// Mark closed and forget the engine experiment (`open()` opens the store afresh, e.g.
    /// after a failed write poisoned it).
    fn mark_closed(&self) {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

#[pymethods]
impl Experiment {
    /// `remote` (`s3://BUCKET/PREFIX`) is pushed to on `close()` / leaving the `with` block;
    /// credentials come from the AWS environment variables. `keep_last` / `keep_tags` store
    /// the experiment's retention policy when it opens (every later gc keeps only the newest
    /// `keep_last` versions of each file, plus those carrying one of `keep_tags`).
    #[new]
    #[pyo3(signature = (name, project, local_path = None, namespace = "local", remote = None, endpoint = None, keep_last = None, keep_tags = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: String,
        project: String,
        local_path: Option<PathBuf>,
        namespace: &str,
        remote: Option<String>,
        endpoint: Option<String>,
        keep_last: Option<u32>,
        keep_tags: Option<Vec<String>>,
    ) -> PyResult<Self> {
        ml_dash::ExperimentKey::new(namespace, &project, &name).map_err(py_err)?;
        let keep_tags = keep_tags.unwrap_or_default();
        if keep_last.is_some() || !keep_tags.is_empty() {
            ml_dash::RetentionPolicy {
                keep_last,
                keep_tags: keep_tags.clone(),
                keep_within_secs: None,
            }
            .check()
            .map_err(py_err)?;
        }
        let remote = match remote {
            Some(url) => {
                ml_dash::RemoteConfig::new(url.as_str())
                    .check()
                    .map_err(py_err)?;
                let mut c = RemoteConfig::new(url);
                c.endpoint = endpoint;
                Some(c)
            }
            None => None,
        };
        let local_path = local_path.unwrap_or_else(|| PathBuf::from(".ml-dash"));
        let root = std::path::absolute(&local_path).map_err(|e| {
            PyValueError::new_err(format!("invalid local_path {local_path:?}: {e}"))
        })?;
        Ok(Experiment {
            name,
            project,
            namespace: namespace.to_string(),
            local_path,
            root,
            remote,
            keep_last,
            keep_tags,
            inner: Mutex::new(None),
            closed: Mutex::new(false),
        })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    #[getter]
    fn project(&self) -> &str {
        &self.project
    }

    #[getter]
    fn namespace(&self) -> &str {
        &self.namespace
    }

    #[getter]
    fn local_path(&self) -> PathBuf {
        self.local_path.clone()
    }

    /// Open the store (creating it if needed). Returns the experiment.
    fn open(slf: PyRef<'_, Self>, py: Python<'_>) -> PyResult<Py<Self>> {
        *slf.closed.lock().unwrap_or_else(|p| p.into_inner()) = false;
        slf.exp(py)?;
        Ok(slf.into())
    }

    /// Push to the remote, if one was given; returns the push report (or None).
    fn close(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        if *self.closed.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(None);
        }
        if self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            self.wait_background(py)?;
        }
        let rep = match &self.remote {
            Some(cfg) => {
                let e = self.store(py)?;
                let cfg = cfg.clone();
                let rep = py
                    .detach(|| {
                        let r = Remote::open(&cfg)?;
                        e.store().push(&r, None)
                    })
                    .map_err(py_err)?;
                Some(to_py(py, &rep)?)
            }
            None => None,
        };
        self.mark_closed();
        Ok(rep)
    }

    fn __enter__(slf: PyRef<'_, Self>, py: Python<'_>) -> PyResult<Py<Self>> {
        Experiment::open(slf, py)
    }

    /// Leaving the block closes (and pushes) only when it ended without an exception.
    #[pyo3(signature = (exc_type = None, exc = None, tb = None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<Bound<'_, PyAny>>,
        exc: Option<Bound<'_, PyAny>>,
        tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let _ = (exc, tb);
        if exc_type.is_none_or(|t| t.is_none()) {
            self.close(py)?;
        } else {
            // The block failed: still wait for the uploads it queued (their errors would only
            // hide the one on its way out).
            if self
                .inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
            {
                let _ = self.wait_background(py);
            }
            self.mark_closed();
        }
        Ok(false)
    }

    /// Store the file at `path` under `prefix` as a new version; returns its record (a dict
    /// with `filename`, `sizeBytes`, `checksum`, ...). A directory (a `save_pretrained`
    /// checkpoint, one shard per rank) is stored as its tree, `<dir>/<sub>/<file>` under
    /// `prefix`, in one commit (all files visible together, or none); returns their records.
    ///
    /// With `background=True` the file is opened and checked now and stored on the
    /// experiment's upload thread: the call returns an `Upload` handle (`wait()`, `done()`,
    /// `record`) at once, or when the queue of bytes in flight has room. `close()` (and leaving
    /// the `with` block) waits for every upload and raises the errors no `wait()` raised.
    #[pyo3(signature = (path, prefix = "/", description = None, tags = None, metadata = None, name = None, background = false))]
    #[allow(clippy::too_many_arguments)]
    fn file(
        &self,
        py: Python<'_>,
        path: PathBuf,
        prefix: &str,
        description: Option<String>,
        tags: Option<Vec<String>>,
        metadata: Option<Bound<'_, PyAny>>,
        name: Option<String>,
        background: bool,
    ) -> PyResult<Py<PyAny>> {
        let e = self.store(py)?;
        let meta = match metadata {
            Some(m) if !m.is_none() => Some(to_json(py, &m)?),
            _ => None,
        };
        let prefix = prefix.to_string();
        let rec = interruptible(py, || {
            let mut up = e.file(&path).prefix(prefix);
            if let Some(d) = description {
                up = up.description(d);
            }
            if let Some(t) = tags {
                up = up.tags(t);
            }
            if let Some(m) = meta {
                up = up.metadata(m);
            }
            if let Some(n) = name {
                up = up.to(n);
            }
            if path.is_dir() {
                if background {
                    return Err(Error::InvalidInput {
                        what: "source",
                        value: path.display().to_string(),
                        reason: "is a directory: background uploads take files".into(),
                    });
                }
                up.save_tree().map(Done::Tree)
            } else if background {
                up.background().map(Done::Queued)
            } else {
                up.save().map(|r| Done::Stored(Box::new(r)))
            }
        })?;
        match rec {
            Done::Stored(rec) => to_py(py, &rec),
            Done::Tree(recs) => to_py(py, &recs),
            Done::Queued(up) => Ok(Py::new(
                py,
                Upload {
                    up,
                    outcome: Mutex::new(None),
                },
            )?
            .into_any()),
        }
    }

    /// Wait for every background upload (Ctrl-C interrupts the wait, not the uploads); raises
    /// the errors no `Upload.wait()` raised.
    fn wait_background(&self, py: Python<'_>) -> PyResult<()> {
        let e = self.exp(py)?;
        while !py.detach(|| e.background_idle_within(Duration::from_millis(100))) {
            py.check_signals()?;
        }
        e.wait_background().map_err(py_err)
    }

    /// Records of the latest live version of each path (or every version), filtered by
    /// prefix (whole segments), glob (on the path, or the name when it has no '/') and tags.
    #[pyo3(signature = (prefix = "/", glob = None, tags = None, all_versions = false, include_deleted = false))]
    fn files(
        &self,
        py: Python<'_>,
        prefix: &str,
        glob: Option<&str>,
        tags: Option<Vec<String>>,
        all_versions: bool,
        include_deleted: bool,
    ) -> PyResult<Py<PyAny>> {
        let e = self.store(py)?;
        let glob = glob.map(ml_dash::Glob::new).transpose().map_err(py_err)?;
        let f = ListFilter {
            prefix: Some(ml_dash::validate::prefix(prefix).map_err(py_err)?),
            tags: tags.unwrap_or_default(),
            glob,
            all_versions,
            include_deleted,
            ..ListFilter::default()
        };
        let recs = py.detach(|| e.list(f)).map_err(py_err)?;
        to_py(py, &recs)
    }

    /// The record of `/prefix/name` (latest version, or `version`).
    #[pyo3(signature = (path, version = None))]
    fn get(
        &self,
        py: Python<'_>,
        path: &str,
        version: Option<Bound<'_, PyInt>>,
    ) -> PyResult<Py<PyAny>> {
        let version = self::version(version)?;
        let e = self.store(py)?;
        let rec = py.detach(|| e.get(path, version)).map_err(py_err)?;
        to_py(py, &rec)
    }

    /// Write the file's bytes to `dest` (verified; atomic rename). Returns its record.
    #[pyo3(signature = (path, dest, version = None))]
    fn download(
        &self,
        py: Python<'_>,
        path: &str,
        dest: PathBuf,
        version: Option<Bound<'_, PyInt>>,
    ) -> PyResult<Py<PyAny>> {
        let version = self::version(version)?;
        let e = self.store(py)?;
        let rec = interruptible(py, || {
            let key = e.file_key(path)?;
            e.store().download(&key, version, &dest)
        })?;
        to_py(py, &rec)
    }

    /// All the file's bytes (verified).
    #[pyo3(signature = (path, version = None))]
    fn read_bytes<'py>(
        &self,
        py: Python<'py>,
        path: &str,
        version: Option<Bound<'_, PyInt>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let version = self::version(version)?;
        let e = self.store(py)?;
        let mut r = py.detach(|| e.open(path, version)).map_err(py_err)?;
        let n = usize::try_from(r.len())
            .map_err(|_| PyMemoryError::new_err(format!("cannot allocate {} bytes", r.len())))?;
        // Decoded straight into the bytes object: by the reader, which decodes whole chunks in
        // place, when the chunk ids alone prove the bytes; else by `copy_to`, which hashes the
        // SHA-256 beside the decoding.
        PyBytes::new_with(py, n, |buf| {
            py.detach(|| {
                if r.is_proven() {
                    r.read_exact(buf).map_err(|e| match e.downcast::<Error>() {
                        Ok(engine) => engine,
                        Err(io) => Error::Output(io),
                    })
                } else {
                    let mut out: &mut [u8] = buf;
                    r.copy_to(&mut out).map(|_| ())
                }
            })
            .map_err(py_err)
        })
    }

    /// A seekable reader of the file (`ml_dash.Experiment.open_file` wraps it in a file object);
    /// with `remote` (`s3://BUCKET/PREFIX`), of the version on that remote, read lazily
    /// (only its chunks are fetched, cached in this store for later reads and pulls).
    #[pyo3(signature = (path, version = None, remote = None, endpoint = None))]
    fn _reader(
        &self,
        py: Python<'_>,
        path: &str,
        version: Option<Bound<'_, PyInt>>,
        remote: Option<String>,
        endpoint: Option<String>,
    ) -> PyResult<Reader> {
        let version = self::version(version)?;
        let e = self.store(py)?;
        let (r, rec): (Box<dyn Source>, _) = match remote {
            None => {
                let r = py.detach(|| e.open(path, version)).map_err(py_err)?;
                let rec = to_py(py, r.record())?;
                (Box::new(r), rec)
            }
            Some(url) => {
                let mut cfg = RemoteConfig::new(url);
                cfg.endpoint = endpoint;
                let r = interruptible(py, || {
                    let r = std::sync::Arc::new(Remote::open(&cfg)?);
                    e.store().open_remote(r, &e.file_key(path)?, version)
                })?;
                let rec = to_py(py, r.record())?;
                (Box::new(r), rec)
            }
        };
        Ok(Reader {
            inner: Mutex::new(Some(r)),
            record: rec,
        })
    }

    /// Soft-delete every version of the path; returns the records deleted.
    fn delete(&self, py: Python<'_>, path: &str) -> PyResult<Py<PyAny>> {
        let e = self.store(py)?;
        let recs = py.detach(|| e.delete(path)).map_err(py_err)?;
        to_py(py, &recs)
    }

    /// Change the latest version's description, tags or metadata (None leaves it as is).
    #[pyo3(signature = (path, description = None, tags = None, metadata = None))]
    fn update(
        &self,
        py: Python<'_>,
        path: &str,
        description: Option<String>,
        tags: Option<Vec<String>>,
        metadata: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let e = self.store(py)?;
        let meta = match metadata {
            Some(m) => Some(to_json(py, &m)?),
            None => None,
        };
        let rec = py
            .detach(|| {
                e.update(
                    path,
                    &ml_dash::RecordChanges {
                        description: description.map(Some),
                        tags,
                        metadata: meta,
                    },
                )
            })
            .map_err(py_err)?;
        to_py(py, &rec)
    }

    fn parameters(slf: PyRef<'_, Self>) -> Parameters {
        Parameters { exp: slf.into() }
    }

    /// Append a log line; returns it as a dict.
    #[pyo3(signature = (message, level = "info", metadata = None))]
    fn log(
        &self,
        py: Python<'_>,
        message: &str,
        level: &str,
        metadata: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let e = self.exp(py)?;
        let meta = match metadata {
            Some(m) if !m.is_none() => Some(to_json(py, &m)?),
            _ => None,
        };
        let entry = py
            .detach(|| e.log_with(level, message, meta))
            .map_err(py_err)?;
        to_py(py, &entry)
    }

    /// Every log line of the experiment.
    fn logs(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let e = self.exp(py)?;
        let l = py.detach(|| e.logs()).map_err(py_err)?;
        to_py(py, &l)
    }

    fn metric(slf: PyRef<'_, Self>, name: String) -> Metric {
        Metric {
            exp: slf.into(),
            name,
        }
    }

    /// Push the whole store to `url` (default: the experiment's remote). Returns the report.
    #[pyo3(signature = (url = None, endpoint = None))]
    fn push(
        &self,
        py: Python<'_>,
        url: Option<String>,
        endpoint: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let e = self.store(py)?;
        let cfg = match (url, &self.remote) {
            (Some(u), _) => {
                let mut c = RemoteConfig::new(u);
                c.endpoint = endpoint;
                c
            }
            (None, Some(c)) => {
                let mut c = c.clone();
                c.endpoint = endpoint.or(c.endpoint);
                c
            }
            (None, None) => return Err(PyValueError::new_err("no remote given")),
        };
        let rep = py
            .detach(|| {
                let r = Remote::open(&cfg)?;
                e.store().push(&r, None)
            })
            .map_err(py_err)?;
        to_py(py, &rep)
    }

    /// Collect garbage in the whole store, applying its stored retention policies (this
    /// experiment's `keep_last` / `keep_tags` among them). Returns the report (with
    /// `retentionDropped`, the versions the policies dropped).
    #[pyo3(signature = (dry_run = false))]
    fn gc(&self, py: Python<'_>, dry_run: bool) -> PyResult<Py<PyAny>> {
        let e = self.store(py)?;
        let rep = py
            .detach(|| e.store().gc(&ml_dash::GcOptions::new().dry_run(dry_run)))
            .map_err(py_err)?;
        to_py(py, &rep)
    }

    fn __repr__(&self) -> String {
        format!(
            "Experiment(name={:?}, project={:?}, local_path={:?})",
            self.name,
            self.project,
            self.local_path.display().to_string()
        )
    }
}

/// What `file` did: stored the file, or queued it.
enum Done {
    Stored(Box<ml_dash::FileRecord>),
    /// A directory: its files' records, in path order.
    Tree(Vec<ml_dash::FileRecord>),
    Queued(ml_dash::Upload),
}

/// A background upload (`experiment.file(..., background=True)`).
#[pyclass(module = "ml_dash")]
pub struct Upload {
    up: ml_dash::Upload,
    /// The record, or the error, once `wait` has seen it (raised again by a later `wait`).
    outcome: Mutex<Option<PyResult<Py<PyAny>>>>,
}

#[pymethods]
impl Upload {
    /// Wait until the upload has finished (at most `timeout` seconds: then `TimeoutError`);
    /// returns its record or raises why it failed. Ctrl-C interrupts the wait.
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let end = timeout.map(|t| std::time::Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            if let Some(o) = &*self.outcome.lock().unwrap_or_else(|p| p.into_inner()) {
                return match o {
                    Ok(r) => Ok(r.clone_ref(py)),
                    Err(e) => Err(e.clone_ref(py)),
                };
            }
            let slice = match end {
                Some(end) => end
                    .saturating_duration_since(std::time::Instant::now())
                    .min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            if py.detach(|| self.up.wait_for(slice)) {
                let r = py.detach(|| self.up.wait());
                let o = match r {
                    Ok(rec) => to_py(py, &rec),
                    Err(e) => Err(py_err(e)),
                };
                *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(match &o {
                    Ok(r) => Ok(r.clone_ref(py)),
                    Err(e) => Err(e.clone_ref(py)),
                });
                return o;
            }
            py.check_signals()?;
            if end.is_some_and(|end| std::time::Instant::now() >= end) {
                return Err(PyTimeoutError::new_err("the upload has not finished yet"));
            }
        }
    }

    /// Has it finished (stored or failed)?
    fn done(&self) -> bool {
        self.up.done()
    }

    /// The record once stored, else None.
    #[getter]
    fn record(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.up.record().map(|r| to_py(py, &r)).transpose()
    }

    fn __repr__(&self) -> String {
        format!(
            "Upload(done={})",
            if self.up.done() { "True" } else { "False" }
        )
    }
}

/// `experiment.parameters()`: `.set(**values)`, `.get()`.
#[pyclass(module = "ml_dash")]
pub struct Parameters {
    exp: Py<Experiment>,
}

#[pymethods]
impl Parameters {
    /// Merge `values` (nested dicts become dotted keys); returns all parameters.
    #[pyo3(signature = (**values))]
    fn set(&self, py: Python<'_>, values: Option<Bound<'_, PyDict>>) -> PyResult<Py<PyAny>> {
        let e = self.exp.borrow(py).exp(py)?;
        let v = match values {
            Some(d) => to_json(py, d.as_any())?,
            None => serde_json::json!({}),
        };
        let p = py.detach(|| e.parameters().set(&v)).map_err(py_err)?;
        to_py(py, &p.data)
    }

    /// All parameters as a dict of dotted keys (empty when none were set).
    fn get(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let e = self.exp.borrow(py).exp(py)?;
        let p = py.detach(|| e.parameters().get()).map_err(py_err)?;
        to_py(py, &p.map(|p| p.data).unwrap_or_default())
    }
}

/// `experiment.metric(name)`: `.append(value=, epoch=, ...)`, `.points()`.
#[pyclass(module = "ml_dash")]
pub struct Metric {
    exp: Py<Experiment>,
    name: String,
}

#[pymethods]
impl Metric {
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Append one point with the given fields; returns it.
    #[pyo3(signature = (**fields))]
    fn append(&self, py: Python<'_>, fields: Option<Bound<'_, PyDict>>) -> PyResult<Py<PyAny>> {
        let e = self.exp.borrow(py).exp(py)?;
        let v = match fields {
            Some(d) => to_json(py, d.as_any())?,
            None => serde_json::json!({}),
        };
        let name = self.name.clone();
        let p = py.detach(|| e.metric(name).append(&v)).map_err(py_err)?;
        to_py(py, &p)
    }

    /// Every point of the metric.
    fn points(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let e = self.exp.borrow(py).exp(py)?;
        let name = self.name.clone();
        let p = py.detach(|| e.metric(name).points()).map_err(py_err)?;
        to_py(py, &p)
    }
}

/// A verified, seekable reader of one stored version.
#[pyclass(module = "ml_dash")]
pub struct Reader {
    inner: Mutex<Option<Box<dyn Source>>>,
    record: Py<PyAny>,
}

/// What a `Reader` reads: a version in the local store, or one on a remote.
trait Source: Read + Seek + Send {
    fn len(&self) -> u64;
}

impl Source for ml_dash::FileReader {
    fn len(&self) -> u64 {
        ml_dash::FileReader::len(self)
    }
}

impl Source for ml_dash::RemoteFile {
    fn len(&self) -> u64 {
        ml_dash::RemoteFile::len(self)
    }
}

impl Reader {
    /// Run `f` on the open reader. The lock is taken with the GIL released: a thread waiting
    /// for it while holding the GIL would deadlock with the thread inside (which needs the
    /// GIL back to return).
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut dyn Source) -> std::io::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            g.as_mut().map(|r| f(r.as_mut()))
        })
        .ok_or_else(|| PyValueError::new_err("I/O operation on a closed file"))?
        .map_err(|e| {
            // The reader wraps engine errors (damage, above all) in io::Error::other.
            let msg = e.to_string();
            match e.into_inner().map(|i| i.downcast::<Error>()) {
                Some(Ok(engine)) => py_err(*engine),
                _ => PyOSError::new_err(msg),
            }
        })
    }
}

/// Read into all of `buf`, fewer bytes only at the end (`readinto`). An error after some
/// bytes were read ends the call with those bytes and the next read meets it again: the
/// reader stays where the good bytes end, so the file object above it keeps its position.
fn fill(r: &mut dyn Source, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if got == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(got)
}

#[pymethods]
impl Reader {
    #[getter]
    fn record(&self, py: Python<'_>) -> Py<PyAny> {
        self.record.clone_ref(py)
    }

    fn size(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |r| Ok(r.len()))
    }

    /// Up to `n` bytes from the current position (fewer only at the end); all the rest when
    /// `n` is None or negative.
    #[pyo3(signature = (n = None))]
    fn read<'py>(&self, py: Python<'py>, n: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let left = self.with(py, |r| Ok(r.len().saturating_sub(r.stream_position()?)))?;
        // None or negative: all the rest.
        let n = n
            .and_then(|n| u64::try_from(n).ok())
            .map_or(left, |n| left.min(n));
        let n = usize::try_from(n)
            .map_err(|_| PyMemoryError::new_err(format!("cannot allocate {n} bytes")))?;
        // Read straight into the bytes object (no buffer of our own to copy from).
        let mut got = 0;
        let out = PyBytes::new_with(py, n, |buf| {
            // All or an error: a short `bytes` would read as the end of the file.
            got = self.with(py, |r| {
                let mut got = 0;
                while got < buf.len() {
                    match r.read(&mut buf[got..])? {
                        0 => break,
                        k => got += k,
                    }
                }
                Ok(got)
            })?;
            Ok(())
        })?;
        if got < n {
            // Another thread moved the position between the two steps: what was read.
            return Ok(PyBytes::new(py, &out.as_bytes()[..got]));
        }
        Ok(out)
    }

    /// Fill `b` (any writable, contiguous buffer: a `bytearray`, the `memoryview` a file
    /// object or `torch.load` hands over) from the current position; fewer bytes only at the
    /// end. Returns how many. The chunks are decoded straight into `b`.
    fn readinto(&self, py: Python<'_>, b: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut view = buffer::Writable::get(b)?;
        let dest = view.bytes();
        self.with(py, move |r| fill(r, dest))
    }

    #[pyo3(signature = (offset, whence = 0))]
    fn seek(&self, py: Python<'_>, offset: i64, whence: i32) -> PyResult<u64> {
        let pos =
            match whence {
                0 => SeekFrom::Start(u64::try_from(offset).map_err(|_| {
                    PyValueError::new_err(format!("negative seek position {offset}"))
                })?),
                1 => SeekFrom::Current(offset),
                2 => SeekFrom::End(offset),
                w => return Err(PyValueError::new_err(format!("invalid whence ({w})"))),
            };
        self.with(py, |r| r.seek(pos))
    }

    fn tell(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |r| r.stream_position())
    }

    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

/// A caller's writable buffer, held (so that it can be neither freed nor resized) while bytes
/// are written into it.
///
/// The abi3 build for Python 3.9 has no declarations of the buffer protocol (the limited API
/// gained them in 3.11), so the two functions and `Py_buffer` are declared here. Every
/// `CPython` 3 exports both functions, and the struct's layout has not changed since 3.3:
/// 3.11 made it part of the stable ABI as it was.
mod buffer {
    use std::ffi::{c_char, c_int, c_void};

    use pyo3::ffi::{Py_ssize_t, PyObject};
    use pyo3::prelude::*;

    #[repr(C)]
    struct PyBuffer {
        buf: *mut c_void,
        obj: *mut PyObject,
        len: Py_ssize_t,
        itemsize: Py_ssize_t,
        readonly: c_int,
        ndim: c_int,
        format: *mut c_char,
        shape: *mut Py_ssize_t,
        strides: *mut Py_ssize_t,
        suboffsets: *mut Py_ssize_t,
        internal: *mut c_void,
    }

    unsafe extern "C" {
        fn PyObject_GetBuffer(obj: *mut PyObject, view: *mut PyBuffer, flags: c_int) -> c_int;
        fn PyBuffer_Release(view: *mut PyBuffer);
    }

    /// Contiguous bytes, writable (`PyBUF_SIMPLE | PyBUF_WRITABLE`).
    const PYBUF_WRITABLE: c_int = 0x0001;

    pub(crate) struct Writable {
        /// Boxed: the exporter may keep the view's address until it is released.
        view: Box<PyBuffer>,
    }

    impl Writable {
        /// `obj`'s bytes, or the `BufferError` / `TypeError` of an object that has no writable,
        /// contiguous buffer.
        pub(crate) fn get(obj: &Bound<'_, PyAny>) -> PyResult<Writable> {
            let mut view = Box::new(PyBuffer {
                buf: std::ptr::null_mut(),
                obj: std::ptr::null_mut(),
                len: 0,
                itemsize: 0,
                readonly: 0,
                ndim: 0,
                format: std::ptr::null_mut(),
                shape: std::ptr::null_mut(),
                strides: std::ptr::null_mut(),
                suboffsets: std::ptr::null_mut(),
                internal: std::ptr::null_mut(),
            });
            // SAFETY: `obj` is a live object (the GIL is held through `obj`), `view` a
            // zeroed `Py_buffer` that outlives the call.
            let rc = unsafe { PyObject_GetBuffer(obj.as_ptr(), &raw mut *view, PYBUF_WRITABLE) };
            if rc != 0 {
                return Err(PyErr::fetch(obj.py()));
            }
            Ok(Writable { view })
        }

        /// The buffer's bytes. Another Python thread may write into them at the same time (as
        /// with a `readinto` of any file): what it sees is unspecified, never unsafe for us.
        pub(crate) fn bytes(&mut self) -> &mut [u8] {
            let len = usize::try_from(self.view.len).unwrap_or(0);
            if len == 0 || self.view.buf.is_null() {
                return &mut [];
            }
            // SAFETY: a writable, contiguous buffer of `len` bytes, kept alive and at its place
            // by the export held until `drop`.
            unsafe { std::slice::from_raw_parts_mut(self.view.buf.cast::<u8>(), len) }
        }
    }

    impl Drop for Writable {
        fn drop(&mut self) {
            // SAFETY: the view was filled by `PyObject_GetBuffer` and is released once, with
            // the GIL held.
            Python::attach(|_| unsafe { PyBuffer_Release(&raw mut *self.view) });
        }
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Experiment>()?;
    m.add_class::<Parameters>()?;
    m.add_class::<Metric>()?;
    m.add_class::<Reader>()?;
    m.add_class::<Upload>()?;
    m.add("StoreError", m.py().get_type::<StoreError>())?;
    m.add("RemoteError", m.py().get_type::<RemoteError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
