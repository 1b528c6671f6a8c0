//! Provider call: under the caller's deadline, less a margin so the hub answers
//! DEADLINE_EXCEEDED itself (naming the provider) before the transport cuts the call off.
//! The circuit breaker is per provider, inside its adapter (`tabadol_adapters::breaker`):
//! an open circuit fails fast as UNAVAILABLE without spending the budget.

use std::time::{Duration, Instant};

use tabadol_adapters::{Provider, ProviderRequest, ProviderResponse};

use crate::edge::error::HubError;

/// Margin kept back from the caller's deadline.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(25);

/// The time a provider may take: until the caller's deadline (or `default` when it set
/// none), less [`DEADLINE_MARGIN`].
pub fn budget(deadline: Option<Instant>, default: Duration, now: Instant) -> Duration {
    deadline
        .unwrap_or(now + default)
        .saturating_duration_since(now)
        .saturating_sub(DEADLINE_MARGIN)
}

/// Calls `provider` with `request`, giving up after `request.timeout`.
pub async fn call(
    provider: &dyn Provider,
    provider_id: &str,
    request: ProviderRequest,
) -> Result<ProviderResponse, HubError> {
    let budget = request.timeout;
    let expired = || HubError::DeadlineExceeded {
        provider: provider_id.to_owned(),
        budget,
    };
    if budget.is_zero() {
        return Err(expired());
    }
    match tokio::time::timeout(budget, provider.call(request)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(expired()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use tabadol_adapters::ProviderError;

    /// A provider that never answers (a hung backend).
    struct Hung;

    impl Provider for Hung {
        fn name(&self) -> &str {
            "hung"
        }
        fn call(
            &self,
            _: ProviderRequest,
        ) -> BoxFuture<'_, Result<ProviderResponse, ProviderError>> {
            Box::pin(std::future::pending())
        }
    }

    fn request(timeout: Duration) -> ProviderRequest {
        ProviderRequest {
            operation: "op".to_owned(),
            params: Default::default(),
            tracking_code: "T-1".to_owned(),
            timeout,
            mapping: None,
            traceparent: None,
        }
    }

    /// The budget is the caller's deadline less the margin, the default without one, and
    /// zero once the deadline is (nearly) past.
    #[test]
    fn budget_keeps_the_margin() {
        let now = Instant::now();
        let d = Duration::from_secs(10);
        assert_eq!(budget(None, d, now), d - DEADLINE_MARGIN);
        let soon = now + Duration::from_millis(100);
        assert_eq!(budget(Some(soon), d, now), Duration::from_millis(75));
        let past = now + Duration::from_millis(10);
        assert_eq!(budget(Some(past), d, now), Duration::ZERO);
    }

    /// A provider that does not answer within the budget is DEADLINE_EXCEEDED naming it;
    /// a zero budget does not call it at all.
    #[tokio::test]
    async fn hung_provider_times_out() {
        let e = call(&Hung, "nocr", request(Duration::from_millis(50)))
            .await
            .unwrap_err();
        assert!(matches!(&e, HubError::DeadlineExceeded { provider, .. } if provider == "nocr"));
        let e = call(&Hung, "nocr", request(Duration::ZERO))
            .await
            .unwrap_err();
        assert!(matches!(e, HubError::DeadlineExceeded { .. }));
    }
}
