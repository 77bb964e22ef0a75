//! Restore end to end: both sinks, all-or-nothing, refusals with their precise statuses, `until`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient;
use monoskope_backup_api::eventsourcing::{Event, EventFilter};
use monoskope_backup_client::{pb, BackupClient, ClientError, ClientOptions};
use monoskope_backup_tests::{run, service_env, Devstore, Server};
use sqlx::{Connection as _, Row};

async fn store(ds: &Devstore, events: Vec<Event>) {
    let mut c = EventStoreClient::connect(ds.url()).await.expect("connect");
    c.store(tokio_stream::iter(events)).await.expect("store");
}

async fn all_events(url: String) -> Vec<Event> {
    let mut c = EventStoreClient::connect(url)
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20);
    let mut s = c
        .retrieve(EventFilter::default())
        .await
        .expect("retrieve")
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = s.message().await.expect("stream") {
        out.push(e);
    }
    out
}

fn sample(n: u64) -> Vec<Event> {
    monoskope_backup::devstore::sample::events(n, (n / 10).max(1), 1_700_000_000, 11).collect()
}

/// Sorts events by (type, id, version): equal timestamps have no defined order.
fn canonical(mut v: Vec<Event>) -> Vec<Event> {
    v.sort_by(|a, b| {
        (&a.aggregate_type, &a.aggregate_id, a.aggregate_version).cmp(&(
            &b.aggregate_type,
            &b.aggregate_id,
            b.aggregate_version,
        ))
    });
    v
}

struct Fixture {
    dir: tempfile::TempDir,
    key: String,
    dest: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("k").to_str().expect("utf8").to_string();
        assert_eq!(
            run("backup-server", &["keygen", "--out", &key], &[]).code,
            Some(0)
        );
        let dest = format!("file://{}", dir.path().join("dest").display());
        Self { dir, key, dest }
    }

    fn catalog(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("catalog.db").display())
    }

    /// Backs up `ds` with the one-shot command; returns the backup id.
    fn backup(&self, ds: &Devstore) -> String {
        let out = run(
            "backup-server",
            &[
                "backup",
                "--event-store",
                &ds.addr,
                "--destination",
                &self.dest,
                "--key-file",
                &self.key,
                "--catalog",
                &self.catalog(),
            ],
            &[],
        );
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        out.stdout.lines().last().expect("id").to_string()
    }

    fn restore(&self, extra: &[&str]) -> monoskope_backup_tests::Out {
        monoskope_backup_tests::output(self.restore_command(extra))
    }

    /// The service on `es`, this fixture's destination, key and catalog, restoring into `db`.
    fn serve(&self, es: &Devstore, db: &str) -> Server {
        let catalog = self.catalog();
        Server::start(
            &[
                "--event-store",
                &es.addr,
                "--destination",
                &self.dest,
                "--key-file",
                &self.key,
                "--events-db",
                db,
                "--catalog",
                &catalog,
            ],
            &[],
        )
    }

    /// The one-shot restore command with `extra` arguments (its own catalog).
    fn restore_command(&self, extra: &[&str]) -> std::process::Command {
        let catalog = format!("sqlite://{}", self.dir.path().join("r.db").display());
        let mut args = vec![
            "restore",
            "--destination",
            &self.dest,
            "--key-file",
            &self.key,
            "--catalog",
            &catalog,
        ];
        args.extend_from_slice(extra);
        monoskope_backup_tests::command("backup-server", &args)
    }

    fn archive(&self, id: &str) -> std::path::PathBuf {
        self.dir
            .path()
            .join("dest/backups")
            .join(format!("{id}.mbk"))
    }
}

async fn fresh_db(pg: &str) -> String {
    monoskope_backup_tests::fresh_db(pg, "events").await
}

/// Every row of event_records as Events (the table's own read, as Monoskope's store reads it).
async fn table_events(url: &str) -> Vec<(String, Event)> {
    let pool = sqlx::PgPool::connect(url).await.expect("pg");
    let rows = sqlx::query(r#"SELECT event_id::text AS id, event_type, aggregate_id::text AS agg, aggregate_type, aggregate_version, (extract(epoch from "timestamp") * 1000000)::bigint AS us, metadata::text AS md, data::text AS data FROM event_records"#)
        .fetch_all(&pool)
        .await
        .expect("select");
    rows.iter()
        .map(|r| {
            let us: i64 = r.get("us");
            let md: Option<String> = r.get("md");
            let data: Option<String> = r.get("data");
            (
                r.get::<String, _>("id"),
                Event {
                    r#type: r.get::<Option<String>, _>("event_type").unwrap_or_default(),
                    timestamp: Some(prost_types::Timestamp {
                        seconds: us.div_euclid(1_000_000),
                        nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
                    }),
                    aggregate_id: r.get::<Option<String>, _>("agg").unwrap_or_default(),
                    aggregate_type: r
                        .get::<Option<String>, _>("aggregate_type")
                        .unwrap_or_default(),
                    aggregate_version: Some(
                        r.get::<Option<i64>, _>("aggregate_version").unwrap_or(0) as u64,
                    ),
                    data: data.unwrap_or_default().into_bytes(),
                    metadata: md
                        .map(|m| {
                            serde_json::from_str::<BTreeMap<String, String>>(&m).expect("metadata")
                        })
                        .unwrap_or_default(),
                },
            )
        })
        .collect()
}

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
    // Restoring the same backup again (drop_existing) gives the same deterministic event ids.
    let out = f.restore(&[&id, "--events-db", &db, "--drop-existing"]);
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
    assert_eq!(summary["event_count"], 2000);
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
    let out = f.restore(&[&id, "--events-db", &db, "--drop-existing"]);
    assert_eq!(out.code, Some(1));
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

/// `cmd` run to its end, or killed after a minute (exit code `None`): a test of something that
/// must not wait without end fails instead of hanging.
fn within_a_minute(cmd: std::process::Command) -> monoskope_backup_tests::Out {
    monoskope_backup_tests::output_within(cmd, Duration::from_secs(60))
}

/// A one-shot restore with `args` (its output piped: a few lines), once `count` (a `SELECT
/// COUNT(*)` on `db`, asked every 10 ms) comes above zero: the restore has reached that point.
/// Fails the test after 30 s.
async fn restore_until(f: &Fixture, args: &[&str], db: &str, count: &str) -> std::process::Child {
    let mut child = f
        .restore_command(args)
        .env("BACKUP_PROGRESS_EVERY", "1s")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let admin = sqlx::PgPool::connect(db).await.expect("pg");
    for _ in 0..3000 {
        let n: i64 = sqlx::query_scalar(count)
            .fetch_one(&admin)
            .await
            .expect("count");
        if n > 0 {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the restore never reached `{count}`");
}

/// A backup of `events` sample events, and a fresh events table that holds another backup's
/// `others`: the backup's id, the table's URL and its rows.
async fn backup_and_other_table(
    f: &Fixture,
    pg: &str,
    events: u64,
    others: u64,
) -> (String, String, Vec<(String, Event)>) {
    let src = Devstore::start(&[]);
    store(&src, sample(events)).await;
    let id = f.backup(&src);
    let db = fresh_db(pg).await;
    let other = Devstore::start(&[]);
    store(&other, sample(others)).await;
    let other_id = f.backup(&other);
    assert_eq!(f.restore(&[&other_id, "--events-db", &db]).code, Some(0));
    let before = table_events(&db).await;
    (id, db, before)
}

/// A session reading `event_records` in an open transaction, as pg_dump does: a restore waits
/// for it to end.
async fn hold(db: &str) -> sqlx::postgres::PgConnection {
    let mut c = sqlx::postgres::PgConnection::connect_with(
        &db.parse::<sqlx::postgres::PgConnectOptions>()
            .expect("url")
            .application_name("nightly-pg_dump"),
    )
    .await
    .expect("pg");
    sqlx::query("BEGIN").execute(&mut c).await.expect("begin");
    sqlx::query("LOCK TABLE event_records IN ACCESS SHARE MODE")
        .execute(&mut c)
        .await
        .expect("lock");
    c
}

/// `backupctl` follows a restore the service runs: `status` (what `backupctl restore` without
/// `--wait` tells the operator to use) shows it while it runs, with its progress, and once it
/// ended as the last restore with its events and where they went, `--json` both; `restore
/// --wait` writes its progress to stderr every 10 s while it waits.
#[tokio::test]
async fn backupctl_follows_a_restore_while_it_runs_and_after() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let f = Fixture::new();
    let (id, db, _) = backup_and_other_table(&f, &pg, 300, 20).await;
    let es = Devstore::start(&[]);
    let s = f.serve(&es, &db);
    let url = s.url();
    let status = |args: &'static [&'static str]| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let out = run(
                "backupctl",
                &[&["--server", &url, "status"], args].concat(),
                &[],
            );
            assert_eq!(out.code, Some(0), "{out:?}");
            out.stdout
        })
    };
    let line = |text: &str, label: &str| {
        text.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line in {text}"))
            .to_string()
    };
    assert_eq!(
        line(&status(&[]).await.expect("join"), "last restore"),
        "last restore      none"
    );

    // The restore waits for a session holding the table: it is running while we look.
    let holder = hold(&db).await;
    let mut c = BackupClient::connect(&ClientOptions::new(s.url()))
        .await
        .expect("connect");
    let waited = tokio::task::spawn_blocking({
        let (url, id) = (s.url(), id.clone());
        move || {
            run(
                "backupctl",
                &[
                    "--server",
                    &url,
                    "restore",
                    &id,
                    "--drop-existing",
                    "--yes",
                    "--wait",
                ],
                &[("BACKUP_PROGRESS_EVERY", "1s")],
            )
        }
    });
    let admin = sqlx::PgPool::connect(&db).await.expect("pg");
    let mut waiting = 0;
    for _ in 0..3000 {
        waiting = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM pg_locks WHERE relation = 'event_records'::regclass AND NOT granted",
        )
        .fetch_one(&admin)
        .await
        .expect("locks");
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(waiting > 0, "the restore waits for the table");
    let started = c
        .get_status()
        .await
        .expect("status")
        .running_restore
        .expect("a restore runs");
    let running = status(&[]).await.expect("join");
    // Its progress: events read from the archive and handed on (its reader may have read all
    // 300 while the table waits, or none yet).
    let now = line(&running, "running");
    let progress = now
        .strip_prefix(&format!(
            "running           restore {} of backup {id} into the events table (",
            started.id
        ))
        .and_then(|p| p.strip_suffix(" of archive read so far)"))
        .and_then(|p| p.split_once(" events, "))
        .unwrap_or_else(|| panic!("{running}"));
    let read: u64 = progress.0.parse().expect("events");
    assert!(read <= 300, "{running}");
    assert!(
        progress.1.ends_with(" B") || progress.1.ends_with(" KiB"),
        "{running}"
    );
    assert!(
        line(&running, "last restore").starts_with(&format!(
            "last restore      {} of backup {id}: running since ",
            started.id
        )),
        "{running}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&status(&["--json"]).await.expect("join")).expect("json");
    assert_eq!(json["running_restore"]["id"], started.id.as_str());
    assert_eq!(json["running_restore"]["state"], "running");
    assert_eq!(json["running_restore"]["sink"], "events-table");

    // Long enough for `restore --wait` to report its progress once (every second here).
    tokio::time::sleep(Duration::from_secs(2)).await;
    holder.close().await.expect("close");
    let waited = waited.await.expect("join");
    assert_eq!(waited.code, Some(0), "{waited:?}");
    assert!(
        waited.stdout.starts_with(&format!(
            "restored backup {id} into the events table: 300 events\nnext: "
        )),
        "{waited:?}"
    );
    assert!(
        waited
            .stderr
            .lines()
            .any(|l| l.starts_with(&format!("restore of backup {id}: "))
                && l.ends_with(" of archive read")),
        "{waited:?}"
    );
    let after = status(&[]).await.expect("join");
    assert_eq!(line(&after, "running"), "running           nothing");
    let last = line(&after, "last restore");
    assert!(
        last.starts_with(&format!(
            "last restore      {} of backup {id} at ",
            started.id
        )) && last.ends_with(": 300 events into the events table"),
        "{after}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&status(&["--json"]).await.expect("join")).expect("json");
    assert!(json["running_restore"].is_null(), "{json}");
    assert_eq!(json["last_restore"]["id"], started.id.as_str());
    assert_eq!(json["last_restore"]["state"], "succeeded");
    assert_eq!(json["last_restore"]["event_count"], 300);
    assert_eq!(json["last_restore"]["chain"], serde_json::json!([id]));
}

/// A restore into the events table stopped during its COPY leaves the table exactly as it was:
/// killed (SIGKILL: PostgreSQL rolls back when the connection drops), or interrupted (Ctrl-C,
/// SIGTERM: the restore fails at once, "interrupted by SIGINT; nothing was written (rolled
/// back)", recorded so in the catalog).
#[tokio::test]
async fn a_table_restore_killed_or_interrupted_leaves_the_table_as_before() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let f = Fixture::new();
    let (id, db, before) = backup_and_other_table(&f, &pg, 60_000, 50).await;
    let admin = sqlx::PgPool::connect(&db).await.expect("pg");
    for sig in ["INT", "KILL"] {
        let child = restore_until(
            &f,
            &[&id, "--drop-existing", "--events-db", &db],
            &db,
            "SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE 'COPY \"event_records\"%' AND state = 'active'",
        )
        .await;
        monoskope_backup_tests::signal(child.id(), sig);
        let out = monoskope_backup_tests::output_of(child, Duration::from_secs(60)).await;
        if sig == "INT" {
            assert_eq!(out.code, Some(1), "{out:?}");
            assert_eq!(
                out.stderr.trim().lines().last(),
                Some(
                    format!("backup-server: error: restore of backup {id} failed: interrupted by SIGINT; nothing was written (rolled back)")
                        .as_str()
                ),
                "{out:?}"
            );
        } else {
            assert_eq!(out.code, None, "killed: {out:?}");
        }
        // PostgreSQL rolls the transaction back when the connection drops.
        for _ in 0..200 {
            let busy: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE 'COPY%' AND state <> 'idle' AND pid <> pg_backend_pid()")
                .fetch_one(&admin)
                .await
                .expect("activity");
            if busy == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            table_events(&db).await,
            before,
            "SIG{sig}: the store holds exactly its old events"
        );
    }
    let catalog =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", f.dir.path().join("r.db").display()))
            .await
            .expect("catalog");
    let interrupted: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM restores WHERE state = 'failed' AND error = 'interrupted by SIGINT; nothing was written (rolled back)'",
    )
    .fetch_one(&catalog)
    .await
    .expect("restores");
    assert_eq!(
        interrupted, 1,
        "the interrupted restore is recorded with why"
    );
}

/// `backupctl restore` without `--yes` asks on a terminal for the id of the backup it names —
/// `latest` resolved, with its events — and restores exactly that one; a wrong answer or no
/// terminal restores nothing.
#[tokio::test]
async fn backupctl_restore_asks_for_the_resolved_backup_id_on_a_terminal() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let f = Fixture::new();
    let (id, db, before) = backup_and_other_table(&f, &pg, 300, 20).await;
    let es = Devstore::start(&[]);
    let s = f.serve(&es, &db);
    let newest = BackupClient::connect(&ClientOptions::new(s.url()))
        .await
        .expect("connect")
        .list_backups(1, "", false)
        .await
        .expect("list")
        .backups
        .remove(0);
    assert_ne!(newest.id, id);
    let restore = format!(
        "{} --server {} restore latest --drop-existing --wait",
        monoskope_backup_tests::bin("backupctl").display(),
        s.url()
    );
    // `script` gives the command a terminal and types `answer` into it.
    let on_a_terminal = |answer: &str| {
        let mut cmd = std::process::Command::new("script");
        cmd.args(["-q", "-e", "-c", &restore, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("script");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{answer}\n").as_bytes())
            .expect("answer");
        monoskope_backup_tests::output_of(child, Duration::from_secs(60))
    };

    let no_terminal = tokio::task::spawn_blocking({
        let url = s.url();
        move || run("backupctl", &["--server", &url, "restore", "latest"], &[])
    })
    .await
    .expect("join");
    assert_eq!(no_terminal.code, Some(1), "{no_terminal:?}");
    assert_eq!(
        no_terminal.stderr.trim(),
        "backupctl: error: refusing to restore without confirmation: run on a terminal or pass --yes"
    );
    let prompt = format!(
        "Restoring backup {} (full: 20 events, last event {}) into the EventStore, REPLACING every event it holds now.",
        newest.id,
        newest
            .last_event_time
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
            .expect("last event time")
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let wrong = on_a_terminal("latest").await;
    assert_eq!(wrong.code, Some(1), "{wrong:?}");
    assert!(wrong.stdout.contains(&prompt), "{wrong:?}");
    assert!(
        wrong.stdout.contains(&format!(
            "Type {} to confirm: backupctl: error: confirmation did not match the backup id; nothing was restored",
            newest.id
        )),
        "{wrong:?}"
    );
    assert_eq!(table_events(&db).await, before, "nothing was restored");

    let right = on_a_terminal(&newest.id).await;
    assert_eq!(right.code, Some(0), "{right:?}");
    assert!(
        right.stdout.contains(&format!(
            "restored backup {} into the events table: 20 events",
            newest.id
        )),
        "{right:?}"
    );
}

#[tokio::test]
async fn restores_and_backups_wait_for_sessions_holding_the_table_then_name_them() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let f = Fixture::new();
    let (id, db, before) = backup_and_other_table(&f, &pg, 300, 20).await;

    let holder = hold(&db).await;
    let restore = [id.as_str(), "--drop-existing", "--events-db", &db];
    let mut args = restore.to_vec();
    // (A restore that did not give up would run into its own timeout instead.)
    args.extend(["--lock-wait-timeout", "1s", "--restore-timeout", "20s"]);
    let out = tokio::task::spawn_blocking({
        let cmd = f.restore_command(&args);
        move || within_a_minute(cmd)
    })
    .await
    .expect("join");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let line = out.stderr.trim().lines().last().unwrap_or_default();
    assert!(
        line.contains(
            "event_records is in use: the restore wrote nothing; it waited 1s to lock it; held by pid "
        ) && line.contains("(application nightly-pg_dump, user ")
            && line.contains("AccessShareLock")
            && line.contains("--lock-wait-timeout"),
        "{line}"
    );
    assert_eq!(table_events(&db).await, before, "the table is as it was");

    // By default it waits (30 s) and goes on once the session lets go; meanwhile it is not
    // silent: a progress line on stderr every 10 s (every second here; a spinner on a terminal).
    let child = restore_until(
        &f,
        &restore,
        &db,
        "SELECT COUNT(*) FROM pg_locks WHERE relation = 'event_records'::regclass AND NOT granted",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    holder.close().await.expect("close");
    let out = monoskope_backup_tests::output_of(child, Duration::from_secs(60)).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.lines().any(|l| l.starts_with("restore restore-")
            && l.contains(": ")
            && l.ends_with(" of archive read")),
        "{out:?}"
    );
    let restored = table_events(&db).await;
    assert_eq!(restored.len(), 300);
    assert_ne!(restored, before);

    // A backup from the table waits for a session holding it exclusively (a VACUUM FULL, a
    // restore by another tool) as long, then names it and leaves nothing at the destination.
    let backups = f.dir.path().join("dest/backups");
    let files = || {
        let mut v: Vec<_> = std::fs::read_dir(&backups)
            .expect("dest")
            .map(|e| e.expect("entry").file_name())
            .collect();
        v.sort();
        v
    };
    let kept = files();
    let mut holder = hold(&db).await;
    sqlx::query("LOCK TABLE event_records IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .expect("lock");
    let catalog = f.catalog();
    let backup_args = [
        "backup",
        "--events-db",
        &db,
        "--lock-wait-timeout",
        "1s",
        "--timeout",
        "20s",
        "--destination",
        &f.dest,
        "--key-file",
        &f.key,
        "--catalog",
        &catalog,
    ];
    let out = tokio::task::spawn_blocking({
        let cmd = monoskope_backup_tests::command("backup-server", &backup_args);
        move || within_a_minute(cmd)
    })
    .await
    .expect("join");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let line = out.stderr.trim().lines().last().unwrap_or_default();
    assert!(
        line.contains("reading the events table failed: event_records is in use: the backup waited 1s to lock it; held by pid ")
            && line.contains("(application nightly-pg_dump, user ")
            && line.contains("AccessExclusiveLock"),
        "{line}"
    );
    assert_eq!(files(), kept, "nothing new at the destination");
    // So does a restore's first look at the table (is it empty?).
    let out = tokio::task::spawn_blocking({
        let cmd = f.restore_command(&args);
        move || within_a_minute(cmd)
    })
    .await
    .expect("join");
    let line = out.stderr.trim().lines().last().unwrap_or_default();
    assert!(
        out.code == Some(1)
            && line.contains("event_records is in use: the restore wrote nothing; it waited 1s to lock it; held by pid ")
            && line.contains("AccessExclusiveLock"),
        "{line}"
    );
    holder.close().await.expect("close");
    assert_eq!(table_events(&db).await, restored, "the table is as it was");
}

/// An EventStore that takes connections and never answers: a restore through its API fails
/// at the restore's timeout (here in the check that the store is empty) instead of hanging.
#[tokio::test]
async fn a_restore_into_a_store_that_never_answers_fails_at_its_timeout() {
    let f = Fixture::new();
    let src = Devstore::start(&[]);
    store(&src, sample(10)).await;
    let id = f.backup(&src);
    let hung = monoskope_backup_tests::silent_peer();
    let cmd = f.restore_command(&[
        &id,
        "--via-api",
        "--event-store",
        &hung,
        "--restore-timeout",
        "2s",
    ]);
    let out = tokio::task::spawn_blocking(move || within_a_minute(cmd))
        .await
        .expect("join");
    let stderr = out.stderr;
    assert_eq!(out.code, Some(1), "{stderr}");
    assert!(
        stderr.trim().lines().last().unwrap_or_default().ends_with(
            "timed out after 2s checking the backup and the store before the restore (nothing was written): the destination, the EventStore or the events database did not answer"
        ),
        "{stderr}"
    );

    // Without a short timeout, SIGTERM ends the wait (a restore timeout is an hour by default),
    // sent once the restore has connected to the store (its signal handling is set up by then).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent = listener.local_addr().expect("addr").to_string();
    let (connected, reached) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c);
            let _ = connected.send(());
        }
    });
    let child = f
        .restore_command(&[&id, "--via-api", "--event-store", &silent])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    tokio::task::spawn_blocking(move || reached.recv_timeout(Duration::from_secs(30)))
        .await
        .expect("join")
        .expect("the restore connects to the store");
    monoskope_backup_tests::signal(child.id(), "TERM");
    let out = monoskope_backup_tests::output_of(child, Duration::from_secs(60)).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stderr.trim().lines().last(),
        Some("backup-server: error: interrupted by SIGTERM while checking the backup and the store (nothing was written)"),
        "{out:?}"
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
        Err(ClientError::Refused(m)) => assert_eq!(m, "the event store is not empty (the EventStore holds 30000 events); pass drop_existing (--drop-existing) to replace its events"),
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
    // A mistyped id is named first (this service would refuse the restore for want of
    // via_api too); an unknown one after the refusals of the request's form.
    match c.restore(req("nope")).await {
        Err(ClientError::InvalidArgument(m)) => assert_eq!(
            m,
            r#""nope" is not a backup id (expected e.g. 20261124T101500123Z-1a2b3c4d, or "latest")"#
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
        Err(ClientError::Refused(m)) => assert!(m.starts_with("wrong key (archive key id "), "{m}"),
        other => panic!("expected FAILED_PRECONDITION for a wrong key, got {other:?}"),
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
        Err(ClientError::Refused(m)) => assert_eq!(
            m,
            format!("another operation is running: restore {}", first.id)
        ),
        other => panic!("expected FAILED_PRECONDITION while a restore runs, got {other:?}"),
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
        Err(ClientError::Refused(m)) => assert_eq!(m, "the event store is not empty (event_records holds 30000 events); pass drop_existing (--drop-existing) to replace its events"),
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
