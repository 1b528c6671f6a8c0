//! Civil-registry adapter against the NOCR simulator.
mod common;

use common::{one, rec, request, world};
use tabadol_adapters::civil_registry::{IDENTITY, LIFE_STATUS};
use tabadol_adapters::ProviderError;

/// `identity` returns exactly the person's registry fields, dates as Jalali `YYYY/MM/DD`.
#[tokio::test]
async fn identity_returns_the_persons_fields() {
    let w = world().await;
    let p = &w.ds().persons()[7];
    let r = one(
        &*w.nocr,
        request(IDENTITY, &[("national_code", &p.national_code)]),
    )
    .await
    .unwrap();
    assert_eq!(
        r,
        rec(&[
            ("national_code", &p.national_code),
            ("first_name", &p.first_name),
            ("last_name", &p.last_name),
            ("father_name", &p.father_name),
            ("birth_date", &p.birth_date),
            ("gender", p.gender.as_str()),
            ("birth_place", &p.birth_place),
            ("shenasnameh_no", &p.shenasnameh_no),
        ])
    );
    assert_eq!(r["birth_date"].len(), 10);
    assert_eq!(&r["birth_date"][4..5], "/");
}

/// A living person is alive with an empty death date.
#[tokio::test]
async fn life_status_of_a_living_person() {
    let w = world().await;
    let p = w
        .ds()
        .persons()
        .iter()
        .find(|p| p.death_date.is_none())
        .unwrap();
    let r = one(
        &*w.nocr,
        request(LIFE_STATUS, &[("national_code", &p.national_code)]),
    )
    .await
    .unwrap();
    assert_eq!(r, rec(&[("alive", "true"), ("death_date", "")]));
}

/// A deceased person is not alive and carries their Jalali death date.
#[tokio::test]
async fn life_status_of_a_deceased_person() {
    let w = world().await;
    let p = w
        .ds()
        .persons()
        .iter()
        .find(|p| p.death_date.is_some())
        .unwrap();
    let r = one(
        &*w.nocr,
        request(LIFE_STATUS, &[("national_code", &p.national_code)]),
    )
    .await
    .unwrap();
    assert_eq!(
        r,
        rec(&[
            ("alive", "false"),
            ("death_date", p.death_date.as_deref().unwrap())
        ])
    );
}

/// A death registered after startup is visible at once through `life-status`.
#[tokio::test]
async fn later_death_shows_in_life_status() {
    let w = world().await;
    let p = w
        .ds()
        .persons()
        .iter()
        .find(|p| p.death_date.is_none())
        .unwrap();
    assert!(w.ds().record_death(&p.national_code, "1403/07/15"));
    let r = one(
        &*w.nocr,
        request(LIFE_STATUS, &[("national_code", &p.national_code)]),
    )
    .await
    .unwrap();
    assert_eq!(r, rec(&[("alive", "false"), ("death_date", "1403/07/15")]));
}

/// A valid national code nobody has is NotFound for both operations, naming the code.
#[tokio::test]
async fn unknown_national_code_is_not_found() {
    let w = world().await;
    let nc = w.ds().unknown_national_code().to_owned();
    for op in [IDENTITY, LIFE_STATUS] {
        let err = w
            .nocr
            .call(request(op, &[("national_code", &nc)]))
            .await
            .unwrap_err();
        match err {
            ProviderError::NotFound { provider, what } => {
                assert_eq!(provider, "nocr");
                assert!(what.contains(&nc), "{what}");
            }
            other => panic!("{op}: expected NotFound, got {other:?}"),
        }
    }
}

/// A national code with a wrong check digit is Rejected (INVALID_NIN), not NotFound.
#[tokio::test]
async fn invalid_national_code_is_rejected() {
    let w = world().await;
    let err = w
        .nocr
        .call(request(IDENTITY, &[("national_code", "0499370898")]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Rejected { message, .. } if message.contains("INVALID_NIN")),
        "{err:?}"
    );
}

/// A base URL pointing at the wrong path is a configuration problem, never "person not found".
#[tokio::test]
async fn wrong_base_path_is_not_reported_as_not_found() {
    let w = world().await;
    let cfg = common::config(
        tabadol_adapters::AdapterKind::CivilRegistry,
        format!("{}/wrong-prefix", w.sims.civil_registry.base_url()),
        std::time::Duration::from_secs(5),
    );
    let nocr = tabadol_adapters::build(&cfg).unwrap();
    let nc = w.ds().persons()[0].national_code.clone();
    let err = nocr
        .call(request(IDENTITY, &[("national_code", &nc)]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Protocol { message, .. } if message.contains("base_url")),
        "{err:?}"
    );
}
