//! Server configuration, layered: built-in defaults, then a TOML file, then `HTG__*`
//! environment variables (`HTG__BATCH__MAX_SIZE=16` sets `batch.max_size`).
//!
//! The defaults double as the schema: a file or variable naming a key the defaults lack, or
//! giving a value of another type, is refused, and [`Config::validate`] checks ranges, so the
//! server never starts on a typo or a value it would misbehave with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// Prefix of the environment variables that override the configuration.
pub const ENV_PREFIX: &str = "HTG__";

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File given.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {reason}")]
    Parse {
        /// File given.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// A key that the configuration does not have.
    #[error("unknown config key `{key}` (from {origin})")]
    UnknownKey {
        /// Dotted key.
        key: String,
        /// File or variable it came from.
        origin: String,
    },
    /// A value of the wrong type.
    #[error("config key `{key}` (from {origin}): {reason}")]
    Type {
        /// Dotted key.
        key: String,
        /// File or variable it came from.
        origin: String,
        /// What was expected.
        reason: String,
    },
    /// A value outside its allowed range.
    #[error("invalid config value `{key}`: {reason}")]
    Invalid {
        /// Dotted key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// Dynamic batching of inference requests (as Triton's `dynamic_batching`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most images per inference call.
    pub max_size: usize,
    /// How long the first image of a batch may wait for others, in microseconds.
    pub max_delay_us: u64,
    /// Images that may wait for inference; above it requests get 503 instead of queueing.
    pub queue: usize,
    /// Inference threads, each running one batch at a time.
    pub threads: usize,
}

/// Everything `htg serve` can be configured with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen address (`host:port`; port 0 picks a free one, printed at start).
    pub addr: String,
    /// actix worker threads handling HTTP (0: one per core).
    pub workers: usize,
    /// Largest request body accepted, in bytes (413 above it).
    pub max_upload_bytes: u64,
    /// Largest decoded image accepted, in pixels (400 above it).
    pub max_pixels: u64,
    /// Neighbours returned when a request names no `k`.
    pub default_k: usize,
    /// Largest `k` a request may ask for (`ef` is capped by `htg_retrieval::index::MAX_EF`).
    pub max_k: usize,
    /// Most images or vectors in one `POST /search/batch` or `POST /images`.
    pub max_batch_queries: usize,
    /// Seconds in-flight requests get to finish after SIGTERM.
    pub shutdown_timeout_s: u64,
    /// Inference runtime when `--backend` is not given: `tract` or `ort`.
    pub backend: String,
    /// Dynamic batching.
    pub batch: BatchConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: "127.0.0.1:8080".into(),
            workers: 0,
            max_upload_bytes: 16 * 1024 * 1024,
            max_pixels: 40_000_000,
            default_k: 10,
            max_k: 1000,
            max_batch_queries: 64,
            shutdown_timeout_s: 10,
            backend: "tract".into(),
            batch: BatchConfig {
                max_size: 32,
                max_delay_us: 500,
                queue: 1024,
                threads: 1,
            },
        }
    }
}

impl Config {
    /// Defaults, overlaid with `file` (if any), overlaid with the `HTG__*` variables of `env`.
    /// The result is validated.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let Value::Table(mut merged) =
            Value::try_from(Config::default()).expect("the defaults serialise to TOML")
        else {
            unreachable!("a struct serialises to a table")
        };
        let schema = merged.clone();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let table: Table =
                toml::from_str(&text).map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: path.to_path_buf(),
                    reason: e.message().to_string(),
                })?;
            let origin = path.display().to_string();
            overlay(&mut merged, &schema, table, "", &origin)?;
        }
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        for (name, raw) in vars {
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            set_from_env(&mut merged, &schema, &path, &raw, &name)?;
        }
        let config: Config = Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Type {
                key: "?".into(),
                origin: "merged configuration".into(),
                reason: e.message().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value's range; the server refuses to start otherwise.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check(ok: bool, key: &'static str, reason: String) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid { key, reason })
            }
        }
        check(
            self.addr.parse::<SocketAddr>().is_ok(),
            "addr",
            format!("{:?} is not an address like 127.0.0.1:8080", self.addr),
        )?;
        check(
            matches!(self.backend.as_str(), "tract" | "ort"),
            "backend",
            format!("{:?} is not tract or ort", self.backend),
        )?;
        check(
            self.workers <= 256,
            "workers",
            format!("{} is above 256", self.workers),
        )?;
        check(
            (1024..=1 << 30).contains(&self.max_upload_bytes),
            "max_upload_bytes",
            format!("{} is outside 1024..=1073741824", self.max_upload_bytes),
        )?;
        check(
            (1..=1 << 30).contains(&self.max_pixels),
            "max_pixels",
            format!("{} is outside 1..=1073741824", self.max_pixels),
        )?;
        check(
            (1..=100_000).contains(&self.max_k),
            "max_k",
            format!("{} is outside 1..=100000", self.max_k),
        )?;
        check(
            (1..=self.max_k).contains(&self.default_k),
            "default_k",
            format!("{} is outside 1..=max_k ({})", self.default_k, self.max_k),
        )?;
        check(
            (1..=4096).contains(&self.max_batch_queries),
            "max_batch_queries",
            format!("{} is outside 1..=4096", self.max_batch_queries),
        )?;
        check(
            self.shutdown_timeout_s <= 3600,
            "shutdown_timeout_s",
            format!("{} is above 3600", self.shutdown_timeout_s),
        )?;
        let b = &self.batch;
        check(
            (1..=1024).contains(&b.max_size),
            "batch.max_size",
            format!("{} is outside 1..=1024", b.max_size),
        )?;
        check(
            b.max_delay_us <= 1_000_000,
            "batch.max_delay_us",
            format!("{} is above 1000000 (one second)", b.max_delay_us),
        )?;
        check(
            (1..=1_000_000).contains(&b.queue),
            "batch.queue",
            format!("{} is outside 1..=1000000", b.queue),
        )?;
        check(
            (1..=64).contains(&b.threads),
            "batch.threads",
            format!("{} is outside 1..=64", b.threads),
        )
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Same TOML type, so a file cannot put a string where a number belongs.
fn same_kind(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Copies `layer` over `base`, refusing keys and types the schema lacks.
fn overlay(
    base: &mut Table,
    schema: &Table,
    layer: Table,
    prefix: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    for (key, value) in layer {
        let dotted = join(prefix, &key);
        let Some(expected) = schema.get(&key) else {
            return Err(ConfigError::UnknownKey {
                key: dotted,
                origin: origin.into(),
            });
        };
        match (expected, value) {
            (Value::Table(sub_schema), Value::Table(sub)) => {
                let Some(Value::Table(sub_base)) = base.get_mut(&key) else {
                    unreachable!("base follows the schema")
                };
                overlay(sub_base, sub_schema, sub, &dotted, origin)?;
            }
            (expected, value) if same_kind(expected, &value) => {
                base.insert(key, value);
            }
            (expected, value) => {
                return Err(ConfigError::Type {
                    key: dotted,
                    origin: origin.into(),
                    reason: format!("expected {}, got {}", expected.type_str(), value.type_str()),
                })
            }
        }
    }
    Ok(())
}

/// Sets one dotted key from an environment variable, parsing it as the schema's type.
fn set_from_env(
    base: &mut Table,
    schema: &Table,
    path: &[String],
    raw: &str,
    var: &str,
) -> Result<(), ConfigError> {
    let dotted = path.join(".");
    let unknown = || ConfigError::UnknownKey {
        key: dotted.clone(),
        origin: var.into(),
    };
    let (last, parents) = path.split_last().ok_or_else(unknown)?;
    let mut table = base;
    let mut sub_schema = schema;
    for p in parents {
        match (sub_schema.get(p), table.get_mut(p)) {
            (Some(Value::Table(s)), Some(Value::Table(t))) => {
                sub_schema = s;
                table = t;
            }
            _ => return Err(unknown()),
        }
    }
    let expected = sub_schema.get(last).ok_or_else(unknown)?;
    let bad = |what: &str| ConfigError::Type {
        key: dotted.clone(),
        origin: var.into(),
        reason: format!("{raw:?} is not {what}"),
    };
    let value = match expected {
        Value::String(_) => Value::String(raw.to_string()),
        Value::Integer(_) => Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?),
        Value::Float(_) => Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?),
        Value::Boolean(_) => Value::Boolean(raw.trim().parse().map_err(|_| bad("true or false"))?),
        _ => return Err(bad("settable from the environment (set it in the file)")),
    };
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_layers_apply_in_order() {
        assert_eq!(Config::load(None, env(&[])).unwrap(), Config::default());
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("serve.toml");
        std::fs::write(
            &file,
            "max_k = 50\ndefault_k = 5\n[batch]\nmax_size = 8\nmax_delay_us = 100\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("HTG__BATCH__MAX_SIZE", "4"),
                ("HTG__ADDR", "127.0.0.1:0"),
                ("HTG_CACHE_DIR", "ignored: single underscore"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.max_k, 50, "file over default");
        assert_eq!(c.default_k, 5);
        assert_eq!(c.batch.max_delay_us, 100);
        assert_eq!(c.batch.max_size, 4, "env over file");
        assert_eq!(c.addr, "127.0.0.1:0");
        assert_eq!(
            c.batch.queue,
            Config::default().batch.queue,
            "untouched default"
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let dir = tempfile::TempDir::new().unwrap();
        let cases: &[(&str, &str)] = &[
            ("max_kk = 3\n", "unknown config key `max_kk`"),
            ("[batch]\nsize = 3\n", "unknown config key `batch.size`"),
            ("max_k = \"many\"\n", "expected integer, got string"),
            ("max_k = 0\n", "`max_k`"),
            ("default_k = 2000\n", "`default_k`"),
            ("addr = \"localhost\"\n", "`addr`"),
            ("[batch]\nmax_size = 0\n", "`batch.max_size`"),
            ("max_upload_bytes = -1\n", "-1"),
            ("max_k = [\n", "not valid TOML"),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let file = dir.path().join(format!("c{i}.toml"));
            std::fs::write(&file, text).unwrap();
            let err = Config::load(Some(&file), env(&[])).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let env_cases: &[(&str, &str, &str)] = &[
            ("HTG__BATCH__MAX_SIZE", "lots", "is not an integer"),
            ("HTG__NOPE", "1", "unknown config key `nope`"),
            ("HTG__BATCH", "1", "not settable from the environment"),
            ("HTG__BATCH__THREADS", "0", "`batch.threads`"),
            ("HTG__", "1", "unknown config key"),
            ("HTG__BACKEND", "onnx", "\"onnx\" is not tract or ort"),
        ];
        for (k, v, want) in env_cases {
            let err = Config::load(None, env(&[(k, v)])).unwrap_err().to_string();
            assert!(err.contains(want), "{k}={v}: {err}");
        }
        let missing = Config::load(Some(&dir.path().join("absent.toml")), env(&[]));
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
    }
}
