//! Datasets on Kafka (R3): every reader of a dataset gets its own compacted topic
//! `tabadol.dataset.<dataset>.<reader>`, keyed by enterprise id, value the protobuf
//! `DivestmentRecord`; an enterprise that left the list gets a tombstone. A version counts
//! as delivered to a reader only once every record is acknowledged (then it is remembered
//! in the sled tree `dataset_delivered`); until then it is sent again after a back-off.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::events::datasets::Loaded;
use crate::inquiry::pipeline::Hub;
use crate::kafka::cloudevents::Attributes;
use crate::kafka::producer::{clients, KafkaOptions};

/// The topic of one reader of one dataset.
pub fn topic(dataset: &str, reader: &str) -> String {
    format!("tabadol.dataset.{dataset}.{reader}")
}

/// What a reader's topic holds: the version and the enterprise ids in it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Delivered {
    version: String,
    ids: BTreeSet<String>,
}

/// Starts the dataset relay; it ends when `stopping` turns true.
pub fn spawn(
    opts: KafkaOptions,
    hub: Arc<Hub>,
    db: &sled::Db,
    mut stopping: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (producer, admin) = clients(&opts, "tabadol-hub-datasets")?;
    let tree = db.open_tree("dataset_delivered")?;
    let mut changes = hub.datasets().changes();
    Ok(tokio::spawn(async move {
        let mut created: HashSet<String> = HashSet::new();
        let mut backoff = opts.min_backoff;
        loop {
            let pending = match deliver(&opts, &hub, &tree, &producer, &admin, &mut created).await {
                Ok(()) => {
                    backoff = opts.min_backoff;
                    false
                }
                Err(e) => {
                    tracing::warn!(message = "dataset delivery to Kafka failed; retrying", error = %e, retry_in_ms = backoff.as_millis() as u64);
                    true
                }
            };
            let wait = if pending {
                let w = backoff;
                backoff = (backoff * 2).min(opts.max_backoff);
                w
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = async { let _ = stopping.wait_for(|s| *s).await; } => return,
            }
        }
    }))
}

/// Sends every reader the current version of every dataset it has not got yet.
async fn deliver(
    opts: &KafkaOptions,
    hub: &Hub,
    tree: &sled::Tree,
    producer: &rdkafka::producer::FutureProducer,
    admin: &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    created: &mut HashSet<String>,
) -> Result<(), String> {
    let mut work: Vec<(String, Arc<Loaded>)> = Vec::new();
    {
        let state = hub.policy();
        for a in state.policy.agencies() {
            for d in &a.datasets {
                if let Some(l) = hub.datasets().get(&d.id) {
                    for r in &d.readers {
                        work.push((r.clone(), l.clone()));
                    }
                }
            }
        }
    }
    for (reader, loaded) in work {
        let v = &loaded.version;
        let key = format!("{}/{reader}", v.dataset);
        let before: Delivered = tree
            .get(&key)
            .map_err(|e| e.to_string())?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if before.version == v.version {
            continue;
        }
        let t = topic(&v.dataset, &reader);
        if !created.contains(&t) {
            let new = NewTopic::new(&t, 1, TopicReplication::Fixed(opts.topic_replication))
                .set("cleanup.policy", "compact");
            let admin_opts = AdminOptions::new().operation_timeout(Some(opts.message_timeout));
            let results = admin
                .create_topics([&new], &admin_opts)
                .await
                .map_err(|e| format!("creating topic {t}: {e}"))?;
            for r in results {
                match r {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, code)) => return Err(format!("creating topic {t}: {code}")),
                }
            }
            created.insert(t.clone());
        }
        let proto = v.to_proto();
        let source = format!("/tabadol/{}", v.publisher);
        let ty = format!("ir.tabadol.dataset.{}", v.dataset);
        let mut in_flight = Vec::with_capacity(proto.records.len());
        let mut ids = BTreeSet::new();
        for r in &proto.records {
            ids.insert(r.enterprise_id.clone());
            let payload = r.encode_to_vec();
            let id = format!("{}/{}/{}", v.dataset, v.version, r.enterprise_id);
            let headers = Attributes {
                id: &id,
                source: &source,
                r#type: &ty,
                subject: &r.enterprise_id,
                dataschema: "tabadol.v1.DivestmentRecord",
                time: Some(v.published_at.as_str()),
                sequence: None,
            }
            .headers()
            .insert(rdkafka::message::Header {
                key: "tabadol_dataset_version",
                value: Some(v.version.as_bytes()),
            });
            let record = FutureRecord::to(&t)
                .key(r.enterprise_id.as_bytes())
                .payload(&payload)
                .headers(headers);
            in_flight.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| format!("enqueue to {t}: {e}"))?,
            );
        }
        // Enterprises that left the list: a tombstone, so compaction forgets them.
        for gone in before.ids.difference(&ids) {
            let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&t).key(gone.as_bytes());
            in_flight.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| format!("enqueue to {t}: {e}"))?,
            );
        }
        for fut in in_flight {
            match fut.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(format!("delivery to {t}: {e}")),
                Err(_) => return Err(format!("delivery to {t}: producer gone")),
            }
        }
        let after = Delivered {
            version: v.version.clone(),
            ids,
        };
        let bytes = serde_json::to_vec(&after).map_err(|e| e.to_string())?;
        tree.insert(key.as_bytes(), bytes)
            .map_err(|e| e.to_string())?;
        tracing::info!(message = "dataset delivered", dataset = %v.dataset, version = %v.version, reader = %reader, topic = %t);
    }
    Ok(())
}
