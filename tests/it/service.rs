//! The BackupService and its one-shot commands end to end: real binaries, the embedded
//! EventStore, a real S3 server and PostgreSQL on loopback. How backups stop (timeouts, peers
//! that go away, signals, a second process): `service_stops.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient;
use monoskope_backup_api::eventsourcing::Event;
use monoskope_backup_client::{pb, ClientError};
use monoskope_backup_tests::fixture::{client, devstore_with, inspect_lines, large_events, serve};
use monoskope_backup_tests::{
    keygen, new_bucket, openssl, run, s3_client, service_env, Devstore, Server, S3_ENV,
};

#[tokio::test]
async fn serve_backupctl_and_reflection_on_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let ds = devstore_with(3000).await;
    let dest = format!("file://{}", dir.path().join("dest").display());
    let catalog = format!("sqlite://{}", dir.path().join("catalog.db").display());
    let s = serve(&ds.addr, &dest, &catalog, &key, &["--retention-count", "2"]);

    // Reflection lists the service (what `grpcurl -plaintext HOST:PORT list` shows).
    let services = reflection_services(&s.url()).await;
    assert!(
        services.contains(&"monoskope.backup.v1.BackupService".to_string()),
        "{services:?}"
    );
    assert!(
        services.contains(&"grpc.health.v1.Health".to_string()),
        "{services:?}"
    );
    assert!(
        !services.contains(&"eventsourcing.EventStore".to_string()),
        "only served services are listed: {services:?}"
    );
    // The same through reflection v1alpha (grpcurl before 1.8.8, older tools), on the service
    // and on the embedded EventStore.
    assert_eq!(reflection_services_v1alpha(&s.url()).await, services);
    let store = reflection_services_v1alpha(&ds.url()).await;
    assert!(
        store.contains(&"eventsourcing.EventStore".to_string())
            && store.contains(&"grpc.reflection.v1alpha.ServerReflection".to_string()),
        "{store:?}"
    );

    let ctl = |args: &[&str]| run("backupctl", &[&["--server", &s.url()], args].concat(), &[]);
    let created = ctl(&["create", "--wait"]);
    assert_eq!(created.code, Some(0), "{}", created.stderr);
    let first_id = created.stdout.lines().last().expect("id line").to_string();
    for _ in 0..2 {
        assert_eq!(ctl(&["create", "--wait"]).code, Some(0));
    }
    let listed = ctl(&["list", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).expect("json");
    assert_eq!(list.len(), 2, "retention keeps the newest 2: {list:?}");
    assert!(list
        .iter()
        .all(|b| b["events"] == 3000 && b["state"] == "succeeded"));
    assert!(
        !list.iter().any(|b| b["id"] == first_id.as_str()),
        "the oldest was deleted"
    );
    assert!(
        !dir.path()
            .join("dest/backups")
            .join(format!("{first_id}.mbk"))
            .exists(),
        "its archive is gone too"
    );
    let status: serde_json::Value =
        serde_json::from_str(&ctl(&["status", "--json"]).stdout).expect("json");
    assert_eq!(status["last_success"]["id"], list[0]["id"]);
    assert_eq!(status["event_store"]["reachable"], true);
    assert_eq!(status["destination"]["reachable"], true);
    assert_eq!(status["catalog_backups"], 2);

    // The archive holds exactly the store's events.
    let newest = list[0]["id"].as_str().expect("id");
    let lines = inspect_lines(
        &dir.path()
            .join("dest/backups")
            .join(format!("{newest}.mbk")),
        &key,
    );
    assert_eq!(lines.len(), 3000);
    // The one-shot verify agrees.
    let v = run(
        "backup-server",
        &[
            "verify",
            "--all",
            "--destination",
            &dest,
            "--key-file",
            &key,
        ],
        &[],
    );
    assert_eq!(v.code, Some(0), "{}{}", v.stdout, v.stderr);
    assert_eq!(v.stdout.lines().filter(|l| l.starts_with("ok")).count(), 2);

    // Errors as a user meets them: a server that is not there, one clear line, exit 3.
    let down = run(
        "backupctl",
        &["--server", "http://127.0.0.1:1", "status"],
        &[],
    );
    assert_eq!(down.code, Some(3), "unreachable: {down:?}");
    assert!(
        down.stderr
            .starts_with("backupctl: error: cannot connect to http://127.0.0.1:1"),
        "{}",
        down.stderr
    );
    assert_eq!(down.stderr.trim().lines().count(), 1);
}

/// The services a reflection client of protocol version `$v` (`v1`, or `v1alpha` as grpcurl
/// before 1.8.8 speaks) lists at `url`: what `grpcurl -plaintext HOST:PORT list` shows.
macro_rules! reflection_services_of {
    ($name:ident, $v:ident) => {
        pub(crate) async fn $name(url: &str) -> Vec<String> {
            use tonic_reflection::pb::$v::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$v::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$v::ServerReflectionRequest;
            let channel = tonic::transport::Endpoint::from_shared(url.to_string())
                .expect("url")
                .connect()
                .await
                .expect("connect");
            let mut c = ServerReflectionClient::new(channel);
            let req = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut resp = c
                .server_reflection_info(tokio_stream::iter(vec![req]))
                .await
                .expect("reflection")
                .into_inner();
            let msg = resp
                .message()
                .await
                .expect("message")
                .expect("one response");
            match msg.message_response {
                Some(MessageResponse::ListServicesResponse(l)) => {
                    l.service.into_iter().map(|s| s.name).collect()
                }
                other => panic!("unexpected reflection response {other:?}"),
            }
        }
    };
}
reflection_services_of!(reflection_services, v1);
reflection_services_of!(reflection_services_v1alpha, v1alpha);

/// The service's status once its running backup ended (within a minute).
pub(super) async fn status_after_backup(s: &Server) -> pb::GetStatusResponse {
    let mut watcher = client(s).await;
    for _ in 0..600 {
        let st = watcher.get_status().await.expect("status");
        if st.running_backup.is_none() {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the backup did not finish within a minute")
}

#[tokio::test]
async fn two_create_backup_at_once_one_runs_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let ds = devstore_with(20_000).await;
    let dest = format!("file://{}", dir.path().join("dest").display());
    let catalog = format!("sqlite://{}", dir.path().join("c.db").display());
    let s = serve(&ds.addr, &dest, &catalog, &key, &[]);
    let mut a = client(&s).await;
    let mut b = client(&s).await;
    let (ra, rb) = tokio::join!(a.create_backup(false, false), b.create_backup(false, false));
    let (ok, refused) = match (ra, rb) {
        (Ok(x), Err(e)) | (Err(e), Ok(x)) => (x, e),
        other => panic!("expected one success and one refusal, got {other:?}"),
    };
    assert_eq!(ok.state, pb::OperationState::Running as i32);
    match refused {
        // FAILED_PRECONDITION with reason busy.
        ClientError::Busy(m) => {
            assert_eq!(m, format!("another operation is running: backup {}", ok.id))
        }
        other => panic!("expected FAILED_PRECONDITION (busy), got {other:?}"),
    }
    // The running one finishes, and then a new one is accepted.
    let done = status_after_backup(&s).await;
    assert_eq!(done.last_success.expect("success").id, ok.id);
    assert!(a
        .create_backup(true, false)
        .await
        .expect("next backup")
        .error
        .is_empty());
}

#[tokio::test]
async fn backup_while_a_writer_stores_events_is_consistent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let ds = devstore_with(5000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, url) = (stop.clone(), written.clone(), ds.url());
        tokio::spawn(async move {
            let mut c = EventStoreClient::connect(url).await.expect("connect");
            let mut v = 0u64;
            while !stop.load(Ordering::SeqCst) {
                v += 1;
                let batch: Vec<Event> = (0..10u32)
                    .map(|a| Event {
                        r#type: "ClusterUpdated".into(),
                        timestamp: Some(prost_types::Timestamp {
                            seconds: 1_800_000_000 + v as i64,
                            nanos: a as i32,
                        }),
                        aggregate_id: format!("aaaaaaaa-0000-4000-8000-{a:012}"),
                        aggregate_type: "Cluster".into(),
                        aggregate_version: Some(v),
                        data: format!("{{\"v\": {v}}}").into_bytes(),
                        metadata: BTreeMap::new(),
                    })
                    .collect();
                c.store(tokio_stream::iter(batch)).await.expect("store");
                written.fetch_add(10, Ordering::SeqCst);
            }
        })
    };
    for _ in 0..300 {
        if written.load(Ordering::SeqCst) > 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(written.load(Ordering::SeqCst) > 200, "writer running");
    let dest = format!("file://{}", dir.path().join("dest").display());
    let args: Vec<String> = [
        "backup",
        "--event-store",
        &ds.addr,
        "--destination",
        &dest,
        "--key-file",
        &key,
        "--catalog",
        &format!("sqlite://{}", dir.path().join("c.db").display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = tokio::task::spawn_blocking(move || {
        run(
            "backup-server",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &[],
        )
    })
    .await
    .expect("join");
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let id = out.stdout.lines().last().expect("id");
    let lines = inspect_lines(
        &dir.path().join("dest/backups").join(format!("{id}.mbk")),
        &key,
    );
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for l in &lines {
        versions
            .entry(format!("{}/{}", l["aggregate_type"], l["aggregate_id"]))
            .or_default()
            .push(l["aggregate_version"].as_u64().expect("version"));
    }
    for (agg, mut vs) in versions {
        vs.sort_unstable();
        assert_eq!(
            vs,
            (1..=vs.len() as u64).collect::<Vec<_>>(),
            "{agg}: versions not gapless from 1"
        );
    }
    assert!(
        lines.len() > 5200,
        "the snapshot includes events written during the test ({})",
        lines.len()
    );
}

#[tokio::test]
async fn verify_finds_a_damaged_archive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let ds = devstore_with(2000).await;
    let dest_dir = dir.path().join("dest");
    let dest = format!("file://{}", dest_dir.display());
    let out = run(
        "backup-server",
        &[
            "backup",
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
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let id = out.stdout.lines().last().expect("id");
    let archive = dest_dir.join("backups").join(format!("{id}.mbk"));
    let mut bytes = std::fs::read(&archive).expect("archive");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&archive, bytes).expect("write");
    let v = run(
        "backup-server",
        &[
            "verify",
            "latest",
            "--destination",
            &dest,
            "--key-file",
            &key,
        ],
        &[],
    );
    assert_eq!(v.code, Some(7), "damaged: {v:?}");
    assert!(
        v.stdout.contains(&format!("FAILED  {id}: chunk "))
            && v.stdout.contains("failed authentication"),
        "{}",
        v.stdout
    );
    assert!(
        v.stdout
            .contains("archive SHA-256 differs from the manifest"),
        "{}",
        v.stdout
    );
}

#[tokio::test]
async fn s3_backup_multipart_and_resync_of_a_lost_catalog_on_postgres() {
    let (Some(endpoint), Some(pg)) = (service_env("TEST_S3_ENDPOINT"), service_env("TEST_PG_URL"))
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    // Incompressible payloads so the archive spans several 8 MiB upload parts.
    let ds = Devstore::start(&["--max-message-size", "33554432"]);
    let mut c = EventStoreClient::connect(ds.url()).await.expect("connect");
    let events = large_events(220, 1);
    c.store(tokio_stream::iter(events)).await.expect("store");
    let s3 = s3_client(&endpoint);
    let bucket = new_bucket(&s3).await;
    let catalog = monoskope_backup_tests::fresh_db(&pg, "catalog").await;
    let dest = format!("s3://{bucket}/m8/eventstore");
    let args = [
        "--event-store",
        &ds.addr,
        "--destination",
        &dest,
        "--s3-endpoint",
        &endpoint,
        "--catalog",
        &catalog,
        "--key-file",
        &key,
    ];
    let s = Server::start(&args, S3_ENV);
    let mut cl = client(&s).await;
    let b1 = cl.create_backup(true, false).await.expect("backup 1");
    assert!(b1.error.is_empty(), "{}", b1.error);
    assert!(
        b1.bytes > 16 * 1024 * 1024,
        "archive of {} bytes spans three parts",
        b1.bytes
    );
    let b2 = cl.create_backup(true, false).await.expect("backup 2");
    let before = cl.list_all(false).await.expect("list");
    assert_eq!(
        before.iter().map(|b| b.id.clone()).collect::<Vec<_>>(),
        vec![b2.id.clone(), b1.id.clone()]
    );
    drop(s);

    // The catalog database is lost: a fresh one is rebuilt from the bucket at start-up…
    sqlx::query("DROP TABLE backups")
        .execute(&sqlx::PgPool::connect(&catalog).await.expect("pg"))
        .await
        .expect("drop");
    sqlx::query("DROP TABLE _sqlx_migrations")
        .execute(&sqlx::PgPool::connect(&catalog).await.expect("pg"))
        .await
        .expect("drop");
    let s = Server::start(&args, S3_ENV);
    let after = client(&s).await.list_all(false).await.expect("list");
    let key_of = |b: &pb::Backup| {
        (
            b.id.clone(),
            b.event_count,
            b.bytes,
            b.sha256.clone(),
            b.created_by.clone(),
        )
    };
    assert_eq!(
        after.iter().map(key_of).collect::<Vec<_>>(),
        before.iter().map(key_of).collect::<Vec<_>>()
    );
    drop(s);
    // …and `catalog resync` does the same for an SQLite catalog.
    let sqlite = format!("sqlite://{}", dir.path().join("fresh.db").display());
    let r = run(
        "backup-server",
        &[
            "catalog",
            "resync",
            "--destination",
            &dest,
            "--s3-endpoint",
            &endpoint,
            "--catalog",
            &sqlite,
        ],
        S3_ENV,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("2 complete backups"), "{}", r.stdout);
    let v = run(
        "backup-server",
        &[
            "verify",
            "--all",
            "--destination",
            &dest,
            "--s3-endpoint",
            &endpoint,
            "--key-file",
            &key,
        ],
        S3_ENV,
    );
    assert_eq!(v.code, Some(0), "{}{}", v.stdout, v.stderr);
}

/// A CA and a server certificate for 127.0.0.1/localhost, made with the openssl CLI.
pub(crate) fn make_certs(dir: &Path) -> (String, String, String) {
    let sh = |args: &[&str]| {
        openssl(dir, args);
    };
    sh(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    ]);
    sh(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").expect("ext");
    sh(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let p = |f: &str| dir.join(f).to_str().expect("utf8").to_string();
    (p("ca.crt"), p("tls.crt"), p("tls.key"))
}

#[tokio::test]
async fn serve_with_tls_and_backupctl_with_a_ca_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let (ca, cert, tls_key) = make_certs(dir.path());
    let ds = devstore_with(100).await;
    let dest = format!("file://{}", dir.path().join("dest").display());
    let catalog = format!("sqlite://{}", dir.path().join("c.db").display());
    let s = serve(
        &ds.addr,
        &dest,
        &catalog,
        &key,
        &["--tls-cert", &cert, "--tls-key", &tls_key],
    );
    let url = format!(
        "https://localhost:{}",
        s.addr.rsplit(':').next().expect("port")
    );
    let ok = tokio::task::spawn_blocking({
        let (url, ca) = (url.clone(), ca.clone());
        move || {
            run(
                "backupctl",
                &["--server", &url, "--ca-file", &ca, "create", "--wait"],
                &[],
            )
        }
    })
    .await
    .expect("join");
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    let untrusted =
        tokio::task::spawn_blocking(move || run("backupctl", &["--server", &url, "status"], &[]))
            .await
            .expect("join");
    assert_eq!(
        untrusted.code,
        Some(3),
        "a server certificate from an unknown CA is refused"
    );
    assert!(
        untrusted
            .stderr
            .starts_with("backupctl: error: cannot connect to https://localhost:"),
        "{}",
        untrusted.stderr
    );
    let plain = tokio::task::spawn_blocking({
        let u = s.url();
        move || run("backupctl", &["--server", &u, "status"], &[])
    })
    .await
    .expect("join");
    assert_eq!(
        plain.code,
        Some(3),
        "plaintext to a TLS port fails: {plain:?}"
    );
    assert!(
        plain.stderr.contains("does not speak plaintext gRPC (")
            && plain.stderr.contains("if it serves TLS, use https://"),
        "{plain:?}"
    );
}

/// ListBackups pages newest first: every backup exactly once for any page size, an empty token
/// after the last page; a failed backup only with include_incomplete; a token that is not one
/// is INVALID_ARGUMENT.
#[tokio::test]
async fn list_backups_pages_through_every_backup_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let ds = devstore_with(50).await;
    let dest = format!("file://{}", dir.path().join("dest").display());
    let catalog = format!("sqlite://{}", dir.path().join("catalog.db").display());
    let s = serve(&ds.addr, &dest, &catalog, &key, &[]);
    let mut c = client(&s).await;
    let mut made = Vec::new();
    for _ in 0..5 {
        let b = c.create_backup(true, false).await.expect("backup");
        assert_eq!(b.state, pb::OperationState::Succeeded as i32, "{b:?}");
        made.push(b.id);
    }
    // The EventStore goes away: the next backup fails and is recorded so.
    drop(ds);
    let failed = c
        .create_backup(true, false)
        .await
        .expect("the failed record");
    assert_eq!(
        failed.state,
        pb::OperationState::Failed as i32,
        "{failed:?}"
    );
    made.reverse();

    for size in [1u32, 2, 3, 5, 6] {
        let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let page = c.list_backups(size, &token, false).await.expect("page");
            assert!(page.backups.len() <= size as usize, "page size {size}");
            seen.extend(page.backups.into_iter().map(|b| b.id));
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            assert!(pages < 10, "page size {size}: no end");
            token = page.next_page_token;
        }
        assert_eq!(seen, made, "page size {size}");
        assert_eq!(
            pages,
            made.len().div_ceil(size as usize),
            "page size {size}"
        );
    }
    let all = c.list_backups(0, "", true).await.expect("all");
    let ids: Vec<&str> = all.backups.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids[0], failed.id, "the failed backup is the newest");
    assert_eq!(
        &ids[1..],
        made.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(all.next_page_token.is_empty());
    // backupctl says why the failed one failed, under its row.
    let listed = tokio::task::spawn_blocking({
        let url = s.url();
        move || run("backupctl", &["--server", &url, "list", "--all"], &[])
    })
    .await
    .expect("join");
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert!(
        lines[1].starts_with(&format!("{} ", failed.id)),
        "{listed:?}"
    );
    assert_eq!(
        lines[2],
        format!("    error: {}", failed.error),
        "{listed:?}"
    );
    assert!(failed.error.starts_with("EventStore "), "{}", failed.error);
    assert_eq!(lines.len(), 3 + made.len(), "{listed:?}");
    match c.list_backups(2, "not-a-token", false).await {
        Err(ClientError::InvalidArgument(m)) => {
            assert_eq!(m, "page_token is not a token from a previous ListBackups")
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}
