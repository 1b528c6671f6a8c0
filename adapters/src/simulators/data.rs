//! Deterministic synthetic population for the simulators: persons, legal entities, taxpayers.
//!
//! Everything derives from one seed through SplitMix64, so the same seed gives the same data on
//! every machine and every run. Names are Persian, dates are Jalali strings picked directly
//! (year 1330..1385, month 1..12, day 1..29 is always a valid date), national codes and
//! legal-entity ids carry valid check digits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;

use serde_json::{json, Value};

/// How many persons [`Dataset::generate`] makes.
pub const PERSONS: usize = 200;
/// How many legal entities [`Dataset::generate`] makes.
pub const LEGAL_ENTITIES: usize = 20;

/// A person's sex as the civil registry records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gender {
    Male,
    Female,
}

impl Gender {
    /// `male` or `female`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Male => "male",
            Self::Female => "female",
        }
    }
}

/// A natural person known to the civil registry and to Shahkar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub national_code: String,
    pub first_name: String,
    pub last_name: String,
    pub father_name: String,
    /// Jalali `YYYY/MM/DD`.
    pub birth_date: String,
    pub gender: Gender,
    pub birth_place: String,
    pub shenasnameh_no: String,
    /// The mobile number registered to this person (`09` + 9 digits).
    pub mobile: String,
    /// Jalali `YYYY/MM/DD` for persons who died before the dataset was made.
    pub death_date: Option<String>,
}

impl Person {
    /// First and last name.
    pub fn full_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
    }
}

/// A legal person (company) with an 11-digit legal-entity national id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalEntity {
    pub legal_entity_id: String,
    pub name: String,
    /// Jalali `YYYY/MM/DD`.
    pub registered_on: String,
}

/// A taxpayer's standing with the tax administration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaxStatus {
    Active,
    Suspended,
    Closed,
}

impl TaxStatus {
    /// `active`, `suspended` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Closed => "closed",
        }
    }
}

/// Who a tax file belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaxSubject {
    NaturalPerson { national_code: String },
    LegalEntity { legal_entity_id: String },
}

/// A tax file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taxpayer {
    pub subject: TaxSubject,
    pub taxpayer_id: String,
    pub name: String,
    pub status: TaxStatus,
    /// Jalali `YYYY/MM/DD`.
    pub registered_on: String,
    pub office_code: String,
    pub office_name: String,
}

/// The whole synthetic world. Base data is immutable; deaths registered after generation go
/// into an overlay (for the civil registry's death trickle).
#[derive(Debug)]
pub struct Dataset {
    seed: u64,
    persons: Vec<Person>,
    legal_entities: Vec<LegalEntity>,
    taxpayers: Vec<Taxpayer>,
    unknown_national_code: String,
    person_by_code: HashMap<String, usize>,
    taxpayer_by_code: HashMap<String, usize>,
    taxpayer_by_entity: HashMap<String, usize>,
    later_deaths: RwLock<BTreeMap<String, String>>,
    session26: super::session26::Data,
}

const MALE_NAMES: &[&str] = &[
    "علی",
    "محمد",
    "حسین",
    "رضا",
    "مهدی",
    "امیر",
    "حسن",
    "مصطفی",
    "سعید",
    "مجید",
    "احمد",
    "جواد",
    "حمید",
    "محسن",
    "کاظم",
    "یوسف",
    "داوود",
    "بهروز",
    "فرهاد",
    "کامران",
    "اکبر",
    "ابراهیم",
    "اسماعیل",
    "مرتضی",
];
const FEMALE_NAMES: &[&str] = &[
    "فاطمه",
    "زهرا",
    "مریم",
    "معصومه",
    "سارا",
    "نرگس",
    "لیلا",
    "الهام",
    "مینا",
    "شیرین",
    "پریسا",
    "زینب",
    "سمیه",
    "طاهره",
    "نازنین",
    "آزاده",
    "فریبا",
    "مهسا",
    "ژاله",
    "رویا",
    "سکینه",
    "اعظم",
];
const LAST_NAMES: &[&str] = &[
    "احمدی",
    "محمدی",
    "حسینی",
    "رضایی",
    "موسوی",
    "کریمی",
    "جعفری",
    "صادقی",
    "رحیمی",
    "حیدری",
    "نوری",
    "قاسمی",
    "عباسی",
    "مرادی",
    "اکبری",
    "کاظمی",
    "هاشمی",
    "طاهری",
    "یزدانی",
    "شریفی",
    "تهرانی",
    "اصفهانی",
    "شیرازی",
    "تبریزی",
    "کرمانی",
    "نجفی",
    "سلطانی",
    "فراهانی",
    "باقری",
    "زارعی",
];
const BIRTH_PLACES: &[&str] = &[
    "تهران",
    "اصفهان",
    "مشهد",
    "تبریز",
    "شیراز",
    "اهواز",
    "کرمانشاه",
    "رشت",
    "کرمان",
    "یزد",
    "قم",
    "همدان",
    "اراک",
    "ارومیه",
    "زاهدان",
    "ساری",
    "بندرعباس",
    "سنندج",
    "قزوین",
    "بوشهر",
];
const MOBILE_PREFIXES: &[&str] = &[
    "12", "13", "19", "35", "36", "38", "39", "01", "02", "03", "05", "10", "11", "15", "17", "18",
    "20", "21", "22", "30", "33", "90", "91", "92", "93", "94", "98", "99",
];
const COMPANY_KINDS: &[&str] = &[
    "صنایع",
    "توسعه",
    "بازرگانی",
    "فناوری اطلاعات",
    "ساختمانی",
    "پخش",
    "حمل‌ونقل",
    "کشت و صنعت",
    "داروسازی",
    "مهندسی",
];
const COMPANY_TOPICS: &[&str] = &[
    "پارس",
    "البرز",
    "خلیج فارس",
    "آریا",
    "سپهر",
    "کوثر",
    "نگین",
    "ایرانیان",
    "زاگرس",
    "دماوند",
    "کاسپین",
    "مهر",
];
const COMPANY_FORMS: &[&str] = &["(سهامی خاص)", "(سهامی عام)", "(با مسئولیت محدود)"];
const TAX_OFFICES: &[(&str, &str)] = &[
    ("1010", "اداره کل امور مالیاتی شمال تهران"),
    ("1020", "اداره کل امور مالیاتی جنوب تهران"),
    ("1030", "اداره کل امور مالیاتی غرب تهران"),
    ("2010", "اداره کل امور مالیاتی استان اصفهان"),
    ("3010", "اداره کل امور مالیاتی استان خراسان رضوی"),
    ("4010", "اداره کل امور مالیاتی استان فارس"),
    ("5010", "اداره کل امور مالیاتی مودیان بزرگ"),
];

impl Dataset {
    /// The dataset for `seed`; identical for identical seeds.
    pub fn generate(seed: u64) -> Dataset {
        let mut rng = SplitMix64(seed);
        let mut used_codes = HashSet::new();
        let mut used_mobiles = HashSet::new();
        let mut persons = Vec::with_capacity(PERSONS);
        for _ in 0..PERSONS {
            let national_code = fresh(&mut used_codes, || national_code(&mut rng));
            let mobile = fresh(&mut used_mobiles, || {
                format!(
                    "09{}{:07}",
                    rng.pick(MOBILE_PREFIXES),
                    rng.below(10_000_000)
                )
            });
            let gender = if rng.chance(50) {
                Gender::Male
            } else {
                Gender::Female
            };
            let first_name = match gender {
                Gender::Male => rng.pick(MALE_NAMES),
                Gender::Female => rng.pick(FEMALE_NAMES),
            };
            let birth_year = 1330 + rng.below(56) as u32;
            let birth_date = jalali(&mut rng, birth_year, birth_year);
            // Since 1368 the shenasnameh number is the national code.
            let shenasnameh_no = if birth_year >= 1368 {
                national_code.clone()
            } else {
                (1 + rng.below(9999)).to_string()
            };
            let death_date = rng
                .chance(12)
                .then(|| jalali(&mut rng, (birth_year + 18).clamp(1390, 1403), 1403));
            persons.push(Person {
                national_code,
                first_name: first_name.to_string(),
                last_name: rng.pick(LAST_NAMES).to_string(),
                father_name: rng.pick(MALE_NAMES).to_string(),
                birth_date,
                gender,
                birth_place: rng.pick(BIRTH_PLACES).to_string(),
                shenasnameh_no,
                mobile,
                death_date,
            });
        }

        let mut used_ids = HashSet::new();
        let legal_entities: Vec<LegalEntity> = (0..LEGAL_ENTITIES)
            .map(|_| LegalEntity {
                legal_entity_id: fresh(&mut used_ids, || legal_entity_id(&mut rng)),
                name: format!(
                    "شرکت {} {} {}",
                    rng.pick(COMPANY_KINDS),
                    rng.pick(COMPANY_TOPICS),
                    rng.pick(COMPANY_FORMS)
                ),
                registered_on: jalali(&mut rng, 1360, 1400),
            })
            .collect();

        let mut used_taxpayer_ids = HashSet::new();
        let mut taxpayers = Vec::new();
        for p in &persons {
            if !rng.chance(40) {
                continue;
            }
            let status = if p.death_date.is_some() {
                TaxStatus::Closed
            } else {
                tax_status(&mut rng)
            };
            let (office_code, office_name) = *rng.pick(TAX_OFFICES);
            taxpayers.push(Taxpayer {
                subject: TaxSubject::NaturalPerson {
                    national_code: p.national_code.clone(),
                },
                taxpayer_id: fresh(&mut used_taxpayer_ids, || {
                    format!("{:012}", rng.below(1_000_000_000_000))
                }),
                name: p.full_name(),
                status,
                registered_on: jalali(&mut rng, 1380, 1402),
                office_code: office_code.to_owned(),
                office_name: office_name.to_owned(),
            });
        }
        for e in &legal_entities {
            let (office_code, office_name) = *rng.pick(TAX_OFFICES);
            taxpayers.push(Taxpayer {
                subject: TaxSubject::LegalEntity {
                    legal_entity_id: e.legal_entity_id.clone(),
                },
                taxpayer_id: fresh(&mut used_taxpayer_ids, || {
                    format!("{:012}", rng.below(1_000_000_000_000))
                }),
                name: e.name.clone(),
                status: tax_status(&mut rng),
                registered_on: e.registered_on.clone(),
                office_code: office_code.to_owned(),
                office_name: office_name.to_owned(),
            });
        }
        let unknown_national_code = fresh(&mut used_codes, || national_code(&mut rng));

        let person_by_code = persons
            .iter()
            .enumerate()
            .map(|(i, p)| (p.national_code.clone(), i))
            .collect();
        let mut taxpayer_by_code = HashMap::new();
        let mut taxpayer_by_entity = HashMap::new();
        for (i, t) in taxpayers.iter().enumerate() {
            match &t.subject {
                TaxSubject::NaturalPerson { national_code } => {
                    taxpayer_by_code.insert(national_code.clone(), i)
                }
                TaxSubject::LegalEntity { legal_entity_id } => {
                    taxpayer_by_entity.insert(legal_entity_id.clone(), i)
                }
            };
        }
        // Drawn from a stream of its own, so the data above stays as it was before.
        let session26 = super::session26::Data::generate(seed, &persons, &legal_entities);
        Dataset {
            seed,
            session26,
            persons,
            legal_entities,
            taxpayers,
            unknown_national_code,
            person_by_code,
            taxpayer_by_code,
            taxpayer_by_entity,
            later_deaths: RwLock::new(BTreeMap::new()),
        }
    }

    /// The subjects of the services approved in session 26 (post, TVTO, judiciary,
    /// ministry of science, police, SSO, deeds registry).
    pub fn session26(&self) -> &super::session26::Data {
        &self.session26
    }

    /// The seed this dataset was made from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Every person, in generation order.
    pub fn persons(&self) -> &[Person] {
        &self.persons
    }

    /// Every legal entity, in generation order.
    pub fn legal_entities(&self) -> &[LegalEntity] {
        &self.legal_entities
    }

    /// Every tax file (persons first, then legal entities).
    pub fn taxpayers(&self) -> &[Taxpayer] {
        &self.taxpayers
    }

    /// The person with this national code.
    pub fn person(&self, national_code: &str) -> Option<&Person> {
        self.person_by_code
            .get(national_code)
            .map(|&i| &self.persons[i])
    }

    /// The tax file of the person with this national code.
    pub fn taxpayer_by_national_code(&self, national_code: &str) -> Option<&Taxpayer> {
        self.taxpayer_by_code
            .get(national_code)
            .map(|&i| &self.taxpayers[i])
    }

    /// The tax file of the legal entity with this id.
    pub fn taxpayer_by_legal_entity_id(&self, legal_entity_id: &str) -> Option<&Taxpayer> {
        self.taxpayer_by_entity
            .get(legal_entity_id)
            .map(|&i| &self.taxpayers[i])
    }

    /// A national code with a valid check digit that belongs to nobody in the dataset.
    pub fn unknown_national_code(&self) -> &str {
        &self.unknown_national_code
    }

    /// `None` if the person is unknown; `Some(None)` if alive; `Some(Some(date))` if dead.
    pub fn death_date(&self, national_code: &str) -> Option<Option<String>> {
        let person = self.person(national_code)?;
        if let Some(d) = &person.death_date {
            return Some(Some(d.clone()));
        }
        let later = self.later_deaths.read().unwrap_or_else(|e| e.into_inner());
        Some(later.get(national_code).cloned())
    }

    /// Register a death after generation (Jalali date). Returns false if the person is unknown
    /// or already dead.
    pub fn record_death(&self, national_code: &str, death_date: &str) -> bool {
        if !matches!(self.death_date(national_code), Some(None)) {
            return false;
        }
        let mut later = self.later_deaths.write().unwrap_or_else(|e| e.into_inner());
        later
            .insert(national_code.to_owned(), death_date.to_owned())
            .is_none()
    }

    /// A small JSON document (written as `samples.json` by `tabadol dev`) with identifiers a
    /// human can use to try every operation:
    /// - `persons_alive`: `{national_code, mobile, name, birth_date}` — Shahkar matches these
    ///   pairs; `identity` and `life-status` answer alive;
    /// - `persons_deceased`: `{national_code, name, death_date}` — `life-status` answers dead;
    /// - `mobile_mismatch_example`: `{national_code, mobile}` — a real mobile of someone else,
    ///   so Shahkar answers `matched: false`;
    /// - `unknown_national_code`: valid check digit, nobody has it — providers answer not found;
    /// - `taxpayers`: `{national_code, name, status}` covering every status;
    /// - `legal_entities`: `{legal_entity_id, name, status}`.
    pub fn samples(&self) -> Value {
        const N: usize = 5;
        let alive: Vec<Value> = self
            .persons
            .iter()
            .filter(|p| p.death_date.is_none())
            .take(N)
            .map(|p| {
                json!({
                    "national_code": p.national_code,
                    "mobile": p.mobile,
                    "name": p.full_name(),
                    "birth_date": p.birth_date,
                })
            })
            .collect();
        let deceased: Vec<Value> = self
            .persons
            .iter()
            .filter_map(|p| p.death_date.as_ref().map(|d| (p, d)))
            .take(N)
            .map(|(p, d)| {
                json!({"national_code": p.national_code, "name": p.full_name(), "death_date": d})
            })
            .collect();
        let mismatch = json!({
            "national_code": self.persons[0].national_code,
            "mobile": self.persons[1].mobile,
        });
        // Cover every status first, then fill up to N in generation order.
        let person_files: Vec<&Taxpayer> = self
            .taxpayers
            .iter()
            .filter(|t| matches!(t.subject, TaxSubject::NaturalPerson { .. }))
            .collect();
        let mut chosen: Vec<&Taxpayer> = Vec::new();
        for status in [TaxStatus::Active, TaxStatus::Suspended, TaxStatus::Closed] {
            chosen.extend(person_files.iter().find(|t| t.status == status));
        }
        for t in &person_files {
            if chosen.len() >= N {
                break;
            }
            if !chosen.iter().any(|c| c.taxpayer_id == t.taxpayer_id) {
                chosen.push(t);
            }
        }
        let taxpayers: Vec<Value> = chosen
            .iter()
            .filter_map(|t| match &t.subject {
                TaxSubject::NaturalPerson { national_code } => Some(json!({
                    "national_code": national_code,
                    "name": t.name,
                    "status": t.status.as_str(),
                })),
                TaxSubject::LegalEntity { .. } => None,
            })
            .collect();
        let entities: Vec<Value> = self
            .legal_entities
            .iter()
            .take(N)
            .map(|e| {
                let status = self
                    .taxpayer_by_legal_entity_id(&e.legal_entity_id)
                    .map(|t| t.status.as_str());
                json!({"legal_entity_id": e.legal_entity_id, "name": e.name, "status": status})
            })
            .collect();
        let mut extra = self.session26.samples(self);
        let mut out = json!({
            "about": "Synthetic people and companies served by the tabadol dev simulators. Every value is made up; national codes and legal-entity ids carry valid check digits.",
            "seed": self.seed,
            "persons_alive": alive,
            "persons_deceased": deceased,
            "mobile_mismatch_example": mismatch,
            "unknown_national_code": self.unknown_national_code,
            "taxpayers": taxpayers,
            "legal_entities": entities,
        });
        if let (Some(out), Some(extra)) = (out.as_object_mut(), extra.as_object_mut()) {
            out.append(extra);
        }
        out
    }
}

/// SplitMix64: tiny, fast, and fully specified, so output never changes with a crate upgrade.
pub(super) struct SplitMix64(pub(super) u64);

impl SplitMix64 {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for synthetic data.
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub(super) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Draw from `make` until it yields a value not in `used`; remember and return it.
pub(super) fn fresh(used: &mut HashSet<String>, mut make: impl FnMut() -> String) -> String {
    loop {
        let v = make();
        if used.insert(v.clone()) {
            return v;
        }
    }
}

pub(super) fn jalali(rng: &mut SplitMix64, first_year: u32, last_year: u32) -> String {
    let year = first_year + rng.below(u64::from(last_year - first_year + 1)) as u32;
    let month = 1 + rng.below(12);
    let day = 1 + rng.below(29);
    format!("{year}/{month:02}/{day:02}")
}

fn tax_status(rng: &mut SplitMix64) -> TaxStatus {
    match rng.below(100) {
        0..70 => TaxStatus::Active,
        70..85 => TaxStatus::Suspended,
        _ => TaxStatus::Closed,
    }
}

fn national_code(rng: &mut SplitMix64) -> String {
    loop {
        let body = format!("{:09}", rng.below(1_000_000_000));
        let code = format!("{body}{}", national_code_check_digit(body.as_bytes()));
        if is_valid_national_code(&code) {
            return code;
        }
    }
}

fn legal_entity_id(rng: &mut SplitMix64) -> String {
    // Real ids start with 10 (registered companies); eight free digits, then the check digit.
    let body = format!("10{:08}", rng.below(100_000_000));
    format!("{body}{}", legal_entity_check_digit(body.as_bytes()))
}

/// Check digit of a national code from its first nine ASCII digits.
fn national_code_check_digit(first9: &[u8]) -> u8 {
    let sum: u32 = first9
        .iter()
        .zip((2..=10u32).rev())
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    let r = (sum % 11) as u8;
    if r < 2 {
        r
    } else {
        11 - r
    }
}

/// Ten ASCII digits, correct check digit, not one repeated digit.
pub(crate) fn is_valid_national_code(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 10
        && b.iter().all(u8::is_ascii_digit)
        && b.iter().any(|&d| d != b[0])
        && national_code_check_digit(&b[..9]) == b[9] - b'0'
}

/// Check digit of a legal-entity id from its first ten ASCII digits.
fn legal_entity_check_digit(first10: &[u8]) -> u8 {
    const W: [u32; 5] = [29, 27, 23, 19, 17];
    let d = u32::from(first10[9] - b'0') + 2;
    let sum: u32 = first10
        .iter()
        .enumerate()
        .map(|(i, c)| (u32::from(c - b'0') + d) * W[i % 5])
        .sum();
    match (sum % 11) as u8 {
        10 => 0,
        r => r,
    }
}

/// Eleven ASCII digits with a correct check digit.
pub(crate) fn is_valid_legal_entity_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 11
        && b.iter().all(u8::is_ascii_digit)
        && legal_entity_check_digit(&b[..10]) == b[10] - b'0'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn national_code_checksum_matches_worked_example() {
        // 0·10+4·9+9·8+9·7+3·6+7·5+0·4+8·3+9·2 = 266; 266 mod 11 = 2; check = 11 − 2 = 9.
        assert!(is_valid_national_code("0499370899"));
        assert!(!is_valid_national_code("0499370898"));
        assert!(
            !is_valid_national_code("1111111111"),
            "repeated digit is invalid"
        );
        assert!(!is_valid_national_code("049937089"));
        assert!(!is_valid_national_code("04993708a9"));
    }

    #[test]
    fn legal_entity_checksum_matches_worked_example() {
        // 1010030274x: d = 4 + 2 = 6; Σ (digit+6)·w = 7·29+6·27+7·23+6·19+6·17+9·29+6·27+8·23
        // +13·19+10·17 = 1766; 1766 mod 11 = 6.
        assert!(is_valid_legal_entity_id("10100302746"));
        assert!(!is_valid_legal_entity_id("10100302745"));
        assert!(!is_valid_legal_entity_id("1010030274"));
    }

    #[test]
    fn later_deaths_overlay_changes_life_status_once() {
        let ds = Dataset::generate(7);
        let alive = ds
            .persons()
            .iter()
            .find(|p| p.death_date.is_none())
            .unwrap()
            .national_code
            .clone();
        assert_eq!(ds.death_date(&alive), Some(None));
        assert!(ds.record_death(&alive, "1403/05/01"));
        assert!(!ds.record_death(&alive, "1403/05/02"));
        assert_eq!(ds.death_date(&alive), Some(Some("1403/05/01".into())));
        assert_eq!(ds.death_date(ds.unknown_national_code()), None);
    }
}
