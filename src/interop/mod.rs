//! Export the store into a plain directory tree, and import trees written by ml-dash 0.11.
//!
//! Two export layouts (`ExportLayout`):
//! ```text
//! tree     DIR/<project>/<experiment>/files/<prefix...>/<filename>     latest live version
//!          DIR/<project>/<experiment>/.ml-dash-records.json            every live record
//! ml-dash  DIR/<namespace>/<project>/<experiment>/                     ml-dash 0.11 local layout
//!            experiment.json  parameters.json  logs/logs.jsonl  metrics/<name>/{data.jsonl,metadata.json}
//!            files/.files_metadata.json  files/<prefix...>/<file id>/<filename>
//!            .ml-dash-export.json                                      what export wrote (ledger)
//! ```
//! An export is planned first (`ExportPlan::new`: which files go where, the small documents
//! rendered in memory), then run: every destination is checked in parallel (same size and
//! SHA-256: skipped), the rest are streamed from the store's verified read path through a
//! SHA-256 check into a temporary file that is renamed into place. Documents follow the files
//! (an index never names bytes that are not there yet), then files export wrote earlier that
//! left the plan are removed, then the ledger is written. Export overwrites or removes only
//! what its ledger says it wrote; everything else in DIR is left alone. Everything inside DIR
//! is reached through directory handles without following symbolic links (`safe.rs`), so
//! nothing outside DIR is read, written or removed, even if folders in DIR are swapped for
//! links while export runs.
//!
//! A store may hold a file `/a` and a file `/a/x`; a directory tree cannot hold both at
//! `files/a`. The plan keeps the folder, leaves the file out and reports it (`--layout ml-dash`
//! puts each file in a folder of its own and has no such clash).

mod discover;
pub mod import;
mod mldash;
mod pyjson;
mod safe;
mod tree;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::record::FileRecord;
use crate::store::Store;
use crate::store::index::Scope;
use crate::store::read::FileReader;
use safe::{Check, Dir, Entry, HashingWriter, Ledger};

pub use import::{ImportSummary, import};

/// Where exported files go. Exports are byte-exact, atomic per file, incremental (a file whose
/// size and SHA-256 already match is skipped), and touch only what their ledger says they
/// wrote; nothing below DIR is reached through a symbolic link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExportLayout {
    /// `DIR/<project>/<experiment>/files/<prefix>/<filename>` (the latest live version of
    /// each file) plus `.ml-dash-records.json` with every live record: the tree the ml-dash
    /// Files tutorial documents. A file `/a` beside files under `/a/` cannot be exported
    /// here; the folder wins and the file is reported.
    #[default]
    Tree,
    /// `DIR/<namespace>/<project>/<experiment>/...`: the ml-dash 0.11 local layout
    /// (`experiment.json`, parameters, logs, metrics, `files/<prefix>/<file id>/<filename>`),
    /// which the real `ml-dash` client lists and downloads.
    MlDash,
}

/// What an export did. `bytes` counts bytes written (0 when everything was already there).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    /// Store files in the export.
    pub files: u64,
    /// Files written (new or changed).
    pub written: u64,
    /// Files already present with the same size and SHA-256.
    pub skipped: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Experiment directories written to.
    pub experiments: u64,
    /// Files an earlier export wrote that are no longer part of it (e.g. deleted paths).
    #[serde(skip_serializing_if = "is_zero")]
    pub removed: u64,
    /// What could not be exported, one line each (the rest was).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// (namespace, project, experiment).
pub(super) type ExpId = (String, String, String);

/// Every version in scope (deleted ones too), grouped by experiment, in path order.
pub(super) fn records_by_experiment(
    store: &Store,
    scope: &Scope,
) -> Result<std::collections::BTreeMap<ExpId, Vec<FileRecord>>> {
    let all = store.list(&crate::store::ListFilter {
        scope: scope.clone(),
        all_versions: true,
        include_deleted: true,
        ..Default::default()
    })?;
    let mut by_exp: std::collections::BTreeMap<ExpId, Vec<FileRecord>> = Default::default();
    for r in all {
        by_exp
            .entry((r.namespace.clone(), r.project.clone(), r.experiment.clone()))
            .or_default()
            .push(r);
    }
    Ok(by_exp)
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One store file in the plan: its record and where it goes, under the experiment directory.
struct FileJob {
    rel: Vec<String>,
    rec: FileRecord,
}

/// A small document rendered in memory, under the experiment directory.
struct Doc {
    rel: Vec<String>,
    bytes: Vec<u8>,
}

/// Where an experiment directory keeps the record of what export wrote.
enum LedgerKind {
    /// Tree layout: the records dotfile (the last doc) says which files export wrote.
    Records,
    /// ml-dash layout: `.ml-dash-export.json`, written after everything else.
    File,
}

/// One experiment directory to write.
struct ExpPlan {
    dir: Vec<String>,
    files: Vec<FileJob>,
    docs: Vec<Doc>,
    ledger: LedgerKind,
    /// Only update a directory an earlier export made (e.g. every file was deleted since).
    only_if_present: bool,
}

/// An export, planned: which files go where. Run it with `run`.
pub struct ExportPlan {
    exps: Vec<ExpPlan>,
    problems: Vec<String>,
}

/// Destinations are checked (hashed) by at most this many threads.
const MAX_THREADS: usize = 8;

/// Files are copied by this many threads: a small file's copy is mostly waiting for its fsyncs,
/// and fsyncs issued together are committed together. Decoded bytes in flight stay within the
/// budget all reads share.
const COPY_THREADS: usize = 16;

/// Readers opened under one hold of the store lock.
const OPEN_AT_ONCE: usize = 64;

/// Pack files that open readers may hold: those of one group being opened, and those of the
/// readers waiting or being copied, each up to a quarter of the process's limit of open files
/// (at least 16, at most 1024; a file with more packs goes alone). Keeps an export of many large
/// files within its file descriptors.
fn packs_at_once() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024);
    usize::try_from(limit / 4).unwrap_or(1024).clamp(16, 1024)
}

/// Pack files held by readers handed to the copy threads (`max` at most, unless one reader
/// alone holds more).
struct PackBudget {
    max: usize,
    used: Mutex<usize>,
    freed: std::sync::Condvar,
}

impl PackBudget {
    fn take(&self, n: usize) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used > 0 && *used + n > self.max {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += n;
    }

    fn give(&self, n: usize) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used -= n;
        self.freed.notify_all();
    }
}

impl ExportPlan {
    /// Plan the export of everything in `scope`.
    pub fn new(store: &Store, scope: &Scope, layout: ExportLayout) -> Result<ExportPlan> {
        for (what, v) in [
            ("namespace", &scope.namespace),
            ("project", &scope.project),
            ("experiment", &scope.experiment),
        ] {
            if let Some(v) = v {
                crate::format::names::segment(what, v)?;
            }
        }
        let (mut exps, mut problems) = match layout {
            ExportLayout::Tree => (tree::plan(store, scope)?, Vec::new()),
            ExportLayout::MlDash => mldash::plan(store, scope)?,
        };
        for e in &mut exps {
            problems.extend(drop_blocked(e, layout));
        }
        Ok(ExportPlan { exps, problems })
    }

    /// Bytes of all store files in the plan (for a progress bar).
    pub fn total_bytes(&self) -> u64 {
        self.exps
            .iter()
            .flat_map(|e| &e.files)
            .map(|f| f.rec.size_bytes)
            .sum()
    }

    /// Write the plan into `dir` (created if missing). `progress` counts bytes checked or
    /// written.
    pub fn run(
        &self,
        store: &Store,
        dir: &Path,
        progress: Option<&AtomicU64>,
    ) -> Result<ExportSummary> {
        let target = Dir::target(dir)?;
        let mut sum = ExportSummary {
            problems: self.problems.clone(),
            ..Default::default()
        };
        // Experiment directories and what earlier exports wrote in them.
        let mut ready: Vec<Ready> = Vec::new();
        for e in &self.exps {
            if e.only_if_present && !target.is_real_dir(&e.dir).unwrap_or(true) {
                continue;
            }
            match target.ensure_path(&e.dir) {
                Ok(d) => {
                    let old = match e.ledger {
                        LedgerKind::Records => tree::read_ledger(&d),
                        LedgerKind::File => mldash::read_ledger(&d),
                    };
                    ready.push(Ready {
                        plan: e,
                        dir: d,
                        old,
                        done: vec![false; e.files.len()],
                        handled: BTreeSet::new(),
                        kept: Ledger::default(),
                    });
                }
                Err(err) => sum.problems.push(format!("{}: {err}", e.dir.join("/"))),
            }
        }
        sum.experiments = ready.len() as u64;

        // 0. A file an earlier export wrote where the plan now needs a folder goes first.
        for r in &mut ready {
            clear_the_way(r, &mut sum);
        }

        let jobs: Vec<JobId> = ready
            .iter()
            .enumerate()
            .flat_map(|(i, r)| (0..r.plan.files.len()).map(move |j| (i, j)))
            .collect();
        let job = |&(i, j): &JobId| (&ready[i], &ready[i].plan.files[j]);
        sum.files = jobs.len() as u64;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(
                std::thread::available_parallelism()
                    .map_or(4, |n| n.get())
                    .min(MAX_THREADS),
            )
            .build()
            .map_err(|e| Error::Internal(format!("cannot start export threads: {e}")))?;

        // 1. Check every destination (hashing existing files) in parallel.
        let checks: Vec<Result<Check>> = pool.install(|| {
            jobs.par_iter()
                .map(|k| {
                    let (r, f) = job(k);
                    let c = safe::check_dest(
                        &r.dir,
                        &f.rel,
                        f.entry(),
                        r.old.0.get(&f.rel.join("/")).copied(),
                    );
                    if let (Ok(Check::Same), Some(p)) = (&c, progress) {
                        p.fetch_add(f.rec.size_bytes, std::sync::atomic::Ordering::Relaxed);
                    }
                    c
                })
                .collect()
        });
        // (experiment, file) of the files that now hold their planned bytes.
        let mut done = Vec::new();
        let mut to_write = Vec::new();
        for (k, c) in jobs.iter().zip(checks) {
            match c {
                Ok(Check::Same) => {
                    sum.skipped += 1;
                    done.push(*k);
                }
                Ok(Check::Write(prior)) => to_write.push((*k, prior)),
                Ok(Check::Refused(why)) => sum.problems.push(why),
                Err(e) => sum.problems.push(e.to_string()),
            }
        }

        // 2. Write: readers are opened in groups (each group takes the store lock briefly), the
        //    copies run in parallel. The channel bounds how many open readers wait.
        let outcomes: Mutex<Vec<(JobId, Result<u64>)>> = Mutex::new(Vec::new());
        let copy_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(COPY_THREADS.min(to_write.len()).max(1))
            .build()
            .map_err(|e| Error::Internal(format!("cannot start export threads: {e}")))?;
        let budget = PackBudget {
            max: packs_at_once(),
            used: Mutex::new(0),
            freed: std::sync::Condvar::new(),
        };
        std::thread::scope(|s| {
            let (tx, rx) = crossbeam_channel::bounded::<(usize, Result<FileReader>)>(COPY_THREADS);
            let to_write = &to_write;
            let job = &job;
            let budget = &budget;
            s.spawn(move || {
                // A few dozen at a time under one hold of the store lock; each reader keeps its
                // packs open, so a group stops at `budget.max` of them, and a reader waits
                // for the budget before it is handed on.
                let mut next = 0;
                while next < to_write.len() {
                    let end = (next + OPEN_AT_ONCE).min(to_write.len());
                    let ids: Vec<_> = to_write[next..end]
                        .iter()
                        .map(|(k, _)| job(k).1.rec.id)
                        .collect();
                    // (If the group cannot be opened, its first file gets its own error.)
                    let readers = store
                        .open_versions_within(&ids, budget.max)
                        .unwrap_or_else(|_| vec![store.open_version(ids[0])]);
                    for reader in readers {
                        budget.take(reader.as_ref().map_or(0, FileReader::packs_open));
                        if tx.send((next, reader)).is_err() {
                            return;
                        }
                        next += 1;
                    }
                }
            });
            copy_pool.install(|| {
                rx.into_iter().par_bridge().for_each(|(i, reader)| {
                    let (k, prior) = &to_write[i];
                    let (r, f) = job(k);
                    let packs = reader.as_ref().map_or(0, FileReader::packs_open);
                    let res = reader
                        .and_then(|rd| write_file(&r.dir, f, &rd, prior.as_deref(), progress));
                    budget.give(packs);
                    outcomes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((*k, res));
                });
            });
        });
        for (k, res) in outcomes.into_inner().unwrap_or_else(|p| p.into_inner()) {
            match res {
                Ok(n) => {
                    sum.written += 1;
                    sum.bytes += n;
                    done.push(k);
                }
                Err(e) => sum.problems.push(e.to_string()),
            }
        }
        for (i, j) in done {
            ready[i].done[j] = true;
        }

        // 3. Per experiment: documents, then removal of what left the plan, then the ledger.
        for r in &mut ready {
            finish_experiment(r, &mut sum);
        }
        Ok(sum)
    }
}

/// (experiment, file) of a store file in a run: indexes into the experiments being written and
/// their plan's files.
type JobId = (usize, usize);

impl FileJob {
    /// What the destination must hold.
    fn entry(&self) -> Entry {
        Entry {
            size: self.rec.size_bytes,
            sha256: self.rec.checksum,
        }
    }
}

/// An experiment directory being written: its plan, its open directory, what earlier exports
/// wrote there, and what this run has done so far.
struct Ready<'a> {
    plan: &'a ExpPlan,
    dir: Dir,
    old: Ledger,
    /// Per store file of the plan: now holds the planned bytes.
    done: Vec<bool>,
    /// Entries of `old` already dealt with (removed, or tried).
    handled: BTreeSet<String>,
    /// Entries of `old` that could not be removed: still ours, tried again next time.
    kept: Ledger,
}

impl Ready<'_> {
    /// Files and documents of the plan, by their path in the ledger.
    fn planned(&self) -> BTreeSet<String> {
        let files = self.plan.files.iter().map(|f| f.rel.join("/"));
        files
            .chain(self.plan.docs.iter().map(|d| d.rel.join("/")))
            .collect()
    }

    /// Remove `rel`, an entry of the old ledger that left the plan, if it still holds what
    /// export wrote there.
    fn remove(&mut self, rel: &str, entry: Entry, sum: &mut ExportSummary) {
        self.handled.insert(rel.to_string());
        let Some(segs) = safe::split_rel(rel) else {
            return;
        };
        match safe::remove_ours(&self.dir, &segs, entry) {
            Ok(true) => sum.removed += 1,
            Ok(false) => {}
            Err(err) => {
                sum.problems.push(err.to_string());
                self.kept.0.insert(rel.to_string(), entry);
            }
        }
    }
}

/// Remove files earlier exports wrote where the plan now needs a folder (a file `/a` that
/// became the folder of `/a/x`), before anything is written.
fn clear_the_way(r: &mut Ready<'_>, sum: &mut ExportSummary) {
    let plan = r.plan;
    let rels = plan
        .files
        .iter()
        .map(|f| &f.rel)
        .chain(plan.docs.iter().map(|d| &d.rel));
    let mut folders: BTreeSet<String> = BTreeSet::new();
    for rel in rels {
        for k in 1..rel.len() {
            folders.insert(rel[..k].join("/"));
        }
    }
    let planned = r.planned();
    let stale: Vec<(String, Entry)> = r
        .old
        .0
        .iter()
        .filter(|(rel, _)| folders.contains(*rel) && !planned.contains(*rel))
        .map(|(rel, e)| (rel.clone(), *e))
        .collect();
    for (rel, entry) in stale {
        r.remove(&rel, entry, sum);
    }
}

/// What takes the place a store file needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Blocker {
    /// Another store file (by index) needs a folder there.
    File(usize),
    /// A document (by index) is there, or needs a folder there.
    Doc(usize),
}

/// For each of `files` (paths under the experiment directory), what takes its place, if
/// anything: a directory tree cannot hold a file and a folder of one name, so the folder wins,
/// and documents always win. A file named as the blocker is never itself blocked by a file.
pub(super) fn blocked(files: &[&[String]], docs: &[&[String]]) -> Vec<Option<Blocker>> {
    let doc_at: HashMap<&[String], usize> = docs.iter().enumerate().map(|(i, d)| (*d, i)).collect();
    let folders = |skip: &dyn Fn(usize) -> bool| {
        let mut m: HashMap<&[String], Blocker> = HashMap::new();
        for (i, d) in docs.iter().enumerate() {
            for k in 1..d.len() {
                m.entry(&d[..k]).or_insert(Blocker::Doc(i));
            }
        }
        for (i, f) in files.iter().enumerate().filter(|(i, _)| !skip(*i)) {
            for k in 1..f.len() {
                m.entry(&f[..k]).or_insert(Blocker::File(i));
            }
        }
        m
    };
    let find = |m: &HashMap<&[String], Blocker>| -> Vec<Option<Blocker>> {
        files
            .iter()
            .map(|f| {
                // A document at its place or at the place of one of its folders, else a
                // folder another file needs at its place.
                (1..=f.len())
                    .find_map(|k| doc_at.get(&f[..k]))
                    .map(|&i| Blocker::Doc(i))
                    .or_else(|| m.get(f).copied())
            })
            .collect()
    };
    let first = find(&folders(&|_| false));
    if first.iter().all(Option::is_none) {
        return first;
    }
    // Name a file that is exported: every folder a left-out file needs is also needed by one.
    let second = find(&folders(&|i| first[i].is_some()));
    first
        .into_iter()
        .zip(second)
        .map(|(a, b)| a.map(|a| b.unwrap_or(a)))
        .collect()
}

/// Leave out the store files that cannot be written in this layout; one problem line each.
fn drop_blocked(e: &mut ExpPlan, layout: ExportLayout) -> Vec<String> {
    let files: Vec<&[String]> = e.files.iter().map(|f| f.rel.as_slice()).collect();
    let docs: Vec<&[String]> = e.docs.iter().map(|d| d.rel.as_slice()).collect();
    let blockers = blocked(&files, &docs);
    if blockers.iter().all(Option::is_none) {
        return Vec::new();
    }
    let exp = e.dir.join("/");
    let hint = match layout {
        ExportLayout::Tree => {
            " (the tree layout cannot hold a file and a folder of one name; --layout ml-dash can)"
        }
        ExportLayout::MlDash => "",
    };
    let mut problems = Vec::new();
    for (f, b) in e.files.iter().zip(&blockers) {
        let path = f.rec.full_path();
        match b {
            None => {}
            Some(Blocker::File(j)) => problems.push(format!(
                "{exp}: {path} cannot be exported: {} needs a folder of that name{hint}",
                e.files[*j].rec.full_path()
            )),
            Some(Blocker::Doc(j)) => problems.push(format!(
                "{exp}: {path} cannot be exported: the layout keeps {} there",
                e.docs[*j].rel.join("/")
            )),
        }
    }
    let mut b = blockers.iter();
    e.files.retain(|_| b.next().is_some_and(Option::is_none));
    problems
}

/// Stream one version into its destination; returns the bytes written.
fn write_file(
    exp: &Dir,
    f: &FileJob,
    reader: &FileReader,
    prior: Option<&rustix::fs::Stat>,
    progress: Option<&AtomicU64>,
) -> Result<u64> {
    safe::write_dest(exp, &f.rel, prior, |out| {
        let mut hw = HashingWriter::new(out, progress);
        reader.copy_to(&mut hw)?;
        let got = hw.finish();
        if got != f.entry() {
            // Returning an error drops the temporary file: the destination is untouched.
            return Err(Error::corrupt(
                f.rec.key().display(),
                format!(
                    "read {} bytes with SHA-256 {}, the record says {} bytes with {}",
                    got.size, got.sha256, f.rec.size_bytes, f.rec.checksum
                ),
            ));
        }
        Ok(got.size)
    })
}

fn finish_experiment(r: &mut Ready<'_>, sum: &mut ExportSummary) {
    let e = r.plan;
    // The new ledger: what this export put in place, and what earlier exports wrote that is
    // still there (a failed write leaves the old file, still ours).
    let mut new = Ledger::default();
    let keep = |rel: String, now: Option<Entry>, new: &mut Ledger, old: &Ledger| {
        if let Some(entry) = now.or_else(|| old.0.get(&rel).copied()) {
            new.0.insert(rel, entry);
        }
    };
    for (f, done) in e.files.iter().zip(&r.done) {
        keep(f.rel.join("/"), done.then(|| f.entry()), &mut new, &r.old);
    }
    for d in &e.docs {
        let ok = write_doc(r, &d.rel, &d.bytes, sum);
        keep(
            d.rel.join("/"),
            ok.then(|| Entry::of(&d.bytes)),
            &mut new,
            &r.old,
        );
    }
    let planned = r.planned();
    let stale: Vec<(String, Entry)> = r
        .old
        .0
        .iter()
        .filter(|(rel, _)| {
            !planned.contains(*rel) && *rel != mldash::LEDGER_FILE && !r.handled.contains(*rel)
        })
        .map(|(rel, entry)| (rel.clone(), *entry))
        .collect();
    for (rel, entry) in stale {
        r.remove(&rel, entry, sum);
    }
    if let LedgerKind::File = e.ledger {
        new.0.extend(r.kept.0.iter().map(|(k, v)| (k.clone(), *v)));
        let ledger = [mldash::LEDGER_FILE.to_string()];
        write_doc(r, &ledger, &mldash::render_ledger(&new), sum);
    }
}

/// Write one document of an experiment; problems are reported. Returns whether it now holds
/// `bytes`.
fn write_doc(r: &Ready<'_>, rel: &[String], bytes: &[u8], sum: &mut ExportSummary) -> bool {
    let owned = r.old.0.contains_key(&rel.join("/"));
    match safe::write_doc(&r.dir, rel, bytes, owned) {
        Ok(Check::Refused(why)) => sum.problems.push(why),
        Err(err) => sum.problems.push(err.to_string()),
        Ok(_) => return true,
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rels(paths: &[&str]) -> Vec<Vec<String>> {
        paths
            .iter()
            .map(|p| p.split('/').map(str::to_string).collect())
            .collect()
    }

    fn blockers(files: &[&str], docs: &[&str]) -> Vec<Option<Blocker>> {
        let (f, d) = (rels(files), rels(docs));
        let f: Vec<&[String]> = f.iter().map(Vec::as_slice).collect();
        let d: Vec<&[String]> = d.iter().map(Vec::as_slice).collect();
        blocked(&f, &d)
    }

    #[test]
    fn the_folder_wins_and_documents_always_win() {
        use Blocker::*;
        assert_eq!(blockers(&["files/a", "files/b"], &[]), vec![None, None]);
        // Either order: the file whose name a folder needs is left out.
        assert_eq!(
            blockers(&["files/a", "files/a/x"], &[]),
            vec![Some(File(1)), None]
        );
        assert_eq!(
            blockers(&["files/a/x", "files/a"], &[]),
            vec![None, Some(File(0))]
        );
        // A chain: only the deepest is written, and it is the one named.
        assert_eq!(
            blockers(&["files/a", "files/a/x", "files/a/x/y"], &[]),
            vec![Some(File(2)), Some(File(2)), None]
        );
        // A document at a file's place, at one of its folders, or below it.
        let docs = ["files/.index", "meta/m"];
        assert_eq!(
            blockers(
                &["files/.index", "files/.index/1/f", "meta", "files/ok"],
                &docs
            ),
            vec![Some(Doc(0)), Some(Doc(0)), Some(Doc(1)), None]
        );
    }
}
