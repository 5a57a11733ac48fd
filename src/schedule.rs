//! When jobs fire: cron expressions evaluated on the wall clock of a time zone.
//!
//! Accepts the standard 5-field crontab form (`15 2 * * *`) and the 6/7-field form with
//! seconds first (`0 15 2 * * *`), which is what the `cron` crate parses.
//!
//! Daylight-saving changes: a fire time is a wall-clock time, and coffer fires it exactly
//! once. When clocks go back, a time that occurs twice fires at its first occurrence; when
//! they go forward, a time that does not exist fires at the same distance after the change
//! (02:30 in a skipped 02:00-03:00 hour fires at 03:30). The `cron` crate alone would fire
//! twice in the first case and not at all in the second.

use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: cron::Schedule,
    /// As written in the config (for messages).
    pub text: String,
}

/// The time zone fire times are read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// The system's (`TZ`, else `/etc/localtime`).
    Local,
    Named(chrono_tz::Tz),
}

impl Zone {
    pub fn parse(name: &str) -> Result<Zone, String> {
        chrono_tz::Tz::from_str(name)
            .map(Zone::Named)
            .map_err(|_| format!("`{name}` is not an IANA time zone name (like `UTC` or `Europe/Berlin`)"))
    }
}

/// A crontab weekday field in the numbering of the `cron` crate: crontab counts Sunday
/// as 0 (or 7) and Monday as 1, the crate Sunday as 1 and Saturday as 7. Numbers, ranges
/// and steps are mapped value by value; names (`Mon-Fri`) and `*` mean the same to both.
fn crontab_weekdays(field: &str) -> Result<String, String> {
    if field.chars().any(|c| c.is_ascii_alphabetic()) {
        return Ok(field.to_string());
    }
    let bad = || format!("weekday field `{field}`: expected 0-7 (0 and 7 are Sunday), ranges, lists and steps");
    let mut days = std::collections::BTreeSet::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().ok().filter(|&s| s > 0).ok_or_else(bad)?),
            None => (item, 1),
        };
        let (from, to) = match range {
            "*" => (0, 6),
            r => match r.split_once('-') {
                Some((a, b)) => (a.parse::<u32>().map_err(|_| bad())?, b.parse::<u32>().map_err(|_| bad())?),
                None if step == 1 => {
                    let n = r.parse::<u32>().map_err(|_| bad())?;
                    (n, n)
                }
                None => (r.parse::<u32>().map_err(|_| bad())?, 7),
            },
        };
        if from > to || to > 7 {
            return Err(bad());
        }
        days.extend((from..=to).step_by(step as usize).map(|d| d % 7 + 1));
    }
    Ok(days.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
}

/// How many upcoming wall-clock times are mapped to instants to find the next one; more
/// than a skipped DST hour can reorder.
const LOOKAHEAD: usize = 8;

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let fields = text.split_whitespace().count();
        let expr = match fields {
            5 => {
                let mut parts: Vec<String> = text.split_whitespace().map(str::to_string).collect();
                parts[4] = crontab_weekdays(&parts[4])?;
                format!("0 {}", parts.join(" "))
            }
            6 | 7 => text.trim().to_string(),
            n => {
                return Err(format!(
                    "`{text}` has {n} fields; expected a crontab expression (`min hour day month weekday`) \
                     or one with seconds first (`sec min hour day month weekday [year]`)"
                ));
            }
        };
        let cron = cron::Schedule::from_str(&expr).map_err(|e| format!("`{text}` is not a cron expression: {e}"))?;
        let s = Schedule { cron, text: text.trim().to_string() };
        if s.next_after(crate::time::now_secs(), Zone::Named(chrono_tz::UTC)).is_none() {
            return Err(format!("`{text}` never fires again"));
        }
        Ok(s)
    }

    /// The first fire time strictly after `t` (unix seconds), or `None` if it never fires again.
    pub fn next_after(&self, t: i64, zone: Zone) -> Option<i64> {
        match zone {
            Zone::Local => self.next_in(t, &chrono::Local),
            Zone::Named(tz) => self.next_in(t, &tz),
        }
    }

    fn next_in<Z: TimeZone>(&self, t: i64, zone: &Z) -> Option<i64> {
        let instant = DateTime::from_timestamp(t, 0)?;
        let wall = instant.with_timezone(zone).naive_local();
        // Walk wall-clock times (the cron crate on a zone without changes), then map each
        // to the instant it happens; the earliest one after `t` wins.
        self.cron
            .after(&Utc.from_utc_datetime(&wall))
            .take(LOOKAHEAD)
            .filter_map(|w| happens_at(zone, w.naive_utc()))
            .filter(|&at| at > t)
            .min()
    }
}

/// The instant a wall-clock time happens in `zone`: the first of two when it occurs twice,
/// the same distance after the change when it is skipped.
fn happens_at<Z: TimeZone>(zone: &Z, wall: NaiveDateTime) -> Option<i64> {
    match zone.from_local_datetime(&wall) {
        LocalResult::Single(t) => Some(t.timestamp()),
        LocalResult::Ambiguous(first, _) => Some(first.timestamp()),
        LocalResult::None => {
            // Read with the offset in force before the change (a day earlier is safely before).
            let before = zone.offset_from_utc_datetime(&(wall - chrono::Duration::days(1))).fix();
            Some(wall.and_utc().timestamp() - i64::from(before.local_minus_utc()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> i64 {
        crate::time::parse_utc(s).unwrap()
    }

    fn fires(expr: &str, zone: &str, from: &str, n: usize) -> Vec<String> {
        let (s, z) = (Schedule::parse(expr).unwrap(), Zone::parse(zone).unwrap());
        let mut t = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = s.next_after(t, z).unwrap();
            out.push(crate::time::format_utc(t));
        }
        out
    }

    #[test]
    fn five_fields_are_crontab_and_six_have_seconds() {
        assert_eq!(
            fires("15 2 * * *", "UTC", "2026-11-23T00:00:00Z", 2),
            ["2026-11-23T02:15:00Z", "2026-11-24T02:15:00Z"]
        );
        assert_eq!(
            fires("*/2 * * * * *", "UTC", "2026-11-23T00:00:00Z", 2),
            ["2026-11-23T00:00:02Z", "2026-11-23T00:00:04Z"]
        );
        assert_eq!(fires("0 0 3 * * Mon", "UTC", "2026-11-23T04:00:00Z", 1), ["2026-11-30T03:00:00Z"]);
    }

    #[test]
    fn crontab_weekdays_count_sunday_as_0_or_7() {
        // 2026-11-23 is a Monday.
        let from = "2026-11-23T00:00:00Z";
        assert_eq!(fires("15 3 * * 0", "UTC", from, 1), ["2026-11-29T03:15:00Z"]);
        assert_eq!(fires("15 3 * * 7", "UTC", from, 1), ["2026-11-29T03:15:00Z"]);
        assert_eq!(fires("15 3 * * 1", "UTC", from, 1), ["2026-11-23T03:15:00Z"]);
        assert_eq!(
            fires("0 4 * * 1-5", "UTC", "2026-11-27T12:00:00Z", 2),
            ["2026-11-30T04:00:00Z", "2026-12-01T04:00:00Z"],
            "Friday afternoon: next Monday, then Tuesday"
        );
        assert_eq!(
            fires("0 4 * * 5-7", "UTC", from, 3),
            ["2026-11-27T04:00:00Z", "2026-11-28T04:00:00Z", "2026-11-29T04:00:00Z"]
        );
        assert_eq!(fires("0 4 * * */3", "UTC", from, 2), ["2026-11-25T04:00:00Z", "2026-11-28T04:00:00Z"]);
        assert_eq!(fires("0 4 * * Sun", "UTC", from, 1), ["2026-11-29T04:00:00Z"]);
        assert!(Schedule::parse("0 4 * * 8").unwrap_err().contains("weekday field"));
    }

    #[test]
    fn times_are_read_in_the_zone() {
        // Berlin is UTC+1 in November.
        assert_eq!(fires("0 2 * * *", "Europe/Berlin", "2026-11-23T00:00:00Z", 1), ["2026-11-23T01:00:00Z"]);
    }

    #[test]
    fn a_repeated_hour_fires_once_and_a_skipped_hour_still_fires() {
        // 2026-10-25: Berlin goes from 03:00 CEST back to 02:00 CET; 02:30 happens twice.
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        // 2026-03-29: Berlin skips 02:00-03:00; 02:30 fires at 03:30 CEST (01:30 UTC).
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"]
        );
        // A skipped time that lands on a real one fires once.
        assert_eq!(
            fires("15,30 2,3 * * *", "Europe/Berlin", "2026-03-28T23:00:00Z", 3),
            ["2026-03-29T01:15:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:15:00Z"]
        );
        // Every 20 minutes across the repeated hour: each wall-clock time once, so the
        // second pass through 02:00-03:00 has no fires.
        let repeated = fires("0 */20 * * * *", "Europe/Berlin", "2026-10-25T00:30:00Z", 4);
        assert_eq!(
            repeated,
            ["2026-10-25T00:40:00Z", "2026-10-25T02:00:00Z", "2026-10-25T02:20:00Z", "2026-10-25T02:40:00Z"]
        );
    }

    #[test]
    fn bad_expressions_are_explained() {
        assert!(Schedule::parse("* * *").unwrap_err().contains("3 fields"));
        assert!(Schedule::parse("61 * * * *").unwrap_err().contains("not a cron expression"));
        assert!(Zone::parse("Mars/Olympus").unwrap_err().contains("IANA"));
    }
}
