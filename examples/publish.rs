//! The publisher (NOCR by default) announcing a death or an identity change to every
//! subscriber (R5). The event carries only the national code and the date, never the
//! changed data.
//!
//! ```text
//! cargo run --example publish -- --hub https://127.0.0.1:7443 --dir ./var/dev death 0012345679
//! cargo run --example publish -- death 0012345679 --date 1405/09/01 --event-id NOCR-D-1
//! cargo run --example publish -- identity-change 0012345679
//! ```

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use tabadol_examples::{connect, describe_status, HubArgs};
use tabadol_policy::jalali::JalaliDate;
use tabadol_proto::v1::events_client::EventsClient;
use tabadol_proto::v1::PublishRequest;

#[derive(Parser)]
#[command(about = "Publish a death or identity-change event to the Tabadol hub")]
// Publishing is NOCR's job, so that is the default certificate here.
#[command(mut_arg("agency", |a| a.default_value("nocr")))]
struct Args {
    #[command(flatten)]
    hub: HubArgs,
    #[command(subcommand)]
    event: Kind,
}

#[derive(Subcommand)]
enum Kind {
    /// A person died (event type death.v1).
    Death(EventArgs),
    /// A person's base identity data changed (event type identity-change.v1).
    IdentityChange(EventArgs),
}

#[derive(clap::Args)]
struct EventArgs {
    /// National code of the person.
    national_code: String,
    /// Jalali date of the death or change, e.g. 1405/09/01 [default: today in Tehran].
    #[arg(long)]
    date: Option<JalaliDate>,
    /// Your own id for this event; publishing the same id again is a no-op
    /// [default: a fresh UUID].
    #[arg(long)]
    event_id: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tabadol_examples::finish(run().await)
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let (event_type, event) = match args.event {
        Kind::Death(e) => ("death.v1", e),
        Kind::IdentityChange(e) => ("identity-change.v1", e),
    };
    let date = event
        .date
        .unwrap_or_else(|| JalaliDate::in_tehran(jiff::Timestamp::now()));
    let event_id = event
        .event_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let channel = connect(&args.hub).await?;
    let result = EventsClient::new(channel)
        .publish(PublishRequest {
            event_id: event_id.clone(),
            r#type: event_type.into(),
            national_code: event.national_code.clone(),
            date: date.to_string(),
        })
        .await;
    match result {
        Ok(resp) => {
            let r = resp.into_inner();
            println!(
                "published {event_type} for {} on {date} as {} (event id {event_id})",
                event.national_code, args.hub.agency
            );
            println!("  sequence:     {}", r.sequence);
            println!("  hub_event_id: {}", r.hub_event_id);
            println!(
                "  duplicate:    {}{}",
                r.duplicate,
                if r.duplicate {
                    " (this event id was published before; no new event)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Err(status) => anyhow::bail!("publish failed: {}", describe_status(&status)),
    }
}
