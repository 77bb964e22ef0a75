//! One behaviour suite for every destination: the local directory and a real S3 server.

use std::sync::Arc;

use monoskope_backup::destination::{self, Destination, DestinationError, S3Options};
use monoskope_backup_tests::{new_bucket, s3_client, service_env, start_moto};

async fn suite(d: Arc<dyn Destination>) {
    d.probe().await.expect("probe");
    // Small objects.
    d.put("backups/a.json", b"{}".to_vec()).await.expect("put");
    assert_eq!(d.get_bytes("backups/a.json").await.expect("get"), b"{}");
    assert!(matches!(
        d.get_bytes("backups/missing").await,
        Err(DestinationError::NotFound(_))
    ));
    // A streamed upload several parts long.
    let part = |i: u8| vec![i; destination::PART_SIZE];
    let mut up = d.upload("backups/big.mbk").await.expect("upload");
    up.write_part(part(1)).await.expect("part 1");
    up.write_part(part(2)).await.expect("part 2");
    up.write_part(vec![3; 1000]).await.expect("part 3");
    assert!(
        d.list("backups/big").await.expect("list").is_empty(),
        "an upload is invisible until complete"
    );
    up.complete().await.expect("complete");
    let listed = d.list("backups/").await.expect("list");
    let big = listed
        .iter()
        .find(|o| o.key == "backups/big.mbk")
        .expect("listed");
    assert_eq!(big.size, 2 * destination::PART_SIZE as u64 + 1000);
    let back = d.get_bytes("backups/big.mbk").await.expect("get");
    assert!(
        back[..destination::PART_SIZE].iter().all(|b| *b == 1)
            && back[back.len() - 1000..].iter().all(|b| *b == 3)
    );
    // The first bytes of an object, and all of a shorter one.
    let read_prefix = |len: u64| {
        let d = d.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let mut r = d.get_prefix("backups/big.mbk", len).await.expect("prefix");
            let mut v = Vec::new();
            r.read_to_end(&mut v).await.expect("read");
            v
        }
    };
    assert_eq!(read_prefix(10).await, vec![1; 10]);
    let all = read_prefix(1 << 40).await;
    assert_eq!(all.len(), 2 * destination::PART_SIZE + 1000);
    assert!(matches!(
        d.get_prefix("backups/missing", 10).await,
        Err(DestinationError::NotFound(_))
    ));
    // An aborted upload leaves nothing.
    let mut up = d.upload("backups/aborted.mbk").await.expect("upload");
    up.write_part(part(4)).await.expect("part");
    up.abort().await;
    assert!(!d
        .list("backups/")
        .await
        .expect("list")
        .iter()
        .any(|o| o.key.contains("aborted")));
    // Lazy uploads: one that fits a part, one of several parts, one empty, and one aborted after
    // its first part (nothing was sent for it) or after its second (a multipart upload begun).
    for (name, parts) in [
        ("lazy-small", vec![vec![5u8; 1000]]),
        ("lazy-big", vec![part(6), part(7), vec![8; 10]]),
        ("lazy-empty", vec![vec![]]),
    ] {
        let key = format!("backups/{name}.mbk");
        let mut up = d.upload_lazily(&key).await.expect("lazy upload");
        let want: Vec<u8> = parts.concat();
        for p in parts {
            up.write_part(p).await.expect("lazy part");
        }
        assert!(
            d.list(&key).await.expect("list").is_empty(),
            "{name}: invisible until complete"
        );
        up.complete().await.expect("lazy complete");
        assert_eq!(d.get_bytes(&key).await.expect("get"), want, "{name}");
    }
    for parts in [1, 2] {
        let key = format!("backups/lazy-aborted-{parts}.mbk");
        let mut up = d.upload_lazily(&key).await.expect("lazy upload");
        for i in 0..parts {
            up.write_part(part(9 + i)).await.expect("lazy part");
        }
        up.abort().await;
        assert!(
            d.list(&key).await.expect("list").is_empty(),
            "{key} aborted"
        );
        assert_eq!(
            d.abort_uploads(&key).await.expect("no upload left"),
            0,
            "{key}"
        );
    }
    // Deleting is idempotent.
    d.delete("backups/a.json").await.expect("delete");
    d.delete("backups/a.json").await.expect("delete again");
    // More than 1,000 objects: listing pages are followed.
    let n = 1005;
    let mut tasks = Vec::new();
    for i in 0..n {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            d.put(&format!("many/{i:05}"), vec![b'x']).await
        }));
        if tasks.len() == 32 {
            for t in tasks.drain(..) {
                t.await.expect("join").expect("put");
            }
        }
    }
    for t in tasks {
        t.await.expect("join").expect("put");
    }
    let many = d.list("many/").await.expect("list");
    assert_eq!(many.len(), n);
    assert_eq!(many[0].key, "many/00000");
    assert_eq!(many[n - 1].key, format!("many/{:05}", n - 1));
}

#[tokio::test]
async fn directory_destination_passes_the_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = destination::open(
        &format!("file://{}", dir.path().join("dest").display()),
        &S3Options::default(),
    )
    .await
    .expect("open");
    suite(d).await;
}

/// A 64 KiB tmpfs, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A directory on a disk that fills up: an upload that does not fit fails with the system's
/// reason and leaves no staged file filling the disk for the next backup (writes are buffered,
/// so the failure can show first when the upload completes). Mounts a tmpfs: the test command
/// runs as root; where mounting is not permitted at all the test says so and does nothing.
#[tokio::test]
async fn a_full_disk_fails_an_upload_and_leaves_the_disk_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mount)
        .output()
        .expect("mount");
    if !mounted.status.success() {
        let why = String::from_utf8_lossy(&mounted.stderr);
        assert!(
            why.contains("permission denied") || why.contains("not permitted"),
            "mount failed: {why}"
        );
        eprintln!("SKIPPED: a tmpfs cannot be mounted here: {why}");
        return;
    }
    let _disk = SmallDisk(mount.clone());
    let d = destination::open(
        &format!("file://{}", mount.join("dest").display()),
        &S3Options::default(),
    )
    .await
    .expect("open");
    let files = || {
        let mut found = Vec::new();
        let mut stack = vec![mount.clone()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).expect("read_dir").flatten() {
                if e.file_type().expect("type").is_dir() {
                    stack.push(e.path());
                } else {
                    found.push(e.path());
                }
            }
        }
        found
    };
    let mut up = d.upload("backups/big.mbk").await.expect("upload");
    let failed = match up.write_part(vec![7; 256 * 1024]).await {
        Err(e) => {
            up.abort().await;
            e
        }
        Ok(()) => up
            .complete()
            .await
            .expect_err("256 KiB do not fit in 64 KiB"),
    };
    assert!(
        failed.to_string().contains("No space left on device"),
        "{failed}"
    );
    assert_eq!(files(), Vec::<std::path::PathBuf>::new(), "nothing is left");
    let failed = d
        .put("backups/big.manifest.json", vec![b' '; 256 * 1024])
        .await
        .expect_err("does not fit");
    assert!(
        failed.to_string().contains("No space left on device"),
        "{failed}"
    );
    assert_eq!(files(), Vec::<std::path::PathBuf>::new(), "nothing is left");
    // What fits still goes.
    d.put("backups/small.json", b"{}".to_vec())
        .await
        .expect("a small object fits");
}

fn s3_opts(endpoint: &str) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.to_string()),
        ..Default::default()
    }
}

fn set_test_credentials() {
    // Set once for the whole test binary; every S3 test uses moto's test credentials.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    });
}

#[tokio::test]
async fn s3_destination_passes_the_suite() {
    if let Some(endpoint) = service_env("TEST_S3_ENDPOINT") {
        s3_suite(endpoint).await;
    }
}

/// The same suite against versitygw, which checks SigV4 signatures and serves ranged and
/// concurrent requests as a production S3 gateway does.
#[tokio::test]
async fn versitygw_destination_passes_the_suite() {
    if let Some(endpoint) = service_env("TEST_VERSITYGW_ENDPOINT") {
        s3_suite(endpoint).await;
    }
}

async fn s3_suite(endpoint: String) {
    set_test_credentials();
    let bucket = new_bucket(&s3_client(&endpoint)).await;
    let d = destination::open(&format!("s3://{bucket}/team/prod"), &s3_opts(&endpoint))
        .await
        .expect("open");
    suite(d.clone()).await;
    // Everything stays under the prefix.
    let all = s3_client(&endpoint)
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("list");
    assert!(all
        .contents()
        .iter()
        .all(|o| o.key().unwrap_or("").starts_with("team/prod/")));
}

/// A lazy upload asks nothing of S3 until it must, so a missing bucket is found then: at its
/// completion (one part) or at its second part (a multipart upload begun), as the same clear
/// error as an eager upload's, and nothing is left.
#[tokio::test]
async fn s3_lazy_upload_to_a_missing_bucket_fails_when_it_first_writes() {
    let Some(endpoint) = service_env("TEST_S3_ENDPOINT") else {
        return;
    };
    set_test_credentials();
    let d = destination::open("s3://no-such-bucket-mbk/x", &s3_opts(&endpoint))
        .await
        .expect("open");
    let missing = |err: DestinationError| {
        assert!(matches!(err, DestinationError::Missing(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("bucket no-such-bucket-mbk does not exist"),
            "{err}"
        );
    };
    let mut up = d
        .upload_lazily("backups/one.mbk")
        .await
        .expect("nothing asked yet");
    up.write_part(vec![1; 1000])
        .await
        .expect("held, nothing sent");
    missing(
        up.complete()
            .await
            .expect_err("completed into a missing bucket"),
    );
    let mut up = d
        .upload_lazily("backups/two.mbk")
        .await
        .expect("nothing asked yet");
    up.write_part(vec![2; destination::PART_SIZE])
        .await
        .expect("held, nothing sent");
    missing(
        up.write_part(vec![3; 10])
            .await
            .expect_err("a second part starts the multipart upload"),
    );
    up.abort().await;
}

#[tokio::test]
async fn s3_missing_bucket_and_wrong_credentials_fail_at_once_with_clear_errors() {
    let Some(endpoint) = service_env("TEST_S3_ENDPOINT") else {
        return;
    };
    set_test_credentials();
    let d = destination::open("s3://no-such-bucket-mbk/x", &s3_opts(&endpoint))
        .await
        .expect("open");
    let start = std::time::Instant::now();
    let err = d.probe().await.expect_err("missing bucket");
    assert!(matches!(err, DestinationError::Missing(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("bucket no-such-bucket-mbk does not exist"),
        "{err}"
    );
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "a permanent error is not retried"
    );
    // A moto that enforces authentication: unknown keys are refused with 403.
    let (_moto, strict) = start_moto(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let d = destination::open("s3://some-bucket/x", &s3_opts(&strict))
        .await
        .expect("open");
    let err = d.probe().await.expect_err("bad credentials");
    assert!(
        matches!(err, DestinationError::PermissionDenied(_)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("access denied by the destination"),
        "{err}"
    );
    // TLS to an endpoint that speaks plain HTTP: the error says what to change.
    let https = format!("https://{}", endpoint.trim_start_matches("http://"));
    let d = destination::open("s3://some-bucket/x", &s3_opts(&https))
        .await
        .expect("open");
    let err = d.probe().await.expect_err("no TLS there");
    assert!(matches!(err, DestinationError::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string().ends_with(
            "(the endpoint answers without TLS: give it as http://HOST:PORT, or set --s3-disable-ssl / S3_DISABLE_SSL)"
        ),
        "{err}"
    );
}
