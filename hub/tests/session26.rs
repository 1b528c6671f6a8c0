//! The services the working group approved in session 26 (1400/08/18), end to end: a real
//! hub on 127.0.0.1 with the shipped policy, each provider's simulator behind the generic
//! adapter (`adapter: http`, driven by services.yaml alone): allowed, denied, not found, bad
//! input (at the edge and at the provider), provider down, and minimization of list answers.

mod common;

use std::collections::HashMap;

use common::{copy_policy, ctx, violated_fields, TestHub};
use tabadol_proto::v1::inquiry_client::InquiryClient;
use tabadol_proto::v1::{InquireRequest, InquireResponse};
use tonic::Code;

const RELIEF: &str = "eligibility-assessment";
const RED_CRESCENT: &str = "relief-operations";

async fn inquire(
    hub: &TestHub,
    agency: &str,
    service: &str,
    purpose: &str,
    params: &[(&str, &str)],
) -> Result<InquireResponse, tonic::Status> {
    inquire_fields(hub, agency, service, purpose, params, &[]).await
}

async fn inquire_fields(
    hub: &TestHub,
    agency: &str,
    service: &str,
    purpose: &str,
    params: &[(&str, &str)],
    fields: &[&str],
) -> Result<InquireResponse, tonic::Status> {
    InquiryClient::new(hub.channel(agency).await)
        .inquire(InquireRequest {
            context: ctx("TRK-S26-0001", purpose),
            service: service.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            fields: fields.iter().map(|f| f.to_string()).collect(),
        })
        .await
        .map(|r| r.into_inner())
}

fn one(resp: &InquireResponse) -> &HashMap<String, String> {
    assert_eq!(resp.records.len(), 1, "{resp:?}");
    &resp.records[0].fields
}

fn keys(r: &tabadol_proto::v1::Record) -> Vec<String> {
    let mut k: Vec<String> = r.fields.keys().cloned().collect();
    k.sort();
    k
}

/// The Red Crescent gets an address by postal code; the postal code is checked at the edge
/// (10 digits), the Post's own rule refuses an impossible code as INVALID_ARGUMENT, an
/// unknown one is NOT_FOUND, another agency is denied, and a Post that is down is
/// UNAVAILABLE naming it.
#[tokio::test]
async fn post_address_end_to_end() {
    let hub = TestHub::start().await;
    let data = hub.dataset.session26();
    let a = &data.addresses[0];
    let resp = inquire(
        &hub,
        "rcs",
        "post.address",
        RED_CRESCENT,
        &[("postal_code", &a.postal_code)],
    )
    .await
    .unwrap();
    let r = one(&resp);
    assert_eq!(r.get("postal_code"), Some(&a.postal_code), "{r:?}");
    assert_eq!(r["province"], a.province);
    assert_eq!(r["city"], a.city);
    assert_eq!(r["plaque"], a.plaque, "a JSON number is read as text");
    assert_eq!(r["address"], a.text());
    assert_eq!(resp.provider, "post");
    // Persian digits are canonicalized before the call.
    let persian: String = a
        .postal_code
        .chars()
        .map(|c| char::from_u32('۰' as u32 + c.to_digit(10).unwrap()).unwrap())
        .collect();
    let again = inquire(
        &hub,
        "rcs",
        "post.address",
        RED_CRESCENT,
        &[("postal_code", &persian)],
    )
    .await
    .unwrap();
    assert_eq!(one(&again)["postal_code"], a.postal_code);

    let e = inquire(
        &hub,
        "rcs",
        "post.address",
        RED_CRESCENT,
        &[("postal_code", "12345")],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(violated_fields(&e), ["params.postal_code"]);
    // Ten digits pass the edge; the Post refuses a 0 among the first five.
    let e = inquire(
        &hub,
        "rcs",
        "post.address",
        RED_CRESCENT,
        &[("postal_code", "1034567890")],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("post"), "{}", e.message());
    assert!(
        !e.message().contains("معتبر"),
        "the Post's own text is not passed on: {}",
        e.message()
    );

    let e = inquire(
        &hub,
        "rcs",
        "post.address",
        RED_CRESCENT,
        &[("postal_code", &data.unknown_postal_code)],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let e = inquire(
        &hub,
        "ikrf",
        "post.address",
        RELIEF,
        &[("postal_code", &a.postal_code)],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    hub.sims.session26["post"].shutdown().await;
    let e = inquire(
        &hub,
        "rcs",
        "post.address",
        RED_CRESCENT,
        &[("postal_code", &a.postal_code)],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("post"), "{}", e.message());
    hub.stop().await;
}

/// TVTO answers several certificates as several records; "none" (HTTP 200, status 2) is
/// NOT_FOUND; an agency without the grant is denied.
#[tokio::test]
async fn tvto_skill_certificates_end_to_end() {
    let hub = TestHub::start().await;
    let data = hub.dataset.session26();
    let holder = data
        .skill_certificates
        .iter()
        .map(|c| c.national_code.clone())
        .find(|nc| {
            data.skill_certificates
                .iter()
                .filter(|c| &c.national_code == nc)
                .count()
                > 1
        })
        .expect("someone holds several certificates");
    let expected: Vec<_> = data
        .skill_certificates
        .iter()
        .filter(|c| c.national_code == holder)
        .collect();
    let resp = inquire(
        &hub,
        "ikrf",
        "tvto.skill-certificates",
        RELIEF,
        &[("national_code", &holder)],
    )
    .await
    .unwrap();
    assert_eq!(resp.records.len(), expected.len());
    for (r, c) in resp.records.iter().zip(&expected) {
        assert_eq!(r.fields["certificate_no"], c.certificate_no);
        assert_eq!(r.fields["skill_title"], c.title);
        assert_eq!(r.fields["standard_code"], c.standard_code);
    }
    let without = hub
        .dataset
        .persons()
        .iter()
        .find(|p| {
            !data
                .skill_certificates
                .iter()
                .any(|c| c.national_code == p.national_code)
        })
        .unwrap();
    let e = inquire(
        &hub,
        "ikrf",
        "tvto.skill-certificates",
        RELIEF,
        &[("national_code", &without.national_code)],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = inquire(
        &hub,
        "rcs",
        "tvto.skill-certificates",
        RED_CRESCENT,
        &[("national_code", &holder)],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = inquire(
        &hub,
        "ikrf",
        "tvto.skill-certificates",
        RELIEF,
        &[("national_code", "0499370898")],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(violated_fields(&e), ["params.national_code"]);
    hub.stop().await;
}

/// The judiciary confirms a certificate for its holder (a JSON POST body built from the
/// inputs), denies it for someone else, does not know a made-up serial, and refuses a
/// malformed serial (HTTP 422) as INVALID_ARGUMENT.
#[tokio::test]
async fn judiciary_clearance_end_to_end() {
    let hub = TestHub::start().await;
    let data = hub.dataset.session26();
    let c = &data.clearances[0];
    let svc = "judiciary.clearance-authenticity";
    let resp = inquire(
        &hub,
        "ikrf",
        svc,
        RELIEF,
        &[
            ("national_code", &c.national_code),
            ("certificate_serial", &c.serial),
        ],
    )
    .await
    .unwrap();
    let r = one(&resp);
    assert_eq!(r["authentic"], "true");
    assert_eq!(r["holder_name"], c.holder_name);
    assert_eq!(r["criminal_record"], c.has_record.to_string());
    let other = hub
        .dataset
        .persons()
        .iter()
        .find(|p| p.national_code != c.national_code)
        .unwrap();
    let resp = inquire(
        &hub,
        "ikrf",
        svc,
        RELIEF,
        &[
            ("national_code", &other.national_code),
            ("certificate_serial", &c.serial),
        ],
    )
    .await
    .unwrap();
    let r = one(&resp);
    assert_eq!(r["authentic"], "false");
    assert!(
        !r.contains_key("holder_name"),
        "null leaves the field out: {r:?}"
    );
    let e = inquire(
        &hub,
        "ikrf",
        svc,
        RELIEF,
        &[
            ("national_code", &c.national_code),
            ("certificate_serial", "1111222233334444"),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = inquire(
        &hub,
        "ikrf",
        svc,
        RELIEF,
        &[
            ("national_code", &c.national_code),
            ("certificate_serial", "123"),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = inquire(
        &hub,
        "ikrf",
        svc,
        RELIEF,
        &[("national_code", &c.national_code)],
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&e), ["params.certificate_serial"]);
    hub.stop().await;
}

/// The Ministry of Science's two services and the police's military-service status.
#[tokio::test]
async fn msrt_and_police_end_to_end() {
    let hub = TestHub::start().await;
    let data = hub.dataset.session26();
    let d = &data.degrees[0];
    let resp = inquire(
        &hub,
        "ikrf",
        "msrt.last-degree",
        RELIEF,
        &[("national_code", &d.national_code)],
    )
    .await
    .unwrap();
    let r = one(&resp);
    assert_eq!(r["level"], d.level);
    assert_eq!(r["university"], d.university);
    assert_eq!(
        r["gpa"].parse::<f64>().unwrap(),
        d.gpa.parse::<f64>().unwrap()
    );
    let s = &data.students[0];
    let resp = inquire(
        &hub,
        "ikrf",
        "msrt.student-status",
        RELIEF,
        &[("national_code", &s.national_code)],
    )
    .await
    .unwrap();
    let r = one(&resp);
    assert_eq!(r["enrolled"], s.enrolled.to_string());
    assert_eq!(r["status"], s.status);
    let unknown = hub.dataset.unknown_national_code().to_owned();
    for svc in [
        "msrt.last-degree",
        "msrt.student-status",
        "police.military-service",
    ] {
        let e = inquire(&hub, "ikrf", svc, RELIEF, &[("national_code", &unknown)])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{svc}: {e:?}");
    }
    let m = data
        .military
        .iter()
        .find(|m| m.code == "COMPLETED")
        .unwrap();
    let resp = inquire(
        &hub,
        "ikrf",
        "police.military-service",
        RELIEF,
        &[("national_code", &m.national_code)],
    )
    .await
    .unwrap();
    let r = one(&resp);
    assert_eq!(r["status"], "COMPLETED");
    assert_eq!(r["status_title"], m.title);
    assert_eq!(r.get("card_no"), m.card_no.as_ref());
    let e = inquire(
        &hub,
        "rcs",
        "police.military-service",
        RED_CRESCENT,
        &[("national_code", &m.national_code)],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    hub.sims.session26["police"].shutdown().await;
    let e = inquire(
        &hub,
        "ikrf",
        "police.military-service",
        RELIEF,
        &[("national_code", &m.national_code)],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("police"), "{}", e.message());
    hub.stop().await;
}

/// The shipped policy with extra grants appended to grants.yaml.
fn policy_with_grants(extra: &str) -> tempfile::TempDir {
    let dir = copy_policy();
    let path = dir.path().join("grants.yaml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push('\n');
    text.push_str(extra);
    std::fs::write(&path, text).unwrap();
    dir
}

const TEST_APPROVAL: &str =
    "{ body: interoperability-working-group, session: 99, date: 1403/01/01, item: test grant }";

/// The SSO insurance list (R2): one record per insured person; a grant of three of the
/// seven fields returns exactly those three in every record; a field asked for beyond the
/// grant is denied; bad period and checksum are refused at the edge, an unknown workshop is
/// NOT_FOUND, and no shipped agency has a grant yet.
#[tokio::test]
async fn sso_insurance_list_end_to_end_and_minimized_per_record() {
    let policy = policy_with_grants(&format!(
        "  - id: test-tso-insurance-list\n    agency: tso\n    service: sso.insurance-list\n    fields: [full_name, national_code, days_worked]\n    purposes: [subsidy-eligibility]\n    approved: {TEST_APPROVAL}\n"
    ));
    let hub = TestHub::start_with_policy(policy.path().to_owned()).await;
    let data = hub.dataset.session26();
    let w = data
        .workshops
        .iter()
        .find(|w| w.employees.len() >= 5)
        .unwrap();
    let expected = data.insurance_list(w, 1403, 5).unwrap();
    assert!(expected.len() >= 3, "a list of several persons");
    let params = [
        ("enterprise_id", w.legal_entity_id.as_str()),
        ("workshop_code", w.workshop_code.as_str()),
        ("branch_code", w.branch_code.as_str()),
        ("year", "1403"),
        ("month", "05"),
    ];
    let svc = "sso.insurance-list";
    let resp = inquire(&hub, "tso", svc, "subsidy-eligibility", &params)
        .await
        .unwrap();
    assert_eq!(resp.records.len(), expected.len());
    for (r, p) in resp.records.iter().zip(&expected) {
        assert_eq!(
            keys(r),
            ["days_worked", "full_name", "national_code"],
            "{r:?}"
        );
        assert_eq!(r.fields["national_code"], p.national_code);
        assert_eq!(r.fields["days_worked"], p.days_worked.to_string());
    }
    // Asking for fewer fields narrows every record; asking beyond the grant is denied.
    let resp = inquire_fields(
        &hub,
        "tso",
        svc,
        "subsidy-eligibility",
        &params,
        &["national_code"],
    )
    .await
    .unwrap();
    assert!(resp.records.iter().all(|r| keys(r) == ["national_code"]));
    let e = inquire_fields(
        &hub,
        "tso",
        svc,
        "subsidy-eligibility",
        &params,
        &["sso_share"],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    let mut bad = params;
    bad[4] = ("month", "13");
    bad[0] = ("enterprise_id", "10100302745");
    let e = inquire(&hub, "tso", svc, "subsidy-eligibility", &bad)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut fields = violated_fields(&e);
    fields.sort();
    assert_eq!(fields, ["params.enterprise_id", "params.month"]);
    let mut other_branch = params;
    other_branch[2] = ("branch_code", "9999");
    let e = inquire(&hub, "tso", svc, "subsidy-eligibility", &other_branch)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let mut no_list = params;
    no_list[3] = ("year", "1399");
    let e = inquire(&hub, "tso", svc, "subsidy-eligibility", &no_list)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // No shipped grant: the Privatization Organization's access is conditional.
    let e = inquire(&hub, "ikrf", svc, RELIEF, &params)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    hub.sims.session26["sso"].shutdown().await;
    let e = inquire(&hub, "tso", svc, "subsidy-eligibility", &params)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("sso"), "{}", e.message());
    hub.stop().await;
}

/// The deeds registry's legal-person identity (R11).
#[tokio::test]
async fn ssaa_legal_person_end_to_end() {
    let policy = policy_with_grants(&format!(
        "  - id: test-cbi-legal-person\n    agency: cbi\n    service: ssaa.legal-person\n    fields: [name, registration_no, legal_form, status]\n    purposes: [kyc]\n    approved: {TEST_APPROVAL}\n"
    ));
    let hub = TestHub::start_with_policy(policy.path().to_owned()).await;
    let l = &hub.dataset.session26().legal_persons[0];
    let resp = inquire(
        &hub,
        "cbi",
        "ssaa.legal-person",
        "kyc",
        &[("legal_entity_id", &l.legal_entity_id)],
    )
    .await
    .unwrap();
    let r = &resp.records[0];
    assert_eq!(keys(r), ["legal_form", "name", "registration_no", "status"]);
    assert_eq!(r.fields["name"], l.name);
    assert_eq!(r.fields["registration_no"], l.registration_no);
    // A valid id nobody registered.
    let unknown = hub
        .dataset
        .legal_entities()
        .iter()
        .map(|e| e.legal_entity_id.clone())
        .next()
        .map(|_| "10100302746".to_owned())
        .unwrap();
    assert!(hub.dataset.session26().legal_person(&unknown).is_none());
    let e = inquire(
        &hub,
        "cbi",
        "ssaa.legal-person",
        "kyc",
        &[("legal_entity_id", &unknown)],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = inquire(
        &hub,
        "cbi",
        "ssaa.legal-person",
        "kyc",
        &[("legal_entity_id", "10100302745")],
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&e), ["params.legal_entity_id"]);
    let e = inquire(
        &hub,
        "rcs",
        "ssaa.legal-person",
        RED_CRESCENT,
        &[("legal_entity_id", &l.legal_entity_id)],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    hub.stop().await;
}

/// Provider, agency, service, purpose and inputs of one call.
type Case<'a> = (&'a str, &'a str, &'a str, &'a str, Vec<(&'a str, &'a str)>);

/// Every session-26 service, one after another: answered for its grantee, PERMISSION_DENIED
/// for an agency without a grant (before any provider call), and UNAVAILABLE naming the
/// provider once its simulator is down.
#[tokio::test]
async fn every_service_allowed_denied_and_down() {
    let policy = policy_with_grants(&format!(
        "  - id: test-tso-insurance-list\n    agency: tso\n    service: sso.insurance-list\n    fields: [national_code]\n    purposes: [subsidy-eligibility]\n    approved: {TEST_APPROVAL}\n\
         \x20 - id: test-cbi-legal-person\n    agency: cbi\n    service: ssaa.legal-person\n    fields: [name]\n    purposes: [kyc]\n    approved: {TEST_APPROVAL}\n"
    ));
    let hub = TestHub::start_with_policy(policy.path().to_owned()).await;
    let data = hub.dataset.session26();
    let cert = data
        .skill_certificates
        .first()
        .unwrap()
        .national_code
        .clone();
    let clearance = &data.clearances[0];
    let degree = data.degrees[0].national_code.clone();
    let student = data.students[0].national_code.clone();
    let soldier = data.military[0].national_code.clone();
    let w = &data.workshops[0];
    let cases: Vec<Case> = vec![
        (
            "post",
            "rcs",
            "post.address",
            RED_CRESCENT,
            vec![("postal_code", &data.addresses[1].postal_code)],
        ),
        (
            "tvto",
            "ikrf",
            "tvto.skill-certificates",
            RELIEF,
            vec![("national_code", &cert)],
        ),
        (
            "judiciary",
            "ikrf",
            "judiciary.clearance-authenticity",
            RELIEF,
            vec![
                ("national_code", &clearance.national_code),
                ("certificate_serial", &clearance.serial),
            ],
        ),
        (
            "msrt",
            "ikrf",
            "msrt.last-degree",
            RELIEF,
            vec![("national_code", &degree)],
        ),
        (
            "msrt",
            "ikrf",
            "msrt.student-status",
            RELIEF,
            vec![("national_code", &student)],
        ),
        (
            "police",
            "ikrf",
            "police.military-service",
            RELIEF,
            vec![("national_code", &soldier)],
        ),
        (
            "sso",
            "tso",
            "sso.insurance-list",
            "subsidy-eligibility",
            vec![
                ("enterprise_id", &w.legal_entity_id),
                ("workshop_code", &w.workshop_code),
                ("branch_code", &w.branch_code),
                ("year", "1402"),
                ("month", "12"),
            ],
        ),
        (
            "ssaa",
            "cbi",
            "ssaa.legal-person",
            "kyc",
            vec![("legal_entity_id", &data.legal_persons[1].legal_entity_id)],
        ),
    ];
    for (provider, agency, service, purpose, params) in &cases {
        let resp = inquire(&hub, agency, service, purpose, params)
            .await
            .unwrap_or_else(|e| panic!("{service}: {e:?}"));
        assert_eq!(&resp.provider, provider);
        assert!(!resp.records.is_empty(), "{service}");
        let e = inquire(&hub, "moh", service, purpose, params)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{service}: {e:?}");
    }
    for (provider, agency, service, purpose, params) in &cases {
        hub.sims.session26[provider].shutdown().await;
        let e = inquire(&hub, agency, service, purpose, params)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{service}: {e:?}");
        assert!(
            e.message()
                .starts_with(&format!("provider {provider} is unavailable")),
            "{service}: {}",
            e.message()
        );
    }
    hub.stop().await;
}
