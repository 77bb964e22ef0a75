//! Key rotation without re-encrypting: a backup's data key is re-wrapped to the current key or
//! recipients, read with any key or identity held. Only small objects change: the archive's key
//! file (`<archive>.keys`), the watermark (a small index, re-encoded whole), and the manifest's
//! key id. The archive's chunks are neither re-encrypted nor re-uploaded.
//!
//! Order, so that an interruption at any point leaves the backup readable by the old or the new
//! key, with a manifest that names one of its wraps: the key file is written with the new wrap
//! *and* the old ones first; then the watermark and the manifest (naming the new key); only then,
//! with `remove_old`, a second write of the key file leaves the new wrap alone. Each write
//! replaces one object atomically; running the rewrap again finishes what an interruption left.

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
    Ok(RewrapReport {
        id: m.id.clone(),
        key_id,
        key_kind,
        changed,
        still_open_with: still,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::archive::{ArchiveWriter, Keyring, MasterKey, Record, WriterOptions};
    use crate::destination::manifest::{Manifest, MANIFEST_FORMAT};
    use crate::destination::{DestinationError, ObjectInfo, ObjectReader, Upload};

    /// A destination whose writes fail from the `n`-th on: a rewrap cut off at that point.
    #[derive(Debug)]
    struct CutAfter {
        inner: Arc<dyn Destination>,
        left: AtomicUsize,
    }

    impl CutAfter {
        fn write(&self) -> Result<(), DestinationError> {
            let left = self.left.load(Ordering::SeqCst);
            if left == 0 {
                return Err(DestinationError::Unavailable("cut off".into()));
            }
            self.left.store(left - 1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl Destination for CutAfter {
        fn url(&self) -> String {
            self.inner.url()
        }
        async fn upload(&self, key: &str) -> Result<Box<dyn Upload>, DestinationError> {
            self.write()?;
            self.inner.upload(key).await
        }
        async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), DestinationError> {
            self.write()?;
            self.inner.put(key, bytes).await
        }
        async fn get(&self, key: &str) -> Result<ObjectReader, DestinationError> {
            self.inner.get(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, DestinationError> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<(), DestinationError> {
            self.write()?;
            self.inner.delete(key).await
        }
        async fn probe(&self) -> Result<(), DestinationError> {
            self.inner.probe().await
        }
        async fn abort_uploads(&self, key: &str) -> Result<u64, DestinationError> {
            self.inner.abort_uploads(key).await
        }
        async fn cleanup_stale_uploads(&self, age: i64) -> Result<u64, DestinationError> {
            self.inner.cleanup_stale_uploads(age).await
        }
    }

    fn ring(k: &MasterKey) -> Keys {
        Keys::keyring(Keyring::new(vec![k.clone()]).expect("ring"))
    }

    /// A complete backup under `key` at `dest`, as a backup writes it.
    async fn backup(dest: &dyn Destination, key: &MasterKey) -> Manifest {
        let id = "20261206T120000000Z-0000aaaa";
        let mut opts = WriterOptions::new(id, Protection::Key(key.clone()));
        opts.key_file = true;
        let mut w = ArchiveWriter::new(Vec::new(), opts).expect("writer");
        let kf = w.key_file().cloned().expect("key file");
        for v in 1..=5u64 {
            w.append(&Record {
                aggregate_type: "User".into(),
                aggregate_id: "0b8b3b4e-6f4a-4c8e-9d2b-1f2a3b4c5d6e".into(),
                aggregate_version: v,
                event_type: "UserUpdated".into(),
                timestamp: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000 + v as i64,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .expect("append");
        }
        let (bytes, footer) = w.finish().expect("finish");
        let archive_key = layout::archive_key(id);
        use sha2::Digest;
        let sha: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let size = bytes.len() as u64;
        dest.put(&archive_key, bytes).await.expect("archive");
        keyfile::store(dest, &archive_key, &kf)
            .await
            .expect("key file");
        let mut wm = crate::watermark::Watermark::default();
        let mut keys = crate::watermark::AggregateKeys::default();
        wm.observe_into("User", "0b8b3b4e-6f4a-4c8e-9d2b-1f2a3b4c5d6e", 5, &mut keys);
        let wk = wm
            .store(dest, id, Protection::Key(key.clone()), 3)
            .await
            .expect("watermark");
        let m = Manifest {
            format: MANIFEST_FORMAT.into(),
            id: id.into(),
            kind: "full".into(),
            parent_id: None,
            // Around the archive's own creation time (its header's), as a backup's are.
            created_at: (chrono::Utc::now() - chrono::Duration::minutes(1))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            completed_at: (chrono::Utc::now() + chrono::Duration::minutes(1))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            created_by: "test".into(),
            source: "test".into(),
            event_count: footer.event_count,
            archive_bytes: size,
            archive_sha256: sha,
            archive_key,
            first_event_time: crate::time::rfc3339(footer.first_timestamp.as_ref()),
            last_event_time: crate::time::rfc3339(footer.last_timestamp.as_ref()),
            events_sha256: footer
                .events_sha256
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            key_id: key.id().to_string(),
            key_kind: Some("master-key".into()),
            format_version: crate::archive::version_for(&Protection::Key(key.clone()), true, false),
            watermark_key: Some(wk),
            locked_until: None,
            note: None,
            compacted: None,
        };
        dest.put(&layout::manifest_key(id), m.to_json())
            .await
            .expect("manifest");
        m
    }

    /// Which of the keys the backup verifies with (every chunk, footer and manifest).
    async fn opens_with(dest: &dyn Destination, keys: &[&MasterKey]) -> Vec<bool> {
        let bytes = dest
            .get_bytes(&layout::manifest_key("20261206T120000000Z-0000aaaa"))
            .await
            .expect("manifest");
        let m = Manifest::parse_at("20261206T120000000Z-0000aaaa", &bytes).expect("parse");
        let mut out = Vec::new();
        for k in keys {
            let r = crate::engine::verify::verify(dest, Some(&ring(k)), &m)
                .await
                .expect("verify");
            out.push(r.ok);
        }
        out
    }

    #[tokio::test]
    async fn a_rewrap_cut_off_at_any_write_leaves_the_backup_readable_by_one_key() {
        let (old, new) = (MasterKey::generate(), MasterKey::generate());
        let both = Keys::keyring(Keyring::new(vec![new.clone(), old.clone()]).expect("ring"));
        for cut in 0..6 {
            let dir = tempfile::tempdir().expect("dir");
            let dest = crate::destination::open(
                &format!("file://{}", dir.path().display()),
                &Default::default(),
            )
            .await
            .expect("dest");
            let m = backup(dest.as_ref(), &old).await;
            let cut_dest = CutAfter {
                inner: dest.clone(),
                left: AtomicUsize::new(cut),
            };
            let r = rewrap(&cut_dest, &both, &Protection::Key(new.clone()), &m, true).await;
            let open = opens_with(dest.as_ref(), &[&old, &new]).await;
            assert!(
                open.iter().any(|o| *o),
                "cut after {cut} writes ({r:?}): neither key verifies the backup"
            );
            // Run again to its end: only the new key reads it.
            let fresh = {
                let bytes = dest
                    .get_bytes(&layout::manifest_key(&m.id))
                    .await
                    .expect("manifest");
                Manifest::parse_at(&m.id, &bytes).expect("parse")
            };
            rewrap(
                dest.as_ref(),
                &both,
                &Protection::Key(new.clone()),
                &fresh,
                true,
            )
            .await
            .expect("rerun");
            assert_eq!(
                opens_with(dest.as_ref(), &[&old, &new]).await,
                vec![false, true],
                "cut {cut}"
            );
        }
    }
}
