//! An archive's key file at the destination (`<archive>.keys`, format 1.1): the wraps of its
//! data key, fetched before the archive is opened and replaced by a rewrap.

use crate::archive::envelope;
use monoskope_backup_api::archive::v1::KeyFile;

use super::{layout, Destination, DestinationError};

/// Why a key file could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The destination failed.
    #[error(transparent)]
    Destination(#[from] DestinationError),
    /// The key file is there but does not parse.
    #[error("{key}: {source}")]
    Damaged {
        /// Its object key.
        key: String,
        /// Why.
        #[source]
        source: crate::archive::ArchiveError,
    },
}

/// The key file of the archive at `archive_key`, `None` when there is none (an archive that
/// holds its wrap itself, format 1.0, or one written unencrypted).
pub async fn load(
    dest: &dyn Destination,
    archive_key: &str,
) -> Result<Option<KeyFile>, KeyFileError> {
    let key = layout::keys_key(archive_key);
    match dest.get_bytes(&key).await {
        Ok(bytes) => envelope::parse_key_file(&bytes)
            .map(Some)
            .map_err(|source| KeyFileError::Damaged { key, source }),
        Err(DestinationError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Stores the key file of the archive at `archive_key` (atomically visible, replacing the old).
pub async fn store(
    dest: &dyn Destination,
    archive_key: &str,
    file: &KeyFile,
) -> Result<(), DestinationError> {
    dest.put(
        &layout::keys_key(archive_key),
        envelope::encode_key_file(file),
    )
    .await
}
