//! The engine: backups, verification and retention, one operation at a time, each with a
//! timeout. Heavy steps are split into a plan (a plain value) and its execution.

mod attempt;
pub mod backup;
mod chain;
pub mod compact;
pub mod drill;
mod ended;
mod error;
mod interrupt;
pub mod plan;
mod read_chain;
pub mod restore;
mod restores;
pub mod retention;
pub mod rewrap;
mod slot;
pub mod verify;

/// The watermark (it lives at the crate root: sources, sinks and the engine share it).
pub use crate::watermark;
use chain::choose_parent;
pub use chain::{chain_of, is_not_created};
pub use error::{exit_of, Ended, EngineError, Exit, Failure};
pub use interrupt::Interrupt;
use slot::{final_value, report, Running};
pub use slot::{Progress, RunningOp, REPORT_WITHIN};

use monoskope_backup_client::error_line;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex};

use crate::archive::{Keys, Protection};
use crate::catalog::{BackupRecord, Catalog, RestoreRecord};
use crate::destination::Destination;
use crate::identity::Identity;
use crate::ops::metrics::{self, Op};
use crate::source::EventStoreAddr;

/// A URL without its password or query, for records and logs.
pub use crate::redact::url as redact_url;

/// The note of a continuous segment's record and manifest.
pub use crate::destination::manifest::SEGMENT_NOTE;
/// The note of a segment that found nothing new (never stored).
const NOTHING_NEW: &str = "nothing new";

/// Everything the engine needs, from configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The EventStore to back up.
    pub event_store: EventStoreAddr,
    /// Where backups go.
    pub destination: Arc<dyn Destination>,
    /// The catalog.
    pub catalog: Catalog,
    /// Keys that read archives.
    pub keys: Keys,
    /// How new archives are protected (`None`: no key configured, backups refuse to run).
    pub protection: Option<Protection>,
    /// The events table to restore into (`postgres://…`); `None` allows only the API sink.
    pub events_db: Option<String>,
    /// Complete backups kept (< 1 keeps all).
    pub retention: retention::Policy,
    /// Longest a backup may run.
    pub backup_timeout: Duration,
    /// zstd level.
    pub compression_level: i32,
    /// Longest a restore may run.
    pub restore_timeout: Duration,
    /// How long a restore into the events table waits for other sessions to let go of it.
    pub lock_wait_timeout: Duration,
    /// Store BackupCompleted/BackupFailed/RestoreCompleted events in the EventStore.
    pub emit_events: bool,
    /// Where each run's metrics are pushed.
    pub pushgateway: Option<crate::ops::pushgateway::Pushgateway>,
    /// An incremental request becomes full once the newest chain holds this many incrementals.
    pub full_every: u32,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    cfg: Arc<EngineConfig>,
    running: Arc<Mutex<Option<Running>>>,
    /// This process, as it names itself in the catalog's operation lease.
    holder: Arc<str>,
    done: Arc<Mutex<std::collections::HashMap<String, watch::Receiver<Option<BackupRecord>>>>>,
    restores: Arc<Mutex<std::collections::HashMap<String, watch::Receiver<Option<RestoreRecord>>>>>,
    /// The kind of failure of each restore of this process that failed.
    restore_failures: Arc<Mutex<std::collections::HashMap<String, Failure>>>,
    /// How each backup of this process that failed ends a command.
    backup_exits: Arc<Mutex<std::collections::HashMap<String, Exit>>>,
    interrupt: Interrupt,
    /// A full backup read the events table in physical order and found it too far from store
    /// order: this process's later backups read it sorted, until a restore writes the table
    /// anew (in store order).
    read_sorted: Arc<std::sync::atomic::AtomicBool>,
    /// Continuous backup follows the events table in this process.
    continuous: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("destination", &self.cfg.destination.url())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `cfg`.
    pub fn new(cfg: EngineConfig) -> Self {
        Self {
            cfg: Arc::new(cfg),
            running: Arc::new(Mutex::new(None)),
            holder: crate::catalog::lease_holder_name().into(),
            done: Arc::new(Mutex::new(std::collections::HashMap::new())),
            restores: Arc::new(Mutex::new(std::collections::HashMap::new())),
            restore_failures: Arc::default(),
            backup_exits: Arc::default(),
            interrupt: Interrupt::default(),
            read_sorted: Arc::default(),
            continuous: Arc::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Starts a backup — incremental when asked and possible, full otherwise — and returns its
    /// RUNNING record and a receiver of the final record.
    pub async fn start_backup(
        &self,
        caller: &Identity,
        incremental: bool,
    ) -> Result<(BackupRecord, watch::Receiver<Option<BackupRecord>>), EngineError> {
        self.start_backup_with(
            caller,
            if incremental {
                What::Incremental
            } else {
                What::Full
            },
        )
        .await
    }

    /// Marks continuous backup as running in this process (GetStatus reports it).
    pub fn set_continuous(&self) {
        self.continuous.store(true, Ordering::Relaxed);
    }

    /// Whether continuous backup runs in this process.
    pub fn continuous(&self) -> bool {
        self.continuous.load(Ordering::Relaxed)
    }

    /// Takes a continuous segment: an incremental backup of what is new since the newest
    /// backup (its chain's length not limited by `fullEvery`; the first one of a destination is
    /// full). `Ok(None)` when there was nothing new: then nothing is left at the destination or
    /// in the catalog, and nothing is reported. Segments emit no event and push nothing (they
    /// come every few seconds); their metrics count as backups.
    pub async fn segment(&self, caller: &Identity) -> Result<Option<BackupRecord>, EngineError> {
        let (_, rx) = self.start_backup_with(caller, What::Segment).await?;
        let r = final_value(rx).await.ok_or_else(|| {
            EngineError::Internal(anyhow::anyhow!("backup task ended without a result"))
        })?;
        Ok((r.note.as_deref() != Some(NOTHING_NEW)).then_some(r))
    }

    /// Runs a full backup of `records` (e.g. a converted Monoskope backup) to its end, recorded
    /// with `source` as its source.
    pub async fn backup_from(
        &self,
        caller: &Identity,
        source: &str,
        records: backup::RecordStream,
    ) -> Result<BackupRecord, EngineError> {
        let (_, rx) = self
            .start_backup_with(
                caller,
                What::Import {
                    source: source.to_string(),
                    records,
                },
            )
            .await?;
        final_value(rx).await.ok_or_else(|| {
            EngineError::Internal(anyhow::anyhow!("backup task ended without a result"))
        })
    }

    async fn start_backup_with(
        &self,
        caller: &Identity,
        what: What,
    ) -> Result<(BackupRecord, watch::Receiver<Option<BackupRecord>>), EngineError> {
        let custom_source = match &what {
            What::Import { source, .. } => Some(source.clone()),
            What::Compaction { parent, .. } => Some(format!(
                "compaction:{}",
                parent.manifest.source.trim_start_matches("compaction:")
            )),
            _ => None,
        };
        let now = chrono::Utc::now();
        let id = crate::destination::layout::new_id(now);
        let progress = match self.claim("backup", &id).await {
            Ok(p) => p,
            Err(e) => {
                self.report_unstarted(Op::Backup, &e, caller).await;
                return Err(e);
            }
        };
        let record = BackupRecord::running(
            &id,
            match what {
                What::Full | What::Import { .. } => "full",
                What::Incremental | What::Compaction { .. } => "incremental",
                What::Segment => crate::destination::manifest::SEGMENT,
            },
            now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            caller.label(),
            match (&custom_source, &self.cfg.events_db) {
                (Some(s), _) => s.clone(),
                (None, Some(url)) => format!("events-table:{}", redact_url(url)),
                (None, None) => format!("eventstore-api:{}", self.cfg.event_store.addr),
            },
        );
        if let Err(e) = self.cfg.catalog.upsert_backup(&record).await {
            self.release().await;
            return Err(EngineError::Unavailable(format!(
                "catalog: {}",
                self.cfg.catalog.unreachable(&e).await
            )));
        }
        let (tx, rx) = watch::channel(None);
        self.done.lock().await.insert(id.clone(), rx.clone());
        let engine = self.clone();
        let running = record.clone();
        let caller = caller.clone();
        tokio::spawn(async move {
            let final_record = engine.finish_backup(running, progress, &caller, what).await;
            engine.release().await;
            let _ = tx.send(Some(final_record));
        });
        Ok((record, rx))
    }

    /// How the failed backup `id` of this process ends a command (its failure's kind).
    pub async fn backup_exit(&self, id: &str) -> Option<Exit> {
        self.backup_exits.lock().await.get(id).copied()
    }

    /// Runs a full backup to its end (used by the one-shot command and the scheduler).
    pub async fn backup(
        &self,
        caller: &Identity,
        incremental: bool,
    ) -> Result<BackupRecord, EngineError> {
        let (_, rx) = self.start_backup(caller, incremental).await?;
        final_value(rx).await.ok_or_else(|| {
            EngineError::Internal(anyhow::anyhow!("backup task ended without a result"))
        })
    }

    async fn finish_backup(
        &self,
        mut record: BackupRecord,
        progress: Arc<Progress>,
        caller: &Identity,
        what: What,
    ) -> BackupRecord {
        let segment = matches!(what, What::Segment);
        let mut parent = None;
        let mut custom = None;
        let mut compacted = None;
        match what {
            What::Segment => record.note = Some(SEGMENT_NOTE.into()),
            What::Import { records, .. } => custom = Some(records),
            What::Compaction {
                parent: p,
                segments,
                records,
            } => {
                record.parent_id = Some(p.manifest.id.clone());
                record.note = Some(format!(
                    "compacted from {} continuous segments ({} … {})",
                    segments.segments, segments.first, segments.last
                ));
                parent = Some(*p);
                custom = Some(records);
                compacted = Some(segments);
            }
            What::Full | What::Incremental => {}
        }
        // Continuous work (segments, compactions) every few seconds or each hour: counted, not
        // pushed, not stored as events (an event would be new for the next segment to back up).
        let continuous = segment || compacted.is_some();
        let started = Instant::now();
        metrics::get().started(Op::Backup);
        tracing::info!(backup_id = %record.id, created_by = %record.created_by, source = %record.source, destination = %self.cfg.destination.url(), "backup started");
        if parent.is_none() && crate::destination::manifest::has_parent(&record.kind) {
            match choose_parent(&self.cfg, segment).await {
                Ok(p) => {
                    record.parent_id = Some(p.manifest.id.clone());
                    parent = Some(p);
                }
                Err(why) => {
                    tracing::warn!(backup_id = %record.id, reason = %why, "taking a full backup instead of an incremental one");
                    record.kind = "full".into();
                    record.note = Some(format!("full instead of incremental: {why}"));
                }
            }
        }
        let stop = &self.interrupt;
        // The timeout bounds the backup, however many attempts it takes.
        let deadline = tokio::time::Instant::now() + self.cfg.backup_timeout;
        let order = || {
            if self.read_sorted.load(Ordering::Relaxed) {
                crate::source::table::Order::Sorted
            } else {
                crate::source::table::Order::Physical
            }
        };
        let attempt = backup::Attempt {
            deadline,
            order: order(),
            segment,
            compacted: compacted.clone(),
        };
        let mut result = backup::run(
            &self.cfg,
            &record,
            progress.clone(),
            parent,
            custom,
            attempt,
            stop,
        )
        .await;
        // At most two more attempts: an incremental that cannot continue its chain becomes a
        // full backup, whose read in physical order may find the table out of order.
        for _ in 0..2 {
            if compacted.is_some() {
                // A compaction builds on what it was given or not at all.
                break;
            }
            match &result {
                Err(backup::AttemptError::ChainMismatch(why)) => {
                    tracing::warn!(backup_id = %record.id, reason = %why, "taking a full backup instead of an incremental one");
                    record.kind = "full".into();
                    record.parent_id = None;
                    record.note = Some(format!("full instead of incremental: {why}"));
                }
                Err(backup::AttemptError::Unordered(why)) => {
                    tracing::warn!(backup_id = %record.id, reason = %why, "the events table is not in store order: reading it again, sorted by the database (and so for this process's later backups, until a restore)");
                    self.read_sorted.store(true, Ordering::Relaxed);
                }
                _ => break,
            }
            progress.events.store(0, Ordering::Relaxed);
            progress.bytes.store(0, Ordering::Relaxed);
            let attempt = backup::Attempt {
                deadline,
                order: order(),
                segment,
                compacted: None,
            };
            result = backup::run(
                &self.cfg,
                &record,
                progress.clone(),
                None,
                None,
                attempt,
                stop,
            )
            .await;
        }
        match result {
            // A segment that found nothing new wrote nothing; its running record goes.
            Err(backup::AttemptError::NothingNew) => {
                let _ = report(self.cfg.catalog.delete_backup(&record.id)).await;
                record.note = Some(NOTHING_NEW.into());
                metrics::get().not_running(Op::Backup);
                return record;
            }
            Ok(done) => {
                record = done;
                tracing::info!(backup_id = %record.id, events = record.event_count, bytes = record.archive_bytes, seconds = started.elapsed().as_secs_f64(), "backup complete");
            }
            Err(e) => {
                let e = e.into_error();
                self.backup_exits
                    .lock()
                    .await
                    .insert(record.id.clone(), exit_of(&e));
                record.state = crate::catalog::State::Failed;
                record.completed_at =
                    Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
                record.error = Some(error_line(e.as_ref()));
                tracing::error!(backup_id = %record.id, error = %error_line(e.as_ref()), "backup failed");
            }
        }
        if segment && record.state == crate::catalog::State::Succeeded {
            metrics::get().segment_written();
        }
        match report(self.cfg.catalog.upsert_backup(&record)).await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::error!(backup_id = %record.id, error = %error_line(&e), "could not record the backup in the catalog; `catalog resync` restores it from the destination")
            }
            None => {
                tracing::error!(backup_id = %record.id, "could not record the backup in the catalog: no answer within 4 s; the next start marks it FAILED, `catalog resync` restores a complete one from the destination")
            }
        }
        let ok = record.state == crate::catalog::State::Succeeded;
        let data = serde_json::json!({
            "backupId": record.id, "kind": record.kind, "parentId": record.parent_id,
            "eventCount": record.event_count, "bytes": record.archive_bytes,
            "firstEventTime": record.first_event_time, "lastEventTime": record.last_event_time,
            "sha256": record.archive_sha256, "keyId": record.key_id,
            "location": record.archive_key.as_ref().map(|k| format!("{}/{k}", self.cfg.destination.url().trim_end_matches('/'))),
            "createdAt": record.created_at, "completedAt": record.completed_at,
            "error": record.error,
        });
        if continuous {
            metrics::get().finished(
                Op::Backup,
                ok,
                started.elapsed(),
                record.archive_bytes,
                record.event_count,
            );
            return record;
        }
        self.report_end(ended::Ending {
            op: Op::Backup,
            ok,
            elapsed: started.elapsed(),
            bytes: record.archive_bytes,
            events: record.event_count,
            event: (
                if ok {
                    "BackupCompleted"
                } else {
                    "BackupFailed"
                },
                crate::ops::events::BACKUP_AGGREGATE,
                &record.id,
            ),
            data,
            caller,
        })
        .await;
        if record.state == crate::catalog::State::Succeeded {
            // Retention stops at an interrupt (each deletion stands alone: it runs again after
            // the next backup).
            let retention = tokio::select! {
                r = retention::run(&self.cfg) => r,
                why = self.interrupt.fired() => Err(anyhow::anyhow!("interrupted by {why}")),
            };
            match retention {
                Ok(plan) if !plan.is_empty() => {
                    tracing::info!(deleted = ?plan.delete_backups, leftovers = ?plan.delete_leftovers, "retention applied")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %error_line(e.as_ref()), "retention failed; it runs again after the next backup")
                }
            }
        }
        record
    }

    /// Runs a restore drill of `backup_id` (an id or `latest`) to its end: the backup restored
    /// into a scratch EventStore and compared with its archive and the live store. Holds the
    /// operation slot; runs on even if the caller goes away.
    pub async fn drill(
        &self,
        backup_id: &str,
        caller: &Identity,
    ) -> Result<drill::DrillReport, EngineError> {
        let chain = restore::resolve_chain(&self.cfg, backup_id, None).await?;
        let manifest = chain
            .last()
            .cloned()
            .ok_or_else(|| EngineError::Internal(anyhow::anyhow!("empty chain")))?;
        let id = format!(
            "drill-{}",
            crate::destination::layout::new_id(chrono::Utc::now())
        );
        let progress = self.claim("drill", &id).await?;
        let engine = self.clone();
        let who = caller.label();
        let task = tokio::spawn(async move {
            tracing::info!(drill_id = %id, backup_id = %manifest.id, created_by = %who, "restore drill started");
            let res = engine
                .interrupt
                .bounded_with(
                    tokio::time::Instant::now() + engine.cfg.restore_timeout,
                    drill::run(&engine.cfg, &chain, progress),
                    || {
                        EngineError::Internal(anyhow::anyhow!(
                            "drill timed out after {}",
                            humantime::format_duration(engine.cfg.restore_timeout)
                        ))
                    },
                    |why| EngineError::Internal(anyhow::anyhow!("drill interrupted by {why}")),
                )
                .await;
            let check = match &res {
                Ok(r) if r.ok => format!(
                    "{} events restored into a scratch store match the archive and the live store (digest {})",
                    r.restored_events, r.events_digest
                ),
                Ok(r) => r.problems.join("; "),
                Err(e) => e.to_string(),
            };
            let ok = matches!(&res, Ok(r) if r.ok);
            if let Err(e) = engine
                .cfg
                .catalog
                .record_check(&manifest.id, "drill", ok, &check)
                .await
            {
                tracing::warn!(error = %e, "could not record the drill's outcome in the catalog");
            }
            match &res {
                Ok(r) if r.ok => {
                    metrics::get().drill_succeeded();
                    tracing::info!(drill_id = %id, backup_id = %r.backup_id, events = r.archive_events, digest = %r.events_digest, seconds = r.seconds, "restore drill succeeded: the backup restores to exactly its events, and the live store still holds them");
                }
                Ok(r) => {
                    tracing::error!(drill_id = %id, backup_id = %r.backup_id, problems = ?r.problems, "restore drill found problems")
                }
                Err(e) => {
                    tracing::error!(drill_id = %id, error = %e, "restore drill failed")
                }
            }
            engine.release().await;
            res
        });
        task.await
            .map_err(|e| EngineError::Internal(anyhow::anyhow!("drill task: {e}")))?
    }

    /// Waits for the backup `id` started by this process to end.
    pub async fn wait_backup(&self, id: &str) -> Option<BackupRecord> {
        let rx = self.done.lock().await.get(id).cloned()?;
        final_value(rx).await
    }
}

/// What a backup is asked to be.
enum What {
    /// Every event.
    Full,
    /// What is new since the newest chain (full when it cannot build on it).
    Incremental,
    /// A continuous segment: what is new since the newest backup, linked to its bytes.
    Segment,
    /// Every event of `records` (an import), recorded as coming from `source`.
    Import {
        source: String,
        records: backup::RecordStream,
    },
    /// An incremental on `parent` holding `records`, the events of the continuous segments it
    /// replaces.
    Compaction {
        parent: Box<backup::Parent>,
        segments: crate::destination::manifest::Compacted,
        records: backup::RecordStream,
    },
}
