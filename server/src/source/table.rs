//! The events table of Monoskope's EventStore (`event_records` on PostgreSQL) as a backup
//! source: one consistent snapshot per backup — a single REPEATABLE READ, READ ONLY transaction
//! — streamed, keeping each event's id: on PostgreSQL as binary `COPY (query) TO STDOUT`, each
//! tuple written straight into the archive's record encoding. Needs the database's credentials.
//! On CockroachDB (not run here: `docs/COCKROACHDB.md`) the snapshot is one historical
//! transaction (`BEGIN AS OF SYSTEM TIME follower_read_timestamp()`), which takes no locks and
//! cannot fail with a serialization retry however long it reads; CockroachDB has no binary
//! `COPY TO` and allows `COPY` to admins only, so there the query's own binary results are
//! decoded the same way ([`ReadMode::Rows`]).

use super::copy::*;
use super::reorder::{Reorder, Unordered};
use super::SourceError;
use crate::archive::Batch;
use futures::TryStreamExt;
use sqlx::{PgPool, Row};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The columns of a record, in the order [`CopyDecoder`] reads them, `metadata` and `data` as
/// text.
pub(super) const COLUMNS: &str = r#"e.event_id, e.event_type, e.aggregate_id, e.aggregate_type, e.aggregate_version, e."timestamp", e.metadata::text, e.data::text"#;
/// The same with `metadata` and `data` as they are when both are `jsonb` (Monoskope's table):
/// in binary, a version byte and the same text. Without the cast, PostgreSQL's `COPY` of the
/// table takes 5–10% less time.
pub(super) const COLUMNS_JSONB: &str = r#"e.event_id, e.event_type, e.aggregate_id, e.aggregate_type, e.aggregate_version, e."timestamp", e.metadata, e.data"#;

/// The columns to select: [`COLUMNS_JSONB`] when `jsonb`, else [`COLUMNS`].
pub(super) fn columns(jsonb: bool) -> &'static str {
    if jsonb {
        COLUMNS_JSONB
    } else {
        COLUMNS
    }
}

/// Store order: as `Retrieve` returns events (by timestamp), ties by aggregate type (bytewise,
/// as CockroachDB compares strings), id and version: the order [`Reorder`] restores.
pub(super) fn order_by(cockroach: bool) -> &'static str {
    if cockroach {
        r#"ORDER BY e."timestamp", e.aggregate_type, e.aggregate_id, e.aggregate_version"#
    } else {
        r#"ORDER BY e."timestamp", e.aggregate_type COLLATE "C", e.aggregate_id, e.aggregate_version"#
    }
}

/// How a full snapshot's rows come into store order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The database sorts them: always right, at the cost of sorting the whole table
    /// (PostgreSQL: two parallel workers and temporary files the size of the table).
    Sorted,
    /// Read in the table's physical order — Monoskope's table is append-only, so that is the
    /// order events were stored in — and put back into store order by [`Reorder`]; a table
    /// further out of order ends the read with [`Unordered`], before anything out of order is
    /// handed on. PostgreSQL's binary COPY only (CockroachDB scans in primary-key order):
    /// elsewhere as `Sorted`.
    Physical,
}

/// Connects to the events database (as the table sink does).
pub async fn connect(url: &str) -> Result<PgPool, SourceError> {
    Ok(crate::events_table::connect(url).await?)
}

/// What the reading task sends: batches of encoded records, or the error that stopped it.
pub type Batches = mpsc::Receiver<Result<Batch, SourceError>>;

/// The batches as a stream.
pub fn stream(rx: Batches) -> impl futures::Stream<Item = Result<Batch, SourceError>> + Send {
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Streams every event of one snapshot into a bounded channel (`buffer` batches), in store
/// order; the reader stops when the receiver is dropped. `mode`: how to read (`None`: what the
/// server supports); `order`: how the rows come into store order. `lock_wait`: how long to wait
/// for sessions holding the table exclusively (a restore, a `VACUUM FULL`) before failing with
/// their names (zero: no limit).
pub fn snapshot(
    pool: PgPool,
    buffer: usize,
    mode: Option<ReadMode>,
    order: Order,
    lock_wait: Duration,
) -> Batches {
    let (tx, rx) = mpsc::channel(buffer);
    tokio::spawn(async move {
        if let Err(e) = stream_into(&pool, mode, order, lock_wait, &tx).await {
            let _ = tx
                .send(Err(lock_wait_error(&pool, lock_wait, e).await))
                .await;
        }
    });
    rx
}

/// A read that gave up waiting for the table's lock, said with the sessions holding it.
pub(super) async fn lock_wait_error(
    pool: &PgPool,
    lock_wait: Duration,
    e: SourceError,
) -> SourceError {
    if !e.is_lock_timeout() {
        return e;
    }
    SourceError::Busy(
        crate::events_table::in_use(pool, lock_wait, "the backup", "back up again").await,
    )
}

/// How a snapshot's rows are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// `COPY (query) TO STDOUT (FORMAT binary)`, decoded tuple by tuple: PostgreSQL.
    Copy,
    /// The query itself, its binary result values decoded the same way: CockroachDB, which has
    /// no binary `COPY TO` and allows `COPY` to admins only.
    Rows,
}

/// One REPEATABLE READ, READ ONLY transaction (one snapshot) on a connection.
pub(super) struct Snapshot {
    pub(super) conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    /// Whether the events table exists in it.
    pub(super) exists: bool,
    /// How to read it (as asked, or what the server supports).
    pub(super) mode: ReadMode,
    /// The server is CockroachDB (not PostgreSQL).
    pub(super) cockroach: bool,
    /// `metadata` and `data` are both `jsonb` (PostgreSQL only: selected without a cast).
    pub(super) jsonb: bool,
}

/// Begins a [`Snapshot`], read the `mode` way (`None`: what the server supports), whose
/// statements wait at most `lock_wait` for the table's lock (zero: no limit).
pub(super) async fn begin_snapshot(
    pool: &PgPool,
    mode: Option<ReadMode>,
    lock_wait: Duration,
) -> Result<Snapshot, SourceError> {
    let mut conn = pool.acquire().await?;
    // Which database it is, before the snapshot begins: CockroachDB reads one historical
    // snapshot (crate::events_table::dialect), PostgreSQL one REPEATABLE READ transaction.
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut *conn)
        .await?;
    let cockroach = crate::events_table::Dialect::of_version(&version).is_cockroach();
    let exists = if cockroach {
        use crate::events_table::dialect::{BEGIN_HISTORICAL, TABLE_EXISTS};
        sqlx::query(BEGIN_HISTORICAL).execute(&mut *conn).await?;
        sqlx::query_scalar::<_, bool>(TABLE_EXISTS)
            .fetch_one(&mut *conn)
            .await?
    } else {
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *conn)
            .await?;
        sqlx::query_scalar::<_, Option<String>>("SELECT to_regclass('event_records')::text")
            .fetch_one(&mut *conn)
            .await?
            .is_some()
    };
    let mut jsonb = false;
    if !cockroach {
        // The first read of the table takes its (shared) lock for the whole transaction.
        sqlx::query(&crate::events_table::set_lock_timeout(lock_wait))
            .execute(&mut *conn)
            .await?;
        jsonb = sqlx::query_scalar(
            "SELECT count(*) = 2 FROM pg_attribute WHERE attrelid = to_regclass('event_records') AND attname IN ('metadata', 'data') AND atttypid = 'jsonb'::regtype AND NOT attisdropped",
        )
        .fetch_one(&mut *conn)
        .await?;
    }
    Ok(Snapshot {
        conn,
        jsonb,
        exists,
        mode: mode.unwrap_or(if cockroach {
            ReadMode::Rows
        } else {
            ReadMode::Copy
        }),
        cockroach,
    })
}

/// Hands `batch` on when it is full (`last`: whatever it holds) — straight to the channel, or
/// through `reorder`, which sends what is certainly in store order; false when the receiver is
/// gone.
pub(super) async fn hand_on(
    batch: &mut Batch,
    last: bool,
    reorder: &mut Option<Reorder>,
    tx: &mpsc::Sender<Result<Batch, SourceError>>,
) -> Result<bool, Unordered> {
    let due = batch.len() >= super::RECORD_BATCH || (last && !batch.is_empty());
    if !due {
        return Ok(true);
    }
    let room = Batch::with_capacity(super::RECORD_BATCH, batch.bytes().len());
    let full = std::mem::replace(batch, room);
    let Some(r) = reorder else {
        return Ok(tx.send(Ok(full)).await.is_ok());
    };
    let mut ready = Vec::new();
    r.push(full, &mut ready)?;
    for b in ready {
        if tx.send(Ok(b)).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Reads `query` (which selects [`columns`]`(jsonb)`) on `conn` the `mode` way and sends its
/// rows as batches of records until they end or the receiver is gone, through `reorder` if
/// given (the query then reads in physical order). `grown` binds `$1..$3` in
/// [`ReadMode::Rows`]. The connection is closed when dropped, not returned to the pool: it may
/// be left in the middle of a result.
pub(super) async fn forward(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Postgres>,
    mode: ReadMode,
    query: &str,
    jsonb: bool,
    grown: Option<&Grown>,
    mut reorder: Option<Reorder>,
    tx: &mpsc::Sender<Result<Batch, SourceError>>,
) -> Result<(), SourceError> {
    conn.close_on_drop();
    let mut batch = Batch::new();
    match mode {
        ReadMode::Copy => {
            let mut decoder = CopyDecoder {
                jsonb,
                ..CopyDecoder::default()
            };
            let mut data = conn
                .copy_out_raw(&format!("COPY ({query}) TO STDOUT (FORMAT binary)"))
                .await?;
            while let Some(bytes) = data.try_next().await? {
                decoder.feed(&bytes, &mut batch)?;
                if reorder.is_some() && decoder.key_null {
                    return Err(Unordered(
                        "the table holds events without an aggregate type, id or version, whose place only the sorted read decides".into(),
                    )
                    .into());
                }
                if !hand_on(&mut batch, false, &mut reorder, tx).await? {
                    return Ok(());
                }
            }
            decoder.finish()?;
        }
        ReadMode::Rows => {
            use sqlx::ValueRef;
            let mut q = sqlx::query(query);
            if let Some((types, ids, held)) = grown {
                q = q.bind(type_names(types)).bind(ids).bind(held);
            }
            let mut rows = q.fetch(&mut **conn);
            while let Some(row) = rows.try_next().await? {
                let mut fields: Fields<'_> = [None; 8];
                for (i, field) in fields.iter_mut().enumerate() {
                    let value = row.try_get_raw(i)?;
                    if value.format() != sqlx::postgres::PgValueFormat::Binary {
                        return Err(malformed("a result value not in binary format"));
                    }
                    if !value.is_null() {
                        *field = Some(value.as_bytes().map_err(|e| malformed(&e.to_string()))?);
                    }
                }
                push_fields(fields, jsonb, &mut batch)?;
                if !hand_on(&mut batch, false, &mut reorder, tx).await? {
                    return Ok(());
                }
            }
        }
    }
    if !hand_on(&mut batch, true, &mut reorder, tx).await? {
        return Ok(());
    }
    if let Some(r) = reorder {
        let mut rest = Vec::new();
        r.finish(&mut rest);
        for b in rest {
            if tx.send(Ok(b)).await.is_err() {
                break;
            }
        }
    }
    Ok(())
}

pub(super) async fn stream_into(
    pool: &PgPool,
    mode: Option<ReadMode>,
    order: Order,
    lock_wait: Duration,
    tx: &mpsc::Sender<Result<Batch, SourceError>>,
) -> Result<(), SourceError> {
    let Snapshot {
        mut conn,
        exists,
        mode,
        cockroach,
        jsonb,
    } = begin_snapshot(pool, mode, lock_wait).await?;
    let columns = columns(jsonb);
    if exists {
        let physical = order == Order::Physical && mode == ReadMode::Copy && !cockroach;
        let query = if physical {
            // One serial scan from the table's first page: no parallel workers interleaving
            // their pages, no scan joining another one in the middle of the table.
            for set in [
                "SET LOCAL max_parallel_workers_per_gather = 0",
                "SET LOCAL synchronize_seqscans = off",
            ] {
                sqlx::query(set).execute(&mut *conn).await?;
            }
            format!(r#"SELECT {columns} FROM "event_records" e"#)
        } else {
            format!(
                r#"SELECT {columns} FROM "event_records" e {}"#,
                order_by(cockroach)
            )
        };
        forward(
            &mut conn,
            mode,
            &query,
            jsonb,
            None,
            physical.then(Reorder::default),
            tx,
        )
        .await?;
    }
    drop(sqlx::query("COMMIT").execute(&mut *conn).await);
    Ok(())
}

pub use super::incremental::incremental;

pub(super) type Grown = (Vec<Arc<str>>, Vec<uuid::Uuid>, Vec<i64>);

/// The types of [`Grown`] as bound: one shared type per aggregate, borrowed.
pub(super) fn type_names(types: &[Arc<str>]) -> Vec<&str> {
    types.iter().map(|t| &**t).collect()
}
