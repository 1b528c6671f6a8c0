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
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::events::model::{ce_type, for_subscriber, source, topic};
use crate::events::outbox::{DeadLetter, Outbox, StoredEvent};
use crate::events::tokens::Tokens;
use crate::inquiry::pipeline::Hub;
use crate::kafka::admin::Topics;
use crate::kafka::cloudevents::Attributes;
use crate::kafka::failure::{
    classify, hint_of, missing_acl, topic_denied, topic_unknown, Alerts, FailureKind,
};
use crate::kafka::producer::{clients, producer};

const PRODUCER_ID: &str = "tabadol-hub-relay";

/// The outbox cursor name of the Kafka relay.
pub const CURSOR: &str = "kafka";

/// How the relay talks to Kafka: the hub's `kafka:` options.
pub type RelayOptions = crate::kafka::producer::KafkaOptions;

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

/// Starts the relay. Fails only when the Kafka client cannot be configured (bad broker
/// list); an unreachable broker is waited for.
pub fn spawn(
    opts: RelayOptions,
    outbox: Arc<Outbox>,
    tokens: Arc<Tokens>,
    hub: Arc<Hub>,
) -> anyhow::Result<RelayHandle> {
    let (producer, admin) = clients(&opts, PRODUCER_ID)?;
    let counters = Arc::new(Counters::default());
    counters
        .cursor
        .store(outbox.cursor(CURSOR).unwrap_or(0), Ordering::Relaxed);
    let (stop, stop_rx) = watch::channel(false);
    let relay = Relay {
        topics: Topics::new(admin, &opts, opts.topic_partitions),
        alerts: Alerts::new(opts.alert_every),
        opts,
        producer,
        outbox: outbox.clone(),
        tokens,
        hub,
        counters: counters.clone(),
        given_up: HashSet::new(),
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
    topics: Topics,
    /// Operator alerts (missing ACLs), at most one per topic and `alert_every`.
    alerts: Alerts,
    outbox: Arc<Outbox>,
    tokens: Arc<Tokens>,
    hub: Arc<Hub>,
    counters: Arc<Counters>,
    /// Copies (sequence, agency) beyond the cursor already dead-lettered: not sent again
    /// when their event is retried for another copy's sake.
    given_up: HashSet<(u64, String)>,
    stop: watch::Receiver<bool>,
}

enum Round {
    /// Everything up to this sequence is handled.
    Done(u64),
    /// Handled up to `.0`; a retriable failure stopped the round.
    Retry(u64, String),
}

/// A copy given up for a permanent reason.
struct Failed {
    seq: u64,
    agency: String,
    topic: String,
    reason: String,
    /// What an operator must do.
    action: &'static str,
}

/// What became of the copies of one send.
#[derive(Default)]
struct Sent {
    /// (sequence, agency) of every copy the broker acknowledged.
    delivered: Vec<(u64, String)>,
    permanent: Vec<Failed>,
    /// The first event with a retriable failure, and why.
    first_retry: Option<(u64, String)>,
}

impl Sent {
    fn retry(&mut self, seq: u64, reason: String) {
        if self.first_retry.as_ref().is_none_or(|(s, _)| seq < *s) {
            self.first_retry = Some((seq, reason));
        }
    }
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
            replayed_dead_letters = self.outbox.replays(usize::MAX).map(|r| r.len()).unwrap_or(0),
        );
        loop {
            if self.stopped() {
                break;
            }
            // Dead letters an operator replayed go first; they do not move the cursor.
            match self.replay_round().await {
                Ok(_) => {}
                Err(reason) => {
                    self.retry_later(&reason, cursor, backoff).await;
                    backoff = (backoff * 2).min(self.opts.max_backoff);
                    continue;
                }
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
                    self.retry_later(&reason, cursor, backoff).await;
                    backoff = (backoff * 2).min(self.opts.max_backoff);
                }
            }
        }
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        tracing::info!(message = "kafka relay stopped", cursor);
    }

    /// After a retriable failure: log it, start afresh (topics checked again, a new
    /// producer) and wait `backoff`.
    async fn retry_later(&mut self, reason: &str, cursor: u64, backoff: Duration) {
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
        // The broker may have come back without its topics (or the cluster may have
        // changed): check them again before the next attempt.
        self.topics.forget_all();
        // Every message of the round has been reported, so nothing is lost by replacing
        // the producer: a fresh one gets a new producer id and fresh metadata, which is
        // what an idempotent producer needs after its broker restarted (the old one can
        // stay wedged on the old producer state).
        self.rebuild_producer();
        self.sleep(backoff).await;
    }

    fn report(&self, cursor: u64, newest: Option<&StoredEvent>) {
        let dead_letters = self.counters.dead_letters.load(Ordering::Relaxed);
        let outbox_depth = self.outbox.last_seq().saturating_sub(cursor);
        let relay_lag_ms = newest.map(lag_ms).unwrap_or(0);
        let delivered = self.counters.delivered.load(Ordering::Relaxed);
        let retries = self.counters.retries.load(Ordering::Relaxed);
        if dead_letters > 0 {
            // Dead letters wait for an operator: keep saying so until someone looks.
            tracing::warn!(
                message = "kafka relay progress; some copies were dead-lettered (`tabadol events dead-letters list` shows them, `replay` sends them again)",
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

    /// Who gets `ev`: the subscribers recorded when it was accepted, or, for an event
    /// stored before the hub recorded them, those of the policy in force now.
    fn subscribers(&self, ev: &StoredEvent) -> Vec<String> {
        match &ev.subscribers {
            Some(list) => list.clone(),
            None => self
                .hub
                .policy()
                .policy
                .subscribers_of(&ev.event_type)
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Sends one batch; returns how far everything is handled.
    async fn round(&mut self, batch: &[StoredEvent]) -> Round {
        let start = batch[0].seq.saturating_sub(1);
        let plan: Vec<(&StoredEvent, Vec<String>)> = batch
            .iter()
            .map(|ev| {
                let mut subs = self.subscribers(ev);
                subs.retain(|a| !self.given_up.contains(&(ev.seq, a.clone())));
                (ev, subs)
            })
            .collect();
        let sent = match self.send(&plan).await {
            Ok(s) => s,
            Err(reason) => return Round::Retry(start, reason),
        };
        self.counters
            .delivered
            .fetch_add(sent.delivered.len() as u64, Ordering::Relaxed);
        let last = batch.last().map(|e| e.seq).unwrap_or(start);
        let handled_to = sent
            .first_retry
            .as_ref()
            .map(|(s, _)| s - 1)
            .unwrap_or(last);
        self.given_up.retain(|(seq, _)| *seq > handled_to);
        for f in sent.permanent {
            // A permanent failure is final whatever became of the other copies: kept now,
            // and not sent again when its event is retried for another copy.
            if f.seq > handled_to {
                self.given_up.insert((f.seq, f.agency.clone()));
            }
            tracing::error!(
                message = "kafka delivery failed permanently; dead-lettered",
                sequence = f.seq,
                subscriber = %f.agency,
                topic = %f.topic,
                reason = %f.reason,
                action = f.action,
            );
            if let Err(e) = self
                .outbox
                .dead_letter(f.seq, &f.agency, &f.topic, &f.reason)
            {
                tracing::error!(message = "cannot record a dead letter", sequence = f.seq, error = %e);
                return Round::Retry(f.seq - 1, format!("dead letter store: {e}"));
            }
            self.counters.dead_letters.fetch_add(1, Ordering::Relaxed);
        }
        match sent.first_retry {
            Some((seq, reason)) => Round::Retry(seq - 1, reason),
            None => Round::Done(last),
        }
    }

    /// Sends the dead letters an operator replayed, each to its own subscriber; a
    /// delivered one leaves the replay queue, a permanently failed one is a dead letter
    /// again. Returns how many were handled, or why the rest must wait.
    async fn replay_round(&mut self) -> Result<usize, String> {
        let pending = self
            .outbox
            .replays(self.opts.batch)
            .map_err(|e| format!("replayed dead letters: {e}"))?;
        if pending.is_empty() {
            return Ok(0);
        }
        let mut events: Vec<(StoredEvent, &DeadLetter)> = Vec::new();
        for d in &pending {
            match self.outbox.get(d.seq) {
                Ok(Some(ev)) => events.push((ev, d)),
                Ok(None) => {
                    tracing::error!(message = "a replayed dead letter names no stored event; dropped", sequence = d.seq, topic = %d.topic);
                    let _ = self.outbox.replay_delivered(d).await;
                }
                Err(e) => return Err(format!("replayed dead letter {}: {e}", d.seq)),
            }
        }
        let plan: Vec<(&StoredEvent, Vec<String>)> = events
            .iter()
            .map(|(ev, d)| (ev, vec![d.subscriber().to_owned()]))
            .collect();
        let sent = self.send(&plan).await?;
        let mut handled = 0;
        for (seq, agency) in &sent.delivered {
            if let Some((_, d)) = events
                .iter()
                .find(|(ev, d)| ev.seq == *seq && d.subscriber() == agency.as_str())
            {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::info!(message = "replayed dead letter delivered", sequence = seq, subscriber = %agency, topic = %d.topic);
                self.outbox
                    .replay_delivered(d)
                    .await
                    .map_err(|e| format!("replay queue: {e}"))?;
                handled += 1;
            }
        }
        for f in &sent.permanent {
            if let Some((_, d)) = events
                .iter()
                .find(|(ev, d)| ev.seq == f.seq && d.subscriber() == f.agency.as_str())
            {
                tracing::error!(message = "replayed dead letter failed permanently again; dead-lettered", sequence = f.seq, subscriber = %f.agency, topic = %f.topic, reason = %f.reason, action = f.action);
                self.outbox
                    .replay_failed(d, &f.reason)
                    .await
                    .map_err(|e| format!("replay queue: {e}"))?;
                handled += 1;
            }
        }
        match sent.first_retry {
            Some((_, reason)) => Err(reason),
            None => Ok(handled),
        }
    }

    /// Produces every copy of `plan` and collects every delivery report. `Err` when the
    /// topics cannot be made sure of (nothing was sent).
    async fn send(&mut self, plan: &[(&StoredEvent, Vec<String>)]) -> Result<Sent, String> {
        if self.producer.client().fatal_error().is_some() {
            // A fatal producer (e.g. the gapless guarantee tripped after the last round) only
            // fails every message: replace it before sending anything.
            self.rebuild_producer();
        }
        let wanted: HashSet<String> = plan
            .iter()
            .flat_map(|(ev, subs)| subs.iter().map(|a| topic(&ev.event_type, a)))
            .collect();
        let refused = self
            .topics
            .ensure(&wanted, &self.producer, &mut self.alerts)
            .await?;

        let mut out = Sent::default();
        let mut in_flight = Vec::new();
        'events: for (ev, subs) in plan {
            for agency in subs {
                let t = topic(&ev.event_type, agency);
                if refused.contains(&t) {
                    out.permanent.push(Failed {
                        seq: ev.seq,
                        agency: agency.clone(),
                        topic: t,
                        reason: "broker refused to create the topic".into(),
                        action: "",
                    });
                    continue;
                }
                let token = match self.tokens.token(agency, &ev.national_code) {
                    Ok(tk) => tk,
                    Err(e) => {
                        out.retry(ev.seq, format!("token of {agency}: {e}"));
                        break 'events;
                    }
                };
                let payload = tabadol_proto::v1::Event {
                    key_version: self.tokens.current_version(),
                    ..for_subscriber(ev, token.clone())
                }
                .encode_to_vec();
                let time = jiff::Timestamp::from_microsecond(ev.accepted_at_micros)
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
                    .to_string();
                let seq = ev.seq.to_string();
                let src = source(&ev.publisher);
                let ty = ce_type(&ev.event_type);
                let headers = Attributes {
                    id: &ev.hub_event_id,
                    source: &src,
                    r#type: &ty,
                    subject: &token,
                    dataschema: "tabadol.v1.Event",
                    time: Some(time.as_str()),
                    sequence: Some(seq.as_str()),
                }
                .headers();
                let record = FutureRecord::to(&t)
                    .key(token.as_bytes())
                    .payload(&payload)
                    .headers(headers);
                match self.producer.send_result(record) {
                    Ok(fut) => in_flight.push((ev.seq, agency.clone(), t, fut)),
                    Err((e, _)) if classify(&e) == FailureKind::Permanent => {
                        // Refused locally for good (e.g. larger than message.max.bytes).
                        out.permanent.push(Failed {
                            seq: ev.seq,
                            agency: agency.clone(),
                            topic: t,
                            reason: format!("refused by the producer: {e}"),
                            action: hint_of(&e),
                        });
                    }
                    Err((e, _)) => {
                        // Queue full, fatal producer or similar: wait for what is in flight,
                        // then resume here.
                        if topic_unknown(&e) {
                            self.topics.forget(&t);
                        }
                        out.retry(ev.seq, format!("enqueue to {t}: {e}"));
                        break 'events;
                    }
                }
            }
        }

        // The first event with a retriable failure bounds how far the cursor may move.
        for (seq, agency, t, fut) in in_flight {
            let result = match fut.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e),
                Err(_canceled) => Err(KafkaError::Canceled),
            };
            let e = match result {
                Ok(()) => {
                    // A topic that takes writes again alerts at once if it is denied anew.
                    self.alerts.clear(&format!("write {t}"));
                    out.delivered.push((seq, agency));
                    continue;
                }
                Err(e) => e,
            };
            match classify(&e) {
                FailureKind::Permanent => out.permanent.push(Failed {
                    seq,
                    agency,
                    reason: e.to_string(),
                    action: hint_of(&e),
                    topic: t,
                }),
                FailureKind::Retry => {
                    if topic_unknown(&e) {
                        // Not in the metadata yet, or the broker lost it (e.g. restarted
                        // without storage): create it again before the next attempt.
                        self.topics.forget(&t);
                    }
                    if topic_denied(&e) {
                        self.alert_denied(&t, &e);
                    }
                    let hint = hint_of(&e);
                    let reason = if hint.is_empty() {
                        format!("{t}: {e}")
                    } else {
                        format!("{t}: {e} ({hint})")
                    };
                    out.retry(seq, reason);
                }
            }
        }
        Ok(out)
    }

    /// The brokers deny the hub writing `t`: an alert naming the ACL, at most once per
    /// `alert_every` for that topic.
    fn alert_denied(&mut self, t: &str, e: &KafkaError) {
        if let Some(held_back) = self.alerts.due(&format!("write {t}")) {
            tracing::error!(
                message = "ALERT: kafka denies the hub writing a topic; its events wait in the outbox (the relay retries, nothing is dead-lettered)",
                topic = %t,
                error = %e,
                add_acl = %missing_acl("Write", t),
                alerts_held_back = held_back,
            );
        }
    }
}

fn lag_ms(ev: &StoredEvent) -> u64 {
    let now = jiff::Timestamp::now().as_microsecond();
    (now.saturating_sub(ev.accepted_at_micros) / 1000).max(0) as u64
}
