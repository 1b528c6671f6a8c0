//! The Tabadol hub: mutual TLS, the gRPC services, the inquiry pipeline, audit, and the
//! command line. See ARCHITECTURE.md for the code map.
#![forbid(unsafe_code)]

pub mod edge;
pub mod events;
pub mod inquiry;
pub mod kafka;
pub mod ops;
