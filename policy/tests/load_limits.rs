//! The loader bounds what it accepts before and while parsing (issue 7, defect 1): file
//! size, nesting depth, id length and the number of errors reported. A hostile or careless
//! file is an ordinary error at `file:line:column`, never a stack overflow, and what is
//! reported stays small however broken the file is.

use std::path::{Path, PathBuf};

use tabadol_policy::load::{MAX_DEPTH, MAX_ERRORS, MAX_FILE_BYTES, MAX_ID_CHARS};
use tabadol_policy::{Policy, PolicyErrors};

/// A temp copy of the shipped policy with `grants.yaml` replaced by `grants`.
fn with_grants(grants: &[u8]) -> tempfile::TempDir {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("national");
    let dir = tempfile::tempdir().unwrap();
    for name in ["agencies.yaml", "services.yaml", "subscriptions.yaml"] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join("grants.yaml"), grants).unwrap();
    dir
}

fn shipped(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("national")
            .join(name),
    )
    .unwrap()
}

fn errors(dir: &Path) -> PolicyErrors {
    match Policy::load_dir(dir) {
        Ok(_) => panic!("this policy must not load"),
        Err(e) => e,
    }
}

/// A block list nested 5,000 and 50,000 deep (`- - - … x`, the files of the issue) is one
/// error at the first list too deep, on the test's ordinary 2 MiB stack.
#[test]
fn deep_block_lists_are_an_error_at_the_level_too_deep() {
    for depth in [5_000, 50_000] {
        let text = format!("grants:\n  {}x\n", "- ".repeat(depth));
        let dir = with_grants(text.as_bytes());
        let errs = errors(dir.path());
        assert_eq!(errs.len(), 1, "{errs}");
        let e = &errs.errors[0];
        assert_eq!(e.file, dir.path().join("grants.yaml"));
        // The root mapping is level 1, `grants:`'s list level 2, so the list that opens
        // level MAX_DEPTH + 1 is the (MAX_DEPTH - 1)th `- ` on line 2.
        assert_eq!(
            (e.line, e.column),
            (2, 3 + 2 * (MAX_DEPTH - 1)),
            "{depth} deep: {e}"
        );
        assert!(
            e.message
                .contains(&format!("nested more than {MAX_DEPTH} levels")),
            "{e}"
        );
    }
}

/// Flow lists and mappings nested 50,000 deep are refused the same way.
#[test]
fn deep_flow_collections_are_an_error() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        let text = format!("grants: {}1{}\n", open.repeat(50_000), close.repeat(50_000));
        let dir = with_grants(text.as_bytes());
        let errs = errors(dir.path());
        assert_eq!(errs.len(), 1, "{errs}");
        let e = &errs.errors[0];
        assert_eq!(e.line, 1, "{e}");
        // The scanner looks ahead up to 1,024 characters inside flow collections, so its
        // own flow-level limit may speak first; either way an error with a position.
        assert!(
            e.message.contains("nested more than") || e.message.contains("recursion limit"),
            "{e}"
        );
    }
}

/// A file over 4 MiB is refused at 1:1 with its size and the limit, before it is parsed.
#[test]
fn a_file_over_the_size_limit_is_refused_with_its_size() {
    // Valid YAML all the way (a comment block), so only the size can be the problem.
    let mut text = shipped("grants.yaml");
    let filler = "# padding that a real policy would never have\n";
    while text.len() <= MAX_FILE_BYTES {
        text.push_str(filler);
    }
    let dir = with_grants(text.as_bytes());
    let errs = errors(dir.path());
    assert_eq!(errs.len(), 1, "{errs}");
    let e = &errs.errors[0];
    assert_eq!((e.line, e.column), (1, 1));
    assert!(e.message.contains(&format!("{} bytes", text.len())), "{e}");
    assert!(e.message.contains("at most 4 MiB"), "{e}");

    // Exactly at the limit, the same file loads.
    let mut text = shipped("grants.yaml");
    text.push_str(&"#".repeat(MAX_FILE_BYTES - text.len()));
    assert_eq!(text.len(), MAX_FILE_BYTES);
    let dir = with_grants(text.as_bytes());
    assert!(Policy::load_dir(dir.path()).is_ok());
}

/// Text given to `from_sources` is bounded the same way.
#[test]
fn oversized_source_text_is_refused() {
    let grants = "#".repeat(MAX_FILE_BYTES + 1);
    let agencies = shipped("agencies.yaml");
    let services = shipped("services.yaml");
    let err = Policy::from_sources(
        Path::new("p"),
        tabadol_policy::load::Sources {
            agencies: Some(&agencies),
            services: Some(&services),
            grants: Some(&grants),
            subscriptions: None,
        },
    )
    .map(|_| ())
    .expect_err("refused");
    assert_eq!(err.len(), 1, "{err}");
    assert!(err.errors[0].message.contains("at most 4 MiB"), "{err}");
}

/// An id of 1 MB is one error at the id, quoting only its beginning; nothing else about
/// the grant is reported.
#[test]
fn an_overlong_id_is_one_short_error() {
    let long = "x".repeat(1_000_000);
    let text = shipped("grants.yaml").replacen("agency: moe", &format!("agency: {long}"), 1);
    let dir = with_grants(text.as_bytes());
    let errs = errors(dir.path());
    assert_eq!(errs.len(), 1, "{errs}");
    let e = &errs.errors[0];
    assert!(
        e.message.contains(&format!(
            "is 1000000 characters long; ids may be at most {MAX_ID_CHARS}"
        )),
        "{}",
        &e.message[..200.min(e.message.len())]
    );
    assert!(e.to_string().len() < 400, "{} bytes", e.to_string().len());
    let at = text.find(&long).unwrap();
    assert_eq!(e.line, text[..at].matches('\n').count() + 1);
}

/// A field name exactly MAX_ID_CHARS long is an id like any other (here: not an output).
#[test]
fn an_id_at_the_limit_is_checked_normally() {
    let name = "f".repeat(MAX_ID_CHARS);
    let text = shipped("grants.yaml").replacen(
        "fields: [matched]",
        &format!("fields: [matched, {name}]"),
        1,
    );
    let dir = with_grants(text.as_bytes());
    let errs = errors(dir.path());
    assert_eq!(errs.len(), 1, "{errs}");
    assert!(
        errs.errors[0].message.contains("is not an output"),
        "{errs}"
    );
}

/// 20,000 broken grants: the first 50 by position are listed, the rest counted, and the
/// whole report stays small.
#[test]
fn error_count_is_bounded() {
    let mut text = String::from("grants:\n");
    for i in 0..20_000 {
        text.push_str(&format!("  - {{ agency: nobody{i} }}\n"));
    }
    let dir = with_grants(text.as_bytes());
    let errs = errors(dir.path());
    assert_eq!(errs.len(), 20_000);
    assert_eq!(errs.errors.len(), MAX_ERRORS);
    assert_eq!(errs.omitted, 20_000 - MAX_ERRORS);
    let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    assert_eq!(lines, (2..2 + MAX_ERRORS).collect::<Vec<_>>());
    let shown = errs.to_string();
    assert!(shown.ends_with(&format!(
        "… and {} more errors (only the first {MAX_ERRORS} are listed; fix these and check again)",
        20_000 - MAX_ERRORS
    )));
    assert!(shown.len() < 50 * 400, "{} bytes", shown.len());
    let summary = errs.summary();
    assert!(!summary.contains('\n'));
    assert!(
        summary.ends_with(&format!("(and {} more)", 20_000 - 1)),
        "{summary}"
    );
}

/// A field listed against a service with many outputs: the message lists 20 of them.
#[test]
fn listed_names_are_clipped() {
    let outputs: Vec<String> = (0..500).map(|i| format!("out{i}")).collect();
    let services = shipped("services.yaml").replacen(
        "outputs: [matched]",
        &format!("outputs: [matched, {}]", outputs.join(", ")),
        1,
    );
    assert_ne!(
        services,
        shipped("services.yaml"),
        "cra.shahkar.match outputs"
    );
    let grants = shipped("grants.yaml").replacen("fields: [matched]", "fields: [wrong]", 1);
    let agencies = shipped("agencies.yaml");
    let err = Policy::from_sources(
        Path::new("p"),
        tabadol_policy::load::Sources {
            agencies: Some(&agencies),
            services: Some(&services),
            grants: Some(&grants),
            subscriptions: None,
        },
    )
    .map(|_| ())
    .expect_err("refused");
    assert_eq!(err.len(), 1, "{err}");
    let m = &err.errors[0].message;
    assert!(m.contains("out18, … and 481 more)"), "{m}");
}

/// A quoted key holding a newline is reported on one line.
#[test]
fn every_error_is_one_line() {
    let text = shipped("grants.yaml").replacen(
        "    fields: [matched]",
        "    \"evil\\nkey\": 1\n    fields: [matched]",
        1,
    );
    let dir = with_grants(text.as_bytes());
    let errs = errors(dir.path());
    assert_eq!(errs.len(), 1, "{errs}");
    assert!(!errs.to_string().contains('\n'), "{errs}");
    assert!(errs.to_string().contains("evil\\nkey"), "{errs}");
}

/// A second YAML document is an error at its `---`, not silently ignored.
#[test]
fn a_second_document_is_an_error() {
    let text = format!(
        "{}---\ngrants: []\n",
        shipped("grants.yaml").trim_end().to_owned() + "\n"
    );
    let line = text.lines().position(|l| l == "---").unwrap() + 1;
    let dir = with_grants(text.as_bytes());
    let errs = errors(dir.path());
    assert_eq!(errs.len(), 1, "{errs}");
    assert_eq!(errs.errors[0].line, line, "{errs}");
    assert!(errs.errors[0].message.contains("second YAML document"));
}

/// Bytes that are not UTF-8 are reported where they start.
#[test]
fn non_utf8_is_reported_where_it_starts() {
    let mut bytes = b"grants:\n  - agency: mo".to_vec();
    bytes.push(0xff);
    bytes.extend_from_slice(b"e\n");
    let dir = with_grants(&bytes);
    let errs = errors(dir.path());
    assert_eq!(errs.len(), 1, "{errs}");
    let e = &errs.errors[0];
    assert_eq!((e.line, e.column), (2, 15), "{e}");
    assert!(e.message.contains("not UTF-8"), "{e}");
}
