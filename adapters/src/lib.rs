//! Provider adapters (Shahkar, civil registry, tax, and the generic HTTP/JSON adapter driven
//! by the catalog) behind one [`Provider`] trait, and simulators of those providers.
//!
//! Every adapter talks to its provider over HTTP/JSON in the provider's own wire format, with one
//! pooled [`reqwest::Client`] per adapter, a per-call timeout of `min(request.timeout,
//! config.timeout)` and a small circuit breaker ([`breaker::CircuitBreaker`]). Adapters answer
//! with flat [`Record`]s so the hub can minimize fields without knowing any provider.
//!
//! The shipped catalog serves the tax administration and the session-26 providers with the
//! generic adapter ([`generic`]); Shahkar and the civil registry keep hand-written adapters
//! because their protocols need code (Shahkar's response codes decide a match; NOCR's life
//! status must be checked for consistency and answers an empty death date while alive).
//! The `tax` adapter kind remains available.
//!
//! [`simulators`] runs every provider as a real HTTP server over deterministic synthetic data
//! for `tabadol dev` and for tests.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

pub mod breaker;
pub mod civil_registry;
pub mod generic;
mod http;
pub mod shahkar;
pub mod simulators;
pub mod tax;
pub mod tls;

pub use breaker::CircuitConfig;
pub use http::check_base_url;
pub use tls::{ClientIdentity, ProviderTls, ProviderTlsFiles, TlsFileError};

/// Largest provider answer body read by default (1 MiB); a larger one is refused, unread.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// One answer row: output field name → value. Field names are the catalog's output names.
pub type Record = BTreeMap<String, String>;

/// One call of one provider operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRequest {
    /// Operation name as the service catalog spells it, e.g. `match-mobile`.
    pub operation: String,
    /// Input parameters, e.g. `national_code` → `0499370899`.
    pub params: BTreeMap<String, String>,
    /// The citizen-facing agency's tracking code (R10); sent to the provider as `X-Tracking-Code`.
    pub tracking_code: String,
    /// What is left of the caller's deadline; the adapter waits at most `min(timeout, config.timeout)`.
    pub timeout: Duration,
    /// The service's `http:` catalog section, read by the generic adapter ([`generic`]);
    /// the hand-written adapters ignore it.
    pub mapping: Option<Arc<tabadol_policy::http_mapping::HttpMapping>>,
    /// W3C `traceparent` of the hub's provider-call span (the caller's trace continued);
    /// sent to the provider as the `traceparent` header when set.
    pub traceparent: Option<String>,
}

/// What a provider answered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProviderResponse {
    /// Answer rows; Shahkar, the civil registry and tax always answer exactly one, a list
    /// service (`records:` in its `http:` section) any number.
    pub records: Vec<Record>,
}

/// Why a provider call failed. Every message names the provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached or answered 5xx, or its circuit is open. Retry later.
    #[error("provider {provider} is unavailable: {reason}")]
    Unavailable { provider: String, reason: String },
    /// The provider did not answer within the call's timeout.
    #[error("provider {provider} did not answer within {after:?}")]
    Timeout { provider: String, after: Duration },
    /// The provider does not know the subject (e.g. no person with that national code).
    #[error("provider {provider} has no record of {what}")]
    NotFound { provider: String, what: String },
    /// The provider refused the request as invalid (4xx other than 404), or inputs were missing.
    #[error("provider {provider} rejected the request: {message}")]
    Rejected { provider: String, message: String },
    /// The provider refused the inputs as invalid, as the catalog's `http.errors` says.
    #[error("provider {provider} refused the request as invalid: {message}")]
    Invalid { provider: String, message: String },
    /// The provider answered something this adapter cannot understand.
    #[error("provider {provider} answered in an unexpected format: {message}")]
    Protocol { provider: String, message: String },
    /// The service catalog names an operation this adapter does not implement.
    #[error(
        "provider {provider} has no operation {operation:?}; check `operation:` in services.yaml"
    )]
    UnknownOperation { provider: String, operation: String },
}

impl ProviderError {
    /// The provider (agency id) this error is about.
    pub fn provider(&self) -> &str {
        match self {
            Self::Unavailable { provider, .. }
            | Self::Timeout { provider, .. }
            | Self::NotFound { provider, .. }
            | Self::Rejected { provider, .. }
            | Self::Invalid { provider, .. }
            | Self::Protocol { provider, .. }
            | Self::UnknownOperation { provider, .. } => provider,
        }
    }
}

/// A provider agency reachable through an adapter.
pub trait Provider: Send + Sync + 'static {
    /// The provider's agency id, e.g. `cra`.
    fn name(&self) -> &str;
    /// Run one operation. Dropping the future cancels the call.
    fn call(&self, req: ProviderRequest) -> BoxFuture<'_, Result<ProviderResponse, ProviderError>>;
    /// True while the adapter's circuit breaker fails calls fast (health reports it).
    fn circuit_open(&self) -> bool {
        false
    }
}

/// Which provider protocol an adapter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdapterKind {
    /// CRA's Shahkar mobile-ownership service (`shahkar`).
    Shahkar,
    /// NOCR civil registry (`civil-registry`).
    CivilRegistry,
    /// National tax administration (`tax`).
    Tax,
    /// Any provider's HTTP/JSON API, as the service's `http:` catalog section says (`http`).
    Http,
}

impl AdapterKind {
    /// Every kind, in catalog spelling order.
    pub const ALL: [AdapterKind; 4] = [Self::Shahkar, Self::CivilRegistry, Self::Tax, Self::Http];

    /// The name used in `services.yaml` (`adapter:`) and in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shahkar => "shahkar",
            Self::CivilRegistry => "civil-registry",
            Self::Tax => "tax",
            Self::Http => "http",
        }
    }
}

impl fmt::Display for AdapterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AdapterKind {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ConfigError::UnknownKind { kind: s.to_owned() })
    }
}

/// How to reach one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterConfig {
    /// Provider agency id, e.g. `cra`; names the provider in errors.
    pub provider: String,
    /// Which protocol the provider speaks.
    pub kind: AdapterKind,
    /// Base URL, e.g. `https://shahkar.example/gw`; plain `http://` only on loopback
    /// ([`check_base_url`]).
    pub base_url: String,
    /// Longest any call to this provider may take.
    pub timeout: Duration,
    /// Largest answer body read from the provider; a larger answer is `Unavailable`, and is
    /// never held in memory whole.
    pub max_body_bytes: usize,
    /// Whom to trust for the provider's server certificate and which client certificate the
    /// hub presents (mutual TLS). Default: the web PKI roots, no client certificate.
    pub tls: ProviderTls,
}

impl AdapterConfig {
    /// A config with the default body cap and TLS settings.
    pub fn new(
        provider: impl Into<String>,
        kind: AdapterKind,
        base_url: impl Into<String>,
        timeout: Duration,
    ) -> AdapterConfig {
        AdapterConfig {
            provider: provider.into(),
            kind,
            base_url: base_url.into(),
            timeout,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            tls: ProviderTls::default(),
        }
    }
}

/// An adapter could not be built from its config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `adapter:` names no known adapter.
    #[error("unknown adapter kind {kind:?}; expected one of shahkar, civil-registry, tax, http")]
    UnknownKind { kind: String },
    /// The base URL does not parse, is not http(s), or is plain http to a host that is not
    /// loopback.
    #[error("provider {provider}: base URL {url:?} is not usable: {reason}")]
    BadBaseUrl {
        provider: String,
        url: String,
        reason: String,
    },
    /// The timeout is zero.
    #[error("provider {provider}: timeout must be greater than zero")]
    ZeroTimeout { provider: String },
    /// The body cap is zero.
    #[error("provider {provider}: max_body_bytes must be greater than zero (default 1048576)")]
    ZeroBodyCap { provider: String },
    /// TLS settings were given for a plain-http base URL.
    #[error("provider {provider}: TLS settings (tls.ca / tls.cert / tls.key) need an https:// base URL, not {url:?}")]
    TlsWithoutHttps { provider: String, url: String },
    /// The HTTP client could not be created (e.g. TLS roots failed to load).
    #[error("provider {provider}: cannot create HTTP client: {reason}")]
    Client { provider: String, reason: String },
}

/// Build the adapter `cfg` describes, with the default circuit breaker
/// (open after 5 consecutive failures, for 2 s).
pub fn build(cfg: &AdapterConfig) -> Result<Arc<dyn Provider>, ConfigError> {
    build_with_circuit(cfg, CircuitConfig::default())
}

/// Build the adapter `cfg` describes with a specific circuit breaker setting.
pub fn build_with_circuit(
    cfg: &AdapterConfig,
    circuit: CircuitConfig,
) -> Result<Arc<dyn Provider>, ConfigError> {
    Ok(match cfg.kind {
        AdapterKind::Shahkar => Arc::new(shahkar::ShahkarAdapter::new(cfg, circuit)?),
        AdapterKind::CivilRegistry => {
            Arc::new(civil_registry::CivilRegistryAdapter::new(cfg, circuit)?)
        }
        AdapterKind::Tax => Arc::new(tax::TaxAdapter::new(cfg, circuit)?),
        AdapterKind::Http => Arc::new(generic::GenericAdapter::new(cfg, circuit)?),
    })
}

/// The value of a required parameter, or `Rejected` naming it.
pub(crate) fn required_param<'a>(
    provider: &str,
    req: &'a ProviderRequest,
    name: &str,
) -> Result<&'a str, ProviderError> {
    match req.params.get(name) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ProviderError::Rejected {
            provider: provider.to_owned(),
            message: format!("operation {} needs parameter {name}", req.operation),
        }),
    }
}

/// Rejects values that are not all ASCII digits (they would be refused by every provider anyway).
pub(crate) fn digits_param<'a>(
    provider: &str,
    name: &str,
    value: &'a str,
) -> Result<&'a str, ProviderError> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        Ok(value)
    } else {
        Err(ProviderError::Rejected {
            provider: provider.to_owned(),
            message: format!("parameter {name} must be digits only"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_kind_round_trips_and_rejects_unknown() {
        for k in AdapterKind::ALL {
            assert_eq!(k.as_str().parse::<AdapterKind>().unwrap(), k);
        }
        let err = "post".parse::<AdapterKind>().unwrap_err();
        assert!(err.to_string().contains("civil-registry"), "{err}");
    }
}
