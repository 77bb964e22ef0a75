//! SQLite storage of the embedded EventStore, with the semantics of Monoskope's `event_records`
//! table on PostgreSQL (docs/MONOSKOPE.md §3): microsecond timestamps, version 0 and the
//! nil aggregate id stored as NULL, data and metadata as normalised JSON or NULL, a random
//! event id per insert, UNIQUE(aggregate_id, aggregate_type, aggregate_version).

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use futures::TryStreamExt;
use monoskope_backup_api::eventsourcing::{Event, EventFilter};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, QueryBuilder, Row, Sqlite, SqlitePool};
use tokio::sync::mpsc;

use super::jsonb;

const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// Why an insert failed, in the two classes Monoskope's store distinguishes.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    /// An integrity violation (the version, or anything unique, is taken).
    #[error("event aggregate version already exists in store")]
    Conflict,
    /// Anything else: invalid JSON data, a timestamp out of range, a database error.
    #[error("could not save events")]
    Other(#[source] anyhow::Error),
}

/// An event as read from storage, with its event id.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// The event as `Retrieve` returns it.
    pub event: Event,
    /// The event id assigned at insert.
    pub event_id: String,
}

/// The events table of the embedded EventStore.
#[derive(Clone, Debug)]
pub struct Storage {
    pool: SqlitePool,
    /// How stored JSON orders object keys.
    pub key_order: jsonb::KeyOrder,
}

/// Rounds a protobuf timestamp to whole microseconds since the epoch, as `timestamptz` does.
/// `None` when out of PostgreSQL's range.
pub fn to_micros(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    let (s, n) = ts.map(|t| (t.seconds, t.nanos)).unwrap_or((0, 0));
    let n = i64::from(n.clamp(0, 999_999_999));
    let micros = s.checked_mul(1_000_000)?.checked_add((n + 500) / 1000)?;
    // timestamptz ends in the year 294276; keep clear of i64 limits.
    (micros.abs() < 9_224_318_015_999_999).then_some(micros)
}

/// The protobuf timestamp of a microsecond count.
pub fn from_micros(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
    }
}

impl Storage {
    /// Opens (creating if needed) the SQLite database at `path`, in WAL mode.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(3600));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS event_records (
                seq INTEGER PRIMARY KEY,
                event_id TEXT NOT NULL UNIQUE,
                event_type TEXT,
                aggregate_id TEXT,
                aggregate_type TEXT,
                aggregate_version INTEGER,
                ts INTEGER,
                metadata TEXT,
                data TEXT,
                UNIQUE (aggregate_id, aggregate_type, aggregate_version))",
        )
        .execute(&pool)
        .await?;
        // Monoskope's table has no timestamp index; ours has one so that reads ordered by
        // timestamp stream from the index instead of sorting every row in memory.
        sqlx::query("CREATE INDEX IF NOT EXISTS event_records_ts ON event_records (ts)")
            .execute(&pool)
            .await?;
        Ok(Self {
            pool,
            key_order: jsonb::KeyOrder::Postgres,
        })
    }

    /// Inserts one event in its own transaction, as Monoskope's `Store` does.
    pub async fn insert(&self, e: &Event) -> Result<(), InsertError> {
        let ts = to_micros(e.timestamp.as_ref())
            .ok_or_else(|| InsertError::Other(anyhow::anyhow!("timestamp out of range")))?;
        let data = if e.data.is_empty() {
            None
        } else {
            Some(
                jsonb::normalize_with(&e.data, self.key_order)
                    .map_err(|err| InsertError::Other(err.into()))?,
            )
        };
        let metadata = if e.metadata.is_empty() {
            None
        } else {
            let text =
                serde_json::to_string(&e.metadata).map_err(|err| InsertError::Other(err.into()))?;
            Some(
                jsonb::normalize_with(text.as_bytes(), self.key_order)
                    .map_err(|err| InsertError::Other(err.into()))?,
            )
        };
        let aggregate_id = e.aggregate_id.to_ascii_lowercase();
        let aggregate_id = (aggregate_id != NIL_UUID).then_some(aggregate_id);
        let version = e.aggregate_version.unwrap_or(0);
        let version = (version != 0).then_some(version as i64);
        let res = sqlx::query(
            "INSERT INTO event_records (event_id, event_type, aggregate_id, aggregate_type, aggregate_version, ts, metadata, data)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(&e.r#type)
        .bind(aggregate_id)
        .bind(&e.aggregate_type)
        .bind(version)
        .bind(ts)
        .bind(metadata)
        .bind(data)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(InsertError::Conflict)
            }
            Err(err) => Err(InsertError::Other(err.into())),
        }
    }

    /// Inserts many events in transactions of 10,000 (seeding sample data; not a `Store` path).
    pub async fn insert_many(&self, events: impl Iterator<Item = Event>) -> anyhow::Result<u64> {
        let mut n = 0u64;
        let mut tx = self.pool.begin().await?;
        for e in events {
            let ts = to_micros(e.timestamp.as_ref())
                .ok_or_else(|| anyhow::anyhow!("timestamp out of range"))?;
            let data = if e.data.is_empty() {
                None
            } else {
                Some(jsonb::normalize_with(&e.data, self.key_order)?)
            };
            let metadata = if e.metadata.is_empty() {
                None
            } else {
                Some(jsonb::normalize_with(
                    serde_json::to_string(&e.metadata)?.as_bytes(),
                    self.key_order,
                )?)
            };
            let version = e.aggregate_version.unwrap_or(0);
            sqlx::query(
                "INSERT INTO event_records (event_id, event_type, aggregate_id, aggregate_type, aggregate_version, ts, metadata, data)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(&e.r#type)
            .bind(e.aggregate_id.to_ascii_lowercase())
            .bind(&e.aggregate_type)
            .bind((version != 0).then_some(version as i64))
            .bind(ts)
            .bind(metadata)
            .bind(data)
            .execute(&mut *tx)
            .await?;
            n += 1;
            if n % 10_000 == 0 {
                tx.commit().await?;
                tx = self.pool.begin().await?;
            }
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Streams the events matching any of `filters` (all events when `filters` is empty),
    /// ordered by timestamp, into a bounded channel: rows are read at the pace the receiver
    /// takes them, and reading stops when the receiver is dropped.
    pub fn retrieve(
        &self,
        filters: Vec<EventFilter>,
        buffer: usize,
    ) -> mpsc::Receiver<anyhow::Result<StoredEvent>> {
        let (tx, rx) = mpsc::channel(buffer);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "SELECT event_id, event_type, aggregate_id, aggregate_type, aggregate_version, ts, metadata, data FROM event_records",
            );
            push_where(&mut qb, &filters);
            qb.push(" ORDER BY ts ASC");
            let mut rows = qb.build().fetch(&pool);
            loop {
                let item = match rows.try_next().await {
                    Ok(Some(row)) => row_to_event(&row),
                    Ok(None) => break,
                    Err(err) => Err(err.into()),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        rx
    }

    /// Number of stored events.
    pub async fn count(&self) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_records")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }
}

/// RetrieveOr's WHERE clause (docs/MONOSKOPE.md §2.2): with two or more filters the empty
/// ones are dropped; no non-empty filter means no WHERE clause at all.
fn push_where(qb: &mut QueryBuilder<Sqlite>, filters: &[EventFilter]) {
    let groups: Vec<&EventFilter> = filters.iter().filter(|f| !is_empty(f)).collect();
    if groups.is_empty() {
        return;
    }
    qb.push(" WHERE ");
    for (i, f) in groups.iter().enumerate() {
        if i > 0 {
            qb.push(" OR ");
        }
        qb.push("(1=1");
        if let Some(id) = &f.aggregate_id {
            let id = id.to_ascii_lowercase();
            if id == NIL_UUID {
                // The nil UUID is stored as NULL, and NULL never equals anything.
                qb.push(" AND 0=1");
            } else {
                qb.push(" AND aggregate_id = ").push_bind(id);
            }
        }
        if let Some(t) = &f.aggregate_type {
            qb.push(" AND aggregate_type = ").push_bind(t.clone());
        }
        // Versions are stored as the signed reinterpretation of the u64; a bound of 2^63 or
        // more compares as a large unsigned literal against a bigint (§3.2).
        if let Some(v) = f.min_version {
            match i64::try_from(v) {
                Ok(v) => qb.push(" AND aggregate_version >= ").push_bind(v),
                Err(_) => qb.push(" AND 0=1"),
            };
        }
        if let Some(v) = f.max_version {
            match i64::try_from(v) {
                Ok(v) => qb.push(" AND aggregate_version <= ").push_bind(v),
                Err(_) => qb.push(" AND aggregate_version IS NOT NULL"),
            };
        }
        if let Some(t) = &f.min_timestamp {
            match to_micros(Some(t)) {
                Some(us) => qb.push(" AND ts >= ").push_bind(us),
                None => qb.push(if t.seconds < 0 {
                    " AND ts IS NOT NULL"
                } else {
                    " AND 0=1"
                }),
            };
        }
        if let Some(t) = &f.max_timestamp {
            match to_micros(Some(t)) {
                Some(us) => qb.push(" AND ts <= ").push_bind(us),
                None => qb.push(if t.seconds < 0 {
                    " AND 0=1"
                } else {
                    " AND ts IS NOT NULL"
                }),
            };
        }
        qb.push(")");
    }
}

fn is_empty(f: &EventFilter) -> bool {
    f.aggregate_id.is_none()
        && f.aggregate_type.is_none()
        && f.min_version.is_none()
        && f.max_version.is_none()
        && f.min_timestamp.is_none()
        && f.max_timestamp.is_none()
}

fn row_to_event(row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<StoredEvent> {
    let metadata: Option<String> = row.try_get("metadata")?;
    let metadata: BTreeMap<String, String> = match metadata {
        Some(m) => serde_json::from_str(&m)?,
        None => BTreeMap::new(),
    };
    let data: Option<String> = row.try_get("data")?;
    let version: Option<i64> = row.try_get("aggregate_version")?;
    let ts: Option<i64> = row.try_get("ts")?;
    let aggregate_id: Option<String> = row.try_get("aggregate_id")?;
    Ok(StoredEvent {
        event_id: row.try_get("event_id")?,
        event: Event {
            r#type: row
                .try_get::<Option<String>, _>("event_type")?
                .unwrap_or_default(),
            timestamp: ts.map(from_micros),
            aggregate_id: aggregate_id.unwrap_or_else(|| NIL_UUID.to_string()),
            aggregate_type: row
                .try_get::<Option<String>, _>("aggregate_type")?
                .unwrap_or_default(),
            aggregate_version: Some(version.map(|v| v as u64).unwrap_or(0)),
            data: data.map(String::into_bytes).unwrap_or_default(),
            metadata,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::{from_micros, to_micros};
    use prost_types::Timestamp;

    #[test]
    fn timestamps_round_to_nearest_microsecond() {
        let t = |s, n| {
            Some(Timestamp {
                seconds: s,
                nanos: n,
            })
        };
        assert_eq!(to_micros(t(1, 345_678_901).as_ref()), Some(1_345_679));
        assert_eq!(to_micros(t(1, 999_999_600).as_ref()), Some(2_000_000));
        assert_eq!(to_micros(None), Some(0));
        assert_eq!(to_micros(t(i64::MAX, 0).as_ref()), None);
        assert_eq!(
            from_micros(-1),
            Timestamp {
                seconds: -1,
                nanos: 999_999_000
            }
        );
    }
}
