//! Operations end to end: a real Prometheus scrapes a test hub's admin listener; health
//! follows a provider stopped and restarted and a maintenance window; usage reports over
//! a generated month in every format; the dashboard in headless Chromium (screenshot kept
//! in target/test-artifacts/); OTLP spans received by a real OTLP/gRPC server; events tail.

mod common;
#[path = "common/ops.rs"]
mod ops_helpers;

use std::collections::BTreeMap;

use axum::response::IntoResponse as _;
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
    let admin = hub
        .handle
        .admin_addr
        .expect("the test hub has an admin listener");
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
        text.contains(
            "tabadol_rate_limit_refusals_total{agency=\"cbi\",service=\"cra.shahkar.match\"} 0"
        ),
        "every grant has its refusal series from the start:\n{text}"
    );
    assert!(
        text.contains("tabadol_connections{agency=\"cbi\"} "),
        "{text}"
    );
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
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
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

    // deploy/: the scrape configuration is valid, and every query of the Grafana
    // dashboard is valid PromQL over metrics the hub exposes.
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let promtool = require_program("promtool", "prometheus");
    let check = Command::new(promtool)
        .args(["check", "config"])
        .arg(deploy.join("prometheus.yml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let grafana: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = 0;
    for panel in grafana["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            exprs += 1;
            let url = reqwest::Url::parse_with_params(
                &format!("http://127.0.0.1:{port}/api/v1/query"),
                &[("query", expr)],
            )
            .unwrap();
            let answer: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            assert_eq!(answer["status"], "success", "{expr}: {answer}");
            let metric = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .find(|w| w.starts_with("tabadol_"))
                .unwrap();
            let family = metric
                .trim_end_matches("_bucket")
                .trim_end_matches("_total");
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{expr}: the hub has no {family}"
            );
        }
    }
    assert!(exprs >= 20);
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
        metrics.contains(&format!(
            "tabadol_health_serving{{service=\"{SHAHKAR}\"}} 0"
        )),
        "{metrics}"
    );

    let restarted = tabadol_adapters::simulators::start_shahkar(hub.dataset.clone(), addr)
        .await
        .expect("the simulator listens on its old port again");
    wait_health(
        &mut health,
        &[
            ("tabadol.v1.Shahkar", SERVING),
            (SHAHKAR, SERVING),
            ("", SERVING),
        ],
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
    assert!(
        text.contains("\"1405/09/01 02:00\""),
        "the shipped window moved"
    );
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

/// One generated audit record: agency, service, outcome, latency (µs), time (µs).
type Gen = (&'static str, &'static str, &'static str, u64, i64);

fn tehran_micros(y: i32, m: u8, d: u8, h: i8, min: i8, s: i8) -> i64 {
    let civil = tabadol_policy::jalali::JalaliDate::new(y, m, d)
        .unwrap()
        .to_civil();
    civil
        .at(h, min, s, 0)
        .to_zoned(jiff::tz::TimeZone::get("Asia/Tehran").unwrap())
        .unwrap()
        .timestamp()
        .as_microsecond()
}

/// Calls of 1405/08 (days 1–30), plus some just outside it.
fn generated_calls() -> Vec<Gen> {
    let mut v: Vec<Gen> = Vec::new();
    let outcomes = [
        ("ok", 30),
        ("denied", 5),
        ("unavailable", 3),
        ("rate_limited", 2),
    ];
    let mut i = 0u64;
    for (outcome, n) in outcomes {
        for _ in 0..n {
            let day = (i % 30) as u8 + 1;
            v.push((
                "cbi",
                SHAHKAR,
                outcome,
                1_000 + i * 737 % 9_000,
                tehran_micros(1405, 8, day, (i % 24) as i8, 10, 0),
            ));
            i += 1;
        }
    }
    for k in 0..7u64 {
        v.push((
            "moh",
            "nocr.identity",
            "ok",
            20_000 + k * 3_100,
            tehran_micros(1405, 8, 15, 9, k as i8, 0),
        ));
    }
    v.push((
        "moh",
        "nocr.identity",
        "invalid",
        400,
        tehran_micros(1405, 8, 16, 9, 0, 0),
    ));
    // The first and last second of the month are in it...
    v.push((
        "cbi",
        SHAHKAR,
        "ok",
        5_000,
        tehran_micros(1405, 8, 1, 0, 0, 0),
    ));
    v.push((
        "cbi",
        SHAHKAR,
        "ok",
        6_000,
        tehran_micros(1405, 8, 30, 23, 59, 59),
    ));
    // ...the seconds around it are not (but are in quarter 3).
    v.push((
        "cbi",
        SHAHKAR,
        "ok",
        7_000,
        tehran_micros(1405, 7, 30, 23, 59, 59),
    ));
    v.push((
        "moh",
        "nocr.identity",
        "ok",
        8_000,
        tehran_micros(1405, 9, 1, 0, 0, 0),
    ));
    // Another quarter entirely.
    v.push((
        "cbi",
        SHAHKAR,
        "ok",
        9_000,
        tehran_micros(1405, 10, 1, 12, 0, 0),
    ));
    v.sort_by_key(|g| g.4);
    v
}

/// Writes `calls` into a new hub store under `data_dir/store` (as a stopped hub leaves it).
fn write_store(data_dir: &std::path::Path, calls: &[Gen]) {
    let store = data_dir.join("store");
    let calls = calls.to_vec();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let db = tabadol_hub::inquiry::audit::open_store(&store, None).unwrap();
            let audit = tabadol_hub::inquiry::audit::Audit::open(&db, Default::default()).unwrap();
            for (n, (agency, service, outcome, latency, time)) in calls.into_iter().enumerate() {
                audit
                    .append(tabadol_hub::inquiry::audit::AuditRecord {
                        seq: 0,
                        time_micros: time,
                        inquiry_id: format!("gen-{n}"),
                        agency: agency.into(),
                        service: service.into(),
                        purpose: "kyc".into(),
                        tracking_code: format!("TRK-GEN-{n}"),
                        service_request_id: String::new(),
                        outcome: outcome.into(),
                        latency_micros: latency,
                        detail: String::new(),
                        prev_hash: String::new(),
                        hash: String::new(),
                    })
                    .await
                    .unwrap();
            }
            db.flush_async().await.unwrap();
        });
        // Dropping the runtime ends the audit writer and with it its handle on the store.
        drop(rt);
    })
    .join()
    .unwrap();
}

/// What a report must say for one group: calls, by outcome, p50/p95/p99 in ms.
#[derive(Debug, PartialEq)]
struct Expect {
    calls: u64,
    outcomes: BTreeMap<String, u64>,
    p: [f64; 3],
}

fn expected(
    calls: &[Gen],
    from: i64,
    until: i64,
    public: bool,
) -> BTreeMap<(String, String), Expect> {
    type Group = (BTreeMap<String, u64>, Vec<u64>);
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    for (agency, service, outcome, latency, time) in calls {
        if *time < from || *time >= until {
            continue;
        }
        let a = if public {
            String::new()
        } else {
            agency.to_string()
        };
        let g = groups.entry((a, service.to_string())).or_default();
        *g.0.entry(outcome.to_string()).or_default() += 1;
        g.1.push(*latency);
    }
    groups
        .into_iter()
        .map(|(k, (outcomes, mut lat))| {
            lat.sort();
            // Nearest rank: the smallest value with at least p% of the values at or below it.
            let pick = |p: f64| {
                let n = lat.len();
                let idx = (0..n)
                    .find(|&i| (i + 1) as f64 >= p / 100.0 * n as f64)
                    .unwrap();
                lat[idx] as f64 / 1000.0
            };
            (
                k,
                Expect {
                    calls: lat.len() as u64,
                    outcomes,
                    p: [pick(50.0), pick(95.0), pick(99.0)],
                },
            )
        })
        .collect()
}

fn tabadol(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tabadol"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tabadol report usage` over a generated 1405/08 matches the calls made — per agency ×
/// service, by outcome, with nearest-rank latency percentiles — in table, CSV, JSON and
/// HTML; calls a second outside the month are left out; the quarterly public figures
/// carry no agency; bad periods are refused saying what to give.
#[test]
fn report_usage_matches_the_calls_in_every_format() {
    let calls = generated_calls();
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path(), &calls);
    let policy_dir = common::policy_dir();
    let policy = tabadol_policy::Policy::load_dir(&policy_dir).unwrap();
    let d = dir.path().to_str().unwrap();
    let p = policy_dir.to_str().unwrap();
    let from = tehran_micros(1405, 8, 1, 0, 0, 0);
    let until = tehran_micros(1405, 9, 1, 0, 0, 0);
    let want = expected(&calls, from, until, false);
    assert_eq!(want.len(), 2);
    assert_eq!(want[&("cbi".into(), SHAHKAR.into())].calls, 42);

    let run = |format: &str| {
        let (ok, out, err) = tabadol(&[
            "report", "usage", "--month", "1405/08", "--dir", d, "--policy", p, "--format", format,
        ]);
        assert!(ok, "report --format {format} failed: {err}");
        out
    };

    // JSON
    let json: serde_json::Value = serde_json::from_str(&run("json")).unwrap();
    assert_eq!(json["period"], "1405/08");
    assert_eq!(json["from"], "1405/08/01");
    assert_eq!(json["until"], "1405/08/30");
    assert_eq!(json["calls"], 42 + 8);
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), want.len());
    for row in rows {
        let key = (
            row["agency"].as_str().unwrap().to_owned(),
            row["service"].as_str().unwrap().to_owned(),
        );
        let w = &want[&key];
        assert_eq!(row["calls"].as_u64().unwrap(), w.calls, "{key:?}");
        let outcomes: BTreeMap<String, u64> =
            serde_json::from_value(row["outcomes"].clone()).unwrap();
        assert_eq!(outcomes, w.outcomes, "{key:?}");
        let got = [
            row["p50_ms"].as_f64().unwrap(),
            row["p95_ms"].as_f64().unwrap(),
            row["p99_ms"].as_f64().unwrap(),
        ];
        assert_eq!(got, w.p, "{key:?}");
        let agency = policy.agency(&key.0).unwrap();
        assert_eq!(row["agency_fa"], agency.name_fa.as_str());
        assert_eq!(row["agency_en"], agency.name_en.as_str());
        assert_eq!(
            row["service_fa"],
            policy.service(&key.1).unwrap().title_fa.as_str()
        );
    }

    // CSV: a header, one line per group, the same numbers.
    let csv = run("csv");
    let mut lines = csv.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| {
        head.iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name}: {head:?}"))
    };
    let body: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    assert_eq!(body.len(), want.len(), "{csv}");
    for cells in &body {
        let key = (cells[col("agency")].clone(), cells[col("service")].clone());
        let w = &want[&key];
        assert_eq!(cells[col("period")], "1405/08");
        assert_eq!(cells[col("calls")].parse::<u64>().unwrap(), w.calls);
        for o in ["ok", "denied", "unavailable", "rate_limited", "invalid"] {
            assert_eq!(
                cells[col(o)].parse::<u64>().unwrap(),
                w.outcomes.get(o).copied().unwrap_or(0),
                "{key:?} {o}"
            );
        }
        assert_eq!(
            cells[col("p95_ms")].parse::<f64>().unwrap(),
            w.p[1],
            "{key:?}"
        );
        assert_eq!(
            cells[col("agency_fa")],
            policy.agency(&key.0).unwrap().name_fa
        );
    }

    // Table: one aligned line per group with its calls and outcome counts.
    let table = run("table");
    assert!(table.contains("1405/08/01 – 1405/08/30"), "{table}");
    let head = table
        .lines()
        .find(|l| l.starts_with("AGENCY"))
        .expect(&table);
    let cols: Vec<&str> = head.split_whitespace().collect();
    for ((agency, service), w) in &want {
        let line = table
            .lines()
            .find(|l| l.starts_with(agency.as_str()) && l.contains(service.as_str()))
            .unwrap_or_else(|| panic!("no line for {agency} {service}:\n{table}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells.len(), cols.len(), "{line}");
        let at = |name: &str| cells[cols.iter().position(|c| *c == name).unwrap()];
        assert_eq!(at("CALLS").parse::<u64>().unwrap(), w.calls);
        assert_eq!(at("OK").parse::<u64>().unwrap(), w.outcomes["ok"]);
        assert_eq!(
            at("P99_MS").parse::<f64>().unwrap(),
            (w.p[2] * 10.0).round() / 10.0
        );
    }

    // The table names each id in English and Persian below it.
    for id in ["cbi", "moh"] {
        let a = policy.agency(id).unwrap();
        assert!(
            table.contains(&format!("{id}: {} — {}", a.name_en, a.name_fa)),
            "{table}"
        );
    }
    let s = policy.service(SHAHKAR).unwrap();
    assert!(table.contains(&format!("{SHAHKAR}: {} — {}", s.title_en, s.title_fa)));

    // HTML: Persian, right to left, Persian digits that read back as the same numbers.
    let html = run("html");
    assert!(html.contains("<html lang=\"fa\" dir=\"rtl\">"), "{html}");
    assert!(
        html.contains("۱۴۰۵/۰۸/۰۱"),
        "Jalali dates in Persian digits"
    );
    for ((agency, service), w) in &want {
        let marker = format!("data-agency=\"{agency}\" data-service=\"{service}\">");
        let start = html
            .find(&marker)
            .unwrap_or_else(|| panic!("no row {marker}"));
        let row = &html[start..start + html[start..].find("</tr>").unwrap()];
        assert!(
            row.contains(policy.agency(agency).unwrap().name_fa.as_str()),
            "{row}"
        );
        assert!(
            row.contains(policy.agency(agency).unwrap().name_en.as_str()),
            "{row}"
        );
        let calls_cell = row.split("class=\"n calls\">").nth(1).unwrap();
        let calls_text = latin_digits(&calls_cell[..calls_cell.find('<').unwrap()]);
        assert_eq!(calls_text.parse::<u64>().unwrap(), w.calls, "{row}");
        let ok_cell = row.split("data-outcome=\"ok\">").nth(1).unwrap();
        assert_eq!(
            latin_digits(&ok_cell[..ok_cell.find('<').unwrap()])
                .parse::<u64>()
                .unwrap(),
            w.outcomes["ok"]
        );
    }

    // Public figures of quarter 1405-3: per service, no agency anywhere.
    let (ok, out, err) = tabadol(&[
        "report",
        "usage",
        "--public",
        "--quarter",
        "1405-3",
        "--dir",
        d,
        "--policy",
        p,
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let q: serde_json::Value = serde_json::from_str(&out).unwrap();
    let qfrom = tehran_micros(1405, 7, 1, 0, 0, 0);
    let quntil = tehran_micros(1405, 10, 1, 0, 0, 0);
    let qwant = expected(&calls, qfrom, quntil, true);
    assert_eq!(q["from"], "1405/07/01");
    assert_eq!(q["until"], "1405/09/30");
    let qrows = q["rows"].as_array().unwrap();
    assert_eq!(qrows.len(), qwant.len());
    for row in qrows {
        assert!(
            row.get("agency").is_none(),
            "public figures name an agency: {row}"
        );
        let w = &qwant[&(String::new(), row["service"].as_str().unwrap().to_owned())];
        assert_eq!(row["calls"].as_u64().unwrap(), w.calls);
        let failed = w.outcomes.get("unavailable").copied().unwrap_or(0);
        let avail = ((w.calls - failed) as f64 * 10000.0 / w.calls as f64).round() / 100.0;
        assert_eq!(row["availability_percent"].as_f64().unwrap(), avail);
    }
    for agency in ["cbi", "moh"] {
        let name = &policy.agency(agency).unwrap().name_en;
        for format in ["json", "csv", "table", "html"] {
            let (_, out, _) = tabadol(&[
                "report",
                "usage",
                "--public",
                "--quarter",
                "1405-3",
                "--dir",
                d,
                "--policy",
                p,
                "--format",
                format,
            ]);
            assert!(
                !out.contains(name.as_str()) && !out.contains(&format!("\"{agency}\"")),
                "{format}: {out}"
            );
        }
    }

    // Bad input is refused naming the flag.
    let (ok, _, err) = tabadol(&[
        "report", "usage", "--month", "1405/13", "--dir", d, "--policy", p,
    ]);
    assert!(
        !ok && err.contains("--month") && err.contains("01–12"),
        "{err}"
    );
    let (ok, _, err) = tabadol(&[
        "report", "usage", "--month", "1405/08", "--dir", d, "--policy", p, "--format", "pdf",
    ]);
    assert!(!ok && err.contains("--format"), "{err}");
}

fn chromium(args: &[String]) -> String {
    let browser = require_program("chromium", "chromium");
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The dashboard loads in headless Chromium: the access matrix with each grant's
/// approval, subscriptions, today's usage of the calls just made, availability; in
/// Persian (RTL) and, toggled, English. A screenshot is kept in target/test-artifacts/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let hub = TestHub::start().await;
    let (nc, mobile) = hub.alive(0);
    for i in 0..2 {
        shahkar_call(&hub, "cbi", &format!("TRK-DASH-{i}"), &nc, &mobile)
            .await
            .unwrap();
    }
    CivilRegistryClient::new(hub.channel("moh").await)
        .get_identity(GetIdentityRequest {
            context: ctx("TRK-DASH-ID", "patient-identification"),
            national_code: nc.clone(),
            fields: vec![],
        })
        .await
        .unwrap();
    // Health has been checked once, so availability is filled in.
    let mut health = health_client(&hub).await;
    wait_health(&mut health, &[(SHAHKAR, SERVING)]).await;

    let admin = hub.handle.admin_addr.unwrap();
    let url = format!("http://{admin}/");
    let dom = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || chromium(&["--dump-dom".into(), url]))
            .await
            .unwrap()
    };
    let policy = tabadol_policy::Policy::load_dir(&common::policy_dir()).unwrap();
    assert!(dom.contains("dir=\"rtl\""), "Persian page is right to left");
    assert!(dom.contains("ماتریس دسترسی"), "{dom}");
    assert!(dom.contains("id=\"access-matrix\""));
    // Every grant of the policy, with the approval it cites.
    let mut grants = 0;
    for a in policy.agencies() {
        for (svc, g) in policy.grants_for(&a.id) {
            grants += 1;
            let marker = format!("data-agency=\"{}\" data-service=\"{}\"", a.id, svc.id);
            let start = dom
                .find(&format!("<tr class=\"grant\" {marker}"))
                .unwrap_or_else(|| panic!("no grant row {marker}"));
            let row = &dom[start..start + dom[start..].find("</tr>").unwrap()];
            let approval = tabadol_hub::inquiry::pipeline::approval_text(&g.approved);
            let approval = approval.replace('&', "&amp;").replace('"', "&quot;");
            assert!(row.contains(&approval), "{row} lacks {approval}");
            assert!(row.contains(&g.fields.join(", ")), "{row}");
        }
    }
    assert!(grants > 5);
    assert!(dom.contains("id=\"subscriptions\""));
    // Today's usage: cbi made 2 Shahkar calls, moh 1 identity call.
    for (agency, service, n) in [("cbi", SHAHKAR, "۲"), ("moh", "nocr.identity", "۱")] {
        let marker =
            format!("<tr class=\"usage\" data-agency=\"{agency}\" data-service=\"{service}\">");
        let start = dom
            .find(&marker)
            .unwrap_or_else(|| panic!("no usage row {marker}:\n{dom}"));
        let row = &dom[start..start + dom[start..].find("</tr>").unwrap()];
        assert!(row.contains(&format!("class=\"n today\">{n}<")), "{row}");
        assert!(row.contains(&format!("class=\"n month\">{n}<")), "{row}");
    }
    assert!(
        !dom.contains(&nc) && !dom.contains("TRK-DASH"),
        "no subject data, no tracking codes"
    );
    // Availability: services serving, the shipped maintenance window listed when ahead.
    assert!(dom.contains("id=\"availability\""));
    assert!(dom.contains("در حال خدمت"), "{dom}");

    // English toggle.
    let en = {
        let url = format!("{url}?lang=en");
        tokio::task::spawn_blocking(move || chromium(&["--dump-dom".into(), url]))
            .await
            .unwrap()
    };
    assert!(en.contains("dir=\"ltr\"") && en.contains("Access matrix") && en.contains("Usage"));
    assert!(en.contains(&policy.agency("cbi").unwrap().name_en));
    assert!(
        en.contains("class=\"n today\">2<"),
        "English numbers in Latin digits"
    );

    // The running hub's month report (linked from the page) counts the same calls.
    let today = tabadol_policy::jalali::JalaliDate::in_tehran(jiff::Timestamp::now());
    let month = format!("{:04}/{:02}", today.year, today.month);
    let (status, body) = get(&format!(
        "http://{admin}/report/usage?month={month}&format=json"
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let calls = |agency: &str, service: &str| {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["agency"] == agency && r["service"] == service)
            .map(|r| r["calls"].as_u64().unwrap())
    };
    assert_eq!(calls("cbi", SHAHKAR), Some(2), "{body}");
    assert_eq!(calls("moh", "nocr.identity"), Some(1), "{body}");
    let (status, _) = get(&format!("http://{admin}/report/usage?month=1405/13")).await;
    assert_eq!(status, 400);

    // The screenshot, kept as an artifact.
    let shot = ops_helpers::artifacts_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    {
        let args = vec![
            format!("--screenshot={}", shot.display()),
            "--window-size=1600,2400".to_owned(),
            url.clone(),
        ];
        tokio::task::spawn_blocking(move || chromium(&args))
            .await
            .unwrap();
    }
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real picture"
    );
    let shot_en = ops_helpers::artifacts_dir().join("dashboard-en.png");
    let _ = std::fs::remove_file(&shot_en);
    {
        let args = vec![
            format!("--screenshot={}", shot_en.display()),
            "--window-size=1600,2400".to_owned(),
            format!("{url}?lang=en"),
        ];
        tokio::task::spawn_blocking(move || chromium(&args))
            .await
            .unwrap();
    }
    assert!(std::fs::metadata(&shot_en).unwrap().len() > 10_000);
    hub.stop().await;
}

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// A real OTLP/gRPC trace receiver: every exported span, kept.
#[derive(Clone, Default)]
struct Receiver(std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attr(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        })
}

/// An inquiry's spans reach a real OTLP/gRPC receiver: the inquiry span carries agency,
/// service, purpose, tracking code and outcome (never the national code or mobile), its
/// parent is the caller's `traceparent`, the decision and the provider call are its
/// children, and the provider receives a `traceparent` of the same trace whose parent is
/// the provider-call span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_receives_the_spans_of_an_inquiry_with_the_callers_parent() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // A Shahkar stand-in that answers and records the traceparent it is sent.
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let provider = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let provider_addr = provider.local_addr().unwrap();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let record = record.clone();
        async move {
            if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
                record.lock().unwrap().push(tp.to_owned());
            }
            axum::Json(serde_json::json!({"response": 0, "matched": true}))
        }
    });
    let provider_task = tokio::spawn(async move { axum::serve(provider, app).await });

    let hub = TestHub::start_configured(None, common::policy_dir(), |_, cfg| {
        cfg.telemetry.otlp_endpoint = Some(format!("http://{otlp}"));
        for p in &mut cfg.providers {
            if p.provider == "cra" {
                p.base_url = format!("http://{provider_addr}");
            }
        }
    })
    .await;
    let (nc, mobile) = hub.alive(0);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut req = tonic::Request::new(MatchMobileRequest {
        context: ctx("TRK-OTEL-1", "kyc"),
        national_code: nc.clone(),
        mobile: mobile.clone(),
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01").parse().unwrap(),
    );
    ShahkarClient::new(hub.channel("cbi").await)
        .match_mobile(req)
        .await
        .expect("the call succeeds");

    let handle = &hub.handle;
    tokio::task::block_in_place(|| handle.flush_telemetry());
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = receiver.0.lock().unwrap().clone();
        let inquiry = spans.iter().any(|s| {
            s.name == "tabadol.inquiry"
                && attr(s, "tabadol.tracking_code").as_deref() == Some("TRK-OTEL-1")
        });
        if inquiry && spans.len() >= 3 {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans never arrived: {spans:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        tokio::task::block_in_place(|| handle.flush_telemetry());
    };
    let inquiry = spans.iter().find(|s| s.name == "tabadol.inquiry").unwrap();
    assert_eq!(
        hex::encode(&inquiry.trace_id),
        trace_id,
        "the caller's trace"
    );
    assert_eq!(
        hex::encode(&inquiry.parent_span_id),
        parent_id,
        "the caller's span is the parent"
    );
    assert_eq!(attr(inquiry, "tabadol.agency").as_deref(), Some("cbi"));
    assert_eq!(attr(inquiry, "tabadol.service").as_deref(), Some(SHAHKAR));
    assert_eq!(attr(inquiry, "tabadol.purpose").as_deref(), Some("kyc"));
    assert_eq!(attr(inquiry, "tabadol.outcome").as_deref(), Some("ok"));
    for name in ["tabadol.decision", "tabadol.provider_call"] {
        let child = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span: {spans:?}"));
        assert_eq!(child.trace_id, inquiry.trace_id);
        assert_eq!(
            child.parent_span_id, inquiry.span_id,
            "{name} is a child of the inquiry"
        );
    }
    for s in &spans {
        for kv in &s.attributes {
            let v = format!("{:?}", kv.value);
            assert!(
                !v.contains(&nc) && !v.contains(&mobile),
                "subject data in span {}: {kv:?}",
                s.name
            );
        }
    }
    let call = spans
        .iter()
        .find(|s| s.name == "tabadol.provider_call")
        .unwrap();
    let sent = seen.lock().unwrap().clone();
    assert_eq!(
        sent,
        vec![format!("00-{trace_id}-{}-01", hex::encode(&call.span_id))],
        "the provider is sent the trace, parented at the provider-call span"
    );
    hub.stop().await;
    server.abort();
    provider_task.abort();
}

async fn publish_death(hub: &TestHub, i: usize) -> String {
    let s = hub.samples();
    let p = &s["persons_deceased"][i];
    let nc = p["national_code"].as_str().unwrap().to_owned();
    tabadol_proto::v1::events_client::EventsClient::new(hub.channel("nocr").await)
        .publish(tabadol_proto::v1::PublishRequest {
            event_id: format!("ops-tail-{i}"),
            r#type: "death.v1".into(),
            national_code: nc.clone(),
            date: p["death_date"].as_str().unwrap().to_owned(),
        })
        .await
        .expect("nocr publishes");
    nc
}

/// `tabadol events tail` shows a running hub's events — sequence, type, publisher,
/// subscribers, delivery state — never a national code, and follows new ones live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tail_follows_the_event_log_without_subject_data() {
    use std::io::BufRead as _;
    let hub = TestHub::start().await;
    let admin = hub.handle.admin_addr.unwrap();
    let mut codes = vec![publish_death(&hub, 0).await, publish_death(&hub, 1).await];

    let admin_url = format!("http://{admin}");
    let (ok, out, err) = {
        let admin_url = admin_url.clone();
        tokio::task::spawn_blocking(move || {
            tabadol(&["events", "tail", "--admin", &admin_url, "--once"])
        })
        .await
        .unwrap()
    };
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("death.v1")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (i, l) in lines.iter().enumerate() {
        let cells: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(cells[0], (i + 1).to_string(), "{l}");
        assert!(
            l.contains("nocr") && l.contains("stream") && l.contains("cbi"),
            "{l}"
        );
    }
    // The page behind it holds no national code either.
    let (_, json) = get(&format!("{admin_url}/events?after=0")).await;
    for c in &codes {
        assert!(
            !out.contains(c.as_str()) && !json.contains(c.as_str()),
            "national code shown"
        );
    }

    // Follow: a new event appears while tail runs.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tabadol"));
    cmd.args(["events", "tail", "--admin", &admin_url, "--poll-ms", "200"]);
    let mut child = spawn(cmd);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    codes.push(publish_death(&hub, 2).await);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    loop {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let third = line.split_whitespace().next() == Some("3") && line.contains("death.v1");
            seen.push(line);
            if third {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "tail never showed event 3: {seen:?}"
        );
    }
    for c in &codes {
        assert!(
            seen.iter().all(|l| !l.contains(c.as_str())),
            "national code shown: {seen:?}"
        );
    }
    drop(child);
    hub.stop().await;
}

/// With `admin.tls`, the admin listener speaks mutual TLS: a client certificate chained
/// to `admin.tls.ca` reads /metrics; without one, or over plain HTTP, nothing is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_over_mutual_tls() {
    let hub = TestHub::start_configured(None, common::policy_dir(), |pki, cfg| {
        cfg.admin = Some(tabadol_hub::ops::admin::AdminSection {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: Some(tabadol_hub::ops::admin::AdminTls {
                ca: pki.ca_cert(),
                cert: pki.hub_cert(),
                key: pki.hub_key(),
            }),
            fallback_to_free_port: false,
        });
    })
    .await;
    let admin = hub.handle.admin_addr.unwrap();
    let url = format!("https://localhost:{}/metrics", admin.port());
    let ca = reqwest::Certificate::from_pem(hub.ca_pem().as_bytes()).unwrap();
    let client = |identity: Option<reqwest::Identity>| {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(ca.clone())
            .resolve("localhost", admin)
            .timeout(Duration::from_secs(5));
        if let Some(id) = identity {
            b = b.identity(id);
        }
        b.build().unwrap()
    };
    let id = hub.identity("cbi");
    let identity =
        reqwest::Identity::from_pem(format!("{}\n{}", id.cert, id.key).as_bytes()).unwrap();
    let resp = client(Some(identity))
        .get(&url)
        .send()
        .await
        .expect("mTLS scrape");
    assert_eq!(resp.status(), 200);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("# TYPE tabadol_inquiries counter"));
    assert!(
        client(None).get(&url).send().await.is_err(),
        "no client certificate, no metrics"
    );
    assert!(
        !reqwest::get(format!("http://{admin}/metrics"))
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false),
        "plain HTTP is not served"
    );
    hub.stop().await;
}

/// A provider that is reachable but failing opens its breaker: health shows that service
/// NOT_SERVING saying so, /metrics shows the breaker open and the provider errors; once the
/// provider answers again, health returns to SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_shows_an_open_breaker() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let failing = std::sync::Arc::new(AtomicBool::new(true));
    let provider = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let provider_addr = provider.local_addr().unwrap();
    let f = failing.clone();
    let app = axum::Router::new().fallback(move || {
        let f = f.clone();
        async move {
            if f.load(Ordering::SeqCst) {
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down").into_response()
            } else {
                axum::Json(serde_json::json!({"response": 0, "matched": true})).into_response()
            }
        }
    });
    let provider_task = tokio::spawn(async move { axum::serve(provider, app).await });
    let hub = TestHub::start_configured(None, common::policy_dir(), |_, cfg| {
        for p in &mut cfg.providers {
            if p.provider == "cra" {
                p.base_url = format!("http://{provider_addr}");
            }
        }
    })
    .await;
    let (nc, mobile) = hub.alive(0);
    let admin = hub.handle.admin_addr.unwrap();
    let mut health = health_client(&hub).await;
    wait_health(&mut health, &[(SHAHKAR, SERVING)]).await;

    // Keep calling while the provider fails: the breaker opens and stays open.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let caller = {
        let (stop, ch) = (stop.clone(), hub.channel("cbi").await);
        let (nc, mobile) = (nc.clone(), mobile.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 400 {
                let _ = ShahkarClient::new(ch.clone())
                    .match_mobile(MatchMobileRequest {
                        context: ctx(&format!("TRK-BRK-{i}"), "kyc"),
                        national_code: nc.clone(),
                        mobile: mobile.clone(),
                    })
                    .await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    wait_health(
        &mut health,
        &[
            (SHAHKAR, NOT_SERVING),
            ("tabadol.v1.Shahkar", NOT_SERVING),
            ("", SERVING),
        ],
    )
    .await;
    let (_, body) = get(&format!("http://{admin}/health")).await;
    assert!(body.contains("circuit breaker open"), "{body}");
    let (_, metrics) = get(&format!("http://{admin}/metrics")).await;
    assert!(
        metrics.contains("tabadol_provider_circuit_open{provider=\"cra\"} 1"),
        "{metrics}"
    );
    let errors: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("tabadol_provider_errors_total{provider=\"cra\",kind=\"unavailable\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(errors >= 5.0, "{metrics}");

    stop.store(true, Ordering::SeqCst);
    caller.await.unwrap();
    failing.store(false, Ordering::SeqCst);
    wait_health(
        &mut health,
        &[(SHAHKAR, SERVING), ("tabadol.v1.Shahkar", SERVING)],
    )
    .await;
    shahkar_call(&hub, "cbi", "TRK-BRK-BACK", &nc, &mobile)
        .await
        .expect("the provider answers again");
    hub.stop().await;
    provider_task.abort();
}
