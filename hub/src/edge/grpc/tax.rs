//! `tabadol.v1.Tax`: INTA taxpayer status through the pipeline.

use std::sync::Arc;

use tabadol_proto::v1::get_taxpayer_request::Subject;
use tabadol_proto::v1::tax_server::Tax;
use tabadol_proto::v1::{GetTaxpayerRequest, GetTaxpayerResponse};
use tonic::{Request, Response, Status};

use crate::inquiry::pipeline::{Hub, InquiryInput};

/// Catalog id of the taxpayer service.
pub const SERVICE: &str = "inta.taxpayer";

pub struct TaxService(pub Arc<Hub>);

/// The pipeline input of a GetTaxpayer call.
pub fn to_input(req: GetTaxpayerRequest) -> InquiryInput {
    let GetTaxpayerRequest { context, subject } = req;
    let (nc, le) = match subject {
        Some(Subject::NationalCode(nc)) => (nc, String::new()),
        Some(Subject::LegalEntityId(le)) => (String::new(), le),
        None => (String::new(), String::new()),
    };
    super::input(
        context,
        SERVICE,
        [("national_code", nc), ("legal_entity_id", le)],
        Vec::new(),
        &[],
    )
}

#[tonic::async_trait]
impl Tax for TaxService {
    async fn get_taxpayer(
        &self,
        req: Request<GetTaxpayerRequest>,
    ) -> Result<Response<GetTaxpayerResponse>, Status> {
        let caller = super::caller(&self.0, &req)?;
        let deadline = super::deadline(&req);
        let input = to_input(req.into_inner());
        let out = self.0.inquire(&caller, input, deadline).await?;
        let mut r = out.records.into_iter().next().unwrap_or_default();
        let mut take = |k: &str| r.remove(k).unwrap_or_default();
        Ok(Response::new(GetTaxpayerResponse {
            taxpayer_id: take("taxpayer_id"),
            name: take("name"),
            status: take("status"),
            registered_on: take("registered_on"),
            tax_office: take("tax_office"),
            inquiry_id: out.inquiry_id,
            fields_returned: out.fields,
        }))
    }
}
