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

/// Every statement the table source sends to CockroachDB, by path, with the line of its
/// documentation that allows it (the table in `docs/COCKROACHDB.md`; a test keeps them equal).
pub fn cockroach_statements() -> Vec<(&'static str, Vec<crate::events_table::dialect::Statement>)> {
    use crate::events_table::dialect;
    let columns = table::COLUMNS;
    vec![
        (
            "table source, full backup",
            dialect::source_full(columns, table::order_by(true)),
        ),
        (
            "table source, incremental backup",
            dialect::source_incremental(
                incremental::MAX_PER_AGGREGATE,
                &incremental::grown_lookup(columns, "$1::text[], $2::uuid[], $3::bigint[]", true),
            ),
        ),
    ]
}
