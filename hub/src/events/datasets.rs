//! Published datasets (R3): whole-version validation of the divestment list, the durable
//! store (sled), and the in-memory index conditional grants (R4) are evaluated against —
//! one hash lookup per inquiry, a new version swapped in atomically.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tabadol_policy::jalali::JalaliDate;
use tabadol_policy::model::{Condition, ConditionRule};
use tabadol_proto::v1::{DatasetVersion, DivestmentPeriod, DivestmentRecord, DivestmentStatus};

use crate::edge::error::{clip, HubError, Violation};

/// Most records in one version (the whole privatization portfolio is a few thousand).
pub const MAX_RECORDS: usize = 100_000;
/// Most earlier entry/exit periods of one record (session 26: three in 1400).
pub const MAX_EARLIER_PERIODS: usize = 3;
/// Longest enterprise name, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Longest version id, in bytes.
pub const MAX_VERSION_LEN: usize = 64;
/// Longest date field looked at, in bytes (Persian digits take two bytes each).
const MAX_DATE_LEN: usize = 32;

/// How a divestment status is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    ToBeDivested,
    BeingDivested,
    Divested,
}

impl Status {
    fn to_proto(self) -> DivestmentStatus {
        match self {
            Status::ToBeDivested => DivestmentStatus::ToBeDivested,
            Status::BeingDivested => DivestmentStatus::BeingDivested,
            Status::Divested => DivestmentStatus::Divested,
        }
    }
}

/// One validated record, in canonical form (ASCII digits, `YYYY/MM/DD`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub enterprise_id: String,
    pub name: String,
    pub status: Status,
    pub last_entry: JalaliDate,
    pub exit: Option<JalaliDate>,
    /// Earlier (entry, exit) periods.
    pub earlier: Vec<(JalaliDate, JalaliDate)>,
}

/// One accepted version of a dataset, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVersion {
    pub dataset: String,
    pub version: String,
    pub publisher: String,
    /// RFC 3339, UTC.
    pub published_at: String,
    /// Hex SHA-256 of the canonical records (decides whether a re-publish is the same).
    pub digest: String,
    pub records: Vec<Record>,
}

impl StoredVersion {
    /// The wire form.
    pub fn to_proto(&self) -> DatasetVersion {
        DatasetVersion {
            dataset: self.dataset.clone(),
            version: self.version.clone(),
            publisher: self.publisher.clone(),
            published_at: self.published_at.clone(),
            records: self
                .records
                .iter()
                .map(|r| DivestmentRecord {
                    enterprise_id: r.enterprise_id.clone(),
                    name: r.name.clone(),
                    status: r.status.to_proto() as i32,
                    last_entry_date: r.last_entry.to_string(),
                    exit_date: r.exit.map(|d| d.to_string()).unwrap_or_default(),
                    earlier_periods: r
                        .earlier
                        .iter()
                        .map(|(a, b)| DivestmentPeriod {
                            entry_date: a.to_string(),
                            exit_date: b.to_string(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Hex SHA-256 over the canonical JSON of the records.
fn digest(records: &[Record]) -> String {
    let bytes = serde_json::to_vec(records).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// Checks a version id: 1 to 64 of letters, digits, `-`, `_`, `.`.
pub fn validate_version(version: &str) -> Result<(), Violation> {
    let ok = !version.is_empty()
        && version.len() <= MAX_VERSION_LEN
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Violation::new(
            "version",
            format!(
                "give the version an id of 1 to {MAX_VERSION_LEN} letters, digits, `-`, `_` or `.`, e.g. `1403-05`"
            ),
        ))
    }
}

/// Validates a whole version of a divestment list: every bad record is reported, naming
/// its index and field (`records[3].last_entry_date`); nothing is accepted unless all are
/// good. Returns the records in canonical form.
pub fn validate_divestment(records: Vec<DivestmentRecord>) -> Result<Vec<Record>, Vec<Violation>> {
    if records.len() > MAX_RECORDS {
        return Err(vec![Violation::new(
            "records",
            format!(
                "{} records; a version may hold at most {MAX_RECORDS}",
                records.len()
            ),
        )]);
    }
    let mut out = Vec::with_capacity(records.len());
    let mut bad = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(records.len());
    for (i, r) in records.into_iter().enumerate() {
        let field = |f: &str| format!("records[{i}].{f}");
        macro_rules! v {
            ($f:expr, $d:expr $(,)?) => {
                bad.push(Violation::new(field($f), String::from($d)))
            };
        }
        let id = match tabadol_policy::ids::canonical(&r.enterprise_id) {
            Ok(id) => id.into_owned(),
            Err(e) => {
                v!("enterprise_id", e.to_string());
                String::new()
            }
        };
        let mut id_ok = !id.is_empty();
        if r.enterprise_id.trim().is_empty() {
            v!(
                "enterprise_id",
                "the enterprise national id is required; only enterprises with one are listed",
            );
            id_ok = false;
        } else if id_ok {
            if let Err(e) = tabadol_policy::ids::validate_legal_entity_id(&id) {
                v!("enterprise_id", e.to_string());
                id_ok = false;
            }
        }
        if id_ok {
            if let Some(first) = seen.insert(id.clone(), i) {
                v!(
                    "enterprise_id",
                    format!("enterprise {id} is listed twice (first at records[{first}]); one record per enterprise"),
                );
            }
        }
        let name = r.name.trim().to_owned();
        if name.is_empty() {
            v!("name", "the enterprise's name is required");
        } else if name.chars().count() > MAX_NAME_CHARS {
            v!(
                "name",
                format!("the name is longer than {MAX_NAME_CHARS} characters"),
            );
        }
        let status = match DivestmentStatus::try_from(r.status) {
            Ok(DivestmentStatus::ToBeDivested) => Some(Status::ToBeDivested),
            Ok(DivestmentStatus::BeingDivested) => Some(Status::BeingDivested),
            Ok(DivestmentStatus::Divested) => Some(Status::Divested),
            _ => {
                v!(
                    "status",
                    "give the status: to be divested, being divested or divested",
                );
                None
            }
        };
        macro_rules! date {
            ($f:expr, $s:expr, $required:expr $(,)?) => {
                match parse_date($s, $required) {
                    Ok(d) => Ok(d),
                    Err(e) => {
                        bad.push(Violation::new(field(&$f), e));
                        Err(())
                    }
                }
            };
        }
        let last_entry = date!("last_entry_date", &r.last_entry_date, true);
        let exit = date!("exit_date", &r.exit_date, false);
        if r.earlier_periods.len() > MAX_EARLIER_PERIODS {
            v!(
                "earlier_periods",
                format!(
                    "{} earlier periods; at most {MAX_EARLIER_PERIODS}",
                    r.earlier_periods.len()
                ),
            );
        }
        let mut earlier = Vec::new();
        let mut earlier_ok = true;
        for (j, p) in r
            .earlier_periods
            .iter()
            .take(MAX_EARLIER_PERIODS)
            .enumerate()
        {
            let a = date!(
                &format!("earlier_periods[{j}].entry_date"),
                &p.entry_date,
                true,
            );
            let b = date!(
                &format!("earlier_periods[{j}].exit_date"),
                &p.exit_date,
                true,
            );
            match (a, b) {
                (Ok(Some(a)), Ok(Some(b))) => earlier.push((j, a, b)),
                _ => earlier_ok = false,
            }
        }
        let (Ok(Some(last_entry)), Ok(exit)) = (last_entry, exit) else {
            continue;
        };
        if let Some(x) = exit {
            if x < last_entry {
                v!(
                    "exit_date",
                    format!("exit {x} is before the last entry {last_entry}"),
                );
            }
        }
        for (j, a, b) in &earlier {
            if b < a {
                v!(
                    &format!("earlier_periods[{j}].exit_date"),
                    format!("exit {b} is before its entry {a}"),
                );
            } else if *b > last_entry {
                v!(
                    &format!("earlier_periods[{j}].exit_date"),
                    format!(
                        "an earlier period must end before the last entry {last_entry}, not {b}"
                    ),
                );
            }
        }
        if let (true, Some(status), true) = (id_ok, status, earlier_ok) {
            out.push(Record {
                enterprise_id: id,
                name,
                status,
                last_entry,
                exit,
                earlier: earlier.into_iter().map(|(_, a, b)| (a, b)).collect(),
            });
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(bad)
    }
}

/// A Jalali date field: `None` when empty and optional, else a sentence saying what is wrong.
fn parse_date(s: &str, required: bool) -> Result<Option<JalaliDate>, String> {
    if s.trim().is_empty() {
        return if required {
            Err("required (a Jalali date, YYYY/MM/DD)".into())
        } else {
            Ok(None)
        };
    }
    if s.len() > MAX_DATE_LEN {
        return Err("not a Jalali date (YYYY/MM/DD)".into());
    }
    s.parse::<JalaliDate>()
        .map(Some)
        .map_err(|e| format!("{e}; write a Jalali date, YYYY/MM/DD"))
}

/// One dataset version ready for conditions: enterprise → periods as instants.
pub struct Loaded {
    pub version: Arc<StoredVersion>,
    /// Enterprise id → [start, end) periods; `end` is `None` while on the list.
    periods: HashMap<String, Vec<(jiff::Timestamp, Option<jiff::Timestamp>)>>,
}

impl Loaded {
    fn new(version: StoredVersion) -> Self {
        let periods = version
            .records
            .iter()
            .map(|r| {
                let mut p: Vec<_> = r
                    .earlier
                    .iter()
                    .map(|(a, b)| (a.start_in_tehran(), Some(b.end_in_tehran())))
                    .collect();
                p.push((
                    r.last_entry.start_in_tehran(),
                    r.exit.map(|x| x.end_in_tehran()),
                ));
                (r.enterprise_id.clone(), p)
            })
            .collect();
        Self {
            version: Arc::new(version),
            periods,
        }
    }

    /// Whether `key` is on the list at `at`.
    pub fn listed_at(&self, key: &str, at: jiff::Timestamp) -> bool {
        self.periods.get(key).is_some_and(|ps| {
            ps.iter()
                .any(|(from, until)| *from <= at && until.is_none_or(|u| at < u))
        })
    }
}

/// The current version of every dataset, swapped whole when one changes; a watch fires on
/// every new version (for `Datasets/Subscribe`).
pub struct DatasetIndex {
    current: ArcSwap<HashMap<String, Arc<Loaded>>>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for DatasetIndex {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(HashMap::new()),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl DatasetIndex {
    /// The current version of `dataset`.
    pub fn get(&self, dataset: &str) -> Option<Arc<Loaded>> {
        self.current.load().get(dataset).cloned()
    }

    /// Makes `version` current for its dataset, atomically.
    pub fn install(&self, version: StoredVersion) {
        let loaded = Arc::new(Loaded::new(version));
        self.current.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(loaded.version.dataset.clone(), loaded.clone());
            m
        });
        self.changes.send_modify(|n| *n += 1);
    }

    /// Fires whenever a version is installed.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Evaluates a grant's condition for one request (R4): a hash lookup in the current
    /// version. The error names the dataset and the input, never the dataset's content.
    pub fn check(
        &self,
        condition: &Condition,
        params: &std::collections::BTreeMap<String, String>,
        at: jiff::Timestamp,
    ) -> Result<(), HubError> {
        let key = params.get(&condition.key).map(String::as_str).unwrap_or("");
        let holds = match condition.rule {
            ConditionRule::ListedAtRequestTime => self
                .get(&condition.dataset)
                .is_some_and(|l| l.listed_at(key, at)),
        };
        if holds {
            Ok(())
        } else {
            Err(HubError::ConditionNotMet {
                dataset: condition.dataset.clone(),
                input: condition.key.clone(),
                rule: condition.rule.as_str(),
            })
        }
    }
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// A new version, now current.
    New(Arc<StoredVersion>),
    /// This version id was published before with the same records: nothing changed.
    Again,
}

/// The durable store of dataset versions (sled tree `datasets`): `cur/<dataset>` holds the
/// current version, `ver/<dataset>/<version>` the digest of every version ever accepted.
pub struct DatasetStore {
    db: sled::Db,
    tree: sled::Tree,
}

impl DatasetStore {
    pub fn open(db: &sled::Db) -> anyhow::Result<Self> {
        Ok(Self {
            db: db.clone(),
            tree: db.open_tree("datasets")?,
        })
    }

    /// Every current version, to fill the index at start-up.
    pub fn load_all(&self) -> anyhow::Result<Vec<StoredVersion>> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(b"cur/") {
            let (_, v) = kv?;
            out.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }

    /// Stores a validated version and makes it current, flushed to disk before it returns;
    /// the same version id with the same records again is [`Published::Again`], with other
    /// records an error naming the version.
    pub async fn publish(
        &self,
        dataset: &str,
        version: &str,
        publisher: &str,
        records: Vec<Record>,
    ) -> Result<Published, HubError> {
        let digest = digest(&records);
        let ver_key = format!("ver/{dataset}/{version}");
        let internal = |e: sled::Error| HubError::Internal(format!("dataset store: {e}"));
        if let Some(old) = self.tree.get(&ver_key).map_err(internal)? {
            return if old.as_ref() == digest.as_bytes() {
                Ok(Published::Again)
            } else {
                Err(HubError::Invalid(vec![Violation::new(
                    "version",
                    format!(
                        "version `{}` of {dataset} was already published with other records; publish the new list under a new version id",
                        clip(version, MAX_VERSION_LEN)
                    ),
                )]))
            };
        }
        let stored = StoredVersion {
            dataset: dataset.to_owned(),
            version: version.to_owned(),
            publisher: publisher.to_owned(),
            published_at: jiff::Timestamp::now().to_string(),
            digest: digest.clone(),
            records,
        };
        let bytes = serde_json::to_vec(&stored)
            .map_err(|e| HubError::Internal(format!("dataset encoding: {e}")))?;
        let mut batch = sled::Batch::default();
        batch.insert(ver_key.as_bytes(), digest.as_bytes());
        batch.insert(format!("cur/{dataset}").as_bytes(), bytes);
        self.tree.apply_batch(batch).map_err(internal)?;
        self.db.flush_async().await.map_err(internal)?;
        Ok(Published::New(Arc::new(stored)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, entry: &str, exit: &str) -> DivestmentRecord {
        DivestmentRecord {
            enterprise_id: id.into(),
            name: "شرکت نمونه".into(),
            status: DivestmentStatus::BeingDivested as i32,
            last_entry_date: entry.into(),
            exit_date: exit.into(),
            earlier_periods: vec![],
        }
    }

    /// Every bad record is named by index and field; duplicates point at the first.
    #[test]
    fn every_bad_record_is_named() {
        let mut bad_status = rec("10100000006", "1400/01/01", "");
        bad_status.status = 0;
        let e = validate_divestment(vec![
            rec("10100000006", "1400/01/01", ""),
            rec("10100000005", "1400/01/01", ""),
            rec("10100000006", "1400/13/01", "1399/01/01"),
            bad_status,
        ])
        .unwrap_err();
        let fields: Vec<_> = e.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "records[1].enterprise_id",
                "records[2].enterprise_id",
                "records[2].last_entry_date",
                "records[3].enterprise_id",
                "records[3].status"
            ]
        );
        assert!(e[1].description.contains("first at records[0]"), "{e:?}");
    }

    /// Periods are inclusive of their Tehran days; an open period has no end.
    #[test]
    fn listed_at_follows_periods() {
        let mut r = rec("10100000006", "1402/01/01", "");
        r.earlier_periods.push(DivestmentPeriod {
            entry_date: "1400/01/01".into(),
            exit_date: "1400/12/29".into(),
        });
        let records = validate_divestment(vec![r]).unwrap();
        let l = Loaded::new(StoredVersion {
            dataset: "d".into(),
            version: "v".into(),
            publisher: "p".into(),
            published_at: String::new(),
            digest: digest(&records),
            records,
        });
        let at = |d: &str| d.parse::<JalaliDate>().unwrap().start_in_tehran();
        assert!(l.listed_at("10100000006", at("1400/06/01")));
        assert!(!l.listed_at("10100000006", at("1401/06/01")));
        assert!(l.listed_at("10100000006", at("1404/06/01")));
        assert!(!l.listed_at("10100000005", at("1404/06/01")));
    }
}
