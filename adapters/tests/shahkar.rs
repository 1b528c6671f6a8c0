//! Shahkar adapter against the Shahkar simulator.
mod common;

use common::{one, rec, request, world};
use tabadol_adapters::shahkar::MATCH_MOBILE;
use tabadol_adapters::ProviderError;

/// A person's own mobile number matches their national code.
#[tokio::test]
async fn own_mobile_matches() {
    let w = world().await;
    let p = &w.ds().persons()[3];
    let r = one(
        &*w.shahkar,
        request(
            MATCH_MOBILE,
            &[("national_code", &p.national_code), ("mobile", &p.mobile)],
        ),
    )
    .await
    .unwrap();
    assert_eq!(r, rec(&[("matched", "true")]));
}

/// The samples' mismatch example (someone else's real mobile) does not match.
#[tokio::test]
async fn someone_elses_mobile_does_not_match() {
    let w = world().await;
    let s = w.ds().samples();
    let ex = &s["mobile_mismatch_example"];
    let r = one(
        &*w.shahkar,
        request(
            MATCH_MOBILE,
            &[
                ("national_code", ex["national_code"].as_str().unwrap()),
                ("mobile", ex["mobile"].as_str().unwrap()),
            ],
        ),
    )
    .await
    .unwrap();
    assert_eq!(r, rec(&[("matched", "false")]));
}

/// Shahkar never reveals whether a national code exists: unknown code answers matched=false.
#[tokio::test]
async fn unknown_code_is_a_mismatch_not_an_error() {
    let w = world().await;
    let r = one(
        &*w.shahkar,
        request(
            MATCH_MOBILE,
            &[
                ("national_code", w.ds().unknown_national_code()),
                ("mobile", "09121234567"),
            ],
        ),
    )
    .await
    .unwrap();
    assert_eq!(r["matched"], "false");
}

/// A malformed mobile is refused by the provider, and the refusal says why.
#[tokio::test]
async fn malformed_mobile_is_rejected_with_providers_reason() {
    let w = world().await;
    let p = &w.ds().persons()[0];
    let err = w
        .shahkar
        .call(request(
            MATCH_MOBILE,
            &[("national_code", &p.national_code), ("mobile", "0912")],
        ))
        .await
        .unwrap_err();
    match err {
        ProviderError::Rejected { provider, message } => {
            assert_eq!(provider, "cra");
            assert!(message.contains("602"), "{message}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// The tracking code travels as a header: without one the provider refuses the call (Shahkar
/// code 600; its comment is the provider's text and is not passed on).
#[tokio::test]
async fn tracking_code_is_sent_to_the_provider() {
    let w = world().await;
    let p = &w.ds().persons()[0];
    let mut req = request(
        MATCH_MOBILE,
        &[("national_code", &p.national_code), ("mobile", &p.mobile)],
    );
    req.tracking_code = String::new();
    let err = w.shahkar.call(req).await.unwrap_err();
    assert!(err.to_string().contains("code 600"), "{err}");
    assert!(!err.to_string().contains("X-Tracking-Code"), "{err}");
}

/// Missing inputs and unknown operations fail before any network call, naming what is wrong.
#[tokio::test]
async fn missing_param_and_unknown_operation() {
    let w = world().await;
    let err = w
        .shahkar
        .call(request(MATCH_MOBILE, &[("national_code", "0499370899")]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Rejected { message, .. } if message.contains("mobile")),
        "{err}"
    );
    let err = w.shahkar.call(request("identity", &[])).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::UnknownOperation {
            provider: "cra".into(),
            operation: "identity".into()
        }
    );
    assert_eq!(w.sims.shahkar.requests(), 0);
}
