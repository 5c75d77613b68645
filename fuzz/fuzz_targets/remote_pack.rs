//! Remote pack footers and index blocks (src/format/rpack.rs): never panic, never accept an
//! entry outside the records area, and what decodes re-encodes to the same block. The BLAKE3
//! check is computed over the input so mutations reach the parser.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ml_dash::testing::rpack;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let off = u64::from_le_bytes(data[..8].try_into().unwrap());
        let block = &data[8..];
        let check = *blake3::hash(block).as_bytes();
        if let Ok(es) = rpack::decode_index(block, &check, off) {
            assert_eq!(rpack::encode_index(&es), block);
            for e in &es {
                assert!(e.offset >= 32 && e.offset + e.record_len() <= off);
            }
        }
    }
    if data.len() >= rpack::FOOTER_LEN as usize {
        let f = &data[..rpack::FOOTER_LEN as usize];
        for len in [data.len() as u64, u64::MAX, 0, 48] {
            if let Ok((o, n, _)) = rpack::decode_footer(f, len) {
                assert!(o + n + rpack::FOOTER_LEN <= len);
            }
        }
    }
});
