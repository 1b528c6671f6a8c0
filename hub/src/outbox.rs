//! Durable outbox of published events (sled, flushed before acknowledging): the single
//! source both the Kafka relay and `Events/Subscribe` read from, in sequence order.
//!
//! Sequence numbers are dense (1, 2, 3, …) so a subscriber resuming "after N" gets every
//! later event exactly once. Publisher event ids are deduplicated: publishing the same id
//! again returns the original acknowledgement.

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

const TREE_EVENTS: &str = "outbox.events";
const TREE_DEDUP: &str = "outbox.dedup";
const TREE_CURSORS: &str = "outbox.cursors";
const TREE_DEAD: &str = "outbox.dead";

/// One accepted event as the hub keeps it. The national code never leaves the hub: each
/// subscriber sees only its own token for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    /// Hub-assigned id (CloudEvents `ce_id`).
    pub hub_event_id: String,
    pub publisher: String,
    pub publisher_event_id: String,
    /// `death.v1`, `identity-change.v1`.
    pub event_type: String,
    pub national_code: String,
    /// Jalali date of the death or change, as published ("1405/08/30").
    pub date: String,
    /// When the hub accepted it, unix microseconds.
    pub accepted_at_micros: i64,
}

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox store: {0}")]
    Store(#[from] sled::Error),
    #[error("outbox record {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
}

/// A new event handed to [`Outbox::publish`] (already validated).
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub publisher: &'a str,
    pub publisher_event_id: &'a str,
    pub event_type: &'a str,
    pub national_code: &'a str,
    pub date: &'a str,
}

/// The outbox; share it behind an `Arc`.
pub struct Outbox {
    db: sled::Db,
    events: sled::Tree,
    dedup: sled::Tree,
    cursors: sled::Tree,
    dead: sled::Tree,
    /// Serializes publishers so sequence numbers stay dense and ordered.
    publish_lock: Mutex<u64>,
    last: watch::Sender<u64>,
    /// Acceptance time of the newest event, unix microseconds.
    last_accepted: std::sync::atomic::AtomicI64,
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, v: &[u8]) -> Result<T, OutboxError> {
    serde_json::from_slice(v).map_err(|e| OutboxError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

fn dedup_key(publisher: &str, event_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(publisher.len() + event_id.len() + 1);
    k.extend_from_slice(publisher.as_bytes());
    k.push(0);
    k.extend_from_slice(event_id.as_bytes());
    k
}

impl Outbox {
    /// Opens (or creates) the outbox in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, OutboxError> {
        let events = db.open_tree(TREE_EVENTS)?;
        let (last_seq, last_accepted) = match events.last()? {
            Some((k, v)) => {
                let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
                let ev: StoredEvent = decode(&format!("event {seq}"), &v)?;
                (seq, ev.accepted_at_micros)
            }
            None => (0, 0),
        };
        Ok(Self {
            db: db.clone(),
            dedup: db.open_tree(TREE_DEDUP)?,
            cursors: db.open_tree(TREE_CURSORS)?,
            dead: db.open_tree(TREE_DEAD)?,
            events,
            publish_lock: Mutex::new(last_seq),
            last: watch::channel(last_seq).0,
            last_accepted: std::sync::atomic::AtomicI64::new(last_accepted),
        })
    }

    /// Appends an event and returns once it is on disk. A publisher event id seen before
    /// returns the original event and `true`.
    pub async fn publish(&self, ev: NewEvent<'_>) -> Result<(StoredEvent, bool), OutboxError> {
        let key = dedup_key(ev.publisher, ev.publisher_event_id);
        let mut last = self.publish_lock.lock().await;
        if let Some(seq) = self.dedup.get(&key)? {
            let seq_bytes: [u8; 8] = seq.as_ref().try_into().unwrap_or([0; 8]);
            if let Some(v) = self.events.get(seq_bytes)? {
                return Ok((
                    decode(&format!("event {}", u64::from_be_bytes(seq_bytes)), &v)?,
                    true,
                ));
            }
        }
        let seq = *last + 1;
        // Acceptance times never go backwards (even if the wall clock does), so a day's
        // events are one contiguous range of sequence numbers (see first_seq_at_or_after).
        let prev = self
            .last_accepted
            .load(std::sync::atomic::Ordering::Relaxed);
        let accepted_at_micros = jiff::Timestamp::now().as_microsecond().max(prev);
        let stored = StoredEvent {
            seq,
            hub_event_id: uuid::Uuid::now_v7().to_string(),
            publisher: ev.publisher.to_owned(),
            publisher_event_id: ev.publisher_event_id.to_owned(),
            event_type: ev.event_type.to_owned(),
            national_code: ev.national_code.to_owned(),
            date: ev.date.to_owned(),
            accepted_at_micros,
        };
        let value = serde_json::to_vec(&stored).map_err(|e| OutboxError::Corrupt {
            key: format!("event {seq}"),
            message: e.to_string(),
        })?;
        // The event and its dedup entry are written atomically, then flushed to disk
        // before anyone is told the event exists.
        use sled::Transactional;
        (&self.events, &self.dedup)
            .transaction(|(events, dedup)| {
                events.insert(&seq.to_be_bytes(), value.as_slice())?;
                dedup.insert(key.as_slice(), &seq.to_be_bytes())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => OutboxError::Store(e),
                sled::transaction::TransactionError::Abort(()) => OutboxError::Corrupt {
                    key: format!("event {seq}"),
                    message: "transaction aborted".into(),
                },
            })?;
        self.db.flush_async().await?;
        *last = seq;
        self.last_accepted
            .store(accepted_at_micros, std::sync::atomic::Ordering::Relaxed);
        self.last.send_replace(seq);
        Ok((stored, false))
    }

    /// Up to `limit` events with sequence numbers above `after`, in order.
    pub fn read_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, OutboxError> {
        let mut out = Vec::new();
        for item in self.events.range((after + 1).to_be_bytes()..).take(limit) {
            let (k, v) = item?;
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            out.push(decode(&format!("event {seq}"), &v)?);
        }
        Ok(out)
    }

    /// The first sequence number accepted at or after `micros` (unix microseconds), or
    /// `last_seq() + 1` when there is none. Acceptance times grow with the sequence (both
    /// are assigned under the publish lock), so this is a binary search.
    pub fn first_seq_at_or_after(&self, micros: i64) -> Result<u64, OutboxError> {
        let (mut lo, mut hi) = (1u64, self.last_seq() + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let accepted = match self.events.get(mid.to_be_bytes())? {
                Some(v) => decode::<StoredEvent>(&format!("event {mid}"), &v)?.accepted_at_micros,
                None => i64::MAX,
            };
            if accepted < micros {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The sequence number of the newest event (0 when empty).
    pub fn last_seq(&self) -> u64 {
        *self.last.borrow()
    }

    /// Watches the newest sequence number (changes on every publish).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }

    /// A named reader's position (e.g. the Kafka relay's), 0 when never set.
    pub fn cursor(&self, name: &str) -> Result<u64, OutboxError> {
        Ok(self
            .cursors
            .get(name)?
            .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])))
            .unwrap_or(0))
    }

    /// Moves a named reader's position and flushes it.
    pub async fn set_cursor(&self, name: &str, seq: u64) -> Result<(), OutboxError> {
        self.cursors.insert(name, &seq.to_be_bytes())?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Records an event that could not be delivered to one destination for a permanent
    /// reason, so it is kept and visible instead of silently dropped.
    pub fn dead_letter(
        &self,
        seq: u64,
        destination: &str,
        reason: &str,
    ) -> Result<(), OutboxError> {
        let mut key = seq.to_be_bytes().to_vec();
        key.extend_from_slice(destination.as_bytes());
        let v = serde_json::json!({ "seq": seq, "destination": destination, "reason": reason,
            "at_micros": jiff::Timestamp::now().as_microsecond() });
        self.dead
            .insert(key, serde_json::to_vec(&v).unwrap_or_default())?;
        Ok(())
    }

    /// Number of dead-lettered deliveries.
    pub fn dead_letters(&self) -> usize {
        self.dead.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev<'a>(id: &'a str, nc: &'a str) -> NewEvent<'a> {
        NewEvent {
            publisher: "nocr",
            publisher_event_id: id,
            event_type: "death.v1",
            national_code: nc,
            date: "1405/08/30",
        }
    }

    /// Sequence numbers are dense, re-publishing is a no-op, and everything survives a reopen.
    #[tokio::test]
    async fn dense_sequences_dedup_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let ob = Outbox::open(&db).unwrap();
            let (a, dup) = ob.publish(ev("e1", "0012345679")).await.unwrap();
            assert_eq!((a.seq, dup), (1, false));
            let (b, _) = ob.publish(ev("e2", "0012345679")).await.unwrap();
            assert_eq!(b.seq, 2);
            let (again, dup) = ob.publish(ev("e1", "0012345679")).await.unwrap();
            assert!(dup);
            assert_eq!(again, a);
            assert_eq!(ob.last_seq(), 2);
            ob.set_cursor("kafka", 1).await.unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let ob = Outbox::open(&db).unwrap();
        assert_eq!(ob.last_seq(), 2);
        assert_eq!(ob.cursor("kafka").unwrap(), 1);
        let rest = ob.read_after(1, 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].publisher_event_id, "e2");
        let (c, _) = ob.publish(ev("e3", "0012345679")).await.unwrap();
        assert_eq!(c.seq, 3);
    }
}
