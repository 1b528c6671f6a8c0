//! `tabadol requests list|show|close` (R16) on a stopped hub's store, and the check that
//! every grant citing a request (`request:`) cites one that exists (`policy check
//! --requests DATA_DIR`).

use std::path::Path;
use std::process::ExitCode;

use crate::inquiry::requests::{RequestStore, StoredRequest};
use crate::ops::cli::StoreArgs;

/// The secretariat's view of service requests.
#[derive(Debug, clap::Subcommand)]
pub enum RequestsCommand {
    /// Every request: id, agency, status, what is asked for.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only the open ones.
        #[arg(long)]
        open: bool,
    },
    /// One request in full.
    Show {
        #[command(flatten)]
        store: StoreArgs,
        id: String,
    },
    /// Closes a request with the secretariat's resolution (e.g. the grant that answers it).
    Close {
        #[command(flatten)]
        store: StoreArgs,
        id: String,
        /// What was decided, e.g. "granted: grant moe-post-address, session 27 item 4".
        #[arg(long)]
        resolution: String,
    },
}

fn what(r: &StoredRequest) -> String {
    if r.service.is_empty() {
        format!("new: {} (from {})", r.description, r.provider)
    } else {
        format!("grant of {}", r.service)
    }
}

/// Runs one `tabadol requests` command.
pub fn requests_command(cmd: RequestsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RequestsCommand::List { store, open } => {
            let db = store.open()?;
            let all = RequestStore::open(&db)?.list()?;
            let shown: Vec<_> = all.iter().filter(|r| !open || r.open).collect();
            if shown.is_empty() {
                println!("no service requests");
                return Ok(ExitCode::SUCCESS);
            }
            for r in &shown {
                println!(
                    "{}  {:<10}  {:<6}  {}  {}",
                    r.id,
                    r.agency,
                    if r.open { "open" } else { "closed" },
                    r.created_at,
                    what(r)
                );
            }
            println!("{} request(s)", shown.len());
            Ok(ExitCode::SUCCESS)
        }
        RequestsCommand::Show { store, id } => {
            let db = store.open()?;
            let Some(r) = RequestStore::open(&db)?.get(&id)? else {
                anyhow::bail!("no service request `{id}`; `tabadol requests list` shows them");
            };
            println!("request:     {}", r.id);
            println!("agency:      {}", r.agency);
            println!("status:      {}", if r.open { "open" } else { "closed" });
            println!("created:     {}", r.created_at);
            println!("service:     {}", r.service);
            println!("description: {}", r.description);
            println!("provider:    {}", r.provider);
            println!("purpose:     {}", r.purpose);
            println!("legal basis: {}", r.legal_basis);
            if !r.open {
                println!("closed:      {}", r.closed_at);
                println!("resolution:  {}", r.resolution);
            }
            Ok(ExitCode::SUCCESS)
        }
        RequestsCommand::Close {
            store,
            id,
            resolution,
        } => {
            if resolution.trim().is_empty() {
                anyhow::bail!("give the resolution with --resolution, e.g. the grant that answers the request");
            }
            let db = store.open()?;
            let r = RequestStore::open(&db)?.close(&id, resolution.trim())?;
            println!("closed {} ({}): {}", r.id, r.agency, r.resolution);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Every grant of the policy in `dir` that cites a request not in the store of the
/// stopped hub whose data_dir is `data_dir`, as one line each.
pub fn uncited_requests(dir: &Path, data_dir: &Path) -> anyhow::Result<Vec<String>> {
    let src = tabadol_policy::load::load_dir(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = StoreArgs {
        config: None,
        dir: Some(data_dir.to_owned()),
    };
    let db = store.open()?;
    let requests = RequestStore::open(&db)?;
    let mut problems = Vec::new();
    for g in &src.grants {
        let Some(id) = &g.request else { continue };
        match requests.get(id)? {
            None => problems.push(format!(
                "{}: grant {} cites service request `{id}`, which is not in {} (see `tabadol requests list`)",
                dir.join(tabadol_policy::load::GRANTS_FILE).display(),
                g.id,
                data_dir.display()
            )),
            Some(r) if r.agency != g.agency => problems.push(format!(
                "{}: grant {} (agency {}) cites service request `{id}` of agency {}",
                dir.join(tabadol_policy::load::GRANTS_FILE).display(),
                g.id,
                g.agency,
                r.agency
            )),
            Some(_) => {}
        }
    }
    Ok(problems)
}
