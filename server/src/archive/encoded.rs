//! Records already in their archive encoding: what a source hands the writer when it can write
//! the bytes of a `Record` straight from its own fields (the events table), without building
//! the message first. The bytes are exactly `Record::encode_length_delimited` of the same
//! values (metadata keys sorted, defaults omitted, fields in tag order); a property test holds
//! the two together.

use std::ops::Range;

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;

use super::Record;

/// The fields of one record, borrowed from wherever the source keeps them.
#[derive(Debug, Clone)]
pub struct RecordParts<'a, M> {
    /// `aggregate_type` (field 1).
    pub aggregate_type: &'a str,
    /// `aggregate_id` (field 2).
    pub aggregate_id: &'a str,
    /// `aggregate_version` (field 3).
    pub aggregate_version: u64,
    /// `event_type` (field 4).
    pub event_type: &'a str,
    /// `data` (field 5).
    pub data: &'a [u8],
    /// `metadata` (field 6): pairs in ascending key order, each key once.
    pub metadata: M,
    /// `timestamp` (field 7).
    pub timestamp: Option<prost_types::Timestamp>,
    /// `event_id` (field 8).
    pub event_id: &'a str,
}

/// One record of a [`Batch`].
#[derive(Debug, Clone)]
struct Item {
    /// Its length-delimited encoding in the batch's buffer.
    bytes: Range<usize>,
    /// Where its aggregate type and id lie in the buffer.
    aggregate_type: Range<usize>,
    aggregate_id: Range<usize>,
    version: u64,
    timestamp: Option<prost_types::Timestamp>,
}

/// Encoded records back to back, with what the engine and the footer read of each.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    buf: Vec<u8>,
    items: Vec<Item>,
}

/// A record of a [`Batch`], as the engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct EncodedRef<'a> {
    buf: &'a [u8],
    item: &'a Item,
}

impl<'a> EncodedRef<'a> {
    /// The record's length-delimited encoding.
    pub fn bytes(&self) -> &'a [u8] {
        &self.buf[self.item.bytes.clone()]
    }

    /// `aggregate_type`.
    pub fn aggregate_type(&self) -> &'a str {
        str_at(self.buf, &self.item.aggregate_type)
    }

    /// `aggregate_id` as the source gave it.
    pub fn aggregate_id(&self) -> &'a str {
        str_at(self.buf, &self.item.aggregate_id)
    }

    /// `aggregate_version`.
    pub fn aggregate_version(&self) -> u64 {
        self.item.version
    }

    /// `timestamp`.
    pub fn timestamp(&self) -> Option<&'a prost_types::Timestamp> {
        self.item.timestamp.as_ref()
    }
}

/// The string the batch wrote at `r` (it wrote it from a `&str`).
fn str_at<'a>(buf: &'a [u8], r: &Range<usize>) -> &'a str {
    std::str::from_utf8(&buf[r.clone()]).expect("written from a str")
}

fn len_delimited_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

fn string_len(tag: u32, s: &[u8]) -> usize {
    if s.is_empty() {
        0
    } else {
        len_delimited_len(tag, s.len())
    }
}

fn varint_field_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        prost::encoding::key_len(tag) + encoded_len_varint(v)
    }
}

/// Writes a string or bytes field unless empty; returns where its content lies.
fn put_bytes(buf: &mut Vec<u8>, tag: u32, s: &[u8]) -> Range<usize> {
    if s.is_empty() {
        return buf.len()..buf.len();
    }
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(s.len() as u64, buf);
    let start = buf.len();
    buf.extend_from_slice(s);
    start..buf.len()
}

fn put_varint(buf: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v, buf);
    }
}

/// Body length of a `google.protobuf.Timestamp` (int64 seconds = 1, int32 nanos = 2; negative
/// numbers as ten-byte varints, as protobuf encodes them).
fn timestamp_len(t: &prost_types::Timestamp) -> usize {
    varint_field_len(1, t.seconds as u64) + varint_field_len(2, i64::from(t.nanos) as u64)
}

fn entry_len(k: &str, v: &str) -> usize {
    string_len(1, k.as_bytes()) + string_len(2, v.as_bytes())
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `records` records of `bytes` bytes in all.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            items: Vec::with_capacity(records),
        }
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Every record's encoding, back to back.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The records.
    pub fn iter(&self) -> impl Iterator<Item = EncodedRef<'_>> {
        self.items.iter().map(|item| EncodedRef {
            buf: &self.buf,
            item,
        })
    }

    /// The last record.
    pub fn last(&self) -> Option<EncodedRef<'_>> {
        self.items.last().map(|item| EncodedRef {
            buf: &self.buf,
            item,
        })
    }

    /// Appends a record given as a message.
    pub fn push_record(&mut self, r: &Record) {
        self.push(RecordParts {
            aggregate_type: &r.aggregate_type,
            aggregate_id: &r.aggregate_id,
            aggregate_version: r.aggregate_version,
            event_type: &r.event_type,
            data: &r.data,
            metadata: r.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            timestamp: r.timestamp,
            event_id: &r.event_id,
        });
    }

    /// Appends a record from its fields, writing exactly what `Record::encode_length_delimited`
    /// writes for the same values.
    pub fn push<'m, M>(&mut self, p: RecordParts<'_, M>)
    where
        M: Iterator<Item = (&'m str, &'m str)> + Clone,
    {
        let metadata_len: usize = p
            .metadata
            .clone()
            .map(|(k, v)| len_delimited_len(6, entry_len(k, v)))
            .sum();
        let body = string_len(1, p.aggregate_type.as_bytes())
            + string_len(2, p.aggregate_id.as_bytes())
            + varint_field_len(3, p.aggregate_version)
            + string_len(4, p.event_type.as_bytes())
            + string_len(5, p.data)
            + metadata_len
            + p.timestamp
                .as_ref()
                .map_or(0, |t| len_delimited_len(7, timestamp_len(t)))
            + string_len(8, p.event_id.as_bytes());
        let buf = &mut self.buf;
        let start = buf.len();
        buf.reserve(encoded_len_varint(body as u64) + body);
        encode_varint(body as u64, buf);
        let aggregate_type = put_bytes(buf, 1, p.aggregate_type.as_bytes());
        let aggregate_id = put_bytes(buf, 2, p.aggregate_id.as_bytes());
        put_varint(buf, 3, p.aggregate_version);
        put_bytes(buf, 4, p.event_type.as_bytes());
        put_bytes(buf, 5, p.data);
        for (k, v) in p.metadata {
            encode_key(6, WireType::LengthDelimited, buf);
            encode_varint(entry_len(k, v) as u64, buf);
            put_bytes(buf, 1, k.as_bytes());
            put_bytes(buf, 2, v.as_bytes());
        }
        if let Some(t) = &p.timestamp {
            encode_key(7, WireType::LengthDelimited, buf);
            encode_varint(timestamp_len(t) as u64, buf);
            put_varint(buf, 1, t.seconds as u64);
            put_varint(buf, 2, i64::from(t.nanos) as u64);
        }
        put_bytes(buf, 8, p.event_id.as_bytes());
        debug_assert_eq!(buf.len() - start, encoded_len_varint(body as u64) + body);
        self.items.push(Item {
            bytes: start..buf.len(),
            aggregate_type,
            aggregate_id,
            version: p.aggregate_version,
            timestamp: p.timestamp,
        });
    }

    /// Keeps only the records `keep` accepts (rewriting the buffer only when one goes).
    pub fn retain(&mut self, mut keep: impl FnMut(EncodedRef<'_>) -> bool) {
        let verdicts: Vec<bool> = self.iter().map(&mut keep).collect();
        if verdicts.iter().all(|k| *k) {
            return;
        }
        let old = std::mem::take(self);
        for (r, kept) in old.iter().zip(verdicts) {
            if kept {
                self.push_copy(r);
            }
        }
    }

    /// Appends a copy of a record of another batch.
    pub fn push_copy(&mut self, r: EncodedRef<'_>) {
        let item = r.item;
        let at = self.buf.len();
        let base = item.bytes.start;
        let shift = |r: &Range<usize>| r.start - base + at..r.end - base + at;
        self.buf.extend_from_slice(&r.buf[item.bytes.clone()]);
        self.items.push(Item {
            bytes: at..self.buf.len(),
            aggregate_type: shift(&item.aggregate_type),
            aggregate_id: shift(&item.aggregate_id),
            version: item.version,
            timestamp: item.timestamp,
        });
    }

    /// Decodes the records back into messages (tests and diagnostics).
    pub fn to_records(&self) -> Result<Vec<Record>, prost::DecodeError> {
        self.iter()
            .map(|r| Record::decode_length_delimited(r.bytes()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = Record> {
        (
            (".{0,12}", ".{0,40}", any::<u64>(), ".{0,12}"),
            (
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::btree_map(".{0,8}", ".{0,20}", 0..6),
                proptest::option::of((any::<i64>(), any::<i32>())),
                ".{0,40}",
            ),
        )
            .prop_map(
                |((ty, id, version, event_type), (data, metadata, ts, event_id))| Record {
                    aggregate_type: ty,
                    aggregate_id: id,
                    aggregate_version: version,
                    event_type,
                    data,
                    metadata,
                    timestamp: ts.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                    event_id,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn writes_what_prost_writes(recs in proptest::collection::vec(record(), 1..8)) {
            let mut batch = Batch::new();
            let mut expected = Vec::new();
            for r in &recs {
                batch.push_record(r);
                r.encode_length_delimited(&mut expected).expect("encode");
            }
            prop_assert_eq!(batch.bytes(), &expected[..]);
            prop_assert_eq!(batch.to_records().expect("decode"), recs.clone());
            for (e, r) in batch.iter().zip(&recs) {
                prop_assert_eq!(e.aggregate_type(), r.aggregate_type.as_str());
                prop_assert_eq!(e.aggregate_id(), r.aggregate_id.as_str());
                prop_assert_eq!(e.aggregate_version(), r.aggregate_version);
                prop_assert_eq!(e.timestamp(), r.timestamp.as_ref());
            }
            let mut odd = batch.clone();
            let mut n = 0;
            odd.retain(|_| { n += 1; n % 2 == 1 });
            let kept: Vec<Record> = recs.iter().step_by(2).cloned().collect();
            prop_assert_eq!(odd.to_records().expect("decode"), kept.clone());
            for (e, r) in odd.iter().zip(&kept) {
                prop_assert_eq!(e.aggregate_id(), r.aggregate_id.as_str());
            }
        }
    }
}
