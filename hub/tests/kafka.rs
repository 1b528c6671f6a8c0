//! Kafka relay tests against a real Kafka-protocol broker (tansu) started on loopback by
//! each test: fan-out to every subscriber's own topic with its own token, a broker killed
//! while deliveries are in flight, a hub killed with SIGKILL after acknowledging, and the
//! daily manifest.
//!
//! The broker binary comes from `TABADOL_TANSU`, which `scripts/test.sh` sets after
//! installing it.

#[path = "common/kafka.rs"]
mod broker;
mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::*;
use common::TestHub;
use futures::StreamExt as _;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use tabadol_proto::v1::events_client::EventsClient;
use tabadol_proto::v1::{PublishRequest, SubscribeRequest, TokenizeRequest};
use tonic::transport::Channel;

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
            ..Default::default()
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
            // The harness runs on the dev master secret: token key version 1.
            assert_eq!(r.event.key_version, 1, "the payload names its key version");
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

// ---------------------------------------------------------------------------------------
// The hub as a child process (`tabadol serve`), to be frozen or killed.

struct ChildHub {
    child: Child,
    config: PathBuf,
    port: u16,
    log: PathBuf,
}

/// Writes a `tabadol serve` configuration for a hub on `listen` relaying to `brokers`,
/// with the harness's PKI, simulators and the shipped policy.
fn child_config(harness: &TestHub, name: &str, listen: u16, brokers: &str) -> PathBuf {
    let pki = &harness.pki;
    let config = harness.dir.path().join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{listen}\n\
             policy_dir: {policy}\n\
             data_dir: {data}\n\
             tls:\n  ca: {ca}\n  cert: {cert}\n  key: {key}\n  revocation: off\n\
             providers:\n{providers}\
             kafka:\n  brokers: {brokers}\n  message_timeout_ms: 2000\n\
             \x20 topic_partitions: 3\n  topic_replication: 1\n",
            policy = common::policy_dir().display(),
            data = harness.dir.path().join(format!("{name}-data")).display(),
            ca = pki.ca_cert().display(),
            cert = pki.hub_cert().display(),
            key = pki.hub_key().display(),
            providers = common::providers_yaml(&harness.sims),
        ),
    )
    .unwrap();
    config
}

impl ChildHub {
    async fn spawn(config: &Path, port: u16, log: &Path) -> ChildHub {
        let log_path = log;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = guarded(Path::new(env!("CARGO_BIN_EXE_tabadol")))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tabadol serve");
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
            config: config.to_owned(),
            port,
            log: log_path.to_owned(),
        }
    }

    fn sigkill(&mut self) {
        // std's kill() sends SIGKILL on unix: no shutdown hook runs.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the hub process.
    fn signal(&self, signal: &str) {
        send_signal(&self.child, signal);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the hub's log has `needle`.
    async fn wait_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the hub never logged `{needle}` in {within:?}; its log:\n{}",
                log_since(&self.log, 0)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChildHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An Events client of `agency` for the child hub on `port`.
fn child_client(harness: &TestHub, port: u16, agency: &str) -> EventsClient<Channel> {
    let id = harness.identity(agency);
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(harness.ca_pem()))
        .domain_name("localhost")
        .identity(tonic::transport::Identity::from_pem(id.cert, id.key));
    let ch = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    EventsClient::new(ch)
}

/// Publishes `range` as identity changes about `ncs` (round robin), 8 at a time; returns
/// the acknowledgements as (sequence, hub event id, national code).
async fn publish_changes(
    nocr: &EventsClient<Channel>,
    ncs: &[String],
    range: std::ops::Range<usize>,
) -> Vec<(u64, String, String)> {
    futures::stream::iter(range)
        .map(|i| {
            let mut c = nocr.clone();
            let nc = ncs[i % ncs.len()].clone();
            async move {
                let (seq, id) =
                    publish(&mut c, &format!("chg-{i}"), "identity-change.v1", &nc).await;
                (seq, id, nc)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// The broker dies while the relay has deliveries in flight: every acknowledged event
/// still reaches the subscriber's topic (before the crash or after the restart), and per
/// key the first copies come in publish order; duplicates (same `ce_id`) are allowed.
///
/// The relay gets a backlog (the broker is frozen while the events are published), and
/// the broker dies as soon as the first of them appear. tansu keeps its data in memory,
/// so to know exactly what it held, the hub (a child process) is frozen with SIGSTOP
/// first and the reader catches up; only then is the broker killed. The relay's messages
/// sent but not yet acknowledged are the ones in flight at the crash. The hub resumes
/// against a dead broker, more events are published, the broker comes back empty and the
/// relay must redo everything not acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_killed_with_deliveries_in_flight_loses_nothing_and_keeps_order_per_key() {
    /// Events published before the crash (each to the 10 phase-1 subscribers).
    const N: usize = 400;
    /// Events published while the broker is dead.
    const DURING: usize = 50;
    /// Events seen on the topic when the broker is killed.
    const FIRST: usize = 5;
    const TOPIC: &str = "tabadol.identity-change.v1.cbi";

    let t_start = Instant::now();
    let harness = TestHub::start().await;
    let mut broker = Broker::start().await;
    // cbi's topic exists and is being read before anything is published, so the first
    // records are seen at once (the relay finds the topic there).
    create_topic(&broker.addr(), TOPIC, 3).await;
    let c1 = reader(&broker.addr(), &[TOPIC.to_string()]);

    // A backlog: the broker is frozen (connections accepted, nothing answered) while the
    // hub starts and N events are published, so they are all waiting when it thaws.
    broker.signal("STOP");
    let hub_port = PortHold::new();
    let config = child_config(&harness, "outage", hub_port.port, &broker.addr());
    let log = harness.dir.path().join("outage.log");
    let child = ChildHub::spawn(&config, hub_port.port, &log).await;
    let ncs = persons(&harness, 5);
    let nocr = child_client(&harness, hub_port.port, "nocr");
    let mut published = publish_changes(&nocr, &ncs, 0..N).await;
    broker.signal("CONT");

    // The first events arrive: freeze the hub, read everything the broker holds, kill it.
    let mut before = read_until(&c1, Duration::from_secs(30), |r| {
        distinct_ids(r).len() >= FIRST
    })
    .await;
    child.signal("STOP");
    read_until_quiet(
        &c1,
        &mut before,
        Duration::from_millis(1500),
        Duration::from_secs(20),
    )
    .await;
    drop(c1);
    broker.kill();
    let t_kill = Instant::now();
    child.signal("CONT");
    let seen_before = distinct_ids(&before);
    assert!(
        seen_before.len() < N,
        "the broker must die before everything is delivered"
    );

    // The relay finds the broker gone; publishing goes on.
    published.extend(publish_changes(&nocr, &ncs, N..N + DURING).await);
    published.sort();
    assert_eq!(published.len(), N + DURING, "every publish acknowledged");
    child
        .wait_log("kafka delivery failed; will retry", Duration::from_secs(30))
        .await;
    let noticed_in = t_kill.elapsed();

    // The broker comes back empty; the relay redoes what was not acknowledged.
    broker.run().await;
    let outage = t_kill.elapsed();
    let t_back = Instant::now();
    let wanted: HashSet<String> = published.iter().map(|(_, id, _)| id.clone()).collect();
    let c2 = topic_reader(&broker.addr(), TOPIC, Duration::from_secs(30)).await;
    let (after, _) = read_while(&c2, Duration::from_secs(40), |r| {
        let after = distinct_ids(r);
        wanted
            .iter()
            .all(|id| seen_before.contains(id) || after.contains(id))
    })
    .await;
    let drain = t_back.elapsed();
    let seen_after = distinct_ids(&after);
    let missing: Vec<u64> = published
        .iter()
        .filter(|(_, id, _)| !seen_before.contains(id) && !seen_after.contains(id))
        .map(|(s, _, _)| *s)
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events never reached {TOPIC}: {missing:?}; before the kill {} \
         distinct, after the restart {} distinct ({} records); the hub's log:\n{}",
        missing.len(),
        seen_before.len(),
        seen_after.len(),
        after.len(),
        log_since(&log, 0)
    );

    // Nothing lost, nothing foreign.
    let whole: Vec<&Received> = before.iter().chain(&after).collect();
    let delivered: HashSet<String> = whole.iter().map(|r| r.event.id.clone()).collect();
    assert_eq!(delivered, wanted, "exactly the published events on {TOPIC}");
    // Order per key over the whole run: what the broker held before it died, then what
    // came after the restart (a key always lives in one partition, read in offset order).
    let keys = assert_first_occurrences_in_order(&whole);
    // Keys are cbi's tokens of the people, and each record names its event's person.
    let cbi_tokens = child_client(&harness, hub_port.port, "cbi")
        .tokenize(TokenizeRequest {
            national_codes: ncs.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    for r in &whole {
        let (_, _, nc) = published
            .iter()
            .find(|(s, _, _)| *s == r.event.sequence)
            .unwrap();
        let i = ncs.iter().position(|n| n == nc).unwrap();
        assert_eq!(r.key, cbi_tokens[i], "key of sequence {}", r.event.sequence);
    }
    let hub_log = child.log();
    assert!(
        !hub_log.contains("dead-lettered"),
        "nothing may be dead-lettered by an outage"
    );
    let retries = hub_log.matches("kafka delivery failed; will retry").count();
    let resent = seen_after.intersection(&seen_before).count();
    println!(
        "broker killed with deliveries in flight: published {} (all acknowledged: {N} before \
         the kill, {DURING} while the broker was dead) about {keys} keys; before the kill the \
         broker held {} distinct ({} records) on {TOPIC}; after the restart {} distinct ({} \
         records), {resent} of them already there before the kill; delivered {} distinct of \
         {}, lost 0, duplicates {} (records {} - distinct {}); relay retried {retries} rounds, \
         first retry logged {noticed_in:?} after the kill; outage {outage:?}, drained \
         {drain:?} after restart; test {:?}",
        published.len(),
        seen_before.len(),
        before.len(),
        seen_after.len(),
        after.len(),
        delivered.len(),
        published.len(),
        whole.len() - delivered.len(),
        whole.len(),
        delivered.len(),
        t_start.elapsed(),
    );
    drop(child);
    harness.stop().await;
}

/// A hub killed with SIGKILL right after acknowledging still delivers every acknowledged
/// event after a restart, to the gRPC stream and to Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_ack_loses_no_acknowledged_event() {
    // The in-process harness provides the PKI, simulators and sample people; the hub under
    // test is a separate `tabadol serve` process sharing nothing but files.
    let harness = TestHub::start().await;
    // Not running yet (its port refuses connections): nothing can leave before the kill.
    let mut broker = Broker::reserve();
    let hub_port = PortHold::new();
    let port = hub_port.port;
    let config = child_config(&harness, "hub", port, &broker.addr());
    let log = harness.dir.path().join("child.log");
    let mut child = ChildHub::spawn(&config, port, &log).await;

    const N: usize = 25;
    let ncs = persons(&harness, 5);
    let mut nocr = child_client(&harness, port, "nocr");
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
    let mut cbi = child_client(&harness, port, "cbi");
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
    let topic = "tabadol.death.v1.cbi";
    let c = topic_reader(&broker.addr(), topic, Duration::from_secs(90)).await;
    let rs = read_until(&c, Duration::from_secs(90), |r| distinct_ids(r).len() >= N).await;
    let ids = distinct_ids(&rs);
    for (seq, id) in &acked {
        assert!(
            ids.contains(id),
            "acknowledged event {seq} never reached Kafka"
        );
    }
    println!(
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
        // The hub's own token keys (derived from dev's master secret), as the relay uses.
        tabadol_hub::events::manifests::close_day(
            today,
            &hub.handle.hub,
            &outbox,
            &hub.handle.tokens,
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

/// The example program `name` in `dir` (`target/debug/examples`). `scripts/test.sh`
/// builds the examples as programs first (`cargo build --profile test --examples`): a
/// test run alone builds them only as test harnesses.
fn find_example(dir: &Path, name: &str) -> Option<PathBuf> {
    Some(dir.join(name)).filter(|p| p.is_file())
}

/// An example program of `tabadol-examples`, built next to this test's binary by the
/// workspace test run (`scripts/test.sh` builds every target before running any).
fn example_program(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_tabadol"))
        .parent()
        .unwrap()
        .join("examples");
    find_example(&dir, name).unwrap_or_else(|| {
        panic!(
            "example `{name}` is not built in {}: run the suite with `bash scripts/test.sh` \
             (it builds the examples)",
            dir.display()
        )
    })
}

/// Waits (polling, on the test's thread) for a child to exit; kills it after `within`.
async fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The README's live demo over Kafka, with the real programs: `tabadol dev --kafka`
/// relays a death published by the `publish` example (as nocr), and the `subscriber`
/// example (as cbi, `--kafka`) reads its own topic through a consumer group, recognises
/// its customer by token and says to suspend them.
#[tokio::test]
async fn dev_with_kafka_feeds_the_subscriber_example() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hub_log = dir.path().join("dev.log");
    let mut dev = guarded(Path::new(env!("CARGO_BIN_EXE_tabadol")))
        .args(["dev", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir.path().join("dev"))
        .arg("--policy")
        .arg(common::policy_dir())
        .args(["--kafka", &broker.addr()])
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(&hub_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tabadol dev --kafka");
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let log = std::fs::read_to_string(&hub_log).unwrap_or_default();
        if let Some(addr) = log
            .split("listening on https://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        {
            break addr.to_owned();
        }
        assert!(
            dev.try_wait().unwrap().is_none(),
            "tabadol dev exited:\n{log}"
        );
        assert!(
            Instant::now() < deadline,
            "no banner from tabadol dev:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let hub_args = |agency: &str| {
        vec![
            "--hub".to_owned(),
            format!("https://{addr}"),
            "--dir".to_owned(),
            dir.path().join("dev").display().to_string(),
            "--agency".to_owned(),
            agency.to_owned(),
        ]
    };
    let samples: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("dev/samples.json")).unwrap())
            .unwrap();
    let dying = samples["persons_alive"][1]["national_code"]
        .as_str()
        .unwrap()
        .to_owned();

    let published = guarded(&example_program("publish"))
        .args(hub_args("nocr"))
        .args(["death", &dying])
        .output()
        .unwrap();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );

    let out_path = dir.path().join("subscriber.out");
    let mut subscriber = guarded(&example_program("subscriber"))
        .args(hub_args("cbi"))
        .args(["--kafka", &broker.addr(), "--exit-after", "1"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(dir.path().join("subscriber.err")).unwrap())
        .spawn()
        .unwrap();
    // A consumer-group join on tansu takes several seconds.
    let status = wait_exit(&mut subscriber, Duration::from_secs(90)).await;
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(dir.path().join("subscriber.err")).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "subscriber did not finish ({status:?}):\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("SUSPEND ") && stdout.contains(&format!("({dying})")),
        "the subscriber must name its customer:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("consuming tabadol.death.v1.cbi"),
        "{stderr}"
    );

    send_signal(&dev, "INT");
    let status = wait_exit(&mut dev, Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "dev exit: {status:?}");
}

// ---------------------------------------------------------------------------------------
// A gate in front of the broker, for refusals tansu cannot make (it has no ACLs).

/// Kafka's TOPIC_AUTHORIZATION_FAILED: brokers whose ACLs deny the hub writing the topic.
const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
/// Kafka's MESSAGE_TOO_LARGE: brokers that refuse the record for good.
const MESSAGE_TOO_LARGE: i16 = 10;

/// Every client reaches the broker through the gate (the broker advertises the gate's
/// port). While it refuses, the gate answers each Produce request itself with one Kafka
/// error code for every partition, as brokers that deny the hub (or refuse the records)
/// would; those records never reach the broker. Everything else passes unchanged.
struct Gate {
    port: u16,
    refuse: std::sync::Arc<std::sync::atomic::AtomicI16>,
    refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// A gate on a fresh loopback port in front of the broker on `upstream`.
    async fn start(upstream: u16) -> Gate {
        use std::sync::atomic::{AtomicI16, AtomicU64};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let refuse = std::sync::Arc::new(AtomicI16::new(0));
        let refused = std::sync::Arc::new(AtomicU64::new(0));
        let (r, n) = (refuse.clone(), refused.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(gate_connection(client, upstream, r.clone(), n.clone()));
            }
        });
        Gate {
            port,
            refuse,
            refused,
            task,
        }
    }

    /// Refuses every Produce with `code` from now on; 0 lets them through again.
    fn refuse(&self, code: i16) {
        self.refuse.store(code, std::sync::atomic::Ordering::SeqCst);
    }

    /// Produce requests refused so far.
    fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A broker behind a gate, both running.
async fn gated_broker() -> (Broker, Gate) {
    let mut broker = Broker::reserve();
    let gate = Gate::start(broker.hold.port).await;
    broker.advertised = Some(gate.port);
    broker.run().await;
    (broker, gate)
}

async fn read_frame(r: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.ok()?;
    let n = i32::from_be_bytes(len);
    if !(0..=64 << 20).contains(&n) {
        return None;
    }
    let mut frame = len.to_vec();
    frame.resize(4 + n as usize, 0);
    r.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

async fn gate_connection(
    client: tokio::net::TcpStream,
    upstream: u16,
    refuse: std::sync::Arc<std::sync::atomic::AtomicI16>,
    refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::AsyncWriteExt as _;
    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (mut cr, cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let cw = std::sync::Arc::new(tokio::sync::Mutex::new(cw));
    let back = {
        let cw = cw.clone();
        async move {
            while let Some(frame) = read_frame(&mut sr).await {
                if cw.lock().await.write_all(&frame).await.is_err() {
                    break;
                }
            }
        }
    };
    let forth = async move {
        while let Some(frame) = read_frame(&mut cr).await {
            let code = refuse.load(SeqCst);
            if code != 0 {
                if let Some(answer) = produce_refusal(&frame[4..], code) {
                    refused.fetch_add(1, SeqCst);
                    if cw.lock().await.write_all(&answer).await.is_err() {
                        break;
                    }
                    continue;
                }
            }
            if sw.write_all(&frame).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = back => {},
        _ = forth => {},
    }
}

/// A cursor over a Kafka request.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn uvarint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    /// A compact (flexible) or classic length: `None` for null.
    fn len(&mut self, flex: bool, classic16: bool) -> Option<Option<usize>> {
        let n: i64 = if flex {
            self.uvarint()? as i64 - 1
        } else if classic16 {
            i64::from(self.i16()?)
        } else {
            i64::from(self.i32()?)
        };
        Some((n >= 0).then_some(n as usize))
    }
    fn skip_tags(&mut self) -> Option<()> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let n = self.uvarint()? as usize;
            self.take(n)?;
        }
        Some(())
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The answer to a Produce request (v3 to v12) refusing every partition with `code`, or
/// `None` when `req` is another request.
fn produce_refusal(req: &[u8], code: i16) -> Option<Vec<u8>> {
    let mut c = Cur(req);
    if c.i16()? != 0 {
        return None;
    }
    let v = c.i16()?;
    if !(3..=12).contains(&v) {
        return None;
    }
    let corr = c.i32()?;
    let flex = v >= 9;
    // Request header: client id (always a classic string), then tags when flexible.
    if let Some(n) = c.len(false, true)? {
        c.take(n)?;
    }
    if flex {
        c.skip_tags()?;
    }
    if let Some(n) = c.len(flex, true)? {
        c.take(n)?; // transactional id
    }
    c.i16()?; // acks
    c.i32()?; // timeout
    let mut out = corr.to_be_bytes().to_vec();
    if flex {
        out.push(0);
    }
    let topics = c.len(flex, false)?.unwrap_or(0);
    let put_len = |out: &mut Vec<u8>, n: usize| {
        if flex {
            put_uvarint(out, n as u64 + 1)
        } else {
            out.extend((n as i32).to_be_bytes())
        }
    };
    put_len(&mut out, topics);
    for _ in 0..topics {
        let name = c.len(flex, true)?.and_then(|n| c.take(n))?;
        if flex {
            put_uvarint(&mut out, name.len() as u64 + 1);
        } else {
            out.extend((name.len() as i16).to_be_bytes());
        }
        out.extend_from_slice(name);
        let parts = c.len(flex, false)?.unwrap_or(0);
        put_len(&mut out, parts);
        for _ in 0..parts {
            let index = c.i32()?;
            if let Some(n) = c.len(flex, false)? {
                c.take(n)?; // records
            }
            if flex {
                c.skip_tags()?;
            }
            out.extend(index.to_be_bytes());
            out.extend(code.to_be_bytes());
            out.extend((-1i64).to_be_bytes()); // base offset
            out.extend((-1i64).to_be_bytes()); // log append time
            out.extend((-1i64).to_be_bytes()); // log start offset
            if v >= 8 {
                if flex {
                    out.extend([1, 0]); // no record errors, null message
                } else {
                    out.extend(0i32.to_be_bytes());
                    out.extend((-1i16).to_be_bytes());
                }
            }
            if flex {
                out.push(0);
            }
        }
        if flex {
            c.skip_tags()?;
            out.push(0);
        }
    }
    out.extend(0i32.to_be_bytes()); // throttle time
    if flex {
        out.push(0);
    }
    let mut frame = (out.len() as i32).to_be_bytes().to_vec();
    frame.extend(out);
    Some(frame)
}

/// Runs the `tabadol` binary with `args`.
fn tabadol(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tabadol"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run tabadol")
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The brokers deny the hub writing its topics for a while (an ACL gap): the events
/// accepted meanwhile wait in the outbox (retried, one alert per topic naming the ACL to
/// add, nothing dead-lettered) and every one reaches the subscriber once writes are
/// allowed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topic_authorization_gap_loses_no_event() {
    let harness = TestHub::start().await;
    let (_broker, gate) = gated_broker().await;
    gate.refuse(TOPIC_AUTHORIZATION_FAILED);
    let hub_port = PortHold::new();
    let config = child_config(&harness, "hub", hub_port.port, &gate.addr());
    let log = harness.dir.path().join("child.log");
    let mut child = ChildHub::spawn(&config, hub_port.port, &log).await;

    const N: usize = 6;
    let ncs = persons(&harness, 3);
    let mut nocr = child_client(&harness, hub_port.port, "nocr");
    let mut acked = Vec::new();
    for i in 0..N {
        acked.push(publish(&mut nocr, &format!("gap-{i}"), "death.v1", &ncs[i % 3]).await);
    }
    child
        .wait_log(
            "kafka denies the hub writing a topic",
            Duration::from_secs(60),
        )
        .await;
    // Keep the gap open over several retry rounds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while gate.refused() < 4 {
        assert!(Instant::now() < deadline, "the relay stopped retrying");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gate.refuse(0);

    let want: HashSet<String> = acked.iter().map(|(_, id)| id.clone()).collect();
    let policy = tabadol_policy::Policy::load_dir(&common::policy_dir()).unwrap();
    let subscribers = policy.subscribers_of("death.v1");
    for agency in ["cbi", "ihio"] {
        let c = topic_reader(
            &gate.addr(),
            &format!("tabadol.death.v1.{agency}"),
            Duration::from_secs(60),
        )
        .await;
        let got = read_until(&c, Duration::from_secs(60), |r| distinct_ids(r).len() >= N).await;
        assert_eq!(
            distinct_ids(&got),
            want,
            "{agency} got every event of the gap"
        );
    }
    let text_log = child.log();
    assert!(
        !text_log.contains("failed permanently"),
        "an ACL gap dead-letters nothing"
    );
    let alerts = text_log
        .matches("kafka denies the hub writing a topic")
        .count();
    eprintln!(
        "ACL gap: {} produce requests refused, {alerts} alert line(s) for {} topics, {N} of {N} events delivered",
        gate.refused(),
        subscribers.len()
    );
    assert!(
        alerts <= subscribers.len(),
        "alerts are rate-limited per topic: {alerts} lines for {} topics",
        subscribers.len()
    );
    assert!(
        text_log.contains("--operation Write --topic tabadol. --resource-pattern-type prefixed"),
        "the alert names the ACL to add"
    );
    child.sigkill();
    let out = tabadol(&[
        "events",
        "dead-letters",
        "list",
        "--config",
        config.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("no dead letters"), "{stdout}");
}

/// `tabadol events dead-letters list|replay` on a stopped hub's store: copies the brokers
/// refused for good (message too large) are listed with sequence, subscriber, topic, time
/// and reason, never the national code; a running hub's store is refused with a sentence
/// saying it is locked; replay puts them back and the restarted hub's relay delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_and_replayed_by_the_cli() {
    let harness = TestHub::start().await;
    let (_broker, gate) = gated_broker().await;
    gate.refuse(MESSAGE_TOO_LARGE);
    let hub_port = PortHold::new();
    let config = child_config(&harness, "hub", hub_port.port, &gate.addr());
    let cfg = config.to_str().unwrap().to_owned();
    let log = harness.dir.path().join("child.log");
    let mut child = ChildHub::spawn(&config, hub_port.port, &log).await;

    let nc = persons(&harness, 1).remove(0);
    let mut nocr = child_client(&harness, hub_port.port, "nocr");
    let (seq, id) = publish(&mut nocr, "too-large", "death.v1", &nc).await;
    let policy = tabadol_policy::Policy::load_dir(&common::policy_dir()).unwrap();
    let subscribers = policy.subscribers_of("death.v1").len();
    let deadline = Instant::now() + Duration::from_secs(90);
    while child
        .log()
        .matches("kafka delivery failed permanently; dead-lettered")
        .count()
        < subscribers
    {
        assert!(
            Instant::now() < deadline,
            "not every copy was dead-lettered; log:\n{}",
            child.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let out = tabadol(&["events", "dead-letters", "list", "--config", &cfg]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("locked by a running hub") && stderr.contains("stop the hub"),
        "{stderr}"
    );

    gate.refuse(0);
    child.sigkill();
    let out = tabadol(&["events", "dead-letters", "list", "--config", &cfg]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("tabadol.death.v1."))
        .collect();
    assert_eq!(rows.len(), subscribers, "{stdout}");
    let cbi = rows
        .iter()
        .find(|l| l.contains("tabadol.death.v1.cbi"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let cols: Vec<&str> = cbi.split_whitespace().collect();
    assert_eq!(cols[0], seq.to_string(), "{cbi}");
    assert_eq!(cols[1], "cbi", "{cbi}");
    assert!(cols[3].starts_with("20"), "time: {cbi}");
    assert!(cbi.to_lowercase().contains("too large"), "reason: {cbi}");
    assert!(!stdout.contains(&nc), "the national code is never shown");

    let out = tabadol(&[
        "events",
        "dead-letters",
        "replay",
        "--config",
        &cfg,
        &(seq + 100).to_string(),
    ]);
    assert!(!out.status.success(), "an unknown sequence is refused");
    assert!(text(&out).1.contains("no dead letter for sequence"));
    let out = tabadol(&[
        "events",
        "dead-letters",
        "replay",
        "--config",
        &cfg,
        "--all",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("{subscribers} dead letter(s) put back")),
        "{stdout}"
    );
    let out = tabadol(&["events", "dead-letters", "list", "--config", &cfg]);
    assert!(text(&out).0.contains("no dead letters"));

    let child = ChildHub::spawn(&config, hub_port.port, &log).await;
    for agency in ["cbi", "ihio"] {
        let c = topic_reader(
            &gate.addr(),
            &format!("tabadol.death.v1.{agency}"),
            Duration::from_secs(60),
        )
        .await;
        let got = read_until(&c, Duration::from_secs(60), |r| {
            distinct_ids(r).contains(&id)
        })
        .await;
        assert!(
            distinct_ids(&got).contains(&id),
            "{agency} got the replayed event"
        );
    }
    child
        .wait_log("replayed dead letter delivered", Duration::from_secs(30))
        .await;
}

/// Subscribers are chosen when an event is accepted: one removed from the policy during a
/// Kafka outage still gets the events accepted while it was subscribed, and one added
/// during the outage gets only those accepted after it was added.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_are_those_at_acceptance_across_an_outage() {
    // Not running yet: everything waits in the outbox.
    let mut broker = Broker::reserve();
    let policy = common::copy_policy();
    let hub = TestHub::start_configured(
        Some((&broker.addr(), 2000)),
        policy.path().to_owned(),
        |_, _| {},
    )
    .await;
    let ncs = persons(&hub, 3);
    let mut nocr = events(&hub, "nocr").await;
    let mut before = HashSet::new();
    for (i, nc) in ncs.iter().enumerate() {
        before.insert(
            publish(&mut nocr, &format!("b-{i}"), "death.v1", nc)
                .await
                .1,
        );
    }
    // cbi leaves, rcs joins.
    let path = policy.path().join("subscriptions.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = yaml.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("- id: cbi-events"))
        .unwrap();
    assert!(lines[at + 1].trim_start().starts_with("agency: cbi"));
    let approved = lines[at + 3].to_owned();
    lines.drain(at..at + 4);
    let mut edited = lines.join("\n");
    edited.push_str(&format!(
        "\n  - id: rcs-events\n    agency: rcs\n    event_types: [death.v1]\n{approved}\n"
    ));
    std::fs::write(&path, edited).unwrap();
    assert!(tabadol_hub::ops::app::reload_policy(&hub.handle.hub, policy.path()).await);
    assert!(!hub
        .handle
        .hub
        .policy()
        .policy
        .subscribers_of("death.v1")
        .contains(&"cbi"));
    let mut after = HashSet::new();
    for (i, nc) in ncs.iter().take(2).enumerate() {
        after.insert(
            publish(&mut nocr, &format!("a-{i}"), "death.v1", nc)
                .await
                .1,
        );
    }

    broker.run().await;
    wait_relayed(&hub, 5, Duration::from_secs(90)).await;
    for (agency, want) in [("cbi", &before), ("rcs", &after)] {
        let c = topic_reader(
            &broker.addr(),
            &format!("tabadol.death.v1.{agency}"),
            Duration::from_secs(30),
        )
        .await;
        let mut got = Vec::new();
        read_until_quiet(
            &c,
            &mut got,
            Duration::from_secs(2),
            Duration::from_secs(30),
        )
        .await;
        eprintln!(
            "{agency}: {} of {} events accepted while subscribed, {} others",
            distinct_ids(&got).intersection(want).count(),
            want.len(),
            distinct_ids(&got).difference(want).count()
        );
        assert_eq!(&distinct_ids(&got), want, "{agency}");
    }
    let ihio = topic_reader(
        &broker.addr(),
        "tabadol.death.v1.ihio",
        Duration::from_secs(30),
    )
    .await;
    let got = read_until(&ihio, Duration::from_secs(30), |r| {
        distinct_ids(r).len() >= 5
    })
    .await;
    assert_eq!(
        distinct_ids(&got).len(),
        5,
        "an unchanged subscriber gets all"
    );
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------
// Operations over a real broker (issue 12).

/// The value of one un-labelled metric in a /metrics text.
fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

async fn admin_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

fn tail_once(admin: std::net::SocketAddr) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tabadol"))
        .args([
            "events",
            "tail",
            "--once",
            "--admin",
            &format!("http://{admin}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn delivery_of(tail: &str, seq: u64) -> String {
    tail.lines()
        .find(|l| l.split_whitespace().next() == Some(&seq.to_string()))
        .unwrap_or_else(|| panic!("no event {seq} in:\n{tail}"))
        .split_whitespace()
        .nth(5)
        .unwrap()
        .to_owned()
}

/// With the broker up, the outbox is empty and `events tail` says `delivered`; with the
/// broker killed, an event waits: `tabadol_outbox_depth` is 1, `tabadol_relay_lag_seconds`
/// grows, tail says `pending`; with the broker back, it is delivered and the depth is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_state_shows_in_metrics_and_events_tail() {
    let mut broker = Broker::start().await;
    let hub = TestHub::start_with_kafka(Some((&broker.addr(), 2_000))).await;
    let admin = hub.handle.admin_addr.expect("admin listener");
    let ncs = persons(&hub, 2);
    let mut nocr = events(&hub, "nocr").await;
    let (first, _) = publish(&mut nocr, "ops-0", "death.v1", &ncs[0]).await;
    wait_relayed(&hub, first, Duration::from_secs(60)).await;
    let m = admin_get(admin, "/metrics").await;
    assert_eq!(metric_value(&m, "tabadol_outbox_depth"), 0.0);
    assert_eq!(metric_value(&m, "tabadol_relay_lag_seconds"), 0.0);
    let tail = tokio::task::spawn_blocking(move || tail_once(admin))
        .await
        .unwrap();
    assert_eq!(delivery_of(&tail, first), "delivered", "{tail}");

    broker.kill();
    let (second, _) = publish(&mut nocr, "ops-1", "death.v1", &ncs[1]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = admin_get(admin, "/metrics").await;
    assert_eq!(metric_value(&m, "tabadol_outbox_depth"), 1.0, "{m}");
    assert!(metric_value(&m, "tabadol_relay_lag_seconds") >= 1.0, "{m}");
    let tail = tokio::task::spawn_blocking(move || tail_once(admin))
        .await
        .unwrap();
    assert_eq!(delivery_of(&tail, second), "pending", "{tail}");
    for nc in &ncs {
        assert!(!tail.contains(nc.as_str()), "national code in tail");
    }

    broker.run().await;
    wait_relayed(&hub, second, Duration::from_secs(90)).await;
    let m = admin_get(admin, "/metrics").await;
    assert_eq!(metric_value(&m, "tabadol_outbox_depth"), 0.0, "{m}");
    let tail = tokio::task::spawn_blocking(move || tail_once(admin))
        .await
        .unwrap();
    assert_eq!(delivery_of(&tail, second), "delivered", "{tail}");
    hub.stop().await;
}

/// (key, the record or `None` for a tombstone, the version header) of a dataset topic.
type DatasetRecord = (String, Option<tabadol_proto::v1::DivestmentRecord>, String);

/// Reads a dataset topic until `seen` holds `want` records (60 s at most).
async fn read_dataset(c: &StreamConsumer, want: usize, seen: &mut Vec<DatasetRecord>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} records: {seen:?}",
            seen.len()
        );
        let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(1), c.recv()).await else {
            continue;
        };
        let version = msg
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|x| x.key == "tabadol_dataset_version")
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .unwrap_or_default();
        seen.push((
            String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
            msg.payload().map(|p| {
                tabadol_proto::v1::DivestmentRecord::decode(p).expect("a DivestmentRecord")
            }),
            version,
        ));
    }
}

/// Datasets on Kafka (R3): a reader of the divestment list gets its own compacted topic
/// keyed by enterprise id with one protobuf record per enterprise; the next version adds
/// the new enterprises and a tombstone for one that left the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dataset_versions_reach_each_reader_topic_keyed_by_enterprise() {
    use tabadol_proto::v1::datasets_client::DatasetsClient;
    use tabadol_proto::v1::{DivestmentRecord, DivestmentStatus, PublishDatasetRequest};
    const TOPIC: &str = "tabadol.dataset.ipo.divestment-list.sso";
    let broker = Broker::start().await;
    let hub = TestHub::start_with_kafka(Some((&broker.addr(), 10_000))).await;
    let ids: Vec<String> = (0..3)
        .map(|i| tabadol_policy::ids::legal_entity_id_from_prefix(&format!("101000000{i}")))
        .collect();
    let rec = |id: &str| DivestmentRecord {
        enterprise_id: id.to_owned(),
        name: "شرکت نمونه".into(),
        status: DivestmentStatus::ToBeDivested as i32,
        last_entry_date: "1403/01/01".into(),
        exit_date: String::new(),
        earlier_periods: vec![],
    };
    let mut client = DatasetsClient::new(hub.channel("ipo").await);
    client
        .publish(PublishDatasetRequest {
            dataset: "ipo.divestment-list".into(),
            version: "1403-05".into(),
            records: vec![rec(&ids[0]), rec(&ids[1])],
        })
        .await
        .unwrap();
    // The topic appears once the relay has created it.
    let md_client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let md = md_client
            .fetch_metadata(Some(TOPIC), Duration::from_secs(5))
            .unwrap();
        if md
            .topics()
            .iter()
            .any(|t| t.name() == TOPIC && !t.partitions().is_empty() && t.error().is_none())
        {
            break;
        }
        assert!(Instant::now() < deadline, "topic {TOPIC} never created");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = reader(&broker.addr(), &[TOPIC.to_string()]);
    let mut seen: Vec<DatasetRecord> = Vec::new();
    read_dataset(&c, 2, &mut seen).await;
    assert_eq!(seen[0].0, ids[0]);
    assert_eq!(seen[1].0, ids[1]);
    assert_eq!(seen[0].1.as_ref().unwrap().enterprise_id, ids[0]);
    assert_eq!(seen[0].2, "1403-05");

    client
        .publish(PublishDatasetRequest {
            dataset: "ipo.divestment-list".into(),
            version: "1403-06".into(),
            records: vec![rec(&ids[1]), rec(&ids[2])],
        })
        .await
        .unwrap();
    read_dataset(&c, 5, &mut seen).await;
    let second: HashMap<String, bool> = seen[2..]
        .iter()
        .map(|(k, v, _)| (k.clone(), v.is_some()))
        .collect();
    assert_eq!(
        second,
        HashMap::from([
            (ids[0].clone(), false), // left the list: tombstone
            (ids[1].clone(), true),
            (ids[2].clone(), true),
        ])
    );
    let md = md_client
        .fetch_metadata(Some(TOPIC), Duration::from_secs(5))
        .unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 1);
    // Created compacted: the latest record per enterprise is what a new reader gets.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", broker.addr())
            .create()
            .unwrap();
    let configs = admin
        .describe_configs(
            [&rdkafka::admin::ResourceSpecifier::Topic(TOPIC)],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    let config = configs.into_iter().next().unwrap().expect("topic config");
    assert_eq!(
        config
            .get("cleanup.policy")
            .and_then(|e| e.value.as_deref()),
        Some("compact"),
        "{:?}",
        config.entries
    );
    hub.stop().await;
}
