//! Wall-clock time as unix seconds, and its UTC rendering (RFC 3339).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Unix nanoseconds now.
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Parses a duration as written in the config: a number and a unit, `s`, `m` (minutes),
/// `h` or `d`, like `90s`, `15m`, `2h`. (Retention spans, with months and years, are
/// `retention::Span`.)
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("`{s}` does not start with a number"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => return Err(format!("`{s}`: expected a number and a unit: s, m (minutes), h or d, like `15m`")),
    };
    secs.filter(|&s| s <= 366 * 86_400)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is longer than a year"))
}

/// `2026-11-23T11:12:13Z`
pub fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Parses `2026-11-23T11:12:13Z` or `2026-11-23T11:12:13.000Z` (UTC only, as S3 writes it).
pub fn parse_utc(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = &s[19..];
    let frac_ok = rest == "Z"
        || (rest.starts_with('.')
            && rest.ends_with('Z')
            && rest[1..rest.len() - 1].bytes().all(|c| c.is_ascii_digit()));
    if !frac_ok || !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m as u32, d as u32) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// (year, month, day) to days since 1970-01-01 (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_known_dates() {
        assert_eq!(super::format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::format_utc(1_795_432_333), "2026-11-23T11:12:13Z");
    }

    #[test]
    fn durations_have_units() {
        assert_eq!(super::parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(super::parse_duration("15m").unwrap().as_secs(), 900);
        assert_eq!(super::parse_duration("2h").unwrap().as_secs(), 7200);
        assert_eq!(super::parse_duration("0s").unwrap().as_secs(), 0);
        for bad in ["", "5", "m", "1w", "5 min", "400d"] {
            assert!(super::parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_what_it_formats() {
        for t in [0, 951_782_400, 1_795_432_333, 4_102_444_800 + 86_399] {
            assert_eq!(super::parse_utc(&super::format_utc(t)), Some(t));
        }
        assert_eq!(super::parse_utc("2026-11-23T11:12:13.000Z"), Some(1_795_432_333));
        for bad in ["", "2026-11-23", "2026-13-01T00:00:00Z", "2026-11-23T11:12:13+01:00", "2026-11-23T11:12:13.x0Z"] {
            assert_eq!(super::parse_utc(bad), None, "{bad}");
        }
    }
}
