//! `coffer keygen`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the identity (created with mode 0600; never overwritten).
    #[arg(long, short)]
    output: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let recipient = crate::keys::keygen(&a.output)?;
    eprintln!("wrote identity {} (keep it offline; it is the only key that can restore)", a.output.display());
    println!("{recipient}");
    Ok(ExitCode::SUCCESS)
}
