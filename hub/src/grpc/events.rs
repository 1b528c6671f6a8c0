//! `tabadol.v1.Events`: publishing into the durable outbox, the resumable per-subscriber
//! stream, tokenization for subscribers, and daily manifests (R5).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

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
use tonic::{Request, Response, Status};

use crate::audit::AuditRecord;
use crate::error::{HubError, Violation};
use crate::events::{for_subscriber, manifest, validate_publish};
use crate::manifests::ManifestStore;
use crate::outbox::{NewEvent, Outbox};
use crate::pipeline::{Caller, Hub};
use crate::tokens::Tokens;

/// Most national codes in one Tokenize call.
pub const MAX_TOKENIZE: usize = 1000;
/// Tokenize calls per second per agency (burst twice that).
const TOKENIZE_PER_SECOND: u32 = 5;

/// State behind the Events service.
pub struct EventsService {
    pub hub: Arc<Hub>,
    pub outbox: Arc<Outbox>,
    pub tokens: Arc<Tokens>,
    pub manifests: Arc<ManifestStore>,
    tokenize_limits: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
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

impl EventsService {
    pub fn new(
        hub: Arc<Hub>,
        outbox: Arc<Outbox>,
        tokens: Arc<Tokens>,
        manifests: Arc<ManifestStore>,
    ) -> Self {
        Self {
            hub,
            outbox,
            tokens,
            manifests,
            tokenize_limits: Mutex::new(HashMap::new()),
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
        let (ev, duplicate) = self
            .outbox
            .publish(NewEvent {
                publisher: &caller.agency,
                publisher_event_id: &event_id,
                event_type: &r#type,
                national_code: &national_code,
                date: &date,
            })
            .await
            .map_err(|e| HubError::Internal(e.to_string()))?;
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
        let mut stopping = self.stopping.subscribe();
        if *stopping.borrow() {
            return Err(resume_status(after_sequence));
        }
        let (tx, rx) = mpsc::channel::<Result<Event, Status>>(64);
        let outbox = self.outbox.clone();
        let tokens = self.tokens.clone();
        let agency = caller.agency.clone();
        tokio::spawn(async move {
            let mut watch = outbox.watch();
            // The last sequence handed to the stream (or skipped as not wanted).
            let mut cursor = after_sequence;
            loop {
                if *stopping.borrow() {
                    let _ = tx.try_send(Err(resume_status(cursor)));
                    return;
                }
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
                    tokio::select! {
                        sent = tx.send(item) => if sent.is_err() { return },
                        _ = stopping.changed() => {
                            let _ = tx.try_send(Err(resume_status(cursor)));
                            return;
                        }
                    }
                    cursor = ev.seq;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn tokenize(
        &self,
        req: Request<TokenizeRequest>,
    ) -> Result<Response<TokenizeResponse>, Status> {
        let caller = super::caller(&self.hub, &req)?;
        let TokenizeRequest { national_codes } = req.into_inner();
        let result = (|| {
            if self.subscribed_types(&caller.agency).is_empty() {
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
                return Err(HubError::Invalid(bad));
            }
            national_codes
                .iter()
                .map(|nc| self.tokens.token(&caller.agency, nc))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| HubError::Internal(e.to_string()))
        })();
        let (outcome, detail) = match &result {
            Ok(t) => ("ok", format!("tokenized {} national codes", t.len())),
            Err(e) => (e.outcome(), e.to_string()),
        };
        self.audit(&caller, "events.tokenize", "-", outcome, detail)
            .await?;
        Ok(Response::new(TokenizeResponse { tokens: result? }))
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
        let today = JalaliDate::in_tehran(jiff::Timestamp::now());
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
        let complete = day < today;
        let stored = self
            .manifests
            .get(&caller.agency, &day.to_string())
            .map_err(|e| HubError::Internal(e.to_string()))?;
        let m = match stored {
            Some(m) => m,
            None => {
                let m = manifest(&self.outbox, &self.tokens, &caller.agency, &types, day)
                    .map_err(|e| HubError::Internal(e.to_string()))?;
                if complete {
                    // A finished day never changes: fix it now if the daily task has not.
                    self.manifests
                        .put(&m)
                        .map_err(|e| HubError::Internal(e.to_string()))?;
                }
                m
            }
        };
        Ok(Response::new(crate::manifests::to_proto(&m, complete)))
    }
}
