//! TLS for the Kafka listener (`--tls-cert`, `--tls-key`, optionally
//! `--tls-client-ca` to require client certificates): rustls with the `ring`
//! provider and its safe defaults (TLS 1.2 and 1.3).

use std::{path::Path, sync::Arc};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio_rustls::{
    rustls::{self, server::WebPkiClientVerifier, RootCertStore},
    TlsAcceptor,
};

use crate::{
    config::TlsConfig,
    error::{Error, Result},
};

/// An error about the PEM file `path`, for `op`.
fn pem_error(op: &'static str, path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::io(op, path, std::io::Error::other(reason.to_string()))
}

/// The most a PEM file given as TLS material may hold.
const MAX_PEM_BYTES: u64 = 16 << 20;

/// The bytes of the PEM file `path`, for `op`: a regular file of at most
/// [`MAX_PEM_BYTES`] (a FIFO there made the start wait forever, and
/// `/dev/zero` read until memory ran out).
fn pem_bytes(op: &'static str, path: &Path) -> Result<Vec<u8>> {
    crate::wal::files::read_regular(path, MAX_PEM_BYTES).map_err(|e| Error::io(op, path, e))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let op = "read PEM certificates";
    let certs = CertificateDer::pem_slice_iter(&pem_bytes(op, path)?)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| pem_error(op, path, e))?;
    if certs.is_empty() {
        return Err(pem_error(
            "read PEM certificates",
            path,
            "no CERTIFICATE block in the file",
        ));
    }
    Ok(certs)
}

/// Loads the certificate chain, the key and (optionally) the CA that client
/// certificates must chain to, and builds the acceptor. Every error names the
/// file and what was wrong with it.
///
/// # Errors
/// Unreadable files, PEM without the expected blocks, a key that does not match
/// the certificate, an unusable CA.
pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&cfg.cert)?;
    let op = "read PEM private key";
    let key = PrivateKeyDer::from_pem_slice(&pem_bytes(op, &cfg.key)?)
        .map_err(|e| pem_error(op, &cfg.key, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| pem_error("configure TLS", &cfg.cert, e))?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| pem_error("load client CA", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| pem_error("load client CA", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        let why = format!("with the private key {}: {e}", cfg.key.display());
        pem_error("use certificate", &cfg.cert, why)
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
