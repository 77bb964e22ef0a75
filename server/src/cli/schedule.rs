//! In-process schedules for deployments without a Kubernetes CronJob: the loops that run
//! backups and drills on the engine at each tick of an [`ops::schedule::Schedule`]. A tick that
//! comes while any operation runs is skipped (and logged): runs never overlap.
//!
//! [`ops::schedule::Schedule`]: crate::ops::schedule::Schedule

use chrono::Utc;

use crate::engine::{Engine, EngineError};
use crate::identity::Identity;
use crate::ops::schedule::Schedule;

/// Runs scheduled backups until the task is dropped; `incremental` runs are full once the
/// newest chain holds `fullEvery` incrementals (the engine decides).
pub async fn run(engine: Engine, schedule: Schedule, incremental: bool) {
    let who = Identity {
        id: "scheduler".into(),
        name: "in-process schedule".into(),
        machine: true,
        ..Default::default()
    };
    tracing::info!(schedule = %schedule.expr, "in-process backup schedule active (UTC)");
    let mut last = Utc::now();
    loop {
        let Some(next) = schedule.after(last) else {
            tracing::warn!(schedule = %schedule.expr, "the schedule has no further ticks");
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        last = next;
        match engine.start_backup(&who, incremental).await {
            Err(e @ (EngineError::Busy { .. } | EngineError::BusyElsewhere { .. })) => {
                tracing::warn!(tick = %next, "scheduled backup skipped: {e}");
                continue;
            }
            Err(e) => {
                tracing::error!(tick = %next, error = %e, "scheduled backup could not start");
                continue;
            }
            Ok((rec, _)) => {
                tracing::info!(tick = %next, backup_id = %rec.id, "scheduled backup started");
                let done = engine.wait_backup(&rec.id).await;
                let now = Utc::now();
                let mut skipped = 0u32;
                while let Some(t) = schedule.after(last).filter(|t| *t <= now) {
                    skipped += 1;
                    last = t;
                }
                if skipped > 0 {
                    tracing::warn!(skipped, backup_id = %rec.id, "scheduled ticks skipped while the backup ran; runs never overlap");
                }
                if let Some(r) = done.filter(|r| r.error.is_some()) {
                    tracing::error!(backup_id = %r.id, error = ?r.error, "scheduled backup failed");
                }
            }
        }
    }
}

/// Runs restore drills of the latest backup on `schedule` until the task is dropped. A tick
/// that comes while another operation runs is skipped.
pub async fn run_drills(engine: Engine, schedule: Schedule) {
    let who = Identity {
        id: "scheduler".into(),
        name: "in-process drill schedule".into(),
        machine: true,
        ..Default::default()
    };
    tracing::info!(schedule = %schedule.expr, "in-process restore drill schedule active (UTC)");
    let mut last = Utc::now();
    loop {
        let Some(next) = schedule.after(last) else {
            return;
        };
        tokio::time::sleep((next - Utc::now()).to_std().unwrap_or_default()).await;
        // A write-only service (recipients, no identity) cannot restore what it wrote: its
        // scheduled check proves instead that the destination holds exactly what was written.
        if write_only(&engine) {
            verify_stored(&engine, &next).await;
            last = next.max(Utc::now());
            continue;
        }
        match engine.drill("latest", &who).await {
            Err(e @ (EngineError::Busy { .. } | EngineError::BusyElsewhere { .. })) => {
                tracing::warn!(tick = %next, "scheduled drill skipped: {e}")
            }
            Err(EngineError::NotFound(m)) => {
                tracing::warn!(tick = %next, "scheduled drill skipped: {m}")
            }
            // The engine logged the outcome.
            Err(_) | Ok(_) => {}
        }
        // Ticks that passed while the drill ran are skipped: drills never overlap.
        last = next.max(Utc::now());
    }
}

/// Whether the service writes to recipients and holds no identity to read them.
fn write_only(engine: &Engine) -> bool {
    let cfg = engine.config();
    matches!(
        cfg.protection,
        Some(crate::archive::Protection::Recipients(_))
    ) && cfg.keys.identities.is_empty()
}

/// The scheduled check of a write-only service: the latest backup's stored bytes, header and key
/// file against its manifest (`verify --no-key`), logged; a failure is an error in the log.
async fn verify_stored(engine: &Engine, tick: &chrono::DateTime<Utc>) {
    let dest = engine.config().destination.clone();
    let m = match crate::engine::verify::resolve(dest.as_ref(), "latest").await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%tick, "scheduled verification skipped: {e}");
            return;
        }
    };
    let result = crate::engine::verify::verify(dest.as_ref(), None, &m).await;
    // Recorded with the backup (describe shows it).
    let (ok, detail) = match &result {
        Ok(r) if r.ok => (
            true,
            format!(
                "the destination holds exactly the {} bytes written (not decrypted)",
                r.bytes
            ),
        ),
        Ok(r) => (false, r.problems.join("; ")),
        Err(e) => (false, monoskope_backup_client::error_line(e.as_ref())),
    };
    if let Err(e) = engine
        .config()
        .catalog
        .record_check(&m.id, "verify", ok, &detail)
        .await
    {
        tracing::warn!(error = %e, "could not record the verification in the catalog");
    }
    match result {
        Ok(r) if r.ok => {
            tracing::info!(%tick, backup_id = %r.id, bytes = r.bytes, "scheduled verification (write-only: a drill needs an identity): the destination holds exactly what was written")
        }
        Ok(r) => {
            tracing::error!(%tick, backup_id = %r.id, problems = ?r.problems, "scheduled verification failed: the destination does not hold what was written")
        }
        Err(e) => {
            tracing::error!(%tick, error = %monoskope_backup_client::error_line(e.as_ref()), "scheduled verification could not run")
        }
    }
}
