//! Backup and restore throughput, CPU and peak memory of coffer against restic on the
//! same generated tree, both to a local repository, in one run. Prints medians and the
//! coffer/restic ratios; nothing here is a pass/fail test.
//!
//!   cargo bench --bench vs_restic
//!   COFFER_BENCH_MIB=3000 COFFER_BENCH_ROUNDS=5 cargo bench --bench vs_restic
//!
//! Needs `restic` on PATH (Debian: `apt-get install restic`). If `zstd` is installed, a
//! `tar | zstd -3 -T2` baseline is measured too.

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

fn measure(cmd: &mut Command) -> Run {
    // Flush what earlier steps left dirty, so that no run pays for another's writes.
    let _ = Command::new("sync").status();
    let t0 = Instant::now();
    // Reaped with wait4 below (for its resource usage), not with Child::wait.
    let child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    std::mem::forget(child);
    let mut status = 0;
    // SAFETY: wait4 on our own child, writing into locals.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4 failed");
    let wall = t0.elapsed().as_secs_f64();
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{cmd:?} failed");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Run { wall, cpu: tv(usage.ru_utime) + tv(usage.ru_stime), rss_mib: usage.ru_maxrss as f64 / 1024.0 }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A tree like a real home or project directory: many small files, some medium, a few
/// large; half of the bytes random (media, archives), half text-like.
fn generate(root: &Path, total_mib: u64) -> (u64, u64) {
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
    (bytes, files)
}

struct Results {
    backup: Vec<Run>,
    noop: Vec<Run>,
    restore: Vec<Run>,
}

fn coffer_round(work: &Path, data: &Path) -> (Run, Run, Run) {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).unwrap();
    let id = work.join("id.txt");
    let out = Command::new(COFFER).args(["keygen", "-o"]).arg(&id).output().unwrap();
    let recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let cfg = work.join("coffer.toml");
    let job = format!("[[job]]\nname = \"bench\"\nsource = {{ path = \"{}\" }}\n", data.display());
    std::fs::write(&cfg, config_text(&recipient, &format!("file://{}/repo", work.display()), &job)).unwrap();
    let c = |args: &[&str]| {
        let mut c = Command::new(COFFER);
        c.arg("--config").arg(&cfg).args(args);
        c
    };
    measure(&mut c(&["init"]));
    let backup = measure(&mut c(&["backup", "bench", "--no-progress"]));
    let noop = measure(&mut c(&["backup", "bench", "--no-progress"]));
    let to = work.join("restored");
    let restore = measure(c(&["restore", "latest", "--job", "bench", "--identity"]).arg(&id).arg("--to").arg(&to));
    let _ = std::fs::remove_dir_all(&to);
    (backup, noop, restore)
}

fn restic_round(work: &Path, data: &Path) -> (Run, Run, Run) {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).unwrap();
    let c = |args: &[&str]| {
        let mut c = Command::new("restic");
        c.env("RESTIC_PASSWORD", "bench").env("RESTIC_CACHE_DIR", work.join("cache")).arg("-r").arg(work.join("repo"));
        c.args(args);
        c
    };
    measure(&mut c(&["init"]));
    let backup = measure(c(&["backup", "--quiet"]).arg(data));
    let noop = measure(c(&["backup", "--quiet"]).arg(data));
    // coffer makes a restore durable (syncfs) before it reports success; restic does not,
    // so its restore is timed together with a `sync` to compare the same work.
    let to = work.join("restored");
    let restic = c(&["restore", "latest", "--target"]);
    let args: Vec<String> = restic.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    let restore = measure(
        Command::new("sh")
            .arg("-c")
            .arg("restic \"$@\" && sync")
            .arg("restic")
            .args(&args)
            .arg(&to)
            .env("RESTIC_PASSWORD", "bench")
            .env("RESTIC_CACHE_DIR", work.join("cache")),
    );
    let _ = std::fs::remove_dir_all(&to);
    (backup, noop, restore)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let mib: u64 = std::env::var("COFFER_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let rounds: usize = std::env::var("COFFER_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    if Command::new("restic").arg("version").output().is_err() {
        eprintln!("restic is not installed (apt-get install restic); nothing to compare against");
        std::process::exit(1);
    }
    let base = std::env::var_os("COFFER_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("coffer-bench"));
    let data = base.join("data");
    let _ = std::fs::remove_dir_all(&base);
    let t0 = Instant::now();
    let (bytes, files) = generate(&data, mib);
    let mb = bytes as f64 / 1e6;
    println!(
        "data: {files} files, {:.0} MB, generated in {:.1}s; {rounds} rounds, medians",
        mb,
        t0.elapsed().as_secs_f64()
    );

    let mut coffer = Results { backup: vec![], noop: vec![], restore: vec![] };
    let mut restic = Results { backup: vec![], noop: vec![], restore: vec![] };
    let mut tar = Vec::new();
    for _ in 0..rounds {
        // Alternate the tools so that machine noise hits both alike.
        let (b, n, r) = coffer_round(&base.join("coffer"), &data);
        coffer.backup.push(b);
        coffer.noop.push(n);
        coffer.restore.push(r);
        let (b, n, r) = restic_round(&base.join("restic"), &data);
        restic.backup.push(b);
        restic.noop.push(n);
        restic.restore.push(r);
        if Command::new("zstd").arg("--version").output().is_ok() {
            let out = base.join("tar.zst");
            tar.push(measure(Command::new("sh").arg("-c").arg(format!(
                "tar -C {} -cf - . | zstd -3 -T2 -q -o {} -f",
                data.display(),
                out.display()
            ))));
            let _ = std::fs::remove_file(out);
        }
    }
    if std::env::var_os("COFFER_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&base);
    }

    let row = |name: &str, runs: &[Run]| {
        let wall = median(runs.iter().map(|r| r.wall).collect());
        let cpu = median(runs.iter().map(|r| r.cpu).collect());
        let rss = median(runs.iter().map(|r| r.rss_mib).collect());
        println!(
            "{name:<22} {:>8.2} s {:>9.1} MB/s {:>8.2} cpu-s {:>9.1} MB/cpu-s {:>8.1} MiB peak RSS",
            wall,
            mb / wall,
            cpu,
            mb / cpu.max(1e-9),
            rss
        );
        (wall, cpu, rss)
    };
    println!();
    let cb = row("coffer backup", &coffer.backup);
    let rb = row("restic backup", &restic.backup);
    let cn = row("coffer no-change", &coffer.noop);
    let rn = row("restic no-change", &restic.noop);
    let cr = row("coffer restore", &coffer.restore);
    let rr = row("restic restore + sync", &restic.restore);
    let tz = (!tar.is_empty()).then(|| row("tar | zstd -3 -T2", &tar));
    println!();
    println!("backup throughput   coffer/restic = {:.2}x", rb.0 / cb.0);
    println!("backup MB per CPU-s coffer/restic = {:.2}x", rb.1 / cb.1);
    println!("backup peak RSS     coffer/restic = {:.2}x", cb.2 / rb.2);
    println!("no-change time      coffer/restic = {:.2}x", cn.0 / rn.0);
    println!("restore throughput  coffer/restic = {:.2}x", rr.0 / cr.0);
    println!("restore peak RSS    coffer/restic = {:.2}x", cr.2 / rr.2);
    if let Some(t) = tz {
        println!("backup throughput   coffer/(tar|zstd) = {:.2}", t.0 / cb.0);
    }
}
