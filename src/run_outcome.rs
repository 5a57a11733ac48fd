//! How a run ended: one type for the run history (the catalog's `runs.outcome`), the
//! hooks (`COFFER_OUTCOME`), the metrics (`outcome` label) and `coffer runs`, so that no
//! module compares strings to know what happened.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// Started and not ended yet (or its process died: the next start closes it as
    /// interrupted).
    Running,
    /// A complete snapshot, every path read.
    Success,
    /// A complete snapshot, with paths that could not be read (exit 3).
    Partial,
    /// A complete snapshot on some of the job's targets, not all (exit 5): the next run
    /// catches the others up.
    Degraded,
    /// A complete snapshot whose changes look like an attack on the source (the
    /// tripwire: `src/tripwire`): prune is frozen for the job until someone acknowledges it.
    Suspicious,
    /// No snapshot.
    Failed,
    /// Stopped at a checkpoint by a shutdown; the next run resumes.
    Interrupted,
    /// A fire time that came while the job was still running or waiting.
    Skipped,
}

impl RunOutcome {
    /// The outcomes of runs that ended, as the metrics list them.
    pub const ENDED: [RunOutcome; 6] = [
        RunOutcome::Success,
        RunOutcome::Partial,
        RunOutcome::Degraded,
        RunOutcome::Suspicious,
        RunOutcome::Failed,
        RunOutcome::Interrupted,
    ];

    const ALL: [RunOutcome; 8] = [
        RunOutcome::Running,
        RunOutcome::Success,
        RunOutcome::Partial,
        RunOutcome::Degraded,
        RunOutcome::Suspicious,
        RunOutcome::Failed,
        RunOutcome::Interrupted,
        RunOutcome::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Running => "running",
            RunOutcome::Success => "success",
            RunOutcome::Partial => "partial",
            RunOutcome::Degraded => "degraded",
            RunOutcome::Suspicious => "suspicious",
            RunOutcome::Failed => "failed",
            RunOutcome::Interrupted => "interrupted",
            RunOutcome::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<RunOutcome> {
        RunOutcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_reads_back_as_itself() {
        for o in RunOutcome::ALL {
            assert_eq!(RunOutcome::parse(o.as_str()), Some(o));
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        assert_eq!(RunOutcome::parse("succes"), None);
    }
}

/// The error of a run that already told it in the log (at ERROR, a skip at WARN), so
/// that the command line does not print the same cause a second time.
#[derive(Debug)]
pub struct Logged(pub anyhow::Error);

impl fmt::Display for Logged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Logged {}
