//! Counters shared by the stages of a run, and the progress line drawn from them on a
//! terminal. The counters are plain atomics so that no stage ever waits for the display.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Counters {
    pub files: AtomicU64,
    pub unchanged: AtomicU64,
    pub bytes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_new: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub packs: AtomicU64,
    pub current: Mutex<String>,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    /// The path being worked on, escaped (a name may hold a terminal's control codes).
    pub fn set_current(&self, path: &[u8]) {
        if let Ok(mut c) = self.current.try_lock() {
            c.clear();
            crate::escape::printable_into(&mut c, path);
        }
    }
}

/// Draws a one-line progress display on stderr while alive, if stderr is a terminal.
pub struct ProgressLine {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Whether a progress line asked for (`enabled`) is drawn: on a terminal, unless `--quiet`.
pub fn draws(enabled: bool) -> bool {
    enabled && !QUIET.load(Relaxed) && std::io::stderr().is_terminal()
}

impl ProgressLine {
    /// Starts drawing `render(counters, seconds since start)` four times a second.
    pub fn start(
        counters: Arc<Counters>,
        enabled: bool,
        render: impl Fn(&Counters, f64) -> String + Send + 'static,
    ) -> ProgressLine {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = draws(enabled).then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                while !stop.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(250));
                    let line = render(&counters, t0.elapsed().as_secs_f64().max(0.001));
                    let mut cur = counters.current.lock().map(|s| s.clone()).unwrap_or_default();
                    if cur.chars().count() > 40 {
                        let tail: Vec<char> = cur.chars().rev().take(39).collect();
                        cur = format!("…{}", tail.into_iter().rev().collect::<String>());
                    }
                    eprint!("\r\x1b[K{line}  {cur}");
                    let _ = std::io::stderr().flush();
                }
                eprint!("\r\x1b[K");
            })
        });
        ProgressLine { stop, thread }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The backup's line: files, bytes read and their rate, new, uploaded, packs; with the
/// size of the job's previous snapshot (`expected`), how far along it likely is and the
/// time left (an estimate: the source may have grown or shrunk since).
pub fn backup_line(expected: Option<u64>) -> impl Fn(&Counters, f64) -> String + Send + 'static {
    move |c, secs| {
        // Files are counted when done; a stream (a command's output) only when it ends,
        // so its bytes read stand in until then.
        let done = Counters::get(&c.bytes).max(Counters::get(&c.bytes_read));
        let estimate = match expected.filter(|&e| e > 0) {
            Some(total) => format!(
                " ~{:.0}% of {}{},",
                (done as f64 * 100.0 / total as f64).min(99.0),
                bytes(total),
                left(done, total, secs)
            ),
            None => String::new(),
        };
        format!(
            "{} files,{estimate} read {}, new {}, uploaded {} in {} packs",
            Counters::get(&c.files),
            with_rate(Counters::get(&c.bytes_read), secs),
            bytes(Counters::get(&c.bytes_new)),
            bytes(Counters::get(&c.bytes_uploaded)),
            Counters::get(&c.packs)
        )
    }
}

/// `, 12s left` at the rate so far (nothing before the first byte).
fn left(done: u64, total: u64, secs: f64) -> String {
    match done {
        0 => String::new(),
        _ => format!(", {}s left", ((total.saturating_sub(done)) as f64 * secs / done as f64).round()),
    }
}

/// Set by `--quiet`: no progress line is drawn.
static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet`: no progress line from now on.
pub fn silence() {
    QUIET.store(true, Relaxed);
}

/// The restore's line: files and bytes written of the totals, the rate, and the time left.
pub fn restore_line(files: u64, total: u64) -> impl Fn(&Counters, f64) -> String + Send + 'static {
    move |c, secs| {
        let done = Counters::get(&c.bytes);
        format!(
            "restored {} of {files} files, {} of {} ({:.0}%){}",
            Counters::get(&c.files),
            with_rate(done, secs),
            bytes(total),
            done as f64 * 100.0 / total.max(1) as f64,
            left(done, total, secs)
        )
    }
}

/// The line of a command that reads packs (recover, verify): packs done of `total`,
/// bytes read and the rate.
pub fn packs_line(total: usize) -> impl Fn(&Counters, f64) -> String + Send + 'static {
    move |c, secs| {
        format!("{} of {total} packs, read {}", Counters::get(&c.packs), with_rate(Counters::get(&c.bytes_read), secs))
    }
}

/// `1.5 GiB (12.0 MiB/s)`
fn with_rate(n: u64, secs: f64) -> String {
    format!("{} ({}/s)", bytes(n), bytes((n as f64 / secs) as u64))
}

/// `1.5 GiB`
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backup_line_estimates_from_the_previous_snapshot() {
        let c = super::Counters::default();
        super::Counters::add(&c.bytes, 25 << 20);
        assert!(super::backup_line(Some(100 << 20))(&c, 5.0).contains("~25% of 100.0 MiB, 15s left"));
        assert!(!super::backup_line(None)(&c, 5.0).contains('%'));
    }

    #[test]
    fn human_bytes() {
        assert_eq!(super::bytes(5), "5 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(3 << 30), "3.0 GiB");
    }
}
