//! Hostile policy files against a running hub (issue 7, defect 1): a `tabadol dev` child
//! process is sent SIGHUP after its `grants.yaml` is replaced by a block list nested 5,000
//! or 50,000 deep, by a 50 MB file, or by a maximum-size file full of errors. The hub stays
//! up, keeps the last good policy (a granted call still answers), logs one bounded line
//! saying why, and answers calls while the reload runs; `tabadol policy check` of the deep
//! file is an error, not an abort.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tabadol_policy::load::MAX_FILE_BYTES;
use tabadol_proto::v1::civil_registry_client::CivilRegistryClient;
use tabadol_proto::v1::GetLifeStatusRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The log line a refused reload writes.
const REFUSED: &str = "policy reload refused; keeping the last good policy";

fn tabadol() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tabadol"))
}

/// Which stream of the child a line came from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pipe {
    Stdout,
    Stderr,
}

/// A `tabadol dev` child reading its policy from a directory the test edits.
struct Dev {
    child: Child,
    lines: mpsc::Receiver<(Pipe, String)>,
    printed: Vec<(Pipe, String)>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    policy: tempfile::TempDir,
}

impl Dev {
    fn start() -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let policy = common::copy_policy();
        let mut child = tabadol()
            .args(["dev", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir.path())
            .arg("--policy")
            .arg(policy.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tabadol dev starts");
        let (tx, lines) = mpsc::channel();
        for (from, pipe) in [
            (
                Pipe::Stdout,
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            ),
            (Pipe::Stderr, Box::new(child.stderr.take().unwrap())),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send((from, without_ansi(&line))).is_err() {
                        break;
                    }
                }
            });
        }
        let mut dev = Dev {
            child,
            lines,
            printed: Vec::new(),
            addr: "127.0.0.1:1".parse().unwrap(),
            dir,
            policy,
        };
        let banner = dev.wait_for("listening on https://", Duration::from_secs(60));
        let addr = banner
            .split("https://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address in the banner");
        dev.addr = addr.parse().expect("socket address in the banner");
        dev
    }

    /// Waits for a line containing `needle` (on either stream) and returns it.
    fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.printed.push(line.clone());
                    if line.1.contains(needle) {
                        return line.1;
                    }
                }
                Err(_) => panic!(
                    "tabadol dev printed no line with `{needle}` within {within:?}; it printed:\n{}",
                    self.transcript()
                ),
            }
        }
    }

    /// Everything printed so far, long lines cut.
    fn transcript(&self) -> String {
        self.printed
            .iter()
            .map(|(_, l)| l.chars().take(300).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn grants(&self) -> PathBuf {
        self.policy.path().join("grants.yaml")
    }

    fn sighup(&self) {
        let sent = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Panics with the transcript if the child has exited.
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
                self.printed.push(line);
            }
            panic!(
                "tabadol dev exited with {status:?}; it printed:\n{}",
                self.transcript()
            );
        }
    }

    /// Resident memory of the child, in MiB.
    fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib / 1024
    }

    async fn channel(&self, agency: &str) -> Channel {
        let pki = self.dir.path().join("pki");
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
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

    fn alive_person(&self) -> String {
        let samples: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.dir.path().join("samples.json")).unwrap())
                .unwrap();
        samples["persons_alive"][0]["national_code"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `line` without terminal colour escapes (`ESC [ … letter`), as the log may carry them.
fn without_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One call that `grants.yaml` grants to cbi: civil-registry life status for KYC.
async fn granted_call(ch: Channel, code: &str, n: usize) -> Result<(), tonic::Status> {
    CivilRegistryClient::new(ch)
        .get_life_status(GetLifeStatusRequest {
            context: common::ctx(&format!("TRK-HOSTILE-{n:06}"), "kyc"),
            national_code: code.to_owned(),
        })
        .await
        .map(|_| ())
}

/// Lines of the child's log that say a reload was refused.
fn refusals(dev: &Dev) -> Vec<&str> {
    dev.printed
        .iter()
        .filter(|(from, l)| *from == Pipe::Stderr && l.contains(REFUSED))
        .map(|(_, l)| l.as_str())
        .collect()
}

/// `grants.yaml` as a block list nested 5,000 deep (10 KB), then SIGHUP; then 50,000 deep
/// (100 KB), then SIGHUP: the hub stays up, refuses both with one log line each naming
/// grants.yaml:2 and the depth limit, and the granted call still answers (the old policy is
/// in force: the deep file grants nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_grants_and_sighup_keep_the_old_policy() {
    let mut dev = Dev::start();
    let ch = dev.channel("cbi").await;
    let code = dev.alive_person();
    granted_call(ch.clone(), &code, 0)
        .await
        .expect("cbi is granted life status");

    for (round, depth) in [5_000usize, 50_000].into_iter().enumerate() {
        std::fs::write(
            dev.grants(),
            format!("grants:\n  {}x\n", "- ".repeat(depth)),
        )
        .unwrap();
        dev.sighup();
        let line = dev.wait_for(REFUSED, Duration::from_secs(30));
        dev.assert_alive();
        assert!(
            line.contains("grants.yaml:2:") && line.contains("nested more than 32 levels"),
            "{line}"
        );
        assert!(line.len() < 2_000, "log line of {} bytes", line.len());
        assert_eq!(refusals(&dev).len(), round + 1, "{}", dev.transcript());
        granted_call(ch.clone(), &code, round + 1)
            .await
            .unwrap_or_else(|s| {
                panic!("{depth} deep: the last good policy must still answer: {s:?}")
            });
    }

    // A fresh connection is answered too (the listener and TLS are alive, not only the
    // open connection).
    granted_call(dev.channel("cbi").await, &code, 9)
        .await
        .expect("a new connection is answered");
}

/// A 50 MB `grants.yaml` (the file), then SIGHUP, while cbi calls continuously: the
/// reload is refused with one log line naming the size limit, RSS stays far below the
/// 918 MB of the issue, every call during the reload is answered, and the old policy stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_grants_and_sighup_are_refused_while_calls_are_answered() {
    let mut dev = Dev::start();
    let ch = dev.channel("cbi").await;
    let code = dev.alive_person();
    granted_call(ch.clone(), &code, 0).await.expect("granted");

    // Valid YAML all the way: a real grants file followed by 50 MB of comments.
    let mut text = std::fs::read_to_string(dev.grants()).unwrap();
    let filler = format!("# {}\n", "x".repeat(1022));
    while text.len() < 50 * 1024 * 1024 {
        text.push_str(&filler);
    }
    std::fs::write(dev.grants(), &text).unwrap();

    let (max_latency, answered) =
        calls_during(&mut dev, ch.clone(), &code, Duration::from_secs(60)).await;
    let line = refusals(&dev)[0].to_owned();
    dev.assert_alive();
    assert!(line.contains("grants.yaml:1:1"), "{line}");
    assert!(
        line.contains(&format!("the file is {} bytes", text.len()))
            && line.contains("at most 4 MiB"),
        "{line}"
    );
    assert!(line.len() < 2_000, "log line of {} bytes", line.len());
    assert!(answered >= 1, "no call was made during the reload");
    assert!(
        max_latency < Duration::from_secs(1),
        "a call took {max_latency:?} during the reload"
    );
    let rss = dev.rss_mib();
    assert!(
        rss < 200,
        "RSS {rss} MiB after refusing a 50 MB policy file"
    );
    granted_call(ch, &code, 999_999)
        .await
        .expect("the last good policy still answers");
}

/// A `grants.yaml` just under the 4 MiB limit, every line of which is a grant for an
/// unknown agency: the whole file is parsed and checked, off the async workers, so calls
/// keep being answered while it runs; the reload is refused with one bounded line saying
/// how many errors there were, and the old policy stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_size_reload_does_not_stall_calls() {
    let mut dev = Dev::start();
    let ch = dev.channel("cbi").await;
    let code = dev.alive_person();
    granted_call(ch.clone(), &code, 0).await.expect("granted");

    let (text, n) = maximum_size_broken_grants();
    std::fs::write(dev.grants(), &text).unwrap();

    let (max_latency, answered) =
        calls_during(&mut dev, ch.clone(), &code, Duration::from_secs(120)).await;
    dev.assert_alive();
    let line = refusals(&dev)[0].to_owned();
    assert!(line.contains("grants.yaml:2:"), "{line}");
    assert!(line.contains(&format!("errors={}", n)), "{line}");
    assert!(line.len() < 2_000, "log line of {} bytes", line.len());
    assert!(answered >= 1, "no call was made during the reload");
    assert!(
        max_latency < Duration::from_secs(1),
        "a call took {max_latency:?} during the reload ({answered} answered)"
    );
    granted_call(ch, &code, 999_999)
        .await
        .expect("the last good policy still answers");
}

/// Sends SIGHUP and calls in a loop until the refusal is logged (at most `within`);
/// every call must be answered. Returns the slowest call and how many were answered.
async fn calls_during(
    dev: &mut Dev,
    ch: Channel,
    code: &str,
    within: Duration,
) -> (Duration, usize) {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let code = code.to_owned();
    let caller = tokio::spawn(async move {
        let mut slowest = Duration::ZERO;
        let mut answered = 0usize;
        for n in 1..=100_000usize {
            if *stop_rx.borrow_and_update() {
                break;
            }
            let started = Instant::now();
            granted_call(ch.clone(), &code, n)
                .await
                .unwrap_or_else(|s| panic!("call {n} during the reload: {s:?}"));
            slowest = slowest.max(started.elapsed());
            answered += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (slowest, answered)
    });
    // Let the caller get going, then reload.
    tokio::time::sleep(Duration::from_millis(200)).await;
    dev.sighup();
    tokio::task::block_in_place(|| dev.wait_for(REFUSED, within));
    let _ = stop_tx.send(true);
    caller.await.expect("the caller did not panic")
}

/// `tabadol policy check` of the 50,000-deep file exits with status 1 and the error at
/// grants.yaml:2, instead of overflowing its stack and aborting; a 50 MB file is refused
/// the same way, naming the limit.
#[test]
fn policy_check_of_hostile_files_is_an_error_not_an_abort() {
    let policy = common::copy_policy();
    let grants = policy.path().join("grants.yaml");
    std::fs::write(&grants, format!("grants:\n  {}x\n", "- ".repeat(50_000))).unwrap();
    let out = tabadol()
        .args(["policy", "check"])
        .arg(policy.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit {:?}; stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2:", grants.display()))
            && stderr.contains("nested more than 32 levels"),
        "{stderr}"
    );
    assert!(stderr.contains(": 1 error(s)"), "{stderr}");

    let file = std::fs::File::create(&grants).unwrap();
    file.set_len(50 * 1024 * 1024).unwrap();
    let out = tabadol()
        .args(["policy", "check"])
        .arg(policy.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:1:1:", grants.display())) && stderr.contains("at most 4 MiB"),
        "{stderr}"
    );
}

/// A `grants.yaml` just under the size limit in which every line is a grant for an
/// unknown agency, so that the loader has to read, parse and check all of it.
fn maximum_size_broken_grants() -> (String, usize) {
    let mut text = String::from("grants:\n");
    let mut n = 0usize;
    loop {
        let item = format!("  - {{ agency: nobody{n}, service: none }}\n");
        if text.len() + item.len() > MAX_FILE_BYTES {
            break;
        }
        text.push_str(&item);
        n += 1;
    }
    (text, n)
}

/// In-process, with a single async worker: while `reload_policy` loads a maximum-size
/// file, calls keep being answered on that worker (the loading runs on the blocking pool),
/// and the refused reload leaves the granted call working.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn reload_runs_off_the_async_workers() {
    let policy = common::copy_policy();
    let hub = common::TestHub::start_with_policy(policy.path().to_owned()).await;
    let ch = hub.channel("cbi").await;
    let (code, _) = hub.alive(0);
    granted_call(ch.clone(), &code, 0).await.expect("granted");
    let (text, _) = maximum_size_broken_grants();
    std::fs::write(policy.path().join("grants.yaml"), text).unwrap();

    let h = hub.handle.hub.clone();
    let dir = policy.path().to_owned();
    let reload = tokio::spawn(async move {
        let started = Instant::now();
        let taken = tabadol_hub::ops::app::reload_policy(&h, &dir).await;
        (taken, started.elapsed())
    });
    let mut answered_during = 0usize;
    for n in 1..=100_000usize {
        if reload.is_finished() {
            break;
        }
        let done = granted_call(ch.clone(), &code, n).await;
        done.unwrap_or_else(|s| panic!("call {n} during the reload: {s:?}"));
        if !reload.is_finished() {
            answered_during += 1;
        }
    }
    let (taken, took) = reload.await.unwrap();
    assert!(!taken, "a policy of unknown agencies must be refused");
    assert!(
        answered_during >= 3,
        "only {answered_during} calls were answered during a reload of {took:?}"
    );
    granted_call(ch, &code, 999_999)
        .await
        .expect("the last good policy still answers");
    hub.stop().await;
}
