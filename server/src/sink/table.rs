//! The events table (`event_records`) of Monoskope's EventStore on PostgreSQL, written in one
//! transaction with binary COPY (rows written frozen), its primary key and unique index built
//! after the load. It creates the table with Monoskope's exact DDL when missing
//! (after a dropped database the restore may run before the EventStore starts), refuses a
//! non-empty table unless `drop_existing`, deletes the old events inside the same transaction,
//! and commits only after the whole archive authenticated: the store is either the old one or
//! the restored one. Nothing is published to the message bus.
//!
//! CockroachDB (no `LOCK TABLE`, no `DROP CONSTRAINT` of a unique constraint, `COPY … FROM
//! STDIN` in text/CSV form only) is refused before anything is written, naming the database:
//! its designed path, a staging table renamed into place in one transaction, is a plan in
//! [`crate::events_table::dialect`] that has not been run against CockroachDB.

use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgPool};
use tokio::sync::mpsc;

use super::SinkError;
pub use crate::events_table::{
    connect, in_use, is_lock_timeout, set_lock_timeout, ConnectError, Dialect, CREATE_TABLE,
    DEFAULT_LOCK_WAIT,
};

const COPY: &str = r#"COPY "event_records" ("event_id", "event_type", "aggregate_id", "aggregate_type", "aggregate_version", "timestamp", "metadata", "data") FROM STDIN (FORMAT binary, FREEZE)"#;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// What a restore into the table reads: rows already in COPY form, then `Ok(None)` once the
/// source checked out completely, or the error that ends it (the transaction then rolls back).
pub type RowBatches = mpsc::Receiver<anyhow::Result<Option<CopyRows>>>;

/// How many bytes of rows a reader gathers before handing them to [`EventsTable::restore`].
pub const ROW_BATCH_BYTES: usize = 1 << 20;

/// Events as rows of the table's binary COPY, written straight from each record's fields
/// (whoever reads the archive fills these, so the work is spread over the reading threads).
#[derive(Debug, Default)]
pub struct CopyRows {
    buf: Vec<u8>,
    rows: usize,
}

impl CopyRows {
    /// Room for about `bytes` of rows.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            rows: 0,
        }
    }

    /// Adds one event as a row: its ids must be UUIDs, its timestamp in PostgreSQL's range
    /// and its data JSON (refused here with the event named, not by COPY).
    pub fn push(&mut self, r: &crate::archive::RecordView<'_>) -> anyhow::Result<()> {
        let at = self.buf.len();
        if let Err(e) = encode_row(r, &mut self.buf) {
            self.buf.truncate(at);
            return Err(e);
        }
        self.rows += 1;
        Ok(())
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }
}

/// The events table sink.
#[derive(Debug, Clone)]
pub struct EventsTable {
    pool: PgPool,
    lock_wait: Duration,
    dialect: Dialect,
}

impl EventsTable {
    /// Connects to `url` (`postgres://…`; `sslmode`, `sslrootcert`, `sslcert`, `sslkey` in the
    /// URL for CockroachDB client certificates).
    pub async fn connect(url: &str) -> Result<Self, SinkError> {
        let pool = connect(url).await.map_err(|e| match e {
            ConnectError::BadUrl(m) => SinkError::Unsupported(m),
            ConnectError::Unavailable(m) => SinkError::Unavailable(m),
        })?;
        // Which database it is, asked before anything else (a CockroachDB is refused below).
        let dialect = crate::events_table::dialect(&pool)
            .await
            .map_err(|e| SinkError::Unavailable(monoskope_backup_client::error_line(&e)))?;
        Ok(Self {
            pool,
            lock_wait: DEFAULT_LOCK_WAIT,
            dialect,
        })
    }

    /// A restore that gave up waiting for the table's lock, with the sessions holding it.
    async fn in_use(&self) -> SinkError {
        SinkError::InUse(
            in_use(
                &self.pool,
                self.lock_wait,
                "the restore wrote nothing; it",
                "restore again",
            )
            .await,
        )
    }

    /// How long a restore waits for other sessions to let go of the table (zero: as long as
    /// the restore may run).
    pub fn with_lock_wait(mut self, lock_wait: Duration) -> Self {
        self.lock_wait = lock_wait;
        self
    }

    /// The pool (for the table source and tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The database behind the table.
    pub fn dialect(&self) -> &Dialect {
        &self.dialect
    }

    /// Refuses a database this sink has not been run against, before anything is written.
    fn check_dialect(&self) -> Result<(), SinkError> {
        if self.dialect.is_cockroach() {
            return Err(SinkError::Unsupported(
                crate::events_table::dialect::sink_refusal(&self.dialect),
            ));
        }
        Ok(())
    }

    /// Number of events in the table (0 when it does not exist).
    pub async fn count(&self) -> Result<u64, SinkError> {
        self.check_dialect()?;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('event_records')::text")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        if exists.is_none() {
            return Ok(0);
        }
        // Waits for a session holding the table exclusively only as long as the restore would.
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        sqlx::query(&set_lock_timeout(self.lock_wait))
            .execute(&mut *tx)
            .await
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        match sqlx::query_scalar::<_, i64>(r#"SELECT COUNT(*) FROM "event_records""#)
            .fetch_one(&mut *tx)
            .await
        {
            Ok(n) => Ok(n as u64),
            Err(e) if is_lock_timeout(&e) => {
                drop(tx);
                Err(self.in_use().await)
            }
            Err(e) => Err(SinkError::Unavailable(e.to_string())),
        }
    }

    /// Writes every record received from `records` (in batches) in one transaction.
    /// `records` ends with `Ok(None)` after the archive authenticated completely, or with an
    /// error: then (or on any other failure) the transaction rolls back and the table is as
    /// before.
    pub async fn restore(
        &self,
        mut records: RowBatches,
        drop_existing: bool,
    ) -> Result<u64, SinkError> {
        self.check_dialect()?;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        // A session that holds the table (a pg_dump, a transaction left open) would keep the
        // restore waiting silently: it waits `lock_wait`, then gives up naming them.
        sqlx::query(&set_lock_timeout(self.lock_wait))
            .execute(&mut *tx)
            .await
            .context("setting lock_timeout")?;
        sqlx::query(CREATE_TABLE)
            .execute(&mut *tx)
            .await
            .context("creating event_records")?;
        // Nobody reads or writes the table while it is replaced; everyone sees the old or the
        // restored events, never a mix.
        if let Err(e) = sqlx::query(r#"LOCK TABLE "event_records" IN ACCESS EXCLUSIVE MODE"#)
            .execute(&mut *tx)
            .await
        {
            if !is_lock_timeout(&e) {
                return Err(anyhow::Error::new(e)
                    .context("locking event_records")
                    .into());
            }
            drop(tx);
            return Err(self.in_use().await);
        }
        sqlx::query("SET LOCAL lock_timeout = 0")
            .execute(&mut *tx)
            .await
            .context("resetting lock_timeout")?;
        let existing: i64 = sqlx::query_scalar(r#"SELECT COUNT(*) FROM "event_records""#)
            .fetch_one(&mut *tx)
            .await
            .context("counting events")?;
        if existing > 0 && !drop_existing {
            return Err(SinkError::StoreNotEmpty(format!(
                "event_records holds {existing} events"
            )));
        }
        // Emptied in this transaction (the old events, if allowed, or nothing), so the load can
        // write its rows frozen and all-visible (`COPY … FREEZE`): the restored table needs no
        // hint-bit writes on its first read and no freezing vacuum later, and index-only scans
        // (the incremental's per-aggregate maxima) do not visit the heap. Like TRUNCATE, this
        // is not MVCC-safe for snapshots taken before the commit; the table is locked
        // exclusively until then.
        sqlx::query(r#"TRUNCATE "event_records""#)
            .execute(&mut *tx)
            .await
            .context("deleting the old events")?;
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
        let mut buf = Vec::with_capacity(ROW_BATCH_BYTES);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0u32.to_be_bytes());
        buf.extend_from_slice(&0u32.to_be_bytes());
        let mut n = 0u64;
        loop {
            match records.recv().await {
                Some(Ok(Some(rows))) => {
                    n += rows.rows as u64;
                    // Small batches (an import hands them one event at a time) are gathered;
                    // full ones go as they are.
                    if buf.is_empty() && rows.buf.len() >= ROW_BATCH_BYTES / 2 {
                        copy.send(rows.buf).await.context("COPY")?;
                        continue;
                    }
                    buf.extend_from_slice(&rows.buf);
                    if buf.len() >= ROW_BATCH_BYTES / 2 {
                        copy.send(std::mem::take(&mut buf)).await.context("COPY")?;
                        buf.reserve(ROW_BATCH_BYTES);
                    }
                }
                Some(Ok(None)) if n == 0 && existing > 0 => {
                    let _ = copy.abort("the restore would empty the store").await;
                    return Err(SinkError::WouldEmpty(existing));
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

/// One row in COPY binary form, stored as Monoskope's store writes it (docs/MONOSKOPE.md §3.2): version 0, the
/// nil aggregate id, empty data and empty metadata as NULL; timestamps rounded to microseconds.
fn encode_row(r: &crate::archive::RecordView<'_>, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    buf.extend_from_slice(&8i16.to_be_bytes());
    let event_id = if r.event_id.is_empty() {
        super::derived_event_id(r)
    } else {
        uuid::Uuid::parse_str(r.event_id).with_context(|| format!("event id {:?}", r.event_id))?
    };
    field(buf, Some(event_id.as_bytes()));
    field(
        buf,
        (!r.event_type.is_empty()).then_some(r.event_type.as_bytes()),
    );
    let agg = uuid::Uuid::parse_str(r.aggregate_id)
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
    metadata_field(buf, r);
    let data = if r.data.is_empty() {
        None
    } else {
        // Refuse what jsonb refuses here, with the event named, instead of a COPY error
        // (a validating parse only: PostgreSQL normalises the text itself).
        serde_json::from_slice::<serde::de::IgnoredAny>(r.data).with_context(|| {
            format!(
                "event {}/{} v{}: data is not JSON",
                r.aggregate_type, r.aggregate_id, r.aggregate_version
            )
        })?;
        Some(std::str::from_utf8(r.data)?)
    };
    jsonb_field(buf, data);
    Ok(())
}

/// The metadata as a jsonb field: a JSON object of strings, in the record's order (a key that
/// repeats keeps its last value, in jsonb as in the record's map); NULL when there is none.
fn metadata_field(buf: &mut Vec<u8>, r: &crate::archive::RecordView<'_>) {
    if r.metadata_is_empty() {
        return field(buf, None);
    }
    let len_at = buf.len();
    buf.extend_from_slice(&0i32.to_be_bytes());
    buf.push(1); // jsonb binary format version
    buf.push(b'{');
    for (i, (k, v)) in r.metadata().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        json_string(buf, k);
        buf.push(b':');
        json_string(buf, v);
    }
    buf.push(b'}');
    let len = (buf.len() - len_at - 4) as i32;
    buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

/// `s` as a JSON string: quotes, backslashes and control characters escaped, everything else
/// as it is (UTF-8).
fn json_string(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            buf.extend_from_slice(b"\\u00");
            buf.push(HEX[usize::from(b >> 4)]);
            buf.push(HEX[usize::from(b & 0xf)]);
        } else {
            buf.extend_from_slice(escape);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{Record, RecordView};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The metadata text a row carries, read back as JSON.
    fn metadata_json(r: &RecordView<'_>) -> Option<serde_json::Value> {
        let mut buf = Vec::new();
        metadata_field(&mut buf, r);
        let len = i32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
        if len == -1 {
            return None;
        }
        assert_eq!(buf[4], 1, "jsonb format version");
        assert_eq!(len as usize, buf.len() - 4);
        Some(serde_json::from_slice(&buf[5..]).expect("the metadata field is JSON"))
    }

    proptest! {
        #[test]
        fn metadata_is_written_as_the_json_object_of_its_pairs(
            md in proptest::collection::btree_map("\\PC{0,6}|[\\x00-\\x1f\"\\\\]{0,4}|.{0,6}", ".*", 0..6),
        ) {
            let r = Record { metadata: md.clone(), ..Default::default() };
            let expected = (!md.is_empty()).then(|| serde_json::to_value(&md).expect("a map"));
            // From a decoded record and from the record's encoding alike.
            prop_assert_eq!(metadata_json(&RecordView::of(&r)), expected.clone());
            let bytes = prost::Message::encode_to_vec(&r);
            prop_assert_eq!(metadata_json(&RecordView::decode(&bytes).expect("decodes")), expected);
        }
    }

    #[test]
    fn a_repeated_metadata_key_keeps_its_last_value_as_in_the_record() {
        // Two entries for "k" (as another writer might encode them): the record's map holds
        // the last; so does jsonb, which keeps the last of duplicate keys.
        let bytes = [
            0x32, 6, 0x0a, 1, b'k', 0x12, 1, b'1', 0x32, 6, 0x0a, 1, b'k', 0x12, 1, b'2',
        ];
        let view = RecordView::decode(&bytes).expect("decodes");
        assert_eq!(
            view.to_record().metadata,
            BTreeMap::from([("k".to_string(), "2".to_string())])
        );
        let mut buf = Vec::new();
        metadata_field(&mut buf, &view);
        assert_eq!(&buf[5..], br#"{"k":"1","k":"2"}"#);
    }
}
