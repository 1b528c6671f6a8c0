//! The event path's domain rules (R5): which event types exist, how a publish request is
//! validated, how one stored event looks to one subscriber (tokenized, no changed data),
//! and the daily manifests that let a subscriber prove it missed nothing.

use sha2::{Digest, Sha256};
use tabadol_policy::ids;
use tabadol_policy::jalali::{JalaliDate, JalaliError};
use tabadol_proto::v1::Event;

use crate::edge::error::Violation;
use crate::events::outbox::{Outbox, OutboxError, StoredEvent};
use crate::events::tokens::{TokenError, Tokens};

/// Event types the hub carries.
pub const EVENT_TYPES: [&str; 2] = ["death.v1", "identity-change.v1"];

/// CloudEvents `source` of events relayed by the hub for `publisher`.
pub fn source(publisher: &str) -> String {
    format!("tabadol.ir/hub/{publisher}")
}

/// CloudEvents `type` of an event type, e.g. `ir.tabadol.death.v1`.
pub fn ce_type(event_type: &str) -> String {
    format!("ir.tabadol.{event_type}")
}

/// The Kafka topic of one subscriber for one event type.
pub fn topic(event_type: &str, agency: &str) -> String {
    format!("tabadol.{event_type}.{agency}")
}

/// Longest publisher event id, in bytes.
pub const MAX_EVENT_ID: usize = 128;
/// Longest national code or date looked at, in bytes: a canonical value is far shorter
/// (ten digits; `YYYY/MM/DD`), a Persian-digit one at most twice as long.
const MAX_SHORT_FIELD: usize = 64;

/// A publish request that passed validation, in canonical form: Latin digits only, the
/// date written `YYYY/MM/DD`. This is what is stored, deduplicated and forwarded, so the
/// same event sent in Persian and in Latin digits is one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPublish {
    pub event_id: String,
    pub event_type: &'static str,
    pub national_code: String,
    pub date: JalaliDate,
}

/// `value` of `field` in canonical form ([`ids::canonical`]), or why not: too long (the
/// value is not looked at further) or an invisible character (named).
fn canonical_field(field: &str, value: &str, max: usize) -> Result<String, Violation> {
    if value.len() > max {
        return Err(Violation::new(
            field,
            format!(
                "{field} is {} bytes long; at most {max} are accepted",
                value.len()
            ),
        ));
    }
    ids::canonical(value)
        .map(|c| c.into_owned())
        .map_err(|e| Violation::new(field, format!("{field}: {e}")))
}

/// Validates a publish request and returns its canonical form; every problem is named by
/// field, and no message repeats a value that could be a national code.
pub fn validate_publish(
    event_id: &str,
    event_type: &str,
    national_code: &str,
    date: &str,
) -> Result<ValidPublish, Vec<Violation>> {
    let mut v = Vec::new();
    let event_id = match canonical_field("event_id", event_id, MAX_EVENT_ID) {
        Ok(id) if !id.trim().is_empty() => Some(id),
        Ok(_) => {
            v.push(Violation::new(
                "event_id",
                format!("event_id is required (1..{MAX_EVENT_ID} characters): your own id of the event, used to make re-publishing a no-op"),
            ));
            None
        }
        Err(e) => {
            v.push(e);
            None
        }
    };
    let known_type = EVENT_TYPES.iter().copied().find(|t| *t == event_type);
    if known_type.is_none() {
        v.push(Violation::new(
            "type",
            format!(
                "unknown event type `{}`; use one of {EVENT_TYPES:?}",
                crate::edge::error::clip(event_type, MAX_SHORT_FIELD)
            ),
        ));
    }
    let national_code = match canonical_field("national_code", national_code, MAX_SHORT_FIELD) {
        Ok(nc) => match ids::validate_national_code(&nc) {
            Ok(()) => Some(nc),
            Err(e) => {
                v.push(Violation::new("national_code", e.to_string()));
                None
            }
        },
        Err(e) => {
            v.push(e);
            None
        }
    };
    let date = match canonical_field("date", date, MAX_SHORT_FIELD) {
        Ok(d) if d.trim().is_empty() => {
            v.push(Violation::new(
                "date",
                "date is required: the Jalali date of the death or change, e.g. 1405/08/30",
            ));
            None
        }
        // The value is not repeated: with national code and date swapped it would be a
        // national code.
        Ok(d) => match d.parse::<JalaliDate>() {
            Err(JalaliError::Format(_)) => {
                v.push(Violation::new(
                    "date",
                    "date is not a Jalali date; write it as YYYY/MM/DD, e.g. 1405/08/30",
                ));
                None
            }
            Err(e) => {
                v.push(Violation::new("date", format!("date: {e}")));
                None
            }
            // A Gregorian date such as 2025-11-21 also parses as a (far future) Jalali
            // date; no death or change is registered after today.
            Ok(d) => {
                let today = JalaliDate::in_tehran(jiff::Timestamp::now());
                if d > today {
                    v.push(Violation::new(
                        "date",
                        format!(
                            "{d} is in the future (today in Tehran is {today}); give the Jalali date of the death or change"
                        ),
                    ));
                    None
                } else {
                    Some(d)
                }
            }
        },
        Err(e) => {
            v.push(e);
            None
        }
    };
    match (event_id, known_type, national_code, date) {
        (Some(event_id), Some(event_type), Some(national_code), Some(date)) if v.is_empty() => {
            Ok(ValidPublish {
                event_id,
                event_type,
                national_code,
                date,
            })
        }
        _ => Err(v),
    }
}

/// How `ev` looks to `agency`: its own token as subject, nothing else about the person.
pub fn for_subscriber(ev: &StoredEvent, token: String) -> Event {
    Event {
        id: ev.hub_event_id.clone(),
        r#type: ev.event_type.clone(),
        subject: token,
        date: ev.date.clone(),
        time: Some(prost_types::Timestamp {
            seconds: ev.accepted_at_micros.div_euclid(1_000_000),
            nanos: (ev.accepted_at_micros.rem_euclid(1_000_000) * 1000) as i32,
        }),
        sequence: ev.seq,
        source: source(&ev.publisher),
        // The callers set the version of the key `token` was made with.
        key_version: 0,
    }
}

/// Errors while building a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// The count and digest of one Tehran day's events for one subscriber.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub agency: String,
    /// Jalali day in Tehran time.
    pub day: String,
    pub count: u64,
    /// Hex SHA-256 over `id|type|subject|date\n` of every event of the day, in sequence order.
    pub digest: String,
    pub first_sequence: u64,
    pub last_sequence: u64,
}

/// The Tehran calendar day of a unix-microsecond instant, as a Jalali date.
pub fn tehran_day(micros: i64) -> JalaliDate {
    JalaliDate::in_tehran(
        jiff::Timestamp::from_microsecond(micros).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Whether `ev` is meant for `agency`: one of the subscribers recorded when it was
/// accepted (events stored before subscribers were recorded: every current subscriber).
/// The relay, the stream and the manifests all use this, so what a subscriber receives and
/// what its manifest counts agree.
pub fn meant_for(ev: &StoredEvent, agency: &str) -> bool {
    ev.subscribers
        .as_ref()
        .is_none_or(|list| list.iter().any(|a| a == agency))
}

/// Computes the manifest of `day` for `agency`, over the event types it subscribes to.
/// A subscriber recomputes the same digest over the events it received. Only acknowledged
/// events count ([`Outbox::read_after`] stops at the last flushed one); the result is
/// final only for a day that is [`crate::events::manifests::day_closed`], computed after
/// [`Outbox::settled`].
pub fn manifest(
    outbox: &Outbox,
    tokens: &Tokens,
    agency: &str,
    types: &[String],
    day: JalaliDate,
) -> Result<Manifest, ManifestError> {
    let mut hasher = Sha256::new();
    let mut m = Manifest {
        agency: agency.to_owned(),
        day: day.to_string(),
        count: 0,
        digest: String::new(),
        first_sequence: 0,
        last_sequence: 0,
    };
    let start = day.start_in_tehran().as_microsecond();
    let end = day.end_in_tehran().as_microsecond();
    let mut after = outbox.first_seq_at_or_after(start)?.saturating_sub(1);
    'scan: loop {
        let batch = outbox.read_after(after, 1024)?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for ev in batch {
            if ev.accepted_at_micros >= end {
                break 'scan;
            }
            if !types.contains(&ev.event_type) || !meant_for(&ev, agency) {
                continue;
            }
            let token = tokens.token(agency, &ev.national_code)?;
            hasher.update(digest_line(
                &ev.hub_event_id,
                &ev.event_type,
                &token,
                &ev.date,
            ));
            if m.count == 0 {
                m.first_sequence = ev.seq;
            }
            m.last_sequence = ev.seq;
            m.count += 1;
        }
    }
    m.digest = hex::encode(hasher.finalize());
    Ok(m)
}

/// One line of the manifest digest; subscribers hash the same lines.
pub fn digest_line(id: &str, event_type: &str, subject: &str, date: &str) -> String {
    format!("{id}|{event_type}|{subject}|{date}\n")
}
