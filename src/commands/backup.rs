//! `coffer backup JOB`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::{EXIT_DEGRADED, EXIT_PARTIAL, EXIT_SUSPICIOUS};
use crate::config::Config;
use crate::progress::bytes;
use crate::run_outcome::RunOutcome;

#[derive(clap::Args)]
pub struct Args {
    /// Job name from the config.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    job: Option<String>,
    /// Back up every job, one after the other; the exit code is the worst outcome's (1 if
    /// any failed, else 6 if the tripwire tripped, else 5 if a target lags, else 3 if any
    /// could not read some paths).
    #[arg(long)]
    all: bool,
    /// Do not draw a progress line, even on a terminal.
    #[arg(long)]
    no_progress: bool,
    /// Read no file and write nothing: for a path source, walk it and list each file a run
    /// now would read (`+` new, `M` changed; the others are taken from the last
    /// snapshot unread), with the totals (on a first backup, the estimate of it); then
    /// how long the snapshot would be kept, why, and until when it would be locked.
    /// `--json` gives the totals (`would_read`), not the list.
    #[arg(long)]
    dry_run: bool,
    /// Label the snapshot (repeatable), beside the job's own `tags`: `snapshots`, `ls`,
    /// `find`, `restore`... pick snapshots by them with --tag. Letters, digits and
    /// `. _ - : @ +`, at most 64 each.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Print the summary as one JSON object (one line per job with --all).
    #[arg(long)]
    pub(super) json: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let mut jobs: Vec<crate::config::Job> = match &a.job {
        Some(name) => vec![cfg.job(name)?.clone()],
        None => cfg.jobs.clone(),
    };
    for job in &mut jobs {
        job.tag(&a.tags).map_err(|e| anyhow::anyhow!("--tag: {e}"))?;
    }
    if jobs.is_empty() {
        anyhow::bail!("{} defines no [[job]]", config.display());
    }
    let mut worst = Worst::Success;
    for job in &jobs {
        let result = if a.dry_run { dry_run(&cfg, job, a.json) } else { one(&cfg, job, &a) };
        worst = worst.max(match result {
            Ok(code) if code == ExitCode::SUCCESS => Worst::Success,
            Ok(code) if code == ExitCode::from(EXIT_DEGRADED) => Worst::Degraded,
            Ok(code) if code == ExitCode::from(EXIT_SUSPICIOUS) => Worst::Suspicious,
            Ok(_) => Worst::Partial,
            Err(e) if a.all => {
                if !e.is::<crate::run_outcome::Logged>() {
                    eprintln!("error: job {}: {e:#}", job.name);
                }
                Worst::Failed
            }
            Err(e) => return Err(e),
        });
    }
    Ok(match worst {
        Worst::Success => ExitCode::SUCCESS,
        Worst::Partial => ExitCode::from(EXIT_PARTIAL),
        Worst::Degraded => ExitCode::from(EXIT_DEGRADED),
        Worst::Suspicious => ExitCode::from(EXIT_SUSPICIOUS),
        Worst::Failed => ExitCode::FAILURE,
    })
}

/// The outcomes of `--all`, in the order the exit code takes the worst of.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Worst {
    Success,
    Partial,
    Degraded,
    Suspicious,
    Failed,
}

/// One job's backup and its summary.
fn one(cfg: &Config, job: &crate::config::Job, a: &Args) -> Result<ExitCode> {
    let opts = crate::backup::Options {
        progress: !a.no_progress,
        trigger: crate::catalog::Trigger::Manual,
        scheduled_for: None,
        stop: None,
        observers: Vec::new(),
    };
    let s = crate::backup::run(cfg, job, opts)?;
    let code = match s.outcome() {
        RunOutcome::Suspicious => ExitCode::from(EXIT_SUSPICIOUS),
        RunOutcome::Degraded => ExitCode::from(EXIT_DEGRADED),
        RunOutcome::Partial => ExitCode::from(EXIT_PARTIAL),
        _ => ExitCode::SUCCESS,
    };
    if a.json {
        #[derive(serde::Serialize)]
        struct Done<'a> {
            job: &'a str,
            outcome: RunOutcome,
            #[serde(flatten)]
            summary: &'a crate::backup::Summary,
        }
        super::json::print(&Done { job: &job.name, outcome: s.outcome(), summary: &s })?;
        return Ok(code);
    }
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
    println!(
        "  kept until {}: {}; {} lock extensions of reused packs",
        crate::time::format_utc(s.kept_until),
        s.because,
        st.lock_extensions
    );
    if s.copied.objects > 0 {
        println!("  caught up lagging targets: {} objects, {} copied", s.copied.objects, bytes(s.copied.bytes));
    }
    for why in &s.not_copied {
        println!("  {why}");
    }
    for t in &s.targets {
        match &t.lagging {
            None => println!("  target {}: stored, {}", t.name, locked(t.protection, t.locked_until)),
            Some(why) => println!("  target {}: NOT stored (the next run catches it up): {why}", t.name),
        }
    }
    if !s.errors.is_empty() {
        println!("  {} paths could not be read and are not in the snapshot:", s.errors.len());
        for e in &s.errors {
            println!("    {}: {}", e.path, e.error);
        }
    }
    print_tripwire(&s, &job.name);
    Ok(code)
}

/// The tripwire's verdict: a line, or on a trip what fired and what was held.
fn print_tripwire(s: &crate::backup::Summary, job: &str) {
    use crate::tripwire::Verdict;
    match (&s.tripwire, &s.tripwire_error) {
        (_, Some(e)) => println!("  tripwire: could not judge this run: {e}"),
        (None, None) => {}
        (Some(t), None) => match t.verdict {
            Verdict::First => println!("  tripwire: first snapshot, measured"),
            Verdict::NotEnoughHistory => {
                println!("  tripwire: not enough history ({} of {} runs), measured, not judged", t.history, t.needs)
            }
            Verdict::Clean => println!("  tripwire: no anomalous change"),
            Verdict::Suspicious => {
                println!(
                    "  ANOMALOUS CHANGE: the snapshot is stored and marked suspicious; prune is frozen for the job"
                );
                for signal in &t.signals {
                    println!("    {}: {}", signal.name, signal.detail);
                }
                if let Some(until) = t.held_until {
                    println!("    held until {}: {}", crate::time::format_utc(until), t.held.join(", "));
                }
                if let Some(e) = &t.hold_error {
                    println!("    holding the clean snapshots failed: {e}");
                }
                println!("    once someone looked: coffer ack {job} {} --reason TEXT [--false-alarm]", s.run);
            }
        },
    }
}

/// "locked (COMPLIANCE) until …", or why nothing is.
fn locked(protection: crate::store::Protection, until: Option<i64>) -> String {
    match until {
        Some(until) => format!("locked ({protection}) until {}", crate::time::format_utc(until)),
        None => format!("not locked (the target is {protection})"),
    }
}

/// `--dry-run`: what a run now would read (a walk against the file cache), and the
/// retention decision it would make.
fn dry_run(cfg: &Config, job: &crate::config::Job, json: bool) -> Result<ExitCode> {
    use std::io::Write;

    use crate::backup::preview::{Reason, would_read};
    let repo = crate::repo::Repo::open(cfg)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let read = would_read(cfg, job, &repo.catalog, |e, why| {
        if !json {
            let mark = if why == Reason::New { '+' } else { 'M' };
            writeln!(out, "{mark} {:>10}  {}", bytes(e.size), crate::escape::printable(&e.path))?;
        }
        Ok(())
    })?;
    out.flush()?;
    drop(out);
    let decision = crate::backup::retention_at(&repo.catalog, job, crate::time::now_secs())?;
    let targets = repo.targets.iter().filter(|t| job.targets.contains(&t.name));
    if json {
        let targets: Vec<_> = targets
            .map(|t| {
                let locked_until = t.lock_until(decision.retain_until).map(|l| l.until);
                serde_json::json!({ "target": t.name, "protection": t.protection(), "locked_until": locked_until })
            })
            .collect();
        let (retain_until, because) = (decision.retain_until, &decision.because);
        let decided = serde_json::json!({ "job": job.name, "retain_until": retain_until, "because": because,
                                          "targets": targets, "would_read": read });
        super::json::print(&decided)?;
        return Ok(ExitCode::SUCCESS);
    }
    match &read {
        Some(r) => {
            println!(
                "would read {} files ({}); {} unchanged files ({}) taken from the last snapshot unread; {} dirs, {} symlinks",
                r.files,
                bytes(r.bytes),
                r.unchanged_files,
                bytes(r.unchanged_bytes),
                r.dirs,
                r.symlinks
            );
            for p in &r.problems {
                println!("  cannot read: {p}");
            }
        }
        None => println!("what a {} source reads is known when it runs (a fetch, a command, a listing)", job.source),
    }
    println!(
        "a snapshot of job {} made now would be kept until {}: {}",
        job.name,
        crate::time::format_utc(decision.retain_until),
        decision.because,
    );
    for target in targets {
        let lock = target.lock_until(decision.retain_until).map(|l| l.until);
        println!("  target {}: {}", target.name, locked(target.protection(), lock));
    }
    println!("(dry run: nothing was read or written)");
    Ok(ExitCode::SUCCESS)
}
