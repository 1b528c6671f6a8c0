//! The policy model as the working group writes it: agencies, the service catalog, grants
//! and subscriptions. See `policy/national/README.md` for the file format.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::http_mapping::HttpMapping;
use crate::ids;
use crate::jalali::{JalaliDate, JalaliDateTime};

/// A government agency or bank connected to the hub (`agencies.yaml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agency {
    /// Short stable id used everywhere in policy, e.g. `cbi`.
    pub id: String,
    /// Official Persian name.
    pub name_fa: String,
    /// English name.
    pub name_en: String,
    /// How a verified client certificate maps to this agency.
    pub certificate: CertificateMatch,
    /// Optional overall quota for everything this agency calls.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// Event types this agency may publish, e.g. `death.v1`.
    #[serde(default)]
    pub publishes: Vec<String>,
    /// Datasets this agency publishes periodically through the hub (R3).
    #[serde(default)]
    pub datasets: Vec<DatasetDef>,
}

/// A dataset one agency publishes periodically (`Datasets/Publish`, R3), defined under its
/// publisher in `agencies.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetDef {
    /// Stable id, e.g. `ipo.divestment-list`.
    pub id: String,
    /// The record schema every version is validated against.
    pub kind: DatasetKind,
    /// Persian title.
    pub title_fa: String,
    /// English title.
    pub title_en: String,
    /// Agencies that may read it (`Datasets/Get`, `Datasets/Subscribe`, a Kafka topic each).
    #[serde(default)]
    pub readers: Vec<String>,
}

/// The record schemas the hub knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// The Privatization Organization's monthly list of enterprises to be divested, being
    /// divested or divested (session 26): enterprise national id, name, status, last entry
    /// (required) and exit date, up to three earlier entry/exit periods.
    DivestmentList,
}

impl DatasetKind {
    /// The name used in `agencies.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetKind::DivestmentList => "divestment-list",
        }
    }
}

/// A condition on a grant (R4): the call is answered only when the dataset says so for the
/// value of one request input.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The dataset consulted, e.g. `ipo.divestment-list`.
    pub dataset: String,
    /// The request input whose value keys the dataset, e.g. `enterprise_id`.
    pub key: String,
    /// What must hold.
    pub rule: ConditionRule,
}

/// The rules a [`Condition`] can state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConditionRule {
    /// The key is on the list and the time of the request lies within one of its
    /// entry/exit periods (an open period when no exit date is given).
    ListedAtRequestTime,
}

impl ConditionRule {
    /// The name used in `grants.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionRule::ListedAtRequestTime => "listed-at-request-time",
        }
    }
}

/// Certificate match rule: the subject common name of the agency's client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateMatch {
    /// Exact subject CN, e.g. `cbi.agency.tabadol.ir`.
    pub common_name: String,
}

/// A token-bucket quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Largest burst above the sustained rate.
    pub burst: u32,
}

/// Which adapter of the `tabadol-adapters` crate serves a provider service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdapterKind {
    /// CRA's Shahkar (mobile ↔ national code match).
    Shahkar,
    /// NOCR civil registry (identity, life status).
    CivilRegistry,
    /// Iran National Tax Administration.
    Tax,
    /// The generic HTTP/JSON adapter, driven by the service's `http:` section
    /// ([`crate::http_mapping`]).
    Http,
}

impl AdapterKind {
    /// The name used in `services.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterKind::Shahkar => "shahkar",
            AdapterKind::CivilRegistry => "civil-registry",
            AdapterKind::Tax => "tax",
            AdapterKind::Http => "http",
        }
    }
}

/// A provider service in the catalog (`services.yaml`), defined by inputs and outputs (R2).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Catalog id, e.g. `cra.shahkar.match`.
    pub id: String,
    /// National service id from the service catalog (R9).
    pub national_service_id: String,
    /// Id of the provider agency.
    pub provider: String,
    /// Adapter that reaches the provider.
    pub adapter: AdapterKind,
    /// Operation of the adapter, e.g. `match-mobile`.
    pub operation: String,
    /// Persian title.
    pub title_fa: String,
    /// English title.
    pub title_en: String,
    /// Accepted inputs.
    pub inputs: Vec<InputSpec>,
    /// Groups of inputs of which exactly one must be given.
    #[serde(default)]
    pub one_of: Vec<Vec<String>>,
    /// Output fields, in the order answers list them.
    pub outputs: Vec<String>,
    /// Planned maintenance windows (R14).
    #[serde(default)]
    pub maintenance: Vec<MaintenanceWindow>,
    /// How the generic adapter calls the provider (`adapter: http` only).
    #[serde(default, deserialize_with = "shared_mapping")]
    pub http: Option<Arc<HttpMapping>>,
}

/// Deserializes an `http:` section once, shared by every call of the service.
fn shared_mapping<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Arc<HttpMapping>>, D::Error> {
    Option::<HttpMapping>::deserialize(d).map(|m| m.map(Arc::new))
}

/// One input of a service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Parameter name.
    pub name: String,
    /// What kind of value; decides validation.
    pub kind: InputKind,
    /// Whether the parameter must always be given (default false).
    #[serde(default)]
    pub required: bool,
}

/// The kind of an input value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// 10-digit national code with check digit.
    NationalCode,
    /// 11-digit legal-entity national id with check digit.
    LegalEntityId,
    /// `09` + 9 digits.
    Mobile,
    /// 10 digits.
    PostalCode,
    /// Free text (non-empty).
    Text,
    /// 1 to 20 ASCII digits (a workshop, branch or certificate number).
    Digits,
    /// A Jalali year, 1300 to 1499.
    JalaliYear,
    /// A month of the Jalali calendar, 1 to 12 (leading zero allowed).
    JalaliMonth,
}

impl InputKind {
    /// The canonical form of a value of this kind: identifiers, mobiles and postal codes
    /// get ASCII digits and may hold no invisible character (the error says which one was
    /// found); free text is kept as given (a ZWNJ belongs in Persian words).
    pub fn canonical(self, value: &str) -> Result<Cow<'_, str>, String> {
        match self {
            InputKind::Text => Ok(Cow::Borrowed(value)),
            InputKind::NationalCode
            | InputKind::LegalEntityId
            | InputKind::Mobile
            | InputKind::PostalCode
            | InputKind::Digits
            | InputKind::JalaliYear
            | InputKind::JalaliMonth => ids::canonical(value).map_err(|e| e.to_string()),
        }
    }

    /// Validates a value of this kind.
    pub fn validate(self, value: &str) -> Result<(), String> {
        let r = match self {
            InputKind::NationalCode => ids::validate_national_code(value),
            InputKind::LegalEntityId => ids::validate_legal_entity_id(value),
            InputKind::Mobile => ids::validate_mobile(value),
            InputKind::PostalCode => ids::validate_postal_code(value),
            InputKind::Digits => {
                return if (1..=20).contains(&value.len())
                    && value.bytes().all(|b| b.is_ascii_digit())
                {
                    Ok(())
                } else {
                    Err("must be 1 to 20 digits".to_owned())
                }
            }
            InputKind::JalaliYear => {
                return match value.parse::<u16>() {
                    Ok(1300..=1499) if value.len() == 4 => Ok(()),
                    _ => Err("must be a Jalali year of four digits, 1300 to 1499".to_owned()),
                }
            }
            InputKind::JalaliMonth => {
                return match value.parse::<u8>() {
                    Ok(1..=12) if value.len() <= 2 && value.bytes().all(|b| b.is_ascii_digit()) => {
                        Ok(())
                    }
                    _ => Err("must be a Jalali month, 1 to 12".to_owned()),
                }
            }
            InputKind::Text => {
                return if value.trim().is_empty() {
                    Err("must not be empty".to_owned())
                } else {
                    Ok(())
                }
            }
        };
        r.map_err(|e| e.to_string())
    }
}

/// A planned outage, in Tehran wall-clock time.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// Start, e.g. `1405/09/01 02:00`.
    pub from: JalaliDateTime,
    /// End (exclusive).
    pub until: JalaliDateTime,
    /// What is announced to consumers.
    #[serde(default)]
    pub note: Option<String>,
}

/// A parameter that failed validation; maps to one gRPC `BadRequest` field violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The parameter name (or the `a|b` group for one-of violations).
    pub field: String,
    /// A sentence saying what is wrong.
    pub description: String,
}

/// The parameter violations of one call: the first ones in full, the rest only counted (a
/// caller sending 10,000 unknown parameters gets a short answer, built with little work).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParamViolations {
    /// The violations reported in full, at most the `max_listed` asked for.
    pub listed: Vec<FieldViolation>,
    /// How many more violations were found but not described.
    pub unlisted: usize,
}

impl ParamViolations {
    fn push(&mut self, max_listed: usize, violation: impl FnOnce() -> FieldViolation) {
        if self.listed.len() < max_listed {
            self.listed.push(violation());
        } else {
            self.unlisted += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.listed.is_empty() && self.unlisted == 0
    }
}

impl Service {
    /// Checks request parameters against the catalog schema: required inputs present,
    /// unknown parameters rejected, values validated by kind, one-of groups given exactly
    /// once. Returns every violation, not only the first. Values are checked in their
    /// canonical form (see [`Service::canonicalize_params`]).
    pub fn validate_params(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<(), Vec<FieldViolation>> {
        let mut canonical = params.clone();
        self.canonicalize_params(&mut canonical, usize::MAX)
            .map_err(|v| v.listed)
    }

    /// Replaces each parameter value by its canonical form for its input kind (Persian and
    /// Arabic-Indic digits become ASCII; an invisible character is a violation saying so),
    /// then checks the parameters as [`Service::validate_params`] does. At most
    /// `max_listed` violations are described; the others are only counted.
    pub fn canonicalize_params(
        &self,
        params: &mut BTreeMap<String, String>,
        max_listed: usize,
    ) -> Result<(), ParamViolations> {
        let mut out = ParamViolations::default();
        for (name, value) in params.iter_mut() {
            match self.inputs.iter().find(|i| &i.name == name) {
                None => out.push(max_listed, || FieldViolation {
                    field: name.clone(),
                    description: format!(
                        "service {} has no input `{name}` (inputs: {})",
                        self.id,
                        self.input_names().collect::<Vec<_>>().join(", ")
                    ),
                }),
                Some(spec) => {
                    let checked = match spec.kind.canonical(value) {
                        Ok(Cow::Borrowed(_)) => spec.kind.validate(value),
                        Ok(Cow::Owned(canonical)) => {
                            *value = canonical;
                            spec.kind.validate(value)
                        }
                        Err(e) => Err(e),
                    };
                    if let Err(e) = checked {
                        out.push(max_listed, || FieldViolation {
                            field: name.clone(),
                            description: e,
                        });
                    }
                }
            }
        }
        for spec in self.inputs.iter().filter(|i| i.required) {
            if !params.contains_key(&spec.name) {
                out.push(max_listed, || FieldViolation {
                    field: spec.name.clone(),
                    description: format!("`{}` is required by service {}", spec.name, self.id),
                });
            }
        }
        for group in &self.one_of {
            let given = group.iter().filter(|g| params.contains_key(*g)).count();
            if given != 1 {
                let names = group.join(" or ");
                out.push(max_listed, || FieldViolation {
                    field: group.join("|"),
                    description: if given == 0 {
                        format!("give one of {names}")
                    } else {
                        format!("give only one of {names}, not {given}")
                    },
                });
            }
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(out)
        }
    }

    /// Names of the inputs, in catalog order.
    pub fn input_names(&self) -> impl Iterator<Item = &str> {
        self.inputs.iter().map(|i| i.name.as_str())
    }

    /// The maintenance window in force at `at`, if any.
    pub fn maintenance_at(&self, at: jiff::Timestamp) -> Option<&MaintenanceWindow> {
        self.maintenance
            .iter()
            .find(|w| w.from.to_timestamp() <= at && at < w.until.to_timestamp())
    }
}

/// A working-group approval that a grant or subscription cites (R1).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Approving body, e.g. `interoperability-working-group`.
    pub body: String,
    /// Session number, e.g. 26.
    pub session: u32,
    /// Session date (Jalali).
    pub date: JalaliDate,
    /// Item of the session's resolutions, as written, e.g. `"1.3"`.
    pub item: String,
    /// Free-text remark, e.g. where the grant is derived from a mandate rather than listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Access of one consumer agency to one provider service (`grants.yaml`).
///
/// `Serialize` gives the content the provider and the secretariat sign (canonical JSON,
/// see [`crate::signatures`]): an optional field added later must skip serializing when
/// absent, so that the signatures of grants without it stay valid.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Stable id of the grant, unique in grants.yaml, e.g. `moe-shahkar`; signatures name
    /// the grant by it.
    pub id: String,
    /// Consumer agency id.
    pub agency: String,
    /// Service id.
    pub service: String,
    /// Output fields the agency may receive (R8), a subset of the service's outputs.
    pub fields: Vec<String>,
    /// Purposes the agency may state.
    pub purposes: Vec<String>,
    /// Optional quota for this grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// First day (inclusive, Tehran time) the grant is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<JalaliDate>,
    /// Last day (inclusive, Tehran time) the grant is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<JalaliDate>,
    /// The approval this grant rests on.
    pub approved: Approval,
    /// A condition checked against a published dataset before the provider is called (R4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    /// The service request (`Inquiry/RequestService`, R16) this grant answers, e.g.
    /// `sr-0192d7a4-…`; `tabadol policy check --requests DATA_DIR` verifies it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// An agency's subscription to published event types (`subscriptions.yaml`); signed like
/// a [`Grant`], by the publishers of its event types and the secretariat.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Stable id of the subscription, unique in subscriptions.yaml, e.g. `cbi-events`.
    pub id: String,
    /// Subscriber agency id.
    pub agency: String,
    /// Event types received, e.g. `death.v1`.
    pub event_types: Vec<String>,
    /// The approval this subscription rests on.
    pub approved: Approval,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tax() -> Service {
        Service {
            id: "inta.taxpayer".into(),
            national_service_id: "x".into(),
            provider: "inta".into(),
            adapter: AdapterKind::Tax,
            operation: "get-taxpayer".into(),
            title_fa: "x".into(),
            title_en: "x".into(),
            inputs: vec![
                InputSpec {
                    name: "national_code".into(),
                    kind: InputKind::NationalCode,
                    required: false,
                },
                InputSpec {
                    name: "legal_entity_id".into(),
                    kind: InputKind::LegalEntityId,
                    required: false,
                },
            ],
            one_of: vec![vec!["national_code".into(), "legal_entity_id".into()]],
            outputs: vec!["status".into()],
            maintenance: vec![],
            http: None,
        }
    }

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A one-of group accepts exactly one member, with a valid value.
    #[test]
    fn one_of_exactly_once() {
        let s = tax();
        assert_eq!(
            s.validate_params(&params(&[("national_code", "0012345679")])),
            Ok(())
        );
        assert_eq!(
            s.validate_params(&params(&[("legal_entity_id", "10100000006")])),
            Ok(())
        );
        let none = s.validate_params(&params(&[])).unwrap_err();
        assert_eq!(
            none[0].description,
            "give one of national_code or legal_entity_id"
        );
        let both = s
            .validate_params(&params(&[
                ("national_code", "0012345679"),
                ("legal_entity_id", "10100000006"),
            ]))
            .unwrap_err();
        assert_eq!(both.len(), 1);
        assert_eq!(both[0].field, "national_code|legal_entity_id");
    }

    /// Unknown parameters, bad checksums and missing required inputs are all reported.
    #[test]
    fn all_violations_reported() {
        let mut s = tax();
        s.one_of.clear();
        s.inputs[0].required = true;
        let v = s
            .validate_params(&params(&[
                ("mobile", "09121234567"),
                ("legal_entity_id", "10100000005"),
            ]))
            .unwrap_err();
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["legal_entity_id", "mobile", "national_code"]);
        assert_eq!(
            v[0].description,
            "legal-entity national id check digit is wrong (expected 6)"
        );
        assert!(v[1].description.contains("has no input `mobile`"));
    }

    /// Persian and Arabic-Indic digits are replaced by ASCII ones before validation, and an
    /// invisible character is refused with a sentence saying so.
    #[test]
    fn params_are_canonicalized_before_validation() {
        let s = tax();
        let mut p = params(&[("national_code", "۲۴۲۹۱۶۳۵۵۱")]);
        assert_eq!(s.canonicalize_params(&mut p, 20), Ok(()));
        assert_eq!(p["national_code"], "2429163551");
        let mut p = params(&[("legal_entity_id", "١٠١٠٠٠٠٠٠٠٦")]);
        assert_eq!(s.canonicalize_params(&mut p, 20), Ok(()));
        assert_eq!(p["legal_entity_id"], "10100000006");
        let mut p = params(&[("national_code", "2429\u{200C}163551")]);
        let v = s.canonicalize_params(&mut p, 20).unwrap_err();
        assert_eq!(v.listed[0].field, "national_code");
        assert!(v.listed[0]
            .description
            .contains("invisible character U+200C"));
    }

    /// Beyond `max_listed`, violations are counted, not described.
    #[test]
    fn violations_beyond_the_limit_are_counted() {
        let s = tax();
        let mut p: BTreeMap<String, String> = (0..10_000)
            .map(|i| (format!("p{i}"), "x".to_owned()))
            .collect();
        let v = s.canonicalize_params(&mut p, 20).unwrap_err();
        assert_eq!(v.listed.len(), 20);
        // 10,000 unknown parameters and the missing one-of group.
        assert_eq!(v.unlisted, 10_000 + 1 - 20);
    }
}
