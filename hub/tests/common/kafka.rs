//! A real Kafka-protocol broker (tansu) on loopback for the tests, and readers of what the
//! hub produced: held ports, helper processes that die with the test, topic readers.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tabadol_proto::v1::Event;

// ---------------------------------------------------------------------------------------
// Ports and helper processes.

/// A loopback port held for the whole test: bound with SO_REUSEADDR but never listening.
/// Connections to it are refused while no server listens; Linux hands it to nobody else
/// while other ports are free (neither `bind(0)` nor an outgoing connection picks a bound
/// port, and a plain bind fails); and a server
/// that binds with SO_REUSEADDR, as tansu and `tabadol serve` do (every std/tokio listener
/// on unix does), can listen on it while it is held, and again after a restart, with no
/// window for another process to take it.
pub struct PortHold {
    pub port: u16,
    pub _socket: tokio::net::TcpSocket,
}

impl PortHold {
    pub fn new() -> PortHold {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind a loopback port");
        let port = socket.local_addr().unwrap().port();
        PortHold {
            port,
            _socket: socket,
        }
    }
}

/// A command for a helper process that must not outlive the test. On Linux it goes
/// through util-linux `setpriv --pdeathsig KILL` (no `unsafe` pre_exec hook needed): the
/// kernel kills it when the thread that started it ends, i.e. the test's thread, or the
/// whole test process when it crashes or is killed. Helpers are therefore started from
/// the test's own thread, never from a spawned task. Without setpriv, `Drop` and the
/// EXIT trap of `scripts/test.sh` clean up.
pub fn guarded(program: &Path) -> Command {
    static SETPRIV: OnceLock<bool> = OnceLock::new();
    let setpriv = *SETPRIV.get_or_init(|| {
        cfg!(target_os = "linux")
            && Command::new("setpriv")
                .arg("--help")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("--pdeathsig"))
                .unwrap_or(false)
    });
    if setpriv {
        let mut c = Command::new("setpriv");
        c.args(["--pdeathsig", "KILL", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Sends `signal` (e.g. `STOP`, `CONT`) to a child process of this test, by its id.
pub fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {} failed", child.id());
}

/// The end of a log file, from byte `from`.
pub fn log_since(path: &Path, from: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default());
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

// ---------------------------------------------------------------------------------------
// A real broker on loopback.

/// How many times a broker start is tried before the test gives up.
pub const START_ATTEMPTS: usize = 5;

pub struct Broker {
    pub hold: PortHold,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// The port advertised to clients, when not its own (a [`Gate`] in front of it).
    pub advertised: Option<u16>,
}

pub fn tansu() -> PathBuf {
    let p = std::env::var_os("TABADOL_TANSU").map(PathBuf::from).expect(
        "TABADOL_TANSU is not set: run the suite with `bash scripts/test.sh`, which installs \
         the tansu broker and sets it",
    );
    assert!(p.is_file(), "TABADOL_TANSU={} does not exist", p.display());
    p
}

impl Broker {
    /// A broker that is not running yet, on a port held for it.
    pub fn reserve() -> Broker {
        let hold = PortHold::new();
        let log = std::env::temp_dir().join(format!(
            "tabadol-test-tansu-{}-{}.log",
            std::process::id(),
            hold.port
        ));
        Broker {
            hold,
            child: None,
            log,
            advertised: None,
        }
    }

    /// A running broker; a start that fails (tansu exits at once, e.g. it could not bind)
    /// is tried again on a fresh port.
    pub async fn start() -> Broker {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let mut b = Broker::reserve();
            match b.try_run().await {
                Ok(()) => return b,
                Err(e) => failures.push(format!("port {}: {e}", b.hold.port)),
            }
        }
        panic!(
            "tansu did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// Starts (or restarts) the broker on its own port, which its clients already know;
    /// a start that fails is tried again.
    pub async fn run(&mut self) {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match self.try_run().await {
                Ok(()) => return,
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "tansu did not start on port {} in {START_ATTEMPTS} attempts:\n{}",
            self.hold.port,
            failures.join("\n")
        );
    }

    pub async fn try_run(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "broker already running");
        let url = format!("tcp://127.0.0.1:{}", self.hold.port);
        let advertised = format!(
            "tcp://127.0.0.1:{}",
            self.advertised.unwrap_or(self.hold.port)
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let from = log.metadata().map(|m| m.len()).unwrap_or(0);
        let out = log.try_clone().map_err(|e| e.to_string())?;
        let mut child = guarded(&tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .stdout(out)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start tansu: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // tansu ends at once when it cannot bind (with status 0).
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!(
                    "tansu exited at start ({status}); its log:\n{}",
                    log_since(&self.log, from)
                ));
            }
            // Only a server of ours can listen on the held port.
            if tokio::net::TcpStream::connect(("127.0.0.1", self.hold.port))
                .await
                .is_ok()
            {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "tansu did not open port {} in 20 s; its log:\n{}",
                    self.hold.port,
                    log_since(&self.log, from)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (`STOP`: frozen, connections accepted but nothing answered; `CONT`).
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.as_ref().expect("broker running"), signal);
    }

    /// SIGKILL: the broker dies without a goodbye (its in-memory data with it).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.hold.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading what the relay produced.

#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub key: String,
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
    pub event: Event,
}

/// A consumer reading `topics` from the beginning of every partition (no group join).
pub fn reader(brokers: &str, topics: &[String]) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "tabadol.test.reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .set("log_level", "3")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("broker metadata");
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        let topic = md
            .topics()
            .iter()
            .find(|m| m.name() == t)
            .unwrap_or_else(|| panic!("topic {t} does not exist on the broker"));
        assert!(
            !topic.partitions().is_empty(),
            "topic {t} has no partitions"
        );
        for p in topic.partitions() {
            tpl.add_partition_offset(t, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    c.assign(&tpl).unwrap();
    c
}

/// Reads until `done` says so (or fails after `within`).
pub async fn read_until(
    c: &StreamConsumer,
    within: Duration,
    done: impl FnMut(&[Received]) -> bool,
) -> Vec<Received> {
    let (out, ok) = read_while(c, within, done).await;
    assert!(ok, "timed out after {within:?} with {} records", out.len());
    out
}

/// Reads until `done` says so or `within` passed; says which.
pub async fn read_while(
    c: &StreamConsumer,
    within: Duration,
    mut done: impl FnMut(&[Received]) -> bool,
) -> (Vec<Received>, bool) {
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    while !done(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        let Ok(msg) = tokio::time::timeout(left.min(Duration::from_secs(1)), c.recv()).await else {
            continue;
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                eprintln!("consumer: {e}");
                continue;
            }
        };
        let mut headers = HashMap::new();
        if let Some(h) = msg.headers() {
            for hd in h.iter() {
                headers.insert(
                    hd.key.to_owned(),
                    String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        let payload = msg.payload().unwrap_or_default().to_vec();
        out.push(Received {
            topic: msg.topic().to_owned(),
            key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
            headers,
            event: Event::decode(payload.as_slice()).expect("payload is a tabadol.v1.Event"),
            payload,
        });
    }
    (out, true)
}

pub fn distinct_ids(rs: &[Received]) -> HashSet<String> {
    rs.iter().map(|r| r.headers["ce_id"].clone()).collect()
}

/// Creates `topic` as the relay would.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "3")
        .create()
        .unwrap();
    let r = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    assert!(r.iter().all(|r| r.is_ok()), "create {topic}: {r:?}");
}

/// Waits until the relay has created `topic` (with partitions), then reads it.
pub async fn topic_reader(brokers: &str, topic: &str, within: Duration) -> StreamConsumer {
    let deadline = Instant::now() + within;
    let md: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "3")
        .create()
        .unwrap();
    loop {
        let exists = md
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            })
            .unwrap_or(false);
        if exists {
            return reader(brokers, &[topic.to_string()]);
        }
        assert!(Instant::now() < deadline, "relay never created {topic}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads on into `got` until nothing new arrived for `quiet`. Meant for a frozen
/// producer: the broker's log stops growing once the requests already on the wire are
/// handled (milliseconds), so a quiet second means the reader has all of it. (tansu's
/// high watermark cannot tell: it lags behind the log, pointing into the last batch.)
pub async fn read_until_quiet(
    c: &StreamConsumer,
    got: &mut Vec<Received>,
    quiet: Duration,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    let mut last_new = Instant::now();
    while last_new.elapsed() < quiet {
        assert!(
            Instant::now() < deadline,
            "records kept arriving for {within:?} from a frozen producer"
        );
        let (more, _) = read_while(c, Duration::from_millis(100), |_| false).await;
        if !more.is_empty() {
            last_new = Instant::now();
            got.extend(more);
        }
    }
}

/// Checks that for every key the first occurrence of each `ce_id` comes in sequence order,
/// and returns the number of keys.
pub fn assert_first_occurrences_in_order(records: &[&Received]) -> usize {
    let mut per_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut first = HashSet::new();
    for r in records {
        if first.insert(r.event.id.clone()) {
            per_key.entry(&r.key).or_default().push(r.event.sequence);
        }
    }
    for (k, seqs) in &per_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {k}: first occurrences out of sequence order: {seqs:?}"
        );
    }
    per_key.len()
}
