//! The secretariat's read-only dashboard on the admin listener: one server-rendered page in
//! Persian (right to left) with an English toggle (`?lang=en`) — the access matrix
//! (agencies × services, each grant's fields, purposes, validity, conditions and the
//! approval it cites; subscriptions), today's and this month's usage per agency and
//! service from the audit log, and availability (R14): service hours, planned maintenance
//! windows, current incidents (providers down or breakers open, relay stalled).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tabadol_policy::jalali::JalaliDate;

use crate::inquiry::pipeline::approval_text;
use crate::ops::admin::AdminState;
use crate::ops::report::{esc, fa_digits};

/// The relay counts as stalled when the oldest undelivered event is older than this.
const RELAY_STALLED_SECS: i64 = 60;

/// Language of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Fa,
    En,
}

impl Lang {
    pub fn parse(s: Option<&str>) -> Lang {
        match s {
            Some("en") => Lang::En,
            _ => Lang::Fa,
        }
    }

    fn t<'a>(self, fa: &'a str, en: &'a str) -> &'a str {
        match self {
            Lang::Fa => fa,
            Lang::En => en,
        }
    }

    fn num(self, n: impl ToString) -> String {
        match self {
            Lang::Fa => fa_digits(&n.to_string()),
            Lang::En => n.to_string(),
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Counts {
    calls: u64,
    ok: u64,
    refused: u64,
    failed: u64,
}

fn tally(records: &[crate::inquiry::audit::AuditRecord]) -> BTreeMap<(String, String), Counts> {
    let mut m: BTreeMap<(String, String), Counts> = BTreeMap::new();
    for r in records {
        let c = m.entry((r.agency.clone(), r.service.clone())).or_default();
        c.calls += 1;
        match r.outcome.as_str() {
            "ok" => c.ok += 1,
            "unavailable" | "deadline_exceeded" | "internal" => c.failed += 1,
            _ => c.refused += 1,
        }
    }
    m
}

/// Renders the page (blocking: reads this month's audit records).
pub fn render(s: &AdminState, lang: Lang) -> anyhow::Result<String> {
    let state = s.hub.policy();
    let policy = &state.policy;
    let now = jiff::Timestamp::now();
    let today = JalaliDate::in_tehran(now);
    let month_start = JalaliDate::new(today.year, today.month, 1)?.start_in_tehran();
    let day_start = today.start_in_tehran();
    let month_records = s
        .hub
        .audit()
        .records_between(month_start.as_microsecond(), i64::MAX)?;
    let split = month_records.partition_point(|r| r.time_micros < day_start.as_microsecond());
    let month_usage = tally(&month_records);
    let today_usage = tally(&month_records[split..]);
    let health = s.health.snapshot();

    let dir = lang.t("rtl", "ltr");
    let mut h = String::with_capacity(64 * 1024);
    let title = lang.t("داشبورد دبیرخانهٔ تبادل", "Tabadol secretariat dashboard");
    let _ = write!(
        h,
        "<!doctype html><html lang=\"{}\" dir=\"{dir}\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"30\"><title>{title}</title><style>\
         body{{font-family:Vazirmatn,Tahoma,'DejaVu Sans',sans-serif;margin:1.5em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #bbb;padding:.25em .5em;vertical-align:top;font-size:.9em}}\
         th{{background:#eef}}.yes{{background:#e6f6e6}}.no{{color:#aaa;text-align:center}}.bad{{background:#fde2e2}}\
         .ok{{background:#e6f6e6}}.n{{text-align:end}}.small{{font-size:.8em;color:#555}}nav a{{margin-inline-end:1em}}\
         </style></head><body>",
        lang.t("fa", "en")
    );
    let _ = write!(
        h,
        "<h1>{title}</h1><nav><a id=\"toggle\" href=\"?lang={}\">{}</a><span class=\"small\">{} {}</span></nav>",
        lang.t("en", "fa"),
        lang.t("English", "فارسی"),
        lang.t("امروز:", "Today:"),
        lang.num(today)
    );

    // Availability (R14).
    let _ = write!(
        h,
        "<h2 id=\"availability\">{}</h2>",
        lang.t("دسترس‌پذیری", "Availability")
    );
    let mut incidents: Vec<String> = Vec::new();
    if let Some(v) = &health.hub {
        if !v.serving {
            incidents.push(format!("{}: {}", lang.t("هاب", "Hub"), v.reason));
        }
    }
    for (p, v) in &health.providers {
        if !v.serving {
            incidents.push(format!(
                "{} {p}: {}",
                lang.t("ارائه‌دهنده", "Provider"),
                v.reason
            ));
        }
    }
    if s.kafka {
        let cursor = s.outbox.cursor(crate::events::relay::CURSOR).unwrap_or(0);
        let last = s.outbox.last_seq();
        if last > cursor {
            if let Ok(Some(ev)) = s.outbox.get(cursor + 1) {
                let age = now.as_second() - ev.accepted_at_micros / 1_000_000;
                if age > RELAY_STALLED_SECS {
                    incidents.push(format!(
                        "{}: {} {}, {} {}s",
                        lang.t("رله کافکا متوقف", "Kafka relay stalled"),
                        lang.num(last - cursor),
                        lang.t("رویداد در صف", "events waiting"),
                        lang.t("قدیمی‌ترین", "oldest"),
                        lang.num(age)
                    ));
                }
            }
        }
    }
    let dead = s.outbox.dead_letters();
    if dead > 0 {
        incidents.push(format!(
            "{}: {}",
            lang.t("نامه‌های مرده در صندوق رویداد", "Dead letters in the outbox"),
            lang.num(dead)
        ));
    }
    let _ = write!(
        h,
        "<h3>{}</h3><ul id=\"incidents\">",
        lang.t("رخدادهای جاری", "Current incidents")
    );
    if incidents.is_empty() {
        let _ = write!(h, "<li class=\"ok\">{}</li>", lang.t("هیچ", "None"));
    }
    for i in &incidents {
        let _ = write!(h, "<li class=\"bad\">{}</li>", esc(i));
    }
    h.push_str("</ul>");
    let _ = write!(
        h,
        "<table id=\"services\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        lang.t("خدمت", "Service"),
        lang.t("ارائه‌دهنده", "Provider"),
        lang.t("ساعات خدمت", "Service hours"),
        lang.t("وضعیت", "Status"),
        lang.t("نگهداری برنامه‌ریزی‌شده", "Planned maintenance")
    );
    for svc in policy.services() {
        let verdict = health.services.get(&svc.id);
        let (class, status) = match verdict {
            Some(v) if v.serving => ("ok", lang.t("در حال خدمت", "Serving").to_owned()),
            Some(v) => (
                "bad",
                format!("{} — {}", lang.t("خارج از خدمت", "Not serving"), v.reason),
            ),
            None => ("", lang.t("هنوز بررسی نشده", "Not checked yet").to_owned()),
        };
        let windows: Vec<String> = svc
            .maintenance
            .iter()
            .filter(|w| w.until.to_timestamp() > now)
            .map(|w| {
                format!(
                    "{} – {}{}",
                    lang.num(w.from),
                    lang.num(w.until),
                    w.note
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                )
            })
            .collect();
        let _ = write!(
            h,
            "<tr data-service=\"{}\"><td>{} <span class=\"small\">{}</span></td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
            esc(&svc.id),
            esc(lang.t(&svc.title_fa, &svc.title_en)),
            esc(&svc.id),
            esc(&provider_name(policy, &svc.provider, lang)),
            lang.t("۲۴ ساعته، جز پنجره‌های نگهداری", "24/7, except maintenance windows"),
            esc(&status),
            if windows.is_empty() {
                lang.t("ندارد", "none").to_owned()
            } else {
                esc(&windows.join("; "))
            }
        );
    }
    h.push_str("</table>");

    // Access matrix.
    let services: Vec<_> = policy.services().collect();
    let _ = write!(
        h,
        "<h2 id=\"matrix\">{}</h2><table id=\"access-matrix\"><tr><th>{}</th>",
        lang.t("ماتریس دسترسی", "Access matrix"),
        lang.t("دستگاه \\ خدمت", "Agency \\ service")
    );
    for svc in &services {
        let _ = write!(
            h,
            "<th title=\"{}\">{}</th>",
            esc(&svc.id),
            esc(lang.t(&svc.title_fa, &svc.title_en))
        );
    }
    h.push_str("</tr>");
    for a in policy.agencies() {
        let _ = write!(
            h,
            "<tr data-agency=\"{}\"><th>{}</th>",
            esc(&a.id),
            esc(lang.t(&a.name_fa, &a.name_en))
        );
        for svc in &services {
            match policy.grant(&a.id, &svc.id) {
                Some(g) => {
                    let _ = write!(
                        h,
                        "<td class=\"yes\" data-grant=\"{}/{}\">✓ <span class=\"small\">{}</span></td>",
                        esc(&a.id),
                        esc(&svc.id),
                        esc(&g.fields.join(", "))
                    );
                }
                None => h.push_str("<td class=\"no\">—</td>"),
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    let _ = write!(
        h,
        "<h3>{}</h3><table id=\"grants\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        lang.t("مجوزها", "Grants"),
        lang.t("دستگاه", "Agency"),
        lang.t("خدمت", "Service"),
        lang.t("فیلدها", "Fields"),
        lang.t("اهداف", "Purposes"),
        lang.t("اعتبار", "Validity"),
        lang.t("شرایط", "Conditions"),
        lang.t("مصوبه", "Approval")
    );
    for a in policy.agencies() {
        for (svc, g) in policy.grants_for(&a.id) {
            let validity = match (&g.valid_from, &g.valid_until) {
                (None, None) => lang.t("بدون محدودیت", "open-ended").to_owned(),
                (f, u) => format!(
                    "{} – {}",
                    f.map(|d| lang.num(d)).unwrap_or_default(),
                    u.map(|d| lang.num(d)).unwrap_or_default()
                ),
            };
            let conditions = match g.rate.as_ref().or(a.rate.as_ref()) {
                Some(r) => format!(
                    "{} {}/s, {} {}",
                    lang.t("نرخ", "rate"),
                    lang.num(r.per_second),
                    lang.t("انفجار", "burst"),
                    lang.num(r.burst)
                ),
                None => lang.t("بدون سقف نرخ", "no rate limit").to_owned(),
            };
            let _ = write!(
                h,
                "<tr class=\"grant\" data-agency=\"{}\" data-service=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"approval\">{}</td></tr>",
                esc(&a.id),
                esc(&svc.id),
                esc(lang.t(&a.name_fa, &a.name_en)),
                esc(lang.t(&svc.title_fa, &svc.title_en)),
                esc(&g.fields.join(", ")),
                esc(&g.purposes.join(", ")),
                esc(&validity),
                esc(&conditions),
                esc(&approval_text(&g.approved))
            );
        }
    }
    h.push_str("</table>");
    let _ = write!(
        h,
        "<h3>{}</h3><table id=\"subscriptions\"><tr><th>{}</th><th>{}</th><th>{}</th></tr>",
        lang.t("اشتراک‌ها", "Subscriptions"),
        lang.t("دستگاه", "Agency"),
        lang.t("رویدادها", "Events"),
        lang.t("مصوبه", "Approval")
    );
    for sub in policy.subscriptions() {
        let name = policy
            .agency(&sub.agency)
            .map(|a| lang.t(&a.name_fa, &a.name_en).to_owned())
            .unwrap_or_else(|| sub.agency.clone());
        let _ = write!(
            h,
            "<tr data-agency=\"{}\"><td>{}</td><td>{}</td><td class=\"approval\">{}</td></tr>",
            esc(&sub.agency),
            esc(&name),
            esc(&sub.event_types.join(", ")),
            esc(&approval_text(&sub.approved))
        );
    }
    h.push_str("</table>");

    // Usage.
    let _ = write!(
        h,
        "<h2 id=\"usage\">{}</h2><table id=\"usage-table\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        lang.t("مصرف", "Usage"),
        lang.t("دستگاه", "Agency"),
        lang.t("خدمت", "Service"),
        lang.t("امروز", "Today"),
        lang.t("این ماه", "This month"),
        lang.t("موفق (ماه)", "OK (month)"),
        lang.t("رد شده (ماه)", "Refused (month)"),
        lang.t("ناموفق (ماه)", "Failed (month)")
    );
    if month_usage.is_empty() {
        let _ = write!(
            h,
            "<tr><td colspan=\"7\">{}</td></tr>",
            lang.t("فراخوانی‌ای در این ماه نبوده است", "No calls this month")
        );
    }
    for ((agency, service), m) in &month_usage {
        let t = today_usage
            .get(&(agency.clone(), service.clone()))
            .copied()
            .unwrap_or_default();
        let agency_name = policy
            .agency(agency)
            .map(|a| lang.t(&a.name_fa, &a.name_en).to_owned())
            .unwrap_or_else(|| agency.clone());
        let service_name = policy
            .service(service)
            .map(|s| lang.t(&s.title_fa, &s.title_en).to_owned())
            .unwrap_or_else(|| service.clone());
        let _ = write!(
            h,
            "<tr class=\"usage\" data-agency=\"{}\" data-service=\"{}\"><td>{}</td><td>{}</td><td class=\"n today\">{}</td><td class=\"n month\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(agency),
            esc(service),
            esc(&agency_name),
            esc(&service_name),
            lang.num(t.calls),
            lang.num(m.calls),
            lang.num(m.ok),
            lang.num(m.refused),
            lang.num(m.failed)
        );
    }
    h.push_str("</table>");
    let _ = writeln!(
        h,
        "<p class=\"small\">{} <a href=\"/report/usage?month={}\">{}</a> · <a href=\"/metrics\">/metrics</a> · <a href=\"/health\">/health</a></p></body></html>",
        lang.t("گزارش کامل ماه:", "Full month report:"),
        format_args!("{:04}/{:02}", today.year, today.month),
        lang.t("گزارش مصرف", "usage report")
    );
    Ok(h)
}

fn provider_name(policy: &tabadol_policy::Policy, id: &str, lang: Lang) -> String {
    policy
        .agency(id)
        .map(|a| lang.t(&a.name_fa, &a.name_en).to_owned())
        .unwrap_or_else(|| id.to_owned())
}
