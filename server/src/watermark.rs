//! Watermarks: for every aggregate, the highest version a backup chain holds.
//!
//! Versions are gapless per aggregate, so the map says exactly which events a chain holds: an
//! incremental backup stores the events above it, and finds a gap or a store that went
//! backwards (after a restore) by comparing. Each backup writes its chain's watermark beside
//! its archive (`backups/<id>.watermark`) as an archive of the same format — encrypted and
//! authenticated with the same keys — whose records carry only aggregate type, id and version.

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::sync::Arc;

use anyhow::Context;

use crate::archive::{ArchiveReader, ArchiveWriter, Keys, Protection, Record, WriterOptions};
use crate::destination::{layout, Destination};

/// `kind` in a watermark archive's header.
pub const WATERMARK_KIND: &str = "watermark";
/// `event_type` of a watermark record.
const WATERMARK_RECORD: &str = "Watermark";

/// An aggregate, as the key of the per-aggregate maps (one entry per aggregate of the store:
/// tens of thousands): its type shared by every key made by the same [`AggregateKeys`], its id
/// in 16 bytes when it is a uuid (as Monoskope's are). 40 bytes and no allocation of its own,
/// where two strings took about 140.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Aggregate {
    /// The aggregate type.
    pub kind: Arc<str>,
    /// The id, compared as its lowercase text.
    pub id: AggregateId,
}

/// An aggregate id as any source spells it, normalised to lowercase: a hyphenated uuid is
/// held as its 16 bytes, anything else as text. The two never hold the same id, so equality
/// and hashing are those of the lowercase text; so is the order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AggregateId(IdRepr);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum IdRepr {
    Uuid([u8; 16]),
    Text(Box<str>),
}

impl AggregateId {
    /// The id `id` (any case).
    pub fn new(id: &str) -> Self {
        // 36 characters parse only in the hyphenated form, which prints back as `id` in
        // lowercase: the other forms (simple, braced, URN) stay text, as they always were.
        if id.len() == 36 {
            if let Ok(u) = uuid::Uuid::try_parse(id) {
                return Self(IdRepr::Uuid(u.into_bytes()));
            }
        }
        Self(IdRepr::Text(id.to_ascii_lowercase().into_boxed_str()))
    }

    /// The id of a uuid.
    pub fn from_uuid(u: uuid::Uuid) -> Self {
        Self(IdRepr::Uuid(u.into_bytes()))
    }
}

impl std::fmt::Display for AggregateId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            IdRepr::Uuid(b) => uuid::Uuid::from_bytes(*b).hyphenated().fmt(f),
            IdRepr::Text(t) => f.write_str(t),
        }
    }
}

impl Ord for AggregateId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (&self.0, &other.0) {
            // Lowercase hex keeps the bytes' order, the hyphens stand at the same places.
            (IdRepr::Uuid(a), IdRepr::Uuid(b)) => a.cmp(b),
            (IdRepr::Text(a), IdRepr::Text(b)) => a.cmp(b),
            _ => self.to_string().cmp(&other.to_string()),
        }
    }
}

impl PartialOrd for AggregateId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.id)
    }
}

/// Makes [`Aggregate`] keys, holding each aggregate type once for all of them.
#[derive(Debug, Default)]
pub struct AggregateKeys {
    kinds: HashSet<Arc<str>>,
}

impl AggregateKeys {
    /// The key of the aggregate of type `kind` and id `id` (as any source spells it).
    pub fn key(&mut self, kind: &str, id: &str) -> Aggregate {
        Aggregate {
            kind: self.kind(kind),
            id: AggregateId::new(id),
        }
    }

    /// The shared aggregate type `kind`.
    pub fn kind(&mut self, kind: &str) -> Arc<str> {
        if let Some(k) = self.kinds.get(kind) {
            return k.clone();
        }
        let k: Arc<str> = kind.into();
        self.kinds.insert(k.clone());
        k
    }
}

/// The aggregate of a type and an id (its type not shared with other keys: for one-off keys).
pub fn aggregate(aggregate_type: &str, aggregate_id: &str) -> Aggregate {
    AggregateKeys::default().key(aggregate_type, aggregate_id)
}

/// Aggregate → highest version held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermark {
    /// The map.
    pub map: HashMap<Aggregate, u64>,
}

impl Watermark {
    /// Raises the aggregate's version to `r`'s.
    pub fn observe(&mut self, r: &Record) {
        self.observe_into(
            &r.aggregate_type,
            &r.aggregate_id,
            r.aggregate_version,
            &mut AggregateKeys::default(),
        );
    }

    /// Raises an aggregate's version, its key made by `keys` (the backup calls this once per
    /// event: no allocation for a uuid id).
    pub fn observe_into(
        &mut self,
        aggregate_type: &str,
        aggregate_id: &str,
        version: u64,
        keys: &mut AggregateKeys,
    ) {
        let v = self
            .map
            .entry(keys.key(aggregate_type, aggregate_id))
            .or_insert(version);
        *v = (*v).max(version);
    }

    /// Raises each aggregate to the highest version of its span: the watermark after a chain
    /// link whose new versions `spans` summarises.
    pub fn raise(&mut self, spans: HashMap<Aggregate, Span>) {
        for (a, s) in spans {
            let v = self.map.entry(a).or_insert(0);
            *v = (*v).max(s.max);
        }
    }

    /// The version held for `a` (0: none).
    pub fn get(&self, a: &Aggregate) -> u64 {
        self.map.get(a).copied().unwrap_or(0)
    }

    /// Encodes the watermark as an archive (records sorted, so equal maps give equal bytes
    /// apart from the random key material).
    pub fn to_archive(
        &self,
        backup_id: &str,
        protection: Protection,
        compression_level: i32,
    ) -> anyhow::Result<Vec<u8>> {
        let mut entries: Vec<(&Aggregate, &u64)> = self.map.iter().collect();
        entries.sort();
        let mut opts = WriterOptions::new(backup_id, protection);
        opts.kind = WATERMARK_KIND.into();
        opts.compression_level = compression_level;
        let mut w = ArchiveWriter::new(Vec::new(), opts)?;
        for (a, v) in entries {
            w.append(&Record {
                aggregate_type: a.kind.to_string(),
                aggregate_id: a.id.to_string(),
                aggregate_version: *v,
                event_type: WATERMARK_RECORD.into(),
                ..Default::default()
            })?;
        }
        Ok(w.finish()?.0)
    }

    /// Decodes a watermark archive of `backup_id`.
    pub fn from_archive(bytes: &[u8], keys: &Keys, backup_id: &str) -> anyhow::Result<Self> {
        let mut r = ArchiveReader::open(Cursor::new(bytes), keys)?;
        anyhow::ensure!(
            r.header().kind == WATERMARK_KIND && r.header().backup_id == backup_id,
            "not the watermark of backup {backup_id}"
        );
        let (mut w, mut keys) = (Watermark::default(), AggregateKeys::default());
        while let Some(rec) = r.next_view()? {
            w.map.insert(
                keys.key(rec.aggregate_type, rec.aggregate_id),
                rec.aggregate_version,
            );
        }
        Ok(w)
    }

    /// Writes the watermark of `backup_id` to the destination; returns its key. Takes the
    /// watermark: one entry per aggregate, not copied once more for the encoding thread.
    pub async fn store(
        self,
        dest: &dyn Destination,
        backup_id: &str,
        protection: Protection,
        compression_level: i32,
    ) -> anyhow::Result<String> {
        let id = backup_id.to_string();
        let bytes = tokio::task::spawn_blocking(move || {
            self.to_archive(&id, protection, compression_level)
        })
        .await??;
        let key = layout::watermark_key(backup_id);
        dest.put(&key, bytes)
            .await
            .with_context(|| format!("writing {key}"))?;
        Ok(key)
    }

    /// Reads the watermark stored at `key` for `backup_id`.
    pub async fn load(
        dest: &dyn Destination,
        keys: &Keys,
        key: &str,
        backup_id: &str,
    ) -> anyhow::Result<Self> {
        let bytes = dest
            .get_bytes(key)
            .await
            .with_context(|| format!("reading {key}"))?;
        let keys = keys.clone();
        let id = backup_id.to_string();
        tokio::task::spawn_blocking(move || Watermark::from_archive(&bytes, &keys, &id))
            .await?
            .with_context(|| format!("watermark {key}"))
    }
}

/// Per-aggregate span of the new events of an incremental backup (or of one chain link).
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// Lowest version seen.
    pub min: u64,
    /// Highest version seen.
    pub max: u64,
    /// Events seen.
    pub count: u64,
}

/// Checks that the events of one link, summarised by `spans`, continue `before` exactly: each
/// aggregate's versions are `before + 1 ..= max` with none missing or repeated. Returns the first
/// problem in words.
pub fn check_continuity(
    before: &Watermark,
    spans: &HashMap<Aggregate, Span>,
) -> Result<(), String> {
    let mut problems: Vec<String> = spans
        .iter()
        .filter_map(|(a, s)| {
            let held = before.get(a);
            if s.min <= held {
                Some(format!(
                    "aggregate {a} has version {} again (the chain before holds up to {held})",
                    s.min
                ))
            } else if s.min != held + 1 || s.max - s.min + 1 != s.count {
                Some(format!(
                    "aggregate {a} has a version gap: the chain before holds up to {held}, this link has {} events with versions {}..={}",
                    s.count, s.min, s.max
                ))
            } else {
                None
            }
        })
        .collect();
    problems.sort();
    match problems.into_iter().next() {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

/// Adds version `v` of the aggregate of type `t` and id `id` to `spans`, its key made by `keys`.
pub fn span_add_parts(
    spans: &mut HashMap<Aggregate, Span>,
    t: &str,
    id: &str,
    v: u64,
    keys: &mut AggregateKeys,
) {
    span_add_version(spans, keys.key(t, id), v);
}

/// Adds version `v` of aggregate `a` to `spans`.
pub fn span_add_version(spans: &mut HashMap<Aggregate, Span>, a: Aggregate, v: u64) {
    spans
        .entry(a)
        .and_modify(|s| {
            s.min = s.min.min(v);
            s.max = s.max.max(v);
            s.count += 1;
        })
        .or_insert(Span {
            min: v,
            max: v,
            count: 1,
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::MasterKey;
    use proptest::prelude::*;

    fn rec(t: &str, id: &str, v: u64) -> Record {
        Record {
            aggregate_type: t.into(),
            aggregate_id: id.into(),
            aggregate_version: v,
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_through_an_encrypted_archive() {
        let key = MasterKey::generate();
        let mut w = Watermark::default();
        for v in 1..=3 {
            w.observe(&rec("User", "AB", v));
        }
        w.observe(&rec("Tenant", "cd", 7));
        let bytes = w
            .to_archive(
                "20261124T000000000Z-00000001",
                Protection::Key(key.clone()),
                3,
            )
            .expect("write");
        let keys = Keys::keyring(crate::archive::Keyring::new(vec![key]).expect("ring"));
        let back =
            Watermark::from_archive(&bytes, &keys, "20261124T000000000Z-00000001").expect("read");
        assert_eq!(back, w);
        assert_eq!(back.get(&aggregate("User", "ab")), 3);
        assert!(Watermark::from_archive(&bytes, &keys, "20261124T000000000Z-00000002").is_err());
    }

    #[test]
    fn continuity_finds_gaps_and_overlaps() {
        let mut before = Watermark::default();
        before.observe(&rec("User", "a", 2));
        let spans_of = |recs: &[Record]| {
            let (mut s, mut key) = (HashMap::new(), AggregateKeys::default());
            for r in recs {
                span_add_parts(
                    &mut s,
                    &r.aggregate_type,
                    &r.aggregate_id,
                    r.aggregate_version,
                    &mut key,
                );
            }
            s
        };
        assert!(check_continuity(
            &before,
            &spans_of(&[rec("User", "a", 3), rec("User", "b", 1)])
        )
        .is_ok());
        let e = check_continuity(&before, &spans_of(&[rec("User", "a", 4)])).expect_err("gap");
        assert!(e.contains("gap"), "{e}");
        let e = check_continuity(
            &before,
            &spans_of(&[rec("User", "a", 2), rec("User", "a", 3)]),
        )
        .expect_err("overlap");
        assert!(e.contains("again"), "{e}");
        let e = check_continuity(&before, &spans_of(&[rec("User", "b", 2)]))
            .expect_err("new aggregate not from 1");
        assert!(e.contains("gap"), "{e}");
    }

    #[test]
    fn aggregate_ids_are_their_lowercase_text() {
        let u = "0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D";
        let id = AggregateId::new(u);
        assert!(
            matches!(id.0, IdRepr::Uuid(_)),
            "a hyphenated uuid is held as one"
        );
        assert_eq!(id, AggregateId::new(&u.to_ascii_lowercase()));
        assert_eq!(id.to_string(), u.to_ascii_lowercase());
        // The other spellings of the same uuid were other aggregates before; they still are.
        for other in [
            "0a1b2c3d4e5f4a6b8c7d9e0f1a2b3c4d",
            "{0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d}",
            "urn:uuid:0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        ] {
            let o = AggregateId::new(other);
            assert!(matches!(o.0, IdRepr::Text(_)), "{other}");
            assert_ne!(o, id);
            assert_eq!(o.to_string(), other);
        }
        assert_eq!(AggregateId::new("Tenant-A").to_string(), "tenant-a");
        assert_eq!(
            aggregate("User", u),
            AggregateKeys::default().key("User", &u.to_ascii_lowercase())
        );
    }

    proptest! {
        /// Keys order as the (type, lowercase id) text pairs they stand for, uuids or not (the
        /// watermark archive is written in this order), and are equal exactly when those are.
        #[test]
        fn aggregates_order_as_their_text(
            ids in proptest::collection::vec(
                prop_oneof![
                    any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).hyphenated().to_string()),
                    any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).hyphenated().to_string().to_uppercase()),
                    "[0-9a-fA-F-]{0,40}",
                    "\\PC{0,8}",
                ],
                1..12,
            ),
            kinds in proptest::collection::vec("[A-Z][a-z]{0,3}", 1..3),
        ) {
            let mut keys = AggregateKeys::default();
            let mut pairs: Vec<(Aggregate, (String, String))> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let kind = &kinds[i % kinds.len()];
                    (keys.key(kind, id), (kind.clone(), id.to_ascii_lowercase()))
                })
                .collect();
            for (a, (kind, id)) in &pairs {
                prop_assert_eq!(&a.to_string(), &format!("{kind} {id}"));
            }
            pairs.sort_by(|x, y| x.0.cmp(&y.0));
            prop_assert!(pairs.windows(2).all(|w| w[0].1 <= w[1].1), "{:?}", pairs);
            for x in &pairs {
                for y in &pairs {
                    prop_assert_eq!(x.0 == y.0, x.1 == y.1);
                }
            }
        }
    }
}
