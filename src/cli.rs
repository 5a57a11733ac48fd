//! The command line: global options, logging, and the error line; the verbs are in
//! `commands/`, one file each.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::commands::{Command, EXIT_CLOSED_PIPE, stdout_closed};

#[derive(Parser)]
#[command(
    name = "coffer",
    version,
    about = "Immutable off-site backups: deduplicated, compressed, encrypted to offline age keys",
    long_about = "coffer backs up directories, git repositories, command output (database dumps) and \
                  cloud buckets into content-defined, deduplicated chunks, compresses them with zstd and \
                  encrypts them to age public keys, so the backup host can write backups but never read \
                  them. Packs go to an object store (S3 with Object Lock, or a local directory) and are \
                  tracked in a SQLite catalog in the state directory. `coffer daemon` runs the jobs on \
                  their schedules.",
    after_help = "Exit codes: 0 success, 1 error, 2 usage error, 3 backup completed but some paths could not be read, \
                  4 recover, verify or scrub found tampering or damage, 5 backup stored on some targets, not all, \
                  6 backup found the changes anomalous (the tripwire), 141 the reader of standard output closed it.\n\
                  `coffer status`: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios convention)."
)]
struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, env = "COFFER_CONFIG", default_value = "/etc/coffer/coffer.toml")]
    config: PathBuf,
    /// More log output (-v info, -vv debug). The daemon logs at info by default.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// No progress line and no summary on standard output: the exit code says how it
    /// went, and errors still go to standard error. Data (--json, ls, dump, ...) is kept.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Log format: `human` (for terminals) or `json` (one object per line, for journald
    /// and log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The whole command line, for completions and the man page.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// `println!` panics when the reader of standard output is gone. Rust ignores SIGPIPE,
/// and coffer keeps it so (a closed connection must be an error to retry, not the end of
/// the process), so that panic is turned here into the quiet exit a SIGPIPE would give.
fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info.payload().downcast_ref::<String>().map(String::as_str).unwrap_or_default();
        if text.starts_with("failed printing to stdout") && stdout_closed() {
            std::process::exit(EXIT_CLOSED_PIPE.into());
        }
        report(info)
    }));
}

pub fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    // SAFETY: coffer is still one thread: nothing has started another yet.
    unsafe { crate::env::seal() };
    init_logging(cli.verbose, cli.log_format, cli.command.is_daemon());
    if cli.quiet {
        crate::progress::silence();
        if cli.command.prints_summary() {
            silence_stdout();
        }
    }
    match crate::commands::run(&cli.config, cli.command, command) {
        Ok(code) => code,
        // The run's own log line at ERROR said it already.
        Err(e) if e.is::<crate::run_outcome::Logged>() => ExitCode::FAILURE,
        // The reader of standard output is gone (`coffer ls … | head`).
        Err(_) if stdout_closed() => ExitCode::from(EXIT_CLOSED_PIPE),
        Err(e) => {
            // Under `--log-format json` every line a collector reads is JSON, this one too.
            match cli.log_format {
                LogFormat::Json => tracing::error!("{e:#}"),
                LogFormat::Human => {
                    let _ = Prefixed(Journald::prefix(&tracing::Level::ERROR))
                        .write_all(format!("error: {e:#}\n").as_bytes());
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr. Commands log warnings; the daemon, whose log is the record of what
/// it did, logs at info with timestamps.
fn init_logging(verbose: u8, format: LogFormat, daemon: bool) {
    let level = match (verbose, crate::env::var("COFFER_LOG").ok().as_deref()) {
        (_, Some("debug")) | (2.., _) => tracing::Level::DEBUG,
        (_, Some("info")) | (1, _) => tracing::Level::INFO,
        _ if daemon => tracing::Level::INFO,
        _ => tracing::Level::WARN,
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_writer(Journald)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    match (format, daemon) {
        (LogFormat::Json, _) => builder.json().flatten_event(true).init(),
        (LogFormat::Human, true) => builder.init(),
        (LogFormat::Human, false) => builder.without_time().init(),
    }
}

/// Standard error, each line prefixed with its syslog priority (`<3>` error, `<4>`
/// warning, `<6>` info, `<7>` debug) when it goes to journald (systemd sets
/// `JOURNAL_STREAM` then), so that `journalctl -p err` finds coffer's errors.
struct Journald;

impl Journald {
    fn prefix(level: &tracing::Level) -> &'static str {
        // Looked up once: every log line asks.
        static TO_JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if !*TO_JOURNAL.get_or_init(|| crate::env::var_os("JOURNAL_STREAM").is_some()) {
            return "";
        }
        match *level {
            tracing::Level::ERROR => "<3>",
            tracing::Level::WARN => "<4>",
            tracing::Level::INFO => "<6>",
            _ => "<7>",
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Journald {
    type Writer = Prefixed;

    fn make_writer(&'a self) -> Prefixed {
        Prefixed("")
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Prefixed {
        Prefixed(Journald::prefix(meta.level()))
    }
}

/// One event, written in one piece with its prefix on every line (journald takes each
/// line as an entry of its own).
struct Prefixed(&'static str);

impl std::io::Write for Prefixed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = Vec::with_capacity(buf.len() + 8);
        for line in buf.split_inclusive(|b| *b == b'\n') {
            out.extend_from_slice(self.0.as_bytes());
            out.extend_from_slice(line);
        }
        std::io::stderr().lock().write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Points standard output at /dev/null (`--quiet`), so that no summary line is written.
fn silence_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = std::io::stdout().flush();
        // SAFETY: dup2 onto fd 1 with a descriptor this function owns; Rust's stdout
        // handle writes to fd 1 whatever file it is.
        unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1) };
    }
}
