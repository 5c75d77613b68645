//! Damage, then `repair` and `gc`: every file that reads back before the repair still reads
//! back after repair and gc, and no read ever returns wrong bytes.
//!
//! Once per process, four small stores are built (small chunks; 6 files over 3 packs, a new
//! pack after each rebuild; some files share chunks, a checkpoint is stored as deltas two deep,
//! the variants delete different files and one ran gc). Each run copies one of them and
//! applies the damage the input chooses: bit flips, overwritten ranges (also in record
//! headers), truncation and appended garbage in packs (or a copy of another record, or a
//! validly framed record claiming a live chunk with other bytes, whole or delta); deleted,
//! damaged or swapped manifests and events; packs swapped, renamed or deleted; the index
//! deleted; a directory or a short file named like a pack. The files that read back (a fresh
//! `Store`) are noted, each checked byte-exact. Then `rebuild_index` (on failure the same
//! files must still read back), `gc` (threshold from the input; `drop_unreferenced` only when
//! the rebuild found nothing unreferenced), and the check: each noted file still reads back,
//! anything that reads is byte-exact. Sometimes a second repair and gc follow, and every file
//! is uploaded again (must succeed and read back). `verify` must not panic.
#![no_main]
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ml_dash::ChunkId;
use ml_dash::ChunkerConfig;
use ml_dash::GcOptions;
use ml_dash::Id;
use ml_dash::testing::codec::Codec;
use ml_dash::testing::pack::{self, RecordHeader};
use ml_dash::testing::packs;
use ml_dash::{ExperimentKey, FileKey};
use ml_dash::{NewVersion, Store, StoreOptions};

/// Scratch directories: in memory when possible (every commit fsyncs; on a disk that is
/// most of the time).
fn scratch() -> tempfile::TempDir {
    match std::path::Path::new("/dev/shm") {
        p if p.is_dir() => tempfile::tempdir_in(p).unwrap_or_else(|_| tempfile::tempdir().unwrap()),
        _ => tempfile::tempdir().unwrap(),
    }
}

fn opts() -> StoreOptions {
    StoreOptions::default()
        .chunker(ChunkerConfig {
            min: 128,
            avg: 512,
            max: 2048,
            ..ChunkerConfig::default()
        })
        .pack_target(1 << 20)
        .lock_timeout(std::time::Duration::from_secs(5))
}

fn rnd(seed: u64, len: usize) -> Vec<u8> {
    ml_dash::testing::random_bytes(seed, len)
}

/// A safetensors file with one F32 tensor of 1,024 values, `state` steps along.
fn checkpoint(state: u32) -> Vec<u8> {
    let mut header = br#"{"w":{"dtype":"F32","shape":[1024],"data_offsets":[0,4096]}}"#.to_vec();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    let noise = rnd(77, 1024);
    for i in 0..1024 {
        let v = ((i as f32) * 0.37).sin() * 0.05
            + state as f32 * 1e-5 * (noise[i] as f32 - 127.5) / 128.0;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// One version of a template store: key, number, bytes, live?
struct Version {
    key: FileKey,
    version: u32,
    bytes: Vec<u8>,
    live: bool,
}

struct Template {
    /// Relative path → bytes of every file of the store (index included).
    files: Vec<(String, Vec<u8>)>,
    versions: Vec<Version>,
}

fn read_tree(dir: &Path, rel: &str, out: &mut Vec<(String, Vec<u8>)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir.join(rel))
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = format!("{rel}{}", e.file_name().to_string_lossy());
        if e.file_type().unwrap().is_dir() {
            read_tree(dir, &format!("{name}/"), out);
        } else {
            out.push((name, std::fs::read(e.path()).unwrap()));
        }
    }
}

fn build(variant: usize) -> Template {
    let dir = scratch();
    let root = dir.path().join("s");
    let store = Store::open_with(&root, opts()).unwrap();
    let exp = ExperimentKey::new("local", "p", "e").unwrap();
    let key = |p: &str, n: &str| exp.file(p.into(), n.into());
    let a1 = rnd(1, 2000);
    let mut a2 = a1.clone();
    a2[900..1100].copy_from_slice(&rnd(9, 200));
    let b = [&a1[..1000], &rnd(2, 1200)[..]].concat();
    let d = [rnd(2, 1200), rnd(4, 500)].concat();
    let groups: [Vec<(FileKey, Vec<u8>)>; 3] = [
        vec![
            (key("/f", "a.bin"), a1),
            (key("/ck", "m.safetensors"), checkpoint(0)),
        ],
        vec![
            (key("/f", "b.bin"), b),
            (key("/ck", "m.safetensors"), checkpoint(1)),
            (key("/f", "c.bin"), rnd(3, 300)),
        ],
        vec![
            (key("/f", "a.bin"), a2),
            (key("/ck", "m.safetensors"), checkpoint(2)),
            (key("/g", "d.bin"), d),
        ],
    ];
    let mut versions = Vec::new();
    for (i, g) in groups.into_iter().enumerate() {
        if i > 0 {
            // A rebuilt index has no pack open for appends: the next upload starts a new one.
            store.rebuild_index().unwrap();
        }
        for (k, bytes) in g {
            let r = store
                .put_reader(&bytes[..], &k, NewVersion::default(), None)
                .unwrap();
            versions.push(Version {
                key: k,
                version: r.version,
                bytes,
                live: true,
            });
        }
    }
    let mut deltas = 0;
    for e in std::fs::read_dir(root.join("packs")).unwrap() {
        let p = e.unwrap().path();
        let id = pack::parse_pack_file_name(p.file_name().unwrap().to_str().unwrap()).unwrap();
        packs::scan(&p, id, true, |r| {
            deltas += (r.header.codec == Codec::Delta && r.data_ok == Some(true)) as usize
        })
        .unwrap();
    }
    assert!(deltas >= 2, "{deltas} delta records");
    let deleted: &[(&str, &str)] = match variant {
        0 => &[],
        1 => &[("/f", "c.bin")],
        2 => &[("/f", "a.bin")],
        _ => &[("/ck", "m.safetensors"), ("/f", "c.bin")],
    };
    for (p, n) in deleted {
        store.delete(&key(p, n)).unwrap();
        for v in versions.iter_mut().filter(|v| v.key == key(p, n)) {
            v.live = false;
        }
    }
    if variant == 3 {
        store
            .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
            .unwrap();
    }
    assert!(store.verify().unwrap().ok);
    let packs = std::fs::read_dir(root.join("packs")).unwrap().count();
    assert!(packs >= 2, "variant {variant}: {packs} packs");
    drop(store);
    let mut files = Vec::new();
    read_tree(&root, "", &mut files);
    Template { files, versions }
}

fn templates() -> &'static [Template] {
    static T: OnceLock<Vec<Template>> = OnceLock::new();
    T.get_or_init(|| (0..4).map(build).collect())
}

/// The input, read front to back; zeros once it runs out.
struct In<'a>(&'a [u8]);

impl In<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { self.u16() as usize % n }
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.u8() as usize).min(max).min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Offsets of the records in a pack (headers only; damage stops the walk).
fn record_offsets(p: &Path) -> Vec<(u64, RecordHeader)> {
    let mut out = Vec::new();
    let Some(id) = p
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(pack::parse_pack_file_name)
    else {
        return out;
    };
    if p.is_file() {
        let _ = packs::scan(p, id, false, |r| out.push((r.offset, r.header)));
    }
    out
}

fn pack_name(id: Id) -> String {
    pack::pack_file_name(id)
}

/// Apply one kind of damage the input chooses to the store at `root`.
fn damage(inp: &mut In, root: &Path) {
    let packs = files_in(&root.join("packs"));
    let manifests = files_in(&root.join("manifests"));
    let events = files_in(&root.join("events"));
    let pick = |inp: &mut In, v: &[PathBuf]| -> Option<PathBuf> {
        (!v.is_empty()).then(|| v[inp.below(v.len())].clone())
    };
    let read = |p: &Path| std::fs::read(p).unwrap_or_default();
    let write = |p: &Path, b: &[u8]| {
        let _ = std::fs::write(p, b);
    };
    match inp.u8() % 16 {
        0 | 1 => {
            // Flip a bit: anywhere, or in a record header, or in a record's data.
            let Some(p) = pick(inp, &packs) else { return };
            let mut b = read(&p);
            if b.is_empty() {
                return;
            }
            let recs = record_offsets(&p);
            let at = match (inp.u8() % 3, recs.is_empty()) {
                (0, false) => {
                    let (off, _) = recs[inp.below(recs.len())];
                    off as usize + inp.below(pack::RECORD_HEADER_LEN)
                }
                (1, false) => {
                    let (off, h) = recs[inp.below(recs.len())];
                    off as usize + pack::RECORD_HEADER_LEN + inp.below(h.stored_len as usize)
                }
                _ => inp.below(b.len()),
            };
            if at < b.len() {
                b[at] ^= 1 << (inp.u8() % 8);
                write(&p, &b);
            }
        }
        2 => {
            let Some(p) = pick(inp, &packs) else { return };
            let mut b = read(&p);
            let at = inp.below(b.len() + 1);
            let data = inp.bytes(64);
            if b.len() < at + data.len() {
                b.resize(at + data.len(), 0);
            }
            b[at..at + data.len()].copy_from_slice(&data);
            write(&p, &b);
        }
        3 => {
            // Truncate: anywhere, or at a record boundary.
            let Some(p) = pick(inp, &packs) else { return };
            let b = read(&p);
            let recs = record_offsets(&p);
            let keep = if inp.u8() % 2 == 0 && !recs.is_empty() {
                recs[inp.below(recs.len())].0 as usize
            } else {
                inp.below(b.len() + 1)
            };
            write(&p, &b[..keep.min(b.len())]);
        }
        4 => {
            // Append: garbage, a copy of a record of another pack, or a validly framed record
            // that claims a chunk of this store with other bytes (whole, or a delta with a
            // valid header and inner checksum).
            let Some(p) = pick(inp, &packs) else { return };
            let mut b = read(&p);
            match inp.u8() % 4 {
                0 => b.extend_from_slice(&inp.bytes(255)),
                1 => {
                    let Some(q) = pick(inp, &packs) else { return };
                    let qb = read(&q);
                    let recs = record_offsets(&q);
                    if recs.is_empty() {
                        return;
                    }
                    let (off, h) = recs[inp.below(recs.len())];
                    let end = off as usize + pack::RECORD_HEADER_LEN + h.stored_len as usize;
                    b.extend_from_slice(&qb[off as usize..end.min(qb.len())]);
                }
                k => {
                    let all: Vec<RecordHeader> = packs
                        .iter()
                        .flat_map(|q| record_offsets(q))
                        .map(|r| r.1)
                        .collect();
                    if all.is_empty() {
                        return;
                    }
                    let h = all[inp.below(all.len())];
                    let mut data = inp.bytes(255);
                    let (codec, stored) = if k == 2 {
                        data.resize(h.raw_len as usize, 0);
                        (Codec::Raw, data)
                    } else {
                        let base = all[inp.below(all.len())].id;
                        let mut s = base.as_bytes().to_vec();
                        s.extend_from_slice(&[1 + inp.u8() % 3, inp.u8() % 3, 0, 0]);
                        if inp.u8() % 2 == 0 {
                            data.resize(h.raw_len as usize, 0);
                        }
                        s.extend_from_slice(&blake3::hash(&data).as_bytes()[..16]);
                        s.extend_from_slice(&data);
                        (Codec::Delta, s)
                    };
                    let rh = RecordHeader {
                        codec,
                        raw_len: h.raw_len,
                        stored_len: stored.len() as u32,
                        id: h.id,
                    };
                    b.extend_from_slice(&pack::encode_record_header(&rh));
                    b.extend_from_slice(&stored);
                }
            }
            write(&p, &b);
        }
        5 => {
            // Manifests: delete, flip a bit, truncate.
            let Some(p) = pick(inp, &manifests) else {
                return;
            };
            match inp.u8() % 3 {
                0 => {
                    let _ = std::fs::remove_file(&p);
                }
                1 => {
                    let mut b = read(&p);
                    if !b.is_empty() {
                        let at = inp.below(b.len());
                        b[at] ^= 1 << (inp.u8() % 8);
                        write(&p, &b);
                    }
                }
                _ => {
                    let b = read(&p);
                    let keep = inp.below(b.len() + 1);
                    write(&p, &b[..keep]);
                }
            }
        }
        6 => {
            // Two manifests (or events) swap names.
            let list = if inp.u8() % 2 == 0 {
                &manifests
            } else {
                &events
            };
            let (Some(a), Some(b)) = (pick(inp, list), pick(inp, list)) else {
                return;
            };
            let (ab, bb) = (read(&a), read(&b));
            write(&a, &bb);
            write(&b, &ab);
        }
        7 => {
            let Some(p) = pick(inp, &events) else { return };
            if inp.u8() % 2 == 0 {
                let _ = std::fs::remove_file(&p);
            } else {
                let mut b = read(&p);
                if !b.is_empty() {
                    let at = inp.below(b.len());
                    b[at] ^= 1 << (inp.u8() % 8);
                    write(&p, &b);
                }
            }
        }
        8 => {
            // Two packs swap names.
            let (Some(a), Some(b)) = (pick(inp, &packs), pick(inp, &packs)) else {
                return;
            };
            let tmp = root.join("packs").join("swap.tmp");
            let _ = std::fs::rename(&a, &tmp);
            let _ = std::fs::rename(&b, &a);
            let _ = std::fs::rename(&tmp, &b);
        }
        9 => {
            // A pack renamed: to a new id, or out of the way.
            let Some(p) = pick(inp, &packs) else { return };
            let to = if inp.u8() % 2 == 0 {
                root.join("packs").join(pack_name(Id::generate()))
            } else {
                root.join("packs").join("old.pack.bak")
            };
            let _ = std::fs::rename(&p, to);
        }
        10 => {
            let Some(p) = pick(inp, &packs) else { return };
            let _ = std::fs::remove_file(&p);
        }
        11 => {
            let _ = std::fs::remove_dir_all(root.join("index"));
        }
        12 => {
            // Something named like a pack that is not one: a directory, an empty file, a
            // file shorter than a pack header, a header alone.
            let p = root.join("packs").join(pack_name(Id::generate()));
            match inp.u8() % 4 {
                0 => {
                    let _ = std::fs::create_dir(&p);
                }
                1 => write(&p, b""),
                2 => write(&p, b"MLDPACK\0"),
                _ => {
                    let id = pack::parse_pack_file_name(p.file_name().unwrap().to_str().unwrap())
                        .unwrap();
                    let mut h = b"MLDPACK\0".to_vec();
                    h.extend_from_slice(&1u32.to_le_bytes());
                    h.extend_from_slice(&0u32.to_le_bytes());
                    h.extend_from_slice(&id.0);
                    write(&p, &h);
                }
            }
        }
        13 => {
            // A pack's content replaced by another pack's (a restore from the wrong backup).
            let (Some(a), Some(b)) = (pick(inp, &packs), pick(inp, &packs)) else {
                return;
            };
            let bb = read(&b);
            write(&a, &bb);
        }
        14 => {
            // A record header's length fields rewritten with a valid header checksum.
            let Some(p) = pick(inp, &packs) else { return };
            let recs = record_offsets(&p);
            if recs.is_empty() {
                return;
            }
            let (off, mut h) = recs[inp.below(recs.len())];
            match inp.u8() % 4 {
                0 => h.stored_len = h.stored_len.wrapping_add(inp.u8() as u32).wrapping_sub(128),
                1 => h.raw_len = h.raw_len.wrapping_add(inp.u8() as u32).wrapping_sub(128),
                2 => h.codec = Codec::from_u8(inp.u8() % 5).unwrap(),
                _ => {
                    let all: Vec<ChunkId> = packs
                        .iter()
                        .flat_map(|q| record_offsets(q))
                        .map(|r| r.1.id)
                        .collect();
                    h.id = all[inp.below(all.len())];
                }
            }
            let mut b = read(&p);
            b[off as usize..off as usize + pack::RECORD_HEADER_LEN]
                .copy_from_slice(&pack::encode_record_header(&h));
            write(&p, &b);
        }
        _ => {
            // Garbage appended to a manifest or an event.
            let list = if inp.u8() % 2 == 0 {
                &manifests
            } else {
                &events
            };
            let Some(p) = pick(inp, list) else { return };
            let mut b = read(&p);
            b.extend_from_slice(&inp.bytes(64));
            write(&p, &b);
        }
    }
}

/// Which versions read back (deleted ones may come back when their delete event is damaged),
/// each checked byte-exact if it reads at all; with `thorough`, through `download_to` too.
/// (Each read opens the index: the checks are spread over the phases.)
fn readable(root: &Path, t: &Template, thorough: bool, when: &str) -> Vec<bool> {
    let Ok(store) = Store::open_existing_with(root, opts()) else {
        return vec![false; t.versions.len()];
    };
    t.versions
        .iter()
        .map(|v| {
            let Ok(mut r) = store.open_file(&v.key, Some(v.version)) else {
                return false;
            };
            let mut got = Vec::new();
            if r.read_to_end(&mut got).is_err() {
                return false;
            }
            assert!(
                got == v.bytes,
                "{} v{} {when}: wrong bytes ({} read, {} expected)",
                v.key.display(),
                v.version,
                got.len(),
                v.bytes.len()
            );
            if thorough {
                let mut again = Vec::new();
                if store
                    .download_to(&v.key, Some(v.version), &mut again)
                    .is_ok()
                {
                    assert!(
                        again == v.bytes,
                        "{} v{} {when}: download_to: wrong bytes",
                        v.key.display(),
                        v.version
                    );
                }
            }
            true
        })
        .collect()
}

#[track_caller]
fn still_readable(before: &[bool], after: &[bool], t: &Template, when: &str) {
    let lost: Vec<String> = t
        .versions
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| **b && !**a)
        .map(|(v, _)| format!("{} v{}", v.key.display(), v.version))
        .collect();
    assert!(lost.is_empty(), "read back before, lost {when}: {lost:?}");
}

fuzz_target!(|data: &[u8]| {
    let all = templates();
    let mut inp = In(data);
    let flags = inp.u8();
    let t = &all[(flags % 4) as usize];
    let dir = scratch();
    let root = dir.path().join("s");
    for (rel, b) in &t.files {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b).unwrap();
    }
    for _ in 0..8 {
        if inp.is_empty() {
            break;
        }
        damage(&mut inp, &root);
    }
    let before = readable(&root, t, false, "after the damage");
    let store = Store::open_existing_with(&root, opts()).unwrap();
    let threshold = [0.0, 0.5, 1.0][(flags as usize >> 2) % 3];
    let rounds = 1 + ((flags >> 4) & 1) as usize;
    let mut repaired = false;
    for round in 1..=rounds {
        let last = round == rounds;
        repaired = false;
        match store.rebuild_index() {
            Ok(rep) => {
                repaired = true;
                let drop = flags & 0x20 != 0 && rep.unreferenced.is_empty();
                let _ = store.gc(
                    &GcOptions::new()
                        .rewrite_threshold(threshold)
                        .drop_unreferenced(drop),
                );
            }
            Err(e) => {
                let after = readable(&root, t, false, "after a failed repair");
                still_readable(&before, &after, t, &format!("after a failed repair ({e})"));
                let _ = store.gc(&ml_dash::GcOptions::new().rewrite_threshold(threshold));
            }
        }
        let after = readable(&root, t, last, "after repair and gc");
        still_readable(&before, &after, t, "after repair and gc");
    }
    if flags & 0x40 != 0 && repaired {
        // After a repair, uploading every file again must work and read back, whatever the
        // damage left.
        let store = Store::open_existing_with(&root, opts()).unwrap();
        let mut seen = HashSet::new();
        for v in t.versions.iter().rev() {
            // The latest bytes of each path.
            if !seen.insert(v.key.clone()) {
                continue;
            }
            let r = store
                .put_reader(&v.bytes[..], &v.key, NewVersion::default(), None)
                .unwrap_or_else(|e| panic!("upload of {} after repair: {e}", v.key.display()));
            let what = format!("{} v{} uploaded after repair", v.key.display(), r.version);
            let mut f = store
                .open_file(&v.key, Some(r.version))
                .unwrap_or_else(|e| panic!("{what}: does not open: {e}"));
            let mut got = Vec::new();
            f.read_to_end(&mut got)
                .unwrap_or_else(|e| panic!("{what}: read fails: {e}"));
            assert!(got == v.bytes, "{what}: wrong bytes");
        }
    }
    if let Ok(s) = Store::open_existing_with(&root, opts()) {
        let _ = s.verify();
    }
});
