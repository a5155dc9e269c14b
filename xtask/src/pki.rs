//! A throwaway certificate authority for the tasks that carry the agent's traffic over HTTPS
//! (wine-e2e's network scenario, the bench's TLS measurements): a root CA made with rcgen and
//! one server certificate it signs for `127.0.0.1` and `localhost`, written as the PEM files an
//! operator hands to `cms-server serve --tls-cert/--tls-key` and `cms_agent --ca-cert`.
//!
//! Must never: serve anything but loopback runs (its keys lie unprotected under `target/`), or
//! be reused between runs (a fresh CA each time, valid for days).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use time::{Duration, OffsetDateTime};

/// The names the server certificate carries: what the agent connects to on loopback.
const SERVER_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];
/// How long the certificates are valid (from a day ago).
const VALID_DAYS: i64 = 30;

/// The PEM files of one throwaway CA and the server certificate it signed.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The root certificate: `cms_agent --ca-cert`.
    pub ca: PathBuf,
    /// The server's certificate: `--tls-cert`.
    pub cert: PathBuf,
    /// The server's private key: `--tls-key`.
    pub key: PathBuf,
}

impl TestPki {
    /// Makes a new CA and server certificate in `dir` (`ca.pem`, `server.crt`, `server.key`).
    pub fn create(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let now = OffsetDateTime::now_utc();
        let validity = |params: &mut CertificateParams| {
            params.not_before = now - Duration::days(1);
            params.not_after = now + Duration::days(VALID_DAYS);
        };
        let ca_key = KeyPair::generate().context("cannot make the CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "CMS throwaway test CA");
        validity(&mut ca_params);
        let ca_pem = ca_params.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().context("cannot make the server key")?;
        let mut server_params = CertificateParams::new(SERVER_NAMES.map(str::to_owned).to_vec())?;
        validity(&mut server_params);
        let server_pem = server_params.signed_by(&server_key, &issuer)?.pem();
        let pki = TestPki {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        };
        for (path, text) in [
            (&pki.ca, ca_pem),
            (&pki.cert, server_pem),
            (&pki.key, server_key.serialize_pem()),
        ] {
            fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(pki)
    }

    /// The root certificate's PEM text.
    pub fn ca_pem(&self) -> Result<String> {
        fs::read_to_string(&self.ca).with_context(|| format!("cannot read {}", self.ca.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_hold_a_ca_a_chain_and_a_key() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let pki = TestPki::create(dir.path())?;
        assert!(pki.ca_pem()?.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(fs::read_to_string(&pki.cert)?.contains("BEGIN CERTIFICATE"));
        assert!(fs::read_to_string(&pki.key)?.contains("PRIVATE KEY"));
        assert_ne!(pki.ca_pem()?, fs::read_to_string(&pki.cert)?);
        Ok(())
    }
}
