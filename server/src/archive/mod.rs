//! The backup archive format, version 1 (docs/ARCHIVE_FORMAT.md has every byte).
//!
//! Records (length-delimited protobuf `monoskope.backup.archive.v1.Record`) form one byte
//! stream, cut into chunks of at most `chunk_size` bytes, each compressed with zstd and sealed
//! with AES-256-GCM under a fresh per-archive data key, the nonce binding the chunk counter and a
//! last-chunk flag (STREAM), the clear header as associated data. The final chunk holds the
//! footer (event count, time range, SHA-256 of the records). Unencrypted archives replace the
//! AEAD with a SHA-256 chain so that damage is still detected.
//!
//! This module works over `std::io::Read`/`Write` only: no async runtime, no SQL, no network.

mod encoded;
pub mod envelope;
mod error;
mod format;
mod keys;
mod opening;
mod reader;
mod recipients;
mod view;
mod writer;

pub use encoded::{Batch, EncodedRef, RecordParts};
pub use error::ArchiveError;
pub use format::{DEFAULT_CHUNK_SIZE, FORMAT_MAJOR, FORMAT_MINOR, MAGIC, MAX_RECORD_LEN};
pub use keys::{Argon2Params, Keyring, Keys, MasterKey, Passphrase, Protection};
pub use monoskope_backup_api::archive::v1::{Footer, Header, Record};
pub use reader::{read_head, ArchiveReader};
pub use recipients::{parse_identities, parse_recipients, Identity, Recipient};
pub use view::{RecordView, ViewError};
pub use writer::{chunk_compressor, ArchiveWriter, WriterOptions, DEFAULT_COMPRESSION_LEVEL};

/// The minor version an archive written with `protection` (its wraps in a key file when
/// `key_file`; linked to its parent's bytes when `linked`) is: the lowest that describes it, so
/// that a 1.0 reader still reads every archive that needs nothing of 1.1 (recipients, a key
/// file) and a 1.1 reader every archive without the link of 1.2.
pub fn minor_for(protection: &Protection, key_file: bool, linked: bool) -> u16 {
    let encrypted = !matches!(protection, Protection::Unencrypted);
    if linked {
        2
    } else if matches!(protection, Protection::Recipients(_)) || (key_file && encrypted) {
        1
    } else {
        0
    }
}

/// The format version, as manifests state it, of an archive written with `protection`,
/// `key_file` and `linked` ([`minor_for`]).
pub fn version_for(protection: &Protection, key_file: bool, linked: bool) -> String {
    format!("{FORMAT_MAJOR}.{}", minor_for(protection, key_file, linked))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_keys;
