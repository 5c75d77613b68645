//! The files of a directory to upload as one tree (a `save_pretrained` checkpoint, one shard
//! per rank).

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The regular files under `dir` (symbolic links to files followed), as (path relative to
/// `dir` with `/`, path), sorted. A symbolic link to a directory, a FIFO, socket or device, or
/// a name that is not UTF-8 is an error (nothing is uploaded), so that what is stored is
/// exactly the tree that was asked for.
pub fn walk_tree(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let refuse = |p: &Path, why: &str| Error::invalid("source", p.display().to_string(), why);
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((rel, d)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .at(&d)?
            .collect::<std::io::Result<_>>()
            .at(&d)?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            let path = e.path();
            let name = e
                .file_name()
                .into_string()
                .map_err(|_| refuse(&path, "the name is not UTF-8"))?;
            let sub = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let lm = std::fs::symlink_metadata(&path).at(&path)?;
            let m = std::fs::metadata(&path).at(&path)?;
            if m.is_dir() {
                if lm.file_type().is_symlink() {
                    return Err(refuse(
                        &path,
                        "is a symbolic link to a directory: not followed (upload its target)",
                    ));
                }
                stack.push((sub, path));
            } else if m.is_file() {
                out.push((sub, path));
            } else {
                return Err(refuse(
                    &path,
                    "is not a regular file (FIFO, socket or device)",
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}
