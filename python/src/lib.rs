//! `ml_dash._core`: the Python face of the ml-dash engine. The public module `ml_dash`
//! (python/ml_dash/__init__.py) re-exports these classes and adds a file object for reads.
//!
//! Every call that touches the store or the network releases the GIL (`Python::detach`), so
//! training threads keep running while a checkpoint is ingested. Errors become Python
//! exceptions: `ValueError` (bad input), `FileNotFoundError` (missing file or path),
//! `TimeoutError` (store lock), `OSError` (other I/O), `ml_dash.StoreError` (damage, an unusable
//! store) and its subclass `ml_dash.RemoteError`.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Mutex;

use ml_dash::remote::{Remote, RemoteConfig};
use ml_dash::{Error, ListFilter};
use pyo3::create_exception;
use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyOSError, PyPermissionError, PyRuntimeError, PyTimeoutError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

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
        Error::SourceChanged { .. } => PyOSError::new_err(msg),
        Error::LockTimeout { .. } => PyTimeoutError::new_err(msg),
        Error::Remote { .. } => RemoteError::new_err(msg),
        _ => StoreError::new_err(msg),
    }
}

/// Python object -> JSON value, through Python's own `json` (so anything `json.dumps` accepts
/// works; anything else is a `ValueError`).
fn to_json(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let s: String = py
        .import("json")?
        .call_method1("dumps", (obj,))
        .map_err(|e| PyValueError::new_err(format!("not JSON-serializable: {e}")))?
        .extract()?;
    serde_json::from_str(&s).map_err(|e| PyValueError::new_err(e.to_string()))
}

fn to_py<T: serde::Serialize>(py: Python<'_>, v: &T) -> PyResult<Py<PyAny>> {
    let s = serde_json::to_string(v).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (s,))?.unbind())
}

/// One experiment of a store: `Experiment(name=, project=, local_path=".ml-dash")`.
#[pyclass(module = "ml_dash", subclass)]
pub struct Experiment {
    name: String,
    project: String,
    namespace: String,
    local_path: PathBuf,
    remote: Option<RemoteConfig>,
    inner: Mutex<Option<ml_dash::Experiment>>,
    closed: Mutex<bool>,
}

impl Experiment {
    /// The open engine experiment (opened on first use).
    fn exp(&self, py: Python<'_>) -> PyResult<ml_dash::Experiment> {
        if *self.closed.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(PyValueError::new_err(
                "the experiment is closed (call open() to use it again)",
            ));
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = &*g {
            return Ok(e.clone());
        }
        let b = ml_dash::Experiment::new(&self.name, &self.project)
            .namespace(&self.namespace)
            .local_path(&self.local_path);
        let e = py.detach(|| b.open()).map_err(py_err)?;
        *g = Some(e.clone());
        Ok(e)
    }
}

#[pymethods]
impl Experiment {
    /// `remote` (`s3://BUCKET/PREFIX`) is pushed to on `close()` / leaving the `with` block;
    /// credentials come from the AWS environment variables.
    #[new]
    #[pyo3(signature = (name, project, local_path = None, namespace = "local", remote = None, endpoint = None))]
    fn new(
        name: String,
        project: String,
        local_path: Option<PathBuf>,
        namespace: &str,
        remote: Option<String>,
        endpoint: Option<String>,
    ) -> PyResult<Self> {
        ml_dash::path::ExperimentKey::new(namespace, &project, &name).map_err(py_err)?;
        let remote = match remote {
            Some(url) => {
                ml_dash::remote::parse_url(&url).map_err(py_err)?;
                let mut c = RemoteConfig::new(url);
                c.endpoint = endpoint;
                Some(c)
            }
            None => None,
        };
        Ok(Experiment {
            name,
            project,
            namespace: namespace.to_string(),
            local_path: local_path.unwrap_or_else(|| PathBuf::from(".ml-dash")),
            remote,
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
        let e = self.exp(py)?;
        let rep = match &self.remote {
            Some(cfg) => {
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
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = true;
        Ok(rep)
    }

    fn __enter__(slf: PyRef<'_, Self>, py: Python<'_>) -> PyResult<Py<Self>> {
        Experiment::open(slf, py)
    }

    /// Leaving the block closes (and pushes) only when it ended without an exception.
    #[pyo3(signature = (exc_type = None, _exc = None, _tb = None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if exc_type.is_none_or(|t| t.is_none()) {
            self.close(py)?;
        } else {
            *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = true;
        }
        Ok(false)
    }

    /// Store the file at `path` under `prefix` as a new version; returns its record (a dict
    /// with `filename`, `sizeBytes`, `checksum`, ...).
    #[pyo3(signature = (path, prefix = "/", description = None, tags = None, metadata = None, name = None))]
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
    ) -> PyResult<Py<PyAny>> {
        let e = self.exp(py)?;
        let meta = match metadata {
            Some(m) if !m.is_none() => Some(to_json(py, &m)?),
            _ => None,
        };
        let prefix = prefix.to_string();
        let rec = py
            .detach(|| {
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
                up.save()
            })
            .map_err(py_err)?;
        to_py(py, &rec)
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
        let e = self.exp(py)?;
        let glob = match glob {
            Some(g) => Some(
                globset::Glob::new(g)
                    .map_err(|err| PyValueError::new_err(format!("bad glob {g:?}: {err}")))?
                    .compile_matcher(),
            ),
            None => None,
        };
        let f = ListFilter {
            prefix: Some(ml_dash::path::prefix(prefix).map_err(py_err)?),
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
    fn get(&self, py: Python<'_>, path: &str, version: Option<u32>) -> PyResult<Py<PyAny>> {
        let e = self.exp(py)?;
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
        version: Option<u32>,
    ) -> PyResult<Py<PyAny>> {
        let e = self.exp(py)?;
        let rec = py
            .detach(|| {
                let key = e.file_key(path)?;
                e.store().download(&key, version, &dest)
            })
            .map_err(py_err)?;
        to_py(py, &rec)
    }

    /// All the file's bytes (verified).
    #[pyo3(signature = (path, version = None))]
    fn read_bytes<'py>(
        &self,
        py: Python<'py>,
        path: &str,
        version: Option<u32>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let e = self.exp(py)?;
        let data = py
            .detach(|| {
                let r = e.open(path, version)?;
                ml_dash::read::read_all(&r)
            })
            .map_err(py_err)?;
        Ok(PyBytes::new(py, &data))
    }

    /// A seekable reader of the file (`ml_dash.Experiment.open_file` wraps it in a file object).
    #[pyo3(signature = (path, version = None))]
    fn _reader(&self, py: Python<'_>, path: &str, version: Option<u32>) -> PyResult<Reader> {
        let e = self.exp(py)?;
        let r = py.detach(|| e.open(path, version)).map_err(py_err)?;
        let rec = to_py(py, r.record())?;
        Ok(Reader {
            inner: Mutex::new(Some(r)),
            record: rec,
        })
    }

    /// Soft-delete every version of the path; returns the records deleted.
    fn delete(&self, py: Python<'_>, path: &str) -> PyResult<Py<PyAny>> {
        let e = self.exp(py)?;
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
        let e = self.exp(py)?;
        let meta = match metadata {
            Some(m) => Some(to_json(py, &m)?),
            None => None,
        };
        let rec = py
            .detach(|| e.update(path, description.map(Some), tags, meta))
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
        let e = self.exp(py)?;
        let cfg = match (url, &self.remote) {
            (Some(u), _) => {
                let mut c = RemoteConfig::new(u);
                c.endpoint = endpoint;
                c
            }
            (None, Some(c)) => c.clone(),
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

    fn __repr__(&self) -> String {
        format!(
            "Experiment(name={:?}, project={:?}, local_path={:?})",
            self.name,
            self.project,
            self.local_path.display().to_string()
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
    inner: Mutex<Option<ml_dash::read::FileReader>>,
    record: Py<PyAny>,
}

impl Reader {
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut ml_dash::read::FileReader) -> std::io::Result<T> + Send,
    ) -> PyResult<T> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let r = g
            .as_mut()
            .ok_or_else(|| PyValueError::new_err("I/O operation on a closed file"))?;
        py.detach(|| f(r)).map_err(|e| {
            // The reader wraps engine errors (damage, above all) in io::Error::other.
            let msg = e.to_string();
            match e.into_inner().map(|i| i.downcast::<Error>()) {
                Some(Ok(engine)) => py_err(*engine),
                _ => PyOSError::new_err(msg),
            }
        })
    }
}

#[pymethods]
impl Reader {
    #[getter]
    fn record(&self, py: Python<'_>) -> Py<PyAny> {
        self.record.clone_ref(py)
    }

    fn size(&self) -> PyResult<u64> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(g.as_ref().map(|r| r.len()).unwrap_or(0))
    }

    /// Up to `n` bytes from the current position (fewer only at the end).
    fn read<'py>(&self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.with(py, |r| {
            let mut buf = vec![0u8; n];
            let mut got = 0;
            while got < n {
                match r.read(&mut buf[got..])? {
                    0 => break,
                    k => got += k,
                }
            }
            buf.truncate(got);
            Ok(buf)
        })?;
        Ok(PyBytes::new(py, &data))
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

    fn close(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Experiment>()?;
    m.add_class::<Parameters>()?;
    m.add_class::<Metric>()?;
    m.add_class::<Reader>()?;
    m.add("StoreError", m.py().get_type::<StoreError>())?;
    m.add("RemoteError", m.py().get_type::<RemoteError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
