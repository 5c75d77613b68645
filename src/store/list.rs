//! `list` and `resolve`: which versions a filter selects.

use super::{Session, Store};
use crate::error::{Error, Result};
use crate::format::names::FileKey;
use crate::format::record::FileRecord;
use crate::store::index::Scope;

pub(crate) fn resolve_in(
    s: &Session<'_>,
    key: &FileKey,
    version: Option<u32>,
) -> Result<FileRecord> {
    let versions = s.index.versions_of(key)?;
    for (v, id) in versions.iter().rev() {
        if version.is_some_and(|want| want != *v) {
            continue;
        }
        let r = s
            .index
            .version(*id)?
            .ok_or_else(|| Error::index(format!("missing version {id}")))?;
        if !r.is_deleted() {
            return Ok(r);
        }
        if version.is_some() {
            return Err(Error::NotFound(format!(
                "{} version {} (deleted)",
                key.display(),
                v
            )));
        }
    }
    Err(Error::NotFound(match version {
        Some(v) => format!("{} version {v}", key.display()),
        None => key.display(),
    }))
}
/// What `list` shows.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Which namespace / project / experiment (default: all).
    pub scope: Scope,
    /// A normalized prefix; matches whole segments.
    pub prefix: Option<String>,
    /// Every tag must be present.
    pub tags: Vec<String>,
    /// Matched against the full path (`/a/b/name`), or the file name when it has no `/`
    /// (`crate::format::glob`: `*` stays inside a segment, `**` crosses segments).
    pub glob: Option<crate::format::glob::Glob>,
    /// Every version, not only the latest live one of each path.
    pub all_versions: bool,
    /// Deleted versions too.
    pub include_deleted: bool,
}
impl ListFilter {
    fn matches_path(&self, r: &FileRecord) -> bool {
        if let Some(p) = &self.prefix
            && !crate::format::names::under(&r.path, p)
        {
            return false;
        }
        if let Some(g) = &self.glob
            && !g.matches(r)
        {
            return false;
        }
        true
    }
}

impl Store {
    /// Versions matching `f`, in path order (ascending version within a path).
    pub fn list(&self, f: &ListFilter) -> Result<Vec<FileRecord>> {
        let s = self.session()?;
        let mut out: Vec<FileRecord> = Vec::new();
        let mut group: Vec<FileRecord> = Vec::new();
        let flush = |group: &mut Vec<FileRecord>, out: &mut Vec<FileRecord>| {
            if f.all_versions {
                out.extend(
                    group
                        .drain(..)
                        .filter(|r| f.include_deleted || !r.is_deleted()),
                );
            } else {
                let latest = group
                    .iter()
                    .rev()
                    .find(|r| f.include_deleted || !r.is_deleted())
                    .cloned();
                out.extend(latest);
                group.clear();
            }
        };
        for r in s.index.scan_versions(&f.scope) {
            let r = r?;
            if !f.matches_path(&r) {
                continue;
            }
            if group.last().is_some_and(|g| g.key() != r.key()) {
                flush(&mut group, &mut out);
            }
            group.push(r);
        }
        flush(&mut group, &mut out);
        out.retain(|r| f.tags.iter().all(|t| r.tags.contains(t)));
        Ok(out)
    }
    /// One version of a path: `version` or the latest live one.
    pub fn resolve(&self, key: &FileKey, version: Option<u32>) -> Result<FileRecord> {
        let s = self.session()?;
        resolve_in(&s, key, version)
    }
}
