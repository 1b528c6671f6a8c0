//! `tabadol policy diff OLD NEW` names each kind of change — grant, field, purpose,
//! validity, rate, condition, subscription — as widened or narrowed with the approval it
//! cites, and fails on a widening that cites no new approval.

mod common;

use std::process::Command;

use common::copy_policy;

fn diff(old: &std::path::Path, new: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tabadol"))
        .args(["policy", "diff"])
        .arg(old)
        .arg(new)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn edit(dir: &std::path::Path, file: &str, from: &str, to: &str) {
    let p = dir.join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    let new = text.replacen(from, to, 1);
    assert_ne!(text, new, "{from} not in {file}");
    std::fs::write(&p, new).unwrap();
}

const MOE: &str = "    fields: [matched]
    purposes: [customer-verification]
    rate: { per_second: 50, burst: 100 }
    valid_from: 1400/08/18
    approved:
      body: interoperability-working-group
      session: 26
      date: 1400/08/18
      item: access resolution, item 3
";

#[test]
fn diff_names_each_kind_of_change_and_fails_on_unapproved_widening() {
    let old = copy_policy();
    // Approved changes: moe's grant narrowed and widened under a new approval (session 27),
    // ipo's condition removed under session 27, a subscription and a grant removed.
    let new = copy_policy();
    let p = new.path();
    edit(
        p,
        "grants.yaml",
        MOE,
        "    fields: [matched]
    purposes: [billing]
    rate: { per_second: 100, burst: 100 }
    valid_from: 1401/01/01
    valid_until: 1405/12/29
    approved:
      body: interoperability-working-group
      session: 27
      date: 1400/09/18
      item: access resolution, item 1
",
    );
    edit(
        p,
        "grants.yaml",
        "    condition:
      dataset: ipo.divestment-list
      key: enterprise_id
      rule: listed-at-request-time
    approved:
      body: interoperability-working-group
      session: 26",
        "    approved:
      body: interoperability-working-group
      session: 27",
    );
    edit(
        p,
        "subscriptions.yaml",
        "event_types: [identity-change.v1, death.v1]",
        "event_types: [death.v1]",
    );
    let (ok, out, err) = diff(old.path(), p);
    assert!(ok, "{out}\n{err}");
    for expected in [
        "moe:\n",
        "[widened] grant moe-shahkar: purpose `billing` added — approved interoperability-working-group, session 27 (1400/09/18), access resolution, item 1",
        "[narrowed] grant moe-shahkar: purpose `customer-verification` removed",
        "[narrowed] grant moe-shahkar: valid_from 1400/08/18 → 1401/01/01",
        "[narrowed] grant moe-shahkar: valid_until none → 1405/12/29",
        "[widened] grant moe-shahkar: rate 50/s burst 100 → 100/s burst 100",
        "[widened] grant ipo-insurance-list: condition listed-at-request-time on ipo.divestment-list by enterprise_id → none",
        "[narrowed] subscription cbi-events: event type `identity-change.v1` removed",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("UNAPPROVED"), "{out}");

    // A widening under the approval the grant already cited (its rate removed) fails,
    // naming it; a new subscription citing its own approval is listed as approved.
    let bad = copy_policy();
    let p = bad.path();
    edit(
        p,
        "grants.yaml",
        MOE,
        &MOE.replace("    rate: { per_second: 50, burst: 100 }\n", ""),
    );
    edit(
        p,
        "subscriptions.yaml",
        "  - id: cbi-events\n",
        "  - id: ipo-events\n    agency: ipo\n    event_types: [death.v1]\n    approved: { body: interoperability-working-group, session: 28, date: 1401/01/20, item: \"2\" }\n  - id: cbi-events\n",
    );
    let (ok, out, err) = diff(old.path(), p);
    assert!(!ok, "{out}\n{err}");
    assert!(
        out.contains("[widened] grant moe-shahkar: rate 50/s burst 100 → unlimited — approved interoperability-working-group, session 26 (1400/08/18), access resolution, item 3 — UNAPPROVED WIDENING"),
        "{out}"
    );
    assert!(
        out.contains("[widened] subscription ipo-events added (death.v1)"),
        "{out}"
    );
    assert!(
        err.contains("widening change(s) cite no new approval"),
        "{err}"
    );
}

/// `policy diff --git REV DIR` compares DIR as committed at REV with its working copy.
#[test]
fn diff_against_a_git_revision() {
    let repo = copy_policy();
    let p = repo.path();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(p)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "policy"]);
    edit(
        p,
        "grants.yaml",
        "    fields: [matched]\n    purposes: [customer-verification]\n",
        "    fields: [matched]\n    purposes: [customer-verification, marketing]\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tabadol"))
        .args(["policy", "diff", "--git", "HEAD"])
        .arg(p)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("[widened] grant moe-shahkar: purpose `marketing` added")
            && stdout.contains("UNAPPROVED WIDENING"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
