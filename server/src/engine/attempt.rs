//! How an attempt at a backup ends when it does not succeed: the decisions the engine takes on
//! it (another attempt, a full backup, nothing to write) and why it failed.

use anyhow::anyhow;

use crate::source::SourceError;

/// How an attempt at a backup ended when it did not succeed: what the engine decides on.
#[derive(Debug)]
pub enum AttemptError {
    /// An incremental cannot continue its chain (the text says why): take a full backup.
    ChainMismatch(String),
    /// A read in physical order found the table too far out of store order: read it sorted.
    Unordered(String),
    /// The backup failed; nothing is left at the destination.
    Failed(anyhow::Error),
    /// A continuous segment found no new event; nothing was written.
    NothingNew,
}

impl AttemptError {
    /// Whether `e` calls for another attempt (a full backup, or a sorted read), not a failure.
    pub(super) fn is_another_attempt(e: &anyhow::Error) -> bool {
        Self::of_ref(e).is_some()
    }

    fn of_ref(e: &anyhow::Error) -> Option<Self> {
        // The source's error crosses the record stream and the writer as a cause.
        match e.chain().find_map(|c| c.downcast_ref::<SourceError>())? {
            SourceError::ChainMismatch(m) => Some(AttemptError::ChainMismatch(m.clone())),
            SourceError::Unordered(u) => Some(AttemptError::Unordered(u.0.clone())),
            _ => None,
        }
    }

    /// Sorts an attempt's error: the source's and the reader's typed findings are found in its
    /// causes once, here, at the boundary where they arrive through the record stream.
    pub(super) fn of(e: anyhow::Error) -> Self {
        Self::of_ref(&e).unwrap_or(AttemptError::Failed(e))
    }
}

impl AttemptError {
    /// The error as the backup's record states it (a chain mismatch or a table out of order
    /// that outlasted the engine's further attempts says so).
    pub fn into_error(self) -> anyhow::Error {
        match self {
            AttemptError::ChainMismatch(m) | AttemptError::Unordered(m) => anyhow!(m),
            AttemptError::Failed(e) => e,
            AttemptError::NothingNew => anyhow!("nothing new"),
        }
    }
}

impl From<anyhow::Error> for AttemptError {
    fn from(e: anyhow::Error) -> Self {
        AttemptError::Failed(e)
    }
}

/// A segment's source held nothing new (see [`Attempt::segment`]).
#[derive(Debug, thiserror::Error)]
#[error("nothing new")]
pub(super) struct NothingNew;

/// A backup stopped by its deadline or an interrupt, wherever it was.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Cut(pub(super) String);
