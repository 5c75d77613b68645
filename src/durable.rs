//! The one way this crate makes anything durable.
//!
//! `write_atomic` writes a whole small file (manifest, event, format file): temp file in the same
//! directory, fsync, rename over the final name, fsync the directory. `AtomicFile` does the same
//! for a streamed file (a download). No other call site renames into place or fsyncs a directory.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fault::{FaultKind, Faults};
use crate::id::Id;

/// fsync a directory so that a rename or create inside it survives a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
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
    let mut f = AtomicFile::create(dest)?;
    f.faults = faults.clone();
    faults.check(FaultKind::Write, &f.temp)?;
    f.write_all(bytes).at(dest)?;
    f.commit()
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
    pub fn create(dest: &Path) -> Result<AtomicFile> {
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
            faults: Faults::none(),
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
        self.faults.check(FaultKind::Write, &self.dest)?;
        fs::rename(&self.temp, &self.dest).at(&self.dest)?;
        if !durable {
            return Ok(());
        }
        let dir = match self.dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        self.faults.check(FaultKind::Sync, &dir)?;
        fsync_dir(&dir)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        fs::write(&dest, b"old").unwrap();
        {
            let mut f = AtomicFile::create(&dest).unwrap();
            f.write_all(b"partial").unwrap();
        }
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomic(&dest, b"new", &Faults::none()).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
