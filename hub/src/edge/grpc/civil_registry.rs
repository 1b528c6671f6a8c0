//! `tabadol.v1.CivilRegistry`: NOCR identity and life status through the pipeline.

use std::sync::Arc;

use tabadol_proto::v1::civil_registry_server::CivilRegistry;
use tabadol_proto::v1::{
    GetIdentityRequest, GetIdentityResponse, GetLifeStatusRequest, GetLifeStatusResponse,
};
use tonic::{Request, Response, Status};

use crate::inquiry::pipeline::{Hub, InquiryInput};

/// Catalog id of the identity service.
pub const IDENTITY: &str = "nocr.identity";
/// Catalog id of the life-status service.
pub const LIFE_STATUS: &str = "nocr.life-status";

pub struct CivilRegistryService(pub Arc<Hub>);

/// The pipeline input of a GetIdentity call.
pub fn identity_input(req: GetIdentityRequest) -> InquiryInput {
    let GetIdentityRequest {
        context,
        national_code,
        fields,
    } = req;
    super::input(
        context,
        IDENTITY,
        [("national_code", national_code)],
        fields,
        &[],
    )
}

/// The pipeline input of a GetLifeStatus call.
pub fn life_status_input(req: GetLifeStatusRequest) -> InquiryInput {
    let GetLifeStatusRequest {
        context,
        national_code,
    } = req;
    super::input(
        context,
        LIFE_STATUS,
        [("national_code", national_code)],
        Vec::new(),
        &["alive"],
    )
}

#[tonic::async_trait]
impl CivilRegistry for CivilRegistryService {
    async fn get_identity(
        &self,
        req: Request<GetIdentityRequest>,
    ) -> Result<Response<GetIdentityResponse>, Status> {
        let caller = super::caller(&self.0, &req)?;
        let deadline = super::deadline(&req);
        let input = identity_input(req.into_inner());
        let out = self.0.inquire(&caller, input, deadline).await?;
        let mut r = out.records.into_iter().next().unwrap_or_default();
        let mut take = |k: &str| r.remove(k).unwrap_or_default();
        Ok(Response::new(GetIdentityResponse {
            national_code: take("national_code"),
            first_name: take("first_name"),
            last_name: take("last_name"),
            father_name: take("father_name"),
            birth_date: take("birth_date"),
            gender: take("gender"),
            birth_place: take("birth_place"),
            shenasnameh_no: take("shenasnameh_no"),
            fields_returned: out.fields,
            inquiry_id: out.inquiry_id,
        }))
    }

    async fn get_life_status(
        &self,
        req: Request<GetLifeStatusRequest>,
    ) -> Result<Response<GetLifeStatusResponse>, Status> {
        let caller = super::caller(&self.0, &req)?;
        let deadline = super::deadline(&req);
        let input = life_status_input(req.into_inner());
        let out = self.0.inquire(&caller, input, deadline).await?;
        let r = out.records.into_iter().next().unwrap_or_default();
        Ok(Response::new(GetLifeStatusResponse {
            alive: r.get("alive").is_some_and(|v| v == "true"),
            death_date: r.get("death_date").cloned().unwrap_or_default(),
            inquiry_id: out.inquiry_id,
        }))
    }
}
