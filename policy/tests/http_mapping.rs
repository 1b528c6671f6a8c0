//! `http:` sections of catalog entries (the generic adapter's mapping) are checked when the
//! policy loads — so `tabadol policy check` reports each kind of broken mapping at the
//! `file:line:column` of the offending node — and a good one loads as written.

use std::path::{Path, PathBuf};

use tabadol_policy::http_mapping::{HttpMethod, Outcome};
use tabadol_policy::model::AdapterKind;
use tabadol_policy::Policy;

/// The shipped policy with `extra` appended to services.yaml (a list item of `services:`).
fn with_service(extra: &str) -> (tempfile::TempDir, String) {
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
    let mut text = std::fs::read_to_string(dir.path().join("services.yaml")).unwrap();
    text.push('\n');
    text.push_str(extra);
    std::fs::write(dir.path().join("services.yaml"), &text).unwrap();
    (dir, text)
}

/// 1-based (line, column) of the first `needle` after `after` in `text`.
fn locate(text: &str, after: &str, needle: &str) -> (usize, usize) {
    let start = text.find(after).expect("anchor present");
    let at = start + text[start..].find(needle).expect("needle present");
    let line = text[..at].matches('\n').count() + 1;
    let col = text[..at].rsplit('\n').next().unwrap().chars().count() + 1;
    (line, col)
}

fn error_lines(dir: &Path) -> Vec<String> {
    match Policy::load_dir(dir) {
        Ok(_) => panic!("a broken mapping must not load"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

/// Asserts an error `services.yaml:LINE:COL: ...message...` exists.
fn assert_error_at(errors: &[String], dir: &Path, (line, col): (usize, usize), message: &str) {
    let prefix = format!("{}:{line}:{col}: ", dir.join("services.yaml").display());
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&prefix) && e.contains(message)),
        "no error at {line}:{col} containing {message:?}:\n{}",
        errors.join("\n")
    );
}

const GOOD: &str = "  - id: test.lookup
    national_service_id: \"99011000101\"
    provider: nocr
    adapter: http
    operation: lookup
    title_fa: آزمایش
    title_en: Test lookup
    inputs:
      - { name: national_code, kind: national_code, required: true }
      - { name: year, kind: text, required: true }
    outputs: [name, year_paid]
    http:
      method: POST
      path: /people/{national_code}/lists
      body: { /period/year: year }
      records: /data/items
      outputs: { name: /fullName, year_paid: /paid/year }
      error_code: /errorCode
      errors:
        - { status: 404, outcome: not_found }
        - { status: 400, code: BAD_YEAR, outcome: invalid_argument }
";

/// A well-formed mapping loads with every part as written.
#[test]
fn a_good_mapping_loads() {
    let (dir, _) = with_service(GOOD);
    let policy = Policy::load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let s = policy.service("test.lookup").expect("service loaded");
    assert_eq!(s.adapter, AdapterKind::Http);
    let m = s.http.as_deref().expect("http section");
    assert_eq!(m.method, HttpMethod::Post);
    assert_eq!(m.body.get("/period/year"), Some("year"));
    assert_eq!(m.records.as_deref(), Some("/data/items"));
    assert_eq!(m.outputs.get("year_paid"), Some("/paid/year"));
    assert_eq!(m.errors[1].outcome, Outcome::InvalidArgument);
}

/// Unknown input, output mapped twice, bad pointers, an output that is not the service's,
/// an input never sent, a body on GET and a code rule without `error_code:` are each
/// reported at their own position.
#[test]
fn each_kind_of_broken_mapping_is_reported_at_its_position() {
    let broken = "  - id: test.broken
    national_service_id: \"99011000102\"
    provider: nocr
    adapter: http
    operation: lookup
    title_fa: آزمایش
    title_en: Broken lookup
    inputs:
      - { name: national_code, kind: national_code, required: true }
      - { name: unsent, kind: text }
    outputs: [name, birth]
    http:
      path: /people/{national_code}
      query: { y: yaer }
      body: { /x: national_code }
      outputs:
        name: /fullName
        name: /other
        birth: data/birth
        extra: /extra
      records: /items~2
      errors:
        - { code: GONE, outcome: not_found }
        - { status: 503, outcome: not_found }
";
    let (dir, text) = with_service(broken);
    let errors = error_lines(dir.path());
    let svc = "id: test.broken";
    // Unknown input: the query value.
    assert_error_at(
        &errors,
        dir.path(),
        locate(&text, svc, "yaer"),
        "query parameter `y` uses `yaer`, which is not an input of this service (inputs: national_code, unsent)",
    );
    // Output mapped twice: the second key.
    let second = {
        let first = locate(&text, svc, "name: /fullName");
        (first.0 + 1, first.1)
    };
    assert_error_at(
        &errors,
        dir.path(),
        second,
        "output `name` is mapped twice (first on line",
    );
    // Bad pointer: the value.
    assert_error_at(
        &errors,
        dir.path(),
        locate(&text, svc, "data/birth"),
        "output `birth`: `data/birth` is not a JSON pointer: it must be empty or start with `/`",
    );
    assert_error_at(
        &errors,
        dir.path(),
        locate(&text, svc, "/items~2"),
        "records `/items~2` is not a JSON pointer",
    );
    // Not an output of the service.
    assert_error_at(
        &errors,
        dir.path(),
        locate(&text, svc, "extra: /extra"),
        "`extra` is not an output of this service (outputs: name, birth)",
    );
    // An input never sent.
    assert_error_at(
        &errors,
        dir.path(),
        locate(&text, svc, "/people/{national_code}"),
        "input `unsent` is never sent to the provider",
    );
    // A body on GET.
    assert_error_at(
        &errors,
        dir.path(),
        locate(&text, svc, "{ /x: national_code }"),
        "a GET request has no body",
    );
    // Rules.
    assert_error_at(
        &errors,
        dir.path(),
        locate(&text, svc, "{ code: GONE"),
        "errors[0] matches an error code, but no `error_code:` pointer",
    );
    assert_error_at(
        &errors,
        dir.path(),
        locate(&text, svc, "{ status: 503"),
        "a 503 answer is always UNAVAILABLE",
    );
}

/// `adapter: http` without a section, and a section on another adapter, are refused.
#[test]
fn the_section_goes_with_adapter_http_only() {
    let extra = "  - id: test.nosection
    national_service_id: \"99011000103\"
    provider: nocr
    adapter: http
    operation: lookup
    title_fa: آزمایش
    title_en: No section
    inputs: [{ name: national_code, kind: national_code, required: true }]
    outputs: [name]
  - id: test.wrongadapter
    national_service_id: \"99011000104\"
    provider: nocr
    adapter: tax
    operation: taxpayer
    title_fa: آزمایش
    title_en: Wrong adapter
    inputs: [{ name: national_code, kind: national_code, required: true }]
    outputs: [name]
    http:
      path: /x/{national_code}
      outputs: { name: /name }
";
    let (dir, text) = with_service(extra);
    let errors = error_lines(dir.path());
    assert_error_at(
        &errors,
        dir.path(),
        locate(&text, "id: test.nosection", "http\n"),
        "adapter `http` needs an `http:` section",
    );
    assert_error_at(
        &errors,
        dir.path(),
        locate(&text, "id: test.wrongadapter", "/x/{national_code}"),
        "an `http:` section is only read by `adapter: http`",
    );
}

/// `values:` and `jalali_dates:` may only name outputs of the service.
#[test]
fn value_tables_and_dates_name_outputs() {
    let extra = "  - id: test.values
    national_service_id: \"99011000105\"
    provider: nocr
    adapter: http
    operation: lookup
    title_fa: آزمایش
    title_en: Values
    inputs: [{ name: national_code, kind: national_code, required: true }]
    outputs: [state, since]
    http:
      path: /x/{national_code}
      outputs: { state: /state, since: /since }
      values: { stat: { A: active } }
      jalali_dates: [since, until]
";
    let (dir, text) = with_service(extra);
    let errors = error_lines(dir.path());
    assert_error_at(
        &errors,
        dir.path(),
        locate(&text, "id: test.values", "stat:"),
        "http.values names `stat`, which is not an output of this service",
    );
    assert_error_at(
        &errors,
        dir.path(),
        locate(&text, "id: test.values", "until"),
        "http.jalali_dates names `until`, which is not an output",
    );
}
