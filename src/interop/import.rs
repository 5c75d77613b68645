//! Import a tree written by the ml-dash 0.11 client (local mode), or by `export --layout ml-dash`.
//!
//! Experiments are found by walking DIR (`discover.rs`; symbolic links are not followed). The
//! prefix in an experiment's experiment.json names it when it agrees with where the directory
//! is (so DIR may be the root or a namespace folder); else its path does:
//! `<ns>/<project>/<experiment>` (deeper folders are joined to the name with `.`), or the older
//! `<project>/<experiment>` (namespace `local`).
//!
//! What is kept: every live file with its record (path, filename, description, tags, metadata,
//! uploadedAt, updatedAt), its bytes checked against the record's size and SHA-256 before the
//! version is recorded; parameters (the keys that differ, as one set at the file's updatedAt,
//! never undoing a later change in the store); log lines and metric points verbatim, with their
//! sequence numbers, indexes and timestamps. Soft-deleted files are not imported. Importing the
//! same tree again adds nothing: a file whose latest live version already has the same checksum
//! (or any version the same checksum and upload time), log lines (same sequence number,
//! timestamp, message) and metric points (same index and createdAt) already present are skipped.
//!
//! Damage is reported, never silently dropped: a torn or corrupt `.files_metadata.json` (the
//! complete records before the damage are still imported), bytes that do not match their
//! record, unreadable lines. Everything else still imports.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use serde::Serialize;
use serde_json::{Map, Value};

use super::discover::{experiment_key, find_experiments, read_json, with};
use super::mldash::{is_iso, parse_files_metadata};
use super::safe::{self, Root};
use crate::error::{Error, Result};
use crate::format::digest::Sha256;
use crate::format::names::{self, ExperimentKey};
use crate::format::record::FileRecord;
use crate::store::batch::Source;
use crate::store::index::Scope;
use crate::store::journal::{LogEntry, MetricPoint, Params};
use crate::store::{ImportedVersion, ListFilter, NewVersion, Store};

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportSummary {
    /// Experiments found in the tree.
    pub experiments: u64,
    /// Live file records found.
    pub files: u64,
    /// Files stored as new versions.
    pub imported: u64,
    /// Files already in the store.
    pub skipped: u64,
    /// Soft-deleted records, not imported.
    pub deleted: u64,
    /// Bytes of the files imported.
    pub bytes: u64,
    /// Parameter sets imported (one per experiment at most).
    pub params: u64,
    /// Log lines imported.
    pub logs: u64,
    /// Metric points imported.
    pub metric_points: u64,
    /// What could not be imported, one line each (the rest was). Non-empty: exit 1.
    pub problems: Vec<String>,
}

/// Import every experiment under `dir`. `progress` counts bytes of files read.
pub fn import(store: &Store, dir: &Path, progress: Option<&AtomicU64>) -> Result<ImportSummary> {
    let root = Root::existing(dir)?;
    let mut sum = ImportSummary::default();
    let mut found = Vec::new();
    find_experiments(&root, &mut Vec::new(), &mut found, &mut sum.problems)?;
    if found.is_empty() && sum.problems.is_empty() {
        return Err(Error::invalid(
            "import directory",
            dir.display().to_string(),
            "holds no ml-dash experiment (no experiment.json, parameters.json, \
             files/.files_metadata.json, logs/ or metrics/ below it)",
        ));
    }
    let mut seen: HashMap<(String, String, String), String> = HashMap::new();
    for rel in found {
        let shown = rel.join("/");
        let key = match experiment_key(&root, &rel) {
            Ok(k) => k,
            Err(e) => {
                sum.problems.push(format!("{shown}: {e}"));
                continue;
            }
        };
        let id = (
            key.namespace.clone(),
            key.project.clone(),
            key.experiment.clone(),
        );
        if let Some(other) = seen.insert(id, shown.clone()) {
            sum.problems.push(format!(
                "{shown}: maps to the same experiment as {other}; not imported"
            ));
            continue;
        }
        sum.experiments += 1;
        let mut ctx = Ctx {
            store,
            root: &root,
            rel: &rel,
            key: &key,
            sum: &mut sum,
            progress,
        };
        if let Err(e) = ctx.import_experiment() {
            sum.problems.push(format!("{shown}: {e}"));
        }
    }
    Ok(sum)
}

/// Lines of one journal file waiting to be appended: one write and one fsync per
/// `JOURNAL_BATCH` lines instead of per line.
struct JournalBatch<T> {
    waiting: Vec<T>,
    appended: u64,
    /// The first failed append: nothing more is appended and the experiment reports it.
    failed: Option<Error>,
}

/// Lines appended to a journal with one write and one fsync.
const JOURNAL_BATCH: usize = 8192;

impl<T> Default for JournalBatch<T> {
    fn default() -> Self {
        JournalBatch {
            waiting: Vec::new(),
            appended: 0,
            failed: None,
        }
    }
}

impl<T> JournalBatch<T> {
    /// Queue `item`, appending the queue with `append` once it is full.
    fn push(&mut self, item: T, append: impl FnOnce(Vec<T>) -> Result<()>) {
        if self.failed.is_some() {
            return;
        }
        self.waiting.push(item);
        if self.waiting.len() >= JOURNAL_BATCH {
            self.flush(append);
        }
    }

    fn flush(&mut self, append: impl FnOnce(Vec<T>) -> Result<()>) {
        let items = std::mem::take(&mut self.waiting);
        let n = items.len() as u64;
        match append(items) {
            Ok(()) => self.appended += n,
            Err(e) => self.failed = Some(e),
        }
    }

    /// Append what is queued; adds the number of lines appended to `count`, and returns the
    /// first failure.
    fn finish(mut self, count: &mut u64, append: impl FnOnce(Vec<T>) -> Result<()>) -> Result<()> {
        if self.failed.is_none() && !self.waiting.is_empty() {
            self.flush(append);
        }
        *count += self.appended;
        self.failed.map_or(Ok(()), Err)
    }
}

struct Ctx<'a> {
    store: &'a Store,
    root: &'a Root,
    rel: &'a [String],
    key: &'a ExperimentKey,
    sum: &'a mut ImportSummary,
    progress: Option<&'a AtomicU64>,
}

impl Ctx<'_> {
    fn problem(&mut self, what: &str, msg: impl std::fmt::Display) {
        self.sum
            .problems
            .push(format!("{}/{what}: {msg}", self.rel.join("/")));
    }

    fn import_experiment(&mut self) -> Result<()> {
        let journal = self.store.journal(self.key)?;
        self.import_params(journal.params.as_ref())?;
        let have: HashSet<(u64, String, String)> = journal
            .logs
            .iter()
            .map(|l| (l.sequence_number, l.timestamp.clone(), l.message.clone()))
            .collect();
        self.import_logs(&have)?;
        let have: HashMap<&str, HashSet<(u64, &str)>> = journal
            .metrics
            .iter()
            .map(|(n, pts)| {
                (
                    n.as_str(),
                    pts.iter()
                        .map(|p| (p.index, p.created_at.as_str()))
                        .collect(),
                )
            })
            .collect();
        self.import_metrics(&have)?;
        self.import_files()
    }

    fn import_params(&mut self, have: Option<&Params>) -> Result<()> {
        let rel = with(self.rel, &["parameters.json"]);
        if !self.root.is_real_file(&rel)? {
            return Ok(());
        }
        let doc = match read_json(self.root, &rel) {
            Ok(v) => v,
            Err(e) => {
                self.problem("parameters.json", e);
                return Ok(());
            }
        };
        let Some(data) = doc.get("data").filter(|d| d.is_object()) else {
            self.problem("parameters.json", "has no \"data\" object; not imported");
            return Ok(());
        };
        let data = match crate::store::journal::flatten(data) {
            Ok(d) => d,
            Err(e) => {
                self.problem("parameters.json", e);
                return Ok(());
            }
        };
        let at = ["updatedAt", "createdAt"]
            .iter()
            .find_map(|k| doc.get(*k).and_then(Value::as_str).filter(|s| is_iso(s)))
            .map(str::to_string);
        // Only what differs; and when the store's parameters are newer than the file's, only
        // keys the store does not have (a re-import never undoes a later change).
        let newer = have.is_some_and(|h| at.as_ref().is_some_and(|a| h.updated_at > *a));
        let data: BTreeMap<String, Value> = data
            .into_iter()
            .filter(|(k, v)| match have.and_then(|h| h.data.get(k)) {
                None => true,
                Some(cur) => cur != v && !newer,
            })
            .collect();
        if data.is_empty() {
            return Ok(());
        }
        let at = at.unwrap_or_else(crate::format::time::now_iso);
        self.store.import_params(self.key, &at, data)?;
        self.sum.params += 1;
        Ok(())
    }

    /// Each complete line of a JSONL file, parsed; damaged lines are reported.
    fn jsonl(&mut self, rel: &[String], mut each: impl FnMut(Value) -> Result<()>) -> Result<()> {
        let shown = rel[self.rel.len()..].join("/");
        let p = self.root.join(rel)?;
        let f = File::open(&p).map_err(|e| Error::io(&p, e))?;
        let (mut bad, mut first) = (0u64, None);
        let mut r = BufReader::new(f);
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line)
                .map_err(|e| Error::io(&p, e))?
                == 0
            {
                break;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let r = serde_json::from_slice::<Value>(&line)
                .map_err(|e| Error::corrupt(&shown, format!("not JSON: {e}")))
                .and_then(&mut each);
            if let Err(e) = r {
                bad += 1;
                first.get_or_insert(e.to_string());
            }
        }
        if let Some(first) = first {
            self.problem(
                &shown,
                format!("{bad} lines not imported (the first: {first})"),
            );
        }
        Ok(())
    }

    fn import_logs(&mut self, have: &HashSet<(u64, String, String)>) -> Result<()> {
        let rel = with(self.rel, &["logs", "logs.jsonl"]);
        if !self.root.is_real_file(&rel)? {
            return Ok(());
        }
        let (store, key) = (self.store, self.key);
        let mut batch = JournalBatch::default();
        self.jsonl(&rel, |v| {
            let l: LogEntry = serde_json::from_value(v)
                .map_err(|e| Error::corrupt("logs/logs.jsonl", format!("a line: {e}")))?;
            if let Some(m) = &l.metadata {
                crate::format::record::check_metadata(m)?;
            }
            if have.contains(&(l.sequence_number, l.timestamp.clone(), l.message.clone())) {
                return Ok(());
            }
            batch.push(l, |entries| store.import_logs(key, entries));
            Ok(())
        })?;
        batch.finish(&mut self.sum.logs, |entries| {
            store.import_logs(key, entries)
        })
    }

    fn import_metrics(&mut self, have: &HashMap<&str, HashSet<(u64, &str)>>) -> Result<()> {
        let rel = with(self.rel, &["metrics"]);
        if !self.root.is_real_dir(&rel)? {
            return Ok(());
        }
        // A metric is a folder holding data.jsonl; a name with `/` (`train/loss`) is nested
        // folders, so folders are searched (without following links) a few levels down.
        let mut names = Vec::new();
        let mut todo: Vec<Vec<String>> = vec![Vec::new()];
        while let Some(sub) = todo.pop() {
            let here: Vec<&str> = sub.iter().map(String::as_str).collect();
            let dir_rel = with(&rel, &here);
            let dir = self.root.join(&dir_rel)?;
            for e in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
                let e = e.map_err(|e| Error::io(&dir, e))?;
                let Some(n) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if n.starts_with('.') || n == "data.jsonl" || n == "metadata.json" {
                    continue;
                }
                let mut path = sub.clone();
                path.push(n);
                let p: Vec<&str> = path.iter().map(String::as_str).collect();
                if path.len() < 16 && self.root.is_real_dir(&with(&rel, &p)).unwrap_or(false) {
                    names.push(path.join("/"));
                    todo.push(path);
                }
            }
        }
        names.sort();
        let (store, key) = (self.store, self.key);
        for name in names {
            let parts: Vec<&str> = name.split('/').chain(["data.jsonl"]).collect();
            let data = with(&rel, &parts);
            match self.root.is_real_file(&data) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    self.problem(&format!("metrics/{name}"), e);
                    continue;
                }
            }
            if let Err(e) = names::metric_name(&name) {
                self.problem(&format!("metrics/{name}"), e);
                continue;
            }
            let empty = HashSet::new();
            let seen = have.get(name.as_str()).unwrap_or(&empty);
            let mut batch = JournalBatch::default();
            self.jsonl(&data, |v| {
                let p: MetricPoint = serde_json::from_value(v)
                    .map_err(|e| Error::corrupt("data.jsonl", format!("a line: {e}")))?;
                crate::format::record::check_metadata(&Value::Object(p.data.clone()))?;
                if seen.contains(&(p.index, p.created_at.as_str())) {
                    return Ok(());
                }
                batch.push(p, |points| store.import_metrics(key, &name, points));
                Ok(())
            })?;
            batch.finish(&mut self.sum.metric_points, |points| {
                store.import_metrics(key, &name, points)
            })?;
        }
        Ok(())
    }

    fn import_files(&mut self) -> Result<()> {
        let rel = with(self.rel, &["files", ".files_metadata.json"]);
        if !self.root.is_real_file(&rel)? {
            return Ok(());
        }
        let p = self.root.join(&rel)?;
        let text = fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let (records, damage) = parse_files_metadata(&text);
        if let Some(d) = damage {
            self.problem(
                "files/.files_metadata.json",
                format!(
                    "damaged ({d}); {} complete records before the damage were read, \
                     any after it are lost",
                    records.len()
                ),
            );
        }
        let mut live: Vec<(String, Map<String, Value>)> = Vec::new();
        for r in records {
            let Value::Object(r) = r else {
                self.problem("files/.files_metadata.json", "a record is not an object");
                continue;
            };
            if r.get("deletedAt").is_some_and(|d| !d.is_null()) {
                self.sum.deleted += 1;
                continue;
            }
            let at = r
                .get("uploadedAt")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            live.push((at, r));
        }
        self.sum.files += live.len() as u64;
        // Upload order, so that the last upload of a path becomes its latest version.
        live.sort_by(|a, b| a.0.cmp(&b.0));
        let mut existing: HashMap<(String, String), Vec<FileRecord>> = HashMap::new();
        for r in self.store.list(&ListFilter {
            scope: Scope {
                namespace: Some(self.key.namespace.clone()),
                project: Some(self.key.project.clone()),
                experiment: Some(self.key.experiment.clone()),
            },
            all_versions: true,
            ..Default::default()
        })? {
            existing
                .entry((r.path.clone(), r.filename.clone()))
                .or_default()
                .push(r);
        }
        // Files are committed in batches (one commit each): a record is decided against what
        // is committed, and a record that earlier records of this import still waiting in the
        // batch would make a duplicate waits for them to be committed first.
        let mut queue = Queue::default();
        for (_, r) in live {
            let shown = format!(
                "files/{}",
                r.get("filename").and_then(Value::as_str).unwrap_or("?")
            );
            let mut planned = self.plan_file(&r, &existing, &queue);
            if let Ok(Plan::AfterQueue) = planned {
                self.commit_queue(&mut queue, &mut existing)?;
                planned = self.plan_file(&r, &existing, &queue);
            }
            match planned {
                Ok(Plan::Skip) => self.sum.skipped += 1,
                Ok(Plan::AfterQueue) => unreachable!("the queue is empty"),
                Ok(Plan::Add(q)) => {
                    queue.push(*q);
                    if queue.items.len() >= FILE_BATCH || queue.bytes >= FILE_BATCH_BYTES {
                        self.commit_queue(&mut queue, &mut existing)?;
                    }
                }
                Err(e) => self.problem(&shown, e),
            }
        }
        self.commit_queue(&mut queue, &mut existing)
    }

    /// Store the queued files in one commit; a file that fails (its bytes do not match its
    /// record, it went missing) is reported and the others are committed.
    fn commit_queue(
        &mut self,
        queue: &mut Queue,
        existing: &mut HashMap<(String, String), Vec<FileRecord>>,
    ) -> Result<()> {
        let Queue { items, .. } = std::mem::take(queue);
        if items.is_empty() {
            return Ok(());
        }
        let mut batch = self.store.upload_batch();
        for q in &items {
            let src = Source::Path(q.src.clone());
            let imported = Some(q.imported.clone());
            batch.push(src, q.key.clone(), q.v.clone(), imported, self.progress);
        }
        for (q, r) in items.iter().zip(batch.commit_each()?) {
            match r {
                Ok(rec) => {
                    self.sum.imported += 1;
                    self.sum.bytes += rec.size_bytes;
                    existing
                        .entry((rec.path.clone(), rec.filename.clone()))
                        .or_default()
                        .push(rec);
                }
                Err(e) => self.problem(&q.shown, e),
            }
        }
        Ok(())
    }

    /// What to do with one file record: skip it (its bytes are in the store already), queue
    /// it, or wait until the queue is committed to decide.
    fn plan_file(
        &self,
        r: &Map<String, Value>,
        existing: &HashMap<(String, String), Vec<FileRecord>>,
        queue: &Queue,
    ) -> Result<Plan> {
        let s = |k: &str| r.get(k).and_then(Value::as_str);
        let bad = |what: &'static str, why: &str| Error::invalid(what, format!("{r:?}"), why);
        let id = match r.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(bad("file record", "has no id")),
        };
        let prefix = names::prefix(s("path").unwrap_or("/"))?;
        let filename = names::segment("file name", s("filename").unwrap_or(""))?.to_string();
        let checksum: Sha256 = s("checksum")
            .ok_or_else(|| bad("file record", "has no checksum"))?
            .parse()?;
        let size_bytes = r
            .get("sizeBytes")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("file record", "has no sizeBytes"))?;
        let now = crate::format::time::now_iso();
        let time = |k: &str| -> Result<String> {
            match s(k) {
                Some(t) if is_iso(t) => Ok(t.to_string()),
                Some(t) => Err(Error::invalid("timestamp", t, "is not ISO-8601 UTC")),
                None => Ok(now.clone()),
            }
        };
        let uploaded_at = time("uploadedAt")?;
        let updated_at = time("updatedAt")?;
        let tags = match r.get("tags") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| t.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("tags", "must be strings"))?,
            Some(_) => return Err(bad("tags", "must be a list")),
        };
        let metadata = r.get("metadata").cloned().unwrap_or(Value::Null);
        let v = NewVersion {
            description: s("description").map(str::to_string),
            tags,
            metadata,
        };

        // Already stored: the path's latest version has these bytes, or some version has them
        // with this upload time. Queued files of the path count as its latest versions.
        let path = (prefix.clone(), filename.clone());
        let (no_versions, no_queued) = (Vec::new(), Vec::new());
        let versions = existing.get(&path).unwrap_or(&no_versions);
        let queued = queue.by_path.get(&path).unwrap_or(&no_queued);
        let same = |c: &Sha256, at: &str| *c == checksum && at == uploaded_at;
        let last = queued
            .last()
            .map(|(c, _)| c)
            .or(versions.last().map(|l| &l.checksum));
        if versions.iter().any(|l| same(&l.checksum, &l.uploaded_at))
            || (queued.is_empty() && last == Some(&checksum))
        {
            return Ok(Plan::Skip);
        }
        if last == Some(&checksum) || queued.iter().any(|(c, at)| same(c, at)) {
            return Ok(Plan::AfterQueue);
        }

        let mut src = with(self.rel, &["files"]);
        src.extend(safe::prefix_segments(&prefix));
        src.push(id);
        src.push(filename.clone());
        if !self.root.is_real_file(&src)? {
            return Err(Error::NotFound(format!(
                "{} (the bytes of this record are missing)",
                self.root.join(&src)?.display()
            )));
        }
        Ok(Plan::Add(Box::new(Queued {
            src: self.root.join(&src)?,
            key: self.key.file(prefix, filename.clone()),
            v,
            imported: ImportedVersion {
                uploaded_at,
                updated_at,
                checksum,
                size_bytes,
            },
            shown: format!("files/{filename}"),
        })))
    }
}

/// Files committed together by `import` (at most this many, or about this many bytes).
const FILE_BATCH: usize = 10_000;
const FILE_BATCH_BYTES: u64 = 1 << 30;

/// A file record to import.
struct Queued {
    src: PathBuf,
    key: crate::format::names::FileKey,
    v: NewVersion,
    imported: ImportedVersion,
    /// How problems name it.
    shown: String,
}

enum Plan {
    Skip,
    Add(Box<Queued>),
    /// Decide once the queue is committed.
    AfterQueue,
}

/// Files waiting to be committed together.
#[derive(Default)]
struct Queue {
    items: Vec<Queued>,
    /// Checksum and upload time of each queued file, by (prefix, filename), in order.
    by_path: HashMap<(String, String), Vec<(Sha256, String)>>,
    bytes: u64,
}

impl Queue {
    fn push(&mut self, q: Queued) {
        let path = (q.key.path.clone(), q.key.filename.clone());
        let stamp = (q.imported.checksum, q.imported.uploaded_at.clone());
        self.by_path.entry(path).or_default().push(stamp);
        self.bytes += q.imported.size_bytes;
        self.items.push(q);
    }
}
