//! `tabadol.v1.Datasets`: periodic publications (R3). `Publish` authorizes the publisher,
//! validates the whole version, stores it durably and makes it current (the condition
//! layer sees it at once); `Get` and `Subscribe` serve the readers the policy names.
//! Audit records hold the dataset, the version and counts — never record content.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tabadol_proto::v1::datasets_server::Datasets;
use tabadol_proto::v1::{
    DatasetVersion, GetDatasetRequest, PublishDatasetRequest, PublishDatasetResponse,
    SubscribeDatasetRequest,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::edge::error::{clip, HubError};
use crate::events::datasets::{validate_divestment, validate_version, DatasetStore, Published};
use crate::inquiry::audit::AuditRecord;
use crate::inquiry::pipeline::{Caller, Hub};

/// Audit service names.
const PUBLISH: &str = "datasets.publish";
const READ: &str = "datasets.read";
/// Longest dataset id repeated in a message.
const MAX_ECHO: usize = 128;
/// Versions queued per Subscribe stream.
const STREAM_QUEUE: usize = 4;

/// State behind the Datasets service.
pub struct DatasetsService {
    pub hub: Arc<Hub>,
    pub store: Arc<DatasetStore>,
    stopping: watch::Receiver<bool>,
}

impl DatasetsService {
    /// `stopping` turns true when the hub shuts down; open streams then end.
    pub fn new(hub: Arc<Hub>, store: Arc<DatasetStore>, stopping: watch::Receiver<bool>) -> Self {
        Self {
            hub,
            store,
            stopping,
        }
    }

    async fn audit(
        &self,
        caller: &Caller,
        service: &str,
        tracking: &str,
        outcome: &str,
        detail: String,
    ) {
        let rec = AuditRecord::call(&caller.agency, service, tracking, outcome, detail);
        if let Err(e) = self.hub.audit().append(rec).await {
            tracing::error!(message = "audit write failed", error = %e);
        }
    }

    async fn refuse(&self, caller: &Caller, service: &str, e: HubError) -> Status {
        self.audit(caller, service, "-", e.outcome(), e.audit_detail())
            .await;
        e.into()
    }
}

/// May `caller` publish `dataset`? Only the agency that defines it in agencies.yaml.
fn authorize_publish(hub: &Hub, caller: &Caller, dataset: &str) -> Result<(), HubError> {
    let state = hub.policy();
    let mine = state
        .policy
        .agency(&caller.agency)
        .is_some_and(|a| a.datasets.iter().any(|d| d.id == dataset));
    if mine {
        Ok(())
    } else {
        Err(HubError::NotAllowed {
            agency: caller.agency.clone(),
            action: format!(
                "publish dataset `{}` (agencies.yaml lists it under no dataset of this agency)",
                clip(dataset, MAX_ECHO)
            ),
        })
    }
}

/// May `caller` read `dataset`? Its readers and its publisher.
fn authorize_read(hub: &Hub, caller: &Caller, dataset: &str) -> Result<(), HubError> {
    let state = hub.policy();
    let allowed = state.policy.agencies().any(|a| {
        a.datasets.iter().any(|d| {
            d.id == dataset && (a.id == caller.agency || d.readers.contains(&caller.agency))
        })
    });
    if allowed {
        Ok(())
    } else {
        Err(HubError::NotAllowed {
            agency: caller.agency.clone(),
            action: format!(
                "read dataset `{}` (it is not among the readers agencies.yaml gives it)",
                clip(dataset, MAX_ECHO)
            ),
        })
    }
}

type VersionStream = Pin<Box<dyn Stream<Item = Result<DatasetVersion, Status>> + Send>>;

#[tonic::async_trait]
impl Datasets for DatasetsService {
    async fn publish(
        &self,
        req: Request<PublishDatasetRequest>,
    ) -> Result<Response<PublishDatasetResponse>, Status> {
        let caller = super::caller(&self.hub, &req)?;
        let PublishDatasetRequest {
            dataset,
            version,
            records,
        } = req.into_inner();
        // Before anything of the payload is looked at: may it publish this dataset?
        if let Err(e) = authorize_publish(&self.hub, &caller, &dataset) {
            return Err(self.refuse(&caller, PUBLISH, e).await);
        }
        let mut violations = Vec::new();
        if let Err(v) = validate_version(&version) {
            violations.push(v);
        }
        let records = match validate_divestment(records) {
            Ok(r) => Some(r),
            Err(v) => {
                violations.extend(v);
                None
            }
        };
        let (Some(records), true) = (records, violations.is_empty()) else {
            return Err(self
                .refuse(&caller, PUBLISH, HubError::Invalid(violations))
                .await);
        };
        let count = records.len();
        match self
            .store
            .publish(&dataset, &version, &caller.agency, records)
            .await
        {
            Ok(Published::New(stored)) => {
                self.hub.datasets().install((*stored).clone());
                self.audit(
                    &caller,
                    PUBLISH,
                    &version,
                    "ok",
                    format!("dataset {dataset}: version {version}, {count} records"),
                )
                .await;
                Ok(Response::new(PublishDatasetResponse {
                    dataset,
                    version,
                    records: count as u32,
                    already_published: false,
                }))
            }
            Ok(Published::Again) => {
                self.audit(
                    &caller,
                    PUBLISH,
                    &version,
                    "ok",
                    format!("dataset {dataset}: version {version} again, unchanged"),
                )
                .await;
                Ok(Response::new(PublishDatasetResponse {
                    dataset,
                    version,
                    records: count as u32,
                    already_published: true,
                }))
            }
            Err(e) => Err(self.refuse(&caller, PUBLISH, e).await),
        }
    }

    async fn get(
        &self,
        req: Request<GetDatasetRequest>,
    ) -> Result<Response<DatasetVersion>, Status> {
        let caller = super::caller(&self.hub, &req)?;
        let dataset = req.into_inner().dataset;
        if let Err(e) = authorize_read(&self.hub, &caller, &dataset) {
            return Err(self.refuse(&caller, READ, e).await);
        }
        match self.hub.datasets().get(&dataset) {
            Some(l) => Ok(Response::new(l.version.to_proto())),
            None => Err(Status::not_found(format!(
                "dataset {dataset} has no version yet; its publisher has not published it"
            ))),
        }
    }

    type SubscribeStream = VersionStream;

    async fn subscribe(
        &self,
        req: Request<SubscribeDatasetRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = super::caller(&self.hub, &req)?;
        let SubscribeDatasetRequest {
            dataset,
            after_version,
        } = req.into_inner();
        if let Err(e) = authorize_read(&self.hub, &caller, &dataset) {
            return Err(self.refuse(&caller, READ, e).await);
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let hub = self.hub.clone();
        let mut stopping = self.stopping.clone();
        let mut versions = hub.datasets().changes();
        let mut access = hub.access_changes();
        tokio::spawn(async move {
            let mut last = after_version;
            loop {
                if let Some(l) = hub.datasets().get(&dataset) {
                    if l.version.version != last {
                        last = l.version.version.clone();
                        if tx.send(Ok(l.version.to_proto())).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::select! {
                    changed = versions.changed() => if changed.is_err() { return },
                    changed = access.changed() => {
                        if changed.is_err() { return }
                        if let Err(e) = authorize_read(&hub, &caller, &dataset) {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    }
                    _ = async { let _ = stopping.wait_for(|s| *s).await; } => {
                        let _ = tx
                            .send(Err(Status::unavailable(format!(
                                "the hub is shutting down; subscribe again with after_version = {last}"
                            ))))
                            .await;
                        return;
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
