//! A subscribing agency (the Central Bank by default) acting on death notices and identity
//! changes of its own customers (R5).
//!
//! Events name people only by the subscriber's *token*, so the subscriber first asks the hub
//! (`Events/Tokenize`) for the tokens of the national codes it already serves and keeps a
//! token → customer map. Each event whose token is a customer's means: suspend service to
//! that person until they are re-inquired and re-authenticated through NOCR at the hub.
//!
//! Two ways to receive events:
//! - the hub's resumable gRPC stream (`Events/Subscribe`, default); the last sequence seen
//!   is kept in a state file, so a restart resumes with no gap and no repeat;
//! - Kafka (`--kafka HOST:PORT`): the agency's own topics `tabadol.<event-type>.<agency>`,
//!   consumer group `tabadol.<agency>.subscriber`; delivery is at-least-once, so copies
//!   are dropped by their CloudEvents `ce_id`.
//!
//! ```text
//! cargo run --example subscriber -- --hub https://127.0.0.1:7443 --dir ./var/dev
//! cargo run --example subscriber -- --agency moh --customers patients.csv --after 0
//! cargo run --example subscriber -- --kafka 127.0.0.1:9092 --exit-after 10
//! ```

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use prost::Message as _;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{ClientConfig, ClientContext};
use tabadol_examples::{connect, describe_status, HubArgs};
use tabadol_proto::v1::events_client::EventsClient;
use tabadol_proto::v1::{Event, SubscribeRequest, TokenizeRequest};
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt as _;

/// Most national codes the hub tokenizes in one call.
const TOKENIZE_BATCH: usize = 1000;
/// Event types every subscriber receives.
const EVENT_TYPES: [&str; 2] = ["death.v1", "identity-change.v1"];
/// How many event ids are remembered to drop redelivered copies.
const DEDUP_WINDOW: usize = 100_000;
/// How often a summary line is printed while events keep coming.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// Customers taken from samples.json when no --customers file is given.
const SAMPLE_CUSTOMERS: usize = 20;

#[derive(Parser)]
#[command(about = "Act on death and identity-change events for your own customers")]
struct Args {
    #[command(flatten)]
    hub: HubArgs,
    /// Your customers: a CSV (`national_code,name` per line; a header line is allowed) or a
    /// JSON array of {"national_code", "name"} objects. Default: the first persons of
    /// DIR/samples.json, alive and deceased.
    #[arg(long)]
    customers: Option<PathBuf>,
    /// Consume the agency's Kafka topics from these bootstrap servers instead of the
    /// hub's gRPC stream.
    #[arg(long, value_name = "HOST:PORT")]
    kafka: Option<String>,
    /// Kafka consumer group; must start with `tabadol.<agency>.` (the only prefix the
    /// ACLs allow) [default: tabadol.<agency>.subscriber].
    #[arg(long, requires = "kafka")]
    group: Option<String>,
    /// Extra librdkafka setting for the consumer, e.g. `security.protocol=ssl` or
    /// `ssl.certificate.location=cbi.crt` (repeatable).
    #[arg(long = "kafka-config", value_name = "KEY=VALUE", requires = "kafka", value_parser = key_value)]
    kafka_config: Vec<(String, String)>,
    /// gRPC stream: deliver events after this sequence number (0 = from the beginning),
    /// instead of resuming from the state file.
    #[arg(long, conflicts_with = "kafka")]
    after: Option<u64>,
    /// gRPC stream: file remembering the last sequence seen
    /// [default: DIR/subscriber-<agency>.state].
    #[arg(long, conflicts_with = "kafka")]
    state: Option<PathBuf>,
    /// Exit after this many events (duplicates not counted).
    #[arg(long, value_name = "N")]
    exit_after: Option<u64>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// One person this agency serves.
#[derive(Debug, Clone, serde::Deserialize)]
struct Customer {
    national_code: String,
    name: String,
}

/// Reads the customer list from a CSV or JSON file.
fn read_customers(path: &Path) -> anyhow::Result<Vec<Customer>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the customer list {}", path.display()))?;
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a JSON array of {{\"national_code\": ..., \"name\": ...}} objects",
                path.display()
            )
        });
    }
    let mut customers = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((code, name)) = line.split_once(',') else {
            bail!(
                "{}:{}: expected `national_code,name`, got `{line}`",
                path.display(),
                i + 1
            );
        };
        let code = code.trim().trim_matches('"');
        if customers.is_empty() && code.eq_ignore_ascii_case("national_code") {
            continue; // header line
        }
        customers.push(Customer {
            national_code: code.to_owned(),
            name: name.trim().trim_matches('"').to_owned(),
        });
    }
    Ok(customers)
}

/// The first persons of the dev hub's samples.json, alive and deceased.
fn sample_customers(dir: &Path) -> anyhow::Result<Vec<Customer>> {
    let path = dir.join("samples.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}; give --customers FILE or run `tabadol dev --dir {}`",
            path.display(),
            dir.display()
        )
    })?;
    let samples: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let customers = ["persons_alive", "persons_deceased"]
        .iter()
        .filter_map(|k| samples[k].as_array())
        .flatten()
        .filter_map(|p| {
            Some(Customer {
                national_code: p["national_code"].as_str()?.to_owned(),
                name: p["name"].as_str().unwrap_or("(no name)").to_owned(),
            })
        })
        .take(SAMPLE_CUSTOMERS)
        .collect();
    Ok(customers)
}

/// Asks the hub for this agency's tokens of its customers: token → customer.
async fn tokenize(
    client: &mut EventsClient<Channel>,
    customers: Vec<Customer>,
) -> anyhow::Result<HashMap<String, Customer>> {
    let (valid, invalid): (Vec<_>, Vec<_>) = customers
        .into_iter()
        .partition(|c| tabadol_policy::ids::validate_national_code(&c.national_code).is_ok());
    for c in &invalid {
        eprintln!(
            "skipping customer {} ({}): not a valid national code",
            c.name, c.national_code
        );
    }
    let mut by_token = HashMap::with_capacity(valid.len());
    for batch in valid.chunks(TOKENIZE_BATCH) {
        let request = TokenizeRequest {
            national_codes: batch.iter().map(|c| c.national_code.clone()).collect(),
            ..Default::default()
        };
        let mut attempt = 0;
        let tokens = loop {
            attempt += 1;
            match client.tokenize(request.clone()).await {
                Ok(resp) => break resp.into_inner().tokens,
                // Tokenize is rate-limited per agency; wait as long as the hub says.
                Err(status) if status.code() == Code::ResourceExhausted && attempt < 10 => {
                    let delay = status
                        .get_details_retry_info()
                        .and_then(|r| r.retry_delay)
                        .unwrap_or(Duration::from_secs(1));
                    tokio::time::sleep(delay).await;
                }
                Err(status) => bail!("Tokenize failed: {}", describe_status(&status)),
            }
        };
        if tokens.len() != batch.len() {
            bail!(
                "Tokenize returned {} tokens for {} national codes",
                tokens.len(),
                batch.len()
            );
        }
        by_token.extend(tokens.into_iter().zip(batch.iter().cloned()));
    }
    Ok(by_token)
}

/// What became of the events seen so far.
#[derive(Debug, Default)]
struct Counts {
    events: u64,
    suspended: u64,
    re_verify: u64,
    not_customers: u64,
    duplicates: u64,
    undecodable: u64,
    last_sequence: u64,
}

/// Matches events against the customers and says what to do.
struct Handler {
    customers: HashMap<String, Customer>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    counts: Counts,
    exit_after: Option<u64>,
}

impl Handler {
    fn new(customers: HashMap<String, Customer>, exit_after: Option<u64>) -> Self {
        Self {
            customers,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            counts: Counts::default(),
            exit_after,
        }
    }

    /// Handles one event; `id` is its CloudEvents id (a redelivered copy has the same).
    fn handle(&mut self, id: &str, ev: &Event) {
        if !self.seen.insert(id.to_owned()) {
            self.counts.duplicates += 1;
            return;
        }
        self.seen_order.push_back(id.to_owned());
        if self.seen_order.len() > DEDUP_WINDOW {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.counts.events += 1;
        self.counts.last_sequence = self.counts.last_sequence.max(ev.sequence);
        let Some(c) = self.customers.get(&ev.subject) else {
            self.counts.not_customers += 1;
            return;
        };
        let (name, code, ty, date) = (&c.name, &c.national_code, &ev.r#type, &ev.date);
        match ty.as_str() {
            "death.v1" => {
                self.counts.suspended += 1;
                println!(
                    "SUSPEND {name} ({code}): {ty} on {date} — re-verify before any further service"
                );
            }
            _ => {
                self.counts.re_verify += 1;
                println!(
                    "RE-VERIFY {name} ({code}): {ty} on {date} — identity data changed; suspend \
                     service until re-inquired and re-authenticated through NOCR"
                );
            }
        }
    }

    fn done(&self) -> bool {
        self.exit_after.is_some_and(|n| self.counts.events >= n)
    }

    fn summary(&self) -> String {
        let c = &self.counts;
        let mut s = format!(
            "{} events: {} suspended, {} to re-verify, {} not our customers; {} duplicates dropped",
            c.events, c.suspended, c.re_verify, c.not_customers, c.duplicates
        );
        if c.undecodable > 0 {
            s.push_str(&format!(", {} undecodable", c.undecodable));
        }
        if c.last_sequence > 0 {
            s.push_str(&format!("; last sequence {}", c.last_sequence));
        }
        s
    }
}

/// The last sequence seen on the gRPC stream, kept across restarts.
struct StateFile(PathBuf);

impl StateFile {
    fn load(&self) -> anyhow::Result<Option<u64>> {
        match std::fs::read_to_string(&self.0) {
            Ok(text) => text.trim().parse().map(Some).with_context(|| {
                format!(
                    "{} does not hold a sequence number; fix or delete it, or give --after",
                    self.0.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.0.display())),
        }
    }

    /// Written to a temporary file and renamed, so a crash never leaves half a number.
    fn save(&self, sequence: u64) -> anyhow::Result<()> {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, format!("{sequence}\n"))
            .and_then(|()| std::fs::rename(&tmp, &self.0))
            .with_context(|| format!("cannot write {}", self.0.display()))
    }
}

type Shutdown = Pin<Box<dyn std::future::Future<Output = std::io::Result<()>>>>;

/// Follows the hub's gRPC stream, reconnecting (from the last sequence) when it breaks.
async fn follow_grpc(
    args: &Args,
    mut client: EventsClient<Channel>,
    handler: &mut Handler,
    shutdown: &mut Shutdown,
) -> anyhow::Result<()> {
    let state = StateFile(args.state.clone().unwrap_or_else(|| {
        args.hub
            .dir
            .join(format!("subscriber-{}.state", args.hub.agency))
    }));
    let mut after = match args.after {
        Some(n) => n,
        None => state.load()?.unwrap_or(0),
    };
    eprintln!(
        "following the hub's event stream after sequence {after} (state in {})",
        state.0.display()
    );
    let mut summary = tokio::time::interval(SUMMARY_EVERY);
    summary.tick().await;
    let mut reported = 0;
    loop {
        let mut stream = match client
            .subscribe(SubscribeRequest {
                after_sequence: after,
                types: Vec::new(),
            })
            .await
        {
            Ok(resp) => resp.into_inner(),
            Err(status) if retriable(&status) => {
                eprintln!("stream unavailable ({}); retrying in 2s", status.message());
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    _ = &mut *shutdown => return Ok(()),
                }
            }
            Err(status) => bail!("Subscribe failed: {}", describe_status(&status)),
        };
        loop {
            tokio::select! {
                item = stream.message() => match item {
                    Ok(Some(ev)) => {
                        handler.handle(&ev.id, &ev);
                        after = after.max(ev.sequence);
                        state.save(after)?;
                        if handler.done() {
                            return Ok(());
                        }
                    }
                    Ok(None) => {
                        eprintln!("the hub closed the stream; reconnecting after sequence {after}");
                        break;
                    }
                    Err(status) if retriable(&status) => {
                        eprintln!("stream broke ({}); reconnecting after sequence {after}", status.message());
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(2)) => break,
                            _ = &mut *shutdown => return Ok(()),
                        }
                    }
                    Err(status) => bail!("event stream failed: {}", describe_status(&status)),
                },
                _ = summary.tick() => {
                    if handler.counts.events != reported {
                        reported = handler.counts.events;
                        eprintln!("{}", handler.summary());
                    }
                }
                _ = &mut *shutdown => return Ok(()),
            }
        }
    }
}

/// Errors after which reconnecting can help.
fn retriable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted | Code::Internal
    )
}

/// Tells the operator which partitions the group gave this consumer, and passes
/// librdkafka's own log lines through when `--kafka-config debug=...` asks for them.
struct KafkaContext {
    verbose: bool,
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if self.verbose || (level as i32) <= RDKafkaLogLevel::Error as i32 {
            eprintln!("librdkafka {level:?} {fac}: {message}");
        }
    }
}

impl ConsumerContext for KafkaContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => eprintln!("kafka: assigned {} partitions", tpl.count()),
            Rebalance::Revoke(tpl) => eprintln!("kafka: revoked {} partitions", tpl.count()),
            Rebalance::Error(e) => eprintln!("kafka: rebalance failed: {e}"),
        }
    }
}

/// The Kafka consumer group: the agency's own prefix is the only one the ACLs allow.
fn kafka_group(args: &Args) -> anyhow::Result<String> {
    let prefix = format!("tabadol.{}.", args.hub.agency);
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("{prefix}subscriber"));
    if !group.starts_with(&prefix) || group.len() == prefix.len() {
        bail!(
            "consumer group `{group}` must start with `{prefix}` (the only prefix the Kafka \
             ACLs allow), e.g. {prefix}subscriber"
        );
    }
    Ok(group)
}

/// Consumes the agency's Kafka topics.
async fn follow_kafka(
    agency: &str,
    brokers: &str,
    group: &str,
    extra: &[(String, String)],
    handler: &mut Handler,
    shutdown: &mut Shutdown,
) -> anyhow::Result<()> {
    let topics: Vec<String> = EVENT_TYPES
        .iter()
        .map(|t| format!("tabadol.{t}.{agency}"))
        .collect();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("client.id", format!("{agency}-subscriber"))
        .set("auto.offset.reset", "earliest")
        // An offset is stored only once its event has been handled (at-least-once).
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        // The hub creates the topics with the first event; notice them soon.
        .set("topic.metadata.refresh.interval.ms", "5000")
        // Kafka's former default; with librdkafka's 45 s a restarted subscriber can wait
        // that long for its partitions (some brokers, e.g. tansu, let a join take ~half).
        .set("session.timeout.ms", "10000");
    for (k, v) in extra {
        config.set(k, v);
    }
    let verbose = extra.iter().any(|(k, _)| k == "debug");
    let consumer: StreamConsumer<KafkaContext> = config
        .create_with_context(KafkaContext { verbose })
        .with_context(|| format!("cannot create a Kafka consumer for {brokers}"))?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .with_context(|| format!("cannot subscribe to {}", topics.join(", ")))?;
    eprintln!(
        "consuming {} from {brokers} as group {group}",
        topics.join(", ")
    );
    let mut summary = tokio::time::interval(SUMMARY_EVERY);
    summary.tick().await;
    let mut reported = 0;
    let mut last_error = String::new();
    loop {
        tokio::select! {
            msg = consumer.recv() => match msg {
                Ok(m) => {
                    let ce_id = m.headers().and_then(|h| {
                        h.iter()
                            .find(|h| h.key == "ce_id")
                            .and_then(|h| h.value)
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .map(str::to_owned)
                    });
                    match Event::decode(m.payload().unwrap_or_default()) {
                        Ok(mut ev) => {
                            if ev.subject.is_empty() {
                                if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                                    ev.subject = key.to_owned();
                                }
                            }
                            let id = ce_id.unwrap_or_else(|| ev.id.clone());
                            handler.handle(&id, &ev);
                        }
                        Err(e) => {
                            handler.counts.undecodable += 1;
                            eprintln!(
                                "skipping undecodable record {}[{}]@{}: {e}",
                                m.topic(), m.partition(), m.offset()
                            );
                        }
                    }
                    consumer
                        .store_offset_from_message(&m)
                        .context("cannot store the consumer offset")?;
                    if handler.done() {
                        break;
                    }
                }
                // Mostly transient (broker restarting, topic not created yet); librdkafka
                // keeps retrying on its own. Say so once per distinct error.
                Err(e) => {
                    let text = e.to_string();
                    if text != last_error {
                        eprintln!("kafka: {text} (still trying)");
                        last_error = text;
                    }
                }
            },
            _ = summary.tick() => {
                if handler.counts.events != reported {
                    reported = handler.counts.events;
                    eprintln!("{}", handler.summary());
                }
            }
            _ = &mut *shutdown => break,
        }
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing handled since the last commit.
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        // The broker is gone: the last events will come again and be handled again, which
        // at-least-once delivery allows.
        Err(e) => eprintln!("kafka: final commit failed: {e}"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tabadol_examples::finish(run().await)
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let kafka = match &args.kafka {
        Some(brokers) => Some((brokers.clone(), kafka_group(&args)?)),
        None => None,
    };
    let customers = match &args.customers {
        Some(path) => read_customers(path)?,
        None => sample_customers(&args.hub.dir)?,
    };
    if customers.is_empty() {
        bail!("the customer list is empty");
    }
    let channel = connect(&args.hub).await?;
    let mut client = EventsClient::new(channel);
    let by_token = tokenize(&mut client, customers).await?;
    eprintln!("{} watching {} customers", args.hub.agency, by_token.len());
    let mut handler = Handler::new(by_token, args.exit_after);
    let mut shutdown: Shutdown = Box::pin(tokio::signal::ctrl_c());
    let result = match &kafka {
        Some((brokers, group)) => {
            follow_kafka(
                &args.hub.agency,
                brokers,
                group,
                &args.kafka_config,
                &mut handler,
                &mut shutdown,
            )
            .await
        }
        None => follow_grpc(&args, client, &mut handler, &mut shutdown).await,
    };
    eprintln!("{}", handler.summary());
    result
}
