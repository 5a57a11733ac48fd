//! The `coffer` command: see the library's `cli` module.

fn main() -> std::process::ExitCode {
    // Run by git as its GIT_ASKPASS: answer and stop.
    if let Some(code) = coffer::source::git::askpass() {
        return code;
    }
    // Packs (~16 MiB) and chunks (~1 MiB) are allocated and freed all the time by
    // several threads. glibc raises its mmap threshold after such frees and then keeps
    // the memory in its per-thread heaps, fragmented; a fixed threshold of a chunk hands
    // it back to the system. Measured on a 1 GiB backup: peak RSS 106-111 MiB against
    // 138-174 MiB with a 12 MiB threshold, for a little more system time.
    // SAFETY: called before any other thread exists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
    coffer::cli::main()
}
