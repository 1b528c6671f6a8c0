//! Property tests of the identifier validators and of `ids::canonical` (issue 7; proptest
//! stands in for `cargo fuzz`): on any text they never panic; they accept exactly the forms
//! a plain reference implementation of REQUIREMENTS.md's rules accepts (checksums
//! included); and an identifier written in Persian or Arabic-Indic digits validates
//! exactly like the same identifier in ASCII digits once made canonical.

use proptest::prelude::*;
use proptest::sample::select;
use tabadol_policy::ids::{
    self, canonical, validate_legal_entity_id, validate_mobile, validate_national_code,
    validate_postal_code, validate_tracking_code, IdError,
};

/// The ASCII digits of `s` if it is exactly `n` of them.
fn ascii_digits(s: &str, n: usize) -> Option<Vec<u32>> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.bytes().map(|b| u32::from(b - b'0')).collect())
}

/// کد ملی: ten digits, not all the same; with r = Σ d[i]·(10−i) mod 11 over the first nine,
/// the tenth is r when r < 2, else 11 − r.
fn model_national_code(s: &str) -> bool {
    let Some(d) = ascii_digits(s, 10) else {
        return false;
    };
    if d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let r = (0..9).map(|i| d[i] * (10 - i as u32)).sum::<u32>() % 11;
    d[9] == if r < 2 { r } else { 11 - r }
}

/// شناسه ملی: eleven digits; with k = d[9] + 2 and weights 29 27 23 19 17 repeating,
/// r = Σ (d[i] + k)·w[i] mod 11 over the first ten, the eleventh is r (0 when r is 10).
fn model_legal_entity_id(s: &str) -> bool {
    let Some(d) = ascii_digits(s, 11) else {
        return false;
    };
    let w = [29, 27, 23, 19, 17, 29, 27, 23, 19, 17];
    let k = d[9] + 2;
    let r = (0..10).map(|i| (d[i] + k) * w[i]).sum::<u32>() % 11;
    d[10] == if r == 10 { 0 } else { r }
}

fn model_mobile(s: &str) -> bool {
    ascii_digits(s, 11).is_some() && s.starts_with("09")
}

fn model_postal_code(s: &str) -> bool {
    ascii_digits(s, 10).is_some()
}

fn model_tracking_code(s: &str) -> bool {
    (6..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
}

type Validator = fn(&str) -> Result<(), IdError>;
type Model = fn(&str) -> bool;

const VALIDATORS: [(&str, Validator, Model); 5] = [
    ("national code", validate_national_code, model_national_code),
    (
        "legal-entity id",
        validate_legal_entity_id,
        model_legal_entity_id,
    ),
    ("mobile", validate_mobile, model_mobile),
    ("postal code", validate_postal_code, model_postal_code),
    ("tracking code", validate_tracking_code, model_tracking_code),
];

fn agrees(s: &str) -> Result<(), TestCaseError> {
    for (name, validate, model) in VALIDATORS {
        let got = validate(s);
        prop_assert_eq!(
            got.is_ok(),
            model(s),
            "{} of {:?}: validator says {:?}",
            name,
            s,
            got
        );
        if let Err(e) = got {
            prop_assert!(!e.to_string().is_empty());
        }
    }
    Ok(())
}

/// Persian ۰-۹ and Arabic-Indic ٠-٩ forms of each ASCII digit.
fn localized(s: &str, scripts: &[u8]) -> String {
    s.chars()
        .zip(scripts.iter().cycle())
        .map(|(c, script)| match (c.to_digit(10), script % 3) {
            (Some(d), 1) => char::from_u32('۰' as u32 + d).unwrap(),
            (Some(d), 2) => char::from_u32('٠' as u32 + d).unwrap(),
            _ => c,
        })
        .collect()
}

/// Digit strings of the lengths the validators care about, often with a right check digit.
fn digit_strings() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{8,12}",
        "[0-9]{9}".prop_map(|p| ids::national_code_from_prefix(&p)),
        "[0-9]{10}".prop_map(|p| ids::legal_entity_id_from_prefix(&p)),
        "09[0-9]{9}",
        "[0-9]".prop_map(|d| d.repeat(10)),
    ]
}

const INVISIBLE: &[char] = &[
    '\u{0}', '\u{200B}', '\u{200C}', '\u{200D}', '\u{200E}', '\u{200F}', '\u{061C}', '\u{202A}',
    '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
    '\u{2060}', '\u{FEFF}', '\u{00AD}', '\t', '\n', '\r', '\u{7F}', '\u{85}',
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// On any text at all, no validator panics and each agrees with its reference.
    #[test]
    fn validators_agree_with_the_reference_on_any_text(s in any::<String>()) {
        agrees(&s)?;
        let _ = canonical(&s);
    }

    /// On digit strings (where checksums decide), each validator accepts exactly what the
    /// reference accepts.
    #[test]
    fn validators_accept_exactly_the_checksum_valid_forms(s in digit_strings()) {
        agrees(&s)?;
    }

    /// A generated national code or legal-entity id is accepted, and changing its check
    /// digit to any other digit is refused.
    #[test]
    fn exactly_one_check_digit_is_right(p9 in "[0-9]{9}", p10 in "[0-9]{10}", other in 0u8..10) {
        let code = ids::national_code_from_prefix(&p9);
        if !code.bytes().all(|b| b == code.as_bytes()[0]) {
            prop_assert_eq!(validate_national_code(&code), Ok(()));
            let last = code.as_bytes()[9] - b'0';
            if other != last {
                let wrong = format!("{p9}{other}");
                let refused = validate_national_code(&wrong).is_err();
                prop_assert!(refused, "{} accepted", wrong);
            }
        }
        let le = ids::legal_entity_id_from_prefix(&p10);
        prop_assert_eq!(validate_legal_entity_id(&le), Ok(()));
        if other != le.as_bytes()[10] - b'0' {
            let wrong = format!("{p10}{other}");
            prop_assert!(validate_legal_entity_id(&wrong).is_err());
        }
    }

    /// `canonical` of the Persian / Arabic-Indic / mixed form of x is x, and every
    /// validator judges it exactly as it judges x.
    #[test]
    fn canonical_persian_digits_validate_like_ascii(
        x in prop_oneof![digit_strings(), "[0-9A-Za-z/_.:-]{0,70}"],
        scripts in prop::collection::vec(any::<u8>(), 1..12),
    ) {
        let local = localized(&x, &scripts);
        let canon = canonical(&local).expect("digits are visible");
        prop_assert_eq!(canon.as_ref(), x.as_str());
        for (name, validate, _) in VALIDATORS {
            prop_assert_eq!(validate(&canon), validate(&x), "{} of {:?}", name, local);
        }
    }

    /// An invisible or control character anywhere is refused by `canonical`, naming its
    /// code point, however the rest is written.
    #[test]
    fn invisible_characters_are_refused(
        x in digit_strings(),
        at in 0usize..13,
        c in select(INVISIBLE),
        scripts in prop::collection::vec(any::<u8>(), 1..4),
    ) {
        let mut chars: Vec<char> = localized(&x, &scripts).chars().collect();
        chars.insert(at.min(chars.len()), c);
        let s: String = chars.into_iter().collect();
        match canonical(&s) {
            Err(IdError::Invisible { code, .. }) => prop_assert_eq!(code, c as u32),
            other => return Err(TestCaseError::fail(format!("{s:?} gave {other:?}"))),
        }
    }

    /// On any text, `canonical` either refuses an invisible character or returns text with
    /// no Persian or Arabic-Indic digit left and is then idempotent.
    #[test]
    fn canonical_is_total_and_idempotent(s in any::<String>()) {
        match canonical(&s) {
            Ok(c) => {
                prop_assert!(!c.chars().any(|ch| ('۰'..='۹').contains(&ch) || ('٠'..='٩').contains(&ch)));
                prop_assert_eq!(canonical(&c).unwrap(), c.clone());
                prop_assert_eq!(c.chars().count(), s.chars().count());
            }
            Err(IdError::Invisible { code, .. }) => {
                let found = s.chars().any(|ch| ch as u32 == code);
                prop_assert!(found);
            }
            Err(other) => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
        }
    }
}
