//! A "smart service" (R7): the Imam Khomeini Relief Committee checks an applicant's
//! eligibility with one `Inquiry/InquireMany` call across the civil registry, the Ministry
//! of Science, the police, TVTO and the judiciary, under one deadline, and prints a verdict
//! with the reason per provider. A provider that is down or slow makes its own line
//! "undetermined"; the others still answer.
//!
//! ```text
//! cargo run --example eligibility -- --dir ./var/dev --agency ikrf
//! cargo run --example eligibility -- --dir ./var/dev --agency ikrf 0012345679 --serial 1234567890123456
//! ```
//!
//! Without a national code the applicant (and certificate serial) is the one `tabadol dev`
//! lists as `eligibility_applicant` in samples.json.
//!
//! The rule checked (an example, not the Committee's real regulation): the applicant is
//! alive, holds an authentic no-criminal-record certificate that records no offence, and is
//! not a man due for or absent from military service; degree, studies and vocational
//! certificates are reported for the caseworker. Exit status: 0 eligible, 1 not eligible,
//! 3 undetermined (a required provider did not answer), 2 the call itself failed.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tabadol_examples::{connect, context, describe_status, HubArgs};
use tabadol_proto::v1::inquiry_client::InquiryClient;
use tabadol_proto::v1::{InquireManyItem, InquireManyRequest, InquireRequest};
use tonic::Code;

#[derive(Parser)]
#[command(about = "Check an applicant's eligibility across five providers in one call (R7)")]
struct Args {
    #[command(flatten)]
    hub: HubArgs,
    /// The applicant's national code [default: samples.json's eligibility_applicant].
    national_code: Option<String>,
    /// Serial of the applicant's no-criminal-record certificate.
    #[arg(long)]
    serial: Option<String>,
    /// One deadline for the whole check, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    deadline_ms: u64,
    /// Tracking code of the citizen's request (R10).
    #[arg(long, default_value = "TRK-ELIGIBILITY-1")]
    tracking: String,
    /// Purpose the Committee is granted for.
    #[arg(long, default_value = "eligibility-assessment")]
    purpose: String,
}

/// One check: which provider, which service, and whether the verdict depends on it.
struct Check {
    label: &'static str,
    service: &'static str,
    required: bool,
}

const CHECKS: [Check; 6] = [
    Check {
        label: "civil registry (nocr)",
        service: "nocr.life-status",
        required: true,
    },
    Check {
        label: "judiciary",
        service: "judiciary.clearance-authenticity",
        required: true,
    },
    Check {
        label: "police (military service)",
        service: "police.military-service",
        required: true,
    },
    Check {
        label: "ministry of science (degree)",
        service: "msrt.last-degree",
        required: false,
    },
    Check {
        label: "ministry of science (studies)",
        service: "msrt.student-status",
        required: false,
    },
    Check {
        label: "vocational training (tvto)",
        service: "tvto.skill-certificates",
        required: false,
    },
];

/// What one line of the report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Pass,
    Fail,
    Info,
    Unknown,
}

impl Mark {
    fn symbol(self) -> &'static str {
        match self {
            Mark::Pass => "ok  ",
            Mark::Fail => "FAIL",
            Mark::Info => "info",
            Mark::Unknown => "??  ",
        }
    }
}

type Fields = HashMap<String, String>;

/// The mark and reason for `check` given its item of the answer.
fn judge(check: &Check, item: &InquireManyItem) -> (Mark, String) {
    let status = item.status.clone().unwrap_or_default();
    let code = Code::from(status.code);
    let records: Vec<&Fields> = item
        .response
        .as_ref()
        .map(|r| r.records.iter().map(|r| &r.fields).collect())
        .unwrap_or_default();
    let first = records.first().copied();
    let get = |k: &str| first.and_then(|f| f.get(k)).map(String::as_str);
    match (check.service, code) {
        ("nocr.life-status", Code::Ok) => match get("alive") {
            Some("true") => (Mark::Pass, "alive".into()),
            _ => (
                Mark::Fail,
                format!("deceased ({})", get("death_date").unwrap_or("date unknown")),
            ),
        },
        ("judiciary.clearance-authenticity", Code::Ok) => {
            match (get("authentic"), get("criminal_record")) {
                (Some("true"), Some("false")) => (
                    Mark::Pass,
                    format!(
                        "authentic certificate, no criminal record (valid until {})",
                        get("valid_until").unwrap_or("?")
                    ),
                ),
                (Some("true"), _) => (
                    Mark::Fail,
                    "the certificate records a criminal record".into(),
                ),
                _ => (
                    Mark::Fail,
                    "the certificate is not authentic for this applicant".into(),
                ),
            }
        }
        ("judiciary.clearance-authenticity", Code::NotFound) => {
            (Mark::Fail, "no such certificate at the judiciary".into())
        }
        ("police.military-service", Code::Ok) => match get("status") {
            Some("COMPLETED" | "EXEMPT" | "NOT_SUBJECT") => (
                Mark::Pass,
                get("status_title").unwrap_or("in order").to_owned(),
            ),
            Some(s) => (
                Mark::Fail,
                format!("{} ({s})", get("status_title").unwrap_or("not in order")),
            ),
            None => (Mark::Unknown, "the police gave no status".into()),
        },
        ("msrt.last-degree", Code::Ok) => (
            Mark::Info,
            format!(
                "{} in {}, {}",
                get("level").unwrap_or("?"),
                get("field").unwrap_or("?"),
                get("university").unwrap_or("?")
            ),
        ),
        ("msrt.last-degree", Code::NotFound) => (Mark::Info, "no university degree".into()),
        ("msrt.student-status", Code::Ok) => (
            Mark::Info,
            format!(
                "{} at {}",
                get("status").unwrap_or("?"),
                get("university").unwrap_or("?")
            ),
        ),
        ("msrt.student-status", Code::NotFound) => (Mark::Info, "not a student".into()),
        ("tvto.skill-certificates", Code::Ok) => (
            Mark::Info,
            format!(
                "{} certificate(s): {}",
                records.len(),
                records
                    .iter()
                    .filter_map(|r| r.get("skill_title").map(String::as_str))
                    .collect::<Vec<_>>()
                    .join("، ")
            ),
        ),
        ("tvto.skill-certificates", Code::NotFound) => {
            (Mark::Info, "no vocational certificate".into())
        }
        (_, Code::NotFound) if check.required => {
            (Mark::Fail, format!("no record ({})", status.message))
        }
        (_, Code::Unavailable | Code::DeadlineExceeded) => (
            if check.required {
                Mark::Unknown
            } else {
                Mark::Info
            },
            format!("undetermined: {} ({:?})", status.message, code),
        ),
        (_, code) => (
            if check.required {
                Mark::Unknown
            } else {
                Mark::Info
            },
            format!("{code:?}: {}", status.message),
        ),
    }
}

/// The applicant and serial from samples.json in the dev directory.
fn sample_applicant(args: &Args) -> anyhow::Result<(String, Option<String>)> {
    let path = args.hub.dir.join("samples.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no national code given and cannot read {}; give one, or run `tabadol dev --dir {}`",
            path.display(),
            args.hub.dir.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let a = &v["eligibility_applicant"];
    let nc = a["national_code"]
        .as_str()
        .with_context(|| format!("{} has no eligibility_applicant", path.display()))?;
    Ok((
        nc.to_owned(),
        a["clearance_serial"].as_str().map(str::to_owned),
    ))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<u8> {
    let args = Args::parse();
    let (national_code, serial) = match &args.national_code {
        Some(nc) => (nc.clone(), args.serial.clone()),
        None => {
            let (nc, serial) = sample_applicant(&args)?;
            (nc, args.serial.clone().or(serial))
        }
    };
    let channel = connect(&args.hub).await?;
    let items = CHECKS
        .iter()
        .map(|c| {
            let mut params = HashMap::from([("national_code".to_owned(), national_code.clone())]);
            if c.service == "judiciary.clearance-authenticity" {
                params.insert(
                    "certificate_serial".to_owned(),
                    serial.clone().unwrap_or_default(),
                );
            }
            InquireRequest {
                context: context(&args.tracking, &args.purpose),
                service: c.service.to_owned(),
                params,
                fields: vec![],
            }
        })
        .collect();
    let mut request = tonic::Request::new(InquireManyRequest { items });
    // One deadline for all six inquiries: the hub runs them concurrently under it.
    request.set_timeout(Duration::from_millis(args.deadline_ms));
    let answer = InquiryClient::new(channel)
        .inquire_many(request)
        .await
        .map_err(|s| anyhow::anyhow!("{}", describe_status(&s)))?
        .into_inner();
    anyhow::ensure!(
        answer.items.len() == CHECKS.len(),
        "the hub answered {} items for {} inquiries",
        answer.items.len(),
        CHECKS.len()
    );
    println!("Eligibility of applicant {national_code} (Imam Khomeini Relief Committee)");
    let mut failed = false;
    let mut unknown = false;
    for (check, item) in CHECKS.iter().zip(&answer.items) {
        let (mark, reason) = judge(check, item);
        failed |= mark == Mark::Fail;
        unknown |= mark == Mark::Unknown;
        println!("  [{}] {:<30} {reason}", mark.symbol(), check.label);
    }
    let (verdict, code) = if failed {
        ("NOT ELIGIBLE", 1)
    } else if unknown {
        (
            "UNDETERMINED (a required provider did not answer; try again later)",
            3,
        )
    } else {
        ("ELIGIBLE", 0)
    };
    println!("Verdict: {verdict}");
    Ok(code)
}
