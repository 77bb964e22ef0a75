//! Key rotation without re-encrypting: a backup's data key is re-wrapped to the current key or
//! recipients, read with any key or identity held. Only small objects change: the archive's key
//! file (`<archive>.keys`), the watermark (a small index, re-encoded whole), and the manifest's
//! key id. The archive's chunks are neither re-encrypted nor re-uploaded.
//!
//! Order, so that an interruption at any point leaves the backup readable by the old or the new
//! key: the key file is written with the new wrap *and* the old ones first; with `remove_old`, a
//! second write then leaves only the new wrap. Each write replaces one object atomically. The
//! watermark and manifest follow.

use crate::archive::envelope::{self, KeyFile, Rewrapped};
use crate::archive::{Keys, Protection};
use crate::destination::manifest::Manifest;
use crate::destination::{keyfile, layout, Destination};

/// What a rewrap did to one backup.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RewrapReport {
    /// Backup id.
    pub id: String,
    /// The key id new reads use.
    pub key_id: String,
    /// The kind of that key.
    pub key_kind: &'static str,
    /// Whether anything was written (false: already wrapped as asked).
    pub changed: bool,
    /// Key ids that still open the backup besides the new one; with `--remove-old`, only the
    /// in-archive wrap of a format 1.0 archive, which no rewrap can remove.
    pub still_open_with: Vec<String>,
}

/// The head (prefix, header, in-archive envelope) of the archive stored at `key`.
async fn head_of(dest: &dyn Destination, key: &str) -> anyhow::Result<envelope::Head> {
    let reader = dest.get(key).await?;
    let head = tokio::task::spawn_blocking(move || {
        let mut r =
            std::io::BufReader::with_capacity(64 * 1024, tokio_util::io::SyncIoBridge::new(reader));
        crate::archive::read_head(&mut r).map(|(head, _)| head)
    })
    .await??;
    Ok(head)
}

/// Re-wraps the backup of `m` to `to`, reading with `keys`. Running it again after an
/// interruption finishes what is left; running it on a backup already wrapped as asked writes
/// nothing.
pub async fn rewrap(
    dest: &dyn Destination,
    keys: &Keys,
    to: &Protection,
    m: &Manifest,
    remove_old: bool,
) -> anyhow::Result<RewrapReport> {
    let old_file = keyfile::load(dest, &m.archive_key).await?;
    let head = head_of(dest, &m.archive_key).await?;
    let (keys2, to2, head2, old2) = (keys.clone(), to.clone(), head.clone(), old_file.clone());
    let first: Rewrapped = tokio::task::spawn_blocking(move || {
        envelope::rewrap(&head2, old2.as_ref(), &keys2, &to2, false)
    })
    .await??;
    let (key_id, key_kind) = envelope::protection_ids(to);
    let mut changed = false;
    if first.changed {
        // The new wrap beside the old ones: either key reads while this runs.
        keyfile::store(dest, &m.archive_key, &first.key_file).await?;
        changed = true;
    }
    let mut still = first.still_open_with.clone();
    if remove_old {
        let only_new = KeyFile {
            envelopes: first.key_file.envelopes[..1].to_vec(),
        };
        let current = if first.changed {
            Some(&first.key_file)
        } else {
            old_file.as_ref()
        };
        if current != Some(&only_new) {
            keyfile::store(dest, &m.archive_key, &only_new).await?;
            changed = true;
        }
        // Only a format 1.0 archive's own wrap is left, which no rewrap can remove.
        still = if head.envelope.kdf != envelope::KDF_KEY_FILE
            && head.envelope.kdf != envelope::KDF_NONE
        {
            envelope::wrap_ids(&head.envelope, None)
        } else {
            Vec::new()
        };
    }
    // The watermark: a small index, re-encoded whole under the new protection when it is not.
    if let Some(wk) = &m.watermark_key {
        let wm = head_of(dest, wk).await?;
        if envelope::wrap_ids(&wm.envelope, None) != vec![key_id.clone()] {
            let w = crate::watermark::Watermark::load(dest, keys, wk, &m.id).await?;
            let level = crate::archive::DEFAULT_COMPRESSION_LEVEL;
            w.store(dest, &m.id, to.clone(), level).await?;
            changed = true;
        }
    }
    if m.key_id != key_id || m.key_kind.as_deref() != Some(key_kind) {
        let mut m2 = m.clone();
        m2.key_id = key_id.clone();
        m2.key_kind = Some(key_kind.to_string());
        dest.put(&layout::manifest_key(&m.id), m2.to_json()).await?;
        changed = true;
    }
    Ok(RewrapReport {
        id: m.id.clone(),
        key_id,
        key_kind,
        changed,
        still_open_with: still,
    })
}
