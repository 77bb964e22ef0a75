//! Restore end to end: both sinks, all-or-nothing, refusals with their precise statuses, `until`.
//! Restores followed while they run, killed, waiting for the table: `restore_live.rs`.

use std::path::Path;
use std::time::Duration;

use monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient;
use monoskope_backup_api::eventsourcing::Event;
use monoskope_backup_client::{pb, BackupClient, ClientError, ClientOptions};
use monoskope_backup_tests::fixture::{
    all_events, canonical, fresh_events_db as fresh_db, sample, store, table_events, Fixture,
};
use monoskope_backup_tests::{run, service_env, Devstore, Server};

#[tokio::test]
async fn round_trip_through_the_api_sink_keeps_every_field() {
    let f = Fixture::new();
    let src = Devstore::start(&[]);
    store(&src, sample(3000)).await;
    let id = f.backup(&src);
    let dst = Devstore::start(&[]);
    let out = f.restore(&[&id, "--event-store", &dst.addr, "--via-api"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("restored backup") && out.stdout.contains("3000 events"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("next: Restart the QueryHandler, the Gateway"),
        "{}",
        out.stdout
    );
    assert_eq!(
        canonical(all_events(dst.url()).await),
        canonical(all_events(src.url()).await)
    );
    // Version checks keep working: the next version is accepted, a taken one is a conflict.
    let last = all_events(dst.url())
        .await
        .into_iter()
        .find(|e| e.aggregate_version == Some(1))
        .expect("an aggregate");
    let mut next = last.clone();
    next.aggregate_version = Some(1);
    let mut c = EventStoreClient::connect(dst.url()).await.expect("connect");
    let err = c
        .store(tokio_stream::iter(vec![next]))
        .await
        .expect_err("version 1 is taken");
    assert_eq!(
        err.message(),
        "event aggregate version already exists in store"
    );
}

#[tokio::test]
async fn cross_store_devstore_backup_into_the_postgres_events_table() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let f = Fixture::new();
    let src = Devstore::start(&[]);
    let mut events = sample(2000);
    // Edge cases the table stores as NULL: no data, no metadata, version 0 is impossible via API.
    events[5].data.clear();
    events[6].metadata.clear();
    store(&src, events).await;
    let id = f.backup(&src);
    let db = fresh_db(&pg).await;
    let out = f.restore(&[&id, "--events-db", &db]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("into the events table: 2000 events"),
        "{}",
        out.stdout
    );
    let rows = table_events(&db).await;
    let got: Vec<Event> = rows.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(
        canonical(got),
        canonical(all_events(src.url()).await),
        "PostgreSQL's jsonb returns exactly what the devstore returned"
    );
    // The table has Monoskope's exact schema.
    let pool = sqlx::PgPool::connect(&db).await.expect("pg");
    let cols: Vec<(String, String)> = sqlx::query_as("SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_name = 'event_records' ORDER BY ordinal_position")
        .fetch_all(&pool)
        .await
        .expect("columns");
    let names: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "event_id",
            "event_type",
            "aggregate_id",
            "aggregate_type",
            "aggregate_version",
            "timestamp",
            "metadata",
            "data"
        ]
    );
    // Replacing events is asked for: refused without --yes off a terminal (exit 2, the store
    // named, nothing written); on a terminal, a wrong answer writes nothing.
    let before = table_events(&db).await;
    let out = f.restore(&[&id, "--events-db", &db, "--drop-existing"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("add --yes")
            && out.stderr.contains("replacing the 2000 events it holds"),
        "{out:?}"
    );
    let args: Vec<String> = f
        .restore_command(&[&id, "--events-db", &db, "--drop-existing"])
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let line = std::iter::once(
        monoskope_backup_tests::bin("backup-server")
            .display()
            .to_string(),
    )
    .chain(args)
    .map(|a| format!("'{a}'"))
    .collect::<Vec<_>>()
    .join(" ");
    let on_tty = |answer: &str| {
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &line, "/dev/null"])
            .env("RUST_LOG", "warn")
            .env_remove("BACKUP_ENCRYPTION_KEY")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("script");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{answer}\n").as_bytes())
            .expect("answer");
        child.wait_with_output().expect("run")
    };
    let out = on_tty("no");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Type the backup id"), "{text}");
    assert!(
        text.contains("not confirmed; nothing was written"),
        "{text}"
    );
    assert_eq!(table_events(&db).await, before);
    let out = on_tty(&id);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("restored backup"), "{text}");
    // Restoring the same backup again (drop_existing) gives the same deterministic event ids.
    let out = f.restore(&[&id, "--events-db", &db, "--drop-existing", "--yes"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut a: Vec<String> = rows.into_iter().map(|(id, _)| id).collect();
    let mut b: Vec<String> = table_events(&db)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    // Both loads wrote their rows frozen: every page of the restored table is all-visible and
    // all-frozen, so its first reads write nothing and no vacuum has to freeze it later.
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_visibility")
        .execute(&pool)
        .await
        .expect("pg_visibility");
    let (pages, visible, frozen): (i64, i64, i64) = sqlx::query_as(
        "SELECT pg_relation_size('event_records') / current_setting('block_size')::bigint, all_visible, all_frozen FROM pg_visibility_map_summary('event_records')",
    )
    .fetch_one(&pool)
    .await
    .expect("visibility map");
    assert!(pages > 0);
    assert_eq!(
        (visible, frozen),
        (pages, pages),
        "pages all-visible and all-frozen"
    );

    // The other way round: back up the table itself (one snapshot, event ids kept) and restore
    // into an empty embedded EventStore through its API.
    let out = run(
        "backup-server",
        &[
            "backup",
            "--events-db",
            &db,
            "--destination",
            &f.dest,
            "--key-file",
            &f.key,
            "--catalog",
            &f.catalog(),
            "--json",
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).expect("json summary");
    let table_backup = summary["id"].as_str().expect("id").to_string();
    assert_eq!(summary["events"], 2000);
    let dst = Devstore::start(&[]);
    let out = f.restore(&[&table_backup, "--event-store", &dst.addr, "--via-api"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        canonical(all_events(dst.url()).await),
        canonical(all_events(src.url()).await),
        "devstore → table → devstore is identical"
    );
    // And into a second table: the event ids of the first table come back.
    let db2 = fresh_db(&pg).await;
    assert_eq!(
        f.restore(&[&table_backup, "--events-db", &db2]).code,
        Some(0)
    );
    let mut c: Vec<String> = table_events(&db2)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    c.sort();
    assert_eq!(c, a, "event ids survive table → backup → table");
}

fn corrupt_last_data_chunk(path: &Path) {
    let mut bytes = std::fs::read(path).expect("archive");
    let hlen = u32::from_be_bytes(bytes[12..16].try_into().expect("4")) as usize;
    let elen = u32::from_be_bytes(bytes[16 + hlen..20 + hlen].try_into().expect("4")) as usize;
    let mut off = 20 + hlen + elen;
    let mut frames = Vec::new();
    while off < bytes.len() {
        let len = u32::from_be_bytes(bytes[off + 1..off + 5].try_into().expect("4")) as usize;
        frames.push((off, len));
        off += 5 + len;
    }
    let (o, l) = frames[frames.len() - 2];
    bytes[o + 5 + l / 2] ^= 0x01;
    std::fs::write(path, bytes).expect("write");
}

#[tokio::test]
async fn a_corrupted_last_chunk_leaves_the_table_exactly_as_before() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let f = Fixture::new();
    let src = Devstore::start(&[]);
    store(&src, sample(20_000)).await;
    let id = f.backup(&src);
    corrupt_last_data_chunk(&f.archive(&id));
    let db = fresh_db(&pg).await;
    // The table holds other events.
    let other = Devstore::start(&[]);
    store(&other, sample(50)).await;
    let other_id = f.backup(&other);
    assert_eq!(f.restore(&[&other_id, "--events-db", &db]).code, Some(0));
    let before = table_events(&db).await;
    let out = f.restore(&[&id, "--events-db", &db, "--drop-existing", "--yes"]);
    assert_eq!(out.code, Some(7), "damaged: {out:?}");
    assert!(
        out.stderr.contains("failed authentication")
            && out.stderr.contains("nothing was written (rolled back)"),
        "{}",
        out.stderr
    );
    assert_eq!(
        table_events(&db).await,
        before,
        "the store holds exactly its old events"
    );
}

#[tokio::test]
async fn refusals_have_precise_statuses_and_messages() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let f = Fixture::new();
    let src = Devstore::start(&[]);
    store(&src, sample(30_000)).await;
    let id = f.backup(&src);
    let db = fresh_db(&pg).await;
    let base = [
        "--event-store",
        &src.addr,
        "--destination",
        &f.dest,
        "--key-file",
        &f.key,
    ];
    // Without an events database, only the API sink is possible, and only with via_api.
    let no_table = Server::start(
        &[
            &base[..],
            &[
                "--catalog",
                &format!("sqlite://{}", f.dir.path().join("a.db").display()),
            ],
        ]
        .concat(),
        &[],
    );
    let mut c = BackupClient::connect(&ClientOptions::new(no_table.url()))
        .await
        .expect("connect");
    let req = |id: &str| pb::RestoreRequest {
        backup_id: id.to_string(),
        wait: true,
        ..Default::default()
    };
    match c.restore(req(&id)).await {
        Err(ClientError::Refused(m)) => assert!(
            m.starts_with("restoring through the EventStore API needs via_api")
                && m.contains("republished to the message bus"),
            "{m}"
        ),
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
    // backupctl says it is a refusal (not "busy": nothing else runs) in one line.
    let cli = run(
        "backupctl",
        &["--server", &no_table.url(), "restore", &id, "--yes"],
        &[],
    );
    assert_eq!(cli.code, Some(1), "{cli:?}");
    assert!(
        cli.stderr
            .starts_with("backupctl: error: refused: restoring through the EventStore API needs via_api (--via-api)")
            && cli.stderr.lines().count() == 1,
        "{cli:?}"
    );
    // The API sink into a non-empty store without drop_existing.
    match c.restore(pb::RestoreRequest { via_api: true, ..req(&id) }).await {
        Err(ClientError::Refused(m)) => assert!(
            m.starts_with("the event store is not empty (the EventStore at 127.0.0.1:")
                && m.ends_with(" holds 30000 events); pass drop_existing (--drop-existing) to replace its events"),
            "{m}"
        ),
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
    // A mistyped id is named first (this service would refuse the restore for want of
    // via_api too); an unknown one after the refusals of the request's form.
    match c.restore(req("nope")).await {
        Err(ClientError::InvalidArgument(m)) => assert_eq!(
            m,
            r#""nope" is not a backup id (expected e.g. 20261124T101500123Z-1a2b3c4d, a unique prefix of one such as 20261124T1015, or "latest")"#
        ),
        other => panic!("expected INVALID_ARGUMENT for a malformed id, got {other:?}"),
    }
    let unknown = "20200101T000000000Z-00000000";
    match c
        .restore(pb::RestoreRequest {
            via_api: true,
            drop_existing: false,
            ..req(unknown)
        })
        .await
    {
        Err(ClientError::NotFound(m)) => assert!(
            m.starts_with(&format!("backup {unknown} not found (no manifest at ")),
            "{m}"
        ),
        other => panic!("expected NOT_FOUND for an unknown id, got {other:?}"),
    }
    drop(no_table);
    // With the events table: a wrong key is refused before anything is written.
    let other_key = f.dir.path().join("other.key");
    assert_eq!(
        run(
            "backup-server",
            &["keygen", "--out", other_key.to_str().expect("utf8")],
            &[]
        )
        .code,
        Some(0)
    );
    let wrong = Server::start(
        &[
            "--event-store",
            &src.addr,
            "--destination",
            &f.dest,
            "--key-file",
            other_key.to_str().expect("utf8"),
            "--events-db",
            &db,
            "--catalog",
            &format!("sqlite://{}", f.dir.path().join("b.db").display()),
        ],
        &[],
    );
    let mut c = BackupClient::connect(&ClientOptions::new(wrong.url()))
        .await
        .expect("connect");
    match c.restore(req("latest")).await {
        // FAILED_PRECONDITION with reason key-wrong.
        Err(ClientError::KeyWrong(m)) => {
            assert!(m.starts_with("wrong key (archive key id "), "{m}")
        }
        other => panic!("expected FAILED_PRECONDITION (key-wrong) for a wrong key, got {other:?}"),
    }
    drop(wrong);
    // A second restore while one runs.
    let s = Server::start(
        &[
            &base[..],
            &[
                "--events-db",
                &db,
                "--catalog",
                &format!("sqlite://{}", f.dir.path().join("c.db").display()),
            ],
        ]
        .concat(),
        &[],
    );
    let mut c = BackupClient::connect(&ClientOptions::new(s.url()))
        .await
        .expect("connect");
    let first = c
        .restore(pb::RestoreRequest {
            wait: false,
            ..req("latest")
        })
        .await
        .expect("first restore starts");
    match c
        .restore(pb::RestoreRequest {
            drop_existing: true,
            ..req("latest")
        })
        .await
    {
        // FAILED_PRECONDITION with reason busy.
        Err(ClientError::Busy(m)) => assert_eq!(
            m,
            format!("another operation is running: restore {}", first.id)
        ),
        other => panic!("expected FAILED_PRECONDITION (busy) while a restore runs, got {other:?}"),
    }
    // The first one completes; the catalog records who, when, which backup, how many events.
    let mut last = None;
    for _ in 0..600 {
        let st = c.get_status().await.expect("status");
        if st.running_restore.is_none() {
            last = st.last_restore;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = last.expect("restore ended");
    assert_eq!(
        (last.backup_id.as_str(), last.event_count, last.state),
        (id.as_str(), 30_000, pb::OperationState::Succeeded as i32),
        "{last:?}"
    );
    assert!(
        last.created_by.starts_with("unauthenticated@127.0.0.1"),
        "{}",
        last.created_by
    );
    // Now the table is not empty.
    match c.restore(req("latest")).await {
        Err(ClientError::Refused(m)) => assert!(
            m.starts_with(
                "the event store is not empty (the events table event_records of postgres://"
            ) && m.ends_with(
                " holds 30000 events); pass drop_existing (--drop-existing) to replace its events"
            ),
            "{m}"
        ),
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
    // A point in time before the backup's first event (a mistyped year) would replace the
    // store's events with none: refused, the table untouched.
    let before = table_events(&db).await;
    let first = first_time(&all_events(src.url()).await);
    let too_early = pb::RestoreRequest {
        until: Some(prost_types::Timestamp {
            seconds: 946_684_800, // 2000-01-01T00:00:00Z
            nanos: 0,
        }),
        drop_existing: true,
        ..req("latest")
    };
    match c.restore(too_early).await {
        Err(ClientError::InvalidArgument(m)) => assert_eq!(
            m,
            format!("until 2000-01-01T00:00:00Z is before the first event of backup {id} ({first}): the restore would write no event; give a later time or another backup")
        ),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    assert_eq!(table_events(&db).await, before);
}

/// The earliest of `events`' timestamps, RFC 3339 in UTC with the shortest exact fraction.
fn first_time(events: &[Event]) -> String {
    let t = events
        .iter()
        .filter_map(|e| e.timestamp)
        .min_by_key(|t| (t.seconds, t.nanos))
        .expect("an event");
    chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[tokio::test]
async fn until_restores_exactly_the_events_up_to_that_time() {
    let f = Fixture::new();
    let src = Devstore::start(&[]);
    store(&src, sample(1000)).await;
    let id = f.backup(&src);
    let history = all_events(src.url()).await;
    for cut in [0usize, 1, 499, 999] {
        let t = history[cut].timestamp.expect("ts");
        let until = chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32)
            .expect("time")
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let dst = Devstore::start(&[]);
        let out = f.restore(&[
            &id,
            "--event-store",
            &dst.addr,
            "--via-api",
            "--until",
            &until,
        ]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let expected: Vec<Event> = history
            .iter()
            .filter(|e| {
                let x = e.timestamp.expect("ts");
                (x.seconds, x.nanos) <= (t.seconds, t.nanos)
            })
            .cloned()
            .collect();
        assert_eq!(
            canonical(all_events(dst.url()).await),
            canonical(expected),
            "until {until}"
        );
    }
    let bad = f.restore(&[
        &id,
        "--event-store",
        "127.0.0.1:1",
        "--via-api",
        "--until",
        "yesterday",
    ]);
    assert_eq!(bad.code, Some(2), "a usage error: {bad:?}");
    assert!(
        bad.stderr.contains("--until")
            && bad.stderr.contains("\"yesterday\" is not an RFC 3339 time"),
        "{}",
        bad.stderr
    );
}
