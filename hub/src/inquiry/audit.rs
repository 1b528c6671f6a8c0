//! Append-only, hash-chained audit log of every inquiry (R10), stored in sled and written
//! by one group-commit task: many records per batch, never one fsync per request.
//!
//! Durability: with `durable` a call is answered only after its batch is flushed and
//! fsynced; otherwise a record reaches disk within `flush_every` (200 ms by default) of
//! its answer. Integrity: the chain makes any altered or removed record visible, and
//! signed checkpoints ([`crate::inquiry::checkpoint`]) make a cut-off tail or a re-hashed
//! chain visible too. The log is verified when it is opened; a broken one is refused.
//!
//! Records hold who asked what, why, under which tracking code, the outcome and latency —
//! never response data.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::inquiry::checkpoint::{
    Checkpoint, CheckpointError, CheckpointSigner, CheckpointVerifier,
};

const TREE_LOG: &str = "audit.log";
const TREE_BY_TRACKING: &str = "audit.by_tracking";
const TREE_CHECKPOINTS: &str = "audit.checkpoints";
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
    /// The record of a call that is not an inquiry (Events, Datasets): who, which method,
    /// the caller's tracking code, the outcome and why; no purpose, no latency.
    pub fn call(
        agency: &str,
        service: &str,
        tracking: &str,
        outcome: &str,
        detail: String,
    ) -> Self {
        AuditRecord {
            seq: 0,
            time_micros: jiff::Timestamp::now().as_microsecond(),
            inquiry_id: uuid::Uuid::now_v7().to_string(),
            agency: agency.to_owned(),
            service: service.to_owned(),
            purpose: String::new(),
            tracking_code: tracking.to_owned(),
            service_request_id: String::new(),
            outcome: outcome.to_owned(),
            latency_micros: 0,
            detail,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// The chain hash of this record: SHA-256 over its fields and `prev_hash`.
    pub fn chain_hash(&self) -> String {
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
    /// The chain or a signed checkpoint says the log was altered at `seq`.
    #[error("at record {seq}: {message}")]
    Broken { seq: u64, message: String },
    /// sled could not read the store's files.
    #[error("the store is damaged: {0}")]
    Damaged(String),
    #[error("audit writer has stopped; the hub is shutting down")]
    Closed,
}

impl AuditError {
    /// "BROKEN at record N: why" / "BROKEN: why", for reports.
    pub fn verdict(&self) -> String {
        match self {
            AuditError::Broken { .. } => format!("BROKEN {self}"),
            other => format!("BROKEN: {other}"),
        }
    }
}

type Done = oneshot::Sender<Result<u64, String>>;

/// What the writer is asked to do.
// Nearly every job is a record; boxing it would add an allocation per inquiry.
#[allow(clippy::large_enum_variant)]
enum Job {
    /// Append a record (and say when it is written, if anybody waits).
    Record(AuditRecord, Option<Done>),
    /// Sign a checkpoint over everything appended so far and flush it (shutdown).
    Checkpoint(oneshot::Sender<Result<Option<Checkpoint>, String>>),
}

/// Handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Job>,
    /// Set while the writer's last write or flush failed (health reports NOT_SERVING).
    failing: Arc<std::sync::atomic::AtomicBool>,
    log: sled::Tree,
    by_tracking: sled::Tree,
    checkpoints: sled::Tree,
}

/// Audit write settings.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Answer a call only once its record is on disk: the writer flushes each batch
    /// (group commit: one flush and one fsync for every record that arrived meanwhile)
    /// and the callers of that batch wait for it.
    pub durable: bool,
    /// When not durable: how often written records are flushed. A record is on disk at
    /// most this long (plus the time one flush takes) after its call was answered.
    pub flush_every: Duration,
    /// The sled directory; when set, durable flushes also fsync its data file (sled
    /// itself only uses `sync_file_range`, which survives a crash of the process, not a
    /// power loss).
    pub store_dir: Option<PathBuf>,
    /// Signs checkpoints with the hub's key; without it no checkpoints are made.
    pub signer: Option<CheckpointSigner>,
    /// A checkpoint after this many records...
    pub checkpoint_every_records: u64,
    /// ...or this long after the last one when records were added since (and at
    /// shutdown, [`Audit::checkpoint`]).
    pub checkpoint_every: Duration,
    /// Observes the time of each flush (the `tabadol_audit_flush_duration_seconds` metric).
    pub flush_timer: crate::ops::metrics::FlushTimer,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            durable: false,
            flush_every: DEFAULT_FLUSH_EVERY,
            store_dir: None,
            signer: None,
            checkpoint_every_records: 1000,
            checkpoint_every: Duration::from_secs(60),
            flush_timer: Default::default(),
        }
    }
}

/// Default flush interval when not durable: the loss window of a crash.
pub const DEFAULT_FLUSH_EVERY: Duration = Duration::from_millis(200);

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

fn key_seq(k: &[u8]) -> u64 {
    k.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

impl Audit {
    /// Opens the log in `db`, verifies it (the whole hash chain, and the checkpoints:
    /// their hashes always, their signatures when `opts.signer` is set — those made with
    /// another certificate are counted, not checked) and starts the writer task. A log
    /// that does not verify is refused: the hub must not add to a log it cannot vouch for.
    pub fn open(db: &sled::Db, opts: AuditOptions) -> Result<Self, AuditError> {
        let log = db.open_tree(TREE_LOG)?;
        let by_tracking = db.open_tree(TREE_BY_TRACKING)?;
        let checkpoints = db.open_tree(TREE_CHECKPOINTS)?;
        let verifier = opts.signer.as_ref().map(CheckpointSigner::verifier);
        let anchor = opts.store_dir.as_deref().map(anchor_path);
        let report = guarded(|| {
            verify_trees(
                &log,
                &checkpoints,
                &VerifyOptions {
                    verifier: verifier.as_ref(),
                    strict_signers: false,
                    anchor: anchor.as_deref(),
                },
            )
        })?;
        if report.other_signers > 0 {
            tracing::warn!(
                message = "audit checkpoints signed with another certificate were not checked; run `tabadol audit verify --cert` with the earlier hub certificates",
                checkpoints = report.other_signers
            );
        }
        let (next_seq, prev_hash) = match log.last()? {
            Some((k, v)) => {
                let seq = key_seq(&k);
                (seq + 1, decode(seq, &v)?.hash)
            }
            None => (1, "0".repeat(64)),
        };
        let fsync = match (&opts.store_dir, opts.durable) {
            (Some(dir), true) => Some(dir.join("db")),
            _ => None,
        };
        let (tx, rx) = mpsc::channel(16 * 1024);
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = Writer {
            failing: failing.clone(),
            db: db.clone(),
            log: log.clone(),
            by_tracking: by_tracking.clone(),
            checkpoints: checkpoints.clone(),
            last_checkpoint: report.last_checkpoint.as_ref().map_or(0, |c| c.seq),
            next_seq,
            prev_hash,
            fsync,
            anchor,
            pending_anchor: None,
            opts,
        };
        tokio::spawn(writer.run(rx));
        Ok(Self {
            tx,
            failing,
            log,
            by_tracking,
            checkpoints,
        })
    }

    /// Records waiting for the writer now, and the queue's capacity.
    pub fn queue_depth(&self) -> (usize, usize) {
        let max = self.tx.max_capacity();
        (max.saturating_sub(self.tx.capacity()), max)
    }

    /// Whether the writer's last write or flush failed (it retries with the next batch).
    pub fn writer_failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records whose time is in `[from_micros, until_micros)`, oldest first (usage
    /// reports, the dashboard).
    pub fn records_between(
        &self,
        from_micros: i64,
        until_micros: i64,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        records_between(&self.log, from_micros, until_micros)
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
        permit.send(Job::Record(rec, Some(done)));
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
        match self.tx.try_send(Job::Record(rec, None)) {
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
                    inquiry_id = %job_inquiry(&job)
                ),
            },
            Err(TrySendError::Closed(job)) => tracing::error!(
                message = "audit writer stopped; a record was not written",
                inquiry_id = %job_inquiry(&job)
            ),
        }
    }

    /// Signs a checkpoint over every record appended so far and flushes it to disk (the
    /// hub calls this at shutdown). `None` when no signer is configured or nothing new was
    /// written since the last checkpoint.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job::Checkpoint(done))
            .await
            .map_err(|_| AuditError::Closed)?;
        match wait.await {
            Ok(Ok(cp)) => Ok(cp),
            Ok(Err(message)) => Err(AuditError::Corrupt { seq: 0, message }),
            Err(_) => Err(AuditError::Closed),
        }
    }

    /// The trail of one tracking code, as created by `agency` (nobody else's records).
    pub fn trace(&self, agency: &str, tracking: &str) -> Result<Vec<AuditRecord>, AuditError> {
        trace_trees(&self.log, &self.by_tracking, agency, tracking)
    }

    /// Walks the whole chain and checks every hash and checkpoint (signatures are not
    /// checked here; `tabadol audit verify` does); returns the number of records.
    pub fn verify(&self) -> Result<u64, AuditError> {
        let report = verify_trees(&self.log, &self.checkpoints, &VerifyOptions::default())?;
        Ok(report.records)
    }

    /// Iterates over every record in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<AuditRecord, AuditError>> + '_ {
        self.log.iter().map(|item| {
            let (k, v) = item?;
            decode(key_seq(&k), &v)
        })
    }
}

fn job_inquiry(job: &Job) -> &str {
    match job {
        Job::Record(rec, _) => &rec.inquiry_id,
        Job::Checkpoint(_) => "-",
    }
}

/// Records of the log in `db` whose time is in `[from_micros, until_micros)`, oldest first.
/// Reads from the newest record back (records are appended in time order; a record up to
/// a minute older than its successor — a slow writer queue — is still found).
pub fn records_between_db(
    db: &sled::Db,
    from_micros: i64,
    until_micros: i64,
) -> Result<Vec<AuditRecord>, AuditError> {
    records_between(&db.open_tree(TREE_LOG)?, from_micros, until_micros)
}

fn records_between(
    log: &sled::Tree,
    from_micros: i64,
    until_micros: i64,
) -> Result<Vec<AuditRecord>, AuditError> {
    const SLACK_MICROS: i64 = 60_000_000;
    let mut out = Vec::new();
    for item in log.iter().rev() {
        let (k, v) = item?;
        let rec = decode(key_seq(&k), &v)?;
        if rec.time_micros < from_micros.saturating_sub(SLACK_MICROS) {
            break;
        }
        if rec.time_micros >= from_micros && rec.time_micros < until_micros {
            out.push(rec);
        }
    }
    out.reverse();
    Ok(out)
}

fn decode(seq: u64, v: &[u8]) -> Result<AuditRecord, AuditError> {
    serde_json::from_slice(v).map_err(|e| AuditError::Corrupt {
        seq,
        message: e.to_string(),
    })
}

fn trace_trees(
    log: &sled::Tree,
    by_tracking: &sled::Tree,
    agency: &str,
    tracking: &str,
) -> Result<Vec<AuditRecord>, AuditError> {
    let mut out = Vec::new();
    for item in by_tracking.scan_prefix(tracking_prefix(agency, tracking)) {
        let (k, _) = item?;
        let seq = key_seq(&k[k.len().saturating_sub(8)..]);
        if let Some(v) = log.get(seq.to_be_bytes())? {
            out.push(decode(seq, &v)?);
        }
    }
    Ok(out)
}

/// The trail of one tracking code in `db` without starting a writer (`tabadol audit
/// trace`).
pub fn trace_db(
    db: &sled::Db,
    agency: &str,
    tracking: &str,
) -> Result<Vec<AuditRecord>, AuditError> {
    trace_trees(
        &db.open_tree(TREE_LOG)?,
        &db.open_tree(TREE_BY_TRACKING)?,
        agency,
        tracking,
    )
}

/// The hub's store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("the store {path} cannot be opened: {reason}. {hint}")]
pub struct StoreError {
    pub path: String,
    pub reason: String,
    hint: &'static str,
}

/// What to do about a store that sled refuses or chokes on.
const DAMAGED_HINT: &str = "Its files are damaged or are not a sled store: keep them as evidence, \
     restore the store directory from a backup, and run `tabadol audit verify` on it";

/// Opens (or creates) the sled store in `path`, flushing every `flush_every_ms`. A store
/// whose files are damaged gives an error saying so — never a panic, even when sled
/// itself panics on what it reads.
pub fn open_store(path: &Path, flush_every_ms: Option<u64>) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(path)
        .flush_every_ms(flush_every_ms);
    let error = |reason: String, hint| StoreError {
        path: path.display().to_string(),
        reason,
        hint,
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(e))) => Err(error(
            e.to_string(),
            "Check that the directory exists, is writable by the hub and that no other \
             process (another hub, `tabadol audit`) has it open",
        )),
        Ok(Err(e)) => Err(error(e.to_string(), DAMAGED_HINT)),
        Err(panic) => Err(error(
            format!("sled failed reading it ({})", panic_text(&panic)),
            DAMAGED_HINT,
        )),
    }
}

/// Runs `f` over the store, turning a panic of sled on damaged data into an error.
pub fn guarded<T>(f: impl FnOnce() -> Result<T, AuditError>) -> Result<T, AuditError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(AuditError::Damaged(format!(
            "sled failed reading the store ({}); its files are damaged",
            panic_text(&panic)
        )))
    })
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned())
}

/// How strictly [`verify_db`] checks checkpoint signatures.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions<'a> {
    /// The hub certificates to check signatures with; `None`: signatures not checked.
    pub verifier: Option<&'a CheckpointVerifier>,
    /// A checkpoint signed by a certificate not in `verifier` is BROKEN (else counted in
    /// [`VerifyReport::other_signers`]).
    pub strict_signers: bool,
    /// The checkpoint file kept outside the store ([`anchor_path`]), when known.
    pub anchor: Option<&'a Path>,
}

/// What a successful verification covered.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Records in the log (1..=records).
    pub records: u64,
    /// Signed checkpoints found (each one's hash matched its record).
    pub checkpoints: u64,
    /// Of those, how many had their signature checked.
    pub signatures_checked: u64,
    /// Checkpoints signed by a certificate that was not given (not checked).
    pub other_signers: u64,
    /// The newest checkpoint.
    pub last_checkpoint: Option<Checkpoint>,
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} records, hash chain verified", self.records)?;
        match &self.last_checkpoint {
            None => write!(
                f,
                "; no signed checkpoint yet, so a cut-off tail or a re-hashed chain would not be detected"
            ),
            Some(cp) => {
                write!(
                    f,
                    "; {} signed checkpoints match the chain ({} signatures verified",
                    self.checkpoints, self.signatures_checked
                )?;
                if self.other_signers > 0 {
                    write!(
                        f,
                        ", {} signed by another certificate not checked",
                        self.other_signers
                    )?;
                }
                write!(
                    f,
                    "); the last checkpoint covers records 1..={} (hash {}, signed {})",
                    cp.seq,
                    &cp.hash[..cp.hash.len().min(16)],
                    cp.time_text()
                )?;
                if self.records > cp.seq {
                    write!(
                        f,
                        "; records {}..={} came after it and are covered by the chain only",
                        cp.seq + 1,
                        self.records
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// Verifies the hash chain and the signed checkpoints stored in `db`.
pub fn verify_db(db: &sled::Db, opts: &VerifyOptions<'_>) -> Result<VerifyReport, AuditError> {
    guarded(|| {
        verify_trees(
            &db.open_tree(TREE_LOG)?,
            &db.open_tree(TREE_CHECKPOINTS)?,
            opts,
        )
    })
}

/// Where the newest checkpoint is also kept, outside sled, for the store in `store`
/// (`<data_dir>/audit-checkpoint.json`): deleting the checkpoints together with the tail
/// of the log, or a store that comes back empty from damaged files, still shows.
pub fn anchor_path(store: &Path) -> PathBuf {
    store.with_file_name("audit-checkpoint.json")
}

fn check_signature(
    cp: &Checkpoint,
    opts: &VerifyOptions<'_>,
    report: &mut VerifyReport,
) -> Result<(), AuditError> {
    let Some(verifier) = opts.verifier else {
        return Ok(());
    };
    match verifier.verify(cp) {
        Ok(()) => report.signatures_checked += 1,
        Err(CheckpointError::UnknownSigner(_)) if !opts.strict_signers => report.other_signers += 1,
        Err(e) => {
            return Err(AuditError::Broken {
                seq: cp.seq,
                message: format!(
                    "the checkpoint of {} covering records 1..={}: {e}",
                    cp.time_text(),
                    cp.seq
                ),
            })
        }
    }
    Ok(())
}

fn verify_trees(
    log: &sled::Tree,
    checkpoints: &sled::Tree,
    opts: &VerifyOptions<'_>,
) -> Result<VerifyReport, AuditError> {
    let mut report = VerifyReport::default();
    let mut cps: Vec<Checkpoint> = Vec::new();
    for item in checkpoints.iter() {
        let (k, v) = item?;
        let seq = key_seq(&k);
        let cp: Checkpoint = serde_json::from_slice(&v).map_err(|e| AuditError::Broken {
            seq,
            message: format!("the signed checkpoint stored for this record is unreadable: {e}"),
        })?;
        if cp.seq != seq {
            return Err(AuditError::Broken {
                seq,
                message: format!(
                    "the checkpoint stored for this record names record {} (moved or altered)",
                    cp.seq
                ),
            });
        }
        check_signature(&cp, opts, &mut report)?;
        cps.push(cp);
    }
    if let Some(path) = opts.anchor.filter(|p| p.exists()) {
        let cp: Checkpoint = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| AuditError::Broken {
                seq: 0,
                message: format!(
                    "the checkpoint file {} is unreadable ({e}); restore it with the store from a backup",
                    path.display()
                ),
            })?;
        match cps.binary_search_by_key(&cp.seq, |c| c.seq) {
            Ok(i) if cps[i] == cp => {}
            Ok(i) => {
                return Err(AuditError::Broken {
                    seq: cp.seq,
                    message: format!(
                        "the checkpoint in {} differs from the one in the store (hash {} there, {} in the store): one of them was altered",
                        path.display(),
                        cp.hash,
                        cps[i].hash
                    ),
                })
            }
            Err(i) => {
                check_signature(&cp, opts, &mut report)?;
                cps.insert(i, cp);
            }
        }
    }
    let mut next_cp = cps.iter().peekable();
    let mut covered = 0; // seq of the last checkpoint passed
    let mut prev = "0".repeat(64);
    for item in log.iter() {
        let (k, v) = item?;
        let seq = key_seq(&k);
        let expected = report.records + 1;
        if seq != expected {
            return Err(AuditError::Broken {
                seq: expected,
                message: format!(
                    "record {expected} is missing (the next record in the log is {seq})"
                ),
            });
        }
        let rec = decode(seq, &v)?;
        if rec.prev_hash != prev {
            return Err(AuditError::Broken {
                seq,
                message:
                    "prev_hash does not match the record before it (record removed or reordered)"
                        .into(),
            });
        }
        if rec.chain_hash() != rec.hash || rec.seq != seq {
            return Err(AuditError::Broken {
                seq,
                message: "hash does not match the record's contents (record altered)".into(),
            });
        }
        if let Some(cp) = next_cp.next_if(|cp| cp.seq == seq) {
            if cp.hash != rec.hash {
                return Err(AuditError::Broken {
                    seq,
                    message: format!(
                        "the record does not match the signed checkpoint of {}: a record in {}..={seq} was rewritten and the chain re-hashed after it",
                        cp.time_text(),
                        covered + 1
                    ),
                });
            }
            covered = seq;
            report.checkpoints += 1;
        }
        prev = rec.hash;
        report.records += 1;
    }
    if let Some(cp) = next_cp.last() {
        let last = report.records;
        return Err(AuditError::Broken {
            seq: last + 1,
            message: format!(
                "the log ends at record {last}, but the signed checkpoint of {} covers records 1..={}: records {}..={} were cut off the tail",
                cp.time_text(),
                cp.seq,
                last + 1,
                cp.seq
            ),
        });
    }
    report.last_checkpoint = cps.pop();
    Ok(report)
}

/// Flushes sled and, when `fsync` names its data file (durable mode), fsyncs it: sled
/// itself only uses `sync_file_range`, which survives the process, not a power loss.
async fn flush_store(db: &sled::Db, fsync: Option<PathBuf>) -> Result<(), String> {
    db.flush_async().await.map_err(|e| e.to_string())?;
    if let Some(path) = fsync {
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_data())
                .map_err(|e| format!("fsync {}: {e}", path.display()))
        })
        .await
        .map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Replaces the checkpoint file atomically (write aside, fsync, rename).
fn write_anchor(path: &Path, value: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(value).and_then(|_| f.sync_data()))
        .and_then(|_| std::fs::rename(&tmp, path));
    written.map_err(|e| format!("writing the checkpoint file {}: {e}", path.display()))
}

struct Writer {
    db: sled::Db,
    log: sled::Tree,
    by_tracking: sled::Tree,
    checkpoints: sled::Tree,
    /// Sequence of the newest checkpoint (0: none).
    last_checkpoint: u64,
    next_seq: u64,
    prev_hash: String,
    /// File fsynced after each durable flush.
    fsync: Option<PathBuf>,
    /// Where each new checkpoint is also written ([`anchor_path`]).
    anchor: Option<PathBuf>,
    /// The newest checkpoint, to be written to `anchor` after the next flush.
    pending_anchor: Option<Vec<u8>>,
    opts: AuditOptions,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

/// Somebody waiting for a flush: a durable caller (its record's sequence number) or a
/// checkpoint request (the checkpoint made for it).
type CheckpointDone = oneshot::Sender<Result<Option<Checkpoint>, String>>;
enum Waiter {
    Record(Done, u64),
    Checkpoint(CheckpointDone, Option<Checkpoint>),
}

fn answer(waiters: Vec<Waiter>, result: &Result<(), String>) {
    for w in waiters {
        match w {
            Waiter::Record(done, seq) => {
                let _ = done.send(result.clone().map(|()| seq));
            }
            Waiter::Checkpoint(done, cp) => {
                let _ = done.send(result.clone().map(|()| cp));
            }
        }
    }
}

/// One flush on its way to disk, and who waits for it.
struct Flight {
    task: tokio::task::JoinHandle<Result<(), String>>,
    waiters: Vec<Waiter>,
    /// The checkpoint file this flush writes once the store is on disk (kept for the
    /// next flush if this one fails).
    anchor: Option<Vec<u8>>,
}

impl Writer {
    /// The writer loop. Writing and flushing are pipelined: while one flush (sled flush,
    /// fsync of the data file, checkpoint file) is on its way to disk in its own task, the
    /// loop keeps writing the records that arrive, and their durable callers wait for the
    /// next flush, which starts as soon as the one in flight ends and covers all of them
    /// (group commit). A caller is answered only by a flush that started after its record
    /// was written, so "answered" still means "on disk".
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut flush_tick = tokio::time::interval(self.opts.flush_every);
        let mut checkpoint_tick = tokio::time::interval(self.opts.checkpoint_every);
        checkpoint_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Written since the last flush started.
        let mut dirty = false;
        // Written, waiting for a flush that has not started yet.
        let mut pending: Vec<Waiter> = Vec::new();
        let mut flight: Option<Flight> = None;
        let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                biased;
                joined = async { (&mut flight.as_mut().expect("guarded").task).await }, if flight.is_some() => {
                    let done = flight.take().expect("guarded");
                    self.land(done, joined.unwrap_or_else(|e| Err(format!("audit flush task: {e}"))), &mut dirty);
                    if !pending.is_empty() {
                        flight = Some(self.take_off(std::mem::take(&mut pending)));
                        dirty = false;
                    }
                }
                n = rx.recv_many(&mut batch, MAX_BATCH) => {
                    if n == 0 {
                        self.shut_down(flight.take(), pending).await;
                        return;
                    }
                    self.handle(&mut batch, &mut pending);
                    dirty = true;
                    if flight.is_none() && !pending.is_empty() {
                        flight = Some(self.take_off(std::mem::take(&mut pending)));
                        dirty = false;
                    }
                }
                _ = flush_tick.tick(), if dirty && flight.is_none() => {
                    flight = Some(self.take_off(std::mem::take(&mut pending)));
                    dirty = false;
                }
                _ = checkpoint_tick.tick() => {
                    match self.checkpoint() {
                        Ok(Some(_)) => dirty = true,
                        Ok(None) => {}
                        Err(error) => tracing::error!(message = "audit checkpoint failed", %error),
                    }
                }
            }
        }
    }

    /// Writes the records of one batch and makes the checkpoints due or asked for. Callers
    /// who need the disk (durable callers, checkpoint requests) go to `pending`; the others
    /// are answered now.
    fn handle(&mut self, batch: &mut Vec<Job>, pending: &mut Vec<Waiter>) {
        let mut records = Vec::with_capacity(batch.len());
        let mut asked = Vec::new();
        for job in batch.drain(..) {
            match job {
                Job::Record(rec, done) => records.push((rec, done)),
                Job::Checkpoint(done) => asked.push(done),
            }
        }
        let result = self.write_batch(&mut records);
        self.failing
            .store(result.is_err(), std::sync::atomic::Ordering::Release);
        let due = self.next_seq > self.last_checkpoint + self.opts.checkpoint_every_records;
        let checkpoint = if result.is_ok() && (due || !asked.is_empty()) {
            self.checkpoint()
        } else {
            Ok(None)
        };
        if let Err(e) = &checkpoint {
            tracing::error!(message = "audit checkpoint failed", error = %e);
        }
        for (i, (_, done)) in records.into_iter().enumerate() {
            let Some(done) = done else { continue };
            match &result {
                Ok(seqs) if self.opts.durable => pending.push(Waiter::Record(done, seqs[i])),
                Ok(seqs) => {
                    let _ = done.send(Ok(seqs[i]));
                }
                Err(e) => {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
        for done in asked {
            match &checkpoint {
                Ok(cp) => pending.push(Waiter::Checkpoint(done, cp.clone())),
                Err(e) => {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }

    /// Starts a flush of everything written so far (and of the newest checkpoint's file)
    /// in its own task; `waiters` are answered when it lands.
    fn take_off(&mut self, waiters: Vec<Waiter>) -> Flight {
        let anchor = self.pending_anchor.take();
        let (db, fsync, anchor_path) = (self.db.clone(), self.fsync.clone(), self.anchor.clone());
        let timer = self.opts.flush_timer.clone();
        let value = anchor.clone();
        let task = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let flushed = flush_store(&db, fsync).await;
            timer.observe(started.elapsed());
            flushed?;
            if let (Some(path), Some(value)) = (anchor_path, value) {
                tokio::task::spawn_blocking(move || write_anchor(&path, &value))
                    .await
                    .map_err(|e| e.to_string())??;
            }
            Ok(())
        });
        Flight {
            task,
            waiters,
            anchor,
        }
    }

    /// A flush ended: answers its waiters; a failed one keeps its checkpoint file for the
    /// next flush and leaves the store dirty, so it is tried again.
    fn land(&mut self, flight: Flight, result: Result<(), String>, dirty: &mut bool) {
        self.failing
            .store(result.is_err(), std::sync::atomic::Ordering::Release);
        if let Err(error) = &result {
            tracing::error!(message = "audit flush failed", %error);
            if self.pending_anchor.is_none() {
                self.pending_anchor = flight.anchor;
            }
            *dirty = true;
        }
        answer(flight.waiters, &result);
    }

    /// The channel closed (the hub is stopping): lands the flush in flight, signs a last
    /// checkpoint and flushes everything, then answers whoever still waits.
    async fn shut_down(&mut self, flight: Option<Flight>, pending: Vec<Waiter>) {
        let mut dirty = false;
        if let Some(mut f) = flight {
            let joined = (&mut f.task).await;
            self.land(
                f,
                joined.unwrap_or_else(|e| Err(format!("audit flush task: {e}"))),
                &mut dirty,
            );
        }
        if let Err(error) = self.checkpoint() {
            tracing::error!(message = "audit checkpoint at shutdown failed", %error);
        }
        let mut last = self.take_off(pending);
        let joined = (&mut last.task).await;
        self.land(
            last,
            joined.unwrap_or_else(|e| Err(format!("audit flush task: {e}"))),
            &mut dirty,
        );
    }

    /// Signs and stores a checkpoint over the newest record, if there is a signer and a
    /// record since the last checkpoint.
    fn checkpoint(&mut self) -> Result<Option<Checkpoint>, String> {
        let seq = self.next_seq - 1;
        let Some(signer) = &self.opts.signer else {
            return Ok(None);
        };
        if seq == 0 || seq == self.last_checkpoint {
            return Ok(None);
        }
        let cp = signer.sign(
            seq,
            &self.prev_hash,
            jiff::Timestamp::now().as_microsecond(),
        )?;
        let value = serde_json::to_vec(&cp).map_err(|e| e.to_string())?;
        self.checkpoints
            .insert(seq.to_be_bytes(), value.as_slice())
            .map_err(|e| e.to_string())?;
        self.last_checkpoint = seq;
        // Written out only once the store holds the checkpoint on disk: an anchor ahead
        // of the store would call a crash's lost window a cut-off tail.
        self.pending_anchor = Some(value);
        tracing::info!(
            message = "audit checkpoint signed",
            seq,
            hash = %cp.hash,
            signer_sha256 = %cp.signer_sha256
        );
        Ok(Some(cp))
    }

    fn write_batch(
        &mut self,
        batch: &mut [(AuditRecord, Option<Done>)],
    ) -> Result<Vec<u64>, String> {
        let mut log = sled::Batch::default();
        let mut idx = sled::Batch::default();
        let mut seqs = Vec::with_capacity(batch.len());
        let (start_seq, start_hash) = (self.next_seq, self.prev_hash.clone());
        for (rec, _) in batch.iter_mut() {
            rec.seq = self.next_seq;
            rec.prev_hash = std::mem::take(&mut self.prev_hash);
            rec.hash = rec.chain_hash();
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
        if seqs.is_empty() {
            return Ok(seqs);
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
