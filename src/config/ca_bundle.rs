//! A PEM bundle of CA certificates read as every trust store of the
//! gateway reads one (upstream `ca_bundle`, `trustStoreAlias`, the token
//! store's `sslrootcert`, and `check`): the certificates rustls accepts
//! as roots, the other blocks left out. A bundle that leaves none trusts
//! nothing; each reader says so in its own terms.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// The certificates of `pem` that can be trusted as roots.
pub fn usable_certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .filter(|cert| RootCertStore::empty().add(cert.clone()).is_ok())
        .collect()
}

/// The roots of `pem` ([`usable_certificates`]); empty when none is.
pub fn roots(pem: &[u8]) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(usable_certificates(pem));
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_that_is_no_certificate_is_left_out() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("certificate").pem();
        let junk = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
        let bundle = format!("{junk}{ca}");
        assert_eq!(usable_certificates(bundle.as_bytes()).len(), 1);
        assert_eq!(roots(bundle.as_bytes()).len(), 1);
        assert!(roots(junk.as_bytes()).is_empty());
    }
}
