//! The event path's domain rules (R5): which event types exist, how a publish request is
//! validated, how one stored event looks to one subscriber (tokenized, no changed data),
//! and the daily manifests that let a subscriber prove it missed nothing.

use sha2::{Digest, Sha256};
use tabadol_policy::{ids, jalali::JalaliDate};
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

/// Validates a publish request; every problem is named by field.
pub fn validate_publish(
    event_id: &str,
    event_type: &str,
    national_code: &str,
    date: &str,
) -> Result<(), Vec<Violation>> {
    let mut v = Vec::new();
    if event_id.trim().is_empty() || event_id.len() > 128 {
        v.push(Violation::new(
            "event_id",
            "event_id is required (1..128 characters): your own id of the event, used to make re-publishing a no-op",
        ));
    }
    if !EVENT_TYPES.contains(&event_type) {
        v.push(Violation::new(
            "type",
            format!("unknown event type `{event_type}`; use one of {EVENT_TYPES:?}"),
        ));
    }
    if let Err(e) = ids::validate_national_code(national_code) {
        v.push(Violation::new("national_code", e.to_string()));
    }
    if date.trim().is_empty() {
        v.push(Violation::new(
            "date",
            "date is required: the Jalali date of the death or change, e.g. 1405/08/30",
        ));
    } else {
        match date.parse::<JalaliDate>() {
            Err(e) => v.push(Violation::new(
                "date",
                format!("`{date}` is not a Jalali date: {e}"),
            )),
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
                }
            }
        }
    }
    if v.is_empty() {
        Ok(())
    } else {
        Err(v)
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
            if !types.contains(&ev.event_type) {
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
