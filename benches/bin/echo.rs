//! `echo-server`: answers every unary gRPC call, whatever its path, with one fixed
//! response message and `grpc-status: 0`. h2c (prior knowledge) by default; mTLS when
//! --tls-cert, --tls-key and --client-ca are all given.

use std::{
    convert::Infallible,
    future::ready,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[derive(Parser)]
#[command(about = "gRPC server that answers any unary method with a fixed message")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Serialized protobuf reply message as hex (without the 5-byte gRPC frame header).
    #[arg(long, default_value = "")]
    reply_hex: String,
    /// Server certificate chain (PEM); TLS is used only when all three TLS options are set.
    #[arg(long, requires_all = ["tls_key", "client_ca"])]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires_all = ["tls_cert", "client_ca"])]
    tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates must chain to.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    client_ca: Option<PathBuf>,
}

type Body = http_body_util::combinators::WithTrailers<
    Full<Bytes>,
    std::future::Ready<Option<Result<HeaderMap, Infallible>>>,
>;

fn at(p: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", p.display())
}

fn tls_acceptor(cert: &Path, key: &Path, ca: &Path) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| at(cert, e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| at(key, e))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| at(ca, e))? {
        roots
            .add(c.map_err(|e| at(ca, e))?)
            .map_err(|e| at(ca, e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("client CA: {e}"))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("server cert/key: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

async fn handle(req: Request<Incoming>, frame: Bytes) -> Result<Response<Body>, hyper::Error> {
    // Read and discard the whole request body before answering.
    let mut body = req.into_body();
    while let Some(f) = body.frame().await {
        f?;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = Full::new(frame).with_trailers(ready(Some(Ok(trailers))));
    Ok(Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .expect("static response"))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("echo-server: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let msg = tabadol_benches::decode_hex("--reply-hex", &args.reply_hex)?;
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.put_u8(0);
    frame.put_u32(msg.len() as u32);
    frame.put_slice(&msg);
    let frame = frame.freeze();

    let tls = match (&args.tls_cert, &args.tls_key, &args.client_ca) {
        (Some(c), Some(k), Some(ca)) => Some(tls_acceptor(c, k, ca)?),
        _ => None,
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    eprintln!(
        "echo-server listening on {} ({})",
        listener.local_addr().map_err(|e| e.to_string())?,
        if tls.is_some() {
            "mTLS, ALPN h2"
        } else {
            "h2c prior knowledge"
        }
    );
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.max_concurrent_streams(1024);

    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (h2, tls, frame) = (h2.clone(), tls.clone(), frame.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, frame.clone()));
            let res = match tls {
                Some(acc) => match acc.accept(tcp).await {
                    Ok(s) => h2.serve_connection(TokioIo::new(s), svc).await,
                    Err(e) => return eprintln!("{peer}: TLS handshake failed: {e}"),
                },
                None => h2.serve_connection(TokioIo::new(tcp), svc).await,
            };
            if let Err(e) = res {
                eprintln!("{peer}: connection error: {e}");
            }
        });
    }
}
