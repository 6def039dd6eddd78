//! Access control in Qdrant's manner: an `api_key` for every operation and a
//! `read_only_api_key` for reads, sent as `api-key: <key>` or `Authorization: Bearer <key>`.
//!
//! With no `api_key` configured nothing is checked (the default, for a server on loopback).
//! Otherwise every request needs a key except the probes (`/healthz`, `/readyz`), the static
//! search page (`/`, which holds no data and is where a person types the key) and, when `metrics_require_key` is false, `/metrics`. A request without a valid key answers
//! 401; a write with the read-only key answers 403.
//!
//! Keys are compared as SHA-256 digests with `subtle`'s constant-time equality, so neither
//! the position of the first differing byte nor the key's length shows in the timing.

use actix_web::dev::ServiceRequest;
use actix_web::http::{header, Method};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::Config;
use super::error::ApiError;

/// Name of the header that carries a key (as Qdrant's).
pub const API_KEY_HEADER: &str = "api-key";

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Open to anyone (probes, the page; everything when no key is configured). CORS
    /// preflights are answered before the key check, by the CORS layer.
    Open,
    /// Reads: search, stats, files, similar, the OpenAPI document, metrics.
    Read,
    /// Writes: adding and deleting images, snapshots, and any route not known as a read.
    Write,
}

/// The configured keys, kept only as digests.
#[derive(Clone)]
pub struct Keys {
    full: Option<[u8; 32]>,
    read_only: Option<[u8; 32]>,
    metrics_open: bool,
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl Keys {
    /// The keys of `config` (none when `api_key` is empty).
    pub fn from_config(config: &Config) -> Keys {
        let some = |k: &str| (!k.is_empty()).then(|| digest(k.as_bytes()));
        Keys {
            full: some(&config.api_key),
            read_only: some(&config.read_only_api_key),
            metrics_open: !config.metrics_require_key,
        }
    }

    /// Whether access control is on.
    pub fn enabled(&self) -> bool {
        self.full.is_some()
    }

    /// Admits or refuses a request given its method, path and presented key.
    pub fn check(&self, method: &Method, path: &str, key: Option<&[u8]>) -> Result<(), ApiError> {
        let Some(full) = &self.full else {
            return Ok(());
        };
        let need = access(method, path, self.metrics_open);
        if need == Access::Open {
            return Ok(());
        }
        let Some(key) = key else {
            return Err(ApiError::Unauthorized(
                "this server needs an API key: send `api-key: <key>` or `Authorization: Bearer <key>`"
                    .into(),
            ));
        };
        let given = digest(key);
        // Both comparisons always run, so timing does not say which key matched.
        let is_full = bool::from(given.ct_eq(full));
        let is_read = self
            .read_only
            .as_ref()
            .is_some_and(|r| bool::from(given.ct_eq(r)));
        match (is_full, is_read, need) {
            (true, _, _) => Ok(()),
            (false, true, Access::Read) => Ok(()),
            (false, true, _) => Err(ApiError::Forbidden(format!(
                "the read-only API key cannot {method} {path}: writes need the full key"
            ))),
            (false, false, _) => Err(ApiError::Unauthorized("invalid API key".into())),
        }
    }

    /// [`Keys::check`] for an actix request.
    pub fn check_request(&self, req: &ServiceRequest) -> Result<(), ApiError> {
        if !self.enabled() {
            return Ok(());
        }
        let key = presented_key(req.headers());
        self.check(req.method(), req.path(), key)
    }
}

/// The key a request carries: the `api-key` header, else an `Authorization: Bearer` token.
pub fn presented_key(headers: &header::HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(API_KEY_HEADER) {
        return Some(v.as_bytes());
    }
    let auth = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = auth.split_at(auth.iter().position(|&b| b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
}

/// What `method path` needs. Reads are listed; anything else is a write, so a route added
/// later (an admin endpoint) needs the full key until it is listed here.
pub fn access(method: &Method, path: &str, metrics_open: bool) -> Access {
    match path {
        "/healthz" | "/readyz" | "/" if *method == Method::GET || *method == Method::HEAD => {
            Access::Open
        }
        "/metrics" if metrics_open => Access::Open,
        // Admin reads (task status) name model paths: the full key, like writes.
        _ if path.starts_with("/admin/") => Access::Write,
        _ if *method == Method::GET || *method == Method::HEAD => Access::Read,
        "/search" | "/search/vector" | "/search/batch" if *method == Method::POST => Access::Read,
        _ => Access::Write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(read_only: bool, metrics_require_key: bool) -> Keys {
        Keys::from_config(&Config {
            api_key: "full-key-0123456789".into(),
            read_only_api_key: if read_only {
                "read-key-0123456789".into()
            } else {
                String::new()
            },
            metrics_require_key,
            ..Config::default()
        })
    }

    #[test]
    fn routes_are_classified_reads_fail_closed_to_writes() {
        let g = Method::GET;
        let p = Method::POST;
        assert_eq!(access(&g, "/healthz", false), Access::Open);
        assert_eq!(access(&g, "/readyz", false), Access::Open);
        assert_eq!(access(&g, "/", false), Access::Open);
        assert_eq!(access(&g, "/metrics", true), Access::Open);
        assert_eq!(access(&g, "/metrics", false), Access::Read);
        assert_eq!(access(&g, "/stats", false), Access::Read);
        assert_eq!(access(&g, "/images/3/file", false), Access::Read);
        assert_eq!(access(&p, "/search", false), Access::Read);
        assert_eq!(access(&p, "/search/batch", false), Access::Read);
        assert_eq!(access(&p, "/images", false), Access::Write);
        assert_eq!(access(&Method::DELETE, "/images/3", false), Access::Write);
        assert_eq!(access(&p, "/snapshots", false), Access::Write);
        assert_eq!(access(&p, "/admin/reindex", false), Access::Write);
        assert_eq!(access(&p, "/healthz", false), Access::Write);
    }

    #[test]
    fn keys_admit_and_refuse() {
        let k = keys(true, true);
        let full = Some(&b"full-key-0123456789"[..]);
        let read = Some(&b"read-key-0123456789"[..]);
        let wrong = Some(&b"full-key-012345678"[..]);
        let g = Method::GET;
        let p = Method::POST;
        assert!(k.check(&g, "/healthz", None).is_ok());
        let code = |r: Result<(), ApiError>| r.err().map(|e| e.status_and_code().0.as_u16());
        assert_eq!(code(k.check(&g, "/stats", None)), Some(401));
        assert_eq!(code(k.check(&g, "/stats", wrong)), Some(401));
        assert_eq!(code(k.check(&g, "/stats", Some(b""))), Some(401));
        assert_eq!(code(k.check(&g, "/stats", read)), None);
        assert_eq!(code(k.check(&g, "/stats", full)), None);
        assert_eq!(code(k.check(&p, "/search", read)), None);
        assert_eq!(code(k.check(&p, "/images", read)), Some(403));
        assert_eq!(code(k.check(&Method::DELETE, "/images/1", read)), Some(403));
        assert_eq!(code(k.check(&p, "/images", full)), None);
        assert_eq!(code(k.check(&g, "/metrics", None)), Some(401));
        assert_eq!(code(keys(false, false).check(&g, "/metrics", None)), None);
        // Without keys configured, everything is open.
        let open = Keys::from_config(&Config::default());
        assert!(!open.enabled());
        assert!(open.check(&p, "/images", None).is_ok());
    }

    #[test]
    fn both_header_forms_are_read() {
        let mut h = header::HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_static("Bearer  abc "),
        );
        assert_eq!(presented_key(&h), Some(&b"abc"[..]));
        h.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_static("Basic abc"),
        );
        assert_eq!(presented_key(&h), None);
        h.insert(
            header::HeaderName::from_static(API_KEY_HEADER),
            header::HeaderValue::from_static("xyz"),
        );
        assert_eq!(presented_key(&h), Some(&b"xyz"[..]));
    }
}
