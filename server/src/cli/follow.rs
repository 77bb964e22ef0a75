//! Continuous backup (`serve --continuous`): the events table followed, every new event in a
//! segment at the destination within seconds of its commit.
//!
//! How it follows, and why it is complete: what it writes always comes from the table — a
//! segment is an incremental backup that compares every aggregate's highest version in the store
//! with the chain's watermark (one pass over the table's unique index) and writes exactly the
//! versions above it, so an event can neither be missed nor written twice, whatever told it to
//! look. What tells it to look:
//! - the message bus (`--bus-url`), when given: Monoskope's EventStore publishes every event
//!   after storing it, so a message means "a new row is committed"; the first one after a quiet
//!   spell starts a segment half a second later (gathering the rest of its Store call), and
//!   while messages keep coming there is one segment per interval (segments start the interval
//!   less the last one's duration apart, so each is durable about an interval after the one
//!   before);
//! - every `interval`, PostgreSQL's count of rows inserted, updated and deleted in
//!   `event_records` (`pg_stat_user_tables`, a few bytes, no read of the table): when it moved,
//!   a segment — the fallback when the bus is down, not configured or lost a message (not on
//!   CockroachDB, which keeps no such counter: there the bus and reconciliation alone). A backend
//!   reports its counts at most once a second, and what it counted within that second only when
//!   it next reports or after ten idle seconds (PostgreSQL's `PGSTAT_MIN_INTERVAL` and
//!   `PGSTAT_IDLE_INTERVAL`): so after the counter moved, segments go on every interval until one
//!   has started [`STATS_LAG`] after the move, which finds the end of a burst in seconds;
//! - at least every `reconcile` (and after every failure), a segment anyway, so an event neither
//!   showed (statistics are flushed within about a second; a reset; a publish the store never
//!   made because it crashed between insert and publish) is still backed up. While the counter
//!   stands still and each reconciliation finds nothing, the time to the next doubles, up to
//!   [`RECONCILE_BACKOFF`] times `reconcile`; the first change brings it back. Where there is no
//!   counter (CockroachDB, `track_counts` off) reconciliation is what finds events: never longer;
//!   and once a reconciliation finds events the counter did not show (a writer whose sessions
//!   do not count), never longer again in this process.
//!
//! A segment that finds nothing new writes nothing at the destination. Once a chain's oldest
//! segment is `compact` old, its segments become one incremental (`engine::compact`).

use std::time::{Duration, Instant};

use crate::bus::BusConfig;
use crate::engine::{Engine, EngineError};
use crate::identity::Identity;
use crate::ops::metrics;

/// The count of changes PostgreSQL has recorded for the events table; NULL when it records none
/// (`track_counts` off).
const CHANGES: &str = "SELECT CASE WHEN current_setting('track_counts')::bool THEN (SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint FROM pg_stat_user_tables WHERE relname = 'event_records') END";

/// While the store's change counter stands still, reconciliation backs off to at most this many
/// times `reconcile` (16 minutes at the default).
pub const RECONCILE_BACKOFF: u32 = 16;

/// The longest time between two reconciling segments, unless configured.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(60);

/// How old a chain's oldest segment gets before compaction, unless configured.
pub const COMPACT_AFTER: Duration = Duration::from_secs(3600);

/// The longest time between two looks for segments to compact (and at most half the age).
const COMPACT_CHECK: Duration = Duration::from_secs(60);

/// How long after a backend reported its counts it may hold back the next ones (PostgreSQL
/// reports at most once a second): the follower keeps looking that long after the counter moved.
const STATS_LAG: Duration = Duration::from_millis(1100);

/// After the first message of a quiet spell, how long to gather the rest of its burst.
const GATHER: Duration = Duration::from_millis(500);

/// How continuous backup follows the store: a plan, made from the configuration.
#[derive(Debug, Clone)]
pub struct Follow {
    /// The events table's database.
    pub events_db: String,
    /// How often to look (and the shortest time between two segments with events).
    pub interval: Duration,
    /// The longest time between two reconciling segments.
    pub reconcile: Duration,
    /// How old a chain's oldest segment gets before its segments are compacted (`None`: never).
    pub compact: Option<Duration>,
    /// The message bus to listen on, if any.
    pub bus: Option<BusConfig>,
}

/// Follows the events table until the task is dropped.
pub async fn run(engine: Engine, f: Follow) {
    let who = Identity {
        id: "continuous".into(),
        name: "continuous backup".into(),
        machine: true,
        ..Default::default()
    };
    let heard = f
        .bus
        .clone()
        .map(|b| crate::bus::listen::spawn(b, |up| metrics::get().set_bus_connected(up)));
    tracing::info!(
        interval = %humantime::format_duration(f.interval),
        reconcile = %humantime::format_duration(f.reconcile),
        bus = heard.is_some(),
        "continuous backup active: following the events table"
    );
    engine.set_continuous();
    let mut pool = None;
    let mut seen: Option<i64> = None;
    let mut counterless = false;
    let mut reconcile_every = f.reconcile;
    let mut counter_missed = false;
    // When the counter was last seen to move, while a segment that started at least STATS_LAG
    // after it is still to come.
    let mut moved_at: Option<Instant> = None;
    let mut pending_since: Option<Instant> = None;
    let mut last_ok: Option<Instant> = None;
    let mut last_written: Option<Instant> = None;
    let mut last_compact_look = Instant::now();
    // When to look next: every interval; while events keep coming, the interval less the last
    // segment's own duration after its start, so that a segment is durable at most about one
    // interval after the one before it (an event stored just after a segment read the table
    // waits for the next one to start and finish).
    let mut next_look = tokio::time::Instant::now() + f.interval;
    let mut last_took = Duration::ZERO;
    let lag = |pending: Option<Instant>| {
        metrics::get().set_continuous_lag(pending.map_or(0.0, |t| t.elapsed().as_secs_f64()));
    };
    loop {
        let by_bus = match &heard {
            Some(h) => tokio::select! {
                _ = tokio::time::sleep_until(next_look) => false,
                _ = h.notified() => true,
            },
            None => {
                tokio::time::sleep_until(next_look).await;
                false
            }
        };
        next_look = tokio::time::Instant::now() + f.interval;
        if by_bus {
            // The events of one Store call arrive together: a moment to gather them; and while
            // events keep coming, one segment per interval (less the last one's duration).
            let gather = Instant::now() + (f.interval / 4).min(GATHER);
            let next =
                last_written.map_or(gather, |t| (t + cadence(f.interval, last_took)).max(gather));
            tokio::time::sleep_until(next.into()).await;
        }
        // Taken before the segment reads the table: every event heard of is committed by now.
        if let Some(at) = heard.as_ref().and_then(|h| h.take()) {
            pending_since = Some(pending_since.map_or(at, |p| p.min(at)));
        }
        if pool.is_none() {
            match crate::events_table::connect(&f.events_db).await {
                Ok(p) => {
                    // CockroachDB keeps no per-table change counter to poll (its
                    // pg_stat_user_tables is empty): there, the bus and reconciliation alone
                    // prompt segments — never a read of the table every interval.
                    match crate::events_table::dialect(&p).await {
                        Ok(d) if d.is_cockroach() => {
                            if !counterless {
                                tracing::warn!(database = %d.name(), bus = heard.is_some(), reconcile = %humantime::format_duration(f.reconcile), "continuous backup on CockroachDB: no change counter to poll; new events are found by the bus (when configured) and by reconciliation");
                            }
                            counterless = true;
                        }
                        _ => counterless = false,
                    }
                    pool = Some(p);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "continuous backup: the events database cannot be reached; retrying")
                }
            }
        }
        let changes = match &pool {
            Some(_) if counterless => Some(0),
            Some(p) => match sqlx::query_scalar::<_, Option<i64>>(CHANGES)
                .fetch_one(p)
                .await
            {
                Ok(Some(n)) => Some(n),
                Ok(None) => {
                    tracing::warn!(bus = heard.is_some(), reconcile = %humantime::format_duration(f.reconcile), "continuous backup: PostgreSQL records no changes (track_counts is off); new events are found by the bus (when configured) and by reconciliation");
                    counterless = true;
                    Some(0)
                }
                Err(_) => None,
            },
            None => None,
        };
        let changed = changes.is_none() || changes != seen;
        if changed && pending_since.is_none() {
            pending_since = Some(Instant::now());
        }
        if changed && !counterless {
            moved_at = Some(Instant::now());
        }
        let reconcile = last_ok.is_none_or(|t| t.elapsed() >= reconcile_every);
        lag(pending_since);
        if !changed && !reconcile && pending_since.is_none() && moved_at.is_none() {
            continue;
        }
        // Only the clock asked for this one: nothing moved lately, nothing was heard.
        let reconciling = !changed && pending_since.is_none() && moved_at.is_none();
        let started = Instant::now();
        match engine.segment(&who).await {
            Ok(Some(r)) if r.error.is_some() => {
                tracing::error!(backup_id = %r.id, error = ?r.error, "continuous segment failed; trying again at the next tick");
            }
            Ok(r) => {
                if let Some(r) = &r {
                    tracing::info!(backup_id = %r.id, events = r.event_count, kind = %r.kind, by_bus, "continuous segment written");
                    if r.event_count > 0 {
                        last_written = Some(started);
                        last_took = started.elapsed();
                        next_look = (started + cadence(f.interval, last_took)).into();
                    }
                }
                seen = changes;
                pending_since = None;
                last_ok = Some(Instant::now());
                if moved_at.is_some_and(|t| started >= t + STATS_LAG) {
                    moved_at = None;
                }
                let found = r.as_ref().is_some_and(|r| r.event_count > 0);
                if reconciling && found && !counterless && !counter_missed {
                    tracing::warn!(reconcile = %humantime::format_duration(f.reconcile), "continuous backup: reconciliation found events PostgreSQL's change counter did not show (a writer with track_counts off?); reconciling every interval given from now on, without backing off");
                    counter_missed = true;
                }
                reconcile_every = next_reconcile(
                    reconcile_every,
                    f.reconcile,
                    reconciling && !found && !counterless && !counter_missed,
                );
            }
            Err(e @ (EngineError::Busy { .. } | EngineError::BusyElsewhere { .. })) => {
                tracing::debug!("continuous segment waits: {e}");
            }
            Err(e) => {
                tracing::error!(error = %e, "continuous segment could not start; trying again at the next tick");
            }
        }
        lag(pending_since);
        if let Some(age) = f.compact {
            if last_compact_look.elapsed() >= (age / 2).min(COMPACT_CHECK) {
                last_compact_look = Instant::now();
                compact(&engine, &who, age).await;
            }
        }
    }
}

/// The time from one segment's start to the next while events keep coming: the interval less
/// the last segment's duration `took`, and at least half the interval.
fn cadence(interval: Duration, took: Duration) -> Duration {
    interval.saturating_sub(took).max(interval / 2)
}

/// The time to the reconciliation after one: doubled (up to [`RECONCILE_BACKOFF`] times `base`)
/// when it was `idle` — prompted by the clock alone, found nothing, with a change counter that
/// stood still — else `base`.
fn next_reconcile(now: Duration, base: Duration, idle: bool) -> Duration {
    if idle {
        (now * 2).min(base * RECONCILE_BACKOFF)
    } else {
        base
    }
}

/// Compacts what is due; a failure is logged (and recorded by the engine), and tried again at
/// the next look.
async fn compact(engine: &Engine, who: &Identity, age: Duration) {
    match engine.compact(who, age).await {
        Ok(_) => {}
        Err(e @ (EngineError::Busy { .. } | EngineError::BusyElsewhere { .. })) => {
            tracing::debug!("compaction waits: {e}");
        }
        Err(e) => tracing::error!(error = %e, "compaction could not start; trying again later"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_start_an_interval_less_their_duration_apart_and_at_least_half_of_it() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(cadence(s(5), ms(150)), ms(4850));
        assert_eq!(cadence(s(5), Duration::ZERO), s(5));
        assert_eq!(cadence(s(5), s(4)), ms(2500));
        assert_eq!(cadence(s(1), s(3)), ms(500));
    }

    #[test]
    fn reconciliation_backs_off_while_idle_to_sixteen_times_and_returns_at_the_first_change() {
        let s = Duration::from_secs;
        let mut every = s(60);
        let mut seen = vec![];
        for _ in 0..6 {
            every = next_reconcile(every, s(60), true);
            seen.push(every.as_secs());
        }
        assert_eq!(seen, [120, 240, 480, 960, 960, 960]);
        assert_eq!(next_reconcile(every, s(60), false), s(60));
        assert_eq!(next_reconcile(s(60), s(60), false), s(60));
    }
}
