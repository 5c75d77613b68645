//! Metadata checks: never panic, accept only objects (or null) within the limits.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data)
        && ml_dash::validate::check_metadata(&v).is_ok()
    {
        assert!(v.is_object() || v.is_null());
        assert!(v.to_string().len() <= 64 * 1024);
    }
});
