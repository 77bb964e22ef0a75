//! PostgreSQL's binary `COPY` stream of the events table, decoded straight into the archive's
//! record encoding: a pure decoder over bytes (no I/O), fed in whatever pieces the connection
//! hands over, with property tests.

use super::SourceError;
use crate::archive::{Batch, RecordParts};

/// The signature that opens PostgreSQL's binary COPY format, followed by flags and the header
/// extension length (both 32 bits).
pub(super) const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
pub(super) const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Decodes PostgreSQL's binary COPY output of [`COLUMNS`] (or [`COLUMNS_JSONB`] when `jsonb`)
/// into encoded records (the archive's encoding written straight from the tuple's fields),
/// whatever way the bytes are cut into messages: a tuple may span messages, a message may hold
/// several.
#[derive(Default)]
pub(super) struct CopyDecoder {
    /// `metadata` and `data` come as binary jsonb.
    pub(super) jsonb: bool,
    /// Bytes received and not yet decoded (a partial tuple).
    pub(super) pending: Vec<u8>,
    pub(super) header_done: bool,
    /// The trailer (field count -1) was read.
    pub(super) ended: bool,
    /// A row had no aggregate type, id or version.
    pub(super) key_null: bool,
}

/// Why a COPY stream could not be decoded.
pub(super) fn malformed(what: &str) -> SourceError {
    SourceError::Malformed(what.to_string())
}

impl CopyDecoder {
    /// Decodes every complete tuple of `data` (after what is pending) into `out`.
    pub(super) fn feed(&mut self, data: &[u8], out: &mut Batch) -> Result<(), SourceError> {
        if self.pending.is_empty() {
            let used = self.decode_from(data, out)?;
            self.pending.extend_from_slice(&data[used..]);
        } else {
            self.pending.extend_from_slice(data);
            let pending = std::mem::take(&mut self.pending);
            let used = self.decode_from(&pending, out)?;
            self.pending = pending;
            self.pending.drain(..used);
        }
        Ok(())
    }

    /// The stream ended: it must have ended with the trailer, nothing after it.
    pub(super) fn finish(&self) -> Result<(), SourceError> {
        if !self.ended {
            return Err(malformed("the data ends inside a row"));
        }
        Ok(())
    }

    /// Decodes complete tuples from the start of `buf`; returns the bytes used.
    fn decode_from(&mut self, buf: &[u8], out: &mut Batch) -> Result<usize, SourceError> {
        let mut at = 0;
        if !self.header_done {
            let need = COPY_SIGNATURE.len() + 8;
            if buf.len() < need {
                return Ok(0);
            }
            if &buf[..COPY_SIGNATURE.len()] != COPY_SIGNATURE {
                return Err(malformed("no binary COPY signature"));
            }
            let ext = u32::from_be_bytes(buf[15..19].try_into().expect("4 bytes")) as usize;
            if buf.len() < need + ext {
                return Ok(0);
            }
            at = need + ext;
            self.header_done = true;
        }
        while at < buf.len() {
            if self.ended {
                return Err(malformed("data after the trailer"));
            }
            match decode_tuple(&buf[at..], self.jsonb, out)? {
                Tuple::Incomplete => break,
                Tuple::Trailer => {
                    self.ended = true;
                    at += 2;
                }
                Tuple::Row { len, key_null } => {
                    self.key_null |= key_null;
                    at += len;
                }
            }
        }
        Ok(at)
    }
}

pub(super) enum Tuple {
    /// More bytes are needed.
    Incomplete,
    /// The end-of-data marker.
    Trailer,
    /// A record (added to the batch) and the bytes its tuple took; whether its aggregate type,
    /// id or version is NULL.
    Row { len: usize, key_null: bool },
}

/// The eight fields of a tuple as slices of the buffer (`None`: SQL NULL).
pub(super) type Fields<'a> = [Option<&'a [u8]>; 8];

/// The fields of the tuple at the start of `buf` and the bytes it takes; `None` when `buf`
/// ends inside it.
pub(super) fn split_fields(buf: &[u8]) -> Result<Option<(Fields<'_>, usize)>, SourceError> {
    let mut fields = [None; 8];
    let mut at = 2;
    for field in fields.iter_mut() {
        let Some(len) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes(len.try_into().expect("4 bytes"));
        at += 4;
        if len == -1 {
            continue;
        }
        let len = usize::try_from(len).map_err(|_| malformed("negative field length"))?;
        let Some(value) = buf.get(at..at + len) else {
            return Ok(None);
        };
        *field = Some(value);
        at += len;
    }
    Ok(Some((fields, at)))
}

/// Decodes the tuple at the start of `buf` into `out`.
pub(super) fn decode_tuple(buf: &[u8], jsonb: bool, out: &mut Batch) -> Result<Tuple, SourceError> {
    let Some(count) = buf.get(..2) else {
        return Ok(Tuple::Incomplete);
    };
    match i16::from_be_bytes([count[0], count[1]]) {
        -1 => return Ok(Tuple::Trailer),
        8 => {}
        n => return Err(malformed(&format!("{n} columns, expected 8"))),
    }
    let Some((fields, len)) = split_fields(buf)? else {
        return Ok(Tuple::Incomplete);
    };
    let key_null = fields[2].is_none() || fields[3].is_none() || fields[4].is_none();
    push_fields(fields, jsonb, out)?;
    Ok(Tuple::Row { len, key_null })
}

/// Writes the record of one row's fields, each in PostgreSQL's binary format (as binary COPY
/// and binary query results carry them); `metadata` and `data` as binary jsonb when `jsonb`,
/// else as text.
pub(super) fn push_fields(
    fields: Fields<'_>,
    jsonb: bool,
    out: &mut Batch,
) -> Result<(), SourceError> {
    let [event_id, event_type, aggregate_id, aggregate_type, version, ts, md, data] = fields;
    let (md, data) = if jsonb {
        (jsonb_text(md, "metadata")?, jsonb_text(data, "data")?)
    } else {
        (md, data)
    };
    let mut event_id_text = [0u8; 36];
    let mut aggregate_id_text = [0u8; 36];
    let metadata = match md {
        Some(m) => super::metadata::pairs(m)?,
        None => Vec::new(),
    };
    out.push(RecordParts {
        aggregate_type: text(aggregate_type)?,
        aggregate_id: uuid_text(aggregate_id.unwrap_or(&[0; 16]), &mut aggregate_id_text)?,
        aggregate_version: match version {
            Some(v) => {
                i64::from_be_bytes(v.try_into().map_err(|_| malformed("aggregate_version"))?) as u64
            }
            None => 0,
        },
        event_type: text(event_type)?,
        data: data.unwrap_or_default(),
        metadata: metadata.iter().map(|(k, v)| (k.as_ref(), v.as_ref())),
        timestamp: ts.map(timestamp).transpose()?,
        event_id: uuid_text(
            event_id.ok_or_else(|| malformed("event_id is NULL"))?,
            &mut event_id_text,
        )?,
    });
    Ok(())
}

/// The text of a binary jsonb value: version 1, the only one PostgreSQL has, then the text.
pub(super) fn jsonb_text<'a>(
    b: Option<&'a [u8]>,
    column: &str,
) -> Result<Option<&'a [u8]>, SourceError> {
    match b.map(<[u8]>::split_first) {
        None => Ok(None),
        Some(Some((1, text))) => Ok(Some(text)),
        Some(_) => Err(malformed(&format!(
            "{column}: jsonb of an unknown binary version"
        ))),
    }
}

/// A binary uuid in the text form PostgreSQL prints (lowercase, hyphenated), written into `out`.
pub(super) fn uuid_text<'a>(b: &[u8], out: &'a mut [u8; 36]) -> Result<&'a str, SourceError> {
    let u = uuid::Uuid::from_slice(b).map_err(|_| malformed("a uuid of the wrong length"))?;
    Ok(u.hyphenated().encode_lower(out))
}

/// A text column (`""` for NULL).
pub(super) fn text(b: Option<&[u8]>) -> Result<&str, SourceError> {
    match b {
        Some(b) => std::str::from_utf8(b).map_err(|_| malformed("text that is not UTF-8")),
        None => Ok(""),
    }
}

/// A binary `timestamptz` (microseconds since 2000-01-01 UTC).
pub(super) fn timestamp(b: &[u8]) -> Result<prost_types::Timestamp, SourceError> {
    let micros = i64::from_be_bytes(b.try_into().map_err(|_| malformed("timestamp"))?);
    let unix = micros
        .checked_add(PG_EPOCH_MICROS)
        .filter(|_| micros != i64::MAX && micros != i64::MIN)
        .ok_or_else(|| malformed("an infinite timestamp"))?;
    Ok(prost_types::Timestamp {
        seconds: unix.div_euclid(1_000_000),
        nanos: (unix.rem_euclid(1_000_000) * 1000) as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Record;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// One row as the table may hold it (`None`: NULL).
    #[derive(Debug, Clone)]
    struct Row {
        event_id: [u8; 16],
        event_type: Option<String>,
        aggregate_id: Option<[u8; 16]>,
        aggregate_type: Option<String>,
        version: Option<i64>,
        micros: Option<i64>,
        metadata: Option<BTreeMap<String, String>>,
        data: Option<String>,
    }

    fn field(out: &mut Vec<u8>, v: Option<&[u8]>) {
        match v {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }

    /// What `COPY … TO STDOUT (FORMAT binary)` sends for `rows` (PostgreSQL's documented layout).
    /// The binary COPY of `rows`; `metadata` and `data` as binary jsonb when `jsonb`.
    fn copy_bytes(rows: &[Row], jsonb: bool) -> Vec<u8> {
        let json = |t: Option<String>| {
            t.map(|t| {
                let mut b = if jsonb { vec![1u8] } else { Vec::new() };
                b.extend_from_slice(t.as_bytes());
                b
            })
        };
        let mut out = COPY_SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        for r in rows {
            out.extend_from_slice(&8i16.to_be_bytes());
            field(&mut out, Some(&r.event_id));
            field(&mut out, r.event_type.as_deref().map(str::as_bytes));
            field(&mut out, r.aggregate_id.as_ref().map(|a| &a[..]));
            field(&mut out, r.aggregate_type.as_deref().map(str::as_bytes));
            field(
                &mut out,
                r.version.map(i64::to_be_bytes).as_ref().map(|v| &v[..]),
            );
            field(
                &mut out,
                r.micros.map(i64::to_be_bytes).as_ref().map(|v| &v[..]),
            );
            let md = json(
                r.metadata
                    .as_ref()
                    .map(|m| serde_json::to_string_pretty(m).expect("json")),
            );
            field(&mut out, md.as_deref());
            field(&mut out, json(r.data.clone()).as_deref());
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    /// The record the old row-by-row reader made of a row.
    fn expected(r: &Row) -> Record {
        Record {
            event_id: uuid::Uuid::from_bytes(r.event_id).hyphenated().to_string(),
            event_type: r.event_type.clone().unwrap_or_default(),
            aggregate_id: uuid::Uuid::from_bytes(r.aggregate_id.unwrap_or_default())
                .hyphenated()
                .to_string(),
            aggregate_type: r.aggregate_type.clone().unwrap_or_default(),
            aggregate_version: r.version.unwrap_or(0) as u64,
            timestamp: r.micros.map(|m| {
                let pg_epoch = chrono::DateTime::parse_from_rfc3339("2000-01-01T00:00:00Z")
                    .expect("date")
                    .to_utc();
                let t = pg_epoch + chrono::Duration::microseconds(m);
                prost_types::Timestamp {
                    seconds: t.timestamp(),
                    nanos: t.timestamp_subsec_nanos() as i32,
                }
            }),
            metadata: r.metadata.clone().unwrap_or_default(),
            data: r.data.clone().unwrap_or_default().into_bytes(),
        }
    }

    fn row() -> impl Strategy<Value = Row> {
        (
            (
                any::<[u8; 16]>(),
                proptest::option::of("\\PC{0,12}"),
                proptest::option::of(any::<[u8; 16]>()),
                proptest::option::of("[A-Za-z]{0,10}"),
            ),
            (
                proptest::option::of(any::<i64>()),
                proptest::option::of(-10_000_000_000_000_000i64..10_000_000_000_000_000),
                proptest::option::of(proptest::collection::btree_map(
                    "\\PC{0,6}",
                    "\\PC{0,10}",
                    0..4,
                )),
                proptest::option::of("\\PC{0,60}"),
            ),
        )
            .prop_map(
                |(
                    (event_id, event_type, aggregate_id, aggregate_type),
                    (version, micros, metadata, data),
                )| Row {
                    event_id,
                    event_type,
                    aggregate_id,
                    aggregate_type,
                    version,
                    micros,
                    metadata,
                    data,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// However the stream is cut into messages, the records are the rows, field for field.
        #[test]
        fn decodes_rows_in_any_pieces(rows in proptest::collection::vec(row(), 0..12), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let bytes = copy_bytes(&rows, false);
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            at.push(0);
            at.push(bytes.len());
            at.sort();
            let mut decoder = CopyDecoder::default();
            let mut batch = Batch::new();
            for w in at.windows(2) {
                decoder.feed(&bytes[w[0]..w[1]], &mut batch).expect("valid stream");
            }
            decoder.finish().expect("complete");
            let want: Vec<Record> = rows.iter().map(expected).collect();
            prop_assert_eq!(batch.to_records().expect("decodes"), want.clone());
            // The same rows with metadata and data as binary jsonb, in one piece.
            let mut decoder = CopyDecoder { jsonb: true, ..CopyDecoder::default() };
            let mut batch = Batch::new();
            decoder.feed(&copy_bytes(&rows, true), &mut batch).expect("valid stream");
            decoder.finish().expect("complete");
            prop_assert_eq!(batch.to_records().expect("decodes"), want);
        }
    }

    #[test]
    fn damaged_streams_are_errors() {
        let rows = vec![Row {
            event_id: [7; 16],
            event_type: Some("UserCreated".into()),
            aggregate_id: Some([9; 16]),
            aggregate_type: Some("User".into()),
            version: Some(1),
            micros: Some(0),
            metadata: Some(BTreeMap::from([("x-auth-id".into(), "a".into())])),
            data: Some("{}".into()),
        }];
        let bytes = copy_bytes(&rows, false);
        let decode = |b: &[u8]| -> Result<Batch, SourceError> {
            let mut d = CopyDecoder::default();
            let mut batch = Batch::new();
            d.feed(b, &mut batch)?;
            d.finish()?;
            Ok(batch)
        };
        let ok = decode(&bytes).expect("valid");
        assert_eq!(
            ok.to_records().expect("decodes")[0].event_type,
            "UserCreated"
        );
        let truncated = decode(&bytes[..bytes.len() - 5]).expect_err("truncated");
        assert!(
            truncated.to_string().contains("ends inside a row"),
            "{truncated}"
        );
        let mut wrong = bytes.clone();
        wrong[0] = b'X';
        assert!(decode(&wrong)
            .expect_err("signature")
            .to_string()
            .contains("signature"));
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(&8i16.to_be_bytes());
        assert!(decode(&trailing)
            .expect_err("after trailer")
            .to_string()
            .contains("after the trailer"));
        let mut columns = bytes.clone();
        columns[19..21].copy_from_slice(&7i16.to_be_bytes());
        assert!(decode(&columns)
            .expect_err("columns")
            .to_string()
            .contains("7 columns"));
        let mut null_id = copy_bytes(&rows, false);
        null_id[21..25].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(decode(&null_id).is_err());
        let bad_meta = {
            let mut r = rows.clone();
            r[0].metadata = None;
            let mut b = copy_bytes(&r, false);
            // Replace the NULL metadata with a JSON number.
            let null = (-1i32).to_be_bytes();
            let pos = b.windows(4).rposition(|w| w == null).expect("the NULL");
            b.splice(pos..pos + 4, [0, 0, 0, 1, b'1']);
            b
        };
        assert!(decode(&bad_meta)
            .expect_err("metadata")
            .to_string()
            .contains("metadata"));
        // Binary jsonb of a version PostgreSQL never wrote.
        let mut jsonb = copy_bytes(&rows, true);
        let at = jsonb.len() - 2 - 2 - 1;
        assert_eq!(&jsonb[at..at + 3], b"\x01{}");
        jsonb[at] = 2;
        let mut d = CopyDecoder {
            jsonb: true,
            ..CopyDecoder::default()
        };
        let e = d.feed(&jsonb, &mut Batch::new()).expect_err("version 2");
        assert!(
            e.to_string()
                .contains("data: jsonb of an unknown binary version"),
            "{e}"
        );
    }
}
