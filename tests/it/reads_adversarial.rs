//! Adversarial tests of `FileReader`: concurrent streams, pool threads, interleaved readers,
//! odd seeks and read sizes, readers dropped mid read-ahead, gc under a stream, and damage
//! that lands in a background batch (raw and delta-coded).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ml_dash::{ExperimentKey, FileKey, FileReader, GcOptions, NewVersion, Store};
use rayon::prelude::*;

use crate::util::*;

fn key(name: &str) -> FileKey {
    ExperimentKey::new("local", "adv", "reads")
        .unwrap()
        .file("/f".into(), name.into())
}

fn put(s: &Store, name: &str, data: &[u8]) -> ml_dash::FileRecord {
    s.put_reader(data, &key(name), NewVersion::default(), None)
        .unwrap()
}

/// Run `f` on a thread of its own; fail if it does not finish within `secs`.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let h = std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(());
        r
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => match h.join().unwrap() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        },
        Err(_) => panic!("{what}: did not finish within {secs} s (hang)"),
    }
}

/// Chunk boundaries (start offsets, and the file length last) of version `rec`.
fn chunk_starts(root: &Path, rec: &ml_dash::FileRecord) -> Vec<u64> {
    fn walk(d: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "manifest") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    for f in files {
        let b = std::fs::read(&f).unwrap();
        let m = ml_dash::testing::manifest::Manifest::decode(&b, "m").unwrap();
        if m.record.id == rec.id {
            let mut v = vec![0u64];
            for (_, len) in &m.chunks {
                v.push(v.last().unwrap() + u64::from(*len));
            }
            assert_eq!(*v.last().unwrap(), rec.size_bytes);
            return v;
        }
    }
    panic!("no manifest for {}", rec.id);
}

/// Read exactly `n` bytes with reads of at most `size` bytes.
fn read_n(r: &mut FileReader, n: usize, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; size];
    while out.len() < n {
        let want = size.min(n - out.len());
        let k = r.read(&mut buf[..want]).unwrap();
        assert!(k > 0, "early end at {}", out.len());
        out.extend_from_slice(&buf[..k]);
    }
    out
}

fn store_with(
    len: usize,
    seed: u64,
) -> (
    tempfile::TempDir,
    Arc<Store>,
    Arc<Vec<u8>>,
    ml_dash::FileRecord,
) {
    let t = tmp();
    let s = Store::open(t.path()).unwrap();
    let data = mixed(seed, len);
    let rec = put(&s, "m.bin", &data);
    (t, Arc::new(s), Arc::new(data), rec)
}

const SIZES: [usize; 8] = [
    777,
    4096,
    65_539,
    100_000,
    256 << 10,
    (1 << 20) + 17,
    3 << 20,
    32 << 20,
];

#[test]
fn eight_threads_stream_one_version_with_different_read_sizes() {
    let (_t, s, data, _) = store_with(12 << 20, 21);
    within(120, "8 concurrent streams", move || {
        let hs: Vec<_> = (0..8)
            .map(|k| {
                let (s, data) = (s.clone(), data.clone());
                std::thread::spawn(move || {
                    for round in 0..2 {
                        let size = SIZES[(k + round * 3) % SIZES.len()];
                        let mut r = s.open_file(&key("m.bin"), None).unwrap();
                        let (got, err) = stream(&mut r, size);
                        assert!(err.is_none(), "thread {k} reads of {size}: {err:?}");
                        same_bytes(&got, &**data, &format!("thread {k} reads of {size}"));
                    }
                    // One reader shared by the rounds, seeking back to the start between them.
                    let mut r = s.open_file(&key("m.bin"), None).unwrap();
                    for size in [SIZES[k], 1 << 16, SIZES[7 - k]] {
                        r.seek(SeekFrom::Start(0)).unwrap();
                        let (got, err) = stream(&mut r, size);
                        assert!(err.is_none(), "thread {k} again, reads of {size}: {err:?}");
                        same_bytes(&got, &**data, &format!("thread {k} again, reads of {size}"));
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
}

#[test]
fn readers_opened_and_streamed_inside_a_par_iter() {
    let (_t, s, data, _) = store_with(8 << 20, 22);
    within(120, "streams on pool threads", move || {
        (0..16usize).into_par_iter().for_each(|k| {
            let size = SIZES[k % SIZES.len()];
            let mut r = s.open_file(&key("m.bin"), None).unwrap();
            let (got, err) = stream(&mut r, size);
            assert!(err.is_none(), "task {k}: {err:?}");
            same_bytes(&got, &**data, &format!("task {k} reads of {size}"));
            assert_eq!(
                ml_dash::testing::batches_read_ahead(&r),
                0,
                "pool thread read ahead"
            );
        });
    });
}

/// The inner half of `a_reader_with_read_ahead_in_flight_moved_to_pool_threads` (run in a
/// child process: a deadlock of the global pool would stall every other test).
#[test]
#[ignore = "run by a_reader_with_read_ahead_in_flight_moved_to_pool_threads"]
fn inner_reader_moved_to_pool_threads() {
    let (_t, s, data, _) = store_with(12 << 20, 23);
    for round in 0..20 {
        // Streams started on this thread: each has a batch decoding ahead on the pool.
        let readers: Vec<(usize, FileReader)> = (0..8)
            .map(|k| {
                let mut r = s.open_file(&key("m.bin"), None).unwrap();
                let got = read_n(&mut r, 600 << 10, 64 << 10);
                assert!(got == data[..600 << 10]);
                assert!(
                    ml_dash::testing::batches_read_ahead(&r) >= 1,
                    "no read-ahead"
                );
                (k, r)
            })
            .collect();
        // ... then handed to pool threads, which go on reading them.
        readers.into_par_iter().for_each(|(k, mut r)| {
            let (got, err) = stream(&mut r, 64 << 10);
            assert!(err.is_none(), "round {round} reader {k}: {err:?}");
            same_bytes(
                &got,
                &data[600 << 10..],
                &format!("round {round} reader {k}"),
            );
        });
    }
}

#[test]
fn a_reader_with_read_ahead_in_flight_moved_to_pool_threads() {
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "reads_adversarial::inner_reader_moved_to_pool_threads",
            "--ignored",
            "--test-threads=1",
        ])
        .env("RAYON_NUM_THREADS", "2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(
                st.success(),
                "child failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
            return;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("readers streamed on one thread, then read on pool threads, hung (60 s)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_readers_interleaved_with_backward_seeks_into_read_batches() {
    let (_t, s, data, _) = store_with(10 << 20, 24);
    within(120, "interleaved readers", move || {
        let mut a = s.open_file(&key("m.bin"), None).unwrap();
        let mut b = s.open_file(&key("m.bin"), None).unwrap();
        let (mut pa, mut pb) = (0usize, 0usize);
        let mut rng = XorShift::new(77);
        let len = data.len();
        let mut steps = 0;
        while pa < len || pb < len {
            steps += 1;
            for (r, p, which) in [(&mut a, &mut pa, "a"), (&mut b, &mut pb, "b")] {
                if *p >= len {
                    continue;
                }
                // Now and then jump back into what was read (often into the batch read).
                if rng.below(10) == 0 && *p > 0 {
                    let back = usize_from(rng.below((*p as u64).min(256 << 10)) + 1);
                    *p -= back;
                    r.seek(SeekFrom::Start(*p as u64)).unwrap();
                }
                let size = [1usize, 13, 4096, 65_536, 100_003, 300_000][usize_from(rng.below(6))];
                let mut buf = vec![0u8; size];
                let n = r.read(&mut buf).unwrap();
                assert!(n > 0, "{which}: 0 bytes at {p}");
                assert!(
                    buf[..n] == data[*p..*p + n],
                    "{which}: {n} bytes at {p} (read of {size}, step {steps}) differ"
                );
                *p += n;
            }
        }
        let mut z = [0u8; 8];
        assert_eq!(a.read(&mut z).unwrap(), 0);
        assert_eq!(b.read(&mut z).unwrap(), 0);
    });
}

#[test]
fn seeks_to_and_past_the_end_and_zero_length_reads_mid_stream() {
    let (_t, s, data, _) = store_with(6 << 20, 25);
    within(60, "end seeks", move || {
        let len = data.len() as u64;
        let mut r = s.open_file(&key("m.bin"), None).unwrap();
        let first = read_n(&mut r, 1 << 20, 65_536); // a stream, read-ahead started
        assert!(first == data[..1 << 20]);
        assert_eq!(r.read(&mut []).unwrap(), 0, "zero-length read");
        assert_eq!(r.stream_position().unwrap(), 1 << 20);
        let more = read_n(&mut r, 100_000, 65_536);
        assert!(
            more == data[1 << 20..(1 << 20) + 100_000],
            "after a zero-length read"
        );

        assert_eq!(r.seek(SeekFrom::End(0)).unwrap(), len);
        assert_eq!(r.read(&mut [0u8; 100]).unwrap(), 0, "at the end");
        assert_eq!(r.read(&mut []).unwrap(), 0);
        assert_eq!(r.seek(SeekFrom::End(1000)).unwrap(), len + 1000);
        assert_eq!(r.read(&mut [0u8; 100]).unwrap(), 0, "past the end");
        assert_eq!(r.seek(SeekFrom::Start(u64::MAX)).unwrap(), u64::MAX);
        assert_eq!(r.read(&mut [0u8; 100]).unwrap(), 0, "at u64::MAX");
        assert!(r.seek(SeekFrom::Current(1)).is_err(), "overflowing seek");
        r.seek(SeekFrom::End(-1)).unwrap();
        let mut one = [0u8; 10];
        assert_eq!(r.read(&mut one).unwrap(), 1);
        assert_eq!(one[0], data[data.len() - 1]);
        assert_eq!(r.read(&mut one).unwrap(), 0);
        assert!(
            r.seek(SeekFrom::End(-len.cast_signed() - 1)).is_err(),
            "before the start"
        );
        assert_eq!(r.stream_position().unwrap(), len, "a failed seek moved");

        // Back to the middle of the stream read before: everything from there.
        r.seek(SeekFrom::Start(700_000)).unwrap();
        let (rest, err) = stream(&mut r, 77_777);
        assert!(err.is_none(), "{err:?}");
        same_bytes(&rest, &data[700_000..], "from 700000 after end seeks");

        // From the start, with zero-length reads between all reads: the whole-file check holds.
        r.seek(SeekFrom::Start(0)).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            assert_eq!(r.read(&mut buf[..0]).unwrap(), 0);
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        same_bytes(&got, &**data, "with zero-length reads between");
    });
}

#[test]
fn one_byte_reads_across_every_chunk_boundary_in_a_stream() {
    let (t, s, data, rec) = store_with(6 << 20, 26);
    let starts = chunk_starts(t.path(), &rec);
    assert!(starts.len() > 40, "{} chunks", starts.len());
    within(120, "one-byte reads at boundaries", move || {
        for bulk in [65_536usize, 200_000, 1 << 20] {
            let mut r = s.open_file(&key("m.bin"), None).unwrap();
            let mut pos = 0usize;
            let mut got = Vec::new();
            for &b in &starts[1..starts.len() - 1] {
                let b = usize_from(b);
                if b < pos + 3 {
                    continue;
                }
                got.extend(read_n(&mut r, b - 3 - pos, bulk));
                for _ in 0..6 {
                    let mut one = [0u8; 1];
                    assert_eq!(r.read(&mut one).unwrap(), 1);
                    got.push(one[0]);
                }
                pos = b + 3;
                assert_eq!(got.len(), pos);
                assert!(
                    got[pos - 6..] == data[pos - 6..pos],
                    "bulk {bulk}: bytes around boundary {b} differ"
                );
            }
            let (rest, err) = stream(&mut r, bulk);
            assert!(err.is_none(), "{err:?}");
            got.extend(rest);
            same_bytes(&got, &**data, &format!("bulk {bulk}"));
            assert!(
                ml_dash::testing::batches_read_ahead(&r) >= 1,
                "not a stream"
            );
        }
    });
}

/// Open file descriptors of this process that point into `dir`.
fn fds_into(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(&dir))
        .count()
}

#[test]
fn readers_dropped_with_read_ahead_in_flight_leak_nothing() {
    let (t, s, data, _) = store_with(12 << 20, 27);
    let root = t.path().to_path_buf();
    within(120, "dropped readers", move || {
        let mut rng = XorShift::new(3);
        for i in 0..150 {
            let mut r = s.open_file(&key("m.bin"), None).unwrap();
            let n = 300_000 + usize_from(rng.below(3 << 20));
            let got = read_n(&mut r, n, [4096, 65_536, 100_000][i % 3]);
            assert!(got == data[..n], "iteration {i}");
            assert!(
                ml_dash::testing::batches_read_ahead(&r) >= 1,
                "iteration {i}: no read-ahead"
            );
            if i % 5 == 0 {
                // Jump away from the batch in flight, then drop.
                r.seek(SeekFrom::Start(11 << 20)).unwrap();
                let tail = read_n(&mut r, 1000, 1000);
                assert!(tail == data[11 << 20..(11 << 20) + 1000]);
            }
            drop(r);
        }
        // Background decodes end and let go of the packs.
        let mut open = usize::MAX;
        for _ in 0..100 {
            open = fds_into(&root);
            if open == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            open, 0,
            "pack handles still open 5 s after every reader was dropped"
        );
        let mut r = s.open_file(&key("m.bin"), None).unwrap();
        let (got, err) = stream(&mut r, 65_536);
        assert!(err.is_none());
        same_bytes(&got, &**data, "after the drops");
    });
}

#[test]
fn gc_and_delete_while_a_reader_streams() {
    let (t, s, data, _) = store_with(10 << 20, 28);
    // Another file sharing no chunks, so gc rewrites and deletes packs.
    let other = random_bytes(99, 3 << 20);
    put(&s, "o.bin", &other);
    let packs_before = pack_files(t.path());
    within(120, "gc under a stream", move || {
        let mut r = s.open_file(&key("m.bin"), None).unwrap();
        let mut idle = s.open_file(&key("m.bin"), None).unwrap();
        let head = read_n(&mut r, 1 << 20, 65_536);
        assert!(head == data[..1 << 20]);
        s.delete(&key("m.bin")).unwrap();
        let g = s.gc(&GcOptions::new().rewrite_threshold(0.0)).unwrap();
        let _ = g;
        let gone = packs_before.iter().filter(|p| !p.exists()).count();
        assert!(gone > 0, "gc deleted no pack: the test would prove nothing");
        assert!(
            s.open_file(&key("m.bin"), None).is_err(),
            "deleted version still opens"
        );
        let (rest, err) = stream(&mut r, 100_003);
        assert!(err.is_none(), "after gc: {err:?}");
        same_bytes(&rest, &data[1 << 20..], "rest after gc");
        r.seek(SeekFrom::Start(12345)).unwrap();
        let (again, err) = stream(&mut r, 1 << 20);
        assert!(err.is_none(), "seek back after gc: {err:?}");
        same_bytes(&again, &data[12345..], "seek back after gc");
        let (all, err) = stream(&mut idle, 65_536);
        assert!(err.is_none(), "reader opened before the delete: {err:?}");
        same_bytes(&all, &**data, "reader opened before the delete");
    });
}

/// The first chunk that a fresh reader cannot read at random (seek to its start, read it
/// whole): where a stream must stop.
fn first_bad_chunk(s: &Store, name: &str, starts: &[u64]) -> Option<usize> {
    let mut r = s.open_file(&key(name), None).unwrap();
    for w in starts.windows(2) {
        r.seek(SeekFrom::Start(w[0])).unwrap();
        let mut b = vec![0u8; usize_from(w[1] - w[0])];
        if r.read_exact(&mut b).is_err() {
            return Some(usize_from(w[0]));
        }
    }
    None
}

fn check_stops_at(
    s: &Store,
    name: &str,
    data: &[u8],
    at: usize,
    end: usize,
    sizes: &[usize],
) -> u64 {
    let mut most_ahead = 0;
    for &size in sizes {
        let mut r = s.open_file(&key(name), None).unwrap();
        let (got, err) = stream(&mut r, size);
        let err =
            err.unwrap_or_else(|| panic!("reads of {size}: no error (got {} bytes)", got.len()));
        assert_eq!(
            got.len(),
            at,
            "reads of {size}: the stream ended elsewhere than the damaged chunk ({err})"
        );
        same_bytes(
            &got,
            &data[..at],
            &format!("reads of {size}: bytes before the damage"),
        );
        most_ahead = most_ahead.max(ml_dash::testing::batches_read_ahead(&r));
        // Again: still an error, still no bytes.
        let mut b = vec![0u8; size];
        assert!(
            r.read(&mut b).is_err(),
            "reads of {size}: a second read of the damaged chunk"
        );
        // One byte before it, then the damaged chunk.
        r.seek(SeekFrom::Start(at as u64 - 1)).unwrap();
        let mut one = [0u8; 1];
        assert_eq!(r.read(&mut one).unwrap(), 1);
        assert_eq!(one[0], data[at - 1]);
        assert!(
            r.read(&mut b).is_err(),
            "reads of {size}: damaged chunk after a 1-byte read"
        );
        // Past it: the rest reads.
        r.seek(SeekFrom::Start(end as u64)).unwrap();
        let (rest, err) = stream(&mut r, size);
        if let Some(e) = err {
            // Only a later damaged chunk may stop it.
            let _ = e;
            assert!(
                data[end..].starts_with(&rest),
                "reads of {size}: wrong bytes after the damage"
            );
        } else {
            same_bytes(
                &rest,
                &data[end..],
                &format!("reads of {size}: after the damage"),
            );
        }
    }
    most_ahead
}

#[test]
fn a_damaged_chunk_in_a_background_batch_ends_the_stream_at_its_start() {
    let t = tmp();
    let s = Store::open(t.path()).unwrap();
    let data = random_bytes(31, 16 << 20);
    let rec = put(&s, "r.bin", &data);
    let starts = chunk_starts(t.path(), &rec);
    // A chunk starting past 6 MiB (not the first batch nor the one decoded with it), found in
    // the pack by its first bytes (random data is stored raw).
    let packs = pack_files(t.path());
    let mut target = None;
    'out: for p in &packs {
        let bytes = std::fs::read(p).unwrap();
        for r in pack_records(p)
            .into_iter()
            .filter(|r| r.codec == 0 && r.stored_len > 4096)
        {
            let head = &bytes[usize_from(r.data_start())..usize_from(r.data_start()) + 64];
            if let Some(&st) = starts.iter().find(|&&st| {
                st > 6 << 20 && st < 12 << 20 && data[usize_from(st)..usize_from(st) + 64] == *head
            }) {
                target = Some((p.clone(), r, usize_from(st)));
                break 'out;
            }
        }
    }
    let (pack, r, at) = target.expect("a raw chunk between 6 and 12 MiB");
    let end = at + usize_from(r.stored_len);
    assert!(starts.contains(&(end as u64)));
    flip_byte(&pack, r.data_start() + r.stored_len / 3);
    assert_eq!(first_bad_chunk(&s, "r.bin", &starts), Some(at));

    let sizes = [
        1usize,
        4096,
        65_536,
        65_539,
        100_000,
        256 << 10,
        (1 << 20) + 17,
        2 << 20,
        at + 5,
    ];
    let s = Arc::new(s);
    let data = Arc::new(data);
    let most = within(240, "damage in a background batch", {
        let (s, data) = (s.clone(), data.clone());
        move || check_stops_at(&s, "r.bin", &data, at, end, &sizes)
    });
    assert!(
        most >= 2,
        "no stream decoded the damaged chunk ahead ({most} batches)"
    );
}

#[test]
fn a_damaged_delta_base_ends_a_stream_of_the_delta_version_at_its_chunk() {
    let t = tmp();
    let s = Store::open(t.path()).unwrap();
    let ck = crate::delta::model_checkpoints(3_000_000, 17, 2, 100);
    put(&s, "a.safetensors", &ck[0]);
    let packs_a: Vec<_> = pack_files(t.path());
    let rec_b = put(&s, "b.safetensors", &ck[1]);
    assert!(
        crate::delta::delta_records(t.path()) > 0,
        "b stored no deltas"
    );
    let starts = chunk_starts(t.path(), &rec_b);
    // Damage a record of a (a base of b's deltas) well inside the file, past the first batch.
    let mut done = None;
    for p in &packs_a {
        let recs = pack_records(p);
        let n = recs.len();
        for r in recs.into_iter().skip(n / 2) {
            if r.codec != crate::delta::DELTA && r.stored_len > 1000 {
                flip_byte(p, r.data_start() + r.stored_len / 2);
                done = Some(r);
                break;
            }
        }
    }
    done.expect("a record of a to damage");
    let at = first_bad_chunk(&s, "b.safetensors", &starts)
        .expect("b does not stand on the damaged record: pick another");
    assert!(at > 1 << 20, "damage at {at}: in the first batch");
    let i = starts.iter().position(|&x| x == at as u64).unwrap();
    let end = usize_from(starts[i + 1]);
    let sizes = [
        4096usize,
        65_536,
        100_000,
        256 << 10,
        (1 << 20) + 17,
        8 << 20,
    ];
    let s = Arc::new(s);
    let data = Arc::new(ck[1].clone());
    within(240, "damaged delta base", move || {
        check_stops_at(&s, "b.safetensors", &data, at, end, &sizes)
    });
}
