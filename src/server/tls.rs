//! TLS on `ports.https`: one rustls `ServerConfig` (aws-lc-rs, ALPN `h2` and
//! `http/1.1`) whose certificate comes from the live snapshot, so a reloaded
//! certificate applies to the next handshake without re-binding. A snapshot
//! whose key does not parse or match keeps the last good certificate
//! serving (the refusal is logged once per generation).

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::snapshot::TlsMaterial;
use crate::config::Snapshot;

/// Why the certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no `tls:` section in the configuration")]
    Missing,
    #[error("{path}: no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path}: no PEM private key")]
    NoKey { path: String },
    #[error("certificate and key cannot be used: {0}")]
    Rejected(#[from] rustls::Error),
}

/// Parses the PEM certificate chain and key into what rustls serves.
pub fn certified_key(
    material: &TlsMaterial,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&material.certificate_pem)
            .filter_map(Result::ok)
            .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: material.certificate_path.display().to_string(),
        });
    }
    let key =
        PrivateKeyDer::from_pem_slice(material.key_pem.expose().as_bytes()).map_err(|_| {
            TlsError::NoKey {
                path: material.key_path.display().to_string(),
            }
        })?;
    Ok(CertifiedKey::from_der(chain, key, provider)?)
}

type Current = dyn Fn() -> Arc<Snapshot> + Send + Sync;

/// Resolves the certificate of the snapshot serving now; parses it once per
/// generation.
pub struct LiveCertificate {
    current: Box<Current>,
    provider: Arc<CryptoProvider>,
    /// Generation checked last, and the certificate serving since.
    cached: Mutex<(u64, Arc<CertifiedKey>)>,
}

impl fmt::Debug for LiveCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveCertificate").finish_non_exhaustive()
    }
}

impl LiveCertificate {
    /// Fails when the serving snapshot's certificate cannot be used: a
    /// gateway does not start with a listener it cannot serve.
    pub fn new(
        current: impl Fn() -> Arc<Snapshot> + Send + Sync + 'static,
    ) -> Result<LiveCertificate, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let snapshot = current();
        let material = snapshot.tls.as_ref().ok_or(TlsError::Missing)?;
        let key = Arc::new(certified_key(material, &provider)?);
        Ok(LiveCertificate {
            current: Box::new(current),
            provider,
            cached: Mutex::new((snapshot.generation, key)),
        })
    }

    fn certificate(&self) -> Arc<CertifiedKey> {
        let snapshot = (self.current)();
        let mut cached = match self.cached.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if cached.0 != snapshot.generation {
            cached.0 = snapshot.generation;
            match snapshot
                .tls
                .as_ref()
                .map(|m| certified_key(m, &self.provider))
            {
                Some(Ok(key)) => cached.1 = Arc::new(key),
                Some(Err(error)) => tracing::error!(
                    generation = snapshot.generation,
                    %error,
                    "TLS certificate of the new configuration refused; the previous one keeps serving"
                ),
                None => tracing::warn!(
                    generation = snapshot.generation,
                    "the new configuration has no `tls:`; the previous certificate keeps serving"
                ),
            }
        }
        cached.1.clone()
    }

    /// The acceptor of the https listener.
    pub fn acceptor(self) -> Result<TlsAcceptor, TlsError> {
        let provider = self.provider.clone();
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for LiveCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certificate())
    }
}
