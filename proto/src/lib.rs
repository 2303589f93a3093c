//! Vigie's public gRPC contract: package `vigie.v1` from `proto/vigie/v1/vigie.proto`.
//!
//! ```text
//!   drones ──WriteRequest──▶ Ingest ──WriteResponse──▶ drones
//!   dispatchers ◀──Alert stream── Alerts.Subscribe
//! ```
//!
//! The messages and both services are generated at build time (vendored `protoc`). Every generated
//! service uses [`codec::VigieCodec`], which reports undecodable messages as `INVALID_ARGUMENT` with the
//! message type named, instead of the `INTERNAL` that a stock prost codec returns.

pub mod codec;

/// `vigie.v1`: the generated messages, clients and servers.
pub mod v1 {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("vigie.v1");
}

/// The encoded `FileDescriptorSet` of `vigie.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vigie_descriptor");

pub use prost_types::Timestamp;
