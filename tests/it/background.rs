//! Background uploads: `file(..).background()` returns at once; a bounded queue applies
//! back-pressure; close waits and reports every error no `wait` took; a file modified in place
//! while its upload reads it fails loudly (nothing stored), one replaced by a rename is stored
//! as it was when the call returned.

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ml_dash::{Error, Experiment, ListFilter};

use crate::util::*;

fn open(root: &std::path::Path, limit: u64) -> Experiment {
    Experiment::new("bg", "p")
        .local_path(root)
        .background_limit(limit)
        .open()
        .unwrap()
}

fn versions(exp: &Experiment) -> usize {
    exp.list(ListFilter {
        all_versions: true,
        ..Default::default()
    })
    .unwrap()
    .len()
}

#[test]
fn background_uploads_store_everything_and_close_waits() {
    let t = tmp();
    let exp = open(&t.path().join("store"), 1 << 30);
    let mut handles = Vec::new();
    let mut want = Vec::new();
    for i in 0..8u64 {
        let data = random_bytes(i, 4 << 20);
        let p = write_file(t.path(), &format!("shard-{i}.bin"), &data);
        handles.push(exp.file(&p).prefix("/ckpt").background().unwrap());
        want.push(sha256_hex(&data));
    }
    // Bad input is refused on the calling thread, before anything is queued.
    assert!(matches!(
        exp.file(t.path().join("missing.bin")).background(),
        Err(Error::Io { .. })
    ));
    assert!(matches!(
        exp.file(t.path()).background(),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        exp.file(t.path().join("shard-0.bin"))
            .prefix("/a/../b")
            .background(),
        Err(Error::InvalidInput { .. })
    ));
    exp.wait_background().unwrap();
    for (h, w) in handles.iter().zip(&want) {
        assert!(h.done());
        let r = h.wait().unwrap();
        assert_eq!(r.checksum.to_string(), *w);
        assert_eq!(h.record().unwrap().id, r.id);
    }
    assert_eq!(versions(&exp), 8);
    assert!(exp.store().verify().unwrap().ok);
}

#[test]
fn the_queue_is_bounded_by_bytes() {
    let t = tmp();
    let exp = open(&t.path().join("store"), 10 << 20);
    let a = write_file(t.path(), "a.bin", &random_bytes(1, 8 << 20));
    let b = write_file(t.path(), "b.bin", &random_bytes(2, 8 << 20));
    let h1 = exp.file(&a).background().unwrap();
    // 8 + 8 MiB exceed the 10 MiB cap: the second call returns only once the first is done.
    let h2 = exp.file(&b).background().unwrap();
    assert!(
        h1.done(),
        "the second upload was admitted while the first ran"
    );
    h2.wait().unwrap();
    // One file larger than the cap is admitted alone.
    let big = write_file(t.path(), "big.bin", &random_bytes(3, 12 << 20));
    exp.file(&big).background().unwrap().wait().unwrap();
    assert_eq!(versions(&exp), 3);
}

/// Overwrite bytes of `path` in place (no truncation, no rename) until `stop`.
fn scribble(path: std::path::PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let len = f.metadata().unwrap().len();
        let mut rng = XorShift::new(9);
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let at = rng.next_u64() % (len - 4096);
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&random_bytes(n, 4096)).unwrap();
            n += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        n
    })
}

#[test]
fn a_file_modified_while_its_upload_reads_it_fails_loudly() {
    let t = tmp();
    let exp = open(&t.path().join("store"), 1 << 30);
    for round in 0..3u64 {
        let p = write_file(t.path(), "ckpt.pt", &random_bytes(round, 96 << 20));
        let stop = Arc::new(AtomicBool::new(false));
        let h = exp.file(&p).prefix("/ckpt").background().unwrap();
        let w = scribble(p.clone(), Arc::clone(&stop));
        let r = h.wait();
        stop.store(true, Ordering::SeqCst);
        assert!(w.join().unwrap() > 0, "the writer raced the upload");
        match r {
            Err(Error::SourceChanged { reason, .. }) => {
                assert!(reason.contains("modified in place"), "{reason}");
            }
            other => panic!("round {round}: expected SourceChanged, got {other:?}"),
        }
        // The error was reported by wait: close has nothing more to say.
        exp.wait_background().unwrap();
    }
    assert_eq!(versions(&exp), 0, "nothing of a changed file was stored");

    // Not waited for: the error comes out of wait_background, never lost; two are joined.
    for _ in 0..2 {
        let p = write_file(t.path(), "ckpt.pt", &random_bytes(7, 96 << 20));
        let stop = Arc::new(AtomicBool::new(false));
        let h = exp.file(&p).background().unwrap();
        let w = scribble(p.clone(), Arc::clone(&stop));
        while !h.done() {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
        w.join().unwrap();
    }
    match exp.wait_background() {
        Err(Error::Background(m)) => assert!(m.starts_with("2 background uploads failed"), "{m}"),
        other => panic!("{other:?}"),
    }
    exp.wait_background().unwrap();
    assert_eq!(versions(&exp), 0);
    assert!(exp.store().verify().unwrap().ok);
}

#[test]
fn a_file_replaced_by_a_rename_is_stored_as_it_was_queued() {
    let t = tmp();
    let exp = open(&t.path().join("store"), 1 << 30);
    // A first upload keeps the thread busy, so the second is still queued at the rename.
    let h0 = exp
        .file(write_file(
            t.path(),
            "first.bin",
            &random_bytes(1, 64 << 20),
        ))
        .background()
        .unwrap();
    let p = write_file(t.path(), "model.safetensors", &random_bytes(2, 16 << 20));
    let original = std::fs::read(&p).unwrap();
    let h = exp.file(&p).background().unwrap();
    // torch.save to a temporary name, then os.replace: the queued upload keeps the old bytes.
    let tmp_path = t.path().join("model.safetensors.tmp");
    std::fs::write(&tmp_path, random_bytes(3, 16 << 20)).unwrap();
    std::fs::rename(&tmp_path, &p).unwrap();
    h0.wait().unwrap();
    let r = h.wait().unwrap();
    assert_eq!(r.checksum.to_string(), sha256_hex(&original));
    let back = read_via_reader(&exp, "/model.safetensors", None);
    same_bytes(&back, &original, "the file as queued");
}

/// `f` under `with_interrupt`, with the flag set from another thread after `delay`.
fn interrupted_after<T>(delay: Duration, f: impl FnOnce() -> T) -> T {
    let flag = Arc::new(AtomicBool::new(false));
    let setter = {
        let f = Arc::clone(&flag);
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            f.store(true, Ordering::SeqCst);
        })
    };
    let r = ml_dash::with_interrupt(flag, f);
    setter.join().unwrap();
    r
}

#[test]
fn an_interrupted_upload_or_download_changes_nothing() {
    let t = tmp();
    let exp = open(&t.path().join("store"), 1 << 30);
    let p = write_file(t.path(), "big.bin", &random_bytes(4, 48 << 20));
    exp.file(&p).to("kept.bin").save().unwrap();
    let before = snapshot_durable(&t.path().join("store"));
    let r = interrupted_after(Duration::from_millis(20), || exp.file(&p).save());
    assert!(matches!(r, Err(Error::Interrupted)), "{r:?}");
    assert_eq!(versions(&exp), 1);
    assert_eq!(snapshot_durable(&t.path().join("store")), before);

    let dest = t.path().join("copy.bin");
    let r = ml_dash::with_interrupt(Arc::new(AtomicBool::new(true)), || {
        exp.download("/kept.bin", &dest)
    });
    assert!(matches!(r, Err(Error::Interrupted)), "{r:?}");
    assert!(!dest.exists());
    // Not interrupted, the same calls work.
    exp.download("/kept.bin", &dest).unwrap();
    assert!(exp.store().verify().unwrap().ok);

    // A download into a named pipe nobody reads waits for a reader, and an interrupt ends
    // the wait; the pipe stays a pipe.
    let fifo = t.path().join("pipe");
    mkfifo(&fifo);
    let r = interrupted_after(Duration::from_millis(200), || {
        exp.download("/kept.bin", &fifo)
    });
    assert!(matches!(r, Err(Error::Interrupted)), "{r:?}");
    let got = drain_fifo_while(&fifo, || {
        exp.download("/kept.bin", &fifo).unwrap();
    })
    .expect("the pipe was replaced");
    assert!(got == std::fs::read(&dest).unwrap(), "{} bytes", got.len());
}
