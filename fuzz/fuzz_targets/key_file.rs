//! Fuzzes the parsing of an archive's key file (format 1.1) and the unwrapping of every wrap in
//! it — master-key, passphrase-free and age X25519 recipient wraps — against a fixed archive
//! head: arbitrary bytes must give an error or a data key, never a panic, and only the bytes of
//! a real wrap for this archive may open it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use monoskope_backup::archive::envelope::{self, Head};
use monoskope_backup::archive::{
    read_head, ArchiveReader, ArchiveWriter, Identity, Keyring, Keys, MasterKey, Protection,
    WriterOptions,
};

struct Fixture {
    archive: Vec<u8>,
    head: Head,
    keys: Keys,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = MasterKey::from_bytes([7; 32]);
        let id = Identity::generate();
        let mut opts = WriterOptions::new(
            "20261206T000000000Z-0000f022",
            Protection::Recipients(vec![id.recipient()]),
        );
        opts.key_file = true;
        let w = ArchiveWriter::new(Vec::new(), opts).expect("writer");
        let archive = w.finish().expect("finish").0;
        let head = read_head(&mut &archive[..]).expect("head").0;
        let mut keys = Keys::keyring(Keyring::new(vec![key]).expect("ring"));
        keys.identities.push(id);
        Fixture {
            archive,
            head,
            keys,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Ok(file) = envelope::parse_key_file(data) else {
        return;
    };
    // Opening the archive with the fuzzed key file must not panic; a rewrap likewise.
    let _ = ArchiveReader::open_with_key_file(&f.archive[..], &f.keys, Some(&file));
    let _ = envelope::rewrap(
        &f.head,
        Some(&file),
        &f.keys,
        &Protection::Key(MasterKey::from_bytes([9; 32])),
        true,
    );
});
