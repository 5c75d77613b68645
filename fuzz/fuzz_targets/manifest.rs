//! Manifest and event decoding: never panics; what decodes re-encodes to bytes that decode
//! to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ml_dash::manifest::{self, Manifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data, "fuzz") {
        assert_eq!(Manifest::decode(&m.encode(), "fuzz").unwrap(), m);
    }
    if let Ok(e) = manifest::decode_event(data, "fuzz") {
        assert_eq!(
            manifest::decode_event(&manifest::encode_event(&e), "fuzz").unwrap(),
            e
        );
    }
});
