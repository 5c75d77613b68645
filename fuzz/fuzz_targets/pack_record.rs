//! Pack records: any bytes either decode to a header whose re-encoding is identical, or are
//! refused. Then, past the header check, arbitrary stored data under a valid header (any codec
//! and lengths) is decoded: it never panics and never yields bytes that fail the chunk id.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ml_dash::ChunkId;
use ml_dash::testing::codec::Codec;
use ml_dash::testing::pack::{self, RECORD_HEADER_LEN, RecordHeader};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = pack::decode_record_header(data) {
        assert_eq!(
            &pack::encode_record_header(&h)[..],
            &data[..RECORD_HEADER_LEN]
        );
    }
    let _ = pack::ChunkLoc::decode(data);
    if data.len() < 4 {
        return;
    }
    // A valid header around fuzzed data: exercises zstd decoding and the length checks.
    let codec = Codec::from_u8(data[0] % 6).expect("codecs 0-5 exist");
    let raw_len = u16::from_le_bytes([data[1], data[2]]) as u32;
    let stored = &data[3..];
    let id = if data[0] & 4 == 0 {
        ChunkId::of(stored)
    } else {
        ChunkId::of(&data[..1])
    };
    let h = RecordHeader {
        codec,
        raw_len,
        stored_len: stored.len() as u32,
        id,
    };
    let enc = pack::encode_record_header(&h);
    if let Ok(back) = pack::decode_record_header(&enc) {
        assert_eq!(back, h);
        let _ = pack::check_stored(&h, stored, &String::new);
        if let Ok(raw) = pack::decode_and_verify(&h, stored, &String::new) {
            assert_eq!(ChunkId::of(&raw), h.id);
            assert_eq!(raw.len(), h.raw_len as usize);
        }
    }
});
