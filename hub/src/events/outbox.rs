//! Durable outbox of published events (sled, flushed before acknowledging): the single
//! source both the Kafka relay and `Events/Subscribe` read from, in sequence order.
//!
//! Sequence numbers are dense (1, 2, 3, …) so a subscriber resuming "after N" gets every
//! later event exactly once. Publisher event ids are deduplicated: publishing the same id
//! again with the same content returns the original acknowledgement; with different
//! content it is refused ([`OutboxError::Conflict`]).
//!
//! Readers see an event only once it is acknowledged: [`Outbox::read_after`] never goes
//! past [`Outbox::last_seq`], which moves only after the event is flushed. An event whose
//! flush failed is removed again, so nothing half-published is ever delivered.
//!
//! Group commit: publishers write their events one after the other (sequence numbers are
//! assigned under one lock, briefly), then queue for the flush. The first in the queue
//! flushes everything written so far; those behind it whose events that flush covered
//! are answered without a flush of their own. A failed flush takes back every event not
//! yet on disk and fails each of their publishers, so the sequence stays dense.
//!
//! Each event carries the subscribers chosen when it was accepted (from the policy in
//! force then), written in the same record, so the relay delivers to exactly that list
//! whatever the policy says later. Deliveries given up for a permanent reason are kept as
//! dead letters until an operator replays them (`tabadol events dead-letters replay`);
//! replayed ones wait in their own tree until the relay has delivered them.

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

const TREE_EVENTS: &str = "outbox.events";
/// How many ended epochs (failed flushes) are remembered for publishers still waiting.
const ENDED_EPOCHS_KEPT: usize = 1024;
const TREE_DEDUP: &str = "outbox.dedup";
const TREE_CURSORS: &str = "outbox.cursors";
const TREE_DEAD: &str = "outbox.dead";
const TREE_REPLAY: &str = "outbox.replay";

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
    /// The agencies subscribed to its type when it was accepted: the relay delivers to
    /// exactly these. `None` for events stored before the hub recorded them; the relay then
    /// uses the policy in force when it sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribers: Option<Vec<String>>,
}

/// A delivery given up for a permanent reason, kept for an operator. Never holds the
/// national code: the event it names is in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadLetter {
    /// Outbox sequence of the event.
    pub seq: u64,
    /// The subscriber whose copy it is (empty in records written before it was kept; see
    /// [`DeadLetter::subscriber`]).
    #[serde(default)]
    pub subscriber: String,
    /// The Kafka topic it was sent to.
    #[serde(alias = "destination")]
    pub topic: String,
    pub reason: String,
    /// When it was given up, unix microseconds.
    pub at_micros: i64,
}

impl DeadLetter {
    /// The subscriber, also for old records that only name the topic
    /// `tabadol.<event-type>.<agency>` (agency ids have no dots).
    pub fn subscriber(&self) -> &str {
        if self.subscriber.is_empty() {
            self.topic.rsplit('.').next().unwrap_or("")
        } else {
            &self.subscriber
        }
    }

    fn key(&self) -> Vec<u8> {
        let mut key = self.seq.to_be_bytes().to_vec();
        key.extend_from_slice(self.topic.as_bytes());
        key
    }
}

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox store: {0}")]
    Store(#[from] sled::Error),
    #[error("outbox record {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
    /// The publisher's event id was already used for an event with different content.
    /// Names the fields that differ, never their values (no national code).
    #[error("event_id `{event_id}` of {publisher} was already used for a different event (sequence {seq}; differs in {}); give a new event a new event_id", .differs.join(", "))]
    Conflict {
        publisher: String,
        event_id: String,
        /// Sequence number of the event first published under this id.
        seq: u64,
        /// Names of the fields that differ: `type`, `national_code`, `date`.
        differs: Vec<&'static str>,
    },
}

/// A new event handed to [`Outbox::publish`] (already validated).
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub publisher: &'a str,
    pub publisher_event_id: &'a str,
    pub event_type: &'a str,
    pub national_code: &'a str,
    pub date: &'a str,
    /// The agencies subscribed to `event_type` under the policy in force now.
    pub subscribers: Vec<String>,
}

/// The outbox; share it behind an `Arc`.
pub struct Outbox {
    db: sled::Db,
    events: sled::Tree,
    dedup: sled::Tree,
    cursors: sled::Tree,
    dead: sled::Tree,
    /// Dead letters an operator put back for delivery (same keys and records).
    replay: sled::Tree,
    /// Serializes writers so sequence numbers stay dense and ordered.
    publish_lock: Mutex<Written>,
    /// Serializes flushes: its holder flushes everything written so far.
    flush_lock: Mutex<()>,
    /// Incremented (under both locks) when a failed flush takes events back; a publisher
    /// whose event was written in an earlier epoch and is not on disk was taken back.
    epoch: std::sync::atomic::AtomicU64,
    /// For the most recent ended epochs: (epoch, last sequence kept when it ended). A
    /// publisher of such an epoch kept its event iff its sequence is at most that.
    ended_epochs: std::sync::Mutex<std::collections::VecDeque<(u64, u64)>>,
    last: watch::Sender<u64>,
    /// The store's data file, fsynced after each publish flush ([`Outbox::fsync_on_publish`]).
    fsync: Option<std::path::PathBuf>,
    /// Acceptance time of the newest event, unix microseconds.
    last_accepted: std::sync::atomic::AtomicI64,
}

/// What the writers share: the newest sequence number written to the store (acknowledged
/// or not yet flushed), and the epoch it was written in.
struct Written {
    seq: u64,
    epoch: u64,
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, v: &[u8]) -> Result<T, OutboxError> {
    serde_json::from_slice(v).map_err(|e| OutboxError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

fn seq_of(k: &[u8]) -> u64 {
    u64::from_be_bytes(k.try_into().unwrap_or([0; 8]))
}

impl StoredEvent {
    /// The fields in which `ev` differs from this event (same publisher and event id).
    fn differences(&self, ev: &NewEvent<'_>) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.event_type != ev.event_type {
            d.push("type");
        }
        if self.national_code != ev.national_code {
            d.push("national_code");
        }
        if self.date != ev.date {
            d.push("date");
        }
        d
    }
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
            replay: db.open_tree(TREE_REPLAY)?,
            events,
            publish_lock: Mutex::new(Written {
                seq: last_seq,
                epoch: 0,
            }),
            flush_lock: Mutex::new(()),
            epoch: std::sync::atomic::AtomicU64::new(0),
            ended_epochs: Default::default(),
            fsync: None,
            last: watch::channel(last_seq).0,
            last_accepted: std::sync::atomic::AtomicI64::new(last_accepted),
        })
    }

    /// Appends an event and returns once it is on disk. A publisher event id seen before
    /// returns the original event and `true` when the content is the same, and
    /// [`OutboxError::Conflict`] when it is not.
    pub async fn publish(&self, ev: NewEvent<'_>) -> Result<(StoredEvent, bool), OutboxError> {
        self.publish_with(ev, || self.flush()).await
    }

    /// Fsyncs `data_file` (the store's `db` file) after every publish flush as well, so an
    /// acknowledged event survives a power loss, not only a crash of the process (sled's
    /// own flush is `sync_file_range`). Group commit shares the fsync between publishers.
    pub fn fsync_on_publish(mut self, data_file: std::path::PathBuf) -> Self {
        self.fsync = Some(data_file);
        self
    }

    /// The flush an acknowledgement waits for: sled's, then the fsync when configured.
    async fn flush(&self) -> sled::Result<usize> {
        let n = self.db.flush_async().await?;
        if let Some(path) = self.fsync.clone() {
            tokio::task::spawn_blocking(move || std::fs::File::open(&path)?.sync_data())
                .await
                .map_err(|e| sled::Error::Io(std::io::Error::other(e.to_string())))??;
        }
        Ok(n)
    }

    /// [`Outbox::publish`] with the flush as a parameter, so a failing flush can be tested.
    async fn publish_with<F, Fut>(
        &self,
        ev: NewEvent<'_>,
        flush: F,
    ) -> Result<(StoredEvent, bool), OutboxError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = sled::Result<usize>>,
    {
        let key = dedup_key(ev.publisher, ev.publisher_event_id);
        let mut written = self.publish_lock.lock().await;
        if let Some(seq) = self.dedup.get(&key)? {
            let seq = seq_of(&seq);
            // An entry beyond the written events, or pointing at another event, is left
            // over from a publish whose undo failed: it is overwritten below.
            if seq <= written.seq {
                if let Some(v) = self.events.get(seq.to_be_bytes())? {
                    let stored: StoredEvent = decode(&format!("event {seq}"), &v)?;
                    if stored.publisher == ev.publisher
                        && stored.publisher_event_id == ev.publisher_event_id
                    {
                        let differs = stored.differences(&ev);
                        if !differs.is_empty() {
                            return Err(OutboxError::Conflict {
                                publisher: stored.publisher,
                                event_id: stored.publisher_event_id,
                                seq,
                                differs,
                            });
                        }
                        // The same event again: acknowledged once its first copy is on
                        // disk (it may still be waiting for its flush).
                        let epoch = written.epoch;
                        drop(written);
                        self.wait_durable(seq, epoch, flush).await?;
                        return Ok((stored, true));
                    }
                }
            }
        }
        let seq = written.seq + 1;
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
            subscribers: Some(ev.subscribers.clone()),
        };
        let value = serde_json::to_vec(&stored).map_err(|e| OutboxError::Corrupt {
            key: format!("event {seq}"),
            message: e.to_string(),
        })?;
        // The event and its dedup entry are written atomically, then flushed to disk
        // before anyone is told the event exists (readers stop at `last`).
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
        written.seq = seq;
        let epoch = written.epoch;
        self.last_accepted
            .store(accepted_at_micros, std::sync::atomic::Ordering::Relaxed);
        drop(written);
        self.wait_durable(seq, epoch, flush).await?;
        Ok((stored, false))
    }

    /// Returns once the event `seq` written in `epoch` is on disk (acknowledged), flushing
    /// everything written so far when no flush that covers it has run; an error when the
    /// flush failed and the event was taken back.
    async fn wait_durable<F, Fut>(&self, seq: u64, epoch: u64, flush: F) -> Result<(), OutboxError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = sled::Result<usize>>,
    {
        if let Some(outcome) = self.outcome(seq, epoch) {
            return outcome;
        }
        let _flushing = self.flush_lock.lock().await;
        if let Some(outcome) = self.outcome(seq, epoch) {
            return outcome;
        }
        let durable = self.last_seq();
        let target = self.publish_lock.lock().await.seq;
        match flush().await {
            Ok(_) => {
                self.last.send_replace(target);
                Ok(())
            }
            Err(e) => {
                // Not durable, so not published: take back every event after the last
                // acknowledged one (this one and those written meanwhile), so the next
                // publish reuses the sequence numbers cleanly and a retry of their ids is
                // a new event. Best effort; a leftover is ignored by the checks above.
                let mut written = self.publish_lock.lock().await;
                for s in durable + 1..=written.seq {
                    if let Err(undo) = self.take_back(s) {
                        tracing::error!(message = "cannot undo an unflushed event", sequence = s, error = ?undo);
                    }
                }
                {
                    let mut ended = self.ended_epochs.lock().unwrap_or_else(|p| p.into_inner());
                    if ended.len() == ENDED_EPOCHS_KEPT {
                        ended.pop_front();
                    }
                    ended.push_back((written.epoch, durable));
                }
                written.seq = durable;
                written.epoch += 1;
                self.epoch
                    .store(written.epoch, std::sync::atomic::Ordering::SeqCst);
                Err(OutboxError::Store(e))
            }
        }
    }

    /// Whether the event `seq` written in `epoch` is known to be on disk (`Ok`), known to
    /// have been taken back (`Err`), or still waits for a flush (`None`).
    fn outcome(&self, seq: u64, epoch: u64) -> Option<Result<(), OutboxError>> {
        use std::sync::atomic::Ordering::SeqCst;
        // `last` before the epoch: an event that reuses a taken-back sequence number is
        // written only after the epoch moved, so a stale epoch is always seen here.
        let durable = self.last_seq();
        if self.epoch.load(SeqCst) == epoch {
            return (durable >= seq).then_some(Ok(()));
        }
        let ended = self.ended_epochs.lock().unwrap_or_else(|p| p.into_inner());
        let kept = ended
            .iter()
            .find(|(e, _)| *e == epoch)
            .map(|(_, kept)| *kept);
        Some(match kept {
            Some(kept) if seq <= kept => Ok(()),
            _ => Err(OutboxError::Store(sled::Error::Io(std::io::Error::other(
                "the outbox flush failed; the event was not accepted, publish it again",
            )))),
        })
    }

    /// Removes the unacknowledged event `seq` and its dedup entry.
    fn take_back(&self, seq: u64) -> Result<(), OutboxError> {
        let Some(v) = self.events.get(seq.to_be_bytes())? else {
            return Ok(());
        };
        let stored: StoredEvent = decode(&format!("event {seq}"), &v)?;
        let key = dedup_key(&stored.publisher, &stored.publisher_event_id);
        use sled::Transactional;
        (&self.events, &self.dedup)
            .transaction(|(events, dedup)| {
                events.remove(&seq.to_be_bytes())?;
                if dedup.get(key.as_slice())?.map(|v| seq_of(&v)) == Some(seq) {
                    dedup.remove(key.as_slice())?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => OutboxError::Store(e),
                sled::transaction::TransactionError::Abort(()) => OutboxError::Corrupt {
                    key: format!("event {seq}"),
                    message: "transaction aborted".into(),
                },
            })
    }

    /// Waits until the publishes in flight (if any) have finished or failed: afterwards
    /// every event accepted before the call is either readable or gone, and every later
    /// one has a later acceptance time.
    pub async fn settled(&self) {
        let (seq, epoch) = {
            let w = self.publish_lock.lock().await;
            (w.seq, w.epoch)
        };
        let _ = self
            .wait_durable(seq, epoch, || self.db.flush_async())
            .await;
    }

    /// Up to `limit` acknowledged events with sequence numbers above `after`, in order.
    /// Never reads past [`Outbox::last_seq`]: an event being written is not yet published.
    pub fn read_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, OutboxError> {
        let last = self.last_seq();
        let mut out = Vec::new();
        if after >= last {
            return Ok(out);
        }
        for item in self
            .events
            .range((after + 1).to_be_bytes()..=last.to_be_bytes())
            .take(limit)
        {
            let (k, v) = item?;
            let seq = seq_of(&k);
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

    /// One acknowledged event by its sequence number.
    pub fn get(&self, seq: u64) -> Result<Option<StoredEvent>, OutboxError> {
        if seq == 0 || seq > self.last_seq() {
            return Ok(None);
        }
        match self.events.get(seq.to_be_bytes())? {
            Some(v) => Ok(Some(decode(&format!("event {seq}"), &v)?)),
            None => Ok(None),
        }
    }

    /// Records a copy of an event that could not be delivered to `subscriber` on `topic`
    /// for a permanent reason, so it is kept and visible instead of silently dropped.
    pub fn dead_letter(
        &self,
        seq: u64,
        subscriber: &str,
        topic: &str,
        reason: &str,
    ) -> Result<(), OutboxError> {
        let d = DeadLetter {
            seq,
            subscriber: subscriber.to_owned(),
            topic: topic.to_owned(),
            reason: reason.to_owned(),
            at_micros: jiff::Timestamp::now().as_microsecond(),
        };
        self.dead.insert(d.key(), encode(&d)?)?;
        Ok(())
    }

    /// Number of dead-lettered deliveries.
    pub fn dead_letters(&self) -> usize {
        self.dead.len()
    }

    /// Every dead letter, in sequence order.
    pub fn dead_letter_list(&self) -> Result<Vec<DeadLetter>, OutboxError> {
        list(&self.dead)
    }

    /// Puts dead letters back for delivery: all of them, or those of the given sequence
    /// numbers (every subscriber's copy). Returns those moved; they wait in the replay
    /// queue, on disk, until the relay has delivered them ([`Outbox::replays`]).
    pub fn replay(&self, only: Option<&[u64]>) -> Result<Vec<DeadLetter>, OutboxError> {
        let chosen: Vec<DeadLetter> = self
            .dead_letter_list()?
            .into_iter()
            .filter(|d| only.is_none_or(|seqs| seqs.contains(&d.seq)))
            .collect();
        for d in &chosen {
            move_between(&self.dead, &self.replay, d)?;
        }
        self.db.flush()?;
        Ok(chosen)
    }

    /// Up to `limit` replayed dead letters still to be delivered, in sequence order.
    pub fn replays(&self, limit: usize) -> Result<Vec<DeadLetter>, OutboxError> {
        let mut v = list(&self.replay)?;
        v.truncate(limit);
        Ok(v)
    }

    /// A replayed copy was acknowledged by the broker.
    pub async fn replay_delivered(&self, d: &DeadLetter) -> Result<(), OutboxError> {
        self.replay.remove(d.key())?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// A replayed copy failed for a permanent reason again: back to the dead letters.
    pub async fn replay_failed(&self, d: &DeadLetter, reason: &str) -> Result<(), OutboxError> {
        let again = DeadLetter {
            reason: reason.to_owned(),
            at_micros: jiff::Timestamp::now().as_microsecond(),
            ..d.clone()
        };
        move_between(&self.replay, &self.dead, &again)?;
        self.db.flush_async().await?;
        Ok(())
    }
}

fn encode(d: &DeadLetter) -> Result<Vec<u8>, OutboxError> {
    serde_json::to_vec(d).map_err(|e| OutboxError::Corrupt {
        key: format!("dead letter {} {}", d.seq, d.topic),
        message: e.to_string(),
    })
}

fn list(tree: &sled::Tree) -> Result<Vec<DeadLetter>, OutboxError> {
    let mut out = Vec::new();
    for item in tree.iter() {
        let (k, v) = item?;
        out.push(decode(
            &format!("dead letter {}", seq_of(&k[..8.min(k.len())])),
            &v,
        )?);
    }
    Ok(out)
}

/// Moves `d` (under its key) from one tree to the other, atomically.
fn move_between(from: &sled::Tree, to: &sled::Tree, d: &DeadLetter) -> Result<(), OutboxError> {
    use sled::Transactional;
    let key = d.key();
    let value = encode(d)?;
    (from, to)
        .transaction(|(from, to)| {
            from.remove(key.as_slice())?;
            to.insert(key.as_slice(), value.as_slice())?;
            Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
        })
        .map_err(|e| match e {
            sled::transaction::TransactionError::Storage(e) => OutboxError::Store(e),
            sled::transaction::TransactionError::Abort(()) => OutboxError::Corrupt {
                key: format!("dead letter {} {}", d.seq, d.topic),
                message: "transaction aborted".into(),
            },
        })?;
    Ok(())
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
            subscribers: vec!["cbi".into(), "ihio".into()],
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
        // sled's flush threads may hold the closed store's lock for a moment longer.
        let mut tries = 0;
        let db = loop {
            match sled::open(dir.path()) {
                Ok(db) => break db,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("reopening the store: {e}"),
            }
        };
        let ob = Outbox::open(&db).unwrap();
        assert_eq!(ob.last_seq(), 2);
        assert_eq!(ob.cursor("kafka").unwrap(), 1);
        let rest = ob.read_after(1, 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].publisher_event_id, "e2");
        let (c, _) = ob.publish(ev("e3", "0012345679")).await.unwrap();
        assert_eq!(c.seq, 3);
    }

    fn open_temp() -> (tempfile::TempDir, Outbox) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let ob = Outbox::open(&db).unwrap();
        (dir, ob)
    }

    fn seqs(events: &[StoredEvent]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    /// An event written to the store but not yet acknowledged (its flush still running)
    /// is invisible to readers: read_after stops at last_seq.
    #[tokio::test]
    async fn reads_stop_at_the_last_acknowledged_event() {
        let (_dir, ob) = open_temp();
        let (a, _) = ob.publish(ev("e1", "0012345679")).await.unwrap();
        // Event 2 as it lies in the store between the transaction and the flush.
        let mut pending = a.clone();
        pending.seq = 2;
        pending.publisher_event_id = "e2".into();
        ob.events
            .insert(2u64.to_be_bytes(), serde_json::to_vec(&pending).unwrap())
            .unwrap();
        assert_eq!(ob.last_seq(), 1);
        assert_eq!(seqs(&ob.read_after(0, 10).unwrap()), [1]);
        assert!(ob.read_after(1, 10).unwrap().is_empty());
        assert!(ob.read_after(5, 10).unwrap().is_empty());
        assert_eq!(ob.first_seq_at_or_after(i64::MAX).unwrap(), 2);
    }

    /// A publish whose flush fails returns the error and leaves nothing behind: no event,
    /// no dedup entry, the sequence number is reused, and retrying the id is a new event.
    #[tokio::test]
    async fn failed_flush_leaves_nothing_behind() {
        let (_dir, ob) = open_temp();
        ob.publish(ev("e1", "0012345679")).await.unwrap();
        let err = ob
            .publish_with(ev("e2", "0012345679"), || async {
                Err(sled::Error::Io(std::io::Error::other("disk full")))
            })
            .await
            .expect_err("the flush failed");
        assert!(matches!(err, OutboxError::Store(_)), "{err:?}");
        assert_eq!(ob.last_seq(), 1);
        assert!(ob.events.get(2u64.to_be_bytes()).unwrap().is_none());
        assert!(ob.dedup.get(dedup_key("nocr", "e2")).unwrap().is_none());
        assert_eq!(seqs(&ob.read_after(0, 10).unwrap()), [1]);

        let (b, dup) = ob.publish(ev("e3", "0012345680")).await.unwrap();
        assert_eq!((b.seq, dup), (2, false), "sequence 2 is reused");
        let (c, dup) = ob.publish(ev("e2", "0012345679")).await.unwrap();
        assert_eq!((c.seq, dup), (3, false), "the failed id is published anew");
        assert_eq!(seqs(&ob.read_after(0, 10).unwrap()), [1, 2, 3]);
    }

    /// Dedup entries left behind by a failed undo (pointing past the acknowledged events
    /// or at another event) never turn a new event into a false duplicate.
    #[tokio::test]
    async fn stale_dedup_entries_are_ignored() {
        let (_dir, ob) = open_temp();
        let (a, _) = ob.publish(ev("e1", "0012345679")).await.unwrap();
        ob.dedup
            .insert(dedup_key("nocr", "beyond"), &5u64.to_be_bytes())
            .unwrap();
        ob.dedup
            .insert(dedup_key("nocr", "other"), &a.seq.to_be_bytes())
            .unwrap();
        let (b, dup) = ob.publish(ev("beyond", "0012345679")).await.unwrap();
        assert_eq!((b.seq, dup), (2, false));
        let (c, dup) = ob.publish(ev("other", "0012345679")).await.unwrap();
        assert_eq!((c.seq, dup), (3, false));
        // And their dedup entries now work.
        let (again, dup) = ob.publish(ev("other", "0012345679")).await.unwrap();
        assert_eq!((again, dup), (c, true));
    }

    /// Re-using an event id for different content is a conflict naming the fields (not
    /// their values); the same content is still an idempotent duplicate.
    #[tokio::test]
    async fn same_id_different_content_conflicts() {
        let (_dir, ob) = open_temp();
        let (a, _) = ob.publish(ev("e1", "0012345679")).await.unwrap();
        let err = ob
            .publish(ev("e1", "0012345680"))
            .await
            .expect_err("another person under the same id");
        match &err {
            OutboxError::Conflict {
                publisher,
                event_id,
                seq,
                differs,
            } => {
                assert_eq!((publisher.as_str(), event_id.as_str()), ("nocr", "e1"));
                assert_eq!((*seq, differs.as_slice()), (1, &["national_code"][..]));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("`e1`") && msg.contains("different event"),
            "{msg}"
        );
        assert!(
            !msg.contains("0012345679") && !msg.contains("0012345680"),
            "{msg}"
        );

        let mut other = ev("e1", "0012345679");
        other.event_type = "identity-change.v1";
        other.date = "1405/08/29";
        match ob.publish(other).await {
            Err(OutboxError::Conflict { differs, .. }) => assert_eq!(differs, ["type", "date"]),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(ob.last_seq(), 1, "nothing was added");
        let (again, dup) = ob.publish(ev("e1", "0012345679")).await.unwrap();
        assert_eq!((again, dup), (a, true));
        // Another publisher may use the same id for its own event.
        let mut theirs = ev("e1", "0012345680");
        theirs.publisher = "sabtahval";
        assert_eq!(ob.publish(theirs).await.unwrap().0.seq, 2);
    }

    /// Concurrent publishers share flushes (group commit): 16 publishes against a slow
    /// flush need far fewer than 16 flushes, and still get dense, distinct sequences.
    #[tokio::test]
    async fn concurrent_publishes_share_one_flush_and_wait_for_it() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (_dir, ob) = open_temp();
        let ob = std::sync::Arc::new(ob);
        let flushes = std::sync::Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (ob, flushes) = (ob.clone(), flushes.clone());
            tasks.push(tokio::spawn(async move {
                let id = format!("g{i}");
                let db = ob.db.clone();
                ob.publish_with(ev(&id, "0012345679"), move || async move {
                    flushes.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    db.flush_async().await
                })
                .await
                .map(|(e, dup)| (e.seq, dup))
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            let (seq, dup) = t.await.unwrap().unwrap();
            assert!(!dup);
            // Acknowledged means readable.
            assert!(ob.last_seq() >= seq);
            got.push(seq);
        }
        got.sort();
        assert_eq!(got, (1..=16).collect::<Vec<_>>());
        let n = flushes.load(Ordering::SeqCst);
        assert!(
            n <= 4,
            "16 concurrent publishes took {n} flushes; they must share them"
        );
        assert_eq!(
            seqs(&ob.read_after(0, 100).unwrap()),
            (1..=16).collect::<Vec<_>>()
        );
    }

    /// A failed flush fails every publisher whose event it would have covered, and those
    /// written while it ran: all are taken back, and the sequence goes on densely.
    #[tokio::test]
    async fn a_failed_group_flush_fails_and_undoes_every_waiting_event() {
        let (_dir, ob) = open_temp();
        ob.publish(ev("kept", "0012345679")).await.unwrap();
        let ob = std::sync::Arc::new(ob);
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let leader = {
            let ob = ob.clone();
            tokio::spawn(async move {
                ob.publish_with(ev("a", "0012345679"), move || async move {
                    let _ = started_tx.send(());
                    let _ = release_rx.await;
                    Err(sled::Error::Io(std::io::Error::other("disk full")))
                })
                .await
            })
        };
        started_rx.await.unwrap();
        let others: Vec<_> = ["b", "c"]
            .into_iter()
            .map(|id| {
                let ob = ob.clone();
                tokio::spawn(async move { ob.publish(ev(id, "0012345680")).await })
            })
            .collect();
        for _ in 0..1000 {
            if ob.publish_lock.lock().await.seq == 4 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(ob.publish_lock.lock().await.seq, 4, "b and c are written");
        assert_eq!(ob.last_seq(), 1, "but not acknowledged");
        release_tx.send(()).unwrap();
        assert!(leader.await.unwrap().is_err());
        for o in others {
            let err = o
                .await
                .unwrap()
                .expect_err("taken back with the failed flush");
            assert!(err.to_string().contains("publish it again"), "{err}");
        }
        assert_eq!(ob.last_seq(), 1);
        for id in ["a", "b", "c"] {
            assert!(
                ob.dedup.get(dedup_key("nocr", id)).unwrap().is_none(),
                "{id}"
            );
        }
        assert!(ob.events.get(2u64.to_be_bytes()).unwrap().is_none());
        let (again, dup) = ob.publish(ev("b", "0012345680")).await.unwrap();
        assert_eq!((again.seq, dup), (2, false), "sequence 2 reused; b is new");
        let (kept, dup) = ob.publish(ev("kept", "0012345679")).await.unwrap();
        assert_eq!((kept.seq, dup), (1, true), "the acknowledged event stays");
        assert_eq!(seqs(&ob.read_after(0, 10).unwrap()), [1, 2]);
    }

    /// With fsync on, an acknowledgement waits for the fsync too: when it fails (here: the
    /// data file is missing) the publish fails and leaves nothing behind.
    #[tokio::test]
    async fn publish_fsyncs_the_data_file_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let ob = Outbox::open(&db)
            .unwrap()
            .fsync_on_publish(dir.path().join("db"));
        ob.publish(ev("e1", "0012345679")).await.expect("fsynced");
        let broken = Outbox::open(&db)
            .unwrap()
            .fsync_on_publish(dir.path().join("no-such-file"));
        broken
            .publish(ev("e2", "0012345679"))
            .await
            .expect_err("the fsync failed, so the event is not acknowledged");
        assert_eq!(broken.last_seq(), 1);
        assert!(broken.dedup.get(dedup_key("nocr", "e2")).unwrap().is_none());
    }

    /// settled() returns at once when no publish is in flight and waits for one that is.
    #[tokio::test]
    async fn settled_waits_for_a_publish_in_flight() {
        let (_dir, ob) = open_temp();
        ob.settled().await;
        let ob = std::sync::Arc::new(ob);
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let publisher = {
            let ob = ob.clone();
            tokio::spawn(async move {
                ob.publish_with(ev("slow", "0012345679"), move || async move {
                    let _ = started_tx.send(());
                    let _ = release_rx.await;
                    Ok(0)
                })
                .await
                .unwrap()
            })
        };
        started_rx.await.unwrap();
        let settled = {
            let ob = ob.clone();
            tokio::spawn(async move { ob.settled().await })
        };
        tokio::task::yield_now().await;
        assert!(!settled.is_finished(), "a publish is still flushing");
        release_tx.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), settled)
            .await
            .expect("settled once the publish is done")
            .unwrap();
        assert_eq!(ob.last_seq(), 1);
        assert_eq!(publisher.await.unwrap().0.seq, 1);
    }

    /// The subscriber list is stored with the event (and survives a reopen); a duplicate
    /// keeps the list of its first acceptance; an event stored before lists were kept
    /// (no `subscribers` field) still reads, as `None`.
    #[tokio::test]
    async fn subscribers_are_recorded_with_the_event_and_old_events_still_read() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let ob = Outbox::open(&db).unwrap();
            let (a, _) = ob.publish(ev("e1", "0012345679")).await.unwrap();
            assert_eq!(a.subscribers, Some(vec!["cbi".into(), "ihio".into()]));
            let mut later = ev("e1", "0012345679");
            later.subscribers = vec!["ihio".into()];
            let (again, dup) = ob.publish(later).await.unwrap();
            assert!(dup);
            assert_eq!(
                again.subscribers, a.subscribers,
                "chosen at first acceptance"
            );
            // An event as an older hub wrote it.
            let old = serde_json::json!({"seq": 2, "hub_event_id": "h2", "publisher": "nocr",
                "publisher_event_id": "old", "event_type": "death.v1",
                "national_code": "0012345679", "date": "1405/08/30", "accepted_at_micros": 1});
            ob.events
                .insert(2u64.to_be_bytes(), serde_json::to_vec(&old).unwrap())
                .unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let ob = Outbox::open(&db).unwrap();
        let all = ob.read_after(0, 10).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].subscribers.as_ref().map(Vec::len), Some(2));
        assert_eq!(all[1].subscribers, None);
        assert_eq!(ob.get(2).unwrap().unwrap().publisher_event_id, "old");
        assert!(ob.get(3).unwrap().is_none());
    }

    /// Dead letters are listed in order (an old record naming only its `destination` topic
    /// still reads, with its subscriber taken from the topic), replay moves the chosen ones
    /// to the replay queue on disk, a delivered replay is gone, a failed one is a dead
    /// letter again.
    #[tokio::test]
    async fn dead_letters_list_replay_and_come_back() {
        let (_dir, ob) = open_temp();
        for i in 0..3 {
            ob.publish(ev(&format!("e{i}"), "0012345679"))
                .await
                .unwrap();
        }
        ob.dead_letter(1, "cbi", "tabadol.death.v1.cbi", "too large")
            .unwrap();
        ob.dead_letter(3, "ihio", "tabadol.death.v1.ihio", "too large")
            .unwrap();
        let mut key = 2u64.to_be_bytes().to_vec();
        key.extend_from_slice(b"tabadol.death.v1.ihio");
        let old = serde_json::json!({"seq": 2, "destination": "tabadol.death.v1.ihio",
            "reason": "refused", "at_micros": 5});
        ob.dead
            .insert(key, serde_json::to_vec(&old).unwrap())
            .unwrap();

        let list = ob.dead_letter_list().unwrap();
        let seen: Vec<(u64, &str)> = list.iter().map(|d| (d.seq, d.subscriber())).collect();
        assert_eq!(seen, [(1, "cbi"), (2, "ihio"), (3, "ihio")]);
        assert_eq!(list[1].topic, "tabadol.death.v1.ihio");

        let moved = ob.replay(Some(&[2, 3])).unwrap();
        assert_eq!(moved.iter().map(|d| d.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(ob.dead_letters(), 1);
        let pending = ob.replays(10).unwrap();
        assert_eq!(pending.len(), 2);
        ob.replay_delivered(&pending[0]).await.unwrap();
        ob.replay_failed(&pending[1], "still too large")
            .await
            .unwrap();
        assert!(ob.replays(10).unwrap().is_empty());
        let list = ob.dead_letter_list().unwrap();
        assert_eq!(list.iter().map(|d| d.seq).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(list[1].reason, "still too large");
        assert_eq!(ob.replay(None).unwrap().len(), 2, "--all");
        assert_eq!(ob.dead_letters(), 0);
    }
}
