//! Validation of the identifiers used everywhere in the hub: national code, legal-entity
//! national id, mobile number, postal code and tracking code (REQUIREMENTS.md, "Identifier
//! formats").
//!
//! Validators are strict: ASCII digits only. Every edge that accepts an agency's input
//! passes it through [`canonical`] first (Persian and Arabic-Indic digits become ASCII;
//! invisible characters are refused) and stores and forwards the canonical form.

use std::borrow::Cow;

/// Why an identifier was rejected. `Display` is a sentence a user understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The value has the wrong number of characters.
    #[error("{what} must be {expected} digits, got {got}")]
    WrongLength {
        /// What was being validated, e.g. "national code".
        what: &'static str,
        /// How many digits the identifier has.
        expected: usize,
        /// How many characters were given.
        got: usize,
    },
    /// The value contains something other than the digits 0-9.
    #[error("{what} must contain only the digits 0-9")]
    NotDigits {
        /// What was being validated.
        what: &'static str,
    },
    /// The last digit does not match the checksum of the others.
    #[error("{what} check digit is wrong (expected {expected})")]
    CheckDigit {
        /// What was being validated.
        what: &'static str,
        /// The check digit the other digits call for.
        expected: u8,
    },
    /// A national code made of one repeated digit (e.g. 1111111111) is never issued.
    #[error("national code cannot be a single digit repeated ten times")]
    RepeatedDigit,
    /// A mobile number that does not start with `09`.
    #[error("mobile number must start with 09 (format 09XXXXXXXXX)")]
    MobilePrefix,
    /// A tracking code that is too short or too long.
    #[error("tracking code must be 6 to 64 characters long, got {got}")]
    TrackingCodeLength {
        /// How many characters were given.
        got: usize,
    },
    /// A tracking code with a character outside `[A-Za-z0-9_.:-]`.
    #[error(
        "tracking code may contain only letters A-Z a-z, digits and _ . : - (found {found:?})"
    )]
    TrackingCodeChar {
        /// The first offending character.
        found: char,
    },
    /// An invisible or control character (ZWNJ, a bidi override, NUL, ...) that would make
    /// two different values look the same.
    #[error(
        "remove the invisible character U+{code:04X} ({name}): identifiers, dates and codes \
         must be plain digits and letters"
    )]
    Invisible {
        /// The code point found.
        code: u32,
        /// Its common name, e.g. "zero-width non-joiner".
        name: &'static str,
    },
}

const NATIONAL_CODE: &str = "national code";
const LEGAL_ENTITY_ID: &str = "legal-entity national id";
const MOBILE: &str = "mobile number";
const POSTAL_CODE: &str = "postal code";

/// Replaces Persian (۰-۹) and Arabic-Indic (٠-٩) digits with ASCII digits.
/// Borrows when there is nothing to replace.
pub fn normalize_digits(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| match c {
                '۰'..='۹' => char::from(b'0' + (c as u32 - '۰' as u32) as u8),
                '٠'..='٩' => char::from(b'0' + (c as u32 - '٠' as u32) as u8),
                other => other,
            })
            .collect(),
    )
}

/// The name of an invisible or control character that must never appear in an identifier,
/// a date or a code, or `None` for a visible one.
pub fn invisible_name(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{0}' => "NUL",
        '\u{200B}' => "zero-width space",
        '\u{200C}' => "zero-width non-joiner",
        '\u{200D}' => "zero-width joiner",
        '\u{200E}' | '\u{200F}' | '\u{061C}' => "direction mark",
        '\u{202A}'..='\u{202E}' => "bidi embedding or override",
        '\u{2066}'..='\u{2069}' => "bidi isolate",
        '\u{2060}' => "word joiner",
        '\u{FEFF}' => "byte-order mark",
        '\u{00AD}' => "soft hyphen",
        c if c.is_control() => "control character",
        _ => return None,
    })
}

/// The canonical form of an identifier, date or code as sent by an agency: Persian and
/// Arabic-Indic digits become ASCII digits; invisible and control characters are refused
/// (never silently dropped, so what is stored is what the sender can see).
/// Borrows when the value is already canonical.
pub fn canonical(s: &str) -> Result<Cow<'_, str>, IdError> {
    if let Some((c, name)) = s.chars().find_map(|c| invisible_name(c).map(|n| (c, n))) {
        return Err(IdError::Invisible {
            code: c as u32,
            name,
        });
    }
    Ok(normalize_digits(s))
}

/// Checks length and digits; returns the digit values.
fn digits<const N: usize>(s: &str, what: &'static str) -> Result<[u8; N], IdError> {
    let got = s.chars().count();
    if got != N {
        return Err(IdError::WrongLength {
            what,
            expected: N,
            got,
        });
    }
    let mut out = [0u8; N];
    for (slot, b) in out.iter_mut().zip(s.bytes()) {
        if !b.is_ascii_digit() {
            return Err(IdError::NotDigits { what });
        }
        *slot = b - b'0';
    }
    Ok(out)
}

/// Check digit of a national code from its first nine digits.
fn national_check(d: &[u8]) -> u8 {
    let sum: u32 = d[..9]
        .iter()
        .enumerate()
        .map(|(i, &x)| u32::from(x) * (10 - i as u32))
        .sum();
    let r = (sum % 11) as u8;
    if r < 2 {
        r
    } else {
        11 - r
    }
}

/// Check digit of a legal-entity national id from its first ten digits.
fn legal_entity_check(d: &[u8]) -> u8 {
    const W: [u32; 5] = [29, 27, 23, 19, 17];
    let dd = u32::from(d[9]) + 2;
    let sum: u32 = d[..10]
        .iter()
        .enumerate()
        .map(|(i, &x)| (u32::from(x) + dd) * W[i % 5])
        .sum();
    let r = (sum % 11) as u8;
    if r == 10 {
        0
    } else {
        r
    }
}

/// Validates a national code (کد ملی): 10 digits, not one repeated digit, and a correct
/// check digit.
pub fn validate_national_code(s: &str) -> Result<(), IdError> {
    let d = digits::<10>(s, NATIONAL_CODE)?;
    if d.iter().all(|&x| x == d[0]) {
        return Err(IdError::RepeatedDigit);
    }
    let expected = national_check(&d);
    if d[9] != expected {
        return Err(IdError::CheckDigit {
            what: NATIONAL_CODE,
            expected,
        });
    }
    Ok(())
}

/// Validates a legal-entity national id (شناسه ملی): 11 digits with a correct check digit.
pub fn validate_legal_entity_id(s: &str) -> Result<(), IdError> {
    let d = digits::<11>(s, LEGAL_ENTITY_ID)?;
    let expected = legal_entity_check(&d);
    if d[10] != expected {
        return Err(IdError::CheckDigit {
            what: LEGAL_ENTITY_ID,
            expected,
        });
    }
    Ok(())
}

/// Validates a mobile number: `09` followed by nine digits.
pub fn validate_mobile(s: &str) -> Result<(), IdError> {
    digits::<11>(s, MOBILE)?;
    if !s.starts_with("09") {
        return Err(IdError::MobilePrefix);
    }
    Ok(())
}

/// Validates a postal code: 10 digits.
pub fn validate_postal_code(s: &str) -> Result<(), IdError> {
    digits::<10>(s, POSTAL_CODE).map(|_| ())
}

/// Validates a tracking code (R10): 6 to 64 characters of `[A-Za-z0-9_.:-]`.
pub fn validate_tracking_code(s: &str) -> Result<(), IdError> {
    if let Some(found) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(IdError::TrackingCodeChar { found });
    }
    // Only ASCII from here on, so bytes == chars.
    if !(6..=64).contains(&s.len()) {
        return Err(IdError::TrackingCodeLength { got: s.len() });
    }
    Ok(())
}

/// Completes a national code from its first nine digits by appending the check digit.
///
/// # Panics
/// If `prefix9` is not exactly nine ASCII digits (this is a generator for simulators and
/// tests, not an input validator).
pub fn national_code_from_prefix(prefix9: &str) -> String {
    let d = digits::<9>(prefix9, "national code prefix").expect("nine ASCII digits");
    let mut full = [0u8; 10];
    full[..9].copy_from_slice(&d);
    format!("{prefix9}{}", national_check(&full))
}

/// Completes a legal-entity national id from its first ten digits by appending the check
/// digit.
///
/// # Panics
/// If `prefix10` is not exactly ten ASCII digits.
pub fn legal_entity_id_from_prefix(prefix10: &str) -> String {
    let d = digits::<10>(prefix10, "legal-entity id prefix").expect("ten ASCII digits");
    let mut full = [0u8; 11];
    full[..10].copy_from_slice(&d);
    format!("{prefix10}{}", legal_entity_check(&full))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Persian and Arabic-Indic digits become ASCII; invisible characters are refused, named.
    #[test]
    fn canonical_normalizes_digits_and_refuses_invisible_characters() {
        assert_eq!(canonical("۲۴۲۹۱۶۳۵۵۱").unwrap(), "2429163551");
        assert_eq!(canonical("٢٤٢٩").unwrap(), "2429");
        assert!(matches!(canonical("1403/01/01").unwrap(), Cow::Borrowed(_)));
        for bad in ["24\u{200C}29", "\u{202E}2429", "24\u{0}29", "\u{FEFF}1"] {
            let e = canonical(bad).unwrap_err();
            assert!(matches!(e, IdError::Invisible { .. }), "{bad:?}");
            assert!(e.to_string().contains("invisible"), "{e}");
        }
        assert!(validate_national_code(&canonical("۲۴۲۹۱۶۳۵۵۱").unwrap()).is_ok());
    }

    /// A national code whose check digit was computed by hand is accepted.
    #[test]
    fn national_code_valid_by_hand() {
        // 001234567?: Σ = 0·10 + 0·9 + 1·8 + 2·7 + 3·6 + 4·5 + 5·4 + 6·3 + 7·2
        //            = 8 + 14 + 18 + 20 + 20 + 18 + 14 = 112; 112 mod 11 = 2 → 11 − 2 = 9.
        assert_eq!(validate_national_code("0012345679"), Ok(()));
        // 123456789?: Σ = 10+18+24+28+30+30+28+24+18 = 210; 210 mod 11 = 1 (<2) → 1.
        assert_eq!(validate_national_code("1234567891"), Ok(()));
        assert_eq!(national_code_from_prefix("001234567"), "0012345679");
        assert_eq!(national_code_from_prefix("123456789"), "1234567891");
    }

    /// Wrong check digits, lengths, non-digits and repeated digits are rejected with a
    /// sentence that says what is wrong.
    #[test]
    fn national_code_invalid() {
        let e = validate_national_code("0012345670").unwrap_err();
        assert_eq!(
            e.to_string(),
            "national code check digit is wrong (expected 9)"
        );
        let e = validate_national_code("001234567").unwrap_err();
        assert_eq!(e.to_string(), "national code must be 10 digits, got 9");
        assert_eq!(
            validate_national_code("00123456a9"),
            Err(IdError::NotDigits {
                what: NATIONAL_CODE
            })
        );
        // 1111111111 passes the checksum (Σ = 54, 54 mod 11 = 10 → 1) but is never issued.
        assert_eq!(
            validate_national_code("1111111111"),
            Err(IdError::RepeatedDigit)
        );
        assert_eq!(
            validate_national_code("0000000000"),
            Err(IdError::RepeatedDigit)
        );
    }

    /// Legal-entity ids: hand-computed check digits are accepted, others rejected.
    #[test]
    fn legal_entity_id_by_hand() {
        // 1010000000?: d = digit[9] + 2 = 2; weights 29 27 23 19 17 29 27 23 19 17.
        // (1+2)·29 + (0+2)·27 + (1+2)·23 + (0+2)·19 + 2·17 + 2·29 + 2·27 + 2·23 + 2·19 + 2·17
        // = 87 + 54 + 69 + 38 + 34 + 58 + 54 + 46 + 38 + 34 = 512; 512 mod 11 = 6.
        assert_eq!(validate_legal_entity_id("10100000006"), Ok(()));
        assert_eq!(legal_entity_id_from_prefix("1010000000"), "10100000006");
        // 0000000000?: d = 2; Σ = 2·(29+27+23+19+17)·2 = 460; 460 mod 11 = 9.
        assert_eq!(validate_legal_entity_id("00000000009"), Ok(()));
        let e = validate_legal_entity_id("10100000005").unwrap_err();
        assert_eq!(
            e.to_string(),
            "legal-entity national id check digit is wrong (expected 6)"
        );
        let e = validate_legal_entity_id("1010000000").unwrap_err();
        assert_eq!(
            e.to_string(),
            "legal-entity national id must be 11 digits, got 10"
        );
    }

    /// Generated ids always validate (the simulators rely on this).
    #[test]
    fn generated_ids_validate() {
        for n in (0..1_000_000_000u64).step_by(7_919_993) {
            let code = national_code_from_prefix(&format!("{n:09}"));
            if code.bytes().all(|b| b == code.as_bytes()[0]) {
                continue;
            }
            assert_eq!(validate_national_code(&code), Ok(()), "{code}");
            let le = legal_entity_id_from_prefix(&format!("{n:010}"));
            assert_eq!(validate_legal_entity_id(&le), Ok(()), "{le}");
        }
    }

    /// Mobile, postal and tracking codes follow their formats.
    #[test]
    fn mobile_postal_tracking() {
        assert_eq!(validate_mobile("09121234567"), Ok(()));
        assert_eq!(validate_mobile("08121234567"), Err(IdError::MobilePrefix));
        assert_eq!(
            validate_mobile("0912123456").unwrap_err().to_string(),
            "mobile number must be 11 digits, got 10"
        );
        assert_eq!(validate_postal_code("1234567890"), Ok(()));
        assert!(validate_postal_code("12345-6789").is_err());
        assert_eq!(validate_tracking_code("REQ-1403:01.a_b"), Ok(()));
        assert_eq!(
            validate_tracking_code("abc"),
            Err(IdError::TrackingCodeLength { got: 3 })
        );
        assert_eq!(
            validate_tracking_code("abc def"),
            Err(IdError::TrackingCodeChar { found: ' ' })
        );
        assert!(validate_tracking_code(&"a".repeat(65)).is_err());
        assert_eq!(validate_tracking_code(&"a".repeat(64)), Ok(()));
    }

    /// Persian and Arabic-Indic digits are normalized to ASCII before validation.
    #[test]
    fn persian_digits_normalize() {
        assert_eq!(normalize_digits("۰۰۱۲۳۴۵۶۷۹"), "0012345679");
        assert_eq!(normalize_digits("٠٩"), "09");
        assert!(matches!(normalize_digits("123"), Cow::Borrowed(_)));
    }
}
