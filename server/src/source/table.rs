//! The events table of Monoskope's EventStore (`event_records` on PostgreSQL) as a backup
//! source: one consistent snapshot per backup — a single REPEATABLE READ, READ ONLY transaction
//! — streamed row by row, keeping each event's id. Faster than the `Retrieve` API and needs the
//! database's credentials. (CockroachDB: every transaction is SERIALIZABLE and reads one
//! snapshot; `AS OF SYSTEM TIME` would avoid contention — not tested here.)

use futures::TryStreamExt;
use monoskope_backup_api::archive::v1::Record;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;

const SELECT: &str = r#"SELECT event_id, event_type, aggregate_id, aggregate_type, aggregate_version, "timestamp", metadata::text AS metadata, data::text AS data FROM "event_records" ORDER BY "timestamp", aggregate_type, aggregate_id, aggregate_version"#;

/// Connects to the events database.
pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(15))
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the events database: {e}"))
}

/// What the reading task sends: batches of records, or the error that stopped it.
pub type Batches = mpsc::Receiver<anyhow::Result<Vec<Record>>>;

/// The batches as a stream of single records.
pub fn records(rx: Batches) -> impl futures::Stream<Item = anyhow::Result<Record>> + Send {
    use futures::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(rx).flat_map(|batch| {
        let (records, error) = match batch {
            Ok(records) => (records, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        futures::stream::iter(records.into_iter().map(Ok).chain(error.map(Err)))
    })
}

/// Streams every event of one snapshot into a bounded channel (`buffer` batches); the reader
/// stops when the receiver is dropped.
pub fn snapshot(pool: PgPool, buffer: usize) -> Batches {
    let (tx, rx) = mpsc::channel(buffer);
    tokio::spawn(async move {
        if let Err(e) = stream_into(&pool, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

/// The text form of a uuid column, as PostgreSQL prints it (lowercase, hyphenated).
fn uuid_text(u: uuid::Uuid) -> String {
    u.hyphenated().to_string()
}

/// Reads one row of [`SELECT`]'s columns (by position: event_id, event_type, aggregate_id,
/// aggregate_type, aggregate_version, timestamp, metadata, data).
fn record_of(row: &sqlx::postgres::PgRow) -> anyhow::Result<Record> {
    let ts: Option<chrono::DateTime<chrono::Utc>> = row.try_get(5)?;
    let md: Option<&str> = row.try_get(6)?;
    Ok(Record {
        event_id: uuid_text(row.try_get::<uuid::Uuid, _>(0)?),
        event_type: row.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
        aggregate_id: uuid_text(row.try_get::<Option<uuid::Uuid>, _>(2)?.unwrap_or_default()),
        aggregate_type: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
        aggregate_version: row.try_get::<Option<i64>, _>(4)?.unwrap_or(0) as u64,
        timestamp: ts.map(|t| prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: t.timestamp_subsec_nanos() as i32,
        }),
        metadata: match md {
            Some(m) => serde_json::from_str(m)?,
            None => Default::default(),
        },
        data: row
            .try_get::<Option<String>, _>(7)?
            .unwrap_or_default()
            .into_bytes(),
    })
}

/// A connection inside one REPEATABLE READ, READ ONLY transaction (one snapshot), and whether
/// the events table exists in it.
async fn begin_snapshot(
    pool: &PgPool,
) -> anyhow::Result<(sqlx::pool::PoolConnection<sqlx::Postgres>, bool)> {
    let mut conn = pool.acquire().await?;
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *conn)
        .await?;
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('event_records')::text")
        .fetch_one(&mut *conn)
        .await?;
    Ok((conn, exists.is_some()))
}

/// Sends the rows of [`SELECT`]'s columns as batches of records until they end or the
/// receiver is gone.
async fn forward(
    mut rows: impl futures::Stream<Item = Result<sqlx::postgres::PgRow, sqlx::Error>> + Unpin,
    tx: &mpsc::Sender<anyhow::Result<Vec<Record>>>,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(super::RECORD_BATCH);
    while let Some(row) = rows.try_next().await? {
        batch.push(record_of(&row)?);
        if batch.len() == super::RECORD_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(super::RECORD_BATCH));
            if tx.send(Ok(full)).await.is_err() {
                return Ok(());
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(Ok(batch)).await;
    }
    Ok(())
}

async fn stream_into(
    pool: &PgPool,
    tx: &mpsc::Sender<anyhow::Result<Vec<Record>>>,
) -> anyhow::Result<()> {
    let (mut conn, exists) = begin_snapshot(pool).await?;
    if exists {
        forward(sqlx::query(SELECT).fetch(&mut *conn), tx).await?;
    }
    drop(sqlx::query("COMMIT").execute(&mut *conn).await);
    Ok(())
}

/// Like [`snapshot`], but only the events above `parent` (a chain's watermark), in one
/// snapshot: first the highest version of every aggregate (one pass over the table's unique
/// index), compared with the watermark — a store that holds less than the chain, or events
/// without a version, is a [`super::ChainMismatch`], sent before any record — then the new
/// events of the aggregates that grew, through the unique index.
pub fn incremental(
    pool: PgPool,
    parent: std::sync::Arc<crate::engine::watermark::Watermark>,
    buffer: usize,
) -> Batches {
    let (tx, rx) = mpsc::channel(buffer);
    tokio::spawn(async move {
        if let Err(e) = incremental_into(&pool, &parent, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

async fn incremental_into(
    pool: &PgPool,
    parent: &crate::engine::watermark::Watermark,
    tx: &mpsc::Sender<anyhow::Result<Vec<Record>>>,
) -> anyhow::Result<()> {
    use super::ChainMismatch;
    let (mut conn, exists) = begin_snapshot(pool).await?;
    if !exists {
        return Err(ChainMismatch("the store has no events table any more".into()).into());
    }
    let unversioned: i64 = sqlx::query_scalar(
        r#"SELECT COUNT(*) FROM "event_records" WHERE aggregate_version IS NULL"#,
    )
    .fetch_one(&mut *conn)
    .await?;
    if unversioned > 0 {
        return Err(ChainMismatch(format!(
            "the store holds {unversioned} events without a version, which only a full backup can hold"
        ))
        .into());
    }
    let (mut types, mut ids, mut held) = (Vec::new(), Vec::new(), Vec::new());
    let mut seen = 0usize;
    {
        let mut rows = sqlx::query(
            r#"SELECT aggregate_type, aggregate_id::text AS aggregate_id, MAX(aggregate_version) AS v FROM "event_records" GROUP BY aggregate_type, aggregate_id"#,
        )
        .fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            let t: String = row
                .try_get::<Option<String>, _>("aggregate_type")?
                .unwrap_or_default();
            let id: String = row
                .try_get::<Option<String>, _>("aggregate_id")?
                .unwrap_or_default()
                .to_ascii_lowercase();
            let v = row.try_get::<Option<i64>, _>("v")?.unwrap_or(0) as u64;
            let a = (t, id);
            let h = parent.get(&a);
            if parent.map.contains_key(&a) {
                seen += 1;
            }
            if v < h {
                return Err(ChainMismatch(format!(
                    "the store no longer matches the chain: aggregate {} {} is at version {v}, the chain holds {h} (restored from an older backup?)",
                    a.0, a.1
                ))
                .into());
            }
            if v > h {
                types.push(a.0);
                ids.push(a.1);
                held.push(h as i64);
            }
        }
    }
    if seen < parent.map.len() {
        return Err(ChainMismatch(format!(
            "the store no longer matches the chain: {} aggregates the chain holds are gone from the store",
            parent.map.len() - seen
        ))
        .into());
    }
    if !types.is_empty() {
        let q = SELECT.replace(
            r#"FROM "event_records" ORDER BY"#,
            r#"FROM "event_records" e JOIN unnest($1::text[], $2::uuid[], $3::bigint[]) AS w(t, i, v) ON e.aggregate_type = w.t AND e.aggregate_id = w.i AND e.aggregate_version > w.v ORDER BY"#,
        );
        let rows = sqlx::query(&q)
            .bind(&types)
            .bind(&ids)
            .bind(&held)
            .fetch(&mut *conn);
        forward(rows, tx).await?;
    }
    drop(sqlx::query("COMMIT").execute(&mut *conn).await);
    Ok(())
}
