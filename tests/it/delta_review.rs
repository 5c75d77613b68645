//! Adversarial tests of delta storage around the places where a delta's base can be missing
//! or recorded at another depth than the delta announces (pull, push, interrupted pull, index
//! rebuild, push healing), plus regression tests for what held up (deep chains, gc of a
//! chain's middle, odd safetensors headers).
//!
//! Tests named `defect_*` guard defects that were found and fixed; each says which invariant
//! it guards.

use std::io::Write;
use std::path::{Path, PathBuf};

use ml_dash::{Remote, RemoteConfig};
use ml_dash::{Store, StoreOptions};

use crate::util::*;

use crate::delta::{DELTA, delta_records, key, put, read};

/// `n` bf16 checkpoints of a 400 k-parameter model, `steps` Adam steps apart (lr 3e-4).
fn checkpoints(n: usize, steps: u32) -> Vec<Vec<u8>> {
    crate::delta::model_checkpoints(400_000, 23, n, steps)
}

fn dir_remote(root: &Path, name: &str) -> (PathBuf, Remote) {
    let dir = root.join(format!("remote-{name}"));
    let cfg = RemoteConfig::new(format!("file://{}", dir.display()));
    (dir, Remote::open(&cfg).unwrap())
}

/// One entry of a remote pack's index block (format in src/format/rpack.rs).
#[derive(Debug, Clone)]
struct RemoteEntry {
    id: [u8; 32],
    offset: u64,
    stored_len: u32,
    codec: u8,
    base: Option<[u8; 32]>,
}

/// The index block of a remote pack object (file:// remote).
fn remote_entries(path: &Path) -> Vec<RemoteEntry> {
    let b = std::fs::read(path).unwrap();
    let foot = &b[b.len() - 48..];
    assert_eq!(&foot[40..], b"MLDREND\0");
    let off = usize_from(u64::from_le_bytes(foot[..8].try_into().unwrap()));
    let idx = &b[off..b.len() - 48];
    assert_eq!(&idx[..8], b"MLDRIDX1");
    let n = u32::from_le_bytes(idx[8..12].try_into().unwrap()) as usize;
    let mut rest = &idx[12..];
    let mut out = Vec::new();
    for _ in 0..n {
        let codec = rest[48];
        let base = (codec == DELTA).then(|| rest[49..81].try_into().unwrap());
        out.push(RemoteEntry {
            id: rest[..32].try_into().unwrap(),
            offset: u64::from_le_bytes(rest[32..40].try_into().unwrap()),
            stored_len: u32::from_le_bytes(rest[40..44].try_into().unwrap()),
            codec,
            base,
        });
        rest = &rest[if codec == DELTA { 81 } else { 49 }..];
    }
    assert!(rest.is_empty());
    out
}

fn remote_packs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Defects.

/// A delta record names its base's depth (`depth - 1`) and the reader insists on exactly that
/// depth (src/store/read.rs), but a chunk's depth is a property of how one store
/// happened to store it, not of its content. A store that holds the base chunk at another depth
/// (here: it uploaded checkpoint 1 itself, whole) pulls the remote's depth-2 delta of
/// checkpoint 2 against it as a "local hit": the pulled version can never be read there.
#[test]
fn defect_pull_onto_a_base_held_at_another_depth_is_unreadable() {
    let t = tmp();
    let ck = checkpoints(3, 100);
    let (_, remote) = dir_remote(t.path(), "depth-pull");
    let a = Store::open(t.path().join("a")).unwrap();
    for (i, c) in ck.iter().enumerate() {
        put(&a, &format!("s{i}.safetensors"), c);
    }
    assert!(delta_records(&t.path().join("a")) > 0);
    a.push(&remote, None).unwrap();

    // This store has checkpoint 1 under its own name, stored whole (depth 0); the remote has
    // it at depth 1 and checkpoint 2 at depth 2 on top of it.
    let c = Store::open(t.path().join("c")).unwrap();
    put(&c, "mine.safetensors", &ck[1]);
    let rep = c.pull(&remote, None).unwrap();
    assert!(
        rep.conflicts.is_empty() && rep.damaged.is_empty(),
        "{rep:?}"
    );
    assert!(read(&c, "s1.safetensors", None).unwrap() == ck[1]);
    let got = read(&c, "s2.safetensors", None);
    assert!(
        got.as_ref().is_ok_and(|b| *b == ck[2]),
        "pulled s2 unreadable: {:?}",
        got.err()
    );
    let v = c.verify().unwrap();
    assert!(v.ok, "{v:?}");
}

/// The same mismatch made by push: the remote holds checkpoint 1 at depth 1 (pushed by `a`);
/// `c` stored it whole and checkpoint 2 as a depth-1 delta on it, and push skips the base as
/// "already remote". The remote now holds a version no store can ever read back.
#[test]
fn defect_push_onto_a_base_the_remote_holds_at_another_depth_leaves_it_undecodable() {
    let t = tmp();
    let ck = checkpoints(3, 100);
    let (_, remote) = dir_remote(t.path(), "depth-push");
    let a = Store::open(t.path().join("a")).unwrap();
    put(&a, "s0.safetensors", &ck[0]);
    put(&a, "s1.safetensors", &ck[1]);
    a.push(&remote, None).unwrap();

    let c = Store::open(t.path().join("c")).unwrap();
    put(&c, "mine.safetensors", &ck[1]);
    put(&c, "mine.safetensors", &ck[2]);
    assert!(delta_records(&t.path().join("c")) > 0);
    assert!(read(&c, "mine.safetensors", Some(2)).unwrap() == ck[2]);
    c.push(&remote, None).unwrap();

    let e = Store::open(t.path().join("e")).unwrap();
    let rep = e.pull(&remote, None).unwrap();
    assert!(
        rep.conflicts.is_empty() && rep.damaged.is_empty(),
        "{rep:?}"
    );
    assert!(read(&e, "s1.safetensors", None).unwrap() == ck[1]);
    let got = read(&e, "mine.safetensors", Some(2));
    assert!(
        got.as_ref().is_ok_and(|b| *b == ck[2]),
        "a fresh pull of what c pushed cannot be read: {:?}",
        got.err()
    );
}

/// A pull that fails half-way keeps what arrived (by design), and fetches run in remote pack
/// order, so a delta can be indexed while its base never arrives. Ingest's dedup then treats
/// that delta as a known chunk: a later, acknowledged upload of the same bytes references a
/// chunk that cannot be decoded.
#[test]
fn defect_upload_after_failed_pull_references_a_delta_whose_base_never_arrived() {
    let t = tmp();
    let ck = checkpoints(2, 100);
    let (rdir, remote) = dir_remote(t.path(), "half-pull");
    // A store where checkpoint 1 is deltas on checkpoint 0's pieces, which only live as bases:
    // the push plan interleaves each delta with its base (delta first).
    let d = Store::open(t.path().join("d")).unwrap();
    put(&d, "s0.safetensors", &ck[0]);
    put(&d, "s1.safetensors", &ck[1]);
    d.delete(&key("s0.safetensors")).unwrap();
    d.gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    d.push(&remote, None).unwrap();

    // Damage the data of the last base record that follows its delta in the remote pack (the
    // pack index stays good: pull plans the chunk, then refuses it when fetched).
    let packs = remote_packs(&rdir);
    let mut victim = None;
    for p in &packs {
        let es = remote_entries(p);
        for e in &es {
            if let Some(b) = e.base
                && let Some(be) = es.iter().find(|x| x.id == b)
                && be.offset > e.offset
                && be.codec != DELTA
            {
                victim = Some((p.clone(), be.clone()));
            }
        }
    }
    let (p, be) = victim.expect("a base stored after its delta");
    flip_byte(&p, be.offset + 52 + u64::from(be.stored_len) / 2);

    let e_root = t.path().join("e");
    let e = Store::open(&e_root).unwrap();
    // The damaged base is skipped and reported; the version that needs it is kept out.
    let rep = e.pull(&remote, None).unwrap();
    assert!(
        rep.damaged
            .iter()
            .any(|d| d.contains(&ml_dash::testing::digest::hex_encode(&be.id)))
            && rep.manifests == 0,
        "{rep:?}"
    );
    // Whatever arrived is kept: some of it are deltas whose base never came.
    assert!(delta_records(&e_root) > 0);

    // The user now uploads checkpoint 1 themselves: acknowledged...
    put(&e, "mine.safetensors", &ck[1]);
    // ...so it must read back.
    let got = read(&e, "mine.safetensors", None);
    assert!(
        got.as_ref().is_ok_and(|b| *b == ck[1]),
        "acknowledged upload unreadable: {:?}",
        got.err()
    );
}

/// gc drops garbage chunks from the index but leaves their records in packs below the rewrite
/// threshold. `rebuild_index` (repair, or any session finding a damaged index) indexes the
/// first record of each chunk id it scans, so a stale delta record whose base gc deleted wins
/// over the live, whole copy written later: a live version becomes unreadable after repair.
#[test]
fn defect_rebuild_index_prefers_a_stale_delta_whose_base_was_collected() {
    let t = tmp();
    let root = t.path().join("s");
    let ck = checkpoints(2, 100);
    let s = Store::open(&root).unwrap();
    put(&s, "a.safetensors", &ck[0]);
    // A torn append (a crash) at the end of checkpoint 0's pack: the next upload starts a new
    // pack, so checkpoint 0's pack can later go whole.
    let p0 = pack_files(&root);
    assert_eq!(p0.len(), 1);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p0[0])
        .unwrap()
        .write_all(b"x")
        .unwrap();
    // Checkpoint 1 as deltas on checkpoint 0, and a small unrelated file, in a second pack.
    put(&s, "b.safetensors", &ck[1]);
    assert!(delta_records(&root) > 0);
    put(&s, "notes.bin", &random_bytes(5, 10_000));
    assert_eq!(pack_files(&root).len(), 2);
    s.delete(&key("a.safetensors")).unwrap();
    s.delete(&key("b.safetensors")).unwrap();
    // The CLI default threshold is 0.5 (the second pack is nearly all garbage here, so 1.0
    // stands in for a pack that holds more live data).
    s.gc(&ml_dash::GcOptions::new().rewrite_threshold(1.0))
        .unwrap();
    assert_eq!(pack_files(&root).len(), 1, "checkpoint 0's pack is gone");
    // Checkpoint 1 again under a new name: no base version any more, stored whole.
    put(&s, "c.safetensors", &ck[1]);
    assert!(read(&s, "c.safetensors", None).unwrap() == ck[1]);
    assert!(s.verify().unwrap().ok);

    let rep = s.rebuild_index().unwrap();
    assert!(rep.damaged.is_empty(), "{rep:?}");
    let got = read(&s, "c.safetensors", None);
    assert!(
        got.as_ref().is_ok_and(|b| *b == ck[1]),
        "live version unreadable after repair: {:?}",
        got.err()
    );
    let v = s.verify().unwrap();
    assert!(v.ok, "{v:?}");
}

/// "A remote pack whose footer or index is damaged is left out and reported; a push then
/// re-sends any chunk only that pack held." Not for delta bases: push's plan stops at a chunk
/// the remote already has, so a base that no manifest names directly is never re-sent, and
/// the version stays unpullable however often the owner pushes.
#[test]
fn defect_push_heal_does_not_resend_a_base_held_only_by_a_damaged_remote_pack() {
    let t = tmp();
    let ck = checkpoints(2, 100);
    let (rdir, remote) = dir_remote(t.path(), "heal");
    let d = Store::open(t.path().join("d")).unwrap();
    // Remote pack 1: checkpoint 0. Remote pack 2: checkpoint 1, deltas on pack 1's chunks.
    put(&d, "s0.safetensors", &ck[0]);
    d.push(&remote, None).unwrap();
    let first = remote_packs(&rdir);
    assert_eq!(first.len(), 1);
    put(&d, "s1.safetensors", &ck[1]);
    d.push(&remote, None).unwrap();
    assert!(
        remote_packs(&rdir)
            .iter()
            .flat_map(|p| remote_entries(p))
            .any(|e| e.codec == DELTA)
    );
    // Checkpoint 0 is deleted here; its chunks stay as the bases of checkpoint 1.
    d.delete(&key("s0.safetensors")).unwrap();
    assert!(
        d.gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
            .unwrap()
            .kept_as_delta_bases
            > 0
    );
    assert!(read(&d, "s1.safetensors", None).unwrap() == ck[1]);

    // Remote pack 1 loses its footer (a truncated object): left out and reported.
    let b = std::fs::read(&first[0]).unwrap();
    std::fs::write(&first[0], &b[..b.len() - 1]).unwrap();
    // The owner, who still has every chunk, pushes to heal it.
    d.push(&remote, None).unwrap();

    let e = Store::open(t.path().join("e")).unwrap();
    let rep = e.pull(&remote, None).unwrap();
    let got = read(&e, "s1.safetensors", None);
    assert!(
        got.as_ref().is_ok_and(|b| *b == ck[1]),
        "s1 not pullable after a healing push: {:?} / {:?}",
        got.err(),
        rep.damaged
    );
}

/// `upload_pack` sizes the object as 12 + n x 49 bytes of index, forgetting the 32-byte base
/// of each delta entry: `PushReport::bytes` under-counts what was uploaded (and the part size
/// is chosen from the wrong total).
#[test]
fn defect_push_report_bytes_miss_the_delta_bases_in_the_index() {
    let t = tmp();
    let ck = checkpoints(2, 100);
    let (rdir, remote) = dir_remote(t.path(), "bytes");
    let a = Store::open(t.path().join("a")).unwrap();
    put(&a, "s0.safetensors", &ck[0]);
    put(&a, "s1.safetensors", &ck[1]);
    let rep = a.push(&remote, None).unwrap();
    let on_remote: u64 = remote_packs(&rdir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(rep.bytes, on_remote, "{rep:?}");
}

// ---------------------------------------------------------------------------------------------
// What held up (regression tests).

/// Deleting the head and the middle of a depth-2 chain: gc keeps both bases (transitively) and
/// moves them when rewriting, the tail still reads back; deleting the tail frees everything.
#[test]
fn gc_keeps_a_whole_chain_under_its_last_delta_through_rewrites() {
    let ck = checkpoints(3, 100);
    let t = tmp();
    let s = Store::open(t.path()).unwrap();
    for (i, c) in ck.iter().enumerate() {
        put(&s, &format!("s{i}.safetensors"), c);
    }
    put(&s, "other.bin", &random_bytes(3, 50_000));
    s.delete(&key("s0.safetensors")).unwrap();
    s.delete(&key("s1.safetensors")).unwrap();
    let g = s
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert!(g.kept_as_delta_bases > 0, "{g:?}");
    assert!(read(&s, "s2.safetensors", None).unwrap() == ck[2]);
    assert!(s.verify().unwrap().ok);
    // Twice: the moved bases are found again.
    s.gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert!(read(&s, "s2.safetensors", None).unwrap() == ck[2]);
    // A repair after the rewrites still knows the chain.
    assert!(s.rebuild_index().unwrap().damaged.is_empty());
    assert!(read(&s, "s2.safetensors", None).unwrap() == ck[2]);
    s.delete(&key("s2.safetensors")).unwrap();
    let g = s
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert_eq!(g.kept_as_delta_bases, 0);
    assert!(read(&s, "other.bin", None).is_ok());
    assert!(s.verify().unwrap().ok);
    assert!(
        packs_total(t.path()) < 60_000 + 4096,
        "{}",
        packs_total(t.path())
    );
}

/// A longer configured chain decodes exactly, a chain never exceeds the configured depth, and
/// a store reopened with a smaller depth starts whole pieces again (no read-side assumption on
/// the writer's depth).
#[test]
#[allow(
    clippy::cast_possible_truncation,
    reason = "in an assertion: version numbers of a few checkpoints"
)]
fn deep_chains_decode_and_depth_changes_between_sessions_are_safe() {
    let t = tmp();
    let ck = checkpoints(6, 50);
    {
        let s = Store::open_with(t.path(), StoreOptions::default().delta_depth(4)).unwrap();
        for c in &ck[..4] {
            put(&s, "run.safetensors", c);
        }
    }
    let s = Store::open_with(t.path(), StoreOptions::default().delta_depth(1)).unwrap();
    for c in &ck[4..] {
        put(&s, "run.safetensors", c);
    }
    // Depth byte of every delta record: at most 4.
    let mut max_depth = 0u8;
    for p in pack_files(t.path()) {
        let b = std::fs::read(&p).unwrap();
        for r in pack_records(&p) {
            if r.codec == DELTA {
                max_depth = max_depth.max(b[usize_from(r.data_start()) + 32]);
            }
        }
    }
    assert!((1..=4).contains(&max_depth), "{max_depth}");
    for (i, c) in ck.iter().enumerate() {
        assert!(
            read(&s, "run.safetensors", Some(i as u32 + 1)).unwrap() == *c,
            "v{}",
            i + 1
        );
    }
    assert!(s.verify().unwrap().ok);
}

/// Hostile safetensors headers (offsets near `u64::MAX`, a header of exactly the limit, a
/// tensor running past the end of the file, duplicate names, empty and unknown dtypes) never
/// panic and always read back exactly, also as a second version stored against the first.
#[test]
#[allow(
    clippy::cast_possible_truncation,
    reason = "in an assertion: version numbers of a few files"
)]
fn hostile_safetensors_headers_round_trip_as_versions() {
    let t = tmp();
    let s = Store::open(t.path()).unwrap();
    let body = random_bytes(17, 700_000);
    let big = format!(
        "{{\"w\":{{\"dtype\":\"F32\",\"data_offsets\":[0,64]}},\"__metadata__\":{{\"pad\":\"{}\"}}}}",
        "x".repeat(200_000)
    );
    let headers = [
        format!(
            r#"{{"w":{{"dtype":"F32","data_offsets":[0,{}]}}}}"#,
            u64::MAX - 3
        ),
        format!(
            r#"{{"w":{{"dtype":"F32","data_offsets":[{},{}]}}}}"#,
            u64::MAX - 3,
            u64::MAX
        ),
        r#"{"w":{"dtype":"BF16","data_offsets":[0,600000]},"v":{"dtype":"BF16","data_offsets":[600000,900000]}}"#.to_string(),
        r#"{"w":{"dtype":"F32","data_offsets":[0,8]},"w":{"dtype":"F32","data_offsets":[8,400000]}}"#.to_string(),
        r#"{"a":{"dtype":"I8","data_offsets":[3,3]},"b":{"dtype":"F8_E4M3","data_offsets":[3,300001]},"c":{"dtype":"F64","data_offsets":[300001,700000]}}"#.to_string(),
        big,
    ];
    for (i, h) in headers.iter().enumerate() {
        let name = format!("h{i}.safetensors");
        let mut versions = Vec::new();
        for round in 0..3u8 {
            let mut f = (h.len() as u64).to_le_bytes().to_vec();
            f.extend_from_slice(h.as_bytes());
            // Small changes between versions so deltas pay where a layout is accepted.
            let mut b = body.clone();
            for k in (0..b.len()).step_by(97) {
                b[k] = b[k].wrapping_add(round);
            }
            f.extend_from_slice(&b);
            put(&s, &name, &f);
            versions.push(f);
        }
        for (v, f) in versions.iter().enumerate() {
            same_bytes(
                read(&s, &name, Some(v as u32 + 1)).unwrap(),
                f,
                &format!("header {i} v{}", v + 1),
            );
        }
    }
    assert!(s.verify().unwrap().ok);
}
