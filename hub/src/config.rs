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
    /// Certificate revocation lists (PEM) checked for every client certificate.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
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
}

fn default_provider_timeout_ms() -> u64 {
    3_000
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
    /// Further librdkafka client properties, e.g. the TLS settings of the cluster
    /// (`security.protocol: ssl`, `ssl.ca.location`, `ssl.certificate.location`,
    /// `ssl.key.location`). The delivery guarantees (`enable.idempotence`, `acks`) cannot
    /// be overridden.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

/// librdkafka properties the hub sets itself and a configuration may not change.
pub const KAFKA_FIXED_PROPERTIES: [&str; 5] = [
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "message.timeout.ms",
    "client.id",
];

fn default_message_timeout_ms() -> u64 {
    30_000
}

/// Audit settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Wait for the audit batch to reach disk before answering (default false: group
    /// commit every 200 ms).
    #[serde(default)]
    pub durable: bool,
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
        fix(&mut self.data_dir);
        fix(&mut self.tls.ca);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        self.tls.crls.iter_mut().for_each(fix);
    }

    /// Checks everything that can be checked before binding a port; collects all errors.
    pub fn validate(&self) -> Result<Policy, ConfigErrors> {
        let mut errors = Vec::new();
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
        let policy = match Policy::load_dir(&self.policy_dir) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.extend(e.to_string().lines().map(str::to_owned));
                None
            }
        };
        for (i, p) in self.providers.iter().enumerate() {
            if p.adapter.parse::<tabadol_adapters::AdapterKind>().is_err() {
                errors.push(format!(
                    "providers[{i}].adapter: `{}` is not an adapter; use shahkar, civil-registry or tax",
                    p.adapter
                ));
            }
            if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
                errors.push(format!(
                    "providers[{i}].base_url: `{}` must start with https:// (or http:// on loopback)",
                    p.base_url
                ));
            }
            if p.timeout_ms == 0 {
                errors.push(format!("providers[{i}].timeout_ms must be above 0"));
            }
        }
        if let Some(policy) = &policy {
            for s in policy.services() {
                if !self.providers.iter().any(|p| p.provider == s.provider) {
                    errors.push(format!(
                        "providers: no entry for provider `{}` needed by service {}; add one with its base_url",
                        s.provider, s.id
                    ));
                }
            }
        }
        if let Some(k) = &self.kafka {
            if k.brokers.trim().is_empty() {
                errors.push("kafka.brokers: give at least one HOST:PORT".into());
            }
            for key in k.properties.keys() {
                if KAFKA_FIXED_PROPERTIES.contains(&key.as_str()) {
                    errors.push(format!(
                        "kafka.properties.{key}: set by the hub itself (use kafka.brokers / kafka.message_timeout_ms; idempotence and acks=all are not negotiable)"
                    ));
                }
            }
        }
        errors.dedup();
        match (errors.is_empty(), policy) {
            (true, Some(p)) => Ok(p),
            _ => Err(ConfigErrors(errors)),
        }
    }
}
