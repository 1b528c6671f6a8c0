//! Adapter for CRA's Shahkar service: does this mobile number belong to this national code.
//!
//! Wire format (Shahkar v1):
//! `POST {base}/api/shahkar/v1/match` with `X-Tracking-Code` and body
//! `{"nationalCode":"0499370899","mobile":"09121234567"}` →
//! `200 {"response":0,"matched":true,"requestId":"<tracking code>","comment":"ok"}`.
//! A non-zero `response` is a refusal (e.g. `601` invalid national code, `602` invalid mobile)
//! and comes with HTTP 400. Shahkar never says whether a national code exists: an unknown code
//! is simply `matched:false`.

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};

use crate::breaker::CircuitConfig;
use crate::http::Transport;
use crate::{
    digits_param, required_param, AdapterConfig, ConfigError, Provider, ProviderError,
    ProviderRequest, ProviderResponse, Record,
};

/// Operation `match-mobile`: params `national_code`, `mobile` → `{matched: "true"|"false"}`.
pub const MATCH_MOBILE: &str = "match-mobile";

/// Path of the match endpoint under the base URL.
pub const MATCH_PATH: [&str; 4] = ["api", "shahkar", "v1", "match"];

/// Request body of `POST /api/shahkar/v1/match`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchRequest {
    pub national_code: String,
    pub mobile: String,
}

/// Response body of `POST /api/shahkar/v1/match` (also the error body, with `matched` absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchResponse {
    /// 0 = answered; anything else is a refusal code explained by `comment`.
    pub response: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Shahkar's refusal code for a malformed request (e.g. no tracking code).
pub const MALFORMED: i32 = 600;
/// Shahkar's refusal code for an invalid national code.
pub const INVALID_NATIONAL_CODE: i32 = 601;
/// Shahkar's refusal code for an invalid mobile number.
pub const INVALID_MOBILE: i32 = 602;

/// The hub's sentence for a Shahkar refusal code.
fn refusal(code: i32) -> String {
    match code {
        MALFORMED => "Shahkar refused the request as malformed (code 600)".into(),
        INVALID_NATIONAL_CODE => "Shahkar refused the national code as invalid (code 601)".into(),
        INVALID_MOBILE => "Shahkar refused the mobile number as invalid (code 602)".into(),
        other => format!("Shahkar refused the request with code {other}"),
    }
}

/// The Shahkar adapter.
pub struct ShahkarAdapter {
    http: Transport,
}

impl ShahkarAdapter {
    /// An adapter for the Shahkar endpoint `cfg` describes.
    pub fn new(cfg: &AdapterConfig, circuit: CircuitConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            http: Transport::new(cfg, circuit)?,
        })
    }

    async fn match_mobile(&self, req: &ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        let provider = self.http.provider();
        let national_code = digits_param(
            provider,
            "national_code",
            required_param(provider, req, "national_code")?,
        )?;
        let mobile = digits_param(provider, "mobile", required_param(provider, req, "mobile")?)?;
        let body = MatchRequest {
            national_code: national_code.to_owned(),
            mobile: mobile.to_owned(),
        };
        let request = self
            .http
            .client()
            .post(self.http.url(&MATCH_PATH))
            .json(&body);
        let reply = self.http.send_for(request, req).await?;
        let answer: Option<MatchResponse> = serde_json::from_slice(&reply.body).ok();
        match answer {
            Some(MatchResponse {
                response: 0,
                matched: Some(matched),
                ..
            }) if reply.status.is_success() => Ok(ProviderResponse {
                records: vec![Record::from([("matched".to_owned(), matched.to_string())])],
            }),
            // `comment` is the provider's text: it is not passed on; the numeric code is.
            Some(MatchResponse { response, .. }) if response != 0 || !reply.status.is_success() => {
                Err(self.http.rejected(&reply, Some(refusal(response))))
            }
            _ if reply.status.is_success() => Err(self
                .http
                .protocol("Shahkar answer lacks response:0 and a boolean matched")),
            _ if reply.status == reqwest::StatusCode::NOT_FOUND => {
                Err(self.http.endpoint_missing(&reply))
            }
            _ => Err(self.http.rejected(&reply, None)),
        }
    }
}

impl Provider for ShahkarAdapter {
    fn name(&self) -> &str {
        self.http.provider()
    }

    fn circuit_open(&self) -> bool {
        self.http.circuit_open()
    }

    fn call(&self, req: ProviderRequest) -> BoxFuture<'_, Result<ProviderResponse, ProviderError>> {
        async move {
            match req.operation.as_str() {
                MATCH_MOBILE => self.match_mobile(&req).await,
                _ => Err(ProviderError::UnknownOperation {
                    provider: self.http.provider().to_owned(),
                    operation: req.operation,
                }),
            }
        }
        .boxed()
    }
}
