//! The `tree` layout: the documented `project/experiment/files/<prefix>/<filename>`.
//!
//! The latest live version of each path, plus `.ml-dash-records.json` beside `files/`: every
//! live version's record (the JSON of `list --json`), as one array. The namespace is not part
//! of the path (the ml-dash Files tutorial omits it), so two namespaces holding the same project/experiment are
//! refused unless the scope names one. The records file doubles as the ledger: the latest
//! record of each path names a file this export wrote, except a file whose name a folder
//! takes (`/a` beside `/a/x`), which the plan leaves out.

use std::collections::{BTreeMap, BTreeSet};

use super::safe::{self, Dir, Entry, Ledger};
use super::{Doc, ExpPlan, FileJob, LedgerKind};
use crate::error::{Error, Result};
use crate::format::record::FileRecord;
use crate::store::Store;
use crate::store::index::Scope;

pub(crate) const RECORDS_FILE: &str = ".ml-dash-records.json";

pub(super) fn plan(store: &Store, scope: &Scope) -> Result<Vec<ExpPlan>> {
    let by_exp = super::records_by_experiment(store, scope)?;
    let mut namespaces: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for (ns, p, e) in by_exp.keys() {
        namespaces.entry((p, e)).or_default().insert(ns);
    }
    if let Some(((p, e), ns)) = namespaces.iter().find(|(_, ns)| ns.len() > 1) {
        return Err(Error::invalid(
            "export",
            format!("{p}/{e}"),
            format!(
                "namespaces {} all hold this project/experiment and the tree layout has no \
                 namespace level; pass --namespace (or use --layout ml-dash)",
                ns.iter().copied().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let mut plans = Vec::new();
    for ((_, project, experiment), versions) in by_exp {
        let live: Vec<FileRecord> = versions.into_iter().filter(|r| !r.is_deleted()).collect();
        let files = latest(&live)
            .into_iter()
            .map(|rec| FileJob {
                rel: file_rel(rec),
                rec: rec.clone(),
            })
            .collect::<Vec<_>>();
        let mut bytes = serde_json::to_vec_pretty(&live).expect("records serialize");
        bytes.push(b'\n');
        plans.push(ExpPlan {
            dir: vec![project, experiment],
            only_if_present: files.is_empty(),
            files,
            docs: vec![Doc {
                rel: vec![RECORDS_FILE.to_string()],
                bytes,
            }],
            ledger: LedgerKind::Records,
        });
    }
    Ok(plans)
}

/// `files/<prefix segments>/<filename>`.
fn file_rel(r: &FileRecord) -> Vec<String> {
    let mut rel = vec!["files".to_string()];
    rel.extend(safe::prefix_segments(&r.path));
    rel.push(r.filename.clone());
    rel
}

/// The highest version of each path.
fn latest(records: &[FileRecord]) -> Vec<&FileRecord> {
    let mut m: BTreeMap<(&str, &str), &FileRecord> = BTreeMap::new();
    for r in records {
        let slot = m.entry((&r.path, &r.filename)).or_insert(r);
        if r.version > slot.version {
            *slot = r;
        }
    }
    m.into_values().collect()
}

/// What an earlier tree export wrote here, from its records file (empty if none or unreadable).
pub(super) fn read_ledger(exp: &Dir) -> Ledger {
    let Ok(Some(bytes)) = exp.read_file(RECORDS_FILE) else {
        return Ledger::default();
    };
    let Ok(records) = serde_json::from_slice::<Vec<FileRecord>>(&bytes) else {
        return Ledger::default();
    };
    let latest = latest(&records);
    let rels: Vec<Vec<String>> = latest.iter().map(|r| file_rel(r)).collect();
    let refs: Vec<&[String]> = rels.iter().map(Vec::as_slice).collect();
    let blocked = super::blocked(&refs, &[]);
    let mut l = Ledger::default();
    for ((r, rel), b) in latest.iter().zip(&rels).zip(blocked) {
        if b.is_none() {
            l.0.insert(
                rel.join("/"),
                Entry {
                    size: r.size_bytes,
                    sha256: r.checksum,
                },
            );
        }
    }
    l.0.insert(RECORDS_FILE.to_string(), Entry::of(&bytes));
    l
}
