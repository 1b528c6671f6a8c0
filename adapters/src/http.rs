//! The HTTP transport every adapter shares: pooled client, per-call timeout, breaker, error mapping.

use std::error::Error as _;
use std::io;
use std::time::Duration;

use reqwest::header::HeaderValue;
use reqwest::{RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::breaker::{CircuitBreaker, CircuitConfig};
use crate::{AdapterConfig, ConfigError, ProviderError};

/// Header carrying the tracking code (R10) to every provider.
pub(crate) const TRACKING_HEADER: &str = "x-tracking-code";

/// Checks a provider base URL: `https://HOST[:PORT][/PATH]`, or plain `http://` only when the
/// host is loopback (127.0.0.0/8, ::1, `localhost`); no user name, password, query or
/// fragment. Returns the parsed URL, or why it is refused (a sentence saying what to write).
pub fn check_base_url(url: &str) -> Result<Url, String> {
    let base = Url::parse(url).map_err(|e| format!("it is not a URL ({e})"))?;
    if base.cannot_be_a_base() || base.host().is_none() {
        return Err("it needs a host, as in https://provider.example/api".into());
    }
    if !base.username().is_empty() || base.password().is_some() {
        return Err("it must not carry a user name or password".into());
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err("it must not have a query or fragment".into());
    }
    match base.scheme() {
        "https" => Ok(base),
        "http" if is_loopback(&base) => Ok(base),
        "http" => Err(format!(
            "plain http:// is only allowed to a loopback host (127.0.0.0/8, ::1, localhost), \
             not {}; use https://",
            base.host_str().unwrap_or_default()
        )),
        other => Err(format!("scheme {other}:// is not http(s); use https://")),
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    // An IPv6 host is written in brackets; the URL parser has already normalized IPv4 forms
    // such as `127.1` or `0x7f.0.0.1`.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// A provider answer that was not 5xx: status and full body (at most the body cap).
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

impl Reply {
    /// Parse the body as `T`, or `Protocol` naming what was expected. The message says where
    /// the body went wrong, never what it said (provider text is not passed on).
    pub fn json<T: DeserializeOwned>(
        &self,
        provider: &str,
        what: &str,
    ) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            let kind = match e.classify() {
                Category::Syntax => "not JSON",
                Category::Eof => "JSON cut short",
                Category::Data => "JSON of another shape",
                Category::Io => "unreadable",
            };
            ProviderError::Protocol {
                provider: provider.to_owned(),
                message: format!(
                    "HTTP {} body is not a valid {what} ({kind} at line {} column {})",
                    self.status.as_u16(),
                    e.line(),
                    e.column()
                ),
            }
        })
    }
}

/// Why one exchange with the provider failed.
enum Exchange {
    Http(reqwest::Error),
    /// The answer is longer than the body cap (`declared`: its Content-Length, if it gave one).
    TooLarge {
        declared: Option<u64>,
    },
}

impl From<reqwest::Error> for Exchange {
    fn from(e: reqwest::Error) -> Self {
        Exchange::Http(e)
    }
}

/// One provider endpoint: a pooled client (keep-alive, HTTP/2 over TLS where the provider offers
/// it), the base URL, the provider's timeout, the body cap and its circuit breaker.
pub(crate) struct Transport {
    provider: String,
    client: reqwest::Client,
    base: Url,
    timeout: Duration,
    max_body: usize,
    breaker: CircuitBreaker,
}

impl Transport {
    pub fn new(cfg: &AdapterConfig, circuit: CircuitConfig) -> Result<Self, ConfigError> {
        let base = check_base_url(&cfg.base_url).map_err(|reason| ConfigError::BadBaseUrl {
            provider: cfg.provider.clone(),
            url: cfg.base_url.clone(),
            reason,
        })?;
        if cfg.timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout {
                provider: cfg.provider.clone(),
            });
        }
        if cfg.max_body_bytes == 0 {
            return Err(ConfigError::ZeroBodyCap {
                provider: cfg.provider.clone(),
            });
        }
        let https = base.scheme() == "https";
        if !https && (cfg.tls.ca_pem.is_some() || cfg.tls.client.is_some()) {
            return Err(ConfigError::TlsWithoutHttps {
                provider: cfg.provider.clone(),
                url: cfg.base_url.clone(),
            });
        }
        let client_error = |what: &str, e: &reqwest::Error| ConfigError::Client {
            provider: cfg.provider.clone(),
            reason: format!("{what}: {}", error_chain(e)),
        };
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("tabadol-adapters/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_while_idle(true)
            // A provider API answers where it is asked; following a redirect could take the
            // hub (and the subject's identifiers in the path) anywhere, plain http included.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(https);
        if let Some(ca) = &cfg.tls.ca_pem {
            // The provider's own CA replaces the web PKI roots: nobody else may vouch for it.
            builder = builder.tls_built_in_root_certs(false);
            for cert in
                reqwest::Certificate::from_pem_bundle(ca).map_err(|e| client_error("tls.ca", &e))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(id) = &cfg.tls.client {
            let mut pem = id.cert_pem.clone();
            pem.push(b'\n');
            pem.extend_from_slice(&id.key_pem);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| client_error("tls.cert / tls.key", &e))?;
            builder = builder.identity(identity);
        }
        let client = builder
            .build()
            .map_err(|e| client_error("TLS settings", &e))?;
        Ok(Self {
            provider: cfg.provider.clone(),
            client,
            base,
            timeout: cfg.timeout,
            max_body: cfg.max_body_bytes,
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

    /// True while the breaker fails calls fast.
    pub fn circuit_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// [`Transport::send`] for one provider request: its tracking code, deadline and W3C
    /// `traceparent`.
    pub async fn send_for(
        &self,
        mut request: RequestBuilder,
        req: &crate::ProviderRequest,
    ) -> Result<Reply, ProviderError> {
        if let Some(tp) = req.traceparent.as_deref() {
            // Only a well-formed W3C value is passed on (55 printable characters).
            if tp.len() == 55 && tp.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                request = request.header("traceparent", tp);
            }
        }
        self.send(request, &req.tracking_code, req.timeout).await
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
            let body = self.read_capped(response).await?;
            Ok::<_, Exchange>(Reply { status, body })
        };
        let outcome = match tokio::time::timeout(budget, exchange).await {
            Err(_elapsed) => Err(self.timed_out(budget)),
            Ok(Err(Exchange::Http(e))) if e.is_timeout() => Err(self.timed_out(budget)),
            Ok(Err(Exchange::Http(e))) => Err(ProviderError::Unavailable {
                provider: self.provider.clone(),
                reason: transport_reason(&e),
            }),
            Ok(Err(Exchange::TooLarge { declared })) => {
                tracing::warn!(
                    message = "Provider answer is larger than its body cap; not read.",
                    provider = %self.provider,
                    max_body_bytes = self.max_body,
                    content_length = ?declared,
                );
                Err(ProviderError::Unavailable {
                    provider: self.provider.clone(),
                    reason: format!(
                        "its answer is larger than the hub's limit of {} bytes \
                         (max_body_bytes in the provider's configuration)",
                        self.max_body
                    ),
                })
            }
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

    /// The body, read chunk by chunk and refused as soon as it would pass the cap (a declared
    /// Content-Length above the cap is refused before reading anything). Dropping the response
    /// mid-body closes the HTTP/1 connection or resets the HTTP/2 stream, so the rest is never
    /// received.
    async fn read_capped(&self, mut response: reqwest::Response) -> Result<Vec<u8>, Exchange> {
        let declared = response.content_length();
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(Exchange::TooLarge { declared });
        }
        let expected = declared.map_or(0, |n| n as usize);
        let mut body = Vec::with_capacity(expected.min(self.max_body));
        while let Some(chunk) = response.chunk().await? {
            if chunk.len() > self.max_body - body.len() {
                return Err(Exchange::TooLarge { declared });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
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

/// A short reason for a transport failure in the hub's own words: "connection refused", "its
/// certificate is not issued by a trusted CA", … Never the provider's text (a certificate's
/// names, a body) and never the request URL (it holds the subject's identifiers).
fn transport_reason(e: &reqwest::Error) -> String {
    if let Some(tls) = e.source().and_then(find_tls) {
        return tls_reason(tls);
    }
    let mut source = e.source();
    while let Some(s) = source {
        // An HTTP/2 error names no source; its text would include the peer's GOAWAY debug
        // data (provider text), so only its io error or its reason code is used.
        let h2 = s.downcast_ref::<h2::Error>();
        if let Some(h2) = h2.filter(|h| h.get_io().is_none()) {
            return match h2.reason() {
                Some(reason) if h2.is_go_away() => {
                    format!("it closed the HTTP/2 connection ({reason})")
                }
                Some(reason) => format!("HTTP/2 stream failed ({reason})"),
                None => "HTTP/2 exchange failed".into(),
            };
        }
        if let Some(io) = h2
            .and_then(h2::Error::get_io)
            .or_else(|| s.downcast_ref::<io::Error>())
        {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return tls_reason(tls);
            }
            return match io.kind() {
                io::ErrorKind::ConnectionRefused => "connection refused".into(),
                io::ErrorKind::ConnectionReset => "connection reset".into(),
                io::ErrorKind::ConnectionAborted => "connection aborted".into(),
                io::ErrorKind::NotConnected | io::ErrorKind::BrokenPipe => {
                    "connection closed".into()
                }
                io::ErrorKind::UnexpectedEof => "connection closed mid-answer".into(),
                // HTTP/2 keeps only the kind of a TLS alert received after the handshake.
                io::ErrorKind::InvalidData => "connection failed (invalid data: a TLS alert, \
                    e.g. the provider refused the hub's client certificate (check its tls.cert \
                    and tls.key), or a malformed answer)"
                    .into(),
                kind => format!("connection failed ({kind})"),
            };
        }
        source = s.source();
    }
    // reqwest's own message names the request URL; say what kind of failure it was instead
    // and add the (library-written) causes.
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "its answer broke off"
    } else {
        "the exchange failed"
    };
    match e.source() {
        Some(cause) => format!("{kind}: {}", error_chain(cause)),
        None => kind.to_owned(),
    }
}

/// The TLS error somewhere in `e`'s chain, looking inside io errors too (the connector wraps
/// the handshake's io error in another).
fn find_tls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(inner) = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
        let inner: &'a (dyn std::error::Error + 'static) = inner;
        if let Some(tls) = find_tls(inner) {
            return Some(tls);
        }
    }
    e.source().and_then(find_tls)
}

/// Why a TLS handshake with a provider failed, with what to check.
fn tls_reason(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let what = match e {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "its certificate is not issued by a CA the hub trusts for it (check the provider's tls.ca)"
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "its certificate has expired"
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "its certificate is not valid yet"
        }
        E::InvalidCertificate(C::Revoked) => "its certificate is revoked",
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "its certificate is not valid for the host of base_url"
        }
        E::InvalidCertificate(_) => "its certificate was refused",
        E::AlertReceived(
            A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::AccessDenied
            | A::HandshakeFailure,
        ) => {
            "it refused the hub's TLS client certificate (check the provider's tls.cert and tls.key)"
        }
        E::AlertReceived(_) => "it ended the TLS handshake",
        _ => "the TLS handshake failed",
    };
    format!("TLS: {what}")
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
