//! Grants as signed agreements: a grant signed by its provider agency and the secretariat
//! verifies; a change after signing, a signature by the wrong agency, from another root or
//! by a revoked certificate is refused with the reason; a withdrawal takes the grant out.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber,
};
use tabadol_policy::load::{self, PolicySource};
use tabadol_policy::signatures::{
    self, Action, ItemStatus, Kind, PartyState, Role, SignRequest, Trust, SIGNATURES_FILE,
};

/// A PEM certificate and key.
struct Pair {
    cert: String,
    key: String,
}

fn root(cn: &str) -> Pair {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(30);
    let cert = p.self_signed(&key).unwrap();
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn leaf(ca: &Pair, cn: &str, serial: u8) -> Pair {
    let ca_key = KeyPair::from_pem(&ca.key).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, &ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(30);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.serial_number = Some(SerialNumber::from(vec![serial, 7, 7]));
    let cert = p.signed_by(&key, &issuer).unwrap();
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A CRL of `ca` revoking the certificates with these serials.
fn crl(ca: &Pair, serials: &[u8]) -> String {
    let ca_key = KeyPair::from_pem(&ca.key).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, &ca_key).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        next_update: now + time::Duration::days(7),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from(vec![*s, 7, 7]),
                revocation_time: now - time::Duration::minutes(5),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(&issuer).unwrap().pem().unwrap()
}

/// A copy of the shipped policy (with secretariat.yaml) in a temporary directory.
fn copy_policy() -> tempfile::TempDir {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("national");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn source(dir: &Path) -> PolicySource {
    load::load_dir(dir).unwrap_or_else(|e| panic!("{e}"))
}

/// The national root, the certificates of cra, nocr and the secretariat, and a trust
/// without CRLs.
struct World {
    root: Pair,
    cra: Pair,
    nocr: Pair,
    secretariat: Pair,
}

impl World {
    fn new() -> World {
        let root = root("Test National Root");
        World {
            cra: leaf(&root, "cra.agency.tabadol.ir", 1),
            nocr: leaf(&root, "nocr.agency.tabadol.ir", 2),
            secretariat: leaf(&root, "secretariat.tabadol.ir", 3),
            root,
        }
    }

    fn trust(&self) -> Trust {
        Trust::from_pem(&self.root.cert, &[], false).unwrap()
    }
}

/// Signs grant `id` of the policy in `dir` with `who`, appending to signatures.yaml.
fn sign(dir: &Path, id: &str, role: Role, action: Action, who: &Pair) {
    let src = source(dir);
    let g = src.grants.iter().find(|g| g.id == id).expect("grant");
    let content = signatures::grant_content(g);
    let entry = signatures::sign(&SignRequest {
        kind: Kind::Grant,
        id,
        content: &content,
        role,
        action,
        chain_pem: &who.cert,
        key_pem: &who.key,
        at: jiff::Timestamp::now(),
    })
    .unwrap();
    signatures::append_entry(&dir.join(SIGNATURES_FILE), &entry).unwrap();
}

fn check(dir: &Path, trust: &Trust) -> signatures::Report {
    signatures::check(
        dir,
        &dir.join(SIGNATURES_FILE),
        &source(dir),
        trust,
        jiff::Timestamp::now(),
    )
}

fn reasons(report: &signatures::Report, id: &str, role: Role) -> Vec<String> {
    match &report
        .item(Kind::Grant, id)
        .unwrap()
        .party(role)
        .unwrap()
        .state
    {
        PartyState::Unsigned { reasons } => reasons.clone(),
        other => panic!("expected {id} unsigned by {role:?}, got {other:?}"),
    }
}

/// A grant signed by the provider of its service (cra) and the secretariat is signed;
/// a grant nobody signed is unsigned and says what is missing.
#[test]
fn sign_and_verify_a_grant() {
    let w = World::new();
    let dir = copy_policy();
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Provider,
        Action::Accept,
        &w.cra,
    );
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Secretariat,
        Action::Accept,
        &w.secretariat,
    );
    let report = check(dir.path(), &w.trust());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let item = report.item(Kind::Grant, "moe-shahkar").unwrap();
    assert_eq!(item.status(), ItemStatus::Signed, "{item}");
    match &item.party(Role::Provider).unwrap().state {
        PartyState::Signed { signer, .. } => assert_eq!(signer, "cra.agency.tabadol.ir"),
        other => panic!("{other:?}"),
    }
    assert!(
        item.summary().contains("consent by cra"),
        "{}",
        item.summary()
    );
    assert!(
        item.summary().contains("approval by secretariat"),
        "{}",
        item.summary()
    );
    // The grant's position is its `- id:` line.
    let text = std::fs::read_to_string(dir.path().join("grants.yaml")).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("id: moe-shahkar"))
        .unwrap()
        + 1;
    assert_eq!(item.line, line);
    // Another grant has no signature: unsigned, naming the command to sign it.
    let other = report.item(Kind::Grant, "ihio-shahkar").unwrap();
    assert_eq!(other.status(), ItemStatus::Unsigned);
    assert!(reasons(&report, "ihio-shahkar", Role::Provider)[0]
        .contains("tabadol policy sign --grant ihio-shahkar --as provider"));
    // The refusals of a hub requiring signatures name the unsigned grants, not the signed.
    let refusals = report.refusals().join("\n");
    assert!(refusals.contains("grant ihio-shahkar"), "{refusals}");
    assert!(!refusals.contains("grant moe-shahkar"), "{refusals}");
}

/// One field changed after signing: the grant is unsigned, and the reason points at the
/// changed field's line in grants.yaml.
#[test]
fn a_field_changed_after_signing_is_unsigned_at_its_line() {
    let w = World::new();
    let dir = copy_policy();
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Provider,
        Action::Accept,
        &w.cra,
    );
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Secretariat,
        Action::Accept,
        &w.secretariat,
    );
    let path = dir.path().join("grants.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text.replacen(
        "purposes: [customer-verification]",
        "purposes: [customer-verification, marketing]",
        1,
    );
    assert_ne!(text, changed);
    std::fs::write(&path, &changed).unwrap();
    let line = changed
        .lines()
        .position(|l| l.contains("marketing"))
        .unwrap()
        + 1;
    let report = check(dir.path(), &w.trust());
    let item = report.item(Kind::Grant, "moe-shahkar").unwrap();
    assert_eq!(item.status(), ItemStatus::Unsigned, "{item}");
    for role in [Role::Provider, Role::Secretariat] {
        let r = &reasons(&report, "moe-shahkar", role)[0];
        assert!(r.contains("over other content: `purposes` changed"), "{r}");
        assert!(
            r.contains(&format!("grants.yaml:{line}:15)")),
            "expected grants.yaml:{line}:15 (the changed value) in {r}"
        );
    }
    let refusals = report.refusals().join("\n");
    assert!(refusals.contains("grant moe-shahkar"), "{refusals}");
}

/// A consent signed by another agency (nocr for a cra service), by a certificate of
/// another root, or by a revoked certificate is refused, each with its reason.
#[test]
fn wrong_agency_other_root_and_revoked_are_refused() {
    let w = World::new();
    // The wrong agency.
    let dir = copy_policy();
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Provider,
        Action::Accept,
        &w.nocr,
    );
    let r = &reasons(
        &check(dir.path(), &w.trust()),
        "moe-shahkar",
        Role::Provider,
    )[0];
    assert!(
        r.contains("signed by nocr.agency.tabadol.ir, which is not the provider agency cra"),
        "{r}"
    );
    // The secretariat's certificate cannot consent for the provider either.
    let dir = copy_policy();
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Provider,
        Action::Accept,
        &w.secretariat,
    );
    let r = &reasons(
        &check(dir.path(), &w.trust()),
        "moe-shahkar",
        Role::Provider,
    )[0];
    assert!(r.contains("which is not the provider agency cra"), "{r}");

    // A certificate with the right name from another root.
    let other = root("Somebody Else's Root");
    let fake_cra = leaf(&other, "cra.agency.tabadol.ir", 9);
    let dir = copy_policy();
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Provider,
        Action::Accept,
        &fake_cra,
    );
    let r = &reasons(
        &check(dir.path(), &w.trust()),
        "moe-shahkar",
        Role::Provider,
    )[0];
    assert!(
        r.contains("refused: its certificate does not chain to the national root"),
        "{r}"
    );

    // A revoked certificate, with revocation checked against the root's CRL.
    let dir = copy_policy();
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Provider,
        Action::Accept,
        &w.cra,
    );
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Secretariat,
        Action::Accept,
        &w.secretariat,
    );
    let clean = Trust::from_pem(&w.root.cert, &[crl(&w.root, &[])], true).unwrap();
    let item = check(dir.path(), &clean);
    assert_eq!(
        item.item(Kind::Grant, "moe-shahkar").unwrap().status(),
        ItemStatus::Signed,
        "not revoked yet"
    );
    let revoked = Trust::from_pem(&w.root.cert, &[crl(&w.root, &[1])], true).unwrap();
    let report = check(dir.path(), &revoked);
    let r = &reasons(&report, "moe-shahkar", Role::Provider)[0];
    assert!(
        r.contains("refused: its certificate is revoked (CRL)"),
        "{r}"
    );
    // The secretariat's certificate is not revoked: its approval stays valid.
    assert!(matches!(
        report
            .item(Kind::Grant, "moe-shahkar")
            .unwrap()
            .party(Role::Secretariat)
            .unwrap()
            .state,
        PartyState::Signed { .. }
    ));
    // Revocation required but no CRL at all: refused, deny by default.
    let none = Trust::from_pem(&w.root.cert, &[], true).unwrap();
    let r = &reasons(&check(dir.path(), &none), "moe-shahkar", Role::Provider)[0];
    assert!(r.contains("no certificate revocation list"), "{r}");
}

/// A signed withdrawal by the provider ends the grant: withdrawn, taken out of what is
/// honoured, and a consent signed again for the same content does not revive it.
#[test]
fn a_withdrawn_consent_takes_the_grant_out() {
    let w = World::new();
    let dir = copy_policy();
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Provider,
        Action::Accept,
        &w.cra,
    );
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Secretariat,
        Action::Accept,
        &w.secretariat,
    );
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Provider,
        Action::Withdraw,
        &w.cra,
    );
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Provider,
        Action::Accept,
        &w.cra,
    );
    let report = check(dir.path(), &w.trust());
    let item = report.item(Kind::Grant, "moe-shahkar").unwrap();
    assert_eq!(item.status(), ItemStatus::Withdrawn, "{item}");
    assert!(item.to_string().contains("WITHDRAWN"), "{item}");
    let honoured = report.honoured(source(dir.path()));
    assert!(honoured.grants.iter().all(|g| g.id != "moe-shahkar"));
    assert_eq!(honoured.grants.len(), source(dir.path()).grants.len() - 1);
    // A withdrawal is not a missing signature: it does not block loading.
    assert!(!report.refusals().join("\n").contains("moe-shahkar"));
    // A withdrawal by somebody else (nocr) withdraws nothing.
    let dir = copy_policy();
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Provider,
        Action::Accept,
        &w.cra,
    );
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Provider,
        Action::Withdraw,
        &w.nocr,
    );
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Secretariat,
        Action::Accept,
        &w.secretariat,
    );
    let report = check(dir.path(), &w.trust());
    assert_eq!(
        report.item(Kind::Grant, "moe-shahkar").unwrap().status(),
        ItemStatus::Signed
    );
}

/// An entry whose readable fields were edited to disagree with its JWS is refused; a
/// key that is not the certificate's cannot sign.
#[test]
fn edited_entries_and_foreign_keys_are_refused() {
    let w = World::new();
    let dir = copy_policy();
    sign(
        dir.path(),
        "moe-shahkar",
        Role::Secretariat,
        Action::Accept,
        &w.secretariat,
    );
    let path = dir.path().join(SIGNATURES_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    // Claim the secretariat's approval is cra's consent.
    std::fs::write(
        &path,
        text.replacen("role: secretariat", "role: provider", 1),
    )
    .unwrap();
    let report = check(dir.path(), &w.trust());
    let r = &reasons(&report, "moe-shahkar", Role::Provider)[0];
    assert!(
        r.contains("the entry does not say what the JWS says"),
        "{r}"
    );

    let src = source(dir.path());
    let content = signatures::grant_content(&src.grants[0]);
    let err = signatures::sign(&SignRequest {
        kind: Kind::Grant,
        id: &src.grants[0].id,
        content: &content,
        role: Role::Provider,
        action: Action::Accept,
        chain_pem: &w.cra.cert,
        key_pem: &w.nocr.key,
        at: jiff::Timestamp::now(),
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("the key does not belong to the certificate"),
        "{err}"
    );
}

/// The canonical form ignores layout (flow or block style, comments, key order) but not
/// content.
#[test]
fn canonical_content_ignores_layout() {
    let dir = copy_policy();
    let before = signatures::content_hash(&signatures::grant_content(
        source(dir.path())
            .grants
            .iter()
            .find(|g| g.id == "moe-shahkar")
            .unwrap(),
    ));
    let path = dir.path().join("grants.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let relaid = text.replacen(
        "    fields: [matched]\n    purposes: [customer-verification]\n",
        "    # reordered and re-laid out\n    purposes:\n      - customer-verification\n    fields:\n      - \"matched\"\n",
        1,
    );
    assert_ne!(text, relaid);
    std::fs::write(&path, relaid).unwrap();
    let after = signatures::content_hash(&signatures::grant_content(
        source(dir.path())
            .grants
            .iter()
            .find(|g| g.id == "moe-shahkar")
            .unwrap(),
    ));
    assert_eq!(before, after);
}

/// A grant without `id:` and two grants with one id are policy errors at file:line:column.
#[test]
fn missing_and_duplicate_ids_are_policy_errors() {
    let dir = copy_policy();
    let path = dir.path().join("grants.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let broken = text
        .replacen("  - id: moe-shahkar\n    agency: moe", "  - agency: moe", 1)
        .replacen("id: cbi-life-status", "id: cbi-identity", 1);
    std::fs::write(&path, &broken).unwrap();
    let errors = load::load_dir(dir.path()).unwrap_err().to_string();
    let line_of = |needle: &str, nth: usize| {
        broken
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(needle))
            .nth(nth)
            .map(|(i, _)| i + 1)
            .unwrap()
    };
    let missing = line_of("  - agency: moe", 0);
    assert!(
        errors.contains(&format!(
            "grants.yaml:{missing}:5: grant moe → cra.shahkar.match: missing `id:`"
        )),
        "{errors}"
    );
    let first = line_of("id: cbi-identity", 0);
    let second = line_of("id: cbi-identity", 1);
    assert!(
        errors.contains(&format!(
            "grants.yaml:{second}:9: grant id `cbi-identity` is used twice (first on line {first})"
        )),
        "{errors}"
    );
}
