//! Reading Monoskope's own EventStore backups: an uncompressed tar with one entry per event,
//! each the Go `json.Marshal` of the event (`EType`, `EData` as base64, `ETimestamp` RFC 3339,
//! `AType`, `AID`, `AVersion`, `MD`), optionally encrypted per entry as a 16-byte IV followed by
//! AES-CFB-128 under the raw bytes of `S3_ENCRYPTION_KEY` (16, 24 or 32 long). The format is
//! described in `docs/MONOSKOPE.md` §8; this module reads it streaming, and checks every
//! aggregate's versions (in memory per aggregate, not per event).
//!
//! Monoskope's format has no integrity protection: a tampered ciphertext decrypts to tampered
//! JSON, and a backup cut short by a failed Monoskope run is a well-formed, shorter archive.
//! Neither can be detected; the README says so.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use base64::Engine as _;
use cfb_mode::cipher::KeyIvInit;

use crate::archive::Record;
use crate::watermark::{Aggregate, AggregateKeys};

/// The key of an encrypted Monoskope backup.
#[derive(Clone)]
pub struct MonoskopeKey(Vec<u8>);

impl std::fmt::Debug for MonoskopeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MonoskopeKey({} bytes)", self.0.len())
    }
}

impl MonoskopeKey {
    /// The key from its raw bytes, as Monoskope takes `S3_ENCRYPTION_KEY`.
    pub fn new(raw: Vec<u8>) -> anyhow::Result<Self> {
        match raw.len() {
            16 | 24 | 32 => Ok(Self(raw)),
            n => anyhow::bail!(
                "S3_ENCRYPTION_KEY must be 16, 24 or 32 bytes, got {n}{}",
                if raw.last() == Some(&b'\n') {
                    " (it ends with a newline)"
                } else {
                    ""
                }
            ),
        }
    }

    fn decrypt(&self, entry: &mut [u8]) -> Result<usize, String> {
        if entry.len() < 16 {
            return Err(format!(
                "is {} bytes, shorter than the 16-byte IV of an encrypted entry",
                entry.len()
            ));
        }
        let (iv, body) = entry.split_at_mut(16);
        match self.0.len() {
            16 => cfb_mode::Decryptor::<aes::Aes128>::new_from_slices(&self.0, iv)
                .map_err(|e| e.to_string())?
                .decrypt(body),
            24 => cfb_mode::Decryptor::<aes::Aes192>::new_from_slices(&self.0, iv)
                .map_err(|e| e.to_string())?
                .decrypt(body),
            _ => cfb_mode::Decryptor::<aes::Aes256>::new_from_slices(&self.0, iv)
                .map_err(|e| e.to_string())?
                .decrypt(body),
        }
        Ok(16)
    }
}

/// Looks a field up as Go's `json.Unmarshal` does: the exact name first, then any
/// case-insensitive match (the last one, as duplicates go).
fn field<'a>(
    obj: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Option<&'a serde_json::Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .next_back()
    })
}

/// Parses one decrypted entry into a record (no event id: Monoskope's backups have none).
pub fn parse_event(json: &[u8]) -> Result<Record, String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("is not valid JSON ({e})"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| "is not an event (not a JSON object)".to_string())?;
    if ["EType", "AType", "AID", "AVersion", "ETimestamp"]
        .iter()
        .all(|k| field(obj, k).is_none())
    {
        return Err("is not an event (none of EType, AType, AID, AVersion, ETimestamp)".into());
    }
    let string = |k: &str| -> Result<String, String> {
        match field(obj, k) {
            None | Some(serde_json::Value::Null) => Ok(String::new()),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("{k} is not a string: {other}")),
        }
    };
    let data = match field(obj, "EData") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => {
            let clean: String = s.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            base64::engine::general_purpose::STANDARD
                .decode(clean)
                .map_err(|e| format!("EData is not padded standard base64 ({e})"))?
        }
        Some(other) => return Err(format!("EData is not a base64 string: {other}")),
    };
    let aid = string("AID")?;
    let aggregate_id = if aid.is_empty() {
        uuid::Uuid::nil()
    } else {
        uuid::Uuid::parse_str(&aid).map_err(|e| format!("AID {aid:?} is not a UUID ({e})"))?
    };
    let version = match field(obj, "AVersion") {
        None | Some(serde_json::Value::Null) => 0,
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("AVersion {n} is not an unsigned integer"))?,
        Some(other) => return Err(format!("AVersion is not a number: {other}")),
    };
    if version > i64::MAX as u64 {
        return Err(format!(
            "AVersion {version} is beyond what the events table can store (2^63-1)"
        ));
    }
    let ts = string("ETimestamp")?;
    let timestamp = if ts.is_empty() || ts == "0001-01-01T00:00:00Z" {
        // Go's zero time: a NULL timestamp in the store.
        None
    } else {
        // As Go's RFC 3339 parser: an upper-case `T` between date and time, an upper-case `Z`.
        if ts.as_bytes().get(10) != Some(&b'T') || ts.ends_with('z') {
            return Err(format!(
                "ETimestamp {ts:?} is not an RFC 3339 time (expected e.g. 2023-05-04T10:11:12.345678Z)"
            ));
        }
        let t = chrono::DateTime::parse_from_rfc3339(&ts.replacen(',', ".", 1))
            .map_err(|e| format!("ETimestamp {ts:?} is not an RFC 3339 time ({e})"))?;
        let year = chrono::Datelike::year(&t.with_timezone(&chrono::Utc));
        if !(1..=9999).contains(&year) {
            return Err(format!(
                "ETimestamp {ts:?} is out of range (years 1 to 9999)"
            ));
        }
        Some(prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: t.timestamp_subsec_nanos() as i32,
        })
    };
    let mut metadata = BTreeMap::new();
    match field(obj, "MD") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Object(m)) => {
            for (k, v) in m {
                let v = match v {
                    serde_json::Value::Null => String::new(),
                    serde_json::Value::String(s) => s.clone(),
                    other => return Err(format!("MD value of {k:?} is not a string: {other}")),
                };
                metadata.insert(k.clone(), v);
            }
        }
        Some(other) => return Err(format!("MD is not an object: {other}")),
    }
    Ok(Record {
        aggregate_type: string("AType")?,
        aggregate_id: aggregate_id.to_string(),
        aggregate_version: version,
        event_type: string("EType")?,
        data,
        metadata,
        timestamp,
        event_id: String::new(),
    })
}

/// What a Monoskope backup holds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Events.
    pub events: u64,
    /// Distinct aggregates.
    pub aggregates: u64,
    /// Events per aggregate type.
    pub aggregate_types: BTreeMap<String, u64>,
    /// Events per event type.
    pub event_types: BTreeMap<String, u64>,
    /// Oldest event (RFC 3339).
    pub first_event_time: Option<String>,
    /// Newest event (RFC 3339).
    pub last_event_time: Option<String>,
    /// Bytes of entry content read (encrypted size when encrypted).
    pub entry_bytes: u64,
    /// Whether the entries were decrypted.
    pub encrypted: bool,
}

/// Reads a whole Monoskope backup from `input`: every entry decrypted (with `key`) and parsed,
/// in archive order, each record passed to `each`; then every aggregate's versions checked to
/// be exactly 1..n (unless `allow_gaps`). Errors name the entry.
pub fn read(
    input: impl Read,
    key: Option<&MonoskopeKey>,
    allow_gaps: bool,
    mut each: impl FnMut(Record) -> anyhow::Result<()>,
) -> anyhow::Result<Summary> {
    let mut archive = tar::Archive::new(input);
    let mut s = Summary {
        encrypted: key.is_some(),
        ..Default::default()
    };
    let mut versions: HashMap<Aggregate, VersionSet> = HashMap::new();
    let mut keys = AggregateKeys::default();
    let mut first: Option<prost_types::Timestamp> = None;
    let mut last: Option<prost_types::Timestamp> = None;
    let entries = archive
        .entries()
        .map_err(|e| anyhow::anyhow!("not a tar archive: {e}"))?;
    for (i, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| tar_error(i, &e))?;
        let kind = entry.header().entry_type();
        if !kind.is_file() {
            anyhow::bail!(
                "entry {i} is not an event: a tar entry of type {kind:?}, where Monoskope writes only regular files"
            );
        }
        let declared = entry.size();
        let mut content = Vec::with_capacity(declared.min(64 << 20) as usize);
        entry
            .read_to_end(&mut content)
            .map_err(|e| tar_error(i, &e))?;
        if (content.len() as u64) < declared {
            anyhow::bail!(
                "the tar archive is truncated in entry {i} ({} of its {declared} bytes)",
                content.len()
            );
        }
        s.entry_bytes += content.len() as u64;
        let json: &[u8] = match key {
            Some(k) => {
                if content.starts_with(br#"{"EType":"#) {
                    anyhow::bail!(
                        "entry {i} is not encrypted, but a key was given: this backup was written without S3_ENCRYPTION_KEY; import it without a key"
                    );
                }
                let skip = k
                    .decrypt(&mut content)
                    .map_err(|e| anyhow::anyhow!("entry {i} {e}"))?;
                &content[skip..]
            }
            None => &content,
        };
        let rec = parse_event(json).map_err(|e| {
            let hint = match (key, e.starts_with("is not valid JSON")) {
                (Some(_), true) => " after decryption: wrong key?",
                (None, true) => ": is the backup encrypted? Give its key (S3_ENCRYPTION_KEY or --monoskope-key-file)",
                _ => "",
            };
            anyhow::anyhow!("entry {i} {e}{hint}")
        })?;
        s.events += 1;
        *s.aggregate_types
            .entry(rec.aggregate_type.clone())
            .or_default() += 1;
        *s.event_types.entry(rec.event_type.clone()).or_default() += 1;
        if let Some(t) = rec.timestamp {
            if first.is_none_or(|f| (t.seconds, t.nanos) < (f.seconds, f.nanos)) {
                first = Some(t);
            }
            if last.is_none_or(|l| (t.seconds, t.nanos) > (l.seconds, l.nanos)) {
                last = Some(t);
            }
        }
        versions
            .entry(keys.key(&rec.aggregate_type, &rec.aggregate_id))
            .or_default()
            .add(rec.aggregate_version);
        each(rec)?;
    }
    s.aggregates = versions.len() as u64;
    s.first_event_time = crate::time::rfc3339(first.as_ref());
    s.last_event_time = crate::time::rfc3339(last.as_ref());
    if !allow_gaps {
        let mut problems: Vec<String> = Vec::new();
        for (a, vs) in &versions {
            if let Some(p) = vs.problem() {
                problems.push(format!("aggregate {a} {p}"));
            }
        }
        problems.sort();
        if let Some(p) = problems.first() {
            anyhow::bail!(
                "{p} ({} aggregates with a gap or a duplicate; --allow-gaps imports them as they are)",
                problems.len()
            );
        }
    }
    Ok(s)
}

/// The versions of one aggregate, in constant memory: count, lowest, highest, and an
/// order-independent fingerprint (wrapping sum of a 64-bit mix of each version), compared at the
/// end with the fingerprint of exactly 1..=n. A gap, a duplicate or both change it (a false
/// match needs a 64-bit collision).
#[derive(Debug, Default)]
struct VersionSet {
    count: u64,
    min: u64,
    max: u64,
    fingerprint: u64,
}

/// splitmix64's finaliser: a bijective 64-bit mix.
fn mix(v: u64) -> u64 {
    let mut z = v.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl VersionSet {
    fn add(&mut self, v: u64) {
        self.min = if self.count == 0 { v } else { self.min.min(v) };
        self.max = self.max.max(v);
        self.count += 1;
        self.fingerprint = self.fingerprint.wrapping_add(mix(v));
    }

    /// What is wrong, if the versions are not exactly 1..=count.
    fn problem(&self) -> Option<String> {
        let n = self.count;
        let range = format!("{} events with versions {}..={}", n, self.min, self.max);
        if self.min == 1 && self.max == n {
            let want = (1..=n).fold(0u64, |a, v| a.wrapping_add(mix(v)));
            if want == self.fingerprint {
                return None;
            }
            return Some(format!(
                "has {range} but not each once: a duplicate and a gap"
            ));
        }
        if n > self.max.saturating_sub(self.min) + 1 {
            return Some(format!("has {range}: a version twice"));
        }
        Some(format!("has {range}, not 1..={n}: a gap"))
    }
}

fn tar_error(i: usize, e: &std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        anyhow::anyhow!("the tar archive is truncated in entry {i}")
    } else {
        anyhow::anyhow!("the tar archive is damaged at entry {i}: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documents_examples_parse() {
        let r = parse_event(br#"{"EType":"UserCreated","EData":"eyJAdHlwZSI6ICJ0eXBlLmdvb2dsZWFwaXMuY29tL2V2ZW50ZGF0YS5Vc2VyQ3JlYXRlZCIsICJlbWFpbCI6ICJqYW5lQGV4YW1wbGUuY29tIiwgIm5hbWUiOiAiSmFuZSBEb2UifQ==","ETimestamp":"2023-05-04T10:11:12.345678Z","AType":"User","AID":"6f1c3c0e-8d1e-4c5a-9b2f-0a1b2c3d4e5f","AVersion":1,"MD":{"component_name":"commandhandler","x-auth-email":"admin@example.com"}}"#).expect("first");
        assert_eq!(r.event_type, "UserCreated");
        assert!(String::from_utf8(r.data.clone())
            .expect("utf8")
            .starts_with(r#"{"@type": "type.googleapis.com/eventdata.UserCreated""#));
        assert_eq!(
            r.timestamp,
            Some(prost_types::Timestamp {
                seconds: 1_683_195_072,
                nanos: 345_678_000
            })
        );
        assert_eq!(r.metadata.len(), 2);
        let r = parse_event(br#"{"EType":"TenantDeleted","EData":null,"ETimestamp":"2023-05-04T12:11:12.345678001+02:00","AType":"Tenant","AID":"00000000-0000-0000-0000-000000000001","AVersion":3,"MD":null}"#).expect("second");
        assert!(r.data.is_empty() && r.metadata.is_empty());
        assert_eq!(
            r.timestamp,
            Some(prost_types::Timestamp {
                seconds: 1_683_195_072,
                nanos: 345_678_001
            }),
            "the offset is applied"
        );
        let third = r#"{"EType":"X\u003c\u0026\u003e","EData":"","ETimestamp":"2023-05-04T00:41:12.34567812-09:30","AType":"T\u2028","AID":"00000000-0000-0000-0000-000000000000","AVersion":18446744073709551615,"MD":{"":"","A":"é🚀","b":"\u0001\n"}}"#;
        let r = parse_event(third.as_bytes());
        assert!(r.expect_err("u64 max").contains("2^63-1"));
        let r = parse_event(third.replace("18446744073709551615", "7").as_bytes()).expect("third");
        assert_eq!(r.event_type, "X<&>");
        assert_eq!(r.aggregate_type, "T\u{2028}");
        assert_eq!(r.metadata.get("A").map(String::as_str), Some("é🚀"));
        assert_eq!(r.metadata.get("b").map(String::as_str), Some("\u{1}\n"));
        assert_eq!(r.metadata.get("").map(String::as_str), Some(""));
        assert!(r.data.is_empty());
        assert_eq!(
            r.timestamp,
            Some(prost_types::Timestamp {
                seconds: 1_683_195_072,
                nanos: 345_678_120
            })
        );
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        assert!(parse_event(b"\x93\x11garbage")
            .expect_err("binary")
            .starts_with("is not valid JSON"));
        assert!(parse_event(br#"{"hello":1}"#)
            .expect_err("other json")
            .starts_with("is not an event"));
        assert!(parse_event(br#"{"EType":"A","AVersion":1.5}"#)
            .expect_err("float")
            .contains("AVersion"));
        assert!(
            parse_event(br#"{"EType":"A","ETimestamp":"2023-05-04 10:11:12Z"}"#)
                .expect_err("space")
                .contains("RFC 3339")
        );
        assert_eq!(
            MonoskopeKey::new(b"0123456789abcdef0123456789abcdef\n".to_vec())
                .expect_err("newline")
                .to_string(),
            "S3_ENCRYPTION_KEY must be 16, 24 or 32 bytes, got 33 (it ends with a newline)"
        );
        let set = |vs: &[u64]| {
            let mut s = VersionSet::default();
            for v in vs {
                s.add(*v);
            }
            s.problem()
        };
        assert_eq!(set(&[3, 1, 2]), None);
        assert!(set(&[1, 2, 2]).expect("dup").contains("twice"));
        assert!(set(&[1, 3]).expect("gap").contains("a gap"));
        assert!(set(&[2, 3]).expect("no 1").contains("a gap"));
        assert!(set(&[1, 2, 2, 5, 6, 6, 7, 7, 9])
            .expect("equal sums and squares")
            .contains("not each once"));
        assert!(set(&[1, 1, 3])
            .expect("dup and gap")
            .contains("not each once"));
        assert!(
            parse_event(br#"{"EType":"A","ETimestamp":"0000-12-31T23:59:59Z"}"#)
                .expect_err("year 0")
                .contains("out of range")
        );
        let r = parse_event(br#"{"etype":"A","AID":"6F1C3C0E8D1E4C5A9B2F0A1B2C3D4E5F","AVersion":2,"ETimestamp":"0001-01-01T00:00:00Z"}"#).expect("lenient");
        assert_eq!(r.event_type, "A");
        assert_eq!(r.aggregate_id, "6f1c3c0e-8d1e-4c5a-9b2f-0a1b2c3d4e5f");
        assert_eq!(r.timestamp, None, "Go's zero time is a NULL timestamp");
    }
}
