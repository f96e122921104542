//! Throw-away certificates for the tests, in a temporary folder.

use std::{
    fs,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// Which CA signs a certificate.
#[derive(Clone, Copy)]
pub enum Signer {
    /// The CA the agent trusts.
    Ours,
    /// A CA the agent has never heard of.
    Other,
}

/// A client's certificate and key files.
pub struct ClientFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct Pki {
    dir: tempfile::TempDir,
    ours: CertifiedIssuer<'static, KeyPair>,
    other: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// Two CAs; `ca.pem` holds the trusted one.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ours = ca("stockade test CA");
        let other = ca("someone else's CA");
        fs::write(dir.path().join("ca.pem"), ours.pem()).unwrap();
        Self { dir, ours, other }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// Writes `agent.pem` and `agent.key`, each by a rename over the old
    /// file, as a Kubernetes Secret update replaces them.
    pub fn write_agent(&self, serial: u64) {
        let mut params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ours).unwrap();
        replace(&self.path("agent.pem"), &cert.pem());
        replace(&self.path("agent.key"), &key.serialize_pem());
    }

    /// A client certificate naming `san` (a URI when it has "://", a DNS
    /// name otherwise).
    pub fn client(&self, name: &str, san: &str, signer: Signer, expired: bool) -> ClientFiles {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![if san.contains("://") {
            SanType::URI(san.try_into().unwrap())
        } else {
            SanType::DnsName(san.try_into().unwrap())
        }];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let issuer = match signer {
            Signer::Ours => &self.ours,
            Signer::Other => &self.other,
        };
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        let files = ClientFiles {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
        };
        fs::write(&files.cert, cert.pem()).unwrap();
        fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    /// The base64 lines of every key file written so far: none of them
    /// may ever appear in a log.
    pub fn key_material(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for entry in fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "key") {
                let text = fs::read_to_string(&path).unwrap();
                lines.extend(
                    text.lines()
                        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                        .map(str::to_owned),
                );
            }
        }
        lines
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn replace(path: &Path, text: &str) {
    let next = path.with_extension("next");
    fs::write(&next, text).unwrap();
    fs::rename(&next, path).unwrap();
}
