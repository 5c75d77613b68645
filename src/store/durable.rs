//! The one way this crate makes anything durable, and the one place a durable step can be made
//! to fail (every helper takes the store's `Faults`, so no call site can skip the check).
//!
//! `write_atomic` writes a whole small file (manifest, event, format file): temp file in the same
//! directory, fsync, rename over the final name, fsync the directory. `stage_all` and
//! `Staged::commit` do that in two steps for the many manifests of one commit (all temporary
//! files durable before the first rename), with one fsync per directory. `AtomicFile` does
//! the same for a streamed file (a download). `fsync_dir`, `rename` and `remove_file` are the
//! other durable steps. No other call site renames into place, removes a store file or fsyncs a
//! directory.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};
use crate::format::id::Id;
use crate::store::fault::{FaultKind, Faults};

/// fsync a directory so that a rename or create inside it survives a crash.
pub fn fsync_dir(dir: &Path, faults: &Faults) -> Result<()> {
    faults.check(FaultKind::Sync, dir)?;
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Rename `from` to `to` (the caller fsyncs the directories involved).
pub fn rename(from: &Path, to: &Path, faults: &Faults) -> Result<()> {
    faults.check(FaultKind::Write, to)?;
    fs::rename(from, to).at(to)
}

/// Remove a file of the store (the caller fsyncs its directory).
pub fn remove_file(p: &Path, faults: &Faults) -> Result<()> {
    faults.check(FaultKind::Write, p)?;
    fs::remove_file(p).at(p)
}

/// `dest` opened for writing when it exists and is neither a regular file nor a directory (a
/// character device such as `/dev/null`, a named pipe, a socket): such a destination cannot be
/// replaced by a rename, and must not be (renaming over `/dev/null` would put a regular file in
/// its place), so the bytes go straight into it. `None` for anything else, which is written
/// beside and renamed into place. A named pipe is opened once a reader has it open, waiting
/// for one as a shell redirection does, but without blocking: an interrupt
/// (`with_interrupt`) ends the wait.
pub fn special_destination(dest: &Path) -> Result<Option<File>> {
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    match fs::metadata(dest) {
        Ok(m) if !special(&m) => Ok(None),
        Ok(m) if m.file_type().is_fifo() => loop {
            match OpenOptions::new()
                .write(true)
                .custom_flags(OFlags::NONBLOCK.bits().cast_signed())
                .open(dest)
            {
                Ok(f) => {
                    // Writes block again (a reader that falls behind slows the download).
                    rustix::fs::fcntl_setfl(&f, OFlags::empty())
                        .map_err(std::io::Error::from)
                        .at(dest)?;
                    return Ok(Some(f));
                }
                Err(e) if e.raw_os_error() == Some(Errno::NXIO.raw_os_error()) => {
                    crate::interrupt::check()?;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e).at(dest),
            }
        },
        Ok(_) => OpenOptions::new().write(true).open(dest).at(dest).map(Some),
        Err(_) => Ok(None),
    }
}

fn special(m: &fs::Metadata) -> bool {
    !m.is_file() && !m.is_dir()
}

/// Does `dest` exist as something other than a regular file or a directory, which a download
/// writes in place (see `special_destination`)?
pub fn is_special_destination(dest: &Path) -> bool {
    fs::metadata(dest).is_ok_and(|m| special(&m))
}

fn temp_name(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.tmp-{}", Id::generate()))
}

/// Durably replace `dest` with `bytes`: after this returns, a crash leaves either the old
/// content or the new, never a mix, and the new content survives.
pub fn write_atomic(dest: &Path, bytes: &[u8], faults: &Faults) -> Result<()> {
    let mut f = AtomicFile::create(dest, faults)?;
    faults.check(FaultKind::Write, &f.temp)?;
    f.write_all(bytes).at(dest)?;
    f.commit()
}

/// How many temporary files `stage_all` writes and fsyncs at once: fsyncs issued together are
/// committed together by the file system's journal (one after the other, each new file costs a
/// journal commit of its own).
const PARALLEL_SYNCS: usize = 16;

/// Write many small files to temporary files beside their destinations and fsync them
/// (several at a time); nothing is under a final name yet. `file(i)` gives the destination and
/// bytes of file `i` of `count` (called from several threads, once per file). A failure removes
/// the temporary files written (a crash can leave some; they are never read).
pub fn stage_all(
    count: usize,
    file: &(dyn Fn(usize) -> (PathBuf, Vec<u8>) + Sync),
    faults: &Faults,
) -> Result<Staged> {
    let slots: Vec<std::sync::Mutex<Option<(PathBuf, PathBuf)>>> =
        (0..count).map(|_| std::sync::Mutex::new(None)).collect();
    let write_one = |i: usize| -> Result<()> {
        let (dest, bytes) = file(i);
        let temp = temp_name(&dest);
        faults.check(FaultKind::Write, &temp)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .at(&temp)?;
        *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some((temp.clone(), dest));
        f.write_all(&bytes).at(&temp)?;
        faults.check(FaultKind::Sync, &temp)?;
        f.sync_all().at(&temp)
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(None::<Error>);
    let work = || {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= count {
                return;
            }
            if let Err(e) = write_one(i) {
                next.store(count, std::sync::atomic::Ordering::Relaxed);
                failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
                return;
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..PARALLEL_SYNCS.min(count) {
            s.spawn(work);
        }
        work();
    });
    let staged = Staged {
        files: slots
            .into_iter()
            .filter_map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
            .collect(),
        renamed: 0,
        faults: faults.clone(),
    };
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e), // dropping `staged` removes the temporary files
        None => Ok(staged),
    }
}

/// Temporary files written and fsynced by `stage_all`, waiting to be renamed into place.
/// Dropped without `commit`, it removes the ones not yet renamed.
pub struct Staged {
    /// `(temp, dest)`, in the order given.
    files: Vec<(PathBuf, PathBuf)>,
    /// How many of `files` are renamed.
    renamed: usize,
    faults: Faults,
}

impl Staged {
    /// Rename every file into place, in order, then fsync each destination directory once.
    /// After it returns, all of them survive a crash; a crash or failure during the renames
    /// leaves the first few in place (the caller's commit protocol, the index's `pending`
    /// marker, settles that).
    pub fn commit(mut self) -> Result<()> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        while let Some((temp, dest)) = self.files.get(self.renamed) {
            rename(temp, dest, &self.faults)?;
            self.renamed += 1;
            let dir = match dest.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        for dir in dirs {
            fsync_dir(&dir, &self.faults)?;
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (temp, _) in &self.files[self.renamed..] {
            let _ = fs::remove_file(temp);
        }
    }
}

/// A file written under a temporary name and renamed into place by `commit`. Dropped without
/// `commit`, it removes its temp file, so the destination never holds partial bytes.
pub struct AtomicFile {
    dest: PathBuf,
    temp: PathBuf,
    out: Option<BufWriter<File>>,
    faults: Faults,
}

impl AtomicFile {
    /// Start writing `dest` under a temporary name beside it.
    pub fn create(dest: &Path, faults: &Faults) -> Result<AtomicFile> {
        let temp = temp_name(dest);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .at(&temp)?;
        Ok(AtomicFile {
            dest: dest.to_path_buf(),
            temp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            faults: faults.clone(),
        })
    }

    /// Flush, fsync, rename over the destination and fsync its directory.
    pub fn commit(self) -> Result<()> {
        self.finish(true)
    }

    /// Flush and rename into place without fsync: the destination shows the old content or the
    /// complete new content, never partial bytes, but a power loss may lose the new content.
    /// For copies the store can always make again (downloads), like `cp`.
    pub fn commit_no_sync(self) -> Result<()> {
        self.finish(false)
    }

    fn finish(mut self, durable: bool) -> Result<()> {
        let out = self.out.take().expect("commit once");
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&self.temp, e.into_error()))?;
        if durable {
            self.faults.check(FaultKind::Sync, &self.temp)?;
            file.sync_all().at(&self.temp)?;
        }
        drop(file);
        rename(&self.temp, &self.dest, &self.faults)?;
        if !durable {
            return Ok(());
        }
        let dir = match self.dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fsync_dir(&dir, &self.faults)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.as_mut().expect("not committed").write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.out.as_mut().expect("not committed").write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// What `AtomicFileAt::commit` may find at its destination when it renames the file into place.
pub enum Replace<'a> {
    /// Nothing: a file that appeared there meanwhile is kept and the commit fails.
    Nothing,
    /// Whatever is there, once `still_ok` (asked right before the rename) accepts it.
    Checked(&'a dyn Fn() -> Result<()>),
}

/// Like `AtomicFile`, for the file `name` in an open directory: the temporary file is created in
/// that directory (`O_CREAT | O_EXCL | O_NOFOLLOW`), written, fsynced, renamed within it, and
/// the directory fsynced. Nothing is looked up by path once the directory is open, so a folder
/// renamed or replaced by a symbolic link meanwhile cannot redirect the write. Dropped without
/// a successful `commit`, it removes its temporary file.
pub struct AtomicFileAt<'d> {
    dir: BorrowedFd<'d>,
    /// The directory's path, for messages only.
    dir_path: &'d Path,
    name: String,
    temp: String,
    out: Option<BufWriter<File>>,
    done: bool,
}

impl<'d> AtomicFileAt<'d> {
    pub fn create(dir: BorrowedFd<'d>, dir_path: &'d Path, name: &str) -> Result<Self> {
        // Names may be 255 bytes, the most a file system allows: shorten the temporary one.
        let mut keep = name.len().min(200);
        while !name.is_char_boundary(keep) {
            keep -= 1;
        }
        let temp = format!(".{}.tmp-{}", &name[..keep], Id::generate());
        let fd = rustix::fs::openat(
            dir,
            temp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        )
        .map_err(|e| Error::io(dir_path.join(&temp), e.into()))?;
        Ok(AtomicFileAt {
            dir,
            dir_path,
            name: name.to_string(),
            temp,
            out: Some(BufWriter::with_capacity(1 << 20, File::from(fd))),
            done: false,
        })
    }

    /// Flush, fsync, rename over the destination (as `replace` allows) and fsync the directory.
    pub fn commit(mut self, replace: Replace<'_>) -> Result<()> {
        let dest = self.dir_path.join(&self.name);
        let temp = self.dir_path.join(&self.temp);
        let out = self.out.take().expect("commit once");
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&temp, e.into_error()))?;
        file.sync_all().at(&temp)?;
        drop(file);
        let (dir, from, to) = (self.dir, self.temp.as_str(), self.name.as_str());
        let io = |e: Errno| Error::io(&dest, e.into());
        match replace {
            Replace::Nothing => {
                match rustix::fs::renameat_with(dir, from, dir, to, RenameFlags::NOREPLACE) {
                    Ok(()) => {}
                    // A file system without RENAME_NOREPLACE: a hard link refuses an existing name
                    // the same way; without hard links, look just before renaming.
                    Err(Errno::INVAL | Errno::NOSYS) => {
                        match rustix::fs::linkat(dir, from, dir, to, AtFlags::empty()) {
                            Ok(()) => {
                                let _ = rustix::fs::unlinkat(dir, from, AtFlags::empty());
                            }
                            Err(Errno::PERM | Errno::NOSYS | Errno::OPNOTSUPP) => {
                                match rustix::fs::statat(dir, to, AtFlags::SYMLINK_NOFOLLOW) {
                                    Err(Errno::NOENT) => {
                                        rustix::fs::renameat(dir, from, dir, to).map_err(io)?;
                                    }
                                    Ok(_) => return Err(io(Errno::EXIST)),
                                    Err(e) => return Err(io(e)),
                                }
                            }
                            Err(e) => return Err(io(e)),
                        }
                    }
                    Err(e) => return Err(io(e)),
                }
            }
            Replace::Checked(still_ok) => {
                still_ok()?;
                rustix::fs::renameat(dir, from, dir, to).map_err(io)?;
            }
        }
        self.done = true;
        rustix::fs::fsync(self.dir.as_fd()).map_err(|e| Error::io(self.dir_path, e.into()))
    }
}

impl Write for AtomicFileAt<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.as_mut().expect("not committed").write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.out.as_mut().expect("not committed").write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFileAt<'_> {
    fn drop(&mut self) {
        if !self.done {
            drop(self.out.take());
            let _ = rustix::fs::unlinkat(self.dir, self.temp.as_str(), AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        fs::write(&dest, b"old").unwrap();
        {
            let mut f = AtomicFile::create(&dest, &Faults::none()).unwrap();
            f.write_all(b"partial").unwrap();
        }
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomic(&dest, b"new", &Faults::none()).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn file_at_a_directory_handle() {
        let d = tempfile::tempdir().unwrap();
        let handle = File::open(d.path()).unwrap();
        let fd = handle.as_fd();
        // Dropped: nothing left.
        {
            let mut f = AtomicFileAt::create(fd, d.path(), "out").unwrap();
            f.write_all(b"partial").unwrap();
        }
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
        // Nothing there: written. Something there now: kept, and the commit fails.
        let mut f = AtomicFileAt::create(fd, d.path(), "out").unwrap();
        f.write_all(b"one").unwrap();
        f.commit(Replace::Nothing).unwrap();
        assert_eq!(fs::read(d.path().join("out")).unwrap(), b"one");
        let mut f = AtomicFileAt::create(fd, d.path(), "out").unwrap();
        f.write_all(b"two").unwrap();
        assert!(f.commit(Replace::Nothing).is_err());
        assert_eq!(fs::read(d.path().join("out")).unwrap(), b"one");
        // Replaced only when the check agrees.
        let no = || Err(Error::invalid("test", "out", "changed"));
        let mut f = AtomicFileAt::create(fd, d.path(), "out").unwrap();
        f.write_all(b"two").unwrap();
        assert!(f.commit(Replace::Checked(&no)).is_err());
        assert_eq!(fs::read(d.path().join("out")).unwrap(), b"one");
        let yes = || Ok(());
        let mut f = AtomicFileAt::create(fd, d.path(), "out").unwrap();
        f.write_all(b"two").unwrap();
        f.commit(Replace::Checked(&yes)).unwrap();
        assert_eq!(fs::read(d.path().join("out")).unwrap(), b"two");
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary files left"
        );
        // A 255-byte name still gets a temporary file.
        let long = "n".repeat(255);
        let f = AtomicFileAt::create(fd, d.path(), &long).unwrap();
        f.commit(Replace::Nothing).unwrap();
        assert!(d.path().join(&long).exists());
    }
}
