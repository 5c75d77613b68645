//! Path and name parsing: whatever is accepted is normalized, free of `..`, control characters
//! and empty segments, and stays inside any directory it is joined under.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ml_dash::validate;

fn clean(p: &str) {
    assert!(p.starts_with('/'));
    if p != "/" {
        for seg in p[1..].split('/') {
            assert!(!seg.is_empty() && seg != "." && seg != "..");
            assert!(!seg.chars().any(char::is_control));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = validate::prefix(s) {
        clean(&p);
        assert_eq!(
            validate::prefix(&p).unwrap(),
            p,
            "normalization is idempotent"
        );
        if let Ok((dir, name)) = validate::target(&p, s) {
            clean(&dir);
            assert!(validate::under(&dir, &p));
            assert!(validate::segment("n", &name).is_ok());
        }
    }
    if let Ok((dir, name)) = validate::split_full(s) {
        clean(&dir);
        assert!(!name.contains('/'));
    }
});
