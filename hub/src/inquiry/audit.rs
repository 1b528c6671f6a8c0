//! Append-only, hash-chained audit log of every inquiry (R10), stored in sled and written
//! by one group-commit task: many records per batch, never one fsync per request.
//!
//! Records hold who asked what, why, under which tracking code, the outcome and latency —
//! never response data.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

const TREE_LOG: &str = "audit.log";
const TREE_BY_TRACKING: &str = "audit.by_tracking";
/// Most records written in one batch.
const MAX_BATCH: usize = 1024;

/// One audited inquiry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// Sequence number in the log (assigned by the writer).
    #[serde(default)]
    pub seq: u64,
    /// Unix time in microseconds.
    pub time_micros: i64,
    pub inquiry_id: String,
    pub agency: String,
    pub service: String,
    pub purpose: String,
    pub tracking_code: String,
    pub service_request_id: String,
    /// `ok`, `denied`, `invalid`, `not_found`, `unavailable`, `deadline_exceeded`, ...
    pub outcome: String,
    pub latency_micros: u64,
    /// Short human-readable reason for a non-ok outcome (never response data).
    pub detail: String,
    /// Hex SHA-256 of the previous record (all zeros for the first).
    #[serde(default)]
    pub prev_hash: String,
    /// Hex SHA-256 over this record's fields and `prev_hash`.
    #[serde(default)]
    pub hash: String,
}

impl AuditRecord {
    fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.seq.to_string().as_str(),
            self.time_micros.to_string().as_str(),
            &self.inquiry_id,
            &self.agency,
            &self.service,
            &self.purpose,
            &self.tracking_code,
            &self.service_request_id,
            &self.outcome,
            self.latency_micros.to_string().as_str(),
            &self.detail,
            &self.prev_hash,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit store: {0}")]
    Store(#[from] sled::Error),
    #[error("audit record {seq} is unreadable: {message}")]
    Corrupt { seq: u64, message: String },
    #[error("audit writer has stopped; the hub is shutting down")]
    Closed,
}

type Job = (AuditRecord, Option<oneshot::Sender<Result<u64, String>>>);

/// Handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Job>,
    log: sled::Tree,
    by_tracking: sled::Tree,
}

/// Audit write settings.
#[derive(Debug, Clone, Copy)]
pub struct AuditOptions {
    /// Wait for the batch's fsync before answering a call (slower, survives power loss).
    pub durable: bool,
    /// Flush interval when not durable.
    pub flush_every: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            durable: false,
            flush_every: Duration::from_millis(200),
        }
    }
}

fn tracking_key(agency: &str, tracking: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(agency.len() + tracking.len() + 10);
    k.extend_from_slice(agency.as_bytes());
    k.push(0);
    k.extend_from_slice(tracking.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn tracking_prefix(agency: &str, tracking: &str) -> Vec<u8> {
    let mut k = tracking_key(agency, tracking, 0);
    k.truncate(k.len() - 8);
    k
}

impl Audit {
    /// Opens the log in `db` and starts the writer task.
    pub fn open(db: &sled::Db, opts: AuditOptions) -> Result<Self, AuditError> {
        let log = db.open_tree(TREE_LOG)?;
        let by_tracking = db.open_tree(TREE_BY_TRACKING)?;
        let (tx, rx) = mpsc::channel(16 * 1024);
        let (next_seq, prev_hash) = match log.last()? {
            Some((k, v)) => {
                let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
                let rec: AuditRecord =
                    serde_json::from_slice(&v).map_err(|e| AuditError::Corrupt {
                        seq,
                        message: e.to_string(),
                    })?;
                (seq + 1, rec.hash)
            }
            None => (1, "0".repeat(64)),
        };
        let writer = Writer {
            db: db.clone(),
            log: log.clone(),
            by_tracking: by_tracking.clone(),
            next_seq,
            prev_hash,
            opts,
        };
        tokio::spawn(writer.run(rx));
        Ok(Self {
            tx,
            log,
            by_tracking,
        })
    }

    /// Appends a record and waits until it is in the log (and on disk when durable).
    pub async fn append(&self, rec: AuditRecord) -> Result<u64, AuditError> {
        self.append_from(&mut Some(rec)).await
    }

    /// Appends the record held in `slot` and waits until it is in the log (and on disk
    /// when durable). Cancel-safe: the record stays in `slot` until the writer has room
    /// for it and is handed over in the same step, so a caller dropped at any point either
    /// still holds the record (and can append it with [`Audit::append_detached`]) or has
    /// already handed it to the writer — it is never lost or written twice.
    pub async fn append_from(&self, slot: &mut Option<AuditRecord>) -> Result<u64, AuditError> {
        let permit = self.tx.reserve().await.map_err(|_| AuditError::Closed)?;
        let Some(rec) = slot.take() else {
            return Err(AuditError::Corrupt {
                seq: 0,
                message: "no audit record to append".into(),
            });
        };
        let (done, wait) = oneshot::channel();
        permit.send((rec, Some(done)));
        match wait.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(message)) => Err(AuditError::Corrupt { seq: 0, message }),
            Err(_) => Err(AuditError::Closed),
        }
    }

    /// Appends a record without waiting (for callers that cannot await, e.g. a drop
    /// guard). When the writer's queue is full the record is handed over from a task.
    pub fn append_detached(&self, rec: AuditRecord) {
        use tokio::sync::mpsc::error::TrySendError;
        match self.tx.try_send((rec, None)) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let tx = self.tx.clone();
                    rt.spawn(async move {
                        if tx.send(job).await.is_err() {
                            tracing::error!(
                                message = "audit writer stopped; a record was not written"
                            );
                        }
                    });
                }
                Err(_) => tracing::error!(
                    message = "audit queue full outside the runtime; a record was not written",
                    inquiry_id = %job.0.inquiry_id
                ),
            },
            Err(TrySendError::Closed(job)) => tracing::error!(
                message = "audit writer stopped; a record was not written",
                inquiry_id = %job.0.inquiry_id
            ),
        }
    }

    /// The trail of one tracking code, as created by `agency` (nobody else's records).
    pub fn trace(&self, agency: &str, tracking: &str) -> Result<Vec<AuditRecord>, AuditError> {
        let mut out = Vec::new();
        for item in self
            .by_tracking
            .scan_prefix(tracking_prefix(agency, tracking))
        {
            let (k, _) = item?;
            let seq_bytes: [u8; 8] = k[k.len() - 8..].try_into().unwrap_or([0; 8]);
            if let Some(v) = self.log.get(seq_bytes)? {
                out.push(decode(u64::from_be_bytes(seq_bytes), &v)?);
            }
        }
        Ok(out)
    }

    /// Walks the whole chain and checks every hash; returns the number of records.
    pub fn verify(&self) -> Result<u64, AuditError> {
        verify_tree(&self.log)
    }

    /// Iterates over every record in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<AuditRecord, AuditError>> + '_ {
        self.log.iter().map(|item| {
            let (k, v) = item?;
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            decode(seq, &v)
        })
    }
}

fn decode(seq: u64, v: &[u8]) -> Result<AuditRecord, AuditError> {
    serde_json::from_slice(v).map_err(|e| AuditError::Corrupt {
        seq,
        message: e.to_string(),
    })
}

/// Verifies the hash chain stored in the `audit.log` tree of `db`.
pub fn verify_db(db: &sled::Db) -> Result<u64, AuditError> {
    verify_tree(&db.open_tree(TREE_LOG)?)
}

fn verify_tree(log: &sled::Tree) -> Result<u64, AuditError> {
    let mut prev = "0".repeat(64);
    let mut count = 0;
    for item in log.iter() {
        let (k, v) = item?;
        let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
        let rec = decode(seq, &v)?;
        if rec.prev_hash != prev {
            return Err(AuditError::Corrupt {
                seq,
                message:
                    "prev_hash does not match the record before it (record removed or reordered)"
                        .into(),
            });
        }
        if rec.compute_hash() != rec.hash || rec.seq != seq {
            return Err(AuditError::Corrupt {
                seq,
                message: "hash does not match the record's contents (record altered)".into(),
            });
        }
        prev = rec.hash;
        count += 1;
    }
    Ok(count)
}

struct Writer {
    db: sled::Db,
    log: sled::Tree,
    by_tracking: sled::Tree,
    next_seq: u64,
    prev_hash: String,
    opts: AuditOptions,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut flush_tick = tokio::time::interval(self.opts.flush_every);
        let mut dirty = false;
        let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, MAX_BATCH) => {
                    if n == 0 {
                        let _ = self.db.flush_async().await;
                        return;
                    }
                    let result = self.write_batch(&mut batch);
                    let result = match result {
                        Ok(seqs) if self.opts.durable => {
                            self.db.flush_async().await.map(|_| seqs).map_err(|e| e.to_string())
                        }
                        other => { dirty = true; other }
                    };
                    for (i, (_, done)) in batch.drain(..).enumerate() {
                        if let Some(done) = done {
                            let _ = done.send(result.as_ref().map(|s| s[i]).map_err(Clone::clone));
                        }
                    }
                }
                _ = flush_tick.tick(), if dirty => {
                    if let Err(error) = self.db.flush_async().await {
                        tracing::error!(message = "audit flush failed", %error);
                    }
                    dirty = false;
                }
            }
        }
    }

    fn write_batch(&mut self, batch: &mut [Job]) -> Result<Vec<u64>, String> {
        let mut log = sled::Batch::default();
        let mut idx = sled::Batch::default();
        let mut seqs = Vec::with_capacity(batch.len());
        let (start_seq, start_hash) = (self.next_seq, self.prev_hash.clone());
        for (rec, _) in batch.iter_mut() {
            rec.seq = self.next_seq;
            rec.prev_hash = std::mem::take(&mut self.prev_hash);
            rec.hash = rec.compute_hash();
            self.prev_hash = rec.hash.clone();
            let value = serde_json::to_vec(rec).map_err(|e| e.to_string())?;
            log.insert(&rec.seq.to_be_bytes(), value);
            idx.insert(
                tracking_key(&rec.agency, &rec.tracking_code, rec.seq),
                &[] as &[u8],
            );
            seqs.push(rec.seq);
            self.next_seq += 1;
        }
        let applied = self
            .log
            .apply_batch(log)
            .and_then(|_| self.by_tracking.apply_batch(idx));
        if let Err(e) = applied {
            // Keep the chain consistent with what is on disk.
            self.next_seq = start_seq;
            self.prev_hash = start_hash;
            tracing::error!(message = "audit write failed", error = %e);
            return Err(e.to_string());
        }
        Ok(seqs)
    }
}
