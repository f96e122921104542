//! Generated gRPC code: the Stockade API (`stockade.v1`) and the subset of
//! the Kubernetes Container Runtime Interface (`runtime.v1`) the agent uses
//! to learn pod names and to create pods in tests.

#![allow(clippy::all, missing_docs)]

/// The `stockade.v1` API served by the node agent.
pub mod v1 {
    tonic::include_proto!("stockade.v1");
}

/// The part of the CRI `runtime.v1` API that Stockade speaks.
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

/// Encoded `FileDescriptorSet` of every compiled file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
