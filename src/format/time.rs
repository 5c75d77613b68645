//! Timestamps as ISO-8601 UTC with microseconds and a literal `Z` (ml-dash's format).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as `2026-11-26T21:52:58.303680Z`.
pub fn now_iso() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    #[allow(
        clippy::cast_possible_wrap,
        reason = "seconds since 1970 fit an i64 for the next 292 billion years"
    )]
    let secs = d.as_secs() as i64;
    format_micros(secs, d.subsec_micros())
}

/// Format seconds since the epoch plus microseconds.
pub fn format_micros(secs: i64, micros: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // doy is in 0..=365 and mp in 0..=11 (doe is a rem_euclid), for any input.
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).expect("a day of the month, 1..=31");
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).expect("a month, 1..=12");
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Is `s` a timestamp as ml-dash writes it: `YYYY-MM-DDTHH:MM:SS[.digits]Z` (Python's
/// `isoformat()` plus `Z`), with every field in range? The one check used for imported
/// records and by the tests. At most 40 bytes (nanoseconds fit).
pub fn is_iso_utc(s: &str) -> bool {
    let b = s.as_bytes();
    if !(20..=40).contains(&b.len()) || b.last() != Some(&b'Z') {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r.clone()]
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| s[r].parse().ok())
            .flatten()
    };
    let frac = &b[19..b.len() - 1];
    let seps = b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':';
    let frac_ok = frac.is_empty()
        || (frac.len() > 1 && frac[0] == b'.' && frac[1..].iter().all(u8::is_ascii_digit));
    let in_range = |r: std::ops::Range<usize>, lo: u32, hi: u32| {
        num(r).is_some_and(|v| (lo..=hi).contains(&v))
    };
    seps && frac_ok
        && num(0..4).is_some()
        && in_range(5..7, 1, 12)
        && in_range(8..10, 1, 31)
        && in_range(11..13, 0, 23)
        && in_range(14..16, 0, 59)
        && in_range(17..19, 0, 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(format_micros(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2026-11-26T21:52:58.303680Z
        assert_eq!(
            format_micros(1_795_730_000 - 1_795_730_000 % 86_400 + 78_778, 303_680),
            "2026-11-26T21:52:58.303680Z"
        );
        assert_eq!(format_micros(951_782_400, 1), "2000-02-29T00:00:00.000001Z");
        assert!(now_iso().ends_with('Z'));
    }

    #[test]
    fn iso_timestamps() {
        assert!(is_iso_utc("2026-11-27T00:16:12.655188Z"));
        assert!(is_iso_utc("2026-11-27T00:16:12Z"));
        assert!(is_iso_utc(&now_iso()));
        assert!(!is_iso_utc("2026-11-27 00:16:12Z"));
        assert!(!is_iso_utc("2026-11-27T00:16:12.Z"));
        assert!(!is_iso_utc("2026-13-27T00:16:12Z"));
        assert!(!is_iso_utc("2026-11-00T00:16:12Z"));
        assert!(!is_iso_utc("2026-11-27T24:16:12Z"));
        assert!(!is_iso_utc("2026-11-27T00:16:12.5"));
        assert!(!is_iso_utc("yesterday"));
    }
}
