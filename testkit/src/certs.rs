//! Certificates for TLS tests: a CA, a server certificate for `localhost` /
//! `127.0.0.1` that may also act as a client, a client certificate, and a
//! rogue CA with a client certificate of its own, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM files of one test's certificates.
pub struct Pki {
    /// The directory of every file below; the test removes it.
    pub dir: PathBuf,
    /// The test CA's certificate.
    pub ca: PathBuf,
    /// Signed by the CA for `localhost` / `127.0.0.1`, for server and client
    /// authentication: a service's certificate, both as server and as client.
    pub server_cert: PathBuf,
    /// Private key of `server_cert`.
    pub server_key: PathBuf,
    /// Signed by the CA, for client authentication only.
    pub client_cert: PathBuf,
    /// Private key of `client_cert`.
    pub client_key: PathBuf,
    /// A client certificate of the rogue CA, which nothing trusts.
    pub rogue_cert: PathBuf,
    /// Private key of `rogue_cert`.
    pub rogue_key: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    purposes: Vec<ExtendedKeyUsagePurpose>,
) -> (String, String) {
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = purposes;
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// Generates everything into `dir` (created).
    pub fn generate(dir: &Path) -> Pki {
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        std::fs::create_dir_all(dir).unwrap();
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let (ca_cert, issuer) = ca("dbps test CA");
        let (server_cert, server_key) = leaf(&issuer, "dbps service", vec![ServerAuth, ClientAuth]);
        let (client_cert, client_key) = leaf(&issuer, "dbps client", vec![ClientAuth]);
        let (_, rogue_issuer) = ca("rogue CA");
        let (rogue_cert, rogue_key) = leaf(&rogue_issuer, "rogue client", vec![ClientAuth]);
        Pki {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            rogue_cert: write("rogue.pem", &rogue_cert),
            rogue_key: write("rogue.key", &rogue_key),
            dir: dir.to_owned(),
        }
    }
}
