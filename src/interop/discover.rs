//! Finding the experiments of an ml-dash tree and naming them (`import`).
//!
//! A directory holding `experiment.json`, `parameters.json`, `files/.files_metadata.json`,
//! `logs/logs.jsonl` or `metrics/` is an experiment; its own `files/`, `logs/`, `metrics/` and
//! `tracks/` are not searched further, its other folders are (ml-dash prefixes nest). Symbolic
//! links are reported and not followed.

use std::fs;

use serde_json::Value;

use super::safe::Root;
use crate::error::{Error, Result};
use crate::format::names::{self, ExperimentKey};

/// Deepest experiment prefix looked for.
const MAX_DEPTH: usize = 32;

/// Walk `rel` (relative to the root) for experiment directories.
pub(super) fn find_experiments(
    root: &Root,
    rel: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
    problems: &mut Vec<String>,
) -> Result<()> {
    let here = root.join(rel)?;
    let is_exp = rel.len() >= 2
        && (has_file(root, rel, &["experiment.json"])
            || has_file(root, rel, &["parameters.json"])
            || has_file(root, rel, &["files", ".files_metadata.json"])
            || has_file(root, rel, &["logs", "logs.jsonl"])
            || root.is_real_dir(&with(rel, &["metrics"])).unwrap_or(false));
    if is_exp {
        out.push(rel.clone());
    }
    if rel.len() >= MAX_DEPTH {
        return Ok(());
    }
    let mut names = Vec::new();
    for e in fs::read_dir(&here).map_err(|e| Error::io(&here, e))? {
        let e = e.map_err(|e| Error::io(&here, e))?;
        let ft = e.file_type().map_err(|err| Error::io(e.path(), err))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if ft.is_symlink() {
            problems.push(format!(
                "{}: symbolic link not followed",
                e.path().display()
            ));
        } else if ft.is_dir() && !name.starts_with('.') {
            names.push(name.to_string());
        }
    }
    names.sort();
    for name in names {
        // An experiment's own folders hold its data, not other experiments.
        if is_exp && ["files", "logs", "metrics", "tracks"].contains(&name.as_str()) {
            continue;
        }
        if names::segment("folder", &name).is_err() {
            problems.push(format!(
                "{}/{name}: name not usable; skipped",
                here.display()
            ));
            continue;
        }
        rel.push(name);
        find_experiments(root, rel, out, problems)?;
        rel.pop();
    }
    Ok(())
}

pub(super) fn with(rel: &[String], more: &[&str]) -> Vec<String> {
    let mut v = rel.to_vec();
    v.extend(more.iter().map(|s| s.to_string()));
    v
}

fn has_file(root: &Root, rel: &[String], more: &[&str]) -> bool {
    root.is_real_file(&with(rel, more)).unwrap_or(false)
}

/// The store's name for the experiment at `rel`. The prefix in its experiment.json decides
/// when it agrees with where the directory is (so DIR may also be `<root>/<ns>`); else
/// `<ns>/<project>/<experiment...>`, or `<project>/<experiment>` of older releases.
pub(super) fn experiment_key(root: &Root, rel: &[String]) -> Result<ExperimentKey> {
    let prefix: Option<Vec<String>> = read_json(root, &with(rel, &["experiment.json"]))
        .ok()
        .and_then(|v| v.get("prefix").and_then(Value::as_str).map(str::to_string))
        .map(|p| {
            p.split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        });
    let segs = match prefix {
        Some(p) if p.len() >= 2 && p.ends_with(rel) => p,
        _ if rel.len() == 2 => return ExperimentKey::new("local", &rel[0], &rel[1]),
        _ => rel.to_vec(),
    };
    if segs.len() == 2 {
        // A two-segment 0.11 prefix `owner/project` names the experiment after the project.
        return ExperimentKey::new(&segs[0], &segs[1], &segs[1]);
    }
    ExperimentKey::new(&segs[0], &segs[1], &segs[2..].join("."))
}

pub(super) fn read_json(root: &Root, rel: &[String]) -> Result<Value> {
    if !root.is_real_file(rel)? {
        return Err(Error::NotFound(rel.join("/")));
    }
    let p = root.join(rel)?;
    let bytes = fs::read(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(rel.join("/"), e.to_string()))
}
