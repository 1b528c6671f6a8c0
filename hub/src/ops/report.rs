//! Usage reports by Jalali month (R13) from the audit log: per agency × service, calls by
//! outcome and latency percentiles (nearest rank); and the quarterly public figures, per
//! service without agency detail. Rendered as an aligned table, CSV, JSON or HTML
//! (Persian, right to left, with English names beside the Persian ones).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use tabadol_policy::jalali::JalaliDate;
use tabadol_policy::Policy;

use crate::inquiry::audit::AuditRecord;

/// Outcomes in the order reports list them (others follow, sorted).
pub const OUTCOMES: [&str; 13] = [
    "ok",
    "denied",
    "invalid",
    "unknown_service",
    "rate_limited",
    "maintenance",
    "not_found",
    "rejected",
    "unavailable",
    "deadline_exceeded",
    "cancelled",
    "internal",
    "unauthenticated",
];

/// Outcomes that count against availability in the public figures: the hub or the
/// provider failed (a refusal, a maintenance window or an unknown subject is no failure).
const FAILURES: [&str; 3] = ["unavailable", "deadline_exceeded", "internal"];

/// A Jalali month or quarter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Period {
    Month { year: i32, month: u8 },
    Quarter { year: i32, quarter: u8 },
}

fn parse_year(s: &str, what: &str) -> Result<i32, String> {
    let canon = tabadol_policy::ids::canonical(s).map_err(|e| format!("{what}: {e}"))?;
    let y: i32 = canon
        .parse()
        .map_err(|_| format!("{what}: `{s}` is not a Jalali year"))?;
    if !(1300..=1600).contains(&y) {
        return Err(format!("{what}: year {y} is outside 1300–1600"));
    }
    Ok(y)
}

impl Period {
    /// `1405/08` (also `1405-08`, Persian digits).
    pub fn parse_month(s: &str) -> Result<Period, String> {
        let t = s.trim();
        let (y, m) = t
            .split_once(['/', '-'])
            .ok_or_else(|| format!("--month `{s}`: give YYYY/MM (Jalali), e.g. 1405/08"))?;
        let year = parse_year(y, "--month")?;
        let m = tabadol_policy::ids::canonical(m).map_err(|e| format!("--month: {e}"))?;
        let month: u8 = m
            .parse()
            .ok()
            .filter(|m| (1..=12).contains(m))
            .ok_or_else(|| format!("--month `{s}`: the month must be 01–12"))?;
        Ok(Period::Month { year, month })
    }

    /// `1405-3` (quarter 1–4: months 1–3, 4–6, 7–9, 10–12).
    pub fn parse_quarter(s: &str) -> Result<Period, String> {
        let t = s.trim();
        let (y, q) = t
            .split_once(['-', '/'])
            .ok_or_else(|| format!("--quarter `{s}`: give YYYY-Q (Jalali), e.g. 1405-3"))?;
        let year = parse_year(y, "--quarter")?;
        let q = tabadol_policy::ids::canonical(q).map_err(|e| format!("--quarter: {e}"))?;
        let quarter: u8 = q
            .trim_start_matches('Q')
            .parse()
            .ok()
            .filter(|q| (1..=4).contains(q))
            .ok_or_else(|| format!("--quarter `{s}`: the quarter must be 1–4"))?;
        Ok(Period::Quarter { year, quarter })
    }

    /// First month and number of months.
    fn months(&self) -> (i32, u8, u8) {
        match *self {
            Period::Month { year, month } => (year, month, 1),
            Period::Quarter { year, quarter } => (year, (quarter - 1) * 3 + 1, 3),
        }
    }

    /// First day of the period.
    pub fn first_day(&self) -> JalaliDate {
        let (y, m, _) = self.months();
        JalaliDate::new(y, m, 1).expect("day 1 of a month 1-12 exists")
    }

    /// First day after the period.
    fn next_first_day(&self) -> JalaliDate {
        let (y, m, n) = self.months();
        let m = m + n;
        if m > 12 {
            JalaliDate::new(y + 1, m - 12, 1).expect("valid")
        } else {
            JalaliDate::new(y, m, 1).expect("valid")
        }
    }

    /// Last day of the period.
    pub fn last_day(&self) -> JalaliDate {
        let next = self.next_first_day().to_civil();
        JalaliDate::from_civil(next.yesterday().expect("in range"))
    }

    /// `[from, until)` in Unix microseconds: Tehran midnight of the first day to Tehran
    /// midnight after the last.
    pub fn bounds_micros(&self) -> (i64, i64) {
        (
            self.first_day().start_in_tehran().as_microsecond(),
            self.next_first_day().start_in_tehran().as_microsecond(),
        )
    }

    /// `1405/08` or `1405-3`.
    pub fn label(&self) -> String {
        match *self {
            Period::Month { year, month } => format!("{year:04}/{month:02}"),
            Period::Quarter { year, quarter } => format!("{year:04}-{quarter}"),
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
    Html,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "html" => Ok(Format::Html),
            other => Err(format!(
                "--format `{other}`: give one of table, csv, json, html"
            )),
        }
    }
}

/// One line of a report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Absent in the public figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agency_fa: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agency_en: Option<String>,
    pub service: String,
    pub service_fa: String,
    pub service_en: String,
    pub calls: u64,
    /// Calls by outcome (only outcomes that occurred).
    pub outcomes: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Public figures: share of calls that did not fail for the hub's or the provider's
    /// reasons, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_percent: Option<f64>,
}

/// A built report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub period: String,
    pub from: String,
    pub until: String,
    pub public: bool,
    pub calls: u64,
    pub rows: Vec<Row>,
}

/// The nearest-rank percentile `p` (0–100) of sorted values, in ms (0 for none).
pub fn percentile_ms(sorted_micros: &[u64], p: f64) -> f64 {
    if sorted_micros.is_empty() {
        return 0.0;
    }
    let n = sorted_micros.len();
    let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
    sorted_micros[rank.min(n) - 1] as f64 / 1000.0
}

/// Calls of one group by outcome, and their latencies (µs).
type Group = (BTreeMap<String, u64>, Vec<u64>);

impl Report {
    /// Aggregates `records` (already limited to the period). `public`: per service only.
    pub fn build(policy: &Policy, period: Period, records: &[AuditRecord], public: bool) -> Report {
        let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
        for r in records {
            let agency = if public {
                String::new()
            } else {
                r.agency.clone()
            };
            let g = groups.entry((agency, r.service.clone())).or_default();
            *g.0.entry(r.outcome.clone()).or_default() += 1;
            g.1.push(r.latency_micros);
        }
        let mut rows = Vec::with_capacity(groups.len());
        for ((agency, service), (outcomes, mut lat)) in groups {
            lat.sort_unstable();
            let calls = lat.len() as u64;
            let (service_fa, service_en) = policy
                .service(&service)
                .map(|s| (s.title_fa.clone(), s.title_en.clone()))
                .unwrap_or_else(|| (service.clone(), service.clone()));
            let (agency_id, agency_fa, agency_en) = if public {
                (None, None, None)
            } else {
                let (fa, en) = policy
                    .agency(&agency)
                    .map(|a| (a.name_fa.clone(), a.name_en.clone()))
                    .unwrap_or_else(|| (agency.clone(), agency.clone()));
                (Some(agency), Some(fa), Some(en))
            };
            let failed: u64 = FAILURES
                .iter()
                .map(|f| outcomes.get(*f).copied().unwrap_or(0))
                .sum();
            rows.push(Row {
                agency: agency_id,
                agency_fa,
                agency_en,
                service,
                service_fa,
                service_en,
                calls,
                p50_ms: percentile_ms(&lat, 50.0),
                p95_ms: percentile_ms(&lat, 95.0),
                p99_ms: percentile_ms(&lat, 99.0),
                availability_percent: public.then(|| {
                    if calls == 0 {
                        100.0
                    } else {
                        ((calls - failed) as f64 * 10000.0 / calls as f64).round() / 100.0
                    }
                }),
                outcomes,
            });
        }
        Report {
            period: period.label(),
            from: period.first_day().to_string(),
            until: period.last_day().to_string(),
            public,
            calls: records.len() as u64,
            rows,
        }
    }

    /// The outcomes that occur in this report, in [`OUTCOMES`] order (others after).
    pub fn outcome_columns(&self) -> Vec<String> {
        let mut seen: std::collections::BTreeSet<&str> = Default::default();
        for r in &self.rows {
            seen.extend(r.outcomes.keys().map(String::as_str));
        }
        let mut cols: Vec<String> = OUTCOMES
            .iter()
            .filter(|o| seen.contains(*o))
            .map(|o| (*o).to_owned())
            .collect();
        cols.extend(
            seen.iter()
                .filter(|o| !OUTCOMES.contains(o))
                .map(|o| (*o).to_owned()),
        );
        cols
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.table(),
            Format::Csv => self.csv(),
            Format::Json => serde_json::to_string_pretty(self).expect("report serializes"),
            Format::Html => self.html(),
        }
    }

    fn title_en(&self) -> String {
        if self.public {
            format!(
                "Tabadol public figures, quarter {} ({} – {})",
                self.period, self.from, self.until
            )
        } else {
            format!(
                "Tabadol usage, month {} ({} – {})",
                self.period, self.from, self.until
            )
        }
    }

    fn table(&self) -> String {
        let outcomes = self.outcome_columns();
        let mut head: Vec<String> = Vec::new();
        if !self.public {
            head.push("AGENCY".into());
        }
        head.extend(["SERVICE".into(), "CALLS".into()]);
        head.extend(outcomes.iter().map(|o| o.to_uppercase()));
        head.extend(["P50_MS".into(), "P95_MS".into(), "P99_MS".into()]);
        if self.public {
            head.push("AVAILABILITY_%".into());
        }
        let mut lines: Vec<Vec<String>> = vec![head];
        for r in &self.rows {
            let mut l = Vec::new();
            if let Some(a) = &r.agency {
                l.push(a.clone());
            }
            l.push(r.service.clone());
            l.push(r.calls.to_string());
            for o in &outcomes {
                l.push(r.outcomes.get(o).copied().unwrap_or(0).to_string());
            }
            l.extend([
                format!("{:.1}", r.p50_ms),
                format!("{:.1}", r.p95_ms),
                format!("{:.1}", r.p99_ms),
            ]);
            if let Some(a) = r.availability_percent {
                l.push(format!("{a:.2}"));
            }
            lines.push(l);
        }
        let cols = lines[0].len();
        let widths: Vec<usize> = (0..cols)
            .map(|i| {
                lines
                    .iter()
                    .map(|l| l[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = format!("{}\n{} calls in total\n\n", self.title_en(), self.calls);
        for l in &lines {
            let cells: Vec<String> = l
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let pad = widths[i] - c.chars().count();
                    if i < if self.public { 1 } else { 2 } {
                        format!("{c}{}", " ".repeat(pad))
                    } else {
                        format!("{}{c}", " ".repeat(pad))
                    }
                })
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        if self.rows.is_empty() {
            out.push_str("(no calls in this period)\n");
        }
        // The names behind the ids, Persian and English.
        let mut names: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
        for r in &self.rows {
            if let (Some(a), Some(fa), Some(en)) = (&r.agency, &r.agency_fa, &r.agency_en) {
                names.insert(a, (fa, en));
            }
            names.insert(&r.service, (&r.service_fa, &r.service_en));
        }
        if !names.is_empty() {
            out.push('\n');
            for (id, (fa, en)) in names {
                let _ = writeln!(out, "{id}: {en} — {fa}");
            }
        }
        out
    }

    fn csv(&self) -> String {
        let mut head: Vec<&str> = vec!["period", "from", "until"];
        if !self.public {
            head.extend(["agency", "agency_fa", "agency_en"]);
        }
        head.extend(["service", "service_fa", "service_en", "calls"]);
        let outcome_heads: Vec<String> = OUTCOMES.iter().map(|o| o.to_string()).collect();
        let mut out = head.join(",");
        for o in &outcome_heads {
            out.push(',');
            out.push_str(o);
        }
        out.push_str(",other,p50_ms,p95_ms,p99_ms");
        if self.public {
            out.push_str(",availability_percent");
        }
        out.push('\n');
        for r in &self.rows {
            let mut cells: Vec<String> =
                vec![self.period.clone(), self.from.clone(), self.until.clone()];
            if !self.public {
                cells.push(r.agency.clone().unwrap_or_default());
                cells.push(r.agency_fa.clone().unwrap_or_default());
                cells.push(r.agency_en.clone().unwrap_or_default());
            }
            cells.extend([
                r.service.clone(),
                r.service_fa.clone(),
                r.service_en.clone(),
                r.calls.to_string(),
            ]);
            for o in OUTCOMES {
                cells.push(r.outcomes.get(o).copied().unwrap_or(0).to_string());
            }
            let other: u64 = r
                .outcomes
                .iter()
                .filter(|(k, _)| !OUTCOMES.contains(&k.as_str()))
                .map(|(_, v)| v)
                .sum();
            cells.push(other.to_string());
            cells.extend([
                format!("{:.3}", r.p50_ms),
                format!("{:.3}", r.p95_ms),
                format!("{:.3}", r.p99_ms),
            ]);
            if let Some(a) = r.availability_percent {
                cells.push(format!("{a:.2}"));
            }
            let line: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
            out.push_str(&line.join(","));
            out.push('\n');
        }
        out
    }

    fn html(&self) -> String {
        let outcomes = self.outcome_columns();
        let title_fa = if self.public {
            format!(
                "آمار عمومی تبادل، فصل {} ({} تا {})",
                fa_digits(&self.period),
                fa_digits(&self.from),
                fa_digits(&self.until)
            )
        } else {
            format!(
                "گزارش مصرف تبادل، ماه {} ({} تا {})",
                fa_digits(&self.period),
                fa_digits(&self.from),
                fa_digits(&self.until)
            )
        };
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html><html lang=\"fa\" dir=\"rtl\"><head><meta charset=\"utf-8\"><title>{}</title>\
             <style>body{{font-family:Vazirmatn,Tahoma,sans-serif;margin:2em}}table{{border-collapse:collapse}}\
             td,th{{border:1px solid #999;padding:.3em .6em}}td.n{{text-align:left;direction:ltr}}\
             .en{{color:#555;direction:ltr;unicode-bidi:isolate}}</style></head><body>\
             <h1>{}</h1><p class=\"en\">{}</p><p>مجموع فراخوانی‌ها: <span class=\"total\">{}</span></p>\
             <table class=\"report\"><thead><tr>",
            esc(&title_fa),
            esc(&title_fa),
            esc(&self.title_en()),
            fa_digits(&self.calls.to_string()),
        );
        if !self.public {
            h.push_str("<th>دستگاه <span class=\"en\">Agency</span></th>");
        }
        h.push_str("<th>خدمت <span class=\"en\">Service</span></th><th>فراخوانی <span class=\"en\">Calls</span></th>");
        for o in &outcomes {
            let _ = write!(
                h,
                "<th>{} <span class=\"en\">{}</span></th>",
                outcome_fa(o),
                esc(o)
            );
        }
        h.push_str(
            "<th>میانه (ms) <span class=\"en\">p50</span></th><th>p95 (ms)</th><th>p99 (ms)</th>",
        );
        if self.public {
            h.push_str("<th>دسترس‌پذیری ٪ <span class=\"en\">Availability %</span></th>");
        }
        h.push_str("</tr></thead><tbody>");
        for r in &self.rows {
            h.push_str("<tr");
            if let Some(a) = &r.agency {
                let _ = write!(h, " data-agency=\"{}\"", esc(a));
            }
            let _ = write!(h, " data-service=\"{}\">", esc(&r.service));
            if let (Some(fa), Some(en)) = (&r.agency_fa, &r.agency_en) {
                let _ = write!(
                    h,
                    "<td>{} <span class=\"en\">{}</span></td>",
                    esc(fa),
                    esc(en)
                );
            }
            let _ = write!(
                h,
                "<td>{} <span class=\"en\">{}</span></td><td class=\"n calls\">{}</td>",
                esc(&r.service_fa),
                esc(&r.service_en),
                fa_digits(&r.calls.to_string())
            );
            for o in &outcomes {
                let _ = write!(
                    h,
                    "<td class=\"n\" data-outcome=\"{}\">{}</td>",
                    esc(o),
                    fa_digits(&r.outcomes.get(o).copied().unwrap_or(0).to_string())
                );
            }
            for p in [r.p50_ms, r.p95_ms, r.p99_ms] {
                let _ = write!(h, "<td class=\"n\">{}</td>", fa_digits(&format!("{p:.1}")));
            }
            if let Some(a) = r.availability_percent {
                let _ = write!(h, "<td class=\"n\">{}</td>", fa_digits(&format!("{a:.2}")));
            }
            h.push_str("</tr>");
        }
        h.push_str("</tbody></table></body></html>\n");
        h
    }
}

fn csv_cell(c: &str) -> String {
    if c.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c.to_owned()
    }
}

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Latin digits to Persian ones (۰–۹), the decimal point to the Persian separator.
pub fn fa_digits(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '0'..='9' => char::from_u32(0x06F0 + (c as u32 - '0' as u32)).unwrap_or(c),
            '.' => '٫',
            c => c,
        })
        .collect()
}

/// The Persian name of an outcome.
pub fn outcome_fa(o: &str) -> &'static str {
    match o {
        "ok" => "موفق",
        "denied" => "رد دسترسی",
        "invalid" => "نامعتبر",
        "unknown_service" => "خدمت ناشناخته",
        "rate_limited" => "سقف نرخ",
        "maintenance" => "نگهداری",
        "not_found" => "یافت نشد",
        "rejected" => "رد از سوی ارائه‌دهنده",
        "unavailable" => "در دسترس نبود",
        "deadline_exceeded" => "پایان مهلت",
        "cancelled" => "لغو",
        "internal" => "خطای داخلی",
        "unauthenticated" => "احراز نشده",
        _ => "دیگر",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_quarters_have_jalali_bounds() {
        let m = Period::parse_month("1405/08").unwrap();
        assert_eq!(m.first_day().to_string(), "1405/08/01");
        assert_eq!(m.last_day().to_string(), "1405/08/30");
        let esfand = Period::parse_month("۱۴۰۵/۱۲").unwrap();
        assert_eq!(esfand.label(), "1405/12");
        let q = Period::parse_quarter("1405-3").unwrap();
        assert_eq!(q.first_day().to_string(), "1405/07/01");
        assert_eq!(q.last_day().to_string(), "1405/09/30");
        assert!(Period::parse_month("1405/13").is_err());
        assert!(Period::parse_quarter("1405-5").is_err());
        let (a, b) = m.bounds_micros();
        assert_eq!(b - a, 30 * 86_400 * 1_000_000);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), 50.0);
        assert_eq!(percentile_ms(&v, 95.0), 95.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert_eq!(percentile_ms(&[7000], 99.0), 7.0);
    }
}

/// `tabadol report ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ReportCommand {
    /// Usage of one Jalali month per agency × service (calls by outcome, latency
    /// percentiles), or with `--public --quarter` the quarterly public figures per service
    /// without agency detail. Reads a stopped hub's store; a running hub serves the same
    /// at `/report/usage?month=…` and `/report/public?quarter=…` on its admin listener.
    Usage(UsageArgs),
}

/// Arguments of `tabadol report usage`.
#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// Jalali month, YYYY/MM (e.g. 1405/08).
    #[arg(long, required_unless_present = "quarter", conflicts_with = "quarter")]
    pub month: Option<String>,
    /// The public figures: per service, no agency detail (needs --quarter).
    #[arg(long, requires = "quarter")]
    pub public: bool,
    /// Jalali quarter, YYYY-Q (e.g. 1405-3 = months 7–9); with --public.
    #[arg(long, requires = "public")]
    pub quarter: Option<String>,
    /// table, csv, json or html.
    #[arg(long, default_value = "table")]
    pub format: String,
    #[command(flatten)]
    pub store: crate::ops::cli::StoreArgs,
    /// Policy directory for the Persian and English names [default: the configuration's
    /// policy_dir, else policy/national, else <dir>/policy].
    #[arg(long)]
    pub policy: Option<std::path::PathBuf>,
}

/// Runs `tabadol report usage`: prints the report to stdout.
pub fn run(cmd: ReportCommand) -> anyhow::Result<()> {
    let ReportCommand::Usage(args) = cmd;
    let format = Format::parse(&args.format).map_err(|e| anyhow::anyhow!(e))?;
    let (period, public) = match (&args.month, &args.quarter) {
        (Some(m), None) => (Period::parse_month(m), false),
        (None, Some(q)) => (Period::parse_quarter(q), true),
        _ => (
            Err("give --month YYYY/MM, or --public --quarter YYYY-Q".to_owned()),
            false,
        ),
    };
    let period = period.map_err(|e| anyhow::anyhow!(e))?;
    let policy_dir = match (&args.policy, &args.store.config) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(config)) => Some(
            crate::ops::config::Config::load(config)
                .map_err(|e| {
                    anyhow::anyhow!("configuration {} is not usable:\n{e}", config.display())
                })?
                .0
                .policy_dir,
        ),
        (None, None) => {
            let repo = std::path::PathBuf::from("policy/national");
            let dev = args
                .store
                .dir
                .clone()
                .unwrap_or_else(|| "./var/dev".into())
                .join("policy");
            [repo, dev]
                .into_iter()
                .find(|d| d.join("agencies.yaml").is_file())
        }
    };
    let policy = match policy_dir {
        Some(dir) => Policy::load_dir(&dir).map_err(|e| {
            anyhow::anyhow!(
                "policy {} (for the names in the report): {}; run `tabadol policy check {}`",
                dir.display(),
                e.summary(),
                dir.display()
            )
        })?,
        None => anyhow::bail!(
            "no policy found for the agency and service names: give --policy DIR (e.g. policy/national)"
        ),
    };
    let db = args.store.open()?;
    let (from, until) = period.bounds_micros();
    let records = crate::inquiry::audit::records_between_db(&db, from, until)?;
    let report = Report::build(&policy, period, &records, public);
    print!("{}", report.render(format));
    Ok(())
}
