//! The catalog is input too: a damaged or tampered catalog (a disk error, an attacker on
//! the backup host, a half-restored file) must give every command a clear error or a
//! correct answer, never a panic. Every column of every table is overwritten in turn
//! with hostile values, and every command that reads the catalog runs against it.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Values a damaged catalog could hold in any column.
const VALUES: &[&str] = &["NULL", "''", "-1", "9223372036854775807", "X'00FF'", "'x'", "'../../x'"];

fn commands(setup: &Setup, out: &Path) -> Vec<Vec<String>> {
    let id = setup.identity.display().to_string();
    let to = out.display().to_string();
    [
        vec!["snapshots", "--json"],
        vec!["snapshots"],
        vec!["runs", "--json"],
        vec!["status", "--json"],
        vec!["verify"],
        vec!["verify", "--read-data", "--identity", &id, "--no-progress"],
        vec!["restore", "latest", "--job", "data", "--no-progress", "--identity", &id, "--to", &to],
        // What this stop's commands read of it: the sums, the tags, the dry runs.
        vec!["stats", "--json"],
        vec!["snapshots", "--tag", "x"],
        vec!["ls", "latest", "--job", "data", "--identity", &id],
        vec!["restore", "latest", "--job", "data", "--dry-run", "--identity", &id, "--to", &to],
        vec!["key", "list"],
        vec!["backup", "data", "--no-progress"],
        vec!["backup", "data", "--dry-run"],
        vec!["check-config"],
        vec!["prune"],
        vec!["init"],
    ]
    .into_iter()
    .map(|c| c.into_iter().map(String::from).collect())
    .collect()
}

#[test]
fn no_catalog_value_panics_any_command() {
    let scratch = Scratch::new("catalog-input");
    let src = scratch.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/a.txt"), "hello ".repeat(100)).unwrap();
    std::fs::write(src.join("b.bin"), Rng(9).mixed(300_000)).unwrap();
    let setup = Setup::new("catalog-input", Target::Dir, &src);
    setup.backup();
    std::fs::write(src.join("c.txt"), "more").unwrap();
    setup.backup();
    let catalog = setup.dir.path("state/catalog.sqlite");
    {
        let c = setup.catalog();
        // A pack's chunk list as a run leaves it before indexing, so that `unindexed`
        // has a row to overwrite (its chunks stay indexed: the snapshots need them).
        let newest: i64 = c.query_row("SELECT max(pack) FROM chunks", [], |r| r.get(0)).unwrap();
        let mut st = c.prepare("SELECT id, offset, length, raw_length, flags FROM chunks WHERE pack = ?1").unwrap();
        let mut blobs = Vec::new();
        let mut rows = st.query([newest]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            blobs.extend(r.get::<_, Vec<u8>>(0).unwrap());
            blobs.extend(r.get::<_, u64>(1).unwrap().to_le_bytes());
            blobs.extend(r.get::<_, u32>(2).unwrap().to_le_bytes());
            blobs.extend(r.get::<_, u32>(3).unwrap().to_le_bytes());
            blobs.push(r.get::<_, u8>(4).unwrap());
        }
        c.execute("INSERT INTO unindexed (pack, blobs) VALUES (?1, ?2)", rusqlite::params![newest, blobs]).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    }
    let pristine = std::fs::read(&catalog).unwrap();

    let tables: Vec<(String, Vec<String>)> = {
        let c = setup.catalog();
        let mut st =
            c.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").unwrap();
        let names: Vec<String> = st.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
        names
            .into_iter()
            .map(|t| {
                let mut st = c.prepare(&format!("SELECT name FROM pragma_table_info('{t}')")).unwrap();
                let cols = st.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
                (t, cols)
            })
            .collect()
    };
    let (mut mutations, mut runs, mut clean_errors) = (0, 0, 0);
    for (table, columns) in &tables {
        for column in columns {
            for value in VALUES {
                std::fs::write(&catalog, &pristine).unwrap();
                for f in ["catalog.sqlite-wal", "catalog.sqlite-shm"] {
                    let _ = std::fs::remove_file(setup.dir.path(&format!("state/{f}")));
                }
                {
                    let c = setup.catalog();
                    c.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
                    // Every row; where a constraint refuses that (UNIQUE), one row; where
                    // it refuses even that (NOT NULL), the catalog cannot be in that state.
                    let all = format!("UPDATE \"{table}\" SET \"{column}\" = {value}");
                    let one = format!("{all} WHERE rowid = (SELECT min(rowid) FROM \"{table}\")");
                    if c.execute(&all, []).is_err() && c.execute(&one, []).is_err() {
                        continue;
                    }
                }
                mutations += 1;
                let out = scratch.path("restored");
                for args in commands(&setup, &out) {
                    let _ = std::fs::remove_dir_all(&out);
                    let r = Command::new(BIN).arg("--config").arg(&setup.config).args(&args).output().unwrap();
                    runs += 1;
                    let said = text(&r);
                    assert!(
                        r.status.code() != Some(101) && !said.contains("panicked"),
                        "{table}.{column} = {value}: `coffer {}` panicked:\n{said}",
                        args.join(" ")
                    );
                    assert!(
                        r.status.code().is_some(),
                        "{table}.{column} = {value}: `coffer {}` was killed",
                        args.join(" ")
                    );
                    clean_errors += (r.status.code() == Some(1)) as u32;
                }
            }
        }
    }
    eprintln!("{mutations} catalog mutations, {runs} command runs, none panicked ({clean_errors} ended with an error)");
    assert!(mutations > 100, "only {mutations} mutations applied");
}
