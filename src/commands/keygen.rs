//! `coffer keygen`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the identity (created with mode 0600; never overwritten). `-`
    /// prints it to standard output instead, and the recipient to standard error (as
    /// age-keygen does), for piping it straight to offline storage.
    #[arg(long, short)]
    output: PathBuf,
    /// Print `{"recipient": …, "identity_file": …}` (with `-o -`, the identity stays
    /// alone on standard output and the JSON goes to standard error).
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if a.output.as_os_str() == "-" {
        let (text, recipient) = crate::keys::new_identity();
        print!("{text}");
        match a.json {
            true => eprintln!(
                "{}",
                serde_json::json!({ "recipient": recipient, "identity_file": null, "schema": super::json::SCHEMA })
            ),
            false => eprintln!("public key: {recipient}"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let recipient = crate::keys::keygen(&a.output)?;
    if a.json {
        super::json::print(&serde_json::json!({ "recipient": recipient, "identity_file": a.output }))?;
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("wrote identity {} (keep it offline; it is the only key that can restore)", a.output.display());
    println!("{recipient}");
    Ok(ExitCode::SUCCESS)
}
