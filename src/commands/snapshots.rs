//! `coffer snapshots [JOB]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::table_line;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::progress::bytes;

#[derive(clap::Args)]
pub struct Args {
    /// Only this job's snapshots.
    job: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let rows = Catalog::open_existing(&cfg)?.snapshots(a.job.as_deref())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let widths = [-16, -20, -12, 8, 10, 10, 10, 6, -10, -12];
    let header = [
        "ID",
        "TIME (UTC)",
        "JOB",
        "FILES",
        "SIZE",
        "NEW",
        "UPLOADED",
        "ERRORS",
        "KEEP UNTIL",
        "LOCKED UNTIL",
        "CONTENTS",
    ];
    let day = |t: Option<i64>| t.map(|t| crate::time::format_utc(t)[..10].to_string()).unwrap_or_else(|| "-".into());
    println!("{}", table_line(&header.map(String::from), &widths));
    for s in &rows {
        let cells = [
            s.id.clone(),
            crate::time::format_utc(s.created_at),
            s.job.clone(),
            s.files.to_string(),
            bytes(s.bytes),
            bytes(s.bytes_new),
            bytes(s.bytes_uploaded),
            s.errors.to_string(),
            day(s.retain_until),
            day(s.retain_until.filter(|_| s.lock_mode.is_some())),
            s.contents.as_ref().map(|c| c.summary()).unwrap_or_default(),
        ];
        println!("{}", table_line(&cells, &widths));
    }
    if rows.is_empty() {
        println!("(no snapshots)");
    }
    Ok(ExitCode::SUCCESS)
}
