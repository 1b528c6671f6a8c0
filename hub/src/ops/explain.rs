//! The lines `tabadol policy explain AGENCY` adds about one grant (rate, validity,
//! condition, the request it answers) and about the agency (subscriptions, datasets it
//! publishes or reads, open service requests).

use std::path::Path;

use tabadol_policy::model::Grant;
use tabadol_policy::Policy;

use crate::inquiry::pipeline::approval_text;

/// Detail lines of one grant, indented under it.
pub fn grant_lines(g: &Grant) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(r) = g.rate {
        out.push(format!("      rate: {}/s, burst {}", r.per_second, r.burst));
    }
    if g.valid_from.is_some() || g.valid_until.is_some() {
        out.push(format!(
            "      valid: {} – {}",
            g.valid_from.map_or("always".to_owned(), |d| d.to_string()),
            g.valid_until
                .map_or("open-ended".to_owned(), |d| d.to_string())
        ));
    }
    if let Some(c) = &g.condition {
        out.push(format!(
            "      condition: input `{}` {} in dataset {} (else PERMISSION_DENIED, CONDITION_NOT_MET)",
            c.key,
            c.rule.as_str(),
            c.dataset
        ));
    }
    if let Some(r) = &g.request {
        out.push(format!("      answers service request {r}"));
    }
    out
}

/// The agency's subscriptions, datasets, and (with a stopped hub's data_dir) its open
/// service requests.
pub fn agency_lines(
    policy: &Policy,
    agency: &str,
    requests: Option<&Path>,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let subs: Vec<_> = policy
        .subscriptions()
        .iter()
        .filter(|s| s.agency == agency)
        .collect();
    if subs.is_empty() {
        out.push("  subscriptions: none".to_owned());
    }
    for s in subs {
        out.push(format!(
            "  subscription {}: events {} — approved {}",
            s.id,
            s.event_types.join(", "),
            approval_text(&s.approved)
        ));
    }
    for a in policy.agencies() {
        for d in &a.datasets {
            if a.id == agency {
                out.push(format!(
                    "  publishes dataset {} ({}), read by {}",
                    d.id,
                    d.kind.as_str(),
                    if d.readers.is_empty() {
                        "nobody".to_owned()
                    } else {
                        d.readers.join(", ")
                    }
                ));
            } else if d.readers.iter().any(|r| r == agency) {
                out.push(format!("  reads dataset {} of {}", d.id, a.id));
            }
        }
    }
    if let Some(data_dir) = requests {
        let store = crate::ops::cli::StoreArgs {
            config: None,
            dir: Some(data_dir.to_owned()),
        };
        let db = store.open()?;
        let open = crate::inquiry::requests::RequestStore::open(&db)?.open_of(agency)?;
        if open.is_empty() {
            out.push("  open service requests: none".to_owned());
        }
        for r in open {
            let what = if r.service.is_empty() {
                format!("{} (from {})", r.description, r.provider)
            } else {
                format!("grant of {}", r.service)
            };
            out.push(format!(
                "  open service request {} ({}): {what}",
                r.id, r.created_at
            ));
        }
    }
    Ok(out)
}
