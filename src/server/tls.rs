//! TLS on `ports.https`: a rustls `ServerConfig` (aws-lc-rs, ALPN `h2` and
//! `http/1.1`) whose certificate comes from the live snapshot, so a reloaded
//! certificate applies to the next handshake without re-binding. Each
//! client-certificate setting (`tls.client_ca`, `tls.client_auth`) has its
//! own `ServerConfig` and with it its own store of resumable sessions: a
//! resumed session skips the client's certificate, so one is resumed only
//! under the setting that verified (or did not ask for) that certificate.
//! A reload that changes the setting also ends the connections verified
//! under the previous one (`server::verified`); one that changes only the
//! server certificate leaves them.
//!
//! [`certified_key`] is the one judge of TLS material: `check`, start and
//! every reload ask it (through [`check`]) before a snapshot may serve, so a
//! certificate that does not parse, a key that does not match or is
//! encrypted, a certificate outside its validity or not X.509 v3 is a
//! refused configuration with the position of `tls.certificate` or
//! `tls.key`, never a handshake failure later. A snapshot whose material
//! still cannot be used when it serves (a certificate that expired since)
//! keeps the last good certificate serving (logged once per generation).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::client_cert::{self, ClientCaError, Setting};
use super::verified::{Verification, Verified};
use crate::config::diagnostic::{Diagnostic, Severity};
use crate::config::snapshot::TlsMaterial;
use crate::config::{Invalid, Snapshot};

/// Why the certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no `tls:` section in the configuration")]
    Missing,
    #[error("{path}: no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path}: certificate {index} of the chain is not a DER X.509 certificate")]
    BadCertificate { path: String, index: usize },
    #[error("{path}: certificate {index} of the chain is X.509 version {version}")]
    UnsupportedVersion {
        path: String,
        index: usize,
        version: u64,
    },
    #[error("{path}: certificate {index} of the chain expired on {at}")]
    Expired {
        path: String,
        index: usize,
        at: String,
    },
    #[error("{path}: certificate {index} of the chain is not valid before {at}")]
    NotYetValid {
        path: String,
        index: usize,
        at: String,
    },
    #[error("{path}: no PEM private key")]
    NoKey { path: String },
    #[error("{path}: the private key is encrypted")]
    EncryptedKey { path: String },
    #[error("certificate and key cannot be used: {0}")]
    Rejected(#[from] rustls::Error),
    #[error(transparent)]
    ClientCa(#[from] ClientCaError),
}

impl TlsError {
    /// Whether the key file (not the certificate) is what is wrong.
    fn is_about_the_key(&self) -> bool {
        match self {
            TlsError::NoKey { .. } | TlsError::EncryptedKey { .. } | TlsError::Rejected(_) => true,
            TlsError::Missing
            | TlsError::NoCertificate { .. }
            | TlsError::BadCertificate { .. }
            | TlsError::UnsupportedVersion { .. }
            | TlsError::Expired { .. }
            | TlsError::NotYetValid { .. }
            | TlsError::ClientCa(_) => false,
        }
    }

    fn allowed(&self) -> &'static str {
        match self.is_about_the_key() {
            true => {
                "an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1) matching the certificate"
            }
            false => "a PEM chain of X.509 v3 certificates, valid now, the server's first",
        }
    }
}

/// The TLS material of `snapshot` judged as [`certified_key`] judges it,
/// as a finding at `tls.certificate` or `tls.key`. Nothing to check
/// without a `tls:` section.
pub fn check(snapshot: &Snapshot, now: SystemTime) -> Result<(), Invalid> {
    let Some(material) = &snapshot.tls else {
        return Ok(());
    };
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let Err(error) = certified_key(material, &provider, now) else {
        return super::client_cert::check(snapshot);
    };
    let (origin, key) = match error.is_about_the_key() {
        true => (material.key_at.clone(), "tls.key"),
        false => (material.certificate_at.clone(), "tls.certificate"),
    };
    Err(Invalid {
        findings: vec![Diagnostic {
            severity: Severity::Error,
            origin,
            message: format!("{key}: {error}"),
            allowed: Some(error.allowed().to_owned()),
        }],
        files: snapshot.files.clone(),
    })
}

/// Parses and judges the PEM certificate chain and key into what rustls
/// serves, at `now`.
pub fn certified_key(
    material: &TlsMaterial,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<CertifiedKey, TlsError> {
    let certificate_path = || material.certificate_path.display().to_string();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&material.certificate_pem)
            .filter_map(Result::ok)
            .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: certificate_path(),
        });
    }
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    for (index, der) in chain.iter().enumerate() {
        let index = index + 1;
        let Some(facts) = x509::facts(der) else {
            return Err(TlsError::BadCertificate {
                path: certificate_path(),
                index,
            });
        };
        // A self-signed certificate after the first is a root a chain may
        // carry: clients judge roots by their own trust store, not by it.
        if index > 1 && facts.self_issued {
            continue;
        }
        // RFC 5280 §4.1.2.1: extensions, which a server certificate needs
        // (subjectAltName), exist only in v3; webpki refuses the others.
        if facts.version != 3 {
            return Err(TlsError::UnsupportedVersion {
                path: certificate_path(),
                index,
                version: facts.version,
            });
        }
        if facts.not_after < now {
            return Err(TlsError::Expired {
                path: certificate_path(),
                index,
                at: date(facts.not_after),
            });
        }
        // A certificate issued a moment ago by a CA whose clock is ahead
        // of this host's (cert-manager sets `notBefore` to its now) is
        // taken: refusing it would keep the one it renews.
        if facts.not_before > now.saturating_add(NOT_BEFORE_SKEW) {
            return Err(TlsError::NotYetValid {
                path: certificate_path(),
                index,
                at: date(facts.not_before),
            });
        }
    }
    let key_pem = material.key_pem.expose();
    // RFC 5958 §3 (PKCS#8 EncryptedPrivateKeyInfo) and the OpenSSL
    // `Proc-Type: 4,ENCRYPTED` header: there is no passphrase to open it.
    if key_pem.contains("ENCRYPTED PRIVATE KEY") || key_pem.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(TlsError::EncryptedKey {
            path: material.key_path.display().to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::NoKey {
        path: material.key_path.display().to_string(),
    })?;
    // Also refuses a key that is not the certificate's (`keys_match`).
    Ok(CertifiedKey::from_der(chain, key, provider)?)
}

/// How far ahead of this host's clock a certificate's `notBefore` may be.
const NOT_BEFORE_SKEW: u64 = 300;

fn date(seconds: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// The serving snapshot, as the TLS listener reads it per handshake.
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
        let key = Arc::new(certified_key(material, &provider, SystemTime::now())?);
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
                .map(|m| certified_key(m, &self.provider, SystemTime::now()))
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
}

/// The TLS of the https listener: the acceptor of the client-certificate
/// setting in force, made anew when a snapshot about to serve changes it
/// ([`LiveTls::follow`]); the connections verified under the previous
/// setting then end (`server::verified`).
pub struct LiveTls {
    provider: Arc<CryptoProvider>,
    certificate: Arc<LiveCertificate>,
    serving: Mutex<Verifying>,
}

/// A client-certificate setting in force: its acceptor, and the
/// connections it verified.
struct Verifying {
    setting: Option<Setting>,
    acceptor: TlsAcceptor,
    verification: Arc<Verification>,
}

impl fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveTls").finish_non_exhaustive()
    }
}

impl LiveTls {
    /// Fails when the serving snapshot's client CA cannot be used.
    pub fn new(certificate: LiveCertificate) -> Result<LiveTls, TlsError> {
        let provider = certificate.provider.clone();
        let certificate = Arc::new(certificate);
        let snapshot = (certificate.current)();
        let acceptor = acceptor(&snapshot, &provider, &certificate)?;
        Ok(LiveTls {
            provider,
            certificate,
            serving: Mutex::new(Verifying {
                setting: Setting::of(&snapshot),
                acceptor,
                verification: Verification::new(),
            }),
        })
    }

    /// The acceptor of the next handshake, and the setting it verifies
    /// under, taken together: a connection verified under a setting ends
    /// when that setting is replaced.
    pub(super) fn acceptor(&self) -> (TlsAcceptor, Verified) {
        let serving = self.serving();
        (serving.acceptor.clone(), serving.verification.verify())
    }

    /// `snapshot` is about to serve (the reload pipeline calls this before
    /// it swaps one in, so that no request is served on it over a
    /// connection verified under a setting it replaced): when its
    /// client-certificate setting differs, the next handshakes verify
    /// under it, and the connections verified under the previous one end.
    /// A change of the server certificate alone changes no setting.
    pub fn follow(&self, snapshot: &Snapshot) {
        // Without `tls:` the listener goes on as the certificate does
        // (until a restart): with the clients it verified, never with none
        // (`client_auth: required` quietly gone).
        if snapshot.tls.is_none() {
            return;
        }
        let setting = Setting::of(snapshot);
        let mut serving = self.serving();
        if setting == serving.setting {
            return;
        }
        let acceptor = match acceptor(snapshot, &self.provider, &self.certificate) {
            Ok(acceptor) => acceptor,
            Err(error) => {
                tracing::error!(
                    generation = snapshot.generation,
                    %error,
                    "client CA of the new configuration refused; the previous one keeps verifying"
                );
                return;
            }
        };
        let previous = std::mem::replace(
            &mut *serving,
            Verifying {
                setting,
                acceptor,
                verification: Verification::new(),
            },
        );
        let connections = previous.verification.retire();
        tracing::info!(
            generation = snapshot.generation,
            connections,
            "client-certificate settings changed: the connections verified under the previous ones end"
        );
    }

    fn serving(&self) -> std::sync::MutexGuard<'_, Verifying> {
        self.serving.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The acceptor of `snapshot`'s client-certificate setting, with a store
/// of sessions of its own. It issues no stateless tickets: their key
/// would outlive the setting.
fn acceptor(
    snapshot: &Snapshot,
    provider: &Arc<CryptoProvider>,
    certificate: &Arc<LiveCertificate>,
) -> Result<TlsAcceptor, TlsError> {
    let client_ca = snapshot.tls.as_ref().and_then(|t| t.client_ca.as_ref());
    let clients = client_cert::verifier(client_ca, provider)?;
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(certificate.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(RESUMABLE_SESSIONS);
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Sessions a returning client can resume (TLS 1.3 tickets naming an
/// entry of this cache; the oldest go first). rustls keeps 256; a front end
/// with more clients than that would make most of them sign and send the
/// certificate again. Some 300 bytes each, so ~1.2 MiB when full (HAProxy
/// keeps 20,000 by default, nginx's usual 10 MiB cache ~40,000).
const RESUMABLE_SESSIONS: usize = 4096;

impl ResolvesServerCert for LiveCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certificate())
    }
}

/// The few facts of an X.509 certificate (RFC 5280 §4.1) that decide
/// whether it can be served: version and validity. A bounded DER walk
/// over the `TBSCertificate`; anything unexpected is `None`.
mod x509 {
    pub struct Facts {
        pub version: u64,
        /// Seconds since the Unix epoch (0 for earlier dates).
        pub not_before: u64,
        pub not_after: u64,
        /// Issuer and subject are the same name (a root, or self-signed).
        pub self_issued: bool,
    }

    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const VERSION: u8 = 0xa0;
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;

    pub fn facts(der: &[u8]) -> Option<Facts> {
        let (certificate, _) = expect(der, SEQUENCE)?;
        let (tbs, _) = expect(certificate, SEQUENCE)?;
        let (version, rest) = match tlv(tbs)? {
            (VERSION, explicit, rest) => {
                let (number, _) = expect(explicit, INTEGER)?;
                match number {
                    [v] if *v < 3 => (u64::from(*v) + 1, rest),
                    _ => (0, rest),
                }
            }
            // RFC 5280 §4.1.2.1: version absent = v1.
            _ => (1, tbs),
        };
        let (_serial, rest) = expect(rest, INTEGER)?;
        let (_signature, rest) = expect(rest, SEQUENCE)?;
        let (issuer, rest) = expect(rest, SEQUENCE)?;
        let (validity, rest) = expect(rest, SEQUENCE)?;
        let (subject, _) = expect(rest, SEQUENCE)?;
        let (not_before, rest) = time(validity)?;
        let (not_after, _) = time(rest)?;
        Some(Facts {
            version,
            not_before,
            not_after,
            self_issued: issuer == subject,
        })
    }

    /// One tag-length-value: (tag, content, what follows).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (length, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let (bytes, rest) = rest.split_at(count);
            let length = bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
            (length, rest)
        };
        if rest.len() < length {
            return None;
        }
        let (content, rest) = rest.split_at(length);
        Some((tag, content, rest))
    }

    fn expect(input: &[u8], wanted: u8) -> Option<(&[u8], &[u8])> {
        let (tag, content, rest) = tlv(input)?;
        (tag == wanted).then_some((content, rest))
    }

    /// RFC 5280 §4.1.2.5: UTCTime `YYMMDDHHMMSSZ` (years 1950-2049) or
    /// GeneralizedTime `YYYYMMDDHHMMSSZ`.
    fn time(input: &[u8]) -> Option<(u64, &[u8])> {
        let (tag, content, rest) = tlv(input)?;
        let text = std::str::from_utf8(content).ok()?.strip_suffix('Z')?;
        // Digits only: sliced by bytes below, which a wider character
        // would not fall on.
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (year, rest_text) = match (tag, text.len()) {
            (UTC_TIME, 12) => {
                let yy: i64 = text[..2].parse().ok()?;
                (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
            }
            (GENERALIZED_TIME, 14) => (text[..4].parse().ok()?, &text[4..]),
            _ => return None,
        };
        if !rest_text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let field = |at: usize| -> Option<i64> { rest_text.get(at..at + 2)?.parse().ok() };
        let (month, day) = (field(0)?, field(2)?);
        let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return None;
        }
        let days = days_from_civil(year, month, day);
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
        Some((u64::try_from(seconds).unwrap_or(0), rest))
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
    /// `days_from_civil`).
    fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
        let year = if month <= 2 { year - 1 } else { year };
        let era = year.div_euclid(400);
        let year_of_era = year - era * 400;
        let month_index = (month + 9) % 12;
        let day_of_year = (153 * month_index + 2) / 5 + day - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        era * 146_097 + day_of_era - 719_468
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn dates_count_from_the_epoch() {
            assert_eq!(days_from_civil(1970, 1, 1), 0);
            assert_eq!(days_from_civil(2000, 3, 1), 11_017);
            let (at, _) = time(b"\x17\x0d491231235959Z").expect("UTCTime");
            assert_eq!(at, 2_524_607_999);
            let (at, _) = time(b"\x18\x0f19500101000000Z").expect("GeneralizedTime");
            assert_eq!(at, 0);
            assert!(time(b"\x17\x0d4912312359xxZ").is_none());
            // Twelve bytes, but a wide character where the year is: no
            // slice may fall inside it.
            assert!(time("\x17\x0d\u{20ac}000000000Z".as_bytes()).is_none());
            assert!(time("\x18\x0f20\u{20ac}000000000Z".as_bytes()).is_none());
        }

        #[test]
        fn version_validity_and_self_issue_of_a_real_certificate() {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params =
                rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
            params.not_before = rcgen::date_time_ymd(2001, 2, 3);
            params.not_after = rcgen::date_time_ymd(2051, 1, 1);
            let cert = params.self_signed(&key).expect("certificate");
            let read = facts(cert.der()).expect("a certificate");
            assert_eq!(read.version, 3);
            assert_eq!(read.not_before, 981_158_400);
            assert_eq!(read.not_after, 2_556_144_000);
            assert!(read.self_issued);
            assert!(facts(&cert.der()[..40]).is_none());
        }
    }
}
