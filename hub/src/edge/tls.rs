//! The hub's own mutual-TLS edge (rustls): admits TCP connections without ever blocking
//! accept, bounds handshakes per source address and in total (shedding the oldest idle
//! one), requires a client certificate chained to the national root and absent from the
//! CRLs, caps connections per agency and in total, closes connections that never speak
//! HTTP/2, and cuts open connections whose certificate is revoked or whose agency is
//! removed when access changes ([`Hub::access_changes`]). The rustls configuration is
//! rebuilt and swapped on reload ([`TlsEdge::reload`]); refusals are logged at a bounded
//! rate.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt as _;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::{ReceiverStream, WatchStream};
use tonic::transport::server::Connected;

use crate::inquiry::pipeline::Hub;

/// The client connection preface every HTTP/2 connection opens with (RFC 9113 §3.4).
const H2_PREFACE_LEN: usize = 24;
/// Individual refusal lines logged per interval; the rest are counted into one summary.
const LOG_LINES_PER_INTERVAL: u32 = 10;

/// Errors while building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration rejected: {0}")]
    Config(String),
}

/// File locations of the hub's TLS material.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate revocation lists (PEM); empty only when revocation is explicitly off.
    pub crls: Vec<PathBuf>,
}

/// Bounds on connections at the edge (`tls.limits` in the configuration).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// How long a client has, from TCP accept, to send its ClientHello and complete the
    /// TLS handshake, in milliseconds. Default 3000.
    pub handshake_timeout_ms: u64,
    /// TLS handshakes in progress at once from one source address; beyond it the oldest
    /// one still silent (else the oldest) is dropped. Default 64.
    pub max_handshakes_per_address: usize,
    /// TLS handshakes in progress at once in total, shed the same way. Default 1024.
    pub max_handshakes: usize,
    /// How long a verified connection may take to send the HTTP/2 preface, in
    /// milliseconds; then it is closed. Default 5000.
    pub preface_timeout_ms: u64,
    /// Open connections (after the handshake) per agency; the next one is refused.
    /// Default 256.
    pub max_connections_per_agency: usize,
    /// Open connections in total; the next one is refused. Default 4096.
    pub max_connections: usize,
    /// Interval of the refusal summary, in seconds: at most ten individual refusal lines
    /// are logged per interval, the rest are counted into one line at its end. Default 10.
    pub refusal_log_interval_secs: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 3_000,
            max_handshakes_per_address: 64,
            max_handshakes: 1024,
            preface_timeout_ms: 5_000,
            max_connections_per_agency: 256,
            max_connections: 4096,
            refusal_log_interval_secs: 10,
        }
    }
}

impl ConnectionLimits {
    /// Reports every limit that cannot work (zero), naming its key.
    pub fn validate(&self, errors: &mut Vec<String>) {
        for (key, value) in [
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            (
                "max_handshakes_per_address",
                self.max_handshakes_per_address as u64,
            ),
            ("max_handshakes", self.max_handshakes as u64),
            ("preface_timeout_ms", self.preface_timeout_ms),
            (
                "max_connections_per_agency",
                self.max_connections_per_agency as u64,
            ),
            ("max_connections", self.max_connections as u64),
            ("refusal_log_interval_secs", self.refusal_log_interval_secs),
        ] {
            if value == 0 {
                errors.push(format!(
                    "tls.limits.{key}: 0 would refuse every connection; give at least 1 (or leave it out for the default)"
                ));
            }
        }
    }

    fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    fn preface_timeout(&self) -> Duration {
        Duration::from_millis(self.preface_timeout_ms)
    }

    fn log_interval(&self) -> Duration {
        Duration::from_secs(self.refusal_log_interval_secs.max(1))
    }
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// A certificate serial as hex octets separated by colons, without leading zero octets
/// (DER may pad a serial with one): the form of [`PeerInfo::serial`] and of the revoked
/// serials given to [`Hub::set_revoked`].
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let digits = &raw[start..];
    if digits.is_empty() {
        return "00".to_owned();
    }
    digits
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The certificate revocation lists in force.
#[derive(Debug, Clone, Default)]
pub struct Crls {
    pub lists: Vec<CertificateRevocationListDer<'static>>,
    /// Serials ([`serial_hex`]) of every certificate the lists revoke.
    pub revoked: HashSet<String>,
}

/// Reads the CRL files, refusing a file without a CRL, an unreadable CRL and an expired
/// one (its nextUpdate in the past): an expired list no longer says what is revoked.
pub fn load_crls(paths: &[PathBuf]) -> Result<Crls, TlsError> {
    let now = x509_parser::time::ASN1Time::now();
    let mut crls = Crls::default();
    for path in paths {
        let lists: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_file_iter(path)
                .map_err(|e| file_err(path, e))?
                .collect::<Result<_, _>>()
                .map_err(|e| file_err(path, e))?;
        if lists.is_empty() {
            return Err(file_err(
                path,
                "no CRL (-----BEGIN X509 CRL-----) found in the file",
            ));
        }
        for der in lists {
            let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
                .map_err(|e| file_err(path, format!("unreadable CRL: {e}")))?;
            if let Some(next) = crl.next_update() {
                if next < now {
                    return Err(file_err(
                        path,
                        format!(
                            "the CRL of {} expired at its nextUpdate {next}; fetch the current CRL from the issuing CA and reload",
                            crl.issuer()
                        ),
                    ));
                }
            }
            crls.revoked.extend(
                crl.iter_revoked_certificates()
                    .map(|r| serial_hex(r.raw_serial())),
            );
            crls.lists.push(der);
        }
    }
    Ok(crls)
}

/// Builds the rustls server configuration: TLS 1.2/1.3, ALPN h2, mandatory client
/// certificates verified against `files.ca` and the CRLs (an expired CRL refuses the
/// handshake instead of being trusted). Returns the revoked serials too.
pub fn server_config(files: &TlsFiles) -> Result<(Arc<ServerConfig>, Crls), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let ca_certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.ca)
        .map_err(|e| file_err(&files.ca, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&files.ca, e))?;
    if ca_certs.is_empty() {
        return Err(file_err(&files.ca, "no certificate found in the file"));
    }
    for c in ca_certs {
        roots.add(c).map_err(|e| file_err(&files.ca, e))?;
    }
    let crls = load_crls(&files.crls)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls.lists.iter().cloned())
        .enforce_revocation_expiration()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_err(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&files.cert, e))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_err(&files.key, e))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(cfg), crls))
}

/// The hub's TLS edge: the rustls configuration in force (swapped on reload), the
/// connection limits and the bookkeeping that enforces them.
pub struct TlsEdge {
    files: TlsFiles,
    config: ArcSwap<ServerConfig>,
    limits: ConnectionLimits,
    handshakes: Handshakes,
    connections: Arc<Connections>,
    log: RefusalLog,
}

impl TlsEdge {
    /// Loads the TLS material; fails (naming the file) on anything unusable, including an
    /// expired CRL. Returns the revoked serials for [`Hub::set_revoked`].
    pub fn load(
        files: TlsFiles,
        limits: ConnectionLimits,
    ) -> Result<(Arc<TlsEdge>, HashSet<String>), TlsError> {
        let (config, crls) = server_config(&files)?;
        let edge = TlsEdge {
            files,
            config: ArcSwap::new(config),
            handshakes: Handshakes::new(&limits),
            connections: Arc::new(Connections::new(&limits)),
            limits,
            log: RefusalLog::default(),
        };
        Ok((Arc::new(edge), crls.revoked))
    }

    /// Re-reads the CA, hub certificate and CRLs; on success new connections are verified
    /// with them and `hub` learns the revoked serials (open connections and streams then
    /// re-check their callers). On failure nothing changes. Returns the number of revoked
    /// serials now in force. Reads files: call it off the async workers.
    pub fn reload(&self, hub: &Hub) -> Result<usize, TlsError> {
        let (config, crls) = server_config(&self.files)?;
        self.config.store(config);
        let n = crls.revoked.len();
        hub.set_revoked(crls.revoked);
        Ok(n)
    }

    /// The CRL files this edge reads.
    pub fn crl_files(&self) -> &[PathBuf] {
        &self.files.crls
    }

    /// Open connections (after the handshake) now: in total and of `agency`.
    pub fn open_connections(&self, agency: &str) -> (usize, usize) {
        let c = self.connections.inner.lock().expect("connections lock");
        (c.total, c.per_key.get(agency).copied().unwrap_or(0))
    }
}

/// The verified identity of the peer of one connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// Subject common name of the verified client certificate.
    pub common_name: Option<String>,
    /// Serial number of the client certificate ([`serial_hex`]).
    pub serial: String,
}

/// Reads the subject CN and serial ([`serial_hex`]) of a DER certificate.
pub fn cert_identity(der: &[u8]) -> (Option<String>, String) {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let cn = cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok())
                .map(str::to_owned);
            (cn, serial_hex(cert.raw_serial()))
        }
        Err(_) => (None, String::new()),
    }
}

// ---------------------------------------------------------------------------------------
// Refusal log: a few lines per interval, then one summary with counts.

/// Why the edge dropped a socket or connection.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// A pending handshake dropped to make room (per-address or total bound).
    Shed,
    /// No ClientHello / handshake within the handshake timeout.
    HandshakeTimeout,
    /// The handshake failed (no certificate, unknown issuer, revoked, ...).
    HandshakeFailed,
    /// Over the per-agency or total connection cap.
    OverCap,
    /// No HTTP/2 preface within the preface timeout.
    NoPreface,
    /// Cut after a policy or CRL reload.
    AccessLost,
    /// `accept` itself failed (e.g. out of file descriptors).
    AcceptFailed,
}

#[derive(Default)]
struct RefusalCounts {
    lines: u32,
    suppressed: u64,
    shed: u64,
    handshake_timeout: u64,
    handshake_failed: u64,
    over_cap: u64,
    no_preface: u64,
    access_lost: u64,
    accept_failed: u64,
}

#[derive(Default)]
struct RefusalLog(Mutex<RefusalCounts>);

impl RefusalLog {
    /// Counts one refusal and runs `line` (which logs it) unless this interval's lines
    /// are used up.
    fn note(&self, kind: Refusal, line: impl FnOnce()) {
        let log = {
            let mut c = self.0.lock().expect("refusal log lock");
            *match kind {
                Refusal::Shed => &mut c.shed,
                Refusal::HandshakeTimeout => &mut c.handshake_timeout,
                Refusal::HandshakeFailed => &mut c.handshake_failed,
                Refusal::OverCap => &mut c.over_cap,
                Refusal::NoPreface => &mut c.no_preface,
                Refusal::AccessLost => &mut c.access_lost,
                Refusal::AcceptFailed => &mut c.accept_failed,
            } += 1;
            if c.lines < LOG_LINES_PER_INTERVAL {
                c.lines += 1;
                true
            } else {
                c.suppressed += 1;
                false
            }
        };
        if log {
            line();
        }
    }

    /// Ends the interval: one summary line when lines were suppressed in it.
    fn flush(&self, interval: Duration) {
        let c = std::mem::take(&mut *self.0.lock().expect("refusal log lock"));
        if c.suppressed > 0 {
            tracing::warn!(
                message =
                    "connections refused at the TLS edge (summary; individual lines suppressed)",
                interval_secs = interval.as_secs(),
                suppressed = c.suppressed,
                shed = c.shed,
                handshake_timeout = c.handshake_timeout,
                handshake_failed = c.handshake_failed,
                over_cap = c.over_cap,
                no_preface = c.no_preface,
                access_lost = c.access_lost,
                accept_failed = c.accept_failed,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Handshakes in progress: bounded per source address and in total, oldest silent shed.

struct PendingHandshake {
    ip: IpAddr,
    /// The client has sent something (its ClientHello).
    spoke: bool,
    /// Dropping it cancels the handshake task.
    _cancel: oneshot::Sender<()>,
}

#[derive(Default)]
struct HandshakesInner {
    next_id: u64,
    /// By age (ids only grow).
    all: BTreeMap<u64, PendingHandshake>,
    per_ip: HashMap<IpAddr, BTreeSet<u64>>,
}

impl HandshakesInner {
    /// The oldest handshake whose client has not spoken yet, else the oldest, among `ids`.
    fn victim<'a>(&self, mut ids: impl Iterator<Item = &'a u64> + Clone) -> Option<u64> {
        let silent = ids
            .clone()
            .find(|id| self.all.get(id).is_some_and(|p| !p.spoke));
        silent.or_else(|| ids.next()).copied()
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(p) = self.all.remove(&id) else {
            return false;
        };
        if let Some(set) = self.per_ip.get_mut(&p.ip) {
            set.remove(&id);
            if set.is_empty() {
                self.per_ip.remove(&p.ip);
            }
        }
        true
    }
}

struct Handshakes {
    per_address: usize,
    total: usize,
    inner: Mutex<HandshakesInner>,
}

impl Handshakes {
    fn new(limits: &ConnectionLimits) -> Self {
        Self {
            per_address: limits.max_handshakes_per_address.max(1),
            total: limits.max_handshakes.max(1),
            inner: Mutex::default(),
        }
    }

    /// Registers a new handshake from `ip`, first shedding the oldest silent one (of this
    /// address, or of all) when a bound is reached. Returns its id, the receiver that
    /// resolves when it is shed, and how many were shed for it.
    fn admit(&self, ip: IpAddr) -> (u64, oneshot::Receiver<()>, Vec<(IpAddr, &'static str)>) {
        let mut inner = self.inner.lock().expect("handshakes lock");
        let mut shed = Vec::new();
        while inner.per_ip.get(&ip).map_or(0, BTreeSet::len) >= self.per_address {
            let ids = inner.per_ip.get(&ip).expect("checked above");
            let Some(v) = inner.victim(ids.iter()) else {
                break;
            };
            inner.remove(v);
            shed.push((ip, "max_handshakes_per_address"));
        }
        while inner.all.len() >= self.total {
            let Some(v) = inner.victim(inner.all.keys()) else {
                break;
            };
            let victim_ip = inner.all[&v].ip;
            inner.remove(v);
            shed.push((victim_ip, "max_handshakes"));
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let (tx, rx) = oneshot::channel();
        inner.all.insert(
            id,
            PendingHandshake {
                ip,
                spoke: false,
                _cancel: tx,
            },
        );
        inner.per_ip.entry(ip).or_default().insert(id);
        (id, rx, shed)
    }

    fn spoke(&self, id: u64) {
        if let Some(p) = self.inner.lock().expect("handshakes lock").all.get_mut(&id) {
            p.spoke = true;
        }
    }

    fn done(&self, id: u64) {
        self.inner.lock().expect("handshakes lock").remove(id);
    }
}

// ---------------------------------------------------------------------------------------
// Open connections: capped per agency and in total.

#[derive(Default)]
struct ConnectionsInner {
    total: usize,
    /// By agency id; a certificate that maps to no agency counts under `cn:<CN>`.
    per_key: HashMap<String, usize>,
}

struct Connections {
    per_agency: usize,
    total: usize,
    inner: Mutex<ConnectionsInner>,
}

/// One open connection's place in [`Connections`]; freed when dropped.
struct ConnectionSlot {
    connections: Arc<Connections>,
    key: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self.connections.inner.lock().expect("connections lock");
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_key.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_key.remove(&self.key);
            }
        }
    }
}

impl Connections {
    fn new(limits: &ConnectionLimits) -> Self {
        Self {
            per_agency: limits.max_connections_per_agency.max(1),
            total: limits.max_connections.max(1),
            inner: Mutex::default(),
        }
    }

    /// Takes a slot for `key`, or says which cap is full.
    fn admit(self: &Arc<Self>, key: &str) -> Result<ConnectionSlot, &'static str> {
        let mut c = self.inner.lock().expect("connections lock");
        if c.total >= self.total {
            return Err("max_connections");
        }
        let n = c.per_key.entry(key.to_owned()).or_default();
        if *n >= self.per_agency {
            return Err("max_connections_per_agency");
        }
        *n += 1;
        c.total += 1;
        Ok(ConnectionSlot {
            connections: self.clone(),
            key: key.to_owned(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// One verified connection.

/// How long a connection whose access was withdrawn stays open so that its streams can end
/// with their own status (well within the one second revocation must take).
const ACCESS_CUT_GRACE: Duration = Duration::from_millis(250);

/// One accepted, verified TLS connection. Reading from it fails (and hyper closes it)
/// when the HTTP/2 preface does not arrive in time, or when, after an access change, its
/// certificate is revoked or its common name no longer maps to the agency it had.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    /// Bytes of the HTTP/2 preface still to come, and the deadline for them.
    preface: Option<(usize, Pin<Box<tokio::time::Sleep>>)>,
    /// The agency the certificate mapped to when the connection opened.
    agency: Option<String>,
    changes: WatchStream<u64>,
    hub: Arc<Hub>,
    edge: Arc<TlsEdge>,
    /// Why the connection was cut, once it was.
    cut: Option<String>,
    /// Access was withdrawn: why, and when the connection is cut. The grace lets the
    /// streams on it (which watch the same change) send their PERMISSION_DENIED /
    /// UNAUTHENTICATED before the transport goes away.
    cut_pending: Option<(String, Pin<Box<tokio::time::Sleep>>)>,
    _slot: ConnectionSlot,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl TlsConn {
    /// Whether the peer may keep this connection under the access in force now.
    fn access_lost(&self) -> Option<String> {
        if self.hub.is_revoked(&self.info.serial) {
            return Some(format!(
                "certificate serial {} is revoked by a reloaded CRL",
                self.info.serial
            ));
        }
        let agency = self.agency.as_deref()?;
        let cn = self.info.common_name.as_deref().unwrap_or("");
        let policy = self.hub.policy();
        let now = policy
            .policy
            .agency_for_common_name(cn)
            .map(|a| a.id.as_str());
        if now == Some(agency) {
            None
        } else {
            Some(format!(
                "common name {cn} no longer maps to agency {agency} in agencies.yaml"
            ))
        }
    }

    fn cut_error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            self.cut.clone().unwrap_or_default(),
        )
    }

    /// Checks the access watch and the preface deadline; `Some` once the connection is cut.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.cut.is_some() {
            return Some(self.cut_error());
        }
        let mut changed = false;
        while let Poll::Ready(Some(_)) = self.changes.poll_next_unpin(cx) {
            changed = true;
        }
        if changed && self.cut_pending.is_none() {
            if let Some(reason) = self.access_lost() {
                let (remote, cn) = (self.info.remote, self.info.common_name.clone());
                self.edge.log.note(Refusal::AccessLost, || {
                    tracing::warn!(
                        message = "connection closed: access withdrawn",
                        %remote,
                        common_name = cn.as_deref().unwrap_or(""),
                        reason = %reason,
                    )
                });
                self.cut_pending = Some((
                    format!("connection closed by the hub: {reason}"),
                    Box::pin(tokio::time::sleep(ACCESS_CUT_GRACE)),
                ));
            }
        }
        if let Some((_, at)) = &mut self.cut_pending {
            if at.as_mut().poll(cx).is_ready() {
                self.cut = self.cut_pending.take().map(|(reason, _)| reason);
                return Some(self.cut_error());
            }
        }
        if let Some((_, deadline)) = &mut self.preface {
            if deadline.as_mut().poll(cx).is_ready() {
                let remote = self.info.remote;
                let ms = self.edge.limits.preface_timeout_ms;
                self.edge.log.note(Refusal::NoPreface, || {
                    tracing::warn!(
                        message = "connection closed: no HTTP/2 preface in time",
                        %remote,
                        timeout_ms = ms,
                    )
                });
                self.cut = Some(format!(
                    "no HTTP/2 preface within {ms} ms (tls.limits.preface_timeout_ms)"
                ));
                return Some(self.cut_error());
            }
        }
        None
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let got = buf.filled().len() - before;
            if let Some((left, _)) = &mut self.preface {
                *left = left.saturating_sub(got);
                if *left == 0 {
                    self.preface = None;
                }
            }
        }
        polled
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.cut.is_some() {
            return Poll::Ready(Err(self.cut_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut.is_some() {
            return Poll::Ready(Err(self.cut_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.cut.is_some() {
            return Poll::Ready(Err(self.cut_error()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// ---------------------------------------------------------------------------------------
// Accept loop.

/// Accepts TCP connections and yields verified ones. Accept never waits for a permit:
/// each socket gets its own handshake task, bounded by [`ConnectionLimits`] (per source
/// address and in total; when full the oldest handshake whose client has not spoken yet
/// is dropped), and each verified connection takes a slot of its agency. Refusals are
/// logged with their reason, at most ten lines per interval plus one summary.
pub fn incoming(
    listener: TcpListener,
    edge: Arc<TlsEdge>,
    hub: Arc<Hub>,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(128);
    tokio::spawn(async move {
        let interval = edge.limits.log_interval();
        let mut summary =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(error) => {
                        edge.log.note(Refusal::AcceptFailed, || {
                            tracing::warn!(message = "accept failed", %error)
                        });
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = summary.tick() => {
                    edge.log.flush(interval);
                    continue;
                }
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (id, cancelled, shed) = edge.handshakes.admit(remote.ip());
            for (ip, bound) in shed {
                edge.log.note(Refusal::Shed, || {
                    tracing::warn!(
                        message = "pending TLS handshake dropped to make room",
                        remote_ip = %ip,
                        bound = %format!("tls.limits.{bound}"),
                    )
                });
            }
            tokio::spawn(handshake(
                tcp,
                remote,
                id,
                cancelled,
                edge.clone(),
                hub.clone(),
                tx.clone(),
            ));
            // Let the new handshake task see its ClientHello before more sockets arrive, so
            // a client that speaks at once is not taken for a silent one.
            tokio::task::yield_now().await;
        }
    });
    ReceiverStream::new(rx)
}

/// Removes a handshake from the bookkeeping however its task ends.
struct PendingGuard<'a>(&'a Handshakes, u64);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.done(self.1);
    }
}

async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    id: u64,
    cancelled: oneshot::Receiver<()>,
    edge: Arc<TlsEdge>,
    hub: Arc<Hub>,
    tx: mpsc::Sender<Result<TlsConn, io::Error>>,
) {
    let guard = PendingGuard(&edge.handshakes, id);
    let acceptor = TlsAcceptor::from(edge.config.load_full());
    let work = async {
        // Readable means the ClientHello (or EOF) arrived: from now on this client is not
        // shed before silent ones.
        tcp.readable().await?;
        edge.handshakes.spoke(id);
        acceptor.accept(tcp).await
    };
    let timeout = edge.limits.handshake_timeout();
    let stream = tokio::select! {
        // Shed to make room: the socket is dropped (closed) with this task; counted where shed.
        _ = cancelled => return,
        r = tokio::time::timeout(timeout, work) => match r {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                edge.log.note(Refusal::HandshakeFailed, || {
                    tracing::warn!(message = "TLS handshake refused", %remote, reason = %error)
                });
                return;
            }
            Err(_) => {
                edge.log.note(Refusal::HandshakeTimeout, || {
                    tracing::warn!(
                        message = "TLS handshake timed out",
                        %remote,
                        timeout_ms = timeout.as_millis() as u64,
                    )
                });
                return;
            }
        },
    };
    drop(guard);
    let (common_name, serial) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| cert_identity(c.as_ref()))
        .unwrap_or((None, String::new()));
    let agency = hub
        .policy()
        .policy
        .agency_for_common_name(common_name.as_deref().unwrap_or(""))
        .map(|a| a.id.clone());
    let key = match (&agency, &common_name) {
        (Some(a), _) => a.clone(),
        (None, cn) => format!("cn:{}", cn.as_deref().unwrap_or("")),
    };
    let slot = match edge.connections.admit(&key) {
        Ok(slot) => slot,
        Err(bound) => {
            let limit = if bound == "max_connections" {
                edge.limits.max_connections
            } else {
                edge.limits.max_connections_per_agency
            };
            edge.log.note(Refusal::OverCap, || {
                tracing::warn!(
                    message = "connection refused: too many open connections",
                    %remote,
                    agency = %key,
                    limit,
                    bound = %format!("tls.limits.{bound}"),
                )
            });
            let mut stream = stream;
            // Best effort close_notify; the socket closes with the stream either way.
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                tokio::io::AsyncWriteExt::shutdown(&mut stream),
            )
            .await;
            return;
        }
    };
    let conn = TlsConn {
        inner: stream,
        info: PeerInfo {
            remote,
            common_name,
            serial,
        },
        preface: Some((
            H2_PREFACE_LEN,
            Box::pin(tokio::time::sleep(edge.limits.preface_timeout())),
        )),
        agency,
        changes: WatchStream::from_changes(hub.access_changes()),
        hub: hub.clone(),
        edge: edge.clone(),
        cut: None,
        cut_pending: None,
        _slot: slot,
    };
    let _ = tx.send(Ok(conn)).await;
}
