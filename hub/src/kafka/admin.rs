//! Topic administration shared by the relay and the manifests: create the topics the hub
//! writes (remembering which exist), and tell a refused topic that exists all the same
//! from one that does not.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer as _};

use crate::kafka::failure::{classify, missing_acl, operator_hint, Alerts, FailureKind};
use crate::kafka::producer::KafkaOptions;

/// The topics one task of the hub writes, created on first use.
pub struct Topics {
    admin: AdminClient<DefaultClientContext>,
    partitions: i32,
    replication: i32,
    timeout: Duration,
    /// Topics known to exist on the broker.
    ensured: HashSet<String>,
}

impl Topics {
    /// Topics created with `partitions` partitions and the configured replication.
    pub fn new(
        admin: AdminClient<DefaultClientContext>,
        opts: &KafkaOptions,
        partitions: i32,
    ) -> Self {
        Self {
            admin,
            partitions,
            replication: opts.topic_replication,
            timeout: opts.message_timeout,
            ensured: HashSet::new(),
        }
    }

    /// Checks `topic` again before its next use (the broker may have lost it).
    pub fn forget(&mut self, topic: &str) {
        self.ensured.remove(topic);
    }

    /// Checks every topic again before its next use (after an outage).
    pub fn forget_all(&mut self) {
        self.ensured.clear();
    }

    /// Makes sure the topics exist. Returns the topics refused for a permanent reason that
    /// do not exist either (their copies are dead-lettered); `Err` (a sentence) when the
    /// round must be retried: the cluster is unreachable, or refuses for a reason an
    /// operator fixes (a missing Create ACL, a replication above the broker count), which
    /// is then alerted through `alerts`.
    pub async fn ensure<'a>(
        &mut self,
        wanted: impl IntoIterator<Item = &'a String>,
        metadata: &FutureProducer,
        alerts: &mut Alerts,
    ) -> Result<HashSet<String>, String> {
        let mut missing: Vec<&String> = wanted
            .into_iter()
            .filter(|t| !self.ensured.contains(*t))
            .collect();
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            return Ok(HashSet::new());
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                NewTopic::new(
                    t.as_str(),
                    self.partitions,
                    TopicReplication::Fixed(self.replication),
                )
            })
            .collect();
        let admin_opts = AdminOptions::new()
            .operation_timeout(Some(self.timeout))
            .request_timeout(Some(self.timeout));
        let results = self
            .admin
            .create_topics(new.iter(), &admin_opts)
            .await
            .map_err(|e| format!("creating topics: {e}"))?;
        let mut refused = HashSet::new();
        for r in results {
            let (t, code) = match r {
                Ok(t) | Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    alerts.clear(&create_key(&t));
                    self.ensured.insert(t);
                    continue;
                }
                Err(e) => e,
            };
            let permanent = classify(&KafkaError::AdminOp(code)) == FailureKind::Permanent;
            if !permanent && code != RDKafkaErrorCode::TopicAuthorizationFailed {
                let hint = operator_hint(code);
                if !hint.is_empty() && alerts.due(&create_key(&t)).is_some() {
                    tracing::error!(message = "kafka cannot create a topic", topic = %t, error = %code, action = hint);
                }
                return Err(format!("creating topic {t}: {code}"));
            }
            // Refused, but it may exist all the same: created by an operator while the hub
            // lacks the Create ACL (Kafka checks that before whether the topic exists).
            match self.topic_exists(metadata, &t).await {
                Ok(true) => {
                    tracing::info!(message = "kafka refused to create a topic that exists; using it", topic = %t, error = %code);
                    alerts.clear(&create_key(&t));
                    self.ensured.insert(t);
                }
                Ok(false) if permanent => {
                    tracing::error!(
                        message = "kafka refused to create a topic; its copies are dead-lettered",
                        topic = %t,
                        error = %code,
                        action = operator_hint(code),
                    );
                    refused.insert(t);
                }
                Ok(false) => {
                    // Not allowed to create it: an ACL gap, retried until closed.
                    if let Some(held_back) = alerts.due(&create_key(&t)) {
                        tracing::error!(
                            message = "ALERT: kafka denies the hub creating a topic; its events wait in the outbox",
                            topic = %t,
                            error = %code,
                            add_acl = %missing_acl("Create", &t),
                            alerts_held_back = held_back,
                        );
                    }
                    return Err(format!(
                        "creating topic {t}: {code} (the hub lacks the Create ACL)"
                    ));
                }
                Err(e) => {
                    return Err(format!(
                        "creating topic {t}: {code}; cannot tell whether it exists: {e}"
                    ))
                }
            }
        }
        Ok(refused)
    }

    /// Whether the brokers report `topic` with partitions (and no error, e.g. authorization).
    async fn topic_exists(&self, client: &FutureProducer, topic: &str) -> Result<bool, KafkaError> {
        let producer = client.clone();
        let topic = topic.to_owned();
        let timeout = self.timeout;
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
}

/// The alert key of creating `topic` (writing it is alerted on its own).
fn create_key(topic: &str) -> String {
    format!("create {topic}")
}
