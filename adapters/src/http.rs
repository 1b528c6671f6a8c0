//! The HTTP transport every adapter shares: pooled client, per-call timeout, breaker, error mapping.

use std::error::Error as _;
use std::io;
use std::time::Duration;

use reqwest::header::HeaderValue;
use reqwest::{RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;

use crate::breaker::{CircuitBreaker, CircuitConfig};
use crate::{AdapterConfig, ConfigError, ProviderError};

/// Header carrying the tracking code (R10) to every provider.
pub(crate) const TRACKING_HEADER: &str = "x-tracking-code";

/// A provider answer that was not 5xx: status and full body.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

impl Reply {
    /// Parse the body as `T`, or `Protocol` naming what was expected.
    pub fn json<T: DeserializeOwned>(
        &self,
        provider: &str,
        what: &str,
    ) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| ProviderError::Protocol {
            provider: provider.to_owned(),
            message: format!(
                "HTTP {} body is not a valid {what}: {e}",
                self.status.as_u16()
            ),
        })
    }
}

/// One provider endpoint: a pooled client (keep-alive, HTTP/2 over TLS where the provider offers
/// it), the base URL, the provider's timeout and its circuit breaker.
pub(crate) struct Transport {
    provider: String,
    client: reqwest::Client,
    base: Url,
    timeout: Duration,
    breaker: CircuitBreaker,
}

impl Transport {
    pub fn new(cfg: &AdapterConfig, circuit: CircuitConfig) -> Result<Self, ConfigError> {
        let bad_url = |reason: String| ConfigError::BadBaseUrl {
            provider: cfg.provider.clone(),
            url: cfg.base_url.clone(),
            reason,
        };
        let base = Url::parse(&cfg.base_url).map_err(|e| bad_url(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad_url("scheme must be http or https".into()));
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(bad_url("it needs a host".into()));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(bad_url("it must not have a query or fragment".into()));
        }
        if cfg.timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout {
                provider: cfg.provider.clone(),
            });
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("tabadol-adapters/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_while_idle(true)
            .build()
            .map_err(|e| ConfigError::Client {
                provider: cfg.provider.clone(),
                reason: error_chain(&e),
            })?;
        Ok(Self {
            provider: cfg.provider.clone(),
            client,
            base,
            timeout: cfg.timeout,
            breaker: CircuitBreaker::new(circuit),
        })
    }

    pub fn provider(&self) -> &str {
        &self.provider
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The base URL with `segments` appended, each percent-encoded as one path segment.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("base URL checked to be a base at build time")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// Send `request` with the tracking code, wait at most `min(timeout, provider timeout)` for
    /// the whole answer, and classify failures. 5xx is `Unavailable`; other statuses are returned
    /// for the adapter to read in its provider's format.
    pub async fn send(
        &self,
        request: RequestBuilder,
        tracking_code: &str,
        timeout: Duration,
    ) -> Result<Reply, ProviderError> {
        let tracking =
            HeaderValue::from_str(tracking_code).map_err(|_| ProviderError::Rejected {
                provider: self.provider.clone(),
                message: "tracking code must be printable ASCII".into(),
            })?;
        let permit = self
            .breaker
            .try_acquire()
            .map_err(|open| ProviderError::Unavailable {
                provider: self.provider.clone(),
                reason: format!(
                    "circuit open after repeated failures; next attempt in {} ms",
                    open.retry_in.as_millis()
                ),
            })?;
        let budget = timeout.min(self.timeout);
        let exchange = async {
            let response = request.header(TRACKING_HEADER, tracking).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>(Reply {
                status,
                body: body.to_vec(),
            })
        };
        let outcome = match tokio::time::timeout(budget, exchange).await {
            Err(_elapsed) => Err(self.timed_out(budget)),
            Ok(Err(e)) if e.is_timeout() => Err(self.timed_out(budget)),
            Ok(Err(e)) => Err(ProviderError::Unavailable {
                provider: self.provider.clone(),
                reason: transport_reason(&e),
            }),
            Ok(Ok(reply)) if reply.status.is_server_error() => {
                // What the provider said about its own failure is for the hub's operators
                // (log), not for the calling agency.
                tracing::warn!(
                    message = "Provider answered with a server error.",
                    provider = %self.provider,
                    status = %reply.status,
                    body_bytes = reply.body.len(),
                );
                Err(ProviderError::Unavailable {
                    provider: self.provider.clone(),
                    reason: format!("HTTP {}", reply.status),
                })
            }
            Ok(Ok(reply)) => Ok(reply),
        };
        match &outcome {
            Err(ProviderError::Unavailable { .. }) => permit.failure(),
            // A timeout only says the provider is unhealthy when it had its full budget; a caller
            // with little deadline left must not trip the breaker for everyone.
            Err(ProviderError::Timeout { .. }) if budget >= self.timeout => permit.failure(),
            Err(ProviderError::Timeout { .. }) => drop(permit),
            _ => permit.success(),
        }
        if let Err(error) = &outcome {
            tracing::debug!(message = "Provider call failed.", %error, provider = %self.provider);
        }
        outcome
    }

    fn timed_out(&self, after: Duration) -> ProviderError {
        ProviderError::Timeout {
            provider: self.provider.clone(),
            after,
        }
    }

    /// A 4xx the adapter could not interpret more precisely.
    pub fn rejected(&self, reply: &Reply, message: Option<String>) -> ProviderError {
        ProviderError::Rejected {
            provider: self.provider.clone(),
            message: message.unwrap_or_else(|| format!("HTTP {}", reply.status)),
        }
    }

    /// A 404 without the provider's own error body: the path is wrong, not the subject unknown.
    pub fn endpoint_missing(&self, reply: &Reply) -> ProviderError {
        ProviderError::Protocol {
            provider: self.provider.clone(),
            message: format!(
                "HTTP {} without the provider's error body; is the adapter's base_url right?",
                reply.status
            ),
        }
    }

    /// A 2xx body that does not carry what the protocol promises.
    pub fn protocol(&self, message: impl Into<String>) -> ProviderError {
        ProviderError::Protocol {
            provider: self.provider.clone(),
            message: message.into(),
        }
    }
}

/// A short human reason for a transport failure: "connection refused", "connection reset", …
fn transport_reason(e: &reqwest::Error) -> String {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return match io.kind() {
                io::ErrorKind::ConnectionRefused => "connection refused".into(),
                io::ErrorKind::ConnectionReset => "connection reset".into(),
                io::ErrorKind::ConnectionAborted => "connection aborted".into(),
                io::ErrorKind::NotConnected | io::ErrorKind::BrokenPipe => {
                    "connection closed".into()
                }
                _ => io.to_string(),
            };
        }
        source = s.source();
    }
    if e.is_connect() {
        format!("cannot connect: {}", error_chain(e))
    } else {
        error_chain(e)
    }
}

/// `e` and all its sources joined with ": ".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
