//! `load`: closed-loop gRPC load generator for any unary method, without generated code.
//! C workers (spread round-robin over N HTTP/2 connections) each keep one call in flight.
//! After the warm-up it counts calls that complete inside the measurement window and prints
//! one JSON line; latencies (µs) are those of successful calls. Exits non-zero when
//! no call succeeded.

use std::{
    collections::BTreeMap,
    error::Error,
    path::PathBuf,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Buf, BufMut, Bytes};
use clap::Parser;
use hdrhistogram::Histogram;
use http::uri::PathAndQuery;
use tokio::sync::Notify;
use tonic::{
    client::Grpc,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{AsciiMetadataValue, MetadataKey, MetadataMap},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code, Request, Status,
};

#[derive(Parser)]
#[command(about = "Closed-loop gRPC load generator; prints one JSON line of results")]
struct Args {
    /// Server address, host:port.
    #[arg(long)]
    target: String,
    /// Full method path, e.g. /tabadol.v1.Shahkar/MatchMobile.
    #[arg(long)]
    method: String,
    /// Serialized protobuf request message as hex (the 5-byte gRPC frame is added here).
    #[arg(long, default_value = "")]
    body_hex: String,
    /// CA bundle (PEM) that verifies the server; required unless --plaintext.
    #[arg(long, required_unless_present = "plaintext")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (PEM) for mTLS.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Name used for SNI and to verify the server certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// h2c with prior knowledge (no TLS).
    #[arg(long, conflicts_with_all = ["ca", "cert", "key"])]
    plaintext: bool,
    /// Number of HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Total calls kept in flight, spread over the connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measurement time in seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up time in seconds; calls completing in it are not counted.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Stop after this many measured calls instead of after --duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Request metadata as key=value (repeatable).
    #[arg(long = "metadata", value_parser = parse_kv)]
    metadata: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected key=value")?;
    Ok((k.to_string(), v.to_string()))
}

/// Passes already-serialized message bytes through unchanged, in both directions.
#[derive(Clone, Copy)]
struct Raw;
impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}
impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}
impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    done: AtomicU64,
    limit: u64,
    finished: Notify,
}

struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    codes: BTreeMap<i32, u64>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

async fn call(
    grpc: &mut Grpc<Channel>,
    path: &PathAndQuery,
    body: &Bytes,
    md: &MetadataMap,
) -> Result<(), Code> {
    grpc.ready().await.map_err(|_| Code::Unavailable)?;
    let mut req = Request::new(body.clone());
    *req.metadata_mut() = md.clone();
    grpc.unary::<_, Bytes, _>(req, path.clone(), Raw)
        .await
        .map(drop)
        .map_err(|s| s.code())
}

async fn worker(
    ch: Channel,
    path: PathAndQuery,
    body: Bytes,
    md: MetadataMap,
    sh: Arc<Shared>,
) -> Tally {
    let mut grpc = Grpc::new(ch);
    let mut t = Tally {
        hist: new_hist(),
        ok: 0,
        codes: BTreeMap::new(),
    };
    while !sh.stop.load(Relaxed) {
        let start = Instant::now();
        let res = call(&mut grpc, &path, &body, &md).await;
        let us = start.elapsed().as_micros() as u64;
        if !sh.measuring.load(Relaxed) || sh.stop.load(Relaxed) {
            continue;
        }
        let n = sh.done.fetch_add(1, Relaxed) + 1;
        if n > sh.limit {
            continue;
        }
        if n == sh.limit {
            sh.stop.store(true, Relaxed);
            sh.finished.notify_one();
        }
        match res {
            Ok(()) => {
                t.ok += 1;
                t.hist.saturating_record(us.max(1));
            }
            Err(code) => *t.codes.entry(code as i32).or_default() += 1,
        }
    }
    t
}

fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.ends_with(&m) {
            s = format!("{s}: {m}");
        }
        cur = c.source();
    }
    s
}

fn read(p: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("load: {e}");
        std::process::exit(1);
    }
}

async fn run(a: Args) -> Result<(), String> {
    if a.connections == 0 || a.concurrency == 0 || a.requests == Some(0) {
        return Err("--connections, --concurrency and --requests must be at least 1".into());
    }
    if !a.method.starts_with('/') {
        return Err(format!(
            "--method must be a full path like /pkg.Service/Method, got {:?}",
            a.method
        ));
    }
    let path = PathAndQuery::try_from(a.method.as_str()).map_err(|e| format!("--method: {e}"))?;
    let body = Bytes::from(tabadol_benches::decode_hex("--body-hex", &a.body_hex)?);
    let mut md = MetadataMap::new();
    for (k, v) in &a.metadata {
        let key = MetadataKey::from_bytes(k.as_bytes())
            .map_err(|_| format!("--metadata: bad key {k:?}"))?;
        let val: AsciiMetadataValue = v
            .parse()
            .map_err(|_| format!("--metadata: bad value for {k}"))?;
        md.append(key, val);
    }

    let scheme = if a.plaintext { "http" } else { "https" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{}", a.target))
        .map_err(|e| format!("--target: {}", chain(&e)))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    if let Some(ca) = &a.ca {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(ca)?))
            .domain_name(a.server_name.clone());
        if let (Some(c), Some(k)) = (&a.cert, &a.key) {
            tls = tls.identity(Identity::from_pem(read(c)?, read(k)?));
        }
        ep = ep
            .tls_config(tls)
            .map_err(|e| format!("TLS config: {}", chain(&e)))?;
    }
    let mut channels = Vec::with_capacity(a.connections);
    for _ in 0..a.connections {
        channels.push(
            ep.connect()
                .await
                .map_err(|e| format!("connect {}: {}", a.target, chain(&e)))?,
        );
    }
    eprintln!(
        "load: {} {} ({}), {} connections, {} in flight, warmup {}s, {}",
        a.target,
        a.method,
        if a.plaintext {
            "h2c"
        } else if a.cert.is_some() {
            "mTLS"
        } else {
            "TLS"
        },
        a.connections,
        a.concurrency,
        a.warmup,
        a.requests
            .map_or(format!("duration {}s", a.duration), |n| format!(
                "{n} requests"
            )),
    );

    let sh = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        done: AtomicU64::new(0),
        limit: a.requests.unwrap_or(u64::MAX),
        finished: Notify::new(),
    });
    let workers: Vec<_> = (0..a.concurrency)
        .map(|i| {
            let ch = channels[i % channels.len()].clone();
            tokio::spawn(worker(
                ch,
                path.clone(),
                body.clone(),
                md.clone(),
                sh.clone(),
            ))
        })
        .collect();

    tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
    sh.measuring.store(true, Relaxed);
    let t0 = Instant::now();
    match a.requests {
        Some(_) => sh.finished.notified().await,
        None => tokio::time::sleep(Duration::from_secs_f64(a.duration)).await,
    }
    sh.stop.store(true, Relaxed);
    let secs = t0.elapsed().as_secs_f64();

    let mut total = Tally {
        hist: new_hist(),
        ok: 0,
        codes: BTreeMap::new(),
    };
    for w in workers {
        let t = w.await.map_err(|e| format!("worker panicked: {e}"))?;
        total.hist.add(&t.hist).map_err(|e| e.to_string())?;
        total.ok += t.ok;
        for (c, n) in t.codes {
            *total.codes.entry(c).or_default() += n;
        }
    }
    let errors: u64 = total.codes.values().sum();
    let codes: Vec<String> = total
        .codes
        .iter()
        .map(|(c, n)| format!("\"{c}\":{n}"))
        .collect();
    let q = |p| total.hist.value_at_quantile(p);
    println!(
        "{{\"rps\":{:.1},\"ok\":{},\"errors\":{},\"error_codes\":{{{}}},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{},\"duration_s\":{:.3}}}",
        (total.ok + errors) as f64 / secs,
        total.ok,
        errors,
        codes.join(","),
        q(0.5),
        q(0.9),
        q(0.99),
        total.hist.max(),
        secs
    );
    if total.ok == 0 {
        return Err("no call succeeded in the measurement window".into());
    }
    Ok(())
}
