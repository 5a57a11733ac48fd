//! `coffer stats`: what it says the targets hold, against what they hold.

mod common;

use std::process::Command;

use common::*;

/// The bytes of the files under `dir`.
fn file_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| match e.file_type().unwrap().is_dir() {
            true => file_bytes(&e.path()),
            false => e.metadata().unwrap().len(),
        })
        .sum()
}

/// What `du --bytes` (apparent sizes, directories' own included) counts under `dir`.
fn du(dir: &std::path::Path) -> u64 {
    let out = run_ok(Command::new("du").args(["--bytes", "--summarize"]).arg(dir));
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn stats_match_what_a_file_target_holds() {
    let scratch = Scratch::new("stats");
    let src = one_file_source(&scratch, "mixed.bin", 7, 24);
    // The same file three times: stored once.
    for copy in ["a", "b"] {
        std::fs::copy(src.join("mixed.bin"), src.join(format!("copy-{copy}.bin"))).unwrap();
    }
    let setup = Setup::new("stats", Target::Dir, &src);
    setup.backup();
    std::fs::write(src.join("new.txt"), "a new file\n".repeat(1000)).unwrap();
    setup.backup();

    let stats = json_lines(&setup.ok(&["stats", "--json"])).remove(0);
    let job = &stats["jobs"][0];
    assert_eq!((job["job"].as_str(), job["snapshots"].as_u64()), (Some("data"), Some(2)), "{stats}");
    // Two snapshots of three copies of 24 MiB: six times the distinct data, give or take
    // the new file.
    let dedup = job["dedup_ratio"].as_f64().unwrap();
    assert!((5.5..6.1).contains(&dedup), "dedup {dedup}: {stats}");
    assert!(job["compression_ratio"].as_f64().unwrap() > 1.0, "{stats}");

    let target = setup.target_url.strip_prefix("file://").unwrap();
    let on = &stats["targets"][0];
    assert_eq!(
        on["stored_bytes"].as_u64().unwrap(),
        file_bytes(&std::path::Path::new(target).join("packs")),
        "{stats}"
    );
    let whole = du(std::path::Path::new(target)) as f64;
    let said = stats["repository"]["stored"]["stored_bytes"].as_u64().unwrap() as f64;
    assert!((whole - said).abs() / whole < 0.01, "stats says {said} bytes stored, du counts {whole}");
    // A file target locks nothing.
    assert_eq!((on["locked_bytes"].as_u64(), on["locked_until_latest"].as_i64()), (Some(0), None), "{stats}");

    let table = text(&setup.ok(&["stats"]));
    assert!(table.contains("DEDUP") && table.contains("(repository)") && table.contains("default"), "{table}");
}
