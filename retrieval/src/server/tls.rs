//! HTTPS with rustls (on the `ring` provider): the certificate chain and key are read from
//! PEM files at start, and any problem with them stops the server before it listens.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::config::TlsConfig;

/// Why the TLS configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("tls.{key} = {path}: {reason}")]
    Pem {
        /// `cert` or `key`.
        key: &'static str,
        /// File given.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the pair (a key that does not match the certificate, for instance).
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The rustls server configuration for `tls`, or `None` when TLS is off.
pub fn server_config(tls: &TlsConfig) -> Result<Option<rustls::ServerConfig>, TlsError> {
    if !tls.enabled() {
        return Ok(None);
    }
    let pem = |key: &'static str, path: &str, reason: String| TlsError::Pem {
        key,
        path: path.to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(Path::new(&tls.cert))
        .map_err(|e| pem("cert", &tls.cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem("cert", &tls.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("cert", &tls.cert, "no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_file(Path::new(&tls.key))
        .map_err(|e| pem("key", &tls.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Some(config))
}
