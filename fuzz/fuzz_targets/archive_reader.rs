//! Fuzzes the archive reader with arbitrary bytes, with and without a matching key: it must
//! return an error or records, never panic, and never yield records after an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monoskope_backup::archive::{ArchiveReader, Keyring, Keys, MasterKey};

fuzz_target!(|data: &[u8]| {
    // The key of tests/vectors/v1/encrypted.key is not needed: most inputs fail before the
    // key matters; the unencrypted (SHA-256 chain) path is reachable without any key.
    for keys in [Keys::none(), Keys::keyring(Keyring::new(vec![MasterKey::from_bytes([7; 32])]).expect("ring"))] {
        if let Ok(mut r) = ArchiveReader::open(data, &keys) {
            for _ in 0..100_000 {
                match r.next_record() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => {
                        // After an error the reader yields nothing more.
                        assert!(r.next_record().is_err());
                        assert!(r.next().is_none());
                        break;
                    }
                }
            }
        }
    }
});
