//! Test harness: a real hub on 127.0.0.1:0 with the dev PKI, real provider simulators
//! and the shipped national policy, plus mTLS clients for any agency.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use tabadol_adapters::simulators::{Dataset, Simulators};
use tabadol_hub::ops::app::HubHandle;
use tabadol_hub::ops::dev::{prepare, DevOptions};
use tabadol_hub::ops::pki::{self, LeafSpec, PemPair, PkiLayout};
use tabadol_proto::v1::InquiryContext;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub struct TestHub {
    pub dir: tempfile::TempDir,
    pub handle: HubHandle,
    pub sims: Simulators,
    pub dataset: Arc<Dataset>,
    pub pki: PkiLayout,
}

pub fn policy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policy/national")
}

/// A copy of the shipped national policy in a temporary directory, to be edited by a test.
pub fn copy_policy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "agencies.yaml",
        "services.yaml",
        "grants.yaml",
        "subscriptions.yaml",
        "secretariat.yaml",
    ] {
        std::fs::copy(policy_dir().join(f), dir.path().join(f)).unwrap();
    }
    dir
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
}

impl TestHub {
    pub async fn start() -> TestHub {
        Self::start_with_kafka(None).await
    }

    /// A hub whose relay produces to `brokers`, giving up on one message after
    /// `message_timeout_ms` (then the relay retries it).
    pub async fn start_with_kafka(kafka: Option<(&str, u64)>) -> TestHub {
        Self::start_with(kafka, policy_dir()).await
    }

    /// A hub running the policy in `policy` instead of the shipped one.
    pub async fn start_with_policy(policy: PathBuf) -> TestHub {
        Self::start_with(None, policy).await
    }

    async fn start_with(kafka: Option<(&str, u64)>, policy: PathBuf) -> TestHub {
        Self::start_configured(kafka, policy, |_, _| {}).await
    }

    /// A hub whose configuration `configure` may change once the dev environment (PKI
    /// under the given directory) exists and before the hub starts.
    pub async fn start_configured(
        kafka: Option<(&str, u64)>,
        policy: PathBuf,
        configure: impl FnOnce(&PkiLayout, &mut tabadol_hub::ops::config::Config),
    ) -> TestHub {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let opts = DevOptions {
            dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            policy: Some(policy),
            kafka: None,
            simulate_events: None,
            durable_audit: false,
        };
        let mut env = prepare(&opts).await.expect("dev environment");
        env.config.kafka = kafka.map(|(brokers, ms)| tabadol_hub::ops::config::KafkaSection {
            message_timeout_ms: ms,
            topic_replication: 1, // one test broker
            ..tabadol_hub::ops::config::KafkaSection::new(brokers)
        });
        configure(&PkiLayout::new(dir.path().join("pki")), &mut env.config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle = tabadol_hub::ops::app::start(&env.config, env.policy.clone(), listener)
            .await
            .expect("hub starts");
        TestHub {
            pki: PkiLayout::new(dir.path().join("pki")),
            dir,
            handle,
            sims: env.simulators,
            dataset: env.dataset,
        }
    }

    /// A dev hub (shipped policy, its PKI and simulators) whose configuration `configure`
    /// then changes — policy directory and providers included — and which is validated
    /// again and started with the policy it then names (a test's own YAML).
    pub async fn start_reconfigured(
        configure: impl FnOnce(&PkiLayout, &mut tabadol_hub::ops::config::Config),
    ) -> TestHub {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let opts = DevOptions {
            dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            policy: Some(policy_dir()),
            kafka: None,
            simulate_events: None,
            durable_audit: false,
        };
        let mut env = prepare(&opts).await.expect("dev environment");
        configure(&PkiLayout::new(dir.path().join("pki")), &mut env.config);
        let policy = env
            .config
            .validate()
            .unwrap_or_else(|e| panic!("reconfigured hub: {e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle = tabadol_hub::ops::app::start(&env.config, policy, listener)
            .await
            .expect("hub starts");
        TestHub {
            pki: PkiLayout::new(dir.path().join("pki")),
            dir,
            handle,
            sims: env.simulators,
            dataset: env.dataset,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.handle.addr.port())
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.pki.ca_cert()).unwrap()
    }

    pub fn ca(&self) -> PemPair {
        pki::read_ca(&self.pki).unwrap()
    }

    /// The dev certificate and key of `agency`.
    pub fn identity(&self, agency: &str) -> PemPair {
        pki::read_pair(&self.pki.agency_cert(agency), &self.pki.agency_key(agency)).unwrap()
    }

    /// A channel authenticated with the dev certificate of `agency`.
    pub async fn channel(&self, agency: &str) -> Channel {
        self.channel_with(Some(self.identity(agency)), &self.ca_pem())
            .await
            .expect("connect")
    }

    /// A channel with an arbitrary identity (or none) trusting `ca_pem` for the server.
    pub async fn channel_with(
        &self,
        identity: Option<PemPair>,
        ca_pem: &str,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        if let Some(id) = identity {
            tls = tls.identity(Identity::from_pem(id.cert, id.key));
        }
        Ok(Endpoint::from_shared(self.url())?
            .tls_config(tls)?
            .connect_lazy())
    }

    /// A client certificate for `cn` issued by this hub's root.
    pub fn issue(&self, spec: &LeafSpec) -> PemPair {
        pki::issue(&self.ca(), spec).unwrap()
    }

    /// Samples of the simulators' population.
    pub fn samples(&self) -> serde_json::Value {
        self.dataset.samples()
    }

    pub fn alive(&self, i: usize) -> (String, String) {
        let s = self.samples();
        let p = &s["persons_alive"][i];
        (
            p["national_code"].as_str().unwrap().to_owned(),
            p["mobile"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn stop(self) {
        self.handle.stop().await.unwrap();
        self.sims.shutdown().await;
    }
}

/// The `providers:` entries (YAML flow mappings, one a line, each starting `  - `) of every
/// simulator in `sims`: the three hand-written adapters and the session-26 providers
/// behind the generic adapter.
pub fn providers_yaml(sims: &Simulators) -> String {
    let mut out = format!(
        "  - {{ provider: nocr, adapter: civil-registry, base_url: \"{}\" }}\n\
         \x20 - {{ provider: cra, adapter: shahkar, base_url: \"{}\" }}\n\
         \x20 - {{ provider: inta, adapter: http, base_url: \"{}\" }}\n",
        sims.civil_registry.base_url(),
        sims.shahkar.base_url(),
        sims.tax.base_url()
    );
    for (id, h) in &sims.session26 {
        out.push_str(&format!(
            "  - {{ provider: {id}, adapter: http, base_url: \"{}\" }}\n",
            h.base_url()
        ));
    }
    out
}

pub fn ctx(tracking: &str, purpose: &str) -> Option<InquiryContext> {
    Some(InquiryContext {
        tracking_code: tracking.into(),
        purpose: purpose.into(),
        service_request_id: String::new(),
    })
}

/// The field names of a status's BadRequest details.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}
