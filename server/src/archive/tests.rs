//! Tests of the archive format: round trips, exhaustive damage, keys, and real ciphertext.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn record(i: u64, data: Vec<u8>, metadata: BTreeMap<String, String>) -> Record {
    Record {
        aggregate_type: "User".into(),
        aggregate_id: format!("00000000-0000-4000-8000-{i:012x}"),
        aggregate_version: i + 1,
        event_type: "UserCreated".into(),
        data,
        metadata,
        timestamp: Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + i as i64,
            nanos: (i % 1000) as i32 * 1000,
        }),
        event_id: if i % 2 == 0 {
            format!("11111111-0000-4000-8000-{i:012x}")
        } else {
            String::new()
        },
    }
}

fn write(records: &[Record], protection: Protection, chunk_size: u32) -> Vec<u8> {
    let mut opts = WriterOptions::new("20261124T000000Z-test", protection);
    opts.chunk_size = chunk_size;
    let mut w = ArchiveWriter::new(Vec::new(), opts).expect("writer");
    for r in records {
        w.append(r).expect("append");
    }
    let (bytes, footer) = w.finish().expect("finish");
    assert_eq!(footer.event_count, records.len() as u64);
    bytes
}

/// Reads all records; on error returns the records read before it, and the error.
fn read(bytes: &[u8], keys: &Keys) -> (Vec<Record>, Result<Footer, ArchiveError>) {
    let mut out = Vec::new();
    let mut reader = match ArchiveReader::open(bytes, keys) {
        Ok(r) => r,
        Err(e) => return (out, Err(e)),
    };
    loop {
        match reader.next_record() {
            Ok(Some(r)) => out.push(r),
            Ok(None) => return (out, Ok(reader.footer().cloned().expect("footer after end"))),
            Err(e) => return (out, Err(e)),
        }
    }
}

fn key() -> MasterKey {
    MasterKey::from_bytes([7; 32])
}

fn arb_record() -> impl Strategy<Value = Record> {
    (
        "[A-Za-z][A-Za-z0-9_-]{1,20}",
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..2048),
        prop::collection::btree_map(".{0,8}", ".{0,16}", 0..4),
        any::<i64>().prop_map(|s| s / 4),
        0..1_000_000_000i32,
        prop::option::of("[0-9a-f-]{36}"),
    )
        .prop_map(|(t, v, data, metadata, seconds, nanos, id)| Record {
            aggregate_type: t.clone(),
            aggregate_id: "6f9619ff-8b86-d011-b42d-00c04fc964ff".into(),
            aggregate_version: v,
            event_type: format!("{t}Changed"),
            data,
            metadata,
            timestamp: Some(prost_types::Timestamp { seconds, nanos }),
            event_id: id.unwrap_or_default(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_events_round_trip_encrypted_and_not(records in prop::collection::vec(arb_record(), 0..40), small in any::<bool>()) {
        let chunk = if small { 4096 } else { DEFAULT_CHUNK_SIZE };
        for protection in [Protection::Key(key()), Protection::Unencrypted] {
            let bytes = write(&records, protection, chunk);
            let (back, res) = read(&bytes, &Keys::keyring(Keyring::new(vec![key()]).expect("ring")));
            let footer = res.expect("reads back");
            prop_assert_eq!(&back, &records);
            prop_assert_eq!(footer.event_count, records.len() as u64);
        }
    }
}

#[test]
fn empty_archive_round_trips() {
    let bytes = write(&[], Protection::Key(key()), DEFAULT_CHUNK_SIZE);
    let (back, res) = read(
        &bytes,
        &Keys::keyring(Keyring::new(vec![key()]).expect("ring")),
    );
    let footer = res.expect("empty archive reads");
    assert!(back.is_empty());
    assert_eq!(footer.event_count, 0);
    assert_eq!(footer.first_timestamp, None);
}

#[test]
fn sixteen_mib_non_utf8_event_round_trips() {
    let data: Vec<u8> = (0..16 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
        .collect();
    let records = vec![
        record(0, data, BTreeMap::new()),
        record(1, vec![], BTreeMap::new()),
    ];
    for protection in [Protection::Key(key()), Protection::Unencrypted] {
        let bytes = write(&records, protection, DEFAULT_CHUNK_SIZE);
        let (back, res) = read(
            &bytes,
            &Keys::keyring(Keyring::new(vec![key()]).expect("ring")),
        );
        res.expect("reads back");
        assert!(back == records, "16 MiB record changed in the round trip");
    }
}

fn small_multichunk(protection: Protection) -> (Vec<Record>, Vec<u8>) {
    // Pseudo-random payloads so zstd cannot squeeze three 4 KiB chunks into one frame.
    let mut x: u32 = 12345;
    let records: Vec<Record> = (0..24)
        .map(|i| {
            let data = (0..400)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    b'a' + ((x >> 16) % 26) as u8
                })
                .collect();
            record(
                i,
                data,
                BTreeMap::from([("x-auth-id".to_string(), format!("u{i}"))]),
            )
        })
        .collect();
    let bytes = write(&records, protection, 4096);
    (records, bytes)
}

/// Frame boundaries (offset of each frame's flag byte) of an archive.
fn frames(bytes: &[u8]) -> (usize, Vec<(usize, usize)>) {
    let hlen = u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    let eoff = 16 + hlen;
    let elen = u32::from_be_bytes(bytes[eoff..eoff + 4].try_into().expect("4 bytes")) as usize;
    let mut off = eoff + 4 + elen;
    let start = off;
    let mut out = Vec::new();
    while off < bytes.len() {
        let len = u32::from_be_bytes(bytes[off + 1..off + 5].try_into().expect("4 bytes")) as usize;
        out.push((off, 5 + len));
        off += 5 + len;
    }
    (start, out)
}

fn assert_damaged(original: &[Record], damaged: &[u8], keys: &Keys, what: &str) {
    let (got, res) = read(damaged, keys);
    assert!(res.is_err(), "{what}: damaged archive read without error");
    assert!(
        got.len() <= original.len() && got[..] == original[..got.len()],
        "{what}: yielded a record outside the authenticated prefix"
    );
}

fn exhaustive_damage(protection: Protection) {
    let keys = Keys::keyring(Keyring::new(vec![key()]).expect("ring"));
    let (records, bytes) = small_multichunk(protection);
    let (start, fr) = frames(&bytes);
    assert!(
        fr.len() >= 4,
        "want a multi-chunk archive, got {} frames",
        fr.len()
    );
    assert_eq!(read(&bytes, &keys).0, records);
    for bit in 0..bytes.len() * 8 {
        let mut d = bytes.clone();
        d[bit / 8] ^= 1 << (bit % 8);
        assert_damaged(&records, &d, &keys, &format!("bit flip {bit}"));
    }
    for len in 0..bytes.len() {
        assert_damaged(
            &records,
            &bytes[..len],
            &keys,
            &format!("truncation to {len}"),
        );
    }
    let pieces: Vec<&[u8]> = fr.iter().map(|(o, l)| &bytes[*o..o + l]).collect();
    let rebuild = |order: &[usize]| -> Vec<u8> {
        let mut v = bytes[..start].to_vec();
        for i in order {
            v.extend_from_slice(pieces[*i]);
        }
        v
    };
    let n = pieces.len();
    for i in 0..n {
        let dropped: Vec<usize> = (0..n).filter(|j| *j != i).collect();
        assert_damaged(
            &records,
            &rebuild(&dropped),
            &keys,
            &format!("chunk {i} dropped"),
        );
        let mut dup: Vec<usize> = (0..n).collect();
        dup.insert(i, i);
        assert_damaged(
            &records,
            &rebuild(&dup),
            &keys,
            &format!("chunk {i} duplicated"),
        );
        for j in i + 1..n {
            let mut sw: Vec<usize> = (0..n).collect();
            sw.swap(i, j);
            assert_damaged(
                &records,
                &rebuild(&sw),
                &keys,
                &format!("chunks {i} and {j} swapped"),
            );
        }
    }
    for extra in [&b"\0"[..], b"garbage", &bytes[start..]] {
        let mut d = bytes.clone();
        d.extend_from_slice(extra);
        let (_, res) = read(&d, &keys);
        assert!(
            matches!(res, Err(ArchiveError::TrailingData { .. })),
            "appended bytes: {res:?}"
        );
    }
}

#[test]
fn every_damage_to_an_encrypted_archive_is_detected() {
    exhaustive_damage(Protection::Key(key()));
}

#[test]
fn every_damage_to_an_unencrypted_archive_is_detected() {
    exhaustive_damage(Protection::Unencrypted);
}

#[test]
fn truncation_and_corruption_messages_name_the_chunk() {
    let keys = Keys::keyring(Keyring::new(vec![key()]).expect("ring"));
    let (_, bytes) = small_multichunk(Protection::Key(key()));
    let (_, fr) = frames(&bytes);
    let (_, res) = read(&bytes[..fr[2].0], &keys);
    assert_eq!(
        res.expect_err("truncated").to_string(),
        "archive is truncated after chunk 1"
    );
    let mut d = bytes.clone();
    d[fr[1].0 + 20] ^= 0x10;
    let (_, res) = read(&d, &keys);
    assert_eq!(
        res.expect_err("corrupt").to_string(),
        "chunk 1 failed authentication (corrupted or tampered)"
    );
    let (_, res) = read(b"PK\x03\x04 this is a zip file", &keys);
    assert_eq!(
        res.expect_err("not ours").to_string(),
        "not a backup archive (bad magic bytes)"
    );
    let mut newer = bytes.clone();
    newer[8..10].copy_from_slice(&2u16.to_be_bytes());
    let (_, res) = read(&newer, &keys);
    assert!(
        matches!(res, Err(ArchiveError::UnsupportedVersion { major: 2, .. })),
        "{res:?}"
    );
}

#[test]
fn wrong_key_wrong_passphrase_and_missing_key_are_distinct() {
    let records = vec![record(1, b"{}".to_vec(), BTreeMap::new())];
    let bytes = write(&records, Protection::Key(key()), DEFAULT_CHUNK_SIZE);
    let other = MasterKey::from_bytes([8; 32]);
    let (_, res) = read(
        &bytes,
        &Keys::keyring(Keyring::new(vec![other.clone()]).expect("ring")),
    );
    let err = res.expect_err("wrong key");
    assert!(matches!(err, ArchiveError::WrongKey { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "wrong key (archive key id {}, keyring has {})",
            key().id(),
            other.id()
        )
    );
    let (_, res) = read(&bytes, &Keys::none());
    assert!(
        matches!(res, Err(ArchiveError::KeyRequired { .. })),
        "{res:?}"
    );
    // A keyring with the old key behind a new primary opens it (rotation).
    let (back, res) = read(
        &bytes,
        &Keys::keyring(Keyring::new(vec![other, key()]).expect("ring")),
    );
    res.expect("rotated keyring opens old archive");
    assert_eq!(back, records);

    let fast = Argon2Params {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let pass = Passphrase::new("correct horse").expect("passphrase");
    let bytes = write(
        &records,
        Protection::Passphrase(pass.clone(), fast),
        DEFAULT_CHUNK_SIZE,
    );
    let wrong = Keys {
        passphrase: Some(Passphrase::new("battery staple").expect("passphrase")),
        ..Keys::none()
    };
    assert!(matches!(
        read(&bytes, &wrong).1,
        Err(ArchiveError::WrongPassphrase)
    ));
    assert!(matches!(
        read(&bytes, &Keys::none()).1,
        Err(ArchiveError::KeyRequired { .. })
    ));
    let right = Keys {
        passphrase: Some(pass),
        ..Keys::none()
    };
    assert_eq!(read(&bytes, &right).0, records);
}

#[test]
fn stored_bytes_are_ciphertext() {
    let marker = "MARKER-4f1d2c-plaintext-must-not-leak";
    let records: Vec<Record> = (0..200)
        .map(|i| {
            record(
                i,
                format!("{{\"note\":\"{marker} {i}\"}}").into_bytes(),
                BTreeMap::from([("k".to_string(), marker.to_string())]),
            )
        })
        .collect();
    // Compression off the table: level 1 and incompressible-looking content do not matter,
    // because we check the uncompressed record stream's 16-byte runs too.
    let bytes = write(&records, Protection::Key(key()), 4096);
    let hay = bytes.as_slice();
    assert!(
        !hay.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "marker found in the archive"
    );
    let mut plain = Vec::new();
    for r in &records {
        prost::Message::encode_length_delimited(r, &mut plain).expect("encode");
    }
    let runs: std::collections::HashSet<&[u8]> = plain.windows(16).collect();
    assert!(
        !hay.windows(16).any(|w| runs.contains(w)),
        "a 16-byte run of the plaintext appears in the archive"
    );
}

#[test]
fn footer_carries_count_range_and_digest() {
    let records: Vec<Record> = [5u64, 1, 9]
        .iter()
        .map(|i| record(*i, b"1".to_vec(), BTreeMap::new()))
        .collect();
    let bytes = write(&records, Protection::Unencrypted, DEFAULT_CHUNK_SIZE);
    let footer = read(&bytes, &Keys::none()).1.expect("reads");
    assert_eq!(footer.event_count, 3);
    assert_eq!(footer.first_timestamp, records[1].timestamp);
    assert_eq!(footer.last_timestamp, records[2].timestamp);
    assert_eq!(footer.events_sha256.len(), 32);
}

#[test]
fn archive_module_does_not_import_runtime_sql_or_network_crates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/archive");
    for entry in std::fs::read_dir(&dir).expect("archive dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("source");
        for banned in ["tokio", "sqlx", "aws_sdk", "tonic"] {
            let used = text.lines().any(|l| {
                let l = l.trim_start();
                (l.starts_with("use ") || l.contains("::"))
                    && l.contains(&format!("{banned}::"))
                    && !l.starts_with("//")
            });
            assert!(!used, "{} uses {banned}", path.display());
        }
    }
}

/// Today's writer reproduces the frozen unencrypted vector byte for byte (an unencrypted archive
/// has no random parts) when it compresses as it did then (plain zstd level 3): the bytes have
/// not drifted since the format was frozen, whatever the writer's threading.
#[test]
fn writer_reproduces_the_frozen_unencrypted_vector() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/v1");
    let frozen = std::fs::read(dir.join("unencrypted.mbk")).expect("vector");
    let (records, footer) = read(&frozen, &Keys::none());
    footer.expect("the vector reads");
    let header = ArchiveReader::open(&frozen[..], &Keys::none())
        .expect("open")
        .header()
        .clone();
    let mut opts = WriterOptions::new(header.backup_id.clone(), Protection::Unencrypted);
    opts.created_at = header.created_at.expect("creation time");
    opts.chunk_size = header.chunk_size;
    opts.kind = header.kind.clone();
    opts.parent_id = (!header.parent_id.is_empty()).then(|| header.parent_id.clone());
    opts.tuned_match_finder = false;
    let mut w = ArchiveWriter::new(Vec::new(), opts).expect("writer");
    for r in &records {
        w.append(r).expect("append");
    }
    let (bytes, _) = w.finish().expect("finish");
    assert_eq!(records.len(), 3);
    assert!(
        bytes == frozen,
        "the writer no longer writes the frozen bytes"
    );
}

/// Writes the frozen test vectors of tests/vectors/v1 (run once, by hand, when a format version
/// is introduced; never to regenerate existing vectors):
/// `MBK_WRITE_VECTORS=DIR cargo test -p monoskope-backup write_test_vectors -- --ignored`
#[test]
#[ignore = "writes the frozen test vectors; run by hand only"]
fn write_test_vectors() {
    let Some(dir) = std::env::var_os("MBK_WRITE_VECTORS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let key = MasterKey::generate();
    let records = vector_records();
    std::fs::write(dir.join("encrypted.key"), format!("{}\n", key.to_base64())).expect("key");
    let enc = write(&records, Protection::Key(key), 4096);
    std::fs::write(dir.join("encrypted.mbk"), &enc).expect("write");
    std::fs::write(
        dir.join("unencrypted.mbk"),
        write(&records, Protection::Unencrypted, 4096),
    )
    .expect("write");
    let mut flipped = enc.clone();
    let (_, fr) = frames(&enc);
    flipped[fr[0].0 + 9] ^= 0x04;
    std::fs::write(dir.join("damaged-bitflip.mbk"), flipped).expect("write");
    std::fs::write(
        dir.join("damaged-truncated.mbk"),
        &enc[..fr[fr.len() - 1].0],
    )
    .expect("write");
    let mut lines = String::new();
    for r in &records {
        lines.push_str(&serde_json::to_string(&crate::cli::record_json(r)).expect("json"));
        lines.push('\n');
    }
    std::fs::write(dir.join("expected.jsonl"), lines).expect("write");
}

/// The three events of every frozen vector.
fn vector_records() -> Vec<Record> {
    vec![
    Record {
        aggregate_type: "User".into(),
        aggregate_id: "0b8b3b4e-6f4a-4c8e-9d2b-1f2a3b4c5d6e".into(),
        aggregate_version: 1,
        event_type: "UserCreated".into(),
        data: br#"{"@type": "type.googleapis.com/eventdata.UserCreated", "name": "Jane Doe", "email": "jane@example.com"}"#.to_vec(),
        metadata: BTreeMap::from([
            ("component_name".into(), "commandhandler".into()),
            ("x-auth-email".into(), "admin@example.com".into()),
            ("x-auth-id".into(), "7c1d7a1e-9a8b-4b5c-8d3e-2f1a0b9c8d7e".into()),
        ]),
        timestamp: Some(prost_types::Timestamp { seconds: 1_710_955_518, nanos: 123_456_000 }),
        event_id: "5e0c4a9d-2b1f-4e3a-8c7d-6b5a4f3e2d1c".into(),
    },
    Record {
        aggregate_type: "User".into(),
        aggregate_id: "0b8b3b4e-6f4a-4c8e-9d2b-1f2a3b4c5d6e".into(),
        aggregate_version: 2,
        event_type: "UserDeleted".into(),
        data: Vec::new(),
        metadata: BTreeMap::new(),
        timestamp: Some(prost_types::Timestamp { seconds: 1_710_955_600, nanos: 0 }),
        event_id: String::new(),
    },
    Record {
        aggregate_type: "Tenant".into(),
        aggregate_id: "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a".into(),
        aggregate_version: 1,
        event_type: "TenantCreated".into(),
        data: vec![0xff, 0x00, 0xfe, b'{'],
        metadata: BTreeMap::from([("x-auth-name".into(), "Zoë \"ops\" <admin>".into())]),
        timestamp: Some(prost_types::Timestamp { seconds: -86_400, nanos: 999_999_999 }),
        event_id: String::new(),
    },
]
}

/// Writes the frozen format 1.1 vectors of tests/vectors/v1.1 (run once, by hand):
/// `MBK_WRITE_VECTORS=DIR cargo test -p monoskope-backup write_test_vectors_1_1 -- --ignored`
#[test]
#[ignore = "writes the frozen test vectors; run by hand only"]
fn write_test_vectors_1_1() {
    let Some(dir) = std::env::var_os("MBK_WRITE_VECTORS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let records = vector_records();
    let write_kf = |protection: Protection, name: &str| {
        let mut opts = WriterOptions::new("20261206T120000000Z-00000011", protection);
        opts.chunk_size = 4096;
        opts.key_file = true;
        let mut w = ArchiveWriter::new(Vec::new(), opts).expect("writer");
        let kf = w.key_file().cloned().expect("key file");
        for r in &records {
            w.append(r).expect("append");
        }
        let bytes = w.finish().expect("finish").0;
        std::fs::write(dir.join(format!("{name}.mbk")), bytes).expect("write");
        std::fs::write(
            dir.join(format!("{name}.mbk.keys")),
            super::envelope::encode_key_file(&kf),
        )
        .expect("write");
    };
    let key = MasterKey::generate();
    std::fs::write(dir.join("keyfile.key"), format!("{}\n", key.to_base64())).expect("key");
    write_kf(Protection::Key(key), "keyfile");
    let a = Identity::generate();
    let b = Identity::generate();
    std::fs::write(
        dir.join("recipient-a.id"),
        a.to_file_text("2026-12-06T12:00:00Z"),
    )
    .expect("id");
    std::fs::write(
        dir.join("recipient-b.id"),
        b.to_file_text("2026-12-06T12:00:00Z"),
    )
    .expect("id");
    write_kf(
        Protection::Recipients(vec![a.recipient(), b.recipient()]),
        "recipients",
    );
    let mut lines = String::new();
    for r in &records {
        lines.push_str(&serde_json::to_string(&crate::cli::record_json(r)).expect("json"));
        lines.push('\n');
    }
    std::fs::write(dir.join("expected.jsonl"), lines).expect("write");
}

/// Writes the frozen format 1.2 vectors of tests/vectors/v1.2 (run once, by hand): a continuous
/// segment continuing the master-key archive of tests/vectors/v1.1, under its key:
/// `MBK_WRITE_VECTORS=DIR cargo test -p monoskope-backup write_test_vectors_1_2 -- --ignored`
#[test]
#[ignore = "writes the frozen test vectors; run by hand only"]
fn write_test_vectors_1_2() {
    use sha2::Digest;
    let Some(dir) = std::env::var_os("MBK_WRITE_VECTORS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let v1_1 = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/v1.1");
    std::fs::create_dir_all(&dir).expect("dir");
    let parent = std::fs::read(v1_1.join("keyfile.mbk")).expect("the 1.1 vector");
    let key = MasterKey::from_base64(
        std::fs::read_to_string(v1_1.join("keyfile.key"))
            .expect("key")
            .trim(),
    )
    .expect("key");
    let records = segment_vector_records();
    let mut opts = WriterOptions::new("20261206T120005000Z-00000012", Protection::Key(key));
    opts.chunk_size = 4096;
    opts.key_file = true;
    opts.kind = "segment".into();
    opts.parent_id = Some("20261206T120000000Z-00000011".into());
    opts.parent_sha256 = Some(sha2::Sha256::digest(&parent).into());
    let mut w = ArchiveWriter::new(Vec::new(), opts).expect("writer");
    let kf = w.key_file().cloned().expect("key file");
    for r in &records {
        w.append(r).expect("append");
    }
    let bytes = w.finish().expect("finish").0;
    std::fs::write(dir.join("segment.mbk"), bytes).expect("write");
    std::fs::write(
        dir.join("segment.mbk.keys"),
        super::envelope::encode_key_file(&kf),
    )
    .expect("write");
    let mut lines = String::new();
    for r in &records {
        lines.push_str(&serde_json::to_string(&crate::cli::record_json(r)).expect("json"));
        lines.push('\n');
    }
    std::fs::write(dir.join("expected.jsonl"), lines).expect("write");
}

/// The two events of the frozen segment: the next versions of two aggregates of
/// [`vector_records`].
fn segment_vector_records() -> Vec<Record> {
    let base = vector_records();
    vec![
        Record {
            aggregate_version: 3,
            event_type: "UserUpdated".into(),
            data: br#"{"name": "Jane Roe"}"#.to_vec(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_710_955_700,
                nanos: 5,
            }),
            event_id: "8a7b6c5d-4e3f-4a1b-9c8d-7e6f5a4b3c2d".into(),
            ..base[0].clone()
        },
        Record {
            aggregate_version: 2,
            event_type: "TenantDeleted".into(),
            data: Vec::new(),
            metadata: BTreeMap::new(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_710_955_701,
                nanos: 0,
            }),
            ..base[2].clone()
        },
    ]
}

/// The frozen 1.2 segment: a 1.2 header, kind `segment`, linked to the bytes of the 1.1 archive
/// it continues; its records read with that archive's key.
#[test]
fn the_frozen_segment_links_to_its_parents_bytes() {
    use sha2::Digest;
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors");
    let seg = std::fs::read(vectors.join("v1.2/segment.mbk")).expect("1.2 vector");
    let parent = std::fs::read(vectors.join("v1.1/keyfile.mbk")).expect("1.1 vector");
    let (head, header) = super::read_head(&mut seg.as_slice()).expect("head");
    assert_eq!(head.version, (1, 2));
    assert_eq!(header.kind, "segment");
    assert_eq!(header.parent_id, "20261206T120000000Z-00000011");
    assert_eq!(header.parent_sha256, sha2::Sha256::digest(&parent).to_vec());
    let key = MasterKey::from_base64(
        std::fs::read_to_string(vectors.join("v1.1/keyfile.key"))
            .expect("key")
            .trim(),
    )
    .expect("key");
    let kf = super::envelope::parse_key_file(
        &std::fs::read(vectors.join("v1.2/segment.mbk.keys")).expect("key file"),
    )
    .expect("key file parses");
    let mut r = ArchiveReader::open_with_key_file(
        seg.as_slice(),
        &Keys::keyring(Keyring::new(vec![key]).expect("ring")),
        Some(&kf),
    )
    .expect("opens");
    let mut got = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        got.push(rec);
    }
    assert_eq!(got, segment_vector_records());
}
