//! The events table (`event_records`) of Monoskope's EventStore on PostgreSQL, written in one
//! transaction with binary COPY, its primary key and unique index built after the load. It creates the table with Monoskope's exact DDL when missing
//! (after a dropped database the restore may run before the EventStore starts), refuses a
//! non-empty table unless `drop_existing`, deletes the old events inside the same transaction,
//! and commits only after the whole archive authenticated: the store is either the old one or
//! the restored one. Nothing is published to the message bus.
//!
//! CockroachDB: it accepts `COPY … FROM STDIN` only in text/CSV form and limits the size of one
//! transaction; this sink speaks the PostgreSQL wire form and was tested on PostgreSQL only.

use std::time::Duration;

use anyhow::Context;
use monoskope_backup_api::archive::v1::Record;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use tokio::sync::mpsc;

use super::SinkError;

/// Monoskope's table definition, exactly as its EventStore issues it (MONOSKOPE_EVENTSTORE.md §3.1).
pub const CREATE_TABLE: &str = r#"CREATE TABLE IF NOT EXISTS "event_records" ("event_id" uuid, "event_type" varchar(250), "aggregate_id" uuid, "aggregate_type" varchar(250), "aggregate_version" bigint, "timestamp" timestamptz, "metadata" jsonb, "data" jsonb, PRIMARY KEY ("event_id"), UNIQUE ("aggregate_id", "aggregate_type", "aggregate_version"))"#;

const COPY: &str = r#"COPY "event_records" ("event_id", "event_type", "aggregate_id", "aggregate_type", "aggregate_version", "timestamp", "metadata", "data") FROM STDIN (FORMAT binary)"#;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// What a restore into the table reads: batches of records, then `Ok(None)` once the source
/// checked out completely, or the error that ends it (the transaction then rolls back).
pub type RecordBatches = mpsc::Receiver<anyhow::Result<Option<Vec<Record>>>>;

/// The events table sink.
#[derive(Debug, Clone)]
pub struct EventsTable {
    pool: PgPool,
}

impl EventsTable {
    /// Connects to `url` (`postgres://…`; `sslmode`, `sslrootcert`, `sslcert`, `sslkey` in the
    /// URL for CockroachDB client certificates).
    pub async fn connect(url: &str) -> Result<Self, SinkError> {
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e| SinkError::Unsupported(format!("events database URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(15))
            .connect_with(opts)
            .await
            .map_err(|e| {
                SinkError::Unavailable(format!("cannot connect to the events database: {e}"))
            })?;
        Ok(Self { pool })
    }

    /// The pool (for the table source and tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Number of events in the table (0 when it does not exist).
    pub async fn count(&self) -> Result<u64, SinkError> {
        let exists: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('event_records')::text")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        if exists.is_none() {
            return Ok(0);
        }
        let n: i64 = sqlx::query_scalar(r#"SELECT COUNT(*) FROM "event_records""#)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        Ok(n as u64)
    }

    /// Writes every record received from `records` (in batches) in one transaction.
    /// `records` ends with `Ok(None)` after the archive authenticated completely, or with an
    /// error: then (or on any other failure) the transaction rolls back and the table is as
    /// before.
    pub async fn restore(
        &self,
        mut records: RecordBatches,
        drop_existing: bool,
    ) -> Result<u64, SinkError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        sqlx::query(CREATE_TABLE)
            .execute(&mut *tx)
            .await
            .context("creating event_records")?;
        // Nobody reads or writes the table while it is replaced; everyone sees the old or the
        // restored events, never a mix.
        sqlx::query(r#"LOCK TABLE "event_records" IN ACCESS EXCLUSIVE MODE"#)
            .execute(&mut *tx)
            .await
            .context("locking event_records")?;
        let existing: i64 = sqlx::query_scalar(r#"SELECT COUNT(*) FROM "event_records""#)
            .fetch_one(&mut *tx)
            .await
            .context("counting events")?;
        if existing > 0 {
            if !drop_existing {
                return Err(SinkError::StoreNotEmpty(format!(
                    "event_records holds {existing} events"
                )));
            }
            sqlx::query(r#"TRUNCATE "event_records""#)
                .execute(&mut *tx)
                .await
                .context("deleting the old events")?;
        }
        // Bulk load first, build the primary key and unique index after (as pg_restore does):
        // the constraints are dropped and re-added with their own names and definitions, inside
        // the transaction, so the schema afterwards is exactly the one before.
        let constraints: Vec<(String, String)> = sqlx::query_as(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = '\"event_records\"'::regclass AND contype IN ('p', 'u') ORDER BY contype",
        )
        .fetch_all(&mut *tx)
        .await
        .context("reading the constraints of event_records")?;
        for (name, _) in &constraints {
            sqlx::query(&format!(
                r#"ALTER TABLE "event_records" DROP CONSTRAINT "{}""#,
                name.replace('"', "\"\"")
            ))
            .execute(&mut *tx)
            .await
            .context("deferring the constraints of event_records")?;
        }
        let mut copy = tx.copy_in_raw(COPY).await.context("starting COPY")?;
        let mut buf = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0u32.to_be_bytes());
        buf.extend_from_slice(&0u32.to_be_bytes());
        let mut n = 0u64;
        loop {
            match records.recv().await {
                Some(Ok(Some(batch))) => {
                    for r in &batch {
                        encode_row(r, &mut buf).map_err(SinkError::Other)?;
                    }
                    n += batch.len() as u64;
                    if buf.len() >= 1 << 20 {
                        copy.send(std::mem::take(&mut buf)).await.context("COPY")?;
                        buf.reserve(1 << 20);
                    }
                }
                Some(Ok(None)) => break,
                Some(Err(e)) => {
                    let _ = copy.abort("archive failed verification").await;
                    return Err(SinkError::Other(e));
                }
                None => {
                    let _ = copy.abort("restore cancelled").await;
                    return Err(SinkError::Other(anyhow::anyhow!(
                        "the restore was cancelled before the archive was complete"
                    )));
                }
            }
        }
        buf.extend_from_slice(&(-1i16).to_be_bytes());
        copy.send(buf).await.context("COPY")?;
        copy.finish().await.map_err(|e| {
            SinkError::Other(anyhow::Error::new(e).context("COPY into event_records"))
        })?;
        for (name, def) in &constraints {
            sqlx::query(&format!(r#"ALTER TABLE "event_records" ADD CONSTRAINT "{}" {def}"#, name.replace('"', "\"\"")))
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    SinkError::Other(anyhow::Error::new(e).context(format!("the restored events violate {name} (a duplicate event or version); nothing was written")))
                })?;
        }
        tx.commit().await.context("commit")?;
        Ok(n)
    }
}

fn field(buf: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(b) => {
            buf.extend_from_slice(&(b.len() as i32).to_be_bytes());
            buf.extend_from_slice(b);
        }
    }
}

fn jsonb_field(buf: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => field(buf, None),
        Some(t) => {
            buf.extend_from_slice(&(t.len() as i32 + 1).to_be_bytes());
            buf.push(1); // jsonb binary format version
            buf.extend_from_slice(t.as_bytes());
        }
    }
}

/// One row in COPY binary form, stored as Monoskope's store writes it (§3.2): version 0, the
/// nil aggregate id, empty data and empty metadata as NULL; timestamps rounded to microseconds.
fn encode_row(r: &Record, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    buf.extend_from_slice(&8i16.to_be_bytes());
    let event_id = if r.event_id.is_empty() {
        super::derived_event_id(r)
    } else {
        uuid::Uuid::parse_str(&r.event_id).with_context(|| format!("event id {:?}", r.event_id))?
    };
    field(buf, Some(event_id.as_bytes()));
    field(
        buf,
        (!r.event_type.is_empty()).then_some(r.event_type.as_bytes()),
    );
    let agg = uuid::Uuid::parse_str(&r.aggregate_id)
        .with_context(|| format!("aggregate id {:?}", r.aggregate_id))?;
    field(buf, (!agg.is_nil()).then_some(&agg.as_bytes()[..]));
    field(
        buf,
        (!r.aggregate_type.is_empty()).then_some(r.aggregate_type.as_bytes()),
    );
    let v = (r.aggregate_version != 0).then(|| (r.aggregate_version as i64).to_be_bytes());
    field(buf, v.as_ref().map(|v| &v[..]));
    let us = crate::devstore::storage::to_micros(r.timestamp.as_ref())
        .context("timestamp out of range")?;
    field(buf, Some(&(us - PG_EPOCH_OFFSET_US).to_be_bytes()));
    let metadata = if r.metadata.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&r.metadata)?)
    };
    jsonb_field(buf, metadata.as_deref());
    let data = if r.data.is_empty() {
        None
    } else {
        // Refuse what jsonb refuses here, with the event named, instead of a COPY error
        // (a validating parse only: PostgreSQL normalises the text itself).
        serde_json::from_slice::<serde::de::IgnoredAny>(&r.data).with_context(|| {
            format!(
                "event {}/{} v{}: data is not JSON",
                r.aggregate_type, r.aggregate_id, r.aggregate_version
            )
        })?;
        Some(std::str::from_utf8(&r.data)?)
    };
    jsonb_field(buf, data);
    Ok(())
}
