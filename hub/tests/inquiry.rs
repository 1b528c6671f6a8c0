//! The inquiry path end to end: real mTLS on 127.0.0.1, the shipped national policy and
//! the real provider simulators behind the hub.

mod common;

use std::time::{Duration, Instant};

use common::{ctx, violated_fields, TestHub};
use tabadol_proto::v1::civil_registry_client::CivilRegistryClient;
use tabadol_proto::v1::get_taxpayer_request::Subject;
use tabadol_proto::v1::inquiry_client::InquiryClient;
use tabadol_proto::v1::shahkar_client::ShahkarClient;
use tabadol_proto::v1::tax_client::TaxClient;
use tabadol_proto::v1::{
    GetIdentityRequest, GetLifeStatusRequest, GetTaxpayerRequest, InquireManyRequest,
    InquireRequest, ListServicesRequest, MatchMobileRequest, TraceRequest,
};
use tonic::Code;

/// Purposes from the shipped grants.
const KYC: &str = "kyc";
const CREDIT: &str = "credit-assessment";
const PATIENT: &str = "patient-identification";
const MOE_PURPOSE: &str = "customer-verification";

fn match_req(tracking: &str, nc: &str, mobile: &str) -> MatchMobileRequest {
    match_req_for(tracking, KYC, nc, mobile)
}

fn match_req_for(tracking: &str, purpose: &str, nc: &str, mobile: &str) -> MatchMobileRequest {
    MatchMobileRequest {
        context: ctx(tracking, purpose),
        national_code: nc.into(),
        mobile: mobile.into(),
    }
}

/// An agency with a grant gets the simulator's real answers through every typed service.
#[tokio::test]
async fn allowed_calls_return_provider_data() {
    let hub = TestHub::start().await;
    let ch = hub.channel("cbi").await;
    let (nc, mobile) = hub.alive(0);

    let m = ShahkarClient::new(ch.clone())
        .match_mobile(match_req("TRK-OK-0001", &nc, &mobile))
        .await
        .expect("shahkar call")
        .into_inner();
    assert!(m.matched, "the dataset's own mobile must match");
    assert!(!m.inquiry_id.is_empty());

    let (_, other_mobile) = hub.alive(1);
    let m = ShahkarClient::new(ch.clone())
        .match_mobile(match_req("TRK-OK-0001", &nc, &other_mobile))
        .await
        .unwrap()
        .into_inner();
    assert!(!m.matched, "someone else's mobile must not match");

    let id = CivilRegistryClient::new(ch.clone())
        .get_identity(GetIdentityRequest {
            context: ctx("TRK-OK-0001", KYC),
            national_code: nc.clone(),
            fields: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let person = hub.dataset.person(&nc).expect("person in dataset");
    assert_eq!(id.national_code, nc);
    assert_eq!(id.first_name, person.first_name);
    assert_eq!(id.last_name, person.last_name);
    assert_eq!(id.birth_date, person.birth_date);
    assert!(!id.father_name.is_empty());

    let samples = hub.samples();
    let dead = samples["persons_deceased"][0]["national_code"]
        .as_str()
        .unwrap()
        .to_owned();
    let death_date = samples["persons_deceased"][0]["death_date"]
        .as_str()
        .unwrap()
        .to_owned();
    let life = CivilRegistryClient::new(ch.clone())
        .get_life_status(GetLifeStatusRequest {
            context: ctx("TRK-OK-0001", KYC),
            national_code: dead,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!life.alive);
    assert_eq!(life.death_date, death_date);

    let le = samples["legal_entities"][0]["legal_entity_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tax = TaxClient::new(ch.clone())
        .get_taxpayer(GetTaxpayerRequest {
            context: ctx("TRK-OK-0001", CREDIT),
            subject: Some(Subject::LegalEntityId(le)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!tax.name.is_empty());
    assert!(["active", "suspended", "closed"].contains(&tax.status.as_str()));
    hub.stop().await;
}

/// An agency with no grant for a service is denied, and the message names the grant.
#[tokio::test]
async fn agency_without_grant_is_denied() {
    let hub = TestHub::start().await;
    let (nc, mobile) = hub.alive(0);
    let err = ShahkarClient::new(hub.channel("rcs").await)
        .match_mobile(match_req("TRK-DENY-001", &nc, &mobile))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("rcs"), "{}", err.message());
    assert!(
        err.message().contains("cra.shahkar.match"),
        "{}",
        err.message()
    );

    // moe may use Shahkar, but not the civil registry.
    let err = CivilRegistryClient::new(hub.channel("moe").await)
        .get_identity(GetIdentityRequest {
            context: ctx("TRK-DENY-001", KYC),
            national_code: nc,
            fields: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    hub.stop().await;
}

/// A grant limited to some identity fields never returns the others, even when asked (R8).
#[tokio::test]
async fn field_limited_grant_returns_only_granted_fields() {
    let hub = TestHub::start().await;
    let ch = hub.channel("moh").await;
    let (nc, _) = hub.alive(2);
    let id = CivilRegistryClient::new(ch.clone())
        .get_identity(GetIdentityRequest {
            context: ctx("TRK-MIN-0001", PATIENT),
            national_code: nc.clone(),
            fields: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        id.fields_returned,
        ["national_code", "first_name", "last_name"]
    );
    assert!(!id.first_name.is_empty());
    assert!(id.birth_date.is_empty() && id.father_name.is_empty() && id.gender.is_empty());
    assert!(id.birth_place.is_empty() && id.shenasnameh_no.is_empty());

    // Through the generic path the record holds only the granted keys.
    let resp = InquiryClient::new(ch.clone())
        .inquire(InquireRequest {
            context: ctx("TRK-MIN-0001", PATIENT),
            service: "nocr.identity".into(),
            params: [("national_code".to_string(), nc.clone())].into(),
            fields: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut keys: Vec<_> = resp.records[0].fields.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["first_name", "last_name", "national_code"]);

    // Asking explicitly for an ungranted field is refused, not silently widened.
    let err = CivilRegistryClient::new(ch)
        .get_identity(GetIdentityRequest {
            context: ctx("TRK-MIN-0001", PATIENT),
            national_code: nc,
            fields: vec!["first_name".into(), "birth_date".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("birth_date"), "{}", err.message());
    hub.stop().await;
}

/// Bad identifiers and a missing tracking code are INVALID_ARGUMENT naming the field.
#[tokio::test]
async fn bad_input_names_the_field() {
    let hub = TestHub::start().await;
    let ch = hub.channel("cbi").await;
    let (nc, mobile) = hub.alive(0);
    // Flip the check digit.
    let mut bad_nc = nc.clone();
    let last = bad_nc.pop().unwrap().to_digit(10).unwrap();
    bad_nc.push(char::from_digit((last + 1) % 10, 10).unwrap());
    let err = ShahkarClient::new(ch.clone())
        .match_mobile(match_req("TRK-BAD-0001", &bad_nc, &mobile))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["params.national_code"]);

    let err = ShahkarClient::new(ch.clone())
        .match_mobile(match_req("TRK-BAD-0001", &nc, "0912345"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["params.mobile"]);

    let err = ShahkarClient::new(ch.clone())
        .match_mobile(match_req("", &nc, &mobile))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["context.tracking_code"]);

    let err = InquiryClient::new(ch)
        .inquire(InquireRequest {
            context: ctx("TRK-BAD-0001", KYC),
            service: "post.parcel-tracking".into(),
            params: Default::default(),
            fields: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    hub.stop().await;
}

/// A stopped provider gives UNAVAILABLE naming it, without waiting for the deadline.
#[tokio::test]
async fn provider_down_is_unavailable_quickly() {
    let hub = TestHub::start().await;
    let (nc, mobile) = hub.alive(0);
    hub.sims.shahkar.shutdown().await;
    let mut req = tonic::Request::new(match_req("TRK-DOWN-001", &nc, &mobile));
    req.set_timeout(Duration::from_secs(20));
    let started = Instant::now();
    let err = ShahkarClient::new(hub.channel("cbi").await)
        .match_mobile(req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("cra"), "{}", err.message());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a refused connection must not wait for the caller's 20 s deadline"
    );
    hub.stop().await;
}

/// A caller deadline shorter than the provider's delay gives DEADLINE_EXCEEDED naming it.
#[tokio::test]
async fn caller_deadline_shorter_than_provider_delay() {
    let hub = TestHub::start().await;
    let (nc, _) = hub.alive(0);
    hub.sims.civil_registry.set_delay(Duration::from_secs(2));
    let mut req = tonic::Request::new(GetLifeStatusRequest {
        context: ctx("TRK-SLOW-001", KYC),
        national_code: nc,
    });
    req.set_timeout(Duration::from_millis(300));
    let err = CivilRegistryClient::new(hub.channel("cbi").await)
        .get_life_status(req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("nocr"), "{}", err.message());
    hub.stop().await;
}

/// InquireMany with one provider down still returns the other providers' results.
#[tokio::test]
async fn inquire_many_returns_partial_results() {
    let hub = TestHub::start().await;
    let (nc, mobile) = hub.alive(0);
    hub.sims.tax.shutdown().await;
    let item = |service: &str, params: Vec<(&str, &str)>| InquireRequest {
        context: ctx(
            "TRK-MANY-001",
            if service == "inta.taxpayer" {
                CREDIT
            } else {
                KYC
            },
        ),
        service: service.into(),
        params: params
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        fields: vec![],
    };
    let resp = InquiryClient::new(hub.channel("cbi").await)
        .inquire_many(InquireManyRequest {
            items: vec![
                item(
                    "cra.shahkar.match",
                    vec![("national_code", &nc), ("mobile", &mobile)],
                ),
                item("inta.taxpayer", vec![("national_code", &nc)]),
                item("nocr.life-status", vec![("national_code", &nc)]),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.items.len(), 3);
    let codes: Vec<i32> = resp
        .items
        .iter()
        .map(|i| i.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(codes, [0, Code::Unavailable as i32, 0]);
    assert_eq!(
        resp.items[0].response.as_ref().unwrap().records[0].fields["matched"],
        "true"
    );
    assert_eq!(
        resp.items[2].response.as_ref().unwrap().records[0].fields["alive"],
        "true"
    );
    assert!(resp.items[1]
        .status
        .as_ref()
        .unwrap()
        .message
        .contains("inta"));
    hub.stop().await;
}

/// Trace shows the owning agency every stage of its tracking code, and another agency nothing.
#[tokio::test]
async fn trace_is_visible_only_to_its_agency() {
    let hub = TestHub::start().await;
    let (nc, mobile) = hub.alive(0);
    let cbi = hub.channel("cbi").await;
    ShahkarClient::new(cbi.clone())
        .match_mobile(match_req("TRK-TRACE-01", &nc, &mobile))
        .await
        .unwrap();
    CivilRegistryClient::new(cbi.clone())
        .get_identity(GetIdentityRequest {
            context: ctx("TRK-TRACE-01", KYC),
            national_code: nc.clone(),
            fields: vec!["no_such_field".into()],
        })
        .await
        .unwrap_err();
    // moe uses the same tracking code for its own inquiry.
    ShahkarClient::new(hub.channel("moe").await)
        .match_mobile(match_req_for("TRK-TRACE-01", MOE_PURPOSE, &nc, &mobile))
        .await
        .unwrap();

    let trail = InquiryClient::new(cbi)
        .trace(TraceRequest {
            tracking_code: "TRK-TRACE-01".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let seen: Vec<(&str, &str)> = trail
        .entries
        .iter()
        .map(|e| (e.service.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        seen,
        [("cra.shahkar.match", "ok"), ("nocr.identity", "denied")]
    );
    assert!(trail.entries.iter().all(|e| e.agency == "cbi"));
    assert_eq!(trail.latest_outcome, "denied");

    let other = InquiryClient::new(hub.channel("ihio").await)
        .trace(TraceRequest {
            tracking_code: "TRK-TRACE-01".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        other.entries.is_empty(),
        "ihio must see nothing of cbi's or moe's trail"
    );

    let moe = InquiryClient::new(hub.channel("moe").await)
        .trace(TraceRequest {
            tracking_code: "TRK-TRACE-01".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moe.entries.len(), 1);
    assert_eq!(moe.entries[0].agency, "moe");

    // The hash chain over everything written holds.
    assert_eq!(hub.handle.hub.audit().verify().unwrap(), 3);
    hub.stop().await;
}

/// ListServices shows an agency exactly its grants, with fields and approval.
#[tokio::test]
async fn list_services_shows_own_grants() {
    let hub = TestHub::start().await;
    let moh = InquiryClient::new(hub.channel("moh").await)
        .list_services(ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moh.agency, "moh");
    let identity = moh
        .services
        .iter()
        .find(|s| s.service == "nocr.identity")
        .expect("moh has nocr.identity");
    assert_eq!(
        identity.fields,
        ["national_code", "first_name", "last_name"]
    );
    assert!(!identity.approved.is_empty());
    assert!(!moh
        .services
        .iter()
        .any(|s| s.service == "cra.shahkar.match"));

    let rcs = InquiryClient::new(hub.channel("rcs").await)
        .list_services(ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    // Only what session 26 granted it: the National Post's address service.
    let services: Vec<_> = rcs.services.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services, ["post.address"]);
    hub.stop().await;
}

/// InquireMany runs its items concurrently under the one deadline: three providers that
/// each take 600 ms all answer within a 1.5 s deadline (one after another they would
/// need 1.8 s, and the last ones would be DEADLINE_EXCEEDED).
#[tokio::test]
async fn inquire_many_runs_items_concurrently_under_one_deadline() {
    let hub = TestHub::start().await;
    let (nc, mobile) = hub.alive(0);
    let le = hub.samples()["legal_entities"][0]["legal_entity_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for sim in [&hub.sims.shahkar, &hub.sims.civil_registry, &hub.sims.tax] {
        sim.set_delay(Duration::from_millis(600));
    }
    let item = |service: &str, purpose: &str, params: Vec<(&str, &str)>| InquireRequest {
        context: ctx("TRK-FAN-0001", purpose),
        service: service.into(),
        params: params
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        fields: vec![],
    };
    let mut req = tonic::Request::new(InquireManyRequest {
        items: vec![
            item(
                "cra.shahkar.match",
                KYC,
                vec![("national_code", &nc), ("mobile", &mobile)],
            ),
            item("nocr.life-status", KYC, vec![("national_code", &nc)]),
            item("inta.taxpayer", CREDIT, vec![("legal_entity_id", &le)]),
        ],
    });
    req.set_timeout(Duration::from_millis(1500));
    let resp = InquiryClient::new(hub.channel("cbi").await)
        .inquire_many(req)
        .await
        .expect("the fan-out answers within its deadline")
        .into_inner();
    let statuses: Vec<(i32, String)> = resp
        .items
        .iter()
        .map(|i| {
            let s = i.status.as_ref().unwrap();
            (s.code, s.message.clone())
        })
        .collect();
    assert!(
        statuses.iter().all(|(code, _)| *code == 0),
        "every provider answers within the shared deadline: {statuses:?}"
    );
    hub.stop().await;
}

/// A failed InquireMany item carries the same rich details as a single call would: a bad
/// national code names its field in a BadRequest.
#[tokio::test]
async fn inquire_many_item_errors_carry_field_details() {
    let hub = TestHub::start().await;
    let (nc, _) = hub.alive(0);
    let resp = InquiryClient::new(hub.channel("cbi").await)
        .inquire_many(InquireManyRequest {
            items: vec![
                InquireRequest {
                    context: ctx("TRK-FAN-0002", KYC),
                    service: "nocr.life-status".into(),
                    params: [("national_code".to_string(), "1234567890".to_string())].into(),
                    fields: vec![],
                },
                InquireRequest {
                    context: ctx("TRK-FAN-0002", KYC),
                    service: "nocr.life-status".into(),
                    params: [("national_code".to_string(), nc)].into(),
                    fields: vec![],
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let bad = resp.items[0].status.as_ref().unwrap();
    assert_eq!(bad.code, Code::InvalidArgument as i32);
    let status = tonic::Status::with_details(
        Code::from(bad.code),
        bad.message.clone(),
        tonic::codegen::Bytes::from(bad.details.clone()),
    );
    assert_eq!(violated_fields(&status), ["params.national_code"]);
    assert_eq!(resp.items[1].status.as_ref().unwrap().code, 0);
    hub.stop().await;
}

/// A caller that goes away while the provider is still working leaves an audit record
/// (outcome `cancelled`): no inquiry escapes the audit log.
#[tokio::test]
async fn cancelled_inquiry_is_still_audited() {
    let hub = TestHub::start().await;
    let (nc, _) = hub.alive(0);
    hub.sims.civil_registry.set_delay(Duration::from_secs(3));
    let ch = hub.channel("cbi").await;
    let mut client = CivilRegistryClient::new(ch.clone());
    let call = client.get_life_status(GetLifeStatusRequest {
        context: ctx("TRK-GONE-0001", KYC),
        national_code: nc,
    });
    // No grpc-timeout: the client simply gives up, which resets the stream.
    assert!(tokio::time::timeout(Duration::from_millis(300), call)
        .await
        .is_err());
    let deadline = Instant::now() + Duration::from_secs(10);
    let outcomes = loop {
        let trail = InquiryClient::new(ch.clone())
            .trace(TraceRequest {
                tracking_code: "TRK-GONE-0001".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if !trail.entries.is_empty() || Instant::now() > deadline {
            break trail
                .entries
                .into_iter()
                .map(|e| e.outcome)
                .collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(outcomes, ["cancelled"]);
    hub.stop().await;
}

/// The audit log keeps why an inquiry failed but never the subject's identifiers: a
/// not-found person's national code is in the caller's error, not in the trail.
#[tokio::test]
async fn audit_detail_never_holds_the_subject() {
    let hub = TestHub::start().await;
    let ch = hub.channel("cbi").await;
    // A valid national code the simulators do not know.
    let unknown = (100_000_000u64..)
        .map(|p| tabadol_policy::ids::national_code_from_prefix(&format!("{p:09}")))
        .find(|nc| hub.dataset.person(nc).is_none())
        .unwrap();
    let err = CivilRegistryClient::new(ch.clone())
        .get_life_status(GetLifeStatusRequest {
            context: ctx("TRK-NF-00001", KYC),
            national_code: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let trail = InquiryClient::new(ch)
        .trace(TraceRequest {
            tracking_code: "TRK-NF-00001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(trail.entries.len(), 1);
    assert_eq!(trail.entries[0].outcome, "not_found");
    assert!(trail.entries[0].detail.contains("nocr"));
    assert!(
        !trail.entries[0].detail.contains(&unknown),
        "audit detail leaks the national code: {}",
        trail.entries[0].detail
    );
    hub.stop().await;
}

/// A typed method cannot answer without its key output: with a life-status grant that
/// lacks `alive`, GetLifeStatus is PERMISSION_DENIED naming the field instead of a
/// misleading `alive = false`, while the generic path returns what is granted.
#[tokio::test]
async fn typed_method_without_its_key_field_is_denied() {
    let policy = common::copy_policy();
    let grants = policy.path().join("grants.yaml");
    let text = std::fs::read_to_string(&grants).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .windows(2)
        .position(|w| w[0].contains("agency: moh") && w[1].contains("nocr.life-status"))
        .expect("moh life-status grant");
    let mut edited: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    assert!(edited[at + 2].contains("fields: [alive, death_date]"));
    edited[at + 2] = edited[at + 2].replace("[alive, death_date]", "[death_date]");
    std::fs::write(&grants, edited.join("\n")).unwrap();

    let hub = TestHub::start_with_policy(policy.path().to_owned()).await;
    let ch = hub.channel("moh").await;
    let (nc, _) = hub.alive(0);
    let err = CivilRegistryClient::new(ch.clone())
        .get_life_status(GetLifeStatusRequest {
            context: ctx("TRK-KEY-0001", PATIENT),
            national_code: nc.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("`alive`"), "{}", err.message());

    let resp = InquiryClient::new(ch)
        .inquire(InquireRequest {
            context: ctx("TRK-KEY-0001", PATIENT),
            service: "nocr.life-status".into(),
            params: [("national_code".to_string(), nc)].into(),
            fields: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = resp.records[0].fields.keys().cloned().collect();
    assert_eq!(keys, ["death_date"]);
    hub.stop().await;
}

/// Oversized context strings are refused as INVALID_ARGUMENT naming the field, so one
/// call cannot write megabytes into the audit log.
#[tokio::test]
async fn oversized_context_is_refused() {
    let hub = TestHub::start().await;
    let (nc, _) = hub.alive(0);
    let mut context = ctx("TRK-BIG-0001", KYC).unwrap();
    context.purpose = "k".repeat(100_000);
    context.service_request_id = "r".repeat(10_000);
    let err = CivilRegistryClient::new(hub.channel("cbi").await)
        .get_life_status(GetLifeStatusRequest {
            context: Some(context),
            national_code: nc,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut fields = violated_fields(&err);
    fields.sort();
    assert_eq!(fields, ["context.purpose", "context.service_request_id"]);
    assert!(
        err.message().len() < 1_000,
        "the error must not echo the input"
    );

    // Thousands of made-up field names are refused too, and the trail stays small.
    let err = CivilRegistryClient::new(hub.channel("cbi").await)
        .get_identity(GetIdentityRequest {
            context: ctx("TRK-BIG-0002", KYC),
            national_code: hub.alive(0).0,
            fields: (0..5_000)
                .map(|i| format!("field_{i}_{}", "x".repeat(50)))
                .collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["fields"]);
    let trail = InquiryClient::new(hub.channel("cbi").await)
        .trace(TraceRequest {
            tracking_code: "TRK-BIG-0002".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(trail.entries.len(), 1);
    assert!(
        trail.entries[0].detail.len() <= 520,
        "{}",
        trail.entries[0].detail
    );
    hub.stop().await;
}

/// During a planned maintenance window announced in services.yaml (R14) the service is
/// UNAVAILABLE saying until when, with a RetryInfo, audited as `maintenance`; ListServices
/// announces the window; other services answer as usual.
#[tokio::test]
async fn planned_maintenance_is_announced_and_enforced() {
    use tonic_types::StatusExt;
    let policy = common::copy_policy();
    let services = policy.path().join("services.yaml");
    let text = std::fs::read_to_string(&services).unwrap();
    assert!(text.contains(r#"from: "1405/09/01 02:00""#));
    // A window from five years ago until ten years from now (Jalali, Tehran).
    let year = tabadol_policy::jalali::JalaliDate::in_tehran(jiff::Timestamp::now()).year;
    let (from, until) = (
        format!("{}/01/01 00:00", year - 5),
        format!("{}/01/01 00:00", year + 10),
    );
    let text = text
        .replace(r#"from: "1405/09/01 02:00""#, &format!(r#"from: "{from}""#))
        .replace(
            r#"until: "1405/09/01 04:00""#,
            &format!(r#"until: "{until}""#),
        );
    std::fs::write(&services, text).unwrap();

    let hub = TestHub::start_with_policy(policy.path().to_owned()).await;
    let ch = hub.channel("cbi").await;
    let (nc, mobile) = hub.alive(0);
    let err = CivilRegistryClient::new(ch.clone())
        .get_identity(GetIdentityRequest {
            context: ctx("TRK-MAINT-001", KYC),
            national_code: nc.clone(),
            fields: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("planned maintenance until {until}")),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("identity database upgrade"),
        "{}",
        err.message()
    );
    let retry = err.get_details_retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.unwrap() > Duration::from_secs(86_400));

    ShahkarClient::new(ch.clone())
        .match_mobile(match_req("TRK-MAINT-001", &nc, &mobile))
        .await
        .expect("Shahkar has no maintenance");

    let trail = InquiryClient::new(ch.clone())
        .trace(TraceRequest {
            tracking_code: "TRK-MAINT-001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<&str> = trail.entries.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(outcomes, ["maintenance", "ok"]);

    let list = InquiryClient::new(ch)
        .list_services(ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    let identity = list
        .services
        .iter()
        .find(|s| s.service == "nocr.identity")
        .unwrap();
    assert_eq!(identity.maintenance.len(), 1);
    assert!(identity.maintenance[0].starts_with(&format!("{from} – {until}")));
    hub.stop().await;
}

/// Beyond `limits.inquiries_in_flight` the hub sheds at once — UNAVAILABLE naming the
/// limit, with a RetryInfo, audited as `overloaded` — instead of queueing; the calls it
/// accepted are answered, and once they are done it accepts again.
#[tokio::test]
async fn inquiries_beyond_the_in_flight_limit_are_shed_with_retry_info() {
    use tonic_types::StatusExt;
    let policy = common::copy_policy();
    let hub = TestHub::start_configured(None, policy.path().to_owned(), |_, cfg| {
        cfg.limits.inquiries_in_flight = 2;
    })
    .await;
    let (nc, _) = hub.alive(0);
    hub.sims
        .civil_registry
        .set_delay(Duration::from_millis(1500));
    let ch = hub.channel("cbi").await;
    let call = |tracking: &'static str| {
        let mut client = CivilRegistryClient::new(ch.clone());
        let nc = nc.clone();
        async move {
            client
                .get_life_status(GetLifeStatusRequest {
                    context: ctx(tracking, KYC),
                    national_code: nc,
                })
                .await
        }
    };
    // Two slow calls fill the hub; the third arrives while they run.
    let slow: Vec<_> = ["TRK-SHED-001", "TRK-SHED-002"]
        .into_iter()
        .map(|t| tokio::spawn(call(t)))
        .collect();
    let running = Instant::now();
    while hub.handle.hub.in_flight() < 2 {
        assert!(
            running.elapsed() < Duration::from_secs(5),
            "the slow calls never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let err = call("TRK-SHED-003").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "a shed call is answered at once, not after the running ones"
    );
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains("at its limit of 2 inquiries in progress"),
        "{}",
        err.message()
    );
    let retry = err.get_details_retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.unwrap() > Duration::ZERO);
    for s in slow {
        s.await.unwrap().expect("the accepted calls are answered");
    }
    hub.sims.civil_registry.set_delay(Duration::ZERO);
    call("TRK-SHED-004")
        .await
        .expect("accepted again once the load is gone");
    let trail = InquiryClient::new(ch)
        .trace(TraceRequest {
            tracking_code: "TRK-SHED-003".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<&str> = trail.entries.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(outcomes, ["overloaded"]);
    hub.stop().await;
}
