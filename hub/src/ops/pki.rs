//! Development PKI: a national root for `tabadol dev` and tests, the hub's server
//! certificate, and one client certificate per agency (`tabadol pki init|issue`).
//!
//! Production deployments use the government PKI (R12); this module only creates
//! material in the same shape so everything else runs unchanged.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Errors while creating or reading PKI material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("{path} exists but {other} is missing; delete the pki directory or restore the file")]
    Partial { path: PathBuf, other: PathBuf },
}

/// Paths of the PKI material under one directory.
#[derive(Debug, Clone)]
pub struct PkiLayout {
    pub dir: PathBuf,
}

impl PkiLayout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn hub_cert(&self) -> PathBuf {
        self.dir.join("hub.crt")
    }
    pub fn hub_key(&self) -> PathBuf {
        self.dir.join("hub.key")
    }
    pub fn agency_cert(&self, agency: &str) -> PathBuf {
        self.dir.join("agencies").join(format!("{agency}.crt"))
    }
    pub fn agency_key(&self, agency: &str) -> PathBuf {
        self.dir.join("agencies").join(format!("{agency}.key"))
    }
}

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct PemPair {
    pub cert: String,
    pub key: String,
}

/// Options for one issued leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// Subject common name; for agencies this is what `agencies.yaml` matches.
    pub common_name: String,
    /// DNS names and IP addresses for a server certificate (empty for clients).
    pub san_dns: Vec<String>,
    pub san_ips: Vec<std::net::IpAddr>,
    pub server: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A client certificate valid from yesterday for about two years.
    pub fn client(common_name: impl Into<String>) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            common_name: common_name.into(),
            san_dns: Vec::new(),
            san_ips: Vec::new(),
            server: false,
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(730),
        }
    }

    /// The hub's server certificate for loopback use.
    pub fn hub_server() -> Self {
        let mut spec = Self::client("hub.tabadol.ir");
        spec.server = true;
        spec.san_dns = vec!["localhost".into(), "hub.tabadol.ir".into()];
        spec.san_ips = vec![
            std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
        ];
        spec
    }
}

/// Creates a new self-signed root.
pub fn new_root(common_name: &str) -> Result<PemPair, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Tabadol development PKI");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(3650);
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Issues a leaf certificate signed by `ca`.
pub fn issue(ca: &PemPair, spec: &LeafSpec) -> Result<PemPair, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, &ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.common_name.as_str());
    params.distinguished_name = dn;
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = if spec.server {
        vec![ExtendedKeyUsagePurpose::ServerAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    let mut sans = Vec::new();
    for d in &spec.san_dns {
        sans.push(SanType::DnsName(d.clone().try_into()?));
    }
    for ip in &spec.san_ips {
        sans.push(SanType::IpAddress(*ip));
    }
    params.subject_alt_names = sans;
    params.serial_number = Some(rand::random::<[u8; 16]>().to_vec().into());
    let cert = params.signed_by(&key, &issuer)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate revocation list signed by `ca` that revokes the given PEM certificates
/// (as of now; next update in 7 days), PEM encoded — what `tls.crls` in the hub config
/// points at.
pub fn revocation_list(ca: &PemPair, revoked: &[&str]) -> Result<String, PkiError> {
    use rcgen::{
        CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams,
        SerialNumber,
    };
    use rustls_pki_types::pem::PemObject;
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, &ca_key)?;
    let now = OffsetDateTime::now_utc();
    let mut revoked_certs = Vec::with_capacity(revoked.len());
    for pem in revoked {
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| PkiError::Invalid(format!("not a PEM certificate: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| PkiError::Invalid(format!("unreadable certificate: {e}")))?;
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(cert.raw_serial()),
            revocation_time: now - Duration::minutes(1),
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(1),
        next_update: now + Duration::days(7),
        crl_number: SerialNumber::from(now.unix_timestamp() as u64),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(&issuer)?.pem()?)
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    fs::write(path, contents).map_err(io)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

fn load_pair(cert: &Path, key: &Path) -> Result<Option<PemPair>, PkiError> {
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(Some(PemPair {
            cert: read(cert)?,
            key: read(key)?,
        })),
        (false, false) => Ok(None),
        (true, false) => Err(PkiError::Partial {
            path: cert.to_owned(),
            other: key.to_owned(),
        }),
        (false, true) => Err(PkiError::Partial {
            path: key.to_owned(),
            other: cert.to_owned(),
        }),
    }
}

fn save_pair(pair: &PemPair, cert: &Path, key: &Path) -> Result<(), PkiError> {
    write(cert, &pair.cert, false)?;
    write(key, &pair.key, true)
}

/// What [`ensure_dev_pki`] did.
#[derive(Debug, Default)]
pub struct PkiReport {
    pub created_root: bool,
    pub issued: Vec<String>,
}

/// Makes sure `layout` holds a root, the hub certificate and one client certificate per
/// `(agency id, certificate common name)`; existing material is kept.
pub fn ensure_dev_pki(
    layout: &PkiLayout,
    agencies: &[(String, String)],
) -> Result<PkiReport, PkiError> {
    let mut report = PkiReport::default();
    let ca = match load_pair(&layout.ca_cert(), &layout.ca_key())? {
        Some(ca) => ca,
        None => {
            let ca = new_root("Tabadol Development Root CA")?;
            save_pair(&ca, &layout.ca_cert(), &layout.ca_key())?;
            report.created_root = true;
            ca
        }
    };
    if load_pair(&layout.hub_cert(), &layout.hub_key())?.is_none() || report.created_root {
        let hub = issue(&ca, &LeafSpec::hub_server())?;
        save_pair(&hub, &layout.hub_cert(), &layout.hub_key())?;
        report.issued.push("hub".into());
    }
    for (agency, cn) in agencies {
        let (cert, key) = (layout.agency_cert(agency), layout.agency_key(agency));
        if load_pair(&cert, &key)?.is_none() || report.created_root {
            let pair = issue(&ca, &LeafSpec::client(cn.clone()))?;
            save_pair(&pair, &cert, &key)?;
            report.issued.push(agency.clone());
        }
    }
    Ok(report)
}

/// Issues (or re-issues) one agency certificate from the root in `layout`.
pub fn issue_agency(layout: &PkiLayout, agency: &str, common_name: &str) -> Result<(), PkiError> {
    let ca = load_pair(&layout.ca_cert(), &layout.ca_key())?.ok_or_else(|| PkiError::Io {
        path: layout.ca_cert(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no root here; run `tabadol pki init` first",
        ),
    })?;
    let pair = issue(&ca, &LeafSpec::client(common_name))?;
    save_pair(
        &pair,
        &layout.agency_cert(agency),
        &layout.agency_key(agency),
    )
}

/// Reads a PEM pair from disk.
pub fn read_pair(cert: &Path, key: &Path) -> Result<PemPair, PkiError> {
    Ok(PemPair {
        cert: read(cert)?,
        key: read(key)?,
    })
}

/// Reads a root's PEM pair from `layout`.
pub fn read_ca(layout: &PkiLayout) -> Result<PemPair, PkiError> {
    read_pair(&layout.ca_cert(), &layout.ca_key())
}
