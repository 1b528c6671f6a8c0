//! `tabadol.v1.Inquiry`: generic calls of any catalog service, fan-out under one
//! deadline (R7), the audit trail of a tracking code (R10) and the caller's service list.

use std::sync::Arc;
use std::time::Instant;

use tabadol_proto::v1::inquiry_server::Inquiry;
use tabadol_proto::v1::{
    GrantedService, InquireManyItem, InquireManyRequest, InquireManyResponse, InquireRequest,
    InquireResponse, ItemStatus, ListServicesRequest, ListServicesResponse, Record,
    RequestServiceRequest, RequestServiceResponse, TraceEntry, TraceRequest, TraceResponse,
};
use tonic::{Request, Response, Status};

use crate::edge::error::{HubError, Violation};
use crate::inquiry::pipeline::{Caller, Hub, InquiryInput, InquiryOutput};

/// Most items one `InquireMany` call may carry.
pub const MAX_FAN_OUT: usize = 32;

pub struct InquiryService(pub Arc<Hub>);

/// The pipeline input of one generic inquiry (its parameters are canonicalized by input
/// kind when validated).
pub fn to_input(req: InquireRequest) -> InquiryInput {
    let InquireRequest {
        context,
        service,
        params,
        fields,
    } = req;
    let ctx = context.unwrap_or_default();
    InquiryInput {
        tracking_code: ctx.tracking_code,
        purpose: ctx.purpose,
        service_request_id: ctx.service_request_id,
        service,
        params: params.into_iter().collect(),
        fields,
        required_fields: &[],
    }
}

fn to_response(out: InquiryOutput) -> InquireResponse {
    InquireResponse {
        records: out
            .records
            .into_iter()
            .map(|r| Record {
                fields: r.into_iter().collect(),
            })
            .collect(),
        inquiry_id: out.inquiry_id,
        provider: out.provider,
    }
}

async fn one(
    hub: &Hub,
    caller: &Caller,
    req: InquireRequest,
    deadline: Option<Instant>,
) -> Result<InquireResponse, HubError> {
    hub.inquire(caller, to_input(req), deadline)
        .await
        .map(to_response)
}

/// The items of an InquireMany call, between 1 and [`MAX_FAN_OUT`] of them.
pub fn many_items(req: InquireManyRequest) -> Result<Vec<InquireRequest>, HubError> {
    let InquireManyRequest { items } = req;
    if items.is_empty() || items.len() > MAX_FAN_OUT {
        return Err(HubError::Invalid(vec![Violation::new(
            "items",
            format!(
                "give between 1 and {MAX_FAN_OUT} items, got {}",
                items.len()
            ),
        )]));
    }
    Ok(items)
}

/// The tracking code a Trace call asks for, in canonical form (ASCII digits), as the
/// audit log keeps it.
pub fn trace_tracking_code(req: TraceRequest) -> Result<String, HubError> {
    let TraceRequest { tracking_code } = req;
    let invalid = |e: tabadol_policy::ids::IdError| {
        HubError::Invalid(vec![Violation::new("tracking_code", e.to_string())])
    };
    let canonical = tabadol_policy::ids::canonical(&tracking_code).map_err(invalid)?;
    tabadol_policy::ids::validate_tracking_code(&canonical).map_err(invalid)?;
    Ok(canonical.into_owned())
}

#[tonic::async_trait]
impl Inquiry for InquiryService {
    async fn inquire(
        &self,
        req: Request<InquireRequest>,
    ) -> Result<Response<InquireResponse>, Status> {
        let caller = super::caller(&self.0, &req)?;
        let deadline = super::deadline(&req);
        Ok(Response::new(
            one(&self.0, &caller, req.into_inner(), deadline).await?,
        ))
    }

    async fn inquire_many(
        &self,
        req: Request<InquireManyRequest>,
    ) -> Result<Response<InquireManyResponse>, Status> {
        let caller = super::caller(&self.0, &req)?;
        let deadline = super::deadline(&req);
        let items = many_items(req.into_inner())?;
        // Every item runs concurrently under the same deadline; one slow or failing
        // provider never holds back the others' results.
        let results = futures::future::join_all(
            items
                .into_iter()
                .map(|item| one(&self.0, &caller, item, deadline)),
        )
        .await;
        let items = results
            .into_iter()
            .map(|r| match r {
                Ok(resp) => InquireManyItem {
                    status: Some(ItemStatus {
                        code: 0,
                        message: String::new(),
                        details: Vec::new(),
                    }),
                    response: Some(resp),
                },
                Err(e) => {
                    // The same status (message, rich details) a single call would get.
                    let status = Status::from(e);
                    InquireManyItem {
                        status: Some(ItemStatus {
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                            details: status.details().to_vec(),
                        }),
                        response: None,
                    }
                }
            })
            .collect();
        Ok(Response::new(InquireManyResponse { items }))
    }

    async fn trace(&self, req: Request<TraceRequest>) -> Result<Response<TraceResponse>, Status> {
        let caller = super::caller(&self.0, &req)?;
        let tracking_code = trace_tracking_code(req.into_inner())?;
        // Only the caller's own records are read: another agency's trail is invisible.
        let records = self
            .0
            .audit()
            .trace(&caller.agency, &tracking_code)
            .map_err(|e| HubError::Internal(e.to_string()))?;
        let entries: Vec<TraceEntry> = records
            .into_iter()
            .map(|r| TraceEntry {
                inquiry_id: r.inquiry_id,
                time: Some(prost_types::Timestamp {
                    seconds: r.time_micros.div_euclid(1_000_000),
                    nanos: (r.time_micros.rem_euclid(1_000_000) * 1000) as i32,
                }),
                agency: r.agency,
                service: r.service,
                purpose: r.purpose,
                outcome: r.outcome,
                latency_micros: r.latency_micros,
                detail: r.detail,
                service_request_id: r.service_request_id,
            })
            .collect();
        Ok(Response::new(TraceResponse {
            tracking_code,
            latest_outcome: entries
                .last()
                .map(|e| e.outcome.clone())
                .unwrap_or_default(),
            entries,
        }))
    }

    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let caller = super::caller(&self.0, &req)?;
        let state = self.0.policy();
        let now = jiff::Timestamp::now();
        let services = state
            .policy
            .grants_for(&caller.agency)
            .into_iter()
            .map(|(s, g)| GrantedService {
                service: s.id.clone(),
                national_service_id: s.national_service_id.clone(),
                provider: s.provider.clone(),
                title: s.title_en.clone(),
                inputs: s.inputs.iter().map(|i| i.name.clone()).collect(),
                fields: g.fields.clone(),
                purposes: g.purposes.clone(),
                approved: crate::ops::signed::approval_with_signatures(&state.policy, g),
                valid_from: g.valid_from.map(|d| d.to_string()).unwrap_or_default(),
                valid_until: g.valid_until.map(|d| d.to_string()).unwrap_or_default(),
                maintenance: s
                    .maintenance
                    .iter()
                    .filter(|w| w.until.to_timestamp() > now)
                    .map(|w| match &w.note {
                        Some(note) => format!("{} – {}: {note}", w.from, w.until),
                        None => format!("{} – {}", w.from, w.until),
                    })
                    .collect(),
                condition: g
                    .condition
                    .as_ref()
                    .map(|c| {
                        format!(
                            "input `{}` {} in dataset {}",
                            c.key,
                            c.rule.as_str(),
                            c.dataset
                        )
                    })
                    .unwrap_or_default(),
            })
            .collect();
        let open_requests = self
            .0
            .requests()
            .and_then(|r| r.open_of(&caller.agency))
            .map_err(Status::from)?
            .iter()
            .map(|r| r.to_proto())
            .collect();
        Ok(Response::new(ListServicesResponse {
            agency: caller.agency,
            services,
            open_requests,
        }))
    }

    async fn request_service(
        &self,
        req: Request<RequestServiceRequest>,
    ) -> Result<Response<RequestServiceResponse>, Status> {
        let caller = super::caller(&self.0, &req)?;
        let r = req.into_inner();
        crate::inquiry::requests::validate(&r).map_err(|v| Status::from(HubError::Invalid(v)))?;
        let stored = self.0.requests()?.create(&caller.agency, r).await?;
        let audit = crate::inquiry::audit::AuditRecord {
            seq: 0,
            time_micros: jiff::Timestamp::now().as_microsecond(),
            inquiry_id: uuid::Uuid::now_v7().to_string(),
            agency: caller.agency.clone(),
            service: "inquiry.request-service".into(),
            purpose: String::new(),
            tracking_code: stored.id.clone(),
            service_request_id: stored.id.clone(),
            outcome: "ok".into(),
            latency_micros: 0,
            detail: "service request recorded".into(),
            prev_hash: String::new(),
            hash: String::new(),
        };
        self.0
            .audit()
            .append(audit)
            .await
            .map_err(|e| Status::from(HubError::Internal(format!("audit write failed: {e}"))))?;
        Ok(Response::new(RequestServiceResponse {
            request_id: stored.id,
        }))
    }
}
