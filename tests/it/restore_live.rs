//! Restores while they run: followed by backupctl, killed or interrupted, waiting for sessions
//! that hold the table, against a store that never answers, and the confirmation on a terminal.

use std::time::Duration;

use monoskope_backup_api::eventsourcing::Event;
use monoskope_backup_client::{BackupClient, ClientOptions};
use monoskope_backup_tests::fixture::{
    fresh_events_db as fresh_db, sample, store, table_events, Fixture,
};
use monoskope_backup_tests::{run, service_env, Devstore};
use sqlx::Connection as _;

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
    assert_eq!(json["last_restore"]["events"], 300);
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
            &[&id, "--drop-existing", "--yes", "--events-db", &db],
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

    // A refusal needs no answer: without --drop-existing the non-empty table is refused first,
    // terminal or not.
    let refused = tokio::task::spawn_blocking({
        let url = s.url();
        move || run("backupctl", &["--server", &url, "restore", "latest"], &[])
    })
    .await
    .expect("join");
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains(
            "refused: the event store is not empty (the events table event_records of postgres://"
        ) && refused.stderr.contains("holds 20 events"),
        "{refused:?}"
    );
    // Everything checked, but no terminal to ask on: a usage error (2), nothing restored.
    let no_terminal = tokio::task::spawn_blocking({
        let url = s.url();
        move || {
            run(
                "backupctl",
                &["--server", &url, "restore", "latest", "--drop-existing"],
                &[],
            )
        }
    })
    .await
    .expect("join");
    assert_eq!(no_terminal.code, Some(2), "{no_terminal:?}");
    assert!(
        no_terminal.stderr.contains(&format!(
            "refusing to restore backup {} into the events table event_records of postgres://",
            newest.id
        )) && no_terminal
            .stderr
            .contains("without confirmation: run on a terminal or pass --yes"),
        "{no_terminal:?}"
    );
    // On a terminal: the plan, the target with its event count, and the id to type.
    let wrong = on_a_terminal("latest").await;
    assert_eq!(wrong.code, Some(1), "{wrong:?}");
    for want in [
        format!("backup {}: a chain of 1 ({}), 20 events", newest.id, newest.id),
        "This restore REPLACES the 20 events of the events table event_records of postgres://".to_string(),
        format!(
            "Type the backup id ({}) to go on: backupctl: error: confirmation did not match the backup id; nothing was restored",
            newest.id
        ),
    ] {
        assert!(wrong.stdout.contains(&want), "{want:?} in {wrong:?}");
    }
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
    let restore = [id.as_str(), "--drop-existing", "--yes", "--events-db", &db];
    let mut args = restore.to_vec();
    // (A restore that did not give up would run into its own timeout instead.)
    args.extend(["--lock-wait-timeout", "1s", "--restore-timeout", "20s"]);
    let out = tokio::task::spawn_blocking({
        let cmd = f.restore_command(&args);
        move || within_a_minute(cmd)
    })
    .await
    .expect("join");
    assert_eq!(out.code, Some(8), "busy: {}", out.stderr);
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
    assert_eq!(out.code, Some(8), "busy: {}", out.stderr);
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
        out.code == Some(8)
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
    assert_eq!(out.code, Some(3), "unreachable: {stderr}");
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
