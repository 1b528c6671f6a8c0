//! Shared helpers for the example agency backends: connecting to the hub with an
//! agency's certificate from a `tabadol dev` directory, and explaining the hub's errors.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use tabadol_proto::v1::InquiryContext;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt as _;

/// Where the hub is and who we are.
#[derive(Debug, Clone, clap::Args)]
pub struct HubArgs {
    /// Hub address.
    #[arg(long, default_value = "https://127.0.0.1:7443")]
    pub hub: String,
    /// The `tabadol dev` directory holding pki/ (ca.crt, agencies/<id>.crt|.key).
    #[arg(long, default_value = "./var/dev")]
    pub dir: PathBuf,
    /// Agency id whose certificate to use.
    #[arg(long, default_value = "cbi")]
    pub agency: String,
}

/// Connects over mutual TLS with the agency's certificate.
pub async fn connect(args: &HubArgs) -> anyhow::Result<Channel> {
    let pki = args.dir.join("pki");
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot read {}; is `tabadol dev --dir {}` running?",
                p.display(),
                args.dir.display()
            )
        })
    };
    let ca = read(pki.join("ca.crt"))?;
    let cert = read(pki.join("agencies").join(format!("{}.crt", args.agency)))?;
    let key = read(pki.join("agencies").join(format!("{}.key", args.agency)))?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost");
    Endpoint::from_shared(args.hub.clone())?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.hub))
}

/// An inquiry context.
pub fn context(tracking_code: &str, purpose: &str) -> Option<InquiryContext> {
    Some(InquiryContext {
        tracking_code: tracking_code.into(),
        purpose: purpose.into(),
        service_request_id: String::new(),
    })
}

/// A hub error as lines a person can act on: the code and message, then every field
/// violation, the retry delay and the error reason the hub attached (if any).
pub fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let details = status.get_error_details();
    if let Some(bad) = details.bad_request() {
        for v in &bad.field_violations {
            let _ = write!(text, "\n  field `{}`: {}", v.field, v.description);
        }
    }
    if let Some(retry) = details.retry_info() {
        if let Some(delay) = retry.retry_delay {
            let _ = write!(text, "\n  retry after {delay:?}");
        }
    }
    if let Some(info) = details.error_info() {
        let _ = write!(text, "\n  reason: {} ({})", info.reason, info.domain);
    }
    text
}

/// Ends an example: `error: <what went wrong: why>` on stderr and exit status 1, without the
/// backtrace `RUST_BACKTRACE` would add (these are messages for people, not bug reports).
pub fn finish(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
