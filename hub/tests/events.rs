//! The event path end to end (R5): NOCR publishes over mTLS into the durable outbox,
//! subscribers stream their own tokenized events, tokenize the people they serve and
//! check daily manifests — against a real hub with the shipped national policy.

mod common;

use std::time::Duration;

use common::{violated_fields, TestHub};
use futures::StreamExt;
use prost::Message;
use sha2::{Digest, Sha256};
use tabadol_policy::jalali::JalaliDate;
use tabadol_proto::v1::events_client::EventsClient;
use tabadol_proto::v1::{
    Event, GetManifestRequest, PublishRequest, PublishResponse, SubscribeRequest, TokenizeRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const DEATH: &str = "death.v1";
const CHANGE: &str = "identity-change.v1";
/// Generous bound on any wait for an event that must arrive.
const ARRIVES: Duration = Duration::from_secs(10);
/// How long we watch for an event that must not arrive.
const QUIET: Duration = Duration::from_millis(500);

async fn events(hub: &TestHub, agency: &str) -> EventsClient<Channel> {
    EventsClient::new(hub.channel(agency).await)
}

fn req(event_id: &str, event_type: &str, nc: &str, date: &str) -> PublishRequest {
    PublishRequest {
        event_id: event_id.into(),
        r#type: event_type.into(),
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

/// The national code of the `i`-th living sample person.
fn alive(hub: &TestHub, i: usize) -> String {
    hub.alive(i).0
}

/// `nc` with a wrong check digit.
fn bad_checksum(nc: &str) -> String {
    let last = nc.as_bytes()[9] - b'0';
    format!("{}{}", &nc[..9], (last + 1) % 10)
}

/// Publishes as NOCR and expects success.
async fn publish(client: &mut EventsClient<Channel>, r: PublishRequest) -> PublishResponse {
    client
        .publish(r.clone())
        .await
        .unwrap_or_else(|e| panic!("publishing {r:?} failed: {e}"))
        .into_inner()
}

/// One published event as the test remembers it.
#[derive(Debug, Clone)]
struct Published {
    nc: String,
    event_type: String,
    date: String,
    ack: PublishResponse,
}

/// Publishes `n` events as NOCR (deaths of the deceased samples, identity changes of the
/// living ones, alternating), with event ids `{prefix}-{i}`.
async fn publish_n(hub: &TestHub, prefix: &str, from: usize, n: usize) -> Vec<Published> {
    let mut nocr = events(hub, "nocr").await;
    let mut out = Vec::new();
    for i in from..from + n {
        let (event_type, nc, date) = if i % 2 == 0 {
            let (nc, date) = deceased(hub, (i / 2) % 5);
            (DEATH, nc, date)
        } else {
            (CHANGE, alive(hub, (i / 2) % 5), "1405/08/30".to_owned())
        };
        let ack = publish(
            &mut nocr,
            req(&format!("{prefix}-{i}"), event_type, &nc, &date),
        )
        .await;
        out.push(Published {
            nc,
            event_type: event_type.into(),
            date,
            ack,
        });
    }
    out
}

async fn subscribe(
    hub: &TestHub,
    agency: &str,
    after_sequence: u64,
    types: &[&str],
) -> Streaming<Event> {
    events(hub, agency)
        .await
        .subscribe(SubscribeRequest {
            after_sequence,
            types: types.iter().map(|t| t.to_string()).collect(),
        })
        .await
        .unwrap_or_else(|e| panic!("{agency} subscribes: {e}"))
        .into_inner()
}

/// The next event of the stream, waiting at most [`ARRIVES`].
async fn next_event(stream: &mut Streaming<Event>) -> Event {
    tokio::time::timeout(ARRIVES, stream.next())
        .await
        .expect("an event arrives within 10 s")
        .expect("the stream stays open")
        .expect("the stream yields an event, not an error")
}

async fn take(stream: &mut Streaming<Event>, n: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_event(stream).await);
    }
    out
}

/// Asserts nothing more arrives on the stream for a while.
async fn assert_quiet(stream: &mut Streaming<Event>) {
    if let Ok(item) = tokio::time::timeout(QUIET, stream.next()).await {
        panic!("no further event expected, got {item:?}");
    }
}

async fn tokenize(hub: &TestHub, agency: &str, codes: &[String]) -> Vec<String> {
    events(hub, agency)
        .await
        .tokenize(TokenizeRequest {
            national_codes: codes.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{agency} tokenizes: {e}"))
        .into_inner()
        .tokens
}

/// The national code appears nowhere in what the subscriber receives: not in any field,
/// not in the bytes on the wire.
fn assert_no_national_code(ev: &Event, nc: &str) {
    for (name, value) in [
        ("id", &ev.id),
        ("type", &ev.r#type),
        ("subject", &ev.subject),
        ("date", &ev.date),
        ("source", &ev.source),
    ] {
        assert!(
            !value.contains(nc),
            "event field {name} `{value}` carries the national code {nc}"
        );
    }
    let wire = ev.encode_to_vec();
    assert!(
        !wire.windows(nc.len()).any(|w| w == nc.as_bytes()),
        "the encoded event carries the national code {nc}"
    );
}

/// Stops the hub, failing instead of hanging if it does not stop (open Subscribe streams
/// must not keep it waiting: see `stop_ends_open_streams`).
async fn stop(hub: TestHub) {
    tokio::time::timeout(Duration::from_secs(30), hub.stop())
        .await
        .expect("the hub stops within 30 s");
}

fn today() -> JalaliDate {
    JalaliDate::in_tehran(jiff::Timestamp::now())
}

/// Hex SHA-256 over `id|type|subject|date\n` of `events`, as a subscriber computes it.
fn digest(events: &[Event]) -> String {
    let mut h = Sha256::new();
    for e in events {
        h.update(format!("{}|{}|{}|{}\n", e.id, e.r#type, e.subject, e.date));
    }
    hex::encode(h.finalize())
}

/// NOCR publishes: the hub acknowledges with dense sequence numbers and its own event id;
/// re-publishing the same event id returns the original acknowledgement and adds nothing.
#[tokio::test]
async fn publish_acknowledges_and_republish_is_a_noop() {
    let hub = TestHub::start().await;
    let mut nocr = events(&hub, "nocr").await;
    assert_eq!(hub.handle.outbox.last_seq(), 0);

    let (dead, death_date) = deceased(&hub, 0);
    let first = publish(&mut nocr, req("NOCR-D-0001", DEATH, &dead, &death_date)).await;
    assert_eq!(first.sequence, 1);
    assert!(!first.duplicate);
    uuid::Uuid::parse_str(&first.hub_event_id).expect("hub_event_id is a UUID");
    let accepted = first.accepted_at.expect("accepted_at is set");
    let now = jiff::Timestamp::now().as_second();
    assert!(
        (accepted.seconds - now).abs() < 60,
        "accepted_at {accepted:?} is not now ({now})"
    );
    assert_eq!(hub.handle.outbox.last_seq(), 1);

    let changed = alive(&hub, 0);
    let second = publish(
        &mut nocr,
        req("NOCR-C-0001", CHANGE, &changed, "1405/08/30"),
    )
    .await;
    assert_eq!(second.sequence, 2);
    assert!(!second.duplicate);
    assert_ne!(second.hub_event_id, first.hub_event_id);
    assert_eq!(hub.handle.outbox.last_seq(), 2);

    // The same publisher event id again, e.g. after a timeout on NOCR's side.
    let again = publish(&mut nocr, req("NOCR-D-0001", DEATH, &dead, &death_date)).await;
    assert!(
        again.duplicate,
        "re-publishing must be reported as duplicate"
    );
    assert_eq!(again.sequence, first.sequence);
    assert_eq!(again.hub_event_id, first.hub_event_id);
    assert_eq!(again.accepted_at, first.accepted_at);
    assert_eq!(
        hub.handle.outbox.last_seq(),
        2,
        "no new event in the outbox"
    );

    // A subscriber sees each event once.
    let mut stream = subscribe(&hub, "cbi", 0, &[]).await;
    let got = take(&mut stream, 2).await;
    assert_eq!(
        got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [first.hub_event_id.as_str(), second.hub_event_id.as_str()]
    );
    assert_quiet(&mut stream).await;
    stop(hub).await;
}

/// Malformed events are refused with INVALID_ARGUMENT naming the bad field, and nothing
/// reaches the outbox.
#[tokio::test]
async fn malformed_publish_names_the_field_and_stores_nothing() {
    let hub = TestHub::start().await;
    let mut nocr = events(&hub, "nocr").await;
    let (nc, date) = deceased(&hub, 0);
    let cases = [
        (
            "national_code",
            req("BAD-1", DEATH, &bad_checksum(&nc), &date),
        ),
        ("national_code", req("BAD-2", DEATH, "12345", &date)),
        ("national_code", req("BAD-3", DEATH, "", &date)),
        ("type", req("BAD-4", "marriage.v1", &nc, &date)),
        ("type", req("BAD-5", "", &nc, &date)),
        ("date", req("BAD-6", DEATH, &nc, "")),
        ("date", req("BAD-7", DEATH, &nc, "1405/13/01")),
        ("date", req("BAD-8", DEATH, &nc, "1405/07/31")),
        ("date", req("BAD-9", DEATH, &nc, "30 Aban 1405")),
        // A Gregorian date in Jalali clothes: year 2025 of the Jalali calendar is
        // six centuries away, no death or change can be registered then.
        ("date", req("BAD-10", DEATH, &nc, "2025-11-21")),
        ("event_id", req("", DEATH, &nc, &date)),
        ("event_id", req("   ", DEATH, &nc, &date)),
    ];
    for (field, r) in cases {
        let err = nocr
            .publish(r.clone())
            .await
            .expect_err(&format!("{r:?} must be refused"));
        assert_eq!(err.code(), Code::InvalidArgument, "{r:?}: {err:?}");
        assert_eq!(violated_fields(&err), [field], "{r:?}: {}", err.message());
    }
    // Several problems at once are all named.
    let err = nocr
        .publish(req("", "x", "1", ""))
        .await
        .expect_err("all wrong");
    let mut fields = violated_fields(&err);
    fields.sort();
    assert_eq!(fields, ["date", "event_id", "national_code", "type"]);

    assert_eq!(hub.handle.outbox.last_seq(), 0, "the outbox stays empty");
    // The hub still works: a correct event gets sequence 1.
    let ok = publish(&mut nocr, req("GOOD-1", DEATH, &nc, &date)).await;
    assert_eq!(ok.sequence, 1);
    stop(hub).await;
}

/// Only the publisher named in policy may publish.
#[tokio::test]
async fn non_publisher_is_denied() {
    let hub = TestHub::start().await;
    let (nc, date) = deceased(&hub, 0);
    for agency in ["cbi", "cra", "ihio"] {
        let err = events(&hub, agency)
            .await
            .publish(req("FAKE-1", DEATH, &nc, &date))
            .await
            .expect_err("only NOCR publishes deaths");
        assert_eq!(err.code(), Code::PermissionDenied, "{agency}: {err:?}");
        assert!(err.message().contains(agency), "{}", err.message());
    }
    assert_eq!(hub.handle.outbox.last_seq(), 0, "outbox unchanged");
    // NOCR's own event with the same id is unaffected by the refused attempts.
    let ok = publish(
        &mut events(&hub, "nocr").await,
        req("FAKE-1", DEATH, &nc, &date),
    )
    .await;
    assert_eq!((ok.sequence, ok.duplicate), (1, false));
    stop(hub).await;
}

/// A subscriber streams every event in sequence order; the subject is its own token for
/// the person (the one Tokenize gives it), never the national code; another subscriber
/// gets a different token for the same person.
#[tokio::test]
async fn subscriber_gets_own_tokens_in_order() {
    let hub = TestHub::start().await;
    let published = publish_n(&hub, "ORD", 0, 4).await;

    let mut cbi = subscribe(&hub, "cbi", 0, &[]).await;
    let got = take(&mut cbi, published.len()).await;
    assert_quiet(&mut cbi).await;

    let codes: Vec<String> = published.iter().map(|p| p.nc.clone()).collect();
    let cbi_tokens = tokenize(&hub, "cbi", &codes).await;
    let ihio_tokens = tokenize(&hub, "ihio", &codes).await;

    for (i, (ev, p)) in got.iter().zip(&published).enumerate() {
        assert_eq!(ev.sequence, i as u64 + 1, "sequence order");
        assert_eq!(ev.sequence, p.ack.sequence);
        assert_eq!(ev.id, p.ack.hub_event_id);
        assert_eq!(ev.r#type, p.event_type);
        assert_eq!(ev.date, p.date);
        assert_eq!(ev.time, p.ack.accepted_at);
        assert!(ev.source.contains("nocr"), "source {}", ev.source);
        assert_eq!(ev.subject.len(), 64, "subject is a hex HMAC-SHA256");
        assert!(ev.subject.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(ev.subject, cbi_tokens[i], "subject = cbi's Tokenize token");
        for p in &published {
            assert_no_national_code(ev, &p.nc);
        }
    }

    let mut ihio = subscribe(&hub, "ihio", 0, &[]).await;
    let theirs = take(&mut ihio, published.len()).await;
    for (i, (a, b)) in got.iter().zip(&theirs).enumerate() {
        assert_eq!((a.id.as_str(), a.sequence), (b.id.as_str(), b.sequence));
        assert_ne!(a.subject, b.subject, "tokens differ per subscriber");
        assert_eq!(b.subject, ihio_tokens[i]);
    }

    // Asking for one type gives exactly the events of that type.
    let mut deaths = subscribe(&hub, "cbi", 0, &[DEATH]).await;
    let want: Vec<&str> = published
        .iter()
        .filter(|p| p.event_type == DEATH)
        .map(|p| p.ack.hub_event_id.as_str())
        .collect();
    let only = take(&mut deaths, want.len()).await;
    assert_eq!(only.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), want);
    assert_quiet(&mut deaths).await;
    stop(hub).await;
}

/// A subscriber that drops its stream and resumes after the last sequence it saw gets
/// exactly the rest — also what was published while it was away — then live events.
#[tokio::test]
async fn resume_after_last_seen_has_no_gaps_or_duplicates() {
    let hub = TestHub::start().await;
    let first = publish_n(&hub, "RES", 0, 5).await;

    let mut stream = subscribe(&hub, "cbi", 0, &[]).await;
    let seen = take(&mut stream, 3).await;
    assert_eq!(
        seen.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let last_seen = seen.last().unwrap().sequence;
    drop(stream);

    // Published while cbi is disconnected.
    let away = publish_n(&hub, "RES", 5, 3).await;

    let mut stream = subscribe(&hub, "cbi", last_seen, &[]).await;
    let rest = take(&mut stream, 5).await;
    let expected: Vec<&str> = first[3..]
        .iter()
        .chain(&away)
        .map(|p| p.ack.hub_event_id.as_str())
        .collect();
    assert_eq!(
        rest.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(
        rest.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [4, 5, 6, 7, 8]
    );
    assert_quiet(&mut stream).await;

    // Still connected: a new event arrives live, once.
    let live = publish_n(&hub, "RES", 8, 1).await;
    let ev = next_event(&mut stream).await;
    assert_eq!(ev.id, live[0].ack.hub_event_id);
    assert_eq!(ev.sequence, 9);
    assert_quiet(&mut stream).await;

    // Resuming after the newest sequence waits instead of replaying.
    let mut caught_up = subscribe(&hub, "cbi", 9, &[]).await;
    assert_quiet(&mut caught_up).await;
    stop(hub).await;
}

/// An empty outbox: the stream waits, and an event published later arrives.
#[tokio::test]
async fn live_event_arrives_on_open_stream() {
    let hub = TestHub::start().await;
    let mut stream = subscribe(&hub, "moh", 0, &[]).await;
    assert_quiet(&mut stream).await;

    let p = publish_n(&hub, "LIVE", 0, 2).await;
    let got = take(&mut stream, 2).await;
    assert_eq!(got[0].id, p[0].ack.hub_event_id);
    assert_eq!(got[1].id, p[1].ack.hub_event_id);
    assert_eq!(
        got[0].subject,
        tokenize(&hub, "moh", std::slice::from_ref(&p[0].nc)).await[0]
    );
    stop(hub).await;
}

/// Agencies without a subscription cannot stream; subscribers cannot ask for types they
/// are not subscribed to.
#[tokio::test]
async fn subscribe_is_denied_without_subscription() {
    let hub = TestHub::start().await;
    publish_n(&hub, "DENY", 0, 2).await;
    for agency in ["cra", "inta", "nocr", "rcs"] {
        let err = events(&hub, agency)
            .await
            .subscribe(SubscribeRequest {
                after_sequence: 0,
                types: vec![],
            })
            .await
            .expect_err("no subscription in policy");
        assert_eq!(err.code(), Code::PermissionDenied, "{agency}: {err:?}");
    }
    for types in [
        vec!["privatization-dataset.v1".to_owned()],
        vec![DEATH.to_owned(), "marriage.v1".to_owned()],
    ] {
        let err = events(&hub, "cbi")
            .await
            .subscribe(SubscribeRequest {
                after_sequence: 0,
                types: types.clone(),
            })
            .await
            .expect_err("type not subscribed");
        assert_eq!(err.code(), Code::PermissionDenied, "{types:?}: {err:?}");
    }
    stop(hub).await;
}

/// Tokenize serves subscribers only, keeps request order, and validates every code.
#[tokio::test]
async fn tokenize_for_subscribers_only_and_validated() {
    let hub = TestHub::start().await;
    let a = alive(&hub, 0);
    let b = alive(&hub, 1);

    for agency in ["nocr", "cra"] {
        let err = events(&hub, agency)
            .await
            .tokenize(TokenizeRequest {
                national_codes: vec![a.clone()],
                ..Default::default()
            })
            .await
            .expect_err("not a subscriber");
        assert_eq!(err.code(), Code::PermissionDenied, "{agency}: {err:?}");
    }

    let t = tokenize(&hub, "cbi", &[a.clone(), b.clone(), a.clone()]).await;
    assert_eq!(t.len(), 3);
    assert_eq!(t[0], t[2], "same person, same token");
    assert_ne!(t[0], t[1]);
    assert!(t.iter().all(|x| x.len() == 64 && !x.contains(&a)));
    let again = tokenize(&hub, "cbi", std::slice::from_ref(&b)).await;
    assert_eq!(again, [t[1].clone()], "tokens are stable");

    let mut cbi = events(&hub, "cbi").await;
    let err = cbi
        .tokenize(TokenizeRequest {
            national_codes: vec![a.clone(), bad_checksum(&b), a.clone(), "abc".into()],
            ..Default::default()
        })
        .await
        .expect_err("invalid codes");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&err),
        ["national_codes[1]", "national_codes[3]"]
    );

    let too_many = vec![a.clone(); 1001];
    let err = cbi
        .tokenize(TokenizeRequest {
            national_codes: too_many,
            ..Default::default()
        })
        .await
        .expect_err("more than 1000");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["national_codes"]);

    let err = cbi
        .tokenize(TokenizeRequest {
            national_codes: vec![],
            ..Default::default()
        })
        .await
        .expect_err("none");
    assert_eq!(err.code(), Code::InvalidArgument);

    let max = tokenize(&hub, "cbi", &vec![b.clone(); 1000]).await;
    assert_eq!(max.len(), 1000);
    assert!(max.iter().all(|x| *x == t[1]));
    stop(hub).await;
}

/// Hammering Tokenize hits the per-agency limit (5/s, burst 10); other agencies are
/// unaffected, and the limit recovers.
#[tokio::test]
async fn tokenize_is_rate_limited_per_agency() {
    let hub = TestHub::start().await;
    let nc = vec![alive(&hub, 0)];
    let mut cbi = events(&hub, "cbi").await;
    let mut ok = 0;
    let mut exhausted = None;
    for _ in 0..50 {
        match cbi
            .tokenize(TokenizeRequest {
                national_codes: nc.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => ok += 1,
            Err(e) => {
                exhausted = Some(e);
                break;
            }
        }
    }
    let err = exhausted.expect("50 calls in a burst must hit the limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(ok >= 10, "the burst of 10 is allowed, got {ok}");
    assert!(ok < 50);

    // Another subscriber has its own budget.
    assert_eq!(tokenize(&hub, "ihio", &nc).await.len(), 1);

    // After a pause cbi may call again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(tokenize(&hub, "cbi", &nc).await.len(), 1);
    stop(hub).await;
}

/// Every Tokenize call is audited — allowed or denied — without the national codes.
#[tokio::test]
async fn tokenize_calls_are_audited() {
    let hub = TestHub::start().await;
    let nc = alive(&hub, 0);
    tokenize(&hub, "cbi", &[nc.clone(), alive(&hub, 1)]).await;
    let denied = events(&hub, "cra")
        .await
        .tokenize(TokenizeRequest {
            national_codes: vec![nc.clone()],
            ..Default::default()
        })
        .await
        .expect_err("cra is no subscriber");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let invalid = events(&hub, "cbi")
        .await
        .tokenize(TokenizeRequest {
            national_codes: vec![bad_checksum(&nc)],
            ..Default::default()
        })
        .await
        .expect_err("bad code");
    assert_eq!(invalid.code(), Code::InvalidArgument);

    let records: Vec<_> = hub
        .handle
        .hub
        .audit()
        .iter()
        .map(|r| r.expect("audit record readable"))
        .filter(|r| r.service == "events.tokenize")
        .collect();
    let outcomes: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.agency.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [("cbi", "ok"), ("cra", "denied"), ("cbi", "invalid")],
        "{records:#?}"
    );
    for r in &records {
        assert!(
            !r.detail.contains(&nc) && !r.tracking_code.contains(&nc),
            "audit must not hold national codes: {r:?}"
        );
    }
    assert!(hub.handle.hub.audit().verify().unwrap() >= 3);
    stop(hub).await;
}

/// Today's manifest counts the events a subscriber received and its digest is the hash
/// the subscriber computes over them; other days, other subscribers and bad days behave.
#[tokio::test]
async fn manifest_matches_what_subscriber_received() {
    let hub = TestHub::start().await;
    let day_before = today();
    let published = publish_n(&hub, "MAN", 0, 5).await;

    let got = take(&mut subscribe(&hub, "cbi", 0, &[]).await, published.len()).await;
    let mut cbi = events(&hub, "cbi").await;
    let m = cbi
        .get_manifest(GetManifestRequest {
            day: day_before.to_string(),
        })
        .await
        .expect("cbi's manifest")
        .into_inner();
    if today() != day_before {
        eprintln!("Tehran midnight passed during the test; manifest figures not comparable");
        stop(hub).await;
        return;
    }
    assert_eq!(m.agency, "cbi");
    assert_eq!(m.day, day_before.to_string());
    assert_eq!(m.count, published.len() as u64);
    assert_eq!((m.first_sequence, m.last_sequence), (1, 5));
    assert!(!m.complete, "today is not over");
    assert_eq!(m.digest, digest(&got), "digest over what cbi received");
    assert_ne!(m.digest, digest(&got[..4]), "a missed event shows");

    // ihio: same count, its own tokens, so its own digest.
    let ihio_got = take(&mut subscribe(&hub, "ihio", 0, &[]).await, published.len()).await;
    let mi = events(&hub, "ihio")
        .await
        .get_manifest(GetManifestRequest {
            day: day_before.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mi.count, m.count);
    assert_eq!(mi.digest, digest(&ihio_got));
    assert_ne!(mi.digest, m.digest);

    // Today is open: computed, never stored.
    assert_eq!(
        hub.handle
            .manifests
            .get("cbi", &day_before.to_string())
            .unwrap(),
        None,
        "an open day is not stored"
    );

    // Yesterday (also the default): nothing, and complete — unless the test runs within
    // CLOSE_GRACE after Tehran midnight, when yesterday is not closed yet.
    let yesterday = JalaliDate::from_civil(day_before.to_civil().yesterday().unwrap());
    let closed_before =
        tabadol_hub::events::manifests::day_closed(yesterday, jiff::Timestamp::now());
    for day in [String::new(), yesterday.to_string()] {
        let y = cbi
            .get_manifest(GetManifestRequest { day })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(y.day, yesterday.to_string());
        assert_eq!(y.count, 0);
        if closed_before {
            assert!(y.complete);
        }
        assert_eq!(y.digest, hex::encode(Sha256::digest(b"")));
    }
    if closed_before {
        let stored = hub
            .handle
            .manifests
            .get("cbi", &yesterday.to_string())
            .unwrap()
            .expect("a closed day is stored");
        assert_eq!(stored.count, 0);
    }

    for agency in ["cra", "nocr"] {
        let err = events(&hub, agency)
            .await
            .get_manifest(GetManifestRequest {
                day: day_before.to_string(),
            })
            .await
            .expect_err("no subscription");
        assert_eq!(err.code(), Code::PermissionDenied, "{agency}: {err:?}");
    }
    let tomorrow = JalaliDate::from_civil(today().to_civil().tomorrow().unwrap()).to_string();
    for bad in ["1405/13/01", "yesterday", "1405-07-31", tomorrow.as_str()] {
        let err = cbi
            .get_manifest(GetManifestRequest { day: bad.into() })
            .await
            .expect_err("bad day");
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
        assert_eq!(violated_fields(&err), ["day"], "{bad}");
    }
    stop(hub).await;
}

/// Stopping the hub ends open Subscribe streams — with UNAVAILABLE naming where to resume —
/// instead of waiting for them forever (a graceful stop waits for calls in flight, and a
/// subscription never finishes by itself).
#[tokio::test]
async fn stop_ends_open_streams() {
    let hub = TestHub::start().await;
    publish_n(&hub, "STOP", 0, 2).await;
    let mut reading = subscribe(&hub, "cbi", 0, &[]).await;
    assert_eq!(take(&mut reading, 2).await.len(), 2);
    // Connected but has not read anything yet.
    let mut idle = subscribe(&hub, "ihio", 0, &[]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    tokio::time::timeout(ARRIVES, hub.stop())
        .await
        .expect("the hub stops within 10 s while subscribers are connected");

    let end = tokio::time::timeout(ARRIVES, reading.next())
        .await
        .expect("the open stream ends");
    let status = end.expect("a final status").expect_err("not an event");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("after_sequence = 2"),
        "{}",
        status.message()
    );
    // The idle subscriber still gets what was queued, then where to resume.
    assert_eq!(take(&mut idle, 2).await.len(), 2);
    let status = tokio::time::timeout(ARRIVES, idle.next())
        .await
        .expect("the idle stream ends")
        .expect("a final status")
        .expect_err("not an event");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("after_sequence = 2"));
}

/// Re-using a publisher event id for a different event (another person, type or date) is
/// ALREADY_EXISTS naming the event id — without echoing any national code — and adds
/// nothing; the same event again is still the original acknowledgement.
#[tokio::test]
async fn republishing_an_event_id_for_another_event_is_refused() {
    let hub = TestHub::start().await;
    let mut nocr = events(&hub, "nocr").await;
    let (dead, death_date) = deceased(&hub, 0);
    let (other, other_date) = deceased(&hub, 1);
    let first = publish(&mut nocr, req("NOCR-D-0042", DEATH, &dead, &death_date)).await;

    for r in [
        req("NOCR-D-0042", DEATH, &other, &death_date),
        req("NOCR-D-0042", CHANGE, &dead, "1405/08/30"),
        req("NOCR-D-0042", DEATH, &other, &other_date),
    ] {
        let err = nocr
            .publish(r.clone())
            .await
            .expect_err(&format!("{r:?} reuses the event id for another event"));
        assert_eq!(err.code(), Code::AlreadyExists, "{r:?}: {err:?}");
        let msg = err.message();
        assert!(msg.contains("NOCR-D-0042"), "{msg}");
        assert!(msg.contains("already used for a different event"), "{msg}");
        assert!(
            !msg.contains(&dead) && !msg.contains(&other),
            "the message echoes a national code: {msg}"
        );
    }
    assert_eq!(hub.handle.outbox.last_seq(), 1, "nothing was added");

    let again = publish(&mut nocr, req("NOCR-D-0042", DEATH, &dead, &death_date)).await;
    assert!(again.duplicate);
    assert_eq!(
        (again.sequence, again.hub_event_id, again.accepted_at),
        (first.sequence, first.hub_event_id, first.accepted_at)
    );

    // The refusals are audited, without the national codes.
    let conflicts: Vec<_> = hub
        .handle
        .hub
        .audit()
        .iter()
        .map(|r| r.expect("audit record readable"))
        .filter(|r| r.service == "events.publish" && r.outcome == "conflict")
        .collect();
    assert_eq!(conflicts.len(), 3, "{conflicts:#?}");
    assert!(conflicts
        .iter()
        .all(|r| !r.detail.contains(&dead) && !r.detail.contains(&other)));
    stop(hub).await;
}

/// Four publishers at once (50 events each) while a subscriber streams: the subscriber
/// gets exactly sequences 1..=200, in order, each acknowledged event once — no gap, no
/// duplicate, nothing unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_stream_without_gaps() {
    const TASKS: usize = 4;
    const EACH: usize = 50;
    let hub = std::sync::Arc::new(TestHub::start().await);
    let mut stream = subscribe(&hub, "cbi", 0, &[]).await;
    let (nc, date) = deceased(&hub, 0);

    let publishers: Vec<_> = (0..TASKS)
        .map(|t| {
            let hub = hub.clone();
            let (nc, date) = (nc.clone(), date.clone());
            tokio::spawn(async move {
                let mut nocr = events(&hub, "nocr").await;
                let mut acks = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    let ack =
                        publish(&mut nocr, req(&format!("CONC-{t}-{i}"), DEATH, &nc, &date)).await;
                    assert!(!ack.duplicate);
                    acks.push(ack);
                }
                acks
            })
        })
        .collect();
    let got = take(&mut stream, TASKS * EACH).await;
    let mut acks = Vec::new();
    for p in publishers {
        acks.extend(p.await.expect("publisher task"));
    }
    assert_eq!(
        got.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (1..=(TASKS * EACH) as u64).collect::<Vec<_>>(),
        "exactly 1..=200 in order"
    );
    acks.sort_by_key(|a| a.sequence);
    assert_eq!(
        acks.iter().map(|a| a.sequence).collect::<Vec<_>>(),
        (1..=(TASKS * EACH) as u64).collect::<Vec<_>>(),
        "dense acknowledgements"
    );
    for (ev, ack) in got.iter().zip(&acks) {
        assert_eq!(ev.id, ack.hub_event_id, "sequence {}", ev.sequence);
    }
    assert_quiet(&mut stream).await;
    let hub = std::sync::Arc::into_inner(hub).expect("publishers are done");
    stop(hub).await;
}

/// A valid national code from a 9-digit prefix (R11 check digit).
fn national_code(prefix: u32) -> String {
    tabadol_policy::ids::national_code_from_prefix(&format!("{prefix:09}"))
}

/// An Events service with a small Tokenize quota, called directly (no transport) as the
/// agency whose certificate CN is `{agency}.agency.tabadol.ir`.
struct QuotaHarness {
    _dir: tempfile::TempDir,
    svc: tabadol_hub::edge::grpc::events::EventsService,
}

impl QuotaHarness {
    fn new(quota: tabadol_hub::events::tokens::TokenizeQuota) -> Self {
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let policy = tabadol_policy::Policy::load_dir(&common::policy_dir()).unwrap();
        let audit = tabadol_hub::inquiry::audit::Audit::open(&db, Default::default()).unwrap();
        let hub = Arc::new(tabadol_hub::inquiry::pipeline::Hub::new(
            policy,
            Default::default(),
            audit,
        ));
        let svc = tabadol_hub::edge::grpc::events::EventsService::with_options(
            hub,
            Arc::new(tabadol_hub::events::outbox::Outbox::open(&db).unwrap()),
            Arc::new(tabadol_hub::events::tokens::Tokens::open(&db).unwrap()),
            Arc::new(tabadol_hub::events::manifests::ManifestStore::open(&db).unwrap()),
            tabadol_hub::edge::grpc::events::EventsOptions {
                tokenize_quota: quota,
            },
        );
        Self { _dir: dir, svc }
    }

    async fn tokenize(&self, agency: &str, codes: &[String]) -> Result<Vec<String>, tonic::Status> {
        use tabadol_proto::v1::events_server::Events;
        let mut r = tonic::Request::new(TokenizeRequest {
            national_codes: codes.to_vec(),
            ..Default::default()
        });
        r.extensions_mut().insert(tabadol_hub::edge::tls::PeerInfo {
            remote: "127.0.0.1:1".parse().unwrap(),
            common_name: Some(format!("{agency}.agency.tabadol.ir")),
            serial: "01".into(),
        });
        self.svc.tokenize(r).await.map(|r| r.into_inner().tokens)
    }
}

/// The Tokenize quota counts national codes, not calls: with 10 codes per hour, 6 + 6
/// codes is refused with RESOURCE_EXHAUSTED, RetryInfo and a QuotaFailure naming the
/// quota; a refused or invalid call takes nothing; repeated codes count once; each agency
/// has its own budget.
#[tokio::test]
async fn tokenize_quota_counts_national_codes() {
    use std::num::NonZeroU32;
    use tonic_types::StatusExt;
    let h = QuotaHarness::new(tabadol_hub::events::tokens::TokenizeQuota {
        codes: NonZeroU32::new(10).unwrap(),
        period: Duration::from_secs(3600),
        burst: NonZeroU32::new(10).unwrap(),
    });
    let codes: Vec<String> = (0..12).map(|i| national_code(100_000 + i)).collect();

    // Six distinct codes, one of them twice: 6 counted.
    let mut first = codes[..6].to_vec();
    first.push(codes[0].clone());
    assert_eq!(h.tokenize("cbi", &first).await.unwrap().len(), 7);

    let err = h
        .tokenize("cbi", &codes[6..12])
        .await
        .expect_err("6 + 6 codes exceed 10 per hour");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("10 national codes per hour (burst 10)"),
        "{}",
        err.message()
    );
    let details = err.get_error_details();
    let retry = details
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo with a delay");
    assert!(retry > Duration::from_secs(60), "{retry:?}");
    let quota = details.quota_failure().expect("QuotaFailure");
    assert_eq!(quota.violations[0].subject, "agency:cbi");
    assert!(quota.violations[0]
        .description
        .contains("10 national codes per hour"));

    // Invalid calls are refused as such and take nothing.
    let mut bad = codes[6..8].to_vec();
    let other_digit = if bad[1].ends_with('0') { "1" } else { "0" };
    bad[1].replace_range(9..10, other_digit);
    let err = h.tokenize("cbi", &bad).await.expect_err("bad check digit");
    assert_eq!(err.code(), Code::InvalidArgument);

    // The 4 codes left are still there, then nothing.
    assert_eq!(h.tokenize("cbi", &codes[6..10]).await.unwrap().len(), 4);
    let err = h.tokenize("cbi", &codes[10..11]).await.expect_err("spent");
    assert_eq!(err.code(), Code::ResourceExhausted);

    // Another subscriber has its own budget.
    assert_eq!(h.tokenize("ihio", &codes[..10]).await.unwrap().len(), 10);
}
