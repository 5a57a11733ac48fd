//! `coffer ack JOB RUN --reason TEXT [--false-alarm]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::catalog::Catalog;
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// The job whose run tripped the tripwire.
    job: String,
    /// The suspicious run's id (`coffer runs JOB` shows it; so does the backup summary).
    run: i64,
    /// Why: what someone found when they looked (recorded with the time).
    #[arg(long)]
    reason: String,
    /// The changes were legitimate: the job's thresholds rise (×1.5 per false alarm, at
    /// most ×4) and the run's snapshot is no longer marked suspicious.
    #[arg(long)]
    false_alarm: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub(super) json: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let job = cfg.job(&a.job)?;
    let reason = a.reason.trim();
    if reason.is_empty() {
        bail!("--reason is empty: say what you found (it is recorded)");
    }
    let catalog = Catalog::open_existing(&cfg.state_dir)?;
    catalog.acknowledge(&job.name, a.run, reason, a.false_alarm, crate::time::now_secs())?;
    let still_open = catalog.anomalies(Some(&job.name), true)?;
    let sensitivity = crate::tripwire::sensitivity(catalog.false_alarms(&job.name)?);
    tracing::info!(job = %job.name, run = a.run, false_alarm = a.false_alarm, "anomalous change acknowledged: {reason}");
    if a.json {
        let open: Vec<i64> = still_open.iter().map(|r| r.run).collect();
        let acked = serde_json::json!({ "job": job.name, "run": a.run, "false_alarm": a.false_alarm,
                                        "thresholds": sensitivity, "open": open });
        super::json::print(&acked)?;
        return Ok(ExitCode::SUCCESS);
    }
    let what = if a.false_alarm { "as a false alarm" } else { "" };
    println!("run {} of job {} acknowledged {what}", a.run, job.name);
    if a.false_alarm {
        println!("  the job's thresholds are now ×{sensitivity:.2} the defaults");
    }
    match still_open.as_slice() {
        [] => println!("  prune is no longer frozen for the job"),
        open => {
            let runs: Vec<String> = open.iter().map(|r| r.run.to_string()).collect();
            println!("  still not acknowledged: runs {} (prune stays frozen)", runs.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
