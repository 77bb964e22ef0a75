//! Monoskope's events table (`event_records`) on PostgreSQL as the table source and the table
//! sink both reach it: its exact DDL, the connection pool, and how a wait for its lock is bounded
//! and explained.

use std::time::Duration;

pub mod dialect;
pub use dialect::Dialect;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// Monoskope's table definition, exactly as its EventStore issues it (docs/MONOSKOPE.md §3.1).
pub const CREATE_TABLE: &str = r#"CREATE TABLE IF NOT EXISTS "event_records" ("event_id" uuid, "event_type" varchar(250), "aggregate_id" uuid, "aggregate_type" varchar(250), "aggregate_version" bigint, "timestamp" timestamptz, "metadata" jsonb, "data" jsonb, PRIMARY KEY ("event_id"), UNIQUE ("aggregate_id", "aggregate_type", "aggregate_version"))"#;

/// How long a backup or restore waits, by default, for other sessions to let go of
/// `event_records` (`--lock-wait-timeout`) before it gives up and names them.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(30);

/// Why the events database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not a PostgreSQL URL.
    #[error("{0}")]
    BadUrl(String),
    /// The database did not let us in (with the reason).
    #[error("{0}")]
    Unavailable(String),
}

/// Connects to the events database at `url` (`postgres://…`; `sslmode`, `sslrootcert`,
/// `sslcert`, `sslkey` in the URL for client certificates): a pool of two connections, retried
/// for 15 s.
pub async fn connect(url: &str) -> Result<PgPool, ConnectError> {
    crate::database::check_client_key(url, "events database").map_err(ConnectError::BadUrl)?;
    let opts: PgConnectOptions = url
        .parse()
        .map_err(|e| ConnectError::BadUrl(format!("events database URL: {e}")))?;
    let options = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(15));
    crate::database::open(options, opts).await.map_err(|e| {
        ConnectError::Unavailable(format!("cannot connect to the events database: {e}"))
    })
}

/// Which database `pool` reaches (`SELECT version()`), asked before anything is written.
pub async fn dialect(pool: &PgPool) -> Result<Dialect, sqlx::Error> {
    let v: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(pool)
        .await?;
    Ok(Dialect::of_version(&v))
}

/// The statement that makes the transaction's statements wait at most `wait` for a lock (zero:
/// no limit).
pub fn set_lock_timeout(wait: Duration) -> String {
    format!(
        "SET LOCAL lock_timeout = {}",
        wait.as_millis().min(i32::MAX as u128)
    )
}

/// Whether `e` is PostgreSQL's "lock timeout" (`lock_not_available`): another session held the
/// table longer than `lock_timeout`.
pub fn is_lock_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03")
}

/// Why an operation that waited `waited` for `event_records` gave up: the sessions holding the
/// table (pid, application, user, client, state, since when, lock mode) and what to do.
/// `doing`: who waited ("the backup", "the restore wrote nothing; it"); `again`: what to do
/// then ("back up again").
pub async fn in_use(pool: &PgPool, waited: Duration, doing: &str, again: &str) -> String {
    let waited = humantime::format_duration(waited);
    let holders = lock_holders(pool).await;
    format!(
        "event_records is in use: {doing} waited {waited} to lock it; held by {holders}; end those sessions (or raise --lock-wait-timeout) and {again}"
    )
}

/// The sessions holding a lock on `event_records`, one phrase each.
async fn lock_holders(pool: &PgPool) -> String {
    let held: Result<Vec<String>, _> = sqlx::query_scalar(
        r#"SELECT format('pid %s (%suser %s, from %s, %s%s, %s)', a.pid,
                  CASE WHEN a.application_name <> '' THEN 'application ' || a.application_name || ', ' ELSE '' END,
                  a.usename, coalesce(host(a.client_addr), 'a local socket'), a.state,
                  coalesce(' in a transaction since ' || to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), ''),
                  l.mode)
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.relation = to_regclass('"event_records"') AND l.granted
             AND a.pid <> pg_backend_pid()
           ORDER BY a.xact_start NULLS LAST, a.pid"#,
    )
    .fetch_all(pool)
    .await;
    match held {
        Ok(h) if h.is_empty() => "sessions that let go of it just after".into(),
        Ok(h) if h.len() > 5 => format!("{}; and {} more", h[..5].join("; "), h.len() - 5),
        Ok(h) => h.join("; "),
        Err(e) => format!("sessions that could not be listed ({e})"),
    }
}
