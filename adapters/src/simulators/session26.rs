//! Simulators of the providers whose services the working group approved in session 26
//! (1400/08/18), each a real HTTP/JSON API in a wire format of its own, served to the hub by
//! the generic adapter from the catalog's `http:` sections — no provider-specific Rust code
//! in the hub — over deterministic Persian synthetic data derived from the same [`Dataset`]:
//!
//! | provider | endpoint | answers |
//! | --- | --- | --- |
//! | `post` National Post | `GET /post/v1/addresses/{postalCode}` | `{"result":{…address…}}`; 404/400 `{"errorCode":…}` |
//! | `tvto` Technical and Vocational Training Org. | `GET /tvto/api/certificates?nationalCode=` | 200 `{"status":0,"certificates":[…]}`; not found is **200** `{"status":2}`, bad input 400 `{"status":1}` |
//! | `judiciary` Judiciary | `POST /adliran/v1/clearance/verify` `{"certificate":{"serial","nationalCode"}}` | `{"data":{…}}`; 404/422 `{"error":{"code":…}}` |
//! | `msrt` Ministry of Science | `GET /msrt/graduates/{nc}/last-degree`, `GET /msrt/students/{nc}/status` | `{"degree":{…}}`, `{"student":{…}}`; 404 `{"code":…}` |
//! | `police` Police | `GET /naja/v1/conscription?nationalCode=` | 200 `{"resultCode":"00","result":{…}}`; not found is **200** `{"resultCode":"14"}` |
//! | `sso` Social Security Org. | `POST /sso/api/v1/insurance-lists/query` | `{"list":{…},"insuredPersons":[…]}`; 404/400 `{"errorCode":…}` |
//! | `ssaa` Registry of Deeds and Properties | `GET /ssaa/v1/legal-persons/{id}` | `{"legalPerson":{…}}`; 404/400 `{"code":…}` |
//!
//! Every endpoint needs the `X-Tracking-Code` header (400 otherwise).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::data::{
    fresh, is_valid_legal_entity_id, is_valid_national_code, jalali, Dataset, Gender, LegalEntity,
    Person, SplitMix64,
};
use super::{start, ServerTls, Sim, SimHandle};

/// The provider agencies simulated here, by agency id.
pub const PROVIDERS: [&str; 7] = ["post", "tvto", "judiciary", "msrt", "police", "sso", "ssaa"];

/// An address the National Post knows by postal code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub postal_code: String,
    pub province: String,
    pub city: String,
    pub locality: String,
    pub street: String,
    pub alley: String,
    pub plaque: String,
    pub floor: String,
}

impl Address {
    /// The address as one line, the way the Post writes it.
    pub fn text(&self) -> String {
        format!(
            "استان {}، شهر {}، محله {}، {}، {}، پلاک {}، طبقه {}",
            self.province,
            self.city,
            self.locality,
            self.street,
            self.alley,
            self.plaque,
            self.floor
        )
    }
}

/// A vocational skill certificate (گواهینامه مهارت فنی و حرفه‌ای).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillCertificate {
    pub national_code: String,
    pub certificate_no: String,
    pub title: String,
    pub standard_code: String,
    pub grade: String,
    pub issued_on: String,
    pub center: String,
}

/// A no-criminal-record certificate (گواهی عدم سوءپیشینه).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearanceCertificate {
    pub serial: String,
    pub national_code: String,
    pub holder_name: String,
    pub issued_on: String,
    pub valid_until: String,
    /// Whether the certificate records a criminal record (then it is not a clearance).
    pub has_record: bool,
}

/// A university degree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degree {
    pub national_code: String,
    pub level: String,
    pub field: String,
    pub university: String,
    pub graduated_on: String,
    pub gpa: String,
}

/// A student's enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Student {
    pub national_code: String,
    pub enrolled: bool,
    pub status: String,
    pub university: String,
    pub field: String,
    pub level: String,
    pub entered_on: String,
}

/// A person's military-service standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilitaryService {
    pub national_code: String,
    /// `COMPLETED`, `EXEMPT`, `SERVING`, `SUBJECT`, `ABSENT` or `NOT_SUBJECT` (women).
    pub code: String,
    pub title: String,
    pub card_no: Option<String>,
    pub issued_on: Option<String>,
}

/// A workshop registered with SSO by an enterprise, with its insured employees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workshop {
    pub legal_entity_id: String,
    pub workshop_code: String,
    pub branch_code: String,
    pub branch_name: String,
    /// (national code, full name, insurance number, daily wage in rials).
    pub employees: Vec<(String, String, String, u64)>,
}

/// One person on a monthly insurance list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsuredMonth {
    pub full_name: String,
    pub national_code: String,
    pub insurance_no: String,
    pub days_worked: u32,
    /// SSO contribution (27 % of wages: 20 % employer, 7 % employee), rials.
    pub sso_share: u64,
    /// `YYYY/MM`.
    pub paid_period: String,
    /// Jalali `YYYY/MM/DD`.
    pub submitted_on: String,
}

/// A legal person in the registry of companies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalPerson {
    pub legal_entity_id: String,
    pub name: String,
    pub registration_no: String,
    pub registered_on: String,
    pub legal_form: String,
    pub status: String,
    pub postal_code: String,
}

/// The first and last year insurance lists exist for.
pub const LIST_YEARS: (u32, u32) = (1400, 1403);

/// The session-26 subjects.
#[derive(Debug, Default)]
pub struct Data {
    pub addresses: Vec<Address>,
    pub skill_certificates: Vec<SkillCertificate>,
    pub clearances: Vec<ClearanceCertificate>,
    pub degrees: Vec<Degree>,
    pub students: Vec<Student>,
    pub military: Vec<MilitaryService>,
    pub workshops: Vec<Workshop>,
    pub legal_persons: Vec<LegalPerson>,
    /// A valid postal code nobody lives at.
    pub unknown_postal_code: String,
    address_by_code: HashMap<String, usize>,
    clearance_by_serial: HashMap<String, usize>,
}

const PROVINCES: &[(&str, &[&str])] = &[
    ("تهران", &["تهران", "شهریار", "ری", "اسلامشهر"]),
    ("اصفهان", &["اصفهان", "کاشان", "نجف‌آباد"]),
    ("خراسان رضوی", &["مشهد", "نیشابور", "سبزوار"]),
    ("فارس", &["شیراز", "مرودشت", "کازرون"]),
    ("آذربایجان شرقی", &["تبریز", "مراغه", "مرند"]),
    ("گیلان", &["رشت", "لاهیجان", "انزلی"]),
    ("خوزستان", &["اهواز", "دزفول", "آبادان"]),
    ("کرمان", &["کرمان", "رفسنجان", "سیرجان"]),
];
const LOCALITIES: &[&str] = &[
    "سعادت‌آباد",
    "نارمک",
    "جلفا",
    "الهیه",
    "قدوسی",
    "ولنجک",
    "پونک",
    "هفت‌تیر",
    "امیرآباد",
    "گلسار",
];
const STREETS: &[&str] = &[
    "خیابان آزادی",
    "خیابان انقلاب",
    "بلوار کشاورز",
    "خیابان شریعتی",
    "بلوار فردوسی",
    "خیابان امام خمینی",
    "خیابان طالقانی",
    "بلوار ارغوان",
    "خیابان بهار",
    "خیابان حافظ",
];
const ALLEYS: &[&str] = &[
    "کوچه لاله",
    "کوچه نسترن",
    "کوچه یاس",
    "کوچه شقایق",
    "بن‌بست مهر",
    "کوچه سوم",
    "کوچه دوازدهم",
    "کوچه بنفشه",
];
const SKILLS: &[(&str, &str)] = &[
    ("برق‌کار ساختمان", "7411-53-001-1"),
    ("جوشکاری با قوس الکتریکی", "7212-53-001-1"),
    ("خیاط لباس", "7433-53-002-1"),
    ("تعمیرکار خودروهای سبک", "7231-53-004-1"),
    ("کاربر رایانه", "4112-53-001-1"),
    ("آشپز غذاهای ایرانی", "5122-53-001-1"),
    ("لوله‌کش ساختمان", "7136-53-003-1"),
    ("نقاش ساختمان", "7141-53-001-1"),
    ("تعمیرکار لوازم خانگی", "7421-53-005-1"),
    ("حسابدار عمومی", "3433-53-001-1"),
];
const SKILL_GRADES: &[&str] = &["درجه ۱", "درجه ۲", "درجه ۳"];
const TRAINING_CENTERS: &[&str] = &[
    "مرکز آموزش فنی و حرفه‌ای شماره ۱ تهران",
    "مرکز آموزش فنی و حرفه‌ای شهید چمران اصفهان",
    "مرکز آموزش فنی و حرفه‌ای مشهد",
    "مرکز آموزش فنی و حرفه‌ای شیراز",
    "آموزشگاه آزاد فنی و حرفه‌ای نوآوران تبریز",
];
const UNIVERSITIES: &[&str] = &[
    "دانشگاه تهران",
    "دانشگاه صنعتی شریف",
    "دانشگاه فردوسی مشهد",
    "دانشگاه شیراز",
    "دانشگاه اصفهان",
    "دانشگاه تبریز",
    "دانشگاه علامه طباطبایی",
    "دانشگاه پیام نور مرکز کرج",
    "دانشگاه گیلان",
];
const FIELDS: &[&str] = &[
    "مهندسی کامپیوتر",
    "حسابداری",
    "مدیریت بازرگانی",
    "علوم تربیتی",
    "مهندسی برق",
    "حقوق",
    "روان‌شناسی",
    "زبان و ادبیات فارسی",
    "مهندسی عمران",
    "پرستاری",
];
const LEVELS: &[&str] = &["کاردانی", "کارشناسی", "کارشناسی ارشد", "دکتری"];
const MILITARY: &[(&str, &str)] = &[
    ("COMPLETED", "پایان خدمت"),
    ("EXEMPT", "معافیت دائم"),
    ("SERVING", "در حال خدمت"),
    ("SUBJECT", "مشمول"),
    ("ABSENT", "غایب"),
];
const SSO_BRANCHES: &[(&str, &str)] = &[
    ("1001", "شعبه ۱ تهران"),
    ("1012", "شعبه ۱۲ تهران"),
    ("2003", "شعبه ۳ اصفهان"),
    ("3005", "شعبه ۵ مشهد"),
    ("4002", "شعبه ۲ شیراز"),
];
const REGISTRY_STATES: &[&str] = &["فعال", "فعال", "فعال", "فعال", "در حال تصفیه", "منحل شده"];

/// Days in a Jalali month (Esfand counted as 29: a list never claims a leap day).
fn month_days(month: u32) -> u32 {
    match month {
        1..=6 => 31,
        7..=11 => 30,
        _ => 29,
    }
}

/// A 10-digit postal code as the Post issues them: no 0 or 2 in the first five digits.
fn postal_code(rng: &mut SplitMix64) -> String {
    const FIRST: &[u8] = b"13456789";
    let mut s = String::with_capacity(10);
    for _ in 0..5 {
        s.push(char::from(*rng.pick(FIRST)));
    }
    s.push_str(&format!("{:05}", rng.below(100_000)));
    s
}

/// Whether the Post would accept `code` as a postal code at all.
pub fn is_plausible_postal_code(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 10
        && b.iter().all(u8::is_ascii_digit)
        && b[..5].iter().all(|&d| d != b'0' && d != b'2')
}

/// A stable 64-bit mix of `parts` (SplitMix64 over their bytes), for values computed on
/// demand (a month's days worked) rather than stored.
fn mix(parts: &[&str]) -> u64 {
    let mut h = SplitMix64(0x5EED_2626);
    let mut acc = 0u64;
    for p in parts {
        for b in p.bytes() {
            h.0 ^= u64::from(b);
            acc ^= h.next();
        }
        h.0 ^= 0xFF;
    }
    acc
}

impl Data {
    /// The session-26 subjects for `seed`, drawn from a stream of their own.
    pub(super) fn generate(seed: u64, persons: &[Person], entities: &[LegalEntity]) -> Data {
        let mut rng = SplitMix64(seed ^ 0x2600_1400_0818);
        let mut used = HashSet::new();
        let mut addresses = Vec::new();
        for _ in 0..60 {
            let (province, cities) = *rng.pick(PROVINCES);
            addresses.push(Address {
                postal_code: fresh(&mut used, || postal_code(&mut rng)),
                province: province.to_owned(),
                city: rng.pick(cities).to_string(),
                locality: rng.pick(LOCALITIES).to_string(),
                street: rng.pick(STREETS).to_string(),
                alley: rng.pick(ALLEYS).to_string(),
                plaque: (1 + rng.below(180)).to_string(),
                floor: rng.below(8).to_string(),
            });
        }
        let unknown_postal_code = fresh(&mut used, || postal_code(&mut rng));

        let mut skill_certificates = Vec::new();
        let mut clearances = Vec::new();
        let mut degrees = Vec::new();
        let mut students = Vec::new();
        let mut military = Vec::new();
        let mut used_serials = HashSet::new();
        for (i, p) in persons.iter().enumerate() {
            let birth_year: u32 = p.birth_date[..4].parse().unwrap_or(1360);
            // The first persons get everything, so samples.json has one applicant every
            // provider knows.
            let all = i < 3;
            if all || rng.chance(35) {
                let mut titles = HashSet::new();
                for _ in 0..1 + rng.below(3) {
                    let (title, standard) = *rng.pick(SKILLS);
                    if !titles.insert(title) {
                        continue;
                    }
                    skill_certificates.push(SkillCertificate {
                        national_code: p.national_code.clone(),
                        certificate_no: format!("{}", 100_000_000 + rng.below(900_000_000)),
                        title: title.to_owned(),
                        standard_code: standard.to_owned(),
                        grade: rng.pick(SKILL_GRADES).to_string(),
                        issued_on: jalali(&mut rng, (birth_year + 18).min(1402), 1402),
                        center: rng.pick(TRAINING_CENTERS).to_string(),
                    });
                }
            }
            if all || rng.chance(30) {
                // Issued in 1404, valid for a year.
                let issued = jalali(&mut rng, 1404, 1404);
                let valid_until = format!(
                    "{}{}",
                    issued[..4].parse::<u32>().unwrap_or(1401) + 1,
                    &issued[4..]
                );
                clearances.push(ClearanceCertificate {
                    serial: fresh(&mut used_serials, || {
                        format!("{:016}", rng.below(10_000_000_000_000_000))
                    }),
                    national_code: p.national_code.clone(),
                    holder_name: p.full_name(),
                    issued_on: issued,
                    valid_until,
                    has_record: !all && rng.chance(15),
                });
            }
            if birth_year <= 1380 && (all || rng.chance(50)) {
                let level = *rng.pick(LEVELS);
                let from = (birth_year + 20).min(1402);
                degrees.push(Degree {
                    national_code: p.national_code.clone(),
                    level: level.to_owned(),
                    field: rng.pick(FIELDS).to_string(),
                    university: rng.pick(UNIVERSITIES).to_string(),
                    graduated_on: jalali(&mut rng, from, 1402),
                    gpa: format!("{}.{:02}", 12 + rng.below(8), rng.below(100)),
                });
            }
            if birth_year >= 1370 && (all || rng.chance(45)) {
                let enrolled = all || rng.chance(75);
                students.push(Student {
                    national_code: p.national_code.clone(),
                    enrolled,
                    status: if enrolled {
                        "مشغول به تحصیل".to_owned()
                    } else {
                        rng.pick(&["انصراف", "فارغ‌التحصیل", "اخراج"]).to_string()
                    },
                    university: rng.pick(UNIVERSITIES).to_string(),
                    field: rng.pick(FIELDS).to_string(),
                    level: rng.pick(&LEVELS[..3]).to_string(),
                    entered_on: format!("{}/07/01", (birth_year + 18).clamp(1395, 1402)),
                });
            }
            let (code, title) = match p.gender {
                Gender::Female => ("NOT_SUBJECT", "مشمول قانون خدمت وظیفه عمومی نیست"),
                Gender::Male if all => ("COMPLETED", "پایان خدمت"),
                Gender::Male => *rng.pick(MILITARY),
            };
            let carded = matches!(code, "COMPLETED" | "EXEMPT");
            military.push(MilitaryService {
                national_code: p.national_code.clone(),
                code: code.to_owned(),
                title: title.to_owned(),
                card_no: carded.then(|| format!("{:010}", rng.below(10_000_000_000))),
                issued_on: carded.then(|| jalali(&mut rng, (birth_year + 20).min(1402), 1402)),
            });
        }

        // Workshops: one or two per enterprise, employing adults alive in 1400.
        let workers: Vec<&Person> = persons
            .iter()
            .filter(|p| {
                p.death_date.is_none() && p.birth_date[..4].parse::<u32>().unwrap_or(0) <= 1380
            })
            .collect();
        let mut used_workshops = HashSet::new();
        let mut used_insurance = HashSet::new();
        let mut insurance_no: HashMap<String, String> = HashMap::new();
        let mut workshops = Vec::new();
        for e in entities {
            for _ in 0..1 + rng.below(2) {
                let (branch_code, branch_name) = *rng.pick(SSO_BRANCHES);
                let mut employees = Vec::new();
                let mut chosen = HashSet::new();
                for _ in 0..4 + rng.below(9) {
                    let p = *rng.pick(&workers);
                    if !chosen.insert(p.national_code.clone()) {
                        continue;
                    }
                    let no = insurance_no
                        .entry(p.national_code.clone())
                        .or_insert_with(|| {
                            fresh(&mut used_insurance, || {
                                format!("{:010}", rng.below(10_000_000_000))
                            })
                        })
                        .clone();
                    // Daily wage 1,200,000 to 6,000,000 rials, in thousands.
                    let wage = (1_200 + rng.below(4_800)) * 1_000;
                    employees.push((p.national_code.clone(), p.full_name(), no, wage));
                }
                workshops.push(Workshop {
                    legal_entity_id: e.legal_entity_id.clone(),
                    workshop_code: fresh(&mut used_workshops, || {
                        format!("{:010}", 1_000_000_000 + rng.below(9_000_000_000))
                    }),
                    branch_code: branch_code.to_owned(),
                    branch_name: branch_name.to_owned(),
                    employees,
                });
            }
        }

        let legal_persons = entities
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let (name, form) = match e.name.rsplit_once(" (") {
                    Some((name, form)) => (name.to_owned(), form.trim_end_matches(')').to_owned()),
                    None => (e.name.clone(), "سهامی خاص".to_owned()),
                };
                LegalPerson {
                    legal_entity_id: e.legal_entity_id.clone(),
                    name,
                    registration_no: (10_000 + rng.below(590_000)).to_string(),
                    registered_on: e.registered_on.clone(),
                    legal_form: form,
                    status: if i < 3 {
                        "فعال".to_owned()
                    } else {
                        rng.pick(REGISTRY_STATES).to_string()
                    },
                    postal_code: addresses[i % addresses.len()].postal_code.clone(),
                }
            })
            .collect();

        let address_by_code = addresses
            .iter()
            .enumerate()
            .map(|(i, a)| (a.postal_code.clone(), i))
            .collect();
        let clearance_by_serial = clearances
            .iter()
            .enumerate()
            .map(|(i, c)| (c.serial.clone(), i))
            .collect();
        Data {
            addresses,
            skill_certificates,
            clearances,
            degrees,
            students,
            military,
            workshops,
            legal_persons,
            unknown_postal_code,
            address_by_code,
            clearance_by_serial,
        }
    }

    /// The address at `postal_code`.
    pub fn address(&self, postal_code: &str) -> Option<&Address> {
        self.address_by_code
            .get(postal_code)
            .map(|&i| &self.addresses[i])
    }

    /// The no-criminal-record certificate with this serial.
    pub fn clearance(&self, serial: &str) -> Option<&ClearanceCertificate> {
        self.clearance_by_serial
            .get(serial)
            .map(|&i| &self.clearances[i])
    }

    /// The workshop with this code.
    pub fn workshop(&self, code: &str) -> Option<&Workshop> {
        self.workshops.iter().find(|w| w.workshop_code == code)
    }

    /// The insurance list a workshop submitted for `year`/`month`: every employee, with the
    /// days worked that month (an employee with none that month is not on the list), or
    /// `None` when no list exists for that month (outside [`LIST_YEARS`]).
    pub fn insurance_list(&self, w: &Workshop, year: u32, month: u32) -> Option<Vec<InsuredMonth>> {
        if !(LIST_YEARS.0..=LIST_YEARS.1).contains(&year) || !(1..=12).contains(&month) {
            return None;
        }
        let period = format!("{year}/{month:02}");
        let (sub_year, sub_month) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        let submitted_day = 1 + mix(&[&w.workshop_code, &period]) % 15;
        let submitted_on = format!("{sub_year}/{sub_month:02}/{submitted_day:02}");
        let full = month_days(month);
        let list = w
            .employees
            .iter()
            .filter_map(|(nc, name, no, wage)| {
                let h = mix(&[&w.workshop_code, nc, &period]);
                // One employee-month in ten is absent from the list; most work the full month.
                if h.is_multiple_of(10) {
                    return None;
                }
                let days = if h.is_multiple_of(3) {
                    full - (h / 7 % 10) as u32
                } else {
                    full
                };
                Some(InsuredMonth {
                    full_name: name.clone(),
                    national_code: nc.clone(),
                    insurance_no: no.clone(),
                    days_worked: days,
                    sso_share: wage * u64::from(days) * 27 / 100,
                    paid_period: period.clone(),
                    submitted_on: submitted_on.clone(),
                })
            })
            .collect();
        Some(list)
    }

    /// The legal person with this id.
    pub fn legal_person(&self, id: &str) -> Option<&LegalPerson> {
        self.legal_persons.iter().find(|l| l.legal_entity_id == id)
    }

    /// The samples.json entries of the session-26 services.
    pub(super) fn samples(&self, ds: &Dataset) -> Value {
        const N: usize = 5;
        let alive = |nc: &str| matches!(ds.death_date(nc), Some(None));
        // Among the first persons (every provider knows them): a living man, so that the
        // police check says more than "not subject"; else anyone living.
        let first = || {
            ds.persons()
                .iter()
                .take(3)
                .filter(|p| alive(&p.national_code))
        };
        let applicant = first()
            .find(|p| p.gender == Gender::Male)
            .or_else(|| first().next());
        let applicant = applicant.map(|p| {
            let clearance = self
                .clearances
                .iter()
                .find(|c| c.national_code == p.national_code);
            json!({
                "national_code": p.national_code,
                "name": p.full_name(),
                "clearance_serial": clearance.map(|c| c.serial.clone()),
            })
        });
        let mut seen = HashSet::new();
        let skills: Vec<Value> = self
            .skill_certificates
            .iter()
            .filter(|c| seen.insert(c.national_code.clone()))
            .take(N)
            .map(|c| json!({"national_code": c.national_code, "title": c.title}))
            .collect();
        let workshop = self
            .workshops
            .iter()
            .find(|w| w.employees.len() >= 5)
            .or(self.workshops.first());
        json!({
            "postal_codes": self.addresses.iter().take(N).map(|a| json!({
                "postal_code": a.postal_code, "city": a.city, "address": a.text(),
            })).collect::<Vec<_>>(),
            "unknown_postal_code": self.unknown_postal_code,
            "skill_certificates": skills,
            "clearance_certificates": self.clearances.iter().take(N).map(|c| json!({
                "national_code": c.national_code, "serial": c.serial,
                "criminal_record": c.has_record,
            })).collect::<Vec<_>>(),
            "graduates": self.degrees.iter().take(N).map(|d| json!({
                "national_code": d.national_code, "level": d.level, "field": d.field,
            })).collect::<Vec<_>>(),
            "students": self.students.iter().take(N).map(|s| json!({
                "national_code": s.national_code, "status": s.status,
            })).collect::<Vec<_>>(),
            "military_service": MILITARY.iter().map(|(code, _)| *code).chain(["NOT_SUBJECT"])
                .filter_map(|code| self.military.iter().find(|m| m.code == code && alive(&m.national_code)))
                .map(|m| json!({"national_code": m.national_code, "status": m.code}))
                .collect::<Vec<_>>(),
            "insurance_lists": workshop.map(|w| json!([{
                "enterprise_id": w.legal_entity_id,
                "workshop_code": w.workshop_code,
                "branch_code": w.branch_code,
                "year": "1403",
                "month": "05",
                "persons": w.employees.len(),
            }])),
            "legal_persons": self.legal_persons.iter().take(N).map(|l| json!({
                "legal_entity_id": l.legal_entity_id, "name": l.name, "status": l.status,
            })).collect::<Vec<_>>(),
            "eligibility_applicant": applicant,
        })
    }
}

/// Start the simulator of session-26 provider `provider` (one of [`PROVIDERS`]) on `addr`,
/// over TLS when `tls` is given.
pub async fn start_provider(
    provider: &str,
    ds: Arc<Dataset>,
    addr: SocketAddr,
    tls: Option<ServerTls>,
) -> io::Result<SimHandle> {
    let routes: fn(Router<Sim>) -> Router<Sim> = match provider {
        "post" => |r| r.route("/post/v1/addresses/{code}", get(post_address)),
        "tvto" => |r| r.route("/tvto/api/certificates", get(tvto_certificates)),
        "judiciary" => |r| r.route("/adliran/v1/clearance/verify", post(judiciary_verify)),
        "msrt" => |r| {
            r.route("/msrt/graduates/{nc}/last-degree", get(msrt_degree))
                .route("/msrt/students/{nc}/status", get(msrt_student))
        },
        "police" => |r| r.route("/naja/v1/conscription", get(police_conscription)),
        "sso" => |r| r.route("/sso/api/v1/insurance-lists/query", post(sso_list)),
        "ssaa" => |r| r.route("/ssaa/v1/legal-persons/{id}", get(ssaa_legal_person)),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no session-26 simulator for provider {other}"),
            ))
        }
    };
    start(addr, ds, tls, routes).await
}

fn err(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// The tracking-code check every endpoint makes; `Err` is the provider's own answer.
async fn enter(sim: &Sim, headers: &HeaderMap, missing: Value) -> Result<(), Response> {
    match sim.enter(headers).await {
        Some(_) => Ok(()),
        None => Err(err(StatusCode::BAD_REQUEST, missing)),
    }
}

async fn post_address(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Response {
    if let Err(r) = enter(
        &sim,
        &headers,
        json!({"errorCode": "MISSING_TRACKING_CODE"}),
    )
    .await
    {
        return r;
    }
    if !is_plausible_postal_code(&code) {
        return err(
            StatusCode::BAD_REQUEST,
            json!({"errorCode": "INVALID_POSTCODE", "message": "کد پستی معتبر نیست"}),
        );
    }
    match sim.ds.session26().address(&code) {
        None => err(
            StatusCode::NOT_FOUND,
            json!({"errorCode": "POSTCODE_NOT_FOUND", "message": "نشانی برای این کد پستی ثبت نشده است"}),
        ),
        Some(a) => Json(json!({"result": {
            "postCode": a.postal_code,
            "province": a.province,
            "township": a.city,
            "locality": a.locality,
            "street": a.street,
            "subStreet": a.alley,
            "houseNumber": a.plaque.parse::<u32>().unwrap_or(0),
            "floor": a.floor,
            "description": a.text(),
        }}))
        .into_response(),
    }
}

async fn tvto_certificates(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = enter(
        &sim,
        &headers,
        json!({"status": 1, "message": "missing X-Tracking-Code"}),
    )
    .await
    {
        return r;
    }
    let Some(nc) = q
        .get("nationalCode")
        .filter(|nc| is_valid_national_code(nc))
    else {
        return err(
            StatusCode::BAD_REQUEST,
            json!({"status": 1, "message": "کد ملی نامعتبر است"}),
        );
    };
    let certs: Vec<Value> = sim
        .ds
        .session26()
        .skill_certificates
        .iter()
        .filter(|c| &c.national_code == nc)
        .map(|c| {
            json!({
                "certificateNo": c.certificate_no,
                "standard": {"code": c.standard_code, "title": c.title},
                "grade": c.grade,
                "issueDate": c.issued_on,
                "center": c.center,
            })
        })
        .collect();
    if certs.is_empty() {
        // TVTO answers "no certificate" with HTTP 200 and status 2.
        return Json(json!({"status": 2, "message": "گواهینامه‌ای یافت نشد", "certificates": []}))
            .into_response();
    }
    Json(json!({"status": 0, "certificates": certs})).into_response()
}

async fn judiciary_verify(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    let e = |status, code: &str| err(status, json!({"error": {"code": code, "message": "—"}}));
    if let Err(r) = enter(&sim, &headers, json!({"error": {"code": "NO_TRACKING"}})).await {
        return r;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return e(StatusCode::UNPROCESSABLE_ENTITY, "MALFORMED");
    };
    let serial = v
        .pointer("/certificate/serial")
        .and_then(Value::as_str)
        .unwrap_or("");
    let nc = v
        .pointer("/certificate/nationalCode")
        .and_then(Value::as_str)
        .unwrap_or("");
    if serial.len() != 16
        || !serial.bytes().all(|b| b.is_ascii_digit())
        || !is_valid_national_code(nc)
    {
        return e(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION");
    }
    let Some(c) = sim.ds.session26().clearance(serial) else {
        return e(StatusCode::NOT_FOUND, "CERT_NOT_FOUND");
    };
    let authentic = c.national_code == nc;
    Json(json!({"data": {
        "authentic": authentic,
        "holder": if authentic { Value::from(c.holder_name.clone()) } else { Value::Null },
        "issuedAt": c.issued_on,
        "validUntil": c.valid_until,
        "hasCriminalRecord": if authentic { Value::from(c.has_record) } else { Value::Null },
    }}))
    .into_response()
}

async fn msrt_lookup(sim: &Sim, headers: &HeaderMap, nc: &str) -> Result<(), Response> {
    enter(sim, headers, json!({"code": "NO_TRACKING"})).await?;
    if !is_valid_national_code(nc) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            json!({"code": "BAD_NATIONAL_CODE"}),
        ));
    }
    Ok(())
}

async fn msrt_degree(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(nc): Path<String>,
) -> Response {
    if let Err(r) = msrt_lookup(&sim, &headers, &nc).await {
        return r;
    }
    match sim
        .ds
        .session26()
        .degrees
        .iter()
        .find(|d| d.national_code == nc)
    {
        None => err(StatusCode::NOT_FOUND, json!({"code": "NO_DEGREE"})),
        Some(d) => Json(json!({"degree": {
            "level": d.level, "field": d.field, "university": d.university,
            "graduationDate": d.graduated_on, "average": d.gpa.parse::<f64>().unwrap_or(0.0),
        }}))
        .into_response(),
    }
}

async fn msrt_student(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(nc): Path<String>,
) -> Response {
    if let Err(r) = msrt_lookup(&sim, &headers, &nc).await {
        return r;
    }
    match sim
        .ds
        .session26()
        .students
        .iter()
        .find(|s| s.national_code == nc)
    {
        None => err(StatusCode::NOT_FOUND, json!({"code": "NOT_A_STUDENT"})),
        Some(s) => Json(json!({"student": {
            "isStudying": s.enrolled, "state": s.status, "university": s.university,
            "field": s.field, "level": s.level, "entranceDate": s.entered_on,
        }}))
        .into_response(),
    }
}

async fn police_conscription(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = enter(&sim, &headers, json!({"resultCode": "90"})).await {
        return r;
    }
    let Some(nc) = q
        .get("nationalCode")
        .filter(|nc| is_valid_national_code(nc))
    else {
        return err(
            StatusCode::BAD_REQUEST,
            json!({"resultCode": "11", "resultText": "کد ملی نامعتبر"}),
        );
    };
    if sim.ds.person(nc).is_none() {
        // NAJA answers an unknown person with HTTP 200 and result code 14.
        return Json(json!({"resultCode": "14", "resultText": "فرد یافت نشد"})).into_response();
    }
    match sim
        .ds
        .session26()
        .military
        .iter()
        .find(|m| &m.national_code == nc)
    {
        None => Json(json!({"resultCode": "14"})).into_response(),
        Some(m) => Json(json!({"resultCode": "00", "result": {
            "statusCode": m.code, "statusTitle": m.title,
            "cardNumber": m.card_no, "cardIssueDate": m.issued_on,
        }}))
        .into_response(),
    }
}

async fn sso_list(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    let e = |status, code: &str| err(status, json!({"errorCode": code, "errorMessage": "—"}));
    if let Err(r) = enter(&sim, &headers, json!({"errorCode": "NO_TRACKING"})).await {
        return r;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return e(StatusCode::BAD_REQUEST, "MALFORMED");
    };
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (id, workshop, branch) = (
        s("/enterprise/nationalId"),
        s("/workshopCode"),
        s("/branchCode"),
    );
    let (year, month) = (
        s("/period/year").parse::<u32>(),
        s("/period/month").parse::<u32>(),
    );
    if !is_valid_legal_entity_id(&id) {
        return e(StatusCode::BAD_REQUEST, "INVALID_NATIONAL_ID");
    }
    let (Ok(year), Ok(month)) = (year, month) else {
        return e(StatusCode::BAD_REQUEST, "INVALID_PERIOD");
    };
    if !(1..=12).contains(&month) {
        return e(StatusCode::BAD_REQUEST, "INVALID_PERIOD");
    }
    let data = sim.ds.session26();
    let Some(w) = data
        .workshop(&workshop)
        .filter(|w| w.legal_entity_id == id && w.branch_code == branch)
    else {
        return e(StatusCode::NOT_FOUND, "WORKSHOP_NOT_FOUND");
    };
    let Some(list) = data.insurance_list(w, year, month) else {
        return e(StatusCode::NOT_FOUND, "LIST_NOT_FOUND");
    };
    let persons: Vec<Value> = list
        .iter()
        .map(|p| {
            json!({
                "fullName": p.full_name,
                "nationalCode": p.national_code,
                "insuranceNumber": p.insurance_no,
                "workDays": p.days_worked,
                "ssoShare": p.sso_share,
                "paidPeriod": p.paid_period,
                "submittedAt": p.submitted_on,
            })
        })
        .collect();
    Json(json!({
        "list": {"workshopCode": w.workshop_code, "branch": w.branch_name, "count": persons.len()},
        "insuredPersons": persons,
    }))
    .into_response()
}

async fn ssaa_legal_person(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = enter(&sim, &headers, json!({"code": "NO_TRACKING"})).await {
        return r;
    }
    if !is_valid_legal_entity_id(&id) {
        return err(StatusCode::BAD_REQUEST, json!({"code": "INVALID_ID"}));
    }
    match sim.ds.session26().legal_person(&id) {
        None => err(StatusCode::NOT_FOUND, json!({"code": "NOT_FOUND"})),
        Some(l) => Json(json!({"legalPerson": {
            "nationalId": l.legal_entity_id, "name": l.name,
            "registration": {"number": l.registration_no, "date": l.registered_on},
            "type": l.legal_form, "state": l.status,
            "address": {"postalCode": l.postal_code},
        }}))
        .into_response(),
    }
}

/// Handles of the running session-26 simulators by provider id.
pub type Handles = BTreeMap<&'static str, SimHandle>;
