//! A throwaway PKI made in the test: a root CA, an intermediate, and server certificates it
//! signs (valid, expired, for another name; ECDSA or RSA keys), written as PEM files the way an
//! operator would hand them to `cms-server serve --tls-cert/--tls-key` and `cms_agent --ca-cert`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SignatureAlgorithm,
};
use time::{Duration, OffsetDateTime};

/// The CA and where its files go.
pub struct Pki {
    dir: PathBuf,
    intermediate: Issuer<'static, KeyPair>,
    intermediate_pem: String,
    /// The root certificate (what `--ca-cert` gets).
    pub root_pem: String,
}

/// One server certificate: the chain file (leaf + intermediate) and its key file.
pub struct ServerCert {
    /// `--tls-cert`.
    pub cert: PathBuf,
    /// `--tls-key`.
    pub key: PathBuf,
}

impl Pki {
    /// A root and an intermediate, in `dir`; the root is also written to `dir/ca.pem`.
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("CMS test root");
        let root_pem = root_params.self_signed(&root_key).unwrap().pem();
        let root = Issuer::new(root_params, root_key);
        let intermediate_key = KeyPair::generate().unwrap();
        let intermediate_params = ca_params("CMS test intermediate");
        let intermediate_pem = intermediate_params
            .signed_by(&intermediate_key, &root)
            .unwrap()
            .pem();
        std::fs::write(dir.join("ca.pem"), &root_pem).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            intermediate: Issuer::new(intermediate_params, intermediate_key),
            intermediate_pem,
            root_pem,
        }
    }

    /// `dir/ca.pem`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `names`, valid from `from_days` to `to_days` around today, with an
    /// ECDSA P-256 key or (when `rsa`) an RSA-2048 key, written as `name.crt` and `name.key`.
    pub fn server_cert(
        &self,
        name: &str,
        names: &[&str],
        days: (i64, i64),
        rsa: bool,
    ) -> ServerCert {
        let algorithm: &'static SignatureAlgorithm = if rsa {
            &rcgen::PKCS_RSA_SHA256
        } else {
            &rcgen::PKCS_ECDSA_P256_SHA256
        };
        let key = KeyPair::generate_for(algorithm).unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = OffsetDateTime::now_utc();
        params.not_before = now + Duration::days(days.0);
        params.not_after = now + Duration::days(days.1);
        let leaf = params.signed_by(&key, &self.intermediate).unwrap().pem();
        let files = ServerCert {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, format!("{leaf}{}", self.intermediate_pem)).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
}

/// A self-signed certificate the way `openssl req -x509` makes one (`CA:TRUE`, its own issuer)
/// for `names`, valid `days` around today, to serve as the server's own certificate; written
/// as `dir/name.crt` and `dir/name.key`.
pub fn self_signed_server_cert(
    dir: &Path,
    name: &str,
    names: &[&str],
    days: (i64, i64),
) -> ServerCert {
    std::fs::create_dir_all(dir).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let now = OffsetDateTime::now_utc();
    params.not_before = now + Duration::days(days.0);
    params.not_after = now + Duration::days(days.1);
    let files = ServerCert {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.cert, params.self_signed(&key).unwrap().pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}
