//! Hostile clients at the TLS edge (issue 7, defects 4, 5, 6 and 7's revocation part):
//! idle sockets cannot starve handshakes, connections that never speak HTTP/2 are closed
//! and capped per agency, CRLs are reloaded (an expired one is never trusted) and a
//! reload cuts open connections of a revoked certificate within 1 s.

mod common;

use std::future::Future;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ctx, TestHub};
use tabadol_hub::ops::config::{Config, Revocation};
use tabadol_hub::ops::pki::{self, LeafSpec, PemPair, PkiLayout};
use tabadol_proto::v1::shahkar_client::ShahkarClient;
use tabadol_proto::v1::MatchMobileRequest;
use tokio::io::AsyncReadExt as _;
use tonic::Code;

// ---------------------------------------------------------------------------------------
// Harness: captured logs on every runtime thread, raw TLS clients.

/// The hub's log lines, captured for one test on every thread of its runtime.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn lines_with(&self, part: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(part))
            .map(str::to_owned)
            .collect()
    }

    /// Waits (up to 5 s) for a log line containing every one of `parts`, and returns it.
    async fn wait_for(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.text();
            if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?}; the log was:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
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

/// Runs `test` on a two-worker runtime whose every thread logs (warn and above) into `logs`
/// only, so parallel tests in the same process do not mix their lines.
fn run<F: Future<Output = ()>>(logs: &Logs, test: impl FnOnce() -> F) {
    let buf = logs.0.clone();
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_env_filter("warn")
            .with_ansi(false)
            .with_writer(move || LogWriter(buf.clone()))
            .finish(),
    );
    let on_start = dispatch.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // Lives as long as the worker thread.
            std::mem::forget(tracing::dispatcher::set_default(&on_start));
        })
        .build()
        .unwrap();
    let _guard = tracing::dispatcher::set_default(&dispatch);
    rt.block_on(test());
}

/// A CRL file next to the test PKI revoking `revoked`, valid for 7 days.
fn write_crl(pki_dir: &PkiLayout, revoked: &[&PemPair]) -> PathBuf {
    let ca = pki::read_ca(pki_dir).unwrap();
    let pems: Vec<&str> = revoked.iter().map(|p| p.cert.as_str()).collect();
    let crl = pki::revocation_list(&ca, &pems).unwrap();
    let path = pki_dir.ca_cert().with_file_name("national-root.crl");
    std::fs::write(&path, crl).unwrap();
    path
}

/// A CRL signed by the test root whose nextUpdate passed in 2021.
fn expired_crl(pki_dir: &PkiLayout) -> String {
    use rcgen::{CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, SerialNumber};
    let ca = pki::read_ca(pki_dir).unwrap();
    let key = KeyPair::from_pem(&ca.key).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, &key).unwrap();
    CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2020, 1, 1),
        next_update: rcgen::date_time_ymd(2021, 1, 1),
        crl_number: SerialNumber::from(7u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap()
    .pem()
    .unwrap()
}

/// A hub whose config has the given connection limits (and, when `crl` is set, checks
/// revocation against a CRL file that initially revokes nothing).
async fn hub_with(
    crl: bool,
    limits: impl FnOnce(&mut tabadol_hub::edge::tls::ConnectionLimits),
) -> TestHub {
    TestHub::start_configured(None, common::policy_dir(), |pki_dir, config| {
        if crl {
            config.tls.crls = vec![write_crl(pki_dir, &[])];
            config.tls.revocation = Revocation::Crl;
        }
        limits(&mut config.tls.limits);
    })
    .await
}

/// A rustls client config presenting `id` and trusting the hub's root, ALPN h2.
fn client_tls(hub: &TestHub, id: &PemPair) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(hub.ca_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
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
    Arc::new(cfg)
}

type ClientTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A completed TLS handshake with the hub as `id`, nothing sent after it.
async fn tls_connect(hub: &TestHub, tls: &Arc<rustls::ClientConfig>) -> ClientTls {
    let tcp = tokio::net::TcpStream::connect(hub.handle.addr)
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(tls.clone())
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// Waits for the server to close `conn` (EOF or error), at most `within`; returns how long.
async fn closed_within(conn: &mut ClientTls, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    let read = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .ok()
        .map(|()| start.elapsed())
}

async fn shahkar_call(hub: &TestHub, identity: PemPair) -> Result<(), tonic::Status> {
    shahkar_call_for(hub, identity, "kyc").await
}

/// A Shahkar match as `identity` for `purpose` (cbi: kyc, moe: customer-verification).
async fn shahkar_call_for(
    hub: &TestHub,
    identity: PemPair,
    purpose: &str,
) -> Result<(), tonic::Status> {
    let (nc, mobile) = hub.alive(0);
    let channel = hub
        .channel_with(Some(identity), &hub.ca_pem())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    ShahkarClient::new(channel)
        .match_mobile(MatchMobileRequest {
            context: ctx("TRK-HOSTILE-TLS-1", purpose),
            national_code: nc,
            mobile,
        })
        .await
        .map(|_| ())
}

/// A refused connection: the handshake failed (UNAVAILABLE / UNKNOWN), or the hub closed
/// the connection right after it (CANCELLED, "connection closed"); never an answer.
fn assert_transport_refusal(err: &tonic::Status) {
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "expected a refused connection, got {err:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Defect 5: handshake starvation.

/// 1,100 TCP sockets that never send a ClientHello, held open from one thread and each
/// reconnected as soon as the hub drops it.
struct IdleSockets {
    stop: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    refilled: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IdleSockets {
    const COUNT: usize = 1_100;
    /// Hard bound on the attack, whatever the test does.
    const MAX_RUN: Duration = Duration::from_secs(30);

    fn start(addr: std::net::SocketAddr) -> IdleSockets {
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let refilled = Arc::new(AtomicUsize::new(0));
        let (s, h, r) = (stop.clone(), held.clone(), refilled.clone());
        let thread = std::thread::spawn(move || {
            let connect = || {
                let c = std::net::TcpStream::connect(addr).ok()?;
                c.set_nonblocking(true).ok()?;
                Some(c)
            };
            let begun = Instant::now();
            let mut socks: Vec<Option<std::net::TcpStream>> = Vec::with_capacity(Self::COUNT);
            for _ in 0..Self::COUNT {
                socks.push(connect());
            }
            h.store(socks.iter().flatten().count(), Ordering::SeqCst);
            while !s.load(Ordering::SeqCst) && begun.elapsed() < Self::MAX_RUN {
                let mut buf = [0u8; 16];
                for slot in socks.iter_mut() {
                    let dropped = match slot {
                        Some(c) => match c.read(&mut buf) {
                            Ok(_) => true, // EOF (or bytes: never expected)
                            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                        },
                        None => true,
                    };
                    if dropped {
                        *slot = connect();
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        IdleSockets {
            stop,
            held,
            refilled,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.refilled.load(Ordering::SeqCst)
    }
}

/// While 1,100 idle TCP sockets are held against the hub (refilled as it drops them),
/// every legitimate call (a new connection each) completes in under 1 s, and the refusal
/// log stays bounded: at most ten lines per interval plus one summary with counts.
#[test]
fn idle_sockets_do_not_starve_legitimate_calls() {
    let logs = Logs::default();
    run(&logs, || async {
        let logged_since = Instant::now();
        let hub = hub_with(false, |l| l.refusal_log_interval_secs = 1).await;
        shahkar_call(&hub, hub.identity("cbi"))
            .await
            .expect("baseline call");
        let attack = IdleSockets::start(hub.handle.addr);
        let began = Instant::now();
        while attack.held.load(Ordering::SeqCst) == 0 {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "attacker could not connect"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let held = attack.held.load(Ordering::SeqCst);
        assert!(held >= 1_000, "only {held} idle sockets connected");
        // Let the hub shed and the attacker refill for a while, then call through it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut slowest = Duration::ZERO;
        for _ in 0..5 {
            let t = Instant::now();
            shahkar_call(&hub, hub.identity("cbi"))
                .await
                .expect("a legitimate call during the attack is answered");
            slowest = slowest.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Past the handshake timeout (3 s), so timed-out sockets are counted too.
        while began.elapsed() < Duration::from_secs(4) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let attack_secs = began.elapsed().as_secs() + 1;
        let refilled = attack.stop();
        // Wait for one summary after the attack.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let edge_lines = logs.lines_with("tabadol_hub::edge::tls");
        let summaries = logs.lines_with("individual lines suppressed");
        eprintln!(
            "slowest legitimate call {slowest:?}; sockets refilled {refilled}; \
             edge log lines {} over {attack_secs} s, {} summaries",
            edge_lines.len(),
            summaries.len()
        );
        assert!(
            slowest < Duration::from_secs(1),
            "a legitimate call took {slowest:?} behind idle sockets"
        );
        assert!(
            refilled >= 500,
            "the hub dropped only {refilled} idle sockets; the per-address bound did not act"
        );
        assert!(
            !summaries.is_empty() && summaries.iter().any(|l| l.contains("shed=")),
            "no refusal summary with counts: {edge_lines:#?}"
        );
        // Ten individual lines plus one summary per one-second interval since the hub
        // started, and a margin of two intervals for the edges of the window.
        let bound = 11 * (logged_since.elapsed().as_secs() as usize + 2);
        assert!(
            edge_lines.len() <= bound,
            "{} edge log lines (bound {bound}) for {refilled} dropped sockets",
            edge_lines.len()
        );
        hub.stop().await;
    });
}

// ---------------------------------------------------------------------------------------
// Defect 6: connections that never speak HTTP/2; per-agency cap.

/// Twenty verified TLS connections that never send the HTTP/2 preface are all closed
/// within the preface bound (2 s here); while they are open, cbi's per-agency cap of 20
/// refuses its next connection (logged) and another agency still gets answered; once
/// they are closed cbi is answered again.
#[test]
fn silent_tls_connections_are_closed_and_capped_per_agency() {
    let logs = Logs::default();
    run(&logs, || async {
        let hub = hub_with(false, |l| {
            l.preface_timeout_ms = 2_000;
            l.max_connections_per_agency = 20;
        })
        .await;
        let tls = client_tls(&hub, &hub.identity("cbi"));
        let opened = Instant::now();
        let mut silent = Vec::new();
        for _ in 0..20 {
            silent.push(tls_connect(&hub, &tls).await);
        }
        // The hub counts them only once their handshake is done on its side.
        let deadline = Instant::now() + Duration::from_secs(2);
        while hub.handle.tls.open_connections("cbi").1 < 20 {
            assert!(
                Instant::now() < deadline,
                "the hub never counted 20 cbi connections"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let err = shahkar_call(&hub, hub.identity("cbi")).await.unwrap_err();
        assert_transport_refusal(&err);
        logs.wait_for(&[
            "too many open connections",
            "agency=cbi",
            "tls.limits.max_connections_per_agency",
        ])
        .await;
        shahkar_call_for(&hub, hub.identity("moe"), "customer-verification")
            .await
            .expect("another agency is not affected by cbi's cap");

        let bound = Duration::from_millis(2_000 + 1_000);
        let mut closed = 0;
        for conn in silent.iter_mut() {
            let left = bound.saturating_sub(opened.elapsed());
            if closed_within(conn, left).await.is_some() {
                closed += 1;
            }
        }
        eprintln!(
            "{closed} of 20 silent connections closed within {:?} of opening",
            opened.elapsed()
        );
        assert_eq!(
            closed, 20,
            "connections without an HTTP/2 preface stayed open"
        );
        logs.wait_for(&["no HTTP/2 preface in time"]).await;
        let deadline = Instant::now() + Duration::from_secs(2);
        while hub.handle.tls.open_connections("cbi").1 > 0 {
            assert!(
                Instant::now() < deadline,
                "closed connections still counted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shahkar_call(&hub, hub.identity("cbi"))
            .await
            .expect("cbi is answered once its silent connections are gone");
        hub.stop().await;
    });
}

// ---------------------------------------------------------------------------------------
// Defect 7 (revocation) and defect 4 (connections).

/// One gRPC unary call (health check) over an already open HTTP/2 connection; returns the
/// grpc-status the hub answered.
async fn health_check(send: &mut h2::client::SendRequest<hyper::body::Bytes>) -> Option<String> {
    let req = http::Request::builder()
        .method("POST")
        .uri("https://localhost/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut body) = send
        .clone()
        .ready()
        .await
        .ok()?
        .send_request(req, false)
        .ok()?;
    // HealthCheckRequest { service: "" } encodes to zero bytes: a 5-byte empty message.
    body.send_data(hyper::body::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .ok()?;
    let mut resp = resp.await.ok()?.into_body();
    while let Some(chunk) = resp.data().await {
        let chunk = chunk.ok()?;
        let _ = resp.flow_control().release_capacity(chunk.len());
    }
    let trailers = resp.trailers().await.ok()??;
    Some(trailers.get("grpc-status")?.to_str().ok()?.to_owned())
}

/// An HTTP/2 connection to the hub as `id`, driven on its own task; the receiver resolves
/// when the hub closes it.
async fn h2_connection(
    hub: &TestHub,
    id: &PemPair,
) -> (
    h2::client::SendRequest<hyper::body::Bytes>,
    tokio::sync::oneshot::Receiver<Instant>,
) {
    let tls = tls_connect(hub, &client_tls(hub, id)).await;
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = tx.send(Instant::now());
    });
    (send, rx)
}

/// A connection with a working unary call is cut within 1 s after a reloaded CRL revokes
/// its certificate; new connections with that certificate are then refused at the
/// handshake, while another certificate of the same agency keeps working (its open
/// channel and new connections).
#[test]
fn reloaded_crl_cuts_open_connections_of_the_revoked_certificate() {
    let logs = Logs::default();
    run(&logs, || async {
        let hub = hub_with(true, |_| {}).await;
        let doomed = hub.issue(&LeafSpec::client("cbi.agency.tabadol.ir"));
        let (mut send, closed) = h2_connection(&hub, &doomed).await;
        assert_eq!(health_check(&mut send).await.as_deref(), Some("0"));
        let other = hub.channel("cbi").await;
        let (nc, mobile) = hub.alive(0);
        let req = || MatchMobileRequest {
            context: ctx("TRK-HOSTILE-TLS-2", "kyc"),
            national_code: nc.clone(),
            mobile: mobile.clone(),
        };
        ShahkarClient::new(other.clone())
            .match_mobile(req())
            .await
            .expect("cbi's other certificate before the reload");

        write_crl(&hub.pki, &[&doomed]);
        let reloaded = Instant::now();
        assert!(
            tabadol_hub::ops::app::reload_crls(&hub.handle.hub, &hub.handle.tls).await,
            "a valid CRL is taken"
        );
        let at = tokio::time::timeout(Duration::from_secs(1), closed)
            .await
            .expect("the revoked certificate's connection is still open 1 s after the reload")
            .unwrap();
        eprintln!(
            "connection of the revoked certificate closed {:?} after the CRL reload",
            at.duration_since(reloaded)
        );
        logs.wait_for(&["connection closed: access withdrawn", "revoked"])
            .await;
        let err = shahkar_call(&hub, doomed.clone()).await.unwrap_err();
        assert_transport_refusal(&err);
        logs.wait_for(&["TLS handshake refused", "Revoked"]).await;
        ShahkarClient::new(other)
            .match_mobile(req())
            .await
            .expect("cbi's other certificate keeps its open channel");
        shahkar_call(&hub, hub.identity("cbi"))
            .await
            .expect("cbi's other certificate connects anew");
        hub.stop().await;
    });
}

/// Renaming an agency's certificate common name in agencies.yaml and reloading the
/// policy cuts that agency's open connection within 1 s.
#[test]
fn policy_reload_cuts_connections_whose_common_name_lost_its_agency() {
    let logs = Logs::default();
    run(&logs, || async {
        let policy = common::copy_policy();
        let hub = TestHub::start_with_policy(policy.path().to_owned()).await;
        let id = hub.identity("cbi");
        let (mut send, closed) = h2_connection(&hub, &id).await;
        assert_eq!(health_check(&mut send).await.as_deref(), Some("0"));
        let agencies = policy.path().join("agencies.yaml");
        let text = std::fs::read_to_string(&agencies).unwrap();
        std::fs::write(
            &agencies,
            text.replace(
                "common_name: cbi.agency.tabadol.ir",
                "common_name: cbi-2027.agency.tabadol.ir",
            ),
        )
        .unwrap();
        let reloaded = Instant::now();
        assert!(tabadol_hub::ops::app::reload_policy(&hub.handle.hub, policy.path()).await);
        let at = tokio::time::timeout(Duration::from_secs(1), closed)
            .await
            .expect("the connection is still open 1 s after its agency lost the common name")
            .unwrap();
        eprintln!(
            "closed {:?} after the policy reload",
            at.duration_since(reloaded)
        );
        logs.wait_for(&["access withdrawn", "no longer maps to agency cbi"])
            .await;
        hub.stop().await;
    });
}

/// An expired CRL is never trusted: the hub refuses to start with it (naming the file and
/// what to do), and a reload that brings one keeps the previous good CRL — the certificate
/// it revokes stays refused — and logs why.
#[test]
fn expired_crl_refuses_start_and_reload_keeps_the_last_good_one() {
    let logs = Logs::default();
    run(&logs, || async {
        let revoked = std::sync::OnceLock::new();
        let hub = TestHub::start_configured(None, common::policy_dir(), |pki_dir, config| {
            let ca = pki::read_ca(pki_dir).unwrap();
            let id = pki::issue(&ca, &LeafSpec::client("cbi.agency.tabadol.ir")).unwrap();
            config.tls.crls = vec![write_crl(pki_dir, &[&id])];
            config.tls.revocation = Revocation::Crl;
            revoked.set(id).unwrap();
        })
        .await;
        let revoked = revoked.get().unwrap().clone();
        let crl = hub.pki.ca_cert().with_file_name("national-root.crl");
        std::fs::write(&crl, expired_crl(&hub.pki)).unwrap();
        assert!(
            !tabadol_hub::ops::app::reload_crls(&hub.handle.hub, &hub.handle.tls).await,
            "an expired CRL must be refused"
        );
        logs.wait_for(&["CRL reload refused; keeping the last good CRLs", "expired"])
            .await;
        assert_transport_refusal(&shahkar_call(&hub, revoked).await.unwrap_err());
        shahkar_call(&hub, hub.identity("cbi"))
            .await
            .expect("the last good CRL still lets cbi's own certificate in");

        // Starting with the expired CRL fails, naming the file.
        let mut cfg = start_config(&hub);
        cfg.tls.crls = vec![crl.clone()];
        let errors = cfg.validate().unwrap_err().to_string();
        assert!(
            errors.contains("national-root.crl") && errors.contains("expired"),
            "{errors}"
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let policy = tabadol_policy::Policy::load_dir(&common::policy_dir()).unwrap();
        let err = match tabadol_hub::ops::app::start(&cfg, policy, listener).await {
            Ok(_) => panic!("the hub started with an expired CRL"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains("national-root.crl") && err.contains("expired"),
            "{err}"
        );
        hub.stop().await;
    });
}

/// A configuration for a second hub next to `hub` (its PKI and simulators), for checks
/// that must not disturb the running one.
fn start_config(hub: &TestHub) -> Config {
    let dir = hub.dir.path().join("second");
    let yaml = format!(
        "listen: 127.0.0.1:0\npolicy_dir: {policy}\ndata_dir: {data}\n\
         tls: {{ ca: {ca}, cert: {cert}, key: {key}, crls: [] }}\n\
         providers:\n{providers}",
        policy = common::policy_dir().display(),
        data = dir.display(),
        ca = hub.pki.ca_cert().display(),
        cert = hub.pki.hub_cert().display(),
        key = hub.pki.hub_key().display(),
        providers = common::providers_yaml(&hub.sims),
    );
    serde_yaml::from_str(&yaml).unwrap()
}

/// `tls.crls: []` in a served configuration is an error that names `revocation: off`;
/// writing `revocation: off` accepts it, and `off` next to CRL files is reported too.
#[test]
fn empty_crls_need_an_explicit_revocation_off() {
    let logs = Logs::default();
    run(&logs, || async {
        let hub = TestHub::start().await;
        let mut cfg = start_config(&hub);
        assert_eq!(
            cfg.tls.revocation,
            Revocation::Crl,
            "checking is the default"
        );
        let errors = cfg.validate().unwrap_err().to_string();
        assert!(
            errors.contains("tls.crls: no certificate revocation list given")
                && errors.contains("revocation: off"),
            "{errors}"
        );
        cfg.tls.revocation = Revocation::Off;
        cfg.validate().expect("revocation: off written explicitly");
        cfg.tls.crls = vec![hub.pki.ca_cert()];
        let errors = cfg.validate().unwrap_err().to_string();
        assert!(
            errors.contains("tls.revocation: `off` but tls.crls lists 1"),
            "{errors}"
        );
        let yaml: Result<Config, _> = serde_yaml::from_str(
            "listen: 127.0.0.1:0\npolicy_dir: p\ndata_dir: d\n\
             tls: { ca: a, cert: b, key: c, revocation: maybe }\n",
        );
        assert!(yaml
            .unwrap_err()
            .to_string()
            .contains("unknown variant `maybe`"));
        hub.stop().await;
    });
}
