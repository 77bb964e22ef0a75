//! Where events come from. The EventStore's `Retrieve` API needs no database credentials and is
//! independent of the database behind the store; the events table ([`table`]) is one consistent
//! snapshot read straight from PostgreSQL, keeping event ids.

mod copy;
mod error;
mod incremental;
mod metadata;
pub mod reorder;
pub mod table;

pub use crate::eventstore::{event_from_record, record_from_event, EventStoreAddr, RECORD_BATCH};
pub use error::SourceError;
pub use reorder::Unordered;
