//! The server's own parsers of client input: GraphQL documents (bounded, never a panic, and a
//! document that parses parses the same way again), `Range` headers (a range that is accepted
//! lies inside the file) and node ids (19-digit numbers and nothing else).
#![no_main]
use libfuzzer_sys::fuzz_target;
use ml_dash_server::graphql_parse::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(doc) = parse(s) {
        assert!(!doc.operations.is_empty());
        assert_eq!(parse(s).unwrap(), doc);
    }
    let len = data.first().map_or(0, |b| u64::from(*b) * 1000);
    if let Ok(Some((a, b))) = ml_dash_server::parse_range(s, len) {
        assert!(a <= b && b < len, "{s:?} -> {a}-{b} of {len}");
    }
    if let Some(id) = ml_dash_server::parse_id(s) {
        assert_eq!(id.to_string().trim_start_matches('0'), s.trim_start_matches('0'));
    }
});
