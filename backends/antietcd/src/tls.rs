//! TLS with rustls: PEM files or inline PEM (a string starting with `-----`), optional client-certificate
//! authentication against `--ca`, and the TLS of cluster peer links (`--peer_ca`, `--peer_cert`,
//! `--peer_key`, antietcd 1.3.1's options):
//!
//! - the HTTPS listener also trusts `--peer_ca` for client certificates, and *requests* one from every
//!   client when `--peer_ca` is set (required only with `--client_cert_auth`), so that the certificates a
//!   peer presented are known when it sends `identify` ([`ClientCertificates`], checked by [`PeerCa`]);
//! - peers are dialed (`wss://`) trusting `--peer_ca`, else `--ca`, else the web roots, presenting
//!   `--peer_cert`/`--peer_key`, else `--cert`/`--key` ([`PeerTls`]).

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

/// The private key in `value` (file or inline PEM), naming the option in errors.
fn private_key_of(value: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = pem_bytes(value, what)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError(format!("parsing {what}: {e}")))
}

/// Adds every certificate of `value` (file or inline PEM, option `what`) to `roots`.
fn add_roots(roots: &mut rustls::RootCertStore, value: &str, what: &str) -> Result<(), TlsError> {
    for c in certs(value, what)? {
        roots.add(c).map_err(|e| TlsError(format!("{what}: {e}")))?;
    }
    Ok(())
}

/// A rustls server config from `--cert`, `--key`, `--ca` and `--client_cert_auth` (HTTP/1.1 only).
pub fn server_config(
    cert: &str,
    key: &str,
    ca: Option<&str>,
    client_cert_auth: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_with_peer_ca(cert, key, ca, client_cert_auth, None)
}

/// The listener's TLS config for `config`, `None` without `--cert` (plain HTTP).
pub(crate) fn node_server_config(
    config: &crate::ServerConfig,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => Ok(Some(server_config_with_peer_ca(
            cert,
            key,
            config.ca.as_deref(),
            config.client_cert_auth,
            config.peer_ca.as_deref(),
        )?)),
        _ => Ok(None),
    }
}

/// [`server_config`] that also trusts `peer_ca` for client certificates (antietcd appends it to the CA
/// list) and, when it is set, requests a client certificate from every client: required with
/// `client_cert_auth`, optional otherwise (a client without one still connects; a certificate that is
/// presented must chain to `ca` or `peer_ca`).
pub fn server_config_with_peer_ca(
    cert: &str,
    key: &str,
    ca: Option<&str>,
    client_cert_auth: bool,
    peer_ca: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs(cert, "cert")?;
    let key = private_key(key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = if client_cert_auth || peer_ca.is_some() {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(ca) => add_roots(&mut roots, ca, "ca")?,
            // As before `--peer_ca` existed: client_cert_auth without `--ca` trusts the web roots.
            None if client_cert_auth => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            None => {}
        }
        if let Some(peer_ca) = peer_ca {
            add_roots(&mut roots, peer_ca, "peer_ca")?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        let verifier = if client_cert_auth { verifier } else { verifier.allow_unauthenticated() };
        let verifier = verifier.build().map_err(|e| TlsError(format!("client verifier: {e}")))?;
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

/// The certificates a TLS client presented (its chain, end entity first), as the handshake accepted them.
/// Attached by the accept loop to every request of the connection, so that a websocket upgraded on it can
/// pass them to the cluster's `identify` check.
#[derive(Debug, Clone)]
pub struct ClientCertificates(pub Arc<[CertificateDer<'static>]>);

impl ClientCertificates {
    /// The certificates the client of `connection` presented, if any.
    pub fn of(connection: &rustls::ServerConnection) -> Option<ClientCertificates> {
        let chain = connection.peer_certificates().filter(|c| !c.is_empty())?;
        Some(ClientCertificates(chain.iter().map(|c| c.clone().into_owned()).collect()))
    }
}

/// `--peer_ca`: the CA certificate(s) identifying legitimate cluster peers.
///
/// antietcd 1.3.1 walks the issuer links of the peer's certificate and passes if any certificate's SHA-256
/// fingerprint is peer_ca's (without a loop guard: a self-signed certificate that is not peer_ca loops
/// forever). Here the peer's chain is *verified* (signatures, validity, client-auth usage) with peer_ca's
/// certificates as the only trust anchors, which passes exactly when the verified path reaches a peer_ca
/// certificate, and terminates on any input. An end-entity certificate that *is* a peer_ca certificate
/// passes too (antietcd's fingerprint match on the certificate whose key the TLS handshake proved).
#[derive(Clone)]
pub struct PeerCa {
    certs: Vec<CertificateDer<'static>>,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl std::fmt::Debug for PeerCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCa").field("certificates", &self.certs.len()).finish_non_exhaustive()
    }
}

impl PartialEq for PeerCa {
    fn eq(&self, other: &Self) -> bool {
        self.certs == other.certs
    }
}

impl Eq for PeerCa {}

impl PeerCa {
    /// Loads `--peer_ca` (file or inline PEM; every certificate in it is an anchor).
    pub fn load(value: &str) -> Result<PeerCa, TlsError> {
        let certs = certs(value, "peer_ca")?;
        let mut roots = rustls::RootCertStore::empty();
        for c in &certs {
            roots.add(c.clone()).map_err(|e| TlsError(format!("peer_ca: {e}")))?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError(format!("peer_ca verifier: {e}")))?;
        Ok(PeerCa { certs, verifier })
    }

    /// Whether `chain` (a client's certificates, end entity first) identifies a legitimate peer: it
    /// verifies up to a peer_ca certificate now, or its end entity is one.
    pub fn admits(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((end_entity, intermediates)) = chain.split_first() else { return false };
        if self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return true;
        }
        let now = rustls::pki_types::UnixTime::now();
        self.verifier.verify_client_cert(end_entity, intermediates, now).is_ok()
    }
}

/// The TLS of this node's peer links: the client config its dialer uses for `wss://` peers, and the
/// [`PeerCa`] incoming peers must chain to, if `--peer_ca` is set.
#[derive(Clone)]
pub struct PeerTls {
    /// The dialer's config: trusts `--peer_ca`, else `--ca`, else the web roots; presents `--peer_cert` /
    /// `--peer_key`, else `--cert` / `--key`, else no certificate.
    pub connector: Arc<rustls::ClientConfig>,
    /// `--peer_ca`, if set.
    pub peer_ca: Option<PeerCa>,
    /// The option whose certificates the dialer trusts (`peer_ca` or `ca`); `None`: the web roots.
    trust: Option<&'static str>,
    /// The option presented as client certificate (`peer_cert` or `cert`), if any.
    client_certificate: Option<&'static str>,
    /// The values of the options this was built from, for equality.
    sources: Vec<Option<String>>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("trust", &self.trust.unwrap_or("web roots"))
            .field("client_certificate", &self.client_certificate)
            .field("peer_ca", &self.peer_ca)
            .finish_non_exhaustive()
    }
}

impl PartialEq for PeerTls {
    fn eq(&self, other: &Self) -> bool {
        self.sources == other.sources
    }
}

impl Eq for PeerTls {}

impl PeerTls {
    /// Builds the peer TLS of `config`, reading and checking every file involved (a client certificate
    /// whose key does not match is an error).
    pub fn from_server(config: &crate::ServerConfig) -> Result<PeerTls, TlsError> {
        let trust = match (&config.peer_ca, &config.ca) {
            (Some(peer_ca), _) => Some((peer_ca.as_str(), "peer_ca")),
            (None, Some(ca)) => Some((ca.as_str(), "ca")),
            (None, None) => None,
        };
        let client = match (&config.peer_cert, &config.peer_key, &config.cert, &config.key) {
            (Some(c), Some(k), _, _) => Some((c.as_str(), k.as_str(), "peer_cert", "peer_key")),
            (Some(_), None, _, _) => return Err(TlsError("--peer_cert needs --peer_key".into())),
            (None, Some(_), _, _) => return Err(TlsError("--peer_key needs --peer_cert".into())),
            (None, None, Some(c), Some(k)) => Some((c.as_str(), k.as_str(), "cert", "key")),
            _ => None,
        };
        let mut roots = rustls::RootCertStore::empty();
        match trust {
            Some((value, name)) => add_roots(&mut roots, value, name)?,
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_root_certificates(roots);
        let connector = match client {
            Some((cert, key, cert_name, key_name)) => builder
                .with_client_auth_cert(certs(cert, cert_name)?, private_key_of(key, key_name)?)
                .map_err(|e| TlsError(format!("--{cert_name} / --{key_name}: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        let peer_ca = config.peer_ca.as_deref().map(PeerCa::load).transpose()?;
        Ok(PeerTls {
            connector: Arc::new(connector),
            peer_ca,
            trust: trust.map(|t| t.1),
            client_certificate: client.map(|c| c.2),
            sources: vec![
                config.ca.clone(),
                config.cert.clone(),
                config.key.clone(),
                config.peer_ca.clone(),
                config.peer_cert.clone(),
                config.peer_key.clone(),
            ],
        })
    }
}
