//! Names users give: namespace, project, experiment, prefix and file name.
//!
//! Every name is checked here, once, before anything is written: segments may not be empty,
//! `.` or `..`, nor contain `/`, NUL or control characters, nor be longer than 255 bytes. A prefix
//! is a `/`-separated list of such segments (`/` alone is the root); a target given with `--to`
//! is relative (`a/b.pth` files under the prefix) and never absolute. The checks make it
//! impossible for any stored name to point outside a directory an exporter writes into.

use crate::error::{Error, Result};

pub const MAX_SEGMENT: usize = 255;

/// Where a file lives: one path of one experiment. Every field is validated.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub namespace: String,
    pub project: String,
    pub experiment: String,
    /// `/` for the root, else `/a/b` (no trailing slash).
    pub path: String,
    pub filename: String,
}

impl FileKey {
    /// `/a/b/name` (or `/name` at the root).
    pub fn full_path(&self) -> String {
        join(&self.path, &self.filename)
    }

    /// `ns/project/experiment/a/b/name`, for messages.
    pub fn display(&self) -> String {
        format!(
            "{}/{}/{}{}",
            self.namespace,
            self.project,
            self.experiment,
            self.full_path()
        )
    }
}

/// Which experiment (namespace, project, name).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExperimentKey {
    pub namespace: String,
    pub project: String,
    pub experiment: String,
}

impl ExperimentKey {
    pub fn new(namespace: &str, project: &str, experiment: &str) -> Result<Self> {
        Ok(ExperimentKey {
            namespace: segment("namespace", namespace)?.to_string(),
            project: segment("project", project)?.to_string(),
            experiment: segment("experiment", experiment)?.to_string(),
        })
    }

    pub fn file(&self, path: String, filename: String) -> FileKey {
        FileKey {
            namespace: self.namespace.clone(),
            project: self.project.clone(),
            experiment: self.experiment.clone(),
            path,
            filename,
        }
    }
}

/// Join a normalized prefix and a name.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix == "/" {
        format!("/{name}")
    } else {
        format!("{prefix}/{name}")
    }
}

/// Check one path segment; `what` names it in the error.
pub fn segment<'a>(what: &'static str, s: &'a str) -> Result<&'a str> {
    let reason = if s.is_empty() {
        "must not be empty"
    } else if s == "." || s == ".." {
        "must not be `.` or `..`"
    } else if s.contains('/') {
        "must not contain `/`"
    } else if s.contains('\\') {
        "must not contain `\\`"
    } else if s.chars().any(char::is_control) {
        "must not contain control characters"
    } else if s.len() > MAX_SEGMENT {
        "is longer than 255 bytes"
    } else {
        return Ok(s);
    };
    Err(Error::invalid(what, s, reason))
}

/// Normalize a prefix: `""`, `"/"` → `"/"`; `"models/"`, `"/models"` → `"/models"`.
/// Refuses empty segments (`/a//b`), `.`/`..` and control characters.
pub fn prefix(s: &str) -> Result<String> {
    let trimmed = s.strip_prefix('/').unwrap_or(s);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        if s.len() > 1 {
            return Err(Error::invalid("prefix", s, "has an empty segment"));
        }
        return Ok("/".to_string());
    }
    let mut out = String::with_capacity(trimmed.len() + 1);
    for seg in trimmed.split('/') {
        segment("prefix", seg).map_err(|e| match e {
            Error::InvalidInput { reason, .. } => {
                Error::invalid("prefix", s, format!("segment {seg:?} {reason}"))
            }
            other => other,
        })?;
        out.push('/');
        out.push_str(seg);
    }
    Ok(out)
}

/// Split a full path `/a/b/name` into a normalized prefix and a file name.
pub fn split_full(full: &str) -> Result<(String, String)> {
    if !full.starts_with('/') {
        return Err(Error::invalid("path", full, "must start with `/`"));
    }
    let (dir, name) = full.rsplit_once('/').unwrap_or(("", full));
    let name = segment("file name", name)?;
    Ok((prefix(dir)?, name.to_string()))
}

/// Resolve `--to` (or the source file's own name) under `prefix`. A target may be a relative
/// path (`sub/name.pth` lands in `<prefix>/sub`); an absolute one is refused.
pub fn target(prefix_norm: &str, to: &str) -> Result<(String, String)> {
    if to.starts_with('/') {
        return Err(Error::invalid(
            "target name",
            to,
            "must be relative (use --prefix for the directory)",
        ));
    }
    let (dir, name) = match to.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", to),
    };
    let name = segment("target name", name)?;
    let full_dir = if dir.is_empty() {
        prefix_norm.to_string()
    } else {
        prefix(&join(prefix_norm, dir))?
    };
    Ok((full_dir, name.to_string()))
}

/// Does `path` (a normalized prefix) lie at or below `filter` (also normalized), segment-wise?
/// `/models` matches `/models` and `/models/x`, never `/models_old`.
pub fn under(path: &str, filter: &str) -> bool {
    filter == "/"
        || path == filter
        || (path.starts_with(filter) && path.as_bytes().get(filter.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_normalize() {
        assert_eq!(prefix("").unwrap(), "/");
        assert_eq!(prefix("/").unwrap(), "/");
        assert_eq!(prefix("models").unwrap(), "/models");
        assert_eq!(
            prefix("/models/checkpoints/").unwrap(),
            "/models/checkpoints"
        );
        for bad in ["/a//b", "/a/../b", "/./a", "/a/\u{7}", "//", "/a\\b"] {
            assert!(prefix(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn targets() {
        assert_eq!(
            target("/m", "x.pth").unwrap(),
            ("/m".into(), "x.pth".into())
        );
        assert_eq!(
            target("/", "a/x.pth").unwrap(),
            ("/a".into(), "x.pth".into())
        );
        assert!(target("/m", "/etc/passwd").is_err());
        assert!(target("/m", "../x").is_err());
        assert!(target("/m", "a/../../x").is_err());
        assert!(target("/m", "").is_err());
        assert!(target("/m", "dir/").is_err());
    }

    #[test]
    fn segment_filter_is_whole_segments() {
        assert!(under("/models", "/models"));
        assert!(under("/models/x", "/models"));
        assert!(!under("/models_old", "/models"));
        assert!(under("/anything", "/"));
    }

    #[test]
    fn split_full_paths() {
        assert_eq!(
            split_full("/a/b/c.txt").unwrap(),
            ("/a/b".into(), "c.txt".into())
        );
        assert_eq!(split_full("/c.txt").unwrap(), ("/".into(), "c.txt".into()));
        assert!(split_full("c.txt").is_err());
        assert!(split_full("/a/").is_err());
    }
}
