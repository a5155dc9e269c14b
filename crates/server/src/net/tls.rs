//! HTTPS and WSS for `cms-server serve --tls-cert FILE --tls-key FILE`.
//!
//! The certificate chain and key are PEM files (ECDSA, Ed25519 or RSA keys; PKCS#8, SEC1 or
//! PKCS#1). They are checked at start (a missing, unreadable or mismatched pair stops the server
//! with a clear message) and watched afterwards: when either file changes on disk (a renewal),
//! the next handshake after the change uses the new pair, with no restart; a renewal that
//! cannot be loaded is logged and the previous pair stays in use. Each handshake runs in its
//! connection's own task with a deadline, inside the connection budget (`net`), so a client
//! that never finishes one holds nothing but its socket, and only until the deadline.
//!
//! This module must never log key material, and never serve without a verified-loadable pair.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
pub use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the files are looked at for a renewal (one `stat` each, on a handshake).
const RELOAD_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The two PEM files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf.
    pub key: PathBuf,
}

/// Why the certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing or unreadable.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// `--tls-cert` or `--tls-key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("--tls-cert {0} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate(PathBuf),
    /// The key file holds no usable private key.
    #[error("--tls-key {path} holds no usable private key: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("--tls-key {key} does not belong to the certificate in --tls-cert {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the configuration.
    #[error("cannot set up TLS: {0}")]
    Config(String),
}

/// Loads and checks the pair.
pub fn load_pair(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = read(&files.cert, "--tls-cert")?;
    let key_pem = read(&files.key, "--tls-key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::NoCertificate(files.cert.clone()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let provider = aws_lc_rs::default_provider();
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::BadKey {
                path: files.key.clone(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|_| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
    })?;
    Ok(Arc::new(certified))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Both files' modification times: a change to either means a renewal.
fn stamp(files: &TlsFiles) -> Option<(SystemTime, SystemTime)> {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Some((modified(&files.cert)?, modified(&files.key)?))
}

/// Hands every handshake the current pair, re-reading the files after they change.
#[derive(Debug)]
struct ReloadingResolver {
    files: TlsFiles,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    pair: Arc<CertifiedKey>,
    stamp: Option<(SystemTime, SystemTime)>,
    checked: Instant,
}

impl ReloadingResolver {
    fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let stamp = stamp(&files);
        let pair = load_pair(&files)?;
        let state = Mutex::new(Loaded {
            pair,
            stamp,
            checked: Instant::now(),
        });
        Ok(ReloadingResolver { files, state })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.checked.elapsed() >= RELOAD_CHECK_EVERY {
            loaded.checked = Instant::now();
            let now = stamp(&self.files);
            if now != loaded.stamp {
                loaded.stamp = now;
                self.reload(&mut loaded);
            }
        }
        loaded.pair.clone()
    }

    fn reload(&self, loaded: &mut Loaded) {
        match load_pair(&self.files) {
            Ok(pair) => {
                loaded.pair = pair;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                tracing::error!(%error, "renewed TLS certificate cannot be used; keeping the previous one")
            }
        }
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The acceptor for `files`, checked now.
pub fn acceptor(files: TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let resolver = Arc::new(ReloadingResolver::new(files)?);
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Runs the TLS handshake on `io` within [`HANDSHAKE_TIMEOUT`]; `None` (logged at debug level,
/// a flood must not fill the log) when the client fails or stalls.
pub async fn handshake<I>(acceptor: &TlsAcceptor, io: I, peer: SocketAddr) -> Option<TlsStream<I>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}
