//! Issue 7, the event path under attack, against a real hub on 127.0.0.1: oversized
//! publishes by a non-publisher (defect 2), subject identifiers kept out of the audit log
//! (defect 2), Persian digits and invisible characters (defect 9), open Subscribe streams
//! ended by a revocation (defect 4) and manifests bounded to the retention window
//! (defect 12).

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{copy_policy, violated_fields, TestHub};
use futures::StreamExt;
use tabadol_policy::jalali::JalaliDate;
use tabadol_proto::v1::events_client::EventsClient;
use tabadol_proto::v1::{
    Event, GetManifestRequest, PublishRequest, SubscribeRequest, TokenizeRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const DEATH: &str = "death.v1";
/// Bound on any wait for something that must arrive.
const ARRIVES: Duration = Duration::from_secs(10);
/// The bound: an open stream ends this soon after its caller loses access.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);

async fn events(hub: &TestHub, agency: &str) -> EventsClient<Channel> {
    EventsClient::new(hub.channel(agency).await)
}

fn req(event_id: &str, nc: &str, date: &str) -> PublishRequest {
    PublishRequest {
        event_id: event_id.into(),
        r#type: DEATH.into(),
        national_code: nc.into(),
        date: date.into(),
    }
}

/// National code and death date of the `i`-th deceased sample person.
fn deceased(hub: &TestHub, i: usize) -> (String, String) {
    let s = hub.samples();
    let p = &s["persons_deceased"][i];
    (
        p["national_code"].as_str().unwrap().to_owned(),
        p["death_date"].as_str().unwrap().to_owned(),
    )
}

/// `s` with every ASCII digit written as a Persian digit.
fn persian(s: &str) -> String {
    s.chars()
        .map(|c| match c.to_digit(10) {
            Some(d) => char::from_u32('۰' as u32 + d).unwrap(),
            None => c,
        })
        .collect()
}

/// Total size of the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

async fn store_size(hub: &TestHub) -> u64 {
    hub.handle.db.flush_async().await.unwrap();
    dir_size(&hub.dir.path().join("store"))
}

async fn subscribe(hub: &TestHub, agency: &str) -> Streaming<Event> {
    events(hub, agency)
        .await
        .subscribe(SubscribeRequest {
            after_sequence: 0,
            types: vec![],
        })
        .await
        .unwrap_or_else(|e| panic!("{agency} subscribes: {e}"))
        .into_inner()
}

async fn next_event(stream: &mut Streaming<Event>) -> Event {
    tokio::time::timeout(ARRIVES, stream.next())
        .await
        .expect("an event arrives within 10 s")
        .expect("the stream stays open")
        .expect("an event, not an error")
}

async fn stop(hub: TestHub) {
    tokio::time::timeout(Duration::from_secs(30), hub.stop())
        .await
        .expect("the hub stops within 30 s");
}

/// Rewrites the YAML policy file `file` in `dir`, dropping from its list `list` every
/// entry whose `key` is `value`.
fn drop_entries(dir: &Path, file: &str, list: &str, key: &str, value: &str) {
    let path = dir.join(file);
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let entries = doc[list].as_sequence_mut().expect("a list");
    let before = entries.len();
    entries.retain(|e| e[key].as_str() != Some(value));
    assert!(entries.len() < before, "{file} names {value}");
    std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
}

/// Publishes one death as NOCR and returns its sequence number.
async fn publish_death(hub: &TestHub, id: &str, i: usize) -> u64 {
    let (nc, date) = deceased(hub, i);
    events(hub, "nocr")
        .await
        .publish(req(id, &nc, &date))
        .await
        .unwrap_or_else(|e| panic!("NOCR publishes {id}: {e}"))
        .into_inner()
        .sequence
}

/// Waits for the end of a stream whose caller lost access: the next item is an error
/// with `code`, within [`REVOCATION_BOUND`] of `since`, and nothing follows it.
async fn assert_ends_with(stream: &mut Streaming<Event>, code: Code, since: Instant) -> String {
    let item = tokio::time::timeout(REVOCATION_BOUND, stream.next())
        .await
        .unwrap_or_else(|_| panic!("the stream does not end within {REVOCATION_BOUND:?}"));
    let elapsed = since.elapsed();
    let status = match item {
        Some(Err(status)) => status,
        other => panic!("expected {code:?}, got {other:?}"),
    };
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        elapsed <= REVOCATION_BOUND,
        "ended {elapsed:?} after the change"
    );
    let after = tokio::time::timeout(ARRIVES, stream.next())
        .await
        .expect("the stream closes");
    assert!(after.is_none(), "nothing after the refusal: {after:?}");
    status.message().to_owned()
}

/// Defect 2: 50 publishes by cbi (not a publisher) with a 1–2 MB event_id and a 1 MB
/// date are all PERMISSION_DENIED and grow the store by less than 1 MB (before the fix:
/// 651 MB); their audit records keep neither the event id nor the date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_publishes_by_a_non_publisher_store_nothing() {
    let hub = TestHub::start().await;
    let (nc, _) = deceased(&hub, 0);
    let mut cbi = EventsClient::new(hub.channel("cbi").await).max_decoding_message_size(1 << 20);
    let before = store_size(&hub).await;
    let date = "1".repeat(1 << 20);
    let started = Instant::now();
    for i in 0..50usize {
        let event_id = "E".repeat((1 << 20) + i * 20_000);
        let err = cbi
            .publish(req(&event_id, &nc, &date))
            .await
            .expect_err("cbi does not publish");
        assert_eq!(err.code(), Code::PermissionDenied, "publish {i}: {err:?}");
        assert!(err.message().len() < 1024, "a bounded message");
        assert!(started.elapsed() < Duration::from_secs(120), "bounded run");
    }
    let grown = store_size(&hub).await.saturating_sub(before);
    eprintln!("store grew by {grown} bytes after 50 oversized publishes");
    assert!(grown < 1 << 20, "the store grew by {grown} bytes");
    let denied: Vec<_> = hub
        .handle
        .hub
        .audit()
        .iter()
        .map(|r| r.expect("audit record readable"))
        .filter(|r| r.service == "events.publish")
        .collect();
    assert_eq!(denied.len(), 50, "every refusal is audited");
    for r in &denied {
        assert_eq!(
            (r.outcome.as_str(), r.tracking_code.as_str()),
            ("denied", "-")
        );
        assert!(r.detail.len() < 512, "detail of {} bytes", r.detail.len());
        assert!(
            !r.detail.contains(&nc) && !r.detail.contains("EEEE"),
            "{r:?}"
        );
    }
    stop(hub).await;
}

/// Defect 2: a publish by NOCR with national code and date swapped is INVALID_ARGUMENT
/// naming both fields; neither its audit record nor the status carries the national code.
#[tokio::test]
async fn swapped_national_code_and_date_stay_out_of_the_audit() {
    let hub = TestHub::start().await;
    let (nc, date) = deceased(&hub, 0);
    let err = events(&hub, "nocr")
        .await
        .publish(req("SWAP-1", &date, &nc))
        .await
        .expect_err("swapped fields are refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut fields = violated_fields(&err);
    fields.sort();
    assert_eq!(fields, ["date", "national_code"]);
    assert!(!err.message().contains(&nc), "{}", err.message());
    let records: Vec<_> = hub
        .handle
        .hub
        .audit()
        .iter()
        .map(|r| r.expect("audit record readable"))
        .filter(|r| r.service == "events.publish")
        .collect();
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r.outcome, "invalid");
    for (name, value) in [("detail", &r.detail), ("tracking_code", &r.tracking_code)] {
        assert!(
            !value.contains(&nc),
            "audit {name} holds the national code: {value}"
        );
    }
    assert_eq!(hub.handle.outbox.last_seq(), 0);
    stop(hub).await;
}

/// Defect 2, the other Events calls: a non-subscriber's Tokenize and GetManifest with
/// megabyte fields are PERMISSION_DENIED before the fields are looked at; a subscriber's
/// oversized fields are INVALID_ARGUMENT naming the field, without echoing them.
#[tokio::test]
async fn other_calls_authorize_first_and_bound_their_fields() {
    let hub = TestHub::start().await;
    let huge = "9".repeat(1 << 20);
    let mut nocr = events(&hub, "nocr").await;
    let err = nocr
        .tokenize(TokenizeRequest {
            national_codes: vec![huge.clone()],
            ..Default::default()
        })
        .await
        .expect_err("NOCR subscribes to nothing");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = nocr
        .get_manifest(GetManifestRequest { day: huge.clone() })
        .await
        .expect_err("NOCR subscribes to nothing");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let mut cbi = events(&hub, "cbi").await;
    let err = cbi
        .tokenize(TokenizeRequest {
            national_codes: vec![huge.clone()],
            ..Default::default()
        })
        .await
        .expect_err("a megabyte national code");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violated_fields(&err), ["national_codes[0]"]);
    assert!(err.message().len() < 1024, "{} bytes", err.message().len());
    let err = cbi
        .get_manifest(GetManifestRequest { day: huge.clone() })
        .await
        .expect_err("a megabyte day");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().len() < 1024, "{} bytes", err.message().len());
    let err = cbi
        .subscribe(SubscribeRequest {
            after_sequence: 0,
            types: vec!["x".repeat(1000); 100],
        })
        .await
        .expect_err("a hundred kilobyte types");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violated_fields(&err), ["types"]);
    let err = cbi
        .subscribe(SubscribeRequest {
            after_sequence: 0,
            types: vec![huge.clone()],
        })
        .await
        .expect_err("an unknown megabyte type");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().len() < 1024, "{} bytes", err.message().len());
    for r in hub.handle.hub.audit().iter() {
        let r = r.expect("audit record readable");
        assert!(
            r.detail.len() < 1024 && r.tracking_code.len() < 200,
            "{r:?}"
        );
    }
    stop(hub).await;
}

/// Defect 9: a Persian-digit national code and date are accepted and delivered in Latin
/// digits (the subscriber's token is that of the Latin code); the same event in Latin
/// digits is then a no-op re-publish, not ALREADY_EXISTS; Tokenize takes Persian digits too.
#[tokio::test]
async fn persian_digits_are_accepted_and_normalized() {
    let hub = TestHub::start().await;
    let (nc, date) = deceased(&hub, 0);
    let mut nocr = events(&hub, "nocr").await;
    let fa = nocr
        .publish(req(&persian("NOCR-D-1"), &persian(&nc), &persian(&date)))
        .await
        .expect("Persian digits are accepted")
        .into_inner();
    assert!(!fa.duplicate);
    let latin = nocr
        .publish(req("NOCR-D-1", &nc, &date))
        .await
        .expect("the same event in Latin digits")
        .into_inner();
    assert!(latin.duplicate, "the same event, a no-op re-publish");
    assert_eq!(
        (latin.sequence, &latin.hub_event_id),
        (fa.sequence, &fa.hub_event_id)
    );
    assert_eq!(hub.handle.outbox.last_seq(), 1);

    let mut stream = subscribe(&hub, "cbi").await;
    let ev = next_event(&mut stream).await;
    let canonical: JalaliDate = date.parse().unwrap();
    assert_eq!(ev.date, canonical.to_string(), "delivered in Latin digits");
    assert!(ev.date.is_ascii());
    let mut cbi = events(&hub, "cbi").await;
    let tokens = cbi
        .tokenize(TokenizeRequest {
            national_codes: vec![nc.clone(), persian(&nc)],
            ..Default::default()
        })
        .await
        .expect("Persian digits tokenize")
        .into_inner()
        .tokens;
    assert_eq!(tokens[0], tokens[1], "one person, one token");
    assert_eq!(
        ev.subject, tokens[0],
        "stored canonical: the Latin code's token"
    );
    stop(hub).await;
}

/// Defect 9: invisible characters (ZWNJ, a bidi override, NUL) in the national code,
/// date or event id are INVALID_ARGUMENT saying so, naming the field.
#[tokio::test]
async fn invisible_characters_are_refused_saying_so() {
    let hub = TestHub::start().await;
    let (nc, date) = deceased(&hub, 0);
    let mut nocr = events(&hub, "nocr").await;
    let cases = [
        (
            "national_code",
            req("INV-1", &format!("{}\u{200C}{}", &nc[..5], &nc[5..]), &date),
        ),
        ("date", req("INV-2", &nc, &format!("\u{202E}{date}"))),
        ("event_id", req("INV-3\u{0}", &nc, &date)),
    ];
    for (field, r) in cases {
        let err = nocr.publish(r.clone()).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{r:?}: {err:?}");
        assert_eq!(violated_fields(&err), [field], "{}", err.message());
        assert!(
            err.message().contains("invisible character"),
            "{}",
            err.message()
        );
    }
    let err = events(&hub, "cbi")
        .await
        .tokenize(TokenizeRequest {
            national_codes: vec![format!("\u{200F}{nc}")],
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("invisible character"),
        "{}",
        err.message()
    );
    assert_eq!(hub.handle.outbox.last_seq(), 0);
    stop(hub).await;
}

/// Defect 4: cbi's open stream ends with PERMISSION_DENIED within 1 s of cbi's
/// subscription being removed from subscriptions.yaml and the policy reloaded (before the
/// fix it kept receiving new events), and gets nothing published afterwards.
#[tokio::test]
async fn stream_ends_when_the_subscription_is_removed() {
    let policy = copy_policy();
    let hub = TestHub::start_with_policy(policy.path().to_owned()).await;
    let mut stream = subscribe(&hub, "cbi").await;
    publish_death(&hub, "REV-1", 0).await;
    assert_eq!(next_event(&mut stream).await.sequence, 1);

    drop_entries(
        policy.path(),
        "subscriptions.yaml",
        "subscriptions",
        "agency",
        "cbi",
    );
    let changed = Instant::now();
    assert!(tabadol_hub::ops::app::reload_policy(&hub.handle.hub, policy.path()).await);
    publish_death(&hub, "REV-2", 1).await;
    let message = assert_ends_with(&mut stream, Code::PermissionDenied, changed).await;
    assert!(
        message.contains("cbi") && message.contains("subscriptions.yaml"),
        "{message}"
    );
    stop(hub).await;
}

/// Defect 4: cbi's open stream ends with UNAUTHENTICATED within 1 s of cbi being deleted
/// from agencies.yaml (with its grants and subscription) and the policy reloaded.
#[tokio::test]
async fn stream_ends_when_the_agency_is_removed() {
    let policy = copy_policy();
    let hub = TestHub::start_with_policy(policy.path().to_owned()).await;
    let mut stream = subscribe(&hub, "cbi").await;
    publish_death(&hub, "REV-1", 0).await;
    assert_eq!(next_event(&mut stream).await.sequence, 1);

    drop_entries(
        policy.path(),
        "subscriptions.yaml",
        "subscriptions",
        "agency",
        "cbi",
    );
    drop_entries(policy.path(), "grants.yaml", "grants", "agency", "cbi");
    drop_entries(policy.path(), "agencies.yaml", "agencies", "id", "cbi");
    let changed = Instant::now();
    assert!(
        tabadol_hub::ops::app::reload_policy(&hub.handle.hub, policy.path()).await,
        "the edited policy loads"
    );
    publish_death(&hub, "REV-2", 1).await;
    assert_ends_with(&mut stream, Code::Unauthenticated, changed).await;
    stop(hub).await;
}

/// Defect 4: cbi's open stream ends with UNAUTHENTICATED within 1 s of its certificate's
/// serial being revoked (as a reloaded CRL does), while another subscriber's stream on the
/// same hub keeps receiving events.
#[tokio::test]
async fn stream_ends_when_the_certificate_is_revoked() {
    let hub = TestHub::start().await;
    let mut cbi = subscribe(&hub, "cbi").await;
    let mut bmi = subscribe(&hub, "bmi").await;
    publish_death(&hub, "REV-1", 0).await;
    assert_eq!(next_event(&mut cbi).await.sequence, 1);
    assert_eq!(next_event(&mut bmi).await.sequence, 1);

    let pem = hub.identity("cbi").cert;
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .expect("a certificate")
        .unwrap();
    let (_, serial) = tabadol_hub::edge::tls::cert_identity(&der);
    assert!(!serial.is_empty());
    let changed = Instant::now();
    hub.handle.hub.set_revoked(HashSet::from([serial.clone()]));
    publish_death(&hub, "REV-2", 1).await;
    let message = assert_ends_with(&mut cbi, Code::Unauthenticated, changed).await;
    assert!(message.contains(&serial), "{message}");
    assert_eq!(
        next_event(&mut bmi).await.sequence,
        2,
        "bmi is not affected"
    );
    stop(hub).await;
}

/// Defect 12: GetManifest for 1/01/01 (or any day before the retention window) is
/// INVALID_ARGUMENT naming the window and stores nothing; a closed day inside it is fixed
/// and stored once.
#[tokio::test]
async fn manifests_outside_the_retention_window_store_nothing() {
    let hub = TestHub::start().await;
    let stored = hub.handle.db.open_tree("manifests").unwrap();
    let mut cbi = events(&hub, "cbi").await;
    let today = JalaliDate::in_tehran(jiff::Timestamp::now());
    let back = |days: i64| {
        JalaliDate::from_civil(
            today
                .to_civil()
                .checked_sub(jiff::Span::new().days(days))
                .unwrap(),
        )
        .to_string()
    };
    let oldest: JalaliDate = back(90).parse().unwrap();
    // Days of stored manifests older than the window (the daily task fixes the last week
    // at start-up, so the store is not empty).
    let too_old = || {
        stored
            .iter()
            .keys()
            .map(|k| {
                let k = k.unwrap();
                let day = k.split(|b| *b == 0).nth(1).unwrap().to_vec();
                String::from_utf8(day)
                    .unwrap()
                    .parse::<JalaliDate>()
                    .unwrap()
            })
            .filter(|d| *d < oldest)
            .count()
    };
    for day in [
        "1/01/01".to_owned(),
        "0001/01/01".to_owned(),
        back(91),
        back(400),
    ] {
        let err = cbi
            .get_manifest(GetManifestRequest { day: day.clone() })
            .await
            .expect_err(&format!("{day} is outside the retention window"));
        assert_eq!(err.code(), Code::InvalidArgument, "{day}: {err:?}");
        assert_eq!(violated_fields(&err), ["day"]);
        assert!(err.message().contains("90 days"), "{}", err.message());
    }
    assert_eq!(too_old(), 0, "nothing stored for refused days");
    let inside = back(30);
    let m = cbi
        .get_manifest(GetManifestRequest {
            day: inside.clone(),
        })
        .await
        .expect("a closed day inside the window")
        .into_inner();
    assert!(m.complete);
    let fixed = hub.handle.manifests.get("cbi", &inside).unwrap();
    assert!(fixed.is_some(), "a closed day inside the window is fixed");
    let again = cbi
        .get_manifest(GetManifestRequest {
            day: persian(&inside),
        })
        .await
        .expect("the same day in Persian digits")
        .into_inner();
    assert_eq!(again, m, "served from the store");
    assert_eq!(too_old(), 0);
    stop(hub).await;
}

/// Defect 12: subscribers are those recorded when an event was accepted, on every channel.
/// An event accepted while cbi was not subscribed is neither streamed to cbi nor counted in
/// its manifest after cbi subscribes, while bmi (subscribed throughout) gets both events.
#[tokio::test]
async fn an_event_accepted_before_a_subscription_is_not_streamed_or_counted() {
    let policy = copy_policy();
    let original = std::fs::read_to_string(policy.path().join("subscriptions.yaml")).unwrap();
    drop_entries(
        policy.path(),
        "subscriptions.yaml",
        "subscriptions",
        "agency",
        "cbi",
    );
    let hub = TestHub::start_with_policy(policy.path().to_owned()).await;
    let first = publish_death(&hub, "SUB-1", 0).await;
    std::fs::write(policy.path().join("subscriptions.yaml"), original).unwrap();
    assert!(tabadol_hub::ops::app::reload_policy(&hub.handle.hub, policy.path()).await);
    let second = publish_death(&hub, "SUB-2", 1).await;

    let mut cbi = subscribe(&hub, "cbi").await;
    assert_eq!(
        next_event(&mut cbi).await.sequence,
        second,
        "cbi starts at SUB-2"
    );
    let mut bmi = subscribe(&hub, "bmi").await;
    assert_eq!(next_event(&mut bmi).await.sequence, first);
    assert_eq!(next_event(&mut bmi).await.sequence, second);

    let today = JalaliDate::in_tehran(jiff::Timestamp::now()).to_string();
    let count = |agency: &'static str| {
        let hub = &hub;
        let today = today.clone();
        async move {
            events(hub, agency)
                .await
                .get_manifest(GetManifestRequest { day: today })
                .await
                .unwrap_or_else(|e| panic!("{agency} manifest: {e}"))
                .into_inner()
                .count
        }
    };
    assert_eq!(count("cbi").await, 1, "cbi's manifest counts only SUB-2");
    assert_eq!(count("bmi").await, 2);
    stop(hub).await;
}
