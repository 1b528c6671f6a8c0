//! Kafka ACLs implied by the policy (R5): each subscriber reads only its own topics and consumer groups, only the hub writes.
//!
//! The relay produces every event type to `tabadol.<event-type>.<agency>` for each
//! subscriber (see [`crate::events::model::topic`]). [`kafka_acls`] turns the policy's
//! subscriptions into the ACL entries a Kafka cluster needs for exactly that, and
//! [`render_commands`] prints them as `kafka-acls.sh --add` command lines (with a `#`
//! comment header) that can be piped to `sh`. Brokers must run an authorizer with
//! `allow.everyone.if.no.acl.found=false` (the default): then everything not listed here
//! is denied.
//!
//! Principals: Kafka's default SSL principal builder names a client `User:` followed by
//! its certificate subject DN in RFC 2253 form. The dev PKI (`crate::ops::pki`) issues agency
//! and hub certificates whose subject is only `CN=<common name>`, so an agency is
//! `User:CN=<certificate.common_name>` by default. With a national PKI whose subjects carry
//! more attributes, set `ssl.principal.mapping.rules` on the brokers (e.g.
//! `RULE:^CN=([^,]+).*$/$1/`) and pass a matching [`AclOptions::principal_format`]
//! (e.g. `User:{cn}`).

use std::collections::HashSet;
use std::fmt;

use serde::Serialize;
use tabadol_policy::Policy;

use crate::events::model::topic;

/// Prefix of every topic the hub produces to; the hub may write below it.
pub const TOPIC_PREFIX: &str = "tabadol.";

/// Default principal of the hub (the dev PKI's hub certificate subject).
pub const DEFAULT_HUB_PRINCIPAL: &str = "User:CN=hub.tabadol.ir";

/// Default principal template of an agency: Kafka's default SSL principal for a certificate
/// whose subject is only `CN=<common name>`.
pub const DEFAULT_PRINCIPAL_FORMAT: &str = "User:CN={cn}";

/// The consumer-group prefix of a subscriber: its groups must be named `tabadol.<agency>.…`.
pub fn group_prefix(agency: &str) -> String {
    format!("{TOPIC_PREFIX}{agency}.")
}

/// A Kafka ACL operation (names as `kafka-acls.sh --operation` takes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Operation {
    Read,
    Write,
    Create,
    Describe,
    IdempotentWrite,
}

impl Operation {
    /// The name `kafka-acls.sh --operation` accepts.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "Read",
            Operation::Write => "Write",
            Operation::Create => "Create",
            Operation::Describe => "Describe",
            Operation::IdempotentWrite => "IdempotentWrite",
        }
    }
}

/// The kind of resource an ACL is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceType {
    Topic,
    Group,
    /// The cluster itself (`--cluster`; its resource name is always `kafka-cluster`).
    Cluster,
}

/// How the resource name matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PatternType {
    Literal,
    Prefixed,
}

impl PatternType {
    /// The value of `kafka-acls.sh --resource-pattern-type`.
    pub fn as_str(self) -> &'static str {
        match self {
            PatternType::Literal => "literal",
            PatternType::Prefixed => "prefixed",
        }
    }
}

/// One ALLOW ACL from any host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct AclEntry {
    /// Kafka principal, e.g. `User:CN=cbi.agency.tabadol.ir`.
    pub principal: String,
    pub operation: Operation,
    pub resource_type: ResourceType,
    /// Topic or group name (or prefix); `kafka-cluster` for the cluster.
    pub resource_name: String,
    pub pattern_type: PatternType,
}

/// Name of the cluster resource in Kafka.
pub const CLUSTER_RESOURCE: &str = "kafka-cluster";

/// How principals are written.
#[derive(Debug, Clone)]
pub struct AclOptions {
    /// The hub's Kafka principal, taken as is.
    pub hub_principal: String,
    /// Template of an agency's principal: `{cn}` is replaced by its certificate common name
    /// (RFC 2253-escaped, as it appears in a DN), `{agency}` by its id.
    pub principal_format: String,
}

impl Default for AclOptions {
    fn default() -> Self {
        AclOptions {
            hub_principal: DEFAULT_HUB_PRINCIPAL.to_owned(),
            principal_format: DEFAULT_PRINCIPAL_FORMAT.to_owned(),
        }
    }
}

/// Why no ACLs could be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("principal `{0}` must look like TYPE:NAME, e.g. User:CN=hub.tabadol.ir")]
    BadPrincipal(String),
    #[error("--principal-format `{0}` must look like TYPE:… and contain {{cn}} or {{agency}}, e.g. User:CN={{cn}}")]
    BadPrincipalFormat(String),
    #[error("agency {agency} would have the hub's principal `{principal}` (and with it write access); check --hub-principal and the agency's certificate common name")]
    AgencyIsHub { agency: String, principal: String },
    #[error("agencies {first} and {second} would share the principal `{principal}`; use a --principal-format that tells them apart")]
    SharedPrincipal {
        first: String,
        second: String,
        principal: String,
    },
    #[error("`{topic}` (event type {event_type} for {agency}) is not a legal Kafka topic name (ASCII letters, digits, `.`, `_`, `-`; at most 249)")]
    BadTopic {
        topic: String,
        event_type: String,
        agency: String,
    },
}

fn is_principal(p: &str) -> bool {
    matches!(p.split_once(':'), Some((t, n)) if !t.is_empty() && !n.is_empty() && !t.contains(char::is_whitespace))
}

fn is_legal_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Escapes an attribute value as it appears in an RFC 2253 DN (Java's
/// `X500Principal.getName()`, which Kafka's SSL principal builder uses).
pub fn rfc2253_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The Kafka principal of an agency under `format`.
pub fn agency_principal(format: &str, agency: &str, common_name: &str) -> String {
    format
        .replace("{cn}", &rfc2253_escape(common_name))
        .replace("{agency}", agency)
}

/// The ACLs the policy implies, deterministic and without duplicates: first the hub's
/// (Write, Describe, Create on topics prefixed `tabadol.`; IdempotentWrite on the
/// cluster), then per subscriber in `subscriptions.yaml` order: Read and Describe on each
/// of its topics (literal, in the order it lists its event types) and Read on its
/// consumer groups prefixed `tabadol.<agency>.`. Agencies without a subscription get
/// nothing; no agency gets Write.
pub fn kafka_acls(policy: &Policy, opts: &AclOptions) -> Result<Vec<AclEntry>, AclError> {
    if !is_principal(&opts.hub_principal) {
        return Err(AclError::BadPrincipal(opts.hub_principal.clone()));
    }
    let f = &opts.principal_format;
    if !is_principal(f) || !(f.contains("{cn}") || f.contains("{agency}")) {
        return Err(AclError::BadPrincipalFormat(f.clone()));
    }

    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |e: AclEntry| {
        if seen.insert(e.clone()) {
            out.push(e);
        }
    };
    let hub = |operation, resource_type, resource_name: &str, pattern_type| AclEntry {
        principal: opts.hub_principal.clone(),
        operation,
        resource_type,
        resource_name: resource_name.to_owned(),
        pattern_type,
    };
    for op in [Operation::Write, Operation::Describe, Operation::Create] {
        push(hub(
            op,
            ResourceType::Topic,
            TOPIC_PREFIX,
            PatternType::Prefixed,
        ));
    }
    push(hub(
        Operation::IdempotentWrite,
        ResourceType::Cluster,
        CLUSTER_RESOURCE,
        PatternType::Literal,
    ));

    let mut owners: Vec<(String, String)> = Vec::new(); // (principal, agency)
    for sub in policy.subscriptions() {
        // Validated policy: every subscriber is a known agency.
        let Some(agency) = policy.agency(&sub.agency) else {
            continue;
        };
        let principal = agency_principal(f, &agency.id, &agency.certificate.common_name);
        if principal == opts.hub_principal {
            return Err(AclError::AgencyIsHub {
                agency: agency.id.clone(),
                principal,
            });
        }
        if let Some((_, other)) = owners
            .iter()
            .find(|(p, a)| *p == principal && *a != agency.id)
        {
            return Err(AclError::SharedPrincipal {
                first: other.clone(),
                second: agency.id.clone(),
                principal,
            });
        }
        owners.push((principal.clone(), agency.id.clone()));
        let entry = |operation, resource_type, resource_name: String, pattern_type| AclEntry {
            principal: principal.clone(),
            operation,
            resource_type,
            resource_name,
            pattern_type,
        };
        for event_type in &sub.event_types {
            let t = topic(event_type, &agency.id);
            if !is_legal_topic(&t) {
                return Err(AclError::BadTopic {
                    topic: t,
                    event_type: event_type.clone(),
                    agency: agency.id.clone(),
                });
            }
            for op in [Operation::Read, Operation::Describe] {
                push(entry(
                    op,
                    ResourceType::Topic,
                    t.clone(),
                    PatternType::Literal,
                ));
            }
        }
        // The subscriber's daily manifests (count and digest of each Tehran day).
        let manifest_topic = crate::events::manifests::topic(&agency.id);
        for op in [Operation::Read, Operation::Describe] {
            push(entry(
                op,
                ResourceType::Topic,
                manifest_topic.clone(),
                PatternType::Literal,
            ));
        }
        push(entry(
            Operation::Read,
            ResourceType::Group,
            group_prefix(&agency.id),
            PatternType::Prefixed,
        ));
    }
    // Readers of published datasets (R3): their own compacted topic of each dataset.
    for publisher in policy.agencies() {
        for d in &publisher.datasets {
            for reader in &d.readers {
                let Some(agency) = policy.agency(reader) else {
                    continue;
                };
                let principal = agency_principal(f, &agency.id, &agency.certificate.common_name);
                if principal == opts.hub_principal {
                    return Err(AclError::AgencyIsHub {
                        agency: agency.id.clone(),
                        principal,
                    });
                }
                let t = crate::events::dataset_relay::topic(&d.id, &agency.id);
                for op in [Operation::Read, Operation::Describe] {
                    push(AclEntry {
                        principal: principal.clone(),
                        operation: op,
                        resource_type: ResourceType::Topic,
                        resource_name: t.clone(),
                        pattern_type: PatternType::Literal,
                    });
                }
                push(AclEntry {
                    principal: principal.clone(),
                    operation: Operation::Read,
                    resource_type: ResourceType::Group,
                    resource_name: group_prefix(&agency.id),
                    pattern_type: PatternType::Prefixed,
                });
            }
        }
    }
    Ok(out)
}

/// Where the rendered commands connect.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// `--bootstrap-server` of every command.
    pub bootstrap_server: String,
    /// `--command-config` (admin client properties, e.g. the TLS settings of a super user).
    pub command_config: Option<String>,
    /// Said in the header: where the policy came from.
    pub policy_dir: String,
}

/// Quotes `s` for a POSIX shell when it holds anything but plainly safe characters.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'.' | b'_' | b'-' | b':' | b'=' | b',' | b'/' | b'@' | b'+'
                )
        });
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

impl fmt::Display for AclEntry {
    /// The `kafka-acls.sh` arguments after `--add`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "--allow-principal {} --operation {} ",
            shell_quote(&self.principal),
            self.operation.as_str()
        )?;
        match self.resource_type {
            ResourceType::Topic => write!(f, "--topic {} ", shell_quote(&self.resource_name))?,
            ResourceType::Group => write!(f, "--group {} ", shell_quote(&self.resource_name))?,
            ResourceType::Cluster => f.write_str("--cluster ")?,
        }
        write!(f, "--resource-pattern-type {}", self.pattern_type.as_str())
    }
}

/// Renders `entries` as a shell script: a `#` header saying what it is and what it
/// assumes, then one `kafka-acls.sh --add` command per entry.
pub fn render_commands(entries: &[AclEntry], opts: &RenderOptions) -> String {
    let subscribers = entries
        .iter()
        .filter(|e| e.resource_type == ResourceType::Group)
        .count();
    let mut out = String::new();
    let header = [
        format!(
            "# Kafka ACLs implied by the Tabadol policy in {}.",
            opts.policy_dir
        ),
        format!(
            "# Generated by `tabadol policy kafka-acls` (tabadol {}); regenerate after every policy change instead of editing.",
            env!("CARGO_PKG_VERSION")
        ),
        format!(
            "# {} ACLs: only the hub writes (topics prefixed `{TOPIC_PREFIX}`); each of {subscribers} subscribers may read only its own topics `{TOPIC_PREFIX}<event-type>.<agency>` and consumer groups `{TOPIC_PREFIX}<agency>.*`.",
            entries.len()
        ),
        "# Deny by default: this holds only when the brokers run an authorizer (authorizer.class.name, e.g. org.apache.kafka.metadata.authorizer.StandardAuthorizer) with allow.everyone.if.no.acl.found=false (the default); then every principal and operation not listed here is denied.".to_owned(),
        "# Principals: Kafka's default SSL principal is User:<certificate subject DN>; the dev PKI issues certificates whose subject is only CN, hence User:CN=<common_name>. Other PKIs: set ssl.principal.mapping.rules and --principal-format.".to_owned(),
        "# Run with `sh` as a Kafka super user (see --command-config); adding an ACL that exists already is a no-op.".to_owned(),
    ];
    for line in header {
        out.push_str(&line);
        out.push('\n');
    }
    let mut prefix = format!(
        "kafka-acls.sh --bootstrap-server {}",
        shell_quote(&opts.bootstrap_server)
    );
    if let Some(c) = &opts.command_config {
        prefix.push_str(" --command-config ");
        prefix.push_str(&shell_quote(c));
    }
    for e in entries {
        out.push_str(&prefix);
        out.push_str(" --add ");
        out.push_str(&e.to_string());
        out.push('\n');
    }
    out
}

/// Renders `entries` as a JSON array (one object per ACL).
pub fn render_json(entries: &[AclEntry]) -> String {
    let mut s = serde_json::to_string_pretty(entries).unwrap_or_else(|_| "[]".to_owned());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tabadol_policy::load::Sources;

    use super::*;

    const AGENCIES: &str = "
agencies:
  - { id: nocr, name_fa: ثبت احوال, name_en: NOCR, certificate: { common_name: nocr.agency.tabadol.ir }, publishes: [death.v1, identity-change.v1] }
  - { id: cra, name_fa: رگولاتوری, name_en: CRA, certificate: { common_name: cra.agency.tabadol.ir } }
  - { id: ihio, name_fa: بیمه سلامت, name_en: IHIO, certificate: { common_name: ihio.agency.tabadol.ir } }
  - { id: cbi, name_fa: بانک مرکزی, name_en: CBI, certificate: { common_name: cbi.agency.tabadol.ir } }
";

    const SUBSCRIPTIONS: &str = "
subscriptions:
  - id: ihio-events
    agency: ihio
    event_types: [death.v1]
    approved: { body: interoperability-working-group, session: 26, date: 1400/08/18, item: '3' }
  - id: cbi-events
    agency: cbi
    event_types: [identity-change.v1, death.v1, death.v1]
    approved: { body: interoperability-working-group, session: 26, date: 1400/08/18, item: '3' }
";

    fn policy(agencies: &str, subscriptions: Option<&str>) -> Policy {
        Policy::from_sources(
            Path::new("policy"),
            Sources {
                agencies: Some(agencies),
                services: Some("services: []\n"),
                grants: Some("grants: []\n"),
                subscriptions,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn lines(entries: &[AclEntry]) -> Vec<String> {
        entries.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn hub_writes_subscribers_read_their_own() {
        let p = policy(AGENCIES, Some(SUBSCRIPTIONS));
        let got = lines(&kafka_acls(&p, &AclOptions::default()).unwrap());
        let want = [
            "--allow-principal User:CN=hub.tabadol.ir --operation Write --topic tabadol. --resource-pattern-type prefixed",
            "--allow-principal User:CN=hub.tabadol.ir --operation Describe --topic tabadol. --resource-pattern-type prefixed",
            "--allow-principal User:CN=hub.tabadol.ir --operation Create --topic tabadol. --resource-pattern-type prefixed",
            "--allow-principal User:CN=hub.tabadol.ir --operation IdempotentWrite --cluster --resource-pattern-type literal",
            "--allow-principal User:CN=ihio.agency.tabadol.ir --operation Read --topic tabadol.death.v1.ihio --resource-pattern-type literal",
            "--allow-principal User:CN=ihio.agency.tabadol.ir --operation Describe --topic tabadol.death.v1.ihio --resource-pattern-type literal",
            "--allow-principal User:CN=ihio.agency.tabadol.ir --operation Read --topic tabadol.manifest.ihio --resource-pattern-type literal",
            "--allow-principal User:CN=ihio.agency.tabadol.ir --operation Describe --topic tabadol.manifest.ihio --resource-pattern-type literal",
            "--allow-principal User:CN=ihio.agency.tabadol.ir --operation Read --group tabadol.ihio. --resource-pattern-type prefixed",
            "--allow-principal User:CN=cbi.agency.tabadol.ir --operation Read --topic tabadol.identity-change.v1.cbi --resource-pattern-type literal",
            "--allow-principal User:CN=cbi.agency.tabadol.ir --operation Describe --topic tabadol.identity-change.v1.cbi --resource-pattern-type literal",
            "--allow-principal User:CN=cbi.agency.tabadol.ir --operation Read --topic tabadol.death.v1.cbi --resource-pattern-type literal",
            "--allow-principal User:CN=cbi.agency.tabadol.ir --operation Describe --topic tabadol.death.v1.cbi --resource-pattern-type literal",
            "--allow-principal User:CN=cbi.agency.tabadol.ir --operation Read --topic tabadol.manifest.cbi --resource-pattern-type literal",
            "--allow-principal User:CN=cbi.agency.tabadol.ir --operation Describe --topic tabadol.manifest.cbi --resource-pattern-type literal",
            "--allow-principal User:CN=cbi.agency.tabadol.ir --operation Read --group tabadol.cbi. --resource-pattern-type prefixed",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn topics_match_what_the_relay_produces() {
        let p = policy(AGENCIES, Some(SUBSCRIPTIONS));
        let acls = kafka_acls(&p, &AclOptions::default()).unwrap();
        for ev in crate::events::model::EVENT_TYPES {
            for agency in p.subscribers_of(ev) {
                let t = topic(ev, agency);
                assert!(
                    acls.iter().any(|e| e.resource_name == t
                        && e.operation == Operation::Read
                        && e.principal.contains(&format!("CN={agency}.")))
                        && t.starts_with(TOPIC_PREFIX),
                    "{t}"
                );
            }
        }
    }

    #[test]
    fn only_the_hub_writes_and_non_subscribers_get_nothing() {
        let p = policy(AGENCIES, Some(SUBSCRIPTIONS));
        let acls = kafka_acls(&p, &AclOptions::default()).unwrap();
        for e in &acls {
            if matches!(
                e.operation,
                Operation::Write | Operation::Create | Operation::IdempotentWrite
            ) {
                assert_eq!(e.principal, DEFAULT_HUB_PRINCIPAL, "{e}");
            }
            assert!(!e.principal.contains("cra.") && !e.principal.contains("nocr."));
        }
    }

    #[test]
    fn no_subscriptions_only_the_hub() {
        let p = policy(AGENCIES, None);
        let acls = kafka_acls(&p, &AclOptions::default()).unwrap();
        assert_eq!(acls.len(), 4);
        assert!(acls.iter().all(|e| e.principal == DEFAULT_HUB_PRINCIPAL));
    }

    #[test]
    fn principal_format_and_escaping() {
        let p = policy(AGENCIES, Some(SUBSCRIPTIONS));
        let opts = AclOptions {
            principal_format: "User:{cn}".into(),
            hub_principal: "User:hub".into(),
        };
        let acls = kafka_acls(&p, &opts).unwrap();
        assert!(acls
            .iter()
            .any(|e| e.principal == "User:ihio.agency.tabadol.ir"));
        let opts = AclOptions {
            principal_format: "User:{agency}".into(),
            ..AclOptions::default()
        };
        let acls = kafka_acls(&p, &opts).unwrap();
        assert!(acls.iter().any(|e| e.principal == "User:cbi"));

        assert_eq!(rfc2253_escape("a,b+c"), r"a\,b\+c");
        assert_eq!(rfc2253_escape("#x "), r"\#x\ ");
        assert_eq!(
            rfc2253_escape("cbi.agency.tabadol.ir"),
            "cbi.agency.tabadol.ir"
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let p = policy(AGENCIES, Some(SUBSCRIPTIONS));
        for (hub, format) in [
            ("hub", "User:CN={cn}"),
            ("User:", "User:CN={cn}"),
            (DEFAULT_HUB_PRINCIPAL, "User:everyone"),
            (DEFAULT_HUB_PRINCIPAL, "{cn}"),
        ] {
            let opts = AclOptions {
                hub_principal: hub.into(),
                principal_format: format.into(),
            };
            assert!(kafka_acls(&p, &opts).is_err(), "{hub} {format}");
        }
        // An agency that would be the hub is refused rather than given write access.
        let opts = AclOptions {
            hub_principal: "User:CN=cbi.agency.tabadol.ir".into(),
            ..AclOptions::default()
        };
        assert!(matches!(
            kafka_acls(&p, &opts),
            Err(AclError::AgencyIsHub { agency, .. }) if agency == "cbi"
        ));
    }

    #[test]
    fn commands_are_shell_safe_and_deterministic() {
        let p = policy(AGENCIES, Some(SUBSCRIPTIONS));
        let acls = kafka_acls(&p, &AclOptions::default()).unwrap();
        let opts = RenderOptions {
            bootstrap_server: "kafka-1:9093".into(),
            command_config: Some("/etc/kafka/admin ssl.properties".into()),
            policy_dir: "policy/national".into(),
        };
        let text = render_commands(&acls, &opts);
        assert_eq!(text, render_commands(&acls, &opts));
        let (comments, commands): (Vec<&str>, Vec<&str>) =
            text.lines().partition(|l| l.starts_with('#'));
        assert!(comments
            .iter()
            .any(|l| l.contains("allow.everyone.if.no.acl.found=false")));
        assert!(comments.iter().any(|l| l.contains("policy/national")));
        assert_eq!(commands.len(), acls.len());
        for c in commands {
            assert!(
                c.starts_with("kafka-acls.sh --bootstrap-server kafka-1:9093 --command-config '/etc/kafka/admin ssl.properties' --add --allow-principal "),
                "{c}"
            );
        }
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("User:CN=a.b"), "User:CN=a.b");

        let json: serde_json::Value = serde_json::from_str(&render_json(&acls)).unwrap();
        assert_eq!(json.as_array().unwrap().len(), acls.len());
        assert_eq!(json[4]["resource_name"], "tabadol.death.v1.ihio");
        assert_eq!(json[4]["pattern_type"], "literal");
        assert_eq!(json[4]["operation"], "Read");
    }
}
