//! One restore: resolve the backup, refuse what must be refused before anything is written,
//! then stream the archive into the sink. Through the events table the whole restore is one
//! transaction committed only after the archive authenticated to its footer; through the API the
//! archive is verified completely first, because `Store` cannot be rolled back.

use monoskope_backup_client::error_line;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;

use super::read_chain::{spawn_reader, Counted, KeyFiles};
use super::{EngineConfig, EngineError, Progress};
use crate::archive::{ArchiveError, ArchiveReader, Record};
use crate::destination::manifest::Manifest;
use crate::sink::table::{CopyRows, EventsTable};
use crate::sink::{self, SinkError};

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
    pub caller: crate::identity::Identity,
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

/// Maps a sink refusal to the engine's errors.
fn sink_err(e: SinkError) -> EngineError {
    match e {
        SinkError::StoreNotEmpty(_) | SinkError::Unsupported(_) | SinkError::WouldEmpty(_) => {
            EngineError::Refused(e.to_string())
        }
        SinkError::InUse(_) => EngineError::Locked(e.to_string()),
        SinkError::Unavailable(m) => EngineError::Unavailable(m),
        SinkError::Other(e) => EngineError::Internal(e),
    }
}

/// The chain to restore for `backup_id` (an id or `latest`), as [`super::plan::choose_chain`]
/// chooses it from what the destination holds now.
pub async fn resolve_chain(
    cfg: &EngineConfig,
    backup_id: &str,
    until: Option<&prost_types::Timestamp>,
) -> Result<Vec<Manifest>, EngineError> {
    super::verify::check_id(backup_id)?;
    let until = until
        .map(|u| crate::time::check_timestamp("until", u))
        .transpose()
        .map_err(EngineError::Invalid)?;
    let dest = cfg.destination.as_ref();
    let scan = crate::destination::manifest::scan(dest)
        .await
        .map_err(|e| EngineError::Unavailable(error_line(e.as_ref())))?;
    let backup_id = super::verify::unique_id(
        scan.complete.iter().map(|m| m.id.as_str()),
        backup_id,
        &dest.url(),
    )?;
    super::plan::choose_chain(&scan, &backup_id, until, &dest.url())
}

/// Refuses an `until` before every event of the chain: such a restore would write no event
/// (and with `drop_existing` empty the store), which is a mistyped time, not a wish.
fn refuse_until_before_first_event(
    chain: &[Manifest],
    until: Option<&prost_types::Timestamp>,
) -> Result<(), EngineError> {
    let (Some(until), Some(target)) = (until, chain.last()) else {
        return Ok(());
    };
    let u = crate::time::check_timestamp("until", until).map_err(EngineError::Invalid)?;
    let first = chain
        .iter()
        .filter_map(|m| m.first_event_time.as_deref())
        .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .min();
    match first {
        Some(first) if u < first => Err(EngineError::Invalid(format!(
            "until {} is before the first event of backup {} ({}): the restore would write no event; give a later time or another backup",
            u.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            target.id,
            first.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        ))),
        _ => Ok(()),
    }
}

/// A restore as it would run: every check before writing passed.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// Where the events go.
    pub sink: Sink,
    /// The backups read, full backup first.
    pub chain: Vec<Manifest>,
    /// Events the store holds now (replaced when `drop_existing`).
    pub existing: u64,
    /// Where the events go, named (database and table, or the EventStore's address).
    pub target: String,
    /// Every link's key file as its check read it: the restore reads the archives with these
    /// rather than asking the destination for each again.
    pub key_files: KeyFiles,
}

impl RestorePlan {
    /// The id of the backup restored (the last link of the chain).
    pub fn target_id(&self) -> &str {
        self.chain.last().map(|m| m.id.as_str()).unwrap_or("-")
    }

    /// The plan in words, one line each, as `restore --dry-run` prints it.
    pub fn describe(&self, req: &RestoreRequest) -> Vec<String> {
        let target = self.chain.last().map(|m| m.id.as_str()).unwrap_or("-");
        let ids: Vec<&str> = self.chain.iter().map(|m| m.id.as_str()).collect();
        let events: u64 = self.chain.iter().map(|m| m.event_count).sum();
        let mut v = vec![format!(
            "backup {target}: a chain of {} ({}), {events} events",
            ids.len(),
            ids.join(", ")
        )];
        v.push(
            match req
                .until
                .as_ref()
                .and_then(|u| crate::time::rfc3339(Some(u)))
            {
                Some(u) => format!("until {u}: only the events up to that time"),
                None => "every event of the chain".into(),
            },
        );
        let into = match &self.sink {
            Sink::Table(_) => format!(
                "{} (one transaction, nothing published to the bus)",
                self.target
            ),
            Sink::Api => format!(
                "{} through its API (every event republished to its bus, if it has one)",
                self.target
            ),
        };
        v.push(match (self.existing, req.drop_existing) {
            (0, _) => format!("into {into}, which is empty"),
            (n, true) => format!("into {into}, replacing the {n} events it holds"),
            (n, false) => {
                format!("into {into}, which holds {n} events (refused without drop_existing)")
            }
        });
        v
    }
}

/// Checks what can be checked before the restore starts: the sink, the store's emptiness, the
/// backup's chain, and that every link's archive opens with our keys and agrees with its
/// manifest. Writes nothing.
pub(super) async fn prepare(
    cfg: &EngineConfig,
    req: &RestoreRequest,
) -> Result<RestorePlan, EngineError> {
    // A mistyped id is the first thing to tell, before how the restore would write; an `until`
    // out of range is refused, never read as "no until".
    super::verify::check_id(&req.backup_id)?;
    if let Some(u) = &req.until {
        crate::time::check_timestamp("until", u).map_err(EngineError::Invalid)?;
    }
    let sink = if req.via_api {
        if req.drop_existing {
            return Err(EngineError::Refused("drop_existing is not possible through the EventStore API (it cannot delete events); restore into the events table (--events-db) to replace a store's events".into()));
        }
        Sink::Api
    } else {
        match &cfg.events_db {
            Some(url) => Sink::Table(
                EventsTable::connect(url)
                    .await
                    .map_err(sink_err)?
                    .with_lock_wait(cfg.lock_wait_timeout),
            ),
            None => return Err(EngineError::Refused(sink::api::NEEDS_VIA_API.into())),
        }
    };
    let chain = resolve_chain(cfg, &req.backup_id, req.until.as_ref()).await?;
    refuse_until_before_first_event(&chain, req.until.as_ref())?;
    let existing = match &sink {
        Sink::Table(t) => t.count().await.map_err(sink_err)?,
        Sink::Api => sink::api::count(&cfg.event_store).await.map_err(sink_err)?,
    };
    let target = match (&sink, &cfg.events_db) {
        (Sink::Table(_), Some(url)) => format!(
            "the events table event_records of {}",
            crate::redact::url(url)
        ),
        _ => format!(
            "the EventStore at {}",
            crate::redact::url(&cfg.event_store.addr)
        ),
    };
    if existing > 0 && !req.drop_existing {
        return Err(sink_err(SinkError::StoreNotEmpty(format!(
            "{target} holds {existing} events"
        ))));
    }
    // A wrong or missing key is found before anything is written: every link's head checked,
    // several at a time (a chain of a day's compactions is two dozen archives), the first
    // problem in chain order reported.
    {
        use futures::{StreamExt, TryStreamExt};
        let checks: Vec<_> = chain.iter().map(|m| check_head(cfg, m)).collect();
        let key_files = futures::stream::iter(checks)
            .buffered(8)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(RestorePlan {
            key_files: chain
                .iter()
                .map(|m| m.archive_key.clone())
                .zip(key_files)
                .collect(),
            sink,
            chain,
            existing,
            target,
        })
    }
}

/// The most an archive's head can take: 16 bytes, a header and a key envelope of at most
/// `archive::MAX_HEADER_LEN` each, and the envelope's length.
const HEAD_MAX: u64 = 20 + 2 * 64 * 1024;

/// Opens the archive of `m` with the configured keys and checks its authenticated header
/// against the manifest: a wrong or missing key, a damaged key file or a swapped manifest.
/// Returns the key file it read, for the restore to read the archive with.
async fn check_head(
    cfg: &EngineConfig,
    m: &Manifest,
) -> Result<Option<crate::archive::envelope::KeyFile>, EngineError> {
    let key_file = crate::destination::keyfile::load(cfg.destination.as_ref(), &m.archive_key)
        .await
        .map_err(|e| match e {
            crate::destination::keyfile::KeyFileError::Damaged { .. } => {
                EngineError::Corrupt(format!(
                    "backup {} cannot be trusted, nothing was written: {}",
                    m.id,
                    monoskope_backup_client::error_line(&e)
                ))
            }
            e => EngineError::Unavailable(format!("backup {}: {e}", m.id)),
        })?;
    // Only the head: the fixed prefix, header and key envelope, each at most 64 KiB.
    let reader = cfg
        .destination
        .get_prefix(&m.archive_key, HEAD_MAX)
        .await
        .map_err(|e| EngineError::Unavailable(format!("backup {}: {e}", m.id)))?;
    let keys = cfg.keys.clone();
    let (header, key_ids, key_file) = tokio::task::spawn_blocking(move || {
        ArchiveReader::open_with_key_file(
            tokio_util::io::SyncIoBridge::new(reader),
            &keys,
            key_file.as_ref(),
        )
        .map(|r| (r.header().clone(), r.key_ids().to_vec()))
        .map(|(h, k)| (h, k, key_file))
    })
    .await
    .map_err(|e| EngineError::Internal(anyhow::anyhow!("{e}")))?
    .map_err(archive_err)?;
    // The manifest chose this backup; its archive's authenticated header must agree.
    let problems = super::verify::header_problems(m, &header, &key_ids);
    if !problems.is_empty() {
        return Err(EngineError::Corrupt(format!(
            "backup {} cannot be trusted, nothing was written: {}",
            m.id,
            problems.join("; ")
        )));
    }
    Ok(key_file)
}

/// A backup that does not hold what its manifest and chain say (a swapped or edited manifest,
/// a link that does not continue its chain): like a damaged archive, nothing of it is written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Damaged(pub(super) String);

/// Archive errors that mean "this backup cannot be restored with this configuration".
fn archive_err(e: ArchiveError) -> EngineError {
    match e {
        ArchiveError::WrongKey { .. } | ArchiveError::WrongPassphrase => {
            EngineError::KeyWrong(e.to_string())
        }
        ArchiveError::KeyRequired { .. } | ArchiveError::KeyFileMissing { .. } => {
            EngineError::KeyMissing(e.to_string())
        }
        ArchiveError::UnsupportedVersion { .. } => EngineError::Refused(e.to_string()),
        other => EngineError::Corrupt(other.to_string()),
    }
}

/// Runs the restore into `sink`; returns the number of events written.
pub(super) async fn run(
    cfg: &EngineConfig,
    req: &RestoreRequest,
    sink: &Sink,
    chain: &[Manifest],
    key_files: &KeyFiles,
    progress: Arc<Progress>,
) -> Result<u64, EngineError> {
    match sink {
        Sink::Table(table) => {
            let (rx, reader) =
                spawn_reader::<CopyRows>(cfg, chain, None, req.until, progress, key_files);
            let res = table.restore(rx, req.drop_existing).await;
            reader.abort();
            res.map_err(|e| match e {
                SinkError::Other(e)
                    if e.chain()
                        .any(|c| c.is::<ArchiveError>() || c.is::<Damaged>()) =>
                {
                    EngineError::Corrupt(format!(
                        "{}; nothing was written (rolled back)",
                        error_line(e.as_ref())
                    ))
                }
                other => sink_err(other),
            })
        }
        Sink::Api => {
            // Pass 1: every link must authenticate and continue the chain before the first
            // Store call.
            let (mut rx, reader) = spawn_reader::<Counted>(
                cfg,
                chain,
                None,
                req.until,
                Arc::new(Progress::default()),
                key_files,
            );
            loop {
                match rx.recv().await {
                    Some(Ok(Some(_))) => {}
                    Some(Ok(None)) => break,
                    Some(Err(e)) => {
                        reader.abort();
                        return Err(EngineError::Corrupt(format!(
                            "{}; nothing was written",
                            error_line(e.as_ref())
                        )));
                    }
                    None => {
                        return Err(EngineError::Internal(anyhow::anyhow!(
                            "the archive reader stopped without a result"
                        )))
                    }
                }
            }
            // Pass 2: stream the records to Store.
            let (mut rx, reader) =
                spawn_reader::<Vec<Record>>(cfg, chain, None, req.until, progress, key_files);
            let (tx, store_rx) = mpsc::channel::<Record>(1024);
            let forward = tokio::spawn(async move {
                while let Some(item) = rx.recv().await {
                    match item {
                        Ok(Some(batch)) => {
                            for r in batch {
                                if tx.send(r).await.is_err() {
                                    return Ok(());
                                }
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
