//! Speed of the access decision every inquiry makes (deny by default, purposes, validity
//! window, field minimization) on the shipped national policy, and of national-code
//! validation at the edge.

use std::path::Path;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tabadol_policy::engine::DecisionRequest;
use tabadol_policy::{ids, Policy};

fn shipped_policy() -> Policy {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/national");
    Policy::load_dir(&dir).unwrap_or_else(|e| panic!("shipped policy does not load: {e}"))
}

fn decide(c: &mut Criterion) {
    let policy = shipped_policy();
    let at = jiff::Timestamp::now();
    let fields = vec!["first_name".to_string(), "national_code".to_string()];
    let allowed = DecisionRequest {
        agency: "moh",
        service: "nocr.identity",
        purpose: "patient-identification",
        at,
        requested_fields: &fields,
    };
    assert!(
        policy.decide(&allowed).is_allow(),
        "the bench must measure an allowed call"
    );
    c.bench_function("decide/allow field-limited grant", |b| {
        b.iter(|| black_box(policy.decide(black_box(&allowed))))
    });
    let denied = DecisionRequest {
        agency: "rcs",
        service: "cra.shahkar.match",
        purpose: "kyc",
        at,
        requested_fields: &[],
    };
    assert!(!policy.decide(&denied).is_allow());
    c.bench_function("decide/deny missing grant", |b| {
        b.iter(|| black_box(policy.decide(black_box(&denied))))
    });
    c.bench_function("validate national code", |b| {
        b.iter(|| black_box(ids::validate_national_code(black_box("0499370899")).is_ok()))
    });
}

criterion_group!(benches, decide);
criterion_main!(benches);
