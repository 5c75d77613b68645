//! Names users give: namespace, project, experiment, prefix and file name.
//!
//! Every name is checked here, once, before anything is written: segments may not be empty,
//! `.` or `..`, nor contain `/`, `\`, NUL or control characters, nor be longer than 255 bytes. A prefix
//! is a `/`-separated list of such segments (`/` alone is the root), at most 64 of them and at
//! most 1024 bytes in all, so every stored path fits in a directory tree on any common file
//! system; a target given with `--to` is relative (`a/b.pth` files under the prefix) and never
//! absolute. The checks make it impossible for any stored name to point outside a directory an
//! exporter writes into.

use crate::error::{Error, Result};

/// Longest name or prefix segment (bytes).
pub const MAX_SEGMENT: usize = 255;
/// Longest normalized prefix, in bytes (`/a/b` is 4).
pub const MAX_PREFIX: usize = 1024;
/// Most segments in a prefix.
pub const MAX_DEPTH: usize = 64;

/// Where a file lives: one path of one experiment. Every field is validated.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    /// Namespace (`local` by default).
    pub namespace: String,
    /// Project.
    pub project: String,
    /// Experiment.
    pub experiment: String,
    /// `/` for the root, else `/a/b` (no trailing slash).
    pub path: String,
    /// The file name (one segment).
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
    /// Namespace (`local` by default).
    pub namespace: String,
    /// Project.
    pub project: String,
    /// Experiment.
    pub experiment: String,
}

impl ExperimentKey {
    /// An experiment key, each name checked (`validate::segment`).
    pub fn new(namespace: &str, project: &str, experiment: &str) -> Result<Self> {
        Ok(ExperimentKey {
            namespace: segment("namespace", namespace)?.to_string(),
            project: segment("project", project)?.to_string(),
            experiment: segment("experiment", experiment)?.to_string(),
        })
    }

    /// The key of a file of this experiment: `path` a normalized prefix (`validate::prefix`),
    /// `filename` one segment.
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

/// Check a metric name: one or more segments joined by `/` (`train/loss`, as the ml-dash client
/// names metrics), at most 16 of them and 1024 bytes.
pub fn metric_name(s: &str) -> Result<&str> {
    if s.len() > MAX_PREFIX || s.split('/').count() > 16 {
        return Err(Error::invalid(
            "metric name",
            s,
            "has more than 16 `/`-separated parts or 1024 bytes",
        ));
    }
    for seg in s.split('/') {
        segment("metric name", seg).map_err(|_| {
            Error::invalid(
                "metric name",
                s,
                "each `/`-separated part must be a \
                 non-empty name without `\\`, control characters or `.`/`..`",
            )
        })?;
    }
    Ok(s)
}

/// Normalize a prefix: `""`, `"/"` → `"/"`; `"models/"`, `"/models"` → `"/models"`.
/// Refuses empty segments (`/a//b`), `.`/`..`, control characters, more than `MAX_DEPTH`
/// segments and more than `MAX_PREFIX` bytes.
pub fn prefix(s: &str) -> Result<String> {
    let trimmed = s.strip_prefix('/').unwrap_or(s);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        if s.len() > 1 {
            return Err(Error::invalid("prefix", s, "has an empty segment"));
        }
        return Ok("/".to_string());
    }
    let depth = trimmed.split('/').count();
    if depth > MAX_DEPTH {
        return Err(Error::invalid(
            "prefix",
            abbreviate(s),
            format!("has {depth} segments; at most {MAX_DEPTH} are allowed"),
        ));
    }
    if trimmed.len() + 1 > MAX_PREFIX {
        return Err(Error::invalid(
            "prefix",
            abbreviate(s),
            format!(
                "is {} bytes long; at most {MAX_PREFIX} are allowed",
                trimmed.len() + 1
            ),
        ));
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

/// The start of a long value, for a one-line message.
fn abbreviate(s: &str) -> String {
    const KEEP: usize = 60;
    if s.len() <= KEEP {
        return s.to_string();
    }
    let mut end = KEEP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
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
    fn prefixes_have_a_depth_and_length_limit() {
        let deep = |n: usize| format!("/{}", vec!["d"; n].join("/"));
        assert_eq!(prefix(&deep(64)).unwrap(), deep(64));
        assert_eq!(prefix(&format!("{}/", deep(64))).unwrap(), deep(64));
        let err = prefix(&deep(65)).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }));
        assert!(err.to_string().contains("65 segments"), "{err}");
        assert!(err.to_string().contains("at most 64"), "{err}");

        // Exactly `n` bytes once normalized, in segments of at most 200.
        let long = |n: usize| {
            let mut p = String::new();
            while p.len() < n {
                p.push('/');
                p.push_str(&"x".repeat((n - p.len()).min(200)));
            }
            p
        };
        assert_eq!(long(1024).len(), 1024);
        assert_eq!(prefix(&long(1024)).unwrap(), long(1024));
        let without_slash = long(1024)[1..].to_string();
        assert_eq!(
            prefix(&without_slash).unwrap(),
            long(1024),
            "normalized length"
        );
        let err = prefix(&long(1025)).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("1025 bytes") && msg.contains("at most 1024"),
            "{msg}"
        );
        assert!(msg.len() < 200, "the value is shortened: {msg}");
        // Multi-byte characters are cut on a character boundary.
        let wide = format!("/{}", vec!["é".repeat(100); 6].join("/"));
        assert!(prefix(&wide).unwrap_err().to_string().contains("..."));

        // A target's folders count too.
        let to = format!("{}/x.pth", ["t"; 5].join("/"));
        assert!(target(&deep(59), &to).is_ok());
        assert!(target(&deep(60), &to).is_err());
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
