//! Manifest and event decoding, framed and raw bodies: never panics; what decodes re-encodes
//! to bytes that decode to the same value. (The BLAKE3 frame stops mutated inputs early, so the
//! JSON bodies are also fed to the body decoders directly.)
#![no_main]
use libfuzzer_sys::fuzz_target;
use ml_dash::testing::manifest::{self, Manifest};

fuzz_target!(|data: &[u8]| {
    for m in [
        Manifest::decode(data, "fuzz"),
        Manifest::decode_body(data, "fuzz"),
    ]
    .into_iter()
    .flatten()
    {
        assert_eq!(Manifest::decode(&m.encode(), "fuzz").unwrap(), m);
    }
    for e in [
        manifest::decode_event(data, "fuzz"),
        manifest::decode_event_body(data, "fuzz"),
    ]
    .into_iter()
    .flatten()
    {
        assert_eq!(
            manifest::decode_event(&manifest::encode_event(&e), "fuzz").unwrap(),
            e
        );
    }
});
