//! Published datasets and conditional answers (R3, R4), end to end on a real hub with the
//! shipped policy: the Privatization Organization publishes its monthly divestment list
//! (whole-version validation, every bad record named, durable, same version a no-op); SSO
//! answers its insurance-list inquiries only for enterprises on the list at the time of
//! the request (CONDITION_NOT_MET otherwise, audited as such), before and after a new
//! monthly version; SSO reads the list with Get and Subscribe.

mod common;

use common::{ctx, violated_fields, TestHub};
use tabadol_proto::v1::datasets_client::DatasetsClient;
use tabadol_proto::v1::inquiry_client::InquiryClient;
use tabadol_proto::v1::{
    DivestmentPeriod, DivestmentRecord, DivestmentStatus, GetDatasetRequest, InquireRequest,
    PublishDatasetRequest, SubscribeDatasetRequest,
};
use tonic::Code;
use tonic_types::StatusExt;

const LIST: &str = "ipo.divestment-list";
const SERVICE: &str = "sso.insurance-list";
const PURPOSE: &str = "divestment-oversight";

fn listed(id: &str) -> DivestmentRecord {
    DivestmentRecord {
        enterprise_id: id.into(),
        name: "شرکت نمونه".into(),
        status: DivestmentStatus::BeingDivested as i32,
        last_entry_date: "1400/08/18".into(),
        exit_date: String::new(),
        earlier_periods: vec![DivestmentPeriod {
            entry_date: "1399/01/01".into(),
            exit_date: "1399/06/31".into(),
        }],
    }
}

/// On the list once, but the period ended years ago.
fn exited(id: &str) -> DivestmentRecord {
    DivestmentRecord {
        status: DivestmentStatus::Divested as i32,
        last_entry_date: "1401/01/01".into(),
        exit_date: "1402/01/01".into(),
        ..listed(id)
    }
}

async fn publish(
    hub: &TestHub,
    agency: &str,
    version: &str,
    records: Vec<DivestmentRecord>,
) -> Result<tabadol_proto::v1::PublishDatasetResponse, tonic::Status> {
    DatasetsClient::new(hub.channel(agency).await)
        .publish(PublishDatasetRequest {
            dataset: LIST.into(),
            version: version.into(),
            records,
        })
        .await
        .map(|r| r.into_inner())
}

/// Three distinct enterprises with a workshop whose 1403/05 insurance list is not empty.
fn enterprises(hub: &TestHub) -> Vec<[String; 3]> {
    let data = hub.dataset.session26();
    let mut out: Vec<[String; 3]> = Vec::new();
    for w in &data.workshops {
        if out.iter().any(|e| e[0] == w.legal_entity_id) {
            continue;
        }
        if data
            .insurance_list(w, 1403, 5)
            .is_some_and(|l| !l.is_empty())
        {
            out.push([
                w.legal_entity_id.clone(),
                w.workshop_code.clone(),
                w.branch_code.clone(),
            ]);
        }
    }
    assert!(out.len() >= 3, "the simulator has several enterprises");
    out
}

async fn insurance_list(
    hub: &TestHub,
    e: &[String; 3],
    tracking: &str,
) -> Result<usize, tonic::Status> {
    InquiryClient::new(hub.channel("ipo").await)
        .inquire(InquireRequest {
            context: ctx(tracking, PURPOSE),
            service: SERVICE.into(),
            params: [
                ("enterprise_id", e[0].as_str()),
                ("workshop_code", e[1].as_str()),
                ("branch_code", e[2].as_str()),
                ("year", "1403"),
                ("month", "05"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            fields: vec![],
        })
        .await
        .map(|r| r.into_inner().records.len())
}

/// CONDITION_NOT_MET naming the dataset and the input, and nothing of the list.
fn assert_condition_not_met(e: &tonic::Status, enterprise: &str) {
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let info = e.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "CONDITION_NOT_MET");
    assert_eq!(info.metadata["dataset"], LIST);
    assert_eq!(info.metadata["input"], "enterprise_id");
    assert!(e.message().contains(LIST), "{}", e.message());
    assert!(!e.message().contains(enterprise), "{}", e.message());
    assert!(!e.message().contains("1400/08/18"), "{}", e.message());
}

/// A valid list is accepted and durable; the same version again is a no-op; a list with
/// bad records is refused naming every bad record by index and field, and nothing of it
/// is stored; only the publisher may publish.
#[tokio::test]
async fn publish_valid_and_invalid_lists() {
    let hub = TestHub::start().await;
    let e = enterprises(&hub);
    let ok = publish(
        &hub,
        "ipo",
        "1403-05",
        vec![listed(&e[0][0]), exited(&e[1][0])],
    )
    .await
    .unwrap();
    assert_eq!((ok.records, ok.already_published), (2, false));
    let again = publish(
        &hub,
        "ipo",
        "1403-05",
        vec![listed(&e[0][0]), exited(&e[1][0])],
    )
    .await
    .unwrap();
    assert!(again.already_published);
    let changed = publish(&hub, "ipo", "1403-05", vec![listed(&e[0][0])])
        .await
        .unwrap_err();
    assert_eq!(changed.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&changed), ["version"]);

    let mut no_status = listed(&e[2][0]);
    no_status.status = 0;
    let mut bad_period = listed("10100000006");
    bad_period.earlier_periods[0].exit_date = "1401/01/01".into(); // after the last entry
    let bad = publish(
        &hub,
        "ipo",
        "1403-06",
        vec![
            listed(&e[0][0]),
            listed("10100000005"), // wrong check digit
            DivestmentRecord {
                last_entry_date: String::new(),
                ..listed(&e[1][0])
            },
            no_status,
            listed(&e[0][0]), // twice
            bad_period,
            DivestmentRecord {
                enterprise_id: String::new(),
                name: " ".into(),
                ..listed("x")
            },
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert_eq!(
        violated_fields(&bad),
        [
            "records[1].enterprise_id",
            "records[2].last_entry_date",
            "records[3].status",
            "records[4].enterprise_id",
            "records[5].earlier_periods[0].exit_date",
            "records[6].enterprise_id",
            "records[6].name",
        ]
    );
    // Nothing of the refused version is in force: the reader still gets 1403-05.
    let got = DatasetsClient::new(hub.channel("sso").await)
        .get(GetDatasetRequest {
            dataset: LIST.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.version, "1403-05");
    assert_eq!(got.records.len(), 2);
    assert_eq!(got.publisher, "ipo");
    // SSO may read the list but not publish it; an agency not among its readers may not
    // read it.
    let e2 = publish(&hub, "sso", "1403-07", vec![]).await.unwrap_err();
    assert_eq!(e2.code(), Code::PermissionDenied);
    let e3 = DatasetsClient::new(hub.channel("tso").await)
        .get(GetDatasetRequest {
            dataset: LIST.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e3.code(), Code::PermissionDenied);
    // Durable: the stored version is in the store before the answer.
    let store = tabadol_hub::events::datasets::DatasetStore::open(&hub.handle.db).unwrap();
    let all = store.load_all().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].version, "1403-05");
    hub.stop().await;
}

/// SSO's insurance list as ipo: answered for a listed enterprise inside its period,
/// CONDITION_NOT_MET for one outside its period or not listed (and before any list), the
/// denial audited as `condition_not_met`; a new monthly version takes effect at once.
#[tokio::test]
async fn conditional_insurance_list_follows_the_monthly_list() {
    let hub = TestHub::start().await;
    let e = enterprises(&hub);
    // ListServices tells ipo its grant is conditional.
    let services = InquiryClient::new(hub.channel("ipo").await)
        .list_services(tabadol_proto::v1::ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        services.services[0].condition,
        "input `enterprise_id` listed-at-request-time in dataset ipo.divestment-list"
    );
    // Before any version: nothing is listed.
    let err = insurance_list(&hub, &e[0], "TRK-DS-0000")
        .await
        .unwrap_err();
    assert_condition_not_met(&err, &e[0][0]);

    publish(
        &hub,
        "ipo",
        "1403-05",
        vec![listed(&e[0][0]), exited(&e[1][0])],
    )
    .await
    .unwrap();
    assert!(insurance_list(&hub, &e[0], "TRK-DS-0001").await.unwrap() > 0);
    let err = insurance_list(&hub, &e[1], "TRK-DS-0002")
        .await
        .unwrap_err();
    assert_condition_not_met(&err, &e[1][0]);
    let err = insurance_list(&hub, &e[2], "TRK-DS-0003")
        .await
        .unwrap_err();
    assert_condition_not_met(&err, &e[2][0]);
    let audit = hub.handle.hub.audit().trace("ipo", "TRK-DS-0002").unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].outcome, "condition_not_met");
    assert!(audit[0].detail.contains(LIST), "{}", audit[0].detail);
    assert!(!audit[0].detail.contains(&e[1][0]), "{}", audit[0].detail);

    // The next month: the first enterprise has left the list, the third has entered it.
    let mut left = listed(&e[0][0]);
    left.exit_date = "1400/09/01".into();
    publish(
        &hub,
        "ipo",
        "1403-06",
        vec![left, exited(&e[1][0]), listed(&e[2][0])],
    )
    .await
    .unwrap();
    let err = insurance_list(&hub, &e[0], "TRK-DS-0004")
        .await
        .unwrap_err();
    assert_condition_not_met(&err, &e[0][0]);
    let err = insurance_list(&hub, &e[1], "TRK-DS-0005")
        .await
        .unwrap_err();
    assert_condition_not_met(&err, &e[1][0]);
    assert!(insurance_list(&hub, &e[2], "TRK-DS-0006").await.unwrap() > 0);
    hub.stop().await;
}

async fn next(
    s: &mut tonic::Streaming<tabadol_proto::v1::DatasetVersion>,
) -> tabadol_proto::v1::DatasetVersion {
    tokio::time::timeout(std::time::Duration::from_secs(10), s.message())
        .await
        .expect("a version within 10 s")
        .unwrap()
        .expect("stream open")
}

/// A reader's Subscribe stream gets the current version, then each new one as it is
/// published; a version it already has is not sent again.
#[tokio::test]
async fn reader_receives_versions_over_the_stream() {
    let hub = TestHub::start().await;
    let e = enterprises(&hub);
    publish(&hub, "ipo", "1403-05", vec![listed(&e[0][0])])
        .await
        .unwrap();
    let mut stream = DatasetsClient::new(hub.channel("sso").await)
        .subscribe(SubscribeDatasetRequest {
            dataset: LIST.into(),
            after_version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await;
    assert_eq!(first.version, "1403-05");
    assert_eq!(first.records[0].enterprise_id, e[0][0]);
    assert_eq!(first.records[0].earlier_periods[0].exit_date, "1399/06/31");
    publish(
        &hub,
        "ipo",
        "1403-06",
        vec![listed(&e[0][0]), listed(&e[1][0])],
    )
    .await
    .unwrap();
    let second = next(&mut stream).await;
    assert_eq!(second.version, "1403-06");
    assert_eq!(second.records.len(), 2);
    // Resuming after the version it has: only newer ones come.
    let mut resumed = DatasetsClient::new(hub.channel("sso").await)
        .subscribe(SubscribeDatasetRequest {
            dataset: LIST.into(),
            after_version: "1403-06".into(),
        })
        .await
        .unwrap()
        .into_inner();
    publish(&hub, "ipo", "1403-07", vec![listed(&e[1][0])])
        .await
        .unwrap();
    assert_eq!(next(&mut resumed).await.version, "1403-07");
    assert_eq!(next(&mut stream).await.version, "1403-07");
    drop(stream);
    drop(resumed);
    hub.stop().await;
}
