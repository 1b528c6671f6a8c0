//! Property tests of the policy loader (issue 7; proptest stands in for `cargo fuzz`, which
//! needs a nightly toolchain): on random YAML-like text, on deep nesting and on random
//! mutations of the shipped files, loading never panics, and every error it reports has a
//! real position in its file, is one line of bounded length, and comes in position order,
//! at most `MAX_ERRORS` of them. Each property is bounded in cases and input size so the
//! whole file runs in well under 30 s in a debug build.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::select;
use tabadol_policy::load::{Sources, MAX_ERRORS};
use tabadol_policy::{Policy, PolicyErrors};

const FILES: [&str; 4] = [
    "agencies.yaml",
    "services.yaml",
    "grants.yaml",
    "subscriptions.yaml",
];

fn shipped() -> [String; 4] {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("national");
    FILES.map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
}

/// Loads the four texts and checks every property of the errors, if any.
fn check(texts: &[String; 4]) -> Result<(), TestCaseError> {
    let dir = Path::new("policy");
    let loaded = Policy::from_sources(
        dir,
        Sources {
            agencies: Some(&texts[0]),
            services: Some(&texts[1]),
            grants: Some(&texts[2]),
            subscriptions: Some(&texts[3]),
        },
    );
    let Err(errors) = loaded else {
        return Ok(());
    };
    check_errors(&errors, texts)
}

fn check_errors(errors: &PolicyErrors, texts: &[String; 4]) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty());
    prop_assert!(errors.errors.len() <= MAX_ERRORS);
    prop_assert_eq!(errors.len(), errors.errors.len() + errors.omitted);
    let mut last = (0, 0, 0);
    for e in errors {
        let file = e.file.file_name().and_then(|f| f.to_str()).unwrap_or("");
        let Some(index) = FILES.iter().position(|f| *f == file) else {
            return Err(TestCaseError::fail(format!("error in no policy file: {e}")));
        };
        // YAML breaks lines at \n, \r\n and a lone \r.
        let lines = texts[index]
            .replace("\r\n", "\n")
            .replace('\r', "\n")
            .split('\n')
            .count();
        prop_assert!(e.line >= 1 && e.column >= 1, "no position: {}", e);
        // The end of a file without a final newline is reported on the line after it.
        prop_assert!(
            e.line <= lines + 1,
            "line past the end ({} lines): {}",
            lines,
            e
        );
        prop_assert!(!e.message.is_empty());
        prop_assert!(!e.message.contains('\n'), "two lines: {:?}", e.message);
        prop_assert!(e.message.chars().count() <= 600, "{}", e.message.len());
        let at = (index, e.line, e.column);
        prop_assert!(at >= last, "out of order: {:?} after {:?}", at, last);
        last = at;
    }
    prop_assert!(!errors.summary().contains('\n'));
    Ok(())
}

/// Pieces that YAML gives meaning to, and words the policy files use.
const TOKENS: &[&str] = &[
    "-",
    "- ",
    " ",
    "  ",
    "\n",
    "\n  ",
    "\n    ",
    ":",
    ": ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "'",
    "\"",
    "#",
    "&a ",
    "*a",
    "!",
    "!!str ",
    "|",
    ">",
    "---",
    "...",
    "? ",
    "%YAML 1.2\n",
    "\t",
    "\r",
    "\\",
    "~",
    "null",
    "true",
    "1",
    "-1",
    "1.5",
    "0x1f",
    "1_000",
    "agencies",
    "services",
    "grants",
    "subscriptions",
    "id",
    "agency",
    "service",
    "fields",
    "purposes",
    "approved",
    "body",
    "session",
    "date",
    "item",
    "rate",
    "per_second",
    "burst",
    "valid_from",
    "valid_until",
    "1400/08/18",
    "۱۴۰۰/۰۸/۱۸",
    "moe",
    "cbi",
    "cra.shahkar.match",
    "matched",
    "inputs",
    "outputs",
    "one_of",
    "kind",
    "national_code",
    "maintenance",
    "from",
    "until",
    "event_types",
    "publishes",
    "death.v1",
    "certificate",
    "common_name",
    "بانک",
    "\u{200C}",
    "\u{202E}",
    "\u{FEFF}",
    "\u{0}",
    "é",
];

fn random_yaml() -> impl Strategy<Value = String> {
    prop::collection::vec(select(TOKENS), 0..300).prop_map(|t| t.concat())
}

/// A mutation of a file: positions are fractions of its length in characters.
#[derive(Debug, Clone)]
enum Mutation {
    Insert(f64, &'static str),
    Delete(f64, usize),
    DuplicateLine(f64),
    SwapLines(f64, f64),
    ReplaceChar(f64, char),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0.0..1.0, select(TOKENS)).prop_map(|(p, t)| Mutation::Insert(p, t)),
        (0.0..1.0, 1usize..40).prop_map(|(p, n)| Mutation::Delete(p, n)),
        (0.0..1.0).prop_map(Mutation::DuplicateLine),
        (0.0..1.0, 0.0..1.0).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (0.0..1.0, any::<char>()).prop_map(|(p, c)| Mutation::ReplaceChar(p, c)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let at = |f: f64, n: usize| ((f * n as f64) as usize).min(n);
    match m {
        Mutation::Insert(p, t) => {
            let mut c: Vec<char> = text.chars().collect();
            let i = at(*p, c.len());
            c.splice(i..i, t.chars());
            c.into_iter().collect()
        }
        Mutation::Delete(p, n) => {
            let mut c: Vec<char> = text.chars().collect();
            let i = at(*p, c.len());
            let j = (i + n).min(c.len());
            c.drain(i..j);
            c.into_iter().collect()
        }
        Mutation::ReplaceChar(p, ch) => {
            let mut c: Vec<char> = text.chars().collect();
            if !c.is_empty() {
                let i = at(*p, c.len() - 1);
                c[i] = *ch;
            }
            c.into_iter().collect()
        }
        Mutation::DuplicateLine(p) => {
            let mut l: Vec<&str> = text.split('\n').collect();
            let i = at(*p, l.len() - 1);
            l.insert(i, l[i]);
            l.join("\n")
        }
        Mutation::SwapLines(a, b) => {
            let mut l: Vec<&str> = text.split('\n').collect();
            let (i, j) = (at(*a, l.len() - 1), at(*b, l.len() - 1));
            l.swap(i, j);
            l.join("\n")
        }
    }
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(300))]

    /// Random YAML-like text in any one of the four files never panics the loader, and its
    /// errors are positioned, short, single lines, in order.
    #[test]
    fn random_text_in_any_file(file in 0usize..4, text in random_yaml()) {
        let mut texts = shipped();
        texts[file] = text;
        check(&texts)?;
    }

    /// Random mutations (insertions of YAML pieces, deletions, duplicated and swapped
    /// lines, any character) of the shipped files never panic, and their errors are
    /// positioned.
    #[test]
    fn mutated_shipped_files(
        edits in prop::collection::vec((0usize..4, mutation()), 1..8)
    ) {
        let mut texts = shipped();
        for (file, m) in &edits {
            texts[*file] = apply(&texts[*file], m);
        }
        check(&texts)?;
    }
}

proptest! {
    #![proptest_config(config(60))]

    /// Any mix of block and flow openers up to 20,000 deep, closed or not, is an error with
    /// a position (or loads), never a stack overflow.
    #[test]
    fn deep_nesting_of_any_kind(
        openers in prop::collection::vec(select(&["- ", "[", "{a: ", "\n- ", "? "][..]), 0..20_000),
        close in any::<bool>(),
        file in 0usize..4,
    ) {
        let mut text = String::from("grants: ");
        text.push_str(&openers.concat());
        text.push('x');
        if close {
            for o in openers.iter().rev() {
                match *o {
                    "[" => text.push(']'),
                    "{a: " => text.push('}'),
                    _ => {}
                }
            }
        }
        let mut texts = shipped();
        texts[file] = text;
        check(&texts)?;
    }
}
