//! Condition: a conditional grant (R4) is answered only when its condition holds in the
//! current version of its dataset — checked after authorize, before the provider is called;
//! costs one hash lookup.

use tabadol_policy::Policy;

use crate::edge::error::HubError;
use crate::events::datasets::DatasetIndex;
use crate::inquiry::pipeline::{Caller, InquiryInput};

/// Refuses the call with [`HubError::ConditionNotMet`] when the caller's grant carries a
/// condition that does not hold for this request at `at`.
pub fn check(
    policy: &Policy,
    datasets: &DatasetIndex,
    caller: &Caller,
    input: &InquiryInput,
    at: jiff::Timestamp,
) -> Result<(), HubError> {
    match policy
        .grant(&caller.agency, &input.service)
        .and_then(|g| g.condition.as_ref())
    {
        Some(c) => datasets.check(c, &input.params, at),
        None => Ok(()),
    }
}
