//! `tabadol policy kafka-acls` on the shipped national policy: subscribers read only their
//! own topics and groups, only the hub writes, non-subscribers get nothing, and a broken
//! policy is refused with file:line.

mod common;

use std::process::{Command, Output};

use common::policy_dir;

fn kafka_acls(dir: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tabadol"))
        .args(["policy", "kafka-acls", "--dir"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

/// One parsed `kafka-acls.sh --add` line.
#[derive(Debug, PartialEq, Eq)]
struct Acl {
    principal: String,
    operation: String,
    /// `topic`, `group` or `cluster`.
    resource: String,
    name: String,
    pattern: String,
}

fn parse(line: &str) -> Acl {
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[0], "kafka-acls.sh", "{line}");
    assert!(words.contains(&"--add"), "{line}");
    let arg = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .map(|i| words[i + 1].to_owned())
    };
    assert_eq!(
        arg("--bootstrap-server").as_deref(),
        Some("kafka-1:9093"),
        "{line}"
    );
    let (resource, name) = if let Some(t) = arg("--topic") {
        ("topic", t)
    } else if let Some(g) = arg("--group") {
        ("group", g)
    } else {
        assert!(words.contains(&"--cluster"), "{line}");
        ("cluster", String::new())
    };
    Acl {
        principal: arg("--allow-principal").expect(line),
        operation: arg("--operation").expect(line),
        resource: resource.into(),
        name,
        pattern: arg("--resource-pattern-type").expect(line),
    }
}

fn shipped() -> (String, Vec<Acl>) {
    let out = kafka_acls(&policy_dir(), &["--bootstrap-server", "kafka-1:9093"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let acls = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(parse)
        .collect();
    (text, acls)
}

const HUB: &str = "User:CN=hub.tabadol.ir";

#[test]
fn subscribers_read_exactly_their_own_topics_and_groups() {
    let (_, acls) = shipped();
    for agency in ["cbi", "ihio"] {
        let principal = format!("User:CN={agency}.agency.tabadol.ir");
        let mine: Vec<&Acl> = acls.iter().filter(|a| a.principal == principal).collect();
        let mut read_topics: Vec<&str> = mine
            .iter()
            .filter(|a| a.operation == "Read" && a.resource == "topic")
            .map(|a| {
                assert_eq!(a.pattern, "literal", "{a:?}");
                a.name.as_str()
            })
            .collect();
        read_topics.sort_unstable();
        assert_eq!(
            read_topics,
            [
                format!("tabadol.death.v1.{agency}"),
                format!("tabadol.identity-change.v1.{agency}"),
                format!("tabadol.manifest.{agency}"),
            ],
            "{agency}"
        );
        let groups: Vec<&&Acl> = mine.iter().filter(|a| a.resource == "group").collect();
        assert_eq!(groups.len(), 1, "{agency}: {groups:?}");
        assert_eq!(groups[0].operation, "Read");
        assert_eq!(groups[0].name, format!("tabadol.{agency}."));
        assert_eq!(groups[0].pattern, "prefixed");
        // Nothing else than Read/Describe on its own literal topics and Read on its groups.
        for a in &mine {
            let own_topic = a.resource == "topic"
                && a.pattern == "literal"
                && read_topics.contains(&a.name.as_str())
                && (a.operation == "Read" || a.operation == "Describe");
            assert!(own_topic || a.resource == "group", "{agency}: {a:?}");
        }
        assert_eq!(mine.len(), 7, "{agency}: {mine:?}");
    }
}

#[test]
fn only_the_hub_writes() {
    let (_, acls) = shipped();
    for a in &acls {
        if a.principal != HUB {
            assert!(
                a.principal.ends_with(".agency.tabadol.ir"),
                "unexpected principal {a:?}"
            );
            assert!(
                a.operation == "Read" || a.operation == "Describe",
                "agency granted more than read: {a:?}"
            );
        }
    }
    let hub = |operation: &str, resource: &str, name: &str, pattern: &str| Acl {
        principal: HUB.into(),
        operation: operation.into(),
        resource: resource.into(),
        name: name.into(),
        pattern: pattern.into(),
    };
    for want in [
        hub("Write", "topic", "tabadol.", "prefixed"),
        hub("Describe", "topic", "tabadol.", "prefixed"),
        hub("Create", "topic", "tabadol.", "prefixed"),
        hub("IdempotentWrite", "cluster", "", "literal"),
    ] {
        assert!(acls.contains(&want), "missing {want:?}");
    }
}

#[test]
fn non_subscribers_appear_nowhere_and_output_is_stable() {
    let (text, acls) = shipped();
    for agency in ["cra", "inta", "nocr", "moe", "rcs"] {
        for line in text.lines() {
            let words: Vec<&str> = line
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .collect();
            assert!(!words.contains(&agency), "{agency} in: {line}");
        }
    }
    // No duplicates, the same every time, and the deny-by-default header.
    for (i, a) in acls.iter().enumerate() {
        assert!(!acls[..i].contains(a), "duplicate {a:?}");
    }
    assert_eq!(text, shipped().0);
    let header: Vec<&str> = text.lines().take_while(|l| l.starts_with('#')).collect();
    assert!(header
        .iter()
        .any(|l| l.contains("allow.everyone.if.no.acl.found=false")));
    assert!(header.iter().any(|l| l.contains("policy/national")));
}

#[test]
fn json_format_lists_the_same_acls() {
    let (_, acls) = shipped();
    let out = kafka_acls(&policy_dir(), &["--format", "json"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), acls.len());
}

#[test]
fn broken_policy_is_refused_with_file_and_line() {
    let dir = common::copy_policy();
    let path = dir.path().join("subscriptions.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("agency: ihio"))
        .expect("ihio subscription");
    std::fs::write(&path, text.replacen("agency: ihio", "agency: nobody", 1)).unwrap();

    let out = kafka_acls(dir.path(), &[]);
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("subscriptions.yaml:{}:", line + 1);
    assert!(stderr.contains(&want), "expected {want} in:\n{stderr}");
    assert!(stderr.contains("nobody"), "{stderr}");
}

/// A reader of a published dataset (sso, of the divestment list) may read its own topic of
/// it; no other agency gets that topic.
#[test]
fn dataset_readers_read_only_their_own_dataset_topic() {
    let (_, acls) = shipped();
    let topic = "tabadol.dataset.ipo.divestment-list.sso";
    let on_topic: Vec<&Acl> = acls
        .iter()
        .filter(|a| a.resource == "topic" && a.name == topic)
        .collect();
    let mut ops: Vec<&str> = on_topic.iter().map(|a| a.operation.as_str()).collect();
    ops.sort_unstable();
    assert_eq!(ops, ["Describe", "Read"], "{on_topic:?}");
    assert!(on_topic
        .iter()
        .all(|a| a.principal == "User:CN=sso.agency.tabadol.ir" && a.pattern == "literal"));
    assert!(!acls
        .iter()
        .any(|a| a.name.starts_with("tabadol.dataset.") && a.name != topic));
}
