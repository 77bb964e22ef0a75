//! Recipients, key files and rewraps (format 1.1): round trips, and every way a wrap can be
//! wrong — a wrong or missing identity, a tampered or swapped envelope, a recipient stanza copied
//! from another archive, truncated key files.

use std::io::Cursor;

use monoskope_backup_api::archive::v1::KeyFile;
use proptest::prelude::*;
use prost::Message;

use super::envelope::{self, KDF_KEY_FILE};
use super::*;

fn records(n: u64) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            aggregate_type: "User".into(),
            aggregate_id: format!("00000000-0000-4000-8000-{i:012}"),
            aggregate_version: i + 1,
            event_type: "UserCreated".into(),
            data: format!("{{\"n\":{i}}}").into_bytes(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + i as i64,
                nanos: 0,
            }),
            ..Default::default()
        })
        .collect()
}

/// Writes `recs` under `protection`; returns the archive and its key file (with `key_file`).
fn write(
    recs: &[Record],
    protection: Protection,
    key_file: bool,
    id: &str,
) -> (Vec<u8>, Option<KeyFile>) {
    let mut opts = WriterOptions::new(id, protection);
    opts.chunk_size = 4096;
    opts.key_file = key_file;
    let mut w = ArchiveWriter::new(Vec::new(), opts).expect("writer");
    let kf = w.key_file().cloned();
    for r in recs {
        w.append(r).expect("append");
    }
    (w.finish().expect("finish").0, kf)
}

fn read(bytes: &[u8], keys: &Keys, kf: Option<&KeyFile>) -> Result<Vec<Record>, ArchiveError> {
    let mut r = ArchiveReader::open_with_key_file(Cursor::new(bytes), keys, kf)?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(rec);
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Any events, to one to three recipients, in the archive or in its key file: every
    /// identity reads them back exactly; nobody else does.
    #[test]
    fn recipients_round_trip(n in 0u64..60, recipients in 1usize..4, in_key_file in any::<bool>()) {
        let ids: Vec<Identity> = (0..recipients).map(|_| Identity::generate()).collect();
        let rs = ids.iter().map(Identity::recipient).collect();
        let recs = records(n);
        let (bytes, kf) = write(&recs, Protection::Recipients(rs), in_key_file, "20261206T000000000Z-00000001");
        prop_assert_eq!(kf.is_some(), in_key_file);
        for id in &ids {
            let got = read(&bytes, &Keys::identities(vec![id.clone()]), kf.as_ref()).expect("read");
            prop_assert_eq!(&got, &recs);
        }
        let stranger = Keys::identities(vec![Identity::generate()]);
        let refused = matches!(read(&bytes, &stranger, kf.as_ref()), Err(ArchiveError::WrongKey { .. }));
        prop_assert!(refused);
    }
}

#[test]
fn a_missing_identity_key_file_or_key_is_named() {
    let op = Identity::generate();
    let recs = records(5);
    let (bytes, kf) = write(
        &recs,
        Protection::Recipients(vec![op.recipient()]),
        true,
        "20261206T000000000Z-00000002",
    );
    match read(&bytes, &Keys::none(), kf.as_ref()) {
        Err(e @ ArchiveError::KeyRequired { .. }) => {
            assert!(e.to_string().contains(op.id()), "{e}");
            assert!(e.to_string().contains("--identity-file"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // A master key is no identity.
    let ring = Keys::keyring(Keyring::new(vec![MasterKey::generate()]).expect("ring"));
    assert!(matches!(
        read(&bytes, &ring, kf.as_ref()),
        Err(ArchiveError::KeyRequired { .. })
    ));
    // Without its key file, no key opens a key-file archive, and it says so.
    match read(&bytes, &Keys::identities(vec![op.clone()]), None) {
        Err(e @ ArchiveError::KeyFileMissing { .. }) => {
            assert!(e.to_string().contains(".keys"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let (head, _) = read_head(&mut Cursor::new(&bytes)).expect("head");
    assert_eq!(head.envelope.kdf, KDF_KEY_FILE);
    assert_eq!(head.version, (1, 1));
}

#[test]
fn tampered_swapped_and_copied_envelopes_are_refused() {
    let op = Identity::generate();
    let rs = || Protection::Recipients(vec![op.recipient()]);
    let keys = Keys::identities(vec![op.clone()]);
    let recs = records(8);
    let (a, kf_a) = write(&recs, rs(), true, "20261206T000000000Z-0000000a");
    let (b, kf_b) = write(&recs, rs(), true, "20261206T000000000Z-0000000b");
    let (kf_a, kf_b) = (kf_a.expect("a"), kf_b.expect("b"));

    // The key file of another archive (same recipients): refused, naming the binding.
    let e = read(&a, &keys, Some(&kf_b)).expect_err("swapped key file");
    assert!(e.to_string().contains("belongs to another archive"), "{e}");

    // A recipient stanza (the whole age file) copied from another archive into this one's wrap.
    let mut copied = kf_a.clone();
    copied.envelopes[0].age_file = kf_b.envelopes[0].age_file.clone();
    let e = read(&a, &keys, Some(&copied)).expect_err("copied stanza");
    assert!(e.to_string().contains("belongs to another archive"), "{e}");

    // Any byte of the age file flipped: refused, never a wrong key silently used.
    let age_len = kf_a.envelopes[0].age_file.len();
    for i in (0..age_len).step_by(7) {
        let mut t = kf_a.clone();
        t.envelopes[0].age_file[i] ^= 0x20;
        assert!(
            read(&a, &keys, Some(&t)).is_err(),
            "flip at byte {i} of the age file"
        );
    }
    // Master-key wraps: another archive's key file does not unwrap.
    let k = MasterKey::generate();
    let ring = Keys::keyring(Keyring::new(vec![k.clone()]).expect("ring"));
    let (c, kf_c) = write(
        &recs,
        Protection::Key(k.clone()),
        true,
        "20261206T000000000Z-0000000c",
    );
    let (_, kf_d) = write(
        &recs,
        Protection::Key(k),
        true,
        "20261206T000000000Z-0000000d",
    );
    assert_eq!(read(&c, &ring, kf_c.as_ref()).expect("own key file"), recs);
    let e = read(&c, &ring, kf_d.as_ref()).expect_err("swapped master-key wrap");
    assert!(e.to_string().contains("does not unwrap"), "{e}");
    assert_eq!(read(&b, &keys, Some(&kf_b)).expect("b itself"), recs);
}

#[test]
fn truncated_key_files_never_open_and_never_panic() {
    let op = Identity::generate();
    let (a, kf) = write(
        &records(3),
        Protection::Recipients(vec![op.recipient()]),
        true,
        "20261206T000000000Z-0000000e",
    );
    let bytes = kf.expect("key file").encode_to_vec();
    let keys = Keys::identities(vec![op]);
    for cut in 0..bytes.len() {
        if let Ok(f) = envelope::parse_key_file(&bytes[..cut]) {
            assert!(
                read(&a, &keys, Some(&f)).is_err(),
                "a key file cut at {cut} opened the archive"
            );
        }
    }
    let whole = envelope::parse_key_file(&bytes).expect("whole");
    assert!(read(&a, &keys, Some(&whole)).is_ok());
}

#[test]
fn rewrap_adds_then_removes_wraps_without_touching_the_archive() {
    let recs = records(20);
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    let ring = |k: &MasterKey| Keys::keyring(Keyring::new(vec![k.clone()]).expect("ring"));
    let (bytes, kf) = write(
        &recs,
        Protection::Key(old.clone()),
        true,
        "20261206T000000000Z-0000000f",
    );
    let (head, _) = read_head(&mut Cursor::new(&bytes)).expect("head");

    let kept = envelope::rewrap(
        &head,
        kf.as_ref(),
        &ring(&old),
        &Protection::Key(new.clone()),
        false,
    )
    .expect("rewrap");
    assert!(kept.changed);
    assert_eq!(kept.still_open_with, vec![old.id().to_string()]);
    assert_eq!(
        read(&bytes, &ring(&old), Some(&kept.key_file)).expect("old"),
        recs
    );
    assert_eq!(
        read(&bytes, &ring(&new), Some(&kept.key_file)).expect("new"),
        recs
    );
    // Again: nothing to do.
    let again = envelope::rewrap(
        &head,
        Some(&kept.key_file),
        &ring(&new),
        &Protection::Key(new.clone()),
        false,
    )
    .expect("again");
    assert!(!again.changed);

    let removed = envelope::rewrap(
        &head,
        Some(&kept.key_file),
        &ring(&new),
        &Protection::Key(new.clone()),
        true,
    )
    .expect("remove");
    assert!(removed.still_open_with.is_empty());
    assert_eq!(removed.key_file.envelopes.len(), 1);
    assert!(matches!(
        read(&bytes, &ring(&old), Some(&removed.key_file)),
        Err(ArchiveError::WrongKey { .. })
    ));
    assert_eq!(
        read(&bytes, &ring(&new), Some(&removed.key_file)).expect("new only"),
        recs
    );

    // To recipients, read with the master key.
    let op = Identity::generate();
    let to_rs = envelope::rewrap(
        &head,
        Some(&removed.key_file),
        &ring(&new),
        &Protection::Recipients(vec![op.recipient()]),
        true,
    )
    .expect("to recipients");
    assert_eq!(
        read(&bytes, &Keys::identities(vec![op]), Some(&to_rs.key_file)).expect("identity"),
        recs
    );
    assert!(read(&bytes, &ring(&new), Some(&to_rs.key_file)).is_err());

    // A format 1.0 archive holds its wrap itself: a rewrap adds one, and says the old stays.
    let (v10, none) = write(
        &recs,
        Protection::Key(old.clone()),
        false,
        "20261206T000000000Z-00000010",
    );
    assert!(none.is_none());
    let (h10, _) = read_head(&mut Cursor::new(&v10)).expect("head");
    assert_eq!(
        h10.version,
        (1, 0),
        "an inline master-key archive is still format 1.0"
    );
    let r = envelope::rewrap(&h10, None, &ring(&old), &Protection::Key(new.clone()), true)
        .expect("rewrap 1.0");
    assert_eq!(r.still_open_with, vec![old.id().to_string()]);
    assert_eq!(
        read(&v10, &ring(&new), Some(&r.key_file)).expect("new"),
        recs
    );
    assert_eq!(
        read(&v10, &ring(&old), Some(&r.key_file)).expect("old, inside"),
        recs
    );
}
