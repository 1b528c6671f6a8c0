//! The provider transport against real servers on 127.0.0.1: plain http only to loopback,
//! TLS with the provider's own CA and the hub's client certificate, the body cap, no
//! redirects, and no provider text in errors.
mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use common::{request, SEED};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use tabadol_adapters::civil_registry::{PersonDto, IDENTITY};
use tabadol_adapters::shahkar::MATCH_MOBILE;
use tabadol_adapters::simulators::{
    serve_router, start_civil_registry_tls, Dataset, ServerTls, SimHandle,
};
use tabadol_adapters::{
    build, check_base_url, AdapterConfig, AdapterKind, ClientIdentity, ConfigError, Provider,
    ProviderError, ProviderTls, ProviderTlsFiles,
};

const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// Guard so a hanging call fails the test instead of stalling the suite.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("call did not finish within 30 s")
}

/// A certificate and its key, PEM.
#[derive(Clone)]
struct Pair {
    cert: String,
    key: String,
}

fn ca(name: &str) -> (Pair, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let pair = Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    };
    (pair, Issuer::new(params, key))
}

fn leaf(issuer: &Issuer<'_, KeyPair>, name: &str, server: bool) -> Pair {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    if server {
        params.subject_alt_names = vec![SanType::IpAddress(Ipv4Addr::LOCALHOST.into())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    } else {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    let cert = params.signed_by(&key, issuer).unwrap();
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A provider PKI: the provider's CA and server certificate, and the CA of the hub's client
/// certificates with one such certificate.
struct Pki {
    provider_ca: Pair,
    server: Pair,
    client_ca: Pair,
    client: Pair,
}

fn pki() -> Pki {
    let (provider_ca, provider_issuer) = ca("NOCR provider CA");
    let (client_ca, client_issuer) = ca("National root");
    Pki {
        server: leaf(&provider_issuer, "api.nocr.example", true),
        client: leaf(&client_issuer, "hub.tabadol.ir", false),
        provider_ca,
        client_ca,
    }
}

/// The NOCR simulator over TLS, requiring a client certificate from `pki.client_ca`.
async fn tls_nocr(pki: &Pki) -> (SimHandle, Arc<Dataset>) {
    let ds = Arc::new(Dataset::generate(SEED));
    let sim = start_civil_registry_tls(
        ds.clone(),
        ANY,
        ServerTls {
            cert_pem: pki.server.cert.clone(),
            key_pem: pki.server.key.clone(),
            client_ca_pem: Some(pki.client_ca.cert.clone()),
        },
    )
    .await
    .unwrap();
    (sim, ds)
}

fn nocr(base_url: String, tls: ProviderTls) -> Arc<dyn Provider> {
    let mut cfg = AdapterConfig::new(
        "nocr",
        AdapterKind::CivilRegistry,
        base_url,
        Duration::from_secs(10),
    );
    cfg.tls = tls;
    build(&cfg).expect("adapter")
}

fn identity(pair: &Pair) -> Option<ClientIdentity> {
    Some(ClientIdentity {
        cert_pem: pair.cert.clone().into_bytes(),
        key_pem: pair.key.clone().into_bytes(),
    })
}

fn unavailable_reason(err: ProviderError) -> String {
    match err {
        ProviderError::Unavailable { provider, reason } => {
            assert_eq!(provider, "nocr");
            reason
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// Plain `http://` is refused for any host but loopback (127.0.0.0/8, ::1, localhost), at
/// build time; so are credentials in the URL and other schemes.
#[test]
fn plain_http_only_to_loopback() {
    for ok in [
        "https://api.nocr.example/gw",
        "http://127.0.0.1:8081",
        "http://127.9.9.9",
        "http://[::1]:8081/x",
        "http://localhost:8081",
        "http://LOCALHOST",
    ] {
        assert!(check_base_url(ok).is_ok(), "{ok}: {:?}", check_base_url(ok));
    }
    for (bad, why) in [
        ("http://api.nocr.example", "only allowed to a loopback host"),
        ("http://10.0.0.1:8081", "only allowed to a loopback host"),
        (
            "http://[::ffff:127.0.0.1]",
            "only allowed to a loopback host",
        ),
        (
            "http://localhost.example.com",
            "only allowed to a loopback host",
        ),
        ("https://user:pw@api.nocr.example", "user name or password"),
        ("ftp://api.nocr.example", "is not http(s)"),
        ("https://api.nocr.example/?x=1", "query or fragment"),
    ] {
        let err = check_base_url(bad).unwrap_err();
        assert!(err.contains(why), "{bad}: {err}");
    }
    let cfg = AdapterConfig::new(
        "nocr",
        AdapterKind::CivilRegistry,
        "http://api.nocr.example",
        Duration::from_secs(1),
    );
    match build(&cfg).err().expect("refused") {
        ConfigError::BadBaseUrl { provider, url, .. } => {
            assert_eq!(
                (provider.as_str(), url.as_str()),
                ("nocr", "http://api.nocr.example")
            )
        }
        other => panic!("{other:?}"),
    }
}

/// With the provider's CA and the hub's client certificate the call succeeds over mutual
/// TLS; with another CA it is Unavailable ("not issued by a CA the hub trusts"), and
/// without a client certificate the provider refuses it.
#[tokio::test]
async fn mutual_tls_with_the_providers_ca_and_the_hubs_certificate() {
    let pki = pki();
    let (sim, ds) = tls_nocr(&pki).await;
    assert!(sim.base_url().starts_with("https://127.0.0.1:"));
    let nin = ds.persons()[0].national_code.clone();
    let req = || request(IDENTITY, &[("national_code", &nin)]);

    let right = nocr(
        sim.base_url(),
        ProviderTls {
            ca_pem: Some(pki.provider_ca.cert.clone().into_bytes()),
            client: identity(&pki.client),
        },
    );
    let record = common::one(right.as_ref(), req()).await.expect("mTLS call");
    assert_eq!(record["national_code"], nin);

    // The web PKI roots (default) do not know the provider's CA, and neither does another CA.
    let (other_ca, _) = ca("Some other CA");
    for ca_pem in [None, Some(other_ca.cert.into_bytes())] {
        let wrong = nocr(
            sim.base_url(),
            ProviderTls {
                ca_pem,
                client: identity(&pki.client),
            },
        );
        let reason = unavailable_reason(bounded(wrong.call(req())).await.unwrap_err());
        assert!(
            reason.contains("not issued by a CA the hub trusts"),
            "{reason}"
        );
    }

    let anonymous = nocr(
        sim.base_url(),
        ProviderTls {
            ca_pem: Some(pki.provider_ca.cert.clone().into_bytes()),
            client: None,
        },
    );
    let reason = unavailable_reason(bounded(anonymous.call(req())).await.unwrap_err());
    assert!(reason.contains("tls.cert"), "{reason}");
    assert_eq!(sim.requests(), 1, "only the authenticated call was served");
}

/// TLS files are checked when read: each problem names its field and file, and all are
/// reported together.
#[test]
fn tls_files_are_checked_with_clear_errors() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca = write("ca.crt", &pki.provider_ca.cert);
    let cert = write("hub.crt", &pki.client.cert);
    let key = write("hub.key", &pki.client.key);
    let other_key = write("other.key", &pki.server.key);
    let not_pem = write("notes.txt", "hello\n");
    let missing = dir.path().join("missing.crt");

    let ok = ProviderTls::read(&ProviderTlsFiles {
        ca: Some(&ca),
        cert: Some(&cert),
        key: Some(&key),
    })
    .expect("good files");
    assert!(ok.ca_pem.is_some() && ok.client.is_some());
    assert!(!format!("{ok:?}").contains("PRIVATE KEY"), "{ok:?}");

    let errs = ProviderTls::read(&ProviderTlsFiles {
        ca: Some(&missing),
        cert: Some(&cert),
        key: Some(&other_key),
    })
    .unwrap_err();
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 2, "{text:#?}");
    assert!(
        text[0].starts_with("ca: cannot read ") && text[0].contains("missing.crt"),
        "{text:#?}"
    );
    assert!(
        text[1].starts_with("key: ") && text[1].contains("does not fit the certificate"),
        "{text:#?}"
    );

    let errs = ProviderTls::read(&ProviderTlsFiles {
        ca: Some(&not_pem),
        cert: Some(&cert),
        key: None,
    })
    .unwrap_err();
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|e| e.starts_with("ca: ") && e.contains("holds no PEM certificate")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|e| e.starts_with("key: tls.cert is set but tls.key is not")),
        "{text:#?}"
    );

    // TLS settings on a plain-http URL are a contradiction, refused at build.
    let mut cfg = AdapterConfig::new(
        "nocr",
        AdapterKind::CivilRegistry,
        "http://127.0.0.1:1",
        Duration::from_secs(1),
    );
    cfg.tls = ok;
    assert!(matches!(
        build(&cfg).err(),
        Some(ConfigError::TlsWithoutHttps { .. })
    ));
}

/// A body of `total` bytes sent in 64 KiB chunks, counting what the server produced.
fn counted_body(total: u64, produced: Arc<AtomicU64>) -> Body {
    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
    let stream = futures::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        let produced = produced.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(chunk.len() as u64);
            produced.fetch_add(n, Ordering::Relaxed);
            Some((Ok::<_, std::io::Error>(chunk.slice(..n as usize)), sent + n))
        }
    });
    Body::from_stream(stream)
}

const HUNDRED_MB: u64 = 100 * 1000 * 1000;

/// A provider answering 100 MB is Unavailable naming the provider and the 1 MiB cap, and the
/// adapter stops reading at the cap: the provider gets to produce only a few MiB (socket
/// buffers), whether it declares its length or streams without one.
#[tokio::test]
async fn a_huge_answer_is_refused_at_the_cap_without_reading_it() {
    for declare_length in [false, true] {
        let produced = Arc::new(AtomicU64::new(0));
        let p = produced.clone();
        let router = Router::new().route(
            "/nocr/v2/persons/{nin}",
            get(move || {
                let p = p.clone();
                async move {
                    let mut r = Response::new(counted_body(HUNDRED_MB, p));
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
                    if declare_length {
                        r.headers_mut()
                            .insert(header::CONTENT_LENGTH, HUNDRED_MB.into());
                    }
                    r
                }
            }),
        );
        let sim = serve_router(router, ANY, None).await.unwrap();
        let adapter = nocr(sim.base_url(), ProviderTls::default());
        let err = bounded(adapter.call(request(IDENTITY, &[("national_code", "0499370899")])))
            .await
            .unwrap_err();
        let message = err.to_string();
        let reason = unavailable_reason(err);
        assert!(reason.contains("1048576 bytes"), "{reason}");
        assert!(
            message.starts_with("provider nocr is unavailable"),
            "{message}"
        );
        // Give the server a moment to notice the closed connection, then look at what it made.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let made = produced.load(Ordering::Relaxed);
        assert!(
            made < 16 * 1024 * 1024,
            "declared={declare_length}: the provider produced {made} bytes of its 100 MB answer"
        );
        sim.shutdown().await;
    }
}

/// The cap is exact: an answer of exactly `max_body_bytes` is read, one byte more is refused.
#[tokio::test]
async fn the_cap_is_exact() {
    let person = PersonDto {
        nin: "0499370899".into(),
        first_name: "علی".into(),
        last_name: "احمدی".into(),
        father_name: "حسن".into(),
        birth_date: "13650412".into(),
        gender_code: 1,
        birth_place: "تهران".into(),
        shenasnameh_no: "1234".into(),
    };
    let json = serde_json::to_vec(&person).unwrap();
    let cap = 4096;
    for (len, ok) in [(cap, true), (cap + 1, false)] {
        let mut body = json.clone();
        body.resize(len, b' ');
        let router = Router::new().route(
            "/nocr/v2/persons/{nin}",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], body) }),
        );
        let sim = serve_router(router, ANY, None).await.unwrap();
        let mut cfg = AdapterConfig::new(
            "nocr",
            AdapterKind::CivilRegistry,
            sim.base_url(),
            Duration::from_secs(10),
        );
        cfg.max_body_bytes = cap;
        let adapter = build(&cfg).unwrap();
        let got =
            bounded(adapter.call(request(IDENTITY, &[("national_code", "0499370899")]))).await;
        match (ok, got) {
            (true, Ok(r)) => assert_eq!(r.records[0]["birth_date"], "1365/04/12"),
            (false, Err(e)) => assert!(e.to_string().contains("4096 bytes"), "{e}"),
            (ok, got) => panic!("{len} bytes: expected ok={ok}, got {got:?}"),
        }
    }
}

/// What a provider writes (NOCR `errorMessage`, an unknown `errorCode`, Shahkar's `comment`,
/// a malformed field's value) never appears in the error the adapter returns.
#[tokio::test]
async fn provider_text_is_not_passed_on() {
    const MARK: &str = "CALL-0912-SECRET-<script>";
    let router = Router::new()
        .route(
            "/nocr/v2/persons/{nin}",
            get(
                |axum::extract::Path(nin): axum::extract::Path<String>| async move {
                    let body = match nin.as_str() {
                        "0499370899" => {
                            serde_json::json!({"errorCode": "INVALID_NIN", "errorMessage": MARK})
                        }
                        "0000000000" => {
                            serde_json::json!({"errorCode": MARK, "errorMessage": MARK})
                        }
                        _ => {
                            return (
                                StatusCode::OK,
                                axum::Json(serde_json::json!({"nin": nin, "firstName": MARK,
                                "lastName": "x", "fatherName": "x", "birthDate": MARK,
                                "genderCode": 1, "birthPlace": "x", "shenasnamehNo": "1"})),
                            )
                                .into_response()
                        }
                    };
                    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
                },
            ),
        )
        .route(
            "/nocr/v2/persons/{nin}/life-status",
            get(|| async { axum::Json(serde_json::json!({"nin": "1", "isAlive": MARK})) }),
        )
        .route(
            "/api/shahkar/v1/match",
            post(|| async {
                (
                    StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({"response": 601, "comment": MARK})),
                )
            }),
        );
    let sim = serve_router(router, ANY, None).await.unwrap();
    let adapter = nocr(sim.base_url(), ProviderTls::default());
    let mut errors = Vec::new();
    for nin in ["0499370899", "0000000000", "1111111111"] {
        errors.push(
            bounded(adapter.call(request(IDENTITY, &[("national_code", nin)])))
                .await
                .unwrap_err(),
        );
    }
    errors.push(
        bounded(adapter.call(request(
            tabadol_adapters::civil_registry::LIFE_STATUS,
            &[("national_code", "0499370899")],
        )))
        .await
        .unwrap_err(),
    );
    let shahkar = build(&AdapterConfig::new(
        "cra",
        AdapterKind::Shahkar,
        sim.base_url(),
        Duration::from_secs(10),
    ))
    .unwrap();
    errors.push(
        bounded(shahkar.call(request(
            MATCH_MOBILE,
            &[("national_code", "0499370899"), ("mobile", "09121234567")],
        )))
        .await
        .unwrap_err(),
    );
    for e in &errors {
        let text = format!("{e} {e:?}");
        assert!(!text.contains("SECRET"), "provider text passed on: {text}");
    }
    assert!(
        errors[0].to_string().contains("INVALID_NIN"),
        "{}",
        errors[0]
    );
    assert!(
        matches!(errors[1], ProviderError::Rejected { .. }),
        "{:?}",
        errors[1]
    );
    assert!(
        matches!(errors[2], ProviderError::Protocol { .. }),
        "{:?}",
        errors[2]
    );
    assert!(
        errors[3].to_string().contains("line 1 column"),
        "{}",
        errors[3]
    );
    assert!(errors[4].to_string().contains("code 601"), "{}", errors[4]);
}

/// A redirect is not followed (it could send the hub, and the identifiers in the path, to
/// any host, plain http included): the call fails and the redirect's target sees nothing.
#[tokio::test]
async fn redirects_are_not_followed() {
    let target_hits = Arc::new(AtomicU64::new(0));
    let hits = target_hits.clone();
    let target = serve_router(
        Router::new().route(
            "/{*rest}",
            get(move || {
                hits.fetch_add(1, Ordering::Relaxed);
                async { "{}" }
            }),
        ),
        ANY,
        None,
    )
    .await
    .unwrap();
    let location = format!("{}/stolen", target.base_url());
    let sim = serve_router(
        Router::new().route(
            "/nocr/v2/persons/{nin}",
            get(move || {
                let location = location.clone();
                async move { (StatusCode::FOUND, [(header::LOCATION, location)]) }
            }),
        ),
        ANY,
        None,
    )
    .await
    .unwrap();
    let adapter = nocr(sim.base_url(), ProviderTls::default());
    let err = bounded(adapter.call(request(IDENTITY, &[("national_code", "0499370899")])))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("302"), "{err}");
    assert_eq!(target_hits.load(Ordering::Relaxed), 0);
}
