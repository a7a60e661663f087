//! TLS with rustls: PEM files or inline PEM (a string starting with `-----`), optional client-certificate
//! authentication against `--ca`.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// Why the TLS material could not be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(pub String);

/// The PEM text of `value`: itself if it starts with `-----`, else the file it names.
pub fn pem_bytes(value: &str, what: &str) -> Result<Vec<u8>, TlsError> {
    if value.trim_start().starts_with("-----") {
        Ok(value.as_bytes().to_vec())
    } else {
        std::fs::read(value).map_err(|e| TlsError(format!("reading {what} {value}: {e}")))
    }
}

/// Every certificate in `value` (file or inline PEM).
pub fn certs(value: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = pem_bytes(value, what)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("parsing {what}: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{what} holds no PEM certificate")));
    }
    Ok(certs)
}

/// The private key in `value` (file or inline PEM).
pub fn private_key(value: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = pem_bytes(value, "key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError(format!("parsing key: {e}")))
}

/// The crypto provider used everywhere (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server config from `--cert`, `--key`, `--ca` and `--client_cert_auth` (HTTP/1.1 only).
pub fn server_config(
    cert: &str,
    key: &str,
    ca: Option<&str>,
    client_cert_auth: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs(cert, "cert")?;
    let key = private_key(key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = if client_cert_auth {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(ca) => {
                for c in certs(ca, "ca")? {
                    roots.add(c).map_err(|e| TlsError(format!("ca: {e}")))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError(format!("client verifier: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError(format!("cert/key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A rustls client config trusting `ca` (or the web roots), presenting `cert`+`key` if given.
pub fn client_config(
    ca: Option<&str>,
    cert_key: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            for c in certs(ca, "ca")? {
                roots.add(c).map_err(|e| TlsError(format!("ca: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots);
    let config = match cert_key {
        Some((cert, key)) => builder
            .with_client_auth_cert(certs(cert, "cert")?, private_key(key)?)
            .map_err(|e| TlsError(format!("client cert: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
