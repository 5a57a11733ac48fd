//! The house's layering, held against the code: every module of `src/` sits in one layer,
//! and a module may use its own layer and those below, never one above; and no modules
//! use each other in a circle. A new module must be placed in the table to build.
//!
//! Read bottom-up: what is lower knows nothing of what is higher.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const LAYERS: &[(&str, &[&str])] = &[
    (
        "ground: bytes, text, time, the OS, HTTP",
        &[
            "bounded",
            "buffers",
            "chunk_id",
            "chunker",
            "env",
            "escape",
            "fsutil",
            "hex",
            "http",
            "process",
            "progress",
            "retention",
            "retry",
            "run_outcome",
            "runtime",
            "s3",
            "schedule",
            "time",
        ],
    ),
    ("keys and local state", &["keys", "spill", "state_dir"]),
    ("stores: where objects go, and how each kind is reached", &["store"]),
    ("formats: what the objects hold, and the file metadata they keep", &["format", "xattr"]),
    ("what is stored where, and what is backed up", &["audit", "catalog", "inventory", "observer", "pin", "source"]),
    ("the configuration", &["config", "hooks"]),
    (
        "the engine: one module per task",
        &[
            "backup",
            "browse",
            "init",
            "keyring",
            "metrics",
            "mount",
            "preflight",
            "prune",
            "recover",
            "replicate",
            "repo",
            "restore",
            "scrub",
            "status",
            "tripwire",
            "verify",
        ],
    ),
    ("the daemon's tasks: each kind of periodic work", &["task"]),
    ("the surfaces: the daemon and the command line", &["cli", "commands", "daemon", "lib", "main"]),
];

/// Every use of `crate::NAME` in each top-level module of `src` (doc comments left out:
/// a link is not a use).
fn uses(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in walk(src) {
        let rel = entry.strip_prefix(src).unwrap();
        let module = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        let text = std::fs::read_to_string(&entry).unwrap();
        let used = found.entry(module.clone()).or_default();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let before = line[..i].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue; // `$crate::`, `coffer_crate::`…
                }
                let name: String = line[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() && name != module {
                    used.insert(name);
                }
            }
        }
    }
    found
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.extension().is_some_and(|x| x == "rs") {
            files.push(path);
        }
    }
    files
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

/// Every import that runs up the layers, and every module the table does not place.
fn violations(uses: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut bad = Vec::new();
    for (module, used) in uses {
        let Some(mine) = layer_of(module) else {
            bad.push(format!("module `{module}` is in no layer of tests/layering.rs"));
            continue;
        };
        for other in used {
            match layer_of(other) {
                Some(theirs) if theirs > mine => bad.push(format!(
                    "`{module}` ({}) uses `{other}` ({}), a higher layer",
                    LAYERS[mine].0, LAYERS[theirs].0
                )),
                _ => {}
            }
        }
    }
    bad
}

/// A circle of modules that use each other, if there is one.
fn circle(uses: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        uses: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| p == m) {
            return Some(path[start..].to_vec());
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in uses.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, uses, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    uses.keys().find_map(|m| visit(m, uses, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_uses_a_higher_layer_nor_a_circle() {
    let uses = uses(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(uses.len() > 40, "the walk found only {} modules", uses.len());
    let bad = violations(&uses);
    assert!(bad.is_empty(), "the layering is broken:\n  {}", bad.join("\n  "));
    assert_eq!(circle(&uses), None, "modules use each other in a circle");
}

#[test]
fn a_planted_upward_import_or_circle_is_caught() {
    let mut uses = uses(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    // The catalog reaching up into the backup engine, as a quick fix might.
    uses.get_mut("catalog").unwrap().insert("backup".into());
    let bad = violations(&uses);
    assert!(bad.iter().any(|b| b.starts_with("`catalog` (what is stored where")), "{bad:?}");
    assert!(circle(&uses).is_some_and(|c| c.contains(&"catalog".to_string())), "{:?}", circle(&uses));
    // A module nobody placed.
    uses.insert("gcs".into(), BTreeSet::new());
    assert!(violations(&uses).iter().any(|b| b.contains("`gcs` is in no layer")));
}

/// The first sentence of a module's `//!` doc.
fn summary(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let paragraph: Vec<&str> = text
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.trim_start_matches("//!").trim())
        .take_while(|l| !l.is_empty())
        .collect();
    let paragraph = paragraph.join(" ");
    match paragraph.find(". ") {
        Some(end) => paragraph[..=end].to_string(),
        None => paragraph,
    }
}

/// The README's layout table as the tree makes it: every module of `src/`, by layer from
/// the top, with the first sentence of its doc; a folder with its files.
fn layout_table(src: &Path) -> String {
    let mut out = String::from("| layer | module | what |\n| --- | --- | --- |\n");
    for (layer, modules) in LAYERS.iter().rev() {
        for (i, module) in modules.iter().enumerate() {
            let (path, doc) = match src.join(module) {
                dir if dir.is_dir() => {
                    let mut files: Vec<String> = walk(&dir)
                        .iter()
                        .map(|f| f.strip_prefix(&dir).unwrap().display().to_string())
                        .filter(|f| f != "mod.rs")
                        .collect();
                    files.sort();
                    (format!("`src/{module}/` ({})", files.join(", ")), summary(&dir.join("mod.rs")))
                }
                _ => (format!("`src/{module}.rs`"), summary(&src.join(format!("{module}.rs")))),
            };
            let layer = if i == 0 { layer.to_string() } else { String::new() };
            out.push_str(&format!("| {layer} | {path} | {} |\n", doc.replace('|', "\\|")));
        }
    }
    out
}

const BEGIN: &str =
    "<!-- layout: made from the tree by tests/layering.rs (COFFER_WRITE_LAYOUT=1 cargo test --test layering) -->\n";
const END: &str = "<!-- end of layout -->\n";

#[test]
fn the_readme_layout_is_the_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = layout_table(&root.join("src"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let (Some(begin), Some(end)) = (readme.find(BEGIN), readme.find(END)) else {
        panic!("README.md has no generated layout between its markers");
    };
    let shown = &readme[begin + BEGIN.len()..end];
    if shown != table && std::env::var_os("COFFER_WRITE_LAYOUT").is_some() {
        let written = format!("{}{BEGIN}{table}{}", &readme[..begin], &readme[end..]);
        std::fs::write(root.join("README.md"), written).unwrap();
        return;
    }
    assert_eq!(
        shown, table,
        "README.md's layout has drifted from the tree: COFFER_WRITE_LAYOUT=1 cargo test --test layering"
    );
}

/// One runtime: no module but `src/runtime.rs` builds one or blocks on a future by itself;
/// the rest go through `runtime::block_on`.
#[test]
fn only_the_runtime_facade_builds_a_runtime_or_blocks() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for file in walk(&src).into_iter().filter(|f| !f.ends_with("runtime.rs")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim_start().starts_with("//")) {
            let blocks = line.replace("runtime::block_on(", "").contains("block_on(");
            if blocks || line.contains("runtime::Builder") || line.contains("Runtime::new") {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "outside src/runtime.rs:\n  {}", found.join("\n  "));
}
