//! Hostile use of HTTP/2 streams and malformed gRPC requests (issue 7, defects 3, 6 and
//! 11), sent with a raw `h2` client over mutual TLS so nothing in a gRPC client library
//! smooths them over.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::TestHub;
use prost::Message;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tabadol_proto::v1::inquiry_client::InquiryClient;
use tabadol_proto::v1::{ListServicesRequest, SubscribeRequest};

/// One raw HTTP/2 connection to the hub as an agency.
struct RawConn {
    send: h2::client::SendRequest<Bytes>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS the hub advertised (as last seen by the client).
    max_streams: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tls_stream(
    hub: &TestHub,
    agency: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(hub.ca_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let id = hub.identity(agency);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(id.cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(hub.handle.addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

async fn raw_conn(hub: &TestHub, agency: &str) -> anyhow::Result<RawConn> {
    let tls = tls_stream(hub, agency).await?;
    let (send, mut conn) = h2::client::Builder::new()
        .max_concurrent_reset_streams(100_000)
        .handshake::<_, Bytes>(tls)
        .await?;
    let max_streams = Arc::new(AtomicUsize::new(usize::MAX));
    let seen = max_streams.clone();
    let task = tokio::spawn(async move {
        let _ = futures::future::poll_fn(|cx| {
            let r = std::pin::Pin::new(&mut conn).poll(cx);
            seen.store(conn.max_concurrent_send_streams(), Ordering::Relaxed);
            r
        })
        .await;
    });
    let send = send.ready().await?;
    Ok(RawConn {
        send,
        max_streams,
        task,
    })
}

/// A gRPC request for `path` with `content_type`.
fn request(hub: &TestHub, path: &str, content_type: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!(
            "https://localhost:{}{path}",
            hub.handle.addr.port()
        ))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// The gRPC length-prefixed frame of `message`.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(5 + message.len());
    b.push(0);
    b.extend_from_slice(&(message.len() as u32).to_be_bytes());
    b.extend_from_slice(message);
    Bytes::from(b)
}

/// How one raw call ended.
#[derive(Debug)]
enum Outcome {
    /// HTTP 200, no grpc-status yet: a stream is open (the body is held).
    Open(h2::RecvStream),
    /// A gRPC status in headers (trailers-only) or trailers.
    Status(i32, String),
    /// A non-200 HTTP answer with its body text.
    Http(u16, String),
}

fn grpc_status(h: &http::HeaderMap) -> Option<(i32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let msg = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some((code, msg))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits for the response headers; with `to_end`, reads a non-trailers-only answer to
/// its trailers.
async fn outcome(resp: h2::client::ResponseFuture, to_end: bool) -> Outcome {
    let resp = match resp.await {
        Ok(r) => r,
        Err(e) => return Outcome::Status(-1, format!("stream error: {e}")),
    };
    if let Some((code, msg)) = grpc_status(resp.headers()) {
        return Outcome::Status(code, msg);
    }
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    if status != 200 {
        let mut text = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            text.extend_from_slice(&chunk);
        }
        return Outcome::Http(status, String::from_utf8_lossy(&text).into_owned());
    }
    if !to_end {
        return Outcome::Open(body);
    }
    while let Some(chunk) = body.data().await {
        if chunk.is_err() {
            break;
        }
    }
    match body.trailers().await {
        Ok(Some(t)) => grpc_status(&t)
            .map(|(c, m)| Outcome::Status(c, m))
            .unwrap_or(Outcome::Status(-1, "trailers without grpc-status".into())),
        other => Outcome::Status(-1, format!("no trailers: {other:?}")),
    }
}

/// Sends one complete gRPC call (`body` then END_STREAM) and returns how it ended.
async fn call(conn: &mut RawConn, req: http::Request<()>, body: Bytes) -> Outcome {
    let sent = async {
        let mut send = conn.send.clone().ready().await?;
        let (resp, mut stream) = send.send_request(req, false)?;
        stream.send_data(body, true)?;
        Ok::<_, h2::Error>(resp)
    };
    match sent.await {
        Ok(resp) => outcome(resp, true).await,
        Err(e) => Outcome::Status(-1, format!("connection error: {e}")),
    }
}

/// Resident memory of this process (the hub runs in it), in MiB.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

const SUBSCRIBE: &str = "/tabadol.v1.Events/Subscribe";
const LIST_SERVICES: &str = "/tabadol.v1.Inquiry/ListServices";
const GRPC: &str = "application/grpc";

/// Ten thousand Subscribe streams tried on one cbi connection: the hub advertises
/// MAX_CONCURRENT_STREAMS 100, keeps exactly the agency's cap open and refuses the rest with
/// RESOURCE_EXHAUSTED naming the limit, the process grows by less than 100 MiB (1.3 GB
/// before), and another agency's unary calls meanwhile complete in under 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_on_one_connection_are_refused_beyond_the_cap() {
    const CAP: usize = 50;
    const TRIES: usize = 10_000;
    let hub = TestHub::start_configured(None, common::policy_dir(), |_, cfg| {
        cfg.limits.streams_per_agency = CAP as u32;
    })
    .await;
    let mut other = InquiryClient::new(hub.channel("nocr").await);
    other.list_services(ListServicesRequest {}).await.unwrap();
    let rss_before = rss_mib();

    let conn = raw_conn(&hub, "cbi").await.expect("h2 connection");
    // Another agency calls all along; each call must complete in under 1 s.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_other = stop.clone();
    let other_calls = tokio::spawn(async move {
        let mut slowest = Duration::ZERO;
        let mut calls = 0;
        while !stop_other.load(Ordering::Relaxed) && calls < 200 {
            let t = Instant::now();
            other.list_services(ListServicesRequest {}).await.unwrap();
            slowest = slowest.max(t.elapsed());
            calls += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (calls, slowest)
    });

    let body = grpc_frame(&SubscribeRequest::default().encode_to_vec());
    let mut tasks = Vec::with_capacity(TRIES);
    let flood = tokio::time::timeout(Duration::from_secs(120), async {
        for _ in 0..TRIES {
            let mut send = conn.send.clone().ready().await.expect("connection ready");
            let (resp, mut stream) = send
                .send_request(request(&hub, SUBSCRIBE, GRPC), false)
                .expect("send headers");
            stream.send_data(body.clone(), true).expect("send body");
            tasks.push(tokio::spawn(outcome(resp, false)));
        }
    })
    .await;
    assert!(
        flood.is_ok(),
        "10,000 stream attempts did not finish in 120 s"
    );
    let mut open = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Outcome::Open(body) => open.push(body),
            Outcome::Status(8, msg) => {
                assert!(
                    msg.contains("limits.streams_per_agency") && msg.contains("agency cbi"),
                    "{msg}"
                );
                refused += 1;
            }
            // Beyond MAX_CONCURRENT_STREAMS, h2 itself refuses (RST_STREAM REFUSED_STREAM).
            Outcome::Status(-1, msg) if msg.contains("refused stream") => refused += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    let rss_during = rss_mib();
    stop.store(true, Ordering::Relaxed);
    let (calls, slowest) = other_calls.await.unwrap();
    eprintln!(
        "open {} refused {refused}; advertised max streams {}; RSS {rss_before} → {rss_during} MiB; \
         nocr: {calls} calls, slowest {slowest:?}",
        open.len(),
        conn.max_streams.load(Ordering::Relaxed)
    );
    assert_eq!(conn.max_streams.load(Ordering::Relaxed), 100);
    assert_eq!(open.len(), CAP);
    assert_eq!(refused, TRIES - CAP);
    assert!(
        rss_during < rss_before + 100,
        "RSS grew from {rss_before} to {rss_during} MiB"
    );
    assert!(calls > 0 && slowest < Duration::from_secs(1), "{slowest:?}");
    // The streams end when their holder goes away, and the cap is free again.
    drop(open);
    drop(conn);
    let mut again = raw_conn(&hub, "cbi").await.expect("h2 connection");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut send = again.send.clone().ready().await.unwrap();
        let (resp, mut stream) = send
            .send_request(request(&hub, SUBSCRIBE, GRPC), false)
            .unwrap();
        stream.send_data(body.clone(), true).unwrap();
        match outcome(resp, false).await {
            Outcome::Open(_) => break,
            other if Instant::now() > deadline => {
                panic!("cap not released 5 s after the connection closed: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let _ = &mut again;
    drop(again);
    hub.stop().await;
}

/// A unary call and a Subscribe whose request bodies never end (no END_STREAM) are ended
/// by the hub with INVALID_ARGUMENT once limits.request_body_timeout_ms (1 s here) has
/// passed, instead of staying open forever.
#[tokio::test]
async fn a_request_without_end_stream_is_ended_within_the_bound() {
    let hub = TestHub::start_configured(None, common::policy_dir(), |_, cfg| {
        cfg.limits.request_body_timeout_ms = 1_000;
    })
    .await;
    let conn = raw_conn(&hub, "cbi").await.expect("h2 connection");
    let mut held = Vec::new();
    let mut waits = Vec::new();
    for (path, msg) in [
        (LIST_SERVICES, ListServicesRequest {}.encode_to_vec()),
        (SUBSCRIBE, SubscribeRequest::default().encode_to_vec()),
    ] {
        let mut send = conn.send.clone().ready().await.unwrap();
        let (resp, mut stream) = send.send_request(request(&hub, path, GRPC), false).unwrap();
        stream.send_data(grpc_frame(&msg), false).unwrap();
        held.push(stream); // the body stays open
        waits.push((path, resp));
    }
    let started = Instant::now();
    for (path, resp) in waits {
        let ended = tokio::time::timeout(Duration::from_secs(5), outcome(resp, true)).await;
        match ended {
            Ok(Outcome::Status(3, msg)) => assert!(msg.contains("END_STREAM"), "{path}: {msg}"),
            Ok(other) => panic!("{path}: {other:?}"),
            Err(_) => panic!("{path}: still open 5 s after its headers (bound 1 s)"),
        }
    }
    let waited = started.elapsed();
    eprintln!("requests without END_STREAM ended after {waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    drop(held);
    drop(conn);
    hub.stop().await;
}

/// A body that is not a valid protobuf message is INVALID_ARGUMENT naming the message, for
/// every tabadol.v1 service (tonic made it INTERNAL, which clients retry).
#[tokio::test]
async fn undecodable_bodies_are_invalid_argument() {
    let hub = TestHub::start().await;
    let mut conn = raw_conn(&hub, "cbi").await.expect("h2 connection");
    // 0xff… is a field tag whose varint never ends: no message decodes from it.
    let garbage = grpc_frame(&[0xff; 11]);
    for (path, message) in [
        ("/tabadol.v1.Shahkar/MatchMobile", "MatchMobileRequest"),
        (
            "/tabadol.v1.CivilRegistry/GetIdentity",
            "GetIdentityRequest",
        ),
        ("/tabadol.v1.Tax/GetTaxpayer", "GetTaxpayerRequest"),
        ("/tabadol.v1.Inquiry/Inquire", "InquireRequest"),
        ("/tabadol.v1.Events/Publish", "PublishRequest"),
        (SUBSCRIBE, "SubscribeRequest"),
    ] {
        match call(&mut conn, request(&hub, path, GRPC), garbage.clone()).await {
            Outcome::Status(3, msg) => assert!(
                msg.contains(&format!("not a valid tabadol.v1.{message}")),
                "{path}: {msg}"
            ),
            other => panic!("{path}: {other:?}"),
        }
    }
    // grpc.health.v1 (tonic's own codec) answers the same code.
    for path in ["/grpc.health.v1.Health/Check"] {
        match call(&mut conn, request(&hub, path, GRPC), garbage.clone()).await {
            Outcome::Status(3, msg) => {
                assert!(msg.contains("not a valid protobuf"), "{path}: {msg}")
            }
            other => panic!("{path}: {other:?}"),
        }
    }
    drop(conn);
    hub.stop().await;
}

/// A request whose content-type is not gRPC is refused with HTTP 415 and never reaches the
/// service (which would have answered it with grpc-status 0); gRPC content types are served.
#[tokio::test]
async fn non_grpc_content_types_are_refused_with_415() {
    let hub = TestHub::start().await;
    let mut conn = raw_conn(&hub, "cbi").await.expect("h2 connection");
    let body = grpc_frame(&ListServicesRequest {}.encode_to_vec());
    for ct in ["application/json", "text/plain", "application/grpc+json"] {
        match call(&mut conn, request(&hub, LIST_SERVICES, ct), body.clone()).await {
            Outcome::Http(415, text) => assert!(text.contains("not gRPC"), "{ct}: {text}"),
            other => panic!("{ct}: {other:?}"),
        }
    }
    for ct in ["application/grpc", "application/grpc+proto"] {
        match call(&mut conn, request(&hub, LIST_SERVICES, ct), body.clone()).await {
            Outcome::Status(0, _) => {}
            other => panic!("{ct}: {other:?}"),
        }
    }
    drop(conn);
    hub.stop().await;
}

/// With tls.limits.max_connections 3, a fourth connection is closed by the hub before it can call,
/// and once one of the three closes a new connection is served again.
#[tokio::test]
async fn connections_beyond_the_total_cap_are_closed() {
    let hub = TestHub::start_configured(None, common::policy_dir(), |_, cfg| {
        cfg.tls.limits.max_connections = 3;
    })
    .await;
    let body = grpc_frame(&ListServicesRequest {}.encode_to_vec());
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = raw_conn(&hub, "cbi").await.expect("h2 connection");
        assert!(matches!(
            call(&mut c, request(&hub, LIST_SERVICES, GRPC), body.clone()).await,
            Outcome::Status(0, _)
        ));
        held.push(c);
    }
    let fourth = tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = raw_conn(&hub, "cbi").await?;
        let mut send = c.send.clone().ready().await?;
        let (resp, mut stream) = send.send_request(request(&hub, LIST_SERVICES, GRPC), false)?;
        stream.send_data(body.clone(), true)?;
        let r = resp.await;
        let _ = &mut c;
        r?;
        Ok::<(), anyhow::Error>(())
    })
    .await
    .expect("the fourth connection was neither served nor closed within 5 s");
    assert!(fourth.is_err(), "a fourth connection was served");
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let served = match raw_conn(&hub, "cbi").await {
            Ok(mut c) => matches!(
                call(&mut c, request(&hub, LIST_SERVICES, GRPC), body.clone()).await,
                Outcome::Status(0, _)
            ),
            Err(_) => false,
        };
        if served {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection served 5 s after one of three closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    hub.stop().await;
}
