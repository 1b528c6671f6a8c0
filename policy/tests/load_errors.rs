//! Broken policy files are reported with every error at once, each at the exact
//! `file:line:column` of the offending node.

use std::path::{Path, PathBuf};

use tabadol_policy::{Policy, PolicyErrors};

/// A temp copy of the shipped policy with `edit` applied to one file.
fn broken_copy(file: &str, edit: impl FnOnce(String) -> String) -> (tempfile::TempDir, String) {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("national");
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "agencies.yaml",
        "services.yaml",
        "grants.yaml",
        "subscriptions.yaml",
    ] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    let text = edit(std::fs::read_to_string(dir.path().join(file)).unwrap());
    std::fs::write(dir.path().join(file), &text).unwrap();
    (dir, text)
}

/// 1-based (line, column) of the first occurrence of `needle` in `text` after `after`.
fn locate(text: &str, after: &str, needle: &str) -> (usize, usize) {
    let start = text.find(after).expect("anchor present");
    let at = start + text[start..].find(needle).expect("needle present");
    let line = text[..at].matches('\n').count() + 1;
    let col = text[..at].rsplit('\n').next().unwrap().chars().count() + 1;
    (line, col)
}

fn errors(dir: &Path) -> PolicyErrors {
    match Policy::load_dir(dir) {
        Ok(_) => panic!("broken policy must not load"),
        Err(e) => e,
    }
}

/// A field that is not an output of the service is reported at that very list item.
#[test]
fn field_not_an_output_points_at_the_field() {
    let (dir, text) = broken_copy("grants.yaml", |t| {
        t.replacen(
            "    agency: moe\n    service: cra.shahkar.match\n    fields: [matched]",
            "    agency: moe\n    service: cra.shahkar.match\n    fields: [matched, mobile]",
            1,
        )
    });
    let errs = errors(dir.path());
    assert_eq!(errs.len(), 1, "{errs}");
    let e = &errs.errors[0];
    let (line, column) = locate(&text, "    agency: moe", "mobile]");
    assert_eq!((e.line, e.column), (line, column), "{e}");
    assert_eq!(e.file, dir.path().join("grants.yaml"));
    assert_eq!(
        e.to_string(),
        format!(
            "{}:{line}:{column}: grant moe → cra.shahkar.match: field `mobile` is not an output of service cra.shahkar.match (outputs: matched)",
            dir.path().join("grants.yaml").display()
        )
    );
}

/// An unknown agency is reported at the value of its `agency:` key.
#[test]
fn unknown_agency_points_at_the_agency() {
    let (dir, text) = broken_copy("grants.yaml", |t| {
        t.replacen("    agency: ihio\n", "    agency: ihioo\n", 1)
    });
    let errs = errors(dir.path());
    assert_eq!(errs.len(), 1, "{errs}");
    let (line, column) = locate(&text, "", "ihioo");
    assert_eq!((errs.errors[0].line, errs.errors[0].column), (line, column));
    assert!(
        errs.errors[0]
            .message
            .contains("agency `ihioo` is not defined in agencies.yaml"),
        "{errs}"
    );
}

/// Several problems in several files are all reported together, in file and line order.
#[test]
fn several_errors_reported_together() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("national");
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "agencies.yaml",
        "services.yaml",
        "grants.yaml",
        "subscriptions.yaml",
    ] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    let rewrite = |name: &str, f: &dyn Fn(String) -> String| {
        let p = dir.path().join(name);
        let t = f(std::fs::read_to_string(&p).unwrap());
        std::fs::write(&p, &t).unwrap();
        t
    };
    // services: provider that is no agency; one_of naming a non-input.
    let services = rewrite("services.yaml", &|t| {
        t.replacen("provider: inta", "provider: tax-org", 1)
            .replacen(
                "[national_code, legal_entity_id]",
                "[national_code, company_id]",
                1,
            )
    });
    // grants: unknown service, bad Jalali date, valid_until before valid_from, missing approval,
    // a duplicate grant and an unknown key.
    let grants = rewrite("grants.yaml", &|t| {
        t.replacen("service: inta.taxpayer", "service: inta.taxpayerz", 1)
            .replacen("valid_from: 1400/08/18\n    approved:\n      body: interoperability-working-group\n      session: 26\n      date: 1400/08/18\n      item: access resolution, item 4",
                      "valid_from: 1400/08/18\n    valid_until: 1400/08/17\n    approved:\n      body: interoperability-working-group\n      session: 26\n      date: 1400/08/18\n      item: access resolution, item 4", 1)
            .replacen("    agency: moh\n    service: nocr.identity\n    fields: [national_code, first_name, last_name]\n    purposes: [patient-identification]\n    approved:\n      body: interoperability-working-group\n      session: 26\n      date: 1400/08/18\n",
                      "    agency: moh\n    service: nocr.identity\n    fields: [national_code, first_name, last_name]\n    purposes: [patient-identification]\n    approved:\n      body: interoperability-working-group\n      session: 26\n      date: 1400/13/18\n", 1)
            + "  - id: moe-extra\n    agency: moe\n    service: cra.shahkar.match\n    fields: [matched]\n    purposes: [x]\n    approved: { body: b, session: 1, date: 1400/01/01, item: '1' }\n"
            + "  - id: bmi-identity\n    agency: bmi\n    service: nocr.identity\n    fields: [first_name]\n    purpose: [kyc]\n"
    });
    // subscriptions: an event type nobody publishes.
    let subs = rewrite("subscriptions.yaml", &|t| {
        t.replacen(
            "[identity-change.v1, death.v1]",
            "[identity-change.v1, birth.v1]",
            1,
        )
    });

    let errs = errors(dir.path());
    let shown = errs.to_string();
    println!("{shown}");
    assert_eq!(shown.lines().count(), errs.len());
    let at = |file: &str, text: &str, after: &str, needle: &str| {
        let (l, c) = locate(text, after, needle);
        format!("{}:{l}:{c}: ", dir.path().join(file).display())
    };
    let expect = [
        (
            at("services.yaml", &services, "", "tax-org"),
            "service inta.taxpayer: provider `tax-org` is not an agency in agencies.yaml",
        ),
        (
            at("services.yaml", &services, "one_of", "company_id"),
            "one_of names `company_id`, which is not an input",
        ),
        (
            at(
                "grants.yaml",
                &grants,
                "access resolution, item 3",
                "1400/08/17",
            ),
            "valid_until 1400/08/17 is before valid_from 1400/08/18",
        ),
        (
            at("grants.yaml", &grants, "", "1400/13/18"),
            "month 13 does not exist",
        ),
        (
            at("grants.yaml", &grants, "", "inta.taxpayerz"),
            "service `inta.taxpayerz` is not in the catalog",
        ),
        (
            at("grants.yaml", &grants, "ILLUSTRATIVE", "id: moe-extra"),
            "grant moe → cra.shahkar.match: this agency already has a grant for this service",
        ),
        (
            at("grants.yaml", &grants, "purposes: [x]", "purpose: [kyc]"),
            "grant bmi → nocr.identity: unknown field `purpose`",
        ),
        (
            at("subscriptions.yaml", &subs, "", "birth.v1"),
            "subscription of cbi: no agency publishes event type `birth.v1`",
        ),
    ];
    for (prefix, msg) in &expect {
        assert!(
            errs.iter()
                .any(|e| e.to_string().starts_with(prefix.as_str()) && e.message.contains(msg)),
            "missing `{prefix}…{msg}` in:\n{shown}"
        );
    }
    assert_eq!(errs.len(), expect.len(), "{shown}");
}

/// A grant without `approved:` is refused with advice on how to cite the approval.
#[test]
fn missing_approval_is_explained() {
    let (dir, text) = broken_copy("grants.yaml", |t| {
        t + "  - id: bmi-shahkar\n    agency: bmi\n    service: cra.shahkar.match\n    fields: [matched]\n    purposes: [kyc]\n"
    });
    let errs = errors(dir.path());
    assert_eq!(errs.len(), 1, "{errs}");
    let (line, column) = locate(
        &text,
        "  - id: bmi-shahkar\n    agency: bmi",
        "id: bmi-shahkar",
    );
    assert_eq!(
        (errs.errors[0].line, errs.errors[0].column),
        (line, column),
        "{errs}"
    );
    assert!(
        errs.errors[0]
            .message
            .contains("must cite its working-group approval"),
        "{errs}"
    );
}

/// YAML syntax errors carry the parser's position; other files are still checked.
#[test]
fn syntax_error_has_position() {
    let (dir, _) = broken_copy("services.yaml", |t| {
        t.replacen("outputs: [matched]", "outputs: [matched", 1)
    });
    let errs = errors(dir.path());
    assert!(
        errs.iter().any(
            |e| e.file.ends_with("services.yaml") && e.message.starts_with("YAML syntax error")
        ),
        "{errs}"
    );
    assert!(errs.errors[0].line > 1);
}

/// Wrong types and unknown words (e.g. an input kind) point at the value.
#[test]
fn unknown_input_kind_points_at_value() {
    let (dir, text) = broken_copy("services.yaml", |t| {
        t.replacen(
            "{ name: mobile, kind: mobile, required: true }",
            "{ name: mobile, kind: phone, required: true }",
            1,
        )
    });
    let errs = errors(dir.path());
    let (line, column) = locate(&text, "", "phone");
    assert_eq!(
        (errs.errors[0].line, errs.errors[0].column),
        (line, column),
        "{errs}"
    );
    assert!(
        errs.errors[0]
            .message
            .starts_with("service cra.shahkar.match: unknown value `phone`"),
        "{errs}"
    );
}

/// Asserts that `errs` is exactly one error per `(needle, message part)`, in that order, each
/// at the first occurrence of its needle after `anchor` in `text`, in file `file`.
fn assert_errors_at(
    errs: &PolicyErrors,
    dir: &Path,
    file: &str,
    text: &str,
    anchor: &str,
    expected: &[(&str, &str)],
) {
    assert_eq!(errs.len(), expected.len(), "{errs}");
    for (e, (needle, part)) in errs.iter().zip(expected) {
        let (line, column) = locate(text, anchor, needle);
        assert_eq!(e.file, dir.join(file), "{e}");
        assert_eq!((e.line, e.column), (line, column), "{e}");
        assert!(e.message.contains(part), "expected `{part}` in: {e}");
    }
}

/// A far-future `valid_until` (Jalali 9999 is past jiff's Gregorian year 9999) is an
/// ordinary loader error at the date, saying the allowed years — not a panic in compile.
#[test]
fn far_future_valid_until_is_a_loader_error() {
    let (dir, text) = broken_copy("grants.yaml", |t| {
        t.replacen(
            "    valid_from: 1400/08/18\n",
            "    valid_from: 1400/08/18\n    valid_until: 9999/12/29\n",
            1,
        )
    });
    let errs = errors(dir.path());
    assert_errors_at(
        &errs,
        dir.path(),
        "grants.yaml",
        &text,
        "",
        &[(
            "9999/12/29",
            "grant rcs → post.address: year 9999 is out of range; year must be between 1 and 3000",
        )],
    );
}

/// A far-future maintenance window is refused at load time instead of panicking later, when
/// an inquiry checks whether the service is under maintenance.
#[test]
fn far_future_maintenance_is_a_loader_error() {
    let (dir, text) = broken_copy("services.yaml", |t| {
        t.replacen(
            "until: \"1405/09/01 04:00\"",
            "until: \"9500/09/01 04:00\"",
            1,
        )
    });
    let errs = errors(dir.path());
    assert_errors_at(
        &errs,
        dir.path(),
        "services.yaml",
        &text,
        "",
        &[(
            "\"9500/09/01",
            "service nocr.identity: year 9500 is out of range; year must be between 1 and 3000",
        )],
    );
}

/// An empty or blank certificate common name is refused at the value: a client certificate
/// without a CN must never map to an agency.
#[test]
fn empty_common_name_is_rejected() {
    for blank in ["\"\"", "\"   \""] {
        let (dir, text) = broken_copy("agencies.yaml", |t| {
            t.replacen(
                "{ common_name: cra.agency.tabadol.ir }",
                &format!("{{ common_name: {blank} }}"),
                1,
            )
        });
        let errs = errors(dir.path());
        assert_errors_at(
            &errs,
            dir.path(),
            "agencies.yaml",
            &text,
            "  - id: cra",
            &[(
                blank,
                "agency cra: certificate common_name is empty; write the subject CN of the agency's client certificate",
            )],
        );
    }
}

/// An approval with an empty `body`, `session: 0` and a blank `item` gets one error per key,
/// each at its value and saying what to write.
#[test]
fn incomplete_approval_in_grant_is_rejected() {
    let (dir, text) = broken_copy("grants.yaml", |t| {
        t.replacen(
            "      body: interoperability-working-group\n      session: 26\n      date: 1400/08/18\n      item: access resolution, item 3\n",
            "      body: \"\"\n      session: 0\n      date: 1400/08/18\n      item: \"  \"\n",
            1,
        )
    });
    let errs = errors(dir.path());
    assert_errors_at(
        &errs,
        dir.path(),
        "grants.yaml",
        &text,
        "    agency: moe",
        &[
            ("\"\"", "grant moe → cra.shahkar.match: approved.body is empty; name the approving body"),
            ("0\n      date", "grant moe → cra.shahkar.match: approved.session must be at least 1; write the number of the session"),
            ("\"  \"", "grant moe → cra.shahkar.match: approved.item is empty; write the item"),
        ],
    );
}

/// Subscriptions' approvals are checked the same way as grants' (here `session: 0`).
#[test]
fn incomplete_approval_in_subscription_is_rejected() {
    let (dir, text) = broken_copy("subscriptions.yaml", |t| {
        t.replacen("session: 26", "session: 0", 1)
    });
    let errs = errors(dir.path());
    assert_errors_at(
        &errs,
        dir.path(),
        "subscriptions.yaml",
        &text,
        "    agency: cbi",
        &[(
            "0, date",
            "subscription of cbi: approved.session must be at least 1",
        )],
    );
}
