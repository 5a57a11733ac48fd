//! A `[target]` table: the keys every store kind shares, read here, and the rest handed to
//! the kind named by the URL's scheme, which reads its own (`Kind::options`).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{KINDS, Kind, LockMode};

/// Where `coffer prune` finds its privileged credentials by default (`[prune]`): the
/// names of environment variables, never the secrets themselves. The daemon never has them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PruneConfig {
    pub access_key_id_env: String,
    pub secret_access_key_env: String,
}

impl Default for PruneConfig {
    fn default() -> Self {
        PruneConfig {
            access_key_id_env: "COFFER_PRUNE_ACCESS_KEY_ID".into(),
            secret_access_key_env: "COFFER_PRUNE_SECRET_ACCESS_KEY".into(),
        }
    }
}

/// What a store kind read from its part of a `[target]` table: the kind alone knows its
/// keys; the rest of coffer asks it only these questions.
pub trait KindOptions: std::fmt::Debug + Send + Sync + Any {
    /// The variables that hold the target's credentials (no child process gets them).
    fn credential_vars(&self) -> Vec<String> {
        Vec::new()
    }

    /// Why the target has no credentials, named by the variables that should hold them.
    fn missing_credentials(&self, _name: &str, _url: &str) -> Option<String> {
        None
    }

    /// The variables holding prune's privileged key id and secret, where the kind has
    /// credentials.
    fn prune_credentials(&self) -> Option<(&str, &str)> {
        None
    }

    fn as_any(&self) -> &dyn Any;
}

/// A kind's keys, as it read them.
pub type Options = Arc<dyn KindOptions>;

/// A kind without keys of its own.
#[derive(Debug)]
pub struct NoOptions;

impl KindOptions for NoOptions {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// How commands and the catalog name the target (`default` for a single `[target]`).
    pub name: String,
    pub url: String,
    /// Concurrent uploads; each holds one pack in memory.
    pub upload_concurrency: usize,
    /// The lock mode of every object written, where the kind locks (`None`: no lock).
    pub lock_mode: Option<LockMode>,
    /// How long one run keeps retrying a target that fails transiently (connection
    /// refused or reset, timeouts, 5xx, SlowDown) before it gives up.
    pub retry_budget: Duration,
    /// No object is locked, nor a lock extended, further than this many days ahead
    /// (`max_lock_days`; by default what the jobs' `lock_days` and `keep` need).
    pub max_lock_days: u32,
    /// The kind's own keys, as it read them.
    pub options: Arc<dyn KindOptions>,
}

/// The kind whose scheme the URL starts with.
pub fn kind_of(url: &str) -> Option<&'static Kind> {
    let scheme = url.split_once("://")?.0;
    KINDS.iter().find(|k| k.scheme == scheme)
}

/// The name of a single `[target]`.
pub const DEFAULT_TARGET: &str = "default";

/// Names of jobs and targets: letters, digits, `.`, `_`, `-`; at most 64; no leading dot.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with('.')
}

/// The keys every kind shares; the rest of the table goes to the kind.
#[derive(Deserialize)]
struct Common {
    name: Option<String>,
    url: String,
    #[serde(default = "default_concurrency")]
    upload_concurrency: usize,
    #[serde(default = "default_lock_mode")]
    lock_mode: String,
    retry_budget: Option<String>,
}

fn default_concurrency() -> usize {
    2
}
fn default_lock_mode() -> String {
    "compliance".into()
}

/// `[target]`, or every `[[target]]` (each named, the names unique).
pub fn parse_targets(value: toml::Value, prune: &PruneConfig) -> Result<Vec<TargetConfig>, String> {
    let tables = match value {
        toml::Value::Table(t) => vec![("target".to_string(), t)],
        toml::Value::Array(list) if list.is_empty() => return Err("key `target`: names no target".into()),
        toml::Value::Array(list) => list
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                toml::Value::Table(t) => Ok((format!("target[{i}]"), t)),
                _ => Err(format!("key `target[{i}]`: expected a table")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("key `target`: expected a table `[target]` or tables `[[target]]`".into()),
    };
    let several = tables.len() > 1;
    let mut targets: Vec<TargetConfig> = Vec::new();
    for (key, table) in tables {
        let target = parse_target(&key, table, prune, several)?;
        if targets.iter().any(|t| t.name == target.name) {
            return Err(format!("key `{key}.name`: target `{}` is defined twice", target.name));
        }
        targets.push(target);
    }
    Ok(targets)
}

/// One target table; `key` names it in errors.
fn parse_target(key: &str, mut table: toml::Table, prune: &PruneConfig, several: bool) -> Result<TargetConfig, String> {
    let mut common = toml::Table::new();
    for k in ["name", "url", "upload_concurrency", "lock_mode", "retry_budget"] {
        if let Some(v) = table.remove(k) {
            common.insert(k.to_string(), v);
        }
    }
    let t = Common::deserialize(common).map_err(|e| format!("key `{key}`: {}", e.message()))?;
    let name = match t.name {
        Some(name) if valid_name(&name) => name,
        Some(name) => {
            return Err(format!(
                "key `{key}.name`: `{name}` is not a valid target name (letters, digits, `.`, `_`, `-`; at most 64)"
            ));
        }
        None if several => return Err(format!("key `{key}.name`: each of several targets needs a name")),
        None => DEFAULT_TARGET.to_string(),
    };
    let Some(kind) = kind_of(&t.url) else {
        let forms: Vec<String> = KINDS.iter().map(|k| format!("`{}`", k.example)).collect();
        return Err(format!("key `{key}.url`: expected {}, found `{}`", forms.join(" or "), t.url));
    };
    if !(1..=64).contains(&t.upload_concurrency) {
        return Err(format!("key `{key}.upload_concurrency`: expected 1 to 64"));
    }
    let lock_mode = match t.lock_mode.as_str() {
        "compliance" => Some(LockMode::Compliance),
        "governance" => Some(LockMode::Governance),
        "none" => None,
        other => {
            return Err(format!(
                "key `{key}.lock_mode`: expected \"compliance\", \"governance\" or \"none\", found \"{other}\""
            ));
        }
    };
    let retry_budget = crate::time::parse_duration(t.retry_budget.as_deref().unwrap_or("15m"))
        .map_err(|e| format!("key `{key}.retry_budget`: {e}"))?;
    Ok(TargetConfig {
        options: (kind.options)(key, table, prune)?,
        name,
        url: t.url,
        upload_concurrency: t.upload_concurrency,
        lock_mode,
        retry_budget,
        // Set from the jobs once they are read (`max_lock_days`).
        max_lock_days: 0,
    })
}

/// Every variable that holds credentials of coffer's targets (the standard AWS ones,
/// each target's named ones, and prune's, `[prune]`'s whatever the kinds): no child ever
/// gets them.
pub fn credential_vars(targets: &[TargetConfig], prune: &PruneConfig) -> Vec<String> {
    let mut vars: Vec<String> =
        ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"].map(String::from).to_vec();
    vars.extend([prune.access_key_id_env.clone(), prune.secret_access_key_env.clone()]);
    for t in targets {
        vars.extend(t.options.credential_vars());
    }
    vars.sort();
    vars.dedup();
    vars
}

/// A kind's table read with its own keys: an unknown key is named with the table.
pub fn read_options<T: serde::de::DeserializeOwned>(key: &str, table: toml::Table) -> Result<T, String> {
    // serde's "there are no fields" means this kind has no keys beyond those every target has.
    let message = |e: toml::de::Error| {
        e.message().replace("there are no fields", "this kind of target has no keys beyond those every target has")
    };
    T::deserialize(table).map_err(|e| format!("key `{key}`: {}", message(e)))
}
