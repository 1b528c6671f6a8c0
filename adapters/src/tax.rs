//! Adapter for the national tax administration (سازمان امور مالیاتی): taxpayer status.
//!
//! Wire format (INTA), with `X-Tracking-Code`:
//! `GET {base}/inta/taxpayers?nationalCode=…` or `?legalEntityId=…` →
//! `200 {"status":"OK","data":{"taxpayerId":"…","name":"…","state":"ACTIVE",
//! "registeredOn":"1398-02-15","office":{"code":"101","name":"…"}}}` where `state` is
//! `ACTIVE`, `SUSPENDED` or `CLOSED` and `registeredOn` is Jalali with dashes.
//! Errors: `404 {"status":"NOT_FOUND","message":"…"}`, `400 {"status":"BAD_REQUEST","message":"…"}`.

use futures::future::BoxFuture;
use futures::FutureExt;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::breaker::CircuitConfig;
use crate::http::Transport;
use crate::{
    digits_param, AdapterConfig, ConfigError, Provider, ProviderError, ProviderRequest,
    ProviderResponse, Record,
};

/// Operation `taxpayer`: param `national_code` or `legal_entity_id` → taxpayer_id, name,
/// status (`active`|`suspended`|`closed`), registered_on (Jalali `1398/02/15`), tax_office.
pub const TAXPAYER: &str = "taxpayer";

/// Path of the taxpayer endpoint under the base URL.
pub const TAXPAYERS_PATH: [&str; 2] = ["inta", "taxpayers"];

/// Envelope of every INTA answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// `OK`, `NOT_FOUND`, `BAD_REQUEST`, …
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<TaxpayerDto>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A taxpayer as INTA describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaxpayerDto {
    pub taxpayer_id: String,
    pub name: String,
    /// `ACTIVE`, `SUSPENDED` or `CLOSED`.
    pub state: String,
    /// Jalali `YYYY-MM-DD`.
    pub registered_on: String,
    pub office: OfficeDto,
}

/// A tax office.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfficeDto {
    pub code: String,
    pub name: String,
}

/// The tax adapter.
pub struct TaxAdapter {
    http: Transport,
}

impl TaxAdapter {
    /// An adapter for the INTA endpoint `cfg` describes.
    pub fn new(cfg: &AdapterConfig, circuit: CircuitConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            http: Transport::new(cfg, circuit)?,
        })
    }

    async fn taxpayer(&self, req: &ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        let provider = self.http.provider();
        let nc = req.params.get("national_code").filter(|v| !v.is_empty());
        let le = req.params.get("legal_entity_id").filter(|v| !v.is_empty());
        let (param, wire, value, what) =
            match (nc, le) {
                (Some(v), None) => (
                    "national_code",
                    "nationalCode",
                    v,
                    "a taxpayer with national code",
                ),
                (None, Some(v)) => (
                    "legal_entity_id",
                    "legalEntityId",
                    v,
                    "a taxpayer with legal-entity id",
                ),
                _ => return Err(ProviderError::Rejected {
                    provider: provider.to_owned(),
                    message:
                        "operation taxpayer needs exactly one of national_code and legal_entity_id"
                            .into(),
                }),
            };
        let value = digits_param(provider, param, value)?;
        let mut url = self.http.url(&TAXPAYERS_PATH);
        url.query_pairs_mut().append_pair(wire, value);
        let reply = self.http.send_for(self.http.client().get(url), req).await?;
        let envelope: Option<Envelope> = serde_json::from_slice(&reply.body).ok();
        let dto = match envelope {
            Some(Envelope {
                data: Some(dto), ..
            }) if reply.status.is_success() => dto,
            _ if reply.status.is_success() => {
                return Err(self.http.protocol("INTA answer has no data"));
            }
            Some(e) if reply.status == StatusCode::NOT_FOUND || e.status == "NOT_FOUND" => {
                return Err(ProviderError::NotFound {
                    provider: provider.to_owned(),
                    what: format!("{what} {value}"),
                });
            }
            // INTA's `message` is the provider's text: it is not passed on.
            Some(e) => {
                let message = match e.status.as_str() {
                    "BAD_REQUEST" => "INTA refused the request as malformed (BAD_REQUEST)",
                    _ => "INTA refused the request with a status this hub does not know",
                };
                return Err(self.http.rejected(&reply, Some(message.to_owned())));
            }
            None if reply.status == StatusCode::NOT_FOUND => {
                return Err(self.http.endpoint_missing(&reply));
            }
            None => return Err(self.http.rejected(&reply, None)),
        };
        let status = match dto.state.as_str() {
            "ACTIVE" => "active",
            "SUSPENDED" => "suspended",
            "CLOSED" => "closed",
            _ => {
                return Err(self
                    .http
                    .protocol("taxpayer state is not ACTIVE, SUSPENDED or CLOSED"))
            }
        };
        let record = Record::from([
            ("taxpayer_id".to_owned(), dto.taxpayer_id),
            ("name".to_owned(), dto.name),
            ("status".to_owned(), status.to_owned()),
            (
                "registered_on".to_owned(),
                dto.registered_on.replace('-', "/"),
            ),
            ("tax_office".to_owned(), dto.office.name),
        ]);
        Ok(ProviderResponse {
            records: vec![record],
        })
    }
}

impl Provider for TaxAdapter {
    fn name(&self) -> &str {
        self.http.provider()
    }

    fn circuit_open(&self) -> bool {
        self.http.circuit_open()
    }

    fn call(&self, req: ProviderRequest) -> BoxFuture<'_, Result<ProviderResponse, ProviderError>> {
        async move {
            match req.operation.as_str() {
                TAXPAYER => self.taxpayer(&req).await,
                _ => Err(ProviderError::UnknownOperation {
                    provider: self.http.provider().to_owned(),
                    operation: req.operation,
                }),
            }
        }
        .boxed()
    }
}
