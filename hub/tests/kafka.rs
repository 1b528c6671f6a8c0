//! Kafka relay tests against a real Kafka-protocol broker (tansu) started on loopback by
//! each test: fan-out to every subscriber's own topic with its own token, a broker outage
//! in mid-stream, and a hub killed with SIGKILL after acknowledging.
//!
//! The broker binary comes from `TABADOL_TANSU`, which `scripts/test.sh` sets after
//! installing it.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestHub;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tabadol_proto::v1::events_client::EventsClient;
use tabadol_proto::v1::{Event, PublishRequest, SubscribeRequest, TokenizeRequest};
use tonic::transport::Channel;

// ---------------------------------------------------------------------------------------
// A real broker on loopback.

struct Broker {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tansu() -> PathBuf {
    let p = std::env::var_os("TABADOL_TANSU").map(PathBuf::from).expect(
        "TABADOL_TANSU is not set: run the suite with `bash scripts/test.sh`, which installs \
         the tansu broker and sets it",
    );
    assert!(p.is_file(), "TABADOL_TANSU={} does not exist", p.display());
    p
}

async fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{what} did not open port {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Broker {
    /// A broker that is not running yet, on a reserved port.
    fn reserve() -> Broker {
        let port = free_port();
        Broker {
            port,
            child: None,
            log: std::env::temp_dir().join(format!("tabadol-test-tansu-{port}.log")),
        }
    }

    async fn start() -> Broker {
        let mut b = Broker::reserve();
        b.run().await;
        b
    }

    async fn run(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        wait_port(self.port, "tansu").await;
    }

    /// SIGKILL: the broker dies without a goodbye (its in-memory data with it).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// Reading what the relay produced.

#[derive(Debug, Clone)]
struct Received {
    topic: String,
    key: String,
    headers: HashMap<String, String>,
    payload: Vec<u8>,
    event: Event,
}

/// A consumer reading `topics` from the beginning of every partition (no group join).
fn reader(brokers: &str, topics: &[String]) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "tabadol.test.reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("log_level", "3")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("broker metadata");
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        let topic = md
            .topics()
            .iter()
            .find(|m| m.name() == t)
            .unwrap_or_else(|| panic!("topic {t} does not exist on the broker"));
        assert!(
            !topic.partitions().is_empty(),
            "topic {t} has no partitions"
        );
        for p in topic.partitions() {
            tpl.add_partition_offset(t, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    c.assign(&tpl).unwrap();
    c
}

/// Reads until `done` says so (or fails after `within`).
async fn read_until(
    c: &StreamConsumer,
    within: Duration,
    mut done: impl FnMut(&[Received]) -> bool,
) -> Vec<Received> {
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    while !done(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out after {within:?} with {} records",
            out.len()
        );
        let Ok(msg) = tokio::time::timeout(left.min(Duration::from_secs(1)), c.recv()).await else {
            continue;
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                eprintln!("consumer: {e}");
                continue;
            }
        };
        let mut headers = HashMap::new();
        if let Some(h) = msg.headers() {
            for hd in h.iter() {
                headers.insert(
                    hd.key.to_owned(),
                    String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        let payload = msg.payload().unwrap_or_default().to_vec();
        out.push(Received {
            topic: msg.topic().to_owned(),
            key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
            headers,
            event: Event::decode(payload.as_slice()).expect("payload is a tabadol.v1.Event"),
            payload,
        });
    }
    out
}

fn distinct_ids(rs: &[Received]) -> HashSet<String> {
    rs.iter().map(|r| r.headers["ce_id"].clone()).collect()
}

// ---------------------------------------------------------------------------------------

async fn events(hub: &TestHub, agency: &str) -> EventsClient<Channel> {
    EventsClient::new(hub.channel(agency).await)
}

async fn publish(c: &mut EventsClient<Channel>, id: &str, ty: &str, nc: &str) -> (u64, String) {
    let r = c
        .publish(PublishRequest {
            event_id: id.into(),
            r#type: ty.into(),
            national_code: nc.into(),
            date: "1405/08/30".into(),
        })
        .await
        .unwrap_or_else(|s| panic!("publish {id}: {s}"))
        .into_inner();
    (r.sequence, r.hub_event_id)
}

async fn tokens(hub: &TestHub, agency: &str, ncs: &[String]) -> Vec<String> {
    events(hub, agency)
        .await
        .tokenize(TokenizeRequest {
            national_codes: ncs.to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
}

async fn wait_relayed(hub: &TestHub, seq: u64, within: Duration) {
    let relay = hub.handle.relay.as_ref().expect("relay configured");
    let deadline = Instant::now() + within;
    while relay.stats().cursor < seq {
        assert!(
            Instant::now() < deadline,
            "relay did not deliver up to sequence {seq} in {within:?}: {:?}",
            relay.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn persons(hub: &TestHub, n: usize) -> Vec<String> {
    (0..n).map(|i| hub.alive(i).0).collect()
}

/// Every subscriber gets every event on its own topic, keyed by its own token, with
/// CloudEvents headers; the national code is nowhere in the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_fans_out_tokenized_events_to_each_subscriber_topic() {
    let broker = Broker::start().await;
    let hub = TestHub::start_with_kafka(Some((&broker.addr(), 10_000))).await;
    let ncs = persons(&hub, 3);
    let mut nocr = events(&hub, "nocr").await;
    let mut ids = Vec::new();
    for (i, nc) in ncs.iter().enumerate() {
        ids.push(publish(&mut nocr, &format!("death-{i}"), "death.v1", nc).await);
    }
    publish(&mut nocr, "change-0", "identity-change.v1", &ncs[0]).await;
    wait_relayed(&hub, 4, Duration::from_secs(60)).await;

    // Topics: exactly one per subscriber and event type.
    let policy = tabadol_policy::Policy::load_dir(&common::policy_dir()).unwrap();
    let md_client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .create()
        .unwrap();
    let md = md_client
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let on_broker: HashSet<String> = md
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        // Event topics only: manifest topics (tabadol.manifest.<agency>) appear as the
        // daily task delivers the start-up catch-up.
        .filter(|t| t.starts_with("tabadol.") && !t.starts_with("tabadol.manifest."))
        .collect();
    let expected: HashSet<String> = ["death.v1", "identity-change.v1"]
        .iter()
        .flat_map(|ty| {
            policy
                .subscribers_of(ty)
                .into_iter()
                .map(move |a| format!("tabadol.{ty}.{a}"))
        })
        .collect();
    assert_eq!(on_broker, expected, "topics on the broker");
    assert!(
        expected.contains("tabadol.death.v1.cbi") && expected.contains("tabadol.death.v1.ihio")
    );

    let cbi_tokens = tokens(&hub, "cbi", &ncs).await;
    let ihio_tokens = tokens(&hub, "ihio", &ncs).await;
    for (agency, toks) in [("cbi", &cbi_tokens), ("ihio", &ihio_tokens)] {
        let c = reader(&broker.addr(), &[format!("tabadol.death.v1.{agency}")]);
        let got = read_until(&c, Duration::from_secs(60), |r| distinct_ids(r).len() >= 3).await;
        let mut keys: Vec<String> = got.iter().map(|r| r.key.clone()).collect();
        keys.sort();
        keys.dedup();
        let mut want = toks.clone();
        want.sort();
        assert_eq!(keys, want, "{agency}'s record keys are its Tokenize tokens");
        for r in &got {
            assert_eq!(r.topic, format!("tabadol.death.v1.{agency}"));
            assert_eq!(r.headers["ce_specversion"], "1.0");
            assert_eq!(r.headers["ce_type"], "ir.tabadol.death.v1");
            assert_eq!(r.headers["ce_source"], "tabadol.ir/hub/nocr");
            assert_eq!(r.headers["content-type"], "application/protobuf");
            assert_eq!(r.headers["ce_subject"], r.key);
            assert!(r.headers.contains_key("ce_time"));
            assert_eq!(r.event.subject, r.key);
            assert_eq!(r.event.id, r.headers["ce_id"]);
            assert_eq!(r.event.r#type, "death.v1");
            assert_eq!(r.event.sequence.to_string(), r.headers["tabadol_sequence"]);
            assert!(ids.iter().any(|(_, id)| *id == r.event.id));
            for nc in &ncs {
                let raw = String::from_utf8_lossy(&r.payload);
                assert!(
                    !raw.contains(nc.as_str()),
                    "national code leaked in the payload"
                );
                assert!(r.headers.values().all(|v| !v.contains(nc.as_str())));
            }
        }
    }
    for (a, b) in cbi_tokens.iter().zip(&ihio_tokens) {
        assert_ne!(
            a, b,
            "two subscribers must get different tokens for one person"
        );
    }
    let stats = hub.handle.relay.as_ref().unwrap().stats();
    let subs = policy.subscribers_of("death.v1").len() as u64;
    assert!(stats.delivered >= 4 * subs, "{stats:?}");
    assert_eq!(stats.dead_letters, 0);
    assert_eq!(stats.outbox_depth, 0);
    hub.stop().await;
}

/// The broker dies mid-stream: publishing keeps succeeding, and when the broker is back
/// the relay delivers everything, in order per key, with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_outage_loses_nothing_and_keeps_order_per_key() {
    let mut broker = Broker::start().await;
    let hub = TestHub::start_with_kafka(Some((&broker.addr(), 3_000))).await;
    let ncs = persons(&hub, 5);
    let mut nocr = events(&hub, "nocr").await;
    let topic = "tabadol.identity-change.v1.cbi".to_string();
    let mut published: Vec<(u64, String, String)> = Vec::new(); // (seq, hub id, nc)

    // Phase 1: broker up.
    const BEFORE: usize = 20;
    const DURING: usize = 30;
    for i in 0..BEFORE {
        let nc = &ncs[i % ncs.len()];
        let (seq, id) = publish(&mut nocr, &format!("chg-{i}"), "identity-change.v1", nc).await;
        published.push((seq, id, nc.clone()));
    }
    wait_relayed(&hub, BEFORE as u64, Duration::from_secs(60)).await;
    let c1 = reader(&broker.addr(), std::slice::from_ref(&topic));
    let before = read_until(&c1, Duration::from_secs(60), |r| {
        distinct_ids(r).len() >= BEFORE
    })
    .await;
    drop(c1);

    // Phase 2: broker killed; publishing still succeeds, the outbox grows.
    broker.kill();
    let t0 = Instant::now();
    for i in BEFORE..BEFORE + DURING {
        let nc = &ncs[i % ncs.len()];
        let (seq, id) = publish(&mut nocr, &format!("chg-{i}"), "identity-change.v1", nc).await;
        published.push((seq, id, nc.clone()));
    }
    let publish_during = t0.elapsed();
    let relay = hub.handle.relay.as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay.stats().retries < 2 {
        assert!(
            Instant::now() < deadline,
            "relay never noticed the outage: {:?}",
            relay.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = relay.stats();
    assert_eq!(
        during.cursor, BEFORE as u64,
        "nothing past the outage counts as delivered"
    );
    assert_eq!(during.outbox_depth, DURING as u64);

    // Phase 3: broker back (empty: tansu keeps data in memory); the relay catches up.
    broker.run().await;
    let t1 = Instant::now();
    wait_relayed(&hub, (BEFORE + DURING) as u64, Duration::from_secs(120)).await;
    let drain = t1.elapsed();
    let c2 = reader(&broker.addr(), std::slice::from_ref(&topic));
    let after = read_until(&c2, Duration::from_secs(60), |r| {
        distinct_ids(r).len() >= DURING
    })
    .await;

    // Nothing lost: every published event reached cbi's topic (before or after).
    let mut seen: HashSet<String> = distinct_ids(&before);
    seen.extend(distinct_ids(&after));
    for (seq, id, _) in &published {
        assert!(
            seen.contains(id),
            "event {seq} ({id}) never reached {topic}"
        );
    }
    // Order per key: for each token, first occurrences come in sequence order.
    for batch in [&before, &after] {
        let mut per_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        let mut first = HashSet::new();
        for r in batch.iter() {
            if first.insert(r.event.id.clone()) {
                per_key.entry(&r.key).or_default().push(r.event.sequence);
            }
        }
        for (k, seqs) in per_key {
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "key {k} out of order: {seqs:?}"
            );
        }
    }
    let cbi_tokens = tokens(&hub, "cbi", &ncs).await;
    for r in before.iter().chain(&after) {
        let (_, _, nc) = published
            .iter()
            .find(|(s, _, _)| *s == r.event.sequence)
            .unwrap();
        let i = ncs.iter().position(|n| n == nc).unwrap();
        assert_eq!(r.key, cbi_tokens[i], "key of sequence {}", r.event.sequence);
    }
    let end = relay.stats();
    eprintln!(
        "broker outage: {BEFORE} events delivered before, {DURING} published during the outage \
         in {publish_during:?} (all acknowledged), relay retried {} rounds, drained in {drain:?} \
         after restart; cbi received {} distinct before + {} distinct after (records {} + {}), \
         lost 0; dead letters {}",
        end.retries,
        distinct_ids(&before).len(),
        distinct_ids(&after).len(),
        before.len(),
        after.len(),
        end.dead_letters,
    );
    assert_eq!(end.dead_letters, 0);
    assert_eq!(end.outbox_depth, 0);
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------
// The hub as a child process, killed with SIGKILL.

struct ChildHub {
    child: Child,
    config: PathBuf,
    port: u16,
}

impl ChildHub {
    async fn spawn(config: &PathBuf, port: u16, log: &PathBuf) -> ChildHub {
        let log_path = log;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tabadol"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tabadol serve");
        let mut child = child;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "tabadol serve exited with {status}; its log:\n{}",
                    std::fs::read_to_string(log_path).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tabadol serve did not open port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ChildHub {
            child,
            config: config.clone(),
            port,
        }
    }

    fn sigkill(&mut self) {
        // std's kill() sends SIGKILL on unix: no shutdown hook runs.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChildHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hub killed with SIGKILL right after acknowledging still delivers every acknowledged
/// event after a restart, to the gRPC stream and to Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_ack_loses_no_acknowledged_event() {
    // The in-process harness provides the PKI, simulators and sample people; the hub under
    // test is a separate `tabadol serve` process sharing nothing but files.
    let harness = TestHub::start().await;
    let mut broker = Broker::reserve(); // not running yet: nothing can leave before the kill
    let port = free_port();
    let data = harness.dir.path().join("child-data");
    let pki = &harness.pki;
    let config = harness.dir.path().join("hub.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\n\
             policy_dir: {policy}\n\
             data_dir: {data}\n\
             tls:\n  ca: {ca}\n  cert: {cert}\n  key: {key}\n\
             providers:\n  - {{ provider: nocr, adapter: civil-registry, base_url: \"{nocr}\" }}\n\
             \x20 - {{ provider: cra, adapter: shahkar, base_url: \"{cra}\" }}\n\
             \x20 - {{ provider: inta, adapter: tax, base_url: \"{inta}\" }}\n\
             kafka:\n  brokers: {brokers}\n  message_timeout_ms: 2000\n",
            policy = common::policy_dir().display(),
            data = data.display(),
            ca = pki.ca_cert().display(),
            cert = pki.hub_cert().display(),
            key = pki.hub_key().display(),
            nocr = harness.sims.civil_registry.base_url(),
            cra = harness.sims.shahkar.base_url(),
            inta = harness.sims.tax.base_url(),
            brokers = broker.addr(),
        ),
    )
    .unwrap();
    let log = harness.dir.path().join("child.log");
    let mut child = ChildHub::spawn(&config, port, &log).await;
    let url = format!("https://127.0.0.1:{port}");
    let client = |agency: &'static str| {
        let url = url.clone();
        let h = &harness;
        async move {
            let cert = std::fs::read_to_string(h.pki.agency_cert(agency)).unwrap();
            let key = std::fs::read_to_string(h.pki.agency_key(agency)).unwrap();
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(h.ca_pem()))
                .domain_name("localhost")
                .identity(tonic::transport::Identity::from_pem(cert, key));
            let ch = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect_lazy();
            EventsClient::new(ch)
        }
    };

    const N: usize = 25;
    let ncs = persons(&harness, 5);
    let mut nocr = client("nocr").await;
    let mut acked = Vec::new();
    for i in 0..N {
        acked.push(publish(&mut nocr, &format!("k-{i}"), "death.v1", &ncs[i % 5]).await);
    }
    child.sigkill();
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the hub is dead"
    );

    broker.run().await;
    let mut child = ChildHub::spawn(&child.config.clone(), child.port, &log).await;

    // The gRPC stream has every acknowledged event, in order.
    let mut cbi = client("cbi").await;
    let mut stream = cbi
        .subscribe(SubscribeRequest {
            after_sequence: 0,
            types: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while got.len() < N {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("stream stalled")
            .unwrap()
            .expect("stream ended");
        got.push((ev.sequence, ev.id));
    }
    assert_eq!(
        got, acked,
        "after SIGKILL the outbox holds exactly the acknowledged events"
    );

    // And the relay, restarted with the hub, delivers all of them to Kafka.
    let topic = "tabadol.death.v1.cbi".to_string();
    let deadline = Instant::now() + Duration::from_secs(90);
    let c = loop {
        let md: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.addr())
            .create()
            .unwrap();
        let exists = md
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .map(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == topic && !t.partitions().is_empty())
            })
            .unwrap_or(false);
        if exists {
            break reader(&broker.addr(), std::slice::from_ref(&topic));
        }
        assert!(Instant::now() < deadline, "relay never created {topic}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rs = read_until(&c, Duration::from_secs(90), |r| distinct_ids(r).len() >= N).await;
    let ids = distinct_ids(&rs);
    for (seq, id) in &acked {
        assert!(
            ids.contains(id),
            "acknowledged event {seq} never reached Kafka"
        );
    }
    eprintln!(
        "SIGKILL: {N} events acknowledged before the kill, {N} on the stream after restart, \
         {} distinct on {topic} ({} records)",
        ids.len(),
        rs.len()
    );
    child.sigkill();
    harness.stop().await;
}

/// A closed day's manifest reaches the subscriber's manifest topic, and its count and
/// digest match what the subscriber received on its event topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daily_manifest_is_produced_and_matches_the_events() {
    use sha2::{Digest, Sha256};
    use tabadol_policy::jalali::JalaliDate;

    let broker = Broker::start().await;
    let hub = TestHub::start_with_kafka(Some((&broker.addr(), 10_000))).await;
    let ncs = persons(&hub, 4);
    let mut nocr = events(&hub, "nocr").await;
    for (i, nc) in ncs.iter().enumerate() {
        publish(&mut nocr, &format!("m-{i}"), "death.v1", nc).await;
    }
    publish(&mut nocr, "m-change", "identity-change.v1", &ncs[0]).await;
    wait_relayed(&hub, 5, Duration::from_secs(60)).await;

    // Close today early (the daily task does this for yesterday after Tehran midnight).
    let today = JalaliDate::in_tehran(jiff::Timestamp::now());
    let outbox = hub.handle.outbox.clone();
    let created = {
        let tokens = tabadol_hub::tokens::Tokens::open(&hub.handle.db).unwrap();
        tabadol_hub::manifests::close_day(
            today,
            &hub.handle.hub,
            &outbox,
            &tokens,
            &hub.handle.manifests,
        )
        .unwrap()
    };
    let policy = tabadol_policy::Policy::load_dir(&common::policy_dir()).unwrap();
    let mut subscribers: Vec<&str> = policy
        .subscriptions()
        .iter()
        .map(|s| s.agency.as_str())
        .collect();
    subscribers.dedup();
    assert_eq!(created, subscribers.len(), "one manifest per subscriber");
    hub.handle.nudge_manifests();

    // What cbi received on its two event topics, in sequence order.
    let c = reader(
        &broker.addr(),
        &[
            "tabadol.death.v1.cbi".to_string(),
            "tabadol.identity-change.v1.cbi".to_string(),
        ],
    );
    let mut got = read_until(&c, Duration::from_secs(60), |r| distinct_ids(r).len() >= 5).await;
    got.sort_by_key(|r| r.event.sequence);
    got.dedup_by_key(|r| r.event.sequence);
    let mut h = Sha256::new();
    for r in &got {
        h.update(format!(
            "{}|{}|{}|{}\n",
            r.event.id, r.event.r#type, r.event.subject, r.event.date
        ));
    }
    let digest = hex::encode(h.finalize());

    let deadline = Instant::now() + Duration::from_secs(60);
    let mc = loop {
        let md: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.addr())
            .create()
            .unwrap();
        let ok = md
            .fetch_metadata(Some("tabadol.manifest.cbi"), Duration::from_secs(5))
            .map(|m| m.topics().iter().any(|t| !t.partitions().is_empty()))
            .unwrap_or(false);
        if ok {
            break reader(&broker.addr(), &["tabadol.manifest.cbi".to_string()]);
        }
        assert!(Instant::now() < deadline, "manifest topic never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let manifest = loop {
        assert!(
            Instant::now() < deadline,
            "no manifest on tabadol.manifest.cbi"
        );
        let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(1), mc.recv()).await else {
            continue;
        };
        let m = tabadol_proto::v1::Manifest::decode(msg.payload().unwrap_or_default()).unwrap();
        assert_eq!(msg.key(), Some(m.day.as_bytes()));
        assert!(m.complete);
        if m.day != today.to_string() {
            // Earlier days closed at start-up (catch-up): nothing happened on them.
            assert_eq!((m.count, m.agency.as_str()), (0, "cbi"));
            continue;
        }
        break m;
    };
    assert_eq!(manifest.agency, "cbi");
    assert_eq!(manifest.day, today.to_string());
    assert_eq!(manifest.count, 5);
    assert_eq!(
        manifest.digest, digest,
        "the digest matches what cbi received"
    );
    assert_eq!((manifest.first_sequence, manifest.last_sequence), (1, 5));
    hub.stop().await;
}
