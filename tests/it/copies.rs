//! Copies in a second place (3-2-1): every backup copied to the copy destination and verified
//! there; a copy destination that is down does not fail the backup and is caught up later; a
//! restore reads the copy when the primary lost the backup, saying so, and restores exactly.

use monoskope_backup_tests::fixture::{all_events, canonical, sample, store, Fixture};
use monoskope_backup_tests::{run, Devstore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_copied_verified_caught_up_and_restored_from_the_copy() {
    let f = Fixture::new();
    let src = Devstore::start(&[]);
    store(&src, sample(300)).await;
    let dir = f.dir.path();
    // The copy is "down" at first: its directory cannot be created (a file is in the way).
    let copy_dir = dir.join("copy");
    std::fs::write(&copy_dir, "not a directory").expect("block");
    let copy = format!("file://{}", copy_dir.display());
    let catalog = f.catalog();
    let backup = || {
        run(
            "backup-server",
            &[
                "backup",
                "--event-store",
                &src.addr,
                "--destination",
                &f.dest,
                "--key-file",
                &f.key,
                "--catalog",
                &catalog,
                "--copy-destination",
                &copy,
            ],
            &[],
        )
    };
    let out = backup();
    assert_eq!(
        out.code,
        Some(0),
        "a copy that is down does not fail the backup: {out:?}"
    );
    assert!(out.stderr.contains("not copied to"), "{out:?}");
    let first = out.stdout.lines().last().expect("id").to_string();

    // The copy comes back: the next backup copies both, oldest first, each verified.
    std::fs::remove_file(&copy_dir).expect("unblock");
    store(
        &src,
        monoskope_backup::devstore::sample::events(20, 2, 1_800_000_000, 3).collect(),
    )
    .await;
    let out = backup();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("copied to"), "{out:?}");
    let second = out.stdout.lines().last().expect("id").to_string();
    let mut names: Vec<String> = std::fs::read_dir(copy_dir.join("backups"))
        .expect("copy")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        8,
        "archive, key file, watermark and manifest of both: {names:?}"
    );
    let out = run(
        "backup-server",
        &[
            "verify",
            "--all",
            "--no-key",
            "--destination",
            &copy,
            "--catalog",
            &catalog,
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(&first) && out.stdout.contains(&second),
        "{out:?}"
    );

    // The primary loses the newest archive: the restore reads the copy, says so, restores exactly.
    std::fs::remove_file(f.archive(&second)).expect("lose it");
    let dst = Devstore::start(&[]);
    let mut cmd = f.restore_command(&[
        "latest",
        "--event-store",
        &dst.addr,
        "--via-api",
        "--copy-destination",
        &copy,
    ]);
    cmd.env("RUST_LOG", "warn");
    let out = monoskope_backup_tests::output(cmd);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr
            .contains("does not hold latest whole: reading the copy at"),
        "{out:?}"
    );
    let want: Vec<_> = all_events(src.url())
        .await
        .into_iter()
        .filter(|e| e.aggregate_type != "Backup")
        .collect();
    assert_eq!(canonical(all_events(dst.url()).await), canonical(want));
}

/// A copy in another place with settings of its own (an S3 endpoint and credentials named in its
/// URL, none of them the primary's): `GetStatus` shows it; a backup damaged at the primary (same
/// size, one byte changed) is restored from the copy — said in one line, exact; `catalog resync`
/// reads the copy when the primary is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_primary_is_restored_from_a_copy_elsewhere() {
    let Some(s3) = monoskope_backup_tests::service_env("TEST_S3_ENDPOINT") else {
        return;
    };
    let bucket = format!("copy-{}", uuid::Uuid::new_v4().simple());
    monoskope_backup_tests::s3_client(&s3)
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("bucket");
    let copy = format!("s3://{bucket}/m8?endpoint={s3}&credentials=COPY_S3");
    let creds = [
        ("COPY_S3_ACCESS_KEY", "test"),
        ("COPY_S3_SECRET_KEY", "test"),
    ];
    let f = Fixture::new();
    let src = Devstore::start(&[]);
    store(&src, sample(200)).await;
    let common = |extra: &[&str]| {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(
            [
                "--destination",
                &f.dest,
                "--key-file",
                &f.key,
                "--copy-destination",
                &copy,
            ]
            .map(String::from),
        );
        v
    };
    // Without the copy's credentials: the backup succeeds, the copy says what it needs.
    let args = common(&["backup", "--event-store", &src.addr]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("backup-server", &args, &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr
            .contains("set COPY_S3_ACCESS_KEY and COPY_S3_SECRET_KEY"),
        "{out:?}"
    );
    let out = run("backup-server", &args, &creds);
    assert_eq!(out.code, Some(0), "{out:?}");
    let id = out.stdout.lines().last().expect("id").to_string();
    assert!(out.stderr.contains("copied to"), "{out:?}");

    // GetStatus shows the copy: it holds every backup.
    let catalog = f.catalog();
    let serve_args = common(&["--event-store", &src.addr, "--catalog", &catalog]);
    let serve_args: Vec<&str> = serve_args.iter().map(String::as_str).collect();
    let s = monoskope_backup_tests::Server::start(&serve_args, &creds);
    let copies = monoskope_backup_tests::wait_for(std::time::Duration::from_secs(20), || {
        let out = run(
            "backupctl",
            &["status", "--json"],
            &[("BACKUP_SERVER", &s.url())],
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        let c = v["copies"].as_array()?.clone();
        (!c.is_empty()).then_some(c)
    })
    .expect("copies in status");
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0]["destination"], format!("s3://{bucket}/m8"));
    assert_eq!(copies[0]["lag_seconds"], 0.0);
    assert!(copies[0]["error"].is_null(), "{copies:?}");
    drop(s);

    // One byte of the primary's archive changed: the restore reads the copy and says so.
    let archive = f.archive(&id);
    let mut bytes = std::fs::read(&archive).expect("archive");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&archive, bytes).expect("damage");
    let dst = Devstore::start(&[]);
    let mut cmd = f.restore_command(&[
        "latest",
        "--event-store",
        &dst.addr,
        "--via-api",
        "--copy-destination",
        &copy,
    ]);
    cmd.envs(creds);
    let out = monoskope_backup_tests::output(cmd);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains(&format!("backup {id} is damaged at"))
            && out.stderr.contains("restoring it from the copy at s3://"),
        "{out:?}"
    );
    assert_eq!(
        canonical(all_events(dst.url()).await),
        canonical(all_events(src.url()).await)
    );

    // The primary gone: the catalog is rebuilt from the copy, said in one line.
    std::fs::remove_dir_all(f.dir.path().join("dest")).expect("lose the primary");
    let resync = format!("sqlite://{}", f.dir.path().join("resync.db").display());
    let args = common(&["catalog", "resync", "--catalog", &resync]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("backup-server", &args, &creds);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains("cannot be read (") && out.stderr.contains("reading the copy at s3://"),
        "{out:?}"
    );
    // Both backups: the first reached the copy with the second (caught up).
    assert!(
        out.stdout.contains(&format!(
            "catalog rebuilt from s3://{bucket}/m8: 2 complete backups"
        )),
        "{out:?}"
    );
}
