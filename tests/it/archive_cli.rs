//! `backup-server keygen`, `inspect` and the quickstart's `demo` as an operator uses them.

use std::process::Command;

use monoskope_backup_tests::bin;

#[test]
fn keygen_writes_a_0600_key_file_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("backup.key");
    let out = Command::new(bin("backup-server"))
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = std::fs::read_to_string(&path).expect("key file");
    assert_eq!(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key.trim())
            .expect("base64")
            .len(),
        32
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
    }
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(key.trim()),
        "the key is not echoed"
    );
    let again = Command::new(bin("backup-server"))
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read_to_string(&path).expect("key file"),
        key,
        "the existing key is untouched"
    );
}

#[test]
fn inspect_reads_the_committed_test_vectors() {
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/v1");
    for (archive, key) in [
        ("encrypted.mbk", Some("encrypted.key")),
        ("unencrypted.mbk", None),
    ] {
        let mut cmd = Command::new(bin("backup-server"));
        cmd.arg("inspect")
            .arg(vectors.join(archive))
            .env_remove("BACKUP_ENCRYPTION_KEY")
            .env_remove("BACKUP_PASSPHRASE");
        if let Some(k) = key {
            cmd.arg("--key-file").arg(vectors.join(k));
        }
        let out = cmd.output().expect("run");
        assert!(
            out.status.success(),
            "{archive}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected =
            std::fs::read_to_string(vectors.join("expected.jsonl")).expect("expected lines");
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{archive}");
    }
}

/// Format 1.1: key files beside the archives, a master key and two recipients; each identity
/// opens the recipients' archive, and without its key file no key does, in one line.
#[test]
fn inspect_reads_the_format_1_1_vectors() {
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/v1.1");
    let expected = std::fs::read_to_string(vectors.join("expected.jsonl")).expect("expected");
    let inspect = |archive: &std::path::Path, flag: &str, key: &str| {
        let out = Command::new(bin("backup-server"))
            .arg("inspect")
            .arg(archive)
            .arg(flag)
            .arg(vectors.join(key))
            .env_remove("BACKUP_ENCRYPTION_KEY")
            .env_remove("BACKUP_PASSPHRASE")
            .env("RUST_LOG", "error")
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    for (archive, flag, key) in [
        ("keyfile.mbk", "--key-file", "keyfile.key"),
        ("recipients.mbk", "--identity-file", "recipient-a.id"),
        ("recipients.mbk", "--identity-file", "recipient-b.id"),
    ] {
        let (code, out, err) = inspect(&vectors.join(archive), flag, key);
        assert_eq!(code, Some(0), "{archive} {key}: {err}");
        assert_eq!(out, expected, "{archive} {key}");
    }
    // The recipients' archive under a master key, and a key-file archive without its key file.
    let (code, _, err) = inspect(&vectors.join("recipients.mbk"), "--key-file", "keyfile.key");
    assert_eq!(code, Some(5), "no key for it: {err}");
    assert!(err.contains("--identity-file"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let alone = dir.path().join("keyfile.mbk");
    std::fs::copy(vectors.join("keyfile.mbk"), &alone).expect("copy");
    let (code, _, err) = inspect(&alone, "--key-file", "keyfile.key");
    assert_eq!(code, Some(5), "its key file is gone: {err}");
    assert!(err.contains("key file") && err.contains("missing"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Format 1.2: a continuous segment, read with its parent's key; `--summary` shows its kind and
/// its link, the SHA-256 of the 1.1 archive it continues.
#[test]
fn inspect_reads_the_format_1_2_vectors() {
    use sha2::Digest;
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    let inspect = |extra: &[&str]| {
        let out = Command::new(bin("backup-server"))
            .arg("inspect")
            .arg(vectors.join("v1.2/segment.mbk"))
            .arg("--key-file")
            .arg(vectors.join("v1.1/keyfile.key"))
            .args(extra)
            .env_remove("BACKUP_ENCRYPTION_KEY")
            .env_remove("BACKUP_PASSPHRASE")
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let expected =
        std::fs::read_to_string(vectors.join("v1.2/expected.jsonl")).expect("expected lines");
    assert_eq!(inspect(&[]), expected);
    let summary: serde_json::Value = serde_json::from_str(&inspect(&["--summary"])).expect("json");
    let parent = std::fs::read(vectors.join("v1.1/keyfile.mbk")).expect("1.1 vector");
    let sha: String = sha2::Sha256::digest(&parent)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(summary["format_version"], "1.2");
    assert_eq!(summary["kind"], "segment");
    assert_eq!(summary["parent_id"], "20261206T120000000Z-00000011");
    assert_eq!(summary["parent_sha256"], sha.as_str());
    assert_eq!(summary["event_count"], 2);
}

#[test]
fn inspect_errors_are_one_clear_line_with_their_exit_codes() {
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/v1");
    let run = |archive: &str, env_key: Option<&str>| {
        let mut cmd = Command::new(bin("backup-server"));
        cmd.arg("inspect")
            .arg(vectors.join(archive))
            .env_remove("BACKUP_PASSPHRASE")
            .env_remove("BACKUP_ENCRYPTION_KEY");
        if let Some(k) = env_key {
            cmd.env("BACKUP_ENCRYPTION_KEY", k);
        }
        let out = cmd.output().expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    let (code, err) = run("encrypted.mbk", None);
    assert_eq!(code, Some(5), "key missing");
    assert!(err.contains("archive is encrypted (key id"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, err) = run(
        "encrypted.mbk",
        Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    );
    assert_eq!(code, Some(6), "wrong key");
    assert!(err.contains("wrong key (archive key id"), "{err}");
    for (damaged, msg) in [
        ("damaged-bitflip.mbk", "failed authentication"),
        ("damaged-truncated.mbk", "archive is truncated after chunk"),
    ] {
        let key = std::fs::read_to_string(vectors.join("encrypted.key")).expect("key");
        let (code, err) = run(damaged, Some(key.trim()));
        assert_eq!(code, Some(7), "damaged: {damaged}");
        assert!(err.contains(msg), "{damaged}: {err}");
    }
}

/// The README's first command: the demo runs end to end, and the commands it prints for the
/// reader to try work on what it left.
#[test]
fn the_quickstart_demo_backs_up_lists_verifies_and_prints_commands_that_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = monoskope_backup_tests::run(
        "backup-server",
        &[
            "demo",
            "--dir",
            dir.path().to_str().expect("utf8"),
            "--events",
            "800",
        ],
        // Its log lines too: written to a pipe, as in a file or `kubectl logs`, they carry no
        // terminal colour codes.
        &[("RUST_LOG", "info")],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains(" INFO ") && out.stderr.contains("backup complete"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains('\u{1b}'), "{:?}", out.stderr);
    for step in [
        "3. CreateBackup{wait: true} -> backup ",
        ": 800 events, ",
        "4. ListBackups -> 1 backup(s): ",
        " -> ok: every chunk authenticated, 800 events, footer and manifest agree",
        "6. Restore into a second embedded EventStore on ",
        " -> 800 events, every one back (digest ",
    ] {
        assert!(out.stdout.contains(step), "{step:?} in {}", out.stdout);
    }
    assert!(!out.stdout.contains("backups/backups/"), "{}", out.stdout);
    let tries: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("  backup-server "))
        .collect();
    assert_eq!(tries.len(), 3, "{}", out.stdout);
    for line in tries {
        let args: Vec<&str> = line.split_whitespace().collect();
        let tried = monoskope_backup_tests::run("backup-server", &args, &[]);
        assert_eq!(tried.code, Some(0), "{line}: {}", tried.stderr);
        assert!(!tried.stdout.trim().is_empty(), "{line}");
    }
}
