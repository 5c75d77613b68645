//! The `ml-dash` layout: the local storage of the ml-dash 0.11 Python client.
//!
//! Formats, as the client's `ml_dash/storage.py` (`LocalStorage`) writes them, with
//! `json.dump` (`", "` / `": "` separators, one line):
//! ```text
//! <ns>/<project>/<experiment>/experiment.json   create_experiment:
//!     {"name","project","description","tags","bindrs","prefix","metadata","created_at","write_protected"}
//! parameters.json    write_parameters: {"version","data":{flattened},"createdAt","updatedAt"}
//! logs/logs.jsonl    write_log: {"sequenceNumber","timestamp","level","message"[,"metadata"]}
//! logs/.log_sequence write_log: the next sequence number, as text
//! metrics/<name>/data.jsonl      append_to_metric: {"index","data":{...,"_ts"},"createdAt"}
//! metrics/<name>/metadata.json   append_to_metric: {"metricId":"local-metric-<name>","name",
//!     "description","tags","metadata","totalDataPoints","nextIndex","createdAt","updatedAt"}
//! files/.files_metadata.json     write_file: {"files":[{"id","experimentId","path","filename",
//!     "description","tags","bindrs","contentType","sizeBytes","checksum","metadata",
//!     "uploadedAt","updatedAt","deletedAt"}]}
//! files/<path without leading />/<id>/<filename>   (root path: files/<id>/<filename>)
//! ```
//! `experimentId` is `"<project>/<prefix>"` (the client's local stand-in for a server id).
//! File ids are decimal strings; ours are the first 8 bytes of the version id (48-bit ms,
//! 16-bit sequence) as a big-endian integer: stable across exports, time-ordered, and checked
//! unique within the experiment.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use super::safe::{self, Dir, Entry, Ledger};
use super::{Doc, ExpPlan, FileJob, LedgerKind, pyjson};
use crate::error::{Error, Result};
use crate::format::id::Id;
use crate::format::names::ExperimentKey;
use crate::format::record::FileRecord;
use crate::store::Store;
use crate::store::index::Scope;
use crate::store::journal::JournalContents;

pub(crate) const LEDGER_FILE: &str = ".ml-dash-export.json";

pub(super) fn plan(store: &Store, scope: &Scope) -> Result<(Vec<ExpPlan>, Vec<String>)> {
    let mut by_exp = super::records_by_experiment(store, scope)?;
    for k in store.journal_experiments()? {
        let in_scope = scope.namespace.as_ref().is_none_or(|n| *n == k.namespace)
            && scope.project.as_ref().is_none_or(|p| *p == k.project)
            && scope.experiment.as_ref().is_none_or(|e| *e == k.experiment);
        if in_scope {
            by_exp
                .entry((k.namespace, k.project, k.experiment))
                .or_default();
        }
    }
    let mut plans = Vec::new();
    let mut problems = Vec::new();
    for ((ns, project, experiment), versions) in by_exp {
        let key = ExperimentKey {
            namespace: ns,
            project,
            experiment,
        };
        let journal = store.journal(&key)?;
        if journal.bad_lines > 0 {
            problems.push(format!(
                "{}/{}/{}: {} damaged journal lines were left out (see `ml-dash verify`)",
                key.namespace, key.project, key.experiment, journal.bad_lines
            ));
        }
        plans.push(plan_experiment(&key, &versions, &journal)?);
    }
    Ok((plans, problems))
}

fn plan_experiment(
    key: &ExperimentKey,
    versions: &[FileRecord],
    j: &JournalContents,
) -> Result<ExpPlan> {
    let prefix = format!("{}/{}/{}", key.namespace, key.project, key.experiment);
    let mut live = latest_live(versions);
    live.sort_by(|a, b| (&a.uploaded_at, a.id).cmp(&(&b.uploaded_at, b.id)));
    let ids = file_ids(&live)?;

    let mut files = Vec::new();
    let mut records = Vec::new();
    for rec in &live {
        let id = ids[&rec.id].to_string();
        let mut rel = vec!["files".to_string()];
        rel.extend(safe::prefix_segments(&rec.path));
        rel.push(id.clone());
        rel.push(rec.filename.clone());
        files.push(FileJob {
            rel,
            rec: (*rec).clone(),
        });
        records.push(json!({
            "id": id,
            "experimentId": format!("{}/{prefix}", key.project),
            "path": rec.path,
            "filename": rec.filename,
            "description": rec.description,
            "tags": rec.tags,
            "bindrs": [],
            "contentType": rec.content_type,
            "sizeBytes": rec.size_bytes,
            "checksum": rec.checksum.to_hex(),
            "metadata": rec.metadata,
            "uploadedAt": rec.uploaded_at,
            "updatedAt": rec.updated_at,
            "deletedAt": null,
        }));
    }

    let doc = |rel: &[&str], v: &Value| Doc {
        rel: rel.iter().map(|s| s.to_string()).collect(),
        bytes: pyjson::to_vec(v),
    };
    let mut docs = vec![doc(
        &["experiment.json"],
        &json!({
            "name": key.experiment,
            "project": key.project,
            "description": null,
            "tags": [],
            "bindrs": [],
            "prefix": prefix,
            "metadata": null,
            "created_at": created_at(versions, j),
            "write_protected": false,
        }),
    )];
    if let Some(p) = &j.params {
        docs.push(doc(
            &["parameters.json"],
            &json!({
                "version": p.version,
                "data": p.data,
                "createdAt": p.created_at,
                "updatedAt": p.updated_at,
            }),
        ));
    }
    if !j.logs.is_empty() {
        let mut lines = Vec::new();
        for l in &j.logs {
            let mut v = json!({
                "sequenceNumber": l.sequence_number,
                "timestamp": l.timestamp,
                "level": level(&l.level),
                "message": l.message,
            });
            // The client writes metadata only when there is some.
            if let Some(m) = l.metadata.as_ref().filter(|m| !is_empty(m)) {
                v["metadata"] = m.clone();
            }
            lines.extend(pyjson::to_vec(&v));
            lines.push(b'\n');
        }
        docs.push(Doc {
            rel: vec!["logs".into(), "logs.jsonl".into()],
            bytes: lines,
        });
        let next = j
            .logs
            .iter()
            .map(|l| l.sequence_number + 1)
            .max()
            .unwrap_or(0);
        docs.push(Doc {
            rel: vec!["logs".into(), ".log_sequence".into()],
            bytes: next.to_string().into_bytes(),
        });
    }
    for (name, points) in &j.metrics {
        let mut lines = Vec::new();
        for p in points {
            lines.extend(pyjson::to_vec(&json!({
                "index": p.index,
                "data": p.data,
                "createdAt": p.created_at,
            })));
            lines.push(b'\n');
        }
        let first = points.first().map(|p| p.created_at.clone());
        let last = points.last().map(|p| p.created_at.clone());
        // A name with `/` (`train/loss`) is nested folders, as the ml-dash client writes it.
        let dir: Vec<&str> = std::iter::once("metrics").chain(name.split('/')).collect();
        let at = |file: &'static str| [&dir[..], &[file]].concat();
        docs.push(Doc {
            rel: at("data.jsonl").iter().map(|s| s.to_string()).collect(),
            bytes: lines,
        });
        docs.push(doc(
            &at("metadata.json"),
            &json!({
                "metricId": format!("local-metric-{name}"),
                "name": name,
                "description": null,
                "tags": [],
                "metadata": null,
                "totalDataPoints": points.len(),
                "nextIndex": points.iter().map(|p| p.index + 1).max().unwrap_or(0),
                "createdAt": first,
                "updatedAt": last,
            }),
        ));
    }
    // The index last: it never names bytes that are not in place yet.
    docs.push(doc(
        &["files", ".files_metadata.json"],
        &json!({ "files": records }),
    ));
    Ok(ExpPlan {
        dir: vec![
            key.namespace.clone(),
            key.project.clone(),
            key.experiment.clone(),
        ],
        files,
        docs,
        ledger: LedgerKind::File,
        only_if_present: false,
    })
}

/// The latest live version of each path.
fn latest_live(versions: &[FileRecord]) -> Vec<&FileRecord> {
    let mut m: BTreeMap<(&str, &str), &FileRecord> = BTreeMap::new();
    for r in versions.iter().filter(|r| !r.is_deleted()) {
        let slot = m.entry((&r.path, &r.filename)).or_insert(r);
        if r.version > slot.version {
            *slot = r;
        }
    }
    m.into_values().collect()
}

/// The decimal ml-dash id of a version: the first 8 bytes of our id (48-bit ms, 16-bit
/// sequence). Two versions written by different processes in the same millisecond can share
/// them; the later id then uses its 63 random bits instead.
fn file_ids(live: &[&FileRecord]) -> Result<HashMap<Id, u64>> {
    let mut sorted: Vec<Id> = live.iter().map(|r| r.id).collect();
    sorted.sort();
    let mut used: HashMap<u64, Id> = HashMap::new();
    let mut out = HashMap::new();
    for id in sorted {
        let primary = u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes"));
        let fallback = u64::from_be_bytes(id.0[8..].try_into().expect("8 bytes")) >> 1;
        let n = [primary, fallback]
            .into_iter()
            .find(|n| !used.contains_key(n))
            .ok_or_else(|| {
                Error::Internal(format!("no unique ml-dash file id for version {id}"))
            })?;
        used.insert(n, id);
        out.insert(id, n);
    }
    Ok(out)
}

/// ml-dash knows info, warn, error, debug and fatal.
fn level(l: &str) -> &str {
    match l {
        "warning" => "warn",
        "critical" => "fatal",
        other => other,
    }
}

fn is_empty(v: &Value) -> bool {
    v.is_null() || v.as_object().is_some_and(|m| m.is_empty())
}

/// The earliest time the store knows for the experiment (stable across exports).
fn created_at(versions: &[FileRecord], j: &JournalContents) -> Option<String> {
    versions
        .iter()
        .map(|r| &r.uploaded_at)
        .chain(j.params.iter().map(|p| &p.created_at))
        .chain(j.logs.iter().map(|l| &l.timestamp))
        .chain(j.metrics.values().flatten().map(|p| &p.created_at))
        .min()
        .cloned()
}

pub(super) fn render_ledger(l: &Ledger) -> Vec<u8> {
    let files: serde_json::Map<String, Value> =
        l.0.iter()
            .map(|(k, e)| {
                (
                    k.clone(),
                    json!({"size": e.size, "sha256": e.sha256.to_hex()}),
                )
            })
            .collect();
    let mut v = serde_json::to_vec_pretty(&json!({
        "format": 1,
        "writtenBy": "ml-dash export --layout ml-dash",
        "files": files,
    }))
    .expect("ledger serializes");
    v.push(b'\n');
    v
}

/// What an earlier export wrote here (empty if no ledger or an unreadable one).
pub(super) fn read_ledger(exp: &Dir) -> Ledger {
    let mut l = Ledger::default();
    let Ok(Some(bytes)) = exp.read_file(LEDGER_FILE) else {
        return l;
    };
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
        return l;
    };
    let Some(files) = v.get("files").and_then(Value::as_object) else {
        return l;
    };
    for (k, e) in files {
        let size = e.get("size").and_then(Value::as_u64);
        let sha = e
            .get("sha256")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok());
        if let (Some(size), Some(sha256)) = (size, sha) {
            l.0.insert(k.clone(), Entry { size, sha256 });
        }
    }
    l.0.insert(LEDGER_FILE.to_string(), Entry::of(&bytes));
    l
}

/// The records of a `.files_metadata.json`, and what is wrong with it if it is damaged. A torn
/// document (the client rewrites it in place) still yields every complete record before the tear.
pub(super) fn parse_files_metadata(text: &[u8]) -> (Vec<Value>, Option<String>) {
    if let Ok(v) = serde_json::from_slice::<Value>(text) {
        return match v.get("files") {
            Some(Value::Array(a)) => (a.clone(), None),
            _ => (Vec::new(), Some("no \"files\" list".into())),
        };
    }
    let Ok(s) = std::str::from_utf8(text) else {
        return (Vec::new(), Some("not UTF-8".into()));
    };
    let mut out = Vec::new();
    let Some(start) = s.find('[') else {
        return (out, Some("no \"files\" list".into()));
    };
    let mut pos = start + 1;
    loop {
        let rest = &s[pos..];
        let skip = rest.len() - rest.trim_start_matches([' ', '\n', '\r', '\t', ',']).len();
        pos += skip;
        let mut it = serde_json::Deserializer::from_str(&s[pos..]).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                pos += it.byte_offset();
                out.push(v);
            }
            _ => break,
        }
    }
    (out, Some("not valid JSON, torn or corrupt".into()))
}

pub(super) use crate::format::time::is_iso_utc as is_iso;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_decimal_stable_and_unique() {
        let mk = |b: [u8; 16]| FileRecord {
            id: Id(b),
            namespace: "n".into(),
            project: "p".into(),
            experiment: "e".into(),
            path: "/".into(),
            filename: "f".into(),
            version: 1,
            size_bytes: 0,
            checksum: Default::default(),
            content_type: String::new(),
            description: None,
            tags: vec![],
            metadata: Value::Null,
            uploaded_at: String::new(),
            updated_at: String::new(),
            deleted_at: None,
            new_bytes: 0,
        };
        let mut a = [0u8; 16];
        a[5] = 1; // ms = 1
        let mut b = a;
        b[15] = 2; // same ms and sequence, other random bits
        let (ra, rb) = (mk(a), mk(b));
        let ids = file_ids(&[&rb, &ra]).unwrap();
        assert_eq!(ids[&ra.id], 1 << 16);
        assert_eq!(ids[&rb.id], 1, "the later id falls back to its random bits");
        assert_eq!(file_ids(&[&ra, &rb]).unwrap(), ids, "order does not matter");
    }

    #[test]
    fn torn_index_keeps_complete_records() {
        let full =
            br#"{"files": [{"id": "1", "a": [1, 2]}, {"id": "2", "b": "x, y"}, {"id": "3"}]}"#;
        let (r, d) = parse_files_metadata(full);
        assert_eq!((r.len(), d), (3, None));
        let torn = &full[..full.len() - 10];
        let (r, d) = parse_files_metadata(torn);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1]["b"], "x, y");
        assert!(d.is_some());
        let (r, d) = parse_files_metadata(b"");
        assert!(r.is_empty() && d.is_some());
    }
}
