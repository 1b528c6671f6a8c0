//! Grants and subscriptions as signed agreements (R1, R12): the provider's consent and the
//! secretariat's approval, each a detached JWS (RFC 7515, certificate chain in `x5c`) over
//! the canonical JSON (RFC 8785) of the item's content, kept in `signatures.yaml` beside
//! the policy, and verified against the national root and its CRLs.
//!
//! A signature names its item by id and carries the SHA-256 of the canonical content (and
//! the content itself, so that a change can be pointed at): any change to a grant makes it
//! a new agreement, unsigned until both parties sign again. A signed withdrawal by a party
//! ends the agreement for that content for good (as in the Dutch FSC standard, where a
//! revoked contract is replaced by a new one, never revived).
//!
//! Who must sign: for a grant, the provider agency of its service and the secretariat
//! named in `secretariat.yaml`; for a subscription, every agency publishing one of its
//! event types and the secretariat. A signer is identified by the subject common name of
//! its certificate, as agencies are at the hub's mTLS edge.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::load::{PolicyError, PolicySource, GRANTS_FILE, MAX_DEPTH, MAX_FILE_BYTES};
use crate::load::{AGENCIES_FILE, SUBSCRIPTIONS_FILE};
use crate::model::{CertificateMatch, Grant, Subscription};
use crate::yaml::{self, Node, Step};

/// The signatures file, by default beside the policy files.
pub const SIGNATURES_FILE: &str = "signatures.yaml";
/// The secretariat's identity, beside the policy files.
pub const SECRETARIAT_FILE: &str = "secretariat.yaml";
/// The `typ` claim of every signature this module writes; anything else is refused.
const TYP: &str = "tabadol-policy-signature/1";

/// What a signature is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A grant of `grants.yaml`.
    Grant,
    /// A subscription of `subscriptions.yaml`.
    Subscription,
}

impl Kind {
    /// `grant` or `subscription`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Grant => "grant",
            Kind::Subscription => "subscription",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Kind::Grant => GRANTS_FILE,
            Kind::Subscription => SUBSCRIPTIONS_FILE,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Kind::Grant => "grants",
            Kind::Subscription => "subscriptions",
        }
    }
}

/// In which capacity a party signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The provider agency (of the service, or the publisher of the event types): consent.
    Provider,
    /// The secretariat of the working group: approval.
    Secretariat,
}

impl Role {
    /// `provider` or `secretariat`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Provider => "provider",
            Role::Secretariat => "secretariat",
        }
    }

    /// What this role's signature is called: consent or approval.
    pub fn act(self) -> &'static str {
        match self {
            Role::Provider => "consent",
            Role::Secretariat => "approval",
        }
    }
}

/// What a signature says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Consents to (provider) or approves (secretariat) exactly this content.
    Accept,
    /// Withdraws the consent or approval of exactly this content, for good.
    Withdraw,
}

impl Action {
    /// `accept` or `withdraw`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Withdraw => "withdraw",
        }
    }
}

/// The secretariat of the working group (`secretariat.yaml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secretariat {
    /// Persian name.
    pub name_fa: String,
    /// English name.
    pub name_en: String,
    /// Subject common name of the secretariat's signing certificate.
    pub certificate: CertificateMatch,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretariatFile {
    secretariat: Secretariat,
}

/// One entry of `signatures.yaml`. `signer` and `signed_at` repeat what the JWS says, for
/// the reader; an entry where they differ from the JWS is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    /// Id of the signed grant (or `subscription`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// Id of the signed subscription (or `grant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    /// Capacity of the signer.
    pub role: Role,
    /// Accept or withdraw.
    pub action: Action,
    /// Subject common name of the signing certificate.
    pub signer: String,
    /// When it was signed (RFC 3339, UTC).
    pub signed_at: String,
    /// The compact JWS.
    pub jws: String,
}

impl SignatureEntry {
    /// The item the entry names, when it names exactly one.
    pub fn subject(&self) -> Option<(Kind, &str)> {
        match (&self.grant, &self.subscription) {
            (Some(g), None) => Some((Kind::Grant, g)),
            (None, Some(s)) => Some((Kind::Subscription, s)),
            _ => None,
        }
    }

    /// The entry as YAML list item text (two-space indented), as `signatures.yaml` holds it.
    pub fn to_yaml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
        let (kind, id) = self
            .subject()
            .map_or(("grant", ""), |(k, id)| (k.as_str(), id));
        format!(
            "  - {kind}: {}\n    role: {}\n    action: {}\n    signer: {}\n    signed_at: {}\n    jws: {}\n",
            q(id),
            self.role.as_str(),
            self.action.as_str(),
            q(&self.signer),
            q(&self.signed_at),
            self.jws
        )
    }
}

/// The signed claims (the JWS payload).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    typ: String,
    kind: Kind,
    id: String,
    role: Role,
    action: Action,
    /// Hex SHA-256 of the canonical JSON (RFC 8785) of `content`.
    sha256: String,
    /// The content signed.
    content: serde_json::Value,
    /// Seconds since the Unix epoch.
    iat: i64,
}

/// Why signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The certificate or key could not be used.
    #[error("{0}")]
    Material(String),
    /// The JWS library refused.
    #[error("signing failed: {0}")]
    Jws(#[from] jsonwebtoken::errors::Error),
}

/// The content of a grant as signed: its JSON form (every field of `grants.yaml`).
pub fn grant_content(g: &Grant) -> serde_json::Value {
    serde_json::to_value(g).unwrap_or(serde_json::Value::Null)
}

/// The content of a subscription as signed.
pub fn subscription_content(s: &Subscription) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or(serde_json::Value::Null)
}

/// The canonical JSON (RFC 8785, JCS) of `content`.
pub fn canonical(content: &serde_json::Value) -> Vec<u8> {
    serde_jcs::to_vec(content).unwrap_or_default()
}

/// Hex SHA-256 of the canonical JSON of `content`.
pub fn content_hash(content: &serde_json::Value) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(canonical(content)))
}

/// The certificate chain of a PEM text (leaf first), DER encoded.
pub fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<Vec<u8>> = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("holds no certificate (-----BEGIN CERTIFICATE-----)".to_owned());
    }
    Ok(certs)
}

/// The JWS algorithm a certificate's key signs with, and the key's bytes as the JWS
/// library reads them (the subjectPublicKey of the certificate).
fn key_of(cert_der: &[u8]) -> Result<(jsonwebtoken::Algorithm, Vec<u8>, String), String> {
    use jsonwebtoken::Algorithm;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_owned();
    let spki = cert.public_key();
    let key_oid = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let alg = match (key_oid.as_str(), curve.as_deref()) {
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => Algorithm::ES256,
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => Algorithm::ES384,
        ("1.2.840.113549.1.1.1", _) => Algorithm::RS256,
        ("1.3.101.112", _) => Algorithm::EdDSA,
        (other, curve) => {
            return Err(format!(
                "the certificate's key type ({other}{}) cannot sign; use an ECDSA P-256/P-384, RSA or Ed25519 key",
                curve.map(|c| format!(", curve {c}")).unwrap_or_default()
            ))
        }
    };
    Ok((alg, spki.subject_public_key.data.to_vec(), cn))
}

/// Formats a signing time as `signatures.yaml` writes it.
fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

/// What to sign.
#[derive(Debug, Clone)]
pub struct SignRequest<'a> {
    /// Grant or subscription.
    pub kind: Kind,
    /// Its id.
    pub id: &'a str,
    /// Its content ([`grant_content`], [`subscription_content`]).
    pub content: &'a serde_json::Value,
    /// Capacity of the signer.
    pub role: Role,
    /// Accept or withdraw.
    pub action: Action,
    /// PEM certificate chain of the signer, leaf first (intermediates may follow).
    pub chain_pem: &'a str,
    /// PEM private key (PKCS#8) of the leaf.
    pub key_pem: &'a str,
    /// The signing time.
    pub at: jiff::Timestamp,
}

/// Signs an item: a JWS whose header carries the certificate chain (`x5c`) and whose
/// payload names the item and holds the hash of its canonical content. The key must
/// belong to the certificate (checked by verifying the new signature).
pub fn sign(req: &SignRequest<'_>) -> Result<SignatureEntry, SignError> {
    let chain = pem_certificates(req.chain_pem).map_err(SignError::Material)?;
    let (alg, public, cn) = key_of(&chain[0]).map_err(SignError::Material)?;
    if cn.is_empty() {
        return Err(SignError::Material(
            "the certificate has no subject common name, so it names no agency".to_owned(),
        ));
    }
    let key = match alg {
        jsonwebtoken::Algorithm::ES256 | jsonwebtoken::Algorithm::ES384 => {
            jsonwebtoken::EncodingKey::from_ec_pem(req.key_pem.as_bytes())
        }
        jsonwebtoken::Algorithm::EdDSA => {
            jsonwebtoken::EncodingKey::from_ed_pem(req.key_pem.as_bytes())
        }
        _ => jsonwebtoken::EncodingKey::from_rsa_pem(req.key_pem.as_bytes()),
    }
    .map_err(|e| {
        SignError::Material(format!(
            "the key is not a PEM private key for the certificate's key type: {e}"
        ))
    })?;
    let mut header = jsonwebtoken::Header::new(alg);
    header.x5c = Some(
        chain
            .iter()
            .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
            .collect(),
    );
    let claims = Claims {
        typ: TYP.to_owned(),
        kind: req.kind,
        id: req.id.to_owned(),
        role: req.role,
        action: req.action,
        sha256: content_hash(req.content),
        content: req.content.clone(),
        iat: req.at.as_second(),
    };
    let jws = jsonwebtoken::encode(&header, &claims, &key)?;
    // The key must be the certificate's: otherwise nobody could verify what was signed.
    decode_claims(&jws, alg, &public).map_err(|_| {
        SignError::Material(
            "the key does not belong to the certificate (its signature does not verify with the certificate's public key)"
                .to_owned(),
        )
    })?;
    let (grant, subscription) = match req.kind {
        Kind::Grant => (Some(req.id.to_owned()), None),
        Kind::Subscription => (None, Some(req.id.to_owned())),
    };
    Ok(SignatureEntry {
        grant,
        subscription,
        role: req.role,
        action: req.action,
        signer: cn,
        signed_at: rfc3339(claims.iat),
        jws,
    })
}

fn decode_claims(
    jws: &str,
    alg: jsonwebtoken::Algorithm,
    public: &[u8],
) -> Result<Claims, jsonwebtoken::errors::Error> {
    let key = match alg {
        jsonwebtoken::Algorithm::ES256 | jsonwebtoken::Algorithm::ES384 => {
            jsonwebtoken::DecodingKey::from_ec_der(public)
        }
        jsonwebtoken::Algorithm::EdDSA => jsonwebtoken::DecodingKey::from_ed_der(public),
        _ => jsonwebtoken::DecodingKey::from_rsa_der(public),
    };
    let mut v = jsonwebtoken::Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    jsonwebtoken::decode::<Claims>(jws, &key, &v).map(|d| d.claims)
}

/// What signers are checked against: the national root(s) and, unless turned off, the
/// certificate revocation lists, all DER encoded.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Root certificates.
    pub roots: Vec<Vec<u8>>,
    /// CRLs.
    pub crls: Vec<Vec<u8>>,
    /// Whether signers' certificates are checked against `crls` (an issuer without a CRL
    /// then makes its certificates unusable: deny by default).
    pub check_revocation: bool,
}

impl Trust {
    /// Trust from PEM texts: the roots file and the CRL files.
    pub fn from_pem(roots: &str, crls: &[String], check_revocation: bool) -> Result<Trust, String> {
        use rustls_pki_types::pem::PemObject;
        let roots = pem_certificates(roots)?;
        let mut out = Vec::new();
        for (i, text) in crls.iter().enumerate() {
            let list: Vec<Vec<u8>> =
                rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(text.as_bytes())
                    .map(|c| c.map(|c| c.as_ref().to_vec()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("CRL file {}: not PEM: {e}", i + 1))?;
            if list.is_empty() {
                return Err(format!(
                    "CRL file {} holds no -----BEGIN X509 CRL-----",
                    i + 1
                ));
            }
            for der in &list {
                webpki::OwnedCertRevocationList::from_der(der)
                    .map_err(|e| format!("CRL file {}: not a usable CRL ({e:?})", i + 1))?;
            }
            out.extend(list);
        }
        Ok(Trust {
            roots,
            crls: out,
            check_revocation,
        })
    }
}

/// A signature whose certificate chains to the root and whose JWS verifies.
#[derive(Debug, Clone)]
struct Verified {
    role: Role,
    action: Action,
    signer: String,
    at: jiff::Timestamp,
    sha256: String,
    content: serde_json::Value,
}

/// Checks one entry: certificate chain to the root, not revoked, JWS signature by the
/// certificate's key, and the entry's fields agreeing with the signed claims.
fn verify_entry(
    e: &SignatureEntry,
    trust: &Trust,
    now: jiff::Timestamp,
) -> Result<Verified, String> {
    let header = jsonwebtoken::decode_header(&e.jws)
        .map_err(|err| format!("`jws` is not a compact JWS ({err})"))?;
    let chain = match header.x5c_der() {
        Ok(Some(c)) if !c.is_empty() => c,
        Ok(_) => return Err("the JWS carries no certificate chain (x5c)".to_owned()),
        Err(err) => return Err(format!("the JWS's x5c is not base64 DER ({err})")),
    };
    let leaf = rustls_pki_types::CertificateDer::from(chain[0].as_slice());
    let intermediates: Vec<rustls_pki_types::CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(c.as_slice()))
        .collect();
    let ee = webpki::EndEntityCert::try_from(&leaf)
        .map_err(|err| format!("its certificate is not usable ({err:?})"))?;
    let root_ders: Vec<rustls_pki_types::CertificateDer<'_>> = trust
        .roots
        .iter()
        .map(|r| rustls_pki_types::CertificateDer::from(r.as_slice()))
        .collect();
    let anchors: Vec<_> = root_ders
        .iter()
        .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
        .collect();
    let crls: Vec<webpki::CertRevocationList<'_>> = trust
        .crls
        .iter()
        .filter_map(|c| webpki::OwnedCertRevocationList::from_der(c).ok())
        .map(webpki::CertRevocationList::from)
        .collect();
    let crl_refs: Vec<&webpki::CertRevocationList<'_>> = crls.iter().collect();
    let revocation = if trust.check_revocation {
        match webpki::RevocationOptionsBuilder::new(&crl_refs) {
            Ok(b) => Some(
                b.with_depth(webpki::RevocationCheckDepth::Chain)
                    .with_status_policy(webpki::UnknownStatusPolicy::Deny)
                    .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
                    .build(),
            ),
            Err(_) => {
                return Err(
                    "revocation cannot be checked: no certificate revocation list was given"
                        .to_owned(),
                )
            }
        }
    } else {
        None
    };
    let time = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now.as_second()).unwrap_or(0),
    ));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        time,
        webpki::KeyUsage::client_auth(),
        revocation,
        None,
    )
    .map_err(|err| match err {
        webpki::Error::UnknownIssuer => {
            "its certificate does not chain to the national root".to_owned()
        }
        webpki::Error::CertRevoked => "its certificate is revoked (CRL)".to_owned(),
        webpki::Error::CertExpired { .. } => {
            "its certificate has expired; sign again with the current certificate".to_owned()
        }
        webpki::Error::CertNotValidYet { .. } => "its certificate is not valid yet".to_owned(),
        webpki::Error::UnknownRevocationStatus => {
            "no CRL covers its certificate's issuer, so revocation cannot be checked".to_owned()
        }
        webpki::Error::CrlExpired { .. } => {
            "the CRL covering its certificate is out of date (nextUpdate passed)".to_owned()
        }
        other => format!("its certificate is not valid for signing ({other:?})"),
    })?;
    let (alg, public, cn) = key_of(&chain[0])?;
    if header.alg != alg {
        return Err(format!(
            "the JWS says {:?} but the certificate's key signs {alg:?}",
            header.alg
        ));
    }
    let claims = decode_claims(&e.jws, alg, &public)
        .map_err(|err| format!("the JWS signature does not verify with its certificate ({err})"))?;
    if claims.typ != TYP {
        return Err(format!(
            "the JWS is a `{}`, not a Tabadol policy signature",
            claims.typ
        ));
    }
    let (kind, id) = e
        .subject()
        .ok_or("the entry must name exactly one of `grant:` or `subscription:`")?;
    let mut differ = Vec::new();
    if (claims.kind, claims.id.as_str()) != (kind, id) {
        differ.push(format!(
            "it signs {} `{}`, the entry names {} `{id}`",
            claims.kind.as_str(),
            claims.id,
            kind.as_str()
        ));
    }
    if claims.role != e.role {
        differ.push(format!("it signs as {}", claims.role.as_str()));
    }
    if claims.action != e.action {
        differ.push(format!("it says {}", claims.action.as_str()));
    }
    if cn != e.signer {
        differ.push(format!("its certificate is {cn}, not {}", e.signer));
    }
    if rfc3339(claims.iat) != e.signed_at {
        differ.push(format!("it was signed at {}", rfc3339(claims.iat)));
    }
    if content_hash(&claims.content) != claims.sha256 {
        differ.push("its content does not match its own hash".to_owned());
    }
    if !differ.is_empty() {
        return Err(format!(
            "the entry does not say what the JWS says: {}",
            differ.join("; ")
        ));
    }
    Ok(Verified {
        role: claims.role,
        action: claims.action,
        signer: cn,
        at: jiff::Timestamp::from_second(claims.iat).unwrap_or_default(),
        sha256: claims.sha256,
        content: claims.content,
    })
}

/// The verified entries of one item: each entry's position, the role it claims, and its
/// verification.
type Checked = Vec<(String, Role, Result<Verified, String>)>;

/// What the entries of a signatures file claim, per item: (role, action, content hash).
pub type Claimed = HashMap<(Kind, String), Vec<(Role, Action, String)>>;

/// Where one party stands on one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartyState {
    /// A valid signature accepts exactly the current content.
    Signed {
        /// Certificate common name of the signer.
        signer: String,
        /// When.
        at: jiff::Timestamp,
    },
    /// A valid signature withdraws the current content.
    Withdrawn {
        /// Certificate common name of the signer.
        signer: String,
        /// When.
        at: jiff::Timestamp,
    },
    /// No valid signature accepts the current content; why (each signature found and
    /// what is wrong with it, or that there is none).
    Unsigned {
        /// One sentence per reason.
        reasons: Vec<String>,
    },
}

/// One party that must sign an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyReport {
    /// Provider (consent) or secretariat (approval).
    pub role: Role,
    /// Agency id, or `secretariat`.
    pub party: String,
    /// Its state.
    pub state: PartyState,
}

/// What the signatures say about one grant or subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemReport {
    /// Grant or subscription.
    pub kind: Kind,
    /// Its id.
    pub id: String,
    /// The consumer or subscriber agency.
    pub agency: String,
    /// The service, or the event types.
    pub what: String,
    /// Where it is (`grants.yaml` or `subscriptions.yaml`).
    pub file: PathBuf,
    /// 1-based line of the item.
    pub line: usize,
    /// 1-based column of the item.
    pub column: usize,
    /// Whether its validity has ended (then no signature is required).
    pub expired: bool,
    /// Every party that must sign, providers first.
    pub parties: Vec<PartyReport>,
}

/// The overall state of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemStatus {
    /// Every party signed exactly this content.
    Signed,
    /// Some party has not (validly) signed this content.
    Unsigned,
    /// A party withdrew: not honoured.
    Withdrawn,
}

impl ItemReport {
    /// Signed, unsigned or withdrawn (a withdrawal wins).
    pub fn status(&self) -> ItemStatus {
        if self
            .parties
            .iter()
            .any(|p| matches!(p.state, PartyState::Withdrawn { .. }))
        {
            ItemStatus::Withdrawn
        } else if self
            .parties
            .iter()
            .all(|p| matches!(p.state, PartyState::Signed { .. }))
        {
            ItemStatus::Signed
        } else {
            ItemStatus::Unsigned
        }
    }

    /// `file:line:column`.
    pub fn position(&self) -> String {
        format!("{}:{}:{}", self.file.display(), self.line, self.column)
    }

    /// The party of `role` (the first, for providers of a subscription).
    pub fn party(&self, role: Role) -> Option<&PartyReport> {
        self.parties.iter().find(|p| p.role == role)
    }

    /// One line saying who consented and approved, and when (for ListServices and
    /// `policy explain`), e.g. `consent cra 2026-12-03T10:00:00Z; approval secretariat …`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .parties
            .iter()
            .map(|p| match &p.state {
                PartyState::Signed { signer, at } => {
                    format!("{} by {} ({signer}) at {at}", p.role.act(), p.party)
                }
                PartyState::Withdrawn { signer, at } => {
                    format!(
                        "{} WITHDRAWN by {} ({signer}) at {at}",
                        p.role.act(),
                        p.party
                    )
                }
                PartyState::Unsigned { .. } => {
                    format!("no valid {} of {}", p.role.act(), p.party)
                }
            })
            .collect();
        parts.join("; ")
    }
}

impl fmt::Display for ItemReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status() {
            ItemStatus::Signed => "signed".to_owned(),
            ItemStatus::Unsigned => "UNSIGNED".to_owned(),
            ItemStatus::Withdrawn => "WITHDRAWN (not honoured)".to_owned(),
        };
        let expired = if self.expired { " [expired]" } else { "" };
        write!(
            f,
            "{}: {} {} ({} → {}): {status}{expired}",
            self.position(),
            self.kind.as_str(),
            self.id,
            self.agency,
            self.what
        )?;
        for p in &self.parties {
            let who = if p.role == Role::Secretariat {
                "the secretariat".to_owned()
            } else {
                p.party.clone()
            };
            match &p.state {
                PartyState::Signed { signer, at } => write!(
                    f,
                    "\n    {} of {who}: valid, signed by {signer} at {at}",
                    p.role.act()
                )?,
                PartyState::Withdrawn { signer, at } => write!(
                    f,
                    "\n    {} of {who}: WITHDRAWN, signed by {signer} at {at}",
                    p.role.act()
                )?,
                PartyState::Unsigned { reasons } => {
                    for r in reasons {
                        write!(f, "\n    {} of {who}: {r}", p.role.act())?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The signature state of a whole policy.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every grant, then every subscription, in file order.
    pub items: Vec<ItemReport>,
    /// Problems with `signatures.yaml` or `secretariat.yaml` themselves (unreadable, an
    /// entry of the wrong shape, the secretariat sharing an agency's common name).
    pub problems: Vec<PolicyError>,
    /// Remarks that need no action to load: signatures of items no longer in the policy.
    pub notes: Vec<String>,
    /// The secretariat, when `secretariat.yaml` loaded.
    pub secretariat: Option<Secretariat>,
}

impl Report {
    /// The item of this kind and id.
    pub fn item(&self, kind: Kind, id: &str) -> Option<&ItemReport> {
        self.items.iter().find(|i| i.kind == kind && i.id == id)
    }

    /// The policy with withdrawn grants and subscriptions taken out: what may be honoured.
    pub fn honoured(&self, mut src: PolicySource) -> PolicySource {
        let withdrawn = |kind: Kind, id: &str| {
            self.item(kind, id)
                .is_some_and(|i| i.status() == ItemStatus::Withdrawn)
        };
        src.grants.retain(|g| !withdrawn(Kind::Grant, &g.id));
        src.subscriptions
            .retain(|s| !withdrawn(Kind::Subscription, &s.id));
        src
    }

    /// Withdrawn items, one line each (what a reload takes out).
    pub fn withdrawn(&self) -> Vec<&ItemReport> {
        self.items
            .iter()
            .filter(|i| i.status() == ItemStatus::Withdrawn)
            .collect()
    }

    /// Why a hub requiring signatures refuses this policy: every active (not expired)
    /// grant or subscription without a valid consent and approval, one line each naming
    /// it, its position and the first reason; and every problem of the signature files.
    /// Empty when it may be loaded.
    pub fn refusals(&self) -> Vec<String> {
        let mut out: Vec<String> = self.problems.iter().map(|p| p.to_string()).collect();
        for i in &self.items {
            if i.expired || i.status() != ItemStatus::Unsigned {
                continue;
            }
            let why: Vec<String> = i
                .parties
                .iter()
                .filter_map(|p| match &p.state {
                    PartyState::Unsigned { reasons } => Some(format!(
                        "no valid {} of {} ({})",
                        p.role.act(),
                        p.party,
                        reasons.first().map(String::as_str).unwrap_or("none")
                    )),
                    _ => None,
                })
                .collect();
            out.push(format!(
                "{}: {} {} ({} → {}) is not signed: {}",
                i.position(),
                i.kind.as_str(),
                i.id,
                i.agency,
                i.what,
                why.join("; ")
            ));
        }
        out
    }

    /// Counts of signed, unsigned and withdrawn items.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for i in &self.items {
            match i.status() {
                ItemStatus::Signed => c.0 += 1,
                ItemStatus::Unsigned => c.1 += 1,
                ItemStatus::Withdrawn => c.2 += 1,
            }
        }
        c
    }
}

/// Reads a file of at most [`MAX_FILE_BYTES`]; `Ok(None)` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the file: {e}")),
        Ok(m) if m.len() > MAX_FILE_BYTES as u64 => {
            return Err(format!(
                "the file is {} bytes; at most {MAX_FILE_BYTES} are read",
                m.len()
            ))
        }
        Ok(_) => {}
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| format!("cannot read the file: {e}"))
}

fn problem(file: &Path, line: usize, column: usize, message: impl Into<String>) -> PolicyError {
    PolicyError {
        file: file.to_owned(),
        line: line.max(1),
        column: column.max(1),
        message: message.into(),
    }
}

/// The parsed tree of a policy file, for positions.
fn tree(path: &Path) -> Option<Node> {
    read_optional(path)
        .ok()
        .flatten()
        .and_then(|t| yaml::parse(&t, MAX_DEPTH).ok().flatten())
}

/// Loads `secretariat.yaml` from `dir`.
pub fn load_secretariat(dir: &Path) -> Result<Secretariat, PolicyError> {
    let path = dir.join(SECRETARIAT_FILE);
    let text = match read_optional(&path) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(problem(
                &path,
                1,
                1,
                "missing: name the secretariat whose signature approves grants, as `secretariat: { name_fa, name_en, certificate: { common_name } }`",
            ))
        }
        Err(e) => return Err(problem(&path, 1, 1, e)),
    };
    let root = match yaml::parse(&text, MAX_DEPTH) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(problem(
                &path,
                1,
                1,
                "the file is empty; write `secretariat:`",
            ))
        }
        Err(e) => return Err(problem(&path, e.pos.line, e.pos.column, e.message)),
    };
    let file = SecretariatFile::deserialize(&root).map_err(|e| {
        let pos = e.pos.unwrap_or(root.pos);
        problem(&path, pos.line, pos.column, e.message)
    })?;
    if file.secretariat.certificate.common_name.trim().is_empty() {
        let pos = root.pos_of(&[
            Step::Key("secretariat"),
            Step::Key("certificate"),
            Step::Key("common_name"),
        ]);
        return Err(problem(
            &path,
            pos.line,
            pos.column,
            "the secretariat's certificate common_name is empty; write the subject CN of its signing certificate",
        ));
    }
    Ok(file.secretariat)
}

/// The entries of a signatures file, each with its position; problems for entries that
/// are not of the right shape.
pub fn load_entries(path: &Path) -> (Vec<(usize, usize, SignatureEntry)>, Vec<PolicyError>) {
    let text = match read_optional(path) {
        Ok(Some(t)) => t,
        Ok(None) => return (Vec::new(), Vec::new()),
        Err(e) => return (Vec::new(), vec![problem(path, 1, 1, e)]),
    };
    let root = match yaml::parse(&text, MAX_DEPTH) {
        Ok(Some(r)) => r,
        Ok(None) => return (Vec::new(), Vec::new()),
        Err(e) => {
            return (
                Vec::new(),
                vec![problem(path, e.pos.line, e.pos.column, e.message)],
            )
        }
    };
    let mut problems = Vec::new();
    if let yaml::Kind::Map(entries) = &root.kind {
        for (k, _) in entries {
            if k.as_str() != Some("signatures") {
                problems.push(problem(
                    path,
                    k.pos.line,
                    k.pos.column,
                    format!(
                        "unknown top-level key `{}`; this file has only `signatures:`",
                        k.as_str().unwrap_or("?")
                    ),
                ));
            }
        }
    }
    let list = match root.get("signatures").map(|n| &n.kind) {
        Some(yaml::Kind::Seq(items)) => items,
        Some(yaml::Kind::Scalar { value, .. })
            if value.is_empty() || value == "~" || value == "null" =>
        {
            return (Vec::new(), problems)
        }
        _ => {
            problems.push(problem(
                path,
                root.pos.line,
                root.pos.column,
                "this file must be a mapping with one key `signatures:` holding a list",
            ));
            return (Vec::new(), problems);
        }
    };
    let mut out = Vec::new();
    for item in list {
        match SignatureEntry::deserialize(item) {
            Ok(e) if e.subject().is_some() => out.push((item.pos.line, item.pos.column, e)),
            Ok(_) => problems.push(problem(
                path,
                item.pos.line,
                item.pos.column,
                "a signature names exactly one of `grant:` or `subscription:`",
            )),
            Err(e) => {
                let pos = e.pos.unwrap_or(item.pos);
                problems.push(problem(path, pos.line, pos.column, e.message));
            }
        }
    }
    (out, problems)
}

/// Adds one entry to a signatures file (creating it with a header), keeping what it holds.
pub fn append_entry(path: &Path, entry: &SignatureEntry) -> Result<(), String> {
    let (before, problems) = load_entries(path);
    if let Some(p) = problems.first() {
        return Err(format!("{p}; fix the file before signing again"));
    }
    let existing = read_optional(path)?.unwrap_or_default();
    let text = if before.is_empty() {
        format!(
            "# Signatures of grants and subscriptions: the provider's consent and the secretariat's\n\
             # approval, each a JWS (with the signer's certificate chain) over the canonical JSON of\n\
             # the item's content. Written by `tabadol policy sign`; checked by `tabadol policy check`.\n\
             # Keep every entry: removing a withdrawal would hide it.\n\
             signatures:\n{}",
            entry.to_yaml()
        )
    } else {
        let mut t = existing;
        if !t.ends_with('\n') {
            t.push('\n');
        }
        t.push_str(&entry.to_yaml());
        t
    };
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, &text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let (after, problems) = load_entries(path);
    if after.len() != before.len() + 1 || !problems.is_empty() {
        return Err(format!(
            "{} did not take the new signature as an entry; check its layout (block list under `signatures:`)",
            path.display()
        ));
    }
    Ok(())
}

/// Top-level keys of two JSON objects whose values differ.
fn changed_keys(signed: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let a = signed.as_object().unwrap_or(&empty);
    let b = now.as_object().unwrap_or(&empty);
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// One item to check: its kind, id, agency, what, content, index in its file, parties.
struct Subject<'a> {
    kind: Kind,
    id: &'a str,
    agency: &'a str,
    what: String,
    content: serde_json::Value,
    index: usize,
    expired: bool,
    /// (role, party name, certificate common name if known).
    parties: Vec<(Role, String, Option<String>)>,
}

/// Checks every grant and subscription of `src` (loaded from `dir`) against the
/// signatures in `signatures`, at `now`.
pub fn check(
    dir: &Path,
    signatures: &Path,
    src: &PolicySource,
    trust: &Trust,
    now: jiff::Timestamp,
) -> Report {
    let mut report = Report::default();
    let secretariat = match load_secretariat(dir) {
        Ok(s) => Some(s),
        Err(p) => {
            report.problems.push(p);
            None
        }
    };
    if let Some(s) = &secretariat {
        if let Some(a) = src
            .agencies
            .iter()
            .find(|a| a.certificate.common_name == s.certificate.common_name)
        {
            let path = dir.join(SECRETARIAT_FILE);
            let pos = tree(&path)
                .map(|r| {
                    r.pos_of(&[
                        Step::Key("secretariat"),
                        Step::Key("certificate"),
                        Step::Key("common_name"),
                    ])
                })
                .unwrap_or_default();
            report.problems.push(problem(
                &path,
                pos.line,
                pos.column,
                format!(
                    "the secretariat's common name `{}` is also agency {}'s ({}); an agency must not be able to approve grants",
                    s.certificate.common_name, a.id, AGENCIES_FILE
                ),
            ));
        }
    }
    let cn_of = |agency: &str| {
        src.agencies
            .iter()
            .find(|a| a.id == agency)
            .map(|a| a.certificate.common_name.clone())
    };
    let secretariat_party = (
        Role::Secretariat,
        "secretariat".to_owned(),
        secretariat
            .as_ref()
            .map(|s| s.certificate.common_name.clone()),
    );
    let mut subjects = Vec::new();
    for (index, g) in src.grants.iter().enumerate() {
        let provider = src
            .services
            .iter()
            .find(|s| s.id == g.service)
            .map(|s| s.provider.clone())
            .unwrap_or_default();
        let expired = g.valid_until.is_some_and(|d| d.end_in_tehran() <= now);
        subjects.push(Subject {
            kind: Kind::Grant,
            id: &g.id,
            agency: &g.agency,
            what: g.service.clone(),
            content: grant_content(g),
            index,
            expired,
            parties: vec![
                (Role::Provider, provider.clone(), cn_of(&provider)),
                secretariat_party.clone(),
            ],
        });
    }
    for (index, s) in src.subscriptions.iter().enumerate() {
        let mut parties: Vec<(Role, String, Option<String>)> = src
            .agencies
            .iter()
            .filter(|a| a.publishes.iter().any(|e| s.event_types.contains(e)))
            .map(|a| {
                (
                    Role::Provider,
                    a.id.clone(),
                    Some(a.certificate.common_name.clone()),
                )
            })
            .collect();
        parties.push(secretariat_party.clone());
        subjects.push(Subject {
            kind: Kind::Subscription,
            id: &s.id,
            agency: &s.agency,
            what: s.event_types.join(", "),
            content: subscription_content(s),
            index,
            expired: false,
            parties,
        });
    }

    let (entries, problems) = load_entries(signatures);
    report.problems.extend(problems);
    // Every entry verified once, grouped by the item it names.
    let mut by_item: HashMap<(Kind, String), Checked> = HashMap::new();
    for (line, column, e) in &entries {
        let Some((kind, id)) = e.subject() else {
            continue;
        };
        let at = format!("{}:{line}:{column}", signatures.display());
        by_item.entry((kind, id.to_owned())).or_default().push((
            at,
            e.role,
            verify_entry(e, trust, now),
        ));
    }
    let trees: HashMap<Kind, Option<Node>> = [Kind::Grant, Kind::Subscription]
        .into_iter()
        .map(|k| (k, tree(&dir.join(k.file()))))
        .collect();

    for s in &subjects {
        let file = dir.join(s.kind.file());
        let root = trees.get(&s.kind).and_then(Option::as_ref);
        let item_path = [Step::Key(s.kind.key()), Step::Index(s.index)];
        let pos = root.map(|r| r.pos_of(&item_path)).unwrap_or_default();
        let hash = content_hash(&s.content);
        let found = by_item
            .remove(&(s.kind, s.id.to_owned()))
            .unwrap_or_default();
        let mut parties = Vec::new();
        for (role, party, cn) in &s.parties {
            let mut reasons = Vec::new();
            let mut state = None;
            for (at, claimed, v) in &found {
                let v = match v {
                    Ok(v) if v.role == *role => v,
                    Ok(_) => continue,
                    Err(why) => {
                        // An entry claiming this role that does not verify.
                        if claimed == role {
                            reasons.push(format!("{at}: refused: {why}"));
                        }
                        continue;
                    }
                };
                if Some(&v.signer) != cn.as_ref() {
                    // For several publishers, a signature by another one is theirs.
                    let other_party = s
                        .parties
                        .iter()
                        .any(|(r, _, c)| *r == *role && c.as_deref() == Some(v.signer.as_str()));
                    if !other_party {
                        reasons.push(format!(
                            "{at}: refused: signed by {}, which is not {} ({}); {}",
                            v.signer,
                            if *role == Role::Secretariat {
                                "the secretariat".to_owned()
                            } else {
                                format!("the provider agency {party}")
                            },
                            cn.as_deref().unwrap_or("no certificate common name known"),
                            match role {
                                Role::Provider =>
                                    "a provider consents only to grants of its own services",
                                Role::Secretariat =>
                                    "only the secretariat named in secretariat.yaml approves",
                            }
                        ));
                    }
                    continue;
                }
                if v.sha256 != hash {
                    let keys = changed_keys(&v.content, &s.content);
                    let field_pos = keys
                        .first()
                        .and_then(|k| {
                            let mut p = item_path.to_vec();
                            p.push(Step::Key(k));
                            root.map(|r| r.pos_of(&p))
                        })
                        .unwrap_or(pos);
                    reasons.push(format!(
                        "{at}: signed by {} at {} over other content: {} changed since ({}:{}:{})",
                        v.signer,
                        v.at,
                        if keys.is_empty() {
                            "the content".to_owned()
                        } else {
                            keys.iter()
                                .map(|k| format!("`{k}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                        file.display(),
                        field_pos.line.max(1),
                        field_pos.column.max(1)
                    ));
                    continue;
                }
                match v.action {
                    Action::Withdraw => {
                        state = Some(PartyState::Withdrawn {
                            signer: v.signer.clone(),
                            at: v.at,
                        });
                        break; // final
                    }
                    Action::Accept => {
                        if state.is_none() {
                            state = Some(PartyState::Signed {
                                signer: v.signer.clone(),
                                at: v.at,
                            });
                        }
                    }
                }
            }
            let state = state.unwrap_or_else(|| {
                if reasons.is_empty() {
                    reasons.push(match cn {
                        None if *role == Role::Secretariat => format!("missing: no secretariat is named ({SECRETARIAT_FILE})"),
                        _ => format!(
                            "missing: no signature in {}; `tabadol policy sign --{} {} --as {} --cert CERT --key KEY`",
                            signatures.display(),
                            s.kind.as_str(),
                            s.id,
                            role.as_str()
                        ),
                    });
                }
                PartyState::Unsigned { reasons }
            });
            parties.push(PartyReport {
                role: *role,
                party: party.clone(),
                state,
            });
        }
        report.items.push(ItemReport {
            kind: s.kind,
            id: s.id.to_owned(),
            agency: s.agency.to_owned(),
            what: s.what.clone(),
            file,
            line: pos.line.max(1),
            column: pos.column.max(1),
            expired: s.expired,
            parties,
        });
    }
    let mut stale: Vec<_> = by_item.into_keys().collect();
    stale.sort();
    for (kind, id) in stale {
        report.notes.push(format!(
            "{}: signatures of {} `{id}`, which is not in {} (left over; harmless)",
            signatures.display(),
            kind.as_str(),
            kind.file()
        ));
    }
    report.secretariat = secretariat;
    report
}

/// What each entry of a signatures file claims to sign — (role, action, content hash) per
/// item — read from the JWS payloads WITHOUT verifying them: for `policy diff`, to mark
/// grants whose content no signature is for. [`check`] is what verifies.
pub fn claimed_hashes(path: &Path) -> Claimed {
    let mut out = Claimed::new();
    let (entries, _) = load_entries(path);
    for (_, _, e) in entries {
        let Some((kind, id)) = e.subject() else {
            continue;
        };
        let claims = e
            .jws
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<Claims>(&b).ok());
        if let Some(c) = claims {
            out.entry((kind, id.to_owned()))
                .or_default()
                .push((e.role, e.action, c.sha256));
        }
    }
    out
}
