//! A hostile remote: `pull` from a directory remote that the input damages and forges, then
//! upload files into the same store. No acknowledged file may become unreadable, and no read
//! may return wrong bytes.
//!
//! Once per process, an honest store is pushed to a template remote (small chunks; two pushes,
//! so two packs; a checkpoint stored as a delta; a delete and an update event). Its files share
//! content with the files the victim uploads later, whose chunk ids (and bytes) the harness
//! knows from a second template store. Each run copies the template remote and applies the
//! operations the input chooses: flip / overwrite / truncate / append / delete bytes of any
//! object (packs, manifests, events, the marker); new validly framed manifests and events whose
//! bodies are input bytes, or template records with hostile fields (version 0 / i32::MAX /
//! u32::MAX, names with `..`, `/`, NUL, ESC, 5,000 bytes, many tags, big metadata, odd
//! timestamps, ids far in the future); forged pack objects whose records claim the ids of the
//! victim's chunks (whole records with wrong bytes, and codec-4 deltas with a valid header and
//! inner checksum, honest or not, on bases of the right length) with a manifest that makes the
//! pull fetch them; re-sealed pack indexes with altered entries; reports of rotten records.
//! Then a fresh victim store (sometimes holding a victim file already) pulls (any result),
//! uploads every victim file (must succeed), and every acknowledged version must read back
//! byte-exact (`open_file` after each step, `download_to` too at the end); any pulled version
//! whose chunks the harness knows must read as those chunks whenever it reads at all
//! (`open_version`). A second pull may follow, then the checks again; `verify` must not panic.
#![no_main]
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ml_dash::ChunkId;
use ml_dash::ChunkerConfig;
use ml_dash::Id;
use ml_dash::testing::codec::{self, Codec, Compression};
use ml_dash::testing::delta::{self, Transform};
use ml_dash::testing::manifest::{self, Manifest};
use ml_dash::testing::pack::{self, RecordHeader};
use ml_dash::testing::rpack;
use ml_dash::{ExperimentKey, FileKey};
use ml_dash::{NewVersion, Store, StoreOptions};
use ml_dash::{Remote, RemoteConfig};
use serde_json::{Value, json};

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

/// A safetensors file with one F32 tensor of 1,024 values, `state` training steps along (each
/// step moves every value a little, so consecutive states store as deltas).
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

fn exp(name: &str) -> ExperimentKey {
    ExperimentKey::new("local", "p", name).unwrap()
}

/// What every run starts from.
struct Template {
    /// The pushed remote: relative path → bytes.
    remote: Vec<(String, Vec<u8>)>,
    /// What the victim uploads, in order (a key may come twice: versions 1 and 2).
    victim: Vec<(FileKey, Vec<u8>)>,
    /// The victim's distinct chunks, and the remote's.
    victim_chunks: Vec<(ChunkId, u32)>,
    remote_chunks: Vec<(ChunkId, u32)>,
    /// The bytes of every chunk above.
    content: HashMap<ChunkId, Vec<u8>>,
    /// Manifest bodies (as JSON) of the template stores: the remote's first, then the victim's.
    manifests: Vec<Value>,
    /// Event bodies (as JSON) of the remote, and deletes of the victim's paths.
    events: Vec<Value>,
}

/// Decoded manifests of a store, with the bytes of each chunk (from the uploaded bytes).
fn manifests_of(
    root: &Path,
    uploaded: &HashMap<Id, Vec<u8>>,
    content: &mut HashMap<ChunkId, Vec<u8>>,
) -> Vec<Manifest> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(root.join("manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let Ok(m) = Manifest::decode(&std::fs::read(&p).unwrap(), "template") else {
            continue;
        };
        let bytes = &uploaded[&m.record.id];
        let mut at = 0usize;
        for (c, len) in &m.chunks {
            let piece = &bytes[at..at + *len as usize];
            assert_eq!(ChunkId::of(piece), *c);
            content.insert(*c, piece.to_vec());
            at += *len as usize;
        }
        out.push(m);
    }
    out
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

fn distinct(ms: &[Manifest]) -> Vec<(ChunkId, u32)> {
    let mut v: Vec<(ChunkId, u32)> = ms.iter().flat_map(|m| m.chunks.iter().copied()).collect();
    v.sort();
    v.dedup();
    v
}

fn build_template() -> Template {
    let dir = scratch();
    let nothing = NewVersion::default;
    // The victim's files.
    let victim_exp = exp("e");
    let victim: Vec<(FileKey, Vec<u8>)> = vec![
        (
            victim_exp.file("/models".into(), "a.bin".into()),
            rnd(1, 3000),
        ),
        (
            victim_exp.file("/models".into(), "b.bin".into()),
            [rnd(2, 1500), rnd(3, 1500)].concat(),
        ),
        (
            victim_exp.file("/ckpt".into(), "model.safetensors".into()),
            checkpoint(0),
        ),
        (
            victim_exp.file("/ckpt".into(), "model.safetensors".into()),
            checkpoint(2),
        ),
    ];
    let mut content = HashMap::new();
    let vroot = dir.path().join("victim");
    let vstore = Store::open_with(&vroot, opts()).unwrap();
    let mut uploaded = HashMap::new();
    for (k, b) in &victim {
        let r = vstore.put_reader(&b[..], k, nothing(), None).unwrap();
        uploaded.insert(r.id, b.clone());
    }
    let vms = manifests_of(&vroot, &uploaded, &mut content);

    // The remote: an honest store pushed twice.
    let oroot = dir.path().join("origin");
    let rdir = dir.path().join("remote");
    let origin = Store::open_with(&oroot, opts()).unwrap();
    let remote = Remote::open(&RemoteConfig::new(format!("file://{}", rdir.display()))).unwrap();
    let oexp = exp("r");
    let put = |name: &str, b: &[u8], uploaded: &mut HashMap<Id, Vec<u8>>| {
        let r = origin
            .put_reader(b, &oexp.file("/r".into(), name.into()), nothing(), None)
            .unwrap();
        uploaded.insert(r.id, b.to_vec());
        r
    };
    let mut uploaded = HashMap::new();
    let o0 = put(
        "o0.bin",
        &[rnd(2, 1500), rnd(4, 1500)].concat(),
        &mut uploaded,
    );
    put("a.bin", &victim[0].1, &mut uploaded);
    origin.push(&remote, None).unwrap();
    put("ckpt.safetensors", &checkpoint(0), &mut uploaded);
    put("ckpt.safetensors", &checkpoint(1), &mut uploaded);
    put("tmp.bin", &rnd(5, 500), &mut uploaded);
    origin
        .delete(&oexp.file("/r".into(), "tmp.bin".into()))
        .unwrap();
    origin
        .update(
            o0.id,
            &ml_dash::RecordChanges {
                description: None,
                tags: Some(vec!["best".into()]),
                metadata: None,
            },
        )
        .unwrap();
    origin.push(&remote, None).unwrap();
    let oms = manifests_of(&oroot, &uploaded, &mut content);
    let mut packs = 0;
    let mut deltas = 0;
    for e in std::fs::read_dir(rdir.join("packs")).unwrap() {
        let b = std::fs::read(e.unwrap().path()).unwrap();
        let (off, len, check) = rpack::decode_footer(&b[b.len() - 48..], b.len() as u64).unwrap();
        let es = rpack::decode_index(&b[off as usize..(off + len) as usize], &check, off).unwrap();
        packs += 1;
        deltas += es.iter().filter(|e| e.codec == Codec::Delta).count();
    }
    assert!(
        packs >= 2 && deltas > 0,
        "the template remote has {packs} packs, {deltas} delta records"
    );

    let mut events: Vec<Value> = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(oroot.join("events"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let e = manifest::decode_event(&std::fs::read(&p).unwrap(), "template").unwrap();
        events.push(serde_json::to_value(&e).unwrap());
    }
    for (k, _) in &victim {
        events.push(json!({
            "kind": "delete", "id": Id::generate(), "namespace": k.namespace,
            "project": k.project, "experiment": k.experiment, "path": k.path,
            "filename": k.filename, "upToVersion": 1, "at": "2026-01-01T00:00:00.000000Z"
        }));
    }
    let mut remote_files = Vec::new();
    read_tree(&rdir, "", &mut remote_files);
    Template {
        remote: remote_files,
        victim,
        victim_chunks: distinct(&vms),
        remote_chunks: distinct(&oms),
        content,
        manifests: oms
            .iter()
            .chain(&vms)
            .map(|m| serde_json::to_value(m).unwrap())
            .collect(),
        events,
    }
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(build_template)
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
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { self.u16() as usize % n }
    }
    fn pick<'t, T>(&mut self, v: &'t [T]) -> &'t T {
        &v[self.below(v.len())]
    }
    /// Up to `max` bytes: a length byte, then that many bytes of input.
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An id whose time part is `ms`.
fn id_at(ms: u64) -> Id {
    let mut b = Id::generate().0;
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Id(b)
}

fn hostile_id(inp: &mut In) -> Value {
    let id = match inp.u8() % 6 {
        0 => id_at(now_ms() + 10 * 86_400_000),
        1 => id_at((1 << 48) - 1),
        2 => Id([0; 16]),
        3 => id_at(now_ms() + 3_600_000),
        4 => return json!("not-an-id"),
        _ => Id::generate(),
    };
    json!(id)
}

fn hostile_name(inp: &mut In) -> Value {
    match inp.u8() % 13 {
        0 => json!(".."),
        1 => json!("."),
        2 => json!("a/b"),
        3 => json!("x\0y"),
        4 => json!("\x1b]0;owned\x07\x1b[2J.bin"),
        5 => json!("n".repeat(5000)),
        6 => json!(""),
        7 => json!("../../x.bin"),
        8 => json!("a\\b"),
        9 => json!(null),
        10 => json!(7),
        11 => json!("e"),
        _ => json!("ok.bin"),
    }
}

fn hostile_prefix(inp: &mut In) -> Value {
    match inp.u8() % 10 {
        0 => json!("/../../../../outside"),
        1 => json!("/a\0b"),
        2 => json!(format!("/{}", "n".repeat(5000))),
        3 => json!(""),
        4 => json!("models"),
        5 => json!("/models/"),
        6 => json!("//models"),
        7 => json!("/\x1b[2J"),
        8 => json!("/models"),
        _ => json!("/"),
    }
}

fn hostile_version(inp: &mut In) -> Value {
    match inp.u8() % 13 {
        0 => json!(0),
        1 => json!(1),
        2 => json!(2),
        3 => json!(3),
        4 => json!(i32::MAX as u32 - 1),
        5 => json!(i32::MAX as u32),
        6 => json!(i32::MAX as u32 + 1),
        7 => json!(u32::MAX),
        8 => json!(-1),
        9 => json!(1.5),
        10 => json!("2"),
        11 => json!(u64::MAX),
        _ => json!(1000),
    }
}

fn hostile_time(inp: &mut In) -> Value {
    match inp.u8() % 9 {
        0 => json!(""),
        1 => json!("9999-12-31T23:59:59.999999Z"),
        2 => json!("2026-13-45T99:99:99Z"),
        3 => json!("2026-01-01T00:00:00Z".repeat(3)),
        4 => json!("\x1b[2J2026-01-01T00:00:00Z"),
        5 => json!(12345),
        6 => json!(null),
        7 => json!("0000-00-00T00:00:00+99:99"),
        _ => json!("2026-01-01T00:00:00.000000Z"),
    }
}

fn hostile_tags(inp: &mut In) -> Value {
    match inp.u8() % 8 {
        0 => json!((0..300).map(|i| format!("t{i}")).collect::<Vec<_>>()),
        1 => json!(["x".repeat(300)]),
        2 => json!(["a\0b"]),
        3 => json!(["", ""]),
        4 => json!(["dup", "dup"]),
        5 => json!(1),
        6 => json!((0..20_000).map(|i| format!("t{i}")).collect::<Vec<_>>()),
        _ => json!(["ok"]),
    }
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |v, _| json!({ "a": v }))
}

fn hostile_metadata(inp: &mut In) -> Value {
    match inp.u8() % 9 {
        0 => json!({"blob": "x".repeat(70_000)}),
        1 => nested(40),
        2 => json!([1, 2]),
        3 => json!("s"),
        4 => json!({"a": 1}),
        5 => json!(null),
        6 => json!({"\u{0}": 1, "\x1b": "\x1b[2J"}),
        7 => json!({"blob": "x".repeat(2 << 20)}),
        _ => json!({"n": 1e308}),
    }
}

fn hostile_description(inp: &mut In) -> Value {
    match inp.u8() % 5 {
        0 => json!("d".repeat(70_000)),
        1 => json!("\x1b[2J"),
        2 => json!(null),
        3 => json!(5),
        _ => json!("fine"),
    }
}

/// Set `record`'s key to the victim's `k`.
fn retarget(record: &mut Value, k: &FileKey) {
    record["namespace"] = json!(k.namespace);
    record["project"] = json!(k.project);
    record["experiment"] = json!(k.experiment);
    record["path"] = json!(k.path);
    record["filename"] = json!(k.filename);
}

fn chunk_list(v: &[(ChunkId, u32)]) -> Value {
    json!(v.iter().map(|(c, l)| json!([c, l])).collect::<Vec<_>>())
}

/// Sum the chunk lengths into `sizeBytes` (when the list is well formed), so the manifest
/// passes its own size check.
fn fix_size(m: &mut Value) {
    let sum = m["chunks"].as_array().and_then(|cs| {
        cs.iter()
            .map(|c| c.get(1).and_then(Value::as_u64))
            .sum::<Option<u64>>()
    });
    if let Some(s) = sum {
        m["record"]["sizeBytes"] = json!(s);
    }
}

/// One hostile change to a manifest body.
fn mutate_manifest(m: &mut Value, inp: &mut In, t: &Template) {
    let r = &mut m["record"];
    match inp.u8() % 23 {
        0 => r["version"] = hostile_version(inp),
        1 => r["namespace"] = hostile_name(inp),
        2 => r["project"] = hostile_name(inp),
        3 => r["experiment"] = hostile_name(inp),
        4 => r["filename"] = hostile_name(inp),
        5 => r["path"] = hostile_prefix(inp),
        6 => r["tags"] = hostile_tags(inp),
        7 => r["metadata"] = hostile_metadata(inp),
        8 => r["description"] = hostile_description(inp),
        9 => r["uploadedAt"] = hostile_time(inp),
        10 => r["updatedAt"] = hostile_time(inp),
        11 => r["deletedAt"] = hostile_time(inp),
        12 => r["id"] = hostile_id(inp),
        13 => {
            r["contentType"] = match inp.u8() % 4 {
                0 => json!(""),
                1 => json!("a\nb"),
                2 => json!("x".repeat(300)),
                _ => json!("text/plain"),
            }
        }
        14 => r["sizeBytes"] = json!([0u64, u64::MAX, 1][inp.below(3)]),
        15 => r["newBytes"] = json!(u64::MAX),
        16 => r["checksum"] = json!(["zz".to_string(), "0".repeat(64)][inp.below(2)]),
        17 => m["format"] = json!([0, 2, u32::MAX][inp.below(3)]),
        18 => {
            // Some of the victim's chunks, maybe with wrong lengths.
            let mut cs: Vec<(ChunkId, u32)> = t.victim_chunks.clone();
            let skip = inp.below(cs.len());
            cs.drain(..skip);
            cs.truncate(1 + inp.below(8));
            match inp.u8() % 4 {
                0 => cs.iter_mut().for_each(|c| c.1 = 0),
                1 => cs.iter_mut().for_each(|c| c.1 = 17 << 20),
                2 => cs.iter_mut().for_each(|c| c.1 += 1),
                _ => {}
            }
            m["chunks"] = chunk_list(&cs);
        }
        19 => {
            let c = *inp.pick(&t.remote_chunks);
            m["chunks"] = chunk_list(&vec![c; [0, 1000, 3][inp.below(3)]]);
        }
        20 => {
            let (k, _) = inp.pick(&t.victim);
            retarget(r, k);
        }
        21 => {
            // A version of one of the victim's paths, with any number.
            let (k, _) = inp.pick(&t.victim);
            retarget(r, k);
            r["version"] = hostile_version(inp);
        }
        _ => r["version"] = json!(1 + inp.below(4)),
    }
}

fn frame(magic: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{magic} {}\n", blake3::hash(body).to_hex()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// The file name id for a body: its own id when it has one (else pull refuses it at once).
fn name_id(body: &Value, inp: &mut In) -> Id {
    let own = body
        .get("record")
        .and_then(|r| r.get("id"))
        .or_else(|| body.get("id"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok());
    match own {
        Some(id) if inp.u8() % 8 != 0 => id,
        _ => Id::generate(),
    }
}

/// A record a forged pack holds: chunk id, raw length, codec, stored bytes.
type Forged = (ChunkId, u32, Codec, Vec<u8>);

/// A remote pack object holding `recs`, named `id`.
fn pack_object(id: Id, recs: &[Forged]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"MLDPACK\0");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&id.0);
    let mut entries = Vec::new();
    for (cid, raw_len, codec, stored) in recs {
        let h = RecordHeader {
            codec: *codec,
            raw_len: *raw_len,
            stored_len: stored.len() as u32,
            id: *cid,
        };
        entries.push(rpack::Entry {
            id: *cid,
            offset: b.len() as u64,
            stored_len: h.stored_len,
            raw_len: *raw_len,
            codec: *codec,
            base: (*codec == Codec::Delta)
                .then(|| delta::base_of(stored))
                .flatten(),
        });
        b.extend_from_slice(&pack::encode_record_header(&h));
        b.extend_from_slice(stored);
    }
    let idx = rpack::encode_index(&entries);
    let off = b.len() as u64;
    b.extend_from_slice(&idx);
    b.extend_from_slice(&rpack::encode_footer(off, &idx));
    b
}

/// Delta stored bytes with a valid header and inner checksum, whatever `inner` decodes to.
fn delta_stored(
    base: &ChunkId,
    depth: u8,
    t: Transform,
    inner_codec: Codec,
    inner: &[u8],
) -> Vec<u8> {
    let mut s = base.as_bytes().to_vec();
    s.extend_from_slice(&[depth, t as u8, inner_codec as u8, 0]);
    s.extend_from_slice(&blake3::hash(inner).as_bytes()[..16]);
    s.extend_from_slice(inner);
    s
}

/// A pack of records claiming chunks (mostly the victim's), and maybe a manifest that needs
/// them.
fn forge_pack(inp: &mut In, t: &Template, content: &mut HashMap<ChunkId, Vec<u8>>, rdir: &Path) {
    let mut recs: Vec<Forged> = Vec::new();
    let mut claims: Vec<(ChunkId, u32)> = Vec::new();
    for _ in 0..1 + inp.u8() % 4 {
        let (id, len) = match inp.u8() % 8 {
            0..=4 => *inp.pick(&t.victim_chunks),
            5 | 6 => *inp.pick(&t.remote_chunks),
            _ => {
                let b = rnd(inp.u16() as u64 + 1000, 64 + inp.below(1000));
                let id = ChunkId::of(&b);
                let len = b.len() as u32;
                content.insert(id, b);
                (id, len)
            }
        };
        let want = content[&id].clone();
        match inp.u8() % 10 {
            0 => recs.push((id, len, Codec::Raw, want.clone())),
            1 => {
                let mut w = want.clone();
                let at = inp.below(w.len());
                w[at] ^= 1 << (inp.u8() % 8);
                recs.push((id, len, Codec::Raw, w));
            }
            2 => {
                let mut w = inp.bytes(255);
                w.resize(len as usize, 0);
                recs.push((id, len, Codec::Raw, w));
            }
            3 => {
                let c = [Codec::Zstd, Codec::Planes4, Codec::Planes2][inp.below(3)];
                recs.push((id, len, c, inp.bytes(255)));
            }
            4 => match codec::encode(&want, Compression::Auto(1)) {
                Some((c, s)) => recs.push((id, len, c, s)),
                None => recs.push((id, len, Codec::Raw, want.clone())),
            },
            _ => {
                // A delta: on a base of the same length (fresh here, known, or the previous
                // record), on any chunk, or on itself.
                let fresh = |inp: &mut In,
                             content: &mut HashMap<ChunkId, Vec<u8>>,
                             recs: &mut Vec<Forged>| {
                    let b = rnd(inp.u16() as u64 + 5000, len as usize);
                    let bid = ChunkId::of(&b);
                    content.insert(bid, b.clone());
                    recs.push((bid, len, Codec::Raw, b));
                    bid
                };
                let base = match inp.u8() % 6 {
                    0 | 1 => fresh(inp, content, &mut recs),
                    2 => {
                        let same: Vec<ChunkId> = t
                            .victim_chunks
                            .iter()
                            .chain(&t.remote_chunks)
                            .filter(|(c, l)| *l == len && *c != id)
                            .map(|(c, _)| *c)
                            .collect();
                        if same.is_empty() {
                            fresh(inp, content, &mut recs)
                        } else {
                            *inp.pick(&same)
                        }
                    }
                    3 => match recs.last() {
                        Some(r) => r.0,
                        None => fresh(inp, content, &mut recs),
                    },
                    4 => inp.pick(&t.victim_chunks).0,
                    _ => id,
                };
                let depth = [1u8, 1, 2, 3, 15, 0, 16][inp.below(7)];
                let tr = Transform::from_u8(inp.u8() % 3).unwrap();
                let stored = match (inp.u8() % 4, content.get(&base)) {
                    (0 | 1, Some(b)) if b.len() == want.len() => {
                        // Honest: decodes to the chunk it claims.
                        let d = delta::difference(&want, b, tr);
                        let mut s = delta_stored(&base, depth, tr, Codec::Raw, &d);
                        if inp.u8() % 2 == 0
                            && let Some(enc) = delta::encode(
                                &want,
                                b,
                                &base,
                                depth.clamp(1, 15),
                                tr,
                                Compression::Auto(1),
                                -1.0,
                            )
                        {
                            s = enc;
                        }
                        s
                    }
                    (2, Some(b)) if b.len() == want.len() => {
                        // Off by one bit, with a correct inner checksum.
                        let mut d = delta::difference(&want, b, tr);
                        let at = inp.below(d.len());
                        d[at] ^= 1 << (inp.u8() % 8);
                        delta_stored(&base, depth, tr, Codec::Raw, &d)
                    }
                    _ => {
                        let mut d = inp.bytes(255);
                        if inp.u8() % 2 == 0 {
                            d.resize(len as usize, 0);
                        }
                        delta_stored(&base, depth, tr, Codec::Raw, &d)
                    }
                };
                recs.push((id, len, Codec::Delta, stored));
            }
        }
        claims.push((id, len));
    }
    // Pull takes the first copy of a chunk from the pack whose name sorts first: an old id
    // puts the forged records ahead of the honest ones.
    let pid = if inp.u8() % 2 == 0 {
        id_at(1_000 + inp.u16() as u64)
    } else {
        Id::generate()
    };
    let bytes = pack_object(pid, &recs);
    let dir = rdir.join("packs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(rpack::object_name(pid)), bytes).unwrap();
    if inp.u8() % 4 == 0 {
        return;
    }
    // A manifest that needs the claimed chunks: in a new path, or in the victim's own.
    let mut m = t.manifests[inp.below(t.manifests.len())].clone();
    let id = Id::generate();
    m["record"]["id"] = json!(id);
    m["record"]["version"] = json!(1 + inp.below(3));
    match inp.u8() % 3 {
        0 => {
            let k = &inp.pick(&t.victim).0;
            retarget(&mut m["record"], k);
        }
        1 => {
            m["record"]["experiment"] = json!("evil");
            m["record"]["filename"] = json!(format!("x{}.bin", inp.u8()));
        }
        _ => {}
    }
    if inp.u8() % 2 == 0 {
        // Plus honest chunks of the remote.
        let extra = inp.pick(&t.remote_chunks);
        claims.push(*extra);
    }
    m["chunks"] = chunk_list(&claims);
    fix_size(&mut m);
    write_framed(
        rdir,
        "manifests",
        "manifest",
        id,
        manifest::MANIFEST_MAGIC,
        &m,
    );
}

fn write_framed(rdir: &Path, dir: &str, ext: &str, id: Id, magic: &str, body: &Value) {
    let d = rdir.join(dir);
    std::fs::create_dir_all(&d).unwrap();
    let b = serde_json::to_vec(body).unwrap();
    std::fs::write(d.join(format!("{id}.{ext}")), frame(magic, &b)).unwrap();
}

/// Every object of the remote, sorted.
fn objects(rdir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![rdir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Re-seal a remote pack's index with one entry changed (the index checksum then holds).
fn reseal(inp: &mut In, t: &Template, rdir: &Path) {
    let packs: Vec<PathBuf> = objects(rdir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    if packs.is_empty() {
        return;
    }
    let p = inp.pick(&packs).clone();
    let b = std::fs::read(&p).unwrap();
    if b.len() < rpack::FOOTER_LEN as usize {
        return;
    }
    let Ok((off, len, check)) = rpack::decode_footer(&b[b.len() - 48..], b.len() as u64) else {
        return;
    };
    let Ok(mut es) = rpack::decode_index(&b[off as usize..(off + len) as usize], &check, off)
    else {
        return;
    };
    if es.is_empty() {
        return;
    }
    let i = inp.below(es.len());
    let e = &mut es[i];
    match inp.u8() % 9 {
        0 => e.id = inp.pick(&t.victim_chunks).0,
        1 => e.offset = e.offset.wrapping_add(inp.u8() as u64).wrapping_sub(128),
        2 => e.stored_len = e.stored_len.wrapping_add(inp.u8() as u32).wrapping_sub(128),
        3 => e.raw_len = inp.u32() % (1 << 25),
        4 => {
            e.codec = Codec::from_u8(inp.u8() % 5).unwrap();
            e.base = (e.codec == Codec::Delta).then(|| inp.pick(&t.victim_chunks).0);
        }
        5 => e.base = e.base.map(|_| inp.pick(&t.victim_chunks).0),
        6 => {
            let d = *e;
            es.push(d);
        }
        7 => {
            es.remove(i);
        }
        _ => {
            let j = inp.below(es.len());
            es.swap(i, j);
        }
    }
    let idx = rpack::encode_index(&es);
    let mut out = b[..off as usize].to_vec();
    out.extend_from_slice(&idx);
    out.extend_from_slice(&rpack::encode_footer(off, &idx));
    std::fs::write(&p, out).unwrap();
}

/// Apply one operation the input chooses to the remote in `rdir`.
fn operate(inp: &mut In, t: &Template, content: &mut HashMap<ChunkId, Vec<u8>>, rdir: &Path) {
    let objs = objects(rdir);
    let obj = |inp: &mut In| -> Option<PathBuf> {
        (!objs.is_empty()).then(|| objs[inp.below(objs.len())].clone())
    };
    match inp.u8() % 16 {
        0 => {
            if let Some(p) = obj(inp) {
                let mut b = std::fs::read(&p).unwrap();
                if !b.is_empty() {
                    // Mostly near the end of packs (footer and index), anywhere otherwise.
                    let at = if inp.u8() % 2 == 0 {
                        b.len() - 1 - inp.below(b.len().min(200))
                    } else {
                        inp.below(b.len())
                    };
                    b[at] ^= 1 << (inp.u8() % 8);
                    std::fs::write(&p, b).unwrap();
                }
            }
        }
        1 => {
            if let Some(p) = obj(inp) {
                let mut b = std::fs::read(&p).unwrap();
                let at = inp.below(b.len() + 1);
                let data = inp.bytes(64);
                if b.len() < at + data.len() {
                    b.resize(at + data.len(), 0);
                }
                b[at..at + data.len()].copy_from_slice(&data);
                std::fs::write(&p, b).unwrap();
            }
        }
        2 => {
            if let Some(p) = obj(inp) {
                let b = std::fs::read(&p).unwrap();
                let keep = inp.below(b.len() + 1);
                std::fs::write(&p, &b[..keep]).unwrap();
            }
        }
        3 => {
            if let Some(p) = obj(inp) {
                let mut b = std::fs::read(&p).unwrap();
                b.extend_from_slice(&inp.bytes(255));
                std::fs::write(&p, b).unwrap();
            }
        }
        4 => {
            if let Some(p) = obj(inp) {
                std::fs::remove_file(&p).unwrap();
            }
        }
        5 | 6 => {
            // A framed manifest whose body is input bytes, or a template body with some of its
            // bytes overwritten.
            let body = if inp.u8() % 2 == 0 {
                inp.bytes(255)
            } else {
                let mut b = serde_json::to_vec(inp.pick(&t.manifests)).unwrap();
                for _ in 0..1 + inp.u8() % 3 {
                    let at = inp.below(b.len());
                    b[at] = inp.u8();
                }
                b
            };
            let id = serde_json::from_slice::<Value>(&body)
                .ok()
                .map_or_else(Id::generate, |v| name_id(&v, inp));
            let d = rdir.join("manifests");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join(manifest::manifest_file_name(id)),
                frame(manifest::MANIFEST_MAGIC, &body),
            )
            .unwrap();
        }
        7 | 8 => {
            // A template manifest with hostile fields.
            let mut m = inp.pick(&t.manifests).clone();
            m["record"]["id"] = json!(Id::generate());
            for _ in 0..1 + inp.u8() % 3 {
                mutate_manifest(&mut m, inp, t);
            }
            if inp.u8() % 4 != 0 {
                fix_size(&mut m);
            }
            let id = name_id(&m, inp);
            write_framed(
                rdir,
                "manifests",
                "manifest",
                id,
                manifest::MANIFEST_MAGIC,
                &m,
            );
        }
        9 => {
            // An event: input bytes, or a template event with hostile fields.
            if inp.u8() % 3 == 0 {
                let body = inp.bytes(255);
                let d = rdir.join("events");
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(
                    d.join(manifest::event_file_name(Id::generate())),
                    frame(manifest::EVENT_MAGIC, &body),
                )
                .unwrap();
                return;
            }
            let mut e = inp.pick(&t.events).clone();
            e["id"] = json!(Id::generate());
            for _ in 0..1 + inp.u8() % 3 {
                match inp.u8() % 13 {
                    0 => e["upToVersion"] = hostile_version(inp),
                    1 => e["tags"] = hostile_tags(inp),
                    2 => e["metadata"] = hostile_metadata(inp),
                    3 => e["description"] = hostile_description(inp),
                    4 => e["at"] = hostile_time(inp),
                    5 => e["id"] = hostile_id(inp),
                    6 => e["filename"] = hostile_name(inp),
                    7 => e["path"] = hostile_prefix(inp),
                    8 => e["experiment"] = hostile_name(inp),
                    9 => {
                        let m = inp.pick(&t.manifests);
                        e["versionId"] = m["record"]["id"].clone();
                    }
                    10 => {
                        let k = &inp.pick(&t.victim).0;
                        retarget(&mut e, k);
                    }
                    11 => {
                        // A delete of one of the victim's paths, up to any number.
                        let k = &inp.pick(&t.victim).0;
                        e = t.events[t.events.len() - t.victim.len()].clone();
                        e["id"] = json!(Id::generate());
                        retarget(&mut e, k);
                        e["upToVersion"] = hostile_version(inp);
                    }
                    _ => e["kind"] = json!(["delete", "update", "other"][inp.below(3)]),
                }
            }
            let id = name_id(&e, inp);
            write_framed(rdir, "events", "event", id, manifest::EVENT_MAGIC, &e);
        }
        10..=13 => forge_pack(inp, t, content, rdir),
        14 => reseal(inp, t, rdir),
        _ => {
            // A report of a rotten record (any machine may write one), or a hostile marker.
            if inp.u8() % 2 == 0 {
                let packs: Vec<PathBuf> = objs
                    .iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "pack"))
                    .cloned()
                    .collect();
                if packs.is_empty() {
                    return;
                }
                let p = inp.pick(&packs);
                let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
                let d = rdir.join("damaged");
                std::fs::create_dir_all(&d).unwrap();
                let off = [32u64, 84, inp.u32() as u64][inp.below(3)];
                std::fs::write(d.join(format!("{stem}-{off}.bad")), b"{}\n").unwrap();
            } else {
                let m = rdir.join("ml-dash-remote.json");
                let body: Vec<u8> = match inp.u8() % 5 {
                    0 => b"{\"format\":\"ml-dash remote\",\"version\":1}\n".to_vec(),
                    1 => b"{\"format\":\"ml-dash remote\",\"version\":3}\n".to_vec(),
                    2 => vec![b'{'; 5000],
                    3 => inp.bytes(255),
                    _ => {
                        let _ = std::fs::remove_file(&m);
                        return;
                    }
                };
                std::fs::write(&m, body).unwrap();
            }
        }
    }
}

/// An acknowledged version: its key, number, id and bytes.
struct Acked {
    key: FileKey,
    version: u32,
    id: Id,
    bytes: Vec<u8>,
}

/// Every acknowledged version reads back byte-exact (`open_file`, and with `thorough` also
/// `download_to`); with `thorough`, every version of `known` that reads at all reads as the
/// chunks it names. (Each call opens the index: the checks are spread over the phases.)
fn check(store: &Store, acked: &[Acked], known: &[(Id, Vec<u8>)], thorough: bool, when: &str) {
    for a in acked {
        let what = format!("{} v{} {when}", a.key.display(), a.version);
        let mut r = store
            .open_file(&a.key, Some(a.version))
            .unwrap_or_else(|e| panic!("{what}: does not open: {e}"));
        assert!(r.record().id == a.id, "{what}: opens another version");
        let mut got = Vec::new();
        r.read_to_end(&mut got)
            .unwrap_or_else(|e| panic!("{what}: read fails: {e}"));
        assert!(got == a.bytes, "{what}: wrong bytes from open_file");
        if thorough {
            let mut got = Vec::new();
            store
                .download_to(&a.key, Some(a.version), &mut got)
                .unwrap_or_else(|e| panic!("{what}: download fails: {e}"));
            assert!(got == a.bytes, "{what}: wrong bytes from download_to");
        }
    }
    if !thorough {
        return;
    }
    for (id, want) in known {
        if let Ok(mut r) = store.open_version(*id) {
            let mut got = Vec::new();
            if r.read_to_end(&mut got).is_ok() {
                assert!(got == *want, "pulled version {id} {when}: wrong bytes");
            }
        }
    }
}

/// The bytes of every manifest in the remote whose chunks the harness knows.
fn known_versions(rdir: &Path, content: &HashMap<ChunkId, Vec<u8>>) -> Vec<(Id, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(rdir.join("manifests")) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(m) = Manifest::decode(&std::fs::read(e.path()).unwrap_or_default(), "") else {
            continue;
        };
        let bytes: Option<Vec<u8>> = m
            .chunks
            .iter()
            .map(|(c, l)| content.get(c).filter(|b| b.len() == *l as usize).cloned())
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat());
        if let Some(b) = bytes {
            out.push((m.record.id, b));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let t = template();
    let mut inp = In(data);
    let flags = inp.u8();
    let dir = scratch();
    let rdir = dir.path().join("remote");
    for (rel, b) in &t.remote {
        let p = rdir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b).unwrap();
    }
    let mut content = t.content.clone();
    for _ in 0..12 {
        if inp.is_empty() {
            break;
        }
        operate(&mut inp, t, &mut content, &rdir);
    }
    let known = known_versions(&rdir, &content);

    let store = Store::open_with(dir.path().join("victim"), opts()).unwrap();
    let mut acked = Vec::new();
    let upload = |store: &Store, i: usize, acked: &mut Vec<Acked>, when: &str| {
        let (key, bytes) = &t.victim[i];
        let r = store
            .put_reader(&bytes[..], key, NewVersion::default(), None)
            .unwrap_or_else(|e| panic!("upload of {} {when}: {e}", key.display()));
        acked.push(Acked {
            key: key.clone(),
            version: r.version,
            id: r.id,
            bytes: bytes.clone(),
        });
    };
    let pre = (flags % 5) as usize;
    if pre > 0 {
        upload(&store, pre - 1, &mut acked, "before the pull");
    }
    let remote = Remote::open(&RemoteConfig::new(format!("file://{}", rdir.display()))).unwrap();
    let _ = store.pull(&remote, None);
    check(&store, &acked, &known, false, "after the pull");
    for i in 0..t.victim.len() {
        upload(&store, i, &mut acked, "after the pull");
    }
    let again = flags & 0x80 != 0;
    check(&store, &acked, &known, !again, "after the uploads");
    if again {
        let _ = store.pull(&remote, None);
        check(&store, &acked, &known, true, "after a second pull");
    }
    let _ = store.verify();
});
