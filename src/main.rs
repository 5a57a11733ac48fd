//! coffer: immutable off-site backups. See README.md and design.md for the picture;
//! `cli` is the command line, everything else is one concept per module.

mod backup;
mod catalog;
mod chunker;
mod cli;
mod config;
mod daemon;
mod format;
mod fsutil;
mod hex;
mod hooks;
mod http;
mod init;
mod inventory;
mod keys;
mod metrics;
mod objectlock;
mod process;
mod progress;
mod prune;
mod recover;
mod restore;
mod retention;
mod retry;
mod schedule;
mod source;
mod status;
mod target;
mod time;
mod verify;

pub use format::ChunkId;

/// Unit tests run on an allocator that notes the largest request (the decoders' bound).
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: format::robustness::Tracking = format::robustness::Tracking;

fn main() -> std::process::ExitCode {
    // Packs (~16 MiB) and large chunks are allocated and freed all the time by several
    // threads. glibc raises its mmap threshold after such frees and then keeps the memory
    // in its heaps; a fixed threshold returns it to the system and keeps the RSS flat.
    // SAFETY: called before any other thread exists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 12 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
    cli::main()
}
