//! `bench-events`: closed-loop `Events/Publish` load — P publishers (each on its own
//! connection, one call in flight) publish death events with fresh event ids as `nocr`
//! against a `tabadol dev` hub, and the durable acknowledgements per second counted after
//! the warm-up are printed as one JSON line. Exits non-zero when no publish succeeded.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use tabadol_policy::jalali::JalaliDate;
use tabadol_proto::v1::events_client::EventsClient;
use tabadol_proto::v1::PublishRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Parser)]
#[command(about = "Events/Publish load generator; prints one JSON line of results")]
struct Args {
    /// Hub address, host:port.
    #[arg(long)]
    target: String,
    /// The hub's `tabadol dev --dir` (its pki/ and samples.json are read).
    #[arg(long)]
    dir: PathBuf,
    /// Publishing agency (needs a `publish` grant in the policy).
    #[arg(long, default_value = "nocr")]
    agency: String,
    /// Concurrent publishers, one connection and one call in flight each.
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Warm-up seconds, not counted.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    hist: Option<Histogram<u64>>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench-events: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(a: Args) -> Result<bool, String> {
    let read =
        |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()));
    let pki = a.dir.join("pki");
    let ca = read(pki.join("ca.crt"))?;
    let cert = read(pki.join("agencies").join(format!("{}.crt", a.agency)))?;
    let key = read(pki.join("agencies").join(format!("{}.key", a.agency)))?;
    let samples: serde_json::Value = serde_json::from_str(&read(a.dir.join("samples.json"))?)
        .map_err(|e| format!("samples.json: {e}"))?;
    let subjects: Vec<String> = samples["persons_alive"]
        .as_array()
        .ok_or("samples.json: no persons_alive")?
        .iter()
        .filter_map(|p| p["national_code"].as_str().map(str::to_owned))
        .collect();
    if subjects.is_empty() {
        return Err("samples.json: persons_alive is empty".into());
    }
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost");
    let mut channels: Vec<Channel> = Vec::with_capacity(a.publishers);
    for _ in 0..a.publishers {
        let ep = Endpoint::from_shared(format!("https://{}", a.target))
            .map_err(|e| format!("--target: {e}"))?
            .tls_config(tls.clone())
            .map_err(|e| format!("TLS: {e}"))?;
        channels.push(
            ep.connect()
                .await
                .map_err(|e| format!("connect {}: {e:?}", a.target))?,
        );
    }
    let date = JalaliDate::in_tehran(jiff::Timestamp::now()).to_string();
    let run_id = std::process::id();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (w, channel) in channels.into_iter().enumerate() {
        let (measuring, stop) = (measuring.clone(), stop.clone());
        let (subjects, date) = (subjects.clone(), date.clone());
        workers.push(tokio::spawn(async move {
            let mut client = EventsClient::new(channel);
            let mut t = Tally {
                hist: Histogram::new_with_bounds(1, 60_000_000, 3).ok(),
                ..Tally::default()
            };
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                n += 1;
                let req = PublishRequest {
                    event_id: format!("BENCH-{run_id}-{w}-{n}"),
                    r#type: "death.v1".into(),
                    national_code: subjects[(n as usize + w) % subjects.len()].clone(),
                    date: date.clone(),
                };
                let start = Instant::now();
                let res = client.publish(req).await;
                if !measuring.load(Relaxed) {
                    continue;
                }
                match res {
                    Ok(_) => {
                        t.ok += 1;
                        if let Some(h) = t.hist.as_mut() {
                            let _ = h.record(start.elapsed().as_micros().max(1) as u64);
                        }
                    }
                    Err(s) => {
                        t.errors += 1;
                        t.first_error
                            .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                    }
                }
            }
            t
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.warmup)).await;
    measuring.store(true, Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.duration)).await;
    measuring.store(false, Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    let mut total = Tally {
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).ok(),
        ..Tally::default()
    };
    for w in workers {
        let t = w.await.map_err(|e| format!("publisher panicked: {e}"))?;
        total.ok += t.ok;
        total.errors += t.errors;
        if total.first_error.is_none() {
            total.first_error = t.first_error;
        }
        if let (Some(all), Some(h)) = (total.hist.as_mut(), t.hist.as_ref()) {
            let _ = all.add(h);
        }
    }
    let q = |p: f64| total.hist.as_ref().map_or(0, |h| h.value_at_quantile(p));
    if let Some(e) = &total.first_error {
        eprintln!("bench-events: first error: {e}");
    }
    println!(
        "{{\"acks_per_s\":{:.1},\"ok\":{},\"errors\":{},\"p50_us\":{},\"p99_us\":{},\"publishers\":{},\"duration_s\":{:.3}}}",
        total.ok as f64 / elapsed,
        total.ok,
        total.errors,
        q(0.5),
        q(0.99),
        a.publishers,
        elapsed
    );
    Ok(total.ok > 0)
}
