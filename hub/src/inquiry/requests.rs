//! Service requests (R16): what an agency asks the working group for when the service or
//! grant it needs does not exist yet. Stored in sled (tree `service_requests`), listed to
//! the agency in ListServices, handled by the secretariat with `tabadol requests`.

use serde::{Deserialize, Serialize};
use tabadol_proto::v1::{RequestServiceRequest, ServiceRequest};

use crate::edge::error::{HubError, Violation};

/// Longest free-text field (description, legal basis, provider), in characters.
pub const MAX_TEXT_CHARS: usize = 2000;
/// Longest id-like field (service, purpose), in bytes.
const MAX_ID_LEN: usize = 128;
/// Most open requests one agency may have at once.
pub const MAX_OPEN_PER_AGENCY: usize = 100;

/// One stored request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRequest {
    pub id: String,
    pub agency: String,
    pub service: String,
    pub description: String,
    pub provider: String,
    pub purpose: String,
    pub legal_basis: String,
    pub open: bool,
    pub created_at: String,
    #[serde(default)]
    pub closed_at: String,
    #[serde(default)]
    pub resolution: String,
}

impl StoredRequest {
    pub fn to_proto(&self) -> ServiceRequest {
        ServiceRequest {
            request_id: self.id.clone(),
            agency: self.agency.clone(),
            service: self.service.clone(),
            description: self.description.clone(),
            provider: self.provider.clone(),
            purpose: self.purpose.clone(),
            legal_basis: self.legal_basis.clone(),
            status: if self.open { "open" } else { "closed" }.to_owned(),
            created_at: self.created_at.clone(),
            resolution: self.resolution.clone(),
        }
    }
}

/// Checks a request: a catalog service, or a description and a provider; a purpose and a
/// legal basis; every field bounded. All violations at once.
pub fn validate(r: &RequestServiceRequest) -> Result<(), Vec<Violation>> {
    let mut v = Vec::new();
    let text = |v: &mut Vec<Violation>, field: &str, s: &str, required: &str| {
        if s.trim().is_empty() {
            if !required.is_empty() {
                v.push(Violation::new(field, required));
            }
        } else if s.chars().count() > MAX_TEXT_CHARS {
            v.push(Violation::new(
                field,
                format!("at most {MAX_TEXT_CHARS} characters"),
            ));
        }
    };
    if r.service.len() > MAX_ID_LEN {
        v.push(Violation::new(
            "service",
            format!("a catalog id of at most {MAX_ID_LEN} bytes"),
        ));
    }
    if r.service.trim().is_empty() {
        text(
            &mut v,
            "description",
            &r.description,
            "give the catalog service you need, or describe the data you need",
        );
        text(
            &mut v,
            "provider",
            &r.provider,
            "name the agency expected to provide the data",
        );
    } else {
        text(&mut v, "description", &r.description, "");
        text(&mut v, "provider", &r.provider, "");
    }
    if r.purpose.trim().is_empty() || r.purpose.len() > MAX_ID_LEN {
        v.push(Violation::new(
            "purpose",
            "state the purpose the data is needed for (at most 128 bytes)",
        ));
    }
    text(
        &mut v,
        "legal_basis",
        &r.legal_basis,
        "cite the law or resolution the request rests on",
    );
    if v.is_empty() {
        Ok(())
    } else {
        Err(v)
    }
}

/// The durable store of service requests.
pub struct RequestStore {
    db: sled::Db,
    tree: sled::Tree,
}

fn internal(e: impl std::fmt::Display) -> HubError {
    HubError::Internal(format!("service request store: {e}"))
}

impl RequestStore {
    pub fn open(db: &sled::Db) -> anyhow::Result<Self> {
        Ok(Self {
            db: db.clone(),
            tree: db.open_tree("service_requests")?,
        })
    }

    /// Every request, oldest first (ids are time-ordered).
    pub fn list(&self) -> Result<Vec<StoredRequest>, HubError> {
        self.tree
            .iter()
            .map(|kv| {
                let (_, v) = kv.map_err(internal)?;
                serde_json::from_slice(&v).map_err(internal)
            })
            .collect()
    }

    /// The open requests of `agency`.
    pub fn open_of(&self, agency: &str) -> Result<Vec<StoredRequest>, HubError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| r.open && r.agency == agency)
            .collect())
    }

    pub fn get(&self, id: &str) -> Result<Option<StoredRequest>, HubError> {
        match self.tree.get(id).map_err(internal)? {
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(internal),
            None => Ok(None),
        }
    }

    /// Records a validated request of `agency`, durable before it returns.
    pub async fn create(
        &self,
        agency: &str,
        r: RequestServiceRequest,
    ) -> Result<StoredRequest, HubError> {
        if self.open_of(agency)?.len() >= MAX_OPEN_PER_AGENCY {
            return Err(HubError::NotAllowed {
                agency: agency.to_owned(),
                action: format!(
                    "open more than {MAX_OPEN_PER_AGENCY} service requests at once (wait until the secretariat closes some)"
                ),
            });
        }
        let stored = StoredRequest {
            id: format!("sr-{}", uuid::Uuid::now_v7()),
            agency: agency.to_owned(),
            service: r.service.trim().to_owned(),
            description: r.description.trim().to_owned(),
            provider: r.provider.trim().to_owned(),
            purpose: r.purpose.trim().to_owned(),
            legal_basis: r.legal_basis.trim().to_owned(),
            open: true,
            created_at: jiff::Timestamp::now().to_string(),
            closed_at: String::new(),
            resolution: String::new(),
        };
        self.put(&stored)?;
        self.db.flush_async().await.map_err(internal)?;
        Ok(stored)
    }

    /// Closes a request with the secretariat's resolution (on a stopped hub's store).
    pub fn close(&self, id: &str, resolution: &str) -> anyhow::Result<StoredRequest> {
        let mut r = self.get(id)?.ok_or_else(|| {
            anyhow::anyhow!("no service request `{id}`; `tabadol requests list` shows them")
        })?;
        if !r.open {
            anyhow::bail!("service request {id} is already closed ({})", r.resolution);
        }
        r.open = false;
        r.closed_at = jiff::Timestamp::now().to_string();
        r.resolution = resolution.to_owned();
        self.put(&r)?;
        self.db.flush()?;
        Ok(r)
    }

    fn put(&self, r: &StoredRequest) -> Result<(), HubError> {
        let bytes = serde_json::to_vec(r).map_err(internal)?;
        self.tree.insert(r.id.as_bytes(), bytes).map_err(internal)?;
        Ok(())
    }
}
