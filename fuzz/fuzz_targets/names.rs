//! Path and name parsing: whatever is accepted is normalized, free of `..`, control characters
//! and empty segments, and stays inside any directory it is joined under.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ml_dash::path;

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
    if let Ok(p) = path::prefix(s) {
        clean(&p);
        assert_eq!(path::prefix(&p).unwrap(), p, "normalization is idempotent");
        if let Ok((dir, name)) = path::target(&p, s) {
            clean(&dir);
            assert!(path::under(&dir, &p));
            assert!(path::segment("n", &name).is_ok());
        }
    }
    if let Ok((dir, name)) = path::split_full(s) {
        clean(&dir);
        assert!(!name.contains('/'));
    }
});
