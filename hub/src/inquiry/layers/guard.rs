//! The audit guard: every inquiry that got past authentication leaves exactly one audit
//! record, whatever its outcome, also when the caller goes away mid-call; and the count of
//! running inquiries that shutdown waits for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::Notify;

use crate::edge::error::{clip, HubError};
use crate::inquiry::audit::{Audit, AuditRecord};
use crate::inquiry::pipeline::{
    Caller, InquiryInput, MAX_PURPOSE_LEN, MAX_SERVICE_LEN, MAX_SERVICE_REQUEST_ID_LEN,
};

/// Longest tracking code kept in an audit record (longer ones are refused anyway).
const MAX_TRACKING_LEN: usize = 64;

/// Counts one running inquiry; the last one to end wakes whoever waits for the count to
/// reach zero.
pub struct InFlight<'a> {
    count: &'a AtomicUsize,
    idle: &'a Notify,
    /// Running inquiries when this one entered, itself included.
    at_entry: usize,
}

impl<'a> InFlight<'a> {
    pub fn enter(count: &'a AtomicUsize, idle: &'a Notify) -> Self {
        let at_entry = count.fetch_add(1, Ordering::AcqRel) + 1;
        Self {
            count,
            idle,
            at_entry,
        }
    }

    /// Running inquiries when this one entered, itself included.
    pub fn count(&self) -> usize {
        self.at_entry
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// Holds an inquiry's audit record until it is handed to the audit writer; if the inquiry
/// is dropped before that (the caller cancelled), the record is written as `cancelled`.
pub struct AuditGuard<'a> {
    audit: &'a Audit,
    started: Instant,
    record: Option<AuditRecord>,
    inquiry_id: String,
}

impl<'a> AuditGuard<'a> {
    /// Opens the record of one inquiry: caller-chosen strings are clipped, so a refused
    /// oversized request cannot write megabytes into the log.
    pub fn open(audit: &'a Audit, caller: &Caller, input: &InquiryInput) -> Self {
        let inquiry_id = uuid::Uuid::now_v7().to_string();
        Self {
            audit,
            started: Instant::now(),
            record: Some(AuditRecord {
                seq: 0,
                time_micros: jiff::Timestamp::now().as_microsecond(),
                inquiry_id: inquiry_id.clone(),
                agency: caller.agency.clone(),
                service: clip(&input.service, MAX_SERVICE_LEN),
                purpose: clip(&input.purpose, MAX_PURPOSE_LEN),
                tracking_code: clip(&input.tracking_code, MAX_TRACKING_LEN),
                service_request_id: clip(&input.service_request_id, MAX_SERVICE_REQUEST_ID_LEN),
                outcome: String::new(),
                latency_micros: 0,
                detail: String::new(),
                prev_hash: String::new(),
                hash: String::new(),
            }),
            inquiry_id,
        }
    }

    /// The id of this inquiry, returned to the caller and kept in the record.
    pub fn inquiry_id(&self) -> &str {
        &self.inquiry_id
    }

    /// Records the tracking code in its canonical form (after validation), so `Trace`
    /// finds it whichever digits the caller used.
    pub fn set_tracking_code(&mut self, canonical: &str) {
        if let Some(rec) = self.record.as_mut() {
            if rec.tracking_code != canonical {
                rec.tracking_code = clip(canonical, MAX_TRACKING_LEN);
            }
        }
    }

    /// Writes the record with the outcome of `result`. An answer never leaves unaudited:
    /// if the write fails, the result becomes an internal error.
    pub async fn finish<T>(mut self, result: Result<T, HubError>) -> Result<T, HubError> {
        if let Some(rec) = self.record.as_mut() {
            let (outcome, detail) = match &result {
                Ok(_) => ("ok", String::new()),
                Err(e) => (e.outcome(), e.audit_detail()),
            };
            rec.outcome = outcome.to_owned();
            rec.detail = detail;
            rec.latency_micros = self.started.elapsed().as_micros() as u64;
        }
        if let Err(e) = self.audit.append_from(&mut self.record).await {
            return Err(HubError::Internal(format!("audit write failed: {e}")));
        }
        result
    }
}

impl Drop for AuditGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut rec) = self.record.take() {
            rec.outcome = "cancelled".to_owned();
            rec.detail =
                "the caller went away (cancelled, or its deadline passed) before the answer"
                    .to_owned();
            rec.latency_micros = self.started.elapsed().as_micros() as u64;
            self.audit.append_detached(rec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit() -> (tempfile::TempDir, Audit) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let audit = Audit::open(&db, Default::default()).unwrap();
        (dir, audit)
    }

    fn input(tracking: &str) -> InquiryInput {
        InquiryInput {
            tracking_code: tracking.to_owned(),
            purpose: "p".to_owned(),
            service: "s".to_owned(),
            ..Default::default()
        }
    }

    async fn trail(audit: &Audit, tracking: &str) -> Vec<AuditRecord> {
        for _ in 0..200 {
            let recs = audit.trace("cbi", tracking).unwrap();
            if !recs.is_empty() {
                return recs;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Vec::new()
    }

    /// A guard dropped before `finish` (a cancelled call) still writes its record, as
    /// `cancelled`.
    #[tokio::test]
    async fn dropped_guard_writes_cancelled() {
        let (_dir, audit) = audit();
        let caller = Caller {
            agency: "cbi".to_owned(),
        };
        drop(AuditGuard::open(&audit, &caller, &input("T-drop-1")));
        let recs = trail(&audit, "T-drop-1").await;
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].outcome, "cancelled");
    }

    /// `finish` writes the outcome of the result and the canonical tracking code, once.
    #[tokio::test]
    async fn finish_writes_the_outcome_once() {
        let (_dir, audit) = audit();
        let caller = Caller {
            agency: "cbi".to_owned(),
        };
        let mut guard = AuditGuard::open(&audit, &caller, &input("T-۱۲۳۴۵۶"));
        guard.set_tracking_code("T-123456");
        let r: Result<(), _> = guard
            .finish(Err(HubError::UnknownService("x".to_owned())))
            .await;
        assert!(r.is_err());
        let recs = trail(&audit, "T-123456").await;
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].outcome, "unknown_service");
    }

    /// The in-flight count goes back down when the inquiry ends.
    #[test]
    fn in_flight_counts() {
        let count = AtomicUsize::new(0);
        let idle = Notify::new();
        let a = InFlight::enter(&count, &idle);
        let b = InFlight::enter(&count, &idle);
        assert_eq!(count.load(Ordering::Acquire), 2);
        drop(a);
        drop(b);
        assert_eq!(count.load(Ordering::Acquire), 0);
    }
}
