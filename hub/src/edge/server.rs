//! Composes the gRPC server (pipeline services, reflection, health) behind the hub's
//! own mTLS acceptor, and runs it until the shutdown future resolves.

use std::future::Future;
use std::sync::Arc;

use tabadol_proto::v1::civil_registry_server::CivilRegistryServer;
use tabadol_proto::v1::datasets_server::DatasetsServer;
use tabadol_proto::v1::events_server::EventsServer;
use tabadol_proto::v1::inquiry_server::InquiryServer;
use tabadol_proto::v1::shahkar_server::ShahkarServer;
use tabadol_proto::v1::tax_server::TaxServer;
use tokio::net::TcpListener;

use crate::edge::grpc::civil_registry::CivilRegistryService;
use crate::edge::grpc::datasets::DatasetsService;
use crate::edge::grpc::events::EventsService;
use crate::edge::grpc::inquiry::InquiryService;
use crate::edge::grpc::shahkar::ShahkarService;
use crate::edge::grpc::tax::TaxService;
use crate::edge::limits::{AgencyStreamsLayer, BodyDeadlineLayer, EdgeLimits, RequireGrpcLayer};
use crate::inquiry::pipeline::Hub;

/// Largest header block a client may send (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE).
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Flow-control windows: how much request data one stream / one connection may have
/// buffered in the hub before the hub reads it.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// The front ends that hold state of their own (the inquiry ones are built from the hub).
pub struct Fronts {
    pub events: EventsService,
    pub datasets: DatasetsService,
}

/// Serves every hub service on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    tls: Arc<crate::edge::tls::TlsEdge>,
    hub: Arc<Hub>,
    Fronts { events, datasets }: Fronts,
    limits: EdgeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    // grpc.health.v1, its statuses set by `ops/health.rs`.
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> anyhow::Result<()> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tabadol_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tabadol_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let incoming = crate::edge::tls::incoming(listener, tls, hub.clone());
    // Order matters, outermost first: a non-gRPC request is refused before it counts
    // against its agency; a stream is counted before its body is read.
    let streams = AgencyStreamsLayer::new(hub.clone(), limits.streams_per_agency);
    hub.metrics.set_stream_counts(streams.counts());
    let edge = tower::ServiceBuilder::new()
        // The caller's W3C traceparent becomes the parent of the inquiry's span.
        .layer(crate::ops::telemetry::TraceContextLayer)
        .layer(RequireGrpcLayer)
        .layer(streams)
        .layer(BodyDeadlineLayer::new(limits.request_body_timeout));
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .max_concurrent_streams(limits.streams_per_connection)
        .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .layer(edge)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(InquiryServer::new(InquiryService(hub.clone())))
        .add_service(ShahkarServer::new(ShahkarService(hub.clone())))
        .add_service(CivilRegistryServer::new(CivilRegistryService(hub.clone())))
        .add_service(TaxServer::new(TaxService(hub.clone())))
        .add_service(EventsServer::new(events))
        .add_service(DatasetsServer::new(datasets))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
