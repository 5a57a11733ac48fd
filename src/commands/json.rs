//! The `--json` contract. Every line a command prints under `--json` is one JSON object
//! carrying `"schema": 1`; a list is one object per line (NDJSON), a result is one line.
//! One vocabulary across commands: `job`; `snapshot` (an id; `newest_snapshot` where
//! several are meant); `target` (a target's name); `run` (a run's id); `retain_until`
//! (until when coffer keeps a snapshot) and `locked_until` (until when the target
//! refuses to delete it), in Unix seconds. `docs/schema/COMMAND.json` is each command's
//! JSON Schema; `tests/json_schema.rs` validates every command's output against it.

use anyhow::{Result, bail};
use serde::Serialize;

/// The version of this contract: raised when a field is renamed or removed.
pub const SCHEMA: u64 = 1;

/// Prints `value`, an object, as one line with `"schema"`.
pub fn print(value: &impl Serialize) -> Result<()> {
    write(&mut std::io::stdout().lock(), value)
}

/// Writes `value`, an object, as one line with `"schema"`, to `out`.
pub fn write(out: &mut impl std::io::Write, value: &impl Serialize) -> Result<()> {
    let mut value = serde_json::to_value(value)?;
    let Some(object) = value.as_object_mut() else { bail!("a --json line must be an object, not {value}") };
    object.insert("schema".into(), SCHEMA.into());
    writeln!(out, "{value}")?;
    Ok(())
}

/// Prints each item of a list as a line of its own.
pub fn print_each<T: Serialize>(items: impl IntoIterator<Item = T>) -> Result<()> {
    items.into_iter().try_for_each(|item| print(&item))
}
