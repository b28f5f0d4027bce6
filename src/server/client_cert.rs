//! Client certificates on `ports.https` (`tls.client_ca`, `tls.client_auth`):
//! a rustls verifier that follows the live snapshot, so a reloaded CA
//! bundle or mode applies to the next handshake without re-binding, like
//! the server certificate. The CA bundle is parsed once per generation;
//! one that cannot be used keeps the previous one (and [`check`] refuses
//! it before a snapshot may serve). Without `client_ca` no certificate is
//! asked for. A verified certificate's SHA-256 fingerprint is what the
//! data path matches against `applications[].certificates`.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::config::diagnostic::{Diagnostic, Severity};
use crate::config::snapshot::ClientCa;
use crate::config::{Invalid, Snapshot};

/// The serving snapshot, as the TLS listener reads it per handshake.
pub(super) type Current = dyn Fn() -> Arc<Snapshot> + Send + Sync;

/// Why a CA bundle cannot verify client certificates.
#[derive(Debug, thiserror::Error)]
pub enum ClientCaError {
    #[error("{path}: no usable CA certificate: {why}")]
    Unusable { path: String, why: String },
}

/// The SHA-256 of a certificate's DER: its fingerprint.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// The client CA of `snapshot` judged as the live verifier judges it.
pub fn check(snapshot: &Snapshot) -> Result<(), Invalid> {
    let Some(ca) = snapshot.tls.as_ref().and_then(|t| t.client_ca.as_ref()) else {
        return Ok(());
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    match verifier(ca, &provider) {
        Ok(_) => Ok(()),
        Err(error) => Err(Invalid {
            findings: vec![Diagnostic {
                severity: Severity::Error,
                origin: ca.at.clone(),
                message: format!("tls.client_ca: {error}"),
                allowed: Some("a PEM bundle of X.509 CA certificates".to_owned()),
            }],
        }),
    }
}

fn verifier(
    ca: &ClientCa,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, ClientCaError> {
    let unusable = |why: String| ClientCaError::Unusable {
        path: ca.path.display().to_string(),
        why,
    };
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&ca.pem) {
        let der = der.map_err(|e| unusable(e.to_string()))?;
        roots.add(der).map_err(|e| unusable(e.to_string()))?;
    }
    // Whether a certificate is required is this module's to say, per
    // snapshot; the inner verifier only verifies what is presented.
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| unusable(e.to_string()))
}

/// What the serving snapshot asks of clients.
#[derive(Clone)]
struct Mode {
    generation: u64,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    required: bool,
}

/// Verifies client certificates against the serving snapshot's `client_ca`.
pub struct LiveClientVerifier {
    current: Arc<Current>,
    provider: Arc<CryptoProvider>,
    cached: Mutex<Mode>,
}

impl fmt::Debug for LiveClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveClientVerifier").finish_non_exhaustive()
    }
}

impl LiveClientVerifier {
    pub fn new(current: Arc<Current>, provider: Arc<CryptoProvider>) -> LiveClientVerifier {
        LiveClientVerifier {
            current,
            provider,
            cached: Mutex::new(Mode {
                generation: 0,
                verifier: None,
                required: false,
            }),
        }
    }

    fn mode(&self) -> Mode {
        let snapshot = (self.current)();
        let mut cached = match self.cached.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if cached.generation != snapshot.generation {
            cached.generation = snapshot.generation;
            match snapshot.tls.as_ref().and_then(|t| t.client_ca.as_ref()) {
                None => {
                    cached.verifier = None;
                    cached.required = false;
                }
                Some(ca) => match verifier(ca, &self.provider) {
                    Ok(verifier) => {
                        cached.verifier = Some(verifier);
                        cached.required = ca.required;
                    }
                    Err(error) => tracing::error!(
                        generation = snapshot.generation,
                        %error,
                        "client CA of the new configuration refused; the previous one keeps verifying"
                    ),
                },
            }
        }
        cached.clone()
    }
}

impl ClientCertVerifier for LiveClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.mode().verifier.is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        let mode = self.mode();
        mode.verifier.is_some() && mode.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional (RFC 8446 §4.2.4); clients send the one they have.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.mode().verifier {
            Some(verifier) => verifier.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(
                "no client certificate is asked for".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
