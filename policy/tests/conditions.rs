//! Datasets (R3) and conditional grants (R4) in the policy: the shipped `ipo` grant and its
//! dataset load, and every mistake in a dataset or a condition is reported at
//! file:line:column saying what to write instead.

use std::path::Path;

use tabadol_policy::load::{self, Sources};
use tabadol_policy::model::ConditionRule;

const AGENCIES: &str = "agencies:
  - id: sso
    name_fa: تامین اجتماعی
    name_en: SSO
    certificate: { common_name: sso.agency.tabadol.ir }
  - id: ipo
    name_fa: خصوصی‌سازی
    name_en: IPO
    certificate: { common_name: ipo.agency.tabadol.ir }
    datasets:
      - id: ipo.divestment-list
        kind: divestment-list
        title_fa: فهرست واگذاری
        title_en: Divestment list
        readers: [sso, nobody]
";

const SERVICES: &str = "services:
  - id: sso.insurance-list
    national_service_id: '1'
    provider: sso
    adapter: http
    operation: insurance-list
    title_fa: لیست بیمه
    title_en: Insurance list
    inputs:
      - { name: enterprise_id, kind: legal_entity_id, required: true }
      - { name: workshop_code, kind: digits, required: true }
    outputs: [national_code]
    http:
      path: /x/{enterprise_id}/{workshop_code}
      outputs: { national_code: /nationalCode }
";

fn grants(condition: &str) -> String {
    format!(
        "grants:
  - id: ipo-insurance-list
    agency: ipo
    service: sso.insurance-list
    fields: [national_code]
    purposes: [divestment-oversight]
    condition: {condition}
    approved: {{ body: interoperability-working-group, session: 26, date: 1400/08/18, item: '3' }}
"
    )
}

fn load(agencies: &str, grants: &str) -> Result<load::PolicySource, Vec<String>> {
    load::load_sources(
        Path::new("p"),
        Sources {
            agencies: Some(agencies),
            services: Some(SERVICES),
            grants: Some(grants),
            subscriptions: None,
        },
    )
    .map_err(|e| e.iter().map(ToString::to_string).collect())
}

/// The shipped policy defines `ipo`, its dataset read by SSO, and grants `ipo` SSO's
/// insurance list under the session-26 condition.
#[test]
fn shipped_ipo_grant_is_conditional() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("national");
    let p = tabadol_policy::Policy::load_dir(&dir).unwrap();
    let ipo = p.agency("ipo").expect("agency ipo");
    assert_eq!(ipo.datasets[0].id, "ipo.divestment-list");
    assert_eq!(ipo.datasets[0].readers, ["sso"]);
    let g = p.grant("ipo", "sso.insurance-list").expect("ipo grant");
    let c = g.condition.as_ref().expect("a condition");
    assert_eq!(c.dataset, "ipo.divestment-list");
    assert_eq!(c.key, "enterprise_id");
    assert_eq!(c.rule, ConditionRule::ListedAtRequestTime);
    assert_eq!(g.approved.session, 26);
}

/// A reader that is not an agency, a condition on an unknown dataset, and a key that is
/// not a legal-entity input are each reported at their own line and column.
#[test]
fn bad_datasets_and_conditions_are_positioned() {
    let errors = load(
        AGENCIES,
        &grants("{ dataset: ipo.nothing, key: workshop_code, rule: listed-at-request-time }"),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors[0].starts_with("p/agencies.yaml:15:")
            && errors[0].contains("reader `nobody` is not an agency"),
        "{errors:#?}"
    );
    assert!(
        errors[1].starts_with("p/grants.yaml:7:")
            && errors[1].contains("dataset `ipo.nothing`, which no agency publishes")
            && errors[1].contains("ipo.divestment-list"),
        "{errors:#?}"
    );
    assert!(
        errors[2].starts_with("p/grants.yaml:7:")
            && errors[2].contains("`workshop_code` must be a required legal_entity_id input"),
        "{errors:#?}"
    );
    let errors = load(
        &AGENCIES.replace(", nobody", ""),
        &grants("{ dataset: ipo.divestment-list, key: enterprise_id, rule: sometimes }"),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("p/grants.yaml:7:") && errors[0].contains("sometimes"),
        "{errors:#?}"
    );
    let ok = load(
        &AGENCIES.replace(", nobody", ""),
        &grants(
            "{ dataset: ipo.divestment-list, key: enterprise_id, rule: listed-at-request-time }",
        ),
    )
    .unwrap();
    assert!(ok.grants[0].condition.is_some());
}

/// A grant's `request:` must look like a service request id (`sr-…`).
#[test]
fn request_citation_must_be_a_request_id() {
    let cond = "{ dataset: ipo.divestment-list, key: enterprise_id, rule: listed-at-request-time }\n    request: 'see letter 12'";
    let errors = load(&AGENCIES.replace(", nobody", ""), &grants(cond)).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("p/grants.yaml:8:") && errors[0].contains("not a service request id"),
        "{errors:#?}"
    );
    let cond = "{ dataset: ipo.divestment-list, key: enterprise_id, rule: listed-at-request-time }\n    request: sr-0192d7a4-1b2c";
    let ok = load(&AGENCIES.replace(", nobody", ""), &grants(cond)).unwrap();
    assert_eq!(ok.grants[0].request.as_deref(), Some("sr-0192d7a4-1b2c"));
}
