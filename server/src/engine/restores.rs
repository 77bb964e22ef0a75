//! The engine's restores: planning one (`restore --dry-run`), starting one in the operation
//! slot, and what callers wait on.

use std::sync::atomic::Ordering;
use std::time::Instant;

use monoskope_backup_client::error_line;
use tokio::sync::watch;

use super::slot::{final_value, report};
use super::{ended, restore, Engine, EngineError, Failure};
use crate::catalog::{RestoreRecord, State};
use crate::ops::metrics::{self, Op};

impl Engine {
    /// Checks a restore as [`Engine::start_restore`] would before writing — the sink, the
    /// store's emptiness, the chain, every link's key and header — and returns what it would do,
    /// writing nothing (`restore --dry-run`). Bounded by the restore timeout and the interrupt.
    pub async fn plan_restore(
        &self,
        req: &restore::RestoreRequest,
    ) -> Result<restore::RestorePlan, EngineError> {
        // The checks read the store (the API sink counts its events): a store that never
        // answers fails them at the restore's timeout.
        self
            .interrupt
            .bounded_with(
                tokio::time::Instant::now() + self.cfg.restore_timeout,
                restore::prepare(&self.cfg, req),
                || EngineError::Unavailable(format!(
                    "timed out after {} checking the backup and the store before the restore (nothing was written): the destination, the EventStore or the events database did not answer",
                    humantime::format_duration(self.cfg.restore_timeout)
                )),
                |why| EngineError::Interrupted(format!(
                    "interrupted by {why} while checking the backup and the store (nothing was written)"
                )),
            )
            .await
    }

    /// Starts a restore after checking everything that can be checked before writing (sink,
    /// empty store, key); returns its RUNNING record and a receiver of the final record.
    pub async fn start_restore(
        &self,
        req: restore::RestoreRequest,
    ) -> Result<(RestoreRecord, watch::Receiver<Option<RestoreRecord>>), EngineError> {
        if let Some(r) = self.running.lock().await.as_ref() {
            return Err(EngineError::Busy {
                kind: r.kind,
                id: r.id.clone(),
            });
        }
        let restore::RestorePlan {
            sink,
            chain,
            key_files,
            ..
        } = match self.plan_restore(&req).await {
            Ok(p) => p,
            Err(e) => {
                self.report_unstarted(Op::Restore, &e, &req.caller).await;
                return Err(e);
            }
        };
        let manifest = chain
            .last()
            .cloned()
            .ok_or_else(|| EngineError::Internal(anyhow::anyhow!("empty chain")))?;
        let now = chrono::Utc::now();
        let id = format!("restore-{}", crate::destination::layout::new_id(now));
        let progress = self.claim("restore", &id).await?;
        progress.total.store(
            chain.iter().map(|m| m.event_count).sum(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let record = RestoreRecord {
            id: id.clone(),
            backup_id: manifest.id.clone(),
            state: State::Running,
            started_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            completed_at: None,
            created_by: req.caller.label(),
            sink: sink.name().into(),
            until: req
                .until
                .as_ref()
                .and_then(|t| crate::time::rfc3339(Some(t))),
            drop_existing: req.drop_existing,
            chain: chain.iter().map(|m| m.id.clone()).collect(),
            event_count: 0,
            archive_bytes: chain.iter().map(|m| m.archive_bytes).sum(),
            error: None,
        };
        if let Err(e) = self.cfg.catalog.upsert_restore(&record).await {
            self.release().await;
            return Err(EngineError::Unavailable(format!(
                "catalog: {}",
                self.cfg.catalog.unreachable(&e).await
            )));
        }
        let (tx, rx) = watch::channel(None);
        self.restores.lock().await.insert(id.clone(), rx.clone());
        let engine = self.clone();
        let mut rec = record.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            metrics::get().started(Op::Restore);
            tracing::warn!(restore_id = %rec.id, backup_id = %rec.backup_id, sink = %rec.sink, drop_existing = rec.drop_existing, until = ?rec.until, created_by = %rec.created_by, "restore started");
            // A timeout or an interrupt drops the restore where it is: the table sink's
            // transaction rolls back with its connection.
            let left = if sink.name() == "events-table" {
                "nothing was written (rolled back)"
            } else {
                "events stored through the API so far stay stored"
            };
            let res = engine
                .interrupt
                .bounded_with(
                    tokio::time::Instant::now() + engine.cfg.restore_timeout,
                    restore::run(&engine.cfg, &req, &sink, &chain, &key_files, progress),
                    || {
                        EngineError::Internal(anyhow::anyhow!(
                            "timed out after {}; {left}",
                            humantime::format_duration(engine.cfg.restore_timeout)
                        ))
                    },
                    |why| EngineError::Internal(anyhow::anyhow!("interrupted by {why}; {left}")),
                )
                .await;
            rec.completed_at =
                Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            match res {
                Ok(n) => {
                    rec.state = State::Succeeded;
                    rec.event_count = n;
                    // The store's events were just written in store order: the next full
                    // backup reads them in physical order again.
                    engine.read_sorted.store(false, Ordering::Relaxed);
                    tracing::info!(restore_id = %rec.id, backup_id = %rec.backup_id, events = n, seconds = started.elapsed().as_secs_f64(), "restore complete; restart the QueryHandler, the Gateway and reactors");
                }
                Err(e) => {
                    rec.state = State::Failed;
                    rec.error = Some(e.to_string());
                    engine
                        .restore_failures
                        .lock()
                        .await
                        .insert(rec.id.clone(), e.failure());
                    tracing::error!(restore_id = %rec.id, backup_id = %rec.backup_id, error = %e, "restore failed");
                }
            }
            match report(engine.cfg.catalog.upsert_restore(&rec)).await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::error!(restore_id = %rec.id, error = %error_line(&e), "could not record the restore in the catalog")
                }
                None => {
                    tracing::error!(restore_id = %rec.id, "could not record the restore in the catalog: no answer within 4 s")
                }
            }
            let ok = rec.state == State::Succeeded;
            // A failed restore leaves the store's events as they were, and a RestoreFailed
            // event beside them: every failure leaves a trace.
            let data = serde_json::json!({
                "restoreId": rec.id, "backupId": rec.backup_id, "chain": rec.chain,
                "sink": rec.sink, "eventCount": rec.event_count, "until": rec.until,
                "dropExisting": rec.drop_existing, "startedAt": rec.started_at,
                "completedAt": rec.completed_at, "error": rec.error,
            });
            engine
                .report_end(ended::Ending {
                    op: Op::Restore,
                    ok,
                    elapsed: started.elapsed(),
                    bytes: rec.archive_bytes,
                    events: rec.event_count,
                    event: (
                        if ok {
                            "RestoreCompleted"
                        } else {
                            "RestoreFailed"
                        },
                        crate::ops::events::RESTORE_AGGREGATE,
                        &rec.id,
                    ),
                    data,
                    caller: &req.caller,
                })
                .await;
            engine.release().await;
            let _ = tx.send(Some(rec));
        });
        Ok((record, rx))
    }

    /// The kind of failure of the restore `id` of this process, once it failed.
    pub async fn restore_failure(&self, id: &str) -> Option<Failure> {
        self.restore_failures.lock().await.get(id).copied()
    }

    /// Waits for the restore `id` started by this process to end.
    pub async fn wait_restore(&self, id: &str) -> Option<RestoreRecord> {
        let rx = self.restores.lock().await.get(id).cloned()?;
        final_value(rx).await
    }
}
