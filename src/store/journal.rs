//! Per-experiment journals: parameters, log lines and metric points.
//!
//! ```text
//! <root>/journals/<first 32 hex of BLAKE3(namespace \0 project \0 experiment)>.jsonl
//! line := <first 16 hex of BLAKE3(json)> " " <json> "\n"
//! json := {"namespace","project","experiment","kind":"params"|"log"|"metric", ...}
//! ```
//! Appends are durable before they return (one write + one fdatasync per call: `set_params`,
//! `log` and `append_metric` append one line, `append_metrics` and the `import_*` calls append
//! many lines with one write and one fdatasync) and are serialized by an flock on the journal
//! file itself, so they never wait for the store lock or the index. A crash can
//! leave a torn last line: readers skip any line whose checksum fails, and the next append
//! first terminates a torn line, so a torn write never hides later records. Journals are
//! their own durable truth: the index does not need them and a rebuild leaves them alone.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};
use crate::format::names::ExperimentKey;
use crate::store::Store;

/// Current parameters of an experiment: every `set` merged, keys flattened with dots.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    /// Number of `set` calls so far.
    pub version: u64,
    /// Flattened keys (`model.arch`) and their values.
    pub data: BTreeMap<String, Value>,
    /// When the parameters were first set.
    pub created_at: String,
    /// When they last changed.
    pub updated_at: String,
}

/// One log line of an experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// 1, 2, 3, ... per experiment.
    pub sequence_number: u64,
    /// When it was written (ISO-8601 UTC).
    pub timestamp: String,
    /// `debug`, `info`, `warn`, `error` or `critical`.
    pub level: String,
    /// The text.
    pub message: String,
    /// Extra fields given with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// One point of a metric series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricPoint {
    /// 0, 1, 2, ... per metric.
    pub index: u64,
    /// The named fields of the point (`value`, `epoch`, ..., and `_ts`, Unix seconds).
    pub data: Map<String, Value>,
    /// When it was appended (ISO-8601 UTC).
    pub created_at: String,
}

/// What is recorded about an experiment itself: its status, description, tags and metadata
/// (every `set_experiment_info` merged: a field given replaces the one before, one left out
/// stays). A served store records here what the ml-dash client says when it opens and closes
/// an experiment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentInfo {
    /// `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED` (as the client said), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// A description, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Tags, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Metadata (a JSON object), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// The folders the experiment sits in under its project (`a/b`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    /// When this was first recorded (empty in a change handed to `set_experiment_info`).
    #[serde(default)]
    pub created_at: String,
    /// When it last changed (idem).
    #[serde(default)]
    pub updated_at: String,
}

impl ExperimentInfo {
    fn merge(&mut self, change: ExperimentInfo) {
        let ExperimentInfo {
            status,
            description,
            tags,
            metadata,
            folder,
            created_at: _,
            updated_at,
        } = change;
        if status.is_some() {
            self.status = status;
        }
        if description.is_some() {
            self.description = description;
        }
        if tags.is_some() {
            self.tags = tags;
        }
        if metadata.is_some() {
            self.metadata = metadata;
        }
        if folder.is_some() {
            self.folder = folder;
        }
        if self.created_at.is_empty() {
            self.created_at.clone_from(&updated_at);
        }
        self.updated_at = updated_at;
    }
}

/// One journal line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub(crate) enum Entry {
    Params {
        at: String,
        data: BTreeMap<String, Value>,
    },
    Log(LogEntry),
    Experiment(ExperimentInfo),
    #[serde(rename_all = "camelCase")]
    Metric {
        name: String,
        point: MetricPoint,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Line {
    pub(crate) namespace: String,
    pub(crate) project: String,
    pub(crate) experiment: String,
    #[serde(flatten)]
    pub(crate) entry: Entry,
}

/// Everything in one experiment's journal.
#[derive(Clone, Debug, Default)]
pub struct JournalContents {
    /// Parameters, if any were set.
    pub params: Option<Params>,
    /// What was recorded about the experiment itself, if anything.
    pub info: Option<ExperimentInfo>,
    /// Log lines in order.
    pub logs: Vec<LogEntry>,
    /// Metric series by name, points in order.
    pub metrics: BTreeMap<String, Vec<MetricPoint>>,
    /// Complete lines that failed their checksum or did not parse: damage.
    pub bad_lines: usize,
    /// Lines torn by a crashed append (terminated by a later append, or still at the end):
    /// harmless, their appends never returned.
    pub torn_lines: usize,
}

/// How an append ends a torn line left by a crashed writer.
pub(crate) const TORN_MARK: &[u8] = b" <torn>\n";

impl JournalContents {
    fn apply(&mut self, e: Entry) {
        match e {
            Entry::Params { at, data } => {
                let p = self.params.get_or_insert_with(|| Params {
                    created_at: at.clone(),
                    ..Default::default()
                });
                p.version += 1;
                p.data.extend(data);
                p.updated_at = at;
            }
            Entry::Log(l) => self.logs.push(l),
            Entry::Experiment(i) => self.info.get_or_insert_with(Default::default).merge(i),
            Entry::Metric { name, point } => self.metrics.entry(name).or_default().push(point),
        }
    }
}

/// Flatten nested objects into dotted keys: `{"a":{"b":1}}` → `{"a.b":1}`.
pub fn flatten(v: &Value) -> Result<BTreeMap<String, Value>> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() || prefix.is_empty() => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    if !v.is_object() {
        return Err(Error::invalid(
            "parameters",
            v.to_string(),
            "must be a JSON object",
        ));
    }
    crate::format::record::check_metadata(v)?;
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    if let Some(k) = out
        .keys()
        .find(|k| k.is_empty() || k.chars().any(char::is_control))
    {
        return Err(Error::invalid(
            "parameter name",
            k.clone(),
            "must be non-empty without control characters",
        ));
    }
    Ok(out)
}

pub(crate) fn check_level(level: &str) -> Result<()> {
    if ["debug", "info", "warn", "warning", "error", "critical"].contains(&level) {
        Ok(())
    } else {
        Err(Error::invalid(
            "log level",
            level,
            "use debug, info, warn, error or critical",
        ))
    }
}

fn checksum(json: &[u8]) -> String {
    blake3::hash(json).to_hex()[..16].to_string()
}

pub(crate) fn parse_line(line: &[u8]) -> Option<Line> {
    let text = std::str::from_utf8(line).ok()?;
    let (sum, json) = text.split_once(' ')?;
    if sum != checksum(json.as_bytes()) {
        return None;
    }
    serde_json::from_str(json).ok()
}

/// The name of an experiment's journal (`journals/<name>.jsonl`, and its remote directory).
pub(crate) fn journal_name(exp: &ExperimentKey) -> String {
    let key = format!("{}\0{}\0{}", exp.namespace, exp.project, exp.experiment);
    blake3::hash(key.as_bytes()).to_hex()[..32].to_string()
}

/// Per-process cache of journal contents, keyed by path, valid up to `len` bytes of the file
/// whose identity (device, inode) is recorded: a store deleted and recreated at the same path
/// is another file, and is read afresh.
type Cached = ((u64, u64), u64, Arc<JournalContents>);
static CACHE: Mutex<Option<HashMap<PathBuf, Cached>>> = Mutex::new(None);

/// `(device, inode)` and length of an open journal.
fn identity(file: &File, path: &Path) -> Result<((u64, u64), u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata().at(path)?;
    Ok(((m.dev(), m.ino()), m.len()))
}

/// Bring `(len, contents)` up to date with the file from `len` on (lines are only appended).
fn catch_up(file: &File, path: &Path, len: &mut u64, c: &mut JournalContents) -> Result<()> {
    let mut r = BufReader::new(file);
    r.seek(SeekFrom::Start(*len)).at(path)?;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf).at(path)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            // End, or a torn last line: stop before it (it is terminated by the next append).
            return Ok(());
        }
        *len += n as u64;
        match parse_line(&buf[..n - 1]) {
            Some(l) => c.apply(l.entry),
            None if buf.ends_with(TORN_MARK) => c.torn_lines += 1,
            None => c.bad_lines += 1,
        }
    }
}

impl Store {
    pub(crate) fn journal_path(&self, exp: &ExperimentKey) -> PathBuf {
        let name = journal_name(exp);
        self.dir("journals").join(format!("{name}.jsonl"))
    }

    /// Read an experiment's journal (empty if it has none). Lines already read by this process
    /// are served from memory (the file is append-only).
    pub fn journal(&self, exp: &ExperimentKey) -> Result<JournalContents> {
        Ok(Arc::unwrap_or_clone(self.journal_shared(exp)?))
    }

    /// Like [`journal`](Self::journal), without copying what this process already read: the
    /// contents are shared with the cache (a page showing a million metric points reads them
    /// in place).
    pub fn journal_shared(&self, exp: &ExperimentKey) -> Result<Arc<JournalContents>> {
        let Some((path, file)) = self.open_journal_shared(exp)? else {
            return Ok(Arc::default());
        };
        let (mut len, mut c) = cached(&file, &path)?;
        let size = file.metadata().at(&path)?.len();
        if size > len {
            // New lines: caught up on a copy only if another reader holds this one.
            let before = len;
            catch_up(&file, &path, &mut len, Arc::make_mut(&mut c))?;
            if len > before {
                store_cache(&file, &path, len, c.clone())?;
            }
        }
        if size > len {
            Arc::make_mut(&mut c).torn_lines += 1;
        }
        Ok(c)
    }

    /// An experiment's journal, opened and locked shared; `None` if it has none.
    fn open_journal_shared(&self, exp: &ExperimentKey) -> Result<Option<(PathBuf, File)>> {
        let path = self.journal_path(exp);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        file.lock_shared().at(&path)?;
        Ok(Some((path, file)))
    }

    /// Read an experiment's journal entirely from disk (for `verify`).
    pub(crate) fn journal_from_disk(&self, exp: &ExperimentKey) -> Result<JournalContents> {
        let Some((path, file)) = self.open_journal_shared(exp)? else {
            return Ok(JournalContents::default());
        };
        let (mut len, mut c) = (0, JournalContents::default());
        catch_up(&file, &path, &mut len, &mut c)?;
        if file.metadata().at(&path)?.len() > len {
            c.torn_lines += 1;
        }
        Ok(c)
    }

    fn append(
        &self,
        exp: &ExperimentKey,
        make: impl FnOnce(&JournalContents) -> Entry,
    ) -> Result<Entry> {
        let mut made = self.append_all(exp, |c| vec![make(c)])?;
        Ok(made.pop().expect("one entry appended"))
    }

    /// Append the entries `make` returns (given the journal as it is, under its lock) with one
    /// write and one fdatasync: when this returns they are all durable; a crash before leaves
    /// any of them, in order, up to a torn last line (readers skip it).
    fn append_all(
        &self,
        exp: &ExperimentKey,
        make: impl FnOnce(&JournalContents) -> Vec<Entry>,
    ) -> Result<Vec<Entry>> {
        self.check_poison()?;
        let dir = self.dir("journals");
        if !dir.exists() {
            fs::create_dir_all(&dir).at(&dir)?;
            crate::store::durable::fsync_dir(&self.root, &self.opts.faults)?;
        }
        let path = self.journal_path(exp);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .at(&path)?;
        file.lock().at(&path)?;
        // Taken out of the cache, not cloned (a clone per append made appends quadratic); put
        // back below. We hold the journal's exclusive flock, so no other caller needs it.
        let (mut len, mut c) = take_cached(&file, &path)?;
        catch_up(&file, &path, &mut len, &mut c)?;
        let size = file.metadata().at(&path)?.len();
        let mut out = Vec::new();
        if size > len {
            // A torn line from a crashed writer: end it so it stays one bad line.
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, size - 1).at(&path)?;
            if last[0] != b'\n' {
                out.extend_from_slice(TORN_MARK);
                c.torn_lines += 1;
            }
        }
        let entries = make(&c);
        for entry in &entries {
            let line = Line {
                namespace: exp.namespace.clone(),
                project: exp.project.clone(),
                experiment: exp.experiment.clone(),
                entry: entry.clone(),
            };
            let json = serde_json::to_vec(&line).expect("journal line serializes");
            out.extend_from_slice(checksum(&json).as_bytes());
            out.push(b' ');
            out.extend_from_slice(&json);
            out.push(b'\n');
        }
        self.write_journal(&mut file, &path, &out, size == 0)?;
        for entry in &entries {
            c.apply(entry.clone());
        }
        store_cache(&file, &path, size + out.len() as u64, Arc::new(c))?;
        Ok(entries)
    }

    /// Append `out` to the locked journal `file` with one write and one fdatasync (and, for a
    /// journal that was empty, an fsync of its directory); a failure poisons the store.
    pub(crate) fn write_journal(
        &self,
        file: &mut File,
        path: &Path,
        out: &[u8],
        was_empty: bool,
    ) -> Result<()> {
        let faults = &self.opts.faults;
        let r = faults
            .check(crate::store::fault::FaultKind::Write, path)
            .and_then(|()| file.write_all(out).at(path));
        self.poison(r)?;
        let r = faults
            .check(crate::store::fault::FaultKind::Sync, path)
            .and_then(|()| file.sync_data().at(path));
        self.poison(r)?;
        if was_empty {
            let dir = path.parent().unwrap_or(path);
            self.poison(crate::store::durable::fsync_dir(dir, faults))?;
        }
        Ok(())
    }

    /// Merge parameters (a JSON object; nested keys are flattened with dots).
    pub fn set_params(&self, exp: &ExperimentKey, values: &Value) -> Result<Params> {
        let data = flatten(values)?;
        self.append(exp, |_| Entry::Params {
            at: crate::format::time::now_iso(),
            data,
        })?;
        Ok(self.journal(exp)?.params.unwrap_or_default())
    }

    /// Record the experiment's status, description, tags, metadata or folder: each field given
    /// replaces the one recorded before, a field left `None` stays. Returns what is recorded.
    pub fn set_experiment_info(
        &self,
        exp: &ExperimentKey,
        change: ExperimentInfo,
    ) -> Result<ExperimentInfo> {
        if let Some(s) = &change.status
            && (s.is_empty() || s.len() > 64 || s.chars().any(char::is_control))
        {
            return Err(Error::invalid(
                "status",
                s.clone(),
                "must be 1-64 bytes without control characters",
            ));
        }
        if let Some(d) = &change.description {
            crate::format::record::check_description(d)?;
        }
        if let Some(t) = &change.tags {
            crate::format::record::check_tags(t)?;
        }
        if let Some(m) = &change.metadata {
            crate::format::record::check_metadata(m)?;
        }
        if let Some(f) = &change.folder
            && !f.is_empty()
        {
            for seg in f.split('/') {
                crate::format::names::segment("folder", seg)?;
            }
        }
        let at = crate::format::time::now_iso();
        let change = ExperimentInfo {
            created_at: String::new(),
            updated_at: at,
            ..change
        };
        self.append(exp, |_| Entry::Experiment(change))?;
        Ok(self.journal(exp)?.info.unwrap_or_default())
    }

    /// Append several log lines, in order, with one write and one fdatasync: when this returns,
    /// all of them are durable. Each is `(timestamp, level, message, metadata)`: a timestamp
    /// given (ISO-8601, as a client recorded it) is kept, else the time of the append. Every line
    /// is checked before anything is written. Returns the lines with their sequence numbers.
    pub fn log_many(
        &self,
        exp: &ExperimentKey,
        lines: Vec<(Option<String>, String, String, Option<Value>)>,
    ) -> Result<Vec<LogEntry>> {
        for (ts, level, message, metadata) in &lines {
            check_level(level)?;
            if let Some(m) = metadata {
                crate::format::record::check_metadata(m)?;
            }
            if message.len() > crate::format::record::MAX_DESCRIPTION {
                return Err(Error::invalid(
                    "log message",
                    format!("{} bytes", message.len()),
                    format!("at most {} bytes", crate::format::record::MAX_DESCRIPTION),
                ));
            }
            if let Some(t) = ts
                && (t.is_empty() || t.len() > 64 || t.chars().any(char::is_control))
            {
                return Err(Error::invalid(
                    "log timestamp",
                    t.clone(),
                    "must be an ISO-8601 time of at most 64 bytes",
                ));
            }
        }
        if lines.is_empty() {
            return Ok(Vec::new());
        }
        let now = crate::format::time::now_iso();
        let entries = self.append_all(exp, |c| {
            (c.logs.len() as u64 + 1..)
                .zip(lines)
                .map(|(n, (ts, level, message, metadata))| {
                    Entry::Log(LogEntry {
                        sequence_number: n,
                        timestamp: ts.unwrap_or_else(|| now.clone()),
                        level,
                        message,
                        metadata,
                    })
                })
                .collect()
        })?;
        Ok(entries
            .into_iter()
            .filter_map(|e| match e {
                Entry::Log(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    /// Append a log line. `level`: `debug`, `info`, `warn` (or `warning`), `error` or
    /// `critical`.
    pub fn log(
        &self,
        exp: &ExperimentKey,
        level: &str,
        message: &str,
        metadata: Option<Value>,
    ) -> Result<LogEntry> {
        check_level(level)?;
        if let Some(m) = &metadata {
            crate::format::record::check_metadata(m)?;
        }
        let e = self.append(exp, |c| {
            Entry::Log(LogEntry {
                sequence_number: c.logs.len() as u64 + 1,
                timestamp: crate::format::time::now_iso(),
                level: level.to_string(),
                message: message.to_string(),
                metadata,
            })
        })?;
        match e {
            Entry::Log(l) => Ok(l),
            _ => unreachable!("appended a log entry"),
        }
    }

    /// Append a point to metric `name`: named fields such as `{"value": 0.5, "epoch": 3}`.
    /// Durable when it returns (one write and one fdatasync per call; `append_metrics` appends
    /// many points with one).
    pub fn append_metric(
        &self,
        exp: &ExperimentKey,
        name: &str,
        fields: &Value,
    ) -> Result<MetricPoint> {
        let mut points = self.append_metrics(exp, name, std::slice::from_ref(fields))?;
        Ok(points.pop().expect("one point appended"))
    }

    /// Append several points to metric `name`, in order, with one write and one fdatasync:
    /// when this returns, all of them are durable. If it fails (or the process dies before it
    /// returns), a crash may keep any first few of them and none after a missing one. Every
    /// point is checked before anything is written.
    pub fn append_metrics(
        &self,
        exp: &ExperimentKey,
        name: &str,
        points: &[Value],
    ) -> Result<Vec<MetricPoint>> {
        crate::format::names::metric_name(name)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut data = Vec::with_capacity(points.len());
        for fields in points {
            let Value::Object(d) = fields else {
                return Err(Error::invalid(
                    "metric point",
                    fields.to_string(),
                    "must be a JSON object of named fields",
                ));
            };
            crate::format::record::check_metadata(fields)?;
            let mut d = d.clone();
            d.entry("_ts")
                .or_insert_with(|| serde_json::json!(now.as_secs_f64()));
            data.push(d);
        }
        let entries = self.append_all(exp, |c| {
            let first = c.metrics.get(name).map_or(0, |v| v.len() as u64);
            let at = crate::format::time::now_iso();
            (first..)
                .zip(data)
                .map(|(index, data)| Entry::Metric {
                    name: name.to_string(),
                    point: MetricPoint {
                        index,
                        data,
                        created_at: at.clone(),
                    },
                })
                .collect()
        })?;
        Ok(entries
            .into_iter()
            .filter_map(|e| match e {
                Entry::Metric { point, .. } => Some(point),
                _ => None,
            })
            .collect())
    }

    /// Every experiment that has a journal (from each journal's first intact line).
    pub fn journal_experiments(&self) -> Result<Vec<ExperimentKey>> {
        let dir = self.dir("journals");
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        for e in entries {
            let path = e.at(&dir)?.path();
            if path.extension().is_none_or(|x| x != "jsonl") {
                continue;
            }
            let f = File::open(&path).at(&path)?;
            for line in BufReader::new(f).split(b'\n') {
                if let Some(l) = parse_line(&line.at(&path)?) {
                    out.push(ExperimentKey {
                        namespace: l.namespace,
                        project: l.project,
                        experiment: l.experiment,
                    });
                    break;
                }
            }
        }
        out.sort_by(|a, b| {
            (&a.namespace, &a.project, &a.experiment).cmp(&(
                &b.namespace,
                &b.project,
                &b.experiment,
            ))
        });
        Ok(out)
    }

    /// Import helpers: append already-formed records verbatim (keeping their timestamps).
    pub(crate) fn import_params(
        &self,
        exp: &ExperimentKey,
        at: &str,
        data: BTreeMap<String, Value>,
    ) -> Result<()> {
        self.append(exp, |_| Entry::Params {
            at: at.to_string(),
            data,
        })
        .map(drop)
    }

    /// Append log lines as they are (import), with one write and one fdatasync for all of
    /// them: when this returns, every one is durable.
    pub(crate) fn import_logs(&self, exp: &ExperimentKey, entries: Vec<LogEntry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.append_all(exp, |_| entries.into_iter().map(Entry::Log).collect())
            .map(drop)
    }

    /// Append points of metric `name` as they are (import), with one write and one fdatasync
    /// for all of them: when this returns, every one is durable.
    pub(crate) fn import_metrics(
        &self,
        exp: &ExperimentKey,
        name: &str,
        points: Vec<MetricPoint>,
    ) -> Result<()> {
        crate::format::names::metric_name(name)?;
        if points.is_empty() {
            return Ok(());
        }
        let entry = |point| Entry::Metric {
            name: name.to_string(),
            point,
        };
        self.append_all(exp, |_| points.into_iter().map(entry).collect())
            .map(drop)
    }
}

fn cached(file: &File, path: &Path) -> Result<(u64, Arc<JournalContents>)> {
    let (id, size) = identity(file, path)?;
    let g = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    Ok(g.as_ref()
        .and_then(|m| m.get(path))
        .filter(|(cid, len, _)| *cid == id && *len <= size)
        .map(|(_, len, c)| (*len, Arc::clone(c)))
        .unwrap_or_default())
}

fn take_cached(file: &File, path: &Path) -> Result<(u64, JournalContents)> {
    let (id, size) = identity(file, path)?;
    let mut g = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    Ok(g.as_mut()
        .and_then(|m| m.remove(path))
        .filter(|(cid, len, _)| *cid == id && *len <= size)
        // A reader still holding these contents keeps its copy; the append takes another.
        .map(|(_, len, c)| (len, Arc::unwrap_or_clone(c)))
        .unwrap_or_default())
}

fn store_cache(file: &File, path: &Path, len: u64, c: Arc<JournalContents>) -> Result<()> {
    let (id, _) = identity(file, path)?;
    let mut g = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    g.get_or_insert_with(HashMap::new)
        .insert(path.to_path_buf(), (id, len, c));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_nested() {
        let f = flatten(&serde_json::json!({"model": {"arch": "resnet50", "pretrained": true}, "lr": 0.1, "empty": {}})).unwrap();
        assert_eq!(f["model.arch"], "resnet50");
        assert_eq!(f["model.pretrained"], true);
        assert_eq!(f["lr"], 0.1);
        assert_eq!(f["empty"], serde_json::json!({}));
        assert!(flatten(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn lines_checksum() {
        let l = Line {
            namespace: "n".into(),
            project: "p".into(),
            experiment: "e".into(),
            entry: Entry::Params {
                at: "t".into(),
                data: BTreeMap::new(),
            },
        };
        let json = serde_json::to_vec(&l).unwrap();
        let mut line = checksum(&json).into_bytes();
        line.push(b' ');
        line.extend_from_slice(&json);
        assert!(parse_line(&line).is_some());
        let n = line.len();
        line[n - 3] ^= 1;
        assert!(parse_line(&line).is_none());
    }
}
