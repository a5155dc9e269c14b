//! Which servers the agent trusts, and what to say when it refuses one.
//!
//! One `rustls` client configuration serves every connection to the backend (HTTP calls, the
//! package download, the TUF metadata and the WebSocket): the operating system's trust store
//! (the Windows certificate store, or the system roots on Linux, through the platform verifier)
//! plus the PEM certificates of a private PKI given with `--ca-cert`. This module never turns
//! verification off and never decides what to do about a failure: it builds the configuration
//! and names a refused certificate's problem in words an operator can act on.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, ClientConfig};
use rustls_platform_verifier::Verifier;

/// Why the trust configuration cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsSetupError {
    /// `--ca-cert` text holds no usable certificate.
    #[error("the CA file holds no PEM certificate (expected -----BEGIN CERTIFICATE----- blocks)")]
    NoCertificate,
    /// A PEM block is damaged.
    #[error("the CA file is not valid PEM: {0}")]
    BadPem(String),
    /// The OS trust store or the verifier could not be set up.
    #[error("cannot set up certificate verification: {0}")]
    Verifier(String),
}

/// The certificates of a PEM text (`--ca-cert`), checked to hold at least one.
pub fn parse_ca_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::BadPem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate);
    }
    Ok(certs)
}

/// The client configuration for the backend: the OS trust store plus `extra_ca_pem`.
pub fn client_config(extra_ca_pem: Option<&str>) -> Result<ClientConfig, TlsSetupError> {
    let extra = match extra_ca_pem {
        Some(pem) => parse_ca_pem(pem)?,
        None => Vec::new(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // Without extra roots, the plain platform verifier: Wine's certificate engine refuses an
    // empty extra store ("Invalid parameter"), and there is nothing to add anyway.
    let verifier = if extra.is_empty() {
        Verifier::new(provider.clone())
    } else {
        Verifier::new_with_extra_roots(extra, provider.clone())
    }
    .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Verifier(e.to_string()))?
        .dangerous() // a custom verifier, not "no verification": the platform verifier checks everything
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(config)
}

/// What was wrong with a certificate the agent refused, in an operator's words; `None` when
/// `error` (or anything it was caused by) is no certificate problem.
pub fn certificate_problem(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(rustls::Error::InvalidCertificate(cert)) = error.downcast_ref::<rustls::Error>() {
        return Some(describe(cert));
    }
    // An io::Error shows its inner error's text but skips it as a source: look inside.
    let inner = error
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| certificate_problem(inner));
    inner.or_else(|| error.source().and_then(certificate_problem))
}

fn describe(error: &CertificateError) -> String {
    match error {
        CertificateError::UnknownIssuer => {
            "certificate issuer is not trusted (unknown CA: pass its certificate with --ca-cert)"
                .into()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "certificate has expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate is not valid yet (check the clock)".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "certificate does not name this server (name mismatch)".into()
        }
        CertificateError::Revoked => "certificate has been revoked".into(),
        other => format!("certificate refused: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_a_reason() {
        assert_eq!(parse_ca_pem(""), Err(TlsSetupError::NoCertificate));
        assert_eq!(
            parse_ca_pem("just text\n"),
            Err(TlsSetupError::NoCertificate)
        );
        assert!(matches!(
            parse_ca_pem("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
            Err(TlsSetupError::BadPem(_))
        ));
    }

    #[test]
    fn certificate_problems_are_found_through_wrappers() {
        let rustls = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let wrapped = std::io::Error::other(rustls);
        let problem = certificate_problem(&wrapped).unwrap();
        assert!(problem.contains("--ca-cert"), "{problem}");
        let plain = std::io::Error::other("connection refused");
        assert_eq!(certificate_problem(&plain), None);
    }
}
