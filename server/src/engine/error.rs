//! Why the engine refused or failed an operation, as its callers decide: the error, and the kind
//! of failure kept beside a record whose error is text.

use monoskope_backup_client::error_line;

/// Why the engine refused or failed an operation, as a caller must decide.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Another operation runs; try again later.
    #[error("another operation is running: {kind} {id}")]
    Busy {
        /// "backup" or "restore".
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// Another process sharing the catalog runs an operation; try again when it ends.
    #[error("another process runs an operation against this catalog: {kind} {id} (process {holder}, since {since}); try again when it ends")]
    BusyElsewhere {
        /// "backup", "restore" or "drill".
        kind: String,
        /// Its id.
        id: String,
        /// The process (`host:pid:nonce`).
        holder: String,
        /// When it started (RFC 3339).
        since: String,
    },
    /// The named backup does not exist (or is not complete).
    #[error("{0}")]
    NotFound(String),
    /// A request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The request cannot be carried out as asked (non-empty store, missing via_api, wrong key…).
    #[error("{0}")]
    Refused(String),
    /// The backup is damaged; nothing was written.
    #[error("{0}")]
    Corrupt(String),
    /// A peer (EventStore, destination, catalog) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{}", error_line(.0.as_ref()))]
    Internal(#[from] anyhow::Error),
}

/// What kind of failure ended an operation, kept beside its record (whose error is text) so a
/// caller that waited gets the status the failure deserves (a damaged backup: `DATA_LOSS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// [`EngineError::Refused`] (and busy).
    Refused,
    /// [`EngineError::Corrupt`].
    Corrupt,
    /// [`EngineError::NotFound`].
    NotFound,
    /// [`EngineError::Invalid`].
    Invalid,
    /// [`EngineError::Unavailable`].
    Unavailable,
    /// [`EngineError::Internal`] (timeouts and interrupts too).
    Internal,
}

impl EngineError {
    /// The kind of this failure.
    pub fn failure(&self) -> Failure {
        match self {
            EngineError::Busy { .. }
            | EngineError::BusyElsewhere { .. }
            | EngineError::Refused(_) => Failure::Refused,
            EngineError::Corrupt(_) => Failure::Corrupt,
            EngineError::NotFound(_) => Failure::NotFound,
            EngineError::Invalid(_) => Failure::Invalid,
            EngineError::Unavailable(_) => Failure::Unavailable,
            EngineError::Internal(_) => Failure::Internal,
        }
    }
}
