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
