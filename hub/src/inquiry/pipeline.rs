//! The inquiry pipeline every call goes through, typed or generic: the hub's shared state
//! and [`Hub::inquire`], the one place where the layers of [`crate::inquiry::layers`] are
//! composed (authenticate → audit guard → validate → authorize → maintenance → limit →
//! provider call → minimize).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tabadol_adapters::{Provider, ProviderRequest, Record};
use tabadol_policy::Policy;

use crate::edge::error::HubError;
use crate::inquiry::audit::Audit;
use crate::inquiry::layers::{
    authorize, call, condition,
    guard::{AuditGuard, InFlight},
    limit::Limits,
    maintenance::Schedule,
    minimize, validate,
};

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

/// The compiled policy plus what is built from it (rate limiters, maintenance windows as
/// instants); swapped as one.
pub struct PolicyState {
    pub policy: Policy,
    limits: Limits,
    maintenance: Schedule,
}

impl PolicyState {
    pub fn new(policy: Policy) -> Self {
        Self {
            limits: Limits::new(&policy),
            maintenance: Schedule::new(&policy),
            policy,
        }
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
    /// The current version of every published dataset, for conditional grants (R4).
    datasets: crate::events::datasets::DatasetIndex,
    /// Service requests (R16), set once when the hub is assembled.
    requests: std::sync::OnceLock<Arc<crate::inquiry::requests::RequestStore>>,
    /// Upper bound on any provider call when the caller sets no deadline.
    pub default_deadline: Duration,
    /// Inquiries run at once; one more is shed ([`HubError::Overloaded`]).
    pub max_in_flight: usize,
    /// Prometheus metrics (`ops/metrics.rs`), served on the admin listener.
    pub metrics: Arc<crate::ops::metrics::Metrics>,
}

/// What a shed inquiry is told to wait before it tries again.
pub const OVERLOAD_RETRY_AFTER: Duration = Duration::from_millis(100);

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
            datasets: Default::default(),
            requests: Default::default(),
            default_deadline: Duration::from_secs(10),
            max_in_flight: usize::MAX,
            metrics: Default::default(),
        }
    }

    /// Inquiries running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
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
        self.metrics.prime(&policy);
        self.policy.store(Arc::new(PolicyState::new(policy)));
        self.metrics.policy_reloaded();
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

    /// The provider adapters, by provider agency id.
    pub fn providers(&self) -> &HashMap<String, Arc<dyn Provider>> {
        &self.providers
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Gives the hub its service-request store (once, at assembly).
    pub fn set_requests(&self, store: Arc<crate::inquiry::requests::RequestStore>) {
        let _ = self.requests.set(store);
    }

    /// The service-request store (R16).
    pub fn requests(&self) -> Result<&crate::inquiry::requests::RequestStore, HubError> {
        self.requests
            .get()
            .map(|s| s.as_ref())
            .ok_or_else(|| HubError::Internal("no service-request store".into()))
    }

    /// The published datasets in force (R3), which conditional grants are checked against.
    pub fn datasets(&self) -> &crate::events::datasets::DatasetIndex {
        &self.datasets
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
    ///
    /// This is the one place where the layers are composed; their order matters where a
    /// comment says so.
    pub async fn inquire(
        &self,
        caller: &Caller,
        input: InquiryInput,
        deadline: Option<Instant>,
    ) -> Result<InquiryOutput, HubError> {
        // Metrics and the trace span of this inquiry (ops/telemetry.rs): the one place its
        // outcome is known.
        let service = crate::ops::metrics::service_label(&self.policy().policy, &input.service);
        let observe = crate::ops::telemetry::InquiryObservation::start(
            &self.metrics,
            &caller.agency,
            &service,
            &input.purpose,
            &input.tracking_code,
        );
        let result = self.run_layers(caller, input, deadline, &observe).await;
        observe.finish(&result);
        result
    }

    async fn run_layers(
        &self,
        caller: &Caller,
        mut input: InquiryInput,
        deadline: Option<Instant>,
        observe: &crate::ops::telemetry::InquiryObservation<'_>,
    ) -> Result<InquiryOutput, HubError> {
        // 1. Authenticate: done before — a `Caller` exists only for a verified certificate
        //    that maps to an agency (`Hub::caller_for`).
        // Counted before the guard opens, so shutdown waits until the record is handed over.
        let flight = InFlight::enter(&self.in_flight, &self.idle);
        // 2. Audit guard: opened before anything can fail, so every outcome is audited.
        let mut guard = AuditGuard::open(&self.audit, caller, &input);
        // Shed load beyond the hub's capacity at once rather than queue it: the calls
        // accepted keep their latency, the shed ones are told when to come back.
        if flight.count() > self.max_in_flight {
            return guard
                .finish(Err(HubError::Overloaded {
                    limit: self.max_in_flight,
                    retry_after: OVERLOAD_RETRY_AFTER,
                }))
                .await;
        }
        // Steps 3–6 read the policy in force now; it is not held across the provider call
        // (a reload may swap it meanwhile).
        let admitted = (|| {
            let state = self.policy.load();
            // 3. Validate, in canonical form: what is validated is what is audited and sent.
            let service = validate::validate(&state.policy, &mut input)?;
            guard.set_tracking_code(&input.tracking_code);
            observe.set_tracking_code(&input.tracking_code);
            let _decision = observe.child("tabadol.decision");
            let at = jiff::Timestamp::now();
            // 4. Authorize before maintenance and limits: an agency without a grant learns
            //    nothing about a provider's schedule and spends no quota.
            let granted = authorize::authorize(&state.policy, caller, &input, at)?;
            // 4b. Condition (R4): a conditional grant holds only when its dataset says so
            //     for this request, now; before the schedule and the quota, like authorize.
            condition::check(&state.policy, &self.datasets, caller, &input, at)?;
            // 5. Maintenance before the limit: a call refused for an announced outage does
            //    not spend the caller's budget.
            state.maintenance.check(service, at)?;
            // 6. Limit.
            state.limits.check(&caller.agency, &input.service)?;
            let provider_id = service.provider.clone();
            let provider = self
                .providers
                .get(&provider_id)
                .cloned()
                .ok_or_else(|| HubError::NoAdapter(provider_id.clone()))?;
            let request = ProviderRequest {
                operation: service.operation.clone(),
                params: std::mem::take(&mut input.params),
                tracking_code: std::mem::take(&mut input.tracking_code),
                timeout: call::budget(deadline, self.default_deadline, Instant::now()),
                mapping: service.http.clone(),
                traceparent: None,
            };
            Ok::<_, HubError>((provider, provider_id, request, granted))
        })();
        let (provider, provider_id, request, granted) = match admitted {
            Ok(admitted) => admitted,
            Err(e) => return guard.finish(Err(e)).await,
        };
        // 7. Provider call under the caller's deadline (the adapter holds the breaker).
        let span = observe.child("tabadol.provider_call");
        let mut request = request;
        request.traceparent = crate::ops::telemetry::traceparent(span.context());
        let called = call::call(provider.as_ref(), &provider_id, request).await;
        observe.provider(span, &provider_id, called.as_ref().err());
        let result = called
            // 8. Minimize: only granted fields leave the hub.
            .map(|response| InquiryOutput {
                inquiry_id: guard.inquiry_id().to_owned(),
                provider: provider_id,
                records: minimize::minimize(response.records, &granted),
                fields: granted,
            });
        guard.finish(result).await
    }
}
