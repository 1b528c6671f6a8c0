//! What a policy change does, for the secretariat (`tabadol policy diff`): per agency,
//! every grant, field, purpose, validity, rate, condition and subscription added, removed,
//! widened or narrowed, each with the approval it cites. A widening that cites no new
//! approval (the same `approved:` as before, for more access) is flagged: the command then
//! exits non-zero.

use std::collections::{BTreeMap, BTreeSet};

use tabadol_policy::jalali::JalaliDate;
use tabadol_policy::load::PolicySource;
use tabadol_policy::model::{Approval, Grant, Rate, Subscription};

use crate::inquiry::pipeline::approval_text;

/// Which way a change moves access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Widened,
    Narrowed,
}

/// One classified change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub agency: String,
    /// E.g. "grant moe-shahkar: field `mobile` added".
    pub what: String,
    pub direction: Direction,
    /// The approval the new version cites (or the old one, for a removal).
    pub approval: String,
    /// A widening citing the same approval as before.
    pub unapproved: bool,
}

fn set(v: &[String]) -> BTreeSet<&str> {
    v.iter().map(String::as_str).collect()
}

/// Every change from `old` to `new`.
pub fn changes(old: &PolicySource, new: &PolicySource) -> Vec<Change> {
    let mut out = Vec::new();
    let grants = |s: &PolicySource| -> BTreeMap<String, Grant> {
        s.grants.iter().map(|g| (g.id.clone(), g.clone())).collect()
    };
    let (before, after) = (grants(old), grants(new));
    for (id, g) in &after {
        match before.get(id) {
            None => out.push(Change {
                agency: g.agency.clone(),
                what: format!("grant {id} ({}) added", g.service),
                direction: Direction::Widened,
                approval: approval_text(&g.approved),
                unapproved: false,
            }),
            Some(o) => grant_changes(o, g, &mut out),
        }
    }
    for (id, g) in &before {
        if !after.contains_key(id) {
            out.push(Change {
                agency: g.agency.clone(),
                what: format!("grant {id} ({}) removed", g.service),
                direction: Direction::Narrowed,
                approval: approval_text(&g.approved),
                unapproved: false,
            });
        }
    }
    let subs = |s: &PolicySource| -> BTreeMap<String, Subscription> {
        s.subscriptions
            .iter()
            .map(|x| (x.id.clone(), x.clone()))
            .collect()
    };
    let (before, after) = (subs(old), subs(new));
    for (id, s) in &after {
        let approval = approval_text(&s.approved);
        match before.get(id) {
            None => out.push(Change {
                agency: s.agency.clone(),
                what: format!("subscription {id} added ({})", s.event_types.join(", ")),
                direction: Direction::Widened,
                approval,
                unapproved: false,
            }),
            Some(o) => {
                let same = o.approved == s.approved;
                let (a, b) = (set(&o.event_types), set(&s.event_types));
                for t in b.difference(&a) {
                    out.push(Change {
                        agency: s.agency.clone(),
                        what: format!("subscription {id}: event type `{t}` added"),
                        direction: Direction::Widened,
                        approval: approval.clone(),
                        unapproved: same,
                    });
                }
                for t in a.difference(&b) {
                    out.push(Change {
                        agency: s.agency.clone(),
                        what: format!("subscription {id}: event type `{t}` removed"),
                        direction: Direction::Narrowed,
                        approval: approval.clone(),
                        unapproved: false,
                    });
                }
            }
        }
    }
    for (id, s) in &before {
        if !after.contains_key(id) {
            out.push(Change {
                agency: s.agency.clone(),
                what: format!("subscription {id} removed"),
                direction: Direction::Narrowed,
                approval: approval_text(&s.approved),
                unapproved: false,
            });
        }
    }
    out
}

fn grant_changes(o: &Grant, g: &Grant, out: &mut Vec<Change>) {
    let same_approval = o.approved == g.approved;
    let approval = approval_text(&g.approved);
    let mut push = |what: String, direction: Direction| {
        out.push(Change {
            agency: g.agency.clone(),
            what: format!("grant {}: {what}", g.id),
            direction,
            approval: approval.clone(),
            unapproved: direction == Direction::Widened && same_approval,
        })
    };
    for (name, a, b) in [
        ("field", &o.fields, &g.fields),
        ("purpose", &o.purposes, &g.purposes),
    ] {
        let (a, b) = (set(a), set(b));
        for x in b.difference(&a) {
            push(format!("{name} `{x}` added"), Direction::Widened);
        }
        for x in a.difference(&b) {
            push(format!("{name} `{x}` removed"), Direction::Narrowed);
        }
    }
    // Validity: an earlier (or no) start, a later (or no) end widens.
    let day = |d: Option<JalaliDate>| d.map_or("none".to_owned(), |d| d.to_string());
    if o.valid_from != g.valid_from {
        let wider = match (o.valid_from, g.valid_from) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(a), Some(b)) => b < a,
        };
        push(
            format!("valid_from {} → {}", day(o.valid_from), day(g.valid_from)),
            if wider {
                Direction::Widened
            } else {
                Direction::Narrowed
            },
        );
    }
    if o.valid_until != g.valid_until {
        let wider = match (o.valid_until, g.valid_until) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(a), Some(b)) => b > a,
        };
        push(
            format!(
                "valid_until {} → {}",
                day(o.valid_until),
                day(g.valid_until)
            ),
            if wider {
                Direction::Widened
            } else {
                Direction::Narrowed
            },
        );
    }
    if o.rate != g.rate {
        let r = |r: Option<Rate>| {
            r.map_or("unlimited".to_owned(), |r| {
                format!("{}/s burst {}", r.per_second, r.burst)
            })
        };
        let wider = match (o.rate, g.rate) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(a), Some(b)) => b.per_second > a.per_second || b.burst > a.burst,
        };
        push(
            format!("rate {} → {}", r(o.rate), r(g.rate)),
            if wider {
                Direction::Widened
            } else {
                Direction::Narrowed
            },
        );
    }
    if o.condition != g.condition {
        let c = |c: &Option<tabadol_policy::model::Condition>| {
            c.as_ref().map_or("none".to_owned(), |c| {
                format!("{} on {} by {}", c.rule.as_str(), c.dataset, c.key)
            })
        };
        // Removing or changing a condition may let more calls through; adding one cannot.
        let direction = if o.condition.is_none() {
            Direction::Narrowed
        } else {
            Direction::Widened
        };
        push(
            format!("condition {} → {}", c(&o.condition), c(&g.condition)),
            direction,
        );
    }
    if o.service != g.service || o.agency != g.agency {
        push(
            format!(
                "now {} → {} (was {} → {})",
                g.agency, g.service, o.agency, o.service
            ),
            Direction::Widened,
        );
    }
    if !same_approval {
        let before: &Approval = &o.approved;
        push(
            format!(
                "approval {} → {}",
                approval_text(before),
                approval_text(&g.approved)
            ),
            Direction::Narrowed,
        );
    }
}

/// A policy directory checked out from git; removed when dropped.
pub struct Checkout(std::path::PathBuf);

impl Checkout {
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The policy files of `dir` as committed at `rev` (`git show REV:./FILE`, run in `dir`),
/// in a temporary directory; a file absent at `rev` is left out (subscriptions.yaml is
/// optional).
pub fn checkout(dir: &std::path::Path, rev: &str) -> anyhow::Result<Checkout> {
    use tabadol_policy::load::{AGENCIES_FILE, GRANTS_FILE, SERVICES_FILE, SUBSCRIPTIONS_FILE};
    if rev.starts_with('-') {
        anyhow::bail!("--git `{rev}` is not a revision");
    }
    let tmp = Checkout(std::env::temp_dir().join(format!(
        "tabadol-policy-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7()
    )));
    std::fs::create_dir(&tmp.0)?;
    for file in [
        AGENCIES_FILE,
        SERVICES_FILE,
        GRANTS_FILE,
        SUBSCRIPTIONS_FILE,
        "secretariat.yaml",
    ] {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .arg("show")
            .arg(format!("{rev}:./{file}"))
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run git: {e}"))?;
        if out.status.success() {
            std::fs::write(tmp.path().join(file), out.stdout)?;
        } else if file != SUBSCRIPTIONS_FILE && file != "secretariat.yaml" {
            anyhow::bail!(
                "git show {rev}:./{file} in {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(tmp)
}

/// Prints the changes per agency; true when some widening cites no new approval.
pub fn print(changes: &[Change]) -> bool {
    let mut by_agency: BTreeMap<&str, Vec<&Change>> = BTreeMap::new();
    for c in changes {
        by_agency.entry(&c.agency).or_default().push(c);
    }
    println!("changes by agency:");
    if changes.is_empty() {
        println!("  none");
    }
    let mut unapproved = 0;
    for (agency, list) in by_agency {
        println!("{agency}:");
        for c in list {
            let arrow = match c.direction {
                Direction::Widened => "widened",
                Direction::Narrowed => "narrowed",
            };
            let flag = if c.unapproved {
                unapproved += 1;
                " — UNAPPROVED WIDENING: cites the same approval as before; cite the approval of this change"
            } else {
                ""
            };
            println!("  [{arrow}] {} — approved {}{flag}", c.what, c.approval);
        }
    }
    if unapproved > 0 {
        eprintln!("{unapproved} widening change(s) cite no new approval");
    }
    unapproved > 0
}
