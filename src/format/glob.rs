//! File globs, one meaning everywhere (library, CLI, Python): `*` and `?` stay inside one path
//! segment, `**` crosses segments, `[...]` is a character class. A pattern with a `/` matches
//! a file's full path (`/a/b/name`; a leading `/` is implied), one without matches its name.

use crate::error::{Error, Result};
use crate::format::record::FileRecord;

/// A compiled file glob, with one meaning everywhere (library, CLI, Python): `*` and `?` stay
/// inside one path segment, `**` crosses segments, `[...]` is a character class. A pattern
/// with a `/` matches a file's full path (`/a/b/name`; a leading `/` is implied), one without
/// matches its name.
///
/// ```
/// let g = ml_dash::Glob::new("/models/**/*.pth")?;
/// assert!(g.matches_path("/models/run-1/best.pth"));
/// assert!(!ml_dash::Glob::new("*.pth")?.matches_path("/models/run-1/best.pt"));
/// # Ok::<(), ml_dash::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Glob {
    pattern: String,
    matcher: globset::GlobMatcher,
    full_path: bool,
}

impl Glob {
    /// Compile `pattern`; an invalid one (`a[b`) is `Error::InvalidInput`.
    pub fn new(pattern: &str) -> Result<Glob> {
        let full_path = pattern.contains('/');
        let anchored = if full_path && !pattern.starts_with('/') {
            format!("/{pattern}")
        } else {
            pattern.to_string()
        };
        let matcher = globset::GlobBuilder::new(&anchored)
            .literal_separator(true)
            .build()
            .map_err(|e| Error::invalid("glob", pattern, e.kind().to_string()))?
            .compile_matcher();
        Ok(Glob {
            pattern: pattern.to_string(),
            matcher,
            full_path,
        })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Does `full_path` (`/a/b/name`) match?
    pub fn matches_path(&self, full_path: &str) -> bool {
        if self.full_path {
            self.matcher.is_match(full_path)
        } else {
            let name = full_path.rsplit('/').next().unwrap_or(full_path);
            self.matcher.is_match(name)
        }
    }

    /// Does the file of `r` match?
    pub fn matches(&self, r: &FileRecord) -> bool {
        self.matches_path(&r.full_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table the CLI and Python tests share.
    #[test]
    fn the_shared_glob_table() {
        let t: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/glob_table.json")).unwrap();
        let paths: Vec<&str> = t["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        for case in t["cases"].as_array().unwrap() {
            let g = Glob::new(case["glob"].as_str().unwrap()).unwrap();
            let got: Vec<&str> = paths
                .iter()
                .copied()
                .filter(|p| g.matches_path(p))
                .collect();
            let want: Vec<&str> = case["matches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            assert_eq!(got, want, "glob {:?}", g.as_str());
        }
        for bad in t["invalid"].as_array().unwrap() {
            assert!(Glob::new(bad.as_str().unwrap()).is_err(), "{bad}");
        }
    }
}
