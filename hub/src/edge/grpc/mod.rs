//! gRPC front ends: each service converts protobuf to pipeline input and back; all of
//! them run through the same [`Hub`](crate::inquiry::pipeline::Hub) pipeline.

pub mod civil_registry;
pub mod datasets;
pub mod events;
pub mod inquiry;
pub mod shahkar;
pub mod tax;

use std::time::{Duration, Instant};

use tabadol_proto::v1::InquiryContext;
use tonic::{Request, Status};

use crate::edge::tls::PeerInfo;
use crate::inquiry::pipeline::{Caller, Hub, InquiryInput};

/// Resolves the calling agency from the verified certificate of the connection.
pub(crate) fn caller<T>(hub: &Hub, req: &Request<T>) -> Result<Caller, Status> {
    let peer = req.extensions().get::<PeerInfo>().ok_or_else(|| {
        Status::unauthenticated("no verified client certificate on this connection")
    })?;
    hub.caller_for(peer.common_name.as_deref())
        .map_err(Status::from)
}

/// Reads the caller's deadline from the `grpc-timeout` header.
pub(crate) fn deadline<T>(req: &Request<T>) -> Option<Instant> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(v).map(|d| Instant::now() + d)
}

/// Parses a `grpc-timeout` value ("100m", "5S", ...).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Builds pipeline input from a context and a catalog service id.
pub(crate) fn input(
    ctx: Option<InquiryContext>,
    service: &str,
    params: impl IntoIterator<Item = (&'static str, String)>,
    fields: Vec<String>,
    required_fields: &'static [&'static str],
) -> InquiryInput {
    let InquiryContext {
        tracking_code,
        purpose,
        service_request_id,
    } = ctx.unwrap_or_default();
    InquiryInput {
        tracking_code,
        purpose,
        service_request_id,
        service: service.to_owned(),
        params: params
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        fields,
        required_fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// grpc-timeout values in every unit parse; garbage does not.
    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("10q"), None);
    }
}

#[cfg(test)]
mod proptests;
