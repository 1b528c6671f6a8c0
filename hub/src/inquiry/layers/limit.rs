//! Limit: the agency's and the grant's rate limits, built from the policy and swapped with
//! it. Looked up by `&str` keys, so a call allocates nothing here.

use std::collections::HashMap;
use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tabadol_policy::Policy;

use crate::edge::error::HubError;

fn limiter(per_second: u32, burst: u32) -> Option<DefaultDirectRateLimiter> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
    Some(RateLimiter::direct(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

/// The rate limiters of one policy.
#[derive(Default)]
pub struct Limits {
    agency: HashMap<String, DefaultDirectRateLimiter>,
    /// agency → service → the grant's limiter.
    grant: HashMap<String, HashMap<String, DefaultDirectRateLimiter>>,
}

impl Limits {
    pub fn new(policy: &Policy) -> Self {
        let mut limits = Limits::default();
        for agency in policy.agencies() {
            if let Some(rate) = &agency.rate {
                if let Some(l) = limiter(rate.per_second, rate.burst) {
                    limits.agency.insert(agency.id.clone(), l);
                }
            }
            for (service, grant) in policy.grants_for(&agency.id) {
                if let Some(rate) = &grant.rate {
                    if let Some(l) = limiter(rate.per_second, rate.burst) {
                        limits
                            .grant
                            .entry(agency.id.clone())
                            .or_default()
                            .insert(service.id.clone(), l);
                    }
                }
            }
        }
        limits
    }

    /// Takes one call from the agency's and the grant's budget, or says when to retry.
    pub fn check(&self, agency: &str, service: &str) -> Result<(), HubError> {
        let grant = self.grant.get(agency).and_then(|m| m.get(service));
        for l in [self.agency.get(agency), grant].into_iter().flatten() {
            if let Err(not_until) = l.check() {
                let retry_after = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                return Err(HubError::RateLimited {
                    agency: agency.to_owned(),
                    service: service.to_owned(),
                    retry_after,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grant's burst is spent, then the call is RESOURCE_EXHAUSTED with a retry time;
    /// an agency and service without limits is never refused.
    #[test]
    fn burst_then_refused() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/national");
        let policy = Policy::load_dir(&dir).unwrap();
        let limits = Limits::new(&policy);
        // cbi → nocr.identity: 200/s, burst 400 in the shipped grants.
        let mut refused = None;
        for n in 0..2_000 {
            if let Err(e) = limits.check("cbi", "nocr.identity") {
                refused = Some((n, e));
                break;
            }
        }
        let (n, e) = refused.expect("the burst was never exhausted");
        assert!(n >= 400, "refused after {n}");
        assert!(matches!(e, HubError::RateLimited { .. }));
        for _ in 0..2_000 {
            assert!(limits.check("nobody", "nothing").is_ok());
        }
    }
}
