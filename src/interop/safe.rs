//! Paths under an export or import directory that cannot escape it, and the writes export does.
//!
//! Every path is built from segments checked by `names::segment` (no `..`, `.`, `/`, `\`, NUL,
//! control characters). Import checks the paths it reads (`Root`): a symbolic link found on the
//! way is refused, never followed.
//!
//! Export works on open directories (`Dir`), never on paths: the directory the user named is
//! opened once (it may itself be a symbolic link), and every directory below it is opened
//! relative to its parent's handle, one segment at a time, with `O_NOFOLLOW` (and created there
//! first if missing). Files are checked (`statat` without following links), read (`O_NOFOLLOW`),
//! written (a temporary file made with `O_CREAT | O_EXCL | O_NOFOLLOW`, fsynced, renamed within
//! the same directory handle, the directory fsynced: `durable::AtomicFileAt`) and removed
//! (`unlinkat`) relative to the handle of the directory that holds them. A folder inside the
//! export directory replaced by a symbolic link, before export runs or while it runs, is refused
//! and reported: export cannot be led to read, write or remove anything outside.
//!
//! The ledger records what export wrote (relative path → size and SHA-256): export overwrites
//! or removes a file only when the ledger says it wrote it, so files it did not write are never
//! touched. Anyone who can write in the export directory can edit the ledger, so it is only ever
//! used for files reached, as above, from the experiment directory it was read from.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use sha2::Digest as _;

use crate::error::{Error, IoContext, Result};
use crate::format::digest::{Digest, Sha256};
use crate::store::durable::{AtomicFileAt, Replace};

/// A directory that imported paths must stay under.
#[derive(Clone, Debug)]
pub(crate) struct Root {
    path: PathBuf,
}

impl Root {
    /// `dir` must exist and be a directory.
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
            crate::format::names::segment("path segment", s)?;
            p.push(s);
        }
        // Belt and braces: the checked segments cannot climb out, and we say so.
        let rest = p.strip_prefix(&self.path).map_err(|_| escape(&p))?;
        if !rest.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(escape(&p));
        }
        Ok(p)
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

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);
/// Reading a file export may have written: never through a link, never blocking on a FIFO.
const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// An open directory inside (or the root of) an export. Everything below it is reached through
/// this handle; `path` is only for messages.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// The directory export writes into, created if missing. It may itself be a symbolic link
    /// (the user named it); nothing inside it is ever followed.
    pub fn target(path: &Path) -> Result<Dir> {
        fs::create_dir_all(path).at(path)?;
        let fd = rustix::fs::openat(rustix::fs::CWD, path, DIR_FLAGS, Mode::empty())
            .map_err(|e| Error::io(path, e.into()))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    fn io(&self, name: &str, e: Errno) -> Error {
        Error::io(self.path.join(name), e.into())
    }

    /// The directory `name` in this one, without following a symbolic link. A link is an error.
    fn lookup(&self, name: &str) -> Result<Lookup> {
        crate::format::names::segment("path segment", name)?;
        match rustix::fs::openat(&self.fd, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(fd) => Ok(Lookup::Dir(Dir {
                fd,
                path: self.path.join(name),
            })),
            Err(Errno::NOENT) => Ok(Lookup::Missing),
            // Linux says ENOTDIR for a link too: look at what is there.
            Err(Errno::LOOP | Errno::NOTDIR) => match self.stat(name)? {
                None => Ok(Lookup::Missing),
                Some(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Symlink => Err(symlink(&self.path.join(name))),
                    // Not a directory a moment ago: someone is swapping it.
                    FileType::Directory => Err(Error::invalid(
                        "path",
                        self.path.join(name).display().to_string(),
                        "was replaced while export ran (a symbolic link or not a directory \
                         at times); refusing to follow it",
                    )),
                    _ => Ok(Lookup::NotDir),
                },
            },
            Err(e) => Err(self.io(name, e)),
        }
    }

    /// The directory `name` in this one, without following a symbolic link; `None` if there is
    /// nothing by that name. A link or anything else that is not a directory is an error.
    pub fn open_dir(&self, name: &str) -> Result<Option<Dir>> {
        match self.lookup(name)? {
            Lookup::Dir(d) => Ok(Some(d)),
            Lookup::Missing => Ok(None),
            Lookup::NotDir => Err(not_dir(&self.path.join(name))),
        }
    }

    /// Is `segs` below this directory an existing directory? A symbolic link on the way is an
    /// error.
    pub fn is_real_dir(&self, segs: &[String]) -> Result<bool> {
        let mut cur = self.try_clone()?;
        for s in segs {
            match cur.lookup(s)? {
                Lookup::Dir(d) => cur = d,
                Lookup::Missing | Lookup::NotDir => return Ok(false),
            }
        }
        Ok(true)
    }

    /// `segs` below this directory, each opened as by `open_dir`; `None` if one is missing.
    pub fn open_path(&self, segs: &[String]) -> Result<Option<Dir>> {
        let mut cur = self.try_clone()?;
        for s in segs {
            match cur.open_dir(s)? {
                Some(d) => cur = d,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// `segs` below this directory, each created if missing and opened as by `open_dir`.
    pub fn ensure_path(&self, segs: &[String]) -> Result<Dir> {
        let mut cur = self.try_clone()?;
        for s in segs {
            cur = match cur.open_dir(s)? {
                Some(d) => d,
                None => {
                    match rustix::fs::mkdirat(&cur.fd, s.as_str(), Mode::from_raw_mode(0o777)) {
                        // Made by another worker meanwhile: open_dir checks what it is.
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(cur.io(s, e)),
                    }
                    cur.open_dir(s)?.ok_or_else(|| cur.io(s, Errno::NOENT))?
                }
            };
        }
        Ok(cur)
    }

    fn try_clone(&self) -> Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone().at(&self.path)?,
            path: self.path.clone(),
        })
    }

    /// What `name` is, without following a link; `None` if missing.
    fn stat(&self, name: &str) -> Result<Option<Stat>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.io(name, e)),
        }
    }

    /// Open `name`, which `st` says is a regular file, for reading; `None` if it is no longer
    /// that file.
    fn open_same(&self, name: &str, st: &Stat) -> Result<Option<File>> {
        let fd = match rustix::fs::openat(&self.fd, name, READ_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::LOOP) => return Ok(None),
            Err(e) => return Err(self.io(name, e)),
        };
        let now = rustix::fs::fstat(&fd).map_err(|e| self.io(name, e))?;
        Ok((stamp(&now) == stamp(st)).then(|| File::from(fd)))
    }

    /// The bytes of the regular file `name`; `None` if missing, a link or not a regular file.
    pub fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(st) = self.stat(name)? else {
            return Ok(None);
        };
        if !is_file(&st) {
            return Ok(None);
        }
        let Some(mut f) = self.open_same(name, &st)? else {
            return Ok(None);
        };
        let mut v = Vec::new();
        f.read_to_end(&mut v).at(self.path.join(name))?;
        Ok(Some(v))
    }

    /// Is `name` still the file `st` described (same inode, size, modification and change
    /// times)?
    fn unchanged(&self, name: &str, st: &Stat) -> Result<()> {
        match self.stat(name)? {
            Some(now) if stamp(&now) == stamp(st) => Ok(()),
            _ => Err(Error::invalid(
                "path",
                self.path.join(name).display().to_string(),
                "changed while export ran; left alone",
            )),
        }
    }

    /// Write `name` atomically with what `fill` writes (returning its result): a new file
    /// unless `prior` (what a check saw there) is given and is still there unchanged.
    pub fn write<T>(
        &self,
        name: &str,
        prior: Option<&Stat>,
        fill: impl FnOnce(&mut AtomicFileAt<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut f = AtomicFileAt::create(self.fd.as_fd(), &self.path, name)?;
        let out = fill(&mut f)?;
        match prior {
            None => f.commit(Replace::Nothing).map_err(|e| match e {
                Error::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists => {
                    Error::invalid(
                        "path",
                        self.path.join(name).display().to_string(),
                        "appeared while export ran; left alone",
                    )
                }
                other => other,
            })?,
            Some(st) => f.commit(Replace::Checked(&|| self.unchanged(name, st)))?,
        }
        Ok(out)
    }
}

enum Lookup {
    Dir(Dir),
    Missing,
    NotDir,
}

fn is_file(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
}

/// What identifies one state of a file: a rewrite in place changes the times, a replacement
/// the inode.
#[allow(
    clippy::unnecessary_cast,
    trivial_numeric_casts,
    clippy::cast_possible_wrap,
    reason = "the field types differ between architectures; nanoseconds are below 10^9"
)]
fn stamp(st: &Stat) -> (u64, u64, i64, i64, i64, i64, i64) {
    (
        st.st_dev as u64,
        st.st_ino as u64,
        st.st_size as i64,
        st.st_mtime as i64,
        st.st_mtime_nsec as i64,
        st.st_ctime as i64,
        st.st_ctime_nsec as i64,
    )
}

/// `segs` split into the directories on the way and the name; a file path has a name.
fn split(segs: &[String]) -> (&String, &[String]) {
    segs.split_last().expect("a file path has a name")
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

/// SHA-256 and length of an open file, streamed (1 MiB at a time).
fn hash(f: &mut File, path: &Path) -> Result<Entry> {
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
    /// Missing (`None`), or holds bytes export wrote earlier (what was seen there): (over)write
    /// it, if it is still that file then.
    Write(Option<Box<Stat>>),
    /// Something export did not write (or a link, or a directory): left alone.
    Refused(String),
}

/// Decide about `exp/rel`, which should hold `want`. `ours`: the ledger's entry for it.
pub(crate) fn check_dest(
    exp: &Dir,
    rel: &[String],
    want: Entry,
    ours: Option<Entry>,
) -> Result<Check> {
    let (name, parents) = split(rel);
    let Some(dir) = exp.open_path(parents)? else {
        return Ok(Check::Write(None));
    };
    let dest = dir.path.join(name);
    let Some(st) = dir.stat(name)? else {
        return Ok(Check::Write(None));
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        return Ok(Check::Refused(format!(
            "{} is a symbolic link; left alone",
            dest.display()
        )));
    }
    if !is_file(&st) {
        return Ok(Check::Refused(format!(
            "{} exists and is not a regular file; left alone",
            dest.display()
        )));
    }
    let sizes_match = |e: &Entry| u64::try_from(st.st_size) == Ok(e.size);
    if !sizes_match(&want) && !ours.as_ref().is_some_and(sizes_match) {
        return Ok(foreign(&dest));
    }
    let Some(mut f) = dir.open_same(name, &st)? else {
        return Ok(changed(&dest));
    };
    let now = hash(&mut f, &dest)?;
    if now == want {
        Ok(Check::Same)
    } else if ours == Some(now) {
        Ok(Check::Write(Some(Box::new(st))))
    } else {
        Ok(foreign(&dest))
    }
}

fn foreign(dest: &Path) -> Check {
    Check::Refused(format!(
        "{} holds other bytes that export did not write; left alone",
        dest.display()
    ))
}

fn changed(dest: &Path) -> Check {
    Check::Refused(format!(
        "{} changed while export ran; left alone",
        dest.display()
    ))
}

/// Write the store file `exp/rel` (creating its folders) with what `fill` writes. `prior`:
/// what `check_dest` found there.
pub(crate) fn write_dest<T>(
    exp: &Dir,
    rel: &[String],
    prior: Option<&Stat>,
    fill: impl FnOnce(&mut AtomicFileAt<'_>) -> Result<T>,
) -> Result<T> {
    let (name, parents) = split(rel);
    exp.ensure_path(parents)?.write(name, prior, fill)
}

/// Write a small document `exp/rel` if it differs. `owned`: export wrote this path before, so
/// it may replace it even if someone changed it since (a client adding a key to
/// experiment.json).
pub(crate) fn write_doc(exp: &Dir, rel: &[String], bytes: &[u8], owned: bool) -> Result<Check> {
    let (name, parents) = split(rel);
    let dir = exp.ensure_path(parents)?;
    let dest = dir.path.join(name);
    let prior = dir.stat(name)?;
    if let Some(st) = &prior {
        if !is_file(st) {
            return Ok(Check::Refused(format!(
                "{} is a symbolic link or not a regular file; left alone",
                dest.display()
            )));
        }
        if u64::try_from(st.st_size) == Ok(bytes.len() as u64) {
            let Some(mut f) = dir.open_same(name, st)? else {
                return Ok(changed(&dest));
            };
            let mut now = Vec::with_capacity(bytes.len());
            f.read_to_end(&mut now).at(&dest)?;
            if now == bytes {
                return Ok(Check::Same);
            }
        }
        if !owned {
            return Ok(foreign(&dest));
        }
    }
    dir.write(name, prior.as_ref(), |f| f.write_all(bytes).at(&dest))?;
    Ok(Check::Write(None))
}

/// Remove `exp/rel` if it still holds exactly what the ledger says export wrote there; then
/// remove the folders that left empty, up to (not including) `exp`. Returns whether it removed
/// it. A symbolic link on the way is an error: nothing is followed.
pub(crate) fn remove_ours(exp: &Dir, rel: &[String], entry: Entry) -> Result<bool> {
    let (name, parents) = split(rel);
    // The folders on the way, each opened from the one before.
    let mut chain: Vec<Dir> = Vec::with_capacity(parents.len());
    for s in parents {
        match chain.last().unwrap_or(exp).open_dir(s)? {
            Some(d) => chain.push(d),
            None => return Ok(false),
        }
    }
    let dir = chain.last().unwrap_or(exp);
    let dest = dir.path.join(name);
    let Some(st) = dir.stat(name)? else {
        return Ok(false);
    };
    if !is_file(&st) || u64::try_from(st.st_size) != Ok(entry.size) {
        return Ok(false);
    }
    let Some(mut f) = dir.open_same(name, &st)? else {
        return Ok(false);
    };
    if hash(&mut f, &dest)? != entry || dir.unchanged(name, &st).is_err() {
        return Ok(false);
    }
    rustix::fs::unlinkat(&dir.fd, name.as_str(), AtFlags::empty()).map_err(|e| dir.io(name, e))?;
    // Deepest first; each folder by its name in its parent, if that name is still this folder.
    for (i, d) in chain.iter().enumerate().rev() {
        let parent = if i == 0 { exp } else { &chain[i - 1] };
        let same = match (parent.stat(&parents[i]), rustix::fs::fstat(&d.fd)) {
            (Ok(Some(a)), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
            _ => false,
        };
        if !same
            || rustix::fs::unlinkat(&parent.fd, parents[i].as_str(), AtFlags::REMOVEDIR).is_err()
        {
            break;
        }
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
        .all(|s| crate::format::names::segment("path segment", s).is_ok())
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

    fn segs(rel: &str) -> Vec<String> {
        rel.split('/').map(str::to_string).collect()
    }

    #[test]
    fn joins_stay_under_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::existing(d.path()).unwrap();
        for bad in ["..", ".", "", "a/b", "a\\b", "x\0y"] {
            assert!(root.join(&[bad.to_string()]).is_err(), "{bad:?} accepted");
        }
        let ok = root.join(&["a".into(), "b..c".into()]).unwrap();
        assert!(ok.starts_with(d.path()));
        let dir = Dir::target(d.path()).unwrap();
        for bad in ["..", ".", "", "a/b", "a\\b", "x\0y"] {
            assert!(
                dir.ensure_path(&[bad.to_string()]).is_err(),
                "{bad:?} accepted"
            );
            assert!(dir.open_dir(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn symlinked_directories_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        let dir = Dir::target(d.path()).unwrap();
        let err = dir.ensure_path(&segs("link/sub")).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!outside.path().join("sub").exists());
        assert!(dir.open_path(&segs("link")).is_err());
        assert!(
            Root::existing(d.path())
                .unwrap()
                .is_real_dir(&segs("link"))
                .is_err()
        );
        // The directory the user named may be a link.
        let named = Dir::target(&d.path().join("link")).unwrap();
        named.ensure_path(&segs("sub")).unwrap();
        assert!(outside.path().join("sub").is_dir());
    }

    #[test]
    fn check_dest_respects_the_ledger() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::target(d.path()).unwrap();
        let p = d.path().join("f");
        let f = segs("f");
        let want = Entry::of(b"new");
        assert!(matches!(
            check_dest(&dir, &f, want, None).unwrap(),
            Check::Write(None)
        ));
        fs::write(&p, b"new").unwrap();
        assert!(matches!(
            check_dest(&dir, &f, want, None).unwrap(),
            Check::Same
        ));
        fs::write(&p, b"old").unwrap();
        assert!(matches!(
            check_dest(&dir, &f, want, None).unwrap(),
            Check::Refused(_)
        ));
        let old = Entry::of(b"old");
        assert!(matches!(
            check_dest(&dir, &f, want, Some(old)).unwrap(),
            Check::Write(Some(_))
        ));
        assert!(!remove_ours(&dir, &f, want).unwrap());
        assert!(remove_ours(&dir, &f, old).unwrap());
        assert!(!p.exists());
    }

    #[test]
    fn writes_and_removals_never_pass_a_link() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dir = Dir::target(d.path()).unwrap();
        let rel = segs("a/b/f");
        let want = Entry::of(b"bytes");
        let Check::Write(prior) = check_dest(&dir, &rel, want, None).unwrap() else {
            panic!("missing file")
        };
        write_dest(&dir, &rel, prior.as_deref(), |f| {
            f.write_all(b"bytes").at("f")
        })
        .unwrap();
        assert_eq!(fs::read(d.path().join("a/b/f")).unwrap(), b"bytes");

        // The folder moved out and linked back: same name, same bytes, never touched.
        fs::rename(d.path().join("a/b"), outside.path().join("b")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("b"), d.path().join("a/b")).unwrap();
        assert!(check_dest(&dir, &rel, want, Some(want)).is_err());
        assert!(remove_ours(&dir, &rel, want).is_err());
        assert!(write_dest(&dir, &rel, None, |_| Ok(())).is_err());
        assert!(write_doc(&dir, &rel, b"doc", true).is_err());
        assert_eq!(fs::read(outside.path().join("b/f")).unwrap(), b"bytes");
        assert_eq!(fs::read_dir(outside.path().join("b")).unwrap().count(), 1);

        // A file that appeared after the check is kept; so is one changed after it.
        fs::remove_file(d.path().join("a/b")).unwrap();
        let Check::Write(prior) = check_dest(&dir, &rel, want, None).unwrap() else {
            panic!("missing file")
        };
        fs::create_dir(d.path().join("a/b")).unwrap();
        fs::write(d.path().join("a/b/f"), b"theirs").unwrap();
        let err = write_dest(&dir, &rel, prior.as_deref(), |f| {
            f.write_all(b"bytes").at("f")
        });
        assert!(err.unwrap_err().to_string().contains("appeared"));
        let theirs = Entry::of(b"theirs");
        let Check::Write(prior) = check_dest(&dir, &rel, want, Some(theirs)).unwrap() else {
            panic!("ours")
        };
        fs::write(d.path().join("a/b/f"), b"theirs!").unwrap();
        let err = write_dest(&dir, &rel, prior.as_deref(), |f| {
            f.write_all(b"bytes").at("f")
        });
        assert!(err.unwrap_err().to_string().contains("changed"));
        assert_eq!(fs::read(d.path().join("a/b/f")).unwrap(), b"theirs!");

        // Removal takes the emptied folders with it, never the experiment directory.
        fs::write(d.path().join("a/b/f"), b"bytes").unwrap();
        let exp = dir.open_path(&segs("a")).unwrap().unwrap();
        assert!(remove_ours(&exp, &segs("b/f"), want).unwrap());
        assert!(!d.path().join("a/b").exists());
        assert!(d.path().join("a").is_dir());
    }
}
