//! Issue 9, cluster mode: real `tabadol serve` processes with a `cluster:` section give the
//! same tokens and event subjects when they share a master secret (and different ones when
//! not), refuse a master secret others may read, and `tabadol serve --check` reports every
//! error of a broken configuration at once and passes on every configuration in deploy/.

mod common;
#[path = "common/cluster.rs"]
mod hubs;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use hubs::*;
use tabadol_hub::ops::dev::DevEnv;

/// Two hubs with the same master secret give equal tokens through Tokenize and equal
/// subjects in their events (before: each hub made its own random key, so they differed);
/// a hub with another secret gives other tokens; a rotated hub answers the old version
/// when asked and refuses an unknown one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_sharing_a_master_secret_give_the_same_tokens() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let env = dev_env(&dir.path().join("dev")).await;
    let shared = secret(&dir.path().join("master-secret"), 0x5a, 0o600);
    let other = secret(&dir.path().join("other-secret"), 0xa5, 0o400);
    let hub1 = serve(
        &env,
        dir.path(),
        "hub-1",
        &cluster_section("hub-1", &shared, ""),
    );
    let hub2 = serve(
        &env,
        dir.path(),
        "hub-2",
        &cluster_section("hub-2", &shared, ""),
    );
    let hub3 = serve(
        &env,
        dir.path(),
        "hub-3",
        &cluster_section("hub-3", &other, ""),
    );
    let rotated = serve(
        &env,
        dir.path(),
        "hub-4",
        &cluster_section(
            "hub-4",
            &shared,
            "  key_version: 2\n  previous_keys: [{ version: 1 }]\n",
        ),
    );
    let codes = vec![alive(&env, 0), alive(&env, 1)];

    let (t1, v1) = hub1.tokenize(&codes, None).await.expect("hub-1 tokenizes");
    let (t2, v2) = hub2.tokenize(&codes, None).await.expect("hub-2 tokenizes");
    assert_eq!((v1, v2), (1, 1), "default key_version is 1");
    assert_eq!(t1, t2, "same secret, same tokens on both hubs");
    assert_ne!(t1[0], t1[1]);
    let (t3, _) = hub3.tokenize(&codes, None).await.expect("hub-3 tokenizes");
    assert_ne!(t1[0], t3[0], "another secret gives other tokens");
    assert_ne!(t1[1], t3[1]);

    // The same death published at two hubs reaches cbi with the same subject, which is
    // cbi's Tokenize answer; a hub with another secret gives another subject.
    let e1 = hub1.death_seen_by_cbi(&codes[0]).await;
    let e2 = hub2.death_seen_by_cbi(&codes[0]).await;
    let e3 = hub3.death_seen_by_cbi(&codes[0]).await;
    assert_eq!(e1.subject, e2.subject);
    assert_eq!(e1.subject, t1[0]);
    assert_eq!((e1.key_version, e2.key_version), (1, 1));
    assert_ne!(e3.subject, e1.subject);
    drop((hub1, hub2, hub3));
    // Neither the secret nor a derived key is in any hub's store or log, and the store's
    // key tree stays empty in cluster mode.
    let hex_secret = hex::encode([0x5au8; 32]);
    for name in ["hub-1", "hub-2"] {
        let log = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
        assert!(log.contains("cluster mode: token keys derived"), "{log}");
        assert!(
            !log.contains(&hex_secret),
            "the secret is in the log of {name}"
        );
        for file in walk(&dir.path().join(name)) {
            let bytes = std::fs::read(&file).unwrap();
            for needle in [hex_secret.as_bytes(), &[0x5au8; 32][..]] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "the secret is in {}",
                    file.display()
                );
            }
        }
        let db = open_stopped(&dir.path().join(name));
        assert_eq!(
            db.open_tree("tokens.keys").unwrap().len(),
            0,
            "no key stored"
        );
    }

    // Rotation to version 2 with an overlap: the current tokens differ, version 1 is the
    // other hubs' answer, and a version outside the overlap is refused, naming the field.
    let (r2, rv) = rotated
        .tokenize(&codes, None)
        .await
        .expect("current version");
    assert_eq!(rv, 2);
    assert_ne!(r2, t1, "version 2 gives new tokens");
    let (r1, rv1) = rotated
        .tokenize(&codes, Some(1))
        .await
        .expect("overlap version");
    assert_eq!((r1, rv1), (t1.clone(), 1));
    let e4 = rotated.death_seen_by_cbi(&codes[0]).await;
    assert_eq!((e4.subject.as_str(), e4.key_version), (r2[0].as_str(), 2));
    let refused = rotated
        .tokenize(&codes, Some(3))
        .await
        .expect_err("version 3 is unknown");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("key version 3"), "{refused:?}");
    let fields = common::violated_fields(&refused);
    assert_eq!(fields, ["key_version"], "{refused:?}");
    drop(rotated);
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Opens a stopped hub's store (waiting at most 10 s for its lock to go).
fn open_stopped(data: &Path) -> sled::Db {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sled::open(data.join("store")) {
            Ok(db) => return db,
            Err(e) if Instant::now() > deadline => panic!("store still locked: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A single node moving to a master secret: its existing random tokens (key version 0)
/// stay answerable during the announced overlap (`previous_keys: [{version: 0}]`), next to
/// the new derived version 1 that every hub with the secret gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_keeps_its_store_tokens_as_version_0_during_the_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let env = dev_env(&dir.path().join("dev")).await;
    let shared = secret(&dir.path().join("master-secret"), 0x5a, 0o600);
    let codes = vec![alive(&env, 2)];
    // Single node: no cluster section, random keys in the store (version 0).
    let single = dir.path().join("single.yaml");
    let data = dir.path().join("node");
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();
    let yaml = serve_yaml(&env, &data, port, "");
    std::fs::write(&single, yaml.replace("cluster:\n", "")).unwrap();
    let old = {
        let child = tabadol()
            .args(["serve", "--config"])
            .arg(&single)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let node = Served {
            child,
            port,
            pki: env.config.data_dir.join("pki"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "single node did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let (t, v) = node
            .tokenize(&codes, None)
            .await
            .expect("single node tokenizes");
        assert_eq!(v, 0, "the store's random keys are version 0");
        t
    };
    // The same store with a master secret: version 1 current, version 0 in the overlap.
    let moved = serve(
        &env,
        dir.path(),
        "node",
        &cluster_section("hub-1", &shared, "  previous_keys: [{ version: 0 }]\n"),
    );
    let (kept, v0) = moved
        .tokenize(&codes, Some(0))
        .await
        .expect("version 0 in the overlap");
    assert_eq!(
        (kept, v0),
        (old.clone(), 0),
        "the node's existing tokens, unchanged"
    );
    let (new, v1) = moved.tokenize(&codes, None).await.expect("current version");
    assert_eq!(v1, 1);
    assert_ne!(
        new, old,
        "moving to a master secret changes the tokens: announce it"
    );
    // Version 1 is what every hub with the secret gives; version 0 only this node has.
    let other = serve(
        &env,
        dir.path(),
        "hub-2",
        &cluster_section("hub-2", &shared, ""),
    );
    let (there, _) = other.tokenize(&codes, None).await.expect("hub-2 tokenizes");
    assert_eq!(there, new);
    let refused = other
        .tokenize(&codes, Some(0))
        .await
        .expect_err("no store keys at hub-2");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
}

fn run(args: &[&str], config: &Path) -> Output {
    tabadol()
        .args(args)
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("tabadol runs")
}

/// A master secret others may read is refused by `serve` and `serve --check`, naming the
/// file and the fix (before: any file was accepted); the secret never appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn world_readable_master_secret_is_refused_naming_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let env = dev_env(&dir.path().join("dev")).await;
    let open = secret(&dir.path().join("master-secret"), 0x33, 0o644);
    let data = dir.path().join("data");
    let cfg = dir.path().join("hub.yaml");
    std::fs::write(
        &cfg,
        serve_yaml(
            &env,
            &data,
            free_port(),
            &cluster_section("hub-1", &open, ""),
        ),
    )
    .unwrap();
    for args in [
        &["serve", "--config"][..],
        &["serve", "--check", "--config"][..],
    ] {
        let out = run(args, &cfg);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must refuse: {stderr}");
        assert!(
            stderr.contains(&format!(
                "cluster.master_secret_file: {} has mode 0644",
                open.display()
            )),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("chmod 600 {}", open.display())),
            "{stderr}"
        );
        assert!(!stderr.contains(&hex::encode([0x33u8; 32])), "{stderr}");
    }
    assert!(!data.exists(), "no store was opened");
    // Fixed as told, the same configuration passes.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(&["serve", "--check", "--config"], &cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `serve --check` reports every error of a broken configuration at once, each naming its
/// field, exits non-zero, and binds nothing: a good configuration checks fine while its
/// port is held by someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_check_reports_every_error_at_once_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let env = dev_env(&dir.path().join("dev")).await;
    let good_secret = secret(&dir.path().join("good-secret"), 0x11, 0o600);
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        serve_yaml(
            &env,
            &dir.path().join("data"),
            port,
            &cluster_section(
                "hub-1",
                &good_secret,
                "  kafka: { bootstrap_servers: \"kafka-1:9092,kafka-2:9092\" }\n",
            ),
        ),
    )
    .unwrap();
    let out = run(&["serve", "--check", "--config"], &good);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK")
            && stdout.contains("cluster mode, instance hub-1, token key version 1"),
        "{stdout}"
    );
    assert!(!dir.path().join("data").exists(), "no store was opened");

    let missing = dir.path().join("no-such-secret");
    let mut yaml = serve_yaml(
        &env,
        &dir.path().join("data"),
        port,
        &format!(
            "  instance_id: Hub_1\n  master_secret_file: {}\n  key_version: 2\n  previous_keys: [{{ version: 5 }}]\n  kafka:\n    bootstrap_servers: \"kafka-1\"\n    properties: {{ acks: \"1\" }}\n  topics: {{ ingest: \"bad topic\", partitions: 0, replication: 2, min_insync_replicas: 3 }}\n",
            missing.display()
        ),
    );
    yaml = yaml.replace(
        &format!("ca: {}", env.config.tls.ca.display()),
        "ca: /nonexistent/ca.crt",
    );
    yaml.push_str("limits: { streams_per_agency: 0 }\n");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, yaml).unwrap();
    let out = run(&["serve", "--check", "--config"], &broken);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let expected = [
        "tls.ca: file /nonexistent/ca.crt does not exist",
        "cluster.instance_id: `Hub_1` is not an instance id",
        "cluster.previous_keys[0].version: 5 must be below key_version 2",
        &format!(
            "cluster.master_secret_file: cannot read {}",
            missing.display()
        ),
        "cluster.kafka.bootstrap_servers: `kafka-1` is not HOST:PORT",
        "cluster.kafka.properties.acks: set by the hub itself",
        "cluster.topics.ingest: `bad topic` is not a Kafka topic name",
        "cluster.topics.partitions: 0 is not a partition count",
        "cluster.topics.min_insync_replicas: 3 must be between 1 and replication (2)",
        "limits.streams_per_agency: give at least 1",
    ];
    for e in expected {
        assert!(stderr.contains(e), "missing `{e}` in:\n{stderr}");
    }
    assert!(
        stderr.contains(&format!(
            "{}: {} error(s)",
            broken.display(),
            expected.len()
        )),
        "every error counted once:\n{stderr}"
    );
    drop(held);
}

/// Makes the files a shipped configuration names under /etc/tabadol (from the dev PKI:
/// root, CRL, hub pair, a client pair, master secrets with mode 0600) below `etc`.
fn materialize(text: &str, etc: &Path, env: &DevEnv) {
    let pki = tabadol_hub::ops::pki::PkiLayout::new(env.config.data_dir.join("pki"));
    let ca = tabadol_hub::ops::pki::read_ca(&pki).unwrap();
    let crl = tabadol_hub::ops::pki::revocation_list(&ca, &[]).unwrap();
    let read = |p: PathBuf| std::fs::read(p).unwrap();
    for (i, _) in text.match_indices("/etc/tabadol/") {
        let rest = &text[i + "/etc/tabadol/".len()..];
        let end = rest
            .find(|c: char| c.is_whitespace() || ",}]\"'#".contains(c))
            .unwrap_or(rest.len());
        let rel = &rest[..end];
        if rel.is_empty() || rel.ends_with('/') {
            continue;
        }
        let path = etc.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("master-secret") {
            secret(&path, 0x42, 0o400);
            continue;
        }
        let bytes = if name.ends_with(".crl") {
            crl.clone().into_bytes()
        } else if name.contains("client") && name.ends_with(".key") {
            read(pki.agency_key("cbi"))
        } else if name.contains("client") {
            read(pki.agency_cert("cbi"))
        } else if name.ends_with(".key") {
            read(pki.hub_key())
        } else if name.contains("ca") || name.contains("root") {
            read(pki.ca_cert())
        } else {
            read(pki.hub_cert())
        };
        std::fs::write(&path, bytes).unwrap();
    }
}

/// The hub configurations shipped in deploy/ (single node, compose, Kubernetes ConfigMap,
/// systemd) with the files they name made from a dev PKI: each passes `serve --check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_config_passes_serve_check() {
    let dir = tempfile::tempdir().unwrap();
    let env = dev_env(&dir.path().join("dev")).await;
    // The national policy, signed with the dev PKI (the examples require signatures).
    let policy = common::copy_policy();
    std::fs::copy(
        env.config.data_dir.join("signatures.yaml"),
        policy.path().join("signatures.yaml"),
    )
    .unwrap();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut configs: Vec<(String, String)> = Vec::new();
    for rel in ["hub.example.yaml", "cluster/hub.yaml", "systemd/hub.yaml"] {
        let text = std::fs::read_to_string(deploy.join(rel))
            .unwrap_or_else(|e| panic!("deploy/{rel}: {e}"));
        configs.push((rel.to_owned(), text));
    }
    // The Kubernetes ConfigMap's hub.yaml.
    let k8s = std::fs::read_to_string(deploy.join("kubernetes/tabadol.yaml")).unwrap();
    let mut found = 0;
    for doc in serde_yaml::Deserializer::from_str(&k8s) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] == "ConfigMap" {
            if let Some(text) = v["data"]["hub.yaml"].as_str() {
                configs.push(("kubernetes/tabadol.yaml ConfigMap".into(), text.to_owned()));
                found += 1;
            }
        }
    }
    assert_eq!(
        found, 1,
        "one ConfigMap with hub.yaml in kubernetes/tabadol.yaml"
    );
    for (name, text) in configs {
        let root = dir.path().join(name.replace(['/', ' '], "_"));
        let etc = root.join("etc");
        materialize(&text, &etc, &env);
        let text = text
            .replace("/etc/tabadol/", &format!("{}/", etc.display()))
            .replace("/var/lib/tabadol", &root.join("data").display().to_string())
            .replace("../policy/national", &policy.path().display().to_string())
            .replace(
                "/usr/share/tabadol/policy",
                &policy.path().display().to_string(),
            );
        let cfg = root.join("hub.yaml");
        std::fs::write(&cfg, text).unwrap();
        let out = tabadol()
            .args(["serve", "--check", "--config"])
            .arg(&cfg)
            .env("HOSTNAME", "tabadol-7d9f-x2")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "deploy/{name} fails serve --check:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
