//! `coffer stats [JOB]`: what the repository holds, from the catalog alone.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::table_line;
use crate::catalog::{Catalog, OnTarget, Stored};
use crate::config::Config;
use crate::progress::bytes;

#[derive(clap::Args)]
pub struct Args {
    /// Only this job (the targets and the whole repository are shown all the same).
    job: Option<String>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub(super) json: bool,
}

/// One job's figures, with the ratios they give.
#[derive(serde::Serialize)]
struct JobStats {
    job: String,
    #[serde(flatten)]
    stored: Stored,
    #[serde(flatten)]
    ratios: Ratios,
}

/// How much dedup and compression save. Each is `None` when there is nothing to divide by.
#[derive(serde::Serialize)]
struct Ratios {
    /// What restoring every stored snapshot writes, per byte of distinct data.
    dedup_ratio: Option<f64>,
    /// Distinct data per byte stored (zstd, then age's overhead).
    compression_ratio: Option<f64>,
}

impl Ratios {
    fn of(s: &Stored) -> Ratios {
        let ratio = |a: u64, b: u64| (b > 0).then(|| (a as f64 / b as f64 * 1000.0).round() / 1000.0);
        Ratios {
            dedup_ratio: ratio(s.logical_bytes, s.unique_bytes),
            compression_ratio: ratio(s.unique_bytes, s.chunk_bytes),
        }
    }
}

#[derive(serde::Serialize)]
struct TargetStats {
    target: String,
    url: String,
    #[serde(flatten)]
    on: OnTarget,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let jobs: Vec<&str> = match &a.job {
        Some(name) => vec![cfg.job(name)?.name.as_str()],
        None => cfg.jobs.iter().map(|j| j.name.as_str()).collect(),
    };
    let catalog = Catalog::open_existing(&cfg.state_dir)?;
    let now = crate::time::now_secs();
    let mut per_job = Vec::new();
    for job in jobs {
        let stored = catalog.stored(Some(job))?;
        per_job.push(JobStats { job: job.to_string(), ratios: Ratios::of(&stored), stored });
    }
    let mut per_target = Vec::new();
    for t in catalog.targets()? {
        per_target.push(TargetStats { on: catalog.on_target(t.id, now)?, target: t.name, url: t.url });
    }
    let all = catalog.stored(None)?;
    if a.json {
        let repository = serde_json::json!({ "stored": &all, "ratios": Ratios::of(&all) });
        super::json::print(&serde_json::json!({ "jobs": per_job, "targets": per_target, "repository": repository }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let ratio = |r: Option<f64>| r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into());
    let widths = [-16, 9, 10, 7, 10, 10, 7, 7];
    let header = ["JOB", "SNAPSHOTS", "LOGICAL", "PACKS", "STORED", "DISTINCT", "DEDUP", "ZSTD"];
    println!("{}", table_line(&header.map(String::from), &widths));
    let all_row = JobStats { job: "(repository)".into(), ratios: Ratios::of(&all), stored: all };
    for j in per_job.iter().chain(a.job.is_none().then_some(&all_row)) {
        let s = &j.stored;
        let cells = [
            j.job.clone(),
            s.snapshots.to_string(),
            bytes(s.logical_bytes),
            s.packs.to_string(),
            bytes(s.stored_bytes),
            bytes(s.unique_bytes),
            ratio(j.ratios.dedup_ratio),
            ratio(j.ratios.compression_ratio),
        ];
        println!("{}", table_line(&cells, &widths));
    }
    println!();
    let widths = [-16, 7, 10, 8, 10, -20];
    let header = ["TARGET", "PACKS", "STORED", "RECORDS", "LOCKED", "LOCKS END"];
    println!("{}", table_line(&header.map(String::from), &widths));
    let day = |t: Option<i64>| t.map(|t| crate::time::format_utc(t)[..10].to_string());
    for t in &per_target {
        let o = &t.on;
        let ends = match (day(o.locked_until_earliest), day(o.locked_until_latest)) {
            (Some(a), Some(b)) if a == b => a,
            (Some(a), Some(b)) => format!("{a} to {b}"),
            _ => "-".into(),
        };
        let cells = [
            t.target.clone(),
            o.packs.to_string(),
            bytes(o.stored_bytes),
            o.snapshot_records.to_string(),
            bytes(o.locked_bytes),
            ends,
        ];
        println!("{}", table_line(&cells, &widths));
    }
    Ok(ExitCode::SUCCESS)
}
