//! Certificates for the harness: one CA that signs the API server's serving certificate, the
//! admin client certificate, client certificates for named identities (so admission sees who
//! created an object), and serving certificates for ests's own webhook and extender.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate and key written as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The harness CA and the files it issued.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    pub ca_cert: PathBuf,
    pub ca_pem: String,
}

impl Pki {
    /// Creates a CA in `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "ests-harness-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        let ca_pem = cert.pem();
        let ca_cert = dir.join("ca.crt");
        write(&ca_cert, &ca_pem)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
            ca_cert,
            ca_pem,
        })
    }

    /// A certificate for a server reachable as `localhost`, 127.0.0.1 and `dns_names`.
    pub fn serving(&self, name: &str, dns_names: &[&str]) -> anyhow::Result<CertFiles> {
        self.serving_with_ips(name, dns_names, &[])
    }

    /// A certificate for a server reachable as `localhost`, 127.0.0.1, `dns_names` and `ips`.
    pub fn serving_with_ips(
        &self,
        name: &str,
        dns_names: &[&str],
        ips: &[IpAddr],
    ) -> anyhow::Result<CertFiles> {
        let mut sans: Vec<String> = vec!["localhost".into()];
        sans.extend(dns_names.iter().map(|d| d.to_string()));
        let mut params = CertificateParams::new(sans)?;
        params.subject_alt_names.extend(
            std::iter::once(IpAddr::V4(Ipv4Addr::LOCALHOST))
                .chain(ips.iter().copied())
                .map(SanType::IpAddress),
        );
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(name, params)
    }

    /// A client certificate that the API server authenticates as `user` in `groups`.
    pub fn client(
        &self,
        file_stem: &str,
        user: &str,
        groups: &[&str],
    ) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file_stem, params)
    }

    /// A key pair for signing service-account tokens: (private key, public key) files.
    pub fn service_account_key(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate().context("generating the service-account key")?;
        let private = self.dir.join("sa.key");
        let public = self.dir.join("sa.pub");
        write(&private, &key.serialize_pem())?;
        write(&public, &key.public_key_pem())?;
        Ok((private, public))
    }

    fn issue(&self, file_stem: &str, mut params: CertificateParams) -> anyhow::Result<CertFiles> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing the certificate {file_stem}"))?;
        let files = CertFiles {
            cert: self.dir.join(format!("{file_stem}.crt")),
            key: self.dir.join(format!("{file_stem}.key")),
        };
        write(&files.cert, &cert.pem())?;
        write(&files.key, &key.serialize_pem())?;
        Ok(files)
    }
}

fn write(path: &Path, content: &str) -> anyhow::Result<()> {
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}
