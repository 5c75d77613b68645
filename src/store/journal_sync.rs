//! Journals between stores: the lines a push sends, and the merge of lines a pull brings.
//!
//! A line's identity is the first 16 bytes of BLAKE3 over its bytes as stored (checksum and
//! JSON): the same line on two stores is the same event, pushed from one and pulled into the
//! other. A merge appends foreign lines verbatim (their timestamps, sequence numbers and indexes
//! as the writer gave them) under the same conflict rules as files: nothing is silently merged
//! into something else.
//!
//! - A log line or a metric point goes at its own position only: line N of the log (point N of
//!   a metric) when this store has N - 1 of them. A different line already at that position is
//!   a conflict (two stores logged to one experiment); a position past the end (a gap: the lines
//!   before it did not arrive) is kept out for a later pull.
//! - A parameter line, or an experiment line (status, tags, ...), conflicts when it changes a key
//!   that this store last set to another value with a line the remote never saw. Once both
//!   values are on the remote, the one written later wins on every store: an older line is
//!   left out as superseded history.
//!
//! Conflicting and kept-out lines are reported and never written; everything else is appended
//! with one write and one fdatasync, under the journal's lock (appends wait for it).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, IoContext, Result};
use crate::format::names::ExperimentKey;
use crate::store::Store;
use crate::store::journal::{Entry, Line, TORN_MARK, check_level, journal_name, parse_line};

/// A line's identity.
pub(crate) type LineId = [u8; 16];

/// One intact journal line: identity, bytes as stored (no newline), content.
pub(crate) struct StoredLine {
    pub(crate) id: LineId,
    pub(crate) bytes: Vec<u8>,
    line: Line,
}

/// At most this many bytes in one journal segment read from outside.
pub(crate) const MAX_SEGMENT: usize = 256 << 20;

pub(crate) fn line_id(bytes: &[u8]) -> LineId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&blake3::hash(bytes).as_bytes()[..16]);
    id
}

/// What merging foreign lines into one journal did.
#[derive(Default)]
pub(crate) struct Merged {
    /// Lines appended.
    pub(crate) appended: u64,
    /// Lines not appended because they contradict this store's journal.
    pub(crate) conflicts: Vec<String>,
    /// Lines not appended because lines before them are missing.
    pub(crate) kept_out: Vec<String>,
}

/// Every intact line of the journal file at `path` (empty if there is none), in order.
fn read_lines(file: &File, path: &Path) -> Result<Vec<StoredLine>> {
    let mut out = Vec::new();
    for raw in BufReader::new(file).split(b'\n') {
        let raw = raw.at(path)?;
        if let Some(line) = parse_line(&raw) {
            out.push(StoredLine {
                id: line_id(&raw),
                bytes: raw,
                line,
            });
        }
    }
    Ok(out)
}

/// The intact lines of the journal at `path`, read under its shared lock.
pub(crate) fn journal_lines(path: &Path) -> Result<Vec<StoredLine>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    file.lock_shared().at(path)?;
    read_lines(&file, path)
}

/// Parse a segment of lines from outside: every line must be intact, belong to the journal
/// `name` and pass the checks an append makes. Returns the good lines and one reason per line
/// refused.
pub(crate) fn parse_foreign(bytes: &[u8], name: &str) -> (Vec<StoredLine>, Vec<String>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (n, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        if raw.is_empty() {
            continue;
        }
        let Some(line) = parse_line(raw) else {
            bad.push(format!("line {}: damaged (checksum or JSON)", n + 1));
            continue;
        };
        if let Err(e) = check_foreign(&line, name) {
            bad.push(format!("line {}: refused: {e}", n + 1));
            continue;
        }
        good.push(StoredLine {
            id: line_id(raw),
            bytes: raw.to_vec(),
            line,
        });
    }
    (good, bad)
}

/// The checks an append makes, for a line that comes from outside.
fn check_foreign(l: &Line, name: &str) -> Result<()> {
    let exp = ExperimentKey::new(&l.namespace, &l.project, &l.experiment)?;
    if journal_name(&exp) != name {
        return Err(Error::invalid(
            "journal line",
            format!("{}/{}/{}", exp.namespace, exp.project, exp.experiment),
            "belongs to another experiment's journal",
        ));
    }
    let time = |what: &'static str, t: &str| {
        if t.len() > 64 || t.chars().any(char::is_control) {
            Err(Error::invalid(
                what,
                t,
                "must be an ISO-8601 time of at most 64 bytes",
            ))
        } else {
            Ok(())
        }
    };
    match &l.entry {
        Entry::Params { at, data } => {
            time("parameter time", at)?;
            if data
                .keys()
                .any(|k| k.is_empty() || k.chars().any(char::is_control))
            {
                return Err(Error::invalid(
                    "parameter name",
                    "(empty or control character)",
                    "must be non-empty without control characters",
                ));
            }
            let obj: serde_json::Map<String, Value> =
                data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            crate::format::record::check_metadata(&Value::Object(obj))
        }
        Entry::Log(e) => {
            check_level(&e.level)?;
            time("log timestamp", &e.timestamp)?;
            crate::format::record::check_description(&e.message)?;
            if e.sequence_number == 0 {
                return Err(Error::invalid("log sequence number", "0", "starts at 1"));
            }
            match &e.metadata {
                Some(m) => crate::format::record::check_metadata(m),
                None => Ok(()),
            }
        }
        Entry::Metric { name, point } => {
            crate::format::names::metric_name(name)?;
            time("metric point time", &point.created_at)?;
            crate::format::record::check_metadata(&Value::Object(point.data.clone()))
        }
        Entry::Experiment(i) => {
            time("experiment time", &i.updated_at)?;
            time("experiment time", &i.created_at)?;
            for s in [&i.status, &i.description, &i.folder].into_iter().flatten() {
                crate::format::record::check_description(s)?;
            }
            if let Some(t) = &i.tags {
                crate::format::record::check_tags(t)?;
            }
            match &i.metadata {
                Some(m) => crate::format::record::check_metadata(m),
                None => Ok(()),
            }
        }
    }
}

/// The keys a parameter or experiment line sets, with their values.
fn keyed(e: &Entry) -> Vec<(String, Value)> {
    match e {
        Entry::Params { data, .. } => data
            .iter()
            .map(|(k, v)| (format!("param {k}"), v.clone()))
            .collect(),
        Entry::Experiment(i) => {
            let mut v = Vec::new();
            let mut put = |k: &str, x: Option<Value>| {
                if let Some(x) = x {
                    v.push((format!("experiment {k}"), x));
                }
            };
            put("status", i.status.clone().map(Value::String));
            put("description", i.description.clone().map(Value::String));
            put("tags", i.tags.clone().map(|t| serde_json::json!(t)));
            put("metadata", i.metadata.clone());
            put("folder", i.folder.clone().map(Value::String));
            v
        }
        Entry::Log(_) | Entry::Metric { .. } => Vec::new(),
    }
}

/// A log line or metric point that goes at position `at` of a series holding `have` entries:
/// true (and `have` counts it) when `at == have`; else a conflict (the position is taken) or a
/// line kept out (entries before it are missing), reported as `what`.
fn place(have: &mut u64, at: u64, what: &str, rep: &mut Merged) -> bool {
    if at == *have {
        *have += 1;
        true
    } else if at < *have {
        rep.conflicts
            .push(format!("{what}: this store has another at that position"));
        false
    } else {
        rep.kept_out.push(format!(
            "{what}: the {} before it did not arrive",
            at - *have
        ));
        false
    }
}

/// When a parameter or experiment line was written (for ordering values set on two stores).
fn written_at(e: &Entry) -> String {
    match e {
        Entry::Params { at, .. } => at.clone(),
        Entry::Experiment(i) => i.updated_at.clone(),
        Entry::Log(l) => l.timestamp.clone(),
        Entry::Metric { point, .. } => point.created_at.clone(),
    }
}

/// Where a line sorts among the lines of one merge: logs by number, metric points by series and
/// index, parameter and experiment lines by time.
fn order(e: &Entry) -> (u8, String, u64) {
    match e {
        Entry::Log(l) => (0, String::new(), l.sequence_number),
        Entry::Metric { name, point } => (1, name.clone(), point.index),
        Entry::Params { at, .. } => (2, at.clone(), 0),
        Entry::Experiment(i) => (2, i.updated_at.clone(), 0),
    }
}

impl Store {
    /// Every journal of the store: its name and path.
    pub(crate) fn journal_files(&self) -> Result<Vec<(String, PathBuf)>> {
        let dir = self.dir("journals");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.at(&dir)?;
            if let Some(name) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".jsonl"))
                .filter(|n| n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                out.push((name.to_string(), e.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Merge foreign `lines` (checked by `parse_foreign`) into the journal `name`. `remote` is
    /// every line id the other side holds: a local line in it is shared history, not a local
    /// change the foreign lines could silently overwrite.
    pub(crate) fn merge_journal(
        &self,
        name: &str,
        mut lines: Vec<StoredLine>,
        remote: &HashSet<LineId>,
    ) -> Result<Merged> {
        let mut rep = Merged::default();
        let Some(first) = lines.first() else {
            return Ok(rep);
        };
        let exp = ExperimentKey {
            namespace: first.line.namespace.clone(),
            project: first.line.project.clone(),
            experiment: first.line.experiment.clone(),
        };
        let who = format!("{}/{}/{}", exp.namespace, exp.project, exp.experiment);
        self.check_poison()?;
        let dir = self.dir("journals");
        if !dir.exists() {
            fs::create_dir_all(&dir).at(&dir)?;
            crate::store::durable::fsync_dir(&self.root, &self.opts.faults)?;
        }
        let path = self.journal_path(&exp);
        debug_assert!(path.ends_with(format!("{name}.jsonl")));
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .at(&path)?;
        file.lock().at(&path)?;
        let local = read_lines(&file, &path)?;
        let mut have: HashSet<LineId> = local.iter().map(|l| l.id).collect();
        let mut logs = 0u64;
        let mut points: HashMap<String, u64> = HashMap::new();
        // Key → (value, the line that set it last, when).
        let mut setter: HashMap<String, (Value, LineId, String)> = HashMap::new();
        for l in &local {
            match &l.line.entry {
                Entry::Log(_) => logs += 1,
                Entry::Metric { name, .. } => *points.entry(name.clone()).or_default() += 1,
                e => {
                    for (k, v) in keyed(e) {
                        setter.insert(k, (v, l.id, written_at(e)));
                    }
                }
            }
        }
        lines.sort_by_key(|l| order(&l.line.entry));
        let mut out = Vec::new();
        let size = file.metadata().at(&path)?.len();
        if size > 0 {
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, size - 1).at(&path)?;
            if last[0] != b'\n' {
                out.extend_from_slice(TORN_MARK);
            }
        }
        for l in lines {
            if !have.insert(l.id) {
                continue;
            }
            let ok = match &l.line.entry {
                // Log line N goes after N - 1 lines; metric point I after I points.
                Entry::Log(e) => place(
                    &mut logs,
                    e.sequence_number - 1,
                    &format!("{who}: log line {}", e.sequence_number),
                    &mut rep,
                ),
                Entry::Metric { name, point } => place(
                    points.entry(name.clone()).or_default(),
                    point.index,
                    &format!("{who}: metric {name:?} point {}", point.index),
                    &mut rep,
                ),
                e => {
                    let sets = keyed(e);
                    let at = written_at(e);
                    let clash = sets.iter().find(|(k, v)| {
                        setter
                            .get(k)
                            .is_some_and(|(mine, by, _)| mine != v && !remote.contains(by))
                    });
                    // A value this store holds from shared history (the remote has the line
                    // that set it) and that is newer than this line: the line is older history,
                    // superseded on both sides; appending it would bring the old value back.
                    let stale = sets.iter().any(|(k, v)| {
                        setter
                            .get(k)
                            .is_some_and(|(mine, _, when)| mine != v && *when > at)
                    });
                    if let Some((k, _)) = clash {
                        rep.conflicts.push(format!(
                            "{who}: {k}: this store set it to another value that was never pushed"
                        ));
                        false
                    } else if stale {
                        false
                    } else {
                        for (k, v) in sets {
                            setter.insert(k, (v, l.id, at.clone()));
                        }
                        true
                    }
                }
            };
            if ok {
                out.extend_from_slice(&l.bytes);
                out.push(b'\n');
                rep.appended += 1;
            }
        }
        if rep.appended == 0 {
            return Ok(rep);
        }
        self.write_journal(&mut file, &path, &out, size == 0)?;
        Ok(rep)
    }
}
