//! The hub's Prometheus metrics (prometheus-client encoding): inquiries by agency,
//! service and outcome, latency histograms, provider errors and breakers, rate-limit
//! refusals, connections and streams per agency, audit queue and flush latency, outbox
//! depth, relay lag, dead letters, policy version and reload failures.
//!
//! Every label is bounded: agencies and services come from the policy (a service the
//! catalog does not know is counted as `unknown`), outcomes from [`HubError::outcome`]. No
//! tracking code, national code or caller text ever becomes a label.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::edge::error::HubError;

/// Labels of one inquiry count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InquiryLabels {
    pub agency: String,
    pub service: String,
    pub outcome: String,
}

/// Agency and service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgencyService {
    pub agency: String,
    pub service: String,
}

/// One provider agency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
}

/// A provider error by kind (`unavailable`, `deadline_exceeded`, `rejected`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderError {
    pub provider: String,
    pub kind: String,
}

/// One calling agency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgencyLabel {
    pub agency: String,
}

/// A grpc.health.v1 service name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabel {
    pub service: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn flush_histogram() -> Histogram {
    // 0.1 ms … ~3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

/// The label a service id gets: its own id when the catalog knows it, else `unknown` (a
/// caller must not be able to create series by naming services).
pub fn service_label(policy: &tabadol_policy::Policy, service: &str) -> String {
    if policy.service(service).is_some() {
        service.to_owned()
    } else {
        "unknown".to_owned()
    }
}

/// Fills the gauges read at scrape time.
pub type Refresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// Every metric of one hub.
pub struct Metrics {
    registry: Registry,
    pub inquiries: Family<InquiryLabels, Counter>,
    pub inquiry_duration: Family<AgencyService, Histogram>,
    pub provider_duration: Family<ProviderLabel, Histogram>,
    pub provider_errors: Family<ProviderError, Counter>,
    pub provider_circuit_open: Family<ProviderLabel, Gauge>,
    pub rate_limited: Family<AgencyService, Counter>,
    pub connections: Family<AgencyLabel, Gauge>,
    pub connections_total: Gauge,
    pub streams: Family<AgencyLabel, Gauge>,
    pub audit_queue_depth: Gauge,
    pub audit_queue_capacity: Gauge,
    pub audit_flush_duration: Histogram,
    pub outbox_depth: Gauge,
    pub relay_lag_seconds: Gauge<f64, AtomicU64>,
    pub dead_letters: Gauge,
    pub policy_version: Gauge,
    pub policy_reloads: Counter,
    pub policy_reload_failures: Counter,
    pub health_serving: Family<HealthLabel, Gauge>,
    /// How the scrape-time gauges are filled (set by the assembly in `app.rs`).
    refresh: Mutex<Option<Refresh>>,
    /// Streams per agency, counted at the edge.
    stream_counts: Mutex<Option<Arc<crate::edge::limits::StreamCounts>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("tabadol");
        let inquiries = Family::<InquiryLabels, Counter>::default();
        r.register(
            "inquiries",
            "Inquiries answered, by calling agency, catalog service and outcome (ok, denied, invalid, rate_limited, maintenance, unavailable, deadline_exceeded, not_found, rejected, cancelled, ...)",
            inquiries.clone(),
        );
        let inquiry_duration = Family::<AgencyService, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        r.register_with_unit(
            "inquiry_duration",
            "Time from the request reaching the pipeline to its answer (audit record written)",
            Unit::Seconds,
            inquiry_duration.clone(),
        );
        let provider_duration = Family::<ProviderLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        r.register_with_unit(
            "provider_call_duration",
            "Time of the provider call alone",
            Unit::Seconds,
            provider_duration.clone(),
        );
        let provider_errors = Family::<ProviderError, Counter>::default();
        r.register(
            "provider_errors",
            "Provider calls that failed, by provider and kind (unavailable includes an open breaker)",
            provider_errors.clone(),
        );
        let provider_circuit_open = Family::<ProviderLabel, Gauge>::default();
        r.register(
            "provider_circuit_open",
            "1 while the provider's circuit breaker fails calls fast, else 0",
            provider_circuit_open.clone(),
        );
        let rate_limited = Family::<AgencyService, Counter>::default();
        r.register(
            "rate_limit_refusals",
            "Inquiries refused with RESOURCE_EXHAUSTED because a grant's or agency's rate was used up",
            rate_limited.clone(),
        );
        let connections = Family::<AgencyLabel, Gauge>::default();
        r.register(
            "connections",
            "Open mTLS connections per calling agency",
            connections.clone(),
        );
        let connections_total = Gauge::default();
        r.register(
            "connections_open",
            "Open mTLS connections in total",
            connections_total.clone(),
        );
        let streams = Family::<AgencyLabel, Gauge>::default();
        r.register(
            "streams",
            "Calls in progress and open Subscribe streams per agency",
            streams.clone(),
        );
        let audit_queue_depth = Gauge::default();
        r.register(
            "audit_queue_depth",
            "Audit records waiting for the writer",
            audit_queue_depth.clone(),
        );
        let audit_queue_capacity = Gauge::default();
        r.register(
            "audit_queue_capacity",
            "Size of the audit writer's queue; health is NOT_SERVING when the depth nears it",
            audit_queue_capacity.clone(),
        );
        let audit_flush_duration = flush_histogram();
        r.register_with_unit(
            "audit_flush_duration",
            "Time of one audit batch write and flush",
            Unit::Seconds,
            audit_flush_duration.clone(),
        );
        let outbox_depth = Gauge::default();
        r.register(
            "outbox_depth",
            "Events accepted but not yet relayed to Kafka (0 without Kafka)",
            outbox_depth.clone(),
        );
        let relay_lag_seconds = Gauge::<f64, AtomicU64>::default();
        r.register_with_unit(
            "relay_lag",
            "Age of the oldest event not yet relayed to Kafka (0 when none waits)",
            Unit::Seconds,
            relay_lag_seconds.clone(),
        );
        let dead_letters = Gauge::default();
        r.register(
            "dead_letters",
            "Event copies Kafka refused permanently, kept for replay",
            dead_letters.clone(),
        );
        let policy_version = Gauge::default();
        r.register(
            "policy_version",
            "Generation of the policy in force (1 at start, +1 per successful reload)",
            policy_version.clone(),
        );
        let policy_reloads = Counter::default();
        r.register(
            "policy_reloads",
            "Policy reloads put in force",
            policy_reloads.clone(),
        );
        let policy_reload_failures = Counter::default();
        r.register(
            "policy_reload_failures",
            "Policy reloads refused (the last good policy stayed in force)",
            policy_reload_failures.clone(),
        );
        let health_serving = Family::<HealthLabel, Gauge>::default();
        r.register(
            "health_serving",
            "1 while grpc.health.v1 reports the service SERVING, else 0 (\"\" is the whole hub)",
            health_serving.clone(),
        );
        policy_version.set(1);
        Metrics {
            registry: r,
            inquiries,
            inquiry_duration,
            provider_duration,
            provider_errors,
            provider_circuit_open,
            rate_limited,
            connections,
            connections_total,
            streams,
            audit_queue_depth,
            audit_queue_capacity,
            audit_flush_duration,
            outbox_depth,
            relay_lag_seconds,
            dead_letters,
            policy_version,
            policy_reloads,
            policy_reload_failures,
            health_serving,
            refresh: Mutex::new(None),
            stream_counts: Mutex::new(None),
        }
    }

    /// Records one finished inquiry (the one hook in the pipeline).
    pub fn inquiry(&self, agency: &str, service: &str, outcome: &str, elapsed: Duration) {
        self.inquiries
            .get_or_create(&InquiryLabels {
                agency: agency.to_owned(),
                service: service.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        let key = AgencyService {
            agency: agency.to_owned(),
            service: service.to_owned(),
        };
        self.inquiry_duration
            .get_or_create(&key)
            .observe(elapsed.as_secs_f64());
        if outcome == "rate_limited" {
            self.rate_limited.get_or_create(&key).inc();
        }
    }

    /// Records the provider call of an inquiry: its time, and its failure if it failed.
    pub fn provider_call(&self, provider: &str, elapsed: Duration, error: Option<&HubError>) {
        let label = ProviderLabel {
            provider: provider.to_owned(),
        };
        self.provider_duration
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
        if let Some(e) = error {
            self.provider_errors
                .get_or_create(&ProviderError {
                    provider: provider.to_owned(),
                    kind: e.outcome().to_owned(),
                })
                .inc();
        }
    }

    /// Creates the series every grant has from the start (its `ok` inquiries and its
    /// refusals at 0), so rates and alerts see them before the first call.
    pub fn prime(&self, policy: &tabadol_policy::Policy) {
        for s in policy.services() {
            for kind in ["unavailable", "deadline_exceeded"] {
                let _ = self.provider_errors.get_or_create(&ProviderError {
                    provider: s.provider.clone(),
                    kind: kind.to_owned(),
                });
            }
        }
        for a in policy.agencies() {
            for (service, _) in policy.grants_for(&a.id) {
                let _ = self.rate_limited.get_or_create(&AgencyService {
                    agency: a.id.clone(),
                    service: service.id.clone(),
                });
                let _ = self.inquiries.get_or_create(&InquiryLabels {
                    agency: a.id.clone(),
                    service: service.id.clone(),
                    outcome: "ok".to_owned(),
                });
            }
        }
    }

    /// A policy reload was put in force.
    pub fn policy_reloaded(&self) {
        self.policy_reloads.inc();
        self.policy_version.inc();
    }

    /// The edge's per-agency stream counts, read at every scrape.
    pub fn set_stream_counts(&self, counts: Arc<crate::edge::limits::StreamCounts>) {
        *self.stream_counts.lock().unwrap_or_else(|e| e.into_inner()) = Some(counts);
    }

    /// Open streams of `agency` now (0 before the server runs).
    pub fn streams_of(&self, agency: &str) -> usize {
        self.stream_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |c| c.open(agency))
    }

    /// Sets how the scrape-time gauges (queues, connections, breakers) are read.
    pub fn set_refresh(&self, f: Refresh) {
        *self.refresh.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// The text exposition (OpenMetrics), gauges refreshed first.
    pub fn encode(&self) -> String {
        let refresh = self
            .refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(f) = refresh {
            f(self);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Times one audit flush; cheap to clone into the writer.
#[derive(Clone, Default, Debug)]
pub struct FlushTimer(Option<Histogram>);

impl FlushTimer {
    pub fn new(h: Histogram) -> Self {
        FlushTimer(Some(h))
    }
    pub fn observe(&self, elapsed: Duration) {
        if let Some(h) = &self.0 {
            h.observe(elapsed.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions_and_hold_no_identifiers() {
        let m = Metrics::new();
        m.inquiry("cbi", "shahkar.match", "ok", Duration::from_millis(3));
        m.inquiry(
            "cbi",
            "shahkar.match",
            "rate_limited",
            Duration::from_millis(1),
        );
        let text = m.encode();
        assert!(
            text.contains(
                "tabadol_inquiries_total{agency=\"cbi\",service=\"shahkar.match\",outcome=\"ok\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("tabadol_inquiry_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("tabadol_rate_limit_refusals_total"), "{text}");
        assert!(text.contains("# EOF"), "{text}");
    }
}
