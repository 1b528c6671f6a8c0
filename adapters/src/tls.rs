//! TLS to a provider: the provider's CA (trusted instead of the web PKI roots when given) and
//! the hub's client certificate and key for mutual TLS, read from PEM files and checked.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest PEM file read for provider TLS (a CA bundle or a certificate chain is kilobytes).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// TLS settings of one provider, as checked PEM text.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProviderTls {
    /// PEM certificates of the CA(s) the provider's server certificate must chain to. When
    /// set, only these are trusted (not the web PKI roots).
    pub ca_pem: Option<Vec<u8>>,
    /// The hub's client certificate and key, presented to a provider that asks for one.
    pub client: Option<ClientIdentity>,
}

/// The hub's client certificate chain and private key (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ProviderTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderTls")
            .field("ca", &self.ca_pem.as_ref().map(|p| p.len()))
            .field("client", &self.client)
            .finish()
    }
}

impl fmt::Debug for ClientIdentity {
    // Never print the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

/// Where the TLS files of one provider are (the `tls:` section of a provider in the hub
/// configuration).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderTlsFiles<'a> {
    /// `tls.ca`: PEM bundle of the provider's CA.
    pub ca: Option<&'a Path>,
    /// `tls.cert`: the hub's client certificate chain (PEM).
    pub cert: Option<&'a Path>,
    /// `tls.key`: the hub's client private key (PEM).
    pub key: Option<&'a Path>,
}

impl ProviderTlsFiles<'_> {
    /// Whether any TLS file is named.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

/// One problem with one TLS setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TlsFileError {
    /// `ca`, `cert` or `key`.
    pub field: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl TlsFileError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl ProviderTls {
    /// Reads and checks the files: each exists and is PEM of the right kind, the CA
    /// certificates can anchor a chain, cert and key come together and the key belongs to
    /// the certificate. Every problem is returned, each naming its field and file.
    pub fn read(files: &ProviderTlsFiles<'_>) -> Result<ProviderTls, Vec<TlsFileError>> {
        let mut errors = Vec::new();
        let ca_pem = files
            .ca
            .and_then(|p| read_pem(&mut errors, "ca", p).map(|b| (p, b)))
            .and_then(|(p, pem)| check_ca(&mut errors, p, &pem).then_some(pem));
        let client = match (files.cert, files.key) {
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                let (missing, given) = if files.key.is_none() {
                    ("key", "cert")
                } else {
                    ("cert", "key")
                };
                errors.push(TlsFileError::new(
                    missing,
                    format!(
                        "tls.{given} is set but tls.{missing} is not; the hub's client \
                         certificate needs both its certificate and its key (or neither)"
                    ),
                ));
                None
            }
            (Some(cert), Some(key)) => {
                let cert_pem = read_pem(&mut errors, "cert", cert);
                let key_pem = read_pem(&mut errors, "key", key);
                match (cert_pem, key_pem) {
                    (Some(cert_pem), Some(key_pem))
                        if check_identity(&mut errors, cert, &cert_pem, key, &key_pem) =>
                    {
                        Some(ClientIdentity { cert_pem, key_pem })
                    }
                    _ => None,
                }
            }
        };
        if errors.is_empty() {
            Ok(ProviderTls { ca_pem, client })
        } else {
            Err(errors)
        }
    }
}

fn read_pem(errors: &mut Vec<TlsFileError>, field: &'static str, path: &Path) -> Option<Vec<u8>> {
    let len = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => {
            errors.push(TlsFileError::new(
                field,
                format!("{} is not a file", path.display()),
            ));
            return None;
        }
        Err(e) => {
            errors.push(TlsFileError::new(
                field,
                format!("cannot read {}: {e}", path.display()),
            ));
            return None;
        }
    };
    if len > MAX_PEM_BYTES {
        errors.push(TlsFileError::new(
            field,
            format!(
                "{} has {len} bytes; a PEM file here is at most {MAX_PEM_BYTES}",
                path.display()
            ),
        ));
        return None;
    }
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            errors.push(TlsFileError::new(
                field,
                format!("cannot read {}: {e}", path.display()),
            ));
            None
        }
    }
}

/// The certificates of a PEM file, or an error naming the file.
fn certificates(
    errors: &mut Vec<TlsFileError>,
    field: &'static str,
    path: &Path,
    pem: &[u8],
) -> Option<Vec<CertificateDer<'static>>> {
    match CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>() {
        Ok(certs) if !certs.is_empty() => Some(certs),
        Ok(_) => {
            errors.push(TlsFileError::new(
                field,
                format!(
                    "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                ),
            ));
            None
        }
        Err(e) => {
            errors.push(TlsFileError::new(
                field,
                format!("{} is not valid PEM: {e}", path.display()),
            ));
            None
        }
    }
}

fn check_ca(errors: &mut Vec<TlsFileError>, path: &Path, pem: &[u8]) -> bool {
    let Some(certs) = certificates(errors, "ca", path, pem) else {
        return false;
    };
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        if let Err(e) = roots.add(cert) {
            errors.push(TlsFileError::new(
                "ca",
                format!(
                    "certificate #{} in {} cannot be trusted as a CA: {e}",
                    i + 1,
                    path.display()
                ),
            ));
            return false;
        }
    }
    true
}

fn check_identity(
    errors: &mut Vec<TlsFileError>,
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> bool {
    let certs = certificates(errors, "cert", cert_path, cert_pem);
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(k) => Some(k),
        Err(e) => {
            errors.push(TlsFileError::new(
                "key",
                format!(
                    "{} holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
                    key_path.display()
                ),
            ));
            None
        }
    };
    let (Some(certs), Some(key)) = (certs, key) else {
        return false;
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let built = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_client_auth_cert(certs, key)
        });
    match built {
        Ok(Ok(_)) => true,
        Ok(Err(e)) | Err(e) => {
            errors.push(TlsFileError::new(
                "key",
                format!(
                    "{} does not fit the certificate in {}: {e}",
                    key_path.display(),
                    cert_path.display()
                ),
            ));
            false
        }
    }
}
