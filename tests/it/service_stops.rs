//! How a backup stops: at its timeout, when a peer goes away or never answers, on SIGTERM or
//! Ctrl-C, and beside a second process sharing the catalog; each leaves nothing half-written
//! and records why.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::service::status_after_backup;
use monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient;
use monoskope_backup_client::{pb, ClientError};
use monoskope_backup_tests::fixture::{client, devstore_with, large_events, serve};
use monoskope_backup_tests::{
    command, keygen, new_bucket, run, s3_client, service_env, start_moto, Devstore, S3_ENV,
};

#[tokio::test]
async fn a_timeout_fails_the_backup_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let ds = devstore_with(30_000).await;
    let dest_dir = dir.path().join("dest");
    let dest = format!("file://{}", dest_dir.display());
    let out = run(
        "backup-server",
        &[
            "backup",
            "--timeout",
            "50ms",
            "--event-store",
            &ds.addr,
            "--destination",
            &dest,
            "--key-file",
            &key,
            "--catalog",
            &format!("sqlite://{}", dir.path().join("c.db").display()),
        ],
        &[],
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("timed out after 50ms"),
        "{}",
        out.stderr
    );
    let left: Vec<_> = std::fs::read_dir(dest_dir.join("backups"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "a failed backup leaves no archive, manifest or staged file: {left:?}"
    );
    let listed = run(
        "backup-server",
        &["list", "--destination", &dest, "--json"],
        &[],
    );
    // Nothing there at all: `list` says so (exit 9), no empty list that hides a wrong path.
    assert_eq!(listed.code, Some(9), "{listed:?}");
    assert!(listed.stdout.is_empty(), "{listed:?}");
}

/// An EventStore that takes connections and never answers (a hung process, a stuck database
/// behind it): the backup fails at its timeout, and the next one is not refused as busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_store_that_never_answers_fails_the_backup_at_its_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let hung_addr = monoskope_backup_tests::silent_peer();
    let dest_dir = dir.path().join("dest");
    let dest = format!("file://{}", dest_dir.display());
    let catalog = format!("sqlite://{}", dir.path().join("c.db").display());
    let s = serve(&hung_addr, &dest, &catalog, &key, &["--timeout", "2s"]);
    let mut c = client(&s).await;
    for attempt in 0..2 {
        let b = tokio::time::timeout(Duration::from_secs(60), c.create_backup(true, false))
            .await
            .expect("CreateBackup{wait} returns")
            .expect("a backup record, not a refusal");
        assert_eq!(b.state, pb::OperationState::Failed as i32, "{attempt}");
        assert_eq!(
            b.error, "timed out after 2s (the EventStore did not answer Retrieve); the upload was aborted and nothing is left at the destination",
            "{attempt}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(dest_dir.join("backups"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing staged is left: {left:?}");
}

/// The catalog's PostgreSQL goes away while the service runs: calls that need it fail with
/// UNAVAILABLE and the reason ("Connection refused"), not only "pool timed out".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_database_gone_while_serving_is_named_with_its_reason() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let ds = devstore_with(10).await;
    let catalog = monoskope_backup_tests::fresh_db(&pg, "catalog").await;
    // postgres://USER@HOST:PORT/DB, through a proxy that can go away.
    let (user, rest) = catalog.split_once('@').expect("user@");
    let (host_port, db) = rest.split_once('/').expect("/db");
    let (proxy, gone) = dying_proxy(host_port.to_string(), u64::MAX).await;
    let proxied = format!("{user}@{}/{db}", proxy.trim_start_matches("http://"));
    let dest = format!("file://{}", dir.path().join("dest").display());
    let s = serve(&ds.addr, &dest, &proxied, &key, &[]);
    let mut c = client(&s).await;
    c.get_status()
        .await
        .expect("status while the catalog is there");
    gone.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // (The generated client: BackupClient retries GetStatus on UNAVAILABLE.)
    let mut raw = pb::backup_service_client::BackupServiceClient::connect(s.url())
        .await
        .expect("connect");
    match raw.get_status(pb::GetStatusRequest {}).await {
        Err(st) if st.code() == tonic::Code::Unavailable => assert!(
            st.message().starts_with("catalog: ")
                && st.message().ends_with("Connection refused (os error 111)"),
            "{}",
            st.message()
        ),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    match c.create_backup(true, false).await {
        Err(ClientError::Unavailable(m)) => assert!(
            m.starts_with("catalog: ") && m.ends_with("Connection refused (os error 111)"),
            "{m}"
        ),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
}

/// A loopback TCP proxy in front of an S3 server that dies (closes every connection and stops
/// listening) once `limit` request bytes have passed: the S3 endpoint disappearing mid-upload.
async fn dying_proxy(target: String, limit: u64) -> (String, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let dead = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let d = dead.clone();
    tokio::spawn(async move {
        let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
        loop {
            tokio::select! {
                acc = listener.accept() => {
                    let Ok((mut inbound, _)) = acc else { break };
                    if d.load(Ordering::SeqCst) { break; }
                    let target = target.clone();
                    let (sent, d, tx2) = (sent.clone(), d.clone(), tx.clone());
                    let mut rx = tx.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(target.trim_start_matches("http://")).await else { return };
                        let (mut ri, mut wi) = inbound.split();
                        let (mut ro, mut wo) = outbound.split();
                        let up = async {
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                let n = tokio::io::AsyncReadExt::read(&mut ri, &mut buf).await.unwrap_or(0);
                                if n == 0 { break; }
                                if sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > limit {
                                    d.store(true, Ordering::SeqCst);
                                    let _ = tx2.send(());
                                    break;
                                }
                                if tokio::io::AsyncWriteExt::write_all(&mut wo, &buf[..n]).await.is_err() { break; }
                            }
                        };
                        let down = tokio::io::copy(&mut ro, &mut wi);
                        tokio::select! { _ = up => {}, _ = down => {}, _ = rx.recv() => {} }
                    });
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    if d.load(Ordering::SeqCst) { break; }
                }
            }
        }
        let _ = tx.send(());
    });
    (format!("http://{addr}"), dead)
}

// Multi-threaded: the proxy's tasks must run while the test waits on the backup process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_endpoint_dying_mid_upload_fails_cleanly_and_a_later_backup_succeeds() {
    let Some(_) = service_env("TEST_S3_ENDPOINT") else {
        return;
    };
    let (_moto, endpoint) = start_moto(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let ds = Devstore::start(&["--max-message-size", "33554432"]);
    let mut c = EventStoreClient::connect(ds.url()).await.expect("connect");
    let events = large_events(200, 2);
    c.store(tokio_stream::iter(events)).await.expect("store");
    let s3 = s3_client(&endpoint);
    let bucket = new_bucket(&s3).await;
    let (proxy, dead) = dying_proxy(endpoint.clone(), 10 * 1024 * 1024).await;
    let dest = format!("s3://{bucket}/prefix");
    let catalog = format!("sqlite://{}", dir.path().join("c.db").display());
    let common = |ep: &str| -> Vec<String> {
        [
            "--event-store",
            &ds.addr,
            "--destination",
            &dest,
            "--s3-endpoint",
            ep,
            "--catalog",
            &catalog,
            "--key-file",
            &key,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args: Vec<String> = [vec!["backup".to_string()], common(&proxy)].concat();
    let out = run(
        "backup-server",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        S3_ENV,
    );
    assert!(
        dead.load(Ordering::SeqCst),
        "the endpoint died during the upload"
    );
    assert_eq!(out.code, Some(3), "unreachable: {}", out.stdout);
    assert!(
        out.stderr.contains("uploading the archive failed")
            && out.stderr.contains("destination unavailable"),
        "{}",
        out.stderr
    );
    let objects = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("list");
    assert!(
        objects.contents().is_empty(),
        "no archive and no manifest for the failed backup: {:?}",
        objects.contents()
    );
    // The same service, the endpoint back: the next backup succeeds.
    let args: Vec<String> = [vec!["backup".to_string()], common(&endpoint)].concat();
    let out = run(
        "backup-server",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        S3_ENV,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let listed = run(
        "backup-server",
        &[
            "list",
            "--json",
            "--destination",
            &dest,
            "--s3-endpoint",
            &endpoint,
        ],
        S3_ENV,
    );
    let list: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).expect("json");
    assert_eq!(list.len(), 1, "only the successful backup is listed");
}

/// Every process sharing a catalog takes its operation lease: a one-shot `backup-server backup`
/// started while the service's backup runs is refused in one line naming that backup, and does
/// not take the service's RUNNING record for one a dead process left (it used to mark it
/// FAILED on opening the catalog); a one-shot backup's run shows in the service's GetStatus and
/// refuses its CreateBackup. A lease its holder stopped renewing is taken over, and the dead
/// holder's RUNNING record is marked FAILED then.
#[tokio::test]
async fn a_second_process_on_the_catalog_waits_its_turn_and_leaves_a_running_backup_alone() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let ds = devstore_with(2_000).await;
    let slow = super::ops::slow_proxy(ds.addr.clone(), Duration::from_secs(3)).await;
    let dest = format!("file://{}", dir.path().join("dest").display());
    let catalog = monoskope_backup_tests::fresh_db(&pg, "catalog").await;
    let s = serve(&slow, &dest, &catalog, &key, &[]);
    let running = client(&s)
        .await
        .create_backup(false, false)
        .await
        .expect("service backup");
    let one_shot = [
        "backup",
        "--event-store",
        &ds.addr,
        "--destination",
        &dest,
        "--catalog",
        &catalog,
        "--key-file",
        &key,
    ];
    let refused = run("backup-server", &one_shot, &[]);
    assert_eq!(refused.code, Some(8), "busy: {refused:?}");
    let line = refused.stderr.trim();
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    assert!(
        line.contains(&format!(
            "another process runs an operation against this catalog: backup {} (process ",
            running.id
        )),
        "{line}"
    );
    let db = sqlx::PgPool::connect(&catalog).await.expect("catalog");
    let state = |id: String| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT state FROM backups WHERE id = $1")
                .bind(id)
                .fetch_one(&db)
                .await
                .expect("record")
        }
    };
    assert_eq!(
        state(running.id.clone()).await,
        "running",
        "the service's backup still runs, and the catalog says so"
    );
    let done = status_after_backup(&s).await;
    assert_eq!(
        done.last_success
            .expect("the service's backup succeeded")
            .id,
        running.id
    );
    assert_eq!(state(running.id.clone()).await, "succeeded");
    // Its turn now.
    let ok = run("backup-server", &one_shot, &[]);
    assert_eq!(ok.code, Some(0), "{ok:?}");

    // The other way round: a one-shot backup runs (for 8 s: longer than two GetStatus calls,
    // whose probe of the event store goes through the 3 s proxy; less than the 10 s connect
    // timeout), the service reports it in GetStatus (without progress, which only that process
    // knows) and refuses CreateBackup naming it.
    let slower = super::ops::slow_proxy(ds.addr.clone(), Duration::from_secs(8)).await;
    let mut slow_shot = one_shot.to_vec();
    slow_shot[2] = &slower;
    let mut child = command("backup-server", &slow_shot)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("one-shot backup");
    // backupctl shows it too (asked at once, beside the loop below: each status call takes the
    // 3 s proxy's time, and the one-shot runs for 8 s).
    let db_ref = &db;
    monoskope_backup_tests::wait_for_async(Duration::from_secs(2), || async move {
        let leased: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM operation_lease")
            .fetch_one(db_ref)
            .await
            .expect("lease");
        (leased > 0).then_some(())
    })
    .await;
    let shown = tokio::task::spawn_blocking({
        let url = s.url();
        move || run("backupctl", &["--server", &url, "status"], &[])
    });
    let mut c = client(&s).await;
    let mut seen = None;
    while seen.is_none() && child.try_wait().expect("one-shot").is_none() {
        seen = c.get_status().await.expect("status").running_backup;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.expect("GetStatus reports the one-shot backup while it runs");
    assert_eq!(seen.state, pb::OperationState::Running as i32);
    assert!(seen.progress.is_none());
    let shown = shown.await.expect("join");
    assert!(
        shown.stdout.lines().any(|l| l
            == format!(
                "running           backup {} (by {}, in another process sharing the catalog)",
                seen.id, seen.created_by
            )),
        "{shown:?}"
    );
    let refused = c.create_backup(false, false).await;
    // Waited for off the runtime's thread, which the proxies run on.
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("one-shot ends");
    match refused {
        // FAILED_PRECONDITION with reason busy.
        Err(ClientError::Busy(m)) => {
            assert!(m.contains(&format!("backup {} (process ", seen.id)), "{m}")
        }
        other => {
            panic!("expected FAILED_PRECONDITION (busy), got {other:?}; the one-shot: {out:?}")
        }
    }
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().last(), Some(seen.id.as_str()));
    assert!(c
        .get_status()
        .await
        .expect("status")
        .running_backup
        .is_none());

    // A one-shot backup killed (SIGKILL) while it runs: the next one on this host starts at
    // once (the dead process's lease is not waited out) and marks its record FAILED. Killed
    // once its record is written (it takes the lease first, then writes the record).
    let mut killed = command("backup-server", &slow_shot)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("one-shot backup");
    let mut held = None;
    for _ in 0..100 {
        held = sqlx::query_scalar::<_, String>(
            "SELECT l.operation_id FROM operation_lease l JOIN backups b ON b.id = l.operation_id",
        )
        .fetch_optional(&db)
        .await
        .expect("lease");
        if held.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = held.expect("the one-shot took the lease and wrote its record");
    killed.kill().expect("SIGKILL");
    killed.wait().expect("reaped");
    let after = run("backup-server", &one_shot, &[]);
    assert_eq!(after.code, Some(0), "{after:?}");
    assert_eq!(state(held.clone()).await, "failed", "{held}");

    // A process of another host that died holding the lease: its lease is taken over once it
    // went unrenewed for longer than it lasts, and its RUNNING record is marked FAILED.
    let stale = chrono::Utc::now().timestamp_millis() - 120_000;
    sqlx::query("INSERT INTO operation_lease (slot, holder, kind, operation_id, acquired_at, renewed_at_ms) VALUES (1, 'gone-host:4242:deadbeef', 'backup', '20261124T000000000Z-deadbeef', '2026-11-24T00:00:00.000Z', $1)")
        .bind(stale)
        .execute(&db)
        .await
        .expect("stale lease");
    sqlx::query("INSERT INTO backups (id, kind, state, created_at, created_by, source, event_count, archive_bytes) VALUES ('20261124T000000000Z-deadbeef', 'full', 'running', '2026-11-24T00:00:00.000Z', 'gone', 'test', 0, 0)")
        .execute(&db)
        .await
        .expect("its running record");
    let again = run("backup-server", &one_shot, &[]);
    assert_eq!(again.code, Some(0), "{again:?}");
    let (dead_state, dead_error): (String, Option<String>) = sqlx::query_as(
        "SELECT state, error FROM backups WHERE id = '20261124T000000000Z-deadbeef'",
    )
    .fetch_one(&db)
    .await
    .expect("record");
    assert_eq!(dead_state, "failed");
    assert!(
        dead_error.unwrap_or_default().starts_with("interrupted"),
        "says why"
    );
    let leases: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM operation_lease")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(leases, 0, "every process gave its lease back");
}

/// The entries of `dir` once it has one (within 30 s): a backup has started its upload.
async fn staged(dir: &Path) -> Vec<std::ffi::OsString> {
    for _ in 0..600 {
        let entries: Vec<_> = std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        if !entries.is_empty() {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing staged in {} within 30 s", dir.display());
}

/// SIGTERM (a pod stopped) or Ctrl-C during a backup interrupts it cleanly: the upload is
/// aborted (nothing staged is left), the catalog records it FAILED with the signal, the lease
/// is given back, and the one-shot command ends with one line and exit 1; a service ends the
/// waiting CreateBackup call with the FAILED record and exits 0.
#[tokio::test]
async fn sigterm_or_ctrl_c_during_a_backup_leaves_nothing_and_records_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    // A store that takes the connection and never answers: the backup waits on it.
    let hung = monoskope_backup_tests::silent_peer();
    for sig in ["TERM", "INT"] {
        let dest_dir = dir.path().join(format!("dest-{sig}"));
        let catalog = format!(
            "sqlite://{}",
            dir.path().join(format!("{sig}.db")).display()
        );
        let child = command(
            "backup-server",
            &[
                "backup",
                "--event-store",
                &hung,
                "--destination",
                &format!("file://{}", dest_dir.display()),
                "--catalog",
                &catalog,
                "--key-file",
                &key,
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("backup");
        let backups = dest_dir.join("backups");
        let seen = staged(&backups).await;
        assert!(
            seen.iter()
                .all(|n| n.to_string_lossy().starts_with(".upload-")),
            "{seen:?}"
        );
        monoskope_backup_tests::signal(child.id(), sig);
        let out = monoskope_backup_tests::output_of(child, Duration::from_secs(30)).await;
        assert_eq!(out.code, Some(1), "SIG{sig}: {out:?}");
        let last = out.stderr.trim().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("backup-server: error: backup ")
                && last.ends_with(&format!(" failed: interrupted by SIG{sig}; the upload was aborted and nothing is left at the destination")),
            "{last}"
        );
        let left: Vec<_> = std::fs::read_dir(&backups)
            .expect("dest")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "SIG{sig}: left {left:?}");
        let db = sqlx::SqlitePool::connect(&catalog).await.expect("catalog");
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT state, error FROM backups")
                .fetch_all(&db)
                .await
                .expect("records");
        assert_eq!(
            rows,
            vec![(
                "failed".to_string(),
                Some(format!("interrupted by SIG{sig}; the upload was aborted and nothing is left at the destination"))
            )]
        );
        let leases: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM operation_lease")
            .fetch_one(&db)
            .await
            .expect("leases");
        assert_eq!(leases, 0, "SIG{sig}: the lease was given back");
    }

    // The service: SIGTERM while a CreateBackup{wait} waits for its backup.
    let dest_dir = dir.path().join("dest-serve");
    let catalog = format!("sqlite://{}", dir.path().join("serve.db").display());
    let mut s = serve(
        &hung,
        &format!("file://{}", dest_dir.display()),
        &catalog,
        &key,
        &[],
    );
    let mut c = client(&s).await;
    let call = tokio::spawn(async move { c.create_backup(true, false).await });
    staged(&dest_dir.join("backups")).await;
    monoskope_backup_tests::signal(s.proc.child.id(), "TERM");
    let b = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("CreateBackup{wait} returns")
        .expect("join")
        .expect("the backup's record");
    assert_eq!(b.state, pb::OperationState::Failed as i32, "{b:?}");
    assert_eq!(
        b.error,
        "interrupted by SIGTERM; the upload was aborted and nothing is left at the destination"
    );
    let mut exited = None;
    for _ in 0..600 {
        exited = s.proc.child.try_wait().expect("wait");
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exited = exited.expect("serve exits within 30 s of SIGTERM");
    assert!(exited.success(), "{exited:?}");
    let left: Vec<_> = std::fs::read_dir(dest_dir.join("backups"))
        .expect("dest")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left {left:?}");
}

/// Ctrl-C on `backupctl create --wait` stops the waiting, not the backup: one line says the
/// backup goes on in the service, which completes it.
#[tokio::test]
async fn ctrl_c_on_backupctl_create_wait_leaves_the_backup_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let ds = devstore_with(100).await;
    // Each connection to the store waits 3 s: the backup runs long enough to be interrupted.
    let slow = super::ops::slow_proxy(ds.addr.clone(), Duration::from_secs(3)).await;
    let dest = format!("file://{}", dir.path().join("dest").display());
    let catalog = format!("sqlite://{}", dir.path().join("c.db").display());
    let s = serve(&slow, &dest, &catalog, &key, &[]);
    let child = command("backupctl", &["--server", &s.url(), "create", "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("backupctl");
    // The backup has started its upload (and backupctl waits for it).
    staged(&dir.path().join("dest/backups")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    monoskope_backup_tests::signal(child.id(), "INT");
    let out = monoskope_backup_tests::output_of(child, Duration::from_secs(30)).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        "backupctl: error: SIGINT: stopped waiting; the backup goes on in the service (`backupctl status` follows it)"
    );
    let done = status_after_backup(&s).await;
    let b = done.last_success.expect("the backup completed");
    assert_eq!(b.event_count, 100, "{b:?}");
    assert!(done.last_failure.is_none(), "{:?}", done.last_failure);
}
