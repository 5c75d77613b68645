//! The `Read` side of a stored version: streams of any read size, buffered reads with small
//! jumps (what `torch.load` does through a file object), and a damaged chunk in the middle of
//! a stream, with batches decoded ahead in the background and whole chunks decoded straight
//! into the caller's buffer.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

use crate::util::*;

const SIZES: [usize; 8] = [
    1,
    777,
    4096,
    65_539,
    256 << 10,
    (1 << 20) + 17,
    3 << 20,
    64 << 20,
];

#[test]
fn streams_of_any_read_size_match_the_source() {
    let dir = tmp();
    let exp = experiment(&dir.path().join("store"), "p", "e");
    let data = mixed(11, 11 << 20);
    exp.file(write_file(dir.path(), "m.bin", &data))
        .save()
        .unwrap();

    for size in SIZES {
        if size == 1 {
            continue; // 11 M one-byte reads: covered by the buffered reads below
        }
        let mut r = exp.open("/m.bin", None).unwrap();
        let (got, err) = stream(&mut r, size);
        assert!(err.is_none(), "reads of {size}: {err:?}");
        same_bytes(&got, &data, &format!("reads of {size}"));
    }

    // Buffered, with reads of every size and small jumps forward and back, as a file object
    // of Python's in front of the reader and `torch.load` behind it read.
    let mut r = BufReader::with_capacity(1 << 20, exp.open("/m.bin", None).unwrap());
    let mut rng = XorShift::new(5);
    let mut pos = 0usize;
    while pos < data.len() {
        match rng.below(10) {
            0 => {
                let skip = usize_from(rng.below(300));
                r.seek_relative(i64::try_from(skip).unwrap()).unwrap();
                pos += skip;
            }
            1 if pos > 100 => {
                r.seek_relative(-64).unwrap();
                pos -= 64;
            }
            _ => {}
        }
        let want = SIZES[usize_from(rng.below(SIZES.len() as u64 - 1))]
            .min(data.len().saturating_sub(pos));
        let mut got = vec![0u8; want];
        r.read_exact(&mut got).unwrap();
        assert!(got == data[pos..pos + want], "{want} bytes at {pos} differ");
        pos += want;
    }
    assert!(r.fill_buf().unwrap().is_empty(), "bytes after the end");

    // A reader dropped with a batch still being decoded ahead, and one that jumps away from it.
    for _ in 0..20 {
        let mut r = exp.open("/m.bin", None).unwrap();
        let mut b = vec![0u8; 100_000];
        r.read_exact(&mut b).unwrap();
        r.read_exact(&mut b).unwrap();
        r.seek(SeekFrom::Start(9 << 20)).unwrap();
        r.read_exact(&mut b).unwrap();
        assert!(b == data[9 << 20..(9 << 20) + 100_000]);
        r.read_exact(&mut b).unwrap();
    }
}

#[test]
fn a_damaged_chunk_ends_a_stream_exactly_where_it_starts() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let data = random_bytes(12, 9 << 20);
    exp.file(write_file(dir.path(), "r.bin", &data))
        .save()
        .unwrap();

    // A raw record (random data is stored as it is) near the middle of the file, found in the
    // file by its first bytes.
    let pack = pack_files(&root).into_iter().next().unwrap();
    let bytes = std::fs::read(&pack).unwrap();
    let (rec, at) = pack_records(&pack)
        .into_iter()
        .filter(|r| r.codec == 0 && r.stored_len > 4096)
        .find_map(|r| {
            let head = &bytes[usize_from(r.data_start())..usize_from(r.data_start()) + 64];
            let at = data.windows(64).position(|w| w == head)?;
            (at > 4 << 20).then_some((r, at))
        })
        .expect("a raw record past 4 MiB");
    let end = at + usize_from(rec.stored_len);
    flip_byte(&pack, rec.data_start() + rec.stored_len / 2);

    for size in SIZES[1..].iter().copied().chain([at + 5]) {
        let mut r = exp.open("/r.bin", None).unwrap();
        let (got, err) = stream(&mut r, size);
        let err = err.unwrap_or_else(|| panic!("reads of {size} did not fail"));
        assert!(
            err.to_string().contains("corrupt"),
            "reads of {size}: {err}"
        );
        assert_eq!(got.len(), at, "reads of {size} stop at the damaged chunk");
        assert!(got == data[..at], "reads of {size}: bytes before it differ");
        // The same reader goes on after it, and still refuses it.
        r.seek(SeekFrom::Start(end as u64)).unwrap();
        let (rest, err) = stream(&mut r, size);
        assert!(err.is_none(), "after the damage: {err:?}");
        assert!(
            rest == data[end..],
            "reads of {size}: bytes after it differ"
        );
        r.seek(SeekFrom::Start(at as u64 + 1)).unwrap();
        assert!(r.read(&mut [0u8; 10]).is_err());
    }
    let mut out = Vec::new();
    assert!(exp.download_to("/r.bin", None, &mut out).is_err());
}

#[test]
fn only_streams_decode_ahead() {
    let dir = tmp();
    let exp = experiment(&dir.path().join("store"), "p", "e");
    let data = mixed(8, 8 << 20);
    exp.file(write_file(dir.path(), "m.bin", &data))
        .save()
        .unwrap();
    let ahead = ml_dash::testing::batches_read_ahead;

    // Random access, a few small reads at each place: nothing is decoded ahead.
    let mut r = exp.open("/m.bin", None).unwrap();
    let mut rng = XorShift::new(8);
    let mut b = [0u8; 100];
    for _ in 0..200 {
        let at = usize_from(rng.below(data.len() as u64 - 300));
        r.seek(SeekFrom::Start(at as u64)).unwrap();
        for k in 0..3 {
            r.read_exact(&mut b).unwrap();
            assert!(b[..] == data[at + 100 * k..at + 100 * (k + 1)]);
        }
    }
    assert_eq!(ahead(&r), 0, "random reads decoded batches ahead");

    // A stream of 64 KiB reads: batches are decoded ahead as it goes.
    let mut r = exp.open("/m.bin", None).unwrap();
    let (got, err) = stream(&mut r, 64 << 10);
    assert!(err.is_none() && got == data);
    assert!(
        ahead(&r) >= 2,
        "a stream decoded {} batches ahead",
        ahead(&r)
    );
}
