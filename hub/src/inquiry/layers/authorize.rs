//! Authorize: the caller's grant for the service, purpose and fields (the policy decides),
//! and, for a typed method, the output it answers with.

use tabadol_policy::{Decision, DecisionRequest, Policy};

use crate::edge::error::HubError;
use crate::inquiry::pipeline::{Caller, InquiryInput};

/// The fields the caller may receive, in catalog order; refuses a call the grant does not
/// cover, or a typed method whose key output the grant lacks.
pub fn authorize(
    policy: &Policy,
    caller: &Caller,
    input: &InquiryInput,
    at: jiff::Timestamp,
) -> Result<Vec<String>, HubError> {
    let fields = match policy.decide(&DecisionRequest {
        agency: &caller.agency,
        service: &input.service,
        purpose: &input.purpose,
        at,
        requested_fields: &input.fields,
    }) {
        Decision::Allow { fields, .. } => fields,
        Decision::Deny(deny) => return Err(HubError::Denied(deny)),
    };
    // A typed method whose answer is one of the outputs (MatchMobile's `matched`,
    // GetLifeStatus's `alive`) cannot answer without it: a missing field must not read
    // as "false".
    if let Some(missing) = input
        .required_fields
        .iter()
        .find(|f| !fields.iter().any(|g| g == *f))
    {
        return Err(HubError::NotAllowed {
            agency: caller.agency.clone(),
            action: format!(
                "receive the field `{missing}` of service {}, which this method answers with; \
                 its grant does not list it",
                input.service
            ),
        });
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/national");
        Policy::load_dir(&dir).unwrap()
    }

    fn caller(agency: &str) -> Caller {
        Caller {
            agency: agency.to_owned(),
        }
    }

    fn input(service: &str, purpose: &str) -> InquiryInput {
        InquiryInput {
            purpose: purpose.to_owned(),
            service: service.to_owned(),
            ..Default::default()
        }
    }

    /// A granted call gets its granted fields; another agency is denied.
    #[test]
    fn grant_decides() {
        let p = policy();
        let now = jiff::Timestamp::now();
        let i = input("cra.shahkar.match", "kyc");
        let fields = authorize(&p, &caller("cbi"), &i, now).unwrap();
        assert!(fields.iter().any(|f| f == "matched"), "{fields:?}");
        assert!(matches!(
            authorize(&p, &caller("moh"), &i, now),
            Err(HubError::Denied(_))
        ));
    }

    /// A typed method whose key output is not granted is refused naming that field.
    #[test]
    fn missing_key_output_is_refused() {
        let p = policy();
        let mut i = input("cra.shahkar.match", "kyc");
        i.required_fields = &["no-such-output"];
        let Err(e @ HubError::NotAllowed { .. }) =
            authorize(&p, &caller("cbi"), &i, jiff::Timestamp::now())
        else {
            panic!("allowed");
        };
        assert!(e.to_string().contains("`no-such-output`"), "{e}");
    }
}
