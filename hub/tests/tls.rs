//! Mutual TLS at the hub's edge: only certificates from the national root that match an
//! agency get an answer; reflection and health work for a verified agency.

mod common;

use std::sync::{Arc, Mutex};

use common::{ctx, TestHub};
use tabadol_hub::ops::pki::{self, LeafSpec, PemPair};
use tabadol_proto::v1::shahkar_client::ShahkarClient;
use tabadol_proto::v1::MatchMobileRequest;
use tonic::Code;

/// The hub's log lines, captured for one test (current-thread runtime: every task of the
/// hub runs on the test's thread, where this subscriber is the default).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("warn")
            .with_ansi(false)
            .with_writer(move || LogWriter(logs.0.clone()))
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits (up to 5 s) for a log line containing every one of `parts`, and returns it.
    async fn wait_for(&self, parts: &[&str]) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = self.text();
            if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no log line with {parts:?}; the log was:\n{text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A refused connection never reaches a gRPC handler: the client sees a transport
/// failure (UNAVAILABLE or UNKNOWN, depending on where the handshake broke), never an
/// answer and never a policy decision.
fn assert_transport_refusal(err: &tonic::Status) {
    assert!(
        matches!(err.code(), Code::Unavailable | Code::Unknown),
        "expected a refused connection, got {err:?}"
    );
    assert_ne!(err.code(), Code::PermissionDenied);
}

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
    call(&hub, Some(hub.identity("cbi")), &hub.ca_pem())
        .await
        .expect("cbi is answered");
    hub.stop().await;
}

/// No client certificate: the handshake is refused and no answer comes back.
#[tokio::test]
async fn no_client_certificate_is_refused() {
    let logs = Logs::default();
    let _log = logs.install();
    let hub = TestHub::start().await;
    let err = call(&hub, None, &hub.ca_pem()).await.unwrap_err();
    assert_transport_refusal(&err);
    logs.wait_for(&["TLS handshake refused", "no certificates"])
        .await;
    hub.stop().await;
}

/// A certificate from another CA, even with a registered agency's name, is refused.
#[tokio::test]
async fn foreign_ca_is_refused() {
    let logs = Logs::default();
    let _log = logs.install();
    let hub = TestHub::start().await;
    let foreign = pki::new_root("Some Other Root").unwrap();
    let id = pki::issue(&foreign, &LeafSpec::client("cbi.agency.tabadol.ir")).unwrap();
    let err = call(&hub, Some(id), &hub.ca_pem()).await.unwrap_err();
    assert_transport_refusal(&err);
    logs.wait_for(&["TLS handshake refused", "UnknownIssuer"])
        .await;
    hub.stop().await;
}

/// An expired certificate from the right root is refused.
#[tokio::test]
async fn expired_certificate_is_refused() {
    let logs = Logs::default();
    let _log = logs.install();
    let hub = TestHub::start().await;
    let mut spec = LeafSpec::client("cbi.agency.tabadol.ir");
    spec.not_before = rcgen::date_time_ymd(2020, 1, 1);
    spec.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let id = hub.issue(&spec);
    let err = call(&hub, Some(id), &hub.ca_pem()).await.unwrap_err();
    assert_transport_refusal(&err);
    logs.wait_for(&["TLS handshake refused", "expired"]).await;
    hub.stop().await;
}

/// A valid certificate that matches no agency in agencies.yaml gets UNAUTHENTICATED.
#[tokio::test]
async fn unknown_agency_is_refused() {
    let logs = Logs::default();
    let _log = logs.install();
    let hub = TestHub::start().await;
    let id = hub.issue(&LeafSpec::client("rogue.agency.tabadol.ir"));
    let err = call(&hub, Some(id), &hub.ca_pem()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("rogue.agency.tabadol.ir"));
    logs.wait_for(&["matches no agency", "rogue.agency.tabadol.ir"])
        .await;
    hub.stop().await;
}

/// A certificate on the configured CRL is refused at the handshake (and the reason
/// logged), while another certificate of the same agency is still answered.
#[tokio::test]
async fn revoked_certificate_is_refused() {
    let logs = Logs::default();
    let _log = logs.install();
    let revoked = std::sync::OnceLock::new();
    let hub = TestHub::start_configured(None, common::policy_dir(), |pki_dir, config| {
        let ca = pki::read_ca(pki_dir).unwrap();
        let id = pki::issue(&ca, &LeafSpec::client("cbi.agency.tabadol.ir")).unwrap();
        let crl = pki::revocation_list(&ca, &[id.cert.as_str()]).unwrap();
        let path = pki_dir.ca_cert().with_file_name("crl.pem");
        std::fs::write(&path, crl).unwrap();
        config.tls.crls = vec![path];
        revoked.set(id).unwrap();
    })
    .await;
    let err = call(&hub, revoked.get().cloned(), &hub.ca_pem())
        .await
        .unwrap_err();
    assert_transport_refusal(&err);
    logs.wait_for(&["TLS handshake refused", "Revoked"]).await;

    call(&hub, Some(hub.identity("cbi")), &hub.ca_pem())
        .await
        .expect("cbi's own, unrevoked certificate is still answered");
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
    // What `grpcurl describe` asks: the file that defines a symbol, with the method set.
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "tabadol.v1.Inquiry".into(),
        )),
    };
    let mut stream = ServerReflectionClient::new(ch.clone())
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = resp.message_response else {
        panic!("unexpected reflection answer {resp:?}");
    };
    let described = files
        .file_descriptor_proto
        .iter()
        .map(|b| {
            <prost_types::FileDescriptorProto as prost::Message>::decode(b.as_slice()).unwrap()
        })
        .find(|f| f.service.iter().any(|s| s.name() == "Inquiry"))
        .expect("the file defining tabadol.v1.Inquiry");
    let methods: Vec<&str> = described
        .service
        .iter()
        .find(|s| s.name() == "Inquiry")
        .unwrap()
        .method
        .iter()
        .map(|m| m.name())
        .collect();
    for want in ["Inquire", "InquireMany", "Trace", "ListServices"] {
        assert!(methods.contains(&want), "{want} missing from {methods:?}");
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
