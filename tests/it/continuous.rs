//! Continuous backup (`serve --continuous`) against a real PostgreSQL events table written the
//! way Monoskope's EventStore writes it: new events at the destination within seconds, nothing
//! written while none arrive, and — under a steady write load with the service SIGKILLed again
//! and again — after the last restart a restore holds every stored event exactly once (the whole
//! table compared), and `--until` restores to an instant inside the window.

use std::time::{Duration, Instant};

use monoskope_backup_tests::fixture::{fresh_events_db, table_events, Fixture};
use monoskope_backup_tests::{run, service_env, Server};

/// Stores `n` events as the EventStore does: versions 1.. per aggregate, one transaction each.
pub(crate) async fn store_rows(pool: &sqlx::PgPool, first: u64, n: u64, aggregates: &[uuid::Uuid]) {
    store_and_publish(pool, first, n, aggregates, None).await
}

/// [`store_rows`], each event then published on the bus as the EventStore does after its insert.
pub(crate) async fn store_and_publish(
    pool: &sqlx::PgPool,
    first: u64,
    n: u64,
    aggregates: &[uuid::Uuid],
    bus: Option<&monoskope_backup::bus::publish::Publisher>,
) {
    for i in first..first + n {
        let a = aggregates[(i % aggregates.len() as u64) as usize];
        let version = i / aggregates.len() as u64 + 1;
        let event_type = if version == 1 {
            "UserCreated"
        } else {
            "UserUpdated"
        };
        let data = format!(r#"{{"n": {i}}}"#);
        sqlx::query(
            r#"INSERT INTO event_records (event_id, event_type, aggregate_id, aggregate_type, aggregate_version, "timestamp", metadata, data) VALUES ($1, $2, $3, 'User', $4, now(), '{"x-auth-id": "7c1d7a1e-9a8b-4b5c-8d3e-2f1a0b9c8d7e"}'::jsonb, $5::jsonb)"#,
        )
        .bind(uuid::Uuid::new_v4())
        .bind(event_type)
        .bind(a)
        .bind(version as i64)
        .bind(&data)
        .execute(pool)
        .await
        .expect("insert");
        if let Some(bus) = bus {
            let event = monoskope_backup_api::eventsourcing::Event {
                r#type: event_type.into(),
                timestamp: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
                aggregate_id: a.to_string(),
                aggregate_type: "User".into(),
                aggregate_version: Some(version),
                data: data.into_bytes(),
                metadata: [(
                    "x-auth-id".to_string(),
                    "7c1d7a1e-9a8b-4b5c-8d3e-2f1a0b9c8d7e".to_string(),
                )]
                .into(),
            };
            bus.publish(&event).await.expect("publish");
        }
    }
}

/// `restore latest` into a fresh database holds exactly the events of `db`: every stored event
/// once, the whole table compared (not a count).
pub(crate) async fn restore_holds_the_whole_table(f: &Fixture, pg: &str, db: &str) {
    let restored = fresh_events_db(pg).await;
    let out = f.restore(&["latest", "--events-db", &restored]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let mut want = table_events(db).await;
    let mut got = table_events(&restored).await;
    want.sort_by(|a, b| a.0.cmp(&b.0));
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the restored table differs from the store");
}

/// A fresh database with Monoskope's empty `event_records`: its URL and a pool.
pub(crate) async fn empty_events_table(pg: &str) -> (String, sqlx::PgPool) {
    let db = fresh_events_db(pg).await;
    let pool = sqlx::PgPool::connect(&db).await.expect("pg");
    sqlx::query(monoskope_backup::events_table::CREATE_TABLE)
        .execute(&pool)
        .await
        .expect("table");
    (db, pool)
}

/// `serve --continuous` every 300 ms on `db`, the fixture's destination, key and catalog.
pub(crate) fn serve_continuous(f: &Fixture, db: &str, extra: &[&str]) -> Server {
    let catalog = f.catalog();
    let mut args = vec![
        "--events-db",
        db,
        "--destination",
        &f.dest,
        "--key-file",
        &f.key,
        "--catalog",
        &catalog,
        "--continuous",
        "--continuous-interval",
        "300ms",
    ];
    args.extend_from_slice(extra);
    Server::start(&args, &[])
}

/// The destination's complete backups (`backup-server list --json`), newest first; none while
/// it cannot be listed.
pub(crate) fn listed(f: &Fixture) -> Vec<serde_json::Value> {
    let out = run(
        "backup-server",
        &[
            "list",
            "--json",
            "--destination",
            &f.dest,
            "--catalog",
            &f.catalog(),
        ],
        &[],
    );
    if out.code != Some(0) {
        return Vec::new();
    }
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The events the destination's complete backups hold, summed over every manifest.
pub(crate) fn events_at_destination(f: &Fixture) -> (u64, usize, usize) {
    let all = listed(f);
    let events = all.iter().map(|m| m["events"].as_u64().unwrap_or(0)).sum();
    let segments = all
        .iter()
        .filter(|m| m["kind"] == "segment" && m["note"] == "continuous segment")
        .count();
    (events, all.len(), segments)
}

pub(crate) fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stored_event_reaches_the_destination_within_seconds_exactly_once() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let (db, pool) = empty_events_table(&pg).await;
    let aggregates: Vec<uuid::Uuid> = (0..7).map(|_| uuid::Uuid::new_v4()).collect();
    let f = Fixture::new();
    let serve = || serve_continuous(&f, &db, &[]);
    let mut s = serve();
    store_rows(&pool, 0, 40, &aggregates).await;
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || events_at_destination(&f).0
            == 40),
        "40 events not at the destination: {:?}",
        events_at_destination(&f)
    );
    let first_latency = t.elapsed();
    store_rows(&pool, 40, 25, &aggregates).await;
    assert!(
        wait_until(Duration::from_secs(15), || events_at_destination(&f).0
            == 65),
        "{:?}",
        events_at_destination(&f)
    );
    let (_, backups, segments) = events_at_destination(&f);
    assert!(segments >= 1, "the new events came as a segment");
    // GetStatus (and `backupctl status`) shows the lag and the restorable window.
    let status = monoskope_backup_tests::fixture::client(&s)
        .await
        .get_status()
        .await
        .expect("status");
    let c = status.continuous.expect("continuous in GetStatus");
    assert!(c.segments >= 1, "{c:?}");
    assert!(c.earliest.is_some() && c.latest.is_some(), "{c:?}");
    let out = run("backupctl", &["status"], &[("BACKUP_SERVER", &s.url())]);
    assert!(
        out.stdout.contains("continuous        ")
            && out.stdout.contains("segments; restorable from"),
        "{out:?}"
    );
    // Nothing arrives, nothing is written.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        events_at_destination(&f).1,
        backups,
        "no segment without new events"
    );
    eprintln!("first 40 events durable after {first_latency:?}");

    // A steady write load; the service SIGKILLed three times in the middle of it.
    let writer = {
        let pool = pool.clone();
        let aggregates = aggregates.clone();
        tokio::spawn(async move {
            for k in 0..30 {
                store_rows(&pool, 65 + k * 10, 10, &aggregates).await;
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        })
    };
    for pause in [400u64, 700, 250] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        drop(s); // SIGKILL
        s = serve();
    }
    writer.await.expect("writer");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM event_records")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(total, 365);
    assert!(
        wait_until(Duration::from_secs(20), || events_at_destination(&f).0
            == 365),
        "after the last restart the destination holds {:?}",
        events_at_destination(&f)
    );
    drop(s);
    // The list shows the window the segments cover, not one row each.
    let out = run(
        "backup-server",
        &["list", "--destination", &f.dest, "--catalog", &f.catalog()],
        &[],
    );
    assert!(
        out.stdout.contains(" segments ") && out.stdout.contains("restorable to any instant from"),
        "{}",
        out.stdout
    );

    // A restore of latest holds every stored event exactly once: the whole table compared.
    restore_holds_the_whole_table(&f, &pg, &db).await;

    // To an instant inside the window: exactly the events stored up to it.
    restore_until_holds_the_events_up_to(&f, &pg, &pool, 100).await;
}

/// `restore latest --until` the time of the store's `offset`-th event (in time order) into a
/// fresh database holds exactly the events stored up to that instant.
pub(crate) async fn restore_until_holds_the_events_up_to(
    f: &Fixture,
    pg: &str,
    pool: &sqlx::PgPool,
    offset: i64,
) {
    let (mid,): (chrono::DateTime<chrono::Utc>,) = sqlx::query_as(
        r#"SELECT "timestamp" FROM event_records ORDER BY "timestamp" OFFSET $1 LIMIT 1"#,
    )
    .bind(offset)
    .fetch_one(pool)
    .await
    .expect("mid");
    let until = mid.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let upto = fresh_events_db(pg).await;
    let out = f.restore(&["latest", "--events-db", &upto, "--until", &until]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let n: i64 =
        sqlx::query_scalar(r#"SELECT count(*) FROM event_records WHERE "timestamp" <= $1"#)
            .bind(mid)
            .fetch_one(pool)
            .await
            .expect("count");
    assert_eq!(table_events(&upto).await.len() as i64, n);
}

/// `backup-server verify TARGET` (an id, `latest` or `--all`) of the fixture's destination.
pub(crate) fn verify(f: &Fixture, target: &str) -> monoskope_backup_tests::Out {
    run(
        "backup-server",
        &[
            "verify",
            target,
            "--destination",
            &f.dest,
            "--key-file",
            &f.key,
            "--catalog",
            &f.catalog(),
        ],
        &[],
    )
}

#[test]
fn continuous_without_the_events_table_is_a_usage_error() {
    let f = Fixture::new();
    let out = run(
        "backup-server",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--destination",
            &f.dest,
            "--key-file",
            &f.key,
            "--catalog",
            &f.catalog(),
            "--continuous",
        ],
        &[],
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("--continuous follows the events table: give --events-db"),
        "{out:?}"
    );
}

/// The destination down: segments wait, the lag grows (and is exported), nothing is lost when it
/// returns — every event stored meanwhile reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destination_down_lag_grows_and_nothing_is_lost_when_it_returns() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let (db, pool) = empty_events_table(&pg).await;
    let aggregates: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    let f = Fixture::new();
    let port = monoskope_backup_tests::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let _s = serve_continuous(&f, &db, &["--metrics-address", &metrics]);
    store_rows(&pool, 0, 10, &aggregates).await;
    assert!(wait_until(
        Duration::from_secs(15),
        || events_at_destination(&f).0 == 10
    ));
    // Down: the destination directory replaced by a file.
    let dest_dir = f.dir.path().join("dest");
    let aside = f.dir.path().join("dest-aside");
    std::fs::rename(&dest_dir, &aside).expect("aside");
    std::fs::write(&dest_dir, "down").expect("block");
    store_rows(&pool, 10, 15, &aggregates).await;
    let lag = || {
        monoskope_backup_tests::http_get(&format!("http://{metrics}/metrics"))
            .ok()
            .and_then(|(_, body)| {
                body.lines()
                    .find(|l| l.starts_with("monoskope_backup_continuous_lag_seconds "))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    };
    assert!(
        wait_until(Duration::from_secs(15), || lag() >= 1.0),
        "the lag does not grow while the destination is down: {}",
        lag()
    );
    // Back: everything stored meanwhile arrives, and the lag returns to 0.
    std::fs::remove_file(&dest_dir).expect("unblock");
    std::fs::rename(&aside, &dest_dir).expect("back");
    assert!(
        wait_until(Duration::from_secs(20), || events_at_destination(&f).0
            == 25),
        "{:?}",
        events_at_destination(&f)
    );
    assert!(
        wait_until(Duration::from_secs(10), || lag() == 0.0),
        "lag {}",
        lag()
    );
}

/// Every file under `dir`, with its length.
fn files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), meta.len()));
            }
        }
    }
    out.sort();
    out
}

/// Idle, the reconciling segments (here every second) write nothing at the destination — not
/// even an object deleted again, which a locked bucket would keep until its lock date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_reconciliation_writes_nothing_at_the_destination() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let (db, pool) = empty_events_table(&pg).await;
    let aggregates: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    store_rows(&pool, 0, 9, &aggregates).await;
    let f = Fixture::new();
    let _s = serve_continuous(&f, &db, &["--continuous-reconcile", "1s"]);
    assert!(wait_until(
        Duration::from_secs(15),
        || events_at_destination(&f).0 == 9
    ));
    let dest = std::path::PathBuf::from(f.dest.trim_start_matches("file://"));
    let before = files(&dest);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(files(&dest), before, "files written while idle");
    // Still following: a new event arrives.
    store_rows(&pool, 9, 1, &aggregates).await;
    assert!(wait_until(
        Duration::from_secs(15),
        || events_at_destination(&f).0 == 10
    ));
}

/// A writer whose sessions PostgreSQL does not count (`track_counts` off for its role: the change
/// counter stands still) is found by reconciliation, even after reconciliation backed off while
/// idle; and once it has been, reconciliation no longer backs off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_change_counter_does_not_show_are_found_by_reconciliation() {
    use std::str::FromStr;
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let (db, pool) = empty_events_table(&pg).await;
    let uncounted = sqlx::PgPool::connect_with(
        sqlx::postgres::PgConnectOptions::from_str(&db)
            .expect("url")
            .options([("track_counts", "off")]),
    )
    .await
    .expect("pg");
    drop(pool);
    let aggregates: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    // Every write uncounted: the counter never moves, only reconciliation finds events.
    store_rows(&uncounted, 0, 6, &aggregates).await;
    let f = Fixture::new();
    let _s = serve_continuous(&f, &db, &["--continuous-reconcile", "1s"]);
    assert!(wait_until(
        Duration::from_secs(15),
        || events_at_destination(&f).0 == 6
    ));
    // Idle: reconciliation backs off (1 s, 2 s, 4 s, 8 s, … up to 16 s).
    std::thread::sleep(Duration::from_secs(8));
    store_rows(&uncounted, 6, 1, &aggregates).await;
    assert!(
        wait_until(Duration::from_secs(40), || events_at_destination(&f).0 == 7),
        "an uncounted event is found by reconciliation"
    );
    // The counter missed one: from now on every second again, however long the store is idle.
    std::thread::sleep(Duration::from_secs(8));
    let stored = Instant::now();
    store_rows(&uncounted, 7, 1, &aggregates).await;
    let took = time_until_destination_holds(&f, 8, stored);
    assert!(
        took < Duration::from_secs(5),
        "found {took:?} after the insert: reconciliation backed off again"
    );
}

/// How long after `since` the destination came to hold `n` events (it must within 40 s).
fn time_until_destination_holds(f: &Fixture, n: u64, since: Instant) -> Duration {
    assert!(
        wait_until(Duration::from_secs(40), || events_at_destination(f).0 == n),
        "the destination never held {n} events"
    );
    since.elapsed()
}

/// The end of a burst: PostgreSQL reports a backend's counts at most once a second and holds
/// back what it counted within that second until ten idle seconds have passed. The follower
/// looks on after the counter moved, so the held-back event arrives within seconds, not ten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_a_burst_arrives_within_seconds_though_its_count_is_held_back() {
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let (db, pool) = empty_events_table(&pg).await;
    drop(pool);
    // One connection, one backend: its counts are reported together.
    let writer = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db)
        .await
        .expect("pg");
    let aggregates: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    store_rows(&writer, 0, 3, &aggregates).await;
    let f = Fixture::new();
    let _s = serve_continuous(&f, &db, &["--continuous-reconcile", "10m"]);
    assert!(wait_until(
        Duration::from_secs(15),
        || events_at_destination(&f).0 == 3
    ));
    // Idle long enough that the backend's held-back counts are reported and the next event is
    // reported at once.
    std::thread::sleep(Duration::from_secs(11));
    store_rows(&writer, 3, 1, &aggregates).await;
    std::thread::sleep(Duration::from_millis(500));
    // Within a second of the last report: counted, but not reported for ten seconds.
    let stored = Instant::now();
    store_rows(&writer, 4, 1, &aggregates).await;
    let took = time_until_destination_holds(&f, 5, stored);
    assert!(
        took < Duration::from_secs(5),
        "the held-back event arrived {took:?} after its insert"
    );
}

/// The events database goes away under the follower (the EventStore's database restarted, or the
/// network between cut): every connection dropped mid-run, refused for a while, then back. The
/// follower reconnects by itself and, after the last write, the destination holds every stored
/// event exactly once (the whole table compared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_database_restarting_loses_nothing() {
    use monoskope_backup_tests::proxy::{Fault, FaultProxy};
    let Some(pg) = service_env("TEST_PG_URL") else {
        return;
    };
    let (db, pool) = empty_events_table(&pg).await;
    let host = pg
        .split('@')
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("host:port in TEST_PG_URL")
        .to_string();
    let proxy = FaultProxy::start(&host);
    let via_proxy = db.replacen(&host, &proxy.addr, 1);
    let aggregates: Vec<uuid::Uuid> = (0..5).map(|_| uuid::Uuid::new_v4()).collect();
    let f = Fixture::new();
    let _s = serve_continuous(&f, &via_proxy, &["--continuous-reconcile", "2s"]);
    store_rows(&pool, 0, 20, &aggregates).await;
    assert!(wait_until(
        Duration::from_secs(20),
        || events_at_destination(&f).0 == 20
    ));
    // The database "restarts": every connection cut, new ones refused for a few seconds while
    // the store keeps writing (directly, not through the proxy).
    proxy.set(Fault::Refuse);
    proxy.cut_all();
    store_rows(&pool, 20, 30, &aggregates).await;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        events_at_destination(&f).0,
        20,
        "nothing new while it is away"
    );
    proxy.set(Fault::None);
    store_rows(&pool, 50, 10, &aggregates).await;
    assert!(
        wait_until(Duration::from_secs(30), || events_at_destination(&f).0
            == 60),
        "after the database came back: {:?}",
        events_at_destination(&f)
    );
    restore_holds_the_whole_table(&f, &pg, &db).await;
}
