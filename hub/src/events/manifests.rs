//! Daily manifests (R5): after each Tehran midnight the hub fixes, for every subscriber,
//! the count and digest of the previous day's events for it, keeps them in the store
//! (served by `Events/GetManifest`) and, when Kafka is configured, produces each one to
//! the subscriber's own topic `tabadol.manifest.<agency>`, so a subscriber can prove it
//! missed nothing.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tabadol_policy::jalali::JalaliDate;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::events::model::{manifest, Manifest};
use crate::events::outbox::Outbox;
use crate::events::relay::RelayOptions;
use crate::events::tokens::Tokens;
use crate::inquiry::pipeline::Hub;
use crate::kafka::admin::Topics;
use crate::kafka::cloudevents::Attributes;
use crate::kafka::failure::{hint_of, Alerts};

const TREE: &str = "manifests";

/// How long after Tehran midnight a day counts as closed, so a publish accepted just
/// before midnight and still being flushed is on disk before the day's manifest is fixed.
/// Shared by the daily task and `Events/GetManifest` (see [`day_closed`]).
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How often undelivered manifests are retried on Kafka.
const RETRY: Duration = Duration::from_secs(60);
/// How many past days are closed at start-up when the hub was down at midnight.
const CATCH_UP_DAYS: i32 = 7;

/// How many days back manifests are kept and served: `Events/GetManifest` fixes and
/// stores a manifest only for a day inside this window and refuses older days, so a
/// caller cannot make the hub store one manifest per day back to year 1.
pub const MANIFEST_RETENTION_DAYS: i32 = 90;

/// The oldest day whose manifest is served on `today` ([`MANIFEST_RETENTION_DAYS`] back).
pub fn oldest_kept(today: JalaliDate) -> JalaliDate {
    today
        .to_civil()
        .checked_sub(jiff::Span::new().days(MANIFEST_RETENTION_DAYS))
        .map(JalaliDate::from_civil)
        .unwrap_or(today)
}

/// The instant from which `day`'s manifest may be fixed: the next Tehran midnight plus
/// [`CLOSE_GRACE`].
pub fn closes_at(day: JalaliDate) -> jiff::Timestamp {
    let end = day.end_in_tehran();
    end.checked_add(CLOSE_GRACE).unwrap_or(end)
}

/// Whether `day` is closed at `now`: its manifest is final and may be stored. Before
/// that (also during the grace after midnight) it is computed but never stored.
pub fn day_closed(day: JalaliDate, now: jiff::Timestamp) -> bool {
    now >= closes_at(day)
}

/// Time from `now` until `at`, zero when `at` has passed.
fn until(at: jiff::Timestamp, now: jiff::Timestamp) -> Duration {
    let d = at.duration_since(now);
    if d.is_negative() {
        Duration::ZERO
    } else {
        d.unsigned_abs()
    }
}

/// The Kafka topic of one subscriber's manifests.
pub fn topic(agency: &str) -> String {
    format!("tabadol.manifest.{agency}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    manifest: Manifest,
    closed_at_micros: i64,
    kafka_delivered: bool,
}

/// Errors of the manifest store.
#[derive(Debug, thiserror::Error)]
pub enum ManifestStoreError {
    #[error("manifest store: {0}")]
    Store(#[from] sled::Error),
    #[error("stored manifest {0} is unreadable: {1}")]
    Corrupt(String, String),
}

/// Closed manifests, one per subscriber and day.
pub struct ManifestStore {
    tree: sled::Tree,
}

fn key(agency: &str, day: &str) -> Vec<u8> {
    let mut k = agency.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(day.as_bytes());
    k
}

impl ManifestStore {
    pub fn open(db: &sled::Db) -> Result<Self, ManifestStoreError> {
        Ok(Self {
            tree: db.open_tree(TREE)?,
        })
    }

    fn read(&self, k: &[u8], v: &[u8]) -> Result<Stored, ManifestStoreError> {
        serde_json::from_slice(v).map_err(|e| {
            ManifestStoreError::Corrupt(
                String::from_utf8_lossy(k).replace('\0', "/"),
                e.to_string(),
            )
        })
    }

    /// The closed manifest of `agency` for `day`, if the day was closed.
    pub fn get(&self, agency: &str, day: &str) -> Result<Option<Manifest>, ManifestStoreError> {
        let k = key(agency, day);
        match self.tree.get(&k)? {
            Some(v) => Ok(Some(self.read(&k, &v)?.manifest)),
            None => Ok(None),
        }
    }

    /// Stores a closed manifest unless one exists (closing is idempotent); true if new.
    pub fn put(&self, m: &Manifest) -> Result<bool, ManifestStoreError> {
        let v = serde_json::to_vec(&Stored {
            manifest: m.clone(),
            closed_at_micros: jiff::Timestamp::now().as_microsecond(),
            kafka_delivered: false,
        })
        .map_err(|e| ManifestStoreError::Corrupt(m.agency.clone(), e.to_string()))?;
        let res =
            self.tree
                .compare_and_swap(key(&m.agency, &m.day), None as Option<&[u8]>, Some(v))?;
        self.tree.flush()?;
        Ok(res.is_ok())
    }

    /// Manifests not yet acknowledged by Kafka.
    pub fn undelivered(&self) -> Result<Vec<Manifest>, ManifestStoreError> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            let s = self.read(&k, &v)?;
            if !s.kafka_delivered {
                out.push(s.manifest);
            }
        }
        Ok(out)
    }

    fn mark_delivered(&self, m: &Manifest) -> Result<(), ManifestStoreError> {
        let k = key(&m.agency, &m.day);
        if let Some(v) = self.tree.get(&k)? {
            let mut s = self.read(&k, &v)?;
            s.kafka_delivered = true;
            let v = serde_json::to_vec(&s)
                .map_err(|e| ManifestStoreError::Corrupt(m.agency.clone(), e.to_string()))?;
            self.tree.insert(k, v)?;
            self.tree.flush()?;
        }
        Ok(())
    }
}

/// Closes `day` for every subscriber that has no manifest for it yet; returns how many
/// manifests were created. Call it only for a day that is [`day_closed`], after
/// [`Outbox::settled`], so no event of the day is still being written.
pub fn close_day(
    day: JalaliDate,
    hub: &Hub,
    outbox: &Outbox,
    tokens: &Tokens,
    store: &ManifestStore,
) -> anyhow::Result<usize> {
    let subscribers: Vec<(String, Vec<String>)> = {
        let state = hub.policy();
        let mut v: Vec<(String, Vec<String>)> = Vec::new();
        for s in state.policy.subscriptions() {
            match v.iter_mut().find(|(a, _)| *a == s.agency) {
                Some((_, types)) => types.extend(s.event_types.iter().cloned()),
                None => v.push((s.agency.clone(), s.event_types.clone())),
            }
        }
        v
    };
    let mut created = 0;
    for (agency, types) in subscribers {
        if store.get(&agency, &day.to_string())?.is_some() {
            continue;
        }
        let m = manifest(outbox, tokens, &agency, &types, day)?;
        if store.put(&m)? {
            created += 1;
            if m.count == 0 {
                tracing::debug!(message = "daily manifest closed (no events)", agency = %m.agency, day = %m.day);
                continue;
            }
            tracing::info!(
                message = "daily manifest closed",
                agency = %m.agency,
                day = %m.day,
                count = m.count,
                digest = %m.digest,
            );
        }
    }
    Ok(created)
}

/// The protobuf form of a closed manifest.
pub fn to_proto(m: &Manifest, complete: bool) -> tabadol_proto::v1::Manifest {
    tabadol_proto::v1::Manifest {
        agency: m.agency.clone(),
        day: m.day.clone(),
        count: m.count,
        digest: m.digest.clone(),
        first_sequence: m.first_sequence,
        last_sequence: m.last_sequence,
        complete,
    }
}

/// A running daily-manifest task.
pub struct ManifestTask {
    stop: watch::Sender<bool>,
    nudge: Arc<tokio::sync::Notify>,
    task: JoinHandle<()>,
}

impl ManifestTask {
    /// Runs a round now (close past days, deliver what is pending) instead of waiting.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct KafkaOut {
    producer: FutureProducer,
    /// Manifest topics, one partition each (one record per subscriber and day).
    topics: Topics,
    alerts: Alerts,
}

/// Starts the daily task: closes yesterday (and up to a week back) at once, then every
/// Tehran midnight; produces closed manifests to Kafka when `kafka` is given.
pub fn spawn(
    hub: Arc<Hub>,
    outbox: Arc<Outbox>,
    tokens: Arc<Tokens>,
    store: Arc<ManifestStore>,
    kafka: Option<RelayOptions>,
) -> anyhow::Result<ManifestTask> {
    let mut kafka = match kafka {
        Some(opts) => {
            let (producer, admin) =
                crate::kafka::producer::clients(&opts, "tabadol-hub-manifests")?;
            Some(KafkaOut {
                producer,
                topics: Topics::new(admin, &opts, 1),
                alerts: Alerts::new(opts.alert_every),
            })
        }
        None => None,
    };
    let (stop, mut stop_rx) = watch::channel(false);
    let nudge = Arc::new(tokio::sync::Notify::new());
    let nudged = nudge.clone();
    let task = tokio::spawn(async move {
        let mut catch_up = true;
        loop {
            let now = jiff::Timestamp::now();
            let today = JalaliDate::in_tehran(now);
            let days: Vec<JalaliDate> = if catch_up {
                (1..=CATCH_UP_DAYS)
                    .rev()
                    .filter_map(|back| {
                        today
                            .to_civil()
                            .checked_sub(jiff::Span::new().days(back))
                            .ok()
                            .map(JalaliDate::from_civil)
                    })
                    .collect()
            } else {
                today
                    .to_civil()
                    .yesterday()
                    .ok()
                    .map(JalaliDate::from_civil)
                    .into_iter()
                    .collect()
            };
            // A day still within its grace (woken early, or started just after midnight)
            // is left for the round at its closing time.
            let mut next_close = closes_at(today);
            outbox.settled().await;
            for day in days {
                if !day_closed(day, now) {
                    next_close = next_close.min(closes_at(day));
                    continue;
                }
                if let Err(e) = close_day(day, &hub, &outbox, &tokens, &store) {
                    tracing::error!(message = "cannot close the daily manifests", day = %day, error = %e);
                }
            }
            catch_up = false;
            let mut pending = false;
            if let Some(k) = &mut kafka {
                pending = !deliver(k, &store).await;
            }
            let until_close = until(next_close, jiff::Timestamp::now());
            let wait = if pending {
                RETRY.min(until_close)
            } else {
                until_close
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {},
                _ = nudged.notified() => {},
                _ = stop_rx.changed() => return,
            }
        }
    });
    Ok(ManifestTask { stop, nudge, task })
}

/// Produces every undelivered manifest; true when none is left.
async fn deliver(k: &mut KafkaOut, store: &ManifestStore) -> bool {
    let pending = match store.undelivered() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(message = "cannot read the manifest store", error = %e);
            return false;
        }
    };
    if pending.is_empty() {
        return true;
    }
    let topics: Vec<String> = pending.iter().map(|m| topic(&m.agency)).collect();
    let refused = match k.topics.ensure(&topics, &k.producer, &mut k.alerts).await {
        Ok(r) => r,
        Err(reason) => {
            tracing::warn!(message = "manifest topics not ready; manifests will be retried", reason = %reason);
            k.topics.forget_all();
            return false;
        }
    };
    let mut all = true;
    for m in pending {
        let t = topic(&m.agency);
        if refused.contains(&t) {
            // Kept in the store (and served by Events/GetManifest); retried every round.
            all = false;
            continue;
        }
        let payload = to_proto(&m, true).encode_to_vec();
        let id = format!("manifest/{}/{}", m.agency, m.day);
        let headers = Attributes {
            id: &id,
            source: "tabadol.ir/hub",
            r#type: "ir.tabadol.manifest.v1",
            subject: &m.day,
            dataschema: "tabadol.v1.Manifest",
            time: None,
            sequence: None,
        }
        .headers();
        let record = FutureRecord::to(&t)
            .key(m.day.as_bytes())
            .payload(&payload)
            .headers(headers);
        match k.producer.send(record, Duration::from_secs(0)).await {
            Ok(_) => {
                if let Err(e) = store.mark_delivered(&m) {
                    tracing::error!(message = "cannot mark a manifest delivered", error = %e);
                }
            }
            Err((e, _)) => {
                tracing::warn!(message = "manifest not delivered; will retry", agency = %m.agency, day = %m.day, error = %e, action = hint_of(&e));
                if crate::kafka::failure::topic_unknown(&e) {
                    k.topics.forget(&t);
                }
                all = false;
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_is_idempotent_and_tracks_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = ManifestStore::open(&db).unwrap();
        let m = Manifest {
            agency: "cbi".into(),
            day: "1405/09/01".into(),
            count: 2,
            digest: "ab".into(),
            first_sequence: 1,
            last_sequence: 2,
        };
        assert!(store.put(&m).unwrap());
        let mut later = m.clone();
        later.count = 9;
        assert!(!store.put(&later).unwrap(), "a closed day never changes");
        assert_eq!(store.get("cbi", "1405/09/01").unwrap(), Some(m.clone()));
        assert_eq!(store.undelivered().unwrap(), vec![m.clone()]);
        store.mark_delivered(&m).unwrap();
        assert!(store.undelivered().unwrap().is_empty());
        assert_eq!(store.get("ihio", "1405/09/01").unwrap(), None);
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    /// A day is closed only from CLOSE_GRACE after the next Tehran midnight (UTC+03:30):
    /// not during the day, not in the grace, from the grace on.
    #[test]
    fn day_closes_after_midnight_plus_grace() {
        // 1405/09/01 is 2026-11-22; it ends at 2026-11-22T20:30:00Z.
        let day: JalaliDate = "1405/09/01".parse().unwrap();
        assert_eq!(day.to_civil(), jiff::civil::date(2026, 11, 22));
        assert_eq!(closes_at(day), at("2026-11-22T20:30:05Z"));
        assert_eq!(CLOSE_GRACE, Duration::from_secs(5));
        for (now, closed) in [
            ("2026-11-22T10:00:00Z", false),
            ("2026-11-22T20:29:59.999Z", false),
            ("2026-11-22T20:30:00Z", false),
            ("2026-11-22T20:30:04.999999Z", false),
            ("2026-11-22T20:30:05Z", true),
            ("2026-11-23T12:00:00Z", true),
        ] {
            assert_eq!(day_closed(day, at(now)), closed, "{now}");
        }
        assert_eq!(
            until(closes_at(day), at("2026-11-22T20:30:02Z")),
            Duration::from_secs(3)
        );
        assert_eq!(
            until(closes_at(day), at("2026-11-23T00:00:00Z")),
            Duration::ZERO
        );
    }
}
