//! `tabadol.v1.Shahkar`: CRA's mobile-ownership check through the pipeline.

use std::sync::Arc;

use tabadol_proto::v1::shahkar_server::Shahkar;
use tabadol_proto::v1::{MatchMobileRequest, MatchMobileResponse};
use tonic::{Request, Response, Status};

use crate::inquiry::pipeline::{Hub, InquiryInput};

/// Catalog id of the Shahkar match service.
pub const SERVICE: &str = "cra.shahkar.match";

pub struct ShahkarService(pub Arc<Hub>);

/// The pipeline input of a MatchMobile call.
pub fn to_input(req: MatchMobileRequest) -> InquiryInput {
    let MatchMobileRequest {
        context,
        national_code,
        mobile,
    } = req;
    super::input(
        context,
        SERVICE,
        [("national_code", national_code), ("mobile", mobile)],
        Vec::new(),
        &["matched"],
    )
}

#[tonic::async_trait]
impl Shahkar for ShahkarService {
    async fn match_mobile(
        &self,
        req: Request<MatchMobileRequest>,
    ) -> Result<Response<MatchMobileResponse>, Status> {
        let caller = super::caller(&self.0, &req)?;
        let deadline = super::deadline(&req);
        let input = to_input(req.into_inner());
        let out = self.0.inquire(&caller, input, deadline).await?;
        let matched = out
            .records
            .first()
            .and_then(|r| r.get("matched"))
            .is_some_and(|v| v == "true");
        Ok(Response::new(MatchMobileResponse {
            matched,
            inquiry_id: out.inquiry_id,
        }))
    }
}
