//! `coffer mount DIR`: the snapshots as a read-only file system, until SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::Reading;

#[derive(clap::Args)]
pub struct Args {
    /// An empty directory to mount on; `by-job/JOB/SNAPSHOT/...` appear in it, and
    /// `by-job/JOB/latest`. Ctrl-C (SIGINT) or SIGTERM unmounts.
    dir: PathBuf,
    #[command(flatten)]
    reading: Reading,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = crate::config::Config::load(config)?;
    let r = &a.reading;
    let browser = crate::browse::Browser::open(&cfg, &r.identity, r.target.as_deref(), r.pick.filter())?;
    if let Some(job) = &r.job {
        cfg.job(job)?;
    }
    let mut snapshots = browser.snapshots(r.job.as_deref())?;
    snapshots.reverse();
    if snapshots.is_empty() {
        bail!("no complete snapshot to mount{}", r.pick.filter().said());
    }
    let jobs: std::collections::BTreeSet<&str> = snapshots.iter().map(|s| s.job.as_str()).collect();
    let shown = format!("{} snapshots of {} jobs", snapshots.len(), jobs.len());
    use fuser::MountOption::*;
    let mut options = fuser::Config::default();
    options.mount_options =
        vec![RO, NoSuid, NoDev, FSName("coffer".into()), Subtype("coffer".into()), DefaultPermissions];
    let fs = crate::mount::Mount::new(browser, snapshots);
    let session =
        fuser::spawn_mount(fs, &a.dir, &options).with_context(|| format!("cannot mount on {}", a.dir.display()))?;
    eprintln!("mounted {shown} on {} (read-only); Ctrl-C or SIGTERM unmounts", a.dir.display());
    let outcome = crate::runtime::block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut int, mut term) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
        loop {
            tokio::select! {
                _ = int.recv() => return Ok::<_, std::io::Error>("SIGINT"),
                _ = term.recv() => return Ok("SIGTERM"),
                // Unmounted from outside (`fusermount3 -u`, `umount`): the session ended.
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if session.guard.is_finished() {
                        return Ok("an unmount");
                    }
                }
            }
        }
    })?;
    tracing::info!("{outcome}: unmounting {}", a.dir.display());
    session.umount_and_join().with_context(|| format!("cannot unmount {}", a.dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
