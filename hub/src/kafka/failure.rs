//! How a failed Kafka delivery or topic creation is handled (retried or dead-lettered),
//! what an operator must do about it, and the rate-limited alerts that say so.
//!
//! Shared by the relay and the daily manifests, so both treat the same broker answer alike.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::kafka::acls::{DEFAULT_HUB_PRINCIPAL, TOPIC_PREFIX};

/// How a failed delivery is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Try again later (broker down, timeout, leader moving, missing ACL, queue full...):
    /// the event stays in the outbox and the relay's cursor does not move past it.
    Retry,
    /// Will never succeed as sent (message too large, invalid topic name, the cluster's
    /// topic policy...): dead-letter it.
    Permanent,
}

/// The broker's (or librdkafka's) error code, when the error carries one.
pub fn code_of(err: &KafkaError) -> Option<RDKafkaErrorCode> {
    match err {
        KafkaError::MessageProduction(c) | KafkaError::AdminOp(c) => Some(*c),
        _ => None,
    }
}

/// Classifies a librdkafka delivery (or topic creation) error.
///
/// Permanent means the broker will never accept this message or this topic as sent; it is
/// dead-lettered. Everything about the connection, the cluster, the hub's rights or the
/// producer itself is retried: dead-lettering those would skip every event until someone
/// noticed, and the subscriber would miss them for good.
pub fn classify(err: &KafkaError) -> FailureKind {
    use RDKafkaErrorCode as C;
    let Some(code) = code_of(err) else {
        // Anything else (client creation, canceled, ...) is about the client, not the message.
        return FailureKind::Retry;
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
        // The topic is refused: its name or the cluster's creation policy.
        | C::InvalidTopic
        | C::PolicyViolation => FailureKind::Permanent,
        // Transient, listed for the reader (the default is Retry too):
        // - the hub may not write (or create) the topic: an ACL gap an operator closes;
        //   the events wait in the outbox meanwhile, with an alert naming the ACL;
        // - the topic is not (yet) in the client's metadata, or the broker lost it:
        //   it is created again before the next attempt;
        // - a fatal producer error (the gapless guarantee, a fenced or out-of-sequence
        //   idempotent producer) and the messages it purged: the producer is rebuilt;
        // - cluster-wide refusals (no IdempotentWrite on the cluster, acks=all refused,
        //   a replication factor above the broker count): every event would fail alike,
        //   so they wait in the outbox for an operator instead of all being dead-lettered.
        C::TopicAuthorizationFailed
        | C::UnknownTopic
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
pub fn topic_unknown(err: &KafkaError) -> bool {
    matches!(
        err,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownPartition
        )
    )
}

/// Whether the error is the brokers denying the hub a topic (a missing ACL).
pub fn topic_denied(err: &KafkaError) -> bool {
    code_of(err) == Some(RDKafkaErrorCode::TopicAuthorizationFailed)
}

/// What an operator must do about an error that no retry will fix by itself.
pub fn operator_hint(code: RDKafkaErrorCode) -> &'static str {
    use RDKafkaErrorCode as C;
    match code {
        C::TopicAuthorizationFailed => {
            "the brokers deny the hub this topic: an operator must fix the Kafka ACLs \
             (`tabadol policy kafka-acls` prints them); events wait in the outbox"
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
        C::MessageSizeTooLarge | C::InvalidMessageSize => {
            "the brokers refuse the message size: raise the topic's max.message.bytes, then \
             `tabadol events dead-letters replay`"
        }
        _ => "",
    }
}

/// [`operator_hint`] of an error ("" when it carries no code).
pub fn hint_of(e: &KafkaError) -> &'static str {
    code_of(e).map(operator_hint).unwrap_or("")
}

/// The ACL an operator must add when the brokers deny the hub `operation` (`Write`,
/// `Create`) on `topic`, as a `kafka-acls.sh` argument list.
pub fn missing_acl(operation: &str, topic: &str) -> String {
    format!(
        "kafka-acls.sh --add --allow-principal <the hub's principal, e.g. {DEFAULT_HUB_PRINCIPAL}> \
         --operation {operation} --topic {TOPIC_PREFIX} --resource-pattern-type prefixed \
         (the brokers denied {operation} on topic {topic}; `tabadol policy kafka-acls` prints \
         every ACL the policy implies); the events wait in the outbox and are delivered once it is added"
    )
}

/// Logs an alert at most once per `every` for each key (a topic), counting what it held
/// back, so an outage of hours does not write a line per event and round.
#[derive(Debug)]
pub struct Alerts {
    every: Duration,
    last: HashMap<String, (Instant, u64)>,
}

impl Alerts {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: HashMap::new(),
        }
    }

    /// Whether an alert for `key` is due now; if so, returns how many were held back
    /// since the last one, else counts this one as held back.
    pub fn due(&mut self, key: &str) -> Option<u64> {
        let now = Instant::now();
        match self.last.get_mut(key) {
            Some((at, held)) if now.duration_since(*at) < self.every => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = *held;
                *at = now;
                *held = 0;
                Some(n)
            }
            None => {
                self.last.insert(key.to_owned(), (now, 0));
                Some(0)
            }
        }
    }

    /// Forgets `key` (its problem is solved): the next occurrence alerts at once.
    pub fn clear(&mut self, key: &str) {
        self.last.remove(key);
    }
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
            // An ACL gap: retried until an operator closes it.
            C::TopicAuthorizationFailed,
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
            classify(&KafkaError::AdminOp(C::TopicAuthorizationFailed)),
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
        let acl = missing_acl("Write", "tabadol.death.v1.cbi");
        assert!(
            acl.contains("--operation Write --topic tabadol. --resource-pattern-type prefixed")
                && acl.contains("tabadol.death.v1.cbi"),
            "{acl}"
        );
    }

    /// One alert per key and interval; the held-back count comes with the next one.
    #[test]
    fn alerts_are_rate_limited_per_key() {
        let mut a = Alerts::new(Duration::from_secs(3600));
        assert_eq!(a.due("t1"), Some(0));
        assert_eq!(a.due("t1"), None);
        assert_eq!(a.due("t1"), None);
        assert_eq!(a.due("t2"), Some(0), "another topic alerts on its own");
        a.clear("t1");
        assert_eq!(
            a.due("t1"),
            Some(0),
            "a solved problem alerts again at once"
        );
        let mut fast = Alerts::new(Duration::ZERO);
        assert_eq!(fast.due("t"), Some(0));
        assert_eq!(fast.due("t"), Some(0));
    }
}
