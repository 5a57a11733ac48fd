//! The `coffer` command: see the library's `cli` module.

fn main() -> std::process::ExitCode {
    // Run by git as its GIT_ASKPASS: answer and stop.
    if let Some(code) = coffer::source::git::askpass() {
        return code;
    }
    // Packs (~16 MiB) and large chunks are allocated and freed all the time by several
    // threads. glibc raises its mmap threshold after such frees and then keeps the memory
    // in its heaps; a fixed threshold returns it to the system and keeps the RSS flat.
    // SAFETY: called before any other thread exists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 12 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
    coffer::cli::main()
}
