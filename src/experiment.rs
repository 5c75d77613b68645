//! The user-facing API of the ml-dash Files tutorial: an `Experiment` and its `file(...)` builder.
//!
//! ```no_run
//! use ml_dash::Experiment;
//! let exp = Experiment::new("my-experiment", "project").local_path(".ml-dash").open()?;
//! let rec = exp.file("model.pth").prefix("/models").tags(["best"]).save()?;
//! println!("{} {} {}", rec.filename, rec.size_bytes, rec.checksum);
//! # Ok::<(), ml_dash::Error>(())
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::background::{Background, Upload};
use crate::store::batch::Opened;

use crate::error::{Error, Result};
use crate::format::id::Id;
use crate::format::names::{self, ExperimentKey, FileKey};
use crate::format::record::FileRecord;
use crate::store::index::Scope;
use crate::store::journal::{LogEntry, MetricPoint, Params};
use crate::store::read::FileReader;
use crate::store::{ListFilter, NewVersion, RecordChanges, Store, StoreOptions};

/// Settings for opening an experiment.
pub struct ExperimentBuilder {
    name: String,
    project: String,
    namespace: String,
    local_path: PathBuf,
    options: StoreOptions,
    retention: crate::store::retention::RetentionPolicy,
    background_limit: u64,
    #[cfg(feature = "remote")]
    remote: Option<crate::remote::RemoteConfig>,
}

impl ExperimentBuilder {
    /// Cap on the bytes of background uploads queued or running (default 4 GiB): a
    /// `background()` call that would go past it waits for earlier uploads to finish.
    pub fn background_limit(mut self, bytes: u64) -> Self {
        self.background_limit = bytes;
        self
    }
    /// Keep only the newest `n` versions of each of this experiment's files (plus those
    /// `keep_tags` names): stored as the experiment's retention policy at `open`, applied by
    /// every later gc.
    pub fn keep_last(mut self, n: u32) -> Self {
        self.retention.keep_last = Some(n);
        self
    }
    /// Keep every version carrying one of these tags (e.g. `best`) when retention applies.
    pub fn keep_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.retention.keep_tags = tags.into_iter().map(Into::into).collect();
        self
    }
    /// Push the store to this remote when the experiment is closed (`Experiment::close`).
    #[cfg(feature = "remote")]
    pub fn remote(mut self, r: crate::remote::RemoteConfig) -> Self {
        self.remote = Some(r);
        self
    }
    /// Namespace (default `local`).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }
    /// Store directory (default `.ml-dash`).
    pub fn local_path(mut self, p: impl Into<PathBuf>) -> Self {
        self.local_path = p.into();
        self
    }
    /// Store options (default `StoreOptions::default()`).
    pub fn options(mut self, o: StoreOptions) -> Self {
        self.options = o;
        self
    }
    /// Open (creating the store if needed). Takes no lock that outlives a call.
    pub fn open(self) -> Result<Experiment> {
        let key = ExperimentKey::new(&self.namespace, &self.project, &self.name)?;
        let store = Store::open_with(&self.local_path, self.options)?;
        if self.retention != crate::store::retention::RetentionPolicy::default() {
            store.set_retention(
                crate::store::retention::RetentionScope {
                    namespace: Some(key.namespace.clone()),
                    project: Some(key.project.clone()),
                    experiment: Some(key.experiment.clone()),
                    prefix: None,
                },
                self.retention,
            )?;
        }
        Ok(Experiment {
            background: Arc::new(BackgroundOwner(Arc::new(Background::new(
                store.clone(),
                self.background_limit,
            )))),
            store,
            key,
            #[cfg(feature = "remote")]
            remote: self.remote,
        })
    }
}

/// The background uploads of an experiment; the last clone of the experiment to go waits for
/// them (call `wait_background` or `close` to see their errors).
struct BackgroundOwner(Arc<Background>);

impl Drop for BackgroundOwner {
    fn drop(&mut self) {
        let _ = self.0.wait_all();
    }
}

/// One experiment in a store.
#[derive(Clone)]
pub struct Experiment {
    store: Store,
    key: ExperimentKey,
    background: Arc<BackgroundOwner>,
    #[cfg(feature = "remote")]
    remote: Option<crate::remote::RemoteConfig>,
}

impl Experiment {
    /// Describe an experiment; finish with `.open()`. (Returns a builder, mirroring the ml-dash Files tutorial's
    /// `Experiment(name=, project=, local_path=)` keyword arguments.)
    #[allow(clippy::new_ret_no_self)]
    pub fn new(name: impl Into<String>, project: impl Into<String>) -> ExperimentBuilder {
        ExperimentBuilder {
            name: name.into(),
            project: project.into(),
            namespace: "local".into(),
            local_path: PathBuf::from(".ml-dash"),
            options: StoreOptions::default(),
            retention: Default::default(),
            background_limit: crate::background::DEFAULT_LIMIT,
            #[cfg(feature = "remote")]
            remote: None,
        }
    }

    /// Wait for every background upload to finish; the errors no `Upload::wait` reported
    /// (several are joined in one `Error::Background`).
    pub fn wait_background(&self) -> Result<()> {
        self.background.0.wait_all()
    }

    /// Wait at most `timeout` for the background uploads; true when none is queued or running
    /// (then `wait_background` returns at once). For callers that must stay responsive, e.g. to
    /// Ctrl-C, while they wait.
    pub fn background_idle_within(&self, timeout: std::time::Duration) -> bool {
        self.background.0.idle_within(timeout)
    }

    /// Finish: wait for the background uploads, then push the store to the remote given to
    /// the builder, if any. Everything was already durable locally.
    #[cfg(feature = "remote")]
    pub fn close(&self) -> Result<Option<crate::remote::PushReport>> {
        self.wait_background()?;
        match &self.remote {
            Some(cfg) => {
                let r = crate::remote::Remote::open(cfg)?;
                Ok(Some(self.store.push(&r, None)?))
            }
            None => Ok(None),
        }
    }

    /// The store this experiment lives in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Namespace, project and name of this experiment.
    pub fn key(&self) -> &ExperimentKey {
        &self.key
    }

    /// Start an upload of the file at `path`; finish with `.save()`.
    pub fn file(&self, path: impl AsRef<Path>) -> FileUpload<'_> {
        FileUpload {
            exp: self,
            src: path.as_ref().to_path_buf(),
            prefix: "/".into(),
            to: None,
            v: NewVersion::default(),
        }
    }

    /// `/a/b/name` in this experiment.
    pub fn file_key(&self, full_path: &str) -> Result<FileKey> {
        let (p, name) = names::split_full(full_path)?;
        Ok(self.key.file(p, name))
    }

    /// Latest live version of every file (at or under `prefix`, `/` for all).
    pub fn files(&self, prefix: &str) -> Result<Vec<FileRecord>> {
        self.list(ListFilter {
            prefix: Some(names::prefix(prefix)?),
            ..Default::default()
        })
    }

    /// Files matching a filter (its scope is set to this experiment).
    pub fn list(&self, mut f: ListFilter) -> Result<Vec<FileRecord>> {
        f.scope = Scope {
            namespace: Some(self.key.namespace.clone()),
            project: Some(self.key.project.clone()),
            experiment: Some(self.key.experiment.clone()),
        };
        self.store.list(&f)
    }

    /// Latest live version (or `version`) of `/a/b/name`.
    pub fn get(&self, full_path: &str, version: Option<u32>) -> Result<FileRecord> {
        self.store.resolve(&self.file_key(full_path)?, version)
    }

    /// Download to a path (atomic: temp file + rename after every chunk verified).
    pub fn download(&self, full_path: &str, dest: impl AsRef<Path>) -> Result<FileRecord> {
        self.store
            .download(&self.file_key(full_path)?, None, dest.as_ref())
    }

    /// Download a given version into a writer.
    pub fn download_to(
        &self,
        full_path: &str,
        version: Option<u32>,
        out: &mut (dyn Write + Send),
    ) -> Result<FileRecord> {
        self.store
            .download_to(&self.file_key(full_path)?, version, out)
    }

    /// Open for reading (`Read + Seek`).
    pub fn open(&self, full_path: &str, version: Option<u32>) -> Result<FileReader> {
        self.store.open_file(&self.file_key(full_path)?, version)
    }

    /// Soft-delete every version of a path.
    pub fn delete(&self, full_path: &str) -> Result<Vec<FileRecord>> {
        self.store.delete(&self.file_key(full_path)?)
    }

    /// Change description / tags / metadata of the latest live version of a path.
    pub fn update(&self, full_path: &str, changes: &RecordChanges) -> Result<FileRecord> {
        let rec = self.get(full_path, None)?;
        self.store.update(rec.id, changes)
    }

    /// This experiment's parameters: `experiment.parameters().set(&json!({...}))`.
    pub fn parameters(&self) -> Parameters<'_> {
        Parameters { exp: self }
    }

    /// Append an `info` log line.
    pub fn log(&self, message: impl AsRef<str>) -> Result<LogEntry> {
        self.store.log(&self.key, "info", message.as_ref(), None)
    }

    /// Append a log line with a level (debug, info, warn, error, critical) and metadata.
    pub fn log_with(
        &self,
        level: &str,
        message: impl AsRef<str>,
        metadata: Option<serde_json::Value>,
    ) -> Result<LogEntry> {
        self.store.log(&self.key, level, message.as_ref(), metadata)
    }

    /// All log lines, in order.
    pub fn logs(&self) -> Result<Vec<LogEntry>> {
        Ok(self.store.journal(&self.key)?.logs)
    }

    /// A metric series: `experiment.metric("train_loss").append(&json!({"value": l, "epoch": e}))`.
    pub fn metric(&self, name: impl Into<String>) -> Metric<'_> {
        Metric {
            exp: self,
            name: name.into(),
        }
    }

    /// Change description / tags / metadata of a version by id.
    pub fn update_version(&self, id: Id, changes: &RecordChanges) -> Result<FileRecord> {
        self.store.update(id, changes)
    }

    /// A whole version of a path (`None`: the latest live one) in memory, verified (for small
    /// files; `open` reads any size).
    pub fn read(&self, full_path: &str, version: Option<u32>) -> Result<Vec<u8>> {
        crate::store::read::read_all(&self.open(full_path, version)?)
    }
}

/// Handle on an experiment's parameters.
pub struct Parameters<'a> {
    exp: &'a Experiment,
}

impl Parameters<'_> {
    /// Merge a JSON object into the parameters; nested keys are flattened with dots
    /// (`{"model": {"arch": "x"}}` sets `model.arch`). Durable when it returns.
    pub fn set(&self, values: &serde_json::Value) -> Result<Params> {
        self.exp.store.set_params(&self.exp.key, values)
    }

    /// Current parameters (None before the first `set`).
    pub fn get(&self) -> Result<Option<Params>> {
        Ok(self.exp.store.journal(&self.exp.key)?.params)
    }
}

/// Handle on one metric series.
pub struct Metric<'a> {
    exp: &'a Experiment,
    name: String,
}

impl Metric<'_> {
    /// Append a point of named fields (`{"value": 0.5, "epoch": 3}`). Durable when it returns
    /// (each call is one write and one fdatasync).
    pub fn append(&self, fields: &serde_json::Value) -> Result<MetricPoint> {
        self.exp
            .store
            .append_metric(&self.exp.key, &self.name, fields)
    }

    /// Append several points in order with one write and one fdatasync: all of them are
    /// durable when it returns (see `Store::append_metrics`). For many points at once, e.g.
    /// the values a training loop buffered since its last call.
    ///
    /// ```
    /// # fn main() -> ml_dash::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let exp = ml_dash::Experiment::new("run", "project").local_path(dir.path()).open()?;
    /// let steps: Vec<_> = (0..100).map(|s| serde_json::json!({"value": 1.0 / (s + 1) as f64, "step": s})).collect();
    /// let points = exp.metric("loss").append_many(&steps)?;
    /// assert_eq!((points[0].index, points[99].index), (0, 99));
    /// # Ok(())
    /// # }
    /// ```
    pub fn append_many(&self, points: &[serde_json::Value]) -> Result<Vec<MetricPoint>> {
        self.exp
            .store
            .append_metrics(&self.exp.key, &self.name, points)
    }

    /// All points, in order.
    pub fn points(&self) -> Result<Vec<MetricPoint>> {
        Ok(self
            .exp
            .store
            .journal(&self.exp.key)?
            .metrics
            .remove(&self.name)
            .unwrap_or_default())
    }
}

/// An upload being described; nothing happens until `save`.
pub struct FileUpload<'a> {
    exp: &'a Experiment,
    src: PathBuf,
    prefix: String,
    to: Option<String>,
    v: NewVersion,
}

impl FileUpload<'_> {
    /// Directory in the experiment (default `/`).
    pub fn prefix(mut self, p: impl Into<String>) -> Self {
        self.prefix = p.into();
        self
    }
    /// Store under another name (a relative path; default: the source's file name).
    pub fn to(mut self, name: impl Into<String>) -> Self {
        self.to = Some(name.into());
        self
    }
    /// A description for the record (default none).
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.v.description = Some(d.into());
        self
    }
    /// Tags for the record (default none; at most 256, each 1-256 bytes).
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.v.tags = tags.into_iter().map(Into::into).collect();
        self
    }
    /// A JSON object (default null).
    pub fn metadata(mut self, m: serde_json::Value) -> Self {
        self.v.metadata = m;
        self
    }

    /// Check everything, then store the file as a new version.
    pub fn save(self) -> Result<FileRecord> {
        let key = self.key()?;
        self.exp.store.put_file(&self.src, &key, self.v, None)
    }

    /// Store the directory at the source path as a tree under the prefix, in one commit (all
    /// its files become visible together, or none does): `<dir name>/<sub>/<file>`, or
    /// `<to>/<sub>/<file>` with `to`. Every file gets the description, tags and metadata. A
    /// symbolic link to a directory, a FIFO, socket or device, or a non-UTF-8 name anywhere in
    /// it stores nothing. Each file is stored as deltas against the previous version of the
    /// same path when that pays, so a checkpoint directory saved again under the same prefix
    /// has each shard follow the same shard of the previous save.
    pub fn save_tree(self) -> Result<Vec<FileRecord>> {
        let top = self.key()?;
        let files = crate::store::tree::walk_tree(&self.src)?;
        if files.is_empty() {
            return Err(Error::invalid(
                "source",
                self.src.display().to_string(),
                "holds no file to upload",
            ));
        }
        let mut batch = self.exp.store.upload_batch();
        for (rel, path) in files {
            let (dir, filename) = names::target(&top.path, &format!("{}/{rel}", top.filename))?;
            batch.file(path, self.exp.key.file(dir, filename), self.v.clone());
        }
        batch.commit()
    }

    /// Check everything and open the file now; store it on the experiment's upload thread.
    /// Returns at once (or, when the background queue is full, once earlier uploads made
    /// room) with a handle to `wait` for the record. The bytes stored are the file's as
    /// opened now: replacing it by a rename later is fine; modifying it in place before it has
    /// been read fails the upload with `SourceChanged` (nothing stored).
    pub fn background(self) -> Result<Upload> {
        let key = self.key()?;
        crate::store::write::check_new(&key, &self.v)?;
        let src = Opened::open(&self.src)?;
        self.exp.background.0.submit(src, key, self.v)
    }

    fn key(&self) -> Result<FileKey> {
        let prefix = names::prefix(&self.prefix)?;
        let name = match &self.to {
            Some(t) => t.clone(),
            None => self
                .src
                .file_name()
                .ok_or_else(|| {
                    Error::invalid("source", self.src.display().to_string(), "has no file name")
                })?
                .to_str()
                .ok_or_else(|| {
                    Error::invalid(
                        "source",
                        self.src.display().to_string(),
                        "file name is not UTF-8; give a name with `to`",
                    )
                })?
                .to_string(),
        };
        let (dir, filename) = names::target(&prefix, &name)?;
        Ok(self.exp.key.file(dir, filename))
    }
}
