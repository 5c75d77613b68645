//! Export the store into a plain directory tree, and import trees written by ml-dash 0.11.
//!
//! Two export layouts (`Layout`):
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
//! what its ledger says it wrote; everything else in DIR is left alone.

mod discover;
pub mod import;
mod mldash;
mod pyjson;
mod safe;
mod tree;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::index::Scope;
use crate::read::FileReader;
use crate::record::FileRecord;
use crate::store::Store;
use safe::{Check, Entry, HashingWriter, Ledger, Root};

pub use import::{ImportSummary, import};

/// Where exported files go (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// `DIR/<project>/<experiment>/files/<prefix>/<filename>`: the seed's documented tree.
    #[default]
    Tree,
    /// `DIR/<namespace>/<project>/<experiment>/...`: the ml-dash 0.11 local layout.
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
    pub bytes: u64,
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

/// Files are copied by this many threads (each holds at most ~3 batches of decoded chunks).
const MAX_THREADS: usize = 8;

impl ExportPlan {
    /// Plan the export of everything in `scope`.
    pub fn new(store: &Store, scope: &Scope, layout: Layout) -> Result<ExportPlan> {
        for (what, v) in [
            ("namespace", &scope.namespace),
            ("project", &scope.project),
            ("experiment", &scope.experiment),
        ] {
            if let Some(v) = v {
                crate::path::segment(what, v)?;
            }
        }
        let (exps, problems) = match layout {
            Layout::Tree => (tree::plan(store, scope)?, Vec::new()),
            Layout::MlDash => mldash::plan(store, scope)?,
        };
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
        let root = Root::create(dir)?;
        let mut sum = ExportSummary {
            problems: self.problems.clone(),
            ..Default::default()
        };
        // Experiment directories and what earlier exports wrote in them.
        let mut ready: Vec<(&ExpPlan, PathBuf, Ledger)> = Vec::new();
        for e in &self.exps {
            if e.only_if_present && !root.is_real_dir(&e.dir).unwrap_or(true) {
                continue;
            }
            match root.ensure_dir(&e.dir) {
                Ok(p) => {
                    let old = match e.ledger {
                        LedgerKind::Records => tree::read_ledger(&p),
                        LedgerKind::File => mldash::read_ledger(&p),
                    };
                    ready.push((e, p, old));
                }
                Err(err) => sum.problems.push(format!("{}: {err}", e.dir.join("/"))),
            }
        }
        sum.experiments = ready.len() as u64;

        let jobs: Vec<(&FileJob, &Path, &Ledger, &Vec<String>)> = ready
            .iter()
            .flat_map(|(e, p, l)| e.files.iter().map(move |f| (f, p.as_path(), l, &e.dir)))
            .collect();
        sum.files = jobs.len() as u64;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(
                std::thread::available_parallelism()
                    .map_or(4, |n| n.get())
                    .min(MAX_THREADS),
            )
            .build()
            .map_err(|e| Error::Index(format!("cannot start export threads: {e}")))?;

        // 1. Check every destination (hashing existing files) in parallel.
        let checks: Vec<Result<Check>> = pool.install(|| {
            jobs.par_iter()
                .map(|(f, exp_dir, ledger, _)| {
                    let dest = exp_dir.join(f.rel.join("/"));
                    let want = Entry {
                        size: f.rec.size_bytes,
                        sha256: f.rec.checksum,
                    };
                    let c = safe::check_dest(&dest, want, ledger.0.get(&f.rel.join("/")).copied());
                    if let (Ok(Check::Same), Some(p)) = (&c, progress) {
                        p.fetch_add(f.rec.size_bytes, std::sync::atomic::Ordering::Relaxed);
                    }
                    c
                })
                .collect()
        });
        let mut to_write = Vec::new();
        for (job, c) in jobs.iter().zip(checks) {
            match c {
                Ok(Check::Same) => sum.skipped += 1,
                Ok(Check::Write) => to_write.push(*job),
                Ok(Check::Refused(why)) => sum.problems.push(why),
                Err(e) => sum.problems.push(e.to_string()),
            }
        }

        // 2. Write: readers are opened one at a time (each takes the store lock briefly), the
        //    copies run in parallel. The channel bounds how many open readers wait.
        let outcomes: Mutex<Vec<Result<u64>>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            let (tx, rx) = crossbeam_channel::bounded::<(usize, Result<FileReader>)>(MAX_THREADS);
            let to_write = &to_write;
            s.spawn(move || {
                for (i, (f, ..)) in to_write.iter().enumerate() {
                    if tx.send((i, store.open_version(f.rec.id))).is_err() {
                        break;
                    }
                }
            });
            pool.install(|| {
                rx.into_iter().par_bridge().for_each(|(i, reader)| {
                    let (f, _, _, dir) = to_write[i];
                    let r = reader.and_then(|r| write_file(&root, dir, f, &r, progress));
                    outcomes.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                });
            });
        });
        for r in outcomes.into_inner().unwrap_or_else(|p| p.into_inner()) {
            match r {
                Ok(n) => {
                    sum.written += 1;
                    sum.bytes += n;
                }
                Err(e) => sum.problems.push(e.to_string()),
            }
        }

        // 3. Per experiment: documents, then removal of what left the plan, then the ledger.
        for (e, exp_dir, old) in &ready {
            finish_experiment(&root, e, exp_dir, old, &mut sum);
        }
        Ok(sum)
    }
}

/// Stream one version into its destination; returns the bytes written.
fn write_file(
    root: &Root,
    exp_dir: &[String],
    f: &FileJob,
    reader: &FileReader,
    progress: Option<&AtomicU64>,
) -> Result<u64> {
    let (name, parents) = f.rel.split_last().expect("a file path has a name");
    let mut segs = exp_dir.to_vec();
    segs.extend_from_slice(parents);
    let dest = root.ensure_dir(&segs)?.join(name);
    root.join(&[segs, vec![name.clone()]].concat())?;
    let mut out = crate::durable::AtomicFile::create(&dest)?;
    let mut hw = HashingWriter::new(&mut out, progress);
    reader.copy_to(&mut hw)?;
    let got = hw.finish();
    if got.size != f.rec.size_bytes || got.sha256 != f.rec.checksum {
        // Dropping `out` removes the temporary file: the destination is untouched.
        return Err(Error::corrupt(
            f.rec.key().display(),
            format!(
                "read {} bytes with SHA-256 {}, the record says {} bytes with {}",
                got.size, got.sha256, f.rec.size_bytes, f.rec.checksum
            ),
        ));
    }
    out.commit()?;
    Ok(got.size)
}

fn finish_experiment(
    root: &Root,
    e: &ExpPlan,
    exp_dir: &Path,
    old: &Ledger,
    sum: &mut ExportSummary,
) {
    let mut new = Ledger::default();
    for f in &e.files {
        new.0.insert(
            f.rel.join("/"),
            Entry {
                size: f.rec.size_bytes,
                sha256: f.rec.checksum,
            },
        );
    }
    for d in &e.docs {
        new.0.insert(d.rel.join("/"), Entry::of(&d.bytes));
    }
    let write = |rel: &[String], bytes: &[u8], sum: &mut ExportSummary| {
        let mut segs = e.dir.clone();
        segs.extend_from_slice(&rel[..rel.len() - 1]);
        let r = root.ensure_dir(&segs).and_then(|d| {
            let dest = d.join(&rel[rel.len() - 1]);
            safe::write_doc(&dest, bytes, old.0.contains_key(&rel.join("/")))
        });
        match r {
            Ok(Check::Refused(why)) => sum.problems.push(why),
            Err(err) => sum.problems.push(err.to_string()),
            Ok(_) => {}
        }
    };
    for d in &e.docs {
        write(&d.rel, &d.bytes, sum);
    }
    for (rel, entry) in &old.0 {
        if new.0.contains_key(rel) || rel == mldash::LEDGER_FILE {
            continue;
        }
        let Some(segs) = safe::split_rel(rel) else {
            continue;
        };
        let Ok(path) = root.join(&[e.dir.clone(), segs].concat()) else {
            continue;
        };
        match safe::remove_ours(&path, *entry, exp_dir) {
            Ok(true) => sum.removed += 1,
            Ok(false) => {}
            Err(err) => sum.problems.push(err.to_string()),
        }
    }
    if let LedgerKind::File = e.ledger {
        write(
            &[mldash::LEDGER_FILE.to_string()],
            &mldash::render_ledger(&new),
            sum,
        );
    }
}
