//! Retention: which versions a policy keeps, and the policies stored per scope in
//! `<root>/retention.json`.
//!
//! A policy applies to each file path on its own: of a path's live versions it keeps the newest
//! `keep_last`, every version carrying one of `keep_tags`, and every version uploaded within
//! `keep_within_secs` of now; the newest live version of a path is always kept (a policy never
//! makes a file disappear; `delete` does that). Everything else is what the policy drops. A
//! checkpoint directory uploaded again and again under one prefix is a set of paths, so
//! "keep the last 3" keeps the last 3 saves of every shard.
//!
//! `gc` applies the policies: the one given on its command line to the files in its scope, and
//! elsewhere the most specific stored policy whose scope holds the file (a prefix beats an
//! experiment, which beats a project, which beats a namespace). The versions dropped are
//! soft-deleted by one `DeleteVersions` event (by id, so a version uploaded elsewhere with the
//! same number is never hit), then collected like any deleted version; delta bases stay while
//! a kept version needs them.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::format::names;
use crate::format::record::FileRecord;
use crate::store::index::{Index, Scope};
use crate::store::{Session, Store};

/// Which versions to keep. At least one rule must be set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Keep the newest N versions of each file (N >= 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep every version carrying any of these tags (e.g. `best`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_tags: Vec<String>,
    /// Keep every version uploaded within this many seconds of now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within_secs: Option<u64>,
}

impl RetentionPolicy {
    /// Check the rules: at least one, `keep_last` at least 1, tags valid.
    pub fn check(&self) -> Result<()> {
        if self.keep_last.is_none() && self.keep_tags.is_empty() && self.keep_within_secs.is_none()
        {
            return Err(Error::invalid(
                "retention policy",
                "(no rule)",
                "needs keep-last, keep-tag or keep-within",
            ));
        }
        if self.keep_last == Some(0) {
            return Err(Error::invalid(
                "keep-last",
                "0",
                "must be at least 1 (the newest version of a file is always kept)",
            ));
        }
        crate::format::record::check_tags(&self.keep_tags)
    }
}

/// Where a policy applies: a namespace, project, experiment and prefix, each optional (a
/// missing one matches all). A project needs its namespace, an experiment its project.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionScope {
    /// Only this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Only this project of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Only this experiment of the project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// A prefix (`/checkpoints`); matches whole segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

impl RetentionScope {
    /// Check the names and normalize the prefix.
    pub fn checked(mut self) -> Result<RetentionScope> {
        for (what, v) in [
            ("namespace", &self.namespace),
            ("project", &self.project),
            ("experiment", &self.experiment),
        ] {
            if let Some(v) = v {
                names::segment(what, v)?;
            }
        }
        if self.project.is_some() && self.namespace.is_none()
            || self.experiment.is_some() && self.project.is_none()
        {
            return Err(Error::invalid(
                "retention scope",
                self.display(),
                "a project needs its namespace, an experiment its project",
            ));
        }
        if let Some(p) = &self.prefix {
            self.prefix = Some(names::prefix(p)?);
        }
        Ok(self)
    }

    /// Does the scope hold version `r`?
    pub fn matches(&self, r: &FileRecord) -> bool {
        Scope {
            namespace: self.namespace.clone(),
            project: self.project.clone(),
            experiment: self.experiment.clone(),
        }
        .matches(r)
            && self
                .prefix
                .as_ref()
                .is_none_or(|p| names::under(&r.path, p))
    }

    /// How specific: a longer scope wins over a shorter one holding the same file.
    fn rank(&self) -> (usize, usize) {
        let levels = [&self.namespace, &self.project, &self.experiment]
            .iter()
            .filter(|v| v.is_some())
            .count();
        let depth = self
            .prefix
            .as_ref()
            .map_or(0, |p| 1 + p.split('/').filter(|s| !s.is_empty()).count());
        (levels, depth)
    }

    /// `ns/project/experiment:/prefix`, `*` for a level left open.
    pub fn display(&self) -> String {
        let mut s = String::new();
        for (i, v) in [&self.namespace, &self.project, &self.experiment]
            .iter()
            .enumerate()
        {
            if i > 0 {
                s.push('/');
            }
            s.push_str(v.as_deref().unwrap_or("*"));
        }
        if let Some(p) = &self.prefix {
            s.push(':');
            s.push_str(p);
        }
        s
    }
}

/// A policy and where it applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopedPolicy {
    /// Where it applies.
    pub scope: RetentionScope,
    /// What it keeps.
    pub policy: RetentionPolicy,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    format: u32,
    policies: Vec<ScopedPolicy>,
}

const FILE: &str = "retention.json";

/// Parse a duration as `90s`, `30m`, `12h`, `7d` or `2w` (a whole number and a unit).
pub fn parse_duration(s: &str) -> Result<u64> {
    let bad = || {
        Error::invalid(
            "duration",
            s,
            "must be a whole number and a unit: s, m, h, d or w (e.g. 7d)",
        )
    };
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs).ok_or_else(bad)
}

/// A duration in seconds the way `parse_duration` reads it (the largest unit that divides it).
pub fn format_duration(secs: u64) -> String {
    for (unit, n) in [('w', 7 * 86_400), ('d', 86_400), ('h', 3600), ('m', 60)] {
        if secs > 0 && secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// Which policy applies to `r`: the command line's when its scope holds `r`, else the most
/// specific stored policy holding it.
fn policy_for<'a>(
    r: &FileRecord,
    given: Option<&'a ScopedPolicy>,
    stored: &'a [ScopedPolicy],
) -> Option<&'a RetentionPolicy> {
    if let Some(g) = given
        && g.scope.matches(r)
    {
        return Some(&g.policy);
    }
    stored
        .iter()
        .filter(|p| p.scope.matches(r))
        .max_by_key(|p| p.scope.rank())
        .map(|p| &p.policy)
}

/// The live versions the policies drop, in path and version order.
pub(crate) fn plan(
    ix: &Index,
    given: Option<&ScopedPolicy>,
    stored: &[ScopedPolicy],
) -> Result<Vec<FileRecord>> {
    if given.is_none() && stored.is_empty() {
        return Ok(Vec::new());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut drop = Vec::new();
    let mut group: Vec<FileRecord> = Vec::new();
    let mut decide = |group: &mut Vec<FileRecord>| {
        let Some(newest) = group.last() else { return };
        if let Some(p) = policy_for(newest, given, stored) {
            drop.extend(dropped_of(group, p, now));
        }
        group.clear();
    };
    for r in ix.scan_versions(&Scope::default()) {
        let r = r?;
        if group.last().is_some_and(|l| {
            (
                &l.namespace,
                &l.project,
                &l.experiment,
                &l.path,
                &l.filename,
            ) != (
                &r.namespace,
                &r.project,
                &r.experiment,
                &r.path,
                &r.filename,
            )
        }) {
            decide(&mut group);
        }
        if !r.is_deleted() {
            group.push(r);
        }
    }
    decide(&mut group);
    Ok(drop)
}

/// Of one path's live versions (ascending), those `p` does not keep.
fn dropped_of(
    versions: &[FileRecord],
    p: &RetentionPolicy,
    now: std::time::Duration,
) -> Vec<FileRecord> {
    let n = versions.len();
    let last = p.keep_last.map_or(1, |k| k.max(1) as usize);
    let cutoff = p.keep_within_secs.map(|w| {
        let t = now.saturating_sub(std::time::Duration::from_secs(w));
        #[allow(
            clippy::cast_possible_wrap,
            reason = "seconds since 1970 fit an i64 for the next 292 billion years"
        )]
        crate::format::time::format_micros(t.as_secs() as i64, t.subsec_micros())
    });
    versions
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            let kept = n - i <= last
                || r.tags.iter().any(|t| p.keep_tags.contains(t))
                || cutoff
                    .as_ref()
                    .is_some_and(|c| canonical_time(&r.uploaded_at) >= *c);
            !kept
        })
        .map(|(_, r)| r.clone())
        .collect()
}

/// A record's timestamp with exactly six fraction digits (imported records may carry fewer or
/// more), so that timestamps compare as strings.
fn canonical_time(t: &str) -> String {
    let Some(body) = t.strip_suffix('Z') else {
        return t.to_string();
    };
    let (secs, frac) = body.split_once('.').unwrap_or((body, ""));
    let mut f: String = frac.chars().take(6).collect();
    while f.len() < 6 {
        f.push('0');
    }
    format!("{secs}.{f}Z")
}

impl Store {
    /// The stored retention policies (none if there is no `retention.json`).
    pub fn retention_policies(&self) -> Result<Vec<ScopedPolicy>> {
        let path = self.root.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).at(&path),
        };
        let f: PolicyFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(path.display().to_string(), e.to_string()))?;
        if f.format != 1 {
            return Err(Error::corrupt(
                path.display().to_string(),
                format!("unsupported retention format {}", f.format),
            ));
        }
        Ok(f.policies)
    }

    /// Store `policy` for `scope`, replacing the one stored for that same scope. Applies at
    /// every later gc.
    pub fn set_retention(&self, scope: RetentionScope, policy: RetentionPolicy) -> Result<()> {
        let scope = scope.checked()?;
        policy.check()?;
        let s = self.session()?;
        let mut all = self.retention_policies()?;
        if all.iter().any(|p| p.scope == scope && p.policy == policy) {
            return Ok(());
        }
        all.retain(|p| p.scope != scope);
        all.push(ScopedPolicy { scope, policy });
        self.write_policies(&s, all)
    }

    /// Remove the policy stored for exactly `scope`. Returns whether there was one.
    pub fn clear_retention(&self, scope: RetentionScope) -> Result<bool> {
        let scope = scope.checked()?;
        let s = self.session()?;
        let mut all = self.retention_policies()?;
        let before = all.len();
        all.retain(|p| p.scope != scope);
        if all.len() == before {
            return Ok(false);
        }
        self.write_policies(&s, all)?;
        Ok(true)
    }

    fn write_policies(&self, _s: &Session<'_>, mut all: Vec<ScopedPolicy>) -> Result<()> {
        all.sort_by_key(|p| p.scope.display());
        let mut bytes = serde_json::to_vec_pretty(&PolicyFile {
            format: 1,
            policies: all,
        })
        .expect("policies serialize");
        bytes.push(b'\n');
        crate::store::durable::write_atomic(&self.root.join(FILE), &bytes, &self.opts.faults)
    }

    /// Soft-delete exactly these versions (those still live), as retention does: one event
    /// per 100,000 versions. Returns how many were deleted.
    pub(crate) fn delete_versions(
        &self,
        s: &Session<'_>,
        versions: &[FileRecord],
        reason: &str,
    ) -> Result<usize> {
        let mut ids = Vec::new();
        let mut seen = HashSet::new();
        for r in versions {
            if seen.insert(r.id) && s.index.version(r.id)?.is_some_and(|r| !r.is_deleted()) {
                ids.push(r.id);
            }
        }
        for part in ids.chunks(crate::format::manifest::MAX_EVENT_VERSIONS) {
            let e = crate::format::manifest::Event::DeleteVersions {
                id: crate::format::id::Id::generate_after(s.index.meta_id("last_id")?),
                version_ids: part.to_vec(),
                reason: reason.to_string(),
                at: crate::format::time::now_iso(),
            };
            self.poison(crate::store::write::commit_event(s, &e))?;
        }
        Ok(ids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("7d").unwrap(), 7 * 86_400);
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("2w").unwrap(), 14 * 86_400);
        for bad in ["", "d", "7", "7y", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(7 * 86_400), "1w");
        assert_eq!(format_duration(3 * 3600), "3h");
        assert_eq!(format_duration(61), "61s");
    }

    #[test]
    fn timestamps_compare_whatever_their_precision() {
        assert_eq!(
            canonical_time("2026-11-26T21:52:58Z"),
            "2026-11-26T21:52:58.000000Z"
        );
        assert_eq!(
            canonical_time("2026-11-26T21:52:58.1234567Z"),
            "2026-11-26T21:52:58.123456Z"
        );
        assert!(canonical_time("2026-11-26T21:52:58Z") < canonical_time("2026-11-26T21:52:58.5Z"));
    }

    #[test]
    fn the_most_specific_scope_wins() {
        let exp = RetentionScope {
            namespace: Some("n".into()),
            project: Some("p".into()),
            experiment: Some("e".into()),
            prefix: None,
        };
        let pre = RetentionScope {
            prefix: Some("/ckpt".into()),
            ..exp.clone()
        };
        assert!(pre.rank() > exp.rank());
        assert!(exp.rank() > RetentionScope::default().rank());
        assert!(
            RetentionScope {
                experiment: Some("e".into()),
                ..Default::default()
            }
            .checked()
            .is_err()
        );
    }
}
