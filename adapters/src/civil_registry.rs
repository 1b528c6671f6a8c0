//! Adapter for the NOCR civil registry (ثبت احوال): identity and life status of natural persons.
//!
//! Wire format (NOCR v2), both with `X-Tracking-Code`:
//! - `GET {base}/nocr/v2/persons/{nin}` → `200 {"nin":"0499370899","firstName":"علی",
//!   "lastName":"احمدی","fatherName":"حسن","birthDate":"13650412","genderCode":1,
//!   "birthPlace":"تهران","shenasnamehNo":"1234"}` (dates are compact Jalali `YYYYMMDD`;
//!   `genderCode` 1 = male, 2 = female).
//! - `GET {base}/nocr/v2/persons/{nin}/life-status` → `200 {"nin":"…","isAlive":false,
//!   "deathDate":"14010305"}` (`deathDate` null while alive).
//! - Errors: `404 {"errorCode":"PERSON_NOT_FOUND","errorMessage":"…"}`,
//!   `400 {"errorCode":"INVALID_NIN","errorMessage":"…"}`.

use futures::future::BoxFuture;
use futures::FutureExt;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::breaker::CircuitConfig;
use crate::http::{Reply, Transport};
use crate::{
    digits_param, required_param, AdapterConfig, ConfigError, Provider, ProviderError,
    ProviderRequest, ProviderResponse, Record,
};

/// Operation `identity`: param `national_code` → national_code, first_name, last_name,
/// father_name, birth_date (Jalali `1365/04/12`), gender (`male`|`female`), birth_place,
/// shenasnameh_no.
pub const IDENTITY: &str = "identity";
/// Operation `life-status`: param `national_code` → alive (`true`|`false`), death_date (Jalali or "").
pub const LIFE_STATUS: &str = "life-status";

/// `errorCode` NOCR uses for an unknown national code.
pub const PERSON_NOT_FOUND: &str = "PERSON_NOT_FOUND";
/// `errorCode` NOCR uses for a malformed national code.
pub const INVALID_NIN: &str = "INVALID_NIN";

/// Body of `GET /nocr/v2/persons/{nin}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersonDto {
    pub nin: String,
    pub first_name: String,
    pub last_name: String,
    pub father_name: String,
    /// Compact Jalali `YYYYMMDD`.
    pub birth_date: String,
    /// 1 = male, 2 = female.
    pub gender_code: u8,
    pub birth_place: String,
    pub shenasnameh_no: String,
}

/// Body of `GET /nocr/v2/persons/{nin}/life-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifeStatusDto {
    pub nin: String,
    pub is_alive: bool,
    /// Compact Jalali `YYYYMMDD`, null while alive.
    pub death_date: Option<String>,
}

/// NOCR error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDto {
    pub error_code: String,
    pub error_message: String,
}

/// The hub's sentence for an NOCR refusal `errorCode`.
fn refusal(code: &str) -> &'static str {
    match code {
        INVALID_NIN => "NOCR refused the national code as invalid (INVALID_NIN)",
        "MISSING_TRACKING_CODE" => "NOCR did not receive the tracking code (MISSING_TRACKING_CODE)",
        _ => "NOCR refused the request with an error code this hub does not know",
    }
}

/// `13650412` → `1365/04/12`; `None` unless eight ASCII digits.
pub fn compact_jalali_to_slashed(s: &str) -> Option<String> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("{}/{}/{}", &s[..4], &s[4..6], &s[6..]))
}

/// `1365/04/12` → `13650412` (the inverse, used by the simulator).
pub fn slashed_jalali_to_compact(s: &str) -> String {
    s.replace('/', "")
}

/// The civil-registry adapter.
pub struct CivilRegistryAdapter {
    http: Transport,
}

impl CivilRegistryAdapter {
    /// An adapter for the NOCR endpoint `cfg` describes.
    pub fn new(cfg: &AdapterConfig, circuit: CircuitConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            http: Transport::new(cfg, circuit)?,
        })
    }

    async fn get(&self, req: &ProviderRequest, life_status: bool) -> Result<Reply, ProviderError> {
        let provider = self.http.provider();
        let nin = digits_param(
            provider,
            "national_code",
            required_param(provider, req, "national_code")?,
        )?;
        let url = if life_status {
            self.http
                .url(&["nocr", "v2", "persons", nin, "life-status"])
        } else {
            self.http.url(&["nocr", "v2", "persons", nin])
        };
        let reply = self.http.send_for(self.http.client().get(url), req).await?;
        if reply.status.is_success() {
            return Ok(reply);
        }
        let error: Option<ErrorDto> = serde_json::from_slice(&reply.body).ok();
        Err(match error {
            Some(e)
                if reply.status == StatusCode::NOT_FOUND || e.error_code == PERSON_NOT_FOUND =>
            {
                ProviderError::NotFound {
                    provider: provider.to_owned(),
                    what: format!("a person with national code {nin}"),
                }
            }
            // `errorMessage` (and an unknown `errorCode`) is the provider's text: it is not
            // passed on to the calling agency, which gets the hub's own sentence.
            Some(e) => self
                .http
                .rejected(&reply, Some(refusal(&e.error_code).to_owned())),
            None if reply.status == StatusCode::NOT_FOUND => self.http.endpoint_missing(&reply),
            None => self.http.rejected(&reply, None),
        })
    }

    async fn identity(&self, req: &ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        let reply = self.get(req, false).await?;
        let p: PersonDto = reply.json(self.http.provider(), "NOCR person")?;
        let gender = match p.gender_code {
            1 => "male",
            2 => "female",
            other => return Err(self.http.protocol(format!("unknown genderCode {other}"))),
        };
        let birth_date = compact_jalali_to_slashed(&p.birth_date).ok_or_else(|| {
            self.http
                .protocol("birthDate is not a compact Jalali date YYYYMMDD")
        })?;
        let record = Record::from([
            ("national_code".to_owned(), p.nin),
            ("first_name".to_owned(), p.first_name),
            ("last_name".to_owned(), p.last_name),
            ("father_name".to_owned(), p.father_name),
            ("birth_date".to_owned(), birth_date),
            ("gender".to_owned(), gender.to_owned()),
            ("birth_place".to_owned(), p.birth_place),
            ("shenasnameh_no".to_owned(), p.shenasnameh_no),
        ]);
        Ok(ProviderResponse {
            records: vec![record],
        })
    }

    async fn life_status(&self, req: &ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        let reply = self.get(req, true).await?;
        let s: LifeStatusDto = reply.json(self.http.provider(), "NOCR life status")?;
        let death_date = match &s.death_date {
            None => String::new(),
            Some(d) => compact_jalali_to_slashed(d).ok_or_else(|| {
                self.http
                    .protocol("deathDate is not a compact Jalali date YYYYMMDD")
            })?,
        };
        if !s.is_alive && death_date.is_empty() {
            return Err(self
                .http
                .protocol("isAlive is false but deathDate is missing"));
        }
        let record = Record::from([
            ("alive".to_owned(), s.is_alive.to_string()),
            ("death_date".to_owned(), death_date),
        ]);
        Ok(ProviderResponse {
            records: vec![record],
        })
    }
}

impl Provider for CivilRegistryAdapter {
    fn name(&self) -> &str {
        self.http.provider()
    }

    fn circuit_open(&self) -> bool {
        self.http.circuit_open()
    }

    fn call(&self, req: ProviderRequest) -> BoxFuture<'_, Result<ProviderResponse, ProviderError>> {
        async move {
            match req.operation.as_str() {
                IDENTITY => self.identity(&req).await,
                LIFE_STATUS => self.life_status(&req).await,
                _ => Err(ProviderError::UnknownOperation {
                    provider: self.http.provider().to_owned(),
                    operation: req.operation,
                }),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jalali_compact_conversion() {
        assert_eq!(
            compact_jalali_to_slashed("13650412").as_deref(),
            Some("1365/04/12")
        );
        assert_eq!(compact_jalali_to_slashed("1365/04/12"), None);
        assert_eq!(slashed_jalali_to_compact("1365/04/12"), "13650412");
    }
}
