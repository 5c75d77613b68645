//! Corruption sweep: flip one bit at (almost) every byte of every durable file of a small store
//! and check that the damage is either harmless or detected, and never read back as data.
//!
//! The store (~18 KB, one pack) holds files that share chunks, a compressible file (zstd
//! records), an exact copy in another experiment, an empty file, a deleted file and an updated
//! one. For every file under `packs/`, `manifests/` and `events/`, and `FORMAT` (not `index/`,
//! which is derived, nor `lock`), each byte (every 7th in files of 8 KiB or more, at another
//! phase in the second pass) is XORed with 0x01, then in a second pass with 0x80. After each
//! flip a fresh `Store` runs `verify` and reads live versions back (through the parallel
//! download path and through `Read`): those that read the damaged bytes (their manifest, the
//! records of their chunks, or FORMAT), and all of them at every 20th flip.
//!
//! - harmless: verify is ok and every live version reads back exactly;
//! - detected: verify is not ok (or the store refuses to open), and every live version that no
//!   longer reads back is named in `damaged_files`, or a problem names the damaged file;
//! - a read never returns wrong bytes: exactly the uploaded bytes, or an error.
//!
//! The byte is restored after each check. The flips are shared among worker threads, each on
//! its own copy of the store (a session costs an fsync: the sweep is I/O-bound).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ml_dash::ChunkerConfig;
use ml_dash::{ExperimentKey, FileKey};
use ml_dash::{NewVersion, Store, StoreOptions};

use crate::util::*;

fn options() -> StoreOptions {
    StoreOptions::default().chunker(ChunkerConfig {
        min: 256,
        avg: 1024,
        max: 4096,
        ..ChunkerConfig::default()
    })
}

fn key(exp: &str, prefix: &str, name: &str) -> FileKey {
    ExperimentKey::new("local", "proj", exp)
        .unwrap()
        .file(prefix.into(), name.into())
}

/// A live version and the bytes it must read back as.
struct Live {
    key: FileKey,
    version: u32,
    data: Vec<u8>,
    /// `ns/project/experiment/path/name vN`, as verify names damaged files.
    name: String,
    /// Its manifest, relative to the store root.
    manifest: PathBuf,
}

struct Small {
    _dir: tempfile::TempDir,
    root: PathBuf,
    live: Vec<Live>,
    /// The deleted version's manifest (relative): damage there affects no live file.
    deleted_manifest: PathBuf,
}

fn text(len: usize) -> Vec<u8> {
    let mut s = String::new();
    let mut i = 0u64;
    while s.len() < len {
        s.push_str(&format!(
            "epoch {i:04} loss {:.4} acc {:.3}\n",
            1.0 / (i + 1) as f64,
            i as f64 / 1e3
        ));
        i += 1;
    }
    s.truncate(len);
    s.into_bytes()
}

/// A few files: two versions sharing most chunks, a shifted copy, a compressible file, an exact
/// copy in another experiment, an empty file, a deleted file and an updated one.
fn build_small_store() -> Small {
    let dir = tmp();
    let root = dir.path().join("store");
    let store = Store::open_with(&root, options()).unwrap();
    let mut live = Vec::new();
    let put = |k: FileKey, data: Vec<u8>, live: &mut Vec<Live>| {
        let r = store
            .put_reader(&data[..], &k, NewVersion::default(), None)
            .unwrap();
        assert_eq!(r.checksum.to_hex(), sha256_hex(&data));
        live.push(Live {
            name: format!("{} v{}", k.display(), r.version),
            key: k,
            version: r.version,
            data,
            manifest: Path::new("manifests")
                .join(ml_dash::testing::manifest::manifest_file_name(r.id)),
        });
        r
    };
    let a = random_bytes(1, 4_000);
    let mut a2 = a.clone();
    for b in &mut a2[2_000..2_040] {
        *b ^= 0xff;
    }
    let mut shifted = random_bytes(2, 97);
    shifted.extend_from_slice(&a);
    put(key("e", "/models", "a.bin"), a.clone(), &mut live);
    put(key("e", "/models", "a.bin"), a2, &mut live);
    put(key("e", "/logs", "train.txt"), text(5_000), &mut live);
    put(key("e", "/", "shifted.bin"), shifted, &mut live);
    let copy = put(key("other", "/", "copy.bin"), a, &mut live);
    assert_eq!(copy.new_bytes, 0, "an exact copy adds no bytes");
    put(key("e", "/", "empty.bin"), Vec::new(), &mut live);
    let upd = put(
        key("e", "/", "meta.json"),
        random_bytes(3, 2_000),
        &mut live,
    );
    store
        .update(
            upd.id,
            &ml_dash::RecordChanges {
                description: Some(Some("updated".into())),
                tags: Some(vec!["best".into()]),
                metadata: Some(serde_json::json!({"score": 0.5})),
            },
        )
        .unwrap();
    let gone = key("e", "/logs", "gone.log");
    let g = store
        .put_reader(
            &random_bytes(4, 1_500)[..],
            &gone,
            NewVersion::default(),
            None,
        )
        .unwrap();
    store.delete(&gone).unwrap();
    let deleted_manifest =
        Path::new("manifests").join(ml_dash::testing::manifest::manifest_file_name(g.id));
    assert!(root.join(&deleted_manifest).exists());

    let rep = store.verify().unwrap();
    assert!(rep.ok, "{rep:?}");
    let packs = pack_files(&root);
    assert_eq!(packs.len(), 1, "one pack");
    let records = pack_records(&packs[0]);
    assert!(records.iter().any(|r| r.codec == 1), "some zstd records");
    assert!(records.iter().any(|r| r.codec == 0), "some raw records");
    Small {
        _dir: dir,
        root,
        live,
        deleted_manifest,
    }
}

/// Every durable data file of a store, relative to its root: FORMAT, packs, manifests, events.
fn data_files(root: &Path) -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("FORMAT")];
    for d in ["packs", "manifests", "events"] {
        let mut files: Vec<PathBuf> = fs::read_dir(root.join(d))
            .unwrap()
            .map(|e| Path::new(d).join(e.unwrap().file_name()))
            .collect();
        files.sort();
        v.extend(files);
    }
    v
}

fn kind_of(rel: &Path) -> &'static str {
    match rel.components().next() {
        Some(c) if c.as_os_str() == "packs" => "pack",
        Some(c) if c.as_os_str() == "manifests" => "manifest",
        Some(c) if c.as_os_str() == "events" => "event",
        _ => "FORMAT",
    }
}

fn xor_at(path: &Path, offset: u64, mask: u8) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, offset).unwrap();
}

/// Copy a directory tree (the store, index included, while nothing has it open).
fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Which live versions read which bytes: a live version reads its manifest, the records of its
/// chunks, and (opening the store) FORMAT. Nothing reads events or the pack header on the
/// read path; verify checks those.
struct Readers {
    all: Vec<usize>,
    manifests: BTreeMap<PathBuf, usize>,
    /// Per pack: record ranges `[start, end)` and the live versions holding that chunk.
    records: BTreeMap<PathBuf, Vec<(u64, u64, Vec<usize>)>>,
}

impl Readers {
    fn new(s: &Small) -> Readers {
        let mut chunks_of: Vec<Vec<[u8; 32]>> = Vec::new();
        let mut manifests = BTreeMap::new();
        for (i, l) in s.live.iter().enumerate() {
            let bytes = fs::read(s.root.join(&l.manifest)).unwrap();
            let m = ml_dash::testing::manifest::Manifest::decode(&bytes, "test").unwrap();
            chunks_of.push(m.chunks.iter().map(|(id, _)| *id.as_bytes()).collect());
            manifests.insert(l.manifest.clone(), i);
        }
        let mut records = BTreeMap::new();
        for p in pack_files(&s.root) {
            let b = fs::read(&p).unwrap();
            let recs = pack_records(&p)
                .into_iter()
                .map(|r| {
                    let id: [u8; 32] = b[usize_from(r.offset) + 16..usize_from(r.offset) + 48]
                        .try_into()
                        .unwrap();
                    let users = (0..s.live.len())
                        .filter(|&i| chunks_of[i].contains(&id))
                        .collect();
                    (r.offset, r.end(), users)
                })
                .collect();
            records.insert(p.strip_prefix(&s.root).unwrap().to_path_buf(), recs);
        }
        Readers {
            all: (0..s.live.len()).collect(),
            manifests,
            records,
        }
    }

    fn of(&self, rel: &Path, offset: u64) -> Vec<usize> {
        match kind_of(rel) {
            "FORMAT" => self.all.clone(),
            "manifest" => self
                .manifests
                .get(rel)
                .map(|&i| vec![i])
                .unwrap_or_default(),
            "pack" => self.records[rel]
                .iter()
                .find(|(a, b, _)| (*a..*b).contains(&offset))
                .map(|(_, _, users)| users.clone())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
struct Flip {
    rel: PathBuf,
    offset: u64,
    mask: u8,
    pass: u8,
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Harmless,
    /// Harmless for every live file, but verify does not report the damaged file.
    HarmlessSilent,
    Detected,
    RefusedToOpen,
}

#[derive(Default)]
struct Counts {
    tried: usize,
    by_kind: BTreeMap<(&'static str, &'static str), usize>,
    reads: usize,
    /// Violations, one description each.
    wrong_bytes: Vec<String>,
    undetected: Vec<String>,
    unnamed: Vec<String>,
}

impl Counts {
    fn merge(&mut self, o: Counts) {
        self.tried += o.tried;
        self.reads += o.reads;
        for (k, n) in o.by_kind {
            *self.by_kind.entry(k).or_default() += n;
        }
        self.wrong_bytes.extend(o.wrong_bytes);
        self.undetected.extend(o.undetected);
        self.unnamed.extend(o.unnamed);
    }
    fn total(&self, outcome: &str) -> usize {
        self.by_kind
            .iter()
            .filter(|((_, o), _)| o.starts_with(outcome))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Check the store at `root` after one flip; `readers` are the live versions to read back.
fn check_flip(root: &Path, s: &Small, f: &Flip, readers: &[usize], counts: &mut Counts) -> Outcome {
    let what = format!(
        "pass {}: {} byte {} ^ {:#04x}",
        f.pass,
        f.rel.display(),
        f.offset,
        f.mask
    );
    let Ok(store) = Store::open_with(root, options()) else {
        return Outcome::RefusedToOpen;
    };
    let report = store.verify();
    let mut failed: Vec<&Live> = Vec::new();
    for &i in readers {
        let l = &s.live[i];
        counts.reads += 1;
        let Ok(r) = store.open_file(&l.key, Some(l.version)) else {
            failed.push(l);
            continue;
        };
        // The parallel download path, then the `Read` impl of the same reader.
        let via_copy = ml_dash::testing::read_all(&r).map_err(|e| e.to_string());
        let mut r = r;
        let mut buf = Vec::new();
        let via_read = r
            .read_to_end(&mut buf)
            .map(|_| buf)
            .map_err(|e| e.to_string());
        let mut broke = false;
        for (how, got) in [("download", via_copy), ("Read", via_read)] {
            match got {
                Ok(bytes) if bytes == l.data => {}
                Ok(bytes) => counts.wrong_bytes.push(format!(
                    "{what}: {} read via {how} returned {} wrong bytes (want {}) without an error",
                    l.name,
                    bytes.len(),
                    l.data.len()
                )),
                Err(_) => broke = true,
            }
        }
        if broke {
            failed.push(l);
        }
    }
    // verify refusing to run on damaged data is a detection, if a loud one.
    let Ok(rep) = report else {
        return Outcome::Detected;
    };
    if rep.ok {
        if !failed.is_empty() {
            counts.undetected.push(format!(
                "{what}: verify ok, but {:?} no longer read back",
                failed.iter().map(|l| &l.name).collect::<Vec<_>>()
            ));
        }
        return if f.rel == s.deleted_manifest {
            Outcome::HarmlessSilent
        } else {
            Outcome::Harmless
        };
    }
    let file_name = f.rel.file_name().unwrap().to_string_lossy().into_owned();
    for l in failed {
        let named = rep
            .damaged_files
            .iter()
            .any(|d| d == &l.name || d.starts_with(&format!("{}:", l.name)))
            || rep.problems.iter().any(|p| p.contains(&file_name));
        if !named {
            counts.unnamed.push(format!(
                "{what}: {} does not read back but verify names neither it nor {file_name}: \
                 {rep:?}",
                l.name
            ));
        }
    }
    Outcome::Detected
}

/// Flip, check, restore, for every flip of `flips` on the store copy at `root`.
fn sweep_part(root: &Path, s: &Small, readers: &Readers, flips: &[(usize, Flip)]) -> Counts {
    let mut counts = Counts::default();
    for (n, f) in flips {
        let path = root.join(&f.rel);
        // Every 20th flip reads every live version, not only those that read the damaged
        // bytes: a check that reads go nowhere else.
        let who = if n % 20 == 0 {
            readers.all.clone()
        } else {
            readers.of(&f.rel, f.offset)
        };
        xor_at(&path, f.offset, f.mask);
        let outcome = check_flip(root, s, f, &who, &mut counts);
        xor_at(&path, f.offset, f.mask);
        counts.tried += 1;
        let o = match outcome {
            Outcome::Harmless => "harmless",
            Outcome::HarmlessSilent => "harmless (deleted version's manifest; verify silent)",
            Outcome::Detected => "detected",
            Outcome::RefusedToOpen => "detected (the store refuses to open)",
        };
        *counts.by_kind.entry((kind_of(&f.rel), o)).or_default() += 1;
    }
    counts
}

/// All flips: every byte of files under 8 KiB, every 7th byte of larger ones (at phase 0 for
/// the 0x01 pass and 3 for the 0x80 pass).
fn all_flips(root: &Path) -> Vec<Flip> {
    let mut v = Vec::new();
    for (pass, mask, phase) in [(1u8, 0x01u8, 0u64), (2, 0x80, 3)] {
        for rel in data_files(root) {
            let len = fs::metadata(root.join(&rel)).unwrap().len();
            let offsets: Vec<u64> = if len < 8 * 1024 {
                (0..len).collect()
            } else {
                (phase..len).step_by(7).collect()
            };
            for offset in offsets {
                v.push(Flip {
                    rel: rel.clone(),
                    offset,
                    mask,
                    pass,
                });
            }
        }
    }
    v
}

#[test]
fn every_bit_flip_is_harmless_or_detected_and_never_read_back() {
    let started = std::time::Instant::now();
    let s = build_small_store();
    let readers = Readers::new(&s);
    let files = data_files(&s.root);
    let total: u64 = files
        .iter()
        .map(|f| fs::metadata(s.root.join(f)).unwrap().len())
        .sum();
    let flips: Vec<(usize, Flip)> = all_flips(&s.root).into_iter().enumerate().collect();
    let before = snapshot_durable(&s.root);

    // Independent copies of the store, one per worker thread.
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(8, 8);
    let copies: Vec<PathBuf> = (0..workers)
        .map(|w| {
            let c = s.root.with_file_name(format!("copy-{w}"));
            copy_tree(&s.root, &c);
            c
        })
        .collect();
    let mut counts = Counts::default();
    std::thread::scope(|sc| {
        let handles: Vec<_> = copies
            .iter()
            .enumerate()
            .map(|(w, root)| {
                let mine: Vec<(usize, Flip)> = flips
                    .iter()
                    .filter(|(n, _)| n % workers == w)
                    .cloned()
                    .collect();
                let (s, readers) = (&s, &readers);
                sc.spawn(move || sweep_part(root, s, readers, &mine))
            })
            .collect();
        for h in handles {
            counts.merge(h.join().expect("sweep worker"));
        }
    });

    eprintln!(
        "corruption sweep: {} files, {total} bytes; {} flips tried: {} harmless, {} detected \
         ({:.1} s, {workers} workers, {} version reads)\n  by file kind and outcome: {:#?}\n  \
         wrong bytes returned: {}; live file broken but verify ok: {}; broken live file not \
         named: {}",
        files.len(),
        counts.tried,
        counts.total("harmless"),
        counts.total("detected"),
        started.elapsed().as_secs_f64(),
        counts.reads,
        counts.by_kind,
        counts.wrong_bytes.len(),
        counts.undetected.len(),
        counts.unnamed.len(),
    );

    // Every byte was restored: each copy is exactly the original, and healthy.
    for c in &copies {
        assert_eq!(snapshot_durable(c), before, "the sweep restored every byte");
        let rep = Store::open_with(c, options()).unwrap().verify().unwrap();
        assert!(rep.ok, "{rep:?}");
    }
    assert_eq!(counts.tried, flips.len());
    let first = |v: &Vec<String>| v.iter().take(5).cloned().collect::<Vec<_>>().join("\n  ");
    assert!(
        counts.wrong_bytes.is_empty(),
        "{} flips made a read return wrong bytes without an error:\n  {}",
        counts.wrong_bytes.len(),
        first(&counts.wrong_bytes)
    );
    assert!(
        counts.undetected.is_empty(),
        "{} flips broke a live file that verify calls healthy:\n  {}",
        counts.undetected.len(),
        first(&counts.undetected)
    );
    assert!(
        counts.unnamed.is_empty(),
        "{} flips broke a live file that verify does not name:\n  {}",
        counts.unnamed.len(),
        first(&counts.unnamed)
    );
    assert!(counts.total("detected") > counts.tried / 2);
}

/// `verify` checks "every pack, every manifest and every record": a damaged manifest of a
/// deleted version (still in the index until gc) must be reported like damage anywhere else
/// that affects no live file (a garbage chunk, a damaged event, or the same manifest once gc
/// has dropped the version from the index are all reported as problems).
#[test]
fn verify_reports_a_damaged_manifest_of_a_deleted_version() {
    let s = build_small_store();
    let path = s.root.join(&s.deleted_manifest);
    let len = fs::metadata(&path).unwrap().len();
    xor_at(&path, len / 2, 0x01);
    let rep = Store::open_with(&s.root, options())
        .unwrap()
        .verify()
        .unwrap();
    assert!(
        !rep.ok,
        "verify calls the store healthy although {} is damaged: {rep:?}",
        s.deleted_manifest.display()
    );
}
