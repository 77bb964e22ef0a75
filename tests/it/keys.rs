//! Keys a compromised cluster cannot use, through the binaries as an operator runs them: a
//! write-only service (recipients) that cannot read what it wrote, an identity that restores it
//! exactly, verification without a key, rotation without re-encrypting (the old key refused
//! afterwards, the new one restoring exactly), and every configuration that would silently weaken
//! encryption refused before anything is written.

use monoskope_backup_tests::fixture::{all_events, canonical, client, sample, store, Fixture};
use monoskope_backup_tests::{run, Devstore, Server};

/// `keygen --recipient --out FILE`: the identity file (0600) and the recipient printed.
fn identity(dir: &std::path::Path, name: &str) -> (String, String) {
    let path = dir.join(name).to_str().expect("utf8").to_string();
    let out = run(
        "backup-server",
        &["keygen", "--recipient", "--out", &path],
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let recipient = out.stdout.trim().to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "identity file mode");
    }
    assert!(
        !out.stderr.contains("AGE-SECRET-KEY"),
        "the identity is never printed"
    );
    (path, recipient)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_only_service_backs_up_what_only_an_identity_restores() {
    let f = Fixture::new();
    let dir = f.dir.path();
    let (op_id, op) = identity(dir, "operator.id");
    let (bg_id, bg) = identity(dir, "break-glass.id");
    let recipients = dir.join("recipients");
    std::fs::write(
        &recipients,
        format!("# operator\n{op}\n# break-glass, offline\n{bg}\n"),
    )
    .expect("recipients");
    let recipients = recipients.to_str().expect("utf8");
    let src = Devstore::start(&[]);
    store(&src, sample(400)).await;
    let catalog = f.catalog();
    let s = Server::start(
        &[
            "--event-store",
            &src.addr,
            "--destination",
            &f.dest,
            "--recipient-file",
            recipients,
            "--catalog",
            &catalog,
        ],
        &[],
    );
    let mut c = client(&s).await;
    let b = c.create_backup(true, false).await.expect("backup");
    assert!(b.error.is_empty(), "{}", b.error);
    assert_eq!(b.key_kind, "recipients");
    assert_eq!(b.key_id.split(',').count(), 2, "{}", b.key_id);

    // The service cannot read what it wrote: a drill says it needs the identity.
    let msg = match c.drill("latest").await {
        Ok(r) => format!("{r:?}"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("--identity-file"), "{msg}");
    drop(s);

    let common = [
        "--destination",
        f.dest.as_str(),
        "--catalog",
        catalog.as_str(),
    ];
    // Verify without a key proves the destination holds what was written; keyed verify needs
    // the identity and says so (not "damaged").
    let args: Vec<&str> = ["verify", "latest", "--no-key"]
        .iter()
        .copied()
        .chain(common)
        .collect();
    let out = run("backup-server", &args, &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("stored as written; not decrypted"),
        "{out:?}"
    );
    let args: Vec<&str> = ["verify", "latest"].iter().copied().chain(common).collect();
    let out = run("backup-server", &args, &[]);
    assert_eq!(out.code, Some(5), "no key given: {out:?}");
    assert!(
        out.stderr.contains("--identity-file") && out.stderr.contains("--no-key"),
        "{out:?}"
    );
    let args: Vec<&str> = ["verify", "latest", "--identity-file", &bg_id]
        .iter()
        .copied()
        .chain(common)
        .collect();
    assert_eq!(run("backup-server", &args, &[]).code, Some(0));

    // Either identity restores exactly; a stranger's is refused as a wrong key.
    let (stranger, _) = identity(dir, "stranger.id");
    let dst = Devstore::start(&[]);
    let refused = f.restore(&[
        "latest",
        "--event-store",
        &dst.addr,
        "--via-api",
        "--identity-file",
        &stranger,
    ]);
    assert_eq!(refused.code, Some(6), "wrong key: {refused:?}");
    assert!(refused.stderr.contains("wrong key"), "{refused:?}");
    assert!(all_events(dst.url()).await.is_empty(), "nothing written");
    let out = f.restore(&[
        "latest",
        "--event-store",
        &dst.addr,
        "--via-api",
        "--identity-file",
        &op_id,
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        canonical(all_events(dst.url()).await),
        canonical(all_events(src.url()).await)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_rewraps_without_rewriting_and_the_old_key_is_refused_after() {
    let f = Fixture::new();
    let dir = f.dir.path();
    let src = Devstore::start(&[]);
    store(&src, sample(300)).await;
    let first = f.backup(&src);
    store(
        &src,
        monoskope_backup::devstore::sample::events(50, 5, 1_800_000_000, 99).collect(),
    )
    .await;
    let second = f.backup(&src);
    let archive = std::fs::read(f.archive(&first)).expect("archive");
    let new_key = dir.join("new.key").to_str().expect("utf8").to_string();
    assert_eq!(
        run("backup-server", &["keygen", "--out", &new_key], &[]).code,
        Some(0)
    );
    let common = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--destination".into(),
            f.dest.clone(),
            "--catalog".into(),
            f.catalog(),
        ]);
        v
    };
    let go = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run("backup-server", &a, &[])
    };
    // The new key first (it wraps), the old one to read.
    let out = go(common(&[
        "rewrap",
        "--all",
        "--key-file",
        &new_key,
        "--key-file",
        &f.key,
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.matches("rewrapped").count(), 2, "{out:?}");
    assert!(
        out.stdout.contains("still opens with"),
        "both keys read until --remove-old"
    );
    // Both keys read now.
    for key in [&f.key, &new_key] {
        let out = go(common(&["verify", "--all", "--key-file", key]));
        assert_eq!(out.code, Some(0), "{out:?}");
    }
    let out = go(common(&[
        "rewrap",
        "--all",
        "--key-file",
        &new_key,
        "--key-file",
        &f.key,
        "--remove-old",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    // Idempotent: a second run changes nothing.
    let out = go(common(&[
        "rewrap",
        "--all",
        "--key-file",
        &new_key,
        "--remove-old",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.matches("unchanged").count(), 2, "{out:?}");
    // The archive's bytes were not touched.
    assert_eq!(std::fs::read(f.archive(&first)).expect("archive"), archive);
    // The old key is refused; the new one restores exactly.
    let out = go(common(&["verify", &second, "--key-file", &f.key]));
    assert_ne!(out.code, Some(0));
    assert!(out.stdout.contains("wrong key"), "{out:?}");
    let dst = Devstore::start(&[]);
    let old = f.restore(&[&second, "--event-store", &dst.addr, "--via-api"]);
    assert_eq!(old.code, Some(6), "wrong key: {old:?}");
    assert!(old.stderr.contains("wrong key"), "{old:?}");
    let mut cmd = f.restore_command(&[&second, "--event-store", &dst.addr, "--via-api"]);
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if *a == f.key {
                new_key.clone()
            } else {
                a.clone()
            }
        })
        .collect();
    cmd = monoskope_backup_tests::command(
        "backup-server",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let out = monoskope_backup_tests::output(cmd);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        canonical(all_events(dst.url()).await),
        canonical(all_events(src.url()).await)
    );
    // The list names the new key's kind and id, never the key.
    let out = go(common(&["list", "--json"]));
    let listed: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let new_b64 = std::fs::read_to_string(&new_key).expect("key");
    for m in listed.as_array().expect("array") {
        assert_eq!(m["key_kind"], "master-key");
        assert_eq!(m["key_id"].as_str().map(str::len), Some(16));
    }
    assert!(!out.stdout.contains(new_b64.trim()));
}

#[test]
fn configurations_that_would_weaken_encryption_are_refused_before_writing() {
    let f = Fixture::new();
    let dir = f.dir.path();
    let empty = dir.join("empty-recipients");
    std::fs::write(&empty, "# nobody yet\n\n").expect("write");
    let truncated = dir.join("truncated.id");
    let (whole, recipient) = identity(dir, "whole.id");
    let text = std::fs::read_to_string(&whole).expect("identity");
    let secret = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY"))
        .expect("secret");
    std::fs::write(&truncated, &secret[..secret.len() - 9]).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&truncated, std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }
    let recipients = dir.join("recipients");
    std::fs::write(&recipients, format!("{recipient}\n")).expect("write");
    let src_dest = format!("file://{}", dir.join("never").display());
    let missing = dir.join("missing");
    let cases: Vec<(Vec<&str>, &str, i32)> = vec![
        (
            vec!["--recipient-file", empty.to_str().expect("utf8")],
            "lists no recipient",
            1,
        ),
        (
            vec!["--recipient-file", missing.to_str().expect("utf8")],
            "cannot read recipient file",
            1,
        ),
        (
            vec![
                "--recipient-file",
                recipients.to_str().expect("utf8"),
                "--key-file",
                &f.key,
            ],
            "encrypted either to a key or to recipients",
            2,
        ),
        (
            vec![
                "--recipient-file",
                recipients.to_str().expect("utf8"),
                "--no-encryption",
            ],
            "contradiction",
            2,
        ),
        (
            vec![
                "--key-file",
                &f.key,
                "--identity-file",
                truncated.to_str().expect("utf8"),
            ],
            "line 1 of the identity file",
            1,
        ),
    ];
    for (extra, needle, code) in cases {
        let catalog = format!("sqlite://{}", dir.join("never-catalog.db").display());
        let mut args = vec![
            "backup",
            "--event-store",
            "127.0.0.1:1",
            "--destination",
            &src_dest,
            "--catalog",
            &catalog,
        ];
        args.extend(extra.iter().copied());
        let out = run("backup-server", &args, &[]);
        assert_eq!(out.code, Some(code), "{extra:?}: {out:?}");
        assert!(
            out.stderr.contains(needle),
            "{extra:?}: {needle:?} not in {}",
            out.stderr
        );
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "one line: {}",
            out.stderr
        );
        assert!(
            !dir.join("never").exists(),
            "{extra:?}: something was written"
        );
        assert!(
            !dir.join("never-catalog.db").exists(),
            "{extra:?}: a catalog was made"
        );
    }
}

/// A write-only service's scheduled check: it cannot drill (no identity), so each tick proves
/// instead that the destination holds exactly what was written — and says when it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_only_service_verifies_its_stored_backups_on_schedule() {
    let f = Fixture::new();
    let dir = f.dir.path();
    let (_id, recipient) = identity(dir, "op.id");
    let recipients = dir.join("recipients");
    std::fs::write(&recipients, format!("{recipient}\n")).expect("write");
    let src = Devstore::start(&[]);
    store(&src, sample(50)).await;
    let log = dir.join("serve.log");
    let mut cmd = std::process::Command::new(monoskope_backup_tests::bin("backup-server"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--event-store",
        &src.addr,
        "--destination",
        &f.dest,
        "--recipient-file",
        recipients.to_str().expect("utf8"),
        "--catalog",
        &f.catalog(),
        "--drill-schedule",
        "*/1 * * * * *",
    ])
    .env("BACKUP_EMIT_EVENTS", "false")
    .env("RUST_LOG", "info");
    let (_p, line) = monoskope_backup_tests::spawn_until_line_with(
        cmd,
        "backup-server listening on ",
        std::process::Stdio::from(std::fs::File::create(&log).expect("log")),
    );
    let addr = line
        .trim_start_matches("backup-server listening on ")
        .trim()
        .to_string();
    let opts = monoskope_backup_client::ClientOptions::new(format!("http://{addr}"));
    let mut c = monoskope_backup_client::BackupClient::connect(&opts)
        .await
        .expect("connect");
    let b = c.create_backup(true, false).await.expect("backup");
    assert!(b.error.is_empty(), "{}", b.error);
    let ok = monoskope_backup_tests::wait_for(std::time::Duration::from_secs(15), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("the destination holds exactly what was written")
            .then_some(())
    });
    assert!(
        ok.is_some(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Damage the stored archive: the next tick says so.
    let archive = f.archive(&b.id);
    let mut bytes = std::fs::read(&archive).expect("archive");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&archive, bytes).expect("damage");
    let failed = monoskope_backup_tests::wait_for(std::time::Duration::from_secs(15), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("scheduled verification failed").then_some(())
    });
    assert!(
        failed.is_some(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
