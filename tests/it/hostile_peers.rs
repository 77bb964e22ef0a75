//! What an adversarial run found (issue 26), about peers: a URL's password never reaches a log,
//! and a backup stuck in an S3 upload ends at its timeout or on SIGTERM, leaving nothing.

use std::process::Stdio;
use std::time::{Duration, Instant};

use monoskope_backup_client::{BackupClient, ClientOptions};
use monoskope_backup_tests::proxy::{Fault, FaultProxy};
use monoskope_backup_tests::{
    command, keygen, new_bucket, output_of, s3_client, service_env, signal, wait_for, Devstore,
    S3_ENV,
};

#[allow(unused_imports)]
use super::hostile::*;

/// Runs `cmd` and returns its standard error (both log formats are tried by the caller).
fn stderr_of(mut cmd: std::process::Command, limit: Duration) -> String {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let out = monoskope_backup_tests::output_within(cmd, limit);
    out.stderr
}

#[test]
fn passwords_in_urls_never_reach_a_log() {
    let p = Place::new();
    let src = Devstore::start(&["--seed-sample", "20"]);
    let secret = "s3cr3t-PASS";
    let url = |scheme: &str, rest: &str| format!("{scheme}://user:{secret}@{rest}");
    let catalog = p.catalog();
    // Each URL the service takes, carrying a password to a peer that is not there.
    let one_shot: Vec<(&str, Vec<String>)> = vec![
        (
            "Pushgateway",
            vec!["--pushgateway-url".into(), url("http", "127.0.0.1:1")],
        ),
        (
            "events database",
            vec![
                "--events-db".into(),
                url(
                    "postgres",
                    "127.0.0.1:1/events?sslmode=disable&password=other-s3cr3t-PASS",
                ),
            ],
        ),
        (
            "catalog",
            vec!["--catalog".into(), url("postgres", "127.0.0.1:1/catalog")],
        ),
        (
            "S3 endpoint",
            vec![
                "--destination".into(),
                "s3://bucket/prefix".into(),
                "--s3-endpoint".into(),
                url("http", "127.0.0.1:1"),
            ],
        ),
    ];
    for format in ["text", "json"] {
        for (what, extra) in &one_shot {
            let mut args: Vec<String> = vec![
                "--log-format".into(),
                format.into(),
                "backup".into(),
                "--event-store".into(),
                src.addr.clone(),
                "--key-file".into(),
                p.key.clone(),
            ];
            if !extra.iter().any(|a| a == "--destination") {
                args.extend(["--destination".into(), p.dest.clone()]);
            }
            if !extra.iter().any(|a| a == "--catalog") {
                args.extend(["--catalog".into(), catalog.clone()]);
            }
            args.extend(extra.iter().cloned());
            let mut cmd = command(
                "backup-server",
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            );
            cmd.env("RUST_LOG", "info");
            for (k, v) in S3_ENV {
                cmd.env(k, v);
            }
            let err = stderr_of(cmd, Duration::from_secs(120));
            assert!(!err.contains("s3cr3t"), "{what} ({format}): {err}");
            assert!(
                err.contains("a password is given inside a URL on the command line"),
                "{what} ({format}): {err}"
            );
        }
        // From the environment: masked the same, and no command-line warning.
        let mut cmd = command(
            "backup-server",
            &[
                "--log-format",
                format,
                "backup",
                "--event-store",
                &src.addr,
                "--key-file",
                &p.key,
                "--destination",
                &p.dest,
                "--catalog",
                &catalog,
            ],
        );
        cmd.env("RUST_LOG", "info")
            .env("BACKUP_PUSHGATEWAY_URL", url("http", "127.0.0.1:1"));
        let err = stderr_of(cmd, Duration::from_secs(120));
        assert!(
            err.contains("Pushgateway") && !err.contains("s3cr3t"),
            "{format}: {err}"
        );
        assert!(!err.contains("on the command line"), "{format}: {err}");
        // The service's gateway and JWKS URLs.
        for (flag, value) in [
            ("--jwks-url", url("http", "127.0.0.1:1/keys")),
            ("--gateway", url("http", "127.0.0.1:1")),
        ] {
            let log = p.dir.path().join(format!("serve-{format}{flag}.log"));
            let file = std::fs::File::create(&log).expect("log");
            let auth = if flag == "--jwks-url" {
                "jwt"
            } else {
                "gateway"
            };
            let listen = format!("127.0.0.1:{}", monoskope_backup_tests::free_port());
            let mut cmd = command(
                "backup-server",
                &[
                    "--log-format",
                    format,
                    "serve",
                    "--listen",
                    &listen,
                    "--auth",
                    auth,
                    flag,
                    &value,
                    "--event-store",
                    &src.addr,
                    "--destination",
                    &p.dest,
                    "--key-file",
                    &p.key,
                    "--catalog",
                    &catalog,
                ],
            );
            cmd.env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::from(file));
            let proc = monoskope_backup_tests::Proc {
                child: cmd.spawn().expect("spawn"),
            };
            // A call with a token makes the service ask its gateway or JWKS (whether it started
            // or refused the URL, its log is read).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                for _ in 0..50 {
                    let opts = ClientOptions::new(format!("http://{listen}"))
                        .with_token("eyJhbGciOiJSUzI1NiJ9.e30.c2ln");
                    if let Ok(mut c) = BackupClient::connect(&opts).await {
                        let _ = c.get_status().await;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            std::thread::sleep(Duration::from_millis(300));
            drop(proc);
            let err = std::fs::read_to_string(&log).expect("log");
            assert!(!err.contains("s3cr3t"), "{flag} ({format}): {err}");
            assert!(
                err.contains("a password is given inside a URL on the command line"),
                "{flag} ({format}): {err}"
            );
        }
    }
}

/// Starts a one-shot backup of `ds` to `dest` through the S3 endpoint `endpoint` with
/// `--timeout timeout`, its output piped. Through the test's proxy, which holds every connection
/// once it carried 64 KiB, the archive's part hangs while small requests pass.
fn spawn_backup(
    ds: &Devstore,
    dest: &str,
    endpoint: &str,
    catalog: &str,
    key: &str,
    timeout: &str,
) -> std::process::Child {
    let mut cmd = command(
        "backup-server",
        &[
            "backup",
            "--event-store",
            &ds.addr,
            "--destination",
            dest,
            "--s3-endpoint",
            endpoint,
            "--catalog",
            catalog,
            "--key-file",
            key,
            "--timeout",
            timeout,
        ],
    );
    for (k, v) in S3_ENV {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

#[tokio::test]
async fn a_timeout_or_a_signal_ends_a_backup_stuck_in_its_upload() {
    let Some(endpoint) = service_env("TEST_S3_ENDPOINT") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let ds = Devstore::start(&[]);
    // Events with random payloads, so the archive is larger than the proxy lets through.
    store(&ds, sample(20_000, 9)).await;
    let s3 = s3_client(&endpoint);
    let bucket = new_bucket(&s3).await;
    let dest = format!("s3://{bucket}/p");
    let catalog_path = dir.path().join("c.db");
    let catalog = format!("sqlite://{}", catalog_path.display());
    let proxy = FaultProxy::start(endpoint.trim_start_matches("http://"));
    let through = format!("http://{}", proxy.addr);
    let uploads = || async {
        s3.list_multipart_uploads()
            .bucket(&bucket)
            .send()
            .await
            .expect("list uploads")
            .uploads()
            .len()
    };
    let state = || async {
        let pool = sqlx::SqlitePool::connect(&catalog).await.expect("catalog");
        let running: i64 =
            sqlx::query_scalar("SELECT count(*) FROM backups WHERE state = 'running'")
                .fetch_one(&pool)
                .await
                .expect("running");
        let failed: Vec<String> =
            sqlx::query_scalar("SELECT error FROM backups WHERE state = 'failed' ORDER BY id")
                .fetch_all(&pool)
                .await
                .expect("failed");
        let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM operation_lease")
            .fetch_one(&pool)
            .await
            .expect("lease");
        (running, failed, leases)
    };

    // The timeout: 5 s, and the backup ends within it and the clean-up's 5 s.
    proxy.set(Fault::StallAfter(64 * 1024));
    let started = Instant::now();
    let out = output_of(
        spawn_backup(&ds, &dest, &through, &catalog, &key, "5s"),
        Duration::from_secs(60),
    )
    .await;
    let took = started.elapsed();
    assert!(proxy.tripped() > 0, "the upload stalled");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(took < Duration::from_secs(20), "ended in {took:?}: {out:?}");
    assert!(
        out.stderr.contains("timed out after 5s")
            && out
                .stderr
                .contains("the upload was aborted and nothing is left at the destination"),
        "{out:?}"
    );
    assert_eq!(uploads().await, 0, "the multipart upload was aborted");
    let (running, failed, leases) = state().await;
    assert_eq!((running, leases), (0, 0), "record ended, lease given back");
    assert_eq!(failed.len(), 1);
    assert!(failed[0].contains("timed out after 5s"), "{failed:?}");

    // SIGTERM while the upload hangs: the same end, within the grace period.
    let tripped = proxy.tripped();
    let child = spawn_backup(&ds, &dest, &through, &catalog, &key, "10m");
    assert!(
        wait_for(Duration::from_secs(60), || (proxy.tripped() > tripped)
            .then_some(()))
        .is_some(),
        "the upload stalled"
    );
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    signal(child.id(), "TERM");
    let out = output_of(child, Duration::from_secs(60)).await;
    let took = started.elapsed();
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        took < Duration::from_secs(20),
        "ended {took:?} after SIGTERM: {out:?}"
    );
    assert!(out.stderr.contains("interrupted by SIGTERM"), "{out:?}");
    assert_eq!(uploads().await, 0, "the multipart upload was aborted");
    let (running, failed, leases) = state().await;
    assert_eq!((running, leases), (0, 0), "record ended, lease given back");
    assert_eq!(failed.len(), 2);
    // The endpoint answering again, a backup succeeds and is the only one listed.
    proxy.set(Fault::None);
    let out = output_of(
        spawn_backup(&ds, &dest, &through, &catalog, &key, "5m"),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let objects = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("list");
    assert_eq!(
        objects.contents().len(),
        4,
        "archive, key file, watermark and manifest of one backup: {:?}",
        objects.contents()
    );
}
