//! A provider service added with YAML only: a catalog entry with an `http:` section in a
//! test's own policy, the provider's entry in the hub configuration, and a small generic
//! simulator serving its API — callable through `Inquiry/Inquire` with no Rust change; and
//! a generic-adapter provider over mutual TLS with its own CA (a wrong CA is UNAVAILABLE
//! naming the provider).

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use common::{copy_policy, ctx, violated_fields, TestHub};
use serde_json::json;
use tabadol_adapters::simulators::session26::start_provider;
use tabadol_adapters::simulators::{serve_router, Dataset, ServerTls};
use tabadol_hub::ops::config::ProviderSection;
use tabadol_hub::ops::dev::DATASET_SEED;
use tabadol_hub::ops::pki::{self, LeafSpec};
use tabadol_proto::v1::inquiry_client::InquiryClient;
use tabadol_proto::v1::{InquireRequest, InquireResponse};
use tonic::Code;

const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// The Meteorological Organization, a provider this hub has no Rust code for.
const AGENCY: &str = "  - id: irimo
    name_fa: سازمان هواشناسی کشور
    name_en: Iran Meteorological Organization
    certificate: { common_name: irimo.agency.tabadol.ir }
";

const SERVICE: &str = "  - id: irimo.daily-observations
    national_service_id: \"38011000101\"
    provider: irimo
    adapter: http
    operation: daily-observations
    title_fa: استعلام دیده‌بانی روزانه ایستگاه
    title_en: Daily observations of a weather station
    inputs:
      - { name: station, kind: digits, required: true }
      - { name: year, kind: jalali_year, required: true }
      - { name: month, kind: jalali_month, required: true }
    outputs: [day, max_temp, min_temp, rain_mm]
    http:
      path: /irimo/v3/stations/{station}/daily
      query: { y: year, m: month }
      records: /result/days
      outputs: { day: /d, max_temp: /t/max, min_temp: /t/min, rain_mm: /rain }
      error_code: /err
      errors:
        - { status: 404, code: NO_STATION, outcome: not_found }
        - { status: 200, code: NO_DATA_YET, outcome: unavailable }
        - { status: 400, outcome: invalid_argument }
";

const GRANT: &str = "  - id: test-moe-weather
    agency: moe
    service: irimo.daily-observations
    fields: [day, rain_mm]
    purposes: [dam-operations]
    approved: { body: interoperability-working-group, session: 99, date: 1403/01/01, item: test grant }
";

/// The test's provider: station 40754 (Tehran Mehrabad) has three days of data for every
/// month; 1404 is not published yet; other stations do not exist.
fn irimo_router() -> Router {
    Router::new().route(
        "/irimo/v3/stations/{station}/daily",
        get(
            |Path(station): Path<String>,
             Query(q): Query<HashMap<String, String>>,
             headers: HeaderMap| async move {
                let no = |s: StatusCode, e: &str| -> Response {
                    (s, Json(json!({ "err": e }))).into_response()
                };
                if headers.get("x-tracking-code").is_none() {
                    return no(StatusCode::BAD_REQUEST, "NO_TRACKING");
                }
                if station != "40754" {
                    return no(StatusCode::NOT_FOUND, "NO_STATION");
                }
                let (Some(y), Some(m)) = (q.get("y"), q.get("m")) else {
                    return no(StatusCode::BAD_REQUEST, "MISSING_PERIOD");
                };
                if y == "1404" {
                    return no(StatusCode::OK, "NO_DATA_YET");
                }
                Json(json!({"result": {"station": station, "days": [
                    {"d": format!("{y}/{m}/01"), "t": {"max": 31.5, "min": 19}, "rain": 0},
                    {"d": format!("{y}/{m}/02"), "t": {"max": 29, "min": 18.5}, "rain": 2.4},
                    {"d": format!("{y}/{m}/03"), "t": {"max": 27, "min": 17}, "rain": null},
                ]}}))
                .into_response()
            },
        ),
    )
}

fn append(dir: &std::path::Path, file: &str, extra: &str) {
    let path = dir.join(file);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push('\n');
    text.push_str(extra);
    std::fs::write(&path, text).unwrap();
}

async fn observations(
    hub: &TestHub,
    params: &[(&str, &str)],
) -> Result<InquireResponse, tonic::Status> {
    InquiryClient::new(hub.channel("moe").await)
        .inquire(InquireRequest {
            context: ctx("TRK-IRIMO-0001", "dam-operations"),
            service: "irimo.daily-observations".into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            fields: vec![],
        })
        .await
        .map(|r| r.into_inner())
}

/// The YAML-only service answers through Inquire: inputs in the path and the query, a list
/// of records read by pointer and minimized to the grant, numbers as text, null left out,
/// and the provider's answers mapped to NOT_FOUND / UNAVAILABLE / INVALID_ARGUMENT as its
/// `errors:` rules say.
#[tokio::test]
async fn a_service_defined_only_in_yaml_is_callable() {
    let policy = copy_policy();
    append(policy.path(), "agencies.yaml", AGENCY);
    append(policy.path(), "services.yaml", SERVICE);
    append(policy.path(), "grants.yaml", GRANT);
    let sim = serve_router(irimo_router(), ANY, None).await.unwrap();
    let base = sim.base_url();
    let dir = policy.path().to_owned();
    let hub = TestHub::start_reconfigured(move |_, cfg| {
        cfg.policy_dir = dir;
        cfg.providers
            .push(ProviderSection::new("irimo", "http", base));
    })
    .await;

    let resp = observations(
        &hub,
        &[("station", "40754"), ("year", "1403"), ("month", "7")],
    )
    .await
    .unwrap();
    assert_eq!(resp.provider, "irimo");
    let days: Vec<_> = resp
        .records
        .iter()
        .map(|r| {
            let mut k: Vec<_> = r.fields.keys().cloned().collect();
            k.sort();
            (r.fields["day"].clone(), r.fields.get("rain_mm").cloned(), k)
        })
        .collect();
    assert_eq!(
        days,
        [
            (
                "1403/7/01".to_owned(),
                Some("0".to_owned()),
                vec!["day".to_owned(), "rain_mm".to_owned()]
            ),
            (
                "1403/7/02".to_owned(),
                Some("2.4".to_owned()),
                vec!["day".to_owned(), "rain_mm".to_owned()]
            ),
            ("1403/7/03".to_owned(), None, vec!["day".to_owned()]),
        ],
        "three records, only granted fields, null left out"
    );

    let e = observations(
        &hub,
        &[("station", "99999"), ("year", "1403"), ("month", "7")],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(
        e.message(),
        "provider irimo has no record of the given month, station, year"
    );
    let e = observations(
        &hub,
        &[("station", "40754"), ("year", "1404"), ("month", "1")],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("irimo") && !e.message().contains("NO_DATA_YET"),
        "{}",
        e.message()
    );
    let e = observations(
        &hub,
        &[("station", "40754"), ("year", "1403"), ("month", "13")],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(violated_fields(&e), ["params.month"]);
    let e = observations(&hub, &[("station", "40754"), ("year", "1403")])
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&e), ["params.month"]);
    hub.stop().await;
    sim.shutdown().await;
}

async fn post_address(
    hub: &TestHub,
    postal_code: &str,
) -> Result<tonic::Response<InquireResponse>, tonic::Status> {
    InquiryClient::new(hub.channel("rcs").await)
        .inquire(InquireRequest {
            context: ctx("TRK-POST-TLS-1", "relief-operations"),
            service: "post.address".into(),
            params: [("postal_code".to_owned(), postal_code.to_owned())].into(),
            fields: vec![],
        })
        .await
}

/// The National Post behind the generic adapter, over mutual TLS with its own CA: with its
/// CA and the hub's client certificate the call goes through; trusting another CA is
/// UNAVAILABLE naming the provider and what to check, and the Post never sees the request.
#[tokio::test]
async fn generic_provider_over_mutual_tls_and_the_wrong_ca() {
    let files = tempfile::tempdir().unwrap();
    let post_ca = pki::new_root("National Post CA").unwrap();
    let mut spec = LeafSpec::client("api.post.example");
    spec.server = true;
    spec.san_ips = vec![Ipv4Addr::LOCALHOST.into()];
    let server = pki::issue(&post_ca, &spec).unwrap();
    let client_root = pki::new_root("Providers' client root").unwrap();
    let client = pki::issue(&client_root, &LeafSpec::client("hub.tabadol.ir")).unwrap();
    let sim = start_provider(
        "post",
        Arc::new(Dataset::generate(DATASET_SEED)),
        ANY,
        Some(ServerTls {
            cert_pem: server.cert.clone(),
            key_pem: server.key.clone(),
            client_ca_pem: Some(client_root.cert.clone()),
        }),
    )
    .await
    .unwrap();
    let write = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (ca, cert, key) = (
        write("post-ca.crt", &post_ca.cert),
        write("hub.crt", &client.cert),
        write("hub.key", &client.key),
    );
    let postal_code = Dataset::generate(DATASET_SEED).session26().addresses[0]
        .postal_code
        .clone();
    let url = sim.base_url();
    assert!(url.starts_with("https://"));
    let (u, c, k) = (url.clone(), cert.clone(), key.clone());
    let ca_ok = ca.clone();
    let hub = TestHub::start_configured(None, common::policy_dir(), move |_, cfg| {
        let p = cfg
            .providers
            .iter_mut()
            .find(|p| p.provider == "post")
            .unwrap();
        p.base_url = u;
        p.tls.ca = Some(ca_ok);
        p.tls.cert = Some(c);
        p.tls.key = Some(k);
    })
    .await;
    let resp = post_address(&hub, &postal_code)
        .await
        .expect("address over mutual TLS")
        .into_inner();
    assert_eq!(resp.records[0].fields["postal_code"], postal_code);
    assert_eq!(sim.requests(), 1);
    hub.stop().await;

    let hub = TestHub::start_configured(None, common::policy_dir(), move |layout, cfg| {
        let p = cfg
            .providers
            .iter_mut()
            .find(|p| p.provider == "post")
            .unwrap();
        p.base_url = url;
        p.tls.ca = Some(layout.ca_cert()); // the hub's own root: not the Post's CA
        p.tls.cert = Some(cert);
        p.tls.key = Some(key);
    })
    .await;
    let e = post_address(&hub, &postal_code).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().starts_with("provider post is unavailable") && e.message().contains("tls.ca"),
        "{}",
        e.message()
    );
    assert_eq!(sim.requests(), 1, "the refused call never reached the Post");
    hub.stop().await;
}

/// The tax administration, formerly a hand-written adapter, is now a catalog entry: the
/// typed `Tax/GetTaxpayer` answers as before (state translated by `http.values`, the date
/// normalized by `http.jalali_dates`), an unknown subject is NOT_FOUND, and a state or date
/// the catalog does not list is UNAVAILABLE without quoting the provider.
#[tokio::test]
async fn tax_runs_on_the_generic_adapter() {
    use tabadol_proto::v1::get_taxpayer_request::Subject;
    use tabadol_proto::v1::tax_client::TaxClient;
    use tabadol_proto::v1::GetTaxpayerRequest;

    let hub = TestHub::start().await;
    let ask = |nc: String| GetTaxpayerRequest {
        context: ctx("TRK-TAX-GEN-1", "credit-assessment"),
        subject: Some(Subject::NationalCode(nc)),
    };
    for t in hub.samples()["taxpayers"].as_array().unwrap() {
        let nc = t["national_code"].as_str().unwrap().to_owned();
        let file = hub.dataset.taxpayer_by_national_code(&nc).unwrap();
        let r = TaxClient::new(hub.channel("cbi").await)
            .get_taxpayer(ask(nc))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, t["status"].as_str().unwrap());
        assert_eq!(
            r.registered_on, file.registered_on,
            "YYYY/MM/DD from INTA's YYYY-MM-DD"
        );
        assert_eq!(r.tax_office, file.office_name);
    }
    let e = TaxClient::new(hub.channel("cbi").await)
        .get_taxpayer(ask(hub.dataset.unknown_national_code().to_owned()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    hub.stop().await;

    // An INTA answering a state and a date the catalog does not know.
    let odd = Router::new().route(
        "/inta/taxpayers",
        get(|| async {
            Json(
                json!({"status": "OK", "data": {"taxpayerId": "1", "name": "x",
                "state": "FROZEN-BY-ORDER-7781", "registeredOn": "1398-02-15",
                "office": {"code": "1", "name": "y"}}}),
            )
        }),
    );
    let sim = serve_router(odd, ANY, None).await.unwrap();
    let base = sim.base_url();
    let hub = TestHub::start_configured(None, common::policy_dir(), move |_, cfg| {
        cfg.providers
            .iter_mut()
            .find(|p| p.provider == "inta")
            .unwrap()
            .base_url = base;
    })
    .await;
    let nc = hub.samples()["taxpayers"][0]["national_code"]
        .as_str()
        .unwrap()
        .to_owned();
    let e = TaxClient::new(hub.channel("cbi").await)
        .get_taxpayer(ask(nc))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("inta") && e.message().contains("http.values"),
        "{}",
        e.message()
    );
    assert!(
        !e.message().contains("FROZEN"),
        "provider text is not passed on: {}",
        e.message()
    );
    hub.stop().await;
    sim.shutdown().await;
}

/// A YAML-only provider's answer above its `max_body_bytes` is UNAVAILABLE naming the
/// provider and the cap; a smaller one under the same cap is answered.
#[tokio::test]
async fn a_generic_providers_answer_is_capped() {
    let policy = copy_policy();
    append(policy.path(), "agencies.yaml", AGENCY);
    append(policy.path(), "services.yaml", SERVICE);
    append(policy.path(), "grants.yaml", GRANT);
    // Station 1 answers 3 days; station 2 answers 5,000 (about 250 KB).
    let router = Router::new().route(
        "/irimo/v3/stations/{station}/daily",
        get(|Path(station): Path<String>| async move {
            let n = if station == "2" { 5_000 } else { 3 };
            let days: Vec<_> = (0..n)
                .map(|i| json!({"d": format!("1403/01/{:02}", i % 29 + 1), "t": {"max": 20, "min": 10}, "rain": 1}))
                .collect();
            Json(json!({"result": {"days": days}}))
        }),
    );
    let sim = serve_router(router, ANY, None).await.unwrap();
    let base = sim.base_url();
    let dir = policy.path().to_owned();
    let hub = TestHub::start_reconfigured(move |_, cfg| {
        cfg.policy_dir = dir;
        let mut p = ProviderSection::new("irimo", "http", base);
        p.max_body_bytes = 16 * 1024;
        cfg.providers.push(p);
    })
    .await;
    let small = observations(&hub, &[("station", "1"), ("year", "1403"), ("month", "1")])
        .await
        .unwrap();
    assert_eq!(small.records.len(), 3);
    let e = observations(&hub, &[("station", "2"), ("year", "1403"), ("month", "1")])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().starts_with("provider irimo is unavailable")
            && e.message().contains("limit of 16384 bytes"),
        "{}",
        e.message()
    );
    hub.stop().await;
    sim.shutdown().await;
}
