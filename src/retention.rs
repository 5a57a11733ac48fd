//! How long each snapshot is kept: decided once, when it is made, from the catalog's own
//! clock and history (never from what appears in the bucket).
//!
//! Every snapshot is kept at least the job's `lock_days`. On top of that, a grandfather-
//! father-son rule by duration: the first complete snapshot of a UTC day, ISO week
//! (Monday to Sunday), calendar month and calendar year is that period's *keeper*, and is
//! kept for the duration configured for the period, counted from its creation:
//!
//! `retain_until = created + max(lock_days, durations of the periods it keeps)`
//!
//! Because the decision only looks at the job's own earlier complete snapshots, a forged
//! snapshot record placed in the bucket can never take a period's place.

use std::fmt;

const DAY: i64 = 86_400;

/// A retention duration: days (`7d`, `5w`) or calendar months (`13mo`, `7y`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Days(u32),
    Months(u32),
}

impl Span {
    /// Parses `7d`, `5w`, `13mo`, `7y`.
    pub fn parse(s: &str) -> Result<Span, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (n, unit) = s.split_at(split);
        let n: u32 = n.parse().map_err(|_| format!("`{s}` does not start with a number"))?;
        let span = match unit {
            "d" => Span::Days(n),
            "w" => Span::Days(n.checked_mul(7).ok_or("too long")?),
            "mo" => Span::Months(n),
            "y" => Span::Months(n.checked_mul(12).ok_or("too long")?),
            _ => {
                return Err(format!(
                    "`{s}`: expected a number and a unit: d (days), w (weeks), mo (months), y (years)"
                ));
            }
        };
        match span {
            Span::Days(d) if (1..=36_500).contains(&d) => Ok(span),
            Span::Months(m) if (1..=1_200).contains(&m) => Ok(span),
            _ => Err(format!("`{s}` is out of range (1 day to 100 years)")),
        }
    }

    /// `t` plus this span; months are calendar months (the day clamped to the month's end).
    pub fn after(self, t: i64) -> i64 {
        match self {
            Span::Days(d) => t + i64::from(d) * DAY,
            Span::Months(m) => {
                let (days, secs) = (t.div_euclid(DAY), t.rem_euclid(DAY));
                let (y, mo, d) = crate::time::civil_from_days(days);
                let total = y * 12 + i64::from(mo) - 1 + i64::from(m);
                let (ny, nm) = (total.div_euclid(12), (total.rem_euclid(12) + 1) as u32);
                let nd = d.min(days_in_month(ny, nm));
                crate::time::days_from_civil(ny, nm, nd) * DAY + secs
            }
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Span::Days(d) if d % 7 == 0 => write!(f, "{}w", d / 7),
            Span::Days(d) => write!(f, "{d}d"),
            Span::Months(m) if m % 12 == 0 => write!(f, "{}y", m / 12),
            Span::Months(m) => write!(f, "{m}mo"),
        }
    }
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// The job's `keep` setting: how long each period's keeper is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    pub daily: Option<Span>,
    pub weekly: Option<Span>,
    pub monthly: Option<Span>,
    pub yearly: Option<Span>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    /// Which period of this kind `t` falls in (UTC; weeks start on Monday).
    fn of(self, t: i64) -> i64 {
        let days = t.div_euclid(DAY);
        let (y, m, _) = crate::time::civil_from_days(days);
        match self {
            Period::Day => days,
            Period::Week => (days + 3).div_euclid(7), // 1970-01-01 was a Thursday
            Period::Month => y * 12 + i64::from(m),
            Period::Year => y,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }
}

/// What the policy decided for a new snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub retain_until: i64,
    /// The periods it is the keeper of.
    pub keeps: Vec<Period>,
    /// Which rule set `retain_until`: "lock_days = 30", or "the yearly keeper (keep.yearly = 7y)".
    pub because: String,
}

/// Decides a new snapshot's retention. `previous` is the creation time of the job's
/// latest earlier complete snapshot, from the catalog.
pub fn decide(created: i64, lock_days: u32, keep: &Keep, previous: Option<i64>) -> Decision {
    let mut retain_until = created + i64::from(lock_days) * DAY;
    let mut because = format!("lock_days = {lock_days}");
    let mut keeps = Vec::new();
    let rules = [
        (Period::Day, keep.daily),
        (Period::Week, keep.weekly),
        (Period::Month, keep.monthly),
        (Period::Year, keep.yearly),
    ];
    for (period, span) in rules {
        let first = previous.is_none_or(|p| period.of(p) != period.of(created));
        if let (true, Some(span)) = (first, span) {
            keeps.push(period);
            if span.after(created) > retain_until {
                retain_until = span.after(created);
                because = format!("the {} keeper (keep.{} = {span})", period.name(), period.name());
            }
        }
    }
    Decision { retain_until, keeps, because }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{format_utc, parse_utc};

    fn t(s: &str) -> i64 {
        parse_utc(s).unwrap()
    }

    fn policy() -> Keep {
        Keep {
            daily: Some(Span::parse("7d").unwrap()),
            weekly: Some(Span::parse("5w").unwrap()),
            monthly: Some(Span::parse("13mo").unwrap()),
            yearly: Some(Span::parse("7y").unwrap()),
        }
    }

    #[test]
    fn spans_parse_and_add_calendar_months() {
        assert_eq!(Span::parse("5w"), Ok(Span::Days(35)));
        assert_eq!(Span::parse("7y"), Ok(Span::Months(84)));
        for bad in ["", "7", "d", "7x", "0d", "-1d", "999999y"] {
            assert!(Span::parse(bad).is_err(), "{bad}");
        }
        let cases = [
            ("2026-01-31T02:15:00Z", "1mo", "2026-02-28T02:15:00Z"),
            ("2028-01-31T02:15:00Z", "1mo", "2028-02-29T02:15:00Z"),
            ("2026-11-23T11:12:13Z", "13mo", "2027-12-23T11:12:13Z"),
            ("2024-02-29T00:00:00Z", "1y", "2025-02-28T00:00:00Z"),
            ("2026-12-31T23:59:59Z", "2d", "2027-01-02T23:59:59Z"),
        ];
        for (from, span, want) in cases {
            assert_eq!(format_utc(Span::parse(span).unwrap().after(t(from))), want, "{from} + {span}");
        }
    }

    /// One row per interesting day of a year of daily snapshots at 02:15 UTC,
    /// lock_days = 30, keep = 7d / 5w / 13mo / 7y.
    #[test]
    fn a_year_of_daily_snapshots() {
        let table: &[(&str, &[&str], &str)] = &[
            // created (a Thursday, the first ever)  keeps                          retain until
            ("2026-01-01T02:15:00Z", &["daily", "weekly", "monthly", "yearly"], "2033-01-01T02:15:00Z"),
            ("2026-01-02T02:15:00Z", &["daily"], "2026-02-01T02:15:00Z"),
            ("2026-01-05T02:15:00Z", &["daily", "weekly"], "2026-02-09T02:15:00Z"),
            ("2026-02-01T02:15:00Z", &["daily", "monthly"], "2027-03-01T02:15:00Z"),
            ("2026-02-02T02:15:00Z", &["daily", "weekly"], "2026-03-09T02:15:00Z"),
            ("2026-06-01T02:15:00Z", &["daily", "weekly", "monthly"], "2027-07-01T02:15:00Z"),
            ("2026-12-31T02:15:00Z", &["daily"], "2027-01-30T02:15:00Z"),
            ("2027-01-01T02:15:00Z", &["daily", "monthly", "yearly"], "2034-01-01T02:15:00Z"),
        ];
        let keep = policy();
        let mut previous = None;
        let mut decided = std::collections::BTreeMap::new();
        let mut counts = std::collections::BTreeMap::new();
        let mut day = t("2026-01-01T02:15:00Z");
        while day <= t("2027-01-01T02:15:00Z") {
            let d = decide(day, 30, &keep, previous);
            for p in &d.keeps {
                *counts.entry(p.name()).or_insert(0) += 1;
            }
            decided.insert(format_utc(day), d);
            previous = Some(day);
            day += DAY;
        }
        for (created, keeps, until) in table {
            let d = &decided[*created];
            let names: Vec<&str> = d.keeps.iter().map(|p| p.name()).collect();
            assert_eq!(&names, keeps, "keepers of {created}");
            assert_eq!(format_utc(d.retain_until), *until, "retain_until of {created}");
        }
        // 366 days (2026 and 2027-01-01), 53 ISO weeks begun, 13 months, 2 years.
        assert_eq!(counts["daily"], 366);
        assert_eq!(counts["weekly"], 53);
        assert_eq!(counts["monthly"], 13);
        assert_eq!(counts["yearly"], 2);
    }

    #[test]
    fn a_second_snapshot_of_the_day_keeps_nothing() {
        let first = t("2026-03-04T02:15:00Z");
        let d = decide(first + 3600, 3, &policy(), Some(first));
        assert!(d.keeps.is_empty());
        assert_eq!(d.retain_until, first + 3600 + 3 * DAY);
        // Without a keep policy, only lock_days counts.
        assert_eq!(decide(first, 3, &Keep::default(), None).retain_until, first + 3 * DAY);
    }
}
