//! Pack record decoding: any bytes either decode to a header whose re-encoding is identical,
//! or are refused; decoding data never panics and never returns bytes that fail the chunk id.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ml_dash::pack::{self, RECORD_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = pack::decode_record_header(data) {
        assert_eq!(
            &pack::encode_record_header(&h)[..],
            &data[..RECORD_HEADER_LEN]
        );
        let body = &data[RECORD_HEADER_LEN..];
        let end = body.len().min(h.stored_len as usize);
        if let Ok(raw) = pack::decode_and_verify(&h, &body[..end], &String::new) {
            assert_eq!(ml_dash::digest::ChunkId::of(&raw), h.id);
            assert_eq!(raw.len(), h.raw_len as usize);
        }
    }
    let _ = ml_dash::pack::ChunkLoc::decode(data);
});
