//! Tax adapter against the INTA simulator.
mod common;

use common::{one, rec, request, world};
use tabadol_adapters::simulators::TaxSubject;
use tabadol_adapters::tax::TAXPAYER;
use tabadol_adapters::ProviderError;

/// A person's tax file is found by national code, with status and Jalali registration date.
#[tokio::test]
async fn taxpayer_by_national_code() {
    let w = world().await;
    let (t, nc) = w
        .ds()
        .taxpayers()
        .iter()
        .find_map(|t| match &t.subject {
            TaxSubject::NaturalPerson { national_code } => Some((t, national_code.clone())),
            TaxSubject::LegalEntity { .. } => None,
        })
        .unwrap();
    let r = one(&*w.tax, request(TAXPAYER, &[("national_code", &nc)]))
        .await
        .unwrap();
    assert_eq!(
        r,
        rec(&[
            ("taxpayer_id", &t.taxpayer_id),
            ("name", &t.name),
            ("status", t.status.as_str()),
            ("registered_on", &t.registered_on),
            ("tax_office", &t.office_name),
        ])
    );
}

/// A company's tax file is found by its legal-entity id.
#[tokio::test]
async fn taxpayer_by_legal_entity_id() {
    let w = world().await;
    let e = &w.ds().legal_entities()[2];
    let t = w
        .ds()
        .taxpayer_by_legal_entity_id(&e.legal_entity_id)
        .unwrap();
    let r = one(
        &*w.tax,
        request(TAXPAYER, &[("legal_entity_id", &e.legal_entity_id)]),
    )
    .await
    .unwrap();
    assert_eq!(r["taxpayer_id"], t.taxpayer_id);
    assert_eq!(r["name"], e.name);
    assert_eq!(r["status"], t.status.as_str());
    assert_eq!(r["registered_on"], e.registered_on);
}

/// A person without a tax file is NotFound.
#[tokio::test]
async fn person_without_tax_file_is_not_found() {
    let w = world().await;
    let p = w
        .ds()
        .persons()
        .iter()
        .find(|p| w.ds().taxpayer_by_national_code(&p.national_code).is_none())
        .unwrap();
    let err = w
        .tax
        .call(request(TAXPAYER, &[("national_code", &p.national_code)]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::NotFound { ref provider, .. } if provider == "inta"),
        "{err:?}"
    );
}

/// Giving both identifiers, or neither, is Rejected without calling the provider.
#[tokio::test]
async fn needs_exactly_one_identifier() {
    let w = world().await;
    let both = request(
        TAXPAYER,
        &[
            ("national_code", "0499370899"),
            ("legal_entity_id", "10100302746"),
        ],
    );
    for req in [both, request(TAXPAYER, &[])] {
        let err = w.tax.call(req).await.unwrap_err();
        assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
    }
    assert_eq!(w.sims.tax.requests(), 0);
}
