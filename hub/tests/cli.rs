//! The `tabadol` binary: `dev` creates its directory, answers over mTLS and stops cleanly
//! on Ctrl-C; policy check reports broken files with file:line:column; config errors are
//! reported all at once before any port is bound.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tabadol_policy::Policy;
use tabadol_proto::v1::civil_registry_client::CivilRegistryClient;
use tabadol_proto::v1::events_client::EventsClient;
use tabadol_proto::v1::{GetLifeStatusRequest, SubscribeRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

fn tabadol() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tabadol"))
}

/// The shipped national policy passes `policy check`.
#[test]
fn shipped_policy_checks_clean() {
    let out = tabadol()
        .args(["policy", "check"])
        .arg(common::policy_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

/// A grant naming a field its service does not have is reported with its line number.
#[test]
fn broken_grant_is_reported_with_line() {
    let dir = common::copy_policy();
    let path = dir.path().join("grants.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    // Break the first `fields:` list of the moh grant by adding a field no service has.
    let lines: Vec<&str> = text.lines().collect();
    let moh = lines
        .iter()
        .position(|l| l.contains("agency: moh"))
        .expect("moh grant");
    let fields_line = moh
        + lines[moh..]
            .iter()
            .position(|l| l.trim_start().starts_with("fields:"))
            .unwrap();
    let mut broken: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    broken[fields_line] = broken[fields_line].replace("fields: [", "fields: [salary, ");
    std::fs::write(&path, broken.join("\n")).unwrap();

    let out = tabadol()
        .args(["policy", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("grants.yaml:{}:", fields_line + 1);
    assert!(stderr.contains(&want), "expected {want} in:\n{stderr}");
    assert!(stderr.contains("salary"), "{stderr}");
}

/// `policy check` reports broken `http:` mappings of the shipped catalog at
/// file:line:column: an unknown input in the query, an output mapped twice, a bad pointer.
#[test]
fn broken_http_mapping_is_reported_with_positions() {
    let dir = common::copy_policy();
    let path = dir.path().join("services.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replacen(
            "query: { nationalCode: national_code }",
            "query: { nationalCode: national_kode }",
            1,
        )
        .replacen(
            "        level: /degree/level\n",
            "        level: /degree/level\n        level: /degree/grade\n",
            1,
        )
        .replacen(
            "        name: /legalPerson/name\n",
            "        name: legalPerson/name\n",
            1,
        );
    std::fs::write(&path, &text).unwrap();
    let out = tabadol()
        .args(["policy", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = |needle: &str| {
        let i = text.find(needle).expect("edited text present");
        let line = text[..i].matches('\n').count() + 1;
        let col = text[..i].rsplit('\n').next().unwrap().chars().count() + 1;
        format!("services.yaml:{line}:{col}: ")
    };
    for (pos, message) in [
        (
            at("national_kode"),
            "uses `national_kode`, which is not an input",
        ),
        (at("level: /degree/grade"), "output `level` is mapped twice"),
        (at("legalPerson/name"), "is not a JSON pointer"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&pos) && l.contains(message)),
            "expected {pos}…{message} in:\n{stderr}"
        );
    }
}

/// Every config problem is listed together and the hub does not start.
#[test]
fn serve_reports_all_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hub.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\npolicy_dir: {}\ndata_dir: data\ntls:\n  ca: nope/ca.crt\n  cert: nope/hub.crt\n  key: nope/hub.key\nproviders:\n  - {{ provider: cra, adapter: telepathy, base_url: ftp://x }}\n",
            common::policy_dir().display()
        ),
    )
    .unwrap();
    let out = tabadol()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "tls.ca",
        "tls.cert",
        "tls.key",
        "telepathy",
        "ftp://x",
        "provider `nocr`",
    ] {
        assert!(stderr.contains(want), "missing {want} in:\n{stderr}");
    }
}

/// A `tabadol dev` child process and the lines it prints.
struct Dev {
    child: Child,
    lines: mpsc::Receiver<String>,
    printed: Vec<String>,
    addr: SocketAddr,
}

impl Dev {
    /// Starts `tabadol dev` on a free loopback port and waits for its banner.
    fn start(dir: &Path, extra: &[&str]) -> Dev {
        let mut child = tabadol()
            .args(["dev", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .arg("--policy")
            .arg(common::policy_dir())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tabadol dev starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut dev = Dev {
            child,
            lines,
            printed: Vec::new(),
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        let banner = dev.wait_for_line("listening on https://", Duration::from_secs(60));
        let addr = banner
            .split("https://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address in the banner");
        dev.addr = addr.parse().expect("socket address in the banner");
        dev
    }

    fn wait_for_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.printed.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "tabadol dev printed no line with `{needle}`; it printed:\n{}",
                    self.printed.join("\n")
                ),
            }
        }
    }

    /// Sends SIGINT (what Ctrl-C sends) and waits for the exit status.
    fn interrupt(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let killed = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tabadol dev did not stop within 30 s of Ctrl-C");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.printed.push(line);
        }
        (status, std::mem::take(&mut self.printed))
    }

    async fn channel(&self, dir: &Path, agency: &str) -> Channel {
        let pki = dir.join("pki");
        let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(pki.join("ca.crt"))))
            .domain_name("localhost")
            .identity(Identity::from_pem(
                read(pki.join("agencies").join(format!("{agency}.crt"))),
                read(pki.join("agencies").join(format!("{agency}.key"))),
            ));
        Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .expect("connect to tabadol dev")
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tabadol dev` creates the PKI (root, one certificate and key per agency of the
/// policy), samples.json and the store under --dir, answers a real call from an agency
/// certificate it issued, and stops cleanly (exit status 0) on Ctrl-C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_creates_its_directory_answers_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), &[]);

    assert!(dir.path().join("pki/ca.crt").is_file());
    let policy = Policy::load_dir(&common::policy_dir()).unwrap();
    let agencies: Vec<String> = policy.agencies().map(|a| a.id.clone()).collect();
    assert!(agencies.len() >= 10, "{agencies:?}");
    for agency in &agencies {
        for ext in ["crt", "key"] {
            let p = dir.path().join(format!("pki/agencies/{agency}.{ext}"));
            assert!(p.is_file(), "{} missing", p.display());
        }
    }
    assert!(dir.path().join("store").is_dir());
    let samples: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("samples.json")).unwrap()).unwrap();
    for key in [
        "persons_alive",
        "persons_deceased",
        "taxpayers",
        "legal_entities",
    ] {
        assert!(
            samples[key].as_array().is_some_and(|a| !a.is_empty()),
            "samples.json has no {key}"
        );
    }

    // A subject from samples.json, asked with a certificate from pki/agencies.
    let dead = samples["persons_deceased"][0]["national_code"]
        .as_str()
        .unwrap()
        .to_owned();
    let life = CivilRegistryClient::new(dev.channel(dir.path(), "cbi").await)
        .get_life_status(GetLifeStatusRequest {
            context: common::ctx("TRK-DEV-0001", "kyc"),
            national_code: dead,
        })
        .await
        .expect("cbi is answered by tabadol dev")
        .into_inner();
    assert!(!life.alive);
    assert!(!life.death_date.is_empty());

    let (status, printed) = dev.interrupt();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        printed.iter().any(|l| l.contains("shutting down")),
        "{printed:?}"
    );
}

/// `tabadol dev --simulate-events` publishes a trickle as the civil registry that a
/// subscriber receives on its Events/Subscribe stream, tokenized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_simulated_events_reach_a_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), &["--simulate-events", "0.2"]);
    let mut stream = EventsClient::new(dev.channel(dir.path(), "cbi").await)
        .subscribe(SubscribeRequest {
            after_sequence: 0,
            types: vec![],
        })
        .await
        .expect("cbi subscribes")
        .into_inner();
    let event = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("an event within 30 s")
        .expect("stream open")
        .expect("an event");
    assert!(["death.v1", "identity-change.v1"].contains(&event.r#type.as_str()));
    assert_eq!(
        event.subject.len(),
        64,
        "a hex HMAC-SHA256 token: {}",
        event.subject
    );
    assert!(!event.subject.chars().all(|c| c.is_ascii_digit()));
    drop(stream);
    let (status, _) = dev.interrupt();
    assert!(status.success(), "exit status {status:?}");
}
