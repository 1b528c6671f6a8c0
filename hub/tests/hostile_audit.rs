//! Issue 7, defect 8 — audit integrity against a hostile world: a `tabadol serve` killed
//! by SIGKILL under load, a log whose tail is cut off or whose records are rewritten and
//! re-hashed, and a store whose files are damaged.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ctx, TestHub};
use tabadol_hub::inquiry::audit::AuditRecord;
use tabadol_hub::ops::dev::{prepare, DevOptions};
use tabadol_proto::v1::shahkar_client::ShahkarClient;
use tabadol_proto::v1::MatchMobileRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// `tabadol serve`'s configuration for a dev environment's PKI and simulators, with the
/// store in `dir`, listening on `port` (0: any), plus `extra` top-level lines.
fn serve_yaml(
    dev: &tabadol_hub::ops::config::Config,
    dir: &Path,
    port: u16,
    extra: &str,
) -> String {
    let mut yaml = format!(
        "listen: 127.0.0.1:{port}\npolicy_dir: {}\ndata_dir: {}\ntls:\n  ca: {}\n  cert: {}\n  key: {}\n  revocation: \"off\"\n{extra}providers:\n",
        common::policy_dir().display(),
        dir.display(),
        dev.tls.ca.display(),
        dev.tls.cert.display(),
        dev.tls.key.display(),
    );
    for p in &dev.providers {
        yaml.push_str(&format!(
            "  - {{ provider: {}, adapter: {}, base_url: \"{}\" }}\n",
            p.provider, p.adapter, p.base_url
        ));
    }
    yaml
}

fn tabadol() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tabadol"))
}

/// A `tabadol serve` child process, killed when dropped.
struct Served {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a config for `tabadol serve` over the dev environment in `dir` (PKI, simulators
/// started in this process) with `audit` as its audit section, and starts it.
async fn serve(dir: &Path, audit: &str) -> (Served, tabadol_adapters::simulators::Simulators) {
    let env = prepare(&DevOptions {
        dir: dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        policy: Some(common::policy_dir()),
        kafka: None,
        simulate_events: None,
        durable_audit: false,
    })
    .await
    .expect("dev environment");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = serve_yaml(&env.config, dir, port, &format!("audit: {audit}\n"));
    let cfg = dir.join("hub.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let child = tabadol()
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("tabadol serve starts");
    let served = Served {
        child,
        port,
        dir: dir.to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tabadol serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (served, env.simulators)
}

impl Served {
    fn channel(&self, agency: &str) -> Channel {
        let pki = self.dir.join("pki");
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(pki.join("ca.crt"))))
            .domain_name("localhost")
            .identity(Identity::from_pem(
                read(pki.join("agencies").join(format!("{agency}.crt"))),
                read(pki.join("agencies").join(format!("{agency}.key"))),
            ));
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.port))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_lazy()
    }
}

/// Tracking codes answered by the hub, with the instant each answer arrived.
type Answered = Arc<Mutex<Vec<(String, Instant)>>>;

/// Runs `workers` concurrent callers against the hub until `stop`, recording every
/// inquiry that got an answer (data, or a refusal the pipeline audits).
async fn load(
    served: &Served,
    nc: &str,
    mobile: &str,
    workers: usize,
    for_: Duration,
) -> (Answered, Instant) {
    let answered: Answered = Arc::default();
    let stop_at = Instant::now() + for_;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut client = ShahkarClient::new(served.channel("cbi"));
        let (nc, mobile, answered) = (nc.to_owned(), mobile.to_owned(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u32;
            // Bounded in time and in count.
            while Instant::now() < stop_at && i < 20_000 {
                let tracking = format!("TRK-KILL-{w:02}-{i:06}");
                i += 1;
                let answer = client
                    .match_mobile(MatchMobileRequest {
                        context: ctx(&tracking, "kyc"),
                        national_code: nc.clone(),
                        mobile: mobile.clone(),
                    })
                    .await;
                let audited = match &answer {
                    Ok(_) => true,
                    Err(s) => s.code() == tonic::Code::ResourceExhausted,
                };
                if audited {
                    answered.lock().unwrap().push((tracking, Instant::now()));
                }
            }
        }));
    }
    // Kill while the callers are still running: answers in flight are what a crash loses.
    tokio::time::sleep_until(stop_at.into()).await;
    (answered, stop_at)
}

/// Tracking codes of every record in the store of a stopped hub (whose chain verifies).
fn recorded(dir: &Path) -> HashSet<String> {
    let db = sled::open(dir.join("store")).expect("store opens after the kill");
    tabadol_hub::inquiry::audit::verify_db(&db, &Default::default())
        .expect("the chain verifies after the kill");
    log_tree(&db)
        .iter()
        .map(|item| {
            let (_, v) = item.unwrap();
            serde_json::from_slice::<AuditRecord>(&v)
                .unwrap()
                .tracking_code
        })
        .collect()
}

/// Starts `tabadol serve` with `audit`, loads it for 2 s, SIGKILLs it while calls are in
/// flight; returns the answered inquiries without a record, with how long before the kill
/// each was answered, and how many were answered.
async fn kill_under_load(audit: &str) -> (Vec<(String, Duration)>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let (mut served, sims) = serve(dir.path(), audit).await;
    let (nc, mobile) = {
        let ds =
            tabadol_adapters::simulators::Dataset::generate(tabadol_hub::ops::dev::DATASET_SEED);
        let s = ds.samples();
        let p = &s["persons_alive"][0];
        (
            p["national_code"].as_str().unwrap().to_owned(),
            p["mobile"].as_str().unwrap().to_owned(),
        )
    };
    let (answered, _) = load(&served, &nc, &mobile, 16, Duration::from_secs(2)).await;
    served.child.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    served.child.wait().unwrap();
    let answered = answered.lock().unwrap().clone();
    let have = recorded(dir.path());
    let missing = answered
        .iter()
        .filter(|(t, _)| !have.contains(t))
        .map(|(t, at)| (t.clone(), killed.saturating_duration_since(*at)))
        .collect();
    sims.shutdown().await;
    (missing, answered.len())
}

/// `audit.durable: true`: after SIGKILL under load (16 callers), every inquiry that was
/// answered has its audit record on disk (before the fix: 1–5 missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_audit_keeps_every_answered_inquiry_across_sigkill() {
    let (missing, answered) = kill_under_load("{ durable: true }").await;
    assert!(answered > 50, "only {answered} answers under load");
    assert!(
        missing.is_empty(),
        "{} of {answered} answered inquiries have no audit record: {missing:?}",
        missing.len()
    );
}

/// Default mode (`flush_every_ms: 200`): after SIGKILL under load, only inquiries answered
/// in the last flush window (200 ms, plus one flush: 300 ms of slack on a loaded machine)
/// can be missing a record; everything older is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_audit_loses_at_most_the_last_flush_window() {
    let (missing, answered) = kill_under_load("{ flush_every_ms: 200 }").await;
    assert!(answered > 50, "only {answered} answers under load");
    let window = Duration::from_millis(200 + 300);
    let old: Vec<_> = missing.iter().filter(|(_, ago)| *ago > window).collect();
    assert!(
        old.is_empty(),
        "{} answered more than {window:?} before the kill have no record ({} missing in all, of {answered}): {old:?}",
        old.len(),
        missing.len()
    );
}

/// A hub run in process (in a runtime of its own, dropped afterwards so that nothing
/// keeps the store open), stopped cleanly (its shutdown checkpoint signed), with `n`
/// answered inquiries in its log; returns its directory.
async fn stopped_hub_with_records(n: usize) -> tempfile::TempDir {
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = rt.block_on(run_hub_with_records(n));
        drop(rt);
        dir
    })
    .await
    .unwrap()
}

async fn run_hub_with_records(n: usize) -> tempfile::TempDir {
    let hub = TestHub::start().await;
    let (nc, mobile) = hub.alive(0);
    let mut client = ShahkarClient::new(hub.channel("cbi").await);
    for i in 0..n {
        client
            .match_mobile(MatchMobileRequest {
                context: ctx(&format!("TRK-CP-{i:04}"), "kyc"),
                national_code: nc.clone(),
                mobile: mobile.clone(),
            })
            .await
            .expect("inquiry answered");
    }
    let TestHub {
        dir, handle, sims, ..
    } = hub;
    handle.stop().await.unwrap();
    sims.shutdown().await;
    dir
}

fn verify(dir: &Path) -> (bool, String) {
    let out = tabadol()
        .args(["audit", "verify", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "audit verify panicked:\n{text}");
    (out.status.success(), text)
}

/// Opens a stopped hub's store, waiting (at most 10 s) for sled's background threads of
/// the stopped hub to let go of its lock.
fn open_stopped(dir: &Path) -> sled::Db {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sled::open(dir.join("store")) {
            Ok(db) => return db,
            Err(e) if Instant::now() > deadline => panic!("store still locked: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn log_tree(db: &sled::Db) -> sled::Tree {
    db.open_tree("audit.log").unwrap()
}

/// A clean stop signs a checkpoint over the whole log, and `audit verify` says what it
/// covers; cutting the last 3 records off the tail (behind that checkpoint) is then
/// reported BROKEN naming the first missing sequence (before: "intact").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_tail_behind_a_checkpoint_is_broken() {
    let dir = stopped_hub_with_records(8).await;
    let (ok, text) = verify(dir.path());
    assert!(ok, "{text}");
    assert!(
        text.contains("the last checkpoint covers records 1..=8"),
        "{text}"
    );
    {
        let db = open_stopped(dir.path());
        let log = log_tree(&db);
        for seq in 6u64..=8 {
            log.remove(seq.to_be_bytes()).unwrap();
        }
        db.flush().unwrap();
    }
    let (ok, text) = verify(dir.path());
    assert!(!ok, "truncation not detected:\n{text}");
    assert!(text.contains("BROKEN at record 6"), "{text}");
    assert!(
        text.contains("records 6..=8 were cut off the tail"),
        "{text}"
    );
}

/// Rewriting record 3 and re-hashing every record after it (a chain that checks on its
/// own) is reported BROKEN at the checkpoint that covers it (before: "intact").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_and_rehashed_record_is_broken() {
    let dir = stopped_hub_with_records(6).await;
    {
        let db = open_stopped(dir.path());
        let log = log_tree(&db);
        let mut prev = String::new();
        for item in log.iter() {
            let (k, v) = item.unwrap();
            let mut rec: AuditRecord = serde_json::from_slice(&v).unwrap();
            if rec.seq == 3 {
                rec.agency = "moe".into();
            }
            if rec.seq >= 3 {
                rec.prev_hash = prev.clone();
                rec.hash = rec.chain_hash();
                log.insert(k, serde_json::to_vec(&rec).unwrap()).unwrap();
            }
            prev = rec.hash;
        }
        db.flush().unwrap();
    }
    let (ok, text) = verify(dir.path());
    assert!(!ok, "rewrite not detected:\n{text}");
    assert!(text.contains("BROKEN at record 6"), "{text}");
    assert!(text.contains("rewritten and the chain re-hashed"), "{text}");
}

/// Runs `tabadol serve` on the stopped hub's directory and returns (success, stderr);
/// a hub that starts anyway is killed.
async fn serve_on(dir: &Path) -> (bool, String) {
    let env = prepare(&DevOptions {
        dir: dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        policy: Some(common::policy_dir()),
        kafka: None,
        simulate_events: None,
        durable_audit: false,
    })
    .await
    .unwrap();
    let yaml = serve_yaml(&env.config, dir, 0, "");
    std::fs::write(dir.join("hub.yaml"), yaml).unwrap();
    let mut child = tabadol()
        .args(["serve", "--config"])
        .arg(dir.join("hub.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    use std::io::Read as _;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    env.simulators.shutdown().await;
    match status {
        Some(s) => {
            assert!(s.code().is_some(), "killed by a signal: {s:?}\n{stderr}");
            assert!(
                !stderr.contains("panicked"),
                "tabadol serve panicked:\n{stderr}"
            );
            (s.success(), stderr)
        }
        None => (true, format!("still serving after 30 s\n{stderr}")),
    }
}

/// A hub refuses to start on a log whose chain is broken (one record's text altered):
/// it exits non-zero naming the record and `tabadol audit verify` (before: it served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_broken_chain() {
    let dir = stopped_hub_with_records(4).await;
    {
        let db = open_stopped(dir.path());
        let log = log_tree(&db);
        let v = log.get(2u64.to_be_bytes()).unwrap().unwrap();
        let mut rec: AuditRecord = serde_json::from_slice(&v).unwrap();
        rec.outcome = "denied".into();
        log.insert(2u64.to_be_bytes(), serde_json::to_vec(&rec).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let (ok, stderr) = serve_on(dir.path()).await;
    assert!(!ok, "the hub started on a broken log:\n{stderr}");
    assert!(stderr.contains("BROKEN at record 2"), "{stderr}");
    assert!(stderr.contains("tabadol audit verify"), "{stderr}");
    let (ok, text) = verify(dir.path());
    assert!(!ok && text.contains("BROKEN at record 2"), "{text}");
}

/// Garbles the files of a stopped hub's store (every data byte after the first 512
/// flipped): `tabadol serve` exits non-zero saying the store is damaged and what to do,
/// and `tabadol audit verify` reports it BROKEN — neither panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_store_is_reported_not_panicked() {
    let dir = stopped_hub_with_records(4).await;
    let store = dir.path().join("store");
    let mut damaged = 0;
    for entry in walk(&store) {
        let mut bytes = std::fs::read(&entry).unwrap();
        if entry.file_name().unwrap() == "db" && bytes.len() > 512 {
            for b in &mut bytes[512..] {
                *b = !*b;
            }
            std::fs::write(&entry, bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(
        damaged > 0,
        "no sled data file found in {}",
        store.display()
    );
    let (ok, stderr) = serve_on(dir.path()).await;
    assert!(!ok, "the hub started on a damaged store:\n{stderr}");
    assert!(stderr.contains("restore"), "{stderr}");
    let (ok, text) = verify(dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("BROKEN"), "{text}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
