//! Uploads through the library: byte-exact round trips at chunk-size boundaries, the returned
//! record, version numbering, `Read + Seek`, refused sources and refused input, and concurrent
//! writers on one store.

use std::io::{Read, Seek, SeekFrom};

use ml_dash::{ChunkerConfig, testing::chunker::Chunker};
use ml_dash::{Error, NewVersion, Store};

use crate::util::*;

const MIN: usize = 16 * 1024;
const MAX: usize = 256 * 1024;

#[track_caller]
fn check_record(rec: &ml_dash::FileRecord, data: &[u8], path: &str, name: &str, version: u32) {
    assert_eq!(rec.size_bytes, data.len() as u64, "size_bytes of {name}");
    assert_eq!(
        rec.checksum.to_hex(),
        sha256_hex(data),
        "checksum of {name}"
    );
    assert_eq!(rec.path, path);
    assert_eq!(rec.filename, name);
    assert_eq!(rec.version, version, "version of {name}");
    assert_eq!(rec.namespace, "local");
    assert!(rec.deleted_at.is_none());
    assert!(is_iso_utc(&rec.uploaded_at), "{}", rec.uploaded_at);
    assert!(is_iso_utc(&rec.updated_at), "{}", rec.updated_at);
}

#[test]
fn round_trip_at_chunk_size_boundaries() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "proj", "exp");
    let sizes = [
        0,
        1,
        MIN - 1,
        MIN,
        MIN + 1,
        MAX - 1,
        MAX,
        MAX + 1,
        3 * MAX + 7,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        let data = random_bytes(100 + i as u64, n);
        let name = format!("size-{n}.bin");
        let src = write_file(dir.path(), &name, &data);
        let rec = exp.file(&src).prefix("/models").save().unwrap();
        check_record(&rec, &data, "/models", &name, 1);
        assert_eq!(rec.content_type, "application/octet-stream");
        assert_eq!(rec.project, "proj");
        assert_eq!(rec.experiment, "exp");

        let full = format!("/models/{name}");
        same_bytes(
            read_via_reader(&exp, &full, None),
            &data,
            &format!("Read of {n} bytes"),
        );
        same_bytes(
            read_via_download(&exp, &full, None),
            &data,
            &format!("download_to of {n}"),
        );
        let dest = dir.path().join(format!("out-{n}"));
        let got = exp.download(&full, &dest).unwrap();
        assert_eq!(got, rec, "download returns the stored record");
        same_bytes(
            std::fs::read(&dest).unwrap(),
            &data,
            &format!("download of {n} bytes"),
        );
        let r = exp.open(&full, None).unwrap();
        assert_eq!(r.len(), n as u64);
        assert_eq!(r.is_empty(), n == 0);
        assert_eq!(r.record(), &rec);
    }
    // Every size is listed once, at version 1, with the sizes uploaded.
    let listed = exp.files("/").unwrap();
    let mut got: Vec<u64> = listed.iter().map(|r| r.size_bytes).collect();
    got.sort();
    let mut want: Vec<u64> = sizes.iter().map(|&n| n as u64).collect();
    want.sort();
    assert_eq!(got, want);
    assert!(exp.store().verify().unwrap().ok);
}

#[test]
fn round_trip_24_mib_at_root() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "proj", "exp");
    let data = random_bytes(24, 24 << 20);
    let src = write_file(dir.path(), "big.ckpt", &data);
    let rec = exp.file(&src).save().unwrap();
    check_record(&rec, &data, "/", "big.ckpt", 1);
    // Random bytes do not compress: at least every byte is new, plus record headers.
    assert!(
        rec.new_bytes >= data.len() as u64,
        "new_bytes {}",
        rec.new_bytes
    );
    assert!(
        rec.new_bytes <= data.len() as u64 + (data.len() / MIN) as u64 * RECORD_HEADER_LEN,
        "new_bytes {}",
        rec.new_bytes
    );
    let dest = dir.path().join("big.out");
    exp.download("/big.ckpt", &dest).unwrap();
    let back = std::fs::read(&dest).unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "24 MiB download differs");
    assert_eq!(sha256_hex(&back), rec.checksum.to_hex());
    // The chunk count the store reports matches an independent chunking of the data.
    let mut cuts = Vec::new();
    let used = Chunker::new(ChunkerConfig::default())
        .unwrap()
        .cuts(&data, true, &mut cuts);
    assert_eq!(used, data.len());
    let st = exp.store().stats(&Default::default()).unwrap();
    assert_eq!(st.chunks, cuts.len() as u64);
    assert_eq!(st.unique_bytes, data.len() as u64);
    assert_eq!(st.logical_bytes, data.len() as u64);
}

#[test]
fn versions_number_1_2_3_per_path() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let mut expected = Vec::new();
    for v in 1..=3u32 {
        let data = random_bytes(u64::from(v), 1000 + v as usize);
        let src = write_file(dir.path(), "model.pth", &data);
        let rec = exp.file(&src).prefix("/models").save().unwrap();
        check_record(&rec, &data, "/models", "model.pth", v);
        expected.push(data);
    }
    // Another path, another name under `to`, and the root: each starts at 1.
    let other = write_file(dir.path(), "other.pth", b"other");
    assert_eq!(
        exp.file(&other).prefix("/models").save().unwrap().version,
        1
    );
    let r = exp
        .file(&other)
        .prefix("models/")
        .to("sub/renamed.pth")
        .save()
        .unwrap();
    assert_eq!(
        (r.path.as_str(), r.filename.as_str(), r.version),
        ("/models/sub", "renamed.pth", 1)
    );
    let r = exp.file(&other).save().unwrap();
    assert_eq!((r.path.as_str(), r.version), ("/", 1));
    // The same path in another experiment is another path.
    let exp2 = experiment(&root, "p", "e2");
    assert_eq!(
        exp2.file(&other)
            .prefix("/models")
            .to("model.pth")
            .save()
            .unwrap()
            .version,
        1
    );

    for (i, data) in expected.iter().enumerate() {
        let v = u32::try_from(i + 1).expect("a few versions");
        same_bytes(
            read_via_reader(&exp, "/models/model.pth", Some(v)),
            &data,
            &format!("v{v}"),
        );
    }
    same_bytes(
        read_via_reader(&exp, "/models/model.pth", None),
        &expected[2],
        "/models/model.pth via Read",
    );
    let all: Vec<u32> = exp
        .list(ml_dash::ListFilter {
            all_versions: true,
            glob: Some(ml_dash::Glob::new("model.pth").unwrap()),
            ..Default::default()
        })
        .unwrap()
        .iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(all, vec![1, 2, 3]);
}

#[test]
fn put_reader_stores_a_stream() {
    let dir = tmp();
    let store = Store::open(dir.path().join("store")).unwrap();
    let key = ml_dash::ExperimentKey::new("local", "p", "e")
        .unwrap()
        .file("/in".into(), "stdin.txt".into());
    let data = random_bytes(7, 300_000);
    let rec = store
        .put_reader(&data[..], &key, NewVersion::default(), None)
        .unwrap();
    check_record(&rec, &data, "/in", "stdin.txt", 1);
    assert_eq!(rec.content_type, "text/plain");
    let r = store.open_file(&key, None).unwrap();
    same_bytes(ml_dash::testing::read_all(&r).unwrap(), &data, "read_all");
}

#[test]
#[allow(
    clippy::cast_possible_wrap,
    reason = "in an assertion: a test file of a few MB"
)]
fn seek_and_read_match_the_source() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let data = random_bytes(42, 2 * 1024 * 1024 + 333);
    let src = write_file(dir.path(), "w.bin", &data);
    exp.file(&src).save().unwrap();

    // Chunk boundaries as the store cuts them (same chunker, same defaults).
    let mut cuts = Vec::new();
    Chunker::new(ChunkerConfig::default())
        .unwrap()
        .cuts(&data, true, &mut cuts);
    assert!(cuts.len() >= 4, "want several chunks, got {}", cuts.len());
    let mut boundaries = Vec::new();
    let mut pos = 0;
    for l in &cuts {
        pos += l;
        boundaries.push(pos);
    }
    boundaries.pop(); // the end of the file

    let mut r = exp.open("/w.bin", None).unwrap();
    let check = |r: &mut ml_dash::FileReader, start: usize, len: usize| {
        assert_eq!(r.seek(SeekFrom::Start(start as u64)).unwrap(), start as u64);
        let want = &data[start..(start + len).min(data.len())];
        let mut got = vec![0u8; want.len()];
        r.read_exact(&mut got).unwrap();
        assert!(got == want, "bytes at {start}..+{len} differ");
        assert_eq!(r.stream_position().unwrap(), (start + want.len()) as u64);
    };
    // Across every chunk boundary.
    for &b in &boundaries {
        check(&mut r, b - 1, 2);
        check(&mut r, b - 100, 300);
        check(&mut r, b, 1);
    }
    // Spanning several chunks at once.
    check(
        &mut r,
        boundaries[0] - 5,
        boundaries[2] - boundaries[0] + 10,
    );
    // Random offsets and lengths.
    let mut rng = XorShift::new(9);
    for _ in 0..200 {
        let start = usize_from(rng.below(data.len() as u64));
        let len = 1 + usize_from(rng.below(200_000));
        check(&mut r, start, len);
    }
    // Relative seeks.
    r.seek(SeekFrom::Start(1000)).unwrap();
    assert_eq!(r.seek(SeekFrom::Current(-10)).unwrap(), 990);
    let mut b = [0u8; 20];
    r.read_exact(&mut b).unwrap();
    assert_eq!(&b[..], &data[990..1010]);
    assert_eq!(r.seek(SeekFrom::End(-5)).unwrap(), data.len() as u64 - 5);
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, &data[data.len() - 5..]);
    // At and past the end: reads return 0.
    assert_eq!(r.read(&mut b).unwrap(), 0);
    r.seek(SeekFrom::End(100)).unwrap();
    assert_eq!(r.read(&mut b).unwrap(), 0);
    // Before the start: an error, and the position is unchanged.
    let here = r.seek(SeekFrom::Start(77)).unwrap();
    assert!(r.seek(SeekFrom::Current(-78)).is_err());
    assert!(r.seek(SeekFrom::End(-(data.len() as i64) - 1)).is_err());
    assert_eq!(r.stream_position().unwrap(), here);
    r.read_exact(&mut b).unwrap();
    assert_eq!(&b[..], &data[77..97]);
}

#[track_caller]
fn assert_store_empty_and_healthy(store: &Store) {
    assert!(list_everything(store).is_empty(), "store has versions");
    let rep = store.verify().unwrap();
    assert!(rep.ok, "{rep:?}");
    assert_eq!(rep.versions, 0);
}

#[test]
fn directories_fifos_and_missing_files_are_refused() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");

    let sub = dir.path().join("a-directory");
    std::fs::create_dir(&sub).unwrap();
    let e = exp.file(&sub).save().unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");

    let fifo = dir.path().join("a-fifo");
    mkfifo(&fifo);
    // Must be refused without opening it (opening a FIFO with no writer would block).
    let e = exp.file(&fifo).save().unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");

    let missing = dir.path().join("no-such-file");
    let e = exp.file(&missing).save().unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    let e = exp.file(&missing).to("x.bin").save().unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");

    assert_store_empty_and_healthy(exp.store());
    assert_eq!(packs_total(&root), 0, "nothing may be written to packs");
}

#[test]
fn bad_names_and_metadata_are_refused_and_change_nothing() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let src = write_file(dir.path(), "ok.bin", b"some bytes");

    let bad_prefixes = [
        "/a/../b", "..", "/..", "/a//b", "//", "/./a", "/a\u{7}b", "/a\nb", "/a\\b",
    ];
    for p in bad_prefixes {
        let e = exp.file(&src).prefix(p).save().unwrap_err();
        assert!(
            matches!(e, Error::InvalidInput { .. }),
            "prefix {p:?}: {e:?}"
        );
    }
    let bad_targets = [
        "/abs",
        "/etc/passwd",
        "../x",
        "a/../../x",
        "",
        "dir/",
        "a\u{1}b",
        ".",
        "..",
    ];
    for t in bad_targets {
        let e = exp.file(&src).prefix("/m").to(t).save().unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "to {t:?}: {e:?}");
    }
    let mut deep = serde_json::json!(1);
    for _ in 0..40 {
        deep = serde_json::json!({ "a": deep });
    }
    let bad_metadata = [
        serde_json::json!([1, 2]),
        serde_json::json!("a string"),
        serde_json::json!(3),
        serde_json::json!(true),
        deep,
        serde_json::json!({ "big": "x".repeat(70 * 1024) }),
    ];
    for m in bad_metadata {
        let e = exp.file(&src).metadata(m.clone()).save().unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "metadata: {e:?}");
    }
    for tags in [
        vec![String::new()],
        vec!["a\nb".to_string()],
        vec!["t".repeat(300)],
    ] {
        let e = exp.file(&src).tags(tags.clone()).save().unwrap_err();
        assert!(
            matches!(e, Error::InvalidInput { .. }),
            "tags {tags:?}: {e:?}"
        );
    }
    let e = exp
        .file(&src)
        .description("d".repeat(65 * 1024))
        .save()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");

    // Project, experiment and namespace names are single segments.
    for (project, name) in [
        ("a/b", "e"),
        ("..", "e"),
        (".", "e"),
        ("", "e"),
        ("p", "x/y"),
        ("p", ".."),
        ("p", "a\u{0}b"),
    ] {
        let r = ml_dash::Experiment::new(name, project)
            .local_path(&root)
            .open();
        assert!(
            matches!(r, Err(Error::InvalidInput { .. })),
            "project {project:?} experiment {name:?} accepted"
        );
    }
    let r = ml_dash::Experiment::new("e", "p")
        .namespace("../ns")
        .local_path(&root)
        .open();
    assert!(matches!(r, Err(Error::InvalidInput { .. })));
    // A hand-made key that skips the constructors is checked again by the store.
    let bad_key = ml_dash::FileKey {
        namespace: "local".into(),
        project: "p".into(),
        experiment: "..".into(),
        path: "/".into(),
        filename: "x".into(),
    };
    assert!(
        exp.store()
            .put_file(&src, &bad_key, NewVersion::default(), None)
            .is_err()
    );
    let bad_key = ml_dash::FileKey {
        experiment: "e".into(),
        path: "/a/../b".into(),
        ..bad_key
    };
    assert!(
        exp.store()
            .put_file(&src, &bad_key, NewVersion::default(), None)
            .is_err()
    );

    assert_store_empty_and_healthy(exp.store());
    assert_eq!(packs_total(&root), 0, "nothing may be written to packs");
    // Valid input still works afterwards.
    let m = serde_json::json!({"lr": 0.001, "nested": {"deep": [1, 2, {"x": null}]}});
    let rec = exp
        .file(&src)
        .prefix("/fine")
        .tags(["a", "b"])
        .description("desc")
        .metadata(m.clone())
        .save()
        .unwrap();
    assert_eq!(rec.metadata, m);
    assert_eq!(rec.tags, vec!["a", "b"]);
    assert_eq!(rec.description.as_deref(), Some("desc"));
}

#[test]
fn two_threads_with_their_own_store_handles() {
    let dir = tmp();
    let root = dir.path().join("store");
    Store::open(&root).unwrap();
    let srcdir = dir.path().join("src");
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (root, srcdir) = (&root, &srcdir);
            s.spawn(move || {
                let exp = ml_dash::Experiment::new("e", "p")
                    .local_path(root)
                    .open()
                    .unwrap();
                for i in 0..20u64 {
                    let data = random_bytes(t * 1000 + i, 2000 + usize_from(i) * 37);
                    let src = write_file(srcdir, &format!("t{t}/f{i}.bin"), &data);
                    let rec = exp
                        .file(&src)
                        .prefix(format!("/t{t}"))
                        .save()
                        .unwrap_or_else(|e| panic!("thread {t} file {i}: {e}"));
                    assert_eq!(rec.version, 1);
                }
            });
        }
    });
    let exp = experiment(&root, "p", "e");
    let all = exp.files("/").unwrap();
    assert_eq!(all.len(), 40);
    for t in 0..2u64 {
        for i in 0..20u64 {
            let data = random_bytes(t * 1000 + i, 2000 + usize_from(i) * 37);
            same_bytes(
                read_via_reader(&exp, &format!("/t{t}/f{i}.bin"), None),
                &data,
                &format!("/t{t}/f{i}.bin via Read"),
            );
        }
    }
    let ids: std::collections::HashSet<_> = all.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 40, "version ids must be unique");
    assert!(exp.store().verify().unwrap().ok);
}

#[test]
fn opening_a_foreign_directory_is_refused() {
    let dir = tmp();
    let foreign = dir.path().join("foreign");
    write_file(&foreign, "notes.txt", b"not a store");
    assert!(matches!(Store::open(&foreign), Err(Error::BadStore { .. })));
    assert_eq!(dir_names(&foreign), vec!["notes.txt"], "nothing created");
    let file = write_file(dir.path(), "plain-file", b"x");
    assert!(matches!(Store::open(&file), Err(Error::BadStore { .. })));
    // A store opens again after it was created, and keeps what it holds.
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    exp.file(&file).save().unwrap();
    let again = Store::open(&root).unwrap();
    assert_eq!(list_live(&again).len(), 1);
}

#[test]
fn threads_opening_a_new_store_at_once() {
    // Each thread opens the same, not yet existing, store at the same moment: all must succeed
    // (whichever creates it), and all their uploads must be there.
    let dir = tmp();
    let src = write_file(dir.path(), "f.bin", b"some bytes");
    let threads = 4;
    for round in 0..10 {
        let root = dir.path().join(format!("fresh-{round}"));
        let barrier = std::sync::Barrier::new(threads);
        let errors: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (root, src, barrier) = (&root, &src, &barrier);
                    s.spawn(move || -> Result<(), Error> {
                        barrier.wait();
                        let exp = ml_dash::Experiment::new(format!("e{t}"), "p")
                            .local_path(root)
                            .open()?;
                        exp.file(src).save()?;
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap().err().map(|e| e.to_string()))
                .collect()
        });
        assert!(errors.is_empty(), "round {round}: {errors:?}");
        assert_eq!(list_live(&Store::open(&root).unwrap()).len(), threads);
    }
}

#[test]
fn open_while_another_opener_is_creating_the_store() {
    // `Store::open` on a missing root creates packs/, manifests/, events/ and index/ first and
    // writes FORMAT last. A second process opening the same root in between (two jobs started
    // together) sees exactly this: ml-dash's own empty subdirectories and no FORMAT yet. The
    // same state is left behind when the creator is killed before writing FORMAT. Either way
    // the directory holds nothing but what a creator makes, and must open as a new store.
    let dir = tmp();
    let root = dir.path().join("store");
    for d in ["packs", "manifests", "events", "index"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("lock"), b"").unwrap();
    let store = Store::open(&root).unwrap_or_else(|e| panic!("half-created store refused: {e}"));
    assert!(root.join("FORMAT").exists());
    let exp = experiment(&root, "p", "e");
    exp.file(write_file(dir.path(), "x.bin", b"x"))
        .save()
        .unwrap();
    assert_eq!(list_live(&store).len(), 1);
    // The CLI reaches the same state the same way.
    let root2 = dir.path().join("store2");
    for d in ["packs", "manifests", "events", "index"] {
        std::fs::create_dir_all(root2.join(d)).unwrap();
    }
    let src = write_file(dir.path(), "y.bin", b"y");
    let r = run(
        &root2,
        &[
            "upload",
            src.to_str().unwrap(),
            "--project",
            "p",
            "--experiment",
            "e",
        ],
    );
    assert_eq!(r.0, 0, "half-created store refused by the CLI: {}", r.2);
    assert_eq!(list_live(&Store::open(&root2).unwrap()).len(), 1);
}

#[test]
fn source_that_changes_while_read_is_refused() {
    // A /proc file claims to be a regular file of 0 bytes, then yields more: to `put_file` it
    // looks exactly like a file that grew while it was read. Nothing may be recorded.
    let proc_file = std::path::Path::new("/proc/self/status");
    let meta = std::fs::metadata(proc_file).expect("/proc is mounted");
    assert!(meta.is_file() && meta.len() == 0);
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let e = exp.file(proc_file).save().unwrap_err();
    assert!(matches!(e, Error::SourceChanged { .. }), "{e:?}");
    assert!(e.to_string().contains("nothing was stored"), "{e}");
    assert_store_empty_and_healthy(exp.store());
    // Whatever chunks the refused upload wrote are garbage gc removes entirely.
    exp.store()
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert_eq!(packs_total(&root), 0);
    // And the store works normally afterwards.
    let data = random_bytes(5, 100_000);
    let r = exp
        .file(write_file(dir.path(), "ok.bin", &data))
        .save()
        .unwrap();
    assert_eq!(r.version, 1);
    same_bytes(
        read_via_reader(&exp, "/ok.bin", None),
        &data,
        "/ok.bin via Read",
    );
    assert!(exp.store().verify().unwrap().ok);
}

#[test]
fn store_options_round_trip() {
    use ml_dash::Compression;
    let dir = tmp();
    let text: Vec<u8> = (0..600_000u32)
        .flat_map(|i| format!("{} ", i % 977).into_bytes())
        .collect();
    let random = random_bytes(70, 700_000);
    let configs = [
        (
            "off",
            ml_dash::StoreOptions::default().compression(Compression::Off),
        ),
        (
            "always",
            ml_dash::StoreOptions::default().compression(Compression::Always(3)),
        ),
        (
            "small-chunks",
            ml_dash::StoreOptions::default().chunker(ChunkerConfig {
                min: 1024,
                avg: 4096,
                max: 16384,
                ..ChunkerConfig::default()
            }),
        ),
    ];
    for (name, opts) in configs {
        let root = dir.path().join(name);
        let exp = ml_dash::Experiment::new("e", "p")
            .local_path(&root)
            .options(opts)
            .open()
            .unwrap();
        let rt = exp
            .file(write_file(dir.path(), "t.txt", &text))
            .save()
            .unwrap();
        let rr = exp
            .file(write_file(dir.path(), "r.bin", &random))
            .save()
            .unwrap();
        match name {
            "off" => assert!(
                rt.new_bytes >= text.len() as u64,
                "{name}: {}",
                rt.new_bytes
            ),
            _ => assert!(
                rt.new_bytes < text.len() as u64 / 2,
                "{name}: {}",
                rt.new_bytes
            ),
        }
        assert!(rr.new_bytes >= random.len() as u64);
        same_bytes(read_via_download(&exp, "/t.txt", None), &text, name);
        same_bytes(read_via_reader(&exp, "/r.bin", None), &random, name);
        assert!(exp.store().verify().unwrap().ok, "{name}");
    }
    // Invalid chunker settings are refused.
    let bad = ml_dash::StoreOptions::default().chunker(ChunkerConfig {
        min: 4096,
        avg: 1024,
        max: 16384,
        ..ChunkerConfig::default()
    });
    assert!(Store::open_with(dir.path().join("bad"), bad).is_err());
}
