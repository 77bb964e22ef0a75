//! A chain's archives read in order on a blocking thread, every link checked: it is the backup
//! its manifest names, continues the link before it (its parent's id and, for continuous
//! segments, the SHA-256 of its parent's bytes), holds what its manifest says, and continues the
//! versions of the links before it exactly. Restores read chains this way, and so does
//! compaction (the segments it merges).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::restore::Damaged;
use super::{EngineConfig, Progress};
use crate::archive::envelope::KeyFile;
use crate::archive::{ArchiveReader, Record, RecordView};
use crate::destination::manifest::Manifest;
use crate::sink::table::{CopyRows, ROW_BATCH_BYTES};
use crate::source::RECORD_BATCH;
use crate::watermark::{check_continuity, span_add_parts, AggregateKeys, Watermark};

fn ts_le(a: &prost_types::Timestamp, b: &prost_types::Timestamp) -> bool {
    (a.seconds, a.nanos) <= (b.seconds, b.nanos)
}

/// The records of `chain`, read from `base` (its manifest and its chain's watermark) as
/// [`spawn_reader`] reads and checks them, one by one: compaction's input. The stream ends with
/// an error, never early, when a link does not check out.
pub(super) fn records(
    cfg: &EngineConfig,
    chain: &[Manifest],
    base: (Manifest, Watermark),
) -> super::backup::RecordStream {
    use futures::StreamExt;
    let (rx, _reader) = spawn_reader::<Vec<Record>>(
        cfg,
        chain,
        Some(base),
        None,
        Arc::default(),
        &KeyFiles::default(),
    );
    let batches = futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Ok(Some(batch))) => Some((batch.into_iter().map(Ok).collect(), Some(rx))),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some((vec![Err(e)], None)),
            None => Some((
                vec![Err(anyhow::anyhow!(
                    "the reader of the chain stopped before its end"
                ))],
                None,
            )),
        }
    });
    Box::pin(batches.flat_map(|b: Vec<anyhow::Result<Record>>| futures::stream::iter(b)))
}

/// What the archive reader fills with records for a sink: rows in the events table's COPY
/// form (written on the reader's thread straight from the archive's bytes), or messages for
/// the `Store` API.
pub(super) trait Fill: Send + 'static {
    fn empty() -> Self;
    fn add(&mut self, r: &RecordView<'_>) -> anyhow::Result<()>;
    fn count(&self) -> usize;
    fn full(&self) -> bool;
}

impl Fill for CopyRows {
    fn empty() -> Self {
        CopyRows::with_capacity(ROW_BATCH_BYTES + (64 << 10))
    }
    fn add(&mut self, r: &RecordView<'_>) -> anyhow::Result<()> {
        self.push(r)
    }
    fn count(&self) -> usize {
        self.len()
    }
    fn full(&self) -> bool {
        self.bytes() >= ROW_BATCH_BYTES
    }
}

impl Fill for Vec<Record> {
    fn empty() -> Self {
        Vec::with_capacity(RECORD_BATCH)
    }
    fn add(&mut self, r: &RecordView<'_>) -> anyhow::Result<()> {
        self.push(r.to_record());
        Ok(())
    }
    fn count(&self) -> usize {
        self.len()
    }
    fn full(&self) -> bool {
        self.len() >= RECORD_BATCH
    }
}

/// What [`spawn_reader`] sends: batches, then `Ok(None)`, or the error that ends the read.
pub(super) type Batches<F> = mpsc::Receiver<anyhow::Result<Option<F>>>;

/// Records only counted: the API sink's first pass, which reads the whole chain to check it
/// before the first `Store` call.
pub(super) struct Counted(pub(super) usize);

impl Fill for Counted {
    fn empty() -> Self {
        Counted(0)
    }
    fn add(&mut self, _: &RecordView<'_>) -> anyhow::Result<()> {
        self.0 += 1;
        Ok(())
    }
    fn count(&self) -> usize {
        self.0
    }
    fn full(&self) -> bool {
        self.0 >= RECORD_BATCH
    }
}

/// Key files already read, by archive key (the restore's head checks read every link's): a link
/// found here is not asked for again.
pub(super) type KeyFiles = std::collections::HashMap<String, Option<KeyFile>>;

/// Reads the chain's archives in order on a blocking thread and sends their records (up to
/// `until`): `Ok(Some)` per batch, then `Ok(None)` once every link checked out, or an `Err`
/// naming the link — never a record of an unauthenticated chunk. Each link must be the backup
/// its manifest names, name the link before it as parent, hold the manifest's event count, and
/// continue the versions of the links before it exactly (no gap, no overlap). A chain read from
/// `base` (compaction's segments) starts from that backup and its watermark instead of a full
/// backup.
pub(super) fn spawn_reader<F: Fill>(
    cfg: &EngineConfig,
    chain: &[Manifest],
    base: Option<(Manifest, Watermark)>,
    until: Option<prost_types::Timestamp>,
    progress: Arc<Progress>,
    known: &KeyFiles,
) -> (Batches<F>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4);
    let dest = cfg.destination.clone();
    let keys = cfg.keys.clone();
    let chain = chain.to_vec();
    let known = known.clone();
    let handle = tokio::spawn(async move {
        let n = chain.len() + usize::from(base.is_some());
        let (base, mut held) = match base {
            Some((m, w)) => (Some(m), w),
            None => (None, Watermark::default()),
        };
        let mut bytes_before = 0u64;
        // The next link's key file and archive stream are requested while this one is read, so
        // a chain of many archives costs about what one archive of its events does.
        let fetch = |m: &Manifest| {
            let key_file = known.get(&m.archive_key).cloned();
            fetch(dest.clone(), m.archive_key.clone(), key_file)
        };
        let mut next = chain.first().map(fetch);
        for (i, m) in chain.iter().enumerate() {
            let number = i + 1 + usize::from(base.is_some());
            let link = if n > 1 {
                format!("backup {} (link {number} of {n} of the chain)", m.id)
            } else {
                format!("backup {}", m.id)
            };
            let fetched = match next.take() {
                Some(f) => f.await.unwrap_or_else(|e| Err(anyhow::anyhow!("{e}"))),
                None => Err(anyhow::anyhow!("the link was not requested")),
            };
            next = chain.get(i + 1).map(fetch);
            let (key_file, reader) = match fetched {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.send(Err(e.context(link))).await;
                    return;
                }
            };
            let parent = if i == 0 {
                base.clone()
            } else {
                Some(chain[i - 1].clone())
            };
            let (m2, keys2, tx2, progress2) =
                (m.clone(), keys.clone(), tx.clone(), progress.clone());
            let track = n > 1;
            let track_base = base.is_some();
            let result = tokio::task::spawn_blocking(move || {
                let mut hashed =
                    super::verify::HashingReader::new(std::io::BufReader::with_capacity(
                        1 << 20,
                        tokio_util::io::SyncIoBridge::new(reader),
                    ));
                let mut spans = std::collections::HashMap::new();
                let mut keys = AggregateKeys::default();
                let mut r =
                    ArchiveReader::open_with_key_file(&mut hashed, &keys2, key_file.as_ref())?;
                let mut batch = F::empty();
                check_link(r.header(), &m2, parent.as_ref()).map_err(Damaged)?;
                while let Some(rec) = r.next_view()? {
                    if track {
                        span_add_parts(
                            &mut spans,
                            rec.aggregate_type,
                            rec.aggregate_id,
                            rec.aggregate_version,
                            &mut keys,
                        );
                    }
                    if until
                        .as_ref()
                        .is_some_and(|u| !ts_le(&rec.timestamp.unwrap_or_default(), u))
                    {
                        continue;
                    }
                    batch.add(&rec)?;
                    if batch.full() {
                        progress2
                            .bytes
                            .store(bytes_before + r.bytes_read(), Ordering::Relaxed);
                        progress2
                            .events
                            .fetch_add(batch.count() as u64, Ordering::Relaxed);
                        let full = std::mem::replace(&mut batch, F::empty());
                        if tx2.blocking_send(Ok(Some(full))).is_err() {
                            anyhow::bail!("the restore stopped");
                        }
                    }
                }
                // The archive authenticated to its end: hand on the rest of its records.
                progress2
                    .bytes
                    .store(bytes_before + r.bytes_read(), Ordering::Relaxed);
                progress2
                    .events
                    .fetch_add(batch.count() as u64, Ordering::Relaxed);
                if batch.count() > 0 && tx2.blocking_send(Ok(Some(batch))).is_err() {
                    anyhow::bail!("the restore stopped");
                }
                // Everything the manifest says of the archive, checked before the sink commits
                // (the table's transaction) or stores anything (the API's first pass).
                let footer = r.footer().cloned().unwrap_or_default();
                let read = r.bytes_read();
                drop(r);
                let mut problems = super::verify::footer_problems(&m2, &footer);
                let (sha, size) = hashed.finish();
                if size != m2.archive_bytes {
                    problems.push(format!(
                        "archive is {size} bytes, manifest says {}",
                        m2.archive_bytes
                    ));
                }
                if sha != m2.archive_sha256 {
                    problems.push("archive SHA-256 differs from the manifest".into());
                }
                if !problems.is_empty() {
                    return Err(Damaged(format!(
                        "the archive does not match its manifest: {}",
                        problems.join("; ")
                    ))
                    .into());
                }
                Ok((spans, read))
            })
            .await;
            let (spans, read) = match result {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e.context(link))).await;
                    return;
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(anyhow::anyhow!("{link}: reader failed: {e}")))
                        .await;
                    return;
                }
            };
            bytes_before += read;
            if n > 1 {
                if i > 0 || track_base {
                    if let Err(p) = check_continuity(&held, &spans) {
                        let _ = tx
                            .send(Err(anyhow::Error::new(Damaged(format!(
                                "{link} does not continue the chain: {p}"
                            )))))
                            .await;
                        return;
                    }
                }
                held.raise(spans);
            }
        }
        let _ = tx.send(Ok(None)).await;
    });
    (rx, handle)
}

/// Requests an archive's key file (unless `known`) and then its stream, on a task of its own.
fn fetch(
    dest: Arc<dyn crate::destination::Destination>,
    archive_key: String,
    known: Option<Option<KeyFile>>,
) -> tokio::task::JoinHandle<anyhow::Result<(Option<KeyFile>, crate::destination::ObjectReader)>> {
    tokio::spawn(async move {
        let key_file = match known {
            Some(k) => k,
            None => crate::destination::keyfile::load(dest.as_ref(), &archive_key).await?,
        };
        let reader = dest.get(&archive_key).await?;
        Ok((key_file, reader))
    })
}

/// Checks that an archive's authenticated header is the link its chain expects: the backup its
/// manifest `m` names, of its kind, naming `parent` (`None`: the chain's first link) as its parent
/// — and, when it carries the link of format 1.2 (continuous segments, their compactions; a
/// segment must), the SHA-256 of exactly the parent archive the destination holds. A parent
/// swapped for another archive with the same id fails here, whatever its manifest says.
pub(super) fn check_link(
    h: &crate::archive::Header,
    m: &Manifest,
    parent: Option<&Manifest>,
) -> Result<(), String> {
    let parent_id = parent.map(|p| p.id.as_str()).unwrap_or("");
    if h.backup_id != m.id || h.parent_id != parent_id {
        return Err(format!(
            "the archive is backup {} with parent {:?}, the chain expects {} with parent {:?}",
            h.backup_id, h.parent_id, m.id, parent_id
        ));
    }
    let segment = crate::destination::manifest::SEGMENT;
    if (h.kind == segment) != (m.kind == segment) {
        return Err(format!(
            "the archive is a {:?} backup, its manifest says {:?}",
            h.kind, m.kind
        ));
    }
    link_problem(h, parent).map_or(Ok(()), Err)
}

/// What is wrong with the link of format 1.2 of an archive whose header is `h` to `parent`:
/// a segment without it, a link without a parent, or a parent with other bytes.
pub fn link_problem(h: &crate::archive::Header, parent: Option<&Manifest>) -> Option<String> {
    if h.parent_sha256.is_empty() {
        return (h.kind == crate::destination::manifest::SEGMENT)
            .then(|| "the continuous segment carries no link to its parent's bytes".into());
    }
    let Some(p) = parent else {
        return Some(format!(
            "the archive is linked to its parent {:?}, which is not at the destination",
            h.parent_id
        ));
    };
    let linked: String = h.parent_sha256.iter().map(|b| format!("{b:02x}")).collect();
    (linked != p.archive_sha256).then(|| {
        format!(
            "its parent {} is not the archive it was written after (SHA-256 {}…, the parent's manifest says {}…): a swapped or rewritten parent",
            p.id,
            &linked[..linked.len().min(16)],
            &p.archive_sha256[..p.archive_sha256.len().min(16)]
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Header;
    use crate::destination::manifest::SEGMENT;

    fn manifest(id: &str, kind: &str, parent: Option<&str>, sha: &str) -> Manifest {
        Manifest {
            archive_sha256: sha.into(),
            ..Manifest::for_test(id, kind, parent, "2026-01-01T00:00:00Z")
        }
    }

    fn header(id: &str, kind: &str, parent: &str, link: Option<u8>) -> Header {
        Header {
            backup_id: id.into(),
            parent_id: parent.into(),
            kind: kind.into(),
            parent_sha256: link.map(|b| vec![b; 32]).unwrap_or_default(),
            ..Header::default()
        }
    }

    #[test]
    fn a_segment_continues_exactly_the_bytes_of_its_parent() {
        let parent = manifest("p", "full", None, &"ab".repeat(32));
        let seg = manifest("s", SEGMENT, Some("p"), "");
        assert_eq!(
            check_link(&header("s", SEGMENT, "p", Some(0xab)), &seg, Some(&parent)),
            Ok(())
        );
        // The parent's bytes are another archive's (swapped or rewritten, its manifest with it).
        let e = check_link(&header("s", SEGMENT, "p", Some(0xcd)), &seg, Some(&parent))
            .expect_err("another parent");
        assert!(
            e.contains("swapped or rewritten parent") && e.contains("cdcdcdcd"),
            "{e}"
        );
        // A segment without its link, and a link without a parent.
        let e = check_link(&header("s", SEGMENT, "p", None), &seg, Some(&parent))
            .expect_err("unlinked");
        assert!(e.contains("no link"), "{e}");
        assert!(link_problem(&header("s", SEGMENT, "p", Some(0xab)), None)
            .is_some_and(|e| e.contains("not at the destination")));
        // Another id or parent than the chain expects; a manifest that calls a segment something else.
        assert!(check_link(&header("x", SEGMENT, "p", Some(0xab)), &seg, Some(&parent)).is_err());
        assert!(check_link(&header("s", SEGMENT, "q", Some(0xab)), &seg, Some(&parent)).is_err());
        let as_incremental = manifest("s", "incremental", Some("p"), "");
        let e = check_link(
            &header("s", SEGMENT, "p", Some(0xab)),
            &as_incremental,
            Some(&parent),
        )
        .expect_err("kind");
        assert!(e.contains("\"segment\""), "{e}");
    }

    #[test]
    fn archives_without_the_link_need_none() {
        let full = manifest("f", "full", None, "");
        let inc = manifest("i", "incremental", Some("f"), "");
        assert_eq!(
            check_link(&header("f", "full", "", None), &full, None),
            Ok(())
        );
        assert_eq!(
            check_link(&header("i", "incremental", "f", None), &inc, Some(&full)),
            Ok(())
        );
    }
}
