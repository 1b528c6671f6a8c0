//! Asking for what does not exist (R16): an agency's `Inquiry/RequestService` gets a
//! request id and shows in its ListServices; the secretariat lists, shows and closes it
//! with `tabadol requests` on the stopped hub's store; a grant citing it (`request:`)
//! passes `policy check --requests`, one citing an unknown request fails it.

mod common;

use std::process::Command;

use common::{copy_policy, violated_fields, TestHub};
use tabadol_proto::v1::inquiry_client::InquiryClient;
use tabadol_proto::v1::{ListServicesRequest, RequestServiceRequest};
use tonic::Code;

fn tabadol() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tabadol"))
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = tabadol().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn request_listed_closed_and_cited_by_a_grant() {
    let hub = TestHub::start().await;
    let mut client = InquiryClient::new(hub.channel("moe").await);
    // Incomplete: neither a catalog service nor a description, no purpose, no basis.
    let e = client
        .request_service(RequestServiceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut fields = violated_fields(&e);
    fields.sort();
    assert_eq!(
        fields,
        ["description", "legal_basis", "provider", "purpose"]
    );

    let id = client
        .request_service(RequestServiceRequest {
            service: String::new(),
            description: "meter-point addresses by postal code".into(),
            provider: "post".into(),
            purpose: "billing".into(),
            legal_basis: "session 26, access resolution".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .request_id;
    assert!(id.starts_with("sr-"), "{id}");
    let listed = client
        .list_services(ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.open_requests.len(), 1);
    assert_eq!(listed.open_requests[0].request_id, id);
    assert_eq!(listed.open_requests[0].status, "open");
    // Another agency does not see it.
    let other = InquiryClient::new(hub.channel("cbi").await)
        .list_services(ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(other.open_requests.is_empty());

    // The secretariat works on the stopped hub's store.
    let TestHub {
        dir, handle, sims, ..
    } = hub;
    handle.stop().await.unwrap();
    sims.shutdown().await;
    let data = dir.path().to_str().unwrap().to_owned();
    let (ok, out, err) = run(&["requests", "list", "--dir", &data]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&id) && out.contains("moe") && out.contains("open"),
        "{out}"
    );
    let (ok, out, err) = run(&["requests", "show", "--dir", &data, &id]);
    assert!(ok, "{err}");
    assert!(out.contains("meter-point addresses"), "{out}");
    // `policy explain` shows the agency's open request, and a grant's condition.
    let shipped = common::policy_dir();
    let shipped = shipped.to_str().unwrap();
    let (ok, out, err) = run(&[
        "policy",
        "explain",
        "--dir",
        shipped,
        "moe",
        "--requests",
        &data,
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("open service request {id}"))
            && out.contains("meter-point addresses by postal code (from post)")
            && out.contains("rate: 50/s, burst 100"),
        "{out}"
    );
    let (ok, out, err) = run(&["policy", "explain", "--dir", shipped, "ipo"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("condition: input `enterprise_id` listed-at-request-time in dataset ipo.divestment-list")
            && out.contains("publishes dataset ipo.divestment-list"),
        "{out}"
    );
    let (ok, out, err) = run(&[
        "requests",
        "close",
        "--dir",
        &data,
        &id,
        "--resolution",
        "granted: moe-post-address",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("closed"), "{out}");
    let (ok, out, _) = run(&["requests", "list", "--dir", &data, "--open"]);
    assert!(ok);
    assert!(out.contains("no service requests"), "{out}");
    let (ok, _, err) = run(&[
        "requests",
        "close",
        "--dir",
        &data,
        &id,
        "--resolution",
        "x",
    ]);
    assert!(!ok && err.contains("already closed"), "{err}");

    // A grant that answers it cites it; `policy check --requests` verifies.
    let policy = copy_policy();
    let grants = policy.path().join("grants.yaml");
    let base = std::fs::read_to_string(&grants).unwrap();
    let grant = |request: &str| {
        format!(
            "{base}\n  - id: moe-post-address\n    agency: moe\n    service: post.address\n    fields: [postal_code, address]\n    purposes: [billing]\n    request: {request}\n    approved: {{ body: interoperability-working-group, session: 27, date: 1400/09/18, item: test }}\n"
        )
    };
    std::fs::write(&grants, grant(&id)).unwrap();
    let p = policy.path().to_str().unwrap();
    let (ok, out, err) = run(&["policy", "check", p, "--requests", &data]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("every cited request exists"), "{out}");
    std::fs::write(&grants, grant("sr-unknown")).unwrap();
    let (ok, _, err) = run(&["policy", "check", p, "--requests", &data]);
    assert!(!ok);
    assert!(
        err.contains("grant moe-post-address cites service request `sr-unknown`"),
        "{err}"
    );
}
