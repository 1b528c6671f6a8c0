//! Hostile inquiry requests against a real hub on 127.0.0.1: Persian and Arabic-Indic
//! digits normalized at the edge (defect 9), invisible characters refused, and error
//! statuses bounded however many violations a request holds (defect 10).

mod common;

use common::{ctx, violated_fields, TestHub};
use tabadol_hub::edge::error::{status_wire_len, MAX_STATUS_BYTES, MAX_VIOLATIONS};
use tabadol_proto::v1::civil_registry_client::CivilRegistryClient;
use tabadol_proto::v1::inquiry_client::InquiryClient;
use tabadol_proto::v1::shahkar_client::ShahkarClient;
use tabadol_proto::v1::{GetIdentityRequest, InquireRequest, MatchMobileRequest, TraceRequest};
use tonic::Code;

/// ASCII digits → Persian digits.
fn persian(s: &str) -> String {
    s.chars()
        .map(|c| match c.to_digit(10) {
            Some(d) => char::from_u32(0x06F0 + d).unwrap(),
            None => c,
        })
        .collect()
}

/// ASCII digits → Arabic-Indic digits.
fn arabic_indic(s: &str) -> String {
    s.chars()
        .map(|c| match c.to_digit(10) {
            Some(d) => char::from_u32(0x0660 + d).unwrap(),
            None => c,
        })
        .collect()
}

fn identity(tracking: &str, nc: &str) -> GetIdentityRequest {
    GetIdentityRequest {
        context: ctx(tracking, "kyc"),
        national_code: nc.to_owned(),
        fields: vec![],
    }
}

/// A Persian-digit national code is answered exactly like the Latin one: the issue's
/// `۲۴۲۹۱۶۳۵۵۱` (checksum-valid) gets the same answer as `2429163551`, and a person of
/// the dataset written in Persian or Arabic-Indic digits is found, so the provider
/// received the Latin form (it knows only that one, and Shahkar matches the mobile too).
#[tokio::test]
async fn persian_digits_are_answered_like_latin_ones() {
    let hub = TestHub::start().await;
    let ch = hub.channel("cbi").await;
    let mut civil = CivilRegistryClient::new(ch.clone());

    assert!(tabadol_policy::ids::validate_national_code("2429163551").is_ok());
    let latin = civil
        .get_identity(identity("TRK-FA-0001", "2429163551"))
        .await;
    let farsi = civil
        .get_identity(identity("TRK-FA-0001", "۲۴۲۹۱۶۳۵۵۱"))
        .await;
    match (latin, farsi) {
        (Ok(l), Ok(f)) => {
            let (mut l, mut f) = (l.into_inner(), f.into_inner());
            l.inquiry_id.clear();
            f.inquiry_id.clear();
            assert_eq!(l, f);
        }
        (Err(l), Err(f)) => {
            assert_eq!(l.code(), f.code());
            assert_ne!(f.code(), Code::InvalidArgument, "{}", f.message());
        }
        (l, f) => panic!("Latin {l:?} but Persian {f:?}"),
    }

    let (nc, mobile) = hub.alive(0);
    let person = hub.dataset.person(&nc).expect("person in dataset").clone();
    for written in [persian(&nc), arabic_indic(&nc)] {
        let got = civil
            .get_identity(identity("TRK-FA-0002", &written))
            .await
            .unwrap_or_else(|e| panic!("{written}: {e:?}"))
            .into_inner();
        assert_eq!(
            got.national_code, nc,
            "the answer carries the canonical form"
        );
        assert_eq!(got.first_name, person.first_name);
    }
    let m = ShahkarClient::new(ch.clone())
        .match_mobile(MatchMobileRequest {
            context: ctx("TRK-FA-0003", "kyc"),
            national_code: persian(&nc),
            mobile: persian(&mobile),
        })
        .await
        .expect("shahkar call")
        .into_inner();
    assert!(
        m.matched,
        "Persian-digit national code and mobile must match the Latin record"
    );

    // The generic path canonicalizes by input kind too.
    let r = InquiryClient::new(ch.clone())
        .inquire(InquireRequest {
            context: ctx("TRK-FA-0004", "kyc"),
            service: "nocr.identity".into(),
            params: [("national_code".to_owned(), arabic_indic(&nc))].into(),
            fields: vec![],
        })
        .await
        .expect("generic call")
        .into_inner();
    assert_eq!(r.records[0].fields["national_code"], nc);
    hub.stop().await;
}

/// A tracking code in Persian digits is audited in its canonical form, so Trace finds the
/// trail whichever digits are used to ask.
#[tokio::test]
async fn persian_tracking_code_is_audited_canonically() {
    let hub = TestHub::start().await;
    let ch = hub.channel("cbi").await;
    let (nc, _) = hub.alive(0);
    CivilRegistryClient::new(ch.clone())
        .get_identity(identity("TRK-۱۴۰۳-۰۰۰۷", &nc))
        .await
        .expect("call");
    let mut inquiry = InquiryClient::new(ch);
    for asked in ["TRK-1403-0007", "TRK-۱۴۰۳-۰۰۰۷"] {
        let mut entries = Vec::new();
        for _ in 0..100 {
            let t = inquiry
                .trace(TraceRequest {
                    tracking_code: asked.into(),
                })
                .await
                .expect("trace")
                .into_inner();
            assert_eq!(t.tracking_code, "TRK-1403-0007");
            entries = t.entries;
            if !entries.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(entries.len(), 1, "asked as {asked}");
        assert_eq!(entries[0].outcome, "ok");
    }
    hub.stop().await;
}

/// Invisible characters (ZWNJ, a bidi override, NUL, BOM) in an identifier or the tracking
/// code are INVALID_ARGUMENT naming the field and saying an invisible character was found.
#[tokio::test]
async fn invisible_characters_are_refused_naming_the_field() {
    let hub = TestHub::start().await;
    let ch = hub.channel("cbi").await;
    let (nc, mobile) = hub.alive(0);
    let mut civil = CivilRegistryClient::new(ch.clone());
    for (i, hidden) in ["\u{200C}", "\u{202E}", "\u{0}", "\u{FEFF}"]
        .iter()
        .enumerate()
    {
        let bad = format!("{}{hidden}{}", &nc[..4], &nc[4..]);
        let e = civil
            .get_identity(identity(&format!("TRK-INV-000{i}"), &bad))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Code::InvalidArgument,
            "{hidden:?}: {}",
            e.message()
        );
        assert_eq!(violated_fields(&e), ["params.national_code"]);
        assert!(
            e.message().contains("invisible character"),
            "{}",
            e.message()
        );
    }
    let e = ShahkarClient::new(ch.clone())
        .match_mobile(MatchMobileRequest {
            context: ctx("TRK-INV\u{200C}-0009", "kyc"),
            national_code: nc,
            mobile: format!("{mobile}\u{202E}"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&e),
        ["context.tracking_code", "params.mobile"]
    );
    hub.stop().await;
}

/// 10,000 unknown parameters give a status a standard tonic client reads: at most
/// MAX_VIOLATIONS violations plus one saying how many more, and the whole status (message
/// and details) under MAX_STATUS_BYTES (4 KiB) on the wire.
#[tokio::test]
async fn ten_thousand_unknown_params_give_a_bounded_status() {
    let hub = TestHub::start().await;
    let mut inquiry = InquiryClient::new(hub.channel("cbi").await);
    let (nc, _) = hub.alive(0);
    let mut params: std::collections::HashMap<String, String> = (0..10_000)
        .map(|i| (format!("unknown_param_{i:05}"), "x".repeat(16)))
        .collect();
    params.insert("national_code".into(), nc);
    let e = inquiry
        .inquire(InquireRequest {
            context: ctx("TRK-AMP-0001", "kyc"),
            service: "nocr.identity".into(),
            params,
            fields: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    let fields = violated_fields(&e);
    assert!(
        fields.len() > 10 && fields.len() <= MAX_VIOLATIONS + 1,
        "{fields:?}"
    );
    let wire = status_wire_len(&e);
    assert!(wire <= MAX_STATUS_BYTES, "status takes {wire} bytes");
    use tonic_types::StatusExt;
    let last = e
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .pop()
        .unwrap();
    let listed = fields.len() - 1;
    assert!(
        last.description
            .starts_with(&format!("{} more violations", 10_000 - listed)),
        "{}",
        last.description
    );
    hub.stop().await;
}

/// 10,000 field names (each unknown) and 10,000 invalid-or-long field names give one
/// bounded violation each, and 64 long ungranted field names a bounded PERMISSION_DENIED.
#[tokio::test]
async fn ten_thousand_bad_fields_give_a_bounded_status() {
    let hub = TestHub::start().await;
    let mut civil = CivilRegistryClient::new(hub.channel("cbi").await);
    let (nc, _) = hub.alive(0);
    for fields in [
        (0..10_000)
            .map(|i| format!("no_such_field_{i}"))
            .collect::<Vec<_>>(),
        (0..10_000)
            .map(|i| format!("{i}{}", "f".repeat(100)))
            .collect(),
    ] {
        let e = civil
            .get_identity(GetIdentityRequest {
                context: ctx("TRK-AMP-0002", "kyc"),
                national_code: nc.clone(),
                fields,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert_eq!(violated_fields(&e), ["fields"]);
        assert!(status_wire_len(&e) <= MAX_STATUS_BYTES);
    }
    // The largest field list accepted, all ungranted: the denial repeats them, bounded.
    let fields: Vec<String> = (0..64)
        .map(|i| format!("{i:02}{}", "ف".repeat(31)))
        .collect();
    let e = civil
        .get_identity(GetIdentityRequest {
            context: ctx("TRK-AMP-0003", "kyc"),
            national_code: nc,
            fields,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    let wire = status_wire_len(&e);
    assert!(wire <= MAX_STATUS_BYTES, "status takes {wire} bytes");
    hub.stop().await;
}
