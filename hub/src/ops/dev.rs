//! `tabadol dev`: the embedded default — a development PKI, provider simulators on
//! loopback, a sled store and `samples.json`, all under one directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tabadol_adapters::simulators::{Dataset, Simulators};
use tabadol_policy::Policy;

use crate::ops::config::{AuditSection, Config, KafkaSection, ProviderSection, TlsSection};
use crate::ops::pki::{ensure_dev_pki, PkiLayout};

/// The shipped national policy, embedded so `tabadol dev` runs from anywhere.
const EMBEDDED_POLICY: [(&str, &str); 5] = [
    (
        "agencies.yaml",
        include_str!("../../../policy/national/agencies.yaml"),
    ),
    (
        "services.yaml",
        include_str!("../../../policy/national/services.yaml"),
    ),
    (
        "grants.yaml",
        include_str!("../../../policy/national/grants.yaml"),
    ),
    (
        "subscriptions.yaml",
        include_str!("../../../policy/national/subscriptions.yaml"),
    ),
    (
        "secretariat.yaml",
        include_str!("../../../policy/national/secretariat.yaml"),
    ),
];

/// Seed of the simulators' synthetic population (fixed, so samples.json is stable).
pub const DATASET_SEED: u64 = 1405;

/// Options of `tabadol dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    /// Policy directory; `None` uses `policy/national` when present, else the embedded copy.
    pub policy: Option<PathBuf>,
    /// Kafka bootstrap servers to relay events to (`--kafka HOST:PORT`).
    pub kafka: Option<String>,
    /// Interval of the simulated civil-registry event trickle (`--simulate-events`).
    pub simulate_events: Option<std::time::Duration>,
    /// `--durable-audit`: every answer waits for its audit record's fsync.
    pub durable_audit: bool,
}

/// Everything `tabadol dev` started.
pub struct DevEnv {
    pub config: Config,
    pub policy: Policy,
    pub simulators: Simulators,
    pub dataset: Arc<Dataset>,
}

/// `tabadol dev`'s operations flags: the admin listener at `admin_listen` (default
/// 127.0.0.1:9464, or a free loopback port when another process holds that one) and OTLP
/// export when `otlp` names a collector.
pub fn operations(config: &mut Config, admin_listen: Option<SocketAddr>, otlp: Option<String>) {
    config.admin = Some(crate::ops::admin::AdminSection {
        listen: admin_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], crate::ops::admin::DEFAULT_PORT))),
        tls: None,
        fallback_to_free_port: admin_listen.is_none(),
    });
    config.telemetry.otlp_endpoint = otlp;
}

/// Finds or writes the policy directory for dev mode.
pub fn policy_dir(opts: &DevOptions) -> anyhow::Result<PathBuf> {
    if let Some(p) = &opts.policy {
        return Ok(p.clone());
    }
    let repo = Path::new("policy/national");
    if repo.join("agencies.yaml").is_file() {
        return Ok(repo.to_owned());
    }
    let dir = opts.dir.join("policy");
    std::fs::create_dir_all(&dir)?;
    for (name, text) in EMBEDDED_POLICY {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(dir)
}

/// Prepares the directory (PKI, samples) and starts the simulators.
pub async fn prepare(opts: &DevOptions) -> anyhow::Result<DevEnv> {
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create {}", opts.dir.display()))?;
    let policy_dir = policy_dir(opts)?;
    let policy = Policy::load_dir(&policy_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let layout = PkiLayout::new(opts.dir.join("pki"));
    let agencies: Vec<(String, String)> = policy
        .agencies()
        .map(|a| (a.id.clone(), a.certificate.common_name.clone()))
        .collect();
    let report = ensure_dev_pki(&layout, &agencies)?;
    if !report.issued.is_empty() {
        tracing::info!(message = "development PKI ready", issued = ?report.issued);
    }
    // Every grant and subscription signed by its provider and the secretariat with the
    // development PKI, so development needs no manual step (kept beside the PKI, not in
    // the policy directory, which may be the repository's).
    let signatures = opts.dir.join(tabadol_policy::signatures::SIGNATURES_FILE);
    let signed =
        crate::ops::signed::dev_sign(&policy_dir, &signatures, &layout, report.created_root)?;
    if signed > 0 {
        tracing::info!(
            message = "development signatures written",
            signatures = signed,
            file = %signatures.display()
        );
    }
    let dataset = Arc::new(Dataset::generate(DATASET_SEED));
    let samples = opts.dir.join("samples.json");
    std::fs::write(&samples, serde_json::to_string_pretty(&dataset.samples())?)
        .with_context(|| format!("writing {}", samples.display()))?;
    let simulators = Simulators::start(dataset.clone()).await?;
    let providers = vec![
        ProviderSection::new("cra", "shahkar", simulators.shahkar.base_url()),
        ProviderSection::new(
            "nocr",
            "civil-registry",
            simulators.civil_registry.base_url(),
        ),
        ProviderSection::new("inta", "http", simulators.tax.base_url()),
    ];
    // The session-26 providers, reached through the generic adapter (`adapter: http`).
    let mut providers = providers;
    for (id, sim) in &simulators.session26 {
        providers.push(ProviderSection::new(*id, "http", sim.base_url()));
    }
    // Tokens derived from a master secret kept beside the PKI (mode 0600), as in a
    // cluster: a dev hub restarted on the same --dir gives the same tokens.
    let master_secret = opts.dir.join(crate::ops::cluster::DEV_MASTER_SECRET);
    if crate::ops::cluster::ensure_master_secret(&master_secret)
        .with_context(|| format!("writing {}", master_secret.display()))?
    {
        tracing::info!(message = "development master secret written", file = %master_secret.display());
    }
    let config = Config {
        listen: opts.listen,
        policy_dir,
        data_dir: opts.dir.clone(),
        tls: TlsSection {
            ca: layout.ca_cert(),
            cert: layout.hub_cert(),
            key: layout.hub_key(),
            crls: Vec::new(),
            // The development PKI publishes no CRL.
            revocation: crate::ops::config::Revocation::Off,
            limits: Default::default(),
        },
        providers,
        audit: AuditSection {
            durable: opts.durable_audit,
            ..AuditSection::default()
        },
        kafka: opts.kafka.clone().map(|brokers| KafkaSection {
            // A development broker is a single one: three replicas could never be placed.
            topic_replication: 1,
            ..KafkaSection::new(brokers)
        }),
        default_deadline_ms: 10_000,
        events: Default::default(),
        limits: Default::default(),
        policy: crate::ops::signed::PolicySection {
            require_signatures: false,
            signatures: Some(signatures),
        },
        // The admin listener (metrics, dashboard) on loopback: a test hub (port 0) gets a
        // free port too; `tabadol dev` moves it with --admin-listen.
        admin: Some(crate::ops::admin::AdminSection::loopback(
            if opts.listen.port() == 0 {
                0
            } else {
                crate::ops::admin::DEFAULT_PORT
            },
        )),
        telemetry: Default::default(),
        cluster: Some(crate::ops::cluster::ClusterSection {
            instance_id: Some("dev".into()),
            master_secret_file: master_secret,
            key_version: 1,
            previous_keys: Vec::new(),
            kafka: None,
            topics: Default::default(),
        }),
    };
    let policy = config.validate()?;
    Ok(DevEnv {
        config,
        policy,
        simulators,
        dataset,
    })
}

/// Text printed when `tabadol dev` is up.
pub fn banner(env: &DevEnv, addr: SocketAddr) -> String {
    let dir = env.config.data_dir.display();
    let sample = env.dataset.samples();
    let nc = sample["persons_alive"][0]["national_code"]
        .as_str()
        .unwrap_or("0499370899")
        .to_owned();
    let dying = sample["persons_alive"][1]["national_code"]
        .as_str()
        .unwrap_or(&nc)
        .to_owned();
    let mobile = sample["persons_alive"][0]["mobile"]
        .as_str()
        .unwrap_or("09121234567")
        .to_owned();
    let postal = sample["postal_codes"][0]["postal_code"]
        .as_str()
        .unwrap_or("1345678901")
        .to_owned();
    format!(
        "Tabadol hub (dev) listening on https://{addr} (mutual TLS)\n\
         \n  PKI:       {dir}/pki (root ca.crt, agency certificates in agencies/<id>.crt|.key)\
         \n  samples:   {dir}/samples.json (subjects the simulators know)\
         \n  policy:    {policy}\
         \n  signed:    {dir}/signatures.yaml (every grant signed by its provider and the secretariat;\
         \n             check them: tabadol policy check {policy} --dev {dir})\
         \n  tokens:    derived from {dir}/master-secret (mode 0600; same file, same tokens, as in a cluster)\
         \n  providers: shahkar {s}, civil registry {c}, tax {t}\
         \n             {more}\
         \n\nTry it:\
         \n  cargo run --example inquire -- --hub https://{addr} --dir {dir} --agency cbi shahkar {nc} {mobile}\
         \n  cargo run --example inquire -- --hub https://{addr} --dir {dir} --agency moh identity {nc}\
         \n  cargo run --example inquire -- --hub https://{addr} --dir {dir} --agency rcs call post.address postal_code={postal}\
         \n  cargo run --example eligibility -- --hub https://{addr} --dir {dir} --agency ikrf\
         \n  grpcurl -cacert {dir}/pki/ca.crt -cert {dir}/pki/agencies/cbi.crt -key {dir}/pki/agencies/cbi.key \\\
         \n      -d '{{\"context\":{{\"tracking_code\":\"TRK-0001\",\"purpose\":\"kyc\"}},\"national_code\":\"{nc}\"}}' \\\
         \n      {addr} tabadol.v1.CivilRegistry/GetLifeStatus\
         \n\nBroadcasts (R5): a subscriber, then the civil registry announcing a death:\
         \n  cargo run --example subscriber -- --hub https://{addr} --dir {dir} --agency cbi\
         \n  cargo run --example publish -- --hub https://{addr} --dir {dir} death {dying}\
         \n  (relayed to Kafka only with --kafka HOST:PORT; --simulate-events SECONDS publishes a trickle)\
         \n\nCtrl-C stops the hub.",
        policy = env.config.policy_dir.display(),
        s = env.simulators.shahkar.base_url(),
        c = env.simulators.civil_registry.base_url(),
        t = env.simulators.tax.base_url(),
        more = env
            .simulators
            .session26
            .iter()
            .map(|(id, h)| format!("{id} {}", h.base_url()))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Starts the simulated civil registry's trickle (`--simulate-events`): every `every`, it
/// publishes as `nocr` — through the hub's own mTLS `Events/Publish`, like the real
/// registry — either the death of a person (recorded in the simulators too, so
/// `GetLifeStatus` agrees) or an identity change. Deaths start with the second alive
/// sample person of samples.json, so the examples show a known customer dying; identity
/// changes rotate over the alive samples.
pub fn spawn_event_trickle(
    pki_dir: &Path,
    dataset: Arc<Dataset>,
    hub_addr: SocketAddr,
    every: std::time::Duration,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tabadol_proto::v1::events_client::EventsClient;
    use tabadol_proto::v1::PublishRequest;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

    let layout = PkiLayout::new(pki_dir);
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(layout.ca_cert())?))
        .identity(Identity::from_pem(
            read(layout.agency_cert("nocr"))?,
            read(layout.agency_key("nocr"))?,
        ))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{hub_addr}"))?
        .tls_config(tls)?
        .connect_lazy();
    let samples: Vec<String> = dataset.samples()["persons_alive"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["national_code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    // Death order: samples from the second on, then everyone else alive.
    let mut dying: Vec<String> = samples.iter().skip(1).cloned().collect();
    dying.extend(
        dataset
            .persons()
            .iter()
            .filter(|p| p.death_date.is_none() && !samples.contains(&p.national_code))
            .map(|p| p.national_code.clone()),
    );
    Ok(tokio::spawn(async move {
        let mut client = EventsClient::new(channel);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_death = dying.into_iter();
        for n in 0u64.. {
            tick.tick().await;
            let today = tabadol_policy::jalali::JalaliDate::in_tehran(jiff::Timestamp::now());
            let (event_type, national_code) = if n % 2 == 0 {
                match next_death.find(|nc| dataset.record_death(nc, &today.to_string())) {
                    Some(nc) => ("death.v1", nc),
                    None => continue,
                }
            } else if samples.is_empty() {
                continue;
            } else {
                let i = (n / 2) as usize % samples.len();
                ("identity-change.v1", samples[i].clone())
            };
            let req = PublishRequest {
                event_id: format!("sim-{}", uuid::Uuid::now_v7()),
                r#type: event_type.into(),
                national_code,
                date: today.to_string(),
            };
            match client.publish(req).await {
                Ok(r) => tracing::info!(
                    message = "simulated civil-registry event published",
                    event_type,
                    sequence = r.get_ref().sequence,
                ),
                Err(s) => tracing::warn!(
                    message = "simulated civil-registry event refused",
                    event_type,
                    code = ?s.code(),
                    error = %s.message(),
                ),
            }
        }
    }))
}
