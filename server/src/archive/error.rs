//! Errors of the archive format, one variant per decision a caller must make.

/// Why an archive cannot be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The bytes do not start with the archive magic.
    #[error("not a backup archive (bad magic bytes)")]
    NotAnArchive,
    /// The archive was written by a newer major format version than this reader knows.
    #[error("unsupported format version {major}.{minor} (this build reads {supported}.x); upgrade monoskope-backup")]
    UnsupportedVersion {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
        /// Major version this build reads.
        supported: u16,
    },
    /// The archive is encrypted under a key the keyring does not hold.
    #[error("wrong key (archive key id {archive_key_id}, keyring has {})", if available.is_empty() { "no keys".to_string() } else { available.join(", ") })]
    WrongKey {
        /// The key id in the archive's header.
        archive_key_id: String,
        /// The key ids of the keyring.
        available: Vec<String>,
    },
    /// The archive is encrypted with a passphrase, and the one given does not open it.
    #[error("wrong passphrase (the archive's data key does not unwrap)")]
    WrongPassphrase,
    /// The archive is encrypted and no key of its kind was given.
    #[error("archive is encrypted (key id {key_id}); give its key with --key-file, BACKUP_ENCRYPTION_KEY or BACKUP_PASSPHRASE, or for recipients (age-…) an identity with --identity-file")]
    KeyRequired {
        /// The key ids the archive's wraps name.
        key_id: String,
    },
    /// The archive's data key is wrapped in its key file (format 1.1), which was not found.
    #[error("the archive's data key is wrapped in its key file (<archive>.keys, key id {key_id}), which is missing: without it no key opens the archive")]
    KeyFileMissing {
        /// The key id the in-archive envelope names.
        key_id: String,
    },
    /// The header or the key envelope is damaged (or was tampered with).
    #[error("archive header is corrupt: {0}")]
    HeaderCorrupt(String),
    /// A chunk failed authentication or its content is malformed.
    #[error(
        "chunk {chunk} failed authentication (corrupted or tampered){}",
        detail_suffix(detail)
    )]
    Corrupt {
        /// Index of the chunk (0-based; the footer chunk is the last index).
        chunk: u64,
        /// What was wrong, when more is known than the failed tag.
        detail: String,
    },
    /// The archive ends before its final chunk.
    #[error("archive is truncated after chunk {}", after_chunk.map_or("header".to_string(), |c| c.to_string()))]
    Truncated {
        /// The last complete chunk, `None` when even the first one is missing.
        after_chunk: Option<u64>,
    },
    /// Bytes follow the final chunk.
    #[error("archive has trailing data after its final chunk {chunk}")]
    TrailingData {
        /// Index of the final chunk.
        chunk: u64,
    },
    /// An event is too large to be written.
    #[error("event of {size} bytes is larger than the archive's limit of {limit} bytes")]
    EventTooLarge {
        /// Encoded size of the event.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Key material is malformed (bad base64, wrong length, empty keyring).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// Reading or writing the underlying bytes failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl ArchiveError {
    pub(crate) fn corrupt(chunk: u64, detail: impl Into<String>) -> Self {
        ArchiveError::Corrupt {
            chunk,
            detail: detail.into(),
        }
    }
}
