//! coffer: immutable off-site backups. See README.md and design.md for the picture;
//! `cli` is the command line, everything else is one concept per module.
//!
//! The binary (`src/main.rs`) is a thin wrapper around [`cli::main`]; the library exists
//! so that integration tests can drive the engine and the formats in-process (the
//! restore tests forge snapshots with the repository secret, as an attacker holding the
//! backup host could).

pub mod audit;
pub mod backup;
pub mod bounded;
pub mod browse;
pub mod buffers;
pub mod catalog;
pub mod chunk_id;
pub mod chunker;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod env;
pub mod escape;
pub mod format;
pub mod fsutil;
pub mod hex;
pub mod hooks;
pub mod http;
pub mod init;
pub mod inventory;
pub mod keyring;
pub mod keys;
pub mod metrics;
pub mod mount;
pub mod observer;
pub mod pin;
pub mod preflight;
pub mod process;
pub mod progress;
pub mod prune;
pub mod recover;
pub mod replicate;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod retry;
pub mod run_outcome;
pub mod runtime;
pub mod s3;
pub mod schedule;
pub mod scrub;
pub mod source;
pub mod spill;
pub mod state_dir;
pub mod status;
pub mod store;
pub mod task;
pub mod time;
pub mod tripwire;
pub mod verify;
pub mod xattr;

/// Unit tests run on an allocator that notes the largest request (the decoders' bound).
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: format::robustness::Tracking = format::robustness::Tracking;
