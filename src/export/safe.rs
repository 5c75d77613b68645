//! Paths under an export or import directory that cannot escape it, and the writes export does.
//!
//! Every path is built from segments checked by `path::segment` (no `..`, `.`, `/`, `\`, NUL,
//! control characters), joined under the root, and checked again to lie under it. Directories
//! on the way are created one at a time and a symbolic link found on the way is refused, never
//! followed. Files are written under a temporary name and renamed into place (`AtomicFile`).
//!
//! The ledger records what export wrote (relative path → size and SHA-256): export overwrites
//! or removes a file only when the ledger says it wrote it, so files it did not write are never
//! touched.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::Digest as _;

use crate::digest::{Digest, Sha256};
use crate::durable::AtomicFile;
use crate::error::{Error, IoContext, Result};

/// A directory that exported or imported paths must stay under.
#[derive(Clone, Debug)]
pub(crate) struct Root {
    path: PathBuf,
}

impl Root {
    /// Export side: create `dir` if needed. `dir` itself may be a symbolic link (the user named
    /// it); nothing inside it may be.
    pub fn create(dir: &Path) -> Result<Root> {
        fs::create_dir_all(dir).at(dir)?;
        Root::existing(dir)
    }

    /// Import side: `dir` must exist and be a directory.
    pub fn existing(dir: &Path) -> Result<Root> {
        let m = fs::metadata(dir).at(dir)?;
        if !m.is_dir() {
            return Err(Error::invalid(
                "directory",
                dir.display().to_string(),
                "is not a directory",
            ));
        }
        Ok(Root {
            path: dir.to_path_buf(),
        })
    }

    /// `root/segs...` after checking every segment; no file system access.
    pub fn join(&self, segs: &[String]) -> Result<PathBuf> {
        let mut p = self.path.clone();
        for s in segs {
            crate::path::segment("path segment", s)?;
            p.push(s);
        }
        // Belt and braces: the checked segments cannot climb out, and we say so.
        let rest = p.strip_prefix(&self.path).map_err(|_| escape(&p))?;
        if !rest.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(escape(&p));
        }
        Ok(p)
    }

    /// Create `root/segs...` directory by directory, refusing symbolic links and non-directories.
    pub fn ensure_dir(&self, segs: &[String]) -> Result<PathBuf> {
        let full = self.join(segs)?;
        let mut p = self.path.clone();
        for s in segs {
            p.push(s);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => return Err(symlink(&p)),
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(not_dir(&p)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&p) {
                    Ok(()) => {}
                    // Another worker made it meanwhile: check what it is.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let m = fs::symlink_metadata(&p).at(&p)?;
                        if !m.is_dir() {
                            return Err(not_dir(&p));
                        }
                    }
                    Err(e) => return Err(Error::io(&p, e)),
                },
                Err(e) => return Err(Error::io(&p, e)),
            }
        }
        Ok(full)
    }

    /// Is `root/segs...` an existing directory reached without symbolic links?
    pub fn is_real_dir(&self, segs: &[String]) -> Result<bool> {
        self.walk_checked(segs, true)
    }

    /// Is `root/segs...` an existing regular file reached without symbolic links?
    pub fn is_real_file(&self, segs: &[String]) -> Result<bool> {
        self.walk_checked(segs, false)
    }

    fn walk_checked(&self, segs: &[String], want_dir: bool) -> Result<bool> {
        self.join(segs)?;
        let mut p = self.path.clone();
        for (i, s) in segs.iter().enumerate() {
            p.push(s);
            let m = match fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(Error::io(&p, e)),
            };
            if m.file_type().is_symlink() {
                return Err(symlink(&p));
            }
            let last = i + 1 == segs.len();
            if !last && !m.is_dir() {
                return Ok(false);
            }
            if last {
                return Ok(if want_dir { m.is_dir() } else { m.is_file() });
            }
        }
        Ok(want_dir)
    }
}

fn escape(p: &Path) -> Error {
    Error::invalid(
        "path",
        p.display().to_string(),
        "would lie outside the target directory",
    )
}

fn symlink(p: &Path) -> Error {
    Error::invalid(
        "path",
        p.display().to_string(),
        "is a symbolic link; refusing to follow it",
    )
}

fn not_dir(p: &Path) -> Error {
    Error::invalid(
        "path",
        p.display().to_string(),
        "exists and is not a directory",
    )
}

/// Size and SHA-256 of a file export wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub size: u64,
    pub sha256: Sha256,
}

impl Entry {
    pub fn of(bytes: &[u8]) -> Entry {
        Entry {
            size: bytes.len() as u64,
            sha256: Sha256(Digest(sha2::Sha256::digest(bytes).into())),
        }
    }
}

/// What export wrote in one experiment directory: path relative to it (`/`-separated) → entry.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ledger(pub BTreeMap<String, Entry>);

/// SHA-256 and length of a file, streamed (1 MiB at a time).
pub(crate) fn hash_file(path: &Path) -> Result<Entry> {
    let mut f = File::open(path).at(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).at(path)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok(Entry {
        size: n,
        sha256: Sha256(Digest(h.finalize().into())),
    })
}

/// What to do with one destination.
#[derive(Debug)]
pub(crate) enum Check {
    /// Already holds exactly these bytes.
    Same,
    /// Missing, or holds bytes export wrote earlier: (over)write it.
    Write,
    /// Something export did not write (or a link, or a directory): left alone.
    Refused(String),
}

/// Decide about `dest`, which should hold `want`. `ours`: the ledger's entry for it.
pub(crate) fn check_dest(dest: &Path, want: Entry, ours: Option<Entry>) -> Result<Check> {
    let m = match fs::symlink_metadata(dest) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Check::Write),
        Err(e) => return Err(Error::io(dest, e)),
    };
    if m.file_type().is_symlink() {
        return Ok(Check::Refused(format!(
            "{} is a symbolic link; left alone",
            dest.display()
        )));
    }
    if !m.is_file() {
        return Ok(Check::Refused(format!(
            "{} exists and is not a regular file; left alone",
            dest.display()
        )));
    }
    let sizes_match = |e: &Entry| e.size == m.len();
    if !sizes_match(&want) && !ours.as_ref().is_some_and(sizes_match) {
        return Ok(foreign(dest));
    }
    let now = hash_file(dest)?;
    if now == want {
        Ok(Check::Same)
    } else if ours == Some(now) {
        Ok(Check::Write)
    } else {
        Ok(foreign(dest))
    }
}

fn foreign(dest: &Path) -> Check {
    Check::Refused(format!(
        "{} holds other bytes that export did not write; left alone",
        dest.display()
    ))
}

/// Write a small document if it differs. `owned`: export wrote this path before, so it may
/// replace it even if someone changed it since (a client adding a key to experiment.json).
pub(crate) fn write_doc(dest: &Path, bytes: &[u8], owned: bool) -> Result<Check> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.file_type().is_symlink() || !m.is_file() => {
            return Ok(Check::Refused(format!(
                "{} is a symbolic link or not a regular file; left alone",
                dest.display()
            )));
        }
        Ok(m) => {
            if m.len() == bytes.len() as u64 && fs::read(dest).at(dest)? == bytes {
                return Ok(Check::Same);
            }
            if !owned {
                return Ok(foreign(dest));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(dest, e)),
    }
    let mut f = AtomicFile::create(dest)?;
    f.write_all(bytes).at(dest)?;
    f.commit()?;
    Ok(Check::Write)
}

/// Remove `path` if it still holds exactly what the ledger says export wrote there; then
/// remove directories left empty, up to (not including) `stop`. Returns whether it removed it.
pub(crate) fn remove_ours(path: &Path, entry: Entry, stop: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() && m.len() == entry.size => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(path, e)),
    }
    if hash_file(path)? != entry {
        return Ok(false);
    }
    fs::remove_file(path).at(path)?;
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == stop || !d.starts_with(stop) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(true)
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<'a, W: Write> {
    pub inner: &'a mut W,
    pub hasher: sha2::Sha256,
    pub written: u64,
    pub progress: Option<&'a AtomicU64>,
}

impl<'a, W: Write> HashingWriter<'a, W> {
    pub fn new(inner: &'a mut W, progress: Option<&'a AtomicU64>) -> Self {
        HashingWriter {
            inner,
            hasher: sha2::Sha256::new(),
            written: 0,
            progress,
        }
    }

    pub fn finish(self) -> Entry {
        Entry {
            size: self.written,
            sha256: Sha256(Digest(self.hasher.finalize().into())),
        }
    }
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        if let Some(p) = self.progress {
            p.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `a/b/c` → `["a", "b", "c"]`; `None` if any segment is invalid.
pub(crate) fn split_rel(rel: &str) -> Option<Vec<String>> {
    let segs: Vec<String> = rel.split('/').map(str::to_string).collect();
    segs.iter()
        .all(|s| crate::path::segment("path segment", s).is_ok())
        .then_some(segs)
}

/// Segments of a normalized prefix: `/` → `[]`, `/a/b` → `["a", "b"]`.
pub(crate) fn prefix_segments(prefix: &str) -> Vec<String> {
    prefix
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_stay_under_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::create(d.path()).unwrap();
        for bad in ["..", ".", "", "a/b", "a\\b", "x\0y"] {
            assert!(root.join(&[bad.to_string()]).is_err(), "{bad:?} accepted");
        }
        let ok = root.join(&["a".into(), "b..c".into()]).unwrap();
        assert!(ok.starts_with(d.path()));
    }

    #[test]
    fn symlinked_directories_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        let root = Root::create(d.path()).unwrap();
        let err = root.ensure_dir(&["link".into(), "sub".into()]).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!outside.path().join("sub").exists());
        assert!(root.is_real_dir(&["link".into()]).is_err());
    }

    #[test]
    fn check_dest_respects_the_ledger() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let want = Entry::of(b"new");
        assert!(matches!(check_dest(&p, want, None).unwrap(), Check::Write));
        fs::write(&p, b"new").unwrap();
        assert!(matches!(check_dest(&p, want, None).unwrap(), Check::Same));
        fs::write(&p, b"old").unwrap();
        assert!(matches!(
            check_dest(&p, want, None).unwrap(),
            Check::Refused(_)
        ));
        let old = Entry::of(b"old");
        assert!(matches!(
            check_dest(&p, want, Some(old)).unwrap(),
            Check::Write
        ));
        assert!(!remove_ours(&p, want, d.path()).unwrap());
        assert!(remove_ours(&p, old, d.path()).unwrap());
        assert!(!p.exists());
    }
}
