//! Where restored events go: the events table of Monoskope's EventStore (one transaction,
//! nothing published to the message bus), or the EventStore's `Store` API (only when asked for
//! explicitly: on a real Monoskope EventStore it republishes every event to RabbitMQ).

pub mod api;
pub mod table;

/// Why a sink refused or failed, by what the caller must decide.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The store holds events and `drop_existing` was not given.
    #[error("the event store is not empty ({0}); pass drop_existing (--drop-existing) to replace its events")]
    StoreNotEmpty(String),
    /// The sink cannot do what was asked.
    #[error("{0}")]
    Unsupported(String),
    /// The store cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The restore would write no event over a store that holds some: refused whatever the
    /// cause (a time before every event, an empty archive), so nothing is emptied by mistake.
    #[error("the restore would write no event over the {0} events the store holds; refusing to empty it (nothing was written)")]
    WouldEmpty(i64),
    /// Other sessions hold the store (the table's lock) longer than the restore waits.
    #[error("{0}")]
    InUse(String),
    /// Anything else (the restore was rolled back where the sink allows it).
    #[error("{}", monoskope_backup_client::error_line(.0.as_ref()))]
    Other(#[from] anyhow::Error),
}

/// Deterministic event id of a record without one: a UUID (version 8, RFC 9562) made from
/// SHA-256 of the aggregate type, id and version, so restoring the same backup twice gives the
/// same ids.
pub fn derived_event_id(r: &crate::archive::RecordView<'_>) -> uuid::Uuid {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"monoskope-backup event-id v1\0");
    h.update(r.aggregate_type.as_bytes());
    h.update([0]);
    h.update(r.aggregate_id.to_ascii_lowercase().as_bytes());
    h.update([0]);
    h.update(r.aggregate_version.to_be_bytes());
    h.update(r.event_type.as_bytes());
    h.update([0]);
    if let Some(t) = r.timestamp {
        h.update(t.seconds.to_be_bytes());
        h.update(t.nanos.to_be_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

/// The statements the table sink's designed CockroachDB path would send (not executed: the sink
/// refuses CockroachDB before writing), with the line of CockroachDB's documentation that allows
/// each (the table in `docs/COCKROACHDB.md`).
pub fn cockroach_statements() -> Vec<(&'static str, Vec<crate::events_table::dialect::Statement>)> {
    vec![(
        "table sink, restore (designed, refused until run on CockroachDB)",
        crate::events_table::dialect::sink_staging_swap(
            crate::events_table::CREATE_TABLE,
            "event_records_restore_{restore id}",
            "event_records_old_{restore id}",
        ),
    )]
}

#[cfg(test)]
mod cockroach_doc {
    /// `docs/COCKROACHDB.md` lists exactly the statements the code sends (or would send) to
    /// CockroachDB, between its two markers.
    #[test]
    fn the_statement_table_in_the_docs_is_the_codes() {
        let mut paths = crate::source::cockroach_statements();
        paths.extend(super::cockroach_statements());
        let want = crate::events_table::dialect::markdown_table(&paths);
        let doc = include_str!("../../../docs/COCKROACHDB.md");
        let (_, rest) = doc
            .split_once("<!-- statements: begin -->\n")
            .expect("begin marker");
        let (got, _) = rest
            .split_once("<!-- statements: end -->")
            .expect("end marker");
        assert_eq!(
            got, want,
            "docs/COCKROACHDB.md is out of date; its table should read:\n{want}"
        );
    }
}
