//! The Kafka relay: reads the durable outbox in sequence order and produces every event to
//! each subscriber's own topic `tabadol.<event-type>.<agency>`, keyed by that subscriber's
//! token, with CloudEvents binary-mode headers, through an idempotent producer (acks=all).
//!
//! Delivery is at-least-once and never silent: the relay's outbox cursor only moves past an
//! event once every subscriber's copy is acknowledged by the broker or, for a permanent
//! failure (e.g. the broker refuses the topic), recorded as a dead letter. A retriable
//! failure (broker down, timeout) makes the relay back off and resend from the first event
//! not yet fully delivered, so order per key is kept; a resent copy carries the same
//! `ce_id`, which consumers use to drop duplicates.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::events::model::{ce_type, for_subscriber, source, topic};
use crate::events::outbox::{Outbox, StoredEvent};
use crate::events::tokens::Tokens;
use crate::inquiry::pipeline::Hub;

const PRODUCER_ID: &str = "tabadol-hub-relay";
const ADMIN_ID: &str = "tabadol-hub-relay-admin";

/// The outbox cursor name of the Kafka relay.
pub const CURSOR: &str = "kafka";

/// How the relay talks to Kafka.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`.
    pub brokers: String,
    /// How long librdkafka keeps trying one message before reporting it failed.
    pub message_timeout: Duration,
    /// Outbox events read per round.
    pub batch: usize,
    /// Partitions of the topics the relay creates (`kafka.topic_partitions`).
    pub topic_partitions: i32,
    /// Replication factor of the topics the relay and the manifest task create
    /// (`kafka.topic_replication`): with acks=all, a record counts as delivered once every
    /// in-sync replica has it, so 1 means one broker's disk.
    pub topic_replication: i32,
    /// First back-off after a retriable failure (doubles up to `max_backoff`).
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How often progress (outbox depth, lag) is logged while idle.
    pub report_every: Duration,
    /// Further librdkafka properties (TLS of the cluster, ...), from `kafka.properties`.
    pub properties: Vec<(String, String)>,
}

impl RelayOptions {
    /// The defaults of a `kafka:` section (3 partitions, replication 3); a single-broker
    /// development cluster needs `topic_replication = 1`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            message_timeout: Duration::from_secs(30),
            batch: 256,
            topic_partitions: 3,
            topic_replication: 3,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            report_every: Duration::from_secs(30),
            properties: Vec::new(),
        }
    }
}

/// What the relay has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Messages acknowledged by the broker (one per event per subscriber).
    pub delivered: u64,
    /// Rounds retried after a retriable failure.
    pub retries: u64,
    /// Deliveries given up for a permanent reason (kept in the outbox's dead letters).
    pub dead_letters: u64,
    /// Highest outbox sequence fully handled.
    pub cursor: u64,
    /// Events accepted but not yet fully handled.
    pub outbox_depth: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    retries: AtomicU64,
    dead_letters: AtomicU64,
    cursor: AtomicU64,
}

/// A running relay.
pub struct RelayHandle {
    counters: Arc<Counters>,
    outbox: Arc<Outbox>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RelayHandle {
    pub fn stats(&self) -> RelayStats {
        let cursor = self.counters.cursor.load(Ordering::Relaxed);
        RelayStats {
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            dead_letters: self.counters.dead_letters.load(Ordering::Relaxed),
            cursor,
            outbox_depth: self.outbox.last_seq().saturating_sub(cursor),
        }
    }

    /// Stops after the round in flight; undelivered events stay in the outbox.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// How a failed delivery is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Try again later (broker down, timeout, leader moving, queue full...).
    Retry,
    /// Will never succeed as sent (refused topic, message too large...): dead-letter it.
    Permanent,
}

/// Classifies a librdkafka delivery (or topic creation) error.
///
/// Permanent means the broker will never accept this message or this topic as sent; it is
/// dead-lettered. Everything about the connection, the cluster or the producer itself is
/// retried: dead-lettering those would skip every event until someone noticed.
pub fn classify(err: &KafkaError) -> FailureKind {
    use RDKafkaErrorCode as C;
    let code = match err {
        KafkaError::MessageProduction(c) | KafkaError::AdminOp(c) => *c,
        // Anything else (client creation, canceled, ...) is about the client, not the message.
        _ => return FailureKind::Retry,
    };
    match code {
        // The message itself can never be accepted.
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::InvalidRecord
        | C::BadMessage
        | C::UnsupportedForMessageFormat
        | C::InvalidArgument
        // The topic is refused: its name, the cluster's creation policy, or the hub's ACLs
        // on it (an operator must fix them; see `tabadol policy kafka-acls`).
        | C::InvalidTopic
        | C::PolicyViolation
        | C::TopicAuthorizationFailed => FailureKind::Permanent,
        // Transient, listed for the reader (the default is Retry too):
        // - the topic is not (yet) in the client's metadata, or the broker lost it:
        //   it is created again before the next attempt;
        // - a fatal producer error (the gapless guarantee, a fenced or out-of-sequence
        //   idempotent producer) and the messages it purged: the producer is rebuilt;
        // - cluster-wide refusals (no IdempotentWrite on the cluster, acks=all refused,
        //   a replication factor above the broker count): every event would fail alike,
        //   so they wait in the outbox for an operator instead of all being dead-lettered.
        C::UnknownTopic
        | C::UnknownTopicOrPartition
        | C::UnknownPartition
        | C::Fatal
        | C::GaplessGuarantee
        | C::PurgeQueue
        | C::PurgeInflight
        | C::OutOfOrderSequenceNumber
        | C::ClusterAuthorizationFailed
        | C::InvalidRequiredAcks
        | C::InvalidReplicationFactor => FailureKind::Retry,
        _ => FailureKind::Retry,
    }
}

/// Whether the error means the topic is missing from the client's view (not created yet,
/// or lost by a broker that restarted without storage): it must be created again.
fn topic_unknown(err: &KafkaError) -> bool {
    matches!(
        err,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownPartition
        )
    )
}

/// What an operator must do about an error that no retry will fix by itself.
fn operator_hint(code: RDKafkaErrorCode) -> &'static str {
    use RDKafkaErrorCode as C;
    match code {
        C::TopicAuthorizationFailed => {
            "the brokers deny the hub this topic: an operator must fix the Kafka ACLs \
             (`tabadol policy kafka-acls` prints them)"
        }
        C::ClusterAuthorizationFailed => {
            "the brokers deny the hub IdempotentWrite on the cluster: an operator must fix the \
             Kafka ACLs (`tabadol policy kafka-acls` prints them); events wait in the outbox"
        }
        C::InvalidReplicationFactor => {
            "kafka.topic_replication is more than the cluster's brokers: lower it or add \
             brokers; events wait in the outbox"
        }
        C::PolicyViolation => "the cluster's topic policy refuses the topic",
        _ => "",
    }
}

/// The client configuration every Kafka client of the hub starts from.
pub fn base_config(opts: &RelayOptions, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("log_level", "3");
    for (k, v) in &opts.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &opts.brokers)
        .set("client.id", client_id);
    c
}

/// An idempotent producer with acks=all and the gapless guarantee: if a batch fails for
/// good, librdkafka raises a fatal error instead of acknowledging later messages of that
/// partition, so a later event of a key never counts as delivered before an earlier one
/// (the relay then rebuilds the producer and resends from the first undelivered event).
pub fn producer(opts: &RelayOptions, client_id: &str) -> Result<FutureProducer, KafkaError> {
    base_config(opts, client_id)
        .set("enable.idempotence", "true")
        .set("enable.gapless.guarantee", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            opts.message_timeout.as_millis().to_string(),
        )
        .create()
}

/// An admin client (topic creation).
pub fn admin(
    opts: &RelayOptions,
    client_id: &str,
) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    base_config(opts, client_id).create()
}

/// Starts the relay. Fails only when the Kafka client cannot be configured (bad broker
/// list); an unreachable broker is waited for.
pub fn spawn(
    opts: RelayOptions,
    outbox: Arc<Outbox>,
    tokens: Arc<Tokens>,
    hub: Arc<Hub>,
) -> anyhow::Result<RelayHandle> {
    let producer = producer(&opts, PRODUCER_ID)
        .map_err(|e| anyhow::anyhow!("kafka.brokers `{}`: {e}", opts.brokers))?;
    let admin = admin(&opts, ADMIN_ID)
        .map_err(|e| anyhow::anyhow!("kafka.brokers `{}`: {e}", opts.brokers))?;
    let counters = Arc::new(Counters::default());
    counters
        .cursor
        .store(outbox.cursor(CURSOR).unwrap_or(0), Ordering::Relaxed);
    let (stop, stop_rx) = watch::channel(false);
    let relay = Relay {
        opts,
        producer,
        admin,
        outbox: outbox.clone(),
        tokens,
        hub,
        counters: counters.clone(),
        ensured: HashSet::new(),
        stop: stop_rx,
    };
    let task = tokio::spawn(relay.run());
    Ok(RelayHandle {
        counters,
        outbox,
        stop,
        task,
    })
}

struct Relay {
    opts: RelayOptions,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    outbox: Arc<Outbox>,
    tokens: Arc<Tokens>,
    hub: Arc<Hub>,
    counters: Arc<Counters>,
    /// Topics known to exist on the broker.
    ensured: HashSet<String>,
    stop: watch::Receiver<bool>,
}

/// One message of a round: which event, to whom.
struct Outgoing {
    seq: u64,
    topic: String,
}

enum Round {
    /// Everything up to this sequence is handled.
    Done(u64),
    /// Handled up to `.0`; a retriable failure stopped the round.
    Retry(u64, String),
}

impl Relay {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    async fn run(mut self) {
        let mut cursor = self.counters.cursor.load(Ordering::Relaxed);
        let mut watch = self.outbox.watch();
        let mut backoff = self.opts.min_backoff;
        let mut last_report = Instant::now();
        tracing::info!(
            message = "kafka relay started",
            brokers = %self.opts.brokers,
            topic_partitions = self.opts.topic_partitions,
            topic_replication = self.opts.topic_replication,
            cursor,
            outbox_depth = self.outbox.last_seq().saturating_sub(cursor),
        );
        loop {
            if self.stopped() {
                break;
            }
            let batch = match self.outbox.read_after(cursor, self.opts.batch) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(message = "kafka relay cannot read the outbox", error = %e);
                    self.sleep(self.opts.max_backoff).await;
                    continue;
                }
            };
            if batch.is_empty() {
                if last_report.elapsed() >= self.opts.report_every {
                    self.report(cursor, None);
                    last_report = Instant::now();
                }
                let mut stop = self.stop.clone();
                tokio::select! {
                    r = watch.changed() => if r.is_err() { break },
                    _ = stop.changed() => {},
                    _ = tokio::time::sleep(self.opts.report_every) => {},
                }
                continue;
            }
            match self.round(&batch).await {
                Round::Done(to) => {
                    backoff = self.opts.min_backoff;
                    cursor = self.advance(cursor, to).await;
                    if last_report.elapsed() >= self.opts.report_every {
                        self.report(cursor, batch.last());
                        last_report = Instant::now();
                    }
                }
                Round::Retry(to, reason) => {
                    cursor = self.advance(cursor, to).await;
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    let oldest = self
                        .outbox
                        .read_after(cursor, 1)
                        .ok()
                        .and_then(|v| v.into_iter().next());
                    tracing::warn!(
                        message = "kafka delivery failed; will retry",
                        reason = %reason,
                        cursor,
                        outbox_depth = self.outbox.last_seq().saturating_sub(cursor),
                        relay_lag_ms = oldest.as_ref().map(lag_ms).unwrap_or(0),
                        retry_in_ms = backoff.as_millis() as u64,
                    );
                    // The broker may have come back without its topics (or the cluster
                    // may have changed): check them again before the next attempt.
                    self.ensured.clear();
                    // Every message of the round has been reported, so nothing is lost by
                    // replacing the producer: a fresh one gets a new producer id and fresh
                    // metadata, which is what an idempotent producer needs after its broker
                    // restarted (the old one can stay wedged on the old producer state).
                    self.rebuild_producer();
                    self.sleep(backoff).await;
                    backoff = (backoff * 2).min(self.opts.max_backoff);
                }
            }
        }
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        tracing::info!(message = "kafka relay stopped", cursor);
    }

    fn report(&self, cursor: u64, newest: Option<&StoredEvent>) {
        let dead_letters = self.counters.dead_letters.load(Ordering::Relaxed);
        let outbox_depth = self.outbox.last_seq().saturating_sub(cursor);
        let relay_lag_ms = newest.map(lag_ms).unwrap_or(0);
        let delivered = self.counters.delivered.load(Ordering::Relaxed);
        let retries = self.counters.retries.load(Ordering::Relaxed);
        if dead_letters > 0 {
            // Dead letters are never retried by the relay: keep saying so until someone looks.
            tracing::warn!(
                message = "kafka relay progress; some copies were dead-lettered (see the errors logged with their sequence and topic)",
                cursor,
                outbox_depth,
                relay_lag_ms,
                delivered,
                retries,
                dead_letters,
            );
        } else {
            tracing::info!(
                message = "kafka relay progress",
                cursor,
                outbox_depth,
                relay_lag_ms,
                delivered,
                retries,
                dead_letters,
            );
        }
    }

    fn rebuild_producer(&mut self) {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            tracing::warn!(message = "kafka producer hit a fatal error", error = %code, reason = %reason);
        }
        match producer(&self.opts, PRODUCER_ID) {
            Ok(p) => {
                tracing::debug!(message = "kafka producer recreated");
                self.producer = p;
            }
            Err(e) => tracing::error!(message = "cannot recreate the kafka producer", error = %e),
        }
    }

    async fn sleep(&self, d: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {},
            _ = stop.changed() => {},
        }
    }

    async fn advance(&self, cursor: u64, to: u64) -> u64 {
        if to <= cursor {
            return cursor;
        }
        if let Err(e) = self.outbox.set_cursor(CURSOR, to).await {
            // Not fatal: the events would be sent again after a restart (same ce_id).
            tracing::error!(message = "cannot store the kafka relay cursor", error = %e);
        }
        self.counters.cursor.store(to, Ordering::Relaxed);
        to
    }

    /// Makes sure the topics exist; a topic that cannot be created for a permanent reason
    /// and does not exist either is reported back so its messages are dead-lettered.
    async fn ensure_topics(&mut self, wanted: &HashSet<String>) -> Result<HashSet<String>, String> {
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|t| !self.ensured.contains(*t))
            .collect();
        if missing.is_empty() {
            return Ok(HashSet::new());
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                NewTopic::new(
                    t.as_str(),
                    self.opts.topic_partitions,
                    TopicReplication::Fixed(self.opts.topic_replication),
                )
            })
            .collect();
        let admin_opts = AdminOptions::new()
            .operation_timeout(Some(self.opts.message_timeout))
            .request_timeout(Some(self.opts.message_timeout));
        let results = self
            .admin
            .create_topics(new.iter(), &admin_opts)
            .await
            .map_err(|e| format!("creating topics: {e}"))?;
        let mut refused = HashSet::new();
        for r in results {
            match r {
                Ok(t) | Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    self.ensured.insert(t);
                }
                Err((t, code)) if classify(&KafkaError::AdminOp(code)) == FailureKind::Retry => {
                    let hint = operator_hint(code);
                    if !hint.is_empty() {
                        tracing::error!(message = "kafka cannot create a topic", topic = %t, error = %code, action = hint);
                    }
                    return Err(format!("creating topic {t}: {code}"));
                }
                Err((t, code)) => {
                    // Refused for good, but it may exist all the same: created by an
                    // operator while the hub lacks the Create ACL (Kafka checks that before
                    // whether the topic exists). Only a topic the hub cannot see is a dead end.
                    match self.topic_exists(&t).await {
                        Ok(true) => {
                            tracing::info!(message = "kafka refused to create a topic that exists; using it", topic = %t, error = %code);
                            self.ensured.insert(t);
                        }
                        Ok(false) => {
                            tracing::error!(
                                message = "kafka refused to create a topic; its copies are dead-lettered",
                                topic = %t,
                                error = %code,
                                action = operator_hint(code),
                            );
                            refused.insert(t);
                        }
                        Err(e) => {
                            return Err(format!(
                                "creating topic {t}: {code}; cannot tell whether it exists: {e}"
                            ))
                        }
                    }
                }
            }
        }
        Ok(refused)
    }

    /// Whether the brokers report `topic` with partitions (and no error, e.g. authorization).
    async fn topic_exists(&self, topic: &str) -> Result<bool, KafkaError> {
        let producer = self.producer.clone();
        let topic = topic.to_owned();
        let timeout = self.opts.message_timeout;
        tokio::task::spawn_blocking(move || {
            let md = producer.client().fetch_metadata(Some(&topic), timeout)?;
            Ok(md
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Sends one batch; returns how far everything is handled.
    async fn round(&mut self, batch: &[StoredEvent]) -> Round {
        let start = batch[0].seq.saturating_sub(1);
        if self.producer.client().fatal_error().is_some() {
            // A fatal producer (e.g. the gapless guarantee tripped after the last round) only
            // fails every message: replace it before sending anything.
            self.rebuild_producer();
        }
        // Who gets what, under the current policy.
        let plan: Vec<(&StoredEvent, Vec<String>)> = {
            let state = self.hub.policy();
            batch
                .iter()
                .map(|ev| {
                    let subs = state
                        .policy
                        .subscribers_of(&ev.event_type)
                        .into_iter()
                        .map(str::to_owned)
                        .collect();
                    (ev, subs)
                })
                .collect()
        };
        let wanted: HashSet<String> = plan
            .iter()
            .flat_map(|(ev, subs)| subs.iter().map(|a| topic(&ev.event_type, a)))
            .collect();
        let refused = match self.ensure_topics(&wanted).await {
            Ok(r) => r,
            Err(reason) => return Round::Retry(start, reason),
        };

        let mut sent: Vec<(Outgoing, rdkafka::producer::DeliveryFuture)> = Vec::new();
        // (sequence, topic, reason, what an operator must do)
        let mut permanent: Vec<(u64, String, String, &'static str)> = Vec::new();
        let mut enqueue_failure: Option<(u64, String)> = None;
        'events: for (ev, subs) in &plan {
            for agency in subs {
                let t = topic(&ev.event_type, agency);
                if refused.contains(&t) {
                    permanent.push((ev.seq, t, "broker refused to create the topic".into(), ""));
                    continue;
                }
                let token = match self.tokens.token(agency, &ev.national_code) {
                    Ok(tk) => tk,
                    Err(e) => {
                        enqueue_failure = Some((ev.seq, format!("token of {agency}: {e}")));
                        break 'events;
                    }
                };
                let payload = for_subscriber(ev, token.clone()).encode_to_vec();
                let time = jiff::Timestamp::from_microsecond(ev.accepted_at_micros)
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
                    .to_string();
                let seq = ev.seq.to_string();
                let src = source(&ev.publisher);
                let ty = ce_type(&ev.event_type);
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "ce_specversion",
                        value: Some("1.0"),
                    })
                    .insert(Header {
                        key: "ce_id",
                        value: Some(ev.hub_event_id.as_str()),
                    })
                    .insert(Header {
                        key: "ce_source",
                        value: Some(src.as_str()),
                    })
                    .insert(Header {
                        key: "ce_type",
                        value: Some(ty.as_str()),
                    })
                    .insert(Header {
                        key: "ce_time",
                        value: Some(time.as_str()),
                    })
                    .insert(Header {
                        key: "ce_subject",
                        value: Some(token.as_str()),
                    })
                    .insert(Header {
                        key: "content-type",
                        value: Some("application/protobuf"),
                    })
                    .insert(Header {
                        key: "ce_dataschema",
                        value: Some("tabadol.v1.Event"),
                    })
                    .insert(Header {
                        key: "tabadol_sequence",
                        value: Some(seq.as_str()),
                    });
                let record = FutureRecord::to(&t)
                    .key(token.as_bytes())
                    .payload(&payload)
                    .headers(headers);
                match self.producer.send_result(record) {
                    Ok(fut) => sent.push((
                        Outgoing {
                            seq: ev.seq,
                            topic: t,
                        },
                        fut,
                    )),
                    Err((e, _)) if classify(&e) == FailureKind::Permanent => {
                        // Refused locally for good (e.g. larger than message.max.bytes).
                        permanent.push((
                            ev.seq,
                            t,
                            format!("refused by the producer: {e}"),
                            hint_of(&e),
                        ));
                    }
                    Err((e, _)) => {
                        // Queue full, fatal producer or similar: wait for what is in flight,
                        // then resume here.
                        if topic_unknown(&e) {
                            self.ensured.remove(&t);
                        }
                        enqueue_failure = Some((ev.seq, format!("enqueue to {t}: {e}")));
                        break 'events;
                    }
                }
            }
        }

        // Collect every delivery report; the first event with a retriable failure bounds
        // how far the cursor may move.
        let mut first_retry: Option<(u64, String)> = enqueue_failure;
        for (out, fut) in sent {
            let result = match fut.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e),
                Err(_canceled) => Err(KafkaError::Canceled),
            };
            match result {
                Ok(()) => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => match classify(&e) {
                    FailureKind::Permanent => {
                        let hint = hint_of(&e);
                        permanent.push((out.seq, out.topic, e.to_string(), hint))
                    }
                    FailureKind::Retry => {
                        if topic_unknown(&e) {
                            // Not in the metadata yet, or the broker lost it (e.g. restarted
                            // without storage): create it again before the next attempt.
                            self.ensured.remove(&out.topic);
                        }
                        if first_retry.as_ref().is_none_or(|(s, _)| out.seq < *s) {
                            let hint = hint_of(&e);
                            let reason = if hint.is_empty() {
                                format!("{}: {e}", out.topic)
                            } else {
                                format!("{}: {e} ({hint})", out.topic)
                            };
                            first_retry = Some((out.seq, reason));
                        }
                    }
                },
            }
        }
        let last = batch.last().map(|e| e.seq).unwrap_or(start);
        let handled_to = first_retry.as_ref().map(|(s, _)| s - 1).unwrap_or(last);
        for (seq, t, reason, action) in permanent {
            if seq > handled_to {
                continue; // will be retried with its event anyway
            }
            tracing::error!(
                message = "kafka delivery failed permanently; dead-lettered",
                sequence = seq,
                topic = %t,
                reason = %reason,
                action,
            );
            if let Err(e) = self.outbox.dead_letter(seq, &t, &reason) {
                tracing::error!(message = "cannot record a dead letter", sequence = seq, error = %e);
                return Round::Retry(seq - 1, format!("dead letter store: {e}"));
            }
            self.counters.dead_letters.fetch_add(1, Ordering::Relaxed);
        }
        match first_retry {
            Some((seq, reason)) => Round::Retry(seq - 1, reason),
            None => Round::Done(last),
        }
    }
}

fn hint_of(e: &KafkaError) -> &'static str {
    match e {
        KafkaError::MessageProduction(c) | KafkaError::AdminOp(c) => operator_hint(*c),
        _ => "",
    }
}

fn lag_ms(ev: &StoredEvent) -> u64 {
    let now = jiff::Timestamp::now().as_microsecond();
    (now.saturating_sub(ev.accepted_at_micros) / 1000).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce(c: RDKafkaErrorCode) -> FailureKind {
        classify(&KafkaError::MessageProduction(c))
    }

    #[test]
    fn classification() {
        use RDKafkaErrorCode as C;
        for c in [
            C::MessageTimedOut,
            C::BrokerTransportFailure,
            C::UnknownTopicOrPartition,
            // librdkafka's local "unknown topic" (-188): not in the metadata yet.
            C::UnknownTopic,
            // A fatal producer (gapless guarantee, fenced idempotent producer) and the
            // messages it purged: retried with a rebuilt producer.
            C::Fatal,
            C::GaplessGuarantee,
            C::PurgeQueue,
            C::PurgeInflight,
            C::OutOfOrderSequenceNumber,
            // Cluster-wide: would dead-letter every event alike.
            C::ClusterAuthorizationFailed,
            C::InvalidRequiredAcks,
        ] {
            assert_eq!(produce(c), FailureKind::Retry, "{c:?}");
        }
        for c in [
            C::MessageSizeTooLarge,
            C::InvalidMessage,
            C::InvalidRecord,
            C::TopicAuthorizationFailed,
            C::InvalidTopic,
        ] {
            assert_eq!(produce(c), FailureKind::Permanent, "{c:?}");
        }
        // Topic creation.
        assert_eq!(
            classify(&KafkaError::AdminOp(C::InvalidReplicationFactor)),
            FailureKind::Retry
        );
        assert_eq!(
            classify(&KafkaError::AdminOp(C::PolicyViolation)),
            FailureKind::Permanent
        );
        assert_eq!(classify(&KafkaError::Canceled), FailureKind::Retry);
    }

    #[test]
    fn unknown_topic_sends_the_topic_back_to_creation() {
        assert!(topic_unknown(&KafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownTopic
        )));
        assert!(topic_unknown(&KafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownTopicOrPartition
        )));
        assert!(!topic_unknown(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
    }

    #[test]
    fn authorization_errors_tell_the_operator_to_fix_the_acls() {
        for c in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
        ] {
            let hint = operator_hint(c);
            assert!(
                hint.contains("ACLs") && hint.contains("kafka-acls"),
                "{c:?}: {hint}"
            );
        }
        assert!(operator_hint(RDKafkaErrorCode::InvalidReplicationFactor)
            .contains("kafka.topic_replication"));
    }

    /// librdkafka (bundled with rdkafka) accepts the producer's delivery settings together,
    /// and does check them: the gapless guarantee alone is refused.
    #[test]
    fn producer_takes_idempotence_with_the_gapless_guarantee() {
        let opts = RelayOptions::new("127.0.0.1:9");
        let p = producer(&opts, "tabadol-test").expect("idempotent gapless producer");
        assert!(p.client().fatal_error().is_none());
        let refused: Result<FutureProducer, _> = base_config(&opts, "tabadol-test")
            .set("enable.gapless.guarantee", "true")
            .create();
        let err = refused
            .err()
            .expect("gapless without idempotence is refused");
        assert!(
            err.to_string().contains("enable.idempotence"),
            "unexpected error: {err}"
        );
    }
}
