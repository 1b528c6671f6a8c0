//! An agency backend calling the hub over mutual TLS with its agency certificate.
//!
//! ```text
//! cargo run --example inquire -- --agency cbi shahkar 0012345679 09121234567
//! cargo run --example inquire -- --agency moh identity 0012345679
//! cargo run --example inquire -- --agency cbi life 0012345679
//! cargo run --example inquire -- --agency cbi tax --legal-entity 10101234567
//! cargo run --example inquire -- --agency rcs call post.address postal_code=1345678901
//! cargo run --example inquire -- --agency ikrf call tvto.skill-certificates national_code=0012345679
//! cargo run --example inquire -- --agency cbi list
//! cargo run --example inquire -- --agency cbi trace TRK-EXAMPLE-1
//! cargo run --example inquire -- --agency cbi --purpose kyc life 0012345679
//! ```
//!
//! Without `--purpose`, the purpose is the first one the agency is granted for the service,
//! as `Inquiry/ListServices` reports it.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use tabadol_examples::{connect, context, describe_status, HubArgs};
use tabadol_policy::jalali::JalaliDate;
use tabadol_proto::v1::civil_registry_client::CivilRegistryClient;
use tabadol_proto::v1::get_taxpayer_request::Subject;
use tabadol_proto::v1::inquiry_client::InquiryClient;
use tabadol_proto::v1::shahkar_client::ShahkarClient;
use tabadol_proto::v1::tax_client::TaxClient;
use tabadol_proto::v1::{
    GetIdentityRequest, GetLifeStatusRequest, GetTaxpayerRequest, GrantedService, InquireRequest,
    InquireResponse, ListServicesRequest, MatchMobileRequest, TraceRequest,
};
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "Call the Tabadol hub as an agency")]
struct Args {
    #[command(flatten)]
    hub: HubArgs,
    /// Tracking code of the citizen's request (R10).
    #[arg(long, default_value = "TRK-EXAMPLE-1")]
    tracking: String,
    /// Purpose of the inquiry; must be one of your grant's purposes
    /// [default: the first purpose you are granted for the service].
    #[arg(long)]
    purpose: Option<String>,
    #[command(subcommand)]
    call: Call,
}

#[derive(Subcommand)]
enum Call {
    /// Shahkar: does MOBILE belong to NATIONAL_CODE?
    Shahkar {
        national_code: String,
        mobile: String,
    },
    /// Civil registry identity (only the fields your grant allows come back).
    Identity {
        national_code: String,
        /// Ask for these fields only.
        #[arg(long)]
        field: Vec<String>,
    },
    /// Civil registry life status.
    Life { national_code: String },
    /// Tax authority taxpayer status.
    Tax {
        #[arg(long, conflicts_with = "legal_entity")]
        national_code: Option<String>,
        #[arg(long)]
        legal_entity: Option<String>,
    },
    /// Any catalog service through `Inquiry/Inquire`: `call SERVICE NAME=VALUE...`
    /// (e.g. `call post.address postal_code=1345678901`); every record is printed.
    #[command(name = "call")]
    Generic {
        service: String,
        /// Inputs as NAME=VALUE.
        params: Vec<String>,
        /// Ask for these fields only.
        #[arg(long)]
        field: Vec<String>,
    },
    /// What this agency may call.
    List,
    /// The audit trail of a tracking code (your own only).
    Trace { tracking_code: String },
}

/// Catalog id of the service a call goes to (`None` for metaservices).
fn service_of(call: &Call) -> Option<&'static str> {
    match call {
        Call::Shahkar { .. } => Some("cra.shahkar.match"),
        Call::Identity { .. } => Some("nocr.identity"),
        Call::Life { .. } => Some("nocr.life-status"),
        Call::Tax { .. } => Some("inta.taxpayer"),
        Call::Generic { .. } | Call::List | Call::Trace { .. } => None,
    }
}

/// Whether a grant's validity window (inclusive Jalali days; empty = open) holds `today`.
fn valid_on(g: &GrantedService, today: JalaliDate) -> bool {
    let bound = |s: &str| s.parse::<JalaliDate>().ok();
    bound(&g.valid_from).is_none_or(|from| from <= today)
        && bound(&g.valid_until).is_none_or(|until| today <= until)
}

/// The first purpose the calling agency is granted for `service`, preferring a grant
/// valid today.
async fn granted_purpose(channel: Channel, agency: &str, service: &str) -> anyhow::Result<String> {
    let list = match InquiryClient::new(channel)
        .list_services(ListServicesRequest {})
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => anyhow::bail!(
            "cannot look up your grants to choose a purpose (give --purpose): {}",
            describe_status(&status)
        ),
    };
    let today = JalaliDate::in_tehran(jiff::Timestamp::now());
    let grants: Vec<&GrantedService> = list
        .services
        .iter()
        .filter(|g| g.service == service && !g.purposes.is_empty())
        .collect();
    grants
        .iter()
        .find(|g| valid_on(g, today))
        .or(grants.first())
        .map(|g| g.purposes[0].clone())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "agency {agency} has no grant for {service}; `inquire --agency {agency} list` \
                 shows what it may call (or give --purpose to ask anyway)"
            )
        })
}

/// An Inquire answer as `provider`, then one block per record with its fields sorted.
fn records_text(r: &InquireResponse) -> String {
    let mut out = format!(
        "provider: {}\ninquiry_id: {}\nrecords: {}\n",
        r.provider,
        r.inquiry_id,
        r.records.len()
    );
    for (i, rec) in r.records.iter().enumerate() {
        out.push_str(&format!("[{}]\n", i + 1));
        let mut fields: Vec<_> = rec.fields.iter().collect();
        fields.sort();
        for (k, v) in fields {
            out.push_str(&format!("  {k}: {v}\n"));
        }
    }
    out
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tabadol_examples::finish(run().await)
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let channel = connect(&args.hub).await?;
    let service = match &args.call {
        Call::Generic { service, .. } => Some(service.as_str()),
        other => service_of(other),
    };
    let purpose = match (&args.purpose, service) {
        (Some(p), _) => p.clone(),
        (None, Some(service)) => {
            granted_purpose(channel.clone(), &args.hub.agency, service).await?
        }
        (None, None) => String::new(),
    };
    let ctx = || context(&args.tracking, &purpose);
    let result: Result<String, tonic::Status> = match args.call {
        Call::Shahkar {
            national_code,
            mobile,
        } => ShahkarClient::new(channel)
            .match_mobile(MatchMobileRequest {
                context: ctx(),
                national_code,
                mobile,
            })
            .await
            .map(|r| format!("{:#?}", r.into_inner())),
        Call::Identity {
            national_code,
            field,
        } => CivilRegistryClient::new(channel)
            .get_identity(GetIdentityRequest {
                context: ctx(),
                national_code,
                fields: field,
            })
            .await
            .map(|r| format!("{:#?}", r.into_inner())),
        Call::Life { national_code } => CivilRegistryClient::new(channel)
            .get_life_status(GetLifeStatusRequest {
                context: ctx(),
                national_code,
            })
            .await
            .map(|r| format!("{:#?}", r.into_inner())),
        Call::Tax {
            national_code,
            legal_entity,
        } => {
            let subject = match (national_code, legal_entity) {
                (Some(nc), _) => Subject::NationalCode(nc),
                (None, Some(le)) => Subject::LegalEntityId(le),
                (None, None) => anyhow::bail!("give --national-code or --legal-entity"),
            };
            TaxClient::new(channel)
                .get_taxpayer(GetTaxpayerRequest {
                    context: ctx(),
                    subject: Some(subject),
                })
                .await
                .map(|r| format!("{:#?}", r.into_inner()))
        }
        Call::Generic {
            service,
            params,
            field,
        } => {
            let mut inputs = std::collections::HashMap::new();
            for p in &params {
                let Some((k, v)) = p.split_once('=') else {
                    anyhow::bail!("input `{p}` is not NAME=VALUE, e.g. national_code=0012345679");
                };
                inputs.insert(k.to_owned(), v.to_owned());
            }
            InquiryClient::new(channel)
                .inquire(InquireRequest {
                    context: ctx(),
                    service,
                    params: inputs,
                    fields: field,
                })
                .await
                .map(|r| records_text(&r.into_inner()))
        }
        Call::List => InquiryClient::new(channel)
            .list_services(ListServicesRequest {})
            .await
            .map(|r| format!("{:#?}", r.into_inner())),
        Call::Trace { tracking_code } => InquiryClient::new(channel)
            .trace(TraceRequest { tracking_code })
            .await
            .map(|r| format!("{:#?}", r.into_inner())),
    };
    match result {
        Ok(text) => {
            println!("{text}");
            Ok(())
        }
        Err(status) => anyhow::bail!("{}", describe_status(&status)),
    }
}
