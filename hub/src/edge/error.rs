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
}

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
    /// A Tokenize call beyond the agency's quota of national codes.
    #[error("{0}")]
    TokenizeQuota(crate::events::tokens::QuotaExceeded),
    /// The hub is stopping: a `Subscribe` stream ends (or is refused) naming where to resume.
    #[error("the hub is shutting down; subscribe again with after_sequence = {after_sequence}")]
    ShuttingDown { after_sequence: u64 },
    /// The caller's certificate was revoked by a reloaded certificate revocation list.
    #[error("the client certificate (serial {serial}) has been revoked; ask the national PKI for a new certificate")]
    Revoked { serial: String },
}

fn summarize(v: &[Violation]) -> String {
    v.iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
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
            HubError::Maintenance { .. } => "maintenance",
            HubError::DeadlineExceeded { .. } => "deadline_exceeded",
            HubError::Provider(p) => match p {
                ProviderError::Timeout { .. } => "deadline_exceeded",
                ProviderError::NotFound { .. } => "not_found",
                ProviderError::Rejected { .. } => "rejected",
                _ => "unavailable",
            },
            HubError::NoAdapter(_) => "unavailable",
            HubError::Internal(_) => "internal",
            HubError::EventIdReused { .. } => "conflict",
            HubError::TokenizeQuota(_) => "quota_exceeded",
            HubError::ShuttingDown { .. } => "unavailable",
            HubError::Revoked { .. } => "unauthenticated",
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
            HubError::Maintenance { .. } => Code::Unavailable,
            HubError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            HubError::Provider(p) => match p {
                ProviderError::Timeout { .. } => Code::DeadlineExceeded,
                ProviderError::NotFound { .. } => Code::NotFound,
                ProviderError::Rejected { .. } => Code::FailedPrecondition,
                _ => Code::Unavailable,
            },
            HubError::NoAdapter(_) => Code::Unavailable,
            HubError::Internal(_) => Code::Internal,
            HubError::EventIdReused { .. } => Code::AlreadyExists,
            HubError::TokenizeQuota(_) => Code::ResourceExhausted,
            HubError::ShuttingDown { .. } => Code::Unavailable,
            HubError::Revoked { .. } => Code::Unauthenticated,
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
    fn from(e: HubError) -> Status {
        let code = e.code();
        let message = e.to_string();
        match &e {
            HubError::Invalid(violations) => {
                let fv = violations
                    .iter()
                    .map(|v| FieldViolation::new(v.field.clone(), v.description.clone()))
                    .collect::<Vec<_>>();
                Status::with_error_details(code, message, ErrorDetails::with_bad_request(fv))
            }
            HubError::RateLimited { retry_after, .. }
            | HubError::Maintenance { retry_after, .. } => Status::with_error_details(
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
            _ => Status::new(code, message),
        }
    }
}
