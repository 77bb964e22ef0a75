//! Verification: read every byte of an archive at the destination, authenticate every chunk,
//! and check footer, header, manifest and archive digest against each other.

use std::io::Read;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::archive::{ArchiveReader, Keys};
use crate::destination::manifest::Manifest;
use crate::destination::{layout, Destination};

/// What a verification found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    /// Backup id.
    pub id: String,
    /// Whether everything matched.
    pub ok: bool,
    /// Each problem, in words.
    pub problems: Vec<String>,
    /// Events read.
    pub events: u64,
    /// Archive bytes read.
    pub bytes: u64,
}

/// Refuses a name that is neither a backup id nor `latest`, before anything is looked up.
pub fn check_id(id: &str) -> Result<(), super::EngineError> {
    if id == "latest" || layout::valid_id(id) {
        return Ok(());
    }
    Err(super::EngineError::Invalid(format!(
        "{id:?} is not a backup id (expected e.g. 20261124T101500123Z-1a2b3c4d, or \"latest\")"
    )))
}

/// The manifest of `id`, or of the newest complete backup for `latest`.
pub async fn resolve(dest: &dyn Destination, id: &str) -> Result<Manifest, super::EngineError> {
    check_id(id)?;
    if id == "latest" {
        return crate::destination::manifest::list_complete(dest)
            .await
            .map_err(|e| {
                super::EngineError::Unavailable(monoskope_backup_client::error_line(e.as_ref()))
            })?
            .into_iter()
            .next()
            .ok_or_else(|| {
                super::EngineError::NotFound(format!("no complete backup at {}", dest.url()))
            });
    }
    let bytes = match dest.get_bytes(&layout::manifest_key(id)).await {
        Ok(b) => b,
        Err(crate::destination::DestinationError::NotFound(_)) => {
            return Err(super::EngineError::NotFound(format!(
                "backup {id} not found (no manifest at {})",
                dest.url()
            )))
        }
        Err(e) => return Err(super::EngineError::Unavailable(e.to_string())),
    };
    Manifest::parse(&bytes)
        .map_err(|e| super::EngineError::Internal(e.context(format!("manifest of {id}"))))
}

struct HashingReader<R> {
    inner: R,
    sha: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Verifies the backup of `manifest`.
pub async fn verify(
    dest: &dyn Destination,
    keys: &Keys,
    manifest: &Manifest,
) -> anyhow::Result<VerifyReport> {
    let reader = dest
        .get(&manifest.archive_key)
        .await
        .with_context(|| format!("cannot read {}", manifest.archive_key))?;
    let keys = keys.clone();
    let m = manifest.clone();
    tokio::task::spawn_blocking(move || {
        let bridge = tokio_util::io::SyncIoBridge::new(reader);
        let mut hr = HashingReader {
            inner: std::io::BufReader::with_capacity(1 << 20, bridge),
            sha: Sha256::new(),
            bytes: 0,
        };
        let mut problems = Vec::new();
        let mut events = 0;
        match ArchiveReader::open(&mut hr, &keys).and_then(|mut r| {
            let f = r.verify_to_end()?;
            Ok((r.header().clone(), f))
        }) {
            Ok((header, footer)) => {
                events = footer.event_count;
                if header.backup_id != m.id {
                    problems.push(format!(
                        "archive header names backup {} but the manifest {}",
                        header.backup_id, m.id
                    ));
                }
                if footer.event_count != m.event_count {
                    problems.push(format!(
                        "footer counts {} events, manifest {}",
                        footer.event_count, m.event_count
                    ));
                }
                let digest: String = footer
                    .events_sha256
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                if digest != m.events_sha256 {
                    problems.push("events digest in the footer differs from the manifest".into());
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
        // Read what the archive reader left (after an error) so the digest covers the object.
        let _ = std::io::copy(&mut hr, &mut std::io::sink());
        let sha: String = hr
            .sha
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if hr.bytes != m.archive_bytes {
            problems.push(format!(
                "archive is {} bytes, manifest says {}",
                hr.bytes, m.archive_bytes
            ));
        }
        if sha != m.archive_sha256 {
            problems.push("archive SHA-256 differs from the manifest".into());
        }
        Ok(VerifyReport {
            id: m.id.clone(),
            ok: problems.is_empty(),
            problems,
            events,
            bytes: hr.bytes,
        })
    })
    .await?
}
