//! Assembles a running hub from a validated [`Config`]: store, audit writer, adapters,
//! TLS and the gRPC server; and stops it cleanly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tabadol_adapters::{AdapterConfig, Provider};
use tabadol_policy::Policy;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::edge::grpc::events::EventsService;
use crate::edge::tls::{TlsEdge, TlsFiles};
use crate::events::manifests::{ManifestStore, ManifestTask};
use crate::events::outbox::Outbox;
use crate::events::relay::{RelayHandle, RelayOptions};
use crate::inquiry::audit::Audit;
use crate::inquiry::checkpoint::CheckpointSigner;
use crate::inquiry::pipeline::Hub;
use crate::ops::config::Config;

/// How long `stop` lets calls in flight finish before closing the remaining connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long `stop` then waits for inquiries still running (their provider calls are bounded
/// by the provider timeouts) so that each one's audit record is written before the store
/// is flushed.
pub const INQUIRY_DRAIN: Duration = Duration::from_secs(30);

/// The operations side of a running hub, stopped with it.
struct OpsTasks {
    admin: Option<crate::ops::admin::AdminHandle>,
    health: JoinHandle<()>,
    telemetry: Option<crate::ops::telemetry::Telemetry>,
}

/// A hub serving on a socket.
pub struct HubHandle {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    pub outbox: Arc<Outbox>,
    /// The subscribers' token keys in force (derived in cluster mode, from the store else).
    pub tokens: Arc<crate::events::tokens::Tokens>,
    pub relay: Option<RelayHandle>,
    pub manifests: Arc<ManifestStore>,
    /// The TLS edge: its configuration is swapped by [`reload_crls`].
    pub tls: Arc<TlsEdge>,
    manifest_task: Option<ManifestTask>,
    pub db: sled::Db,
    /// The admin listener's address (metrics, dashboard, reports), when it is on.
    pub admin_addr: Option<SocketAddr>,
    /// The last health check's findings (also in grpc.health.v1).
    pub health: Arc<crate::ops::health::Health>,
    ops: OpsTasks,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl HubHandle {
    /// Stops accepting calls, lets calls in flight finish, and flushes the store.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Calls in flight get SHUTDOWN_GRACE to finish; a client that keeps its connection
        // open past that (or never reacts to GOAWAY) must not keep the hub from stopping.
        let result = match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await {
            Ok(joined) => joined.context("server task panicked")?,
            Err(_) => {
                tracing::warn!(
                    message =
                        "connections still open after the shutdown grace period; closing them",
                    grace_secs = SHUTDOWN_GRACE.as_secs()
                );
                self.task.abort();
                Ok(())
            }
        };
        if !self.hub.drained(INQUIRY_DRAIN).await {
            tracing::error!(
                message = "inquiries still running at shutdown; their audit records may be missing",
                waited_secs = INQUIRY_DRAIN.as_secs()
            );
        }
        // Sign what the log holds now, so cutting records off its tail is detectable.
        if let Err(error) = self.hub.audit().checkpoint().await {
            tracing::error!(message = "audit checkpoint at shutdown failed", %error);
        }
        if let Some(relay) = self.relay.take() {
            relay.stop().await;
        }
        if let Some(task) = self.manifest_task.take() {
            task.stop().await;
        }
        self.db.flush_async().await?;
        self.ops.health.abort();
        if let Some(admin) = self.ops.admin.take() {
            admin.stop();
        }
        if let Some(t) = self.ops.telemetry.take() {
            // The exporter's blocking shutdown must not hold a runtime worker.
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        }
        result
    }

    /// Exports the spans buffered so far (tests, operators).
    pub fn flush_telemetry(&self) {
        if let Some(t) = &self.ops.telemetry {
            t.flush();
        }
    }

    /// Makes the daily-manifest task run a round now (tests, operators).
    pub fn nudge_manifests(&self) {
        if let Some(t) = &self.manifest_task {
            t.nudge();
        }
    }

    /// Waits until the server ends by itself (it only does on error).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await.context("server task panicked")?
    }
}

/// Builds the provider adapters named in the config.
pub fn build_providers(cfg: &Config) -> anyhow::Result<HashMap<String, Arc<dyn Provider>>> {
    let mut out = HashMap::new();
    for p in &cfg.providers {
        let kind = p
            .adapter
            .parse()
            .map_err(|_| anyhow::anyhow!("unknown adapter `{}`", p.adapter))?;
        let tls = tabadol_adapters::ProviderTls::read(&p.tls_files()).map_err(|errors| {
            let all: Vec<String> = errors.iter().map(|e| format!("tls.{e}")).collect();
            anyhow::anyhow!("provider {}: {}", p.provider, all.join("; "))
        })?;
        let mut adapter_cfg = AdapterConfig::new(
            p.provider.clone(),
            kind,
            p.base_url.clone(),
            Duration::from_millis(p.timeout_ms),
        );
        adapter_cfg.max_body_bytes = usize::try_from(p.max_body_bytes)
            .map_err(|_| anyhow::anyhow!("provider {}: max_body_bytes too large", p.provider))?;
        adapter_cfg.tls = tls;
        let adapter = tabadol_adapters::build_with_circuit(&adapter_cfg, p.breaker.circuit())
            .map_err(|e| anyhow::anyhow!("provider {}: {e}", p.provider))?;
        out.insert(p.provider.clone(), adapter);
    }
    Ok(out)
}

/// Starts the hub on `listener` with an already validated config and policy.
pub async fn start(
    cfg: &Config,
    policy: Policy,
    listener: TcpListener,
) -> anyhow::Result<HubHandle> {
    let (tls, revoked) = TlsEdge::load(
        TlsFiles {
            ca: cfg.tls.ca.clone(),
            cert: cfg.tls.cert.clone(),
            key: cfg.tls.key.clone(),
            crls: cfg.tls.crls.clone(),
        },
        cfg.tls.limits.clone(),
    )
    .context("tls")?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data_dir {}", cfg.data_dir.display()))?;
    let store = cfg.data_dir.join("store");
    let db = crate::inquiry::audit::open_store(&store, Some(500))?;
    let signer = CheckpointSigner::from_pem_files(&cfg.tls.cert, &cfg.tls.key)
        .map_err(|e| anyhow::anyhow!("cannot sign audit checkpoints with the hub key: {e}"))?;
    let metrics = Arc::new(crate::ops::metrics::Metrics::new());
    let mut audit_options = cfg.audit.options(&store, signer);
    audit_options.flush_timer =
        crate::ops::metrics::FlushTimer::new(metrics.audit_flush_duration.clone());
    let audit = Audit::open(&db, audit_options).map_err(|e| {
        anyhow::anyhow!(
            "the audit log in {} is {}. The hub does not serve on an audit log it \
             cannot vouch for: run `tabadol audit verify --data-dir {} --cert {}` for the full \
             report, then restore {} from a backup (or move it aside, keeping it as evidence, \
             to start a new log)",
            store.display(),
            e.verdict(),
            cfg.data_dir.display(),
            cfg.tls.cert.display(),
            store.display()
        )
    })?;
    let mut hub = Hub::new(policy, build_providers(cfg)?, audit);
    hub.default_deadline = Duration::from_millis(cfg.default_deadline_ms);
    hub.max_in_flight = cfg.limits.inquiries_in_flight.max(1) as usize;
    hub.metrics = metrics;
    hub.metrics.prime(&hub.policy().policy);
    hub.set_revoked(revoked);
    let hub = Arc::new(hub);
    // An acknowledged event survives a power loss: publish flushes are fsynced too.
    let outbox = Arc::new(Outbox::open(&db)?.fsync_on_publish(store.join("db")));
    let tokens = Arc::new(crate::ops::cluster::open_tokens(cfg.cluster.as_ref(), &db)?);
    let kafka_opts = cfg.kafka.as_ref().map(|k| {
        let mut opts = RelayOptions::new(k.brokers.clone());
        opts.message_timeout = Duration::from_millis(k.message_timeout_ms);
        opts.topic_partitions = k.topic_partitions;
        opts.topic_replication = k.topic_replication;
        opts.properties = k
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        opts
    });
    let kafka_opts_datasets = kafka_opts.clone();
    let relay = match &kafka_opts {
        Some(opts) => Some(crate::events::relay::spawn(
            opts.clone(),
            outbox.clone(),
            tokens.clone(),
            hub.clone(),
        )?),
        None => None,
    };
    let manifests = Arc::new(ManifestStore::open(&db)?);
    let manifest_task = crate::events::manifests::spawn(
        hub.clone(),
        outbox.clone(),
        tokens.clone(),
        manifests.clone(),
        kafka_opts,
    )?;
    tracing::info!(
        message = "outbox open",
        outbox_last_sequence = outbox.last_seq(),
        kafka = cfg
            .kafka
            .as_ref()
            .map(|k| k.brokers.as_str())
            .unwrap_or("off"),
    );
    let events = EventsService::with_options(
        hub.clone(),
        outbox.clone(),
        tokens.clone(),
        manifests.clone(),
        crate::edge::grpc::events::EventsOptions {
            tokenize_quota: cfg.events.tokenize_quota().unwrap_or_default(),
        },
    );
    // Operations: traces, health, metrics gauges read at scrape time, the admin listener.
    let telemetry = match &cfg.telemetry.otlp_endpoint {
        Some(endpoint) => Some(crate::ops::telemetry::Telemetry::start(
            endpoint,
            cfg.telemetry
                .service_name
                .as_deref()
                .unwrap_or("tabadol-hub"),
        )?),
        None => None,
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let health = Arc::new(crate::ops::health::Health::default());
    let checker = crate::ops::health::Checker {
        hub: hub.clone(),
        db: db.clone(),
        provider_addrs: cfg
            .providers
            .iter()
            .filter_map(|p| {
                crate::ops::health::probe_addr(&p.base_url).map(|a| (p.provider.clone(), a))
            })
            .collect(),
        reporter: health_reporter,
        health: health.clone(),
    };
    checker.prime().await;
    let health_task = checker.spawn();
    hub.metrics.set_refresh(scrape_gauges(
        hub.clone(),
        tls.clone(),
        outbox.clone(),
        cfg.kafka.is_some(),
    ));
    let admin = match &cfg.admin {
        Some(section) => {
            let listener = crate::ops::admin::bind(section).await?;
            Some(crate::ops::admin::serve(
                listener,
                section.tls.as_ref(),
                crate::ops::admin::AdminState {
                    hub: hub.clone(),
                    health: health.clone(),
                    outbox: outbox.clone(),
                    kafka: cfg.kafka.is_some(),
                },
            )?)
        }
        None => None,
    };
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    // Open Subscribe streams would keep a graceful shutdown waiting forever: end them
    // (telling each subscriber where to resume) when shutdown begins.
    let streams = events.streams_stop();
    // Published datasets (R3): the current versions back in the index before serving, so
    // conditional grants (R4) hold from the first call.
    let dataset_store = Arc::new(crate::events::datasets::DatasetStore::open(&db)?);
    for version in dataset_store.load_all()? {
        hub.datasets().install(version);
    }
    if let Some(opts) = &kafka_opts_datasets {
        // Each reader's compacted topic; the task ends when shutdown begins.
        crate::events::dataset_relay::spawn(opts.clone(), hub.clone(), &db, streams.watch())?;
    }
    hub.set_requests(Arc::new(crate::inquiry::requests::RequestStore::open(&db)?));
    let datasets = crate::edge::grpc::datasets::DatasetsService::new(
        hub.clone(),
        dataset_store,
        streams.watch(),
    );
    let task = tokio::spawn(crate::edge::server::run(
        listener,
        tls.clone(),
        hub.clone(),
        crate::edge::server::Fronts { events, datasets },
        cfg.limits.edge(),
        async move {
            let _ = rx.await;
            streams.stop();
        },
        health_service,
    ));
    tracing::info!(message = "hub listening", %addr);
    Ok(HubHandle {
        addr,
        hub,
        outbox,
        tokens,
        relay,
        manifests,
        tls,
        manifest_task: Some(manifest_task),
        db,
        admin_addr: admin.as_ref().map(|a| a.addr),
        health,
        ops: OpsTasks {
            admin,
            health: health_task,
            telemetry,
        },
        shutdown: Some(tx),
        task,
    })
}

/// Fills the gauges that are read, not counted: connections and streams per agency, the
/// audit queue, the outbox and relay, provider breakers.
fn scrape_gauges(
    hub: Arc<Hub>,
    tls: Arc<TlsEdge>,
    outbox: Arc<Outbox>,
    kafka: bool,
) -> crate::ops::metrics::Refresh {
    use crate::ops::metrics::{AgencyLabel, ProviderLabel};
    // The closure lives in the hub's metrics: a strong reference back would keep the hub
    // (and its store) alive forever.
    let hub = Arc::downgrade(&hub);
    Arc::new(move |m| {
        let Some(hub) = hub.upgrade() else {
            return;
        };
        let state = hub.policy();
        let mut total = 0;
        for a in state.policy.agencies() {
            let (all, mine) = tls.open_connections(&a.id);
            total = all;
            let label = AgencyLabel {
                agency: a.id.clone(),
            };
            m.connections.get_or_create(&label).set(mine as i64);
            m.streams
                .get_or_create(&label)
                .set(m.streams_of(&a.id) as i64);
        }
        m.connections_total.set(total as i64);
        let (depth, capacity) = hub.audit().queue_depth();
        m.audit_queue_depth.set(depth as i64);
        m.audit_queue_capacity.set(capacity as i64);
        for (id, p) in hub.providers() {
            m.provider_circuit_open
                .get_or_create(&ProviderLabel {
                    provider: id.clone(),
                })
                .set(i64::from(p.circuit_open()));
        }
        m.dead_letters.set(outbox.dead_letters() as i64);
        if kafka {
            let cursor = outbox.cursor(crate::events::relay::CURSOR).unwrap_or(0);
            let last = outbox.last_seq();
            m.outbox_depth.set(last.saturating_sub(cursor) as i64);
            let lag = match outbox.get(cursor + 1) {
                Ok(Some(ev)) if last > cursor => {
                    let now = jiff::Timestamp::now().as_microsecond();
                    (now - ev.accepted_at_micros).max(0) as f64 / 1e6
                }
                _ => 0.0,
            };
            m.relay_lag_seconds.set(lag);
        }
    })
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Reloads what decides access on SIGHUP: the policy, then the CRLs and TLS material
/// (each keeping the last good one when the new one is broken). Open connections and
/// streams re-check their callers afterwards ([`Hub::access_changes`]).
///
/// `loader` says where the signatures are and whether they are required
/// ([`crate::ops::signed::PolicyLoader::from_config`]).
pub fn spawn_policy_reload(
    hub: Arc<Hub>,
    loader: crate::ops::signed::PolicyLoader,
    tls: Arc<TlsEdge>,
) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            reload_policy_with(&hub, &loader).await;
            reload_crls(&hub, &tls).await;
        }
    });
    #[cfg(not(unix))]
    let _ = (hub, loader, tls);
}

/// Re-reads the CRLs (and the CA and hub certificate) and puts them in force for new
/// connections; open connections of revoked certificates are then cut. A broken or
/// expired CRL is refused and the last good set stays. Returns whether the new set was
/// taken.
pub async fn reload_crls(hub: &Arc<Hub>, tls: &Arc<TlsEdge>) -> bool {
    let (h, t) = (hub.clone(), tls.clone());
    match tokio::task::spawn_blocking(move || t.reload(&h)).await {
        Ok(Ok(revoked)) => {
            tracing::info!(
                message = "TLS material and CRLs reloaded",
                crl_files = tls.crl_files().len(),
                revoked_serials = revoked
            );
            true
        }
        Ok(Err(error)) => {
            tracing::error!(
                message = "CRL reload refused; keeping the last good CRLs",
                %error
            );
            false
        }
        Err(error) => {
            tracing::error!(
                message = "CRL reload failed; keeping the last good CRLs",
                %error
            );
            false
        }
    }
}

/// Loads the policy from `dir` and puts it in force; a broken one is refused and the last
/// good policy stays. Returns whether the new policy was taken.
///
/// Reading, parsing and compiling (files of up to 4 MiB each) is blocking work, so it runs
/// on the blocking pool: calls keep being answered on the async workers meanwhile. A reload
/// that fails for any reason — a file too big, too deep, unreadable or invalid, or a panic
/// while loading — keeps the last good policy and logs one line of bounded length saying
/// why; `tabadol policy check DIR` lists every error.
pub async fn reload_policy(hub: &Hub, dir: &std::path::Path) -> bool {
    reload_policy_with(hub, &crate::ops::signed::PolicyLoader::plain(dir)).await
}

/// [`reload_policy`] with the signatures checked as `loader` says: withdrawn grants are
/// taken out, and with `require_signatures` a policy with an unsigned active grant is
/// refused (each one logged) and the last good policy stays.
pub async fn reload_policy_with(hub: &Hub, loader: &crate::ops::signed::PolicyLoader) -> bool {
    let dir = loader.dir.clone();
    let load = loader.clone();
    let loaded = tokio::task::spawn_blocking(move || load.load()).await;
    match loaded {
        Ok(Ok(p)) => {
            hub.swap_policy(p);
            tracing::info!(message = "policy reloaded", dir = %dir.display());
            true
        }
        Ok(Err(errors)) => {
            hub.metrics.policy_reload_failures.inc();
            tracing::error!(
                message = "policy reload refused; keeping the last good policy",
                dir = %dir.display(),
                errors = errors.len(),
                first = %errors.summary(),
                hint = "run `tabadol policy check` on the directory to list every error",
            );
            if let crate::ops::signed::LoadError::Signatures(lines) = &errors {
                for line in lines.iter().take(50) {
                    tracing::error!(message = "policy reload refused", reason = %line);
                }
            }
            false
        }
        Err(failed) => {
            hub.metrics.policy_reload_failures.inc();
            let reason = match failed.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned()),
                Err(e) => e.to_string(),
            };
            let reason: String = reason
                .chars()
                .take(300)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            tracing::error!(
                message = "policy reload failed; keeping the last good policy",
                dir = %dir.display(),
                %reason,
            );
            false
        }
    }
}
