//! Continuous backup (`serve --continuous`): the events table followed, every new event in a
//! segment at the destination within seconds of its commit.
//!
//! How it follows, and why it is complete: every `interval` it reads PostgreSQL's count of rows
//! inserted, updated and deleted in `event_records` (`pg_stat_user_tables`, a few bytes, no read
//! of the table); when it moved, it takes a segment — an incremental backup that compares every
//! aggregate's highest version in the store with the chain's watermark (one pass over the
//! table's unique index) and writes exactly the versions above it, so an event can neither be
//! missed nor written twice, whatever the counter did. The same segment runs at least every
//! minute (and after every failure) as a reconciliation, so an event the counter did not show
//! (statistics are flushed within about a second; a reset) is still backed up. A segment that
//! finds nothing new leaves nothing behind.

use std::time::{Duration, Instant};

use crate::engine::{Engine, EngineError};
use crate::identity::Identity;
use crate::ops::metrics;

/// The count of changes PostgreSQL has recorded for the events table.
const CHANGES: &str = "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint FROM pg_stat_user_tables WHERE relname = 'event_records'";

/// The longest time between two reconciling segments.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(60);

/// Follows the events table at `events_db` until the task is dropped.
pub async fn run(engine: Engine, events_db: String, interval: Duration) {
    let who = Identity {
        id: "continuous".into(),
        name: "continuous backup".into(),
        machine: true,
        ..Default::default()
    };
    tracing::info!(interval = %humantime::format_duration(interval), "continuous backup active: following the events table");
    engine.set_continuous();
    let mut pool = None;
    let mut seen: Option<i64> = None;
    let mut pending_since: Option<Instant> = None;
    let mut last_ok: Option<Instant> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lag = |pending: Option<Instant>| {
        metrics::get().set_continuous_lag(pending.map_or(0.0, |t| t.elapsed().as_secs_f64()));
    };
    loop {
        ticker.tick().await;
        if pool.is_none() {
            match crate::events_table::connect(&events_db).await {
                Ok(p) => pool = Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "continuous backup: the events database cannot be reached; retrying")
                }
            }
        }
        let changes = match &pool {
            Some(p) => sqlx::query_scalar::<_, i64>(CHANGES)
                .fetch_one(p)
                .await
                .ok(),
            None => None,
        };
        let changed = changes.is_none() || changes != seen;
        if changed && pending_since.is_none() {
            pending_since = Some(Instant::now());
        }
        let reconcile = last_ok.is_none_or(|t| t.elapsed() >= RECONCILE_EVERY);
        lag(pending_since);
        if !changed && !reconcile && pending_since.is_none() {
            continue;
        }
        match engine.segment(&who).await {
            Ok(Some(r)) if r.error.is_some() => {
                tracing::error!(backup_id = %r.id, error = ?r.error, "continuous segment failed; trying again at the next tick");
            }
            Ok(r) => {
                if let Some(r) = &r {
                    tracing::info!(backup_id = %r.id, events = r.event_count, kind = %r.kind, "continuous segment written");
                }
                seen = changes;
                pending_since = None;
                last_ok = Some(Instant::now());
            }
            Err(e @ (EngineError::Busy { .. } | EngineError::BusyElsewhere { .. })) => {
                tracing::debug!("continuous segment waits: {e}");
            }
            Err(e) => {
                tracing::error!(error = %e, "continuous segment could not start; trying again at the next tick");
            }
        }
        lag(pending_since);
    }
}
