//! `tabadol events tail`: follows a running hub's event log through its admin listener
//! (`/events`), printing each event's sequence, type, publisher, acceptance time (Tehran,
//! Jalali), subscribers and delivery state, and again when its delivery state changes.
//! National codes and tokens never leave the hub this way: `/events` does not hold them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::events::outbox::Outbox;

/// Most events one `/events` answer holds.
pub const MAX_PAGE: usize = 500;

/// One event as an operator sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventView {
    pub seq: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub publisher: String,
    /// Tehran wall-clock time, Jalali (`1405/09/12 14:03:07`).
    pub accepted_at: String,
    pub subscribers: Vec<String>,
    /// `delivered` (every Kafka copy acknowledged), `pending`, `dead-letter` (some copy
    /// refused permanently), or `stream` (no Kafka: subscribers read it with Subscribe).
    pub delivery: String,
}

/// The `/events` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsPage {
    pub last_seq: u64,
    /// The relay's place (0 without Kafka).
    pub relay_cursor: u64,
    pub events: Vec<EventView>,
}

/// Events after `after` (at most `limit`), as an operator sees them.
pub fn page(outbox: &Outbox, kafka: bool, after: u64, limit: usize) -> anyhow::Result<EventsPage> {
    let limit = limit.clamp(1, MAX_PAGE);
    let cursor = if kafka {
        outbox.cursor(crate::events::relay::CURSOR)?
    } else {
        0
    };
    let dead: std::collections::HashSet<u64> =
        outbox.dead_letter_list()?.iter().map(|d| d.seq).collect();
    let events = outbox
        .read_after(after, limit)?
        .into_iter()
        .map(|e| {
            let at = jiff::Timestamp::from_microsecond(e.accepted_at_micros)
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
            let zoned = at.to_zoned(
                jiff::tz::TimeZone::get("Asia/Tehran").unwrap_or(jiff::tz::TimeZone::UTC),
            );
            let day = tabadol_policy::jalali::JalaliDate::from_civil(zoned.date());
            let delivery = if !kafka {
                "stream"
            } else if dead.contains(&e.seq) {
                "dead-letter"
            } else if e.seq <= cursor {
                "delivered"
            } else {
                "pending"
            };
            EventView {
                seq: e.seq,
                event_type: e.event_type,
                publisher: e.publisher,
                accepted_at: format!("{day} {}", zoned.time().strftime("%H:%M:%S")),
                subscribers: e.subscribers.unwrap_or_default(),
                delivery: delivery.to_owned(),
            }
        })
        .collect();
    Ok(EventsPage {
        last_seq: outbox.last_seq(),
        relay_cursor: cursor,
        events,
    })
}

/// Arguments of `tabadol events tail`.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// The hub's admin listener (`admin.listen`; `tabadol dev` prints it).
    #[arg(long, default_value = "http://127.0.0.1:9464")]
    pub admin: String,
    /// Start after this sequence [default: show the last 10 events, then follow].
    #[arg(long)]
    pub from: Option<u64>,
    /// Print what is there and stop instead of following.
    #[arg(long)]
    pub once: bool,
    /// How often to ask for new events, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
}

fn line(e: &EventView) -> String {
    format!(
        "{:>8}  {:<20}  {:<8}  {}  {:<11}  → {}",
        e.seq,
        e.event_type,
        e.publisher,
        e.accepted_at,
        e.delivery,
        if e.subscribers.is_empty() {
            "-".to_owned()
        } else {
            e.subscribers.join(",")
        }
    )
}

async fn fetch(base: &str, after: u64) -> anyhow::Result<EventsPage> {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let url: http::Uri = format!(
        "{}/events?after={after}&limit={MAX_PAGE}",
        base.trim_end_matches('/')
    )
    .parse()
    .map_err(|e| anyhow::anyhow!("--admin {base}: {e}"))?;
    if url.scheme_str() != Some("http") {
        anyhow::bail!("--admin {base}: give the admin listener as http://HOST:PORT (an admin listener with mutual TLS is read with curl --cert)");
    }
    let client: Client<_, axum::body::Body> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.get(url))
        .await
        .map_err(|_| anyhow::anyhow!("admin listener {base}: no answer within 10 s"))?
        .map_err(|e| {
            anyhow::anyhow!(
                "admin listener {base}: {e}; is the hub running with an admin listener there?"
            )
        })?;
    let status = resp.status();
    let body = axum::body::to_bytes(axum::body::Body::new(resp.into_body()), 16 << 20).await?;
    if !status.is_success() {
        anyhow::bail!(
            "admin listener {base}: {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(serde_json::from_slice(&body)?)
}

/// Runs `tabadol events tail`.
pub async fn run(args: TailArgs) -> anyhow::Result<std::process::ExitCode> {
    let first = fetch(&args.admin, 0).await.map(|p| p.last_seq)?;
    let mut after = args.from.unwrap_or(first.saturating_sub(10));
    println!(
        "{:>8}  {:<20}  {:<8}  {:<19}  {:<11}  → SUBSCRIBERS",
        "SEQUENCE", "TYPE", "FROM", "ACCEPTED (TEHRAN)", "DELIVERY"
    );
    // Events not yet delivered, to print again when their state changes (bounded).
    let mut watching: BTreeMap<u64, String> = BTreeMap::new();
    loop {
        let page = fetch(&args.admin, after).await?;
        for e in &page.events {
            println!("{}", line(e));
            after = after.max(e.seq);
            if e.delivery == "pending" {
                watching.insert(e.seq, e.delivery.clone());
            }
        }
        if let Some((&lowest, _)) = watching.iter().next() {
            let again = fetch(&args.admin, lowest - 1).await?;
            for e in again.events.iter().filter(|e| e.seq <= after) {
                if let Some(old) = watching.get(&e.seq) {
                    if *old != e.delivery {
                        println!("{}", line(e));
                        watching.remove(&e.seq);
                    }
                }
            }
        }
        while watching.len() > 10_000 {
            watching.pop_first();
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        if args.once && page.events.len() < MAX_PAGE {
            return Ok(std::process::ExitCode::SUCCESS);
        }
        if page.events.len() < MAX_PAGE {
            tokio::time::sleep(Duration::from_millis(args.poll_ms.max(100))).await;
        }
    }
}
