//! Simulators of the three providers as real HTTP servers over a deterministic [`Dataset`].
//!
//! Each simulator speaks exactly the wire format its adapter module documents
//! ([`crate::shahkar`], [`crate::civil_registry`], [`crate::tax`]), requires the
//! `X-Tracking-Code` header, and can be slowed down ([`SimHandle::set_delay`]) or stopped
//! ([`SimHandle::shutdown`]: listener and every open connection close, so pooled keep-alive
//! connections see the provider go down too). Each can also be served over TLS, optionally
//! requiring a client certificate ([`ServerTls`]), like a production provider endpoint; and
//! [`serve_router`] serves any other router the same way (tests build misbehaving providers
//! with it).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::civil_registry::{self, ErrorDto, LifeStatusDto, PersonDto};
use crate::shahkar::{MatchRequest, MatchResponse};
use crate::tax::{Envelope, OfficeDto, TaxpayerDto};
use crate::AdapterKind;

mod data;
pub mod session26;

pub use data::{
    Dataset, Gender, LegalEntity, Person, TaxStatus, TaxSubject, Taxpayer, LEGAL_ENTITIES, PERSONS,
};

const TRACKING_HEADER: &str = "x-tracking-code";

/// The simulators, each on its own 127.0.0.1 port: the three hand-written providers and the
/// session-26 providers ([`session26`]) by agency id.
pub struct Simulators {
    pub shahkar: SimHandle,
    pub civil_registry: SimHandle,
    pub tax: SimHandle,
    /// `post`, `tvto`, `judiciary`, `msrt`, `police`, `sso`, `ssaa`.
    pub session26: session26::Handles,
    pub dataset: Arc<Dataset>,
}

impl Simulators {
    /// Start all of them on `127.0.0.1:0` (ports chosen by the OS).
    pub async fn start(dataset: Arc<Dataset>) -> io::Result<Simulators> {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut more = session26::Handles::new();
        for provider in session26::PROVIDERS {
            more.insert(
                provider,
                session26::start_provider(provider, dataset.clone(), any, None).await?,
            );
        }
        Ok(Simulators {
            shahkar: start_shahkar(dataset.clone(), any).await?,
            civil_registry: start_civil_registry(dataset.clone(), any).await?,
            tax: start_tax(dataset.clone(), any).await?,
            session26: more,
            dataset,
        })
    }

    /// The simulator that speaks `kind`'s protocol; none for `http`, which many
    /// providers speak (see [`Simulators::provider`]).
    pub fn handle(&self, kind: AdapterKind) -> Option<&SimHandle> {
        match kind {
            AdapterKind::Shahkar => Some(&self.shahkar),
            AdapterKind::CivilRegistry => Some(&self.civil_registry),
            AdapterKind::Tax => Some(&self.tax),
            AdapterKind::Http => None,
        }
    }

    /// The simulator of provider agency `id` (`cra`, `nocr`, `inta`, or a session-26 one).
    pub fn provider(&self, id: &str) -> Option<&SimHandle> {
        match id {
            "cra" => Some(&self.shahkar),
            "nocr" => Some(&self.civil_registry),
            "inta" => Some(&self.tax),
            other => self.session26.get(other),
        }
    }

    /// Stop all of them.
    pub async fn shutdown(&self) {
        self.shahkar.shutdown().await;
        self.civil_registry.shutdown().await;
        self.tax.shutdown().await;
        for h in self.session26.values() {
            h.shutdown().await;
        }
    }
}

/// TLS for a simulator: its server certificate, and the CA that client certificates must
/// chain to when it requires mutual TLS.
#[derive(Clone)]
pub struct ServerTls {
    /// The server's certificate chain (PEM), leaf first; must name the host clients dial.
    pub cert_pem: String,
    /// The server's private key (PEM).
    pub key_pem: String,
    /// When set, a client must present a certificate issued by this CA (PEM).
    pub client_ca_pem: Option<String>,
}

impl ServerTls {
    fn acceptor(&self) -> io::Result<tokio_rustls::TlsAcceptor> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("simulator TLS {what}: {e}"),
            )
        };
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate", &e))?;
        let key =
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| bad("key", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("versions", &e))?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots
                        .add(cert.map_err(|e| bad("client CA", &e))?)
                        .map_err(|e| bad("client CA", &e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| bad("client verifier", &e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| bad("certificate and key", &e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// A running simulator. Dropping it stops the server.
pub struct SimHandle {
    addr: SocketAddr,
    tls: bool,
    knobs: Arc<Knobs>,
    task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Knobs {
    delay_nanos: AtomicU64,
    requests: AtomicU64,
}

impl SimHandle {
    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` when served over TLS), the adapter's `base_url`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Make every later response wait `delay` first (zero = answer at once).
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.knobs.delay_nanos.store(nanos, Ordering::Relaxed);
    }

    /// How many requests reached a simulator handler so far (not counted by [`serve_router`]).
    pub fn requests(&self) -> u64 {
        self.knobs.requests.load(Ordering::Relaxed)
    }

    /// Stop listening and close every open connection; later connections are refused.
    pub async fn shutdown(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            // The task owns the listener and the connections; once it is gone, so are they.
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

#[derive(Clone)]
struct Sim {
    ds: Arc<Dataset>,
    knobs: Arc<Knobs>,
}

impl Sim {
    /// Count the request, apply the configured delay, and return its tracking code.
    async fn enter(&self, headers: &HeaderMap) -> Option<String> {
        self.knobs.requests.fetch_add(1, Ordering::Relaxed);
        let delay = self.knobs.delay_nanos.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_nanos(delay)).await;
        }
        headers
            .get(TRACKING_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }
}

/// Start the Shahkar simulator on `addr`.
pub async fn start_shahkar(ds: Arc<Dataset>, addr: SocketAddr) -> io::Result<SimHandle> {
    start(addr, ds, None, |router| {
        router.route("/api/shahkar/v1/match", post(shahkar_match))
    })
    .await
}

/// Start the NOCR civil-registry simulator on `addr`.
pub async fn start_civil_registry(ds: Arc<Dataset>, addr: SocketAddr) -> io::Result<SimHandle> {
    start(addr, ds, None, civil_registry_routes).await
}

/// Start the NOCR civil-registry simulator on `addr`, over TLS.
pub async fn start_civil_registry_tls(
    ds: Arc<Dataset>,
    addr: SocketAddr,
    tls: ServerTls,
) -> io::Result<SimHandle> {
    start(addr, ds, Some(tls), civil_registry_routes).await
}

fn civil_registry_routes(router: Router<Sim>) -> Router<Sim> {
    router
        .route("/nocr/v2/persons/{nin}", get(nocr_person))
        .route("/nocr/v2/persons/{nin}/life-status", get(nocr_life_status))
}

/// Start the INTA tax simulator on `addr`.
pub async fn start_tax(ds: Arc<Dataset>, addr: SocketAddr) -> io::Result<SimHandle> {
    start(addr, ds, None, |router| {
        router.route("/inta/taxpayers", get(inta_taxpayer))
    })
    .await
}

async fn start(
    addr: SocketAddr,
    ds: Arc<Dataset>,
    tls: Option<ServerTls>,
    routes: impl FnOnce(Router<Sim>) -> Router<Sim>,
) -> io::Result<SimHandle> {
    let knobs = Arc::new(Knobs::default());
    let router = routes(Router::new()).with_state(Sim {
        ds,
        knobs: knobs.clone(),
    });
    serve_with(router, addr, tls, knobs).await
}

/// Serve `router` on `addr` (HTTP/1.1 and HTTP/2; over TLS when `tls` is given) with the
/// simulators' machinery: the handle reports the address and closes every connection on
/// shutdown or drop.
pub async fn serve_router(
    router: Router,
    addr: SocketAddr,
    tls: Option<ServerTls>,
) -> io::Result<SimHandle> {
    serve_with(router, addr, tls, Arc::new(Knobs::default())).await
}

async fn serve_with(
    router: Router,
    addr: SocketAddr,
    tls: Option<ServerTls>,
    knobs: Arc<Knobs>,
) -> io::Result<SimHandle> {
    let acceptor = tls.as_ref().map(ServerTls::acceptor).transpose()?;
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(serve(listener, router, acceptor));
    Ok(SimHandle {
        addr,
        tls: tls.is_some(),
        knobs,
        task: Mutex::new(Some(task)),
    })
}

/// How long a simulator waits for a TLS client to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept loop that owns every connection task, so aborting it closes them all.
async fn serve(listener: TcpListener, router: Router, acceptor: Option<tokio_rustls::TlsAcceptor>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let service = TowerToHyperService::new(router.clone());
                    let acceptor = acceptor.clone();
                    connections.spawn(async move {
                        let builder = auto::Builder::new(TokioExecutor::new());
                        match acceptor {
                            None => {
                                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                            }
                            Some(acceptor) => {
                                let handshake =
                                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                                match handshake.await {
                                    Ok(Ok(tls)) => {
                                        let _ = builder
                                            .serve_connection(TokioIo::new(tls), service)
                                            .await;
                                    }
                                    Ok(Err(error)) => tracing::debug!(
                                        message = "Simulator refused a TLS handshake.",
                                        %error
                                    ),
                                    Err(_) => {}
                                }
                            }
                        }
                    });
                }
                Err(error) => {
                    // E.g. too many open files: back off instead of spinning.
                    tracing::warn!(message = "Simulator failed to accept a connection.", %error);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn shahkar_error(status: StatusCode, response: i32, comment: &str) -> Response {
    let body = MatchResponse {
        response,
        matched: None,
        request_id: None,
        comment: Some(comment.to_owned()),
    };
    (status, Json(body)).into_response()
}

async fn shahkar_match(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(tracking) = sim.enter(&headers).await else {
        return shahkar_error(
            StatusCode::BAD_REQUEST,
            600,
            "X-Tracking-Code header is required",
        );
    };
    let Ok(req) = serde_json::from_slice::<MatchRequest>(&body) else {
        return shahkar_error(
            StatusCode::BAD_REQUEST,
            600,
            "body must be {nationalCode, mobile}",
        );
    };
    if !data::is_valid_national_code(&req.national_code) {
        return shahkar_error(StatusCode::BAD_REQUEST, 601, "invalid national code");
    }
    let m = req.mobile.as_bytes();
    if m.len() != 11 || !req.mobile.starts_with("09") || !m.iter().all(u8::is_ascii_digit) {
        return shahkar_error(StatusCode::BAD_REQUEST, 602, "invalid mobile number");
    }
    let matched = sim
        .ds
        .person(&req.national_code)
        .is_some_and(|p| p.mobile == req.mobile);
    Json(MatchResponse {
        response: 0,
        matched: Some(matched),
        request_id: Some(tracking),
        comment: Some("ok".into()),
    })
    .into_response()
}

fn nocr_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorDto {
        error_code: code.to_owned(),
        error_message: message.to_owned(),
    };
    (status, Json(body)).into_response()
}

/// Common checks of both NOCR endpoints: tracking code, valid and known national code.
async fn nocr_lookup<'a>(
    sim: &'a Sim,
    headers: &HeaderMap,
    nin: &str,
) -> Result<&'a Person, Response> {
    if sim.enter(headers).await.is_none() {
        return Err(nocr_error(
            StatusCode::BAD_REQUEST,
            "MISSING_TRACKING_CODE",
            "X-Tracking-Code header is required",
        ));
    }
    if !data::is_valid_national_code(nin) {
        return Err(nocr_error(
            StatusCode::BAD_REQUEST,
            civil_registry::INVALID_NIN,
            "national code is not valid",
        ));
    }
    sim.ds.person(nin).ok_or_else(|| {
        nocr_error(
            StatusCode::NOT_FOUND,
            civil_registry::PERSON_NOT_FOUND,
            "no person with this national code",
        )
    })
}

async fn nocr_person(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(nin): Path<String>,
) -> Response {
    match nocr_lookup(&sim, &headers, &nin).await {
        Err(response) => response,
        Ok(p) => Json(PersonDto {
            nin: p.national_code.clone(),
            first_name: p.first_name.clone(),
            last_name: p.last_name.clone(),
            father_name: p.father_name.clone(),
            birth_date: civil_registry::slashed_jalali_to_compact(&p.birth_date),
            gender_code: match p.gender {
                Gender::Male => 1,
                Gender::Female => 2,
            },
            birth_place: p.birth_place.clone(),
            shenasnameh_no: p.shenasnameh_no.clone(),
        })
        .into_response(),
    }
}

async fn nocr_life_status(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(nin): Path<String>,
) -> Response {
    match nocr_lookup(&sim, &headers, &nin).await {
        Err(response) => response,
        Ok(p) => {
            let death_date = sim.ds.death_date(&p.national_code).flatten();
            Json(LifeStatusDto {
                nin: p.national_code.clone(),
                is_alive: death_date.is_none(),
                death_date: death_date.map(|d| civil_registry::slashed_jalali_to_compact(&d)),
            })
            .into_response()
        }
    }
}

fn inta_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = Envelope {
        status: code.to_owned(),
        data: None,
        message: Some(message.to_owned()),
    };
    (status, Json(body)).into_response()
}

async fn inta_taxpayer(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let bad = |m: &str| inta_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", m);
    if sim.enter(&headers).await.is_none() {
        return bad("X-Tracking-Code header is required");
    }
    let file = match (query.get("nationalCode"), query.get("legalEntityId")) {
        (Some(nc), None) if data::is_valid_national_code(nc) => {
            sim.ds.taxpayer_by_national_code(nc)
        }
        (Some(_), None) => return bad("nationalCode is not a valid national code"),
        (None, Some(id)) if data::is_valid_legal_entity_id(id) => {
            sim.ds.taxpayer_by_legal_entity_id(id)
        }
        (None, Some(_)) => return bad("legalEntityId is not a valid legal-entity id"),
        _ => return bad("give exactly one of nationalCode and legalEntityId"),
    };
    let Some(t) = file else {
        return inta_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no taxpayer with this identifier",
        );
    };
    Json(Envelope {
        status: "OK".into(),
        data: Some(TaxpayerDto {
            taxpayer_id: t.taxpayer_id.clone(),
            name: t.name.clone(),
            state: t.status.as_str().to_ascii_uppercase(),
            registered_on: t.registered_on.replace('/', "-"),
            office: OfficeDto {
                code: t.office_code.clone(),
                name: t.office_name.clone(),
            },
        }),
        message: None,
    })
    .into_response()
}
