//! `load`: closed-loop gRPC load generator for any unary method, without generated code.
//! C workers (spread round-robin over N HTTP/2 connections) each keep one call in flight.
//! After the warm-up it counts calls that complete inside the measurement window and prints
//! one JSON line; latencies (µs) are those of successful calls. Exits non-zero when
//! no call succeeded.
//!
//! `--rate R` paces the workers to R calls/s in total (each call starts at its scheduled
//! time; latency counts from that time, so a late server is not hidden by a waiting
//! client). `--honour-retry-info` makes a worker wait the `RetryInfo` delay of a shed call
//! (UNAVAILABLE / RESOURCE_EXHAUSTED), as a well-behaved client does. `--identities DIR
//! --agencies N` opens one connection per agency certificate `DIR/<prefix><i>.crt` and
//! spreads the calls over all of them (the many-agencies memory run).

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
#[command(
    about = "Closed-loop gRPC load generator; prints one JSON line of results",
    args_override_self = true
)]
struct Args {
    /// Server address, host:port.
    #[arg(long, default_value = "", required_unless_present = "http_post")]
    target: String,
    /// Full method path, e.g. /tabadol.v1.Shahkar/MatchMobile.
    #[arg(long, default_value = "", required_unless_present = "http_post")]
    method: String,
    /// Instead of gRPC: POST --http-json to this plain-HTTP URL (a provider simulator's
    /// own latency, the baseline of the hub's added latency).
    #[arg(long, requires = "http_json", conflicts_with_all = ["target", "method", "ca"])]
    http_post: Option<String>,
    /// JSON body for --http-post.
    #[arg(long, requires = "http_post")]
    http_json: Option<String>,
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
    /// Total calls per second, paced (default: closed loop, as fast as answered).
    #[arg(long)]
    rate: Option<f64>,
    /// Wait the RetryInfo delay (at most 2 s) after a shed call before the next one.
    #[arg(long)]
    honour_retry_info: bool,
    /// Directory of agency certificates `<prefix><i>.crt`/`.key` (with --agencies): one
    /// connection per agency instead of --connections with --cert/--key.
    #[arg(long, requires = "agencies")]
    identities: Option<PathBuf>,
    /// How many agencies of --identities to connect.
    #[arg(long, requires = "identities")]
    agencies: Option<usize>,
    /// File name prefix of the agency certificates in --identities.
    #[arg(long, default_value = "bench-")]
    agency_prefix: String,
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

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: new_hist(),
            ok: 0,
            codes: BTreeMap::new(),
        }
    }

    /// Counts one finished call if it ended inside the measurement window (and within
    /// --requests); the last one allowed stops the run.
    fn count(&mut self, sh: &Shared, us: u64, res: Result<(), i32>) {
        if !sh.measuring.load(Relaxed) || sh.stop.load(Relaxed) {
            return;
        }
        let n = sh.done.fetch_add(1, Relaxed) + 1;
        if n > sh.limit {
            return;
        }
        if n == sh.limit {
            sh.stop.store(true, Relaxed);
            sh.finished.notify_one();
        }
        match res {
            Ok(()) => {
                self.ok += 1;
                self.hist.saturating_record(us.max(1));
            }
            Err(code) => *self.codes.entry(code).or_default() += 1,
        }
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

async fn call(
    grpc: &mut Grpc<Channel>,
    path: &PathAndQuery,
    body: &Bytes,
    md: &MetadataMap,
) -> Result<(), Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut req = Request::new(body.clone());
    *req.metadata_mut() = md.clone();
    grpc.unary::<_, Bytes, _>(req, path.clone(), Raw)
        .await
        .map(drop)
}

/// The RetryInfo delay of a shed call, if it carries one (capped at 2 s).
fn retry_delay(s: &Status) -> Option<Duration> {
    use tonic_types::StatusExt as _;
    if !matches!(s.code(), Code::Unavailable | Code::ResourceExhausted) {
        return None;
    }
    s.get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .map(|d| d.min(Duration::from_secs(2)))
}

/// How one worker paces and behaves.
#[derive(Clone)]
struct Pace {
    /// Time between this worker's calls (None: closed loop).
    period: Option<Duration>,
    honour_retry_info: bool,
}

impl Pace {
    /// Waits for the next call's scheduled time (closed loop: now) and returns it.
    async fn wait(&self, due: &mut Instant) -> Instant {
        match self.period {
            Some(p) => {
                tokio::time::sleep_until((*due).into()).await;
                let s = *due;
                *due += p;
                s
            }
            None => Instant::now(),
        }
    }
}

async fn worker(
    chans: Vec<Channel>,
    path: PathAndQuery,
    body: Bytes,
    md: MetadataMap,
    sh: Arc<Shared>,
    pace: Pace,
) -> Tally {
    let mut grpcs: Vec<_> = chans.into_iter().map(Grpc::new).collect();
    let mut next_chan = 0;
    let mut t = Tally::new();
    let mut due = Instant::now();
    while !sh.stop.load(Relaxed) {
        let start = pace.wait(&mut due).await;
        let n = grpcs.len();
        let res = call(&mut grpcs[next_chan], &path, &body, &md).await;
        next_chan = (next_chan + 1) % n;
        let us = start.elapsed().as_micros() as u64;
        let backoff = match &res {
            Err(s) if pace.honour_retry_info => retry_delay(s),
            _ => None,
        };
        let res = res.map_err(|s| s.code());
        if let Some(d) = backoff {
            tokio::time::sleep(d).await;
            if pace.period.is_some() {
                due = due.max(Instant::now());
            }
        }
        t.count(&sh, us, res.map_err(|c| c as i32));
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

/// The --http-post mode: the same pacing and counting over a pooled HTTP/1.1 client
/// (reqwest, as the hub's own provider client).
async fn http_worker(
    client: reqwest::Client,
    url: String,
    body: Bytes,
    sh: Arc<Shared>,
    pace: Pace,
) -> Tally {
    let mut t = Tally::new();
    let mut due = Instant::now();
    while !sh.stop.load(Relaxed) {
        let start = pace.wait(&mut due).await;
        let res = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let res = match res {
            Ok(r) if r.status().is_success() => r.bytes().await.map(drop).map_err(|_| 14),
            Ok(r) => Err(i32::from(r.status().as_u16())),
            Err(_) => Err(14),
        };
        let us = start.elapsed().as_micros() as u64;
        t.count(&sh, us, res);
    }
    t
}

async fn run(a: Args) -> Result<(), String> {
    let pace = Pace {
        period: match a.rate {
            Some(r) if r > 0.0 => Some(Duration::from_secs_f64(a.concurrency.max(1) as f64 / r)),
            Some(_) => return Err("--rate must be above 0".into()),
            None => None,
        },
        honour_retry_info: a.honour_retry_info,
    };
    if let (Some(url), Some(json)) = (&a.http_post, &a.http_json) {
        if a.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(a.concurrency)
            .build()
            .map_err(|e| format!("HTTP client: {}", chain(&e)))?;
        eprintln!(
            "load: POST {url}, {} in flight, warmup {}s, duration {}s",
            a.concurrency, a.warmup, a.duration
        );
        let sh = Arc::new(Shared {
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            done: AtomicU64::new(0),
            limit: a.requests.unwrap_or(u64::MAX),
            finished: Notify::new(),
        });
        let body = Bytes::from(json.clone());
        let workers: Vec<_> = (0..a.concurrency)
            .map(|_| {
                tokio::spawn(http_worker(
                    client.clone(),
                    url.clone(),
                    body.clone(),
                    sh.clone(),
                    pace.clone(),
                ))
            })
            .collect();
        return measure(&a, sh, workers).await;
    }
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
    if let (Some(dir), Some(n), Some(ca)) = (&a.identities, a.agencies, &a.ca) {
        // One connection per agency; a few handshakes at a time (the hub bounds them
        // per source address).
        let ca = Certificate::from_pem(read(ca)?);
        let mut pending = Vec::new();
        for i in 0..n {
            let name = format!("{}{i}", a.agency_prefix);
            let tls = ClientTlsConfig::new()
                .ca_certificate(ca.clone())
                .domain_name(a.server_name.clone())
                .identity(Identity::from_pem(
                    read(&dir.join(format!("{name}.crt")))?,
                    read(&dir.join(format!("{name}.key")))?,
                ));
            let ep = ep
                .clone()
                .tls_config(tls)
                .map_err(|e| format!("TLS config: {}", chain(&e)))?;
            pending.push(tokio::spawn(async move { (name, ep.connect().await) }));
            if pending.len() == 16 || i + 1 == n {
                for p in pending.drain(..) {
                    let (name, r) = p.await.map_err(|e| e.to_string())?;
                    channels.push(
                        r.map_err(|e| format!("connect {} as {name}: {}", a.target, chain(&e)))?,
                    );
                }
            }
        }
    } else {
        for _ in 0..a.connections {
            channels.push(
                ep.connect()
                    .await
                    .map_err(|e| format!("connect {}: {}", a.target, chain(&e)))?,
            );
        }
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
        channels.len(),
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
    // Worker i uses connections i, i+C, i+2C, ... in turn, so every connection carries calls
    // even when there are more connections than workers.
    let workers: Vec<_> = (0..a.concurrency)
        .map(|i| {
            let mut mine: Vec<Channel> = channels
                .iter()
                .skip(i % channels.len())
                .step_by(a.concurrency)
                .cloned()
                .collect();
            if mine.is_empty() {
                mine.push(channels[i % channels.len()].clone());
            }
            tokio::spawn(worker(
                mine,
                path.clone(),
                body.clone(),
                md.clone(),
                sh.clone(),
                pace.clone(),
            ))
        })
        .collect();
    measure(&a, sh, workers).await
}

/// Warm-up, the measurement window, then the JSON line of the workers' tallies.
async fn measure(
    a: &Args,
    sh: Arc<Shared>,
    workers: Vec<tokio::task::JoinHandle<Tally>>,
) -> Result<(), String> {
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
