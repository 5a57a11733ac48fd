//! coffer: immutable off-site backups. See README.md and design.md for the picture;
//! `cli` is the command line, everything else is one concept per module.

mod backup;
mod catalog;
mod chunker;
mod cli;
mod config;
mod format;
mod fsutil;
mod hex;
mod init;
mod keys;
mod progress;
mod restore;
mod source;
mod target;
mod time;

pub use format::ChunkId;

fn main() -> std::process::ExitCode {
    cli::main()
}
