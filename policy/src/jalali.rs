//! Solar Hijri (Jalali) dates as written in policy files and reports, converted to and from
//! `jiff` civil dates through `icu_calendar`'s Persian calendar (no hand-rolled arithmetic).

use std::fmt;
use std::str::FromStr;

use icu_calendar::cal::{Iso, Persian};
use icu_calendar::Date;
use jiff::tz::TimeZone;

/// The time zone in which policy dates are read (Iran Standard Time).
pub const TEHRAN: &str = "Asia/Tehran";

/// A valid Jalali calendar date, e.g. `1400/08/18` (= 2021-11-09).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JalaliDate {
    /// Solar Hijri year, e.g. 1400.
    pub year: i32,
    /// Month, 1 (Farvardin) ..= 12 (Esfand).
    pub month: u8,
    /// Day of month, 1 ..= 29/30/31 depending on month and year.
    pub day: u8,
}

/// Why a Jalali date could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JalaliError {
    /// Not of the form `YYYY/MM/DD`.
    #[error("`{0}` is not a Jalali date; write it as YYYY/MM/DD, e.g. 1400/08/18")]
    Format(String),
    /// Month outside 1..=12.
    #[error("month {month} does not exist; Jalali months are 1 to 12")]
    Month {
        /// The month given.
        month: u8,
    },
    /// Day outside the month.
    #[error("{year}/{month:02} has {max} days, so day {day} does not exist")]
    Day {
        /// The year given.
        year: i32,
        /// The month given.
        month: u8,
        /// The day given.
        day: u8,
        /// The number of days in that month.
        max: u8,
    },
    /// Not of the form `YYYY/MM/DD HH:MM`.
    #[error(
        "`{0}` is not a Jalali date and time; write it as YYYY/MM/DD HH:MM, e.g. 1405/09/01 02:00"
    )]
    DateTimeFormat(String),
    /// Outside the range the calendar library supports.
    #[error("year {0} is out of range")]
    Range(i32),
}

impl JalaliDate {
    /// A validated date.
    pub fn new(year: i32, month: u8, day: u8) -> Result<Self, JalaliError> {
        if !(1..=12).contains(&month) {
            return Err(JalaliError::Month { month });
        }
        if !(-9999..=9999).contains(&year) {
            return Err(JalaliError::Range(year));
        }
        let first = Date::try_new_persian(year, month, 1).map_err(|_| JalaliError::Range(year))?;
        let max = first.days_in_month();
        if day == 0 || day > max {
            return Err(JalaliError::Day {
                year,
                month,
                day,
                max,
            });
        }
        Ok(Self { year, month, day })
    }

    fn icu(&self) -> Date<Persian> {
        Date::try_new_persian(self.year, self.month, self.day)
            .expect("JalaliDate fields are validated on construction")
    }

    /// The same day in the proleptic Gregorian calendar.
    pub fn to_civil(&self) -> jiff::civil::Date {
        let iso = self.icu().to_calendar(Iso);
        jiff::civil::date(
            iso.year().extended_year() as i16,
            iso.month().ordinal as i8,
            iso.day_of_month().0 as i8,
        )
    }

    /// The same day in the Jalali calendar.
    pub fn from_civil(date: jiff::civil::Date) -> JalaliDate {
        let iso = Date::try_new_iso(i32::from(date.year()), date.month() as u8, date.day() as u8)
            .expect("every jiff date is in icu's range");
        let p = iso.to_calendar(Persian);
        JalaliDate {
            year: p.year().extended_year(),
            month: p.month().ordinal,
            day: p.day_of_month().0,
        }
    }

    /// The first instant of this day in Tehran.
    pub fn start_in_tehran(&self) -> jiff::Timestamp {
        self.to_civil()
            .to_zoned(tehran())
            .expect("start of a day in Tehran is representable")
            .timestamp()
    }

    /// The first instant of the next day in Tehran (exclusive end of this day).
    pub fn end_in_tehran(&self) -> jiff::Timestamp {
        self.to_civil()
            .tomorrow()
            .expect("dates in policy are far from jiff's limits")
            .to_zoned(tehran())
            .expect("start of a day in Tehran is representable")
            .timestamp()
    }

    /// Today's date in Tehran at instant `at`.
    pub fn in_tehran(at: jiff::Timestamp) -> JalaliDate {
        JalaliDate::from_civil(at.to_zoned(tehran()).date())
    }
}

/// The Asia/Tehran zone from jiff's bundled database.
pub fn tehran() -> TimeZone {
    TimeZone::get(TEHRAN).expect("jiff's bundled tz database has Asia/Tehran")
}

/// Parses `YYYY/MM/DD` (or `YYYY-MM-DD`), with ASCII or Persian digits.
impl FromStr for JalaliDate {
    type Err = JalaliError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = crate::ids::normalize_digits(s.trim());
        let bad = || JalaliError::Format(s.to_owned());
        let sep = if norm.contains('/') { '/' } else { '-' };
        let mut parts = norm.split(sep);
        let (Some(y), Some(m), Some(d), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let all_digits = |p: &str, max: usize| {
            !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
        };
        if !all_digits(y, 4) || !all_digits(m, 2) || !all_digits(d, 2) {
            return Err(bad());
        }
        JalaliDate::new(
            y.parse().map_err(|_| bad())?,
            m.parse().map_err(|_| bad())?,
            d.parse().map_err(|_| bad())?,
        )
    }
}

impl fmt::Display for JalaliDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}/{:02}/{:02}", self.year, self.month, self.day)
    }
}

impl<'de> serde::Deserialize<'de> for JalaliDate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for JalaliDate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A Jalali date and wall-clock time in Tehran, e.g. `1405/09/01 02:00` (maintenance
/// windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JalaliDateTime {
    /// The day.
    pub date: JalaliDate,
    /// The wall-clock time in Tehran.
    pub time: jiff::civil::Time,
}

impl JalaliDateTime {
    /// The instant this wall-clock time denotes in Tehran.
    pub fn to_timestamp(&self) -> jiff::Timestamp {
        self.date
            .to_civil()
            .to_datetime(self.time)
            .to_zoned(tehran())
            .expect("policy date-times are representable")
            .timestamp()
    }
}

impl FromStr for JalaliDateTime {
    type Err = JalaliError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = crate::ids::normalize_digits(s.trim());
        let bad = || JalaliError::DateTimeFormat(s.to_owned());
        let (d, t) = norm.split_once([' ', 'T']).ok_or_else(bad)?;
        let date: JalaliDate = d.parse()?;
        let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
        let h: i8 = h.parse().map_err(|_| bad())?;
        let m: i8 = m.parse().map_err(|_| bad())?;
        let time = jiff::civil::Time::new(h, m, 0, 0).map_err(|_| bad())?;
        Ok(Self { date, time })
    }
}

impl fmt::Display for JalaliDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:02}:{:02}",
            self.date,
            self.time.hour(),
            self.time.minute()
        )
    }
}

impl<'de> serde::Deserialize<'de> for JalaliDateTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn j(s: &str) -> JalaliDate {
        s.parse().unwrap()
    }

    /// Known Jalali/Gregorian pairs convert both ways (incl. the leap day 1399/12/30).
    #[test]
    fn known_pairs_round_trip() {
        let pairs = [
            ("1400/08/18", date(2021, 11, 9)),
            ("1403/01/01", date(2024, 3, 20)),
            ("1399/12/30", date(2021, 3, 20)),
            ("1400/01/01", date(2021, 3, 21)),
        ];
        for (jal, greg) in pairs {
            assert_eq!(j(jal).to_civil(), greg, "{jal}");
            assert_eq!(JalaliDate::from_civil(greg), j(jal), "{greg}");
            assert_eq!(JalaliDate::from_civil(greg).to_string(), jal);
        }
    }

    /// Every day over several years survives civil → Jalali → civil.
    #[test]
    fn every_day_round_trips() {
        let mut d = date(2019, 1, 1);
        while d < date(2027, 1, 1) {
            let jd = JalaliDate::from_civil(d);
            assert_eq!(jd.to_civil(), d);
            assert_eq!(jd.to_string().parse::<JalaliDate>().unwrap(), jd);
            d = d.tomorrow().unwrap();
        }
    }

    /// Dashes and Persian digits are accepted; display is always `YYYY/MM/DD`.
    #[test]
    fn parse_forms() {
        assert_eq!(j("1400-08-18"), j("1400/08/18"));
        assert_eq!(j("۱۴۰۰/۰۸/۱۸"), j("1400/08/18"));
        assert_eq!(j("1400/8/18").to_string(), "1400/08/18");
    }

    /// Impossible dates are rejected with a sentence (1400 is not leap; Mehr has 30 days).
    #[test]
    fn invalid_dates() {
        let e = "1400/12/30".parse::<JalaliDate>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "1400/12 has 29 days, so day 30 does not exist"
        );
        assert!(matches!(
            "1400/13/01".parse::<JalaliDate>(),
            Err(JalaliError::Month { month: 13 })
        ));
        assert!(matches!(
            "1400/07/31".parse::<JalaliDate>(),
            Err(JalaliError::Day { max: 30, .. })
        ));
        assert!(matches!(
            "18 Aban 1400".parse::<JalaliDate>(),
            Err(JalaliError::Format(_))
        ));
        assert!("1400/08".parse::<JalaliDate>().is_err());
    }

    /// Day boundaries are in Tehran time (UTC+03:30 since 1401 dropped DST).
    #[test]
    fn tehran_day_bounds() {
        let d = j("1403/01/01");
        assert_eq!(
            d.start_in_tehran(),
            "2024-03-19T20:30:00Z".parse::<jiff::Timestamp>().unwrap()
        );
        assert_eq!(
            d.end_in_tehran(),
            "2024-03-20T20:30:00Z".parse::<jiff::Timestamp>().unwrap()
        );
        let dt: JalaliDateTime = "1405/09/01 02:00".parse().unwrap();
        assert_eq!(dt.to_string(), "1405/09/01 02:00");
    }
}
