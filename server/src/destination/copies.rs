//! Copies of the backups in a second place (3-2-1): every complete backup of the primary
//! destination copied to another bucket, region, endpoint or directory — the archive streamed in
//! parts, its key file and watermark, the manifest last (so a copy is complete or invisible, as at
//! the primary) — and verified there: the copied archive's size and SHA-256 must be the
//! manifest's, or the copy's manifest is removed again.

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::manifest::{list_complete, Manifest};
use super::{layout, Destination, DestinationError, PART_SIZE};

/// What one pass of [`sync`] did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Backups copied now, oldest first.
    pub copied: Vec<String>,
    /// The completion time (RFC 3339) of the oldest backup still missing at the copy after the
    /// pass, `None` when the copy holds every backup.
    pub behind_since: Option<String>,
}

/// Streams the object `key` from `from` to `to`; returns its size and SHA-256 (hex).
async fn copy_object(
    from: &dyn Destination,
    to: &dyn Destination,
    key: &str,
) -> anyhow::Result<(u64, String)> {
    let mut reader = from.get(key).await?;
    // Lazy: most archives copied are small (segments every few seconds), one PutObject each.
    let mut upload = to.upload_lazily(key).await?;
    let mut sha = Sha256::new();
    let mut total = 0u64;
    loop {
        let mut part = Vec::with_capacity(PART_SIZE);
        while part.len() < PART_SIZE {
            let n = (&mut reader)
                .take((PART_SIZE - part.len()) as u64)
                .read_to_end(&mut part)
                .await;
            match n {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    upload.abort().await;
                    return Err(anyhow::anyhow!("reading {key}: {e}"));
                }
            }
        }
        if part.is_empty() && total > 0 {
            break;
        }
        let last = part.len() < PART_SIZE;
        sha.update(&part);
        total += part.len() as u64;
        if let Err(e) = upload.write_part(part).await {
            upload.abort().await;
            return Err(e.into());
        }
        if last {
            break;
        }
    }
    upload.complete().await?;
    Ok((
        total,
        sha.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

/// Copies a small object if it exists at `from`.
async fn copy_small(from: &dyn Destination, to: &dyn Destination, key: &str) -> anyhow::Result<()> {
    match from.get_bytes(key).await {
        Ok(bytes) => Ok(to.put(key, bytes).await?),
        Err(DestinationError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Copies the backup of `m` from `from` to `to` and verifies the copy.
pub async fn copy_backup(
    from: &dyn Destination,
    to: &dyn Destination,
    m: &Manifest,
) -> anyhow::Result<()> {
    let (bytes, sha) = copy_object(from, to, &m.archive_key).await?;
    if bytes != m.archive_bytes || sha != m.archive_sha256 {
        let _ = to.delete(&m.archive_key).await;
        anyhow::bail!(
            "the copy of backup {} is not what the manifest says ({bytes} bytes, SHA-256 {sha}); the primary may be damaged",
            m.id
        );
    }
    copy_small(from, to, &layout::keys_key(&m.archive_key)).await?;
    if let Some(w) = &m.watermark_key {
        copy_small(from, to, w).await?;
    }
    // Read back what the copy holds before it becomes visible.
    let mut r = to.get(&m.archive_key).await?;
    let mut sha2 = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n2 = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        sha2.update(&buf[..n]);
        n2 += n as u64;
    }
    let sha2: String = sha2.finalize().iter().map(|b| format!("{b:02x}")).collect();
    anyhow::ensure!(
        n2 == m.archive_bytes && sha2 == m.archive_sha256,
        "the copy of backup {} reads back differently at {}",
        m.id,
        to.url()
    );
    to.put(&layout::manifest_key(&m.id), m.to_json()).await?;
    Ok(())
}

/// Copies to `to` every complete backup of `from` it does not hold yet, oldest first; stops at
/// the first failure (the next pass retries) and reports since when the copy is behind. Fails
/// only when neither side can be listed.
pub async fn sync(from: &dyn Destination, to: &dyn Destination) -> anyhow::Result<SyncReport> {
    let mut primary = list_complete(from).await?;
    primary.reverse(); // oldest first
    let held: std::collections::HashSet<String> = match list_complete(to).await {
        Ok(v) => v.into_iter().map(|m| m.id).collect(),
        // A new directory copy: nothing copied yet.
        Err(e) if super::not_created(e.chain()) => Default::default(),
        Err(e) => return Err(e),
    };
    let mut report = SyncReport::default();
    for m in primary.iter().filter(|m| !held.contains(&m.id)) {
        if let Err(e) = copy_backup(from, to, m).await {
            tracing::warn!(backup_id = %m.id, copy = %to.url(), error = %monoskope_backup_client::error_line(e.as_ref()), "copy failed; it is retried");
            report.behind_since = Some(m.completed_at.clone());
            return Ok(report);
        }
        report.copied.push(m.id.clone());
    }
    Ok(report)
}
