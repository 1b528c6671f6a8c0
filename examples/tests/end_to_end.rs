//! The example agency backends, run as the programs a user runs, against a real hub on
//! its embedded default: `inquire` answers and is refused as the README says, and a death
//! published with `publish` reaches `subscriber`, which names the customer to suspend.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tabadol_hub::ops::app::HubHandle;
use tabadol_hub::ops::dev::{prepare, DevEnv, DevOptions};

/// The example program `name` in `dir` (`target/debug/examples`). `scripts/test.sh`
/// builds the examples as programs first (`cargo build --profile test --examples`): a
/// test run alone builds them only as test harnesses.
fn find_example(dir: &Path, name: &str) -> Option<PathBuf> {
    Some(dir.join(name)).filter(|p| p.is_file())
}

/// A compiled example of this package.
fn example(name: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/end_to_end-<hash> → target/<profile>/examples/
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("examples"))
        .unwrap();
    let path = find_example(&dir, name).unwrap_or_else(|| {
        panic!(
            "example `{name}` is not built in {}; run the suite with `bash scripts/test.sh`, or `cargo build --profile test --examples` first",
            dir.display()
        )
    });
    Command::new(path)
}

struct Dev {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    handle: HubHandle,
    env: DevEnv,
}

impl Dev {
    async fn start() -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let opts = DevOptions {
            dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            policy: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policy/national")),
            kafka: None,
            simulate_events: None,
            durable_audit: false,
        };
        let env = prepare(&opts).await.expect("dev environment");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle = tabadol_hub::ops::app::start(&env.config, env.policy.clone(), listener)
            .await
            .expect("hub starts");
        Dev {
            dir: dir.path().to_owned(),
            _dir: dir,
            handle,
            env,
        }
    }

    fn hub_args(&self, agency: &str) -> Vec<String> {
        vec![
            "--hub".into(),
            format!("https://{}", self.handle.addr),
            "--dir".into(),
            self.dir.display().to_string(),
            "--agency".into(),
            agency.into(),
        ]
    }

    fn samples(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("samples.json")).unwrap()).unwrap()
    }

    /// Runs an example to completion off the runtime's threads.
    async fn run(&self, name: &'static str, args: Vec<String>) -> Output {
        tokio::task::spawn_blocking(move || example(name).args(args).output().unwrap())
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.handle.stop().await.unwrap();
        self.env.simulators.shutdown().await;
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `inquire` prints the provider's answer for a granted call, only the granted fields for
/// a minimized grant, and the hub's PERMISSION_DENIED naming the missing grant otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inquire_example_answers_minimizes_and_is_refused() {
    let dev = Dev::start().await;
    let s = dev.samples();
    let nc = s["persons_alive"][0]["national_code"]
        .as_str()
        .unwrap()
        .to_owned();
    let mobile = s["persons_alive"][0]["mobile"].as_str().unwrap().to_owned();

    let mut args = dev.hub_args("cbi");
    args.extend(["shahkar".into(), nc.clone(), mobile.clone()]);
    let out = dev.run("inquire", args).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("matched: true"),
        "{}",
        text(&out.stdout)
    );

    let mut args = dev.hub_args("moh");
    args.extend(["identity".into(), nc.clone()]);
    let out = dev.run("inquire", args).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let first_name = dev
        .env
        .dataset
        .person(&nc)
        .map(|p| p.first_name.clone())
        .unwrap();
    assert!(stdout.contains(&first_name), "{stdout}");
    assert!(
        stdout.contains("birth_date: \"\""),
        "moh is not granted birth_date: {stdout}"
    );

    // Without --purpose the example finds no grant to take a purpose from and says so.
    let mut args = dev.hub_args("rcs");
    args.extend(["shahkar".into(), nc.clone(), mobile.clone()]);
    let out = dev.run("inquire", args).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("rcs has no grant for cra.shahkar.match"),
        "{stderr}"
    );

    // Asked anyway, the hub itself refuses, naming the missing grant.
    let mut args = dev.hub_args("rcs");
    args.extend(["--purpose".into(), "kyc".into()]);
    args.extend(["shahkar".into(), nc, mobile]);
    let out = dev.run("inquire", args).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("PermissionDenied"), "{stderr}");
    assert!(
        stderr.contains("agency rcs has no grant for service cra.shahkar.match"),
        "{stderr}"
    );
    dev.stop().await;
}

/// A death published with `publish` (as nocr) reaches `subscriber` (as cbi) over the
/// gRPC stream, which recognises its customer by token and says to suspend them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_death_reaches_the_subscriber_example() {
    let dev = Dev::start().await;
    let s = dev.samples();
    let dying = s["persons_alive"][1]["national_code"]
        .as_str()
        .unwrap()
        .to_owned();
    let name = dev
        .env
        .dataset
        .person(&dying)
        .map(|p| format!("{} {}", p.first_name, p.last_name))
        .unwrap();

    let mut args = dev.hub_args("cbi");
    args.extend([
        "--after".into(),
        "0".into(),
        "--exit-after".into(),
        "1".into(),
    ]);
    let mut subscriber: Child = example("subscriber")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it has tokenized its customers and watches the stream.
    let (tx, rx) = mpsc::channel();
    let stderr = subscriber.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("watching") => break,
            Ok(line) => seen.push(line),
            Err(_) => panic!("subscriber never started watching: {seen:?}"),
        }
    }

    let mut args = dev.hub_args("nocr");
    args.extend(["death".into(), dying.clone()]);
    let out = dev.run("publish", args).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("sequence"),
        "{}",
        text(&out.stdout)
    );

    let out = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while subscriber.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = subscriber.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        subscriber.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "subscriber: {stdout}");
    assert!(
        stdout.contains(&format!("SUSPEND {name} ({dying})")),
        "the subscriber must name its customer: {stdout}"
    );
    dev.stop().await;
}

/// The Relief Committee's eligibility check (R7) as a program against `tabadol dev`: one
/// InquireMany across five providers gives a verdict with a reason per provider; with the
/// police down, the others still answer and the verdict is undetermined, naming the police.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eligibility_example_gives_a_verdict_per_provider() {
    let dev = Dev::start().await;
    let s = dev.samples();
    let nc = s["eligibility_applicant"]["national_code"]
        .as_str()
        .expect("samples.json names an applicant")
        .to_owned();
    let out = dev.run("eligibility", dev.hub_args("ikrf")).await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains(&format!("applicant {nc}")), "{stdout}");
    for line in [
        "[ok  ] civil registry (nocr)",
        "[ok  ] judiciary",
        "[ok  ] police (military service)",
        "[info] vocational training (tvto)",
        "Verdict: ELIGIBLE",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // A made-up certificate serial: the judiciary does not know it, so not eligible.
    let mut args = dev.hub_args("ikrf");
    args.extend([nc.clone(), "--serial".into(), "1111222233334444".into()]);
    let out = dev.run("eligibility", args).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("[FAIL] judiciary"), "{stdout}");
    assert!(stdout.contains("Verdict: NOT ELIGIBLE"), "{stdout}");

    dev.env.simulators.session26["police"].shutdown().await;
    let out = dev.run("eligibility", dev.hub_args("ikrf")).await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("[??  ] police (military service)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("provider police is unavailable"),
        "{stdout}"
    );
    assert!(stdout.contains("[ok  ] civil registry (nocr)"), "{stdout}");
    assert!(stdout.contains("[ok  ] judiciary"), "{stdout}");
    assert!(stdout.contains("Verdict: UNDETERMINED"), "{stdout}");
    // Another agency has no grants for these: it gets no verdict of eligibility.
    let out = dev.run("eligibility", dev.hub_args("rcs")).await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    dev.stop().await;
}
