//! Out-of-process crash loop, in the spirit of sled's crash tests.
//!
//! The parent test re-runs this test binary as a child (`crash::child_worker`, selected by
//! `ML_DASH_CRASH_CHILD`) that does real store work in a loop: uploads of new, repeated,
//! shifted and compressible data (0..3 MiB), batches of 2-5 files committed together (a path
//! may appear twice in one), new versions of the same paths, deletes, metadata updates and
//! `gc`. Around every operation the child journals a `begin` line, and after the
//! operation returned success an `ack` line (each line written and fsynced) before the next
//! operation starts. The parent SIGKILLs the child, in turn: after a random delay (0..300 ms);
//! at a random point of one of its first uploads (of mostly new data, 256 KiB..3 MiB); at a
//! random point of a `gc` (threshold 0.0) that follows many small uploads and deletes; at a
//! random point of one of its first batches of uploads. The
//! kill points within an upload or a gc are drawn from the durations of earlier ones. Then the
//! parent reopens the store (library) and checks:
//!
//! - `verify` finds no damaged file and no problem (notes about torn pack tails are allowed);
//! - every acknowledged upload not deleted later is live, with its version number, its
//!   metadata and bytes that hash to the journaled SHA-256 (read with `open_file(key, Some(v))`),
//!   and its path resolves to the latest such version; version numbers are never reused;
//! - every acknowledged delete stays deleted (unless a later acknowledged upload re-created the
//!   path): deleted versions are listed deleted or gone and never open;
//! - nothing is half visible: every listed version reads back completely, with its recorded
//!   size and checksum, and no version exists that the journal does not explain (the one
//!   operation in flight at the kill may or may not have happened, but entirely or not at all:
//!   of a batch, every version or none);
//! - the store keeps working: a delete and an upload, then `verify` again.
//!
//! The store persists across iterations, so every iteration also recovers from the crashes
//! before it. Before recovery the parent inspects the on-disk state to report where the kills
//! landed (a pack longer than the index knows, chunks recorded without a version, a pending
//! commit with or without its manifest, a temp file of an atomic write, a leftover manifest of
//! an interrupted gc, ...).
//!
//! A kill occasionally leaves sled's files damaged; the store then rebuilds the index from
//! packs, manifests and events, and verify must still be clean (the two bugs this loop found on
//! that path are fixed; the deterministic tests at the end of this file pin them).
//! `index_rebuilt_after_crashes_matches_the_store` also rebuilds a copy after every kill.
//!
//! `concurrent_writers_and_gc_keep_every_acknowledged_write` runs 2-4 writer children and a
//! gc child on one store at once (uploads outside the store lock among them) and kills them
//! all, round after round; see "Concurrent writers and gc" below.
//!
//! `ML_DASH_CRASH_ITERS` sets the number of kills (default 12; the full suite runs 120) and
//! `ML_DASH_CRASH_SEED` the base seed (seeds are printed on failure; the kill timing is not
//! reproducible, so a replay walks the same operations with other kill points). Run with
//! `--nocapture` to see the summary. SIGKILL loses no page cache: this tests the crash
//! atomicity and ordering of the process, not power loss.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ml_dash::{Error, FileRecord, ListFilter, NewVersion, Store, StoreOptions};
use ml_dash::{ExperimentKey, FileKey};
use ml_dash::{Scope, testing::Index};
use serde_json::{Value, json};

use crate::util::*;

const ENV_CHILD: &str = "ML_DASH_CRASH_CHILD";
const ENV_JOURNAL: &str = "ML_DASH_CRASH_CHILD_JOURNAL";
const ENV_CHILD_SEED: &str = "ML_DASH_CRASH_CHILD_SEED";
const ENV_MODE: &str = "ML_DASH_CRASH_CHILD_MODE";
const ENV_SCRATCH: &str = "ML_DASH_CRASH_CHILD_SCRATCH";
const ENV_SPACE: &str = "ML_DASH_CRASH_CHILD_SPACE";
const ENV_POOL: &str = "ML_DASH_CRASH_CHILD_POOL";

const MIB: usize = 1 << 20;
const SIGKILL: i32 = 9;
/// Longest random delay before a kill in the mixed mode.
const MAX_KILL_DELAY_US: u64 = 300_000;

fn options() -> StoreOptions {
    // 1 MiB packs (the smallest allowed): big uploads rotate packs, and gc has many to rewrite.
    StoreOptions::default().pack_target(1 << 20)
}

fn key(exp: &str, prefix: &str, name: &str) -> FileKey {
    ExperimentKey::new("local", "crash", exp)
        .expect("valid experiment key")
        .file(prefix.into(), name.into())
}

/// The paths of the mixed workload: few, so that most uploads are new versions of a path.
fn mixed_key(i: u64) -> FileKey {
    const PATHS: [(&str, &str); 6] = [
        ("/models", "model.pth"),
        ("/models", "best.pth"),
        ("/", "config.json"),
        ("/logs/run", "train.log"),
        ("/data", "shard.npy"),
        ("/", "notes.txt"),
    ];
    let (prefix, name) = PATHS[(i % 6) as usize];
    key(if i < 6 { "e1" } else { "e2" }, prefix, name)
}

/// `mixed_key` in the experiments of one concurrent writer (`space`; empty: the mixed
/// workload's own): each writer of the concurrent loop has paths of its own, so that its journal
/// alone decides their versions.
fn space_key(space: &str, i: u64) -> FileKey {
    if space.is_empty() {
        return mixed_key(i);
    }
    let k = mixed_key(i);
    let exp = format!("{space}{}", if i < 6 { "a" } else { "b" });
    key(&exp, &k.path, &k.filename)
}

fn key_json(k: &FileKey) -> Value {
    json!({"exp": k.experiment, "prefix": k.path, "name": k.filename})
}

fn key_from_json(v: &Value) -> Result<FileKey, String> {
    let s = |f: &str| {
        v[f].as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("journal: key without {f}: {v}"))
    };
    Ok(key(&s("exp")?, &s("prefix")?, &s("name")?))
}

/// A version number in a line of a child's journal (0 when absent).
fn version_in(v: &Value) -> u32 {
    u32::try_from(v.as_u64().unwrap_or(0)).expect("a version number fits a u32")
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros()
        .try_into()
        .expect("microseconds since 1970 fit a u64 until the year 586 thousand")
}

// ---------------------------------------------------------------------------------------------
// The child.

/// Append-only journal: one JSON object per line, written and fsynced before returning.
struct Journal(File);

impl Journal {
    fn line(&mut self, mut v: Value) {
        v["t"] = json!(now_micros());
        let mut s = v.to_string();
        s.push('\n');
        // One write(2) per line: a kill cannot leave half of it (the parent ignores an
        // unterminated last line anyway).
        self.0.write_all(s.as_bytes()).expect("journal write");
        self.0.sync_data().expect("journal fsync");
    }
}

/// Data every child knows: uploading it again is an exact repeat (dedup across iterations).
fn base_data(k: u64) -> Vec<u8> {
    const LENS: [usize; 6] = [0, 1, 5_000, 700_000, 1_600_000, 3 * MIB - 7];
    random_bytes(7_000 + k, LENS[usize_from(k % 6)])
}

/// Training-log-like text: compressible, so its chunks are stored with zstd.
fn text_data(rng: &mut XorShift, len: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len + 64);
    let mut step = rng.below(1000);
    while s.len() < len {
        s.push_str(&format!(
            "step {step:07} loss {:.5} lr 3e-4 acc {:.3}\n",
            rng.below(100_000) as f64 / 1e5,
            rng.below(1000) as f64 / 1e3
        ));
        step += 1;
    }
    s.truncate(len);
    s.into_bytes()
}

struct Worker {
    store: Store,
    rng: XorShift,
    journal: Journal,
    scratch: PathBuf,
    n: u64,
    last: Vec<u8>,
    /// The experiments this worker writes to (`space_key`).
    space: String,
    /// Seed of the blocks the writers of one round of the concurrent loop share (`pool_block`).
    pool: u64,
}

/// How an upload reads its bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// A source file or a reader, at random (an upload: 3 in 4 a reader; a file of a batch:
    /// 1 in 2).
    Any,
    /// A source file.
    File,
    /// A reader (a stream: ingested outside the store lock if longer than 16 MiB).
    Reader,
    /// A reader that yields 256 KiB at a time with a pause of 2 ms between (a slow pipe on
    /// stdin): the upload writes its packs over a longer time, for kills to land among them.
    Trickle,
}

/// A slow stream (`Via::Trickle`).
struct Trickle<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        const STEP: usize = 256 * 1024;
        if self.pos > 0 && self.pos.is_multiple_of(STEP) && self.pos < self.data.len() {
            std::thread::sleep(Duration::from_millis(2));
        }
        let end = (self.pos + buf.len())
            .min(self.data.len())
            .min((self.pos / STEP + 1) * STEP);
        let n = end - self.pos;
        buf[..n].copy_from_slice(&self.data[self.pos..end]);
        self.pos = end;
        Ok(n)
    }
}

/// Uploads whose files or streams hold more than this many bytes are ingested outside the
/// store lock (src/store/batch.rs, `OUTSIDE_LOCK_MIN`). Only a label in the journal here, for
/// aiming kills and for the summary.
const OUTSIDE_LOCK_MIN: usize = 16 * MIB;

impl Worker {
    fn size(&mut self) -> usize {
        match self.rng.below(10) {
            0 => usize_from(self.rng.below(64)),
            1..=3 => usize_from(self.rng.below(64 * 1024)),
            4..=6 => usize_from(self.rng.below(MIB as u64)),
            _ => usize_from(self.rng.below(3 * MIB as u64)),
        }
    }

    fn data(&mut self) -> (Vec<u8>, &'static str) {
        let (mut d, kind) = match self.rng.below(10) {
            0..=3 => {
                let n = self.size();
                (random_bytes(self.rng.next_u64(), n), "new")
            }
            4 => (base_data(self.rng.below(6)), "repeat"),
            5 => (self.last.clone(), "repeat-last"),
            6 | 7 => {
                // A shifted copy: a few bytes inserted into or removed from known data.
                let mut d = if self.rng.below(2) == 0 {
                    base_data(2 + self.rng.below(4))
                } else {
                    self.last.clone()
                };
                let at = usize_from(self.rng.below(d.len() as u64 + 1));
                if self.rng.below(2) == 0 || d.is_empty() {
                    let n = 1 + usize_from(self.rng.below(200));
                    d.splice(at..at, random_bytes(self.rng.next_u64(), n));
                } else {
                    let end = (at + 1 + usize_from(self.rng.below(200))).min(d.len());
                    d.drain(at..end);
                }
                (d, "shifted")
            }
            8 => {
                let n = self.size();
                (text_data(&mut self.rng, n), "text")
            }
            _ => {
                // Part of known data followed by the previous upload.
                let a = base_data(3 + self.rng.below(3));
                let cut = usize_from(self.rng.below(a.len() as u64));
                let mut d = a[..cut].to_vec();
                d.extend_from_slice(&self.last);
                (d, "spliced")
            }
        };
        d.truncate(3 * MIB);
        (d, kind)
    }

    fn upload(&mut self, key: &FileKey, data: Vec<u8>, kind: &str) {
        self.upload_via(key, data, kind, Via::Any);
    }

    fn upload_via(&mut self, key: &FileKey, data: Vec<u8>, kind: &str, via: Via) {
        self.n += 1;
        let sha = sha256_hex(&data);
        let meta = json!({"n": self.n, "kind": kind});
        let from_file = match via {
            Via::Any => self.rng.below(4) == 0,
            Via::File => true,
            Via::Reader | Via::Trickle => false,
        };
        let outside = data.len() > OUTSIDE_LOCK_MIN;
        self.journal.line(json!({
            "op": "put", "phase": "begin", "key": key_json(key),
            "sha": sha, "size": data.len(), "meta": meta, "outside": outside,
        }));
        let v = NewVersion {
            metadata: meta.clone(),
            ..Default::default()
        };
        let res = if from_file {
            let src = self.scratch.join(format!("src-{}", self.n));
            fs::write(&src, &data).expect("write source file");
            let r = self.store.put_file(&src, key, v, None);
            let _ = fs::remove_file(&src);
            r
        } else if via == Via::Trickle {
            let src = Trickle {
                data: &data,
                pos: 0,
            };
            self.store.put_reader(src, key, v, None)
        } else {
            self.store.put_reader(&data[..], key, v, None)
        };
        let rec = res.unwrap_or_else(|e| panic!("child: upload of {} failed: {e}", key.display()));
        assert_eq!(rec.checksum.to_hex(), sha, "child: upload checksum");
        assert_eq!(rec.size_bytes, data.len() as u64, "child: upload size");
        self.journal.line(json!({
            "op": "put", "phase": "ack", "key": key_json(key),
            "sha": sha, "size": data.len(), "meta": meta, "version": rec.version,
        }));
        self.last = data;
    }

    /// 2..=5 uploads committed together (readers and files; a path may come twice).
    fn upload_batch(&mut self, fresh: bool) {
        self.upload_batch_via(fresh, Via::Any);
    }

    /// `upload_batch`, its sources read as `via` says.
    fn upload_batch_via(&mut self, fresh: bool, via: Via) {
        let n = 2 + self.rng.below(4);
        let mut items = Vec::new();
        for _ in 0..n {
            let k = space_key(&self.space, self.rng.below(12));
            let (mut d, kind) = if fresh {
                let len = 1 + usize_from(self.rng.below(MIB as u64));
                (random_bytes(self.rng.next_u64(), len), "new")
            } else {
                self.data()
            };
            d.truncate(MIB + 7);
            items.push((k, d, kind));
        }
        self.commit_batch(items, via);
    }

    /// Commit `items` (key, bytes, kind) as one batch, its sources read as `via` says.
    fn commit_batch(&mut self, items: Vec<(FileKey, Vec<u8>, &'static str)>, via: Via) {
        let n = items.len();
        let from_file: Vec<bool> = (0..n)
            .map(|_| match via {
                Via::Any => self.rng.below(2) == 0,
                Via::File => true,
                Via::Reader | Via::Trickle => false,
            })
            .collect();
        let total: usize = items.iter().map(|(_, d, _)| d.len()).sum();
        let outside = total > OUTSIDE_LOCK_MIN;
        let mut items: Vec<(FileKey, Vec<u8>, Value)> = items
            .into_iter()
            .map(|(k, d, kind)| {
                self.n += 1;
                let meta = json!({"n": self.n, "kind": kind, "batch": true});
                (k, d, meta)
            })
            .collect();
        let begun: Vec<Value> = items
            .iter()
            .map(|(k, d, meta)| {
                json!({"key": key_json(k), "sha": sha256_hex(d), "size": d.len(), "meta": meta})
            })
            .collect();
        self.journal
            .line(json!({"op": "puts", "phase": "begin", "items": begun, "outside": outside}));
        let mut batch = self.store.upload_batch();
        let mut sources = Vec::new();
        for (i, (k, d, meta)) in items.iter().enumerate() {
            let v = NewVersion {
                metadata: meta.clone(),
                ..Default::default()
            };
            if from_file[i] {
                let src = self.scratch.join(format!("src-{}-{i}", self.n));
                fs::write(&src, d).expect("write source file");
                batch.file(&src, k.clone(), v);
                sources.push(src);
            } else {
                batch.reader(&d[..], k.clone(), v);
            }
        }
        let recs = batch
            .commit()
            .unwrap_or_else(|e| panic!("child: batch of {n} uploads failed: {e}"));
        for src in sources {
            let _ = fs::remove_file(src);
        }
        for ((k, d, _), r) in items.iter().zip(&recs) {
            assert_eq!(r.key(), *k, "child: batch record order");
            assert_eq!(r.checksum.to_hex(), sha256_hex(d), "child: batch checksum");
        }
        let versions: Vec<u32> = recs.iter().map(|r| r.version).collect();
        self.journal
            .line(json!({"op": "puts", "phase": "ack", "items": begun, "versions": versions}));
        if let Some((_, d, _)) = items.pop() {
            self.last = d;
        }
    }

    fn delete(&mut self, key: &FileKey) {
        self.journal
            .line(json!({"op": "del", "phase": "begin", "key": key_json(key)}));
        match self.store.delete(key) {
            Ok(hidden) => {
                let up_to = hidden
                    .iter()
                    .map(|r| r.version)
                    .max()
                    .expect("hid something");
                self.journal.line(
                    json!({"op": "del", "phase": "ack", "key": key_json(key), "upTo": up_to}),
                );
            }
            Err(Error::NotFound(_)) => self
                .journal
                .line(json!({"op": "del", "phase": "notfound", "key": key_json(key)})),
            Err(e) => panic!("child: delete of {} failed: {e}", key.display()),
        }
    }

    fn update(&mut self, key: &FileKey) {
        let rec = match self.store.resolve(key, None) {
            Ok(r) => r,
            Err(Error::NotFound(_)) => {
                self.journal
                    .line(json!({"op": "upd", "phase": "notfound", "key": key_json(key)}));
                return;
            }
            Err(e) => panic!("child: resolve of {} failed: {e}", key.display()),
        };
        self.n += 1;
        let meta = json!({"n": self.n, "updated": true, "score": self.rng.below(1000)});
        let tags = (self.rng.below(2) == 0).then(|| vec![format!("t{}", self.n)]);
        self.journal.line(json!({
            "op": "upd", "phase": "begin", "key": key_json(key),
            "version": rec.version, "meta": meta, "tags": tags,
        }));
        let r = self
            .store
            .update(
                rec.id,
                &ml_dash::RecordChanges {
                    description: None,
                    tags: tags.clone(),
                    metadata: Some(meta.clone()),
                },
            )
            .unwrap_or_else(|e| panic!("child: update of {} failed: {e}", key.display()));
        assert_eq!(r.metadata, meta, "child: update result");
        self.journal.line(json!({
            "op": "upd", "phase": "ack", "key": key_json(key),
            "version": rec.version, "meta": meta, "tags": tags,
        }));
    }

    fn gc(&mut self, threshold: f64) {
        self.journal
            .line(json!({"op": "gc", "phase": "begin", "threshold": threshold}));
        let rep = self
            .store
            .gc(&ml_dash::GcOptions::new().rewrite_threshold(threshold))
            .unwrap_or_else(|e| panic!("child: gc failed: {e}"));
        self.journal.line(json!({
            "op": "gc", "phase": "ack", "deletedVersions": rep.deleted_versions,
            "packsDeleted": rep.packs_deleted, "packsRewritten": rep.packs_rewritten,
        }));
    }

    /// Mostly new data (the `upload` mode, whose kills aim at uploads that write a lot).
    fn fresh_data(&mut self) -> (Vec<u8>, &'static str) {
        let n = 256 * 1024 + usize_from(self.rng.below(3 * MIB as u64 - 256 * 1024));
        match self.rng.below(4) {
            0 => (text_data(&mut self.rng, n), "text"),
            _ => (random_bytes(self.rng.next_u64(), n), "new"),
        }
    }

    fn random_op(&mut self, mode: &str) {
        let k = space_key(&self.space, self.rng.below(12));
        if mode == "upload" && self.rng.below(10) < 8 {
            let (d, kind) = self.fresh_data();
            self.upload(&k, d, kind);
            return;
        }
        if mode == "batch" && self.rng.below(10) < 8 {
            self.upload_batch(true);
            return;
        }
        match self.rng.below(100) {
            0..=51 => {
                let (d, kind) = self.data();
                self.upload(&k, d, kind);
            }
            52..=59 => self.upload_batch(false),
            60..=71 => self.delete(&k),
            72..=91 => self.update(&k),
            _ => {
                let threshold = if self.rng.below(2) == 0 { 0.0 } else { 0.5 };
                self.gc(threshold);
            }
        }
    }

    /// Many small uploads, most of them deleted, then `gc` with threshold 0.0 (the parent kills
    /// the child at a random point of that gc).
    fn gc_round(&mut self) {
        let n = 30 + self.rng.below(40);
        let mut keys = Vec::new();
        for _ in 0..n {
            let k = key("e2", "/gc", &format!("g{:02}.bin", self.rng.below(40)));
            let len = 1 + usize_from(self.rng.below(48 * 1024));
            let data = if self.rng.below(3) == 0 {
                base_data(3)[..len].to_vec()
            } else {
                random_bytes(self.rng.next_u64(), len)
            };
            self.upload(&k, data, "small");
            keys.push(k);
        }
        keys.sort();
        keys.dedup();
        for k in &keys {
            if self.rng.below(5) != 0 {
                self.delete(k);
            }
        }
        self.gc(0.0);
    }

    /// Keep the store bounded: delete every path of the mixed workload and collect.
    fn trim(&mut self) {
        for i in 0..12 {
            self.delete(&mixed_key(i));
        }
        self.gc(0.0);
    }
}

// The roles of the concurrent loop (`concurrent_crash_loop`), each a child of its own.
impl Worker {
    /// Block `j` (1 MiB) of the round's shared pool: the writers of a round upload the same
    /// new chunks at the same time, so an upload outside the lock often finds, at its commit,
    /// chunks another writer committed meanwhile (it keeps their location).
    fn pool_block(&mut self) -> Vec<u8> {
        let j = self.rng.below(8);
        random_bytes(self.pool.wrapping_add(j), MIB)
    }

    /// 17..24 MiB: pool blocks, known data and new data.
    fn big_data(&mut self) -> Vec<u8> {
        let target = 17 * MIB + usize_from(self.rng.below(7 * MIB as u64));
        let mut d = Vec::with_capacity(target + 2 * MIB);
        while d.len() < target {
            match self.rng.below(4) {
                0 => d.extend_from_slice(&self.pool_block()),
                1 => d.extend_from_slice(&base_data(self.rng.below(6))),
                _ => {
                    let n = 256 * 1024 + usize_from(self.rng.below(2 * MIB as u64));
                    d.extend_from_slice(&random_bytes(self.rng.next_u64(), n));
                }
            }
        }
        d.truncate(target);
        d
    }

    /// The writer whose uploads are ingested outside the store lock: files and streams
    /// (fast or slow) of more than 16 MiB, batches of more than 16 MiB; also short streams
    /// (under the lock), and deletes of its paths, which keep the store small (the parent
    /// trims the rest).
    fn big_op(&mut self) {
        let k = space_key(&self.space, self.rng.below(12));
        match self.rng.below(20) {
            0..=4 => {
                let d = self.big_data();
                self.upload_via(&k, d, "big", Via::File);
            }
            5..=8 => {
                let d = self.big_data();
                self.upload_via(&k, d, "big-stream", Via::Trickle);
            }
            9 | 10 => {
                let d = self.big_data();
                self.upload_via(&k, d, "big-stream", Via::Reader);
            }
            11 | 12 => {
                let (mut d, kind) = self.data();
                if self.rng.below(2) == 0 {
                    d.extend_from_slice(&self.pool_block());
                }
                self.upload_via(&k, d, kind, Via::Reader);
            }
            13..=15 => {
                // 2-3 files, more than 16 MiB together (one of them may be a stream).
                let n = 2 + self.rng.below(2);
                let mut items = Vec::new();
                for _ in 0..n {
                    let mut d = self.big_data();
                    d.truncate(9 * MIB + usize_from(self.rng.below(3 * MIB as u64)));
                    items.push((space_key(&self.space, self.rng.below(12)), d, "big"));
                }
                let via = if self.rng.below(3) == 0 {
                    Via::Any
                } else {
                    Via::File
                };
                self.commit_batch(items, via);
            }
            16..=18 => self.delete(&k),
            _ => self.update(&k),
        }
    }

    /// A writer of small uploads (files, under the store lock), batches of files, deletes
    /// and metadata updates; its uploads share chunks with the big writers' (pool blocks).
    fn small_op(&mut self) {
        let k = space_key(&self.space, self.rng.below(12));
        match self.rng.below(20) {
            0..=6 => {
                // A pool block, whole or in part: the same new chunks a big upload writes.
                let mut d = self.pool_block();
                if self.rng.below(2) == 0 {
                    let cut = usize_from(self.rng.below(d.len() as u64));
                    d.drain(..cut);
                }
                self.upload_via(&k, d, "pool", Via::File);
            }
            7..=10 => {
                let (mut d, kind) = self.data();
                d.truncate(MIB);
                self.upload_via(&k, d, kind, Via::File);
            }
            11..=13 => {
                let fresh = self.rng.below(2) == 0;
                self.upload_batch_via(fresh, Via::File);
            }
            14..=16 => self.delete(&k),
            _ => self.update(&k),
        }
    }

    /// `gc` again and again (threshold 0, 0.5 or 1), now and then `repair`.
    fn gc_op(&mut self) {
        if self.rng.below(15) == 0 {
            self.repair();
        } else {
            let threshold = [0.0, 0.5, 1.0][usize_from(self.rng.below(3))];
            self.gc(threshold);
        }
        std::thread::sleep(Duration::from_micros(self.rng.below(30_000)));
    }

    /// `rebuild_index` (`ml-dash repair`): with uploads outside the lock in flight it waits
    /// for them; it must find no damaged record and no unreadable version. (Its
    /// `lost_versions` are not checked here: a gc killed after removing a deleted version's
    /// manifest and before dropping it from the index leaves an entry a rebuild reports.
    /// Whether an acknowledged version was really lost, the parent's checks say.)
    fn repair(&mut self) {
        self.journal.line(json!({"op": "repair", "phase": "begin"}));
        let rep = self
            .store
            .rebuild_index()
            .unwrap_or_else(|e| panic!("child: rebuild_index failed: {e}"));
        assert!(
            rep.damaged.is_empty() && rep.unreadable_versions.is_empty(),
            "child: rebuild_index found damage: {:?} {:?}",
            rep.damaged,
            rep.unreadable_versions
        );
        self.journal.line(json!({
            "op": "repair", "phase": "ack", "unreferenced": rep.unreferenced.len(),
            "lost": rep.lost_versions.len(),
        }));
    }
}

/// The child process: does nothing unless started by `crash_loop` (which sets the variables).
#[test]
fn child_worker() {
    let Ok(root) = std::env::var(ENV_CHILD) else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("child: {k} not set"));
    let root = PathBuf::from(root);
    let journal = OpenOptions::new()
        .create(true)
        .append(true)
        .open(var(ENV_JOURNAL))
        .expect("child: open journal");
    let seed: u64 = var(ENV_CHILD_SEED).parse().expect("child: seed");
    let store = Store::open_with(&root, options()).expect("child: open store");
    let mode = var(ENV_MODE);
    let mut w = Worker {
        store,
        rng: XorShift::new(seed),
        journal: Journal(journal),
        scratch: PathBuf::from(var(ENV_SCRATCH)),
        n: 0,
        last: base_data(seed % 6),
        space: std::env::var(ENV_SPACE).unwrap_or_default(),
        pool: std::env::var(ENV_POOL)
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
    };
    let op: Option<fn(&mut Worker)> = match mode.as_str() {
        "cw-big" => Some(Worker::big_op),
        "cw-small" => Some(Worker::small_op),
        "cw-gc" => Some(Worker::gc_op),
        _ => None,
    };
    if let Some(op) = op {
        // The concurrent loop: the parent kills every child; it trims the store itself.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            op(&mut w);
        }
        w.journal.line(json!({"op": "exit"}));
        return;
    }
    if root.join("packs").is_dir() && packs_total(&root) > 64 * MIB as u64 {
        w.trim();
    }
    if mode == "gc" {
        w.gc_round();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        w.random_op(&mode);
    }
    w.journal.line(json!({"op": "exit"}));
}

// ---------------------------------------------------------------------------------------------
// The parent's model of what the store must hold.

#[derive(Clone, Debug)]
struct Ver {
    sha: String,
    size: u64,
    meta: Value,
    tags: Vec<String>,
}

#[derive(Debug, Default)]
struct PathState {
    versions: BTreeMap<u32, Ver>,
    deleted_up_to: u32,
}

impl PathState {
    fn next_version(&self) -> u32 {
        let last = self.versions.keys().next_back().copied().unwrap_or(0);
        last.max(self.deleted_up_to) + 1
    }
    fn live(&self) -> impl Iterator<Item = (&u32, &Ver)> {
        self.versions.range(self.deleted_up_to + 1..)
    }
    fn latest_live(&self) -> Option<u32> {
        self.live().map(|(v, _)| *v).last()
    }
}

type Model = BTreeMap<FileKey, PathState>;

/// The operation in flight when the child was killed (begun, not acknowledged).
#[derive(Debug)]
enum InFlight {
    Put {
        key: FileKey,
        sha: String,
        size: u64,
        meta: Value,
    },
    /// A batch: every item becomes visible, or none does.
    Puts {
        items: Vec<(FileKey, String, u64, Value)>,
    },
    Del {
        key: FileKey,
    },
    Upd {
        key: FileKey,
        version: u32,
        meta: Value,
        tags: Option<Vec<String>>,
    },
    Gc,
    /// `rebuild_index` (the concurrent loop's gc child).
    Repair,
}

impl InFlight {
    fn kind(&self) -> &'static str {
        match self {
            InFlight::Put { .. } => "upload",
            InFlight::Puts { .. } => "batch upload",
            InFlight::Del { .. } => "delete",
            InFlight::Upd { .. } => "update",
            InFlight::Gc => "gc",
            InFlight::Repair => "repair",
        }
    }
}

#[derive(Default)]
struct Stats {
    kills: usize,
    /// What was in flight at each kill ("none": between operations or before the first).
    killed_during: BTreeMap<&'static str, usize>,
    /// On-disk states found right after the kills, before recovery.
    signatures: BTreeMap<String, usize>,
    /// Acknowledged operations replayed into the model, by kind.
    acks: BTreeMap<&'static str, usize>,
    /// In-flight operations found applied / not applied after recovery.
    inflight: BTreeMap<String, usize>,
    /// Acknowledged live versions read back and checked (summed over iterations).
    live_checked: usize,
    /// Acknowledged deleted versions checked to stay deleted (summed over iterations).
    deleted_checked: usize,
    torn_notes: usize,
    rebuilds: usize,
    child_time: Duration,
    check_time: Duration,
    /// Iterations whose kill left an index sled reports damaged (the store rebuilt it).
    index_rebuilt: usize,
}

fn tags_of(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| {
        a.iter()
            .map(|t| t.as_str().unwrap_or_default().to_string())
            .collect()
    })
}

/// Replay one child's journal into the model; returns the operation in flight at the kill.
fn replay(text: &str, model: &mut Model, stats: &mut Stats) -> Result<Option<InFlight>, String> {
    let mut inflight: Option<InFlight> = None;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if !line.ends_with('\n') {
            break; // an unterminated last line: never acknowledged
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("journal line {n} is not JSON ({e}): {line:?}"))?;
        let at = |what: String| format!("journal line {}: {what} ({})", n + 1, line.trim());
        let op = v["op"].as_str().unwrap_or_default();
        let phase = v["phase"].as_str().unwrap_or_default();
        if op == "exit" {
            continue;
        }
        if op != "gc" && phase != "notfound" && !matches!(phase, "begin" | "ack") {
            return Err(at("unknown phase".into()));
        }
        let k = if matches!(op, "gc" | "puts" | "repair") {
            None
        } else {
            Some(key_from_json(&v["key"])?)
        };
        if phase == "ack" {
            let matches = match (&inflight, op) {
                (Some(InFlight::Put { key, .. }), "put")
                | (Some(InFlight::Del { key }), "del")
                | (Some(InFlight::Upd { key, .. }), "upd") => Some(key) == k.as_ref(),
                (Some(InFlight::Gc), "gc")
                | (Some(InFlight::Repair), "repair")
                | (Some(InFlight::Puts { .. }), "puts") => true,
                _ => false,
            };
            if !matches {
                return Err(at(format!("ack does not match the begun {inflight:?}")));
            }
            inflight = None;
        }
        match (op, phase) {
            ("put", "begin") => {
                inflight = Some(InFlight::Put {
                    key: k.expect("key"),
                    sha: v["sha"].as_str().unwrap_or_default().to_string(),
                    size: v["size"].as_u64().unwrap_or(u64::MAX),
                    meta: v["meta"].clone(),
                });
            }
            ("put", "ack") => {
                let st = model.entry(k.expect("key")).or_default();
                let version = version_in(&v["version"]);
                if version != st.next_version() {
                    return Err(at(format!(
                        "acknowledged upload got version {version}, the model expects {} \
                         (a version number was reused or skipped)",
                        st.next_version()
                    )));
                }
                st.versions.insert(
                    version,
                    Ver {
                        sha: v["sha"].as_str().unwrap_or_default().to_string(),
                        size: v["size"].as_u64().unwrap_or(u64::MAX),
                        meta: v["meta"].clone(),
                        tags: Vec::new(),
                    },
                );
                *stats.acks.entry("upload").or_default() += 1;
            }
            ("puts", "begin") => {
                inflight = Some(InFlight::Puts {
                    items: batch_items(&v)?,
                });
            }
            ("puts", "ack") => {
                let items = batch_items(&v)?;
                let versions = v["versions"].as_array().cloned().unwrap_or_default();
                if versions.len() != items.len() {
                    return Err(at("batch ack without a version per item".into()));
                }
                for ((key, sha, size, meta), got) in items.into_iter().zip(versions) {
                    let st = model.entry(key).or_default();
                    let version = u32::try_from(got.as_u64().unwrap_or(0))
                        .expect("a version number fits a u32");
                    if version != st.next_version() {
                        return Err(at(format!(
                            "acknowledged batch upload got version {version}, the model \
                             expects {}",
                            st.next_version()
                        )));
                    }
                    st.versions.insert(
                        version,
                        Ver {
                            sha,
                            size,
                            meta,
                            tags: Vec::new(),
                        },
                    );
                    *stats.acks.entry("batch upload").or_default() += 1;
                }
            }
            ("del", "begin") => {
                inflight = Some(InFlight::Del {
                    key: k.expect("key"),
                });
            }
            ("del", "ack") => {
                let st = model.entry(k.expect("key")).or_default();
                let up_to = version_in(&v["upTo"]);
                if Some(up_to) != st.latest_live() {
                    return Err(at(format!(
                        "delete hid up to version {up_to}, the model's latest live version is {:?}",
                        st.latest_live()
                    )));
                }
                st.deleted_up_to = up_to;
                *stats.acks.entry("delete").or_default() += 1;
            }
            ("del" | "upd", "notfound") => {
                if op == "del" {
                    inflight = None;
                }
                let key = k.expect("key");
                if let Some(latest) = model.get(&key).and_then(PathState::latest_live) {
                    return Err(at(format!(
                        "the store said {} does not exist, but acknowledged version {latest} \
                         was never deleted",
                        key.display()
                    )));
                }
                *stats.acks.entry("not-found answer").or_default() += 1;
            }
            ("upd", "begin") => {
                let key = k.expect("key");
                let version = version_in(&v["version"]);
                let latest = model.get(&key).and_then(PathState::latest_live);
                if latest != Some(version) {
                    return Err(at(format!(
                        "the store resolved {} to version {version}, the model's latest live \
                         version is {latest:?}",
                        key.display()
                    )));
                }
                inflight = Some(InFlight::Upd {
                    key,
                    version,
                    meta: v["meta"].clone(),
                    tags: tags_of(&v["tags"]),
                });
            }
            ("upd", "ack") => {
                let version = version_in(&v["version"]);
                let st = model.entry(k.expect("key")).or_default();
                let ver = st
                    .versions
                    .get_mut(&version)
                    .ok_or_else(|| at("update of a version the model does not know".into()))?;
                ver.meta = v["meta"].clone();
                if let Some(t) = tags_of(&v["tags"]) {
                    ver.tags = t;
                }
                *stats.acks.entry("update").or_default() += 1;
            }
            ("gc", "begin") => inflight = Some(InFlight::Gc),
            ("gc", "ack") => *stats.acks.entry("gc").or_default() += 1,
            ("repair", "begin") => inflight = Some(InFlight::Repair),
            ("repair", "ack") => *stats.acks.entry("repair").or_default() += 1,
            _ => return Err(at("unknown operation".into())),
        }
    }
    Ok(inflight)
}

/// The items of a batch line: key, SHA-256, size and metadata of each upload, in order.
fn batch_items(v: &Value) -> Result<Vec<(FileKey, String, u64, Value)>, String> {
    v["items"]
        .as_array()
        .ok_or_else(|| format!("journal: batch without items: {v}"))?
        .iter()
        .map(|i| {
            Ok((
                key_from_json(&i["key"])?,
                i["sha"].as_str().unwrap_or_default().to_string(),
                i["size"].as_u64().unwrap_or(u64::MAX),
                i["meta"].clone(),
            ))
        })
        .collect()
}

/// Decide from the recovered store whether the operation in flight happened (entirely), and
/// fold it into the model if it did.
fn settle(
    op: Option<InFlight>,
    listing: &BTreeMap<(FileKey, u32), FileRecord>,
    model: &mut Model,
    stats: &mut Stats,
) -> Result<(), String> {
    let Some(op) = op else {
        return Ok(());
    };
    let kind = op.kind();
    let applied = match op {
        InFlight::Put {
            key,
            sha,
            size,
            meta,
        } => {
            let st = model.entry(key.clone()).or_default();
            let v = st.next_version();
            match listing.get(&(key.clone(), v)) {
                None => false,
                Some(r) => {
                    if r.checksum.to_hex() != sha || r.size_bytes != size || r.metadata != meta {
                        return Err(format!(
                            "the upload in flight at the kill became {} v{v} with different \
                             content: {r:?} (expected sha {sha}, size {size})",
                            key.display()
                        ));
                    }
                    st.versions.insert(
                        v,
                        Ver {
                            sha,
                            size,
                            meta,
                            tags: Vec::new(),
                        },
                    );
                    true
                }
            }
        }
        InFlight::Puts { items } => {
            // The version each item would have got, in order; all present or none.
            let mut next: BTreeMap<FileKey, u32> = BTreeMap::new();
            let mut found = Vec::new();
            for (key, sha, size, meta) in &items {
                let v = *next
                    .entry(key.clone())
                    .and_modify(|v| *v += 1)
                    .or_insert_with(|| model.get(key).map_or(1, PathState::next_version));
                if let Some(r) = listing.get(&(key.clone(), v)) {
                    if r.checksum.to_hex() != *sha || r.size_bytes != *size || r.metadata != *meta {
                        return Err(format!(
                            "the batch in flight at the kill made {} v{v} with different \
                             content: {r:?}",
                            key.display()
                        ));
                    }
                    found.push(v);
                }
            }
            if !found.is_empty() && found.len() != items.len() {
                return Err(format!(
                    "the batch in flight at the kill is partly visible: {} of its {} versions",
                    found.len(),
                    items.len()
                ));
            }
            let applied = !found.is_empty();
            for ((key, sha, size, meta), v) in items.into_iter().zip(found) {
                model.entry(key).or_default().versions.insert(
                    v,
                    Ver {
                        sha,
                        size,
                        meta,
                        tags: Vec::new(),
                    },
                );
            }
            applied
        }
        InFlight::Del { key } => {
            let st = model.entry(key.clone()).or_default();
            match st.latest_live() {
                None => false,
                Some(top) => match listing.get(&(key.clone(), top)) {
                    Some(r) if r.is_deleted() => {
                        st.deleted_up_to = top;
                        true
                    }
                    _ => false,
                },
            }
        }
        InFlight::Upd {
            key,
            version,
            meta,
            tags,
        } => {
            let st = model.entry(key.clone()).or_default();
            match (
                listing.get(&(key.clone(), version)),
                st.versions.get_mut(&version),
            ) {
                (Some(r), Some(ver)) if r.metadata == meta => {
                    ver.meta = meta;
                    if let Some(t) = tags {
                        ver.tags = t;
                    }
                    true
                }
                _ => false,
            }
        }
        InFlight::Gc | InFlight::Repair => return Ok(()),
    };
    let what = if applied { "applied" } else { "not applied" };
    *stats.inflight.entry(format!("{kind} {what}")).or_default() += 1;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Checks.

fn all_records(store: &Store) -> Result<Vec<FileRecord>, String> {
    store
        .list(&ListFilter {
            scope: Scope::default(),
            all_versions: true,
            include_deleted: true,
            ..Default::default()
        })
        .map_err(|e| format!("list after the crash failed: {e}"))
}

/// Where the kill landed, from the on-disk state before any recovery runs. Leftovers that
/// outlive their iteration (in `seen`) are not counted again.
fn crash_signature(root: &Path, seen: &mut BTreeSet<String>) -> Result<Vec<String>, String> {
    let mut sig = Vec::new();
    for d in ["manifests", "events", "packs"] {
        // (The store never removes temp files of interrupted atomic writes: count new ones.)
        let temp = fs::read_dir(root.join(d)).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with('.') && seen.insert(format!("{d}/{name}"))
            })
        });
        if temp {
            sig.push(format!("temp file in {d}/"));
        }
    }
    for name in files_with_ext(&root.join("packs"), "incoming") {
        if seen.insert(name.display().to_string()) {
            sig.push("incoming pack (an upload outside the lock killed)".into());
        }
    }
    let ix_dir = root.join("index");
    if !ix_dir.join("conf").exists() {
        // Opening it here would create an index; leave that to the store.
        sig.push("no index yet".into());
        return Ok(sig);
    }
    let ix = match Index::open(&ix_dir) {
        Ok(ix) => ix,
        Err(e) => {
            // The store rebuilds an index sled reports damaged; the checks that follow run
            // on the rebuilt one.
            sig.push(format!("index damaged (sled: {e})"));
            return Ok(sig);
        }
    };
    let ids = |dir: &str, ext: &str| -> Vec<ml_dash::Id> {
        let mut v: Vec<_> = fs::read_dir(root.join(dir))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        ml_dash::testing::manifest::parse_file_name(
                            &e.file_name().to_string_lossy(),
                            ext,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let pending: Vec<ml_dash::Id> = ix
        .meta("pending")
        .map_err(|e| e.to_string())?
        .unwrap_or_default()
        .chunks_exact(16)
        .map(|c| ml_dash::Id(c.try_into().expect("16 bytes")))
        .collect();
    if !pending.is_empty() {
        let placed = pending
            .iter()
            .filter(|p| {
                root.join("manifests")
                    .join(ml_dash::testing::manifest::manifest_file_name(**p))
                    .exists()
                    || root
                        .join("events")
                        .join(ml_dash::testing::manifest::event_file_name(**p))
                        .exists()
            })
            .count();
        let what = if pending.len() > 1 { "batch" } else { "commit" };
        sig.push(if placed == pending.len() {
            format!("pending {what}, every file durable")
        } else if placed == 0 {
            format!("pending {what}, no file yet")
        } else {
            format!("pending {what}, some of its files durable")
        });
    }
    let committed: BTreeMap<_, _> = ix.packs().map_err(|e| e.to_string())?.into_iter().collect();
    for pid in ids("packs", "pack") {
        let p = root
            .join("packs")
            .join(ml_dash::testing::pack::pack_file_name(pid));
        let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        if !seen.insert(format!("{pid}.pack {len}")) {
            continue;
        }
        match committed.get(&pid) {
            None if len < PACK_HEADER_LEN => sig.push("pack shorter than its header".into()),
            None => sig.push("pack unknown to the index".into()),
            Some(&c) if len > c => sig.push("pack longer than the index knows".into()),
            Some(&c) if len < c => sig.push("PACK SHORTER THAN THE INDEX SAYS".into()),
            Some(_) => {}
        }
    }
    for pid in committed.keys() {
        let p = root
            .join("packs")
            .join(ml_dash::testing::pack::pack_file_name(*pid));
        if !p.exists() {
            sig.push("index pack missing on disk".into());
        }
    }
    // Chunks the index knows but no manifest on disk references: an upload whose chunks were
    // fsynced and recorded but whose version was not committed (or a gc between its steps).
    let mut referenced = BTreeSet::new();
    for id in ids("manifests", "manifest") {
        let p = root
            .join("manifests")
            .join(ml_dash::testing::manifest::manifest_file_name(id));
        let m = fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                ml_dash::testing::manifest::Manifest::decode(&b, "").map_err(|e| e.to_string())
            })
            .map_err(|e| format!("manifest {} unreadable after a kill: {e}", p.display()))?;
        referenced.extend(m.chunks.into_iter().map(|(c, _)| c));
    }
    let mut unreferenced = false;
    for c in ix.chunks() {
        let (c, _) = c.map_err(|e| e.to_string())?;
        if !referenced.contains(&c) && seen.insert(format!("chunk {c}")) {
            unreferenced = true;
        }
    }
    if unreferenced {
        sig.push("index holds chunks no manifest references".into());
    }
    for id in ids("manifests", "manifest") {
        if !pending.contains(&id)
            && ix.version(id).map_err(|e| e.to_string())?.is_none()
            && seen.insert(format!("{id}.manifest"))
        {
            sig.push("manifest unknown to the index (gc)".into());
        }
    }
    if sig.is_empty() {
        sig.push("clean".into());
    }
    sig.sort();
    sig.dedup();
    Ok(sig)
}

/// Read one version completely through the `Read` impl or the parallel download path.
fn read_version(store: &Store, r: &FileRecord, via_read: bool) -> Result<Vec<u8>, String> {
    let what = format!("{} v{}", r.key().display(), r.version);
    let reader = store
        .open_file(&r.key(), Some(r.version))
        .map_err(|e| format!("{what} is listed live but does not open: {e}"))?;
    let mut bytes = Vec::new();
    if via_read {
        let mut reader = reader;
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{what}: read failed: {e}"))?;
    } else {
        bytes =
            ml_dash::testing::read_all(&reader).map_err(|e| format!("{what}: read failed: {e}"))?;
    }
    Ok(bytes)
}

/// `verify` must find nothing but notes.
fn check_verify(store: &Store) -> Result<usize, String> {
    let rep = store
        .verify()
        .map_err(|e| format!("verify failed to run: {e}"))?;
    let bad: Vec<&str> = rep
        .damaged_files
        .iter()
        .chain(&rep.problems)
        .map(|f| &**f)
        .collect();
    if !bad.is_empty() {
        return Err(format!(
            "verify: {bad:?} (damaged files {:?}, problems {:?}, notes {:?})",
            rep.damaged_files, rep.problems, rep.notes
        ));
    }
    Ok(rep.notes.len())
}

/// Everything the store shows must be what the model says, and read back completely.
fn check_store(
    store: &Store,
    model: &Model,
    stats: &mut Stats,
    rng: &mut XorShift,
) -> Result<(), String> {
    let records = all_records(store)?;
    let mut listed: BTreeMap<FileKey, Vec<&FileRecord>> = BTreeMap::new();
    for r in &records {
        listed.entry(r.key()).or_default().push(r);
    }
    // Nothing the journal does not explain; deleted versions stay deleted.
    for (key, recs) in &listed {
        let st = model.get(key);
        for r in recs {
            let what = format!("{} v{}", key.display(), r.version);
            let Some(ver) = st.and_then(|s| s.versions.get(&r.version)) else {
                return Err(format!("{what} exists but was never uploaded: {r:?}"));
            };
            let st = st.expect("known");
            if r.checksum.to_hex() != ver.sha || r.size_bytes != ver.size {
                return Err(format!(
                    "{what}: record says sha {} size {}, the acknowledged upload had sha {} \
                     size {}",
                    r.checksum, r.size_bytes, ver.sha, ver.size
                ));
            }
            if r.version <= st.deleted_up_to && !r.is_deleted() {
                return Err(format!(
                    "{what} was deleted (acknowledged) but is live again"
                ));
            }
            if r.version > st.deleted_up_to && r.is_deleted() {
                return Err(format!("{what} is deleted, but no delete was acknowledged"));
            }
            if !r.is_deleted() && (r.metadata != ver.meta || r.tags != ver.tags) {
                return Err(format!(
                    "{what}: metadata {} tags {:?}, the last acknowledged are {} {:?}",
                    r.metadata, r.tags, ver.meta, ver.tags
                ));
            }
        }
    }
    // Every acknowledged version: live ones listed and readable, deleted ones unreadable.
    let mut via_read = false;

    for (key, st) in model {
        let live: Vec<u32> = listed
            .get(key)
            .map(|v| {
                v.iter()
                    .filter(|r| !r.is_deleted())
                    .map(|r| r.version)
                    .collect()
            })
            .unwrap_or_default();
        for (&v, ver) in &st.versions {
            let what = format!("{} v{v}", key.display());
            if v > st.deleted_up_to {
                if !live.contains(&v) {
                    return Err(format!("acknowledged {what} is lost (not listed live)"));
                }
                via_read = !via_read;
                let bytes = read_version(
                    store,
                    listed[key].iter().find(|r| r.version == v).expect("listed"),
                    via_read,
                )?;
                let sha = sha256_hex(&bytes);
                if bytes.len() as u64 != ver.size || sha != ver.sha {
                    return Err(format!(
                        "acknowledged {what} reads back {} bytes with sha {sha}, uploaded {} \
                         bytes with sha {}",
                        bytes.len(),
                        ver.size,
                        ver.sha
                    ));
                }
                stats.live_checked += 1;
            } else if v == st.deleted_up_to || rng.below(st.versions.len() as u64 * 2) == 0 {
                // (The listing above already shows every deleted version deleted or gone;
                // opening by number is checked for the newest and a sample of the others.)
                match store.open_file(key, Some(v)) {
                    Err(Error::NotFound(_)) => stats.deleted_checked += 1,
                    Err(e) => return Err(format!("deleted {what}: unexpected error {e}")),
                    Ok(_) => return Err(format!("deleted {what} opens again")),
                }
            }
        }
        match (store.open_file(key, None), st.latest_live()) {
            (Ok(r), Some(latest)) if r.record().version == latest => {}
            (Err(Error::NotFound(_)), None) => {}
            (Ok(r), want) => {
                return Err(format!(
                    "{}: latest version opens as v{}, expected {want:?}",
                    key.display(),
                    r.record().version
                ));
            }
            (Err(e), want) => {
                return Err(format!(
                    "{}: latest version does not open ({e}), expected {want:?}",
                    key.display()
                ));
            }
        }
    }
    Ok(())
}

/// The index is derived data: a copy of the store without it, rebuilt, must show the same
/// live versions and verify clean.
fn check_rebuild(root: &Path, scratch: &Path, store: &Store) -> Result<(), String> {
    let copy = scratch.join("rebuilt");
    let _ = fs::remove_dir_all(&copy);
    fs::create_dir_all(&copy).map_err(|e| e.to_string())?;
    fs::copy(root.join("FORMAT"), copy.join("FORMAT")).map_err(|e| e.to_string())?;
    for d in ["packs", "manifests", "events"] {
        fs::create_dir_all(copy.join(d)).map_err(|e| e.to_string())?;
        for e in fs::read_dir(root.join(d)).map_err(|e| e.to_string())? {
            let e = e.map_err(|e| e.to_string())?;
            fs::copy(e.path(), copy.join(d).join(e.file_name())).map_err(|e| e.to_string())?;
        }
    }
    let rebuilt = Store::open_with(&copy, options()).map_err(|e| e.to_string())?;
    let rep = rebuilt
        .rebuild_index()
        .map_err(|e| format!("rebuild_index failed: {e}"))?;
    if !rep.damaged.is_empty() {
        return Err(format!("rebuild_index found damage: {:?}", rep.damaged));
    }
    let live = |s: &Store| -> Result<Vec<FileRecord>, String> {
        s.list(&ListFilter {
            all_versions: true,
            ..Default::default()
        })
        .map_err(|e| e.to_string())
    };
    let (a, b) = (live(store)?, live(&rebuilt)?);
    if a != b {
        return Err(format!(
            "live versions differ after rebuild_index: {} before, {} after",
            a.len(),
            b.len()
        ));
    }
    check_verify(&rebuilt).map_err(|e| format!("after rebuild_index of a crashed store: {e}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The parent.

fn spawn_child(
    root: &Path,
    journal: &Path,
    scratch: &Path,
    seed: u64,
    mode: &str,
    env: &[(&str, String)],
) -> Child {
    // This very binary, even if a concurrent `cargo build` has replaced the file since.
    let exe = if Path::new("/proc/self/exe").exists() {
        PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe().expect("current test binary")
    };
    let out = File::create(scratch.join("child.out")).expect("child stdout file");
    let err = File::create(scratch.join("child.err")).expect("child stderr file");
    Command::new(exe)
        .args([
            "--exact",
            "crash::child_worker",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_CHILD, root)
        .env(ENV_JOURNAL, journal)
        .env(ENV_CHILD_SEED, seed.to_string())
        .env(ENV_MODE, mode)
        .env(ENV_SCRATCH, scratch)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn the child worker")
}

fn tail(path: &Path, n: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `(begin, ack)` times of every `op` operation of a journal, in order.
fn op_times(journal: &str, op: &str) -> Vec<(u64, Option<u64>)> {
    let mut v: Vec<(u64, Option<u64>)> = Vec::new();
    for l in journal.lines() {
        let Ok(j) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        if j["op"] != op {
            continue;
        }
        let t = j["t"].as_u64().unwrap_or(0);
        match j["phase"].as_str() {
            Some("begin") => v.push((t, None)),
            Some("ack") => {
                if let Some(last) = v.last_mut() {
                    last.1 = Some(t);
                }
            }
            _ => {}
        }
    }
    v
}

/// Wait until the child has begun its `k`th `op` (or ended, or two minutes passed).
fn wait_for_begin(journal: &Path, child: &mut Child, op: &str, k: usize) {
    let needle = format!("\"op\":\"{op}\",\"phase\":\"begin\"");
    let waited = Instant::now();
    loop {
        let text = fs::read_to_string(journal).unwrap_or_default();
        if text.matches(&needle).count() >= k
            || child.try_wait().unwrap().is_some()
            || waited.elapsed().as_secs() > 120
        {
            return;
        }
        std::thread::sleep(Duration::from_micros(300));
    }
}

/// 90th percentile of `v` (microseconds), or `default` while nothing was measured.
fn p90(v: &[u64], default: u64) -> u64 {
    if v.is_empty() {
        return default;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    s[s.len() * 9 / 10]
}

fn iterations() -> usize {
    std::env::var("ML_DASH_CRASH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
}

fn base_seed() -> u64 {
    std::env::var("ML_DASH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00C0_FFEE)
}

/// Run `iters` kill/recover/check iterations on one store. With `rebuild`, also rebuild the
/// index of a copy after every recovery.
fn crash_loop(name: &str, iters: usize, rebuild: bool) -> Stats {
    let started = Instant::now();
    let dir = tmp();
    let root = dir.path().join("store");
    let mut model = Model::new();
    let mut stats = Stats::default();
    // (The rebuild loop walks other operations than the main loop.)
    let base = base_seed().wrapping_add(if rebuild { 0x5EED } else { 0 });
    // Durations of acknowledged gc runs and uploads (microseconds), to aim the kills.
    let (mut gc_times, mut put_times, mut batch_times): (Vec<u64>, Vec<u64>, Vec<u64>) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut seen_leftovers = BTreeSet::new();
    for it in 0..iters {
        let seed = base
            .wrapping_mul(0x0000_0100_0000_01B3)
            .wrapping_add(it as u64);
        let mode = ["mixed", "upload", "gc", "batch"][it % 4];
        let scratch = dir.path().join(format!("it-{it:03}"));
        fs::create_dir_all(&scratch).unwrap();
        let journal = scratch.join("journal.jsonl");
        let mut rng = XorShift::new(seed ^ 0x4B11_4B11);
        let child_started = Instant::now();
        let mut child = spawn_child(&root, &journal, &scratch, seed, mode, &[]);
        let fail = |msg: String, dir: tempfile::TempDir| -> ! {
            let kept = dir.keep();
            panic!(
                "{name}: iteration {it} (mode {mode}, seed {seed}; base seed {base}, set \
                 ML_DASH_CRASH_SEED to replay): {msg}\nchild stderr (tail):\n{}\njournal \
                 (tail):\n{}\nstore kept at {}",
                tail(&kept.join(format!("it-{it:03}/child.err")), 20),
                tail(&kept.join(format!("it-{it:03}/journal.jsonl")), 6),
                kept.join("store").display()
            )
        };
        let delay = match mode {
            "gc" => {
                // Kill at a random point of a gc run (its length measured in earlier runs).
                wait_for_begin(&journal, &mut child, "gc", 1);
                rng.below(p90(&gc_times, 40_000) * 5 / 4 + 1)
            }
            "upload" => {
                // Kill at a random point of the 1st, 2nd or 3rd upload of the child.
                let k = 1 + usize_from(rng.below(3));
                wait_for_begin(&journal, &mut child, "put", k);
                rng.below(p90(&put_times, 30_000) + 1)
            }
            "batch" => {
                // Kill at a random point of the 1st, 2nd or 3rd batch of uploads.
                let k = 1 + usize_from(rng.below(3));
                wait_for_begin(&journal, &mut child, "puts", k);
                rng.below(p90(&batch_times, 60_000) + 1)
            }
            _ => rng.below(MAX_KILL_DELAY_US + 1),
        };
        std::thread::sleep(Duration::from_micros(delay));
        let _ = child.kill();
        let status = child.wait().expect("wait for the child");
        if status.signal() != Some(SIGKILL) {
            fail(
                format!("the child was not killed but ended by itself: {status:?}"),
                dir,
            );
        }
        stats.kills += 1;
        stats.child_time += child_started.elapsed();
        let check_started = Instant::now();

        let text = fs::read_to_string(&journal).unwrap_or_default();
        for (times, op, m) in [
            (&mut gc_times, "gc", "gc"),
            (&mut put_times, "put", "upload"),
            (&mut batch_times, "puts", "batch"),
        ] {
            if mode != m {
                continue;
            }
            times.extend(
                op_times(&text, op)
                    .into_iter()
                    .filter_map(|(b, a)| Some(a?.saturating_sub(b))),
            );
            let n = times.len();
            times.drain(..n.saturating_sub(200));
        }
        let res = (|| -> Result<(), String> {
            let mut sigs = crash_signature(&root, &mut seen_leftovers)?;
            let inflight = replay(&text, &mut model, &mut stats)?;
            if let Some(op) = &inflight
                && sigs == ["clean"]
            {
                sigs = vec![format!("no leftover found ({} in flight)", op.kind())];
            }
            if sigs.iter().any(|s| s.starts_with("index damaged")) {
                stats.index_rebuilt += 1;
            }
            for s in sigs {
                *stats.signatures.entry(s).or_default() += 1;
            }
            *stats
                .killed_during
                .entry(inflight.as_ref().map_or("none", InFlight::kind))
                .or_default() += 1;
            let store = Store::open_with(&root, options())
                .map_err(|e| format!("the store does not open after the kill: {e}"))?;
            let listing: BTreeMap<(FileKey, u32), FileRecord> = all_records(&store)?
                .into_iter()
                .map(|r| ((r.key(), r.version), r))
                .collect();
            settle(inflight, &listing, &mut model, &mut stats)?;
            stats.torn_notes += check_verify(&store)?;
            check_store(&store, &model, &mut stats, &mut rng)?;
            if rebuild {
                check_rebuild(&root, &scratch, &store)?;
                stats.rebuilds += 1;
            }
            // The store keeps working: a delete and an upload, then verify.
            let k = key("e1", "/after-crash", "p.bin");
            let st = model.entry(k.clone()).or_default();
            if let Some(top) = st.latest_live() {
                let hidden = store
                    .delete(&k)
                    .map_err(|e| format!("delete after recovery failed: {e}"))?;
                if hidden.iter().map(|r| r.version).max() != Some(top) {
                    return Err(format!(
                        "delete after recovery hid {hidden:?}, expected v{top}"
                    ));
                }
                st.deleted_up_to = top;
            }
            let data = random_bytes(seed, 1000 + usize_from(rng.below(256 * 1024)));
            let rec = store
                .put_reader(&data[..], &k, NewVersion::default(), None)
                .map_err(|e| format!("upload after recovery failed: {e}"))?;
            let st = model.entry(k.clone()).or_default();
            if rec.version != st.next_version() {
                return Err(format!(
                    "upload after recovery got v{}, expected v{}",
                    rec.version,
                    st.next_version()
                ));
            }
            st.versions.insert(
                rec.version,
                Ver {
                    sha: sha256_hex(&data),
                    size: data.len() as u64,
                    meta: Value::Null,
                    tags: Vec::new(),
                },
            );
            let got = read_version(&store, &rec, false)?;
            if got != data {
                return Err("upload after recovery reads back different bytes".into());
            }
            check_verify(&store)
                .map(drop)
                .map_err(|e| format!("after the post-crash upload: {e}"))
        })();
        if let Err(msg) = res {
            fail(msg, dir);
        }
        stats.check_time += check_started.elapsed();
        let _ = fs::remove_dir_all(&scratch);
    }
    let acked: usize = stats.acks.values().sum();
    eprintln!(
        "{name}: {} kills in {iters} iterations ({:.1} s: children {:.1} s, recovery and \
         checks {:.1} s)\n  killed during: {:?}\n  \
         acknowledged operations replayed and checked: {acked} {:?}\n  acknowledged versions \
         checked after the kills: {} live (read back, SHA-256 compared), {} deleted (stay \
         deleted)\n  in-flight operations after recovery: {:?}\n  on-disk state at the kills: \
         {:?}\n  torn-tail notes from verify: {}; rebuilds checked: {}; index damaged by a kill \
         (rebuilt by the store): {}",
        stats.kills,
        started.elapsed().as_secs_f64(),
        stats.child_time.as_secs_f64(),
        stats.check_time.as_secs_f64(),
        stats.killed_during,
        stats.acks,
        stats.live_checked,
        stats.deleted_checked,
        stats.inflight,
        stats.signatures,
        stats.torn_notes,
        stats.rebuilds,
        stats.index_rebuilt,
    );
    stats
}

#[test]
fn crash_loop_keeps_every_acknowledged_write() {
    let iters = iterations();
    let stats = crash_loop("crash loop", iters, false);
    assert_eq!(stats.kills, iters);
    assert!(
        stats.acks.get("upload").copied().unwrap_or(0) > 0,
        "no upload was ever acknowledged before a kill"
    );
}

#[test]
fn index_rebuilt_after_crashes_matches_the_store() {
    // Every recovered store is also rebuilt from its durable files (a copy without the index,
    // as after `rm -r index; ml-dash repair`): same live versions, and verify clean.
    let iters = iterations().clamp(1, 10);
    let stats = crash_loop("crash loop + rebuild", iters, true);
    assert_eq!(stats.rebuilds, iters);
}

// ---------------------------------------------------------------------------------------------
// Concurrent writers and gc, killed at random points.
//
// A round starts 2-4 writer children and a gc child on the same store. Writer 0 (and, by
// chance, writers 2 and 3) is a big writer: files of 17-24 MiB, streams (fast, or a slow
// pipe) and batches of more than 16 MiB, all ingested outside the store lock
// (src/store/batch.rs, `ingest_outside_lock`: `.incoming` packs of their own, renamed and
// recorded in the index at the commit). Writer 1 (and the others) uploads small files under
// the lock, batches of files, deletes and updates. The writers of a round share a pool of new
// 1 MiB blocks, so the same new chunks are written by a big upload and a small one at once.
// The gc child runs `gc` (and now and then `repair`) in a loop: both take the writers' lock
// exclusively, so they wait for the uploads, which hold it shared. Each writer has
// experiments of its own, so its journal alone decides its versions.
//
// The parent kills a big writer at a random point of an upload outside the lock (with another
// writer, or the gc child before it, in some rounds), lets the others run on (they finish or
// roll back what the victims left, and gc collects their packs while other uploads are in
// flight), then kills every child left, one by one at random points. With nothing running,
// it checks: `verify` finds no problem (the packs of killed uploads are not problems); every
// acknowledged version is listed and reads back byte-exact, every acknowledged delete holds,
// an operation in flight happened entirely or not at all (`replay`, `settle`, `check_store`);
// then it deletes the big writers' paths (and some others), runs `gc`, and checks that no pack
// is left on disk that the index does not know (but packs `repair` held), that gc quarantined
// nothing, and verify and the acknowledged versions again.
//
// Writer kills: at least `ML_DASH_CRASH_WRITER_KILLS`; default 12, 60 when `ML_DASH_FULL` is
// set or `ML_DASH_CRASH_ITERS` asks for at least 120 kills (the full run of `.ci/run`).

/// What a child of the concurrent loop does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Big,
    Small,
    Gc,
}

impl Role {
    fn mode(self) -> &'static str {
        match self {
            Role::Big => "cw-big",
            Role::Small => "cw-small",
            Role::Gc => "cw-gc",
        }
    }
}

/// One child of a round.
struct Kid {
    role: Role,
    slot: usize,
    dir: PathBuf,
    journal: PathBuf,
    /// `None` once killed and reaped.
    proc: Option<Child>,
}

impl Kid {
    /// Has the child ended (it is reaped later, by `Kids::kill`)?
    fn ended(&mut self) -> bool {
        self.proc
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// After two minutes of waiting for `what`, the child is stuck: say so.
    fn watchdog(&self, waited: Instant, what: &str) -> Result<(), String> {
        if waited.elapsed() < Duration::from_secs(120) {
            return Ok(());
        }
        Err(format!(
            "child {} ({:?}) still runs but did not get to {what} in two minutes (a \
             deadlock?)",
            self.slot, self.role
        ))
    }
}

/// The children of a round; any still running when this is dropped are killed (a failing
/// check must not leave them writing to the kept store).
struct Kids(Vec<Kid>);

impl Drop for Kids {
    fn drop(&mut self) {
        for k in &mut self.0 {
            if let Some(mut c) = k.proc.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Kids {
    /// SIGKILL child `i` (if it still runs) and reap it: it must not have ended by itself.
    fn kill(&mut self, i: usize) -> Result<bool, String> {
        let kid = &mut self.0[i];
        let Some(mut c) = kid.proc.take() else {
            return Ok(false);
        };
        let _ = c.kill();
        let status = c
            .wait()
            .map_err(|e| format!("wait for child {}: {e}", kid.slot))?;
        if status.signal() != Some(SIGKILL) {
            return Err(format!(
                "child {} ({:?}) was not killed but ended by itself: {status:?}",
                kid.slot, kid.role
            ));
        }
        Ok(true)
    }

    fn running(&self) -> Vec<usize> {
        (0..self.0.len())
            .filter(|&i| self.0[i].proc.is_some())
            .collect()
    }

    /// Wait until child `i` has journaled `k` lines holding `needle`, or ended. A child that
    /// still runs without getting there in two minutes is reported (a deadlock?).
    fn wait_for(&mut self, i: usize, needle: &str, k: usize) -> Result<(), String> {
        let kid = &mut self.0[i];
        let waited = Instant::now();
        loop {
            let text = fs::read_to_string(&kid.journal).unwrap_or_default();
            if text.matches(needle).count() >= k || kid.ended() {
                return Ok(());
            }
            kid.watchdog(waited, needle)?;
            std::thread::sleep(Duration::from_micros(300));
        }
    }

    /// Wait until child `i`, which has just begun an upload outside the lock, has a new pack
    /// on disk (an `.incoming` pack not in `before`: most likely its own), or ended that
    /// upload, or ended. Uploads outside the lock often run their pack appends late and fast:
    /// kills aimed this way land among them.
    fn wait_for_new_pack(
        &mut self,
        i: usize,
        root: &Path,
        before: &BTreeSet<PathBuf>,
    ) -> Result<(), String> {
        let kid = &mut self.0[i];
        let acks = |k: &Kid| {
            fs::read_to_string(&k.journal)
                .unwrap_or_default()
                .matches("\"phase\":\"ack\"")
                .count()
        };
        let acked = acks(kid);
        let waited = Instant::now();
        loop {
            if files_with_ext(&root.join("packs"), "incoming")
                .iter()
                .any(|p| !before.contains(p))
                || acks(kid) > acked
                || kid.ended()
            {
                return Ok(());
            }
            kid.watchdog(waited, "a new incoming pack or the end of its upload")?;
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Kill child `i`, a big writer, at a random point of its `k`th next upload outside the
    /// lock: after a delay drawn from `times` (durations of earlier ones), or, one time in two,
    /// just after its first new pack appeared.
    fn aim_at_outside_upload(
        &mut self,
        i: usize,
        k: usize,
        root: &Path,
        times: &[u64],
        rng: &mut XorShift,
    ) -> Result<(), String> {
        let needle = "\"outside\":true";
        let begun = fs::read_to_string(&self.0[i].journal)
            .unwrap_or_default()
            .matches(needle)
            .count();
        self.wait_for(i, needle, begun + k)?;
        let delay = if rng.below(2) == 0 {
            let before: BTreeSet<PathBuf> = files_with_ext(&root.join("packs"), "incoming")
                .into_iter()
                .collect();
            self.wait_for_new_pack(i, root, &before)?;
            rng.below(3_000)
        } else {
            rng.below(p90(times, 300_000) * 5 / 4 + 1)
        };
        std::thread::sleep(Duration::from_micros(delay));
        Ok(())
    }

    /// The tails of every child's stderr and journal, for a failure message.
    fn report(&self) -> String {
        let mut s = String::new();
        for k in &self.0 {
            s.push_str(&format!(
                "\n--- child {} ({:?}) stderr (tail):\n{}\n--- its journal (tail):\n{}",
                k.slot,
                k.role,
                tail(&k.dir.join("child.err"), 12),
                tail(&k.journal, 4)
            ));
        }
        s
    }
}

/// What the concurrent loop saw, beyond `Stats`.
#[derive(Default)]
struct ConcurrentStats {
    base: Stats,
    rounds: usize,
    writer_kills: usize,
    gc_kills: usize,
    /// Kills by role and what the child had in flight.
    kills: BTreeMap<String, usize>,
    /// Uploads outside the lock acknowledged (journaled `ack`).
    outside_acks: usize,
    /// Packs on disk the index did not know after a round (left by killed uploads), and how
    /// many of them the parent's gc removed.
    orphans: usize,
    orphans_collected: usize,
    /// Packs `repair` held at the end of a round (allowed to stay).
    held: usize,
    gc_reports: BTreeMap<&'static str, usize>,
}

/// Is the last operation of a journal an upload outside the lock that was begun and not
/// acknowledged?
fn outside_in_flight(text: &str) -> bool {
    let last = text
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|v| v["op"] != "exit");
    last.is_some_and(|v| v["phase"] == "begin" && v["outside"] == true)
}

/// `(begin, ack)` durations (microseconds) of the acknowledged uploads outside the lock.
fn outside_times(text: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut begun: Option<u64> = None;
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        let t = v["t"].as_u64().unwrap_or(0);
        match v["phase"].as_str() {
            Some("begin") => begun = (v["outside"] == true).then_some(t),
            Some("ack") => {
                if let Some(b) = begun.take() {
                    out.push(t.saturating_sub(b));
                }
            }
            _ => {}
        }
    }
    out
}

/// Delete every path of the writers in `spaces` and a third of the others (the store stays
/// small, the checks fast): the model follows.
fn trim_paths(
    store: &Store,
    model: &mut Model,
    spaces: &[String],
    rng: &mut XorShift,
) -> Result<(), String> {
    for (key, st) in model.iter_mut() {
        let Some(top) = st.latest_live() else {
            continue;
        };
        let mine = spaces
            .iter()
            .any(|s| key.experiment.starts_with(s.as_str()));
        if !mine && rng.below(3) != 0 {
            continue;
        }
        let hidden = store
            .delete(key)
            .map_err(|e| format!("trim: delete of {} failed: {e}", key.display()))?;
        if hidden.iter().map(|r| r.version).max() != Some(top) {
            return Err(format!(
                "trim: delete of {} hid {:?}, expected up to v{top}",
                key.display(),
                hidden.iter().map(|r| r.version).collect::<Vec<_>>()
            ));
        }
        st.deleted_up_to = top;
    }
    Ok(())
}

fn writer_kill_target() -> usize {
    if let Some(n) = std::env::var("ML_DASH_CRASH_WRITER_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return n;
    }
    let full = std::env::var("ML_DASH_FULL").is_ok_and(|v| !v.is_empty()) || iterations() >= 120;
    if full { 60 } else { 12 }
}

/// Rounds of concurrent children until at least `writer_kills` writers were killed.
fn concurrent_crash_loop(name: &str, writer_kills: usize) -> ConcurrentStats {
    let started = Instant::now();
    let dir = tmp();
    let root = dir.path().join("store");
    let mut model = Model::new();
    let mut cs = ConcurrentStats::default();
    let base = base_seed().wrapping_add(0xC0C0);
    let (mut big_times, mut gc_times): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
    let mut seen_leftovers = BTreeSet::new();
    let mut round = 0usize;
    while cs.writer_kills < writer_kills {
        let seed = base
            .wrapping_mul(0x0000_0100_0000_01B3)
            .wrapping_add(round as u64);
        let mut rng = XorShift::new(seed ^ 0x4B11_4B11);
        let scratch = dir.path().join(format!("round-{round:03}"));
        let writers = 2 + usize_from(rng.below(3));
        let mut roles: Vec<Role> = (0..writers)
            .map(|slot| match slot {
                0 => Role::Big,
                1 => Role::Small,
                _ if rng.below(2) == 0 => Role::Big,
                _ => Role::Small,
            })
            .collect();
        roles.push(Role::Gc);
        let round_started = Instant::now();
        let mut kids = Kids(Vec::new());
        for (slot, role) in roles.iter().copied().enumerate() {
            let kdir = scratch.join(format!("child-{slot}"));
            fs::create_dir_all(&kdir).unwrap();
            let journal = kdir.join("journal.jsonl");
            let env = [
                (ENV_SPACE, format!("c{slot}")),
                (ENV_POOL, (seed ^ 0x9001).to_string()),
            ];
            let kseed = seed.wrapping_add(1000 * (slot as u64 + 1));
            let proc = spawn_child(&root, &journal, &kdir, kseed, role.mode(), &env);
            kids.0.push(Kid {
                role,
                slot,
                dir: kdir,
                journal,
                proc: Some(proc),
            });
        }
        let gc = writers;
        let fail = |msg: String, kids: Kids, dir: tempfile::TempDir| -> ! {
            let report = kids.report();
            drop(kids);
            let kept = dir.keep();
            panic!(
                "{name}: round {round} (seed {seed}; base seed {base}, set ML_DASH_CRASH_SEED \
                 to replay): {msg}\nstore kept at {}{report}",
                kept.join("store").display()
            )
        };
        let kill = |kids: &mut Kids, i: usize, cs: &mut ConcurrentStats| {
            let killed = kids.kill(i)?;
            if killed {
                match kids.0[i].role {
                    Role::Gc => cs.gc_kills += 1,
                    _ => cs.writer_kills += 1,
                }
            }
            Ok::<(), String>(())
        };
        let waves = (|| -> Result<(), String> {
            let plan = rng.below(10);
            if plan >= 8 {
                // The gc child first, at a random point of one of its first runs.
                kids.wait_for(
                    gc,
                    "\"op\":\"gc\",\"phase\":\"begin\"",
                    1 + usize_from(rng.below(3)),
                )?;
                std::thread::sleep(Duration::from_micros(
                    rng.below(p90(&gc_times, 50_000) * 5 / 4 + 1),
                ));
                kill(&mut kids, gc, &mut cs)?;
            }
            // A big writer at a random point of its 2nd or 3rd upload outside the lock.
            let k = 2 + usize_from(rng.below(2));
            kids.aim_at_outside_upload(0, k, &root, &big_times, &mut rng)?;
            kill(&mut kids, 0, &mut cs)?;
            if (4..8).contains(&plan) {
                let other = 1 + usize_from(rng.below(writers as u64 - 1));
                kill(&mut kids, other, &mut cs)?;
            }
            // The others run on: they settle what the victims left, gc collects their packs.
            std::thread::sleep(Duration::from_micros(rng.below(800_000)));
            // Then every child left, in random order (in half of the rounds the gc child
            // first, so that the packs of uploads killed next are still there for the checks);
            // a big writer mostly at a random point of its next upload outside the lock.
            let mut left = kids.running();
            if left.contains(&gc) && rng.below(2) == 0 {
                left.retain(|&i| i != gc);
                kill(&mut kids, gc, &mut cs)?;
            }
            while !left.is_empty() {
                let i = left.remove(usize_from(rng.below(left.len() as u64)));
                if kids.0[i].role == Role::Big && rng.below(4) != 0 {
                    kids.aim_at_outside_upload(i, 1, &root, &big_times, &mut rng)?;
                } else {
                    std::thread::sleep(Duration::from_micros(rng.below(150_000)));
                }
                kill(&mut kids, i, &mut cs)?;
            }
            Ok(())
        })();
        if let Err(msg) = waves {
            fail(msg, kids, dir);
        }
        cs.base.kills += kids.0.len();
        cs.base.child_time += round_started.elapsed();
        let check_started = Instant::now();
        let res = (|| -> Result<(), String> {
            let sigs = crash_signature(&root, &mut seen_leftovers)?;
            if sigs.iter().any(|s| s.starts_with("index damaged")) {
                cs.base.index_rebuilt += 1;
            }
            for s in sigs {
                *cs.base.signatures.entry(s).or_default() += 1;
            }
            let mut inflight = Vec::new();
            for kid in &kids.0 {
                let text = fs::read_to_string(&kid.journal).unwrap_or_default();
                let times = outside_times(&text);
                cs.outside_acks += times.len();
                big_times.extend(times);
                gc_times.extend(
                    op_times(&text, "gc")
                        .into_iter()
                        .filter_map(|(b, a)| Some(a?.saturating_sub(b))),
                );
                let op = replay(&text, &mut model, &mut cs.base)
                    .map_err(|e| format!("child {}: {e}", kid.slot))?;
                let what = match &op {
                    None => "between operations".to_string(),
                    Some(op) if outside_in_flight(&text) => {
                        format!("{} outside the lock", op.kind())
                    }
                    Some(op) => op.kind().to_string(),
                };
                *cs.kills
                    .entry(format!("{:?} during {what}", kid.role))
                    .or_default() += 1;
                inflight.push(op);
            }
            for times in [&mut big_times, &mut gc_times] {
                let n = times.len();
                times.drain(..n.saturating_sub(200));
            }
            let store = Store::open_with(&root, options())
                .map_err(|e| format!("the store does not open after the kills: {e}"))?;
            let listing: BTreeMap<(FileKey, u32), FileRecord> = all_records(&store)?
                .into_iter()
                .map(|r| ((r.key(), r.version), r))
                .collect();
            for op in inflight {
                settle(op, &listing, &mut model, &mut cs.base)?;
            }
            cs.base.torn_notes +=
                check_verify(&store).map_err(|e| format!("after the kills, before gc: {e}"))?;
            check_store(&store, &model, &mut cs.base, &mut rng)?;

            // Packs of killed uploads: unknown to the index until gc deletes them.
            let (orphans, _) = unknown_packs(&root)?;
            cs.orphans += orphans.len();
            let spaces: Vec<String> = kids
                .0
                .iter()
                .filter(|k| k.role == Role::Big)
                .map(|k| format!("c{}", k.slot))
                .collect();
            trim_paths(&store, &mut model, &spaces, &mut rng)?;
            let drop_unreferenced = round % 2 == 1;
            let rep = store
                .gc(&ml_dash::GcOptions::new()
                    .rewrite_threshold(if rng.below(2) == 0 { 0.0 } else { 0.5 })
                    .drop_unreferenced(drop_unreferenced))
                .map_err(|e| format!("gc after the round failed: {e}"))?;
            if rep.packs_quarantined > 0 || !rep.problems.is_empty() {
                return Err(format!(
                    "gc after the round quarantined {} pack(s): {:?}",
                    rep.packs_quarantined, rep.problems
                ));
            }
            *cs.gc_reports.entry("packs deleted").or_default() += rep.packs_deleted;
            *cs.gc_reports.entry("packs rewritten").or_default() += rep.packs_rewritten;
            *cs.gc_reports.entry("held packs kept").or_default() += rep.held_packs;
            cs.orphans_collected += orphans.iter().filter(|p| !p.exists()).count();
            let (left, held) = unknown_packs(&root)?;
            if !left.is_empty() {
                return Err(format!(
                    "after gc, {} pack(s) on disk that the index does not know (and no \
                     repair held): {left:?}",
                    left.len()
                ));
            }
            if drop_unreferenced && held > 0 {
                return Err(format!(
                    "gc --drop-unreferenced left {held} held pack(s) listed"
                ));
            }
            cs.held += held;
            check_verify(&store).map_err(|e| format!("after the round's gc: {e}"))?;
            check_store(&store, &model, &mut cs.base, &mut rng)
                .map_err(|e| format!("after the round's gc: {e}"))?;
            Ok(())
        })();
        if let Err(msg) = res {
            fail(msg, kids, dir);
        }
        cs.base.check_time += check_started.elapsed();
        cs.rounds += 1;
        round += 1;
        let _ = fs::remove_dir_all(&scratch);
    }
    let acked: usize = cs.base.acks.values().sum();
    eprintln!(
        "{name}: {} rounds, {} writer kills, {} gc kills ({:.1} s: children {:.1} s, checks \
         {:.1} s)\n  kills: {:?}\n  acknowledged operations replayed and checked: {acked} \
         {:?} ({} uploads outside the lock)\n  acknowledged versions checked: {} live (read \
         back, SHA-256 compared), {} deleted\n  in-flight operations after recovery: {:?}\n  \
         on-disk state after the kills: {:?}\n  packs of killed uploads found: {}, removed by \
         the next gc: {}; held by repair at round ends: {}; gc: {:?}\n  torn-tail notes: {}; \
         index damaged by a kill (rebuilt): {}",
        cs.rounds,
        cs.writer_kills,
        cs.gc_kills,
        started.elapsed().as_secs_f64(),
        cs.base.child_time.as_secs_f64(),
        cs.base.check_time.as_secs_f64(),
        cs.kills,
        cs.base.acks,
        cs.outside_acks,
        cs.base.live_checked,
        cs.base.deleted_checked,
        cs.base.inflight,
        cs.base.signatures,
        cs.orphans,
        cs.orphans_collected,
        cs.held,
        cs.gc_reports,
        cs.base.torn_notes,
        cs.base.index_rebuilt,
    );
    cs
}

#[test]
fn concurrent_writers_and_gc_keep_every_acknowledged_write() {
    let target = writer_kill_target();
    let cs = concurrent_crash_loop("concurrent crash loop", target);
    assert!(cs.writer_kills >= target);
    // Every round waits for a big writer's 2nd upload outside the lock before its first kill.
    assert!(
        cs.outside_acks >= cs.rounds,
        "uploads outside the lock acknowledged: {} in {} rounds",
        cs.outside_acks,
        cs.rounds
    );
    assert!(
        cs.orphans == cs.orphans_collected,
        "every pack left by a killed upload is gone after the next gc"
    );
}

// ---------------------------------------------------------------------------------------------
// Deterministic reproductions of crash states the loop above reaches by chance.

/// A kill between `PackWriter::create` creating `packs/<id>.pack` (`create_new`) and writing its
/// 32-byte header leaves an empty pack file (the loop reports it as "pack shorter than its
/// header"). `verify` rightly calls it harmless. But `rebuild_index` (`ml-dash repair`) records
/// such a pack with a committed length of 32 bytes (src/store/recover.rs, `rebuild_locked`: `end`
/// starts at `PACK_HEADER_LEN` and is stored by `put_pack` although the scan ended with a torn
/// tail at offset 0), so after a repair `verify` reports the store damaged ("truncated at 0,
/// index expects 32 bytes", "shorter than the index says"), and nothing ever clears it.
#[test]
fn repair_after_a_kill_during_pack_creation_verifies_clean() {
    let dir = tmp();
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap();
    let k = key("e1", "/", "a.bin");
    let data = random_bytes(1, 100_000);
    store
        .put_reader(&data[..], &k, NewVersion::default(), None)
        .unwrap();
    let empty = root
        .join("packs")
        .join(ml_dash::testing::pack::pack_file_name(
            ml_dash::Id::generate(),
        ));
    File::create(&empty).unwrap();
    let rep = store.verify().unwrap();
    assert!(rep.ok, "an empty leftover pack is harmless: {rep:?}");

    let rebuilt = store.rebuild_index().unwrap();
    assert!(rebuilt.damaged.is_empty(), "{rebuilt:?}");
    let rep = store.verify().unwrap();
    assert!(
        rep.ok,
        "after rebuild_index, an empty leftover pack makes verify fail: {:?}",
        rep.problems
    );
}

/// `gc` documents that packs on disk the index does not know (leftovers of a crashed write)
/// count as all garbage. An empty or header-only leftover pack (a kill right after the pack
/// was created) is never deleted: `garbage_here = len - live - 32` is 0 (src/store/gc.rs), so the
/// pack is skipped.
#[test]
fn gc_removes_an_empty_pack_left_by_a_kill() {
    let dir = tmp();
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap();
    store
        .put_reader(
            &random_bytes(2, 50_000)[..],
            &key("e1", "/", "a.bin"),
            NewVersion::default(),
            None,
        )
        .unwrap();
    let empty = root
        .join("packs")
        .join(ml_dash::testing::pack::pack_file_name(
            ml_dash::Id::generate(),
        ));
    File::create(&empty).unwrap();
    store
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert!(
        !empty.exists(),
        "gc left the empty leftover pack {} in place",
        empty.display()
    );
}

/// A store with a live file and a deleted one, in the state an interrupted `gc` of earlier
/// builds left: the deleted version dropped from the index but its manifest still in place.
/// (gc now unlinks manifests before it touches the index, so no failing step of today's gc can
/// reach this state; `every_failing_gc_step_leaves_no_orphan_manifest` checks that. Stores
/// written before still can hold it, so it is planted here: gc runs, the manifest is put back.)
fn store_after_gc_interrupted_between_index_and_unlink() -> (tempfile::TempDir, Store, PathBuf) {
    let dir = tmp();
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap();
    let live = key("e1", "/", "live.bin");
    let gone = key("e1", "/", "gone.bin");
    store
        .put_reader(
            &random_bytes(3, 200_000)[..],
            &live,
            NewVersion::default(),
            None,
        )
        .unwrap();
    let g = store
        .put_reader(
            &random_bytes(4, 200_000)[..],
            &gone,
            NewVersion::default(),
            None,
        )
        .unwrap();
    store.delete(&gone).unwrap();
    let manifest = root
        .join("manifests")
        .join(ml_dash::testing::manifest::manifest_file_name(g.id));
    let saved = std::fs::read(&manifest).unwrap();
    // Drop the version from the index only: a gc with a threshold that rewrites nothing would
    // still collect; instead remove it the way the old gc's first step did.
    store
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(1.0))
        .unwrap();
    assert!(!manifest.exists());
    std::fs::write(&manifest, saved).unwrap();
    assert!(list_everything(&store).iter().all(|r| r.id != g.id));
    (dir, store, manifest)
}

/// Every failing write or fsync of a gc leaves no manifest of a deleted version that no later
/// gc would find: after the failure, a clean gc leaves no manifest outside the index.
#[test]
fn every_failing_gc_step_leaves_no_orphan_manifest() {
    use ml_dash::testing::{FaultKind, Faults};
    for kind in [FaultKind::Write, FaultKind::Sync] {
        for n in 1..=30 {
            let dir = tmp();
            let root = dir.path().join("store");
            let store = Store::open(&root).unwrap();
            for i in 0..4 {
                let k = key("e1", "/", &format!("f{i}.bin"));
                store
                    .put_reader(
                        &random_bytes(10 + i, 100_000)[..],
                        &k,
                        NewVersion::default(),
                        None,
                    )
                    .unwrap();
                if i % 2 == 0 {
                    store.delete(&k).unwrap();
                }
            }
            let faulty = Store::open_with(
                &root,
                StoreOptions::default().faults(Faults::fail_nth(kind, n)),
            )
            .unwrap();
            let failed = faulty
                .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
                .is_err();
            let store = Store::open(&root).unwrap();
            store
                .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
                .unwrap();
            let indexed: std::collections::HashSet<String> = list_everything(&store)
                .iter()
                .map(|r| r.id.to_string())
                .collect();
            for m in files_with_ext(&root.join("manifests"), "manifest") {
                let id = m.file_stem().unwrap().to_string_lossy().to_string();
                assert!(
                    indexed.contains(&id),
                    "{kind:?} #{n}: orphan manifest {}",
                    m.display()
                );
            }
            let rep = store.verify().unwrap();
            assert!(
                rep.ok,
                "{kind:?} #{n}: {:?} {:?}",
                rep.damaged_files, rep.problems
            );
            if !failed {
                break;
            }
        }
    }
}

/// `gc` drops deleted versions from the index, then unlinks their manifests (src/store/gc.rs,
/// `gc_apply`). Stopped in between, the manifests stay, and no later gc removes them: gc finds
/// deleted versions only through the index, which no longer has them. The crash loop finds
/// dozens of such manifests after a few gc kills.
#[test]
fn gc_after_an_interrupted_gc_removes_the_leftover_manifests() {
    let (_dir, store, manifest) = store_after_gc_interrupted_between_index_and_unlink();
    store
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert!(
        !manifest.exists(),
        "the manifest of a version an interrupted gc dropped from the index is never removed: {}",
        manifest.display()
    );
}

/// The consequence of the leftover manifests: the next gc collects the deleted version's chunks;
/// a later `rebuild_index` (`ml-dash repair`) brings the version back from its manifest (as
/// deleted, its delete event still applies) with its chunks gone, and `verify` then reports it
/// as a damaged file (the `ml-dash verify` exit code says damage) although nothing live is lost.
#[test]
fn repair_after_an_interrupted_gc_verifies_clean() {
    let (_dir, store, _manifest) = store_after_gc_interrupted_between_index_and_unlink();
    store
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert!(store.verify().unwrap().ok);
    store.rebuild_index().unwrap();
    let rep = store.verify().unwrap();
    assert!(
        rep.damaged_files.is_empty() && rep.problems.is_empty(),
        "verify after repair: damaged files {:?}, problems {:?}",
        rep.damaged_files,
        rep.problems
    );
}
