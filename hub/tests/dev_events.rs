//! `tabadol dev --simulate-events`: the simulated civil registry publishes deaths and
//! identity changes through the hub, and a subscriber receives them on its stream.

mod common;

use std::time::Duration;

use common::TestHub;
use tabadol_proto::v1::events_client::EventsClient;
use tabadol_proto::v1::{SubscribeRequest, TokenizeRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simulated_registry_trickle_reaches_subscribers() {
    let hub = TestHub::start().await;
    let trickle = tabadol_hub::ops::dev::spawn_event_trickle(
        &hub.pki.dir,
        hub.dataset.clone(),
        hub.handle.addr,
        Duration::from_millis(50),
    )
    .unwrap();

    let mut cbi = EventsClient::new(hub.channel("cbi").await);
    let mut stream = cbi
        .subscribe(SubscribeRequest {
            after_sequence: 0,
            types: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while got.len() < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("the trickle publishes")
            .unwrap()
            .expect("stream open");
        got.push(ev);
    }
    trickle.abort();
    let types: Vec<&str> = got.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(
        types,
        [
            "death.v1",
            "identity-change.v1",
            "death.v1",
            "identity-change.v1"
        ]
    );

    // The first death is the second alive sample person: cbi can match it via Tokenize,
    // and the civil-registry simulator now reports that person dead.
    let nc = hub.alive(1).0;
    let token = cbi
        .tokenize(TokenizeRequest {
            national_codes: vec![nc.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .remove(0);
    assert_eq!(got[0].subject, token);
    assert!(
        matches!(hub.dataset.death_date(&nc), Some(Some(_))),
        "the simulator records the death it published"
    );
    hub.stop().await;
}
