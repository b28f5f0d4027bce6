//! Client certificates on `ports.https` (`tls.client_ca`, `tls.client_auth`):
//! the rustls verifier of each setting, which the listener's TLS
//! configuration for that setting uses (`tls::LiveTls`), so a reloaded CA
//! bundle or mode applies to the next handshake without re-binding, like
//! the server certificate, and the connections verified under the
//! previous one end (`server::verified`): a certificate is checked at the
//! handshake only. A bundle that cannot be used keeps the previous
//! setting (and [`check`] refuses it before a snapshot may serve). Without
//! `client_ca` no certificate is asked for. A verified certificate's
//! SHA-256 fingerprint is what the data path matches against
//! `applications[].certificates`.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use sha2::{Digest, Sha256};

use crate::config::diagnostic::{Diagnostic, Severity};
use crate::config::snapshot::ClientCa;
use crate::config::{Invalid, Snapshot};

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

/// The client CA of `snapshot` judged as `verifier` judges it.
pub fn check(snapshot: &Snapshot) -> Result<(), Invalid> {
    let Some(ca) = snapshot.tls.as_ref().and_then(|t| t.client_ca.as_ref()) else {
        return Ok(());
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    match verifier(Some(ca), &provider) {
        Ok(_) => Ok(()),
        Err(error) => Err(Invalid {
            findings: vec![Diagnostic {
                severity: Severity::Error,
                origin: ca.at.clone(),
                message: format!("tls.client_ca: {error}"),
                allowed: Some("a PEM bundle of X.509 CA certificates".to_owned()),
            }],
            files: snapshot.files.clone(),
        }),
    }
}

/// The verifier of one client-certificate setting: none asked for
/// without `client_ca`; with it, a presented certificate must chain to
/// one of its CAs, and with `client_auth: required` one must be presented.
pub(super) fn verifier(
    ca: Option<&ClientCa>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, ClientCaError> {
    let Some(ca) = ca else {
        return Ok(WebPkiClientVerifier::no_client_auth());
    };
    let unusable = |why: String| ClientCaError::Unusable {
        path: ca.path.display().to_string(),
        why,
    };
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&ca.pem) {
        let der = der.map_err(|e| unusable(e.to_string()))?;
        roots.add(der).map_err(|e| unusable(e.to_string()))?;
    }
    // Hints are optional (RFC 8446 §4.2.4); clients send the one they have.
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .clear_root_hint_subjects();
    let builder = match ca.required {
        true => builder,
        false => builder.allow_unauthenticated(),
    };
    builder.build().map_err(|e| unusable(e.to_string()))
}

/// What a handshake asks of clients: the bundle's PEM and the mode
/// (`None` without `client_ca`). Two snapshots with the same setting
/// share their TLS sessions; a change of either starts afresh, and ends
/// the connections verified under the previous setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Setting {
    pem: Vec<u8>,
    required: bool,
}

impl Setting {
    pub(super) fn of(snapshot: &Snapshot) -> Option<Setting> {
        let ca = snapshot.tls.as_ref()?.client_ca.as_ref()?;
        Some(Setting {
            pem: ca.pem.clone(),
            required: ca.required,
        })
    }
}
