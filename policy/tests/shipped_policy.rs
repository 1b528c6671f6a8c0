//! The national policy shipped in `policy/national/` loads clean and says what R1, R5 and
//! R8 require.

use std::path::PathBuf;

use tabadol_policy::{Decision, DecisionRequest, Deny, Policy};

fn national() -> Policy {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("national");
    match Policy::load_dir(&dir) {
        Ok(p) => p,
        Err(e) => panic!("shipped policy must load clean:\n{e}"),
    }
}

fn at(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

/// The shipped policy loads without a single error and has the agreed agencies and services.
#[test]
fn shipped_policy_loads_clean() {
    let p = national();
    for id in [
        "cbi", "bmi", "moe", "ihio", "nocr", "cra", "inta", "moh", "sso", "tso", "rcs",
    ] {
        let a = p.agency(id).unwrap_or_else(|| panic!("agency {id}"));
        assert_eq!(
            p.agency_for_common_name(&format!("{id}.agency.tabadol.ir"))
                .map(|a| &a.id),
            Some(&a.id)
        );
    }
    for id in [
        "cra.shahkar.match",
        "nocr.identity",
        "nocr.life-status",
        "inta.taxpayer",
    ] {
        assert!(p.service(id).is_some(), "service {id}");
    }
    assert_eq!(p.service("nocr.identity").unwrap().outputs.len(), 8);
}

/// Session 26 grants cite the approval exactly: 1400/08/18, items 3 (MoE) and 4 (IHIO).
#[test]
fn session_26_shahkar_grants_cite_their_items() {
    let p = national();
    for (agency, item) in [
        ("moe", "access resolution, item 3"),
        ("ihio", "access resolution, item 4"),
    ] {
        let g = p.grant(agency, "cra.shahkar.match").unwrap();
        assert_eq!(g.approved.session, 26);
        assert_eq!(g.approved.date.to_string(), "1400/08/18");
        assert_eq!(g.approved.item, item);
    }
}

/// The Red Crescent has no grant for these services: denied with a sentence naming the grant.
#[test]
fn red_crescent_denied_by_default() {
    let p = national();
    let d = p.decide(&DecisionRequest {
        agency: "rcs",
        service: "nocr.identity",
        purpose: "relief",
        at: at("2025-01-01T00:00:00Z"),
        requested_fields: &[],
    });
    let Decision::Deny(deny) = d else {
        panic!("{d:?}")
    };
    assert!(matches!(deny, Deny::NoGrant { .. }));
    assert_eq!(
        deny.to_string(),
        "agency rcs has no grant for service nocr.identity; ask the interoperability working group for one"
    );
    // Its one grant is the National Post's address service (session 26, item 1).
    let services: Vec<_> = p
        .grants_for("rcs")
        .iter()
        .map(|(s, _)| s.id.clone())
        .collect();
    assert_eq!(services, ["post.address"]);
}

/// Every service session 26 approved is in the catalog, served by the generic adapter, and
/// granted as the resolution says: the Post's address service to the Red Crescent (access
/// resolution, item 1), the four providers' five services to the Relief Committee (item 2);
/// the SSO insurance list exists (privatization resolution, item 1) but has no grant, its
/// consumer's access being conditional (item 3).
#[test]
fn session_26_services_and_grants_cite_their_items() {
    let p = national();
    let grants = [
        ("rcs", "post.address", "access resolution, item 1"),
        (
            "ikrf",
            "tvto.skill-certificates",
            "access resolution, item 2",
        ),
        (
            "ikrf",
            "judiciary.clearance-authenticity",
            "access resolution, item 2",
        ),
        ("ikrf", "msrt.last-degree", "access resolution, item 2"),
        ("ikrf", "msrt.student-status", "access resolution, item 2"),
        (
            "ikrf",
            "police.military-service",
            "access resolution, item 2",
        ),
    ];
    for (agency, service, item) in grants {
        let s = p
            .service(service)
            .unwrap_or_else(|| panic!("service {service}"));
        assert_eq!(
            s.adapter,
            tabadol_policy::model::AdapterKind::Http,
            "{service}"
        );
        assert!(s.http.is_some(), "{service}");
        let g = p
            .grant(agency, service)
            .unwrap_or_else(|| panic!("grant {agency} → {service}"));
        assert_eq!(g.approved.session, 26);
        assert_eq!(g.approved.date.to_string(), "1400/08/18");
        assert_eq!(g.approved.item, item);
        assert_eq!(
            g.fields, s.outputs,
            "{agency} → {service} gets every output"
        );
    }
    let sso = p.service("sso.insurance-list").unwrap();
    assert_eq!(sso.outputs.len(), 7);
    assert_eq!(
        sso.input_names().collect::<Vec<_>>(),
        [
            "enterprise_id",
            "workshop_code",
            "branch_code",
            "year",
            "month"
        ]
    );
    // Only the Privatization Organization, and only under the divestment-list condition.
    let holders: Vec<&str> = p
        .agencies()
        .filter(|a| p.grant(&a.id, "sso.insurance-list").is_some())
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(holders, ["ipo"]);
    let g = p.grant("ipo", "sso.insurance-list").unwrap();
    assert_eq!(g.fields, sso.outputs);
    assert_eq!(
        g.condition.as_ref().map(|c| c.dataset.as_str()),
        Some("ipo.divestment-list")
    );
    assert!(p.service("ssaa.legal-person").is_some());
}

/// The Ministry of Health gets only the three minimized identity fields (R8).
#[test]
fn ministry_of_health_is_minimized() {
    let p = national();
    let d = p.decide(&DecisionRequest {
        agency: "moh",
        service: "nocr.identity",
        purpose: "patient-identification",
        at: at("2025-01-01T00:00:00Z"),
        requested_fields: &[],
    });
    let Decision::Allow { fields, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(fields, ["national_code", "first_name", "last_name"]);
    let services: Vec<_> = p
        .grants_for("moh")
        .iter()
        .map(|(s, _)| s.id.as_str())
        .collect();
    assert_eq!(services, ["nocr.identity", "nocr.life-status"]);
}

/// R5 phase-1 subscribers receive both broadcasts; only NOCR may publish them.
#[test]
fn r5_subscribers_and_publisher() {
    let p = national();
    for ev in ["identity-change.v1", "death.v1"] {
        let subs = p.subscribers_of(ev);
        for a in ["cbi", "bmi", "moh", "tso", "sso", "ihio"] {
            assert!(subs.contains(&a), "{a} subscribes to {ev}");
        }
        assert!(!subs.contains(&"rcs"));
        assert!(p.may_publish("nocr", ev));
        assert!(!p.may_publish("cbi", ev));
    }
    assert!(p.subscribers_of("dataset.v1").is_empty());
}

/// The tax service takes a national code or a legal-entity id, exactly one.
#[test]
fn tax_service_one_of() {
    let p = national();
    let s = p.service("inta.taxpayer").unwrap();
    let mut params = std::collections::BTreeMap::new();
    params.insert("legal_entity_id".to_owned(), "10100000006".to_owned());
    assert_eq!(s.validate_params(&params), Ok(()));
    params.insert("national_code".to_owned(), "0012345679".to_owned());
    assert!(s.validate_params(&params).is_err());
}
