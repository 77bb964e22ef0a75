//! Operations when things go wrong: peers that cannot be reached, secrets that must not reach
//! the output, and restore drills (also interrupted).

use std::time::Duration;

use monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient;
use monoskope_backup_api::eventsourcing::{Event, EventFilter};
use monoskope_backup_client::{BackupClient, ClientOptions};
use monoskope_backup_tests::{
    free_port, http_get, keygen, metric_value, run, service_env, Devstore, Server,
};

#[allow(unused_imports)]
use super::ops::*;

/// The last line of a failed command's standard error, checked to be one readable line: exit 3
/// (unreachable), `prefix` first, no debug structures, no cause said twice in a row.
fn error_line(out: &monoskope_backup_tests::Out, prefix: &str) -> String {
    assert_eq!(out.code, Some(3), "unreachable: {out:?}");
    let line = out
        .stderr
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(line.starts_with(prefix), "{}", out.stderr);
    assert!(!line.contains(" { ") && !line.contains("Error("), "{line}");
    let parts: Vec<&str> = line.split(": ").collect();
    assert!(parts.windows(2).all(|w| w[0] != w[1]), "{line}");
    line
}

#[test]
fn peers_that_cannot_be_reached_fail_in_one_line_that_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let dest = dir.path().join("dest");
    let dest_url = format!("file://{}", dest.display());
    let catalog = format!("sqlite://{}", dir.path().join("cat.db").display());
    let closed = format!("127.0.0.1:{}", free_port());
    let pg_closed = format!("postgres://postgres@{closed}/events");
    let backup = |extra: &[&str]| {
        let mut args = vec!["backup", "--destination", &dest_url, "--key-file", &key];
        args.extend_from_slice(extra);
        run("backup-server", &args, &[])
    };
    // Each waits out its client's retries (the pools' 10 and 15 s, S3's five attempts): at once.
    let (store, catalog_db, events_db, s3, server) = std::thread::scope(|s| {
        let store = s.spawn(|| backup(&["--catalog", &catalog, "--event-store", &closed]));
        let catalog_db = s.spawn(|| backup(&["--catalog", &pg_closed, "--event-store", &closed]));
        let events_db = s.spawn(|| {
            let catalog = format!("sqlite://{}", dir.path().join("cat2.db").display());
            backup(&["--catalog", &catalog, "--events-db", &pg_closed])
        });
        let s3 = s.spawn(|| {
            let endpoint = format!("http://{closed}");
            run(
                "backup-server",
                &[
                    "list",
                    "--destination",
                    "s3://b/p",
                    "--s3-endpoint",
                    &endpoint,
                ],
                &[("S3_ACCESS_KEY", "a"), ("S3_SECRET_KEY", "b")],
            )
        });
        let server = s.spawn(|| {
            let url = format!("http://{closed}");
            run("backupctl", &["status", "--server", &url], &[])
        });
        let join = |h: std::thread::ScopedJoinHandle<'_, monoskope_backup_tests::Out>| {
            h.join().expect("thread")
        };
        (
            join(store),
            join(catalog_db),
            join(events_db),
            join(s3),
            join(server),
        )
    });

    for (out, prefix, says) in [
        (
            &store,
            "backup-server: error: backup ",
            format!("EventStore {closed} Retrieve: Unavailable: "),
        ),
        (
            &catalog_db,
            "backup-server: error: ",
            "cannot connect to the catalog database: ".into(),
        ),
        (
            &events_db,
            "backup-server: error: backup ",
            "cannot connect to the events database: ".into(),
        ),
        (
            &s3,
            "backup-server: error: ",
            "destination unavailable: list s3://b/p: ".into(),
        ),
        (
            &server,
            "backupctl: error: ",
            format!("cannot connect to http://{closed}: "),
        ),
    ] {
        let line = error_line(out, prefix);
        // The cause, then what to do where the tool can say it.
        assert!(
            line.contains(&says) && line.contains("Connection refused (os error 111)"),
            "{line}"
        );
    }
    // Nothing was written: no archive, watermark or manifest (a staged file neither).
    let written: Vec<_> = std::fs::read_dir(dest.join("backups"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(written.is_empty(), "{written:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_restores_into_a_scratch_store_and_compares_with_archive_and_live_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let es = Devstore::start(&[]);
    store_sample(&es, 300).await;
    let backups = dir.path().join("backups");
    let metrics_port = free_port();
    let s = Server::start(
        &[
            "--event-store",
            &es.addr,
            "--destination",
            &format!("file://{}", backups.display()),
            "--catalog",
            &format!("sqlite://{}", dir.path().join("c.db").display()),
            "--key-file",
            &key,
            "--metrics-address",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        &[],
    );
    let mut c = BackupClient::connect(&ClientOptions::new(s.url()))
        .await
        .expect("connect");
    let b = c.create_backup(true, false).await.expect("backup");
    assert!(b.error.is_empty(), "{}", b.error);
    let drill_metric = || {
        let body = http_get(&format!("http://127.0.0.1:{metrics_port}/metrics"))
            .expect("metrics")
            .1;
        metric_value(
            &body,
            "monoskope_backup_last_drill_success_timestamp_seconds",
            &[],
        )
    };
    assert_eq!(drill_metric(), Some(0.0));

    let url = s.url();
    let envs = [("BACKUP_SERVER", url.as_str())];
    let out = run("backupctl", &["drill", "latest", "--json"], &envs);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let r: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(r["backup_id"], b.id.as_str());
    assert_eq!(r["ok"], true);
    assert_eq!(r["archive_events"], 300);
    assert_eq!(r["restored_events"], 300);
    assert_eq!(r["live_events"], 300);
    assert!(drill_metric().is_some_and(|t| t > 1.7e9));
    // The drill is recorded with the backup: describe shows it.
    let d = run("backupctl", &["describe", &b.id], &envs);
    assert!(
        d.stdout.contains("Last drill   ok at ")
            && d.stdout
                .contains("300 events restored into a scratch store match"),
        "{d:?}"
    );

    // An event committed late with an old timestamp: the live store no longer matches.
    let mut late: Event = monoskope_backup::devstore::sample::events(1, 1, 1_700_000_000, 99)
        .next()
        .expect("one event");
    late.aggregate_id = uuid::Uuid::new_v4().to_string();
    let mut ec = EventStoreClient::connect(es.url()).await.expect("connect");
    ec.store(tokio_stream::iter(vec![late]))
        .await
        .expect("store");
    let out = run("backupctl", &["drill", &b.id], &envs);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("the live store's 301 events"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    let d = run("backupctl", &["describe", &b.id, "--json"], &envs);
    let v: serde_json::Value = serde_json::from_str(&d.stdout).expect("json");
    assert_eq!(v["last_drill"]["ok"], false, "{v}");

    // A damaged archive: the drill fails, and the live store is untouched.
    let archive = backups.join(format!("backups/{}.mbk", b.id));
    let mut bytes = std::fs::read(&archive).expect("archive");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&archive, bytes).expect("write");
    let out = run("backupctl", &["drill", &b.id], &envs);
    assert_eq!(out.code, Some(7), "damaged: {out:?}");
    assert!(
        out.stderr.contains("failed authentication"),
        "{}",
        out.stderr
    );
    let mut all = ec
        .retrieve(EventFilter::default())
        .await
        .expect("retrieve")
        .into_inner();
    let mut n = 0;
    while all.message().await.expect("message").is_some() {
        n += 1;
    }
    assert_eq!(n, 301, "a drill never writes to the live store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_passwords_and_credentials_never_reach_the_output() {
    let Some(s3) = service_env("TEST_S3_ENDPOINT") else {
        return;
    };
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let es = Devstore::start(&[]);
    store_sample(&es, 100).await;
    let bucket = monoskope_backup_tests::new_bucket(&monoskope_backup_tests::s3_client(&s3)).await;
    let key_out = run("backup-server", &["keygen"], &[]);
    let key = key_out.stdout.trim().to_string();
    assert_eq!(key.len(), 44, "{key}");
    let secret = "s3-secret-Zq8mN2vX4pL7";
    let password = "db-password-Yt5kW9";
    // The events table, reached with a password in its URL (trust authentication ignores it).
    let db = monoskope_backup_tests::fresh_db(&pg, "secrets").await;
    let db_with_password = db.replacen("postgres@", &format!("postgres:{password}@"), 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = format!("sqlite://{}", dir.path().join("c.db").display());
    let envs = [
        ("BACKUP_ENCRYPTION_KEY", key.as_str()),
        ("S3_ACCESS_KEY", "test"),
        ("S3_SECRET_KEY", secret),
        ("RUST_LOG", "debug"),
    ];
    let dest = format!("s3://{bucket}/x");
    let mut outputs = Vec::new();
    let ok = run(
        "backup-server",
        &[
            "backup",
            "--event-store",
            &es.addr,
            "--destination",
            &dest,
            "--s3-endpoint",
            &s3,
            "--catalog",
            &catalog,
        ],
        &envs,
    );
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    outputs.push(ok);
    let restored = run(
        "backup-server",
        &[
            "restore",
            "latest",
            "--events-db",
            &db_with_password,
            "--destination",
            &dest,
            "--s3-endpoint",
            &s3,
            "--catalog",
            &catalog,
        ],
        &envs,
    );
    assert_eq!(restored.code, Some(0), "{}", restored.stderr);
    outputs.push(restored);
    // Failures too: a missing bucket, and the table refusing a second restore.
    outputs.push(run(
        "backup-server",
        &[
            "backup",
            "--event-store",
            &es.addr,
            "--destination",
            "s3://no-such-bucket-mbk/x",
            "--s3-endpoint",
            &s3,
            "--catalog",
            &catalog,
        ],
        &envs,
    ));
    outputs.push(run(
        "backup-server",
        &[
            "restore",
            "latest",
            "--events-db",
            &db_with_password,
            "--destination",
            &dest,
            "--s3-endpoint",
            &s3,
            "--catalog",
            &catalog,
        ],
        &envs,
    ));
    assert_eq!(outputs[2].code, Some(9), "no such bucket: {:?}", outputs[2]);
    assert_ne!(outputs[3].code, Some(0), "{:?}", outputs[3]);
    for o in &outputs {
        let text = format!("{}{}", o.stdout, o.stderr);
        assert!(
            text.contains("DEBUG") || o.code == Some(1),
            "debug logging was on"
        );
        for s in [key.as_str(), &key[..20], secret, password] {
            assert!(!text.contains(s), "a secret reached the output:\n{text}");
        }
    }
}

/// SIGTERM during a drill ends it like a backup or a restore: here the drill waits for a live
/// store that never answers; the Drill call fails with "drill interrupted by SIGTERM" (it ran on
/// until the service's grace ran out) and the service exits.
#[tokio::test]
async fn sigterm_interrupts_a_drill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let es = Devstore::start(&[]);
    store_sample(&es, 50).await;
    let dest = format!("file://{}", dir.path().join("backups").display());
    let catalog_path = dir.path().join("c.db");
    let catalog = format!("sqlite://{}", catalog_path.display());
    let common = [
        "--destination",
        &dest,
        "--catalog",
        &catalog,
        "--key-file",
        &key,
    ];
    let made = run(
        "backup-server",
        &[&["backup", "--event-store", &es.addr][..], &common].concat(),
        &[],
    );
    assert_eq!(made.code, Some(0), "{made:?}");
    let hung = monoskope_backup_tests::silent_peer();
    let mut s = Server::start(&[&["--event-store", &hung][..], &common].concat(), &[]);
    let mut c = BackupClient::connect(&ClientOptions::new(s.url()))
        .await
        .expect("connect");
    let call = tokio::spawn(async move { c.drill("latest").await });
    let db = &sqlx::SqlitePool::connect(&catalog).await.expect("catalog");
    let drilling = monoskope_backup_tests::wait_for_async(Duration::from_secs(30), || async move {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM operation_lease WHERE kind = 'drill'")
                .fetch_one(db)
                .await
                .expect("lease");
        (n > 0).then_some(n)
    })
    .await;
    assert_eq!(drilling, Some(1), "the drill runs");
    monoskope_backup_tests::signal(s.proc.child.id(), "TERM");
    let answer = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the Drill call returns")
        .expect("join");
    match answer {
        Err(e) => assert!(
            e.to_string().contains("drill interrupted by SIGTERM"),
            "{e}"
        ),
        Ok(r) => panic!("expected the drill to be interrupted, got {r:?}"),
    }
    let mut exited = None;
    for _ in 0..600 {
        exited = s.proc.child.try_wait().expect("wait");
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exited.expect("serve exits").success());
}

/// A one-shot run that fails before it starts — a setting out of range, a catalog that cannot be
/// reached, a destination that does not exist — still pushes its failure, and where the
/// EventStore and catalog answer, stores a BackupFailed/RestoreFailed event and a FAILED record.
#[tokio::test]
async fn runs_that_fail_before_they_start_leave_a_trace() {
    let Some(pgw) = service_env("TEST_PUSHGATEWAY_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let es = Devstore::start(&[]);
    let ns = format!("early-{}", uuid::Uuid::new_v4().simple());
    let scrape = || http_get(&format!("{pgw}/metrics")).expect("pushgateway").1;
    let catalog = format!("sqlite://{}", dir.path().join("c.db").display());
    let missing = format!("file://{}", dir.path().join("nope").display());
    let cases: [(&str, &str, Vec<&str>, &str); 3] = [
        (
            "a timeout out of range",
            "bad-setting",
            vec!["backup", "--timeout", "100y", "--destination", &missing],
            "backup",
        ),
        (
            "a catalog that cannot be reached",
            "no-catalog",
            vec![
                "backup",
                "--destination",
                &missing,
                "--catalog",
                "postgres://u@127.0.0.1:1/catalog",
            ],
            "backup",
        ),
        (
            "a restore from a destination that does not exist",
            "no-destination",
            vec![
                "restore",
                "latest",
                "--destination",
                &missing,
                "--catalog",
                &catalog,
                "--via-api",
            ],
            "restore",
        ),
    ];
    for (what, pod, args, op) in cases {
        let mut all: Vec<&str> = args.clone();
        all.extend_from_slice(&[
            "--event-store",
            &es.addr,
            "--key-file",
            &key,
            "--pushgateway-url",
            &pgw,
        ]);
        let out = run(
            "backup-server",
            &all,
            &[
                ("POD_NAMESPACE", &ns),
                ("POD_NAME", pod),
                ("BACKUP_EMIT_EVENTS", "true"),
            ],
        );
        assert!(matches!(out.code, Some(1..=3)), "{what}: {out:?}");
        let group = [
            ("job", "monoskope_backup"),
            ("namespace", ns.as_str()),
            ("pod", pod),
        ];
        let metric = format!(
            "monoskope_backup{}_last_failure_timestamp_seconds",
            if op == "restore" { "_restore" } else { "" }
        );
        let text = scrape();
        assert!(
            metric_value(&text, &metric, &group).is_some_and(|t| t > 1.7e9),
            "{what}: no failure pushed ({metric})"
        );
    }
    // The EventStore answered: the two runs whose settings resolved stored their failure.
    let failed: Vec<String> = events_of(&es, "Backup")
        .await
        .into_iter()
        .chain(events_of(&es, "Restore").await)
        .map(|e| e.r#type)
        .collect();
    assert!(failed.contains(&"BackupFailed".to_string()), "{failed:?}");
    assert!(failed.contains(&"RestoreFailed".to_string()), "{failed:?}");
    // And the catalog that answered holds the failed restore.
    let pool = sqlx::SqlitePool::connect(&catalog).await.expect("catalog");
    let errors: Vec<Option<String>> =
        sqlx::query_scalar("SELECT error FROM restores WHERE state = 'failed'")
            .fetch_all(&pool)
            .await
            .expect("restores");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .as_deref()
            .is_some_and(|e| e.contains("does not exist")),
        "{errors:?}"
    );
}

/// Drills compare event data as JSON values: a live store that orders object keys bytewise (as
/// CockroachDB does) drills clean against the scratch store's PostgreSQL order, and a real
/// difference in a value still fails the drill.
#[tokio::test]
async fn a_drill_compares_json_as_values_whatever_the_key_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let events = |price: &str| -> Vec<Event> {
        (1..=20u64)
            .map(|v| Event {
                r#type: "PriceSet".into(),
                timestamp: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000 + v as i64,
                    nanos: 0,
                }),
                aggregate_id: "6f1c3c0e-8d1e-4c5a-9b2f-0a1b2c3d4e5f".into(),
                aggregate_type: "Offer".into(),
                aggregate_version: Some(v),
                // "b" sorts before "aa" in jsonb (shorter first), after it bytewise.
                data: format!(r#"{{"b": {v}, "aa": {price}, "nested": {{"zz": 1, "y": [1.50]}}}}"#)
                    .into_bytes(),
                metadata: Default::default(),
            })
            .collect()
    };
    let live = Devstore::start(&["--jsonb-key-order", "bytewise"]);
    let mut c = EventStoreClient::connect(live.url())
        .await
        .expect("connect");
    c.store(tokio_stream::iter(events("2.50")))
        .await
        .expect("store");
    let dest = format!("file://{}", dir.path().join("dest").display());
    let catalog = format!("sqlite://{}", dir.path().join("c.db").display());
    let serve = |es: &Devstore| {
        Server::start(
            &[
                "--event-store",
                &es.addr,
                "--destination",
                &dest,
                "--key-file",
                &key,
                "--catalog",
                &catalog,
            ],
            &[],
        )
    };
    let s = serve(&live);
    let b = run(
        "backupctl",
        &["--server", &s.url(), "create", "--wait"],
        &[],
    );
    assert_eq!(b.code, Some(0), "{b:?}");
    let id = b.stdout.lines().last().expect("id").to_string();
    let d = run("backupctl", &["--server", &s.url(), "drill", &id], &[]);
    assert_eq!(d.code, Some(0), "bytewise keys drill clean: {d:?}");
    drop(s);
    // The same events but one value different (2.5 is 2.50; 2.51 is not).
    let same = Devstore::start(&[]);
    let mut c = EventStoreClient::connect(same.url())
        .await
        .expect("connect");
    c.store(tokio_stream::iter(events("2.5")))
        .await
        .expect("store");
    let s = serve(&same);
    let d = run("backupctl", &["--server", &s.url(), "drill", &id], &[]);
    assert_eq!(d.code, Some(0), "2.5 and 2.50 are the same value: {d:?}");
    drop(s);
    let other = Devstore::start(&[]);
    let mut c = EventStoreClient::connect(other.url())
        .await
        .expect("connect");
    let mut changed = events("2.50");
    changed[7].data = br#"{"b": 8, "aa": 2.51, "nested": {"zz": 1, "y": [1.5]}}"#.to_vec();
    c.store(tokio_stream::iter(changed)).await.expect("store");
    let s = serve(&other);
    let d = run("backupctl", &["--server", &s.url(), "drill", &id], &[]);
    assert_eq!(d.code, Some(1), "a real difference fails the drill: {d:?}");
    assert!(d.stderr.contains("live store"), "{d:?}");
}
