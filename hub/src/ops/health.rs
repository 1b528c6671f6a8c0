//! Health that tells the truth: a task re-checks, every second, whether the store can
//! write, whether the audit writer keeps up, whether each provider is reachable and its
//! breaker closed, and which services are inside a planned maintenance window; it sets
//! grpc.health.v1 for the whole hub (`""`), each gRPC service and each catalog service
//! id, and keeps the snapshot the dashboard shows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tonic::server::NamedService;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::inquiry::pipeline::Hub;

/// How often health is re-checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The audit writer is not keeping up when its queue is fuller than this share.
const AUDIT_QUEUE_HIGH: f64 = 0.9;
/// How long a store write-and-flush may take before the store counts as not writing.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a provider's TCP connect may take.
const PROVIDER_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One verdict with its reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub serving: bool,
    /// Why not serving (empty when serving).
    pub reason: String,
}

impl Verdict {
    fn ok() -> Verdict {
        Verdict {
            serving: true,
            reason: String::new(),
        }
    }
    fn not(reason: impl Into<String>) -> Verdict {
        Verdict {
            serving: false,
            reason: reason.into(),
        }
    }
}

/// What the last check found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Snapshot {
    /// The whole hub (`""`): store writing and audit keeping up.
    pub hub: Option<Verdict>,
    /// Each provider agency: reachable and breaker closed.
    pub providers: BTreeMap<String, Verdict>,
    /// Each catalog service id: its provider's verdict, or the maintenance window in force.
    pub services: BTreeMap<String, Verdict>,
    /// Each grpc.health.v1 name as reported.
    pub grpc: BTreeMap<String, bool>,
    /// Unix seconds of the check.
    pub checked_at: i64,
}

/// Health shared by the checker, the admin listener and the dashboard.
#[derive(Default)]
pub struct Health {
    snapshot: ArcSwap<Snapshot>,
}

impl Health {
    /// The last check's findings.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}

/// What the checker needs.
pub struct Checker {
    pub hub: Arc<Hub>,
    pub db: sled::Db,
    /// `host:port` of each provider's base URL, probed with a TCP connect.
    pub provider_addrs: BTreeMap<String, String>,
    pub reporter: HealthReporter,
    pub health: Arc<Health>,
}

/// `host:port` of a base URL (`https://h:p/...`; the scheme's port when none is given).
pub fn probe_addr(base_url: &str) -> Option<String> {
    let uri: http::Uri = base_url.parse().ok()?;
    let host = uri.host()?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    Some(format!("{host}:{port}"))
}

/// The typed gRPC service that answers from catalog service `id`, if any (the others are
/// reached through `Inquiry/Inquire` only).
fn typed_service(id: &str) -> Option<&'static str> {
    use crate::edge::grpc::{civil_registry, shahkar, tax};
    use tabadol_proto::v1::{
        civil_registry_server::CivilRegistryServer, shahkar_server::ShahkarServer,
        tax_server::TaxServer,
    };
    type S = shahkar::ShahkarService;
    type C = civil_registry::CivilRegistryService;
    type T = tax::TaxService;
    match id {
        shahkar::SERVICE => Some(<ShahkarServer<S> as NamedService>::NAME),
        civil_registry::IDENTITY | civil_registry::LIFE_STATUS => {
            Some(<CivilRegistryServer<C> as NamedService>::NAME)
        }
        tax::SERVICE => Some(<TaxServer<T> as NamedService>::NAME),
        _ => None,
    }
}

fn hub_wide_services() -> [&'static str; 3] {
    use tabadol_proto::v1::{
        datasets_server::DatasetsServer, events_server::EventsServer, inquiry_server::InquiryServer,
    };
    [
        <InquiryServer<crate::edge::grpc::inquiry::InquiryService> as NamedService>::NAME,
        <EventsServer<crate::edge::grpc::events::EventsService> as NamedService>::NAME,
        <DatasetsServer<crate::edge::grpc::datasets::DatasetsService> as NamedService>::NAME,
    ]
}

impl Checker {
    /// Checks once and reports.
    pub async fn check(&self) -> Snapshot {
        let hub_verdict = self.check_hub().await;
        let mut providers = BTreeMap::new();
        for (id, provider) in self.hub.providers() {
            let verdict = if provider.circuit_open() {
                Verdict::not(format!(
                    "provider {id}: circuit breaker open after repeated failures"
                ))
            } else {
                match self.provider_addrs.get(id) {
                    Some(addr) => probe(addr).await.map_or_else(
                        |e| Verdict::not(format!("provider {id}: {e}")),
                        |_| Verdict::ok(),
                    ),
                    None => Verdict::ok(),
                }
            };
            providers.insert(id.clone(), verdict);
        }
        let now = jiff::Timestamp::now();
        let state = self.hub.policy();
        let mut services = BTreeMap::new();
        let mut grpc = BTreeMap::new();
        for name in hub_wide_services() {
            grpc.insert(name.to_owned(), hub_verdict.serving);
        }
        grpc.insert(String::new(), hub_verdict.serving);
        for s in state.policy.services() {
            let verdict = if !hub_verdict.serving {
                hub_verdict.clone()
            } else if let Some(w) = s.maintenance_at(now) {
                Verdict::not(format!(
                    "planned maintenance {} – {}{}",
                    w.from,
                    w.until,
                    w.note
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                ))
            } else {
                providers.get(&s.provider).cloned().unwrap_or_else(|| {
                    Verdict::not(format!("no adapter configured for provider {}", s.provider))
                })
            };
            // A typed gRPC service serves while any of its catalog services does (a
            // maintenance window of one method leaves the others answering).
            if let Some(typed) = typed_service(&s.id) {
                let entry = grpc.entry(typed.to_owned()).or_insert(false);
                *entry |= verdict.serving;
            }
            grpc.insert(s.id.clone(), verdict.serving);
            services.insert(s.id.clone(), verdict);
        }
        for (name, serving) in &grpc {
            let status = if *serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            self.reporter.set_service_status(name, status).await;
            self.hub
                .metrics
                .health_serving
                .get_or_create(&crate::ops::metrics::HealthLabel {
                    service: name.clone(),
                })
                .set(i64::from(*serving));
        }
        Snapshot {
            hub: Some(hub_verdict),
            providers,
            services,
            grpc,
            checked_at: now.as_second(),
        }
    }

    async fn check_hub(&self) -> Verdict {
        let audit = self.hub.audit();
        let (depth, capacity) = audit.queue_depth();
        if capacity > 0 && depth as f64 > capacity as f64 * AUDIT_QUEUE_HIGH {
            return Verdict::not(format!(
                "audit writer not keeping up: {depth} of {capacity} records queued"
            ));
        }
        if audit.writer_failing() {
            return Verdict::not("audit writer: the last write or flush failed");
        }
        let db = self.db.clone();
        let probe = async move {
            let tree = db.open_tree("ops.health").map_err(|e| e.to_string())?;
            tree.insert(
                b"probe",
                &jiff::Timestamp::now().as_second().to_be_bytes()[..],
            )
            .map_err(|e| e.to_string())?;
            db.flush_async().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        };
        match tokio::time::timeout(STORE_PROBE_TIMEOUT, probe).await {
            Ok(Ok(())) => Verdict::ok(),
            Ok(Err(e)) => Verdict::not(format!("store cannot write: {e}")),
            Err(_) => Verdict::not(format!(
                "store cannot write: a write and flush took over {STORE_PROBE_TIMEOUT:?}"
            )),
        }
    }

    /// Reports the whole hub and its hub-wide services SERVING before the first check
    /// has run: the hub is started only once its store is open and its audit log
    /// verified, and a health client asking in the first second must not be told the
    /// services do not exist. The first check (within a second) replaces it.
    pub async fn prime(&self) {
        for name in std::iter::once("").chain(hub_wide_services()) {
            self.reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
    }

    /// Checks every [`CHECK_EVERY`] until the returned handle is aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let snap = self.check().await;
                self.health.snapshot.store(Arc::new(snap));
            }
        })
    }
}

async fn probe(addr: &str) -> Result<(), String> {
    match tokio::time::timeout(PROVIDER_PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
        Err(_) => Err(format!(
            "no connection to {addr} within {PROVIDER_PROBE_TIMEOUT:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> crate::inquiry::audit::AuditRecord {
        crate::inquiry::audit::AuditRecord {
            seq: 0,
            time_micros: 0,
            inquiry_id: format!("q-{n}"),
            agency: "cbi".into(),
            service: "cra.shahkar.match".into(),
            purpose: "kyc".into(),
            tracking_code: format!("T-{n}"),
            service_request_id: String::new(),
            outcome: "ok".into(),
            latency_micros: 1,
            detail: String::new(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// An audit writer that cannot keep up (its queue over 90 % full) makes the whole hub
    /// and every service NOT_SERVING; once it has caught up, they serve again.
    #[tokio::test(flavor = "current_thread")]
    async fn audit_falling_behind_is_not_serving() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let audit = crate::inquiry::audit::Audit::open(&db, Default::default()).unwrap();
        let policy = tabadol_policy::Policy::load_dir(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/national"),
        )
        .unwrap();
        let hub = Arc::new(Hub::new(policy, Default::default(), audit.clone()));
        let (reporter, _service) = tonic_health::server::health_reporter();
        let checker = Checker {
            hub: hub.clone(),
            db: db.clone(),
            provider_addrs: BTreeMap::new(),
            reporter,
            health: Default::default(),
        };
        // On this single-threaded runtime the writer cannot run until we yield: the queue
        // fills as it would behind a stalled disk.
        let (_, capacity) = audit.queue_depth();
        for n in 0..capacity {
            audit.append_detached(record(n));
        }
        let snap = checker.check().await;
        let hub_verdict = snap.hub.clone().unwrap();
        assert!(!hub_verdict.serving);
        assert!(
            hub_verdict.reason.contains("audit writer not keeping up"),
            "{hub_verdict:?}"
        );
        assert!(!snap.grpc[""]);
        assert!(!snap.grpc["tabadol.v1.Inquiry"]);
        assert!(!snap.services["cra.shahkar.match"].serving);
        // Let it drain.
        for _ in 0..2000 {
            if audit.queue_depth().0 == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(audit.queue_depth().0, 0, "the writer drained its queue");
        let snap = checker.check().await;
        assert!(snap.hub.unwrap().serving);
        assert!(snap.grpc[""]);
        // No adapters are configured here: services say so instead of pretending.
        assert!(snap.services["cra.shahkar.match"]
            .reason
            .contains("no adapter configured"));
    }
}
