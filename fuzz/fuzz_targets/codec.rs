//! The chunk codec: any bytes encode under the default policy and decode back exactly,
//! whatever codec, plane methods and element rotation were picked; any bytes decoded as a
//! byte-plane record or a Huffman-coded plane of any length give an error or bytes, never a
//! panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ml_dash::testing::codec::{self, Codec, Compression};
use ml_dash::testing::huffman;

fuzz_target!(|data: &[u8]| {
    if let Some((c, stored)) = codec::encode(data, Compression::Auto(1)) {
        let back = codec::decode(c, &stored, data.len(), &String::new).expect("own output decodes");
        assert_eq!(back, data);
    }
    if data.len() >= 2 {
        let raw_len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        if let Ok(raw) = codec::decode(Codec::Planes, &data[2..], raw_len, &String::new) {
            assert_eq!(raw.len(), raw_len);
        }
        let _ = huffman::decode(&data[2..], &mut vec![0u8; raw_len]);
    }
});
