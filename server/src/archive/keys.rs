//! Keys: 256-bit master keys with their ids, keyrings, passphrases, and how an archive's data
//! key is wrapped under them (HKDF-SHA256 for a master key, Argon2id for a passphrase).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hkdf::Hkdf;
use sha2::Sha256;
use std::fmt;

use super::error::ArchiveError;

const KEY_ID_INFO: &[u8] = b"monoskope-backup key-id v1";
const WRAP_INFO: &[u8] = b"monoskope-backup key-wrap v1";

/// Argon2id costs written into an archive's key envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for Argon2Params {
    /// OWASP's minimum for Argon2id: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Largest Argon2 costs a reader accepts from a header, so a hostile archive cannot make the
/// reader allocate or spin without bound.
pub const ARGON2_MAX: Argon2Params = Argon2Params {
    memory_kib: 1024 * 1024,
    iterations: 64,
    parallelism: 16,
};

/// A 256-bit master key. Its bytes are never printed.
#[derive(Clone)]
pub struct MasterKey {
    bytes: [u8; 32],
    id: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut okm = [0u8; 8];
        Hkdf::<Sha256>::new(None, &bytes)
            .expand(KEY_ID_INFO, &mut okm)
            .expect("8 bytes is a valid HKDF-SHA256 output length");
        let id = okm.iter().map(|b| format!("{b:02x}")).collect();
        Self { bytes, id }
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        Self::from_bytes(bytes)
    }

    /// A key from standard base64 of exactly 32 bytes (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, ArchiveError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| ArchiveError::InvalidKey("not valid base64".into()))?;
        let bytes: [u8; 32] = raw.try_into().map_err(|v: Vec<u8>| {
            ArchiveError::InvalidKey(format!("a key is 32 bytes, got {}", v.len()))
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key as standard base64, for writing a key file.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.bytes)
    }

    /// The key's id: 16 hex digits derived one-way from the key (HKDF-SHA256).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn derive_wrap_key(&self, salt: &[u8]) -> [u8; 32] {
        let mut kek = [0u8; 32];
        Hkdf::<Sha256>::new(Some(salt), &self.bytes)
            .expand(WRAP_INFO, &mut kek)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        kek
    }
}

/// Several master keys; the primary one writes, all of them read.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl Keyring {
    /// A keyring whose first key is the primary. Fails when empty.
    pub fn new(keys: Vec<MasterKey>) -> Result<Self, ArchiveError> {
        if keys.is_empty() {
            return Err(ArchiveError::InvalidKey("the keyring holds no key".into()));
        }
        Ok(Self { keys })
    }

    /// Parses a key file: one base64 key per line, the first the primary; blank lines and lines
    /// starting with `#` are ignored.
    pub fn parse(text: &str) -> Result<Self, ArchiveError> {
        let keys = text
            .lines()
            .map(str::trim)
            .enumerate()
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .map(|(i, l)| {
                MasterKey::from_base64(l).map_err(|e| {
                    let why = match e {
                        ArchiveError::InvalidKey(m) => m,
                        e => e.to_string(),
                    };
                    ArchiveError::InvalidKey(format!("line {} of the key file: {why}", i + 1))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(keys)
    }

    /// The key that writes new archives.
    pub fn primary(&self) -> &MasterKey {
        &self.keys[0]
    }

    /// The key with this id.
    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// The ids of every key, primary first.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }
}

/// A passphrase. Never printed.
#[derive(Clone)]
pub struct Passphrase(String);

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

impl Passphrase {
    /// Wraps a non-empty passphrase.
    pub fn new(p: impl Into<String>) -> Result<Self, ArchiveError> {
        let p = p.into();
        if p.is_empty() {
            return Err(ArchiveError::InvalidKey("the passphrase is empty".into()));
        }
        Ok(Self(p))
    }

    pub(crate) fn derive_wrap_key(
        &self,
        salt: &[u8],
        params: Argon2Params,
    ) -> Result<[u8; 32], ArchiveError> {
        let p = argon2::Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            Some(32),
        )
        .map_err(|e| ArchiveError::HeaderCorrupt(format!("bad Argon2id parameters: {e}")))?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
        let mut kek = [0u8; 32];
        argon
            .hash_password_into(self.0.as_bytes(), salt, &mut kek)
            .map_err(|e| ArchiveError::HeaderCorrupt(format!("Argon2id failed: {e}")))?;
        Ok(kek)
    }
}

/// What a reader may use to open archives.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    /// Master keys.
    pub keyring: Option<Keyring>,
    /// A passphrase.
    pub passphrase: Option<Passphrase>,
    /// Identities of recipients (age X25519).
    pub identities: Vec<super::recipients::Identity>,
}

impl Keys {
    /// No key: opens unencrypted archives only.
    pub fn none() -> Self {
        Self::default()
    }

    /// Only this keyring.
    pub fn keyring(k: Keyring) -> Self {
        Self {
            keyring: Some(k),
            ..Self::default()
        }
    }

    /// Only these identities.
    pub fn identities(ids: Vec<super::recipients::Identity>) -> Self {
        Self {
            identities: ids,
            ..Self::default()
        }
    }

    /// Whether no key, passphrase or identity is held.
    pub fn is_empty(&self) -> bool {
        self.keyring.is_none() && self.passphrase.is_none() && self.identities.is_empty()
    }
}

/// How a writer protects an archive.
#[derive(Clone, Debug)]
pub enum Protection {
    /// Encrypt under this master key (the keyring's primary).
    Key(MasterKey),
    /// Encrypt under a key derived from this passphrase.
    Passphrase(Passphrase, Argon2Params),
    /// Encrypt to these recipients (write-only: reading takes one of their identities).
    Recipients(Vec<super::recipients::Recipient>),
    /// No encryption, only the SHA-256 integrity chain. Must be asked for explicitly.
    Unencrypted,
}

pub(crate) fn wrap(kek: &[u8; 32], nonce: &[u8; 12], data_key: &[u8; 32], aad: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(kek.into());
    cipher
        .encrypt(&Nonce::from(*nonce), Payload { msg: data_key, aad })
        .expect("AES-GCM encryption of 32 bytes cannot fail")
}

pub(crate) fn unwrap(kek: &[u8; 32], nonce: &[u8], wrapped: &[u8], aad: &[u8]) -> Option<[u8; 32]> {
    let nonce = Nonce::try_from(nonce).ok()?;
    let cipher = Aes256Gcm::new(kek.into());
    let dk = cipher.decrypt(&nonce, Payload { msg: wrapped, aad }).ok()?;
    dk.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_stable_and_distinct() {
        let a = MasterKey::from_bytes([1; 32]);
        let b = MasterKey::from_bytes([2; 32]);
        assert_eq!(a.id(), MasterKey::from_bytes([1; 32]).id());
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id().len(), 16);
        assert!(!format!("{a:?}").contains(&a.to_base64()));
    }

    #[test]
    fn keyring_file_parsing() {
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        let text = format!(
            "# rotated 2026-11\n{}\n\n{}\n",
            a.to_base64(),
            b.to_base64()
        );
        let ring = Keyring::parse(&text).expect("valid keyring");
        assert_eq!(ring.primary().id(), a.id());
        assert!(ring.get(b.id()).is_some());
        assert!(Keyring::parse("# nothing\n").is_err());
        let err = Keyring::parse("AAAA\n").expect_err("short key");
        assert!(err.to_string().contains("32 bytes, got 3"), "{err}");
        // The error names the file's line (comments and blank lines count) and says why once.
        let err = Keyring::parse(&format!("# primary\n{}\n\nnot base64!\n", a.to_base64()))
            .expect_err("bad second key");
        assert_eq!(
            err.to_string(),
            "invalid key: line 4 of the key file: not valid base64"
        );
    }
}
