//! `coffer backup JOB`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::EXIT_PARTIAL;
use crate::config::Config;
use crate::progress::bytes;

#[derive(clap::Args)]
pub struct Args {
    /// Job name from the config.
    job: String,
    /// Do not draw a progress line, even on a terminal.
    #[arg(long)]
    no_progress: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let job = cfg.job(&a.job)?;
    let opts = crate::backup::Options {
        progress: !a.no_progress,
        trigger: crate::catalog::Trigger::Manual,
        scheduled_for: None,
        stop: None,
    };
    let s = crate::backup::run(&cfg, job, &opts)?;
    let st = &s.stats;
    println!("snapshot {} of job {} complete", s.snapshot_id, job.name);
    println!(
        "  files {} ({} unchanged), dirs {}, symlinks {}, size {}",
        st.files,
        s.unchanged_files,
        st.dirs,
        st.symlinks,
        bytes(st.bytes)
    );
    println!(
        "  read {}, new {}, uploaded {} in {} packs, {:.1}s",
        bytes(st.bytes_read),
        bytes(st.bytes_new),
        bytes(st.bytes_uploaded),
        st.packs_uploaded,
        st.duration_ms as f64 / 1000.0
    );
    if let Some(until) = s.retain_until {
        let keeper = if s.keeps.is_empty() { String::new() } else { format!(", {} keeper", s.keeps.join("/")) };
        println!(
            "  locked ({}) until {}{keeper}; {} lock extensions of reused packs",
            s.protection,
            crate::time::format_utc(until),
            st.lock_extensions
        );
    }
    if s.errors.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    println!("  {} paths could not be read and are not in the snapshot:", s.errors.len());
    for e in &s.errors {
        println!("    {}: {}", e.path, e.error);
    }
    Ok(ExitCode::from(EXIT_PARTIAL))
}
