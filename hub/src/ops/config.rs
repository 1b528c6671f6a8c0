//! The hub's configuration file (`tabadol serve --config FILE`): parsed completely and
//! validated with every error collected, before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tabadol_policy::Policy;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server listens on, e.g. `127.0.0.1:7443`.
    pub listen: SocketAddr,
    /// Directory with agencies.yaml, services.yaml, grants.yaml, subscriptions.yaml.
    pub policy_dir: PathBuf,
    /// Directory of the sled store (audit log, outbox).
    pub data_dir: PathBuf,
    /// Mutual-TLS material.
    pub tls: TlsSection,
    /// One entry per provider agency the catalog calls.
    #[serde(default)]
    pub providers: Vec<ProviderSection>,
    /// Audit log settings.
    #[serde(default)]
    pub audit: AuditSection,
    /// Kafka relay of published events; without it events are served only through
    /// `Events/Subscribe`.
    #[serde(default)]
    pub kafka: Option<KafkaSection>,
    /// Deadline applied when a caller sets none, in milliseconds.
    #[serde(default = "default_deadline_ms")]
    pub default_deadline_ms: u64,
    /// Broadcast (R5) settings.
    #[serde(default)]
    pub events: EventsSection,
    /// Bounds on the streams callers may hold open (connections: `tls.limits`).
    #[serde(default)]
    pub limits: LimitsSection,
    /// Signed grants: where the signatures are and whether they are required.
    #[serde(default)]
    pub policy: crate::ops::signed::PolicySection,
    /// Cluster mode: several hubs sharing token keys (and later Kafka state); without it
    /// the hub runs single-node with random token keys in its store.
    #[serde(default)]
    pub cluster: Option<crate::ops::cluster::ClusterSection>,
    /// The admin listener (metrics, dashboard, reports); off when the section is absent.
    #[serde(default)]
    pub admin: Option<crate::ops::admin::AdminSection>,
    /// OpenTelemetry traces; off unless `otlp_endpoint` is set.
    #[serde(default)]
    pub telemetry: TelemetrySection,
}

/// OpenTelemetry export.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; traces are exported only when set.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans. Default `tabadol-hub`.
    #[serde(default)]
    pub service_name: Option<String>,
}

/// Bounds on what one connection, one agency and all callers together may hold open.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// HTTP/2 streams one connection may have open at once, advertised to every client as
    /// SETTINGS_MAX_CONCURRENT_STREAMS. Default 100.
    #[serde(default = "default_streams_per_connection")]
    pub streams_per_connection: u32,
    /// Calls in progress and open Subscribe streams of one agency, across all its
    /// connections; beyond it a call is RESOURCE_EXHAUSTED naming this limit. Default 1000.
    #[serde(default = "default_streams_per_agency")]
    pub streams_per_agency: u32,
    /// How long a request body may take to end (END_STREAM) after its headers, ms; a
    /// request still open then is ended with INVALID_ARGUMENT. Default 10000.
    #[serde(default = "default_request_body_timeout_ms")]
    pub request_body_timeout_ms: u64,
    /// Inquiries the whole hub runs at once (InquireMany items count one each); beyond it
    /// an inquiry is shed at once with UNAVAILABLE and a RetryInfo instead of queueing, so
    /// the calls accepted keep their latency under overload. Default: 32 per CPU core, at
    /// least 64.
    #[serde(default = "default_inquiries_in_flight")]
    pub inquiries_in_flight: u32,
}

fn default_inquiries_in_flight() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (32 * cores).clamp(64, 100_000) as u32
}

fn default_streams_per_connection() -> u32 {
    100
}

fn default_streams_per_agency() -> u32 {
    1_000
}

fn default_request_body_timeout_ms() -> u64 {
    10_000
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            streams_per_connection: default_streams_per_connection(),
            streams_per_agency: default_streams_per_agency(),
            request_body_timeout_ms: default_request_body_timeout_ms(),
            inquiries_in_flight: default_inquiries_in_flight(),
        }
    }
}

impl LimitsSection {
    /// The edge's bounds these settings give.
    pub fn edge(&self) -> crate::edge::limits::EdgeLimits {
        crate::edge::limits::EdgeLimits {
            streams_per_connection: self.streams_per_connection.max(1),
            streams_per_agency: self.streams_per_agency.max(1) as usize,
            request_body_timeout: std::time::Duration::from_millis(
                self.request_body_timeout_ms.max(1),
            ),
        }
    }

    fn validate(&self, errors: &mut Vec<String>) {
        for (name, value, default) in [
            (
                "streams_per_connection",
                u64::from(self.streams_per_connection),
                "100",
            ),
            (
                "streams_per_agency",
                u64::from(self.streams_per_agency),
                "1000",
            ),
            (
                "request_body_timeout_ms",
                self.request_body_timeout_ms,
                "10000",
            ),
            (
                "inquiries_in_flight",
                u64::from(self.inquiries_in_flight),
                "32 per CPU core, at least 64",
            ),
        ] {
            if value == 0 {
                errors.push(format!(
                    "limits.{name}: give at least 1 (default {default})"
                ));
            }
        }
    }
}

/// Settings of the event path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    /// Distinct national codes one subscriber agency may tokenize per day (also the
    /// burst). Keeps anyone from building a reverse table of the ~10⁹ national codes;
    /// raise it for the first tokenization of a very large customer base.
    #[serde(default = "default_tokenize_codes_per_day")]
    pub tokenize_codes_per_day: u32,
}

fn default_tokenize_codes_per_day() -> u32 {
    crate::events::tokens::TOKENIZE_CODES_PER_DAY
}

impl Default for EventsSection {
    fn default() -> Self {
        Self {
            tokenize_codes_per_day: default_tokenize_codes_per_day(),
        }
    }
}

impl EventsSection {
    /// The Tokenize quota these settings give (None when invalid; `validate` says why).
    pub fn tokenize_quota(&self) -> Option<crate::events::tokens::TokenizeQuota> {
        let codes = std::num::NonZeroU32::new(self.tokenize_codes_per_day)?;
        Some(crate::events::tokens::TokenizeQuota {
            codes,
            period: crate::events::tokens::DAY,
            burst: codes,
        })
    }
}

fn default_deadline_ms() -> u64 {
    10_000
}

/// TLS files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file with the national root(s) that client certificates must chain to.
    pub ca: PathBuf,
    /// The hub's server certificate chain (PEM).
    pub cert: PathBuf,
    /// The hub's private key (PEM).
    pub key: PathBuf,
    /// Certificate revocation lists (PEM) checked for every client certificate; reloaded
    /// on SIGHUP. Required unless `revocation: off`; an expired list (nextUpdate in the
    /// past) is refused.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// `crl` (default): certificates are checked against `crls`, which must not be empty.
    /// `off`: no revocation checking at all — for development only, and only when written.
    #[serde(default)]
    pub revocation: Revocation,
    /// Bounds on handshakes and connections (see [`crate::edge::tls::ConnectionLimits`]).
    #[serde(default)]
    pub limits: crate::edge::tls::ConnectionLimits,
}

/// Whether client certificates are checked for revocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Revocation {
    /// Checked against the CRLs in `tls.crls`.
    #[default]
    Crl,
    /// Not checked (development only).
    Off,
}

/// How to reach one provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// Provider agency id, as in agencies.yaml and services.yaml (`cra`, `nocr`, `inta`).
    pub provider: String,
    /// Adapter kind: `shahkar`, `civil-registry` or `tax`.
    pub adapter: String,
    /// Base URL of the provider's API, e.g. `https://shahkar.cra.ir`.
    pub base_url: String,
    /// Per-call timeout in milliseconds (the caller's deadline may be shorter).
    #[serde(default = "default_provider_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest answer body read from this provider, in bytes (default 1048576); a larger
    /// answer fails the call as UNAVAILABLE and is never held in memory whole.
    #[serde(default = "default_provider_max_body_bytes")]
    pub max_body_bytes: u64,
    /// TLS to this provider (base_url must be https:// to use it).
    #[serde(default)]
    pub tls: ProviderTlsSection,
    /// Circuit breaker of this provider (default: open after 5 consecutive failures, for
    /// 2000 ms).
    #[serde(default)]
    pub breaker: BreakerSection,
}

/// When a provider's circuit opens, and for how long calls then fail fast.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSection {
    /// Consecutive failures (unavailable, timed out) that open the circuit; default 5.
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    /// How long an open circuit fails fast before one probe call, ms; default 2000.
    #[serde(default = "default_breaker_open_ms")]
    pub open_ms: u64,
}

fn default_breaker_failures() -> u32 {
    5
}

fn default_breaker_open_ms() -> u64 {
    2_000
}

impl Default for BreakerSection {
    fn default() -> Self {
        BreakerSection {
            failures: default_breaker_failures(),
            open_ms: default_breaker_open_ms(),
        }
    }
}

impl BreakerSection {
    /// The adapter's circuit setting.
    pub fn circuit(&self) -> tabadol_adapters::CircuitConfig {
        tabadol_adapters::CircuitConfig {
            failure_threshold: self.failures.max(1),
            open_for: std::time::Duration::from_millis(self.open_ms.max(1)),
        }
    }
}

impl ProviderSection {
    /// A provider entry with the default timeout, body cap and TLS settings.
    pub fn new(
        provider: impl Into<String>,
        adapter: impl Into<String>,
        base_url: impl Into<String>,
    ) -> ProviderSection {
        ProviderSection {
            provider: provider.into(),
            adapter: adapter.into(),
            base_url: base_url.into(),
            timeout_ms: default_provider_timeout_ms(),
            max_body_bytes: default_provider_max_body_bytes(),
            tls: ProviderTlsSection::default(),
            breaker: BreakerSection::default(),
        }
    }

    /// The TLS files this entry names.
    pub fn tls_files(&self) -> tabadol_adapters::ProviderTlsFiles<'_> {
        tabadol_adapters::ProviderTlsFiles {
            ca: self.tls.ca.as_deref(),
            cert: self.tls.cert.as_deref(),
            key: self.tls.key.as_deref(),
        }
    }
}

/// TLS to one provider.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderTlsSection {
    /// PEM file with the provider's CA; when given, only it is trusted for the provider's
    /// server certificate (not the web PKI roots).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The hub's client certificate chain (PEM) for mutual TLS to the provider.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

fn default_provider_timeout_ms() -> u64 {
    3_000
}

fn default_provider_max_body_bytes() -> u64 {
    tabadol_adapters::DEFAULT_MAX_BODY_BYTES as u64
}

/// Kafka relay settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// Bootstrap servers, e.g. `kafka-1:9092,kafka-2:9092`.
    pub brokers: String,
    /// How long librdkafka tries one delivery before the relay retries it itself, ms.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Partitions of each event topic the hub creates (`tabadol.<event-type>.<agency>`;
    /// manifest topics get one). Order is kept per key (per person), so more partitions
    /// only spread a subscriber's load. Existing topics are left as they are. At least 1;
    /// default 3.
    #[serde(default = "default_topic_partitions")]
    pub topic_partitions: i32,
    /// Replication factor of each topic the hub creates (event and manifest topics). The
    /// relay produces with acks=all, which only means "on every in-sync replica": with 1, an
    /// acknowledged event lives on one broker's disk. At least 1, at most the number of
    /// brokers (the relay keeps retrying and logs why until it fits); default 3, and the
    /// cluster should set `min.insync.replicas` to 2. `tabadol dev --kafka` uses 1.
    #[serde(default = "default_topic_replication")]
    pub topic_replication: i32,
    /// Further librdkafka client properties, e.g. the TLS settings of the cluster
    /// (`security.protocol: ssl`, `ssl.ca.location`, `ssl.certificate.location`,
    /// `ssl.key.location`). The delivery guarantees (`enable.idempotence`,
    /// `enable.gapless.guarantee`, `acks`) cannot be overridden.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

impl KafkaSection {
    /// A section for `brokers` with every default (as if only `brokers:` were written).
    pub fn new(brokers: impl Into<String>) -> KafkaSection {
        KafkaSection {
            brokers: brokers.into(),
            message_timeout_ms: default_message_timeout_ms(),
            topic_partitions: default_topic_partitions(),
            topic_replication: default_topic_replication(),
            properties: Default::default(),
        }
    }

    fn validate(&self, errors: &mut Vec<String>) {
        if self.brokers.trim().is_empty() {
            errors.push("kafka.brokers: give at least one HOST:PORT".into());
        }
        if self.topic_partitions < 1 {
            errors.push(format!(
                "kafka.topic_partitions: {} is not a partition count; give at least 1 (default 3)",
                self.topic_partitions
            ));
        }
        if self.topic_replication < 1 {
            errors.push(format!(
                "kafka.topic_replication: {} is not a replication factor; give at least 1 \
                 (default 3; 1 only for a single-broker cluster)",
                self.topic_replication
            ));
        }
        for key in self.properties.keys() {
            if KAFKA_FIXED_PROPERTIES.contains(&key.as_str()) {
                errors.push(format!(
                    "kafka.properties.{key}: set by the hub itself (use kafka.brokers / kafka.message_timeout_ms; idempotence, the gapless guarantee and acks=all are not negotiable)"
                ));
            }
        }
    }
}

/// librdkafka properties the hub sets itself and a configuration may not change.
pub const KAFKA_FIXED_PROPERTIES: [&str; 6] = [
    "bootstrap.servers",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "acks",
    "message.timeout.ms",
    "client.id",
];

fn default_topic_partitions() -> i32 {
    3
}

fn default_topic_replication() -> i32 {
    3
}

fn default_message_timeout_ms() -> u64 {
    30_000
}

/// Audit settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Answer an inquiry only once its audit record is on disk (flushed and fsynced with
    /// every other record of its batch: group commit). Default false: records are flushed
    /// every `flush_every_ms`, so a crash loses at most the records of calls answered in
    /// the last `flush_every_ms` (plus the time of one flush).
    #[serde(default)]
    pub durable: bool,
    /// When not durable, how often audit records are flushed to disk (the loss window of
    /// a crash), in milliseconds; 1 to 10000, default 200.
    #[serde(default = "default_audit_flush_every_ms")]
    pub flush_every_ms: u64,
    /// Sign a checkpoint of the audit chain (last sequence and hash, with the hub's TLS
    /// key) after this many records; default 1000, at least 1.
    #[serde(default = "default_checkpoint_every_records")]
    pub checkpoint_every_records: u64,
    /// ...or this many seconds after the last checkpoint when records were added since
    /// (and always at shutdown); default 60, 1 to 86400.
    #[serde(default = "default_checkpoint_every_secs")]
    pub checkpoint_every_secs: u64,
}

fn default_audit_flush_every_ms() -> u64 {
    crate::inquiry::audit::DEFAULT_FLUSH_EVERY.as_millis() as u64
}

fn default_checkpoint_every_records() -> u64 {
    1000
}

fn default_checkpoint_every_secs() -> u64 {
    60
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            durable: false,
            flush_every_ms: default_audit_flush_every_ms(),
            checkpoint_every_records: default_checkpoint_every_records(),
            checkpoint_every_secs: default_checkpoint_every_secs(),
        }
    }
}

impl AuditSection {
    /// Every problem with these settings, as sentences naming the field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(1..=10_000).contains(&self.flush_every_ms) {
            out.push(format!(
                "audit.flush_every_ms: {} is out of range; give 1 to 10000 (milliseconds)",
                self.flush_every_ms
            ));
        }
        if self.checkpoint_every_records == 0 {
            out.push("audit.checkpoint_every_records: give at least 1".into());
        }
        if !(1..=86_400).contains(&self.checkpoint_every_secs) {
            out.push(format!(
                "audit.checkpoint_every_secs: {} is out of range; give 1 to 86400 (seconds)",
                self.checkpoint_every_secs
            ));
        }
        out
    }

    /// The audit writer's options for the store in `store`, signing with `signer`.
    pub fn options(
        &self,
        store: &Path,
        signer: crate::inquiry::checkpoint::CheckpointSigner,
    ) -> crate::inquiry::audit::AuditOptions {
        crate::inquiry::audit::AuditOptions {
            durable: self.durable,
            flush_every: std::time::Duration::from_millis(self.flush_every_ms.max(1)),
            store_dir: Some(store.to_owned()),
            signer: Some(signer),
            checkpoint_every_records: self.checkpoint_every_records.max(1),
            checkpoint_every: std::time::Duration::from_secs(self.checkpoint_every_secs.max(1)),
            flush_timer: Default::default(),
        }
    }
}

/// Every problem found in a configuration file, reported together.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

impl Config {
    /// Reads and validates `path`; relative paths inside are resolved against the file's
    /// directory. Returns the config and the loaded policy.
    pub fn load(path: &Path) -> Result<(Config, Policy), ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        let mut cfg: Config = serde_yaml::from_str(&text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(":{}:{}", l.line(), l.column()))
                .unwrap_or_default();
            ConfigErrors(vec![format!("{}{at}: {e}", path.display())])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_relative(base);
        let policy = cfg.validate()?;
        Ok((cfg, policy))
    }

    fn resolve_relative(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.policy_dir);
        if let Some(p) = &mut self.policy.signatures {
            fix(p);
        }
        fix(&mut self.data_dir);
        if let Some(c) = &mut self.cluster {
            c.resolve_relative(base);
        }
        fix(&mut self.tls.ca);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        self.tls.crls.iter_mut().for_each(fix);
        if let Some(admin) = &mut self.admin {
            admin.resolve_relative(base);
        }
        for p in &mut self.providers {
            for f in [&mut p.tls.ca, &mut p.tls.cert, &mut p.tls.key]
                .into_iter()
                .flatten()
            {
                fix(f);
            }
        }
    }

    /// Checks everything that can be checked before binding a port; collects all errors.
    pub fn validate(&self) -> Result<Policy, ConfigErrors> {
        let mut errors = Vec::new();
        if let Some(admin) = &self.admin {
            admin.validate(&mut errors);
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                errors.push(format!(
                    "telemetry.otlp_endpoint: `{endpoint}` is not a URL; give e.g. http://127.0.0.1:4317"
                ));
            }
        }
        for (name, p) in [
            ("tls.ca", &self.tls.ca),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
        ] {
            if !p.is_file() {
                errors.push(format!("{name}: file {} does not exist", p.display()));
            }
        }
        for p in &self.tls.crls {
            if !p.is_file() {
                errors.push(format!("tls.crls: file {} does not exist", p.display()));
            }
        }
        match (self.tls.revocation, self.tls.crls.is_empty()) {
            (Revocation::Crl, true) => errors.push(
                "tls.crls: no certificate revocation list given, so revoked certificates would be \
                 accepted; list the national root's CRL files, or write `revocation: off` in the \
                 tls section to run without revocation checks (development only)"
                    .to_owned(),
            ),
            (Revocation::Off, false) => errors.push(format!(
                "tls.revocation: `off` but tls.crls lists {} file(s); remove `revocation: off` to \
                 check them, or remove the crls",
                self.tls.crls.len()
            )),
            (Revocation::Crl, false) if self.tls.crls.iter().all(|p| p.is_file()) => {
                if let Err(e) = crate::edge::tls::load_crls(&self.tls.crls) {
                    errors.push(format!("tls.crls: {e}"));
                }
            }
            _ => {}
        }
        self.tls.limits.validate(&mut errors);
        if self.events.tokenize_quota().is_none() {
            errors.push(
                "events.tokenize_codes_per_day: give at least 1 (default 1000000)".to_owned(),
            );
        }
        // With the signatures checked: withdrawn grants are out, and under
        // `policy.require_signatures` an unsigned active grant is an error.
        let policy = match crate::ops::signed::PolicyLoader::from_config(self).load() {
            Ok(p) => Some(p),
            Err(e) => {
                errors.extend(e.lines());
                None
            }
        };
        for (i, p) in self.providers.iter().enumerate() {
            if p.adapter.parse::<tabadol_adapters::AdapterKind>().is_err() {
                errors.push(format!(
                    "providers[{i}].adapter: `{}` is not an adapter; use shahkar, civil-registry, tax or http",
                    p.adapter
                ));
            }
            let https = match tabadol_adapters::check_base_url(&p.base_url) {
                Ok(url) => url.scheme() == "https",
                Err(reason) => {
                    errors.push(format!(
                        "providers[{i}].base_url: `{}` is refused: {reason}",
                        p.base_url
                    ));
                    true
                }
            };
            if p.breaker.failures == 0 || p.breaker.open_ms == 0 {
                errors.push(format!(
                    "providers[{i}].breaker: failures and open_ms must both be at least 1 \
                     (default 5 and 2000)"
                ));
            }
            if p.timeout_ms == 0 {
                errors.push(format!("providers[{i}].timeout_ms must be above 0"));
            }
            if p.max_body_bytes == 0 || usize::try_from(p.max_body_bytes).is_err() {
                errors.push(format!(
                    "providers[{i}].max_body_bytes: {} is not a usable cap; give at least 1 \
                     (default 1048576)",
                    p.max_body_bytes
                ));
            }
            let files = p.tls_files();
            if !files.is_empty() && !https {
                errors.push(format!(
                    "providers[{i}].tls: TLS settings need an https:// base_url, not `{}`",
                    p.base_url
                ));
            }
            if let Err(tls_errors) = tabadol_adapters::ProviderTls::read(&files) {
                errors.extend(
                    tls_errors
                        .into_iter()
                        .map(|e| format!("providers[{i}].tls.{e}")),
                );
            }
            if let Some(j) = self.providers[..i]
                .iter()
                .position(|q| q.provider == p.provider)
            {
                errors.push(format!(
                    "providers[{i}].provider: `{}` is already configured in providers[{j}]; keep one entry per provider",
                    p.provider
                ));
            }
        }
        if let Some(policy) = &policy {
            for s in policy.services() {
                match self.providers.iter().position(|p| p.provider == s.provider) {
                    None => errors.push(format!(
                        "providers: no entry for provider `{}` needed by service {}; add one with its base_url",
                        s.provider, s.id
                    )),
                    Some(i) if self.providers[i].adapter != s.adapter.as_str() => {
                        errors.push(format!(
                            "providers[{i}].adapter: `{}`, but service {} is served by adapter `{}` \
                             (services.yaml); write adapter: {}",
                            self.providers[i].adapter,
                            s.id,
                            s.adapter.as_str(),
                            s.adapter.as_str()
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some(k) = &self.kafka {
            k.validate(&mut errors);
        }
        self.limits.validate(&mut errors);
        if let Some(c) = &self.cluster {
            c.validate(&mut errors);
        }
        errors.extend(self.audit.problems());
        errors.dedup();
        match (errors.is_empty(), policy) {
            (true, Some(p)) => Ok(p),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kafka: &str) -> Config {
        let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/national");
        let yaml = format!(
            "listen: 127.0.0.1:7443\n\
             policy_dir: {}\n\
             data_dir: /nonexistent/tabadol-data\n\
             tls: {{ ca: /nonexistent/ca.crt, cert: /nonexistent/hub.crt, key: /nonexistent/hub.key }}\n\
             {kafka}",
            policy.display()
        );
        serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    fn errors(cfg: &Config) -> Vec<String> {
        match cfg.validate() {
            Ok(_) => Vec::new(),
            Err(ConfigErrors(e)) => e,
        }
    }

    #[test]
    fn kafka_topics_default_to_three_partitions_and_three_replicas() {
        let cfg = config("kafka: { brokers: kafka-1:9092 }\n");
        let k = cfg.kafka.as_ref().unwrap();
        assert_eq!((k.topic_partitions, k.topic_replication), (3, 3));
        assert_eq!(k.message_timeout_ms, 30_000);
        let new = KafkaSection::new("kafka-1:9092");
        assert_eq!(
            (
                new.topic_partitions,
                new.topic_replication,
                new.message_timeout_ms
            ),
            (3, 3, 30_000)
        );
        assert!(errors(&cfg).iter().all(|e| !e.starts_with("kafka.")));
    }

    #[test]
    fn zero_replication_and_partitions_are_reported_with_the_other_errors() {
        let cfg = config(
            "kafka: { brokers: kafka-1:9092, topic_replication: 0, topic_partitions: -1 }\n",
        );
        let errs = errors(&cfg);
        let has = |p: &str| errs.iter().any(|e| e.starts_with(p));
        assert!(
            has("kafka.topic_replication: 0 is not a replication factor"),
            "{errs:#?}"
        );
        assert!(
            has("kafka.topic_partitions: -1 is not a partition count"),
            "{errs:#?}"
        );
        // Collected together with the rest, not one at a time.
        assert!(has("tls.ca: file"), "{errs:#?}");
    }

    /// The Tokenize quota defaults to a million codes a day, can be raised, and zero is
    /// reported; a provider configured twice is reported instead of silently replaced.
    #[test]
    fn tokenize_quota_and_duplicate_providers_are_checked() {
        let cfg = config("");
        assert_eq!(cfg.events.tokenize_codes_per_day, 1_000_000);
        let q = cfg.events.tokenize_quota().unwrap();
        assert_eq!((q.codes.get(), q.burst.get()), (1_000_000, 1_000_000));
        let cfg = config(
            "events: { tokenize_codes_per_day: 50000000 }
",
        );
        assert_eq!(cfg.events.tokenize_quota().unwrap().codes.get(), 50_000_000);
        let cfg = config(
            "events: { tokenize_codes_per_day: 0 }\nproviders:\n  - { provider: cra, adapter: shahkar, base_url: https://a }\n  - { provider: cra, adapter: shahkar, base_url: https://b }\n",
        );
        let errs = errors(&cfg);
        let has = |p: &str| errs.iter().any(|e| e.starts_with(p));
        assert!(
            has("events.tokenize_codes_per_day: give at least 1"),
            "{errs:#?}"
        );
        assert!(
            has("providers[1].provider: `cra` is already configured in providers[0]"),
            "{errs:#?}"
        );
    }

    /// The limits default to 100 streams per connection, 1000 per agency, a 10 s request
    /// body; zero is reported with the other errors.
    #[test]
    fn limits_default_and_zero_is_reported() {
        let cfg = config("");
        let edge = cfg.limits.edge();
        assert_eq!(edge, crate::edge::limits::EdgeLimits::default());
        assert_eq!(edge.streams_per_connection, 100);
        assert_eq!(edge.streams_per_agency, 1_000);
        assert_eq!(
            edge.request_body_timeout,
            std::time::Duration::from_secs(10)
        );
        let cfg = config("limits: { streams_per_agency: 0, request_body_timeout_ms: 0 }\n");
        let errs = errors(&cfg);
        let has = |p: &str| errs.iter().any(|e| e.starts_with(p));
        assert!(
            has("limits.streams_per_agency: give at least 1"),
            "{errs:#?}"
        );
        assert!(
            has("limits.request_body_timeout_ms: give at least 1"),
            "{errs:#?}"
        );
        assert!(has("tls.ca: file"), "{errs:#?}");
    }

    /// Plain http:// to a host that is not loopback, a zero body cap, TLS files that do not
    /// exist and TLS on a plain-http URL are all reported together, each naming its field.
    #[test]
    fn provider_transport_settings_are_checked() {
        let cfg = config(
            "providers:\n\
             \x20 - { provider: cra, adapter: shahkar, base_url: \"http://shahkar.cra.example\" }\n\
             \x20 - { provider: nocr, adapter: civil-registry, base_url: \"http://127.0.0.1:8081\", max_body_bytes: 0 }\n\
             \x20 - provider: inta\n\
             \x20   adapter: tax\n\
             \x20   base_url: \"https://api.tax.example\"\n\
             \x20   tls: { ca: /nonexistent/inta-ca.crt, cert: /nonexistent/hub-client.crt }\n\
             \x20 - { provider: x, adapter: tax, base_url: \"http://localhost:1\", tls: { ca: /nonexistent/x.crt } }\n",
        );
        let errs = errors(&cfg);
        let has = |p: &str| errs.iter().any(|e| e.starts_with(p));
        assert!(
            has("providers[0].base_url: `http://shahkar.cra.example` is refused: plain http:// is only allowed to a loopback host"),
            "{errs:#?}"
        );
        assert!(!has("providers[1].base_url"), "{errs:#?}");
        assert!(
            has("providers[1].max_body_bytes: 0 is not a usable cap"),
            "{errs:#?}"
        );
        assert!(
            has("providers[2].tls.ca: cannot read /nonexistent/inta-ca.crt"),
            "{errs:#?}"
        );
        assert!(
            has("providers[2].tls.key: tls.cert is set but tls.key is not"),
            "{errs:#?}"
        );
        assert!(
            has("providers[3].tls: TLS settings need an https:// base_url"),
            "{errs:#?}"
        );
        assert!(has("tls.ca: file"), "{errs:#?}");
        let ok = config("");
        let p = ProviderSection::new("cra", "shahkar", "https://a");
        assert_eq!(p.max_body_bytes, 1_048_576);
        assert!(ok.providers.is_empty());
    }

    /// A provider entry whose adapter differs from its services' (`adapter: http` in
    /// services.yaml) and a zero breaker setting are reported naming the field; the breaker
    /// defaults to 5 failures and 2 s.
    #[test]
    fn provider_adapter_must_match_the_catalog_and_breaker_is_checked() {
        let cfg = config(
            "providers:\n\
             \x20 - { provider: post, adapter: tax, base_url: \"https://api.post.example\" }\n\
             \x20 - { provider: sso, adapter: http, base_url: \"https://api.sso.example\", breaker: { failures: 0 } }\n",
        );
        let errs = errors(&cfg);
        let has = |p: &str| errs.iter().any(|e| e.starts_with(p));
        assert!(
            has(
                "providers[0].adapter: `tax`, but service post.address is served by adapter `http`"
            ),
            "{errs:#?}"
        );
        assert!(
            has("providers[1].breaker: failures and open_ms must both be at least 1"),
            "{errs:#?}"
        );
        let b = BreakerSection::default().circuit();
        assert_eq!(
            (b.failure_threshold, b.open_for),
            (5, std::time::Duration::from_secs(2))
        );
    }

    #[test]
    fn kafka_section_rejects_unknown_keys_and_fixed_properties() {
        let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/national");
        let yaml = format!(
            "listen: 127.0.0.1:7443\npolicy_dir: {}\ndata_dir: /x\n\
             tls: {{ ca: /a, cert: /b, key: /c }}\n\
             kafka: {{ brokers: k:9092, replication: 2 }}\n",
            policy.display()
        );
        let err = serde_yaml::from_str::<Config>(&yaml)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `replication`"), "{err}");
        let cfg = config(
            "kafka:\n  brokers: k:9092\n  properties: { enable.gapless.guarantee: \"false\" }\n",
        );
        assert!(
            errors(&cfg)
                .iter()
                .any(|e| e.starts_with("kafka.properties.enable.gapless.guarantee: set by the hub")),
            "{:#?}",
            errors(&cfg)
        );
    }
}
