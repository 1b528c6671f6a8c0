//! The decision engine: deny by default, purposes, validity window in Tehran time, and
//! fields never silently widened.

use std::path::Path;

use tabadol_policy::load::Sources;
use tabadol_policy::{Decision, DecisionRequest, Deny, Policy};

const AGENCIES: &str = "
agencies:
  - { id: cra, name_fa: رگولاتوری, name_en: CRA, certificate: { common_name: cra.agency.tabadol.ir } }
  - { id: nocr, name_fa: ثبت احوال, name_en: NOCR, certificate: { common_name: nocr.agency.tabadol.ir }, publishes: [death.v1] }
  - { id: moe, name_fa: وزارت نیرو, name_en: Ministry of Energy, certificate: { common_name: moe.agency.tabadol.ir } }
  - { id: ihio, name_fa: بیمه سلامت, name_en: IHIO, certificate: { common_name: ihio.agency.tabadol.ir } }
";

const SERVICES: &str = "
services:
  - id: cra.shahkar.match
    national_service_id: '1'
    provider: cra
    adapter: shahkar
    operation: match-mobile
    title_fa: شاهکار
    title_en: Shahkar
    inputs:
      - { name: national_code, kind: national_code, required: true }
      - { name: mobile, kind: mobile, required: true }
    outputs: [matched]
  - id: nocr.identity
    national_service_id: '2'
    provider: nocr
    adapter: civil-registry
    operation: get-identity
    title_fa: هویت
    title_en: Identity
    inputs: [{ name: national_code, kind: national_code, required: true }]
    outputs: [national_code, first_name, last_name, father_name]
";

const GRANTS: &str = "
grants:
  - id: moe-shahkar
    agency: moe
    service: cra.shahkar.match
    fields: [matched]
    purposes: [customer-verification]
    valid_from: 1400/08/18
    valid_until: 1403/12/29
    approved: { body: interoperability-working-group, session: 26, date: 1400/08/18, item: '3' }
  - id: moe-identity
    agency: moe
    service: nocr.identity
    fields: [last_name, national_code]
    purposes: [customer-verification, billing]
    approved: { body: interoperability-working-group, session: 26, date: 1400/08/18, item: '3' }
";

fn policy() -> Policy {
    Policy::compile(source())
}

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

fn decide<'p>(
    p: &'p Policy,
    agency: &str,
    service: &str,
    purpose: &str,
    at: &str,
    fields: &[&str],
) -> Decision<'p> {
    let fields: Vec<String> = fields.iter().map(|s| (*s).to_owned()).collect();
    p.decide(&DecisionRequest {
        agency,
        service,
        purpose,
        at: ts(at),
        requested_fields: &fields,
    })
}

/// A granted agency, with a granted purpose, inside the window, is allowed the granted fields.
#[test]
fn allow_inside_window() {
    let p = policy();
    let d = decide(
        &p,
        "moe",
        "cra.shahkar.match",
        "customer-verification",
        "2023-01-01T00:00:00Z",
        &[],
    );
    let Decision::Allow { fields, grant } = d else {
        panic!("{d:?}")
    };
    assert_eq!(fields, ["matched"]);
    assert_eq!(grant.approved.session, 26);
}

/// With no fields requested, all granted fields come back in the service's output order.
#[test]
fn empty_request_means_all_granted_in_output_order() {
    let p = policy();
    let d = decide(
        &p,
        "moe",
        "nocr.identity",
        "billing",
        "2023-01-01T00:00:00Z",
        &[],
    );
    assert_eq!(
        d,
        Decision::Allow {
            fields: vec!["national_code".into(), "last_name".into()],
            grant: p.grant("moe", "nocr.identity").unwrap()
        }
    );
    let d = decide(
        &p,
        "moe",
        "nocr.identity",
        "billing",
        "2023-01-01T00:00:00Z",
        &["last_name"],
    );
    let Decision::Allow { fields, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(fields, ["last_name"]);
}

/// Asking for a field the grant does not list is denied, never silently narrowed or widened.
#[test]
fn fields_not_granted_denied() {
    let p = policy();
    let d = decide(
        &p,
        "moe",
        "nocr.identity",
        "billing",
        "2023-01-01T00:00:00Z",
        &["last_name", "father_name"],
    );
    let Decision::Deny(deny) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        deny,
        Deny::FieldsNotGranted {
            fields: vec!["father_name".into()],
            granted: vec!["national_code".into(), "last_name".into()]
        }
    );
    assert!(deny.to_string().contains("father_name"));
}

/// Without a grant, and for unknown services, the answer is deny.
#[test]
fn deny_by_default() {
    let p = policy();
    let d = decide(
        &p,
        "ihio",
        "nocr.identity",
        "x",
        "2023-01-01T00:00:00Z",
        &[],
    );
    assert_eq!(
        d,
        Decision::Deny(Deny::NoGrant {
            agency: "ihio".into(),
            service: "nocr.identity".into()
        })
    );
    let d = decide(&p, "moe", "post.address", "x", "2023-01-01T00:00:00Z", &[]);
    assert_eq!(d, Decision::Deny(Deny::UnknownService));
}

/// A purpose the grant does not list is denied, naming the allowed ones.
#[test]
fn purpose_not_allowed() {
    let p = policy();
    let d = decide(
        &p,
        "moe",
        "cra.shahkar.match",
        "marketing",
        "2023-01-01T00:00:00Z",
        &[],
    );
    let Decision::Deny(deny) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        deny,
        Deny::PurposeNotAllowed {
            purpose: "marketing".into(),
            allowed: vec!["customer-verification".into()]
        }
    );
    assert_eq!(
        deny.to_string(),
        "purpose `marketing` is not covered by the grant (allowed purposes: customer-verification)"
    );
}

/// valid_from starts at 00:00 Tehran time of 1400/08/18 (= 2021-11-08T20:30Z).
#[test]
fn not_yet_valid_until_tehran_midnight() {
    let p = policy();
    let d = decide(
        &p,
        "moe",
        "cra.shahkar.match",
        "customer-verification",
        "2021-11-08T20:29:59Z",
        &[],
    );
    assert_eq!(
        d,
        Decision::Deny(Deny::NotYetValid {
            from: "1400/08/18".parse().unwrap()
        })
    );
    let d = decide(
        &p,
        "moe",
        "cra.shahkar.match",
        "customer-verification",
        "2021-11-08T20:30:00Z",
        &[],
    );
    assert!(d.is_allow(), "{d:?}");
}

/// valid_until includes the whole last day in Tehran: 1403/12/29 = 2025-03-19, ends 20:30Z.
#[test]
fn expired_after_last_tehran_day() {
    let p = policy();
    let d = decide(
        &p,
        "moe",
        "cra.shahkar.match",
        "customer-verification",
        "2025-03-19T20:29:59Z",
        &[],
    );
    assert!(d.is_allow(), "{d:?}");
    let d = decide(
        &p,
        "moe",
        "cra.shahkar.match",
        "customer-verification",
        "2025-03-19T20:30:00Z",
        &[],
    );
    let Decision::Deny(deny) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        deny,
        Deny::Expired {
            until: "1403/12/29".parse().unwrap()
        }
    );
    assert!(deny
        .to_string()
        .starts_with("the grant expired at the end of 1403/12/29"));
}

/// grants_for lists an agency's services sorted by id; subscriptions default to none.
#[test]
fn grants_for_sorted_and_no_subscriptions() {
    let p = policy();
    let ids: Vec<_> = p
        .grants_for("moe")
        .iter()
        .map(|(s, _)| s.id.clone())
        .collect();
    assert_eq!(ids, ["cra.shahkar.match", "nocr.identity"]);
    assert!(p.subscriptions().is_empty());
    assert!(p.may_publish("nocr", "death.v1"));
}

/// Validated source of the test policy, for compiling hand-modified copies.
fn source() -> tabadol_policy::load::PolicySource {
    tabadol_policy::load::load_sources(
        Path::new("policy"),
        Sources {
            agencies: Some(AGENCIES),
            services: Some(SERVICES),
            grants: Some(GRANTS),
            subscriptions: None,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// An empty or blank common name never maps to an agency, even if a hand-built policy
/// (bypassing the loader) gives an agency one.
#[test]
fn blank_common_name_never_maps_to_an_agency() {
    let p = policy();
    assert_eq!(p.agency_for_common_name(""), None);
    for blank in ["", "  "] {
        let mut src = source();
        src.agencies[0].certificate.common_name = blank.to_owned();
        let p = Policy::compile(src);
        assert_eq!(p.agency_for_common_name(""), None, "{blank:?}");
        assert_eq!(p.agency_for_common_name(blank), None, "{blank:?}");
        assert!(p.agency_for_common_name("nocr.agency.tabadol.ir").is_some());
    }
}

/// Compiling a hand-built policy whose grant ends past jiff's range does not panic: the
/// window saturates, so the grant simply never expires.
#[test]
fn compile_never_panics_on_far_future_dates() {
    let mut src = source();
    src.grants[0].valid_until = Some(tabadol_policy::jalali::JalaliDate {
        year: 9999,
        month: 12,
        day: 29,
    });
    let p = Policy::compile(src);
    assert!(decide(
        &p,
        "moe",
        "cra.shahkar.match",
        "customer-verification",
        "9999-01-01T00:00:00Z",
        &[]
    )
    .is_allow());
}
