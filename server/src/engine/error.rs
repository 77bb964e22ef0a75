//! Why the engine refused or failed an operation, as its callers decide: the error, and the kind
//! of failure kept beside a record whose error is text.

use monoskope_backup_client::error_line;
pub use monoskope_backup_client::exit::Exit;

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
    /// What the operation must lock is held by someone else (the events table by another
    /// session); try again when they let go.
    #[error("{0}")]
    Locked(String),
    /// The named backup does not exist (or is not complete).
    #[error("{0}")]
    NotFound(String),
    /// A request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The request cannot be carried out as asked (non-empty store, missing via_api…).
    #[error("{0}")]
    Refused(String),
    /// No key that opens the backup was given (or its key file is gone).
    #[error("{0}")]
    KeyMissing(String),
    /// The keys given do not open the backup.
    #[error("{0}")]
    KeyWrong(String),
    /// The backup is damaged; nothing was written.
    #[error("{0}")]
    Corrupt(String),
    /// The process is stopping (a signal): the service answers UNAVAILABLE, a command exits 1.
    #[error("{0}")]
    Interrupted(String),
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
    /// [`EngineError::Refused`].
    Refused,
    /// [`EngineError::Busy`], [`EngineError::BusyElsewhere`] and [`EngineError::Locked`].
    Busy,
    /// [`EngineError::KeyMissing`].
    KeyMissing,
    /// [`EngineError::KeyWrong`].
    KeyWrong,
    /// [`EngineError::Corrupt`].
    Corrupt,
    /// [`EngineError::NotFound`].
    NotFound,
    /// [`EngineError::Invalid`].
    Invalid,
    /// [`EngineError::Unavailable`].
    Unavailable,
    /// [`EngineError::Interrupted`].
    Interrupted,
    /// [`EngineError::Internal`] (timeouts and interrupts too).
    Internal,
}

impl EngineError {
    /// The kind of this failure.
    pub fn failure(&self) -> Failure {
        match self {
            EngineError::Busy { .. }
            | EngineError::BusyElsewhere { .. }
            | EngineError::Locked(_) => Failure::Busy,
            EngineError::Refused(_) => Failure::Refused,
            EngineError::KeyMissing(_) => Failure::KeyMissing,
            EngineError::KeyWrong(_) => Failure::KeyWrong,
            EngineError::Corrupt(_) => Failure::Corrupt,
            EngineError::NotFound(_) => Failure::NotFound,
            EngineError::Invalid(_) => Failure::Invalid,
            EngineError::Unavailable(_) => Failure::Unavailable,
            EngineError::Interrupted(_) => Failure::Interrupted,
            EngineError::Internal(_) => Failure::Internal,
        }
    }
}

/// The exit code an error ends a command with: the first cause in its chain that says (a usage
/// error is the commands' to tell; see `cli::exit_of`).
pub fn exit_of(e: &anyhow::Error) -> Exit {
    use crate::archive::ArchiveError as A;
    use crate::catalog::CatalogError as C;
    use crate::destination::DestinationError as D;
    use crate::source::SourceError as S;
    for c in e.chain() {
        if let Some(e) = c.downcast_ref::<EngineError>() {
            match e.failure() {
                Failure::Internal => continue,
                f => return f.exit(),
            }
        }
        if let Some(e) = c.downcast_ref::<Ended>() {
            return e.exit;
        }
        if let Some(e) = c.downcast_ref::<A>() {
            return match e {
                A::WrongKey { .. } | A::WrongPassphrase => Exit::KeyWrong,
                A::KeyRequired { .. } | A::KeyFileMissing { .. } => Exit::KeyMissing,
                A::Io(_) | A::InvalidKey(_) => continue,
                _ => Exit::Damaged,
            };
        }
        if let Some(e) = c.downcast_ref::<D>() {
            return match e {
                D::Unavailable(_) => Exit::Unreachable,
                D::PermissionDenied(_) => Exit::NotAllowed,
                D::NotFound(_) | D::NotCreated(_) | D::Missing(_) => Exit::NotFound,
                D::Other(_) => continue,
            };
        }
        if let Some(e) = c.downcast_ref::<C>() {
            match e {
                C::Unreachable(_) => return Exit::Unreachable,
                C::LeaseRace => return Exit::Busy,
                _ => continue,
            }
        }
        if let Some(e) = c.downcast_ref::<S>() {
            match e {
                S::Connect(_) => return Exit::Unreachable,
                S::Busy(_) => return Exit::Busy,
                _ => continue,
            }
        }
        if let Some(e) = c.downcast_ref::<monoskope_backup_client::ClientError>() {
            return e.exit();
        }
        if let Some(r) = c.downcast_ref::<crate::eventstore::RetrieveError>() {
            if matches!(
                r.code,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ) {
                return Exit::Unreachable;
            }
        }
        if let Some(s) = c.downcast_ref::<tonic::Status>() {
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ) {
                return Exit::Unreachable;
            }
        }
        if c.is::<tonic::transport::Error>() {
            return Exit::Unreachable;
        }
    }
    Exit::Failed
}

/// An operation that ended failed, with the exit its failure deserves.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Ended {
    /// How the command exits.
    pub exit: Exit,
    /// What failed.
    pub message: String,
}

impl Failure {
    /// The exit code of a command that failed this way.
    pub fn exit(self) -> Exit {
        match self {
            Failure::Refused => Exit::Failed,
            Failure::Busy => Exit::Busy,
            Failure::KeyMissing => Exit::KeyMissing,
            Failure::KeyWrong => Exit::KeyWrong,
            Failure::Corrupt => Exit::Damaged,
            Failure::NotFound => Exit::NotFound,
            Failure::Invalid => Exit::Usage,
            Failure::Unavailable => Exit::Unreachable,
            Failure::Interrupted => Exit::Failed,
            Failure::Internal => Exit::Failed,
        }
    }
}
