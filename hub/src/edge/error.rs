//! Errors of the inquiry and event paths, and the one place where they become gRPC
//! statuses (with rich error details) and audit outcomes.

use std::time::Duration;

use tabadol_adapters::ProviderError;
use tabadol_policy::Deny;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// Domain for `ErrorInfo` details.
const DOMAIN: &str = "tabadol.ir";

/// One invalid input field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }

    /// The one violation standing for `n` more that are not described.
    pub fn more(n: usize) -> Self {
        Self::new(
            MORE_FIELD,
            format!("{n} more violations not listed; fix the ones listed and call again"),
        )
    }
}

/// Most violations described in one status (or one error message); any more are counted
/// in one [`Violation::more`].
pub const MAX_VIOLATIONS: usize = 20;
/// Cap on a status as sent: the percent-encoded `grpc-message` plus the base64
/// `grpc-status-details-bin`, well under the 8 KiB header limit of common gRPC clients.
pub const MAX_STATUS_BYTES: usize = 4096;
/// Longest message as sent (percent-encoded); the details carry a copy of it.
const MAX_MESSAGE_BYTES: usize = 1024;
/// Longest field name kept in a violation (field names can be caller-chosen).
const MAX_VIOLATION_FIELD: usize = 96;
/// Longest violation description kept.
const MAX_VIOLATION_DESCRIPTION: usize = 320;
/// The field of [`Violation::more`].
const MORE_FIELD: &str = "…";

/// Why an inquiry (or a publish) did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("the client certificate (CN={common_name}) matches no agency in agencies.yaml; ask the secretariat to register it")]
    UnknownAgency { common_name: String },
    #[error("invalid request: {}", summarize(.0))]
    Invalid(Vec<Violation>),
    #[error("service `{0}` is not in the service catalog; call Inquiry/ListServices to see what you may call")]
    UnknownService(String),
    #[error("{0}")]
    Denied(Deny),
    #[error(
        "agency {agency} may not {action}; ask the interoperability working group for a grant"
    )]
    NotAllowed { agency: String, action: String },
    #[error("rate limit of the grant {agency} → {service} reached; retry after {} ms", retry_after.as_millis())]
    RateLimited {
        agency: String,
        service: String,
        retry_after: Duration,
    },
    #[error("provider {provider} did not answer within the caller's deadline ({} ms)", budget.as_millis())]
    DeadlineExceeded { provider: String, budget: Duration },
    #[error("service {service} of provider {provider} is in planned maintenance until {until} (Tehran time){}; retry after it", if note.is_empty() { String::new() } else { format!(": {note}") })]
    Maintenance {
        provider: String,
        service: String,
        /// End of the window, Jalali Tehran wall-clock time.
        until: String,
        note: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    Provider(#[from] ProviderError),
    #[error("no adapter is configured for provider {0}; check the `providers` section of the hub config")]
    NoAdapter(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// A publisher event id already used for an event with other content. Names the
    /// fields that differ, never their values (no national code).
    #[error("event_id `{event_id}` of {publisher} was already used for a different event (sequence {seq}; differs in {}); give a new event a new event_id", .differs.join(", "))]
    EventIdReused {
        publisher: String,
        event_id: String,
        /// Sequence number of the event first published under this id.
        seq: u64,
        /// Names of the fields that differ: `type`, `national_code`, `date`.
        differs: Vec<&'static str>,
    },
    /// The hub runs as many inquiries as it is configured for (`limits.inquiries_in_flight`);
    /// this one was shed rather than queued.
    #[error("the hub is at its limit of {limit} inquiries in progress; retry after {} ms", retry_after.as_millis())]
    Overloaded { limit: usize, retry_after: Duration },
    /// A Tokenize call beyond the agency's quota of national codes.
    #[error("{0}")]
    TokenizeQuota(crate::events::tokens::QuotaExceeded),
    /// The hub is stopping: a `Subscribe` stream ends (or is refused) naming where to resume.
    #[error("the hub is shutting down; subscribe again with after_sequence = {after_sequence}")]
    ShuttingDown { after_sequence: u64 },
    /// The caller's certificate was revoked by a reloaded certificate revocation list.
    #[error("the client certificate (serial {serial}) has been revoked; ask the national PKI for a new certificate")]
    Revoked { serial: String },
    /// A conditional grant (R4) whose condition does not hold for this request. Names the
    /// dataset and the input, never the dataset's content.
    #[error("the grant for this service is conditional: the value of input `{input}` does not meet `{rule}` in dataset {dataset} at the time of the request")]
    ConditionNotMet {
        dataset: String,
        input: String,
        rule: &'static str,
    },
}

/// The first few violations as one line; the details list them all (up to the cap).
fn summarize(v: &[Violation]) -> String {
    const IN_MESSAGE: usize = 1;
    let mut s = String::new();
    for v in v.iter().take(IN_MESSAGE) {
        if !s.is_empty() {
            s.push_str("; ");
        }
        s.push_str(&clip(&v.field, MAX_VIOLATION_FIELD));
        s.push_str(": ");
        s.push_str(&clip(&v.description, MAX_VIOLATION_DESCRIPTION));
    }
    if v.len() > IN_MESSAGE {
        s.push_str(&format!(
            " (and {} more in the details)",
            v.len() - IN_MESSAGE
        ));
    }
    s
}

/// The first `listed` violations, clipped, plus one counting the rest.
fn listed_violations(v: &[Violation], listed: usize) -> Vec<FieldViolation> {
    let listed = listed.min(v.len());
    let mut out: Vec<FieldViolation> = v[..listed]
        .iter()
        .map(|v| {
            FieldViolation::new(
                clip(&v.field, MAX_VIOLATION_FIELD),
                clip(&v.description, MAX_VIOLATION_DESCRIPTION),
            )
        })
        .collect();
    if listed < v.len() {
        let more = Violation::more(v.len() - listed);
        out.push(FieldViolation::new(more.field, more.description));
    }
    out
}

/// A BadRequest status listing as many of `v` as fit in [`MAX_STATUS_BYTES`] (at most
/// [`MAX_VIOLATIONS`]; a list one longer is kept whole), the rest counted.
fn bad_request(code: Code, message: &str, v: &[Violation]) -> Status {
    let mut listed = if v.len() > MAX_VIOLATIONS + 1 {
        MAX_VIOLATIONS
    } else {
        v.len()
    };
    loop {
        let status = Status::with_error_details(
            code,
            message,
            ErrorDetails::with_bad_request(listed_violations(v, listed)),
        );
        if listed == 0 || status_wire_len(&status) <= MAX_STATUS_BYTES {
            return status;
        }
        listed -= 1;
    }
}

/// Bytes `message` takes as a percent-encoded `grpc-message` header.
fn encoded_message_len(message: &str) -> usize {
    message
        .bytes()
        .map(|b| match b {
            b' ' | b'"' | b'#' | b'%' | b'<' | b'>' | b'`' | b'?' | b'{' | b'}' => 3,
            0x21..=0x7e => 1,
            _ => 3,
        })
        .sum()
}

/// Bytes a status takes in its trailers (message and details, as encoded on the wire).
pub fn status_wire_len(status: &Status) -> usize {
    encoded_message_len(status.message()) + status.details().len().div_ceil(3) * 4
}

/// The longest prefix of `message` (cut on a character boundary, marked with `…`) whose
/// encoded form fits in `budget` bytes.
fn fit_message(message: &str, budget: usize) -> String {
    if encoded_message_len(message) <= budget {
        return message.to_owned();
    }
    let budget = budget.saturating_sub(encoded_message_len("…"));
    let mut used = 0;
    let mut end = 0;
    for (i, c) in message.char_indices() {
        let mut buf = [0u8; 4];
        let n = encoded_message_len(c.encode_utf8(&mut buf));
        if used + n > budget {
            break;
        }
        used += n;
        end = i + c.len_utf8();
    }
    format!("{}…", &message[..end])
}

/// `status` cut to [`MAX_STATUS_BYTES`] on the wire: the message is shortened first; details
/// that alone would not fit are dropped (the message still says what is wrong).
pub fn bound_status(status: Status) -> Status {
    if status_wire_len(&status) <= MAX_STATUS_BYTES {
        return status;
    }
    let details_len = status.details().len().div_ceil(3) * 4;
    // Keep room for at least a sentence of message.
    if details_len + 512 <= MAX_STATUS_BYTES {
        let message = fit_message(status.message(), MAX_STATUS_BYTES - details_len);
        Status::with_details(status.code(), message, status.details().to_vec().into())
    } else {
        Status::new(
            status.code(),
            fit_message(status.message(), MAX_STATUS_BYTES),
        )
    }
}

impl HubError {
    /// The audit outcome word for this error.
    pub fn outcome(&self) -> &'static str {
        match self {
            HubError::UnknownAgency { .. } => "unauthenticated",
            HubError::Invalid(_) => "invalid",
            HubError::UnknownService(_) => "unknown_service",
            HubError::Denied(_) | HubError::NotAllowed { .. } => "denied",
            HubError::RateLimited { .. } => "rate_limited",
            HubError::Overloaded { .. } => "overloaded",
            HubError::Maintenance { .. } => "maintenance",
            HubError::DeadlineExceeded { .. } => "deadline_exceeded",
            HubError::Provider(p) => match p {
                ProviderError::Timeout { .. } => "deadline_exceeded",
                ProviderError::NotFound { .. } => "not_found",
                ProviderError::Rejected { .. } => "rejected",
                ProviderError::Invalid { .. } => "invalid",
                _ => "unavailable",
            },
            HubError::NoAdapter(_) => "unavailable",
            HubError::Internal(_) => "internal",
            HubError::EventIdReused { .. } => "conflict",
            HubError::TokenizeQuota(_) => "quota_exceeded",
            HubError::ShuttingDown { .. } => "unavailable",
            HubError::Revoked { .. } => "unauthenticated",
            HubError::ConditionNotMet { .. } => "condition_not_met",
        }
    }

    /// What the audit log keeps of this error: enough to explain the outcome, never a
    /// subject's identifiers or anything a provider said (the log outlives the call and
    /// is read back by `Trace`).
    pub fn audit_detail(&self) -> String {
        match self {
            HubError::Invalid(v) => clip(
                &format!(
                    "invalid ({}): {}",
                    v.len(),
                    v.iter()
                        .map(|v| clip(&v.field, 64))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                MAX_AUDIT_DETAIL,
            ),
            HubError::UnknownService(s) => {
                format!("service `{}` is not in the catalog", clip(s, 64))
            }
            HubError::Provider(p) => {
                let provider = p.provider();
                match p {
                    ProviderError::Unavailable { .. } => {
                        format!("provider {provider} is unavailable")
                    }
                    ProviderError::Timeout { after, .. } => {
                        format!(
                            "provider {provider} did not answer within {} ms",
                            after.as_millis()
                        )
                    }
                    ProviderError::NotFound { .. } => {
                        format!("provider {provider} has no record of the subject")
                    }
                    ProviderError::Rejected { .. } => {
                        format!("provider {provider} rejected the request")
                    }
                    ProviderError::Invalid { .. } => {
                        format!("provider {provider} refused the inputs as invalid")
                    }
                    ProviderError::Protocol { .. } => {
                        format!("provider {provider} answered in an unexpected format")
                    }
                    ProviderError::UnknownOperation { .. } => {
                        format!("provider {provider} has no such operation")
                    }
                }
            }
            HubError::Internal(_) => "internal error".to_owned(),
            // Denials repeat what the caller asked for (fields, purpose): bounded.
            other => clip(&other.to_string(), MAX_AUDIT_DETAIL),
        }
    }

    /// The gRPC code for this error.
    pub fn code(&self) -> Code {
        match self {
            HubError::UnknownAgency { .. } => Code::Unauthenticated,
            HubError::Invalid(_) => Code::InvalidArgument,
            HubError::UnknownService(_) => Code::NotFound,
            HubError::Denied(_) | HubError::NotAllowed { .. } => Code::PermissionDenied,
            HubError::RateLimited { .. } => Code::ResourceExhausted,
            HubError::Overloaded { .. } => Code::Unavailable,
            HubError::Maintenance { .. } => Code::Unavailable,
            HubError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            HubError::Provider(p) => match p {
                ProviderError::Timeout { .. } => Code::DeadlineExceeded,
                ProviderError::NotFound { .. } => Code::NotFound,
                ProviderError::Rejected { .. } => Code::FailedPrecondition,
                ProviderError::Invalid { .. } => Code::InvalidArgument,
                _ => Code::Unavailable,
            },
            HubError::NoAdapter(_) => Code::Unavailable,
            HubError::Internal(_) => Code::Internal,
            HubError::EventIdReused { .. } => Code::AlreadyExists,
            HubError::TokenizeQuota(_) => Code::ResourceExhausted,
            HubError::ShuttingDown { .. } => Code::Unavailable,
            HubError::Revoked { .. } => Code::Unauthenticated,
            HubError::ConditionNotMet { .. } => Code::PermissionDenied,
        }
    }
}

/// How a Tokenize call beyond the agency's quota is refused: RetryInfo (when the call
/// fits later), a QuotaFailure naming the quota and an ErrorInfo.
fn quota_status(code: Code, message: String, q: &crate::events::tokens::QuotaExceeded) -> Status {
    let mut d = ErrorDetails::new();
    if let Some(after) = q.retry_after {
        d.set_retry_info(Some(after));
    }
    d.add_quota_failure_violation(
        format!("agency:{}", q.agency),
        format!("events.tokenize: {}", q.quota),
    );
    d.set_error_info(
        "TOKENIZE_QUOTA_EXCEEDED",
        DOMAIN,
        std::collections::HashMap::from([
            ("agency".to_owned(), q.agency.clone()),
            ("quota".to_owned(), q.quota.to_string()),
        ]),
    );
    Status::with_error_details(code, message, d)
}

/// At most `max` bytes of `s`, cut on a character boundary (for caller-chosen strings
/// kept in audit records).
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Longest audit detail kept.
const MAX_AUDIT_DETAIL: usize = 512;

impl From<HubError> for Status {
    /// Every status the hub sends is bounded here: at most [`MAX_VIOLATIONS`] violations
    /// and [`MAX_STATUS_BYTES`] on the wire, whichever service produced the error.
    fn from(e: HubError) -> Status {
        bound_status(to_status(e))
    }
}

fn to_status(e: HubError) -> Status {
    let code = e.code();
    // The details repeat the message (google.rpc.Status), so it is bounded first.
    let message = fit_message(&e.to_string(), MAX_MESSAGE_BYTES);
    match &e {
        HubError::Invalid(violations) => bad_request(code, &message, violations),
        HubError::RateLimited { retry_after, .. }
        | HubError::Maintenance { retry_after, .. }
        | HubError::Overloaded { retry_after, .. } => Status::with_error_details(
            code,
            message,
            ErrorDetails::with_retry_info(Some(*retry_after)),
        ),
        HubError::Denied(_) | HubError::NotAllowed { .. } => Status::with_error_details(
            code,
            message,
            ErrorDetails::with_error_info(
                "GRANT_MISSING",
                DOMAIN,
                std::collections::HashMap::<String, String>::new(),
            ),
        ),
        HubError::Internal(_) => {
            tracing::error!(message = "internal error", error = %e);
            Status::new(code, "internal error; the hub operators have been notified")
        }
        HubError::EventIdReused {
            event_id,
            seq,
            differs,
            ..
        } => Status::with_error_details(
            code,
            message,
            ErrorDetails::with_error_info(
                "EVENT_ID_REUSED",
                DOMAIN,
                std::collections::HashMap::from([
                    ("event_id".to_owned(), event_id.clone()),
                    ("sequence".to_owned(), seq.to_string()),
                    ("differs".to_owned(), differs.join(",")),
                ]),
            ),
        ),
        HubError::TokenizeQuota(q) => quota_status(code, message, q),
        HubError::ConditionNotMet { dataset, input, .. } => Status::with_error_details(
            code,
            message,
            ErrorDetails::with_error_info(
                "CONDITION_NOT_MET",
                DOMAIN,
                std::collections::HashMap::from([
                    ("dataset".to_owned(), dataset.clone()),
                    ("input".to_owned(), input.clone()),
                ]),
            ),
        ),
        _ => Status::new(code, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    /// Ten thousand violations give MAX_VIOLATIONS of them plus one counting the rest, in a
    /// status under MAX_STATUS_BYTES on the wire.
    #[test]
    fn many_violations_are_bounded() {
        let v: Vec<_> = (0..10_000)
            .map(|i| Violation::new(format!("params.x{i}{}", "y".repeat(200)), "z".repeat(2000)))
            .collect();
        let status = Status::from(HubError::Invalid(v));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status_wire_len(&status) <= MAX_STATUS_BYTES,
            "{}",
            status_wire_len(&status)
        );
        let bad = status.get_details_bad_request().expect("details kept");
        assert!(bad.field_violations.len() <= MAX_VIOLATIONS + 1);
        let last = bad.field_violations.last().unwrap();
        assert!(last.description.contains("more violations"), "{last:?}");
    }

    /// A long non-ASCII message (percent-encoded three bytes per byte) is cut to the cap
    /// on a character boundary.
    #[test]
    fn long_persian_message_is_cut() {
        let note = "به‌روزرسانی ".repeat(500);
        let status = Status::from(HubError::Maintenance {
            provider: "nocr".into(),
            service: "nocr.identity".into(),
            until: "1405/09/01 04:00".into(),
            note,
            retry_after: Duration::from_secs(1),
        });
        assert!(status_wire_len(&status) <= MAX_STATUS_BYTES);
        assert!(status.message().ends_with('…'));
        assert!(status.get_details_retry_info().is_some());
    }

    /// Small statuses pass unchanged.
    #[test]
    fn small_status_unchanged() {
        let s = Status::from(HubError::UnknownService("x".into()));
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().contains("`x`"));
    }
}
