//! One restore: resolve the backup, refuse what must be refused before anything is written,
//! then stream the archive into the sink. Through the events table the whole restore is one
//! transaction committed only after the archive authenticated to its footer; through the API the
//! archive is verified completely first, because `Store` cannot be rolled back.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;

use super::{EngineConfig, EngineError, Progress};
use crate::archive::{ArchiveError, ArchiveReader, Record};
use crate::destination::manifest::Manifest;
use crate::sink::{self, table::EventsTable, SinkError};

/// What a restore was asked to do.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// Backup id or `latest`.
    pub backup_id: String,
    /// Restore only events with timestamps up to and including this.
    pub until: Option<prost_types::Timestamp>,
    /// Replace the events in the store.
    pub drop_existing: bool,
    /// Write through the EventStore API.
    pub via_api: bool,
    /// Who asked (recorded as `created_by`, and in the RestoreCompleted event's metadata).
    pub caller: crate::auth::Identity,
}

/// The chosen sink.
#[derive(Debug, Clone)]
pub enum Sink {
    /// The events table (no bus replay).
    Table(EventsTable),
    /// The EventStore's Store API.
    Api,
}

impl Sink {
    /// Name recorded in the catalog.
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Table(_) => "events-table",
            Sink::Api => "eventstore-api",
        }
    }
}

/// What operators must do after a restore through `sink`.
pub fn next_steps(sink: &str) -> Vec<String> {
    let mut v = Vec::new();
    if sink == "events-table" {
        v.push("Nothing was published to the message bus: services that keep projections in memory still hold the state from before the restore.".into());
    } else {
        v.push("Every restored event was stored through the EventStore API and published to its message bus, if it has one.".into());
    }
    v.push("Restart the QueryHandler, the Gateway and every reactor so they rebuild their state from the restored store: kubectl rollout restart deployment -l app.kubernetes.io/part-of=monoskope".into());
    v.push("Keep the CommandHandler from running against the store while it was empty: if it started before the restore, check for duplicate super-user events.".into());
    v
}

fn ts_le(a: &prost_types::Timestamp, b: &prost_types::Timestamp) -> bool {
    (a.seconds, a.nanos) <= (b.seconds, b.nanos)
}

/// Maps a sink refusal to the engine's errors.
fn sink_err(e: SinkError) -> EngineError {
    match e {
        SinkError::StoreNotEmpty(_) | SinkError::Unsupported(_) => {
            EngineError::Refused(e.to_string())
        }
        SinkError::Unavailable(m) => EngineError::Unavailable(m),
        SinkError::Other(e) => EngineError::Internal(e),
    }
}

/// Checks what can be checked before the restore starts: the sink, the store's emptiness, and
/// that the archive opens with our keys. Returns the sink and the backup's manifest.
pub(super) async fn prepare(
    cfg: &EngineConfig,
    req: &RestoreRequest,
) -> Result<(Sink, Manifest), EngineError> {
    let sink = if req.via_api {
        if req.drop_existing {
            return Err(EngineError::Refused("drop_existing is not possible through the EventStore API (it cannot delete events); restore into the events table (--events-db) to replace a store's events".into()));
        }
        Sink::Api
    } else {
        match &cfg.events_db {
            Some(url) => Sink::Table(EventsTable::connect(url).await.map_err(sink_err)?),
            None => return Err(EngineError::Refused(sink::api::NEEDS_VIA_API.into())),
        }
    };
    let manifest = super::verify::resolve(cfg.destination.as_ref(), &req.backup_id).await?;
    let existing = match &sink {
        Sink::Table(t) => t.count().await.map_err(sink_err)?,
        Sink::Api => sink::api::count(&cfg.event_store).await.map_err(sink_err)?,
    };
    if existing > 0 && !req.drop_existing {
        let place = match &sink {
            Sink::Table(_) => "event_records",
            Sink::Api => "the EventStore",
        };
        return Err(sink_err(SinkError::StoreNotEmpty(format!(
            "{place} holds {existing} events"
        ))));
    }
    // A wrong or missing key is found before anything is written.
    let reader = cfg
        .destination
        .get(&manifest.archive_key)
        .await
        .map_err(|e| EngineError::Unavailable(e.to_string()))?;
    let keys = cfg.keys.clone();
    tokio::task::spawn_blocking(move || {
        ArchiveReader::open(tokio_util::io::SyncIoBridge::new(reader), &keys).map(|_| ())
    })
    .await
    .map_err(|e| EngineError::Internal(anyhow::anyhow!("{e}")))?
    .map_err(archive_err)?;
    Ok((sink, manifest))
}

/// Archive errors that mean "this backup cannot be restored with this configuration".
fn archive_err(e: ArchiveError) -> EngineError {
    match e {
        ArchiveError::WrongKey { .. }
        | ArchiveError::WrongPassphrase
        | ArchiveError::KeyRequired { .. }
        | ArchiveError::UnsupportedVersion { .. } => EngineError::Refused(e.to_string()),
        other => EngineError::Corrupt(other.to_string()),
    }
}

/// Reads the archive on a blocking thread and sends its records (up to `until`): `Ok(Some)` per
/// record, then `Ok(None)` once the footer checked out, or an `Err` — never a record of an
/// unauthenticated chunk.
fn spawn_reader(
    cfg: &EngineConfig,
    manifest: &Manifest,
    until: Option<prost_types::Timestamp>,
    progress: Arc<Progress>,
) -> (
    mpsc::Receiver<anyhow::Result<Option<Record>>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(1024);
    let dest = cfg.destination.clone();
    let keys = cfg.keys.clone();
    let m = manifest.clone();
    let handle = tokio::spawn(async move {
        let reader = match dest.get(&m.archive_key).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(anyhow::Error::new(e))).await;
                return;
            }
        };
        let _ = tokio::task::spawn_blocking(move || {
            let bridge = std::io::BufReader::with_capacity(
                1 << 20,
                tokio_util::io::SyncIoBridge::new(reader),
            );
            let mut r = match ArchiveReader::open(bridge, &keys) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(anyhow::Error::new(e)));
                    return;
                }
            };
            loop {
                match r.next_record() {
                    Ok(Some(rec)) => {
                        progress.bytes.store(r.bytes_read(), Ordering::Relaxed);
                        if until
                            .as_ref()
                            .is_some_and(|u| !ts_le(&rec.timestamp.unwrap_or_default(), u))
                        {
                            continue;
                        }
                        progress.events.fetch_add(1, Ordering::Relaxed);
                        if tx.blocking_send(Ok(Some(rec))).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let footer = r.footer().cloned().unwrap_or_default();
                        let last = if footer.event_count != m.event_count {
                            Err(anyhow::anyhow!(
                                "archive holds {} events, its manifest says {}",
                                footer.event_count,
                                m.event_count
                            ))
                        } else {
                            Ok(None)
                        };
                        let _ = tx.blocking_send(last);
                        return;
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(
                            anyhow::Error::new(e).context(format!("backup {}", m.id))
                        ));
                        return;
                    }
                }
            }
        })
        .await;
    });
    (rx, handle)
}

/// Runs the restore into `sink`; returns the number of events written.
pub(super) async fn run(
    cfg: &EngineConfig,
    req: &RestoreRequest,
    sink: &Sink,
    manifest: &Manifest,
    progress: Arc<Progress>,
) -> Result<u64, EngineError> {
    match sink {
        Sink::Table(table) => {
            let (rx, reader) = spawn_reader(cfg, manifest, req.until, progress);
            let res = table.restore(rx, req.drop_existing).await;
            reader.abort();
            res.map_err(|e| match e {
                SinkError::Other(e)
                    if e.chain()
                        .any(|c| c.downcast_ref::<ArchiveError>().is_some()) =>
                {
                    EngineError::Corrupt(format!("{e:#}; nothing was written (rolled back)"))
                }
                other => sink_err(other),
            })
        }
        Sink::Api => {
            // Pass 1: the whole archive must authenticate before the first Store call.
            let report = super::verify::verify(cfg.destination.as_ref(), &cfg.keys, manifest)
                .await
                .map_err(EngineError::Internal)?;
            if !report.ok {
                return Err(EngineError::Corrupt(format!(
                    "backup {} failed verification, nothing was written: {}",
                    manifest.id,
                    report.problems.join("; ")
                )));
            }
            // Pass 2: stream the records to Store.
            let (mut rx, reader) = spawn_reader(cfg, manifest, req.until, progress);
            let (tx, store_rx) = mpsc::channel::<Record>(1024);
            let forward = tokio::spawn(async move {
                while let Some(item) = rx.recv().await {
                    match item {
                        Ok(Some(r)) => {
                            if tx.send(r).await.is_err() {
                                return Ok(());
                            }
                        }
                        Ok(None) => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            });
            let stored = sink::api::restore(&cfg.event_store, store_rx)
                .await
                .map_err(sink_err)?;
            reader.abort();
            forward
                .await
                .map_err(|e| EngineError::Internal(anyhow::anyhow!("{e}")))?
                .context("reading the archive again")
                .map_err(EngineError::Internal)?;
            Ok(stored)
        }
    }
}
