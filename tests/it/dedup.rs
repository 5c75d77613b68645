//! Deduplication and compression: identical copies stored once, shifted content still shares
//! chunks, compressible content shrinks, and `stats` reports it.

use ml_dash::Scope;

use crate::util::*;

const MIB: usize = 1 << 20;

#[test]
fn identical_copies_are_stored_once() {
    let dir = tmp();
    let root = dir.path().join("store");
    let data = random_bytes(4, 4 * MIB);
    let src = write_file(dir.path(), "weights.bin", &data);

    let a = experiment(&root, "proj-a", "exp-1");
    let b = experiment(&root, "proj-a", "exp-2");
    let c = experiment(&root, "proj-b", "exp-1");
    let r1 = a.file(&src).prefix("/models").save().unwrap();
    let after_first = packs_total(&root);
    let r2 = b.file(&src).prefix("/other").to("copy.bin").save().unwrap();
    let r3 = c.file(&src).prefix("/x/y").save().unwrap();

    assert!(
        r1.new_bytes >= data.len() as u64,
        "first copy: {}",
        r1.new_bytes
    );
    assert_eq!(r2.new_bytes, 0, "second copy must add nothing");
    assert_eq!(r3.new_bytes, 0, "third copy must add nothing");
    assert_eq!(
        packs_total(&root),
        after_first,
        "packs grew for a duplicate"
    );
    for r in [&r1, &r2, &r3] {
        assert_eq!(r.checksum, r1.checksum);
        assert_eq!(r.size_bytes, data.len() as u64);
    }

    let st = a.store().stats(&Scope::default()).unwrap();
    assert_eq!(st.files, 3);
    assert_eq!(st.versions, 3);
    assert_eq!(st.logical_bytes, 3 * data.len() as u64);
    assert_eq!(
        st.unique_bytes,
        data.len() as u64,
        "unique bytes = one copy"
    );
    let overhead = st.chunks * RECORD_HEADER_LEN;
    assert!(
        st.stored_bytes >= data.len() as u64 && st.stored_bytes <= data.len() as u64 + overhead,
        "stored {} for one {}-byte copy",
        st.stored_bytes,
        data.len()
    );
    assert_eq!(st.stored_bytes, r1.new_bytes);
    assert!(
        st.saving_ratio > 2.9 && st.saving_ratio < 3.0,
        "{}",
        st.saving_ratio
    );
    assert!(st.pack_bytes <= data.len() as u64 + overhead + 4096);

    // Scoped stats count only that scope.
    let only_b = a
        .store()
        .stats(&Scope {
            project: Some("proj-b".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((only_b.files, only_b.logical_bytes), (1, data.len() as u64));

    same_bytes(
        read_via_download(&a, "/models/weights.bin", None),
        &data,
        "/models/weights.bin via download",
    );
    same_bytes(
        read_via_download(&b, "/other/copy.bin", None),
        &data,
        "/other/copy.bin via download",
    );
    same_bytes(
        read_via_download(&c, "/x/y/weights.bin", None),
        &data,
        "/x/y/weights.bin via download",
    );
}

#[test]
fn insertion_at_the_front_still_dedups() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let a = random_bytes(8, 8 * MIB);
    let mut b = random_bytes(800, 100);
    b.extend_from_slice(&a);
    let ra = exp
        .file(write_file(dir.path(), "a.bin", &a))
        .save()
        .unwrap();
    let rb = exp
        .file(write_file(dir.path(), "b.bin", &b))
        .save()
        .unwrap();
    assert!(ra.new_bytes >= a.len() as u64);
    assert!(
        rb.new_bytes < a.len() as u64 / 10,
        "B = 100 bytes + A added {} new bytes (A is {})",
        rb.new_bytes,
        a.len()
    );
    assert!(rb.new_bytes > 0, "B's first chunk is new");

    // Appending and changing one byte in the middle also share almost everything.
    let mut c = a.clone();
    c.extend_from_slice(&random_bytes(801, 100));
    let rc = exp
        .file(write_file(dir.path(), "c.bin", &c))
        .save()
        .unwrap();
    assert!(
        rc.new_bytes < a.len() as u64 / 10,
        "append added {}",
        rc.new_bytes
    );
    let mut d = a.clone();
    d[a.len() / 2] ^= 1;
    let rd = exp
        .file(write_file(dir.path(), "d.bin", &d))
        .save()
        .unwrap();
    assert!(rd.new_bytes > 0);
    assert!(
        rd.new_bytes < a.len() as u64 / 10,
        "1-byte change added {}",
        rd.new_bytes
    );

    same_bytes(
        read_via_download(&exp, "/b.bin", None),
        &b,
        "/b.bin via download",
    );
    same_bytes(read_via_reader(&exp, "/c.bin", None), &c, "/c.bin via Read");
    same_bytes(
        read_via_download(&exp, "/d.bin", None),
        &d,
        "/d.bin via download",
    );
    let st = exp.store().stats(&Scope::default()).unwrap();
    assert!(
        st.unique_bytes < (a.len() + a.len() / 5) as u64,
        "{}",
        st.unique_bytes
    );
}

#[test]
fn compressible_data_is_compressed_and_round_trips() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    // Text-like data: words from a small vocabulary in pseudo-random order.
    let words = [
        "loss", "epoch", "0.125", "accuracy", "step", "\n", "lr=3e-4", " ",
    ];
    let mut rng = XorShift::new(3);
    let mut text = Vec::new();
    while text.len() < 2 * MIB {
        text.extend_from_slice(words[usize_from(rng.below(words.len() as u64))].as_bytes());
    }
    let zeros = vec![0u8; MIB + 5];
    let rt = exp
        .file(write_file(dir.path(), "train.log", &text))
        .save()
        .unwrap();
    let rz = exp
        .file(write_file(dir.path(), "zeros.npy", &zeros))
        .save()
        .unwrap();
    assert!(
        rt.new_bytes < text.len() as u64 / 2,
        "text stored as {}",
        rt.new_bytes
    );
    assert!(
        rz.new_bytes < zeros.len() as u64 / 20,
        "zeros stored as {}",
        rz.new_bytes
    );
    assert_eq!(rt.content_type, "text/plain");
    // At least one pack record is compressed (codec 1 = zstd).
    let compressed = pack_files(&root)
        .iter()
        .flat_map(|p| pack_records(p))
        .filter(|r| r.codec == 1)
        .count();
    assert!(compressed > 0);
    same_bytes(
        read_via_download(&exp, "/train.log", None),
        &text,
        "/train.log via download",
    );
    same_bytes(
        read_via_reader(&exp, "/zeros.npy", None),
        &zeros,
        "/zeros.npy via Read",
    );
    let st = exp.store().stats(&Scope::default()).unwrap();
    assert!(st.stored_bytes < st.unique_bytes);
    assert!(exp.store().verify().unwrap().ok);
}
