//! The inquiry pipeline every call goes through, typed or generic:
//! validate → decide (grant, purpose, fields; a typed method's key output) → planned
//! maintenance → limit → call adapter → drop ungranted fields → audit (always, also when
//! the caller goes away mid-call).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tabadol_adapters::{Provider, ProviderRequest, Record};
use tabadol_policy::{ids, Decision, DecisionRequest, Policy};

use crate::edge::error::{clip, HubError, Violation};
use crate::inquiry::audit::{Audit, AuditRecord};

/// A grant's approval reference as one line, e.g.
/// "interoperability-working-group, session 26 (1400/08/18), access resolution, item 3".
pub fn approval_text(a: &tabadol_policy::model::Approval) -> String {
    let mut s = format!("{}, session {} ({}), {}", a.body, a.session, a.date, a.item);
    if let Some(note) = &a.note {
        s.push_str(" — ");
        s.push_str(note);
    }
    s
}

/// The agency behind a verified connection.
#[derive(Debug, Clone)]
pub struct Caller {
    pub agency: String,
}

/// One inquiry, as every front end (typed or generic) hands it to the pipeline.
#[derive(Debug, Clone, Default)]
pub struct InquiryInput {
    pub tracking_code: String,
    pub purpose: String,
    pub service_request_id: String,
    pub service: String,
    pub params: BTreeMap<String, String>,
    pub fields: Vec<String>,
    /// Outputs the calling method cannot answer without (typed methods); an inquiry whose
    /// grant lacks one is denied before the provider is called.
    pub required_fields: &'static [&'static str],
}

/// Longest purpose accepted (purposes are policy ids).
pub const MAX_PURPOSE_LEN: usize = 64;
/// Longest `service_request_id` accepted.
pub const MAX_SERVICE_REQUEST_ID_LEN: usize = 128;
/// Longest service id accepted.
pub const MAX_SERVICE_LEN: usize = 128;
/// Most output fields one inquiry may name.
pub const MAX_FIELDS: usize = 64;
/// Longest output field name accepted.
pub const MAX_FIELD_LEN: usize = 64;
/// Longest tracking code kept in an audit record (longer ones are refused anyway).
const MAX_TRACKING_LEN: usize = 64;

/// Counts one running inquiry for [`Hub::drained`].
struct InFlight<'a>(&'a Hub);

impl<'a> InFlight<'a> {
    fn enter(hub: &'a Hub) -> Self {
        hub.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(hub)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self
            .0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// Holds an inquiry's audit record until it is handed to the audit writer; if the inquiry
/// is dropped before that (the caller cancelled), the record is written as `cancelled`.
struct AuditGuard<'a> {
    audit: &'a Audit,
    started: Instant,
    record: Option<AuditRecord>,
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

/// What the pipeline answers.
#[derive(Debug, Clone)]
pub struct InquiryOutput {
    pub inquiry_id: String,
    pub provider: String,
    /// Records holding only granted (and requested) fields.
    pub records: Vec<Record>,
    /// The fields the caller may see, in catalog order.
    pub fields: Vec<String>,
}

/// The compiled policy plus the rate limiters that belong to it; swapped as one.
pub struct PolicyState {
    pub policy: Policy,
    grant_limits: HashMap<(String, String), DefaultDirectRateLimiter>,
    agency_limits: HashMap<String, DefaultDirectRateLimiter>,
}

fn limiter(per_second: u32, burst: u32) -> Option<DefaultDirectRateLimiter> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
    Some(RateLimiter::direct(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

impl PolicyState {
    pub fn new(policy: Policy) -> Self {
        let mut grant_limits = HashMap::new();
        let mut agency_limits = HashMap::new();
        for agency in policy.agencies() {
            if let Some(rate) = &agency.rate {
                if let Some(l) = limiter(rate.per_second, rate.burst) {
                    agency_limits.insert(agency.id.clone(), l);
                }
            }
            for (service, grant) in policy.grants_for(&agency.id) {
                if let Some(rate) = &grant.rate {
                    if let Some(l) = limiter(rate.per_second, rate.burst) {
                        grant_limits.insert((agency.id.clone(), service.id.clone()), l);
                    }
                }
            }
        }
        Self {
            policy,
            grant_limits,
            agency_limits,
        }
    }

    fn check_rate(&self, agency: &str, service: &str) -> Result<(), HubError> {
        let key = (agency.to_owned(), service.to_owned());
        for l in [self.agency_limits.get(agency), self.grant_limits.get(&key)]
            .into_iter()
            .flatten()
        {
            if let Err(not_until) = l.check() {
                let retry_after = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                return Err(HubError::RateLimited {
                    agency: agency.to_owned(),
                    service: service.to_owned(),
                    retry_after,
                });
            }
        }
        Ok(())
    }
}

/// The hub's shared state for the inquiry path.
pub struct Hub {
    policy: ArcSwap<PolicyState>,
    providers: HashMap<String, Arc<dyn Provider>>,
    audit: Audit,
    /// Inquiries running now; `drained` waits for it to reach zero at shutdown.
    in_flight: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
    /// Bumped whenever what decides access changes (policy reload, CRL reload); open
    /// connections and long-lived streams watch it and re-check their caller.
    changes: tokio::sync::watch::Sender<u64>,
    /// Serial numbers (hex, as [`crate::edge::tls::PeerInfo::serial`]) revoked by the
    /// certificate revocation lists in force; replaced whole when the CRLs are reloaded.
    revoked: ArcSwap<std::collections::HashSet<String>>,
    /// Upper bound on any provider call when the caller sets no deadline.
    pub default_deadline: Duration,
}

/// Margin kept back from the caller's deadline so the hub answers DEADLINE_EXCEEDED
/// itself (naming the provider) before the transport cuts the call off.
const DEADLINE_MARGIN: Duration = Duration::from_millis(25);

impl Hub {
    pub fn new(
        policy: Policy,
        providers: HashMap<String, Arc<dyn Provider>>,
        audit: Audit,
    ) -> Self {
        Self {
            policy: ArcSwap::from_pointee(PolicyState::new(policy)),
            providers,
            audit,
            in_flight: Default::default(),
            idle: tokio::sync::Notify::new(),
            changes: tokio::sync::watch::Sender::new(0),
            revoked: ArcSwap::from_pointee(Default::default()),
            default_deadline: Duration::from_secs(10),
        }
    }

    /// The policy in force now.
    pub fn policy(&self) -> arc_swap::Guard<Arc<PolicyState>> {
        self.policy.load()
    }

    /// Waits until no inquiry is running (each ends with its audit record written), at
    /// most `within`; false when some are still running then.
    pub async fn drained(&self, within: Duration) -> bool {
        use std::sync::atomic::Ordering;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight.load(Ordering::Acquire) == 0;
            }
        }
    }

    /// Replaces the policy atomically (callers in flight keep the old one).
    pub fn swap_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(PolicyState::new(policy)));
        self.access_changed();
    }

    /// Tells every open connection and stream that access may have changed (the policy or
    /// the revocation lists were reloaded): each re-checks its caller.
    pub fn access_changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// Replaces the set of revoked certificate serials (after the CRLs were reloaded) and
    /// tells open connections and streams to re-check.
    pub fn set_revoked(&self, serials: std::collections::HashSet<String>) {
        self.revoked.store(Arc::new(serials));
        self.access_changed();
    }

    /// Whether the certificate with this serial (hex) is revoked by the CRLs in force.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.load().contains(serial)
    }

    /// A receiver that sees every [`Hub::access_changed`]; long-lived streams and
    /// connections hold one and re-check their caller when it fires.
    pub fn access_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Resolves the agency of a verified certificate common name.
    pub fn caller_for(&self, common_name: Option<&str>) -> Result<Caller, HubError> {
        // A certificate without a common name is nobody (the policy never maps a blank one).
        let cn = common_name.unwrap_or("");
        let agency = self
            .policy
            .load()
            .policy
            .agency_for_common_name(cn)
            .map(|a| a.id.clone());
        match agency {
            Some(agency) => Ok(Caller { agency }),
            None => {
                tracing::warn!(
                    message = "call refused: certificate matches no agency",
                    common_name = cn
                );
                Err(HubError::UnknownAgency {
                    common_name: cn.to_owned(),
                })
            }
        }
    }

    /// Runs one inquiry through the whole pipeline and audits it, whatever the outcome —
    /// also when the caller goes away (cancels, or its deadline passes in the transport)
    /// while the call is in flight: the record is then written as `cancelled`.
    pub async fn inquire(
        &self,
        caller: &Caller,
        input: InquiryInput,
        deadline: Option<Instant>,
    ) -> Result<InquiryOutput, HubError> {
        // Declared before the audit guard, so it ends after the record is handed over.
        let _flight = InFlight::enter(self);
        let mut guard = AuditGuard {
            audit: &self.audit,
            started: Instant::now(),
            record: Some(AuditRecord {
                seq: 0,
                time_micros: jiff::Timestamp::now().as_microsecond(),
                inquiry_id: uuid::Uuid::now_v7().to_string(),
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
        };
        let inquiry_id = guard
            .record
            .as_ref()
            .map(|r| r.inquiry_id.clone())
            .unwrap_or_default();
        let result = self.run(caller, &input, deadline, &inquiry_id).await;
        if let Some(rec) = guard.record.as_mut() {
            let (outcome, detail) = match &result {
                Ok(_) => ("ok", String::new()),
                Err(e) => (e.outcome(), e.audit_detail()),
            };
            rec.outcome = outcome.to_owned();
            rec.detail = detail;
            rec.latency_micros = guard.started.elapsed().as_micros() as u64;
        }
        if let Err(e) = self.audit.append_from(&mut guard.record).await {
            // No unaudited answer leaves the hub.
            return Err(HubError::Internal(format!("audit write failed: {e}")));
        }
        result
    }

    async fn run(
        &self,
        caller: &Caller,
        input: &InquiryInput,
        deadline: Option<Instant>,
        inquiry_id: &str,
    ) -> Result<InquiryOutput, HubError> {
        // 1. Validate the context.
        let mut violations = Vec::new();
        if let Err(e) = ids::validate_tracking_code(&input.tracking_code) {
            violations.push(Violation::new("context.tracking_code", e.to_string()));
        }
        if input.purpose.trim().is_empty() {
            violations.push(Violation::new(
                "context.purpose",
                "purpose is required: say why the data is needed (one of your grant's purposes)",
            ));
        } else if input.purpose.len() > MAX_PURPOSE_LEN {
            violations.push(Violation::new(
                "context.purpose",
                format!("purpose is longer than {MAX_PURPOSE_LEN} bytes; give one of your grant's purposes"),
            ));
        }
        if input.service_request_id.len() > MAX_SERVICE_REQUEST_ID_LEN {
            violations.push(Violation::new(
                "context.service_request_id",
                format!("service_request_id is longer than {MAX_SERVICE_REQUEST_ID_LEN} bytes"),
            ));
        }
        if input.fields.len() > MAX_FIELDS || input.fields.iter().any(|f| f.len() > MAX_FIELD_LEN) {
            violations.push(Violation::new(
                "fields",
                format!(
                    "give at most {MAX_FIELDS} field names of at most {MAX_FIELD_LEN} bytes each \
                     (ListServices lists your granted fields)"
                ),
            ));
        }
        if input.service.len() > MAX_SERVICE_LEN {
            violations.push(Violation::new(
                "service",
                format!("service id is longer than {MAX_SERVICE_LEN} bytes; call Inquiry/ListServices for the ids you may call"),
            ));
            return Err(HubError::Invalid(violations));
        }
        let state = self.policy.load();
        let policy = &state.policy;
        let service = policy
            .service(&input.service)
            .ok_or_else(|| HubError::UnknownService(input.service.clone()))?;
        // 2. Validate the inputs against the catalog.
        if let Err(v) = service.validate_params(&input.params) {
            violations.extend(
                v.into_iter()
                    .map(|v| Violation::new(format!("params.{}", v.field), v.description)),
            );
        }
        if !violations.is_empty() {
            return Err(HubError::Invalid(violations));
        }
        // 3. Decide.
        let at = jiff::Timestamp::now();
        let fields = match policy.decide(&DecisionRequest {
            agency: &caller.agency,
            service: &input.service,
            purpose: &input.purpose,
            at,
            requested_fields: &input.fields,
        }) {
            Decision::Allow { fields, .. } => fields,
            Decision::Deny(deny) => return Err(HubError::Denied(deny)),
        };
        // A typed method whose answer is one of the outputs (MatchMobile's `matched`,
        // GetLifeStatus's `alive`) cannot answer without it: a missing field must not read
        // as "false".
        if let Some(missing) = input
            .required_fields
            .iter()
            .find(|f| !fields.iter().any(|g| g == *f))
        {
            return Err(HubError::NotAllowed {
                agency: caller.agency.clone(),
                action: format!(
                    "receive the field `{missing}` of service {}, which this method answers with; \
                     its grant does not list it",
                    input.service
                ),
            });
        }
        // A planned outage announced in the catalog (R14): say so, and when to come back,
        // instead of letting the call fail against a provider that is down on purpose.
        if let Some(window) = service.maintenance_at(at) {
            let until = window.until.to_timestamp();
            return Err(HubError::Maintenance {
                provider: service.provider.clone(),
                service: service.id.clone(),
                until: window.until.to_string(),
                note: window.note.clone().unwrap_or_default(),
                retry_after: until
                    .duration_since(at)
                    .try_into()
                    .unwrap_or(Duration::ZERO),
            });
        }
        // 4. Limit.
        state.check_rate(&caller.agency, &input.service)?;
        // 5. Call the provider under the caller's deadline.
        let provider_id = service.provider.clone();
        let provider = self
            .providers
            .get(&provider_id)
            .ok_or_else(|| HubError::NoAdapter(provider_id.clone()))?
            .clone();
        let operation = service.operation.clone();
        drop(state);
        let now = Instant::now();
        let deadline = deadline.unwrap_or(now + self.default_deadline);
        let budget = deadline
            .saturating_duration_since(now)
            .saturating_sub(DEADLINE_MARGIN);
        if budget.is_zero() {
            return Err(HubError::DeadlineExceeded {
                provider: provider_id,
                budget,
            });
        }
        let request = ProviderRequest {
            operation,
            params: input.params.clone(),
            tracking_code: input.tracking_code.clone(),
            timeout: budget,
        };
        let response = match tokio::time::timeout(budget, provider.call(request)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(HubError::DeadlineExceeded {
                    provider: provider_id,
                    budget,
                })
            }
        };
        // 6. Minimize: only granted fields leave the hub.
        let records = response
            .records
            .into_iter()
            .map(|mut r| {
                r.retain(|k, _| fields.iter().any(|f| f == k));
                r
            })
            .collect();
        Ok(InquiryOutput {
            inquiry_id: inquiry_id.to_owned(),
            provider: provider_id,
            records,
            fields,
        })
    }
}
