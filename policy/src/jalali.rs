//! Solar Hijri (Jalali) dates as written in policy files and reports, converted to and from
//! `jiff` civil dates through `icu_calendar`'s Persian calendar (no hand-rolled arithmetic).
//!
//! Dates read from text are limited to the years [`MIN_YEAR`]`..=`[`MAX_YEAR`], so every
//! one of them converts to a jiff date and instant. The `try_*` conversions never panic and
//! say when a date cannot be converted; the plain ones never panic either and saturate at
//! jiff's limits for dates built field by field outside that range.

use std::fmt;
use std::str::FromStr;

use icu_calendar::cal::{Iso, Persian};
use icu_calendar::types::RataDie;
use icu_calendar::Date;
use jiff::tz::TimeZone;

/// The time zone in which policy dates are read (Iran Standard Time).
pub const TEHRAN: &str = "Asia/Tehran";

/// The earliest Jalali year accepted in policy files and requests.
pub const MIN_YEAR: i32 = 1;

/// The latest Jalali year accepted in policy files and requests: `icu_calendar`'s Persian
/// calendar is verified up to 3000 AP (3621–22 CE), well inside jiff's limit of 9999 CE
/// (which Jalali 9379 already passes).
pub const MAX_YEAR: i32 = 3000;

/// Rata Die day 1, the day `icu_calendar` counts from.
const RATA_DIE_EPOCH: jiff::civil::Date = jiff::civil::Date::constant(1, 1, 1);

/// A valid Jalali calendar date, e.g. `1400/08/18` (= 2021-11-09).
///
/// [`JalaliDate::new`] and parsing accept the years [`MIN_YEAR`]`..=`[`MAX_YEAR`];
/// [`JalaliDate::from_civil`] represents any jiff date.
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
    /// Outside the years accepted ([`MIN_YEAR`]`..=`[`MAX_YEAR`]), or not convertible to
    /// a jiff date or instant.
    #[error("year {0} is out of range; year must be between 1 and 3000")]
    Range(i32),
}

impl JalaliDate {
    /// A validated date; the year must be in [`MIN_YEAR`]`..=`[`MAX_YEAR`].
    pub fn new(year: i32, month: u8, day: u8) -> Result<Self, JalaliError> {
        if !(1..=12).contains(&month) {
            return Err(JalaliError::Month { month });
        }
        if !(MIN_YEAR..=MAX_YEAR).contains(&year) {
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

    /// The error for a date that cannot be converted: the reason `new` would give, or
    /// [`JalaliError::Range`] for a date outside what jiff represents.
    fn unconvertible(&self) -> JalaliError {
        JalaliDate::new(self.year, self.month, self.day)
            .err()
            .unwrap_or(JalaliError::Range(self.year))
    }

    /// `low` for dates before the accepted range, `high` otherwise: where the plain
    /// conversions saturate when the `try_*` ones fail.
    fn saturate<T>(&self, low: T, high: T) -> T {
        if self.year < MIN_YEAR {
            low
        } else {
            high
        }
    }

    /// The same day in the proleptic Gregorian calendar, or an error when it is past
    /// jiff's range (only possible for a date built field by field, bypassing
    /// [`JalaliDate::new`]).
    pub fn try_to_civil(&self) -> Result<jiff::civil::Date, JalaliError> {
        let persian = Date::try_new_persian(self.year, self.month, self.day)
            .map_err(|_| self.unconvertible())?;
        let iso = persian.to_calendar(Iso);
        let year = i16::try_from(iso.year().extended_year()).map_err(|_| self.unconvertible())?;
        let month = i8::try_from(iso.month().ordinal).map_err(|_| self.unconvertible())?;
        let day = i8::try_from(iso.day_of_month().0).map_err(|_| self.unconvertible())?;
        jiff::civil::Date::new(year, month, day).map_err(|_| self.unconvertible())
    }

    /// The same day in the proleptic Gregorian calendar. Exact for every date from
    /// [`JalaliDate::new`], parsing or [`JalaliDate::from_civil`]; never panics, and
    /// otherwise (a date built field by field) saturates at jiff's earliest date for years
    /// before 1 and at its latest date for the rest.
    pub fn to_civil(&self) -> jiff::civil::Date {
        self.try_to_civil()
            .unwrap_or_else(|_| self.saturate(jiff::civil::Date::MIN, jiff::civil::Date::MAX))
    }

    /// The same day in the Jalali calendar.
    pub fn from_civil(date: jiff::civil::Date) -> JalaliDate {
        // Counting days needs no fallible construction: every jiff date has a Rata Die.
        let days = date.duration_since(RATA_DIE_EPOCH).as_secs() / 86_400;
        let p = Date::from_rata_die(RataDie::new(days + 1), Persian);
        JalaliDate {
            year: p.year().extended_year(),
            month: p.month().ordinal,
            day: p.day_of_month().0,
        }
    }

    /// The first instant of this day in Tehran, or an error when it is outside jiff's
    /// range.
    pub fn try_start_in_tehran(&self) -> Result<jiff::Timestamp, JalaliError> {
        let zoned = self
            .try_to_civil()?
            .to_zoned(tehran())
            .map_err(|_| self.unconvertible())?;
        Ok(zoned.timestamp())
    }

    /// The first instant of the next day in Tehran (exclusive end of this day), or an
    /// error when it is outside jiff's range.
    pub fn try_end_in_tehran(&self) -> Result<jiff::Timestamp, JalaliError> {
        let zoned = self
            .try_to_civil()?
            .tomorrow()
            .and_then(|d| d.to_zoned(tehran()))
            .map_err(|_| self.unconvertible())?;
        Ok(zoned.timestamp())
    }

    /// The first instant of this day in Tehran; never panics, and saturates at jiff's
    /// earliest or latest instant when [`JalaliDate::try_start_in_tehran`] fails.
    pub fn start_in_tehran(&self) -> jiff::Timestamp {
        self.try_start_in_tehran()
            .unwrap_or_else(|_| self.saturate(jiff::Timestamp::MIN, jiff::Timestamp::MAX))
    }

    /// The first instant of the next day in Tehran (exclusive end of this day); never
    /// panics, and saturates at jiff's earliest or latest instant when
    /// [`JalaliDate::try_end_in_tehran`] fails.
    pub fn end_in_tehran(&self) -> jiff::Timestamp {
        self.try_end_in_tehran()
            .unwrap_or_else(|_| self.saturate(jiff::Timestamp::MIN, jiff::Timestamp::MAX))
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
    /// The instant this wall-clock time denotes in Tehran, or an error when it is outside
    /// jiff's range.
    pub fn try_to_timestamp(&self) -> Result<jiff::Timestamp, JalaliError> {
        let zoned = self
            .date
            .try_to_civil()?
            .to_datetime(self.time)
            .to_zoned(tehran())
            .map_err(|_| self.date.unconvertible())?;
        Ok(zoned.timestamp())
    }

    /// The instant this wall-clock time denotes in Tehran; never panics, and saturates at
    /// jiff's earliest or latest instant when [`JalaliDateTime::try_to_timestamp`] fails.
    pub fn to_timestamp(&self) -> jiff::Timestamp {
        self.try_to_timestamp().unwrap_or_else(|_| {
            self.date
                .saturate(jiff::Timestamp::MIN, jiff::Timestamp::MAX)
        })
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

    /// Only years 1 to 3000 are accepted, with a sentence saying so; the last accepted day
    /// converts exactly (Jalali 9999 would be past jiff's Gregorian year 9999).
    #[test]
    fn years_limited_to_1_through_3000() {
        for (text, year) in [
            ("9999/12/29", 9999),
            ("3001/01/01", 3001),
            ("0000/01/01", 0),
        ] {
            let e = text.parse::<JalaliDate>().unwrap_err();
            assert_eq!(e, JalaliError::Range(year), "{text}");
            assert_eq!(
                e.to_string(),
                format!("year {year} is out of range; year must be between 1 and 3000")
            );
        }
        assert!("9999/12/29 02:00".parse::<JalaliDateTime>().is_err());
        let last: JalaliDate = "3000/12/29".parse().unwrap();
        let civil = last.try_to_civil().unwrap();
        assert_eq!(JalaliDate::from_civil(civil), last);
        assert_eq!(last.to_civil(), civil);
        assert!(last.try_start_in_tehran().unwrap() < last.try_end_in_tehran().unwrap());
        assert!(j("0001/01/01").try_to_civil().is_ok());
    }

    /// Conversions never panic, even for dates built field by field past jiff's range or at
    /// jiff's very limits: `try_*` report the year, the plain forms saturate in order.
    #[test]
    fn conversions_never_panic() {
        let far = JalaliDate {
            year: 9999,
            month: 12,
            day: 29,
        };
        assert_eq!(far.try_to_civil(), Err(JalaliError::Range(9999)));
        assert_eq!(far.to_civil(), jiff::civil::Date::MAX);
        assert_eq!(far.start_in_tehran(), jiff::Timestamp::MAX);
        assert_eq!(far.end_in_tehran(), jiff::Timestamp::MAX);
        let far_time = JalaliDateTime {
            date: far,
            time: jiff::civil::time(2, 0, 0, 0),
        };
        assert!(far_time.try_to_timestamp().is_err());
        assert_eq!(far_time.to_timestamp(), jiff::Timestamp::MAX);

        let early = JalaliDate {
            year: -20000,
            month: 1,
            day: 1,
        };
        assert_eq!(early.to_civil(), jiff::civil::Date::MIN);
        assert_eq!(early.start_in_tehran(), jiff::Timestamp::MIN);
        assert_eq!(early.end_in_tehran(), jiff::Timestamp::MIN);

        let bad_day = JalaliDate {
            year: 1400,
            month: 12,
            day: 30,
        };
        assert!(matches!(
            bad_day.try_to_civil(),
            Err(JalaliError::Day { max: 29, .. })
        ));

        // The last jiff day has no tomorrow: its end saturates instead of panicking.
        let last = JalaliDate::from_civil(jiff::civil::Date::MAX);
        assert_eq!(last.to_civil(), jiff::civil::Date::MAX);
        assert!(last.try_end_in_tehran().is_err());
        assert_eq!(last.end_in_tehran(), jiff::Timestamp::MAX);
        let first = JalaliDate::from_civil(jiff::civil::Date::MIN);
        let _ = (first.start_in_tehran(), first.end_in_tehran());
        let _ = JalaliDate::in_tehran(jiff::Timestamp::MAX);
        let _ = JalaliDate::in_tehran(jiff::Timestamp::MIN);
    }
}
