//! Generated protocol buffers of monoskope-backup.
//!
//! - [`eventsourcing`]: Monoskope's EventStore contract (`eventsourcing.EventStore`).
//! - [`gateway`]: Monoskope's gateway authentication contract (`gateway.GatewayAuth`).
//! - [`common`]: Monoskope's service information service.
//! - [`backup::v1`]: our BackupService (`monoskope.backup.v1.BackupService`).
//! - [`archive::v1`]: the records of the archive format (`monoskope.backup.archive.v1`).
//!
//! [`FILE_DESCRIPTOR_SET`] holds every file's descriptor, for gRPC server reflection.

#![allow(
    missing_docs,
    reason = "generated code; the .proto files document every item"
)]
#![allow(clippy::all, reason = "generated code")]

/// Monoskope's EventStore contract.
pub mod eventsourcing {
    tonic::include_proto!("eventsourcing");
}

/// Monoskope's gateway authentication contract.
pub mod gateway {
    tonic::include_proto!("gateway");
}

/// Monoskope's service information service.
pub mod common {
    tonic::include_proto!("common");
}

/// monoskope-backup's BackupService.
pub mod backup {
    /// Version 1 of the BackupService.
    pub mod v1 {
        tonic::include_proto!("monoskope.backup.v1");
    }
}

/// Records of the archive format.
pub mod archive {
    /// Version 1 of the archive records.
    pub mod v1 {
        tonic::include_proto!("monoskope.backup.archive.v1");
    }
}

/// Encoded `FileDescriptorSet` of every proto file in `api/`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
