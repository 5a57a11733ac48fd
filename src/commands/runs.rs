//! `coffer runs [JOB]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::table_line;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::progress::bytes;

#[derive(clap::Args)]
pub struct Args {
    /// Only this job's runs (`@scrub`: the scrub's).
    job: Option<String>,
    /// How many runs to show.
    #[arg(long, short = 'n', default_value_t = 20)]
    limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(super) json: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    if let Some(job) = a.job.as_deref().filter(|j| *j != crate::scrub::JOB) {
        cfg.job(job)?;
    }
    let rows = Catalog::open_existing(&cfg.state_dir)?.runs(a.job.as_deref(), a.limit)?;
    if a.json {
        super::json::print_each(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let widths = [-6, -20, -12, -7, -9, -11, 7, 10, 10, 7];
    let header =
        ["RUN", "STARTED (UTC)", "JOB", "KIND", "TRIGGER", "OUTCOME", "TIME", "READ", "UPLOADED", "RETRIES", "ERROR"];
    println!("{}", table_line(&header.map(String::from), &widths));
    for r in &rows {
        let cells = [
            r.id.to_string(),
            crate::time::format_utc(r.started_at),
            r.job.clone(),
            r.kind.as_str().to_string(),
            r.trigger.clone(),
            r.outcome.to_string(),
            r.duration_ms.map(|ms| format!("{:.1}s", ms as f64 / 1000.0)).unwrap_or_else(|| "-".into()),
            bytes(r.bytes_read),
            bytes(r.bytes_uploaded),
            r.retries.to_string(),
            r.error.as_deref().unwrap_or("").replace('\n', " "),
        ];
        println!("{}", table_line(&cells, &widths));
    }
    if rows.is_empty() {
        println!("(no runs)");
    }
    Ok(ExitCode::SUCCESS)
}
