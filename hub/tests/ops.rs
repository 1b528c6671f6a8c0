//! Operations end to end: a real Prometheus scrapes a test hub's admin listener; health
//! follows a provider stopped and restarted and a maintenance window; usage reports over
//! a generated month in every format; the dashboard in headless Chromium (screenshot kept
//! in target/test-artifacts/); OTLP spans received by a real OTLP/gRPC server; events tail.

mod common;
#[path = "common/ops.rs"]
mod ops_helpers;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ctx, TestHub};
use ops_helpers::{free_port, get, latin_digits, require_program, spawn};
use tabadol_proto::v1::civil_registry_client::CivilRegistryClient;
use tabadol_proto::v1::shahkar_client::ShahkarClient;
use tabadol_proto::v1::{GetIdentityRequest, MatchMobileRequest};

const SHAHKAR: &str = "cra.shahkar.match";

async fn shahkar_call(
    hub: &TestHub,
    agency: &str,
    tracking: &str,
    nc: &str,
    mobile: &str,
) -> Result<(), tonic::Status> {
    ShahkarClient::new(hub.channel(agency).await)
        .match_mobile(MatchMobileRequest {
            context: ctx(tracking, "kyc"),
            national_code: nc.into(),
            mobile: mobile.into(),
        })
        .await
        .map(|_| ())
}

/// A real Prometheus (Debian's package) scrapes the admin listener's /metrics; a PromQL
/// query returns the inquiries this test made, by outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_inquiries_by_outcome() {
    let prometheus = require_program("prometheus", "prometheus");
    let hub = TestHub::start().await;
    let admin = hub.handle.admin_addr.expect("the test hub has an admin listener");
    let (nc, mobile) = hub.alive(0);
    for i in 0..3 {
        shahkar_call(&hub, "cbi", &format!("TRK-PROM-OK-{i}"), &nc, &mobile)
            .await
            .expect("granted call");
    }
    for i in 0..2 {
        let e = shahkar_call(&hub, "rcs", &format!("TRK-PROM-DENY-{i}"), &nc, &mobile)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
    }
    let e = shahkar_call(&hub, "cbi", "TRK-PROM-BAD-1", "123", &mobile)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // The exposition itself: conventional names, no tracking or national codes.
    let (status, text) = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(status, 200);
    for family in [
        "tabadol_inquiries counter",
        "tabadol_inquiry_duration_seconds histogram",
        "tabadol_provider_call_duration_seconds histogram",
        "tabadol_provider_errors counter",
        "tabadol_provider_circuit_open gauge",
        "tabadol_rate_limit_refusals counter",
        "tabadol_connections gauge",
        "tabadol_streams gauge",
        "tabadol_audit_queue_depth gauge",
        "tabadol_audit_flush_duration_seconds histogram",
        "tabadol_outbox_depth gauge",
        "tabadol_relay_lag_seconds gauge",
        "tabadol_dead_letters gauge",
        "tabadol_policy_version gauge",
        "tabadol_policy_reload_failures counter",
        "tabadol_health_serving gauge",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}")),
            "/metrics lacks {family}:\n{text}"
        );
    }
    assert!(
        text.contains("tabadol_rate_limit_refusals_total{agency=\"cbi\",service=\"cra.shahkar.match\"} 0"),
        "every grant has its refusal series from the start:\n{text}"
    );
    assert!(text.contains("tabadol_connections{agency=\"cbi\"} "), "{text}");
    for secret in [nc.as_str(), mobile.as_str(), "TRK-PROM"] {
        assert!(!text.contains(secret), "/metrics holds {secret}");
    }

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: tabadol\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut cmd = Command::new(&prometheus);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn");
    let _prom = spawn(cmd);

    let query = "sum by (outcome) (tabadol_inquiries_total{job=\"tabadol\"})";
    let url = reqwest::Url::parse_with_params(
        &format!("http://127.0.0.1:{port}/api/v1/query"),
        &[("query", query)],
    )
    .unwrap();
    let want: BTreeMap<String, f64> = [("ok", 3.0), ("denied", 2.0), ("invalid", 1.0)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        if let Ok(resp) = reqwest::get(url.clone()).await {
            last = resp.text().await.unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&last) {
                let got: BTreeMap<String, f64> = v["data"]["result"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        (
                            r["metric"]["outcome"].as_str().unwrap_or("").to_owned(),
                            r["value"][1].as_str().unwrap_or("0").parse().unwrap_or(0.0),
                        )
                    })
                    .collect();
                if got == want {
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never answered {want:?} for `{query}`; last answer: {last}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    hub.stop().await;
}

async fn health_client(
    hub: &TestHub,
) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
    tonic_health::pb::health_client::HealthClient::new(hub.channel("cbi").await)
}

async fn status_of(
    client: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    service: &str,
) -> i32 {
    client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or(-1)
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
const NOT_SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;

/// Waits (at most 15 s) until every `(service, status)` holds at once.
async fn wait_health(
    client: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    want: &[(&str, i32)],
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut got = Vec::new();
        for (service, _) in want {
            got.push((*service, status_of(client, service).await));
        }
        if got.iter().zip(want).all(|(g, w)| g.1 == w.1) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health never became {want:?}; it is {got:?} (1 = SERVING, 2 = NOT_SERVING)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// grpc.health.v1 turns NOT_SERVING for Shahkar (its gRPC service and its catalog
/// service) when the Shahkar provider is stopped, while the hub and the other services
/// stay SERVING; and back to SERVING when the provider is started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_a_provider_stopped_and_restarted() {
    let hub = TestHub::start().await;
    let mut health = health_client(&hub).await;
    wait_health(
        &mut health,
        &[
            ("", SERVING),
            ("tabadol.v1.Shahkar", SERVING),
            (SHAHKAR, SERVING),
            ("tabadol.v1.CivilRegistry", SERVING),
        ],
    )
    .await;

    let addr = hub.sims.shahkar.addr();
    hub.sims.shahkar.shutdown().await;
    wait_health(
        &mut health,
        &[
            ("tabadol.v1.Shahkar", NOT_SERVING),
            (SHAHKAR, NOT_SERVING),
            ("", SERVING),
            ("tabadol.v1.CivilRegistry", SERVING),
            ("tabadol.v1.Inquiry", SERVING),
        ],
    )
    .await;
    // The admin listener's /health says why.
    let admin = hub.handle.admin_addr.unwrap();
    let (status, body) = get(&format!("http://{admin}/health")).await;
    assert_eq!(status, 200, "the hub as a whole still serves: {body}");
    let snap: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(snap["services"][SHAHKAR]["serving"], false, "{body}");
    assert!(
        snap["services"][SHAHKAR]["reason"]
            .as_str()
            .unwrap()
            .contains("provider cra"),
        "{body}"
    );
    let (_, metrics) = get(&format!("http://{admin}/metrics")).await;
    assert!(
        metrics.contains(&format!("tabadol_health_serving{{service=\"{SHAHKAR}\"}} 0")),
        "{metrics}"
    );

    let restarted = tabadol_adapters::simulators::start_shahkar(hub.dataset.clone(), addr)
        .await
        .expect("the simulator listens on its old port again");
    wait_health(
        &mut health,
        &[("tabadol.v1.Shahkar", SERVING), (SHAHKAR, SERVING), ("", SERVING)],
    )
    .await;
    let (nc, mobile) = hub.alive(0);
    shahkar_call(&hub, "cbi", "TRK-HEALTH-BACK", &nc, &mobile)
        .await
        .expect("calls go through again");
    restarted.shutdown().await;
    hub.stop().await;
}

/// A service inside a planned maintenance window (services.yaml) is NOT_SERVING while
/// the other method of the same provider, and its gRPC service, still serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_shows_a_maintenance_window() {
    use tabadol_policy::jalali::JalaliDate;
    let policy = common::copy_policy();
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::get("Asia/Tehran").unwrap())
        .date();
    let from = JalaliDate::from_civil(today.yesterday().unwrap());
    let until = JalaliDate::from_civil(today.tomorrow().unwrap());
    let path = policy.path().join("services.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"1405/09/01 02:00\""), "the shipped window moved");
    let text = text
        .replace("\"1405/09/01 02:00\"", &format!("\"{from} 00:00\""))
        .replace("\"1405/09/01 04:00\"", &format!("\"{until} 23:00\""));
    std::fs::write(&path, text).unwrap();
    let hub = TestHub::start_with_policy(policy.path().to_owned()).await;
    let mut health = health_client(&hub).await;
    wait_health(
        &mut health,
        &[
            ("nocr.identity", NOT_SERVING),
            ("nocr.life-status", SERVING),
            ("tabadol.v1.CivilRegistry", SERVING),
            ("", SERVING),
        ],
    )
    .await;
    let admin = hub.handle.admin_addr.unwrap();
    let (_, body) = get(&format!("http://{admin}/health")).await;
    let snap: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        snap["services"]["nocr.identity"]["reason"]
            .as_str()
            .unwrap()
            .contains("planned maintenance"),
        "{body}"
    );
    hub.stop().await;
}
