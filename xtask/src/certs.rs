//! `cargo xtask certs`: a throw-away CA and the certificates to try the
//! agent's mutual-TLS listener with, made in-process (no openssl).
//!
//! The CA's key is not written: nothing more can be signed with this CA,
//! which is the point of a throw-away one. Run it again for a new set.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The trust domain of the client identities.
const DOMAIN: &str = "spiffe://stockade.test/ns/soc/sa";
/// How long the certificates are valid.
const VALID_DAYS: i64 = 30;

/// The client certificates: file name, role, and whether the agent's CA
/// signs it and it is current.
const CLIENTS: &[(&str, &str, Signing)] = &[
    ("reader", "reader", Signing::Good),
    ("isolator", "isolator", Signing::Good),
    ("responder", "responder", Signing::Good),
    ("rogue", "responder", Signing::OtherCa),
    ("expired", "responder", Signing::Expired),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Signing {
    Good,
    /// Signed by a second CA that the agent does not trust.
    OtherCa,
    /// Signed by the agent's CA, but no longer valid.
    Expired,
}

/// Writes the set into `out`, with `agent_names` (DNS names or addresses)
/// in the agent's certificate beside localhost, 127.0.0.1 and ::1.
pub fn run(out: &Path, agent_names: &[String]) -> anyhow::Result<()> {
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let ca = make_ca("Stockade throw-away CA")?;
    let other = make_ca("Stockade throw-away rogue CA")?;
    write(out, "ca.pem", &ca.pem(), false)?;

    agent(out, &ca, agent_names)?;
    for (name, role, signing) in CLIENTS {
        let issuer = if *signing == Signing::OtherCa {
            &other
        } else {
            &ca
        };
        client(out, name, &format!("{DOMAIN}/{role}"), issuer, *signing)?;
    }
    write(out, "access.toml", &access_toml(), false)?;
    println!(
        "wrote {} (CA, agent, {} clients, access.toml)",
        out.display(),
        CLIENTS.len()
    );
    Ok(())
}

fn make_ca(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = validity(CertificateParams::default(), Signing::Good);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn agent(out: &Path, ca: &Issuer<'_, KeyPair>, extra: &[String]) -> anyhow::Result<()> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(extra.iter().cloned());
    let mut params = validity(CertificateParams::new(names)?, Signing::Good);
    params
        .distinguished_name
        .push(DnType::CommonName, "stockade-agent");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    write(out, "agent.pem", &cert.pem(), false)?;
    write(out, "agent.key", &key.serialize_pem(), true)
}

fn client(
    out: &Path,
    name: &str,
    identity: &str,
    ca: &Issuer<'_, KeyPair>,
    signing: Signing,
) -> anyhow::Result<()> {
    let mut params = validity(CertificateParams::default(), signing);
    params.subject_alt_names = vec![SanType::URI(identity.try_into()?)];
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    write(out, &format!("{name}.pem"), &cert.pem(), false)?;
    write(out, &format!("{name}.key"), &key.serialize_pem(), true)
}

/// Valid from an hour ago for [`VALID_DAYS`], or expired a day ago.
fn validity(mut params: CertificateParams, signing: Signing) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    (params.not_before, params.not_after) = match signing {
        Signing::Expired => (now - Duration::days(10), now - Duration::days(1)),
        _ => (now - Duration::hours(1), now + Duration::days(VALID_DAYS)),
    };
    params
}

fn access_toml() -> String {
    let mut text = String::from(
        "# Who may order what: identities from client certificates, and roles.\n\
         [identities]\n",
    );
    for role in ["reader", "isolator", "responder"] {
        text.push_str(&format!("\"{DOMAIN}/{role}\" = \"{role}\"\n"));
    }
    text
}

/// Keys are created with mode 0600 before any byte is written.
fn write(dir: &Path, name: &str, text: &str, secret: bool) -> anyhow::Result<()> {
    let path = dir.join(name);
    let _ = fs::remove_file(&path);
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_set_has_every_file_and_private_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();

        run(dir.path(), &["node-1.example".into()]).unwrap();

        for name in [
            "ca",
            "agent",
            "reader",
            "isolator",
            "responder",
            "rogue",
            "expired",
        ] {
            let cert = fs::read_to_string(dir.path().join(format!("{name}.pem"))).unwrap();
            assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{name}");
            if name != "ca" {
                let key = dir.path().join(format!("{name}.key"));
                let mode = fs::metadata(&key).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{name}");
            }
        }
        assert!(!dir.path().join("ca.key").exists());
        let access = fs::read_to_string(dir.path().join("access.toml")).unwrap();
        assert!(access.contains("\"spiffe://stockade.test/ns/soc/sa/isolator\" = \"isolator\""));
    }

    #[test]
    fn running_again_replaces_the_set() {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), &[]).unwrap();
        let first = fs::read_to_string(dir.path().join("ca.pem")).unwrap();

        run(dir.path(), &[]).unwrap();

        assert_ne!(
            fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
            first
        );
    }
}
