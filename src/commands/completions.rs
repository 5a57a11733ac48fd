//! `coffer completions SHELL` and `coffer man`.

use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

/// Prints the completion script for a shell (e.g. `coffer completions bash >
/// /etc/bash_completion.d/coffer`) of `cmd`, the whole command line.
pub fn run(a: Args, mut cmd: clap::Command) -> Result<ExitCode> {
    // Into memory first: clap_complete panics on a write error (`| head` closing the pipe).
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "coffer", &mut script);
    super::write_stdout(&script)
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// A command's own page (`coffer man restore` is coffer-restore(1)), or
    /// `coffer.toml` for the config file's, coffer.toml(5); without it, coffer(1).
    command: Option<String>,
}

/// The EXIT STATUS section every page ends with.
const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
An error (named on standard error).
.TP
\fB2\fR
A usage error: an option or argument that does not parse.
.TP
\fB3\fR
\fBbackup\fR: completed, but some paths could not be read (the run is \fIpartial\fR).
.TP
\fB4\fR
\fBrecover\fR, \fBverify\fR, \fBscrub\fR: tampering or damage found.
.TP
\fB5\fR
\fBbackup\fR: stored on some targets, not all (\fIdegraded\fR).
.TP
\fB6\fR
\fBbackup\fR: the tripwire found the run's changes anomalous (\fIsuspicious\fR).
.TP
\fB141\fR
The reader of standard output closed it (as a process ended by SIGPIPE).
.PP
\fBcoffer status\fR: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the Nagios convention).
"#;

/// The ENVIRONMENT section: what coffer reads from its environment.
const ENVIRONMENT: &str = r#".SH ENVIRONMENT
.TP
\fBCOFFER_CONFIG\fR
The config file, when \fB\-\-config\fR is not given (default /etc/coffer/coffer.toml).
.TP
\fBCOFFER_IDENTITY\fR
The restorer's identity file, when \fB\-\-identity\fR is not given.
.TP
\fBCOFFER_IDENTITY_PASSPHRASE_FILE\fR
A file whose first line is the passphrase of an encrypted identity (else it is asked on the terminal).
.TP
\fBCOFFER_LOG\fR
\fBinfo\fR or \fBdebug\fR: more log output, as \fB\-v\fR and \fB\-vv\fR.
.TP
\fBAWS_ACCESS_KEY_ID\fR, \fBAWS_SECRET_ACCESS_KEY\fR, \fBAWS_SESSION_TOKEN\fR, \fBAWS_REGION\fR, \fBAWS_ENDPOINT_URL\fR
An S3 target's credentials, region and endpoint, unless its table names other variables (\fBaccess_key_id_env\fR, ...).
.TP
\fBCOFFER_PRUNE_ACCESS_KEY_ID\fR, \fBCOFFER_PRUNE_SECRET_ACCESS_KEY\fR
\fBcoffer prune\fR's privileged credentials, unless \fB[prune]\fR names others. The daemon never reads them.
.TP
\fBJOURNAL_STREAM\fR
Set by systemd: each log line then starts with its syslog priority.
.PP
No child process coffer starts (git, ssh, a dump command, a hook) gets any of the credentials above.
"#;

/// Prints a man page of `top`, the whole command line, in roff (`coffer man | man -l -`).
pub fn man(a: ManArgs, top: clap::Command) -> Result<ExitCode> {
    if a.command.as_deref() == Some("coffer.toml") {
        return super::write_stdout(config_page().as_bytes());
    }
    let page = match &a.command {
        None => top,
        Some(name) => {
            let Some(sub) = top.find_subcommand(name) else {
                anyhow::bail!("no command `{name}` (see `coffer --help`)");
            };
            // Named as the top page lists it, with the global options it takes too.
            let global: Vec<clap::Arg> = top.get_arguments().filter(|a| a.is_global_set()).cloned().collect();
            // clap names are &'static str; this one lives as long as the process (it exits next).
            let page_name: &'static str = Box::leak(format!("coffer-{name}").into_boxed_str());
            sub.clone().name(page_name).version(env!("CARGO_PKG_VERSION")).args(global)
        }
    };
    let has_commands = page.has_subcommands();
    let man = clap_mangen::Man::new(page);
    let mut roff = Vec::new();
    man.render_title(&mut roff)?;
    man.render_name_section(&mut roff)?;
    man.render_synopsis_section(&mut roff)?;
    man.render_description_section(&mut roff)?;
    man.render_options_section(&mut roff)?;
    if has_commands {
        man.render_subcommands_section(&mut roff)?;
    }
    roff.extend_from_slice(EXIT_STATUS.as_bytes());
    roff.extend_from_slice(ENVIRONMENT.as_bytes());
    roff.extend_from_slice(b".SH \"SEE ALSO\"\ncoffer.toml(5)\n");
    man.render_version_section(&mut roff)?;
    super::write_stdout(named_unicode(&String::from_utf8_lossy(&roff)).as_bytes())
}

/// Roff with each character other than ASCII named by its code point (`\[u2026]`), which
/// every groff reads whatever its input encoding.
fn named_unicode(roff: &str) -> String {
    roff.chars()
        .map(|c| match c.is_ascii() {
            true => c.to_string(),
            false => format!("\\[u{:04X}]", c as u32),
        })
        .collect()
}

/// coffer.toml(5): the annotated example config, every key with its default.
fn config_page() -> String {
    let example = include_str!("../../config/coffer.example.toml");
    // A line starting with `.` or `'` would be a roff request; `\` is roff's escape.
    let body: String = example.lines().map(|l| format!("\\&{}\n", named_unicode(&l.replace('\\', "\\e")))).collect();
    format!(
        ".TH coffer.toml 5 \"\" \"coffer {}\"\n.SH NAME\ncoffer.toml \\- coffer's configuration file\n\
         .SH DESCRIPTION\nTOML. Every key, with its default where it has one, as the annotated example \
         below shows it. \\fBcoffer check\\-config\\fR checks a file, naming the line of a key it refuses.\n\
         .SH EXAMPLE\n.nf\n{body}.fi\n.SH \"SEE ALSO\"\ncoffer(1)\n",
        env!("CARGO_PKG_VERSION")
    )
}
