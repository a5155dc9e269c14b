//! Which servers the agent trusts, and what to say when it refuses one.
//!
//! One `rustls` client configuration serves every connection to the backend (HTTP calls, the
//! package download, the TUF metadata and the WebSocket): the operating system's trust store
//! (the Windows certificate store, or the system roots on Linux, through the platform verifier),
//! and, when it refuses a server, the PEM certificates of a private PKI given with `--ca-cert`,
//! checked by rustls' own WebPKI verifier (chain, validity, name; no revocation lookups, as a
//! private PKI's CRLs are rarely reachable). A server certificate equal byte for byte to one
//! of the `--ca-cert` certificates is accepted as a pin (a self-signed certificate such as
//! `openssl req -x509` makes, `CA:TRUE` and all, used by the server as its own), with its host
//! name and validity still checked; docs/SECURITY.md argues why that is no wider trust than
//! the same file as a CA. The private roots are kept out of the Windows
//! certificate engine on purpose: its extra-root engine needs a Windows 8 structure that Wine
//! refuses ("Invalid parameter"), and the PKI needs nothing from the OS. A certificate the
//! system found revoked is never given a second chance. This module never turns verification
//! off and never decides what to do about a failure: it builds the configuration and names a
//! refused certificate's problem in words an operator can act on.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
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
    /// A certificate of the CA file cannot be a trust anchor.
    #[error("the CA file holds a certificate that cannot be a CA: {0}")]
    BadCa(String),
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

/// The client configuration for the backend: the OS trust store, then `extra_ca_pem`.
pub fn client_config(extra_ca_pem: Option<&str>) -> Result<ClientConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let system =
        Verifier::new(provider.clone()).map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match extra_ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in parse_ca_pem(pem)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsSetupError::BadCa(e.to_string()))?;
            }
            let private =
                WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone())
                    .build()
                    .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
            let pins = parse_ca_pem(pem)?;
            Arc::new(SystemThenPrivateCa {
                system,
                private,
                pins,
            })
        }
        None => Arc::new(system),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Verifier(e.to_string()))?
        .dangerous() // a custom verifier, not "no verification": both verifiers check everything
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

/// The system's verifier first; when it refuses (for any reason but revocation), a pinned
/// certificate or the private CA's. Handshake signatures are checked by the system's verifier
/// either way (for a pin too: the server proves it holds the pinned certificate's key).
#[derive(Debug)]
struct SystemThenPrivateCa {
    system: Verifier,
    private: Arc<WebPkiServerVerifier>,
    /// The `--ca-cert` certificates, any of which the server may present as its own.
    pins: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for SystemThenPrivateCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let by_system = self.system.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let refused = match by_system {
            Ok(verified) => return Ok(verified),
            Err(refused) if is_revoked(&refused) => return Err(refused),
            Err(refused) => refused,
        };
        if self.pins.iter().any(|pin| pin == end_entity) {
            return verify_pinned(end_entity, server_name, now);
        }
        self.private
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|by_private| refusal(refused, by_private))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.system.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.system.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.system.supported_verify_schemes()
    }
}

/// A server certificate equal to a pinned one: valid now and naming `server_name` (in its
/// subjectAltName, as WebPKI wants); no chain and no basic constraints, as it is trusted itself.
fn verify_pinned(
    pinned: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<ServerCertVerified, rustls::Error> {
    let invalid = rustls::Error::InvalidCertificate;
    let (_, parsed) = x509_parser::parse_x509_certificate(pinned)
        .map_err(|_| invalid(CertificateError::BadEncoding))?;
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let validity = parsed.validity();
    if now_secs < validity.not_before.timestamp() {
        return Err(invalid(CertificateError::NotValidYet));
    }
    if now_secs > validity.not_after.timestamp() {
        return Err(invalid(CertificateError::Expired));
    }
    webpki::EndEntityCert::try_from(pinned)
        .map_err(|_| invalid(CertificateError::BadEncoding))?
        .verify_is_valid_for_subject_name(server_name)
        .map_err(|_| invalid(CertificateError::NotValidForName))?;
    Ok(ServerCertVerified::assertion())
}

fn is_revoked(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::InvalidCertificate(CertificateError::Revoked)
    )
}

/// The error to report when both verifiers refused: the private CA's, unless the certificate
/// does not chain to it at all (then what the system said).
fn refusal(by_system: rustls::Error, by_private: rustls::Error) -> rustls::Error {
    match by_private {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => by_system,
        other => other,
    }
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
            "certificate does not name this server (name mismatch: its subjectAltName must list \
             the host name or IP address in --server, e.g. openssl req -x509 ... -addext \
             subjectAltName=DNS:cms.example.com,IP:10.0.0.5)"
                .into()
        }
        // WebPKI's error, passed through rustls as an opaque one.
        CertificateError::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
            "the server presents a CA certificate (CA:TRUE, as openssl req -x509 makes) as its \
             own: pass that very certificate with --ca-cert to pin it, or sign a server \
             certificate with a CA and pass the CA"
                .into()
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
    fn the_private_cas_verdict_wins_unless_the_certificate_is_not_its_own() {
        let invalid = |e| rustls::Error::InvalidCertificate(e);
        let system = || invalid(CertificateError::UnknownIssuer);
        assert_eq!(
            refusal(system(), invalid(CertificateError::Expired)),
            invalid(CertificateError::Expired)
        );
        assert_eq!(
            refusal(
                invalid(CertificateError::NotValidForName),
                invalid(CertificateError::UnknownIssuer)
            ),
            invalid(CertificateError::NotValidForName)
        );
        assert!(is_revoked(&invalid(CertificateError::Revoked)));
        assert!(!is_revoked(&system()));
    }

    #[test]
    fn a_ca_file_is_turned_into_a_configuration_or_refused() {
        assert!(client_config(None).is_ok());
        assert_eq!(
            client_config(Some("no pem here")).err(),
            Some(TlsSetupError::NoCertificate)
        );
    }

    #[test]
    fn a_ca_certificate_as_the_servers_own_is_explained() {
        let webpki = rustls::OtherError(Arc::new(webpki::Error::CaUsedAsEndEntity));
        let problem = describe(&CertificateError::Other(webpki));
        assert!(problem.contains("--ca-cert to pin it"), "{problem}");
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
