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
