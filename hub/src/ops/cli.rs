//! The `tabadol` command line (clap): serve, dev, pki, policy, audit, events.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tabadol_policy::Policy;

use crate::ops::pki::PkiLayout;

/// How long a store command waits for a just-stopped hub to release the store's lock.
const STORE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    name = "tabadol",
    version,
    about = "Tabadol national data-exchange hub"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub from a configuration file (production).
    Serve {
        /// YAML configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Only validate the configuration (files, policy, cluster section, master secret)
        /// and report every error at once; bind nothing, open no store. Exit 0 when usable.
        #[arg(long)]
        check: bool,
    },
    /// Run the hub on its embedded default: dev PKI, provider simulators, sled store.
    Dev {
        /// Directory for the PKI, the store and samples.json.
        #[arg(long, default_value = "./var/dev")]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// Policy directory (default: policy/national when present, else the embedded copy).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Relay published events to this Kafka broker (HOST:PORT); without it no Kafka
        /// is needed and events are served through Events/Subscribe.
        #[arg(long)]
        kafka: Option<String>,
        /// Let the civil-registry simulator publish (as `nocr`, through Events/Publish) a
        /// death or an identity change of a sample person every SECONDS, so subscribers
        /// see live events.
        #[arg(long, value_name = "SECONDS")]
        simulate_events: Option<f64>,
        /// Answer each inquiry only once its audit record is fsynced (group commit), as
        /// `audit.durable: true` does in `serve`.
        #[arg(long)]
        durable_audit: bool,
        /// Admin listener (metrics, dashboard, reports, events tail) [default:
        /// 127.0.0.1:9464, or a free loopback port when that one is taken].
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<SocketAddr>,
        /// Export OpenTelemetry traces over OTLP/gRPC to this collector (off by default),
        /// e.g. http://127.0.0.1:4317.
        #[arg(long, value_name = "URL")]
        otlp: Option<String>,
    },
    /// Development PKI.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Policy tools.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Usage reports from the audit log (R13).
    #[command(subcommand)]
    Report(crate::ops::report::ReportCommand),
    /// Event tools (on a stopped hub's store).
    #[command(subcommand)]
    Events(EventsCommand),
    /// Service requests from agencies (R16), on a stopped hub's store.
    #[command(subcommand)]
    Requests(crate::ops::requests::RequestsCommand),
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Deliveries to Kafka given up for a permanent reason (message too large, a topic the
    /// cluster refuses): list them, or put them back for the relay to deliver.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Follow the event log of a running hub through its admin listener: sequence, type,
    /// publisher, time, subscribers and delivery state (never a national code or token).
    Tail(crate::ops::tail::TailArgs),
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Show each dead letter: sequence, subscriber, topic, time, reason (never the
    /// national code).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Put dead letters back for delivery; the relay of the next `tabadol serve` (or
    /// `dev`) delivers each to its subscriber, with the event's original `ce_id`.
    Replay {
        #[command(flatten)]
        store: StoreArgs,
        /// Every dead letter.
        #[arg(long, conflicts_with = "seqs")]
        all: bool,
        /// Sequence numbers of the events whose dead letters to replay (see `list`).
        #[arg(value_name = "SEQ", required_unless_present = "all")]
        seqs: Vec<u64>,
    },
}

/// Where a stopped hub's store is: its configuration, or its data_dir.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The hub's configuration file (its `data_dir` holds `store/`).
    #[arg(long, conflicts_with = "dir")]
    pub config: Option<PathBuf>,
    /// The hub's data_dir (holds `store/`) [default: ./var/dev].
    #[arg(long, alias = "data-dir")]
    pub dir: Option<PathBuf>,
}

impl StoreArgs {
    /// Opens the store of a stopped hub, or says why not (none there, or locked by a
    /// running hub).
    pub fn open(&self) -> anyhow::Result<sled::Db> {
        let data_dir = match (&self.config, &self.dir) {
            (Some(config), _) => {
                let (cfg, _) = crate::ops::config::Config::load(config).map_err(|e| {
                    anyhow::anyhow!("configuration {} is not usable:\n{e}", config.display())
                })?;
                cfg.data_dir
            }
            (None, Some(dir)) => dir.clone(),
            (None, None) => PathBuf::from("./var/dev"),
        };
        let store = data_dir.join("store");
        if !store.join("db").exists() {
            anyhow::bail!(
                "{} holds no hub store: give the hub's data_dir with --dir, or its configuration with --config",
                store.display()
            );
        }
        // A hub that has just stopped may hold the lock a moment longer (its audit writer's
        // last flush): wait up to STORE_LOCK_WAIT before saying it is running.
        let started = std::time::Instant::now();
        loop {
            match sled::open(&store) {
                Ok(db) => return Ok(db),
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    if started.elapsed() >= STORE_LOCK_WAIT {
                        anyhow::bail!(
                            "the store {} is locked by a running hub: stop the hub first (these commands read and change a stopped hub's store)",
                            store.display()
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => anyhow::bail!("cannot open the store {}: {e}", store.display()),
            }
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a root, the hub certificate and one certificate per agency in the policy.
    Init {
        #[arg(long, default_value = "./var/dev/pki")]
        dir: PathBuf,
        #[arg(long, default_value = "policy/national")]
        policy: PathBuf,
    },
    /// Issue (or re-issue) one agency's client certificate.
    Issue {
        #[arg(long, default_value = "./var/dev/pki")]
        dir: PathBuf,
        #[arg(long, default_value = "policy/national")]
        policy: PathBuf,
        /// Agency id from agencies.yaml.
        agency: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory; every error is reported with file:line:column. With
    /// --ca (or --dev), also every grant's consent and approval signatures.
    Check {
        dir: PathBuf,
        #[command(flatten)]
        signatures: crate::ops::signed::SignatureArgs,
        /// A stopped hub's data_dir: every grant's `request:` must cite a service request
        /// of its agency in that hub's store.
        #[arg(long, value_name = "DATA_DIR")]
        requests: Option<PathBuf>,
    },
    /// Explain what one agency may do (grants, fields, purposes, approvals; with --ca or
    /// --dev, who consented and approved).
    Explain {
        #[arg(long, default_value = "policy/national")]
        dir: PathBuf,
        agency: String,
        #[command(flatten)]
        signatures: crate::ops::signed::SignatureArgs,
        /// A stopped hub's data_dir: also list the agency's open service requests.
        #[arg(long, value_name = "DATA_DIR")]
        requests: Option<PathBuf>,
    },
    /// Sign a grant or subscription as its provider (consent) or the secretariat
    /// (approval), or withdraw it (--withdraw): a JWS into the signatures file.
    Sign(crate::ops::signed::SignArgs),
    /// Grants added, removed and changed between two policy directories, per agency,
    /// marking grants whose signatures no longer match.
    Diff(crate::ops::signed::DiffArgs),
    /// Print the Kafka ACLs the policy implies, as `kafka-acls.sh` commands (pipe to `sh`).
    ///
    /// Only the hub may write (topics prefixed `tabadol.`, idempotent producer); each
    /// subscriber may read and describe only its own topics `tabadol.<event-type>.<agency>`
    /// and read its consumer groups prefixed `tabadol.<agency>.`; agencies without a
    /// subscription get nothing. This is deny-by-default only when the brokers run an
    /// authorizer with `allow.everyone.if.no.acl.found=false`.
    ///
    /// Principals assume Kafka's default SSL principal builder (`User:` + the certificate
    /// subject DN) and certificates whose subject is only `CN=<common name>`, as the dev
    /// PKI issues them; otherwise set `ssl.principal.mapping.rules` on the brokers and
    /// `--principal-format` to match.
    KafkaAcls {
        /// Policy directory.
        #[arg(long, default_value = "policy/national")]
        dir: PathBuf,
        /// Kafka principal of the hub (the one allowed to write).
        #[arg(long, default_value = crate::kafka::acls::DEFAULT_HUB_PRINCIPAL)]
        hub_principal: String,
        /// Kafka principal of an agency: `{cn}` is its certificate common name from
        /// agencies.yaml, `{agency}` its id.
        #[arg(long, default_value = crate::kafka::acls::DEFAULT_PRINCIPAL_FORMAT)]
        principal_format: String,
        /// `--bootstrap-server` of the printed commands.
        #[arg(long, value_name = "HOST:PORT", default_value = "localhost:9092")]
        bootstrap_server: String,
        /// `--command-config` of the printed commands: admin client properties (TLS
        /// settings of a Kafka super user).
        #[arg(long, value_name = "FILE")]
        command_config: Option<PathBuf>,
        /// Output: shell commands, or a JSON array of ACL entries.
        #[arg(long, value_enum, default_value_t = AclFormat::Commands)]
        format: AclFormat,
    },
}

/// Output format of `policy kafka-acls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AclFormat {
    /// One `kafka-acls.sh --add` command per ACL, after a `#` comment header.
    Commands,
    /// A JSON array of ACL entries.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the audit log and its signed checkpoints (a cut-off tail
    /// or a rewritten, re-hashed record is reported BROKEN with its sequence number).
    Verify {
        /// The hub's data_dir (holds `store/`). Stop the hub first: sled lets one
        /// process open a store.
        #[arg(long, default_value = "./var/dev")]
        data_dir: PathBuf,
        /// Hub certificate (PEM) whose key signed the checkpoints; repeat it for earlier
        /// certificates after a key rotation. Default: `<data_dir>/pki/hub.crt` when it
        /// exists (the `tabadol dev` layout).
        #[arg(long)]
        cert: Vec<PathBuf>,
    },
    /// Print the trail of one tracking code of one agency.
    Trace {
        #[arg(long, default_value = "./var/dev")]
        data_dir: PathBuf,
        #[arg(long)]
        agency: String,
        tracking_code: String,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a parsed command line; the exit code says whether it worked.
pub fn main(cli: Cli) -> ExitCode {
    init_tracing();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, check } => {
            if check {
                return Ok(crate::ops::cluster::check_command(&config));
            }
            let (cfg, policy) = crate::ops::config::Config::load(&config).map_err(|e| {
                anyhow::anyhow!("configuration {} is not usable:\n{e}", config.display())
            })?;
            let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
            let handle = crate::ops::app::start(&cfg, policy, listener).await?;
            crate::ops::app::spawn_policy_reload(
                handle.hub.clone(),
                crate::ops::signed::PolicyLoader::from_config(&cfg),
                handle.tls.clone(),
            );
            crate::ops::app::shutdown_signal().await;
            tracing::info!("shutting down");
            handle.stop().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev {
            dir,
            listen,
            policy,
            kafka,
            simulate_events,
            durable_audit,
            admin_listen,
            otlp,
        } => {
            let simulate_events = match simulate_events {
                Some(s) if !(s.is_finite() && s >= 0.05) => anyhow::bail!(
                    "--simulate-events {s}: give the interval in seconds, at least 0.05"
                ),
                s => s.map(std::time::Duration::from_secs_f64),
            };
            let opts = crate::ops::dev::DevOptions {
                dir,
                listen,
                policy,
                kafka,
                simulate_events,
                durable_audit,
            };
            let mut env = crate::ops::dev::prepare(&opts).await?;
            crate::ops::dev::operations(&mut env.config, admin_listen, otlp);
            let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on {listen}: {e}; choose another with --listen")
            })?;
            let handle = crate::ops::app::start(&env.config, env.policy.clone(), listener).await?;
            crate::ops::app::spawn_policy_reload(
                handle.hub.clone(),
                crate::ops::signed::PolicyLoader::from_config(&env.config),
                handle.tls.clone(),
            );
            println!("{}", crate::ops::dev::banner(&env, handle.addr));
            if let Some(admin) = handle.admin_addr {
                println!(
                    "Operations: dashboard http://{admin}/ · metrics http://{admin}/metrics · `tabadol events tail --admin http://{admin}`"
                );
            }
            let trickle = match opts.simulate_events {
                Some(every) => {
                    println!(
                        "Simulated civil registry: publishing a death or identity change as nocr every {every:?}."
                    );
                    Some(crate::ops::dev::spawn_event_trickle(
                        &env.config.data_dir.join("pki"),
                        env.dataset.clone(),
                        handle.addr,
                        every,
                    )?)
                }
                None => None,
            };
            crate::ops::app::shutdown_signal().await;
            println!("shutting down…");
            if let Some(t) = trickle {
                t.abort();
            }
            handle.stop().await?;
            env.simulators.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pki(PkiCommand::Init { dir, policy }) => {
            let policy = load_policy(&policy)?;
            let agencies = agency_names(&policy);
            let report = crate::ops::pki::ensure_dev_pki(&PkiLayout::new(&dir), &agencies)?;
            println!(
                "PKI in {}: root {}, issued {:?}",
                dir.display(),
                if report.created_root {
                    "created"
                } else {
                    "kept"
                },
                report.issued
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Pki(PkiCommand::Issue {
            dir,
            policy,
            agency,
        }) => {
            let policy = load_policy(&policy)?;
            let a = policy
                .agency(&agency)
                .ok_or_else(|| anyhow::anyhow!("agency `{agency}` is not in agencies.yaml"))?;
            let layout = PkiLayout::new(&dir);
            crate::ops::pki::issue_agency(&layout, &a.id, &a.certificate.common_name)?;
            println!(
                "issued {} and {}",
                layout.agency_cert(&a.id).display(),
                layout.agency_key(&a.id).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Check {
            dir,
            signatures,
            requests,
        }) => {
            let code = crate::ops::signed::check_command(&dir, &signatures)?;
            let Some(data_dir) = requests else {
                return Ok(code);
            };
            if code != ExitCode::SUCCESS {
                return Ok(code);
            }
            let problems = crate::ops::requests::uncited_requests(&dir, &data_dir)?;
            for p in &problems {
                eprintln!("{p}");
            }
            if problems.is_empty() {
                println!("service requests: every cited request exists");
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Policy(PolicyCommand::Sign(args)) => crate::ops::signed::sign_command(&args),
        Command::Policy(PolicyCommand::Diff(args)) => crate::ops::signed::diff_command(&args),
        Command::Policy(PolicyCommand::Explain {
            dir,
            agency,
            signatures,
            requests,
        }) => {
            let signed = crate::ops::signed::explain_lines(&dir, &signatures)?;
            let policy = match &signed {
                Some((p, _)) => p.clone(),
                None => load_policy(&dir)?,
            };
            let a = policy
                .agency(&agency)
                .ok_or_else(|| anyhow::anyhow!("agency `{agency}` is not in agencies.yaml"))?;
            println!("{} ({} / {})", a.id, a.name_en, a.name_fa);
            let grants = policy.grants_for(&a.id);
            if grants.is_empty() {
                println!("  no grants: every inquiry is denied");
            }
            for (s, g) in grants {
                println!(
                    "  {} [{}] fields {:?} purposes {:?} — approved {}",
                    s.id,
                    s.national_service_id,
                    g.fields,
                    g.purposes,
                    crate::inquiry::pipeline::approval_text(&g.approved)
                );
                for line in crate::ops::explain::grant_lines(g) {
                    println!("{line}");
                }
                if signed.is_some() {
                    println!(
                        "      signatures: {}",
                        policy
                            .signature_summary(tabadol_policy::signatures::Kind::Grant, &g.id)
                            .unwrap_or("not checked")
                    );
                }
            }
            if let Some((_, Some(report))) = &signed {
                for line in crate::ops::signed::withdrawn_lines(report, &a.id) {
                    println!("{line}");
                }
            }
            for line in crate::ops::explain::agency_lines(&policy, &a.id, requests.as_deref())? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::KafkaAcls {
            dir,
            hub_principal,
            principal_format,
            bootstrap_server,
            command_config,
            format,
        }) => {
            let policy = load_policy(&dir)?;
            let opts = crate::kafka::acls::AclOptions {
                hub_principal,
                principal_format,
            };
            let entries = crate::kafka::acls::kafka_acls(&policy, &opts)?;
            let text = match format {
                AclFormat::Commands => crate::kafka::acls::render_commands(
                    &entries,
                    &crate::kafka::acls::RenderOptions {
                        bootstrap_server,
                        command_config: command_config.map(|c| c.display().to_string()),
                        policy_dir: dir.display().to_string(),
                    },
                ),
                AclFormat::Json => crate::kafka::acls::render_json(&entries),
            };
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Verify { data_dir, cert }) => audit_verify(&data_dir, cert),
        Command::Audit(AuditCommand::Trace {
            data_dir,
            agency,
            tracking_code,
        }) => {
            let db = crate::inquiry::audit::open_store(&data_dir.join("store"), None)?;
            let trail = crate::inquiry::audit::guarded(|| {
                crate::inquiry::audit::trace_db(&db, &agency, &tracking_code)
            })?;
            for r in trail {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Events(EventsCommand::DeadLetters(cmd)) => dead_letters(cmd),
        Command::Events(EventsCommand::Tail(args)) => crate::ops::tail::run(args).await,
        Command::Report(cmd) => {
            crate::ops::report::run(cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Requests(cmd) => crate::ops::requests::requests_command(cmd),
    }
}

fn dead_letters(cmd: DeadLettersCommand) -> anyhow::Result<ExitCode> {
    use crate::events::outbox::{DeadLetter, Outbox};
    fn line(d: &DeadLetter) -> String {
        let at = jiff::Timestamp::from_microsecond(d.at_micros)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| d.at_micros.to_string());
        format!(
            "{:>10}  {:<12}  {:<36}  {}  {}",
            d.seq,
            d.subscriber(),
            d.topic,
            at,
            d.reason
        )
    }
    match cmd {
        DeadLettersCommand::List { store } => {
            let db = store.open()?;
            let list = Outbox::open(&db)?.dead_letter_list()?;
            if list.is_empty() {
                println!("no dead letters");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:>10}  {:<12}  {:<36}  {:<27}  REASON",
                "SEQUENCE", "SUBSCRIBER", "TOPIC", "TIME"
            );
            for d in &list {
                println!("{}", line(d));
            }
            println!(
                "{} dead letter(s); `tabadol events dead-letters replay --all` (or SEQ...) puts them back for delivery",
                list.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        DeadLettersCommand::Replay { store, all, seqs } => {
            let db = store.open()?;
            let outbox = Outbox::open(&db)?;
            if !all {
                let known: std::collections::HashSet<u64> =
                    outbox.dead_letter_list()?.iter().map(|d| d.seq).collect();
                let unknown: Vec<String> = seqs
                    .iter()
                    .filter(|s| !known.contains(s))
                    .map(u64::to_string)
                    .collect();
                if !unknown.is_empty() {
                    anyhow::bail!(
                        "no dead letter for sequence {}: `tabadol events dead-letters list` shows them; nothing was replayed",
                        unknown.join(", ")
                    );
                }
            }
            let moved = outbox.replay(if all { None } else { Some(seqs.as_slice()) })?;
            for d in &moved {
                println!("replay {}", line(d));
            }
            println!(
                "{} dead letter(s) put back for delivery; the relay delivers them when the hub runs",
                moved.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `tabadol audit verify`: the chain, the checkpoints' hashes and their signatures.
fn audit_verify(data_dir: &std::path::Path, mut certs: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    use crate::inquiry::audit::{open_store, verify_db, VerifyOptions};
    if certs.is_empty() {
        let dev = data_dir.join("pki").join("hub.crt");
        if !dev.is_file() {
            eprintln!(
                "audit verify: give the hub certificate with --cert FILE (tls.cert of the hub \
                 config) to check the checkpoint signatures; {} does not exist",
                dev.display()
            );
            return Ok(ExitCode::FAILURE);
        }
        certs.push(dev);
    }
    let verifier = crate::inquiry::checkpoint::CheckpointVerifier::from_pem_files(&certs[..])?;
    let store = data_dir.join("store");
    if !store.is_dir() {
        eprintln!(
            "audit verify: {} is not a store directory; give the hub's data_dir with --data-dir",
            store.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let db = match open_store(&store, None) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("audit log BROKEN: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let anchor = crate::inquiry::audit::anchor_path(&store);
    let opts = VerifyOptions {
        verifier: Some(&verifier),
        strict_signers: true,
        anchor: Some(&anchor),
    };
    match verify_db(&db, &opts) {
        Ok(report) => {
            println!("audit log intact: {report}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("audit log {}", e.verdict());
            eprintln!(
                "restore {} from a backup; keep this copy as evidence",
                store.display()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn load_policy(dir: &std::path::Path) -> anyhow::Result<Policy> {
    Policy::load_dir(dir)
        .map_err(|e| anyhow::anyhow!("policy {} is not valid:\n{e}", dir.display()))
}

fn agency_names(policy: &Policy) -> Vec<(String, String)> {
    policy
        .agencies()
        .map(|a| (a.id.clone(), a.certificate.common_name.clone()))
        .collect()
}
