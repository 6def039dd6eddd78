//! Server configuration, layered with `figment`: built-in defaults, then a TOML file, then
//! `HTG__*` environment variables (`HTG__BATCH__MAX_SIZE=16` sets `batch.max_size`).
//!
//! `deny_unknown_fields` refuses keys the configuration lacks and serde refuses values of
//! another type; figment's error says which key and which layer, and [`refusal`] words it.
//! [`Config::validate`] checks ranges, so the server never starts on a typo or a value it
//! would misbehave with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{error::Kind, Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

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

/// TLS: when both paths are set the server speaks HTTPS only (rustls), else plain HTTP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first (empty: no TLS).
    pub cert: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty() || !self.key.is_empty()
    }
}

/// Cross-origin access for browsers: off unless origins are listed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins (`https://app.example.com`) whose pages may call the API; `*` allows any.
    /// From the environment: comma-separated.
    pub allowed_origins: Vec<String>,
    /// Seconds a browser may cache a preflight answer.
    pub max_age_s: u64,
}

/// Shortest API key accepted: a key a person can guess is no key.
pub const MIN_KEY_LEN: usize = 16;

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
    /// Inference runtime when `--backend` is not given: `auto` (ONNX Runtime when its library
    /// is found, else tract: what every other command does), `tract` or `ort`.
    pub backend: crate::loader::Runtime,
    /// Dynamic batching.
    pub batch: BatchConfig,
    /// Key for every operation (`api-key` header or `Authorization: Bearer`); empty: no
    /// access control at all.
    pub api_key: String,
    /// Key for reads only (search, stats, files, similar); writes with it answer 403.
    pub read_only_api_key: String,
    /// Whether `GET /metrics` needs a key (either one) when keys are configured.
    pub metrics_require_key: bool,
    /// HTTPS.
    pub tls: TlsConfig,
    /// Cross-origin requests.
    pub cors: CorsConfig,
    /// Decoded pixels one request may make the server decode, all its images together (400
    /// `decode_budget` above it): bounds the CPU a single small request can buy.
    pub decode_budget_pixels: u64,
    /// Images above this many pixels (read from their header) are large: their decodes take
    /// turns (see `max_concurrent_large_decodes`); smaller ones decode at once.
    pub large_decode_pixels: u64,
    /// Large images decoded at the same time across all requests (0: half the cores, at
    /// least one): decode-heavy clients queue among themselves instead of taking every core
    /// from the rest.
    pub max_concurrent_large_decodes: usize,
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
            backend: crate::loader::Runtime::Auto,
            batch: BatchConfig {
                max_size: 32,
                max_delay_us: 500,
                queue: 1024,
                threads: 1,
            },
            api_key: String::new(),
            read_only_api_key: String::new(),
            metrics_require_key: true,
            tls: TlsConfig::default(),
            cors: CorsConfig {
                allowed_origins: Vec::new(),
                max_age_s: 3600,
            },
            decode_budget_pixels: 64_000_000,
            large_decode_pixels: 2_000_000,
            max_concurrent_large_decodes: 0,
        }
    }
}

impl Config {
    /// Defaults, overlaid with `file` (if any), overlaid with the `HTG__*` variables of `env`.
    /// The layers are merged by `figment`; the result is validated.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let defaults = Figment::from(Serialized::defaults(Config::default()));
        let mut figment = defaults.clone();
        if let Some(path) = file {
            // figment reads a missing file as empty; a file named on the command line must exist.
            std::fs::metadata(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(EnvLayer::new(&defaults, env)?);
        let config: Config = figment.extract().map_err(|e| refusal(e, &defaults))?;
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
        for (key, value) in [
            ("api_key", &self.api_key),
            ("read_only_api_key", &self.read_only_api_key),
        ] {
            check(
                value.is_empty()
                    || (value.len() >= MIN_KEY_LEN
                        && value.bytes().all(|b| b.is_ascii_graphic())),
                key,
                format!(
                    "must be empty or at least {MIN_KEY_LEN} printable ASCII characters without spaces"
                ),
            )?;
        }
        check(
            self.read_only_api_key.is_empty() || !self.api_key.is_empty(),
            "read_only_api_key",
            "is set without `api_key`: writes would be open to anyone; set both".into(),
        )?;
        check(
            self.read_only_api_key.is_empty() || self.read_only_api_key != self.api_key,
            "read_only_api_key",
            "equals `api_key`: the read-only key would allow writes".into(),
        )?;
        check(
            self.tls.cert.is_empty() == self.tls.key.is_empty(),
            "tls",
            "set both `tls.cert` and `tls.key`, or neither".into(),
        )?;
        for origin in &self.cors.allowed_origins {
            check(
                origin == "*"
                    || ((origin.starts_with("http://") || origin.starts_with("https://"))
                        && !origin.ends_with('/')
                        && origin.parse::<actix_web::http::Uri>().is_ok_and(|u| {
                            u.authority().is_some() && u.path_and_query().is_none_or(|p| p == "/")
                        })),
                "cors.allowed_origins",
                format!("{origin:?} is not `*` or an origin like https://app.example.com"),
            )?;
        }
        check(
            self.cors.max_age_s <= 86_400,
            "cors.max_age_s",
            format!("{} is above 86400", self.cors.max_age_s),
        )?;
        check(
            (1..=1 << 34).contains(&self.decode_budget_pixels)
                && self.decode_budget_pixels >= self.max_pixels.min(1 << 34),
            "decode_budget_pixels",
            format!(
                "{} is outside max_pixels ({})..=17179869184",
                self.decode_budget_pixels, self.max_pixels
            ),
        )?;
        check(
            self.large_decode_pixels >= 1,
            "large_decode_pixels",
            "must be at least 1".into(),
        )?;
        check(
            self.max_concurrent_large_decodes <= 1024,
            "max_concurrent_large_decodes",
            format!("{} is above 1024", self.max_concurrent_large_decodes),
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

/// The name of a default value's type, as the refusals say it.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::String(..) | Value::Char(..) => "string",
        Value::Num(_, n) if n.to_f64().is_some_and(|f| f.fract() != 0.0) => "float",
        Value::Num(..) => "integer",
        Value::Bool(..) => "boolean",
        Value::Dict(..) => "table",
        Value::Array(..) => "array",
        Value::Empty(..) => "nothing",
    }
}

/// A figment error as a refusal that names the key and where it came from.
fn refusal(e: figment::Error, defaults: &Figment) -> ConfigError {
    let mut keys = e.path.clone();
    let origin = |keys: &[String]| match &e.metadata {
        Some(m) => match &m.source {
            Some(figment::Source::File(path)) => path.display().to_string(),
            _ if m.name == ENV_NAME => m.interpolate(&figment::Profile::Default, keys),
            _ => m.name.to_string(),
        },
        None => "merged configuration".into(),
    };
    match &e.kind {
        Kind::UnknownField(field, _) => {
            // figment's path already ends with the field; serde's alone would not.
            if keys.last() != Some(field) {
                keys.push(field.clone());
            }
            ConfigError::UnknownKey {
                key: keys.join("."),
                origin: origin(&keys),
            }
        }
        Kind::InvalidType(actual, _) | Kind::InvalidValue(actual, _) => {
            let key = keys.join(".");
            let expected = defaults
                .find_value(&key)
                .map(|v| kind_of(&v))
                .unwrap_or("another type");
            ConfigError::Type {
                origin: origin(&keys),
                key,
                reason: format!("expected {expected}, got {actual}"),
            }
        }
        Kind::Message(reason)
            if matches!(
                e.metadata.as_ref().and_then(|m| m.source.as_ref()),
                Some(figment::Source::File(_))
            ) =>
        {
            let Some(figment::Source::File(path)) =
                e.metadata.as_ref().and_then(|m| m.source.clone())
            else {
                unreachable!("matched above")
            };
            ConfigError::Parse {
                path,
                reason: reason.clone(),
            }
        }
        _ => ConfigError::Type {
            key: keys.join("."),
            origin: origin(&keys),
            reason: e.kind.to_string(),
        },
    }
}

/// Name of the environment layer's figment metadata.
const ENV_NAME: &str = "`HTG__` environment variables";

/// The `HTG__*` variables as a figment layer. Each is parsed as the type its default has (a
/// string key takes the text as it is, so `HTG__ADDR=8080` stays a string), and a variable
/// naming no key, or a whole table, is refused with the variable's name. figment's own `Env`
/// provider reads only the process environment; this one reads the pairs `load` is given.
struct EnvLayer(Dict);

impl EnvLayer {
    fn new(
        defaults: &Figment,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<EnvLayer, ConfigError> {
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        let mut root = Dict::new();
        for (name, raw) in vars {
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            let dotted = path.join(".");
            let unknown = || ConfigError::UnknownKey {
                key: dotted.clone(),
                origin: name.clone(),
            };
            if path.iter().any(String::is_empty) {
                return Err(unknown());
            }
            let expected = defaults.find_value(&dotted).map_err(|_| unknown())?;
            let bad = |what: &str| ConfigError::Type {
                key: dotted.clone(),
                origin: name.clone(),
                reason: format!("{raw:?} is not {what}"),
            };
            let value = match kind_of(&expected) {
                "string" => Value::from(raw.clone()),
                "integer" => Value::from(raw.trim().parse::<i64>().map_err(|_| bad("an integer"))?),
                "float" => Value::from(raw.trim().parse::<f64>().map_err(|_| bad("a number"))?),
                "boolean" => Value::from(
                    raw.trim()
                        .parse::<bool>()
                        .map_err(|_| bad("true or false"))?,
                ),
                // Lists (`cors.allowed_origins`) are comma-separated.
                "array" => Value::from(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::from(s.to_string()))
                        .collect::<Vec<_>>(),
                ),
                _ => return Err(bad("settable from the environment (set it in the file)")),
            };
            let (last, parents) = path.split_last().ok_or_else(unknown)?;
            let mut table = &mut root;
            for p in parents {
                let entry = table
                    .entry(p.clone())
                    .or_insert_with(|| Value::from(Dict::new()));
                let Value::Dict(_, sub) = entry else {
                    return Err(unknown());
                };
                table = sub;
            }
            table.insert(last.clone(), value);
        }
        Ok(EnvLayer(root))
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_NAME).interpolater(|_, keys| {
            let upper: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
            format!("{ENV_PREFIX}{}", upper.join("__"))
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
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
            ("api_key = \"short\"\n", "`api_key`"),
            ("api_key = \"has a space in it ok\"\n", "`api_key`"),
            (
                "read_only_api_key = \"read-only-key-0123\"\n",
                "set without `api_key`",
            ),
            (
                "api_key = \"same-key-0123456789\"\nread_only_api_key = \"same-key-0123456789\"\n",
                "would allow writes",
            ),
            ("[tls]\ncert = \"a.pem\"\n", "`tls`"),
            (
                "[cors]\nallowed_origins = [\"app.example.com\"]\n",
                "`cors.allowed_origins`",
            ),
            (
                "[cors]\nallowed_origins = [\"https://a.example/x\"]\n",
                "`cors.allowed_origins`",
            ),
            ("decode_budget_pixels = 10\n", "`decode_budget_pixels`"),
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
            ("HTG__BACKEND", "onnx", "unknown variant: found `onnx`"),
        ];
        for (k, v, want) in env_cases {
            let err = Config::load(None, env(&[(k, v)])).unwrap_err().to_string();
            assert!(err.contains(want), "{k}={v}: {err}");
        }
        let missing = Config::load(Some(&dir.path().join("absent.toml")), env(&[]));
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
    }

    #[test]
    fn access_settings_come_from_the_environment() {
        let c = Config::load(
            None,
            env(&[
                ("HTG__API_KEY", "full-key-0123456789"),
                ("HTG__READ_ONLY_API_KEY", "read-key-0123456789"),
                ("HTG__METRICS_REQUIRE_KEY", "false"),
                (
                    "HTG__CORS__ALLOWED_ORIGINS",
                    "https://a.example.com, http://localhost:3000",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(c.api_key, "full-key-0123456789");
        assert_eq!(c.read_only_api_key, "read-key-0123456789");
        assert!(!c.metrics_require_key);
        assert_eq!(
            c.cors.allowed_origins,
            vec!["https://a.example.com", "http://localhost:3000"]
        );
        assert!(!Config::default().tls.enabled());
        assert!(
            Config::default().cors.allowed_origins.is_empty(),
            "CORS off by default"
        );
    }

    #[test]
    fn refusals_name_the_layer_the_value_came_from() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("serve.toml");
        std::fs::write(&file, "[batch]\nthreads = \"two\"\n").unwrap();
        let err = Config::load(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(err.contains("`batch.threads`"), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        // A string key keeps the variable's text as it is: validated as an address, not typed.
        let err = Config::load(None, env(&[("HTG__ADDR", "8080")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"8080\" is not an address"), "{err}");
        let err = Config::load(None, env(&[("HTG__BATCH____X", "1")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown config key") && err.contains("HTG__BATCH____X"),
            "{err}"
        );
    }
}
