//! S3 Object Lock against both S3 test servers (moto and versitygw), which enforce locks: every
//! object of a backup carries the mode and a retention date; a direct delete of a locked version
//! is refused by the server; retention keeps a locked backup and says why, and never attempts the
//! delete; a bucket without object lock is a clear error at start, with nothing written.

use monoskope_backup_tests::fixture::{sample, store, Fixture};
use monoskope_backup_tests::{new_bucket, run, s3_client, service_env, Devstore, S3_ENV};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_is_locked_and_retention_never_deletes_before_the_date() {
    if let Some(endpoint) = service_env("TEST_S3_ENDPOINT") {
        locks_every_object(endpoint).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versitygw_locks_every_object_and_retention_never_deletes_before_the_date() {
    if let Some(endpoint) = service_env("TEST_VERSITYGW_ENDPOINT") {
        locks_every_object(endpoint).await;
    }
}

async fn locks_every_object(endpoint: String) {
    let s3 = s3_client(&endpoint);
    let bucket = format!("mbk-lock-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .expect("create a bucket with object lock");
    let f = Fixture::new();
    let src = Devstore::start(&[]);
    store(&src, sample(100)).await;
    let dest = format!("s3://{bucket}/p");
    let catalog = f.catalog();
    let backup = |extra: &[&str]| {
        let mut args = vec![
            "backup",
            "--event-store",
            &src.addr,
            "--destination",
            &dest,
            "--s3-endpoint",
            &endpoint,
            "--key-file",
            &f.key,
            "--catalog",
            &catalog,
        ];
        args.extend_from_slice(extra);
        run("backup-server", &args, S3_ENV)
    };
    let lock = [
        "--s3-object-lock-mode",
        "GOVERNANCE",
        "--s3-object-lock-days",
        "2",
    ];
    let out = backup(&[&lock[..], &["--retention-count", "1"]].concat());
    assert_eq!(out.code, Some(0), "{out:?}");
    let first = out.stdout.lines().last().expect("id").to_string();

    let objects = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("list");
    let keys: Vec<String> = objects
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    assert_eq!(
        keys.len(),
        4,
        "archive, key file, watermark, manifest: {keys:?}"
    );
    let soon = chrono::Utc::now() + chrono::Duration::days(2);
    // (moto 5.1.22 answers GetObjectRetention with the object itself; HeadObject carries the
    // same two fields, as S3 documents.)
    for key in &keys {
        let h = s3
            .head_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{key}: {e:?}"));
        assert_eq!(
            h.object_lock_mode(),
            Some(&aws_sdk_s3::types::ObjectLockMode::Governance),
            "{key}"
        );
        let until = h.object_lock_retain_until_date().expect("date").secs();
        assert!((until - soon.timestamp()).abs() < 120, "{key}: {until}");
    }
    // The server refuses a direct delete of a locked version.
    let manifest_key = format!("p/backups/{first}.manifest.json");
    let head = s3
        .head_object()
        .bucket(&bucket)
        .key(&manifest_key)
        .send()
        .await
        .expect("head");
    let deleted = s3
        .delete_object()
        .bucket(&bucket)
        .key(&manifest_key)
        .set_version_id(head.version_id().map(str::to_string))
        .send()
        .await;
    assert!(
        deleted.is_err(),
        "the S3 server let a locked version be deleted"
    );

    // list and verify name the lock date.
    let common = [
        "--destination",
        dest.as_str(),
        "--s3-endpoint",
        endpoint.as_str(),
        "--catalog",
        catalog.as_str(),
    ];
    let args: Vec<&str> = ["list"].iter().copied().chain(common).collect();
    let out = run("backup-server", &args, S3_ENV);
    assert!(out.stdout.contains("locked until"), "{out:?}");
    let args: Vec<&str> = ["verify", "latest", "--key-file", &f.key]
        .iter()
        .copied()
        .chain(common)
        .collect();
    let out = run("backup-server", &args, S3_ENV);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("locked until"), "{out:?}");

    // A second backup with keep-last 1: retention keeps the first (locked), says why, and never
    // tried to delete it (no delete markers, every version there).
    store(
        &src,
        monoskope_backup::devstore::sample::events(10, 2, 1_800_000_000, 5).collect(),
    )
    .await;
    let out = backup(&[&lock[..], &["--retention-count", "1"]].concat());
    assert_eq!(out.code, Some(0), "{out:?}");
    let args: Vec<&str> = ["retention", "plan", "--retention-count", "1"]
        .iter()
        .copied()
        .chain(common)
        .collect();
    let out = run("backup-server", &args, S3_ENV);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("keep    {first}  locked until")),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("delete  "), "{}", out.stdout);
    let versions = s3
        .list_object_versions()
        .bucket(&bucket)
        .send()
        .await
        .expect("versions");
    assert!(
        versions.delete_markers().is_empty(),
        "retention attempted a delete"
    );
    assert_eq!(versions.versions().len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_without_object_lock_is_refused_before_anything_is_written() {
    let Some(endpoint) = service_env("TEST_S3_ENDPOINT") else {
        return;
    };
    let s3 = s3_client(&endpoint);
    let bucket = new_bucket(&s3).await;
    let f = Fixture::new();
    let dest = format!("s3://{bucket}/p");
    let catalog = f.catalog();
    let out = run(
        "backup-server",
        &[
            "backup",
            "--event-store",
            "127.0.0.1:1",
            "--destination",
            &dest,
            "--s3-endpoint",
            &endpoint,
            "--key-file",
            &f.key,
            "--catalog",
            &catalog,
            "--s3-object-lock-mode",
            "COMPLIANCE",
            "--s3-object-lock-days",
            "30",
        ],
        S3_ENV,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("has no object lock enabled"), "{out:?}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out:?}");
    let objects = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("list");
    assert!(objects.contents().is_empty(), "nothing written");
    // A mode without days is a usage error.
    let out = run(
        "backup-server",
        &[
            "backup",
            "--destination",
            &dest,
            "--s3-object-lock-mode",
            "GOVERNANCE",
        ],
        S3_ENV,
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("needs --s3-object-lock-days"),
        "{out:?}"
    );
}
