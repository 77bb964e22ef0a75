//! One backup: EventStore → records → archive writer (a blocking thread) → upload parts →
//! destination; then the watermark and the manifest, last. Memory is bounded by the channels
//! between the stages (and, for the watermark, by the number of aggregates).
//!
//! An incremental backup gets its parent's watermark: it keeps only the events above it, checks
//! that they continue it exactly, and fails with [`SourceError::ChainMismatch`] when they do not (the engine
//! then takes a full backup instead).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

pub use super::attempt::AttemptError;
use super::attempt::{Cut, NothingNew};
use super::{EngineConfig, Progress};
use crate::archive::{ArchiveWriter, Batch, Record, WriterOptions};
use crate::catalog::{BackupRecord, State};
use crate::destination::manifest::{Manifest, MANIFEST_FORMAT};
use crate::destination::{layout, Upload, PART_SIZE};
use crate::source::{SourceError, RECORD_BATCH};
use crate::time::rfc3339;
use crate::watermark::{check_continuity, span_add_version, AggregateKeys, Watermark};

/// A `Write` that cuts the archive into upload parts, hashing and counting what passes.
struct PartWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    sha: Sha256,
    bytes: u64,
    progress: Arc<Progress>,
}

impl PartWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let part = std::mem::replace(&mut self.buf, Vec::with_capacity(PART_SIZE));
        self.tx
            .blocking_send(part)
            .map_err(|_| std::io::Error::other("the upload stopped"))
    }

    fn finish(mut self) -> std::io::Result<(String, u64)> {
        if !self.buf.is_empty() || self.bytes == 0 {
            self.send()?;
        }
        let sha = self
            .sha
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok((sha, self.bytes))
    }
}

impl Write for PartWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let take = (PART_SIZE - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == PART_SIZE {
                self.send()?;
            }
        }
        self.sha.update(data);
        self.bytes += data.len() as u64;
        self.progress
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The backup an incremental builds on.
#[derive(Debug, Clone)]
pub struct Parent {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its chain's watermark.
    pub watermark: Arc<Watermark>,
}

/// A stream of records from somewhere other than the configured store (an import).
pub type RecordStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = anyhow::Result<Record>> + Send>>;

/// Encoded records on their way to the archive writer.
type BatchStream = std::pin::Pin<Box<dyn futures::Stream<Item = anyhow::Result<Batch>> + Send>>;

/// Records as batches of encoded records: whatever has arrived, up to [`RECORD_BATCH`]; the
/// first error ends the stream.
/// The table source's batches as the backup reads them; its [`SourceError`] stays the cause.
fn from_table_source(rx: crate::source::table::Batches) -> BatchStream {
    use futures::TryStreamExt;
    Box::pin(crate::source::table::stream(rx).map_err(anyhow::Error::from))
}

fn batches(
    records: impl futures::Stream<Item = anyhow::Result<Record>> + Send + 'static,
) -> BatchStream {
    Box::pin(StreamExt::map(
        futures::StreamExt::ready_chunks(records, RECORD_BATCH),
        |chunk| {
            let mut batch = Batch::new();
            for rec in chunk {
                batch.push_record(&rec?);
            }
            Ok(batch)
        },
    ))
}

/// What a backup without a key to encrypt with says.
pub const NO_KEY: &str = "no encryption key: give --key-file, --recipient-file, BACKUP_ENCRYPTION_KEY or BACKUP_PASSPHRASE (or --no-encryption to write unencrypted archives)";

/// One attempt at a backup: until when it may run (the backup's deadline: an attempt after a
/// failed one has what is left) and how a full backup's read of the events table comes into
/// store order.
pub(super) struct Attempt {
    pub deadline: tokio::time::Instant,
    pub order: crate::source::table::Order,
    /// A continuous segment: when the source holds nothing new, the upload is aborted before
    /// it completes and the attempt ends with [`AttemptError::NothingNew`] — no object is
    /// written (and none has to be deleted, which a locked bucket would refuse).
    pub segment: bool,
    /// A compaction: the segments its records come from (the `custom` stream).
    pub compacted: Option<crate::destination::manifest::Compacted>,
}

/// One attempt. It fails with [`AttemptError::ChainMismatch`] when an incremental cannot
/// continue its chain, and with [`AttemptError::Unordered`] when a read in physical order found
/// the table too far
/// out of store order; either way nothing is left at the destination.
pub(super) async fn run(
    cfg: &EngineConfig,
    running: &BackupRecord,
    progress: Arc<Progress>,
    parent: Option<Parent>,
    custom: Option<RecordStream>,
    attempt: Attempt,
    stop: &super::Interrupt,
) -> Result<BackupRecord, AttemptError> {
    let protection = cfg
        .protection
        .clone()
        .ok_or_else(|| anyhow::Error::new(super::EngineError::KeyMissing(NO_KEY.into())))?;
    let parent_id = parent.as_ref().map(|p| p.manifest.id.clone());
    // Segments and compactions carry the SHA-256 of their parent's bytes (format 1.2).
    let linked = attempt.segment || attempt.compacted.is_some();
    let parent_sha256 = match &parent {
        Some(p) if linked => Some(sha256_bytes(&p.manifest.archive_sha256).ok_or_else(|| {
            anyhow!(
                "the manifest of {} states no valid archive SHA-256",
                p.manifest.id
            )
        })?),
        _ => None,
    };
    // The timeout covers starting the upload, opening the source and reading it: a store or
    // database that takes the connection and never answers fails the backup (and frees the
    // operation slot) like a slow read does; so does every step after it (below). An interrupt
    // (SIGTERM) stops the same steps the same way. Either is a [`Cut`]: what the upload left is
    // cleaned up by its key.
    let deadline = attempt.deadline;
    let segment = attempt.segment;
    let attempt_compacted = attempt.compacted.clone();
    let timed_out = |waiting: &str| {
        anyhow::Error::new(Cut(format!(
            "timed out after {}{waiting}",
            humantime::format_duration(cfg.backup_timeout)
        )))
    };
    let interrupted = |why: String| anyhow::Error::new(Cut(format!("interrupted by {why}")));
    let dest = cfg.destination.clone();
    let archive_key = layout::archive_key(&running.id);
    let upload = stop
        .bounded_with(
            deadline,
            async {
                // A segment is small and often finds nothing new: its upload asks nothing of
                // the destination until it completes (one request) or never (nothing new).
                if attempt.segment {
                    dest.upload_lazily(&archive_key).await
                } else {
                    dest.upload(&archive_key).await
                }
                .context("cannot start the upload")
            },
            || timed_out(" (the destination did not answer)"),
            interrupted,
        )
        .await;
    // The upload may have started at the destination though its answer never came.
    let upload = match upload {
        Ok(u) => u,
        Err(e) if e.is::<Cut>() => {
            return Err(AttemptError::Failed(
                clean_up_after_cut(dest.as_ref(), &running.id, e).await,
            ))
        }
        Err(e) => return Err(AttemptError::Failed(e)),
    };
    // Everything from here — the read, the upload's parts and completion, the watermark and the
    // manifest — runs within the deadline and stops at an interrupt. Cut off, the upload may be
    // stuck in a part that is never answered: it is aborted by its key, and whatever became
    // visible is deleted, each step bounded so that the backup ends within the grace period.
    let cleaner = dest.clone();
    let work = async move {
        // The parent's watermark goes to the reader alone: an incremental raises it in place into
        // the new one once the read is done (one entry per aggregate, held once).
        let before = parent.map(|p| p.watermark);
        let from_table = cfg.events_db.is_some();
        // A source that holds only what is new (the events table's incremental read, a
        // compaction's segments), not every event of the store.
        let only_new = from_table || custom.is_some();
        let (source, silent) = match (&custom, from_table) {
            (Some(_), _) => ("the backup being imported", ""),
            (None, true) => ("the events table", " (the events database did not answer)"),
            (None, false) => (
                "the EventStore",
                " (the EventStore did not answer Retrieve)",
            ),
        };
        // The source opens after the upload started (a destination that cannot be reached fails
        // before the store's stream is opened, which Monoskope's store needs read to its end) and
        // before the writer runs (a source that cannot be reached aborts the upload, so nothing is
        // left staged).
        let opened = async {
            anyhow::Ok::<BatchStream>(match custom {
                Some(s) => batches(s),
                None => match (&cfg.events_db, &before) {
                    (Some(url), None) => from_table_source(crate::source::table::snapshot(
                        crate::source::table::connect(url).await?,
                        4,
                        None,
                        attempt.order,
                        cfg.lock_wait_timeout,
                    )),
                    (Some(url), Some(w)) => from_table_source(crate::source::table::incremental(
                        crate::source::table::connect(url).await?,
                        w.clone(),
                        4,
                        None,
                        cfg.lock_wait_timeout,
                    )),
                    // The API has no per-aggregate maximum: an incremental reads every event and keeps
                    // the new ones.
                    (None, _) => batches(cfg.event_store.retrieve_all().await?),
                },
            })
        };
        let opened = stop
            .bounded_with(deadline, opened, || timed_out(silent), interrupted)
            .await;
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                upload.abort().await;
                return Err(e);
            }
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        // Records cross to the writer thread in batches: one wake-up per batch, not per event.
        let (rec_tx, mut rec_rx) = mpsc::channel::<Batch>(8);
        let (part_tx, mut part_rx) = mpsc::channel::<Vec<u8>>(2);

        let mut opts = WriterOptions::new(&running.id, protection.clone());
        opts.compression_level = cfg.compression_level;
        opts.kind = running.kind.clone();
        opts.parent_id = parent_id.clone();
        opts.parent_sha256 = parent_sha256;
        // The data key's wraps go into the archive's key file, which a rewrap can replace.
        opts.key_file = true;
        let enc_cancel = cancelled.clone();
        let enc_progress = progress.clone();
        let encoder = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let out = PartWriter {
                tx: part_tx,
                buf: Vec::with_capacity(PART_SIZE),
                sha: Sha256::new(),
                bytes: 0,
                progress: enc_progress,
            };
            let mut w = ArchiveWriter::new(out, opts)?;
            let key_file = w.key_file().cloned();
            while let Some(batch) = rec_rx.blocking_recv() {
                w.append_batch(&batch)?;
            }
            // The record channel also closes when reading failed or timed out: never seal then.
            if enc_cancel.load(Ordering::SeqCst) {
                anyhow::bail!("cancelled");
            }
            let (out, footer) = w.finish()?;
            let (sha, bytes) = out.finish()?;
            Ok((footer, sha, bytes, key_file))
        });
        let mut uploader = AbortOnDrop(tokio::spawn(async move {
            let mut upload: Box<dyn Upload> = upload;
            while let Some(part) = part_rx.recv().await {
                if let Err(e) = upload.write_part(part).await {
                    return (upload, Err(anyhow::Error::new(e)));
                }
            }
            (upload, Ok(()))
        }));

        let read_progress = progress.clone();
        let reader = async move {
            // A full backup's watermark is built from every event; an incremental's is the
            // parent's raised by the spans of the new versions, made once the read is done, so the
            // read holds one watermark, not two.
            let mut wm = Watermark::default();
            let mut spans = std::collections::HashMap::new();
            let mut store_max: std::collections::HashMap<_, u64> = std::collections::HashMap::new();
            let mut keys = AggregateKeys::default();
            while let Some(batch) = stream.next().await {
                let mut batch = batch?;
                if let Some(b) = &before {
                    let mut unversioned = None;
                    batch.retain(|rec| {
                        let a = keys.key(rec.aggregate_type(), rec.aggregate_id());
                        let version = rec.aggregate_version();
                        if !only_new {
                            let m = store_max.entry(a.clone()).or_insert(0);
                            *m = (*m).max(version);
                        }
                        if version == 0 {
                            unversioned.get_or_insert(a);
                            return false;
                        }
                        if version <= b.get(&a) {
                            return false; // the chain holds it
                        }
                        span_add_version(&mut spans, a, version);
                        true
                    });
                    if let Some(a) = unversioned {
                        return Err(SourceError::ChainMismatch(format!(
                        "the store holds events without a version (aggregate {a}), which only a full backup can hold"
                    ))
                    .into());
                    }
                }
                if before.is_none() {
                    for rec in batch.iter() {
                        wm.observe_into(
                            rec.aggregate_type(),
                            rec.aggregate_id(),
                            rec.aggregate_version(),
                            &mut keys,
                        );
                    }
                }
                read_progress
                    .events
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if !batch.is_empty() && rec_tx.send(batch).await.is_err() {
                    // The encoder or the upload stopped; their error is reported below.
                    return Ok(wm);
                }
            }
            if let Some(b) = &before {
                if !only_new {
                    let mut behind: Vec<String> = b
                        .map
                        .iter()
                        .filter(|(a, h)| store_max.get(*a).copied().unwrap_or(0) < **h)
                        .map(|(a, h)| {
                            format!(
                                "aggregate {a} is at version {} in the store, the chain holds {h}",
                                store_max.get(a).copied().unwrap_or(0)
                            )
                        })
                        .collect();
                    behind.sort();
                    if let Some(first) = behind.first() {
                        return Err(SourceError::ChainMismatch(format!(
                        "the store no longer matches the chain ({} aggregates behind it; {first}): restored from an older backup?",
                        behind.len()
                    ))
                    .into());
                    }
                }
                check_continuity(b, &spans).map_err(|p| {
                    SourceError::ChainMismatch(format!(
                        "the store no longer matches the chain: {p}"
                    ))
                })?;
            }
            if let Some(b) = before {
                // The source has let go of the parent's watermark by now (its stream ended), so
                // it is raised in place; a copy only if someone still holds it.
                wm = Arc::try_unwrap(b).unwrap_or_else(|b| (*b).clone());
                wm.raise(spans);
            }
            anyhow::Ok(wm)
        };
        let mut read_result = stop
            .bounded_with(deadline, reader, || timed_out(""), interrupted)
            .await;
        if read_result.is_err() {
            cancelled.store(true, Ordering::SeqCst);
        }
        // A chain mismatch is not a failure of this backup: the engine takes a full one instead;
        // nor is a table out of order: the engine reads it sorted.
        if let Err(e) = read_result {
            if AttemptError::is_another_attempt(&e) {
                let _ = encoder.await;
                let (upload, _) = (&mut uploader.0)
                    .await
                    .map_err(|e| anyhow!("uploader panicked: {e}"))?;
                upload.abort().await;
                return Err(e);
            }
            read_result = Err(e);
        }
        let enc_result = encoder
            .await
            .map_err(|e| anyhow!("archive writer panicked: {e}"))?;
        let (upload, up_result) = (&mut uploader.0)
            .await
            .map_err(|e| anyhow!("uploader panicked: {e}"))?;
        // The first real cause wins: a failed read or upload explains a cancelled or stopped writer.
        let outcome = read_result
            .with_context(|| format!("reading {source} failed"))
            .and_then(|wm| {
                up_result.context("uploading the archive failed")?;
                Ok((enc_result.context("writing the archive failed")?, wm))
            });
        let ((footer, sha, bytes, key_file), watermark) = match outcome {
            Ok(v) => v,
            Err(e) => {
                upload.abort().await;
                return Err(e);
            }
        };
        if segment && parent_id.is_some() && footer.event_count == 0 {
            upload.abort().await;
            return Err(anyhow::Error::new(NothingNew));
        }
        upload
            .complete()
            .await
            .context("completing the archive upload failed")?;
        if let Some(f) = &key_file {
            if let Err(e) = crate::destination::keyfile::store(dest.as_ref(), &archive_key, f).await
            {
                let _ = dest.delete(&archive_key).await;
                return Err(anyhow::Error::new(e).context("writing the archive's key file failed"));
            }
        }
        let keys_key = layout::keys_key(&archive_key);
        let watermark_key = match watermark
            .store(
                dest.as_ref(),
                &running.id,
                protection.clone(),
                cfg.compression_level,
            )
            .await
        {
            Ok(k) => k,
            Err(e) => {
                let _ = dest.delete(&archive_key).await;
                let _ = dest.delete(&keys_key).await;
                return Err(e.context("writing the watermark failed"));
            }
        };

        let completed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let (key_id, key_kind) = crate::archive::envelope::protection_ids(&protection);
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            id: running.id.clone(),
            kind: running.kind.clone(),
            parent_id,
            created_at: running.created_at.clone(),
            completed_at,
            created_by: running.created_by.clone(),
            source: running.source.clone(),
            event_count: footer.event_count,
            archive_bytes: bytes,
            archive_sha256: sha,
            archive_key: archive_key.clone(),
            first_event_time: rfc3339(footer.first_timestamp.as_ref()),
            last_event_time: rfc3339(footer.last_timestamp.as_ref()),
            events_sha256: footer
                .events_sha256
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            key_id,
            key_kind: Some(key_kind.to_string()),
            format_version: crate::archive::version_for(&protection, true, parent_sha256.is_some()),
            watermark_key: Some(watermark_key.clone()),
            // Asked for now, just before the manifest (the last object) is written: every object
            // of the backup is locked at least until then.
            locked_until: dest
                .object_lock_until()
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            note: running.note.clone(),
            compacted: attempt_compacted,
        };
        if let Err(e) = dest
            .put(&layout::manifest_key(&running.id), manifest.to_json())
            .await
        {
            let _ = dest.delete(&archive_key).await;
            let _ = dest.delete(&keys_key).await;
            let _ = dest.delete(&watermark_key).await;
            return Err(anyhow::Error::new(e).context("writing the manifest failed"));
        }
        let mut record = BackupRecord::from_manifest(&manifest);
        record.state = State::Succeeded;
        anyhow::Ok(record)
    };
    // The steps bounded inside say what they waited for; this bound, a moment later, catches
    // a step that does not end even then (an abort that is never answered).
    let result = stop
        .bounded_with(
            deadline + OUTER_GRACE,
            work,
            || timed_out(" (the destination did not answer)"),
            interrupted,
        )
        .await;
    match result {
        Ok(r) => Ok(r),
        Err(e) if e.is::<NothingNew>() => Err(AttemptError::NothingNew),
        Err(e) if e.chain().any(|c| c.is::<Cut>()) => Err(AttemptError::Failed(
            clean_up_after_cut(cleaner.as_ref(), &running.id, e).await,
        )),
        Err(e) => Err(AttemptError::of(e)),
    }
}

/// How long past the deadline the outer bound waits for the inner ones to end the backup.
const OUTER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long the clean-up of a backup that was cut off may take.
const CLEANUP_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// After a backup was cut off (timeout, interrupt): abort its unfinished upload and delete
/// whatever of it became visible, within [`CLEANUP_WITHIN`]; the error says what is left.
async fn clean_up_after_cut(
    dest: &dyn crate::destination::Destination,
    id: &str,
    e: anyhow::Error,
) -> anyhow::Error {
    let cleanup = async {
        // The manifest first: without it nothing of the backup is listed or restored.
        dest.delete(&layout::manifest_key(id)).await?;
        let n = dest.abort_uploads(&layout::archive_key(id)).await?;
        dest.delete(&layout::watermark_key(id)).await?;
        dest.delete(&layout::archive_key(id)).await?;
        Ok::<_, crate::destination::DestinationError>(n)
    };
    let note = match tokio::time::timeout(CLEANUP_WITHIN, cleanup).await {
        Ok(Ok(_)) => "the upload was aborted and nothing is left at the destination".to_string(),
        Ok(Err(c)) => format!(
            "the upload could not be aborted now ({c}); retention removes what is left once it is a day old"
        ),
        Err(_) => format!(
            "the destination did not answer the upload's abort within {}; retention removes what is left once it is a day old",
            humantime::format_duration(CLEANUP_WITHIN)
        ),
    };
    anyhow!(
        "{}; {note}",
        monoskope_backup_client::error_line(e.as_ref())
    )
}

/// Aborts a task when dropped (the uploader of a backup that was cut off).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The 32 bytes of a lowercase-hex SHA-256, as manifests state them.
fn sha256_bytes(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
