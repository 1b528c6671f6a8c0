//! The hub's Kafka clients: how to reach the cluster (`kafka:` options), the idempotent
//! gapless producer and the admin client, built one way for the relay and the manifests.

use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

/// How the hub talks to Kafka (the `kafka:` section).
#[derive(Debug, Clone)]
pub struct KafkaOptions {
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
    /// How often the same operator alert (e.g. a missing ACL on one topic) is logged again
    /// while it lasts.
    pub alert_every: Duration,
    /// Further librdkafka properties (TLS of the cluster, ...), from `kafka.properties`.
    pub properties: Vec<(String, String)>,
}

impl KafkaOptions {
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
            alert_every: Duration::from_secs(60),
            properties: Vec::new(),
        }
    }
}

/// The client configuration every Kafka client of the hub starts from.
pub fn base_config(opts: &KafkaOptions, client_id: &str) -> ClientConfig {
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
pub fn producer(opts: &KafkaOptions, client_id: &str) -> Result<FutureProducer, KafkaError> {
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
    opts: &KafkaOptions,
    client_id: &str,
) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    base_config(opts, client_id).create()
}

/// The producer and the admin client of one hub task, or a sentence naming the setting.
pub fn clients(
    opts: &KafkaOptions,
    client_id: &str,
) -> anyhow::Result<(FutureProducer, AdminClient<DefaultClientContext>)> {
    let p = producer(opts, client_id)
        .map_err(|e| anyhow::anyhow!("kafka.brokers `{}`: {e}", opts.brokers))?;
    let a = admin(opts, &format!("{client_id}-admin"))
        .map_err(|e| anyhow::anyhow!("kafka.brokers `{}`: {e}", opts.brokers))?;
    Ok((p, a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::Producer as _;

    /// librdkafka (bundled with rdkafka) accepts the producer's delivery settings together,
    /// and does check them: the gapless guarantee alone is refused.
    #[test]
    fn producer_takes_idempotence_with_the_gapless_guarantee() {
        let opts = KafkaOptions::new("127.0.0.1:9");
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
