//! The hub's own mutual-TLS acceptor (rustls): client certificate required, chained to
//! the configured national root, CRLs checked; yields connections that carry the verified
//! peer identity into every gRPC request.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
pub struct TlsFiles<'a> {
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
    pub crls: &'a [std::path::PathBuf],
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Builds the rustls server configuration: TLS 1.2/1.3, ALPN h2, mandatory client
/// certificates verified against `files.ca` and the CRLs.
pub fn server_config(files: &TlsFiles<'_>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let ca_certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(files.ca)
        .map_err(|e| file_err(files.ca, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(files.ca, e))?;
    if ca_certs.is_empty() {
        return Err(file_err(files.ca, "no certificate found in the file"));
    }
    for c in ca_certs {
        roots.add(c).map_err(|e| file_err(files.ca, e))?;
    }
    let mut crls = Vec::new();
    for path in files.crls {
        let list: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_file_iter(path)
                .map_err(|e| file_err(path, e))?
                .collect::<Result<_, _>>()
                .map_err(|e| file_err(path, e))?;
        crls.extend(list);
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(files.cert)
        .map_err(|e| file_err(files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(files.cert, e))?;
    let key = PrivateKeyDer::from_pem_file(files.key).map_err(|e| file_err(files.key, e))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The verified identity of the peer of one connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// Subject common name of the verified client certificate.
    pub common_name: Option<String>,
    /// Serial number of the client certificate, hex.
    pub serial: String,
}

/// One accepted, verified TLS connection.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Reads the subject CN and serial of a DER certificate.
pub fn cert_identity(der: &[u8]) -> (Option<String>, String) {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let cn = cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok())
                .map(str::to_owned);
            (cn, cert.raw_serial_as_string())
        }
        Err(_) => (None, String::new()),
    }
}

/// Accepts TCP connections, runs the TLS handshake on its own task per connection (so a
/// slow client never holds up others) and yields verified connections. Failed handshakes
/// are logged with the reason (no certificate, unknown issuer, expired, revoked, ...).
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    max_connections: usize,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(128);
    let acceptor = TlsAcceptor::from(config);
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = tx.closed() => return,
            };
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(error) => {
                        tracing::warn!(message = "accept failed", %error);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let (common_name, serial) = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| cert_identity(c.as_ref()))
                            .unwrap_or((None, String::new()));
                        let conn = TlsConn {
                            inner: stream,
                            info: PeerInfo {
                                remote,
                                common_name,
                                serial,
                            },
                        };
                        // The permit lives as long as the connection is being handed over;
                        // the connection count is bounded by hyper's own limits afterwards.
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(
                            message = "TLS handshake refused",
                            %remote,
                            reason = %error,
                        );
                    }
                    Err(_) => {
                        tracing::warn!(message = "TLS handshake timed out", %remote);
                    }
                }
                drop(permit);
            });
        }
    });
    ReceiverStream::new(rx)
}
