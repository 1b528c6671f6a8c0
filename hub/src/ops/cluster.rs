//! The `cluster:` section of `tabadol serve`'s configuration (several hubs behind a TCP
//! load balancer sharing Apache Kafka) and the master secret its token keys derive from.
//!
//! What works now: every hub with the same master secret gives the same tokens (keys
//! derived with HKDF-SHA256, never stored), with key versions for an announced rotation.
//! The Kafka settings and topics are validated but the shared event log, the fan-out
//! leader, the shared audit and national limits are not built yet (see README).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Several hubs as one: shared token keys now, shared Kafka state later.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This hub's name in the cluster (`[a-z0-9-]`, at most 63 characters), e.g. `hub-1`;
    /// default: the host name (`HOSTNAME`, else /etc/hostname), which is the pod name in
    /// Kubernetes.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// File with the master secret the token keys derive from: at least 64 hex characters
    /// (32 bytes; `openssl rand -hex 32`), readable by the hub's user only (mode 0600 or
    /// 0400). The same file on every hub gives the same tokens.
    pub master_secret_file: PathBuf,
    /// Version of the token keys used for events and for Tokenize calls that ask for no
    /// version; at least 1, default 1. Raising it changes every subscriber's tokens.
    #[serde(default = "default_key_version")]
    pub key_version: u32,
    /// Earlier key versions still answered by Tokenize when a call asks for one
    /// (`key_version` in TokenizeRequest) during an announced overlap; remove them when
    /// the overlap ends. Version 0 is a single node's random keys in its store, for the
    /// overlap of its move to a master secret (only that node has them).
    #[serde(default)]
    pub previous_keys: Vec<PreviousKey>,
    /// The cluster's Apache Kafka (the shared state). Optional until the shared event log
    /// is built: without it the section gives shared token keys only.
    #[serde(default)]
    pub kafka: Option<ClusterKafka>,
    /// Topics of the shared state.
    #[serde(default)]
    pub topics: ClusterTopics,
}

/// An earlier key version kept for the overlap of a rotation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousKey {
    /// The version (below `key_version`).
    pub version: u32,
    /// Its master secret, when the rotation also replaced the secret; default the
    /// section's `master_secret_file`.
    #[serde(default)]
    pub master_secret_file: Option<PathBuf>,
}

/// How the hubs reach the cluster's Kafka.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterKafka {
    /// Bootstrap servers, `HOST:PORT[,HOST:PORT...]`.
    pub bootstrap_servers: String,
    /// Further librdkafka client properties (TLS/SASL to the brokers); the delivery
    /// guarantees cannot be overridden (see `kafka.properties`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Topics of the shared state and how they are created.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTopics {
    /// Topic every hub appends published events to; default `tabadol.ingest`.
    #[serde(default = "default_ingest")]
    pub ingest: String,
    /// Topic of every hub's audit records; default `tabadol.audit`.
    #[serde(default = "default_audit")]
    pub audit: String,
    /// Partitions of the audit topic (the ingest topic has one: its offset is the dense
    /// global sequence); default 6.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor; default 3.
    #[serde(default = "default_replication")]
    pub replication: i32,
    /// `min.insync.replicas` of the topics; default 2, at most `replication`.
    #[serde(default = "default_min_insync")]
    pub min_insync_replicas: i32,
}

fn default_key_version() -> u32 {
    1
}
fn default_ingest() -> String {
    "tabadol.ingest".into()
}
fn default_audit() -> String {
    "tabadol.audit".into()
}
fn default_partitions() -> i32 {
    6
}
fn default_replication() -> i32 {
    3
}
fn default_min_insync() -> i32 {
    2
}

impl Default for ClusterTopics {
    fn default() -> Self {
        Self {
            ingest: default_ingest(),
            audit: default_audit(),
            partitions: default_partitions(),
            replication: default_replication(),
            min_insync_replicas: default_min_insync(),
        }
    }
}

/// The master secret's file name `tabadol dev` keeps under `--dir`.
pub const DEV_MASTER_SECRET: &str = "master-secret";

/// Bytes of master secret at least.
pub const MIN_SECRET_BYTES: usize = 32;

/// Largest master secret file read (a line of hex; anything longer is not a secret file).
pub const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// A master secret; its Debug and Display never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterSecret(Vec<u8>);

impl MasterSecret {
    /// The secret's bytes (only for key derivation).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterSecret(redacted)")
    }
}

impl Drop for MasterSecret {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

/// Reads a master secret file, refusing one that others than its owner may read or
/// write, or that holds less than [`MIN_SECRET_BYTES`] bytes of hex. `field` names the
/// configuration field in errors; the secret itself is never in an error.
pub fn read_master_secret(field: &str, path: &Path) -> Result<MasterSecret, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("{field}: cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{field}: {} is not a file", path.display()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{field}: {} has mode {mode:04o}, so users other than the hub's may read or change \
             the master secret; run `chmod 600 {}` (owner read/write only, or 0400) and keep it \
             owned by the hub's user",
            path.display(),
            path.display()
        ));
    }
    if meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "{field}: {} is {} bytes long; a master secret file holds one line of hex \
             (`openssl rand -hex 32`), at most {MAX_SECRET_FILE_BYTES} bytes",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{field}: cannot read {}: {e}", path.display()))?;
    let hexed = text.trim();
    let bytes = hex::decode(hexed).map_err(|_| {
        format!(
            "{field}: {} does not hold hex characters only; write a new secret with \
             `openssl rand -hex 32 > {}`",
            path.display(),
            path.display()
        )
    })?;
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{field}: {} holds {} bytes of secret; give at least {MIN_SECRET_BYTES} \
             (`openssl rand -hex 32 > {}`)",
            path.display(),
            bytes.len(),
            path.display()
        ));
    }
    Ok(MasterSecret(bytes))
}

/// Writes a new random master secret to `path` with mode 0600 unless one is there
/// (`tabadol dev`); returns whether it wrote one.
pub fn ensure_master_secret(path: &Path) -> std::io::Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(false);
    }
    let secret: [u8; 32] = rand::random();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{}", hex::encode(secret))?;
    f.sync_all()?;
    Ok(true)
}

/// The key versions a hub derives tokens with.
#[derive(Debug, Clone)]
pub struct TokenKeyring {
    /// The version of events and of Tokenize calls that ask for none.
    pub current: u32,
    /// Every version answered, with its secret (the current one included).
    pub secrets: BTreeMap<u32, MasterSecret>,
}

impl ClusterSection {
    /// This hub's instance id (the configured one, else the host name).
    pub fn instance_id(&self) -> Option<String> {
        self.instance_id.clone().or_else(host_name)
    }

    /// Whether the store's random keys (version 0) are answered during an overlap.
    pub fn keeps_store_keys(&self) -> bool {
        self.previous_keys.iter().any(|p| p.version == 0)
    }

    /// Reads every master secret of the section (current and previous versions; version
    /// 0 has none).
    pub fn keyring(&self) -> Result<TokenKeyring, Vec<String>> {
        let mut errors = Vec::new();
        let mut secrets = BTreeMap::new();
        match read_master_secret("cluster.master_secret_file", &self.master_secret_file) {
            Ok(s) => {
                secrets.insert(self.key_version, s);
            }
            Err(e) => errors.push(e),
        }
        for (i, p) in self.previous_keys.iter().enumerate() {
            let field = format!("cluster.previous_keys[{i}].master_secret_file");
            let file = p
                .master_secret_file
                .as_deref()
                .unwrap_or(&self.master_secret_file);
            if p.version == 0 {
                // The store's random keys, read by the hub from its own store.
                continue;
            }
            if p.master_secret_file.is_none() {
                if let Some(s) = secrets.get(&self.key_version) {
                    secrets.insert(p.version, s.clone());
                }
                continue;
            }
            match read_master_secret(&field, file) {
                Ok(s) => {
                    secrets.insert(p.version, s);
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(TokenKeyring {
                current: self.key_version,
                secrets,
            })
        } else {
            Err(errors)
        }
    }

    /// Relative paths resolved against `base` (the configuration file's directory).
    pub fn resolve_relative(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.master_secret_file);
        for p in &mut self.previous_keys {
            if let Some(f) = &mut p.master_secret_file {
                fix(f);
            }
        }
    }

    /// Every problem of the section, each naming its field.
    pub fn validate(&self, errors: &mut Vec<String>) {
        match self.instance_id() {
            None => errors.push(
                "cluster.instance_id: not given and the host name is unknown; write \
                 instance_id: hub-1 (unique per hub)"
                    .into(),
            ),
            Some(id) if !valid_instance_id(&id) => errors.push(format!(
                "cluster.instance_id: `{id}` is not an instance id; use 1 to 63 characters \
                 a-z, 0-9 and `-`, e.g. hub-1"
            )),
            Some(_) => {}
        }
        if self.key_version == 0 {
            errors.push(
                "cluster.key_version: 0 is the single-node store's random keys; give at least 1"
                    .into(),
            );
        }
        for (i, p) in self.previous_keys.iter().enumerate() {
            if p.version >= self.key_version {
                errors.push(format!(
                    "cluster.previous_keys[{i}].version: {} must be below key_version {}",
                    p.version, self.key_version
                ));
            }
            if p.version == 0 && p.master_secret_file.is_some() {
                errors.push(format!(
                    "cluster.previous_keys[{i}].master_secret_file: version 0 is the store's \
                     random keys (a single node moving to a master secret) and has no secret \
                     file; remove master_secret_file"
                ));
            }
            if let Some(j) = self.previous_keys[..i]
                .iter()
                .position(|q| q.version == p.version)
            {
                errors.push(format!(
                    "cluster.previous_keys[{i}].version: {} is already listed in \
                     previous_keys[{j}]",
                    p.version
                ));
            }
        }
        if let Err(e) = self.keyring() {
            errors.extend(e);
        }
        if let Some(k) = &self.kafka {
            let servers: Vec<&str> = k.bootstrap_servers.split(',').map(str::trim).collect();
            if servers.iter().all(|s| s.is_empty()) {
                errors.push("cluster.kafka.bootstrap_servers: give at least one HOST:PORT".into());
            } else {
                for s in servers {
                    let ok = s.rsplit_once(':').is_some_and(|(h, p)| {
                        !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                    });
                    if !ok {
                        errors.push(format!(
                            "cluster.kafka.bootstrap_servers: `{s}` is not HOST:PORT, e.g. kafka-1:9092"
                        ));
                    }
                }
            }
            for key in k.properties.keys() {
                if crate::ops::config::KAFKA_FIXED_PROPERTIES.contains(&key.as_str()) {
                    errors.push(format!(
                        "cluster.kafka.properties.{key}: set by the hub itself (bootstrap servers \
                         come from cluster.kafka.bootstrap_servers; idempotence, the gapless \
                         guarantee and acks=all are not negotiable)"
                    ));
                }
            }
        }
        let t = &self.topics;
        for (name, topic) in [("ingest", &t.ingest), ("audit", &t.audit)] {
            if !valid_topic(topic) {
                errors.push(format!(
                    "cluster.topics.{name}: `{topic}` is not a Kafka topic name; use 1 to 249 \
                     characters a-z, A-Z, 0-9, `.`, `_` and `-`"
                ));
            }
        }
        if t.ingest == t.audit {
            errors.push(format!(
                "cluster.topics.audit: `{}` is also the ingest topic; give them different names",
                t.audit
            ));
        }
        if t.partitions < 1 {
            errors.push(format!(
                "cluster.topics.partitions: {} is not a partition count; give at least 1 (default 6)",
                t.partitions
            ));
        }
        if t.replication < 1 {
            errors.push(format!(
                "cluster.topics.replication: {} is not a replication factor; give at least 1 \
                 (default 3)",
                t.replication
            ));
        }
        if t.min_insync_replicas < 1 || t.min_insync_replicas > t.replication.max(1) {
            errors.push(format!(
                "cluster.topics.min_insync_replicas: {} must be between 1 and replication ({}); \
                 default 2",
                t.min_insync_replicas, t.replication
            ));
        }
    }
}

/// The hub's token keys: derived from the section's master secrets (read again here,
/// never kept in the configuration; the store's random keys too while version 0 is in the
/// overlap), or the store's random keys without a cluster section.
pub fn open_tokens(
    cluster: Option<&ClusterSection>,
    db: &sled::Db,
) -> anyhow::Result<crate::events::tokens::Tokens> {
    use crate::events::tokens::Tokens;
    let Some(c) = cluster else {
        return Ok(Tokens::open(db)?);
    };
    let ring = c
        .keyring()
        .map_err(|e| anyhow::anyhow!("{}", e.join("\n")))?;
    tracing::info!(
        message = "cluster mode: token keys derived from the master secret",
        instance_id = c.instance_id().unwrap_or_default(),
        key_version = c.key_version,
        overlap = ?c.previous_keys.iter().map(|p| p.version).collect::<Vec<_>>(),
        master_secret_file = %c.master_secret_file.display(),
    );
    Ok(if c.keeps_store_keys() {
        Tokens::derived_with_store(ring, db)?
    } else {
        Tokens::derived(ring)
    })
}

/// `tabadol serve --check --config FILE`: every error of the configuration on stderr, one
/// a line naming its field, or a summary on stdout; nothing bound, no store opened.
pub fn check_command(config: &Path) -> std::process::ExitCode {
    match crate::ops::config::Config::load(config) {
        Ok((cfg, policy)) => {
            let mode = match &cfg.cluster {
                Some(c) => format!(
                    "cluster mode, instance {}, token key version {}{}",
                    c.instance_id().unwrap_or_default(),
                    c.key_version,
                    if c.previous_keys.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (overlap: also {:?})",
                            c.previous_keys
                                .iter()
                                .map(|p| p.version)
                                .collect::<Vec<_>>()
                        )
                    }
                ),
                None => "single node (token keys in the store)".into(),
            };
            println!(
                "{}: OK — listen {}, {} agencies, {} services, {mode}",
                config.display(),
                cfg.listen,
                policy.agencies().count(),
                policy.services().count()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "{}: {} error(s); nothing was started:",
                config.display(),
                e.0.len()
            );
            for line in &e.0 {
                eprintln!("  {line}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn valid_instance_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

fn valid_topic(t: &str) -> bool {
    (1..=249).contains(&t.len())
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secret_file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn secret_readable_by_others_is_refused_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let open = secret_file(dir.path(), "open", 0o644);
        let err = read_master_secret("cluster.master_secret_file", &open).unwrap_err();
        assert!(err.contains("mode 0644"), "{err}");
        assert!(
            err.contains(&format!("chmod 600 {}", open.display())),
            "{err}"
        );
        assert!(!err.contains(&"ab".repeat(32)), "never the secret: {err}");
        let group = secret_file(dir.path(), "group", 0o640);
        assert!(read_master_secret("f", &group).is_err());
        for mode in [0o600, 0o400] {
            let ok = secret_file(dir.path(), &format!("ok{mode:o}"), mode);
            let s = read_master_secret("f", &ok).unwrap();
            assert_eq!(s.expose().len(), 32);
            assert_eq!(format!("{s:?}"), "MasterSecret(redacted)");
        }
    }

    #[test]
    fn short_or_non_hex_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("short");
        std::fs::write(&p, "abcd").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = read_master_secret("f", &p).unwrap_err();
        assert!(err.contains("holds 2 bytes"), "{err}");
        std::fs::write(&p, "not hex at all").unwrap();
        let err = read_master_secret("f", &p).unwrap_err();
        assert!(err.contains("hex characters only"), "{err}");
        std::fs::write(&p, "ab".repeat(4096)).unwrap();
        let err = read_master_secret("f", &p).unwrap_err();
        assert!(err.contains("8192 bytes long"), "{err}");
        let err = read_master_secret("f", Path::new("/dev/null")).unwrap_err();
        assert!(err.contains("is not a file"), "{err}");
    }

    #[test]
    fn dev_secret_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(DEV_MASTER_SECRET);
        assert!(ensure_master_secret(&p).unwrap());
        let first = std::fs::read_to_string(&p).unwrap();
        assert!(!ensure_master_secret(&p).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), first);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        read_master_secret("f", &p).unwrap();
    }
}
