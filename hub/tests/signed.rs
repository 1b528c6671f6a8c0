//! Grants as signed agreements at a running hub and on the command line: `tabadol dev`
//! starts with every shipped grant signed; with `policy.require_signatures` a reload with
//! an unsigned grant keeps the last good policy; a withdrawn consent ends access at the
//! next reload (inquiries denied, open Subscribe streams cut); `policy check` reports a
//! signed, a tampered and a withdrawn grant; `policy diff` marks changed grants.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{copy_policy, ctx, TestHub};
use futures::StreamExt;
use tabadol_hub::ops::signed::PolicyLoader;
use tabadol_policy::signatures::{self, ItemStatus, Kind};
use tabadol_proto::v1::civil_registry_client::CivilRegistryClient;
use tabadol_proto::v1::events_client::EventsClient;
use tabadol_proto::v1::inquiry_client::InquiryClient;
use tabadol_proto::v1::{GetLifeStatusRequest, ListServicesRequest, SubscribeRequest};
use tonic::Code;

fn tabadol() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tabadol"))
}

/// Runs `tabadol ARGS`, returning (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    let out = tabadol().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `tabadol policy sign` with a dev certificate: `who` is an agency id or `secretariat`.
fn cli_sign(hub: &TestHub, policy: &Path, flag: &str, id: &str, who: &str, withdraw: bool) {
    let (cert, key) = if who == "secretariat" {
        tabadol_hub::ops::signed::secretariat_files(&hub.pki)
    } else {
        (hub.pki.agency_cert(who), hub.pki.agency_key(who))
    };
    let role = if who == "secretariat" {
        "secretariat"
    } else {
        "provider"
    };
    let sigs = hub.dir.path().join("signatures.yaml");
    let mut args = vec![
        "policy",
        "sign",
        flag,
        id,
        "--as",
        role,
        "--cert",
        s(&cert),
        "--key",
        s(&key),
        "--dir",
        s(policy),
        "--signatures",
        s(&sigs),
    ];
    if withdraw {
        args.push("--withdraw");
    }
    let (ok, out, err) = run(&args);
    assert!(ok, "policy sign {id} as {who}: {out}{err}");
}

/// A loader of the hub's policy as a serving hub would have it.
fn loader(hub: &TestHub, policy: &Path, require: bool) -> PolicyLoader {
    PolicyLoader {
        dir: policy.to_owned(),
        signatures: hub.dir.path().join("signatures.yaml"),
        trust: Some(tabadol_hub::ops::signed::TrustFiles {
            ca: hub.pki.ca_cert(),
            crls: Vec::new(),
            check_revocation: false,
        }),
        require,
    }
}

/// GetLifeStatus of a living sample person; bmi states its only purpose, others `kyc`.
async fn life_status(hub: &TestHub, agency: &str) -> Result<bool, tonic::Status> {
    let (nc, _) = hub.alive(0);
    let purpose = if agency == "bmi" {
        "customer-re-verification"
    } else {
        "kyc"
    };
    CivilRegistryClient::new(hub.channel(agency).await)
        .get_life_status(GetLifeStatusRequest {
            context: ctx("TRK-SIGNED-1", purpose),
            national_code: nc,
        })
        .await
        .map(|r| r.into_inner().alive)
}

/// `tabadol dev` (its `prepare`) signs every shipped grant and subscription with its
/// development PKI: all are signed, ListServices shows who consented and approved, and
/// `policy check --dev` agrees.
#[tokio::test]
async fn dev_starts_with_every_shipped_grant_signed() {
    let hub = TestHub::start().await;
    let sigs = hub.dir.path().join("signatures.yaml");
    let report =
        tabadol_hub::ops::signed::dev_report(&common::policy_dir(), &sigs, &hub.pki).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.items.len() >= 19, "{}", report.items.len());
    for item in &report.items {
        assert_eq!(item.status(), ItemStatus::Signed, "{item}");
    }
    let cbi = InquiryClient::new(hub.channel("cbi").await)
        .list_services(ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    let life = cbi
        .services
        .iter()
        .find(|s| s.service == "nocr.life-status")
        .unwrap();
    assert!(
        life.approved
            .contains("consent by nocr (nocr.agency.tabadol.ir) at")
            && life
                .approved
                .contains("approval by secretariat (secretariat.tabadol.ir) at"),
        "{}",
        life.approved
    );
    let (ok, out, err) = run(&[
        "policy",
        "check",
        s(&common::policy_dir()),
        "--dev",
        s(hub.dir.path()),
        "--require-signatures",
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(", 0 unsigned, 0 withdrawn"), "{out}");
    hub.stop().await;
}

/// With `policy.require_signatures`, a new grant nobody signed makes a reload keep the
/// last good policy (the grant is not honoured), and loading it at start is refused
/// naming the grant at its line; once the provider and the secretariat sign it, the
/// reload takes it.
#[tokio::test]
async fn require_signatures_keeps_the_last_good_policy_when_a_new_grant_is_unsigned() {
    let policy = copy_policy();
    let hub = TestHub::start_with_policy(policy.path().to_owned()).await;
    assert_eq!(
        life_status(&hub, "rcs").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let grants = policy.path().join("grants.yaml");
    let mut text = std::fs::read_to_string(&grants).unwrap();
    text.push_str(
        "  - id: rcs-life-status\n    agency: rcs\n    service: nocr.life-status\n    fields: [alive]\n    purposes: [kyc]\n    approved: { body: interoperability-working-group, session: 27, date: 1405/09/01, item: \"1\" }\n",
    );
    std::fs::write(&grants, &text).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("id: rcs-life-status"))
        .unwrap()
        + 1;

    let required = loader(&hub, policy.path(), true);
    let refused = match required.load() {
        Ok(_) => panic!("an unsigned grant must be refused"),
        Err(e) => e.lines().join("\n"),
    };
    assert!(
        refused.contains(&format!("grants.yaml:{line}:5: grant rcs-life-status (rcs → nocr.life-status) is not signed: no valid consent of nocr")),
        "{refused}"
    );
    assert!(
        refused.contains("no valid approval of secretariat"),
        "{refused}"
    );
    assert!(
        !tabadol_hub::ops::app::reload_policy_with(&hub.handle.hub, &required).await,
        "the reload is refused"
    );
    assert_eq!(
        life_status(&hub, "rcs").await.unwrap_err().code(),
        Code::PermissionDenied,
        "the last good policy stays"
    );
    assert!(life_status(&hub, "cbi").await.unwrap(), "and keeps serving");

    // The provider consents: still no approval, still refused.
    cli_sign(
        &hub,
        policy.path(),
        "--grant",
        "rcs-life-status",
        "nocr",
        false,
    );
    assert!(!tabadol_hub::ops::app::reload_policy_with(&hub.handle.hub, &required).await);
    cli_sign(
        &hub,
        policy.path(),
        "--grant",
        "rcs-life-status",
        "secretariat",
        false,
    );
    assert!(tabadol_hub::ops::app::reload_policy_with(&hub.handle.hub, &required).await);
    assert!(life_status(&hub, "rcs").await.unwrap());
    hub.stop().await;
}

/// A provider's signed withdrawal ends the grant at the next reload: cbi's inquiries are
/// denied and cbi's open Subscribe stream (whose subscription NOCR withdrew too) is cut
/// through the hub's access-change watch; other grants keep working.
#[tokio::test]
async fn a_withdrawn_consent_ends_access_at_the_next_reload() {
    let policy = copy_policy();
    let hub = TestHub::start_with_policy(policy.path().to_owned()).await;
    assert!(life_status(&hub, "cbi").await.unwrap());
    let mut stream = EventsClient::new(hub.channel("cbi").await)
        .subscribe(SubscribeRequest {
            after_sequence: 0,
            types: vec![],
        })
        .await
        .unwrap()
        .into_inner();

    cli_sign(
        &hub,
        policy.path(),
        "--grant",
        "cbi-life-status",
        "nocr",
        true,
    );
    cli_sign(
        &hub,
        policy.path(),
        "--subscription",
        "cbi-events",
        "nocr",
        true,
    );
    // Not before the reload.
    assert!(life_status(&hub, "cbi").await.unwrap());
    let reload = loader(&hub, policy.path(), true);
    assert!(tabadol_hub::ops::app::reload_policy_with(&hub.handle.hub, &reload).await);

    let denied = life_status(&hub, "cbi").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(life_status(&hub, "bmi").await.unwrap(), "bmi's grant stays");
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream ends within 5 s");
    match end {
        Some(Err(status)) => assert_eq!(status.code(), Code::PermissionDenied, "{status:?}"),
        other => panic!("expected the stream to end with PERMISSION_DENIED, got {other:?}"),
    }
    hub.stop().await;
}

/// `policy check` shows a signed, a tampered (a field changed after signing: UNSIGNED at
/// its line) and a withdrawn grant; `policy sign` refuses another agency's certificate;
/// `policy diff` marks the tampered grant.
#[tokio::test]
async fn policy_check_shows_signed_tampered_and_withdrawn_grants() {
    let policy = copy_policy();
    let hub = TestHub::start_with_policy(policy.path().to_owned()).await;
    let before = copy_policy();
    let sigs = hub.dir.path().join("signatures.yaml");
    std::fs::copy(&sigs, before.path().join("signatures.yaml")).unwrap();

    // Tamper: widen cbi-identity's purposes after it was signed.
    let grants = policy.path().join("grants.yaml");
    let text = std::fs::read_to_string(&grants).unwrap();
    let tampered = text.replacen(
        "purposes: [customer-re-verification, kyc]\n    rate",
        "purposes: [customer-re-verification, kyc, marketing]\n    rate",
        1,
    );
    assert_ne!(text, tampered);
    std::fs::write(&grants, &tampered).unwrap();
    let line = tampered
        .lines()
        .position(|l| l.contains("marketing"))
        .unwrap()
        + 1;
    // Withdraw: INTA withdraws its consent to cbi-taxpayer.
    cli_sign(&hub, policy.path(), "--grant", "cbi-taxpayer", "inta", true);
    // Another agency's certificate cannot consent for CRA.
    let (ok, _, err) = run(&[
        "policy",
        "sign",
        "--grant",
        "moe-shahkar",
        "--as",
        "provider",
        "--cert",
        s(&hub.pki.agency_cert("nocr")),
        "--key",
        s(&hub.pki.agency_key("nocr")),
        "--dir",
        s(policy.path()),
        "--signatures",
        s(&sigs),
    ]);
    assert!(!ok);
    assert!(
        err.contains("is nocr.agency.tabadol.ir, but the consent of grant moe-shahkar is signed by cra (cra.agency.tabadol.ir)"),
        "{err}"
    );

    let (ok, out, err) = run(&[
        "policy",
        "check",
        s(policy.path()),
        "--signatures",
        s(&sigs),
        "--ca",
        s(&hub.pki.ca_cert()),
    ]);
    println!("{out}{err}");
    assert!(
        ok,
        "without --require-signatures the check passes: {out}{err}"
    );
    let block = |id: &str| -> String {
        let start = out
            .find(&format!("grant {id} ("))
            .unwrap_or_else(|| panic!("{id} in {out}"));
        let rest = &out[start..];
        let end = rest[1..].find("\n/").map_or(rest.len(), |e| e + 1);
        rest[..end].to_owned()
    };
    let signed = block("moe-shahkar");
    assert!(
        signed.contains("(moe → cra.shahkar.match): signed"),
        "{signed}"
    );
    assert!(
        signed.contains("consent of cra: valid, signed by cra.agency.tabadol.ir at"),
        "{signed}"
    );
    let bad = block("cbi-identity");
    assert!(bad.contains("(cbi → nocr.identity): UNSIGNED"), "{bad}");
    assert!(
        bad.contains(&format!(
            "over other content: `purposes` changed since ({}:{line}:15)",
            grants.display()
        )),
        "{bad}"
    );
    let gone = block("cbi-taxpayer");
    assert!(gone.contains("WITHDRAWN (not honoured)"), "{gone}");
    assert!(
        gone.contains("consent of inta: WITHDRAWN, signed by inta.agency.tabadol.ir"),
        "{gone}"
    );
    assert!(out.contains("1 unsigned, 1 withdrawn"), "{out}");
    // `policy explain` says who signed cbi's grants, and that the tax grant is withdrawn.
    let (ok, out, err) = run(&[
        "policy",
        "explain",
        "cbi",
        "--dir",
        s(policy.path()),
        "--signatures",
        s(&sigs),
        "--ca",
        s(&hub.pki.ca_cert()),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("signatures: consent by nocr (nocr.agency.tabadol.ir) at"),
        "{out}"
    );
    assert!(
        out.contains("inta.taxpayer — WITHDRAWN, not honoured (grant cbi-taxpayer)"),
        "{out}"
    );
    assert!(!out.contains("inta.taxpayer [21011000101]"), "{out}");
    // A hub requiring signatures would refuse it.
    let (ok, _, err) = run(&[
        "policy",
        "check",
        s(policy.path()),
        "--signatures",
        s(&sigs),
        "--ca",
        s(&hub.pki.ca_cert()),
        "--require-signatures",
    ]);
    assert!(!ok, "{err}");

    let (ok, out, err) = run(&[
        "policy",
        "diff",
        s(before.path()),
        s(policy.path()),
        "--signatures",
        s(&sigs),
    ]);
    println!("{out}{err}");
    // A purpose added under the approval it already cited is an unapproved widening.
    assert!(!ok, "{out}");
    assert!(
        err.contains("1 widening change(s) cite no new approval"),
        "{err}"
    );
    assert!(
        out.contains("[widened] grant cbi-identity: purpose `marketing` added")
            && out.contains("UNAPPROVED WIDENING"),
        "{out}"
    );
    assert!(
        out.contains("cbi:\n  ~ grant cbi-identity (nocr.identity): `purposes` changed — SIGNATURES NO LONGER MATCH"),
        "{out}"
    );
    assert!(!out.contains("moe-shahkar"), "{out}");
    hub.stop().await;
}

/// Every shipped grant and subscription has an id and the shipped policy names its
/// secretariat; without signatures a grant is unsigned.
#[test]
fn shipped_policy_has_an_id_on_every_item() {
    let src = tabadol_policy::load::load_dir(&common::policy_dir()).unwrap();
    assert!(src.grants.iter().all(|g| !g.id.is_empty()));
    assert!(src.subscriptions.iter().all(|s| !s.id.is_empty()));
    let report = signatures::check(
        &common::policy_dir(),
        &common::policy_dir().join("no-such-signatures.yaml"),
        &src,
        &signatures::Trust::default(),
        jiff::Timestamp::now(),
    );
    assert!(report.secretariat.is_some(), "{:?}", report.problems);
    assert_eq!(
        report.item(Kind::Grant, "moe-shahkar").unwrap().status(),
        ItemStatus::Unsigned
    );
}
