//! Validate: the inquiry's context and parameters, in their canonical form. Persian and
//! Arabic-Indic digits become ASCII here, before anything is checked, so the canonical form
//! is what is validated, audited and sent to the provider; an invisible character is
//! refused naming the field. At most [`MAX_VIOLATIONS`] violations are described.

use std::borrow::Cow;

use tabadol_policy::model::Service;
use tabadol_policy::{ids, Policy};

use crate::edge::error::{HubError, Violation, MAX_VIOLATIONS};
use crate::inquiry::pipeline::{
    InquiryInput, MAX_FIELDS, MAX_FIELD_LEN, MAX_PURPOSE_LEN, MAX_SERVICE_LEN,
    MAX_SERVICE_REQUEST_ID_LEN,
};

/// Replaces `value` by its canonical form, or says which invisible character it holds.
fn canonicalize(field: &str, value: &mut String, violations: &mut Vec<Violation>) -> bool {
    match ids::canonical(value) {
        Ok(Cow::Borrowed(_)) => true,
        Ok(Cow::Owned(canonical)) => {
            *value = canonical;
            true
        }
        Err(e) => {
            violations.push(Violation::new(field, e.to_string()));
            false
        }
    }
}

/// Checks the context and the parameters of `input` against the catalog, rewriting the
/// identifiers in it to their canonical form; returns the catalog entry of its service.
pub fn validate<'p>(policy: &'p Policy, input: &mut InquiryInput) -> Result<&'p Service, HubError> {
    let mut violations = Vec::new();
    if canonicalize(
        "context.tracking_code",
        &mut input.tracking_code,
        &mut violations,
    ) {
        if let Err(e) = ids::validate_tracking_code(&input.tracking_code) {
            violations.push(Violation::new("context.tracking_code", e.to_string()));
        }
    }
    if input.purpose.trim().is_empty() {
        violations.push(Violation::new(
            "context.purpose",
            "purpose is required: say why the data is needed (one of your grant's purposes)",
        ));
    } else if input.purpose.len() > MAX_PURPOSE_LEN {
        violations.push(Violation::new(
            "context.purpose",
            format!(
                "purpose is longer than {MAX_PURPOSE_LEN} bytes; give one of your grant's purposes"
            ),
        ));
    }
    if input.service_request_id.len() > MAX_SERVICE_REQUEST_ID_LEN {
        violations.push(Violation::new(
            "context.service_request_id",
            format!("service_request_id is longer than {MAX_SERVICE_REQUEST_ID_LEN} bytes"),
        ));
    } else {
        canonicalize(
            "context.service_request_id",
            &mut input.service_request_id,
            &mut violations,
        );
    }
    if input.fields.len() > MAX_FIELDS || input.fields.iter().any(|f| f.len() > MAX_FIELD_LEN) {
        violations.push(Violation::new(
            "fields",
            format!(
                "give at most {MAX_FIELDS} field names of at most {MAX_FIELD_LEN} bytes each \
                 (ListServices lists your granted fields)"
            ),
        ));
    }
    if input.service.len() > MAX_SERVICE_LEN {
        violations.push(Violation::new(
            "service",
            format!(
                "service id is longer than {MAX_SERVICE_LEN} bytes; call Inquiry/ListServices \
                 for the ids you may call"
            ),
        ));
        return Err(HubError::Invalid(violations));
    }
    let service = policy
        .service(&input.service)
        .ok_or_else(|| HubError::UnknownService(input.service.clone()))?;
    // Described violations stay within MAX_VIOLATIONS; the rest are one counted line.
    let room = MAX_VIOLATIONS.saturating_sub(violations.len());
    if let Err(v) = service.canonicalize_params(&mut input.params, room) {
        violations.extend(
            v.listed
                .into_iter()
                .map(|v| Violation::new(format!("params.{}", v.field), v.description)),
        );
        if v.unlisted > 0 {
            violations.push(Violation::more(v.unlisted));
        }
    }
    if violations.is_empty() {
        Ok(service)
    } else {
        Err(HubError::Invalid(violations))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/national");
        Policy::load_dir(&dir).unwrap()
    }

    fn input(nc: &str) -> InquiryInput {
        InquiryInput {
            tracking_code: "T-۱۴۰۳-0001".to_owned(),
            purpose: "kyc".to_owned(),
            service: "nocr.identity".to_owned(),
            params: [("national_code".to_owned(), nc.to_owned())].into(),
            ..Default::default()
        }
    }

    /// Persian digits in the national code and the tracking code become ASCII.
    #[test]
    fn persian_digits_become_ascii() {
        let p = policy();
        let mut i = input("۲۴۲۹۱۶۳۵۵۱");
        let s = validate(&p, &mut i).unwrap();
        assert_eq!(s.id, "nocr.identity");
        assert_eq!(i.params["national_code"], "2429163551");
        assert_eq!(i.tracking_code, "T-1403-0001");
    }

    /// An invisible character is refused naming the field and saying what was found.
    #[test]
    fn invisible_character_names_the_field() {
        let p = policy();
        for bad in [
            "2429\u{200C}163551",
            "\u{202E}2429163551",
            "24291\u{0}63551",
        ] {
            let Err(HubError::Invalid(v)) = validate(&p, &mut input(bad)) else {
                panic!("{bad:?} accepted");
            };
            assert_eq!(v[0].field, "params.national_code");
            assert!(v[0].description.contains("invisible character"), "{v:?}");
        }
    }

    /// Ten thousand unknown parameters give MAX_VIOLATIONS violations and one count.
    #[test]
    fn many_unknown_params_are_counted() {
        let p = policy();
        let mut i = input("2429163551");
        i.params
            .extend((0..10_000).map(|n| (format!("x{n:05}"), "1".to_owned())));
        let Err(HubError::Invalid(v)) = validate(&p, &mut i) else {
            panic!("accepted");
        };
        assert_eq!(v.len(), MAX_VIOLATIONS + 1);
        assert!(v[MAX_VIOLATIONS].description.contains("9980 more"), "{v:?}");
    }

    /// An unknown service is NOT_FOUND, not a violation list.
    #[test]
    fn unknown_service() {
        let p = policy();
        let mut i = input("2429163551");
        i.service = "nope".to_owned();
        assert!(matches!(
            validate(&p, &mut i),
            Err(HubError::UnknownService(_))
        ));
    }
}
