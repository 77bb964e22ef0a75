//! An archive's data key and its wraps (docs/ARCHIVE_FORMAT.md, "Key envelope" and "Key file").
//!
//! Every wrap authenticates itself against the archive's prefix P (magic, versions, header): a
//! master-key or passphrase wrap is AES-256-GCM with P as associated data; a recipients wrap is an
//! age file whose payload is the data key followed by SHA-256(P). So a wrap copied from another
//! archive never opens this one, and the wraps may live outside the archive — in its key file,
//! which a rewrap replaces without touching the chunks.

use std::io::{Read, Write};

pub use monoskope_backup_api::archive::v1::{KeyEnvelope, KeyFile};
use prost::Message;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::error::ArchiveError;
use super::keys::{self, Argon2Params, Keys, Protection, ARGON2_MAX};

/// kdf of a master-key wrap.
pub const KDF_MASTER_KEY: &str = "hkdf-sha256";
/// kdf of a passphrase wrap.
pub const KDF_PASSPHRASE: &str = "argon2id";
/// kdf of a recipients wrap (format 1.1).
pub const KDF_RECIPIENTS: &str = "age-x25519";
/// kdf of the in-archive envelope of an archive whose wraps are in its key file (format 1.1).
pub const KDF_KEY_FILE: &str = "key-file";
/// kdf of an unencrypted archive.
pub const KDF_NONE: &str = "none";

/// Largest key file a reader accepts.
pub const MAX_KEY_FILE_LEN: usize = 1 << 20;
/// Largest age file inside a wrap.
const MAX_AGE_FILE_LEN: usize = 64 * 1024;

/// The key id (the recipients' ids joined by commas) and kind of key of archives written with
/// `protection`, as manifests and `list` show them.
pub fn protection_ids(protection: &Protection) -> (String, &'static str) {
    match protection {
        Protection::Key(k) => (k.id().to_string(), "master-key"),
        Protection::Passphrase(..) => ("passphrase".into(), "passphrase"),
        Protection::Recipients(rs) => (
            rs.iter().map(|r| r.id()).collect::<Vec<_>>().join(","),
            "recipients",
        ),
        Protection::Unencrypted => ("none".into(), "none"),
    }
}

/// The kind of key a manifest's or record's key id names, from the id's shape (our ids are
/// unambiguous): `none`, `passphrase`, `recipients` (`age-…`) or `master-key`.
pub fn kind_of_key_id(id: &str) -> &'static str {
    match id {
        "none" => "none",
        "passphrase" => "passphrase",
        "" => "unknown",
        id if id.starts_with("age-") => "recipients",
        _ => "master-key",
    }
}

/// One wrap of `data_key` for `protection`, bound to the archive's prefix `aad`.
pub(crate) fn wrap(
    protection: &Protection,
    data_key: &[u8; 32],
    aad: &[u8],
) -> Result<KeyEnvelope, ArchiveError> {
    let mut rng = rand::rngs::OsRng;
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let mut wrap_nonce = [0u8; 12];
    rng.fill_bytes(&mut wrap_nonce);
    let mut env = KeyEnvelope {
        salt: salt.to_vec(),
        wrap_nonce: wrap_nonce.to_vec(),
        ..Default::default()
    };
    match protection {
        Protection::Key(k) => {
            env.kdf = KDF_MASTER_KEY.into();
            env.key_id = k.id().to_string();
            env.wrapped_key = keys::wrap(&k.derive_wrap_key(&salt), &wrap_nonce, data_key, aad);
        }
        Protection::Passphrase(p, params) => {
            env.kdf = KDF_PASSPHRASE.into();
            env.key_id = "passphrase".into();
            env.argon2_memory_kib = params.memory_kib;
            env.argon2_iterations = params.iterations;
            env.argon2_parallelism = params.parallelism;
            let kek = p.derive_wrap_key(&salt, *params)?;
            env.wrapped_key = keys::wrap(&kek, &wrap_nonce, data_key, aad);
        }
        Protection::Recipients(rs) => {
            if rs.is_empty() {
                return Err(ArchiveError::InvalidKey(
                    "no recipient to encrypt to".into(),
                ));
            }
            env.kdf = KDF_RECIPIENTS.into();
            env.key_id = rs[0].id().to_string();
            env.recipients = rs.iter().map(|r| r.id().to_string()).collect();
            env.salt.clear();
            env.wrap_nonce.clear();
            let enc =
                age::Encryptor::with_recipients(rs.iter().map(|r| &r.inner as &dyn age::Recipient))
                    .map_err(|e| {
                        ArchiveError::InvalidKey(format!("cannot encrypt to the recipients: {e}"))
                    })?;
            let mut out = Vec::with_capacity(512);
            let mut w = enc.wrap_output(&mut out)?;
            w.write_all(data_key)?;
            w.write_all(&Sha256::digest(aad))?;
            w.finish()?;
            env.age_file = out;
        }
        Protection::Unencrypted => {
            return Err(ArchiveError::InvalidKey(
                "an unencrypted archive has no data key to wrap".into(),
            ))
        }
    }
    Ok(env)
}

/// Why one wrap did not give the data key.
enum Miss {
    /// The reader holds no key of this wrap's kind.
    NoKeyOfKind,
    /// The reader holds keys of this kind, none of them this wrap's.
    OtherKeys(Vec<String>),
    /// A key that should open it did not: damaged, tampered with, or from another archive.
    Failed(ArchiveError),
}

fn unwrap_one(env: &KeyEnvelope, keys: &Keys, aad: &[u8]) -> Result<[u8; 32], Miss> {
    let salt_ok = env.salt.len() == 16;
    let corrupt = |m: &str| Miss::Failed(ArchiveError::HeaderCorrupt(m.into()));
    match env.kdf.as_str() {
        KDF_MASTER_KEY => {
            let ring = keys.keyring.as_ref().ok_or(Miss::NoKeyOfKind)?;
            let key = ring
                .get(&env.key_id)
                .ok_or_else(|| Miss::OtherKeys(ring.ids()))?;
            if !salt_ok {
                return Err(corrupt("key envelope salt is not 16 bytes"));
            }
            keys::unwrap(&key.derive_wrap_key(&env.salt), &env.wrap_nonce, &env.wrapped_key, aad)
                .ok_or_else(|| corrupt("the data key does not unwrap under the matching key: header or key envelope damaged, or the envelope belongs to another archive"))
        }
        KDF_PASSPHRASE => {
            let pass = keys.passphrase.as_ref().ok_or(Miss::NoKeyOfKind)?;
            if !salt_ok {
                return Err(corrupt("key envelope salt is not 16 bytes"));
            }
            let params = Argon2Params {
                memory_kib: env.argon2_memory_kib,
                iterations: env.argon2_iterations,
                parallelism: env.argon2_parallelism,
            };
            if params.memory_kib > ARGON2_MAX.memory_kib
                || params.iterations > ARGON2_MAX.iterations
                || params.parallelism > ARGON2_MAX.parallelism
            {
                return Err(Miss::Failed(ArchiveError::HeaderCorrupt(format!(
                    "Argon2id parameters {params:?} exceed the reader's limits"
                ))));
            }
            let kek = pass
                .derive_wrap_key(&env.salt, params)
                .map_err(Miss::Failed)?;
            keys::unwrap(&kek, &env.wrap_nonce, &env.wrapped_key, aad)
                .ok_or(Miss::Failed(ArchiveError::WrongPassphrase))
        }
        KDF_RECIPIENTS => {
            if keys.identities.is_empty() {
                return Err(Miss::NoKeyOfKind);
            }
            if env.age_file.len() > MAX_AGE_FILE_LEN {
                return Err(corrupt("the key envelope's age file is too large"));
            }
            let held: Vec<String> = keys.identities.iter().map(|i| i.id().to_string()).collect();
            let dec = age::Decryptor::new(env.age_file.as_slice()).map_err(|e| {
                Miss::Failed(ArchiveError::HeaderCorrupt(format!(
                    "the key envelope's age file does not parse: {e}"
                )))
            })?;
            let mut r = match dec.decrypt(
                keys.identities
                    .iter()
                    .map(|i| &i.inner as &dyn age::Identity),
            ) {
                Ok(r) => r,
                Err(age::DecryptError::NoMatchingKeys) => return Err(Miss::OtherKeys(held)),
                Err(e) => {
                    return Err(Miss::Failed(ArchiveError::HeaderCorrupt(format!(
                        "the key envelope's age file does not decrypt: {e}"
                    ))))
                }
            };
            let mut payload = Vec::with_capacity(64);
            (&mut r).take(65).read_to_end(&mut payload).map_err(|e| {
                Miss::Failed(ArchiveError::HeaderCorrupt(format!(
                    "the key envelope's age file does not decrypt: {e}"
                )))
            })?;
            if payload.len() != 64 {
                return Err(corrupt("the key envelope's age file holds no data key"));
            }
            if payload[32..] != Sha256::digest(aad)[..] {
                return Err(corrupt(
                    "the key envelope belongs to another archive (its binding to this archive's header does not match)",
                ));
            }
            let mut dk = [0u8; 32];
            dk.copy_from_slice(&payload[..32]);
            Ok(dk)
        }
        KDF_KEY_FILE => Err(Miss::NoKeyOfKind),
        other => Err(Miss::Failed(ArchiveError::HeaderCorrupt(format!(
            "unknown key derivation {other:?}"
        )))),
    }
}

/// The ids of the keys a wrap can be opened with.
fn ids_of(env: &KeyEnvelope) -> Vec<String> {
    if env.kdf == KDF_RECIPIENTS && !env.recipients.is_empty() {
        env.recipients.clone()
    } else {
        vec![env.key_id.clone()]
    }
}

/// The data key of an archive whose in-archive envelope is `inline` and whose key file (if it
/// has one) holds `key_file`: the first wrap any of `keys` opens. The errors say what is
/// missing: no key of the wraps' kinds (`KeyRequired`), only other keys (`WrongKey`), or a wrap
/// that a matching key does not open (damaged or from another archive).
pub(crate) fn unwrap(
    inline: &KeyEnvelope,
    key_file: Option<&KeyFile>,
    keys: &Keys,
    aad: &[u8],
) -> Result<[u8; 32], ArchiveError> {
    let mut wraps: Vec<&KeyEnvelope> = Vec::new();
    if let Some(f) = key_file {
        wraps.extend(f.envelopes.iter());
    }
    if inline.kdf != KDF_KEY_FILE {
        wraps.push(inline);
    } else if key_file.is_none() {
        return Err(ArchiveError::KeyFileMissing {
            key_id: inline.key_id.clone(),
        });
    }
    let mut wanted: Vec<String> = Vec::new();
    let mut available: Vec<String> = Vec::new();
    let mut failure = None;
    for env in wraps {
        match unwrap_one(env, keys, aad) {
            Ok(dk) => return Ok(dk),
            Err(Miss::NoKeyOfKind) => wanted.extend(ids_of(env)),
            Err(Miss::OtherKeys(held)) => {
                wanted.extend(ids_of(env));
                for h in held {
                    if !available.contains(&h) {
                        available.push(h);
                    }
                }
            }
            Err(Miss::Failed(e)) => {
                wanted.extend(ids_of(env));
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    wanted.dedup();
    if wanted.is_empty() {
        return Err(ArchiveError::HeaderCorrupt(
            "the archive's key file holds no wrap".into(),
        ));
    }
    if available.is_empty() {
        Err(ArchiveError::KeyRequired {
            key_id: wanted.join(", "),
        })
    } else {
        Err(ArchiveError::WrongKey {
            archive_key_id: wanted.join(", "),
            available,
        })
    }
}

/// The key ids of every wrap of an archive (its key file's, newest first, then the in-archive
/// one's), each wrap's recipients joined by commas: what a manifest's `key_id` must be one of.
pub fn wrap_ids(inline: &KeyEnvelope, key_file: Option<&KeyFile>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let wraps = key_file
        .map(|f| f.envelopes.iter().collect::<Vec<_>>())
        .unwrap_or_default();
    for env in wraps
        .into_iter()
        .chain((inline.kdf != KDF_KEY_FILE).then_some(inline))
    {
        let id = ids_of(env).join(",");
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// Parses a key file's bytes.
pub fn parse_key_file(bytes: &[u8]) -> Result<KeyFile, ArchiveError> {
    if bytes.len() > MAX_KEY_FILE_LEN {
        return Err(ArchiveError::HeaderCorrupt(format!(
            "the key file is {} bytes, more than a reader accepts ({MAX_KEY_FILE_LEN})",
            bytes.len()
        )));
    }
    let f = KeyFile::decode(bytes)
        .map_err(|e| ArchiveError::HeaderCorrupt(format!("the key file does not decode: {e}")))?;
    if f.envelopes.is_empty() {
        return Err(ArchiveError::HeaderCorrupt(
            "the archive's key file holds no wrap".into(),
        ));
    }
    if f.envelopes
        .iter()
        .any(|e| e.kdf == KDF_KEY_FILE || e.kdf == KDF_NONE)
    {
        return Err(ArchiveError::HeaderCorrupt(
            "the key file holds a wrap that wraps nothing".into(),
        ));
    }
    Ok(f)
}

/// The key file's bytes.
pub fn encode_key_file(f: &KeyFile) -> Vec<u8> {
    f.encode_to_vec()
}

/// An archive's head: its authenticated prefix P (magic through header) and its in-archive key
/// envelope; all a rewrap needs of the archive itself.
#[derive(Debug, Clone)]
pub struct Head {
    /// Bytes 0 … 16+H.
    pub prefix: Vec<u8>,
    /// The in-archive envelope.
    pub envelope: KeyEnvelope,
    /// The format version `major.minor` of the prefix.
    pub version: (u16, u16),
}

/// What a rewrap made of a backup's wraps.
#[derive(Debug)]
pub struct Rewrapped {
    /// The new key file.
    pub key_file: KeyFile,
    /// Key ids that still open the archive after it, other than the new ones (the old wraps
    /// kept, or the in-archive wrap of a format 1.0 archive, which no rewrap can remove).
    pub still_open_with: Vec<String>,
    /// Whether the new key file differs from the old (false: already wrapped as asked).
    pub changed: bool,
}

/// Re-wraps an archive's data key to `to` (the writers' current protection), reading it with
/// any of `keys`; the chunks are not touched. The new key file holds the new wrap first, then —
/// unless `remove_old` — every old wrap that is not for the same key. The in-archive wrap of an
/// archive without a key file (format 1.0) stays in the archive and keeps opening it.
pub fn rewrap(
    head: &Head,
    key_file: Option<&KeyFile>,
    keys: &Keys,
    to: &Protection,
    remove_old: bool,
) -> Result<Rewrapped, ArchiveError> {
    let dk = unwrap(&head.envelope, key_file, keys, &head.prefix)?;
    let new = wrap(to, &dk, &head.prefix)?;
    let new_ids = ids_of(&new);
    let mut old: Vec<KeyEnvelope> = key_file.map(|f| f.envelopes.clone()).unwrap_or_default();
    let same_as_new = |e: &KeyEnvelope| e.kdf == new.kdf && ids_of(e) == new_ids;
    let already = old.first().is_some_and(same_as_new) && (!remove_old || old.len() == 1);
    old.retain(|e| !same_as_new(e));
    let mut envelopes = vec![new];
    let mut still = Vec::new();
    if !remove_old {
        for e in &old {
            still.extend(ids_of(e));
        }
        envelopes.extend(old);
    }
    if head.envelope.kdf != KDF_KEY_FILE && head.envelope.kdf != KDF_NONE {
        still.extend(ids_of(&head.envelope));
    }
    still.dedup();
    Ok(Rewrapped {
        key_file: if already {
            key_file.cloned().unwrap_or_default()
        } else {
            KeyFile { envelopes }
        },
        still_open_with: still,
        changed: !already,
    })
}
