//! The bad-input matrix rows not covered elsewhere: non-UTF-8 file names, device files,
//! symlinks (followed; to a directory or dangling: refused), a source that grows or shrinks
//! while it is read, a read-only store and a full disk (real small tmpfs mounts, as root). Each:
//! a clear error, nothing half-written, and the store still verifies.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use ml_dash::{Error, Store};

use crate::util::*;

fn assert_untouched(root: &Path, live_before: usize) {
    let store = Store::open(root).unwrap();
    assert_eq!(list_live(&store).len(), live_before, "the store changed");
    let rep = store.verify().unwrap();
    assert!(rep.ok, "{:?} {:?}", rep.damaged_files, rep.problems);
}

#[test]
fn non_utf8_file_names_need_a_target_name() {
    let dir = tmp();
    let root = dir.path().join("store");
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.bin");
    let src = dir.path().join(name);
    std::fs::write(&src, b"bytes").unwrap();
    let exp = experiment(&root, "p", "e");
    let err = exp.file(&src).save().unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(err.to_string().contains("UTF-8"), "{err}");
    assert_untouched(&root, 0);
    let rec = exp.file(&src).to("cafe.bin").save().unwrap();
    assert_eq!(rec.filename, "cafe.bin");

    // The CLI says the same and takes --to.
    let arg = src.to_str().map(str::to_string);
    assert!(arg.is_none(), "the name must not be valid UTF-8");
    let out = Command::new(bin())
        .arg("--root")
        .arg(&root)
        .arg("upload")
        .arg(&src)
        .args(["--project", "p", "--experiment", "e"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("UTF-8") && stderr.lines().count() == 1,
        "{stderr}"
    );
    let out = Command::new(bin())
        .arg("--root")
        .arg(&root)
        .arg("upload")
        .arg(&src)
        .args(["--project", "p", "--experiment", "e", "--to", "other.bin"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn device_files_are_refused() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    exp.file(write_file(dir.path(), "keep.bin", b"keep"))
        .save()
        .unwrap();
    for dev in ["/dev/null", "/dev/zero"] {
        let err = exp.file(dev).save().unwrap_err();
        assert!(
            err.to_string().contains("not a regular file"),
            "{dev}: {err}"
        );
        let r = run(
            &root,
            &["upload", dev, "--project", "p", "--experiment", "e"],
        );
        refused(&r, dev);
    }
    assert_untouched(&root, 1);
}

#[test]
fn symlinks_are_followed_but_not_into_directories() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let target = write_file(dir.path(), "real.bin", &random_bytes(5, 100_000));
    let link = dir.path().join("link.bin");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let rec = exp.file(&link).save().unwrap();
    assert_eq!(rec.filename, "link.bin", "stored under the name given");
    assert_eq!(rec.size_bytes, 100_000);
    same_bytes(
        read_via_reader(&exp, "/link.bin", None),
        &random_bytes(5, 100_000),
        "followed",
    );

    let dlink = dir.path().join("dirlink");
    std::os::unix::fs::symlink(dir.path(), &dlink).unwrap();
    let err = exp.file(&dlink).save().unwrap_err();
    assert!(err.to_string().contains("directory"), "{err}");
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("missing"), &dangling).unwrap();
    let err = exp.file(&dangling).save().unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_untouched(&root, 1);
}

/// Upload `src` while `mutate` runs in a loop on another thread; the upload must fail with
/// `SourceChanged` and store nothing.
fn upload_while(dir: &Path, name: &str, mutate: impl Fn(&Path) + Send + Sync) {
    let root = dir.join(format!("store-{name}"));
    let src = write_file(dir, name, &random_bytes(9, 24 << 20));
    let exp = experiment(&root, "p", "e");
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        let (src2, stop2, mutate) = (&src, &stop, &mutate);
        let t = s.spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                mutate(src2);
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(5));
        let r = exp.file(&src).save();
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        r
    });
    match result {
        Err(Error::SourceChanged { .. }) => {}
        other => panic!("{name}: expected SourceChanged, got {other:?}"),
    }
    assert_untouched(&root, 0);
}

#[test]
fn a_growing_source_is_refused() {
    let dir = tmp();
    upload_while(dir.path(), "growing.bin", |p| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
    });
}

#[test]
fn a_shrinking_source_is_refused() {
    let dir = tmp();
    upload_while(dir.path(), "shrinking.bin", |p| {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(4096)).unwrap();
    });
}

/// A tmpfs of `size` mounted at `at` for the test's lifetime (needs root, as CI has).
pub(crate) struct Mount(std::path::PathBuf);

impl Mount {
    pub(crate) fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mounting a tmpfs failed: these tests need root (CI runs as root)"
        );
        Mount(at.to_path_buf())
    }

    /// Remount with `opts`. A read-only remount fails (EBUSY) while a file on it is open for
    /// writing, and sled's background thread closes the index files a moment after the store
    /// drops them: retry for a few seconds.
    fn remount(&self, opts: &str) {
        for _ in 0..100 {
            let st = Command::new("mount")
                .args(["-o", &format!("remount,{opts}")])
                .arg(&self.0)
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            if st.success() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("remount {opts} of {} kept failing", self.0.display());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_loses_nothing() {
    let dir = tmp();
    let mnt = Mount::tmpfs(&dir.path().join("mnt"), "12m");
    let root = mnt.0.join("store");
    let exp = experiment(&root, "p", "e");
    let small = random_bytes(1, 1 << 20);
    exp.file(write_file(dir.path(), "small.bin", &small))
        .save()
        .unwrap();
    let big = write_file(dir.path(), "big.bin", &random_bytes(2, 24 << 20));
    let err = exp.file(&big).save().unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    let r = run(
        &root,
        &[
            "upload",
            big.to_str().unwrap(),
            "--project",
            "p",
            "--experiment",
            "e",
        ],
    );
    refused(&r, "upload to a full disk");

    // More room: everything acknowledged is there, the failed upload left nothing visible,
    // gc reclaims its leftovers and uploads work again.
    mnt.remount("size=96m");
    assert_untouched(&root, 1);
    let exp = experiment(&root, "p", "e");
    same_bytes(
        read_via_reader(&exp, "/small.bin", None),
        &small,
        "small.bin",
    );
    exp.store()
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    exp.file(&big).save().unwrap();
    assert_untouched(&root, 2);
}

#[test]
fn a_read_only_store_is_a_clear_error() {
    let dir = tmp();
    let mnt = Mount::tmpfs(&dir.path().join("mnt"), "32m");
    let root = mnt.0.join("store");
    let exp = experiment(&root, "p", "e");
    let data = random_bytes(3, 300_000);
    exp.file(write_file(dir.path(), "a.bin", &data))
        .save()
        .unwrap();
    mnt.remount("ro");
    let err = exp
        .file(write_file(dir.path(), "b.bin", b"b"))
        .save()
        .unwrap_err();
    assert!(err.to_string().contains("Read-only"), "{err}");
    let r = run(
        &root,
        &[
            "upload",
            dir.path().join("b.bin").to_str().unwrap(),
            "--project",
            "p",
            "--experiment",
            "e",
        ],
    );
    refused(&r, "upload to a read-only store");
    mnt.remount("rw");
    assert_untouched(&root, 1);
    same_bytes(read_via_reader(&exp, "/a.bin", None), &data, "a.bin");
}
