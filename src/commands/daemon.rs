//! `coffer daemon`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

pub fn run(config: &Path) -> Result<ExitCode> {
    crate::daemon::run(config)
}
