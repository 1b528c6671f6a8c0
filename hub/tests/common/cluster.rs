//! Real `tabadol serve` processes for the cluster tests: one dev environment (PKI,
//! simulators) shared by several hubs, each a child process with its own store and port,
//! killed with the test (SIGKILL on drop, or at a moment the test chooses).
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tabadol_hub::ops::dev::{prepare, DevEnv, DevOptions};
use tabadol_proto::v1::events_client::EventsClient;
use tabadol_proto::v1::{Event, PublishRequest, SubscribeRequest, TokenizeRequest};
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::common::policy_dir;

pub fn tabadol() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tabadol"))
}

/// A held free port on 127.0.0.1 (released just before the hub binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a master secret (hex of `byte` × 32) with `mode`.
pub fn secret(path: &Path, byte: u8, mode: u32) -> PathBuf {
    std::fs::write(path, format!("{}\n", hex::encode([byte; 32]))).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_owned()
}

/// One dev environment (PKI, simulators) shared by every hub of a test.
pub async fn dev_env(dir: &Path) -> DevEnv {
    prepare(&DevOptions {
        dir: dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        policy: Some(policy_dir()),
        kafka: None,
        simulate_events: None,
        durable_audit: false,
    })
    .await
    .expect("dev environment")
}

/// `tabadol serve`'s configuration over the dev environment: store in `data`, listening on
/// `port`, with `cluster` as its cluster section (YAML lines, indented by two).
pub fn serve_yaml(env: &DevEnv, data: &Path, port: u16, cluster: &str) -> String {
    let dev = &env.config;
    let mut yaml = format!(
        "listen: 127.0.0.1:{port}\npolicy_dir: {}\ndata_dir: {}\ntls:\n  ca: {}\n  cert: {}\n  key: {}\n  revocation: \"off\"\ncluster:\n{cluster}providers:\n",
        policy_dir().display(),
        data.display(),
        dev.tls.ca.display(),
        dev.tls.cert.display(),
        dev.tls.key.display(),
    );
    for p in &dev.providers {
        yaml.push_str(&format!(
            "  - {{ provider: {}, adapter: {}, base_url: \"{}\" }}\n",
            p.provider, p.adapter, p.base_url
        ));
    }
    yaml
}

/// A `tabadol serve` child process, killed when dropped.
pub struct Served {
    pub child: Child,
    pub port: u16,
    pub pki: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tabadol serve` as hub `name` under `root` with `cluster` as its cluster section.
pub fn serve(env: &DevEnv, root: &Path, name: &str, cluster: &str) -> Served {
    let data = root.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();
    let cfg = root.join(format!("{name}.yaml"));
    std::fs::write(&cfg, serve_yaml(env, &data, port, cluster)).unwrap();
    // Everything the hub logs, at debug, to check that the secret is never in it.
    let log = std::fs::File::create(root.join(format!("{name}.log"))).unwrap();
    let child = tabadol()
        .args(["serve", "--config"])
        .arg(&cfg)
        .env(
            "RUST_LOG",
            "debug,h2=info,hyper=info,tonic=info,rustls=info,sled=info",
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("tabadol serve starts");
    let mut served = Served {
        child,
        port,
        pki: env.config.data_dir.join("pki"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = served.child.try_wait().unwrap() {
            panic!(
                "tabadol serve {name} exited: {status}\n{}",
                std::fs::read_to_string(root.join(format!("{name}.log"))).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "tabadol serve {name} did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    served
}

impl Served {
    pub fn events(&self, agency: &str) -> EventsClient<Channel> {
        EventsClient::new(self.channel(agency))
    }

    /// cbi's tokens for `codes` at `version` (None: current) and the version answered.
    pub async fn tokenize(
        &self,
        codes: &[String],
        version: Option<u32>,
    ) -> Result<(Vec<String>, u32), tonic::Status> {
        self.events("cbi")
            .tokenize(TokenizeRequest {
                national_codes: codes.to_vec(),
                key_version: version,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.tokens, r.key_version)
            })
    }

    /// Publishes a death of `nc` as nocr and returns the event as cbi receives it.
    pub async fn death_seen_by_cbi(&self, nc: &str) -> Event {
        self.events("nocr")
            .publish(PublishRequest {
                event_id: format!("death-{nc}"),
                r#type: "death.v1".into(),
                national_code: nc.into(),
                date: "1405/08/30".into(),
            })
            .await
            .expect("nocr publishes");
        let mut stream = self
            .events("cbi")
            .subscribe(SubscribeRequest {
                after_sequence: 0,
                types: vec!["death.v1".into()],
            })
            .await
            .expect("cbi subscribes")
            .into_inner();
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the event arrives within 10 s")
            .expect("the stream stays open")
            .expect("an event, not an error")
    }
}

pub fn cluster_section(id: &str, secret: &Path, extra: &str) -> String {
    format!(
        "  instance_id: {id}\n  master_secret_file: {}\n{extra}",
        secret.display()
    )
}

pub fn alive(env: &DevEnv, i: usize) -> String {
    env.dataset.samples()["persons_alive"][i]["national_code"]
        .as_str()
        .unwrap()
        .to_owned()
}

impl Served {
    /// SIGKILL: the hub dies at once, with whatever it had in flight.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// An mTLS channel to this hub as `agency` (any tabadol.v1 client wraps it).
    pub fn channel(&self, agency: &str) -> Channel {
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(self.pki.join("ca.crt"))))
            .domain_name("localhost")
            .identity(Identity::from_pem(
                read(self.pki.join("agencies").join(format!("{agency}.crt"))),
                read(self.pki.join("agencies").join(format!("{agency}.key"))),
            ));
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.port))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_lazy()
    }
}
