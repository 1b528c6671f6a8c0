//! Defect 7 (provider transport), through a real hub on 127.0.0.1: mutual TLS to a provider
//! with its own CA, a provider answering 100 MB, and a provider's own error text kept from
//! the calling agency and the audit log.
mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use common::{ctx, policy_dir, TestHub};
use tabadol_adapters::simulators::{
    serve_router, start_civil_registry_tls, Dataset, ServerTls, SimHandle,
};
use tabadol_hub::ops::config::Config;
use tabadol_hub::ops::dev::DATASET_SEED;
use tabadol_hub::ops::pki::{self, LeafSpec, PemPair, PkiLayout};
use tabadol_proto::v1::civil_registry_client::CivilRegistryClient;
use tabadol_proto::v1::GetIdentityRequest;
use tonic::Code;

const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
const KYC: &str = "kyc";

/// A hub whose `nocr` provider is `base_url`, with `tls` applied to that entry once the dev
/// PKI exists.
async fn hub_with_nocr(
    base_url: String,
    tls: impl FnOnce(&PkiLayout, &mut tabadol_hub::ops::config::ProviderSection),
) -> TestHub {
    TestHub::start_configured(None, policy_dir(), |layout, cfg: &mut Config| {
        let nocr = cfg
            .providers
            .iter_mut()
            .find(|p| p.provider == "nocr")
            .expect("dev config has nocr");
        nocr.base_url = base_url;
        tls(layout, nocr);
    })
    .await
}

async fn get_identity(hub: &TestHub, tracking: &str, nc: &str) -> Result<(), tonic::Status> {
    CivilRegistryClient::new(hub.channel("cbi").await)
        .get_identity(GetIdentityRequest {
            context: ctx(tracking, KYC),
            national_code: nc.to_owned(),
            fields: vec![],
        })
        .await
        .map(|_| ())
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The provider's PKI: its own CA and server certificate for 127.0.0.1.
fn provider_pki() -> (PemPair, PemPair) {
    let ca = pki::new_root("NOCR provider CA").unwrap();
    let mut spec = LeafSpec::client("api.nocr.example");
    spec.server = true;
    spec.san_ips = vec![Ipv4Addr::LOCALHOST.into()];
    let server = pki::issue(&ca, &spec).unwrap();
    (ca, server)
}

/// The NOCR simulator over TLS with `server`'s certificate, requiring client certificates
/// issued by `client_ca`.
async fn tls_nocr(server: &PemPair, client_ca: &str) -> SimHandle {
    start_civil_registry_tls(
        Arc::new(Dataset::generate(DATASET_SEED)),
        ANY,
        ServerTls {
            cert_pem: server.cert.clone(),
            key_pem: server.key.clone(),
            client_ca_pem: Some(client_ca.to_owned()),
        },
    )
    .await
    .unwrap()
}

/// A call through the hub reaches a provider that requires mutual TLS, when the hub trusts
/// the provider's CA (`tls.ca`) and presents its client certificate (`tls.cert`/`tls.key`);
/// with a wrong CA the agency gets UNAVAILABLE naming the provider, and the provider never
/// sees the request.
#[tokio::test]
async fn provider_over_mutual_tls_with_its_own_ca() {
    let files = tempfile::tempdir().unwrap();
    let (provider_ca, server) = provider_pki();
    // The provider accepts client certificates issued by `client_root`; the hub presents one.
    let client_root = pki::new_root("National root for providers").unwrap();
    let client = pki::issue(&client_root, &LeafSpec::client("hub.tabadol.ir")).unwrap();
    let sim = tls_nocr(&server, &client_root.cert).await;
    let ca_file = write(files.path(), "nocr-ca.crt", &provider_ca.cert);
    let cert_file = write(files.path(), "hub-client.crt", &client.cert);
    let key_file = write(files.path(), "hub-client.key", &client.key);

    let hub = hub_with_nocr(sim.base_url(), |_, p| {
        p.tls.ca = Some(ca_file.clone());
        p.tls.cert = Some(cert_file.clone());
        p.tls.key = Some(key_file.clone());
    })
    .await;
    let (nc, _) = hub.alive(0);
    get_identity(&hub, "TRK-MTLS-0001", &nc)
        .await
        .expect("identity over mutual TLS");
    assert_eq!(sim.requests(), 1);
    hub.stop().await;

    // Trusting another CA (here: the hub's own national root) fails the handshake.
    let hub = hub_with_nocr(sim.base_url(), |layout, p| {
        p.tls.ca = Some(layout.ca_cert());
        p.tls.cert = Some(cert_file.clone());
        p.tls.key = Some(key_file.clone());
    })
    .await;
    let status = get_identity(&hub, "TRK-MTLS-0002", &nc).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with("provider nocr is unavailable")
            && status
                .message()
                .contains("not issued by a CA the hub trusts"),
        "{}",
        status.message()
    );
    hub.stop().await;

    // Without the client certificate the provider refuses the hub.
    let hub = hub_with_nocr(sim.base_url(), |_, p| {
        p.tls.ca = Some(ca_file.clone());
    })
    .await;
    let status = get_identity(&hub, "TRK-MTLS-0003", &nc).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("nocr") && status.message().contains("tls.cert"),
        "{}",
        status.message()
    );
    assert_eq!(
        sim.requests(),
        1,
        "refused calls never reached the provider"
    );
    hub.stop().await;
}

/// Resident memory of this process (the hub runs in it), in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

const HUNDRED_MB: u64 = 100 * 1000 * 1000;

/// A provider answering a 100 MB body (streamed, no Content-Length): the agency gets
/// UNAVAILABLE naming the provider and the 1 MiB cap, the provider gets to send only a few
/// MiB before the hub hangs up, and the hub's resident memory does not grow by the body.
#[tokio::test]
async fn a_100_mb_answer_is_cut_at_the_cap() {
    let produced = Arc::new(AtomicU64::new(0));
    let p = produced.clone();
    let router = Router::new().route(
        "/nocr/v2/persons/{nin}",
        get(move || {
            let produced = p.clone();
            async move {
                let chunk = Bytes::from(vec![b' '; 64 * 1024]);
                let stream = futures::stream::unfold(0u64, move |sent| {
                    let chunk = chunk.clone();
                    let produced = produced.clone();
                    async move {
                        (sent < HUNDRED_MB).then(|| {
                            produced.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            (Ok::<_, std::io::Error>(chunk), sent + 64 * 1024)
                        })
                    }
                });
                let mut r = Response::new(Body::from_stream(stream));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
                r
            }
        }),
    );
    let provider = serve_router(router, ANY, None).await.unwrap();
    let hub = hub_with_nocr(provider.base_url(), |_, _| {}).await;
    let (nc, _) = hub.alive(0);
    // Warm up the agency's connection so the sample measures the provider answer alone.
    let _ = get_identity(&hub, "TRK-BIG-0000", "x").await;

    let baseline = rss_bytes();
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        get_identity(&hub, "TRK-BIG-0001", &nc),
    )
    .await
    .expect("answered within 30 s")
    .unwrap_err();
    tokio::time::sleep(Duration::from_millis(200)).await;
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let grew = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    let made = produced.load(Ordering::Relaxed);
    eprintln!("provider produced {made} bytes; hub RSS grew by at most {grew} bytes");

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with("provider nocr is unavailable")
            && status.message().contains("1048576 bytes"),
        "{}",
        status.message()
    );
    assert!(made < 16 << 20, "the provider sent {made} bytes");
    assert!(grew < 32 << 20, "RSS grew by {grew} bytes");
    hub.stop().await;
}

const MARK: &str = "SECRET-PROVIDER-TEXT-0912";

/// A provider's `errorMessage` (and an error code the hub does not know) never reaches the
/// calling agency's status nor the audit store: the agency gets the hub's own sentence naming
/// the provider.
#[tokio::test]
async fn provider_error_text_stays_out_of_statuses_and_audit() {
    let router = Router::new().route(
        "/nocr/v2/persons/{nin}",
        get(
            |axum::extract::Path(nin): axum::extract::Path<String>| async move {
                let code = if nin.ends_with('9') {
                    "INVALID_NIN"
                } else {
                    MARK
                };
                (
                    StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({"errorCode": code, "errorMessage": MARK})),
                )
                    .into_response()
            },
        ),
    );
    let provider = serve_router(router, ANY, None).await.unwrap();
    let hub = hub_with_nocr(provider.base_url(), |_, _| {}).await;
    let mut codes = Vec::new();
    for i in 0..3 {
        let (nc, _) = hub.alive(i);
        let status = get_identity(&hub, &format!("TRK-TEXT-000{i}"), &nc)
            .await
            .unwrap_err();
        assert!(
            !format!("{status:?}").contains("SECRET"),
            "provider text reached the agency: {status:?}"
        );
        assert!(
            status
                .message()
                .starts_with("provider nocr rejected the request: NOCR refused"),
            "{}",
            status.message()
        );
        codes.push(status.code());
    }
    assert!(
        codes.iter().all(|c| *c == Code::FailedPrecondition),
        "{codes:?}"
    );

    let TestHub {
        dir, handle, sims, ..
    } = hub;
    handle.stop().await.unwrap();
    sims.shutdown().await;
    let mut scanned = 0u64;
    let mut stack = vec![dir.path().join("store")];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            let bytes = std::fs::read(&p).unwrap();
            scanned += bytes.len() as u64;
            assert!(
                !bytes.windows(MARK.len()).any(|w| w == MARK.as_bytes()),
                "provider text in the store file {}",
                p.display()
            );
        }
    }
    assert!(scanned > 0, "the store was scanned");
}
