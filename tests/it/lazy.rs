//! Lazy remote reads: one version read straight from a remote, fetching only the chunks it
//! needs, every chunk proven; fetched records are cached and reused by later reads and pulls.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use ml_dash::{ExperimentKey, FileKey, NewVersion, Remote, RemoteConfig, Store};

use crate::util::*;

fn key(name: &str) -> FileKey {
    ExperimentKey::new("local", "lazy", "run")
        .unwrap()
        .file("/models".into(), name.into())
}

/// A store holding `data` as /models/`name`, pushed to a fresh `file://` remote.
fn pushed(t: &tempfile::TempDir, name: &str, data: &[u8]) -> (RemoteConfig, Store) {
    let cfg = RemoteConfig::new(format!("file://{}", t.path().join("remote").display()));
    let a = Store::open(t.path().join("a")).unwrap();
    a.put_reader(data, &key(name), NewVersion::default(), None)
        .unwrap();
    a.push(&Remote::open(&cfg).unwrap(), None).unwrap();
    (cfg, a)
}

/// The one entry of `dir`.
fn only_entry(dir: &std::path::Path) -> std::path::PathBuf {
    let mut it = std::fs::read_dir(dir).unwrap();
    let p = it.next().unwrap().unwrap().path();
    assert!(it.next().is_none(), "{} holds one entry", dir.display());
    p
}

/// Read `name` from the remote into a fresh store "b", expecting an error: what came out
/// before it, and the error.
fn read_failing(
    t: &tempfile::TempDir,
    cfg: &RemoteConfig,
    name: &str,
) -> (Vec<u8>, std::io::Error) {
    let b = Store::open(t.path().join("b")).unwrap();
    let mut f = b
        .open_remote(Arc::new(Remote::open(cfg).unwrap()), &key(name), None)
        .unwrap();
    let mut out = Vec::new();
    let e = f.read_to_end(&mut out).unwrap_err();
    (out, e)
}

#[test]
fn a_lazy_read_of_a_1_gib_remote_file_fetches_under_5_percent_extra() {
    let t = tmp();
    let data = random_bytes(21, 1 << 30);
    let (cfg, a) = pushed(&t, "big.bin", &data);
    // Disk: only the remote and the reader's cache stay (the tests run side by side).
    drop(a);
    std::fs::remove_dir_all(t.path().join("a")).unwrap();
    let remote = Arc::new(Remote::open(&cfg).unwrap());
    let b = Store::open(t.path().join("b")).unwrap();
    let mut f = b
        .open_remote(Arc::clone(&remote), &key("big.bin"), None)
        .unwrap();
    assert_eq!(f.len(), data.len() as u64);
    let mut buf = vec![0u8; 4 << 20];
    let mut at = 0usize;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n] == data[at..at + n], "bytes at {at} differ");
        at += n;
    }
    assert_eq!(at, data.len());
    let st = f.stats();
    assert!(
        st.bytes <= data.len() as u64 * 105 / 100,
        "fetched {} bytes for a {} byte file",
        st.bytes,
        data.len()
    );
    assert!(
        st.requests * 4 < st.records,
        "adjacent records coalesce: {st:?}"
    );
    drop(data);

    // A second reader finds every record in the cache.
    let mut g = b
        .open_remote(Arc::clone(&remote), &key("big.bin"), None)
        .unwrap();
    g.seek(SeekFrom::Start(500 << 20)).unwrap();
    let mut small = vec![0u8; 1 << 20];
    g.read_exact(&mut small).unwrap();
    assert_eq!(g.stats().bytes, 0, "{:?}", g.stats());
    assert!(g.stats().cached > 0);
}

#[test]
fn a_pull_takes_records_from_the_lazy_cache() {
    let t = tmp();
    let data = random_bytes(22, 48 << 20);
    let (cfg, _a) = pushed(&t, "mid.bin", &data);
    let remote = Arc::new(Remote::open(&cfg).unwrap());
    let b = Store::open(t.path().join("b")).unwrap();
    let mut f = b
        .open_remote(Arc::clone(&remote), &key("mid.bin"), None)
        .unwrap();
    let mut all = Vec::new();
    f.read_to_end(&mut all).unwrap();
    assert!(all == data);
    // With every remote pack's data damaged the pull still succeeds: no record is fetched
    // again.
    for p in std::fs::read_dir(t.path().join("remote/packs")).unwrap() {
        let p = p.unwrap().path();
        let len = std::fs::metadata(&p).unwrap().len();
        flip_byte(&p, len / 3);
    }
    let r = b.pull(&remote, None).unwrap();
    assert!(r.damaged.is_empty(), "{r:?}");
    assert_eq!(r.manifests, 1);
    assert!(b.verify().unwrap().ok);
}

#[test]
fn one_tensor_of_a_safetensors_file_fetches_only_its_chunks() {
    let t = tmp();
    let mut m = crate::adam::Model::new(4_000_000, 512, 3);
    m.train(3);
    let st = m.safetensors(false);
    let (cfg, _a) = pushed(&t, "model.safetensors", &st);
    let b = Store::open(t.path().join("b")).unwrap();
    let remote = Arc::new(Remote::open(&cfg).unwrap());
    let mut f = b
        .open_remote(remote, &key("model.safetensors"), None)
        .unwrap();

    // The header, as safetensors readers read it.
    let mut n = [0u8; 8];
    f.read_exact(&mut n).unwrap();
    let hlen = u64::from_le_bytes(n);
    let mut header = vec![0u8; usize::try_from(hlen).unwrap()];
    f.read_exact(&mut header).unwrap();
    let h: serde_json::Value = serde_json::from_slice(&header).unwrap();
    // The largest tensor.
    let (name, lo, hi) = h
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            (k.clone(), o[0].as_u64().unwrap(), o[1].as_u64().unwrap())
        })
        .max_by_key(|(_, lo, hi)| hi - lo)
        .unwrap();
    let base = 8 + hlen;
    f.seek(SeekFrom::Start(base + lo)).unwrap();
    let mut tensor = vec![0u8; usize::try_from(hi - lo).unwrap()];
    f.read_exact(&mut tensor).unwrap();
    let (a, z) = (
        usize::try_from(base + lo).unwrap(),
        usize::try_from(base + hi).unwrap(),
    );
    assert!(tensor == st[a..z], "tensor {name} differs");

    // Exactly the chunks under the header and under that tensor were fetched.
    let starts = f.chunk_starts().to_vec();
    let overlapping = |from: u64, to: u64| {
        (0..starts.len() - 1)
            .filter(|i| starts[*i] < to && starts[i + 1] > from)
            .count() as u64
    };
    let want = overlapping(0, base) + overlapping(base + lo, base + hi);
    let got = f.stats();
    assert_eq!(
        got.records,
        want,
        "{got:?}; {} chunks in the file",
        starts.len() - 1
    );
    assert!(
        got.bytes < (hi - lo) + (8 << 20),
        "{got:?} for a {} byte tensor",
        hi - lo
    );
}

#[test]
fn a_damaged_remote_record_is_an_error_never_data() {
    let t = tmp();
    let data = random_bytes(5, 8 << 20);
    let (cfg, _a) = pushed(&t, "w.bin", &data);
    let pack = only_entry(&t.path().join("remote/packs"));
    flip_byte(&pack, std::fs::metadata(&pack).unwrap().len() / 2);
    let (out, e) = read_failing(&t, &cfg, "w.bin");
    assert!(e.to_string().contains("corrupt"), "{e}");
    assert!(
        out.len() < data.len() && out[..] == data[..out.len()],
        "only verified bytes came out"
    );
}

#[test]
fn the_cli_downloads_from_a_remote_without_pulling() {
    let t = tmp();
    let data = random_bytes(8, 3 << 20);
    let (cfg, a) = pushed(&t, "w.bin", &data);
    a.put_reader(&b"second"[..], &key("w.bin"), NewVersion::default(), None)
        .unwrap();
    a.push(&Remote::open(&cfg).unwrap(), None).unwrap();
    let root = t.path().join("cache-store");
    let out = t.path().join("out.bin");
    let args = |v: Option<&str>| {
        let mut x = vec![
            "download",
            "--from",
            cfg.url.as_str(),
            "--project",
            "lazy",
            "--experiment",
            "run",
            "/models/w.bin",
            "-o",
            out.to_str().unwrap(),
        ];
        if let Some(v) = v {
            x.extend(["--version", v]);
        }
        x.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run_args = |a: Vec<String>| run(&root, &a.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&run_args(args(Some("1"))));
    same_bytes(
        std::fs::read(&out).unwrap(),
        &data,
        "version 1 from the remote",
    );
    ok(&run_args(args(None)));
    assert_eq!(std::fs::read(&out).unwrap(), b"second");
    // A named pipe is written in place, not renamed over.
    std::fs::remove_file(&out).unwrap();
    mkfifo(&out);
    let got = drain_fifo_while(&out, || {
        ok(&run_args(args(Some("1"))));
    })
    .expect("the pipe was replaced");
    same_bytes(got, &data, "version 1 into a pipe");
    let r = run_args(args(Some("7")));
    refused(&r, "no version 7");
    assert!(r.2.contains("not found"), "{}", r.2);
    // Nothing was pulled: the local store holds no version.
    assert!(list_everything(&Store::open(&root).unwrap()).is_empty());
}

#[test]
fn a_manifest_with_misplaced_chunk_lengths_is_an_error_not_a_panic() {
    let t = tmp();
    let data = random_bytes(6, 4 << 20);
    let (cfg, _a) = pushed(&t, "w.bin", &data);
    // Rewrite the remote manifest: the first two chunks' lengths swapped, the total unchanged.
    let mdir = t.path().join("remote/manifests");
    let path = only_entry(&mdir);
    let mut m =
        ml_dash::testing::manifest::Manifest::decode(&std::fs::read(&path).unwrap(), "").unwrap();
    assert!(m.chunks.len() > 2);
    let (l0, l1) = (m.chunks[0].1, m.chunks[1].1);
    assert_ne!(l0, l1, "two chunks of different lengths");
    m.chunks[0].1 = l1;
    m.chunks[1].1 = l0;
    std::fs::write(&path, m.encode()).unwrap();
    let (out, e) = read_failing(&t, &cfg, "w.bin");
    assert!(e.to_string().contains("the manifest says"), "{e}");
    assert!(out.is_empty(), "no byte of a misplaced chunk came out");
}
