//! The fixed parts of the byte layout (docs/ARCHIVE_FORMAT.md): prefix, lengths, frames, nonces,
//! and the SHA-256 chain of unencrypted archives.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};

/// First eight bytes of every archive.
pub const MAGIC: &[u8; 8] = b"MSKBKP\x00\x01";
/// Major format version this build writes and reads.
pub const FORMAT_MAJOR: u16 = 1;
/// Highest minor format version this build writes (1.1: recipients and key files; 1.2: the
/// link to the parent archive, `Header.parent_sha256`, of continuous segments and their
/// compactions).
pub const FORMAT_MINOR: u16 = 2;
/// Largest header or key envelope a reader accepts.
pub const MAX_HEADER_LEN: u32 = 64 * 1024;
/// Default uncompressed bytes per chunk.
pub const DEFAULT_CHUNK_SIZE: u32 = 1024 * 1024;
/// Largest chunk size a reader accepts from a header.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Largest single record (an event with a 64 MiB payload does not fit).
pub const MAX_RECORD_LEN: usize = 64 * 1024 * 1024;
/// Frame flag: this is the final chunk (it holds the footer).
pub const FLAG_LAST: u8 = 0x01;
/// Bytes of an AES-GCM tag.
pub const GCM_TAG_LEN: usize = 16;
/// Bytes of the SHA-256 chain tag of an unencrypted chunk.
pub const CHAIN_TAG_LEN: usize = 32;
/// Protection name of encrypted archives.
pub const PROTECTION_AES: &str = "aes-256-gcm-stream";
/// Protection name of unencrypted archives.
pub const PROTECTION_SHA256: &str = "sha256-chain";
/// Compression name.
pub const COMPRESSION_ZSTD: &str = "zstd";

/// Largest frame body a reader accepts for a header's chunk size.
pub fn max_frame_len(chunk_size: u32) -> usize {
    zstd::zstd_safe::compress_bound(chunk_size as usize) + CHAIN_TAG_LEN.max(GCM_TAG_LEN)
}

/// STREAM nonce (Hoang, Reyhanitabar, Rogaway, Vizár): 7-byte random prefix, 32-bit big-endian
/// chunk counter, 1-byte last-chunk flag.
pub fn nonce(prefix: &[u8; 7], counter: u32, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// Tag of an unencrypted chunk: SHA-256(previous tag ‖ counter ‖ flags ‖ body). The chain
/// starts from SHA-256 of the authenticated prefix, so chunks cannot be reordered, dropped or
/// moved between archives without the chain breaking (it detects damage, not forgery).
pub fn chain_tag(prev: &[u8; 32], counter: u32, flags: u8, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(counter.to_be_bytes());
    h.update([flags]);
    h.update(body);
    h.finalize().into()
}

/// Start of the SHA-256 chain: the digest of everything before the first frame.
pub fn chain_start(prefix: &[u8]) -> [u8; 32] {
    Sha256::digest(prefix).into()
}

/// What protects the chunks of one archive: the AEAD with its STREAM nonce state, or the
/// SHA-256 chain. The writer seals with it, the reader opens with it.
pub enum ChunkGuard {
    /// AES-256-GCM under the data key; the nonce prefix and the authenticated prefix `aad`.
    Aes {
        /// Cipher keyed with the archive's data key.
        cipher: Box<Aes256Gcm>,
        /// STREAM nonce prefix.
        prefix: [u8; 7],
        /// Associated data of every chunk (the authenticated prefix).
        aad: Vec<u8>,
    },
    /// SHA-256 chain; `prev` is the previous tag (or the chain start).
    Chain {
        /// Previous tag.
        prev: [u8; 32],
    },
}

impl ChunkGuard {
    /// Seals the compressed `body` of chunk `counter` in place (appends the tag).
    pub fn seal(&mut self, counter: u32, flags: u8, body: &mut Vec<u8>) -> Result<(), ()> {
        match self {
            ChunkGuard::Aes {
                cipher,
                prefix,
                aad,
            } => {
                let n = nonce(prefix, counter, flags & FLAG_LAST != 0);
                cipher
                    .encrypt_in_place(&Nonce::from(n), aad, body)
                    .map_err(|_| ())
            }
            ChunkGuard::Chain { prev } => {
                let tag = chain_tag(prev, counter, flags, body);
                body.extend_from_slice(&tag);
                *prev = tag;
                Ok(())
            }
        }
    }

    /// Checks and strips the tag of chunk `counter` in place; `Err` when it does not
    /// authenticate (damaged, reordered, truncated or forged).
    pub fn open(&mut self, counter: u32, flags: u8, body: &mut Vec<u8>) -> Result<(), ()> {
        match self {
            ChunkGuard::Aes {
                cipher,
                prefix,
                aad,
            } => {
                let n = nonce(prefix, counter, flags & FLAG_LAST != 0);
                cipher
                    .decrypt_in_place(&Nonce::from(n), aad, body)
                    .map_err(|_| ())
            }
            ChunkGuard::Chain { prev } => {
                let body_len = body.len().checked_sub(CHAIN_TAG_LEN).ok_or(())?;
                let tag = chain_tag(prev, counter, flags, &body[..body_len]);
                if tag[..] != body[body_len..] {
                    return Err(());
                }
                *prev = tag;
                body.truncate(body_len);
                Ok(())
            }
        }
    }
}
