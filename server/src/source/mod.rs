//! Where events come from. The EventStore's `Retrieve` API needs no database credentials and is
//! independent of the database behind the store; the events table ([`table`]) is one consistent
//! snapshot read straight from PostgreSQL, keeping event ids.

mod copy;
mod incremental;
mod metadata;
pub mod reorder;
pub mod table;

pub use crate::eventstore::{event_from_record, record_from_event, EventStoreAddr, RECORD_BATCH};
pub use reorder::Unordered;

/// The store does not continue the backup chain an incremental backup was to build on (a
/// version gap, a store that went backwards after a restore, events without versions): the
/// backup must be a full one. The text says why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ChainMismatch(pub String);
