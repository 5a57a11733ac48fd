//! The state directory: everything coffer keeps on the backup host, in one directory of
//! mode 0700 (`state_dir` in the config). Its layout is written here and nowhere else:
//!
//! | path                         | what                                                          | written by      |
//! |------------------------------|---------------------------------------------------------------|-----------------|
//! | `catalog.sqlite` (`-wal`, `-shm`) | the catalog: packs, chunks, snapshots, runs, events, file cache | every command that stores |
//! | `catalog.sqlite.recovering`  | the catalog `recover` rebuilds, renamed into place when whole | recover         |
//! | `coffer.repo.pending`        | the repository record `init` uploads, until the catalog has it | init            |
//! | `locks/JOB.lock`             | held by a backup of the job; prune takes every job's           | backup, prune   |
//! | `daemon.lock`, `recover.lock`| held by the daemon, by `recover`                               | daemon, recover |
//! | `mirrors/JOB/NAME.git`       | bare mirrors of a git job's repositories                       | backup          |
//! | `tmp/`                       | entry streams of runs and restores, removed when they end      | backup, restore |

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::fsutil::{LockFile, create_private_dir};

/// The state directory's files, by what they are.
#[derive(Clone, Copy)]
pub struct StateDir<'a>(pub &'a Path);

impl StateDir<'_> {
    pub const CATALOG: &'static str = "catalog.sqlite";

    /// Creates the directory (0700) if it is missing.
    pub fn create(&self) -> Result<()> {
        create_private_dir(self.0).with_context(|| format!("cannot create state directory {}", self.0.display()))
    }

    /// Makes sure nobody else can read the state directory (the catalog names every file
    /// backed up; git mirrors and secrets may sit there): created 0700 if missing. An
    /// existing one of ours that others can enter loses those bits, if it is coffer's own
    /// (it holds a catalog, or nothing yet); any other is refused, so that a state_dir set to
    /// a shared directory is never chmod'ed.
    pub fn secure(&self) -> Result<()> {
        let dir = self.0;
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let m = match std::fs::metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return create_private_dir(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()));
            }
            r => r.map_err(|e| anyhow::anyhow!("state directory {}: {e}", dir.display()))?,
        };
        let mode = m.mode() & 0o7777;
        if mode & 0o077 == 0 {
            return Ok(());
        }
        let mine = m.uid() == crate::fsutil::euid();
        let own = self.catalog().exists() || std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
        if mine && own {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7700))
                .map_err(|e| anyhow::anyhow!("cannot make state directory {} private: {e}", dir.display()))?;
            tracing::warn!(dir = %dir.display(), "the state directory was {mode:o}: now {:o}, readable by its owner only", mode & 0o7700);
            return Ok(());
        }
        anyhow::bail!(
            "state directory {} is {mode:o}: others can read it, and it is not coffer's alone to change; \
             run `chmod 700 {}` or choose a directory of its own",
            dir.display(),
            dir.display()
        )
    }

    pub fn catalog(&self) -> PathBuf {
        self.0.join(Self::CATALOG)
    }

    /// The catalog `recover` builds before it renames it to [`StateDir::catalog`].
    pub fn recovering_catalog(&self) -> PathBuf {
        self.0.join("catalog.sqlite.recovering")
    }

    /// The repository record `init` keeps until the catalog knows it, so that an init
    /// interrupted after its upload can finish.
    pub fn pending_repo(&self) -> PathBuf {
        self.0.join("coffer.repo.pending")
    }

    /// The directory of a git job's mirrors.
    pub fn mirrors(&self, job: &str) -> PathBuf {
        self.0.join("mirrors").join(job)
    }

    /// Takes the lock a backup of `job` holds (and prune takes for every job).
    pub fn job_lock(&self, job: &str) -> Result<LockFile> {
        let dir = self.0.join("locks");
        create_private_dir(&dir)
            .map_err(|e| crate::fsutil::io_error(e, &dir).context("cannot create the lock directory"))?;
        LockFile::take(&dir.join(format!("{job}.lock")), || {
            format!("another coffer process is backing up job `{job}` with this state directory")
        })
    }

    /// Takes the daemon's lock: one daemon per state directory.
    pub fn daemon_lock(&self) -> Result<LockFile> {
        LockFile::take(&self.0.join("daemon.lock"), || {
            format!("another coffer daemon is running with state directory {}", self.0.display())
        })
    }

    /// Takes `recover`'s lock.
    pub fn recover_lock(&self) -> Result<LockFile> {
        LockFile::take(&self.0.join("recover.lock"), || {
            format!("another `coffer recover` is running on {}", self.0.display())
        })
    }

    /// A new scratch file's path under `tmp/` (created 0700), named `what-RANDOM`.
    pub fn scratch(&self, what: &str) -> Result<PathBuf> {
        let tmp = self.0.join("tmp");
        create_private_dir(&tmp)
            .map_err(|e| crate::fsutil::io_error(e, &tmp).context("cannot create the scratch directory"))?;
        Ok(tmp.join(format!("{what}-{}", crate::hex::random(6))))
    }
}
