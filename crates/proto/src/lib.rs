//! Generated gRPC bindings for every Partner Ledger API (one protobuf package per service, from
//! `proto/`), the encoded descriptor set that server reflection serves, and the one codec the
//! bindings use ([`codec`]). Besides that codec, generated code only: no hand-written logic
//! lives here.

#![allow(clippy::all, clippy::pedantic, missing_debug_implementations)] // generated code

pub mod codec;

/// The encoded `FileDescriptorSet` of every API, for `grpc.reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

pub mod common {
    pub mod v1 {
        tonic::include_proto!("partnerledger.common.v1");
    }
}

pub mod crm {
    pub mod v1 {
        tonic::include_proto!("partnerledger.crm.v1");
    }
}

pub mod attribution {
    pub mod v1 {
        tonic::include_proto!("partnerledger.attribution.v1");
    }
}

pub mod commissions {
    pub mod v1 {
        tonic::include_proto!("partnerledger.commissions.v1");
    }
}

pub mod compliance {
    pub mod v1 {
        tonic::include_proto!("partnerledger.compliance.v1");
    }
}

pub mod audit {
    pub mod v1 {
        tonic::include_proto!("partnerledger.audit.v1");
    }
}

/// The protobuf well-known types the generated code uses (timestamps), for callers.
pub use prost_types;
