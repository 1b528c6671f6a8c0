//! Helpers of the operations tests: external programs found on PATH (failing with how to
//! install them when missing), child processes killed on drop, a free loopback port,
//! plain HTTP GETs.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command};

/// The program `name` on PATH; panics saying how to install it (Debian package `package`)
/// when it is missing — a test that needs it must fail, not pass silently.
pub fn require_program(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not on PATH: this test needs Debian's `{package}` package. \
         Run `bash scripts/test.sh` (it installs it), or `apt-get install -y {package}`"
    );
}

/// A child process killed (and reaped) when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd`; under Linux through `setpriv --pdeathsig KILL` when available, so the
/// child dies with the test even if the test is killed.
pub fn spawn(mut cmd: Command) -> ChildGuard {
    let with_pdeathsig = Command::new("setpriv")
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--pdeathsig"))
        .unwrap_or(false);
    let child = if with_pdeathsig {
        let mut wrapped = Command::new("setpriv");
        wrapped
            .arg("--pdeathsig")
            .arg("KILL")
            .arg(cmd.get_program());
        wrapped.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            wrapped.current_dir(d);
        }
        wrapped.stdout(std::process::Stdio::piped());
        wrapped.stderr(std::process::Stdio::piped());
        wrapped.spawn()
    } else {
        cmd.stdout(std::process::Stdio::piped());
        cmd.stderr(std::process::Stdio::piped());
        cmd.spawn()
    };
    ChildGuard(child.expect("spawn child process"))
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `url`: status and body.
pub async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// Where tests keep artifacts (screenshots): `target/test-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Latin form of Persian digits (and the Persian decimal separator).
pub fn latin_digits(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '۰'..='۹' => char::from_u32('0' as u32 + (c as u32 - 0x06F0)).unwrap(),
            '٫' => '.',
            c => c,
        })
        .collect()
}
