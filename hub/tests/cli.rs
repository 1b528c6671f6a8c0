//! The `tabadol` binary: policy check reports broken files with file:line:column;
//! config errors are reported all at once before any port is bound.

mod common;

use std::process::Command;

fn tabadol() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tabadol"))
}

fn copy_policy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "agencies.yaml",
        "services.yaml",
        "grants.yaml",
        "subscriptions.yaml",
    ] {
        std::fs::copy(common::policy_dir().join(f), dir.path().join(f)).unwrap();
    }
    dir
}

/// The shipped national policy passes `policy check`.
#[test]
fn shipped_policy_checks_clean() {
    let out = tabadol()
        .args(["policy", "check"])
        .arg(common::policy_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

/// A grant naming a field its service does not have is reported with its line number.
#[test]
fn broken_grant_is_reported_with_line() {
    let dir = copy_policy();
    let path = dir.path().join("grants.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    // Break the first `fields:` list of the moh grant by adding a field no service has.
    let lines: Vec<&str> = text.lines().collect();
    let moh = lines
        .iter()
        .position(|l| l.contains("agency: moh"))
        .expect("moh grant");
    let fields_line = moh
        + lines[moh..]
            .iter()
            .position(|l| l.trim_start().starts_with("fields:"))
            .unwrap();
    let mut broken: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    broken[fields_line] = broken[fields_line].replace("fields: [", "fields: [salary, ");
    std::fs::write(&path, broken.join("\n")).unwrap();

    let out = tabadol()
        .args(["policy", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("grants.yaml:{}:", fields_line + 1);
    assert!(stderr.contains(&want), "expected {want} in:\n{stderr}");
    assert!(stderr.contains("salary"), "{stderr}");
}

/// Every config problem is listed together and the hub does not start.
#[test]
fn serve_reports_all_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hub.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\npolicy_dir: {}\ndata_dir: data\ntls:\n  ca: nope/ca.crt\n  cert: nope/hub.crt\n  key: nope/hub.key\nproviders:\n  - {{ provider: cra, adapter: telepathy, base_url: ftp://x }}\n",
            common::policy_dir().display()
        ),
    )
    .unwrap();
    let out = tabadol()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "tls.ca",
        "tls.cert",
        "tls.key",
        "telepathy",
        "ftp://x",
        "provider `nocr`",
    ] {
        assert!(stderr.contains(want), "missing {want} in:\n{stderr}");
    }
}
