//! Speed of each step of the inquiry path in isolation, so a regression shows up where it
//! happens: validate (canonical identifiers, parameters), decide (the grant), minimize
//! (drop ungranted fields), and audit append (one record through the group-commit writer,
//! not durable and durable).

use std::collections::BTreeMap;
use std::path::Path;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tabadol_hub::inquiry::audit::{Audit, AuditOptions, AuditRecord};
use tabadol_hub::inquiry::layers::{minimize, validate};
use tabadol_hub::inquiry::pipeline::InquiryInput;
use tabadol_policy::engine::DecisionRequest;
use tabadol_policy::Policy;

fn shipped_policy() -> Policy {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/national");
    Policy::load_dir(&dir).unwrap_or_else(|e| panic!("shipped policy does not load: {e}"))
}

fn match_input() -> InquiryInput {
    InquiryInput {
        tracking_code: "TRK-BENCH-0001".into(),
        purpose: "kyc".into(),
        service_request_id: String::new(),
        service: "cra.shahkar.match".into(),
        params: BTreeMap::from([
            ("national_code".to_string(), "0012345679".to_string()),
            ("mobile".to_string(), "09121234567".to_string()),
        ]),
        fields: Vec::new(),
        required_fields: &[],
    }
}

fn steps(c: &mut Criterion) {
    let policy = shipped_policy();
    let input = match_input();
    assert!(validate::validate(&policy, &mut input.clone()).is_ok());
    c.bench_function("step/validate MatchMobile", |b| {
        b.iter_batched(
            || input.clone(),
            |mut i| black_box(validate::validate(&policy, &mut i).is_ok()),
            criterion::BatchSize::SmallInput,
        )
    });

    let fields = vec!["first_name".to_string(), "national_code".to_string()];
    let req = DecisionRequest {
        agency: "moh",
        service: "nocr.identity",
        purpose: "patient-identification",
        at: jiff::Timestamp::now(),
        requested_fields: &fields,
    };
    assert!(policy.decide(&req).is_allow());
    c.bench_function("step/decide field-limited grant", |b| {
        b.iter(|| black_box(policy.decide(black_box(&req))))
    });

    let record: BTreeMap<String, String> = [
        "national_code",
        "first_name",
        "last_name",
        "father_name",
        "birth_date",
        "gender",
        "birth_certificate_number",
        "alive",
    ]
    .iter()
    .map(|k| (k.to_string(), format!("value of {k}")))
    .collect();
    let granted = vec![
        "first_name".to_string(),
        "last_name".to_string(),
        "national_code".to_string(),
    ];
    c.bench_function("step/minimize 8 fields to 3", |b| {
        b.iter_batched(
            || vec![record.clone()],
            |r| black_box(minimize::minimize(r, &granted)),
            criterion::BatchSize::SmallInput,
        )
    });

    for durable in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let audit = rt.block_on(async {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            Audit::open(
                &db,
                AuditOptions {
                    durable,
                    store_dir: Some(dir.path().to_owned()),
                    ..AuditOptions::default()
                },
            )
            .unwrap()
        });
        let rec = AuditRecord {
            seq: 0,
            time_micros: 1,
            inquiry_id: "0193a1b2-0000-7000-8000-000000000000".into(),
            agency: "cbi".into(),
            service: "cra.shahkar.match".into(),
            purpose: "kyc".into(),
            tracking_code: "TRK-BENCH-0001".into(),
            service_request_id: String::new(),
            outcome: "ok".into(),
            latency_micros: 1200,
            detail: String::new(),
            prev_hash: String::new(),
            hash: String::new(),
        };
        let name = if durable {
            "step/audit append (durable, one caller)"
        } else {
            "step/audit append"
        };
        c.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(audit.append(rec.clone()).await.unwrap()) })
        });
    }
}

criterion_group!(benches, steps);
criterion_main!(benches);
