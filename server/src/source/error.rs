//! Why reading a source stopped, as the engine decides: take a full backup instead, read the
//! table sorted, wait for a lock holder, or fail. Causes are kept as `source`, never flattened.

use super::reorder::Unordered;

/// Why reading the events table stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The events database cannot be reached, or its URL is unusable.
    #[error(transparent)]
    Connect(#[from] crate::events_table::ConnectError),
    /// The store does not continue the chain an incremental was to build on (a version gap, a
    /// store that went backwards after a restore, events without versions): take a full backup.
    /// The text says why.
    #[error("{0}")]
    ChainMismatch(String),
    /// A read in physical order found the table too far out of store order: read it sorted.
    #[error(transparent)]
    Unordered(#[from] Unordered),
    /// Another session held the table exclusively for longer than the lock wait; the text
    /// names it and what to do.
    #[error("{0}")]
    Busy(String),
    /// The table's rows are not what the decoder reads (a value in the wrong format).
    #[error("unexpected COPY data from the events table: {0}")]
    Malformed(String),
    /// An event's metadata is not a JSON object of strings.
    #[error(transparent)]
    Metadata(#[from] super::metadata::BadMetadata),
    /// The database failed a statement or the connection broke.
    #[error("reading the events table failed")]
    Database(#[from] sqlx::Error),
}

impl SourceError {
    /// Whether the database gave up waiting for a lock (the caller names the holder).
    pub(super) fn is_lock_timeout(&self) -> bool {
        matches!(self, SourceError::Database(e) if crate::events_table::is_lock_timeout(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_kept_as_sources_not_flattened() {
        let e = SourceError::from(sqlx::Error::PoolTimedOut);
        assert_eq!(e.to_string(), "reading the events table failed");
        let line = monoskope_backup_client::error_line(&e);
        assert!(
            line.starts_with("reading the events table failed: "),
            "{line}"
        );
        assert!(std::error::Error::source(&e).is_some());
        assert!(!e.is_lock_timeout());
    }
}
