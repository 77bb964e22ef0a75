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

const SELECT: &str = r#"SELECT event_id::text AS event_id, event_type, aggregate_id::text AS aggregate_id, aggregate_type, aggregate_version, "timestamp", metadata::text AS metadata, data::text AS data FROM "event_records" ORDER BY "timestamp", aggregate_type, aggregate_id, aggregate_version"#;

/// Connects to the events database.
pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(15))
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the events database: {e}"))
}

/// Streams every event of one snapshot into a bounded channel; the reader stops when the
/// receiver is dropped.
pub fn snapshot(pool: PgPool, buffer: usize) -> mpsc::Receiver<anyhow::Result<Record>> {
    let (tx, rx) = mpsc::channel(buffer);
    tokio::spawn(async move {
        if let Err(e) = stream_into(&pool, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

async fn stream_into(
    pool: &PgPool,
    tx: &mpsc::Sender<anyhow::Result<Record>>,
) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *conn)
        .await?;
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('event_records')::text")
        .fetch_one(&mut *conn)
        .await?;
    if exists.is_some() {
        let mut rows = sqlx::query(SELECT).fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            let ts: Option<chrono::DateTime<chrono::Utc>> = row.try_get("timestamp")?;
            let md: Option<String> = row.try_get("metadata")?;
            let rec = Record {
                event_id: row.try_get("event_id")?,
                event_type: row
                    .try_get::<Option<String>, _>("event_type")?
                    .unwrap_or_default(),
                aggregate_id: row
                    .try_get::<Option<String>, _>("aggregate_id")?
                    .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into()),
                aggregate_type: row
                    .try_get::<Option<String>, _>("aggregate_type")?
                    .unwrap_or_default(),
                aggregate_version: row
                    .try_get::<Option<i64>, _>("aggregate_version")?
                    .unwrap_or(0) as u64,
                timestamp: ts.map(|t| prost_types::Timestamp {
                    seconds: t.timestamp(),
                    nanos: t.timestamp_subsec_nanos() as i32,
                }),
                metadata: match md {
                    Some(m) => serde_json::from_str(&m)?,
                    None => Default::default(),
                },
                data: row
                    .try_get::<Option<String>, _>("data")?
                    .unwrap_or_default()
                    .into_bytes(),
            };
            if tx.send(Ok(rec)).await.is_err() {
                break;
            }
        }
    }
    drop(sqlx::query("COMMIT").execute(&mut *conn).await);
    Ok(())
}
