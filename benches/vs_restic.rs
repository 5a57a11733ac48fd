//! coffer against restic and against plain copies, on the same data, in one run: backup,
//! a backup with no change, one after 1 % of the files changed, and restore, of a
//! generated tree, of a real one (a copy of the Rust toolchain, `rustc --print sysroot`),
//! and of many small files (`small`: a million by default, as a mail spool or a
//! `node_modules` holds them). Prints, per dataset, the median and the
//! best of alternated rounds for wall time, CPU time and peak RSS, and the ratios. Nothing
//! here is a pass/fail test.
//!
//!   cargo bench --bench vs_restic
//!   COFFER_BENCH_DATA=toolchain COFFER_BENCH_ROUNDS=5 cargo bench --bench vs_restic
//!   COFFER_BENCH_DATA=generated COFFER_BENCH_MIB=3000 cargo bench --bench vs_restic
//!   COFFER_BENCH_BASELINE=/tmp/coffer-before cargo bench --bench vs_restic
//!   COFFER_BENCH_DATA=small COFFER_BENCH_ROUNDS=1 cargo bench --bench vs_restic
//!   COFFER_BENCH_DATA=small COFFER_BENCH_FILES=100000 cargo bench --bench vs_restic
//!   COFFER_BENCH_DATA=none cargo bench --bench vs_restic    # only the checksum costs
//!
//! With `COFFER_BENCH_BASELINE` (another coffer binary, say the last release's), each
//! round also runs its backup, no-change backup and restore, and the ratios compare the
//! two: before and after a change, measured in the same run on the same noisy machine.
//!
//! Baselines: `restic` (Debian's package, a local repository), `tar -cf - | zstd -3 -T2`
//! for backup (if `zstd` is installed), a bare stat walk (`find -printf`) for a backup with
//! no change, and `tar -cf - . | tar -xf -` plus `sync` for restore (coffer's restore ends
//! with syncfs, so restic's and the copy's are timed with a `sync`).
//!
//! Fairness: every measured command starts with dirty pages written, the page cache
//! dropped (when run as root) and its own input read once, so each reads a warm source
//! and writes to a cold destination. Restored trees are deleted only when a dataset is
//! done: on ext4 without a journal, creating files is several times slower for a minute
//! or more after many were deleted (`recently_deleted` in the inode allocator). So the
//! run needs about 3 × rounds × the dataset's size of free disk.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

// The integration tests' helpers: the same data generator and config writer.
#[path = "../tests/common/mod.rs"]
mod common;

use common::{BIN as COFFER, Rng, config_text};

/// One measured command: wall seconds, CPU seconds (user + system), peak RSS in MiB.
#[derive(Clone, Copy, Debug)]
struct Run {
    wall: f64,
    cpu: f64,
    rss_mib: f64,
}

/// Runs `cmd` after reading `inputs` into a freshly dropped page cache.
#[allow(clippy::zombie_processes)] // reaped by wait4, for its resource usage
fn measure(cmd: &mut Command, inputs: &[&Path]) -> Run {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3\n");
    for i in inputs {
        warm(i);
    }
    let t0 = Instant::now();
    // Reaped with wait4 below (for its resource usage), not with Child::wait.
    let child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut status = 0;
    // SAFETY: wait4 on our own child, writing into locals.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4 failed");
    let wall = t0.elapsed().as_secs_f64();
    let errors = errors.join().unwrap_or_default();
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{cmd:?} failed: {errors}");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Run { wall, cpu: tv(usage.ru_utime) + tv(usage.ru_stime), rss_mib: usage.ru_maxrss as f64 / 1024.0 }
}

/// Reads every file under `path` once (into the page cache).
fn warm(path: &Path) {
    let Ok(m) = std::fs::symlink_metadata(path) else { return };
    if m.is_dir() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            warm(&e.path());
        }
    } else if m.is_file()
        && let Ok(mut f) = std::fs::File::open(path)
    {
        let _ = std::io::copy(&mut f, &mut std::io::sink());
    }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn median(v: Vec<f64>) -> f64 {
    let v = sorted(v);
    v[v.len() / 2]
}

/// A tree like a real home or project directory: many small files, some medium, a few
/// large; half of the bytes random (media, archives), half text-like.
fn generate(root: &Path, total_mib: u64) {
    let mut rng = Rng(0x2545F4914F6CDD1D);
    let text: Vec<u8> =
        (0..1 << 20).map(|i| b"fn main() { println!(\"coffer\"); } // a line of source text\n"[i % 58]).collect();
    let (mut bytes, mut files) = (0u64, 0u64);
    let budget = total_mib << 20;
    // Written 1 MiB at a time: the peak RSS of every child includes this process's own
    // high-water mark (spawned children start as a copy of it), so keep it small.
    let mut buf = vec![0u8; 1 << 20];
    while bytes < budget {
        let r = rng.next() % 1000;
        let len = match r {
            0..=899 => rng.next() % (32 << 10),        // 90 % small
            900..=994 => rng.next() % (4 << 20),       // medium
            _ => (16 << 20) + rng.next() % (48 << 20), // large
        } as usize;
        let len = len.min((budget - bytes) as usize).max(1);
        let random = rng.next().is_multiple_of(2);
        let dir = root.join(format!("d{:03}/s{:02}", files / 1000, files % 37));
        std::fs::create_dir_all(&dir).unwrap();
        let mut out = std::fs::File::create(dir.join(format!("f{files:06}"))).unwrap();
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            for (i, c) in buf[..n].chunks_mut(8).enumerate() {
                if random {
                    let v = rng.next().to_le_bytes();
                    c.copy_from_slice(&v[..c.len()]);
                } else {
                    let off = (i * 8 + left) % (text.len() - 8);
                    c.copy_from_slice(&text[off..off + c.len()]);
                }
            }
            std::io::Write::write_all(&mut out, &buf[..n]).unwrap();
            left -= n;
        }
        bytes += len as u64;
        files += 1;
    }
}

/// `files` small text files (64 B to 4 KiB, 1000 to a directory), seeded: a mail spool,
/// a `node_modules`, a source checkout.
fn generate_small(root: &Path, files: u64) {
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let words: Vec<String> = (0..5000).map(|i| format!("w{i}")).collect();
    let mut text = Vec::with_capacity(4200);
    for i in 0..files {
        let dir = root.join(format!("d{:04}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let len = 64 + rng.below(4096 - 64 + 1) as usize;
        text.clear();
        while text.len() < len {
            text.extend_from_slice(words[rng.below(words.len() as u64) as usize].as_bytes());
            text.push(b' ');
        }
        std::fs::write(dir.join(format!("f{i:07}.txt")), &text[..len]).unwrap();
    }
}

/// Changes 1 % of the regular files under `root` (a line appended to each), picked by
/// `seed`, as a day of mail or edits would: what the next backup must find and store.
fn change_one_percent(root: &Path, seed: u64) -> u64 {
    use std::io::Write;
    let mut rng = Rng(seed | 1);
    let mut changed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let m = p.symlink_metadata().unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && rng.below(100) == 0 {
                let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
                writeln!(f, "changed {}", rng.next()).unwrap();
                changed += 1;
            }
        }
    }
    changed
}

/// Bytes and files of a tree.
fn size_of(root: &Path) -> (u64, u64) {
    if let Ok(m) = root.metadata()
        && m.is_file()
    {
        return (m.len(), 1);
    }
    let (mut bytes, mut files) = (0, 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.path().symlink_metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                bytes += m.len();
                files += 1;
            }
        }
    }
    (bytes, files)
}

/// What is measured, per dataset: each tool's runs.
#[derive(Default)]
struct Results {
    rows: Vec<(&'static str, Vec<Run>)>,
    /// What each tool stored after its first backup, in bytes (the same every round).
    stored: Vec<(&'static str, u64)>,
}

impl Results {
    fn add(&mut self, name: &'static str, run: Run) {
        match self.rows.iter_mut().find(|(n, _)| *n == name) {
            Some((_, runs)) => runs.push(run),
            None => self.rows.push((name, vec![run])),
        }
    }

    fn stored(&mut self, name: &'static str, path: &Path) {
        if !self.stored.iter().any(|(n, _)| *n == name) {
            self.stored.push((name, size_of(path).0));
        }
    }

    fn runs(&self, name: &str) -> Option<&[Run]> {
        self.rows.iter().find(|(n, _)| *n == name).map(|(_, r)| r.as_slice())
    }
}

fn coffer(bin: &str, cfg: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.arg("--config").arg(cfg).args(args);
    c
}

fn restic(work: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("restic");
    c.env("RESTIC_PASSWORD", "bench").env("RESTIC_CACHE_DIR", work.join("cache")).arg("-r").arg(work.join("repo"));
    c.args(args);
    c
}

/// `sh -c SCRIPT` with `args` as $1…
fn sh(script: &str, args: &[&Path]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).arg("sh").args(args);
    c
}

/// One round on `data`: every tool backs up, backs up again with no change, restores.
fn round(r: &mut Results, data: &Path, work: &Path, round: usize, zstd: bool) {
    let (cfg, id) = coffer_setup(COFFER, data, &work.join("coffer"));
    // restic
    let rw = work.join("restic");
    let _ = std::fs::remove_dir_all(&rw);
    std::fs::create_dir_all(&rw).unwrap();
    assert!(restic(&rw, &["init"]).output().unwrap().status.success());

    r.add("coffer backup", measure(&mut coffer(COFFER, &cfg, &["backup", "bench", "--no-progress"]), &[data]));
    r.add("restic backup", measure(restic(&rw, &["backup", "--quiet"]).arg(data), &[data]));
    r.stored("coffer", &work.join("coffer/repo"));
    r.stored("restic", &rw.join("repo"));
    if zstd {
        let out = work.join("tar.zst");
        r.add(
            "tar | zstd -3 -T2",
            measure(&mut sh("tar -C \"$1\" -cf - . | zstd -3 -T2 -q -o \"$2\" -f", &[data, &out]), &[data]),
        );
        r.stored("tar | zstd -3", &out);
        let _ = std::fs::remove_file(out);
    }
    r.add("coffer no-change", measure(&mut coffer(COFFER, &cfg, &["backup", "bench", "--no-progress"]), &[data]));
    r.add("restic no-change", measure(restic(&rw, &["backup", "--quiet"]).arg(data), &[data]));
    // Warmed like coffer's no-change run: both stat every entry from a warm inode cache.
    r.add("stat walk (find)", measure(&mut sh("find \"$1\" -printf '%s %T@\\n' >/dev/null", &[data]), &[data]));
    let changed = change_one_percent(data, 0xC0FFEE + round as u64);
    eprintln!("round {round}: changed {changed} files");
    r.add("coffer 1% changed", measure(&mut coffer(COFFER, &cfg, &["backup", "bench", "--no-progress"]), &[data]));
    r.add("restic 1% changed", measure(restic(&rw, &["backup", "--quiet"]).arg(data), &[data]));

    let to = |tool: &str| work.join(format!("out-{tool}-{round}"));
    let (c_to, r_to, t_to) = (to("coffer"), to("restic"), to("tar"));
    r.add("coffer restore", measure(&mut coffer_restore(COFFER, &cfg, &id, &c_to), &[&work.join("coffer")]));
    // restic does not sync; timed with a `sync`, as coffer's restore ends with syncfs.
    let restic_restore = "RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=\"$1/cache\" restic -r \"$1/repo\" restore latest \
                          --target \"$2\" -q && sync";
    r.add("restic restore + sync", measure(&mut sh(restic_restore, &[&rw, &r_to]), &[&rw]));
    std::fs::create_dir_all(&t_to).unwrap();
    r.add(
        "tar | tar x + sync",
        measure(&mut sh("tar -C \"$1\" -cf - . | tar -C \"$2\" -xf - && sync", &[data, &t_to]), &[data]),
    );
    if let Some(bin) = std::env::var("COFFER_BENCH_BASELINE").ok().filter(|b| !b.is_empty()) {
        let bw = work.join("baseline");
        let (cfg, id) = coffer_setup(&bin, data, &bw);
        r.add("baseline backup", measure(&mut coffer(&bin, &cfg, &["backup", "bench", "--no-progress"]), &[data]));
        r.stored("baseline", &bw.join("repo"));
        r.add("baseline no-change", measure(&mut coffer(&bin, &cfg, &["backup", "bench", "--no-progress"]), &[data]));
        change_one_percent(data, 0xBA5E + round as u64);
        r.add("baseline 1% changed", measure(&mut coffer(&bin, &cfg, &["backup", "bench", "--no-progress"]), &[data]));
        r.add("baseline restore", measure(&mut coffer_restore(&bin, &cfg, &id, &to("baseline")), &[&bw]));
    }
}

/// A fresh coffer repository in `work` backing up `data` as job `bench`, made with
/// `bin`: its config and identity.
fn coffer_setup(bin: &str, data: &Path, work: &Path) -> (PathBuf, PathBuf) {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).unwrap();
    let id = work.join("id.txt");
    let out = Command::new(bin).args(["keygen", "-o"]).arg(&id).output().unwrap();
    let recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let cfg = work.join("coffer.toml");
    let job = format!("[[job]]\nname = \"bench\"\nsource = {{ path = \"{}\" }}\n", data.display());
    std::fs::write(&cfg, config_text(&recipient, &format!("file://{}/repo", work.display()), &job)).unwrap();
    assert!(coffer(bin, &cfg, &["init"]).output().unwrap().status.success(), "{bin} init failed");
    (cfg, id)
}

fn coffer_restore(bin: &str, cfg: &Path, id: &Path, to: &Path) -> Command {
    let mut c = coffer(bin, cfg, &["restore", "latest", "--job", "bench", "--no-progress", "--identity"]);
    c.arg(id).arg("--to").arg(to);
    c
}

fn report(name: &str, r: &Results, bytes: u64, files: u64) {
    let mb = bytes as f64 / 1e6;
    println!("\n== {name}: {files} files, {mb:.0} MB; {} rounds, alternated", r.rows[0].1.len());
    println!(
        "{:<22} {:>9} {:>9} {:>10} {:>8} {:>10} {:>9}",
        "", "median s", "best s", "MB/s", "cpu-s", "MB/cpu-s", "RSS MiB"
    );
    for (row, runs) in &r.rows {
        let wall = median(runs.iter().map(|r| r.wall).collect());
        let best = sorted(runs.iter().map(|r| r.wall).collect())[0];
        let cpu = median(runs.iter().map(|r| r.cpu).collect());
        let rss = median(runs.iter().map(|r| r.rss_mib).collect());
        println!(
            "{row:<22} {wall:>9.2} {best:>9.2} {:>10.1} {cpu:>8.2} {:>10.1} {rss:>9.1}",
            mb / wall,
            mb / cpu.max(1e-9)
        );
    }
    for (tool, bytes) in &r.stored {
        println!("stored by {tool:<16} {:>9.1} MB  ({:.3} of the data)", *bytes as f64 / 1e6, *bytes as f64 / mb / 1e6);
    }
    let stat = |row: &str, f: fn(&Run) -> f64| -> Option<(f64, f64)> {
        let v: Vec<f64> = r.runs(row)?.iter().map(f).collect();
        Some((median(v.clone()), sorted(v)[0]))
    };
    let ratio = |label: &str, num: &str, den: &str, f: fn(&Run) -> f64| {
        if let (Some(n), Some(d)) = (stat(num, f), stat(den, f)) {
            println!("{label:<44} median {:>5.2}x   best {:>5.2}x", n.0 / d.0, n.1 / d.1);
        }
    };
    let wall = |r: &Run| r.wall;
    let cpu = |r: &Run| r.cpu;
    let rss = |r: &Run| r.rss_mib;
    println!();
    ratio("backup speed       coffer vs restic", "restic backup", "coffer backup", wall);
    ratio("backup MB per CPU-s coffer vs restic", "restic backup", "coffer backup", cpu);
    ratio("backup speed       coffer vs tar|zstd", "tar | zstd -3 -T2", "coffer backup", wall);
    ratio("no-change time     coffer / stat walk", "coffer no-change", "stat walk (find)", wall);
    ratio("no-change speed    coffer vs restic", "restic no-change", "coffer no-change", wall);
    ratio("1 %-changed time   coffer / stat walk", "coffer 1% changed", "stat walk (find)", wall);
    ratio("1 %-changed speed  coffer vs restic", "restic 1% changed", "coffer 1% changed", wall);
    ratio("restore speed      coffer vs restic", "restic restore + sync", "coffer restore", wall);
    ratio("restore speed      coffer vs tar copy", "tar | tar x + sync", "coffer restore", wall);
    ratio("restore peak RSS   coffer / restic", "coffer restore", "restic restore + sync", rss);
    ratio("backup peak RSS    coffer / restic", "coffer backup", "restic backup", rss);
    ratio("backup speed       coffer vs baseline", "baseline backup", "coffer backup", wall);
    ratio("backup MB per CPU-s coffer vs baseline", "baseline backup", "coffer backup", cpu);
    ratio("no-change speed    coffer vs baseline", "baseline no-change", "coffer no-change", wall);
    ratio("restore speed      coffer vs baseline", "baseline restore", "coffer restore", wall);
    ratio("backup peak RSS    coffer / baseline", "coffer backup", "baseline backup", rss);
}

/// What a locked PUT to S3 adds in CPU: the SHA-256 (`x-amz-checksum-sha256`, and the
/// signed payload) and the MD5 (`Content-MD5`) of one full pack, medians of 15.
fn checksum_cost() {
    use sha2::Digest;
    let pack: Vec<u8> = Rng(7).mixed(16 << 20);
    let time = |f: &dyn Fn() -> usize| {
        let v: Vec<f64> = (0..15)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        median(v)
    };
    let sha = time(&|| sha2::Sha256::digest(&pack).len());
    let md5 = time(&|| <md5::Md5 as md5::Digest>::digest(&pack).len());
    println!("checksums of one 16 MiB pack (a locked S3 PUT): SHA-256 {sha:.1} ms, MD5 {md5:.1} ms (medians of 15)");
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let mib: u64 = std::env::var("COFFER_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let files_wanted: u64 = std::env::var("COFFER_BENCH_FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rounds: usize = std::env::var("COFFER_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let which = std::env::var("COFFER_BENCH_DATA").unwrap_or_else(|_| "toolchain,generated".into());
    if Command::new("restic").arg("version").output().is_err() {
        eprintln!("restic is not installed (apt-get install restic); nothing to compare against");
        std::process::exit(1);
    }
    let zstd = Command::new("zstd").arg("--version").output().is_ok();
    if std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_err() {
        println!("note: cannot drop the page cache (not root): runs read whatever is cached");
    }
    checksum_cost();
    let base = std::env::var_os("COFFER_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("coffer-bench"));
    let _ = std::fs::remove_dir_all(&base);
    for name in which.split(',').filter(|n| *n != "none") {
        let data = base.join(name).join("data");
        let t0 = Instant::now();
        match name {
            "generated" => generate(&data, mib),
            "small" => generate_small(&data, files_wanted),
            "toolchain" => {
                let sysroot = Command::new("rustc").args(["--print", "sysroot"]).output().unwrap();
                let sysroot = String::from_utf8(sysroot.stdout).unwrap().trim().to_string();
                std::fs::create_dir_all(data.parent().unwrap()).unwrap();
                let ok = Command::new("cp").arg("-a").arg(&sysroot).arg(&data).status().unwrap().success();
                assert!(ok, "cannot copy {sysroot}");
            }
            other => panic!("COFFER_BENCH_DATA: unknown dataset `{other}` (toolchain, generated, small)"),
        }
        let (bytes, files) = size_of(&data);
        eprintln!("{name}: {files} files, {} MB, made in {:.1}s", bytes / 1_000_000, t0.elapsed().as_secs_f64());
        let mut results = Results::default();
        for i in 0..rounds {
            round(&mut results, &data, &base.join(name), i, zstd);
            eprintln!("{name}: round {} of {rounds} done", i + 1);
        }
        report(name, &results, bytes, files);
        if std::env::var_os("COFFER_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(base.join(name));
        }
    }
}
