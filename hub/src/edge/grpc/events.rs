//! `tabadol.v1.Events`: publishing into the durable outbox, the resumable per-subscriber
//! stream, tokenization for subscribers, and daily manifests (R5).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tabadol_policy::jalali::JalaliDate;
use tabadol_proto::v1::events_server::Events;
use tabadol_proto::v1::{
    Event, GetManifestRequest, Manifest, PublishRequest, PublishResponse, SubscribeRequest,
    TokenizeRequest, TokenizeResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::edge::error::{HubError, Violation};
use crate::events::manifests::{day_closed, ManifestStore};
use crate::events::model::{for_subscriber, manifest, validate_publish};
use crate::events::outbox::{NewEvent, Outbox, OutboxError};
use crate::events::tokens::{QuotaExceeded, TokenizeBudget, TokenizeQuota, Tokens};
use crate::inquiry::audit::AuditRecord;
use crate::inquiry::pipeline::{Caller, Hub};

/// Most national codes in one Tokenize call.
pub const MAX_TOKENIZE: usize = 1000;
/// Tokenize calls per second per agency (burst twice that). The number of national codes
/// is limited separately by [`EventsOptions::tokenize_quota`].
const TOKENIZE_PER_SECOND: u32 = 5;
/// Events queued per Subscribe stream.
const STREAM_QUEUE: usize = 64;
/// How long a stream ended for shutdown waits for room in its queue to tell the
/// subscriber where to resume (a subscriber that does not read holds up the stop no longer).
const RESUME_SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Domain of `ErrorInfo` details.
const DOMAIN: &str = "tabadol.ir";

/// Settings of the Events service.
#[derive(Debug, Clone, Default)]
pub struct EventsOptions {
    /// National codes each subscriber agency may tokenize; by default
    /// [`crate::events::tokens::TOKENIZE_CODES_PER_DAY`] per day, burst
    /// [`crate::events::tokens::TOKENIZE_CODES_BURST`].
    pub tokenize_quota: TokenizeQuota,
}

/// State behind the Events service.
pub struct EventsService {
    pub hub: Arc<Hub>,
    pub outbox: Arc<Outbox>,
    pub tokens: Arc<Tokens>,
    pub manifests: Arc<ManifestStore>,
    tokenize_limits: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    tokenize_budget: TokenizeBudget,
    stopping: Arc<watch::Sender<bool>>,
}

/// Ends every open `Subscribe` stream when the hub stops. The streams never end by
/// themselves, so a graceful server shutdown would otherwise wait for them forever.
/// Take it with [`EventsService::streams_stop`] before the service moves into the server.
#[derive(Clone)]
pub struct StreamsStop(Arc<watch::Sender<bool>>);

impl StreamsStop {
    /// Open streams end with UNAVAILABLE naming the `after_sequence` to resume from;
    /// new subscriptions are refused the same way.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

fn resume_status(cursor: u64) -> Status {
    Status::unavailable(format!(
        "the hub is shutting down; subscribe again with after_sequence = {cursor}"
    ))
}

/// How a publish whose event id was used before for another event is refused.
fn conflict_status(e: &OutboxError) -> Status {
    let mut meta = HashMap::new();
    if let OutboxError::Conflict {
        event_id,
        seq,
        differs,
        ..
    } = e
    {
        meta.insert("event_id".to_owned(), event_id.clone());
        meta.insert("sequence".to_owned(), seq.to_string());
        meta.insert("differs".to_owned(), differs.join(","));
    }
    Status::with_error_details(
        Code::AlreadyExists,
        e.to_string(),
        ErrorDetails::with_error_info("EVENT_ID_REUSED", DOMAIN, meta),
    )
}

/// How a Tokenize call beyond the agency's quota is refused: RESOURCE_EXHAUSTED with
/// RetryInfo (when the call fits later) and a QuotaFailure naming the quota.
fn quota_status(q: &QuotaExceeded) -> Status {
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
        HashMap::from([
            ("agency".to_owned(), q.agency.clone()),
            ("quota".to_owned(), q.quota.to_string()),
        ]),
    );
    Status::with_error_details(Code::ResourceExhausted, q.to_string(), d)
}

/// Why a Tokenize call was refused.
enum TokenizeRefusal {
    Hub(HubError),
    Quota(QuotaExceeded),
}

impl From<HubError> for TokenizeRefusal {
    fn from(e: HubError) -> Self {
        TokenizeRefusal::Hub(e)
    }
}

/// Ends a stream stopped for shutdown with where to resume. Waits (briefly) for room in
/// the queue, which is full exactly when the subscriber has events still to read.
async fn send_resume(tx: &mpsc::Sender<Result<Event, Status>>, cursor: u64) {
    match tokio::time::timeout(RESUME_SEND_TIMEOUT, tx.send(Err(resume_status(cursor)))).await {
        Ok(_) => {}
        Err(_) => tracing::warn!(
            message = "subscriber does not read; stream ended without the resume position",
            after_sequence = cursor,
        ),
    }
}

/// Streams `agency`'s events of the `wanted` types after `after_sequence` into a queue of
/// `capacity`, until the receiver goes away or `stopping` turns true (then the last item
/// is UNAVAILABLE naming the `after_sequence` to resume from).
fn spawn_stream(
    outbox: Arc<Outbox>,
    tokens: Arc<Tokens>,
    agency: String,
    wanted: Vec<String>,
    after_sequence: u64,
    mut stopping: watch::Receiver<bool>,
    capacity: usize,
) -> mpsc::Receiver<Result<Event, Status>> {
    let (tx, rx) = mpsc::channel::<Result<Event, Status>>(capacity);
    tokio::spawn(async move {
        let mut watch = outbox.watch();
        // The last sequence handed to the stream (or skipped as not wanted).
        let mut cursor = after_sequence;
        loop {
            if *stopping.borrow() {
                send_resume(&tx, cursor).await;
                return;
            }
            // Only acknowledged events (read_after stops at the last flushed one).
            let batch = match outbox.read_after(cursor, 256) {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(HubError::Internal(e.to_string()).into())).await;
                    return;
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    changed = watch.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    changed = stopping.changed() => if changed.is_err() { return },
                }
                continue;
            }
            for ev in batch {
                if !wanted.contains(&ev.event_type) {
                    cursor = ev.seq;
                    continue;
                }
                let item = tokens
                    .token(&agency, &ev.national_code)
                    .map(|t| for_subscriber(&ev, t))
                    .map_err(|e| HubError::Internal(e.to_string()).into());
                // Once stopping, nothing more is sent but where to resume.
                tokio::select! {
                    biased;
                    _ = stopping.changed() => {
                        send_resume(&tx, cursor).await;
                        return;
                    }
                    sent = tx.send(item) => if sent.is_err() { return },
                }
                cursor = ev.seq;
            }
        }
    });
    rx
}

impl EventsService {
    pub fn new(
        hub: Arc<Hub>,
        outbox: Arc<Outbox>,
        tokens: Arc<Tokens>,
        manifests: Arc<ManifestStore>,
    ) -> Self {
        Self::with_options(hub, outbox, tokens, manifests, EventsOptions::default())
    }

    pub fn with_options(
        hub: Arc<Hub>,
        outbox: Arc<Outbox>,
        tokens: Arc<Tokens>,
        manifests: Arc<ManifestStore>,
        options: EventsOptions,
    ) -> Self {
        Self {
            hub,
            outbox,
            tokens,
            manifests,
            tokenize_limits: Mutex::new(HashMap::new()),
            tokenize_budget: TokenizeBudget::new(options.tokenize_quota),
            stopping: Arc::new(watch::channel(false).0),
        }
    }

    /// The handle that ends open `Subscribe` streams on shutdown.
    pub fn streams_stop(&self) -> StreamsStop {
        StreamsStop(self.stopping.clone())
    }

    fn subscribed_types(&self, agency: &str) -> Vec<String> {
        let state = self.hub.policy();
        state
            .policy
            .subscriptions()
            .iter()
            .filter(|s| s.agency == agency)
            .flat_map(|s| s.event_types.iter().cloned())
            .collect()
    }

    async fn audit(
        &self,
        caller: &Caller,
        service: &str,
        tracking: &str,
        outcome: &str,
        detail: String,
    ) -> Result<(), Status> {
        self.hub
            .audit()
            .append(AuditRecord {
                seq: 0,
                time_micros: jiff::Timestamp::now().as_microsecond(),
                inquiry_id: uuid::Uuid::now_v7().to_string(),
                agency: caller.agency.clone(),
                service: service.to_owned(),
                purpose: String::new(),
                tracking_code: tracking.to_owned(),
                service_request_id: String::new(),
                outcome: outcome.to_owned(),
                latency_micros: 0,
                detail,
                prev_hash: String::new(),
                hash: String::new(),
            })
            .await
            .map(|_| ())
            .map_err(|e| HubError::Internal(format!("audit write failed: {e}")).into())
    }

    fn check_tokenize_rate(&self, agency: &str) -> Result<(), HubError> {
        let limiter = {
            let mut map = self
                .tokenize_limits
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            map.entry(agency.to_owned())
                .or_insert_with(|| {
                    let rate = NonZeroU32::new(TOKENIZE_PER_SECOND).expect("non-zero");
                    let burst = NonZeroU32::new(TOKENIZE_PER_SECOND * 2).expect("non-zero");
                    Arc::new(RateLimiter::direct(
                        Quota::per_second(rate).allow_burst(burst),
                    ))
                })
                .clone()
        };
        limiter.check().map_err(|not_until| HubError::RateLimited {
            agency: agency.to_owned(),
            service: "events.tokenize".into(),
            retry_after: not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            )),
        })
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl Events for EventsService {
    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let caller = super::caller(&self.hub, &req)?;
        let PublishRequest {
            event_id,
            r#type,
            national_code,
            date,
        } = req.into_inner();
        if let Err(v) = validate_publish(&event_id, &r#type, &national_code, &date) {
            let e = HubError::Invalid(v);
            self.audit(
                &caller,
                "events.publish",
                &event_id,
                e.outcome(),
                e.to_string(),
            )
            .await?;
            return Err(e.into());
        }
        if !self
            .hub
            .policy()
            .policy
            .may_publish(&caller.agency, &r#type)
        {
            let e = HubError::NotAllowed {
                agency: caller.agency.clone(),
                action: format!("publish {} events", r#type),
            };
            self.audit(
                &caller,
                "events.publish",
                &event_id,
                e.outcome(),
                e.to_string(),
            )
            .await?;
            return Err(e.into());
        }
        // Subscribers are chosen now, from the policy in force at acceptance, and stored
        // with the event: the relay delivers to exactly them (defect 12).
        let subscribers: Vec<String> = self
            .hub
            .policy()
            .policy
            .subscribers_of(&r#type)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let published = self
            .outbox
            .publish(NewEvent {
                publisher: &caller.agency,
                publisher_event_id: &event_id,
                event_type: &r#type,
                national_code: &national_code,
                date: &date,
                subscribers,
            })
            .await;
        let (ev, duplicate) = match published {
            Ok(p) => p,
            Err(e @ OutboxError::Conflict { .. }) => {
                // The message names the event id and the differing fields, no values.
                self.audit(
                    &caller,
                    "events.publish",
                    &event_id,
                    "conflict",
                    e.to_string(),
                )
                .await?;
                return Err(conflict_status(&e));
            }
            Err(e) => return Err(HubError::Internal(e.to_string()).into()),
        };
        self.audit(
            &caller,
            "events.publish",
            &event_id,
            if duplicate { "duplicate" } else { "ok" },
            format!("{} sequence {}", ev.event_type, ev.seq),
        )
        .await?;
        tracing::info!(
            message = "event accepted",
            publisher = %caller.agency,
            event_type = %ev.event_type,
            sequence = ev.seq,
            duplicate,
        );
        Ok(Response::new(PublishResponse {
            sequence: ev.seq,
            hub_event_id: ev.hub_event_id,
            duplicate,
            accepted_at: Some(prost_types::Timestamp {
                seconds: ev.accepted_at_micros.div_euclid(1_000_000),
                nanos: (ev.accepted_at_micros.rem_euclid(1_000_000) * 1000) as i32,
            }),
        }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = super::caller(&self.hub, &req)?;
        let SubscribeRequest {
            after_sequence,
            types,
        } = req.into_inner();
        let subscribed = self.subscribed_types(&caller.agency);
        if subscribed.is_empty() {
            return Err(HubError::NotAllowed {
                agency: caller.agency,
                action: "subscribe to events (no subscription in subscriptions.yaml)".into(),
            }
            .into());
        }
        let wanted: Vec<String> = if types.is_empty() {
            subscribed
        } else {
            if let Some(t) = types.iter().find(|t| !subscribed.contains(t)) {
                return Err(HubError::NotAllowed {
                    agency: caller.agency,
                    action: format!("receive {t} events (subscribed: {})", subscribed.join(", ")),
                }
                .into());
            }
            types
        };
        let stopping = self.stopping.subscribe();
        if *stopping.borrow() {
            return Err(resume_status(after_sequence));
        }
        let rx = spawn_stream(
            self.outbox.clone(),
            self.tokens.clone(),
            caller.agency.clone(),
            wanted,
            after_sequence,
            stopping,
            STREAM_QUEUE,
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn tokenize(
        &self,
        req: Request<TokenizeRequest>,
    ) -> Result<Response<TokenizeResponse>, Status> {
        let caller = super::caller(&self.hub, &req)?;
        let TokenizeRequest { national_codes } = req.into_inner();
        let result = (|| -> Result<Vec<String>, TokenizeRefusal> {
            if self.subscribed_types(&caller.agency).is_empty() {
                return Err(HubError::NotAllowed {
                    agency: caller.agency.clone(),
                    action: "tokenize (only subscribers in subscriptions.yaml may)".into(),
                }
                .into());
            }
            self.check_tokenize_rate(&caller.agency)?;
            if national_codes.is_empty() || national_codes.len() > MAX_TOKENIZE {
                return Err(HubError::Invalid(vec![Violation::new(
                    "national_codes",
                    format!(
                        "give between 1 and {MAX_TOKENIZE} national codes, got {}",
                        national_codes.len()
                    ),
                )])
                .into());
            }
            let bad: Vec<Violation> = national_codes
                .iter()
                .enumerate()
                .filter_map(|(i, nc)| {
                    tabadol_policy::ids::validate_national_code(nc)
                        .err()
                        .map(|e| Violation::new(format!("national_codes[{i}]"), e.to_string()))
                })
                .collect();
            if !bad.is_empty() {
                return Err(HubError::Invalid(bad).into());
            }
            // Counted in distinct national codes, only for valid calls; a refused call
            // takes nothing from the budget.
            let distinct: std::collections::HashSet<&str> =
                national_codes.iter().map(String::as_str).collect();
            self.tokenize_budget
                .take(&caller.agency, distinct.len())
                .map_err(TokenizeRefusal::Quota)?;
            national_codes
                .iter()
                .map(|nc| self.tokens.token(&caller.agency, nc))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| HubError::Internal(e.to_string()).into())
        })();
        let (outcome, detail) = match &result {
            Ok(t) => ("ok", format!("tokenized {} national codes", t.len())),
            Err(TokenizeRefusal::Hub(e)) => (e.outcome(), e.to_string()),
            Err(TokenizeRefusal::Quota(q)) => ("quota_exceeded", q.to_string()),
        };
        self.audit(&caller, "events.tokenize", "-", outcome, detail)
            .await?;
        match result {
            Ok(tokens) => Ok(Response::new(TokenizeResponse { tokens })),
            Err(TokenizeRefusal::Hub(e)) => Err(e.into()),
            Err(TokenizeRefusal::Quota(q)) => Err(quota_status(&q)),
        }
    }

    async fn get_manifest(
        &self,
        req: Request<GetManifestRequest>,
    ) -> Result<Response<Manifest>, Status> {
        let caller = super::caller(&self.hub, &req)?;
        let GetManifestRequest { day } = req.into_inner();
        let types = self.subscribed_types(&caller.agency);
        if types.is_empty() {
            return Err(HubError::NotAllowed {
                agency: caller.agency,
                action: "read manifests (no subscription in subscriptions.yaml)".into(),
            }
            .into());
        }
        let now = jiff::Timestamp::now();
        let today = JalaliDate::in_tehran(now);
        let day = if day.is_empty() {
            JalaliDate::from_civil(
                today
                    .to_civil()
                    .yesterday()
                    .map_err(|e| HubError::Internal(e.to_string()))?,
            )
        } else {
            day.parse::<JalaliDate>().map_err(|e| {
                HubError::Invalid(vec![Violation::new(
                    "day",
                    format!("`{day}` is not a Jalali date: {e}"),
                )])
            })?
        };
        if day > today {
            return Err(HubError::Invalid(vec![Violation::new(
                "day",
                format!("{day} is in the future (today in Tehran is {today})"),
            )])
            .into());
        }
        if let Some(m) = self
            .manifests
            .get(&caller.agency, &day.to_string())
            .map_err(|e| HubError::Internal(e.to_string()))?
        {
            return Ok(Response::new(crate::events::manifests::to_proto(&m, true)));
        }
        // A day is fixed only once closed (CLOSE_GRACE after its midnight, as the daily
        // task does), so an event accepted just before midnight and still being flushed
        // is never left out of a stored manifest. Before that the figures are computed
        // and returned with complete = false, and nothing is stored.
        let closed = day_closed(day, now);
        if closed {
            // Every event accepted before now is readable (or was never published).
            self.outbox.settled().await;
        }
        let m = manifest(&self.outbox, &self.tokens, &caller.agency, &types, day)
            .map_err(|e| HubError::Internal(e.to_string()))?;
        let m = if closed {
            self.manifests
                .put(&m)
                .map_err(|e| HubError::Internal(e.to_string()))?;
            // The daily task may have stored it first: serve the stored one.
            self.manifests
                .get(&caller.agency, &m.day)
                .map_err(|e| HubError::Internal(e.to_string()))?
                .unwrap_or(m)
        } else {
            m
        };
        Ok(Response::new(crate::events::manifests::to_proto(
            &m, closed,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn ev<'a>(id: &'a str) -> NewEvent<'a> {
        NewEvent {
            publisher: "nocr",
            publisher_event_id: id,
            event_type: "death.v1",
            national_code: "0012345679",
            date: "1405/08/30",
            subscribers: vec!["cbi".into()],
        }
    }

    /// A stream stopped for shutdown while its queue is full (the subscriber has not read)
    /// still ends with the resume position once the subscriber reads, instead of the
    /// status being dropped.
    #[tokio::test]
    async fn resume_status_survives_a_full_queue() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let outbox = Arc::new(Outbox::open(&db).unwrap());
        let tokens = Arc::new(Tokens::open(&db).unwrap());
        for id in ["e1", "e2", "e3"] {
            outbox.publish(ev(id)).await.unwrap();
        }
        let (stop, stopping) = watch::channel(false);
        let mut rx = spawn_stream(
            outbox,
            tokens,
            "cbi".into(),
            vec!["death.v1".into()],
            0,
            stopping,
            1,
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rx.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the queue fills within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send_replace(true);
        // Let the stream task see the stop while the queue is still full (it is woken by
        // the stop; on this single-threaded runtime it runs at these yields).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let first = rx
            .recv()
            .await
            .expect("the queued event")
            .expect("an event");
        assert_eq!(first.sequence, 1);
        let last = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the stream ends within 10 s")
            .expect("a final status, not a silent end")
            .expect_err("the resume status");
        assert_eq!(last.code(), Code::Unavailable);
        assert!(
            last.message().contains("after_sequence = 1"),
            "{}",
            last.message()
        );
        assert!(rx.recv().await.is_none(), "nothing after the resume status");
    }

    /// The resume status waits for room in a full queue instead of being dropped.
    #[tokio::test]
    async fn resume_status_waits_for_room() {
        let (tx, mut rx) = mpsc::channel::<Result<Event, Status>>(1);
        tx.send(Ok(Event::default())).await.unwrap();
        {
            let resume = send_resume(&tx, 7);
            tokio::pin!(resume);
            assert!(
                futures::poll!(&mut resume).is_pending(),
                "waits while the queue is full"
            );
            assert!(rx.recv().await.unwrap().is_ok(), "the queued event first");
            resume.await;
        }
        let status = rx.recv().await.unwrap().expect_err("then where to resume");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("after_sequence = 7"));
    }

    /// The quota refusal is RESOURCE_EXHAUSTED with RetryInfo and a QuotaFailure naming
    /// the quota and the agency.
    #[test]
    fn quota_refusal_names_the_quota() {
        let q = QuotaExceeded {
            agency: "cbi".into(),
            quota: TokenizeQuota {
                codes: NonZeroU32::new(10).unwrap(),
                period: Duration::from_secs(3600),
                burst: NonZeroU32::new(10).unwrap(),
            },
            requested: 6,
            retry_after: Some(Duration::from_secs(720)),
        };
        let s = quota_status(&q);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(
            s.message().contains("10 national codes per hour"),
            "{}",
            s.message()
        );
        let d = s.get_error_details();
        assert_eq!(
            d.retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_secs(720))
        );
        let v = &d.quota_failure().expect("QuotaFailure").violations[0];
        assert_eq!(v.subject, "agency:cbi");
        assert!(v
            .description
            .contains("events.tokenize: 10 national codes per hour"));
        assert_eq!(
            d.error_info().map(|e| e.reason.as_str()),
            Some("TOKENIZE_QUOTA_EXCEEDED")
        );
    }
}
