//! Generated gRPC types and services of the Tabadol contract (`tabadol.v1`).
#![forbid(unsafe_code)]

/// Package `tabadol.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tabadol.v1");
    include!(concat!(env!("OUT_DIR"), "/client/tabadol.v1.rs"));
}

pub mod codec;

/// Encoded `FileDescriptorSet` of every tabadol.v1 file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tabadol_descriptor");
