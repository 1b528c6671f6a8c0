//! `tabadol.v1.Events`: publishing into the durable outbox, the resumable per-subscriber
//! stream, tokenization for subscribers, and daily manifests (R5).
//!
//! Every call is authorized before anything of its payload is looked at, every field is
//! bounded, and audit records hold reasons only — never caller text or a national code.
//! Errors become statuses in the one edge, [`crate::edge::error`]. An open `Subscribe`
//! stream re-checks its caller whenever access changes ([`Hub::access_changes`]).

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tabadol_policy::jalali::JalaliDate;
use tabadol_proto::v1::events_server::Events;
use tabadol_proto::v1::{
    Event, GetManifestRequest, Manifest, PublishRequest, PublishResponse, SubscribeRequest,
    TokenizeRequest, TokenizeResponse,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::edge::error::{clip, HubError, Violation};
use crate::edge::tls::PeerInfo;
use crate::events::manifests::{day_closed, oldest_kept, ManifestStore, MANIFEST_RETENTION_DAYS};
use crate::events::model::{for_subscriber, manifest, validate_publish, EVENT_TYPES};
use crate::events::outbox::{NewEvent, Outbox, OutboxError};
use crate::events::tokens::{TokenizeBudget, TokenizeQuota, Tokens};
use crate::inquiry::audit::AuditRecord;
use crate::inquiry::pipeline::{Caller, Hub};

/// Most national codes in one Tokenize call.
pub const MAX_TOKENIZE: usize = 1000;
/// Most event types named in one Subscribe call.
pub const MAX_SUBSCRIBE_TYPES: usize = 16;
/// Longest national code or Jalali day looked at, in bytes (a Persian-digit value is at
/// most twice as long as its canonical form).
const MAX_SHORT_FIELD: usize = 64;
/// Longest piece of caller text repeated in an error message, in bytes.
const MAX_ECHO: usize = 64;
/// Tokenize calls per second per agency (burst twice that). The number of national codes
/// is limited separately by [`EventsOptions::tokenize_quota`].
const TOKENIZE_PER_SECOND: u32 = 5;
/// Events queued per Subscribe stream.
const STREAM_QUEUE: usize = 64;
/// How long a stream ended for shutdown waits for room in its queue to tell the
/// subscriber where to resume (a subscriber that does not read holds up the stop no longer).
const RESUME_SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Audit service names.
const PUBLISH: &str = "events.publish";
const TOKENIZE: &str = "events.tokenize";
/// Audit tracking code of a call that carries none the hub may keep.
const NO_TRACKING: &str = "-";

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

    /// A receiver that turns `true` when shutdown begins (other long-lived streams, e.g.
    /// `Datasets/Subscribe`, end on it too).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

/// Ends a stream stopped for shutdown with where to resume. Waits (briefly) for room in
/// the queue, which is full exactly when the subscriber has events still to read.
async fn send_resume(tx: &mpsc::Sender<Result<Event, Status>>, cursor: u64) {
    let status = HubError::ShuttingDown {
        after_sequence: cursor,
    }
    .into();
    match tokio::time::timeout(RESUME_SEND_TIMEOUT, tx.send(Err(status))).await {
        Ok(_) => {}
        Err(_) => tracing::warn!(
            message = "subscriber does not read; stream ended without the resume position",
            after_sequence = cursor,
        ),
    }
}

/// What one open stream delivers: `agency`'s events of the `wanted` types after
/// `after_sequence`, through a queue of `capacity`.
struct StreamSpec {
    agency: String,
    wanted: Vec<String>,
    after_sequence: u64,
    capacity: usize,
}

/// What ends an open stream besides its subscriber going away: the hub stopping (the last
/// item names where to resume), or a change of access (`access` fired) after which
/// `recheck` refuses the caller (the stream ends at once with that refusal, ahead of
/// anything still queued).
struct StreamEnds {
    stopping: watch::Receiver<bool>,
    access: watch::Receiver<u64>,
    recheck: Box<dyn Fn() -> Result<(), HubError> + Send + Sync>,
}

/// The response stream of `Subscribe`: the queued events, cut short by a refusal when the
/// caller loses access (the refusal is the last item, even while events are queued).
struct GuardedStream {
    events: ReceiverStream<Result<Event, Status>>,
    cut: Option<oneshot::Receiver<Status>>,
    done: bool,
}

impl Stream for GuardedStream {
    type Item = Result<Event, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(cut) = self.cut.as_mut() {
            if let Poll::Ready(refusal) = Pin::new(cut).poll(cx) {
                self.cut = None;
                // A dropped sender is a stream task that ended without a refusal.
                if let Ok(status) = refusal {
                    self.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
        }
        Pin::new(&mut self.events).poll_next(cx)
    }
}

/// Starts the task that feeds one stream from the outbox; see [`StreamSpec`] and
/// [`StreamEnds`].
fn spawn_stream(
    outbox: Arc<Outbox>,
    tokens: Arc<Tokens>,
    spec: StreamSpec,
    ends: StreamEnds,
) -> GuardedStream {
    let (tx, rx) = mpsc::channel::<Result<Event, Status>>(spec.capacity);
    let (cut_tx, cut_rx) = oneshot::channel::<Status>();
    tokio::spawn(async move {
        let StreamSpec {
            agency,
            wanted,
            after_sequence,
            ..
        } = spec;
        let StreamEnds {
            mut stopping,
            mut access,
            recheck,
        } = ends;
        // The caller was checked when the stream opened.
        access.borrow_and_update();
        // False once the hub that bumps `access` is gone (nothing can change any more).
        let mut access_open = true;
        let mut watch = outbox.watch();
        // The last sequence handed to the stream (or skipped as not wanted).
        let mut cursor = after_sequence;
        // Re-checks the caller after a change of access; false when the stream must end
        // (the refusal is sent ahead of the queue).
        let still_allowed =
            |cut_tx: &mut Option<oneshot::Sender<Status>>, cursor: u64| match recheck() {
                Ok(()) => true,
                Err(e) => {
                    tracing::info!(
                        message = "subscribe stream ended: the caller lost access",
                        agency = %agency,
                        after_sequence = cursor,
                        reason = %e,
                    );
                    if let Some(cut) = cut_tx.take() {
                        let _ = cut.send(e.into());
                    }
                    false
                }
            };
        let mut cut_tx = Some(cut_tx);
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
                    biased;
                    changed = access.changed(), if access_open => match changed {
                        Ok(()) => if !still_allowed(&mut cut_tx, cursor) { return },
                        Err(_) => access_open = false,
                    },
                    changed = watch.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    changed = stopping.changed() => if changed.is_err() { return },
                }
                continue;
            }
            for ev in batch {
                if !wanted.contains(&ev.event_type)
                    || !crate::events::model::meant_for(&ev, &agency)
                {
                    cursor = ev.seq;
                    continue;
                }
                // Room in the queue; a change of access seen before (or while waiting for
                // it) is checked first, so nothing read after a revocation is sent.
                // Once stopping, nothing more is sent but where to resume.
                let permit = loop {
                    tokio::select! {
                        biased;
                        _ = stopping.changed() => {
                            send_resume(&tx, cursor).await;
                            return;
                        }
                        changed = access.changed(), if access_open => match changed {
                            Ok(()) => if !still_allowed(&mut cut_tx, cursor) { return },
                            Err(_) => access_open = false,
                        },
                        permit = tx.reserve() => match permit {
                            Ok(p) => break p,
                            Err(_) => return,
                        },
                    }
                };
                let item = tokens
                    .token(&agency, &ev.national_code)
                    .map(|t| Event {
                        key_version: tokens.current_version(),
                        ..for_subscriber(&ev, t)
                    })
                    .map_err(|e| HubError::Internal(e.to_string()).into());
                permit.send(item);
                cursor = ev.seq;
            }
        }
    });
    GuardedStream {
        events: ReceiverStream::new(rx),
        cut: Some(cut_rx),
        done: false,
    }
}

/// The event types `agency` subscribes to in `policy`.
fn subscribed_types(hub: &Hub, agency: &str) -> Vec<String> {
    let state = hub.policy();
    state
        .policy
        .subscriptions()
        .iter()
        .filter(|s| s.agency == agency)
        .flat_map(|s| s.event_types.iter().cloned())
        .collect()
}

/// Whether the caller of an open stream may still receive it: its certificate is not
/// revoked (UNAUTHENTICATED), still names the same agency in agencies.yaml
/// (UNAUTHENTICATED), and that agency still subscribes to every `wanted` type
/// (PERMISSION_DENIED).
fn stream_access(
    hub: &Hub,
    peer: &PeerInfo,
    agency: &str,
    wanted: &[String],
) -> Result<(), HubError> {
    if hub.is_revoked(&peer.serial) {
        return Err(HubError::Revoked {
            serial: peer.serial.clone(),
        });
    }
    let now = hub.caller_for(peer.common_name.as_deref())?;
    if now.agency != agency {
        return Err(HubError::UnknownAgency {
            common_name: peer.common_name.clone().unwrap_or_default(),
        });
    }
    let subscribed = subscribed_types(hub, agency);
    if let Some(t) = wanted.iter().find(|t| !subscribed.contains(t)) {
        return Err(HubError::NotAllowed {
            agency: agency.to_owned(),
            action: format!(
                "receive {t} events any more (the subscription is no longer in subscriptions.yaml)"
            ),
        });
    }
    Ok(())
}

/// Checks the `day` of a GetManifest request and returns it canonical: a Jalali date
/// (Persian digits allowed) no later than `today` and inside the retention window
/// (empty: yesterday).
fn manifest_day(day: &str, today: JalaliDate) -> Result<JalaliDate, HubError> {
    let invalid = |d: String| HubError::Invalid(vec![Violation::new("day", d)]);
    if day.is_empty() {
        return today
            .to_civil()
            .yesterday()
            .map(JalaliDate::from_civil)
            .map_err(|e| HubError::Internal(e.to_string()));
    }
    if day.len() > MAX_SHORT_FIELD {
        return Err(invalid(format!(
            "day is {} bytes long; give a Jalali date such as 1405/08/30",
            day.len()
        )));
    }
    let canonical =
        tabadol_policy::ids::canonical(day).map_err(|e| invalid(format!("day: {e}")))?;
    let day = canonical
        .parse::<JalaliDate>()
        .map_err(|e| invalid(format!("day: {e}")))?;
    if day > today {
        return Err(invalid(format!(
            "{day} is in the future (today in Tehran is {today})"
        )));
    }
    let oldest = oldest_kept(today);
    if day < oldest {
        return Err(invalid(format!(
            "{day} is older than the {MANIFEST_RETENTION_DAYS} days for which the hub keeps manifests; ask for a day from {oldest} on"
        )));
    }
    Ok(day)
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

    /// Appends an audit record. `tracking` and `detail` must hold nothing the caller
    /// chose beyond a validated id, and never a national code.
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
            .append(AuditRecord::call(
                &caller.agency,
                service,
                tracking,
                outcome,
                detail,
            ))
            .await
            .map(|_| ())
            .map_err(|e| HubError::Internal(format!("audit write failed: {e}")).into())
    }

    /// Audits a refused call (reason only) and returns its status.
    async fn refuse(&self, caller: &Caller, service: &str, tracking: &str, e: HubError) -> Status {
        match self
            .audit(caller, service, tracking, e.outcome(), e.audit_detail())
            .await
        {
            Ok(()) => e.into(),
            Err(status) => status,
        }
    }

    /// Whether the caller may publish events of `event_type`, decided from the policy
    /// alone: an agency that publishes nothing is refused whatever it sent; a known type it
    /// does not publish is refused before the rest is looked at; an unknown type is left
    /// to validation, which names it.
    fn authorize_publish(&self, caller: &Caller, event_type: &str) -> Result<(), HubError> {
        let state = self.hub.policy();
        let publishes = state
            .policy
            .agency(&caller.agency)
            .map(|a| a.publishes.as_slice())
            .unwrap_or_default();
        if publishes.is_empty() {
            return Err(HubError::NotAllowed {
                agency: caller.agency.clone(),
                action: "publish events (agencies.yaml lists none it publishes)".into(),
            });
        }
        if let Some(known) = EVENT_TYPES.iter().find(|t| **t == event_type) {
            if !publishes.iter().any(|p| p == known) {
                return Err(HubError::NotAllowed {
                    agency: caller.agency.clone(),
                    action: format!("publish {known} events"),
                });
            }
        }
        Ok(())
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

    /// Tokenize without the audit: authorize, rate limit, bound and canonicalize the
    /// national codes, take them from the budget, and give the caller's tokens.
    fn tokenize_checked(
        &self,
        caller: &Caller,
        national_codes: &[String],
        key_version: Option<u32>,
    ) -> Result<(Vec<String>, u32), HubError> {
        let version = key_version.unwrap_or_else(|| self.tokens.current_version());
        let answered = self.tokens.versions();
        if !answered.contains(&version) {
            return Err(HubError::Invalid(vec![Violation::new(
                "key_version",
                format!(
                    "key version {version} is not answered by this hub; it answers {answered:?} \
                     (without key_version: the current version {})",
                    self.tokens.current_version()
                ),
            )]));
        }
        if subscribed_types(&self.hub, &caller.agency).is_empty() {
            return Err(HubError::NotAllowed {
                agency: caller.agency.clone(),
                action: "tokenize (only subscribers in subscriptions.yaml may)".into(),
            });
        }
        self.check_tokenize_rate(&caller.agency)?;
        if national_codes.is_empty() || national_codes.len() > MAX_TOKENIZE {
            return Err(HubError::Invalid(vec![Violation::new(
                "national_codes",
                format!(
                    "give between 1 and {MAX_TOKENIZE} national codes, got {}",
                    national_codes.len()
                ),
            )]));
        }
        let mut canonical = Vec::with_capacity(national_codes.len());
        let mut bad = Vec::new();
        for (i, nc) in national_codes.iter().enumerate() {
            let checked = if nc.len() > MAX_SHORT_FIELD {
                Err(format!(
                    "a national code is 10 digits; this one is {} bytes long",
                    nc.len()
                ))
            } else {
                tabadol_policy::ids::canonical(nc)
                    .and_then(|c| {
                        tabadol_policy::ids::validate_national_code(&c).map(|()| c.into_owned())
                    })
                    .map_err(|e| e.to_string())
            };
            match checked {
                Ok(c) => canonical.push(c),
                Err(e) => bad.push(Violation::new(format!("national_codes[{i}]"), e)),
            }
        }
        if !bad.is_empty() {
            return Err(HubError::Invalid(bad));
        }
        // Counted in distinct national codes, only for valid calls; a refused call
        // takes nothing from the budget.
        let distinct: std::collections::HashSet<&str> =
            canonical.iter().map(String::as_str).collect();
        self.tokenize_budget
            .take(&caller.agency, distinct.len())
            .map_err(HubError::TokenizeQuota)?;
        canonical
            .iter()
            .map(|nc| self.tokens.token_at(version, &caller.agency, nc))
            .collect::<Result<Vec<_>, _>>()
            .map(|tokens| (tokens, version))
            .map_err(|e| HubError::Internal(e.to_string()))
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
        // Before anything else of the payload is looked at (or kept): may it publish?
        if let Err(e) = self.authorize_publish(&caller, &r#type) {
            return Err(self.refuse(&caller, PUBLISH, NO_TRACKING, e).await);
        }
        let ev = match validate_publish(&event_id, &r#type, &national_code, &date) {
            Ok(ev) => ev,
            Err(v) => {
                return Err(self
                    .refuse(&caller, PUBLISH, NO_TRACKING, HubError::Invalid(v))
                    .await)
            }
        };
        // A valid event id is bounded and visible: it is the audit tracking code.
        let date = ev.date.to_string();
        // Subscribers are chosen now, from the policy in force at acceptance, and stored
        // with the event: the relay delivers to exactly them (defect 12).
        let subscribers: Vec<String> = self
            .hub
            .policy()
            .policy
            .subscribers_of(ev.event_type)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let published = self
            .outbox
            .publish(NewEvent {
                publisher: &caller.agency,
                publisher_event_id: &ev.event_id,
                event_type: ev.event_type,
                national_code: &ev.national_code,
                date: &date,
                subscribers,
            })
            .await;
        let (stored, duplicate) = match published {
            Ok(p) => p,
            Err(OutboxError::Conflict {
                publisher,
                event_id,
                seq,
                differs,
            }) => {
                let e = HubError::EventIdReused {
                    publisher,
                    event_id,
                    seq,
                    differs,
                };
                return Err(self.refuse(&caller, PUBLISH, &ev.event_id, e).await);
            }
            Err(e) => return Err(HubError::Internal(e.to_string()).into()),
        };
        self.audit(
            &caller,
            PUBLISH,
            &ev.event_id,
            if duplicate { "duplicate" } else { "ok" },
            format!("{} sequence {}", stored.event_type, stored.seq),
        )
        .await?;
        tracing::info!(
            message = "event accepted",
            publisher = %caller.agency,
            event_type = %stored.event_type,
            sequence = stored.seq,
            duplicate,
        );
        Ok(Response::new(PublishResponse {
            sequence: stored.seq,
            hub_event_id: stored.hub_event_id,
            duplicate,
            accepted_at: Some(prost_types::Timestamp {
                seconds: stored.accepted_at_micros.div_euclid(1_000_000),
                nanos: (stored.accepted_at_micros.rem_euclid(1_000_000) * 1000) as i32,
            }),
        }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = super::caller(&self.hub, &req)?;
        let peer = req.extensions().get::<PeerInfo>().cloned().ok_or_else(|| {
            Status::unauthenticated("no verified client certificate on this connection")
        })?;
        let SubscribeRequest {
            after_sequence,
            types,
        } = req.into_inner();
        let subscribed = subscribed_types(&self.hub, &caller.agency);
        if subscribed.is_empty() {
            return Err(HubError::NotAllowed {
                agency: caller.agency,
                action: "subscribe to events (no subscription in subscriptions.yaml)".into(),
            }
            .into());
        }
        if types.len() > MAX_SUBSCRIBE_TYPES {
            return Err(HubError::Invalid(vec![Violation::new(
                "types",
                format!(
                    "name at most {MAX_SUBSCRIBE_TYPES} event types (or none for all you subscribe to), got {}",
                    types.len()
                ),
            )])
            .into());
        }
        let wanted: Vec<String> = if types.is_empty() {
            subscribed
        } else {
            if let Some(t) = types.iter().find(|t| !subscribed.contains(t)) {
                return Err(HubError::NotAllowed {
                    agency: caller.agency,
                    action: format!(
                        "receive {} events (subscribed: {})",
                        clip(t, MAX_ECHO),
                        subscribed.join(", ")
                    ),
                }
                .into());
            }
            types
        };
        // Also refuses a certificate revoked since the connection was opened.
        stream_access(&self.hub, &peer, &caller.agency, &wanted)?;
        let stopping = self.stopping.subscribe();
        if *stopping.borrow() {
            return Err(HubError::ShuttingDown { after_sequence }.into());
        }
        let access = self.hub.access_changes();
        let recheck = {
            let (hub, agency, wanted) = (self.hub.clone(), caller.agency.clone(), wanted.clone());
            Box::new(move || stream_access(&hub, &peer, &agency, &wanted))
        };
        let stream = spawn_stream(
            self.outbox.clone(),
            self.tokens.clone(),
            StreamSpec {
                agency: caller.agency,
                wanted,
                after_sequence,
                capacity: STREAM_QUEUE,
            },
            StreamEnds {
                stopping,
                access,
                recheck,
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn tokenize(
        &self,
        req: Request<TokenizeRequest>,
    ) -> Result<Response<TokenizeResponse>, Status> {
        let caller = super::caller(&self.hub, &req)?;
        let TokenizeRequest {
            national_codes,
            key_version,
        } = req.into_inner();
        match self.tokenize_checked(&caller, &national_codes, key_version) {
            Ok((tokens, key_version)) => {
                self.audit(
                    &caller,
                    TOKENIZE,
                    NO_TRACKING,
                    "ok",
                    format!(
                        "tokenized {} national codes (key version {key_version})",
                        tokens.len()
                    ),
                )
                .await?;
                Ok(Response::new(TokenizeResponse {
                    tokens,
                    key_version,
                }))
            }
            Err(e) => Err(self.refuse(&caller, TOKENIZE, NO_TRACKING, e).await),
        }
    }

    async fn get_manifest(
        &self,
        req: Request<GetManifestRequest>,
    ) -> Result<Response<Manifest>, Status> {
        let caller = super::caller(&self.hub, &req)?;
        let GetManifestRequest { day } = req.into_inner();
        let types = subscribed_types(&self.hub, &caller.agency);
        if types.is_empty() {
            return Err(HubError::NotAllowed {
                agency: caller.agency,
                action: "read manifests (no subscription in subscriptions.yaml)".into(),
            }
            .into());
        }
        let now = jiff::Timestamp::now();
        let day = manifest_day(&day, JalaliDate::in_tehran(now))?;
        // A day already fixed is served from the store: no publish lock, no flush.
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
    use futures::StreamExt;
    use std::num::NonZeroU32;
    use tonic::Code;
    use tonic_types::StatusExt;

    use crate::events::tokens::QuotaExceeded;

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
        let (_access_tx, access) = watch::channel(0u64);
        let mut rx = spawn_stream(
            outbox,
            tokens,
            StreamSpec {
                agency: "cbi".into(),
                wanted: vec!["death.v1".into()],
                after_sequence: 0,
                capacity: 1,
            },
            StreamEnds {
                stopping,
                access,
                recheck: Box::new(|| Ok(())),
            },
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rx.events.as_ref().is_empty() {
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
            .next()
            .await
            .expect("the queued event")
            .expect("an event");
        assert_eq!(first.sequence, 1);
        let last = tokio::time::timeout(Duration::from_secs(10), rx.next())
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
        assert!(rx.next().await.is_none(), "nothing after the resume status");
    }

    /// A stream whose caller loses access while its queue is full (the subscriber does
    /// not read) ends with the refusal ahead of the queued events, and nothing follows.
    #[tokio::test]
    async fn refusal_cuts_ahead_of_a_full_queue() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let outbox = Arc::new(Outbox::open(&db).unwrap());
        let tokens = Arc::new(Tokens::open(&db).unwrap());
        for id in ["e1", "e2", "e3"] {
            outbox.publish(ev(id)).await.unwrap();
        }
        let (_stop, stopping) = watch::channel(false);
        let (access_tx, access) = watch::channel(0u64);
        let revoked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let recheck = {
            let revoked = revoked.clone();
            Box::new(move || {
                if revoked.load(std::sync::atomic::Ordering::SeqCst) {
                    Err(HubError::Revoked {
                        serial: "0a".into(),
                    })
                } else {
                    Ok(())
                }
            })
        };
        let mut rx = spawn_stream(
            outbox,
            tokens,
            StreamSpec {
                agency: "cbi".into(),
                wanted: vec!["death.v1".into()],
                after_sequence: 0,
                capacity: 1,
            },
            StreamEnds {
                stopping,
                access,
                recheck,
            },
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rx.events.as_ref().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "the queue fills");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        revoked.store(true, std::sync::atomic::Ordering::SeqCst);
        access_tx.send_modify(|g| *g += 1);
        // Let the stream task see the change (on this single-threaded runtime it runs at
        // these yields).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let first = tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .expect("the stream ends within 10 s")
            .expect("a refusal, not a silent end")
            .expect_err("the refusal comes first");
        assert_eq!(first.code(), Code::Unauthenticated);
        assert!(rx.next().await.is_none(), "nothing after the refusal");
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
        let s = Status::from(HubError::TokenizeQuota(q));
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
