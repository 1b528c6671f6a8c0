//! Signed checkpoints of the audit chain: every so often (and at shutdown) the hub signs
//! "the log holds records 1..=seq and record seq has this hash" with its TLS key, so that
//! cutting the tail off the log, or rewriting a record and re-hashing the chain after it,
//! no longer goes unnoticed by `tabadol audit verify`.
//!
//! Signing and verification use the rustls (ring) crypto provider; nothing here is
//! hand-rolled cryptography.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::sign::SigningKey;
use rustls::SignatureScheme;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Domain separation: these bytes start every signed checkpoint message, so a checkpoint
/// signature can never be mistaken for (or made from) a TLS handshake signature.
const CONTEXT: &[u8] = b"tabadol audit checkpoint v1\0";

/// Schemes offered to the key, in order of preference; the key picks the one it can do.
const SCHEMES: [SignatureScheme; 5] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA256,
];

/// One signed statement about the audit chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last record covered: the log holds records 1..=seq.
    pub seq: u64,
    /// Hash of record `seq` (which commits to every record before it).
    pub hash: String,
    /// When the checkpoint was made, Unix microseconds.
    pub time_micros: i64,
    /// Hex SHA-256 of the DER certificate whose key signed (a hint for finding the
    /// certificate; the signature is what is checked).
    pub signer_sha256: String,
    /// TLS SignatureScheme code of the signature.
    pub scheme: u16,
    /// Hex signature over [`Checkpoint::message`].
    pub signature: String,
}

impl Checkpoint {
    /// The signed bytes: context, sequence, hash and time.
    pub fn message(seq: u64, hash: &str, time_micros: i64) -> Vec<u8> {
        let mut m = Vec::with_capacity(CONTEXT.len() + 16 + hash.len() + 8);
        m.extend_from_slice(CONTEXT);
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&(hash.len() as u64).to_be_bytes());
        m.extend_from_slice(hash.as_bytes());
        m.extend_from_slice(&time_micros.to_be_bytes());
        m
    }

    /// When it was made, as RFC 3339 text (for reports).
    pub fn time_text(&self) -> String {
        jiff::Timestamp::from_microsecond(self.time_micros)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| format!("{} µs", self.time_micros))
    }
}

/// Problems with the hub's key or certificate, or with one checkpoint's signature.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error(
        "the signature does not verify with certificate sha256:{0} (forged or altered checkpoint)"
    )]
    BadSignature(String),
    #[error("signed by certificate sha256:{0}, which is not among the certificates given; pass the hub certificate of that time with --cert")]
    UnknownSigner(String),
    #[error("signature scheme {0:#06x} is not supported")]
    Scheme(u16),
}

fn file_error(path: &Path, message: impl ToString) -> CheckpointError {
    CheckpointError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Reads the first certificate of a PEM file.
fn read_cert(path: &Path) -> Result<CertificateDer<'static>, CheckpointError> {
    let pem = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let first = rustls_pemfile::certs(&mut pem.as_slice()).next();
    first
        .ok_or_else(|| file_error(path, "holds no PEM certificate"))?
        .map_err(|e| file_error(path, e))
}

/// Signs checkpoints with the hub's TLS key.
#[derive(Clone)]
pub struct CheckpointSigner {
    key: Arc<dyn SigningKey>,
    signer_sha256: String,
    /// Checks signatures made with this key (the hub verifies its log at start-up).
    verifier: CheckpointVerifier,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("signer_sha256", &self.signer_sha256)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// The hub's certificate (PEM, first one is the hub's) and private key (PEM).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, CheckpointError> {
        let der = read_cert(cert)?;
        let pem = std::fs::read(key).map_err(|e| file_error(key, e))?;
        let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_slice())
            .map_err(|e| file_error(key, e))?
            .ok_or_else(|| file_error(key, "holds no PEM private key"))?;
        let signing = any_supported_type(&key_der).map_err(|e| file_error(key, e))?;
        let signer = Self {
            key: signing,
            signer_sha256: fingerprint(&der),
            verifier: CheckpointVerifier::from_pem_files(&[cert])?,
        };
        // Fail at start-up, not at the first checkpoint, when the key cannot sign.
        let probe = signer.sign(0, "", 0).map_err(|e| file_error(key, e))?;
        signer.verifier.verify(&probe).map_err(|_| {
            file_error(
                key,
                format!("is not the key of the certificate {}", cert.display()),
            )
        })?;
        Ok(signer)
    }

    /// A verifier for this signer's certificate.
    pub fn verifier(&self) -> CheckpointVerifier {
        self.verifier.clone()
    }

    /// A checkpoint for record `seq` with hash `hash`, made at `time_micros`.
    pub fn sign(&self, seq: u64, hash: &str, time_micros: i64) -> Result<Checkpoint, String> {
        let signer = self
            .key
            .choose_scheme(&SCHEMES)
            .ok_or("the hub key supports none of the checkpoint signature schemes")?;
        let signature = signer
            .sign(&Checkpoint::message(seq, hash, time_micros))
            .map_err(|e| e.to_string())?;
        Ok(Checkpoint {
            seq,
            hash: hash.to_owned(),
            time_micros,
            signer_sha256: self.signer_sha256.clone(),
            scheme: u16::from(signer.scheme()),
            signature: hex::encode(signature),
        })
    }
}

/// Checks checkpoint signatures against one or more hub certificates.
#[derive(Debug, Clone, Default)]
pub struct CheckpointVerifier {
    /// (certificate fingerprint, raw subject public key).
    keys: Vec<(String, Vec<u8>)>,
}

impl CheckpointVerifier {
    /// Reads the hub certificates (PEM) whose keys may have signed.
    pub fn from_pem_files(paths: &[impl AsRef<Path>]) -> Result<Self, CheckpointError> {
        let mut keys = Vec::new();
        for path in paths {
            let path = path.as_ref();
            let der = read_cert(path)?;
            let (_, cert) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| file_error(path, format!("not an X.509 certificate: {e}")))?;
            let spki = cert.public_key().subject_public_key.data.to_vec();
            keys.push((fingerprint(&der), spki));
        }
        Ok(Self { keys })
    }

    /// Whether any certificate was given.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a certificate with this fingerprint was given.
    pub fn knows(&self, signer_sha256: &str) -> bool {
        self.keys.iter().any(|(f, _)| f == signer_sha256)
    }

    /// Checks one checkpoint's signature.
    pub fn verify(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        let scheme = SignatureScheme::from(cp.scheme);
        let provider = rustls::crypto::ring::default_provider();
        let algs = provider
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(s, _)| *s == scheme)
            .map(|(_, algs)| *algs)
            .ok_or(CheckpointError::Scheme(cp.scheme))?;
        let Some((fp, spki)) = self.keys.iter().find(|(f, _)| *f == cp.signer_sha256) else {
            return Err(CheckpointError::UnknownSigner(cp.signer_sha256.clone()));
        };
        let sig =
            hex::decode(&cp.signature).map_err(|_| CheckpointError::BadSignature(fp.clone()))?;
        let msg = Checkpoint::message(cp.seq, &cp.hash, cp.time_micros);
        // A key of the wrong type for an algorithm fails that algorithm; any success is a
        // valid signature by this certificate's key.
        if algs
            .iter()
            .any(|alg| alg.verify_signature(spki, &msg, &sig).is_ok())
        {
            Ok(())
        } else {
            Err(CheckpointError::BadSignature(fp.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_pair(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let ca = crate::ops::pki::new_root("test root").unwrap();
        let hub = crate::ops::pki::issue(&ca, &crate::ops::pki::LeafSpec::hub_server()).unwrap();
        let (cert, key) = (dir.join("hub.crt"), dir.join("hub.key"));
        std::fs::write(&cert, &hub.cert).unwrap();
        std::fs::write(&key, &hub.key).unwrap();
        (cert, key)
    }

    /// A checkpoint signed with the hub key verifies with the hub certificate; changing
    /// its sequence, hash or time, or checking it with another certificate, fails.
    #[test]
    fn signed_checkpoint_verifies_and_alterations_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = hub_pair(dir.path());
        let other = tempfile::tempdir().unwrap();
        let (other_cert, _) = hub_pair(other.path());
        let signer = CheckpointSigner::from_pem_files(&cert, &key).unwrap();
        let verifier = CheckpointVerifier::from_pem_files(&[&cert]).unwrap();
        let cp = signer
            .sign(42, &"ab".repeat(32), 1_700_000_000_000_000)
            .unwrap();
        verifier.verify(&cp).unwrap();
        for altered in [
            Checkpoint {
                seq: 41,
                ..cp.clone()
            },
            Checkpoint {
                hash: "cd".repeat(32),
                ..cp.clone()
            },
            Checkpoint {
                time_micros: cp.time_micros + 1,
                ..cp.clone()
            },
        ] {
            assert!(matches!(
                verifier.verify(&altered),
                Err(CheckpointError::BadSignature(_))
            ));
        }
        let stranger = CheckpointVerifier::from_pem_files(&[&other_cert]).unwrap();
        assert!(matches!(
            stranger.verify(&cp),
            Err(CheckpointError::UnknownSigner(_))
        ));
        // A forger who copies the right fingerprint still needs the key.
        let other_signer =
            CheckpointSigner::from_pem_files(&other_cert, &other.path().join("hub.key")).unwrap();
        let forged = Checkpoint {
            signer_sha256: cp.signer_sha256.clone(),
            ..other_signer.sign(42, &cp.hash, cp.time_micros).unwrap()
        };
        assert!(matches!(
            verifier.verify(&forged),
            Err(CheckpointError::BadSignature(_))
        ));
    }
}
