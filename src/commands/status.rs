//! `coffer status`: the retention status check monitoring calls. A failed check is
//! UNKNOWN (3) for monitoring, never a silent OK.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::table_line;
use crate::config::Config;
use crate::store::Protection;

#[derive(clap::Args)]
pub struct Args {
    /// Read the lock of every needed object version from the server instead of
    /// trusting the catalog.
    #[arg(long)]
    remote: bool,
    /// With --remote: check only this many packs, chosen at random (snapshot records
    /// and the repository record are always checked).
    #[arg(long, requires = "remote")]
    sample: Option<usize>,
    /// Print JSON (the shape is documented in the README).
    #[arg(long)]
    pub(super) json: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let opts = crate::status::Options { remote: a.remote, sample: a.sample };
    let report = Config::load(config).map_err(anyhow::Error::from).and_then(|cfg| crate::status::run(&cfg, &opts));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            if a.json {
                super::json::print(&serde_json::json!({ "status": "UNKNOWN", "problems": [format!("{e:#}")] }))?;
            } else {
                println!("UNKNOWN: {e:#}");
            }
            return Ok(ExitCode::from(3));
        }
    };
    if a.json {
        super::json::print(&report)?;
        return Ok(ExitCode::from(report.status.exit_code()));
    }
    for t in &report.targets {
        let source = if t.protection == Protection::Unprotected {
            "no locks".to_string()
        } else if t.remote_checked {
            format!("locks read from the server ({} objects)", t.objects_checked)
        } else {
            "locks as recorded in the catalog".into()
        };
        println!("target {} {} {} ({source})", t.name, t.url, t.protection);
    }
    let widths = [-16, -12, 5, -16, 8, -20, 4, 4];
    let header = ["JOB", "TARGET", "LIVE", "NEWEST", "AGE", "PROTECTED UNTIL", "GAPS", "LAG"];
    println!("{}", table_line(&header.map(String::from), &widths));
    let day = |t: Option<i64>| t.map(crate::time::format_utc).unwrap_or_else(|| "-".into());
    for j in &report.jobs {
        let cells = [
            j.name.clone(),
            "(all)".into(),
            j.live_snapshots.to_string(),
            j.newest_snapshot.clone().unwrap_or_else(|| "-".into()),
            j.newest_age_secs.map(age).unwrap_or_else(|| "-".into()),
            day(j.protected_until),
            j.gaps.len().to_string(),
            "-".into(),
        ];
        println!("{}", table_line(&cells, &widths));
        for on in j.targets.iter().filter(|_| j.targets.len() > 1) {
            let cells = [
                String::new(),
                on.target.clone(),
                on.live_snapshots.to_string(),
                on.newest_snapshot.clone().unwrap_or_else(|| "-".into()),
                String::new(),
                day(on.protected_until),
                j.gaps.iter().filter(|g| g.target == on.target).count().to_string(),
                on.lag.to_string(),
            ];
            println!("{}", table_line(&cells, &widths));
        }
    }
    println!(
        "status: {}",
        serde_json::to_value(report.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    );
    for p in &report.problems {
        println!("  - {p}");
    }
    Ok(ExitCode::from(report.status.exit_code()))
}

/// `3d4h`, `2h5m`, `40s`
fn age(secs: i64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}
