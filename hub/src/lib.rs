//! The Tabadol hub: mutual TLS, the gRPC services, the inquiry pipeline, audit, and the
//! command line. See ARCHITECTURE.md for the code map.
#![forbid(unsafe_code)]

pub mod acls;
pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod dev;
pub mod error;
pub mod events;
pub mod grpc;
pub mod manifests;
pub mod outbox;
pub mod pipeline;
pub mod pki;
pub mod relay;
pub mod server;
pub mod tls;
pub mod tokens;
