//! An agency backend calling the hub over mutual TLS with its agency certificate.
//!
//! ```text
//! cargo run --example inquire -- --agency cbi shahkar 0012345679 09121234567
//! cargo run --example inquire -- --agency moh identity 0012345679
//! cargo run --example inquire -- --agency cbi life 0012345679
//! cargo run --example inquire -- --agency cbi tax --legal-entity 10101234567
//! cargo run --example inquire -- --agency cbi list
//! cargo run --example inquire -- --agency cbi trace TRK-EXAMPLE-1
//! ```

use clap::{Parser, Subcommand};
use tabadol_examples::{connect, context, HubArgs};
use tabadol_proto::v1::civil_registry_client::CivilRegistryClient;
use tabadol_proto::v1::get_taxpayer_request::Subject;
use tabadol_proto::v1::inquiry_client::InquiryClient;
use tabadol_proto::v1::shahkar_client::ShahkarClient;
use tabadol_proto::v1::tax_client::TaxClient;
use tabadol_proto::v1::{
    GetIdentityRequest, GetLifeStatusRequest, GetTaxpayerRequest, ListServicesRequest,
    MatchMobileRequest, TraceRequest,
};

#[derive(Parser)]
#[command(about = "Call the Tabadol hub as an agency")]
struct Args {
    #[command(flatten)]
    hub: HubArgs,
    /// Tracking code of the citizen's request (R10).
    #[arg(long, default_value = "TRK-EXAMPLE-1")]
    tracking: String,
    /// Purpose of the inquiry; must be one of your grant's purposes.
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
    /// What this agency may call.
    List,
    /// The audit trail of a tracking code (your own only).
    Trace { tracking_code: String },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let channel = connect(&args.hub).await?;
    let purpose = args.purpose.clone();
    let ctx = |default: &str| context(&args.tracking, purpose.as_deref().unwrap_or(default));
    let result: Result<String, tonic::Status> = match args.call {
        Call::Shahkar {
            national_code,
            mobile,
        } => ShahkarClient::new(channel)
            .match_mobile(MatchMobileRequest {
                context: ctx("identity-verification"),
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
                context: ctx("identity-verification"),
                national_code,
                fields: field,
            })
            .await
            .map(|r| format!("{:#?}", r.into_inner())),
        Call::Life { national_code } => CivilRegistryClient::new(channel)
            .get_life_status(GetLifeStatusRequest {
                context: ctx("identity-verification"),
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
                    context: ctx("credit-assessment"),
                    subject: Some(subject),
                })
                .await
                .map(|r| format!("{:#?}", r.into_inner()))
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
        Err(status) => {
            eprintln!("{:?}: {}", status.code(), status.message());
            std::process::exit(1);
        }
    }
}
