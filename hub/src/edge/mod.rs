//! The hub's edge: the mTLS acceptor, the gRPC server, the gRPC front ends and the one
//! place that maps every error to a gRPC status.

pub mod error;
pub mod grpc;
pub mod limits;
pub mod server;
pub mod tls;
