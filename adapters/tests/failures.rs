//! Provider down, slow provider, and the circuit breaker, against real simulators.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, request, world};
use tabadol_adapters::civil_registry::IDENTITY;
use tabadol_adapters::shahkar::MATCH_MOBILE;
use tabadol_adapters::simulators::start_civil_registry;
use tabadol_adapters::{build, build_with_circuit, AdapterKind, CircuitConfig, ProviderError};

/// Guard so a hanging call fails the test instead of stalling the suite.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("call did not finish within 20 s")
}

/// After the provider shuts down, calls fail with Unavailable ("connection …"), not a timeout,
/// even though the adapter's pool held a keep-alive connection to it.
#[tokio::test]
async fn provider_down_is_unavailable_not_timeout() {
    let w = world().await;
    let p = w.ds().persons()[0].clone();
    let req = || request(IDENTITY, &[("national_code", &p.national_code)]);
    bounded(w.nocr.call(req()))
        .await
        .expect("first call warms the pool");
    w.sims.civil_registry.shutdown().await;
    for _ in 0..2 {
        match bounded(w.nocr.call(req())).await.unwrap_err() {
            ProviderError::Unavailable { provider, reason } => {
                assert_eq!(provider, "nocr");
                assert!(reason.contains("connection"), "{reason}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}

/// A provider slower than the caller's remaining deadline yields Timeout after that deadline,
/// and the adapter recovers once the provider is fast again.
#[tokio::test]
async fn slow_provider_times_out_at_the_callers_deadline() {
    let w = world().await;
    let p = w.ds().persons()[1].clone();
    let mut req = request(
        MATCH_MOBILE,
        &[("national_code", &p.national_code), ("mobile", &p.mobile)],
    );
    req.timeout = Duration::from_millis(200);
    w.sims.shahkar.set_delay(Duration::from_secs(5));
    let err = bounded(w.shahkar.call(req.clone())).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Timeout {
            provider: "cra".into(),
            after: Duration::from_millis(200)
        }
    );
    w.sims.shahkar.set_delay(Duration::ZERO);
    let ok = bounded(w.shahkar.call(req)).await.unwrap();
    assert_eq!(ok.records[0]["matched"], "true");
}

/// The provider's configured timeout caps a caller who would wait longer.
#[tokio::test]
async fn provider_timeout_caps_a_patient_caller() {
    let w = world().await;
    let cfg = config(
        AdapterKind::Shahkar,
        w.sims.shahkar.base_url(),
        Duration::from_millis(150),
    );
    let shahkar = build(&cfg).unwrap();
    let p = w.ds().persons()[1].clone();
    w.sims.shahkar.set_delay(Duration::from_secs(5));
    let mut req = request(
        MATCH_MOBILE,
        &[("national_code", &p.national_code), ("mobile", &p.mobile)],
    );
    req.timeout = Duration::from_secs(30);
    let err = bounded(shahkar.call(req)).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Timeout { after, .. } if after == Duration::from_millis(150)),
        "{err:?}"
    );
}

/// After `failure_threshold` consecutive failures the adapter fails fast with "circuit open"
/// without touching the provider, even when it is back; after `open_for` one probe goes
/// through and closes the circuit.
#[tokio::test]
async fn circuit_opens_after_repeated_failures_then_recovers() {
    let w = world().await;
    let addr = w.sims.civil_registry.addr();
    let circuit = CircuitConfig {
        failure_threshold: 3,
        open_for: Duration::from_millis(300),
    };
    let cfg = config(
        AdapterKind::CivilRegistry,
        w.sims.civil_registry.base_url(),
        Duration::from_secs(5),
    );
    let nocr = build_with_circuit(&cfg, circuit).unwrap();
    let nc = w.ds().persons()[0].national_code.clone();
    let req = || request(IDENTITY, &[("national_code", &nc)]);

    w.sims.civil_registry.shutdown().await;
    for _ in 0..3 {
        let err = bounded(nocr.call(req())).await.unwrap_err();
        assert!(
            matches!(&err, ProviderError::Unavailable { reason, .. } if reason.contains("connection refused")),
            "{err:?}"
        );
    }
    // The provider comes back on the same address, but the circuit is open: fail fast.
    let revived = start_civil_registry(Arc::clone(&w.sims.dataset), addr)
        .await
        .unwrap();
    let err = bounded(nocr.call(req())).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Unavailable { reason, .. } if reason.contains("circuit open")),
        "{err:?}"
    );
    assert_eq!(
        revived.requests(),
        0,
        "an open circuit must not reach the provider"
    );

    tokio::time::sleep(Duration::from_millis(350)).await;
    bounded(nocr.call(req()))
        .await
        .expect("half-open probe succeeds");
    bounded(nocr.call(req()))
        .await
        .expect("circuit closed again");
    assert_eq!(revived.requests(), 2);
}

/// Callers whose own short deadline expires do not trip the breaker for everyone else.
#[tokio::test]
async fn impatient_callers_do_not_open_the_circuit() {
    let w = world().await;
    let circuit = CircuitConfig {
        failure_threshold: 2,
        open_for: Duration::from_secs(60),
    };
    let cfg = config(
        AdapterKind::Shahkar,
        w.sims.shahkar.base_url(),
        Duration::from_secs(5),
    );
    let shahkar = build_with_circuit(&cfg, circuit).unwrap();
    let p = w.ds().persons()[2].clone();
    let mut req = request(
        MATCH_MOBILE,
        &[("national_code", &p.national_code), ("mobile", &p.mobile)],
    );
    req.timeout = Duration::from_millis(50);
    w.sims.shahkar.set_delay(Duration::from_millis(500));
    for _ in 0..3 {
        let err = bounded(shahkar.call(req.clone())).await.unwrap_err();
        assert!(matches!(err, ProviderError::Timeout { .. }), "{err:?}");
    }
    w.sims.shahkar.set_delay(Duration::ZERO);
    req.timeout = Duration::from_secs(5);
    bounded(shahkar.call(req))
        .await
        .expect("circuit still closed");
}
