//! Property tests of every protobuf → domain conversion of the inquiry services: arbitrary
//! bytes decoded as each request message, and arbitrary messages, go through the edge
//! conversion, validation and authorization without a panic; every refusal is
//! INVALID_ARGUMENT, PERMISSION_DENIED or NOT_FOUND, never INTERNAL, and bounded in size.

use std::sync::OnceLock;

use proptest::prelude::*;
use prost::Message;
use tabadol_policy::Policy;
use tabadol_proto::v1::get_taxpayer_request::Subject;
use tabadol_proto::v1::{
    GetIdentityRequest, GetLifeStatusRequest, GetTaxpayerRequest, InquireManyRequest,
    InquireRequest, InquiryContext, MatchMobileRequest, TraceRequest,
};
use tonic::{Code, Status};

use crate::edge::error::{status_wire_len, HubError, MAX_STATUS_BYTES};
use crate::inquiry::layers::{authorize, validate};
use crate::inquiry::pipeline::{Caller, InquiryInput};

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/national");
        Policy::load_dir(&dir).unwrap()
    })
}

/// Agencies of the shipped policy, and one that has no grants.
const AGENCIES: &[&str] = &["cbi", "bmi", "moh", "moe", "ihio", "nobody"];

fn config() -> ProptestConfig {
    ProptestConfig {
        // Bounded by count: each property runs in well under 30 s in a debug build.
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A refusal as the caller would see it: an expected code, never INTERNAL, bounded.
fn assert_refusal(e: HubError) -> Result<(), TestCaseError> {
    let status = Status::from(e);
    prop_assert!(
        matches!(
            status.code(),
            Code::InvalidArgument | Code::PermissionDenied | Code::NotFound
        ),
        "unexpected {:?}: {}",
        status.code(),
        status.message()
    );
    prop_assert!(status_wire_len(&status) <= MAX_STATUS_BYTES);
    Ok(())
}

/// The inquiry path up to the provider: validate, then authorize.
fn check(agency: &str, mut input: InquiryInput) -> Result<(), TestCaseError> {
    let caller = Caller {
        agency: agency.to_owned(),
    };
    let result = validate::validate(policy(), &mut input).and_then(|_| {
        authorize::authorize(policy(), &caller, &input, jiff::Timestamp::now()).map(|_| ())
    });
    match result {
        Ok(()) => {
            // What passed is canonical: only ASCII digits in identifiers.
            for v in input.params.values() {
                prop_assert!(v.bytes().all(|b| b.is_ascii_digit()), "{v:?}");
            }
            Ok(())
        }
        Err(e) => assert_refusal(e),
    }
}

/// Text mixing what agencies send: ASCII and Persian/Arabic-Indic digits, letters,
/// invisible characters, anything.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{0,12}",
        "[۰-۹]{10}",
        "[٠-٩0-9]{9,11}",
        "09[0-9۰-۹]{9}",
        "[A-Za-z0-9_.:-]{0,70}",
        "[0-9\u{200C}\u{202E}\u{0}\u{FEFF}]{0,12}",
        ".{0,80}",
    ]
}

fn context() -> impl Strategy<Value = Option<InquiryContext>> {
    let purpose = prop_oneof![
        Just("kyc".to_owned()),
        Just("customer-re-verification".to_owned()),
        Just("patient-identification".to_owned()),
        ".{0,80}",
    ];
    proptest::option::of((text(), purpose, text()).prop_map(
        |(tracking_code, purpose, service_request_id)| InquiryContext {
            tracking_code,
            purpose,
            service_request_id,
        },
    ))
}

fn fields() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(
        prop_oneof![
            Just("national_code".to_owned()),
            Just("first_name".to_owned()),
            Just("alive".to_owned()),
            ".{0,80}",
        ],
        0..80,
    )
}

fn agency() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(AGENCIES)
}

fn inquire_request() -> impl Strategy<Value = InquireRequest> {
    let service = prop_oneof![
        Just("nocr.identity".to_owned()),
        Just("nocr.life-status".to_owned()),
        Just("cra.shahkar.match".to_owned()),
        Just("inta.taxpayer".to_owned()),
        ".{0,140}",
    ];
    let key = prop_oneof![
        Just("national_code".to_owned()),
        Just("mobile".to_owned()),
        Just("legal_entity_id".to_owned()),
        ".{0,40}",
    ];
    (
        context(),
        service,
        proptest::collection::hash_map(key, text(), 0..40),
        fields(),
    )
        .prop_map(|(context, service, params, fields)| InquireRequest {
            context,
            service,
            params,
            fields,
        })
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes decoded as each inquiry request never panic; what decodes is
    /// converted, validated and authorized without a panic or an INTERNAL refusal.
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), a in agency()) {
        if let Ok(m) = MatchMobileRequest::decode(&bytes[..]) {
            check(a, super::shahkar::to_input(m))?;
        }
        if let Ok(m) = GetIdentityRequest::decode(&bytes[..]) {
            check(a, super::civil_registry::identity_input(m))?;
        }
        if let Ok(m) = GetLifeStatusRequest::decode(&bytes[..]) {
            check(a, super::civil_registry::life_status_input(m))?;
        }
        if let Ok(m) = GetTaxpayerRequest::decode(&bytes[..]) {
            check(a, super::tax::to_input(m))?;
        }
        if let Ok(m) = InquireRequest::decode(&bytes[..]) {
            check(a, super::inquiry::to_input(m))?;
        }
        if let Ok(m) = InquireManyRequest::decode(&bytes[..]) {
            match super::inquiry::many_items(m) {
                Ok(items) => {
                    for item in items {
                        check(a, super::inquiry::to_input(item))?;
                    }
                }
                Err(e) => assert_refusal(e)?,
            }
        }
        if let Ok(m) = TraceRequest::decode(&bytes[..]) {
            if let Err(e) = super::inquiry::trace_tracking_code(m) {
                assert_refusal(e)?;
            }
        }
    }

    /// Arbitrary MatchMobile requests.
    #[test]
    fn match_mobile(context in context(), national_code in text(), mobile in text(), a in agency()) {
        check(a, super::shahkar::to_input(MatchMobileRequest { context, national_code, mobile }))?;
    }

    /// Arbitrary GetIdentity and GetLifeStatus requests.
    #[test]
    fn civil_registry(context in context(), national_code in text(), fields in fields(), a in agency()) {
        check(a, super::civil_registry::identity_input(GetIdentityRequest {
            context: context.clone(),
            national_code: national_code.clone(),
            fields,
        }))?;
        check(a, super::civil_registry::life_status_input(GetLifeStatusRequest {
            context,
            national_code,
        }))?;
    }

    /// Arbitrary GetTaxpayer requests, either subject or none.
    #[test]
    fn taxpayer(context in context(), id in text(), which in 0u8..3, a in agency()) {
        let subject = match which {
            0 => Some(Subject::NationalCode(id)),
            1 => Some(Subject::LegalEntityId(id)),
            _ => None,
        };
        check(a, super::tax::to_input(GetTaxpayerRequest { context, subject }))?;
    }

    /// Arbitrary generic Inquire requests, and InquireMany of them.
    #[test]
    fn inquire(items in proptest::collection::vec(inquire_request(), 0..40), a in agency()) {
        match super::inquiry::many_items(InquireManyRequest { items: items.clone() }) {
            Ok(_) => {}
            Err(e) => assert_refusal(e)?,
        }
        for item in items {
            check(a, super::inquiry::to_input(item))?;
        }
    }

    /// Arbitrary Trace requests.
    #[test]
    fn trace(tracking_code in text()) {
        if let Err(e) = super::inquiry::trace_tracking_code(TraceRequest { tracking_code }) {
            assert_refusal(e)?;
        }
    }
}
