//! A record read in place: the fields of a `Record`'s encoding as slices of the archive's
//! decompressed bytes, without building the message (one small vector for the metadata pairs
//! is all a record allocates). What a reader hands a restore that writes the fields straight
//! into its own form (the events table's COPY tuples). It accepts and rejects what prost's
//! `Record::decode` does and reads the same values (a property test holds the two together):
//! unknown fields are skipped, a repeated field's last value wins, a repeated `timestamp` is
//! merged, metadata keys repeat last-wins.

use std::collections::BTreeMap;

use super::Record;

/// A record's fields, borrowed from its encoding (or from a [`Record`]).
#[derive(Debug, Clone)]
pub struct RecordView<'a> {
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
    /// `timestamp` (field 7).
    pub timestamp: Option<prost_types::Timestamp>,
    /// `event_id` (field 8).
    pub event_id: &'a str,
    metadata: Metadata<'a>,
}

/// Where a view's metadata lies.
#[derive(Debug, Clone)]
enum Metadata<'a> {
    /// The pairs of the record's map entries, as encoded.
    Encoded(Vec<(&'a str, &'a str)>),
    /// A decoded record's map.
    Map(&'a BTreeMap<String, String>),
}

/// Why a record's encoding does not decode (the words prost would use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewError(pub &'static str);

impl std::fmt::Display for ViewError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ViewError {}

/// Reads protobuf wire data from a slice.
struct Wire<'a> {
    buf: &'a [u8],
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Result<u64, ViewError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = self.buf.split_first() else {
                return Err(ViewError("buffer underflow"));
            };
            self.buf = rest;
            if i == 9 && b > 1 {
                return Err(ViewError("invalid varint"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(ViewError("invalid varint"))
    }

    /// The next field's number and wire type.
    fn key(&mut self) -> Result<(u32, u8), ViewError> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(ViewError("invalid key value"));
        }
        let wire = (key & 7) as u8;
        if wire > 5 {
            return Err(ViewError("invalid wire type value"));
        }
        let tag = (key >> 3) as u32;
        if tag == 0 {
            return Err(ViewError("invalid tag value: 0"));
        }
        Ok((tag, wire))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ViewError> {
        if n > self.buf.len() {
            return Err(ViewError("buffer underflow"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn bytes(&mut self, wire: u8) -> Result<&'a [u8], ViewError> {
        expect(wire, 2)?;
        let len = self.varint()?;
        self.take(usize::try_from(len).map_err(|_| ViewError("buffer underflow"))?)
    }

    fn string(&mut self, wire: u8) -> Result<&'a str, ViewError> {
        std::str::from_utf8(self.bytes(wire)?)
            .map_err(|_| ViewError("invalid string value: data is not UTF-8 encoded"))
    }

    /// Skips a field of an unknown number (groups included, nested at most as deep as prost
    /// allows).
    fn skip(&mut self, tag: u32, wire: u8) -> Result<(), ViewError> {
        self.skip_nested(tag, wire, 0)
    }

    fn skip_nested(&mut self, tag: u32, wire: u8, depth: u32) -> Result<(), ViewError> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.bytes(2).map(|_| ()),
            3 => loop {
                if depth >= 100 {
                    return Err(ViewError("recursion limit reached"));
                }
                let (t, w) = self.key()?;
                if w == 4 {
                    if t != tag {
                        return Err(ViewError("unexpected end group tag"));
                    }
                    return Ok(());
                }
                self.skip_nested(t, w, depth + 1)?;
            },
            4 => Err(ViewError("unexpected end group tag")),
            _ => self.take(4).map(|_| ()),
        }
    }
}

fn expect(wire: u8, want: u8) -> Result<(), ViewError> {
    if wire == want {
        Ok(())
    } else {
        Err(ViewError("invalid wire type"))
    }
}

/// A map entry's key and value (each "" when absent, the last one when repeated).
fn entry(body: &[u8]) -> Result<(&str, &str), ViewError> {
    let mut w = Wire { buf: body };
    let (mut k, mut v) = ("", "");
    while !w.buf.is_empty() {
        match w.key()? {
            (1, wire) => k = w.string(wire)?,
            (2, wire) => v = w.string(wire)?,
            (tag, wire) => w.skip_nested(tag, wire, 1)?,
        }
    }
    Ok((k, v))
}

/// Merges a `google.protobuf.Timestamp` encoding into `t`.
fn merge_timestamp(body: &[u8], t: &mut prost_types::Timestamp) -> Result<(), ViewError> {
    let mut w = Wire { buf: body };
    while !w.buf.is_empty() {
        match w.key()? {
            (1, wire) => {
                expect(wire, 0)?;
                t.seconds = w.varint()? as i64;
            }
            (2, wire) => {
                expect(wire, 0)?;
                t.nanos = w.varint()? as i32;
            }
            (tag, wire) => w.skip_nested(tag, wire, 1)?,
        }
    }
    Ok(())
}

impl<'a> RecordView<'a> {
    /// Reads a record's encoding (the message itself, without its length prefix).
    pub fn decode(body: &'a [u8]) -> Result<Self, ViewError> {
        let mut v = RecordView {
            aggregate_type: "",
            aggregate_id: "",
            aggregate_version: 0,
            event_type: "",
            data: &[],
            timestamp: None,
            event_id: "",
            metadata: Metadata::Encoded(Vec::new()),
        };
        let mut pairs = Vec::new();
        let mut w = Wire { buf: body };
        while !w.buf.is_empty() {
            match w.key()? {
                (1, wire) => v.aggregate_type = w.string(wire)?,
                (2, wire) => v.aggregate_id = w.string(wire)?,
                (3, wire) => {
                    expect(wire, 0)?;
                    v.aggregate_version = w.varint()?;
                }
                (4, wire) => v.event_type = w.string(wire)?,
                (5, wire) => v.data = w.bytes(wire)?,
                (6, wire) => pairs.push(entry(w.bytes(wire)?)?),
                (7, wire) => {
                    let t = v.timestamp.get_or_insert_with(Default::default);
                    merge_timestamp(w.bytes(wire)?, t)?;
                }
                (8, wire) => v.event_id = w.string(wire)?,
                (tag, wire) => w.skip(tag, wire)?,
            }
        }
        v.metadata = Metadata::Encoded(pairs);
        Ok(v)
    }

    /// A decoded record's fields.
    pub fn of(r: &'a Record) -> Self {
        RecordView {
            aggregate_type: &r.aggregate_type,
            aggregate_id: &r.aggregate_id,
            aggregate_version: r.aggregate_version,
            event_type: &r.event_type,
            data: &r.data,
            timestamp: r.timestamp,
            event_id: &r.event_id,
            metadata: Metadata::Map(&r.metadata),
        }
    }

    /// Whether the record has no metadata.
    pub fn metadata_is_empty(&self) -> bool {
        match &self.metadata {
            Metadata::Encoded(pairs) => pairs.is_empty(),
            Metadata::Map(m) => m.is_empty(),
        }
    }

    /// The metadata pairs as encoded: a key may repeat (the last value counts, as in the
    /// message's map); from a decoded record, in key order.
    pub fn metadata(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        let (pairs, map) = match &self.metadata {
            Metadata::Encoded(pairs) => (pairs.as_slice(), None),
            Metadata::Map(m) => (&[][..], Some(m.iter())),
        };
        let from_map = map
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str()));
        pairs.iter().copied().chain(from_map)
    }

    /// The message (what prost's decoding gives).
    pub fn to_record(&self) -> Record {
        Record {
            aggregate_type: self.aggregate_type.to_owned(),
            aggregate_id: self.aggregate_id.to_owned(),
            aggregate_version: self.aggregate_version,
            event_type: self.event_type.to_owned(),
            data: self.data.to_vec(),
            metadata: self
                .metadata()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            timestamp: self.timestamp,
            event_id: self.event_id.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    fn record() -> impl Strategy<Value = Record> {
        (
            ".{0,12}",
            ".{0,40}",
            any::<u64>(),
            ".{0,12}",
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..5),
            proptest::option::of((any::<i64>(), any::<i32>())),
            ".{0,40}",
        )
            .prop_map(|(t, id, v, et, data, md, ts, eid)| Record {
                aggregate_type: t,
                aggregate_id: id,
                aggregate_version: v,
                event_type: et,
                data,
                metadata: md,
                timestamp: ts.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                event_id: eid,
            })
    }

    /// Edits that make odd but possible encodings: bytes cut, inserted or changed, two
    /// encodings back to back (every field repeated).
    #[derive(Debug, Clone)]
    enum Edit {
        Truncate(usize),
        Set(usize, u8),
        Insert(usize, Vec<u8>),
        Concat,
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            any::<usize>().prop_map(Edit::Truncate),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
            (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..6))
                .prop_map(|(i, b)| Edit::Insert(i, b)),
            Just(Edit::Concat),
        ]
    }

    fn apply(mut b: Vec<u8>, other: &[u8], edits: &[Edit]) -> Vec<u8> {
        for e in edits {
            match e {
                Edit::Truncate(i) if !b.is_empty() => b.truncate(i % b.len()),
                Edit::Set(i, x) if !b.is_empty() => {
                    let n = b.len();
                    b[i % n] = *x
                }
                Edit::Insert(i, x) => {
                    let at = i % (b.len() + 1);
                    b.splice(at..at, x.iter().copied());
                }
                Edit::Concat => b.extend_from_slice(other),
                _ => {}
            }
        }
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn a_view_reads_what_prost_reads(r in record()) {
            let bytes = r.encode_to_vec();
            let v = RecordView::decode(&bytes).expect("decodes");
            prop_assert_eq!(v.to_record(), r.clone());
            prop_assert_eq!(RecordView::of(&r).to_record(), r);
        }

        #[test]
        fn a_view_accepts_and_rejects_what_prost_does(
            a in record(),
            b in record(),
            edits in proptest::collection::vec(edit(), 1..4),
        ) {
            let bytes = apply(a.encode_to_vec(), &b.encode_to_vec(), &edits);
            match (RecordView::decode(&bytes), Record::decode(&bytes[..])) {
                (Ok(v), Ok(r)) => prop_assert_eq!(v.to_record(), r),
                (Err(_), Err(_)) => {}
                (v, r) => prop_assert!(false, "view {:?}, prost {:?}", v.map(|v| v.to_record()), r),
            }
        }
    }

    #[test]
    fn malformed_encodings_are_refused_as_prost_refuses_them() {
        let cases: &[&[u8]] = &[
            // A varint of eleven bytes, and one whose tenth byte overflows 64 bits.
            &[
                0x18, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
            ],
            &[
                0x18, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02,
            ],
            // Field number 0; wire type 6; a key beyond 32 bits.
            &[0x00, 0x01],
            &[0x0e],
            &[0x80, 0x80, 0x80, 0x80, 0x20],
            // aggregate_version sent length-delimited; a string longer than what is left.
            &[0x1a, 0x00],
            &[0x0a, 0x05, b'a'],
            // A string, a metadata key and value that are not UTF-8.
            &[0x0a, 0x01, 0xff],
            &[0x32, 0x03, 0x0a, 0x01, 0xff],
            &[0x32, 0x03, 0x12, 0x01, 0xc3],
            // A timestamp whose seconds are length-delimited; an end group without a start.
            &[0x3a, 0x02, 0x0a, 0x00],
            &[0x4c],
        ];
        for bytes in cases {
            assert!(Record::decode(*bytes).is_err(), "prost accepts {bytes:?}");
            assert!(
                RecordView::decode(bytes).is_err(),
                "the view accepts {bytes:?}"
            );
        }
        // The largest varint there is (ten bytes) is a version, as for prost.
        let max = [
            0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert_eq!(
            Record::decode(&max[..]).expect("decodes").aggregate_version,
            u64::MAX
        );
        assert_eq!(
            RecordView::decode(&max).expect("decodes").aggregate_version,
            u64::MAX
        );
    }

    #[test]
    fn repeated_fields_and_groups_read_as_prost_reads_them() {
        // Field 9 as a group holding a varint, then field 1 twice, a metadata key twice and a
        // timestamp in two parts (merged).
        let mut b = vec![(9 << 3) | 3, (1 << 3), 5, (9 << 3) | 4];
        b.extend([(1 << 3) | 2, 1, b'A', (1 << 3) | 2, 1, b'B']);
        b.extend([(6 << 3) | 2, 6, 0x0a, 1, b'k', 0x12, 1, b'1']);
        b.extend([(6 << 3) | 2, 6, 0x0a, 1, b'k', 0x12, 1, b'2']);
        b.extend([(7 << 3) | 2, 2, 0x08, 7, (7 << 3) | 2, 2, 0x10, 9]);
        // An entry whose value is repeated.
        b.extend([(6 << 3) | 2, 9, 0x0a, 1, b'j', 0x12, 1, b'x', 0x12, 1, b'y']);
        let r = Record::decode(&b[..]).expect("decodes");
        let v = RecordView::decode(&b).expect("decodes");
        assert_eq!(v.to_record(), r);
        assert_eq!(r.aggregate_type, "B");
        assert_eq!(r.metadata["k"], "2");
        assert_eq!(r.metadata["j"], "y");
        assert_eq!(
            r.timestamp,
            Some(prost_types::Timestamp {
                seconds: 7,
                nanos: 9
            })
        );
        // A group closed by another field's end tag.
        let bad = [(9 << 3) | 3, (8 << 3) | 4];
        assert!(Record::decode(&bad[..]).is_err());
        assert!(RecordView::decode(&bad).is_err());
    }
}
