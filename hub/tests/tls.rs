//! Mutual TLS at the hub's edge: only certificates from the national root that match an
//! agency get an answer; reflection and health work for a verified agency.

mod common;

use common::{ctx, TestHub};
use tabadol_hub::pki::{self, LeafSpec, PemPair};
use tabadol_proto::v1::shahkar_client::ShahkarClient;
use tabadol_proto::v1::MatchMobileRequest;
use tonic::Code;

async fn call(hub: &TestHub, identity: Option<PemPair>, ca_pem: &str) -> Result<(), tonic::Status> {
    let (nc, mobile) = hub.alive(0);
    let channel = match hub.channel_with(identity, ca_pem).await {
        Ok(c) => c,
        Err(e) => return Err(tonic::Status::unavailable(e.to_string())),
    };
    ShahkarClient::new(channel)
        .match_mobile(MatchMobileRequest {
            context: ctx("TRK-TLS-0001", "kyc"),
            national_code: nc,
            mobile,
        })
        .await
        .map(|_| ())
}

/// A valid agency certificate is answered (the baseline the refusals below differ from).
#[tokio::test]
async fn valid_certificate_is_answered() {
    let hub = TestHub::start().await;
    let cert = std::fs::read_to_string(hub.pki.agency_cert("cbi")).unwrap();
    let key = std::fs::read_to_string(hub.pki.agency_key("cbi")).unwrap();
    call(&hub, Some(PemPair { cert, key }), &hub.ca_pem())
        .await
        .expect("cbi is answered");
    hub.stop().await;
}

/// No client certificate: the handshake is refused and no answer comes back.
#[tokio::test]
async fn no_client_certificate_is_refused() {
    let hub = TestHub::start().await;
    let err = call(&hub, None, &hub.ca_pem()).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "{err:?}"
    );
    hub.stop().await;
}

/// A certificate from another CA, even with a registered agency's name, is refused.
#[tokio::test]
async fn foreign_ca_is_refused() {
    let hub = TestHub::start().await;
    let foreign = pki::new_root("Some Other Root").unwrap();
    let id = pki::issue(&foreign, &LeafSpec::client("cbi.agency.tabadol.ir")).unwrap();
    let err = call(&hub, Some(id), &hub.ca_pem()).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "{err:?}"
    );
    hub.stop().await;
}

/// An expired certificate from the right root is refused.
#[tokio::test]
async fn expired_certificate_is_refused() {
    let hub = TestHub::start().await;
    let mut spec = LeafSpec::client("cbi.agency.tabadol.ir");
    spec.not_before = rcgen::date_time_ymd(2020, 1, 1);
    spec.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let id = hub.issue(&spec);
    let err = call(&hub, Some(id), &hub.ca_pem()).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "{err:?}"
    );
    hub.stop().await;
}

/// A valid certificate that matches no agency in agencies.yaml gets UNAUTHENTICATED.
#[tokio::test]
async fn unknown_agency_is_refused() {
    let hub = TestHub::start().await;
    let id = hub.issue(&LeafSpec::client("rogue.agency.tabadol.ir"));
    let err = call(&hub, Some(id), &hub.ca_pem()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("rogue.agency.tabadol.ir"));
    hub.stop().await;
}

/// Server reflection lists every tabadol.v1 service and the health service says SERVING.
#[tokio::test]
async fn reflection_and_health_are_on() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let hub = TestHub::start().await;
    let ch = hub.channel("cbi").await;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(ch.clone())
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "tabadol.v1.Inquiry",
        "tabadol.v1.Shahkar",
        "tabadol.v1.CivilRegistry",
        "tabadol.v1.Tax",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let health = HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: "tabadol.v1.Inquiry".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
    hub.stop().await;
}
