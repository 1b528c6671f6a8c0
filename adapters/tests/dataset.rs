//! The simulators' synthetic dataset: determinism, valid identifiers, documented samples.
use std::collections::HashSet;

use tabadol_adapters::simulators::{Dataset, TaxStatus, TaxSubject, LEGAL_ENTITIES, PERSONS};

/// Independent national-code check (REQUIREMENTS.md, identifier formats).
fn valid_national_code(s: &str) -> bool {
    let d: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if s.len() != 10 || d.len() != 10 || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let r = (0..9).map(|i| d[i] * (10 - i as u32)).sum::<u32>() % 11;
    d[9] == if r < 2 { r } else { 11 - r }
}

/// Independent legal-entity id check (REQUIREMENTS.md, identifier formats).
fn valid_legal_entity_id(s: &str) -> bool {
    let d: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if s.len() != 11 || d.len() != 11 {
        return false;
    }
    let w = [29, 27, 23, 19, 17];
    let k = d[9] + 2;
    let r = (0..10).map(|i| (d[i] + k) * w[i % 5]).sum::<u32>() % 11;
    d[10] == if r == 10 { 0 } else { r }
}

fn persian(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| {
            ('\u{0600}'..='\u{06FF}').contains(&c) || matches!(c, ' ' | '\u{200C}' | '(' | ')')
        })
}

fn jalali(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    let [y, m, d] = parts[..] else { return false };
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<u32>(), m.parse::<u32>(), d.parse::<u32>()) else {
        return false;
    };
    s.len() == 10 && (1300..1410).contains(&y) && (1..=12).contains(&m) && (1..=29).contains(&d)
}

/// The same seed yields the same persons and the same samples; another seed does not.
#[test]
fn same_seed_same_data() {
    let a = Dataset::generate(42);
    let b = Dataset::generate(42);
    assert_eq!(a.persons(), b.persons());
    assert_eq!(a.taxpayers(), b.taxpayers());
    assert_eq!(a.samples(), b.samples());
    assert_ne!(a.samples(), Dataset::generate(43).samples());
}

/// Every generated national code and legal-entity id passes its checksum and is unique.
#[test]
fn identifiers_are_valid_and_unique() {
    for seed in [0, 42, u64::MAX] {
        let ds = Dataset::generate(seed);
        assert_eq!(ds.persons().len(), PERSONS);
        assert_eq!(ds.legal_entities().len(), LEGAL_ENTITIES);
        let codes: HashSet<_> = ds.persons().iter().map(|p| &p.national_code).collect();
        assert_eq!(codes.len(), PERSONS);
        for p in ds.persons() {
            assert!(valid_national_code(&p.national_code), "{}", p.national_code);
        }
        assert!(valid_national_code(ds.unknown_national_code()));
        assert!(ds.person(ds.unknown_national_code()).is_none());
        let ids: HashSet<_> = ds
            .legal_entities()
            .iter()
            .map(|e| &e.legal_entity_id)
            .collect();
        assert_eq!(ids.len(), LEGAL_ENTITIES);
        for e in ds.legal_entities() {
            assert!(
                valid_legal_entity_id(&e.legal_entity_id),
                "{}",
                e.legal_entity_id
            );
        }
    }
}

/// Persons look like registry data: Persian names, Jalali dates, unique 09… mobiles, some dead.
#[test]
fn persons_are_plausible() {
    let ds = Dataset::generate(42);
    let mobiles: HashSet<_> = ds.persons().iter().map(|p| &p.mobile).collect();
    assert_eq!(mobiles.len(), PERSONS);
    for p in ds.persons() {
        for name in [&p.first_name, &p.last_name, &p.father_name, &p.birth_place] {
            assert!(persian(name), "{name:?}");
        }
        assert!(jalali(&p.birth_date), "{}", p.birth_date);
        if let Some(d) = &p.death_date {
            assert!(jalali(d) && d > &p.birth_date, "{d} vs {}", p.birth_date);
        }
        assert!(
            p.mobile.len() == 11 && p.mobile.starts_with("09"),
            "{}",
            p.mobile
        );
        assert!(p.mobile.bytes().all(|b| b.is_ascii_digit()));
        assert!(!p.shenasnameh_no.is_empty());
    }
    let dead = ds
        .persons()
        .iter()
        .filter(|p| p.death_date.is_some())
        .count();
    assert!((5..PERSONS / 2).contains(&dead), "{dead} deceased");
}

/// Tax files cover persons and every legal entity, with all three statuses present.
#[test]
fn taxpayers_cover_statuses_and_entities() {
    let ds = Dataset::generate(42);
    for status in [TaxStatus::Active, TaxStatus::Suspended, TaxStatus::Closed] {
        assert!(
            ds.taxpayers().iter().any(|t| t.status == status),
            "{status:?}"
        );
    }
    let persons = ds
        .taxpayers()
        .iter()
        .filter(|t| matches!(t.subject, TaxSubject::NaturalPerson { .. }))
        .count();
    assert!(persons > 20 && persons < PERSONS, "{persons}");
    for e in ds.legal_entities() {
        let t = ds.taxpayer_by_legal_entity_id(&e.legal_entity_id).unwrap();
        assert!(persian(&t.name), "{}", t.name);
        assert!(jalali(&t.registered_on));
    }
}

/// samples.json has every documented section, filled with identifiers that exist as described.
#[test]
fn samples_are_usable() {
    let ds = Dataset::generate(42);
    let s = ds.samples();
    for key in [
        "persons_alive",
        "persons_deceased",
        "taxpayers",
        "legal_entities",
    ] {
        let n = s[key].as_array().map_or(0, Vec::len);
        assert!((3..=5).contains(&n), "{key}: {n}");
    }
    for p in s["persons_alive"].as_array().unwrap() {
        let person = ds.person(p["national_code"].as_str().unwrap()).unwrap();
        assert_eq!(p["mobile"], person.mobile.as_str());
        assert!(person.death_date.is_none());
    }
    for p in s["persons_deceased"].as_array().unwrap() {
        let person = ds.person(p["national_code"].as_str().unwrap()).unwrap();
        assert_eq!(p["death_date"], person.death_date.as_deref().unwrap());
    }
    let statuses: HashSet<_> = s["taxpayers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    let m = &s["mobile_mismatch_example"];
    let owner = ds.person(m["national_code"].as_str().unwrap()).unwrap();
    assert_ne!(m["mobile"], owner.mobile.as_str());
    assert_eq!(s["unknown_national_code"], ds.unknown_national_code());
    assert!(s["about"].as_str().is_some());
}
