//! One process-wide async runtime behind a blocking facade: coffer's engine is threads
//! that read files and call stores; the few calls that are async (every store call, the
//! HTTP endpoint) run here. Nothing else builds a runtime or calls `block_on`.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;

/// Two workers: the machines coffer is built for have few cores, and its I/O is a
/// handful of requests at a time.
const WORKERS: usize = 2;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("coffer-io")
            .enable_all()
            .build()
            .unwrap_or_else(|e| {
                eprintln!("coffer: cannot start its I/O threads: {e}");
                std::process::exit(1)
            })
    })
}

/// Runs `future` to completion on the shared runtime, from a thread that is not one of
/// its workers (the main thread, a job's thread, a blocking task).
pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}
